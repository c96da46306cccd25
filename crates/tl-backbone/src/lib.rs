//! ONNX backbone execution: turns raw texts and images into feature vectors with any
//! pretrained ONNX model described by a [`tl_assets::manifest::ModelSpec`].
//!
//! A [`Backbone`] owns one ONNX Runtime session and the preprocessing its model needs:
//! a `tokenizer.json` with pooling for text, decode/resize/normalise for images. Its
//! [`Backbone::fingerprint`] hashes the model file and every setting that changes the
//! output, so caches keyed on it never serve stale vectors.
//!
//! Text is tokenised in parallel, sorted by length and batched, each batch padded to
//! its own longest sequence, and the rows are put back in input order. Images are
//! decoded and resized on a worker pool while the previous batch runs.
//!
//! The ONNX Runtime library is loaded at run time (`ort`'s `load-dynamic`): from
//! `$ORT_DYLIB_PATH`, else from the cache where `cargo xtask fetch onnxruntime` puts it.
//!
//! ```no_run
//! use tl_assets::{Cache, Registry};
//! use tl_backbone::{Backbone, ExecutionConfig, OnError};
//!
//! let registry = Registry::builtin()?;
//! let manifest = registry.get("all-minilm-l6-v2")?;
//! let backbone = Backbone::from_manifest(manifest, &Cache::from_env(), &ExecutionConfig::default())?;
//! let out = backbone.embed_texts(&["A man is playing guitar.", "Stocks fell."], OnError::Fail)?;
//! assert_eq!(out.features.dim(), (2, 384));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod fingerprint;
mod image;
mod output;
mod runtime;
mod session;
mod text;

pub use config::{Device, ExecutionConfig, OnError, Optimization};
pub use error::BackboneError;
pub use fingerprint::{FINGERPRINT_VERSION, manifest_fingerprint};
pub use output::{EmbedStats, Embeddings, ItemError, Timings};

use fingerprint::fingerprint_of;
use session::{open_session, shorten};

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use ndarray::Array2;
use ort::session::Session;
use ort::value::ValueType;
use tl_assets::manifest::{ImageSpec, Modality, ModelSpec, OutputRef, Pooling, TextSpec};
use tl_assets::{Cache, Manifest};
use tokenizers::Tokenizer;

pub use image::{ImageInput, MAX_ALLOC, MAX_SIDE, RawImage};

/// Decode and preprocess one image exactly as an image backbone with `spec` would:
/// `size * size * 3` floats in the spec's layout and channel order. Errors describe
/// why the image could not be read.
pub fn preprocess_image(input: &ImageInput, spec: &ImageSpec) -> Result<Vec<f32>, String> {
    let img = image::decode(input)?;
    let mut out = vec![0f32; (spec.size * spec.size * 3) as usize];
    image::preprocess_into(&img, spec, &mut out);
    Ok(out)
}
pub use runtime::{check_elf, environment, fetched_runtime_path, init_from, runtime_library_path};

enum Encoder {
    Text {
        tokenizer: Box<Tokenizer>,
        spec: TextSpec,
    },
    Image(ImageSpec),
}

