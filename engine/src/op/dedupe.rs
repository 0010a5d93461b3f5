//! Duplicate-call safety: calls with the same key while one is in flight wait for it
//! and get copies of its result instead of running again.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Arc, Mutex};

use crate::admission::{Admission, OpQueue, Permit};
use crate::error::TokenError;
use crate::token::Chunk;

pub(crate) struct Dedupe<A, R> {
    key: fn(&A) -> u64,
    copy: fn(&R) -> R,
    in_flight: Mutex<HashMap<u64, Flight<R>>>,
}

struct Flight<R> {
    /// The token that runs.
    leader: u64,
    /// The tokens waiting for its result, with their estimated bytes.
    followers: Vec<(Arc<Chunk<R>>, u32, usize)>,
}

impl<A, R> Dedupe<A, R> {
    pub(crate) fn new(key: fn(&A) -> u64, copy: fn(&R) -> R) -> Self {
        Dedupe { key, copy, in_flight: Mutex::new(HashMap::new()) }
    }

    /// Registers token `index` of `chunk` under `key`: true if it joins a call already in
    /// flight (and must not run), false if it leads a new one.
    pub(super) fn join(&self, key: u64, chunk: &Arc<Chunk<R>>, index: u32, bytes: usize) -> bool {
        let mut flights = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match flights.entry(key) {
            Entry::Occupied(mut flight) => {
                flight.get_mut().followers.push((Arc::clone(chunk), index, bytes));
                true
            }
            Entry::Vacant(slot) => {
                slot.insert(Flight { leader: chunk.id_of(index), followers: Vec::new() });
                false
            }
        }
    }

    /// Ends the flight `leader` leads, handing back its followers.
    fn land(&self, key: u64, leader: u64) -> Vec<(Arc<Chunk<R>>, u32, usize)> {
        let mut flights = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match flights.get(&key) {
            Some(flight) if flight.leader == leader => {
                flights.remove(&key).map(|f| f.followers).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// The dedupe key of `arg`.
    pub(super) fn key_of(&self, arg: &A) -> u64 {
        (self.key)(arg)
    }

    /// Ends the duplicate flight led by token `index` of `chunk`, resolving every
    /// waiting duplicate with `result()` and giving their permits back.
    pub(super) fn land_flight(
        &self,
        key: u64,
        chunk: &Chunk<R>,
        index: u32,
        result: impl Fn() -> Result<R, TokenError>,
        admission: &Admission,
        queue: &OpQueue,
    ) {
        let followers = self.land(key, chunk.id_of(index));
        if followers.is_empty() {
            return;
        }
        let mut permit = Permit::default();
        for (follower, slot, bytes) in &followers {
            follower.resolve_follower(*slot, result());
            permit += Permit::new(1, *bytes);
        }
        admission.release(permit, queue);
    }

    pub(super) fn copy_result(&self, result: &Result<R, TokenError>) -> Result<R, TokenError> {
        match result {
            Ok(value) => Ok((self.copy)(value)),
            Err(error) => Err(error.clone()),
        }
    }
}
