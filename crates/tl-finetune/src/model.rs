//! From a model manifest to a trainable model, and from a tuned model back to a model
//! asset (ONNX graph, tokenizer, weights, manifest) that every other part of the toolkit
//! opens by name.

use std::path::{Path, PathBuf};

use tl_assets::manifest::{
    AssetKind, FileSpec, Manifest, Modality, ModelSpec, OutputRef, Pooling, Source, TextSpec,
    TrainableSpec,
};
use tl_assets::{Cache, Fetcher};

use crate::FinetuneError;
use crate::bert::{BertClassifier, BertConfig};
use crate::cnn::ConvNet;
use crate::vision::PretrainedImage;
use crate::weights::{
    Naming, encoder_tensors, from_tensors, infer_config, read_onnx_initializers, read_safetensors,
    write_safetensors,
};

/// A pretrained encoder ready to fine-tune, with the files it came from.
#[derive(Debug, Clone)]
pub struct Pretrained {
    /// The model (its classifier is zero, with the requested number of classes).
    pub model: BertClassifier,
    /// Its tokenizer file.
    pub tokenizer: PathBuf,
    /// The manifest it came from.
    pub manifest: Manifest,
}

fn no_weights(name: &str) -> FinetuneError {
    FinetuneError::Model {
        model: name.to_string(),
        message: "has no trainable weights: its manifest needs a [model.trainable] table \
                  (architecture = \"bert\", weights = fp32 safetensors file, format = \
                  \"safetensors\", config = transformers config.json) naming files of the asset"
            .into(),
    }
}

/// Checks that `manifest` is a model with trainable weights (before any data is read);
/// the error says why not and what to use instead.
pub fn check_trainable(manifest: &Manifest) -> Result<(), FinetuneError> {
    let model_err = |m: &str| FinetuneError::Model {
        model: manifest.name.clone(),
        message: m.to_string(),
    };
    match &manifest.model {
        None => Err(FinetuneError::Model {
            model: manifest.name.clone(),
            message: format!("is a {:?} asset, not a model", manifest.kind),
        }),
        Some(m) if m.trainable.is_some() => Ok(()),
        Some(m) if m.image.is_some() => Err(model_err(
            "is frozen only: its manifest declares no trainable weights ([model.trainable]); use it for features (tl run, tl embed), or fine-tune mobilenetv2 or efficientnet-lite0",
        )),
        Some(_) => Err(no_weights(&manifest.name)),
    }
}

/// Reads a transformers `config.json` of a BERT model.
pub fn read_bert_config(path: &Path) -> Result<BertConfig, FinetuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| FinetuneError::io(path, e))?;
    let bad = |m: String| FinetuneError::Weights {
        path: path.to_path_buf(),
        message: m,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str())
        && act != "gelu"
    {
        return Err(bad(format!(
            "hidden_act {act:?}: only \"gelu\" (erf) is supported"
        )));
    }
    if let Some(p) = v.get("position_embedding_type").and_then(|a| a.as_str())
        && p != "absolute"
    {
        return Err(bad(format!(
            "position_embedding_type {p:?}: only \"absolute\" is supported"
        )));
    }
    let c: BertConfig =
        serde_json::from_value(v).map_err(|e| bad(format!("not a BERT config: {e}")))?;
    c.check().map_err(bad)?;
    Ok(c)
}

