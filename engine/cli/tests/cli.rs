//! The `tokengate` binary's diagnostics: on stderr, through `tracing`, without colour
//! codes when stderr is not a terminal, each naming what it is about; `-q`/`-v` and
//! `RUST_LOG` choose what is shown.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with stdout and stderr piped and `RUST_LOG` unset.
fn tokengate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the tokengate binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn piped_warnings_carry_no_colour_codes() {
    let output = tokengate(&["run", "leibniz", "--terms", "1000", "--workers", "64"]);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(!err.contains("\x1b["), "ANSI codes in piped stderr: {err:?}");
    assert!(err.contains("WARN") && err.contains("64 pinned lanes"), "{err}");
    assert!(err.contains("engine started") && err.contains("engine stopped"), "{err}");
    // The report itself stays on stdout.
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("pi ") && !err.contains("pi "), "{out}");
}

#[test]
fn quiet_and_verbose() {
    let quiet = tokengate(&["run", "leibniz", "--terms", "1000", "--workers", "64", "-q"]);
    assert!(quiet.status.success());
    assert_eq!(stderr(&quiet), "", "-q shows errors only");
    let verbose = tokengate(&["-v", "run", "leibniz", "--terms", "1000"]);
    let err = stderr(&verbose);
    assert!(err.contains("DEBUG") && err.contains("lane 0"), "-v shows each lane: {err}");
    assert!(!err.contains("\x1b["), "{err:?}");
    let filtered = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["run", "leibniz", "--terms", "1000", "-v"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(stderr(&filtered), "", "RUST_LOG overrides -v");
}

#[test]
fn a_bad_log_directory_is_named() {
    // A directory cannot be created under a regular file, on any system.
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-log-dir-is-a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("logs");
    let output = tokengate(&["run", "leibniz", "--terms", "1000", "--log", dir.to_str().unwrap()]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(err.contains(&format!("creating the log directory {}", dir.display())), "{err}");
    assert!(!err.contains("\x1b["), "{err:?}");
    if cfg!(target_os = "linux") {
        let output = tokengate(&["run", "leibniz", "--terms", "1000", "--log", "/proc/x"]);
        let err = stderr(&output);
        assert!(!output.status.success());
        assert!(err.contains("log directory /proc/x: "), "{err}");
    }
    // Each cause once: the path and the OS error are not repeated down a chain.
    let output = tokengate(&["run", "leibniz", "--model", "/nonexistent/m.bin"]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert_eq!(err.matches("/nonexistent/m.bin").count(), 1, "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert!(err.starts_with("error: loading the model /nonexistent/m.bin: "), "{err}");
}

#[test]
fn the_service_bench_reports_every_executor_with_equal_results() {
    let output = tokengate(&[
        "-q",
        "bench",
        "service",
        "--loads",
        "0.2",
        "--rounds",
        "1",
        "--secs",
        "0.5",
        "--warmup",
        "0.3",
        "--executors",
        "spawn-blocking,rayon,tagged,untagged",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let load = &report["loads"][0];
    assert_eq!(load["results_equal"], true);
    let names: Vec<&str> = load["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["executor"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["spawn_blocking", "rayon", "tokengate tagged", "tokengate untagged"]);
    for executor in load["executors"].as_array().unwrap() {
        assert!(executor["cheap_p99_ms"]["median"].as_f64().unwrap() > 0.0, "{executor}");
        assert!(executor["throughput_per_s"]["median"].as_f64().unwrap() > 0.0, "{executor}");
        // Every round says how long the machine itself froze (0: not at all).
        assert!(executor["freeze_max_ms"]["median"].as_f64().unwrap() >= 0.0, "{executor}");
    }
    assert!(["realtime", "normal"].contains(&report["freeze_watch"].as_str().unwrap()));
    let bad = tokengate(&["bench", "service", "--loads", "7"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--loads"), "{}", stderr(&bad));
}

/// From a directory with no `models/`, the binary routes by the model built into it,
/// and `tokengate trainer` runs the trainer's commands (as after `cargo install`).
#[test]
fn the_shipped_model_and_the_trainer_travel_with_the_binary() {
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["run", "leibniz", "--terms", "1000", "--json"])
        .current_dir(&empty)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let router = report["router"].as_str().unwrap();
    assert!(router.starts_with("model "), "routed by the built-in model: {router}");
    assert!(stderr(&run).contains("built in"), "{}", stderr(&run));

    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default.bin");
    let inspect = tokengate(&["trainer", "inspect", "--model", model.to_str().unwrap()]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let out = String::from_utf8_lossy(&inspect.stdout);
    assert!(out.contains("tokengate cost model") && out.contains("pi_term"), "{out}");
}

/// Bad input to a command is one line naming the problem and a failure exit, never a
/// panic, and a stream stopped from the control port ends the run early (exit 130).
#[test]
fn bad_input_fails_in_one_line_and_a_stopped_stream_ends_early() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-bad-input.bin");
    let out = out.to_str().unwrap();
    for (args, says) in [
        (
            vec!["trainer", "fit", "--data", data, "--out", out, "--min-leaf-rows", "0"],
            "at least 1",
        ),
        (vec!["run", "mixed", "--load", "5"], "--load must be in (0, 1]"),
        (vec!["run", "text", "--load", "-0.5"], "--load must be in (0, 1]"),
    ] {
        let output = tokengate(&args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{args:?}: {err}");
    }

    // A stream of 200,000 calls (25 s) stopped from the control port after a second.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-stopped-stream");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    let _ = std::fs::remove_file(&token);
    let port = "127.0.0.1:7459";
    let token = token.to_str().unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["-q", "run", "mixed", "--tokens", "200000", "--control", port])
        .args(["--control-token-file", token])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let stopped = loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let ctl = tokengate(&["ctl", "--connect", port, "--token-file", token, "shutdown"]);
        if ctl.status.success() || started.elapsed().as_secs() > 20 {
            break ctl;
        }
    };
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let asked = std::time::Instant::now();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(130), "the run ends early, as stopped");
    // The stream had over 20 s of submitting left when the port first answered.
    let after = asked.elapsed().as_secs_f64();
    assert!(after < 10.0, "the run ended {after:.1} s after the shutdown, not at once");
}
