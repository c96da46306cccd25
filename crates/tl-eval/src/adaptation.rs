//! Domain-adaptation experiments: for each (source, target) pair of datasets with the same
//! labels and each backbone, source-only vs every adaptation method (hyperparameters chosen by
//! reverse validation, without target labels) vs a target-supervised bound, with bootstrap
//! intervals on the target rows and a per-pair verdict.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Registry};
use tl_core::split::{stratified_kfold, stratified_sample, stratified_split};
use tl_data::Dataset;
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

use crate::EvalError;
use crate::adapt::{Adapted, Method, reverse_validation};
use crate::adapt_model::{Domain, adapted_features, check_backbone};
use crate::report::{Report, ReportFile, csv_field};
use crate::runner::{
    Observer, backbone_features, check_limits, check_name, default_batch, default_bootstrap,
    direction, parse_experiment,
};
use tl_core::metrics::{Interval, accuracy_on, bootstrap, paired_accuracy_difference};
use tl_data::{TableSettings, load_dataset};

/// Version of [`AdaptationReport`]'s JSON.
pub const ADAPTATION_SCHEMA_VERSION: u32 = 1;

/// A labelled source domain and an unlabelled target domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// Dataset with labels to train on.
    pub source: String,
    /// Dataset to adapt to (its labels only score the result and train the bound).
    pub target: String,
}

/// A method and the hyperparameter values reverse validation chooses from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodGrid {
    /// Per-domain standardisation (no hyperparameter).
    Standardize,
    /// CORAL over regularisers (multiples of the mean feature variance).
    Coral {
        /// Candidate `eps_scale` values.
        eps_scale: Vec<f64>,
    },
    /// Subspace alignment over subspace dimensions.
    Subspace {
        /// Candidate dimensions.
        dims: Vec<usize>,
    },
    /// Importance weighting over the domain classifier's inverse regularisation.
    Importance {
        /// Candidate `c` values of the domain classifier.
        c: Vec<f64>,
        /// Cap on a weight (mean weight is 1).
        #[serde(default = "default_clip")]
        clip: f64,
    },
    /// SimCSE on the target texts (model-level) over learning rates.
    Simcse {
        /// Candidate peak learning rates.
        learning_rate: Vec<f64>,
        /// Passes over the target texts.
        #[serde(default = "default_simcse_epochs")]
        epochs: usize,
        /// InfoNCE temperature.
        #[serde(default = "default_temperature")]
        temperature: f64,
    },
    /// DANN (model-level) over the reversed gradient's weight; 0 is fine-tuning on the
    /// source alone.
    Dann {
        /// Candidate weights of the reversed domain gradient.
        lambda: Vec<f64>,
        /// Peak learning rate (none: 2e-5 for text encoders, 5e-4 for image networks).
        #[serde(default)]
        learning_rate: Option<f64>,
        /// Passes over the source rows.
        #[serde(default = "default_dann_epochs")]
        epochs: usize,
        /// Image networks: the side in pixels they train and encode at (none: the
        /// model's own; small images train many times faster at a small one).
        #[serde(default)]
        resolution: Option<usize>,
    },
    /// AdaBN (model-level, image backbones): BatchNorm statistics re-estimated on each
    /// domain's own images. (A struct variant with no fields, so that an unknown key in
    /// its table is refused like anywhere else.)
    Adabn {},
}

fn default_clip() -> f64 {
    10.0
}

fn default_simcse_epochs() -> usize {
    1
}

fn default_temperature() -> f64 {
    0.05
}

fn default_dann_epochs() -> usize {
    2
}

