//! Experiments: a TOML file naming a dataset, backbones, a baseline, heads and a protocol;
//! [`run`] evaluates every (features, head) pair on identical splits and compares.

use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Registry};
use tl_backbone::OnError;
use tl_core::split::{per_class_subsample, stratified_kfold, stratified_sample, stratified_split};
use tl_data::{Dataset, Item};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams, Matrix, Preprocess};

use crate::EvalError;
use crate::finetuned::{
    FewShotUse, FinetuneSpec, Tuner, Tuning, epoch_line, human_seconds, peak_rss_mb,
    reset_peak_rss, search_line,
};
use crate::runner::{
    MAX_REPEATS, Observer, SystemInfo, backbone_features, check_limits, check_name, default_batch,
    default_bootstrap, direction, head_labels, parse_experiment,
};
use tl_core::metrics::{
    Interval, Metrics, accuracy_on, bootstrap, evaluate, macro_f1_on, paired_accuracy_difference,
};
use tl_data::{TableSettings, load_dataset};
use tl_features::{Embedder, Inputs, RawPixels, Store, Tfidf, TfidfParams};

use crate::fits::{FitCache, Key, Outcome};

/// Which features stand for "before transfer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// TF-IDF for text datasets, raw pixels for images.
    #[default]
    Auto,
    /// TF-IDF bag of words.
    Tfidf,
    /// Raw pixels in [0, 1] (images at their own size when all share one, else 32 x 32 RGB).
    RawPixels,
    /// No baseline (backbones are still ranked).
    None,
}

/// How train and test rows are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProtocolTable", into = "ProtocolTable")]
pub enum Protocol {
    /// The dataset's own train/test splits.
    Split {
        /// Name of the training split.
        train: String,
        /// Name of the test split.
        test: String,
    },
    /// Stratified k-fold cross-validation over all rows; metrics on the pooled out-of-fold
    /// predictions.
    Cv {
        /// Number of folds.
        folds: usize,
    },
    /// One stratified train/test split of all rows.
    Holdout {
        /// Fraction of rows held out for testing.
        test_fraction: f64,
    },
}

/// The `[protocol]` table as written. A flat struct (not a tagged enum) so the TOML parser can
/// point at the offending key and line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtocolTable {
    kind: ProtocolKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    folds: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ProtocolKind {
    Split,
    Cv,
    Holdout,
}

impl TryFrom<ProtocolTable> for Protocol {
    type Error = String;

    fn try_from(t: ProtocolTable) -> Result<Protocol, String> {
        let only = |key: &str, present: bool, kind: &str| {
            if present {
                Err(format!(
                    "protocol.{key} does not apply to kind = \"{kind}\""
                ))
            } else {
                Ok(())
            }
        };
        Ok(match t.kind {
            ProtocolKind::Split => {
                only("folds", t.folds.is_some(), "split")?;
                only("test_fraction", t.test_fraction.is_some(), "split")?;
                Protocol::Split {
                    train: t.train.unwrap_or_else(default_train),
                    test: t.test.unwrap_or_else(default_test),
                }
            }
            ProtocolKind::Cv => {
                only("test_fraction", t.test_fraction.is_some(), "cv")?;
                only("train", t.train.is_some(), "cv")?;
                only("test", t.test.is_some(), "cv")?;
                Protocol::Cv {
                    folds: t.folds.unwrap_or_else(default_folds),
                }
            }
            ProtocolKind::Holdout => {
                only("folds", t.folds.is_some(), "holdout")?;
                only("train", t.train.is_some(), "holdout")?;
                only("test", t.test.is_some(), "holdout")?;
                Protocol::Holdout {
                    test_fraction: t.test_fraction.unwrap_or_else(default_test_fraction),
                }
            }
        })
    }
}

impl From<Protocol> for ProtocolTable {
    fn from(p: Protocol) -> ProtocolTable {
        let mut t = ProtocolTable {
            kind: ProtocolKind::Cv,
            folds: None,
            test_fraction: None,
            train: None,
            test: None,
        };
        match p {
            Protocol::Split { train, test } => {
                t.kind = ProtocolKind::Split;
                t.train = Some(train);
                t.test = Some(test);
            }
            Protocol::Cv { folds } => t.folds = Some(folds),
            Protocol::Holdout { test_fraction } => {
                t.kind = ProtocolKind::Holdout;
                t.test_fraction = Some(test_fraction);
            }
        }
        t
    }
}

fn default_train() -> String {
    "train".into()
}
fn default_test() -> String {
    "test".into()
}
fn default_folds() -> usize {
    10
}
fn default_test_fraction() -> f64 {
    0.3
}

/// A learning curve: k labelled examples per class, several seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShot {
    /// Examples per class; 0 means "all training rows".
    pub shots: Vec<usize>,
    /// Seeds per k.
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    /// Fixed stratified test fraction (for cv/holdout; `split` uses the test split).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
}

fn default_repeats() -> usize {
    10
}

/// Stratified subsample sizes, for large datasets (per-class rounding can add or drop a row
/// or two).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subsample {
    /// Training rows to keep (all when absent).
    pub train: Option<usize>,
    /// Test rows to keep (all when absent); with cv/holdout, `train` caps all rows.
    pub test: Option<usize>,
}

/// How head hyperparameters (C, alpha, k) are chosen: by an inner stratified cross-validation
/// on each training part of the protocol (nested: the test rows never take part), on the same
/// grid for every system, baselines included. Extended past an end the best value lies on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SearchTable")]
pub struct Search {
    /// Off: every head keeps the values written in `[[heads]]`.
    #[serde(default = "default_search_enabled")]
    pub enabled: bool,
    /// Inner folds.
    #[serde(default = "default_search_folds")]
    pub folds: usize,
    /// Grid of C (logistic, linear-svm); the heads' default grid when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<Vec<f64>>,
    /// Grid of alpha (ridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<Vec<f64>>,
    /// Grid of k (knn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<Vec<f64>>,
}

/// The `[search]` table as written; checked on the way to [`Search`], so the TOML parser
/// points at the table's line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchTable {
    #[serde(default = "default_search_enabled")]
    enabled: bool,
    #[serde(default = "default_search_folds")]
    folds: usize,
    #[serde(default)]
    c: Option<Vec<f64>>,
    #[serde(default)]
    alpha: Option<Vec<f64>>,
    #[serde(default)]
    k: Option<Vec<f64>>,
}

impl TryFrom<SearchTable> for Search {
    type Error = String;

    fn try_from(t: SearchTable) -> Result<Search, String> {
        let s = Search {
            enabled: t.enabled,
            folds: t.folds,
            c: t.c,
            alpha: t.alpha,
            k: t.k,
        };
        s.check()?;
        Ok(s)
    }
}

fn default_search_enabled() -> bool {
    true
}
fn default_search_folds() -> usize {
    5
}

impl Default for Search {
    fn default() -> Search {
        Search {
            enabled: default_search_enabled(),
            folds: default_search_folds(),
            c: None,
            alpha: None,
            k: None,
        }
    }
}

impl Search {
    /// The grid of `param` (empty: the head's default grid).
    pub fn grid(&self, param: &str) -> &[f64] {
        let g = match param {
            "c" => &self.c,
            "alpha" => &self.alpha,
            "k" => &self.k,
            _ => &None,
        };
        g.as_deref().unwrap_or(&[])
    }

    fn check(&self) -> Result<(), String> {
        if self.folds < 2 {
            return Err(format!(
                "search.folds: needs at least 2, got {}",
                self.folds
            ));
        }
        for (key, grid) in [("c", &self.c), ("alpha", &self.alpha), ("k", &self.k)] {
            if let Some(g) = grid {
                if g.is_empty() {
                    return Err(format!(
                        "search.{key}: give at least one value, or leave it out for the default grid"
                    ));
                }
                if let Some(v) = g.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(format!("search.{key}: values must be positive, got {v}"));
                }
                if key == "k"
                    && let Some(v) = g.iter().find(|v| v.fract() != 0.0)
                {
                    return Err(format!("search.k: values must be whole numbers, got {v}"));
                }
            }
        }
        Ok(())
    }
}

/// The value a nested search chose on one training part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    /// Outer fold (1-based; 1 for split and holdout).
    pub fold: usize,
    /// The hyperparameter (`c`, `alpha`, `k`).
    pub param: String,
    /// Its chosen value.
    pub value: f64,
    /// Mean inner-CV accuracy at that value.
    pub inner_accuracy: f64,
    /// Set when the value is on the end of the searched grid even after extending it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
}

/// The chosen values of one result as a short phrase: `c = 10 (7 of 10 folds), 100 (3)`.
pub fn chosen_phrase(chosen: &[Chosen]) -> Option<String> {
    let first = chosen.first()?;
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for c in chosen {
        match counts.iter_mut().find(|(v, _)| *v == c.value) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.value, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
    let n = chosen.len();
    let parts: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, (v, c))| match (i, n) {
            (_, 1) => format!("{v}"),
            (0, _) => format!("{v} ({c} of {n} folds)"),
            _ => format!("{v} ({c})"),
        })
        .collect();
    Some(format!("{} = {}", first.param, parts.join(", ")))
}

