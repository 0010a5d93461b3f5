//! Failure nets: deadlines, stuck lanes, retries, per-operation limits, shutdown modes,
//! and exactly-once resolution under random interleavings of all of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokengate::error::{CancelSource, RejectReason};
use tokengate::{Context, Engine, RetryPolicy, Shutdown, TokenError, TokenState, Weight};

use crate::{eventually, gate, one_lane, single_lane};

#[test]
fn a_call_past_its_deadline_times_out_and_its_lane_is_replaced() {
    let engine = one_lane(64);
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let returned = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&returned);
    let stuck = engine
        .operation("stuck", Weight::Heavy)
        .timeout(Duration::from_millis(20))
        .register(move |()| {
            let _ = held.lock().unwrap().recv();
            flag.store(true, Ordering::SeqCst);
            7u32
        })
        .unwrap();
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let token = stuck.submit(());
    assert_eq!(token.wait(), Err(TokenError::TimedOut), "resolved while the call still runs");
    assert!(!returned.load(Ordering::SeqCst));
    // The engine's only lane is stuck in that call, yet new work runs: it was replaced.
    assert_eq!(echo.submit(5).wait(), Ok(5));
    assert_eq!(engine.stats().stuck_lanes, 1);
    release.send(()).unwrap();
    eventually("the stuck call returns", || returned.load(Ordering::SeqCst));
    let stats = stuck.stats();
    assert_eq!((stats.timed_out, stats.completed), (1, 0), "the late value is discarded");
    engine.shutdown();
}

#[test]
fn cooperative_calls_see_their_deadline() {
    let engine = Engine::builder().pin(false).build().unwrap();
    let saw = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&saw);
    let polite = engine
        .operation("polite", Weight::Heavy)
        .timeout(Duration::from_millis(10))
        .register_with_context(move |(), cx: &Context<'_>| {
            while !cx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            flag.store(true, Ordering::SeqCst);
        })
        .unwrap();
    assert_eq!(polite.submit(()).wait(), Err(TokenError::TimedOut));
    eventually("the call noticed", || saw.load(Ordering::SeqCst));
}

#[test]
fn retries_follow_the_policy_and_resolve_once() {
    // Routed by the tags: the running averages would move `flaky` (whose panics, with
    // their backtraces, run long) to the heavy lanes, which run at idle priority and
    // can wait for seconds while other tests keep both cores busy (seen once: 20 s).
    let tags = Arc::new(tokengate::router::StaticRouter::new(128));
    let engine = Engine::builder().pin(false).router(tags).log_in_memory().build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let flaky = engine
        .operation("flaky", Weight::Light)
        .retry(RetryPolicy::new(3).backoff(Duration::from_millis(1)))
        .register_with_context(move |x: u32, cx: &Context<'_>| {
            counter.fetch_add(1, Ordering::SeqCst);
            if cx.attempt() < 3 {
                panic!("attempt {}", cx.attempt());
            }
            x
        })
        .unwrap();
    let token = flaky.submit(9);
    let id = token.id();
    eventually("the token resolves", || token.is_finished());
    assert_eq!(token.attempt(), 3);
    assert_eq!(token.wait(), Ok(9));
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let no_errors = engine
        .operation("no_errors", Weight::Light)
        .retry(RetryPolicy::new(3).on(true, false, false))
        .register_fallible(|_: u32| Err::<u32, _>("refused"))
        .unwrap();
    assert_eq!(no_errors.submit(1).wait(), Err(TokenError::Failed("refused".into())));

    let always = engine
        .operation("always", Weight::Light)
        .retry(RetryPolicy::new(2))
        .register(|_: u32| -> u32 { panic!("always") })
        .unwrap();
    assert!(matches!(always.submit(1).wait(), Err(TokenError::Panicked { .. })));

    // Light, and a deadline with room: the second attempt returns at once, but a heavy
    // lane (idle priority) beside other tests' busy threads once missed 20 ms.
    let slow_first = engine
        .operation("slow_first", Weight::Light)
        .timeout(Duration::from_millis(100))
        .retry(RetryPolicy::new(2).on(false, false, true))
        .register_with_context(|x: u32, cx: &Context<'_>| {
            while cx.attempt() == 1 && !cx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            x
        })
        .unwrap();
    let token = slow_first.submit(4);
    eventually("the retry resolves", || token.is_finished());
    assert_eq!(token.attempt(), 2);
    assert_eq!(token.wait(), Ok(4));

    engine.shutdown();
    assert_eq!(flaky.stats().retried, 2);
    assert_eq!((no_errors.stats().retried, no_errors.stats().failed), (0, 1));
    assert_eq!((always.stats().retried, always.stats().failed), (1, 1));
    assert_eq!((slow_first.stats().retried, slow_first.stats().timed_out), (1, 0));
    // Every attempt is in the telemetry, numbered.
    let mut attempts: Vec<u8> =
        engine.take_records().iter().filter(|r| r.token_id == id).map(|r| r.attempt).collect();
    attempts.sort_unstable();
    assert_eq!(attempts, vec![1, 2, 3]);
}

