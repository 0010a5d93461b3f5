//! Exactly-once resolution, wait vs await, panics, errors, cancellation.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokengate::error::{CancelSource, RejectReason};
use tokengate::{Engine, TokenError, TokenState, Weight};

use crate::{eventually, gate, one_lane};

#[test]
fn every_token_runs_and_resolves_exactly_once_under_concurrent_submitters() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 20_000;
    let engine = Engine::builder().capacity(4_096).build().unwrap();
    let runs: Arc<Vec<AtomicU8>> =
        Arc::new((0..THREADS * PER_THREAD).map(|_| AtomicU8::new(0)).collect());
    let counter = Arc::clone(&runs);
    let op = engine
        .register("mark", Weight::Light, move |i: usize| {
            counter[i].fetch_add(1, Ordering::Relaxed);
            i * 2
        })
        .unwrap();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let op = op.clone();
            scope.spawn(move || {
                let base = t * PER_THREAD;
                // Half in bulk, half one by one, to cover both admission paths.
                let half = PER_THREAD / 2;
                let bulk = op.submit_many(base..base + half);
                let single: Vec<_> =
                    (base + half..base + PER_THREAD).map(|i| op.submit(i)).collect();
                for (offset, token) in bulk.into_iter().chain(single).enumerate() {
                    assert_eq!(token.wait(), Ok((base + offset) * 2));
                }
            });
        }
    });
    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "every call ran exactly once");
    // Counters are published per batch, just after its last token resolves.
    eventually("the counters catch up", || op.stats().completed == (THREADS * PER_THREAD) as u64);
    let stats = op.stats();
    assert_eq!(stats.submitted, (THREADS * PER_THREAD) as u64);
    assert_eq!(stats.failed + stats.skipped + stats.rejected, 0);
}

