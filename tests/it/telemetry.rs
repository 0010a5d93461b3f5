//! Every attempt a lane reaches is a telemetry row, whatever its outcome; a log directory
//! stays under its cap.

use std::time::Duration;

use tokengate::telemetry::RecordOutcome;
use tokengate::{Engine, Weight};

use crate::gate;

#[test]
fn cancelled_timed_out_and_panicked_calls_are_rows_too() {
    let engine = crate::single_lane().log_in_memory().build().unwrap();
    let (held, release) = gate(&engine, "gate");
    let slow = engine
        .operation("slow", Weight::Light)
        .timeout(Duration::from_millis(20))
        .register(|()| std::thread::sleep(Duration::from_millis(60)))
        .unwrap();
    let boom = engine.register("boom", Weight::Light, |_: ()| -> u8 { panic!("boom") }).unwrap();
    let fine = engine.register("fine", Weight::Light, |x: u8| x).unwrap();
    let holding = held.submit(());
    crate::eventually("the gate runs", || engine.stats().lanes[0].tokens == 1);
    let cancelled = fine.submit(1);
    assert!(cancelled.cancel());
    release.send(()).unwrap();
    holding.wait().unwrap();
    assert!(slow.submit(()).wait().is_err());
    assert!(boom.submit(()).wait().is_err());
    assert_eq!(fine.submit(2).wait(), Ok(2));
    engine.shutdown();
    let records = engine.take_records();
    let outcome = |op: u32| {
        let rows: Vec<_> = records.iter().filter(|r| r.op == op).collect();
        assert_eq!(rows.len(), if op == 3 { 2 } else { 1 }, "rows of op {op}: {rows:?}");
        rows[0].outcome
    };
    assert_eq!(outcome(1), RecordOutcome::TimedOut);
    assert_eq!(outcome(2), RecordOutcome::Panicked);
    let mut fine_rows: Vec<_> = records.iter().filter(|r| r.op == 3).collect();
    fine_rows.sort_by_key(|r| r.token_id);
    assert_eq!(fine_rows[0].outcome, RecordOutcome::Cancelled, "{fine_rows:?}");
    assert_eq!(fine_rows[0].run_ns, 0);
    assert_eq!(fine_rows[1].outcome, RecordOutcome::Completed);
    let timed_out = records.iter().find(|r| r.op == 1).unwrap();
    assert!(timed_out.run_ns >= 20_000_000, "it ran past its deadline: {timed_out:?}");
}

#[test]
fn a_call_that_never_returns_is_a_timed_out_row_once() {
    let engine = crate::single_lane().log_in_memory().build().unwrap();
    let (unblock, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = std::sync::Mutex::new(blocked);
    let hangs = engine
        .operation("hangs", Weight::Light)
        .timeout(Duration::from_millis(30))
        .register(move |()| {
            let _ = blocked.lock().unwrap().recv();
        })
        .unwrap();
    let fine = engine.register("fine", Weight::Light, |x: u8| x).unwrap();
    assert!(hangs.submit(()).wait().is_err());
    // The lane was replaced; the engine goes on and stops with the call still hung.
    assert_eq!(fine.submit(1).wait(), Ok(1));
    engine.shutdown();
    let records = engine.take_records();
    let rows: Vec<_> = records.iter().filter(|r| r.op == 0).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, RecordOutcome::TimedOut);
    assert!(rows[0].run_ns >= 30_000_000, "it ran until its deadline: {:?}", rows[0]);
    assert!(rows[0].end_to_end_ns >= rows[0].run_ns);
    // When it does return, no second row.
    unblock.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(engine.take_records().iter().all(|r| r.op != 0));
}

#[test]
fn a_full_log_directory_takes_no_more_rows_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("earlier.parquet"), vec![0u8; 4096]).unwrap();
    let engine =
        Engine::builder().pin(false).log_dir(dir.path()).log_max_bytes(1024).build().unwrap();
    let op = engine.register("op", Weight::Light, |x: u32| x).unwrap();
    let tokens = op.submit_many(0..1_000);
    tokens.into_iter().for_each(|t| drop(t.wait()));
    engine.shutdown();
    let stats = engine.stats().telemetry.unwrap();
    assert_eq!(stats.written, 0);
    assert!(stats.files.is_empty());
    assert_eq!(stats.over_cap + stats.dropped, 1_000, "{stats:?}");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 1, "only the earlier file is there");
}