/// A pretrained model ready to embed inputs.
pub struct Backbone {
    name: String,
    spec: ModelSpec,
    fingerprint: String,
    session: Mutex<Session>,
    /// Graph input names, in the graph's order.
    input_names: Vec<String>,
    /// Index of the feature output, then of each extra output.
    outputs: Vec<usize>,
    /// Width of each extra output (product of its non-batch dimensions; 0 when dynamic).
    extra_widths: Vec<usize>,
    encoder: Encoder,
    config: ExecutionConfig,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Backbone {
    /// Open a fetched model asset; its files must match their pinned checksums.
    pub fn from_manifest(
        manifest: &Manifest,
        cache: &Cache,
        config: &ExecutionConfig,
    ) -> Result<Backbone, BackboneError> {
        let spec = manifest
            .model
            .as_ref()
            .ok_or_else(|| BackboneError::Config {
                field: "model",
                message: format!(
                    "{} is a {:?} asset, not a model",
                    manifest.name, manifest.kind
                ),
            })?;
        Backbone::open(
            &manifest.name,
            spec,
            &cache.asset_dir(manifest),
            config,
            Some(manifest),
        )
    }

    /// Open a model from a spec whose file paths are relative to `dir` (or absolute):
    /// the way to use your own ONNX model without writing a manifest.
    pub fn from_spec(
        name: &str,
        spec: &ModelSpec,
        dir: &Path,
        config: &ExecutionConfig,
    ) -> Result<Backbone, BackboneError> {
        Backbone::open(name, spec, dir, config, None)
    }

    /// Hash the model files once: for the fingerprint and, when they come from a
    /// manifest, against their pinned checksums.
    fn open(
        name: &str,
        spec: &ModelSpec,
        dir: &Path,
        config: &ExecutionConfig,
        manifest: Option<&Manifest>,
    ) -> Result<Backbone, BackboneError> {
        config.check()?;
        // A spec built in code has not been through a manifest's validation; its image
        // arithmetic (sizes, crops, divisions by std) relies on these rules.
        spec.check()
            .map_err(|(field, message)| BackboneError::Spec { field, message })?;
        let onnx = dir.join(&spec.onnx);
        let sha = |rel: &str| -> Result<String, BackboneError> {
            let p = dir.join(rel);
            let found = tl_assets::sha256_file(&p);
            let Some(m) = manifest else {
                return found.map_err(|source| BackboneError::Io { path: p, source });
            };
            let pinned = &m
                .file(rel)
                .expect("validated manifest lists its model files")
                .sha256;
            let problem = match found {
                Ok(sha) if &sha == pinned => return Ok(sha),
                Ok(sha) => format!("checksum {sha} differs from the pinned {pinned}"),
                Err(e) => format!("cannot read ({e})"),
            };
            Err(BackboneError::AssetFile {
                asset: m.name.clone(),
                path: p,
                problem,
            })
        };
        let model_sha = sha(&spec.onnx)?;
        let (encoder, tok_sha) = match (spec.modality, &spec.text, &spec.image) {
            (Modality::Text, Some(t), _) => {
                let path = dir.join(&t.tokenizer);
                let tok_sha = sha(&t.tokenizer)?;
                let tokenizer = text::load_tokenizer(&path, t.max_length)?;
                (
                    Encoder::Text {
                        tokenizer: Box::new(tokenizer),
                        spec: t.clone(),
                    },
                    Some(tok_sha),
                )
            }
            (Modality::Image, _, Some(im)) => (Encoder::Image(im.clone()), None),
            _ => {
                return Err(BackboneError::Config {
                    field: "model",
                    message: "text models need [model.text], image models [model.image]".into(),
                });
            }
        };
        let fingerprint = fingerprint_of(spec, &model_sha, tok_sha.as_deref());

        let session = open_session(name, &onnx, config)?;
        let graph_inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let mut want = spec.inputs.clone();
        let mut found = graph_inputs.clone();
        want.sort();
        found.sort();
        if want != found {
            return Err(BackboneError::Graph {
                model: name.to_string(),
                message: format!(
                    "graph inputs do not match the manifest: expected {:?}, found {:?}",
                    spec.inputs, graph_inputs
                ),
            });
        }
        if let Encoder::Text { .. } = encoder
            && let Some(bad) = graph_inputs
                .iter()
                .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()))
        {
            return Err(BackboneError::Graph {
                model: name.to_string(),
                message: format!(
                    "text input {bad:?} is not one we can feed (input_ids, attention_mask, token_type_ids)"
                ),
            });
        }
        let names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let find = |r: &OutputRef| -> Result<usize, BackboneError> {
            let idx = match r {
                OutputRef::Name(n) => names.iter().position(|x| x == n),
                OutputRef::Index(i) => (*i < names.len()).then_some(*i),
            };
            idx.ok_or_else(|| BackboneError::Graph {
                model: name.to_string(),
                message: format!("no output {r:?}; the graph's outputs are {names:?}"),
            })
        };
        let mut outputs = vec![find(&spec.output)?];
        for extra in &spec.extra_outputs {
            outputs.push(find(&OutputRef::Name(extra.clone()))?);
        }
        // The feature output's rank must fit the pooling.
        let rank_wanted = match &encoder {
            Encoder::Text { spec: t, .. } if t.pooling != Pooling::Output => 3,
            _ => 2,
        };
        if let ValueType::Tensor { shape, .. } = session.outputs()[outputs[0]].dtype() {
            if shape.len() != rank_wanted {
                return Err(BackboneError::Graph {
                    model: name.to_string(),
                    message: format!(
                        "feature output {:?} has rank {} ({:?}); this pooling needs rank {rank_wanted}",
                        names[outputs[0]],
                        shape.len(),
                        shape
                    ),
                });
            }
            if let Some(&d) = shape.last()
                && d > 0
                && d as usize != spec.dim
            {
                return Err(BackboneError::Graph {
                    model: name.to_string(),
                    message: format!(
                        "feature output has dimension {d}; the manifest says {}",
                        spec.dim
                    ),
                });
            }
        }
        let extra_widths = outputs[1..]
            .iter()
            .map(|&i| match session.outputs()[i].dtype() {
                ValueType::Tensor { shape, .. }
                    if shape.len() >= 2 && shape[1..].iter().all(|&d| d > 0) =>
                {
                    shape[1..].iter().product::<i64>() as usize
                }
                _ => 0,
            })
            .collect();
        Ok(Backbone {
            name: name.to_string(),
            spec: spec.clone(),
            fingerprint,
            session: Mutex::new(session),
            input_names: graph_inputs,
            outputs,
            extra_widths,
            encoder,
            config: config.clone(),
        })
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The extra outputs named in the manifest (e.g. ImageNet `logits`) with their widths per
    /// item (0 when the graph leaves a dimension dynamic).
    pub fn extra_outputs(&self) -> Vec<(&str, usize)> {
        self.spec
            .extra_outputs
            .iter()
            .map(String::as_str)
            .zip(self.extra_widths.iter().copied())
            .collect()
    }

