//! Transfer learning in a few lines: embed texts or images with a pretrained backbone and
//! fit a classifier on the vectors.
//!
//! This crate is the front door of transfer-learning-rs. [`TextEmbedder`] and
//! [`ImageEmbedder`] open a built-in (or fine-tuned) model by name; on first use they fetch
//! the ONNX Runtime library and the model into the user cache, verifying every checksum, with
//! a progress bar when stderr is a terminal. Every vector they compute goes to the
//! content-addressed feature cache, so embedding the same items again costs a lookup.
//! [`Classifier`] fits a head (logistic regression by default) on the vectors and keeps the
//! label names, so predictions come back as labels; it saves to and loads from one JSON file.
//!
//! ```no_run
//! use transfer_learning::{Classifier, TextEmbedder};
//!
//! let embedder = TextEmbedder::new("all-minilm-l6-v2")?;
//! let texts = ["A delight from start to finish", "Loved every minute",
//!              "Dull and far too long", "A waste of an evening"];
//! let classifier = Classifier::fit(&embedder.embed(&texts)?, &["pos", "pos", "neg", "neg"])?;
//! classifier.save("sentiment.json")?;
//! let classifier = Classifier::load("sentiment.json")?;
//! let predicted = classifier.predict(&embedder.embed(&["What a wonderful film"])?)?;
//! println!("{predicted:?}");
//! # Ok::<(), transfer_learning::Error>(())
//! ```
//!
//! Where files go: `$TL_HOME` if set, else the platform cache folder
//! (`$XDG_CACHE_HOME/transfer-learning-rs` or `~/.cache/transfer-learning-rs`);
//! [`Options::cache`] picks another. The layers underneath (`tl-assets`, `tl-backbone`,
//! `tl-features`, `tl-heads`, `tl-eval`, `tl-finetune`) are there for everything else:
//! experiments with verdicts, model selection, domain adaptation, fine-tuning.

#![warn(missing_docs)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};
use tl_assets::manifest::Modality;
use tl_assets::{Fetcher, Registry};
use tl_backbone::{Backbone, OnError};
use tl_data::Item;
use tl_features::{CacheOptions, Inputs, Store, embed_cached, embed_uncached, manifest_for};

pub use tl_assets::Cache;
pub use tl_backbone::ExecutionConfig;
pub use tl_features::CachedFeatures;
pub use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

/// What can go wrong; each message names the model, file or row concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An unknown model name or a bad manifest.
    #[error(transparent)]
    Manifest(#[from] tl_assets::ManifestError),
    /// Fetching the runtime or a model failed.
    #[error(transparent)]
    Fetch(#[from] tl_assets::FetchError),
    /// The backbone could not be opened or run.
    #[error(transparent)]
    Backbone(#[from] tl_backbone::BackboneError),
    /// The feature cache failed.
    #[error(transparent)]
    Features(#[from] tl_features::FeatureError),
    /// Fitting, predicting, saving or loading a classifier failed.
    #[error(transparent)]
    Head(#[from] tl_heads::HeadError),
    /// The arguments do not fit together (a text model asked for images, say).
    #[error("{0}")]
    Input(String),
}

/// How an embedder is opened. The defaults suit most uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where runtime, models and features live (default: [`Cache::from_env`]).
    pub cache: Cache,
    /// Keep computed vectors in the feature cache and answer repeats from it (default: on).
    pub cache_features: bool,
    /// Progress bars for fetching and embedding (default: when stderr is a terminal).
    pub progress: bool,
    /// ONNX Runtime threads and batch size.
    pub execution: ExecutionConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache: Cache::from_env(),
            cache_features: true,
            progress: std::io::stderr().is_terminal(),
            execution: ExecutionConfig::default(),
        }
    }
}

/// Fetches the ONNX Runtime library into `cache` (verified, once) and loads it, unless
/// `ORT_DYLIB_PATH` names one. The embedders call it; call it yourself before using the
/// lower layers (`tl-eval`'s runners) with a cache other than [`Cache::from_env`].
pub fn prepare_runtime(cache: &Cache, progress: bool) -> Result<(), Error> {
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|p| p.is_empty()) {
        let registry = Registry::builtin()?;
        Fetcher::new(cache.clone())
            .progress(progress)
            .fetch(registry.get("onnxruntime")?)?;
        tl_backbone::init_from(&tl_backbone::fetched_runtime_path(cache)?)?;
    }
    Ok(())
}