impl MethodGrid {
    /// Every candidate of the grid.
    pub fn candidates(&self) -> Vec<Method> {
        match self {
            MethodGrid::Standardize => vec![Method::Standardize],
            MethodGrid::Coral { eps_scale } => eps_scale
                .iter()
                .map(|&e| Method::Coral { eps_scale: e })
                .collect(),
            MethodGrid::Subspace { dims } => {
                dims.iter().map(|&d| Method::Subspace { dims: d }).collect()
            }
            MethodGrid::Importance { c, clip } => c
                .iter()
                .map(|&c| Method::Importance { c, clip: *clip })
                .collect(),
            MethodGrid::Simcse {
                learning_rate,
                epochs,
                temperature,
            } => learning_rate
                .iter()
                .map(|&lr| Method::Simcse {
                    learning_rate: lr,
                    epochs: *epochs,
                    temperature: *temperature,
                })
                .collect(),
            MethodGrid::Dann {
                lambda,
                learning_rate,
                epochs,
                resolution,
            } => lambda
                .iter()
                .map(|&l| Method::Dann {
                    lambda: l,
                    learning_rate: *learning_rate,
                    epochs: *epochs,
                    resolution: *resolution,
                })
                .collect(),
            MethodGrid::Adabn {} => vec![Method::Adabn],
        }
    }

    /// The model-level methods with their default grids: SimCSE at learning rates 1e-5
    /// and 3e-5 (one epoch), DANN at lambda 0 (fine-tuning on the source alone), 0.1 and
    /// 1 (fine-tuning's learning rate, two epochs), and AdaBN. Not among an experiment's defaults: each candidate
    /// trains the backbone.
    pub fn model_level() -> Vec<MethodGrid> {
        vec![
            MethodGrid::Simcse {
                learning_rate: vec![1e-5, 3e-5],
                epochs: default_simcse_epochs(),
                temperature: default_temperature(),
            },
            MethodGrid::Dann {
                lambda: vec![0.0, 0.1, 1.0],
                learning_rate: None,
                epochs: default_dann_epochs(),
                resolution: None,
            },
            MethodGrid::Adabn {},
        ]
    }

    /// The method's name.
    pub fn kind(&self) -> &'static str {
        match self {
            MethodGrid::Standardize => "standardize",
            MethodGrid::Coral { .. } => "coral",
            MethodGrid::Subspace { .. } => "subspace",
            MethodGrid::Importance { .. } => "importance",
            MethodGrid::Simcse { .. } => "simcse",
            MethodGrid::Dann { .. } => "dann",
            MethodGrid::Adabn {} => "adabn",
        }
    }
}

/// A domain-adaptation experiment (TOML). An experiment file with `pairs` is one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptationExperiment {
    /// Name of the run (report folder prefix).
    pub name: String,
    /// Backbones whose features are adapted.
    pub backbones: Vec<String>,
    /// (source, target) pairs.
    pub pairs: Vec<Pair>,
    /// Methods and their hyperparameter grids.
    #[serde(default = "default_methods")]
    pub methods: Vec<MethodGrid>,
    /// The head trained on the (adapted) source.
    #[serde(default = "default_head")]
    pub head: HeadSpec,
    /// Which split of a dataset to use (all rows when absent), by dataset name.
    #[serde(default)]
    pub splits: BTreeMap<String, String>,
    /// Use at most this many rows of each dataset (a stratified sample).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Settings for CSV/JSONL datasets.
    #[serde(default)]
    pub table: TableSettings,
    /// Folds of the target-supervised bound.
    #[serde(default = "default_bound_folds")]
    pub bound_folds: usize,
    /// Share of source rows reverse validation holds out.
    #[serde(default = "default_validation")]
    pub validation_fraction: f64,
    /// Seed of every split and resample.
    #[serde(default)]
    pub seed: u64,
    /// Bootstrap resamples for the intervals.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// Backbone batch size.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_methods() -> Vec<MethodGrid> {
    vec![
        MethodGrid::Standardize,
        MethodGrid::Coral {
            eps_scale: vec![0.1, 1.0, 10.0, 100.0],
        },
        MethodGrid::Subspace {
            dims: vec![32, 64, 128],
        },
        MethodGrid::Importance {
            c: vec![0.01, 0.1, 1.0],
            clip: default_clip(),
        },
    ]
}

fn default_head() -> HeadSpec {
    HeadSpec::Logistic(LogisticParams::default())
}

fn default_bound_folds() -> usize {
    10
}

fn default_validation() -> f64 {
    0.2
}