#[test]
fn an_operation_limit_keeps_a_flood_from_taking_all_capacity() {
    let engine = one_lane(1_000);
    let (hold, release) = gate(&engine, "hold");
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let flood =
        engine.operation("flood", Weight::Light).queue_limit(2).register(|x: u32| x).unwrap();
    let other = engine.register("other", Weight::Light, |x: u32| x).unwrap();
    let queued = vec![flood.submit(1), flood.submit(2)];
    assert_eq!(
        flood.try_submit(3).unwrap_err(),
        TokenError::Rejected { reason: RejectReason::Overloaded }
    );
    let others: Vec<_> = (0..100).map(|x| other.try_submit(x).expect("room for others")).collect();
    release.send(()).unwrap();
    assert_eq!(queued.into_iter().map(|t| t.wait().unwrap()).sum::<u32>(), 3);
    assert_eq!(others.into_iter().map(|t| t.wait().unwrap()).sum::<u32>(), 4_950);
    // And a large bulk submit flows through the limit.
    assert_eq!(
        flood.submit_many(0..50u32).into_iter().map(|t| t.wait().unwrap()).sum::<u32>(),
        1_225
    );
}

#[test]
fn abort_cancels_waiting_work_and_waits_for_running_work() {
    let engine = one_lane(1_000);
    let (hold, release) = gate(&engine, "hold");
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let queued = echo.submit_many(0..100u32);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
    });
    engine.shutdown_with(Shutdown::Abort);
    releaser.join().unwrap();
    assert_eq!(holding.wait(), Ok(()), "the running call finished");
    for token in queued {
        assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Shutdown }));
    }
    assert_eq!(echo.stats().cancelled, 100);
    assert_eq!(
        echo.submit(1).wait(),
        Err(TokenError::Rejected { reason: RejectReason::ShuttingDown })
    );
}

#[test]
fn dropping_the_engine_drains_it() {
    let engine = Engine::builder().pin(false).build().unwrap();
    let slow = engine
        .register("slow", Weight::Medium, |x: u64| {
            std::thread::sleep(Duration::from_micros(50));
            x
        })
        .unwrap();
    let tokens = slow.submit_many(0..500u64);
    drop(engine);
    assert!(tokens.iter().all(|t| t.state() == TokenState::Completed));
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fast,
    Panic,
    Slow,
}

#[derive(Debug, Clone)]
enum Action {
    Submit(u8, Kind),
    TrySubmit(Kind),
    Cancel(usize),
}

