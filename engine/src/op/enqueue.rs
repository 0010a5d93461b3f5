//! The one enqueue path: route → override → batch → push.
//!
//! First submits (`Operation::submit*`), retries after a failure and re-queues after a
//! deadline all go through [`Enqueue`]: the router proposes a placement, the
//! operation's manual overrides replace what they name (and the token is then recorded
//! with `route_source = override`), calls that must run alone get batches of one, and
//! each full batch is one queue push.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::batch::{Batch, BatchHead, ItemList, Items};
use super::control::Overrides;
use super::record::{BatchMeta, TokenMeta};
use super::remote_token::RemoteToken;
use super::single::{Single, SingleJob};
use super::state::{panic_message, OpShared, NO_CELL};
use crate::admission::Permit;
use crate::error::TokenError;
use crate::lanes::BoxJob;
use crate::model::DEFAULT_REMOTE_MIN_NS;
use crate::placement::{LaneSet, Placement, RouteSource, Weight};
use crate::remote::PendingToken;
use crate::remote::{RemotePlacement, RemotePort};
use crate::router::Features;
use crate::token::{Chunk, ChunkOf, Outcome};

/// What a panic left: its payload.
pub(super) type Panic = Box<dyn std::any::Any + Send>;

/// Tokens of one chunk on their way into the lanes' queues.
pub(super) struct Enqueue<'a, A, R> {
    op: &'a Arc<OpShared<A, R>>,
    chunk: &'a Arc<Chunk<R>>,
    attempt: u8,
    overrides: Overrides,
    features: Features,
    /// Calls that run one per batch: a deadline is per call (a stuck lane is replaced
    /// without stranding anybody else's token), and locality queues each call on its
    /// key's lane.
    single: bool,
    logging: bool,
    admitted_at: Instant,
    /// The lane a retry of a locality call keeps (its key's home, already entered).
    held_home: Option<usize>,
    /// Whether the router is pure, and the last (declared, size) it placed, and where.
    pure: bool,
    last: Option<(Weight, u64, Placement)>,
    /// The link to remote workers, for a remote-capable operation (none for a
    /// fall-back from a remote attempt: it runs here).
    remote: Option<&'a Arc<dyn RemotePort>>,
    /// The largest batch that still gives every lane a share of this chunk (see
    /// [`Enqueue::spread`]).
    spread: u32,
    open: [Open<A>; 3],
    /// A single call's chunk, which carries its own batch (see [`Single`]): queued
    /// as itself, without a batch allocation of its own.
    inline: Option<Arc<ChunkOf<R, Single<A, R>>>>,
    /// Wake-ups of the lane on this thread's own core, left until every batch is
    /// pushed (a bit per lane queue; see `Lanes::push_deferring`).
    deferred_wakes: u8,
}

impl<A, R> Drop for Enqueue<'_, A, R> {
    fn drop(&mut self) {
        if self.deferred_wakes != 0 {
            self.op.env.lanes.wake_deferred(self.deferred_wakes);
        }
    }
}

impl<'a, A: Send + 'static, R: Send + 'static> Enqueue<'a, A, R> {
    pub(super) fn new(
        op: &'a Arc<OpShared<A, R>>,
        chunk: &'a Arc<Chunk<R>>,
        attempt: u8,
        held_home: Option<usize>,
    ) -> Self {
        let env = &op.env;
        let overrides = op.control.overrides();
        Enqueue {
            op,
            chunk,
            attempt,
            overrides,
            features: Features {
                op: op.id,
                declared: op.weight,
                arg_size: 0,
                queue_depth: env.admission.in_flight() as u64,
                op_recent_ns: op.recent_ns.load(Relaxed),
                size_recent_ns: 0,
                cost: crate::features::NO_COST,
            },
            single: op.options.timeout.is_some()
                || op.options.locality.is_some()
                || overrides.throttle.is_some(),
            logging: env.lanes.telemetry().is_some(),
            admitted_at: Instant::now(),
            held_home,
            pure: env.router.is_pure(),
            last: None,
            remote: env
                .remote
                .get()
                .filter(|_| op.remote.is_some() && op.dedupe.is_none())
                .filter(|_| op.options.locality.is_none())
                // A call served for another submitter runs here: never forwarded again.
                .filter(|_| !chunk.is_served()),
            spread: u32::MAX,
            open: [Open::new(), Open::new(), Open::new()],
            inline: None,
            deferred_wakes: 0,
        }
    }

