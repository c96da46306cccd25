//! `tl select`: rank backbones on labelled data by transferability scores, next to the
//! cross-validated accuracy of a logistic-regression head, with the time each took. LEEP
//! needs a source-task head (the backbone's first extra output, e.g. ImageNet logits), so it
//! ranks only the backbones that have one.

use std::time::Instant;

use anyhow::{Result, bail};
use tl_assets::Registry;
use tl_eval::transfer::{kendall_tau, leep, spearman, transfer_scores};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams, grid_search};

use crate::{TableArgs, UsageError, load_dataset, model::cached_features};

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
    /// Values of C the reference cross-validation tunes the logistic head over.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,1,10,100")]
    c: Vec<f64>,
    /// Use at most this many rows per dataset (a stratified sample, seed 0).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    table: TableArgs,
}

struct Row {
    backbone: String,
    /// NaN where a score does not apply (LEEP without a source head).
    scores: [f64; 4],
    score_s: [f64; 4],
    cv: f64,
    cv_s: f64,
}

const NAMES: [&str; 4] = ["LogME", "H-score", "kNN-LOO", "LEEP"];

pub(crate) fn select(registry: &Registry, a: &SelectArgs) -> Result<()> {
    let mut agree = [0usize; 4];
    let mut ranked = [0usize; 4];
    let mut taus: [Vec<f64>; 4] = Default::default();
    let mut rhos: [Vec<f64>; 4] = Default::default();
    let (mut score_time, mut cv_time) = ([0.0f64; 4], 0.0);
    for name in &a.dataset {
        let ds = load_dataset(registry, name, &a.table)?;
        let mut idx: Vec<usize> = (0..ds.len()).collect();
        match a.limit {
            Some(0) => bail!(UsageError("--limit must be at least 1".into())),
            Some(n) if n < idx.len() => {
                let frac = n as f64 / idx.len() as f64;
                idx = tl_core::split::stratified_split(&ds.labels, &idx, frac, 0)?.1;
            }
            _ => {}
        }
        let y: Vec<usize> = idx.iter().map(|&i| ds.labels[i]).collect();
        let k = ds.label_names.len();
        let mut rows = Vec::new();
        for b in &a.backbones {
            let has_head = registry
                .get(b)
                .ok()
                .and_then(|m| m.model.as_ref())
                .is_some_and(|m| !m.extra_outputs.is_empty());
            let f = cached_features(registry, b, &ds, &idx, 32, has_head)?;
            let s = transfer_scores(f.features.view(), &y, k)?;
            let t = Instant::now();
            let (leep_score, leep_s) = match f.extra.first() {
                Some((_, logits)) => (leep(logits.view(), &y, k)?, t.elapsed().as_secs_f64()),
                None => (f64::NAN, 0.0),
            };
            let t = Instant::now();
            let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
            let g = grid_search(
                &config,
                &a.c,
                f.features.view(),
                &y,
                &ds.label_names,
                a.folds,
                0,
            )?;
            rows.push(Row {
                backbone: b.clone(),
                scores: [s.logme, s.h_score, s.knn_loo, leep_score],
                score_s: [s.logme_seconds, s.h_score_seconds, s.knn_seconds, leep_s],
                cv: g.rows.iter().map(|r| r.mean).fold(f64::MIN, f64::max),
                cv_s: t.elapsed().as_secs_f64(),
            });
        }
        out!(
            "\n{} ({} rows, {} classes)",
            ds.name,
            idx.len(),
            ds.label_names.len()
        );
        out!(
            "{:<26} {:>10} {:>10} {:>9} {:>9} {:>9}   {:>29} {:>8}",
            "backbone",
            "LogME",
            "H-score",
            "kNN-LOO",
            "LEEP",
            "CV acc.",
            "score times (s)",
            "CV (s)"
        );
        for r in &rows {
            let leep = if r.scores[3].is_nan() {
                "-".to_string()
            } else {
                format!("{:.4}", r.scores[3])
            };
            out!(
                "{:<26} {:>10.4} {:>10.3} {:>8.1}% {:>9} {:>8.1}%   {:>6.2} {:>6.2} {:>8.2} {:>6.2} {:>8.2}",
                r.backbone,
                r.scores[0],
                r.scores[1],
                100.0 * r.scores[2],
                leep,
                100.0 * r.cv,
                r.score_s[0],
                r.score_s[1],
                r.score_s[2],
                r.score_s[3],
                r.cv_s
            );
            for (t, s) in score_time.iter_mut().zip(r.score_s) {
                *t += s;
            }
            cv_time += r.cv_s;
        }
        for (s, name) in NAMES.iter().enumerate() {
            // A score ranks the backbones it applies to, against CV on the same backbones.
            let have: Vec<&Row> = rows.iter().filter(|r| !r.scores[s].is_nan()).collect();
            if have.len() < 2 {
                continue;
            }
            let v: Vec<f64> = have.iter().map(|r| r.scores[s]).collect();
            let cv: Vec<f64> = have.iter().map(|r| r.cv).collect();
            let (best, best_cv) = (argmax(&v), argmax(&cv));
            ranked[s] += 1;
            agree[s] += usize::from(best == best_cv);
            if let Some(t) = kendall_tau(&v, &cv) {
                taus[s].push(t);
            }
            if let Some(r) = spearman(&v, &cv) {
                rhos[s].push(r);
            }
            out!(
                "  {name:<8} picks {:<26} (cross-validation picks {})",
                have[best].backbone,
                have[best_cv].backbone
            );
        }
    }
    out!("\nover {} dataset(s):", a.dataset.len());
    let mean = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:+.2}", v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    for (s, name) in NAMES.iter().enumerate() {
        if ranked[s] == 0 {
            out!("  {name:<8} ranks no dataset (fewer than two backbones have it)");
            continue;
        }
        out!(
            "  {name:<8} top-1 agrees with CV on {}/{}; mean Kendall tau {}, mean Spearman {}; \
             {:.2}s in all = {:.1}% of the {cv_time:.1}s of {}-fold cross-validation over {} values of C",
            agree[s],
            ranked[s],
            mean(&taus[s]),
            mean(&rhos[s]),
            score_time[s],
            100.0 * score_time[s] / cv_time.max(1e-9),
            a.folds,
            a.c.len()
        );
    }
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}