/// Loads the trainable weights a model manifest declares (fetching them into `cache`
/// first), with a fresh classifier of `classes` outputs.
pub fn load_pretrained(
    manifest: &Manifest,
    cache: &Cache,
    classes: usize,
) -> Result<Pretrained, FinetuneError> {
    let spec = manifest
        .model
        .as_ref()
        .ok_or_else(|| FinetuneError::Model {
            model: manifest.name.clone(),
            message: format!("is a {:?} asset, not a model", manifest.kind),
        })?;
    check_trainable(manifest)?;
    let trainable = spec
        .trainable
        .as_ref()
        .ok_or_else(|| no_weights(&manifest.name))?;
    let text = spec.text.as_ref().ok_or_else(|| FinetuneError::Model {
        model: manifest.name.clone(),
        message: "is an image model: load it with load_pretrained_image".into(),
    })?;
    if classes < 2 {
        return Err(FinetuneError::Data(format!(
            "a classifier needs at least 2 classes, got {classes}"
        )));
    }
    let mut files = vec![trainable.weights.as_str(), text.tokenizer.as_str()];
    files.extend(trainable.config.as_deref());
    Fetcher::new(cache.clone())
        .fetch_files(manifest, &files)
        .map_err(|e| FinetuneError::Model {
            model: manifest.name.clone(),
            message: format!("fetching its trainable weights: {e}"),
        })?;
    let weights = cache.file_path(manifest, &trainable.weights);
    let tensors = match trainable.format.as_str() {
        "onnx" => read_onnx_initializers(&weights)?,
        _ => read_safetensors(&weights)?,
    };
    let naming = Naming {
        prefix: &trainable.prefix,
        renamed: trainable.names.clone(),
        transposed: trainable.transposed.clone(),
    };
    let config = match (&trainable.config, trainable.attention_heads) {
        (Some(c), _) => read_bert_config(&cache.file_path(manifest, c))?,
        (None, Some(heads)) => infer_config(&tensors, &naming, heads, &weights)?,
        (None, None) => return Err(no_weights(&manifest.name)),
    };
    let model = from_tensors(config, classes, &tensors, &naming, &weights)?;
    Ok(Pretrained {
        model,
        tokenizer: cache.file_path(manifest, &text.tokenizer),
        manifest: manifest.clone(),
    })
}

/// A tuned model written as a model asset.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Its manifest (also written to `<cache>/manifests/<name>.toml`).
    pub manifest: Manifest,
    /// Where the manifest was written.
    pub manifest_path: PathBuf,
    /// The asset folder (`<cache>/models/<name>/`).
    pub dir: PathBuf,
}

/// Writes the encoder of `model` as the model asset `name` in `cache`: `model.onnx`
/// (fp32, read by ONNX Runtime through tl-backbone like any other model), the base
/// model's `tokenizer.json`, `model.safetensors` + `config.json` (so the tuned model can
/// be fine-tuned again), and a manifest pinning all four by sha256. Its features are
/// the mean of the token states, not normalised: exactly what the jointly trained
/// linear layer saw.
pub fn export(
    model: &BertClassifier,
    base: &Pretrained,
    cache: &Cache,
    name: &str,
    description: &str,
    produced_by: &str,
) -> Result<Exported, FinetuneError> {
    let base_spec = base
        .manifest
        .model
        .as_ref()
        .ok_or_else(|| no_weights(&base.manifest.name))?;
    let base_text = base_spec
        .text
        .as_ref()
        .ok_or_else(|| no_weights(&base.manifest.name))?;
    let dir = cache.root().join(AssetKind::Model.dir_name()).join(name);
    std::fs::create_dir_all(&dir).map_err(|e| FinetuneError::io(&dir, e))?;
    crate::onnx::write_encoder_onnx(model, &dir.join("model.onnx"), description)?;
    let tok = std::fs::read(&base.tokenizer).map_err(|e| FinetuneError::io(&base.tokenizer, e))?;
    crate::atomic_write(&dir.join("tokenizer.json"), &tok)?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &encoder_tensors(model),
        &Default::default(),
    )?;
    let mut config = serde_json::to_value(&model.config).expect("plain struct");
    config["hidden_act"] = "gelu".into();
    config["position_embedding_type"] = "absolute".into();
    config["model_type"] = "bert".into();
    crate::atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("plain value")
            .as_bytes(),
    )?;
    let files = local_files(
        &dir,
        &[
            "model.onnx",
            "tokenizer.json",
            "model.safetensors",
            "config.json",
        ],
        produced_by,
    )?;
    let manifest = Manifest {
        name: name.to_string(),
        kind: AssetKind::Model,
        description: description.to_string(),
        licence: base.manifest.licence.clone(),
        attribution: format!(
            "{}; fine-tuned with transfer-learning-rs",
            base.manifest.attribution
        ),
        default: false,
        files,
        model: Some(ModelSpec {
            modality: Modality::Text,
            onnx: "model.onnx".into(),
            inputs: vec![
                "input_ids".into(),
                "attention_mask".into(),
                "token_type_ids".into(),
            ],
            output: OutputRef::Name("last_hidden_state".into()),
            dim: model.config.hidden_size,
            extra_outputs: Vec::new(),
            text: Some(TextSpec {
                tokenizer: "tokenizer.json".into(),
                max_length: base_text
                    .max_length
                    .min(model.config.max_position_embeddings),
                pooling: Pooling::Mean,
                normalize: false,
            }),
            image: None,
            trainable: Some(TrainableSpec {
                architecture: "bert".into(),
                weights: "model.safetensors".into(),
                format: "safetensors".into(),
                config: Some("config.json".into()),
                attention_heads: None,
                prefix: String::new(),
                names: Default::default(),
                transposed: Vec::new(),
            }),
        }),
        dataset: None,
    };
    write_manifest(cache, manifest, produced_by)
}

