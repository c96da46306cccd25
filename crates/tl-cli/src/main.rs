//! `tl`: transfer learning with pretrained ONNX backbones: run experiments, embed datasets into
//! the feature cache, fit/predict/evaluate heads, inspect data and the cache.
//!
//! Exit codes: 0 success; 1 the work failed (data, model, I/O); 2 bad arguments or an invalid
//! experiment file.

/// `println!` for the command's output (stdout). A reader that went away (`tl ... | head`)
/// ends the program quietly, as Unix tools do; any other failure to write (a stdout on a
/// full disk, say) is reported and exits 1, never a panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the command's output; see [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::write_out(format_args!($($arg)*)) };
}

mod adapt;
mod embed;
mod finetune;
mod model;
mod select;
mod tune;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tl_assets::{Cache, Manifest, Registry};
use tl_data::Dataset;
use tl_data::TableSettings;
use tl_eval::{AdaptationExperiment, Experiment};
use tl_features::Store;

fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output to stdout: {e}");
        std::process::exit(1);
    }
}

/// The default experiment, embedded so `tl run` works from any folder.
const DEFAULT_EXPERIMENT: &str = include_str!("../experiments/sentiment.toml");

#[derive(Parser)]
#[command(
    name = "tl",
    version,
    about = "Transfer learning with pretrained ONNX backbones",
    after_help = "Exit codes: 0 success, 1 the work failed, 2 bad arguments or experiment file.\nLogs: TL_LOG=info (or debug). Cache and assets: $TL_HOME (default <workspace>/.tl-cache)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment file: backbones vs a no-transfer baseline, with verdicts and a report
    /// (or, for a file with `pairs`, domain adaptation across datasets).
    #[command(
        after_help = "Examples:\n  tl run                                  # experiments/sentiment.toml (built in)\n  tl run experiments/20newsgroups.toml\n  tl run experiments/mnist.toml --out runs/mnist\n  tl run experiments/adapt-sentiment.toml # domain adaptation, six pairs"
    )]
    Run {
        /// Experiment TOML (default: the built-in sentiment experiment).
        experiment: Option<PathBuf>,
        /// Report folder (default: runs/<name>-<UTC time>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Embed a dataset with a backbone (through the feature cache) and report timing and class
    /// separation.
    #[command(
        after_help = "Examples:\n  tl embed\n  tl embed --model paraphrase-minilm-l3-v2 --dataset sentiment-imdb\n  tl embed --model efficientnet-lite0 --dataset optdigits --batch-size 64\n  tl embed --model all-minilm-l6-v2 --dataset reviews.csv --text-column review\n  tl embed --no-cache     # measure raw extraction throughput\n  tl embed --dataset reviews.parquet --ray --workers 8 > pipeline.py   # the same on a Ray cluster"
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
        /// A stratified sample of about this many rows (seed 0: the same rows in every command).
        #[arg(long)]
        limit: Option<usize>,
        /// Items per inference batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Intra-op threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Bypass the feature cache and print throughput details.
        #[arg(long)]
        no_cache: bool,
        /// Print the same extraction as a Ray pipeline (a Python script for
        /// `transfer_learning.ray`) instead of running it here.
        #[arg(long, conflicts_with = "no_cache")]
        ray: bool,
        /// Ray actors in the printed pipeline (each with `--threads` CPUs, default 1).
        #[arg(long, default_value_t = 2, requires = "ray")]
        workers: usize,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Fit a head on a dataset split's features and save it to one JSON file.
    #[command(
        after_help = "Examples:\n  tl fit --dataset sentiment-amazon --out amazon.json\n  tl fit --model efficientnet-lite0 --dataset mnist --split train --limit 5000 --head ridge --param 10 --out mnist.json\n  tl fit --dataset 20newsgroups --split train --search --out 20ng.json   # C by 5-fold CV"
    )]
    Fit(model::FitArgs),
    /// Predict labels (and probabilities) with a saved head.
    #[command(
        after_help = "Examples:\n  tl predict --classifier amazon.json --text \"great phone\" --text \"broke in a week\"\n  tl predict --classifier amazon.json --dataset sentiment-yelp > yelp.csv"
    )]
    Predict(model::PredictArgs),
    /// Evaluate a saved head on a labelled dataset split.
    #[command(
        after_help = "Examples:\n  tl eval --classifier amazon.json --dataset sentiment-yelp\n  tl eval --classifier 20ng.json --dataset 20newsgroups --split test"
    )]
    Eval(model::EvalArgs),
    /// Rank backbones on labelled data by LogME, H-score, leave-one-out kNN and (with a
    /// source head) LEEP, next to the accuracy of a logistic head tuned by cross-validation.
    #[command(
        after_help = "Examples:\n  tl select --dataset sentiment-amazon --dataset sentiment-imdb --backbones all-minilm-l6-v2,paraphrase-minilm-l3-v2\n  tl select --dataset mnist --dataset optdigits --limit 2000 --backbones efficientnet-lite0,mobilenetv2,open-nsfw"
    )]
    Select(select::SelectArgs),
    /// Carry a head from a labelled source dataset to a target one: source-only vs per-domain
    /// standardisation, CORAL, subspace alignment and importance weighting (hyperparameters by
    /// reverse validation) vs a target-supervised bound.
    #[command(
        after_help = "Examples:\n  tl adapt --source sentiment-amazon --target sentiment-imdb\n  tl adapt --source sentiment-yelp --target sentiment-amazon --methods coral,subspace --out yelp-amazon"
    )]
    Adapt(adapt::AdaptArgs),
    /// Fine-tune a text encoder or an image network on a labelled dataset, export it as a new
    /// model (ONNX), and compare it with frozen features + logistic regression (and, for
    /// images, raw pixels) on the same held-out rows.
    #[command(
        after_help = "Examples:\n  tl finetune --name my-minilm                      # all-minilm-l6-v2 on sentiment, 3 epochs\n  tl finetune --model all-minilm-l6-v2 --dataset sentiment --strategy full --epochs 3 --lr 2e-5 --name my-minilm\n  tl finetune --dataset reviews.csv --text-column review --strategy top:2 --name reviews-top2\n  tl finetune --name setfit --strategy contrastive --shots 8 --pairs-per-item 20 --epochs 1\n  tl finetune --name my-minilm --resume             # continue after an interruption\n  tl finetune --model mobilenetv2 --dataset mnist --train-rows 10000 --test-rows 2000 --resolution 64 --epochs 5 --name mnist-mnv2\n  tl finetune --model efficientnet-lite0 --dataset my-photos/ --strategy top:3 --augment crop=0.6,flip --name photos\n  tl embed --model my-minilm --dataset sentiment-imdb   # the tuned model, like any other"
    )]
    Finetune(finetune::FinetuneArgs),
    /// Search fine-tuning hyperparameters (learning rate, batch size, epochs, trainable
    /// layers) by successive halving on a validation part of the training rows, and compare
    /// the chosen configuration with the fixed default, frozen features and the baseline on
    /// the same held-out rows.
    #[command(
        after_help = "Examples:\n  tl tune                                           # all-minilm-l6-v2 on sentiment: 12 configurations, at most 3 runs' time\n  tl tune --learning-rates 1e-5,3e-5,1e-4 --epochs 2,3 --strategies full,top:2,top:4\n  tl tune --model mobilenetv2 --dataset mnist --rows 4000 --resolution 64\n  tl tune --dataset reviews.csv --text-column review --configurations 6 --budget 2\n  tl run runs/tune-.../experiment.toml            # the same run again"
    )]
    Tune(tune::TuneArgs),
    /// Feature cache: sizes, export, compaction, garbage collection.
    Cache {
        #[command(subcommand)]
        command: CacheCmd,
    },
    /// Dataset commands.
    Data {
        #[command(subcommand)]
        command: DataCmd,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Backbones in the cache with their items and bytes.
    Info,
    /// Export a dataset's features with ids and labels to Parquet or CSV.
    #[command(
        after_help = "Examples:\n  tl cache export --dataset sentiment --out sentiment-minilm.parquet\n  tl cache export --model efficientnet-lite0 --dataset optdigits --out digits.csv"
    )]
    Export {
        /// Backbone name.
        #[arg(long, default_value = "all-minilm-l6-v2")]
        model: String,
        /// Dataset.
        #[arg(long, default_value = "sentiment")]
        dataset: String,
        /// Split (default: every item).
        #[arg(long)]
        split: Option<String>,
        /// Output file; `.parquet` or `.csv`.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Merge each backbone's small shards.
    Compact,
    /// Delete backbones not used for N days.
    Gc {
        /// Days without use.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
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

#[derive(clap::Args, Clone)]
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

impl TableArgs {
    fn settings(&self) -> TableSettings {
        TableSettings {
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
            split_column: self.split_column.clone(),
        }
    }
}

/// Errors that mean "you asked for something invalid" rather than "the work failed".
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    // A panic inside a dependency that tl turns into an error (a damaged Parquet file) is
    // reported by that error alone, not by the panic message as well.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tl_data::inside_guard() {
            default_hook(info);
        }
    }));
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        let usage = e.downcast_ref::<UsageError>().is_some()
            || matches!(
                e.downcast_ref::<tl_eval::EvalError>(),
                Some(tl_eval::EvalError::Experiment { .. })
            );
        std::process::exit(if usage { 2 } else { 1 });
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut registry = Registry::builtin()?;
    // Models this machine fine-tuned are found by name like the built-in ones.
    registry.add_local(&Cache::from_env())?;
    match cli.command {
        Cmd::Run { experiment, out } => run_experiment(&registry, experiment.as_deref(), out),
        Cmd::Embed {
            model,
            dataset,
            ray: true,
            workers,
            threads,
            table,
            ..
        } => embed::ray_pipeline(&registry, &model, &dataset, workers, threads, &table),
        Cmd::Embed {
            model,
            dataset,
            split,
            limit,
            batch_size,
            threads,
            no_cache,
            table,
            ..
        } => embed::embed(
            &registry,
            &model,
            &dataset,
            split.as_deref(),
            limit,
            batch_size,
            threads,
            &table,
            no_cache,
        ),
        Cmd::Fit(args) => model::fit(&registry, &args),
        Cmd::Predict(args) => model::predict(&registry, &args),
        Cmd::Eval(args) => model::eval(&registry, &args),
        Cmd::Select(args) => select::select(&registry, &args),
        Cmd::Adapt(args) => adapt::adapt(&registry, &args),
        Cmd::Finetune(args) => finetune::finetune(&registry, &args),
        Cmd::Tune(args) => tune::tune(&registry, &args),
        Cmd::Cache { command } => cache(&registry, command),
        Cmd::Data {
            command: DataCmd::Info { dataset, table },
        } => {
            let ds = load_dataset(&registry, &dataset, &table)?;
            out_raw!("{}", ds.summary());
            Ok(())
        }
    }
}

