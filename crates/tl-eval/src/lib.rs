//! Evaluation: does transfer learning help on this data, by how much, with which backbone and
//! head, and how many labels are needed?
//!
//! An [`Experiment`] (a TOML file) names a dataset, backbones, a baseline that needs no
//! pretrained model (TF-IDF for text, raw pixels for images), heads and a [`Protocol`] (given
//! split, stratified k-fold CV or a hold-out), optionally a few-shot learning curve. [`run`]
//! evaluates every (features, head) pair on identical rows, reports [`Metrics`] with bootstrap
//! intervals, compares each backbone with the baseline by a paired bootstrap and states a plain
//! verdict, ranks the backbones, and [`write_report`] writes JSON, Markdown, CSV and SVG.
//!
//! The metrics and intervals come from `tl-core`, which has no dependencies.

pub mod adapt;
mod adaptation;
pub mod data;
mod experiment;
mod report;
pub mod transfer;

use std::path::PathBuf;

pub use adaptation::{
    ADAPTATION_SCHEMA_VERSION, AdaptationExperiment, AdaptationReport, MethodGrid, MethodResult,
    MethodSummary, Pair, PairResult, adaptation_markdown, run_adaptation, write_adaptation_report,
};
pub use experiment::{
    Baseline, Comparison, Experiment, FewShot, FewShotPoint, Observer, Protocol,
    REPORT_SCHEMA_VERSION, RunReport, RunResult, Subsample, SystemInfo, raw_pixels, run, verdict,
};
pub use report::{
    confusion_png, confusion_svg, learning_curve_png, learning_curve_svg, markdown, write_report,
};
pub use tl_core::{Interval, Metrics};
/// The TF-IDF baseline (an [`tl_features::Embedder`] fitted per training part).
pub use tl_features::tfidf;

/// Everything that can go wrong running an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An experiment file does not parse or has a bad value (names the file and, from the TOML
    /// parser, the line and key).
    #[error("{path}: {message}")]
    Experiment {
        /// The experiment file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// A setting does not fit the data.
    #[error("{0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Fetching an asset failed.
    #[error(transparent)]
    Fetch(#[from] tl_assets::FetchError),
    /// Loading a dataset failed.
    #[error(transparent)]
    Data(#[from] tl_data::DataError),
    /// A split of the rows could not be made.
    #[error(transparent)]
    Split(#[from] tl_core::SplitError),
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] tl_backbone::BackboneError),
    /// The feature cache failed.
    #[error(transparent)]
    Features(#[from] tl_features::FeatureError),
    /// A head failed.
    #[error(transparent)]
    Head(#[from] tl_heads::HeadError),
}
