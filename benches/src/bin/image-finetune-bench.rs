//! The Rust side of the image fine-tuning benchmark, and the writer of the workload
//! both sides read (`tools/bench/image_finetune_torch.py` is the PyTorch side).
//!
//! `image-finetune-bench prepare DIR [--model M] [--rows N] [--test-rows T]
//! [--resolution R] [--epochs E]`: a stratified subset of the MNIST training and test
//! splits, preprocessed exactly as tl-finetune preprocesses them (written as raw f32
//! `train.f32` / `test.f32`), the batches of every step, the starting classifier and
//! the hyperparameters, in `DIR/workload.json`.
//! `image-finetune-bench run DIR [--threads T]`: fine-tunes the model on the same rows
//! and batches and prints one JSON object (the same fields as the Python side).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tl_assets::{Cache, Registry};
use tl_benches::arg;
use tl_finetune::{Augment, ImageParams, RunOptions, Threads};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: image-finetune-bench prepare|run DIR [--model M] [--rows N] [--test-rows T] [--resolution R] [--epochs E] [--threads T]";
    let cmd = args.get(1).context(usage)?;
    let dir = std::path::PathBuf::from(args.get(2).context(usage)?);
    match cmd.as_str() {
        "prepare" => prepare(&dir, &args),
        "run" => run(&dir, &args),
        _ => bail!(usage),
    }
}

/// The MNIST rows of a workload: (train items, train labels, test items, test labels).
type Rows = (
    Vec<tl_backbone::ImageInput>,
    Vec<usize>,
    Vec<tl_backbone::ImageInput>,
    Vec<usize>,
);

fn rows(train_rows: usize, test_rows: usize) -> Result<Rows> {
    let registry = Registry::builtin()?;
    let ds = tl_data::load_builtin(registry.get("mnist")?, &Cache::from_env())?;
    // The same stratified subsets as experiments/mnist.toml (seed 0, salts 1 and 2).
    let take = |split: &str, n: usize, salt: u64| -> Result<Vec<usize>> {
        let idx = ds.split(split)?.to_vec();
        if n >= idx.len() {
            return Ok(idx);
        }
        let frac = n as f64 / idx.len() as f64;
        Ok(tl_core::split::stratified_split(&ds.labels, &idx, frac, salt)?.1)
    };
    let (train, test) = (take("train", train_rows, 1)?, take("test", test_rows, 2)?);
    let inputs = |idx: &[usize]| -> Vec<tl_backbone::ImageInput> {
        idx.iter()
            .filter_map(|&i| tl_features::image_input(&ds.items[i]))
            .collect()
    };
    let labels = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&i| ds.labels[i]).collect() };
    Ok((inputs(&train), labels(&train), inputs(&test), labels(&test)))
}

fn write_f32(path: &std::path::Path, v: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn prepare(dir: &std::path::Path, args: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let model = arg(args, "--model").unwrap_or_else(|| "mobilenetv2".into());
    let n: usize = arg(args, "--rows").map_or(Ok(2048), |v| v.parse())?;
    let nt: usize = arg(args, "--test-rows").map_or(Ok(1000), |v| v.parse())?;
    let resolution: usize = arg(args, "--resolution").map_or(Ok(64), |v| v.parse())?;
    let (train_x, train_y, test_x, test_y) = rows(n, nt)?;
    let registry = Registry::builtin()?;
    let m = registry.get(&model)?;
    let cache = Cache::from_env();
    let pre = tl_finetune::load_pretrained_image(m, &cache, 10, 0)?;
    // No augmentation: both sides must see the very same pixels in the same batches.
    let p = ImageParams {
        epochs: arg(args, "--epochs").map_or(Ok(1), |v| v.parse())?,
        resolution: Some(resolution),
        augment: Augment::none(),
        threads: 2,
        ..ImageParams::default()
    };
    let spec = tl_finetune::vision::spec_at(&pre.spec, p.resolution);
    let all = |k: usize| -> Vec<usize> { (0..k).collect() };
    write_f32(
        &dir.join("train.f32"),
        &tl_finetune::vision::preprocess_batch(&train_x, &all(train_x.len()), &spec)?,
    )?;
    write_f32(
        &dir.join("test.f32"),
        &tl_finetune::vision::preprocess_batch(&test_x, &all(test_x.len()), &spec)?,
    )?;
    let local = all(train_x.len());
    let batches: Vec<Vec<Vec<usize>>> = (1..=p.epochs)
        .map(|e| tl_finetune::epoch_batches(&local, p.batch_size, p.seed, e))
        .collect();
    let steps: usize = batches.iter().map(|b| b.len()).sum();
    let trainable = m
        .model
        .as_ref()
        .and_then(|s| s.trainable.as_ref())
        .context("a trainable model")?;
    let net = &pre.model;
    let w = json!({
        "model": model,
        "weights": cache.file_path(m, &trainable.weights),
        "resolution": resolution,
        // The sizes asked for: per-class rounding makes the subsets a row or two off.
        "rows": n,
        "test_rows": nt,
        "classes": 10,
        "params": p,
        "warmup_steps": (steps as f64 * p.warmup_fraction as f64).ceil() as usize,
        "train_labels": train_y,
        "test_labels": test_y,
        "batches": batches,
        "head_weight": &net.params[net.cls_w.clone()],
        "head_bias": &net.params[net.cls_b.clone()],
    });
    std::fs::write(dir.join("workload.json"), serde_json::to_vec(&w)?)?;
    eprintln!(
        "wrote {} ({} train / {} test images at {resolution} px, {steps} steps)",
        dir.display(),
        train_x.len(),
        test_x.len()
    );
    Ok(())
}

fn run(dir: &std::path::Path, args: &[String]) -> Result<()> {
    let w: Value = serde_json::from_slice(&std::fs::read(dir.join("workload.json"))?)?;
    let mut p: ImageParams = serde_json::from_value(w["params"].clone())?;
    if let Some(t) = arg(args, "--threads") {
        p.threads = t.parse()?;
    }
    let labels: Vec<usize> = serde_json::from_value(w["train_labels"].clone())?;
    let test_labels: Vec<usize> = serde_json::from_value(w["test_labels"].clone())?;
    let model = w["model"].as_str().context("model")?;
    let size = |k: &str| w[k].as_u64().map(|v| v as usize).context(k.to_string());
    let (train_x, _, test_x, _) = rows(size("rows")?, size("test_rows")?)?;
    let registry = Registry::builtin()?;
    let pre = tl_finetune::load_pretrained_image(registry.get(model)?, &Cache::from_env(), 10, 0)?;
    let spec = tl_finetune::vision::spec_at(&pre.spec, p.resolution);
    let mut net = pre.model.clone();
    let threads = p.threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut epochs = Vec::new();
    let mut failed = None;
    tl_finetune::finetune_images(
        &mut net,
        &train_x,
        &labels,
        &pre.spec,
        &p,
        &RunOptions::default(),
        &mut |log, m| {
            let pred = pool
                .install(|| tl_finetune::predict_images(m, &test_x, &spec, 64, Threads(threads)));
            match pred {
                Ok(pred) => {
                    let acc = pred
                        .iter()
                        .zip(&test_labels)
                        .filter(|(a, b)| a == b)
                        .count() as f64
                        / test_x.len() as f64;
                    let mut e = serde_json::to_value(log).expect("plain struct");
                    e["test_accuracy"] = json!(acc);
                    e["images_per_second"] = e["sentences_per_second"].clone();
                    epochs.push(e);
                }
                Err(e) => failed = Some(e),
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    println!("{}", json!({ "epochs": epochs }));
    Ok(())
}
