//! The control port's wire format, as serde types shared by the server and
//! `tokengate ctl` (and any Rust client).
//!
//! JSON text frames. A [`Request`] carries an `id` that its [`Reply`] echoes:
//! `{"id":1,"cmd":"pause","op":"pi_term"}` → `{"id":1,"ok":true}`; a refusal is
//! `{"id":1,"ok":false,"error":{"code":"unknown_op","message":"…"}}`. Subscribers get
//! [`Event`]s: `{"event":"stats",…}` at their interval and `{"event":"override",…}` on
//! every change. A client reads either with [`ServerMessage`].
//!
//! ```
//! use tokengate::control::protocol::{Command, Request};
//! let request = Request::new(1, Command::Pause { op: Some("pi_term".into()) });
//! assert_eq!(
//!     serde_json::to_string(&request).unwrap(),
//!     r#"{"id":1,"cmd":"pause","op":"pi_term"}"#
//! );
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::op::control::Overrides;
use crate::placement::LaneSet;

/// One request frame: an `id` (any JSON value, echoed) and a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply (null when absent).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub id: Value,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// A request with a numeric id.
    pub fn new(id: u64, command: Command) -> Self {
        Request { id: Value::from(id), command }
    }
}

/// A command, tagged by its `cmd` field. `op` names an operation; where it is optional,
/// omitting it means every operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Admitted work of the operation (or all) waits, keeping its place and permits.
    Pause {
        /// The operation (omit: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<String>,
    },
    /// Releases what a pause held (omit `op`: every operation).
    Resume {
        /// The operation (omit: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<String>,
    },
    /// Cancels the operation's tokens that have not started, or one waiting token.
    Cancel {
        /// The operation whose waiting tokens to cancel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<String>,
        /// One token id (instead of `op`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<u64>,
    },
    /// At most `max` tokens of the operation run at once (`null`: no limit).
    Throttle {
        /// The operation.
        op: String,
        /// The limit (≥ 1), or null to lift it.
        #[serde(default)]
        max: Option<u32>,
    },
    /// New tokens of the operation go to this lane set (`null`: back to the router).
    Pin {
        /// The operation.
        op: String,
        /// `light`, `heavy`, or null.
        #[serde(default)]
        lanes: Option<LaneSet>,
    },
    /// New tokens of the operation are batched `size` at a time (`null`: the router's).
    Batch {
        /// The operation.
        op: String,
        /// Tokens per batch (1..=1024), or null.
        #[serde(default)]
        size: Option<u32>,
    },
    /// Drops pause, pin, batch and throttle of the operation (omit: all).
    Clear {
        /// The operation (omit: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<String>,
    },
    /// A stats snapshot in the reply.
    Stats,
    /// Stats events at this interval (50..=60000 ms, default 500), and override events.
    Subscribe {
        /// Milliseconds between stats events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// Also send the lanes and the model in each stats event (the dashboard does).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        engine: bool,
    },
    /// Stops the events.
    Unsubscribe,
    /// The model routing now and what adaptation has done (`model` in the reply).
    Model,
    /// Turns online re-fitting on or off (engines built with adaptation).
    Adapt {
        /// On or off.
        on: bool,
    },
    /// Starts a shutdown.
    Shutdown {
        /// `drain` (default) or `abort`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<ShutdownMode>,
    },
}

impl Command {
    /// Every command name, as sent in `cmd`.
    pub const NAMES: [&'static str; 13] = [
        "pause",
        "resume",
        "cancel",
        "throttle",
        "pin",
        "batch",
        "clear",
        "stats",
        "subscribe",
        "unsubscribe",
        "model",
        "adapt",
        "shutdown",
    ];

    /// The `cmd` name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Cancel { .. } => "cancel",
            Command::Throttle { .. } => "throttle",
            Command::Pin { .. } => "pin",
            Command::Batch { .. } => "batch",
            Command::Clear { .. } => "clear",
            Command::Stats => "stats",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe => "unsubscribe",
            Command::Model => "model",
            Command::Adapt { .. } => "adapt",
            Command::Shutdown { .. } => "shutdown",
        }
    }
}

/// How a `shutdown` command treats admitted work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownMode {
    /// Finish everything admitted.
    Drain,
    /// Cancel everything waiting.
    Abort,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's `id` (null if it had none or could not be read).
    pub id: Value,
    /// Whether the command was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// `cancel {op}`: tokens set aside (paused or throttled) cancelled at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_now: Option<u64>,
    /// `subscribe`: the interval in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// `stats`: one entry per operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpSnapshot>>,
    /// `model` and `adapt`: the model routing now and what adaptation has done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::adapt::AdaptStatus>,
}

impl Reply {
    /// `{"id":…,"ok":true}`.
    pub fn ok(id: Value) -> Self {
        Reply {
            id,
            ok: true,
            error: None,
            cancelled_now: None,
            interval_ms: None,
            ops: None,
            model: None,
        }
    }

    /// `{"id":…,"ok":false,"error":{…}}`.
    pub fn error(id: Value, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(ErrorBody { code, message: message.into() }),
            ..Reply::ok(id)
        }
    }
}

