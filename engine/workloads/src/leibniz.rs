//! The Leibniz-π pyramid: `N` term tokens, chunk sums of 1,000 terms, partials of 100
//! chunks, and a final token that sums the partials and multiplies by 4.
//!
//! Every node is its own token through the engine, and the pyramid unfolds inside it
//! the way a recursive program would: the final token submits one token per partial
//! and waits for them; each partial submits its chunks, each chunk its 1,000 term
//! tokens (`Operation::map`: one handle per chunk of calls, run in batches). A wait on
//! a lane runs other queued work — the waiting token's own newest first, the oldest
//! left for the other lanes to steal — so the lanes are never blocked and the caller's
//! thread only waits for the answer.
//! Depth-first order keeps memory flat however large `N` is: the tokens in flight are
//! the partials, the chunks of the partials being run, and the terms of the chunks
//! being run.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use tokengate::lanes::LaneStats;
use tokengate::{Engine, Operation, RegisterError, TokenError, Weight};

/// Terms per chunk token.
pub const CHUNK_TERMS: u64 = 1_000;
/// Chunks per partial token.
pub const PARTIAL_CHUNKS: usize = 100;
/// Partial tokens the final token keeps in flight.
const PARTIALS_IN_FLIGHT: usize = 64;
/// π to 40 places, to count correct digits.
pub const PI_DIGITS: &str = "3.1415926535897932384626433832795028841971";

/// Term `n` of the Leibniz series: (-1)^n / (2n + 1).
#[inline]
pub fn term(n: u64) -> Decimal {
    let magnitude = Decimal::ONE / Decimal::from(2 * n + 1);
    if n.is_multiple_of(2) {
        magnitude
    } else {
        -magnitude
    }
}

/// The number of tokens the pyramid runs for `terms` terms.
pub fn token_count(terms: u64) -> u64 {
    let chunks = terms.div_ceil(CHUNK_TERMS);
    let partials = chunks.div_ceil(PARTIAL_CHUNKS as u64);
    terms + chunks + partials + 1
}

/// The four operations of the pyramid, registered on one engine.
#[derive(Debug, Clone)]
pub struct Pyramid {
    finish: Operation<u64, Decimal>,
    /// Terms whose chunk has been summed (for progress).
    summed: Arc<AtomicU64>,
}

/// What one run of the pyramid produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The approximation of π.
    pub pi: Decimal,
    /// Tokens run (terms + chunks + partials + 1).
    pub tokens: u64,
    /// Wall time of the whole pyramid.
    pub wall: Duration,
    /// Tokens each lane processed during the run.
    pub per_lane: Vec<u64>,
    /// The share of the run's wall time each lane was busy (not idle for want of work).
    pub lane_busy: Vec<f64>,
    /// Tokens threads outside the lanes ran while they waited on a backlog.
    pub by_callers: u64,
}

impl Outcome {
    /// Tokens per second over the whole run.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64()
    }

    /// How many leading digits of π (counting the "3") are right.
    pub fn correct_digits(&self) -> usize {
        correct_digits(&self.pi.to_string())
    }
}

/// Leading digits of `value` that match π, counting the "3".
pub fn correct_digits(value: &str) -> usize {
    value
        .bytes()
        .zip(PI_DIGITS.bytes())
        .take_while(|(a, b)| a == b)
        .filter(|(a, _)| a.is_ascii_digit())
        .count()
}

/// The same pyramid as a plain loop on the calling thread (no engine, no tokens): the
/// serial baseline. Sums in the pyramid's order, so the result is the same.
pub fn serial(terms: u64) -> Decimal {
    let per_partial = CHUNK_TERMS * PARTIAL_CHUNKS as u64;
    let partial = |(start, end)| {
        ranges(start, end, CHUNK_TERMS)
            .map(|(s, e)| (s..e).map(term).sum::<Decimal>())
            .sum::<Decimal>()
    };
    ranges(0, terms, per_partial).map(partial).sum::<Decimal>() * Decimal::from(4)
}

/// Sums the results (the first error wins).
fn sum_of(results: Vec<Result<Decimal, TokenError>>) -> Result<Decimal, TokenError> {
    results.into_iter().sum()
}

/// `start..end` cut into ranges of `step`.
fn ranges(start: u64, end: u64, step: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end).step_by(step as usize).map(move |from| (from, (from + step).min(end)))
}

