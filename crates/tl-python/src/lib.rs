//! Python bindings of transfer-learning-rs: the native module of the `transfer_learning`
//! package (`transfer_learning._native`).
//!
//! `cargo xtask wheel` builds it with maturin into one abi3 wheel for every CPython from 3.9.
//! Each class and function wraps the Rust facade (`transfer-learning`) or a runner of
//! `tl-eval`, and keeps their messages: every failure raises
//! `transfer_learning.TransferLearningError` with the text the `tl` command prints. Vectors
//! come back as NumPy arrays that take over the Rust buffer (no copy), and float32 matrices
//! going in are read in place. Long calls release the GIL, so Python threads (and Ray's
//! actor threads) run alongside.
//!
//! ```text
//! import transfer_learning as tl
//!
//! emb = tl.TextEmbedder("all-minilm-l6-v2")
//! clf = tl.Classifier.fit(emb.embed(["great", "awful"]), ["pos", "neg"])
//! print(clf.predict(emb.embed(["lovely"])))
//! ```
//!
//! The Python-side parts (`transfer_learning.ray`, the type stubs) live in `python/`, the
//! tests in `pytests/`.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyAny;
use tl_assets::{Cache, Registry};
use tl_features::Store;
use transfer_learning::{
    CachedFeatures, ExecutionConfig, HeadConfig, HeadSpec, ImageEmbedder as RsImageEmbedder,
    Options, TextEmbedder as RsTextEmbedder,
};

create_exception!(
    _native,
    TransferLearningError,
    PyException,
    "Every failure of transfer-learning-rs; the message names the model, file, row or field concerned."
);

/// The error and its causes on one line, as the `tl` command prints them.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn err<E: std::error::Error + 'static>(e: E) -> PyErr {
    TransferLearningError::new_err(message(&e))
}

fn bad(text: impl Into<String>) -> PyErr {
    TransferLearningError::new_err(text.into())
}

fn cache_at(cache_dir: Option<PathBuf>) -> Cache {
    cache_dir.map_or_else(Cache::from_env, Cache::at)
}

fn options(
    cache_dir: Option<PathBuf>,
    cache_features: bool,
    progress: bool,
    threads: Option<usize>,
    batch_size: usize,
) -> PyResult<Options> {
    if let Some(t) = threads.filter(|t| !(1..=256).contains(t)) {
        return Err(bad(format!("threads must be in 1..=256, got {t}")));
    }
    if !(1..=4096).contains(&batch_size) {
        return Err(bad(format!(
            "batch_size must be in 1..=4096, got {batch_size}"
        )));
    }
    Ok(Options {
        cache: cache_at(cache_dir),
        cache_features,
        progress,
        execution: ExecutionConfig {
            intra_threads: threads,
            batch_size,
            ..ExecutionConfig::default()
        },
    })
}

/// A NumPy float32 matrix, read in place when it is one already (C order), else converted
/// once; anything that is not two-dimensional is refused with its shape.
fn matrix<'py>(x: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let np = x.py().import("numpy")?;
    let array = np.call_method1("ascontiguousarray", (x, "float32"))?;
    let ndim: usize = array.getattr("ndim")?.extract()?;
    if ndim != 2 {
        let shape: Vec<usize> = array.getattr("shape")?.extract()?;
        return Err(bad(format!(
            "features must be a 2-d array (one row per example), got shape {shape:?}"
        )));
    }
    array.extract()
}

fn stats<'py>(py: Python<'py>, out: &CachedFeatures) -> PyResult<Bound<'py, PyAny>> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("hits", out.hits)?;
    d.set_item("computed", out.computed)?;
    d.set_item("shards_scanned", out.lookup.shards_scanned)?;
    d.set_item("lookup_seconds", out.lookup_time.as_secs_f64())?;
    d.set_item("compute_seconds", out.compute_time.as_secs_f64())?;
    d.set_item("seconds", out.elapsed.as_secs_f64())?;
    Ok(d.into_any())
}

type Lookup<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<bool>>);

