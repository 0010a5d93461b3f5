//! # tokengate
//!
//! Run ordinary synchronous functions as *tokens* on core-pinned worker threads.
//!
//! Register a function as an [`Operation`] with a declared [`Weight`]; every call
//! becomes a [`Token`] that is admitted (bounded), routed to a lane set, batched, and
//! run on a lane pinned to its own core. A token resolves exactly once — to the value,
//! or to a [`TokenError`] (panicked, failed, cancelled, timed out, rejected) — and you
//! either `.await` it or [`wait`](Token::wait) on it.
//!
//! ```
//! use tokengate::{Engine, Weight};
//!
//! let engine = Engine::builder().build()?;
//! let square = engine.register("square", Weight::Light, |x: u64| x * x)?;
//!
//! // One call, blocking.
//! assert_eq!(square.submit(7).wait()?, 49);
//!
//! // Many calls, admitted in bulk and run in batches; each token is its own handle.
//! let tokens = square.submit_many(0..1_000);
//! let sum: u64 = tokens.into_iter().map(|t| t.wait().unwrap()).sum();
//! assert_eq!(sum, (0..1_000u64).map(|x| x * x).sum::<u64>());
//!
//! // Async callers await tokens (here on the engine's own runtime).
//! let value = engine.block_on(async {
//!     let token = square.submit_async(12).await;
//!     token.await
//! })?;
//! assert_eq!(value, 144);
//!
//! // A panic in user code becomes an error; the lane keeps serving.
//! let boom = engine.register("boom", Weight::Light, |_: ()| -> u8 { panic!("no") })?;
//! assert!(matches!(boom.submit(()).wait(), Err(tokengate::TokenError::Panicked { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See the README for the design, the CLI and the measured numbers.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod admission;
pub mod control;
mod engine;
mod error;
pub mod features;
mod lanes;
pub mod model;
mod operation;
mod router;
pub mod sys;
pub mod telemetry;
mod token;
pub mod workloads;

pub use engine::{
    ControlError, DedupeBuilder, Engine, EngineBuilder, OperationBuilder, Shutdown, StopHandle,
};
pub use error::{BuildError, CancelSource, RegisterError, RejectReason, TokenError};
pub use lanes::{LaneInfo, LaneStats};
pub use operation::{Context, OpStats, Operation, Overrides, RetryPolicy, SizeHint};
pub use router::{
    EwmaRouter, Features, LaneSet, LearnedRouter, Placement, RouteSource, Router, StaticRouter,
    Weight, MAX_OPS,
};
pub use telemetry::{TelemetryStats, TokenRecord};
pub use token::{Token, TokenState};