impl AdaptationExperiment {
    /// An experiment with every default: all methods with their default grids, logistic
    /// regression, 10-fold bound, seed 0.
    pub fn new(name: &str, backbones: Vec<String>, pairs: Vec<Pair>) -> AdaptationExperiment {
        AdaptationExperiment {
            name: name.to_string(),
            backbones,
            pairs,
            methods: default_methods(),
            head: default_head(),
            splits: BTreeMap::new(),
            limit: None,
            table: TableSettings::default(),
            bound_folds: default_bound_folds(),
            validation_fraction: default_validation(),
            seed: 0,
            bootstrap: default_bootstrap(),
            batch_size: default_batch(),
        }
    }

    /// Whether a TOML experiment file describes an adaptation experiment (it has `pairs`).
    pub fn is_adaptation(text: &str) -> bool {
        text.parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("pairs"))
    }

    /// Parses an adaptation experiment; errors name the file, the line and the key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<AdaptationExperiment, EvalError> {
        parse_experiment(text, origin, AdaptationExperiment::check)
    }

    /// Validates values serde cannot.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_limits(self.bootstrap, self.batch_size)?;
        if self.backbones.is_empty() {
            return Err("backbones: name at least one backbone".into());
        }
        if self.pairs.is_empty() {
            return Err("pairs: name at least one { source, target } pair".into());
        }
        for (i, p) in self.pairs.iter().enumerate() {
            if p.source == p.target {
                return Err(format!(
                    "pairs[{i}]: source and target are both `{}`",
                    p.source
                ));
            }
        }
        for (i, m) in self.methods.iter().enumerate() {
            let c = m.candidates();
            if c.is_empty() {
                return Err(format!(
                    "methods[{i}] ({}): give at least one value",
                    m.kind()
                ));
            }
            for cand in c {
                let bad = match cand {
                    Method::Coral { eps_scale } => !(eps_scale.is_finite() && eps_scale > 0.0),
                    Method::Subspace { dims } => dims == 0,
                    Method::Importance { c, clip } => {
                        !(c.is_finite() && c > 0.0 && clip.is_finite() && clip > 1.0)
                    }
                    Method::Simcse {
                        learning_rate,
                        epochs,
                        temperature,
                    } => {
                        !(learning_rate > 0.0
                            && learning_rate <= 1.0
                            && (1..=100).contains(&epochs)
                            && temperature > 0.0
                            && temperature <= 1.0)
                    }
                    Method::Dann {
                        lambda,
                        learning_rate,
                        epochs,
                        resolution,
                    } => {
                        !((0.0..=10.0).contains(&lambda)
                            && learning_rate.is_none_or(|r| r > 0.0 && r <= 1.0)
                            && (1..=100).contains(&epochs)
                            && resolution.is_none_or(|r| (8..=1024).contains(&r)))
                    }
                    Method::SourceOnly | Method::Standardize | Method::Adabn => false,
                };
                if bad {
                    return Err(format!(
                        "methods[{i}]: {} is out of range (eps_scale > 0, dims > 0, c > 0, \
                         clip > 1, learning_rate in (0, 1], epochs 1..=100, temperature in \
                         (0, 1], lambda in [0, 10], resolution 8..=1024)",
                        cand.label()
                    ));
                }
            }
        }
        self.head.check().map_err(|e| format!("head: {e}"))?;
        if matches!(self.head, HeadSpec::Knn(_) | HeadSpec::Centroid(_))
            && self
                .methods
                .iter()
                .any(|m| matches!(m, MethodGrid::Importance { .. }))
        {
            return Err(format!(
                "head: importance weighting needs a head that takes row weights (logistic, \
                 linear-svm, ridge), not {}",
                self.head.kind()
            ));
        }
        if self.bound_folds < 2 {
            return Err(format!(
                "bound_folds: needs at least 2, got {}",
                self.bound_folds
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(format!(
                "validation_fraction: must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        if self.limit == Some(0) {
            return Err("limit: must be at least 1".into());
        }
        Ok(())
    }
}

/// One method's result on one pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    /// Method name (`source-only`, `coral`, ..., or `rv-selected` for the best reverse-validation
    /// score over all methods).
    pub method: String,
    /// The candidate reverse validation chose.
    pub chosen: Method,
    /// Reverse-validation score of every candidate (label, score).
    pub candidates: Vec<(String, f64)>,
    /// Accuracy on the target rows.
    pub accuracy: Interval,
    /// Accuracy minus source-only accuracy, in points (paired bootstrap).
    pub difference_points: Interval,
    /// (accuracy - source-only) / (bound - source-only); absent when the bound is not above
    /// source-only.
    pub gap_recovered: Option<f64>,
    /// `helps`, `hurts` or `no clear difference` (the interval of the difference vs 0).
    pub verdict: String,
    /// Target predictions (label indices of the source's label names).
    #[serde(skip_serializing, default)]
    pub predictions: Vec<usize>,
}

/// All results of one (backbone, pair).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairResult {
    /// Backbone name.
    pub backbone: String,
    /// Source dataset.
    pub source: String,
    /// Target dataset.
    pub target: String,
    /// Source rows used.
    pub source_rows: usize,
    /// Target rows used.
    pub target_rows: usize,
    /// Target-supervised bound: pooled out-of-fold accuracy of the head on target labels.
    pub bound: Interval,
    /// Source-only first, then each method, then `rv-selected`.
    pub methods: Vec<MethodResult>,
    /// Seconds for this pair (features from the cache, fits, scores).
    pub seconds: f64,
}

