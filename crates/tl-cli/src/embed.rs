//! `tl embed`: throughput and class separation of one backbone on one dataset.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_data::Item;
use tl_features::{CacheOptions, Embedder, Inputs, Store, embed_cached};

use crate::{TableArgs, UsageError, ensure_model, load_dataset, model_manifest};

/// Checked before any work: 2048 threads on 2 cores turned 0.4 s into minutes.
fn check_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads.filter(|t| !(1..=256).contains(t)) {
        bail!(UsageError(format!("--threads must be in 1..=256, got {t}")));
    }
    Ok(())
}

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
    check_threads(threads)?;
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

/// `tl embed --ray`: prints a Python script that runs the same extraction as a Ray Data
/// pipeline (`transfer_learning.ray.embed_dataset`) into the cache this command would use.
/// Table files given by path are read by Ray's own readers, in parallel; built-in datasets,
/// JSON arrays and image folders are listed in the driver by `transfer_learning.load_dataset`.
pub(crate) fn ray_pipeline(
    registry: &Registry,
    model: &str,
    dataset: &str,
    workers: usize,
    threads: Option<usize>,
    table: &TableArgs,
) -> Result<()> {
    if !(1..=4096).contains(&workers) {
        bail!(UsageError(format!(
            "--workers must be in 1..=4096, got {workers}"
        )));
    }
    check_threads(threads)?;
    let threads = threads.unwrap_or(1);
    let m = model_manifest(registry, model)?;
    let modality = match m.model.as_ref().map(|s| s.modality) {
        Some(tl_assets::manifest::Modality::Image) => "image",
        _ => "text",
    };
    // Loaded here so that a bad dataset is refused now, not on the cluster.
    let ds = load_dataset(registry, dataset, table)?;
    let column = match (modality, ds.items.first()) {
        (_, Some(Item::Pixels(_))) => bail!(UsageError(format!(
            "{}: its items are in-memory pixel arrays (IDX or 8x8 digits), which a Ray \
             pipeline cannot hand to workers as files; embed it here with `tl embed`, or \
             write the images to a folder",
            ds.name
        ))),
        ("text", Some(Item::ImageFile(_))) | ("image", Some(Item::Text(_))) => {
            bail!(UsageError(format!(
                "{model} is a {modality} model and {} holds {}",
                ds.name,
                if modality == "text" {
                    "images"
                } else {
                    "texts"
                }
            )))
        }
        ("image", _) => "path",
        _ => "text",
    };
    let path = std::path::Path::new(dataset);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_file = matches!(
        tl_data::dataset_source(dataset),
        tl_data::DatasetSource::Path(p) if p.is_file()
    );
    let abs = || {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    };
    let py = |s: &str| format!("{s:?}");
    // Table files are read by Ray's own readers, in parallel, and their text column is the
    // one to embed; everything else is listed in the driver, one `column` per item.
    let ray_reader = match ext.as_deref() {
        _ if !is_file => None,
        Some("csv") => Some(format!("ds = ray.data.read_csv({})\n", py(&abs()))),
        Some("tsv" | "tab") => Some(format!(
            "import pyarrow.csv\n\nds = ray.data.read_csv(\n    {},\n    parse_options=pyarrow.csv.ParseOptions(delimiter=\"\\t\"),\n)\n",
            py(&abs())
        )),
        Some("parquet" | "pq") => Some(format!("ds = ray.data.read_parquet({})\n", py(&abs()))),
        Some("jsonl" | "ndjson") => Some(format!("ds = ray.data.read_json({})\n", py(&abs()))),
        _ => None,
    };
    let (reader, column) = match ray_reader {
        Some(reader) => (reader, table.text_column.as_str()),
        None => {
            let args = if is_file {
                format!(
                    "{}, text_column={}, label_column={}",
                    py(&abs()),
                    py(&table.text_column),
                    py(&table.label_column)
                )
            } else {
                py(dataset)
            };
            let listing = format!(
                "# {} ({} rows), listed here; the workers read the {}.\n\
                 data = tl.load_dataset({args}, cache_dir=CACHE)\n\
                 ds = ray.data.from_items([{{\"{column}\": x}} for x in data[\"items\"]])\n",
                ds.name,
                ds.len(),
                if modality == "image" {
                    "files"
                } else {
                    "texts"
                }
            );
            (listing, column)
        }
    };
    let cache = Cache::from_env();
    out!(
        "# Embeds {dataset} with {model} on a Ray cluster, into a shared feature cache.\n\
         # Generated by `tl embed --model {model} --dataset {dataset} --ray --workers {workers}`.\n\
         # Needs the Python package with Ray (`cargo xtask wheel`, then\n\
         # `pip install target/wheels/transfer_learning_rs-*.whl \"ray[data]\"`) on every node,\n\
         # and CACHE on a filesystem every node mounts (NFS, EFS, Filestore, a shared volume).\n\
         # Run it where `ray.init()` reaches the cluster (on the head, or with RAY_ADDRESS).\n\
         # Afterwards `TL_HOME=<CACHE> tl fit|run|embed ...` read these vectors as cache hits.\n\
         import os\n\n\
         import ray\n\n\
         import transfer_learning as tl\n\
         from transfer_learning.ray import embed_dataset\n\n\
         CACHE = os.environ.get(\"TL_HOME\", {cache})\n\n\
         ray.init()\n\n\
         {reader}\n\
         out = embed_dataset(\n    ds,\n    {model_py},\n    CACHE,\n    column={column_py},\n    modality={modality_py},\n    concurrency={workers},  # actors\n    threads={threads},  # ONNX Runtime threads (and Ray CPUs) per actor\n    batch_size=256,  # rows per actor call\n)\n\
         done = out.materialize()  # runs the pipeline; the vectors are now in CACHE\n\
         print(f\"embedded {{done.count()}} rows of {dataset} with {model} into {{CACHE}}\")",
        cache = py(&cache.root().display().to_string()),
        model_py = py(model),
        column_py = py(column),
        modality_py = py(modality),
    );
    Ok(())
}
