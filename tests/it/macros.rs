//! `#[tokengate::operation]` end to end: generated registration on a real engine,
//! with options that change what the engine does. (The compile-time checks are
//! trybuild tests in `engine/macros/tests`.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokengate::{Engine, Operation, TokenError, Weight};

/// The Leibniz term, as in the `leibniz` workload.
#[tokengate::operation(weight = "light")]
pub fn pi_term(k: u64) -> f64 {
    let sign = [1.0, -1.0][(k % 2) as usize];
    sign / (2 * k + 1) as f64
}

#[tokengate::operation(weight = "medium", name = "pi.partial")]
fn pi_partial(from: u64, to: u64) -> f64 {
    (from..to).map(pi_term).sum()
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[tokengate::operation(weight = "light", retries = 3)]
fn flaky(n: u32) -> u32 {
    if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        panic!("transient");
    }
    n * 2
}

// A deadline far above a 1-ms call's run time even on a loaded machine (the heavy lanes
// run at idle priority, and the rest of the suite runs beside this test).
#[tokengate::operation(weight = "heavy", timeout_ms = 1000)]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn generated_operations_run_on_the_engine() {
    let engine = Engine::builder().build().unwrap();
    let term: Operation<u64, f64> = pi_term::register(&engine).unwrap();
    let partial: Operation<(u64, u64), f64> = pi_partial::register(&engine).unwrap();

    let sum: f64 = term.submit_many(0..10_000).into_iter().map(|t| t.wait().unwrap()).sum();
    assert_eq!(sum, pi_partial(0, 10_000), "the plain fn stays callable");
    let halves = [partial.submit((0, 5_000)), partial.submit((5_000, 10_000))];
    let pi = 4.0 * halves.into_iter().map(|t| t.wait().unwrap()).sum::<f64>();
    assert!((pi - std::f64::consts::PI).abs() < 1e-3, "{pi}");

    // The declared name and weight reach the engine (stats, control port).
    let names: Vec<String> = engine.stats().operations.into_iter().map(|(name, ..)| name).collect();
    assert_eq!(names, ["pi_term", "pi.partial"]);
    assert_eq!(pi_partial::NAME, "pi.partial");
    let again = engine.register(pi_term::NAME, Weight::Light, pi_term);
    assert!(again.is_err(), "the name is taken");
}

#[test]
fn generated_options_apply() {
    let engine = Engine::builder().build().unwrap();
    let flaky = flaky::register(&engine).unwrap();
    assert_eq!(flaky.submit(21).wait(), Ok(42), "two panics retried");
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);

    let sleepy = sleepy::register(&engine).unwrap();
    assert_eq!(sleepy.submit(1).wait(), Ok(1));
    assert_eq!(sleepy.submit(3_000).wait(), Err(TokenError::TimedOut));
}
