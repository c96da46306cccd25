//! The frozen part's outputs for `top:N` fine-tuning: computed once per item and kept
//! in the feature store (content-addressed like extracted features), so each epoch runs
//! only the trainable layers.
//!
//! One store row per token: key = BLAKE3(frozen-part fingerprint, the item's token ids,
//! the token's position), value = its hidden state. The fingerprint covers the model's
//! shape, the trainable boundary and every frozen weight, so a tuned model or another
//! boundary never reads another's states.

use ndarray::Array2;
use rayon::prelude::*;
use tl_features::{BackboneStore, Key, STORE_VERSION, Store, StoreManifest};

use crate::FinetuneError;
use crate::bert::{Batch, BertClassifier};
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
