//! `tl-fuzz`: the worker `cargo xtask fuzz` starts, one process per target.
//!
//! ```text
//! tl-fuzz list
//! tl-fuzz run TARGET --seconds N [--seed S] --out DIR   # findings go to DIR
//! tl-fuzz replay TARGET FILE...                          # rerun saved inputs
//! ```
//!
//! `run` limits the process's address space (an input that makes a parser allocate without
//! bound ends as an allocation failure, a finding, not a machine out of memory), saves each
//! input to `DIR/current` before running it (so an abort or a stack overflow leaves the
//! culprit behind for the driver), and a watchdog thread ends the process with exit code 3
//! and the input saved as `hang-*` when one input runs longer than `--hang-seconds`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Address space a worker may use.
const MEMORY_LIMIT: u64 = 6 << 30;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in tl_fuzz::TARGETS {
                println!("{:<16} {}", t.name, t.about);
            }
            ExitCode::SUCCESS
        }
        Some("run") => run(&args[1..]),
        Some("replay") => replay(&args[1..]),
        _ => {
            eprintln!(
                "usage: tl-fuzz list | run TARGET --seconds N [--seed S] [--hang-seconds H] --out DIR | replay TARGET FILE..."
            );
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn save(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let hash = blake3::hash(input).to_hex();
    let p = dir.join(format!("{kind}-{}", &hash[..16]));
    let _ = std::fs::write(&p, input);
    p
}

fn run(args: &[String]) -> ExitCode {
    let Some(target) = args.first().and_then(|n| tl_fuzz::target(n)) else {
        eprintln!("unknown target; `tl-fuzz list` names them");
        return ExitCode::from(2);
    };
    let seconds: u64 = flag(args, "--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = flag(args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let hang: u64 = flag(args, "--hang-seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let Some(out) = flag(args, "--out").map(PathBuf::from) else {
        eprintln!("--out DIR is required");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    // SAFETY: setrlimit with a valid struct only changes this process's limit.
    unsafe {
        let limit = libc::rlimit {
            rlim_cur: MEMORY_LIMIT,
            rlim_max: MEMORY_LIMIT,
        };
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scratch folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let current = out.join("current");
    let execs = Arc::new(AtomicU64::new(0));
    {
        let (execs, current, out) = (execs.clone(), current.clone(), out.clone());
        std::thread::spawn(move || {
            let mut last = (execs.load(Ordering::Relaxed), Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let n = execs.load(Ordering::Relaxed);
                if n != last.0 {
                    last = (n, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(hang) {
                    let input = std::fs::read(&current).unwrap_or_default();
                    let p = save(&out, "hang", &input);
                    eprintln!(
                        "HANG: one input ran over {hang} s; saved as {}",
                        p.display()
                    );
                    std::process::exit(3);
                }
            }
        });
    }
    let report = tl_fuzz::fuzz_with(
        target,
        scratch.path(),
        u64::MAX,
        Duration::from_secs(seconds),
        seed,
        |input| {
            let _ = std::fs::write(&current, input);
            execs.fetch_add(1, Ordering::Relaxed);
        },
    );
    let _ = std::fs::remove_file(&current);
    for (input, message) in &report.findings {
        let p = save(&out, "panic", input);
        eprintln!("PANIC: {message} (input saved as {})", p.display());
    }
    println!(
        "target={} execs={} accepted={} corpus={} seconds={:.1} findings={}",
        target.name,
        report.execs,
        report.accepted,
        report.corpus,
        report.seconds,
        report.findings.len()
    );
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(args: &[String]) -> ExitCode {
    let Some(target) = args.first().and_then(|n| tl_fuzz::target(n)) else {
        eprintln!("unknown target; `tl-fuzz list` names them");
        return ExitCode::from(2);
    };
    let scratch = tempfile::tempdir().expect("scratch folder");
    let mut failed = false;
    for f in &args[1..] {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{f}: {e}");
                failed = true;
                continue;
            }
        };
        let t = Instant::now();
        match tl_fuzz::run_one(target, scratch.path(), &bytes) {
            Ok(accepted) => println!(
                "{f}: {} in {:.2} s",
                if accepted { "accepted" } else { "refused" },
                t.elapsed().as_secs_f64()
            ),
            Err(m) => {
                println!("{f}: PANIC {m}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
