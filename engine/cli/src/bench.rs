//! `tokengate bench service`: the service shape (an open-loop Poisson stream of cheap
//! and expensive requests, each awaited by its own tokio task) on tokengate and on the
//! peers a user would otherwise reach for, side by side in one process.
//!
//! Every executor gets the same seeded stream, in interleaved rounds; a request's
//! latency runs from its scheduled arrival to the moment its awaiting task has the
//! result (so a dispatcher that falls behind is charged, not hidden). Results are
//! checked equal across executors.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tokengate::lanes::LaneSplit;
use tokengate::model::Model;
use tokengate::router::{LearnedRouter, StaticRouter};
use tokengate::telemetry::RecordOutcome;
use tokengate::{Engine, Operation, Weight};
use tokengate_workloads::freeze::{FreezeWatch, Watch};
use tokengate_workloads::service::{self, Buffer, Call, Request};
use tokengate_workloads::stats;
use trainer::dataset::{Data, Row};
use trainer::fit::{fit, FitOptions};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Cheap and expensive requests from a tokio service, on tokengate and its peers.
    Service(ServiceArgs),
}

#[derive(Args)]
pub struct ServiceArgs {
    /// Loads to run at: the share of all cores the stream keeps busy (0.01–1.5; above 1
    /// the stream asks for more than the cores can give).
    #[arg(long, value_delimiter = ',', default_values_t = [0.4, 0.66, 0.8])]
    loads: Vec<f64>,
    /// Interleaved rounds per executor and load.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Seconds of the stream before the measured part (the untagged engine learns in it).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seed of the stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Executors to run (default: all).
    #[arg(long, value_delimiter = ',')]
    executors: Option<Vec<Executor>>,
    /// Cost of the shortest expensive call in ms (its buffer length is calibrated to it).
    #[arg(long, default_value_t = 2.0)]
    expensive_ms: f64,
    /// Heavy lanes of the tokengate executors (default: the engine's).
    #[arg(long)]
    heavy_lanes: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Executor {
    /// `tokio::task::spawn_blocking` per call (the kernel time-slices every call).
    SpawnBlocking,
    /// A rayon pool with one thread per core, `spawn` per call.
    Rayon,
    /// tokengate at its defaults, cheap calls tagged light and expensive ones heavy.
    Tagged,
    /// tokengate at its defaults, every call tagged light (a user who did not tag).
    Untagged,
    /// tokengate, honest tags, routed by the tags alone (no online learning).
    Tags,
    /// tokengate with the static pinned split (`LaneSplit::Pinned`), honest tags.
    Pinned,
    /// tokengate routed by a model fitted (per operation, on the size hint) on a logged
    /// run of the same stream's shape with another seed, every call tagged light.
    Model,
}

impl Executor {
    fn name(self) -> &'static str {
        match self {
            Executor::SpawnBlocking => "spawn_blocking",
            Executor::Rayon => "rayon",
            Executor::Tagged => "tokengate tagged",
            Executor::Untagged => "tokengate untagged",
            Executor::Tags => "tokengate tags only",
            Executor::Pinned => "tokengate pinned split",
            Executor::Model => "tokengate fitted model",
        }
    }

    const ALL: [Executor; 7] = [
        Executor::SpawnBlocking,
        Executor::Rayon,
        Executor::Tagged,
        Executor::Untagged,
        Executor::Model,
        Executor::Tags,
        Executor::Pinned,
    ];
}

pub fn bench(args: BenchArgs) -> Result<()> {
    match args.what {
        Bench::Service(args) => service_bench(args),
    }
}

/// What one executor runs calls on, for one round.
#[derive(Clone)]
enum Exec {
    Blocking,
    Rayon(Arc<rayon::ThreadPool>),
    Engine { cheap: Operation<u64, u64>, expensive: Operation<Buffer, u64> },
}

