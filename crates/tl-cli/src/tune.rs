//! `tl tune`: search a backbone's fine-tuning hyperparameters (learning rate, batch size,
//! epochs, trainable layers) by successive halving on a validation part of the training
//! rows, and compare the chosen configuration with the fixed default, frozen features and
//! the no-pretraining baseline on the same held-out rows. It writes the experiment file it
//! ran next to the report, so `tl run` reruns it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tl_assets::Registry;
use tl_assets::manifest::Modality;
use tl_finetune::Strategy;

use crate::{TableArgs, UsageError, ensure_model};

/// Arguments of `tl tune`.
#[derive(clap::Args)]
pub(crate) struct TuneArgs {
    /// Model to fine-tune (its manifest must declare trainable weights).
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Labelled dataset: a built-in name, a table file or an image folder.
    #[arg(long, default_value = "sentiment")]
    dataset: String,
    /// The default configuration's strategy (`full`, `top:N`, `head`): the fixed run and
    /// the search's base.
    #[arg(long, default_value = "full")]
    strategy: String,
    /// Learning rates to try (default 1e-5,2e-5,5e-5 for text, 2e-4,5e-4,1e-3 for images).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    learning_rates: Vec<f32>,
    /// Batch sizes to try (default 16,32 for text, 32,64 for images).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Epoch counts to try (default 2,3,4).
    #[arg(long, value_delimiter = ',')]
    epochs: Vec<usize>,
    /// Strategies to try, the number of layers that train (default full,top:2 for text,
    /// full,top:4 for images).
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Configurations tried (a larger grid is sampled, the default configuration first).
    #[arg(long, default_value_t = 12)]
    configurations: usize,
    /// One configuration in ETA continues at each rung.
    #[arg(long, default_value_t = 3)]
    eta: usize,
    /// Worst-case cost of the search, in runs of the default configuration.
    #[arg(long, default_value_t = 3.0)]
    budget: f32,
    /// Share of the rows held out as the test set (never seen by the search).
    #[arg(long, default_value_t = 0.3)]
    test_fraction: f64,
    /// Share of the training rows the configurations are compared on (and the fixed run
    /// stops early on).
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f32,
    /// Keep this many rows (stratified) before splitting.
    #[arg(long)]
    rows: Option<usize>,
    /// Images: input side in pixels (default the model's).
    #[arg(long)]
    resolution: Option<usize>,
    /// Do not train the fixed default configuration (no comparison with it).
    #[arg(long)]
    no_fixed: bool,
    /// Seed of the split, the sample of configurations and training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report folder (default: runs/tune-<model>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    table: TableArgs,
}

/// A TOML array of values as written.
fn array<T: std::fmt::Display>(v: &[T], quote: bool) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            if quote {
                format!("\"{x}\"")
            } else {
                x.to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The experiment `tl tune` runs, as a file.
fn experiment_toml(a: &TuneArgs, image: bool) -> Result<String> {
    let strategy = Strategy::parse(&a.strategy).map_err(|e| UsageError(e.to_string()))?;
    let strategies = if a.strategies.is_empty() {
        if image {
            vec!["full".to_string(), "top:4".to_string()]
        } else {
            vec!["full".to_string(), "top:2".to_string()]
        }
    } else {
        a.strategies.clone()
    };
    for s in &strategies {
        Strategy::parse(s).map_err(|e| UsageError(format!("--strategies: {e}")))?;
    }
    let or = |v: &[f32], d: [f32; 3]| if v.is_empty() { d.to_vec() } else { v.to_vec() };
    let lrs = or(
        &a.learning_rates,
        if image {
            [2e-4, 5e-4, 1e-3]
        } else {
            [1e-5, 2e-5, 5e-5]
        },
    );
    let batches = if a.batch_sizes.is_empty() {
        if image { vec![32, 64] } else { vec![16, 32] }
    } else {
        a.batch_sizes.clone()
    };
    let epochs = if a.epochs.is_empty() {
        vec![2, 3, 4]
    } else {
        a.epochs.clone()
    };
    let lrs: Vec<String> = lrs.iter().map(|v| format!("{v:e}")).collect();
    let stem = std::path::Path::new(&a.dataset)
        .file_stem()
        .map_or("data".into(), |s| s.to_string_lossy().into_owned());
    let name = format!("tune-{}-{}", a.model, stem)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>();
    let q = |s: &str| toml_string(s);
    let mut t = format!(
        "# Written by `tl tune`; rerun with `tl run <this file>`.\nname = {}\ndataset = {}\nbackbones = [{}]\nseed = {}\n\n[table]\ntext_column = {}\nlabel_column = {}\n",
        q(&name),
        q(&a.dataset),
        q(&a.model),
        a.seed,
        q(&a.table.text_column),
        q(&a.table.label_column),
    );
    if let Some(s) = &a.table.split_column {
        t.push_str(&format!("split_column = {}\n", q(s)));
    }
    t.push_str(&format!(
        "\n[protocol]\nkind = \"holdout\"\ntest_fraction = {}\n",
        a.test_fraction
    ));
    if let Some(n) = a.rows {
        t.push_str(&format!("\n[subsample]\ntrain = {n}\n"));
    }
    let resolution = a
        .resolution
        .map_or(String::new(), |r| format!("resolution = {r}\n"));
    if !a.no_fixed {
        t.push_str(&format!(
            "\n# The default configuration, fixed.\n[[finetune]]\nname = {}\nbackbone = {}\nstrategy = \"{strategy}\"\nvalidation_fraction = {}\nfew_shot = \"skip\"\n{resolution}",
            q(&format!("{}-{}-fixed", a.model, strategy.to_string().replace(':', ""))),
            q(&a.model),
            a.validation_fraction
        ));
    }
    t.push_str(&format!(
        "\n# The same, with its hyperparameters searched by successive halving.\n[[finetune]]\nname = {}\nbackbone = {}\nstrategy = \"{strategy}\"\nvalidation_fraction = {}\nfew_shot = \"skip\"\n{resolution}search = {{ learning_rate = [{}], batch_size = {}, epochs = {}, strategy = {}, configurations = {}, eta = {}, budget = {} }}\n",
        q(&format!("{}-{}-searched", a.model, strategy.to_string().replace(':', ""))),
        q(&a.model),
        a.validation_fraction,
        lrs.join(", "),
        array(&batches, false),
        array(&epochs, false),
        array(&strategies, true),
        a.configurations,
        a.eta,
        a.budget
    ));
    Ok(t)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn tune(registry: &Registry, a: &TuneArgs) -> Result<()> {
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        bail!(UsageError(format!(
            "--test-fraction must be in (0, 1), got {}",
            a.test_fraction
        )));
    }
    let base = ensure_model(registry, &a.model)?;
    tl_finetune::check_trainable(base)?;
    let image = base
        .model
        .as_ref()
        .is_some_and(|m| m.modality == Modality::Image);
    if a.resolution.is_some() && !image {
        bail!(UsageError(format!(
            "--resolution applies to image models; {} is a text model",
            a.model
        )));
    }
    let text = experiment_toml(a, image)?;
    crate::run_experiment_text(
        registry,
        &text,
        &PathBuf::from("tune.toml"),
        a.out.clone(),
        true,
    )
}
