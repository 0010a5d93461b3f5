//! `run`: the built-in workloads and their reports (`compare.rs` puts routers side by side).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokengate::adapt::Adaptation;
use tokengate::lanes::LaneInfo;
use tokengate::model::Model;
use tokengate::router::{AdaptiveRouter, StaticRouter};
use tokengate::telemetry::TelemetryStats;
use tokengate::{Engine, LaneSet, Weight};
use tokengate_workloads::leibniz::{self, Pyramid};
use tokengate_workloads::mixed::{self, MixedConfig, MixedOps};
use tokengate_workloads::text;

use crate::ctl::{with_control, ControlArgs};
use crate::remote::{with_nats, NatsArgs};
use crate::{
    builder, group, load_model, make_router, peak_rss_mib, progress_bar, stop_on_ctrl_c,
    EngineArgs, RouterChoice, Workload,
};

#[derive(Args)]
pub(crate) struct StreamArgs {
    /// Tokens in a mixed stream (default 20,000; 40,000 for `drift`).
    #[arg(long)]
    tokens: Option<usize>,
    /// Where in a `drift` stream (0..1) the two operations change cost.
    #[arg(long, default_value_t = 0.5)]
    drift_at: f64,
    /// Seed of the stream (sizes, order, mislabels).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Arrival rate of a mixed stream, tokens per second.
    #[arg(long, default_value_t = 8_000.0)]
    rate: f64,
    /// Share of tokens declaring the wrong weight (`mislabeled` only).
    #[arg(long, default_value_t = 0.25)]
    mislabel_share: f64,
    /// `text` only: the share of all cores the stream keeps busy (its rate follows from
    /// each call's cost, measured before the run; `--rate` does not apply).
    #[arg(long, default_value_t = 0.6, allow_hyphen_values = true)]
    pub(crate) load: f64,
}

impl StreamArgs {
    /// Calls in a `text` stream (default 20,000).
    pub(crate) fn text_calls(&self) -> Result<usize> {
        let calls = self.tokens.unwrap_or(20_000);
        if calls == 0 {
            bail!("--tokens must be at least 1");
        }
        self.check_load()?;
        Ok(calls)
    }

