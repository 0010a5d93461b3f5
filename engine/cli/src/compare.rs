//! `compare`: the same stream under the tag, running-average, learned and oracle
//! routers, medians over interleaved runs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokengate::router::{EwmaRouter, LearnedRouter, Router, StaticRouter};
use tokengate_workloads::freeze;
use tokengate_workloads::mixed::{self, OracleRouter};

use crate::run::{adaptation, shift_of, stream_config, workload_name, StreamArgs};
use crate::{builder, load_model, EngineArgs, Workload};

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// The stream to compare on.
    pub(crate) workload: Workload,
    #[command(flatten)]
    pub(crate) stream: StreamArgs,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    /// Cost model file (default: models/default.bin in the working directory if there is
    /// one, else the shipped model built into this binary).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Also run the adaptive router (always on for `drift`).
    #[arg(long)]
    adaptive: bool,
    /// Runs per router (interleaved); each figure is the median over runs, with its range.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub(crate) repeat: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The same stream under the tag, running-average, learned and oracle routers, at the
/// engine's defaults unless lane flags are given; medians over interleaved runs.
pub(crate) fn compare(args: CompareArgs) -> Result<()> {
    if args.workload == Workload::Leibniz {
        bail!("compare runs a stream of mixed calls: use `compare mislabeled`, `mixed`, `drift` or `text`");
    }
    if args.workload == Workload::Text {
        if args.model.is_some() || args.adaptive {
            bail!("`compare text` fits its own two models (size only, and with cost features): --model and --adaptive do not apply");
        }
        return crate::compare_text::compare_text(args);
    }
    let config = stream_config(args.workload, &args.stream)?;
    let plan = mixed::plan(&config);
    let shift = shift_of(&config);
    let model = load_model(args.model.as_deref())?
        .context("compare needs a model: pass --model (the built-in one was refused)")?;
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
            run_progress(args.json, name, repeat, args.repeat);
            let builder = match router {
                Some(router) => builder(&args.engine).router(Arc::clone(router)),
                None => builder(&args.engine).adapt(adaptation(model.clone(), args.engine.batch)),
            };
            let follow = (*name == "oracle").then_some(&*oracle);
            let run = mixed::run_with(builder, &plan, config.rate, shift, follow)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            runs.push(run);
        }
    }
    let oracle_runs = runs.last().cloned().unwrap_or_default();
    let mut results = serde_json::Map::new();
    for ((name, _), runs) in routers.iter().zip(&runs) {
        let mut result = router_summary(runs);
        if shift.is_some() {
            let after: Vec<f64> = runs.iter().map(after_shift_p99_ms).collect();
            result["light_p99_after_shift_ms"] = json!(median(&after));
            result["light_p99_after_shift_ms_range"] = json!(range(&after));
            if *name == "adaptive" {
                let recoveries: Vec<Option<f64>> =
                    runs.iter().zip(&oracle_runs).map(|(r, o)| recovery_s(r, o)).collect();
                // A run that never recovered counts as never (+∞): the median exists
                // while more than half the runs recovered.
                let ranked: Vec<f64> =
                    recoveries.iter().map(|r| r.unwrap_or(f64::INFINITY)).collect();
                let middle = median(&ranked);
                let recovered = recoveries.iter().flatten().count();
                result["recovery_s"] = if middle.is_finite() { json!(middle) } else { Value::Null };
                result["recovered_runs"] = json!(recovered);
                result["recovery_s_runs"] = json!(recoveries);
                // A freeze of the machine after the shift holds every router's calls;
                // the oracle's run is another run, which it may have spared.
                result["freeze_after_shift_ms_runs"] = json!(runs
                    .iter()
                    .map(|r| r.freezes.longest_ms(r.shift_s.unwrap_or(0.0), f64::INFINITY))
                    .collect::<Vec<_>>());
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
        "freeze_watch": freeze_watch(&runs),
        "routers": results,
    });
    if args.json {
        println!("{report}");
    } else {
        print_compare(&report);
    }
    Ok(())
}

