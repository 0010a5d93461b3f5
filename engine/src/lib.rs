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
//! # Registering a plain fn: `#[tokengate::operation]`
//!
//! With the default feature `macros`, an attribute on a plain `fn` generates
//! `name::register(&engine)`, returning an `Operation<A, R>` (`A`: the argument's
//! type, or the tuple of the arguments' types); the fn itself stays callable. The
//! generated code names `::tokengate`, so depend on this crate under that name.
//!
//! ```
//! #[tokengate::operation(weight = "light")]
//! fn pi_term(k: u64) -> f64 {
//!     if k % 2 == 0 { 1.0 / (2 * k + 1) as f64 } else { -1.0 / (2 * k + 1) as f64 }
//! }
//!
//! #[tokengate::operation(weight = "heavy", timeout_ms = 1_000, retries = 1, name = "pi.sum")]
//! fn pi_sum(from: u64, to: u64) -> f64 {
//!     (from..to).map(pi_term).sum()
//! }
//!
//! let engine = tokengate::Engine::builder().build()?;
//! let term = pi_term::register(&engine)?; //      Operation<u64, f64>
//! let sum = pi_sum::register(&engine)?; //        Operation<(u64, u64), f64>
//! assert_eq!(term.submit(1).wait()?, pi_term(1));
//! assert!((4.0 * sum.submit((0, 10_000)).wait()? - std::f64::consts::PI).abs() < 1e-3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! * `macros` (default): `#[tokengate::operation]`, from the `tokengate-macros` crate.
//! * `parquet` (default): telemetry to Parquet files ([`EngineBuilder::log_dir`]),
//!   through polars. Without it the engine has no polars in its tree and keeps
//!   telemetry in memory only ([`EngineBuilder::log_in_memory`]).
//!
//! # The path of a token, module by module
//!
//! `token` (slot state machine, handle) · `admission` (bounded permits) · `router`
//! (placement: tags, model, running average) · `op` (admit → one enqueue path →
//! one run loop; retries, dedupe, locality) · `lanes` (pinned threads, queues, wake-ups)
//! · `telemetry` (records → Parquet) · [`control`] (overrides, the WebSocket port) ·
//! `engine` (builder, lifecycle). Lower modules never import higher ones.
//!
//! See the README for the design, the CLI and the measured numbers.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod adapt;
mod admission;
pub mod control;
mod core;
mod engine;
mod error;
pub mod features;
mod lanes;
pub mod model;
mod op;
mod placement;
pub mod remote;
mod router;
pub mod telemetry;
mod token;

pub use adapt::{AdaptStatus, Adaptation, Refit, Sample};
pub use control::{ControlError, Controller, OpStats, Overrides};
pub use core::Shutdown;
pub use engine::{Engine, EngineBuilder, StopHandle};
pub use error::{BuildError, CancelSource, RegisterError, RejectReason, TokenError};
pub use lanes::{LaneInfo, LaneStats};
pub use op::{
    Context, DedupeBuilder, Operation, OperationBuilder, RemoteBuilder, RetryPolicy, SizeHint,
};
pub use placement::{LanePriority, LaneSet, LaneSplit, Placement, RouteSource, Weight};
pub use remote::{RemotePlacement, RemoteStats};
pub use router::{
    AdaptiveRouter, EwmaRouter, Features, LearnedRouter, Router, StaticRouter, MAX_OPS,
};
pub use telemetry::{TelemetryStats, TokenRecord};
pub use token::{join, Token, TokenState};

#[cfg(feature = "macros")]
pub use tokengate_macros::operation;
