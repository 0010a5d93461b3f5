//! The `tokengate` command line: run the built-in workloads on the engine.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokengate::workloads::leibniz::Pyramid;
use tokengate::{Engine, LaneInfo};

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Run functions as tokens on core-pinned lanes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a built-in workload and report throughput.
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// The Leibniz-π pyramid: N term tokens, chunk sums, partial sums, final ×4.
    Leibniz,
}

#[derive(Args)]
struct RunArgs {
    /// Which workload to run.
    workload: Workload,
    /// Leibniz terms (term tokens).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    terms: u64,
    /// Lanes (worker threads); default one per usable core.
    #[arg(long)]
    workers: Option<usize>,
    /// Lanes reserved for heavy work (default 1 when there are 2 or more lanes).
    #[arg(long)]
    heavy_lanes: Option<usize>,
    /// Tokens per batch for light operations.
    #[arg(long, default_value_t = 128)]
    batch: u32,
    /// Chunks of 1,000 term tokens kept in flight by the driver.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    window: u64,
    /// Do not pin lanes to cores.
    #[arg(long)]
    no_pin: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tokengate=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
    }
}

fn build_engine(args: &RunArgs) -> Result<Engine> {
    let mut builder = Engine::builder().pin(!args.no_pin).light_batch(args.batch);
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(heavy) = args.heavy_lanes {
        builder = builder.heavy_lanes(heavy);
    }
    builder.build().context("starting the engine")
}

fn run(args: RunArgs) -> Result<()> {
    match args.workload {
        Workload::Leibniz => run_leibniz(&args),
    }
}

fn run_leibniz(args: &RunArgs) -> Result<()> {
    let engine = build_engine(args)?;
    let pyramid = Pyramid::register(&engine)?;
    let bar = progress_bar(args.terms, args.json);
    let outcome = pyramid
        .run(&engine, args.terms, args.window as usize, |done| {
            bar.set_position(done)
        })
        .context("running the leibniz pyramid")?;
    bar.finish_and_clear();
    let lanes = engine.lanes();
    let peak_rss_mib = tokengate::sys::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64);
    if args.json {
        let lanes_json: Vec<_> = lanes
            .iter()
            .zip(&outcome.per_lane)
            .map(|(lane, tokens)| {
                json!({
                    "lane": lane.index, "set": lane.set.as_str(), "core": lane.core,
                    "pinned": lane.pinned, "tokens": tokens,
                })
            })
            .collect();
        let report = json!({
            "workload": "leibniz",
            "terms": args.terms,
            "tokens": outcome.tokens,
            "wall_s": outcome.wall.as_secs_f64(),
            "tokens_per_s": outcome.tokens_per_s(),
            "pi": outcome.pi.to_string(),
            "correct_digits": outcome.correct_digits(),
            "lanes": lanes_json,
            "peak_rss_mib": peak_rss_mib,
        });
        println!("{report}");
    } else {
        println!(
            "pi        {}  ({} correct digits)",
            outcome.pi,
            outcome.correct_digits()
        );
        println!("tokens    {}", group(outcome.tokens));
        println!("wall      {:.3} s", outcome.wall.as_secs_f64());
        println!(
            "rate      {} tokens/s",
            group(outcome.tokens_per_s() as u64)
        );
        for (lane, tokens) in lanes.iter().zip(&outcome.per_lane) {
            println!(
                "lane {:<4} {}  {}",
                lane.index,
                describe(lane),
                group(*tokens)
            );
        }
        if let Some(mib) = peak_rss_mib {
            println!("peak RSS  {mib:.0} MiB");
        }
    }
    Ok(())
}

fn describe(lane: &LaneInfo) -> String {
    match (lane.core, lane.pinned) {
        (Some(core), true) => format!("{:<5} core {core:<3}", lane.set.as_str()),
        _ => format!("{:<5} unpinned", lane.set.as_str()),
    }
}

fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() || total < 1_000_000 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} terms {per_sec} {eta}")
            .expect("static template"),
    );
    bar
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
