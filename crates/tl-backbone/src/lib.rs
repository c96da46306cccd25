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

mod image;
mod runtime;
mod text;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::Array2;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, ValueType};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tl_assets::manifest::{ImageSpec, Modality, ModelSpec, OutputRef, Pooling, TextSpec};
use tl_assets::{Cache, Manifest};
use tokenizers::Tokenizer;

pub use image::{ImageInput, MAX_ALLOC, MAX_SIDE, RawImage};

/// The fingerprint of `spec` with model (and tokenizer) files of these sha256 digests.
fn fingerprint_of(spec: &ModelSpec, model_sha: &str, tok_sha: Option<&str>) -> String {
    let fingerprint_input = FingerprintInput {
        version: FINGERPRINT_VERSION,
        model_sha256: model_sha,
        tokenizer_sha256: tok_sha,
        modality: spec.modality,
        output: &spec.output,
        dim: spec.dim,
        text: spec.text.as_ref(),
        image: spec.image.as_ref(),
    };
    let canonical = serde_json::to_vec(&fingerprint_input).expect("plain data serialises");
    hex::encode(Sha256::digest(&canonical))[..32].to_string()
}

/// The fingerprint a [`Backbone`] opened from model manifest `m` has, computed from the
/// manifest's pinned checksums without opening anything (a backbone re-hashes its files
/// and refuses any that differ, so the two agree). None for a manifest without a model.
/// Tells which model a saved classifier was trained on.
pub fn manifest_fingerprint(m: &Manifest) -> Option<String> {
    let spec = m.model.as_ref()?;
    let model_sha = &m.file(&spec.onnx)?.sha256;
    let tok_sha = match &spec.text {
        Some(t) => Some(m.file(&t.tokenizer)?.sha256.as_str()),
        None => None,
    };
    Some(fingerprint_of(spec, model_sha, tok_sha))
}

/// Decode and preprocess one image exactly as an image backbone with `spec` would:
/// `size * size * 3` floats in the spec's layout and channel order. Errors describe
/// why the image could not be read.
pub fn preprocess_image(input: &ImageInput, spec: &ImageSpec) -> Result<Vec<f32>, String> {
    let img = image::decode(input)?;
    let mut out = vec![0f32; (spec.size * spec.size * 3) as usize];
    image::preprocess_into(&img, spec, &mut out);
    Ok(out)
}
pub use runtime::{check_elf, environment, init_from, runtime_library_path};

/// Version of the fingerprint recipe; bump when preprocessing code changes output.
pub const FINGERPRINT_VERSION: u32 = 1;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The runtime library file is not where it was looked for.
    #[error(
        "ONNX Runtime library not found at {path}; run `cargo xtask fetch onnxruntime` or set ORT_DYLIB_PATH to a libonnxruntime.so 1.31"
    )]
    RuntimeMissing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The library exists but could not be loaded or initialised.
    #[error(
        "loading ONNX Runtime from {path}: {message} (expected libonnxruntime 1.31.x for this platform)"
    )]
    RuntimeLoad {
        /// The library path.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] tl_assets::ManifestError),
    /// A model file is missing or differs from its pinned checksum.
    #[error("{path}: {problem}; run `cargo xtask fetch {asset}`")]
    AssetFile {
        /// Asset name.
        asset: String,
        /// The file.
        path: PathBuf,
        /// Missing or corrupt.
        problem: String,
    },
    /// A model spec breaks a rule (a spec built in code, not read from a manifest).
    #[error("invalid model spec: `{field}`: {message}")]
    Spec {
        /// The offending field.
        field: String,
        /// What was expected.
        message: String,
    },
    /// The settings break a rule.
    #[error("invalid setting `{field}`: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// The graph does not match the model spec.
    #[error("{model}: {message}")]
    Graph {
        /// Model name.
        model: String,
        /// What differs, with expected and found.
        message: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// ONNX Runtime failed.
    #[error("{model}: ONNX Runtime: {message}")]
    Ort {
        /// Model name.
        model: String,
        /// The runtime's message.
        message: String,
    },
    /// An item could not be embedded (under [`OnError::Fail`]).
    #[error("item {index} ({item}): {message}")]
    Item {
        /// Position of the item in the input.
        index: usize,
        /// The item, shortened.
        item: String,
        /// Why it failed.
        message: String,
    },
    /// The called method does not fit the model's modality.
    #[error("{model} is {} model: it embeds {expected}, and was given {}", if matches!(modality, Modality::Image) { "an image" } else { "a text" }, if *expected == "images" { "texts" } else { "images" })]
    WrongModality {
        /// Model name.
        model: String,
        /// The model's modality.
        modality: Modality,
        /// What the model embeds (`texts` or `images`; `embed_texts` / `embed_images`).
        expected: &'static str,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this GPU (needs the `cuda` feature and a CUDA
    /// build of ONNX Runtime).
    Cuda(i32),
}

/// Graph optimisation level of ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Optimization {
    /// No graph rewrites.
    Disable,
    /// Redundancy elimination and constant folding.
    Basic,
    /// Plus node fusions.
    Extended,
    /// Everything, including layout optimisations.
    #[default]
    All,
}

/// What to do when one item cannot be embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Return the first item error.
    Fail,
    /// Embed the rest; the failed rows are NaN and listed in [`Embeddings::errors`].
    Skip,
}

