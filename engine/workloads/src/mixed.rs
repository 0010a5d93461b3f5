//! `mixed` and `mislabeled`: CPU operations whose cost depends on their argument by
//! orders of magnitude, submitted as an open-loop stream.
//!
//! Each operation (`primes`, `sort`, `hash`, `text`) takes a size; each token's size
//! is drawn from a light (≲ 5 µs), medium (20–100 µs) or heavy (0.4–2.5 ms) band,
//! measured on the 2-core machine in a release build. So neither the operation's tag
//! nor its average cost can place a token well; its size can. In `mixed` every token
//! declares the weight of its band; in `mislabeled` a share of them declare the wrong
//! one (heavy ↔ light; medium becomes either).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use tokengate::model::policy_for;
use tokengate::TokenRecord;
use tokengate::{Engine, Operation, RegisterError, Token, Weight};
use tokengate::{Features, Placement, RouteSource, Router, MAX_OPS};

/// The operations, in vocabulary order.
pub const OPS: [&str; 4] = ["primes", "sort", "hash", "text"];

/// Size bands per operation: `[light, medium, heavy]`, each `(low, high)` inclusive.
pub const BANDS: [[(u64, u64); 3]; 4] = [
    [(16, 6_000), (30_000, 110_000), (300_000, 1_500_000)],
    [(8, 800), (4_000, 15_000), (45_000, 220_000)],
    [(8, 1_600), (7_000, 33_000), (140_000, 800_000)],
    [(8, 4_000), (16_000, 80_000), (350_000, 2_000_000)],
];

/// Share of tokens drawn from each band: light, medium, heavy.
pub const MIX: [f64; 3] = [0.80, 0.15, 0.05];

/// Nominal runtime of each band, which the oracle turns into a placement.
const BAND_NS: [u64; 3] = [2_000, 50_000, 1_200_000];

const WEIGHTS: [Weight; 3] = [Weight::Light, Weight::Medium, Weight::Heavy];

/// Counts the primes below `n` (sieve of Eratosthenes).
pub fn count_primes(n: u64) -> u64 {
    let n = n as usize;
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            let mut j = i.saturating_mul(i);
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    count
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Sorts `n` pseudo-random numbers and returns the median.
pub fn sort_numbers(n: u64) -> u64 {
    let mut state = n | 1;
    let mut values: Vec<u32> = (0..n).map(|_| xorshift(&mut state) as u32).collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().map_or(0, u64::from)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes a value `n` times over.
pub fn iterate_hash(n: u64) -> u64 {
    (0..n).fold(n, |h, _| splitmix(h))
}

/// Builds an `n`-letter string, upper-cases and reverses it, and counts its vowels.
pub fn transform_text(n: u64) -> u64 {
    let text: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let upper = text.to_uppercase();
    upper.chars().rev().filter(|c| matches!(c, 'A' | 'E' | 'I' | 'O' | 'U')).count() as u64
}

/// One planned call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Index into [`OPS`].
    pub op: usize,
    /// The argument.
    pub size: u64,
    /// The band it was drawn from: its true weight.
    pub truth: Weight,
    /// The weight it declares.
    pub declared: Weight,
}

/// The stream's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedConfig {
    /// Tokens in the stream.
    pub tokens: usize,
    /// Seed for sizes, order and mislabels.
    pub seed: u64,
    /// Share of tokens declaring the wrong weight (0 for `mixed`).
    pub mislabel_share: f64,
    /// Arrival rate, tokens per second.
    pub rate: f64,
}

/// Draws the stream: the same config always gives the same plan.
pub fn plan(config: &MixedConfig) -> Vec<Planned> {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    (0..config.tokens)
        .map(|_| {
            let op = rng.random_range(0..OPS.len());
            let roll: f64 = rng.random();
            let band = if roll < MIX[0] {
                0
            } else if roll < MIX[0] + MIX[1] {
                1
            } else {
                2
            };
            let (low, high) = BANDS[op][band];
            // Log-uniform within the band.
            let size = ((low as f64).ln()
                + rng.random::<f64>() * ((high as f64).ln() - (low as f64).ln()))
            .exp()
            .round() as u64;
            let truth = WEIGHTS[band];
            let declared = if rng.random::<f64>() < config.mislabel_share {
                match truth {
                    Weight::Light => Weight::Heavy,
                    Weight::Heavy => Weight::Light,
                    Weight::Medium => {
                        if rng.random() {
                            Weight::Light
                        } else {
                            Weight::Heavy
                        }
                    }
                }
            } else {
                truth
            };
            Planned { op, size: size.clamp(low, high), truth, declared }
        })
        .collect()
}

