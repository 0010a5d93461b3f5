//! Tokens that wait on tokens: a wait on a lane runs other queued work, so recursion and
//! fan-out inside operations never deadlock, on any number of lanes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokengate::{Engine, Operation, RetryPolicy, TokenError, Weight};

fn fib_engine(engine: &Engine) -> Operation<u32, u64> {
    let me: Arc<OnceLock<Operation<u32, u64>>> = Arc::new(OnceLock::new());
    let inner = Arc::clone(&me);
    let fib = engine
        .register("fib", Weight::Light, move |n: u32| -> u64 {
            if n < 2 {
                return u64::from(n);
            }
            let fib = inner.get().expect("registered");
            let (a, b) = tokengate::wait_both(fib.submit(n - 1), fib.submit(n - 2));
            a.unwrap() + b.unwrap()
        })
        .unwrap();
    me.set(fib.clone()).unwrap();
    fib
}

/// `chain(n)`: a call that submits `chain(n - 1)` and waits for it (n deep).
fn chain_engine(engine: &Engine) -> Operation<u32, u32> {
    let me: Arc<OnceLock<Operation<u32, u32>>> = Arc::new(OnceLock::new());
    let inner = Arc::clone(&me);
    let chain = engine
        .register("chain", Weight::Light, move |depth: u32| -> u32 {
            if depth == 0 {
                return 0;
            }
            1 + inner.get().unwrap().submit(depth - 1).wait().unwrap()
        })
        .unwrap();
    me.set(chain.clone()).unwrap();
    chain
}

#[test]
fn recursive_fib_finishes_on_the_default_engine() {
    let engine = Engine::builder().build().unwrap();
    let fib = fib_engine(&engine);
    assert_eq!(fib.submit(25).wait(), Ok(75_025));
    // Every call was its own token, run on a lane (counted once per batch, just after
    // the batch's tokens resolve).
    crate::eventually("fib(25)'s 242,785 calls are counted", || fib.stats().completed == 242_785);
}

#[test]
fn recursion_runs_on_a_single_lane_without_overflowing_its_stack() {
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    let fib = fib_engine(&engine);
    assert_eq!(fib.submit(25).wait(), Ok(75_025));
}

/// A chain: each call waits on the next, 200 deep.
#[test]
fn deep_chains_finish_on_one_and_two_lanes() {
    for workers in [1, 2] {
        let engine = Engine::builder().workers(workers).pin(false).build().unwrap();
        let chain = chain_engine(&engine);
        assert_eq!(chain.submit(200).wait(), Ok(200), "{workers} lanes");
    }
}

/// A chain of waiting calls deeper than the engine's capacity (every permit held by a
/// waiting parent) and deeper than a default thread's stack holds: it finishes, on one
/// lane, where it once stalled for good or overflowed the lane's stack.
#[test]
fn a_chain_deeper_than_the_capacity_and_a_default_stack_finishes() {
    let engine = crate::single_lane().capacity(16).build().unwrap();
    let chain = chain_engine(&engine);
    let token = chain.submit(3_000);
    let result = token.wait_timeout(Duration::from_secs(60)).map_err(|_| "unresolved after 60 s");
    assert_eq!(result, Ok(Ok(3_000)));
    crate::eventually("every permit came back", || engine.stats().in_flight == 0);
}

/// Sixteen parents each fan out to 1,000 children through `map`.
#[test]
fn fan_out_inside_operations_on_one_and_two_lanes() {
    for workers in [1, 2] {
        let engine = Engine::builder().workers(workers).pin(false).build().unwrap();
        let child = engine.register("child", Weight::Light, |x: u64| x * 2).unwrap();
        let parent = engine
            .register("parent", Weight::Medium, move |n: u64| -> u64 {
                child.blocking_map(0..n).into_iter().map(|r| r.unwrap()).sum()
            })
            .unwrap();
        let parents = parent.submit_many(std::iter::repeat_n(1_000, 16));
        for token in parents {
            assert_eq!(token.wait(), Ok(999_000), "{workers} lanes");
        }
    }
}

/// A waiting parent on one lane runs its child itself; the child's time is not logged
/// as the parent's.
#[test]
fn a_parents_logged_run_time_leaves_out_the_work_it_ran_while_waiting() {
    let engine = Engine::builder().workers(1).pin(false).log_in_memory().build().unwrap();
    let child = engine
        .register("slow_child", Weight::Light, |()| std::thread::sleep(Duration::from_millis(30)))
        .unwrap();
    let parent = engine
        .register("parent", Weight::Light, move |()| child.submit(()).wait().unwrap())
        .unwrap();
    parent.submit(()).wait().unwrap();
    engine.shutdown();
    let records = engine.take_records();
    let run_ns = |op: u32| records.iter().find(|r| r.op == op).unwrap().run_ns;
    let (child_ns, parent_ns) = (run_ns(0), run_ns(1));
    assert!(child_ns >= 30_000_000, "the child slept 30 ms: {child_ns} ns");
    assert!(parent_ns < child_ns / 2, "parent {parent_ns} ns includes its child's {child_ns} ns");
}