#[test]
fn wait_and_await_both_resolve() {
    let engine = Engine::builder().build().unwrap();
    let double = engine.register("double", Weight::Light, |x: u32| x * 2).unwrap();
    assert_eq!(double.submit(21).wait(), Ok(42));

    // Awaited on the engine's runtime...
    let sum = engine.block_on(async {
        let tokens = double.submit_many_async(0..100u32).await;
        let mut sum = 0;
        for token in tokens {
            sum += token.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, (0..100u32).map(|x| x * 2).sum::<u32>());

    // ...and on a caller's own runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let value = runtime.block_on(async { double.submit_async(5).await.await });
    assert_eq!(value, Ok(10));
}

#[test]
fn panics_become_errors_and_the_lane_keeps_serving() {
    let engine = one_lane(1_024);
    let picky = engine
        .register("picky", Weight::Light, |x: u32| {
            if x % 10 == 3 {
                panic!("bad input {x}");
            }
            x
        })
        .unwrap();
    let tokens = picky.submit_many(0..100u32);
    for (x, token) in (0..100u32).zip(tokens) {
        match token.wait() {
            Ok(v) => assert_eq!(v, x),
            Err(TokenError::Panicked { message }) => {
                assert_eq!(x % 10, 3);
                assert_eq!(message, format!("bad input {x}"));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(picky.submit(4).wait(), Ok(4), "tokens after a panic still run");
    eventually("the counters catch up", || {
        let stats = picky.stats();
        (stats.completed, stats.failed) == (91, 10)
    });
}

#[test]
fn fallible_operations_resolve_as_failed() {
    let engine = Engine::builder().build().unwrap();
    let parse =
        engine.register_fallible("parse", Weight::Light, |s: String| s.parse::<i32>()).unwrap();
    assert_eq!(parse.submit("12".into()).wait(), Ok(12));
    match parse.submit("twelve".into()).wait() {
        Err(TokenError::Failed(message)) => assert!(message.contains("invalid digit")),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn cancel_before_start_resolves_cancelled_and_never_runs() {
    let engine = one_lane(1_024);
    let (hold, release) = gate(&engine, "hold");
    let ran = Arc::new(AtomicUsize::new(0));
    let ran_in = Arc::clone(&ran);
    let work = engine
        .register("work", Weight::Light, move |x: u32| {
            ran_in.fetch_add(1, Ordering::SeqCst);
            x
        })
        .unwrap();
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let queued = work.submit_many(0..10u32);
    assert!(queued.iter().all(|t| t.state() == TokenState::Admitted));
    for token in queued.iter().step_by(2) {
        assert!(token.cancel());
        assert!(!token.cancel(), "cancelling twice does nothing");
    }
    release.send(()).unwrap();
    holding.wait().unwrap();
    for (x, token) in (0..10u32).zip(queued) {
        if x % 2 == 0 {
            assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Caller }));
        } else {
            assert_eq!(token.wait(), Ok(x));
        }
    }
    assert_eq!(ran.load(Ordering::SeqCst), 5, "cancelled calls never ran");
    eventually("the skips are counted", || work.stats().skipped == 5);
}

#[test]
fn a_running_token_cannot_be_cancelled() {
    let engine = one_lane(16);
    let (hold, release) = gate(&engine, "hold");
    let token = hold.submit(());
    eventually("the gate runs", || token.state() == TokenState::Running);
    assert!(!token.cancel());
    release.send(()).unwrap();
    assert_eq!(token.wait(), Ok(()));
}

#[test]
fn shutdown_drains_admitted_work_and_rejects_new_work() {
    let engine = Engine::builder().capacity(512).build().unwrap();
    let slow = engine
        .register("slow", Weight::Medium, |x: u64| {
            std::hint::black_box((0..200).fold(x, |a, b| a.wrapping_mul(31).wrapping_add(b)))
        })
        .unwrap();
    let tokens = slow.submit_many(0..5_000u64);
    engine.shutdown();
    assert!(tokens.iter().all(|t| t.state() == TokenState::Completed), "drained");
    assert_eq!(
        slow.submit(1).wait(),
        Err(TokenError::Rejected { reason: RejectReason::ShuttingDown })
    );
    assert_eq!(
        slow.try_submit(1).unwrap_err(),
        TokenError::Rejected { reason: RejectReason::ShuttingDown }
    );
    drop(engine); // dropping after an explicit shutdown is fine
    assert_eq!(slow.stats().completed, 5_000);
}

#[test]
fn registration_rejects_duplicate_and_bad_names() {
    let engine = one_lane(16);
    engine.register("same", Weight::Light, |x: u8| x).unwrap();
    let err = engine.register("same", Weight::Heavy, |x: u8| x).unwrap_err();
    assert!(err.to_string().contains("already registered"));
    assert!(engine.register("", Weight::Light, |x: u8| x).is_err());
}

/// A single call is its own queue entry (its chunk carries the call): set aside by a
/// pause, it is cancelled by a cancel command, by id, or by an abort, or runs after a
/// resume; every one resolves once and runs at most once.
#[test]
fn single_calls_set_aside_by_a_pause_cancel_resume_and_abort_once() {
    let engine = Engine::builder().build().unwrap();
    let runs: Arc<Vec<AtomicU8>> = Arc::new((0..100).map(|_| AtomicU8::new(0)).collect());
    let counter = Arc::clone(&runs);
    let op = engine
        .register("one", Weight::Light, move |i: usize| {
            counter[i].fetch_add(1, Ordering::Relaxed);
            i
        })
        .unwrap();
    let control = engine.controller();
    control.pause(Some("one")).unwrap();
    let first: Vec<_> = (0..30).map(|i| op.submit(i)).collect();
    // Idle lanes pick them up within microseconds and set them aside (those then are
    // cancelled at once and counted; any still queued are cancelled when reached).
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Those set aside were cancelled as they were set aside; this cancels the rest.
    control.cancel_waiting("one").unwrap();
    let second: Vec<_> = (30..60).map(|i| op.submit(i)).collect();
    control.cancel_token(second[0].id()).unwrap();
    control.resume(Some("one")).unwrap();
    for token in first {
        assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Control }));
    }
    let mut second = second.into_iter();
    let by_id = second.next().unwrap();
    assert_eq!(by_id.wait(), Err(TokenError::Cancelled { by: CancelSource::Control }));
    for (i, token) in (31..).zip(second) {
        assert_eq!(token.wait(), Ok(i));
    }
    control.pause(Some("one")).unwrap();
    let third: Vec<_> = (60..100).map(|i| op.submit(i)).collect();
    engine.shutdown_with(tokengate::Shutdown::Abort);
    for token in third {
        assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Shutdown }));
    }
    let ran: Vec<u8> = runs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    assert!(ran[..30].iter().all(|&n| n == 0), "cancelled by command: never ran");
    assert_eq!(ran[30], 0, "cancelled by id: never ran");
    assert!(ran[31..60].iter().all(|&n| n == 1), "resumed: ran once each");
    assert!(ran[60..].iter().all(|&n| n == 0), "aborted while paused: never ran");
}