fn action() -> impl Strategy<Value = Action> {
    let kind = prop_oneof![4 => Just(Kind::Fast), 1 => Just(Kind::Panic), 1 => Just(Kind::Slow)];
    prop_oneof![
        3 => (1u8..40, kind.clone()).prop_map(|(n, k)| Action::Submit(n, k)),
        1 => kind.prop_map(Action::TrySubmit),
        2 => any::<usize>().prop_map(Action::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random interleavings of submit, try_submit, cancel, panics, deadlines, retries,
    /// duplicate calls and either shutdown: every admitted token resolves exactly once.
    #[test]
    fn every_token_resolves_exactly_once(actions in prop::collection::vec(action(), 1..30), abort: bool) {
        let engine = Engine::builder().workers(2).pin(false).capacity(64).build().unwrap();
        let op = engine
            .operation("mix", Weight::Light)
            .timeout(Duration::from_millis(5))
            .retry(RetryPolicy::new(2).on(true, false, false))
            .dedupe(|&(_, key): &(u8, u8)| u64::from(key))
            .register_with_context(|(kind, _): (u8, u8), cx: &Context<'_>| {
                match kind {
                    1 if cx.attempt() == 1 => panic!("injected"),
                    2 => std::thread::sleep(Duration::from_millis(8)),
                    _ => {}
                }
                kind
            })
            .unwrap();
        // Keys repeat, so some calls ride on a duplicate in flight (that may panic,
        // time out, or be cancelled) instead of running.
        let mut next_key = 0u8;
        let mut code = |kind: Kind| {
            next_key = next_key.wrapping_add(1);
            (match kind { Kind::Fast => 0u8, Kind::Panic => 1, Kind::Slow => 2 }, next_key % 7)
        };
        let mut tokens = Vec::new();
        let mut rejected = 0u64;
        for action in &actions {
            match *action {
                Action::Submit(n, kind) => {
                    let args: Vec<_> = (0..n).map(|_| code(kind)).collect();
                    tokens.extend(op.submit_many(args));
                }
                Action::TrySubmit(kind) => match op.try_submit(code(kind)) {
                    Ok(token) => tokens.push(token),
                    Err(_) => rejected += 1,
                },
                Action::Cancel(i) if !tokens.is_empty() => {
                    tokens[i % tokens.len()].cancel();
                }
                Action::Cancel(_) => {}
            }
        }
        engine.shutdown_with(if abort { Shutdown::Abort } else { Shutdown::Drain });
        let admitted = tokens.len() as u64;
        let mut resolved = 0u64;
        for token in tokens {
            let outcome = token.wait_timeout(Duration::from_secs(10));
            prop_assert!(outcome.is_ok(), "a token never resolved");
            resolved += 1;
        }
        let stats = op.stats();
        prop_assert_eq!(resolved, admitted);
        prop_assert_eq!(stats.completed + stats.failed + stats.cancelled + stats.timed_out, admitted,
            "the engine resolved each admitted token exactly once: {:?}", stats);
        prop_assert_eq!(stats.submitted, admitted);
        prop_assert_eq!(stats.rejected, rejected);
    }
}

#[test]
fn duplicate_calls_in_flight_share_one_run() {
    let engine = one_lane(1_000);
    let (hold, release) = gate(&engine, "hold");
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let fetch = engine
        .operation("fetch", Weight::Light)
        .dedupe(|key: &u64| *key)
        .register_fallible(move |key: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
            if key == 13 {
                Err(format!("no {key}"))
            } else {
                Ok(format!("value {key}"))
            }
        })
        .unwrap();
    let first = fetch.submit(1);
    let duplicates: Vec<_> = (0..3).map(|_| fetch.submit(1)).collect();
    let other = fetch.submit(2);
    let cancelled_leader = fetch.submit(7);
    let riders = fetch.submit_many([7, 7]);
    assert!(cancelled_leader.cancel(), "the leader of key 7 is cancelled by its caller");
    let failing = fetch.submit_many([13, 13]);
    release.send(()).unwrap();
    holding.wait().unwrap();

    assert_eq!(first.wait(), Ok("value 1".to_string()));
    for duplicate in duplicates {
        assert_eq!(duplicate.wait(), Ok("value 1".to_string()));
    }
    assert_eq!(other.wait(), Ok("value 2".to_string()));
    assert_eq!(cancelled_leader.wait(), Err(TokenError::Cancelled { by: CancelSource::Caller }));
    for rider in riders {
        assert_eq!(rider.wait(), Ok("value 7".to_string()), "duplicates still get a result");
    }
    for token in failing {
        assert_eq!(token.wait(), Err(TokenError::Failed("no 13".into())));
    }
    // Keys 1, 2, 7 and 13 ran once each.
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // Once a call has landed, the same key runs again.
    assert_eq!(fetch.submit(1).wait(), Ok("value 1".to_string()));
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    // Counters and permits are settled per batch, just after its tokens resolve.
    eventually("every resolution is counted", || {
        let stats = fetch.stats();
        stats.completed + stats.failed + stats.cancelled == 11
    });
    assert_eq!(fetch.stats().submitted, 11);
    eventually("duplicates gave their permits back", || engine.stats().in_flight == 0);
}

