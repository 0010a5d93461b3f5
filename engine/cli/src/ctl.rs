//! `tokengate ctl`: one command to a running engine's control port, or a live view of
//! its stats. Speaks the engine's own typed protocol (`tokengate::control::protocol`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokengate::control::protocol::{
    Command, Event, OpSnapshot, Request, ServerMessage, ShutdownMode,
};
use tokengate::{EngineBuilder, LaneSet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args)]
pub(crate) struct ControlArgs {
    /// Serve the control port here (loopback unless --control-public).
    #[arg(long)]
    control: Option<std::net::SocketAddr>,
    /// File holding the control secret; created (mode 0600) with a fresh secret if
    /// missing. Default: ./tokengate-control.token.
    #[arg(long)]
    control_token_file: Option<PathBuf>,
    /// Allow a control address beyond loopback.
    #[arg(long)]
    control_public: bool,
}

/// Reads the control secret from `path`, or creates it there (mode 0600) and says so.
fn control_secret(path: &Path) -> Result<String> {
    if path.exists() {
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("reading the control secret {}", path.display()))?;
        return Ok(secret.trim().to_string());
    }
    let secret = tokengate::control::generate_secret().context("generating a control secret")?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}")?;
    tracing::info!("control secret written to {} (readable only by you)", path.display());
    Ok(secret)
}

