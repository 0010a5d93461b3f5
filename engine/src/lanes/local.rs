//! A lane's local queue: batches submitted *from* the lane's own thread (work that
//! spawns work). The lane takes its newest first (LIFO, as rayon's `join` does), so a
//! call that waits on its children runs them before anything older and recursion depth
//! stays bounded; other lanes steal the oldest (FIFO), the work furthest from the
//! owner's current call. It belongs to the lane, not its thread: a replacement for a
//! stuck thread finds what the stuck one left.
//!
//! Each job is tagged with the shared queue it was meant for (light or heavy), so a
//! thief takes only what it may take. Under the pinned split the owner pushes only jobs
//! it may run itself; under the preemptive split it pushes every job it submits (a
//! waiting call runs its own children, of either set, newest first), and outside a
//! wait it takes only its own set's, leaving the rest to the other set's thieves.
//!
//! A mutex guards it, but only the thread that pushed or a thief with nothing else to
//! do takes it; a count per tag lets everyone else skip an empty queue with one load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub(super) struct LocalQueue<T> {
    jobs: Mutex<VecDeque<(usize, T)>>,
    /// Jobs per tag.
    len: [AtomicUsize; 2],
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        LocalQueue { jobs: Mutex::new(VecDeque::new()), len: Default::default() }
    }
}

impl<T> LocalQueue<T> {
    pub(super) fn push(&self, tag: usize, job: T) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push_back((tag, job));
        self.len[tag].fetch_add(1, Ordering::SeqCst);
    }

    /// The owner's pop: the newest job, whatever its tag.
    pub(super) fn pop_newest(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (tag, job) = jobs.pop_back()?;
        self.len[tag].fetch_sub(1, Ordering::SeqCst);
        Some(job)
    }

    /// The owner's pop outside a wait: the newest job tagged `tag`.
    pub(super) fn pop_newest_of(&self, tag: usize) -> Option<T> {
        self.take_of(tag, true)
    }

    /// A thief's pop: the oldest job tagged `tag`.
    pub(super) fn steal_oldest(&self, tag: usize) -> Option<T> {
        self.take_of(tag, false)
    }

    /// The newest or the oldest job tagged `tag`.
    fn take_of(&self, tag: usize, newest: bool) -> Option<T> {
        if !self.has(tag) {
            return None;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut tagged = jobs.iter().map(|(t, _)| *t == tag);
        let position = if newest { tagged.rposition(|t| t) } else { tagged.position(|t| t) }?;
        let (_, job) = jobs.remove(position)?;
        self.len[tag].fetch_sub(1, Ordering::SeqCst);
        Some(job)
    }

    /// Whether a job tagged `tag` waits here.
    pub(super) fn has(&self, tag: usize) -> bool {
        self.len[tag].load(Ordering::SeqCst) > 0
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.has(0) && !self.has(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_takes_the_newest_and_thieves_the_oldest_of_their_tag() {
        let queue = LocalQueue::default();
        assert!(queue.is_empty());
        assert_eq!(queue.pop_newest(), None::<u32>);
        for job in 1..=4 {
            queue.push(0, job);
        }
        queue.push(1, 10);
        assert_eq!(queue.pop_newest(), Some(10));
        assert_eq!(queue.steal_oldest(1), None, "nothing tagged 1 is left");
        assert_eq!(queue.pop_newest(), Some(4));
        assert_eq!(queue.steal_oldest(0), Some(1));
        queue.push(1, 11);
        assert_eq!(queue.steal_oldest(1), Some(11), "a thief skips other tags");
        assert_eq!(queue.pop_newest(), Some(3));
        assert_eq!(queue.steal_oldest(0), Some(2));
        assert!(queue.is_empty());
        assert_eq!(queue.steal_oldest(0), None);
    }
}