#[test]
fn admission_is_bounded_by_estimated_memory_too() {
    // One lane, so that the held gate holds every call behind it.
    let engine = single_lane().memory_capacity(10_000).build().unwrap();
    let (hold, release) = gate(&engine, "hold");
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let sum = engine
        .operation("sum", Weight::Light)
        .arg_bytes(|v: &Vec<u8>| v.capacity())
        .register(|v: Vec<u8>| v.iter().map(|&b| u64::from(b)).sum::<u64>())
        .unwrap();
    let first = sum.submit(vec![1; 6_000]);
    assert!(engine.stats().memory_in_flight >= 6_000);
    assert_eq!(
        sum.try_submit(vec![1; 6_000]).unwrap_err(),
        TokenError::Rejected { reason: RejectReason::Overloaded },
        "token capacity is ample, but the memory estimate is not"
    );
    let small = sum.try_submit(vec![1; 100]).expect("a small call still fits");
    release.send(()).unwrap();
    assert_eq!(first.wait(), Ok(6_000));
    assert_eq!(small.wait(), Ok(100));
    // A call larger than the whole budget gets in once nothing else is held.
    assert_eq!(sum.submit(vec![1; 50_000]).wait(), Ok(50_000));
    eventually("everything is given back", || engine.stats().memory_in_flight == 0);
}

