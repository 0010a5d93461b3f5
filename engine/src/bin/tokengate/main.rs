//! The `tokengate` command line: run the built-in workloads on the engine, and compare
//! routers on them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tokengate::model::Model;
use tokengate::workloads::leibniz::Pyramid;
use tokengate::workloads::mixed::{self, MixedConfig, MixedOps, OracleRouter};
use tokengate::{
    Engine, EngineBuilder, EwmaRouter, LaneInfo, LearnedRouter, Router, StaticRouter,
    TelemetryStats, Weight,
};

#[derive(Parser)]
#[command(name = "tokengate", version, about = "Run functions as tokens on core-pinned lanes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a built-in workload and report throughput (and latency for mixed streams).
    Run(RunArgs),
    /// Run the same stream under the tag, running-average, learned and oracle routers.
    Compare(CompareArgs),
    /// Flood the engine with faulty calls for a while and account for every token.
    Soak(SoakArgs),
    /// Call `try_submit` N times on an engine that cannot keep up; report peak memory.
    Flood(FloodArgs),
    /// Send one command to a running engine's control port, or watch its stats.
    Ctl(CtlArgs),
}

#[derive(Args)]
struct ControlArgs {
    /// Serve the control port here (loopback unless --control-public).
    #[arg(long)]
    control: Option<std::net::SocketAddr>,
    /// File holding the control secret; created (mode 0600) with a fresh secret if
    /// missing. Default: ./tokengate-control.token.
    #[arg(long)]
    control_token_file: Option<PathBuf>,
    /// Allow a control address beyond loopback.
    #[arg(long)]
    control_public: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CtlCommand {
    Pause,
    Resume,
    Pin,
    Batch,
    Clear,
    Stats,
    Shutdown,
    /// Print the live stats stream as a refreshing table.
    Watch,
}

#[derive(Args)]
struct CtlArgs {
    /// The engine's control address.
    #[arg(long, default_value = "127.0.0.1:7411")]
    connect: std::net::SocketAddr,
    /// File holding the control secret.
    #[arg(long, default_value = "tokengate-control.token")]
    token_file: PathBuf,
    /// The command.
    command: CtlCommand,
    /// The operation (pause/resume/clear: omit for all).
    #[arg(long)]
    op: Option<String>,
    /// For pin: light or heavy (omit to unpin).
    #[arg(long)]
    lanes: Option<String>,
    /// For batch: tokens per batch (omit to drop the override).
    #[arg(long)]
    size: Option<u32>,
    /// For shutdown: drain or abort.
    #[arg(long, default_value = "drain")]
    mode: String,
    /// For watch: milliseconds between stats events.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
}

#[derive(Args)]
struct FloodArgs {
    /// Calls to make.
    #[arg(long, default_value_t = 10_000_000)]
    tokens: u64,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SoakArgs {
    /// How long to keep submitting (e.g. 60s, 500ms, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Share of calls that panic on their first attempt (retried once).
    #[arg(long, default_value_t = 0.01)]
    panic_rate: f64,
    /// Share of calls that hang (100 ms) past their 10 ms deadline.
    #[arg(long, default_value_t = 0.001)]
    hang_rate: f64,
    /// Share of calls cancelled by the caller right after submitting.
    #[arg(long, default_value_t = 0.01)]
    cancel_rate: f64,
    /// Share of calls repeating a recent call's key (they share its run if in flight).
    #[arg(long, default_value_t = 0.05)]
    dup_rate: f64,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Admission capacity (small, so the stream outruns the lanes).
    #[arg(long, default_value_t = 4_096)]
    capacity: usize,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// "60s", "500ms", "2m" or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!("duration {text:?} must be between 0 and a day"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// The Leibniz-π pyramid: N term tokens, chunk sums, partial sums, final ×4.
    Leibniz,
    /// Four CPU operations whose cost follows their argument, correctly tagged.
    Mixed,
    /// `mixed` with a share of tokens declaring the wrong weight.
    Mislabeled,
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
    /// Lanes reserved for heavy work (default 1 when there are 2 or more lanes).
    #[arg(long)]
    heavy_lanes: Option<usize>,
    /// Tokens per batch for light operations under the tag router.
    #[arg(long, default_value_t = 128)]
    batch: u32,
    /// Do not pin lanes to cores.
    #[arg(long)]
    no_pin: bool,
    /// Light lanes never run heavy work.
    #[arg(long)]
    isolate_heavy: bool,
    /// Light lanes take heavy work only when this many heavy batches wait (default: 1,
    /// fully work-conserving, for `run`; 4 for `compare`, so that routing rather than
    /// stealing decides where heavy work runs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steal_backlog: Option<u64>,
}

#[derive(Args)]
struct StreamArgs {
    /// Tokens in a mixed stream.
    #[arg(long, default_value_t = 20_000)]
    tokens: usize,
    /// Seed of the stream (sizes, order, mislabels).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Arrival rate of a mixed stream, tokens per second.
    #[arg(long, default_value_t = 8_000.0)]
    rate: f64,
    /// Share of tokens declaring the wrong weight (`mislabeled` only).
    #[arg(long, default_value_t = 0.25)]
    mislabel_share: f64,
}

#[derive(Args)]
struct RunArgs {
    /// Which workload to run.
    workload: Workload,
    /// Leibniz terms (term tokens).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    terms: u64,
    /// Chunks of 1,000 term tokens the Leibniz driver keeps in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    window: u64,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Which router places tokens.
    #[arg(long, value_enum, default_value_t = RouterChoice::Model)]
    router: RouterChoice,
    /// Cost model file (default: the shipped models/default.bin).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write one Parquet record per finished token into this directory.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Log one token in K.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    log_sample: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// The stream to compare on.
    workload: Workload,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Cost model file (default: the shipped models/default.bin).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Runs per router (interleaved); latencies are pooled, makespans averaged.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeat: u64,
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
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Compare(args) => compare(args),
        Command::Soak(args) => soak(args),
        Command::Flood(args) => flood(args),
        Command::Ctl(args) => ctl(args),
    }
}

/// Reads the control secret from `path`, or creates it there (mode 0600) and says so.
fn control_secret(path: &Path) -> Result<String> {
    if path.exists() {
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("reading the control secret {}", path.display()))?;
        return Ok(secret.trim().to_string());
    }
    let secret = tokengate::control::generate_secret().context("generating a control secret")?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}")?;
    eprintln!("control secret written to {} (readable only by you)", path.display());
    Ok(secret)
}

