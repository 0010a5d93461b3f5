//! Diagnostics on stderr through `tracing` (the reports stay on stdout).
//!
//! `RUST_LOG`, when set, decides what is shown (`RUST_LOG=tokengate=debug`);
//! otherwise `-q` shows errors only, the default shows the engine's and this
//! binary's warnings and lifecycle events (info), `-v` adds debug events (control
//! commands, each lane's pinning, telemetry segments) and `-vv` trace events.
//! Colours only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use tracing_subscriber::EnvFilter;

/// `-v`/`-q`, global to every subcommand.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct Verbosity {
    /// More diagnostics on stderr: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Errors only on stderr (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    quiet: bool,
}

impl Verbosity {
    /// The filter when `RUST_LOG` is not set: our crates at the chosen level,
    /// everything else one step quieter (and never below warnings).
    fn default_filter(self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn,tokengate=info,trainer=info,tokengate_workloads=info",
            (false, 1) => "info,tokengate=debug,trainer=debug,tokengate_workloads=debug",
            (false, _) => "debug,tokengate=trace,trainer=trace,tokengate_workloads=trace",
        }
    }
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// True after `-q`: progress bars stay hidden too.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Installs the subscriber: stderr, `RUST_LOG` or the `-v`/`-q` filter, ANSI colours
/// only on a terminal; timestamps and targets with `-v`.
pub(crate) fn init(verbosity: Verbosity) {
    QUIET.store(verbosity.quiet, Ordering::Relaxed);
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(verbosity.default_filter()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if verbosity.verbose > 0 {
        builder.init();
    } else {
        builder.without_time().with_target(false).init();
    }
}

/// The line a failed command ends with, on stderr whatever the filter (it is the
/// command's result, not a diagnostic): `error: ` and the error's chain, each cause
/// said once (a cause that repeats the one before it, as an OS error under a message
/// that quotes it, or a path both name, is merged).
pub(crate) fn report(error: &anyhow::Error) {
    eprintln!("error: {}", chain(error.chain().map(|cause| cause.to_string())));
}

fn chain(causes: impl Iterator<Item = String>) -> String {
    let mut line = String::new();
    for text in causes {
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            // "… the model /m.bin" + "/m.bin: not found" → "… the model /m.bin: not found"
            let overlap = (1..=text.len().min(line.len()))
                .rev()
                .filter(|&n| text.is_char_boundary(n))
                .find(|&n| text[n..].starts_with(':') && line.ends_with(&text[..n]));
            match overlap {
                Some(n) => line.push_str(&text[n..]),
                None => {
                    line.push_str(": ");
                    line.push_str(&text);
                }
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    fn joined(causes: &[&str]) -> String {
        chain(causes.iter().map(|c| c.to_string()))
    }

    #[test]
    fn each_cause_is_said_once() {
        let os = "No such file or directory (os error 2)";
        assert_eq!(
            joined(&["loading the model /m.bin", &format!("/m.bin: {os}"), os]),
            format!("loading the model /m.bin: {os}")
        );
        assert_eq!(
            joined(&["starting the engine", &format!("creating the log directory /x: {os}")]),
            format!("starting the engine: creating the log directory /x: {os}")
        );
        assert_eq!(joined(&["a", "b: c", "c"]), "a: b: c");
    }
}