impl Exec {
    async fn call(&self, call: Call) -> Result<u64> {
        Ok(match (self, call) {
            (Exec::Blocking, call) => tokio::task::spawn_blocking(move || service::run(call))
                .await
                .context("spawn_blocking")?,
            (Exec::Rayon(pool), call) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                pool.spawn(move || {
                    let _ = tx.send(service::run(call));
                });
                rx.await.context("rayon")?
            }
            (Exec::Engine { cheap, .. }, Call::Cheap(seed)) => {
                cheap.submit_async(seed).await.await.context("cheap call")?
            }
            (Exec::Engine { expensive, .. }, Call::Expensive(buffer)) => {
                expensive.submit_async(buffer).await.await.context("expensive call")?
            }
        })
    }
}

fn engine_for(
    executor: Executor,
    heavy_lanes: Option<usize>,
    model: Option<&[u8]>,
) -> Result<Option<(Engine, Exec)>> {
    let mut builder = Engine::builder();
    if let Some(heavy) = heavy_lanes.filter(|_| executor != Executor::Pinned) {
        builder = builder.heavy_lanes(heavy);
    }
    let heavy = match executor {
        Executor::SpawnBlocking | Executor::Rayon => return Ok(None),
        Executor::Untagged => Weight::Light,
        Executor::Model => {
            let model = Model::from_bytes(model.context("no fitted model")?)?;
            builder = builder.router(Arc::new(LearnedRouter::new(model, StaticRouter::new(128))));
            Weight::Light
        }
        Executor::Tagged => Weight::Heavy,
        Executor::Tags => {
            builder = builder.router(Arc::new(StaticRouter::new(128)));
            Weight::Heavy
        }
        Executor::Pinned => {
            builder = builder.split(LaneSplit::Pinned).router(Arc::new(StaticRouter::new(128)));
            Weight::Heavy
        }
    };
    let engine = builder.build().context("building the engine")?;
    let cheap = engine.register("cheap", Weight::Light, service::cheap)?;
    let expensive = engine
        .operation::<Buffer>("expensive", heavy)
        .size_hint(service::buffer_len)
        .register(service::expensive)?;
    Ok(Some((engine, Exec::Engine { cheap, expensive })))
}

/// Fits the `model` executor's cost model: runs `secs` of the stream (seed `seed`) on a
/// tag-routed engine that logs every call, every call tagged light, then fits one tree
/// per operation on the size hint, as `trainer fit --per-operation` does.
fn fit_model(
    runtime: &tokio::runtime::Runtime,
    rate: f64,
    secs: f64,
    seed: u64,
    base_len: u32,
) -> Result<(Vec<u8>, f64)> {
    let engine = Engine::builder()
        .router(Arc::new(StaticRouter::new(128)))
        .log_in_memory()
        .build()
        .context("building the logging engine")?;
    let cheap = engine.register("cheap", Weight::Light, service::cheap)?;
    let expensive = engine
        .operation::<Buffer>("expensive", Weight::Light)
        .size_hint(service::buffer_len)
        .register(service::expensive)?;
    let exec = Exec::Engine { cheap, expensive };
    let requests = service::stream(seed, rate, secs, base_len);
    let _ = run_round(runtime, &exec, &requests, 0);
    drop(exec);
    engine.shutdown();
    let ops = vec!["cheap".to_string(), "expensive".to_string()];
    let rows = engine
        .take_records()
        .into_iter()
        .filter(|r| r.outcome == RecordOutcome::Completed)
        .map(|r| Row { op: r.op, arg_size: r.arg_size, cost: r.cost, run_ns: r.run_ns })
        .collect();
    let data = Data { ops, rows, ..Data::default() };
    let options = FitOptions { per_operation: true, ..FitOptions::default() };
    let fitted = fit(&data, &options).context("fitting the model")?;
    Ok((fitted.bytes, fitted.metrics.accuracy))
}

