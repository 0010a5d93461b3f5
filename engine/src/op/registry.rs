//! The engine's operations by name: what registration claims, what the control port
//! and a remote worker look operations up in, and the pause-all switch over them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::control::OpControl;
use crate::error::RegisterError;
use crate::features::{OpFeatures, OpNames};
use crate::lanes::Lanes;
use crate::remote::RemoteServe;

pub(crate) struct Registry {
    names: Mutex<HashMap<String, u32>>,
    /// Op id → name and cost features, shared with telemetry (which names rows by it).
    op_names: OpNames,
    /// Every operation, for manual control (index = op id).
    ops: RwLock<Vec<Arc<dyn OpControl>>>,
    /// Every operation is paused (operations registered meanwhile start paused).
    paused_all: AtomicBool,
    /// The remote-capable operations, which this engine serves when it is a worker.
    served: RwLock<Vec<Arc<dyn RemoteServe>>>,
}

impl Registry {
    pub(crate) fn new(op_names: OpNames) -> Self {
        Registry {
            names: Mutex::new(HashMap::new()),
            op_names,
            ops: RwLock::new(Vec::new()),
            paused_all: AtomicBool::new(false),
            served: RwLock::new(Vec::new()),
        }
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

    /// Every operation's name and cost features, by id.
    pub(crate) fn op_names(&self) -> Vec<OpFeatures> {
        self.op_names.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lists a registered operation for manual control; it starts paused if every
    /// operation is. Decided here, under the registry's lock, not when the operation
    /// was built: a resume-all in between would miss an operation built paused.
    pub(crate) fn add_op(&self, op: Arc<dyn OpControl>, lanes: &Lanes) {
        let mut ops = self.ops.write().unwrap_or_else(|e| e.into_inner());
        // Under the registry's lock, so a concurrent pause-all either sees this
        // operation or has set the flag read here.
        if self.paused_all() {
            op.control().set_paused(true, lanes);
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
    pub(crate) fn set_paused_all(&self, paused: bool, lanes: &Lanes) {
        self.paused_all.store(paused, Ordering::SeqCst);
        for op in self.ops.read().unwrap_or_else(|e| e.into_inner()).iter() {
            op.control().set_paused(paused, lanes);
        }
    }

    /// Lists a remote-capable operation.
    pub(crate) fn add_served(&self, op: Arc<dyn RemoteServe>) {
        self.served.write().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// The remote-capable operations, in registration order.
    pub(crate) fn served(&self) -> Vec<Arc<dyn RemoteServe>> {
        self.served.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the registry's handles on the operations when the engine is dropped, so
    /// that a `Controller` kept past the engine holds no operation (nor its closure)
    /// alive. Operations hold their [`OpEnv`](super::OpEnv), which does not hold the
    /// registry (when one state held both, it was a cycle, found by memcheck,
    /// `tests/memcheck.sh`); the control port's tasks reach both, and end with the
    /// engine's runtime. After it, the control port and a worker see no operations;
    /// `Operation` handles still held by the user keep their own state alive until
    /// dropped.
    pub(crate) fn clear(&self) {
        let ops = std::mem::take(&mut *self.ops.write().unwrap_or_else(|e| e.into_inner()));
        let served = std::mem::take(&mut *self.served.write().unwrap_or_else(|e| e.into_inner()));
        drop((ops, served));
    }
}
