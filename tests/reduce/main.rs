//! The token reducers: every CPU reducer against slow references, and the CPU `ailurus` reducer
//! against the CPU model of the CUDA kernels' arithmetic contract (no GPU needed).
//!
//! `reduce_reference` installs a counting global allocator for its no-allocation check; the
//! count is per thread, so the other tests here cannot disturb it.

mod cpu_matches_cuda_contract;
mod cuda_reference;
mod reduce_reference;
mod refs;