/// One executor's round: latencies (ns) of the measured cheap and expensive calls, the
/// results' digest, the CPU the process used, and two figures that tell a stall's side.
struct Round {
    cheap: Vec<u64>,
    expensive: Vec<u64>,
    digest: u64,
    cpu_cores: f64,
    wall_s: f64,
    lost: usize,
    /// The longest span (ns) of the measured part in which a cheap call was waiting and
    /// no cheap call finished (finishes of warm-up calls are not counted). A late
    /// dispatcher shows here too, as latencies count from the scheduled arrival.
    cheap_stall_ns: u64,
    /// The latest (ns) the dispatcher handed a measured request to the runtime after its
    /// scheduled arrival (its sleep overslept, or its `spawn` waited). The dispatcher
    /// shares the cores, so the executor's load can make it late too; a stall about as
    /// long as this lateness was the generator's, one much longer the executor's.
    dispatch_late_ns: u64,
    /// The longest freeze of the whole machine in the measured part (ms, at least; 0:
    /// none seen; see `tokengate_workloads::freeze`): a stall this long was neither the
    /// generator's nor the executor's.
    freeze_ms: f64,
    /// How the freeze watch ran.
    freeze_watch: Watch,
    /// Times the engine found its heavy lanes starved by other threads and had its light
    /// lanes take heavy work (`EngineStats::rescues`; 0 for the baselines).
    rescues: u64,
}

fn run_round(
    runtime: &tokio::runtime::Runtime,
    exec: &Exec,
    requests: &[Request],
    warmup_ns: u64,
) -> Round {
    let (tx, rx) = mpsc::channel::<(usize, u64, Result<u64>)>();
    let cpu_before = cpu_seconds();
    let watch = FreezeWatch::start();
    let start = Instant::now();
    let mut dispatch_late_ns = 0;
    for (index, request) in requests.iter().enumerate() {
        let scheduled = start + Duration::from_nanos(request.at_ns);
        let ahead = scheduled.saturating_duration_since(Instant::now());
        // Sleep, never spin: a spinning dispatcher would take a core from the executor.
        if ahead > Duration::from_micros(20) {
            std::thread::sleep(ahead);
        }
        let (exec, tx, call) = (exec.clone(), tx.clone(), request.call);
        runtime.spawn(async move {
            let result = exec.call(call).await;
            let latency = Instant::now().saturating_duration_since(scheduled).as_nanos() as u64;
            let _ = tx.send((index, latency, result));
        });
        if request.at_ns >= warmup_ns {
            let late = Instant::now().saturating_duration_since(scheduled).as_nanos() as u64;
            dispatch_late_ns = dispatch_late_ns.max(late);
        }
    }
    drop(tx);
    let mut results = vec![None; requests.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok((index, latency, result)) =
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        results[index] = result.ok().map(|value| (latency, value));
    }
    let wall_s = start.elapsed().as_secs_f64();
    let freezes = watch.stop();
    let freeze_ms = freezes.longest_ms(warmup_ns as f64 / 1e9, f64::INFINITY);
    let cpu_cores = (cpu_seconds() - cpu_before) / wall_s;
    let mut round = Round {
        cheap: Vec::new(),
        expensive: Vec::new(),
        digest: 0,
        cpu_cores,
        wall_s,
        lost: 0,
        cheap_stall_ns: 0,
        dispatch_late_ns,
        freeze_ms,
        freeze_watch: freezes.watch(),
        rescues: 0,
    };
    // (finished, arrived) of each measured cheap call, ns from the start.
    let mut cheap_spans = Vec::new();
    for (request, result) in requests.iter().zip(results) {
        let Some((latency, value)) = result else {
            round.lost += 1;
            continue;
        };
        round.digest = round.digest.wrapping_mul(31).wrapping_add(value);
        if request.at_ns < warmup_ns {
            continue;
        }
        match request.call {
            Call::Cheap(_) => {
                round.cheap.push(latency);
                cheap_spans.push((request.at_ns + latency, request.at_ns));
            }
            Call::Expensive(_) => round.expensive.push(latency),
        }
    }
    round.cheap_stall_ns = longest_stall(&mut cheap_spans);
    round.cheap.sort_unstable();
    round.expensive.sort_unstable();
    round
}

