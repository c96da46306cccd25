//! `tl fit`, `tl predict`, `tl eval`: heads on cached backbone features.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_data::{Dataset, Item};
use tl_features::{CacheOptions, CachedFeatures, Store, embed_cached};
use tl_heads::{ClassWeight, Classifier, FeatureMeta, HeadConfig, HeadSpec, Pca, Preprocess};

use crate::{TableArgs, UsageError, ensure_model, load_dataset, model_manifest};

/// Features for `indices` of `ds`, through the cache, with the backbone's fingerprint.
pub(crate) struct Features {
    pub(crate) features: ndarray::Array2<f32>,
    pub(crate) fingerprint: String,
}

/// Embeds `items` with `backbone` through the feature cache in `$TL_HOME`; items that cannot
/// be embedded are an error.
fn embed_through_cache(backbone: &Backbone, items: &[Item]) -> Result<CachedFeatures> {
    Ok(embed_cached(
        backbone,
        &Store::from_cache(&Cache::from_env()),
        items,
        &CacheOptions {
            on_error: OnError::Fail,
            ..Default::default()
        },
    )?)
}

/// The features of `indices` of `ds` from `model` (fetched if needed) through the feature
/// cache, as the experiment runners get them, with a line saying how many were cached.
pub(crate) fn cached_features(
    registry: &Registry,
    model: &str,
    ds: &Dataset,
    indices: &[usize],
) -> Result<Features> {
    model_manifest(registry, model)?;
    let note = |line: &str| eprintln!("{line}");
    let f = tl_eval::runner::backbone_features(
        model,
        ds,
        indices,
        registry,
        &Cache::from_env(),
        32,
        true,
        &note,
    )?;
    Ok(Features {
        features: f.features,
        fingerprint: f.info.fingerprint.unwrap_or_default(),
    })
}

