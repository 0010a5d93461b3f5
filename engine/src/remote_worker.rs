//! A worker: serves an engine's remote-capable operations to submitters on other
//! machines, pulling their calls from JetStream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};

use crate::remote::link::{hostname, subject_safe, unique, RemoteConfig};
use crate::remote::wire::{self, Answer, Call, Heartbeat, WireOutcome, WIRE_VERSION};
use crate::remote::{block_on_aside, CallError, RemoteServe};
use crate::Engine;

/// How a worker serves: the server, its secret, the ack wait (from
/// [`RemoteConfig`]) and how many calls it holds at once.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    remote: RemoteConfig,
    concurrency: usize,
    max_deliver: i64,
}

impl WorkerConfig {
    /// Serves through the server `remote` names (its URL, token and
    /// [`ack_wait`](RemoteConfig::ack_wait)), holding at most 1,024 calls at once.
    pub fn new(remote: RemoteConfig) -> Self {
        WorkerConfig { remote, concurrency: 1024, max_deliver: 20 }
    }

    /// Calls held at once (running, queued on the lanes, or being answered; at most
    /// 2^31). Long ones report progress, so the ack wait does not bound them.
    pub fn concurrency(mut self, calls: usize) -> Self {
        self.concurrency = calls.clamp(1, 1 << 31);
        self
    }

    /// Deliveries of one call before the server gives up on it (default 20).
    pub fn max_deliver(mut self, deliveries: i64) -> Self {
        self.max_deliver = deliveries.max(1);
        self
    }
}

/// What a worker has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Calls taken from the stream.
    pub received: u64,
    /// Calls answered with a value (then acked).
    pub completed: u64,
    /// Calls answered with an error: failed, panicked, timed out (then terminated).
    pub failed: u64,
    /// Calls this worker had no room for, or gave up on while stopping (nak'ed for
    /// redelivery).
    pub nacked: u64,
    /// Calls the stream had delivered before.
    pub redelivered: u64,
    /// Failed attempts the operation's [`RetryPolicy`](crate::RetryPolicy) retries:
    /// nak'ed with its backoff, so the server delivers the call again (to any worker).
    pub retried: u64,
    /// Messages refused: not a call, another wire version, the wrong operation, a
    /// bad reply subject, or an argument that does not decode (terminated).
    pub bad_messages: u64,
    /// Calls held now.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    nacked: AtomicU64,
    redelivered: AtomicU64,
    retried: AtomicU64,
    bad_messages: AtomicU64,
}

struct Ctx {
    id: String,
    host: String,
    config: WorkerConfig,
    js: jetstream::Context,
    counters: Counters,
    slots: Arc<Semaphore>,
}

/// Serves an engine's remote-capable operations until stopped.
///
/// ```no_run
/// use tokengate::remote::{RemoteConfig, Worker, WorkerConfig};
///
/// let engine = tokengate::Engine::builder().build()?;
/// engine.operation("square", tokengate::Weight::Light).remote().register(|x: u64| x * x)?;
/// let worker = Worker::start(&engine, WorkerConfig::new(RemoteConfig::new("127.0.0.1:4222")))?;
/// // ... until it is time to stop:
/// let stats = worker.stop();
/// println!("answered {} calls", stats.completed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Worker {
    ctx: Arc<Ctx>,
    client: async_nats::Client,
    stop: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