/// The longest span in which at least one of `calls` (finished, arrived) had arrived
/// and not finished, and none finished.
fn longest_stall(calls: &mut [(u64, u64)]) -> u64 {
    calls.sort_unstable();
    let (mut longest, mut first_arrival_after) = (0, u64::MAX);
    // From the last call back: the earliest arrival among the calls finishing at or
    // after each one; the span before a finish with none in between starts at the later
    // of the previous finish and that arrival.
    for at in (0..calls.len()).rev() {
        let (finished, arrived) = calls[at];
        first_arrival_after = first_arrival_after.min(arrived);
        let previous = if at == 0 { 0 } else { calls[at - 1].0 };
        longest = longest.max(finished.saturating_sub(previous.max(first_arrival_after)));
    }
    longest
}

/// The process's CPU time so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: `getrusage` fills the zeroed struct it is given for this process.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The `q` quantile of sorted nanoseconds, in ms (exact: nearest rank).
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    stats::quantile(sorted, q).map_or(f64::NAN, |ns| ns as f64 / 1e6)
}

/// Mean wall time of `f` over `n` calls, in ns.
fn time_ns(n: u32, mut f: impl FnMut(u32) -> u64) -> f64 {
    let start = Instant::now();
    let mut sink = 0u64;
    for i in 0..n {
        sink = sink.wrapping_add(f(i));
    }
    std::hint::black_box(sink);
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

/// The stream's calibration on this machine: the base buffer length, and the mean cost
/// of a cheap and of an expensive call (ns).
fn calibrate(expensive_ms: f64) -> (u32, f64, f64) {
    let probe = 100_000u32;
    let probe_ns = time_ns(8, |i| service::expensive(Buffer { seed: u64::from(i), len: probe }));
    let base_len = ((f64::from(probe) * expensive_ms * 1e6 / probe_ns) as u32).max(1_000);
    let cheap_ns = time_ns(20_000, |i| service::cheap(u64::from(i)));
    let mean_len = (f64::from(base_len) * service::mean_tail()) as u32;
    let expensive_ns =
        time_ns(8, |i| service::expensive(Buffer { seed: u64::from(i) + 99, len: mean_len }));
    (base_len, cheap_ns, expensive_ns)
}

/// A line of progress on stderr, unless `-q`.
macro_rules! progress {
    ($($arg:tt)*) => {
        if !crate::logging::quiet() {
            eprintln!($($arg)*);
        }
    };
}

fn service_bench(args: ServiceArgs) -> Result<()> {
    if args.loads.iter().any(|&load| !(0.01..=1.5).contains(&load)) {
        bail!("--loads: each load must be between 0.01 and 1.5 (a share of all cores)");
    }
    if args.rounds == 0 || args.secs <= 0.0 || args.warmup < 0.0 {
        bail!("--rounds must be at least 1, --secs above 0 and --warmup at least 0");
    }
    let executors = args.executors.clone().unwrap_or_else(|| Executor::ALL.to_vec());
    let cores = core_affinity::get_core_ids().map_or(1, |ids| ids.len()).max(1);
    let (base_len, cheap_ns, expensive_ns) = calibrate(args.expensive_ms);
    let share = service::EXPENSIVE_SHARE;
    let mean_ns = (1.0 - share) * cheap_ns + share * expensive_ns;
    progress!(
        "calibrated: cheap {:.1} µs, expensive mean {:.2} ms (base length {base_len}); {cores} cores",
        cheap_ns / 1e3,
        expensive_ns / 1e6
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let rayon =
        Arc::new(rayon::ThreadPoolBuilder::new().num_threads(cores).build().context("rayon pool")?);
    let mut loads = Vec::new();
    // The weakest watch of any round.
    let mut freeze_watch = Watch::Realtime;
    for &load in &args.loads {
        let rate = load * cores as f64 * 1e9 / mean_ns;
        let requests = service::stream(args.seed, rate, args.warmup + args.secs, base_len);
        let warmup_ns = (args.warmup * 1e9) as u64;
        let model = match executors.contains(&Executor::Model) {
            true => {
                let (bytes, accuracy) =
                    fit_model(&runtime, rate, 4.0, args.seed.wrapping_add(1000), base_len)?;
                progress!("load {load:.2}: fitted a model, held-out accuracy {accuracy:.3}");
                Some(bytes)
            }
            false => None,
        };
        let mut rounds: Vec<Vec<Round>> = executors.iter().map(|_| Vec::new()).collect();
        for round in 0..args.rounds {
            for (at, &executor) in executors.iter().enumerate() {
                let (engine, exec) = match engine_for(executor, args.heavy_lanes, model.as_deref())?
                {
                    Some((engine, exec)) => (Some(engine), exec),
                    None if executor == Executor::Rayon => (None, Exec::Rayon(Arc::clone(&rayon))),
                    None => (None, Exec::Blocking),
                };
                let mut result = run_round(&runtime, &exec, &requests, warmup_ns);
                result.rescues = engine.as_ref().map_or(0, |engine| engine.stats().rescues);
                drop(exec);
                drop(engine);
                progress!(
                    "load {load:.2} round {} {:<24} cheap p99 {:>8.3} ms  expensive p50 {:>8.3} ms  \
                     cpu {:.2}  cheap stall {:.1} ms  dispatch late {:.1} ms  machine froze {:.0} ms  \
                     rescues {}",
                    round + 1,
                    executor.name(),
                    quantile_ms(&result.cheap, 0.99),
                    quantile_ms(&result.expensive, 0.5),
                    result.cpu_cores,
                    result.cheap_stall_ns as f64 / 1e6,
                    result.dispatch_late_ns as f64 / 1e6,
                    result.freeze_ms,
                    result.rescues,
                );
                freeze_watch = freeze_watch.min(result.freeze_watch);
                rounds[at].push(result);
            }
        }
        loads.push(load_report(load, rate, &executors, &rounds, args.secs)?);
    }
    let report = json!({
        "bench": "service",
        "cores": cores,
        "rounds": args.rounds,
        "secs": args.secs,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "freeze_watch": freeze_watch.name(),
        "cheap_us": cheap_ns / 1e3,
        "expensive_mean_ms": expensive_ns / 1e6,
        "loads": loads,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Median and range of one figure over the rounds.
fn spread(values: impl Iterator<Item = f64>) -> Value {
    let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    json!({ "median": stats::median(&values), "min": values[0], "max": values[values.len() - 1] })
}

fn cheap(round: &Round) -> &Vec<u64> {
    &round.cheap
}

fn expensive(round: &Round) -> &Vec<u64> {
    &round.expensive
}

fn load_report(
    load: f64,
    rate: f64,
    executors: &[Executor],
    rounds: &[Vec<Round>],
    secs: f64,
) -> Result<Value> {
    // Every executor must have computed the same results from the same stream.
    for (round, first) in rounds[0].iter().enumerate() {
        for (executor, results) in executors.iter().zip(rounds) {
            let this = &results[round];
            if this.lost > 0 || this.digest != first.digest {
                bail!(
                    "load {load}: {} round {}: {} calls without a result, digest {:016x} vs \
                     {:016x}",
                    executor.name(),
                    round + 1,
                    this.lost,
                    this.digest,
                    first.digest
                );
            }
        }
    }
    let baseline = executors.iter().position(|&e| e == Executor::SpawnBlocking);
    let rows: Vec<Value> =
        executors
            .iter()
            .zip(rounds)
            .map(|(executor, results)| {
                let q = |pick: fn(&Round) -> &Vec<u64>, p: f64| {
                    spread(results.iter().map(|r| quantile_ms(pick(r), p)))
                };
                // Per round, this executor's figure over spawn_blocking's in the same round.
                let ratio =
                    |pick: fn(&Round) -> &Vec<u64>, p: f64| {
                        baseline.map(|b| {
                            spread(results.iter().zip(&rounds[b]).map(|(r, base)| {
                                quantile_ms(pick(r), p) / quantile_ms(pick(base), p)
                            }))
                        })
                    };
                json!({
                    "executor": executor.name(),
                    "cheap_p50_ms": q(cheap, 0.5),
                    "cheap_p99_ms": q(cheap, 0.99),
                    "cheap_p999_ms": q(cheap, 0.999),
                    "expensive_p50_ms": q(expensive, 0.5),
                    "expensive_p99_ms": q(expensive, 0.99),
                    "cheap_p99_vs_spawn_blocking": ratio(cheap, 0.99),
                    "expensive_p50_vs_spawn_blocking": ratio(expensive, 0.5),
                    "throughput_per_s": spread(results.iter().map(|r| {
                        (r.cheap.len() + r.expensive.len()) as f64 / secs
                    })),
                    "cpu_cores": spread(results.iter().map(|r| r.cpu_cores)),
                    "wall_s": spread(results.iter().map(|r| r.wall_s)),
                    "cheap_stall_max_ms":
                        spread(results.iter().map(|r| r.cheap_stall_ns as f64 / 1e6)),
                    "dispatch_late_max_ms":
                        spread(results.iter().map(|r| r.dispatch_late_ns as f64 / 1e6)),
                    "freeze_max_ms": spread(results.iter().map(|r| r.freeze_ms)),
                    "rescues": results.iter().map(|r| r.rescues).sum::<u64>(),
                })
            })
            .collect();
    Ok(json!({ "load": load, "rate_per_s": rate, "results_equal": true, "executors": rows }))
}

fn print_report(report: &Value) {
    println!(
        "service bench: {} cores, cheap {:.1} µs, expensive mean {:.2} ms, {} rounds × {} s \
         (+{} s warm-up); median [min–max] over rounds",
        report["cores"],
        report["cheap_us"].as_f64().unwrap_or(0.0),
        report["expensive_mean_ms"].as_f64().unwrap_or(0.0),
        report["rounds"],
        report["secs"],
        report["warmup_s"],
    );
    let cell = |v: &Value| match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.3} [{lo:.3}–{hi:.3}]"),
        _ => "–".to_string(),
    };
    for load in report["loads"].as_array().into_iter().flatten() {
        println!(
            "\nload {:.0}% ({:.0} requests/s), results equal",
            load["load"].as_f64().unwrap_or(0.0) * 100.0,
            load["rate_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:<24} {:>26} {:>26} {:>26} {:>26} {:>10} {:>6}",
            "executor",
            "cheap p99 ms",
            "÷ spawn_blocking",
            "expensive p50 ms",
            "÷ spawn_blocking",
            "req/s",
            "cpu"
        );
        for row in load["executors"].as_array().into_iter().flatten() {
            println!(
                "{:<24} {:>26} {:>26} {:>26} {:>26} {:>10.0} {:>6.2}",
                row["executor"].as_str().unwrap_or("?"),
                cell(&row["cheap_p99_ms"]),
                cell(&row["cheap_p99_vs_spawn_blocking"]),
                cell(&row["expensive_p50_ms"]),
                cell(&row["expensive_p50_vs_spawn_blocking"]),
                row["throughput_per_s"]["median"].as_f64().unwrap_or(0.0),
                row["cpu_cores"]["median"].as_f64().unwrap_or(0.0),
            );
        }
        println!(
            "{:<24} {:>26} {:>26} {:>26}",
            "", "cheap p50 ms", "cheap p99.9 ms", "expensive p99 ms"
        );
        for row in load["executors"].as_array().into_iter().flatten() {
            println!(
                "{:<24} {:>26} {:>26} {:>26}",
                row["executor"].as_str().unwrap_or("?"),
                cell(&row["cheap_p50_ms"]),
                cell(&row["cheap_p999_ms"]),
                cell(&row["expensive_p99_ms"]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::longest_stall;

    #[test]
    fn a_stall_is_a_span_with_a_call_waiting_and_none_finishing() {
        // (finished, arrived): one waits 10..40 while another finished at 20.
        assert_eq!(longest_stall(&mut [(40, 10), (20, 15)]), 20);
        // Idle time between calls is no stall.
        assert_eq!(longest_stall(&mut [(12, 10), (105, 100)]), 5);
        // Overlapping waits with no finish between count from the earliest arrival.
        assert_eq!(longest_stall(&mut [(90, 50), (91, 30), (5, 1)]), 60);
        assert_eq!(longest_stall(&mut []), 0);
    }
}
