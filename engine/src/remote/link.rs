//! The submitter's link: publishes remote tokens' calls, resolves them from the answers,
//! hears workers' heartbeats, and moves tokens back to the local lanes when the server
//! is gone or an answer is too late.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::wire::{self, Answer, Call, Heartbeat, WIRE_VERSION};
use super::PendingToken;
use super::{RemotePlacement, RemotePort, RemoteStats};

/// How an engine reaches remote workers: the NATS server, its secret, and the rules
/// for placing and giving up. Passed to [`EngineBuilder::nats`](crate::EngineBuilder::nats).
///
/// ```no_run
/// use std::time::Duration;
/// use tokengate::remote::RemoteConfig;
/// use tokengate::remote::RemotePlacement;
///
/// let nats = RemoteConfig::new("nats://127.0.0.1:4222")
///     .token_file("nats.token")?
///     .placement(RemotePlacement::Remote)
///     .result_timeout(Duration::from_secs(30));
/// let engine = tokengate::Engine::builder().nats(nats).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RemoteConfig {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) placement: RemotePlacement,
    pub(crate) result_timeout: Duration,
    pub(crate) outage_grace: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) worker_grace: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("placement", &self.placement)
            .field("result_timeout", &self.result_timeout)
            .field("outage_grace", &self.outage_grace)
            .field("ack_wait", &self.ack_wait)
            .field("worker_grace", &self.worker_grace)
            .finish()
    }
}

impl RemoteConfig {
    /// A server at `url` (`nats://host:port` or `host:port`), no secret, placement
    /// `auto`, a 60 s result timeout, a 2 s outage grace, a 2 s ack wait and a 3 s
    /// worker grace.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteConfig {
            url: url.into(),
            token: None,
            placement: RemotePlacement::Auto,
            result_timeout: Duration::from_secs(60),
            outage_grace: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(2),
            worker_grace: Duration::from_secs(3),
        }
    }

    /// The server's secret token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reads the server's secret token from a file (surrounding whitespace trimmed), so
    /// it never appears on a command line.
    pub fn token_file(self, path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading the NATS token {}: {e}", path.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the NATS token file {} is empty", path.display()),
            ));
        }
        Ok(self.token(token))
    }

    /// When tokens go remote (default `auto`).
    pub fn placement(mut self, placement: RemotePlacement) -> Self {
        self.placement = placement;
        self
    }

    /// A remote token with no answer after this long runs on the local lanes instead
    /// (default 60 s; its remote answer, if it comes, is then a duplicate). Make it
    /// longer than the longest call.
    pub fn result_timeout(mut self, timeout: Duration) -> Self {
        self.result_timeout = timeout;
        self
    }

    /// How long the server may be unreachable before remote placement turns off and
    /// the waiting remote tokens move to the local lanes (default 2 s).
    pub fn outage_grace(mut self, grace: Duration) -> Self {
        self.outage_grace = grace;
        self
    }

    /// How long a worker may hold a call without acking it before the server
    /// redelivers it to another worker (default 2 s): how long a dead or hung worker
    /// holds its calls. A live worker sends "in progress" for each call it holds every
    /// third of it, so a shorter wait costs more messages per held call per second (at
    /// 2 s, 1.5 a second). Used by [`Worker`](super::Worker) when it creates its
    /// operations' consumers; a consumer that already exists keeps the ack wait it was
    /// created with (the worker warns when it differs).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How long a submitter may go without a heartbeat from any worker serving an
    /// operation (workers send one a second) before it runs that operation's waiting
    /// remote tokens on its own lanes and keeps new ones here, until a worker is heard
    /// from again (default 3 s).
    pub fn worker_grace(mut self, grace: Duration) -> Self {
        self.worker_grace = grace.max(Duration::from_millis(100));
        self
    }

    /// Connects and makes sure both streams exist.
    pub(crate) async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context), String> {
        let mut options = async_nats::ConnectOptions::new()
            .name("tokengate")
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None);
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let connect = tokio::time::timeout(self.connect_timeout, options.connect(&self.url));
        let client = match connect.await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("connecting to NATS at {}: {e}", self.url)),
            Err(_) => {
                return Err(format!(
                    "connecting to NATS at {}: no answer within {:?}",
                    self.url, self.connect_timeout
                ))
            }
        };
        let js = jetstream::new(client.clone());
        let calls = stream::Config {
            name: wire::CALLS_STREAM.into(),
            subjects: vec!["tokengate.tokens.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let answers = stream::Config {
            name: wire::ANSWERS_STREAM.into(),
            subjects: vec!["tokengate.results.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(600),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        for config in [calls, answers] {
            ensure_stream(&js, config).await.map_err(|e| format!("{e} (server {})", self.url))?;
        }
        Ok((client, js))
    }
}

