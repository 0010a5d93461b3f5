//! The service shape: an open-loop Poisson stream of requests, 95% cheap (hash 256
//! bytes, a few µs) and 5% expensive (generate, sort and hash a buffer whose length is
//! heavy-tailed: 2–20 ms, mean about 4.7 ms at the base length), each awaited by its
//! own task. `tokengate bench service` runs it on tokengate and its peers.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One request of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// When it arrives, ns after the stream starts.
    pub at_ns: u64,
    /// What it asks.
    pub call: Call,
}

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Hash 256 bytes made from this seed.
    Cheap(u64),
    /// Generate `len` numbers from `seed`, sort them and hash them.
    Expensive(Buffer),
}

/// The argument of [`expensive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Seed of the generated numbers.
    pub seed: u64,
    /// How many numbers.
    pub len: u32,
}

/// Share of expensive requests.
pub const EXPENSIVE_SHARE: f64 = 0.05;
/// Passes of the cheap hash over its 256 bytes (about 2 µs in all on a 2020s core).
const CHEAP_PASSES: usize = 8;
/// The Pareto tail of the expensive lengths: shape, and the cap (× the base length).
const TAIL_SHAPE: f64 = 1.5;
const TAIL_CAP: f64 = 10.0;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The cheap call: hashes 256 bytes made from `seed` (FNV-1a, a few passes).
pub fn cheap(seed: u64) -> u64 {
    let mut state = seed;
    let mut bytes = [0u8; 256];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    (0..CHEAP_PASSES).fold(0xcbf2_9ce4_8422_2325, |h, _| fnv1a(h, &bytes))
}

/// The expensive call: generates `len` numbers from `seed`, sorts them and hashes them.
pub fn expensive(buffer: Buffer) -> u64 {
    let mut state = buffer.seed;
    let mut numbers: Vec<u64> = (0..buffer.len).map(|_| splitmix(&mut state)).collect();
    numbers.sort_unstable();
    numbers.iter().fold(0xcbf2_9ce4_8422_2325, |h, n| fnv1a(h, &n.to_le_bytes()))
}

/// The size hint of an expensive call: its length.
pub fn buffer_len(buffer: &Buffer) -> u64 {
    u64::from(buffer.len)
}

/// The mean of the expensive lengths, in base lengths (the truncated Pareto's mean).
pub fn mean_tail() -> f64 {
    // E[min(X, cap)] for X ~ Pareto(shape, 1).
    let (a, c) = (TAIL_SHAPE, TAIL_CAP);
    a / (a - 1.0) * (1.0 - c.powf(1.0 - a)) + c * c.powf(-a)
}

/// The stream: `rate` requests a second for `secs` seconds, expensive buffers of
/// `base_len` numbers times a heavy-tailed factor (1–10×). Deterministic in `seed`.
pub fn stream(seed: u64, rate: f64, secs: f64, base_len: u32) -> Vec<Request> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut at = 0.0f64;
    let mut requests = Vec::with_capacity((rate * secs * 1.1) as usize + 16);
    loop {
        // Exponential gaps: a Poisson stream.
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        at += -u.ln() / rate;
        if at >= secs {
            return requests;
        }
        let call = if rng.random::<f64>() < EXPENSIVE_SHARE {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let factor = u.powf(-1.0 / TAIL_SHAPE).min(TAIL_CAP);
            Call::Expensive(Buffer {
                seed: rng.random(),
                len: (f64::from(base_len) * factor) as u32,
            })
        } else {
            Call::Cheap(rng.random())
        };
        requests.push(Request { at_ns: (at * 1e9) as u64, call });
    }
}

/// Runs a request's call on the calling thread.
pub fn run(call: Call) -> u64 {
    match call {
        Call::Cheap(seed) => cheap(seed),
        Call::Expensive(buffer) => expensive(buffer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_seeded_poisson_with_a_twentieth_expensive() {
        let a = stream(7, 10_000.0, 2.0, 1_000);
        assert_eq!(a, stream(7, 10_000.0, 2.0, 1_000));
        assert!((19_000..21_000).contains(&a.len()), "{}", a.len());
        let expensive = a.iter().filter(|r| matches!(r.call, Call::Expensive(_))).count();
        assert!((800..1_200).contains(&expensive), "{expensive}");
        assert!(a.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        let lens: Vec<u32> = a
            .iter()
            .filter_map(|r| match r.call {
                Call::Expensive(b) => Some(b.len),
                Call::Cheap(_) => None,
            })
            .collect();
        assert!(lens.iter().all(|&len| (1_000..=10_000).contains(&len)));
        let mean = lens.iter().map(|&l| f64::from(l)).sum::<f64>() / lens.len() as f64 / 1_000.0;
        assert!((mean - mean_tail()).abs() < 0.3, "mean {mean} vs {}", mean_tail());
    }

    #[test]
    fn calls_depend_on_their_argument_only() {
        assert_eq!(cheap(3), cheap(3));
        assert_ne!(cheap(3), cheap(4));
        let buffer = Buffer { seed: 9, len: 1_000 };
        assert_eq!(expensive(buffer), expensive(buffer));
        assert_ne!(expensive(buffer), expensive(Buffer { len: 1_001, ..buffer }));
    }
}
