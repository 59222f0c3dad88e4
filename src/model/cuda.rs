//! The encoder parts (stem / middle / head) on tract-cuda when `[model] device` is "cuda" or
//! "cuda-or-cpu".
//!
//! Owns: choosing the tract runtime for a device string (probe first, one log line on fallback)
//! and preparing a typed model on it into a runnable state. Must not: change the graph (`cut.rs`
//! does that), or panic without a GPU: tract-cuda's dependency probe runs before anything touches
//! cudarc, and preparation runs under `catch_unwind` because tract-cuda `expect`s its context.
//!
//! tract-cuda is built with cudarc `cuda-12060` (Cargo.toml: `default-features = false`), so it
//! needs a driver with CUDA API >= 12.6 (JetPack 6.1+), plus cudart, NVRTC, cuBLAS and cuDNN.

use tract_core::internal::*;
use tract_core::runtime::{Runtime, State};

/// Why the encoder cannot run on the requested device. One line each.
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error("[model] device {device:?}: tract-cuda is unavailable: {}", super::first_line(.source))]
    Unavailable {
        device: String,
        #[source]
        source: TractError,
    },
    #[error("[model] device {device:?}: preparing the {part} on tract-cuda: {}", super::first_line(.source))]
    Prepare {
        device: String,
        part: String,
        #[source]
        source: TractError,
    },
    #[error("[model] device {device:?}: tract-cuda panicked while preparing the {part}: {msg}")]
    Panicked { device: String, part: String, msg: String },
    #[error("[model] device {device:?} is not one of cpu, cuda, cuda-or-cpu")]
    Unknown { device: String },
}

/// The tract runtime the model parts are prepared on.
#[derive(Debug, Clone)]
pub struct ModelRuntime {
    rt: &'static dyn Runtime,
    device: String,
    gpu: bool,
}

/// tract-cuda's runtime, after its own probe (driver >= 12.6, cudart, NVRTC, cuBLAS, cuDNN).
fn cuda_runtime() -> TractResult<&'static dyn Runtime> {
    tract_cuda::utils::ensure_cuda_runtime_dependencies("tract-cuda dependencies")?;
    tract_core::runtime::runtime_for_name("cuda")?.context("tract-cuda runtime is not registered")
}

fn cpu_runtime() -> &'static dyn Runtime {
    static CPU: tract_core::runtime::DefaultRuntime = tract_core::runtime::DefaultRuntime;
    &CPU
}

impl ModelRuntime {
    /// "cpu", "cuda" (an error if tract-cuda cannot run) or "cuda-or-cpu" (falls back to the CPU
    /// with one warning line).
    pub fn select(device: &str) -> Result<ModelRuntime, GpuModelError> {
        let cpu = || ModelRuntime { rt: cpu_runtime(), device: device.to_string(), gpu: false };
        let gpu = || {
            let probed = std::panic::catch_unwind(cuda_runtime).unwrap_or_else(|p| Err(anyhow::anyhow!(panic_msg(&p))));
            probed
                .map(|rt| ModelRuntime { rt, device: device.to_string(), gpu: true })
                .map_err(|source| GpuModelError::Unavailable { device: device.to_string(), source })
        };
        match device {
            "cpu" => Ok(cpu()),
            "cuda" => gpu(),
            "cuda-or-cpu" => gpu().or_else(|e| {
                log::warn!("{e}; running the encoder on the CPU");
                Ok(cpu())
            }),
            _ => Err(GpuModelError::Unknown { device: device.to_string() }),
        }
    }

    /// True when the parts run on tract-cuda.
    pub fn is_gpu(&self) -> bool {
        self.gpu
    }

    /// The tract runtime name ("cuda" or "cpu").
    pub fn name(&self) -> String {
        self.rt.name().to_string()
    }

    /// Prepare `model` (one part, named `part` in errors) on this runtime and spawn its state.
    pub fn prepare(&self, part: &str, model: TypedModel) -> Result<Box<dyn State>, GpuModelError> {
        let err = |source| GpuModelError::Prepare { device: self.device.clone(), part: part.to_string(), source };
        let run = std::panic::AssertUnwindSafe(|| self.rt.prepare(model).and_then(|r| r.spawn()));
        match std::panic::catch_unwind(run) {
            Ok(r) => r.map_err(err),
            Err(p) => {
                Err(GpuModelError::Panicked { device: self.device.clone(), part: part.to_string(), msg: panic_msg(&p) })
            }
        }
    }
}

fn panic_msg(p: &Box<dyn std::any::Any + Send>) -> String {
    let s = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
    s.unwrap_or_else(|| "panic".into()).lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_unknown_devices_fail() {
        let rt = ModelRuntime::select("cpu").unwrap();
        assert!(!rt.is_gpu());
        assert_eq!(rt.name(), "cpu");
        assert!(matches!(ModelRuntime::select("tpu"), Err(GpuModelError::Unknown { .. })));
    }
}
