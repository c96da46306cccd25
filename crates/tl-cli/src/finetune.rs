//! `tl finetune`: fine-tune a text encoder or an image network on a labelled dataset,
//! export it as a new model, and compare it with frozen features + logistic regression
//! on the same held-out rows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use tl_assets::manifest::Modality;
use tl_assets::{Cache, Manifest, Registry};
use tl_backbone::{Backbone, ExecutionConfig};
use tl_data::{Dataset, Item};
use tl_finetune::{Augment, BnMode, FinetuneParams, ImageParams, RunOptions, Strategy, Threads};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

use crate::model::cached_features;
use crate::{TableArgs, UsageError, ensure_model, load_dataset};

/// Arguments of `tl finetune`.
#[derive(clap::Args)]
pub(crate) struct FinetuneArgs {
    /// Model to start from (its manifest must declare trainable weights): a text
    /// encoder such as all-minilm-l6-v2, or mobilenetv2 / efficientnet-lite0.
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Labelled dataset: a built-in name (`sentiment`, `mnist`, `optdigits`, ...), a
    /// table file or an image folder.
    #[arg(long, default_value = "sentiment")]
    dataset: String,
    /// Name of the tuned model (then usable as `--model NAME` everywhere).
    #[arg(long)]
    name: String,
    /// `full` (every layer), `top:N` (the top N transformer layers or image blocks),
    /// `head` (the classifier alone) or, for text, `contrastive` (SetFit-style pairs,
    /// then `--head` on the tuned vectors).
    #[arg(long, default_value = "full")]
    strategy: String,
    /// Passes over the training rows.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (default: 2e-5 for text, 5e-4 for images).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Items per step (default: 16 texts, 32 images).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Layer-wise learning-rate decay (1 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    layer_decay: f32,
    /// Share of steps warming the learning rate up.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    warmup: f32,
    /// Decoupled weight decay (not on biases and LayerNorm).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.01)]
    weight_decay: f32,
    /// Dropout on hidden states and attention (text, default 0.1) or on the pooled
    /// features (images, default 0.2).
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f32>,
    /// Tokens per text (special tokens included).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Gradients are rescaled to at most this L2 norm (0 = no clipping; default 1 for
    /// text, 5 for images).
    #[arg(long, allow_negative_numbers = true)]
    max_grad_norm: Option<f32>,
    /// Images: input side in pixels (default: the model's, 224). Small images train
    /// many times faster at a small resolution (MNIST: 64 or 96).
    #[arg(long)]
    resolution: Option<usize>,
    /// Images: BatchNorm while training, `frozen` (pretrained statistics) or `batch`.
    #[arg(long, default_value = "frozen")]
    batch_norm: String,
    /// Images: augmentation of training images, `none` or comma-separated
    /// `crop=MIN_AREA`, `rotate=DEGREES`, `jitter=J`, `flip` (default
    /// `crop=0.8,rotate=10,jitter=0.2`; no flip, digits and text must not be mirrored).
    #[arg(long)]
    augment: Option<String>,
    /// Cap the training rows (stratified; the dataset's own train split when it has one).
    #[arg(long)]
    train_rows: Option<usize>,
    /// Cap the test rows (stratified; the dataset's own test split when it has one).
    #[arg(long)]
    test_rows: Option<usize>,
    /// Share of the training rows held out for early stopping (0 = none).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    validation_fraction: f32,
    /// Epochs without a better validation accuracy before stopping (0 = never).
    #[arg(long, default_value_t = 0)]
    patience: usize,
    /// `contrastive`: the head fitted on the tuned vectors afterwards (logistic,
    /// linear-svm, knn, centroid or ridge, default hyperparameters).
    #[arg(long, default_value = "logistic")]
    head: String,
    /// `contrastive`: pairs drawn per training row (half of the same class).
    #[arg(long, default_value_t = 4)]
    pairs_per_item: usize,
    /// Few-shot: train on K rows per class of the training part (both the frozen
    /// baseline and the tuned model; the test rows stay the same).
    #[arg(long)]
    shots: Option<usize>,
    /// Seed of the stratified test split (runs that share it are scored on the same rows).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Share of the rows held out as the test set (stratified; never trained on).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.3)]
    test_fraction: f64,
    /// Seed of the few-shot draw, shuffling, pairs and dropout (the test split has its
    /// own, `--split-seed`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue an interrupted run of the same name and settings from its last
    /// checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace an existing tuned model of this name.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    table: TableArgs,
}

