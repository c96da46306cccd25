//! The store on its own: round trips, damage, schema mismatches, concurrency, compaction,
//! garbage collection, export.

use std::fs;
use std::time::Duration;

use ndarray::{Array2, ArrayView2};
use tl_features::{
    BackboneStore, Key, STORE_VERSION, Store, StoreManifest, export_features, text_key,
};

const FP: &str = "feedc0de";

fn manifest(dim: usize) -> StoreManifest {
    StoreManifest {
        version: STORE_VERSION,
        fingerprint: FP.into(),
        model: "test".into(),
        settings: serde_json::json!({"pooling": "mean"}),
        dim,
        dtype: "float32".into(),
    }
}

/// Deterministic awkward floats: subnormals, negative zero, large and tiny magnitudes.
fn vectors(n: usize, dim: usize, salt: u32) -> Array2<f32> {
    Array2::from_shape_fn((n, dim), |(i, j)| {
        let bits = (i as u32)
            .wrapping_mul(2654435761)
            .wrapping_add((j as u32).wrapping_mul(40503))
            .wrapping_add(salt);
        match bits % 7 {
            0 => -0.0,
            1 => f32::from_bits(bits % 0x007f_ffff + 1), // subnormal
            _ => {
                f32::from_bits(bits & 0x7f7f_ffff) * if bits.is_multiple_of(2) { 1.0 } else { -1.0 }
            }
        }
    })
}

fn keys(prefix: &str, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| text_key(FP, &format!("{prefix}{i}")))
        .collect()
}

fn lookup(b: &BackboneStore, keys: &[Key]) -> (Array2<f32>, Vec<bool>) {
    let mut out = Array2::zeros((keys.len(), b.manifest().dim));
    let mut found = vec![false; keys.len()];
    b.lookup(keys, &mut out, &mut found).unwrap();
    (out, found)
}

fn bits(a: ArrayView2<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let b = Store::new(dir.path()).backbone(manifest(48)).unwrap();
    let k = keys("a", 100);
    let v = vectors(100, 48, 1);
    b.append(&k[..60], v.slice(ndarray::s![..60, ..])).unwrap();
    b.append(&k[60..], v.slice(ndarray::s![60.., ..])).unwrap();
    // Ask in a different order, with misses and a repeated key.
    let mut ask: Vec<Key> = k.iter().rev().copied().collect();
    ask.push(text_key(FP, "missing"));
    ask.push(k[3]);
    let (out, found) = lookup(&b, &ask);
    assert_eq!(found.iter().filter(|f| **f).count(), 101);
    assert!(!found[100]);
    for (r, key) in ask.iter().enumerate().filter(|(r, _)| found[*r]) {
        let i = k.iter().position(|x| x == key).unwrap();
        assert_eq!(
            bits(out.slice(ndarray::s![r..r + 1, ..])),
            bits(v.slice(ndarray::s![i..i + 1, ..]))
        );
    }
    // Reopening the store sees the same manifest.
    let again = Store::new(dir.path()).backbone(manifest(48)).unwrap();
    assert_eq!(again.manifest(), b.manifest());
}

#[test]
fn a_different_dimension_or_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::new(dir.path()).backbone(manifest(8)).unwrap();
    let e = Store::new(dir.path())
        .backbone(manifest(16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.json") && e.contains("x 8") && e.contains("x 16"),
        "{e}"
    );
    let mut m = manifest(8);
    m.version = 99;
    assert!(Store::new(dir.path()).backbone(m).is_err());
    let mut m = manifest(8);
    m.fingerprint = "../escape".into();
    let e = Store::new(dir.path()).backbone(m).unwrap_err().to_string();
    assert!(e.contains("not a plain alphanumeric"), "{e}");
    let b = Store::new(dir.path()).backbone(manifest(8)).unwrap();
    let e = b
        .append(&keys("x", 2), vectors(2, 9, 0).view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("9-d vectors in a 8-d store"), "{e}");
}

