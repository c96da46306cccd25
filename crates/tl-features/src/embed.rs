//! Cached extraction: look every item up, compute only the misses, store each chunk as it
//! completes.

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Axis};
use tl_backbone::{ItemError, OnError};
use tl_data::Item;

use crate::embedder::{Embedder, Inputs};
use crate::store::{LookupStats, STORE_VERSION, Store, StoreManifest};

use crate::{FeatureError, Key};

/// Compaction runs after a call that leaves more shards than this.
const COMPACT_AFTER: usize = 64;

/// Settings of [`embed_cached`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Items computed and written per shard: a killed run loses at most this many.
    pub flush_every: usize,
    /// Draw a progress bar (hits, computed, rate, ETA) on stderr.
    pub progress: bool,
    /// Fail on the first item that cannot be embedded, or skip it (NaN row, never cached).
    pub on_error: OnError,
    /// Also return (and cache, each in its own store) the backbone's extra outputs, such as
    /// EfficientNet-Lite0's ImageNet `logits`. Items cached without them are recomputed.
    pub extra_outputs: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            flush_every: 256,
            progress: false,
            on_error: OnError::Fail,
            extra_outputs: false,
        }
    }
}

/// The result of [`embed_cached`].
#[derive(Debug, Clone)]
pub struct CachedFeatures {
    /// One row per item, in input order (NaN rows for skipped failures).
    pub features: Array2<f32>,
    /// Each extra output by name, rows as `features` (empty unless
    /// [`CacheOptions::extra_outputs`]).
    pub extra: Vec<(String, Array2<f32>)>,
    /// Items answered from the cache.
    pub hits: usize,
    /// Items computed by the backbone in this call.
    pub computed: usize,
    /// Items that could not be embedded (under [`OnError::Skip`]).
    pub errors: Vec<ItemError>,
    /// What the lookup read.
    pub lookup: LookupStats,
    /// Time spent looking up.
    pub lookup_time: Duration,
    /// Time spent in the backbone.
    pub compute_time: Duration,
    /// Wall time of the call.
    pub elapsed: Duration,
}

fn hasher(fingerprint: &str, kind: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(b"tl-features/key/1\0");
    h.update(fingerprint.as_bytes());
    h.update(b"\0");
    h.update(kind);
    h.update(b"\0");
    h
}

/// Key of a text under a backbone.
pub fn text_key(fingerprint: &str, text: &str) -> Key {
    let mut h = hasher(fingerprint, b"text");
    h.update(text.as_bytes());
    Key(*h.finalize().as_bytes())
}

/// Key of an encoded image file's bytes under a backbone.
pub fn encoded_key(fingerprint: &str, bytes: &[u8]) -> Key {
    let mut h = hasher(fingerprint, b"encoded");
    h.update(bytes);
    Key(*h.finalize().as_bytes())
}

/// Key of a raw pixel array under a backbone.
pub fn pixels_key(fingerprint: &str, width: u32, height: u32, channels: u8, data: &[u8]) -> Key {
    let mut h = hasher(fingerprint, b"pixels");
    h.update(&width.to_le_bytes());
    h.update(&height.to_le_bytes());
    h.update(&[channels]);
    h.update(data);
    Key(*h.finalize().as_bytes())
}

/// Key of a dataset item: the backbone fingerprint plus the item's content (a file's bytes,
/// not its path, so the same image under two datasets is computed once).
pub fn item_key(fingerprint: &str, item: &Item) -> Result<Key, FeatureError> {
    Ok(match item {
        Item::Text(t) => text_key(fingerprint, t),
        Item::ImageFile(p) => {
            let bytes = fs::read(p).map_err(|e| FeatureError::Io {
                path: p.clone(),
                source: e,
            })?;
            encoded_key(fingerprint, &bytes)
        }
        Item::Pixels(p) => pixels_key(fingerprint, p.width, p.height, p.channels, &p.data),
    })
}

/// The store manifest describing an encoder.
pub fn manifest_for(backbone: &dyn Embedder) -> StoreManifest {
    StoreManifest {
        version: STORE_VERSION,
        fingerprint: backbone.fingerprint().to_string(),
        model: backbone.name().to_string(),
        settings: backbone.settings(),
        dim: backbone.dim(),
        dtype: "float32".into(),
    }
}

