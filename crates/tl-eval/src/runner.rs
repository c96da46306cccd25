//! What both experiment runners ([`run`](crate::run) for evaluation files,
//! [`run_adaptation`](crate::run_adaptation) for files with `pairs`) share, in the open: the
//! observer that receives their progress lines, the parsing and range checks of experiment
//! files, and backbone features through the feature cache. A third runner (fine-tuned systems,
//! say) builds on these instead of copying them.

use std::path::Path;
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tl_assets::{Cache, Registry};
use tl_backbone::{Backbone, ExecutionConfig, OnError};
use tl_core::Interval;
use tl_data::{Dataset, Item};
use tl_features::{CacheOptions, Store, embed_cached};
use tl_heads::HeadSpec;

use crate::EvalError;

/// The word a paired difference earns: `helps` when its whole interval is above 0, `hurts`
/// when below, else `no clear difference`. Every verdict of both runners rests on this rule.
pub fn direction(d: &Interval) -> &'static str {
    if d.low > 0.0 {
        "helps"
    } else if d.high < 0.0 {
        "hurts"
    } else {
        "no clear difference"
    }
}

/// How each head of an experiment is named in the console, reports, CSV and figure files:
/// its kind when no other head of the file has that kind, else [`HeadSpec::label`] with its
/// hyperparameters (`logistic C=1`, `logistic C=10`), and `#2`, `#3`... on heads whose labels
/// are still equal, so two results never share a name.
pub fn head_labels(heads: &[HeadSpec]) -> Vec<String> {
    let base: Vec<String> = heads
        .iter()
        .map(|h| {
            if heads.iter().filter(|o| o.kind() == h.kind()).count() > 1 {
                h.label()
            } else {
                h.kind().to_string()
            }
        })
        .collect();
    base.iter()
        .enumerate()
        .map(
            |(i, label)| match base[..i].iter().filter(|l| *l == label).count() {
                0 => label.clone(),
                before => format!("{label} #{}", before + 1),
            },
        )
        .collect()
}

/// Default bootstrap resamples of an experiment.
pub fn default_bootstrap() -> usize {
    1000
}

/// Most bootstrap resamples an experiment may ask for: 10^5 already pins a 95% interval
/// to a small fraction of a point, and each resample costs a pass over the test rows.
pub const MAX_BOOTSTRAP: usize = 100_000;
/// Most few-shot draws per k.
pub const MAX_REPEATS: usize = 1_000;
/// Largest inference batch.
pub const MAX_BATCH: usize = 4_096;

/// Range checks of the settings both kinds of experiment share, before any work runs
/// (a huge value used to abort after the results were printed, with no report).
pub fn check_limits(bootstrap: usize, batch_size: usize) -> Result<(), String> {
    if bootstrap > MAX_BOOTSTRAP {
        return Err(format!(
            "bootstrap: at most {MAX_BOOTSTRAP} resamples, got {bootstrap}"
        ));
    }
    if batch_size == 0 || batch_size > MAX_BATCH {
        return Err(format!(
            "batch_size: must be in 1..={MAX_BATCH}, got {batch_size}"
        ));
    }
    Ok(())
}
/// Default inference batch of an experiment.
pub fn default_batch() -> usize {
    32
}

/// Parses an experiment file's text and validates it with `check`; errors name the file and,
/// from the TOML parser, the line and key. Shared by both kinds of experiment.
pub fn parse_experiment<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, EvalError> {
    let err = |message: String| EvalError::Experiment {
        path: origin.to_path_buf(),
        message,
    };
    let exp: T = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    check(&exp).map_err(err)?;
    Ok(exp)
}

/// An experiment name becomes a folder name: letters, digits, '-', '_' or '.'.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "name {name:?}: use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// What a report says about a feature system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// Display name (`tfidf`, `raw-pixels` or the model name).
    pub name: String,
    /// `baseline`, `backbone` or `finetuned`.
    pub kind: String,
    /// Backbone fingerprint.
    pub fingerprint: Option<String>,
    /// Feature dimension (TF-IDF: on the full training set).
    pub dim: usize,
    /// Rows answered from the feature cache.
    pub cache_hits: usize,
    /// Rows computed by the backbone in this run.
    pub computed: usize,
    /// Seconds spent getting the features (fine-tuned systems: training and predicting).
    pub seconds: f64,
    /// Peak resident memory of the process while the features were computed (fine-tuned
    /// systems: while training), in MB; Linux only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
}

