//! Text backbones: parity with Python onnxruntime + tokenizers, padding invariance,
//! the SOURCES.md reference cosines, and bad inputs.

mod common;

use common::*;
use tl_assets::manifest::OutputRef;
use tl_backbone::{BackboneError, ExecutionConfig, OnError};

const SENTENCES: &[&str] = &[
    "A man is playing guitar.",
    "Someone plays a musical instrument.",
    "The stock market fell today.",
    "",
    "   \t ",
    "Ünïcödé, emoji 🙂 and CJK 漢字 survive tokenisation.",
    "This sentence is rather long and keeps going with many words so that it is much longer than the others in its batch, which forces padding.",
];

fn reference_for(name: &str, texts: &[String]) -> Vec<Vec<f64>> {
    let m = manifest(name);
    let spec = m.model.as_ref().unwrap();
    let t = spec.text.as_ref().unwrap();
    let output = match &spec.output {
        OutputRef::Name(n) => serde_json::json!(n),
        OutputRef::Index(i) => serde_json::json!(i),
    };
    reference(serde_json::json!({
        "kind": "text",
        "onnx": asset_file(name, &spec.onnx),
        "tokenizer": asset_file(name, &t.tokenizer),
        "max_length": t.max_length,
        "pooling": format!("{:?}", t.pooling).to_lowercase(),
        "output": output,
        "normalize": t.normalize,
        "texts": texts,
    }))
}

#[test]
fn text_backbones_match_python_onnxruntime() {
    let mut texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    texts.push("word ".repeat(400)); // truncated at max_length on both sides
    // Cut before tokenising (a 10 MB text took seconds): the same vector as Python's whole
    // text, for varied words, for a text whose first kilobytes are mostly whitespace (the
    // first cut yields too few tokens) and for one with no whitespace at all.
    let words = [
        "transfer",
        "learning,",
        "pretrained",
        "encoder's",
        "ünïcödé",
        "漢字",
        "x",
    ];
    texts.push(
        (0..40_000)
            .map(|i| words[i * 7 % 5 + i % 2])
            .collect::<Vec<_>>()
            .join(" "),
    );
    texts.push(format!(
        "a{}{}",
        " ".repeat(9_000),
        "b c d e f ".repeat(2_000)
    ));
    texts.push("y".repeat(30_000));
    for name in ["all-minilm-l6-v2", "paraphrase-minilm-l3-v2"] {
        let b = backbone(
            name,
            &ExecutionConfig {
                batch_size: 3,
                ..Default::default()
            },
        );
        let ours = b.embed_texts(&texts, OnError::Fail).unwrap();
        let theirs = reference_for(name, &texts);
        let mut worst = 0f64;
        for (i, r) in theirs.iter().enumerate() {
            let d = max_abs_diff(ours.features.row(i), r);
            worst = worst.max(d);
            assert!(d <= 1e-4, "{name}: text {i} differs by {d}");
        }
        eprintln!("{name}: max abs diff vs Python onnxruntime {worst:.2e}");
    }
}

#[test]
fn minilm_l6_reference_cosines() {
    let b = backbone("all-minilm-l6-v2", &ExecutionConfig::default());
    let e = b
        .embed_texts(&SENTENCES[..3], OnError::Fail)
        .unwrap()
        .features;
    let sim = cos(e.row(0), e.row(1));
    let other = cos(e.row(0), e.row(2));
    assert!(
        (sim - 0.6575).abs() <= 0.001,
        "cos(guitar, instrument) = {sim}"
    );
    assert!(
        (other - -0.0430).abs() <= 0.001,
        "cos(guitar, stocks) = {other}"
    );
    for row in e.rows() {
        assert!((row.dot(&row) - 1.0).abs() < 1e-5, "rows are L2-normalised");
    }
}