/// Execution settings. These do not change the output, so they are not part of the
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionConfig {
    /// Threads inside each operator; `None` = all cores.
    pub intra_threads: Option<usize>,
    /// Items per `session.run`.
    pub batch_size: usize,
    /// Graph optimisation level.
    pub optimization: Optimization,
    /// CPU or CUDA.
    pub device: Device,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            intra_threads: None,
            batch_size: 32,
            optimization: Optimization::All,
            device: Device::Cpu,
            progress: false,
        }
    }
}

impl ExecutionConfig {
    /// Validate the settings.
    pub fn check(&self) -> Result<(), BackboneError> {
        if self.batch_size == 0 {
            return Err(BackboneError::Config {
                field: "batch_size",
                message: "must be at least 1".into(),
            });
        }
        if self.intra_threads == Some(0) {
            return Err(BackboneError::Config {
                field: "intra_threads",
                message: "must be at least 1 (or unset for all cores)".into(),
            });
        }
        Ok(())
    }
}

/// Time spent in each stage of an embedding call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Tokenising, or decoding + resizing + normalising (summed over workers).
    pub prepare: Duration,
    /// Inside `session.run`.
    pub run: Duration,
    /// Pooling, normalisation and copying out.
    pub pool: Duration,
    /// Wall time of the whole call.
    pub total: Duration,
}

/// Counters of an embedding call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmbedStats {
    /// Items asked for.
    pub items: usize,
    /// `session.run` calls.
    pub batches: usize,
    /// Real (unpadded) tokens fed, text only.
    pub real_tokens: usize,
    /// Tokens fed including padding, text only.
    pub processed_tokens: usize,
    /// Where the time went.
    pub timings: Timings,
}

impl EmbedStats {
    /// Real tokens / processed tokens (1.0 for images or when nothing ran).
    pub fn padding_efficiency(&self) -> f64 {
        if self.processed_tokens == 0 {
            1.0
        } else {
            self.real_tokens as f64 / self.processed_tokens as f64
        }
    }
}

/// One item that could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Position in the input.
    pub index: usize,
    /// The item, shortened for messages.
    pub item: String,
    /// Why.
    pub message: String,
}

/// The result of an embedding call.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// One row per input item, in input order; rows of failed items are NaN.
    pub features: Array2<f32>,
    /// Extra outputs named in the manifest (e.g. ImageNet `logits`), rows as above.
    pub extra: Vec<(String, Array2<f32>)>,
    /// Items that failed (only under [`OnError::Skip`]).
    pub errors: Vec<ItemError>,
    /// Counters and timings.
    pub stats: EmbedStats,
}

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

