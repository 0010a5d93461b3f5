//! The Leibniz-π pyramid: `N` term tokens, chunk sums of 1,000 terms, partial sums of
//! 100 chunks, and a final token that sums the partials and multiplies by 4.
//!
//! Every term is its own token through the engine (admitted with `submit_many`, run
//! in batches); nothing is fused outside the engine. The driver keeps a bounded window
//! of chunks in flight, so memory stays flat however large `N` is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use tokengate::{Engine, LaneStats, Operation, RegisterError, Token, TokenError, Weight};

/// Terms per chunk token.
pub const CHUNK_TERMS: u64 = 1_000;
/// Chunks per partial token.
pub const PARTIAL_CHUNKS: usize = 100;
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
    term: Operation<u64, Decimal>,
    chunk: Operation<Vec<Decimal>, Decimal>,
    partial: Operation<Vec<Decimal>, Decimal>,
    finish: Operation<Vec<Decimal>, Decimal>,
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
    /// Tokens the driver ran itself while it waited on a backlog.
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

fn sum(values: Vec<Decimal>) -> Decimal {
    values.into_iter().sum()
}

impl Pyramid {
    /// Registers `pi_term` (light), `pi_chunk` and `pi_partial` (medium) and `pi_final`
    /// (light) on `engine`.
    pub fn register(engine: &Engine) -> Result<Self, RegisterError> {
        Ok(Pyramid {
            term: engine.operation("pi_term", Weight::Light).remote().register(term)?,
            chunk: engine.register("pi_chunk", Weight::Medium, sum)?,
            partial: engine.register("pi_partial", Weight::Medium, sum)?,
            finish: engine.register("pi_final", Weight::Light, |partials: Vec<Decimal>| {
                sum(partials) * Decimal::from(4)
            })?,
        })
    }

    /// Runs the pyramid for `terms` terms, keeping `window` chunks of term tokens in
    /// flight, and calls `progress(terms_done)` after each chunk.
    pub fn run(
        &self,
        engine: &Engine,
        terms: u64,
        window: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<Outcome, TokenError> {
        let window = window.max(1);
        let lanes_before = engine.lane_stats();
        let callers_before = engine.caller_tokens();
        let started = Instant::now();
        let mut term_chunks: VecDeque<Vec<Token<Decimal>>> = VecDeque::with_capacity(window);
        let mut chunk_sums: Vec<Token<Decimal>> = Vec::with_capacity(PARTIAL_CHUNKS);
        let mut full_groups: VecDeque<Vec<Token<Decimal>>> = VecDeque::new();
        let mut partials: Vec<Token<Decimal>> = Vec::new();
        let mut next = 0u64;
        let mut done = 0u64;
        let mut values: Vec<Decimal> = Vec::with_capacity(CHUNK_TERMS as usize);
        while next < terms || !term_chunks.is_empty() {
            while term_chunks.len() < window && next < terms {
                let end = (next + CHUNK_TERMS).min(terms);
                term_chunks.push_back(self.term.submit_many(next..end));
                next = end;
            }
            // A group of chunk sums completed an iteration ago is almost surely done.
            if let Some(group) = full_groups.pop_front() {
                partials.push(self.partial.submit(wait_all(group, Vec::new())?));
            }
            let Some(chunk) = term_chunks.pop_front() else {
                break;
            };
            done += chunk.len() as u64;
            values = wait_all(chunk, values)?;
            chunk_sums.push(
                self.chunk.submit(std::mem::replace(
                    &mut values,
                    Vec::with_capacity(CHUNK_TERMS as usize),
                )),
            );
            if chunk_sums.len() == PARTIAL_CHUNKS {
                full_groups.push_back(std::mem::take(&mut chunk_sums));
            }
            progress(done);
        }
        full_groups.extend((!chunk_sums.is_empty()).then_some(chunk_sums));
        for group in full_groups {
            partials.push(self.partial.submit(wait_all(group, Vec::new())?));
        }
        let partial_values = wait_all(partials, Vec::new())?;
        let pi = self.finish.submit(partial_values).wait()?;
        let wall = started.elapsed();
        let per_lane = lane_delta(&lanes_before, &engine.lane_stats());
        let by_callers = engine.caller_tokens() - callers_before;
        Ok(Outcome { pi, tokens: token_count(terms), wall, per_lane, by_callers })
    }
}

fn wait_all(
    tokens: Vec<Token<Decimal>>,
    mut into: Vec<Decimal>,
) -> Result<Vec<Decimal>, TokenError> {
    into.clear();
    into.reserve(tokens.len());
    for token in tokens {
        into.push(token.wait()?);
    }
    Ok(into)
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
    fn terms_alternate() {
        assert_eq!(term(0), Decimal::ONE);
        assert_eq!(term(1), -(Decimal::ONE / Decimal::from(3)));
    }
}
