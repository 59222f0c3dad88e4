"""Distil the full model into its reduced self (issue #9): teacher = the frozen stock model at 448
(ONNX Runtime), student = the same model with `ailurus` clustering after block cut-1, merged
tokens with proportional attention in blocks cut..11, unfolded before the head. Only small
tensors of the middle blocks train (LayerNorms, layer-scales, biases, the final LayerNorm;
optionally LoRA on q/k/v/proj), and the result is written as a safetensors delta that the runtime
applies to the stock initializers ([delta] in a model manifest).

The stem (blocks < cut) is frozen, so each augmented crop's block cut-1 tokens and the teacher's
outputs (final-norm tokens, decoder logits) are computed once with ONNX Runtime and cached in
.cache/ft-cache; a step clusters (no_grad), merges, runs the middle + head forward/backward.

  nice -n 19 .cache/venv-ft/bin/python tools/finetune/train.py   # the committed delta (defaults)
"""
import argparse
import hashlib
import json
import math
import pathlib
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

import common
import reducer
from model import FocusModel

PATCH = 14


def augment(img, rng, size):
    """Random resized crop (area 25-100 %, aspect 3/4-4/3), flip, colour jitter, grey 10 %."""
    w, h = img.size
    for _ in range(20):
        area = rng.uniform(0.25, 1.0) * w * h
        ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
            break
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.1:
        img = ImageOps.grayscale(img).convert("RGB")
    return img


def build_cache(paths, crops, size, cut, seed):
    """Per crop: stem tokens (block cut-1) f32, teacher final-norm tokens f16, teacher logits f32.
    Cached on disk, keyed by everything that determines it."""
    key = json.dumps([sorted(str(p.relative_to(common.CACHE)) for p in paths), crops, size, cut, seed, 1])
    f = common.CACHE / "ft-cache" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".npz")
    if f.exists():
        z = np.load(f)
        print(f"cache: {f} ({len(z['stem'])} crops)", flush=True)
        return z["stem"], z["tnorm"], z["tlogits"]
    sess = common.session([common.block_out(cut - 1), common.FINAL_NORM, common.LOGITS])
    names = [o.name for o in sess.get_outputs()]
    rng = random.Random(seed)
    stem, tnorm, tlog = [], [], []
    t0 = time.time()
    for pi, p in enumerate(paths):
        img = common.load_rgb(p)
        for j in range(crops):
            im = img if j == 0 else augment(img, rng, size)
            out = dict(zip(names, sess.run(None, {"input_image": common.to_input(im, size)})))
            stem.append(out[common.block_out(cut - 1)][0])
            tnorm.append(out[common.FINAL_NORM][0].astype(np.float16))
            tlog.append(out[common.LOGITS][0, 0])
        print(f"cache: {pi + 1}/{len(paths)} photos, {time.time() - t0:.0f} s", flush=True)
    stem, tnorm, tlog = np.stack(stem), np.stack(tnorm), np.stack(tlog)
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f, stem=stem, tnorm=tnorm, tlogits=tlog)
    return stem, tnorm, tlog


def student(model, stem_tokens, grid, m, cut, bias=True, head=True):
    """Stem tokens [1+n, c] -> (final-norm tokens [1+n, c] after the unfold, logits [1,1,8h,8w]
    (None without `head`), clustering seconds). m >= n: no reduction."""
    t0 = time.perf_counter()
    patches = stem_tokens[1:]
    assign, centres = reducer.cluster(patches, grid, m)
    tc = time.perf_counter() - t0
    mm = len(centres)
    merged, sizes = reducer.merge(patches, assign, mm)
    x = torch.cat([stem_tokens[:1], merged], 0)[None]
    kb = torch.cat([torch.zeros(1), sizes.log()])[None] if bias else None
    y = model.middle(x, cut, kb)[0]
    full = torch.cat([y[:1], reducer.unfold(y[1:], assign)], 0)[None]
    return full, model.head_logits(full, grid) if head else None, tc


MARGIN = 2  # tokens: the decoder's receptive field is about one token; two are exact (checked)


def window_logits(model, full, grid, win, rng):
    """The decoder on a random `win x win` window of the unfolded token grid (the decoder is
    local, so the window's interior equals the full decoder's output there): returns the
    interior logits and the matching (row, col) pixel slices of the full logits."""
    h, w = grid
    y0, x0 = rng.randint(0, h - win), rng.randint(0, w - win)
    tok = full[0, 1:].reshape(h, w, -1)[y0:y0 + win, x0:x0 + win].reshape(1, win * win, -1)
    tok = torch.cat([full[:, :1], tok], 1)
    lg = model.head_logits(tok, (win, win))
    up = lg.shape[-1] // win
    a, b = MARGIN * up, (win - MARGIN) * up
    rows = slice(y0 * up + a, y0 * up + b)
    cols = slice(x0 * up + a, x0 * up + b)
    return lg[:, :, a:b, a:b], rows, cols