/// A refusal: a machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// What exactly was wrong.
    pub message: String,
}

/// The refusal codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not JSON.
    BadJson,
    /// The JSON is not a valid request (a field missing or of the wrong type).
    BadRequest,
    /// `cmd` names no command.
    UnknownCmd,
    /// `op` names no operation.
    UnknownOp,
    /// A value is out of range.
    BadValue,
    /// `cancel {token}` named a token that is not waiting (finished, running,
    /// already cancelled, or unknown).
    NotWaiting,
    /// A binary frame: send JSON text.
    BinaryFrame,
    /// Over the connection's request rate.
    RateLimited,
}

/// Live numbers of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OpSnapshot {
    /// Its name.
    pub op: String,
    /// The weight it declared (absent from servers before the dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<crate::placement::Weight>,
    /// Tokens admitted.
    pub submitted: u64,
    /// Admitted, neither running nor finished.
    pub waiting: u64,
    /// Running now.
    pub running: u64,
    /// The waiting tokens set aside by a pause or a throttle (until a resume, a free
    /// running slot, a lifted throttle or a cancel), apart from those still queued
    /// (absent from servers before it was added).
    #[serde(default)]
    pub held: u64,
    /// Tokens a `pin remote` override could not send remote (they ran here).
    #[serde(default)]
    pub pin_unmet: u64,
    /// Returned a value.
    pub completed: u64,
    /// Panicked or returned an error.
    pub failed: u64,
    /// Cancelled before they started.
    pub cancelled: u64,
    /// Deadline passed.
    pub timed_out: u64,
    /// Refused at admission.
    pub rejected: u64,
    /// Tokens finished per second since this connection's previous snapshot (the
    /// dashboard's: 250 ms before); `None` (JSON `null`) in a connection's first one,
    /// which has no window to measure over.
    pub throughput: Option<f64>,
    /// End-to-end latency, median (ms; from 1/16-octave buckets, read at the bucket's
    /// midpoint: within 3.2% of the exact median of the same tokens; each token timed
    /// at the end of its batch).
    pub p50_ms: f64,
    /// End-to-end latency, 99th percentile (ms; as `p50_ms`).
    pub p99_ms: f64,
    /// The overrides in force.
    pub overrides: Overrides,
}

/// The engine beside its operations: lanes and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EngineSnapshot {
    /// One entry per lane.
    pub lanes: Vec<LaneSnapshot>,
    /// The model routing now.
    pub model: ModelSnapshot,
    /// Latency by the lane set tokens ran on (light, heavy, remote), since this
    /// connection's previous snapshot.
    #[serde(default)]
    pub sets: Vec<SetLatency>,
}

/// End-to-end latency of the tokens one lane set resolved in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SetLatency {
    /// The lane set.
    pub set: LaneSet,
    /// Tokens it resolved in the window (0 in a connection's first snapshot).
    pub tokens: u64,
    /// Their 99th-percentile admission → resolution latency (ms; the upper bound of its
    /// power-of-two bucket; 0 without tokens).
    pub p99_ms: f64,
}

/// Live numbers of one lane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LaneSnapshot {
    /// The lane's index.
    pub lane: usize,
    /// The set it serves first.
    pub set: LaneSet,
    /// Its core, when pinned (none: the lane floats over the engine's cores).
    pub core: Option<usize>,
    /// The scheduling priority its thread runs at (absent from older engines).
    #[serde(default)]
    pub priority: Option<crate::placement::LanePriority>,
    /// Tokens it has taken.
    pub tokens: u64,
    /// Share of wall time spent running batches since this connection's previous
    /// snapshot (0..1; 0 in the first).
    pub busy_share: f64,
}

/// The model routing now, and how its recent predictions fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelSnapshot {
    /// Its version (0: routing without a model).
    pub version: u32,
    /// Models swapped in by online adaptation.
    pub swaps: u32,
    /// Whether online re-fitting is on.
    pub adapting: bool,
    /// The cost classes, by class id.
    pub classes: Vec<ClassSnapshot>,
    /// The newest tokens the telemetry saw (empty without telemetry).
    pub recent: Vec<RecentToken>,
}

/// One cost class of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClassSnapshot {
    /// Lowest runtime in the class (ns).
    pub min_ns: u64,
    /// Upper bound (ns, exclusive; null for the last class).
    pub max_ns: Option<u64>,
    /// Where its tokens run.
    pub lanes: LaneSet,
    /// Tokens per batch.
    pub batch: u32,
}

/// One recent token: the class the model predicted and the class its run time fell in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecentToken {
    /// The token's id.
    pub token: u64,
    /// Its operation.
    pub op: String,
    /// The class predicted at admission (null: no model decided).
    pub predicted: Option<u8>,
    /// The class its measured run time falls in (null without a model).
    pub actual: Option<u8>,
    /// Its run time (ns).
    pub run_ns: u64,
    /// The lane that ran it.
    pub lane: u16,
}

/// What an override event says changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// `{"paused":true|false}`
    Paused(bool),
    /// `{"lanes":"light"|"heavy"|null}`
    Lanes(Option<LaneSet>),
    /// `{"batch":n|null}`
    Batch(Option<u32>),
    /// `{"throttle":n|null}`
    Throttle(Option<u32>),
    /// `"cleared"`
    Cleared,
}