pub(crate) fn finetune(registry: &Registry, a: &FinetuneArgs) -> Result<()> {
    let start = Instant::now();
    let strategy = Strategy::parse(&a.strategy).map_err(|e| UsageError(e.to_string()))?;
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        bail!(UsageError(format!(
            "--test-fraction must be in (0, 1), got {}",
            a.test_fraction
        )));
    }
    let cache = Cache::from_env();
    if registry.get(&a.name).is_ok() && !(a.force || a.resume) {
        let local = cache.local_manifests().join(format!("{}.toml", a.name));
        if local.is_file() {
            bail!(UsageError(format!(
                "a model named {} exists ({}); pass --force to replace it or choose another --name",
                a.name,
                local.display()
            )));
        }
        bail!(UsageError(format!(
            "{} is a built-in asset name; choose another --name",
            a.name
        )));
    }
    let base = ensure_model(registry, &a.model)?;
    tl_finetune::check_trainable(base)?;
    let image = base
        .model
        .as_ref()
        .is_some_and(|m| m.modality == Modality::Image);
    let text_only = [
        ("--max-length", a.max_length != 128),
        ("--pairs-per-item", a.pairs_per_item != 4),
        ("--head", a.head != "logistic"),
    ];
    let image_only = [
        ("--resolution", a.resolution.is_some()),
        ("--batch-norm", a.batch_norm != "frozen"),
        ("--augment", a.augment.is_some()),
    ];
    let (wrong, kind) = if image {
        (&text_only, "text models")
    } else {
        (&image_only, "image models")
    };
    if let Some((flag, _)) = wrong.iter().find(|(_, set)| *set) {
        bail!(UsageError(format!(
            "{flag} applies to {kind}; {} is {}",
            a.model,
            if image {
                "an image model"
            } else {
                "a text model"
            }
        )));
    }
    // Settings are checked before any data is loaded or embedded.
    let plan = if image {
        Plan::Image(image_params(a, strategy)?)
    } else {
        Plan::Text(text_params(a, strategy)?)
    };
    let ds = load_dataset(registry, &a.dataset, &a.table)?;
    let (train, test) = rows(&ds, a)?;
    let y_train: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
    let y_test: Vec<usize> = test.iter().map(|&i| ds.labels[i]).collect();
    out!(
        "data      {}: {} train{} / {} test rows, {} classes (stratified, split seed {}; run seed {})",
        ds.name,
        train.len(),
        a.shots
            .map(|k| format!(" ({k} per class)"))
            .unwrap_or_default(),
        test.len(),
        ds.label_names.len(),
        a.split_seed,
        a.seed
    );

    // Before: frozen features + logistic regression, through the feature cache.
    let t = Instant::now();
    let f_train = cached_features(registry, &a.model, &ds, &train)?;
    let f_test = cached_features(registry, &a.model, &ds, &test)?;
    let frozen = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default())).fit(
        f_train.features.view(),
        &y_train,
        &ds.label_names,
        Some(&f_train.fingerprint),
    )?;
    let frozen_pred = frozen.predict(f_test.features.view())?;
    let frozen_acc =
        tl_core::metrics::accuracy_on(&y_test, &frozen_pred, &(0..test.len()).collect::<Vec<_>>());
    out!(
        "before    {} frozen + logistic: accuracy {:.1}% ({:.1}s)",
        a.model,
        100.0 * frozen_acc,
        t.elapsed().as_secs_f64()
    );

    // Images also get the no-pretraining level: raw pixels + logistic regression.
    let raw = if image {
        let t = Instant::now();
        let fit = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default())).fit(
            tl_eval::raw_pixels(&ds, &train)?.view(),
            &y_train,
            &ds.label_names,
            None,
        )?;
        let pred = fit.predict(tl_eval::raw_pixels(&ds, &test)?.view())?;
        let acc =
            tl_core::metrics::accuracy_on(&y_test, &pred, &(0..test.len()).collect::<Vec<_>>());
        out!(
            "baseline  raw pixels + logistic: accuracy {:.1}% ({:.1}s)",
            100.0 * acc,
            t.elapsed().as_secs_f64()
        );
        Some((pred, acc))
    } else {
        None
    };

    let run_dir = cache.root().join("finetune").join(&a.name);
    let rows = Rows {
        train: &train,
        test: &test,
        y_train: &y_train,
    };
    let tuned = match plan {
        Plan::Image(p) => tune_image(base, &cache, &ds, &rows, p, a, &run_dir)?,
        Plan::Text(p) => tune_text(base, &cache, &ds, &rows, p, a, &run_dir)?,
    };
    let head_path = run_dir.join("classifier.json");
    tuned.head.save(&head_path)?;
    let tuned_pred = tuned.predictions;

    let all_test: Vec<usize> = (0..test.len()).collect();
    let tuned_acc = tl_core::metrics::accuracy_on(&y_test, &tuned_pred, &all_test);
    let ci = |pred: &[usize]| {
        tl_core::metrics::bootstrap(test.len(), 1000, a.seed, |rows| {
            tl_core::metrics::accuracy_on(&y_test, pred, rows)
        })
    };
    let (ci_frozen, ci_tuned) = (ci(&frozen_pred), ci(&tuned_pred));
    let diff = tl_core::metrics::paired_accuracy_difference(
        &y_test,
        &tuned_pred,
        &frozen_pred,
        1000,
        a.seed,
    );
    let pct = |v: f64| 100.0 * v;
    let ci_raw = raw.as_ref().map(|(p, _)| ci(p));
    let mut lines = Vec::new();
    if let (Some((_, acc)), Some(ci)) = (&raw, &ci_raw) {
        lines.push(("raw pixels + logistic".to_string(), *acc, ci));
    }
    lines.push((
        format!("{} frozen + logistic", a.model),
        frozen_acc,
        &ci_frozen,
    ));
    lines.push((format!("{} ({})", a.name, strategy), tuned_acc, &ci_tuned));
    let width = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
    for (name, acc, ci) in lines {
        out!(
            "result    {name:<width$} accuracy {:.1}% [{:.1}, {:.1}]",
            pct(acc),
            pct(ci.low),
            pct(ci.high)
        );
    }
    let d = tl_core::metrics::Interval {
        estimate: pct(diff.estimate),
        low: pct(diff.low),
        high: pct(diff.high),
    };
    out!(
        "verdict   {}",
        tl_eval::verdict(
            &format!("fine-tuned {}", a.name),
            &format!("frozen {}", a.model),
            &d,
            "fine-tuning"
        )
    );
    let over_raw = raw.as_ref().map(|(raw_pred, _)| {
        let diff = tl_core::metrics::paired_accuracy_difference(
            &y_test,
            &tuned_pred,
            raw_pred,
            1000,
            a.seed,
        );
        let d = tl_core::metrics::Interval {
            estimate: pct(diff.estimate),
            low: pct(diff.low),
            high: pct(diff.high),
        };
        out!(
            "verdict   {}",
            tl_eval::verdict(
                &format!("fine-tuned {}", a.name),
                "raw pixels",
                &d,
                "transfer learning"
            )
        );
        d
    });
    let report = &tuned.report;
    let worst = tuned.onnx_difference;
    let summary = serde_json::json!({
        "model": a.model,
        "name": a.name,
        "dataset": ds.name,
        "split_seed": a.split_seed,
        "seed": a.seed,
        "shots": a.shots,
        "train_rows": train.len(),
        "test_rows": test.len(),
        "params": tuned.params,
        "epochs": report.epochs,
        "best_epoch": report.best_epoch,
        "frozen_accuracy": frozen_acc,
        "tuned_accuracy": tuned_acc,
        "difference_points": { "estimate": d.estimate, "low": d.low, "high": d.high },
        "raw_pixels_accuracy": raw.as_ref().map(|(_, acc)| acc),
        "difference_over_raw_pixels_points": over_raw.map(|d| serde_json::json!({ "estimate": d.estimate, "low": d.low, "high": d.high })),
        "onnx_max_abs_difference": worst,
        "fingerprint": tuned.fingerprint,
        "seconds": start.elapsed().as_secs_f64(),
    });
    std::fs::write(
        run_dir.join("report.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("writing {}", run_dir.join("report.json").display()))?;
    out!(
        "model     {} -> {} (ONNX Runtime matches the engine to {worst:.1e}); manifest {}",
        a.name,
        tuned.exported.dir.display(),
        tuned.exported.manifest_path.display()
    );
    let input = if image {
        "--image FILE"
    } else {
        "--text \"...\""
    };
    out!(
        "head      {}  (tl predict --model {} --classifier {} {input})",
        head_path.display(),
        a.name,
        head_path.display()
    );
    out!("done      in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The training and test rows. The test rows depend on `--split-seed` (and the
/// dataset's own test split) alone: runs with other `--seed` or `--shots` are scored on
/// the same rows.
fn rows(ds: &Dataset, a: &FinetuneArgs) -> Result<(Vec<usize>, Vec<usize>)> {
    for (flag, v) in [("--train-rows", a.train_rows), ("--test-rows", a.test_rows)] {
        if v == Some(0) {
            bail!(UsageError(format!(
                "{flag} 0 keeps nothing; leave it out to keep all rows"
            )));
        }
    }
    // A cap keeps a stratified share, as experiment files' `subsample` does (same salts,
    // so `--train-rows 10000 --test-rows 2000` gives experiments/mnist.toml's rows).
    let cap = |idx: Vec<usize>, n: Option<usize>, salt: u64| -> Result<Vec<usize>> {
        Ok(match n {
            Some(n) => tl_core::split::stratified_sample(&ds.labels, &idx, n, a.split_seed ^ salt)?,
            None => idx,
        })
    };
    let (train, test) = match (ds.splits.get("train"), ds.splits.get("test")) {
        (Some(tr), Some(te)) => (
            cap(tr.clone(), a.train_rows, 1)?,
            cap(te.clone(), a.test_rows, 2)?,
        ),
        _ => {
            let all: Vec<usize> = (0..ds.len()).collect();
            let (train, test) =
                tl_core::split::stratified_split(&ds.labels, &all, a.test_fraction, a.split_seed)?;
            (cap(train, a.train_rows, 1)?, cap(test, a.test_rows, 2)?)
        }
    };
    let train = match a.shots {
        Some(0) => bail!(UsageError("--shots must be at least 1".into())),
        Some(k) => tl_core::split::per_class_subsample(&ds.labels, &train, k, a.seed)?,
        None => train,
    };
    Ok((train, test))
}

/// The checked settings of a text or an image run.
enum Plan {
    Text((FinetuneParams, HeadSpec)),
    Image(ImageParams),
}

/// The rows a tuning run sees.
struct Rows<'a> {
    train: &'a [usize],
    test: &'a [usize],
    y_train: &'a [usize],
}

/// What a tuning run hands to the summary.
struct Tuned {
    head: tl_heads::Classifier,
    predictions: Vec<usize>,
    report: tl_finetune::FinetuneReport,
    params: serde_json::Value,
    exported: tl_finetune::Exported,
    onnx_difference: f32,
    fingerprint: String,
}

fn threads(a: &FinetuneArgs) -> usize {
    a.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Hyperparameters as JSON through text, so f32 settings read 0.1 rather than
/// 0.10000000149011612.
fn params_json(p: serde_json::Result<String>) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&p?)?)
}

