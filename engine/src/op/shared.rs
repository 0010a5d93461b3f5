//! What every operation reaches of its engine: admission, lanes, router, the registry of
//! operations, the token index and the engine's runtime. It belongs to the operations'
//! layer: the control port and the engine above reach the operations through it.
//!
//! Built by `engine::builder` once everything is validated; shared (`Arc`) by the
//! engine, its operations, their batches and the controller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::control::OpControl;
use crate::adapt::Adapter;
use crate::admission::Admission;
use crate::error::RegisterError;
use crate::features::OpFeatures;
use crate::lanes::Lanes;
use crate::remote::RemotePort;
use crate::remote::RemoteServe;
use crate::router::Router;
use crate::telemetry::histogram::LatencyHistogram;
use crate::token::{Outside, TokenIndex};

pub(crate) struct Shared {
    pub(crate) admission: Arc<Admission>,
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) router: Arc<dyn Router>,
    pub(crate) next_token_id: AtomicU64,
    /// Tokens per `submit_many` chunk: one slot allocation and one permit CAS each.
    pub(crate) chunk_len: usize,
    /// The engine's runtime: deadlines and retry backoffs run on it.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Waiting tokens by id, for cancels by id.
    pub(crate) tokens: Arc<TokenIndex>,
    /// The lanes, as outside threads waiting on a token may help them.
    pub(crate) outside: Arc<dyn Outside>,
    /// Op id → name, for telemetry.
    pub(crate) op_names: crate::features::OpNames,
    names: Mutex<HashMap<String, u32>>,
    /// Every operation, for manual control (index = op id).
    ops: RwLock<Vec<Arc<dyn OpControl>>>,
    /// Every operation is paused (operations registered meanwhile start paused).
    paused_all: AtomicBool,
    /// Online adaptation, when on.
    pub(crate) adapter: Option<Arc<Adapter>>,
    /// The link to remote workers, when the engine has one.
    pub(crate) remote: OnceLock<Arc<dyn RemotePort>>,
    /// The remote-capable operations, which this engine serves when it is a worker.
    served: RwLock<Vec<Arc<dyn RemoteServe>>>,
    /// End-to-end latency of every token, by the lane set it ran on (`LaneSet::index`
    /// order: light, heavy, remote): what the dashboard's p99 chart shows.
    pub(crate) set_latency: [LatencyHistogram; 3],
}

impl Shared {
    pub(crate) fn new(
        admission: Arc<Admission>,
        lanes: Arc<Lanes>,
        router: Arc<dyn Router>,
        runtime: tokio::runtime::Handle,
        op_names: crate::features::OpNames,
        chunk_len: usize,
        adapter: Option<Arc<Adapter>>,
    ) -> Self {
        Shared {
            outside: Arc::clone(&lanes) as Arc<dyn Outside>,
            admission,
            lanes,
            router,
            next_token_id: AtomicU64::new(1),
            chunk_len,
            runtime,
            tokens: Arc::new(TokenIndex::default()),
            op_names,
            names: Mutex::new(HashMap::new()),
            ops: RwLock::new(Vec::new()),
            paused_all: AtomicBool::new(false),
            adapter,
            remote: OnceLock::new(),
            served: RwLock::new(Vec::new()),
            set_latency: Default::default(),
        }
    }

    /// Drops the registries' handles on the operations, which hold this `Shared`
    /// themselves: without it an engine's state, and every operation's, would outlive
    /// the engine in a reference cycle (found by memcheck, `tests/memcheck.sh`). After
    /// it, the control port and a worker see no operations; `Operation` handles still
    /// held by the user keep their own state alive until dropped.
    pub(crate) fn clear_registries(&self) {
        let ops = std::mem::take(&mut *self.ops.write().unwrap_or_else(|e| e.into_inner()));
        let served = std::mem::take(&mut *self.served.write().unwrap_or_else(|e| e.into_inner()));
        drop((ops, served));
    }

    /// Lists a remote-capable operation.
    pub(crate) fn add_served(&self, op: Arc<dyn RemoteServe>) {
        self.served.write().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// The remote-capable operations, in registration order.
    pub(crate) fn served(&self) -> Vec<Arc<dyn RemoteServe>> {
        self.served.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reserves `name` and gives it the next operation id.
    pub(crate) fn claim_name(&self, name: &str, cost: &[String]) -> Result<u32, RegisterError> {
        if name.is_empty() || name.len() > 64 {
            return Err(RegisterError::BadName(name.to_string()));
        }
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains_key(name) {
            return Err(RegisterError::DuplicateName(name.to_string()));
        }
        let id = names.len() as u32;
        names.insert(name.to_string(), id);
        let op = OpFeatures { name: name.to_string(), cost: cost.to_vec() };
        self.op_names.write().unwrap_or_else(|e| e.into_inner()).push(op);
        Ok(id)
    }

    /// Lists a registered operation for manual control.
    pub(crate) fn add_op(&self, op: Arc<dyn OpControl>) {
        let mut ops = self.ops.write().unwrap_or_else(|e| e.into_inner());
        // Under the registry's lock, so a concurrent pause-all either sees this
        // operation or has set the flag read here.
        if self.paused_all() {
            op.control().set_paused(true, &self.lanes);
        }
        ops.push(op);
    }

    /// Every operation, in registration order.
    pub(crate) fn ops(&self) -> Vec<Arc<dyn OpControl>> {
        self.ops.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The operation named `name`.
    pub(crate) fn op(&self, name: &str) -> Option<Arc<dyn OpControl>> {
        let ops = self.ops.read().unwrap_or_else(|e| e.into_inner());
        ops.iter().find(|op| op.name() == name).cloned()
    }

    /// Whether operations registered now start paused.
    pub(crate) fn paused_all(&self) -> bool {
        self.paused_all.load(Ordering::SeqCst)
    }

    /// Pauses or resumes every operation (resuming also releases those paused one by
    /// one).
    pub(crate) fn set_paused_all(&self, paused: bool) {
        self.paused_all.store(paused, Ordering::SeqCst);
        for op in self.ops.read().unwrap_or_else(|e| e.into_inner()).iter() {
            op.control().set_paused(paused, &self.lanes);
        }
    }
}

/// How [`Engine::shutdown_with`](crate::Engine::shutdown_with) treats admitted work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish everything admitted.
    Drain,
    /// Cancel everything waiting; wait only for running calls.
    Abort,
}

impl Shared {
    /// Rejects new work from now on and, for [`Shutdown::Abort`], cancels queued work.
    /// Escalating a drain to an abort is allowed; the reverse is not.
    pub(crate) fn begin_stop(&self, mode: Shutdown) {
        self.admission.close();
        if mode == Shutdown::Abort {
            self.lanes.begin_abort();
            if let Some(remote) = self.remote.get() {
                remote.close();
            }
        }
        // Paused work is admitted work: a drain runs it, an abort cancels it.
        self.set_paused_all(false);
        self.lanes.begin_shutdown();
    }
}
