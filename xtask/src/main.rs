//! Project automation: `cargo xtask fetch`, `cargo xtask test`, `cargo xtask assets`,
//! `cargo xtask bench`, `cargo xtask fuzz`.

mod bench;
mod bench_finetune;
mod fuzz;
mod library;
mod python;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tl_assets::{Cache, FetchReport, Fetcher, FileOutcome, FileState, Manifest, Registry};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "transfer-learning-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch assets (runtime, models, datasets) into $TL_HOME, verified.
    ///
    /// With no names, fetches every default asset. Idempotent: a second run checks the
    /// checksums and downloads nothing.
    #[command(
        after_help = "Examples:\n  cargo xtask fetch\n  cargo xtask fetch onnxruntime all-minilm-l6-v2\n  TL_HOME=/data/tl cargo xtask fetch mnist"
    )]
    Fetch {
        /// Asset names (see `cargo xtask assets`).
        names: Vec<String>,
        /// Also read manifests from this folder (your own models and datasets).
        #[arg(long)]
        manifests: Option<std::path::PathBuf>,
    },
    /// List assets and the state of their files in the cache, without fetching.
    Assets {
        /// Also read manifests from this folder.
        #[arg(long)]
        manifests: Option<std::path::PathBuf>,
    },
    /// Benchmark extraction against the Python stack, side by side (writes target/bench/).
    Bench {
        /// Fewer items (about 5 minutes on 2 cores after the release build).
        #[arg(long)]
        quick: bool,
        /// Run one workload alone: `finetune` (text) or `image-finetune` (tl-finetune vs
        /// PyTorch), `tfidf` (the sparse TF-IDF baseline vs scikit-learn) or `levers` (text
        /// extraction's levers on one ONNX Runtime, with a profile).
        #[arg(long)]
        only: Option<String>,
    },
    /// Check that the `tl` binary, the Python wheel and the test build enable the same
    /// features of every package they share (else polars compiles twice).
    Features,
    /// Build the Python package (an abi3 wheel for CPython >= 3.9) into target/wheels/ with
    /// maturin from the helper virtualenv.
    #[command(
        after_help = "Examples:\n  cargo xtask wheel\n  pip install target/wheels/transfer_learning_rs-*.whl"
    )]
    Wheel {
        /// The dev profile (seconds after a test build) instead of an optimised release build.
        #[arg(long)]
        dev: bool,
    },
    /// Build the dev wheel, install it into the helper virtualenv and run the Python tests,
    /// the Ray ones on a local cluster (part of `cargo xtask test`).
    Pytest {
        /// Extra arguments passed to pytest (`-k ray`, `-x`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The library as its users meet it: build and run the README's program in a fresh
    /// workspace that depends on the crates by path, and `cargo package` every publishable
    /// crate (part of `cargo xtask test`).
    Library {
        /// Also compile every package from its packaged files (slow: a build of the tree).
        #[arg(long)]
        verify: bool,
    },
    /// Fuzz every parser of outside data (tl-fuzz), each target in its own process under a
    /// memory limit and a hang watchdog; findings go to target/fuzz/<target>/.
    #[command(
        after_help = "Examples:\n  cargo xtask fuzz                      # every target, 60 s each\n  cargo xtask fuzz --seconds 600 table-json classifier\n  cargo xtask fuzz --list"
    )]
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// First seed (each target run uses its own stream from it).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Parallel worker processes (default: 1).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// List the targets and stop.
        #[arg(long)]
        list: bool,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Fetch what the tests need, then run the whole test suite and a short fuzzing pass.
    #[command(
        after_help = "Examples:\n  cargo xtask test\n  cargo xtask test --offline      # the tier that needs no network and no downloaded asset\n  cargo xtask test -- --nocapture"
    )]
    Test {
        /// Only the tests that need no network and no downloaded model or dataset (parsers,
        /// heads, metrics, the cache, training on synthetic data, fuzz regressions): seconds
        /// after a build, nothing fetched.
        #[arg(long)]
        offline: bool,
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match Cli::parse().command {
        Cmd::Fetch { names, manifests } => {
            let registry = registry(manifests.as_deref())?;
            fetch(&registry, &names)?;
        }
        Cmd::Assets { manifests } => assets(&registry(manifests.as_deref())?)?,
        Cmd::Test { offline, args } => test(offline, &args)?,
        Cmd::Features => check_unified_features(&cargo())?,
        Cmd::Wheel { dev } => {
            python::wheel(!dev)?;
        }
        Cmd::Pytest { args } => python::pytest(&args)?,
        Cmd::Library { verify } => {
            library::users_eye()?;
            library::package(verify)?;
        }
        Cmd::Fuzz {
            seconds,
            seed,
            jobs,
            list,
            targets,
        } => fuzz::fuzz(seconds, seed, jobs, list, &targets)?,
        Cmd::Bench { quick, only } => bench::bench(quick, only.as_deref())?,
    }
    Ok(())
}

