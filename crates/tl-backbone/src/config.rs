//! How a backbone runs: device, graph optimisation, threads, batch size, failure policy.

use serde::Serialize;

use crate::*;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this GPU (needs the `cuda` feature and a CUDA
    /// build of ONNX Runtime).
    Cuda(i32),
}

/// Graph optimisation level of ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Optimization {
    /// No graph rewrites.
    Disable,
    /// Redundancy elimination and constant folding.
    Basic,
    /// Plus node fusions.
    Extended,
    /// Everything, including layout optimisations.
    #[default]
    All,
}

/// What to do when one item cannot be embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Return the first item error.
    Fail,
    /// Embed the rest; the failed rows are NaN and listed in [`Embeddings::errors`].
    Skip,
}

/// Execution settings. These do not change the output, so they are not part of the
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionConfig {
    /// Threads inside each operator; `None` = all cores.
    pub intra_threads: Option<usize>,
    /// Items per `session.run`.
    pub batch_size: usize,
    /// Graph optimisation level.
    pub optimization: Optimization,
    /// CPU or CUDA.
    pub device: Device,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            intra_threads: None,
            batch_size: 32,
            optimization: Optimization::All,
            device: Device::Cpu,
            progress: false,
        }
    }
}

impl ExecutionConfig {
    /// Validate the settings.
    pub fn check(&self) -> Result<(), BackboneError> {
        if self.batch_size == 0 {
            return Err(BackboneError::Config {
                field: "batch_size",
                message: "must be at least 1".into(),
            });
        }
        if self.intra_threads == Some(0) {
            return Err(BackboneError::Config {
                field: "intra_threads",
                message: "must be at least 1 (or unset for all cores)".into(),
            });
        }
        Ok(())
    }
}
