//! `text`: real work from well-kept crates on generated documents, where what a call
//! costs follows its content as much as its length — the stream on which a size hint
//! alone cannot tell the model what costs, and cost features can.
//!
//! Four operations, declared by name as a user would guess (`grep` and `json` light,
//! `gunzip` and `checksum` medium):
//!
//! * `grep`: a Unicode-aware regex (`\b\w+(?:ing|tion|ness)\b`, `regex` crate) counts
//!   matches. On ASCII text the lazy DFA runs at about a byte per nanosecond; a Unicode
//!   word boundary makes it give up at the first non-ASCII byte, and the rest of the
//!   search runs on the much slower NFA simulation. Cost feature: `non_ascii`, the share
//!   of non-ASCII bytes in the first 512.
//! * `gunzip`: inflates a gzip member (`flate2`). Its cost follows the *decompressed*
//!   length, which for repetitive data is up to ~60× the compressed one. Cost feature:
//!   `isize`, the decompressed length the gzip trailer states (its last four bytes), and
//!   `ratio`, that over the compressed length.
//! * `json`: parses a document into a `serde_json::Value`. Long strings parse fast per
//!   byte, deeply nested small values slowly. Cost features: `density` (structural bytes
//!   per byte over the first 1 KiB) and `values` (that density times the length: about
//!   the values in the whole document).
//! * `checksum`: FNV-1a over the bytes: cost follows length alone (no cost feature; the
//!   size hint is enough).
//!
//! Every call has its own generated document (sizes heavy-tailed, 512 B to 256 KiB),
//! from a seeded generator: the same seed gives the same documents. Each document's run
//! time is measured alone before the stream (the best of two runs): its truth, which
//! the oracle router places by and the report classes latencies by.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use regex::Regex;
use tokengate::model::{policy_for, HEAVY_NS};
use tokengate::router::{Features, Placement, RouteSource, Router};
use tokengate::{Engine, EngineBuilder, Operation, RegisterError, Token, TokenState, Weight};

use crate::mixed::{digest_of, RouterRun};
use crate::wait::Stall;

/// The operations, in index order.
pub const OPS: [&str; 4] = ["grep", "gunzip", "json", "checksum"];

/// The weight each declares: a guess by name.
pub const DECLARED: [Weight; 4] = [Weight::Light, Weight::Medium, Weight::Light, Weight::Medium];

/// Shortest and longest document (bytes; the gzip member's compressed length).
pub const SIZES: (u64, u64) = (512, 256 << 10);

/// A document: the argument of every call.
pub type Doc = Arc<[u8]>;

/// The cost features each operation declares under [`Told::Features`], by operation.
pub fn cost_feature_names() -> Vec<Vec<String>> {
    let names: [&[&str]; 4] = [&GREP_FEATURES, &GUNZIP_FEATURES, &JSON_FEATURES, &[]];
    names.iter().map(|op| op.iter().map(|s| s.to_string()).collect()).collect()
}

/// `grep`'s cost features.
const GREP_FEATURES: [&str; 1] = ["non_ascii"];
/// `gunzip`'s cost features.
const GUNZIP_FEATURES: [&str; 2] = ["isize", "ratio"];
/// `json`'s cost features.
const JSON_FEATURES: [&str; 2] = ["density", "values"];

/// One planned call.
#[derive(Debug, Clone)]
pub struct TextCall {
    /// Index into [`OPS`].
    pub op: usize,
    /// Its document.
    pub doc: Doc,
    /// Its run time measured alone (ns).
    pub run_ns: u64,
}

impl TextCall {
    /// Its true weight: heavy from [`HEAVY_NS`].
    pub fn truth(&self) -> Weight {
        if self.run_ns >= HEAVY_NS {
            Weight::Heavy
        } else {
            Weight::Light
        }
    }
}

fn word_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b\w+(?:ing|tion|ness)\b").expect("a valid pattern"))
}

/// `grep`: matches of the word pattern.
pub fn grep(doc: &[u8]) -> u64 {
    let text = std::str::from_utf8(doc).unwrap_or("");
    word_regex().find_iter(text).count() as u64
}

/// `gunzip`: the inflated length and a checksum of it.
pub fn gunzip(doc: &[u8]) -> u64 {
    let mut out = Vec::new();
    match flate2::read::GzDecoder::new(doc).read_to_end(&mut out) {
        Ok(n) => (n as u64) << 32 | fnv(&out) & 0xffff_ffff,
        Err(_) => u64::MAX,
    }
}

/// `json`: the number of values in the document.
pub fn json(doc: &[u8]) -> u64 {
    fn count(value: &serde_json::Value) -> u64 {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(count).sum::<u64>(),
            serde_json::Value::Object(map) => 1 + map.values().map(count).sum::<u64>(),
            _ => 1,
        }
    }
    serde_json::from_slice::<serde_json::Value>(doc).map_or(u64::MAX, |v| count(&v))
}

