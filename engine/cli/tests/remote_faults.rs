//! Remote faults with real processes: a real `nats-server` on a free loopback port,
//! `tokengate worker` processes killed (SIGKILL) or hung (SIGSTOP) in the middle of a
//! `tokengate run mixed --placement remote`. Every run must account for every token
//! exactly once (the run's own `lost` and `double_resolved`) with the results of a local
//! run of the same stream. Behaviour only: how long each fault costs is measured by
//! `tests/bench/remote_faults.sh`, not asserted here.
//!
//! Each step waits on what the processes say, not on a clock: a worker is used once it
//! has logged that it serves, and a fault is done once the run has logged that it heard
//! every worker (a loaded machine may take seconds for either). The tests take turns:
//! four remote runs at once on a 2-core machine are the busy neighbours that idle-priority
//! heavy lanes crawl beside (docs/lanes.md), and would test the machine, not the faults.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const TOKENS: &str = "16000";
const SEED: &str = "3";

/// Held by the test whose turn it is (see [`turn`]).
static TURN: Mutex<()> = Mutex::new(());

/// Waits for this test's turn: held until the test ends.
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

struct Server {
    child: Child,
    url: String,
    token_file: PathBuf,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts a server with JetStream and a secret, or says why not: outside CI a missing
/// `nats-server` skips the test (loudly); under `CI=true` it fails it.
fn start_server(name: &str) -> Option<Server> {
    let Some(program) = nats_server() else {
        let message = "nats-server is not installed (apt-get install -y nats-server)";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{message}: CI runs every test");
        eprintln!("SKIPPED: {message}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("tokengate-{name}-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = format!("s{port}x{}", std::process::id());
    let token_file = dir.join("nats.token");
    std::fs::write(&token_file, &secret).unwrap();
    let child = Command::new(program)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--auth", &secret, "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Server { child, url: format!("nats://127.0.0.1:{port}"), token_file, dir })
}

fn tokengate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.env_remove("RUST_LOG").env("RUST_BACKTRACE", "0");
    command
}

/// A child process whose log (stderr) is read as it comes, so a test can wait for a line.
struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    fn spawn(mut command: Command, what: &str) -> Logged {
        let mut child =
            command.stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Logged { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `needle` has been logged `times` times; fails, with the log, if the
    /// process exits first or a minute goes by.
    fn wait_for(&mut self, needle: &str, times: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches(needle).count() < times {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{what} exited ({status}) before logging {needle:?}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no {needle:?} within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker for `server`, started now.
fn start_worker(server: &Server) -> Logged {
    let mut command = tokengate();
    command.args(["worker", "--workers", "1", "--nats", &server.url, "--nats-token-file"]);
    command.arg(&server.token_file).stdout(Stdio::null());
    Logged::spawn(command, "a worker")
}

/// A worker serving through `server`, once it has said so.
fn worker(server: &Server) -> Logged {
    let mut worker = start_worker(server);
    worker.wait_for("worker serving", 1, "a worker");
    worker
}

/// `run mixed` (remote, through `server`, or local), started now.
fn run(server: Option<&Server>) -> Logged {
    let mut command = tokengate();
    command.args(["run", "mixed", "--tokens", TOKENS, "--seed", SEED, "--json"]);
    if let Some(server) = server {
        command.args(["--placement", "remote", "--nats", &server.url, "--nats-token-file"]);
        command.arg(&server.token_file);
    }
    command.stdout(Stdio::piped());
    Logged::spawn(command, "the run")
}

/// A remote run, waited on until it has heard `workers` workers.
fn remote_run(server: &Server, workers: usize) -> Logged {
    let mut submitter = run(Some(server));
    submitter.wait_for("remote worker joined", workers, "the run");
    submitter
}

/// The run's JSON report, once it has finished.
fn report(mut run: Logged) -> serde_json::Value {
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut run.child.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = run.child.wait().unwrap();
    assert!(status.success(), "the run failed ({status}):\n{}", run.log());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", run.log()))
}

fn signal(process: &Logged, signal: libc::c_int) {
    // SAFETY: sends a signal to a child process this test started and has not reaped.
    let rc = unsafe { libc::kill(process.pid() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", process.pid());
}

/// Every token once, the local run's results, and some of them really ran remote.
fn assert_accounted(remote: &serde_json::Value) {
    let local = report(run(None));
    assert_eq!(remote["lost"], 0, "{remote}");
    assert_eq!(remote["double_resolved"], 0, "{remote}");
    assert_eq!(remote["result_digest"], local["result_digest"], "{remote}");
    assert!(remote["remote_tokens"].as_u64().unwrap() > 0, "nothing went remote: {remote}");
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn the_only_worker_killed_mid_run_loses_nothing() {
    let _turn = turn();
    let Some(server) = start_server("only-killed") else { return };
    let only = worker(&server);
    let submitter = remote_run(&server, 1);
    std::thread::sleep(Duration::from_millis(300)); // calls on their way to it
    signal(&only, libc::SIGKILL);
    drop(only);
    let remote = report(submitter);
    assert!(remote["remote"]["fell_back"].as_u64().unwrap() > 0, "{remote}");
    assert_accounted(&remote);
}

/// Two workers, a remote run, and `fault` done to the first once the run has heard both.
fn one_of_two(name: &str, fault: impl FnOnce(&Logged)) -> Option<serde_json::Value> {
    let server = start_server(name)?;
    let workers = [worker(&server), worker(&server)];
    let submitter = remote_run(&server, 2);
    std::thread::sleep(Duration::from_millis(300)); // calls on their way to both
    fault(&workers[0]);
    let remote = report(submitter);
    drop(workers);
    Some(remote)
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn one_of_two_workers_killed_mid_run_loses_nothing() {
    let _turn = turn();
    let Some(remote) = one_of_two("one-killed", |w| signal(w, libc::SIGKILL)) else { return };
    assert_accounted(&remote);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_worker_hung_past_the_ack_wait_loses_nothing() {
    let _turn = turn();
    let hang = |w: &Logged| {
        signal(w, libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(5)); // past the 2 s ack wait
        signal(w, libc::SIGCONT);
    };
    let Some(remote) = one_of_two("one-hung", hang) else { return };
    assert_accounted(&remote);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn workers_started_together_on_a_fresh_server_all_come_up() {
    let _turn = turn();
    for round in 0..10 {
        let Some(server) = start_server(&format!("race-{round}")) else { return };
        let mut workers: Vec<Logged> = (0..4).map(|_| start_worker(&server)).collect();
        for (index, worker) in workers.iter_mut().enumerate() {
            worker.wait_for("worker serving", 1, &format!("round {round}: worker {index}"));
        }
    }
}
