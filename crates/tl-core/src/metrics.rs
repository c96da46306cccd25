//! Classification metrics and bootstrap confidence intervals.

use crate::Rng;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClassMetrics {
    /// Label name.
    pub label: String,
    /// Of the rows predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the rows of this class, the fraction found.
    pub recall: f64,
    /// Harmonic mean of the two (0 when both are 0).
    pub f1: f64,
    /// Rows of this class.
    pub support: usize,
}

/// Everything measured on one set of predictions.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Metrics {
    /// Rows evaluated.
    pub n: usize,
    /// Fraction predicted correctly.
    pub accuracy: f64,
    /// Mean recall over classes present in the truth.
    pub balanced_accuracy: f64,
    /// Mean F1 over classes present in the truth or the predictions.
    pub macro_f1: f64,
    /// Mean negative log-likelihood of the true class (probabilities clipped at 1e-15).
    pub log_loss: Option<f64>,
    /// Expected calibration error of the top probability, 15 equal-width bins.
    pub ece: Option<f64>,
    /// Area under the ROC curve (binary tasks).
    pub roc_auc: Option<f64>,
    /// Average precision (binary tasks, positive = the second label).
    pub average_precision: Option<f64>,
    /// Per-class figures, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Accuracy of `pred` against `truth` over the rows in `rows`.
pub fn accuracy_on(truth: &[usize], pred: &[usize], rows: &[usize]) -> f64 {
    safe_div(
        rows.iter().filter(|&&i| truth[i] == pred[i]).count() as f64,
        rows.len() as f64,
    )
}

/// Macro-F1 over the rows in `rows`. A label index at or above `k` counts as a class of its
/// own (never a panic).
pub fn macro_f1_on(truth: &[usize], pred: &[usize], rows: &[usize], k: usize) -> f64 {
    let k = rows
        .iter()
        .map(|&i| truth[i].max(pred[i]) + 1)
        .max()
        .map_or(k, |m| m.max(k));
    let mut tp = vec![0usize; k];
    let mut fp = vec![0usize; k];
    let mut fneg = vec![0usize; k];
    for &i in rows {
        if truth[i] == pred[i] {
            tp[truth[i]] += 1;
        } else {
            fp[pred[i]] += 1;
            fneg[truth[i]] += 1;
        }
    }
    let mut sum = 0.0;
    let mut classes = 0;
    for c in 0..k {
        if tp[c] + fp[c] + fneg[c] == 0 {
            continue;
        }
        classes += 1;
        sum += safe_div(2.0 * tp[c] as f64, (2 * tp[c] + fp[c] + fneg[c]) as f64);
    }
    safe_div(sum, classes as f64)
}

/// Computes every metric. `proba` (rows x labels, row-major) enables log loss, ECE and, for
/// two labels, ROC-AUC and average precision.
pub fn evaluate(
    truth: &[usize],
    pred: &[usize],
    proba: Option<&[f64]>,
    label_names: &[String],
) -> Metrics {
    // An index without a name (a caller's bug, never a panic) shows up as `label N`.
    let k = truth
        .iter()
        .chain(pred)
        .map(|&l| l + 1)
        .max()
        .map_or(label_names.len(), |m| m.max(label_names.len()));
    let label_names: Vec<String> = (0..k)
        .map(|c| {
            label_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("label {c}"))
        })
        .collect();
    let n = truth.len().min(pred.len());
    let (truth, pred) = (&truth[..n], &pred[..n]);
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = safe_div(tp, predicted as f64);
            let recall = safe_div(tp, support as f64);
            ClassMetrics {
                label: label_names[c].clone(),
                precision,
                recall,
                f1: safe_div(2.0 * precision * recall, precision + recall),
                support,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let balanced_accuracy = safe_div(present.iter().map(|c| c.recall).sum(), present.len() as f64);
    let all: Vec<usize> = (0..n).collect();
    let (mut log_loss, mut ece, mut roc_auc, mut average_precision) = (None, None, None, None);
    // Probabilities of another shape than (rows, labels) are a caller's bug: no log loss.
    if let Some(p) = proba.filter(|p| p.len() == n * k) {
        let ll: f64 = truth
            .iter()
            .enumerate()
            .map(|(i, &t)| -p[i * k + t].clamp(1e-15, 1.0).ln())
            .sum();
        log_loss = Some(safe_div(ll, n as f64));
        ece = Some(expected_calibration_error(truth, p, k, 15));
        if k == 2 {
            let scores: Vec<f64> = (0..n).map(|i| p[i * 2 + 1]).collect();
            let positive: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
            roc_auc = roc_auc_score(&positive, &scores);
            average_precision = average_precision_score(&positive, &scores);
        }
    }
    Metrics {
        n,
        accuracy: accuracy_on(truth, pred, &all),
        balanced_accuracy,
        macro_f1: macro_f1_on(truth, pred, &all, k),
        log_loss,
        ece,
        roc_auc,
        average_precision,
        per_class,
        confusion,
    }
}

/// ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size.
/// `proba` holds `labels` probabilities per row of `truth`, row-major.
pub fn expected_calibration_error(
    truth: &[usize],
    proba: &[f64],
    labels: usize,
    bins: usize,
) -> f64 {
    let mut conf = vec![0.0; bins];
    let mut correct = vec![0.0; bins];
    let mut count = vec![0usize; bins];
    for (&t, row) in truth.iter().zip(proba.chunks_exact(labels.max(1))) {
        let mut best = 0;
        for j in 0..row.len() {
            if row[j] > row[best] {
                best = j;
            }
        }
        let c = row[best];
        let b = ((c * bins as f64) as usize).min(bins - 1);
        conf[b] += c;
        correct[b] += f64::from(u8::from(best == t));
        count[b] += 1;
    }
    let n = truth.len() as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] - conf[b]).abs() / n)
        .sum()
}

/// ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted half; `None` without both
/// classes.
pub fn roc_auc_score(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if positive[o] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let np = n_pos as f64;
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * n_neg as f64))
}

/// Average precision as scikit-learn defines it: sum over thresholds of
/// (recall_n - recall_{n-1}) * precision_n, tied scores forming one threshold.
pub fn average_precision_score(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        for &o in &order[i..=j] {
            if positive[o] {
                tp += 1;
            } else {
                fp += 1;
            }
        }
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        i = j + 1;
    }
    Some(ap)
}

/// A point estimate with a 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Interval {
    /// The statistic on the full sample.
    pub estimate: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// Percentile bootstrap over rows `0..n`: `stat` receives a resampled list of row indices.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    seed: u64,
    stat: impl Fn(&[usize]) -> f64,
) -> Interval {
    let all: Vec<usize> = (0..n).collect();
    let estimate = stat(&all);
    if n == 0 || resamples == 0 {
        return Interval {
            estimate,
            low: estimate,
            high: estimate,
        };
    }
    let mut rng = Rng::new(seed);
    let mut values: Vec<f64> = (0..resamples)
        .map(|_| {
            let sample: Vec<usize> = (0..n).map(|_| rng.below(n as u64) as usize).collect();
            stat(&sample)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    }
}

/// Paired bootstrap of accuracy(a) - accuracy(b) on the same rows (same resamples for both).
pub fn paired_accuracy_difference(
    truth: &[usize],
    pred_a: &[usize],
    pred_b: &[usize],
    resamples: usize,
    seed: u64,
) -> Interval {
    bootstrap(truth.len(), resamples, seed, |rows| {
        accuracy_on(truth, pred_a, rows) - accuracy_on(truth, pred_b, rows)
    })
}
