//! The facade against the layers it wraps: same vectors as the backbone itself, labels in
//! and out, a saved classifier that predicts the same after loading, and clear errors.
//! Needs the runtime and models (`cargo xtask fetch`, run by `cargo xtask test`).

use std::path::Path;

use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, ImageInput, OnError};
use transfer_learning::{Classifier, Error, ImageEmbedder, Options, TextEmbedder};

const TEXTS: [&str; 8] = [
    "A delight from start to finish",
    "Loved every minute of it",
    "Warm, funny and beautifully made",
    "The best meal I have had in years",
    "Dull and far too long",
    "A waste of an evening",
    "The food was cold and the staff rude",
    "Broke after two days, avoid",
];
const LABELS: [&str; 8] = ["pos", "pos", "pos", "pos", "neg", "neg", "neg", "neg"];

fn backbone(name: &str) -> Backbone {
    let cache = Cache::from_env();
    let registry = Registry::builtin().unwrap();
    Backbone::from_manifest(
        registry.get(name).unwrap(),
        &cache,
        &ExecutionConfig::default(),
    )
    .unwrap()
}

fn uncached() -> Options {
    Options {
        cache_features: false,
        progress: false,
        ..Options::default()
    }
}

#[test]
fn text_vectors_are_the_backbones_own_cached_or_not() {
    let direct = backbone("all-minilm-l6-v2")
        .embed_texts(&TEXTS, OnError::Fail)
        .unwrap()
        .features;
    let cached = TextEmbedder::new("all-minilm-l6-v2").unwrap();
    assert_eq!(cached.dim(), 384);
    // First call may compute, second is answered from the feature cache: both bit-equal.
    assert_eq!(cached.embed(&TEXTS).unwrap(), direct);
    assert_eq!(cached.embed(&TEXTS).unwrap(), direct);
    let plain = TextEmbedder::with_options("all-minilm-l6-v2", &uncached()).unwrap();
    assert_eq!(plain.embed(&TEXTS).unwrap(), direct);
    assert_eq!(plain.embed(&Vec::<String>::new()).unwrap().dim(), (0, 384));
}

#[test]
fn a_classifier_fits_predicts_labels_and_round_trips() {
    let embedder = TextEmbedder::new("all-minilm-l6-v2").unwrap();
    let x = embedder.embed(&TEXTS).unwrap();
    let clf = Classifier::fit(&x, &LABELS).unwrap();
    assert_eq!(clf.labels(), ["neg", "pos"]);
    assert_eq!(clf.predict(&x).unwrap(), LABELS);
    let new = embedder
        .embed(&[
            "What a wonderful film",
            "Boring, predictable and badly acted",
        ])
        .unwrap();
    assert_eq!(clf.predict(&new).unwrap(), ["pos", "neg"]);
    let proba = clf.predict_proba(new.view()).unwrap();
    assert_eq!(proba.dim(), (2, 2));
    assert!(proba[[0, 1]] > 0.5 && proba[[1, 0]] > 0.5);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentiment.json");
    clf.save(&path).unwrap();
    let back = Classifier::load(&path).unwrap();
    assert_eq!(back, clf);
    assert_eq!(back.predict_proba(&new).unwrap(), proba);
}

#[test]
fn image_vectors_are_the_backbones_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, colour) in [[200u8, 30, 30], [30, 200, 30]].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([colour[0] ^ (x as u8), colour[1], colour[2] ^ (y as u8)])
        });
        let p = dir.path().join(format!("{i}.png"));
        img.save(&p).unwrap();
        paths.push(p);
    }
    let inputs: Vec<ImageInput> = paths.iter().map(|p| ImageInput::Path(p.clone())).collect();
    let direct = backbone("efficientnet-lite0")
        .embed_images(&inputs, OnError::Fail)
        .unwrap()
        .features;
    let embedder = ImageEmbedder::with_options("efficientnet-lite0", &uncached()).unwrap();
    assert_eq!(embedder.embed_paths(&paths).unwrap(), direct);
    let cached = ImageEmbedder::new("efficientnet-lite0").unwrap();
    assert_eq!(cached.embed_paths(&paths).unwrap(), direct);

    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let err = embedder.embed_paths(&[&bad]).unwrap_err().to_string();
    assert!(err.contains("notes.png"), "{err}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let err = |r: Result<TextEmbedder, Error>| r.err().expect("an error").to_string();
    let e = err(TextEmbedder::new("efficientnet-lite0"));
    assert!(
        e.contains("image model") && e.contains("ImageEmbedder"),
        "{e}"
    );
    let e = ImageEmbedder::new("all-minilm-l6-v2")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("text model") && e.contains("TextEmbedder"),
        "{e}"
    );
    let e = err(TextEmbedder::new("no-such-model"));
    assert!(
        e.contains("no-such-model") && e.contains("all-minilm-l6-v2"),
        "{e}"
    );
    let e = err(TextEmbedder::new("mnist"));
    assert!(e.contains("not a model"), "{e}");

    let x = ndarray::Array2::<f32>::zeros((3, 4));
    let e = Classifier::fit(&x, &["a", "b"]).unwrap_err().to_string();
    assert!(e.contains("3 feature rows but 2 labels"), "{e}");
    let e = Classifier::load(Path::new("/nonexistent/c.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/c.json"), "{e}");
    let clf = Classifier::fit(&ndarray::array![[0.0f32, 1.0], [1.0, 0.0]], &["a", "b"]).unwrap();
    let e = clf.predict(&x).unwrap_err().to_string();
    assert!(
        e.contains('4') && e.contains('2'),
        "width mismatch named: {e}"
    );
}