fn registry(extra: Option<&std::path::Path>) -> Result<Registry> {
    let mut registry = Registry::builtin().context("built-in manifests")?;
    if let Some(dir) = extra {
        registry.add_dir(dir)?;
    }
    Ok(registry)
}

fn fetch(registry: &Registry, names: &[String]) -> Result<Vec<FetchReport>> {
    let manifests: Vec<&Manifest> = if names.is_empty() {
        registry.defaults().collect()
    } else {
        names
            .iter()
            .map(|n| registry.get(n))
            .collect::<Result<_, _>>()?
    };
    let fetcher = Fetcher::new(Cache::from_env());
    eprintln!("cache: {}", fetcher.cache().root().display());
    let start = Instant::now();
    let mut reports = Vec::new();
    for m in manifests {
        let t = Instant::now();
        let report = fetcher
            .fetch(m)
            .with_context(|| format!("fetching {}", m.name))?;
        let fetched: Vec<String> = report
            .files
            .iter()
            .filter_map(|(path, o)| match o {
                FileOutcome::Present => None,
                FileOutcome::Fetched {
                    source,
                    replaced_corrupt,
                } => Some(format!(
                    "{}{} ({source})",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    if *replaced_corrupt {
                        ", replaced a corrupt copy"
                    } else {
                        ""
                    }
                )),
            })
            .collect();
        if fetched.is_empty() {
            eprintln!(
                "{:<26} up to date ({} files verified)",
                m.name,
                report.files.len()
            );
        } else {
            eprintln!(
                "{:<26} fetched {} in {:.1}s: {}",
                m.name,
                fetched.len(),
                t.elapsed().as_secs_f64(),
                fetched.join(", ")
            );
        }
        reports.push(report);
    }
    if reports.iter().all(FetchReport::was_noop) {
        eprintln!(
            "nothing to download: all {} assets up to date ({:.1}s)",
            reports.len(),
            start.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
    }
    Ok(reports)
}

fn assets(registry: &Registry) -> Result<()> {
    let fetcher = Fetcher::new(Cache::from_env());
    println!("cache: {}", fetcher.cache().root().display());
    for m in registry.iter() {
        let states = fetcher.verify(m)?;
        let ok = states.iter().filter(|(_, s)| *s == FileState::Ok).count();
        let bad: Vec<String> = states
            .iter()
            .filter_map(|(p, s)| match s {
                FileState::Ok => None,
                FileState::Missing => Some(format!("{} missing", p.display())),
                FileState::Corrupt { .. } => Some(format!("{} CORRUPT", p.display())),
            })
            .collect();
        println!(
            "{:<26} {:<8} {:<8} {}/{} files ok  {}",
            m.name,
            format!("{:?}", m.kind).to_lowercase(),
            if m.default { "default" } else { "" },
            ok,
            states.len(),
            m.description
        );
        for b in bad {
            println!("    {b}");
        }
    }
    Ok(())
}

/// The test binaries that need no network and no downloaded asset (names are unique across
/// the workspace): tl-assets' fetch and manifests, tl-data's loaders and split, tl-heads'
/// behaviour, tl-features' store, tl-eval's experiment and transfer, tl-finetune's gradients,
/// train, cnn and vision_train, tl-fuzz's regressions; plus every library's unit tests.
const OFFLINE_TESTS: &[&str] = &[
    "fetch",
    "manifests",
    "loaders",
    "split",
    "behaviour",
    "store",
    "experiment",
    "transfer",
    "gradients",
    "train",
    "cnn",
    "vision_train",
    "regressions",
];

fn offline_tests(args: &[String]) -> Result<()> {
    let cargo = crate::cargo();
    let start = Instant::now();
    // One workspace-wide invocation: the same features as the full suite, so nothing is
    // compiled again (per-package `-p` runs unify features differently and rebuild polars).
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--workspace", "--lib"]);
    for t in OFFLINE_TESTS {
        cmd.args(["--test", t]);
    }
    let status = cmd
        .args(args)
        // An empty cache and no package clients: a test that needed either would fail.
        .env(
            "TL_HOME",
            std::env::temp_dir().join("tl-offline-tests-empty-cache"),
        )
        .env("TL_PYTHON", "/nonexistent/python-offline")
        .env("TL_NPM", "/nonexistent/npm-offline")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("offline tests failed ({status})");
    }
    eprintln!(
        "offline tier passed in {:.0} s (no asset fetched)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cargo that runs this task (`CARGO`, set by `cargo xtask`), so nested builds use the
/// same toolchain.
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The style gate of every change: formatting, and clippy with warnings as errors on every
/// target (the library crates' `#![warn(missing_docs)]` included).
fn lint(cargo: &str) -> Result<()> {
    for args in [
        &["fmt", "--all", "--check"][..],
        &[
            "clippy",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ] {
        let status = Command::new(cargo)
            .args(args)
            .status()
            .with_context(|| format!("running cargo {}", args[0]))?;
        if !status.success() {
            bail!("cargo {} found problems ({status})", args.join(" "));
        }
    }
    eprintln!("cargo fmt --check and cargo clippy -D warnings: clean");
    Ok(())
}

/// Each package's enabled features, as `cargo tree --format "{p}|{f}"` prints them.
/// Each package of a `cargo tree` and its feature sets: one per build context, since a package
/// built both for the host (proc macros, build scripts) and for the target is resolved
/// separately in each (resolver 2), and two different sets mean two compilations.
fn features_of(cargo: &str, args: &[&str]) -> Result<BTreeMap<String, BTreeSet<Vec<String>>>> {
    let out = Command::new(cargo)
        .arg("tree")
        .args(args)
        .args(["--prefix", "none", "--format", "{p}|{f}"])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut map = BTreeMap::<String, BTreeSet<Vec<String>>>::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((package, features)) = line.trim_end_matches(" (*)").split_once('|') else {
            continue;
        };
        let package = package.trim_end_matches(" (proc-macro)");
        let mut set: Vec<String> = features
            .split(',')
            .filter(|f| !f.is_empty())
            .map(String::from)
            .collect();
        set.sort();
        map.entry(package.to_string()).or_default().insert(set);
    }
    Ok(map)
}

/// The README's two commands must share one build of the heavy crates: every package that the
/// `tl` binary (or the Python wheel, which `cargo xtask wheel` builds alone) uses must have the
/// same feature sets in it as in the test build (which adds dev-dependencies and the other
/// members), host and target contexts alike, or polars and its dependents compile twice (a
/// proc macro's `syn` differing in one feature rebuilt bytemuck, half and every polars crate).
fn check_unified_features(cargo: &str) -> Result<()> {
    let all = features_of(cargo, &["--workspace", "-e", "normal,build,dev"])?;
    for package in ["tl-cli", "tl-python"] {
        let alone = features_of(cargo, &["-p", package, "-e", "normal,build"])?;
        let differ: Vec<String> = alone
            .iter()
            .filter_map(|(p, sets)| {
                let g = all.get(p)?;
                let only = |a: &BTreeSet<Vec<String>>, b: &BTreeSet<Vec<String>>| {
                    a.difference(b).map(|s| s.join(",")).collect::<Vec<_>>()
                };
                (g != sets).then(|| {
                    format!(
                        "{p}: the test build has {:?}, {package} alone has {:?}",
                        only(g, sets),
                        only(sets, g)
                    )
                })
            })
            .collect();
        if !differ.is_empty() {
            bail!(
                "a build of {package} alone and the test build would compile these packages (and \
                 all that depend on them) twice; ask for the same features in \
                 crates/{package}/Cargo.toml's unification block (a package a proc macro uses \
                 is unified from [build-dependencies]):\n  {}",
                differ.join("\n  ")
            );
        }
        eprintln!(
            "features unified: {package} and the test build share all {} packages",
            alone.len()
        );
    }
    Ok(())
}

/// What a clean clone's `cargo xtask test` writes, measured: ~6.2 GB under `target/` (test
/// binaries of 50-190 MB each, the wheel's and the packaged crates' builds), ~2 GB of assets
/// and virtualenvs under `$TL_HOME`, and the crates in cargo's download cache.
const TEST_DISK_GB: f64 = 10.0;

/// Says up front when the disk is short: a disk that fills while a test binary links makes
/// `ld` die of SIGBUS ("ld terminated with signal 7 [Bus error]"), which names no cause.
fn warn_if_disk_is_short() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target
        .ancestors()
        .find_map(|d| d.canonicalize().ok())
        .unwrap_or_else(|| ".".into());
    match free_gb(&dir) {
        Some(free) if free < TEST_DISK_GB => eprintln!(
            "warning: {free:.1} GB free on the disk of {}; a clean test run writes about \
             {TEST_DISK_GB:.0} GB (build, assets, virtualenvs), and a full disk fails the \
             link of a test binary with `signal 7 [Bus error]`",
            dir.display()
        ),
        Some(free) => eprintln!("{free:.0} GB free on the disk of {}", dir.display()),
        None => {}
    }
}

/// Free space of the file system holding `dir`, from POSIX `df -Pk` (none where it fails).
fn free_gb(dir: &std::path::Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    // Header, then `filesystem blocks used available capacity mount`.
    let kb: f64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e9)
}