/// An experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name, used for the report folder.
    pub name: String,
    /// A built-in dataset, `sentiment` (all three domains), a table file or an image folder.
    pub dataset: String,
    /// Columns for table files.
    #[serde(default)]
    pub table: TableSettings,
    /// Backbones (built-in model names) to compare.
    #[serde(default)]
    pub backbones: Vec<String>,
    /// The "before transfer" features.
    #[serde(default)]
    pub baseline: Baseline,
    /// TF-IDF settings when the baseline is TF-IDF.
    #[serde(default)]
    pub tfidf: TfidfParams,
    /// Heads to fit on every feature set.
    #[serde(default = "default_heads")]
    pub heads: Vec<HeadSpec>,
    /// Preprocessing for every head.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// How head hyperparameters are chosen (nested CV by default).
    #[serde(default)]
    pub search: Search,
    /// Fine-tuned systems (`[[finetune]]`), trained inside each training part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finetune: Vec<FinetuneSpec>,
    /// How rows are split.
    pub protocol: Protocol,
    /// Optional few-shot learning curve (first head only).
    #[serde(default)]
    pub few_shot: Option<FewShot>,
    /// Optional stratified subsample.
    #[serde(default)]
    pub subsample: Option<Subsample>,
    /// Seed for splits, subsamples, bootstrap and heads.
    #[serde(default)]
    pub seed: u64,
    /// Bootstrap resamples for confidence intervals.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// Items per backbone batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_heads() -> Vec<HeadSpec> {
    vec![HeadSpec::Logistic(LogisticParams::default())]
}
impl Experiment {
    /// Parses an experiment; errors name the file, the line and the key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Experiment, EvalError> {
        parse_experiment(text, origin, |e: &Experiment| {
            e.check().map_err(|m| table_line(text, m))
        })
    }

    /// Reads and parses an experiment file.
    pub fn load(path: &Path) -> Result<Experiment, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Experiment::from_toml(&text, path)
    }

    /// Validates values serde cannot.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.heads.is_empty() {
            return Err("heads: at least one head is needed".into());
        }
        for h in &self.heads {
            h.check().map_err(|e| format!("heads: {e}"))?;
        }
        self.preprocess
            .check()
            .map_err(|e| format!("preprocess: {e}"))?;
        self.search.check()?;
        if self.search.enabled {
            // Two heads that differ only in the searched value would be the same system.
            for (i, h) in self.heads.iter().enumerate() {
                let Some((param, _)) = h.main_param() else {
                    continue;
                };
                if let Some(other) = self.heads[..i]
                    .iter()
                    .find(|o| o.with_main_param(0.0) == h.with_main_param(0.0))
                {
                    return Err(format!(
                        "heads: {} and {} differ only in {param}, which the search chooses; set search.enabled = false to compare fixed values",
                        other.label(),
                        h.label()
                    ));
                }
            }
        }
        match &self.protocol {
            Protocol::Cv { folds } if *folds < 2 => {
                return Err(format!("protocol.folds: needs at least 2, got {folds}"));
            }
            Protocol::Holdout { test_fraction }
                if !(*test_fraction > 0.0 && *test_fraction < 1.0) =>
            {
                return Err(format!(
                    "protocol.test_fraction: must be in (0, 1), got {test_fraction}"
                ));
            }
            _ => {}
        }
        if let Some(f) = &self.few_shot {
            if f.shots.is_empty() || f.repeats == 0 {
                return Err("few_shot: needs at least one shot value and one repeat".into());
            }
            if f.repeats > MAX_REPEATS {
                return Err(format!(
                    "few_shot.repeats: at most {MAX_REPEATS}, got {}",
                    f.repeats
                ));
            }
            if !(f.test_fraction > 0.0 && f.test_fraction < 1.0) {
                return Err(format!(
                    "few_shot.test_fraction: must be in (0, 1), got {}",
                    f.test_fraction
                ));
            }
        }
        for (i, b) in self.backbones.iter().enumerate() {
            if self.backbones[..i].contains(b) {
                return Err(format!(
                    "backbones: {b:?} is listed twice (it would be ranked against itself)"
                ));
            }
        }
        if self.tfidf.max_features == Some(0) {
            return Err("tfidf.max_features: 0 keeps no term; leave it out for all terms".into());
        }
        if let Some(sub) = &self.subsample {
            for (key, v) in [("train", sub.train), ("test", sub.test)] {
                if v == Some(0) {
                    return Err(format!(
                        "subsample.{key}: 0 rows keeps nothing; leave it out to keep all rows"
                    ));
                }
            }
            if sub.test.is_some() && !matches!(self.protocol, Protocol::Split { .. }) {
                return Err(
                    "subsample.test applies to protocol kind = \"split\"; with cv or holdout, subsample.train caps all rows".into(),
                );
            }
        }
        for (i, f) in self.finetune.iter().enumerate() {
            // `[[finetune]] #n` is turned into the table's line by `from_toml`.
            let at = format!("[[finetune]] #{}", i + 1);
            f.check().map_err(|e| format!("{at}: {e}"))?;
            if !self.backbones.contains(&f.backbone) {
                return Err(format!(
                    "{at}: backbone {} must also be in backbones: its frozen features are the level fine-tuning is compared with",
                    f.backbone
                ));
            }
            let label = f.label();
            if self.backbones.contains(&label) || ["tfidf", "raw-pixels"].contains(&label.as_str())
            {
                return Err(format!("{at}: name {label:?} is already a system's name"));
            }
            if f.few_shot == FewShotUse::Only && self.few_shot.is_none() {
                return Err(format!(
                    "{at}: {label} has few_shot = \"only\" but the experiment has no [few_shot] table"
                ));
            }
            if self.finetune[..i].iter().any(|o| o.label() == label) {
                return Err(format!(
                    "{at}: two tables are both named {label:?}; give each a name = \"...\""
                ));
            }
        }
        if self.backbones.is_empty() && self.baseline == Baseline::None {
            return Err("nothing to evaluate: no backbones and baseline = \"none\"".into());
        }
        check_limits(self.bootstrap, self.batch_size)
    }
}

/// Prefixes a check's message about the n-th `[[finetune]]` table (`[[finetune]] #n: ...`)
/// with that table's line in `text`, as the TOML parser's own messages are.
fn table_line(text: &str, message: String) -> String {
    let Some(rest) = message.strip_prefix("[[finetune]] #") else {
        return message;
    };
    let n: usize = rest
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[finetune]]"))
        .nth(n.saturating_sub(1))
        .map_or(message.clone(), |(line, _)| {
            format!("line {}, {message}", line + 1)
        })
}

/// Features of one system for the rows an experiment uses.
enum Source {
    /// Precomputed rows (backbones, raw pixels), indexed by dataset row.
    Fixed {
        rows: Vec<Option<usize>>,
        x: Array2<f32>,
    },
    /// Fitted on each training part.
    Tfidf(TfidfParams),
}

/// One feature extractor under comparison.
pub(crate) struct System {
    pub(crate) info: SystemInfo,
    source: Source,
}

impl System {
    /// Tunes `config`'s main hyperparameter over `values` (empty: its default grid) by
    /// stratified `folds`-fold CV on dataset rows `rows` alone, the features of each fold's
    /// parts built by [`System::matrices`] (a TF-IDF vocabulary refitted per fold).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn search(
        &self,
        ds: &Dataset,
        config: &HeadConfig,
        values: &[f64],
        rows: &[usize],
        folds: usize,
        seed: u64,
        few_shot: bool,
    ) -> Result<tl_heads::GridSearch, EvalError> {
        let y: Vec<usize> = rows.iter().map(|&i| ds.labels[i]).collect();
        let pick = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&i| rows[i]).collect() };
        tl_heads::grid_search_with(
            config,
            values,
            &y,
            &ds.label_names,
            folds,
            seed,
            |tr: &[usize], te: &[usize]| self.matrices(ds, &pick(tr), &pick(te), few_shot),
        )
    }

    /// Train and test matrices. `few_shot`: a TF-IDF vocabulary may be empty (a handful of
    /// documents share no term often enough), and the baseline can then only guess; on a
    /// protocol's training part an empty vocabulary is a setting error, not a baseline.
    pub(crate) fn matrices(
        &self,
        ds: &Dataset,
        train: &[usize],
        test: &[usize],
        few_shot: bool,
    ) -> Result<(Matrix, Matrix), EvalError> {
        match &self.source {
            Source::Fixed { rows, x } => {
                let pick = |idx: &[usize]| {
                    let r: Vec<usize> = idx
                        .iter()
                        .map(|&i| rows[i].expect("row computed"))
                        .collect();
                    Matrix::Dense(x.select(Axis(0), &r))
                };
                Ok((pick(train), pick(test)))
            }
            Source::Tfidf(params) => {
                let texts = |idx: &[usize]| -> Vec<&str> {
                    idx.iter()
                        .map(|&i| match &ds.items[i] {
                            Item::Text(t) => t.as_str(),
                            _ => "",
                        })
                        .collect()
                };
                let tr = texts(train);
                let v = Tfidf::fit(&tr, params);
                if v.dim() == 0 {
                    if !few_shot {
                        return Err(EvalError::Config(format!(
                            "tfidf: no term is in at least min_df = {} of the {} training documents, so the baseline would be a constant; lower tfidf.min_df",
                            params.min_df,
                            train.len()
                        )));
                    }
                    // No term reaches min_df in so few documents: the baseline can only guess,
                    // which a constant feature expresses (the head falls back to the prior).
                    return Ok((
                        Matrix::Dense(Array2::zeros((train.len(), 1))),
                        Matrix::Dense(Array2::zeros((test.len(), 1))),
                    ));
                }
                // Sparse: the whole vocabulary of a large corpus would not fit dense.
                Ok((
                    Matrix::Sparse(v.transform_sparse(&tr)),
                    Matrix::Sparse(v.transform_sparse(&texts(test))),
                ))
            }
        }
    }
}

