//! Model-checks the state machine: every interleaving of a worker, a deadline, a
//! retry and a cancel resolves the token exactly once, and the value it carries is
//! the one the winner wrote; a waiter that marks the slot is always woken.

use std::sync::Arc;

use super::*;

fn resolutions(chunk: &Chunk<u32>) -> u64 {
    let r = chunk.resolutions.as_ref().unwrap();
    r.cancelled.load(std::sync::atomic::Ordering::Relaxed)
        + r.timed_out.load(std::sync::atomic::Ordering::Relaxed)
}

/// One token's chunk, counting resolutions, and its handle.
fn one_token() -> (Arc<Chunk<u32>>, Token<u32>) {
    let chunk = Chunk::<u32>::new(0, 1, Some(Arc::new(Resolutions::default())));
    let token = chunk.token(0);
    (chunk, token)
}

/// A lane running the token's call on the short path: claimed straight into
/// `WRITING`, published with 7 (or skipped if it was resolved first).
fn short_path_worker(chunk: &Arc<Chunk<u32>>) -> loom::thread::JoinHandle<Outcome> {
    let chunk = Arc::clone(chunk);
    loom::thread::spawn(move || {
        let slot = chunk.slot(0);
        if slot.claim_to_write(1) {
            // SAFETY: `claim_to_write` moved the slot into WRITING for attempt 1.
            unsafe { slot.publish(1, Ok(7)) }
        } else {
            Outcome::Skipped
        }
    })
}

#[test]
fn loom_worker_deadline_and_cancel() {
    loom::model(|| {
        let (chunk, token) = one_token();
        let worker = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || {
                if chunk.slot(0).claim(1) {
                    chunk.slot(0).finish(1, Ok(7))
                } else {
                    Outcome::Skipped
                }
            })
        };
        let timer = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || chunk.expire(0, 1, false))
        };
        let cancelled = token.cancel();
        let worked = worker.join().unwrap() == Outcome::Completed;
        let timed_out = matches!(timer.join().unwrap(), Expired::TimedOut { .. });
        assert_eq!(u64::from(worked) + resolutions(&chunk), 1, "exactly one resolution");
        match token.wait() {
            Ok(7) => assert!(worked),
            Err(TokenError::TimedOut) => assert!(timed_out),
            Err(TokenError::Cancelled { .. }) => assert!(cancelled),
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn loom_short_path_against_cancel() {
    loom::model(|| {
        let (chunk, token) = one_token();
        let worker = short_path_worker(&chunk);
        let cancelled = token.cancel();
        let worked = worker.join().unwrap() == Outcome::Completed;
        assert_eq!(u64::from(worked) + resolutions(&chunk), 1, "exactly one resolution");
        assert_ne!(worked, cancelled);
        match token.wait() {
            Ok(7) => assert!(worked),
            Err(TokenError::Cancelled { .. }) => assert!(cancelled),
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// A waiter that registers while a lane resolves the token is woken (loom reports a
/// deadlock if a wake-up is lost), also when the lane finds it cancelled. (A third
/// thread cancelling concurrently made the model too large to finish.)
#[test]
fn loom_waiter_against_publish() {
    for cancel_first in [false, true] {
        loom::model(move || {
            let (chunk, token) = one_token();
            if cancel_first {
                assert!(token.cancel());
            }
            let worker = short_path_worker(&chunk);
            let result = loom::future::block_on(token);
            let worked = worker.join().unwrap() == Outcome::Completed;
            assert_ne!(worked, cancel_first);
            match result {
                Ok(7) => assert!(worked),
                Err(TokenError::Cancelled { .. }) => assert!(cancel_first),
                other => panic!("unexpected {other:?}"),
            }
        });
    }
}

/// A cancel racing the waiter's mark: the waiter is woken with the cancellation.
#[test]
fn loom_waiter_against_cancel() {
    loom::model(|| {
        let (chunk, token) = one_token();
        let canceller = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || chunk.cancel(0, CancelSource::Caller))
        };
        let result = loom::future::block_on(token);
        assert!(canceller.join().unwrap());
        assert_eq!(result, Err(TokenError::Cancelled { by: CancelSource::Caller }));
    });
}

/// A deadline that moves a running attempt on (retry on timeout) keeps the mark:
/// the next attempt's result wakes the waiter.
#[test]
fn loom_waiter_across_a_deadline_retry() {
    loom::model(|| {
        let (chunk, token) = one_token();
        let worker = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || {
                assert!(chunk.slot(0).claim(1));
                assert_eq!(chunk.expire(0, 1, true), Expired::Retried { running: true });
                assert!(chunk.slot(0).claim(2));
                chunk.slot(0).finish(2, Ok(5))
            })
        };
        assert_eq!(loom::future::block_on(token), Ok(5));
        assert_eq!(worker.join().unwrap(), Outcome::Completed);
    });
}

/// The waiter's mark survives every transition of the full path (claim, a failed
/// attempt handed to the next, its claim and finish): the final resolution wakes it.
#[test]
fn loom_waiter_across_a_retry() {
    loom::model(|| {
        let (chunk, token) = one_token();
        let worker = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || {
                let slot = chunk.slot(0);
                assert!(slot.claim(1));
                assert!(slot.retry(1));
                assert!(slot.claim(2));
                slot.finish(2, Ok(2))
            })
        };
        assert_eq!(loom::future::block_on(token), Ok(2));
        assert_eq!(worker.join().unwrap(), Outcome::Completed);
    });
}

#[test]
fn loom_stale_attempt_against_retry() {
    loom::model(|| {
        let (chunk, token) = one_token();
        assert!(chunk.slot(0).claim(1));
        // The deadline of attempt 1 moves the token to attempt 2 while attempt 1 is
        // still running; a second lane runs attempt 2; attempt 1 returns late.
        let timer = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || chunk.expire(0, 1, true))
        };
        let second = {
            let chunk = Arc::clone(&chunk);
            loom::thread::spawn(move || {
                if chunk.slot(0).claim(2) {
                    chunk.slot(0).finish(2, Ok(2))
                } else {
                    Outcome::Skipped
                }
            })
        };
        let late = chunk.slot(0).finish(1, Ok(1));
        let retried = matches!(timer.join().unwrap(), Expired::Retried { .. });
        let second = second.join().unwrap();
        // Either attempt 1 finished first (the deadline did nothing), or the retry
        // happened and attempt 1's value was dropped.
        assert_ne!(retried, late == Outcome::Completed);
        if !retried {
            assert_eq!(token.wait(), Ok(1));
        } else if second == Outcome::Completed {
            assert_eq!(token.wait(), Ok(2));
        } else {
            // Attempt 2 was claimed before the retry: it stays queued for its lane.
            assert_eq!(token.state(), TokenState::Admitted);
        }
    });
}
