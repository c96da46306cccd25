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

/// Reads the float initializers of an ONNX graph (the trained weights of an exported
/// model): `raw_data` or `float_data`, fp32 only. The protobuf is walked by hand (fields
/// 7 graph -> 5 initializer -> TensorProto 1 dims, 2 data_type, 4 float_data, 8 name,
/// 9 raw_data); everything else is skipped.
pub fn read_onnx_initializers(path: &Path) -> Result<Tensors, FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::io(path, e))?;
    let mut out = Tensors::new();
    let graph = pb_fields(&bytes)
        .map_err(|m| bad(path, m))?
        .into_iter()
        .find(|(f, _)| *f == 7)
        .ok_or_else(|| bad(path, "no graph: not an ONNX model"))?
        .1;
    for (field, init) in pb_fields(graph.bytes()).map_err(|m| bad(path, m))? {
        if field != 5 {
            continue;
        }
        let (mut dims, mut dtype, mut name, mut raw, mut floats) =
            (Vec::new(), 0u64, String::new(), None, Vec::new());
        for (f, v) in pb_fields(init.bytes()).map_err(|m| bad(path, m))? {
            match (f, v) {
                (1, Pb::Varint(d)) => dims.push(d as usize),
                (1, Pb::Bytes(b)) => {
                    let mut at = 0;
                    while at < b.len() {
                        dims.push(varint(b, &mut at).map_err(|m| bad(path, m))? as usize);
                    }
                }
                (2, Pb::Varint(t)) => dtype = t,
                (4, Pb::Bytes(b)) => floats.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
                (8, Pb::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
                (9, Pb::Bytes(b)) => raw = Some(b),
                _ => {}
            }
        }
        if dtype != 1 {
            continue; // not float32 (int64 constants and the like)
        }
        let data: Vec<f32> = match raw {
            Some(b) => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => floats,
        };
        if data.len() != dims.iter().product::<usize>() {
            return Err(bad(
                path,
                format!(
                    "initializer {name}: {} values for shape {dims:?}",
                    data.len()
                ),
            ));
        }
        out.insert(name, Tensor { shape: dims, data });
    }
    Ok(out)
}

/// A protobuf field value: varint, or length-delimited bytes (fixed-width fields are
/// skipped by the reader).
enum Pb<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Pb<'a> {
    fn bytes(&self) -> &'a [u8] {
        match self {
            Pb::Bytes(b) => b,
            _ => &[],
        }
    }
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The top-level fields of one protobuf message.
fn pb_fields(b: &[u8]) -> Result<Vec<(u64, Pb<'_>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        let v = match wire {
            0 => Pb::Varint(varint(b, &mut at)?),
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                Pb::Fixed
            }
            2 => {
                let n = varint(b, &mut at)? as usize;
                let end = at
                    .checked_add(n)
                    .filter(|&e| e <= b.len())
                    .ok_or("field runs past the end")?;
                let v = Pb::Bytes(&b[at..end]);
                at = end;
                v
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        if at > b.len() {
            return Err("field runs past the end".into());
        }
        out.push((field, v));
    }
    Ok(out)
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

/// How the tensors of a file are named: a prefix, renamed tensors (transformers name ->
/// file name) and tensors stored transposed (`[in, out]`).
#[derive(Debug, Clone, Default)]
pub struct Naming<'a> {
    /// Prepended to transformers names not in `renamed`.
    pub prefix: &'a str,
    /// transformers name -> name in the file.
    pub renamed: BTreeMap<String, String>,
    /// transformers names of tensors stored `[in, out]`.
    pub transposed: Vec<String>,
}

impl Naming<'_> {
    fn file_names(&self, name: &str) -> Vec<String> {
        match self.renamed.get(name) {
            Some(n) => vec![n.clone()],
            None => alternatives(&format!("{}{name}", self.prefix)).to_vec(),
        }
    }
}

/// Reads a BERT shape off the tensors of a file (word and position embeddings, layer
/// count, feed-forward width) with the given number of attention heads.
pub fn infer_config(
    tensors: &Tensors,
    naming: &Naming<'_>,
    heads: usize,
    origin: &Path,
) -> Result<BertConfig, FinetuneError> {
    let get = |name: &str| {
        naming
            .file_names(name)
            .iter()
            .find_map(|n| tensors.get(n))
            .map(|t| t.shape.clone())
    };
    let need = |name: &str| get(name).ok_or_else(|| bad(origin, format!("no tensor for {name}")));
    let word = need("embeddings.word_embeddings.weight")?;
    let pos = need("embeddings.position_embeddings.weight")?;
    let typ = need("embeddings.token_type_embeddings.weight")?;
    let inter = need("encoder.layer.0.intermediate.dense.weight")?;
    let layers = (0..)
        .take_while(|l| get(&format!("encoder.layer.{l}.output.LayerNorm.weight")).is_some())
        .count();
    let (Some(&hidden), Some(&vocab), Some(&positions), Some(&types)) =
        (word.get(1), word.first(), pos.first(), typ.first())
    else {
        return Err(bad(origin, "embedding tables are not matrices"));
    };
    let c = BertConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: inter
            .iter()
            .copied()
            .find(|&d| d != hidden)
            .unwrap_or(hidden),
        max_position_embeddings: positions,
        type_vocab_size: types,
        layer_norm_eps: 1e-12,
    };
    c.check().map_err(|m| bad(origin, m))?;
    Ok(c)
}

/// Builds a model from transformers `BertModel` tensors, named in the file as `naming`
/// says, with a new classifier of `classes` outputs (see
/// [`BertClassifier::init_classifier`]).
pub fn from_tensors(
    config: BertConfig,
    classes: usize,
    tensors: &BTreeMap<String, Tensor>,
    naming: &Naming<'_>,
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
            let names = naming.file_names(&src);
            let t = names.iter().find_map(|n| tensors.get(n)).ok_or_else(|| {
                bad(
                    origin,
                    format!(
                        "no tensor {} (a BERT encoder of {} layers needs it)",
                        names[0], config.num_hidden_layers
                    ),
                )
            })?;
            let parts = sources(&slot.name).len();
            let shape: Vec<usize> = match slot.shape[..] {
                [r, c] => vec![r / parts, c],
                [n] => vec![n / parts],
                _ => slot.shape.clone(),
            };
            let want: usize = shape.iter().product();
            if t.data.len() != want {
                return Err(bad(
                    origin,
                    format!(
                        "tensor {} has shape {:?}, the config needs {shape:?}",
                        names[0], t.shape
                    ),
                ));
            }
            let dst = &mut params[at..at + want];
            match shape[..] {
                // Stored [in, out]: transpose to PyTorch's [out, in].
                [r, c] if naming.transposed.contains(&src) => {
                    for o in 0..r {
                        for i in 0..c {
                            dst[o * c + i] = t.data[i * r + o];
                        }
                    }
                }
                _ => dst.copy_from_slice(&t.data),
            }
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
