//! Hyperparameter search: stratified k-fold cross-validation over a grid, folds in parallel,
//! the grid extended past an end when the best value lies on it.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_core::split::stratified_kfold;

use crate::HeadError;
use crate::classifier::Classifier;
use crate::matrix::{Features, Matrix};
use crate::params::{HeadConfig, HeadSpec};

/// How many values a search adds beyond each end of its grid, one at a time, while the best
/// value is that end.
pub const MAX_EXTENSIONS: usize = 2;

/// One grid value's cross-validated accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRow {
    /// The hyperparameter value.
    pub value: f64,
    /// Accuracy on each fold, in fold order.
    pub fold_accuracy: Vec<f64>,
    /// Mean over folds.
    pub mean: f64,
    /// Standard deviation over folds.
    pub std: f64,
}

/// The outcome of [`grid_search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridSearch {
    /// Name of the tuned hyperparameter (`c`, `alpha`, `k`).
    pub param: String,
    /// One row per value searched (the grid and its extensions), in increasing value order.
    pub rows: Vec<GridRow>,
    /// The value with the best mean accuracy (the smallest one on ties).
    pub best_value: f64,
    /// The config with that value set, ready to fit on all the data.
    pub best: HeadConfig,
    /// Values added beyond the given grid because the best value was on its end.
    #[serde(default)]
    pub extended: Vec<f64>,
    /// Set when the best value is still the smallest or largest value searched after
    /// [`MAX_EXTENSIONS`] extensions, so the optimum may lie beyond it: says which end.
    #[serde(default)]
    pub edge: Option<String>,
}