/// A method's results averaged over the pairs of one backbone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSummary {
    /// Backbone name.
    pub backbone: String,
    /// Method name.
    pub method: String,
    /// Mean accuracy difference vs source-only, in points.
    pub mean_difference_points: f64,
    /// Mean over pairs of the fraction of the gap recovered (pairs with a positive gap).
    pub mean_gap_recovered: Option<f64>,
    /// Total gain over total gap, over the pairs with a positive gap.
    pub pooled_gap_recovered: Option<f64>,
    /// Pairs where the method helps (interval above 0).
    pub helped: usize,
    /// Pairs where it hurts.
    pub hurt: usize,
    /// Pairs.
    pub pairs: usize,
}

/// Everything an adaptation run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptationReport {
    /// [`ADAPTATION_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version of this toolkit.
    pub tool_version: String,
    /// The experiment as run.
    pub experiment: AdaptationExperiment,
    /// Per (backbone, pair).
    pub pairs: Vec<PairResult>,
    /// Per (backbone, method) over the pairs.
    pub summary: Vec<MethodSummary>,
    /// Wall time of the run.
    pub seconds: f64,
}

fn rows_of(ds: &Dataset, exp: &AdaptationExperiment) -> Result<Vec<usize>, EvalError> {
    let rows = match exp.splits.get(&ds.name) {
        Some(split) => ds.split(split)?.to_vec(),
        None => (0..ds.len()).collect(),
    };
    Ok(match exp.limit {
        // The same stratified sample (seed ^ 2) as an evaluation experiment's test subsample,
        // so features cached by one are hits for the other.
        Some(n) => stratified_sample(&ds.labels, &rows, n, exp.seed ^ 2)?,
        None => rows,
    })
}

