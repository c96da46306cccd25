//! Writes the inputs of `cargo xtask bench` so both stacks read the same texts:
//! `bench-inputs OUT_DIR N_SENTENCES N_DOCS` writes sentences.json and docs.json.

use anyhow::{Context, Result};
use tl_assets::{Cache, Registry};
use tl_data::{Dataset, Item};

fn texts(ds: &Dataset, idx: &[usize]) -> Vec<String> {
    idx.iter()
        .filter_map(|&i| match &ds.items[i] {
            Item::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-inputs OUT_DIR N_SENTENCES N_DOCS";
    let out = std::path::PathBuf::from(args.get(1).context(usage)?);
    let n_sentences: usize = args.get(2).context(usage)?.parse()?;
    let n_docs: usize = args.get(3).context(usage)?.parse()?;
    let registry = Registry::builtin()?;
    let cache = Cache::from_env();
    let mut sentences = Vec::new();
    for d in ["amazon", "imdb", "yelp"] {
        let ds = tl_data::load_builtin(registry.get(&format!("sentiment-{d}"))?, &cache)?;
        sentences.extend(texts(&ds, &(0..ds.len()).collect::<Vec<_>>()));
    }
    // Every k-th sentence when fewer are wanted, so all three domains stay in.
    let step = (sentences.len() / n_sentences.max(1)).max(1);
    let sentences: Vec<String> = sentences
        .into_iter()
        .step_by(step)
        .take(n_sentences)
        .collect();
    let ng = tl_data::load_builtin(registry.get("20newsgroups")?, &cache)?;
    let train = ng.split("train")?;
    let docs = texts(&ng, &train[..n_docs.min(train.len())]);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("sentences.json"), serde_json::to_vec(&sentences)?)?;
    std::fs::write(out.join("docs.json"), serde_json::to_vec(&docs)?)?;
    Ok(())
}