#[test]
fn damaged_shards_are_quarantined_and_become_misses() {
    let dir = tempfile::tempdir().unwrap();
    let b = Store::new(dir.path()).backbone(manifest(16)).unwrap();
    let (ka, kb, kc) = (keys("a", 10), keys("b", 10), keys("c", 10));
    let (va, vb, vc) = (vectors(10, 16, 1), vectors(10, 16, 2), vectors(10, 16, 3));
    let flipped = b.append(&ka, va.view()).unwrap();
    let truncated = b.append(&kb, vb.view()).unwrap();
    b.append(&kc, vc.view()).unwrap();
    // One flipped byte in the middle (the data pages): parses, but the hash gives it away.
    let mut bytes = fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&flipped, &bytes).unwrap();
    // A shard cut short, as by a disk-full without the atomic rename.
    let bytes = fs::read(&truncated).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();

    let all: Vec<Key> = ka.iter().chain(&kb).chain(&kc).copied().collect();
    let mut out = Array2::zeros((30, 16));
    let mut found = vec![false; 30];
    let stats = b.lookup(&all, &mut out, &mut found).unwrap();
    assert_eq!(stats.quarantined.len(), 2, "{stats:?}");
    assert!(
        found[..20].iter().all(|f| !f),
        "damaged rows are never returned"
    );
    assert!(found[20..].iter().all(|f| *f));
    assert_eq!(bits(out.slice(ndarray::s![20.., ..])), bits(vc.view()));
    assert_eq!(b.shards().unwrap().len(), 1);
    assert_eq!(fs::read_dir(b.dir().join("quarantine")).unwrap().count(), 2);
    // Recomputed items can be stored again.
    b.append(&ka, va.view()).unwrap();
    let (out, found) = lookup(&b, &ka);
    assert!(found.iter().all(|f| *f));
    assert_eq!(bits(out.view()), bits(va.view()));
}

#[test]
fn a_shard_of_the_wrong_dimension_is_quarantined_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    // Write a valid 4-d shard through a 4-d store, then move it into an 8-d store's folder
    // (as a bad copy between machines would). Its name matches its hash, so only its shape
    // tells: it used to block every lookup of the store.
    let other = tempfile::tempdir().unwrap();
    let mut m4 = manifest(4);
    m4.fingerprint = "other".into();
    let shard = Store::new(other.path())
        .backbone(m4)
        .unwrap()
        .append(&keys("a", 3), vectors(3, 4, 0).view())
        .unwrap();
    let b = store.backbone(manifest(8)).unwrap();
    let good = vectors(2, 8, 1);
    b.append(&keys("b", 2), good.view()).unwrap();
    let dest = b.dir().join("shards").join(shard.file_name().unwrap());
    fs::copy(&shard, &dest).unwrap();
    let mut want = keys("a", 3);
    want.extend(keys("b", 2));
    let mut out = Array2::zeros((5, 8));
    let mut found = vec![false; 5];
    let stats = b.lookup(&want, &mut out, &mut found).unwrap();
    assert_eq!(found, [false, false, false, true, true]);
    assert_eq!(bits(out.slice(ndarray::s![3.., ..])), bits(good.view()));
    assert_eq!(stats.quarantined.len(), 1);
    assert!(
        !dest.exists()
            && b.dir()
                .join("quarantine")
                .join(shard.file_name().unwrap())
                .exists()
    );
}

/// Writes `rows` (key, vector) as a shard named by its hash, bypassing the store's checks.
fn forge_shard(b: &BackboneStore, keys: &[Key], rows: &[Vec<f32>]) -> std::path::PathBuf {
    use polars::prelude::*;
    let hexes: Vec<String> = keys.iter().map(Key::to_hex).collect();
    let vecs: Vec<Series> = rows
        .iter()
        .map(|r| Series::new("".into(), r.as_slice()))
        .collect();
    let mut df = DataFrame::new(
        keys.len(),
        vec![
            Column::new("key".into(), hexes),
            Column::new("embedding".into(), vecs),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf).finish(&mut df).unwrap();
    let path = b
        .dir()
        .join("shards")
        .join(format!("shard-{}.parquet", blake3::hash(&buf).to_hex()));
    fs::write(&path, &buf).unwrap();
    path
}

#[test]
fn a_shard_of_nan_vectors_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let b = Store::new(dir.path()).backbone(manifest(2)).unwrap();
    let k = keys("n", 2);
    let path = forge_shard(&b, &k, &[vec![f32::NAN, 1.0], vec![0.5, 0.25]]);
    let (_, found) = lookup(&b, &k);
    assert_eq!(found, [false, false], "a shard holding NaN is damage");
    assert!(!path.exists());
    // The store itself refuses to write one.
    let mut bad = vectors(2, 2, 0);
    bad[[1, 0]] = f32::INFINITY;
    let e = b.append(&k, bad.view()).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("vector 1"), "{e}");
}

