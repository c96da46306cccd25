//! Fine-tuning pretrained backbones on a CPU training engine with hand-written
//! backward passes: BERT-family sentence encoders (all-MiniLM-L6-v2 and friends) and
//! convolutional image networks (MobileNetV2, EfficientNet-Lite0).
//!
//! The engine keeps every weight in one flat `f32` buffer and computes gradients with a
//! backward pass written for each operation, checked against finite differences: for
//! text, linear, LayerNorm, GELU, softmax attention over sequences packed end to end (no
//! padding), dropout, cross-entropy; for images, dense and depthwise convolution,
//! BatchNorm (frozen or batch statistics), ReLU6, residuals and global pooling over
//! channel-major batches. One training loop serves both (AdamW fused over the buffer,
//! warm-up and decay, clipping, early stopping, atomic checkpoints, resume). Tuned
//! models are exported as fp32 ONNX model assets. Nothing here needs Python or libtorch.
//!
//! ```
//! use tl_finetune::{Batch, BertClassifier, BertConfig, FinetuneParams, RunOptions, finetune};
//!
//! // A tiny encoder (vocabulary 20, width 16, 1 layer, 2 heads) learns which of two
//! // tokens a sequence starts with.
//! let model_config = BertConfig::tiny(20, 16, 1, 2);
//! let mut model = BertClassifier::random(model_config, 2, 0);
//! let seqs: Vec<Vec<u32>> = (0..64).map(|i| vec![1 + (i % 2) as u32, 5, 6, 7]).collect();
//! let labels: Vec<usize> = (0..64).map(|i| i % 2).collect();
//! let params = FinetuneParams { learning_rate: 1e-2, epochs: 5, batch_size: 8, threads: 1, ..Default::default() };
//! let report = finetune(&mut model, &seqs, &labels, &params, &RunOptions::default())?;
//! assert_eq!(report.epochs.len(), 5);
//! let predicted = tl_finetune::predict(&model, &seqs, 16, tl_finetune::Threads(1));
//! assert_eq!(predicted, labels);
//! # Ok::<(), tl_finetune::FinetuneError>(())
//! ```
//!
//! A real model, from its manifest to an exported model asset that tl-backbone, the
//! feature cache and the `tl` command open by name:
//!
//! ```no_run
//! use tl_assets::{Cache, Registry};
//! use tl_finetune::{FinetuneParams, RunOptions, Strategy, export, finetune, load_pretrained, tokenize};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let (texts, labels) = (vec!["great".to_string(), "awful".to_string()], vec![1, 0]);
//! let cache = Cache::from_env();
//! let registry = Registry::builtin()?;
//! let pre = load_pretrained(registry.get("all-minilm-l6-v2")?, &cache, 2)?; // fetches fp32 weights
//! let tokenizer = tokenizers::Tokenizer::from_file(&pre.tokenizer)?;
//! let params = FinetuneParams { strategy: Strategy::Top(2), ..Default::default() };
//! let seqs = tokenize(&tokenizer, &texts, params.max_length)?;
//! let mut model = pre.model.clone();
//! let report = finetune(&mut model, &seqs, &labels, &params, &RunOptions::default())?;
//! println!("{:.1} sentences/s", report.epochs[0].sentences_per_second);
//! let exported = export(&model, &pre, &cache, "my-minilm", "tuned on my data", "my program")?;
//! println!("manifest {}", exported.manifest_path.display());
//! # Ok(())
//! # }
//! ```
//!
//! An image network (here a tiny random one; [`load_pretrained_image`] gives
//! MobileNetV2 or EfficientNet-Lite0) learns dark vs bright images of any size:
//!
//! ```
//! use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};
//! use tl_backbone::{ImageInput, RawImage};
//! use tl_finetune::{Augment, ConvNet, ImageParams, RunOptions, Threads, conv::Padding};
//!
//! let spec = ImageSpec { size: 16, resize: Resize::Stretch, pixel_max: 1.0, mean: [0.5; 3],
//!     std: [0.25; 3], layout: Layout::Nchw, channels: ChannelOrder::Rgb };
//! let images: Vec<ImageInput> = (0..32)
//!     .map(|i| ImageInput::Pixels(RawImage { width: 12 + i % 5, height: 12, channels: 1,
//!         data: vec![if i % 2 == 0 { 30 } else { 220 }; (12 * (12 + i % 5)) as usize] }))
//!     .collect();
//! let labels: Vec<usize> = (0..32).map(|i| i % 2).collect();
//! let mut net = ConvNet::tiny(&[8, 8], 16, 2, Padding::SameUpper, 0);
//! let params = ImageParams { learning_rate: 1e-2, epochs: 4, batch_size: 8, threads: 1,
//!     augment: Augment::none(), ..Default::default() };
//! tl_finetune::finetune_images(&mut net, &images, &labels, &spec, &params,
//!     &RunOptions::default(), &mut |_, _| {})?;
//! let predicted = tl_finetune::predict_images(&net, &images, &spec, 16, Threads(1))?;
//! assert_eq!(predicted, labels);
//! # Ok::<(), tl_finetune::FinetuneError>(())
//! ```

#![warn(missing_docs)]

pub mod bert;
pub mod cnn;
pub mod conv;
pub mod domain;
mod fit;
pub mod frozen;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod optim;
mod progress;
pub mod search;
pub mod torch;
pub mod train;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};

pub use bert::{Batch, BertClassifier, BertConfig, DropoutSpec, Objective, StepOutput};
pub use cnn::{BnMode, ConvNet};
pub use domain::{DomainMethod, adapt_images, adapt_text};
pub use model::{
    Exported, Pretrained, check_trainable, export, export_image, head_classifier,
    image_head_classifier, load_pretrained,
};
pub use ops::Threads;
pub use search::{SearchEvent, SearchReport, SearchSpace, search_images, search_text};
pub use train::{
    EpochLog, FinetuneParams, FinetuneReport, RunOptions, Strategy, class_scores, epoch_batches,
    finetune, finetune_with, predict, sentence_vectors, tokenize,
};
pub use vision::{
    Augment, ImageParams, PretrainedImage, adabn, finetune_images, image_features, image_logits,
    load_pretrained_image, predict_images,
};

/// Everything that can go wrong while fine-tuning.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A weights or checkpoint file is not what was expected.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        message: String,
    },
    /// A hyperparameter is out of range.
    #[error("invalid fine-tuning setting: {0}")]
    Params(String),
    /// The training data cannot train a classifier.
    #[error("training data: {0}")]
    Data(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The loss or a gradient became NaN or infinite.
    #[error("the loss became non-finite at step {step} (epoch {epoch}); lower the learning rate{}", kept.as_ref().map(|p| format!("; the last good weights are in {}", p.display())).unwrap_or_default())]
    NonFinite {
        /// 1-based optimizer step.
        step: u64,
        /// 1-based epoch.
        epoch: usize,
        /// The checkpoint of the last completed epoch, if one was written.
        kept: Option<PathBuf>,
    },
    /// The cache of frozen-layer outputs failed.
    #[error("frozen-layer cache: {0}")]
    Cache(String),
    /// The model cannot be fine-tuned as declared.
    #[error("model {model}: {message}")]
    Model {
        /// The model's name.
        model: String,
        /// What is missing.
        message: String,
    },
}

impl FinetuneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> FinetuneError {
        FinetuneError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` crash-safely ([`tl_core::fs::write_atomic`]), so a killed
/// process never leaves a half-written checkpoint or model there.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FinetuneError> {
    tl_core::fs::write_atomic(path, bytes).map_err(|e| FinetuneError::io(path, e))
}