/// `checksum`: FNV-1a, 64 bits.
pub fn checksum(doc: &[u8]) -> u64 {
    fnv(doc)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The function of operation `op`.
pub fn run_op(op: usize, doc: &[u8]) -> u64 {
    match op {
        0 => grep(doc),
        1 => gunzip(doc),
        2 => json(doc),
        _ => checksum(doc),
    }
}

/// `grep`'s cost feature: the share of non-ASCII bytes in the first 512.
pub fn non_ascii(doc: &[u8]) -> f64 {
    let head = &doc[..doc.len().min(512)];
    head.iter().filter(|b| !b.is_ascii()).count() as f64 / head.len().max(1) as f64
}

/// `gunzip`'s cost feature: the decompressed length the gzip trailer states.
pub fn isize_of(doc: &[u8]) -> f64 {
    match doc.len().checked_sub(4) {
        Some(at) => f64::from(u32::from_le_bytes([doc[at], doc[at + 1], doc[at + 2], doc[at + 3]])),
        None => 0.0,
    }
}

/// `json`'s cost features: structural bytes per byte, and the deepest nesting, over the
/// first 1 KiB.
pub fn json_shape(doc: &[u8]) -> [f64; 2] {
    let head = &doc[..doc.len().min(1024)];
    let (mut structural, mut depth, mut deepest) = (0u32, 0i32, 0i32);
    for &b in head {
        match b {
            b'[' | b'{' => {
                structural += 1;
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => {
                structural += 1;
                depth -= 1;
            }
            b',' | b':' => structural += 1,
            _ => {}
        }
    }
    [f64::from(structural) / head.len().max(1) as f64, f64::from(deepest)]
}

/// A heavy-tailed length in [`SIZES`] (Pareto, shape 0.8).
fn length(rng: &mut SmallRng) -> usize {
    let u: f64 = rng.random_range(1e-9..1.0);
    let len = SIZES.0 as f64 * u.powf(-1.0 / 0.8);
    len.min(SIZES.1 as f64) as usize
}

const ASCII_WORDS: [&str; 16] = [
    "the", "running", "station", "kindness", "data", "engine", "core", "token", "reading",
    "motion", "lane", "batch", "darkness", "model", "queue", "learning",
];
const WORLD_WORDS: [&str; 12] = [
    "naïve",
    "Größe",
    "東京",
    "привет",
    "façade",
    "mañana",
    "Ελλάδα",
    "日本語",
    "crème",
    "señor",
    "über",
    "ありがとう",
];

fn text_doc(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    // Half the documents are plain ASCII, half mix in words from other scripts.
    let world_share = if rng.random::<bool>() { 0.0 } else { rng.random_range(0.05..0.5) };
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        let word = if rng.random::<f64>() < world_share {
            WORLD_WORDS[rng.random_range(0..WORLD_WORDS.len())]
        } else {
            ASCII_WORDS[rng.random_range(0..ASCII_WORDS.len())]
        };
        out.push_str(word);
        out.push(if rng.random_range(0..12) == 0 { '\n' } else { ' ' });
    }
    out.into_bytes()
}

fn gzip_doc(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    // Half repetitive (log lines: ~60× smaller compressed), half random bytes (stored).
    let raw: Vec<u8> = if rng.random::<bool>() {
        let target = (len * 60).min(8 << 20);
        let mut raw = Vec::with_capacity(target + 64);
        let mut line = 0u64;
        while raw.len() < target {
            let _ = writeln!(raw, "GET /api/v1/items/{} 200 OK", line % 97);
            line += 1;
        }
        raw
    } else {
        (0..len).map(|_| rng.random()).collect()
    };
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&raw).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn json_doc(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    out.push('[');
    if rng.random::<bool>() {
        // Flat: records with long text fields.
        while out.len() < len {
            let text_len = rng.random_range(200..2_000);
            let text: String = (0..text_len).map(|i| if i % 7 == 0 { ' ' } else { 'a' }).collect();
            let _ =
                write!(out, "{{\"id\":{},\"text\":\"{text}\"}},", rng.random_range(0..1_000_000));
        }
    } else {
        // Nested: small values several levels deep.
        while out.len() < len {
            let a: u32 = rng.random_range(0..100);
            let _ = write!(out, "[{a},[{},{{\"k\":[{a},1.5,true,null]}}],[[{a}]]],", a + 1);
        }
    }
    out.pop();
    out.push(']');
    out.into_bytes()
}

fn bytes_doc(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

/// The stream: `calls` calls, operations drawn uniformly, each on a fresh document,
/// each measured alone. `progress(done)` after each measured call.
pub fn plan(calls: usize, seed: u64, mut progress: impl FnMut(usize)) -> Vec<TextCall> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7e57);
    let docs: Vec<(usize, Doc)> = (0..calls)
        .map(|_| {
            let op = rng.random_range(0..OPS.len());
            let len = length(&mut rng);
            let doc = match op {
                0 => text_doc(&mut rng, len),
                1 => gzip_doc(&mut rng, len),
                2 => json_doc(&mut rng, len),
                _ => bytes_doc(&mut rng, len),
            };
            (op, Doc::from(doc))
        })
        .collect();
    docs.into_iter()
        .enumerate()
        .map(|(i, (op, doc))| {
            let run_ns = measure(op, &doc);
            progress(i + 1);
            TextCall { op, doc, run_ns }
        })
        .collect()
}

