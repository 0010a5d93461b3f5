//! Why a model file could not be used.

use super::format::FORMAT_VERSION;

/// Why a model file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not start with the model magic bytes.
    #[error("not a tokengate model file (bad magic bytes)")]
    NotAModel,
    /// The file layout version is not one this build reads.
    #[error(
        "model format version {found} is not supported (this build reads 2 to {})",
        FORMAT_VERSION
    )]
    UnsupportedFormat {
        /// Version in the file.
        found: u16,
    },
    /// The model was fitted on another feature schema.
    #[error("model was fitted on feature schema v{found}, this engine computes v{expected}: refit it with `trainer fit`")]
    FeatureSchema {
        /// Version in the file.
        found: u16,
        /// Version this build computes.
        expected: u16,
    },
    /// The file is truncated or inconsistent.
    #[error("corrupt model file: {0}")]
    Corrupt(String),
}
