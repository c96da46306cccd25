//! The frozen part's outputs for `top:N` (and `head`) fine-tuning: computed once per item
//! and kept in the feature store (content-addressed like extracted features), so each
//! epoch, and each later run on the same items, runs only the trainable layers.
//!
//! Text: one store row per token, key = BLAKE3(frozen-part fingerprint, the item's token
//! ids, the token's position), value = its hidden state. Images: one row per image, key =
//! the image's content key under the frozen-part fingerprint, value = the frozen blocks'
//! output `[C][h, w]`. The fingerprint covers the model's shape, the trainable boundary,
//! every frozen weight (and, for images, the frozen BatchNorm statistics and the
//! preprocessing), so a tuned model or another boundary never reads another's states.

use ndarray::Array2;
use rayon::prelude::*;
use tl_features::{BackboneStore, Key, STORE_VERSION, Store, StoreManifest};

use tl_assets::manifest::ImageSpec;
use tl_backbone::ImageInput;

use crate::FinetuneError;
use crate::bert::{Batch, BertClassifier};
use crate::cnn::ConvNet;
use crate::conv;
use crate::ops::Threads;

/// Rows per shard written.
const FLUSH_ITEMS: usize = 256;

/// Fingerprint of the part of `model` below `first_trainable`.
pub fn frozen_fingerprint(model: &BertClassifier, first_trainable: usize) -> String {
    let nl = model.config.num_hidden_layers;
    let end = if first_trainable <= nl {
        model.slots.layers[first_trainable - 1].qkv_w.start
    } else {
        model.slots.cls_w.start
    };
    let mut h = blake3::Hasher::new();
    h.update(b"tl-finetune frozen states v1\0");
    h.update(
        serde_json::to_string(&model.config)
            .expect("plain struct")
            .as_bytes(),
    );
    h.update(&(first_trainable as u64).to_le_bytes());
    // Weights in layout order; the embeddings and the frozen layers come first.
    let mut bytes = Vec::with_capacity(4 << 16);
    for chunk in model.params[..end].chunks(1 << 16) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&bytes);
    }
    h.finalize().to_hex().to_string()
}

fn token_key(fp: &str, ids: &[u32], t: usize) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(fp.as_bytes());
    h.update(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        h.update(&id.to_le_bytes());
    }
    h.update(&(t as u64).to_le_bytes());
    Key(*h.finalize().as_bytes())
}

fn store_err(e: tl_features::FeatureError) -> FinetuneError {
    FinetuneError::Cache(e.to_string())
}

/// The frozen part's token states of every sequence (`[len, H]` each, row-major), and
/// how many sequences had to be computed (the rest came from `store`).
pub fn frozen_states(
    model: &BertClassifier,
    seqs: &[Vec<u32>],
    first_trainable: usize,
    store: Option<&Store>,
    th: Threads,
) -> Result<(Vec<Vec<f32>>, usize), FinetuneError> {
    let h = model.config.hidden_size;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; seqs.len()];
    let fp = frozen_fingerprint(model, first_trainable);
    let backbone: Option<BackboneStore> = match store {
        Some(s) => Some(
            s.backbone(StoreManifest {
                version: STORE_VERSION,
                fingerprint: fp.clone(),
                model: format!("token states below fine-tuned layer {first_trainable}"),
                settings: serde_json::json!({ "first_trainable": first_trainable, "config": model.config }),
                dim: h,
                dtype: "float32".into(),
            })
            .map_err(store_err)?,
        ),
        None => None,
    };
    if let Some(b) = &backbone {
        let keys: Vec<Key> = seqs
            .par_iter()
            .flat_map_iter(|s| {
                (0..s.len())
                    .map(|t| token_key(&fp, s, t))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut rows = Array2::<f32>::zeros((keys.len(), h));
        let mut found = vec![false; keys.len()];
        b.lookup(&keys, &mut rows, &mut found).map_err(store_err)?;
        let mut at = 0;
        for (i, s) in seqs.iter().enumerate() {
            let r = at..at + s.len();
            if found[r.clone()].iter().all(|f| *f) {
                let v: Vec<f32> = rows
                    .slice(ndarray::s![r.clone(), ..])
                    .iter()
                    .copied()
                    .collect();
                out[i] = Some(v);
            }
            at = r.end;
        }
        b.touch();
    }
    let mut missing: Vec<usize> = (0..seqs.len()).filter(|&i| out[i].is_none()).collect();
    let computed = missing.len();
    // Similar lengths together: packed batches have no padding anyway, but attention
    // blocks of one size keep the threads evenly loaded.
    missing.sort_by_key(|&i| seqs[i].len());
    for chunk in missing.chunks(FLUSH_ITEMS) {
        let mut keys = Vec::new();
        let mut vals: Vec<f32> = Vec::new();
        for batch_idx in chunk.chunks(64) {
            let batch = Batch::pack(batch_idx.iter().map(|&i| seqs[i].as_slice()));
            let x = model.frozen_states(&batch, first_trainable, th);
            for (k, &i) in batch_idx.iter().enumerate() {
                let r = batch.offsets[k] * h..batch.offsets[k + 1] * h;
                let v = x[r].to_vec();
                if backbone.is_some() {
                    keys.extend((0..seqs[i].len()).map(|t| token_key(&fp, &seqs[i], t)));
                    vals.extend_from_slice(&v);
                }
                out[i] = Some(v);
            }
        }
        if let Some(b) = &backbone {
            let m = Array2::from_shape_vec((keys.len(), h), vals).expect("one row per key");
            b.append(&keys, m.view()).map_err(store_err)?;
        }
    }
    Ok((
        out.into_iter()
            .map(|v| v.expect("every item computed or found"))
            .collect(),
        computed,
    ))
}

/// Fingerprint of the blocks of `net` below `first`, at preprocessing `spec`.
pub fn frozen_image_fingerprint(net: &ConvNet, first: usize, spec: &ImageSpec) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"tl-finetune frozen image blocks v1\0");
    h.update(net.arch.as_bytes());
    h.update(
        serde_json::to_string(&(&net.blocks[..first], spec))
            .expect("plain data")
            .as_bytes(),
    );
    let end = net
        .slots
        .iter()
        .find(|s| s.depth >= first)
        .map_or(net.params.len(), |s| s.range.start);
    let stats_end = net
        .blocks
        .get(first)
        .map_or(net.stats.len(), |b| b.units[0].mean.start);
    for v in [&net.params[..end], &net.stats[..stats_end]] {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().to_hex().to_string()
}