/// Gets the stream `want` names, creating it if it does not exist. Creators may race
/// (workers and submitters started together on a fresh server): a create that loses the
/// race fails, and the next get finds the winner's stream. A stream that exists with
/// other subjects or another retention is an error naming the setting.
async fn ensure_stream(js: &jetstream::Context, want: stream::Config) -> Result<(), String> {
    let name = want.name.clone();
    let mut tries = 0;
    let stream = loop {
        match js.get_or_create_stream(want.clone()).await {
            Ok(stream) => break stream,
            Err(e) if tries < 8 => {
                tries += 1;
                tracing::debug!(stream = %name, error = %e, "stream set-up raced; trying again");
                tokio::time::sleep(Duration::from_millis(25 * tries)).await;
            }
            Err(e) => return Err(format!("creating the JetStream stream {name}: {e}")),
        }
    };
    let have = &stream.cached_info().config;
    if have.subjects != want.subjects {
        return Err(format!(
            "the JetStream stream {name} exists with subjects {:?}, not {:?}: delete it or use \
             another server",
            have.subjects, want.subjects
        ));
    }
    if have.retention != want.retention {
        return Err(format!(
            "the JetStream stream {name} exists with retention {:?}, not {:?}: delete it or use \
             another server",
            have.retention, want.retention
        ));
    }
    Ok(())
}

/// A token waiting for its answer.
struct Pending {
    token: Box<dyn PendingToken>,
    sent: Instant,
    /// Its operation, whose workers' heartbeats keep it waiting.
    op: Arc<str>,
}

/// Calls of one operation on their way to the server (their tokens already wait in the
/// pending table, so the watchdog covers them from the start).
struct Outgoing {
    op: String,
    calls: Vec<(Vec<u8>, (u64, u8))>,
}

#[derive(Default)]
struct Counters {
    remote_tokens: AtomicU64,
    resolved: AtomicU64,
    redelivered: AtomicU64,
    duplicate_results: AtomicU64,
    fell_back: AtomicU64,
    bad_answers: AtomicU64,
}

/// Overheads (answer received − call published − the worker's run time, ns) kept for
/// the median: the first 100,000.
const OVERHEAD_SAMPLES: usize = 100_000;

pub(crate) struct Link {
    /// This submitter's name on the wire (unique per engine).
    id: String,
    answers: String,
    config: RemoteConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    pending: Mutex<HashMap<(u64, u8), Pending>>,
    counters: Counters,
    overhead_ns: Mutex<Vec<u64>>,
    /// Each worker heard from: when, and the operations it serves.
    workers: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    up: AtomicBool,
    /// Shut off for good (an aborting engine): nothing goes remote any more.
    closed: AtomicBool,
}