/// An opened backbone and where its vectors are cached.
struct Encoder {
    backbone: Backbone,
    store: Option<Store>,
    progress: bool,
}

impl Encoder {
    fn open(model: &str, want: Modality, options: &Options) -> Result<Encoder, Error> {
        let cache = &options.cache;
        let mut registry = Registry::builtin()?;
        registry.add_local(cache)?;
        let manifest = registry.get(model)?;
        let spec = manifest.model.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{model} is a {:?} asset, not a model",
                manifest.kind
            ))
        })?;
        if spec.modality != want {
            let (is, right, wrong) = match spec.modality {
                Modality::Text => ("a text", "TextEmbedder", "ImageEmbedder"),
                Modality::Image => ("an image", "ImageEmbedder", "TextEmbedder"),
            };
            return Err(Error::Input(format!(
                "{model} is {is} model: open it with {right}, not {wrong}"
            )));
        }
        prepare_runtime(cache, options.progress)?;
        Fetcher::new(cache.clone())
            .progress(options.progress)
            .fetch(manifest)?;
        let backbone = Backbone::from_manifest(manifest, cache, &options.execution)?;
        let store = options.cache_features.then(|| Store::from_cache(cache));
        Ok(Encoder {
            backbone,
            store,
            progress: options.progress,
        })
    }

    fn embed(&self, items: &[Item]) -> Result<Array2<f32>, Error> {
        Ok(self.embed_cached(items)?.features)
    }

    fn embed_cached(&self, items: &[Item]) -> Result<CachedFeatures, Error> {
        match &self.store {
            Some(store) => {
                let options = CacheOptions {
                    progress: self.progress,
                    ..CacheOptions::default()
                };
                Ok(embed_cached(&self.backbone, store, items, &options)?)
            }
            None => Ok(embed_uncached(&self.backbone, items, OnError::Fail)?),
        }
    }

    fn item_keys(&self, items: &[Item]) -> Result<Vec<tl_features::Key>, Error> {
        Ok(Inputs::from_items(items)?.keys(self.backbone.fingerprint())?)
    }

    fn keys(&self, items: &[Item]) -> Result<Vec<String>, Error> {
        Ok(self.item_keys(items)?.iter().map(|k| k.to_hex()).collect())
    }

    fn lookup(&self, items: &[Item]) -> Result<(Array2<f32>, Vec<bool>), Error> {
        let store = self.store.as_ref().ok_or_else(|| {
            Error::Input(
                "the feature cache is off for this embedder (cache_features = false): nothing to look up"
                    .into(),
            )
        })?;
        let keys = self.item_keys(items)?;
        let mut out = Array2::from_elem((keys.len(), self.backbone.dim()), f32::NAN);
        let mut found = vec![false; keys.len()];
        store
            .backbone(manifest_for(&self.backbone))?
            .lookup(&keys, &mut out, &mut found)?;
        Ok((out, found))
    }
}

fn texts_to_items<S: AsRef<str>>(texts: &[S]) -> Vec<Item> {
    texts
        .iter()
        .map(|t| Item::Text(t.as_ref().to_string()))
        .collect()
}

fn paths_to_items<P: AsRef<Path>>(paths: &[P]) -> Vec<Item> {
    paths
        .iter()
        .map(|p| Item::ImageFile(PathBuf::from(p.as_ref())))
        .collect()
}

/// A text encoder: sentences in, one L2-normalised vector per sentence out (for the built-in
/// sentence-transformers models).
pub struct TextEmbedder(Encoder);

