//! The Python package: `cargo xtask wheel` builds the abi3 wheel with maturin, and
//! `cargo xtask pytest` (part of `cargo xtask test`) installs it into the helper virtualenv and
//! runs its tests, the Ray ones on a local Ray cluster they start themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tl_assets::{Cache, Fetcher};

/// The Python tests take under a minute here; past this they are stopped.
const PYTEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What the wheel build and the Python tests need in the helper virtualenv.
const DEV_REQUIREMENTS: &str = include_str!("../../crates/tl-python/requirements-dev.txt");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// The helper virtualenv's Python, with maturin, pytest and Ray installed (once; a stamp
/// records which requirements it holds).
pub fn dev_python() -> Result<PathBuf> {
    let python = Fetcher::new(Cache::from_env())
        .python_env()
        .context("creating the helper Python virtualenv")?;
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("the helper virtualenv's python has no folder")?
        .to_path_buf();
    let stamp = venv.join(".tl-python-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(DEV_REQUIREMENTS) {
        return Ok(python);
    }
    let req = venv.join("requirements-dev.txt");
    std::fs::write(&req, DEV_REQUIREMENTS).with_context(|| format!("writing {}", req.display()))?;
    eprintln!("installing maturin, pytest and ray into the helper virtualenv");
    pip_install(&python, &["-r".as_ref(), req.as_os_str()])
        .context("check that PyPI is reachable")?;
    std::fs::write(&stamp, DEV_REQUIREMENTS)
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

/// `python -m pip install -q ARGS`.
fn pip_install(python: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let status = Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(args)
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("pip install {args:?} failed ({status})");
    }
    Ok(())
}

/// Builds the wheel into `target/wheels/` and returns its path. `release` builds the
/// optimised wheel users install; the tests use the dev profile, which shares the test
/// build's compiled dependencies (seconds instead of a second full build).
pub fn wheel(release: bool) -> Result<PathBuf> {
    let start = Instant::now();
    let python = dev_python()?;
    let repo = repo();
    let out = repo.join("target").join("wheels");
    let maturin = python.with_file_name("maturin");
    let mut cmd = Command::new(&maturin);
    cmd.current_dir(&repo)
        .args([
            "build",
            "--quiet",
            "-m",
            "crates/tl-python/Cargo.toml",
            "--out",
        ])
        .arg(&out)
        .arg("--interpreter")
        .arg(&python);
    if release {
        cmd.arg("--release");
    } else {
        cmd.args(["--profile", "dev"]);
    }
    // Only this build's wheel is left to be picked up below.
    let _ = std::fs::remove_dir_all(&out);
    let status = cmd
        .status()
        .with_context(|| format!("running {}", maturin.display()))?;
    if !status.success() {
        bail!("maturin build failed ({status})");
    }
    let wheel = std::fs::read_dir(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("maturin left no wheel in {}", out.display()))?;
    let mb = std::fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    eprintln!(
        "wheel {} ({mb:.1} MB) built in {:.0}s",
        wheel.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(wheel)
}

/// Builds the dev wheel, installs it into the helper virtualenv and runs the package's
/// pytest suite (`crates/tl-python/pytests/`) against this checkout's cache and `tl` binary.
pub fn pytest(args: &[String]) -> Result<()> {
    let start = Instant::now();
    let wheel = wheel(false)?;
    let python = dev_python()?;
    pip_install(
        &python,
        &[
            "--force-reinstall".as_ref(),
            "--no-deps".as_ref(),
            wheel.as_os_str(),
        ],
    )?;
    // The tests compare with the `tl` command; build it (a no-op after `cargo test`).
    let status = Command::new(crate::cargo())
        .args(["build", "--quiet", "-p", "tl-cli"])
        .status()
        .context("building tl")?;
    if !status.success() {
        bail!("cargo build -p tl-cli failed ({status})");
    }
    let repo = repo();
    // Where cargo put it: CARGO_TARGET_DIR (relative to the repository) when set.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| repo.join("target"), |d| repo.join(d));
    let tl = target.join("debug").join("tl");
    let mut child = Command::new(&python)
        .current_dir(&repo)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "crates/tl-python/pytests",
        ])
        .args(args)
        .env("TL_BIN", &tl)
        .env("TL_HOME", Cache::from_env().root())
        .spawn()
        .context("running pytest")?;
    // Bounded: a Ray pipeline that waits for resources waits for ever, and CI has a budget.
    let deadline = Instant::now() + PYTEST_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for pytest")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new(python.with_file_name("ray"))
                .args(["stop", "--force"])
                .status();
            bail!(
                "the Python package's tests did not finish in {} s (they take under a minute); \
                 stopped them and the Ray cluster",
                PYTEST_LIMIT.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if !status.success() {
        bail!("the Python package's tests failed ({status})");
    }
    eprintln!(
        "Python package: wheel built, installed and tested in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