/// A message the server sends without being asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Periodic stats for a subscriber.
    Stats {
        /// One entry per operation.
        ops: Vec<OpSnapshot>,
        /// Events this subscriber missed because it read too slowly.
        dropped_events: u64,
        /// Lanes and model, for subscribers that asked (`"engine": true`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<EngineSnapshot>,
    },
    /// Online adaptation swapped in a new model.
    ModelSwapped {
        /// The new model version.
        version: u32,
    },
    /// An override changed (by any connection).
    Override {
        /// The connection that changed it.
        by: u64,
        /// The command.
        cmd: String,
        /// The operation (null: all).
        op: Option<String>,
        /// What changed.
        change: Change,
    },
}

/// Anything the server sends: an event or a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ServerMessage {
    /// An event (has an `event` field).
    Event(Event),
    /// A reply to a request.
    Reply(Reply),
}

/// Reads one request frame: the error reply (with whatever `id` could be read) when it
/// is not JSON, not an object, lacks `cmd`, names an unknown command, or has a field of
/// the wrong type.
// The refusal is the reply itself (as large as any reply): built once per bad frame,
// on the control path only.
#[allow(clippy::result_large_err)]
pub fn parse_request(text: &str) -> Result<Request, Reply> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Reply::error(Value::Null, ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(Reply::error(Value::Null, ErrorCode::BadRequest, "a request is a JSON object"));
    };
    let id = fields.get("id").cloned().unwrap_or(Value::Null);
    let Some(cmd) = fields.get("cmd").and_then(Value::as_str) else {
        return Err(Reply::error(id, ErrorCode::BadRequest, "missing string field \"cmd\""));
    };
    if !Command::NAMES.contains(&cmd) {
        let message = format!("unknown command {cmd:?}");
        return Err(Reply::error(id, ErrorCode::UnknownCmd, message));
    }
    let cmd = cmd.to_string();
    serde_json::from_value(value)
        .map_err(|e| Reply::error(id, ErrorCode::BadRequest, format!("{cmd}: {e}")))
}

/// The JSON text of a protocol message.
pub(crate) fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("protocol types always serialise")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_request(text).unwrap_err().error.unwrap().code
    }

    #[test]
    fn requests_read_as_the_readme_writes_them() {
        let request = parse_request(r#"{"id":7,"cmd":"pin","op":"sort","lanes":"heavy"}"#).unwrap();
        assert_eq!(request.id, json!(7));
        assert_eq!(
            request.command,
            Command::Pin { op: "sort".into(), lanes: Some(LaneSet::Heavy) }
        );
        let request = parse_request(r#"{"cmd":"throttle","op":"sort","max":null}"#).unwrap();
        assert_eq!(request.command, Command::Throttle { op: "sort".into(), max: None });
        let request = parse_request(r#"{"cmd":"cancel","token":12}"#).unwrap();
        assert_eq!(request.command, Command::Cancel { op: None, token: Some(12) });
        assert_eq!(parse_request(r#"{"cmd":"stats"}"#).unwrap().command, Command::Stats);
        for name in Command::NAMES {
            let request = parse_request(&json!({"cmd": name, "op": "x"}).to_string());
            if let Ok(request) = request {
                assert_eq!(request.command.name(), name);
            }
        }
    }

    #[test]
    fn every_bad_request_gets_its_code() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"fly"}"#), ErrorCode::UnknownCmd);
        assert_eq!(code(r#"{"cmd":"pin"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"pin","op":"x","lanes":"sideways"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"pause","op":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"batch","op":"x","size":-1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"cmd":"batch","op":"x","size":4294967296}"#), ErrorCode::BadRequest);
        let reply = parse_request(r#"{"id":"abc","cmd":"fly"}"#).unwrap_err();
        assert_eq!(reply.id, json!("abc"), "the id is echoed even in a refusal");
    }

    #[test]
    fn replies_and_events_keep_the_documented_shape() {
        let reply = Reply::error(json!(3), ErrorCode::NotWaiting, "token 5 is not waiting");
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({"id":3,"ok":false,"error":{"code":"not_waiting","message":"token 5 is not waiting"}})
        );
        assert_eq!(serde_json::to_value(Reply::ok(json!(1))).unwrap(), json!({"id":1,"ok":true}));
        let event = Event::Override {
            by: 2,
            cmd: "pin".into(),
            op: Some("sort".into()),
            change: Change::Lanes(Some(LaneSet::Light)),
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value,
            json!({"event":"override","by":2,"cmd":"pin","op":"sort","change":{"lanes":"light"}})
        );
        assert_eq!(serde_json::to_value(Change::Cleared).unwrap(), json!("cleared"));
        let back: ServerMessage = serde_json::from_value(value).unwrap();
        assert_eq!(back, ServerMessage::Event(event));
        let back: ServerMessage = serde_json::from_value(json!({"id":1,"ok":true})).unwrap();
        assert_eq!(back, ServerMessage::Reply(Reply::ok(json!(1))));
    }
}