    /// `--load` is `text`'s, but a value no stream could use is an error for every stream.
    fn check_load(&self) -> Result<()> {
        if !(self.load > 0.0 && self.load <= 1.0) {
            bail!("--load must be in (0, 1], got {}", self.load);
        }
        Ok(())
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Which workload to run.
    workload: Workload,
    /// Leibniz terms (term tokens).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    terms: u64,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Which router places tokens.
    #[arg(long, value_enum, default_value_t = RouterChoice::Model)]
    router: RouterChoice,
    /// Cost model file (default: models/default.bin in the working directory if there is
    /// one, else the shipped model built into this binary).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write one Parquet record per finished token into this directory.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Log one token in K (default 1; 256 for `leibniz --adapt`, whose sub-microsecond
    /// tokens would otherwise spend more on their rows than on their work: one in 256
    /// still fills a re-fit's 300 ms horizon with more than the 10,000 rows a fit uses).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    log_sample: Option<u64>,
    /// Cap of the log directory in MiB (segments already there count); past it no more
    /// rows are written and the report counts them as `over_cap`.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    log_max_mib: u64,
    /// Re-fit the model online from this run's own telemetry (background thread,
    /// atomic swaps; see the README).
    #[arg(long)]
    adapt: bool,
    /// Leibniz: also time the same pyramid as a plain serial loop in this process,
    /// right after the run, and report the ratio (`vs_serial`).
    #[arg(long)]
    vs_serial: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    if args.model.is_some() && args.router != RouterChoice::Model {
        bail!("--model only applies with --router model");
    }
    let default_sample = if args.adapt && args.workload == Workload::Leibniz { 256 } else { 1 };
    let mut builder = builder(&args.engine).log_sample(args.log_sample.unwrap_or(default_sample));
    if args.adapt {
        if args.router != RouterChoice::Model {
            bail!("--adapt re-fits the model: it needs --router model");
        }
        let model = load_model(args.model.as_deref())?.context(
            "--adapt needs a starting model: pass --model (the built-in one was refused)",
        )?;
        builder = builder.adapt(adaptation(model, args.engine.batch));
    } else {
        let router = make_router(args.router, args.model.as_deref(), args.engine.batch)?;
        builder = builder.router(router);
    }
    let mut builder = with_nats(with_control(builder, &args.control)?, &args.nats)?;
    if let Some(dir) = &args.log {
        builder = builder.log_dir(dir).log_max_bytes(args.log_max_mib << 20);
    }
    if args.workload != Workload::Leibniz {
        builder = builder.log_in_memory();
    }
    let engine = builder.build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    if let Some(addr) = engine.control_addr() {
        tracing::info!("control port on ws://{addr}/ (try: tokengate ctl --connect {addr} watch)");
        tracing::info!(
            "dashboard: http://{addr}/?token=<the secret in the token file>; metrics: \
             http://{addr}/metrics (Authorization: Bearer <secret>)"
        );
    }
    let outcome = match args.workload {
        Workload::Leibniz => run_leibniz(&engine, &args).map(|report| (report, Vec::new())),
        Workload::Mixed | Workload::Mislabeled | Workload::Drift => run_stream(&engine, &args),
        Workload::Text => run_text(&engine, &args),
    };
    // A run stopped from outside (Ctrl-C, `ctl shutdown`) ends early, whatever it was
    // doing: a stream stops submitting once its calls are rejected.
    let stopped = engine.stats().shutting_down;
    let (mut report, truths) = match outcome {
        Ok(outcome) if !stopped => outcome,
        Err(e) if !stopped => return Err(e),
        _ => {
            engine.shutdown();
            if let Some(stats) = engine.stats().telemetry.filter(|t| !t.files.is_empty()) {
                tracing::info!("log: {} records in {} files", stats.written, stats.files.len());
            }
            tracing::warn!("stopped early: the engine was shut down before the workload finished");
            std::process::exit(130);
        }
    };
    let lanes = engine.lanes();
    let per_lane: Vec<u64> = engine.stats().lanes.iter().map(|s| s.tokens).collect();
    engine.shutdown();
    let stats = engine.stats();
    if let Some(remote) = stats.remote {
        report["remote_tokens"] = json!(remote.remote_tokens);
        report["redelivered"] = json!(remote.redelivered);
        report["duplicate_results"] = json!(remote.duplicate_results);
        report["remote"] = json!(remote);
    } else if args.nats.enabled() {
        report["remote_tokens"] = json!(0);
    }
    if !truths.is_empty() {
        let records = engine.take_records();
        report["light"] = latency_json(mixed::latency_of(&records, &truths, Weight::Light));
        report["heavy"] = latency_json(mixed::latency_of(&records, &truths, Weight::Heavy));
    }
    report["router"] = json!(router_name(args.router, stats.model_version));
    report["lanes"] = lanes_json(&lanes, &per_lane);
    report["rescues"] = json!(stats.rescues);
    if let Some(telemetry) = stats.telemetry.filter(|_| args.log.is_some()) {
        report["telemetry"] = telemetry_json(&telemetry);
    }
    report["peak_rss_mib"] = json!(peak_rss_mib());
    if args.json {
        println!("{report}");
    } else {
        print_report(&report, &lanes, &per_lane);
    }
    // The account is out; now say if it does not add up.
    let (lost, double) = (&report["lost"], &report["double_resolved"]);
    if lost.as_u64().is_some_and(|n| n > 0) || double.as_u64().is_some_and(|n| n > 0) {
        bail!("{lost} tokens lost and {double} resolved twice");
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
    let by_callers = engine.stats().caller_tokens;
    let bar = progress_bar(args.terms, args.json || args.terms < 1_000_000, "terms");
    let outcome = pyramid
        .run(engine, args.terms, |done| bar.set_position(done))
        .context("running the leibniz pyramid")?;
    bar.finish_and_clear();
    let serial_s = args.vs_serial.then(|| {
        let started = std::time::Instant::now();
        let pi = std::hint::black_box(leibniz::serial(std::hint::black_box(args.terms)));
        (started.elapsed().as_secs_f64(), pi)
    });
    if let Some((_, pi)) = serial_s {
        ensure!(pi == outcome.pi, "the serial loop got {pi}, the pyramid {}", outcome.pi);
    }
    Ok(json!({
        "workload": "leibniz",
        "terms": args.terms,
        "tokens": outcome.tokens,
        "wall_s": outcome.wall.as_secs_f64(),
        "tokens_per_s": outcome.tokens_per_s(),
        "pi": outcome.pi.to_string(),
        "correct_digits": outcome.correct_digits(),
        "caller_tokens": engine.stats().caller_tokens - by_callers,
        "lane_tokens": outcome.per_lane,
        "lane_busy_share": outcome.lane_busy,
        "serial_wall_s": serial_s.map(|(wall, _)| wall),
        "vs_serial": serial_s.map(|(wall, _)| outcome.wall.as_secs_f64() / wall),
    }))
}

pub(crate) fn stream_config(workload: Workload, stream: &StreamArgs) -> Result<MixedConfig> {
    stream.check_load()?;
    if !(0.0..=1.0).contains(&stream.mislabel_share) {
        bail!("--mislabel-share must be between 0 and 1, got {}", stream.mislabel_share);
    }
    if !(stream.rate.is_finite() && stream.rate >= 1.0) {
        bail!("--rate must be at least 1 token/s, got {}", stream.rate);
    }
    let tokens = stream.tokens.unwrap_or(if workload == Workload::Drift { 40_000 } else { 20_000 });
    if tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if !(0.0..=1.0).contains(&stream.drift_at) {
        bail!("--drift-at must be between 0 and 1, got {}", stream.drift_at);
    }
    let mislabel_share = if workload == Workload::Mislabeled { stream.mislabel_share } else { 0.0 };
    let drift_at = (workload == Workload::Drift).then_some(stream.drift_at);
    Ok(MixedConfig { tokens, seed: stream.seed, mislabel_share, rate: stream.rate, drift_at })
}

pub(crate) fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Leibniz => "leibniz",
        Workload::Mixed => "mixed",
        Workload::Mislabeled => "mislabeled",
        Workload::Drift => "drift",
        Workload::Text => "text",
    }
}

