//! Reading PyTorch's legacy (pre-1.6, non-zip) checkpoint format, the format of the
//! two image backbones' published weights, with no Python and no torch.
//!
//! The layout (see `tools/convert/torch_legacy.py`, its Python twin): a magic-number
//! pickle, a protocol pickle, a sys-info pickle, the object pickle (tensors refer to
//! storages through persistent ids), a pickle listing the storage keys, then each
//! storage as a little-endian `i64` element count and its raw bytes, in key order.
//!
//! The pickle machine here understands the opcodes those files use (protocols 2 to 4)
//! and builds plain values; it calls nothing, so a hostile file can at worst be refused.
//! Only `collections.OrderedDict`, `torch._utils._rebuild_tensor(_v2)` and
//! `torch.*Storage` globals are accepted.

use std::collections::BTreeMap;
use std::path::Path;

use crate::FinetuneError;
use crate::weights::{Tensor, Tensors};

const MAGIC: u128 = 0x1950A86A20F9469CFC6C;
const PROTOCOL: i64 = 1001;
/// Nesting and size bounds: a damaged file is refused instead of exhausting memory.
const MAX_STACK: usize = 1 << 20;

type StorageTypes = BTreeMap<String, (String, u64)>;

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// The key of a storage named by a persistent id.
    Storage(String),
    /// A tensor view: storage key, offset, size, stride.
    Tensor(String, usize, Vec<usize>, Vec<usize>),
    Mark,
}

fn err(path: &Path, msg: impl Into<String>) -> FinetuneError {
    FinetuneError::Weights {
        path: path.to_path_buf(),
        message: msg.into(),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err(format!("truncated at byte {}", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| format!("unterminated line at byte {}", self.at))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
}

fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
    let m = stack
        .iter()
        .rposition(|v| matches!(v, Value::Mark))
        .ok_or("no MARK on the stack")?;
    let items = stack.split_off(m + 1);
    stack.pop();
    Ok(items)
}

fn as_usize(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 && *i <= usize::MAX as i128 => Ok(*i as usize),
        other => Err(format!("expected a non-negative integer, found {other:?}")),
    }
}

fn usizes(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        other => Err(format!("expected a tuple of sizes, found {other:?}")),
    }
}

/// What calling a global with `args` gives; only the few globals checkpoints use.
fn call(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = f else {
        return Err(format!("REDUCE on a non-callable {f:?}"));
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => return Err(format!("REDUCE arguments are not a tuple: {other:?}")),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{name} with {} arguments", args.len()));
            }
            let Value::Storage(key) = &args[0] else {
                return Err("a tensor whose storage is not a persistent storage".into());
            };
            Ok(Value::Tensor(
                key.clone(),
                as_usize(&args[1])?,
                usizes(&args[2])?,
                usizes(&args[3])?,
            ))
        }
        _ => Err(format!(
            "refusing to call {module}.{name} from a checkpoint"
        )),
    }
}

/// Runs one pickle from `r` and returns its value.
/// Every storage a persistent id names is recorded in `storages` (key -> type, count).
fn unpickle(r: &mut Reader, storages: &mut StorageTypes) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: BTreeMap<u32, Value> = BTreeMap::new();
    let pop = |s: &mut Vec<Value>| s.pop().ok_or_else(|| "stack underflow".to_string());
    loop {
        if stack.len() > MAX_STACK {
            return Err("pickle stack too deep".into());
        }
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            } // PROTO
            0x95 => {
                r.take(8)?;
            } // FRAME
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b']' => stack.push(Value::List(Vec::new())),
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err("APPEND to a non-list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err("APPENDS to a non-list".into()),
                }
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut d = Vec::new();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Value::Dict(d));
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err("SETITEM on a non-dict".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err("SETITEMS on a non-dict".into()),
                }
            }
            b'J' => stack.push(Value::Int(i32::from_le_bytes(
                r.take(4)?.try_into().expect("4 bytes"),
            ) as i128)),
            b'K' => stack.push(Value::Int(r.u8()? as i128)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(
                r.take(2)?.try_into().expect("2 bytes"),
            ) as i128)),
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 16 {
                    return Err("integer wider than 128 bits".into());
                }
                let mut buf = [0u8; 16];
                buf[..n].copy_from_slice(bytes);
                if n > 0 && bytes[n - 1] & 0x80 != 0 {
                    buf[n..].fill(0xff);
                }
                stack.push(Value::Int(i128::from_le_bytes(buf)));
            }
            b'G' => {
                r.take(8)?;
                stack.push(Value::Float);
            }
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'N' => stack.push(Value::None),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'C' => {
                let n = r.u8()? as usize;
                r.take(n)?;
                stack.push(Value::Bytes);
            }
            b'B' => {
                let n = r.u32()? as usize;
                r.take(n)?;
                stack.push(Value::Bytes);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(call(f, args)?);
            }
            b'b' => {
                // BUILD sets attributes (OrderedDict's `_metadata`, a tensor's hooks):
                // nothing the weights depend on.
                pop(&mut stack)?;
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(i, stack.last().cloned().ok_or("BINPUT on an empty stack")?);
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, stack.last().cloned().ok_or("BINPUT on an empty stack")?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or("MEMOIZE on an empty stack")?);
            }
            b'h' => {
                let i = r.u8()? as u32;
                stack.push(memo.get(&i).cloned().ok_or(format!("BINGET {i} unset"))?);
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(memo.get(&i).cloned().ok_or(format!("BINGET {i} unset"))?);
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let Value::Tuple(p) = pid else {
                    return Err("a persistent id that is not a tuple".into());
                };
                match p.as_slice() {
                    [
                        Value::Str(kind),
                        Value::Global(_, ty),
                        Value::Str(key),
                        _,
                        numel,
                        ..,
                    ] if kind == "storage" => {
                        let numel = as_usize(numel)? as u64;
                        storages.insert(key.clone(), (ty.clone(), numel));
                        stack.push(Value::Storage(key.clone()))
                    }
                    _ => return Err("a persistent id that is not a storage".into()),
                }
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let v = stack.last().cloned().ok_or("DUP on an empty stack")?;
                stack.push(v);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    r.at - 1
                ));
            }
        }
    }
}

