//! Choosing a backbone before training one: transferability scores (LogME, H-score, kNN
//! leave-one-out, LEEP) of each candidate on labelled rows, next to the cross-validated accuracy
//! of a tuned logistic-regression head, which is what the scores try to predict at a fraction of
//! its cost. [`select_backbones`] scores one dataset; [`agreement`] says, over datasets, how
//! often each score picks the backbone cross-validation picks and how well it ranks them.
//!
//! LEEP needs a source-task head (the backbone's first extra output, e.g. ImageNet logits), so
//! it ranks only the backbones that have one.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Registry};
use tl_data::Dataset;
use tl_heads::{HeadConfig, HeadSpec, LogisticParams, grid_search};

use crate::EvalError;
use crate::runner::{Observer, backbone_features};
use crate::transfer::{kendall_tau, leep, spearman, transfer_scores};

/// The scores, in the order of every array below.
pub const SCORES: [&str; 4] = ["LogME", "H-score", "kNN-LOO", "LEEP"];

/// How the reference cross-validation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectOptions {
    /// Folds of the reference cross-validation.
    pub folds: usize,
    /// Values of C the logistic head is tuned over; empty: the head's default grid, the one
    /// `tl fit --search` and experiment files search (extended past an end it is best on).
    pub c: Vec<f64>,
    /// Inference batch size.
    pub batch_size: usize,
    /// Seed of the folds.
    pub seed: u64,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            folds: 5,
            c: Vec::new(),
            batch_size: 32,
            seed: 0,
        }
    }
}

/// One backbone on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Backbone name.
    pub backbone: String,
    /// [`SCORES`] in order; NaN where a score does not apply (LEEP without a source head).
    pub scores: [f64; 4],
    /// Seconds each score took.
    pub score_seconds: [f64; 4],
    /// Best mean cross-validated accuracy over the C grid.
    pub cv_accuracy: f64,
    /// Seconds the cross-validation took.
    pub cv_seconds: f64,
}

/// The no-pretraining baseline (TF-IDF for text, raw pixels for images) under the same
/// cross-validation as the backbones: what every backbone has to beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineCandidate {
    /// `tfidf` or `raw-pixels`.
    pub name: String,
    /// Best mean cross-validated accuracy over the same C grid and folds (the TF-IDF
    /// vocabulary fitted on each training fold).
    pub cv_accuracy: f64,
    /// Seconds the cross-validation took.
    pub cv_seconds: f64,
}

/// Which backbone one score picks on one dataset, against cross-validation's pick among the
/// same backbones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    /// Index into [`SCORES`].
    pub score: usize,
    /// The score's pick.
    pub pick: String,
    /// Cross-validation's pick among the backbones the score applies to.
    pub cv_pick: String,
    /// Kendall's tau between the score and CV accuracy (None with ties only).
    pub kendall_tau: Option<f64>,
    /// Spearman's rho between the score and CV accuracy.
    pub spearman: Option<f64>,
}

/// The candidates on one dataset and each score's pick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSelection {
    /// Dataset name.
    pub dataset: String,
    /// Rows scored.
    pub rows: usize,
    /// Number of classes.
    pub classes: usize,
    /// One per backbone, in the order asked.
    pub candidates: Vec<Candidate>,
    /// The baseline every backbone is measured against.
    #[serde(default)]
    pub baseline: Option<BaselineCandidate>,
    /// One per score that applies to at least two backbones.
    pub picks: Vec<Pick>,
}

/// How one score did over datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Index into [`SCORES`].
    pub score: usize,
    /// Datasets on which it ranked at least two backbones.
    pub ranked: usize,
    /// Of those, how many it picked the backbone cross-validation picks.
    pub agree: usize,
    /// Mean Kendall's tau with CV accuracy.
    pub mean_kendall_tau: Option<f64>,
    /// Mean Spearman's rho with CV accuracy.
    pub mean_spearman: Option<f64>,
    /// Seconds the score took, summed.
    pub seconds: f64,
    /// Seconds cross-validation took over the same datasets and backbones.
    pub cv_seconds: f64,
}

