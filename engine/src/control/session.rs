//! One WebSocket session of the control port: requests in, replies and events out.
//!
//! Events to a slow subscriber are dropped and counted, never waited for; a token
//! bucket per connection (100 requests/s, bursts of 200) bounds what a client can ask.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::protocol::to_json;
use super::protocol::{
    parse_request, Change, Command, EngineSnapshot, ErrorCode, Event, OpSnapshot, Reply,
    SetLatency, ShutdownMode,
};
use super::ControlError;
use super::Controller;
use crate::op::Shutdown;
use crate::placement::LaneSet;
use crate::telemetry::histogram::{quantile_of, LATENCY_BUCKETS};

const RATE_PER_S: f64 = 100.0;
const BURST: f64 = 200.0;
/// Rejected requests after which a flooding connection is closed.
const FLOOD_LIMIT: u32 = 20_000;
const EVENT_QUEUE: usize = 64;

/// What a subscription asked for, handed from a request to the session loop.
struct Subscription {
    period: Duration,
    engine: bool,
}

/// The previous snapshot on this connection, for rates (tokens/s, busy share).
#[derive(Default)]
struct Previous {
    ops: Option<(Instant, Vec<u64>)>,
    lanes: Option<(Instant, Vec<u64>)>,
    sets: Option<[[u64; LATENCY_BUCKETS]; 3]>,
}

/// What a session needs of the server: the engine's controller, and the channel of
/// override and model-swap events every subscriber hears.
struct Session<'a> {
    controller: &'a Controller,
    overrides: &'a broadcast::Sender<String>,
}

/// Serves one authenticated WebSocket connection (`conn`: its number, for the
/// logs) until it closes.
pub(super) async fn serve<S>(
    controller: &Controller,
    overrides: &broadcast::Sender<String>,
    socket: WebSocketStream<S>,
    conn: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Session { controller, overrides }.run(socket, conn).await
}

impl Session<'_> {
    async fn run<S>(&self, socket: WebSocketStream<S>, conn: u64)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
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
        let mut with_engine = false;
        let mut previous = Previous::default();
        let mut dropped_events = 0u64;
        let (mut tokens, mut refill) = (BURST, Instant::now());
        let mut refused = 0u32;
        loop {
            let subscribed = ticker.is_some();
            let mut change: Option<Option<Subscription>> = None;
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
                    let ops = self.snapshot(&mut previous.ops);
                    let engine = with_engine.then(|| self.engine_snapshot(&mut previous));
                    let event = Event::Stats { ops, dropped_events, engine };
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
            if let Some(subscription) = change {
                with_engine = subscription.as_ref().is_some_and(|s| s.engine);
                ticker = subscription.map(|subscription| {
                    let mut interval = tokio::time::interval(subscription.period);
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
    fn request(&self, text: &str, conn: u64, ticker: &mut Option<Option<Subscription>>) -> Reply {
        let request = match parse_request(text) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let id = request.id;
        let cmd = request.command.name();
        tracing::debug!(connection = conn, command = cmd, "control command");
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
            Command::Subscribe { interval_ms, engine } => {
                let ms = interval_ms.unwrap_or(500);
                if !(50..=60_000).contains(&ms) {
                    let message = "\"interval_ms\" must be 50..=60000";
                    return Reply::error(id, ErrorCode::BadValue, message);
                }
                let period = Duration::from_millis(ms);
                *ticker = Some(Some(Subscription { period, engine: *engine }));
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
                op.throughput = Some(now.saturating_sub(*before) as f64 / seconds);
            }
        }
        *last = Some((now, finished));
        ops
    }

    /// Lanes and model, with each lane's busy share since the previous snapshot taken
    /// on this connection.
    fn engine_snapshot(&self, previous: &mut Previous) -> EngineSnapshot {
        let now = Instant::now();
        let mut snapshot = self.controller.engine_snapshot();
        let busy: Vec<u64> = self.controller.lane_busy_ns();
        if let Some((at, before)) = previous.lanes.as_ref() {
            let wall_ns = now.duration_since(*at).as_nanos().max(1) as f64;
            for ((lane, now), before) in snapshot.lanes.iter_mut().zip(&busy).zip(before) {
                lane.busy_share = (now.saturating_sub(*before) as f64 / wall_ns).min(1.0);
            }
        }
        previous.lanes = Some((now, busy));
        let counts = self.controller.set_latency_counts();
        snapshot.sets = set_latency(previous.sets.as_ref(), &counts);
        previous.sets = Some(counts);
        snapshot
    }
}

/// Each lane set's tokens and p99 in the window between two reads of its histogram.
fn set_latency(
    before: Option<&[[u64; LATENCY_BUCKETS]; 3]>,
    now: &[[u64; LATENCY_BUCKETS]; 3],
) -> Vec<SetLatency> {
    LaneSet::ALL
        .into_iter()
        .map(|set| {
            let now = &now[set.index()];
            let window: Vec<u64> = match before {
                Some(before) => now
                    .iter()
                    .zip(&before[set.index()])
                    .map(|(n, b)| n.saturating_sub(*b))
                    .collect(),
                None => vec![0; LATENCY_BUCKETS],
            };
            let p99_ns = quantile_of(&window, 0.99);
            SetLatency { set, tokens: window.iter().sum(), p99_ms: p99_ns as f64 / 1e6 }
        })
        .collect()
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(100).collect::<String>().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_latency_is_the_window_between_two_reads() {
        use crate::telemetry::histogram::bucket_of;
        let (fast, slow, heavy) = (bucket_of(1_000), bucket_of(1_000_000), bucket_of(30_000));
        let mut before = [[0u64; LATENCY_BUCKETS]; 3];
        before[0][fast] = 500; // light: 500 tokens of ~1 µs, before the window
        let mut now = before;
        now[0][fast] += 98; // in the window: 98 fast and 2 slow light tokens
        now[0][slow] += 2;
        now[1][heavy] += 7;
        assert!(set_latency(None, &now).iter().all(|s| s.tokens == 0 && s.p99_ms == 0.0));
        let sets = set_latency(Some(&before), &now);
        assert_eq!((sets[0].set, sets[0].tokens), (LaneSet::Light, 100));
        let near = |got: f64, want: f64| (got - want).abs() <= 0.035 * want;
        assert!(near(sets[0].p99_ms, 1.0), "the 99th of 100 is slow: {}", sets[0].p99_ms);
        assert_eq!(sets[1].tokens, 7);
        assert!(near(sets[1].p99_ms, 0.03), "{}", sets[1].p99_ms);
        assert_eq!((sets[2].set, sets[2].tokens), (LaneSet::Remote, 0));
    }
}
