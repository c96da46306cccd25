//! Evaluation: does transfer learning help on this data, by how much, with which backbone and
//! head, and how many labels are needed?
//!
//! An [`Experiment`] (a TOML file) names a dataset, backbones, a baseline that needs no
//! pretrained model (TF-IDF for text, raw pixels for images), heads and a [`Protocol`] (given
//! split, stratified k-fold CV or a hold-out), optionally a few-shot learning curve. [`run`]
//! evaluates every (features, head) pair on identical rows, reports [`Metrics`] with bootstrap
//! intervals, compares each backbone with the baseline by a paired bootstrap and states a plain
//! verdict, ranks the backbones, and [`write_report`] writes JSON, Markdown, CSV and SVG.
//! Fine-tuned systems (`[[finetune]]`, a [`FinetuneSpec`]) are trained by tl-finetune inside
//! each training part and scored on the same rows, so one report holds the three levels: no
//! pretraining, frozen features, fine-tuned model ([`Levels`]).
//!
//! The metrics and intervals come from `tl-core`, which has no dependencies. The parts both
//! runners share (the [`Observer`], experiment-file checks, backbone features through the
//! cache, the verdict rule) are in [`runner`]; one writer, [`write_report`], writes either
//! runner's [`Report`]. [`select`] ranks backbones before any head is trained, [`transfer`]
//! holds its scores, and [`adapt`] the feature-level domain adaptation methods that
//! [`run_adaptation`] compares.
//!
//! An experiment file is checked when it is read (errors name the file, line and key), and a
//! verdict is a plain sentence over a paired interval:
//!
//! ```
//! use std::path::Path;
//! use tl_eval::{Experiment, Interval, Protocol, verdict};
//!
//! let exp = Experiment::from_toml(
//!     r#"
//!     name = "reviews"
//!     dataset = "sentiment"            # or a file: "reviews.csv", an image folder
//!     backbones = ["all-minilm-l6-v2"]
//!     baseline = "tfidf"
//!     protocol = { kind = "cv", folds = 5 }
//!
//!     [[finetune]]                     # trained inside each of the 5 training parts
//!     backbone = "all-minilm-l6-v2"
//!     strategy = "top:2"
//!     learning_rate = 1e-4
//!     "#,
//!     Path::new("reviews.toml"),
//! )?;
//! assert_eq!(exp.protocol, Protocol::Cv { folds: 5 });
//! assert_eq!(exp.finetune[0].label(), "all-minilm-l6-v2 tuned top:2");
//! let bad = Experiment::from_toml("name = \"x\"\nfolds = 5\n", Path::new("x.toml"));
//! assert!(bad.unwrap_err().to_string().starts_with("x.toml: "));
//!
//! let d = Interval { estimate: 7.7, low: 6.3, high: 9.1 };
//! assert_eq!(
//!     verdict("all-minilm-l6-v2", "tfidf", &d, "transfer"),
//!     "all-minilm-l6-v2 features: +7.7 points [+6.3, +9.1] over tfidf: transfer helps"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Running it fetches what is missing, embeds through the feature cache, fits and compares:
//!
//! ```no_run
//! # use std::path::Path;
//! # let exp = tl_eval::Experiment::from_toml("name = \"r\"\ndataset = \"sentiment\"\n", Path::new("r.toml"))?;
//! use tl_assets::{Cache, Registry};
//!
//! let note = |line: &str| eprintln!("{line}");
//! let report = tl_eval::run(&exp, &Registry::builtin()?, &Cache::from_env(), true, &note)?;
//! for c in &report.comparisons {
//!     println!("{}", c.verdict);
//! }
//! tl_eval::write_report(&report, Path::new("runs/reviews"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod adapt;
mod adapt_model;
mod adaptation;
mod experiment;
mod finetuned;
mod fits;
pub mod plot;
mod report;
pub mod runner;
pub mod select;
pub mod transfer;

use std::path::PathBuf;

pub use adaptation::{
    ADAPTATION_SCHEMA_VERSION, AdaptationExperiment, AdaptationReport, MethodGrid, MethodResult,
    MethodSummary, Pair, PairResult, adaptation_markdown, run_adaptation,
};
pub use experiment::{
    Baseline, Chosen, Comparison, Experiment, FewShot, FewShotComparison, FewShotPoint, Levels,
    Pairwise, Protocol, REPORT_SCHEMA_VERSION, RunReport, RunResult, Search, Subsample,
    chosen_phrase, levels_sentence, ranking_sentence, raw_pixels, run, verdict,
};
pub use finetuned::{FewShotUse, FinetuneSpec, FoldTraining, Tuning};
pub use report::{
    Report, ReportFile, confusion_png, confusion_svg, learning_curve_png, learning_curve_svg,
    markdown, training_curve_svg, write_report,
};
pub use runner::{Observer, SystemInfo};
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
    /// Fine-tuning failed.
    #[error(transparent)]
    Finetune(#[from] tl_finetune::FinetuneError),
    /// A figure could not be drawn (names the stage: SVG, size, PNG).
    #[error("figure: {0}")]
    Figure(String),
}
