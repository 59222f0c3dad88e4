//! The model: manifest, graph cutting with tract, and running the parts on the CPU or, with the
//! `cuda` feature, on tract-cuda (`[model] device`, see `device.rs`).

use serde::Deserialize;

use crate::choice::{Choice, Device};
use crate::problems::Problems;

crate::choice_enum! {
    /// `[model] cpu_ops`: our own CPU ops where they apply, or tract's throughout.
    pub enum CpuOps { Ailurus = "ailurus", Tract = "tract" }
}

/// `[model]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Path of the model manifest (models/*.toml).
    pub manifest: std::path::PathBuf,
    /// Square input side in pixels (a multiple of the patch size).
    pub input_size: u32,
    /// Where the encoder (stem, middle, head) runs: "cpu", "cuda" (tract-cuda; a start-up error
    /// when it cannot run, or without `--features cuda`) or "cuda-or-cpu" (falls back to the CPU
    /// with one log line).
    pub device: Choice<Device>,
    /// tract matmul threads (0 = one per core).
    pub threads: usize,
    /// Also build middle plans with the token count fixed, for `[reduce] m` and the unreduced
    /// token count at `input_size` (other token counts use the symbolic plan).
    pub fixed_middle: bool,
    /// "ailurus": the CPU plans get our own ops where they apply ([`attention::FusedAttention`],
    /// [`deconv::SubpixelDeconv`]); "tract": tract's ops throughout.
    pub cpu_ops: Choice<CpuOps>,
    /// The number format of the linear layers' products on the CPU: "f32", or "bf16" where the
    /// CPU has it (see `bf16.rs`; elsewhere one log line and f32).
    pub precision: Choice<bf16::Precision>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            manifest: "models/vit_s_focus.toml".into(),
            input_size: 448,
            device: Device::Cpu.into(),
            threads: 0,
            fixed_middle: false,
            cpu_ops: CpuOps::Ailurus.into(),
            precision: bf16::Precision::F32.into(),
        }
    }
}

impl ModelConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(self.input_size >= 14 && self.input_size <= 4096, "model", "input_size", || {
            format!("{} is not in 14..=4096", self.input_size)
        });
        self.device.check(p, "model", "device");
        self.cpu_ops.check(p, "model", "cpu_ops");
        self.precision.check(p, "model", "precision");
    }
}

pub mod attention;
pub mod bf16;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cut;
pub mod deconv;
pub mod delta;
pub mod device;
pub mod f16;
pub mod inspect;
pub mod io;
pub mod isa;
pub mod lane;
pub mod layernorm;
pub mod linear;
pub mod manifest;
pub mod memory;
pub mod mlp;
pub mod pointwise;
pub mod segmenter;
pub mod sgemm;
pub mod share;
pub mod softmax;
pub mod weight;

pub use device::{GpuModelError, ModelRuntime};
pub use io::Io;
pub use lane::{f32s, SegmenterLane};
pub use manifest::Manifest;
pub use segmenter::{Segmenter, SegmenterOptions};

/// Start-up errors of the model: each names the file (and tensor) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path}: not found (run tools/fetch_assets.sh to fetch the default model)")]
    Missing { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path}: {msg}")]
    Manifest { path: String, msg: String },
    #[error("manifest {path}: {}", .source.message())]
    ManifestParse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("model file {path}: sha256 is {got}, the manifest says {want}")]
    Checksum { path: String, got: String, want: String },
    #[error("model file {path}: not a loadable ONNX model: {}", first_line(.source))]
    Onnx {
        path: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("model {path}: {}", first_line(.source))]
    Build {
        path: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("model {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("model {path}: {source}")]
    Reducer {
        path: String,
        #[source]
        source: crate::reduce::BuildError,
    },
    /// `[model] device` cannot be honoured (the message names the field).
    #[error("model {path}: {source}")]
    Device {
        path: String,
        #[source]
        source: GpuModelError,
    },
    #[error("delta {path}: {msg}")]
    Delta { path: String, msg: String },
}

/// tract errors chain several lines of context; keep the outermost and the root cause.
fn first_line(e: &anyhow::Error) -> String {
    let top = e.to_string();
    match e.chain().last() {
        Some(root) if root.to_string() != top => format!("{top}: {root}"),
        _ => top,
    }
}

/// Apply the process-wide CPU settings of `[model]`: tract's thread pool (`threads`) and the
/// ops of the CPU plans built from now on (`cpu_ops`, `precision`: bf16 needs our ops).
pub fn configure_cpu(model: &ModelConfig) {
    memory::tune();
    set_threads(model.threads);
    let own = model.cpu_ops.get() == CpuOps::Ailurus;
    cut::set_own_ops(own);
    let want = model.precision.get();
    if want != bf16::Precision::F32 && !own {
        log::warn!("[model] precision = \"{want}\" needs cpu_ops = \"ailurus\"; the products stay f32");
        bf16::set_precision(bf16::Precision::F32);
    } else {
        bf16::set_precision(want);
    }
    log::info!("{}", isa::machine_line());
}

/// Set tract's matmul thread count for the process (0 = one per core).
pub fn set_threads(threads: usize) {
    let n = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    use tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(if n > 1 { Executor::multithread(n) } else { Executor::SingleThread });
}
