//! Fingerprints the code a head fit's outcome depends on (this crate, tl-heads, tl-core, the
//! TF-IDF vectoriser and the locked dependency versions), so results remembered by one build are never served by another
//! whose code differs (`fits.rs`). Outside the workspace (a packaged crate) only this crate's
//! sources are there; the crate versions stand in for the rest.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crates = here.join("..");
    let sources = [
        here.join("src"),
        crates.join("tl-heads/src"),
        crates.join("tl-core/src"),
        crates.join("tl-features/src/tfidf.rs"),
        // The solvers' dependencies (ndarray, faer, rayon) at their locked versions.
        crates.join("../Cargo.lock"),
    ];
    let mut all = Vec::new();
    for s in &sources {
        if s.exists() {
            println!("cargo:rerun-if-changed={}", s.display());
            if s.is_dir() {
                files(s, &mut all);
            } else {
                all.push(s.clone());
            }
        }
    }
    all.sort();
    // FNV-1a, twice with different offsets: change detection, not a defence against anyone.
    let mut h = [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64];
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            for v in h.iter_mut() {
                *v ^= u64::from(b);
                *v = v.wrapping_mul(0x0100_0000_01b3);
            }
        }
    };
    for p in &all {
        feed(
            p.strip_prefix(&crates)
                .unwrap_or(p)
                .to_string_lossy()
                .as_bytes(),
        );
        feed(&std::fs::read(p).unwrap_or_default());
    }
    feed(
        std::env::var("CARGO_PKG_VERSION")
            .unwrap_or_default()
            .as_bytes(),
    );
    println!("cargo:rustc-env=TL_FIT_CODE={:016x}{:016x}", h[0], h[1]);
}