/// The best of two runs (ns).
fn measure(op: usize, doc: &[u8]) -> u64 {
    (0..2)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(run_op(op, std::hint::black_box(doc)));
            started.elapsed().as_nanos() as u64
        })
        .min()
        .unwrap_or(0)
}

/// The arrival rate (calls/s) that keeps `load` of `cores` busy with `plan`'s calls.
pub fn rate_for(plan: &[TextCall], load: f64, cores: usize) -> f64 {
    let mean_ns = plan.iter().map(|c| c.run_ns as f64).sum::<f64>() / plan.len().max(1) as f64;
    (load * cores as f64 * 1e9 / mean_ns.max(1.0)).max(1.0)
}

/// What the operations tell the engine about each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// The size hint only (the document's length).
    Size,
    /// The size hint and the cost features.
    Features,
    /// The call's index in the plan as its size hint, for the oracle (which knows each
    /// call's measured cost by its index).
    Index,
}

/// The four operations on one engine. Arguments carry their plan index, which only the
/// `Told::Index` size hint reads.
#[derive(Debug, Clone)]
pub struct TextOps {
    ops: Vec<Operation<(u64, Doc), u64>>,
}

impl TextOps {
    /// Registers the four operations, telling the engine what `told` says.
    pub fn register(engine: &Engine, told: Told) -> Result<Self, RegisterError> {
        let mut ops = Vec::with_capacity(OPS.len());
        for (op, name) in OPS.iter().enumerate() {
            let builder = engine.operation::<(u64, Doc)>(name, DECLARED[op]);
            let builder = match told {
                Told::Index => builder.size_hint(|(index, _)| *index),
                _ => builder.size_hint(|(_, doc)| doc.len() as u64),
            };
            let builder = match (told, op) {
                (Told::Features, 0) => {
                    builder.cost_features(GREP_FEATURES, |(_, d)| [non_ascii(d)])
                }
                (Told::Features, 1) => builder.cost_features(GUNZIP_FEATURES, |(_, d)| {
                    let isize = isize_of(d);
                    [isize, isize / d.len().max(1) as f64]
                }),
                (Told::Features, 2) => builder.cost_features(JSON_FEATURES, |(_, d)| {
                    // Structural bytes per byte, and the values that makes in the whole
                    // document (parsing cost follows values more than bytes).
                    let [density, _] = json_shape(d);
                    [density, density * d.len() as f64]
                }),
                _ => builder,
            };
            ops.push(builder.register(move |(_, doc): (u64, Doc)| run_op(op, &doc))?);
        }
        Ok(TextOps { ops })
    }
}

