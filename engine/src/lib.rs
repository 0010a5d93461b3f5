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
//! # Where things are
//!
//! The crate root holds the types every user names; the rest lives in a few modules:
//! [`op`] (registration options: [`op::DedupeBuilder`], [`op::RemoteBuilder`],
//! [`op::SizeHint`]), [`error`], [`router`] (placing calls: [`router::Router`] and the
//! routers), [`lanes`] (the lanes as set up and their counters), [`control`] (manual
//! control, the WebSocket port), [`telemetry`], [`model`], [`features`], [`adapt`]
//! (online adaptation) and [`remote`] (remote lanes over NATS).
//!
//! # The path of a token, module by module (the layers)
//!
//! Lowest first; a module uses only modules before it in this list, which
//! `tests/it/layers.rs` checks on every test run (it reads every `use` and path):
//!
//! `placement` (weights, lane sets) · `features` (the model's inputs) · `model` (the
//! file, the flat tree) · `error` · `token` (slot state machine, handle) · `admission`
//! (bounded permits) · `telemetry` (records → Parquet, latency histograms) · `lanes`
//! (pinned threads, queues, wake-ups) · `router` (placement: tags, model, running
//! averages) · `adapt` (re-fits) · `remote` (the link to remote workers and its seam
//! traits) · `op` (admit → one enqueue path → one run loop; retries, dedupe, locality;
//! each operation's control state; the engine-wide state operations share) · `control`
//! (the controller, the WebSocket port, dashboard, `/metrics`) · `engine` (builder,
//! lifecycle) · `remote_worker` (a process serving remote calls with an engine).
//!
//! See the README for the design, the CLI and the measured numbers.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod adapt;
mod admission;
pub mod control;
mod engine;
pub mod error;
pub mod features;
#[cfg(doctest)]
mod guides;
pub mod lanes;
pub mod model;
pub mod op;
mod placement;
pub mod remote;
#[cfg(feature = "nats")]
mod remote_worker;
pub mod router;
pub mod telemetry;
mod token;

pub use engine::{Engine, EngineBuilder, EngineStats, StopHandle};
pub use error::{BuildError, RegisterError, TokenError};
pub use op::{Context, Operation, OperationBuilder, RetryPolicy, Shutdown};
pub use placement::{LaneSet, Weight};
#[allow(deprecated)]
pub use token::join;
pub use token::{wait_both, Token, TokenState};

#[cfg(feature = "macros")]
pub use tokengate_macros::operation;

/// The README's examples, compiled and run as doctests so that they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
