//! A 16-bit product kernel of either format: bf16 (this module's kernels) or f16 (`f16/`). Both
//! read the same packed pair layout, so the attention's products (`heads.rs`) and the head's
//! deconvolutions (`deconv/`) run on either through [`Half`].

use super::{Format, Kernel};
use crate::model::f16;

/// A bf16 or an f16 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    Bf16(Kernel),
    F16(f16::Kernel),
}

impl From<Kernel> for Half {
    fn from(k: Kernel) -> Half {
        Half::Bf16(k)
    }
}

impl From<f16::Kernel> for Half {
    fn from(k: f16::Kernel) -> Half {
        Half::F16(k)
    }
}

impl Half {
    /// This CPU's best kernel for `format`.
    pub fn best(format: Format) -> Half {
        match format {
            Format::Bf16 => Half::Bf16(super::kernel_level()),
            Format::F16 => Half::F16(f16::kernel_level()),
        }
    }

    pub fn format(self) -> Format {
        match self {
            Half::Bf16(_) => Format::Bf16,
            Half::F16(_) => Format::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Half::Bf16(k) => k.name(),
            Half::F16(k) => k.name(),
        }
    }

    /// Rows of the kernel's register tile (row blocks split between threads align to it).
    pub(crate) fn tile_rows(self) -> usize {
        match self {
            Half::Bf16(_) => super::MR,
            Half::F16(k) => k.tile().0,
        }
    }

    pub fn supported(self) -> bool {
        match self {
            Half::Bf16(k) => k.supported(),
            Half::F16(k) => k.supported(),
        }
    }

    /// `src` rounded to the format (same length).
    pub(crate) fn round_u16(self, src: &[f32], dst: &mut [u16]) {
        match self {
            Half::Bf16(k) => super::round_u16(k, src, dst),
            Half::F16(k) => f16::round_u16(k, src, dst),
        }
    }

    /// Rows of `k` values (at row stride `rsx` in `x`) rounded to pairs, at row stride
    /// `k.div_ceil(2)` in `a`, as many rows as `a` holds.
    pub(crate) fn round_rows(self, x: &[f32], rsx: usize, k: usize, a: &mut [u32]) {
        match self {
            Half::Bf16(kernel) => super::round_rows(kernel, x, rsx, k, a),
            Half::F16(kernel) => {
                for (i, dst) in a.chunks_exact_mut(k.div_ceil(2)).enumerate() {
                    f16::round_row(kernel, &x[i * rsx..i * rsx + k], dst);
                }
            }
        }
    }

    /// `c[i, j] += sum_p a[i, p] b[p, j]` in the format's arithmetic (`a`: `rows` rows of `k2`
    /// pairs at stride `rsa`; `b`: `n.div_ceil(NR)` panels of `k2 x NR` pairs; `c` at row
    /// stride `rsc`).
    ///
    /// # Safety
    /// `c.add(i * rsc + j)` is writable for `i < rows`, `j < n`, and aliased by nothing else;
    /// the kernel is supported by this CPU.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn product(
        self,
        a: &[u32],
        rsa: usize,
        rows: usize,
        b: &[u32],
        k2: usize,
        n: usize,
        c: *mut f32,
        rsc: usize,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            match self {
                Half::Bf16(kernel) => super::product(kernel, a, rsa, rows, b, k2, n, c, rsc),
                Half::F16(kernel) => f16::product(kernel, a, rsa, rows, b, k2, n, c, rsc),
            }
        }
    }
}
