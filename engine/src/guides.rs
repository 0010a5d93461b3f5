//! The user guides in `docs/`, included here (under `cfg(doctest)` only) so that every
//! Rust example in them is compiled and run as a doctest by `cargo test -p tokengate --doc`.

#[doc = include_str!("../../docs/learning.md")]
pub mod learning {}

#[doc = include_str!("../../docs/failures.md")]
pub mod failures {}

#[doc = include_str!("../../docs/control.md")]
pub mod control {}

#[doc = include_str!("../../docs/remote.md")]
pub mod remote {}

#[doc = include_str!("../../docs/tuning.md")]
pub mod tuning {}

#[doc = include_str!("../../docs/architecture.md")]
pub mod architecture {}
