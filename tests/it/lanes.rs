//! Lanes: pinning, heavy/light sets, work conservation, builder validation.

use std::sync::mpsc;

use tokengate::lanes::{LanePriority, LaneSplit};
use tokengate::{Engine, LaneSet, Operation, TokenState, Weight};

use crate::{eventually, gate};

/// The cores in the calling thread's affinity mask, read with `sched_getaffinity`.
fn current_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and the kernel
    // writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(rc, 0, "sched_getaffinity failed");
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// A call of `weight` that holds its lane until released.
fn gate_of(
    engine: &Engine,
    name: &str,
    weight: Weight,
) -> (Operation<(), ()>, mpsc::SyncSender<()>) {
    let (release, wait) = mpsc::sync_channel::<()>(0);
    let wait = std::sync::Mutex::new(wait);
    let op = engine
        .register(name, weight, move |()| {
            let _ = wait.lock().unwrap().recv();
        })
        .expect("register gate");
    (op, release)
}

/// The calling thread's scheduling policy.
fn current_policy() -> i32 {
    // SAFETY: a plain query of the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[test]
fn pinned_lanes_run_on_exactly_one_core_each() {
    let engine = Engine::builder().pin(true).split(LaneSplit::Pinned).build().unwrap();
    let lanes = engine.lanes();
    assert!(!lanes.is_empty());
    let mut cores = Vec::new();
    for lane in &lanes {
        assert_eq!(lane.priority, LanePriority::Normal);
        assert!(lane.pinned, "lane {} did not pin", lane.index);
        let core = lane.core.expect("a pinned lane has a core");
        assert_eq!(lane.affinity, vec![core], "lane {} mask read back in its thread", lane.index);
        cores.push(core);
    }
    cores.sort_unstable();
    cores.dedup();
    assert_eq!(cores.len(), lanes.len(), "one core per lane");

    // And from inside user code, with the kernel's own answer. (A waiting caller may
    // run a batch of a backlog itself, on its own unpinned thread: those are skipped.)
    let on_lane = || std::thread::current().name().is_some_and(|n| n.starts_with("tokengate-lane"));
    let mask = engine
        .register("mask", Weight::Light, move |_: u32| on_lane().then(current_affinity))
        .unwrap();
    let mut on_lanes = 0;
    for token in mask.submit_many(0..2_000u32) {
        let Some(seen) = token.wait().unwrap() else { continue };
        assert_eq!(seen.len(), 1, "a token ran on a lane whose mask is {seen:?}");
        assert!(cores.contains(&seen[0]));
        on_lanes += 1;
    }
    assert!(on_lanes > 0, "the lanes ran some");
}

#[test]
fn preemptive_split_pins_light_lanes_and_floats_heavy_ones_at_idle_priority() {
    // Isolated: beside a busy test process the heavy probe's lane may be starved, and a
    // rescue would run the probe on a light lane (see the test after this one).
    let engine = Engine::builder().pin(true).isolate_heavy(true).build().unwrap();
    let lanes = engine.lanes();
    let light: Vec<_> = lanes.iter().filter(|l| l.set == LaneSet::Light).collect();
    let heavy: Vec<_> = lanes.iter().filter(|l| l.set == LaneSet::Heavy).collect();
    let mask = current_affinity();
    assert_eq!(light.len(), mask.len(), "a light lane per usable core");
    assert_eq!(heavy.len(), light.len(), "as many heavy lanes by default");
    let mut cores: Vec<usize> = light.iter().map(|l| l.core.expect("pinned")).collect();
    for lane in &light {
        assert!(lane.pinned);
        assert_eq!(lane.priority, LanePriority::Normal);
        assert_eq!(lane.affinity, vec![lane.core.unwrap()]);
    }
    cores.sort_unstable();
    assert_eq!(cores, mask, "one light lane on each core");
    for lane in &heavy {
        assert!(!lane.pinned);
        assert_eq!(lane.core, None);
        assert_eq!(lane.affinity, mask, "a heavy lane may run on every core of the engine");
        assert_eq!(lane.priority, LanePriority::Idle, "SCHED_IDLE is granted on Linux");
    }
    // And from inside user code: heavy calls run at idle priority on any core, light
    // calls at normal priority on one.
    let probe = |_: u32| (current_policy(), current_affinity());
    let heavy_op = engine.register("heavy_probe", Weight::Heavy, probe).unwrap();
    let (policy, seen) = heavy_op.submit(0).wait().unwrap();
    assert_eq!((policy, seen), (libc::SCHED_IDLE, mask.clone()));
    let light_op = engine.register("light_probe", Weight::Light, probe).unwrap();
    let (policy, seen) = light_op.submit(0).wait().unwrap();
    assert_eq!(policy, libc::SCHED_OTHER);
    assert_eq!(seen.len(), 1);
}

/// Threads that are not the engine's keep every core busy: the `SCHED_IDLE` heavy lanes
/// would get about 0.3% of a core (these 200 calls of 2 ms would take minutes), so the
/// guard has the light lanes take heavy work until the strangers stop.
#[test]
fn heavy_work_starved_by_other_threads_is_rescued() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let engine = Engine::builder().workers(2).pin(false).build().unwrap();
    let lanes = engine.lanes();
    if lanes.iter().any(|l| l.set == LaneSet::Heavy && l.priority != LanePriority::Idle) {
        eprintln!("SCHED_IDLE refused here: no starvation to rescue");
        return;
    }
    let light: Vec<String> = lanes
        .iter()
        .filter(|l| l.set == LaneSet::Light)
        .map(|l| format!("tokengate-lane-{}", l.index))
        .collect();
    let on_light_lane = move |_: u32| {
        crate::spin_for(std::time::Duration::from_millis(2));
        std::thread::current().name().is_some_and(|name| light.iter().any(|l| l == name))
    };
    let heavy = engine.register("starved", Weight::Heavy, on_light_lane).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let strangers: Vec<_> = (0..cores)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let on_light: Vec<bool> =
        heavy.submit_many(0..200u32).into_iter().map(|t| t.wait().unwrap()).collect();
    // Still starved: heavy calls that wait on heavy children finish too (a heavy lane
    // that waits runs only its own children, and the light lanes take the rest).
    let tree = std::sync::Arc::new(std::sync::OnceLock::<Operation<u32, u32>>::new());
    let inner = std::sync::Arc::clone(&tree);
    let parent = engine
        .register("tree", Weight::Heavy, move |depth: u32| -> u32 {
            crate::spin_for(std::time::Duration::from_micros(500));
            if depth == 0 {
                return 1;
            }
            let op = inner.get().expect("registered");
            let (a, b) = tokengate::wait_both(op.submit(depth - 1), op.submit(depth - 1));
            a.unwrap() + b.unwrap()
        })
        .unwrap();
    let _ = tree.set(parent.clone());
    let leaves: Vec<u32> =
        parent.submit_many([4u32; 8]).into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(leaves, vec![16; 8]);
    stop.store(true, Ordering::Relaxed);
    strangers.into_iter().for_each(|t| t.join().unwrap());
    engine.shutdown();
    let stats = engine.stats();
    assert!(stats.rescues >= 1, "the starvation was seen");
    let rescued = on_light.iter().filter(|&&light| light).count();
    assert!(rescued > 0, "light lanes ran some of the heavy calls");
    assert_eq!(stats.operations[0].1.completed, 200);
}

