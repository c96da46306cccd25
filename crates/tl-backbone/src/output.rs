//! What an embedding call returns: vectors, extra outputs, failed items, counters, timings.

use ndarray::Array2;
use serde::Serialize;
use std::time::Duration;

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