/// Result of one (system, head) under the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Feature system.
    pub system: String,
    /// Head kind.
    pub head: String,
    /// Head settings (None: a fine-tuned network's own linear layer, `softmax`).
    pub head_spec: Option<HeadSpec>,
    /// All metrics on the test rows (pooled out-of-fold for CV).
    pub metrics: Metrics,
    /// Accuracy with its bootstrap interval.
    pub accuracy: Interval,
    /// Macro-F1 with its bootstrap interval.
    pub macro_f1: Interval,
    /// Seconds fitting and predicting (all folds).
    pub fit_seconds: f64,
    /// Fits that finished with a problem (a solver at its iteration limit), per fold.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The head hyperparameter the nested search chose on each training part (empty when
    /// the search is off or the head has none).
    #[serde(default)]
    pub chosen: Vec<Chosen>,
    /// A fine-tuned system's training: hyperparameters, per-fold epoch logs, time, memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    /// Predicted label per test row, in `RunReport::test_rows` order.
    #[serde(skip)]
    pub predictions: Vec<usize>,
}

/// A system against the level below it, same rows: a backbone against the baseline
/// (`transfer`), a fine-tuned backbone against its frozen features or the baseline
/// (`fine-tuning`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The system compared.
    pub system: String,
    /// What it is compared with.
    pub baseline: String,
    /// The technique judged: `transfer`, `fine-tuning` or `search` (a searched fine-tuned
    /// system against the same one at fixed settings).
    #[serde(default = "transfer")]
    pub what: String,
    /// Head.
    pub head: String,
    /// Accuracy difference in points with its paired-bootstrap interval.
    pub difference_points: Interval,
    /// Plain-language verdict.
    pub verdict: String,
    /// `search`: the searched system's time over the fixed one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ratio: Option<f64>,
}

fn transfer() -> String {
    "transfer".into()
}

/// The three levels of one fine-tuned system on identical rows: no pretraining (the
/// baseline), frozen features, the fine-tuned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    /// The fine-tuned system.
    pub tuned: String,
    /// Its backbone's frozen features (with the first head).
    pub frozen: String,
    /// The baseline, when the experiment has one.
    pub baseline: Option<String>,
    /// Fine-tuned minus frozen, in points, paired interval.
    pub over_frozen: Interval,
    /// Frozen minus baseline, in points, paired interval.
    pub frozen_over_baseline: Option<Interval>,
    /// Both in one sentence.
    pub sentence: String,
}

/// The ranking's leader against another backbone, on identical rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairwise {
    /// The leader (first in the ranking).
    pub system: String,
    /// The backbone it is compared with.
    pub other: String,
    /// Head.
    pub head: String,
    /// Accuracy difference (leader minus other) in points with its paired-bootstrap interval.
    pub difference_points: Interval,
}

/// The ranking as a sentence that claims no more than the data shows: a backbone is `best`
/// only when its paired interval against every other backbone lies above 0; otherwise the
/// leader is named as tied with those whose interval includes 0. None for fewer than two
/// backbones.
pub fn ranking_sentence(ranking: &[String], pairwise: &[Pairwise]) -> Option<String> {
    let leader = ranking.first().filter(|_| ranking.len() > 1)?;
    let order = ranking.join(" > ");
    let detail: Vec<String> = pairwise
        .iter()
        .map(|p| format!("{} over {}", points(&p.difference_points), p.other))
        .collect();
    let tied: Vec<&str> = pairwise
        .iter()
        .filter(|p| direction(&p.difference_points) != "helps")
        .map(|p| p.other.as_str())
        .collect();
    Some(if pairwise.is_empty() {
        format!("{order} (no pairwise intervals in this report: an order, not a verdict)")
    } else if tied.is_empty() {
        format!("{order} (best: {leader}, {})", detail.join("; "))
    } else {
        format!(
            "{order} (no clear best: {leader} is tied with {}; {})",
            tied.join(", "),
            detail.join("; ")
        )
    })
}

/// A difference in points with its interval, as every verdict and ranking line writes it.
fn points(d: &Interval) -> String {
    format!("{:+.1} points [{:+.1}, {:+.1}]", d.estimate, d.low, d.high)
}

/// A fraction's interval in points.
fn in_points(d: Interval) -> Interval {
    Interval {
        estimate: 100.0 * d.estimate,
        low: 100.0 * d.low,
        high: 100.0 * d.high,
    }
}

/// One point of a learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotPoint {
    /// Feature system.
    pub system: String,
    /// Examples per class (0 = all).
    pub shots: usize,
    /// Mean test accuracy over seeds.
    pub mean: f64,
    /// Standard deviation over seeds.
    pub std: f64,
    /// Accuracy per seed.
    pub runs: Vec<f64>,
}

/// A fine-tuned system against its frozen backbone (first head) at one point of the few-shot
/// curve: the same draws of training rows, the same test rows; the paired bootstrap runs
/// over every (draw, test row), so the interval is of the mean over these draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotComparison {
    /// The fine-tuned system.
    pub system: String,
    /// Its backbone, frozen.
    pub frozen: String,
    /// Examples per class (0 = all).
    pub shots: usize,
    /// Draws compared.
    pub draws: usize,
    /// Mean accuracy difference in points, paired interval.
    pub difference_points: Interval,
    /// Plain-language verdict.
    pub verdict: String,
}

/// Everything a run produced (the JSON report is this, versioned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Report schema version.
    pub schema_version: u32,
    /// Toolkit version.
    pub tool_version: String,
    /// The experiment as run.
    pub experiment: Experiment,
    /// Dataset name.
    pub dataset: String,
    /// Label names.
    pub label_names: Vec<String>,
    /// Training rows (protocol `split`/`holdout`) or all rows (`cv`).
    pub train_rows: usize,
    /// Rows predicted.
    pub test_rows: usize,
    /// Feature systems.
    pub systems: Vec<SystemInfo>,
    /// One per (system, head).
    pub results: Vec<RunResult>,
    /// Backbone vs baseline.
    pub comparisons: Vec<Comparison>,
    /// Backbone names best first by accuracy with the first head.
    pub ranking: Vec<String>,
    /// The leader of `ranking` against each other backbone (first head, paired bootstrap on
    /// the same rows): the evidence behind [`ranking_sentence`].
    #[serde(default)]
    pub pairwise: Vec<Pairwise>,
    /// Learning curve points.
    pub few_shot: Vec<FewShotPoint>,
    /// Fine-tuned systems against their frozen backbone at each point of the few-shot curve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub few_shot_comparisons: Vec<FewShotComparison>,
    /// Per fine-tuned system: baseline, frozen and fine-tuned on the same rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<Levels>,
    /// Wall time of the run.
    pub seconds: f64,
}

/// Training and test rows of one fold.
type TrainTest = (Vec<usize>, Vec<usize>);
/// Predictions, probabilities and fit warnings of one fit.
type Fitted = (Vec<usize>, Array2<f64>, Vec<String>);
/// A fold's test rows, predictions, probabilities and fit warnings.
type FoldOutput = (
    Vec<usize>,
    Vec<usize>,
    Array2<f64>,
    Vec<String>,
    Option<Chosen>,
);

/// Version of [`RunReport`]'s JSON (2: fine-tuned systems; `head_spec` is null for a
/// network's own layer).
pub const REPORT_SCHEMA_VERSION: u32 = 2;