fn with_control(builder: EngineBuilder, args: &ControlArgs) -> Result<EngineBuilder> {
    let Some(addr) = args.control else { return Ok(builder) };
    let path = args.control_token_file.clone().unwrap_or_else(|| "tokengate-control.token".into());
    let secret = control_secret(&path)?;
    Ok(builder.control(addr, secret, args.control_public))
}

fn ctl(args: CtlArgs) -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let secret = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the control secret {}", args.token_file.display()))?;
    let mut request = format!("ws://{}/", args.connect).into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", secret.trim()).parse()?);
    let (cmd, extra) = match args.command {
        CtlCommand::Pause => ("pause", json!({})),
        CtlCommand::Resume => ("resume", json!({})),
        CtlCommand::Clear => ("clear", json!({})),
        CtlCommand::Stats => ("stats", json!({})),
        CtlCommand::Pin => ("pin", json!({ "lanes": args.lanes })),
        CtlCommand::Batch => ("batch", json!({ "size": args.size })),
        CtlCommand::Shutdown => ("shutdown", json!({ "mode": args.mode })),
        CtlCommand::Watch => ("subscribe", json!({ "interval_ms": args.interval_ms })),
    };
    let mut message = json!({ "id": 1, "cmd": cmd, "op": args.op });
    for (key, value) in extra.as_object().expect("object") {
        message[key] = value.clone();
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {}", args.connect))?;
        socket.send(Message::text(message.to_string())).await?;
        while let Some(frame) = socket.next().await {
            let frame = frame?;
            let Ok(text) = frame.to_text() else { continue };
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if args.command != CtlCommand::Watch {
                if value.get("event").is_none() {
                    println!("{}", serde_json::to_string_pretty(&value)?);
                    if value["ok"] == json!(false) {
                        bail!("the engine refused the command");
                    }
                    return Ok(());
                }
                continue;
            }
            if value["event"] == json!("stats") {
                if print_watch(&value).is_err() {
                    return Ok(()); // stdout closed (e.g. piped into `head`)
                }
            } else if value["event"] == json!("override") {
                eprintln!(
                    "override by connection {}: {} {}",
                    value["by"], value["cmd"], value["op"]
                );
            }
        }
        Ok(())
    })
}

