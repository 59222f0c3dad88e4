//! Which instruction set our CPU ops run on (issue #18): detected once at start-up, one binary
//! for every CPU (no `target-cpu=native`).
//!
//! - `avx512`: x86-64 with AVX-512 F/BW/VL (and FMA): the GEMMs of the linear layers, of the
//!   fused attention and of the head's deconvolutions on our own AVX-512 tile ([`super::sgemm`]),
//!   used where it wins a short race against the AVX2 tile at start-up ([`preferred`]).
//! - `avx2`: x86-64 with AVX2 + FMA: our own AVX2 tile on the same packed weights (linear
//!   layers with their bias, residual and GELU in its stores, the attention's packed keys and
//!   values, the head's deconvolutions on packed taps); the `gemm` crate (its AVX2/FMA kernels)
//!   for products whose B is not packed.
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
            Level::Avx2 => "ailurus-avx2",
            Level::Neon => "gemm-crate-neon",
            Level::Portable => "ailurus-portable",
        }
    }
}

/// Where the CPU has both AVX2 and AVX-512: pick AVX-512 unless its kernel is clearly slower
/// in the start-up race ([`race`]). Since session 18 both levels run the same fused paths (the
/// tile's stores with bias, residual and GELU, our softmax exp, position-major deconvolutions;
/// the same bits), and `avx512` adds its LayerNorm and row-maximum loops. The race (both tiles
/// on the weight packed once) read 1.33x on the AMD EPYC Zen 4 here in session 18, where 16
/// interleaved frames took 279 ms at `avx512` against 320 at `avx2` (448 px, 2 threads). Before
/// that, against the `gemm` crate's AVX2 kernel, the race read 1.02-1.03x there while the
/// whole frame at `avx512` was 5% faster at 1 thread and 12% at 2, so a tie in the race goes to
/// AVX-512; 5% below covers the race's noise.
const AVX512_WIN: f64 = 0.95;

/// The level whose ops are fastest on this CPU. With AVX-512, which one wins depends on the
/// core, not the feature flags: AMD Zen 4 executes AVX-512 on 256-bit units, where our AVX-512
/// GEMM kernel only ties the `gemm` crate's AVX2 one (the rest of the level still wins there,
/// see [`AVX512_WIN`]), while Intel Xeons execute 512-bit FMAs on two full-width ports (1.2x and
/// more in the race). A CPU whose AVX-512 is slow (one port, or a deep frequency drop) would
/// lose the race. So the two race once at start-up ([`race`], about 30 ms) and AVX-512 is kept
/// unless clearly slower; elsewhere AVX2, NEON or the portable kernel.
pub fn preferred() -> Level {
    let base = [Level::Avx2, Level::Neon].into_iter().find(|l| l.supported()).unwrap_or(Level::Portable);
    if base == Level::Avx2 && Level::Avx512.supported() {
        let speed = *RACE.get_or_init(race);
        return pick(speed);
    }
    base
}

/// The start-up race's result: AVX-512's speed relative to AVX2's (None: no race ran).
static RACE: OnceLock<f64> = OnceLock::new();

/// The rule [`preferred`] applies to the race's speed ratio (AVX-512 over AVX2).
pub fn pick(avx512_speed: f64) -> Level {
    if avx512_speed >= AVX512_WIN {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

/// AVX-512's GEMM speed over AVX2's on one linear-layer shape (256 token rows, K 384, N 768,
/// the weight packed once, as both levels' linear layers hold it), 11 interleaved rounds each, best time of
/// each (interleaved so that a busy machine slows both alike). Both levels must be supported.
pub fn race() -> f64 {
    let (m, k, n) = (256usize, 384usize, 768usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut c = vec![0f32; m * n];
    // The weight as the linear layers hold it at both levels: packed once for our tiles.
    #[cfg(target_arch = "x86_64")]
    let packed = super::sgemm::PackedF32::pack(&b, k, n);
    let mut best = [f64::MAX; 2];
    for round in 0..12 {
        for (i, level) in [Level::Avx512, Level::Avx2].into_iter().enumerate() {
            let g = super::sgemm::Gemm {
                m,
                n,
                k,
                a: a.as_ptr(),
                rsa: k,
                b: b.as_ptr(),
                rsb: n,
                csb: 1,
                c: c.as_mut_ptr(),
                rsc: n,
                accumulate: false,
            };
            let t = std::time::Instant::now();
            // SAFETY: a is [m, k], b [k, n], c [m, n], all row-major at these strides; the
            // caller checked that both levels are supported.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                g.run_packed(&packed, level);
                #[cfg(not(target_arch = "x86_64"))]
                g.run(level);
            }
            // Round 0 warms caches and packing buffers up.
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    best[1] / best[0]
}

/// The level the CPU ops use in this process: `AILURUS_ISA` if set and supported, else
/// [`preferred`].
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let Ok(want) = std::env::var("AILURUS_ISA") else { return preferred() };
        match Level::from_name(&want) {
            Some(l) if l.supported() => l,
            Some(l) => {
                let used = preferred();
                log::warn!("AILURUS_ISA={l}: this CPU lacks it; using {used}");
                used
            }
            None => {
                let used = preferred();
                log::warn!("AILURUS_ISA={want:?} is not one of avx512, avx2, neon, portable; using {used}");
                used
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
    let half = super::bf16::precision().format().map(super::bf16::Half::best);
    let products = |f32: &str| half.map_or(f32, |h| h.name()).to_string();
    let linear = products(&gemm);
    #[cfg(target_arch = "x86_64")]
    let avx = std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    let avx = false;
    vec![
        ("linear", linear),
        (
            "attention",
            format!(
                "{}+{}",
                products(&gemm),
                match super::softmax::ExpSum::new(level(), half.is_some()) {
                    Ok(k) => k.name(),
                    Err(_) => "tract-softmax (unavailable)",
                }
            ),
        ),
        ("layernorm", "ailurus-rowwise".into()),
        ("deconv", products(super::deconv::kernel_name(level()))),
        ("reducer-dot", if avx { "ailurus-avx" } else { "ailurus-portable" }.into()),
    ]
}

/// One line naming the machine: CPU model and features, the detected and the used ISA level,
/// and the kernel of each op family.
pub fn machine_line() -> String {
    let k: Vec<String> = kernels().iter().map(|(f, k)| format!("{f}={k}")).collect();
    let used = level();
    let race = RACE.get().map(|s| format!(" (start-up race: avx512 at {s:.2}x avx2's speed)")).unwrap_or_default();
    format!(
        "CPU: {} [{}]; ISA detected {}, used {}{}; precision {}; kernels: {}",
        cpu_model(),
        cpu_features(),
        Level::detect(),
        used,
        race,
        super::bf16::precision(),
        k.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx512_is_picked_unless_clearly_slower() {
        assert_eq!(pick(2.0), Level::Avx512);
        assert_eq!(pick(AVX512_WIN), Level::Avx512);
        assert_eq!(pick(1.0), Level::Avx512);
        assert_eq!(pick(0.9), Level::Avx2);
        assert_eq!(pick(0.5), Level::Avx2);
    }

    #[test]
    fn the_preferred_level_runs_here() {
        let p = preferred();
        assert!(p.supported(), "{p}");
        if Level::Avx512.supported() && Level::Avx2.supported() {
            let speed = RACE.get().copied().expect("the race ran");
            assert!(speed.is_finite() && speed > 0.0, "{speed}");
            assert_eq!(p, pick(speed));
            assert!(machine_line().contains("start-up race"), "{}", machine_line());
        }
    }
}
