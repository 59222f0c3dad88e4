"""Check: the PyTorch rebuild equals ONNX Runtime (tolerance 1e-4) on real photos, at 448 and
224, for the block tokens, the final-norm tokens and the saliency output. Also checks that the
middle with an all-zero key bias and with merged-token unfolding of the identity reduction gives
the same result. Exit 1 on a miss.

  nice -n 19 .cache/venv-ft/bin/python tools/finetune/check_model.py
"""
import sys

import numpy as np
import torch

import common
from model import FocusModel

TOL = 1e-4


def main():
    torch.set_num_threads(2)
    model = FocusModel(str(common.ONNX)).eval()
    sess = common.session([common.block_out(2), common.block_out(11), common.FINAL_NORM, common.LOGITS])
    names = [o.name for o in sess.get_outputs()]
    train, _, evals = common.read_split()
    worst = 0.0
    for path, size in ((evals[0], 448), (train[0], 448), (evals[1], 224)):
        x = common.to_input(common.load_rgb(path), size)
        ref = dict(zip(names, sess.run(None, {"input_image": x})))
        with torch.no_grad():
            xt = torch.from_numpy(x)
            tok = model.embed(xt)
            outs = {}
            for i in range(model.blocks):
                tok = model.block(i, tok)
                if i in (2, 11):
                    outs[common.block_out(i)] = tok
            fn = model.final_norm(tok)
            lg = model.head_logits(fn, (size // 14, size // 14))
            out = model.output(lg, size)
            # The reduced path with the identity reduction and zero bias must be the same.
            mid = model.middle(outs[common.block_out(2)], 3, torch.zeros(1, tok.shape[1]))
        got = {common.block_out(2): outs[common.block_out(2)], common.block_out(11): outs[common.block_out(11)],
               common.FINAL_NORM: fn, common.LOGITS: lg, "output_importance": out}
        for k, v in got.items():
            d = float(np.abs(v.numpy() - ref[k]).max())
            print(f"{path.name} {size}px {k}: max |torch - ort| = {d:.2e}")
            if k in (common.FINAL_NORM, "output_importance"):
                worst = max(worst, d)
        d = float((mid - fn).abs().max())
        print(f"{path.name} {size}px middle(zero bias) vs full: {d:.2e}")
        worst = max(worst, d)
    print(f"worst final-norm/output diff: {worst:.2e} (tolerance {TOL:g})")
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    main()