fn print_watch(event: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        write!(out, "\x1b[2J\x1b[H")?;
    }
    writeln!(
        out,
        "{:<16} {:>10} {:>8} {:>10} {:>7} {:>9} {:>8} {:>12}  overrides",
        "op", "submitted", "waiting", "completed", "failed", "cancelled", "timeout", "tokens/s"
    )?;
    for op in event["ops"].as_array().into_iter().flatten() {
        let n = |k: &str| op[k].as_u64().unwrap_or(0);
        let o = &op["overrides"];
        let mut marks = Vec::new();
        if o["paused"] == json!(true) {
            marks.push("paused".to_string());
        }
        if let Some(pin) = o["pin"].as_str() {
            marks.push(format!("pin {pin}"));
        }
        if let Some(batch) = o["batch"].as_u64() {
            marks.push(format!("batch {batch}"));
        }
        writeln!(
            out,
            "{:<16} {:>10} {:>8} {:>10} {:>7} {:>9} {:>8} {:>12.0}  {}",
            op["op"].as_str().unwrap_or("?"),
            n("submitted"),
            n("waiting"),
            n("completed"),
            n("failed"),
            n("cancelled"),
            n("timed_out"),
            op["throughput"].as_f64().unwrap_or(0.0),
            marks.join(", ")
        )?;
    }
    if event["dropped_events"].as_u64().unwrap_or(0) > 0 {
        writeln!(
            out,
            "({} events dropped: this terminal is slower than the engine)",
            event["dropped_events"]
        )?;
    }
    out.flush()
}

fn flood(args: FloodArgs) -> Result<()> {
    let engine = builder(&args.engine).build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    let report = tokengate::workloads::soak::flood(&engine, args.tokens)?;
    engine.shutdown();
    let json = json!({
        "submitted": report.submitted,
        "admitted": report.admitted,
        "rejected": report.submitted - report.admitted,
        "capacity": engine.capacity(),
        "peak_rss_mib": report.peak_rss_mib,
        "wall_s": report.wall.as_secs_f64(),
    });
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{} try_submit calls: {} admitted, {} rejected as overloaded (capacity {}); peak RSS {:.0} MiB; {:.2} s",
            group(report.submitted),
            group(report.admitted),
            group(report.submitted - report.admitted),
            group(engine.capacity() as u64),
            report.peak_rss_mib,
            report.wall.as_secs_f64()
        );
    }
    Ok(())
}

/// First Ctrl-C drains (admitted work finishes, telemetry is completed); a second one
/// aborts (waiting work is cancelled).
fn stop_on_ctrl_c(engine: &Engine) {
    let stop = engine.stop_handle();
    engine.handle().spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("\ndraining: admitted work finishes; Ctrl-C again to abort");
        stop.begin(tokengate::Shutdown::Drain);
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\naborting: waiting work is cancelled");
            stop.begin(tokengate::Shutdown::Abort);
        }
    });
}