/// Tunes the head's main hyperparameter (see [`crate::HeadSpec::main_param`]) over `values`
/// (the head's default grid when empty) by stratified `folds`-fold CV with `seed`. Every fold
/// refits the preprocessing on its own training part. When the best value is the grid's
/// smallest or largest, the grid is extended on that side (see [`GridSearch::edge`]).
pub fn grid_search<'a>(
    config: &HeadConfig,
    values: &[f64],
    x: impl Into<Features<'a>>,
    y: &[usize],
    label_names: &[String],
    folds: usize,
    seed: u64,
) -> Result<GridSearch, HeadError> {
    let x = x.into();
    if y.len() != x.nrows() {
        return Err(HeadError::Data(format!(
            "{} feature rows but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    x.check_finite("training")?;
    grid_search_with(
        config,
        values,
        y,
        label_names,
        folds,
        seed,
        |train: &[usize], test: &[usize]| -> Result<_, HeadError> {
            Ok((x.select(train), x.select(test)))
        },
    )
}

/// [`grid_search`] for features that are fitted on each training part (a TF-IDF vocabulary):
/// `features(train, test)` returns the training and test matrices of those rows (indices into
/// `y`), dense or sparse. It is called once per fold for the grid and once per fold for each extension.
pub fn grid_search_with<E, F>(
    config: &HeadConfig,
    values: &[f64],
    y: &[usize],
    label_names: &[String],
    folds: usize,
    seed: u64,
    features: F,
) -> Result<GridSearch, E>
where
    E: From<HeadError> + Send,
    F: Fn(&[usize], &[usize]) -> Result<(Matrix, Matrix), E> + Sync,
{
    config.check()?;
    let Some((param, _)) = config.head.main_param() else {
        return Err(HeadError::Params(format!(
            "{} has no hyperparameter to search",
            config.head.kind()
        ))
        .into());
    };
    let mut grid = if values.is_empty() {
        config.head.default_grid()
    } else {
        values.to_vec()
    };
    if let Some(v) = grid.iter().find(|v| !v.is_finite()) {
        return Err(HeadError::Params(format!("{param}: grid value {v} is not a number")).into());
    }
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    for &v in &grid {
        config.head.with_main_param(v).check()?;
    }
    let all: Vec<usize> = (0..y.len()).collect();
    let splits = stratified_kfold(y, &all, folds, seed)
        .map_err(|e| E::from(HeadError::Data(e.to_string())))?;
    // Each fold's matrices are built once per round and dropped after it, so at most one
    // fold per thread is in memory.
    let evaluate = |values: &[f64]| -> Result<Vec<GridRow>, E> {
        let per_fold: Vec<Result<Vec<f64>, E>> = splits
            .par_iter()
            .map(|fold| {
                let (xt, xv) = features(&fold.train, &fold.test)?;
                let yt: Vec<usize> = fold.train.iter().map(|&i| y[i]).collect();
                // Values in increasing order, each fit starting from the previous one's
                // solution (logistic regression; the other heads start afresh).
                let mut previous: Option<Classifier> = None;
                values
                    .iter()
                    .map(|&v| {
                        let cfg = HeadConfig {
                            head: config.head.with_main_param(v),
                            ..config.clone()
                        };
                        let model = cfg.fit_from(
                            xt.view(),
                            &yt,
                            None,
                            label_names,
                            None,
                            previous.as_ref(),
                        )?;
                        let pred = model.predict(xv.view())?;
                        let correct = pred
                            .iter()
                            .zip(&fold.test)
                            .filter(|(p, i)| **p == y[**i])
                            .count();
                        previous = Some(model);
                        Ok(correct as f64 / fold.test.len() as f64)
                    })
                    .collect()
            })
            .collect();
        let per_fold: Vec<Vec<f64>> = per_fold.into_iter().collect::<Result<_, E>>()?;
        Ok(values
            .iter()
            .enumerate()
            .map(|(v, &value)| row(value, per_fold.iter().map(|f| f[v]).collect()))
            .collect())
    };
    let mut rows = evaluate(&grid)?;
    let mut extended = Vec::new();
    let smallest_train = splits.iter().map(|f| f.train.len()).min().unwrap_or(0);
    let mut grown = [0usize; 2];
    let edge = loop {
        let b = best(&rows);
        let n = rows.len();
        // An end counts only when it is strictly better than its neighbour: on a plateau the
        // tie goes to the smallest value, which says nothing about what lies beyond.
        let side = if n > 1 && b == n - 1 {
            1
        } else if n > 1 && b == 0 && rows[0].mean > rows[1].mean {
            0
        } else if n == 1 {
            // One value: extend upwards first, then look again.
            1
        } else {
            break None;
        };
        let next = beyond(&config.head, &rows, side, smallest_train);
        let end = if side == 0 { "smallest" } else { "largest" };
        match next {
            Some(v) if grown[side] < MAX_EXTENSIONS => {
                grown[side] += 1;
                extended.push(v);
                let new = evaluate(&[v])?.remove(0);
                if side == 0 {
                    rows.insert(0, new);
                } else {
                    rows.push(new);
                }
            }
            Some(_) => {
                break Some(format!(
                    "{param} = {} is the {end} value searched, after {MAX_EXTENSIONS} extensions of the grid: the best may lie beyond it",
                    rows[b].value
                ));
            }
            // The parameter's own bound (k = 1, or k at the training rows): nothing beyond.
            None => break None,
        }
    };
    let best_value = rows[best(&rows)].value;
    Ok(GridSearch {
        param: param.to_string(),
        rows,
        best_value,
        best: HeadConfig {
            head: config.head.with_main_param(best_value),
            ..config.clone()
        },
        extended,
        edge,
    })
}

impl GridSearch {
    /// The mean cross-validated accuracy of the best value.
    pub fn best_mean(&self) -> f64 {
        self.rows[best(&self.rows)].mean
    }
}

fn row(value: f64, fold_accuracy: Vec<f64>) -> GridRow {
    let n = fold_accuracy.len() as f64;
    let mean = fold_accuracy.iter().sum::<f64>() / n;
    let std = (fold_accuracy
        .iter()
        .map(|a| (a - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    GridRow {
        value,
        fold_accuracy,
        mean,
        std,
    }
}

/// The row with the best mean; the first (smallest value) on ties.
fn best(rows: &[GridRow]) -> usize {
    let mut best = 0;
    for (i, r) in rows.iter().enumerate() {
        if r.mean > rows[best].mean {
            best = i;
        }
    }
    best
}

/// The next value past one end of the searched values (`side` 0: below, 1: above), in the
/// grid's own spacing: the ratio of the two end values for C and alpha (x10 for a single
/// value), the difference for k. None when the parameter has no room there.
fn beyond(head: &HeadSpec, rows: &[GridRow], side: usize, train_rows: usize) -> Option<f64> {
    let n = rows.len();
    let (end, inner) = if side == 0 {
        (rows[0].value, rows.get(1).map(|r| r.value))
    } else {
        (rows[n - 1].value, n.checked_sub(2).map(|i| rows[i].value))
    };
    let next = match head {
        HeadSpec::Knn(_) => {
            let step = inner.map_or(2.0, |i| (end - i).abs().max(1.0));
            let k = if side == 0 { end - step } else { end + step };
            let k = k
                .round()
                .clamp(1.0, train_rows.saturating_sub(1).max(1) as f64);
            (k != end).then_some(k)?
        }
        _ => {
            let ratio = inner.map_or(10.0, |i| (end / i).abs().max(1.0 / (end / i).abs()));
            if !(ratio.is_finite() && ratio > 1.0) {
                return None;
            }
            if side == 0 { end / ratio } else { end * ratio }
        }
    };
    head.with_main_param(next).check().ok().map(|_| next)
}
