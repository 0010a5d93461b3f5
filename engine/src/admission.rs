//! Admission: the bounded gate every token passes before it is queued on a lane.
//!
//! Capacity is a count of admitted tokens a worker has not yet processed. Taking
//! permits is one compare-and-swap per `submit_many` chunk; workers give them back
//! once per batch. When the gate is full an async caller waits on a tokio `Notify`
//! and a sync caller parks its thread on the same future; `try_*` callers get
//! `Rejected { Overloaded }`.
//!
//! The lost-wakeup argument: a waiter registers with `Notify` (`enable`), then bumps
//! `waiters`, then re-checks the count; a releaser lowers the count, then reads
//! `waiters`. All four are `SeqCst`, so either the waiter sees the freed room or the
//! releaser sees the waiter and notifies it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

use crate::error::RejectReason;

/// One waiter counted in `Admission::waiters` while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A per-operation limit on admitted-but-unprocessed tokens, so one flooding
/// operation cannot take all of the engine's capacity.
#[derive(Debug, Default)]
pub(crate) struct OpQueue {
    queued: AtomicUsize,
    limit: Option<usize>,
}

impl OpQueue {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        OpQueue { queued: AtomicUsize::new(0), limit }
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }

    fn try_take(&self, n: usize) -> bool {
        let Some(limit) = self.limit else {
            self.queued.fetch_add(n, SeqCst);
            return true;
        };
        let mut current = self.queued.load(SeqCst);
        loop {
            if current + n > limit {
                return false;
            }
            match self.queued.compare_exchange_weak(current, current + n, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn give_back(&self, n: usize) {
        self.queued.fetch_sub(n, SeqCst);
    }
}

/// What one admission takes: tokens, and their estimated memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Permit {
    pub(crate) tokens: usize,
    pub(crate) bytes: usize,
}

impl Permit {
    pub(crate) fn new(tokens: usize, bytes: usize) -> Self {
        Permit { tokens, bytes }
    }
}

impl std::ops::AddAssign for Permit {
    fn add_assign(&mut self, other: Permit) {
        self.tokens += other.tokens;
        self.bytes += other.bytes;
    }
}

pub(crate) struct Admission {
    capacity: usize,
    in_flight: AtomicUsize,
    /// Estimated bytes held by admitted, unprocessed tokens, and their bound.
    memory: AtomicUsize,
    memory_capacity: usize,
    waiters: AtomicUsize,
    closed: AtomicBool,
    notify: Notify,
    /// Permits held by batches one of whose calls is blocked in a wait on a lane (it
    /// waits for a token, or for room): work that cannot finish before something else
    /// does.
    held_by_waits: AtomicUsize,
    /// Notified once, at close.
    closing: Notify,
}

impl Admission {
    pub(crate) fn new(capacity: usize, memory_capacity: usize) -> Self {
        Admission {
            capacity,
            in_flight: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
            memory_capacity,
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            held_by_waits: AtomicUsize::new(0),
            closing: Notify::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Estimated bytes held by admitted, unprocessed tokens.
    pub(crate) fn memory(&self) -> usize {
        self.memory.load(SeqCst)
    }

    /// Takes `bytes` of the memory budget. A single admission larger than the whole
    /// budget is let in when nothing else is held, so it cannot wait forever.
    fn try_take_memory(&self, bytes: usize) -> bool {
        if self.memory_capacity == usize::MAX {
            self.memory.fetch_add(bytes, SeqCst);
            return true;
        }
        let mut current = self.memory.load(SeqCst);
        loop {
            let fits = current + bytes <= self.memory_capacity || current == 0;
            if !fits {
                return false;
            }
            match self.memory.compare_exchange_weak(current, current + bytes, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Tokens admitted and not yet processed by a worker.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Takes a permit (`tokens <= capacity`) within the engine's token and memory
    /// bounds and the operation's own limit, without waiting.
    pub(crate) fn try_acquire(&self, permit: Permit, op: &OpQueue) -> Result<(), RejectReason> {
        let n = permit.tokens;
        debug_assert!(n <= self.capacity);
        if self.is_closed() {
            return Err(RejectReason::ShuttingDown);
        }
        if !op.try_take(n) {
            return Err(RejectReason::Overloaded);
        }
        let mut current = self.in_flight.load(SeqCst);
        loop {
            if current + n > self.capacity {
                op.give_back(n);
                return Err(RejectReason::Overloaded);
            }
            match self.in_flight.compare_exchange_weak(current, current + n, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if !self.try_take_memory(permit.bytes) {
            self.release(Permit::new(n, 0), op);
            return Err(RejectReason::Overloaded);
        }
        // Checked again after taking permits: shutdown waits for `in_flight` to reach
        // zero, so either it sees our permits or we see that it closed.
        if self.is_closed() {
            self.release(permit, op);
            return Err(RejectReason::ShuttingDown);
        }
        Ok(())
    }

    /// Takes a permit, waiting while the gate (or the operation's limit) is full.
    /// Fails only on shutdown.
    pub(crate) async fn acquire(&self, permit: Permit, op: &OpQueue) -> Result<(), RejectReason> {
        loop {
            match self.try_acquire(permit, op) {
                Err(RejectReason::Overloaded) => {}
                other => return other,
            }
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            // Counted out on every way out, a drop of this future included.
            let _waiting = Waiting::count(&self.waiters);
            let retry = self.try_acquire(permit, op);
            if !matches!(retry, Err(RejectReason::Overloaded)) {
                return retry;
            }
            notified.await;
        }
    }

    /// A call of a batch holding `held` permits blocks in a wait on a lane.
    pub(crate) fn wait_begins(&self, held: usize) {
        self.held_by_waits.fetch_add(held, SeqCst);
    }

    /// That wait is over.
    pub(crate) fn wait_ends(&self, held: usize) {
        self.held_by_waits.fetch_sub(held, SeqCst);
    }

    /// Whether every permit taken is held by a batch whose call waits: nothing admitted
    /// can finish until something more is admitted (a recursion deeper than the
    /// capacity), so a wait for room would be for ever. Paused, queued, running and
    /// remote work all hold permits that count against this.
    pub(crate) fn all_held_by_waits(&self) -> bool {
        self.in_flight.load(SeqCst) <= self.held_by_waits.load(SeqCst)
    }

    /// Resolves once the gate has closed (a shutdown began).
    pub(crate) async fn closed(&self) {
        let notified = self.closing.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// Takes a permit even past the bounds or after close: for retries of tokens that
    /// were already admitted (bounded by their attempt limits).
    pub(crate) fn force_acquire(&self, permit: Permit, op: &OpQueue) {
        op.queued.fetch_add(permit.tokens, SeqCst);
        self.in_flight.fetch_add(permit.tokens, SeqCst);
        self.memory.fetch_add(permit.bytes, SeqCst);
    }

    /// Gives a permit back (a worker processed a batch).
    pub(crate) fn release(&self, permit: Permit, op: &OpQueue) {
        op.give_back(permit.tokens);
        self.memory.fetch_sub(permit.bytes, SeqCst);
        self.in_flight.fetch_sub(permit.tokens, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Rejects all new work from now on and wakes every waiter so it can see that.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        self.notify.notify_waiters();
        self.closing.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::block_on;
    use std::sync::Arc;

    #[test]
    fn bounded_then_waits_then_admits() {
        let gate = Arc::new(Admission::new(4, usize::MAX));
        let op = Arc::new(OpQueue::new(None));
        gate.try_acquire(Permit::new(3, 0), &op).unwrap();
        assert_eq!(gate.try_acquire(Permit::new(2, 0), &op), Err(RejectReason::Overloaded));
        let waiter = {
            let (gate, op) = (Arc::clone(&gate), Arc::clone(&op));
            std::thread::spawn(move || block_on(gate.acquire(Permit::new(4, 0), &op)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "acquire must wait while full");
        gate.release(Permit::new(3, 0), &op);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(gate.in_flight(), 4);
    }

    #[test]
    fn close_wakes_waiters_with_shutting_down() {
        let gate = Arc::new(Admission::new(1, usize::MAX));
        let op = Arc::new(OpQueue::new(None));
        gate.try_acquire(Permit::new(1, 0), &op).unwrap();
        let waiter = {
            let (gate, op) = (Arc::clone(&gate), Arc::clone(&op));
            std::thread::spawn(move || block_on(gate.acquire(Permit::new(1, 0), &op)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        gate.close();
        assert_eq!(waiter.join().unwrap(), Err(RejectReason::ShuttingDown));
        assert_eq!(gate.try_acquire(Permit::new(1, 0), &op), Err(RejectReason::ShuttingDown));
    }

    #[test]
    fn an_operation_limit_holds_even_with_room_left() {
        let gate = Admission::new(100, usize::MAX);
        let flood = OpQueue::new(Some(3));
        let other = OpQueue::new(None);
        gate.try_acquire(Permit::new(3, 0), &flood).unwrap();
        assert_eq!(gate.try_acquire(Permit::new(1, 0), &flood), Err(RejectReason::Overloaded));
        gate.try_acquire(Permit::new(50, 0), &other).unwrap();
        gate.release(Permit::new(2, 0), &flood);
        gate.try_acquire(Permit::new(2, 0), &flood).unwrap();
        assert_eq!(gate.in_flight(), 53);
    }

    #[test]
    fn memory_is_bounded_too_but_an_oversize_call_gets_in_alone() {
        let gate = Admission::new(100, 1_000);
        let op = OpQueue::new(None);
        gate.try_acquire(Permit::new(1, 800), &op).unwrap();
        assert_eq!(gate.try_acquire(Permit::new(1, 300), &op), Err(RejectReason::Overloaded));
        assert_eq!(gate.in_flight(), 1, "a refused permit takes nothing");
        gate.try_acquire(Permit::new(1, 200), &op).unwrap();
        gate.release(Permit::new(2, 1_000), &op);
        assert_eq!(gate.memory(), 0);
        gate.try_acquire(Permit::new(1, 5_000), &op).expect("alone, an oversize call is admitted");
        assert_eq!(gate.try_acquire(Permit::new(1, 1), &op), Err(RejectReason::Overloaded));
    }
}