fn soak(args: SoakArgs) -> Result<()> {
    for (name, rate) in [
        ("--panic-rate", args.panic_rate),
        ("--hang-rate", args.hang_rate),
        ("--cancel-rate", args.cancel_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{name} must be between 0 and 1, got {rate}");
        }
    }
    if args.panic_rate + args.hang_rate > 1.0 {
        bail!("--panic-rate plus --hang-rate must not exceed 1");
    }
    let engine =
        builder(&args.engine).capacity(args.capacity).build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    // Injected panics are expected: keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|info| {
        let injected = info.payload().downcast_ref::<&str>() == Some(&"injected panic");
        if !injected {
            eprintln!("{info}");
        }
    }));
    let config = tokengate::workloads::soak::SoakConfig {
        duration: args.duration,
        panic_rate: args.panic_rate,
        hang_rate: args.hang_rate,
        cancel_rate: args.cancel_rate,
        dup_rate: args.dup_rate,
        seed: args.seed,
        ..Default::default()
    };
    let bar = progress_bar(args.duration.as_secs(), args.json, "s");
    let report = tokengate::workloads::soak::run(&engine, &config, |elapsed| {
        bar.set_position(elapsed.as_secs())
    })?;
    bar.finish_and_clear();
    engine.shutdown();
    let json = json!({
        "submitted": report.submitted,
        "completed": report.completed,
        "failed": report.failed,
        "cancelled": report.cancelled,
        "timed_out": report.timed_out,
        "rejected": report.rejected,
        "lost": report.lost,
        "double_resolved": report.double_resolved,
        "stuck_workers": report.stuck_workers,
        "retried": report.retried,
        "peak_rss_mib": report.peak_rss_mib,
        "rss_first_half_mib": report.rss_halves_mib.0,
        "rss_second_half_mib": report.rss_halves_mib.1,
        "tokens_per_s": report.tokens_per_s,
        "wall_s": report.wall.as_secs_f64(),
        "balanced": report.balanced(),
    });
    if args.json {
        println!("{json}");
    } else {
        let accounted = report.completed
            + report.failed
            + report.cancelled
            + report.timed_out
            + report.rejected;
        println!(
            "submitted {} = completed {} + failed {} + cancelled {} + timed out {} + rejected {}{}",
            report.submitted,
            report.completed,
            report.failed,
            report.cancelled,
            report.timed_out,
            report.rejected,
            if accounted == report.submitted { "" } else { "  (MISMATCH)" },
        );
        println!("lost {}, resolved twice {}", report.lost, report.double_resolved);
        println!("retried {}, stuck lanes replaced {}", report.retried, report.stuck_workers);
        println!(
            "peak RSS {:.0} MiB (max {:.0} MiB in the first half, {:.0} MiB in the second)",
            report.peak_rss_mib, report.rss_halves_mib.0, report.rss_halves_mib.1
        );
        println!(
            "{} tokens/s over {:.1} s",
            group(report.tokens_per_s as u64),
            report.wall.as_secs_f64()
        );
    }
    if !report.balanced() {
        bail!("some tokens are unaccounted for");
    }
    Ok(())
}