impl TextEmbedder {
    /// Opens the text model `model` (`all-minilm-l6-v2`, `paraphrase-minilm-l3-v2`, or a
    /// model `tl finetune` exported), fetching it on first use.
    pub fn new(model: &str) -> Result<TextEmbedder, Error> {
        TextEmbedder::with_options(model, &Options::default())
    }

    /// [`new`](Self::new) with explicit [`Options`].
    pub fn with_options(model: &str, options: &Options) -> Result<TextEmbedder, Error> {
        Encoder::open(model, Modality::Text, options).map(TextEmbedder)
    }

    /// One row per text, in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Array2<f32>, Error> {
        self.0.embed(&texts_to_items(texts))
    }

    /// [`embed`](Self::embed), with what the cache answered and what was computed.
    pub fn embed_cached<S: AsRef<str>>(&self, texts: &[S]) -> Result<CachedFeatures, Error> {
        self.0.embed_cached(&texts_to_items(texts))
    }

    /// Each text's feature-cache key (64 hex characters), as the cache's `key` column holds
    /// it: a BLAKE3 hash of the model's fingerprint and the text.
    pub fn keys<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<String>, Error> {
        self.0.keys(&texts_to_items(texts))
    }

    /// The cached vectors of `texts`, computing nothing: rows of texts not in the cache are
    /// NaN and their flag false.
    pub fn lookup<S: AsRef<str>>(&self, texts: &[S]) -> Result<(Array2<f32>, Vec<bool>), Error> {
        self.0.lookup(&texts_to_items(texts))
    }

    /// The width of the vectors.
    pub fn dim(&self) -> usize {
        self.0.backbone.dim()
    }

    /// What the vectors depend on (model files and settings): the feature cache's folder
    /// name, recorded by [`Classifier::fit_for`].
    pub fn fingerprint(&self) -> &str {
        self.0.backbone.fingerprint()
    }

    /// The backbone underneath (name, fingerprint, spec, lower-level embedding calls).
    pub fn backbone(&self) -> &Backbone {
        &self.0.backbone
    }
}

/// An image encoder: image files in, one pooled feature vector per image out.
pub struct ImageEmbedder(Encoder);

impl ImageEmbedder {
    /// Opens the image model `model` (`efficientnet-lite0`, `mobilenetv2`, `open-nsfw`, or a
    /// model `tl finetune` exported), fetching it on first use.
    pub fn new(model: &str) -> Result<ImageEmbedder, Error> {
        ImageEmbedder::with_options(model, &Options::default())
    }

    /// [`new`](Self::new) with explicit [`Options`].
    pub fn with_options(model: &str, options: &Options) -> Result<ImageEmbedder, Error> {
        Encoder::open(model, Modality::Image, options).map(ImageEmbedder)
    }

    /// One row per image file (JPEG, PNG, WebP, GIF, BMP), in order. A file that cannot be
    /// read or decoded is an error naming it.
    pub fn embed_paths<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Array2<f32>, Error> {
        self.0.embed(&paths_to_items(paths))
    }

    /// [`embed_paths`](Self::embed_paths), with what the cache answered and what was computed.
    pub fn embed_cached<P: AsRef<Path>>(&self, paths: &[P]) -> Result<CachedFeatures, Error> {
        self.0.embed_cached(&paths_to_items(paths))
    }

    /// Each image's feature-cache key: a BLAKE3 hash of the model's fingerprint and the
    /// file's bytes (so a renamed file keeps its key).
    pub fn keys<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Vec<String>, Error> {
        self.0.keys(&paths_to_items(paths))
    }

    /// The cached vectors of the images, computing nothing (NaN rows, false flags for misses).
    pub fn lookup<P: AsRef<Path>>(&self, paths: &[P]) -> Result<(Array2<f32>, Vec<bool>), Error> {
        self.0.lookup(&paths_to_items(paths))
    }

