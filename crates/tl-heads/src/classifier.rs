//! Fitting, predicting and saving a classifier.

use std::fs;
use std::path::Path;

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use tl_core::split::stratified_kfold;

use crate::HeadError;
use crate::knn::{Centroid, Knn, softmax};
use crate::linear::{self, Linear};
use crate::matrix::{Features, X};
use crate::params::{ClassWeight, HeadConfig, HeadSpec};
use crate::preprocess::FittedPreprocess;

/// Version of the saved-classifier format; loading another version is an error.
pub const FORMAT_VERSION: u32 = 1;

/// Folds used to produce out-of-fold scores for Platt calibration of the margin heads.
const CALIBRATION_FOLDS: usize = 3;

/// Where the features a classifier sees come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureMeta {
    /// Number of feature columns.
    pub dim: usize,
    /// The backbone fingerprint (from `tl-backbone`), or `None` for features made without one
    /// (e.g. TF-IDF, raw pixels).
    pub fingerprint: Option<String>,
}

/// The fitted part of each head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FittedHead {
    /// Softmax (or sigmoid) over linear scores.
    Logistic {
        /// Weights and intercepts.
        linear: Linear,
    },
    /// Linear SVM or ridge: linear scores, Platt sigmoids per output for probabilities.
    Margin {
        /// Weights and intercepts.
        linear: Linear,
        /// `(a, b)` per output column.
        platt: Vec<(f64, f64)>,
    },
    /// k-nearest neighbours.
    Knn(Knn),
    /// Nearest centroid.
    Centroid(Centroid),
}

/// A fitted classifier: preprocessing + head + label names + where its features came from.
/// Serialises to one JSON file with [`Classifier::save`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    /// [`FORMAT_VERSION`] at save time.
    pub format_version: u32,
    /// How it was configured.
    pub config: HeadConfig,
    /// All label names of the task, in index order.
    pub label_names: Vec<String>,
    /// The label indices seen in training (the classes it can predict).
    pub classes: Vec<usize>,
    /// Features it expects.
    pub features: FeatureMeta,
    /// Number of training rows.
    pub train_rows: usize,
    /// Fitted preprocessing.
    pub preprocess: FittedPreprocess,
    /// Fitted head.
    pub head: FittedHead,
    /// What went wrong without failing the fit (a solver stopped at its iteration limit),
    /// for reports. Absent from the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn class_weights(
    config: &HeadConfig,
    label_names: &[String],
    classes: &[usize],
    y_local: &[usize],
) -> Result<Vec<f64>, HeadError> {
    let k = classes.len();
    Ok(match &config.class_weight {
        ClassWeight::Uniform => vec![1.0; k],
        ClassWeight::Balanced => {
            let mut counts = vec![0usize; k];
            for &c in y_local {
                counts[c] += 1;
            }
            let n = y_local.len() as f64;
            counts.iter().map(|&c| n / (k as f64 * c as f64)).collect()
        }
        ClassWeight::Given(map) => {
            for name in map.keys() {
                if !label_names.iter().any(|l| l == name) {
                    return Err(HeadError::Params(format!(
                        "class weight given for `{name}`, which is not a label; labels are {}",
                        label_names.join(", ")
                    )));
                }
            }
            classes
                .iter()
                .map(|&c| map.get(&label_names[c]).copied().unwrap_or(1.0))
                .collect()
        }
    })
}

/// Fits the margin head (SVM or ridge) on a subset, for calibration folds and the final model.
fn fit_margin(
    spec: &HeadSpec,
    x: &X,
    y: &[usize],
    k: usize,
    sw: &Array1<f64>,
    seed: u64,
) -> Result<Linear, HeadError> {
    match spec {
        HeadSpec::LinearSvm(p) => Ok(linear::fit_svm(p, x, y, k, sw, seed)),
        HeadSpec::Ridge(p) => linear::fit_ridge(p.alpha, x, y, k, sw),
        _ => unreachable!("only SVM and ridge are margin heads"),
    }
}