/// The manifest entries of files just written into `dir`: pinned by sha256, produced
/// locally by `produced_by`.
fn local_files(
    dir: &Path,
    names: &[&str],
    produced_by: &str,
) -> Result<Vec<FileSpec>, FinetuneError> {
    names
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let sha = tl_assets::sha256_file(&path).map_err(|e| FinetuneError::io(&path, e))?;
            Ok(FileSpec {
                path: f.to_string(),
                sha256: sha,
                sources: vec![Source::Local {
                    produced_by: produced_by.to_string(),
                }],
                optional: false,
            })
        })
        .collect()
}

/// Writes `manifest` to the cache's local manifests (checked by parsing it back).
fn write_manifest(
    cache: &Cache,
    manifest: Manifest,
    produced_by: &str,
) -> Result<Exported, FinetuneError> {
    let name = manifest.name.clone();
    let dir = cache.root().join(AssetKind::Model.dir_name()).join(&name);
    let text = toml::to_string(&manifest).map_err(|e| FinetuneError::Model {
        model: name.to_string(),
        message: format!("writing its manifest: {e}"),
    })?;
    // Parse it back: what is written must load.
    Manifest::parse(&name, &text).map_err(|e| FinetuneError::Model {
        model: name.to_string(),
        message: e.to_string(),
    })?;
    let mdir = cache.local_manifests();
    std::fs::create_dir_all(&mdir).map_err(|e| FinetuneError::io(&mdir, e))?;
    let manifest_path = mdir.join(format!("{name}.toml"));
    let header = format!("# Written by `{produced_by}`.\n");
    crate::atomic_write(&manifest_path, format!("{header}{text}").as_bytes())?;
    Ok(Exported {
        manifest,
        manifest_path,
        dir,
    })
}

/// The jointly trained linear layer of `model` as a tl-heads logistic classifier on the
/// exported model's features (mean-pooled token states), bound to that model's
/// `fingerprint`, so `tl predict` and `tl eval` use it on raw text. Its probabilities are
/// the fine-tuned model's softmax.
pub fn head_classifier(
    model: &BertClassifier,
    label_names: &[String],
    fingerprint: &str,
    train_rows: usize,
) -> Result<tl_heads::Classifier, FinetuneError> {
    linear_classifier(
        &model.params[model.slots.cls_w.clone()],
        &model.params[model.slots.cls_b.clone()],
        model.config.hidden_size,
        label_names,
        fingerprint,
        train_rows,
    )
}

/// [`head_classifier`] for an image network: its classifier on the exported model's
/// pooled features, so `tl predict` works on image files.
pub fn image_head_classifier(
    net: &ConvNet,
    label_names: &[String],
    fingerprint: &str,
    train_rows: usize,
) -> Result<tl_heads::Classifier, FinetuneError> {
    linear_classifier(
        &net.params[net.cls_w.clone()],
        &net.params[net.cls_b.clone()],
        net.features,
        label_names,
        fingerprint,
        train_rows,
    )
}

