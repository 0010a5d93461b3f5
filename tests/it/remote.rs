//! Remote lanes over NATS JetStream, against a real `nats-server` (Debian's package):
//! each test starts its own server on a free loopback port, with a secret and a
//! temporary store, and stops it. Without the program they are compiled as ignored
//! (`cargo test` lists them as such, with the reason: the root `build.rs` looks for
//! it); under CI (`CI=true`) they always run, and a missing program fails them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polars::prelude::{ParquetReader, SerReader};
use tokengate::remote::RemotePlacement;
use tokengate::remote::{RemoteConfig, Worker, WorkerConfig};
use tokengate::{Engine, LaneSet};
use tokengate_workloads::mixed::{self, MixedConfig, MixedOps, StreamRun};

/// A `nats-server -js` of this test's own; killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    secret: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server, or returns None (after saying so) when the program is missing
    /// outside CI.
    fn start() -> Option<NatsServer> {
        let program = which("nats-server");
        let Some(program) = program else {
            let message = "nats-server is not installed (apt-get install -y nats-server)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}: CI runs every test");
            }
            eprintln!("SKIPPED: {message}");
            return None;
        };
        let store = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let secret = format!("s{:x}", std::process::id() as u64 * 7919 + u64::from(port));
        let mut server = NatsServer { child: None, port, secret, _store: store };
        server.spawn(&program);
        Some(server)
    }

    fn spawn(&mut self, program: &PathBuf) {
        let child = Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "--auth", &self.secret])
            .arg("-sd")
            .arg(self._store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn config(&self) -> RemoteConfig {
        RemoteConfig::new(self.url()).token(self.secret.clone()).ack_wait(Duration::from_secs(2))
    }

    /// A JetStream context of this server's, on a runtime of its own, for tests that
    /// talk to the server behind the engine's back.
    fn jetstream(&self) -> (tokio::runtime::Runtime, async_nats::jetstream::Context) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let js = runtime.block_on(async {
            let options = async_nats::ConnectOptions::with_token(self.secret.clone());
            async_nats::jetstream::new(options.connect(self.url()).await.unwrap())
        });
        (runtime, js)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn engine(nats: Option<RemoteConfig>) -> Engine {
    let mut builder = Engine::builder().workers(2).pin(false);
    if let Some(config) = nats {
        builder = builder.nats(config);
    }
    builder.build().expect("engine")
}

fn stream(tokens: usize) -> Vec<mixed::Planned> {
    mixed::plan(&MixedConfig {
        tokens,
        seed: 3,
        mislabel_share: 0.0,
        rate: 50_000.0,
        drift_at: None,
    })
}

fn run(engine: &Engine, plan: &[mixed::Planned]) -> StreamRun {
    let ops = MixedOps::register(engine).expect("register");
    mixed::drive(&ops, plan, 50_000.0, None)
}

/// A worker serving the mixed operations, in this process.
fn worker(server: &NatsServer) -> (Engine, Worker) {
    let engine = engine(None);
    MixedOps::register(&engine).expect("register");
    let worker = Worker::start(&engine, WorkerConfig::new(server.config())).expect("worker");
    (engine, worker)
}

fn wait_for_workers(engine: &Engine, n: u64) {
    crate::eventually("the workers' heartbeats are heard", || {
        engine.stats().remote.is_some_and(|s| s.workers >= n)
    });
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn remote_results_equal_local_ones_and_each_token_resolves_once() {
    let Some(server) = NatsServer::start() else { return };
    let plan = stream(600);
    let local = run(&engine(None), &plan);
    // This worker logs its runs: the rows name it.
    let log = tempfile::tempdir().unwrap();
    let worker_engine =
        Engine::builder().workers(2).pin(false).log_dir(log.path()).build().expect("engine");
    MixedOps::register(&worker_engine).unwrap();
    let worker = Worker::start(&worker_engine, WorkerConfig::new(server.config())).unwrap();
    let worker_id = worker.id().to_string();
    let submitter = engine(Some(server.config().placement(RemotePlacement::Remote)));
    wait_for_workers(&submitter, 1);
    let remote = run(&submitter, &plan);
    // The link counts an answer just after it resolves the token.
    crate::eventually("600 answers counted", || submitter.stats().remote.unwrap().resolved == 600);
    let stats = submitter.stats().remote.unwrap();
    assert_eq!((remote.lost, remote.double_resolved, remote.failures), (0, 0, 0));
    assert_eq!(remote.digest, local.digest, "remote results differ from local ones");
    assert_eq!(stats.remote_tokens, 600, "{stats:?}");
    assert_eq!((stats.resolved, stats.pending, stats.fell_back), (600, 0, 0), "{stats:?}");
    assert_eq!(worker.stop().completed, 600);
    worker_engine.shutdown();
    let mut rows = 0;
    for entry in std::fs::read_dir(log.path()).unwrap() {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        let frame = ParquetReader::new(file).finish().unwrap();
        let column = |name: &str| frame.column(name).unwrap().str().unwrap().clone();
        assert!(column("worker").iter().all(|w| w == Some(worker_id.as_str())));
        assert!(column("host").iter().all(|h| h.is_some_and(|h| !h.is_empty())));
        rows += frame.height();
    }
    assert_eq!(rows, 600, "the worker logs one row per call it ran");
}

/// The submitter logs a row for each call a worker ran (lane set `remote`, the
/// worker's run time, the rest of the end-to-end time as the wait), and the trainer
/// fits the remote overhead from those rows into the model, which then sets the
/// `auto` placement's threshold.
#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn the_trainer_fits_the_remote_overhead_from_the_submitters_rows() {
    let Some(server) = NatsServer::start() else { return };
    let worker_engine = engine(None);
    MixedOps::register(&worker_engine).unwrap();
    let worker = Worker::start(&worker_engine, WorkerConfig::new(server.config())).unwrap();
    let log = tempfile::tempdir().unwrap();
    let submitter = Engine::builder()
        .workers(2)
        .pin(false)
        .log_dir(log.path())
        .nats(server.config().placement(RemotePlacement::Remote))
        .build()
        .expect("engine");
    wait_for_workers(&submitter, 1);
    let remote = run(&submitter, &stream(600));
    assert_eq!((remote.lost, remote.double_resolved, remote.failures), (0, 0, 0));
    submitter.shutdown();
    worker.stop();
    let remote_files = trainer::dataset::collect_files(&[log.path().display().to_string()]);
    let files = remote_files.unwrap();
    let mut remote_rows = 0;
    for path in &files {
        let frame = ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
        let u64s = |name: &str| frame.column(name).unwrap().u64().unwrap().clone();
        let sets = frame.column("lane_set").unwrap().str().unwrap().clone();
        let (wait, run, end) = (u64s("queue_wait_ns"), u64s("run_ns"), u64s("end_to_end_ns"));
        for (i, set) in sets.iter().enumerate() {
            assert_eq!(set, Some("remote"), "every call ran remotely");
            let (wait, run, end) = (wait.get(i).unwrap(), run.get(i).unwrap(), end.get(i).unwrap());
            assert_eq!(wait + run, end, "row {i}: the wait is the rest of end-to-end");
            assert!(wait > 0, "row {i}: a remote run costs messaging");
            remote_rows += 1;
        }
    }
    assert_eq!(remote_rows, 600, "the submitter logs one row per remote call");
    let data = trainer::dataset::load(&files, |_| {}).unwrap();
    assert_eq!((data.remote_ns.len(), data.remote_rows), (600, 600));
    assert!(data.rows.is_empty(), "a worker's serving time is not a lane's run time");
    assert!(data.dispatch_ns.is_empty(), "remote rows are no local batch's dispatch");
    // The tree is fitted on local runs, logged beside them.
    let local_log = tempfile::tempdir().unwrap();
    let local = Engine::builder().workers(2).pin(false).log_dir(local_log.path()).build();
    let local = local.expect("engine");
    run(&local, &stream(600));
    local.shutdown();
    let local_files = trainer::dataset::collect_files(&[local_log.path().display().to_string()]);
    let files: Vec<_> = files.into_iter().chain(local_files.unwrap()).collect();
    let data = trainer::dataset::load(&files, |_| {}).unwrap();
    assert_eq!((data.rows.len(), data.remote_ns.len()), (600, 600));
    let options = trainer::fit::FitOptions { min_rows: 100, ..Default::default() };
    let fitted = trainer::fit::fit(&data, &options).unwrap();
    let overhead = fitted.header.training.remote_overhead_ns.expect("fitted from remote rows");
    let mut sorted = data.remote_ns.clone();
    sorted.sort_unstable();
    assert_eq!(overhead, sorted[300], "the median of what remote runs added");
    let model = tokengate::model::Model::from_bytes(&fitted.bytes).unwrap();
    assert_eq!(model.remote_min_ns(), Some(overhead));
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn placement_follows_policy_and_the_control_port_pin() {
    let Some(server) = NatsServer::start() else { return };
    let (_worker_engine, _worker) = worker(&server);
    // `local`: nothing goes remote...
    let submitter = engine(Some(server.config().placement(RemotePlacement::Local)));
    wait_for_workers(&submitter, 1);
    let ops = MixedOps::register(&submitter).unwrap();
    let plan = stream(200);
    let run = mixed::drive(&ops, &plan, 50_000.0, None);
    assert_eq!(run.lost, 0);
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, 0);
    // ...until the control port pins an operation to the remote set.
    submitter.controller().pin("primes", Some(LaneSet::Remote)).unwrap();
    let pinned = plan.iter().filter(|call| mixed::OPS[call.op] == "primes").count() as u64;
    let run = mixed::drive(&ops, &plan, 50_000.0, None);
    assert_eq!((run.lost, run.failures), (0, 0));
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, pinned);
    // Paused, the pinned operation's calls wait on the local lanes, where pause holds,
    // and run there once resumed.
    let primes = ops.op("primes").unwrap();
    submitter.controller().pause(Some("primes")).unwrap();
    let held: Vec<_> = (0..5).map(|n| primes.submit(1_000 + n)).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(held.iter().all(|t| !t.is_finished()), "a paused operation's calls wait");
    submitter.controller().resume(Some("primes")).unwrap();
    for token in held {
        token.wait().unwrap();
    }
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, pinned, "none went remote");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_remote_pin_without_a_live_worker_runs_here_and_says_so() {
    let Some(server) = NatsServer::start() else { return };
    // A link, but no worker: the pin cannot be honoured.
    let submitter = Engine::builder()
        .workers(2)
        .pin(false)
        .log_in_memory()
        .nats(server.config().placement(RemotePlacement::Local))
        .build()
        .unwrap();
    let ops = MixedOps::register(&submitter).unwrap();
    submitter.controller().pin("primes", Some(LaneSet::Remote)).unwrap();
    let plan = stream(300);
    let run = mixed::drive(&ops, &plan, 50_000.0, None);
    assert_eq!((run.lost, run.failures, run.double_resolved), (0, 0, 0));
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, 0);
    let pinned = plan.iter().filter(|call| mixed::OPS[call.op] == "primes").count() as u64;
    let primes = ops.op("primes").unwrap();
    assert_eq!(primes.stats().pin_unmet, pinned, "every pinned call is counted as unmet");
    let snapshot = submitter.controller().snapshot();
    let row = snapshot.iter().find(|op| op.op == "primes").unwrap();
    assert_eq!(row.pin_unmet, pinned, "and the control port's stats say so");
    submitter.shutdown();
    let records = submitter.take_records();
    let unmet = records
        .iter()
        .filter(|r| r.route_source == tokengate::router::RouteSource::OverrideUnmet)
        .count() as u64;
    assert_eq!(unmet, pinned, "telemetry names the unmet pin on every pinned call's row");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_remote_tag_sends_an_operation_remote_where_the_tags_decide() {
    let Some(server) = NatsServer::start() else { return };
    let (_worker_engine, worker) = worker(&server);
    let submitter = engine(Some(server.config().placement(RemotePlacement::Local)));
    wait_for_workers(&submitter, 1);
    let tagged = submitter
        .operation("primes", tokengate::Weight::Medium)
        .remote()
        .preferred()
        .register(mixed::count_primes)
        .unwrap();
    let results: Vec<u64> = tagged.blocking_map(0..50).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(results, (0..50).map(mixed::count_primes).collect::<Vec<_>>());
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, 50);
    crate::eventually("the worker ran them", || worker.stats().completed == 50);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_failed_served_call_is_retried_by_redelivery_with_its_policy() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokengate::{RetryPolicy, Weight};
    let Some(server) = NatsServer::start() else { return };
    let policy = RetryPolicy::new(3).backoff(Duration::from_millis(50));
    // On the worker: fails on the first two deliveries of every call, and says which
    // attempt (= delivery) it saw.
    let worker_engine = engine(None);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    worker_engine
        .operation("flaky", Weight::Light)
        .retry(policy)
        .remote()
        .register_with_context(move |x: u64, cx: &tokengate::Context<'_>| {
            counted.fetch_add(1, Ordering::Relaxed);
            if cx.attempt() < 3 {
                panic!("attempt {} of {x} fails", cx.attempt());
            }
            x * 10 + u64::from(cx.attempt())
        })
        .unwrap();
    worker_engine
        .operation("always_fails", Weight::Light)
        .retry(RetryPolicy::new(2))
        .remote()
        .register_fallible(|_: u64| Err::<u64, _>("there"))
        .unwrap();
    let worker = Worker::start(&worker_engine, WorkerConfig::new(server.config())).unwrap();
    let submitter = engine(Some(server.config().placement(RemotePlacement::Remote)));
    wait_for_workers(&submitter, 1);
    let flaky = submitter
        .operation("flaky", Weight::Light)
        .retry(policy)
        .remote()
        .register(|x: u64| x)
        .unwrap();
    let results: Vec<u64> = flaky.blocking_map(0..5).into_iter().map(|r| r.unwrap()).collect();
    // Each ran three times on the worker, never retried on its lanes: two naks, two
    // redeliveries, one answer.
    assert_eq!(results, (0..5).map(|x| x * 10 + 3).collect::<Vec<_>>());
    assert_eq!(runs.load(Ordering::Relaxed), 15);
    // The worker counts an answer just after the stream has stored it.
    crate::eventually("5 answers counted", || worker.stats().completed == 5);
    let stats = worker.stats();
    assert_eq!((stats.retried, stats.completed, stats.failed), (10, 5, 0), "{stats:?}");
    assert_eq!(stats.redelivered, 10, "{stats:?}");
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, 5);
    // The policy's last attempt is answered: the caller gets that failure.
    let fails = submitter
        .operation("always_fails", Weight::Light)
        .retry(RetryPolicy::new(2))
        .remote()
        .register_fallible(|_: u64| Err::<u64, _>("here"))
        .unwrap();
    let error = fails.submit(1).wait().unwrap_err();
    assert!(error.to_string().contains("there"), "{error}");
    crate::eventually("the failure counted", || worker.stats().failed == 1);
    let stats = worker.stop();
    assert_eq!((stats.retried, stats.failed), (11, 1), "{stats:?}");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn auto_spills_a_backlog_remote_only_for_tokens_predicted_to_be_long() {
    let Some(server) = NatsServer::start() else { return };
    // Backlogged: the long calls (the heavy tag's 1 ms) go remote, the short ones stay.
    auto_with_a_backlog(&server, None, true);
}

