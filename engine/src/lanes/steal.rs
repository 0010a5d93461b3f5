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
//!   traffic that has stopped counts as sparse), or
//! * the heavy lanes are so far behind that the wait it saves outweighs the light
//!   latency it costs: the heavy backlog per heavy lane (the predicted work queued for
//!   each, short and long parts together) is at least [`LIGHT_WEIGHT`] times the light
//!   delay the batch causes,
//!   `duration × duration / gap` (the light arrivals expected during it, each held up
//!   by up to its duration). Light latency counts ten times as much as heavy waiting.
//!
//! So a light lane may sit idle while heavy work waits. That is deliberate (size-based
//! assignment with the short jobs' side kept below its share, as in SITA-V): the heavy
//! lanes' own backlog is what a light lane would save, and light p99 is what it would
//! spend. The last clause is what keeps that from turning into a core left idle beside
//! a heavy queue that grows without end: when heavy work arrives faster than the heavy
//! lanes run it (a cost shift, a flood), the backlog grows until the light lanes take
//! the excess, and stays near the point where the two costs balance. The heavy queue has
//! a short and a long part (`order.rs`), each weighed on its own: the batch duration used
//! is that part's mean predicted batch cost (a queue cannot be peeked). Every queued
//! batch carries its prediction (the model leaf's mean runtime, the running average, or
//! the tag's nominal cost).

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

/// How many times a nanosecond of light latency counts against a nanosecond of heavy
/// waiting, in the backlog clause.
pub(crate) const LIGHT_WEIGHT: u128 = 10;

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
    /// Whether a light lane may take a batch of one part of the heavy queue now.
    /// `part` and `all` are (batches, predicted ns) of that part and of the whole heavy
    /// queue, which `heavy_lanes` lanes serve first.
    pub(super) fn light_may_take_heavy(
        self,
        part: (usize, u64),
        all: (usize, u64),
        heavy_lanes: u32,
        arrivals: &LightArrivals,
    ) -> bool {
        let (batches, queued_ns) = part;
        if batches == 0 {
            return false;
        }
        match self {
            StealPolicy::Isolate => false,
            StealPolicy::Backlog(n) => all.0 >= n.max(1),
            StealPolicy::CostAware { budget_ns } => {
                let duration = queued_ns / batches as u64;
                if duration <= budget_ns {
                    return true;
                }
                let gap = arrivals.expected_gap_ns();
                if duration.saturating_mul(10) <= gap {
                    return true;
                }
                // Backlog per heavy lane ≥ LIGHT_WEIGHT × duration² / gap.
                let backlog = u128::from(all.1 / u64::from(heavy_lanes.max(1)));
                let duration = u128::from(duration);
                backlog * u128::from(gap) >= LIGHT_WEIGHT.saturating_mul(duration * duration)
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
        let take = |part: (usize, u64)| POLICY.light_may_take_heavy(part, part, 1, &arrivals);
        assert!(take((2, 2 * 80_000)));
        assert!(!take((2, 2 * 2_000_000)));
        assert!(!take((0, 0)), "nothing to take");
        assert!(
            POLICY.light_may_take_heavy((1, 80_000), (3, 4_080_000), 1, &arrivals),
            "the short part of a queue whose long part is not to be taken"
        );
    }

    #[test]
    fn long_batches_wait_while_light_work_keeps_arriving() {
        let arrivals = LightArrivals::default();
        let take = || POLICY.light_may_take_heavy((1, 2_000_000), (1, 2_000_000), 1, &arrivals);
        assert!(take(), "no light work seen yet");
        arrivals.arrived();
        arrivals.arrived();
        assert!(!take());
        // Light traffic stops: after ten batch durations without an arrival, take it.
        std::thread::sleep(Duration::from_millis(25));
        assert!(take());
    }

    #[test]
    fn a_heavy_backlog_that_outweighs_the_light_delay_is_shared() {
        // Light batches every 200 µs; heavy batches of 500 µs delay light work by
        // 500 × 500 / 200 = 1,250 µs each: the light lanes join in once the backlog per
        // heavy lane passes ten times that, 12.5 ms.
        let arrivals = LightArrivals { epoch: Instant::now(), ..LightArrivals::default() };
        arrivals.gap_ns.store(200_000, Relaxed);
        arrivals.last_ns.store(arrivals.now_ns(), Relaxed);
        let take = |batches: u64, lanes| {
            let part = (batches as usize, batches * 500_000);
            POLICY.light_may_take_heavy(part, part, lanes, &arrivals)
        };
        assert!(!take(4, 1), "2 ms behind: the heavy lane catches up");
        assert!(!take(24, 1), "12 ms");
        assert!(take(26, 1), "13 ms behind");
        assert!(!take(26, 2), "two heavy lanes: 6.5 ms each");
        assert!(take(52, 2));
        // Long calls behind them make the backlog, and the short ones are what to take.
        let short = (4, 4 * 500_000);
        assert!(POLICY.light_may_take_heavy(short, (12, 2_000_000 + 8 * 2_000_000), 1, &arrivals));
        assert!(!POLICY.light_may_take_heavy((8, 16_000_000), (12, 18_000_000), 1, &arrivals));
    }

    #[test]
    fn explicit_overrides_keep_their_meaning() {
        let arrivals = LightArrivals::default();
        let take =
            |policy: StealPolicy, part, all| policy.light_may_take_heavy(part, all, 1, &arrivals);
        assert!(!take(StealPolicy::Isolate, (9, u64::MAX), (9, u64::MAX)));
        assert!(take(StealPolicy::Backlog(1), (1, u64::MAX), (1, u64::MAX)));
        assert!(!take(StealPolicy::Backlog(4), (3, 0), (3, 0)));
        assert!(take(StealPolicy::Backlog(4), (1, 0), (4, 0)), "counted over the whole queue");
        assert!(!take(StealPolicy::Backlog(4), (0, 0), (4, 0)), "nothing in this part");
    }
}
