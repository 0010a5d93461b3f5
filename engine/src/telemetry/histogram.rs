//! End-to-end latency histograms: per operation, per lane set, read by the control
//! port, the dashboard and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// End-to-end latency in log-linear buckets, in the style of HdrHistogram: below 16 ns
/// one bucket per nanosecond, then each power of two split into [`SUB_BUCKETS`] equal
/// buckets. A bucket is at most 1/16 of its lower bound wide, so a quantile read as its
/// bucket's midpoint is within 3.2% of the exact one (the tests check it against known
/// distributions). Recorded once per batch (each token timed at the end of its batch:
/// an upper bound for all but the last), at the cost of one atomic add.
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    /// Sum of the recorded latencies (ns), for `/metrics` (`_sum`).
    sum_ns: AtomicU64,
}

/// Buckets per power of two (above 16 ns).
pub(crate) const SUB_BUCKETS: usize = 16;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Powers of two covered: up to 2^48 ns (78 hours); longer latencies count in the last
/// bucket.
const OCTAVES: usize = 48;
/// Buckets of [`LatencyHistogram`]: 16 exact ones, then 16 per power of two from 2^4.
pub(crate) const LATENCY_BUCKETS: usize = SUB_BUCKETS + (OCTAVES - SUB_BITS as usize) * SUB_BUCKETS;

/// The bucket of a latency (ns).
#[inline]
pub(crate) fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = octave - SUB_BITS;
    let sub = ((ns >> shift) as usize) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + shift as usize * SUB_BUCKETS + sub).min(LATENCY_BUCKETS - 1)
}

/// A bucket's range of latencies: its lower bound and width (ns).
pub(crate) fn bucket_range(bucket: usize) -> (u64, u64) {
    if bucket < SUB_BUCKETS {
        return (bucket as u64, 1);
    }
    let shift = ((bucket - SUB_BUCKETS) / SUB_BUCKETS) as u32;
    let sub = ((bucket - SUB_BUCKETS) % SUB_BUCKETS) as u64;
    ((SUB_BUCKETS as u64 + sub) << shift, 1u64 << shift)
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub(crate) fn record(&self, latency_ns: u64, tokens: u64) {
        self.buckets[bucket_of(latency_ns)].fetch_add(tokens, Relaxed);
        self.sum_ns.fetch_add(latency_ns.saturating_mul(tokens), Relaxed);
    }

    /// The per-bucket counts (see [`bucket_range`]) and the sum of latencies (ns), read
    /// without stopping writers.
    pub(crate) fn read(&self) -> ([u64; LATENCY_BUCKETS], u64) {
        (std::array::from_fn(|k| self.buckets[k].load(Relaxed)), self.sum_ns.load(Relaxed))
    }

    /// Each quantile (ns; 0 when empty), as [`quantile_of`] reads it.
    pub(crate) fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> [u64; N] {
        let (counts, _) = self.read();
        quantiles.map(|q| quantile_of(&counts, q))
    }
}

/// Quantile `q` (ns) of [`LatencyHistogram`] counts: the midpoint of the bucket holding
/// its rank (0 when empty). Counts may be a difference of two reads (a window).
pub(crate) fn quantile_of(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    let mut bucket = counts.len() - 1;
    for (k, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            bucket = k;
            break;
        }
    }
    let (lower, width) = bucket_range(bucket);
    lower + width / 2
}

/// Counts per power of two (index k: latencies in [2^(k-1), 2^k) ns; index 0: 0 ns), for
/// exports that keep coarse buckets (Prometheus).
pub(crate) fn octave_counts(counts: &[u64]) -> [u64; OCTAVES + 1] {
    let mut octaves = [0u64; OCTAVES + 1];
    for (bucket, &count) in counts.iter().enumerate() {
        let (lower, _) = bucket_range(bucket);
        let k = (64 - lower.leading_zeros()) as usize;
        octaves[k.min(OCTAVES)] += count;
    }
    octaves
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_latencies() {
        let mut next = 0;
        for bucket in 0..LATENCY_BUCKETS {
            let (lower, width) = bucket_range(bucket);
            assert_eq!(lower, next, "bucket {bucket} starts where the last ended");
            assert_eq!(bucket_of(lower), bucket);
            assert_eq!(bucket_of(lower + width - 1), bucket);
            assert!(bucket < SUB_BUCKETS || width * SUB_BUCKETS as u64 <= lower);
            next = lower + width;
        }
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1, "clamped into the last");
    }

    /// Against known distributions, each read the way the dashboard and `ctl` read
    /// them: every quantile within 5% of the exact (nearest-rank) one.
    #[test]
    fn histogram_quantiles_are_within_a_few_percent_of_the_exact_ones() {
        let exact = |sorted: &[u64], q: f64| {
            sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        type Draw = fn(f64) -> u64;
        let distributions: [(&str, Draw); 3] = [
            ("uniform 1–100 µs", |u| 1_000 + (u * 99_000.0) as u64),
            ("log-uniform 100 ns–1 s", |u| (100.0 * (u * 16.1).exp()) as u64),
            ("bimodal 2 µs / 5 ms", |u| if u < 0.97 { 2_000 } else { 5_000_000 }),
        ];
        for (name, draw) in distributions {
            let histogram = LatencyHistogram::default();
            let mut values: Vec<u64> = (0..100_000).map(|_| draw(uniform())).collect();
            for &v in &values {
                histogram.record(v, 1);
            }
            values.sort_unstable();
            for q in [0.5, 0.9, 0.99, 0.999] {
                let (got, want) = (histogram.quantiles([q])[0] as f64, exact(&values, q) as f64);
                assert!((got - want).abs() <= 0.05 * want, "{name} q{q}: {got} vs exact {want}");
            }
        }
        assert_eq!(LatencyHistogram::default().quantiles([0.5, 0.99]), [0, 0]);
    }

    #[test]
    fn octaves_fold_the_fine_buckets() {
        let histogram = LatencyHistogram::default();
        histogram.record(1_000, 99); // [512, 1024): octave 10
        histogram.record(1_000_000, 1); // octave 20
        let octaves = octave_counts(&histogram.read().0);
        assert_eq!((octaves[10], octaves[20], octaves.iter().sum::<u64>()), (99, 1, 100));
    }
}