#[test]
fn preemptive_sets_never_run_each_others_work_outside_a_wait() {
    let engine = Engine::builder().workers(2).heavy_lanes(1).pin(false).build().unwrap();
    let sets: Vec<_> = engine.lanes().iter().map(|l| l.set).collect();
    assert_eq!(sets, vec![LaneSet::Light, LaneSet::Light, LaneSet::Heavy]);
    // The heavy lane held: more heavy work waits for it, with both light lanes idle.
    let (hold, release) = gate_of(&engine, "hold_heavy", Weight::Heavy);
    let holding = hold.submit(());
    eventually("the heavy gate runs", || holding.state() == TokenState::Running);
    let heavy = engine.operation::<u32>("heavy", Weight::Heavy).register(|x: u32| x).unwrap();
    let waiting = heavy.submit(1);
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    for token in echo.submit_many(0..1_000u32) {
        token.wait().unwrap();
    }
    assert_eq!(waiting.state(), TokenState::Admitted, "light lanes leave heavy work alone");
    release.send(()).unwrap();
    assert_eq!(waiting.wait(), Ok(1));
    holding.wait().unwrap();
    // Both light lanes held: light work waits, the idle heavy lane leaves it alone.
    let (hold, release) = gate_of(&engine, "hold_light", Weight::Light);
    let held: Vec<_> = (0..2).map(|_| hold.submit(())).collect();
    eventually("both light gates run", || held.iter().all(|t| t.state() == TokenState::Running));
    let light = echo.submit(7);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(light.state(), TokenState::Admitted, "the heavy lane leaves light work alone");
    for _ in 0..2 {
        release.send(()).unwrap();
    }
    assert_eq!(light.wait(), Ok(7));
    held.into_iter().for_each(|t| t.wait().unwrap());
}

#[test]
fn unpinned_lanes_keep_the_process_mask() {
    let engine = Engine::builder().pin(false).build().unwrap();
    for lane in engine.lanes() {
        assert!(!lane.pinned);
        assert_eq!(lane.core, None);
        assert_eq!(lane.affinity, current_affinity());
    }
}

