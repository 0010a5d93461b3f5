//! Built-in workloads, for demos, data and benches.

pub mod leibniz;
pub mod mixed;
pub mod soak;