/// Fetches the runtime and the model if needed and returns the model's manifest.
fn ensure_model<'r>(registry: &'r Registry, model: &str) -> Result<&'r Manifest> {
    let m = model_manifest(registry, model)?;
    tl_assets::ensure_fetched(m, &Cache::from_env())
        .with_context(|| format!("fetching {model}"))?;
    Ok(m)
}

/// Fetches the runtime if needed and returns the model's manifest (an unknown name or a
/// non-model is a usage error), leaving the model itself to the library call that opens it
/// through the cache (`tl_eval::runner::backbone_features` fetches and verifies it).
fn model_manifest<'r>(registry: &'r Registry, model: &str) -> Result<&'r Manifest> {
    tl_assets::ensure_fetched(registry.get("onnxruntime")?, &Cache::from_env())
        .context("fetching the ONNX Runtime library")?;
    let m = registry.get(model).map_err(|e| UsageError(e.to_string()))?;
    if m.model.is_none() {
        bail!(UsageError(format!(
            "{model} is a {:?} asset, not a model",
            m.kind
        )));
    }
    Ok(m)
}

fn load_dataset(registry: &Registry, name: &str, table: &TableArgs) -> Result<Dataset> {
    match tl_data::load_dataset(registry, &Cache::from_env(), name, &table.settings()) {
        // An unknown name or a missing path is a bad argument (exit 2); a file that cannot
        // be read as data is a failed job (exit 1).
        Err(tl_data::DataError::Resolve(message)) => bail!(UsageError(message)),
        r => Ok(r?),
    }
}

