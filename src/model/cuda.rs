//! tract-cuda for the encoder parts (feature `cuda`): its runtime, after its own probe.
//!
//! Owns: finding the tract-cuda runtime. Device selection, preparation and the fallback live in
//! `device.rs` (they also exist without the feature); this module re-exports them under the path
//! the GPU tests use.
//!
//! tract-cuda is built with cudarc `cuda-12060` (Cargo.toml: `default-features = false`), so it
//! needs a driver with CUDA API >= 12.6 (JetPack 6.1+), plus cudart, NVRTC, cuBLAS and cuDNN.

use tract_core::internal::*;
use tract_core::runtime::Runtime;

pub use super::device::{GpuModelError, ModelRuntime};

/// tract-cuda's runtime, after its own probe (driver >= 12.6, cudart, NVRTC, cuBLAS, cuDNN).
/// It can panic inside cudarc: call it under `catch_unwind` (`device.rs` does).
pub(crate) fn cuda_runtime() -> TractResult<&'static dyn Runtime> {
    tract_cuda::utils::ensure_cuda_runtime_dependencies("tract-cuda dependencies")?;
    tract_core::runtime::runtime_for_name("cuda")?.context("tract-cuda runtime is not registered")
}