/// Runs an adaptation experiment: features through the cache, then for each backbone and pair
/// the source-only head, each method at the hyperparameter reverse validation picks, the best
/// method by reverse validation, and the target-supervised bound.
pub fn run_adaptation(
    exp: &AdaptationExperiment,
    registry: &Registry,
    cache: &Cache,
    progress: bool,
    obs: &dyn Observer,
) -> Result<AdaptationReport, EvalError> {
    let start = Instant::now();
    exp.check().map_err(EvalError::Config)?;
    // A model-level method the backbone cannot take is refused before any work.
    for backbone in &exp.backbones {
        for m in exp.methods.iter().flat_map(|g| g.candidates()) {
            if m.is_model_level() {
                check_backbone(&m, backbone, registry)?;
            }
        }
    }
    let mut datasets: HashMap<String, (Dataset, Vec<usize>)> = HashMap::new();
    for p in &exp.pairs {
        for name in [&p.source, &p.target] {
            if !datasets.contains_key(name) {
                let ds = load_dataset(registry, cache, name, &exp.table)?;
                let rows = rows_of(&ds, exp)?;
                obs.note(&format!(
                    "dataset   {name}: {} rows used, {} classes",
                    rows.len(),
                    ds.n_classes()
                ));
                datasets.insert(name.clone(), (ds, rows));
            }
        }
    }
    let head = HeadConfig::new(exp.head.clone());
    let mut pairs = Vec::new();
    for backbone in &exp.backbones {
        let mut features: HashMap<String, Array2<f32>> = HashMap::new();
        for (name, (ds, rows)) in &datasets {
            let x = backbone_features(
                backbone,
                ds,
                rows,
                registry,
                cache,
                exp.batch_size,
                progress,
                obs,
            )?
            .features;
            features.insert(name.clone(), x);
        }
        for p in &exp.pairs {
            let t = Instant::now();
            let (src, src_rows) = &datasets[&p.source];
            let (tgt, tgt_rows) = &datasets[&p.target];
            let names = &src.label_names;
            let ys: Vec<usize> = src_rows.iter().map(|&i| src.labels[i]).collect();
            let yt = map_labels(src, tgt, tgt_rows)?;
            let mut tuned = Vec::new();
            // DANN trains on the rows reverse validation trains on (the same split).
            let positions: Vec<usize> = (0..ys.len()).collect();
            let labelled = if exp.methods.iter().any(|g| g.kind() == "dann") {
                stratified_split(&ys, &positions, exp.validation_fraction, exp.seed)?.0
            } else {
                positions
            };
            for m in exp
                .methods
                .iter()
                .flat_map(|g| g.candidates())
                .filter(Method::is_model_level)
            {
                let t0 = Instant::now();
                obs.note(&format!(
                    "adapt     {backbone}: {} -> {}: {} (trains the backbone)...",
                    p.source,
                    p.target,
                    m.label()
                ));
                let (s, t) = adapted_features(
                    &m,
                    backbone,
                    &Domain {
                        ds: src,
                        rows: src_rows,
                    },
                    &ys,
                    &labelled,
                    &Domain {
                        ds: tgt,
                        rows: tgt_rows,
                    },
                    names.len(),
                    registry,
                    cache,
                    exp.seed,
                    progress,
                )?;
                obs.note(&format!(
                    "adapt     {backbone}: {} -> {}: {} done ({:.0}s)",
                    p.source,
                    p.target,
                    m.label(),
                    t0.elapsed().as_secs_f64()
                ));
                tuned.push((m, s, t));
            }
            let result = run_pair(
                exp,
                &head,
                backbone,
                p,
                features[&p.source].view(),
                &ys,
                features[&p.target].view(),
                &yt,
                names,
                &tuned,
                t,
            )?;
            let so = &result.methods[0].accuracy;
            obs.note(&format!(
                "adapt     {backbone}: {} -> {}: source-only {:.1}%, bound {:.1}%, best {} ({:.1}s)",
                p.source,
                p.target,
                100.0 * so.estimate,
                100.0 * result.bound.estimate,
                result
                    .methods
                    .iter()
                    .max_by(|a, b| a.accuracy.estimate.total_cmp(&b.accuracy.estimate))
                    .map_or("-".into(), |m| format!(
                        "{} {:.1}%",
                        m.chosen.label(),
                        100.0 * m.accuracy.estimate
                    )),
                result.seconds
            ));
            pairs.push(result);
        }
    }
    let summary = summarize(&exp.backbones, &pairs);
    Ok(AdaptationReport {
        schema_version: ADAPTATION_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        experiment: exp.clone(),
        pairs,
        summary,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Target labels as indices into the source's label names (matched by name).
fn map_labels(src: &Dataset, tgt: &Dataset, rows: &[usize]) -> Result<Vec<usize>, EvalError> {
    rows.iter()
        .map(|&i| {
            let name = &tgt.label_names[tgt.labels[i]];
            src.label_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| {
                    EvalError::Config(format!(
                        "{} row {i}: label `{name}` never occurs in the source {} ({})",
                        tgt.name,
                        src.name,
                        src.label_names.join(", ")
                    ))
                })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_pair(
    exp: &AdaptationExperiment,
    head: &HeadConfig,
    backbone: &str,
    pair: &Pair,
    xs: ndarray::ArrayView2<f32>,
    ys: &[usize],
    xt: ndarray::ArrayView2<f32>,
    yt: &[usize],
    names: &[String],
    tuned: &[Tuned],
    start: Instant,
) -> Result<PairResult, EvalError> {
    // Every candidate of every method, scored by reverse validation, then fitted on all source
    // rows and applied to the target.
    let mut grids: Vec<(String, Vec<Method>)> =
        vec![("source-only".into(), vec![Method::SourceOnly])];
    // Subspaces cannot have more dimensions than either domain has rows (less one) or
    // features: larger grid values are capped, duplicates dropped.
    let most = xs
        .ncols()
        .min(xs.nrows().saturating_sub(1))
        .min(xt.nrows().saturating_sub(1))
        .max(1);
    for g in &exp.methods {
        let mut c: Vec<Method> = Vec::new();
        for m in g.candidates() {
            let m = match m {
                Method::Subspace { dims } => Method::Subspace {
                    dims: dims.min(most),
                },
                m => m,
            };
            if !c.contains(&m) {
                c.push(m);
            }
        }
        grids.push((g.kind().to_string(), c));
    }
    let jobs: Vec<(usize, Method)> = grids
        .iter()
        .enumerate()
        .flat_map(|(g, (_, c))| c.iter().map(move |m| (g, m.clone())))
        .collect();
    let scored: Vec<Scored> = jobs
        .into_par_iter()
        .map(|(g, m)| {
            let adapted = match tuned.iter().find(|t| t.0 == m) {
                Some((_, s, t)) => Adapted {
                    source: s.clone(),
                    target: t.clone(),
                    weights: None,
                },
                None => m.apply(xs, xt, exp.seed)?,
            };
            let rv =
                reverse_validation(&adapted, ys, names, head, exp.validation_fraction, exp.seed)?;
            let model = head.fit_weighted(
                adapted.source.view(),
                ys,
                adapted.weights.as_deref(),
                names,
                None,
            )?;
            let pred = model.predict(adapted.target.view())?;
            Ok((g, m, rv, pred))
        })
        .collect::<Result<_, EvalError>>()?;
    let bound_pred = supervised_bound(head, xt, yt, names, exp.bound_folds, exp.seed)?;
    let n = yt.len();
    let acc = |pred: &[usize]| bootstrap(n, exp.bootstrap, exp.seed, |r| accuracy_on(yt, pred, r));
    let bound = acc(&bound_pred);
    let source_only = scored
        .iter()
        .find(|s| s.0 == 0)
        .expect("source-only is scored")
        .3
        .clone();
    let so_acc = accuracy_on(yt, &source_only, &(0..n).collect::<Vec<_>>());
    let gap = bound.estimate - so_acc;
    let result = |label: &str, pick: &Scored, cands: Vec<(String, f64)>| {
        let accuracy = acc(&pick.3);
        let d = paired_accuracy_difference(yt, &pick.3, &source_only, exp.bootstrap, exp.seed);
        let difference_points = Interval {
            estimate: 100.0 * d.estimate,
            low: 100.0 * d.low,
            high: 100.0 * d.high,
        };
        MethodResult {
            method: label.to_string(),
            chosen: pick.1.clone(),
            candidates: cands,
            verdict: if pick.1 == Method::SourceOnly {
                "-".into()
            } else {
                direction(&difference_points).into()
            },
            gap_recovered: (gap > 0.0).then(|| (accuracy.estimate - so_acc) / gap),
            accuracy,
            difference_points,
            predictions: pick.3.clone(),
        }
    };
    let mut methods = Vec::new();
    for (g, (label, _)) in grids.iter().enumerate() {
        let mine: Vec<&Scored> = scored.iter().filter(|s| s.0 == g).collect();
        let cands = mine.iter().map(|s| (s.1.label(), s.2)).collect();
        methods.push(result(label, best_of(mine), cands));
    }
    let cands = scored.iter().map(|s| (s.1.label(), s.2)).collect();
    methods.push(result("rv-selected", best_of(&scored), cands));
    Ok(PairResult {
        backbone: backbone.to_string(),
        source: pair.source.clone(),
        target: pair.target.clone(),
        source_rows: ys.len(),
        target_rows: n,
        bound,
        methods,
        seconds: start.elapsed().as_secs_f64(),
    })
}

type Scored = (usize, Method, f64, Vec<usize>);

/// A model-level method and the source and target vectors of the model it adapted.
type Tuned = (Method, Array2<f32>, Array2<f32>);

/// The candidate with the best reverse-validation score; ties go to the earlier (simpler) one.
fn best_of<'a>(items: impl IntoIterator<Item = &'a Scored>) -> &'a Scored {
    items
        .into_iter()
        .fold(None::<&Scored>, |b, s| match b {
            Some(b) if b.2 >= s.2 => Some(b),
            _ => Some(s),
        })
        .expect("every method has a candidate")
}

/// Out-of-fold predictions of `head` trained on target labels (stratified k-fold).
fn supervised_bound(
    head: &HeadConfig,
    x: ndarray::ArrayView2<f32>,
    y: &[usize],
    names: &[String],
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>, EvalError> {
    let all: Vec<usize> = (0..y.len()).collect();
    let folds = stratified_kfold(y, &all, folds, seed)?;
    let parts: Vec<(Vec<usize>, Vec<usize>)> = folds
        .par_iter()
        .map(|f| {
            let ytr: Vec<usize> = f.train.iter().map(|&i| y[i]).collect();
            let model = head.fit(x.select(Axis(0), &f.train).view(), &ytr, names, None)?;
            Ok((
                f.test.clone(),
                model.predict(x.select(Axis(0), &f.test).view())?,
            ))
        })
        .collect::<Result<_, EvalError>>()?;
    let mut pred = vec![0; y.len()];
    for (rows, p) in parts {
        for (i, c) in rows.into_iter().zip(p) {
            pred[i] = c;
        }
    }
    Ok(pred)
}

fn summarize(backbones: &[String], pairs: &[PairResult]) -> Vec<MethodSummary> {
    let mut out = Vec::new();
    for b in backbones {
        let mine: Vec<&PairResult> = pairs.iter().filter(|p| &p.backbone == b).collect();
        let Some(first) = mine.first() else { continue };
        for (k, m) in first.methods.iter().enumerate() {
            let rows: Vec<(&PairResult, &MethodResult)> =
                mine.iter().map(|p| (*p, &p.methods[k])).collect();
            let with_gap: Vec<&(&PairResult, &MethodResult)> = rows
                .iter()
                .filter(|(_, r)| r.gap_recovered.is_some())
                .collect();
            let mean_gap_recovered = (!with_gap.is_empty()).then(|| {
                with_gap
                    .iter()
                    .map(|(_, r)| r.gap_recovered.unwrap_or(0.0))
                    .sum::<f64>()
                    / with_gap.len() as f64
            });
            let gain: f64 = with_gap
                .iter()
                .map(|(p, r)| r.accuracy.estimate - p.methods[0].accuracy.estimate)
                .sum();
            let gap: f64 = with_gap
                .iter()
                .map(|(p, _)| p.bound.estimate - p.methods[0].accuracy.estimate)
                .sum();
            out.push(MethodSummary {
                backbone: b.clone(),
                method: m.method.clone(),
                mean_difference_points: rows
                    .iter()
                    .map(|(_, r)| r.difference_points.estimate)
                    .sum::<f64>()
                    / rows.len() as f64,
                mean_gap_recovered,
                pooled_gap_recovered: (gap > 0.0).then(|| gain / gap),
                helped: rows.iter().filter(|(_, r)| r.verdict == "helps").count(),
                hurt: rows.iter().filter(|(_, r)| r.verdict == "hurts").count(),
                pairs: rows.len(),
            });
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:+.0}%", 100.0 * v))
}

/// The report as Markdown: one table per backbone and pair, then the summary.
pub fn adaptation_markdown(r: &AdaptationReport) -> String {
    let mut s = format!(
        "# {} (domain adaptation)\n\nHead: {}. Hyperparameters chosen by reverse validation \
         (no target labels); `rv-selected` is the best reverse-validation score over all methods. \
         Bound: {}-fold cross-validation on target labels. Intervals: 95% bootstrap over target \
         rows ({} resamples). Model-level methods (simcse, dann, adabn) adapt the backbone \
         itself (its fp32 weights) and encode both domains with it; the other rows, the \
         source-only row and the bound use the backbone's cached features.\n",
        r.experiment.name,
        r.experiment.head.kind(),
        r.experiment.bound_folds,
        r.experiment.bootstrap
    );
    for p in &r.pairs {
        s += &format!(
            "\n## {}: {} -> {} ({} source rows, {} target rows)\n\nTarget-supervised bound: {:.1}% [{:.1}, {:.1}]\n\n",
            p.backbone,
            p.source,
            p.target,
            p.source_rows,
            p.target_rows,
            100.0 * p.bound.estimate,
            100.0 * p.bound.low,
            100.0 * p.bound.high
        );
        s += "| method | chosen | target accuracy | vs source-only (points) | gap recovered | verdict |\n";
        s += "|---|---|---|---|---|---|\n";
        for m in &p.methods {
            s += &format!(
                "| {} | {} | {:.1}% [{:.1}, {:.1}] | {:+.1} [{:+.1}, {:+.1}] | {} | {} |\n",
                m.method,
                m.chosen.label(),
                100.0 * m.accuracy.estimate,
                100.0 * m.accuracy.low,
                100.0 * m.accuracy.high,
                m.difference_points.estimate,
                m.difference_points.low,
                m.difference_points.high,
                pct(m.gap_recovered),
                m.verdict
            );
        }
    }
    s += "\n## Summary over pairs\n\n| backbone | method | mean difference (points) | mean gap recovered | pooled gap recovered | helps | hurts | pairs |\n|---|---|---|---|---|---|---|---|\n";
    for m in &r.summary {
        s += &format!(
            "| {} | {} | {:+.2} | {} | {} | {} | {} | {} |\n",
            m.backbone,
            m.method,
            m.mean_difference_points,
            pct(m.mean_gap_recovered),
            pct(m.pooled_gap_recovered),
            m.helped,
            m.hurt,
            m.pairs
        );
    }
    s
}

impl Report for AdaptationReport {
    /// `report.json`, `summary.md` and `results.csv` (one row per backbone, pair and method).
    fn files(&self) -> Result<Vec<ReportFile>, EvalError> {
        let r = self;
        let json = serde_json::to_string_pretty(r).expect("report serialises");
        let mut files = vec![
            ReportFile::text("report.json", json),
            ReportFile::text("summary.md", adaptation_markdown(r)),
        ];
        let mut csv = String::from(
            "backbone,source,target,method,chosen,accuracy,accuracy_low,accuracy_high,difference_points,difference_low,difference_high,gap_recovered,bound,verdict\n",
        );
        for p in &r.pairs {
            for m in &p.methods {
                csv += &format!(
                    "{},{},{},{},{},{:.6},{:.6},{:.6},{:.4},{:.4},{:.4},{},{:.6},{}\n",
                    csv_field(&p.backbone),
                    csv_field(&p.source),
                    csv_field(&p.target),
                    m.method,
                    csv_field(&m.chosen.label()),
                    m.accuracy.estimate,
                    m.accuracy.low,
                    m.accuracy.high,
                    m.difference_points.estimate,
                    m.difference_points.low,
                    m.difference_points.high,
                    m.gap_recovered.map_or(String::new(), |g| format!("{g:.4}")),
                    p.bound.estimate,
                    m.verdict
                );
            }
        }
        files.push(ReportFile::text("results.csv", csv));
        Ok(files)
    }
}