/// The four operations registered on one engine (declared weight: medium, a
/// deliberately uninformative default; each token declares its own).
#[derive(Debug, Clone)]
pub struct MixedOps {
    ops: Vec<Operation<u64, u64>>,
}

impl MixedOps {
    /// Registers `primes`, `sort`, `hash` and `text`, each with its size as the hint.
    pub fn register(engine: &Engine) -> Result<Self, RegisterError> {
        let functions: [fn(u64) -> u64; 4] =
            [count_primes, sort_numbers, iterate_hash, transform_text];
        let ops = OPS
            .iter()
            .zip(functions)
            .map(|(name, f)| {
                engine.operation(name, Weight::Medium).size_hint(|n: &u64| *n).register(f)
            })
            .collect::<Result<_, _>>()?;
        Ok(MixedOps { ops })
    }
}

/// What one pass of the stream did.
#[derive(Debug, Clone)]
pub struct StreamRun {
    /// First submit → last token resolved.
    pub makespan: Duration,
    /// Each token's id and true weight.
    pub truths: Vec<(u64, Weight)>,
    /// Each token's declared weight, in the order of `truths`.
    pub declared: Vec<Weight>,
    /// Tokens that did not complete (panics, errors): should be 0.
    pub failures: usize,
}

/// Submits `plan` at `rate` tokens/s in 1 ms waves, then waits for every token.
pub fn drive(ops: &MixedOps, plan: &[Planned], rate: f64) -> StreamRun {
    let per_wave = ((rate / 1_000.0).round() as usize).max(1);
    let started = Instant::now();
    let mut tokens: Vec<(Token<u64>, &Planned)> = Vec::with_capacity(plan.len());
    let mut by_op: Vec<Vec<(u64, Weight)>> = vec![Vec::new(); OPS.len()];
    let mut calls_by_op: Vec<Vec<&Planned>> = vec![Vec::new(); OPS.len()];
    for (wave, calls) in plan.chunks(per_wave).enumerate() {
        let due = started + Duration::from_millis(wave as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for call in calls {
            by_op[call.op].push((call.size, call.declared));
            calls_by_op[call.op].push(call);
        }
        for (op, (args, calls)) in by_op.iter_mut().zip(calls_by_op.iter_mut()).enumerate() {
            if args.is_empty() {
                continue;
            }
            let submitted = ops.ops[op].submit_many_tagged(args.drain(..));
            tokens.extend(submitted.into_iter().zip(calls.drain(..)));
        }
    }
    let mut truths = Vec::with_capacity(tokens.len());
    let mut declared = Vec::with_capacity(tokens.len());
    let mut failures = 0;
    for (token, call) in tokens {
        truths.push((token.id(), call.truth));
        declared.push(call.declared);
        failures += usize::from(token.wait().is_err());
    }
    StreamRun { makespan: started.elapsed(), truths, declared, failures }
}

/// Latency of one kind of token, from the engine's own records.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Tokens measured.
    pub count: usize,
    /// Median admission → resolution (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
}

impl Latency {
    /// Percentiles of end-to-end latencies in ns.
    pub fn of(mut ns: Vec<u64>) -> Self {
        if ns.is_empty() {
            return Latency::default();
        }
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
        Latency { count: ns.len(), p50_ms: at(0.50), p99_ms: at(0.99) }
    }
}

/// End-to-end latency of the tokens whose true weight is `weight`.
pub fn latency_of(records: &[TokenRecord], truths: &[(u64, Weight)], weight: Weight) -> Latency {
    Latency::of(latencies_of(records, truths, weight))
}

fn latencies_of(records: &[TokenRecord], truths: &[(u64, Weight)], weight: Weight) -> Vec<u64> {
    let truth: HashMap<u64, Weight> = truths.iter().copied().collect();
    records
        .iter()
        .filter(|r| truth.get(&r.token_id) == Some(&weight))
        .map(|r| r.end_to_end_ns)
        .collect()
}

/// One pass of the stream through a freshly built engine, scored from its records.
#[derive(Debug, Clone, Default)]
pub struct RouterRun {
    /// First submit → last token resolved.
    pub makespan: Duration,
    /// End-to-end latency (ns) of every truly light token.
    pub light_ns: Vec<u64>,
    /// Truly heavy tokens, and how many of them ran on a heavy lane.
    pub heavy: (usize, usize),
    /// Tokens that did not complete (should be 0).
    pub failures: usize,
}

