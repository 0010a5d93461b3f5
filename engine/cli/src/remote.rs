//! `--nats` for `run`, and `tokengate worker`: the remote lanes from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tokengate::remote::RemotePlacement;
use tokengate::remote::{RemoteConfig, Worker, WorkerConfig};
use tokengate::EngineBuilder;
use tokengate_workloads::leibniz::Pyramid;
use tokengate_workloads::mixed::MixedOps;

use crate::{builder, EngineArgs};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlacementArg {
    /// Remote only when a worker is connected and the local lanes are backlogged.
    Auto,
    /// Never remote.
    Local,
    /// Every token of a remote-capable operation.
    Remote,
}

/// How `run` reaches remote workers.
#[derive(Args)]
pub(crate) struct NatsArgs {
    /// NATS server (nats://host:port): tokens of remote-capable operations may run on
    /// `tokengate worker`s connected to it.
    #[arg(long)]
    nats: Option<String>,
    /// File holding the NATS server's secret token (kept off the command line).
    #[arg(long, requires = "nats")]
    nats_token_file: Option<PathBuf>,
    /// Where remote-capable tokens run (default auto).
    #[arg(long, value_enum, requires = "nats")]
    placement: Option<PlacementArg>,
    /// Seconds without a remote result before a token runs here instead (at most 75: a
    /// run counts a token lost once the engine has finished no token for 90 s).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=75))]
    result_timeout_s: u64,
}

impl NatsArgs {
    pub(crate) fn enabled(&self) -> bool {
        self.nats.is_some()
    }
}

fn remote_config(url: &str, token_file: Option<&PathBuf>) -> Result<RemoteConfig> {
    let config = RemoteConfig::new(url);
    match token_file {
        Some(path) => Ok(config.token_file(path)?),
        None => Ok(config),
    }
}

/// Adds the NATS link to `builder` when `--nats` is given.
pub(crate) fn with_nats(builder: EngineBuilder, args: &NatsArgs) -> Result<EngineBuilder> {
    let Some(url) = &args.nats else { return Ok(builder) };
    let placement = match args.placement.unwrap_or(PlacementArg::Auto) {
        PlacementArg::Auto => RemotePlacement::Auto,
        PlacementArg::Local => RemotePlacement::Local,
        PlacementArg::Remote => RemotePlacement::Remote,
    };
    let config = remote_config(url, args.nats_token_file.as_ref())?
        .placement(placement)
        .result_timeout(Duration::from_secs(args.result_timeout_s));
    Ok(builder.nats(config))
}

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// NATS server (nats://host:port) whose calls this worker serves.
    #[arg(long)]
    nats: String,
    /// File holding the NATS server's secret token (kept off the command line).
    #[arg(long)]
    nats_token_file: Option<PathBuf>,
    /// Seconds a call may go unacknowledged before the server redelivers it to another
    /// worker: how long a dead or hung worker holds its calls (the worker reports
    /// progress on each call it holds every third of it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    ack_wait_s: u64,
    /// Calls held at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    for_s: Option<u64>,
    /// Write this worker's telemetry (its own runs of the remote tokens) here.
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `tokengate worker`: serves the built-in workloads' remote-capable operations
/// (`pi_term`, `primes`, `sort`, `hash`, `text`) until stopped, then prints what it did
/// (JSON) on stdout.
pub(crate) fn worker(args: WorkerArgs) -> Result<()> {
    let mut builder = builder(&args.engine);
    if args.engine.split.is_none() {
        // A worker serves other machines' calls, often beside other processes: its heavy
        // calls must not wait on every normal thread of the machine, as idle-priority
        // heavy lanes would (docs/lanes.md, "What SCHED_IDLE costs").
        builder = builder.split(tokengate::lanes::LaneSplit::Pinned);
    }
    if let Some(dir) = &args.log {
        builder = builder.log_dir(dir);
    }
    let engine = builder.build().context("starting the worker's engine")?;
    let _pyramid = Pyramid::register(&engine)?;
    let _mixed = MixedOps::register(&engine)?;
    let remote = remote_config(&args.nats, args.nats_token_file.as_ref())?
        .ack_wait(Duration::from_secs(args.ack_wait_s));
    let config = WorkerConfig::new(remote).concurrency(args.concurrency as usize);
    let worker = match Worker::start(&engine, config) {
        Ok(worker) => worker,
        Err(e) => bail!("starting the worker: {e}"),
    };
    tracing::info!(worker = worker.id(), nats = %args.nats, "serving (Ctrl-C or SIGTERM to stop)");
    let for_s = args.for_s;
    engine.block_on(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let deadline = async {
            match for_s {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
            _ = deadline => {}
        }
    });
    let id = worker.id().to_string();
    let stats = worker.stop();
    engine.shutdown();
    println!("{}", json!({ "worker": id, "stats": stats }));
    Ok(())
}
