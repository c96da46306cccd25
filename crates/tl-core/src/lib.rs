//! The basics every other crate of transfer-learning-rs agrees on, with no dependencies:
//! seeded randomness, stratified splits, classification metrics, crash-safe writes.
//!
//! - [`Rng`] is SplitMix64, fully specified, so a seed gives the same stream on every
//!   platform and release. Every split, shuffle, subsample and bootstrap draws from it.
//! - [`split`] makes stratified train/test splits, k-fold splits and k-per-class subsamples
//!   of index lists (the rows of a dataset), deterministic in their seed.
//! - [`metrics`] scores predictions (accuracy, balanced accuracy, macro-F1, log loss, ECE,
//!   ROC-AUC, average precision, confusion) and puts percentile-bootstrap intervals on them,
//!   paired when two systems are compared on the same rows.
//! - [`fs`] writes files crash-safely (temporary file, fsync, rename, folder fsync): the one
//!   way every cache, checkpoint and model file is written.
//! - [`vector`] holds the one L2 normaliser; [`Csr`] is the sparse row layout of a bag of words.
//!
//! ```
//! use tl_core::{metrics, split};
//!
//! let labels = [0, 0, 0, 0, 1, 1, 1, 1];
//! let rows: Vec<usize> = (0..labels.len()).collect();
//! let (train, test) = split::stratified_split(&labels, &rows, 0.5, 7)?;
//! assert_eq!((train.len(), test.len()), (4, 4));
//! let folds = split::stratified_kfold(&labels, &rows, 4, 0)?;
//! assert!(folds.iter().all(|f| f.test.len() == 2));
//!
//! let names = ["neg".to_string(), "pos".to_string()];
//! let m = metrics::evaluate(&[0, 0, 1, 1], &[0, 1, 1, 1], None, &names);
//! assert_eq!(m.accuracy, 0.75);
//! assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
//! let scores = [0.1, 0.4, 0.35, 0.8];
//! assert_eq!(metrics::roc_auc_score(&[false, false, true, true], &scores), Some(0.75));
//! # Ok::<(), tl_core::split::SplitError>(())
//! ```

#![warn(missing_docs)]

pub mod fs;
pub mod metrics;
mod rng;
mod sparse;
pub mod split;
pub mod vector;

pub use metrics::{Interval, Metrics};
pub use rng::Rng;
pub use sparse::Csr;
pub use split::{Fold, SplitError};
