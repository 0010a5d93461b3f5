//! # trainer
//!
//! Fits tokengate's decision-tree cost model from the engine's Parquet telemetry,
//! evaluates it, and explains it. The feature definitions and the model file codec
//! live in the engine (`tokengate::features`, `tokengate::model`), so the trainer and
//! the router can never disagree about what a column means.
//!
//! ```no_run
//! use trainer::{dataset, fit};
//! let files = dataset::collect_files(&["datasets".to_string()])?;
//! let data = dataset::load(&files, |_| {})?;
//! let fitted = fit::fit(&data, &fit::FitOptions::default())?;
//! println!("{}", fitted.metrics);
//! std::fs::write("models/mine.bin", &fitted.bytes)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs, rust_2018_idioms)]

pub mod adapt;
#[cfg(feature = "cli")]
pub mod cli;
pub mod dataset;
mod error;
pub mod eval;
pub mod fit;
pub mod importance;
pub mod report;

pub use error::TrainError;
