//! Criterion benches of the backbone hot paths: image decode + preprocessing, and
//! inference per batch size for text and images. Needs `cargo xtask fetch`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, ImageInput, OnError};

fn sentences(n: usize) -> Vec<String> {
    let r = Registry::builtin().unwrap();
    let ds = tl_data::load_builtin(r.get("sentiment-yelp").unwrap(), &Cache::from_env())
        .expect("run `cargo xtask fetch`");
    ds.items
        .iter()
        .take(n)
        .map(|i| match i {
            tl_data::Item::Text(t) => t.clone(),
            _ => unreachable!(),
        })
        .collect()
}

fn preprocess(c: &mut Criterion) {
    let r = Registry::builtin().unwrap();
    let cache = Cache::from_env();
    let spec = r
        .get("efficientnet-lite0")
        .unwrap()
        .model
        .clone()
        .unwrap()
        .image
        .unwrap();
    let coffee =
        std::fs::read(cache.file_path(r.get("imagenet-sanity").unwrap(), "coffee.png")).unwrap();
    let rocket =
        std::fs::read(cache.file_path(r.get("imagenet-sanity").unwrap(), "rocket.jpg")).unwrap();
    let digits = tl_benches::read_idx_images(
        &cache.file_path(r.get("mnist").unwrap(), "train-images-idx3-ubyte"),
        1,
    )
    .unwrap();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    for (name, input) in [
        (
            "png 600x400 decode+resize+crop",
            ImageInput::Encoded {
                name: "coffee".into(),
                bytes: coffee,
            },
        ),
        (
            "jpeg 427x640 decode+resize+crop",
            ImageInput::Encoded {
                name: "rocket".into(),
                bytes: rocket,
            },
        ),
        (
            "mnist 28x28 upscale to 224",
            ImageInput::Pixels(digits[0].clone()),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| tl_backbone::preprocess_image(&input, &spec).unwrap())
        });
    }
    g.finish();
}

fn text_inference(c: &mut Criterion) {
    let texts = sentences(256);
    let r = Registry::builtin().unwrap();
    let mut g = c.benchmark_group("minilm-l6 256 sentences");
    g.sample_size(10);
    g.throughput(Throughput::Elements(texts.len() as u64));
    for bs in [8, 32, 128] {
        let b = Backbone::from_manifest(
            r.get("all-minilm-l6-v2").unwrap(),
            &Cache::from_env(),
            &ExecutionConfig {
                batch_size: bs,
                ..Default::default()
            },
        )
        .unwrap();
        g.bench_with_input(BenchmarkId::new("batch", bs), &bs, |bench, _| {
            bench.iter(|| b.embed_texts(&texts, OnError::Fail).unwrap())
        });
    }
    g.finish();
}

fn image_inference(c: &mut Criterion) {
    let r = Registry::builtin().unwrap();
    let cache = Cache::from_env();
    let digits: Vec<ImageInput> = tl_benches::read_idx_images(
        &cache.file_path(r.get("mnist").unwrap(), "train-images-idx3-ubyte"),
        64,
    )
    .unwrap()
    .into_iter()
    .map(ImageInput::Pixels)
    .collect();
    let mut g = c.benchmark_group("efficientnet-lite0 64 digits");
    g.sample_size(10);
    g.throughput(Throughput::Elements(digits.len() as u64));
    for bs in [8, 32] {
        let b = Backbone::from_manifest(
            r.get("efficientnet-lite0").unwrap(),
            &cache,
            &ExecutionConfig {
                batch_size: bs,
                ..Default::default()
            },
        )
        .unwrap();
        g.bench_with_input(BenchmarkId::new("batch", bs), &bs, |bench, _| {
            bench.iter(|| b.embed_images(&digits, OnError::Fail).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, preprocess, text_inference, image_inference);
criterion_main!(benches);
