//! `tl select`: prints what `tl_eval::select` finds: backbones ranked on labelled data by
//! transferability scores, next to the cross-validated accuracy of a logistic-regression head,
//! with the time each took.

use anyhow::Result;
use tl_assets::{Cache, Registry};
use tl_eval::select::{SCORES, SelectOptions, agreement, select_backbones};

use crate::{TableArgs, load_dataset, model_manifest};

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
    /// Values of C the reference cross-validation tunes the logistic head over [default: the
    /// grid `tl fit --search` and experiment files use, extended past an end it is best on].
    #[arg(long, value_delimiter = ',')]
    c: Vec<f64>,
    /// A stratified sample of about this many rows (seed 0: the same rows in every command).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    table: TableArgs,
}

pub(crate) fn select(registry: &Registry, a: &SelectArgs) -> Result<()> {
    for b in &a.backbones {
        model_manifest(registry, b)?;
    }
    let cache = Cache::from_env();
    let options = SelectOptions {
        folds: a.folds,
        c: a.c.clone(),
        ..SelectOptions::default()
    };
    let note = |line: &str| eprintln!("{line}");
    let mut selections = Vec::new();
    for name in &a.dataset {
        let ds = load_dataset(registry, name, &a.table)?;
        let idx = crate::model::selection(&ds, None, a.limit)?;
        let d = select_backbones(&ds, &idx, &a.backbones, &options, registry, &cache, &note)?;
        out!("\n{} ({} rows, {} classes)", d.dataset, d.rows, d.classes);
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
        for c in &d.candidates {
            let leep = if c.scores[3].is_nan() {
                "-".to_string()
            } else {
                format!("{:.4}", c.scores[3])
            };
            out!(
                "{:<26} {:>10.4} {:>10.3} {:>8.1}% {:>9} {:>8.1}%   {:>6.2} {:>6.2} {:>8.2} {:>6.2} {:>8.2}",
                c.backbone,
                c.scores[0],
                c.scores[1],
                100.0 * c.scores[2],
                leep,
                100.0 * c.cv_accuracy,
                c.score_seconds[0],
                c.score_seconds[1],
                c.score_seconds[2],
                c.score_seconds[3],
                c.cv_seconds
            );
        }
        if let Some(b) = &d.baseline {
            out!(
                "{:<26} {:>10} {:>10} {:>9} {:>9} {:>8.1}%   {:>38} {:>8.2}",
                format!("{} (baseline)", b.name),
                "-",
                "-",
                "-",
                "-",
                100.0 * b.cv_accuracy,
                "",
                b.cv_seconds
            );
        }
        if let Some(sentence) = d.baseline_sentence() {
            out!("  {sentence}");
        }
        for p in &d.picks {
            out!(
                "  {:<8} picks {:<26} (cross-validation picks {})",
                SCORES[p.score],
                p.pick,
                p.cv_pick
            );
        }
        selections.push(d);
    }
    out!("\nover {} dataset(s):", a.dataset.len());
    let mean = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:+.2}"));
    for g in agreement(&selections) {
        let name = SCORES[g.score];
        if g.ranked == 0 {
            out!("  {name:<8} ranks no dataset (fewer than two backbones have it)");
            continue;
        }
        out!(
            "  {name:<8} top-1 agrees with CV on {}/{}; mean Kendall tau {}, mean Spearman {}; \
             {:.2}s in all = {:.1}% of the {:.1}s of {}-fold cross-validation over the C grid",
            g.agree,
            g.ranked,
            mean(g.mean_kendall_tau),
            mean(g.mean_spearman),
            g.seconds,
            100.0 * g.seconds / g.cv_seconds.max(1e-9),
            g.cv_seconds,
            a.folds
        );
    }
    Ok(())
}