/// The shipped model: `models/default.bin` under the working directory, else the one
/// in the source tree this binary was built from.
fn default_model_path() -> Option<PathBuf> {
    let local = PathBuf::from("models/default.bin");
    if local.exists() {
        return Some(local);
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default.bin");
    shipped.exists().then_some(shipped)
}

/// Loads `--model` (an error if it fails) or the default (a warning if it fails).
fn load_model(explicit: Option<&Path>) -> Result<Option<Model>> {
    if let Some(path) = explicit {
        let model =
            Model::load(path).with_context(|| format!("loading the model {}", path.display()))?;
        return Ok(Some(model));
    }
    let Some(path) = default_model_path() else {
        eprintln!("warning: no shipped model found (models/default.bin); routing by tags");
        return Ok(None);
    };
    match Model::load(&path) {
        Ok(model) => Ok(Some(model)),
        Err(e) => {
            eprintln!("warning: default model {} unusable ({e}); routing by tags", path.display());
            Ok(None)
        }
    }
}

fn builder(args: &EngineArgs) -> EngineBuilder {
    let mut builder = Engine::builder()
        .pin(!args.no_pin)
        .light_batch(args.batch)
        .isolate_heavy(args.isolate_heavy)
        .steal_backlog(args.steal_backlog.unwrap_or(1) as usize);
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    if let Some(heavy) = args.heavy_lanes {
        builder = builder.heavy_lanes(heavy);
    }
    builder
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

fn run(args: RunArgs) -> Result<()> {
    if args.model.is_some() && args.router != RouterChoice::Model {
        bail!("--model only applies with --router model");
    }
    let router = make_router(args.router, args.model.as_deref(), args.engine.batch)?;
    let mut builder = with_control(
        builder(&args.engine).router(router).log_sample(args.log_sample),
        &args.control,
    )?;
    if let Some(dir) = &args.log {
        builder = builder.log_dir(dir);
    }
    if args.workload != Workload::Leibniz {
        builder = builder.log_in_memory();
    }
    let engine = builder.build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    if let Some(addr) = engine.control_addr() {
        eprintln!("control port on ws://{addr}/ (try: tokengate ctl --connect {addr} watch)");
    }
    let outcome = match args.workload {
        Workload::Leibniz => run_leibniz(&engine, &args).map(|report| (report, Vec::new())),
        Workload::Mixed | Workload::Mislabeled => run_stream(&engine, &args),
    };
    let (mut report, truths) = match outcome {
        Ok(outcome) => outcome,
        Err(_) if engine.is_shutting_down() => {
            // Stopped on purpose (Ctrl-C or the control port): finish cleanly.
            engine.shutdown();
            if let Some(stats) = engine.telemetry_stats() {
                eprintln!("log: {} records in {} files", stats.written, stats.files.len());
            }
            eprintln!("stopped early: the engine was shut down before the workload finished");
            std::process::exit(130);
        }
        Err(e) => return Err(e),
    };
    let lanes = engine.lanes();
    let per_lane: Vec<u64> = engine.lane_stats().iter().map(|s| s.tokens).collect();
    engine.shutdown();
    if !truths.is_empty() {
        let records = engine.take_records();
        report["light"] = latency_json(mixed::latency_of(&records, &truths, Weight::Light));
        report["heavy"] = latency_json(mixed::latency_of(&records, &truths, Weight::Heavy));
    }
    report["router"] = json!(router_name(args.router, engine.model_version()));
    report["lanes"] = lanes_json(&lanes, &per_lane);
    if let Some(stats) = engine.telemetry_stats().filter(|_| args.log.is_some()) {
        report["telemetry"] = telemetry_json(&stats);
    }
    report["peak_rss_mib"] = json!(peak_rss_mib());
    if args.json {
        println!("{report}");
    } else {
        print_report(&report, &lanes, &per_lane);
    }
    Ok(())
}

fn router_name(choice: RouterChoice, model_version: u32) -> String {
    match choice {
        RouterChoice::Model if model_version != 0 => format!("model {model_version:08x}"),
        RouterChoice::Model | RouterChoice::Tags => "tags".into(),
        RouterChoice::Ewma => "ewma".into(),
    }
}

fn run_leibniz(engine: &Engine, args: &RunArgs) -> Result<Value> {
    let pyramid = Pyramid::register(engine)?;
    let bar = progress_bar(args.terms, args.json || args.terms < 1_000_000, "terms");
    let outcome = pyramid
        .run(engine, args.terms, args.window as usize, |done| bar.set_position(done))
        .context("running the leibniz pyramid")?;
    bar.finish_and_clear();
    Ok(json!({
        "workload": "leibniz",
        "terms": args.terms,
        "tokens": outcome.tokens,
        "wall_s": outcome.wall.as_secs_f64(),
        "tokens_per_s": outcome.tokens_per_s(),
        "pi": outcome.pi.to_string(),
        "correct_digits": outcome.correct_digits(),
    }))
}

fn stream_config(workload: Workload, stream: &StreamArgs) -> Result<MixedConfig> {
    if !(0.0..=1.0).contains(&stream.mislabel_share) {
        bail!("--mislabel-share must be between 0 and 1, got {}", stream.mislabel_share);
    }
    if !(stream.rate.is_finite() && stream.rate >= 1.0) {
        bail!("--rate must be at least 1 token/s, got {}", stream.rate);
    }
    if stream.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    let mislabel_share = if workload == Workload::Mislabeled { stream.mislabel_share } else { 0.0 };
    Ok(MixedConfig { tokens: stream.tokens, seed: stream.seed, mislabel_share, rate: stream.rate })
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Leibniz => "leibniz",
        Workload::Mixed => "mixed",
        Workload::Mislabeled => "mislabeled",
    }
}

/// Runs the stream; returns the report and each token's true weight.
fn run_stream(engine: &Engine, args: &RunArgs) -> Result<(Value, Vec<(u64, Weight)>)> {
    let config = stream_config(args.workload, &args.stream)?;
    let ops = MixedOps::register(engine)?;
    let plan = mixed::plan(&config);
    let run = mixed::drive(&ops, &plan, config.rate);
    let report = json!({
        "workload": workload_name(args.workload),
        "tokens": plan.len(),
        "seed": config.seed,
        "rate": config.rate,
        "mislabel_share": config.mislabel_share,
        "wall_s": run.makespan.as_secs_f64(),
        "tokens_per_s": plan.len() as f64 / run.makespan.as_secs_f64(),
        "failed": run.failures,
    });
    Ok((report, run.truths))
}

fn latency_json(latency: mixed::Latency) -> Value {
    json!({ "tokens": latency.count, "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms })
}

/// `compare`'s default: light lanes help with heavy work only once 4 batches wait.
const COMPARE_STEAL_BACKLOG: u64 = 4;

fn compare(mut args: CompareArgs) -> Result<()> {
    args.engine.steal_backlog.get_or_insert(COMPARE_STEAL_BACKLOG);
    if args.workload == Workload::Leibniz {
        bail!("compare runs a mixed stream: use `compare mislabeled` or `compare mixed`");
    }
    let config = stream_config(args.workload, &args.stream)?;
    let plan = mixed::plan(&config);
    let model = load_model(args.model.as_deref())?
        .context("compare needs a model: pass --model or restore models/default.bin")?;
    let model_version = model.version();
    let tags = StaticRouter::new(args.engine.batch);
    let routers: Vec<(&str, Arc<dyn Router>)> = vec![
        ("tags", Arc::new(tags)),
        ("ewma", Arc::new(EwmaRouter::new(tags))),
        ("learned", Arc::new(LearnedRouter::new(model, tags))),
        ("oracle", Arc::new(OracleRouter::default())),
    ];
    let mut runs: Vec<Vec<mixed::RouterRun>> = vec![Vec::new(); routers.len()];
    // Interleaved repeats, so a slow patch of a shared machine hits every router alike.
    for repeat in 0..args.repeat {
        for ((name, router), runs) in routers.iter().zip(&mut runs) {
            let builder = builder(&args.engine).router(Arc::clone(router));
            let run = mixed::run_with(builder, &plan, config.rate)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            runs.push(run);
            if !args.json {
                eprint!("\r{name} run {}/{}   ", repeat + 1, args.repeat);
            }
        }
    }
    if !args.json {
        eprint!("\r{:30}\r", "");
    }
    let mut results = serde_json::Map::new();
    for ((name, _), runs) in routers.iter().zip(runs) {
        let makespan =
            runs.iter().map(|r| r.makespan.as_secs_f64()).sum::<f64>() / runs.len() as f64;
        let light =
            mixed::Latency::of(runs.iter().flat_map(|r| r.light_ns.iter().copied()).collect());
        let (heavy, on_heavy) =
            runs.iter().fold((0, 0), |(h, o), r| (h + r.heavy.0, o + r.heavy.1));
        results.insert(
            name.to_string(),
            json!({
                "makespan_s": makespan,
                "light_p50_ms": light.p50_ms,
                "light_p99_ms": light.p99_ms,
                "light_tokens": light.count,
                "heavy_on_heavy_lane": if heavy == 0 { 0.0 } else { on_heavy as f64 / heavy as f64 },
                "failed": runs.iter().map(|r| r.failures).sum::<usize>(),
            }),
        );
    }
    let report = json!({
        "workload": workload_name(args.workload),
        "tokens": plan.len(),
        "repeat": args.repeat,
        "seed": config.seed,
        "rate": config.rate,
        "mislabel_share": config.mislabel_share,
        "lanes": lanes_mode(&args.engine),
        "model_version": format!("{model_version:08x}"),
        "routers": results,
    });
    if args.json {
        println!("{report}");
    } else {
        print_compare(&report);
    }
    Ok(())
}

fn lanes_mode(engine: &EngineArgs) -> String {
    if engine.isolate_heavy {
        "isolated".into()
    } else {
        format!("steal-backlog {}", engine.steal_backlog.unwrap_or(1))
    }
}

fn print_compare(report: &Value) {
    println!(
        "{} tokens of `{}` at {} tokens/s, {:.0}% mislabelled, {} runs each, lanes: {}, model {}",
        report["tokens"],
        report["workload"].as_str().unwrap_or("?"),
        report["rate"],
        report["mislabel_share"].as_f64().unwrap_or(0.0) * 100.0,
        report["repeat"],
        report["lanes"].as_str().unwrap_or("?"),
        report["model_version"].as_str().unwrap_or("?"),
    );
    println!(
        "{:<8} {:>11} {:>13} {:>13} {:>16}",
        "router", "makespan s", "light p50 ms", "light p99 ms", "heavy on heavy"
    );
    for name in ["tags", "ewma", "learned", "oracle"] {
        let r = &report["routers"][name];
        println!(
            "{:<8} {:>11.3} {:>13.3} {:>13.3} {:>15.0}%",
            name,
            r["makespan_s"].as_f64().unwrap_or(f64::NAN),
            r["light_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["light_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["heavy_on_heavy_lane"].as_f64().unwrap_or(f64::NAN) * 100.0,
        );
    }
}

fn lanes_json(lanes: &[LaneInfo], per_lane: &[u64]) -> Value {
    lanes
        .iter()
        .zip(per_lane)
        .map(|(lane, tokens)| {
            json!({
                "lane": lane.index, "set": lane.set.as_str(), "core": lane.core,
                "pinned": lane.pinned, "tokens": tokens,
            })
        })
        .collect()
}

fn telemetry_json(stats: &TelemetryStats) -> Value {
    json!({
        "recorded": stats.recorded,
        "dropped": stats.dropped,
        "written": stats.written,
        "files": stats.files.len(),
        "errors": stats.errors,
    })
}

fn peak_rss_mib() -> Option<f64> {
    tokengate::sys::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64)
}

fn print_report(report: &Value, lanes: &[LaneInfo], per_lane: &[u64]) {
    let num = |key: &str| report[key].as_f64().unwrap_or(0.0);
    if let Some(pi) = report["pi"].as_str() {
        println!("pi        {pi}  ({} correct digits)", report["correct_digits"]);
    }
    println!("workload  {}", report["workload"].as_str().unwrap_or("?"));
    println!("router    {}", report["router"].as_str().unwrap_or("?"));
    println!("tokens    {}", group(num("tokens") as u64));
    println!("wall      {:.3} s", num("wall_s"));
    println!("rate      {} tokens/s", group(num("tokens_per_s") as u64));
    for kind in ["light", "heavy"] {
        if let Some(l) = report.get(kind) {
            let ms = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            println!("{kind:<9} p50 {:.3} ms  p99 {:.3} ms", ms("p50_ms"), ms("p99_ms"));
        }
    }
    for (lane, tokens) in lanes.iter().zip(per_lane) {
        println!("lane {:<4} {}  {}", lane.index, describe(lane), group(*tokens));
    }
    if let Some(t) = report.get("telemetry") {
        println!(
            "log       {} records in {} files, {} dropped",
            t["written"], t["files"], t["dropped"]
        );
    }
    if let Some(mib) = report["peak_rss_mib"].as_f64() {
        println!("peak RSS  {mib:.0} MiB");
    }
}

fn describe(lane: &LaneInfo) -> String {
    match (lane.core, lane.pinned) {
        (Some(core), true) => format!("{:<5} core {core:<3}", lane.set.as_str()),
        _ => format!("{:<5} unpinned", lane.set.as_str()),
    }
}

fn progress_bar(total: u64, quiet: bool, unit: &str) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
