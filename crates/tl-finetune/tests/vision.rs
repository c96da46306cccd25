//! The real MobileNetV2 and EfficientNet-Lite0 PyTorch weights (fetched on first use):
//! the engine's frozen forward pass equals ONNX Runtime on the converted models, and the
//! engine's own ONNX export of a network equals the engine.

use tl_assets::manifest::{ImageSpec, Modality, ModelSpec, OutputRef};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, ImageInput, OnError, RawImage};
use tl_finetune::vision::{image_features, spec_at};
use tl_finetune::{Threads, load_pretrained_image};

const TH: Threads = Threads(2);

/// A few small images: colour noise, a gray gradient, an MNIST-like stroke.
fn images() -> Vec<ImageInput> {
    let noise = RawImage {
        width: 37,
        height: 29,
        channels: 3,
        data: (0..37 * 29 * 3)
            .map(|i| (tl_finetune::ops::hash_uniform(5, i) * 255.0) as u8)
            .collect(),
    };
    let gradient = RawImage {
        width: 64,
        height: 48,
        channels: 1,
        data: (0..64 * 48).map(|i| ((i % 64) * 4) as u8).collect(),
    };
    let stroke = RawImage {
        width: 28,
        height: 28,
        channels: 1,
        data: (0..28 * 28)
            .map(|i: usize| {
                if (i / 28).abs_diff(i % 28) < 3 {
                    250
                } else {
                    0
                }
            })
            .collect(),
    };
    [noise, gradient, stroke]
        .into_iter()
        .map(ImageInput::Pixels)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let m = b.iter().map(|v| v.abs()).fold(0.0, f32::max);
    (d, m)
}

fn parity(name: &str) {
    let registry = Registry::builtin().unwrap();
    let manifest = registry.get(name).unwrap();
    let cache = Cache::from_env();
    let pre = load_pretrained_image(manifest, &cache, 3, 0).expect("weights (cargo xtask fetch)");
    let backbone = Backbone::from_manifest(manifest, &cache, &ExecutionConfig::default()).unwrap();
    let inputs = images();
    let ort = backbone
        .embed_images(&inputs, OnError::Fail)
        .unwrap()
        .features;
    let ours = image_features(&pre.model, &inputs, &pre.spec, 8, TH).unwrap();
    let (d, m) = max_diff(&ours, ort.as_slice().unwrap());
    eprintln!("{name}: max |engine - onnxruntime| = {d:.2e} (largest feature {m:.2})");
    assert!(d <= 1e-4 * m.max(1.0), "{name}: {d}");
}

#[test]
fn mobilenetv2_frozen_forward_equals_onnx_runtime() {
    parity("mobilenetv2");
}

#[test]
fn efficientnet_lite0_frozen_forward_equals_onnx_runtime() {
    parity("efficientnet-lite0");
}

#[test]
fn exported_network_equals_the_engine_under_onnx_runtime() {
    let registry = Registry::builtin().unwrap();
    let manifest = registry.get("efficientnet-lite0").unwrap();
    let mut pre = load_pretrained_image(manifest, &Cache::from_env(), 4, 1).unwrap();
    // Moved statistics and scales, so the export's BatchNorm folding is exercised.
    for (i, v) in pre.model.stats.iter_mut().enumerate() {
        *v *= 1.0 + 0.05 * ((i % 3) as f32 - 1.0);
    }
    let dir = tempfile::tempdir().unwrap();
    let r = 64;
    let path = dir.path().join("model.onnx");
    tl_finetune::onnx::write_convnet_onnx(&pre.model, r, &path, "test").unwrap();
    let spec: ImageSpec = spec_at(&pre.spec, Some(r));
    let model_spec = ModelSpec {
        modality: Modality::Image,
        onnx: "model.onnx".into(),
        inputs: vec!["input".into()],
        output: OutputRef::Name("features".into()),
        dim: 1280,
        extra_outputs: vec!["logits".into()],
        text: None,
        image: Some(spec.clone()),
        trainable: None,
    };
    let b = Backbone::from_spec(
        "exported",
        &model_spec,
        dir.path(),
        &ExecutionConfig::default(),
    )
    .unwrap();
    let inputs = images();
    let out = b.embed_images(&inputs, OnError::Fail).unwrap();
    let feats = image_features(&pre.model, &inputs, &spec, 8, TH).unwrap();
    let (d, m) = max_diff(&feats, out.features.as_slice().unwrap());
    eprintln!("export features: max diff {d:.2e} (largest {m:.2})");
    assert!(d <= 1e-4 * m.max(1.0));
    let logits = pre.model.logits_of(&feats, inputs.len(), TH);
    let (d, m) = max_diff(&logits, out.extra[0].1.as_slice().unwrap());
    eprintln!("export logits: max diff {d:.2e} (largest {m:.2})");
    assert!(d <= 1e-4 * m.max(1.0));
}

#[test]
fn an_exported_network_loads_back_for_more_fine_tuning() {
    let registry = Registry::builtin().unwrap();
    let pre = load_pretrained_image(
        registry.get("mobilenetv2").unwrap(),
        &Cache::from_env(),
        3,
        0,
    )
    .unwrap();
    let mut net = pre.model.clone();
    // Stand-ins for training: every weight and statistic moved.
    for (i, v) in net.params.iter_mut().enumerate() {
        *v += 1e-3 * ((i % 7) as f32 - 3.0);
    }
    for v in net.stats.iter_mut() {
        *v *= 1.01;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let exported =
        tl_finetune::export_image(&net, &pre, 48, &cache, "mnv2-reload", "test", "cargo test")
            .unwrap();
    let image = exported
        .manifest
        .model
        .as_ref()
        .unwrap()
        .image
        .as_ref()
        .unwrap();
    assert_eq!(image.size, 48);
    let again = load_pretrained_image(&exported.manifest, &cache, 5, 1).unwrap();
    let body = net.cls_w.start;
    assert_eq!(
        again.model.params[..body],
        net.params[..body],
        "every tuned weight"
    );
    assert_eq!(again.model.stats, net.stats, "every BatchNorm statistic");
    assert_eq!(
        again.model.classes, 5,
        "a fresh classifier for the new task"
    );
    // The exported model is an ordinary asset: ONNX Runtime opens it from its manifest.
    let b =
        Backbone::from_manifest(&exported.manifest, &cache, &ExecutionConfig::default()).unwrap();
    assert_eq!(b.dim(), 1280);
}