fn rows_of(ds: &Dataset, exp: &Experiment) -> Result<(Vec<usize>, Vec<usize>), EvalError> {
    let seed = exp.seed;
    let take = |idx: Vec<usize>, n: Option<usize>, salt: u64| -> Result<Vec<usize>, EvalError> {
        match n {
            Some(n) => Ok(stratified_sample(&ds.labels, &idx, n, seed ^ salt)?),
            None => Ok(idx),
        }
    };
    let sub = exp.subsample.unwrap_or(Subsample {
        train: None,
        test: None,
    });
    Ok(match &exp.protocol {
        Protocol::Split { train, test } => (
            take(ds.split(train)?.to_vec(), sub.train, 1)?,
            take(ds.split(test)?.to_vec(), sub.test, 2)?,
        ),
        Protocol::Cv { .. } | Protocol::Holdout { .. } => {
            (take((0..ds.len()).collect(), sub.train, 1)?, Vec::new())
        }
    })
}

/// The raw-pixels baseline's features of rows `used`: pixels in [0, 1], as they are when
/// every image has one size, else resized to 32 x 32 RGB.
pub fn raw_pixels(ds: &Dataset, used: &[usize]) -> Result<Array2<f32>, EvalError> {
    let items = used.iter().map(|&i| &ds.items[i]);
    if matches!(used.first().map(|&i| &ds.items[i]), Some(Item::Text(_))) {
        return Err(EvalError::Config(
            "raw-pixels baseline on a text dataset; use baseline = \"tfidf\"".into(),
        ));
    }
    let encoder = RawPixels::for_items(items.clone());
    let out = encoder
        .embed(&Inputs::from_items(items)?, OnError::Fail)
        .map_err(|e| match e {
            // Name the dataset row, not the position among the rows used.
            tl_features::FeatureError::Options(m) => EvalError::Config(renumber(&m, used)),
            e => e.into(),
        })?;
    Ok(out.features)
}

