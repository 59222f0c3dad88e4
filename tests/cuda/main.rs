//! The CUDA path (`--features cuda`): the reducer on the GPU against the CPU reference of the
//! kernels' arithmetic contract (and in the CPU emulator without a GPU), its timing, the full
//! model on tract-cuda, and `[model] device` through the Segmenter and the CLI.
//!
//! Without a GPU these print SKIP and pass; `AILURUS_REQUIRE_GPU=1` (tools/gpu-check.sh) makes
//! every such SKIP a failure (`common::gpu_skip`). The probe and NVRTC-cache tests set an
//! environment variable, so they run in their own binary (tests/cuda_probe.rs).
#![cfg(feature = "cuda")]

#[path = "../common/mod.rs"]
mod common;
#[path = "../reduce/cuda_reference.rs"]
mod reference;

mod bench;
mod equivalence;
mod model;
#[path = "../model/device.rs"]
mod model_device;
