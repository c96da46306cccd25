//! Shared pieces of the benchmarks: workload inputs both stacks read identically.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The value after flag `name` on a command line (`--rows 512` gives `512`).
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Texts from a JSON array of strings.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: expected a JSON array of strings", path.display()))
}

/// The first `n` images of an IDX image file as 28x28 gray pixel arrays.
pub fn read_idx_images(path: &Path, n: usize) -> Result<Vec<tl_backbone::RawImage>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 16 || bytes[..4] != [0, 0, 8, 3] {
        bail!("{}: not an IDX image file", path.display());
    }
    let dim = |k: usize| {
        u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().expect("4 bytes")) as usize
    };
    let (count, h, w) = (dim(0), dim(1), dim(2));
    if n > count || bytes.len() < 16 + n * h * w {
        bail!("{}: holds {count} images, {n} asked", path.display());
    }
    Ok((0..n)
        .map(|i| tl_backbone::RawImage {
            width: w as u32,
            height: h as u32,
            channels: 1,
            data: bytes[16 + i * h * w..16 + (i + 1) * h * w].to_vec(),
        })
        .collect())
}

/// This process's peak resident memory (VmHWM) in MB, 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A matrix `fit-bench --out` exported: `{name}.f32` (row-major little-endian f32, `dim`
/// columns) and `{name}.labels` (little-endian u32), as the Python side reads them.
pub fn read_split(
    dir: &Path,
    name: &str,
    dim: usize,
) -> Result<(ndarray::Array2<f32>, Vec<usize>)> {
    let raw = std::fs::read(dir.join(format!("{name}.f32"))).context("features")?;
    let v: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    drop(raw);
    let labels = std::fs::read(dir.join(format!("{name}.labels"))).context("labels")?;
    let y: Vec<usize> = labels
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    Ok((ndarray::Array2::from_shape_vec((y.len(), dim), v)?, y))
}