/// Progress and cache messages a run prints.
pub trait Observer: Sync {
    /// One line of progress for a person.
    fn note(&self, line: &str);
}

impl<F: Fn(&str) + Sync> Observer for F {
    fn note(&self, line: &str) {
        self(line)
    }
}

/// A backbone's vectors of some dataset rows, as [`backbone_features`] returns them.
#[derive(Debug, Clone)]
pub struct BackboneFeatures {
    /// What the report says about the system (fingerprint, cache hits, time).
    pub info: SystemInfo,
    /// One row per dataset row asked for, in that order.
    pub features: Array2<f32>,
    /// The backbone's extra outputs of the same rows (name, matrix), e.g. ImageNet logits for
    /// LEEP; empty when it has none of fixed width.
    pub extra: Vec<(String, Array2<f32>)>,
}

/// Features of `used` rows of `ds` from backbone `name`, through the feature cache (computing
/// and storing only what is missing), with a note saying how many came from the cache.
#[allow(clippy::too_many_arguments)]
pub fn backbone_features(
    name: &str,
    ds: &Dataset,
    used: &[usize],
    registry: &Registry,
    cache: &Cache,
    batch_size: usize,
    progress: bool,
    obs: &dyn Observer,
) -> Result<BackboneFeatures, EvalError> {
    let m = registry
        .get(name)
        .map_err(|e| EvalError::Config(e.to_string()))?;
    tl_assets::ensure_fetched(m, cache)?;
    let config = ExecutionConfig {
        batch_size,
        ..Default::default()
    };
    let t = Instant::now();
    crate::finetuned::reset_peak_rss();
    let backbone = Backbone::from_manifest(m, cache, &config)?;
    let items: Vec<Item> = used.iter().map(|&i| ds.items[i].clone()).collect();
    // The session computes a backbone's extra outputs (source-task logits) in the same pass:
    // storing them costs a shard, and `tl select` then finds LEEP's logits cached.
    let extra_outputs = !backbone.extra_outputs().is_empty()
        && backbone.extra_outputs().iter().all(|(_, width)| *width > 0);
    let out = embed_cached(
        &backbone,
        &Store::from_cache(cache),
        &items,
        &CacheOptions {
            progress,
            on_error: OnError::Fail,
            extra_outputs,
            ..Default::default()
        },
    )?;
    let seconds = t.elapsed().as_secs_f64();
    obs.note(&format!(
        "features  {name} on {}: {} cached, {} computed ({seconds:.1}s{})",
        ds.name,
        out.hits,
        out.computed,
        if out.computed == 0 {
            ", all from the feature cache"
        } else {
            ""
        }
    ));
    let info = SystemInfo {
        name: name.to_string(),
        kind: "backbone".into(),
        fingerprint: Some(backbone.fingerprint().to_string()),
        dim: backbone.dim(),
        cache_hits: out.hits,
        computed: out.computed,
        seconds,
        peak_rss_mb: crate::finetuned::peak_rss_mb(),
    };
    Ok(BackboneFeatures {
        info,
        features: out.features,
        extra: out.extra,
    })
}

#[cfg(test)]
mod tests {
    use tl_heads::{KnnParams, LogisticParams};

    use super::*;

    #[test]
    fn heads_of_one_kind_are_told_apart_and_no_two_share_a_name() {
        let logistic = |c: f64| {
            HeadSpec::Logistic(LogisticParams {
                c,
                ..LogisticParams::default()
            })
        };
        let knn = HeadSpec::Knn(KnnParams::default());
        assert_eq!(
            head_labels(&[logistic(1.0), knn.clone()]),
            ["logistic", "knn"]
        );
        assert_eq!(
            head_labels(&[logistic(1.0), knn.clone(), logistic(10.0)]),
            ["logistic C=1", "knn", "logistic C=10"]
        );
        // Equal up to a setting the label does not show (the iteration limit): numbered.
        let long = HeadSpec::Logistic(LogisticParams {
            max_iter: 5000,
            ..LogisticParams::default()
        });
        assert_eq!(
            head_labels(&[logistic(1.0), long.clone(), long]),
            ["logistic C=1", "logistic C=1 #2", "logistic C=1 #3"]
        );
    }
}
