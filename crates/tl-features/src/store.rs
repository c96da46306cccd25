//! The on-disk layout: one folder per backbone fingerprint, immutable Parquet shards named by
//! the BLAKE3 hash of their bytes, a manifest written once.

use std::collections::HashMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ndarray::{Array2, ArrayView2};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{FeatureError, Key};

/// Version of the store layout and shard schema.
pub const STORE_VERSION: u32 = 1;
/// Column holding each row's key (64 hex characters).
pub const KEY_COLUMN: &str = "key";
/// Column holding each row's vector (a list of float32).
pub const VECTOR_COLUMN: &str = "embedding";
/// Compaction writes shards of at most this many rows.
pub const COMPACT_ROWS: usize = 16_384;

/// What a backbone folder holds; written once, checked on every open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreManifest {
    /// [`STORE_VERSION`].
    pub version: u32,
    /// The backbone fingerprint (the folder's name).
    pub fingerprint: String,
    /// Human-readable model name.
    pub model: String,
    /// The model's settings (the manifest's `ModelSpec`), for people and other tools.
    pub settings: serde_json::Value,
    /// Vector length.
    pub dim: usize,
    /// Element type, always `float32`.
    pub dtype: String,
}

/// A features folder (`$TL_HOME/features`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One backbone's shards.
#[derive(Debug, Clone)]
pub struct BackboneStore {
    dir: PathBuf,
    manifest: StoreManifest,
    writable: bool,
}

/// Temporary files older than this are leftovers of a killed or failed writer (a writer in
/// flight finishes a shard in seconds) and are removed when a store is opened or compacted.
pub const STALE_TEMP: Duration = Duration::from_secs(3600);

/// True for the errors of a read-only cache (a shared or container mount, no write rights):
/// reads go on, writes are skipped with a warning.
pub fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// Removes `.tmp-*` files in `dir` older than [`STALE_TEMP`]; best-effort.
fn sweep_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !tl_core::fs::is_temp(&name.to_string_lossy()) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= STALE_TEMP)
            .unwrap_or(false);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            "{}: removed {removed} temporary files left by an interrupted write",
            dir.display()
        );
    }
    removed
}

