//! What crosses the wire: a call (submitter → worker) and its answer (worker →
//! submitter), each one bincode message with a version, and the subjects they travel on.

#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of [`Call`] and [`Answer`]; a message of another version is refused.
pub(crate) const WIRE_VERSION: u16 = 1;

/// The JetStream stream of calls (work-queue retention: each call goes to one worker).
pub(crate) const CALLS_STREAM: &str = "TOKENGATE_CALLS";
/// The JetStream stream of answers (kept a while, each submitter reads its own subject).
pub(crate) const ANSWERS_STREAM: &str = "TOKENGATE_ANSWERS";
/// Workers announce themselves here (core NATS, once a second).
pub(crate) const HEARTBEAT_SUBJECT: &str = "tokengate.workers";

/// Whether `c` may stand in a name that becomes a subject token or a consumer name
/// (an operation's, a submitter's, a worker's): ASCII letters, digits, `_` and `-`.
pub(crate) fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The subject an operation's calls are published on.
pub(crate) fn call_subject(op: &str) -> String {
    format!("tokengate.tokens.{op}")
}

/// The subject a submitter's answers are published on.
pub(crate) fn answer_subject(submitter: &str) -> String {
    format!("tokengate.results.{submitter}")
}

/// One token's call.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Call {
    pub(crate) version: u16,
    pub(crate) op: String,
    /// The submitter's token id and attempt: together they name the answer.
    pub(crate) token: u64,
    pub(crate) attempt: u8,
    /// Where the answer goes.
    pub(crate) reply: String,
    /// The argument, bincode-encoded by the operation's codec.
    pub(crate) arg: Vec<u8>,
}

/// How a remote attempt ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WireOutcome {
    /// `payload` is the bincode-encoded result.
    Completed,
    /// `payload` is the error message (UTF-8) from here on.
    Failed,
    Panicked,
    TimedOut,
    /// The worker could not decode the argument.
    BadArgument,
}

/// A worker's answer to one call.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Answer {
    pub(crate) version: u16,
    pub(crate) token: u64,
    pub(crate) attempt: u8,
    pub(crate) outcome: WireOutcome,
    pub(crate) payload: Vec<u8>,
    /// Submit → resolve on the worker (ns).
    pub(crate) run_ns: u64,
    /// Which worker ran it, on which host.
    pub(crate) worker: String,
    pub(crate) host: String,
    /// How many times the stream had delivered the call when this answer was sent.
    pub(crate) delivered: u64,
}

/// A worker's heartbeat.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Heartbeat {
    pub(crate) version: u16,
    pub(crate) worker: String,
    pub(crate) host: String,
    pub(crate) ops: Vec<String>,
    pub(crate) lanes: usize,
}

/// The most a decoded message may claim (bytes): a length prefix beyond it is an error,
/// never an allocation (NATS caps a message at 1 MiB by default anyway).
const DECODE_LIMIT: usize = 16 << 20;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
}

/// Decodes a whole message: trailing bytes are an error, and so is a length prefix that
/// claims more than [`DECODE_LIMIT`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(value)
}

/// How a remote-capable operation's arguments and results cross the wire (bincode).
pub(crate) struct Codec<A, R> {
    pub(crate) encode_arg: fn(&A) -> Result<Vec<u8>, String>,
    pub(crate) decode_arg: fn(&[u8]) -> Result<A, String>,
    pub(crate) encode_result: fn(&R) -> Result<Vec<u8>, String>,
    pub(crate) decode_result: fn(&[u8]) -> Result<R, String>,
}

impl<A, R> Codec<A, R>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    pub(crate) fn new() -> Self {
        Codec {
            encode_arg: encode::<A>,
            decode_arg: decode::<A>,
            encode_result: encode::<R>,
            decode_result: decode::<R>,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_round_trips_and_garbage_is_refused() {
        let call = Call {
            version: WIRE_VERSION,
            op: "pi_term".into(),
            token: 7,
            attempt: 1,
            reply: answer_subject("s1"),
            arg: encode(&42u64).unwrap(),
        };
        let bytes = encode(&call).unwrap();
        assert_eq!(decode::<Call>(&bytes).unwrap(), call);
        assert!(decode::<Call>(b"\xff\xff\xff garbage").is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Call>(&longer).unwrap_err().contains("trailing"));
        // A length prefix of 2^60 bytes is refused, not allocated.
        let huge = [1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Call>(&huge).is_err());
        assert!(decode::<Vec<u64>>(&huge[1..]).is_err());
    }
}
