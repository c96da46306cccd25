//! Fuzz targets for every parser of outside data (tables, IDX, the 8x8 digits file, image
//! decoding and preprocessing, asset manifests, experiment files, saved classifiers, feature
//! cache shards and store manifests), and a mutation fuzzer that runs them on the stable
//! toolchain.
//!
//! A target takes arbitrary bytes and must never panic, abort, hang or exhaust memory: bad
//! input is an `Err`, and what a target accepts must be usable (a classifier that loads must
//! predict finite probabilities; a shard that is served must hold finite vectors). The fuzzer
//! ([`fuzz`]) starts from each target's seeds (valid inputs), mutates them (bit flips,
//! interesting bytes, the target's dictionary, deletions, duplications that deepen nesting,
//! splices), keeps inputs the target accepted as new seeds, and catches panics with the input
//! that caused them. It is not coverage-guided: that needs a nightly toolchain's sanitizer
//! flags, which this project's machines do not have; accepted-input feedback stands in.
//! `cargo xtask fuzz` runs every target in its own process under a memory limit and a hang
//! watchdog, so an abort or a stack overflow is a finding too.
//!
//! ```
//! let target = tl_fuzz::target("manifest").unwrap();
//! let scratch = tempfile::tempdir()?;
//! let seeds = (target.seeds)(scratch.path());
//! assert!(!seeds.is_empty());
//! let report = tl_fuzz::fuzz(&target, scratch.path(), 200, std::time::Duration::from_secs(5), 7);
//! assert!(report.findings.is_empty(), "{:?}", report.findings);
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

mod targets;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

pub use targets::{TARGETS, Target, target};

/// What one fuzzing run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Inputs the target accepted.
    pub accepted: u64,
    /// Seeds at the end (initial seeds plus accepted mutants, bounded).
    pub corpus: usize,
    /// Seconds spent.
    pub seconds: f64,
    /// Inputs that panicked, with the panic message.
    pub findings: Vec<(Vec<u8>, String)>,
}

/// Most inputs kept as seeds; the oldest mutants give way.
const MAX_CORPUS: usize = 512;
/// Largest input the mutator grows to.
const MAX_INPUT: usize = 256 * 1024;

/// The seeded generator of the whole workspace (SplitMix64, tl-data's).
pub use tl_core::Rng;

/// Uniform in `0..n` (`n > 0`).
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// Bytes that break parsers more often than random ones.
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\'', b',', b'\t', b'\n', b'\r', b'[', b']', b'{', b'}', b'\\',
    b'=', b'.', b'-', b'e', b'0', b'9',
];

/// Numbers and words that reach range checks and edge cases.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e308",
    b"-1e308",
    b"1e400",
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"18446744073709551616",
    b"4294967296",
    b"9223372036854775807",
    b"0.0",
    b"1.0",
    b"null",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
];