    /// Hash of the model file and every output-affecting setting (32 hex characters).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// Text or image.
    pub fn modality(&self) -> Modality {
        self.spec.modality
    }

    /// The model spec this backbone runs.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The execution settings.
    pub fn config(&self) -> &ExecutionConfig {
        &self.config
    }

    /// Run one batch and write its pooled rows to `rows` of `result`.
    fn run_batch(
        &self,
        inputs: Vec<(String, ort::value::DynValue)>,
        rows: &[usize],
        result: &mut Embeddings,
        fill: impl Fn(&[f32], usize, &mut [f32]),
        normalize: bool,
    ) -> Result<(), BackboneError> {
        let t0 = Instant::now();
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(inputs).map_err(|e| self.ort(e))?;
        let t1 = Instant::now();
        result.stats.timings.run += t1 - t0;
        result.stats.batches += 1;
        let (shape, data) = outputs[self.outputs[0]]
            .try_extract_tensor::<f32>()
            .map_err(|e| self.ort(e))?;
        if shape.first().copied() != Some(rows.len() as i64)
            || shape.last().copied() != Some(self.spec.dim as i64)
        {
            return Err(BackboneError::Graph {
                model: self.name.clone(),
                message: format!(
                    "feature output has shape {shape:?}; expected {} rows of dimension {}",
                    rows.len(),
                    self.spec.dim
                ),
            });
        }
        for (r, &i) in rows.iter().enumerate() {
            let mut row = result.features.row_mut(i);
            let row = row
                .as_slice_mut()
                .expect("rows of a standard-layout array are contiguous");
            fill(data, r, row);
            if normalize {
                text::l2_normalize(row);
            }
        }
        for (k, name) in self.spec.extra_outputs.iter().enumerate() {
            let (shape, data) = outputs[self.outputs[k + 1]]
                .try_extract_tensor::<f32>()
                .map_err(|e| self.ort(e))?;
            let width = (shape.iter().skip(1).product::<i64>()).max(0) as usize;
            // A graph may give an extra output another batch size or, from one batch to the
            // next, another width: slicing it blindly would panic or mix rows.
            let known = result.extra.get(k).map(|(_, x)| x.ncols());
            if shape.first().copied() != Some(rows.len() as i64)
                || data.len() != rows.len() * width
                || known.is_some_and(|w| w != width)
            {
                return Err(BackboneError::Graph {
                    model: self.name.clone(),
                    message: format!(
                        "extra output `{name}` has shape {shape:?}; expected {} rows{}",
                        rows.len(),
                        known.map_or(String::new(), |w| format!(" of width {w}"))
                    ),
                });
            }
            if result.extra.len() <= k {
                result.extra.push((
                    name.clone(),
                    Array2::from_elem((result.features.nrows(), width), f32::NAN),
                ));
            }
            let extra = &mut result.extra[k].1;
            for (r, &i) in rows.iter().enumerate() {
                extra
                    .row_mut(i)
                    .as_slice_mut()
                    .expect("contiguous row")
                    .copy_from_slice(&data[r * width..(r + 1) * width]);
            }
        }
        result.stats.timings.pool += t1.elapsed();
        Ok(())
    }

    fn empty(&self, n: usize) -> Embeddings {
        Embeddings {
            features: Array2::from_elem((n, self.spec.dim), f32::NAN),
            extra: Vec::new(),
            errors: Vec::new(),
            stats: EmbedStats {
                items: n,
                ..EmbedStats::default()
            },
        }
    }

    fn wrong_modality(&self, expected: &'static str) -> BackboneError {
        BackboneError::WrongModality {
            model: self.name.clone(),
            modality: self.spec.modality,
            expected,
        }
    }

    fn ort(&self, e: impl std::fmt::Display) -> BackboneError {
        BackboneError::Ort {
            model: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn item_failed(
        &self,
        result: &mut Embeddings,
        on_error: OnError,
        index: usize,
        item: String,
        message: String,
    ) -> Result<(), BackboneError> {
        match on_error {
            OnError::Fail => Err(BackboneError::Item {
                index,
                item,
                message,
            }),
            OnError::Skip => {
                tracing::warn!("{}: skipping item {index} ({item}): {message}", self.name);
                result.errors.push(ItemError {
                    index,
                    item,
                    message,
                });
                result.errors.sort_by_key(|e| e.index);
                Ok(())
            }
        }
    }

    fn bar(&self, n: usize) -> indicatif::ProgressBar {
        if !self.config.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(n as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} {per_sec} eta {eta}",
            )
            .expect("static template"),
        );
        bar.set_message(format!("embedding with {}", self.name));
        bar
    }
}
