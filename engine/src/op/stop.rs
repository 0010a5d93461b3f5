//! Beginning a stop: what the engine, its [`StopHandle`](crate::StopHandle) and the
//! control port's `shutdown` share.

use std::sync::Arc;

use super::env::RemoteSlot;
use super::registry::Registry;
use crate::admission::Admission;
use crate::lanes::Lanes;

/// How [`Engine::shutdown_with`](crate::Engine::shutdown_with) treats admitted work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish everything admitted.
    Drain,
    /// Cancel everything waiting; wait only for running calls.
    Abort,
}

/// The parts a stop closes: admission, the lanes, the remote link and the paused
/// operations.
#[derive(Clone)]
pub(crate) struct Stopper {
    pub(crate) admission: Arc<Admission>,
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) remote: RemoteSlot,
    pub(crate) registry: Arc<Registry>,
}

impl Stopper {
    /// Rejects new work from now on and, for [`Shutdown::Abort`], cancels queued work.
    /// Escalating a drain to an abort is allowed; the reverse is not.
    pub(crate) fn begin(&self, mode: Shutdown) {
        if mode == Shutdown::Abort {
            // Before the gate closes: closing wakes the retries waiting out a backoff,
            // which an abort must find aborting (they are cancelled, not run).
            self.lanes.begin_abort();
            if let Some(remote) = self.remote.get() {
                remote.close();
            }
        }
        self.admission.close();
        // Paused work is admitted work: a drain runs it, an abort cancels it.
        self.registry.set_paused_all(false, &self.lanes);
        self.lanes.begin_shutdown();
    }

    /// True once a stop has begun.
    pub(crate) fn begun(&self) -> bool {
        self.admission.is_closed()
    }
}