/// Each epoch is printed as it ends (a long run is never silent, terminal or not).
fn print_epoch(e: &tl_finetune::EpochLog, unit: &str) {
    out!(
        "epoch {:<3} loss {:.4}{}  {:.1} {unit}/s  ({:.1}s: forward {:.1}, backward {:.1}, optimizer {:.1})",
        e.epoch,
        e.train_loss,
        e.validation_text(),
        e.sentences_per_second,
        e.seconds,
        e.forward_seconds,
        e.backward_seconds,
        e.optimizer_seconds
    );
}

/// On `--resume`, prints the epochs the checkpoint already holds.
fn print_resumed(run_dir: &std::path::Path, resume: bool, unit: &str) {
    let checkpoint = run_dir.join("checkpoint.safetensors");
    if resume && checkpoint.is_file() {
        let done: Vec<tl_finetune::EpochLog> = std::fs::read_to_string(run_dir.join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        out!(
            "resumed   from {} ({} epochs done)",
            checkpoint.display(),
            done.len()
        );
        done.iter().for_each(|e| print_epoch(e, unit));
    }
}

/// The largest difference between two feature matrices, or an error when the exported
/// model is unusable (a NaN, or more than `tolerance`).
fn check_export(onnx: &[f32], ours: &[f32], tolerance: f32, dir: &std::path::Path) -> Result<f32> {
    let worst = onnx
        .iter()
        .zip(ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // f32::max skips NaN: check finiteness on its own.
    let finite = onnx.iter().chain(ours).all(|v| v.is_finite());
    if !finite || worst >= tolerance {
        bail!(
            "the exported ONNX model differs from the trained one by {worst} (more than {tolerance}) on test rows; {} is not usable",
            dir.display()
        );
    }
    Ok(worst)
}

/// The text hyperparameters of the arguments, checked.
fn text_params(a: &FinetuneArgs, strategy: Strategy) -> Result<(FinetuneParams, HeadSpec)> {
    let params = FinetuneParams {
        strategy,
        learning_rate: a.lr.unwrap_or(2e-5),
        layer_decay: a.layer_decay,
        batch_size: a.batch_size.unwrap_or(16),
        epochs: a.epochs,
        warmup_fraction: a.warmup,
        weight_decay: a.weight_decay,
        dropout: a.dropout.unwrap_or(0.1),
        max_length: a.max_length,
        max_grad_norm: a.max_grad_norm.unwrap_or(1.0),
        validation_fraction: a.validation_fraction,
        patience: a.patience,
        pairs_per_item: a.pairs_per_item,
        seed: a.seed,
        threads: threads(a),
    };
    params.check().map_err(|e| UsageError(e.to_string()))?;
    let head_spec = HeadSpec::from_kind(&a.head).map_err(|e| UsageError(e.to_string()))?;
    if a.head != "logistic" && strategy != Strategy::Contrastive {
        bail!(UsageError(format!(
            "--head {} applies to --strategy contrastive; full, top:N and head train their own linear layer",
            a.head
        )));
    }
    Ok((params, head_spec))
}

fn tune_text(
    base: &Manifest,
    cache: &Cache,
    ds: &Dataset,
    rows: &Rows,
    (params, head_spec): (FinetuneParams, HeadSpec),
    a: &FinetuneArgs,
    run_dir: &std::path::Path,
) -> Result<Tuned> {
    let texts: Vec<String> = ds
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Text(t) => Ok(t.clone()),
            _ => Err(UsageError(format!(
                "{}: item {i} is not a text; {} is a text model",
                ds.name, a.model
            ))),
        })
        .collect::<Result<_, _>>()?;
    let (train, test) = (rows.train, rows.test);
    let pre = tl_finetune::load_pretrained(base, cache, ds.label_names.len())?;
    let tokenizer = tokenizers::Tokenizer::from_file(&pre.tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", pre.tokenizer.display()))?;
    let seqs = tl_finetune::tokenize(&tokenizer, &texts, params.max_length)?;
    let train_seqs: Vec<Vec<u32>> = train.iter().map(|&i| seqs[i].clone()).collect();
    let test_seqs: Vec<Vec<u32>> = test.iter().map(|&i| seqs[i].clone()).collect();
    let mut model = pre.model.clone();
    out!(
        "finetune  {} ({} parameters) strategy {}, {} epochs, lr {}, batch {}, {} threads; log {}",
        a.model,
        model.params.len(),
        params.strategy,
        params.epochs,
        params.learning_rate,
        params.batch_size,
        params.threads,
        run_dir.join("log.jsonl").display()
    );
    print_resumed(run_dir, a.resume, "sentences");
    let report = tl_finetune::finetune_with(
        &mut model,
        &train_seqs,
        rows.y_train,
        &params,
        &RunOptions {
            dir: Some(run_dir.to_path_buf()),
            resume: a.resume,
            progress: true,
            frozen_store: Some(tl_features::Store::from_cache(cache)),
        },
        &mut |e, _| print_epoch(e, "sentences"),
    )?;
    let pool = rayon_pool(params.threads)?;
    let th = Threads(params.threads);

    // Export: ONNX + tokenizer + weights + manifest; check ONNX Runtime agrees.
    let exported = tl_finetune::export(
        &model,
        &pre,
        cache,
        &a.name,
        &format!(
            "{} fine-tuned on {} ({} strategy, {} epochs, lr {})",
            a.model, ds.name, params.strategy, params.epochs, params.learning_rate
        ),
        &format!("tl finetune --model {} --name {}", a.model, a.name),
    )?;
    let backbone = Backbone::from_manifest(&exported.manifest, cache, &ExecutionConfig::default())
        .context("opening the exported model with ONNX Runtime")?;
    let check: Vec<usize> = (0..test.len().min(32)).collect();
    let onnx = backbone
        .embed_texts(
            &check
                .iter()
                .map(|&i| texts[test[i]].clone())
                .collect::<Vec<_>>(),
            tl_backbone::OnError::Fail,
        )?
        .features;
    // The engine's vectors of every test row, computed once: the first rows check the
    // export, all of them are scored below.
    let h = model.config.hidden_size;
    let test_vectors = pool.install(|| tl_finetune::sentence_vectors(&model, &test_seqs, 64, th));
    let worst = check_export(
        onnx.as_slice().unwrap_or(&[]),
        &test_vectors[..check.len() * h],
        1e-3,
        &exported.dir,
    )?;

    // The head on the tuned model: the jointly trained linear layer, or (contrastive) a
    // logistic regression fitted on the tuned vectors of the training rows.
    let as_matrix = |v: Vec<f32>| {
        ndarray::Array2::from_shape_vec((v.len() / h, h), v).expect("rows of width h")
    };
    let head = match params.strategy {
        Strategy::Contrastive => {
            let xt = as_matrix(
                pool.install(|| tl_finetune::sentence_vectors(&model, &train_seqs, 64, th)),
            );
            HeadConfig::new(head_spec.clone()).fit(
                xt.view(),
                rows.y_train,
                &ds.label_names,
                Some(backbone.fingerprint()),
            )?
        }
        _ => tl_finetune::head_classifier(
            &model,
            &ds.label_names,
            backbone.fingerprint(),
            report.train_rows,
        )?,
    };
    let x_test = as_matrix(test_vectors);
    let predictions = head.predict(x_test.view())?;
    Ok(Tuned {
        head,
        predictions,
        report,
        params: params_json(serde_json::to_string(&params))?,
        exported,
        onnx_difference: worst,
        fingerprint: backbone.fingerprint().to_string(),
    })
}

/// Parses `--augment`: `none`, or comma-separated `crop=A`, `rotate=D`, `jitter=J`,
/// `flip`; unnamed settings keep their defaults.
fn parse_augment(spec: Option<&str>) -> Result<Augment> {
    let Some(spec) = spec else {
        return Ok(Augment::default());
    };
    if spec == "none" {
        return Ok(Augment::none());
    }
    let mut a = Augment::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let num = || -> Result<f32> {
            value
                .parse::<f32>()
                .map_err(|_| UsageError(format!("--augment {part}: expected {key}=NUMBER")).into())
        };
        match key {
            "crop" => a.crop_scale = num()?,
            "rotate" => a.rotation = num()?,
            "jitter" => a.color_jitter = num()?,
            "flip" if value.is_empty() => a.flip = true,
            "noflip" if value.is_empty() => a.flip = false,
            _ => bail!(UsageError(format!(
                "--augment {part}: expected none, crop=MIN_AREA, rotate=DEGREES, jitter=J or flip"
            ))),
        }
    }
    Ok(a)
}