    /// A single call whose chunk can carry its batch: it is queued as itself.
    pub(super) fn inline(&mut self, chunk: Arc<ChunkOf<R, Single<A, R>>>) {
        self.inline = Some(chunk);
    }

    /// Caps batches at a lane's share of the `len` tokens being submitted together, so
    /// that no single batch holds all of them: other lanes can take (or steal) the
    /// rest. This is what lets work that fans out — a token that submits 1,000
    /// children and waits for them — run on every lane, as rayon splits a `join`.
    pub(super) fn spread(&mut self, len: usize) {
        let lanes = self.op.env.lanes.len().max(1);
        self.spread = u32::try_from(len.div_ceil(lanes)).unwrap_or(u32::MAX).max(1);
    }

    /// A remote attempt that moves to the local lanes (it holds its permit).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(super) fn retry_local(
        op: &'a Arc<OpShared<A, R>>,
        chunk: &'a Arc<Chunk<R>>,
        index: u32,
        arg: A,
        attempt: u8,
    ) {
        let mut enqueue = Enqueue::new(op, chunk, attempt, None);
        enqueue.remote = None;
        enqueue.one(index, arg);
    }

    /// A retry (or a re-queue after a deadline) of one token, already moved to
    /// `attempt` and holding its permit.
    pub(super) fn retry(
        op: &'a Arc<OpShared<A, R>>,
        chunk: &'a Arc<Chunk<R>>,
        index: u32,
        arg: A,
        attempt: u8,
        held_home: Option<usize>,
    ) {
        Enqueue::new(op, chunk, attempt, held_home).one(index, arg);
    }

    /// Places and pushes a single token of the operation's own weight.
    fn one(mut self, index: u32, arg: A) {
        let weight = self.op.weight;
        self.push(index, arg, weight, 1);
        self.finish();
    }

    /// Places token `index` and adds it to its lane set's open batch, pushing the batch
    /// once full. `remaining` (this one included) sizes the batch's allocation.
    pub(super) fn push(&mut self, index: u32, arg: A, declared: Weight, remaining: usize) {
        let op = self.op;
        // The size hint, the cost features and the router are the user's code: a panic
        // in one fails this call (`hook_panicked`), never the submit.
        let routed = catch_unwind(AssertUnwindSafe(|| {
            let arg_size = op.options.size_hint.as_ref().map_or(0, |hint| hint(&arg));
            if let Some(cost) = &op.options.cost {
                // Not remembered in `last`: an operation with cost features routes each call.
                self.features.cost = cost(&arg);
            }
            let cell = op.size_cell(arg_size);
            let placement = match self.last {
                // A pure router gives equal features the same placement: route once per run.
                Some((d, size, placement)) if d == declared && size == arg_size => placement,
                _ => {
                    self.features.declared = declared;
                    self.features.arg_size = arg_size;
                    self.features.size_recent_ns = op.size_recent_ns(cell);
                    let placement = self.place();
                    if self.pure && op.options.cost.is_none() {
                        self.last = Some((declared, arg_size, placement));
                    }
                    placement
                }
            };
            (arg_size, cell, placement)
        }));
        let (arg_size, cell, placement) = match routed {
            Ok(routed) => routed,
            Err(payload) => return self.hook_panicked([(index, arg)], "routing", payload),
        };
        let set = placement.lanes;
        if placement.batch == 1 && !self.open[set.index()].items.is_empty() {
            // A call that runs alone (an unmeasured size, say) keeps its batch of one.
            self.flush(set);
        }
        let open = &mut self.open[set.index()];
        if self.logging {
            self.features.declared = declared;
            self.features.arg_size = arg_size;
            let meta = open.meta.get_or_insert_with(|| {
                Box::new(BatchMeta::new(self.admitted_at, &self.features, &op.env, set))
            });
            meta.tokens.push(TokenMeta::new(&self.features, &placement));
        }
        if remaining == 1 && open.items.is_empty() && set != LaneSet::Remote {
            // The chunk's last call and nothing open on its set: it is a batch of one
            // (inline in its chunk for a single call), with no item list.
            let meta = open.meta.take();
            return self.queue_one(set, index, arg, (placement.predicted_ns, cell), meta);
        }
        open.cell = if open.items.is_empty() || open.cell == cell { cell } else { NO_CELL };
        open.cost_ns += placement.predicted_ns;
        open.push(index, arg, placement.batch, remaining);
        if open.is_full() {
            self.flush(set);
        }
    }

    /// Whether every token of an untagged chunk gets the same placement: a pure router
    /// that sees no per-token input (no size hint). Telemetry then keeps one token
    /// description per batch.
    pub(super) fn routes_once(&self) -> bool {
        self.pure && self.op.options.size_hint.is_none() && self.op.options.cost.is_none()
    }

    /// Places `len` tokens of the operation's own weight at once (see
    /// [`Enqueue::routes_once`]) and fills batches straight from `items`.
    pub(super) fn push_all(&mut self, mut items: impl Iterator<Item = (u32, A)>, len: usize) {
        self.features.declared = self.op.weight;
        self.features.arg_size = 0;
        let placement = match catch_unwind(AssertUnwindSafe(|| self.place())) {
            Ok(placement) => placement,
            // A router of the user's that panicked: these calls fail, the submit does not.
            Err(payload) => return self.hook_panicked(items, "routing", payload),
        };
        let (set, batch) = (placement.lanes, placement.batch.max(1) as usize);
        if len == 1 && set != LaneSet::Remote {
            // A single call: its batch holds it inline (no item list to allocate), and
            // it is the chunk's only batch (nothing is open yet).
            if let Some((index, arg)) = items.next() {
                let meta = self.logging.then(|| self.batch_meta(set, &placement));
                self.queue_one(set, index, arg, (placement.predicted_ns, NO_CELL), meta);
            }
            return;
        }
        let mut remaining = len;
        while remaining > 0 {
            let meta = (self.logging && self.open[set.index()].meta.is_none())
                .then(|| self.batch_meta(set, &placement));
            let open = &mut self.open[set.index()];
            let take = batch.min(remaining);
            open.items.reserve_exact(take);
            open.items.extend(items.by_ref().take(take));
            open.cost_ns += placement.predicted_ns * take as u64;
            if meta.is_some() {
                open.meta = meta;
            }
            open.limit = batch;
            remaining -= take;
            if open.is_full() {
                self.flush(set);
            }
        }
    }

    /// Telemetry's admission-time features of a batch on `set` whose every token got
    /// `placement` (one token description for the batch).
    fn batch_meta(&self, set: LaneSet, placement: &Placement) -> Box<BatchMeta> {
        let mut meta = BatchMeta::new(self.admitted_at, &self.features, &self.op.env, set);
        meta.tokens.push(TokenMeta::new(&self.features, placement));
        Box::new(meta)
    }

    /// Route → override → batch, for the current features.
    fn place(&self) -> Placement {
        let mut placement = self.op.env.router.route(&self.features);
        if placement.source != RouteSource::Model && self.op.options.remote_preferred {
            // The tag says remote, and no model decided otherwise: the running averages
            // stand in for the tags, so they keep it remote too (it only counts where a
            // link exists).
            placement.lanes = LaneSet::Remote;
        }
        placement.batch = placement.batch.min(self.spread);
        let routed = placement.lanes;
        // A manual override always wins over the model, which wins over the tags.
        if let Some(lanes) = self.overrides.pin {
            placement.lanes = lanes;
            placement.source = RouteSource::Override;
        }
        if let Some(batch) = self.overrides.batch {
            placement.batch = batch;
            placement.source = RouteSource::Override;
        }
        if placement.lanes == LaneSet::Remote || self.remote.is_some() {
            placement.lanes = self.remote_or_local(&placement, routed);
        }
        if self.overrides.pin == Some(LaneSet::Remote)
            && placement.lanes != LaneSet::Remote
            && !self.held_here()
        {
            // Said, not silently ignored: the row and the operation's stats count it.
            placement.source = RouteSource::OverrideUnmet;
            self.op.counters.pin_unmet.fetch_add(1, Relaxed);
        }
        if self.single {
            placement.batch = 1;
        }
        placement
    }

    /// Where a token placed on `chosen` (by the router or an override; `routed`: the
    /// router's own choice) runs: remote when it was asked for or the placement policy
    /// sends it there and the link can take it, else a local set.
    fn remote_or_local(&self, placement: &Placement, routed: LaneSet) -> LaneSet {
        let chosen = placement.lanes;
        let by_weight = || match self.op.weight {
            Weight::Heavy => LaneSet::Heavy,
            _ => LaneSet::Light,
        };
        let local = |set: LaneSet| if set == LaneSet::Remote { by_weight() } else { set };
        let Some(port) = self.remote else {
            return if chosen == LaneSet::Remote { local(routed) } else { chosen };
        };
        // Remote by a pin, the router or the placement: only while a live worker serves
        // the operation (else it runs here, until one is heard from).
        let served = || port.available() && port.workers(Some(&self.op.name)) > 0;
        let remote = match (chosen, port.placement()) {
            // A paused or throttled operation's tokens stay where pause and throttle
            // hold: the local lanes (a remote worker would run them at once).
            _ if self.held_here() => false,
            (LaneSet::Remote, _) => served(),
            (_, RemotePlacement::Local) => false,
            // Pinned to a local set by the control port.
            _ if self.overrides.pin.is_some() => false,
            (_, RemotePlacement::Remote) => served(),
            // The prediction decides what is worth sending: a token must be expected to
            // run at least as long as a remote round trip costs.
            (set, RemotePlacement::Auto) => {
                let router = &self.op.env.router;
                placement.predicted_ns >= router.remote_min_ns().unwrap_or(DEFAULT_REMOTE_MIN_NS)
                    && port.available()
                    && self.backlogged(set)
                    && port.workers(Some(&self.op.name)) > 0
            }
        };
        match remote {
            true => LaneSet::Remote,
            false if chosen == LaneSet::Remote => local(routed),
            false => chosen,
        }
    }

    /// Whether the operation's overrides keep its tokens on the local lanes, where pause
    /// and throttle hold.
    fn held_here(&self) -> bool {
        self.overrides.paused || self.overrides.throttle.is_some()
    }

    /// At least two queued batches per lane of `set`.
    fn backlogged(&self, set: LaneSet) -> bool {
        let lanes = &self.op.env.lanes;
        lanes.queued_batches(set) >= 2 * lanes.lanes_of(set).count().max(1)
    }

    /// Pushes the open batches.
    pub(super) fn finish(mut self) {
        for set in LaneSet::ALL {
            if !self.open[set.index()].items.is_empty() {
                self.flush(set);
            }
        }
    }

    /// Claims the open remote batch's tokens and hands them to the link.
    fn flush_remote(&mut self) {
        let (op, chunk, attempt) = (self.op, self.chunk, self.attempt);
        let open = &mut self.open[LaneSet::Remote.index()];
        let items = std::mem::take(&mut open.items);
        open.cost_ns = 0;
        // With logging on, each remote token's row is written here when its answer
        // comes (see `RemoteToken::resolve`).
        let meta: Option<Arc<BatchMeta>> = open.meta.take().map(Arc::from);
        let port = self.remote.expect("remote batches only with a link");
        let codec = op.remote.as_ref().expect("remote-capable");
        let mut calls = Vec::with_capacity(items.len());
        for (position, (index, arg)) in items.into_iter().enumerate() {
            let bytes = op.bytes_of(&arg);
            let slot = chunk.slot(index);
            if !slot.claim(attempt) {
                // Cancelled before it left.
                op.env.admission.release(Permit::new(1, bytes), &op.queue);
                continue;
            }
            match (codec.encode_arg)(&arg) {
                Ok(payload) => {
                    let token = RemoteToken {
                        op: Arc::clone(op),
                        chunk: Arc::clone(chunk),
                        index,
                        attempt,
                        arg,
                        bytes,
                        admitted_at: self.admitted_at,
                        log: meta.as_ref().map(|meta| (Arc::clone(meta), position)),
                        run_locally: |op, chunk, index, arg, attempt| {
                            Enqueue::retry_local(op, chunk, index, arg, attempt)
                        },
                    };
                    calls.push((payload, Box::new(token) as Box<dyn PendingToken>));
                }
                Err(e) => {
                    let error = format!("the argument of {} is not encodable: {e}", op.name);
                    slot.finish(attempt, Err(TokenError::Failed(error)));
                    op.resolutions.failed.fetch_add(1, Relaxed);
                    op.env.admission.release(Permit::new(1, bytes), &op.queue);
                }
            }
        }
        if !calls.is_empty() {
            port.send(&op.name, calls);
        }
    }

    fn flush(&mut self, set: LaneSet) {
        if set == LaneSet::Remote {
            return self.flush_remote();
        }
        let open = &mut self.open[set.index()];
        let items = std::mem::take(&mut open.items);
        let (cost, meta) = (std::mem::take(&mut open.cost_ns), open.meta.take());
        let cell = std::mem::replace(&mut open.cell, NO_CELL);
        self.queue(set, items, (cost, cell), meta);
    }

    /// Pushes one batch of `items` onto `set`'s queue (or its locality home's), with
    /// its predicted cost and the size cell its items fell in.
    fn queue<I: ItemList<A>>(
        &mut self,
        set: LaneSet,
        items: I,
        cost: (u64, u8),
        meta: Option<Box<BatchMeta>>,
    ) {
        let home = match self.home(items.as_ref().first().map(|(_, arg)| arg), set) {
            Ok(home) => home,
            Err(payload) => return self.hook_panicked(items, "its locality key", payload),
        };
        let bytes = self.op.bytes_of_all(items.as_ref());
        let head = self.head(set, bytes, cost, meta);
        let batch = Arc::new(Batch { head, chunk: Arc::clone(self.chunk), items });
        // SAFETY: the batch was just made; this is its one handle.
        self.push_job(home, set, unsafe { BoxJob::new(batch) });
    }

    /// Pushes a batch of one call: a single call's chunk itself, else a batch holding
    /// the call inline (no item list).
    fn queue_one(
        &mut self,
        set: LaneSet,
        index: u32,
        arg: A,
        cost: (u64, u8),
        meta: Option<Box<BatchMeta>>,
    ) {
        let Some(chunk) = self.inline.take() else {
            return self.queue(set, [(index, arg)], cost, meta);
        };
        let home = match self.home(Some(&arg), set) {
            Ok(home) => home,
            Err(payload) => return self.hook_panicked([(index, arg)], "its locality key", payload),
        };
        let head = self.head(set, self.op.bytes_of(&arg), cost, meta);
        let job = SingleJob { head, call: (index, arg) };
        // SAFETY: the chunk is not queued yet, and this thread queues it (below).
        unsafe { chunk.tail.put(job) };
        // SAFETY: a single call's chunk is queued once, here: this is its one handle
        // (its token holds the chunk, never a `BoxJob`).
        self.push_job(home, set, unsafe { BoxJob::new(chunk) });
    }

    /// A batch's description: this chunk's operation, attempt and admission time, and
    /// `cost`: its predicted runtime and its size cell.
    fn head(
        &self,
        set: LaneSet,
        bytes: usize,
        (predicted_ns, cell): (u64, u8),
        meta: Option<Box<BatchMeta>>,
    ) -> BatchHead<A, R> {
        BatchHead {
            op: Arc::clone(self.op),
            meta,
            attempt: self.attempt,
            bytes,
            set,
            admitted_at: self.admitted_at,
            predicted_ns,
            cell,
        }
    }

    /// The lane a batch whose first call is `first` must run on, if any (a retry's
    /// held home, or its locality key's); `Err` if the key (the user's code) panicked.
    fn home(&mut self, first: Option<&A>, set: LaneSet) -> Result<Option<usize>, Panic> {
        match (self.held_home.take(), self.op.options.locality, first) {
            (Some(lane), _, _) => Ok(Some(lane)),
            (None, Some(key), Some(arg)) => {
                let key = catch_unwind(AssertUnwindSafe(|| key(arg)))?;
                Ok(Some(self.op.enter_home(key, set)))
            }
            _ => Ok(None),
        }
    }

    /// Fails `items`, whose routing ran the user's code (`what`) and panicked: each
    /// resolves as `Panicked` and gives its permit back, never queued, so the submit
    /// goes on and nothing is left holding a permit. (A duplicate flight it leads is
    /// landed with the same error.)
    #[cold]
    pub(super) fn hook_panicked(
        &mut self,
        items: impl IntoIterator<Item = (u32, A)>,
        what: &str,
        payload: Panic,
    ) {
        let (op, chunk, attempt) = (self.op, self.chunk, self.attempt);
        let message = format!(
            "{what} for a call of `{}` panicked before it ran: {}",
            op.name,
            panic_message(&*payload)
        );
        let error = || Err(TokenError::Panicked { message: message.clone() });
        for (index, arg) in items {
            let bytes = op.bytes_of(&arg);
            let slot = chunk.slot(index);
            if slot.claim(attempt) && slot.finish(attempt, error()) != Outcome::Skipped {
                op.resolutions.failed.fetch_add(1, Relaxed);
            }
            // Never queued, so no lane lands its duplicate flight (if it leads one), even
            // when it was cancelled meanwhile: it is landed here. (Its key ran once
            // already, when it joined the flight.)
            let key = catch_unwind(AssertUnwindSafe(|| op.dedupe_key(&arg))).ok().flatten();
            op.land_flight(key, chunk, index, error);
            if self.held_home.take().is_some() {
                // A retry that kept its key's lane through its backoff leaves it.
                let _ = catch_unwind(AssertUnwindSafe(|| drop(op.home_guard(&arg))));
            }
            op.env.admission.release(Permit::new(1, bytes), &op.queue);
        }
    }

    fn push_job(&mut self, home: Option<usize>, set: LaneSet, job: BoxJob) {
        match home {
            Some(lane) => self.op.env.lanes.push_to(lane, job),
            None => self.op.env.lanes.push_deferring(set, job, &mut self.deferred_wakes),
        }
    }
}

/// A batch being filled for one lane set.
struct Open<A> {
    items: Items<A>,
    /// The items' predicted cost (ns).
    cost_ns: u64,
    /// The size cell every item fell in (`NO_CELL`: several, or no size hint).
    cell: u8,
    limit: usize,
    meta: Option<Box<BatchMeta>>,
}

impl<A> Open<A> {
    fn new() -> Self {
        Open { items: Items::new(), cost_ns: 0, cell: NO_CELL, limit: usize::MAX, meta: None }
    }

    fn push(&mut self, index: u32, arg: A, batch: u32, remaining: usize) {
        if self.items.is_empty() {
            self.limit = batch.max(1) as usize;
            self.items.reserve_exact(self.limit.min(remaining));
        } else {
            self.limit = self.limit.min(batch.max(1) as usize);
        }
        self.items.push((index, arg));
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.limit
    }
}
