//! Criterion benchmarks of the cheap, repeated half of the pipeline: feature-cache writes and
//! reads, head fits and kNN prediction, on synthetic 384-d features (MiniLM's width).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use tl_features::{STORE_VERSION, Store, StoreManifest, text_key};
use tl_heads::{HeadConfig, HeadSpec, KnnParams, LogisticParams, Metric, RidgeParams, Weighting};

const DIM: usize = 384;

fn features(n: usize, classes: usize) -> (Array2<f32>, Vec<usize>) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let x = Array2::from_shape_fn((n, DIM), |(i, j)| {
        next() * 0.2 + if j % classes == y[i] { 0.15 } else { 0.0 }
    });
    (x, y)
}

fn manifest() -> StoreManifest {
    StoreManifest {
        version: STORE_VERSION,
        fingerprint: "bench".into(),
        model: "synthetic".into(),
        settings: serde_json::Value::Null,
        dim: DIM,
        dtype: "float32".into(),
    }
}

fn cache(c: &mut Criterion) {
    let (x, _) = features(10_000, 10);
    let keys: Vec<_> = (0..10_000)
        .map(|i| text_key("bench", &format!("item {i}")))
        .collect();
    let mut g = c.benchmark_group("feature cache");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((256 * DIM * 4) as u64));
    g.bench_function("write one 256-vector shard", |b| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).backbone(manifest()).unwrap();
        let mut i = 0usize;
        b.iter(|| {
            let start = (i * 256) % (10_000 - 256);
            i += 1;
            store
                .append(
                    &keys[start..start + 256],
                    x.slice(ndarray::s![start..start + 256, ..]),
                )
                .unwrap();
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path()).backbone(manifest()).unwrap();
    for start in (0..10_000).step_by(256) {
        let end = (start + 256).min(10_000);
        store
            .append(&keys[start..end], x.slice(ndarray::s![start..end, ..]))
            .unwrap();
    }
    g.throughput(Throughput::Bytes((10_000 * DIM * 4) as u64));
    g.bench_function("read 10,000 vectors from 40 shards", |b| {
        b.iter(|| {
            let mut out = Array2::zeros((10_000, DIM));
            let mut found = vec![false; 10_000];
            store.lookup(&keys, &mut out, &mut found).unwrap();
        });
    });
    store.compact().unwrap();
    g.bench_function("read 10,000 vectors from 1 compacted shard", |b| {
        b.iter(|| {
            let mut out = Array2::zeros((10_000, DIM));
            let mut found = vec![false; 10_000];
            store.lookup(&keys, &mut out, &mut found).unwrap();
        });
    });
    g.finish();
}

fn heads(c: &mut Criterion) {
    let (x, y) = features(3_000, 10);
    let (q, _) = features(1_000, 10);
    let names: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let mut g = c.benchmark_group("heads");
    g.sample_size(10);
    for (name, spec) in [
        (
            "fit logistic 3000x384, 10 classes",
            HeadSpec::Logistic(LogisticParams::default()),
        ),
        (
            "fit ridge 3000x384, 10 classes",
            HeadSpec::Ridge(RidgeParams::default()),
        ),
    ] {
        let config = HeadConfig::new(spec);
        g.bench_function(name, |b| {
            b.iter(|| config.fit(x.view(), &y, &names, None).unwrap())
        });
    }
    let knn = HeadConfig::new(HeadSpec::Knn(KnnParams {
        k: 5,
        metric: Metric::Cosine,
        weighting: Weighting::Uniform,
    }))
    .fit(x.view(), &y, &names, None)
    .unwrap();
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("knn predict 1000 queries vs 3000 rows", |b| {
        b.iter(|| knn.predict(q.view()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, cache, heads);
criterion_main!(benches);
