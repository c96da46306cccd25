//! Opening ONNX Runtime sessions with this crate's settings.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use std::path::Path;

use crate::*;

pub(crate) fn open_session(
    name: &str,
    onnx: &Path,
    config: &ExecutionConfig,
) -> Result<Session, BackboneError> {
    let env = environment()?;
    let ort_err = |e: &dyn std::fmt::Display| BackboneError::Ort {
        model: name.to_string(),
        message: e.to_string(),
    };
    let threads = config
        .intra_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let level = match config.optimization {
        Optimization::Disable => GraphOptimizationLevel::Disable,
        Optimization::Basic => GraphOptimizationLevel::Level1,
        Optimization::Extended => GraphOptimizationLevel::Level2,
        Optimization::All => GraphOptimizationLevel::All,
    };
    let mut builder = Session::builder(env)
        .map_err(|e| ort_err(&e))?
        .with_intra_threads(threads)
        .map_err(|e| ort_err(&e))?
        .with_optimization_level(level)
        .map_err(|e| ort_err(&e))?;
    match config.device {
        Device::Cpu => {}
        #[cfg(feature = "cuda")]
        Device::Cuda(id) => {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| ort_err(&e))?;
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            return Err(BackboneError::Config {
                field: "device",
                message: "CUDA needs tl-backbone built with the `cuda` feature".into(),
            });
        }
    }
    if !onnx.is_file() {
        return Err(BackboneError::Io {
            path: onnx.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
        });
    }
    builder.commit_from_file(onnx).map_err(|e| ort_err(&e))
}

pub(crate) fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}
