//! What a lookup costs in a big feature cache: fills a store with N synthetic keys (random
//! 384-d vectors, compacted shards of 16,384 rows, as `tl cache compact` leaves them), then
//! times lookups of a few keys, of many, and of keys that are not there.
//!
//! ```text
//! cargo run --release -p tl-features --example lookup_scale -- 1000000 /tmp/lookup-scale
//! ```
//!
//! The figures in docs/scale.md come from this program.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array2;
use tl_features::{COMPACT_ROWS, Key, STORE_VERSION, Store, StoreManifest, text_key};

const DIM: usize = 384;
const FINGERPRINT: &str = "5ca1e5ca1e5ca1e5ca1e5ca1e5ca1e00";

fn key(i: usize) -> Key {
    text_key(FINGERPRINT, &format!("synthetic item {i}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/lookup-scale".to_string()),
    );
    let store = Store::new(&dir);
    let manifest = StoreManifest {
        version: STORE_VERSION,
        fingerprint: FINGERPRINT.into(),
        model: "synthetic".into(),
        settings: serde_json::Value::Null,
        dim: DIM,
        dtype: "float32".into(),
    };
    let b = store.backbone(manifest)?;
    let have: usize = store.info()?.iter().map(|s| s.rows).sum();
    if have != n {
        let _ = std::fs::remove_dir_all(&dir);
        let b = store.backbone(b.manifest().clone())?;
        let t = Instant::now();
        let mut rng = tl_core::Rng::new(7);
        for start in (0..n).step_by(COMPACT_ROWS) {
            let rows = COMPACT_ROWS.min(n - start);
            let keys: Vec<Key> = (start..start + rows).map(key).collect();
            let x = Array2::from_shape_fn((rows, DIM), |_| {
                (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
            });
            b.append(&keys, x.view())?;
        }
        println!(
            "wrote {n} keys in {} shards in {:.1}s",
            b.shards()?.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let info = &store.info()?[0];
    println!(
        "store: {} rows, {} shards, {:.2} GB",
        info.rows,
        info.shards,
        info.bytes as f64 / 1e9
    );
    let mut rng = tl_core::Rng::new(11);
    for (what, count, present) in [
        ("1 key present", 1, true),
        ("1,000 keys present (random)", 1_000, true),
        ("100,000 keys present (random)", 100_000, true),
        ("1,000 keys absent", 1_000, false),
    ] {
        let keys: Vec<Key> = (0..count)
            .map(|j| {
                if present {
                    key(rng.below(n as u64) as usize)
                } else {
                    key(n + j)
                }
            })
            .collect();
        let mut out = Array2::zeros((count, DIM));
        let mut found = vec![false; count];
        let t = Instant::now();
        let stats = b.lookup(&keys, &mut out, &mut found)?;
        let s = t.elapsed().as_secs_f64();
        let hits = found.iter().filter(|f| **f).count();
        assert_eq!(hits, if present { count } else { 0 });
        println!(
            "{what:<32} {s:>7.3}s  ({} shards' keys scanned, {} shards read)",
            stats.shards_scanned, stats.shards_read
        );
    }
    Ok(())
}
