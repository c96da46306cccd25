//! The embedding cache: extracted features stored on disk, content-addressed, resumable.
//!
//! Extraction is the expensive step of feature-extraction transfer learning; everything after
//! it (heads, evaluation, model selection, adaptation) is cheap and repeated. [`embed_cached`]
//! keys every item by BLAKE3 over the backbone fingerprint and the item's content (text bytes,
//! image file bytes, pixel arrays), answers what it can from the [`Store`], computes only the
//! misses and writes them as it goes. Every feature system is an [`Embedder`]: ONNX backbones
//! (pretrained, or fine-tuned and exported), the [`Tfidf`] and [`RawPixels`] baselines; the
//! cheap or per-split ones are computed through the same call without being stored.
//!
//! Layout under `$TL_HOME/features/<fingerprint>/`: `manifest.json` (model, settings, dim, dtype,
//! version), `shards/shard-<blake3 of the file>.parquet` (columns `key`: 64 hex chars,
//! `embedding`: list of float32, readable by polars, pandas, DuckDB, Spark), `last-used`, and
//! `quarantine/` for damaged shards. Invariants:
//! - shards are immutable and written atomically (temp file, fsync, rename), so a killed run
//!   loses at most the chunk in flight and concurrent writers never see partial files;
//! - a shard whose bytes do not hash to its name is never read: it is quarantined and its items
//!   recomputed; one of the wrong dimension or type is an error;
//! - a lookup holds one shard at a time, so memory is bounded by the shard and the output, not
//!   by everything cached for that backbone.
//!
//! ```
//! use ndarray::array;
//! use tl_features::{Store, StoreManifest, STORE_VERSION, text_key};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(dir.path());
//! let manifest = StoreManifest {
//!     version: STORE_VERSION,
//!     fingerprint: "0123abcd".into(),
//!     model: "demo".into(),
//!     settings: serde_json::Value::Null,
//!     dim: 2,
//!     dtype: "float32".into(),
//! };
//! let b = store.backbone(manifest)?;
//! let keys = [text_key("0123abcd", "hello"), text_key("0123abcd", "world")];
//! b.append(&keys, array![[1.0f32, 2.0], [3.0, 4.0]].view())?;
//!
//! let mut out = ndarray::Array2::zeros((2, 2));
//! let mut found = [false; 2];
//! b.lookup(&[keys[1], text_key("0123abcd", "new")], &mut out, &mut found)?;
//! assert_eq!(found, [true, false]);
//! assert_eq!(out.row(0).to_vec(), [3.0, 4.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod embed;
mod embedder;
mod export;
mod store;
pub mod tfidf;

use std::path::PathBuf;

pub use embed::{
    CacheOptions, CachedFeatures, embed_cached, embed_uncached, encoded_key, item_key,
    manifest_for, manifest_for_output, output_fingerprint, pixels_key, text_key,
};
pub use embedder::{Embedder, Inputs, RawPixels, image_input};
pub use export::export_features;
pub use store::{
    BackboneStore, BackboneSummary, COMPACT_ROWS, KEY_COLUMN, LookupStats, STALE_TEMP,
    STORE_VERSION, Store, StoreManifest, VECTOR_COLUMN, is_read_only,
};
pub use tfidf::{Tfidf, TfidfParams};

/// A cache key: BLAKE3 of (fingerprint, item kind, item content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Key> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Key(out))
    }
}

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A store manifest is unreadable or disagrees with the backbone.
    #[error("{path}: feature store manifest: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A shard does not parse (it is quarantined by lookups).
    #[error("{path}: damaged feature shard: {message}")]
    Corrupt {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard parses but holds the wrong dimension or element type.
    #[error("{path}: feature shard does not match its store: {message}")]
    Schema {
        /// The shard.
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// Writing an export failed.
    #[error("{path}: export failed: {message}")]
    Export {
        /// The output file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Invalid options or item mix.
    #[error("{0}")]
    Options(String),
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] tl_backbone::BackboneError),
}