/// Out-of-fold scores for Platt scaling; in-sample scores when a class is too small to split.
fn calibrate(
    spec: &HeadSpec,
    x: &X,
    y: &[usize],
    k: usize,
    sw: &Array1<f64>,
    seed: u64,
    full: &Linear,
) -> Result<Vec<(f64, f64)>, HeadError> {
    let mut counts = vec![0usize; k];
    for &c in y {
        counts[c] += 1;
    }
    let smallest = counts.iter().copied().min().unwrap_or(0);
    let folds = CALIBRATION_FOLDS.min(smallest);
    let m = full.w.ncols();
    let mut scores = Array2::<f64>::zeros((y.len(), m));
    if folds >= 2 {
        let all: Vec<usize> = (0..y.len()).collect();
        let splits =
            stratified_kfold(y, &all, folds, seed).map_err(|e| HeadError::Data(e.to_string()))?;
        for fold in splits {
            let xt = x.select(&fold.train);
            let yt: Vec<usize> = fold.train.iter().map(|&i| y[i]).collect();
            let swt = sw.select(ndarray::Axis(0), &fold.train);
            let model = fit_margin(spec, &xt, &yt, k, &swt, seed)?;
            let sv = model.scores(&x.select(&fold.test));
            for (r, &i) in fold.test.iter().enumerate() {
                scores.row_mut(i).assign(&sv.row(r));
            }
        }
    } else {
        tracing::warn!(
            "a class has {smallest} training example(s): probabilities are calibrated on in-sample scores"
        );
        scores = full.scores(x);
    }
    Ok((0..m)
        .map(|j| {
            let positive = if m == 1 { 1 } else { j };
            let pos: Vec<bool> = y.iter().map(|&c| c == positive).collect();
            linear::platt(&scores.column(j).to_vec(), &pos)
        })
        .collect())
}

