//! Which instruction set our CPU ops run on (issue #18): detected once at start-up, one binary
//! for every CPU (no `target-cpu=native`).
//!
//! - `avx512`: x86-64 with AVX-512 F/BW/VL (and FMA): the GEMMs of the linear layers and of the
//!   fused attention on our own AVX-512 kernel ([`super::sgemm`]).
//! - `avx2`: x86-64 with AVX2 + FMA: the `gemm` crate (its AVX2/FMA kernels).
//! - `neon`: aarch64: the `gemm` crate (its NEON kernels).
//! - `portable`: anything else: our own plain-Rust kernel ([`super::sgemm`]), vectorised by the
//!   compiler for the build's baseline.
//!
//! `AILURUS_ISA=avx512|avx2|neon|portable` forces a level (one the CPU lacks is refused with a
//! warning, falling back to the detected one); tests call the `*_at` functions with an explicit
//! level instead, so they can compare every level in one process.

use std::sync::OnceLock;

use crate::choice::Named;

crate::choice_enum! {
    /// An instruction-set level of the CPU ops.
    pub enum Level { Avx512 = "avx512", Avx2 = "avx2", Neon = "neon", Portable = "portable" }
}

impl Level {
    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                use std::arch::is_x86_feature_detected as has;
                has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The highest level this CPU supports (what the bench header calls "detected").
    pub fn detect() -> Level {
        [Level::Avx512, Level::Avx2, Level::Neon].into_iter().find(|l| l.supported()).unwrap_or(Level::Portable)
    }

    /// Every level this CPU supports, best first (what the tests run).
    pub fn all_supported() -> Vec<Level> {
        [Level::Avx512, Level::Avx2, Level::Neon, Level::Portable].into_iter().filter(|l| l.supported()).collect()
    }

    /// The GEMM kernel this level dispatches to (bench header and CSV).
    pub fn gemm_kernel(self) -> &'static str {
        match self {
            Level::Avx512 => "ailurus-avx512",
            Level::Avx2 => "gemm-crate-avx2",
            Level::Neon => "gemm-crate-neon",
            Level::Portable => "ailurus-portable",
        }
    }
}

/// The level whose GEMM kernel is fastest where measured: the `gemm` crate's AVX2 kernel
/// wherever the CPU has AVX2, also with AVX-512. On the one AVX-512 CPU measured (AMD EPYC Zen 4,
/// whose AVX-512 units are 256 bits wide), our AVX-512 kernel reached 0.85-0.96x of it on the
/// model's shapes (`examples/gemm_shapes.rs`); on CPUs with full-width AVX-512 (Intel Xeon) it
/// is untimed, so it runs only when asked (`AILURUS_ISA=avx512`).
pub fn preferred() -> Level {
    [Level::Avx2, Level::Avx512, Level::Neon].into_iter().find(|l| l.supported()).unwrap_or(Level::Portable)
}

/// The level the CPU ops use in this process: `AILURUS_ISA` if set and supported, else
/// [`preferred`].
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = preferred();
        let Ok(want) = std::env::var("AILURUS_ISA") else { return detected };
        match Level::from_name(&want) {
            Some(l) if l.supported() => l,
            Some(l) => {
                log::warn!("AILURUS_ISA={l}: this CPU lacks it; using {detected}");
                detected
            }
            None => {
                log::warn!("AILURUS_ISA={want:?} is not one of avx512, avx2, neon, portable; using {detected}");
                detected
            }
        }
    })
}

/// The CPU model name (from /proc/cpuinfo on Linux), for bench headers.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let key = |k: &str| {
        info.lines().find(|l| l.starts_with(k)).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string())
    };
    key("model name")
        .or_else(|| key("CPU part").map(|p| format!("CPU part {p}")))
        .unwrap_or_else(|| std::env::consts::ARCH.into())
}

/// The CPU's features that matter here, as one short list (bench header).
pub fn cpu_features() -> String {
    let mut f: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let all = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512vnni", has!("avx512vnni")),
            ("avx512bf16", has!("avx512bf16")),
            ("avx512fp16", has!("avx512fp16")),
        ];
        f.extend(all.iter().filter(|(_, on)| *on).map(|(n, _)| *n));
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        let all =
            [("neon", has!("neon")), ("fp16", has!("fp16")), ("dotprod", has!("dotprod")), ("bf16", has!("bf16"))];
        f.extend(all.iter().filter(|(_, on)| *on).map(|(n, _)| *n));
    }
    f.join(" ")
}

/// The kernel each op family of our CPU plans dispatches to in this process, as (family,
/// kernel) pairs (bench header and CSV).
pub fn kernels() -> Vec<(&'static str, String)> {
    let gemm = level().gemm_kernel().to_string();
    let bf16 = super::bf16::precision() == super::bf16::Precision::Bf16;
    let products = |f32: &str| if bf16 { super::bf16::kernel_level().name().to_string() } else { f32.to_string() };
    let linear = products(&gemm);
    #[cfg(target_arch = "x86_64")]
    let avx = std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    let avx = false;
    vec![
        ("linear", linear),
        ("attention", format!("{}+tract-softmax", products(&gemm))),
        ("layernorm", "ailurus-rowwise".into()),
        ("deconv", products("gemm-crate")),
        ("reducer-dot", if avx { "ailurus-avx" } else { "ailurus-portable" }.into()),
    ]
}

/// One line naming the machine: CPU model and features, the detected and the used ISA level,
/// and the kernel of each op family.
pub fn machine_line() -> String {
    let k: Vec<String> = kernels().iter().map(|(f, k)| format!("{f}={k}")).collect();
    format!(
        "CPU: {} [{}]; ISA detected {}, used {}; precision {}; kernels: {}",
        cpu_model(),
        cpu_features(),
        Level::detect(),
        level(),
        super::bf16::precision(),
        k.join(" ")
    )
}