def loss_fn(full, logits, tnorm, tlogits, w_tok):
    s, t = torch.sigmoid(logits[0, 0]), torch.sigmoid(tlogits)
    sal = (s - t).abs().mean() + 0.5 * F.binary_cross_entropy_with_logits(logits[0, 0], t)
    tok = ((full[0] - tnorm) ** 2).mean() / tnorm.var()
    return sal + w_tok * tok, sal.item(), tok.item()


def evaluate(model, ev, grid, ms, cut, size):
    """Mean MAE and mask IoU (threshold 0.5) of the student against the stock full model at
    `size`, on the evaluation photos, per M."""
    res = {}
    with torch.no_grad():
        for m in ms:
            maes, ious = [], []
            for stem_t, ref in ev:
                _, lg, _ = student(model, stem_t, grid, m, cut)
                out = model.output(lg, size)[0, 0]
                maes.append(float((out - ref).abs().mean()))
                a, b = out > 0.5, ref > 0.5
                u = int((a | b).sum())
                ious.append(1.0 if u == 0 else int((a & b).sum()) / u)
            res[m] = (float(np.mean(maes)), float(np.mean(ious)))
    return res


def eval_set(paths, size, cut):
    sess = common.session([common.block_out(cut - 1)])
    names = [o.name for o in sess.get_outputs()]
    ev = []
    for p in paths:
        out = dict(zip(names, sess.run(None, {"input_image": common.to_input(common.load_rgb(p), size)})))
        ev.append((torch.from_numpy(out[common.block_out(cut - 1)][0]), torch.from_numpy(out["output_importance"][0, 0])))
    return ev


