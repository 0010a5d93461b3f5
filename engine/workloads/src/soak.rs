//! `soak`: a mixed stream submitted faster than it can run, with injected faults —
//! panics (retried once), calls that hang past their deadline (timed out; their lanes
//! replaced), and callers that cancel — ending with an account of every token.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::mixed::iterate_hash;
use tokengate::{Context, Engine, RegisterError, RetryPolicy, Token, TokenError, Weight};

/// Fault rates and shape of a soak run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoakConfig {
    /// How long to keep submitting.
    pub duration: Duration,
    /// Share of calls that panic on their first attempt (and are retried).
    pub panic_rate: f64,
    /// Share of calls that hang (sleep `hang`) past their deadline.
    pub hang_rate: f64,
    /// Share of calls the caller cancels right after submitting.
    pub cancel_rate: f64,
    /// Share of calls that repeat the key of a recent call (deduplicated while in flight).
    pub dup_rate: f64,
    /// Each call's deadline (its normal cost is at most ~60 µs).
    pub timeout: Duration,
    /// How long a hanging call sleeps.
    pub hang: Duration,
    /// Seed of the fault draws.
    pub seed: u64,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(60),
            panic_rate: 0.01,
            hang_rate: 0.001,
            cancel_rate: 0.01,
            dup_rate: 0.05,
            timeout: Duration::from_millis(10),
            hang: Duration::from_millis(100),
            seed: 1,
        }
    }
}

/// The account of a soak run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SoakReport {
    /// Calls made (admitted or rejected).
    pub submitted: u64,
    /// Resolved with a value.
    pub completed: u64,
    /// Resolved as panicked or failed.
    pub failed: u64,
    /// Resolved as cancelled.
    pub cancelled: u64,
    /// Resolved as timed out.
    pub timed_out: u64,
    /// Refused at admission (`try_submit` while full).
    pub rejected: u64,
    /// Tokens that never resolved (waited for up to 30 s after the end).
    pub lost: u64,
    /// Resolutions the engine counted beyond one per token.
    pub double_resolved: u64,
    /// Lanes replaced because a call hung past its deadline.
    pub stuck_workers: u64,
    /// Attempts retried.
    pub retried: u64,
    /// Peak resident memory (MiB).
    pub peak_rss_mib: f64,
    /// Highest resident memory sampled in the first and in the second half (MiB).
    pub rss_halves_mib: (f64, f64),
    /// Tokens resolved per second over the run.
    pub tokens_per_s: f64,
    /// Wall time, including the final drain.
    pub wall: Duration,
}

impl SoakReport {
    /// Every call is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.lost == 0
            && self.double_resolved == 0
            && self.submitted
                == self.completed + self.failed + self.cancelled + self.timed_out + self.rejected
    }
}

