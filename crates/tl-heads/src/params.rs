//! Hyperparameters: plain structs with `check()`, as in linfa.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::HeadError;

/// Multinomial (or binary) logistic regression with an L2 penalty, fitted by L-BFGS.
/// `c` is scikit-learn's `C`: the inverse of the penalty strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogisticParams {
    /// Inverse regularisation strength (> 0).
    pub c: f64,
    /// Most L-BFGS iterations.
    pub max_iter: u64,
    /// Stop when the largest entry of the mean loss's gradient falls below this
    /// (scikit-learn's `tol`).
    pub tol: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
        }
    }
}

/// Linear SVM (squared hinge loss, one-vs-rest), solved by dual coordinate descent as in
/// liblinear; probabilities by Platt scaling on cross-validated scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SvmParams {
    /// Misclassification cost (> 0).
    pub c: f64,
    /// Most passes over the data per binary problem.
    pub max_iter: usize,
    /// Stop when the projected gradient's spread falls below this.
    pub tol: f64,
}

impl Default for SvmParams {
    fn default() -> Self {
        SvmParams {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-3,
        }
    }
}

/// Distance used by kNN and nearest centroid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Straight-line distance.
    Euclidean,
    /// One minus the cosine similarity (the natural metric for sentence embeddings).
    Cosine,
}

/// How the k neighbours vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// One vote each.
    Uniform,
    /// Votes weighted by 1 / distance (an exact match takes all the weight).
    Distance,
}

/// k-nearest neighbours by brute force (exact, blocked matrix products).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnParams {
    /// Number of neighbours (>= 1, at most the training set size).
    pub k: usize,
    /// Distance.
    pub metric: Metric,
    /// Vote weighting.
    pub weighting: Weighting,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            k: 5,
            metric: Metric::Cosine,
            weighting: Weighting::Uniform,
        }
    }
}

/// Nearest class mean (prototype). Strong when there are only a few examples per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentroidParams {
    /// Distance to the class means.
    pub metric: Metric,
}

impl Default for CentroidParams {
    fn default() -> Self {
        CentroidParams {
            metric: Metric::Euclidean,
        }
    }
}

/// Ridge classifier: least squares on ±1 targets with an L2 penalty, solved in closed form.
/// Chosen as the fifth head because it is exact (no solver tolerance), costs one d x d
/// factorisation, and so makes grid searches nearly free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RidgeParams {
    /// Penalty strength (>= 0; 0 only when the features have full rank).
    pub alpha: f64,
}

impl Default for RidgeParams {
    fn default() -> Self {
        RidgeParams { alpha: 1.0 }
    }
}

/// Which classifier to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HeadSpec {
    /// Logistic regression.
    Logistic(LogisticParams),
    /// Linear SVM.
    LinearSvm(SvmParams),
    /// k-nearest neighbours.
    Knn(KnnParams),
    /// Nearest centroid.
    Centroid(CentroidParams),
    /// Ridge classifier.
    Ridge(RidgeParams),
}

