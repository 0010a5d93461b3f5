//! Quick start: register a plain function, call it blocking, in bulk and from async code.
//!
//! `cargo run --release --example quickstart`

use tokengate::{Engine, Weight};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One light lane pinned per core; heavy lanes at idle priority; online learning of
    // what each operation costs (no model needed).
    let engine = Engine::builder().build()?;
    let square = engine.register("square", Weight::Light, |x: u64| x * x)?;
    let sum_to = engine.register("sum_to", Weight::Heavy, |n: u64| (0..n).sum::<u64>())?;

    // Blocking: `wait` returns the value or a `TokenError`.
    assert_eq!(square.submit(7).wait()?, 49);

    // Bulk: admitted per chunk, queued per batch; each token resolves exactly once.
    let tokens = square.submit_many(0..10_000);
    let total: u64 = tokens.into_iter().map(|t| t.wait().unwrap()).sum();
    println!("sum of squares below 10,000: {total}");

    // Async: `submit_async` waits for admission without blocking; the token is a future.
    let big = engine.block_on(async { sum_to.submit_async(50_000_000).await.await })?;
    println!("0 + 1 + … + 49,999,999 = {big}");

    println!("{:?}", square.stats());
    engine.shutdown();
    Ok(())
}
