//! Bulk calls with `map`: every result in argument order, each call's own failure, no
//! token kept per call.
//!
//! `cargo run --release --example bulk_map`

use tokengate::{Engine, TokenError, Weight};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder().build()?;
    let parse = engine.register_fallible("parse", Weight::Light, |text: String| {
        text.trim().parse::<i64>().map_err(|e| format!("{text:?}: {e}"))
    })?;

    let inputs: Vec<String> =
        (0..100_000).map(|i| if i % 10_000 == 7 { "x".into() } else { i.to_string() }).collect();
    // Blocks until every call has resolved (the name says so: it waits).
    let results = parse.blocking_map(inputs);
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    println!("{} parsed, {} failed", ok.len(), failed.len());
    if let Some(Err(TokenError::Failed(message))) = failed.first() {
        println!("first failure: {message}");
    }
    assert_eq!(failed.len(), 10);
    engine.shutdown();
    Ok(())
}
