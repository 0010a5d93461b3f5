//! `run` and `compare`: the built-in workloads, their reports, and routers side by side.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokengate::model::Model;
use tokengate::{
    Adaptation, AdaptiveRouter, Engine, EwmaRouter, LaneInfo, LearnedRouter, Router, StaticRouter,
    TelemetryStats, Weight,
};
use tokengate_workloads::leibniz::Pyramid;
use tokengate_workloads::mixed::{self, MixedConfig, MixedOps, OracleRouter};

use crate::ctl::{with_control, ControlArgs};
use crate::remote::{with_nats, NatsArgs};
use crate::{
    builder, group, load_model, make_router, peak_rss_mib, progress_bar, stop_on_ctrl_c,
    EngineArgs, RouterChoice, Workload,
};

#[derive(Args)]
struct StreamArgs {
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
}

#[derive(Args)]
pub(crate) struct RunArgs {
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
    /// Log one token in K (default 1; 64 for `leibniz --adapt`, whose sub-microsecond
    /// tokens would otherwise spend more on their rows than on their work).
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// The stream to compare on.
    workload: Workload,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Cost model file (default: the shipped models/default.bin).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Also run the adaptive router (always on for `drift`).
    #[arg(long)]
    adaptive: bool,
    /// Runs per router (interleaved); each figure is the median over runs, with its range.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeat: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    if args.model.is_some() && args.router != RouterChoice::Model {
        bail!("--model only applies with --router model");
    }
    let default_sample = if args.adapt && args.workload == Workload::Leibniz { 64 } else { 1 };
    let mut builder = builder(&args.engine).log_sample(args.log_sample.unwrap_or(default_sample));
    if args.adapt {
        if args.router != RouterChoice::Model {
            bail!("--adapt re-fits the model: it needs --router model");
        }
        let model = load_model(args.model.as_deref())?.context(
            "--adapt needs a starting model: pass --model or restore models/default.bin",
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
    };
    let (mut report, truths) = match outcome {
        Ok(outcome) => outcome,
        Err(_) if engine.is_shutting_down() => {
            // Stopped on purpose (Ctrl-C or the control port): finish cleanly.
            engine.shutdown();
            if let Some(stats) = engine.telemetry_stats() {
                tracing::info!("log: {} records in {} files", stats.written, stats.files.len());
            }
            tracing::warn!("stopped early: the engine was shut down before the workload finished");
            std::process::exit(130);
        }
        Err(e) => return Err(e),
    };
    let lanes = engine.lanes();
    let per_lane: Vec<u64> = engine.lane_stats().iter().map(|s| s.tokens).collect();
    engine.shutdown();
    if let Some(remote) = engine.remote_stats() {
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
    let by_callers = engine.caller_tokens();
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
        "caller_tokens": engine.caller_tokens() - by_callers,
    }))
}

fn stream_config(workload: Workload, stream: &StreamArgs) -> Result<MixedConfig> {
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

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Leibniz => "leibniz",
        Workload::Mixed => "mixed",
        Workload::Mislabeled => "mislabeled",
        Workload::Drift => "drift",
    }
}

/// The shift's token index of a `drift` stream.
fn shift_of(config: &MixedConfig) -> Option<usize> {
    config.drift_at.map(|at| mixed::shift_index(config.tokens, at))
}

/// An adaptation of `model`, re-fitted by the trainer's own fit.
fn adaptation(model: Model, batch: u32) -> Adaptation {
    let router = Arc::new(AdaptiveRouter::new(model, StaticRouter::new(batch)));
    Adaptation::new(router, Arc::new(trainer::adapt::TreeRefit::default()))
}

/// Runs the stream; returns the report and each token's true weight.
fn run_stream(engine: &Engine, args: &RunArgs) -> Result<(Value, Vec<(u64, Weight)>)> {
    let config = stream_config(args.workload, &args.stream)?;
    let ops = MixedOps::register(engine)?;
    let plan = mixed::plan(&config);
    let run = mixed::drive(&ops, &plan, config.rate, shift_of(&config));
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
    });
    Ok((report, run.truths))
}