/// Fingerprint of the store holding one extra output of a backbone.
pub fn output_fingerprint(fingerprint: &str, output: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"tl-features/output/1\0");
    h.update(fingerprint.as_bytes());
    h.update(b"\0");
    h.update(output.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// The store manifest of one extra output (`width` values per item) of a backbone.
pub fn manifest_for_output(backbone: &dyn Embedder, output: &str, width: usize) -> StoreManifest {
    StoreManifest {
        version: STORE_VERSION,
        fingerprint: output_fingerprint(backbone.fingerprint(), output),
        model: format!("{}:{output}", backbone.name()),
        settings: serde_json::json!({
            "output": output,
            "backbone_fingerprint": backbone.fingerprint(),
        }),
        dim: width,
        dtype: "float32".into(),
    }
}

/// How often extraction prints a progress line when stderr is not a terminal (default;
/// `TL_PROGRESS_SECONDS` overrides it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Embeds every item of `items` with `backbone`, without a store: what [`embed_cached`] does
/// for an encoder whose [`Embedder::caches`] is false, and what a caller with the cache
/// turned off wants, in the same [`CachedFeatures`] shape (no hits, everything computed).
pub fn embed_uncached(
    backbone: &dyn Embedder,
    items: &[Item],
    on_error: OnError,
) -> Result<CachedFeatures, FeatureError> {
    let start = Instant::now();
    let out = backbone.embed(&Inputs::from_items(items)?, on_error)?;
    let compute_time = start.elapsed();
    Ok(CachedFeatures {
        features: out.features,
        extra: out.extra,
        hits: 0,
        computed: items.len(),
        errors: out.errors,
        lookup: LookupStats::default(),
        lookup_time: Duration::ZERO,
        compute_time,
        elapsed: compute_time,
    })
}

/// Embeds `items` with `backbone` (any [`Embedder`]), answering from `store` where it can and
/// storing what it computes, one durable shard per `flush_every` items. An encoder whose
/// [`Embedder::caches`] is false is run on every item and the store is not touched.
pub fn embed_cached(
    backbone: &dyn Embedder,
    store: &Store,
    items: &[Item],
    options: &CacheOptions,
) -> Result<CachedFeatures, FeatureError> {
    let start = Instant::now();
    if options.flush_every == 0 {
        return Err(FeatureError::Options(
            "flush_every must be at least 1".into(),
        ));
    }
    if !backbone.caches() {
        return embed_uncached(backbone, items, options.on_error);
    }
    // Store 0 holds the features; stores 1.. the extra outputs, when asked for.
    let mut stores = vec![store.backbone(manifest_for(backbone))?];
    let mut names = Vec::new();
    if options.extra_outputs {
        for (name, width) in backbone.extra_outputs() {
            if width == 0 {
                return Err(FeatureError::Options(format!(
                    "{}: extra output `{name}` has a dynamic width and cannot be cached",
                    backbone.name()
                )));
            }
            stores.push(store.backbone(manifest_for_output(backbone, name, width))?);
            names.push(name.to_string());
        }
    }
    for s in &stores {
        s.touch();
    }
    let mut storing = stores.iter().all(|s| s.is_writable());
    let fp = backbone.fingerprint();
    let keys: Vec<Key> = items
        .iter()
        .map(|it| item_key(fp, it))
        .collect::<Result<_, _>>()?;
    let n = items.len();
    let mut outs: Vec<Array2<f32>> = stores
        .iter()
        .map(|s| Array2::<f32>::zeros((n, s.manifest().dim)))
        .collect();
    let mut founds: Vec<Vec<bool>> = vec![vec![false; n]; stores.len()];
    let mut lookup = LookupStats::default();
    for (k, s) in stores.iter().enumerate() {
        let l = s.lookup(&keys, &mut outs[k], &mut founds[k])?;
        if k == 0 {
            lookup = l;
        }
    }
    let found: Vec<bool> = (0..n).map(|i| founds.iter().all(|f| f[i])).collect();
    let lookup_time = start.elapsed();
    let hits = found.iter().filter(|f| **f).count();

    // One computation per distinct missing key.
    let mut first: HashMap<Key, usize> = HashMap::new();
    let mut duplicates: Vec<(usize, usize)> = Vec::new();
    let mut misses: Vec<usize> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if found[i] {
            continue;
        }
        match first.get(k) {
            Some(&j) => duplicates.push((i, j)),
            None => {
                first.insert(*k, i);
                misses.push(i);
            }
        }
    }
    tracing::info!(
        "{}: {} items, {hits} cached, {} to compute ({} shards scanned, {} read)",
        backbone.name(),
        n,
        misses.len(),
        lookup.shards_scanned,
        lookup.shards_read
    );

    // Without a terminal (a CI log, `nohup`), a bar draws nothing: a line every
    // PROGRESS_EVERY instead, so ten minutes of extraction are not ten silent minutes.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // `TL_PROGRESS_SECONDS` sets the interval (tests use 0: a line per chunk).
    let every = std::env::var("TL_PROGRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(PROGRESS_EVERY, Duration::from_secs);
    let mut last_line = Instant::now();
    let mut done = 0usize;
    let bar = if options.progress && terminal && !misses.is_empty() {
        let bar = ProgressBar::new(misses.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} computed, {per_sec}, ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{}: {hits} cached", backbone.name()));
        Some(bar)
    } else {
        None
    };
    let mut errors = Vec::new();
    let mut compute_time = Duration::ZERO;
    for chunk in misses.chunks(options.flush_every) {
        let t = Instant::now();
        let (out, chunk_keys) = embed_chunk(backbone, items, chunk, options.on_error)?;
        compute_time += t.elapsed();
        let failed: std::collections::HashSet<usize> = out.errors.iter().map(|e| e.index).collect();
        for (k, s) in stores.iter().enumerate() {
            let computed = if k == 0 {
                &out.features
            } else {
                match out.extra.iter().find(|(name, _)| *name == names[k - 1]) {
                    Some((_, x)) => x,
                    None => {
                        return Err(FeatureError::Options(format!(
                            "{}: the backbone returned no extra output `{}`",
                            backbone.name(),
                            names[k - 1]
                        )));
                    }
                }
            };
            // Rows already cached keep their stored values; only missing ones are written.
            let mut new_keys = Vec::with_capacity(chunk.len());
            let mut new_rows = Vec::with_capacity(chunk.len());
            for (r, &i) in chunk.iter().enumerate() {
                if founds[k][i] {
                    continue;
                }
                outs[k].row_mut(i).assign(&computed.row(r));
                // A non-finite vector is never cached (the store refuses it): it is recomputed
                // next time and the caller sees it now.
                if !failed.contains(&r) && computed.row(r).iter().all(|v| v.is_finite()) {
                    new_keys.push(chunk_keys[r]);
                    new_rows.push(r);
                }
            }
            if !new_keys.is_empty() && storing {
                let rows = computed.select(Axis(0), &new_rows);
                match s.append(&new_keys, rows.view()) {
                    Ok(_) => {}
                    Err(FeatureError::Io { source, .. }) if crate::store::is_read_only(&source) => {
                        tracing::warn!(
                            "feature cache {} cannot be written ({source}): the features are computed but not stored",
                            s.dir().display()
                        );
                        storing = false;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for e in out.errors {
            errors.push(ItemError {
                index: chunk[e.index],
                ..e
            });
        }
        done += chunk.len();
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        } else if options.progress && !terminal && last_line.elapsed() >= every {
            last_line = Instant::now();
            let rate = done as f64 / compute_time.as_secs_f64().max(1e-9);
            eprintln!(
                "progress  {}: {done}/{} computed ({:.0}%), {rate:.1} items/s, about {:.0} s left",
                backbone.name(),
                misses.len(),
                100.0 * done as f64 / misses.len() as f64,
                (misses.len() - done) as f64 / rate.max(1e-9)
            );
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for out in &mut outs {
        for &(i, j) in &duplicates {
            let row = out.row(j).to_owned();
            out.row_mut(i).assign(&row);
        }
    }
    if !misses.is_empty() {
        for s in &stores {
            if s.shards()?.len() > COMPACT_AFTER {
                let (before, after) = s.compact()?;
                tracing::info!("compacted feature shards: {before} -> {after}");
            }
        }
    }
    let mut outs = outs.into_iter();
    let features = outs.next().expect("the feature store comes first");
    Ok(CachedFeatures {
        features,
        extra: names.into_iter().zip(outs).collect(),
        hits,
        computed: misses.len(),
        errors,
        lookup,
        lookup_time,
        compute_time,
        elapsed: start.elapsed(),
    })
}

/// Runs the encoder on one chunk. Image files are read once here and keyed from the bytes
/// actually embedded, so a file changed since the lookup is stored under its new content.
fn embed_chunk(
    backbone: &dyn Embedder,
    items: &[Item],
    chunk: &[usize],
    on_error: OnError,
) -> Result<(tl_backbone::Embeddings, Vec<Key>), FeatureError> {
    let inputs = Inputs::from_items(chunk.iter().map(|&i| &items[i]))?;
    let keys = inputs.keys(backbone.fingerprint())?;
    Ok((backbone.embed(&inputs, on_error)?, keys))
}