/// One router's figures over its runs: makespan and light latency (medians and ranges),
/// the share of truly heavy calls that ran on a heavy lane, and failures.
pub(crate) fn router_summary(runs: &[mixed::RouterRun]) -> Value {
    let makespans: Vec<f64> = runs.iter().map(|r| r.makespan.as_secs_f64()).collect();
    let light: Vec<mixed::Latency> =
        runs.iter().map(|r| mixed::Latency::of(r.light_ns.clone())).collect();
    let p50s: Vec<f64> = light.iter().map(|l| l.p50_ms).collect();
    let p99s: Vec<f64> = light.iter().map(|l| l.p99_ms).collect();
    let (heavy, on_heavy) = runs.iter().fold((0, 0), |(h, o), r| (h + r.heavy.0, o + r.heavy.1));
    json!({
        "makespan_s": median(&makespans),
        "makespan_s_range": range(&makespans),
        "light_p50_ms": median(&p50s),
        "light_p99_ms": median(&p99s),
        "light_p99_ms_range": range(&p99s),
        "light_p99_ms_runs": p99s,
        "light_tokens": light.first().map_or(0, |l| l.count),
        "heavy_on_heavy_lane": if heavy == 0 { 0.0 } else { on_heavy as f64 / heavy as f64 },
        "failed": runs.iter().map(|r| r.failures).sum::<usize>(),
        // The longest freeze of the whole machine in each run (0: none; see `freeze`).
        "freeze_max_ms_runs": runs.iter().map(|r| r.freezes.longest_all_ms()).collect::<Vec<_>>(),
        // Rescues of heavy lanes starved by other threads, per run (docs/lanes.md).
        "rescues_runs": runs.iter().map(|r| r.rescues).collect::<Vec<_>>(),
    })
}

/// How the runs' freeze watch ran, the weakest of any run (`freeze::Watch`).
pub(crate) fn freeze_watch(runs: &[Vec<mixed::RouterRun>]) -> &'static str {
    runs.iter().flatten().map(|r| r.freezes.watch()).min().unwrap_or(freeze::Watch::None).name()
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

pub(crate) fn median(values: &[f64]) -> f64 {
    tokengate_workloads::stats::median(values)
}

pub(crate) fn range(values: &[f64]) -> [f64; 2] {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [min, max]
}

/// True when no lane flag changes the engine's own defaults.
pub(crate) fn engine_defaults(engine: &EngineArgs) -> bool {
    !engine.isolate_heavy
        && engine.steal_backlog.is_none()
        && engine.light_budget_us.is_none()
        && engine.workers.is_none()
        && engine.heavy_lanes.is_none()
}

pub(crate) fn lane_settings(engine: &EngineArgs) -> Value {
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

pub(crate) fn print_compare(report: &Value) {
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
    let freezes: Vec<f64> = report["routers"]
        .as_object()
        .into_iter()
        .flat_map(|routers| routers.values())
        .flat_map(|r| r["freeze_max_ms_runs"].as_array().cloned().unwrap_or_default())
        .filter_map(|ms| ms.as_f64())
        .collect();
    let frozen = freezes.iter().filter(|&&ms| ms > 0.0).count();
    if frozen > 0 {
        let min = freeze::FREEZE_MIN.as_millis();
        let what = if report["freeze_watch"] == json!("realtime") {
            format!("the machine froze (nothing ran for {min} ms or more)")
        } else {
            format!("the freeze watch (normal priority: real-time refused) woke {min} ms late")
        };
        println!(
            "{what} in {frozen} of {} runs, at most {:.0} ms: those runs' tails are the \
             machine's as much as the router's",
            freezes.len(),
            freezes.iter().copied().fold(0.0, f64::max)
        );
    }
    let rescued: Vec<String> = report["routers"]
        .as_object()
        .into_iter()
        .flat_map(|routers| routers.iter())
        .filter_map(|(name, r)| {
            let n: u64 = r["rescues_runs"].as_array()?.iter().filter_map(|n| n.as_u64()).sum();
            (n > 0).then(|| format!("{name} {n}"))
        })
        .collect();
    if !rescued.is_empty() {
        println!(
            "other threads starved the heavy lanes (rescues: {}): the machine was busy with \
             more than this run",
            rescued.join(", ")
        );
    }
}

/// Which run starts, one line on stderr (not with `--json` or `-q`): before the run, so
/// its engine's log lines follow their router's name.
pub(crate) fn run_progress(json: bool, name: &str, repeat: u64, repeats: u64) {
    if !json && !crate::logging::quiet() {
        eprintln!("{name}: run {} of {repeats}", repeat + 1);
    }
}