/// The rows a command works on: a split (default: every row), then `--limit`, which means
/// the same in every command: a stratified sample of about that many rows (seed 0), never
/// the first rows of a file that may be sorted by label.
pub(crate) fn selection(
    ds: &Dataset,
    split: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<usize>> {
    let idx: Vec<usize> = match split {
        Some(s) => ds.split(s)?.to_vec(),
        None => (0..ds.len()).collect(),
    };
    match limit {
        Some(0) => bail!(UsageError("--limit must be at least 1".into())),
        Some(n) => Ok(tl_core::split::stratified_sample(&ds.labels, &idx, n, 0)?),
        None => Ok(idx),
    }
}

/// Arguments of `tl fit`.
#[derive(clap::Args)]
pub(crate) struct FitArgs {
    /// Backbone whose features the head learns from.
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Labelled dataset.
    #[arg(long, default_value = "sentiment")]
    dataset: String,
    /// Split to train on (default: every item).
    #[arg(long)]
    split: Option<String>,
    /// A stratified sample of about this many rows (seed 0: the same rows in every command).
    #[arg(long)]
    limit: Option<usize>,
    /// logistic, linear-svm, knn, centroid or ridge.
    #[arg(long, default_value = "logistic")]
    head: String,
    /// The head's main hyperparameter: C (logistic, linear-svm), k (knn), alpha (ridge).
    #[arg(long, allow_negative_numbers = true)]
    param: Option<f64>,
    /// Choose the main hyperparameter by stratified 5-fold CV over the head's default grid.
    #[arg(long)]
    search: bool,
    /// Standardise features (fitted on the training rows).
    #[arg(long)]
    standardize: bool,
    /// L2-normalise feature rows.
    #[arg(long)]
    l2_normalize: bool,
    /// Project onto this many principal components.
    #[arg(long)]
    pca: Option<usize>,
    /// Weight classes inversely to their frequency.
    #[arg(long)]
    balanced: bool,
    /// Seed for randomised steps and CV folds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to save the classifier (JSON).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    table: TableArgs,
}

pub(crate) fn fit(registry: &Registry, a: &FitArgs) -> Result<()> {
    let mut head = HeadSpec::from_kind(&a.head).map_err(|e| UsageError(e.to_string()))?;
    if let Some(v) = a.param {
        head = head.with_main_param(v);
    }
    let config = HeadConfig {
        head,
        preprocess: Preprocess {
            l2_normalize: a.l2_normalize,
            standardize: a.standardize,
            pca: a.pca.map(Pca::Components),
        },
        class_weight: if a.balanced {
            ClassWeight::Balanced
        } else {
            ClassWeight::Uniform
        },
        seed: a.seed,
    };
    config.check().map_err(|e| UsageError(e.to_string()))?;
    crate::check_output_file(&a.out, "--out", &["json"])?;
    let ds = load_dataset(registry, &a.dataset, &a.table)?;
    let idx = selection(&ds, a.split.as_deref(), a.limit)?;
    let f = cached_features(registry, &a.model, &ds, &idx)?;
    let y: Vec<usize> = idx.iter().map(|&i| ds.labels[i]).collect();
    let config = if a.search {
        let g = tl_heads::grid_search(
            &config,
            &[],
            f.features.view(),
            &y,
            &ds.label_names,
            5,
            a.seed,
        )?;
        for row in &g.rows {
            out!(
                "cv        {} = {:<8} accuracy {:.2}% +- {:.2}",
                g.param,
                row.value,
                100.0 * row.mean,
                100.0 * row.std
            );
        }
        if !g.extended.is_empty() {
            let values: Vec<String> = g.extended.iter().map(f64::to_string).collect();
            out!(
                "note      the best value was at an end of the grid, so {} = {} were searched too",
                g.param,
                values.join(", ")
            );
        }
        out!("chosen    {} = {}", g.param, g.best_value);
        if let Some(edge) = &g.edge {
            out!("warning   {edge}");
        }
        g.best
    } else {
        config
    };
    let model = config.fit(f.features.view(), &y, &ds.label_names, Some(&f.fingerprint))?;
    for w in &model.warnings {
        out!("warning   {w}");
    }
    model.save(&a.out)?;
    out!(
        "saved     {} ({} head on {} rows of {}, {} classes, {}-d {} features)",
        a.out.display(),
        config.head.kind(),
        idx.len(),
        ds.name,
        model.classes.len(),
        model.features.dim,
        a.model
    );
    Ok(())
}

/// Arguments of `tl predict`.
#[derive(clap::Args)]
pub(crate) struct PredictArgs {
    /// A classifier saved by `tl fit`.
    #[arg(long)]
    classifier: PathBuf,
    /// The backbone it was trained on (default: the one the classifier names).
    #[arg(long)]
    model: Option<String>,
    /// Texts to classify (repeatable).
    #[arg(long, conflicts_with = "dataset")]
    text: Vec<String>,
    /// Image files to classify (repeatable), for a classifier on an image model.
    #[arg(long, conflicts_with_all = ["dataset", "text"])]
    image: Vec<PathBuf>,
    /// A dataset to classify instead.
    #[arg(long)]
    dataset: Option<String>,
    /// Its split.
    #[arg(long)]
    split: Option<String>,
    /// A stratified sample of about this many rows (seed 0: the same rows in every command).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    table: TableArgs,
}

/// The model whose manifest gives `fingerprint`, among the built-in and local ones.
fn model_named_by(registry: &Registry, fingerprint: &str) -> Option<String> {
    registry
        .iter()
        .find(|m| tl_backbone::manifest_fingerprint(m).as_deref() == Some(fingerprint))
        .map(|m| m.name.clone())
}

/// A saved classifier and the backbone it needs: `model` when given (checked against the
/// classifier), else the model whose fingerprint the classifier records.
fn load_classifier(
    registry: &Registry,
    path: &std::path::Path,
    model: Option<&str>,
) -> Result<(Classifier, Backbone)> {
    let clf = Classifier::load(path)?;
    let trained_on = clf
        .features
        .fingerprint
        .as_deref()
        .map(|f| (f, model_named_by(registry, f)));
    let model = match (model, &trained_on) {
        (Some(m), _) => m.to_string(),
        (None, Some((_, Some(name)))) => name.clone(),
        (None, Some((f, None))) => bail!(UsageError(format!(
            "{}: trained on features of fingerprint {f}, which no known model has; pass --model",
            path.display()
        ))),
        (None, None) => bail!(UsageError(format!(
            "{}: trained on features made without a backbone; tl predict needs one (--model)",
            path.display()
        ))),
    };
    let m = ensure_model(registry, &model)?;
    let backbone = Backbone::from_manifest(m, &Cache::from_env(), &ExecutionConfig::default())?;
    let meta = FeatureMeta {
        dim: backbone.dim(),
        fingerprint: Some(backbone.fingerprint().to_string()),
    };
    if clf.ensure_compatible(&meta).is_err() {
        let was = match &trained_on {
            Some((_, Some(name))) => name.clone(),
            Some((f, None)) => format!("an unknown model (fingerprint {f})"),
            None => "features made without a backbone".into(),
        };
        bail!(UsageError(format!(
            "{} was trained on {was} ({}-d), not on {model} ({}-d): predictions would be meaningless; pass --model {}",
            path.display(),
            clf.features.dim,
            backbone.dim(),
            match &trained_on {
                Some((_, Some(name))) => name.as_str(),
                _ => "<the model it was trained on>",
            }
        )));
    }
    Ok((clf, backbone))
}

pub(crate) fn predict(registry: &Registry, a: &PredictArgs) -> Result<()> {
    let (clf, backbone) = load_classifier(registry, &a.classifier, a.model.as_deref())?;
    let items: Vec<Item> = match &a.dataset {
        Some(name) => {
            let ds = load_dataset(registry, name, &a.table)?;
            let idx = selection(&ds, a.split.as_deref(), a.limit)?;
            idx.iter().map(|&i| ds.items[i].clone()).collect()
        }
        None if !a.image.is_empty() => {
            if let Some(p) = a.image.iter().find(|p| !p.is_file()) {
                bail!(UsageError(format!("--image {}: no such file", p.display())));
            }
            a.image.iter().cloned().map(Item::ImageFile).collect()
        }
        None if a.text.is_empty() => bail!(UsageError(
            "give --text or --image (repeatable), or --dataset".into()
        )),
        None => a.text.iter().cloned().map(Item::Text).collect(),
    };
    let out = embed_through_cache(&backbone, &items)?;
    let proba = clf.predict_proba(out.features.view())?;
    let pred = clf.predict(out.features.view())?;
    out!("row,label,probability");
    for (i, &p) in pred.iter().enumerate() {
        out!("{i},{},{:.4}", clf.label_names[p], proba[[i, p]]);
    }
    Ok(())
}

/// Arguments of `tl eval`.
#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// A classifier saved by `tl fit`.
    #[arg(long)]
    classifier: PathBuf,
    /// The backbone it was trained on (default: the one the classifier names).
    #[arg(long)]
    model: Option<String>,
    /// Labelled dataset to score on.
    #[arg(long)]
    dataset: String,
    /// Its split.
    #[arg(long)]
    split: Option<String>,
    /// A stratified sample of about this many rows (seed 0: the same rows in every command).
    #[arg(long)]
    limit: Option<usize>,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    #[command(flatten)]
    table: TableArgs,
}

