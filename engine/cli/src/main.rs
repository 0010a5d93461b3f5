//! The `tokengate` command line: run the built-in workloads on the engine, compare
//! routers on them, inject faults, and steer a live engine through its control port.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokengate::model::Model;
use tokengate::router::{EwmaRouter, LearnedRouter, Router, StaticRouter};
use tokengate::{Engine, EngineBuilder};

mod bench;
mod compare;
mod compare_text;
mod ctl;
mod faults;
mod logging;
mod remote;
mod run;

#[derive(Parser)]
#[command(name = "tokengate", version, about = "Run functions as tokens on core-pinned lanes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    verbosity: logging::Verbosity,
}

#[derive(Subcommand)]
enum Command {
    /// Run a built-in workload and report throughput (and latency for mixed streams).
    Run(run::RunArgs),
    /// Run the same stream under the tag, running-average, learned and oracle routers.
    Compare(compare::CompareArgs),
    /// Flood the engine with faulty calls for a while and account for every token.
    Soak(faults::SoakArgs),
    /// Call `try_submit` N times on an engine that cannot keep up; report peak memory.
    Flood(faults::FloodArgs),
    /// Send one command to a running engine's control port, or watch its stats.
    Ctl(ctl::CtlArgs),
    /// Serve the built-in workloads' remote-capable operations to submitters over NATS
    /// JetStream (`run ... --nats URL`).
    Worker(remote::WorkerArgs),
    /// Benchmark tokengate beside its peers (`bench service`).
    Bench(bench::BenchArgs),
    /// Fit, evaluate and inspect cost models: the `trainer` binary's commands
    /// (`tokengate trainer fit --data DIR --out FILE`, `eval`, `inspect`).
    Trainer(trainer::cli::Cli),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// The Leibniz-π pyramid: N term tokens, chunk sums, partial sums, final ×4.
    Leibniz,
    /// Four CPU operations whose cost follows their argument, correctly tagged.
    Mixed,
    /// `mixed` with a share of tokens declaring the wrong weight.
    Mislabeled,
    /// `mixed` whose `sort` and `hash` swap their light and heavy costs mid-run (tags
    /// unchanged): where online adaptation must win.
    Drift,
    /// Regex search, gunzip, JSON parse and a checksum on generated documents, whose
    /// cost follows their content as much as their length; the operations declare cost
    /// features (non-ASCII share, the gzip trailer's length, JSON density and depth).
    Text,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RouterChoice {
    /// The learned cost model (`--model`, or the shipped default).
    Model,
    /// The declared weights only.
    Tags,
    /// Each operation's running-average runtime (no model).
    Ewma,
}

#[derive(Args)]
struct EngineArgs {
    /// Lanes (worker threads); default one per usable core.
    #[arg(long)]
    workers: Option<usize>,
    /// Heavy lanes: idle-priority threads beside the light lanes under the preemptive
    /// split (default one per light lane); under `--split pinned`, how many of the
    /// pinned lanes serve heavy work first (default 1 when there are 2 or more lanes).
    #[arg(long)]
    heavy_lanes: Option<usize>,
    /// How light and heavy lanes share the cores: `preemptive` (light lanes pinned,
    /// heavy lanes floating at idle priority; the default, but for `worker`) or
    /// `pinned` (the static split; the default for `worker`).
    #[arg(long, value_parser = parse_split)]
    split: Option<tokengate::lanes::LaneSplit>,
    /// Tokens per batch for light operations under the tag router.
    #[arg(long, default_value_t = 128)]
    batch: u32,
    /// Do not pin lanes to cores.
    #[arg(long)]
    no_pin: bool,
    /// Light lanes never run heavy work outside a wait (the pinned split); under the
    /// preemptive split, no rescue of heavy lanes that other threads starve.
    #[arg(long)]
    isolate_heavy: bool,
    /// Pinned split: light lanes take heavy work whenever this many heavy batches wait,
    /// whatever its predicted cost (1: fully work-conserving). Default: the cost-aware
    /// rule.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steal_backlog: Option<u64>,
    /// Pinned split: the cost-aware rule's light-latency budget in µs: a light lane
    /// takes a heavy batch predicted to fit it (default 100).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    light_budget_us: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbosity);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Compare(args) => compare::compare(args),
        Command::Soak(args) => faults::soak(args),
        Command::Flood(args) => faults::flood(args),
        Command::Ctl(args) => ctl::ctl(args),
        Command::Worker(args) => remote::worker(args),
        Command::Bench(args) => bench::bench(args),
        Command::Trainer(cli) => trainer::cli::run(cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            logging::report(&error);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The shipped model, built into the binary: `cargo install` gives a `tokengate` that
/// routes by it from any directory.
const SHIPPED_MODEL: &[u8] = include_bytes!("../../../models/default.bin");

/// Where the default model comes from: `models/default.bin` under the working directory
/// when there is one (a model the user fitted there), else the one built in.
fn default_model_path() -> Option<PathBuf> {
    let local = PathBuf::from("models/default.bin");
    local.exists().then_some(local)
}

/// Loads `--model` (an error if it fails), else `models/default.bin` under the working
/// directory (a warning if it fails), else the model built into the binary.
fn load_model(explicit: Option<&Path>) -> Result<Option<Model>> {
    if let Some(path) = explicit {
        let model =
            Model::load(path).with_context(|| format!("loading the model {}", path.display()))?;
        return Ok(Some(model));
    }
    if let Some(path) = default_model_path() {
        match Model::load(&path) {
            Ok(model) => return Ok(Some(model)),
            Err(e) => tracing::warn!(
                "{} refused ({e}); using the model built into this binary",
                path.display()
            ),
        }
    }
    match Model::from_bytes(SHIPPED_MODEL) {
        Ok(model) => {
            tracing::info!(
                "cost model: the shipped one, built in (version {:08x})",
                model.version()
            );
            Ok(Some(model))
        }
        Err(e) => {
            tracing::warn!("the built-in model was refused ({e}); routing by tags");
            Ok(None)
        }
    }
}

fn builder(args: &EngineArgs) -> EngineBuilder {
    let mut builder = Engine::builder()
        .pin(!args.no_pin)
        .light_batch(args.batch)
        .isolate_heavy(args.isolate_heavy);
    if let Some(split) = args.split {
        builder = builder.split(split);
    }
    if let Some(batches) = args.steal_backlog {
        builder = builder.steal_backlog(batches as usize);
    }
    if let Some(micros) = args.light_budget_us {
        builder = builder.light_budget(std::time::Duration::from_micros(micros));
    }
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(heavy) = args.heavy_lanes {
        builder = builder.heavy_lanes(heavy);
    }
    builder
}

fn parse_split(s: &str) -> Result<tokengate::lanes::LaneSplit, tokengate::error::ParseError> {
    s.parse()
}

fn make_router(choice: RouterChoice, model: Option<&Path>, batch: u32) -> Result<Arc<dyn Router>> {
    let tags = StaticRouter::new(batch);
    Ok(match choice {
        RouterChoice::Tags => Arc::new(tags),
        RouterChoice::Ewma => Arc::new(EwmaRouter::new(tags)),
        RouterChoice::Model => match load_model(model)? {
            Some(model) => Arc::new(LearnedRouter::new(model, tags)),
            None => Arc::new(tags),
        },
    })
}

/// First Ctrl-C drains (admitted work finishes, telemetry is completed); a second one
/// aborts (waiting work is cancelled).
fn stop_on_ctrl_c(engine: &Engine) {
    let stop = engine.stop_handle();
    engine.handle().spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        tracing::info!("Ctrl-C: draining (admitted work finishes); Ctrl-C again to abort");
        stop.begin(tokengate::Shutdown::Drain);
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C again: aborting (waiting work is cancelled)");
            stop.begin(tokengate::Shutdown::Abort);
        }
    });
}

fn progress_bar(total: u64, quiet: bool, unit: &str) -> indicatif::ProgressBar {
    if quiet || logging::quiet() || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} {{eta}}");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
    bar
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn peak_rss_mib() -> Option<f64> {
    tokengate_workloads::sys::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64)
}
