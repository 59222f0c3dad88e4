//! The model: our CPU ops against their references, cutting and loading (tiny and real model),
//! `[delta]`, `[model] device`, `inspect`, post-processing, and golden masks of the real model.
//!
//! One test binary (each links all of tract). Nothing here may change process-wide state that
//! another test reads: tract's default executor and `cut::set_own_ops` stay at their defaults
//! (the op tests pick threads with `multithread_tract_scope`; `golden` runs the user path with
//! `threads = 1` and `cpu_ops = "ailurus"`, which re-applies exactly those defaults).

#[path = "../common/mod.rs"]
mod common;

mod deconv_epilogue;
mod delta;
// Built with `--features cuda`, `[model] device` runs in the cuda binary (tests/cuda/main.rs),
// beside the other GPU tests.
#[cfg(not(feature = "cuda"))]
mod device;
mod fused_attention;
mod golden;
mod inspect_models;
mod layernorm_op;
mod linear_op;
mod mlp_op;
mod pointwise;
mod post;
mod precision;
mod real_model_cut;
mod reuse;
mod reuse_head;
mod subpixel_deconv;
mod tiny_model_cut;