/// The content key of an image under fingerprint `fp` (a file is read to hash it).
fn image_key(fp: &str, input: &ImageInput) -> Result<Key, FinetuneError> {
    Ok(match input {
        ImageInput::Pixels(r) => {
            tl_features::pixels_key(fp, r.width, r.height, r.channels, &r.data)
        }
        ImageInput::Encoded { bytes, .. } => tl_features::encoded_key(fp, bytes),
        ImageInput::Path(p) => {
            let bytes = std::fs::read(p).map_err(|e| FinetuneError::io(p, e))?;
            tl_features::encoded_key(fp, &bytes)
        }
    })
}

#[allow(clippy::too_many_arguments)]
/// The output `[C][h, w]` of the blocks of `net` below `first` for images `idx` of
/// `inputs` (preprocessed with `spec`, no augmentation), and how many had to be
/// computed (the rest came from `store`). `dim` is `C * h * w`.
pub fn frozen_image_states(
    net: &ConvNet,
    inputs: &[ImageInput],
    idx: &[usize],
    spec: &ImageSpec,
    first: usize,
    dim: usize,
    store: Option<&Store>,
    th: Threads,
) -> Result<(Vec<Vec<f32>>, usize), FinetuneError> {
    let fp = frozen_image_fingerprint(net, first, spec);
    let backbone: Option<BackboneStore> = match store {
        Some(s) => Some(
            s.backbone(StoreManifest {
                version: STORE_VERSION,
                fingerprint: fp.clone(),
                model: format!("{} blocks below fine-tuned block {first}", net.arch),
                settings: serde_json::json!({ "first_trainable": first, "image": spec }),
                dim,
                dtype: "float32".into(),
            })
            .map_err(store_err)?,
        ),
        None => None,
    };
    let mut out: Vec<Option<Vec<f32>>> = vec![None; idx.len()];
    let keys: Vec<Key> = idx
        .par_iter()
        .map(|&i| image_key(&fp, &inputs[i]))
        .collect::<Result<_, _>>()?;
    if let Some(b) = &backbone {
        let mut rows = Array2::<f32>::zeros((keys.len(), dim));
        let mut found = vec![false; keys.len()];
        b.lookup(&keys, &mut rows, &mut found).map_err(store_err)?;
        for (k, f) in found.iter().enumerate() {
            if *f {
                out[k] = Some(rows.row(k).to_vec());
            }
        }
        b.touch();
    }
    let missing: Vec<usize> = (0..idx.len()).filter(|&k| out[k].is_none()).collect();
    let r = spec.size as usize;
    for chunk in missing.chunks(FLUSH_ITEMS) {
        let mut vals: Vec<f32> = Vec::with_capacity(chunk.len() * dim);
        for part in chunk.chunks(64) {
            let rows: Vec<usize> = part.iter().map(|&k| idx[k]).collect();
            let x = crate::vision::preprocess_batch(inputs, &rows, spec)?;
            let n = rows.len();
            let x = conv::nchw_to_chwn(&x, n, 3, r * r);
            let (y, hw) = net.forward_blocks(x, n, (r, r), 0..first, th);
            let c = y.len() / (n * hw.0 * hw.1);
            for (j, &k) in part.iter().enumerate() {
                let v = conv::image_of_chwn(&y, c, hw.0 * hw.1, n, j);
                vals.extend_from_slice(&v);
                out[k] = Some(v);
            }
        }
        if let Some(b) = &backbone {
            let ks: Vec<Key> = chunk.iter().map(|&k| keys[k]).collect();
            let m = Array2::from_shape_vec((ks.len(), dim), vals).expect("one row per key");
            b.append(&ks, m.view()).map_err(store_err)?;
        }
    }
    Ok((
        out.into_iter()
            .map(|v| v.expect("every image computed or found"))
            .collect(),
        missing.len(),
    ))
}