/// Why a [`Worker`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The engine has no remote-capable operation to serve.
    #[error("the engine has no remote-capable operation to serve (register one with .remote())")]
    NothingToServe,
    /// The NATS server could not be reached, or its stream not set up (the reason).
    #[error("{0}")]
    Connect(String),
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.ctx.id).finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects and starts serving every remote-capable operation registered on
    /// `engine` so far, on the engine's runtime.
    pub fn start(engine: &Engine, config: WorkerConfig) -> Result<Worker, WorkerError> {
        let ops = engine.served_ops();
        if ops.is_empty() {
            return Err(WorkerError::NothingToServe);
        }
        let runtime = engine.handle().clone();
        let (client, js) =
            block_on_aside(&runtime, config.remote.connect()).map_err(WorkerError::Connect)?;
        let host = hostname();
        let ctx = Arc::new(Ctx {
            id: format!("{}-{}-{:x}", subject_safe(&host), std::process::id(), unique()),
            host,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            config,
            js,
            counters: Counters::default(),
        });
        engine.set_worker_id(&ctx.id);
        let (stop, stopped) = watch::channel(false);
        for op in &ops {
            runtime.spawn(Arc::clone(&ctx).serve(Arc::clone(op), stopped.clone()));
        }
        let beat = Heartbeat {
            version: WIRE_VERSION,
            worker: ctx.id.clone(),
            host: ctx.host.clone(),
            ops: ops.iter().map(|op| op.name().to_string()).collect(),
            lanes: engine.lanes().len(),
        };
        runtime.spawn(heartbeat(client.clone(), beat, stopped));
        tracing::info!(worker = %ctx.id, ops = ops.len(), url = %ctx.config.remote.url,
            "worker serving");
        Ok(Worker { ctx, client, stop, runtime })
    }

    /// This worker's name on the wire (`host-pid-nonce`).
    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    /// What it has done so far.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.ctx.counters;
        WorkerStats {
            received: c.received.load(Relaxed),
            completed: c.completed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            nacked: c.nacked.load(Relaxed),
            redelivered: c.redelivered.load(Relaxed),
            retried: c.retried.load(Relaxed),
            bad_messages: c.bad_messages.load(Relaxed),
            in_flight: (self.ctx.config.concurrency - self.ctx.slots.available_permits()) as u64,
        }
    }

    /// Stops taking calls, finishes and answers the ones it holds (for at most one ack
    /// wait; calls still held then are redelivered to another worker), and flushes its
    /// acks.
    pub fn stop(self) -> WorkerStats {
        let _ = self.stop.send(true);
        let all = u32::try_from(self.ctx.config.concurrency).unwrap_or(u32::MAX);
        let wait = self.ctx.config.remote.ack_wait;
        let (slots, client) = (Arc::clone(&self.ctx.slots), self.client.clone());
        block_on_aside(&self.runtime, async {
            let _ = tokio::time::timeout(wait, slots.acquire_many(all)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
        });
        let stats = self.stats();
        tracing::info!(worker = %self.ctx.id, ?stats, "worker stopped");
        stats
    }
}

