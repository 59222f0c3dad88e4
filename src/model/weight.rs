//! A linear layer's weight as each kernel reads it ([`Weight`]: f32 on an ISA level's GEMM, f32
//! packed for our AVX-512 kernel, bf16 / f16 packed), and the one driver that splits a layer's
//! rows over tract's threads ([`apply`]). The swapped `Linear` op (`linear.rs`), the fused MLP
//! (`mlp.rs`) and the 16-bit entry (`bf16::linear_16`) all run their products through it.

use tract_core::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};

use super::attention::{par_for, OutPtr};
use super::bf16::Packed16;
use super::isa::Level;
use super::sgemm::Gemm;

/// Start every row of `out` (`[t, n]`) from `bias` plus the residual's row (zero without
/// either): where a linear layer's product is then added.
pub(crate) fn init_rows(out: &mut [f32], n: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) -> TractResult<()> {
    check_bias_residual(n, bias, residual, out.len())?;
    match (bias, residual) {
        (Some(b), None) => out.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b)),
        (None, None) => out.fill(0.0),
        (b, Some(r)) => {
            out.copy_from_slice(r);
            if let Some(b) = b {
                out.chunks_exact_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
            }
        }
    }
    Ok(())
}

/// A linear layer's weight as a kernel reads it.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// The f32 matrix (`k x n`, row-major) on the GEMM of an ISA level.
    F32 { w: &'a [f32], k: usize, n: usize, level: Level },
    /// The f32 weight packed once for our own tile at a level that [`super::sgemm::packs`]
    /// (`sgemm::PackedF32`).
    #[cfg(target_arch = "x86_64")]
    PackedF32(&'a super::sgemm::PackedF32, Level),
    /// A bf16 or f16 weight on a kernel of its format.
    Half(&'a Packed16, super::bf16::Half),
}

impl Weight<'_> {
    pub fn k(&self) -> usize {
        match *self {
            Weight::F32 { k, .. } => k,
            #[cfg(target_arch = "x86_64")]
            Weight::PackedF32(w, _) => w.k,
            Weight::Half(w, _) => w.k,
        }
    }

    pub fn n(&self) -> usize {
        match *self {
            Weight::F32 { n, .. } => n,
            #[cfg(target_arch = "x86_64")]
            Weight::PackedF32(w, _) => w.n,
            Weight::Half(w, _) => w.n,
        }
    }

    /// The kernel runs on this CPU and the weight is what it reads.
    pub(crate) fn check(&self) -> TractResult<()> {
        match *self {
            Weight::F32 { w, k, n, level } => {
                ensure!(level.supported(), "Linear: this CPU cannot run {level}");
                ensure!(w.len() == k * n, "Linear: w {} values for [{k}, {n}]", w.len());
            }
            #[cfg(target_arch = "x86_64")]
            Weight::PackedF32(_, level) => {
                ensure!(level.supported(), "Linear: this CPU cannot run {level}");
                ensure!(super::sgemm::packs(level), "Linear: a packed f32 weight at {level}");
            }
            Weight::Half(w, kernel) => {
                ensure!(kernel.supported(), "Linear: this CPU cannot run {}", kernel.name());
                ensure!(w.format == kernel.format(), "Linear: a {:?} weight on {}", w.format, kernel.name());
            }
        }
        Ok(())
    }

    /// Row blocks split between threads align to the kernel's register tile.
    pub(crate) fn tile_rows(&self) -> usize {
        match *self {
            Weight::Half(_, kernel) => kernel.tile_rows(),
            #[cfg(target_arch = "x86_64")]
            Weight::PackedF32(_, Level::Avx2) => 6,
            #[cfg(target_arch = "x86_64")]
            Weight::PackedF32(..) => 12,
            _ => 8,
        }
    }

    /// `out[i, :] += x[i, :] W` for `rows` rows (`x` at row stride K, `out` at row stride N),
    /// on this thread.
    ///
    /// # Safety
    /// `out.add(i * N + j)` is writable for `i < rows`, `j < N` and aliased by nothing else;
    /// [`Weight::check`] passed.
    pub(crate) unsafe fn add_rows(&self, x: &[f32], rows: usize, out: *mut f32) {
        let (k, n) = (self.k(), self.n());
        assert!(x.len() >= rows * k, "Linear: {} values for {rows} rows of {k}", x.len());
        let g = |b: *const f32| Gemm {
            m: rows,
            n,
            k,
            a: x.as_ptr(),
            rsa: k,
            b,
            rsb: n,
            csb: 1,
            c: out,
            rsc: n,
            accumulate: true,
        };
        // SAFETY: x holds rows x k values (asserted), w k x n (checked), out as the caller
        // promises; the kernel is supported (checked).
        unsafe {
            match *self {
                Weight::F32 { w, level, .. } => g(w.as_ptr()).run(level),
                #[cfg(target_arch = "x86_64")]
                Weight::PackedF32(w, level) => g(std::ptr::null()).run_packed(w, level),
                Weight::Half(w, kernel) => super::bf16::add_rows_16(kernel, x, w, rows, out),
            }
        }
    }
}

/// `out = residual + bias + x W` for `t` rows (`x`: `[t, K]`, `out` and `residual`: `[t, N]`),
/// one block of rows per tract thread (each packs the weight once, as one call on one thread
/// would; the row split measured 1-2% faster at 2 threads than the `gemm` crate's own rayon
/// split, `examples/linear_check.rs`).
pub fn apply(
    weight: Weight,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    weight.check()?;
    let (k, n) = (weight.k(), weight.n());
    ensure!(
        x.len() == t * k && out.len() == t * n,
        "Linear: x {} values for [{t}, {k}], out {} for [{t}, {n}]",
        x.len(),
        out.len()
    );
    check_bias_residual(n, bias, residual, out.len())?;
    if t * n == 0 {
        return Ok(());
    }
    let block = rows_per_thread(t, weight.tile_rows());
    let dst = OutPtr(out.as_mut_ptr());
    par_for(t.div_ceil(block), move |i| {
        let dst = dst;
        let (r0, rows) = (i * block, block.min(t - i * block));
        // SAFETY: rows r0..r0+rows of out are in bounds (lengths checked) and belong to this
        // block only.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(r0 * n), rows * n) };
        weight.rows(&x[r0 * k..(r0 + rows) * k], rows, o, bias, residual.map(|r| &r[r0 * n..(r0 + rows) * n]), None)?;
        Ok(())
    })
}

/// A bias of `n` values and a residual of `len` (an output's), where given.
fn check_bias_residual(n: usize, bias: Option<&[f32]>, residual: Option<&[f32]>, len: usize) -> TractResult<()> {
    if let Some(b) = bias {
        ensure!(b.len() == n, "Linear: bias has {} values for N = {n}", b.len());
    }
    if let Some(r) = residual {
        ensure!(r.len() == len, "Linear: residual has {} values for {len}", r.len());
    }
    Ok(())
}

impl Weight<'_> {
    /// `out = residual + bias + x W` for `rows` rows on this thread: in our tile's stores where
    /// the weight is packed for it (C written once, `sgemm::Tail`), with tract's GELU applied
    /// there too where `gelu` names the erf kernel tract runs on this CPU (the caller's
    /// check); else C initialised ([`init_rows`]) and the product added. Returns whether the
    /// GELU was applied.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub(crate) fn rows(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        gelu: Option<super::sgemm::Erf>,
    ) -> TractResult<bool> {
        self.check()?;
        let n = self.n();
        ensure!(out.len() == rows * n, "Linear: out {} values for [{rows}, {n}]", out.len());
        check_bias_residual(n, bias, residual, out.len())?;
        #[cfg(target_arch = "x86_64")]
        if let Weight::PackedF32(w, level) = *self {
            if w.k > 0 {
                assert!(x.len() >= rows * w.k, "Linear: {} values for {rows} rows of {}", x.len(), w.k);
                let g = Gemm {
                    m: rows,
                    n,
                    k: w.k,
                    a: x.as_ptr(),
                    rsa: w.k,
                    b: std::ptr::null(),
                    rsb: n,
                    csb: 1,
                    c: out.as_mut_ptr(),
                    rsc: n,
                    accumulate: false,
                };
                let tail = super::sgemm::Tail {
                    bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
                    gelu,
                };
                // SAFETY: x holds rows x K values (asserted), out rows x N, the bias N and the
                // residual rows x N (checked); the CPU has the level (checked).
                unsafe { g.run_packed_tail(w, tail, level) };
                return Ok(gelu.is_some());
            }
        }
        init_rows(out, n, bias, residual)?;
        // SAFETY: out holds rows x N values, this thread's own; the weight is checked.
        unsafe { self.add_rows(x, rows, out.as_mut_ptr()) };
        Ok(false)
    }
}

/// Rows per block when `t` rows are split over tract's threads (one block each, a multiple of
/// `align`), or all of them on one thread.
pub(crate) fn rows_per_thread(t: usize, align: usize) -> usize {
    let threads = match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        _ => 1,
    };
    if threads > 1 {
        t.div_ceil(threads).next_multiple_of(align)
    } else {
        t
    }
}