impl Link {
    /// Connects (on `runtime`) and starts the link's tasks there.
    pub(crate) fn start(
        config: RemoteConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<Link>, String> {
        let (client, js) = super::block_on_aside(runtime, config.connect())?;
        let id = format!("{}-{}-{:x}", subject_safe(&hostname()), std::process::id(), unique());
        let (outgoing, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            answers: wire::answer_subject(&id),
            id,
            config,
            client,
            js,
            outgoing,
            pending: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            overhead_ns: Mutex::new(Vec::new()),
            workers: Mutex::new(HashMap::new()),
            up: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        runtime.spawn(Arc::clone(&link).publish(rx));
        runtime.spawn(Arc::clone(&link).answer_loop());
        runtime.spawn(Arc::clone(&link).heartbeats());
        runtime.spawn(Arc::clone(&link).watchdog());
        tracing::info!(url = %link.config.url, submitter = %link.id, "remote link up");
        Ok(link)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u8), Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fall_back(&self, token: Box<dyn PendingToken>) {
        self.counters.fell_back.fetch_add(1, Relaxed);
        token.fall_back();
    }

    fn fall_back_key(&self, key: (u64, u8)) {
        let pending = self.pending().remove(&key);
        if let Some(pending) = pending {
            self.fall_back(pending.token);
        }
    }

    /// Publishes calls as they come; the stream's acks are awaited together, off this
    /// loop.
    async fn publish(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        while let Some(Outgoing { op, calls }) = rx.recv().await {
            let subject = wire::call_subject(&op);
            let acks = futures_util::stream::FuturesUnordered::new();
            for (arg, (id, attempt)) in calls {
                if !self.pending().contains_key(&(id, attempt)) {
                    // Moved to the local lanes while it waited here.
                    continue;
                }
                if !self.available() {
                    self.fall_back_key((id, attempt));
                    continue;
                }
                let call = Call {
                    version: WIRE_VERSION,
                    op: op.clone(),
                    token: id,
                    attempt,
                    reply: self.answers.clone(),
                    arg,
                };
                let bytes = wire::encode(&call).expect("a call always encodes");
                self.counters.remote_tokens.fetch_add(1, Relaxed);
                let message = PublishMessage::build()
                    .payload(bytes.into())
                    .message_id(format!("{}.{id}.{attempt}", self.id));
                match self.js.send_publish(subject.clone(), message).await {
                    Ok(ack) => acks.push(async move { (ack.await, (id, attempt)) }),
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing a call failed; running it here");
                        self.fall_back_key((id, attempt));
                    }
                }
            }
            let link = Arc::clone(&self);
            tokio::spawn(async move {
                let mut acks = acks;
                while let Some((stored, key)) = acks.next().await {
                    if let Err(e) = stored {
                        tracing::debug!(error = %e, "a call was not stored; running it here");
                        link.fall_back_key(key);
                    }
                }
            });
        }
    }

    /// Reads this submitter's answers, re-subscribing after an outage from where it
    /// stopped.
    async fn answer_loop(self: Arc<Self>) {
        let mut next_sequence = 1;
        loop {
            if let Err(e) = self.read_answers(&mut next_sequence).await {
                tracing::debug!(error = %e, "answer subscription ended; re-subscribing");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn read_answers(&self, next_sequence: &mut u64) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(wire::ANSWERS_STREAM).await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.answers.clone(),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: *next_sequence,
                },
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            if let Ok(info) = message.info() {
                *next_sequence = info.stream_sequence + 1;
            }
            self.on_answer(&message.payload);
        }
        Ok(())
    }

    fn on_answer(&self, bytes: &[u8]) {
        let answer = match wire::decode::<Answer>(bytes) {
            Ok(answer) if answer.version == WIRE_VERSION => answer,
            _ => {
                self.counters.bad_answers.fetch_add(1, Relaxed);
                return;
            }
        };
        if answer.delivered > 1 {
            self.counters.redelivered.fetch_add(1, Relaxed);
        }
        let Some(pending) = self.pending().remove(&(answer.token, answer.attempt)) else {
            self.counters.duplicate_results.fetch_add(1, Relaxed);
            return;
        };
        let overhead = (pending.sent.elapsed().as_nanos() as u64).saturating_sub(answer.run_ns);
        {
            let mut samples = self.overhead_ns.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() < OVERHEAD_SAMPLES {
                samples.push(overhead);
            }
        }
        if pending.token.resolve(answer.outcome, &answer.payload, answer.run_ns) {
            self.counters.resolved.fetch_add(1, Relaxed);
        } else {
            self.counters.duplicate_results.fetch_add(1, Relaxed);
        }
    }

    async fn heartbeats(self: Arc<Self>) {
        let mut beats = match self.client.subscribe(wire::HEARTBEAT_SUBJECT).await {
            Ok(beats) => beats,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear workers' heartbeats");
                return;
            }
        };
        while let Some(message) = beats.next().await {
            if let Ok(beat) = wire::decode::<Heartbeat>(&message.payload) {
                let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                if !workers.contains_key(&beat.worker) {
                    tracing::info!(worker = %beat.worker, host = %beat.host, lanes = beat.lanes,
                        "remote worker joined");
                }
                workers.retain(|_, (seen, _)| seen.elapsed() < Duration::from_secs(60));
                workers.insert(beat.worker, (Instant::now(), beat.ops));
            }
        }
    }