/// Waits inside operations keep every net: a child that panics and is retried, one
/// cancelled while queued, and a shutdown while parents wait. (One lane for everything:
/// with a second lane, a parent placed heavy could see its queued child started by a
/// light lane before it cancels it.)
#[test]
fn nested_waits_keep_retries_cancels_and_shutdown() {
    let engine = crate::single_lane().build().unwrap();
    let flaky = engine
        .operation("flaky", Weight::Light)
        .retry(RetryPolicy::new(2))
        .register_with_context(|x: u32, cx: &tokengate::Context<'_>| {
            assert!(cx.attempt() > 1, "first attempts fail");
            x
        })
        .unwrap();
    let parent = engine
        .register("parent", Weight::Light, move |x: u32| {
            let doomed = flaky.submit(x);
            let kept = flaky.submit(x + 1);
            let cancelled = doomed.cancel();
            let kept = kept.wait();
            (cancelled, kept)
        })
        .unwrap();
    let tokens = parent.submit_many(0..50);
    for (x, token) in tokens.into_iter().enumerate() {
        assert_eq!(token.wait(), Ok((true, Ok(x as u32 + 1))));
    }
    engine.shutdown();
    assert!(matches!(parent.submit(1).wait(), Err(TokenError::Rejected { .. })));
}

/// A caller outside the lanes that waits while they are backlogged runs light work
/// itself; a lone call is never run on its caller.
#[test]
fn waiting_callers_help_only_a_backlog() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let engine = Engine::builder().workers(1).pin(false).light_batch(1).build().unwrap();
    let off_lane = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&off_lane);
    let work = engine
        .register("work", Weight::Light, move |x: u64| {
            let on_lane =
                std::thread::current().name().is_some_and(|n| n.starts_with("tokengate-lane"));
            if !on_lane {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            x
        })
        .unwrap();
    for x in 0..100 {
        assert_eq!(work.submit(x).wait(), Ok(x));
    }
    assert_eq!(engine.stats().caller_tokens, 0, "single calls run on the lane");
    assert_eq!(off_lane.load(Ordering::SeqCst), 0);
    assert_eq!(engine.stats().lanes[0].tokens, 100);
    // Hold the only lane until the caller has helped (bounded: a broken engine fails).
    let seen = Arc::clone(&off_lane);
    let hold = engine
        .register("hold", Weight::Light, move |()| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while seen.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
    let held = hold.submit(());
    crate::eventually("the lane holds", || engine.stats().lanes[0].tokens == 101);
    let tokens = work.submit_many(0..400);
    let sum: u64 = tokens.into_iter().map(|t| t.wait().unwrap()).sum();
    held.wait().unwrap();
    assert_eq!(sum, (0..400).sum::<u64>());
    let by_caller = engine.stats().caller_tokens;
    assert!(by_caller > 0, "the caller helped with a backlog of 400 batches");
    assert_eq!(by_caller, off_lane.load(Ordering::SeqCst));
    assert_eq!(engine.stats().lanes[0].tokens + by_caller, 501);
}

/// Deadlines and waits that help: a call that overruns while its lane helps another's
/// wait, and a waiting call that overruns while a helped call runs. Every token resolves,
/// the lanes are replaced, and the engine still drains. The overrunning calls are held
/// by gates until the test has seen them time out, so each overrun is certain whatever
/// the machine's load.
#[test]
fn overruns_inside_nested_waits_still_resolve_and_drain() {
    use std::sync::mpsc;
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    let held = |receiver: mpsc::Receiver<()>| {
        let receiver = std::sync::Mutex::new(receiver);
        move || {
            let _ = receiver.lock().unwrap().recv_timeout(Duration::from_secs(30));
        }
    };
    let (release_child, child_gate) = mpsc::channel();
    let (release_parent, parent_gate) = mpsc::channel();
    let (hold_child, hold_parent) = (held(child_gate), held(parent_gate));
    let child = engine
        .operation("slow_child", Weight::Light)
        .timeout(Duration::from_millis(20))
        .register(move |hold: bool| {
            if hold {
                hold_child();
            }
        })
        .unwrap();
    let parent = engine
        .operation("waiting_parent", Weight::Light)
        .timeout(Duration::from_millis(1_000))
        .register(move |(child_holds, parent_holds): (bool, bool)| {
            let result = child.submit(child_holds).wait();
            if parent_holds {
                hold_parent();
            }
            result.is_ok()
        })
        .unwrap();
    // One parent at a time: with parents queued behind the running one, this thread,
    // waiting, could help with the backlog and run a parent itself, where its overrun
    // replaces no lane.
    // 1. The child overruns (its lane is replaced while the parent's stack, under it on
    //    the same thread, waits); once it returns, the parent sees the timeout and
    //    returns in time.
    let first = parent.submit((true, false));
    crate::eventually("the child's lane is replaced", || engine.stats().stuck_lanes >= 1);
    release_child.send(()).unwrap();
    assert_eq!(first.wait(), Ok(false));
    // 2. The parent overruns after its child returned.
    assert_eq!(parent.submit((false, true)).wait(), Err(TokenError::TimedOut));
    crate::eventually("the parent's lane is replaced", || engine.stats().stuck_lanes >= 2);
    release_parent.send(()).unwrap();
    // 3. A parent that finishes in time.
    assert_eq!(parent.submit((false, false)).wait(), Ok(true));
    assert_eq!(engine.stats().stuck_lanes, 2);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        engine.shutdown();
        let _ = done.send(());
    });
    finished.recv_timeout(Duration::from_secs(20)).expect("the engine drains");
}

