//! How a stream's driver waits for its tokens, and when it calls one lost.

use std::time::{Duration, Instant};

use tokengate::{Operation, Token, TokenError};

/// How long a driver waits for the results still missing while the engine resolves
/// nothing at all (no token of the stream's operations finishes): longer than any of the
/// engine's own bounds on a token at their CLI defaults and limits (a remote result
/// timeout of at most 75 s, `run --result-timeout-s`, plus the link's outage and worker
/// graces), so a token counted lost truly never resolved. The clock restarts whenever a
/// token finishes: on a machine whose other programs keep every core busy a backlog may
/// take longer than this to drain, and slow is not lost.
pub const WAIT_BOUND: Duration = Duration::from_secs(90);

/// When a driver gives up on the tokens still waiting: [`WAIT_BOUND`] after the last
/// time it saw the stream's operations finish a token.
pub(crate) struct Stall<'a, A> {
    ops: &'a [Operation<A, u64>],
    seen: u64,
    give_up: Instant,
}

impl<'a, A: Send + 'static> Stall<'a, A> {
    pub(crate) fn new(ops: &'a [Operation<A, u64>]) -> Self {
        Stall { ops, seen: finished(ops), give_up: Instant::now() + WAIT_BOUND }
    }

    /// Waits for `token` until the operations have finished nothing for [`WAIT_BOUND`]
    /// (looking every second); `None`: lost.
    pub(crate) fn wait(&mut self, mut token: Token<u64>) -> Option<Result<u64, TokenError>> {
        loop {
            let left = self.give_up.saturating_duration_since(Instant::now());
            match token.wait_timeout(left.min(Duration::from_secs(1))) {
                Ok(result) => return Some(result),
                Err(waiting) => token = waiting,
            }
            let finished = finished(self.ops);
            if finished != self.seen {
                self.seen = finished;
                self.give_up = Instant::now() + WAIT_BOUND;
            } else if left.is_zero() {
                return None;
            }
        }
    }
}

/// Tokens of `ops` that have reached a terminal state.
fn finished<A: Send + 'static>(ops: &[Operation<A, u64>]) -> u64 {
    ops.iter().map(|op| op.stats().finished()).sum()
}
