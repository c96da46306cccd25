//! `tl adapt`: one (source, target) pair through the adaptation experiment runner: source-only
//! vs each label-free method (hyperparameters by reverse validation) vs a target-supervised
//! bound. Experiments over many pairs are TOML files run by `tl run`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tl_assets::{Cache, Registry};
use tl_eval::{AdaptationExperiment, Pair};

use crate::{TableArgs, UsageError};

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
    /// Methods, comma-separated: standardize, coral, subspace, importance (on features);
    /// simcse (text), dann (text and images) and adabn (images) adapt the backbone itself and take minutes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "standardize,coral,subspace,importance"
    )]
    methods: Vec<String>,
    /// Use at most this many rows of each dataset (a stratified sample).
    #[arg(long)]
    limit: Option<usize>,
    /// Also write report.json, summary.md and results.csv here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    table: TableArgs,
}

pub(crate) fn adapt(registry: &Registry, a: &AdaptArgs) -> Result<()> {
    let mut exp = AdaptationExperiment::new(
        "adapt",
        vec![a.model.clone()],
        vec![Pair {
            source: a.source.clone(),
            target: a.target.clone(),
        }],
    );
    let mut all = std::mem::take(&mut exp.methods);
    all.extend(tl_eval::MethodGrid::model_level());
    for name in &a.methods {
        match all.iter().find(|g| g.kind() == name) {
            Some(g) => exp.methods.push(g.clone()),
            None => bail!(UsageError(format!(
                "--methods: unknown method `{name}`; use standardize, coral, subspace, \
                 importance, simcse, dann or adabn"
            ))),
        }
    }
    exp.table = a.table.settings();
    exp.limit = a.limit;
    exp.check().map_err(UsageError)?;
    let cache = Cache::from_env();
    tl_assets::ensure_fetched(registry.get("onnxruntime")?, &cache)?;
    let report = tl_eval::run_adaptation(&exp, registry, &cache, true, &|line: &str| {
        eprintln!("{line}")
    })?;
    out_raw!("{}", tl_eval::adaptation_markdown(&report));
    if let Some(dir) = &a.out {
        tl_eval::write_report(&report, dir)?;
        eprintln!("report    {}", dir.join("summary.md").display());
    }
    Ok(())
}
