//! The packed bf16 product on Intel AMX (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 x 32 bf16 tile of A by a 32 x 16 tile of B into a 16 x 16 f32 tile of C, 16 times the work
//! of one AVX-512 `vdpbf16ps`. Our packed formats are already AMX's: A rows are consecutive bf16
//! pairs, and a B panel's row `p` holds the pair (row `2p`, row `2p + 1`) of each of its 32
//! columns, which is a B tile of 16 columns at a row stride of one panel row.
//!
//! Register plan (8 tiles of 16 rows x 64 bytes): C = tmm0..3 (a 32 x 32 block), A = tmm4, 5 (32
//! rows x 16 pairs), B = tmm6, 7 (16 pairs x 32 columns): per step of 16 pairs, four loads and four
//! `tdpbf16ps`. Each 32-row block of A is copied into a zero-padded scratch (32 rows, K rounded up
//! to 16 pairs) so that the short last row block and the last K step need no second tile shape;
//! the B panel's last partial K step is copied the same way, and a block of C that would cross
//! the matrix's edge goes through a 32 x 32 scratch.
//!
//! Own code: Rust's AMX intrinsics are unstable, so the instructions are written with `asm!`
//! (stable); the tile state is configured at the start of each call on the calling thread and
//! released at its end. Linux hands AMX's 8 KB of tile state to a process only on request
//! ([`permitted`], `arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux 5.16+); where that fails the bf16
//! kernel stays AVX512-BF16.

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::NR;

/// Pairs per K step (a tile row of A is 64 bytes).
const KP: usize = 16;
/// Rows per block (two A tiles).
const MB: usize = 32;

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22) and Linux let
/// this process use the tile state.
pub(super) fn permitted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU that has AVX-512 (checked first by the caller).
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with two integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
        if r != 0 {
            log::info!(
                "AMX: the kernel refused the tile state (arch_prctl: {}); bf16 stays on AVX512-BF16",
                std::io::Error::last_os_error()
            );
        }
        r == 0
    })
}

/// The tile configuration: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

static CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    Config(c)
};

thread_local! {
    /// A row block of A, zero-padded (32 rows x K rounded up to 16 pairs).
    static A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The last, partial K step of every B panel of a call, zero-padded (16 x 32 pairs each).
    static BT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

macro_rules! load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}]"), p = in(reg) $p, s = in(reg) $stride,
             options(nostack, readonly))
    };
}
macro_rules! store {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}], tmm", $t), p = in(reg) $p, s = in(reg) $stride, options(nostack))
    };
}

/// `c[i, j] += sum_p a[i, p] b[p, j]` as `super::product` (same arguments).
///
/// # Safety
/// [`permitted`]; `a` holds `rows` rows of `k2` pairs at stride `rsa`, `b` `n.div_ceil(NR)`
/// panels of `k2 x NR` pairs; `c.add(i * rsc + j)` is writable for `i < rows`, `j < n` and
/// aliased by nothing else.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    a: &[u32],
    rsa: usize,
    rows: usize,
    b: &[u32],
    k2: usize,
    n: usize,
    c: *mut f32,
    rsc: usize,
) {
    if rows == 0 || n == 0 || k2 == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let (steps, rem) = (k2 / KP, k2 % KP);
    let k2p = k2.div_ceil(KP) * KP;
    A.with(|ab| {
        BT.with(|bt| {
            let mut ab = ab.borrow_mut();
            let mut bt = bt.borrow_mut();
            if ab.len() < MB * k2p {
                ab.resize(MB * k2p, 0);
            }
            if rem > 0 {
                if bt.len() < panels * KP * NR {
                    bt.resize(panels * KP * NR, 0);
                }
                for jp in 0..panels {
                    let dst = &mut bt[jp * KP * NR..(jp + 1) * KP * NR];
                    let src = &b[(jp * k2 + steps * KP) * NR..(jp * k2 + k2) * NR];
                    dst[..src.len()].copy_from_slice(src);
                    dst[src.len()..].fill(0);
                }
            }
            let mut cs = [0f32; MB * NR];
            // SAFETY: the CPU has AMX and this process may use it (caller); the tile loads and
            // stores below stay inside `ab` (MB rows of k2p pairs), `b`'s panels (full steps) or
            // `bt` (the last step), and C's rows/columns (full blocks) or `cs`.
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
                for m0 in (0..rows).step_by(MB) {
                    let mr = MB.min(rows - m0);
                    for i in 0..MB {
                        let dst = &mut ab[i * k2p..(i + 1) * k2p];
                        if i < mr {
                            dst[..k2].copy_from_slice(&a[(m0 + i) * rsa..(m0 + i) * rsa + k2]);
                            dst[k2..].fill(0);
                        } else {
                            dst.fill(0);
                        }
                    }
                    let sa = k2p * 4;
                    for jp in 0..panels {
                        let cols = NR.min(n - jp * NR);
                        let direct = mr == MB && cols == NR;
                        let (cp, sc) = if direct {
                            (c.add(m0 * rsc + jp * NR), rsc * 4)
                        } else {
                            for i in 0..MB {
                                for j in 0..NR {
                                    cs[i * NR + j] =
                                        if i < mr && j < cols { *c.add((m0 + i) * rsc + jp * NR + j) } else { 0.0 };
                                }
                            }
                            (cs.as_mut_ptr(), NR * 4)
                        };
                        load!("0", cp, sc);
                        load!("1", cp.add(16), sc);
                        load!("2", cp.add(16 * sc / 4), sc);
                        load!("3", cp.add(16 * sc / 4 + 16), sc);
                        let panel = b.as_ptr().add(jp * k2 * NR);
                        for s in 0..k2.div_ceil(KP) {
                            let pa = ab.as_ptr().add(s * KP);
                            let pb = if s < steps { panel.add(s * KP * NR) } else { bt.as_ptr().add(jp * KP * NR) };
                            load!("4", pa, sa);
                            load!("5", pa.add(16 * k2p), sa);
                            load!("6", pb, NR * 4);
                            load!("7", pb.add(16), NR * 4);
                            asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
                            asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
                            asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
                            asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                        }
                        store!("0", cp, sc);
                        store!("1", cp.add(16), sc);
                        store!("2", cp.add(16 * sc / 4), sc);
                        store!("3", cp.add(16 * sc / 4 + 16), sc);
                        if !direct {
                            for i in 0..mr {
                                for j in 0..cols {
                                    *c.add((m0 + i) * rsc + jp * NR + j) = cs[i * NR + j];
                                }
                            }
                        }
                    }
                }
                asm!("tilerelease", options(nostack, nomem));
            }
        })
    })
}
