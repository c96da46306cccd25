//! Finding and loading the ONNX Runtime library, once per process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tl_assets::{Cache, Registry};

use crate::BackboneError;

/// The one ONNX Runtime environment of this process.
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();
/// Serialises the first initialisation; `ort` allows one environment per process.
static INIT: Mutex<()> = Mutex::new(());

/// Where the runtime library is looked for: `$ORT_DYLIB_PATH`, else the fetched copy in
/// the cache (`cargo xtask fetch onnxruntime`).
pub fn runtime_library_path() -> Result<PathBuf, BackboneError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    fetched_runtime_path(&Cache::from_env())
}

/// Where the fetched runtime library lies in `cache` (whether or not it is there yet).
pub fn fetched_runtime_path(cache: &Cache) -> Result<PathBuf, BackboneError> {
    let registry = Registry::builtin()?;
    let manifest = registry.get("onnxruntime")?;
    Ok(cache.file_path(manifest, &manifest.files[0].path))
}

/// The process-wide ONNX Runtime environment, loading the library on first use from
/// [`runtime_library_path`].
pub fn environment() -> Result<&'static ort::environment::Environment, BackboneError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    init_from(&runtime_library_path()?)
}

/// Load the runtime library at `path` and create the environment. Later calls return
/// the first environment whatever path they name: a process holds one runtime.
pub fn init_from(path: &Path) -> Result<&'static ort::environment::Environment, BackboneError> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    if !path.is_file() {
        return Err(BackboneError::RuntimeMissing {
            path: path.to_path_buf(),
        });
    }
    // dlopen maps a truncated library without complaint and the process dies of SIGBUS on
    // the first missing page: check the file holds everything its headers promise.
    check_elf(path).map_err(|message| BackboneError::RuntimeLoad {
        path: path.to_path_buf(),
        message,
    })?;
    let builder = ort::init_from(path).map_err(|e| BackboneError::RuntimeLoad {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("transfer-learning-rs")
        .with_telemetry(false)
        .build()
        .map_err(|e| BackboneError::RuntimeLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Checks that `path` is a complete 64-bit little-endian ELF shared library: every loadable
/// segment and the section header table lie inside the file.
pub fn check_elf(path: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut h = [0u8; 64];
    if size < 64 || f.read_exact(&mut h).is_err() || &h[..4] != b"\x7fELF" {
        return Err(format!(
            "not a shared library ({size} bytes, no ELF header); ORT_DYLIB_PATH must name libonnxruntime.so 1.31"
        ));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err("not a 64-bit little-endian library".into());
    }
    let u16_at = |b: &[u8], o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let truncated = |need: u64| {
        format!(
            "truncated: {size} bytes, its headers describe at least {need}; fetch or copy it again"
        )
    };
    let (phoff, shoff) = (u64_at(&h, 32), u64_at(&h, 40));
    let (phentsize, phnum) = (u16_at(&h, 54), u16_at(&h, 56));
    let (shentsize, shnum) = (u16_at(&h, 58), u16_at(&h, 60));
    let sh_end = shoff.saturating_add(shentsize.saturating_mul(shnum));
    if sh_end > size {
        return Err(truncated(sh_end));
    }
    let ph_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if phentsize < 56 || ph_end > size {
        return Err(truncated(ph_end));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).map_err(|e| e.to_string())?;
    f.read_exact(&mut ph).map_err(|e| e.to_string())?;
    for entry in ph.chunks_exact(phentsize as usize) {
        let kind = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        // PT_LOAD: the bytes dlopen maps.
        if kind == 1 {
            let end = u64_at(entry, 8).saturating_add(u64_at(entry, 32));
            if end > size {
                return Err(truncated(end));
            }
        }
    }
    Ok(())
}