#[derive(Clone, Copy)]
struct Call {
    key: u64,
    size: u64,
    fault: Fault,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Panic,
    Hang,
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Waits for one token (at most `wait`) and counts its outcome.
fn settle(token: Token<u64>, report: &mut SoakReport, wait: Duration) {
    match token.wait_timeout(wait) {
        Ok(Ok(_)) => report.completed += 1,
        Ok(Err(TokenError::Cancelled { .. })) => report.cancelled += 1,
        Ok(Err(TokenError::TimedOut)) => report.timed_out += 1,
        Ok(Err(TokenError::Rejected { .. })) => report.rejected += 1,
        Ok(Err(_)) => report.failed += 1,
        Err(_) => report.lost += 1,
    }
}

/// Runs the soak on `engine` and accounts for every call; `progress(elapsed)` about
/// once a second.
pub fn run(
    engine: &Engine,
    config: &SoakConfig,
    mut progress: impl FnMut(Duration),
) -> Result<SoakReport, RegisterError> {
    let hang = config.hang;
    let work = engine
        .operation("soak_work", Weight::Light)
        .size_hint(|call: &Call| call.size)
        .timeout(config.timeout)
        .retry(RetryPolicy::new(2).on(true, false, false))
        .dedupe(|call: &Call| call.key)
        .register_with_context(move |call: Call, cx: &Context<'_>| {
            match call.fault {
                Fault::Panic if cx.attempt() == 1 => panic!("injected panic"),
                Fault::Hang => std::thread::sleep(hang),
                _ => {}
            }
            iterate_hash(call.size)
        })?;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut next_key = 1_000u64;
    let mut report = SoakReport::default();
    let mut outstanding: VecDeque<Token<u64>> = VecDeque::new();
    let started = Instant::now();
    let mut rss = (0.0f64, 0.0f64);
    let mut next_sample = Duration::ZERO;
    let half = config.duration / 2;
    while started.elapsed() < config.duration && !engine.stats().shutting_down {
        let calls: Vec<Call> = (0..256)
            .map(|_| {
                let roll: f64 = rng.random();
                let fault = if roll < config.panic_rate {
                    Fault::Panic
                } else if roll < config.panic_rate + config.hang_rate {
                    Fault::Hang
                } else {
                    Fault::None
                };
                next_key += 1;
                // A duplicate repeats one of the last 64 keys (with its size and fault).
                let key = if rng.random::<f64>() < config.dup_rate {
                    next_key - rng.random_range(1..64)
                } else {
                    next_key
                };
                let mut draw = SmallRng::seed_from_u64(key);
                Call { key, size: draw.random_range(16..20_000), fault }
            })
            .collect();
        report.submitted += calls.len() as u64;
        let (bulk, single) = calls.split_at(192);
        // Three quarters wait for room (backpressure), a quarter are refused when full.
        let mut tokens = work.submit_many(bulk.iter().copied());
        for call in single {
            match work.try_submit(*call) {
                Ok(token) => tokens.push(token),
                Err(_) => report.rejected += 1,
            }
        }
        for token in tokens {
            if rng.random::<f64>() < config.cancel_rate {
                token.cancel();
            }
            outstanding.push_back(token);
        }
        while outstanding.len() > 16_384 {
            let token = outstanding.pop_front().expect("non-empty");
            settle(token, &mut report, Duration::from_secs(30));
        }
        let elapsed = started.elapsed();
        if elapsed >= next_sample {
            let now = rss_mib().unwrap_or(0.0);
            let slot = if elapsed < half { &mut rss.0 } else { &mut rss.1 };
            *slot = slot.max(now);
            next_sample = elapsed + Duration::from_millis(250);
            progress(elapsed);
        }
    }
    for token in outstanding {
        settle(token, &mut report, Duration::from_secs(30));
    }
    report.wall = started.elapsed();
    let stats = work.stats();
    let engine_resolved = stats.completed + stats.failed + stats.cancelled + stats.timed_out;
    let caller_resolved = report.completed + report.failed + report.cancelled + report.timed_out;
    report.double_resolved = engine_resolved.saturating_sub(caller_resolved);
    report.stuck_workers = engine.stats().stuck_lanes;
    report.retried = stats.retried;
    report.peak_rss_mib = crate::sys::peak_rss_bytes().map_or(0.0, |b| b as f64 / (1 << 20) as f64);
    report.rss_halves_mib = rss;
    report.tokens_per_s = caller_resolved as f64 / report.wall.as_secs_f64();
    Ok(report)
}

/// What a `try_submit` flood did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FloodReport {
    /// Calls made.
    pub submitted: u64,
    /// Calls admitted (the rest were rejected as overloaded).
    pub admitted: u64,
    /// Peak resident memory over the process's life (MiB).
    pub peak_rss_mib: f64,
    /// Wall time.
    pub wall: Duration,
}

/// Calls `try_submit` `calls` times as fast as it can on an engine whose lanes cannot
/// keep up, dropping the tokens it gets (fire and forget): memory must stay bounded by
/// the admission capacity, not grow with the calls.
pub fn flood(engine: &Engine, calls: u64) -> Result<FloodReport, RegisterError> {
    let op = engine.register("flood", Weight::Light, |n: u64| iterate_hash(n % 512 + 256))?;
    let started = Instant::now();
    let mut admitted = 0;
    for n in 0..calls {
        if op.try_submit(n).is_ok() {
            admitted += 1;
        }
    }
    Ok(FloodReport {
        submitted: calls,
        admitted,
        peak_rss_mib: crate::sys::peak_rss_bytes().map_or(0.0, |b| b as f64 / (1 << 20) as f64),
        wall: started.elapsed(),
    })
}
