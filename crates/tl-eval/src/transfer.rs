//! Transferability scores: how well a backbone's features will serve a labelled dataset,
//! estimated without training a head (model selection in seconds).

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// One label per row, each below `n_classes` (`what` names the score in the error).
fn check_labels(
    what: &str,
    rows: usize,
    labels: &[usize],
    n_classes: usize,
) -> Result<(), EvalError> {
    if labels.len() != rows {
        return Err(EvalError::Config(format!(
            "{what} needs one label per row: {rows} rows, {} labels",
            labels.len()
        )));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l >= n_classes) {
        return Err(EvalError::Config(format!(
            "{what}: row {i} has label {l}, not below the {n_classes} classes"
        )));
    }
    Ok(())
}

/// LogME (You, Liu, Wang & Long, ICML 2021): the log marginal evidence of a Bayesian linear
/// model from the features to each one-vs-all target, per sample, averaged over classes.
/// The fixed-point iteration of the authors' reference code (`thuml/LogME`), in f64.
pub fn logme(
    features: ArrayView2<f32>,
    labels: &[usize],
    n_classes: usize,
) -> Result<f64, EvalError> {
    let f = features.mapv(f64::from);
    let (n, d) = f.dim();
    if n == 0 || labels.len() != n {
        return Err(EvalError::Config(format!(
            "LogME needs one label per row: {n} rows, {} labels",
            labels.len()
        )));
    }
    check_labels("LogME", n, labels, n_classes)?;
    let gram = f.t().dot(&f);
    let (s, v) = tl_heads::linalg::eigh_desc(gram)?;
    let s = s.mapv(|x| x.max(0.0));
    let (nf, df) = (n as f64, d as f64);
    let mut total = 0.0;
    let mut classes = 0;
    for c in 0..n_classes {
        let y: Array1<f64> = labels
            .iter()
            .map(|&l| f64::from(u8::from(l == c)))
            .collect();
        if y.sum() == 0.0 {
            continue;
        }
        classes += 1;
        let tmp = v.t().dot(&f.t().dot(&y));
        let (mut alpha, mut beta) = (1.0f64, 1.0f64);
        let mut lam = alpha / beta;
        let eps = 1e-5;
        let (mut alpha_de, mut beta_de) = (0.0, 0.0);
        for _ in 0..11 {
            let gamma: f64 = s.iter().map(|&si| si / (si + lam)).sum();
            let scaled: Array1<f64> = tmp
                .iter()
                .zip(s.iter())
                .map(|(&t, &si)| t * beta / (alpha + beta * si))
                .collect();
            let m = v.dot(&scaled);
            alpha_de = m.dot(&m);
            alpha = gamma / (alpha_de + eps);
            let resid = &y - &f.dot(&m);
            beta_de = resid.dot(&resid);
            beta = (nf - gamma) / (beta_de + eps);
            let new_lam = alpha / beta;
            if (new_lam - lam).abs() / lam < 0.01 {
                break;
            }
            lam = new_lam;
        }
        let evidence = df / 2.0 * alpha.ln() + nf / 2.0 * beta.ln()
            - 0.5 * s.iter().map(|&si| (alpha + beta * si).ln()).sum::<f64>()
            - beta / 2.0 * (beta_de + eps)
            - alpha / 2.0 * (alpha_de + eps)
            - nf / 2.0 * (2.0 * std::f64::consts::PI).ln();
        total += evidence / nf;
    }
    Ok(total / classes.max(1) as f64)
}

/// H-score (Bao et al., 2019): tr(cov(f)^+ cov(E[f | y])), with the pseudo-inverse keeping
/// eigenvalues above 1e-10 of the largest (features of a low-rank backbone stay finite).
pub fn h_score(
    features: ArrayView2<f32>,
    labels: &[usize],
    n_classes: usize,
) -> Result<f64, EvalError> {
    let f = features.mapv(f64::from);
    let (n, d) = f.dim();
    if n < 2 || labels.len() != n {
        return Err(EvalError::Config(format!(
            "H-score needs at least 2 rows and one label per row: {n} rows, {} labels",
            labels.len()
        )));
    }
    check_labels("H-score", n, labels, n_classes)?;
    let mean = f.mean_axis(Axis(0)).expect("rows");
    let centred = &f - &mean;
    let cov_f = centred.t().dot(&centred) / (n as f64 - 1.0);
    let mut class_mean = Array2::<f64>::zeros((n_classes, d));
    let mut counts = vec![0usize; n_classes];
    for (row, &l) in f.outer_iter().zip(labels) {
        let mut m = class_mean.row_mut(l);
        m += &row;
        counts[l] += 1;
    }
    for (mut m, &c) in class_mean.outer_iter_mut().zip(&counts) {
        if c > 0 {
            m.mapv_inplace(|x| x / c as f64);
        }
    }
    let mut g = Array2::<f64>::zeros((n, d));
    for (i, &l) in labels.iter().enumerate() {
        g.row_mut(i).assign(&(&class_mean.row(l) - &mean));
    }
    let cov_g = g.t().dot(&g) / (n as f64 - 1.0);
    let (vals, vecs) = tl_heads::linalg::eigh_desc(cov_f)?;
    let cutoff = vals[0].max(0.0) * 1e-10;
    // tr(V diag(1/lambda) V^T cov_g) with one matrix product instead of d matrix-vector ones.
    let w = cov_g.dot(&vecs);
    let mut score = 0.0;
    for (j, &lam) in vals.iter().enumerate() {
        if lam > cutoff {
            score += vecs.column(j).dot(&w.column(j)) / lam;
        }
    }
    Ok(score)
}