    /// Every 100 ms: turns remote placement off after an outage longer than the grace
    /// (and back on once connected), and moves tokens whose answer is overdue, or all
    /// of them while the link is down, to the local lanes.
    async fn watchdog(self: Arc<Self>) {
        let mut last_connected = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let now = Instant::now();
            if self.client.connection_state() == State::Connected {
                last_connected = now;
                if !self.up.swap(true, Relaxed) {
                    tracing::info!(url = %self.config.url, "remote link back up");
                }
            } else if now.duration_since(last_connected) > self.config.outage_grace
                && self.up.swap(false, Relaxed)
            {
                tracing::warn!(url = %self.config.url, grace = ?self.config.outage_grace,
                    "NATS unreachable: remote placement off, waiting remote tokens run here");
            }
            let down = !self.up.load(Relaxed);
            let timeout = self.config.result_timeout;
            let (mut overdue, mut orphaned) = (0, 0);
            let moved: Vec<Pending> = {
                let mut pending = self.pending();
                if pending.is_empty() {
                    continue;
                }
                // Operations with waiting tokens and no live worker (looked up once each).
                let mut served: HashMap<Arc<str>, bool> = HashMap::new();
                let mut keys = Vec::new();
                for (key, p) in pending.iter() {
                    let live = *served
                        .entry(Arc::clone(&p.op))
                        .or_insert_with(|| self.workers(Some(&p.op)) > 0);
                    if down || !live {
                        orphaned += usize::from(!down && !live);
                        keys.push(*key);
                    } else if now.duration_since(p.sent) > timeout {
                        overdue += 1;
                        keys.push(*key);
                    }
                }
                keys.iter().filter_map(|key| pending.remove(key)).collect()
            };
            if overdue > 0 {
                tracing::warn!(tokens = overdue, timeout = ?timeout,
                    "remote answers overdue: running those tokens here");
            }
            if orphaned > 0 {
                tracing::warn!(tokens = orphaned, grace = ?self.config.worker_grace,
                    "no live worker serves their operation: running those tokens here");
            }
            for pending in moved {
                self.fall_back(pending.token);
            }
        }
    }
}

impl RemotePort for Link {
    fn placement(&self) -> RemotePlacement {
        self.config.placement
    }

    fn available(&self) -> bool {
        self.up.load(Relaxed) && !self.closed.load(Relaxed)
    }

    fn workers(&self, op: Option<&str>) -> usize {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |seen: &Instant| seen.elapsed() < self.config.worker_grace;
        let serves = |ops: &Vec<String>| op.is_none_or(|op| ops.iter().any(|o| o == op));
        workers.values().filter(|(seen, ops)| recent(seen) && serves(ops)).count()
    }

    fn send(&self, op: &str, calls: Vec<(Vec<u8>, Box<dyn PendingToken>)>) {
        let sent = Instant::now();
        let op_name: Arc<str> = op.into();
        let mut keys = Vec::with_capacity(calls.len());
        {
            let mut pending = self.pending();
            for (arg, token) in calls {
                let key = token.key();
                pending.insert(key, Pending { token, sent, op: Arc::clone(&op_name) });
                keys.push((arg, key));
            }
        }
        if let Err(mpsc::error::SendError(outgoing)) =
            self.outgoing.send(Outgoing { op: op.to_string(), calls: keys })
        {
            // The runtime is gone (the engine is being dropped): run them here.
            outgoing.calls.into_iter().for_each(|(_, key)| self.fall_back_key(key));
        }
    }

    fn close(&self) {
        self.closed.store(true, Relaxed);
        let all: Vec<Pending> = self.pending().drain().map(|(_, pending)| pending).collect();
        for pending in all {
            self.fall_back(pending.token);
        }
    }

    fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        let overhead_p50_us = {
            let mut samples = self.overhead_ns.lock().unwrap_or_else(|e| e.into_inner()).clone();
            samples.sort_unstable();
            samples.get(samples.len() / 2).map_or(0.0, |ns| *ns as f64 / 1e3)
        };
        RemoteStats {
            remote_tokens: c.remote_tokens.load(Relaxed),
            resolved: c.resolved.load(Relaxed),
            redelivered: c.redelivered.load(Relaxed),
            duplicate_results: c.duplicate_results.load(Relaxed),
            fell_back: c.fell_back.load(Relaxed),
            bad_answers: c.bad_answers.load(Relaxed),
            pending: self.pending().len() as u64,
            workers: self.workers(None) as u64,
            connected: self.available(),
            overhead_p50_us,
        }
    }
}

pub(crate) use crate::telemetry::hostname;

/// `name` with every character that may not stand in a NATS subject token (or a
/// consumer name) replaced by `-`.
pub(crate) fn subject_safe(name: &str) -> String {
    name.chars().map(|c| if wire::name_char(c) { c } else { '-' }).collect()
}

/// A number unlikely to repeat between two engines started on one host.
pub(crate) fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
    hasher.finish() & 0xffff_ffff
}