#[test]
fn a_damaged_store_manifest_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let b = store.backbone(manifest(4)).unwrap();
    let v = vectors(3, 4, 0);
    b.append(&keys("a", 3), v.view()).unwrap();
    let path = b.dir().join("manifest.json");
    fs::write(&path, b"{\"version\": 1, \"fingerp").unwrap();
    let b = store.backbone(manifest(4)).unwrap();
    let (out, found) = lookup(&b, &keys("a", 3));
    assert_eq!(found, [true; 3]);
    assert_eq!(bits(out.view()), bits(v.view()));
    let back: StoreManifest = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, manifest(4));
}

#[test]
fn stale_temporary_files_are_swept_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let b = store.backbone(manifest(2)).unwrap();
    let shards = b.dir().join("shards");
    let stale = shards.join(".tmp-1-2-shard-x.parquet");
    let fresh = shards.join(".tmp-3-4-shard-y.parquet");
    // A leftover written (by its modification time) longer ago than STALE_TEMP.
    let leave_stale = |p: &std::path::Path| {
        fs::write(p, b"partial").unwrap();
        let old = std::time::SystemTime::now() - tl_features::STALE_TEMP - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    };
    leave_stale(&stale);
    fs::write(&fresh, b"in flight").unwrap();
    // Reopening (a rerun) sweeps; so does compaction.
    store.backbone(manifest(2)).unwrap();
    assert!(!stale.exists(), "a leftover of a failed write is removed");
    assert!(fresh.exists(), "a writer in flight keeps its file");
    leave_stale(&stale);
    b.compact().unwrap();
    assert!(!stale.exists());
}

#[test]
fn a_writer_survives_gc_removing_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let b = store.backbone(manifest(2)).unwrap();
    b.append(&keys("a", 1), vectors(1, 2, 0).view()).unwrap();
    assert_eq!(store.gc(Duration::ZERO, false).unwrap().len(), 1);
    assert!(!b.dir().exists());
    let v = vectors(2, 2, 5);
    b.append(&keys("b", 2), v.view()).unwrap();
    let (out, found) = lookup(&store.backbone(manifest(2)).unwrap(), &keys("b", 2));
    assert_eq!(found, [true, true]);
    assert_eq!(bits(out.view()), bits(v.view()));
}

#[test]
fn concurrent_writers_never_corrupt_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                let b = store.backbone(manifest(32)).unwrap();
                for round in 0..10 {
                    // Half the keys overlap between writers.
                    let prefix = if round % 2 == 0 {
                        "shared".to_string()
                    } else {
                        format!("t{t}r{round}-")
                    };
                    let k = keys(&prefix, 20);
                    let v = vectors(
                        20,
                        32,
                        if round % 2 == 0 {
                            7
                        } else {
                            100 + t * 10 + round
                        },
                    );
                    b.append(&k, v.view()).unwrap();
                }
            });
        }
    });
    let b = store.backbone(manifest(32)).unwrap();
    for t in 0..4u32 {
        for round in (1..10u32).step_by(2) {
            let (out, found) = lookup(&b, &keys(&format!("t{t}r{round}-"), 20));
            assert!(found.iter().all(|f| *f));
            assert_eq!(
                bits(out.view()),
                bits(vectors(20, 32, 100 + t * 10 + round).view())
            );
        }
    }
    let (out, found) = lookup(&b, &keys("shared", 20));
    assert!(found.iter().all(|f| *f));
    assert_eq!(bits(out.view()), bits(vectors(20, 32, 7).view()));
    // No temporary files are left behind.
    for entry in fs::read_dir(b.dir().join("shards")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with("shard-"), "{name}");
    }
}

