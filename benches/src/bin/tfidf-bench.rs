//! One side of `cargo xtask bench`'s TF-IDF baseline workload: 20 Newsgroups (train / test
//! split) or a long-document corpus built from it (each document the concatenation of
//! `--concat` consecutive documents of one newsgroup), written once as JSON lines for the
//! Python side; then `--repeat` timed runs of the sparse TF-IDF (whole vocabulary, min_df 2,
//! sublinear tf) and logistic regression (C = 1), as one JSON line: seconds to vectorise, to
//! fit and in all, test accuracy, vocabulary size and stored entries.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use tl_assets::{Cache, Registry};
use tl_features::{Tfidf, TfidfParams};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

#[derive(Parser)]
struct Args {
    /// The JSON-lines file the documents are written to (`{"split", "text", "label"}`).
    #[arg(long)]
    out: PathBuf,
    /// Documents joined into one (1: 20 Newsgroups as it is).
    #[arg(long, default_value_t = 1)]
    concat: usize,
    /// Training documents (first N after joining; 0 = all).
    #[arg(long, default_value_t = 0)]
    train: usize,
    #[arg(long, default_value_t = 2)]
    repeat: usize,
}

/// Documents of one split, `concat` consecutive ones of the same label joined by a blank line.
fn join(ds: &tl_data::Dataset, idx: &[usize], concat: usize) -> (Vec<String>, Vec<usize>) {
    let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); ds.label_names.len()];
    for &i in idx {
        by_label[ds.labels[i]].push(i);
    }
    let (mut texts, mut labels) = (Vec::new(), Vec::new());
    for (label, rows) in by_label.iter().enumerate() {
        for group in rows.chunks(concat) {
            let parts: Vec<&str> = group
                .iter()
                .map(|&i| match &ds.items[i] {
                    tl_data::Item::Text(t) => t.as_str(),
                    _ => "",
                })
                .collect();
            texts.push(parts.join("\n\n"));
            labels.push(label);
        }
    }
    // Interleave the labels again (a fixed permutation) so a prefix holds every class.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    tl_core::Rng::new(7).shuffle(&mut order);
    (
        order
            .iter()
            .map(|&i| std::mem::take(&mut texts[i]))
            .collect(),
        order.iter().map(|&i| labels[i]).collect(),
    )
}

fn main() -> Result<()> {
    let a = Args::parse();
    let registry = Registry::builtin()?;
    let ds = tl_data::load_builtin(registry.get("20newsgroups")?, &Cache::from_env())?;
    let (mut tr, mut ytr) = join(&ds, ds.split("train")?, a.concat.max(1));
    let (te, yte) = join(&ds, ds.split("test")?, a.concat.max(1));
    if a.train > 0 && a.train < tr.len() {
        tr.truncate(a.train);
        ytr.truncate(a.train);
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&a.out).with_context(|| a.out.display().to_string())?,
    );
    for (split, texts, labels) in [("train", &tr, &ytr), ("test", &te, &yte)] {
        for (t, l) in texts.iter().zip(labels.iter()) {
            writeln!(
                f,
                "{}",
                serde_json::json!({"split": split, "text": t, "label": l})
            )?;
        }
    }
    f.flush()?;
    drop(f);
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams {
        c: 1.0,
        max_iter: 1000,
        ..Default::default()
    }));
    let (mut vec_s, mut fit_s, mut total_s) = (vec![], vec![], vec![]);
    let (mut accuracy, mut vocabulary, mut nnz) = (0.0, 0, 0);
    for _ in 0..a.repeat {
        let t = Instant::now();
        let v = Tfidf::fit(&tr, &TfidfParams::default());
        let (xtr, xte) = (v.transform_sparse(&tr), v.transform_sparse(&te));
        let vectorised = t.elapsed().as_secs_f64();
        let model = config.fit(&xtr, &ytr, &ds.label_names, None)?;
        let fitted = t.elapsed().as_secs_f64();
        let pred = model.predict(&xte)?;
        total_s.push(t.elapsed().as_secs_f64());
        vec_s.push(vectorised);
        fit_s.push(fitted - vectorised);
        accuracy = pred.iter().zip(&yte).filter(|(p, y)| p == y).count() as f64 / yte.len() as f64;
        vocabulary = v.dim();
        nnz = xtr.nnz();
    }
    let chars: usize = tr.iter().map(String::len).sum();
    println!(
        "{}",
        serde_json::json!({"vectorise_s": vec_s, "fit_s": fit_s, "total_s": total_s,
            "accuracy": accuracy, "vocabulary": vocabulary, "train_nnz": nnz,
            "train": tr.len(), "test": te.len(), "mean_chars": chars / tr.len().max(1)})
    );
    Ok(())
}
