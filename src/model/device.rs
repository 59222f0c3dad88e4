//! Where the encoder parts (stem / middle / head) run: `[model] device`.
//!
//! Owns: turning the device string into a tract runtime (probe first, one log line on fallback),
//! preparing a typed model part on it, and the `Part` the `Segmenter` runs per frame. Must not:
//! change the graph (`cut.rs` does that), or panic without a GPU: tract-cuda's dependency probe
//! runs before anything touches cudarc, and preparation runs under `catch_unwind` because
//! tract-cuda `expect`s its context.
//!
//! - "cpu": the parts are tract's own CPU plans (`TypedSimpleState`), run directly, exactly as
//!   before the device was configurable: no boxing, no dynamic dispatch, no allocation per frame.
//! - "cuda": tract-cuda (`runtime_for_name("cuda")`, feature `cuda`); an error naming
//!   `[model] device` when it cannot run (no driver, a driver older than CUDA 12.6, a missing
//!   cuBLAS/cuDNN/NVRTC, or a build without `--features cuda`).
//! - "cuda-or-cpu": tract-cuda when it works, else the CPU plans with one warning line.
//!
//! Parts for a tract runtime are handed over decluttered, not optimised (`cut::*_decluttered`):
//! `Runtime::prepare` optimises for its own device, and tract-cuda only translates core ops, so
//! a graph already lowered to CPU kernels would silently stay on the CPU.

use tract_core::internal::*;
use tract_core::runtime::{RunOptions, Runnable, Runtime, State};

use crate::choice::Device;

/// Why the encoder cannot run on the requested device. One line each.
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error("[model] device {device:?}: tract-cuda is unavailable: {}", super::first_line(.source))]
    Unavailable {
        device: String,
        #[source]
        source: TractError,
    },
    #[error("[model] device {device:?}: this build has no CUDA support (rebuild with `--features cuda`)")]
    NotBuilt { device: String },
    #[error("[model] device {device:?}: preparing the {part} on tract-cuda: {}", super::first_line(.source))]
    Prepare {
        device: String,
        part: String,
        #[source]
        source: TractError,
    },
    #[error("[model] device {device:?}: tract-cuda panicked while preparing the {part}: {msg}")]
    Panicked { device: String, part: String, msg: String },
    #[error("[model] device {device:?}: the warm-up run on {runtime} failed: {}", super::first_line(.source))]
    WarmUp {
        device: String,
        runtime: String,
        #[source]
        source: TractError,
    },
}

/// The tract runtime the model parts are prepared on.
#[derive(Debug, Clone)]
pub struct ModelRuntime {
    rt: &'static dyn Runtime,
    device: Device,
    gpu: bool,
}

fn cpu_runtime() -> &'static dyn Runtime {
    static CPU: tract_core::runtime::DefaultRuntime = tract_core::runtime::DefaultRuntime;
    &CPU
}

/// tract-cuda, after its own probe (driver >= 12.6, cudart, NVRTC, cuBLAS, cuDNN); a panic inside
/// it becomes an error.
#[cfg(feature = "cuda")]
fn gpu_runtime(device: Device) -> Result<&'static dyn Runtime, GpuModelError> {
    let probed =
        std::panic::catch_unwind(super::cuda::cuda_runtime).unwrap_or_else(|p| Err(anyhow::anyhow!(panic_msg(&p))));
    probed.map_err(|source| GpuModelError::Unavailable { device: device.to_string(), source })
}

#[cfg(not(feature = "cuda"))]
fn gpu_runtime(device: Device) -> Result<&'static dyn Runtime, GpuModelError> {
    Err(GpuModelError::NotBuilt { device: device.to_string() })
}

