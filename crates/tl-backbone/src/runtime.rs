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
    let registry = Registry::builtin()?;
    let manifest = registry.get("onnxruntime")?;
    Ok(Cache::from_env().file_path(manifest, &manifest.files[0].path))
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