#[test]
fn compaction_keeps_every_vector_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Store::new(dir.path()).backbone(manifest(8)).unwrap();
    let k = keys("k", 300);
    let v = vectors(300, 8, 5);
    for c in 0..30 {
        let r = c * 10..c * 10 + 10;
        b.append(&k[r.clone()], v.slice(ndarray::s![r, ..]))
            .unwrap();
    }
    // A duplicate shard (same rows written by two processes).
    b.append(&k[..10], v.slice(ndarray::s![..10, ..])).unwrap();
    let before = b.shards().unwrap().len();
    let (was, now) = b.compact().unwrap();
    assert_eq!((was, now), (before, 1));
    let (out, found) = lookup(&b, &k);
    assert!(found.iter().all(|f| *f));
    assert_eq!(bits(out.view()), bits(v.view()));
    let info = Store::new(dir.path()).info().unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].rows, 300, "duplicates dropped");
    assert_eq!(info[0].shards, 1);
    assert!(info[0].bytes > 300 * 8 * 4);
}

#[test]
fn gc_removes_only_stale_backbones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let fresh = store.backbone(manifest(4)).unwrap();
    fresh.touch();
    let mut m = manifest(4);
    m.fingerprint = "stale".into();
    let stale = store.backbone(m).unwrap();
    fs::write(stale.dir().join("last-used"), "1000000").unwrap(); // 1970
    let would = store.gc(Duration::from_secs(30 * 86_400), true).unwrap();
    assert_eq!(would.len(), 1);
    assert!(stale.dir().exists(), "dry run deletes nothing");
    let removed = store.gc(Duration::from_secs(30 * 86_400), false).unwrap();
    assert_eq!(removed[0].dir, stale.dir());
    assert!(!stale.dir().exists());
    assert!(fresh.dir().exists());
}

/// A damaged `last-used` stamp (a number past the end of time, or text) reads as no
/// stamp: `info` and `gc` work for every store, the damaged one falls back to the
/// folder's modification time. (It panicked with an overflow before.)
#[test]
fn a_damaged_last_used_stamp_never_breaks_info_or_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let a = store.backbone(manifest(4)).unwrap();
    let mut m = manifest(4);
    m.fingerprint = "other".into();
    let b = store.backbone(m).unwrap();
    fs::write(a.dir().join("last-used"), u64::MAX.to_string()).unwrap();
    fs::write(b.dir().join("last-used"), "yesterday").unwrap();
    let info = store.info().unwrap();
    assert_eq!(info.len(), 2);
    assert!(info.iter().all(|s| s.last_used.is_none()));
    // Both folders were just made: nothing is 30 days old, and a huge age removes nothing.
    assert!(
        store
            .gc(Duration::from_secs(30 * 86_400), true)
            .unwrap()
            .is_empty()
    );
    assert!(store.gc(Duration::MAX, true).unwrap().is_empty());
}

#[test]
fn export_reads_back_with_polars() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let v = vectors(5, 3, 9).mapv(|x| if x.is_finite() { x } else { 0.0 });
    let ids: Vec<String> = (0..5).map(|i| format!("doc{i}")).collect();
    let labels: Vec<String> = ["a", "b", "a", "c", "b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pq = dir.path().join("out/features.parquet");
    export_features(&pq, &ids, &labels, v.view()).unwrap();
    let df = ParquetReader::new(fs::File::open(&pq).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.shape(), (5, 5));
    assert_eq!(df.column("id").unwrap().str().unwrap().get(3), Some("doc3"));
    assert_eq!(df.column("label").unwrap().str().unwrap().get(3), Some("c"));
    let f2: Vec<f32> = df
        .column("f2")
        .unwrap()
        .f32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(
        f2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        v.column(2).iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let csv = dir.path().join("features.csv");
    export_features(&csv, &ids, &labels, v.view()).unwrap();
    let text = fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("id,label,f0,f1,f2\ndoc0,a,"), "{text}");
    let e = export_features(&dir.path().join("x.xlsx"), &ids, &labels, v.view()).unwrap_err();
    assert!(e.to_string().contains("`.parquet` or `.csv`"));
    let e = export_features(&csv, &ids[..2], &labels, v.view()).unwrap_err();
    assert!(e.to_string().contains("5 rows, 2 ids"));
}
