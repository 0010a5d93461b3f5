//! Token ids, and finding a waiting token by its id, for the control port's
//! `cancel {token}`.
//!
//! Ids are issued in ascending order, a chunk's worth at a time: a cancel of "everything
//! admitted so far" is a cancel of every id below [`TokenIndex::next_id`].
//!
//! Every chunk of slots admitted by an operation is listed here under its first id
//! until the chunk is dropped (its last token handle and batch are gone). A cancel looks
//! the id up, upgrades the chunk and cancels the slot directly: it either wins the
//! slot's CAS (the token was waiting: `Cancelled { by: Control }`, its lane later skips
//! it) or learns at once that the token is running, finished or unknown. Nothing is left
//! pending for the lanes to check, so a cancel costs the hot path nothing afterwards.
//!
//! Listing costs one lock of one of 64 shards per chunk (one chunk serves up to 4,096
//! tokens of a `submit_many`); the lookup, on the control path only, scans the shards.
//! The maps hash with `rustc-hash` (Fx) rather than std's SipHash: their keys are the
//! engine's own sequential ids, never input, so there is no flooding to defend against,
//! and SipHash cost a single call ~280 instructions of its ~2,000.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

use rustc_hash::FxHashMap as HashMap;

use crate::error::CancelSource;

const SHARDS: usize = 64;

/// A chunk that can cancel one of its waiting tokens by id.
pub(crate) trait CancelById: Send + Sync {
    /// Cancels token `id` if it is in this chunk and waiting; false otherwise.
    fn cancel_id(&self, id: u64, by: CancelSource) -> bool;
}

type Entry = (u32, Weak<dyn CancelById>);

/// The next id to issue, and the chunks alive by first id.
pub(crate) struct TokenIndex {
    next_id: AtomicU64,
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
}

impl Default for TokenIndex {
    fn default() -> Self {
        TokenIndex {
            next_id: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
        }
    }
}

impl TokenIndex {
    /// Reserves `len` consecutive ids and returns the first.
    #[inline]
    pub(crate) fn issue(&self, len: u64) -> u64 {
        self.next_id.fetch_add(len, Ordering::Relaxed)
    }

    /// The id the next token will get: every token admitted so far has a smaller one.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    fn shard(&self, base_id: u64) -> &Mutex<HashMap<u64, Entry>> {
        // Chunks start at ids a chunk length apart (often a power of two): mix the bits.
        let mixed = base_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.shards[mixed as usize % SHARDS]
    }

    pub(crate) fn insert(&self, base_id: u64, len: u32, chunk: Weak<dyn CancelById>) {
        self.shard(base_id).lock().unwrap_or_else(|e| e.into_inner()).insert(base_id, (len, chunk));
    }

    pub(crate) fn remove(&self, base_id: u64) {
        self.shard(base_id).lock().unwrap_or_else(|e| e.into_inner()).remove(&base_id);
    }

    /// Cancels token `id` if it is waiting. False if it is running, finished, already
    /// cancelled or unknown.
    pub(crate) fn cancel(&self, id: u64, by: CancelSource) -> bool {
        for shard in self.shards.iter() {
            let found = shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(&base, (len, _))| base <= id && id < base + u64::from(*len))
                .map(|(_, (_, chunk))| chunk.clone());
            if let Some(chunk) = found {
                // Upgraded outside the lock: dropping the last strong reference here
                // would take the same shard's lock to unlist the chunk.
                return chunk.upgrade().is_some_and(|chunk| chunk.cancel_id(id, by));
            }
        }
        false
    }

    /// Chunks listed now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::token::{Chunk, Resolutions, Start, TokenState};

    struct NoLanes;

    impl crate::token::Outside for NoLanes {
        fn help(&self, _: &dyn Fn() -> bool) -> bool {
            false
        }
    }

    #[test]
    fn cancels_waiting_tokens_and_refuses_the_rest() {
        let index = Arc::new(TokenIndex::default());
        let resolutions = Arc::new(Resolutions::default());
        let outside: Arc<dyn crate::token::Outside> = Arc::new(NoLanes);
        let chunk = Chunk::<u32>::listed(
            100,
            4,
            Arc::clone(&resolutions),
            &index,
            &outside,
            Start::Submitted,
        );
        let tokens: Vec<_> = (0..4).map(|i| chunk.token(i)).collect();
        assert_eq!(index.len(), 1);
        assert!(index.cancel(102, CancelSource::Control));
        assert_eq!(tokens[2].state(), TokenState::Cancelled);
        assert!(!index.cancel(102, CancelSource::Control), "already cancelled");
        assert!(!index.cancel(99, CancelSource::Control), "unknown id");
        assert!(!index.cancel(104, CancelSource::Control), "past the chunk");
        // A finished token is not waiting.
        assert!(chunk.slot(1).claim(1));
        chunk.slot(1).finish(1, Ok(7));
        assert!(!index.cancel(101, CancelSource::Control));
        drop(tokens);
        drop(chunk);
        assert_eq!(index.len(), 0, "a dropped chunk is unlisted");
        assert!(!index.cancel(100, CancelSource::Control));
    }
}
