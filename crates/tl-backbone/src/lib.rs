//! ONNX backbone execution: turns raw inputs into feature vectors with pretrained
//! ONNX models described by a [`tl_assets::Manifest`].
//!
//! The ONNX Runtime library is loaded at run time (`ort`'s `load-dynamic`): from
//! `$ORT_DYLIB_PATH`, else from the cache where `cargo xtask fetch onnxruntime` puts it.
//! One environment serves the whole process.
//!
//! ```no_run
//! let env = tl_backbone::environment()?;
//! # let _ = env;
//! # Ok::<(), tl_backbone::BackboneError>(())
//! ```

mod runtime;

use std::path::PathBuf;

pub use runtime::{environment, init_from, runtime_library_path};

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
    #[error("loading ONNX Runtime from {path}: {message} (expected libonnxruntime 1.31.x for this platform)")]
    RuntimeLoad {
        /// The library path.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] tl_assets::ManifestError),
}
