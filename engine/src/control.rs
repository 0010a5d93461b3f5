//! The control port: an authenticated WebSocket for live, per-operation control.
//!
//! JSON text frames. A request carries an `id` that its reply echoes:
//! `{"id":1,"cmd":"pause","op":"pi_term"}` → `{"id":1,"ok":true}`; a refusal is
//! `{"id":1,"ok":false,"error":{"code":"unknown_op","message":"…"}}`. Subscribers get
//! `{"event":"stats",…}` at their interval and `{"event":"override",…}` on every change.
//! The README has the full protocol table.
//!
//! Defences: loopback by default; a secret in the handshake (`Authorization: Bearer …` or
//! `?token=`), compared in constant time, or HTTP 401 before any command is read; frames
//! over 64 KiB close the connection with a reason; at most 16 connections; a token bucket
//! per connection (100 requests/s, bursts of 200); events to a slow subscriber are
//! dropped and counted, never waited for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::engine::{Controller, Shutdown};
use crate::router::LaneSet;

/// Largest frame a client may send.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
const RATE_PER_S: f64 = 100.0;
const BURST: f64 = 200.0;
/// Rejected requests after which a flooding connection is closed.
const FLOOD_LIMIT: u32 = 20_000;
const EVENT_QUEUE: usize = 64;

/// A fresh secret: 32 random bytes from the OS, hex-encoded.
pub fn generate_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal-length inputs are compared without an early exit, so timing does not reveal
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_secret(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::to_string);
    }
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_string)
}

/// Where and how the control port listens.
#[derive(Debug, Clone)]
pub(crate) struct ControlConfig {
    pub(crate) addr: SocketAddr,
    pub(crate) secret: String,
    pub(crate) public: bool,
}

/// Binds the port (so a bad address is a build error) and serves it on `runtime`.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    config: &ControlConfig,
    shared: &Arc<crate::engine::Shared>,
) -> Result<SocketAddr, crate::BuildError> {
    if config.secret.len() < 16 {
        return Err(crate::BuildError::invalid("control secret must be at least 16 characters"));
    }
    if !config.addr.ip().is_loopback() {
        if !config.public {
            return Err(crate::BuildError::invalid(format!(
                "control port {} is not a loopback address: allow it explicitly",
                config.addr
            )));
        }
        tracing::warn!("control port listening on {}, beyond this machine", config.addr);
    }
    let listener = std::net::TcpListener::bind(config.addr).map_err(crate::BuildError::io)?;
    listener.set_nonblocking(true).map_err(crate::BuildError::io)?;
    let addr = listener.local_addr().map_err(crate::BuildError::io)?;
    let controller = Controller { shared: Arc::clone(shared) };
    let secret = config.secret.clone();
    let _guard = runtime.enter();
    let listener = TcpListener::from_std(listener).map_err(crate::BuildError::io)?;
    runtime.spawn(serve(listener, controller, secret));
    Ok(addr)
}

struct Server {
    controller: Controller,
    secret: String,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    overrides: broadcast::Sender<String>,
}

/// Serves the control port on `listener` until the engine's runtime stops.
pub(crate) async fn serve(listener: TcpListener, controller: Controller, secret: String) {
    let (overrides, _) = broadcast::channel(256);
    let server = Arc::new(Server {
        controller,
        secret,
        connections: AtomicUsize::new(0),
        next_connection: AtomicU64::new(1),
        overrides,
    });
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.connection(stream, peer).await });
    }
}

fn reply_error(id: &Value, code: &str, message: impl Into<String>) -> Value {
    json!({ "id": id, "ok": false, "error": { "code": code, "message": message.into() } })
}