impl HeadConfig {
    /// Fits preprocessing and head on `x` (rows = samples) with labels `y` (indices into
    /// `label_names`). `fingerprint` is the backbone fingerprint the features came from, if any.
    pub fn fit<'a>(
        &self,
        x: impl Into<Features<'a>>,
        y: &[usize],
        label_names: &[String],
        fingerprint: Option<&str>,
    ) -> Result<Classifier, HeadError> {
        self.fit_weighted(x, y, None, label_names, fingerprint)
    }

    /// [`fit`](Self::fit) with a weight per training row (e.g. importance weights for domain
    /// adaptation), multiplied into the class weights. Only the loss-based heads (logistic,
    /// linear SVM, ridge) take row weights; preprocessing is fitted unweighted.
    pub fn fit_weighted<'a>(
        &self,
        x: impl Into<Features<'a>>,
        y: &[usize],
        sample_weight: Option<&[f64]>,
        label_names: &[String],
        fingerprint: Option<&str>,
    ) -> Result<Classifier, HeadError> {
        self.fit_from(x.into(), y, sample_weight, label_names, fingerprint, None)
    }

    /// [`fit_weighted`](Self::fit_weighted) whose solver starts from `warm`'s weights when
    /// `warm` is a logistic head fitted on the same rows (a search along the C path: the
    /// optimum moves little from one C to the next, so far fewer iterations reach it).
    pub(crate) fn fit_from(
        &self,
        x: Features<'_>,
        y: &[usize],
        sample_weight: Option<&[f64]>,
        label_names: &[String],
        fingerprint: Option<&str>,
        warm: Option<&Classifier>,
    ) -> Result<Classifier, HeadError> {
        self.check()?;
        let (n, d) = (x.nrows(), x.ncols());
        if let Some(w) = sample_weight {
            if w.len() != n {
                return Err(HeadError::Data(format!(
                    "{n} feature rows but {} sample weights",
                    w.len()
                )));
            }
            if let Some((i, v)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
            {
                return Err(HeadError::Data(format!(
                    "sample weight row {i}: {v}; weights must be finite and non-negative"
                )));
            }
            if !w.iter().any(|&v| v > 0.0) {
                return Err(HeadError::Data("all sample weights are zero".into()));
            }
            if matches!(self.head, HeadSpec::Knn(_) | HeadSpec::Centroid(_)) {
                return Err(HeadError::Params(format!(
                    "the {} head does not take sample weights; use logistic, svm or ridge",
                    self.head.kind()
                )));
            }
        }
        if n == 0 {
            return Err(HeadError::Data("no training rows".into()));
        }
        if d == 0 {
            return Err(HeadError::Data("training features have 0 columns".into()));
        }
        if y.len() != n {
            return Err(HeadError::Data(format!(
                "{n} feature rows but {} labels",
                y.len()
            )));
        }
        if let Some((i, &c)) = y.iter().enumerate().find(|(_, c)| **c >= label_names.len()) {
            return Err(HeadError::Data(format!(
                "label row {i}: class index {c} but only {} label names",
                label_names.len()
            )));
        }
        x.check_finite("training")?;
        let mut classes: Vec<usize> = y.to_vec();
        classes.sort_unstable();
        classes.dedup();
        if classes.len() < 2 {
            return Err(HeadError::Data(format!(
                "all {n} training rows have the same label `{}`; a classifier needs at least two classes",
                label_names[classes[0]]
            )));
        }
        if classes.len() < label_names.len() {
            let missing: Vec<&str> = (0..label_names.len())
                .filter(|c| classes.binary_search(c).is_err())
                .map(|c| label_names[c].as_str())
                .collect();
            tracing::warn!(
                "no training rows for {}: the classifier can never predict them",
                missing.join(", ")
            );
        }
        let local: Vec<usize> = y
            .iter()
            .map(|c| classes.binary_search(c).expect("class listed"))
            .collect();
        let k = classes.len();
        if let HeadSpec::Knn(p) = &self.head
            && p.k > n
        {
            return Err(HeadError::Params(format!(
                "knn: k = {} but the training set has only {n} rows",
                p.k
            )));
        }
        let cw = class_weights(self, label_names, &classes, &local)?;
        let sw: Array1<f64> = match sample_weight {
            Some(w) => local.iter().zip(w).map(|(&c, &w)| cw[c] * w).collect(),
            None => local.iter().map(|&c| cw[c]).collect(),
        };

        let (preprocess, xt) = FittedPreprocess::fit_x(&self.preprocess, x.to_f64())?;
        let mut warnings = Vec::new();
        let head = match &self.head {
            HeadSpec::Logistic(p) => {
                let start = match warm.map(|w| &w.head) {
                    Some(FittedHead::Logistic { linear }) => Some(linear),
                    _ => None,
                };
                let (linear, warning) = linear::fit_logistic(p, &xt, &local, k, &sw, start)?;
                warnings.extend(warning);
                FittedHead::Logistic { linear }
            }
            spec @ (HeadSpec::LinearSvm(_) | HeadSpec::Ridge(_)) => {
                let linear = fit_margin(spec, &xt, &local, k, &sw, self.seed)?;
                let platt = calibrate(spec, &xt, &local, k, &sw, self.seed, &linear)?;
                FittedHead::Margin { linear, platt }
            }
            HeadSpec::Knn(p) => {
                let xt = xt.into_dense("the knn head")?;
                FittedHead::Knn(Knn::fit(p, xt.view(), &local, k, cw))
            }
            HeadSpec::Centroid(p) => {
                let xt = xt.dense("the centroid head")?;
                FittedHead::Centroid(Centroid::fit(p.metric, xt.view(), &local, k, &cw))
            }
        };
        Ok(Classifier {
            format_version: FORMAT_VERSION,
            config: self.clone(),
            label_names: label_names.to_vec(),
            classes,
            features: FeatureMeta {
                dim: d,
                fingerprint: fingerprint.map(str::to_owned),
            },
            train_rows: n,
            preprocess,
            head,
            warnings,
        })
    }
}

impl Classifier {
    fn prepare(&self, x: Features<'_>) -> Result<X, HeadError> {
        if x.ncols() != self.features.dim {
            return Err(HeadError::Incompatible(format!(
                "features have {} columns but the classifier was trained on {}",
                x.ncols(),
                self.features.dim
            )));
        }
        x.check_finite("input")?;
        self.preprocess.transform_x(x.to_f64())
    }

    /// Expands per-trained-class columns to one column per label, filling absent classes.
    fn expand(&self, local: Array2<f64>, fill: f64) -> Array2<f64> {
        if self.classes.len() == self.label_names.len() {
            return local;
        }
        let mut out = Array2::from_elem((local.nrows(), self.label_names.len()), fill);
        for (j, &c) in self.classes.iter().enumerate() {
            out.column_mut(c).assign(&local.column(j));
        }
        out
    }

