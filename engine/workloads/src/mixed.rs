//! `mixed` and `mislabeled`: CPU operations whose cost depends on their argument by
//! orders of magnitude, submitted as an open-loop stream.
//!
//! Each operation (`primes`, `sort`, `hash`, `text`) takes a size; each token's size
//! is drawn from a light (≲ 5 µs), medium (20–100 µs) or heavy (0.4–2.5 ms) band,
//! measured on the 2-core machine in a release build. So neither the operation's tag
//! nor its average cost can place a token well; its size can. In `mixed` every token
//! declares the weight of its band; in `mislabeled` a share of them declare the wrong
//! one (heavy ↔ light; medium becomes either).
//!
//! `drift` is `mixed` whose cost-versus-argument relation changes at a point of the
//! stream (default half-way) for two operations: `sort`'s light band becomes heavy
//! (250–330 µs, just past the heavy threshold, so two lanes can still keep up: each such
//! call sorts over and over until its time is spent, as sorting speed differs twofold
//! between machines of the same kind and by 40% on one shared machine from one second
//! to the next) and
//! `hash`'s heavy band becomes light, while every token still declares the weight of
//! its band before the shift. A static model is then wrong for those two operations;
//! online adaptation has to notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use tokengate::model::policy_for;
use tokengate::router::{Features, Placement, RouteSource, Router, MAX_OPS};
use tokengate::telemetry::TokenRecord;
use tokengate::{Engine, Operation, RegisterError, Token, TokenState, Weight};

use crate::wait::Stall;

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
    /// Where in the stream (0..1) `sort` and `hash` change cost (`drift` only).
    pub drift_at: Option<f64>,
}

/// The operations whose cost changes in `drift`.
pub const DRIFTING: [bool; 4] = [false, true, true, false];

/// After the shift: `sort`'s light sizes cost 250–330 µs (heavy), `hash`'s heavy sizes
/// cost like its light band.
fn shifted_cost(op: usize, size: u64) -> u64 {
    match (op, size) {
        (1, n) if n <= BANDS[1][0].1 => shifted_sort(n),
        (2, n) if n >= BANDS[2][2].0 => iterate_hash(n / 500),
        (op, n) => [count_primes, sort_numbers, iterate_hash, transform_text][op](n),
    }
}

/// The shifted cost of `sort`'s light sizes, from the first to the last of the band.
const SHIFTED_SORT_NS: (f64, f64) = (250_000.0, 330_000.0);

/// Numbers in each of a shifted `sort` call's sorts, beyond its size (10–20 µs a sort).
const SHIFTED_SORT_CHUNK: u64 = 1_000;

/// How long a light `sort` size `n` runs after the shift: 250–330 µs, linear in `n`
/// across the light band.
fn shifted_sort_time(n: u64) -> Duration {
    let (low, high) = BANDS[1][0];
    let at = (n.clamp(low, high) - low) as f64 / (high - low) as f64;
    let ns = SHIFTED_SORT_NS.0 + at * (SHIFTED_SORT_NS.1 - SHIFTED_SORT_NS.0);
    Duration::from_nanos(ns as u64)
}

/// A light `sort` size `n` after the shift: sorts `SHIFTED_SORT_CHUNK + n` numbers over
/// and over until [`shifted_sort_time`] has passed since it started (real sorting, its
/// cost fixed in wall time rather than in numbers: a call preempted meanwhile sorts
/// less, as the engine's `run_ns` is wall time too), and returns one sort's value.
///
/// Not a number of values sized by a timing taken once: a shared machine sorts 40%
/// faster or slower from one second to the next, and a size timed in a slow spell then
/// runs under the heavy threshold in a fast one, where the stream's truth would still
/// call it heavy (docs/benchmarks.md, "Online adaptation").
fn shifted_sort(n: u64) -> u64 {
    let started = Instant::now();
    let time = shifted_sort_time(n);
    let value = sort_numbers(SHIFTED_SORT_CHUNK + n);
    while started.elapsed() < time {
        std::hint::black_box(sort_numbers(std::hint::black_box(SHIFTED_SORT_CHUNK + n)));
    }
    value
}

/// The true weight of a token after the shift.
fn shifted_truth(op: usize, truth: Weight) -> Weight {
    match (op, truth) {
        (1, Weight::Light) => Weight::Heavy,
        (2, Weight::Heavy) => Weight::Light,
        (_, truth) => truth,
    }
}