/// Leave-one-out k-nearest-neighbour accuracy with cosine similarity (k = 5, majority vote,
/// ties to the nearest neighbour's class).
pub fn knn_loo_accuracy(
    features: ArrayView2<f32>,
    labels: &[usize],
    k: usize,
) -> Result<f64, EvalError> {
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    check_labels("kNN-LOO", features.nrows(), labels, n_classes)?;
    let mut z = features.mapv(f64::from);
    let cols = z.ncols();
    if let Some(values) = z.as_slice_mut() {
        tl_core::vector::l2_normalize_rows(values, cols);
    }
    let n = z.nrows();
    let mut correct = 0usize;
    for start in (0..n).step_by(512) {
        let end = (start + 512).min(n);
        let sims = z.slice(ndarray::s![start..end, ..]).dot(&z.t());
        for (r, row) in sims.outer_iter().enumerate() {
            let i = start + r;
            let mut idx: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            let kk = k.min(idx.len());
            if kk == 0 {
                continue;
            }
            let cmp = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            idx.select_nth_unstable_by(kk - 1, cmp);
            idx.truncate(kk);
            idx.sort_unstable_by(cmp);
            let mut votes = vec![0usize; n_classes];
            for &j in &idx {
                votes[labels[j]] += 1;
            }
            let best = *votes.iter().max().unwrap_or(&0);
            let pred = idx
                .iter()
                .map(|&j| labels[j])
                .find(|&c| votes[c] == best)
                .unwrap_or(0);
            correct += usize::from(pred == labels[i]);
        }
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// LEEP (Nguyen, Hassner, Seeger & Archambeau, ICML 2020): the average log-likelihood of the
/// "expected empirical predictor" that maps the source model's class distribution `softmax(logits)`
/// to target labels through the empirical conditional `P(y | z)`. Needs the source head's
/// logits (e.g. EfficientNet-Lite0's ImageNet `logits`) or its class probabilities, not
/// features; higher is better, at most 0.
pub fn leep(logits: ArrayView2<f32>, labels: &[usize], n_classes: usize) -> Result<f64, EvalError> {
    let (n, z) = logits.dim();
    if n == 0 || labels.len() != n || z == 0 {
        return Err(EvalError::Config(format!(
            "LEEP needs source logits and one label per row: {n} x {z} logits, {} labels",
            labels.len()
        )));
    }
    check_labels("LEEP", n, labels, n_classes)?;
    if let Some((i, _)) = logits
        .outer_iter()
        .enumerate()
        .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
    {
        return Err(EvalError::Config(format!(
            "LEEP: logits row {i} is not finite"
        )));
    }
    let mut theta = logits.mapv(f64::from);
    // Some graphs end in a softmax (open_nsfw's `outputs`): rows that already are
    // distributions are used as they are.
    let is_distribution = theta
        .outer_iter()
        .all(|r| r.iter().all(|&v| (0.0..=1.0).contains(&v)) && (r.sum() - 1.0).abs() < 1e-3);
    for mut row in theta.outer_iter_mut() {
        if is_distribution {
            continue;
        }
        let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    let mut joint = Array2::<f64>::zeros((n_classes, z));
    for (row, &l) in theta.outer_iter().zip(labels) {
        let mut j = joint.row_mut(l);
        j += &row;
    }
    let marginal = joint.sum_axis(Axis(0));
    for mut j in joint.outer_iter_mut() {
        j.zip_mut_with(&marginal, |v, &m| *v = if m > 0.0 { *v / m } else { 0.0 });
    }
    let total: f64 = theta
        .outer_iter()
        .zip(labels)
        .map(|(row, &l)| row.dot(&joint.row(l)).max(f64::MIN_POSITIVE).ln())
        .sum();
    Ok(total / n as f64)
}

/// All scores of one backbone on one dataset, with their times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferScores {
    /// LogME.
    pub logme: f64,
    /// H-score.
    pub h_score: f64,
    /// Leave-one-out 5-NN accuracy.
    pub knn_loo: f64,
    /// Seconds for LogME.
    pub logme_seconds: f64,
    /// Seconds for H-score.
    pub h_score_seconds: f64,
    /// Seconds for kNN.
    pub knn_seconds: f64,
}

/// Computes every score.
pub fn transfer_scores(
    features: ArrayView2<f32>,
    labels: &[usize],
    n_classes: usize,
) -> Result<TransferScores, EvalError> {
    let t = Instant::now();
    let logme = logme(features, labels, n_classes)?;
    let logme_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let h = h_score(features, labels, n_classes)?;
    let h_score_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let knn = knn_loo_accuracy(features, labels, 5)?;
    Ok(TransferScores {
        logme,
        h_score: h,
        knn_loo: knn,
        logme_seconds,
        h_score_seconds,
        knn_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Kendall's tau-b between two score lists (ties handled), `None` with fewer than 2 items.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len();
    if n < 2 || b.len() != n {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        for j in i + 1..n {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            if da == 0.0 && db == 0.0 {
                continue;
            } else if da == 0.0 {
                ties_a += 1.0;
            } else if db == 0.0 {
                ties_b += 1.0;
            } else if da * db > 0.0 {
                concordant += 1.0;
            } else {
                discordant += 1.0;
            }
        }
    }
    let denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)).sqrt();
    (denom > 0.0).then(|| (concordant - discordant) / denom)
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() != a.len() {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}