/// Submits `plan` at `rate` calls/s in 1 ms waves and waits for every call. Returns the
/// tokens' ids in plan order, when each was due (s since the start), the makespan,
/// failures and the results' digest.
pub fn drive(ops: &TextOps, plan: &[TextCall], rate: f64) -> TextRun {
    let per_wave = ((rate / 1_000.0).round() as usize).max(1);
    let watch = crate::freeze::FreezeWatch::start();
    let started = Instant::now();
    let mut tokens: Vec<Token<u64>> = Vec::with_capacity(plan.len());
    for (wave, calls) in plan.chunks(per_wave).enumerate() {
        let due = started + Duration::from_millis(wave as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for (k, call) in calls.iter().enumerate() {
            let index = (wave * per_wave + k) as u64;
            tokens.push(ops.ops[call.op].submit((index, Arc::clone(&call.doc))));
        }
        if tokens.last().is_some_and(|token| token.state() == TokenState::Rejected) {
            break; // shutting down: the rest would be rejected too
        }
    }
    let mut stall = Stall::new(&ops.ops);
    let (mut failures, mut lost, mut digest) = (0, 0, 0u64);
    let mut ids = Vec::with_capacity(tokens.len());
    for (token, call) in tokens.into_iter().zip(plan) {
        ids.push(token.id());
        match stall.wait(token) {
            Some(result) => {
                failures += usize::from(result.is_err());
                digest = digest.wrapping_add(digest_of(call.op, call.doc.len() as u64, &result));
            }
            None => lost += 1,
        }
    }
    let due_s = (0..plan.len()).map(|i| (i / per_wave) as f64 / 1e3).collect();
    let makespan = started.elapsed();
    TextRun { ids, due_s, makespan, failures, lost, digest, freezes: watch.stop() }
}

/// One pass of the stream.
#[derive(Debug, Clone)]
pub struct TextRun {
    /// Token ids, in plan order.
    pub ids: Vec<u64>,
    /// When each call was due (s since the start), in plan order.
    pub due_s: Vec<f64>,
    /// First submit → last result.
    pub makespan: Duration,
    /// Calls that did not complete (should be 0).
    pub failures: usize,
    /// Calls still unresolved once the engine had finished none for
    /// [`WAIT_BOUND`](crate::wait::WAIT_BOUND).
    pub lost: usize,
    /// Order-independent digest of every (operation, length, result).
    pub digest: u64,
    /// Freezes of the whole machine during the run (times since its start).
    pub freezes: crate::freeze::Freezes,
}

/// Builds an engine from `builder` (adding in-memory records), registers the operations
/// as `told` says, drives `plan`, drains, and scores the run by each call's truth.
pub fn run_with(
    builder: EngineBuilder,
    plan: &[TextCall],
    rate: f64,
    told: Told,
) -> Result<(RouterRun, u64), Box<dyn std::error::Error + Send + Sync>> {
    let engine = builder.log_in_memory().build()?;
    let ops = TextOps::register(&engine, told)?;
    let run = drive(&ops, plan, rate);
    engine.shutdown();
    let records = engine.take_records();
    let heavy_lanes = crate::mixed::heavy_lanes(&engine);
    let latency: HashMap<u64, (u64, u16)> = records
        .iter()
        .filter(|r| r.outcome == tokengate::telemetry::RecordOutcome::Completed)
        .map(|r| (r.token_id, (r.end_to_end_ns, r.lane)))
        .collect();
    let mut out = RouterRun {
        makespan: run.makespan,
        failures: run.failures + run.lost,
        freezes: run.freezes,
        rescues: engine.stats().rescues,
        ..RouterRun::default()
    };
    for ((id, call), due) in run.ids.iter().zip(plan).zip(&run.due_s) {
        let Some(&(ns, lane)) = latency.get(id) else { continue };
        match call.truth() {
            Weight::Heavy => {
                out.heavy.0 += 1;
                out.heavy.1 += usize::from(heavy_lanes.contains(&lane));
            }
            _ => {
                out.light_ns.push(ns);
                out.light_timed.push((*due, ns));
            }
        }
    }
    Ok((out, run.digest))
}

/// Places each call by its measured run time, found by its plan index (the size hint
/// under [`Told::Index`]): the upper bound no real router reaches.
#[derive(Debug)]
pub struct TextOracle {
    run_ns: Vec<u64>,
    routed: AtomicU64,
}

impl TextOracle {
    /// An oracle for `plan`.
    pub fn new(plan: &[TextCall]) -> Self {
        TextOracle { run_ns: plan.iter().map(|c| c.run_ns).collect(), routed: AtomicU64::new(0) }
    }
}

impl Router for TextOracle {
    fn route(&self, features: &Features) -> Placement {
        self.routed.fetch_add(1, Ordering::Relaxed);
        let predicted_ns = self.run_ns.get(features.arg_size as usize).copied().unwrap_or(HEAVY_NS);
        let (lanes, batch) = policy_for(predicted_ns.max(1));
        Placement::new(lanes, batch, predicted_ns, RouteSource::Heuristic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_and_every_function_reads_its_own() {
        let a = plan(40, 7, |_| {});
        let b = plan(40, 7, |_| {});
        assert!(a.iter().zip(&b).all(|(x, y)| x.op == y.op && x.doc == y.doc));
        for call in &a {
            assert_ne!(run_op(call.op, &call.doc), u64::MAX, "{} failed", OPS[call.op]);
            let len = call.doc.len() as u64;
            assert!(len >= 20 && len <= SIZES.1 * 2 + 4096, "{len}");
        }
        let gz = a.iter().find(|c| c.op == 1).expect("a gunzip call");
        assert_eq!(
            isize_of(&gz.doc) as u64,
            gunzip(&gz.doc) >> 32,
            "the trailer states the length"
        );
    }

    #[test]
    fn features_see_what_costs() {
        assert_eq!(non_ascii(b"plain text"), 0.0);
        assert!(non_ascii("naïve Größe".as_bytes()) > 0.1);
        let [flat, _] = json_shape(br#"[{"text":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]"#);
        let [nested, depth] = json_shape(br#"[[1,[2,{"k":[1,1.5,true,null]}],[[1]]]]"#);
        assert!(nested > 5.0 * flat && depth >= 4.0, "{flat} {nested} {depth}");
    }
}