/// Checks, before any work, that a report folder can be written: not an existing file, and
/// creatable and writable (a read-only folder used to fail only after the whole run).
fn check_report_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(UsageError(format!(
            "--out {}: exists and is not a folder; name a new or existing folder",
            dir.display()
        )));
    }
    check_writable_dir(dir).with_context(|| {
        format!(
            "--out {}: the report folder cannot be written",
            dir.display()
        )
    })
}

/// Creates `dir` if needed and proves a file can be written in it.
pub(crate) fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".tl-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Checks, before any work, that an output file can be written: its folder exists and is
/// writable, it is not a folder, and its extension is one of `extensions` (when given).
pub(crate) fn check_output_file(path: &Path, flag: &str, extensions: &[&str]) -> Result<()> {
    if !extensions.is_empty() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !extensions.contains(&ext) {
            bail!(UsageError(format!(
                "{flag} {}: the format comes from the extension: use {}",
                path.display(),
                extensions
                    .iter()
                    .map(|e| format!(".{e}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }
    if path.is_dir() {
        bail!(UsageError(format!(
            "{flag} {}: is a folder; name a file",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(UsageError(format!(
            "{flag} {}: folder {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    check_writable_dir(parent)
        .with_context(|| format!("{flag} {}: its folder cannot be written", path.display()))
}

/// `runs/<name>-<UTC time>`, where a run's report goes without `--out`.
fn default_report_dir(name: &str) -> PathBuf {
    PathBuf::from("runs").join(format!("{name}-{}", utc_stamp()))
}

/// `YYYYmmdd-HHMMSS` in UTC, for report folder names.
fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run_experiment(registry: &Registry, path: Option<&Path>, out: Option<PathBuf>) -> Result<()> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| tl_eval::EvalError::Io {
                path: p.to_path_buf(),
                source: e,
            })?,
            p.to_path_buf(),
        ),
        None => (
            DEFAULT_EXPERIMENT.to_string(),
            PathBuf::from("experiments/sentiment.toml"),
        ),
    };
    run_experiment_text(registry, &text, &origin, out, false)
}

/// Runs an experiment given as text (`origin` names it in errors); `save`: the text is
/// also written to the report folder as `experiment.toml`.
fn run_experiment_text(
    registry: &Registry,
    text: &str,
    origin: &Path,
    out: Option<PathBuf>,
    save: bool,
) -> Result<()> {
    let text = text.to_string();
    let origin = origin.to_path_buf();
    let cache = Cache::from_env();
    if AdaptationExperiment::is_adaptation(&text) {
        let exp = AdaptationExperiment::from_toml(&text, &origin)?;
        let dir = out.unwrap_or_else(|| default_report_dir(&exp.name));
        check_report_dir(&dir)?;
        tl_assets::ensure_fetched(registry.get("onnxruntime")?, &cache)
            .context("fetching the ONNX Runtime library")?;
        return run_adaptation_experiment(registry, &cache, &exp, &dir);
    }
    let exp = Experiment::from_toml(&text, &origin)?;
    let dir = out.unwrap_or_else(|| default_report_dir(&exp.name));
    check_report_dir(&dir)?;
    if save {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("experiment.toml");
        std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        out!("file      {} (rerun with tl run)", file.display());
    }
    tl_assets::ensure_fetched(registry.get("onnxruntime")?, &cache)
        .context("fetching the ONNX Runtime library")?;
    out!("experiment {}", exp.name);
    let report = tl_eval::run(&exp, registry, &cache, true, &|line: &str| out!("{line}"))?;
    let files = tl_eval::write_report(&report, &dir)?;
    if let Some(sentence) = tl_eval::ranking_sentence(&report.ranking, &report.pairwise) {
        out!("ranking   {sentence}");
    }
    out!(
        "report    {} ({} files, run took {:.1}s)",
        dir.join("summary.md").display(),
        files.len(),
        report.seconds
    );
    Ok(())
}

fn run_adaptation_experiment(
    registry: &Registry,
    cache: &Cache,
    exp: &AdaptationExperiment,
    dir: &Path,
) -> Result<()> {
    out!("adaptation experiment {}", exp.name);
    let report = tl_eval::run_adaptation(exp, registry, cache, true, &|line: &str| out!("{line}"))?;
    tl_eval::write_report(&report, dir)?;
    for m in &report.summary {
        out!(
            "summary   {:<18} {:<12} {:+5.2} points, gap recovered: mean {}, pooled {} ({} helps, {} hurts of {})",
            m.backbone,
            m.method,
            m.mean_difference_points,
            m.mean_gap_recovered
                .map_or("-".into(), |v| format!("{:+.0}%", 100.0 * v)),
            m.pooled_gap_recovered
                .map_or("-".into(), |v| format!("{:+.0}%", 100.0 * v)),
            m.helped,
            m.hurt,
            m.pairs
        );
    }
    out!(
        "report    {} (run took {:.1}s)",
        dir.join("summary.md").display(),
        report.seconds
    );
    Ok(())
}

fn cache(registry: &Registry, command: CacheCmd) -> Result<()> {
    let store = Store::from_cache(&Cache::from_env());
    match command {
        CacheCmd::Info => {
            let all = store.info()?;
            let (fits, bytes) = store.derived_info();
            if all.is_empty() && fits == 0 {
                out!("feature cache {} is empty", store.root().display());
            }
            if fits > 0 {
                out!(
                    "remembered head fits: {fits} files, {:.1} MB (tl cache gc deletes the unused)",
                    bytes as f64 / 1e6
                );
            }
            for s in all {
                let (model, dim) = s
                    .manifest
                    .as_ref()
                    .map_or(("?".to_string(), 0), |m| (m.model.clone(), m.dim));
                let used = s
                    .last_used
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map_or("never".into(), |d| {
                        format!("{:.1} days ago", d.as_secs_f64() / 86_400.0)
                    });
                out!(
                    "{:<28} {:>8} vectors  {:>4}-d  {:>8.1} MB  {:>4} shards  used {used}  {}",
                    model,
                    s.rows,
                    dim,
                    s.bytes as f64 / 1e6,
                    s.shards,
                    s.dir.display()
                );
            }
            Ok(())
        }
        CacheCmd::Export {
            model,
            dataset,
            split,
            out,
            table,
        } => {
            check_output_file(&out, "--out", &["parquet", "csv"])?;
            let ds = load_dataset(registry, &dataset, &table)?;
            let indices: Vec<usize> = match &split {
                Some(s) => ds.split(s)?.to_vec(),
                None => (0..ds.len()).collect(),
            };
            let features = model::cached_features(registry, &model, &ds, &indices)?;
            let ids: Vec<String> = indices.iter().map(|i| format!("{}:{i}", ds.name)).collect();
            let labels: Vec<String> = indices
                .iter()
                .map(|&i| ds.label_names[ds.labels[i]].clone())
                .collect();
            tl_features::export_features(&out, &ids, &labels, features.features.view())?;
            out!(
                "exported {} rows x {} features to {}",
                indices.len(),
                features.features.ncols(),
                out.display()
            );
            Ok(())
        }
        CacheCmd::Compact => {
            for s in store.info()? {
                let Some(m) = s.manifest else { continue };
                let name = m.model.clone();
                let (before, after) = store.backbone(m)?.compact()?;
                out!("{name}: {before} -> {after} shards");
            }
            Ok(())
        }
        CacheCmd::Gc { days, dry_run } => {
            // More than about 10^14 days would overflow the seconds; nothing is that old.
            let secs = days.checked_mul(86_400).ok_or_else(|| {
                UsageError(format!(
                    "--days {days} is too large (at most {})",
                    u64::MAX / 86_400
                ))
            })?;
            let removed = store.gc(Duration::from_secs(secs), dry_run)?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for s in &removed {
                out!(
                    "{verb} {} ({:.1} MB)",
                    s.dir.display(),
                    s.bytes as f64 / 1e6
                );
            }
            let (fits, bytes) = store.gc_derived(Duration::from_secs(secs), dry_run)?;
            if fits > 0 {
                out!(
                    "{verb} {fits} remembered head fits ({:.1} MB)",
                    bytes as f64 / 1e6
                );
            }
            if removed.is_empty() && fits == 0 {
                out!("nothing unused for {days} days");
            }
            Ok(())
        }
    }
}
