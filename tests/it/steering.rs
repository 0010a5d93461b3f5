//! Steering tokens by hand: cancelling, overrides kept through retries, the order of
//! throttled batches, and running calls counted apart from waiting ones.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokengate::control::{ControlError, Controller};
use tokengate::error::CancelSource;
use tokengate::router::RouteSource;
use tokengate::{Engine, LaneSet, RetryPolicy, Weight};

use crate::{eventually, gate};

/// A cancel naming a token that already finished used to answer ok and stay pending
/// for ever (after which every token took a global lock); now it is refused at once.
#[test]
fn cancelling_a_token_that_is_not_waiting_is_refused() {
    let engine = crate::single_lane().build().unwrap();
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let controller: Controller = engine.controller();
    let done = echo.submit(1);
    let done_id = done.id();
    assert_eq!(done.wait(), Ok(1));
    assert_eq!(controller.cancel_token(done_id), Err(ControlError::NotWaiting(done_id)));
    assert_eq!(controller.cancel_token(0), Err(ControlError::NotWaiting(0)));
    assert_eq!(controller.cancel_token(u64::MAX), Err(ControlError::NotWaiting(u64::MAX)));
    // A waiting token is cancelled now, once.
    let (held, release) = gate(&engine, "gate");
    let running = held.submit(());
    eventually("the gate runs", || engine.controller().snapshot()[1].running == 1);
    let waiting = echo.submit(2);
    assert_eq!(controller.cancel_token(waiting.id()), Ok(()));
    assert_eq!(controller.cancel_token(waiting.id()), Err(ControlError::NotWaiting(waiting.id())));
    release.send(()).unwrap();
    running.wait().unwrap();
    assert_eq!(waiting.wait(), Err(tokengate::TokenError::Cancelled { by: CancelSource::Control }));
    // The engine goes on as before.
    let sum: u32 = echo.submit_many(0..1_000).into_iter().map(|t| t.wait().unwrap()).sum();
    assert_eq!(sum, (0..1_000u32).sum::<u32>());
}

/// Retries used to take a second enqueue path that ignored pin and batch overrides and
/// recorded the router's decision instead.
#[test]
fn retries_keep_the_overrides_and_record_them() {
    let engine = Engine::builder().pin(false).workers(2).log_in_memory().build().unwrap();
    let flaky = engine
        .operation("flaky", Weight::Light)
        .retry(RetryPolicy::new(3))
        .register_with_context(|x: u32, cx: &tokengate::Context<'_>| {
            assert!(cx.attempt() > 1, "first attempts fail");
            x
        })
        .unwrap();
    engine.controller().pin("flaky", Some(LaneSet::Heavy)).unwrap();
    engine.controller().force_batch("flaky", Some(3)).unwrap();
    let tokens = flaky.submit_many(0..6);
    for (x, token) in tokens.into_iter().enumerate() {
        assert_eq!(token.wait(), Ok(x as u32));
    }
    engine.shutdown();
    let records = engine.take_records();
    assert_eq!(records.len(), 12, "two attempts per token");
    for record in &records {
        assert_eq!(record.route_source, RouteSource::Override, "{record:?}");
        assert_eq!(record.lane_set, LaneSet::Heavy, "{record:?}");
    }
    assert!(records.iter().filter(|r| r.attempt == 1).all(|r| r.batch_size == 3));
}

/// Batches waiting at a throttle used to be popped from the end of a `Vec`, so the
/// oldest could starve; they now run in the order they arrived.
#[test]
fn throttled_batches_run_oldest_first() {
    let engine = Engine::builder().pin(false).workers(2).heavy_lanes(0).build().unwrap();
    let (release, wait) = mpsc::sync_channel::<()>(0);
    let wait = Mutex::new(wait);
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&order);
    let step = engine
        .register("step", Weight::Light, move |n: u32| {
            if n == 0 {
                let _ = wait.lock().unwrap().recv();
            }
            seen.lock().unwrap().push(n);
        })
        .unwrap();
    engine.controller().throttle("step", Some(1)).unwrap();
    let first = step.submit(0);
    eventually("the first call runs", || engine.controller().snapshot()[0].running == 1);
    let rest: Vec<_> = (1..=5)
        .map(|n| {
            let token = step.submit(n);
            // Each reaches the throttle (and waits there) before the next is submitted:
            // `waiting` alone also counts a call still in a lane's queue, which a later
            // call could overtake on its way to the throttle.
            eventually("the call waits at the throttle", || {
                engine.controller().snapshot()[0].held == u64::from(n)
            });
            token
        })
        .collect();
    release.send(()).unwrap();
    first.wait().unwrap();
    for token in rest {
        token.wait().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(engine.controller().snapshot()[0].held, 0, "nothing is left at the throttle");
}

/// `waiting` used to count running tokens too.
#[test]
fn stats_count_running_tokens_apart_from_waiting_ones() {
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    let (held, release) = gate(&engine, "gate");
    let running = held.submit(());
    eventually("the gate runs", || engine.controller().snapshot()[0].running == 1);
    let queued = held.submit(());
    let snapshot = &engine.controller().snapshot()[0];
    assert_eq!((snapshot.submitted, snapshot.running, snapshot.waiting), (2, 1, 1));
    release.send(()).unwrap();
    release.send(()).unwrap();
    running.wait().unwrap();
    queued.wait().unwrap();
    let snapshot = &engine.controller().snapshot()[0];
    assert_eq!((snapshot.completed, snapshot.running, snapshot.waiting), (2, 0, 0));
}