/// Scores every backbone of `backbones` on `rows` of `ds` (features through the feature cache)
/// and runs the reference cross-validation. The ONNX Runtime must be fetched and initialised.
pub fn select_backbones(
    ds: &Dataset,
    rows: &[usize],
    backbones: &[String],
    options: &SelectOptions,
    registry: &Registry,
    cache: &Cache,
    obs: &dyn Observer,
) -> Result<DatasetSelection, EvalError> {
    if options.folds < 2 {
        return Err(EvalError::Config(format!(
            "folds: cross-validation needs at least 2, got {}",
            options.folds
        )));
    }
    let y: Vec<usize> = rows.iter().map(|&i| ds.labels[i]).collect();
    let k = ds.label_names.len();
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let mut candidates = Vec::new();
    for b in backbones {
        let f = backbone_features(b, ds, rows, registry, cache, options.batch_size, true, obs)?;
        let s = transfer_scores(f.features.view(), &y, k)?;
        let t = Instant::now();
        let (leep_score, leep_s) = match f.extra.first() {
            Some((_, logits)) => (leep(logits.view(), &y, k)?, t.elapsed().as_secs_f64()),
            None => (f64::NAN, 0.0),
        };
        let t = Instant::now();
        let g = grid_search(
            &config,
            &options.c,
            f.features.view(),
            &y,
            &ds.label_names,
            options.folds,
            options.seed,
        )?;
        candidates.push(Candidate {
            backbone: b.clone(),
            scores: [s.logme, s.h_score, s.knn_loo, leep_score],
            score_seconds: [s.logme_seconds, s.h_score_seconds, s.knn_seconds, leep_s],
            cv_accuracy: g.best_mean(),
            cv_seconds: t.elapsed().as_secs_f64(),
        });
    }
    let picks = (0..SCORES.len())
        .filter_map(|s| pick(&candidates, s))
        .collect();
    let t = Instant::now();
    let baseline = match crate::experiment::baseline_system(
        ds,
        rows,
        crate::Baseline::Auto,
        &tl_features::TfidfParams::default(),
    )? {
        Some(system) => {
            let g = system.search(
                ds,
                &config,
                &options.c,
                rows,
                options.folds,
                options.seed,
                false,
            )?;
            Some(BaselineCandidate {
                name: system.info.name.clone(),
                cv_accuracy: g.best_mean(),
                cv_seconds: t.elapsed().as_secs_f64(),
            })
        }
        None => None,
    };
    Ok(DatasetSelection {
        dataset: ds.name.clone(),
        rows: rows.len(),
        classes: k,
        candidates,
        baseline,
        picks,
    })
}

/// Score `s`'s pick among the candidates it applies to, if at least two.
fn pick(candidates: &[Candidate], s: usize) -> Option<Pick> {
    let have: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.scores[s].is_nan())
        .collect();
    if have.len() < 2 {
        return None;
    }
    let v: Vec<f64> = have.iter().map(|c| c.scores[s]).collect();
    let cv: Vec<f64> = have.iter().map(|c| c.cv_accuracy).collect();
    Some(Pick {
        score: s,
        pick: have[argmax(&v)].backbone.clone(),
        cv_pick: have[argmax(&cv)].backbone.clone(),
        kendall_tau: kendall_tau(&v, &cv),
        spearman: spearman(&v, &cv),
    })
}

/// Each score's agreement with cross-validation over the datasets.
pub fn agreement(selections: &[DatasetSelection]) -> Vec<Agreement> {
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let cv_seconds: f64 = selections
        .iter()
        .flat_map(|d| &d.candidates)
        .map(|c| c.cv_seconds)
        .sum();
    (0..SCORES.len())
        .map(|s| {
            let picks: Vec<&Pick> = selections
                .iter()
                .flat_map(|d| &d.picks)
                .filter(|p| p.score == s)
                .collect();
            Agreement {
                score: s,
                ranked: picks.len(),
                agree: picks.iter().filter(|p| p.pick == p.cv_pick).count(),
                mean_kendall_tau: mean(picks.iter().filter_map(|p| p.kendall_tau).collect()),
                mean_spearman: mean(picks.iter().filter_map(|p| p.spearman).collect()),
                seconds: selections
                    .iter()
                    .flat_map(|d| &d.candidates)
                    .map(|c| c.score_seconds[s])
                    .sum(),
                cv_seconds,
            }
        })
        .collect()
}