/// One mutation of `input` (never empty unless the input was).
pub fn mutate(input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + below(rng, 4);
    for _ in 0..rounds {
        let len = out.len();
        match below(rng, 11) {
            0 if len > 0 => {
                let i = below(rng, len);
                out[i] ^= 1 << below(rng, 8);
            }
            1 if len > 0 => {
                let i = below(rng, len);
                out[i] = INTERESTING[below(rng, INTERESTING.len())];
            }
            2 => {
                let i = below(rng, len + 1);
                let word = if !dict.is_empty() && below(rng, 2) == 0 {
                    dict[below(rng, dict.len())]
                } else {
                    NUMBERS[below(rng, NUMBERS.len())]
                };
                out.splice(i..i, word.iter().copied());
            }
            3 if len > 1 => {
                let a = below(rng, len);
                let b = (a + 1 + below(rng, 16.min(len - a))).min(len);
                out.drain(a..b);
            }
            4 if len > 1 => {
                // Repeat a range: deepens nesting, lengthens fields, multiplies rows.
                let a = below(rng, len);
                let b = (a + 1 + below(rng, 64.min(len - a))).min(len);
                let most = if below(rng, 8) == 0 { 2000 } else { 8 };
                let times = 1 + below(rng, most);
                let piece = out[a..b].to_vec();
                for _ in 0..times {
                    if out.len() + piece.len() > MAX_INPUT {
                        break;
                    }
                    out.splice(b..b, piece.iter().copied());
                }
            }
            5 if len > 0 => out.truncate(below(rng, len)),
            6 if !corpus.is_empty() => {
                let other = &corpus[below(rng, corpus.len())];
                if !other.is_empty() {
                    let a = below(rng, len + 1);
                    let s = below(rng, other.len());
                    let e = (s + 1 + below(rng, 256)).min(other.len());
                    out.splice(a..a, other[s..e].iter().copied());
                }
            }
            7 if len > 0 => {
                // A number where a number was: change a digit run.
                let i = below(rng, len);
                if out[i].is_ascii_digit() {
                    let word = NUMBERS[below(rng, NUMBERS.len())];
                    let mut e = i;
                    while e < out.len() && (out[e].is_ascii_digit() || out[e] == b'.') {
                        e += 1;
                    }
                    out.splice(i..e, word.iter().copied());
                }
            }
            8 if len >= 4 => {
                // Binary formats: overwrite a 32-bit field with an extreme value.
                let i = below(rng, len - 3);
                let v: u32 = match below(rng, 5) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 0x7fff_ffff,
                    3 => 1 << below(rng, 32),
                    _ => rng.next_u64() as u32,
                };
                let bytes = if below(rng, 2) == 0 {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[i..i + 4].copy_from_slice(&bytes);
            }
            9 if len > 0 => {
                let i = below(rng, len);
                out.insert(i, rng.next_u64() as u8);
            }
            _ => {
                if !dict.is_empty() {
                    let i = below(rng, len + 1);
                    let word = dict[below(rng, dict.len())];
                    out.splice(i..i, word.iter().copied());
                }
            }
        }
    }
    out.truncate(MAX_INPUT);
    out
}

/// Runs `target` on one input, catching a panic.
pub fn run_one(target: &Target, scratch: &Path, input: &[u8]) -> Result<bool, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input, scratch)))
        .map_err(|p| tl_data::panic_message(&*p))
}

/// Fuzzes `target` for at most `max_execs` inputs or `time`, whichever ends first, from
/// `seed`; `scratch` is a folder the target may write into. `before` is called with each
/// input before it runs (the worker saves it, so a crash leaves it behind).
pub fn fuzz_with(
    target: &Target,
    scratch: &Path,
    max_execs: u64,
    time: Duration,
    seed: u64,
    mut before: impl FnMut(&[u8]),
) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut corpus = (target.seeds)(scratch);
    let mut report = Report::default();
    // Seeds first, as they are.
    let seeds = corpus.clone();
    for s in &seeds {
        before(s);
        report.execs += 1;
        match run_one(target, scratch, s) {
            Ok(true) => report.accepted += 1,
            Ok(false) => {}
            Err(m) => report.findings.push((s.clone(), m)),
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let quiet = std::panic::take_hook();
    // Panics are findings, reported once at the end, not printed at every occurrence.
    std::panic::set_hook(Box::new(|_| {}));
    while report.execs < max_execs && start.elapsed() < time {
        let parent = &corpus[below(&mut rng, corpus.len())];
        let input = mutate(parent, &corpus, target.dict, &mut rng);
        before(&input);
        report.execs += 1;
        match run_one(target, scratch, &input) {
            Ok(true) => {
                report.accepted += 1;
                if corpus.len() < MAX_CORPUS {
                    corpus.push(input);
                } else {
                    let i =
                        seeds.len() + below(&mut rng, MAX_CORPUS - seeds.len().min(MAX_CORPUS - 1));
                    corpus[i.min(MAX_CORPUS - 1)] = input;
                }
            }
            Ok(false) => {}
            Err(m) => {
                if report.findings.len() < 20 {
                    report.findings.push((input, m));
                }
            }
        }
    }
    std::panic::set_hook(quiet);
    report.corpus = corpus.len();
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// [`fuzz_with`] without the per-input callback.
pub fn fuzz(target: &Target, scratch: &Path, max_execs: u64, time: Duration, seed: u64) -> Report {
    fuzz_with(target, scratch, max_execs, time, seed, |_| {})
}