/// Builds an engine from `builder` (adding in-memory records), drives `plan` through
/// it at `rate`, drains it, and scores the run.
pub fn run_with(
    builder: tokengate::EngineBuilder,
    plan: &[Planned],
    rate: f64,
) -> Result<RouterRun, Box<dyn std::error::Error + Send + Sync>> {
    let engine = builder.log_in_memory().build()?;
    let ops = MixedOps::register(&engine)?;
    let run = drive(&ops, plan, rate);
    engine.shutdown();
    let records = engine.take_records();
    let heavy_lanes: Vec<u16> = engine
        .lanes()
        .iter()
        .filter(|l| l.set == tokengate::LaneSet::Heavy)
        .map(|l| l.index as u16)
        .collect();
    let truth: HashMap<u64, Weight> = run.truths.iter().copied().collect();
    let heavy: Vec<&TokenRecord> =
        records.iter().filter(|r| truth.get(&r.token_id) == Some(&Weight::Heavy)).collect();
    let on_heavy = heavy.iter().filter(|r| heavy_lanes.contains(&r.lane)).count();
    Ok(RouterRun {
        makespan: run.makespan,
        light_ns: latencies_of(&records, &run.truths, Weight::Light),
        heavy: (heavy.len(), on_heavy),
        failures: run.failures,
    })
}

/// Places each token by the band its (operation, size) was drawn from: the ground
/// truth the workload knows and no real router does. The comparison's upper bound.
#[derive(Debug)]
pub struct OracleRouter {
    /// Engine op id → index into [`OPS`] (`u32::MAX`: not a mixed operation).
    ops: Box<[AtomicU32]>,
}

impl Default for OracleRouter {
    fn default() -> Self {
        OracleRouter { ops: (0..MAX_OPS).map(|_| AtomicU32::new(u32::MAX)).collect() }
    }
}

impl OracleRouter {
    /// The band of `size` for operation `op` (index into [`OPS`]).
    pub fn band(op: usize, size: u64) -> usize {
        let bands = &BANDS[op];
        // Sizes between bands do not occur in the plan; split them at the gaps.
        if size <= bands[0].1 {
            0
        } else if size <= bands[1].1 {
            1
        } else {
            2
        }
    }
}

impl Router for OracleRouter {
    fn route(&self, features: &Features) -> Placement {
        let op = self.ops.get(features.op as usize).map_or(u32::MAX, |o| o.load(Ordering::Relaxed));
        let band = if op == u32::MAX { 1 } else { Self::band(op as usize, features.arg_size) };
        let (lanes, batch) = policy_for(BAND_NS[band]);
        let predicted_ns = BAND_NS[band];
        Placement { lanes, batch, class: None, predicted_ns, source: RouteSource::Heuristic }
    }

    fn is_pure(&self) -> bool {
        true
    }

    fn register_op(&self, op: u32, name: &str) {
        if let (Some(index), Some(slot)) =
            (OPS.iter().position(|n| *n == name), self.ops.get(op as usize))
        {
            slot.store(index as u32, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_and_mislabel_the_asked_share() {
        let config = MixedConfig { tokens: 20_000, seed: 7, mislabel_share: 0.25, rate: 1e4 };
        let a = plan(&config);
        assert_eq!(a, plan(&config));
        let wrong = a.iter().filter(|p| p.declared != p.truth).count() as f64 / a.len() as f64;
        assert!((0.22..0.28).contains(&wrong), "mislabelled share {wrong}");
        let heavy = a.iter().filter(|p| p.truth == Weight::Heavy).count() as f64 / a.len() as f64;
        assert!((0.03..0.07).contains(&heavy));
        assert!(a.iter().all(|p| OracleRouter::band(p.op, p.size) == p.truth as usize));
        let clean = plan(&MixedConfig { mislabel_share: 0.0, ..config });
        assert!(clean.iter().all(|p| p.declared == p.truth));
    }

    #[test]
    fn operations_compute_what_they_say() {
        assert_eq!(count_primes(30), 10);
        assert_eq!(transform_text(26), 5);
        assert!(sort_numbers(0) == 0 && sort_numbers(101) > 0);
        assert_ne!(iterate_hash(3), iterate_hash(4));
    }
}