#[test]
fn a_sentence_alone_equals_the_same_sentence_among_long_ones() {
    let b = backbone(
        "all-minilm-l6-v2",
        &ExecutionConfig {
            batch_size: 4,
            ..Default::default()
        },
    );
    let alone = b
        .embed_texts(&["Short one."], OnError::Fail)
        .unwrap()
        .features;
    let long =
        "a considerably longer sentence that needs many more word pieces than the short one does "
            .repeat(3);
    let batch = [long.as_str(), long.as_str(), "Short one.", long.as_str()];
    let mixed = b.embed_texts(&batch, OnError::Fail).unwrap();
    let d = max_abs_diff(
        mixed.features.row(2),
        &alone.row(0).iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    // Not merely close: batches hold one length and two rows at least, so a vector is the
    // same bits whatever else was embedded with it (the feature cache and the Ray workers
    // rely on it).
    assert_eq!(d, 0.0, "its batch changed the embedding by {d}");
    // Row order is the input order, whatever the length sorting did.
    let again = b
        .embed_texts(&[long.as_str()], OnError::Fail)
        .unwrap()
        .features;
    assert!(
        max_abs_diff(
            mixed.features.row(0),
            &again.row(0).iter().map(|&v| v as f64).collect::<Vec<_>>()
        ) == 0.0
    );
}

#[test]
fn length_sorting_keeps_padding_small() {
    let b = backbone(
        "all-minilm-l6-v2",
        &ExecutionConfig {
            batch_size: 2,
            ..Default::default()
        },
    );
    let long = "many words ".repeat(50);
    let texts = ["a", long.as_str(), "b", long.as_str()];
    let s = b.embed_texts(&texts, OnError::Fail).unwrap().stats;
    // Sorted: (a, b) and (long, long) batch together; no padding at all.
    assert_eq!(s.padding_efficiency(), 1.0);
    assert_eq!(s.batches, 2);
}

#[test]
fn bad_and_odd_texts() {
    let b = backbone("all-minilm-l6-v2", &ExecutionConfig::default());
    let huge = "x".repeat(100_000);
    let odd = ["", "   ", "nul\0byte\0here", huge.as_str()];
    let e = b.embed_texts(&odd, OnError::Fail).unwrap();
    assert!(e.errors.is_empty());
    assert!(e.features.iter().all(|v| v.is_finite()));
    // The 100k-character text is truncated at 256 tokens, not rejected.
    assert!(e.stats.processed_tokens <= 4 * 256);
    // NUL bytes are control characters the BERT normaliser removes.
    let clean = b
        .embed_texts(&["nulbytehere"], OnError::Fail)
        .unwrap()
        .features;
    let d = max_abs_diff(
        e.features.row(2),
        &clean.row(0).iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    assert!(d < 1e-5, "NUL bytes changed the embedding by {d}");
    // Empty and whitespace-only texts both reduce to [CLS] [SEP].
    let d = max_abs_diff(
        e.features.row(0),
        &e.features
            .row(1)
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
    );
    assert!(d < 1e-6);
}

#[test]
fn an_image_call_on_a_text_model_is_refused() {
    let b = backbone("all-minilm-l6-v2", &ExecutionConfig::default());
    let e = b.embed_images(&[], OnError::Fail).unwrap_err();
    assert!(matches!(e, BackboneError::WrongModality { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "all-minilm-l6-v2 is a text model: it embeds texts, and was given images"
    );
}

#[test]
fn fingerprint_is_stable_and_changes_with_settings() {
    let m = manifest("all-minilm-l6-v2");
    let cache = tl_assets::Cache::from_env();
    let a = tl_backbone::Backbone::from_manifest(&m, &cache, &ExecutionConfig::default()).unwrap();
    let b = tl_backbone::Backbone::from_manifest(
        &m,
        &cache,
        &ExecutionConfig {
            batch_size: 7,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "execution settings do not change the output"
    );
    let mut spec = m.model.clone().unwrap();
    spec.text.as_mut().unwrap().max_length = 128;
    let c = tl_backbone::Backbone::from_spec(
        "l6-128",
        &spec,
        &cache.asset_dir(&m),
        &ExecutionConfig::default(),
    )
    .unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
    let mut spec = m.model.clone().unwrap();
    spec.text.as_mut().unwrap().normalize = false;
    let d = tl_backbone::Backbone::from_spec(
        "l6-raw",
        &spec,
        &cache.asset_dir(&m),
        &ExecutionConfig::default(),
    )
    .unwrap();
    assert_ne!(a.fingerprint(), d.fingerprint());
    assert_eq!(a.fingerprint().len(), 32);
}