fn lookup_out(py: Python<'_>, (x, found): (Array2<f32>, Vec<bool>)) -> Lookup<'_> {
    (x.into_pyarray(py), found.into_pyarray(py))
}

/// JSON text as Python objects (dicts, lists, numbers), by the standard library's parser.
fn loads(py: Python<'_>, text: String) -> PyResult<Bound<'_, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

fn json<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    loads(py, serde_json::to_string(value).map_err(err)?)
}

/// One Python embedder class over a facade embedder: `$item` is what a row is made from
/// (a text, an image path), `$embed` the facade's embedding call.
macro_rules! embedder_class {
    ($(#[$doc:meta])* $name:ident, $rs:ty, $items:ident: $item:ty, $embed:ident) => {
        $(#[$doc])*
        #[pyclass(module = "transfer_learning", frozen)]
        struct $name {
            inner: $rs,
        }

        #[pymethods]
        impl $name {
            #[new]
            #[pyo3(signature = (model, *, cache_dir=None, cache_features=true, progress=false, threads=None, batch_size=32))]
            fn new(
                py: Python<'_>,
                model: &str,
                cache_dir: Option<PathBuf>,
                cache_features: bool,
                progress: bool,
                threads: Option<usize>,
                batch_size: usize,
            ) -> PyResult<Self> {
                let o = options(cache_dir, cache_features, progress, threads, batch_size)?;
                let inner = py
                    .detach(|| <$rs>::with_options(model, &o))
                    .map_err(err)?;
                Ok($name { inner })
            }

            /// One row per item, in order; an item that cannot be embedded (an unreadable
            /// image file) is an error naming it.
            fn embed<'py>(
                &self,
                py: Python<'py>,
                $items: Vec<$item>,
            ) -> PyResult<Bound<'py, PyArray2<f32>>> {
                let x = py.detach(|| self.inner.$embed(&$items)).map_err(err)?;
                Ok(x.into_pyarray(py))
            }

            /// `embed`, with what the cache answered: `(vectors, {"hits", "computed", ...})`.
            fn embed_cached<'py>(
                &self,
                py: Python<'py>,
                $items: Vec<$item>,
            ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyAny>)> {
                let out = py.detach(|| self.inner.embed_cached(&$items)).map_err(err)?;
                let s = stats(py, &out)?;
                Ok((out.features.into_pyarray(py), s))
            }

            /// Each item's feature-cache key (64 hex characters, the shards' `key` column).
            fn keys(&self, py: Python<'_>, $items: Vec<$item>) -> PyResult<Vec<String>> {
                py.detach(|| self.inner.keys(&$items)).map_err(err)
            }

            /// The cached vectors of the items, computing nothing: `(vectors, found)`, NaN
            /// rows where `found` is false.
            fn lookup<'py>(&self, py: Python<'py>, $items: Vec<$item>) -> PyResult<Lookup<'py>> {
                let out = py.detach(|| self.inner.lookup(&$items)).map_err(err)?;
                Ok(lookup_out(py, out))
            }

            /// The model's name.
            #[getter]
            fn name(&self) -> String {
                self.inner.backbone().name().to_string()
            }

            /// What a vector depends on (model bytes and settings); names the cache folder.
            #[getter]
            fn fingerprint(&self) -> String {
                self.inner.fingerprint().to_string()
            }

            /// The width of the vectors.
            #[getter]
            fn dim(&self) -> usize {
                self.inner.dim()
            }

            fn __repr__(&self) -> String {
                format!("{}({:?}, dim={})", stringify!($name), self.name(), self.dim())
            }
        }
    };
}

embedder_class!(
    /// A text encoder: a list of strings in, a float32 matrix out (one L2-normalised row per
    /// text for the built-in sentence-transformers models). Vectors go through the feature
    /// cache, so embedding the same texts again is a lookup.
    TextEmbedder,
    RsTextEmbedder,
    texts: String,
    embed
);

embedder_class!(
    /// An image encoder: a list of image file paths in (JPEG, PNG, WebP, GIF, BMP), one
    /// pooled float32 vector per image out, through the feature cache (keyed by the files'
    /// bytes).
    ImageEmbedder,
    RsImageEmbedder,
    paths: PathBuf,
    embed_paths
);

