//! `tl select`: rank backbones on labelled data by transferability scores, next to the
//! cross-validated accuracy of a logistic-regression head, with the time each took.

use std::time::Instant;

use anyhow::Result;
use tl_assets::Registry;
use tl_eval::transfer::{kendall_tau, spearman, transfer_scores};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams, grid_search};

use crate::{TableArgs, load_dataset, model::cached_features};

/// Arguments of `tl select`.
#[derive(clap::Args)]
pub(crate) struct SelectArgs {
    /// Labelled datasets (repeatable).
    #[arg(long, required = true)]
    dataset: Vec<String>,
    /// Candidate backbones, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    backbones: Vec<String>,
    /// Folds of the reference cross-validation.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Use at most this many rows per dataset (a stratified-by-order prefix).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    table: TableArgs,
}

struct Row {
    backbone: String,
    scores: [f64; 3],
    score_s: [f64; 3],
    cv: f64,
    cv_s: f64,
}

const NAMES: [&str; 3] = ["LogME", "H-score", "kNN-LOO"];

pub(crate) fn select(registry: &Registry, a: &SelectArgs) -> Result<()> {
    let mut agree = [0usize; 3];
    let mut taus: [Vec<f64>; 3] = Default::default();
    let mut rhos: [Vec<f64>; 3] = Default::default();
    let (mut score_time, mut cv_time) = (0.0, 0.0);
    for name in &a.dataset {
        let ds = load_dataset(registry, name, &a.table)?;
        let mut idx: Vec<usize> = (0..ds.len()).collect();
        if let Some(n) = a.limit {
            idx.truncate(n);
        }
        let y: Vec<usize> = idx.iter().map(|&i| ds.labels[i]).collect();
        let mut rows = Vec::new();
        for b in &a.backbones {
            let f = cached_features(registry, b, &ds, &idx, 32)?;
            let s = transfer_scores(f.features.view(), &y, ds.label_names.len())?;
            let t = Instant::now();
            let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
            let g = grid_search(
                &config,
                &[1.0],
                f.features.view(),
                &y,
                &ds.label_names,
                a.folds,
                0,
            )?;
            rows.push(Row {
                backbone: b.clone(),
                scores: [s.logme, s.h_score, s.knn_loo],
                score_s: [s.logme_seconds, s.h_score_seconds, s.knn_seconds],
                cv: g.rows[0].mean,
                cv_s: t.elapsed().as_secs_f64(),
            });
        }
        println!(
            "\n{} ({} rows, {} classes)",
            ds.name,
            idx.len(),
            ds.label_names.len()
        );
        println!(
            "{:<26} {:>10} {:>10} {:>9} {:>9}   {:>22} {:>8}",
            "backbone", "LogME", "H-score", "kNN-LOO", "CV acc.", "score times (s)", "CV (s)"
        );
        for r in &rows {
            println!(
                "{:<26} {:>10.4} {:>10.3} {:>8.1}% {:>8.1}%   {:>6.2} {:>6.2} {:>8.2} {:>8.2}",
                r.backbone,
                r.scores[0],
                r.scores[1],
                100.0 * r.scores[2],
                100.0 * r.cv,
                r.score_s[0],
                r.score_s[1],
                r.score_s[2],
                r.cv_s
            );
            score_time += r.score_s[0];
            cv_time += r.cv_s;
        }
        let cv: Vec<f64> = rows.iter().map(|r| r.cv).collect();
        let best_cv = argmax(&cv);
        for (s, name) in NAMES.iter().enumerate() {
            let v: Vec<f64> = rows.iter().map(|r| r.scores[s]).collect();
            let best = argmax(&v);
            agree[s] += usize::from(best == best_cv);
            if let Some(t) = kendall_tau(&v, &cv) {
                taus[s].push(t);
            }
            if let Some(r) = spearman(&v, &cv) {
                rhos[s].push(r);
            }
            println!(
                "  {name:<8} picks {:<26} (cross-validation picks {})",
                rows[best].backbone, rows[best_cv].backbone
            );
        }
    }
    let n = a.dataset.len();
    println!("\nover {n} dataset(s):");
    let mean = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:+.2}", v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    for (s, name) in NAMES.iter().enumerate() {
        println!(
            "  {name:<8} top-1 agrees with CV on {}/{n}; mean Kendall tau {}, mean Spearman {}",
            agree[s],
            mean(&taus[s]),
            mean(&rhos[s])
        );
    }
    println!(
        "  LogME took {score_time:.2}s in all, {:.1}% of the {cv_time:.1}s of {}-fold cross-validation",
        100.0 * score_time / cv_time.max(1e-9),
        a.folds
    );
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}