pub(crate) fn eval(registry: &Registry, a: &EvalArgs) -> Result<()> {
    let (clf, backbone) = load_classifier(registry, &a.classifier, a.model.as_deref())?;
    let ds = load_dataset(registry, &a.dataset, &a.table)?;
    let idx = selection(&ds, a.split.as_deref(), a.limit)?;
    // Labels are matched by name, so a head trained on one dataset scores another with the
    // same label set (e.g. one sentiment domain on another).
    let names: Vec<&str> = idx
        .iter()
        .map(|&i| ds.label_names[ds.labels[i]].as_str())
        .collect();
    let truth = clf.encode_labels(&names)?;
    let items: Vec<Item> = idx.iter().map(|&i| ds.items[i].clone()).collect();
    let out = embed_through_cache(&backbone, &items)?;
    let pred = clf.predict(out.features.view())?;
    let proba = clf.predict_proba(out.features.view())?;
    let m = tl_core::metrics::evaluate(
        &truth,
        &pred,
        proba.as_standard_layout().as_slice(),
        &clf.label_names,
    );
    let acc = tl_core::metrics::bootstrap(truth.len(), a.bootstrap, 0, |rows| {
        tl_core::metrics::accuracy_on(&truth, &pred, rows)
    });
    out!("rows      {} of {}", truth.len(), ds.name);
    out!(
        "accuracy  {:.2}% [{:.2}, {:.2}]",
        100.0 * acc.estimate,
        100.0 * acc.low,
        100.0 * acc.high
    );
    out!("macro-F1  {:.2}%", 100.0 * m.macro_f1);
    out!("balanced  {:.2}%", 100.0 * m.balanced_accuracy);
    if let Some(l) = m.log_loss {
        out!("log loss  {l:.4}");
    }
    if let Some(e) = m.ece {
        out!("ECE       {e:.4}");
    }
    if let Some(auc) = m.roc_auc {
        out!("ROC-AUC   {auc:.4}");
    }
    for c in &m.per_class {
        out!(
            "class     {:<24} precision {:.3} recall {:.3} F1 {:.3} (n = {})",
            c.label,
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    Ok(())
}