async fn heartbeat(
    client: async_nats::Client,
    beat: Heartbeat,
    mut stopped: watch::Receiver<bool>,
) {
    let bytes: bytes::Bytes = wire::encode(&beat).expect("a heartbeat encodes").into();
    loop {
        let _ = client.publish(wire::HEARTBEAT_SUBJECT, bytes.clone()).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

impl Ctx {
    /// Serves one operation, re-binding its consumer after an outage.
    async fn serve(self: Arc<Self>, op: Arc<dyn RemoteServe>, mut stopped: watch::Receiver<bool>) {
        loop {
            match self.consume(&op, &mut stopped).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(op = op.name(), error = %e, "re-binding the consumer"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        op: &Arc<dyn RemoteServe>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(wire::CALLS_STREAM).await?;
        let durable = format!("tg-{}", op.name());
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: wire::call_subject(op.name()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.remote.ack_wait,
                    max_deliver: self.config.max_deliver,
                    ..Default::default()
                },
            )
            .await?;
        let stored = consumer.cached_info().config.ack_wait;
        if stored != self.config.remote.ack_wait {
            tracing::warn!(op = op.name(), consumer = %durable, stored = ?stored,
                configured = ?self.config.remote.ack_wait,
                "the consumer exists with another ack wait, which the server keeps using");
        }
        // Pulled calls wait in the client's buffer with their ack wait running: keep
        // that buffer small beside the calls held.
        let batch = self.config.concurrency.min(32);
        // The stored consumer's own limit counts (an existing durable keeps its config):
        // a nak on its last delivery would be dropped by the server. ≤ 0: unlimited.
        let max_deliver = match consumer.cached_info().config.max_deliver {
            n if n <= 0 => i64::MAX,
            n => n,
        };
        let mut messages = consumer.stream().max_messages_per_batch(batch).messages().await?;
        loop {
            if *stopped.borrow() {
                return Ok(());
            }
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => slot?,
                _ = stopped.changed() => return Ok(()),
            };
            let message = tokio::select! {
                message = messages.next() => message,
                _ = stopped.changed() => return Ok(()),
            };
            let Some(message) = message else { return Err("the consumer's stream ended".into()) };
            let message = message?;
            let (ctx, op) = (Arc::clone(self), Arc::clone(op));
            tokio::spawn(async move {
                ctx.handle(&*op, message, max_deliver).await;
                drop(slot);
            });
        }
    }

    async fn handle(&self, op: &dyn RemoteServe, message: jetstream::Message, max_deliver: i64) {
        let c = &self.counters;
        c.received.fetch_add(1, Relaxed);
        let delivered = message.info().map_or(1, |info| info.delivered.max(1) as u64);
        if delivered > 1 {
            c.redelivered.fetch_add(1, Relaxed);
        }
        let call = match wire::decode::<Call>(&message.payload) {
            Ok(call) if call.version != WIRE_VERSION => {
                Err(format!("wire version {}", call.version))
            }
            Ok(call) if call.op != op.name() => Err(format!("a call of {:?}", call.op)),
            Ok(call) if !answer_subject_ok(&call.reply) => {
                Err(format!("reply subject {:?}", call.reply))
            }
            Ok(call) => Ok(call),
            Err(e) => Err(e),
        };
        let call = match call {
            Ok(call) => call,
            Err(why) => {
                c.bad_messages.fetch_add(1, Relaxed);
                tracing::warn!(op = op.name(), %why, "refused a message");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let mut reply = match op.call(&call.arg, delivered) {
            Ok(reply) => reply,
            Err(CallError::Rejected(reason)) => {
                c.nacked.fetch_add(1, Relaxed);
                tracing::debug!(op = op.name(), ?reason, "no room: nak");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_millis(100)))).await;
                return;
            }
            Err(CallError::BadArgument(why)) => {
                c.bad_messages.fetch_add(1, Relaxed);
                tracing::warn!(op = op.name(), %why, "refused an argument");
                let answer =
                    self.answer(&call, WireOutcome::BadArgument, why.into_bytes(), 0, delivered);
                if self.send(&call.reply, &answer).await {
                    let _ = message.ack_with(AckKind::Term).await;
                }
                return;
            }
        };
        // A long call tells the server it is still being worked on.
        let every = (self.config.remote.ack_wait / 3).max(Duration::from_millis(100));
        let started = Instant::now();
        let reply = loop {
            tokio::select! {
                reply = &mut reply => break reply,
                _ = tokio::time::sleep(every) => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        };
        let Some(reply) = reply else {
            // Cancelled here (this engine is stopping): another worker takes it.
            c.nacked.fetch_add(1, Relaxed);
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        };
        // A failure the operation's policy retries goes back to the server, which
        // delivers it again after the backoff — unless this was its last delivery.
        if let Some(delay) = reply.retry_after.filter(|_| (delivered as i64) < max_deliver) {
            c.retried.fetch_add(1, Relaxed);
            tracing::debug!(op = op.name(), delivered, ?delay, "failed attempt: nak for a retry");
            let delay = (!delay.is_zero()).then_some(delay);
            let _ = message.ack_with(AckKind::Nak(delay)).await;
            return;
        }
        let run_ns = reply.run_ns.min(started.elapsed().as_nanos() as u64);
        let completed = reply.outcome == WireOutcome::Completed;
        let answer = self.answer(&call, reply.outcome, reply.payload, run_ns, delivered);
        if !self.send(&call.reply, &answer).await {
            c.nacked.fetch_add(1, Relaxed);
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_millis(100)))).await;
            return;
        }
        // Only now: a worker that dies before this line has its call redelivered.
        if completed {
            c.completed.fetch_add(1, Relaxed);
            let _ = message.ack().await;
        } else {
            c.failed.fetch_add(1, Relaxed);
            let _ = message.ack_with(AckKind::Term).await;
        }
    }

    fn answer(
        &self,
        call: &Call,
        outcome: WireOutcome,
        payload: Vec<u8>,
        run_ns: u64,
        delivered: u64,
    ) -> Answer {
        Answer {
            version: WIRE_VERSION,
            token: call.token,
            attempt: call.attempt,
            outcome,
            payload,
            run_ns,
            worker: self.id.clone(),
            host: self.host.clone(),
            delivered,
        }
    }

    /// Publishes an answer and waits for the stream to store it.
    async fn send(&self, subject: &str, answer: &Answer) -> bool {
        let bytes = wire::encode(answer).expect("an answer encodes");
        match self.js.publish(subject.to_string(), bytes.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Whether `subject` is a submitter's answer subject: `tokengate.results.` and one token
/// of letters, digits, `_` or `-` (what [`wire::answer_subject`] makes of a submitter id).
fn answer_subject_ok(subject: &str) -> bool {
    subject
        .strip_prefix("tokengate.results.")
        .is_some_and(|id| !id.is_empty() && id.chars().all(wire::name_char))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_answer_subjects_are_replied_to() {
        assert!(super::answer_subject_ok("tokengate.results.vm-12-ab"));
        for bad in [
            "tokengate.results.",
            "tokengate.results.a b",
            "tokengate.results.>",
            "tokengate.results.a.b",
            "tokengate.tokens.x",
            "other",
        ] {
            assert!(!super::answer_subject_ok(bad), "{bad}");
        }
    }
}
