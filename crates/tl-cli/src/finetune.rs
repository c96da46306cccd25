//! `tl finetune`: fine-tune a text encoder on a labelled dataset, export it as a new
//! model, and compare it with frozen features + logistic regression on the same
//! held-out rows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig};
use tl_data::Item;
use tl_finetune::{FinetuneParams, RunOptions, Strategy, Threads};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

use crate::model::cached_features;
use crate::{TableArgs, UsageError, ensure_model, load_dataset};

/// Arguments of `tl finetune`.
#[derive(clap::Args)]
pub(crate) struct FinetuneArgs {
    /// Text model to start from (its manifest must declare trainable weights).
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Labelled text dataset: a built-in name, `sentiment`, or a table file.
    #[arg(long, default_value = "sentiment")]
    dataset: String,
    /// Name of the tuned model (then usable as `--model NAME` everywhere).
    #[arg(long)]
    name: String,
    /// `full` (every layer), `top:N` (the top N transformer layers) or `contrastive`
    /// (SetFit-style pairs, then `--head` on the tuned vectors).
    #[arg(long, default_value = "full")]
    strategy: String,
    /// Passes over the training rows.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true, default_value_t = 2e-5)]
    lr: f32,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Layer-wise learning-rate decay (1 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    layer_decay: f32,
    /// Share of steps warming the learning rate up.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    warmup: f32,
    /// Decoupled weight decay (not on biases and LayerNorm).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.01)]
    weight_decay: f32,
    /// Dropout on hidden states and attention.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    dropout: f32,
    /// Tokens per text (special tokens included).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Gradients are rescaled to at most this L2 norm (0 = no clipping).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    max_grad_norm: f32,
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
    let params = FinetuneParams {
        strategy,
        learning_rate: a.lr,
        layer_decay: a.layer_decay,
        batch_size: a.batch_size,
        epochs: a.epochs,
        warmup_fraction: a.warmup,
        weight_decay: a.weight_decay,
        dropout: a.dropout,
        max_length: a.max_length,
        max_grad_norm: a.max_grad_norm,
        validation_fraction: a.validation_fraction,
        patience: a.patience,
        pairs_per_item: a.pairs_per_item,
        seed: a.seed,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    params.check().map_err(|e| UsageError(e.to_string()))?;
    let head_spec = HeadSpec::from_kind(&a.head).map_err(|e| UsageError(e.to_string()))?;
    if a.head != "logistic" && strategy != Strategy::Contrastive {
        bail!(UsageError(format!(
            "--head {} applies to --strategy contrastive; full and top:N train their own linear layer",
            a.head
        )));
    }
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
    let ds = load_dataset(registry, &a.dataset, &a.table)?;
    let texts: Vec<String> = ds
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Text(t) => Ok(t.clone()),
            _ => Err(UsageError(format!(
                "{}: item {i} is not a text; tl finetune trains text encoders",
                ds.name
            ))),
        })
        .collect::<Result<_, _>>()?;
    let all: Vec<usize> = (0..ds.len()).collect();
    // The test rows depend on --split-seed alone: runs with other --seed or --shots
    // are scored on the same rows.
    let (train, test) =
        tl_data::split::stratified_split(&ds.labels, &all, a.test_fraction, a.split_seed)?;
    let train = match a.shots {
        Some(0) => bail!(UsageError("--shots must be at least 1".into())),
        Some(k) => tl_data::split::per_class_subsample(&ds.labels, &train, k, a.seed)?,
        None => train,
    };
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
    let f_train = cached_features(registry, &a.model, &ds, &train, 32, false)?;
    let f_test = cached_features(registry, &a.model, &ds, &test, 32, false)?;
    let frozen = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default())).fit(
        f_train.features.view(),
        &y_train,
        &ds.label_names,
        Some(&f_train.fingerprint),
    )?;
    let frozen_pred = frozen.predict(f_test.features.view())?;
    let frozen_acc =
        tl_eval::metrics::accuracy_on(&y_test, &frozen_pred, &(0..test.len()).collect::<Vec<_>>());
    out!(
        "before    {} frozen + logistic: accuracy {:.1}% ({:.1}s)",
        a.model,
        100.0 * frozen_acc,
        t.elapsed().as_secs_f64()
    );

    // After: fine-tune.
    let pre = tl_finetune::load_pretrained(base, &cache, ds.label_names.len())?;
    let tokenizer = tokenizers::Tokenizer::from_file(&pre.tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", pre.tokenizer.display()))?;
    let seqs = tl_finetune::tokenize(&tokenizer, &texts, params.max_length)?;
    let train_seqs: Vec<Vec<u32>> = train.iter().map(|&i| seqs[i].clone()).collect();
    let test_seqs: Vec<Vec<u32>> = test.iter().map(|&i| seqs[i].clone()).collect();
    let run_dir = cache.root().join("finetune").join(&a.name);
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
    // Each epoch is printed as it ends (a long run is never silent, terminal or not).
    let print_epoch = |e: &tl_finetune::EpochLog| {
        out!(
            "epoch {:<3} loss {:.4}{}  {:.1} sentences/s  ({:.1}s: forward {:.1}, backward {:.1}, optimizer {:.1})",
            e.epoch,
            e.train_loss,
            e.validation_accuracy
                .map(|v| format!("  validation {:.1}%", 100.0 * v))
                .unwrap_or_default(),
            e.sentences_per_second,
            e.seconds,
            e.forward_seconds,
            e.backward_seconds,
            e.optimizer_seconds
        );
    };
    let checkpoint = run_dir.join("checkpoint.safetensors");
    if a.resume && checkpoint.is_file() {
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
        done.iter().for_each(print_epoch);
    }
    let report = tl_finetune::finetune_with(
        &mut model,
        &train_seqs,
        &y_train,
        &params,
        &RunOptions {
            dir: Some(run_dir.clone()),
            resume: a.resume,
            progress: true,
            frozen_store: Some(tl_features::Store::from_cache(&cache)),
        },
        &mut |e, _| print_epoch(e),
    )?;
    let pool = rayon_pool(params.threads)?;
    let th = Threads(params.threads);

    // Export: ONNX + tokenizer + weights + manifest; check ONNX Runtime agrees.
    let exported = tl_finetune::export(
        &model,
        &pre,
        &cache,
        &a.name,
        &format!(
            "{} fine-tuned on {} ({} strategy, {} epochs, lr {})",
            a.model, ds.name, params.strategy, params.epochs, params.learning_rate
        ),
        &format!("tl finetune --model {} --name {}", a.model, a.name),
    )?;
    let backbone = Backbone::from_manifest(&exported.manifest, &cache, &ExecutionConfig::default())
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
    let ours = pool.install(|| {
        tl_finetune::sentence_vectors(
            &model,
            &check
                .iter()
                .map(|&i| test_seqs[i].clone())
                .collect::<Vec<_>>(),
            32,
            th,
        )
    });
    let worst = onnx
        .iter()
        .zip(&ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // f32::max skips NaN: check finiteness on its own.
    let finite = onnx.iter().chain(&ours).all(|v| v.is_finite());
    if !finite || worst >= 1e-3 {
        bail!(
            "the exported ONNX model differs from the trained one by {worst} (more than 1e-3) on test rows; {} is not usable",
            exported.dir.display()
        );
    }

    // The head on the tuned model: the jointly trained linear layer, or (contrastive) a
    // logistic regression fitted on the tuned vectors of the training rows.
    let h = model.config.hidden_size;
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
                &y_train,
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
    let x_test =
        as_matrix(pool.install(|| tl_finetune::sentence_vectors(&model, &test_seqs, 64, th)));
    let tuned_pred = head.predict(x_test.view())?;
    let head_path = run_dir.join("classifier.json");
    head.save(&head_path)?;

    let all_test: Vec<usize> = (0..test.len()).collect();
    let tuned_acc = tl_eval::metrics::accuracy_on(&y_test, &tuned_pred, &all_test);
    let ci = |pred: &[usize]| {
        tl_eval::metrics::bootstrap(test.len(), 1000, a.seed, |rows| {
            tl_eval::metrics::accuracy_on(&y_test, pred, rows)
        })
    };
    let (ci_frozen, ci_tuned) = (ci(&frozen_pred), ci(&tuned_pred));
    let diff = tl_eval::metrics::paired_accuracy_difference(
        &y_test,
        &tuned_pred,
        &frozen_pred,
        1000,
        a.seed,
    );
    let pct = |v: f64| 100.0 * v;
    for (name, acc, ci) in [
        (
            format!("{} frozen + logistic", a.model),
            frozen_acc,
            &ci_frozen,
        ),
        (
            format!("{} ({})", a.name, params.strategy),
            tuned_acc,
            &ci_tuned,
        ),
    ] {
        out!(
            "result    {name:<34} accuracy {:.1}% [{:.1}, {:.1}]",
            pct(acc),
            pct(ci.low),
            pct(ci.high)
        );
    }
    let d = tl_eval::metrics::Interval {
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
    let summary = serde_json::json!({
        "model": a.model,
        "name": a.name,
        "dataset": ds.name,
        "split_seed": a.split_seed,
        "seed": a.seed,
        "shots": a.shots,
        "train_rows": train.len(),
        "test_rows": test.len(),
        // Through text, so f32 settings read 0.1 rather than 0.10000000149011612.
        "params": serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&params)?)?,
        "epochs": report.epochs,
        "best_epoch": report.best_epoch,
        "frozen_accuracy": frozen_acc,
        "tuned_accuracy": tuned_acc,
        "difference_points": { "estimate": d.estimate, "low": d.low, "high": d.high },
        "onnx_max_abs_difference": worst,
        "fingerprint": backbone.fingerprint(),
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
        exported.dir.display(),
        exported.manifest_path.display()
    );
    out!(
        "head      {}  (tl predict --model {} --classifier {} --text \"...\")",
        head_path.display(),
        a.name,
        head_path.display()
    );
    out!("done      in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn rayon_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the thread pool")
}
