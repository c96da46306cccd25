//! `embed_cached` with a real backbone (all-MiniLM-L6-v2 on the sentiment sentences): hit/miss
//! accounting, bit-identical re-reads, kill-and-resume, two processes filling one store, and a
//! changed preprocessing setting. Needs `cargo xtask fetch` (run by `cargo xtask test`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::Array2;
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_data::{Item, load_builtin};
use tl_features::{CacheOptions, Store, embed_cached};

const CHILD_ENV: &str = "TL_FEATURES_TEST_CHILD_STORE";

fn backbone() -> Backbone {
    let r = Registry::builtin().unwrap();
    let config = ExecutionConfig {
        intra_threads: Some(1),
        ..Default::default()
    };
    Backbone::from_manifest(
        r.get("all-minilm-l6-v2").unwrap(),
        &Cache::from_env(),
        &config,
    )
    .unwrap()
}

fn sentences(domain: &str) -> Vec<Item> {
    let r = Registry::builtin().unwrap();
    load_builtin(
        r.get(&format!("sentiment-{domain}")).unwrap(),
        &Cache::from_env(),
    )
    .unwrap()
    .items
}

fn bits(a: &Array2<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn options(flush_every: usize) -> CacheOptions {
    CacheOptions {
        flush_every,
        ..Default::default()
    }
}

#[test]
fn hits_misses_and_bit_identical_rereads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let b = backbone();
    // Distinct sentences (the corpus repeats a few), so counts are exact.
    let mut seen = std::collections::HashSet::new();
    let items: Vec<Item> = sentences("amazon")
        .into_iter()
        .filter(|i| seen.insert(format!("{i:?}")))
        .take(300)
        .collect();
    let first = embed_cached(&b, &store, &items, &options(64)).unwrap();
    assert_eq!((first.hits, first.computed), (0, 300));
    assert_eq!(
        store
            .backbone(tl_features::manifest_for(&b))
            .unwrap()
            .shards()
            .unwrap()
            .len(),
        5
    );
    let again = embed_cached(&b, &store, &items, &options(64)).unwrap();
    assert_eq!((again.hits, again.computed), (300, 0));
    assert_eq!(bits(&again.features), bits(&first.features));
    // Same vectors as the backbone gives without a cache.
    let direct = b
        .embed_texts(
            &items
                .iter()
                .map(|i| match i {
                    Item::Text(t) => t.as_str(),
                    _ => unreachable!(),
                })
                .collect::<Vec<_>>(),
            OnError::Fail,
        )
        .unwrap();
    let diff = (&direct.features - &first.features)
        .mapv(f32::abs)
        .fold(0.0f32, |a, &b| a.max(b));
    eprintln!("cached vs direct: max |diff| = {diff:e}");
    assert!(diff < 1e-6, "{diff}");
    // A mix of cached, new and repeated items.
    let mut mixed: Vec<Item> = items[200..].to_vec();
    let mut seen_imdb = std::collections::HashSet::new();
    mixed.extend(
        sentences("imdb")
            .into_iter()
            .filter(|i| seen_imdb.insert(format!("{i:?}")))
            .take(50),
    );
    mixed.push(items[250].clone());
    let m = embed_cached(&b, &store, &mixed, &options(64)).unwrap();
    assert_eq!((m.hits, m.computed), (101, 50));
    assert_eq!(
        bits(&m.features.slice(ndarray::s![..100, ..]).to_owned()),
        bits(&first.features.slice(ndarray::s![200.., ..]).to_owned())
    );
    assert_eq!(m.features.row(150), first.features.row(250));
}

#[test]
fn a_changed_setting_is_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let r = Registry::builtin().unwrap();
    let manifest = r.get("all-minilm-l6-v2").unwrap();
    let cache = Cache::from_env();
    let config = ExecutionConfig::default();
    let mut spec = manifest.model.clone().unwrap();
    let a = Backbone::from_spec("minilm", &spec, &cache.asset_dir(manifest), &config).unwrap();
    spec.text.as_mut().unwrap().max_length = 16;
    let b = Backbone::from_spec("minilm", &spec, &cache.asset_dir(manifest), &config).unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
    let items = vec![Item::Text(
        "a sentence that is comfortably longer than sixteen word pieces, so truncation changes its vector".into(),
    )];
    let ra = embed_cached(&a, &store, &items, &options(8)).unwrap();
    let rb = embed_cached(&b, &store, &items, &options(8)).unwrap();
    assert_eq!(
        (ra.computed, rb.computed),
        (1, 1),
        "never reuses the other setting's vector"
    );
    assert_ne!(bits(&ra.features), bits(&rb.features));
    assert_eq!(store.info().unwrap().len(), 2);
}

/// Not a test on its own: the body of the child processes below.
#[test]
#[ignore]
fn child_fill() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut items = sentences("amazon");
    items.extend(sentences("imdb"));
    let n: usize = std::env::var("TL_FEATURES_TEST_CHILD_ITEMS")
        .unwrap()
        .parse()
        .unwrap();
    items.truncate(n);
    let out = embed_cached(&backbone(), &Store::new(dir), &items, &options(100)).unwrap();
    println!("child done: hits {} computed {}", out.hits, out.computed);
}