/// The model's fitted remote overhead is the `auto` threshold: a model that says a
/// remote run adds a second keeps the same long calls here.
#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_models_remote_overhead_sets_the_auto_threshold() {
    let Some(server) = NatsServer::start() else { return };
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.bin");
    let (mut header, tree) =
        tokengate::model::linfa::decode(&std::fs::read(shipped).unwrap()).unwrap();
    header.training.remote_overhead_ns = Some(1_000_000_000);
    let bytes = tokengate::model::linfa::encode(&header, &tree, &[]).unwrap();
    let model = tokengate::model::Model::from_bytes(&bytes).unwrap();
    let router =
        tokengate::router::LearnedRouter::new(model, tokengate::router::StaticRouter::new(128));
    auto_with_a_backlog(&server, Some(Arc::new(router)), false);
}

/// Holds a one-lane submitter's lane under `auto` placement and submits 10 long
/// (heavy-tagged) and 14 short calls: the long ones must go remote (and resolve while
/// the lane is still held) if `remote`, else stay; the short ones always stay.
fn auto_with_a_backlog(
    server: &NatsServer,
    router: Option<Arc<dyn tokengate::router::Router>>,
    remote: bool,
) {
    let worker_engine = engine(None);
    let register = |engine: &Engine| {
        let short = engine.operation("short", tokengate::Weight::Light).remote();
        let long = engine.operation("long", tokengate::Weight::Heavy).remote();
        (short.register(|x: u64| x + 1).unwrap(), long.register(|x: u64| x * 2).unwrap())
    };
    let _served = register(&worker_engine);
    let _worker = Worker::start(&worker_engine, WorkerConfig::new(server.config())).unwrap();
    // One lane, held by a gate: everything submitted meanwhile queues behind it.
    let mut builder = crate::single_lane().nats(server.config().placement(RemotePlacement::Auto));
    if let Some(router) = router {
        builder = builder.router(router);
    }
    let submitter = builder.build().unwrap();
    wait_for_workers(&submitter, 1);
    let (short, long) = register(&submitter);
    // A gate that says when it holds the lane (the lane may take light work first).
    let (started, running) = std::sync::mpsc::channel::<()>();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (started, wait) = (std::sync::Mutex::new(started), std::sync::Mutex::new(wait));
    let gate = submitter
        .register("gate", tokengate::Weight::Heavy, move |()| {
            let _ = started.lock().unwrap().send(());
            let _ = wait.lock().unwrap().recv();
        })
        .unwrap();
    let held = gate.submit(());
    running.recv_timeout(Duration::from_secs(20)).expect("the gate holds the lane");
    let queued: Vec<_> = (0..4).map(|x| short.submit(x)).collect();
    let longs: Vec<_> = (0..10).map(|x| long.submit(x)).collect();
    let shorts: Vec<_> = (0..10).map(|x| short.submit(x)).collect();
    let longs: Vec<_> = if remote {
        // They resolve while the lane is still held: they ran on the worker.
        let within = |t: tokengate::Token<u64>| {
            let result = t.wait_timeout(Duration::from_secs(20));
            result.unwrap_or_else(|_| panic!("stayed local")).unwrap()
        };
        longs.into_iter().map(within).collect()
    } else {
        release.send(()).unwrap();
        longs.into_iter().map(|t| t.wait().unwrap()).collect()
    };
    assert_eq!(longs, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    let _ = release.send(());
    held.wait().unwrap();
    for token in queued.into_iter().chain(shorts) {
        token.wait().unwrap();
    }
    let sent = submitter.stats().remote.unwrap().remote_tokens;
    assert_eq!(sent, if remote { 10 } else { 0 }, "long calls sent remote");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn an_operation_that_is_not_remote_capable_stays_local_even_when_pinned() {
    let Some(server) = NatsServer::start() else { return };
    let submitter = engine(Some(server.config().placement(RemotePlacement::Remote)));
    let local = submitter.register("local_only", tokengate::Weight::Light, |x: u64| x + 1).unwrap();
    submitter.controller().pin("local_only", Some(LaneSet::Remote)).unwrap();
    let sum: u64 = local.blocking_map(0..100).into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(sum, (1..=100).sum::<u64>());
    assert_eq!(submitter.stats().remote.unwrap().remote_tokens, 0);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_worker_killed_mid_run_loses_nothing() {
    let Some(server) = NatsServer::start() else { return };
    let plan = stream(3_000);
    let local = run(&engine(None), &plan);
    let mut workers: Vec<Child> = (0..2).map(|_| spawn_worker(&server)).collect();
    let submitter = Arc::new(engine(Some(server.config().placement(RemotePlacement::Remote))));
    wait_for_workers(&submitter, 2);
    let remote = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            crate::eventually("a third of the tokens resolved remotely", || {
                submitter.stats().remote.unwrap().resolved >= 1_000
            });
            workers[0].kill().expect("SIGKILL a worker");
        });
        let remote = run(&submitter, &plan);
        killer.join().unwrap();
        remote
    });
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let stats = submitter.stats().remote.unwrap();
    assert_eq!((remote.lost, remote.double_resolved, remote.failures), (0, 0, 0), "{stats:?}");
    assert_eq!(remote.digest, local.digest);
    assert_eq!(stats.pending, 0, "{stats:?}");
    // The killed worker held calls: they came back through the stream.
    assert!(stats.redelivered > 0, "{stats:?}");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn the_server_stopped_mid_run_ends_the_run_with_every_token_accounted_for() {
    let Some(mut server) = NatsServer::start() else { return };
    let plan = stream(3_000);
    let local = run(&engine(None), &plan);
    let (worker_engine, worker) = worker(&server);
    let submitter = engine(Some(server.config().placement(RemotePlacement::Remote)));
    wait_for_workers(&submitter, 1);
    let started = Instant::now();
    let remote = std::thread::scope(|scope| {
        scope.spawn(|| {
            crate::eventually("some tokens resolved remotely", || {
                submitter.stats().remote.unwrap().resolved >= 300
            });
            server.stop();
        });
        run(&submitter, &plan)
    });
    let stats = submitter.stats().remote.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert_eq!((remote.lost, remote.double_resolved, remote.failures), (0, 0, 0), "{stats:?}");
    assert_eq!(remote.digest, local.digest);
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert!(!stats.connected, "{stats:?}");
    drop(worker);
    drop(worker_engine);
    // Shutdown does not hang on the dead link.
    submitter.shutdown();
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn bad_messages_are_refused_and_counted_and_the_worker_keeps_serving() {
    let Some(server) = NatsServer::start() else { return };
    let (_worker_engine, worker) = worker(&server);
    let submitter = engine(Some(server.config().placement(RemotePlacement::Remote)));
    wait_for_workers(&submitter, 1);
    let (runtime, js) = server.jetstream();
    runtime.block_on(async {
        for payload in [
            b"\xff\xfe garbage".to_vec(),
            // A well-formed bincode value of another shape.
            vec![1, 0, 3, b'a', b'b', b'c'],
            Vec::new(),
            // A length prefix claiming 2^60 bytes.
            vec![1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10],
        ] {
            js.publish("tokengate.tokens.primes", payload.into()).await.unwrap().await.unwrap();
        }
    });
    crate::eventually("the four bad messages are refused", || worker.stats().bad_messages >= 4);
    let run = run(&submitter, &stream(100));
    assert_eq!((run.lost, run.failures), (0, 0));
    // The worker counts an answer once the stream has stored it, which may be just
    // after the submitter saw it.
    crate::eventually("the worker counts 100 answers", || worker.stats().completed == 100);
    let stats = worker.stats();
    assert_eq!(stats.bad_messages, 4, "{stats:?}");
}

/// Not a test: the body of a worker process for `a_worker_killed_mid_run_loses_nothing`
/// (run by it through the test binary, with the server in the environment).
#[test]
#[ignore = "a helper process, started by a_worker_killed_mid_run_loses_nothing"]
fn remote_worker_process() {
    let url = std::env::var("TOKENGATE_TEST_NATS_URL").expect("started by a test");
    let secret = std::env::var("TOKENGATE_TEST_NATS_SECRET").expect("started by a test");
    let config = RemoteConfig::new(url).token(secret).ack_wait(Duration::from_secs(2));
    let engine = engine(None);
    MixedOps::register(&engine).unwrap();
    let _worker = Worker::start(&engine, WorkerConfig::new(config)).unwrap();
    // Until killed (or, should the test die first, for a minute).
    std::thread::sleep(Duration::from_secs(60));
}

fn spawn_worker(server: &NatsServer) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["remote::remote_worker_process", "--exact", "--ignored", "--nocapture"])
        .env("TOKENGATE_TEST_NATS_URL", server.url())
        .env("TOKENGATE_TEST_NATS_SECRET", &server.secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker process")
}

#[test]
fn a_remote_capable_name_must_be_a_subject_token() {
    let engine = engine(None);
    let bad = engine.operation("a.b", tokengate::Weight::Light).remote().register(|x: u64| x);
    let error = bad.unwrap_err().to_string();
    assert!(error.contains("a.b") && error.contains("letters"), "{error}");
    let good = engine.operation("a_b-1", tokengate::Weight::Light).remote().register(|x: u64| x);
    assert_eq!(good.unwrap().submit(5).wait().unwrap(), 5);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_stream_that_exists_with_other_settings_is_an_error_naming_the_setting() {
    let Some(server) = NatsServer::start() else { return };
    // Someone else's TOKENGATE_CALLS, kept by limits instead of as a work queue.
    let (runtime, js) = server.jetstream();
    runtime.block_on(async {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "TOKENGATE_CALLS".into(),
            subjects: vec!["tokengate.tokens.>".into()],
            retention: async_nats::jetstream::stream::RetentionPolicy::Limits,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let error = Engine::builder().workers(1).pin(false).nats(server.config()).build().unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("TOKENGATE_CALLS") && message.contains("retention"),
        "the error names the stream and the setting: {message}"
    );
}