def time_steps(model, opt, stem, tnorm, tlog, grid, cut, m, reps, w_tok, head_window):
    """Seconds per training step (forward + backward + update), with clustering at M = m and
    without reduction (all tokens), on the same crops."""
    out = {}
    for label, mm in (("with clustering", m), ("without clustering", 10**9)):
        ts, tcs = [], []
        for i in range(reps + 1):
            j = i % len(stem)
            t0 = time.perf_counter()
            tl = torch.from_numpy(tlog[j])
            if head_window:
                full, _, tc = student(model, torch.from_numpy(stem[j]), grid, mm, cut, head=False)
                lg, rows, cols = window_logits(model, full, grid, head_window, random.Random(i))
                tl = tl[rows, cols]
            else:
                full, lg, tc = student(model, torch.from_numpy(stem[j]), grid, mm, cut)
            loss, _, _ = loss_fn(full, lg, torch.from_numpy(tnorm[j].astype(np.float32)), tl, w_tok)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i > 0:
                ts.append(time.perf_counter() - t0)
                tcs.append(tc)
        out[label] = (float(np.mean(ts)), float(np.mean(tcs)))
        print(f"time/step {label} (M={'all' if mm > 10**8 else mm}): {np.mean(ts):.3f} s "
              f"(clustering {np.mean(tcs) * 1e3:.1f} ms)", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--cut", type=int, default=3)
    ap.add_argument("--crops", type=int, default=16, help="augmented crops per training photo (incl. the whole photo)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="wall-time budget for the training loop (0 = none); the cosine schedule follows "
                         "whichever of steps and minutes runs out first")
    ap.add_argument("--m-min", type=int, default=160)
    ap.add_argument("--m-max", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora", type=int, default=8, help="LoRA rank on q/k/v/proj of the middle blocks (0 = off)")
    ap.add_argument("--head-bn", type=int, default=0, help="also train the decoder's BatchNorm scale/shift")
    ap.add_argument("--head-window", type=int, default=18,
                    help="train the decoder on a random window of this many tokens a side (0 = whole grid)")
    ap.add_argument("--w-tok", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=50,
                    help="score the validation photos every this many steps; the best checkpoint is the one saved")
    ap.add_argument("--eval-m", type=int, nargs="+", default=[256, 384])
    ap.add_argument("--time-steps", type=int, default=0, help="only measure s/step with and without clustering")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=pathlib.Path, default=common.ROOT / "models/vit_s_focus_ft.safetensors")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    train_paths, val_paths, eval_paths = common.read_split()
    g = a.size // PATCH
    grid = (g, g)
    t_start = time.time()
    stem, tnorm, tlog = build_cache(train_paths, a.crops, a.size, a.cut, a.seed)
    t_cache = time.time() - t_start
    model = FocusModel(str(common.ONNX), train_from=a.cut, lora_rank=a.lora, seed=a.seed, head_bn=bool(a.head_bn))
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable: {sum(p.numel() for p in params)} values in {len(params)} tensors", flush=True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    if a.time_steps:
        time_steps(model, opt, stem, tnorm, tlog, grid, a.cut, 256, a.time_steps, a.w_tok, a.head_window)
        return
    if a.head_window:  # the window's interior must equal the whole decoder's output there
        with torch.no_grad():
            full, lg, _ = student(model, torch.from_numpy(stem[0]), grid, 256, a.cut)
            wl, rows, cols = window_logits(model, full, grid, a.head_window, random.Random(0))
            err = float((wl[0, 0] - lg[0, 0][rows, cols]).abs().max())
        print(f"decoder window check: max diff {err:.1e}", flush=True)
        assert err < 1e-4
    ev = eval_set(eval_paths, a.size, a.cut)
    va = eval_set(val_paths, a.size, a.cut)

    def val_score():
        """Validation photos only: mean IoU over eval-m minus mean MAE (what picks the checkpoint)."""
        r = evaluate(model, va, grid, a.eval_m, a.cut, a.size)
        return float(np.mean([iou - mae for mae, iou in r.values()])), r

    best_score, r = val_score()
    best = (0, {k: v.copy() for k, v in model.delta_tensors().items()})
    print(f"step 0 (stock): val {r} held-out {evaluate(model, ev, grid, a.eval_m, a.cut, a.size)}", flush=True)
    warm = min(50, a.steps // 10)
    t_train = time.time()

    def progress(step):
        p = step / a.steps
        if a.minutes > 0:
            p = max(p, (time.time() - t_train) / (60 * a.minutes))
        return min(1.0, p)

    run = [0.0, 0.0, 0.0]
    step = 0
    while progress(step) < 1.0:
        step += 1
        for grp in opt.param_groups:
            grp["lr"] = a.lr * min(1.0, step / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * progress(step - 1)))
        j = rng.randrange(len(stem))
        m = rng.randint(a.m_min, a.m_max)
        tl = torch.from_numpy(tlog[j])
        if a.head_window:
            full, _, _ = student(model, torch.from_numpy(stem[j]), grid, m, a.cut, head=False)
            lg, rows, cols = window_logits(model, full, grid, a.head_window, rng)
            tl = tl[rows, cols]
        else:
            full, lg, _ = student(model, torch.from_numpy(stem[j]), grid, m, a.cut)
        loss, sal, tok = loss_fn(full, lg, torch.from_numpy(tnorm[j].astype(np.float32)), tl, a.w_tok)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run = [0.98 * r + 0.02 * v for r, v in zip(run, (loss.item(), sal, tok))]
        if step % 25 == 0:
            el = time.time() - t_train
            print(f"step {step}: loss {run[0]:.4f} (saliency {run[1]:.4f}, tokens {run[2]:.4f}) "
                  f"{el / step:.2f} s/step, {el / 60:.1f} min", flush=True)
        if step % a.eval_every == 0:
            score, r = val_score()
            mark = ""
            if score > best_score:
                best_score, best, mark = score, (step, {k: v.copy() for k, v in model.delta_tensors().items()}), " *best"
            print(f"step {step}: val {r}{mark}; held-out (reported, not used) "
                  f"{evaluate(model, ev, grid, a.eval_m, a.cut, a.size)}", flush=True)
    print(f"step {step} (last): val {val_score()[1]}", flush=True)
    total = time.time() - t_start
    print(f"done: {step} steps, cache {t_cache / 60:.1f} min, training {(time.time() - t_train) / 60:.1f} min, "
          f"total {total / 60:.1f} min", flush=True)
    print(f"best checkpoint on the validation photos: step {best[0]} (0 = the stock model)", flush=True)
    save(best[1], a, best[0], final=True)


def save(tensors, a, step, final=False):
    from safetensors.numpy import save_file

    # One metadata key (safetensors writes several in a random order) and no output path, so
    # that the same run writes the same bytes anywhere.
    args = {k: str(v) for k, v in vars(a).items() if k != "out"}
    meta = {"train": json.dumps({"tool": "tools/finetune/train.py", "step": step, "args": args}, sort_keys=True)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(a.out), metadata=meta)
    if final:
        digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
        print(f"delta: {a.out} ({a.out.stat().st_size} bytes) sha256 {digest}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
