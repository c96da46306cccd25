//! Distance heads: k-nearest neighbours (exact, brute force) and nearest centroid.

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::params::{KnnParams, Metric, Weighting};

/// Queries per block: bounds the distance matrix held at once to `BLOCK x n_train`.
const BLOCK: usize = 256;

fn unit_rows(x: ArrayView2<f64>) -> Array2<f64> {
    let mut out = x.as_standard_layout().into_owned();
    let cols = out.ncols();
    if let Some(values) = out.as_slice_mut() {
        tl_core::vector::l2_normalize_rows(values, cols);
    }
    out
}

fn sq_norms(x: ArrayView2<f64>) -> Array1<f64> {
    x.axis_iter(Axis(0)).map(|r| r.dot(&r)).collect()
}

/// Distances between each query and each reference row, as scikit-learn computes them
/// (`|a|^2 + |b|^2 - 2 a.b`, clipped at 0, for euclidean; `1 - cos` for cosine).
/// For cosine, both sides must already be unit rows.
fn distances(
    queries: ArrayView2<f64>,
    refs: ArrayView2<f64>,
    ref_sq: &Array1<f64>,
    metric: Metric,
) -> Array2<f64> {
    let mut dots = queries.dot(&refs.t());
    // An outer product (one feature) comes back column-major; votes read rows as slices.
    if !dots.is_standard_layout() {
        dots = dots.as_standard_layout().into_owned();
    }
    match metric {
        Metric::Cosine => dots.mapv(|v| (1.0 - v).max(0.0)),
        Metric::Euclidean => {
            let q_sq = sq_norms(queries);
            let mut d = dots;
            for (i, mut row) in d.axis_iter_mut(Axis(0)).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (q_sq[i] + ref_sq[j] - 2.0 * *v).max(0.0).sqrt();
                }
            }
            d
        }
    }
}

/// A fitted kNN: the (possibly normalised) training rows and their classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    params: KnnParams,
    train: Array2<f64>,
    labels: Vec<usize>,
    n_classes: usize,
    class_weight: Vec<f64>,
}

/// The first non-finite value of `values` as an error naming `field`.
pub(crate) fn finite(field: &str, values: impl IntoIterator<Item = f64>) -> Result<(), String> {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("{field}: value {i} is not a finite number")),
        None => Ok(()),
    }
}

impl Knn {
    /// Checks a loaded head against the classifier around it: `din` input columns, `k` classes.
    pub(crate) fn check(&self, din: usize, k: usize) -> Result<(), String> {
        if self.n_classes != k {
            return Err(format!(
                "head.n_classes: {} but the classifier has {k} classes",
                self.n_classes
            ));
        }
        if self.train.ncols() != din {
            return Err(format!(
                "head.train: {} columns, expected {din}",
                self.train.ncols()
            ));
        }
        if self.train.nrows() != self.labels.len() || self.labels.is_empty() {
            return Err(format!(
                "head.labels: {} labels for {} training rows",
                self.labels.len(),
                self.train.nrows()
            ));
        }
        if self.params.k == 0 || self.params.k > self.labels.len() {
            return Err(format!(
                "head.params.k: {} is not in 1..={}",
                self.params.k,
                self.labels.len()
            ));
        }
        if let Some(l) = self.labels.iter().find(|&&l| l >= k) {
            return Err(format!("head.labels: class {l} is not below {k}"));
        }
        if self.class_weight.len() != k || self.class_weight.iter().any(|&w| w.is_nan() || w <= 0.0)
        {
            return Err(format!(
                "head.class_weight: needs {k} positive weights, got {:?}",
                self.class_weight
            ));
        }
        finite("head.train", self.train.iter().copied())?;
        finite("head.class_weight", self.class_weight.iter().copied())
    }

    pub(crate) fn fit(
        params: &KnnParams,
        x: ArrayView2<f64>,
        y: &[usize],
        n_classes: usize,
        class_weight: Vec<f64>,
    ) -> Knn {
        let train = match params.metric {
            Metric::Cosine => unit_rows(x),
            Metric::Euclidean => x.to_owned(),
        };
        Knn {
            params: params.clone(),
            train,
            labels: y.to_vec(),
            n_classes,
            class_weight,
        }
    }