/// The shift's token index of a `drift` stream.
pub(crate) fn shift_of(config: &MixedConfig) -> Option<usize> {
    config.drift_at.map(|at| mixed::shift_index(config.tokens, at))
}

/// An adaptation of `model`, re-fitted by the trainer's own fit.
pub(crate) fn adaptation(model: Model, batch: u32) -> Adaptation {
    let router = Arc::new(AdaptiveRouter::new(model, StaticRouter::new(batch)));
    Adaptation::new(router, Arc::new(trainer::adapt::TreeRefit::default()))
}

/// Runs the stream; returns the report and each token's true weight.
fn run_stream(engine: &Engine, args: &RunArgs) -> Result<(Value, Vec<(u64, Weight)>)> {
    let config = stream_config(args.workload, &args.stream)?;
    let ops = MixedOps::register(engine)?;
    let plan = mixed::plan(&config);
    let run = mixed::drive(&ops, &plan, config.rate, shift_of(&config));
    let freezes = &run.freezes;
    let report = json!({
        "workload": workload_name(args.workload),
        "tokens": plan.len(),
        "seed": config.seed,
        "rate": config.rate,
        "mislabel_share": config.mislabel_share,
        "wall_s": run.makespan.as_secs_f64(),
        "tokens_per_s": plan.len() as f64 / run.makespan.as_secs_f64(),
        "failed": run.failures,
        "lost": run.lost,
        "double_resolved": run.double_resolved,
        "result_digest": format!("{:016x}", run.digest),
        "freeze_max_ms": freezes.longest_all_ms(),
        "freeze_watch": freezes.watch().name(),
    });
    Ok((report, run.truths))
}

/// The engine's light lanes: one per core it runs on.
pub(crate) fn light_lanes(engine: &Engine) -> usize {
    engine.lanes().iter().filter(|l| l.set == LaneSet::Light).count().max(1)
}

/// Plans the `text` stream (its documents generated and each call measured alone, with
/// a progress bar), for `run text` and `compare text`.
pub(crate) fn text_plan(calls: usize, seed: u64, quiet: bool) -> Vec<text::TextCall> {
    let bar = progress_bar(calls as u64, quiet || calls < 5_000, "documents measured");
    let plan = text::plan(calls, seed, |done| {
        if done % 256 == 0 {
            bar.set_position(done as u64)
        }
    });
    bar.finish_and_clear();
    plan
}

