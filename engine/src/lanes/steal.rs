//! When a light lane may take heavy work: the cost-aware rule (the default), or the
//! explicit overrides `steal_backlog(n)` and `isolate_heavy`.
//!
//! Heavy lanes always help with light work when idle: a short call on a heavy lane costs
//! nobody latency. The other direction is what ruins light latency (a light token that
//! arrives while its lane runs a 2 ms call waits 2 ms), so a light lane takes a heavy
//! batch only when the prediction says it is cheap to:
//!
//! * its predicted duration fits the light-latency budget (default 100 µs), or
//! * light work is unlikely to arrive meanwhile: the expected number of light arrivals
//!   during the batch, `duration / gap`, is at most 0.1, where `gap` is the recent mean
//!   gap between light arrivals, or the time since the last one if that is longer (light
//!   traffic that has stopped counts as sparse).
//!
//! So a light lane may sit idle while heavy work waits. That is deliberate (size-based
//! assignment with the short jobs' side kept below its share, as in SITA-V): the heavy
//! lanes' own backlog is what a light lane would save, and light p99 is what it would
//! spend. The batch duration used is the heavy queue's mean predicted batch cost (the
//! queue cannot be peeked): every queued batch carries its prediction (the model's class
//! runtime, the running average, or the tag's nominal cost).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How light lanes treat queued heavy work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StealPolicy {
    /// The cost-aware rule above, with this light-latency budget.
    CostAware { budget_ns: u64 },
    /// Take heavy batches once at least this many wait (1: whenever idle).
    Backlog(usize),
    /// Never.
    Isolate,
}

/// The default light-latency budget.
pub(crate) const LIGHT_BUDGET: Duration = Duration::from_micros(100);

/// Arrivals of light work, for the rule's rate estimate.
pub(super) struct LightArrivals {
    epoch: Instant,
    /// When the last light batch was queued (ns since `epoch`; 0: never).
    last_ns: AtomicU64,
    /// Running mean gap between light batches (ns; 0: unknown).
    gap_ns: AtomicU64,
}

impl Default for LightArrivals {
    fn default() -> Self {
        LightArrivals {
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            gap_ns: AtomicU64::new(0),
        }
    }
}

impl LightArrivals {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// A light batch was queued. Racy on purpose: an estimate, two relaxed stores.
    pub(super) fn arrived(&self) {
        let now = self.now_ns();
        let last = self.last_ns.swap(now, Relaxed);
        if last != 0 {
            let gap = now.saturating_sub(last);
            let old = self.gap_ns.load(Relaxed);
            let new = if old == 0 { gap } else { (old * 7 + gap) / 8 };
            self.gap_ns.store(new.max(1), Relaxed);
        }
    }

    /// The gap to expect before the next light arrival (ns; `u64::MAX`: none seen).
    fn expected_gap_ns(&self) -> u64 {
        let last = self.last_ns.load(Relaxed);
        if last == 0 {
            return u64::MAX;
        }
        let since = self.now_ns().saturating_sub(last);
        self.gap_ns.load(Relaxed).max(since)
    }
}

impl StealPolicy {
    /// Whether a light lane may take a heavy batch now. `batches` and `queued_ns`
    /// describe the heavy queue.
    pub(super) fn light_may_take_heavy(
        self,
        batches: usize,
        queued_ns: u64,
        arrivals: &LightArrivals,
    ) -> bool {
        match self {
            StealPolicy::Isolate => false,
            StealPolicy::Backlog(n) => batches >= n.max(1),
            StealPolicy::CostAware { budget_ns } => {
                if batches == 0 {
                    return false;
                }
                let duration = queued_ns / batches as u64;
                duration <= budget_ns || duration.saturating_mul(10) <= arrivals.expected_gap_ns()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: StealPolicy = StealPolicy::CostAware { budget_ns: 100_000 };

    #[test]
    fn short_heavy_batches_fit_the_budget() {
        let arrivals = LightArrivals::default();
        arrivals.arrived();
        arrivals.arrived(); // busy light traffic: a gap of about nothing
        assert!(POLICY.light_may_take_heavy(2, 2 * 80_000, &arrivals));
        assert!(!POLICY.light_may_take_heavy(2, 2 * 2_000_000, &arrivals));
        assert!(!POLICY.light_may_take_heavy(0, 0, &arrivals), "nothing to take");
    }

    #[test]
    fn long_batches_wait_while_light_work_keeps_arriving() {
        let arrivals = LightArrivals::default();
        assert!(POLICY.light_may_take_heavy(1, 2_000_000, &arrivals), "no light work seen yet");
        arrivals.arrived();
        arrivals.arrived();
        assert!(!POLICY.light_may_take_heavy(1, 2_000_000, &arrivals));
        // Light traffic stops: after ten batch durations without an arrival, take it.
        std::thread::sleep(Duration::from_millis(25));
        assert!(POLICY.light_may_take_heavy(1, 2_000_000, &arrivals));
    }

    #[test]
    fn explicit_overrides_keep_their_meaning() {
        let arrivals = LightArrivals::default();
        assert!(!StealPolicy::Isolate.light_may_take_heavy(9, 0, &arrivals));
        assert!(StealPolicy::Backlog(1).light_may_take_heavy(1, u64::MAX, &arrivals));
        assert!(!StealPolicy::Backlog(4).light_may_take_heavy(3, 0, &arrivals));
        assert!(StealPolicy::Backlog(4).light_may_take_heavy(4, 0, &arrivals));
    }
}
