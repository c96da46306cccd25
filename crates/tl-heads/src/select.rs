//! Hyperparameter search: stratified k-fold cross-validation over a grid, folds in parallel.

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_core::split::stratified_kfold;

use crate::HeadError;
use crate::classifier::check_finite;
use crate::params::HeadConfig;

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
    /// One row per grid value, in grid order.
    pub rows: Vec<GridRow>,
    /// The value with the best mean accuracy (the first one on ties).
    pub best_value: f64,
    /// The config with that value set, ready to fit on all the data.
    pub best: HeadConfig,
}

/// Tunes the head's main hyperparameter (see [`crate::HeadSpec::main_param`]) over `values`
/// (the head's default grid when empty) by stratified `folds`-fold CV with `seed`. Every fold
/// refits the preprocessing on its own training part.
pub fn grid_search(
    config: &HeadConfig,
    values: &[f64],
    x: ArrayView2<f32>,
    y: &[usize],
    label_names: &[String],
    folds: usize,
    seed: u64,
) -> Result<GridSearch, HeadError> {
    config.check()?;
    let Some((param, _)) = config.head.main_param() else {
        return Err(HeadError::Params(format!(
            "{} has no hyperparameter to search",
            config.head.kind()
        )));
    };
    let values = if values.is_empty() {
        config.head.default_grid()
    } else {
        values.to_vec()
    };
    for &v in &values {
        config.head.with_main_param(v).check()?;
    }
    if y.len() != x.nrows() {
        return Err(HeadError::Data(format!(
            "{} feature rows but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    check_finite(x, "training")?;
    let all: Vec<usize> = (0..y.len()).collect();
    let splits =
        stratified_kfold(y, &all, folds, seed).map_err(|e| HeadError::Data(e.to_string()))?;
    let jobs: Vec<(usize, usize)> = (0..values.len())
        .flat_map(|v| (0..splits.len()).map(move |f| (v, f)))
        .collect();
    let scores: Vec<Result<f64, HeadError>> = jobs
        .par_iter()
        .map(|&(v, f)| {
            let fold = &splits[f];
            let cfg = HeadConfig {
                head: config.head.with_main_param(values[v]),
                ..config.clone()
            };
            let xt = x.select(Axis(0), &fold.train);
            let yt: Vec<usize> = fold.train.iter().map(|&i| y[i]).collect();
            let model = cfg.fit(xt.view(), &yt, label_names, None)?;
            let pred = model.predict(x.select(Axis(0), &fold.test).view())?;
            let correct = pred
                .iter()
                .zip(&fold.test)
                .filter(|(p, i)| **p == y[**i])
                .count();
            Ok(correct as f64 / fold.test.len() as f64)
        })
        .collect();
    let mut rows: Vec<GridRow> = values
        .iter()
        .map(|&value| GridRow {
            value,
            fold_accuracy: Vec::new(),
            mean: 0.0,
            std: 0.0,
        })
        .collect();
    for (&(v, _), score) in jobs.iter().zip(scores) {
        rows[v].fold_accuracy.push(score?);
    }
    for row in &mut rows {
        let n = row.fold_accuracy.len() as f64;
        row.mean = row.fold_accuracy.iter().sum::<f64>() / n;
        row.std = (row
            .fold_accuracy
            .iter()
            .map(|a| (a - row.mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
    }
    let mut best = 0;
    for (i, row) in rows.iter().enumerate() {
        if row.mean > rows[best].mean {
            best = i;
        }
    }
    let best_value = rows[best].value;
    Ok(GridSearch {
        param: param.to_string(),
        rows,
        best_value,
        best: HeadConfig {
            head: config.head.with_main_param(best_value),
            ..config.clone()
        },
    })
}
