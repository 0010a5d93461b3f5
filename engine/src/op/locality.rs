//! Locality: calls with equal keys run on one lane while any of them is in flight.
//!
//! A key's home is picked in turn among the lanes of its routed set and kept while
//! calls with that key are queued or running; such calls are queued on that lane alone
//! (`Lanes::push_to`), one per batch.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::lanes::Lanes;
use crate::placement::LaneSet;

/// Key → (lane, calls in flight), and the next lane to hand out.
#[derive(Default)]
pub(crate) struct Homes(Mutex<HomeMap>);

#[derive(Default)]
struct HomeMap {
    by_key: HashMap<u64, (usize, usize)>,
    next: usize,
}

impl Homes {
    /// The lane that runs calls with `key` (the one already running some, or the next
    /// lane of `set` in turn), counting one more call in flight there.
    pub(super) fn enter(&self, key: u64, lanes: &Lanes, set: LaneSet) -> usize {
        let mut homes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let HomeMap { by_key, next } = &mut *homes;
        let home = by_key.entry(key).or_insert_with(|| {
            let choices: Vec<usize> = lanes.lanes_of(set).collect();
            *next += 1;
            (choices[(*next - 1) % choices.len()], 0)
        });
        home.1 += 1;
        home.0
    }

    /// One call with `key` left its lane.
    fn leave(&self, key: u64) {
        let mut homes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(home) = homes.by_key.get_mut(&key) {
            home.1 -= 1;
            if home.1 == 0 {
                homes.by_key.remove(&key);
            }
        }
    }
}

/// Counts a call out of its key's lane when its batch item is done, on every path out
/// of the loop.
pub(super) struct HomeGuard<'a> {
    homes: &'a Homes,
    key: Option<u64>,
}

impl<'a> HomeGuard<'a> {
    /// `key`: the call's locality key, if its operation has one.
    pub(super) fn new(homes: &'a Homes, key: Option<u64>) -> Self {
        HomeGuard { homes, key }
    }
}

impl Drop for HomeGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.homes.leave(key);
        }
    }
}