/// Rewrites a leading `item N:` (a position in `used`) as `row R:` (the dataset row).
fn renumber(message: &str, used: &[usize]) -> String {
    message
        .strip_prefix("item ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(n, rest)| Some((used.get(n.parse::<usize>().ok()?)?, rest)))
        .map_or_else(
            || message.to_string(),
            |(row, rest)| format!("row {row}:{rest}"),
        )
}

/// Each dataset row's position among `used` (None for rows not used), of `n` rows.
fn positions(n: usize, used: &[usize]) -> Vec<Option<usize>> {
    let mut rows = vec![None; n];
    for (r, &i) in used.iter().enumerate() {
        rows[i] = Some(r);
    }
    rows
}

/// The "before transfer" system of `baseline` on rows `used` (`Auto`: TF-IDF for text, raw
/// pixels for images), or None for `Baseline::None`.
pub(crate) fn baseline_system(
    ds: &Dataset,
    used: &[usize],
    baseline: Baseline,
    tfidf: &TfidfParams,
) -> Result<Option<System>, EvalError> {
    let is_text = matches!(ds.items.first(), Some(Item::Text(_)));
    let rows = positions(ds.len(), used);
    let baseline = match baseline {
        Baseline::Auto if is_text => Baseline::Tfidf,
        Baseline::Auto => Baseline::RawPixels,
        b => b,
    };
    match baseline {
        Baseline::Tfidf => {
            if !is_text {
                return Err(EvalError::Config(format!(
                    "baseline tfidf needs text, but {} holds images",
                    ds.name
                )));
            }
            return Ok(Some(System {
                info: SystemInfo {
                    name: "tfidf".into(),
                    kind: "baseline".into(),
                    fingerprint: None,
                    dim: 0,
                    cache_hits: 0,
                    computed: 0,
                    seconds: 0.0,
                    peak_rss_mb: None,
                },
                source: Source::Tfidf(tfidf.clone()),
            }));
        }
        Baseline::RawPixels => {
            let t = Instant::now();
            let x = raw_pixels(ds, used)?;
            return Ok(Some(System {
                info: SystemInfo {
                    name: "raw-pixels".into(),
                    kind: "baseline".into(),
                    fingerprint: None,
                    dim: x.ncols(),
                    cache_hits: 0,
                    computed: used.len(),
                    seconds: t.elapsed().as_secs_f64(),
                    peak_rss_mb: None,
                },
                source: Source::Fixed { rows, x },
            }));
        }
        Baseline::None | Baseline::Auto => {}
    }
    Ok(None)
}

fn build_systems(
    ds: &Dataset,
    used: &[usize],
    exp: &Experiment,
    registry: &Registry,
    cache: &Cache,
    progress: bool,
    obs: &dyn Observer,
) -> Result<Vec<System>, EvalError> {
    let mut systems = Vec::new();
    let rows = positions(ds.len(), used);
    systems.extend(baseline_system(ds, used, exp.baseline, &exp.tfidf)?);
    for name in &exp.backbones {
        let f = backbone_features(
            name,
            ds,
            used,
            registry,
            cache,
            exp.batch_size,
            progress,
            obs,
        )?;
        systems.push(System {
            info: f.info,
            source: Source::Fixed {
                rows: rows.clone(),
                x: f.features,
            },
        });
    }
    Ok(systems)
}

/// The head config `spec` is fitted with on `train`: as written, or with its main
/// hyperparameter chosen by `search`'s inner cross-validation, which sees `train` rows only.
fn choose(
    system: &System,
    ds: &Dataset,
    spec: &HeadSpec,
    exp: &Experiment,
    train: &[usize],
    few_shot: bool,
    search: Option<&Search>,
) -> Result<(HeadConfig, Option<Chosen>), EvalError> {
    let config = HeadConfig {
        head: spec.clone(),
        preprocess: exp.preprocess.clone(),
        seed: exp.seed,
        ..HeadConfig::new(spec.clone())
    };
    let (Some(search), Some((param, _))) = (search, spec.main_param()) else {
        return Ok((config, None));
    };
    let g = system.search(
        ds,
        &config,
        search.grid(param),
        train,
        search.folds,
        exp.seed,
        few_shot,
    )?;
    let chosen = Chosen {
        fold: 1,
        param: param.to_string(),
        value: g.best_value,
        inner_accuracy: g.best_mean(),
        edge: g.edge,
    };
    Ok((g.best, Some(chosen)))
}

/// The key of one [`fit_predict`]: everything its outcome depends on (see `fits.rs`).
#[allow(clippy::too_many_arguments)]
fn fit_key(
    system: &System,
    ds: &Dataset,
    spec: &HeadSpec,
    exp: &Experiment,
    train: &[usize],
    test: &[usize],
    few_shot: bool,
    search: Option<&Search>,
) -> Key {
    let json = |v: serde_json::Result<String>| v.unwrap_or_default();
    let mut key = Key::new();
    match &system.source {
        Source::Fixed { rows, x } => {
            key.part(b"fixed");
            for idx in [train, test] {
                for &i in idx {
                    let row = x.row(rows[i].expect("row computed"));
                    match row.as_slice() {
                        Some(v) => key.floats(v),
                        None => key.floats(&row.to_vec()),
                    };
                }
                key.part(b"|");
            }
        }
        Source::Tfidf(params) => {
            key.part(b"tfidf")
                .part(json(serde_json::to_string(params)).as_bytes());
            for idx in [train, test] {
                for &i in idx {
                    key.part(match &ds.items[i] {
                        Item::Text(t) => t.as_bytes(),
                        _ => b"",
                    });
                }
                key.part(b"|");
            }
        }
    }
    let labels: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
    key.indices(&labels);
    for name in &ds.label_names {
        key.part(name.as_bytes());
    }
    key.part(json(serde_json::to_string(spec)).as_bytes())
        .part(json(serde_json::to_string(&exp.preprocess)).as_bytes())
        .part(&exp.seed.to_le_bytes())
        .part(json(serde_json::to_string(&search)).as_bytes())
        .part(&[u8::from(few_shot)]);
    key
}

/// Fits `spec` on `train` rows of `system` and predicts `test` rows. With `search`, the
/// head's main hyperparameter is first chosen by inner cross-validation on `train` alone.
/// An outcome `fits` remembers from an earlier run is returned without fitting.
#[allow(clippy::too_many_arguments)]
fn fit_predict(
    system: &System,
    ds: &Dataset,
    spec: &HeadSpec,
    exp: &Experiment,
    train: &[usize],
    test: &[usize],
    few_shot: bool,
    search: Option<&Search>,
    fits: &FitCache,
) -> Result<(Fitted, Option<Chosen>), EvalError> {
    let key = fit_key(system, ds, spec, exp, train, test, few_shot, search);
    if let Some(o) = fits.get(&key, test.len(), ds.label_names.len()) {
        let (predictions, proba, warnings, chosen) = o.into_parts();
        return Ok(((predictions, proba, warnings), chosen));
    }
    let (config, chosen) = choose(system, ds, spec, exp, train, few_shot, search)?;
    let ytr: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
    let (xtr, xte) = system.matrices(ds, train, test, few_shot)?;
    let model = config.fit(
        xtr.view(),
        &ytr,
        &ds.label_names,
        system.info.fingerprint.as_deref(),
    )?;
    let predictions = model.predict(xte.view())?;
    let proba = model.predict_proba(xte.view())?;
    fits.put(
        &key,
        &Outcome::new(
            predictions.clone(),
            &proba,
            model.warnings.clone(),
            chosen.clone(),
        ),
    );
    Ok(((predictions, proba, model.warnings), chosen))
}

/// The verdict line of a paired comparison (`d` in points): `what` helps when the whole
/// interval is above 0, hurts when below, else no clear difference. `what` is the
/// technique compared: `transfer` (feature sets: the system is called `<name> features`),
/// `fine-tuning` or `transfer learning` (whole models, named as given).
pub fn verdict(system: &str, baseline: &str, d: &Interval, what: &str) -> String {
    let points = points(d);
    // `transfer` compares feature sets; `fine-tuning` and `transfer learning` whole models.
    let system = if what == "transfer" {
        format!("{system} features")
    } else {
        system.to_string()
    };
    match direction(d) {
        "helps" => format!("{system}: {points} over {baseline}: {what} helps"),
        "hurts" => format!("{system}: {points} against {baseline}: {what} hurts here"),
        _ => format!("{system}: {points} vs {baseline}: no clear difference"),
    }
}

/// Runs an experiment end to end: loads (fetching if needed) the dataset and backbones,
/// extracts or loads cached features, evaluates every head on every feature system under the
/// protocol, compares backbones with the baseline, and runs the few-shot curve.
pub fn run(
    exp: &Experiment,
    registry: &Registry,
    cache: &Cache,
    progress: bool,
    obs: &dyn Observer,
) -> Result<RunReport, EvalError> {
    let start = Instant::now();
    // A struct built in code has not been through `from_toml`.
    exp.check().map_err(EvalError::Config)?;
    let ds = load_dataset(registry, cache, &exp.dataset, &exp.table)?;
    let (train_pool, test_split) = rows_of(&ds, exp)?;
    let mut used: Vec<usize> = train_pool.iter().chain(&test_split).copied().collect();
    used.sort_unstable();
    used.dedup();
    obs.note(&format!(
        "dataset   {} ({}): {} rows used, {} classes",
        ds.name,
        tl_data::describe_source(&exp.dataset),
        used.len(),
        ds.n_classes()
    ));
    // Test rows and, per fold, train/test rows. The same folds for every system and head.
    let (folds, test_rows): (Vec<TrainTest>, Vec<usize>) = match &exp.protocol {
        Protocol::Split { .. } => (
            vec![(train_pool.clone(), test_split.clone())],
            test_split.clone(),
        ),
        Protocol::Holdout { test_fraction } => {
            let (tr, te) = stratified_split(&ds.labels, &train_pool, *test_fraction, exp.seed)?;
            (vec![(tr, te.clone())], te)
        }
        Protocol::Cv { folds } => {
            for (label, n) in tl_core::split::rare_classes(&ds.labels, &train_pool, *folds) {
                tracing::warn!(
                    "class {:?} has {n} examples, fewer than {folds} folds: some test folds lack it",
                    ds.label_names.get(label).map_or("?", String::as_str)
                );
            }
            let f = stratified_kfold(&ds.labels, &train_pool, *folds, exp.seed)?;
            let mut all: Vec<usize> = f.iter().flat_map(|x| x.test.clone()).collect();
            all.sort_unstable();
            (f.into_iter().map(|x| (x.train, x.test)).collect(), all)
        }
    };
    let pos: std::collections::HashMap<usize, usize> =
        test_rows.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let truth: Vec<usize> = test_rows.iter().map(|&i| ds.labels[i]).collect();
    let k = ds.label_names.len();

    let mut tuners = open_tuners(&ds, &used, exp, &folds, &test_rows, registry, cache, obs)?;
    tuners.iter_mut().for_each(|(t, _)| t.progress = progress);
    let systems = build_systems(&ds, &used, exp, registry, cache, progress, obs)?;
    let fits = FitCache::in_store(Store::from_cache(cache).root());
    let score = |pred: &[usize], proba: &Array2<f64>| {
        let metrics = evaluate(
            &truth,
            pred,
            proba.as_standard_layout().as_slice(),
            &ds.label_names,
        );
        let accuracy = bootstrap(truth.len(), exp.bootstrap, exp.seed, |rows| {
            accuracy_on(&truth, pred, rows)
        });
        let macro_f1 = bootstrap(truth.len(), exp.bootstrap, exp.seed, |rows| {
            macro_f1_on(&truth, pred, rows, k)
        });
        (metrics, accuracy, macro_f1)
    };
    let fold_prefix = |fold: usize| {
        if folds.len() > 1 {
            format!("fold {}: ", fold + 1)
        } else {
            String::new()
        }
    };
    let head_names = head_labels(&exp.heads);
    let mut results = Vec::new();
    for system in &systems {
        for (spec, head_name) in exp.heads.iter().zip(&head_names) {
            let t = Instant::now();
            let outs: Vec<Result<FoldOutput, EvalError>> = folds
                .par_iter()
                .map(|(tr, te)| {
                    let search = exp.search.enabled.then_some(&exp.search);
                    let ((p, pr, w), c) =
                        fit_predict(system, &ds, spec, exp, tr, te, false, search, &fits)?;
                    Ok((te.clone(), p, pr, w, c))
                })
                .collect();
            let mut pred = vec![0usize; test_rows.len()];
            let mut proba = Array2::<f64>::zeros((test_rows.len(), k));
            let mut warnings = Vec::new();
            let mut chosen = Vec::new();
            for (fold, out) in outs.into_iter().enumerate() {
                let (te, p, pr, w, c) = out?;
                let part = fold_prefix(fold);
                warnings.extend(w.into_iter().map(|w| format!("{part}{w}")));
                if let Some(c) = c {
                    warnings.extend(c.edge.as_ref().map(|e| format!("{part}{e}")));
                    chosen.push(Chosen {
                        fold: fold + 1,
                        ..c
                    });
                }
                for (r, &i) in te.iter().enumerate() {
                    pred[pos[&i]] = p[r];
                    proba.row_mut(pos[&i]).assign(&pr.row(r));
                }
            }
            let (metrics, accuracy, macro_f1) = score(&pred, &proba);
            let result = RunResult {
                system: system.info.name.clone(),
                head: head_name.clone(),
                head_spec: Some(spec.clone()),
                metrics,
                accuracy,
                macro_f1,
                fit_seconds: t.elapsed().as_secs_f64(),
                warnings,
                chosen,
                tuning: None,
                predictions: pred,
            };
            note_result(&result, folds.len(), obs);
            results.push(result);
        }
    }

    // Fine-tuned systems: one model trained per training part, on the same folds. Folds run
    // one after another, each on every core.
    let search = exp.search.enabled.then_some(&exp.search);
    let mut systems_info: Vec<SystemInfo> = systems.iter().map(|s| s.info.clone()).collect();
    let protocol_tuners = || {
        tuners
            .iter()
            .filter(|(t, _)| t.spec.few_shot != FewShotUse::Only)
    };
    for (tuner, estimated_seconds) in protocol_tuners() {
        let name = &tuner.info.name;
        let t = Instant::now();
        reset_peak_rss();
        let (pred, proba, warnings, chosen, trained) =
            tuned_folds(tuner, &ds, &folds, &test_rows, search, obs)?;
        let (metrics, accuracy, macro_f1) = score(&pred, &proba);
        let (head, head_spec) = tuner.head();
        let seconds = t.elapsed().as_secs_f64();
        let result = RunResult {
            system: name.clone(),
            head,
            head_spec,
            metrics,
            accuracy,
            macro_f1,
            fit_seconds: seconds,
            warnings,
            chosen,
            tuning: Some(Tuning {
                backbone: tuner.spec.backbone.clone(),
                strategy: tuner.spec.strategy.to_string(),
                params: tuner.params_json(),
                folds: trained,
                estimated_seconds: *estimated_seconds,
                peak_rss_mb: peak_rss_mb(),
            }),
            predictions: pred,
        };
        note_result(&result, folds.len(), obs);
        obs.note(&format!(
            "time      {name}: {} (estimated {})",
            human_seconds(seconds),
            human_seconds(*estimated_seconds)
        ));
        systems_info.push(SystemInfo {
            computed: used.len(),
            seconds,
            peak_rss_mb: result.tuning.as_ref().and_then(|t| t.peak_rss_mb),
            ..tuner.info.clone()
        });
        results.push(result);
    }

    // Every comparison (backbone vs baseline, ranking leader vs the others) is one paired
    // bootstrap over the same test rows, in points.
    // A fine-tuned system has one result (its own head); a frozen one, one per head.
    let difference = |a: &str, b: &str, spec: &HeadSpec| {
        let predictions = |name: &str| {
            &results
                .iter()
                .find(|r| {
                    r.system == name && (r.tuning.is_some() || r.head_spec.as_ref() == Some(spec))
                })
                .expect("every pair ran")
                .predictions
        };
        in_points(paired_accuracy_difference(
            &truth,
            predictions(a),
            predictions(b),
            exp.bootstrap,
            exp.seed,
        ))
    };
    let mut comparisons = Vec::new();
    if let Some(base) = systems.iter().find(|s| s.info.kind == "baseline") {
        for s in systems.iter().filter(|s| s.info.kind == "backbone") {
            for (spec, head_name) in exp.heads.iter().zip(&head_names) {
                let d = difference(&s.info.name, &base.info.name, spec);
                let v = verdict(&s.info.name, &base.info.name, &d, "transfer");
                obs.note(&format!("verdict   {v} ({head_name})"));
                comparisons.push(Comparison {
                    system: s.info.name.clone(),
                    baseline: base.info.name.clone(),
                    what: transfer(),
                    head: head_name.clone(),
                    difference_points: d,
                    verdict: v,
                    time_ratio: None,
                });
            }
        }
    }
    // Fine-tuning against its own frozen features (first head) and against the baseline:
    // the three levels on the same rows.
    let base = systems.iter().find(|s| s.info.kind == "baseline");
    let mut levels = Vec::new();
    for (tuner, _) in protocol_tuners() {
        let (tuned, frozen) = (&tuner.info.name, &tuner.spec.backbone);
        let over_frozen = difference(tuned, frozen, &exp.heads[0]);
        let v = verdict(
            tuned,
            &format!("frozen {frozen}"),
            &over_frozen,
            "fine-tuning",
        );
        obs.note(&format!("verdict   {v} (frozen: {})", head_names[0]));
        comparisons.push(Comparison {
            system: tuned.clone(),
            baseline: frozen.clone(),
            what: "fine-tuning".into(),
            head: head_names[0].clone(),
            difference_points: over_frozen,
            verdict: v,
            time_ratio: None,
        });
        let frozen_over_baseline = base.map(|b| difference(frozen, &b.info.name, &exp.heads[0]));
        if let Some(b) = base {
            let d = difference(tuned, &b.info.name, &exp.heads[0]);
            let v = verdict(tuned, &b.info.name, &d, "transfer learning");
            obs.note(&format!("verdict   {v}"));
            comparisons.push(Comparison {
                system: tuned.clone(),
                baseline: b.info.name.clone(),
                what: "fine-tuning".into(),
                head: head_names[0].clone(),
                difference_points: d,
                verdict: v,
                time_ratio: None,
            });
        }
        let sentence = levels_sentence(
            tuned,
            &over_frozen,
            base.map(|b| b.info.name.as_str())
                .zip(frozen_over_baseline.as_ref()),
        );
        obs.note(&format!("levels    {sentence}"));
        // A searched system against the same backbone and strategy at fixed settings,
        // when the file has both: did the search pay for its time?
        let fixed = protocol_tuners().map(|(t, _)| t).find(|t| {
            tuner.spec.search.is_some()
                && t.spec.search.is_none()
                && t.spec.backbone == tuner.spec.backbone
                && t.spec.strategy == tuner.spec.strategy
        });
        if let Some(fixed) = fixed {
            let d = difference(tuned, &fixed.info.name, &exp.heads[0]);
            let secs = |name: &str| {
                results
                    .iter()
                    .find(|r| r.system == name)
                    .map_or(f64::NAN, |r| r.fit_seconds)
            };
            let ratio = secs(tuned) / secs(&fixed.info.name);
            let v = format!(
                "{} (the search took {ratio:.1}x its time)",
                verdict(tuned, &fixed.info.name, &d, "the search")
            );
            obs.note(&format!("verdict   {v}"));
            comparisons.push(Comparison {
                system: tuned.clone(),
                baseline: fixed.info.name.clone(),
                what: "search".into(),
                head: head_names[0].clone(),
                difference_points: d,
                verdict: v,
                time_ratio: Some(ratio),
            });
        }
        levels.push(Levels {
            tuned: tuned.clone(),
            frozen: frozen.clone(),
            baseline: base.map(|b| b.info.name.clone()),
            over_frozen,
            frozen_over_baseline,
            sentence,
        });
    }
    let mut ranking: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r.head_spec.as_ref() == Some(&exp.heads[0]))
        .filter(|r| {
            systems
                .iter()
                .any(|s| s.info.name == r.system && s.info.kind == "backbone")
        })
        .map(|r| (r.system.clone(), r.accuracy.estimate))
        .collect();
    ranking.sort_by(|a, b| b.1.total_cmp(&a.1));
    let pairwise: Vec<Pairwise> = match ranking.split_first() {
        Some(((leader, _), others)) => others
            .iter()
            .map(|(other, _)| Pairwise {
                system: leader.clone(),
                other: other.clone(),
                head: head_names[0].clone(),
                difference_points: difference(leader, other, &exp.heads[0]),
            })
            .collect(),
        None => Vec::new(),
    };

    let (few_shot, few_shot_comparisons) = match &exp.few_shot {
        None => (Vec::new(), Vec::new()),
        Some(f) => few_shot_curve(
            &ds,
            exp,
            f,
            &systems,
            &tuners,
            &train_pool,
            &test_split,
            &fits,
            obs,
        )?,
    };
    let (hits, lookups) = fits.counts();
    if hits > 0 {
        obs.note(&format!(
            "fits      {hits} of {lookups} head fits remembered from earlier runs ({}; delete it to fit again)",
            fits.dir().map_or(String::new(), |d| d.display().to_string())
        ));
    }
    Ok(RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        experiment: exp.clone(),
        dataset: ds.name.clone(),
        label_names: ds.label_names.clone(),
        train_rows: train_pool.len(),
        test_rows: test_rows.len(),
        systems: systems_info,
        results,
        comparisons,
        ranking: ranking.into_iter().map(|r| r.0).collect(),
        pairwise,
        few_shot,
        few_shot_comparisons,
        levels,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Out-of-fold predictions and probabilities (in `test_rows` order), fit warnings, searched
/// values and per-fold training logs of a fine-tuned system: one model trained per training
/// part of `folds`, on those rows alone, predicting that part's test rows.
#[allow(clippy::type_complexity)]
fn tuned_folds(
    tuner: &Tuner,
    ds: &Dataset,
    folds: &[TrainTest],
    test_rows: &[usize],
    search: Option<&Search>,
    obs: &dyn Observer,
) -> Result<
    (
        Vec<usize>,
        Array2<f64>,
        Vec<String>,
        Vec<Chosen>,
        Vec<crate::finetuned::FoldTraining>,
    ),
    EvalError,
> {
    let pos: std::collections::HashMap<usize, usize> =
        test_rows.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut pred = vec![0usize; test_rows.len()];
    let mut proba = Array2::<f64>::zeros((test_rows.len(), ds.label_names.len()));
    let (mut warnings, mut chosen, mut trained) = (Vec::new(), Vec::new(), Vec::new());
    for (fold, (tr, te)) in folds.iter().enumerate() {
        let part = if folds.len() > 1 {
            format!("fold {}: ", fold + 1)
        } else {
            String::new()
        };
        let out = tuner.fit_predict(
            ds,
            tr,
            te,
            search,
            false,
            &|e| epoch_line(&tuner.info.name, &part, tuner.unit(), e, obs),
            &|e| search_line(&tuner.info.name, &part, tuner.unit(), e, obs),
        )?;
        warnings.extend(out.warnings.iter().map(|w| format!("{part}{w}")));
        if let Some(c) = out.chosen {
            warnings.extend(c.edge.as_ref().map(|e| format!("{part}{e}")));
            chosen.push(Chosen {
                fold: fold + 1,
                ..c
            });
        }
        for (r, &i) in te.iter().enumerate() {
            pred[pos[&i]] = out.predictions[r];
            proba.row_mut(pos[&i]).assign(&out.proba.row(r));
        }
        trained.push(crate::finetuned::FoldTraining {
            fold: fold + 1,
            ..out.training
        });
    }
    Ok((pred, proba, warnings, chosen, trained))
}

/// The three levels in one sentence: "fine-tuning: +2.8 points [+1.5, +4.1] over frozen
/// features, which add +7.7 points [+6.3, +9.1] over tfidf", each part with its verdict
/// word when the interval excludes 0.
pub fn levels_sentence(
    tuned: &str,
    over_frozen: &Interval,
    frozen_over_baseline: Option<(&str, &Interval)>,
) -> String {
    let word = |d: &Interval| match direction(d) {
        "helps" => "",
        "hurts" => " (worse)",
        _ => " (no clear difference)",
    };
    let mut s = format!(
        "{tuned}: fine-tuning {}{} over frozen features",
        points(over_frozen),
        word(over_frozen)
    );
    if let Some((base, d)) = frozen_over_baseline {
        s.push_str(&format!(", which add {}{} over {base}", points(d), word(d)));
    }
    s
}

/// Prints a result line, its search line and its first warning.
fn note_result(r: &RunResult, folds: usize, obs: &dyn Observer) {
    obs.note(&format!(
        "result    {:<24} {:<10} accuracy {:.1}% [{:.1}, {:.1}]  macro-F1 {:.1}%  ({:.1}s)",
        r.system,
        r.head,
        100.0 * r.accuracy.estimate,
        100.0 * r.accuracy.low,
        100.0 * r.accuracy.high,
        100.0 * r.macro_f1.estimate,
        r.fit_seconds
    ));
    if let Some(phrase) = chosen_phrase(&r.chosen) {
        obs.note(&format!(
            "search    {:<24} {:<10} {phrase}",
            r.system, r.head
        ));
    }
    if let Some(first) = r.warnings.first() {
        obs.note(&format!(
            "warning   {} {}: {} of {folds} fits: {first}",
            r.system,
            r.head,
            r.warnings.len()
        ));
    }
}

/// Opens every fine-tuned system of `exp` (fetching weights, tokenising), measures its
/// training throughput on a few batches and prints what the run will cost, before any long
/// work starts. Returns each tuner with its estimated seconds.
#[allow(clippy::too_many_arguments)]
fn open_tuners(
    ds: &Dataset,
    used: &[usize],
    exp: &Experiment,
    folds: &[TrainTest],
    test_rows: &[usize],
    registry: &Registry,
    cache: &Cache,
    obs: &dyn Observer,
) -> Result<Vec<(Tuner, f64)>, EvalError> {
    let mut out = Vec::new();
    for spec in &exp.finetune {
        let tuner = Tuner::open(spec, ds, used, registry, cache, exp.seed)?;
        let speed = tuner.measure(ds, &folds[0].0)?;
        let estimate: f64 = match spec.few_shot {
            FewShotUse::Only => 0.0,
            _ => folds
                .iter()
                .map(|(tr, te)| tuner.estimate(&speed, tr.len(), te.len(), true))
                .sum(),
        };
        let curve_rows = exp
            .few_shot
            .as_ref()
            .filter(|_| spec.few_shot != FewShotUse::Skip);
        let curve = curve_rows.map_or(0.0, |f| {
            let classes = ds.n_classes();
            // The curve's test rows: the test split, else its own share of the rows.
            let curve_test = match exp.protocol {
                Protocol::Split { .. } => test_rows.len(),
                _ => (used.len() as f64 * f.test_fraction).round() as usize,
            };
            f.shots
                .iter()
                .map(|&k| {
                    let (rows, repeats) = if k == 0 {
                        (folds[0].0.len(), 1)
                    } else {
                        (k * classes, f.repeats)
                    };
                    repeats as f64 * tuner.estimate(&speed, rows, curve_test, false)
                })
                .sum()
        });
        let name = &tuner.info.name;
        let mut parts = Vec::new();
        if spec.few_shot != FewShotUse::Only {
            parts.push(format!(
                "about {} for {} training part{} of {} rows{}",
                human_seconds(estimate),
                folds.len(),
                if folds.len() == 1 { "" } else { "s" },
                folds[0].0.len(),
                spec.search.as_ref().map_or(String::new(), |s| format!(
                    " at worst (each a search of up to {} configurations costing at most {} runs)",
                    s.configurations, s.budget
                ))
            ));
        }
        if curve > 0.0 {
            parts.push(format!(
                "about {} for the few-shot curve",
                human_seconds(curve)
            ));
        }
        obs.note(&format!(
            "estimate  {name}: {} ({} epoch{} at {:.0} training rows/s, predicting {:.0} rows/s, measured on a few batches)",
            parts.join(", plus "),
            tuner.epochs(),
            if tuner.epochs() == 1 { "" } else { "s" },
            1.0 / speed.train,
            1.0 / speed.infer
        ));
        if folds.len() > 1 && spec.few_shot != FewShotUse::Only {
            obs.note(&format!(
                "cost      {name}: cross-validation trains {} models, one per fold; a holdout (protocol kind = \"holdout\") would train one, about {}",
                folds.len(),
                human_seconds(estimate / folds.len() as f64)
            ));
        }
        out.push((tuner, estimate + curve));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn few_shot_curve(
    ds: &Dataset,
    exp: &Experiment,
    f: &FewShot,
    systems: &[System],
    tuners: &[(Tuner, f64)],
    train_pool: &[usize],
    test_split: &[usize],
    fits: &FitCache,
    obs: &dyn Observer,
) -> Result<(Vec<FewShotPoint>, Vec<FewShotComparison>), EvalError> {
    let (pool, test) = if test_split.is_empty() {
        stratified_split(&ds.labels, train_pool, f.test_fraction, exp.seed)?
    } else {
        (train_pool.to_vec(), test_split.to_vec())
    };
    let truth: Vec<usize> = test.iter().map(|&i| ds.labels[i]).collect();
    let all: Vec<usize> = (0..test.len()).collect();
    let spec = &exp.heads[0];
    let counts = ds.class_counts(&pool);
    let largest = counts.iter().copied().max().unwrap_or(0);
    let smallest = counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0);
    if let Some(&k) = f.shots.iter().find(|&&k| k >= largest && k > 0) {
        // Every seed would draw the whole pool: the point would be "all", labelled k.
        return Err(EvalError::Config(format!(
            "few_shot.shots: k = {k} is not below any class's training rows (the largest class has {largest}); use 0 for all rows, or smaller k"
        )));
    }
    if let Some(&k) = f.shots.iter().find(|&&k| k > smallest) {
        obs.note(&format!(
            "few-shot  note: from k = {k} on, classes with fewer than k training rows (the smallest has {smallest}) use all their rows"
        ));
    }
    let draw = |k: usize, r: u64| -> Result<Vec<usize>, EvalError> {
        Ok(if k == 0 {
            pool.clone()
        } else {
            per_class_subsample(&ds.labels, &pool, k, exp.seed.wrapping_add(r))?
        })
    };
    let mut points = Vec::new();
    let mut push = |system: &str, k: usize, runs: Vec<f64>| {
        let mean = runs.iter().sum::<f64>() / runs.len() as f64;
        let std = (runs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / runs.len() as f64).sqrt();
        obs.note(&format!(
            "few-shot  {:<24} k={:<4} {:.1}% +- {:.1}",
            system,
            if k == 0 {
                "all".to_string()
            } else {
                k.to_string()
            },
            100.0 * mean,
            100.0 * std
        ));
        points.push(FewShotPoint {
            system: system.to_string(),
            shots: k,
            mean,
            std,
            runs,
        });
    };
    // Each draw's predictions of a frozen backbone (first head), for the fine-tuned systems'
    // paired comparisons on the same draws.
    let mut frozen: std::collections::HashMap<(String, usize), Vec<Vec<usize>>> =
        Default::default();
    for system in systems {
        for &k in &f.shots {
            // Every seed trains on the same rows when k is "all": one fit says it all.
            let repeats = if k == 0 { 1 } else { f.repeats as u64 };
            let jobs: Vec<u64> = (0..repeats).collect();
            let preds: Vec<Result<Vec<usize>, EvalError>> = jobs
                .par_iter()
                .map(|&r| {
                    let train = draw(k, r)?;
                    // A few rows per class leave nothing to search on: the head as written.
                    let ((pred, _, _), _) =
                        fit_predict(system, ds, spec, exp, &train, &test, true, None, fits)?;
                    Ok(pred)
                })
                .collect();
            let preds: Vec<Vec<usize>> = preds.into_iter().collect::<Result<_, _>>()?;
            let runs = preds.iter().map(|p| accuracy_on(&truth, p, &all)).collect();
            push(&system.info.name, k, runs);
            frozen.insert((system.info.name.clone(), k), preds);
        }
    }
    // Fine-tuned systems on the same draws, one training run at a time (each on every core).
    let mut comparisons = Vec::new();
    for (tuner, _) in tuners
        .iter()
        .filter(|(t, _)| t.spec.few_shot != FewShotUse::Skip)
    {
        for &k in &f.shots {
            let repeats = if k == 0 { 1 } else { f.repeats as u64 };
            let mut preds = Vec::new();
            for r in 0..repeats {
                let train = draw(k, r)?;
                preds.push(
                    tuner
                        .fit_predict(ds, &train, &test, None, true, &|_| {}, &|_| {})?
                        .predictions,
                );
            }
            let runs = preds.iter().map(|p| accuracy_on(&truth, p, &all)).collect();
            push(&tuner.info.name, k, runs);
            // Paired over every (draw, test row): the draws' predictions end to end.
            let Some(base) = frozen.get(&(tuner.spec.backbone.clone(), k)) else {
                continue;
            };
            let cat = |p: &[Vec<usize>]| p.concat();
            let truths: Vec<usize> = (0..preds.len()).flat_map(|_| truth.clone()).collect();
            let d = in_points(paired_accuracy_difference(
                &truths,
                &cat(&preds),
                &cat(base),
                exp.bootstrap,
                exp.seed,
            ));
            let v = verdict(
                &tuner.info.name,
                &format!("frozen {}", tuner.spec.backbone),
                &d,
                "fine-tuning",
            );
            obs.note(&format!(
                "few-shot  k={k}, {} draw{}: {v}",
                preds.len(),
                if preds.len() == 1 { "" } else { "s" }
            ));
            comparisons.push(FewShotComparison {
                system: tuner.info.name.clone(),
                frozen: tuner.spec.backbone.clone(),
                shots: k,
                draws: preds.len(),
                difference_points: d,
                verdict: v,
            });
        }
    }
    Ok((points, comparisons))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_needs_an_interval_above_zero_against_every_other_backbone() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pair = |other: &str, estimate: f64, low: f64, high: f64| Pairwise {
            system: "a".into(),
            other: other.into(),
            head: "logistic".into(),
            difference_points: Interval {
                estimate,
                low,
                high,
            },
        };
        assert_eq!(ranking_sentence(&names(&["a"]), &[]), None);
        let clear = [pair("b", 3.0, 1.2, 4.9), pair("c", 5.0, 3.1, 6.8)];
        assert_eq!(
            ranking_sentence(&names(&["a", "b", "c"]), &clear).unwrap(),
            "a > b > c (best: a, +3.0 points [+1.2, +4.9] over b; +5.0 points [+3.1, +6.8] over c)"
        );
        // One image ahead is not "best": the interval includes 0.
        let close = [pair("b", 0.1, -0.9, 1.1), pair("c", 5.0, 3.1, 6.8)];
        let s = ranking_sentence(&names(&["a", "b", "c"]), &close).unwrap();
        assert!(
            s.starts_with(
                "a > b > c (no clear best: a is tied with b; +0.1 points [-0.9, +1.1] over b"
            ),
            "{s}"
        );
        assert!(!s.contains("(best: a"), "{s}");
        // Without the evidence (a report from before pairwise intervals) nothing is claimed.
        let s = ranking_sentence(&names(&["a", "b"]), &[]).unwrap();
        assert_eq!(
            s,
            "a > b (no pairwise intervals in this report: an order, not a verdict)"
        );
    }

    #[test]
    fn the_nested_search_never_reads_a_test_row() {
        // Features exist only for the training rows: reading any other row panics, so a
        // search that finishes has, by construction, seen the training part alone.
        let n = 60;
        let train: Vec<usize> = (0..n).filter(|i| i % 4 != 0).collect();
        let mut rows = vec![None; n];
        let mut x = Array2::<f32>::zeros((train.len(), 2));
        for (r, &i) in train.iter().enumerate() {
            rows[i] = Some(r);
            x[[r, i % 2]] = 1.0 + (i % 7) as f32 / 10.0;
        }
        let system = System {
            info: SystemInfo {
                name: "s".into(),
                kind: "backbone".into(),
                fingerprint: None,
                dim: 2,
                cache_hits: 0,
                computed: 0,
                seconds: 0.0,
                peak_rss_mb: None,
            },
            source: Source::Fixed { rows, x },
        };
        let ds = Dataset {
            name: "d".into(),
            labels: (0..n).map(|i| i % 2).collect(),
            items: (0..n).map(|i| Item::Text(format!("row {i}"))).collect(),
            label_names: vec!["a".into(), "b".into()],
            domains: None,
            splits: Default::default(),
            skipped: Vec::new(),
        };
        let exp = Experiment::from_toml(
            "name = \"x\"\ndataset = \"d\"\nbaseline = \"tfidf\"\n[protocol]\nkind = \"cv\"\n[search]\nfolds = 3\nc = [0.1, 1.0]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let (config, chosen) = choose(
            &system,
            &ds,
            &exp.heads[0],
            &exp,
            &train,
            false,
            Some(&exp.search),
        )
        .unwrap();
        let chosen = chosen.unwrap();
        assert_eq!(chosen.param, "c");
        assert_eq!(config.head.main_param(), Some(("c", chosen.value)));
        assert!(chosen.inner_accuracy > 0.9, "{chosen:?}");
        // The same call with one test row among the training rows does read it.
        let mut leaky = train.clone();
        leaky.push(0);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            choose(
                &system,
                &ds,
                &exp.heads[0],
                &exp,
                &leaky,
                false,
                Some(&exp.search),
            )
        }));
        assert!(
            read.is_err(),
            "row 0 has no features and must not be readable"
        );
    }

    /// Rows whose label is a coin flip tied to a token no other row has: a model can only
    /// know a row's label by training on that row.
    fn memorisable(n: usize) -> (Dataset, Tuner) {
        let mut rng = tl_core::Rng::new(7);
        let labels: Vec<usize> = (0..n).map(|_| rng.below(2) as usize).collect();
        let ds = Dataset {
            name: "coins".into(),
            items: (0..n).map(|i| Item::Text(format!("row {i}"))).collect(),
            labels,
            label_names: vec!["heads".into(), "tails".into()],
            domains: None,
            splits: Default::default(),
            skipped: Vec::new(),
        };
        let seqs = (0..n).map(|i| Some(vec![1, 10 + i as u32, 2])).collect();
        let config = tl_finetune::BertConfig::tiny(10 + n, 16, 1, 2);
        let model = tl_finetune::BertClassifier::random(config, 2, 0);
        let params = tl_finetune::FinetuneParams {
            learning_rate: 3e-2,
            epochs: 40,
            batch_size: 8,
            dropout: 0.0,
            warmup_fraction: 0.0,
            weight_decay: 0.0,
            threads: 1,
            ..Default::default()
        };
        let spec = FinetuneSpec::new("tiny", tl_finetune::Strategy::Full);
        (
            ds.clone(),
            Tuner::text_for_tests(&spec, model, seqs, params),
        )
    }

    #[test]
    fn a_fine_tuned_system_inside_cv_never_sees_its_test_fold() {
        let (ds, tuner) = memorisable(60);
        let all: Vec<usize> = (0..60).collect();
        let truth = &ds.labels;
        // Control: trained on every row, the model knows every row's label, so a test fold
        // that leaked into training would be scored near 100%.
        let out = tuner
            .fit_predict(&ds, &all, &all, None, false, &|_| {}, &|_| {})
            .unwrap();
        assert!(accuracy_on(truth, &out.predictions, &all) >= 0.95);
        let folds: Vec<TrainTest> = stratified_kfold(&ds.labels, &all, 3, 0)
            .unwrap()
            .into_iter()
            .map(|f| (f.train, f.test))
            .collect();
        let (pred, proba, _, _, trained) =
            tuned_folds(&tuner, &ds, &folds, &all, None, &|_: &str| {}).unwrap();
        // One model per fold, each trained on its training part's rows alone.
        assert_eq!(trained.len(), 3);
        for (f, (tr, te)) in trained.iter().zip(&folds) {
            assert_eq!(f.train_rows, tr.len());
            assert!(te.iter().all(|i| !tr.contains(i)));
        }
        // Out of fold the tokens are unseen: chance (0.5; 0.75 is 4 sd above it for 60
        // rows), far from the control's memorised labels.
        let oof = accuracy_on(truth, &pred, &all);
        assert!(
            oof < 0.75,
            "out-of-fold accuracy {oof}: test rows were trained on"
        );
        for r in 0..60 {
            assert!((proba.row(r).sum() - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn raw_pixels_are_in_zero_one_on_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("white.png");
        image::RgbImage::from_pixel(5, 7, image::Rgb([255, 255, 255]))
            .save(&path)
            .unwrap();
        let px = |w: u32, v: u8| {
            Item::Pixels(tl_data::Pixels {
                width: w,
                height: 3,
                channels: 1,
                data: vec![v; (w * 3) as usize],
            })
        };
        let ds = |items: Vec<Item>| Dataset {
            name: "d".into(),
            labels: vec![0; items.len()],
            items,
            label_names: vec!["a".into()],
            domains: None,
            splits: Default::default(),
            skipped: Vec::new(),
        };
        // Files (resized to 32 x 32), pixels of mixed sizes (resized), pixels of one size.
        for d in [
            ds(vec![Item::ImageFile(path.clone()), px(4, 255)]),
            ds(vec![px(4, 255), px(6, 0)]),
            ds(vec![px(4, 255), px(4, 128)]),
        ] {
            let x = raw_pixels(&d, &[0, 1]).unwrap();
            let max = x.iter().copied().fold(f32::MIN, f32::max);
            assert!((max - 1.0).abs() < 1e-6, "max {max}");
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}
