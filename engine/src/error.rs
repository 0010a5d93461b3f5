//! Errors a caller can act on.

use std::fmt;

pub use crate::placement::ParseError;

/// Why a token did not produce a value.
///
/// Every token resolves exactly once, to `Ok(value)` or to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The operation panicked; the lane caught the panic and kept serving.
    #[error("operation panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The operation returned an error (operations registered with
    /// [`Engine::register_fallible`](crate::Engine::register_fallible)).
    #[error("operation failed: {0}")]
    Failed(String),
    /// The token was cancelled before it started.
    #[error("cancelled by {by}")]
    Cancelled {
        /// Who cancelled it.
        by: CancelSource,
    },
    /// The token's deadline passed before it finished.
    #[error("timed out")]
    TimedOut,
    /// The engine did not admit the token.
    #[error("rejected: {reason}")]
    Rejected {
        /// Why it was not admitted.
        reason: RejectReason,
    },
}

/// Who cancelled a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelSource {
    /// The holder of the [`Token`](crate::Token) called `cancel()`.
    Caller,
    /// The engine cancelled waiting work while shutting down.
    Shutdown,
    /// A `cancel` command on the control port.
    Control,
}

impl fmt::Display for CancelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelSource::Caller => "caller",
            CancelSource::Shutdown => "shutdown",
            CancelSource::Control => "control",
        })
    }
}

/// Why the engine refused to admit a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Admission is at capacity (only `try_submit` reports this; `submit` waits).
    Overloaded,
    /// The engine is shutting down and takes no new work.
    ShuttingDown,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Overloaded => "overloaded",
            RejectReason::ShuttingDown => "shutting down",
        })
    }
}

/// An [`EngineBuilder`](crate::EngineBuilder) option was out of range, or the engine
/// could not start.
///
/// Opaque on purpose (like rayon's `ThreadPoolBuildError`): the message names the
/// option, and new kinds can be added without breaking callers. The message is
/// complete — what failed, the path or address involved, and the OS's or the model
/// codec's reason — so the error has no separate `source()` to print it twice in a
/// chain (`anyhow`'s "Caused by:" list).
#[derive(Debug)]
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
pub(crate) enum BuildErrorKind {
    Invalid(String),
    Io(String, std::io::Error),
    Model(String, crate::model::ModelError),
}

impl BuildError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        BuildError { kind: BuildErrorKind::Invalid(message.into()) }
    }
    /// An OS error while doing `what` (named in the message).
    pub(crate) fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        BuildError { kind: BuildErrorKind::Io(what.into(), err) }
    }
    pub(crate) fn model(path: String, err: crate::model::ModelError) -> Self {
        BuildError { kind: BuildErrorKind::Model(path, err) }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::Invalid(message) => {
                write!(f, "invalid engine configuration: {message}")
            }
            BuildErrorKind::Io(what, err) => write!(f, "{what}: {err}"),
            BuildErrorKind::Model(path, err) => write!(f, "cost model {path}: {err}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Registering an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Another operation already has this name.
    #[error("an operation named {0:?} is already registered")]
    DuplicateName(String),
    /// The name is empty or longer than 64 bytes.
    #[error("operation name {0:?} must be 1 to 64 bytes")]
    BadName(String),
    /// The cost features given to
    /// [`OperationBuilder::cost_features`](crate::OperationBuilder::cost_features) are
    /// not usable (the message says why).
    #[error("{0}")]
    BadCostFeatures(String),
}