#[test]
fn locality_keeps_a_key_on_one_lane_while_it_is_in_flight() {
    // Two light lanes, so light keys have two homes to spread over.
    let engine = Engine::builder().workers(2).heavy_lanes(0).pin(false).build().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let op = engine
        .operation("cached", Weight::Light)
        .locality(|key: &u64| *key % 4)
        .register(move |key: u64| {
            std::thread::sleep(Duration::from_micros(200));
            log.lock().unwrap().push((key % 4, std::thread::current().id()));
        })
        .unwrap();
    // All in flight at once, so every key stays home for the whole run.
    let tokens = op.submit_many(0..400u64);
    for token in tokens {
        token.wait().unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut threads_per_key = std::collections::HashMap::new();
    for (key, thread) in seen.iter() {
        threads_per_key.entry(*key).or_insert_with(std::collections::HashSet::new).insert(*thread);
    }
    assert_eq!(threads_per_key.len(), 4);
    assert!(
        threads_per_key.values().all(|t| t.len() == 1),
        "one lane per key: {threads_per_key:?}"
    );
    let lanes: std::collections::HashSet<_> = seen.iter().map(|(_, t)| *t).collect();
    assert_eq!(lanes.len(), 2, "keys are spread over the lanes");
}

/// A hook of the user's (size hint, cost features, dedupe or locality key, a router)
/// that panics fails its own call as `Panicked`; the submit goes on, its permit comes
/// back, and the engine still shuts down.
#[test]
fn a_panicking_hook_fails_its_call_and_leaks_no_permit() {
    use tokengate::router::{Features, Placement, RouteSource, Router};
    use tokengate::LaneSet;

    #[derive(Debug)]
    struct PanicsOnThree;
    impl Router for PanicsOnThree {
        fn route(&self, features: &Features) -> Placement {
            assert_ne!(features.arg_size, 3, "router boom");
            Placement::new(LaneSet::Light, 1, 0, RouteSource::Heuristic)
        }
    }
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let engine = Engine::builder().capacity(4).pin(false).build().unwrap();
    let three = |x: &u32| {
        assert_ne!(*x, 3, "hook boom");
        u64::from(*x)
    };
    let ops = [
        engine.operation("size", Weight::Light).size_hint(three).register(|x: u32| x),
        engine
            .operation("cost", Weight::Light)
            .cost_features(["x"], move |x: &u32| [three(x) as f64])
            .register(|x: u32| x),
        engine.operation("dedupe", Weight::Light).dedupe(three).register(|x: u32| x),
        engine.operation("home", Weight::Light).locality(three).register(|x: u32| x),
    ]
    .map(Result::unwrap);
    let routed = Engine::builder().capacity(4).pin(false).router(Arc::new(PanicsOnThree));
    let routed = routed.build().unwrap();
    let sized = routed.operation("routed", Weight::Light).size_hint(|x: &u32| u64::from(*x));
    let sized = sized.register(|x: u32| x).unwrap();
    for op in ops.iter().chain([&sized]) {
        let panicked = |r: Result<u32, TokenError>| matches!(r, Err(TokenError::Panicked { .. }));
        assert!(panicked(op.submit(3).wait()), "{}: the call fails", op.name());
        let results: Vec<_> =
            op.submit_many([1, 3, 2, 3, 4]).into_iter().map(|t| t.wait()).collect();
        assert_eq!(results.iter().filter(|r| panicked((*r).clone())).count(), 2, "{}", op.name());
        assert_eq!(results[0], Ok(1));
        assert_eq!(results[4], Ok(4));
        // Every permit came back: a full engine's worth of calls still gets in.
        let more: Vec<_> = op.submit_many(10..18).into_iter().map(|t| t.wait()).collect();
        assert_eq!(more, (10..18).map(Ok).collect::<Vec<_>>(), "{}", op.name());
    }
    std::panic::set_hook(quiet);
    assert_eq!(engine.stats().in_flight, 0);
    engine.shutdown_with(Shutdown::Abort);
    routed.shutdown();
}

/// A retry waiting out a long backoff does not hold up an abort, a drain or a cancel.
#[test]
fn a_retry_waiting_out_its_backoff_does_not_hold_up_a_shutdown() {
    for mode in [Shutdown::Abort, Shutdown::Drain] {
        let engine = Engine::builder().pin(false).build().unwrap();
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&tries);
        let flaky = engine
            .operation("flaky", Weight::Light)
            .retry(RetryPolicy::new(2).backoff(Duration::from_secs(3600)))
            .register_fallible(move |x: u32| match counted.fetch_add(1, Ordering::SeqCst) {
                0 => Err("the first attempt fails"),
                _ => Ok(x),
            })
            .unwrap();
        let token = flaky.submit(7);
        eventually("the first attempt failed", || tries.load(Ordering::SeqCst) == 1);
        let (done, stopped) = mpsc::channel();
        std::thread::spawn(move || {
            engine.shutdown_with(mode);
            done.send(()).unwrap();
        });
        stopped.recv_timeout(Duration::from_secs(20)).expect("the shutdown ends");
        let expected = match mode {
            Shutdown::Abort => Err(TokenError::Cancelled { by: CancelSource::Shutdown }),
            // A drain runs the retry at once instead of waiting out the backoff.
            _ => Ok(7),
        };
        assert_eq!(token.wait(), expected, "{mode:?}");
    }
    // A cancel during the backoff resolves the token at once, and the shutdown after
    // it does not wait out the backoff either.
    let engine = Engine::builder().capacity(1).pin(false).build().unwrap();
    let failing = engine
        .operation("failing", Weight::Light)
        .retry(RetryPolicy::new(2).backoff(Duration::from_secs(3600)))
        .register_fallible(|_: u32| Err::<u32, _>("always"))
        .unwrap();
    let token = failing.submit(1);
    eventually("the first attempt failed", || failing.stats().retried == 1);
    assert!(token.cancel());
    assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Caller }));
    let (done, stopped) = mpsc::channel();
    std::thread::spawn(move || {
        engine.shutdown();
        done.send(engine.stats().in_flight).unwrap();
    });
    let left = stopped.recv_timeout(Duration::from_secs(20)).expect("the shutdown ends");
    assert_eq!(left, 0, "every permit came back");
}