pub(crate) fn with_control(builder: EngineBuilder, args: &ControlArgs) -> Result<EngineBuilder> {
    let Some(addr) = args.control else { return Ok(builder) };
    let path = args.control_token_file.clone().unwrap_or_else(|| "tokengate-control.token".into());
    let secret = control_secret(&path)?;
    Ok(builder.control(addr, secret, args.control_public))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CtlCommand {
    /// Pause an operation (--op) or all.
    Pause,
    /// Resume an operation (--op) or all.
    Resume,
    /// Cancel an operation's waiting tokens (--op) or one waiting token (--token).
    Cancel,
    /// Let at most --max tokens of --op run at once (omit --max to lift the limit).
    Throttle,
    /// Send new tokens of --op to --lanes light|heavy|remote (omit --lanes to unpin).
    Pin,
    /// Batch new tokens of --op --size at a time (omit --size to drop the override).
    Batch,
    /// Drop every override of --op (or of all).
    Clear,
    /// Print one stats snapshot (JSON).
    Stats,
    /// The model routing now and what online adaptation has done.
    Model,
    /// Turn online re-fitting on or off (--state on|off).
    Adapt,
    /// Start a shutdown (--mode drain|abort).
    Shutdown,
    /// Print the live stats stream as a refreshing table.
    Watch,
}

#[derive(Args)]
pub(crate) struct CtlArgs {
    /// The engine's control address.
    #[arg(long, default_value = "127.0.0.1:7411")]
    connect: std::net::SocketAddr,
    /// File holding the control secret.
    #[arg(long, default_value = "tokengate-control.token")]
    token_file: PathBuf,
    /// The command.
    command: CtlCommand,
    /// The operation (pause/resume/clear: omit for all).
    #[arg(long)]
    op: Option<String>,
    /// For cancel: one token id (instead of --op).
    #[arg(long)]
    token: Option<u64>,
    /// For throttle: most tokens running at once (omit to lift the limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max: Option<u32>,
    /// For pin: light, heavy or remote (omit to unpin).
    #[arg(long)]
    lanes: Option<LaneSet>,
    /// For batch: tokens per batch (omit to drop the override).
    #[arg(long)]
    size: Option<u32>,
    /// For shutdown: drain or abort.
    #[arg(long, value_enum, default_value_t = Mode::Drain)]
    mode: Mode,
    /// For adapt: on or off.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    state: Switch,
    /// For watch: milliseconds between stats events.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Drain,
    Abort,
}

impl CtlArgs {
    /// The protocol command this invocation asks for.
    fn command(&self) -> Result<Command> {
        let op = self.op.clone();
        let need_op = |what: &str| op.clone().with_context(|| format!("{what} needs --op"));
        Ok(match self.command {
            CtlCommand::Pause => Command::Pause { op },
            CtlCommand::Resume => Command::Resume { op },
            CtlCommand::Clear => Command::Clear { op },
            CtlCommand::Stats => Command::Stats,
            CtlCommand::Model => Command::Model,
            CtlCommand::Adapt => Command::Adapt { on: self.state == Switch::On },
            CtlCommand::Cancel => match (&op, self.token) {
                (Some(_), None) | (None, Some(_)) => Command::Cancel { op, token: self.token },
                _ => bail!("cancel needs either --op or --token"),
            },
            CtlCommand::Throttle => Command::Throttle { op: need_op("throttle")?, max: self.max },
            CtlCommand::Pin => Command::Pin { op: need_op("pin")?, lanes: self.lanes },
            CtlCommand::Batch => Command::Batch { op: need_op("batch")?, size: self.size },
            CtlCommand::Shutdown => Command::Shutdown {
                mode: Some(match self.mode {
                    Mode::Drain => ShutdownMode::Drain,
                    Mode::Abort => ShutdownMode::Abort,
                }),
            },
            CtlCommand::Watch => {
                Command::Subscribe { interval_ms: Some(self.interval_ms), engine: false }
            }
        })
    }
}

pub(crate) fn ctl(args: CtlArgs) -> Result<()> {
    let command = args.command()?;
    let secret = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the control secret {}", args.token_file.display()))?;
    let mut request = format!("ws://{}/", args.connect).into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", secret.trim()).parse()?);
    let message = serde_json::to_string(&Request::new(1, command))?;
    let watch = args.command == CtlCommand::Watch;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to the control port {}", args.connect))?;
        socket.send(Message::text(message)).await?;
        while let Some(frame) = socket.next().await {
            let frame = match frame {
                Ok(frame) => frame,
                // The engine stopped (its run ended) while a watch was open: that ends
                // the watch, it is not an error.
                Err(e) if watch && is_closed(&e) => {
                    eprintln!("the engine closed the connection (it stopped)");
                    return Ok(());
                }
                Err(e) => return Err(e).with_context(|| format!("reading from {}", args.connect)),
            };
            let Ok(text) = frame.to_text() else { continue };
            let message: ServerMessage = serde_json::from_str(text)
                .with_context(|| format!("the engine sent an unreadable frame: {text}"))?;
            match message {
                ServerMessage::Reply(reply) if !watch || !reply.ok => {
                    println!("{}", serde_json::to_string_pretty(&reply)?);
                    if !reply.ok {
                        bail!("the engine refused the command");
                    }
                    return Ok(());
                }
                ServerMessage::Reply(_) => {}
                // A watch prints each stats event; stdout closed (piped into `head`) ends it.
                ServerMessage::Event(Event::Stats { ops, dropped_events, .. })
                    if watch && print_watch(&ops, dropped_events).is_err() =>
                {
                    return Ok(());
                }
                ServerMessage::Event(Event::ModelSwapped { version }) if watch => {
                    eprintln!("model {version:08x} swapped in by online adaptation");
                }
                ServerMessage::Event(Event::Override { by, cmd, op, change }) if watch => {
                    let op = op.as_deref().unwrap_or("all");
                    eprintln!("override by connection {by}: {cmd} {op}: {change:?}");
                }
                ServerMessage::Event(_) => {}
                // Messages a newer engine may send that this build does not know.
                _ => {}
            }
        }
        Ok(())
    })
}

/// Whether a read failed because the other side went away.
fn is_closed(error: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    matches!(
        error,
        Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Io(_)
            | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    )
}