fn element_size(ty: &str) -> Option<usize> {
    Some(match ty {
        "FloatStorage" | "IntStorage" => 4,
        "DoubleStorage" | "LongStorage" => 8,
        "HalfStorage" | "ShortStorage" | "BFloat16Storage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

/// Reads every floating-point tensor of a legacy PyTorch state dict (`.pt`/`.pth`
/// written by `torch.save` before 1.6, or with `_use_new_zipfile_serialization=False`),
/// keyed by name. Integer tensors (`num_batches_tracked`) are skipped.
pub fn read_torch_legacy(path: &Path) -> Result<Tensors, FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::io(path, e))?;
    if bytes.starts_with(b"PK") {
        return Err(err(
            path,
            "a zip-format PyTorch checkpoint; only the legacy format is read (re-save it with `_use_new_zipfile_serialization=False` or as safetensors)",
        ));
    }
    let mut r = Reader { b: &bytes, at: 0 };
    let mut types = StorageTypes::new();
    let e = |m: String| err(path, m);
    match unpickle(&mut r, &mut types).map_err(e)? {
        Value::Int(m) if m as u128 == MAGIC => {}
        _ => return Err(err(path, "not a PyTorch checkpoint (bad magic number)")),
    }
    match unpickle(&mut r, &mut types).map_err(e)? {
        Value::Int(p) if p as i64 == PROTOCOL => {}
        other => return Err(err(path, format!("unsupported protocol {other:?}"))),
    }
    if let Value::Dict(info) = unpickle(&mut r, &mut types).map_err(e)? {
        for (k, v) in info {
            if matches!(&k, Value::Str(s) if s == "little_endian")
                && matches!(v, Value::Bool(false))
            {
                return Err(err(path, "a big-endian checkpoint"));
            }
        }
    }
    let obj = unpickle(&mut r, &mut types).map_err(e)?;
    let Value::Dict(entries) = obj else {
        return Err(err(path, "the checkpoint is not a state dict"));
    };
    let keys = match unpickle(&mut r, &mut types).map_err(e)? {
        Value::List(k) => k,
        _ => return Err(err(path, "the storage key list is missing")),
    };
    // Storage types and sizes, as the tensors declared them.
    let mut declared: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut views = Vec::new();
    for (k, v) in entries {
        let Value::Str(name) = k else { continue };
        if let Value::Tensor(key, off, size, stride) = v {
            views.push((name, key, off, size, stride));
        }
    }
    let mut storages: BTreeMap<String, (usize, &[u8])> = BTreeMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(err(path, "a storage key that is not a string"));
        };
        let (ty, numel) = types
            .get(&key)
            .cloned()
            .ok_or_else(|| err(path, format!("storage {key} is never referred to")))?;
        let size = element_size(&ty)
            .ok_or_else(|| err(path, format!("unsupported storage type torch.{ty}")))?;
        let n = i64::from_le_bytes(
            r.take(8)
                .map_err(|m| err(path, format!("storage {key}: {m}")))?
                .try_into()
                .expect("8 bytes"),
        );
        if n < 0 || n as u64 != numel {
            return Err(err(
                path,
                format!("storage {key} holds {n} elements, the tensors declared {numel}"),
            ));
        }
        let raw = r
            .take(n as usize * size)
            .map_err(|m| err(path, format!("storage {key} is truncated ({m})")))?;
        declared.insert(key.clone(), (ty.clone(), numel));
        storages.insert(key, (size, raw));
    }
    let mut out = Tensors::new();
    for (name, key, off, size, stride) in views {
        let (ty, _) = declared
            .get(&key)
            .ok_or_else(|| err(path, format!("{name}: its storage {key} was never written")))?;
        if ty != "FloatStorage" {
            continue;
        }
        let (_, raw) = storages[&key];
        let numel = raw.len() / 4;
        if size.len() != stride.len() {
            return Err(err(path, format!("{name}: size and stride differ in rank")));
        }
        let count: usize = size.iter().product();
        let last = off
            + size
                .iter()
                .zip(&stride)
                .map(|(s, st)| s.saturating_sub(1) * st)
                .sum::<usize>();
        if count > 0 && last >= numel {
            return Err(err(
                path,
                format!(
                    "{name}: a tensor of size {size:?} overruns its storage ({numel} elements)"
                ),
            ));
        }
        let get = |i: usize| f32::from_le_bytes(raw[i * 4..i * 4 + 4].try_into().expect("4"));
        let mut data = Vec::with_capacity(count);
        let mut idx = vec![0usize; size.len()];
        for _ in 0..count {
            let at = off + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            data.push(get(at));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out.insert(name, Tensor { shape: size, data });
    }
    Ok(out)
}