/// A classifier on feature vectors that speaks in labels: logistic regression by default, or
/// `linear-svm`, `knn`, `centroid`, `ridge`. Saved as one JSON file that `tl predict` reads.
#[pyclass(module = "transfer_learning", frozen)]
struct Classifier {
    inner: transfer_learning::Classifier,
}

#[pymethods]
impl Classifier {
    /// Fits a head on `features` (one row per example) and their `labels`. `param` is the
    /// head's main hyperparameter: C (logistic, linear-svm), k (knn), alpha (ridge).
    /// Pass the `embedder` that made the features to record its model in the classifier, so
    /// that `tl predict` finds the model by itself.
    #[staticmethod]
    #[pyo3(signature = (features, labels, *, head="logistic", param=None, seed=0, embedder=None))]
    fn fit(
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: Vec<String>,
        head: &str,
        param: Option<f64>,
        seed: u64,
        embedder: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fingerprint = match embedder {
            None => None,
            Some(e) => Some(if let Ok(t) = e.cast::<TextEmbedder>() {
                t.get().inner.fingerprint().to_string()
            } else if let Ok(i) = e.cast::<ImageEmbedder>() {
                i.get().inner.fingerprint().to_string()
            } else {
                return Err(bad(format!(
                    "embedder must be a TextEmbedder or an ImageEmbedder, got {}",
                    e.get_type().name()?
                )));
            }),
        };
        let x = matrix(features)?;
        let mut spec = HeadSpec::from_kind(head).map_err(err)?;
        if let Some(v) = param {
            if spec.main_param().is_none() {
                return Err(bad(format!("head `{head}` has no main hyperparameter")));
            }
            spec = spec.with_main_param(v);
        }
        let mut config = HeadConfig::new(spec);
        config.seed = seed;
        config.check().map_err(err)?;
        let x = x.as_array();
        let inner = py
            .detach(|| {
                transfer_learning::Classifier::fit_for(fingerprint.as_deref(), &config, x, &labels)
            })
            .map_err(err)?;
        Ok(Classifier { inner })
    }

    /// The predicted label of each row.
    fn predict(&self, py: Python<'_>, features: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let x = matrix(features)?;
        let x = x.as_array();
        py.detach(|| self.inner.predict(x)).map_err(err)
    }

    /// Class probabilities: one row per input row, one column per label of `labels`.
    fn predict_proba<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let x = matrix(features)?;
        let x = x.as_array();
        let p = py.detach(|| self.inner.predict_proba(x)).map_err(err)?;
        Ok(p.into_pyarray(py))
    }

    /// The label names, in column order of `predict_proba`.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.inner.labels().to_vec()
    }

    /// The head and its hyperparameters (`logistic C=1`).
    #[getter]
    fn head(&self) -> String {
        self.inner.head().config.head.label()
    }

    /// Saves to one JSON file, crash-safely.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.inner.save(path).map_err(err)
    }

    /// Loads a classifier saved by `save` (or by `tl fit`).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Ok(Classifier {
            inner: transfer_learning::Classifier::load(path).map_err(err)?,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Classifier({}, labels={:?})",
            self.head(),
            self.inner.labels()
        )
    }
}

/// The feature cache under a cache folder (`$TL_HOME` by default): what it holds, and
/// compaction of small shards.
#[pyclass(module = "transfer_learning", frozen)]
struct FeatureCache {
    store: Store,
}

#[pymethods]
impl FeatureCache {
    #[new]
    #[pyo3(signature = (cache_dir=None))]
    fn new(cache_dir: Option<PathBuf>) -> Self {
        FeatureCache {
            store: Store::from_cache(&cache_at(cache_dir)),
        }
    }

