//! What an operation's calls reach of their engine: where they are admitted, routed,
//! queued, indexed and measured. Nothing else: the registry of operations, online
//! adaptation and the control port are not reachable from here.
//!
//! Built by `engine::builder` once everything is validated; every operation holds it
//! (`Arc`), and the engine and its controller hold the same parts.

use std::sync::{Arc, OnceLock};

use crate::admission::Admission;
use crate::lanes::Lanes;
use crate::remote::RemotePort;
use crate::router::Router;
use crate::telemetry::histogram::LatencyHistogram;
use crate::token::{Outside, TokenIndex};

/// The link to remote workers: set once, after the engine has started (the link needs
/// the engine's runtime), read by every remote-capable call and by a stop.
pub(crate) type RemoteSlot = Arc<OnceLock<Arc<dyn RemotePort>>>;

/// End-to-end latency of every token, by the lane set it ran on (`LaneSet::index`
/// order: light, heavy, remote): what the dashboard's p99 chart shows.
pub(crate) type SetLatency = Arc<[LatencyHistogram; 3]>;

pub(crate) struct OpEnv {
    pub(crate) admission: Arc<Admission>,
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) router: Arc<dyn Router>,
    /// Token ids, and waiting tokens by id (for cancels by id).
    pub(crate) tokens: Arc<TokenIndex>,
    /// The lanes, as outside threads waiting on a token may help them.
    pub(crate) outside: Arc<dyn Outside>,
    /// Tokens per `submit_many` chunk: one slot allocation and one permit CAS each.
    pub(crate) chunk_len: usize,
    /// The engine's runtime: deadlines and retry backoffs run on it.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) remote: RemoteSlot,
    pub(crate) set_latency: SetLatency,
}

impl OpEnv {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        admission: Arc<Admission>,
        lanes: Arc<Lanes>,
        router: Arc<dyn Router>,
        tokens: Arc<TokenIndex>,
        chunk_len: usize,
        runtime: tokio::runtime::Handle,
        remote: RemoteSlot,
        set_latency: SetLatency,
    ) -> Self {
        OpEnv {
            outside: Arc::clone(&lanes) as Arc<dyn Outside>,
            admission,
            lanes,
            router,
            tokens,
            chunk_len,
            runtime,
            remote,
            set_latency,
        }
    }
}
