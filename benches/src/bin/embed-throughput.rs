//! One side of `cargo xtask bench`: embed a workload `--repeat` times after a warm-up
//! and print one JSON line with the items/s of each repetition and where time went.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, ImageInput, OnError};

#[derive(Parser)]
struct Args {
    /// Model name.
    #[arg(long)]
    model: String,
    /// JSON array of texts (text models).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// IDX image file (image models).
    #[arg(long)]
    idx: Option<PathBuf>,
    /// Number of images to take from the IDX file.
    #[arg(long, default_value_t = 2000)]
    limit: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long)]
    threads: usize,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let registry = Registry::builtin()?;
    let config = ExecutionConfig {
        batch_size: a.batch_size,
        intra_threads: Some(a.threads),
        ..Default::default()
    };
    let backbone = Backbone::from_manifest(registry.get(&a.model)?, &Cache::from_env(), &config)?;
    // `run(true)` embeds a small warm-up slice: first-run allocations and kernel
    // selection are not what we measure.
    let run: Box<dyn Fn(bool) -> Result<tl_backbone::Embeddings>> = match (&a.texts, &a.idx) {
        (Some(p), None) => {
            let texts = tl_benches::read_texts(p)?;
            let b = &backbone;
            Box::new(move |warm| {
                Ok(b.embed_texts(
                    if warm {
                        &texts[..texts.len().min(64)]
                    } else {
                        &texts
                    },
                    OnError::Fail,
                )?)
            })
        }
        (None, Some(p)) => {
            let images: Vec<ImageInput> = tl_benches::read_idx_images(p, a.limit)?
                .into_iter()
                .map(ImageInput::Pixels)
                .collect();
            let b = &backbone;
            Box::new(move |warm| {
                Ok(b.embed_images(
                    if warm {
                        &images[..images.len().min(64)]
                    } else {
                        &images
                    },
                    OnError::Fail,
                )?)
            })
        }
        _ => bail!("give --texts or --idx"),
    };
    let mut last = run(true)?;
    let mut rates = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        last = run(false)?;
        rates.push(last.stats.items as f64 / t.elapsed().as_secs_f64());
    }
    let t = &last.stats.timings;
    println!(
        "{}",
        serde_json::json!({
            "items_per_s": rates,
            "items": last.stats.items,
            "padding_efficiency": last.stats.padding_efficiency(),
            "processed_tokens": last.stats.processed_tokens,
            "prepare_s": t.prepare.as_secs_f64(),
            "run_s": t.run.as_secs_f64(),
            "pool_s": t.pool.as_secs_f64(),
            "total_s": t.total.as_secs_f64(),
        })
    );
    Ok(())
}