    /// The features folder.
    #[getter]
    fn root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    /// One dict per model in the cache: model, fingerprint, dim, rows, shards, bytes, dir.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let all = py.detach(|| self.store.info()).map_err(err)?;
        all.iter()
            .map(|s| {
                let d = pyo3::types::PyDict::new(py);
                let m = s.manifest.as_ref();
                d.set_item("model", m.map(|m| m.model.clone()))?;
                d.set_item("fingerprint", m.map(|m| m.fingerprint.clone()))?;
                d.set_item("dim", m.map(|m| m.dim))?;
                d.set_item("rows", s.rows)?;
                d.set_item("shards", s.shards)?;
                d.set_item("bytes", s.bytes)?;
                d.set_item("dir", s.dir.clone())?;
                Ok(d.into_any())
            })
            .collect()
    }

    /// Merges each model's small shards (safe while other processes read and write);
    /// returns the shard count before and after, summed over models.
    fn compact(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        py.detach(|| {
            let mut total = (0, 0);
            for s in self.store.info()? {
                if let Some(m) = s.manifest {
                    let (before, after) = self.store.backbone(m)?.compact()?;
                    total = (total.0 + before, total.1 + after);
                }
            }
            Ok::<_, tl_features::FeatureError>(total)
        })
        .map_err(err)
    }

    fn __repr__(&self) -> String {
        format!("FeatureCache({:?})", self.store.root())
    }
}

fn registry(cache: &Cache) -> PyResult<Registry> {
    let mut registry = Registry::builtin().map_err(err)?;
    registry.add_local(cache).map_err(err)?;
    Ok(registry)
}

fn note(verbose: bool) -> impl Fn(&str) + Sync {
    move |line: &str| {
        if verbose {
            eprintln!("{line}");
        }
    }
}

/// Ranks `models` on each dataset before any head is trained (LogME, H-score, kNN
/// leave-one-out, LEEP) next to the accuracy of a logistic head tuned by cross-validation;
/// one dict per dataset, as `tl select` prints it.
#[pyfunction]
#[pyo3(signature = (datasets, models, *, limit=None, folds=5, cache_dir=None, verbose=false))]
fn select<'py>(
    py: Python<'py>,
    datasets: Vec<String>,
    models: Vec<String>,
    limit: Option<usize>,
    folds: usize,
    cache_dir: Option<PathBuf>,
    verbose: bool,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if limit == Some(0) {
        return Err(bad("limit must be at least 1"));
    }
    if models.is_empty() {
        return Err(bad("models: name at least one model"));
    }
    let cache = cache_at(cache_dir);
    let registry = registry(&cache)?;
    let options = tl_eval::select::SelectOptions {
        folds,
        ..Default::default()
    };
    let selections = py
        .detach(|| {
            transfer_learning::prepare_runtime(&cache, false).map_err(|e| message(&e))?;
            let mut out = Vec::new();
            for name in &datasets {
                let ds = tl_data::load_dataset(&registry, &cache, name, &Default::default())
                    .map_err(|e| message(&e))?;
                let all: Vec<usize> = (0..ds.len()).collect();
                // A row cap means what it means everywhere: a stratified sample, seed 0.
                let rows = match limit {
                    Some(n) => tl_core::split::stratified_sample(&ds.labels, &all, n, 0)
                        .map_err(|e| message(&e))?,
                    None => all,
                };
                let s = tl_eval::select::select_backbones(
                    &ds,
                    &rows,
                    &models,
                    &options,
                    &registry,
                    &cache,
                    &note(verbose),
                )
                .map_err(|e| message(&e))?;
                out.push(s);
            }
            Ok::<_, String>(out)
        })
        .map_err(bad)?;
    selections.iter().map(|s| json(py, s)).collect()
}

/// Runs an experiment file (either kind: backbones against a baseline, or domain adaptation
/// over `pairs`), writes its report folder when `out_dir` is given, and returns the report
/// (the content of `report.json`) as a dict.
#[pyfunction]
#[pyo3(signature = (path, *, out_dir=None, cache_dir=None, verbose=true))]
fn run_experiment<'py>(
    py: Python<'py>,
    path: PathBuf,
    out_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    verbose: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let text = std::fs::read_to_string(&path).map_err(|source| {
        err(tl_eval::EvalError::Io {
            path: path.clone(),
            source,
        })
    })?;
    let cache = cache_at(cache_dir);
    let registry = registry(&cache)?;
    let report = py
        .detach(|| run_file(&text, &path, out_dir.as_deref(), &registry, &cache, verbose))
        .map_err(bad)?;
    loads(py, report)
}

