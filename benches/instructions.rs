//! Instructions per token, counted by valgrind's callgrind: a figure that does not move
//! with the machine's noise. Two paths, each measured at two sizes so that start-up
//! cancels out (per token = (I(n2) − I(n1)) / (n2 − n1)):
//!
//! * `bulk`: `submit_many` of a light operation (submit side) plus the lanes' run of its
//!   batches (run → resolve side), waited for after a drain;
//! * `single`: `submit(x)` then a wait, one call at a time; the waiting itself is left
//!   out (it is idle time, not cost): the submit, the lane's run and the taking of the
//!   result (with the token's drop, which frees what the call allocated) are counted;
//! * `features`: `bulk` on an operation that declares two cost features (computed per
//!   call at submit, so each call is routed on its own): what cost features add;
//! * `logged`: `bulk` with every token logged (in memory): what telemetry adds on the
//!   lanes (the clock reads and the row; the writer thread is not counted).
//!
//! Counting is switched on only inside `submit_*` below and inside the lanes'
//! `Job::run` (`--toggle-collect`), so idle lanes' spinning never counts.
//!
//! Run: `cargo bench --workspace --bench instructions` (needs `valgrind`; Debian's
//! package; it says so and skips when missing).

use std::process::Command;

use tokengate::{Engine, Operation, Weight};

#[inline(never)]
fn submit_bulk(op: &Operation<u64, u64>, n: u64) -> Vec<tokengate::Token<u64>> {
    op.submit_many(0..n)
}

#[inline(never)]
fn submit_single(op: &Operation<u64, u64>, x: u64) -> tokengate::Token<u64> {
    op.submit(x)
}

/// Takes a resolved token's result (no waiting left) and drops the token.
#[inline(never)]
fn take_single(token: tokengate::Token<u64>) -> Result<u64, tokengate::TokenError> {
    token.wait()
}

fn workload(mode: &str, n: u64) {
    // Routed by tags: the running averages (the default router) size batches by the
    // first ones' timing, which would make the counts vary from run to run.
    let tags = std::sync::Arc::new(tokengate::router::StaticRouter::new(128));
    let builder = Engine::builder().router(tags);
    let builder = if mode == "logged" { builder.log_in_memory() } else { builder };
    let engine = builder.build().unwrap();
    let op = match mode {
        "features" => engine
            .operation::<u64>("inc", Weight::Light)
            .cost_features(["low_bits", "parity"], |&x| [(x & 0xff) as f64, (x & 1) as f64])
            .register(|x: u64| x.wrapping_add(1))
            .unwrap(),
        _ => engine.register("inc", Weight::Light, |x: u64| x.wrapping_add(1)).unwrap(),
    };
    match mode {
        "bulk" | "features" | "logged" => {
            let tokens = submit_bulk(&op, n);
            engine.shutdown();
            let sum: u64 = tokens.into_iter().map(|t| t.wait().unwrap()).sum();
            assert_eq!(sum, (1..=n).sum::<u64>());
        }
        "single" => {
            for x in 0..n {
                let token = submit_single(&op, x);
                while !token.is_finished() {
                    std::thread::yield_now();
                }
                assert_eq!(take_single(token), Ok(x + 1));
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Instructions callgrind counted in the collected functions for one run.
fn count(mode: &str, n: u64) -> Option<u64> {
    let out = std::env::temp_dir().join(format!("tokengate-callgrind-{mode}-{n}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args(["--toggle-collect=*submit_bulk*", "--toggle-collect=*submit_single*"])
        .arg("--toggle-collect=*take_single*")
        // A job's run, however rustc names it: `<T as Job>::run` when the impl sits
        // beside its type, `path::<impl Job for T>::run` when it does not.
        .arg("--toggle-collect=*as tokengate::lanes::*Job>::run")
        .arg("--toggle-collect=*impl tokengate::lanes::job::Job for *>::run")
        .arg(std::env::current_exe().ok()?)
        .args(["--workload", mode, &n.to_string()])
        .status()
        .ok()?;
    assert!(status.success(), "valgrind failed on {mode} {n}");
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let totals =
        text.lines().find_map(|l| l.strip_prefix("totals:").or(l.strip_prefix("summary:")));
    totals?.split_whitespace().next()?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--workload") {
        workload(&args[at + 1], args[at + 2].parse().unwrap());
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("instructions: SKIPPED, valgrind is not installed (apt-get install valgrind)");
        return;
    }
    let modes = [
        ("bulk", 20_000u64, 60_000u64),
        ("single", 2_000, 6_000),
        ("features", 20_000, 60_000),
        ("logged", 20_000, 60_000),
    ];
    for (mode, n1, n2) in modes {
        let (Some(a), Some(b)) = (count(mode, n1), count(mode, n2)) else {
            println!("instructions/{mode}: could not read callgrind's output");
            continue;
        };
        let per_token = (b as f64 - a as f64) / (n2 - n1) as f64;
        println!("instructions/{mode}: {per_token:.0} per token ({a} at {n1}, {b} at {n2})");
    }
}
