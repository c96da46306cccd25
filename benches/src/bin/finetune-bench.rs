//! The Rust side of the fine-tuning benchmark, and the writer of the workload both sides
//! read (`tools/bench/finetune_torch.py` is the PyTorch side).
//!
//! `finetune-bench prepare OUT.json [--rows N] [--epochs E] [--strategy S]`: the pooled
//! sentiment sentences, a stratified 70/30 split (seed 0), token ids, and the batches of
//! every step as tl-finetune will draw them.
//! `finetune-bench run OUT.json [--threads T]`: fine-tunes all-MiniLM-L6-v2 on them and
//! prints one JSON object (the same fields as the Python side).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tl_assets::{Cache, Registry};
use tl_benches::arg;
use tl_finetune::{FinetuneParams, RunOptions, Strategy, Threads};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: finetune-bench prepare|run WORKLOAD.json [--rows N] [--epochs E] [--strategy S] [--threads T]";
    let cmd = args.get(1).context(usage)?;
    let path = std::path::PathBuf::from(args.get(2).context(usage)?);
    match cmd.as_str() {
        "prepare" => prepare(&path, &args),
        "run" => run(&path, &args),
        _ => bail!(usage),
    }
}

fn params(w: &Value) -> Result<FinetuneParams> {
    Ok(serde_json::from_value(w["params"].clone())?)
}

fn prepare(path: &std::path::Path, args: &[String]) -> Result<()> {
    let registry = Registry::builtin()?;
    let cache = Cache::from_env();
    let mut items = Vec::new();
    let mut labels = Vec::new();
    for d in ["sentiment-amazon", "sentiment-imdb", "sentiment-yelp"] {
        let ds = tl_data::load_builtin(registry.get(d)?, &cache)?;
        for (item, &y) in ds.items.iter().zip(&ds.labels) {
            if let tl_data::Item::Text(t) = item {
                items.push(t.clone());
                labels.push(y);
            }
        }
    }
    let rows: usize = arg(args, "--rows").map_or(Ok(items.len()), |v| v.parse())?;
    let all: Vec<usize> = (0..items.len()).collect();
    let keep = if rows < items.len() {
        tl_core::split::stratified_split(&labels, &all, 1.0 - rows as f64 / items.len() as f64, 1)?
            .0
    } else {
        all
    };
    let (train, test) = tl_core::split::stratified_split(&labels, &keep, 0.3, 0)?;
    let m = registry.get("all-minilm-l6-v2")?;
    let pre = tl_finetune::load_pretrained(m, &cache, 2)?;
    let tok =
        tokenizers::Tokenizer::from_file(&pre.tokenizer).map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = FinetuneParams {
        epochs: arg(args, "--epochs").map_or(Ok(3), |v| v.parse())?,
        strategy: Strategy::parse(&arg(args, "--strategy").unwrap_or_else(|| "full".into()))?,
        threads: 2,
        ..FinetuneParams::default()
    };
    let ids = |rows: &[usize]| -> Result<Vec<Vec<u32>>> {
        let texts: Vec<String> = rows.iter().map(|&i| items[i].clone()).collect();
        Ok(tl_finetune::tokenize(&tok, &texts, p.max_length)?)
    };
    let local: Vec<usize> = (0..train.len()).collect();
    let batches: Vec<Vec<Vec<usize>>> = (1..=p.epochs)
        .map(|e| tl_finetune::epoch_batches(&local, p.batch_size, p.seed, e))
        .collect();
    let steps: usize = batches.iter().map(|b| b.len()).sum();
    let weights = cache.file_path(m, "model.safetensors");
    let w = json!({
        "model_dir": weights.parent().context("weights folder")?,
        "classes": 2,
        "params": p,
        "warmup_steps": (steps as f64 * p.warmup_fraction as f64).ceil() as usize,
        "train_ids": ids(&train)?,
        "train_labels": train.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
        "test_ids": ids(&test)?,
        "test_labels": test.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
        "batches": batches,
        // The new classifier's starting weights, so both sides start from the same point.
        "head_weight": &pre.model.params[pre.model.slots.cls_w.clone()],
        "head_bias": &pre.model.params[pre.model.slots.cls_b.clone()],
    });
    std::fs::write(path, serde_json::to_vec(&w)?)?;
    eprintln!(
        "wrote {} ({} train / {} test rows, {steps} steps)",
        path.display(),
        train.len(),
        test.len()
    );
    Ok(())
}

fn run(path: &std::path::Path, args: &[String]) -> Result<()> {
    let w: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut p = params(&w)?;
    if let Some(t) = arg(args, "--threads") {
        p.threads = t.parse()?;
    }
    let seqs: Vec<Vec<u32>> = serde_json::from_value(w["train_ids"].clone())?;
    let labels: Vec<usize> = serde_json::from_value(w["train_labels"].clone())?;
    let test: Vec<Vec<u32>> = serde_json::from_value(w["test_ids"].clone())?;
    let test_labels: Vec<usize> = serde_json::from_value(w["test_labels"].clone())?;
    let registry = Registry::builtin()?;
    let pre =
        tl_finetune::load_pretrained(registry.get("all-minilm-l6-v2")?, &Cache::from_env(), 2)?;
    let mut model = pre.model;
    let mut epochs = Vec::new();
    let threads = p.threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    tl_finetune::finetune_with(
        &mut model,
        &seqs,
        &labels,
        &p,
        &RunOptions::default(),
        &mut |log, m| {
            let pred = pool.install(|| tl_finetune::predict(m, &test, 64, Threads(threads)));
            let acc = pred
                .iter()
                .zip(&test_labels)
                .filter(|(a, b)| a == b)
                .count() as f64
                / test.len() as f64;
            let mut e = serde_json::to_value(log).expect("plain struct");
            e["test_accuracy"] = json!(acc);
            epochs.push(e);
        },
    )?;
    println!("{}", json!({ "epochs": epochs }));
    Ok(())
}
