//! What telemetry keeps of a batch and of each of its tokens between admission and the
//! record written when they run (only while logging).

use std::time::Instant;

use super::env::OpEnv;
use super::state::nanos;
use crate::placement::{LaneSet, Placement, RouteSource, Weight};
use crate::router::Features;
use crate::telemetry::{RecordOutcome, TokenRecord};

/// What telemetry needs from admission; built only when logging is on.
pub(super) struct BatchMeta {
    pub(super) admitted_at: Instant,
    pub(super) queue_depth: u64,
    pub(super) lane_load: u64,
    pub(super) op_recent_ns: u64,
    pub(super) model_version: u32,
    pub(super) tokens: Vec<TokenMeta>,
}

impl BatchMeta {
    pub(super) fn new(
        admitted_at: Instant,
        features: &Features,
        env: &OpEnv,
        set: LaneSet,
    ) -> Self {
        BatchMeta {
            admitted_at,
            queue_depth: features.queue_depth,
            lane_load: env.lanes.queued_batches(set) as u64,
            op_recent_ns: features.op_recent_ns,
            model_version: env.router.model_version(),
            tokens: Vec::new(),
        }
    }
}

impl BatchMeta {
    /// The row of a call that ran on a remote worker, written by the submitter when
    /// the answer came at `end`: `lane_set` remote, no local lane (`lane` u16::MAX,
    /// `core` -1, `batch_id` 0), `run_ns` the worker's, and `queue_wait_ns` everything
    /// else (publishing, the worker's queue, the answer): what the trainer fits the
    /// remote overhead from.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn remote_record(
        &self,
        position: usize,
        token_id: u64,
        op: u32,
        attempt: u8,
        run_ns: u64,
        end: Instant,
        outcome: RecordOutcome,
    ) -> TokenRecord {
        let token = self.tokens.get(position).unwrap_or(&self.tokens[0]);
        let end_to_end_ns = nanos(end.saturating_duration_since(self.admitted_at));
        TokenRecord {
            token_id,
            op,
            declared: token.declared,
            route_source: token.source,
            lane_set: LaneSet::Remote,
            predicted_class: token.class,
            model_version: self.model_version,
            lane: u16::MAX,
            core: -1,
            batch_id: 0,
            batch_size: 1,
            arg_size: token.arg_size,
            queue_depth: self.queue_depth,
            lane_load: self.lane_load,
            op_recent_ns: self.op_recent_ns,
            queue_wait_ns: end_to_end_ns.saturating_sub(run_ns),
            run_ns,
            end_to_end_ns,
            outcome,
            attempt,
            cost: token.cost,
        }
    }
}

pub(super) struct TokenMeta {
    pub(super) arg_size: u64,
    pub(super) cost: crate::features::CostInputs,
    pub(super) declared: Weight,
    pub(super) source: RouteSource,
    pub(super) class: Option<u8>,
    pub(super) lanes: LaneSet,
}

impl TokenMeta {
    pub(super) fn new(features: &Features, placement: &Placement) -> Self {
        TokenMeta {
            arg_size: features.arg_size,
            cost: features.cost,
            declared: features.declared,
            source: placement.source,
            class: placement.class,
            lanes: placement.lanes,
        }
    }
}