impl ModelRuntime {
    /// "cpu", "cuda" (an error if tract-cuda cannot run) or "cuda-or-cpu" (falls back to the CPU
    /// with one warning line).
    pub fn select(device: Device) -> Result<ModelRuntime, GpuModelError> {
        let cpu = || ModelRuntime { rt: cpu_runtime(), device, gpu: false };
        let gpu = || gpu_runtime(device).map(|rt| ModelRuntime { rt, device, gpu: true });
        match device {
            Device::Cpu => Ok(cpu()),
            Device::Cuda => gpu(),
            Device::CudaOrCpu => gpu().or_else(|e| {
                log::warn!("{e}; running the encoder on the CPU");
                Ok(cpu())
            }),
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

    /// The `[model] device` this runtime was selected for.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Prepare `model` (one part, named `part` in errors; decluttered, see the module doc) on this
    /// runtime. Every lane spawns its own state from it.
    pub fn prepare(&self, part: &str, model: TypedModel) -> Result<Arc<dyn Runnable>, GpuModelError> {
        self.prepare_with_options(part, model, &RunOptions::default())
    }

    /// `prepare` with tract run options (memory sizing hints for symbolic dimensions).
    pub fn prepare_with_options(
        &self,
        part: &str,
        model: TypedModel,
        options: &RunOptions,
    ) -> Result<Arc<dyn Runnable>, GpuModelError> {
        let device = self.device.to_string();
        let err = |source| GpuModelError::Prepare { device: device.clone(), part: part.to_string(), source };
        let run = std::panic::AssertUnwindSafe(|| self.rt.prepare_with_options(model, options));
        match std::panic::catch_unwind(run) {
            Ok(r) => r.map(Arc::from).map_err(err),
            Err(p) => Err(GpuModelError::Panicked { device, part: part.to_string(), msg: panic_msg(&p) }),
        }
    }
}

fn panic_msg(p: &Box<dyn std::any::Any + Send>) -> String {
    let s = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
    s.unwrap_or_else(|| "panic".into()).lines().next().unwrap_or("").to_string()
}

/// Compute ops of a prepared part on the device and left on the CPU (for the load log line):
/// tract-cuda names its ops `Cuda*` and the generic copy ops `Gpu*`; sources, constants and the
/// host/device copies (`DeviceSync*`) are not counted.
pub fn op_placement(runnable: &dyn Runnable) -> Option<(usize, usize)> {
    let model = runnable.typed_model()?;
    let (mut gpu, mut cpu) = (0, 0);
    for n in model.nodes() {
        let name = n.op.name();
        if name.starts_with("Cuda") || name.starts_with("Gpu") {
            gpu += 1;
        } else if !(name == "Source" || name == "Const" || name.starts_with("DeviceSync")) {
            cpu += 1;
        }
    }
    Some((gpu, cpu))
}

/// One prepared part, built once and shared by every lane (the weights exist once).
#[derive(Debug, Clone)]
pub(crate) enum Plan {
    /// tract's CPU plan.
    Plain(Arc<TypedSimplePlan>),
    /// Prepared on a tract runtime (tract-cuda).
    Prepared(Arc<dyn Runnable>),
}

impl Plan {
    /// A state of this plan for one lane (its own activations; the weights stay shared).
    pub(crate) fn spawn(&self) -> TractResult<Part> {
        Ok(match self {
            Plan::Plain(p) => Part::Plain(p.spawn()?),
            Plan::Prepared(r) => Part::Prepared(r.spawn()?),
        })
    }
}

/// One lane's state of a part, run once per frame.
#[derive(Debug)]
pub(crate) enum Part {
    /// tract's CPU plan, run directly.
    Plain(TypedSimpleState),
    /// Prepared on a tract runtime (tract-cuda).
    Prepared(Box<dyn State>),
}

impl Part {
    #[inline]
    pub(crate) fn run(&mut self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match self {
            Part::Plain(s) => s.run(inputs),
            Part::Prepared(s) => s.run(inputs),
        }
    }
}

/// How the `Segmenter` prepares its parts.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    /// tract's CPU plans (`[model] device = "cpu"`, or the "cuda-or-cpu" fallback).
    Plain,
    /// `Runtime::prepare` on this runtime (tract-cuda; tract's CPU runtime in tests).
    Runtime(ModelRuntime),
}

impl Placement {
    /// The placement for `[model] device` (one warning line when "cuda-or-cpu" falls back).
    pub(crate) fn for_device(device: Device) -> Result<Placement, GpuModelError> {
        let rt = ModelRuntime::select(device)?;
        Ok(if rt.is_gpu() { Placement::Runtime(rt) } else { Placement::Plain })
    }

    /// "cpu" or the tract runtime's name, for log lines.
    pub(crate) fn name(&self) -> String {
        match self {
            Placement::Plain => "cpu".into(),
            Placement::Runtime(rt) => rt.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        let rt = ModelRuntime::select(Device::Cpu).unwrap();
        assert!(!rt.is_gpu());
        assert_eq!(rt.name(), "cpu");
        assert!(matches!(Placement::for_device(Device::Cpu), Ok(Placement::Plain)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_fails_and_cuda_or_cpu_falls_back() {
        let e = ModelRuntime::select(Device::Cuda).unwrap_err();
        assert!(matches!(e, GpuModelError::NotBuilt { .. }), "{e}");
        assert!(e.to_string().starts_with("[model] device \"cuda\""), "{e}");
        assert!(!ModelRuntime::select(Device::CudaOrCpu).unwrap().is_gpu());
        assert!(matches!(Placement::for_device(Device::CudaOrCpu), Ok(Placement::Plain)));
    }
}
