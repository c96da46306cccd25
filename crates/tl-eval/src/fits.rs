//! Remembered head fits: the outcome of fitting a head on one training part and predicting
//! one test part, stored under a key made of everything that outcome depends on, so running
//! an experiment again costs lookups instead of fits.
//!
//! The key is a BLAKE3 of: the code that fits (a build-time fingerprint of tl-eval, tl-heads,
//! tl-core and the TF-IDF sources, see `build.rs`), the features themselves (every value of
//! the training and test rows, or for TF-IDF its settings and the texts), the training labels
//! and label names, the head configuration, the nested search's settings, the seed, and
//! whether it is a few-shot fit. Anything that could change a prediction changes the key; a
//! file that cannot be read back is a miss, recomputed and rewritten. Files live in the
//! feature store's `.fits` folder: a cold feature cache is a cold fit cache, and `tl cache
//! gc` deletes the files no run has read for its number of days.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::experiment::Chosen;

/// The code fingerprint from `build.rs`.
const CODE: &str = env!("TL_FIT_CODE");

/// What one fit produced: predictions and probabilities of the test rows, fit warnings, and
/// the nested search's choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) predictions: Vec<usize>,
    /// Row-major, `predictions.len() x classes`.
    pub(crate) proba: Vec<f64>,
    pub(crate) classes: usize,
    pub(crate) warnings: Vec<String>,
    pub(crate) chosen: Option<Chosen>,
}

impl Outcome {
    pub(crate) fn new(
        predictions: Vec<usize>,
        proba: &Array2<f64>,
        warnings: Vec<String>,
        chosen: Option<Chosen>,
    ) -> Outcome {
        Outcome {
            predictions,
            proba: proba.iter().copied().collect(),
            classes: proba.ncols(),
            warnings,
            chosen,
        }
    }

    /// Predictions, probabilities as a matrix, warnings, the search's choice.
    pub(crate) fn into_parts(self) -> (Vec<usize>, Array2<f64>, Vec<String>, Option<Chosen>) {
        let proba = Array2::from_shape_vec((self.predictions.len(), self.classes), self.proba)
            .expect("checked when read");
        (self.predictions, proba, self.warnings, self.chosen)
    }
}

/// A folder of remembered fits (or none: every lookup misses, nothing is written).
#[derive(Debug, Default)]
pub(crate) struct FitCache {
    dir: Option<PathBuf>,
    hits: AtomicUsize,
    lookups: AtomicUsize,
}

/// Accumulates the key of one fit.
pub(crate) struct Key(blake3::Hasher);

impl Key {
    pub(crate) fn new() -> Key {
        let mut h = blake3::Hasher::new();
        h.update(b"tl-eval/fit/1\0");
        h.update(CODE.as_bytes());
        Key(h)
    }

    /// A length-prefixed part, so parts never run into each other.
    pub(crate) fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub(crate) fn floats(&mut self, values: &[f32]) -> &mut Self {
        // One update per row: BLAKE3 pays a fixed cost per call.
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.part(&bytes)
    }

    pub(crate) fn indices(&mut self, values: &[usize]) -> &mut Self {
        for &v in values {
            self.0.update(&(v as u64).to_le_bytes());
        }
        self.0.update(&(values.len() as u64).to_le_bytes());
        self
    }

    fn finish(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

impl FitCache {
    /// The cache inside a feature store's folder.
    pub(crate) fn in_store(root: &Path) -> FitCache {
        FitCache {
            dir: Some(root.join(".fits")),
            ..Default::default()
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(&key[..2]).join(format!("{key}.json")))
    }

    /// The remembered outcome for `key`, if one was stored and reads back whole with
    /// `test_rows` predictions over `classes` classes.
    pub(crate) fn get(&self, key: &Key, test_rows: usize, classes: usize) -> Option<Outcome> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let path = self.path(&key.finish())?;
        let bytes = std::fs::read(&path).ok()?;
        let outcome: Outcome = match serde_json::from_slice(&bytes) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable remembered fit ({e}); fitting again",
                    path.display()
                );
                return None;
            }
        };
        if outcome.predictions.len() != test_rows
            || outcome.classes != classes
            || outcome.proba.len() != test_rows * classes
            || outcome.predictions.iter().any(|&p| p >= classes)
        {
            tracing::warn!(
                "{}: remembered fit has the wrong shape; fitting again",
                path.display()
            );
            return None;
        }
        // Refresh its time: `tl cache gc` deletes the fits no run has used for a while.
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(outcome)
    }

    /// Remembers `outcome` under `key`. A failed write only costs the next run a fit.
    pub(crate) fn put(&self, key: &Key, outcome: &Outcome) {
        let Some(path) = self.path(&key.finish()) else {
            return;
        };
        let written = serde_json::to_vec(outcome)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(path.parent().expect("has a parent"))?;
                tl_core::fs::write_atomic(&path, &bytes)
            });
        if let Err(e) = written {
            tracing::warn!("{}: could not remember a fit: {e}", path.display());
        }
    }

    /// (lookups answered from the cache, lookups).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.lookups.load(Ordering::Relaxed),
        )
    }

    /// Its folder.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}