/// The image hyperparameters of the arguments, checked.
fn image_params(a: &FinetuneArgs, strategy: Strategy) -> Result<ImageParams> {
    let batch_norm = match a.batch_norm.as_str() {
        "frozen" => BnMode::Frozen,
        "batch" => BnMode::Batch,
        other => bail!(UsageError(format!(
            "--batch-norm {other}: expected frozen or batch"
        ))),
    };
    let params = ImageParams {
        strategy,
        learning_rate: a.lr.unwrap_or(5e-4),
        layer_decay: a.layer_decay,
        batch_size: a.batch_size.unwrap_or(32),
        epochs: a.epochs,
        warmup_fraction: a.warmup,
        weight_decay: a.weight_decay,
        dropout: a.dropout.unwrap_or(0.2),
        max_grad_norm: a.max_grad_norm.unwrap_or(5.0),
        resolution: a.resolution,
        batch_norm,
        augment: parse_augment(a.augment.as_deref())?,
        validation_fraction: a.validation_fraction,
        patience: a.patience,
        seed: a.seed,
        threads: threads(a),
    };
    params.check().map_err(|e| UsageError(e.to_string()))?;
    Ok(params)
}

fn tune_image(
    base: &Manifest,
    cache: &Cache,
    ds: &Dataset,
    rows: &Rows,
    params: ImageParams,
    a: &FinetuneArgs,
    run_dir: &std::path::Path,
) -> Result<Tuned> {
    let images = |idx: &[usize]| -> Result<Vec<tl_backbone::ImageInput>> {
        idx.iter()
            .map(|&i| {
                tl_features::image_input(&ds.items[i]).ok_or_else(|| {
                    UsageError(format!(
                        "{}: item {i} is a text; {} is an image model",
                        ds.name, a.model
                    ))
                    .into()
                })
            })
            .collect()
    };
    let (train_x, test_x) = (images(rows.train)?, images(rows.test)?);
    let pre = tl_finetune::load_pretrained_image(base, cache, ds.label_names.len(), a.seed)?;
    let spec = tl_finetune::vision::spec_at(&pre.spec, params.resolution);
    let resolution = spec.size as usize;
    let mut net = pre.model.clone();
    out!(
        "finetune  {} ({} parameters) strategy {}, {} epochs, lr {}, batch {}, {resolution} px, BatchNorm {}, augment {}, {} threads; log {}",
        a.model,
        net.parameter_count(),
        params.strategy,
        params.epochs,
        params.learning_rate,
        params.batch_size,
        a.batch_norm,
        a.augment
            .as_deref()
            .unwrap_or("crop=0.8,rotate=10,jitter=0.2"),
        params.threads,
        run_dir.join("log.jsonl").display()
    );
    print_resumed(run_dir, a.resume, "images");
    let report = tl_finetune::finetune_images(
        &mut net,
        &train_x,
        rows.y_train,
        &pre.spec,
        &params,
        &RunOptions {
            dir: Some(run_dir.to_path_buf()),
            resume: a.resume,
            progress: true,
            frozen_store: Some(tl_features::Store::from_cache(cache)),
        },
        &mut |e, _| print_epoch(e, "images"),
    )?;
    let pool = rayon_pool(params.threads)?;
    let th = Threads(params.threads);
    let exported = tl_finetune::export_image(
        &net,
        &pre,
        resolution,
        cache,
        &a.name,
        &format!(
            "{} fine-tuned on {} ({} strategy, {} epochs, lr {}, {resolution} px)",
            a.model, ds.name, params.strategy, params.epochs, params.learning_rate
        ),
        &format!("tl finetune --model {} --name {}", a.model, a.name),
    )?;
    let backbone = Backbone::from_manifest(&exported.manifest, cache, &ExecutionConfig::default())
        .context("opening the exported model with ONNX Runtime")?;
    let check = &test_x[..test_x.len().min(32)];
    let onnx = backbone
        .embed_images(check, tl_backbone::OnError::Fail)?
        .features;
    // The engine's features of every test image, computed once: the first check the
    // export, all of them are scored below.
    let feats = pool.install(|| tl_finetune::image_features(&net, &test_x, &spec, 64, th))?;
    let worst = check_export(
        onnx.as_slice().unwrap_or(&[]),
        &feats[..check.len() * net.features],
        1e-3,
        &exported.dir,
    )?;
    let head = tl_finetune::image_head_classifier(
        &net,
        &ds.label_names,
        backbone.fingerprint(),
        report.train_rows,
    )?;
    let x_test = ndarray::Array2::from_shape_vec((test_x.len(), net.features), feats)
        .expect("rows of the feature width");
    let predictions = head.predict(x_test.view())?;
    Ok(Tuned {
        head,
        predictions,
        report,
        params: params_json(serde_json::to_string(&params))?,
        exported,
        onnx_difference: worst,
        fingerprint: backbone.fingerprint().to_string(),
    })
}

fn rayon_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the thread pool")
}