/// One screen of `ctl watch`: every stats field of every operation.
fn print_watch(ops: &[OpSnapshot], dropped_events: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        write!(out, "\x1b[2J\x1b[H")?;
    }
    writeln!(
        out,
        "{:<16} {:>10} {:>8} {:>7} {:>7} {:>10} {:>7} {:>9} {:>8} {:>8} {:>11} {:>9} {:>9}  overrides",
        "op",
        "submitted",
        "waiting",
        "held",
        "running",
        "completed",
        "failed",
        "cancelled",
        "timeout",
        "rejected",
        "tokens/s",
        "p50 ms",
        "p99 ms"
    )?;
    for op in ops {
        let o = &op.overrides;
        let mut marks = Vec::new();
        if o.paused {
            marks.push("paused".to_string());
        }
        if let Some(pin) = o.pin {
            match op.pin_unmet {
                0 => marks.push(format!("pin {pin}")),
                n => marks.push(format!("pin {pin} (not honoured: {n} ran here)")),
            }
        }
        if let Some(batch) = o.batch {
            marks.push(format!("batch {batch}"));
        }
        if let Some(throttle) = o.throttle {
            marks.push(format!("throttle {throttle}"));
        }
        writeln!(
            out,
            "{:<16} {:>10} {:>8} {:>7} {:>7} {:>10} {:>7} {:>9} {:>8} {:>8} {:>11} {:>9.3} {:>9.3}  {}",
            op.op,
            op.submitted,
            op.waiting,
            op.held,
            op.running,
            op.completed,
            op.failed,
            op.cancelled,
            op.timed_out,
            op.rejected,
            // A one-shot `stats` has no window to measure a rate over.
            op.throughput.map_or("-".to_string(), |t| format!("{t:.0}")),
            op.p50_ms,
            op.p99_ms,
            marks.join(", ")
        )?;
    }
    if dropped_events > 0 {
        writeln!(
            out,
            "({dropped_events} events dropped: this terminal is slower than the engine)"
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CtlArgs,
    }

    fn command(line: &[&str]) -> Result<Command> {
        let mut argv = vec!["ctl"];
        argv.extend_from_slice(line);
        Wrapper::try_parse_from(argv)?.args.command()
    }

    #[test]
    fn every_protocol_command_can_be_sent() {
        assert_eq!(
            command(&["cancel", "--op", "sort"]).unwrap(),
            Command::Cancel { op: Some("sort".into()), token: None }
        );
        assert_eq!(
            command(&["cancel", "--token", "42"]).unwrap(),
            Command::Cancel { op: None, token: Some(42) }
        );
        assert_eq!(
            command(&["throttle", "--op", "sort", "--max", "2"]).unwrap(),
            Command::Throttle { op: "sort".into(), max: Some(2) }
        );
        assert_eq!(
            command(&["throttle", "--op", "sort"]).unwrap(),
            Command::Throttle { op: "sort".into(), max: None }
        );
        assert_eq!(
            command(&["pin", "--op", "sort", "--lanes", "heavy"]).unwrap(),
            Command::Pin { op: "sort".into(), lanes: Some(LaneSet::Heavy) }
        );
        assert_eq!(
            command(&["shutdown", "--mode", "abort"]).unwrap(),
            Command::Shutdown { mode: Some(ShutdownMode::Abort) }
        );
        assert_eq!(
            command(&["watch", "--interval-ms", "100"]).unwrap(),
            Command::Subscribe { interval_ms: Some(100), engine: false }
        );
        assert_eq!(command(&["adapt", "--state", "off"]).unwrap(), Command::Adapt { on: false });
        for name in ["pause", "resume", "clear", "stats", "model"] {
            assert_eq!(command(&[name]).unwrap().name(), name);
        }
    }

    #[test]
    fn incomplete_commands_are_refused_before_connecting() {
        assert!(command(&["cancel"]).unwrap_err().to_string().contains("--op or --token"));
        assert!(command(&["cancel", "--op", "a", "--token", "1"]).is_err());
        assert!(command(&["throttle", "--max", "2"]).unwrap_err().to_string().contains("--op"));
        assert!(command(&["throttle", "--op", "a", "--max", "0"]).is_err());
        assert!(command(&["pin", "--op", "a", "--lanes", "sideways"]).is_err());
    }
}
