//! Side-by-side companion of `tools/bench/bench_python.py fit`: on the matrix `fit-bench`
//! exported, times kNN prediction (k = 5, cosine, brute force) and a grid search of logistic
//! regression's C (6 values x 5 stratified folds, plus any extension past an end the best
//! value lies on, reported as `grid_extended`), printing one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use tl_heads::{HeadConfig, HeadSpec, KnnParams, LogisticParams, Metric, Weighting, grid_search};

#[derive(Parser)]
struct Args {
    /// Folder written by `fit-bench`.
    #[arg(long)]
    features: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.features.join("meta.json"))?)?;
    let dim = meta["dim"].as_u64().unwrap_or(0) as usize;
    let k = meta["classes"].as_u64().unwrap_or(0) as usize;
    let names: Vec<String> = (0..k).map(|i| i.to_string()).collect();
    let (xtr, ytr) = tl_benches::read_split(&a.features, "train", dim)?;
    let (xte, yte) = tl_benches::read_split(&a.features, "test", dim)?;
    let t = Instant::now();
    let knn = HeadConfig::new(HeadSpec::Knn(KnnParams {
        k: 5,
        metric: Metric::Cosine,
        weighting: Weighting::Uniform,
    }))
    .fit(xtr.view(), &ytr, &names, None)?;
    let pred = knn.predict(xte.view())?;
    let knn_s = t.elapsed().as_secs_f64();
    let acc = pred.iter().zip(&yte).filter(|(p, y)| p == y).count() as f64 / yte.len() as f64;
    let t = Instant::now();
    let g = grid_search(
        &HeadConfig::new(HeadSpec::Logistic(LogisticParams::default())),
        &[0.01, 0.1, 1.0, 10.0, 100.0, 1000.0],
        xtr.view(),
        &ytr,
        &names,
        5,
        0,
    )?;
    let grid_s = t.elapsed().as_secs_f64();
    let best = g.best_mean();
    println!(
        "{}",
        serde_json::json!({"knn_queries_per_s": yte.len() as f64 / knn_s, "knn_s": knn_s, "knn_accuracy": acc,
            "grid_s": grid_s, "best_c": g.best_value, "best_cv_accuracy": best,
            // Values past the grid's end (GridSearchCV searches the 6 values only).
            "grid_extended": g.extended})
    );
    Ok(())
}