/// Draws the stream: the same config always gives the same plan.
pub fn plan(config: &MixedConfig) -> Vec<Planned> {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut planned: Vec<Planned> = (0..config.tokens)
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
        .collect();
    if let Some(at) = config.drift_at {
        let shift = shift_index(config.tokens, at);
        for call in &mut planned[shift..] {
            call.truth = shifted_truth(call.op, call.truth);
        }
    }
    planned
}

/// The index of the first token after the shift.
pub fn shift_index(tokens: usize, at: f64) -> usize {
    ((tokens as f64 * at.clamp(0.0, 1.0)) as usize).min(tokens)
}

/// The four operations registered on one engine (declared weight: medium, a
/// deliberately uninformative default; each token declares its own).
#[derive(Debug, Clone)]
pub struct MixedOps {
    ops: Vec<Operation<u64, u64>>,
    /// Set at the shift of a `drift` stream; the drifting operations read it per call.
    shifted: Arc<AtomicBool>,
}

impl MixedOps {
    /// Registers `primes`, `sort`, `hash` and `text`, each with its size as the hint,
    /// remote-capable (a `tokengate worker` serves them; the drift shift is this
    /// engine's own, so a `drift` stream's remote tokens do not drift).
    pub fn register(engine: &Engine) -> Result<Self, RegisterError> {
        let functions: [fn(u64) -> u64; 4] =
            [count_primes, sort_numbers, iterate_hash, transform_text];
        let shifted = Arc::new(AtomicBool::new(false));
        let ops = OPS
            .iter()
            .zip(functions)
            .enumerate()
            .map(|(op, (name, f))| {
                let shifted = Arc::clone(&shifted);
                engine.operation(name, Weight::Medium).size_hint(|n: &u64| *n).remote().register(
                    move |n: u64| {
                        if DRIFTING[op] && shifted.load(Ordering::Relaxed) {
                            shifted_cost(op, n)
                        } else {
                            f(n)
                        }
                    },
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(MixedOps { ops, shifted })
    }

    /// One of the four operations, by name (`primes`, `sort`, `hash`, `text`).
    pub fn op(&self, name: &str) -> Option<&Operation<u64, u64>> {
        self.ops.iter().find(|op| op.name() == name)
    }

    /// The flag a `drift` stream sets at its shift (an oracle reads it too).
    pub fn shift_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shifted)
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
    /// When each token was due to be submitted (s since the start), in that order.
    pub submitted_s: Vec<f64>,
    /// When the drifting operations changed cost (s since the start).
    pub shift_s: Option<f64>,
    /// Tokens that did not complete (panics, errors): should be 0.
    pub failures: usize,
    /// An order-independent digest of every (operation, argument, result): equal for
    /// the same plan wherever its tokens ran.
    pub digest: u64,
    /// Tokens still unresolved once the engine had finished none for
    /// [`WAIT_BOUND`](crate::wait::WAIT_BOUND).
    pub lost: usize,
    /// Tokens whose id got more than one result (the driver's own per-id tally).
    pub double_resolved: usize,
    /// Freezes of the whole machine during the run (times since its start).
    pub freezes: crate::freeze::Freezes,
}

/// One (operation, argument, result) folded into a digest: summed (wrapping), so the
/// order of results does not matter.
pub fn digest_of(op: usize, size: u64, result: &Result<u64, tokengate::TokenError>) -> u64 {
    let value = match result {
        Ok(value) => *value,
        Err(_) => u64::MAX,
    };
    // splitmix64 of the three, chained.
    let mut x = (op as u64) ^ size.rotate_left(17) ^ value.rotate_left(41);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Submits `plan` at `rate` tokens/s in 1 ms waves, then waits for every token. With
/// `shift` (a token index), the drifting operations change cost when that token's
/// wave is submitted.
pub fn drive(ops: &MixedOps, plan: &[Planned], rate: f64, shift: Option<usize>) -> StreamRun {
    let per_wave = ((rate / 1_000.0).round() as usize).max(1);
    let watch = crate::freeze::FreezeWatch::start();
    let started = Instant::now();
    let mut tokens: Vec<(Token<u64>, &Planned)> = Vec::with_capacity(plan.len());
    let mut by_op: Vec<Vec<(u64, Weight)>> = vec![Vec::new(); OPS.len()];
    let mut calls_by_op: Vec<Vec<&Planned>> = vec![Vec::new(); OPS.len()];
    for (wave, calls) in plan.chunks(per_wave).enumerate() {
        let due = started + Duration::from_millis(wave as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if shift.is_some_and(|at| wave * per_wave >= at) {
            ops.shifted.store(true, Ordering::Relaxed);
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
        if tokens.last().is_some_and(|(token, _)| token.state() == TokenState::Rejected) {
            // The engine is shutting down (a full gate makes a submit wait, not fail):
            // the rest of the stream would only be rejected too.
            break;
        }
    }
    let mut truths = Vec::with_capacity(tokens.len());
    let mut declared = Vec::with_capacity(tokens.len());
    let mut submitted_s = Vec::with_capacity(tokens.len());
    let mut failures = 0;
    let (mut digest, mut lost) = (0u64, 0);
    let mut results_by_id: HashMap<u64, u32> = HashMap::with_capacity(tokens.len());
    let base = plan.as_ptr() as usize;
    let mut stall = Stall::new(&ops.ops);
    for (token, call) in tokens {
        truths.push((token.id(), call.truth));
        declared.push(call.declared);
        // Its wave's due time: the plan index over the wave size, in ms.
        let index = (call as *const Planned as usize - base) / std::mem::size_of::<Planned>();
        submitted_s.push((index / per_wave) as f64 / 1e3);
        let id = token.id();
        match stall.wait(token) {
            Some(result) => {
                *results_by_id.entry(id).or_default() += 1;
                failures += usize::from(result.is_err());
                digest = digest.wrapping_add(digest_of(call.op, call.size, &result));
            }
            None => lost += 1,
        }
    }
    let double_resolved = results_by_id.values().filter(|&&n| n > 1).count();
    let shift_s = shift.map(|at| (at / per_wave) as f64 / 1e3);
    let makespan = started.elapsed();
    StreamRun {
        makespan,
        freezes: watch.stop(),
        truths,
        declared,
        submitted_s,
        shift_s,
        failures,
        digest,
        lost,
        double_resolved,
    }
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
        let at = |q: f64| crate::stats::quantile(&ns, q).unwrap_or(0) as f64 / 1e6;
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
    /// Every truly light token's submission time (s since the start) and latency (ns).
    pub light_timed: Vec<(f64, u64)>,
    /// When the drifting operations changed cost (s since the start).
    pub shift_s: Option<f64>,
    /// Truly heavy tokens, and how many of them ran on a heavy lane.
    pub heavy: (usize, usize),
    /// Tokens that did not complete (should be 0).
    pub failures: usize,
    /// Freezes of the whole machine during the run (times since its start).
    pub freezes: crate::freeze::Freezes,
    /// Rescues of heavy lanes starved by other threads (`EngineStats::rescues`).
    pub rescues: u64,
}

/// The indices of `engine`'s heavy lanes (as telemetry records name lanes).
pub fn heavy_lanes(engine: &Engine) -> Vec<u16> {
    engine
        .lanes()
        .iter()
        .filter(|l| l.set == tokengate::LaneSet::Heavy)
        .map(|l| l.index as u16)
        .collect()
}

/// Builds an engine from `builder` (adding in-memory records), drives `plan` through
/// it at `rate`, drains it, and scores the run.
pub fn run_with(
    builder: tokengate::EngineBuilder,
    plan: &[Planned],
    rate: f64,
    shift: Option<usize>,
    oracle: Option<&OracleRouter>,
) -> Result<RouterRun, Box<dyn std::error::Error + Send + Sync>> {
    let engine = builder.log_in_memory().build()?;
    let ops = MixedOps::register(&engine)?;
    if let Some(oracle) = oracle {
        oracle.follow(ops.shift_flag());
    }
    let run = drive(&ops, plan, rate, shift);
    engine.shutdown();
    let records = engine.take_records();
    let heavy_lanes = heavy_lanes(&engine);
    let truth: HashMap<u64, Weight> = run.truths.iter().copied().collect();
    let heavy: Vec<&TokenRecord> =
        records.iter().filter(|r| truth.get(&r.token_id) == Some(&Weight::Heavy)).collect();
    let on_heavy = heavy.iter().filter(|r| heavy_lanes.contains(&r.lane)).count();
    let latency: HashMap<u64, u64> = records
        .iter()
        .filter(|r| r.outcome == tokengate::telemetry::RecordOutcome::Completed)
        .map(|r| (r.token_id, r.end_to_end_ns))
        .collect();
    let light_timed = run
        .truths
        .iter()
        .zip(&run.submitted_s)
        .filter(|((_, truth), _)| *truth == Weight::Light)
        .filter_map(|((id, _), at)| latency.get(id).map(|ns| (*at, *ns)))
        .collect();
    Ok(RouterRun {
        makespan: run.makespan,
        light_ns: latencies_of(&records, &run.truths, Weight::Light),
        light_timed,
        shift_s: run.shift_s,
        heavy: (heavy.len(), on_heavy),
        failures: run.failures,
        freezes: run.freezes,
        rescues: engine.stats().rescues,
    })
}

/// Places each token by the band its (operation, size) was drawn from: the ground
/// truth the workload knows and no real router does. The comparison's upper bound.
#[derive(Debug)]
pub struct OracleRouter {
    /// Engine op id → index into [`OPS`] (`u32::MAX`: not a mixed operation).
    ops: Box<[AtomicU32]>,
    /// The `drift` stream's shift flag, once known: after it, bands of the drifting
    /// operations swap.
    shifted: std::sync::Mutex<Option<Arc<AtomicBool>>>,
    shifted_now: AtomicBool,
}

impl Default for OracleRouter {
    fn default() -> Self {
        OracleRouter {
            ops: (0..MAX_OPS).map(|_| AtomicU32::new(u32::MAX)).collect(),
            shifted: std::sync::Mutex::new(None),
            shifted_now: AtomicBool::new(false),
        }
    }
}

impl OracleRouter {
    /// Follows a `drift` stream's shift flag (set by [`drive`]).
    pub fn follow(&self, flag: Arc<AtomicBool>) {
        self.shifted_now.store(false, Ordering::Relaxed);
        *self.shifted.lock().unwrap_or_else(|e| e.into_inner()) = Some(flag);
    }

    fn is_shifted(&self) -> bool {
        if self.shifted_now.load(Ordering::Relaxed) {
            return true;
        }
        let shifted = self.shifted.lock().unwrap_or_else(|e| e.into_inner());
        let now = shifted.as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed));
        self.shifted_now.store(now, Ordering::Relaxed);
        now
    }

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
        let mut predicted_ns = BAND_NS[band];
        if op != u32::MAX && DRIFTING[op as usize] && self.is_shifted() {
            predicted_ns = match (op, band) {
                // sort's light sizes now cost heavy, at the shifted cost
                (1, 0) => (SHIFTED_SORT_NS.0 + SHIFTED_SORT_NS.1) as u64 / 2,
                (2, 2) => BAND_NS[0], // hash's heavy sizes now cost light
                _ => predicted_ns,
            };
        }
        let (lanes, batch) = policy_for(predicted_ns);
        Placement::new(lanes, batch, predicted_ns, RouteSource::Heuristic)
    }

    fn register_op(&self, op: u32, name: &str, _cost_features: &[String]) {
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
    fn drift_swaps_the_truth_of_two_operations_after_the_shift_only() {
        let base =
            MixedConfig { tokens: 4_000, seed: 3, mislabel_share: 0.0, rate: 1e4, drift_at: None };
        let drift = MixedConfig { drift_at: Some(0.5), ..base };
        let (a, b) = (plan(&base), plan(&drift));
        let shift = shift_index(4_000, 0.5);
        assert_eq!(&a[..shift], &b[..shift]);
        for (x, y) in a[shift..].iter().zip(&b[shift..]) {
            assert_eq!((x.op, x.size, x.declared), (y.op, y.size, y.declared), "tags unchanged");
            let swapped =
                (x.op, x.truth) == (1, Weight::Light) || (x.op, x.truth) == (2, Weight::Heavy);
            assert_eq!(x.truth != y.truth, swapped, "{x:?} → {y:?}");
        }
        // The drifting costs really change: a light size of `sort` now runs 250–330 µs
        // (at least: its last sort ends past it), and its value is one sort's.
        let (low, high) = BANDS[1][0];
        for (n, at_least) in [(low, 250), (high, 330)] {
            let started = Instant::now();
            assert_eq!(shifted_cost(1, n), sort_numbers(SHIFTED_SORT_CHUNK + n));
            assert!(started.elapsed() >= Duration::from_micros(at_least));
        }
        assert_eq!(shifted_sort_time(low), Duration::from_micros(250));
        assert_eq!(shifted_sort_time(high), Duration::from_micros(330));
        assert_eq!(shifted_cost(2, BANDS[2][2].0), iterate_hash(BANDS[2][2].0 / 500));
    }

    #[test]
    fn plans_are_reproducible_and_mislabel_the_asked_share() {
        let config = MixedConfig {
            tokens: 20_000,
            seed: 7,
            mislabel_share: 0.25,
            rate: 1e4,
            drift_at: None,
        };
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
