//! `tl embed`: throughput and class separation of one backbone on one dataset.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_data::Item;
use tl_features::{CacheOptions, Embedder, Inputs, Store, embed_cached};

use crate::{TableArgs, UsageError, ensure_model, load_dataset};

#[allow(clippy::too_many_arguments)]
pub(crate) fn embed(
    registry: &Registry,
    model: &str,
    dataset: &str,
    split: Option<&str>,
    limit: Option<usize>,
    batch_size: usize,
    threads: Option<usize>,
    table: &TableArgs,
    no_cache: bool,
) -> Result<()> {
    // Checked before any work: 2048 threads on 2 cores turned 0.4 s into minutes.
    if let Some(t) = threads.filter(|t| !(1..=256).contains(t)) {
        bail!(UsageError(format!("--threads must be in 1..=256, got {t}")));
    }
    if !(1..=4096).contains(&batch_size) {
        bail!(UsageError(format!(
            "--batch-size must be in 1..=4096, got {batch_size}"
        )));
    }
    if limit == Some(0) {
        bail!(UsageError("--limit must be at least 1".into()));
    }
    let m = ensure_model(registry, model)?;
    let ds = load_dataset(registry, dataset, table)?;
    let indices = crate::model::selection(&ds, split, limit)?;
    let config = ExecutionConfig {
        batch_size,
        intra_threads: threads,
        progress: true,
        ..ExecutionConfig::default()
    };
    let t = Instant::now();
    let backbone = Backbone::from_manifest(m, &Cache::from_env(), &config)?;
    let load_time = t.elapsed();
    if !no_cache {
        let items: Vec<Item> = indices.iter().map(|&i| ds.items[i].clone()).collect();
        let store = Store::from_cache(&Cache::from_env());
        let options = CacheOptions {
            progress: true,
            on_error: OnError::Skip,
            ..Default::default()
        };
        let out = embed_cached(&backbone, &store, &items, &options)?;
        print_header(&backbone, &ds, items.len());
        out!(
            "features   {} from the cache in {:.2}s, {} computed in {:.2}s{}",
            out.hits,
            out.lookup_time.as_secs_f64(),
            out.computed,
            out.compute_time.as_secs_f64(),
            if out.computed > 0 {
                format!(
                    " ({:.1} items/s)",
                    out.computed as f64 / out.compute_time.as_secs_f64()
                )
            } else {
                String::new()
            }
        );
        out!(
            "cache      {}",
            store.root().join(backbone.fingerprint()).display()
        );
        for e in &out.errors {
            out!("skipped    item {}: {} ({})", e.index, e.item, e.message);
        }
        let labels: Vec<usize> = indices.iter().map(|&i| ds.labels[i]).collect();
        print_separation(&out.features, &labels);
        return Ok(());
    }
    if indices.is_empty() {
        bail!("nothing to embed: the selection is empty");
    }
    let inputs = Inputs::from_items(indices.iter().map(|&i| &ds.items[i]))
        .with_context(|| format!("dataset {dataset}"))?;
    let out = Embedder::embed(&backbone, &inputs, OnError::Skip)?;
    let s = &out.stats;
    let secs = s.timings.total.as_secs_f64();
    print_header(&backbone, &ds, indices.len());
    out!(
        "embedded   {} items in {secs:.2}s: {:.1} items/s (session load {:.2}s)",
        s.items - out.errors.len(),
        s.items as f64 / secs,
        load_time.as_secs_f64()
    );
    out!(
        "time       prepare {:.2}s | run {:.2}s | pool {:.2}s | {} batches of up to {batch_size}",
        s.timings.prepare.as_secs_f64(),
        s.timings.run.as_secs_f64(),
        s.timings.pool.as_secs_f64(),
        s.batches
    );
    if s.processed_tokens > 0 {
        out!(
            "padding    {:.3} efficiency ({} real of {} processed tokens)",
            s.padding_efficiency(),
            s.real_tokens,
            s.processed_tokens
        );
    }
    for e in &out.errors {
        out!("skipped    item {}: {} ({})", e.index, e.item, e.message);
    }
    let labels: Vec<usize> = indices.iter().map(|&i| ds.labels[i]).collect();
    print_separation(&out.features, &labels);
    Ok(())
}

fn print_header(backbone: &Backbone, ds: &tl_data::Dataset, items: usize) {
    out!(
        "model      {} ({}-d, fingerprint {})",
        backbone.name(),
        backbone.dim(),
        backbone.fingerprint()
    );
    out!(
        "dataset    {} ({items} items, {} classes)",
        ds.name,
        ds.n_classes()
    );
}

fn print_separation(features: &ndarray::Array2<f32>, labels: &[usize]) {
    let (within, between) = separation(features, labels);
    out!(
        "separation mean cosine within classes {within:.4} vs between classes {between:.4} ({})",
        if within > between {
            "features separate the classes"
        } else {
            "features do not separate the classes"
        }
    );
}

/// Mean cosine similarity of pairs in the same class and in different classes, over
/// L2-normalised rows (a cheap first look at whether features carry the labels).
fn separation(features: &ndarray::Array2<f32>, labels: &[usize]) -> (f64, f64) {
    let mut z = features.clone();
    for mut row in z.rows_mut() {
        let n = row.dot(&row).sqrt();
        if n > 0.0 && n.is_finite() {
            row /= n;
        }
    }
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let dim = z.ncols();
    let mut sums = ndarray::Array2::<f64>::zeros((classes, dim));
    let mut counts = vec![0f64; classes];
    for (row, &l) in z.rows().into_iter().zip(labels) {
        if row.iter().all(|v| v.is_finite()) {
            sums.row_mut(l).zip_mut_with(&row, |s, &v| *s += v as f64);
            counts[l] += 1.0;
        }
    }
    // Sum over pairs via class sums: sum_{i,j in a, b} z_i.z_j = S_a . S_b.
    let (mut within, mut wn, mut between, mut bn) = (0.0, 0.0, 0.0, 0.0);
    for a in 0..classes {
        for b in 0..classes {
            let dot = sums.row(a).dot(&sums.row(b));
            if a == b {
                let n = counts[a];
                // Remove self-pairs (each contributes 1).
                within += dot - n;
                wn += n * (n - 1.0);
            } else {
                between += dot;
                bn += counts[a] * counts[b];
            }
        }
    }
    (within / wn.max(1.0), between / bn.max(1.0))
}
