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

    /// Takes `n` permits (`n <= capacity`) without waiting.
    pub(crate) fn try_acquire(&self, n: usize) -> Result<(), RejectReason> {
        debug_assert!(n <= self.capacity);
        if self.is_closed() {
            return Err(RejectReason::ShuttingDown);
        }
        let mut current = self.in_flight.load(SeqCst);
        loop {
            if current + n > self.capacity {
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
            self.release(n);
            return Err(RejectReason::ShuttingDown);
        }
        Ok(())
    }

    /// Takes `n` permits, waiting while the gate is full. Fails only on shutdown.
    pub(crate) async fn acquire(&self, n: usize) -> Result<(), RejectReason> {
        loop {
            match self.try_acquire(n) {
                Err(RejectReason::Overloaded) => {}
                other => return other,
            }
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, SeqCst);
            let retry = self.try_acquire(n);
            if !matches!(retry, Err(RejectReason::Overloaded)) {
                self.waiters.fetch_sub(1, SeqCst);
                return retry;
            }
            notified.await;
            self.waiters.fetch_sub(1, SeqCst);
        }
    }

    /// Gives back `n` permits (a worker processed a batch of `n` tokens).
    pub(crate) fn release(&self, n: usize) {
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
        gate.try_acquire(3).unwrap();
        assert_eq!(gate.try_acquire(2), Err(RejectReason::Overloaded));
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || block_on(gate.acquire(4)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "acquire must wait while full");
        gate.release(3);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(gate.in_flight(), 4);
    }

    #[test]
    fn close_wakes_waiters_with_shutting_down() {
        let gate = Arc::new(Admission::new(1));
        gate.try_acquire(1).unwrap();
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || block_on(gate.acquire(1)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        gate.close();
        assert_eq!(waiter.join().unwrap(), Err(RejectReason::ShuttingDown));
        assert_eq!(gate.try_acquire(1), Err(RejectReason::ShuttingDown));
    }
}
