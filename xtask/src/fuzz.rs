//! `cargo xtask fuzz`: builds `tl-fuzz` with the test suite (so the suite's compiled
//! dependencies are reused) and runs each target in its own worker process. A worker that
//! exits 1 found panics (saved by the worker); 3 is a hang (saved by its watchdog); death by a
//! signal or an allocation failure is a crash, and the input it was running (`current`) is
//! kept as `crash-*`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn worker() -> Result<PathBuf> {
    let cargo = crate::cargo();
    // The test build makes target/debug/tl-fuzz for tl-fuzz's integration tests; building
    // it that way (the whole workspace's test features) reuses the suite's artefacts, where
    // `cargo build -p tl-fuzz` unifies features differently and compiles polars again.
    let status = Command::new(&cargo)
        .args(["test", "--workspace", "--no-run", "--quiet"])
        .status()
        .context("building tl-fuzz")?;
    if !status.success() {
        bail!("building tl-fuzz failed ({status})");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug").join("tl-fuzz"))
}

/// One worker's outcome.
struct Outcome {
    target: String,
    summary: String,
    finding: Option<String>,
}

fn run_target(bin: &Path, out_root: &Path, name: &str, seconds: u64, seed: u64) -> Result<Outcome> {
    let out = out_root.join(name);
    std::fs::create_dir_all(&out)?;
    let o = Command::new(bin)
        .args([
            "run",
            name,
            "--seconds",
            &seconds.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let last = |s: &str| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    };
    let finding = match o.status.code() {
        Some(0) => None,
        Some(1) | Some(3) => Some(
            stderr
                .lines()
                .filter(|l| l.starts_with("PANIC") || l.starts_with("HANG"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => {
            // Killed by a signal, an abort (stack overflow, allocation failure): the input it
            // was running is still in `current`.
            let current = out.join("current");
            let bytes = std::fs::read(&current).unwrap_or_default();
            let hash = format!("{:016x}", fnv(&bytes));
            let kept = out.join(format!("crash-{hash}"));
            let _ = std::fs::rename(&current, &kept);
            Some(format!(
                "CRASH ({}): {}; input saved as {}",
                o.status,
                last(&stderr),
                kept.display()
            ))
        }
    };
    Ok(Outcome {
        target: name.to_string(),
        summary: if stdout.is_empty() {
            format!("target={name} (no summary)")
        } else {
            stdout
        },
        finding,
    })
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn fuzz(
    seconds: u64,
    seed: u64,
    jobs: usize,
    list: bool,
    names: &[String],
) -> Result<()> {
    let bin = worker()?;
    let listed = Command::new(&bin).arg("list").output()?;
    let all: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    if list {
        print!("{}", String::from_utf8_lossy(&listed.stdout));
        return Ok(());
    }
    let names: Vec<String> = if names.is_empty() {
        all.clone()
    } else {
        names.to_vec()
    };
    if let Some(bad) = names.iter().find(|n| !all.contains(n)) {
        bail!("unknown fuzz target {bad:?}; known: {}", all.join(", "));
    }
    let out_root = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("fuzz"))
        .unwrap_or_else(|| PathBuf::from("target/fuzz"));
    let start = Instant::now();
    eprintln!(
        "fuzzing {} targets, {seconds} s each, {} at a time; findings in {}",
        names.len(),
        jobs.max(1),
        out_root.display()
    );
    let mut outcomes = Vec::new();
    for chunk in names.chunks(jobs.max(1)) {
        let results: Vec<Result<Outcome>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let (bin, out_root) = (&bin, &out_root);
                    let i = names.iter().position(|n| n == name).unwrap_or(k) as u64;
                    s.spawn(move || run_target(bin, out_root, name, seconds, seed.wrapping_add(i)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker thread"))
                .collect()
        });
        for r in results {
            let o = r?;
            eprintln!(
                "{}{}",
                o.summary,
                if o.finding.is_some() { "  FOUND" } else { "" }
            );
            if let Some(f) = &o.finding {
                eprintln!("    {}", f.replace('\n', "\n    "));
            }
            outcomes.push(o);
        }
    }
    let found: Vec<&Outcome> = outcomes.iter().filter(|o| o.finding.is_some()).collect();
    eprintln!(
        "fuzzed {} targets in {:.0} s: {}",
        outcomes.len(),
        start.elapsed().as_secs_f64(),
        if found.is_empty() {
            "nothing found".to_string()
        } else {
            format!(
                "findings in {}",
                found
                    .iter()
                    .map(|o| o.target.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !found.is_empty() {
        bail!(
            "fuzzing found problems; replay with `target/debug/tl-fuzz replay TARGET FILE` and add the input to crates/tl-fuzz/regressions/TARGET/"
        );
    }
    Ok(())
}
