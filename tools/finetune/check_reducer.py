"""Check: the PyTorch reducer (reducer.py) against the crate's `ailurus` reducer
(examples/reduce_dump.rs) on the same real block-2 tokens: centres, assignment and merged tokens.
Also checks that gradients flow through merge and unfold. Exit 1 unless every assignment of
the exact mode is identical.

  cargo build --release --example reduce_dump
  nice -n 19 .cache/venv-ft/bin/python tools/finetune/check_reducer.py [path/to/reduce_dump]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

import common
import reducer

SIZES = (448, 224)
MS = (64, 128, 256, 512)


def rust(exe, tokens, grid, m, tmp):
    n, c = tokens.shape
    src, dst = os.path.join(tmp, "tokens.f32"), os.path.join(tmp, "out.bin")
    tokens.astype("<f4").tofile(src)
    subprocess.run([exe, src, str(grid[0]), str(grid[1]), str(c), str(m), dst], check=True)
    b = np.fromfile(dst, dtype=np.uint8)
    mm = int(b[:4].view("<u4")[0])
    off = 4
    assign = b[off:off + 4 * n].view("<u4"); off += 4 * n
    centres = b[off:off + 4 * mm].view("<u4"); off += 4 * mm
    sizes = b[off:off + 4 * mm].view("<f4"); off += 4 * mm
    merged = b[off:off + 4 * mm * c].view("<f4").reshape(mm, c)
    return assign.astype(np.int64), centres.astype(np.int64), sizes, merged


def grad_check():
    """d(sum(unfold(merge(x)) * w))/dx must equal, per token, the mean of w over its cluster."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, requires_grad=True)
    assign, centres = reducer.cluster(x, (4, 4), 5)
    merged, sizes = reducer.merge(x, assign, len(centres))
    w = torch.randn(16, 3)
    (reducer.unfold(merged, assign) * w).sum().backward()
    want = torch.zeros(len(centres), 3).index_add(0, assign, w) / sizes[:, None]
    return float((x.grad - want[assign]).abs().max())


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else str(common.ROOT.parent.parent / "main/target/release/examples/reduce_dump")
    if not os.path.exists(exe):
        exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", str(common.ROOT / "target")), "release/examples/reduce_dump")
    sess = common.session([common.block_out(2)])
    names = [o.name for o in sess.get_outputs()]
    _, _, evals = common.read_split()
    ok = True
    total, same = {True: 0, False: 0}, {True: 0, False: 0}
    with tempfile.TemporaryDirectory() as tmp:
        for path in evals[:4]:
            for size in SIZES:
                out = dict(zip(names, sess.run(None, {"input_image": common.to_input(common.load_rgb(path), size)})))
                tok = out[common.block_out(2)][0, 1:]
                g = size // 14
                for m in MS:
                    ra, rc, rs, rm = rust(exe, tok, (g, g), m, tmp)
                    line = f"{path.name} {size}px M={m}:"
                    for exact in (True, False):
                        pa, pc = reducer.cluster(torch.from_numpy(tok), (g, g), m, exact=exact)
                        pm, ps = reducer.merge(torch.from_numpy(tok), pa, len(pc))
                        agree = int((pa.numpy() == ra).sum())
                        total[exact] += len(ra)
                        same[exact] += agree
                        cent = np.array_equal(pc.numpy(), rc)
                        dm = float(np.abs(pm.numpy() - rm).max()) if cent and agree == len(ra) else float("nan")
                        line += (f" [{'exact' if exact else 'f64'}] centres {'identical' if cent else 'DIFFER'}, "
                                 f"assignment {agree}/{len(ra)}, merged max diff {dm:.1e}")
                        if exact:
                            ok &= cent and agree == len(ra)
                    print(line, flush=True)
    gd = grad_check()
    print(f"assignment agreement with the Rust reducer: exact mode {same[True]}/{total[True]} tokens, "
          f"f64 mode (used in training) {same[False]}/{total[False]}; "
          f"gradient through merge+unfold: max err {gd:.1e}")
    sys.exit(0 if ok and gd < 1e-6 else 1)


if __name__ == "__main__":
    main()