/// A linear layer `w[c, h]`, `b[c]` as a tl-heads logistic classifier.
fn linear_classifier(
    w: &[f32],
    b: &[f32],
    h: usize,
    label_names: &[String],
    fingerprint: &str,
    train_rows: usize,
) -> Result<tl_heads::Classifier, FinetuneError> {
    let c = b.len();
    if label_names.len() != c {
        return Err(FinetuneError::Data(format!(
            "{} label names for a classifier of {c} classes",
            label_names.len()
        )));
    }
    // tl-heads keeps one score column for two classes (sigmoid of the second class's
    // margin): softmax over [z0, z1] is sigmoid(z1 - z0), so the column is the difference.
    let linear = if c == 2 {
        tl_heads::Linear {
            w: ndarray::Array2::from_shape_fn((h, 1), |(j, _)| (w[h + j] - w[j]) as f64),
            b: ndarray::Array1::from_elem(1, (b[1] - b[0]) as f64),
        }
    } else {
        tl_heads::Linear {
            w: ndarray::Array2::from_shape_fn((h, c), |(j, k)| w[k * h + j] as f64),
            b: ndarray::Array1::from_shape_fn(c, |k| b[k] as f64),
        }
    };
    Ok(tl_heads::Classifier {
        format_version: tl_heads::FORMAT_VERSION,
        config: tl_heads::HeadConfig::new(tl_heads::HeadSpec::Logistic(Default::default())),
        label_names: label_names.to_vec(),
        classes: (0..c).collect(),
        features: tl_heads::FeatureMeta {
            dim: h,
            fingerprint: Some(fingerprint.to_string()),
        },
        train_rows,
        preprocess: tl_heads::FittedPreprocess {
            settings: Default::default(),
            mean: None,
            scale: None,
            pca: None,
        },
        head: tl_heads::FittedHead::Logistic { linear },
        warnings: Vec::new(),
    })
}

/// Writes the tuned image network `net` as the model asset `name` in `cache`:
/// `model.onnx` (fp32, BatchNorm folded, input side `resolution`, outputs `features`
/// and `logits`), `model.safetensors` (the unfolded weights and statistics under their
/// PyTorch names, so the tuned model can be fine-tuned again) and a manifest with the
/// base model's preprocessing at that resolution.
pub fn export_image(
    net: &ConvNet,
    base: &PretrainedImage,
    resolution: usize,
    cache: &Cache,
    name: &str,
    description: &str,
    produced_by: &str,
) -> Result<Exported, FinetuneError> {
    let dir = cache.root().join(AssetKind::Model.dir_name()).join(name);
    std::fs::create_dir_all(&dir).map_err(|e| FinetuneError::io(&dir, e))?;
    crate::onnx::write_convnet_onnx(net, resolution, &dir.join("model.onnx"), description)?;
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = net
        .slots
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.shape.clone(),
                &net.params[s.range.clone()],
            )
        })
        .collect();
    for (n, r) in &net.stat_names {
        tensors.push((n.clone(), vec![r.len()], &net.stats[r.clone()]));
    }
    write_safetensors(
        &dir.join("model.safetensors"),
        &tensors,
        &Default::default(),
    )?;
    let files = local_files(&dir, &["model.onnx", "model.safetensors"], produced_by)?;
    let manifest = Manifest {
        name: name.to_string(),
        kind: AssetKind::Model,
        description: description.to_string(),
        licence: base.manifest.licence.clone(),
        attribution: format!(
            "{}; fine-tuned with transfer-learning-rs",
            base.manifest.attribution
        ),
        default: false,
        files,
        model: Some(ModelSpec {
            modality: Modality::Image,
            onnx: "model.onnx".into(),
            inputs: vec!["input".into()],
            output: OutputRef::Name("features".into()),
            dim: net.features,
            extra_outputs: vec!["logits".into()],
            text: None,
            image: Some(crate::vision::spec_at(&base.spec, Some(resolution))),
            trainable: Some(TrainableSpec {
                architecture: net.arch.clone(),
                weights: "model.safetensors".into(),
                format: "safetensors".into(),
                config: None,
                attention_heads: None,
                prefix: String::new(),
                names: Default::default(),
                transposed: Vec::new(),
            }),
        }),
        dataset: None,
    };
    write_manifest(cache, manifest, produced_by)
}
