//! Tokens that wait on tokens: a call that submits more calls and waits for them, on
//! the lanes, without deadlock (a waiting lane runs its own children meanwhile).
//!
//! `cargo run --release --example nested`

use std::sync::{Arc, OnceLock};

use tokengate::{Engine, Operation, Weight};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder().build()?;

    // A recursive operation needs its own handle: set it once registered. (The handle
    // and the closure then hold each other: drop the engine and the handle to free them.)
    let fib_handle: Arc<OnceLock<Operation<u32, u64>>> = Arc::new(OnceLock::new());
    let inner = Arc::clone(&fib_handle);
    let fib = engine.register("fib", Weight::Light, move |n: u32| -> u64 {
        if n < 2 {
            return u64::from(n);
        }
        let fib = inner.get().expect("registered");
        // Two children, waited on together: `wait_both` blocks on both tokens.
        let (a, b) = tokengate::wait_both(fib.submit(n - 1), fib.submit(n - 2));
        a.unwrap_or(0) + b.unwrap_or(0)
    })?;
    fib_handle.set(fib.clone()).ok();

    let value = fib.submit(20).wait()?;
    println!("fib(20) = {value} ({} calls)", fib.stats().completed);
    assert_eq!(value, 6_765);
    engine.shutdown();
    Ok(())
}
