//! Helpers shared by the backbone tests: open fetched models, ask the Python reference.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tl_assets::{Cache, Fetcher, Manifest, Registry};
use tl_backbone::{Backbone, ExecutionConfig};

pub fn manifest(name: &str) -> Manifest {
    Registry::builtin().unwrap().get(name).unwrap().clone()
}

pub fn backbone(name: &str, config: &ExecutionConfig) -> Backbone {
    let m = manifest(name);
    Backbone::from_manifest(&m, &Cache::from_env(), config)
        .unwrap_or_else(|e| panic!("{name}: {e} (run `cargo xtask fetch` or `cargo xtask test`)"))
}

pub fn asset_file(name: &str, path: &str) -> PathBuf {
    Cache::from_env().file_path(&manifest(name), path)
}

pub fn sanity_image(file: &str) -> PathBuf {
    asset_file("imagenet-sanity", file)
}

/// Run tools/reference/reference.py in the helper virtualenv on `request`.
pub fn reference(request: serde_json::Value) -> Vec<Vec<f64>> {
    let python = Fetcher::new(Cache::from_env())
        .python_env()
        .expect("helper virtualenv");
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("request.json");
    let out = dir.path().join("out.json");
    std::fs::write(&req, serde_json::to_vec(&request).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/reference.py");
    let o = Command::new(python)
        .arg(script)
        .arg(&req)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "reference.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    serde_json::from_value(v["embeddings"].clone()).unwrap()
}

pub fn max_abs_diff(a: ndarray::ArrayView1<f32>, b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

pub fn l2(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

pub fn cos(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f32 {
    a.dot(&b) / (a.dot(&a).sqrt() * b.dot(&b).sqrt())
}