#[derive(Serialize)]
struct FingerprintInput<'a> {
    version: u32,
    model_sha256: &'a str,
    tokenizer_sha256: Option<&'a str>,
    modality: Modality,
    output: &'a OutputRef,
    dim: usize,
    text: Option<&'a TextSpec>,
    image: Option<&'a ImageSpec>,
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

    /// Embed texts. Empty or whitespace-only texts embed the special tokens alone; long
    /// texts are truncated at the model's maximum length.
    pub fn embed_texts<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        on_error: OnError,
    ) -> Result<Embeddings, BackboneError> {
        let start = Instant::now();
        let Encoder::Text { tokenizer, spec } = &self.encoder else {
            return Err(self.wrong_modality("images"));
        };
        let mut result = self.empty(texts.len());
        let t0 = Instant::now();
        let tokens = text::tokenize(tokenizer, texts, spec.max_length);
        result.stats.timings.prepare = t0.elapsed();
        let mut lens = Vec::with_capacity(texts.len());
        for (i, t) in tokens.iter().enumerate() {
            match t {
                Ok(t) => lens.push((i, t.ids.len())),
                Err(message) => self.item_failed(
                    &mut result,
                    on_error,
                    i,
                    shorten(texts[i].as_ref()),
                    message.clone(),
                )?,
            }
        }
        let bar = self.bar(lens.len());
        for batch in text::length_batches(&lens, self.config.batch_size) {
            let seq = batch
                .iter()
                .map(|&i| tokens[i].as_ref().map_or(0, |t| t.ids.len()))
                .max()
                .unwrap_or(0);
            let n = batch.len();
            let t0 = Instant::now();
            let mut ids = vec![0i64; n * seq];
            let mut mask = vec![0i64; n * seq];
            let mut types = vec![0i64; n * seq];
            for (r, &i) in batch.iter().enumerate() {
                let t = tokens[i]
                    .as_ref()
                    .expect("only tokenised items are batched");
                let len = t.ids.len();
                ids[r * seq..r * seq + len].copy_from_slice(&t.ids);
                mask[r * seq..r * seq + len].fill(1);
                types[r * seq..r * seq + len].copy_from_slice(&t.type_ids);
                result.stats.real_tokens += len;
            }
            result.stats.processed_tokens += n * seq;
            result.stats.timings.prepare += t0.elapsed();
            // Each graph input name appears once, so ids and type ids can be moved into
            // their tensors; the mask is still needed for pooling.
            let (mut ids, mut types) = (Some(ids), Some(types));
            let mut inputs = Vec::with_capacity(self.input_names.len());
            for name in &self.input_names {
                let data = match name.as_str() {
                    "input_ids" => ids.take().unwrap_or_default(),
                    "attention_mask" => mask.clone(),
                    _ => types.take().unwrap_or_default(),
                };
                let tensor = Tensor::from_array(([n, seq], data)).map_err(|e| self.ort(e))?;
                inputs.push((name.clone(), tensor.into_dyn()));
            }
            let dim = self.spec.dim;
            self.run_batch(
                inputs,
                &batch,
                &mut result,
                |out, r, row| match spec.pooling {
                    Pooling::Mean => text::mean_pool(
                        &out[r * seq * dim..(r + 1) * seq * dim],
                        seq,
                        dim,
                        &mask[r * seq..(r + 1) * seq],
                        row,
                    ),
                    Pooling::Cls => row.copy_from_slice(&out[r * seq * dim..r * seq * dim + dim]),
                    Pooling::Output => row.copy_from_slice(&out[r * dim..(r + 1) * dim]),
                },
                spec.normalize,
            )?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        result.stats.timings.total = start.elapsed();
        Ok(result)
    }

    /// Embed images. Decoding and resizing of the next batch run on the rayon pool while
    /// the current batch is inside ONNX Runtime.
    pub fn embed_images(
        &self,
        images: &[ImageInput],
        on_error: OnError,
    ) -> Result<Embeddings, BackboneError> {
        let start = Instant::now();
        let Encoder::Image(spec) = &self.encoder else {
            return Err(self.wrong_modality("texts"));
        };
        let mut result = self.empty(images.len());
        let per = (spec.size * spec.size * 3) as usize;
        let bs = self.config.batch_size;
        let prepare =
            |range: std::ops::Range<usize>| -> (Vec<f32>, Vec<Result<(), String>>, Duration) {
                let t0 = Instant::now();
                let mut buf = vec![0f32; range.len() * per];
                let status: Vec<Result<(), String>> = buf
                    .par_chunks_mut(per)
                    .zip(range.into_par_iter())
                    .map(|(out, i)| {
                        image::decode(&images[i]).map(|img| image::preprocess_into(&img, spec, out))
                    })
                    .collect();
                (buf, status, t0.elapsed())
            };
        let shape = |n: usize| -> Vec<usize> {
            let s = spec.size as usize;
            match spec.layout {
                tl_assets::manifest::Layout::Nchw => vec![n, 3, s, s],
                tl_assets::manifest::Layout::Nhwc => vec![n, s, s, 3],
            }
        };
        let bar = self.bar(images.len());
        let starts: Vec<usize> = (0..images.len()).step_by(bs).collect();
        let range_of = |s: usize| s..(s + bs).min(images.len());
        let mut next = starts.first().map(|&s| prepare(range_of(s)));
        for (k, &s) in starts.iter().enumerate() {
            let (buf, status, took) = next.take().expect("each batch is prepared ahead");
            let range = range_of(s);
            result.stats.timings.prepare += took;
            for (j, st) in status.iter().enumerate() {
                if let Err(message) = st {
                    let i = range.start + j;
                    self.item_failed(
                        &mut result,
                        on_error,
                        i,
                        images[i].describe(),
                        message.clone(),
                    )?;
                }
            }
            let mut rows = Vec::with_capacity(range.len());
            let mut data = Vec::with_capacity(buf.len());
            for (j, st) in status.iter().enumerate() {
                if st.is_ok() {
                    rows.push(range.start + j);
                    data.extend_from_slice(&buf[j * per..(j + 1) * per]);
                }
            }
            drop(buf);
            let following = starts.get(k + 1).map(|&s2| range_of(s2));
            // Run this batch while the next one is decoded and resized.
            let (ran, prepared) = rayon::join(
                || -> Result<(), BackboneError> {
                    if rows.is_empty() {
                        return Ok(());
                    }
                    let tensor =
                        Tensor::from_array((shape(rows.len()), data)).map_err(|e| self.ort(e))?;
                    let inputs = vec![(self.input_names[0].clone(), tensor.into_dyn())];
                    let dim = self.spec.dim;
                    self.run_batch(
                        inputs,
                        &rows,
                        &mut result,
                        |out, r, row| row.copy_from_slice(&out[r * dim..(r + 1) * dim]),
                        false,
                    )
                },
                || following.map(&prepare),
            );
            ran?;
            next = prepared;
            bar.inc(range.len() as u64);
        }
        bar.finish_and_clear();
        result.stats.timings.total = start.elapsed();
        Ok(result)
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

fn open_session(
    name: &str,
    onnx: &Path,
    config: &ExecutionConfig,
) -> Result<Session, BackboneError> {
    let env = environment()?;
    let ort_err = |e: &dyn std::fmt::Display| BackboneError::Ort {
        model: name.to_string(),
        message: e.to_string(),
    };
    let threads = config
        .intra_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let level = match config.optimization {
        Optimization::Disable => GraphOptimizationLevel::Disable,
        Optimization::Basic => GraphOptimizationLevel::Level1,
        Optimization::Extended => GraphOptimizationLevel::Level2,
        Optimization::All => GraphOptimizationLevel::All,
    };
    let mut builder = Session::builder(env)
        .map_err(|e| ort_err(&e))?
        .with_intra_threads(threads)
        .map_err(|e| ort_err(&e))?
        .with_optimization_level(level)
        .map_err(|e| ort_err(&e))?;
    match config.device {
        Device::Cpu => {}
        #[cfg(feature = "cuda")]
        Device::Cuda(id) => {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| ort_err(&e))?;
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            return Err(BackboneError::Config {
                field: "device",
                message: "CUDA needs tl-backbone built with the `cuda` feature".into(),
            });
        }
    }
    if !onnx.is_file() {
        return Err(BackboneError::Io {
            path: onnx.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
        });
    }
    builder.commit_from_file(onnx).map_err(|e| ort_err(&e))
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}
