//! `tl`: embed datasets with pretrained ONNX backbones and inspect data.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tl_assets::{Cache, Fetcher, Manifest, Registry};
use tl_backbone::{Backbone, ExecutionConfig, ImageInput, OnError, RawImage};
use tl_data::{Dataset, Item, TableOptions};

#[derive(Parser)]
#[command(
    name = "tl",
    version,
    about = "Transfer learning with pretrained ONNX backbones"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Embed a dataset with a backbone and report throughput and class separation.
    #[command(
        after_help = "Examples:\n  tl embed\n  tl embed --model paraphrase-minilm-l3-v2 --dataset sentiment-imdb\n  tl embed --model efficientnet-lite0 --dataset optdigits --batch-size 64\n  tl embed --model all-minilm-l6-v2 --dataset reviews.csv --text-column review"
    )]
    Embed {
        /// Backbone name (see `cargo xtask assets`).
        #[arg(long, default_value = "all-minilm-l6-v2")]
        model: String,
        /// Dataset: a built-in name, `sentiment` (all three domains), a table file or an
        /// image folder.
        #[arg(long, default_value = "sentiment")]
        dataset: String,
        /// Split to embed (default: every item).
        #[arg(long)]
        split: Option<String>,
        /// Embed at most this many items (the first ones).
        #[arg(long)]
        limit: Option<usize>,
        /// Items per inference batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Intra-op threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Dataset commands.
    Data {
        #[command(subcommand)]
        command: DataCmd,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Counts per class and split, text lengths or image sizes, duplicates.
    #[command(
        after_help = "Examples:\n  tl data info 20newsgroups\n  tl data info sentiment\n  tl data info reviews.csv --text-column review --label-column stars"
    )]
    Info {
        /// A built-in name, `sentiment`, a table file or an image folder.
        dataset: String,
        #[command(flatten)]
        table: TableArgs,
    },
}

#[derive(clap::Args)]
struct TableArgs {
    /// Text column of a table file.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Label column of a table file.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Split column of a table file.
    #[arg(long)]
    split_column: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let registry = Registry::builtin()?;
    match cli.command {
        Cmd::Embed {
            model,
            dataset,
            split,
            limit,
            batch_size,
            threads,
            table,
        } => embed(
            &registry,
            &model,
            &dataset,
            split.as_deref(),
            limit,
            batch_size,
            threads,
            &table,
        ),
        Cmd::Data {
            command: DataCmd::Info { dataset, table },
        } => {
            let ds = load_dataset(&registry, &dataset, &table)?;
            print!("{}", ds.summary());
            Ok(())
        }
    }
}

/// Fetch `m` if any of its files is missing or corrupt (a no-op check otherwise).
fn ensure_fetched(m: &Manifest) -> Result<()> {
    let report = Fetcher::new(Cache::from_env())
        .fetch(m)
        .with_context(|| format!("fetching {}", m.name))?;
    if !report.was_noop() {
        eprintln!("fetched {}", m.name);
    }
    Ok(())
}

fn load_dataset(registry: &Registry, name: &str, table: &TableArgs) -> Result<Dataset> {
    let path = Path::new(name);
    if path.exists() {
        return if path.is_dir() {
            Ok(tl_data::load_image_folder(path)?)
        } else {
            let opts = TableOptions {
                text_column: table.text_column.clone(),
                label_column: table.label_column.clone(),
                split_column: table.split_column.clone(),
                ..TableOptions::default()
            };
            Ok(tl_data::load_table(path, &opts)?)
        };
    }
    let names: Vec<String> = if name == "sentiment" {
        ["amazon", "imdb", "yelp"]
            .iter()
            .map(|d| format!("sentiment-{d}"))
            .collect()
    } else {
        vec![name.to_string()]
    };
    let mut parts = Vec::new();
    for n in &names {
        let m = registry
            .get(n)
            .with_context(|| format!("{name:?} is neither a file nor a known dataset"))?;
        if m.dataset.is_none() {
            bail!("{n} is a {:?} asset, not a dataset", m.kind);
        }
        ensure_fetched(m)?;
        parts.push(tl_data::load_builtin(m, &Cache::from_env())?);
    }
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Ok(Dataset::concat(name, &parts)?)
    }
}