fn spawn_child(store: &Path, items: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fill", "--ignored", "--nocapture"])
        .env(CHILD_ENV, store)
        .env("TL_FEATURES_TEST_CHILD_ITEMS", items.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn shard_count(store: &Path) -> usize {
    std::fs::read_dir(store)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| std::fs::read_dir(e.ok()?.path().join("shards")).ok())
        .map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("shard-")
            })
            .count()
        })
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let n = 2000;
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(dir.path(), n);
    let t = Instant::now();
    while shard_count(dir.path()) < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "child made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child finished before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no cleanup
    child.wait().unwrap();
    let survived = shard_count(dir.path());
    assert!(
        survived < n / 100,
        "the kill came before the end ({survived} shards)"
    );

    let mut items = sentences("amazon");
    items.extend(sentences("imdb"));
    items.truncate(n);
    let b = backbone();
    let resumed = embed_cached(&b, &Store::new(dir.path()), &items, &options(100)).unwrap();
    eprintln!(
        "resumed: {} cached, {} computed",
        resumed.hits, resumed.computed
    );
    // Every completed shard survived (100 items each, plus repeats of those sentences).
    assert!(resumed.hits >= 300, "{}", resumed.hits);
    assert!(resumed.computed <= n - 300 && resumed.computed > 0);
    let fresh = tempfile::tempdir().unwrap();
    let clean = embed_cached(&b, &Store::new(fresh.path()), &items, &options(100)).unwrap();
    assert_eq!(bits(&resumed.features), bits(&clean.features));
}

#[test]
fn two_processes_fill_one_store() {
    let n = 600;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_child(dir.path(), n);
    let b = spawn_child(dir.path(), n);
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("child done"));
    }
    let mut items = sentences("amazon");
    items.truncate(n);
    let bb = backbone();
    let cached = embed_cached(&bb, &Store::new(dir.path()), &items, &options(100)).unwrap();
    assert_eq!((cached.hits, cached.computed), (n, 0));
    let fresh = tempfile::tempdir().unwrap();
    let clean = embed_cached(&bb, &Store::new(fresh.path()), &items, &options(100)).unwrap();
    assert_eq!(bits(&cached.features), bits(&clean.features));
}

#[test]
fn extra_outputs_are_cached_in_their_own_store() {
    let r = Registry::builtin().unwrap();
    let cache = Cache::from_env();
    let config = ExecutionConfig {
        intra_threads: Some(1),
        ..Default::default()
    };
    let eff =
        Backbone::from_manifest(r.get("efficientnet-lite0").unwrap(), &cache, &config).unwrap();
    assert_eq!(eff.extra_outputs(), vec![("logits", 1000)]);
    // Twelve small grey images, two of them the same.
    let items: Vec<Item> = (0..12u8)
        .map(|i| {
            let v = if i == 11 { 0 } else { i };
            Item::Pixels(tl_data::Pixels {
                width: 8,
                height: 8,
                channels: 1,
                data: (0..64).map(|p| (p as u8).wrapping_mul(v + 1)).collect(),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    // Features only first: the logits store stays empty.
    let plain = embed_cached(&eff, &store, &items[..6], &options(4)).unwrap();
    assert!(plain.extra.is_empty());
    let with = CacheOptions {
        extra_outputs: true,
        ..options(4)
    };
    // Six cached without logits are recomputed for them; six are new.
    let first = embed_cached(&eff, &store, &items, &with).unwrap();
    assert_eq!((first.hits, first.computed), (0, 11));
    assert_eq!(first.extra.len(), 1);
    let (name, logits) = &first.extra[0];
    assert_eq!((name.as_str(), logits.dim()), ("logits", (12, 1000)));
    // Cached feature rows keep their stored bits.
    assert_eq!(
        bits(&first.features.slice(ndarray::s![..6, ..]).to_owned()),
        bits(&plain.features)
    );
    // Logits equal a direct run of the backbone.
    let direct = eff
        .embed_images(
            &items
                .iter()
                .map(|it| match it {
                    Item::Pixels(p) => tl_backbone::ImageInput::Pixels(tl_backbone::RawImage {
                        width: p.width,
                        height: p.height,
                        channels: p.channels,
                        data: p.data.clone(),
                    }),
                    _ => unreachable!(),
                })
                .collect::<Vec<_>>(),
            OnError::Fail,
        )
        .unwrap();
    let diff = (&direct.extra[0].1 - logits)
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        diff < 1e-3,
        "cached logits differ from a direct run by {diff}"
    );
    assert_eq!(logits.row(11), logits.row(0));
    // A second call answers everything from both stores, bit for bit.
    let again = embed_cached(&eff, &store, &items, &with).unwrap();
    assert_eq!((again.hits, again.computed), (12, 0));
    assert_eq!(bits(&again.extra[0].1), bits(logits));
    assert_eq!(bits(&again.features), bits(&first.features));
    // The logits live in their own folder with their own manifest.
    let info = store.info().unwrap();
    let models: Vec<String> = info
        .iter()
        .filter_map(|s| {
            s.manifest
                .as_ref()
                .map(|m| format!("{}:{}", m.model, m.dim))
        })
        .collect();
    assert!(
        models.contains(&"efficientnet-lite0:logits:1000".to_string()),
        "{models:?}"
    );
    assert!(
        models.contains(&"efficientnet-lite0:1280".to_string()),
        "{models:?}"
    );
}