#[test]
fn heavy_lane_is_the_last_and_a_held_lane_leaves_work_to_the_other() {
    let engine = Engine::builder().workers(2).pin(false).split(LaneSplit::Pinned).build().unwrap();
    let sets: Vec<_> = engine.lanes().iter().map(|l| l.set).collect();
    assert_eq!(sets, vec![LaneSet::Light, LaneSet::Heavy]);
    let (hold, release) = gate(&engine, "hold");
    let holding = hold.submit(());
    eventually("the gate runs", || holding.state() == TokenState::Running);
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let before = engine.stats().lanes;
    let callers_before = engine.stats().caller_tokens;
    for token in echo.submit_many(0..10_000u32) {
        token.wait().unwrap();
    }
    let after = engine.stats().lanes;
    let mut deltas: Vec<u64> =
        after.iter().zip(&before).map(|(a, b)| a.tokens - b.tokens).collect();
    deltas.sort_unstable();
    // Whichever lane took the gate is stuck in it; the other ran every echo token, but
    // for those the waiting caller ran itself while the lane was backlogged.
    let by_caller = engine.stats().caller_tokens - callers_before;
    assert_eq!(deltas[0], 0);
    assert_eq!(deltas[1] + by_caller, 10_000);
    release.send(()).unwrap();
    holding.wait().unwrap();
}

#[test]
fn light_lanes_take_heavy_work_unless_isolated() {
    // Hold the heavy lane, then submit more heavy work: a work-conserving light lane
    // runs it; an isolating engine leaves it queued for the heavy lane.
    for isolate in [false, true] {
        let engine = Engine::builder()
            .workers(2)
            .pin(false)
            .split(LaneSplit::Pinned)
            .isolate_heavy(isolate)
            .build()
            .unwrap();
        let (hold, release) = gate(&engine, "hold");
        let holding = hold.submit(());
        eventually("the gate runs", || holding.state() == TokenState::Running);
        let heavy = engine.register("heavy", Weight::Heavy, |x: u32| x).unwrap();
        let token = heavy.submit(1);
        if isolate {
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(token.state(), TokenState::Admitted, "isolated heavy work waits");
        } else {
            eventually("a light lane runs the heavy token", || token.is_finished());
        }
        release.send(()).unwrap();
        assert_eq!(token.wait(), Ok(1));
        holding.wait().unwrap();
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let cases: Vec<(tokengate::EngineBuilder, &str)> = vec![
        (Engine::builder().workers(0), "workers"),
        (Engine::builder().workers(1000).pin(false), "workers"),
        (
            Engine::builder().workers(2).pin(false).split(LaneSplit::Pinned).heavy_lanes(2),
            "heavy_lanes",
        ),
        (
            Engine::builder().workers(1).pin(false).split(LaneSplit::Pinned).heavy_lanes(1),
            "heavy_lanes",
        ),
        (Engine::builder().workers(2).pin(false).heavy_lanes(63), "heavy_lanes"),
        (Engine::builder().light_batch(0), "light_batch"),
        (Engine::builder().capacity(0), "capacity"),
        (Engine::builder().cores([100_000]), "core 100000"),
        (Engine::builder().cores(Vec::new()), "cores"),
    ];
    for (builder, names) in cases {
        let err = builder.build().expect_err(names).to_string();
        assert!(err.contains(names), "error {err:?} should name {names:?}");
    }
}

/// A bad control configuration used to fail `build()` after the lanes and the telemetry
/// writer had started, leaving them running. Counted in a child process of its own, so
/// other tests' threads do not interfere.
#[test]
fn a_failed_build_leaves_no_thread_behind() {
    if crate::in_child("lanes::a_failed_build_leaves_no_thread_behind") {
        return;
    }
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secret = "0123456789abcdef0123";
    let before = threads();
    let failing: Vec<(&str, tokengate::EngineBuilder)> = vec![
        ("short secret", Engine::builder().control(taken.local_addr().unwrap(), "short", false)),
        ("public address", Engine::builder().control("0.0.0.0:0".parse().unwrap(), secret, false)),
        ("port in use", Engine::builder().control(taken.local_addr().unwrap(), secret, false)),
        (
            "port in use, with a log",
            Engine::builder().log_in_memory().control(taken.local_addr().unwrap(), secret, false),
        ),
        ("missing model", Engine::builder().model("/nonexistent/model.bin")),
        ("unwritable log dir", Engine::builder().log_dir("/proc/tokengate/logs")),
        ("no workers", Engine::builder().workers(0)),
    ];
    for (what, builder) in failing {
        let error = builder.build().expect_err(what);
        assert_eq!(threads(), before, "{what} ({error}) left threads running");
    }
    // And a successful build's threads all end with it.
    let engine = Engine::builder().pin(false).log_in_memory().build().unwrap();
    assert!(threads() > before);
    drop(engine);
    eventually("the engine's threads end", || threads() == before);
    std::thread::sleep(std::time::Duration::from_millis(10));
}