impl HeadSpec {
    /// Short name used in reports and on the command line.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadSpec::Logistic(_) => "logistic",
            HeadSpec::LinearSvm(_) => "linear-svm",
            HeadSpec::Knn(_) => "knn",
            HeadSpec::Centroid(_) => "centroid",
            HeadSpec::Ridge(_) => "ridge",
        }
    }

    /// The kind with the hyperparameters that set it apart from another head of the same kind
    /// (`logistic C=10`, `knn k=5 euclidean distance`, `ridge alpha=0.1`).
    pub fn label(&self) -> String {
        let metric = |m: &Metric| match m {
            Metric::Euclidean => "euclidean",
            Metric::Cosine => "cosine",
        };
        match self {
            HeadSpec::Logistic(p) => format!("logistic C={}", p.c),
            HeadSpec::LinearSvm(p) => format!("linear-svm C={}", p.c),
            HeadSpec::Knn(p) => format!(
                "knn k={} {} {}",
                p.k,
                metric(&p.metric),
                match p.weighting {
                    Weighting::Uniform => "uniform",
                    Weighting::Distance => "distance",
                }
            ),
            HeadSpec::Centroid(p) => format!("centroid {}", metric(&p.metric)),
            HeadSpec::Ridge(p) => format!("ridge alpha={}", p.alpha),
        }
    }

    /// A head of the given kind with default hyperparameters.
    pub fn from_kind(kind: &str) -> Result<HeadSpec, HeadError> {
        Ok(match kind {
            "logistic" => HeadSpec::Logistic(LogisticParams::default()),
            "linear-svm" | "svm" => HeadSpec::LinearSvm(SvmParams::default()),
            "knn" => HeadSpec::Knn(KnnParams::default()),
            "centroid" => HeadSpec::Centroid(CentroidParams::default()),
            "ridge" => HeadSpec::Ridge(RidgeParams::default()),
            other => {
                return Err(HeadError::Params(format!(
                    "unknown head `{other}`; expected one of logistic, linear-svm, knn, centroid, ridge"
                )));
            }
        })
    }

    /// The hyperparameter a grid search tunes, with its name; `None` for nearest centroid.
    pub fn main_param(&self) -> Option<(&'static str, f64)> {
        match self {
            HeadSpec::Logistic(p) => Some(("c", p.c)),
            HeadSpec::LinearSvm(p) => Some(("c", p.c)),
            HeadSpec::Knn(p) => Some(("k", p.k as f64)),
            HeadSpec::Centroid(_) => None,
            HeadSpec::Ridge(p) => Some(("alpha", p.alpha)),
        }
    }

    /// The same head with its main hyperparameter set to `value`.
    pub fn with_main_param(&self, value: f64) -> HeadSpec {
        let mut spec = self.clone();
        match &mut spec {
            HeadSpec::Logistic(p) => p.c = value,
            HeadSpec::LinearSvm(p) => p.c = value,
            HeadSpec::Knn(p) => p.k = value.round().max(0.0) as usize,
            HeadSpec::Centroid(_) => {}
            HeadSpec::Ridge(p) => p.alpha = value,
        }
        spec
    }

    /// The grid a search uses when none is given: C and alpha on a log grid, k on odd values.
    pub fn default_grid(&self) -> Vec<f64> {
        match self {
            HeadSpec::Logistic(_) | HeadSpec::LinearSvm(_) => {
                vec![0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
            }
            HeadSpec::Ridge(_) => vec![0.01, 0.1, 1.0, 10.0, 100.0, 1000.0],
            HeadSpec::Knn(_) => vec![1.0, 3.0, 5.0, 9.0, 15.0, 25.0],
            HeadSpec::Centroid(_) => Vec::new(),
        }
    }

    /// Validates the hyperparameters.
    pub fn check(&self) -> Result<(), HeadError> {
        let bad = |msg: String| Err(HeadError::Params(msg));
        match self {
            HeadSpec::Logistic(p) => {
                if !(p.c.is_finite() && p.c > 0.0) {
                    return bad(format!(
                        "logistic: c must be a positive number, got {}",
                        p.c
                    ));
                }
                if p.max_iter == 0 {
                    return bad("logistic: max_iter must be at least 1".into());
                }
                if !(p.tol.is_finite() && p.tol > 0.0) {
                    return bad(format!("logistic: tol must be positive, got {}", p.tol));
                }
            }
            HeadSpec::LinearSvm(p) => {
                if !(p.c.is_finite() && p.c > 0.0) {
                    return bad(format!(
                        "linear-svm: c must be a positive number, got {}",
                        p.c
                    ));
                }
                if p.max_iter == 0 {
                    return bad("linear-svm: max_iter must be at least 1".into());
                }
                if !(p.tol.is_finite() && p.tol > 0.0) {
                    return bad(format!("linear-svm: tol must be positive, got {}", p.tol));
                }
            }
            HeadSpec::Knn(p) => {
                if p.k == 0 {
                    return bad("knn: k must be at least 1".into());
                }
            }
            HeadSpec::Centroid(_) => {}
            HeadSpec::Ridge(p) => {
                if !(p.alpha.is_finite() && p.alpha >= 0.0) {
                    return bad(format!(
                        "ridge: alpha must be a non-negative number, got {}",
                        p.alpha
                    ));
                }
            }
        }
        Ok(())
    }
}

/// PCA target size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pca {
    /// Keep this many components.
    Components(usize),
    /// Keep the fewest components explaining at least this fraction of the variance (0, 1].
    Variance(f64),
}

/// Preprocessing fitted on the training features only and saved with the head.
/// Applied in this order: L2 normalisation, standardisation, PCA.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preprocess {
    /// Scale each row to unit length.
    pub l2_normalize: bool,
    /// Subtract each column's mean and divide by its standard deviation (zero-variance columns
    /// are only centred, as in scikit-learn).
    pub standardize: bool,
    /// Project onto the leading principal components.
    pub pca: Option<Pca>,
}

impl Preprocess {
    /// Validates the settings.
    pub fn check(&self) -> Result<(), HeadError> {
        match self.pca {
            Some(Pca::Components(0)) => Err(HeadError::Params(
                "pca: the number of components must be at least 1".into(),
            )),
            Some(Pca::Variance(f)) if !(f > 0.0 && f <= 1.0) => Err(HeadError::Params(format!(
                "pca: the variance fraction must be in (0, 1], got {f}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Per-class weights for imbalanced data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeight {
    /// Every sample counts the same.
    #[default]
    Uniform,
    /// Weight n / (n_classes * n_c), so every class carries the same total weight.
    Balanced,
    /// A weight per class name; unnamed classes get 1.
    Given(BTreeMap<String, f64>),
}

/// Everything needed to fit a classifier: the head, the preprocessing, the class weights and the
/// seed used by randomised steps (SVM coordinate order, calibration folds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// The classifier.
    pub head: HeadSpec,
    /// Preprocessing.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Class weights.
    #[serde(default)]
    pub class_weight: ClassWeight,
    /// Seed for the randomised parts.
    #[serde(default)]
    pub seed: u64,
}

impl HeadConfig {
    /// A config with default preprocessing (none), uniform weights and seed 0.
    pub fn new(head: HeadSpec) -> HeadConfig {
        HeadConfig {
            head,
            preprocess: Preprocess::default(),
            class_weight: ClassWeight::Uniform,
            seed: 0,
        }
    }

    /// Validates every part.
    pub fn check(&self) -> Result<(), HeadError> {
        self.head.check()?;
        self.preprocess.check()?;
        if let ClassWeight::Given(map) = &self.class_weight {
            for (name, w) in map {
                if !(w.is_finite() && *w > 0.0) {
                    return Err(HeadError::Params(format!(
                        "class weight for `{name}` must be a positive number, got {w}"
                    )));
                }
            }
        }
        Ok(())
    }
}