    /// Scores with one column per label (higher = more likely); classes never seen in training
    /// score negative infinity. Linear heads give margins, kNN vote shares, nearest centroid
    /// log-posteriors.
    pub fn decision_function<'a>(
        &self,
        x: impl Into<Features<'a>>,
    ) -> Result<Array2<f64>, HeadError> {
        let xt = self.prepare(x.into())?;
        let local = match &self.head {
            FittedHead::Logistic { linear } | FittedHead::Margin { linear, .. } => {
                linear.class_scores(&xt)
            }
            FittedHead::Knn(knn) => knn.proba(xt.dense("the knn head")?.view()),
            FittedHead::Centroid(c) => c.scores(xt.dense("the centroid head")?.view()),
        };
        Ok(self.expand(local, f64::NEG_INFINITY))
    }

    /// Class probabilities, one column per label (absent classes get 0); rows sum to 1.
    pub fn predict_proba<'a>(&self, x: impl Into<Features<'a>>) -> Result<Array2<f64>, HeadError> {
        let xt = self.prepare(x.into())?;
        let local = match &self.head {
            FittedHead::Logistic { linear } => {
                let s = linear.scores(&xt);
                if s.ncols() == 1 {
                    let mut out = Array2::zeros((s.nrows(), 2));
                    for (i, &v) in s.column(0).iter().enumerate() {
                        let p = 1.0 / (1.0 + (-v).exp());
                        out[[i, 0]] = 1.0 - p;
                        out[[i, 1]] = p;
                    }
                    out
                } else {
                    softmax(&s)
                }
            }
            FittedHead::Margin { linear, platt } => linear::platt_proba(&linear.scores(&xt), platt),
            FittedHead::Knn(knn) => knn.proba(xt.dense("the knn head")?.view()),
            FittedHead::Centroid(c) => softmax(&c.scores(xt.dense("the centroid head")?.view())),
        };
        Ok(self.expand(local, 0.0))
    }

    /// Predicted label index per row (the highest score; ties go to the lower index).
    pub fn predict<'a>(&self, x: impl Into<Features<'a>>) -> Result<Vec<usize>, HeadError> {
        let scores = self.decision_function(x)?;
        Ok(scores
            .outer_iter()
            .map(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                best
            })
            .collect())
    }

    /// Maps label strings to indices; a label the classifier's task does not have is an error
    /// naming its row.
    pub fn encode_labels<S: AsRef<str>>(&self, labels: &[S]) -> Result<Vec<usize>, HeadError> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l = l.as_ref();
                self.label_names.iter().position(|n| n == l).ok_or_else(|| {
                    HeadError::Data(format!(
                        "row {i}: label `{l}` was not among the training labels ({})",
                        self.label_names.join(", ")
                    ))
                })
            })
            .collect()
    }

    /// Errors unless features described by `meta` are the kind this classifier was trained on.
    pub fn ensure_compatible(&self, meta: &FeatureMeta) -> Result<(), HeadError> {
        if meta.dim != self.features.dim {
            return Err(HeadError::Incompatible(format!(
                "features have {} columns but the classifier was trained on {}",
                meta.dim, self.features.dim
            )));
        }
        if meta.fingerprint != self.features.fingerprint {
            let show = |f: &Option<String>| f.clone().unwrap_or_else(|| "none".into());
            return Err(HeadError::Incompatible(format!(
                "features come from backbone fingerprint {} but the classifier was trained on {}; \
                 predictions would be meaningless",
                show(&meta.fingerprint),
                show(&self.features.fingerprint)
            )));
        }
        Ok(())
    }

    /// The JSON a classifier saves as (deterministic: same model, same bytes).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("classifier serialises")
    }

    /// Saves to one JSON file, crash-safely ([`tl_core::fs::write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<(), HeadError> {
        let io = |e: std::io::Error| HeadError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        tl_core::fs::write_atomic(path, self.to_json().as_bytes()).map_err(io)
    }

    /// Loads a classifier saved by [`Classifier::save`].
    pub fn load(path: &Path) -> Result<Classifier, HeadError> {
        let text = fs::read_to_string(path).map_err(|e| HeadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let version: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| HeadError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        match version.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(HeadError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "format version {v}, this build reads version {FORMAT_VERSION}"
                    ),
                });
            }
            None => {
                return Err(HeadError::Format {
                    path: path.to_path_buf(),
                    message: "not a saved classifier (no format_version)".into(),
                });
            }
        }
        let c: Classifier = serde_json::from_value(version).map_err(|e| HeadError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        c.check().map_err(|message| HeadError::Format {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(c)
    }

    /// Checks that every part fits every other (shapes, index ranges, finite values), so a
    /// hand-edited or damaged file is refused on load with the field named, instead of
    /// panicking or printing NaN probabilities at prediction time.
    pub fn check(&self) -> Result<(), String> {
        use crate::knn::finite;
        self.config.check().map_err(|e| format!("config: {e}"))?;
        let n = self.label_names.len();
        if n < 2 {
            return Err(format!("label_names: needs at least 2 labels, got {n}"));
        }
        for (i, l) in self.label_names.iter().enumerate() {
            if l.is_empty() {
                return Err(format!("label_names[{i}]: empty label"));
            }
            if self.label_names[..i].contains(l) {
                return Err(format!("label_names[{i}]: {l:?} appears twice"));
            }
        }
        if self.classes.is_empty() || self.classes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "classes: must be ascending label indices without repeats, got {:?}",
                self.classes
            ));
        }
        if let Some(c) = self.classes.iter().find(|&&c| c >= n) {
            return Err(format!("classes: index {c} is not below the {n} labels"));
        }
        let dim = self.features.dim;
        if dim == 0 {
            return Err("features.dim: must be at least 1".into());
        }
        let p = &self.preprocess;
        for (field, v) in [("preprocess.mean", &p.mean), ("preprocess.scale", &p.scale)] {
            if let Some(v) = v {
                if v.len() != dim {
                    return Err(format!("{field}: {} values, expected {dim}", v.len()));
                }
                finite(field, v.iter().copied())?;
            }
        }
        if let Some(scale) = &p.scale
            && let Some(i) = scale.iter().position(|&s| s <= 0.0)
        {
            return Err(format!(
                "preprocess.scale: value {i} is {}; scales must be positive",
                scale[i]
            ));
        }
        let din = match &p.pca {
            None => dim,
            Some(pca) => {
                if pca.mean.len() != dim
                    || pca.components.nrows() != dim
                    || pca.components.ncols() == 0
                {
                    return Err(format!(
                        "preprocess.pca: mean of {} and components of shape {:?}; expected {dim} and ({dim}, >= 1)",
                        pca.mean.len(),
                        pca.components.dim()
                    ));
                }
                finite("preprocess.pca.mean", pca.mean.iter().copied())?;
                finite("preprocess.pca.components", pca.components.iter().copied())?;
                pca.components.ncols()
            }
        };
        let k = self.classes.len();
        let outputs = if k == 2 { 1 } else { k };
        let check_linear = |linear: &Linear| -> Result<(), String> {
            if linear.w.dim() != (din, outputs) || linear.b.len() != outputs {
                return Err(format!(
                    "head.linear: weights {:?} and {} intercepts; expected ({din}, {outputs}) and {outputs}",
                    linear.w.dim(),
                    linear.b.len()
                ));
            }
            // Finite and of a size a fit can produce: 1e308 weights overflow every score
            // to infinity and predict one class whatever the input.
            let big = linear
                .w
                .iter()
                .chain(linear.b.iter())
                .position(|v| !v.is_finite() || v.abs() > MAX_WEIGHT);
            if let Some(i) = big {
                return Err(format!(
                    "head.linear: value {i} is not a finite number of magnitude at most {MAX_WEIGHT:e}"
                ));
            }
            Ok(())
        };
        match &self.head {
            FittedHead::Logistic { linear } => check_linear(linear),
            FittedHead::Margin { linear, platt } => {
                check_linear(linear)?;
                if platt.len() != outputs {
                    return Err(format!(
                        "head.platt: {} pairs, expected {outputs}",
                        platt.len()
                    ));
                }
                finite("head.platt", platt.iter().flat_map(|&(a, b)| [a, b]))
            }
            FittedHead::Knn(knn) => knn.check(din, k),
            FittedHead::Centroid(c) => c.check(din, k),
        }
    }
}

/// Largest weight or intercept a loaded linear head may hold.
pub const MAX_WEIGHT: f64 = 1e12;
