//! Remote faults with real processes: a real `nats-server` on a free loopback port,
//! `tokengate worker` processes killed (SIGKILL) or hung (SIGSTOP) in the middle of a
//! `tokengate run mixed --placement remote`. Every run must account for every token
//! exactly once (the run's own `lost` and `double_resolved`) with the results of a local
//! run of the same stream. Behaviour only: how long each fault costs is measured by
//! `tests/bench/remote_faults.sh`, not asserted here.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKENS: &str = "16000";
const SEED: &str = "3";

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

fn worker(server: &Server) -> Child {
    tokengate()
        .args(["-q", "worker", "--workers", "1", "--nats", &server.url, "--nats-token-file"])
        .arg(&server.token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker")
}

/// `run mixed` (remote, through `server`, or local), started now.
fn run(server: Option<&Server>) -> Child {
    let mut command = tokengate();
    command.args(["-q", "run", "mixed", "--tokens", TOKENS, "--seed", SEED, "--json"]);
    if let Some(server) = server {
        command.args(["--placement", "remote", "--nats", &server.url, "--nats-token-file"]);
        command.arg(&server.token_file);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the run")
}

fn report(output: Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the run failed: {err}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: sends a signal to a child process this test started and has not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// Every token once, the local run's results, and some of them really ran remote.
fn assert_accounted(remote: &serde_json::Value) {
    let local = report(run(None).wait_with_output().unwrap());
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
    let Some(server) = start_server("only-killed") else { return };
    let mut only = worker(&server);
    std::thread::sleep(Duration::from_millis(1_500)); // its consumers and a heartbeat
    let submitter = run(Some(&server));
    std::thread::sleep(Duration::from_millis(800));
    signal(&only, libc::SIGKILL);
    let _ = only.wait();
    let remote = report(submitter.wait_with_output().unwrap());
    assert!(remote["remote"]["fell_back"].as_u64().unwrap() > 0, "{remote}");
    assert_accounted(&remote);
}

/// Two workers, a remote run, and `fault` done to the first 0.8 s into it.
fn one_of_two(name: &str, fault: impl FnOnce(&Child)) -> Option<serde_json::Value> {
    let server = start_server(name)?;
    let mut workers = [worker(&server), worker(&server)];
    std::thread::sleep(Duration::from_millis(1_500)); // their consumers and heartbeats
    let submitter = run(Some(&server));
    std::thread::sleep(Duration::from_millis(800));
    fault(&workers[0]);
    let remote = report(submitter.wait_with_output().unwrap());
    for child in &mut workers {
        let _ = child.kill();
        let _ = child.wait();
    }
    Some(remote)
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn one_of_two_workers_killed_mid_run_loses_nothing() {
    let Some(remote) = one_of_two("one-killed", |w| signal(w, libc::SIGKILL)) else { return };
    assert_accounted(&remote);
}

#[test]
#[cfg_attr(
    not(has_nats_server),
    ignore = "nats-server is not installed (apt-get install -y nats-server)"
)]
fn a_worker_hung_past_the_ack_wait_loses_nothing() {
    let hang = |w: &Child| {
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
    for round in 0..10 {
        let Some(server) = start_server(&format!("race-{round}")) else { return };
        let mut workers: Vec<Child> = (0..4).map(|_| worker(&server)).collect();
        std::thread::sleep(Duration::from_millis(1_000));
        for (index, child) in workers.iter_mut().enumerate() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: worker {index} exited at start: {:?}",
                child.try_wait()
            );
        }
        for child in &mut workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