impl DatasetSelection {
    /// The sentence that says whether the baseline beats every backbone on this dataset, by
    /// how much over the best one, or which backbones beat it.
    pub fn baseline_sentence(&self) -> Option<String> {
        let b = self.baseline.as_ref()?;
        let best = self
            .candidates
            .iter()
            .max_by(|a, c| a.cv_accuracy.total_cmp(&c.cv_accuracy))?;
        let above: Vec<&str> = self
            .candidates
            .iter()
            .filter(|c| c.cv_accuracy > b.cv_accuracy)
            .map(|c| c.backbone.as_str())
            .collect();
        Some(if above.is_empty() {
            format!(
                "the {} baseline ({:.1}%) beats every backbone, {:+.1} points over the best ({}): no pretrained model here is worth its cost",
                b.name,
                100.0 * b.cv_accuracy,
                100.0 * (b.cv_accuracy - best.cv_accuracy),
                best.backbone
            )
        } else {
            format!(
                "{} of {} backbones beat the {} baseline ({:.1}%): {}",
                above.len(),
                self.candidates.len(),
                b.name,
                100.0 * b.cv_accuracy,
                above.join(", ")
            )
        })
    }
}

/// Index of the largest value (the first on ties).
fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, scores: [f64; 4], cv: f64) -> Candidate {
        Candidate {
            backbone: name.into(),
            scores,
            score_seconds: [1.0, 2.0, 3.0, 4.0],
            cv_accuracy: cv,
            cv_seconds: 10.0,
        }
    }

    #[test]
    fn picks_and_agreement_count_only_backbones_a_score_applies_to() {
        let nan = f64::NAN;
        let d1 = DatasetSelection {
            dataset: "a".into(),
            rows: 10,
            classes: 2,
            candidates: vec![
                candidate("x", [1.0, 1.0, 0.9, nan], 0.9),
                candidate("y", [2.0, 0.5, 0.8, nan], 0.8),
                candidate("z", [0.5, 0.1, 0.7, 0.3], 0.7),
            ],
            baseline: None,
            picks: Vec::new(),
        };
        let picks: Vec<Pick> = (0..4).filter_map(|s| pick(&d1.candidates, s)).collect();
        // LEEP applies to one backbone only: no pick.
        assert_eq!(picks.len(), 3);
        assert_eq!(
            (picks[0].pick.as_str(), picks[0].cv_pick.as_str()),
            ("y", "x")
        );
        assert_eq!(picks[1].pick, "x");
        assert_eq!(picks[1].kendall_tau, Some(1.0));
        let d1 = DatasetSelection { picks, ..d1 };
        let a = agreement(std::slice::from_ref(&d1));
        assert_eq!((a[0].ranked, a[0].agree), (1, 0));
        assert_eq!((a[1].ranked, a[1].agree), (1, 1));
        assert_eq!((a[3].ranked, a[3].agree), (0, 0));
        assert_eq!(a[3].mean_kendall_tau, None);
        assert_eq!(a[2].seconds, 9.0);
        assert_eq!(a[2].cv_seconds, 30.0);

        // The baseline: named when it beats every backbone, else who beats it.
        assert_eq!(d1.baseline_sentence(), None);
        let with = |cv: f64| DatasetSelection {
            baseline: Some(BaselineCandidate {
                name: "tfidf".into(),
                cv_accuracy: cv,
                cv_seconds: 1.0,
            }),
            ..d1.clone()
        };
        assert_eq!(
            with(0.95).baseline_sentence().unwrap(),
            "the tfidf baseline (95.0%) beats every backbone, +5.0 points over the best (x): no pretrained model here is worth its cost"
        );
        assert_eq!(
            with(0.75).baseline_sentence().unwrap(),
            "2 of 3 backbones beat the tfidf baseline (75.0%): x, y"
        );
    }
}
