//! End-to-end tests of the engine through its public API. One binary, many modules.

mod admission;
mod allocs;
mod control;
mod cost_features;
mod dashboard;
mod failures;
mod lanes;
mod layers;
mod learning;
mod leibniz;
mod macros;
mod model;
mod nested;
mod remote;
mod steering;
mod telemetry;
mod tokens;

use std::sync::mpsc;

use tokengate::{Engine, Operation, Weight};

#[global_allocator]
static ALLOCATOR: allocs::Counting = allocs::Counting;

/// Runs the test `name` again in a child process of its own and returns false there
/// (the caller then does the work); in the parent, asserts the child passed and returns
/// true. For tests that count process-wide things (threads, allocations).
pub fn in_child(name: &str) -> bool {
    const CHILD: &str = "TOKENGATE_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "the child process failed: {}\n{}{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    true
}

/// An engine with a single unpinned lane, so a test can hold the lane and be sure
/// that everything submitted after stays queued.
pub fn one_lane(capacity: usize) -> Engine {
    single_lane().capacity(capacity).build().expect("engine")
}

/// A builder for an engine with one lane that serves everything, light and heavy (the
/// pinned split: the preemptive one adds heavy lanes beside each light lane), so that
/// a held call holds the whole engine.
pub fn single_lane() -> tokengate::EngineBuilder {
    Engine::builder().workers(1).pin(false).split(tokengate::lanes::LaneSplit::Pinned)
}

/// An operation that blocks its lane until the returned sender is sent to (or dropped).
pub fn gate(engine: &Engine, name: &str) -> (Operation<(), ()>, mpsc::SyncSender<()>) {
    let (release, wait) = mpsc::sync_channel::<()>(0);
    let wait = std::sync::Mutex::new(wait);
    let op = engine
        .register(name, Weight::Heavy, move |()| {
            let _ = wait.lock().unwrap().recv();
        })
        .expect("register gate");
    (op, release)
}

/// Spins until `cond` holds (bounded, so a broken engine fails instead of hanging).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Keeps this thread's core busy for `time` (a call that costs what it says).
pub fn spin_for(time: std::time::Duration) {
    let until = std::time::Instant::now() + time;
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}