/// Runs the `text` stream; returns the report and each call's true weight (measured
/// alone before the run).
fn run_text(engine: &Engine, args: &RunArgs) -> Result<(Value, Vec<(u64, Weight)>)> {
    let calls = args.stream.text_calls()?;
    let plan = text_plan(calls, args.stream.seed, args.json);
    let rate = text::rate_for(&plan, args.stream.load, light_lanes(engine));
    let ops = text::TextOps::register(engine, text::Told::Features)?;
    let run = text::drive(&ops, &plan, rate);
    let freezes = &run.freezes;
    let truths = run.ids.iter().zip(&plan).map(|(id, call)| (*id, call.truth())).collect();
    let report = json!({
        "workload": "text",
        "tokens": plan.len(),
        "seed": args.stream.seed,
        "rate": rate,
        "load": args.stream.load,
        "wall_s": run.makespan.as_secs_f64(),
        "tokens_per_s": plan.len() as f64 / run.makespan.as_secs_f64(),
        "failed": run.failures,
        "lost": run.lost,
        "result_digest": format!("{:016x}", run.digest),
        "freeze_max_ms": freezes.longest_all_ms(),
        "freeze_watch": freezes.watch().name(),
    });
    Ok((report, truths))
}

fn latency_json(latency: mixed::Latency) -> Value {
    json!({ "tokens": latency.count, "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms })
}

fn lanes_json(lanes: &[LaneInfo], per_lane: &[u64]) -> Value {
    lanes
        .iter()
        .zip(per_lane)
        .map(|(lane, tokens)| {
            json!({
                "lane": lane.index, "set": lane.set.as_str(), "core": lane.core,
                "pinned": lane.pinned, "priority": lane.priority.to_string(), "tokens": tokens,
            })
        })
        .collect()
}

fn telemetry_json(stats: &TelemetryStats) -> Value {
    json!({
        "recorded": stats.recorded,
        "dropped": stats.dropped,
        "over_cap": stats.over_cap,
        "written": stats.written,
        "files": stats.files.len(),
        "errors": stats.errors,
    })
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
    if let Some(ratio) = report["vs_serial"].as_f64() {
        println!(
            "serial    {:.3} s: the run took {ratio:.2}× the serial loop",
            num("serial_wall_s")
        );
    }
    for kind in ["light", "heavy"] {
        if let Some(l) = report.get(kind) {
            let ms = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            println!("{kind:<9} p50 {:.3} ms  p99 {:.3} ms", ms("p50_ms"), ms("p99_ms"));
        }
    }
    if let Some(ms) = report["freeze_max_ms"].as_f64().filter(|&ms| ms > 0.0) {
        if report["freeze_watch"] == json!("realtime") {
            println!(
                "machine   froze {ms:.0} ms or more (nothing ran); the tails above include it"
            );
        } else {
            println!("machine   the freeze watch (normal priority) woke {ms:.0} ms late");
        }
    }
    for (lane, tokens) in lanes.iter().zip(per_lane) {
        println!("lane {:<4} {}  {}", lane.index, describe(lane), group(*tokens));
    }
    if let Some(n) = report["rescues"].as_u64().filter(|&n| n > 0) {
        println!(
            "rescues   {n}: other threads starved the heavy lanes, and the light lanes took \
             heavy work meanwhile (docs/lanes.md)"
        );
    }
    if let Some(t) = report.get("telemetry") {
        println!(
            "log       {} records in {} files, {} dropped",
            t["written"], t["files"], t["dropped"]
        );
    }
    if let Some(digest) = report["result_digest"].as_str() {
        // The text stream awaits each handle once, so it has no count of calls
        // resolved twice to give.
        let twice = match report["double_resolved"].as_u64() {
            Some(n) => format!(" {n} resolved twice,"),
            None => String::new(),
        };
        println!(
            "results   digest {digest}, {} lost,{twice} {} failed",
            report["lost"], report["failed"]
        );
    }
    if let Some(r) = report.get("remote") {
        println!(
            "remote    {} tokens, {} fell back, {} redelivered, {} duplicate results, \
             overhead p50 {:.0} µs",
            r["remote_tokens"],
            r["fell_back"],
            r["redelivered"],
            r["duplicate_results"],
            r["overhead_p50_us"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(mib) = report["peak_rss_mib"].as_f64() {
        println!("peak RSS  {mib:.0} MiB");
    }
}

fn describe(lane: &LaneInfo) -> String {
    match (lane.core, lane.pinned) {
        (Some(core), true) => format!("{:<5} core {core:<3}", lane.set.as_str()),
        _ => format!("{:<5} floating, {} priority", lane.set.as_str(), lane.priority),
    }
}