/// The experiment's report as JSON text; errors as the `tl` command words them.
fn run_file(
    text: &str,
    path: &Path,
    out_dir: Option<&Path>,
    registry: &Registry,
    cache: &Cache,
    verbose: bool,
) -> Result<String, String> {
    let m = |e: &(dyn std::error::Error + 'static)| message(e);
    let json = |v: Result<String, serde_json::Error>| v.map_err(|e| e.to_string());
    if tl_eval::AdaptationExperiment::is_adaptation(text) {
        let exp = tl_eval::AdaptationExperiment::from_toml(text, path).map_err(|e| m(&e))?;
        transfer_learning::prepare_runtime(cache, false).map_err(|e| m(&e))?;
        let report = tl_eval::run_adaptation(&exp, registry, cache, false, &note(verbose))
            .map_err(|e| m(&e))?;
        if let Some(dir) = out_dir {
            tl_eval::write_report(&report, dir).map_err(|e| m(&e))?;
        }
        return json(serde_json::to_string(&report));
    }
    let exp = tl_eval::Experiment::from_toml(text, path).map_err(|e| m(&e))?;
    transfer_learning::prepare_runtime(cache, false).map_err(|e| m(&e))?;
    let report = tl_eval::run(&exp, registry, cache, false, &note(verbose)).map_err(|e| m(&e))?;
    if let Some(dir) = out_dir {
        tl_eval::write_report(&report, dir).map_err(|e| m(&e))?;
    }
    json(serde_json::to_string(&report))
}

/// Loads a dataset the way every `tl` command does (a built-in name, fetched on first use;
/// `sentiment`; a table file; an image folder): a dict with `name`, `modality` (`text` or
/// `image`), `items` (the texts, or the image files' paths), `labels` (each row's label name),
/// `label_names` and `splits` (split name to row indices).
#[pyfunction]
#[pyo3(signature = (dataset, *, cache_dir=None, text_column="text", label_column="label", split_column=None))]
fn load_dataset<'py>(
    py: Python<'py>,
    dataset: &str,
    cache_dir: Option<PathBuf>,
    text_column: &str,
    label_column: &str,
    split_column: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let cache = cache_at(cache_dir);
    let registry = registry(&cache)?;
    let table = tl_data::TableSettings {
        text_column: text_column.into(),
        label_column: label_column.into(),
        split_column,
    };
    let ds = py
        .detach(|| tl_data::load_dataset(&registry, &cache, dataset, &table))
        .map_err(err)?;
    let mut items = Vec::with_capacity(ds.len());
    let mut modality = None;
    for (row, item) in ds.items.iter().enumerate() {
        let (kind, value) = match item {
            tl_data::Item::Text(t) => ("text", t.clone()),
            tl_data::Item::ImageFile(p) => ("image", p.display().to_string()),
            tl_data::Item::Pixels(_) => {
                return Err(bad(format!(
                    "{}: row {row} is an in-memory pixel array, not a text or an image file; \
                     load_dataset returns texts and file paths",
                    ds.name
                )));
            }
        };
        if modality.is_some_and(|m| m != kind) {
            return Err(bad(format!(
                "{}: row {row} is {kind}, earlier rows are not",
                ds.name
            )));
        }
        modality = Some(kind);
        items.push(value);
    }
    let d = pyo3::types::PyDict::new(py);
    d.set_item("name", &ds.name)?;
    d.set_item("modality", modality.unwrap_or("text"))?;
    d.set_item("items", items)?;
    let labels: Vec<&str> = ds
        .labels
        .iter()
        .map(|&l| ds.label_names[l].as_str())
        .collect();
    d.set_item("labels", labels)?;
    d.set_item("label_names", &ds.label_names)?;
    d.set_item("splits", &ds.splits)?;
    Ok(d.into_any())
}

/// The native module; `transfer_learning/__init__.py` re-exports it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "TransferLearningError",
        m.py().get_type::<TransferLearningError>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<TextEmbedder>()?;
    m.add_class::<ImageEmbedder>()?;
    m.add_class::<Classifier>()?;
    m.add_class::<FeatureCache>()?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    m.add_function(wrap_pyfunction!(run_experiment, m)?)?;
    m.add_function(wrap_pyfunction!(load_dataset, m)?)?;
    Ok(())
}