impl Server {
    // The handshake callback's error type is tungstenite's `ErrorResponse`.
    #[allow(clippy::result_large_err)]
    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let full = self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS;
        let secret = self.secret.clone();
        let check =
            move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                let refuse = |status: u16, body: &str| {
                    let mut response = ErrorResponse::new(Some(body.to_string()));
                    *response.status_mut() = status.try_into().expect("valid status");
                    response
                };
                if full {
                    return Err(refuse(503, "too many control connections"));
                }
                match presented_secret(request) {
                    Some(given) if constant_time_eq(given.as_bytes(), secret.as_bytes()) => {
                        Ok(response)
                    }
                    _ => Err(refuse(401, "unauthorized: present the control secret")),
                }
            };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let accepted =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await;
        if let Ok(socket) = accepted {
            let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
            tracing::info!("control connection {id} from {peer}");
            self.session(socket, id).await;
        }
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    async fn session(&self, socket: tokio_tungstenite::WebSocketStream<TcpStream>, conn: u64) {
        let (mut sink, mut stream) = socket.split();
        let (out, mut outbox) = mpsc::channel::<Message>(EVENT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(message) = outbox.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
        });
        let mut overrides = self.overrides.subscribe();
        let mut ticker: Option<tokio::time::Interval> = None;
        let mut last_snapshot: Option<(Instant, Vec<u64>)> = None;
        let mut dropped_events = 0u64;
        let (mut tokens, mut refill) = (BURST, Instant::now());
        let mut refused = 0u32;
        loop {
            let subscribed = ticker.is_some();
            let mut change: Option<Option<Duration>> = None;
            let tick = async {
                match ticker.as_mut() {
                    Some(ticker) => ticker.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = stream.next() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            let reason = format!("{error}");
                            let _ = out.send(close(CloseCode::Size, &reason)).await;
                            break;
                        }
                        None => break,
                    };
                    let now = Instant::now();
                    tokens = (tokens + now.duration_since(refill).as_secs_f64() * RATE_PER_S).min(BURST);
                    refill = now;
                    let reply = if tokens < 1.0 {
                        refused += 1;
                        if refused > FLOOD_LIMIT {
                            let _ = out.send(close(CloseCode::Policy, "too many requests")).await;
                            break;
                        }
                        Some(reply_error(&Value::Null, "rate_limited", "slow down: at most 100 requests/s"))
                    } else {
                        tokens -= 1.0;
                        match message {
                            Message::Text(text) => Some(self.request(text.as_str(), conn, &mut change)),
                            Message::Binary(_) => Some(reply_error(&Value::Null, "binary_frame", "send JSON text frames")),
                            Message::Close(_) => break,
                            _ => None,
                        }
                    };
                    if let Some(reply) = reply {
                        if out.send(Message::text(reply.to_string())).await.is_err() {
                            break;
                        }
                    }
                }
                _ = tick => {
                    let event = self.stats_event(&mut last_snapshot, dropped_events);
                    match out.try_send(Message::text(event.to_string())) {
                        Ok(()) => dropped_events = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => dropped_events += 1,
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                changed = overrides.recv(), if subscribed => {
                    let event = match changed {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            dropped_events += missed;
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => continue,
                    };
                    if out.try_send(Message::text(event)).is_err() {
                        dropped_events += 1;
                    }
                }
            }
            if let Some(period) = change {
                ticker = period.map(|period| {
                    let mut interval = tokio::time::interval(period);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    interval
                });
            }
        }
        drop(out);
        let _ = writer.await;
    }

    /// Handles one text frame; always returns the reply. A (un)subscription is handed
    /// back in `ticker` for the session loop to apply.
    fn request(&self, text: &str, conn: u64, ticker: &mut Option<Option<Duration>>) -> Value {
        let request: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => return reply_error(&Value::Null, "bad_json", format!("not JSON: {e}")),
        };
        let Some(fields) = request.as_object() else {
            return reply_error(&Value::Null, "bad_request", "a request is a JSON object");
        };
        let id = fields.get("id").cloned().unwrap_or(Value::Null);
        let Some(cmd) = fields.get("cmd").and_then(Value::as_str) else {
            return reply_error(&id, "bad_request", "missing string field \"cmd\"");
        };
        let op = match fields.get("op") {
            None | Some(Value::Null) => None,
            Some(Value::String(op)) => Some(op.as_str()),
            Some(_) => return reply_error(&id, "bad_request", "\"op\" must be a string"),
        };
        let missing_op = || reply_error(&id, "bad_request", format!("{cmd} needs \"op\""));
        let done = |result: Result<(), crate::ControlError>, change: Option<Value>| match result {
            Ok(()) => {
                if let Some(change) = change {
                    let event = json!({ "event": "override", "by": conn, "cmd": cmd, "op": op, "change": change });
                    let _ = self.overrides.send(event.to_string());
                }
                json!({ "id": id, "ok": true })
            }
            Err(crate::ControlError::UnknownOp(name)) => {
                reply_error(&id, "unknown_op", format!("no operation named {name:?}"))
            }
            Err(e) => reply_error(&id, "bad_value", e.to_string()),
        };
        let c = &self.controller;
        match cmd {
            "pause" => done(c.pause(op), Some(json!({ "paused": true }))),
            "resume" => done(c.resume(op), Some(json!({ "paused": false }))),
            "clear" => done(c.clear_overrides(op), Some(json!("cleared"))),
            "pin" => {
                let Some(op) = op else { return missing_op() };
                let lanes = match fields.get("lanes") {
                    Some(Value::String(l)) if l == "light" => Some(LaneSet::Light),
                    Some(Value::String(l)) if l == "heavy" => Some(LaneSet::Heavy),
                    None | Some(Value::Null) => None,
                    Some(_) => {
                        return reply_error(
                            &id,
                            "bad_request",
                            "\"lanes\" must be \"light\", \"heavy\" or null",
                        )
                    }
                };
                done(c.pin(op, lanes), Some(json!({ "lanes": lanes.map(LaneSet::as_str) })))
            }
            "batch" => {
                let Some(op) = op else { return missing_op() };
                let size = match optional_u32(fields, "size", &id) {
                    Ok(size) => size,
                    Err(reply) => return reply,
                };
                done(c.force_batch(op, size), Some(json!({ "batch": size })))
            }
            "stats" => {
                let mut snapshot = None;
                let event = self.stats_event(&mut snapshot, 0);
                json!({ "id": id, "ok": true, "ops": event["ops"] })
            }
            "subscribe" => {
                let ms = match fields.get("interval_ms") {
                    None | Some(Value::Null) => 500,
                    Some(v) => match v.as_u64() {
                        Some(ms) if (50..=60_000).contains(&ms) => ms,
                        _ => {
                            return reply_error(
                                &id,
                                "bad_request",
                                "\"interval_ms\" must be 50..=60000",
                            )
                        }
                    },
                };
                *ticker = Some(Some(Duration::from_millis(ms)));
                json!({ "id": id, "ok": true, "interval_ms": ms })
            }
            "unsubscribe" => {
                *ticker = Some(None);
                json!({ "id": id, "ok": true })
            }
            "shutdown" => {
                let mode = match fields.get("mode").and_then(Value::as_str) {
                    None | Some("drain") => Shutdown::Drain,
                    Some("abort") => Shutdown::Abort,
                    Some(other) => {
                        return reply_error(
                            &id,
                            "bad_request",
                            format!("unknown mode {other:?}: drain or abort"),
                        )
                    }
                };
                c.shutdown(mode);
                json!({ "id": id, "ok": true })
            }
            "cancel" => match (op, fields.get("token")) {
                (Some(op), None) => match c.cancel_waiting(op) {
                    Ok(held) => json!({ "id": id, "ok": true, "cancelled_now": held }),
                    Err(e) => done(Err(e), None),
                },
                (None, Some(token)) => match token.as_u64() {
                    Some(token) => done(c.cancel_token(token), None),
                    None => reply_error(&id, "bad_request", "\"token\" must be a token id"),
                },
                _ => reply_error(&id, "bad_request", "cancel needs either \"op\" or \"token\""),
            },
            "throttle" => {
                let Some(op) = op else { return missing_op() };
                let max = match optional_u32(fields, "max", &id) {
                    Ok(max) => max,
                    Err(reply) => return reply,
                };
                done(c.throttle(op, max), Some(json!({ "throttle": max })))
            }
            other => reply_error(&id, "unknown_cmd", format!("unknown command {other:?}")),
        }
    }

    /// A stats event: per operation, counters, waiting tokens, throughput since the
    /// last snapshot on this connection, and overrides.
    fn stats_event(&self, last: &mut Option<(Instant, Vec<u64>)>, dropped: u64) -> Value {
        let now = Instant::now();
        let stats = self.controller.op_stats();
        let activity = self.controller.op_activity();
        let finished: Vec<u64> = stats
            .iter()
            .map(|(_, s, _)| s.completed + s.failed + s.cancelled + s.timed_out)
            .collect();
        let ops: Vec<Value> = stats
            .iter()
            .enumerate()
            .map(|(i, (name, s, o))| {
                let throughput = match last.as_ref() {
                    Some((at, before)) if before.len() > i => {
                        (finished[i] - before[i]) as f64
                            / now.duration_since(*at).as_secs_f64().max(1e-6)
                    }
                    _ => 0.0,
                };
                let (running, p50_ns, p99_ns) = activity.get(i).copied().unwrap_or_default();
                json!({
                    "op": name,
                    "submitted": s.submitted,
                    "waiting": s.submitted.saturating_sub(finished[i]),
                    "running": running,
                    "p50_ms": p50_ns as f64 / 1e6,
                    "p99_ms": p99_ns as f64 / 1e6,
                    "completed": s.completed,
                    "failed": s.failed,
                    "cancelled": s.cancelled,
                    "timed_out": s.timed_out,
                    "rejected": s.rejected,
                    "throughput": throughput,
                    "overrides": {
                        "paused": o.paused,
                        "pin": o.pin.map(LaneSet::as_str),
                        "batch": o.batch,
                        "throttle": o.throttle,
                    },
                })
            })
            .collect();
        *last = Some((now, finished));
        json!({ "event": "stats", "ops": ops, "dropped_events": dropped })
    }
}

/// An optional positive integer field: absent or null is `None`; anything else but a
/// `u32` is a `bad_request` reply.
fn optional_u32(
    fields: &serde_json::Map<String, Value>,
    name: &str,
    id: &Value,
) -> Result<Option<u32>, Value> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
            reply_error(id, "bad_request", format!("\"{name}\" must be a positive integer or null"))
        }),
    }
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(100).collect::<String>().into(),
    }))
}
