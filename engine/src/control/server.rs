//! The control port's server: an authenticated WebSocket speaking [`super::protocol`].
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
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::protocol::{
    parse_request, Change, Command, ErrorCode, Event, OpSnapshot, Reply, ShutdownMode,
};
use super::{ControlError, Controller};
use crate::core::Shutdown;

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

/// Checks the configuration and binds the port, before the engine starts any thread
/// (so a bad address or secret fails `build()` with nothing to clean up).
pub(crate) fn bind(config: &ControlConfig) -> Result<std::net::TcpListener, crate::BuildError> {
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
    let listener = std::net::TcpListener::bind(config.addr).map_err(|e| {
        crate::BuildError::io(format!("binding the control port {}", config.addr), e)
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| crate::BuildError::io("configuring the control port", e))?;
    Ok(listener)
}

/// Serves the control port on `listener` (bound by [`bind`]) on `runtime`.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    controller: Controller,
    secret: String,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let _guard = runtime.enter();
    let listener = TcpListener::from_std(listener)?;
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
async fn serve(listener: TcpListener, controller: Controller, secret: String) {
    let (overrides, _) = broadcast::channel(256);
    let swaps = overrides.clone();
    controller.on_model_swap(move |version| {
        let _ = swaps.send(to_json(&Event::ModelSwapped { version }));
    });
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
            tracing::info!("control connection {id} closed");
        } else if let Err(e) = accepted {
            tracing::debug!("control handshake from {peer} refused: {e}");
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
                        Some(Reply::error(Value::Null, ErrorCode::RateLimited, "slow down: at most 100 requests/s"))
                    } else {
                        tokens -= 1.0;
                        match message {
                            Message::Text(text) => Some(self.request(text.as_str(), conn, &mut change)),
                            Message::Binary(_) => Some(Reply::error(Value::Null, ErrorCode::BinaryFrame, "send JSON text frames")),
                            Message::Close(_) => break,
                            _ => None,
                        }
                    };
                    if let Some(reply) = reply {
                        if out.send(Message::text(to_json(&reply))).await.is_err() {
                            break;
                        }
                    }
                }
                _ = tick => {
                    let ops = self.snapshot(&mut last_snapshot);
                    let event = Event::Stats { ops, dropped_events };
                    match out.try_send(Message::text(to_json(&event))) {
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
    fn request(&self, text: &str, conn: u64, ticker: &mut Option<Option<Duration>>) -> Reply {
        let request = match parse_request(text) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let id = request.id;
        let cmd = request.command.name();
        tracing::debug!("control connection {conn}: {cmd}");
        let c = &self.controller;
        // Carries out an override and tells every subscriber what changed.
        let announce = |op: Option<&str>, result: Result<(), ControlError>, change: Change| {
            result.map(|()| {
                let event =
                    Event::Override { by: conn, cmd: cmd.into(), op: op.map(Into::into), change };
                let _ = self.overrides.send(to_json(&event));
            })
        };
        let result = match &request.command {
            Command::Pause { op } => {
                announce(op.as_deref(), c.pause(op.as_deref()), Change::Paused(true))
            }
            Command::Resume { op } => {
                announce(op.as_deref(), c.resume(op.as_deref()), Change::Paused(false))
            }
            Command::Clear { op } => {
                announce(op.as_deref(), c.clear_overrides(op.as_deref()), Change::Cleared)
            }
            Command::Pin { op, lanes } => {
                announce(Some(op), c.pin(op, *lanes), Change::Lanes(*lanes))
            }
            Command::Batch { op, size } => {
                announce(Some(op), c.force_batch(op, *size), Change::Batch(*size))
            }
            Command::Throttle { op, max } => {
                announce(Some(op), c.throttle(op, *max), Change::Throttle(*max))
            }
            Command::Cancel { op: Some(op), token: None } => match c.cancel_waiting(op) {
                Ok(held) => return Reply { cancelled_now: Some(held), ..Reply::ok(id) },
                Err(e) => Err(e),
            },
            Command::Cancel { op: None, token: Some(token) } => c.cancel_token(*token),
            Command::Cancel { .. } => {
                let message = "cancel needs either \"op\" or \"token\"";
                return Reply::error(id, ErrorCode::BadRequest, message);
            }
            Command::Stats => {
                return Reply { ops: Some(self.snapshot(&mut None)), ..Reply::ok(id) };
            }
            Command::Subscribe { interval_ms } => {
                let ms = interval_ms.unwrap_or(500);
                if !(50..=60_000).contains(&ms) {
                    let message = "\"interval_ms\" must be 50..=60000";
                    return Reply::error(id, ErrorCode::BadRequest, message);
                }
                *ticker = Some(Some(Duration::from_millis(ms)));
                return Reply { interval_ms: Some(ms), ..Reply::ok(id) };
            }
            Command::Model => {
                return Reply { model: Some(c.model_status()), ..Reply::ok(id) };
            }
            Command::Adapt { on } => match c.set_adapt(*on) {
                Ok(()) => return Reply { model: Some(c.model_status()), ..Reply::ok(id) },
                Err(e) => Err(e),
            },
            Command::Unsubscribe => {
                *ticker = Some(None);
                Ok(())
            }
            Command::Shutdown { mode } => {
                c.shutdown(match mode {
                    None | Some(ShutdownMode::Drain) => Shutdown::Drain,
                    Some(ShutdownMode::Abort) => Shutdown::Abort,
                });
                Ok(())
            }
        };
        match result {
            Ok(()) => Reply::ok(id),
            Err(e @ ControlError::UnknownOp(_)) => {
                Reply::error(id, ErrorCode::UnknownOp, e.to_string())
            }
            Err(e @ ControlError::NotWaiting(_)) => {
                Reply::error(id, ErrorCode::NotWaiting, e.to_string())
            }
            Err(e) => Reply::error(id, ErrorCode::BadValue, e.to_string()),
        }
    }

    /// Per operation, the controller's snapshot with throughput since the last snapshot
    /// taken on this connection.
    fn snapshot(&self, last: &mut Option<(Instant, Vec<u64>)>) -> Vec<OpSnapshot> {
        let now = Instant::now();
        let mut ops = self.controller.snapshot();
        let finished: Vec<u64> =
            ops.iter().map(|s| s.completed + s.failed + s.cancelled + s.timed_out).collect();
        if let Some((at, before)) = last.as_ref() {
            let seconds = now.duration_since(*at).as_secs_f64().max(1e-6);
            for ((op, now), before) in ops.iter_mut().zip(&finished).zip(before) {
                op.throughput = now.saturating_sub(*before) as f64 / seconds;
            }
        }
        *last = Some((now, finished));
        ops
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("protocol types always serialise")
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(100).collect::<String>().into(),
    }))
}