fn latency_json(latency: mixed::Latency) -> Value {
    json!({ "tokens": latency.count, "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms })
}

/// The same stream under the tag, running-average, learned and oracle routers, at the
/// engine's defaults unless lane flags are given; medians over interleaved runs.
pub(crate) fn compare(args: CompareArgs) -> Result<()> {
    if args.workload == Workload::Leibniz {
        bail!("compare runs a mixed stream: use `compare mislabeled`, `mixed` or `drift`");
    }
    let config = stream_config(args.workload, &args.stream)?;
    let plan = mixed::plan(&config);
    let shift = shift_of(&config);
    let model = load_model(args.model.as_deref())?
        .context("compare needs a model: pass --model or restore models/default.bin")?;
    let model_version = model.version();
    let tags = StaticRouter::new(args.engine.batch);
    let oracle = Arc::new(OracleRouter::default());
    let mut routers: Vec<(&str, Option<Arc<dyn Router>>)> = vec![
        ("tags", Some(Arc::new(tags))),
        ("ewma", Some(Arc::new(EwmaRouter::new(tags)))),
        ("learned", Some(Arc::new(LearnedRouter::new(model.clone(), tags)))),
    ];
    if args.workload == Workload::Drift || args.adaptive {
        routers.push(("adaptive", None)); // a fresh adaptive router per run
    }
    routers.push(("oracle", Some(Arc::clone(&oracle) as Arc<dyn Router>)));
    let mut runs: Vec<Vec<mixed::RouterRun>> = vec![Vec::new(); routers.len()];
    // Interleaved repeats, so a slow patch of a shared machine hits every router alike.
    for repeat in 0..args.repeat {
        for ((name, router), runs) in routers.iter().zip(&mut runs) {
            let builder = match router {
                Some(router) => builder(&args.engine).router(Arc::clone(router)),
                None => builder(&args.engine).adapt(adaptation(model.clone(), args.engine.batch)),
            };
            let follow = (*name == "oracle").then_some(&*oracle);
            let run = mixed::run_with(builder, &plan, config.rate, shift, follow)
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
    let oracle_runs = runs.last().cloned().unwrap_or_default();
    let mut results = serde_json::Map::new();
    for ((name, _), runs) in routers.iter().zip(&runs) {
        let makespans: Vec<f64> = runs.iter().map(|r| r.makespan.as_secs_f64()).collect();
        let light: Vec<mixed::Latency> =
            runs.iter().map(|r| mixed::Latency::of(r.light_ns.clone())).collect();
        let p50s: Vec<f64> = light.iter().map(|l| l.p50_ms).collect();
        let p99s: Vec<f64> = light.iter().map(|l| l.p99_ms).collect();
        let (heavy, on_heavy) =
            runs.iter().fold((0, 0), |(h, o), r| (h + r.heavy.0, o + r.heavy.1));
        let mut result = json!({
            "makespan_s": median(&makespans),
            "makespan_s_range": range(&makespans),
            "light_p50_ms": median(&p50s),
            "light_p99_ms": median(&p99s),
            "light_p99_ms_range": range(&p99s),
            "light_p99_ms_runs": p99s,
            "light_tokens": light.first().map_or(0, |l| l.count),
            "heavy_on_heavy_lane": if heavy == 0 { 0.0 } else { on_heavy as f64 / heavy as f64 },
            "failed": runs.iter().map(|r| r.failures).sum::<usize>(),
        });
        if shift.is_some() {
            let after: Vec<f64> = runs.iter().map(after_shift_p99_ms).collect();
            result["light_p99_after_shift_ms"] = json!(median(&after));
            result["light_p99_after_shift_ms_range"] = json!(range(&after));
            if *name == "adaptive" {
                let recoveries: Vec<Option<f64>> =
                    runs.iter().zip(&oracle_runs).map(|(r, o)| recovery_s(r, o)).collect();
                let found: Vec<f64> = recoveries.iter().flatten().copied().collect();
                result["recovery_s"] = if found.len() == recoveries.len() {
                    json!(median(&found))
                } else {
                    Value::Null
                };
                result["recovery_s_runs"] = json!(recoveries);
                result["rolling_p99_ms_runs"] = json!(runs
                    .iter()
                    .zip(&oracle_runs)
                    .map(|(r, o)| rolling_table(r, o))
                    .collect::<Vec<_>>());
            }
        }
        results.insert(name.to_string(), result);
    }
    let report = json!({
        "workload": workload_name(args.workload),
        "tokens": plan.len(),
        "repeat": args.repeat,
        "seed": config.seed,
        "rate": config.rate,
        "mislabel_share": config.mislabel_share,
        "drift_at": config.drift_at,
        "engine_defaults": engine_defaults(&args.engine),
        "lane_settings": lane_settings(&args.engine),
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

/// p99 latency (ms) of the light tokens submitted after the shift.
fn after_shift_p99_ms(run: &mixed::RouterRun) -> f64 {
    let shift = run.shift_s.unwrap_or(0.0);
    let after = run.light_timed.iter().filter(|(at, _)| *at >= shift).map(|(_, ns)| *ns);
    mixed::Latency::of(after.collect()).p99_ms
}

/// Rolling p99 (ms) of light tokens submitted in [from, from + 1 s).
fn rolling_p99_ms(run: &mixed::RouterRun, from: f64) -> Option<f64> {
    let window: Vec<u64> = run
        .light_timed
        .iter()
        .filter(|(at, _)| *at >= from && *at < from + 1.0)
        .map(|(_, ns)| *ns)
        .collect();
    (!window.is_empty()).then(|| mixed::Latency::of(window).p99_ms)
}

/// Per 0.25 s step: (seconds since the start, this run's rolling 1-s light p99, the
/// oracle's), for looking at how a router recovers.
fn rolling_table(run: &mixed::RouterRun, oracle: &mixed::RouterRun) -> Vec<(f64, f64, f64)> {
    let end = run.light_timed.iter().map(|(at, _)| *at).fold(0.0, f64::max) - 1.0;
    let mut table = Vec::new();
    let mut from = 0.0;
    while from <= end {
        let mine = rolling_p99_ms(run, from).unwrap_or(f64::NAN);
        let best = rolling_p99_ms(oracle, from).unwrap_or(f64::NAN);
        table.push((from, mine, best));
        from += 0.25;
    }
    table
}

/// Seconds after the shift from which the run's rolling 1-s light p99 stays within 1.5×
/// the oracle's (in steps of 0.25 s; the oracle's p99 is floored at 0.1 ms so that noise
/// at a few microseconds does not count); `None` if it never does.
fn recovery_s(run: &mixed::RouterRun, oracle: &mixed::RouterRun) -> Option<f64> {
    let shift = run.shift_s?;
    let end = run.light_timed.iter().map(|(at, _)| *at).fold(0.0, f64::max) - 1.0;
    let mut recovered: Option<f64> = None;
    let mut from = shift;
    while from <= end {
        let ok = match (rolling_p99_ms(run, from), rolling_p99_ms(oracle, from)) {
            (Some(mine), Some(best)) => mine <= 1.5 * best.max(0.1),
            _ => true,
        };
        match (ok, recovered) {
            (true, None) => recovered = Some(from - shift),
            (false, _) => recovered = None,
            _ => {}
        }
        from += 0.25;
    }
    recovered
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn range(values: &[f64]) -> [f64; 2] {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [min, max]
}

/// True when no lane flag changes the engine's own defaults.
fn engine_defaults(engine: &EngineArgs) -> bool {
    !engine.isolate_heavy
        && engine.steal_backlog.is_none()
        && engine.light_budget_us.is_none()
        && engine.workers.is_none()
        && engine.heavy_lanes.is_none()
}

fn lane_settings(engine: &EngineArgs) -> Value {
    let policy = if engine.isolate_heavy {
        "isolate_heavy".to_string()
    } else if let Some(n) = engine.steal_backlog {
        format!("steal_backlog {n}")
    } else {
        "cost_aware".to_string()
    };
    json!({
        "policy": policy,
        "light_budget_us": engine.light_budget_us.unwrap_or(100),
        "workers": engine.workers,
        "heavy_lanes": engine.heavy_lanes,
        "pin": !engine.no_pin,
    })
}

fn print_compare(report: &Value) {
    let settings = &report["lane_settings"];
    println!(
        "{} tokens of `{}` at {} tokens/s, {:.0}% mislabelled, {} runs each (medians, min–max), lanes: {}{}, model {}",
        report["tokens"],
        report["workload"].as_str().unwrap_or("?"),
        report["rate"],
        report["mislabel_share"].as_f64().unwrap_or(0.0) * 100.0,
        report["repeat"],
        settings["policy"].as_str().unwrap_or("?"),
        if report["engine_defaults"] == json!(true) { " (engine defaults)" } else { "" },
        report["model_version"].as_str().unwrap_or("?"),
    );
    println!(
        "{:<8} {:>20} {:>13} {:>22} {:>15}",
        "router", "makespan s", "light p50 ms", "light p99 ms", "heavy on heavy"
    );
    let routers = report["routers"].as_object().cloned().unwrap_or_default();
    for (name, r) in routers {
        let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let span = |key: &str| {
            let v = &r[key];
            format!(
                "{:.3}–{:.3}",
                v[0].as_f64().unwrap_or(f64::NAN),
                v[1].as_f64().unwrap_or(f64::NAN)
            )
        };
        println!(
            "{:<8} {:>6.3} ({:>11}) {:>13.3} {:>7.3} ({:>12}) {:>14.0}%",
            name,
            f("makespan_s"),
            span("makespan_s_range"),
            f("light_p50_ms"),
            f("light_p99_ms"),
            span("light_p99_ms_range"),
            f("heavy_on_heavy_lane") * 100.0,
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
    if let Some(digest) = report["result_digest"].as_str() {
        println!(
            "results   digest {digest}, {} lost, {} resolved twice, {} failed",
            report["lost"], report["double_resolved"], report["failed"]
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
        _ => format!("{:<5} unpinned", lane.set.as_str()),
    }
}
