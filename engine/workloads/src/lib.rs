//! The built-in workloads of the `tokengate` CLI, shared with the tests and benches.
//!
//! Not part of the library's API: a private crate (`publish = false`).

#![warn(missing_docs, rust_2018_idioms)]

pub mod freeze;
pub mod leibniz;
pub mod mixed;
pub mod service;
pub mod soak;
pub mod stats;
pub mod sys;
pub mod text;
pub mod wait;