/// Summary of one backbone folder, for `tl cache info` and garbage collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackboneSummary {
    /// Its manifest (None when the folder has no readable manifest).
    pub manifest: Option<StoreManifest>,
    /// The folder.
    pub dir: PathBuf,
    /// Shard files.
    pub shards: usize,
    /// Rows over all shards (duplicates included until compaction).
    pub rows: usize,
    /// Bytes of shard files.
    pub bytes: u64,
    /// When it was last used by an embedding run.
    pub last_used: Option<SystemTime>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FeatureError + '_ {
    move |source| FeatureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` crash-safely ([`tl_core::fs::write_atomic`]); errors name
/// the destination.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, FeatureError> {
    let dest = dir.join(name);
    tl_core::fs::write_atomic(&dest, bytes).map_err(io(&dest))?;
    Ok(dest)
}

impl Store {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store inside the asset cache, `$TL_HOME/features`, or `$TL_FEATURES_DIR` when set
    /// (benchmarks point it at an empty folder to measure a cold cache).
    pub fn from_cache(cache: &tl_assets::Cache) -> Store {
        match std::env::var_os("TL_FEATURES_DIR") {
            Some(dir) if !dir.is_empty() => Store::new(PathBuf::from(dir)),
            _ => Store::new(cache.root().join("features")),
        }
    }

    /// Its folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating if needed) the folder for one backbone. An existing folder whose
    /// manifest disagrees (dimension, dtype, version) is an error, never silently reused.
    pub fn backbone(&self, manifest: StoreManifest) -> Result<BackboneStore, FeatureError> {
        if manifest.fingerprint.is_empty()
            || !manifest
                .fingerprint
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(FeatureError::Manifest {
                path: self.root.clone(),
                message: format!(
                    "fingerprint {:?} is not a plain alphanumeric string",
                    manifest.fingerprint
                ),
            });
        }
        let dir = self.root.join(&manifest.fingerprint);
        let shards = dir.join("shards");
        let writable = match fs::create_dir_all(&shards) {
            Ok(()) => true,
            // A read-only cache still answers lookups; nothing is written to it.
            Err(e) if is_read_only(&e) => {
                tracing::warn!(
                    "feature cache {} is read-only: cached features are read, new ones are not stored",
                    self.root.display()
                );
                false
            }
            Err(e) => return Err(io(&shards)(e)),
        };
        if writable {
            sweep_stale_temps(&shards);
            sweep_stale_temps(&dir);
        }
        let path = dir.join("manifest.json");
        let found = match fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<StoreManifest>(&text) {
                Ok(found) => Some(found),
                // A damaged manifest says nothing the backbone does not: set it aside and
                // write the right one (shards that disagree are quarantined on lookup).
                Err(e) => {
                    tracing::warn!(
                        "{}: damaged feature store manifest ({e}); rewriting it",
                        path.display()
                    );
                    if writable {
                        let qdir = dir.join("quarantine");
                        let _ = fs::create_dir_all(&qdir);
                        let _ = fs::rename(&path, qdir.join("manifest.json.damaged"));
                    }
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        match found {
            Some(found) => {
                if found.version != manifest.version
                    || found.dim != manifest.dim
                    || found.dtype != manifest.dtype
                    || found.fingerprint != manifest.fingerprint
                {
                    return Err(FeatureError::Manifest {
                        path,
                        message: format!(
                            "holds version {} {} x {} vectors for {}, but {} x {} (version {}) were asked for",
                            found.version,
                            found.dtype,
                            found.dim,
                            found.fingerprint,
                            manifest.dtype,
                            manifest.dim,
                            manifest.version
                        ),
                    });
                }
                Ok(BackboneStore {
                    dir,
                    manifest: found,
                    writable,
                })
            }
            None => {
                let store = BackboneStore {
                    dir,
                    manifest,
                    writable,
                };
                if writable {
                    match store.write_manifest() {
                        Err(FeatureError::Io { source, .. }) if is_read_only(&source) => {
                            tracing::warn!(
                                "feature cache {} is read-only: its manifest is not written",
                                self.root.display()
                            );
                        }
                        r => r?,
                    }
                }
                Ok(store)
            }
        }
    }

    /// Every backbone folder with its size.
    pub fn info(&self) -> Result<Vec<BackboneSummary>, FeatureError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let dir = entry.path();
            if !dir.is_dir() || is_derived(&entry) {
                continue;
            }
            let manifest = fs::read_to_string(dir.join("manifest.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<StoreManifest>(&t).ok());
            let mut summary = BackboneSummary {
                manifest,
                last_used: last_used(&dir),
                dir: dir.clone(),
                shards: 0,
                rows: 0,
                bytes: 0,
            };
            for shard in list_shards(&dir.join("shards"))? {
                summary.shards += 1;
                summary.bytes += fs::metadata(&shard).map(|m| m.len()).unwrap_or(0);
                summary.rows += read_keys(&shard).map(|k| k.len()).unwrap_or(0);
            }
            out.push(summary);
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// Deletes backbone folders not used for `unused_for` (by their `last-used` stamp, else the
    /// folder's modification time). With `dry_run` only reports. Returns what was (or would be)
    /// removed.
    pub fn gc(
        &self,
        unused_for: Duration,
        dry_run: bool,
    ) -> Result<Vec<BackboneSummary>, FeatureError> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for s in self.info()? {
            let used = s
                .last_used
                .or_else(|| fs::metadata(&s.dir).and_then(|m| m.modified()).ok())
                .unwrap_or(UNIX_EPOCH);
            if now.duration_since(used).unwrap_or_default() >= unused_for {
                if !dry_run {
                    fs::remove_dir_all(&s.dir).map_err(io(&s.dir))?;
                }
                removed.push(s);
            }
        }
        Ok(removed)
    }
}

/// Dot folders in the store hold data derived from the features (tl-eval's remembered head
/// fits), not a backbone's.
fn is_derived(entry: &fs::DirEntry) -> bool {
    entry.file_name().to_string_lossy().starts_with('.')
}

/// Files under the store's dot folders with their metadata (recursively; a folder that
/// cannot be read is skipped: derived data is only ever a cache).
fn derived_files(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) if m.is_file() => out.push((path, m)),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return out;
    };
    for entry in entries.flatten() {
        if is_derived(&entry) && entry.path().is_dir() {
            walk(&entry.path(), &mut out);
        }
    }
    out
}

impl Store {
    /// Files and bytes of the data derived from the features in the store's dot folders
    /// (tl-eval's remembered head fits).
    pub fn derived_info(&self) -> (usize, u64) {
        let files = derived_files(&self.root);
        (files.len(), files.iter().map(|(_, m)| m.len()).sum())
    }

    /// Deletes derived files (see [`Store::derived_info`]) not used for `unused_for`, by
    /// modification time (their readers refresh it). With `dry_run` only counts. Returns the
    /// files and bytes removed (or that would be).
    pub fn gc_derived(
        &self,
        unused_for: Duration,
        dry_run: bool,
    ) -> Result<(usize, u64), FeatureError> {
        let now = SystemTime::now();
        let (mut files, mut bytes) = (0, 0);
        for (path, meta) in derived_files(&self.root) {
            let used = meta.modified().unwrap_or(UNIX_EPOCH);
            if now.duration_since(used).unwrap_or_default() >= unused_for {
                if !dry_run {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        // Another gc got there first.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io(&path)(e)),
                    }
                }
                files += 1;
                bytes += meta.len();
            }
        }
        Ok((files, bytes))
    }
}

fn last_used(dir: &Path) -> Option<SystemTime> {
    let secs: u64 = fs::read_to_string(dir.join("last-used"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A damaged stamp (a number past the end of time) reads as no stamp, not a panic.
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn list_shards(dir: &Path) -> Result<Vec<PathBuf>, FeatureError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Temporary files of writers in flight (or killed) are never shards.
        if name.starts_with("shard-") && name.ends_with(".parquet") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn polars_err(path: &Path) -> impl FnOnce(PolarsError) -> FeatureError + '_ {
    move |e| FeatureError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads just the key column of a shard.
fn read_keys(path: &Path) -> Result<Vec<Key>, FeatureError> {
    let file = fs::File::open(path).map_err(io(path))?;
    let df = read_parquet(path, || {
        ParquetReader::new(file)
            .with_columns(Some(vec![KEY_COLUMN.to_string()]))
            .finish()
    })?;
    keys_of(&df, path)
}

/// A Parquet read whose panics (polars' decoder panics on some damaged files) become
/// `Corrupt`, so the shard is quarantined instead of crashing the process.
fn read_parquet(
    path: &Path,
    f: impl FnOnce() -> PolarsResult<DataFrame>,
) -> Result<DataFrame, FeatureError> {
    tl_data::guard_panics(f)
        .map_err(|m| FeatureError::Corrupt {
            path: path.to_path_buf(),
            message: format!("the Parquet decoder failed: {m}"),
        })?
        .map_err(polars_err(path))
}

fn keys_of(df: &DataFrame, path: &Path) -> Result<Vec<Key>, FeatureError> {
    let col = df.column(KEY_COLUMN).map_err(polars_err(path))?;
    let keys = col.str().map_err(polars_err(path))?;
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            k.and_then(Key::from_hex)
                .ok_or_else(|| FeatureError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("row {i}: key is not 64 hex characters"),
                })
        })
        .collect()
}

/// Decodes the vector column into a row-major matrix, checking every row's length.
fn vectors_of(df: &DataFrame, path: &Path, dim: usize) -> Result<Array2<f32>, FeatureError> {
    let col = df.column(VECTOR_COLUMN).map_err(polars_err(path))?;
    let list = col.list().map_err(|_| FeatureError::Schema {
        path: path.to_path_buf(),
        message: format!(
            "column `{VECTOR_COLUMN}` is {}, expected list[f32]",
            col.dtype()
        ),
    })?;
    let n = list.len();
    let mut out = Array2::<f32>::zeros((n, dim));
    let schema = |row: usize, message: String| FeatureError::Schema {
        path: path.to_path_buf(),
        message: format!("row {row}: {message}"),
    };
    if list.null_count() > 0 {
        return Err(FeatureError::Corrupt {
            path: path.to_path_buf(),
            message: format!("{} vectors are null", list.null_count()),
        });
    }
    let flat = out.as_slice_mut().expect("fresh array is contiguous");
    let mut row = 0usize;
    // Straight from the Arrow buffers: offsets give each row's extent in one values array.
    for chunk in list.downcast_iter() {
        let offsets = chunk.offsets().as_slice();
        let values = Series::try_from((PlSmallStr::from("v"), chunk.values().clone()))
            .map_err(polars_err(path))?;
        let values = values.f32().map_err(|_| {
            schema(
                row,
                format!(
                    "vector elements are {}, the store holds float32",
                    values.dtype()
                ),
            )
        })?;
        let values = values.cont_slice().map_err(|_| FeatureError::Corrupt {
            path: path.to_path_buf(),
            message: "vector elements contain nulls".into(),
        })?;
        for w in offsets.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            if b - a != dim {
                return Err(schema(
                    row,
                    format!(
                        "vector has {} values, the store's manifest says {dim}",
                        b - a
                    ),
                ));
            }
            flat[row * dim..(row + 1) * dim].copy_from_slice(&values[a..b]);
            row += 1;
        }
    }
    Ok(out)
}

/// Outcome of a lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Shards whose key column was read.
    pub shards_scanned: usize,
    /// Shards read in full because they held wanted keys.
    pub shards_read: usize,
    /// Shards found damaged and moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
}

impl BackboneStore {
    /// Its manifest.
    pub fn manifest(&self) -> &StoreManifest {
        &self.manifest
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Paths of the current shards.
    pub fn shards(&self) -> Result<Vec<PathBuf>, FeatureError> {
        list_shards(&self.dir.join("shards"))
    }

    /// False when the cache could not be written to when it was opened.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn write_manifest(&self) -> Result<(), FeatureError> {
        let text = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
        // Two first writers race harmlessly: both write the same content atomically.
        write_atomic(&self.dir, "manifest.json", text.as_bytes())?;
        Ok(())
    }

    /// Records that the store was used now (for garbage collection). Best-effort: a stamp
    /// that cannot be written (a read-only cache) is skipped, never an error.
    pub fn touch(&self) {
        if !self.writable {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if let Err(e) = write_atomic(&self.dir, "last-used", now.to_string().as_bytes()) {
            tracing::debug!("last-used stamp not written: {e}");
        }
    }

    /// Moves a damaged shard aside so it is never read again; its rows become misses.
    fn quarantine(&self, path: &Path, why: &str) -> Result<PathBuf, FeatureError> {
        if !self.writable {
            tracing::warn!(
                "feature cache shard {} is damaged ({why}); skipped (the cache is read-only)",
                path.display()
            );
            return Ok(path.to_path_buf());
        }
        let qdir = self.dir.join("quarantine");
        match fs::create_dir_all(&qdir) {
            Ok(()) => {}
            // A read-only mount whose store folder already existed (opening it could not
            // tell): skip the shard, as for a store opened read-only.
            Err(e) if is_read_only(&e) => {
                tracing::warn!(
                    "feature cache shard {} is damaged ({why}); skipped (the cache is read-only)",
                    path.display()
                );
                return Ok(path.to_path_buf());
            }
            Err(e) => return Err(io(&qdir)(e)),
        }
        let dest = qdir.join(path.file_name().unwrap_or_default());
        tracing::warn!(
            "feature cache shard {} is damaged ({why}); moved to {} and its items will be recomputed",
            path.display(),
            dest.display()
        );
        match fs::rename(path, &dest) {
            Ok(()) => Ok(dest),
            // Another process got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dest),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Fills `out` rows for every key found, marking them in `found`. Reads one shard at a
    /// time, and only the key column of shards that hold none of the wanted keys. A shard
    /// whose bytes do not hash to its name, or that does not parse, is quarantined; a shard of
    /// the wrong dimension or type is an error.
    pub fn lookup(
        &self,
        keys: &[Key],
        out: &mut Array2<f32>,
        found: &mut [bool],
    ) -> Result<LookupStats, FeatureError> {
        let dim = self.manifest.dim;
        if out.dim() != (keys.len(), dim) || found.len() != keys.len() {
            return Err(FeatureError::Options(format!(
                "lookup of {} keys into a {:?} matrix with {} flags; expected ({}, {dim})",
                keys.len(),
                out.dim(),
                found.len(),
                keys.len()
            )));
        }
        let mut wanted: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if !found[i] {
                wanted.entry(*k).or_default().push(i);
            }
        }
        let mut stats = LookupStats::default();
        for shard in self.shards()? {
            if wanted.is_empty() {
                break;
            }
            stats.shards_scanned += 1;
            let shard_keys = match read_keys(&shard) {
                Ok(k) => k,
                // Deleted by a concurrent compaction after we listed it: its rows live on in
                // the compacted shard, which a later listing sees; here they are just misses.
                Err(FeatureError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(FeatureError::Corrupt { message, .. }) => {
                    stats.quarantined.push(self.quarantine(&shard, &message)?);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !shard_keys.iter().any(|k| wanted.contains_key(k)) {
                continue;
            }
            let bytes = match fs::read(&shard) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&shard)(e)),
            };
            stats.shards_read += 1;
            let name = shard.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let expected = name.trim_start_matches("shard-");
            let actual = blake3::hash(&bytes).to_hex();
            if actual.as_str() != expected {
                let why = format!("content hash {} does not match its name", &actual[..16]);
                stats.quarantined.push(self.quarantine(&shard, &why)?);
                continue;
            }
            let df = match read_parquet(&shard, || ParquetReader::new(Cursor::new(bytes)).finish())
            {
                Ok(df) => df,
                Err(e) => {
                    stats
                        .quarantined
                        .push(self.quarantine(&shard, &e.to_string())?);
                    continue;
                }
            };
            // A shard with the right name but the wrong shape, type or non-finite values
            // (failed items are never stored) is damage, not data: set it aside.
            let decoded = keys_of(&df, &shard).and_then(|k| {
                let v = vectors_of(&df, &shard, dim)?;
                check_vectors(&v, &shard)?;
                Ok((k, v))
            });
            let (all_keys, vectors) = match decoded {
                Ok(kv) => kv,
                Err(
                    FeatureError::Schema { message, .. } | FeatureError::Corrupt { message, .. },
                ) => {
                    stats.quarantined.push(self.quarantine(&shard, &message)?);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if all_keys.len() != vectors.nrows() {
                let why = format!("{} keys for {} vectors", all_keys.len(), vectors.nrows());
                stats.quarantined.push(self.quarantine(&shard, &why)?);
                continue;
            }
            for (r, k) in all_keys.iter().enumerate() {
                if let Some(rows) = wanted.remove(k) {
                    for i in rows {
                        out.row_mut(i).assign(&vectors.row(r));
                        found[i] = true;
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Writes one immutable shard holding `keys` and their vectors; returns its path.
    pub fn append(&self, keys: &[Key], vectors: ArrayView2<f32>) -> Result<PathBuf, FeatureError> {
        if keys.len() != vectors.nrows() {
            return Err(FeatureError::Options(format!(
                "{} keys for {} vectors",
                keys.len(),
                vectors.nrows()
            )));
        }
        if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(FeatureError::Options(format!(
                "refusing to store a non-finite value (vector {}); failed items are never cached",
                i / vectors.ncols().max(1)
            )));
        }
        if vectors.ncols() != self.manifest.dim {
            return Err(FeatureError::Schema {
                path: self.dir.clone(),
                message: format!(
                    "refusing to store {}-d vectors in a {}-d store",
                    vectors.ncols(),
                    self.manifest.dim
                ),
            });
        }
        let bytes = encode_shard(keys, vectors).map_err(polars_err(&self.dir))?;
        let name = format!("shard-{}.parquet", blake3::hash(&bytes).to_hex());
        let shards = self.dir.join("shards");
        match write_atomic(&shards, &name, &bytes) {
            // `tl cache gc` removed the folder while this writer ran: recreate it rather
            // than fail a long extraction at its next shard.
            Err(FeatureError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(
                    "{}: the store was removed while in use; recreating it",
                    self.dir.display()
                );
                fs::create_dir_all(&shards).map_err(io(&shards))?;
                self.write_manifest()?;
                write_atomic(&shards, &name, &bytes)
            }
            r => r,
        }
    }

    /// Merges small shards into shards of up to [`COMPACT_ROWS`] rows without duplicates.
    /// New shards are durable before old ones are removed, so a crash at any point loses
    /// nothing (at worst rows exist twice until the next compaction). Returns
    /// (shards before, shards after).
    pub fn compact(&self) -> Result<(usize, usize), FeatureError> {
        sweep_stale_temps(&self.dir.join("shards"));
        let shards = self.shards()?;
        let small: Vec<PathBuf> = shards
            .iter()
            .filter(|p| {
                read_keys(p)
                    .map(|k| k.len() < COMPACT_ROWS)
                    .unwrap_or(false)
            })
            .cloned()
            .collect();
        if small.len() < 2 {
            return Ok((shards.len(), shards.len()));
        }
        let dim = self.manifest.dim;
        let mut seen: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut keys: Vec<Key> = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        let mut merged = Vec::new();
        let flush = |keys: &mut Vec<Key>, rows: &mut Vec<f32>| -> Result<(), FeatureError> {
            if keys.is_empty() {
                return Ok(());
            }
            let m = Array2::from_shape_vec((keys.len(), dim), std::mem::take(rows))
                .expect("rows match keys");
            self.append(keys, m.view())?;
            keys.clear();
            Ok(())
        };
        for shard in &small {
            let bytes = match fs::read(shard) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(shard)(e)),
            };
            let expected = shard
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .trim_start_matches("shard-")
                .to_string();
            if blake3::hash(&bytes).to_hex().as_str() != expected {
                self.quarantine(shard, "content hash does not match its name")?;
                continue;
            }
            let decoded = read_parquet(shard, || ParquetReader::new(Cursor::new(bytes)).finish())
                .and_then(|df| {
                    let k = keys_of(&df, shard)?;
                    let v = vectors_of(&df, shard, dim)?;
                    check_vectors(&v, shard)?;
                    Ok((k, v))
                });
            let (k, v) = match decoded {
                Ok(kv) if kv.0.len() == kv.1.nrows() => kv,
                Ok(_) => {
                    self.quarantine(shard, "key and vector counts differ")?;
                    continue;
                }
                Err(
                    FeatureError::Schema { message, .. } | FeatureError::Corrupt { message, .. },
                ) => {
                    self.quarantine(shard, &message)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (r, key) in k.into_iter().enumerate() {
                if seen.insert(key) {
                    keys.push(key);
                    rows.extend(v.row(r).iter());
                    if keys.len() == COMPACT_ROWS {
                        flush(&mut keys, &mut rows)?;
                    }
                }
            }
            merged.push(shard.clone());
        }
        flush(&mut keys, &mut rows)?;
        for shard in &merged {
            match fs::remove_file(shard) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(shard)(e)),
            }
        }
        let after = self.shards()?.len();
        Ok((shards.len(), after))
    }
}

/// Stored vectors are finite: a NaN row is a failed item, and those are never cached.
fn check_vectors(v: &Array2<f32>, path: &Path) -> Result<(), FeatureError> {
    match v
        .outer_iter()
        .position(|r| r.iter().any(|x| !x.is_finite()))
    {
        Some(row) => Err(FeatureError::Corrupt {
            path: path.to_path_buf(),
            message: format!("row {row}: vector holds non-finite values"),
        }),
        None => Ok(()),
    }
}

fn encode_shard(keys: &[Key], vectors: ArrayView2<f32>) -> PolarsResult<Vec<u8>> {
    let hexes: Vec<String> = keys.iter().map(Key::to_hex).collect();
    let mut builder = ListPrimitiveChunkedBuilder::<Float32Type>::new(
        VECTOR_COLUMN.into(),
        keys.len(),
        keys.len() * vectors.ncols(),
        DataType::Float32,
    );
    for row in vectors.outer_iter() {
        match row.as_slice() {
            Some(s) => builder.append_slice(s),
            None => builder.append_slice(&row.to_vec()),
        }
    }
    let mut df = DataFrame::new(
        keys.len(),
        vec![
            Column::new(KEY_COLUMN.into(), hexes),
            builder.finish().into_series().into_column(),
        ],
    )?;
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf)
        .with_compression(ParquetCompression::Snappy)
        .finish(&mut df)?;
    Ok(buf)
}
