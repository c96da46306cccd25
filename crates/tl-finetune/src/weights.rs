//! Reading and writing weights: safetensors files (the format transformers and
//! sentence-transformers publish), parsed here without unsafe code or extra crates.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::FinetuneError;
use crate::bert::{BertClassifier, BertConfig, Slots};

/// Tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;
/// A safetensors file's `__metadata__` strings.
pub type Metadata = BTreeMap<String, String>;

/// One tensor read from a safetensors file.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, converted to f32.
    pub data: Vec<f32>,
}

fn bad(path: &Path, msg: impl Into<String>) -> FinetuneError {
    FinetuneError::Weights {
        path: path.to_path_buf(),
        message: msg.into(),
    }
}

/// Reads every floating-point tensor of a safetensors file (F32, F16 and BF16 are
/// converted to f32; integer tensors such as `position_ids` are skipped).
pub fn read_safetensors(path: &Path) -> Result<Tensors, FinetuneError> {
    Ok(read_with_metadata(path)?.0)
}

/// [`read_safetensors`], also returning the file's `__metadata__` strings.
pub fn read_with_metadata(path: &Path) -> Result<(Tensors, Metadata), FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::io(path, e))?;
    if bytes.len() < 8 {
        return Err(bad(path, "shorter than the 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 || n > 100 << 20 {
        return Err(bad(path, format!("header length {n} exceeds the file")));
    }
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(path, format!("header is not a JSON object: {e}")))?;
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    let mut meta = BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            if let Some(m) = info.as_object() {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        meta.insert(k.clone(), v.to_string());
                    }
                }
            }
            continue;
        }
        let dtype = info["dtype"]
            .as_str()
            .ok_or_else(|| bad(path, format!("tensor {name}: no dtype")))?;
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .ok_or_else(|| bad(path, format!("tensor {name}: shape is not a list of sizes")))?;
        let offs: Vec<usize> = info["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .ok_or_else(|| bad(path, format!("tensor {name}: no data_offsets")))?;
        let [start, end] = offs[..] else {
            return Err(bad(
                path,
                format!("tensor {name}: data_offsets needs two numbers"),
            ));
        };
        if start > end || end > data.len() {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: bytes {start}..{end} outside the {} data bytes",
                    data.len()
                ),
            ));
        }
        let raw = &data[start..end];
        let count = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let (width, conv): (usize, fn(&[u8]) -> f32) = match dtype {
            "F32" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            "F16" => (2, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            "BF16" => (2, |b| {
                f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
            }),
            _ => continue,
        };
        if count.and_then(|c| c.checked_mul(width)) != Some(raw.len()) {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: {} bytes do not hold shape {shape:?} of {dtype}",
                    raw.len()
                ),
            ));
        }
        let data = raw.chunks_exact(width).map(conv).collect();
        out.insert(name, Tensor { shape, data });
    }
    Ok((out, meta))
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: renormalise.
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Writes tensors as an F32 safetensors file (atomically: temp name, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<(), FinetuneError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut at = 0usize;
    for (name, shape, data) in tensors {
        let end = at + data.len() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("JSON of plain values");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + at);
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    for (_, _, data) in tensors {
        for v in data.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    crate::atomic_write(path, &bytes)
}

/// The transformers tensors that make up one of our stacked or renamed slots.
fn sources(name: &str) -> Vec<String> {
    if let Some(p) = name.strip_suffix("attention.self.qkv.weight") {
        ["query", "key", "value"]
            .iter()
            .map(|w| format!("{p}attention.self.{w}.weight"))
            .collect()
    } else if let Some(p) = name.strip_suffix("attention.self.qkv.bias") {
        ["query", "key", "value"]
            .iter()
            .map(|w| format!("{p}attention.self.{w}.bias"))
            .collect()
    } else {
        vec![name.to_string()]
    }
}

/// Older BERT checkpoints call LayerNorm's scale and shift `gamma` and `beta`.
fn alternatives(name: &str) -> [String; 2] {
    [
        name.to_string(),
        name.replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta"),
    ]
}

/// Builds a model from transformers `BertModel` tensors (names optionally under
/// `prefix`, e.g. `bert.`). The classifier starts at zero with `classes` outputs.
pub fn from_tensors(
    config: BertConfig,
    classes: usize,
    tensors: &BTreeMap<String, Tensor>,
    prefix: &str,
    origin: &Path,
) -> Result<BertClassifier, FinetuneError> {
    config.check().map_err(|m| bad(origin, m))?;
    let slots = Slots::new(&config, classes);
    let mut params = vec![0.0f32; slots.len];
    for slot in &slots.all {
        if slot.name.starts_with("classifier.") {
            continue;
        }
        let mut at = slot.range.start;
        for src in sources(&slot.name) {
            let t = alternatives(&format!("{prefix}{src}"))
                .iter()
                .find_map(|n| tensors.get(n))
                .ok_or_else(|| {
                    bad(
                        origin,
                        format!(
                            "no tensor {prefix}{src} (a BERT encoder of {} layers needs it)",
                            config.num_hidden_layers
                        ),
                    )
                })?;
            let want: usize = if slot.shape.len() == 2 && sources(&slot.name).len() == 3 {
                slot.shape[0] / 3 * slot.shape[1]
            } else if sources(&slot.name).len() == 3 {
                slot.shape[0] / 3
            } else {
                slot.shape.iter().product()
            };
            if t.data.len() != want {
                return Err(bad(
                    origin,
                    format!(
                        "tensor {prefix}{src} has shape {:?}, the config needs {want} values",
                        t.shape
                    ),
                ));
            }
            params[at..at + want].copy_from_slice(&t.data);
            at += want;
        }
    }
    if let Some((i, v)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let name = slots
            .all
            .iter()
            .find(|s| s.range.contains(&i))
            .map(|s| s.name.clone());
        return Err(bad(
            origin,
            format!(
                "tensor {} holds a non-finite value {v}",
                name.unwrap_or_default()
            ),
        ));
    }
    let mut model = BertClassifier {
        config,
        classes,
        slots,
        params,
    };
    model.init_classifier();
    Ok(model)
}

/// The encoder's tensors under transformers names (query, key and value split again),
/// for export.
pub fn encoder_tensors(model: &BertClassifier) -> Vec<(String, Vec<usize>, &[f32])> {
    let h = model.config.hidden_size;
    let mut out = Vec::new();
    for slot in &model.slots.all {
        if slot.name.starts_with("classifier.") {
            continue;
        }
        let data = &model.params[slot.range.clone()];
        let srcs = sources(&slot.name);
        if srcs.len() == 3 {
            let part = data.len() / 3;
            for (k, name) in srcs.into_iter().enumerate() {
                let shape = if slot.shape.len() == 2 {
                    vec![h, h]
                } else {
                    vec![h]
                };
                out.push((name, shape, &data[k * part..(k + 1) * part]));
            }
        } else {
            out.push((slot.name.clone(), slot.shape.clone(), data));
        }
    }
    out
}
