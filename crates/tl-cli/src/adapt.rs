//! `tl adapt`: source-only vs label-free adaptation methods vs a target-supervised bound, for
//! one (source, target) pair of datasets with the same labels.

use anyhow::{Result, bail};
use ndarray::Array2;
use tl_assets::Registry;
use tl_eval::adapt::{coral, per_domain_standardize};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams, grid_search};

use crate::{TableArgs, UsageError, load_dataset, model::cached_features};

/// Arguments of `tl adapt`.
#[derive(clap::Args)]
pub(crate) struct AdaptArgs {
    /// Labelled source dataset.
    #[arg(long)]
    source: String,
    /// Target dataset (its labels are used only to score, and for the supervised bound).
    #[arg(long)]
    target: String,
    /// Backbone.
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// CORAL regulariser as a multiple of the mean feature variance.
    #[arg(long, default_value_t = 1.0)]
    eps_scale: f64,
    #[command(flatten)]
    table: TableArgs,
}

fn accuracy(
    xs: &Array2<f32>,
    ys: &[usize],
    xt: &Array2<f32>,
    yt: &[usize],
    names: &[String],
) -> Result<f64> {
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let model = head.fit(xs.view(), ys, names, None)?;
    let pred = model.predict(xt.view())?;
    Ok(pred.iter().zip(yt).filter(|(p, y)| p == y).count() as f64 / yt.len() as f64)
}

pub(crate) fn adapt(registry: &Registry, a: &AdaptArgs) -> Result<()> {
    if !(a.eps_scale.is_finite() && a.eps_scale > 0.0) {
        bail!(UsageError("--eps-scale must be a positive number".into()));
    }
    let src = load_dataset(registry, &a.source, &a.table)?;
    let tgt = load_dataset(registry, &a.target, &a.table)?;
    // Target labels are matched to source labels by name.
    let mut yt = Vec::with_capacity(tgt.len());
    for (i, &l) in tgt.labels.iter().enumerate() {
        let name = &tgt.label_names[l];
        match src.label_names.iter().position(|n| n == name) {
            Some(j) => yt.push(j),
            None => bail!(UsageError(format!(
                "target row {i}: label `{name}` never occurs in the source ({})",
                src.label_names.join(", ")
            ))),
        }
    }
    let all_s: Vec<usize> = (0..src.len()).collect();
    let all_t: Vec<usize> = (0..tgt.len()).collect();
    let xs = cached_features(registry, &a.model, &src, &all_s, 32)?.features;
    let xt = cached_features(registry, &a.model, &tgt, &all_t, 32)?.features;
    let names = &src.label_names;
    let source_only = accuracy(&xs, &src.labels, &xt, &yt, names)?;
    let (zs, zt) = per_domain_standardize(xs.view(), xt.view())?;
    let standardized = accuracy(&zs, &src.labels, &zt, &yt, names)?;
    let cs = coral(xs.view(), xt.view(), a.eps_scale)?;
    let coral_acc = accuracy(&cs, &src.labels, &xt, &yt, names)?;
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let bound = grid_search(&head, &[1.0], xt.view(), &yt, names, 10, 0)?.rows[0].mean;
    let gap = bound - source_only;
    let recovered = |acc: f64| {
        if gap.abs() < 1e-9 {
            "-".to_string()
        } else {
            format!("{:+.0}% of the gap", 100.0 * (acc - source_only) / gap)
        }
    };
    println!(
        "{} -> {} ({}, logistic regression C = 1)",
        src.name, tgt.name, a.model
    );
    println!("source only                 {:.1}%", 100.0 * source_only);
    println!(
        "per-domain standardisation  {:.1}%  {}",
        100.0 * standardized,
        recovered(standardized)
    );
    println!(
        "CORAL (eps = {} x variance) {:.1}%  {}",
        a.eps_scale,
        100.0 * coral_acc,
        recovered(coral_acc)
    );
    println!("target-supervised (10-fold) {:.1}%", 100.0 * bound);
    Ok(())
}