fn test(offline: bool, args: &[String]) -> Result<()> {
    if offline {
        return offline_tests(args);
    }
    warn_if_disk_is_short();
    let registry = registry(None)?;
    fetch(&registry, &[])?;
    // The helper virtualenv runs the converter's ImageNet checks and the Python
    // reference scripts that some tests compare against.
    Fetcher::new(Cache::from_env())
        .python_env()
        .context("creating the helper Python virtualenv")?;
    let cargo = crate::cargo();
    let status = Command::new(&cargo)
        .args(["test", "--workspace"])
        .args(args)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    // The CUDA execution provider cannot run here, but it must keep compiling.
    let status = Command::new(&cargo)
        .args([
            "check",
            "--quiet",
            "-p",
            "tl-backbone",
            "--features",
            "cuda",
        ])
        .status()
        .context("running cargo check --features cuda")?;
    if !status.success() {
        bail!("tl-backbone does not compile with the `cuda` feature ({status})");
    }
    eprintln!("tl-backbone compiles with the `cuda` feature");
    lint(&cargo)?;
    check_unified_features(&cargo)?;
    // The Python package as its users meet it: built, installed, and tested from Python,
    // with distributed extraction on a real local Ray cluster.
    python::pytest(&[])?;
    // The library as a user meets it: the README's program in a fresh workspace, and every
    // publishable crate packaged from its own files.
    library::users_eye()?;
    library::package(false)?;
    // Every parser of outside data, a few seconds each, in worker processes with a memory
    // limit and a hang watchdog (the long campaigns: `cargo xtask fuzz`).
    fuzz::fuzz(5, 0, 2, false, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_df() {
        let free = free_gb(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(free.is_some_and(|g| g > 0.0), "{free:?}");
        assert_eq!(free_gb(std::path::Path::new("/nonexistent/tl-disk")), None);
    }
}