    /// Vote shares per class (sum to 1 per row).
    pub(crate) fn proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let queries = match self.params.metric {
            Metric::Cosine => unit_rows(x),
            Metric::Euclidean => x.to_owned(),
        };
        let ref_sq = sq_norms(self.train.view());
        let n = queries.nrows();
        let mut out = Array2::zeros((n, self.n_classes));
        let blocks: Vec<(usize, Array2<f64>)> = (0..n)
            .step_by(BLOCK)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let end = (start + BLOCK).min(n);
                let d = distances(
                    queries.slice(s![start..end, ..]),
                    self.train.view(),
                    &ref_sq,
                    self.params.metric,
                );
                let mut votes = Array2::zeros((end - start, self.n_classes));
                for (r, row) in d.axis_iter(Axis(0)).enumerate() {
                    self.vote(row.as_slice().expect("row-major"), votes.row_mut(r));
                }
                (start, votes)
            })
            .collect();
        for (start, votes) in blocks {
            out.slice_mut(s![start..start + votes.nrows(), ..])
                .assign(&votes);
        }
        out
    }

    fn vote(&self, dist: &[f64], mut votes: ndarray::ArrayViewMut1<f64>) {
        let k = self.params.k.min(dist.len());
        let mut idx: Vec<usize> = (0..dist.len()).collect();
        // Ties in distance go to the lower training index, so results never depend on threads.
        let cmp = |&a: &usize, &b: &usize| dist[a].total_cmp(&dist[b]).then(a.cmp(&b));
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);
        let exact = idx.iter().any(|&j| dist[j] == 0.0);
        for &j in &idx {
            let w = match self.params.weighting {
                Weighting::Uniform => 1.0,
                // As scikit-learn: when a neighbour sits exactly on the query, only exact
                // matches vote.
                Weighting::Distance if exact => {
                    if dist[j] == 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Weighting::Distance => 1.0 / dist[j],
            };
            let c = self.labels[j];
            votes[c] += w * self.class_weight[c];
        }
        let total: f64 = votes.sum();
        if total > 0.0 {
            votes.mapv_inplace(|v| v / total);
        }
    }
}

/// A fitted nearest-centroid head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Centroid {
    metric: Metric,
    centroids: Array2<f64>,
    /// Pooled within-class variance per dimension, which turns distances into probabilities.
    variance: f64,
    log_prior: Vec<f64>,
}

impl Centroid {
    /// Checks a loaded head: `k` centroids of `din` columns, a positive variance.
    pub(crate) fn check(&self, din: usize, k: usize) -> Result<(), String> {
        if self.centroids.dim() != (k, din) {
            return Err(format!(
                "head.centroids: shape {:?}, expected ({k}, {din})",
                self.centroids.dim()
            ));
        }
        if self.log_prior.len() != k {
            return Err(format!(
                "head.log_prior: {} values, expected {k}",
                self.log_prior.len()
            ));
        }
        if !(self.variance.is_finite() && self.variance > 0.0) {
            return Err(format!(
                "head.variance: {} must be a positive number",
                self.variance
            ));
        }
        finite("head.centroids", self.centroids.iter().copied())?;
        finite("head.log_prior", self.log_prior.iter().copied())
    }

    pub(crate) fn fit(
        metric: Metric,
        x: ArrayView2<f64>,
        y: &[usize],
        n_classes: usize,
        class_weight: &[f64],
    ) -> Centroid {
        let data = match metric {
            Metric::Cosine => unit_rows(x),
            Metric::Euclidean => x.to_owned(),
        };
        let d = data.ncols();
        let mut centroids = Array2::<f64>::zeros((n_classes, d));
        let mut counts = vec![0usize; n_classes];
        for (row, &c) in data.axis_iter(Axis(0)).zip(y) {
            let mut cen = centroids.row_mut(c);
            cen += &row;
            counts[c] += 1;
        }
        for (mut cen, &n) in centroids.axis_iter_mut(Axis(0)).zip(&counts) {
            cen.mapv_inplace(|v| v / n.max(1) as f64);
        }
        if metric == Metric::Cosine {
            centroids = unit_rows(centroids.view());
        }
        let mut ss = 0.0;
        for (row, &c) in data.axis_iter(Axis(0)).zip(y) {
            let diff = &row - &centroids.row(c);
            ss += diff.dot(&diff);
        }
        let dof = (data.nrows().saturating_sub(n_classes)).max(1) as f64 * d.max(1) as f64;
        let variance = (ss / dof).max(1e-12);
        Centroid {
            metric,
            centroids,
            variance,
            log_prior: class_weight.iter().map(|w| w.ln()).collect(),
        }
    }

    /// Per-class scores: `-d^2 / (2 sigma^2) + ln w_c`, the log-posterior of a Gaussian with
    /// shared isotropic covariance (up to a constant).
    pub(crate) fn scores(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let queries = match self.metric {
            Metric::Cosine => unit_rows(x),
            Metric::Euclidean => x.to_owned(),
        };
        let ref_sq = sq_norms(self.centroids.view());
        let d = match self.metric {
            // Cosine distance on unit vectors is half the squared euclidean distance.
            Metric::Cosine => distances(
                queries.view(),
                self.centroids.view(),
                &ref_sq,
                Metric::Cosine,
            )
            .mapv(|v| (2.0 * v).sqrt()),
            Metric::Euclidean => distances(
                queries.view(),
                self.centroids.view(),
                &ref_sq,
                Metric::Euclidean,
            ),
        };
        let mut s = d.mapv(|v| -v * v / (2.0 * self.variance));
        for mut row in s.axis_iter_mut(Axis(0)) {
            for (v, lp) in row.iter_mut().zip(&self.log_prior) {
                *v += lp;
            }
        }
        s
    }
}

/// Row-wise softmax.
pub(crate) fn softmax(scores: &Array2<f64>) -> Array2<f64> {
    let mut out = scores.clone();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}
