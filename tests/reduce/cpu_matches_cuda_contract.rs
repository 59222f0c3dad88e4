//! The CPU `ailurus` reducer against the CPU model of the CUDA kernels' arithmetic contract
//! (tests/reduce/cuda_reference.rs): the GPU path promises identical centres and assignments, so the
//! two CPU implementations must agree too. Runs without a GPU.

use crate::cuda_reference as cuda_ref;

use ailurus::reduce::ailurus::AilurusReducer;
use ailurus::reduce::{AilurusConfig, Reducer, Reduction};

#[test]
fn cpu_reducer_agrees_with_the_cuda_contract_on_random_tokens() {
    let mut agree = 0;
    let mut cases = 0;
    let mut report = Vec::new();
    for (seed, grid, c, m) in
        [(1u64, (16, 16), 384, 128), (2, (32, 32), 384, 512), (3, (20, 24), 768, 200), (4, (32, 32), 384, 256)]
    {
        let x = cuda_ref::tokens(seed, grid, c, 0.5, 0);
        let want = cuda_ref::reference(&x, c, grid, m, cuda_ref::Params::default());
        let mut r = AilurusReducer::new(&AilurusConfig::default());
        let mut out = Reduction::default();
        r.reduce(&x, c, grid, m, &mut out).unwrap();
        cases += 1;
        let got = cuda_ref::RefOut {
            centers: out.centers[..out.m].to_vec(),
            assign: out.assign.clone(),
            sizes: out.sizes[..out.m].to_vec(),
            merged: out.merged[..out.m * c].to_vec(),
            ..Default::default()
        };
        match cuda_ref::compare(&got, &want, 1e-4) {
            Ok(worst) => {
                agree += 1;
                report.push(format!(
                    "seed {seed} {grid:?} C={c} M={m}: identical centres/assignment, merged max diff {worst:.1e}"
                ));
            }
            Err(e) => report.push(format!("seed {seed} {grid:?} C={c} M={m}: {e}")),
        }
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(agree, cases, "CPU reducer vs CUDA contract:\n{}", report.join("\n"));
}
