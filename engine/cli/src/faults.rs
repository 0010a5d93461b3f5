//! `soak` and `flood`: fault injection and overload, with every token accounted for.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::{builder, group, progress_bar, stop_on_ctrl_c, EngineArgs};

#[derive(Args)]
pub(crate) struct FloodArgs {
    /// Calls to make.
    #[arg(long, default_value_t = 10_000_000)]
    tokens: u64,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct SoakArgs {
    /// How long to keep submitting (e.g. 60s, 500ms, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Share of calls that panic on their first attempt (retried once).
    #[arg(long, default_value_t = 0.01)]
    panic_rate: f64,
    /// Share of calls that hang (100 ms) past their 10 ms deadline.
    #[arg(long, default_value_t = 0.001)]
    hang_rate: f64,
    /// Share of calls cancelled by the caller right after submitting.
    #[arg(long, default_value_t = 0.01)]
    cancel_rate: f64,
    /// Share of calls repeating a recent call's key (they share its run if in flight).
    #[arg(long, default_value_t = 0.05)]
    dup_rate: f64,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Admission capacity (small, so the stream outruns the lanes).
    #[arg(long, default_value_t = 4_096)]
    capacity: usize,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// "60s", "500ms", "2m" or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!("duration {text:?} must be between 0 and a day"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

pub(crate) fn flood(args: FloodArgs) -> Result<()> {
    let engine = builder(&args.engine).build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    let report = tokengate_workloads::soak::flood(&engine, args.tokens)?;
    engine.shutdown();
    let json = json!({
        "submitted": report.submitted,
        "admitted": report.admitted,
        "rejected": report.submitted - report.admitted,
        "capacity": engine.stats().capacity,
        "peak_rss_mib": report.peak_rss_mib,
        "wall_s": report.wall.as_secs_f64(),
    });
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{} try_submit calls: {} admitted, {} rejected as overloaded (capacity {}); peak RSS {:.0} MiB; {:.2} s",
            group(report.submitted),
            group(report.admitted),
            group(report.submitted - report.admitted),
            group(engine.stats().capacity as u64),
            report.peak_rss_mib,
            report.wall.as_secs_f64()
        );
    }
    Ok(())
}

pub(crate) fn soak(args: SoakArgs) -> Result<()> {
    for (name, rate) in [
        ("--panic-rate", args.panic_rate),
        ("--hang-rate", args.hang_rate),
        ("--cancel-rate", args.cancel_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{name} must be between 0 and 1, got {rate}");
        }
    }
    if args.panic_rate + args.hang_rate > 1.0 {
        bail!("--panic-rate plus --hang-rate must not exceed 1");
    }
    let engine =
        builder(&args.engine).capacity(args.capacity).build().context("starting the engine")?;
    stop_on_ctrl_c(&engine);
    // Injected panics are expected: keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|info| {
        let injected = info.payload().downcast_ref::<&str>() == Some(&"injected panic");
        if !injected {
            tracing::warn!("{info}");
        }
    }));
    let config = tokengate_workloads::soak::SoakConfig {
        duration: args.duration,
        panic_rate: args.panic_rate,
        hang_rate: args.hang_rate,
        cancel_rate: args.cancel_rate,
        dup_rate: args.dup_rate,
        seed: args.seed,
        ..Default::default()
    };
    let bar = progress_bar(args.duration.as_secs(), args.json, "s");
    let report = tokengate_workloads::soak::run(&engine, &config, |elapsed| {
        bar.set_position(elapsed.as_secs())
    })?;
    bar.finish_and_clear();
    engine.shutdown();
    let json = json!({
        "submitted": report.submitted,
        "completed": report.completed,
        "failed": report.failed,
        "cancelled": report.cancelled,
        "timed_out": report.timed_out,
        "rejected": report.rejected,
        "lost": report.lost,
        "double_resolved": report.double_resolved,
        "stuck_workers": report.stuck_workers,
        "retried": report.retried,
        "peak_rss_mib": report.peak_rss_mib,
        "rss_first_half_mib": report.rss_halves_mib.0,
        "rss_second_half_mib": report.rss_halves_mib.1,
        "tokens_per_s": report.tokens_per_s,
        "wall_s": report.wall.as_secs_f64(),
        "balanced": report.balanced(),
    });
    if args.json {
        println!("{json}");
    } else {
        let accounted = report.completed
            + report.failed
            + report.cancelled
            + report.timed_out
            + report.rejected;
        println!(
            "submitted {} = completed {} + failed {} + cancelled {} + timed out {} + rejected {}{}",
            report.submitted,
            report.completed,
            report.failed,
            report.cancelled,
            report.timed_out,
            report.rejected,
            if accounted == report.submitted { "" } else { "  (MISMATCH)" },
        );
        println!("lost {}, resolved twice {}", report.lost, report.double_resolved);
        println!("retried {}, stuck lanes replaced {}", report.retried, report.stuck_workers);
        println!(
            "peak RSS {:.0} MiB (max {:.0} MiB in the first half, {:.0} MiB in the second)",
            report.peak_rss_mib, report.rss_halves_mib.0, report.rss_halves_mib.1
        );
        println!(
            "{} tokens/s over {:.1} s",
            group(report.tokens_per_s as u64),
            report.wall.as_secs_f64()
        );
    }
    if !report.balanced() {
        bail!("some tokens are unaccounted for");
    }
    Ok(())
}
