//! Classical classifiers on extracted features: the "new model trained on the extracted
//! features" half of feature-extraction transfer learning.
//!
//! One way to do each thing: describe a head with a [`HeadConfig`] (a [`HeadSpec`] with its
//! hyperparameters, [`Preprocess`]ing, [`ClassWeight`]s, a seed), call [`HeadConfig::fit`] on an
//! `n x d` feature matrix (dense, or sparse rows: a [`tl_core::Csr`] bag of words) and label indices, and use the [`Classifier`] it returns to
//! `predict`, `predict_proba` or `decision_function`, or `save` it to one JSON file that records
//! the label names, the feature dimension and the backbone fingerprint the features came from.
//! [`grid_search`] tunes a head's main hyperparameter by stratified k-fold CV, extending the
//! grid past an end the best value lies on.
//!
//! Heads: logistic regression (L-BFGS), linear SVM (dual coordinate descent, Platt
//! probabilities), kNN (cosine or euclidean, exact), nearest centroid, ridge (closed form).
//! Preprocessing (L2 normalisation, standardisation, PCA) is fitted on the training rows only.
//!
//! ```
//! use ndarray::array;
//! use tl_heads::{HeadConfig, HeadSpec, LogisticParams};
//!
//! let x = array![[0.0f32, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]];
//! let labels = vec!["cat".to_string(), "dog".to_string()];
//! let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams { c: 10.0, ..Default::default() }));
//! let model = config.fit(x.view(), &[0, 0, 1, 1], &labels, None)?;
//! assert_eq!(model.predict(array![[0.05f32, 0.95]].view())?, vec![0]);
//! let p = model.predict_proba(array![[0.95f32, 0.05]].view())?;
//! assert!(p[[0, 1]] > 0.5);
//! # Ok::<(), tl_heads::HeadError>(())
//! ```

#![warn(missing_docs)]

mod classifier;
mod knn;
mod la;

/// Dense symmetric linear algebra the heads use, for crates above (model selection, domain
/// adaptation).
pub mod linalg {
    pub use crate::la::{eigh_desc, solve_spd};
}
mod linear;
mod matrix;
mod params;
mod preprocess;
mod select;

use std::path::PathBuf;

pub use classifier::{Classifier, FORMAT_VERSION, FeatureMeta, FittedHead};
pub use knn::{Centroid, Knn};
pub use linear::Linear;
pub use matrix::{DENSE_LIMIT, Features, Matrix};
pub use params::{
    CentroidParams, ClassWeight, HeadConfig, HeadSpec, KnnParams, LogisticParams, Metric, Pca,
    Preprocess, RidgeParams, SvmParams, Weighting,
};
pub use preprocess::{FittedPca, FittedPreprocess};
pub use select::{GridRow, GridSearch, MAX_EXTENSIONS, grid_search, grid_search_with};

/// Everything that can go wrong fitting, using or loading a head.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// A hyperparameter is out of range.
    #[error("invalid hyperparameter: {0}")]
    Params(String),
    /// The features or labels cannot be used (names the row where it can).
    #[error("bad training or input data: {0}")]
    Data(String),
    /// Features do not match what the classifier was trained on.
    #[error("incompatible features: {0}")]
    Incompatible(String),
    /// A solver or factorisation failed.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Reading or writing a saved classifier failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A saved classifier could not be parsed.
    #[error("{path}: not a readable classifier: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}