#[allow(clippy::too_many_arguments)]
fn embed(
    registry: &Registry,
    model: &str,
    dataset: &str,
    split: Option<&str>,
    limit: Option<usize>,
    batch_size: usize,
    threads: Option<usize>,
    table: &TableArgs,
) -> Result<()> {
    ensure_fetched(registry.get("onnxruntime")?)?;
    let m = registry.get(model)?;
    if m.model.is_none() {
        bail!("{model} is a {:?} asset, not a model", m.kind);
    }
    ensure_fetched(m)?;
    let ds = load_dataset(registry, dataset, table)?;
    let mut indices: Vec<usize> = match split {
        Some(s) => ds.split(s)?.to_vec(),
        None => (0..ds.len()).collect(),
    };
    if let Some(n) = limit {
        indices.truncate(n);
    }
    let config = ExecutionConfig {
        batch_size,
        intra_threads: threads,
        progress: true,
        ..ExecutionConfig::default()
    };
    let t = Instant::now();
    let backbone = Backbone::from_manifest(m, &Cache::from_env(), &config)?;
    let load_time = t.elapsed();
    let items: Vec<&Item> = indices.iter().map(|&i| &ds.items[i]).collect();
    let out = match items.first() {
        Some(Item::Text(_)) => {
            let texts: Vec<&str> = items
                .iter()
                .map(|i| match i {
                    Item::Text(t) => Ok(t.as_str()),
                    _ => bail!("dataset {dataset} mixes texts and images"),
                })
                .collect::<Result<_>>()?;
            backbone.embed_texts(&texts, OnError::Skip)?
        }
        Some(_) => {
            let images: Vec<ImageInput> = items
                .iter()
                .map(|i| match i {
                    Item::ImageFile(p) => Ok(ImageInput::Path(p.clone())),
                    Item::Pixels(p) => Ok(ImageInput::Pixels(RawImage {
                        width: p.width,
                        height: p.height,
                        channels: p.channels,
                        data: p.data.clone(),
                    })),
                    Item::Text(_) => bail!("dataset {dataset} mixes texts and images"),
                })
                .collect::<Result<_>>()?;
            backbone.embed_images(&images, OnError::Skip)?
        }
        None => bail!("nothing to embed: the selection is empty"),
    };
    let s = &out.stats;
    let secs = s.timings.total.as_secs_f64();
    println!(
        "model      {} ({}-d, fingerprint {})",
        backbone.name(),
        backbone.dim(),
        backbone.fingerprint()
    );
    println!(
        "dataset    {} ({} items, {} classes)",
        ds.name,
        indices.len(),
        ds.n_classes()
    );
    println!(
        "embedded   {} items in {secs:.2}s: {:.1} items/s (session load {:.2}s)",
        s.items - out.errors.len(),
        s.items as f64 / secs,
        load_time.as_secs_f64()
    );
    println!(
        "time       prepare {:.2}s | run {:.2}s | pool {:.2}s | {} batches of up to {batch_size}",
        s.timings.prepare.as_secs_f64(),
        s.timings.run.as_secs_f64(),
        s.timings.pool.as_secs_f64(),
        s.batches
    );
    if s.processed_tokens > 0 {
        println!(
            "padding    {:.3} efficiency ({} real of {} processed tokens)",
            s.padding_efficiency(),
            s.real_tokens,
            s.processed_tokens
        );
    }
    for e in &out.errors {
        println!("skipped    item {}: {} ({})", e.index, e.item, e.message);
    }
    let labels: Vec<usize> = indices.iter().map(|&i| ds.labels[i]).collect();
    let (within, between) = separation(&out.features, &labels);
    println!(
        "separation mean cosine within classes {within:.4} vs between classes {between:.4} ({})",
        if within > between {
            "features separate the classes"
        } else {
            "features do not separate the classes"
        }
    );
    Ok(())
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
