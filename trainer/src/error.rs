use std::path::PathBuf;

/// Why fitting or evaluating failed. Each names the file or the number at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// No Parquet file matched the inputs.
    #[error("no Parquet files found in {0:?} (give directories, files or globs such as 'datasets/*.parquet')")]
    NoFiles(Vec<String>),
    /// A glob pattern is malformed.
    #[error("bad glob pattern {pattern:?}: {message}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file could not be read as Parquet.
    #[error("{path}: cannot read as Parquet: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        message: String,
    },
    /// A file lacks a column or has the wrong schema version.
    #[error("{path}: {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// Not enough usable rows to fit and validate.
    #[error("only {rows} usable rows (completed tokens); at least {needed} are needed")]
    TooFewRows {
        /// Rows found.
        rows: usize,
        /// Rows needed.
        needed: usize,
    },
    /// Every row falls in one cost class, so there is nothing to learn.
    #[error("all {rows} rows fall in cost class {class} ({range}); a model needs at least two classes: log a workload whose costs vary")]
    SingleClass {
        /// Rows found.
        rows: usize,
        /// The one class.
        class: usize,
        /// Its runtime range.
        range: String,
    },
    /// A fit option is out of range.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// The model file is unusable.
    #[error(transparent)]
    Model(#[from] tokengate::model::ModelError),
    /// linfa refused the data.
    #[error("fitting failed: {0}")]
    Fit(String),
}
