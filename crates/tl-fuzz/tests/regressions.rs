//! Every input a fuzzing run ever found (`regressions/<target>/*`) replays without a panic,
//! every target's seeds load, and a short run of each target finds nothing. `cargo xtask
//! fuzz` runs the long campaigns; this keeps what they found fixed.

use std::path::Path;
use std::time::Duration;

#[test]
fn found_inputs_replay_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0;
    for t in tl_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(t.name)) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            if let Err(m) = tl_fuzz::run_one(t, scratch.path(), &bytes) {
                panic!("{}: {}: {m}", t.name, e.path().display());
            }
            n += 1;
        }
    }
    assert!(n >= 10, "regression inputs found: {n}");
}

#[test]
fn every_target_has_seeds_it_accepts_and_a_short_run_finds_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    for t in tl_fuzz::TARGETS {
        let seeds = (t.seeds)(scratch.path());
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        let accepted = seeds
            .iter()
            .filter(|s| tl_fuzz::run_one(t, scratch.path(), s) == Ok(true))
            .count();
        assert!(accepted > 0, "{}: no seed is accepted", t.name);
        let r = tl_fuzz::fuzz(t, scratch.path(), 150, Duration::from_secs(20), 1);
        assert!(
            r.findings.is_empty(),
            "{}: {:?}",
            t.name,
            r.findings
                .iter()
                .map(|(input, m)| (
                    String::from_utf8_lossy(&input[..input.len().min(200)]).into_owned(),
                    m
                ))
                .collect::<Vec<_>>()
        );
        assert!(
            r.execs >= 150 || r.seconds >= 20.0,
            "{}: {} execs",
            t.name,
            r.execs
        );
    }
}

#[test]
fn mutation_is_deterministic_and_bounded() {
    let mut a = tl_fuzz::Rng::new(9);
    let mut b = tl_fuzz::Rng::new(9);
    let seed = b"text,label\na,b\n".to_vec();
    for _ in 0..500 {
        let x = tl_fuzz::mutate(&seed, &[], &[b"x"], &mut a);
        let y = tl_fuzz::mutate(&seed, &[], &[b"x"], &mut b);
        assert_eq!(x, y);
        assert!(x.len() <= 256 * 1024);
    }
}