    /// The width of the vectors.
    pub fn dim(&self) -> usize {
        self.0.backbone.dim()
    }

    /// What the vectors depend on: the feature cache's folder name, recorded by
    /// [`Classifier::fit_for`].
    pub fn fingerprint(&self) -> &str {
        self.0.backbone.fingerprint()
    }

    /// The backbone underneath.
    pub fn backbone(&self) -> &Backbone {
        &self.0.backbone
    }
}

/// A classifier on feature vectors that speaks in labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    inner: tl_heads::Classifier,
}

impl Classifier {
    /// Fits logistic regression (C = 1, L-BFGS, as scikit-learn's default) on `features`
    /// (one row per example) and their `labels`. Label names are sorted, as scikit-learn
    /// orders `classes_`.
    pub fn fit<'a, L: AsRef<str>>(
        features: impl Into<ArrayView2<'a, f32>>,
        labels: &[L],
    ) -> Result<Classifier, Error> {
        let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
        Classifier::fit_with(&head, features, labels)
    }

    /// [`fit`](Self::fit) with another head or preprocessing (linear SVM, kNN, nearest
    /// centroid, ridge; standardisation, L2, PCA; class weights).
    pub fn fit_with<'a, L: AsRef<str>>(
        head: &HeadConfig,
        features: impl Into<ArrayView2<'a, f32>>,
        labels: &[L],
    ) -> Result<Classifier, Error> {
        Classifier::fit_for(None, head, features, labels)
    }

    /// [`fit_with`](Self::fit_with) on the vectors of a known model: the classifier records
    /// its fingerprint ([`TextEmbedder::fingerprint`]), so `tl predict` finds the model by
    /// itself.
    pub fn fit_for<'a, L: AsRef<str>>(
        fingerprint: Option<&str>,
        head: &HeadConfig,
        features: impl Into<ArrayView2<'a, f32>>,
        labels: &[L],
    ) -> Result<Classifier, Error> {
        let x = features.into();
        if x.nrows() != labels.len() {
            return Err(Error::Input(format!(
                "{} feature rows but {} labels: one label per row is needed",
                x.nrows(),
                labels.len()
            )));
        }
        let mut names: Vec<String> = labels.iter().map(|l| l.as_ref().to_string()).collect();
        names.sort();
        names.dedup();
        let y: Vec<usize> = labels
            .iter()
            .map(|l| {
                names
                    .binary_search_by(|n| n.as_str().cmp(l.as_ref()))
                    .unwrap_or(0)
            })
            .collect();
        let inner = head.fit(x, &y, &names, fingerprint)?;
        Ok(Classifier { inner })
    }

    /// The predicted label of each row.
    pub fn predict<'a>(
        &self,
        features: impl Into<ArrayView2<'a, f32>>,
    ) -> Result<Vec<String>, Error> {
        let pred = self.inner.predict(features.into())?;
        Ok(pred
            .into_iter()
            .map(|c| self.inner.label_names[c].clone())
            .collect())
    }

    /// Class probabilities, one row per input row and one column per [`labels`](Self::labels).
    pub fn predict_proba<'a>(
        &self,
        features: impl Into<ArrayView2<'a, f32>>,
    ) -> Result<Array2<f64>, Error> {
        Ok(self.inner.predict_proba(features.into())?)
    }

    /// The label names, in column order of [`predict_proba`](Self::predict_proba).
    pub fn labels(&self) -> &[String] {
        &self.inner.label_names
    }

    /// Saves to one JSON file, crash-safely.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        Ok(self.inner.save(path.as_ref())?)
    }

    /// Loads a classifier saved by [`save`](Self::save) (or by `tl fit`).
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier, Error> {
        Ok(Classifier {
            inner: tl_heads::Classifier::load(path.as_ref())?,
        })
    }

    /// The fitted head underneath (preprocessing, weights, metadata).
    pub fn head(&self) -> &tl_heads::Classifier {
        &self.inner
    }
}