/// `map` keeps no token per call: its results still come back in argument order, one
/// per call, across several admission chunks (more calls than a chunk), with each
/// call's own failure; after shutdown every call is rejected.
#[test]
fn map_returns_every_result_in_order_across_chunks() {
    let engine = Engine::builder().pin(false).build().unwrap();
    let odd_fails = engine
        .register_fallible("odd_fails", Weight::Light, |x: u64| match x % 2 {
            0 => Ok(x * 3),
            _ => Err(format!("{x} is odd")),
        })
        .unwrap();
    let results = odd_fails.blocking_map(0..10_000);
    assert_eq!(results.len(), 10_000);
    for (x, result) in (0..10_000u64).zip(&results) {
        match x % 2 {
            0 => assert_eq!(result, &Ok(x * 3)),
            _ => assert_eq!(result, &Err(TokenError::Failed(format!("{x} is odd")))),
        }
    }
    let stats = odd_fails.stats();
    assert_eq!((stats.completed, stats.failed), (5_000, 5_000));
    engine.shutdown();
    let rejected = odd_fails.blocking_map(0..3);
    assert_eq!(rejected.len(), 3);
    assert!(rejected.iter().all(|r| matches!(r, Err(TokenError::Rejected { .. }))), "{rejected:?}");
}

/// The names renamed in 0.2 still compile, as deprecated aliases of the new ones.
#[test]
#[allow(deprecated)]
fn renamed_items_keep_their_old_names() {
    let engine = tokengate::Engine::builder().build().unwrap();
    let square = engine.register("square", tokengate::Weight::Light, |x: u64| x * x).unwrap();
    let (a, b) = tokengate::join(square.submit(2), square.submit(3));
    assert_eq!((a.unwrap(), b.unwrap()), (4, 9));
    let all: Vec<u64> = square.map(0..4).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(all, [0, 1, 4, 9]);
    assert_eq!(engine.in_flight(), engine.stats().in_flight);
    assert_eq!(engine.stuck_workers(), engine.stats().stuck_lanes);
}

/// A submit inside a running call waits for room while other work holds the permits
/// (here a paused operation's calls): only waiting calls holding every permit let it
/// past the capacity.
#[test]
fn a_call_submitting_into_a_full_gate_of_paused_work_waits_within_the_capacity() {
    let engine = Engine::builder().capacity(8).pin(false).build().unwrap();
    let child = engine.register("child", Weight::Light, |x: u32| x).unwrap();
    engine.pause(Some("child")).unwrap();
    let parent = engine
        .register("parent", Weight::Light, move |n: u32| -> u32 {
            let tokens: Vec<_> = (0..n).map(|x| child.submit(x)).collect();
            tokens.into_iter().map(|t| t.wait().unwrap()).sum()
        })
        .unwrap();
    let token = parent.submit(20);
    crate::eventually("the gate fills", || engine.stats().in_flight == 8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.stats().in_flight, 8, "nothing was admitted past the capacity");
    engine.resume(Some("child")).unwrap();
    let result = token.wait_timeout(Duration::from_secs(20)).map_err(|_| "unresolved");
    assert_eq!(result, Ok(Ok((0..20).sum())));
}
