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

pub(crate) struct Admission {
    capacity: usize,
    in_flight: AtomicUsize,
    waiters: AtomicUsize,
    closed: AtomicBool,
    notify: Notify,
}

impl Admission {
    pub(crate) fn new(capacity: usize) -> Self {
        Admission {
            capacity,
            in_flight: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens admitted and not yet processed by a worker.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Takes `n` permits (`n <= capacity`, and within the operation's own limit)
    /// without waiting.
    pub(crate) fn try_acquire(&self, n: usize, op: &OpQueue) -> Result<(), RejectReason> {
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
        // Checked again after taking permits: shutdown waits for `in_flight` to reach
        // zero, so either it sees our permits or we see that it closed.
        if self.is_closed() {
            self.release(n, op);
            return Err(RejectReason::ShuttingDown);
        }
        Ok(())
    }

    /// Takes `n` permits, waiting while the gate (or the operation's limit) is full.
    /// Fails only on shutdown.
    pub(crate) async fn acquire(&self, n: usize, op: &OpQueue) -> Result<(), RejectReason> {
        loop {
            match self.try_acquire(n, op) {
                Err(RejectReason::Overloaded) => {}
                other => return other,
            }
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, SeqCst);
            let retry = self.try_acquire(n, op);
            if !matches!(retry, Err(RejectReason::Overloaded)) {
                self.waiters.fetch_sub(1, SeqCst);
                return retry;
            }
            notified.await;
            self.waiters.fetch_sub(1, SeqCst);
        }
    }

    /// Takes `n` permits even past capacity or after close: for retries of tokens that
    /// were already admitted (bounded by their attempt limits).
    pub(crate) fn force_acquire(&self, n: usize, op: &OpQueue) {
        op.queued.fetch_add(n, SeqCst);
        self.in_flight.fetch_add(n, SeqCst);
    }

    /// Gives back `n` permits (a worker processed a batch of `n` tokens).
    pub(crate) fn release(&self, n: usize, op: &OpQueue) {
        op.give_back(n);
        self.in_flight.fetch_sub(n, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Rejects all new work from now on and wakes every waiter so it can see that.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::block_on;
    use std::sync::Arc;

    #[test]
    fn bounded_then_waits_then_admits() {
        let gate = Arc::new(Admission::new(4));
        let op = Arc::new(OpQueue::new(None));
        gate.try_acquire(3, &op).unwrap();
        assert_eq!(gate.try_acquire(2, &op), Err(RejectReason::Overloaded));
        let waiter = {
            let (gate, op) = (Arc::clone(&gate), Arc::clone(&op));
            std::thread::spawn(move || block_on(gate.acquire(4, &op)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "acquire must wait while full");
        gate.release(3, &op);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(gate.in_flight(), 4);
    }

    #[test]
    fn close_wakes_waiters_with_shutting_down() {
        let gate = Arc::new(Admission::new(1));
        let op = Arc::new(OpQueue::new(None));
        gate.try_acquire(1, &op).unwrap();
        let waiter = {
            let (gate, op) = (Arc::clone(&gate), Arc::clone(&op));
            std::thread::spawn(move || block_on(gate.acquire(1, &op)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        gate.close();
        assert_eq!(waiter.join().unwrap(), Err(RejectReason::ShuttingDown));
        assert_eq!(gate.try_acquire(1, &op), Err(RejectReason::ShuttingDown));
    }

    #[test]
    fn an_operation_limit_holds_even_with_room_left() {
        let gate = Admission::new(100);
        let flood = OpQueue::new(Some(3));
        let other = OpQueue::new(None);
        gate.try_acquire(3, &flood).unwrap();
        assert_eq!(gate.try_acquire(1, &flood), Err(RejectReason::Overloaded));
        gate.try_acquire(50, &other).unwrap();
        gate.release(2, &flood);
        gate.try_acquire(2, &flood).unwrap();
        assert_eq!(gate.in_flight(), 53);
    }
}
