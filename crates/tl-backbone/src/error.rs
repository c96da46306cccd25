//! The crate's one error type.

use std::path::PathBuf;
use tl_assets::manifest::Modality;

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
