//! One side of `cargo xtask bench`'s logistic-regression workload: `--out DIR` writes a
//! training and a test matrix as raw little-endian f32, either 20 Newsgroups MiniLM-L6
//! features (from the feature cache, computed once) or, with `--dataset mnist`, the
//! raw-pixels baseline's rows of `experiments/mnist.toml` (the same stratified subsample);
//! `--from DIR` reads them back, as the Python side does, and runs `--repeat` timed fits of
//! tl-heads' logistic regression (C = 1): fit times and test accuracy as one JSON line.
//! The timed process holds what the Python one holds (the matrices, no runtime, no model),
//! so their peak memory compares the fits.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use ndarray::Array2;
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig};
use tl_core::split::stratified_sample;
use tl_features::{CacheOptions, Store, embed_cached};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

#[derive(Parser)]
struct Args {
    /// Folder to export the features to (`train.f32`, `train.labels`, `test.*`, `meta.json`).
    #[arg(long, conflicts_with = "from")]
    out: Option<PathBuf>,
    /// Folder of exported features to fit on.
    #[arg(long, required_unless_present = "out")]
    from: Option<PathBuf>,
    /// What to export: `20newsgroups` (MiniLM-L6 features) or `mnist` (raw pixels).
    #[arg(long, default_value = "20newsgroups")]
    dataset: String,
    /// Training rows (20 Newsgroups: the first N of the train split; MNIST: a stratified
    /// sample of N, seed 0, as `experiments/mnist.toml` draws it; 0 = all).
    #[arg(long, default_value_t = 0)]
    train: usize,
    /// Test rows (first N of the test split, or a stratified sample of N; 0 = all).
    #[arg(long, default_value_t = 0)]
    test: usize,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn write_split(out: &std::path::Path, name: &str, x: &Array2<f32>, y: &[usize]) -> Result<()> {
    let mut f = std::fs::File::create(out.join(format!("{name}.f32")))?;
    for v in x.iter() {
        f.write_all(&v.to_le_bytes())?;
    }
    let labels: Vec<u8> = y.iter().flat_map(|&l| (l as u32).to_le_bytes()).collect();
    std::fs::write(out.join(format!("{name}.labels")), labels)?;
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    match (&a.out, &a.from) {
        (Some(out), _) => export(&a, out),
        (None, Some(from)) => fit(from, a.repeat),
        (None, None) => unreachable!("clap requires one"),
    }
}

fn export(a: &Args, out: &std::path::Path) -> Result<()> {
    let registry = Registry::builtin()?;
    let cache = Cache::from_env();
    let ds = tl_data::load_builtin(registry.get(&a.dataset)?, &cache)?;
    let (xtr, ytr, xte, yte) = match a.dataset.as_str() {
        "20newsgroups" => minilm_features(a, &ds, &registry, &cache)?,
        "mnist" => raw_pixels(a, &ds)?,
        other => bail!("--dataset {other}: give 20newsgroups or mnist"),
    };
    std::fs::create_dir_all(out)?;
    write_split(out, "train", &xtr, &ytr)?;
    write_split(out, "test", &xte, &yte)?;
    std::fs::write(
        out.join("meta.json"),
        serde_json::to_vec(
            &serde_json::json!({"dim": xtr.ncols(), "classes": ds.label_names.len()}),
        )?,
    )?;
    Ok(())
}

/// Training and test rows with their labels.
type Exported = (Array2<f32>, Vec<usize>, Array2<f32>, Vec<usize>);

/// The raw-pixels baseline's matrices of `experiments/mnist.toml`: its stratified
/// subsample (seed 0; the runner salts the train draw with 1 and the test draw with 2).
fn raw_pixels(a: &Args, ds: &tl_data::Dataset) -> Result<Exported> {
    let take = |split: &str, n: usize, salt: u64| -> Result<Vec<usize>> {
        let idx = ds.split(split)?;
        Ok(if n == 0 {
            idx.to_vec()
        } else {
            stratified_sample(&ds.labels, idx, n, salt)?
        })
    };
    let (tr, te) = (take("train", a.train, 1)?, take("test", a.test, 2)?);
    let labels = |idx: &[usize]| idx.iter().map(|&i| ds.labels[i]).collect::<Vec<_>>();
    Ok((
        tl_eval::raw_pixels(ds, &tr)?,
        labels(&tr),
        tl_eval::raw_pixels(ds, &te)?,
        labels(&te),
    ))
}

fn minilm_features(
    a: &Args,
    ds: &tl_data::Dataset,
    registry: &Registry,
    cache: &Cache,
) -> Result<Exported> {
    let take = |split: &str, n: usize| -> Result<Vec<usize>> {
        let idx = ds.split(split)?;
        Ok(idx[..if n == 0 { idx.len() } else { n.min(idx.len()) }].to_vec())
    };
    let (tr, te) = (take("train", a.train)?, take("test", a.test)?);
    let backbone = Backbone::from_manifest(
        registry.get("all-minilm-l6-v2")?,
        cache,
        &ExecutionConfig::default(),
    )?;
    let store = Store::from_cache(cache);
    let embed = |idx: &[usize]| -> Result<Array2<f32>> {
        let items: Vec<_> = idx.iter().map(|&i| ds.items[i].clone()).collect();
        let options = CacheOptions {
            progress: true,
            ..Default::default()
        };
        Ok(embed_cached(&backbone, &store, &items, &options)?.features)
    };
    let (xtr, xte) = (embed(&tr)?, embed(&te)?);
    let ytr: Vec<usize> = tr.iter().map(|&i| ds.labels[i]).collect();
    let yte: Vec<usize> = te.iter().map(|&i| ds.labels[i]).collect();
    Ok((xtr, ytr, xte, yte))
}

fn fit(dir: &std::path::Path, repeat: usize) -> Result<()> {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
    let dim = meta["dim"].as_u64().unwrap_or(0) as usize;
    let k = meta["classes"].as_u64().unwrap_or(0) as usize;
    let names: Vec<String> = (0..k).map(|i| i.to_string()).collect();
    let (xtr, ytr) = tl_benches::read_split(dir, "train", dim)?;
    let (xte, yte) = tl_benches::read_split(dir, "test", dim)?;
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let mut fit_s = Vec::new();
    let mut accuracy = 0.0;
    for _ in 0..repeat {
        let t = Instant::now();
        let model = config.fit(xtr.view(), &ytr, &names, None)?;
        fit_s.push(t.elapsed().as_secs_f64());
        let pred = model.predict(xte.view())?;
        accuracy = pred.iter().zip(&yte).filter(|(p, y)| p == y).count() as f64 / yte.len() as f64;
    }
    println!(
        "{}",
        serde_json::json!({"fit_s": fit_s, "accuracy": accuracy, "train": xtr.nrows(), "test": xte.nrows(), "dim": xtr.ncols(), "peak_rss_mb": tl_benches::peak_rss_mb()})
    );
    Ok(())
}
