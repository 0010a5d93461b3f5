//! Bounded admission: try_submit rejects, submit waits, both when full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokengate::error::RejectReason;
use tokengate::{TokenError, TokenState, Weight};

use crate::{eventually, gate, one_lane};

#[test]
fn full_engine_rejects_try_submit_and_blocks_submit_until_room() {
    let engine = one_lane(4);
    let (hold, release) = gate(&engine, "hold");
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let queued: Vec<_> = (0..3).map(|x| echo.submit(x)).collect();
    assert_eq!(engine.stats().in_flight, 4);

    assert_eq!(
        echo.try_submit(9).unwrap_err(),
        TokenError::Rejected { reason: RejectReason::Overloaded }
    );
    assert_eq!(echo.stats().rejected, 1);

    let admitted = Arc::new(AtomicBool::new(false));
    let blocked = {
        let echo = echo.clone();
        let admitted = Arc::clone(&admitted);
        std::thread::spawn(move || {
            let token = echo.submit(7);
            admitted.store(true, Ordering::SeqCst);
            token.wait()
        })
    };
    let waiting_async = {
        let echo = echo.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async { echo.submit_async(8).await.await })
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!admitted.load(Ordering::SeqCst), "submit waits while the engine is full");
    assert!(!waiting_async.is_finished(), "submit_async waits while the engine is full");
    assert!(engine.stats().in_flight <= engine.stats().capacity);

    release.send(()).unwrap();
    assert_eq!(blocked.join().unwrap(), Ok(7));
    assert_eq!(waiting_async.join().unwrap(), Ok(8));
    for (x, token) in (0..3).zip(queued) {
        assert_eq!(token.wait(), Ok(x));
    }
    holding.wait().unwrap();
}

#[test]
fn submit_many_larger_than_capacity_flows_through() {
    let engine = one_lane(100);
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let tokens = echo.submit_many(0..10_000u32);
    assert_eq!(tokens.len(), 10_000);
    for (x, token) in (0..10_000u32).zip(tokens) {
        assert_eq!(token.wait(), Ok(x));
    }
}