impl Pyramid {
    /// Registers `pi_term` (light; remote-capable), `pi_chunk` and `pi_partial`
    /// (medium) and `pi_final` (light) on `engine`.
    pub fn register(engine: &Engine) -> Result<Self, RegisterError> {
        let summed = Arc::new(AtomicU64::new(0));
        let terms = engine.operation("pi_term", Weight::Light).remote().register(term)?;
        let done = Arc::clone(&summed);
        let chunks = engine.operation("pi_chunk", Weight::Medium).register_fallible(
            move |(start, end): (u64, u64)| {
                let sum = sum_of(terms.blocking_map(start..end));
                done.fetch_add(end - start, Relaxed);
                sum
            },
        )?;
        let partials = engine.operation("pi_partial", Weight::Medium).register_fallible(
            move |(start, end): (u64, u64)| {
                sum_of(chunks.blocking_map(ranges(start, end, CHUNK_TERMS)))
            },
        )?;
        let per_partial = CHUNK_TERMS * PARTIAL_CHUNKS as u64;
        let finish =
            engine.operation("pi_final", Weight::Light).register_fallible(move |terms: u64| {
                // At most `PARTIALS_IN_FLIGHT` partials at a time: every waiting parent
                // holds an admission permit, so however large `terms` is, parents waiting
                // for children never hold the engine's whole capacity.
                let mut pending = ranges(0, terms, per_partial).peekable();
                let mut sum = Decimal::ZERO;
                while pending.peek().is_some() {
                    let group = partials.submit_many(pending.by_ref().take(PARTIALS_IN_FLIGHT));
                    for partial in group {
                        sum += partial.wait()?; // the serial loop's order
                    }
                }
                Ok::<_, TokenError>(sum * Decimal::from(4))
            })?;
        Ok(Pyramid { finish, summed })
    }

    /// Runs the pyramid for `terms` terms and calls `progress(terms_summed)` every
    /// 100 ms or so, and once at the end.
    pub fn run(
        &self,
        engine: &Engine,
        terms: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Outcome, TokenError> {
        let lanes_before = engine.stats().lanes;
        let callers_before = engine.stats().caller_tokens;
        let summed_before = self.summed.load(Relaxed);
        let started = Instant::now();
        let mut pending = self.finish.submit(terms);
        let pi = loop {
            match pending.wait_timeout(Duration::from_millis(100)) {
                Ok(pi) => break pi?,
                Err(token) => pending = token,
            }
            progress(self.summed.load(Relaxed) - summed_before);
        };
        let wall = started.elapsed();
        progress(self.summed.load(Relaxed) - summed_before);
        let lanes_after = engine.stats().lanes;
        let per_lane = lane_delta(&lanes_before, &lanes_after);
        let lane_busy = lanes_after
            .iter()
            .zip(&lanes_before)
            .map(|(a, b)| {
                a.busy_ns.saturating_sub(b.busy_ns) as f64 / wall.as_nanos().max(1) as f64
            })
            .collect();
        let by_callers = engine.stats().caller_tokens - callers_before;
        Ok(Outcome { pi, tokens: token_count(terms), wall, per_lane, lane_busy, by_callers })
    }
}

fn lane_delta(before: &[LaneStats], after: &[LaneStats]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a.tokens - b.tokens).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_count_matches_the_pyramid() {
        assert_eq!(token_count(1_000_000), 1_001_011);
        assert_eq!(token_count(1), 1 + 1 + 1 + 1);
        assert_eq!(token_count(100_500), 100_500 + 101 + 2 + 1);
    }

    #[test]
    fn correct_digits_counts_leading_matches() {
        assert_eq!(correct_digits("3.14159165358979"), 6);
        assert_eq!(correct_digits("2.7"), 0);
    }

    #[test]
    fn the_serial_loop_sums_in_the_pyramid_order() {
        let by_levels: Decimal = (0..2_500u64)
            .collect::<Vec<_>>()
            .chunks(CHUNK_TERMS as usize)
            .map(|chunk| chunk.iter().map(|&n| term(n)).sum::<Decimal>())
            .sum();
        assert_eq!(serial(2_500), by_levels * Decimal::from(4));
    }

    #[test]
    fn terms_alternate() {
        assert_eq!(term(0), Decimal::ONE);
        assert_eq!(term(1), -(Decimal::ONE / Decimal::from(3)));
    }
}
