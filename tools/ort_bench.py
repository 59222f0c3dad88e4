#!/usr/bin/env python3
"""ONNX Runtime peer bench of the real model: whole model and stem / middle / head, per frame.

The same photos as the Rust bench (.cache/photos/*, then .cache/voc/JPEGImages/*, each folder in
name order) with the same preprocessing (RGB8 -> triangle-filter resize to SxS, antialiased when
downscaling, pixel centres aligned -> (v/255 - mean) / std, the manifest's mean/std), at each
size and intra-op thread count:

- full:   input_image -> output
- stem:   input_image -> block a-1 output
- middle: block a-1 output -> final-norm output (all tokens: the unreduced middle)
- head:   final-norm output -> output (it also reads Shape(input_image), so it gets the image)

The parts are cut with onnx.utils.Extractor after onnx.shape_inference (the file has no
value_info). Each part is timed on every frame after `--warmup` untimed runs; mean and median are
reported. The cut is checked: head(middle(stem(x))) must equal full(x).

Output: a table on stdout; `--json PATH` writes the numbers for the Rust bench to merge (schema in
`write_json`); `--dump-dir DIR` writes the full model's output per photo and size as
DIR/{size}/{photo stem}.npy (float32 [S,S]) for fidelity comparisons.

Usage: .cache/venv/bin/python tools/ort_bench.py [--sizes 224 448] [--threads 1 2] [--frames N]
       [--cut 3] [--json out/ort_bench.json] [--dump-dir out/ort_dump]
"""

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference
from onnx.utils import Extractor
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_EXT = (".png", ".jpg", ".jpeg")


def photos(paths):
    """Image files, and every image in each folder (sorted), in the order given."""
    out = []
    for d in paths:
        if os.path.isfile(d) and d.lower().endswith(IMAGE_EXT):
            out.append(d)
        elif os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith(IMAGE_EXT)]
    return out


def taps(src, dst):
    """Dense [dst, src] resampling matrix of the Rust `pre::Taps`: a triangle filter whose support
    widens to the scale when downscaling, centres aligned, rows normalised to sum 1."""
    scale = src / dst
    support = max(scale, 1.0)
    w = np.zeros((dst, src), np.float64)
    for i in range(dst):
        center = (i + 0.5) * scale - 0.5
        lo = max(int(np.floor(center - support)) + 1, 0)
        hi = min(int(np.ceil(center + support)) - 1, src - 1)
        j = np.arange(lo, hi + 1)
        k = np.maximum(0.0, 1.0 - np.abs((j - center) / support))
        if k.sum() > 0:
            w[i, lo:hi + 1] = k / k.sum()
        else:
            w[i, int(min(max(round(center), 0), src - 1))] = 1.0
    return w


def preprocess(path, size, mean, std):
    """Photo -> [1,3,S,S] float32, as the Rust `pre::preprocess` computes it (up to rounding)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)  # [H, W, 3]
    h, w, _ = rgb.shape
    wy, wx = taps(h, size), taps(w, size)
    out = np.empty((1, 3, size, size), np.float32)
    for c in range(3):
        plane = (rgb[:, :, c] / 255.0 - mean[c]) / std[c]
        out[0, c] = wy @ plane @ wx.T
    return out


def symbolic_hw(model):
    """Make the image input's batch, H and W symbolic so one session serves every size."""
    for v in list(model.graph.input[:1]) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        for d, name in zip(dims, ("batch", None, "H", "W")):
            if name:
                d.Clear()
                d.dim_param = name
    return model


def cut(model_path, manifest, a):
    """(full, stem, middle, head) as serialized ModelProtos, plus each part's input names."""
    blocks = manifest["tokens"]["blocks"]
    if not 1 <= a < len(blocks):
        sys.exit(f"ort_bench: --cut {a} must be in 1..{len(blocks) - 1}")
    image = manifest["input"]["name"]
    output = manifest["output"]["name"]
    tokens_in = blocks[a - 1]
    norm = manifest["tokens"]["final_norm"]
    full = symbolic_hw(onnx.load(model_path))
    inferred = shape_inference.infer_shapes(full)
    ex = Extractor(inferred)
    parts = {
        "full": (full, [image], [output]),
        "stem": (ex.extract_model([image], [tokens_in]), [image], [tokens_in]),
        "middle": (ex.extract_model([tokens_in], [norm]), [tokens_in], [norm]),
        "head": (ex.extract_model([norm, image], [output]), [norm, image], [output]),
    }
    return {k: (m.SerializeToString(), ins, outs) for k, (m, ins, outs) in parts.items()}


def session(data, threads, spin=True):
    o = ort.SessionOptions()
    if not spin:
        # Idle intra-op threads sleep instead of spinning: fairer on a loaded or shared machine.
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    return ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])


def timed(sess, feeds):
    t0 = time.perf_counter()
    out = sess.run(None, feeds)
    return out[0], (time.perf_counter() - t0) * 1e3


def bench(parts, images, sizes, threads, warmup, manifest, dump_dir, spin=True):
    image_name = manifest["input"]["name"]
    results = []
    for t in threads:
        sess = {k: session(data, t, spin) for k, (data, _, _) in parts.items()}
        for s in sizes:
            inputs = [preprocess(p, s, manifest["input"]["mean"], manifest["input"]["std"]) for p in images]
            # Warm-up on the first frame (ORT plans per shape on the first run).
            for _ in range(warmup):
                run_frame(sess, parts, inputs[0], image_name)
            times = {k: [] for k in ("full", "stem", "middle", "head")}
            cut_err = 0.0
            for path, x in zip(images, inputs):
                y, ms = run_frame(sess, parts, x, image_name)
                for k, v in ms.items():
                    times[k].append(v)
                cut_err = max(cut_err, float(np.abs(y["full"] - y["head"]).max()))
                if dump_dir and t == threads[0]:
                    d = os.path.join(dump_dir, str(s))
                    os.makedirs(d, exist_ok=True)
                    stem = os.path.splitext(os.path.basename(path))[0]
                    np.save(os.path.join(d, stem + ".npy"), y["full"].reshape(y["full"].shape[-2:]).astype(np.float32))
            tokens = 1 + (s // manifest["tokens"]["patch"]) ** 2
            for k, v in times.items():
                results.append({
                    "size": s, "threads": t, "part": k, "tokens": tokens,
                    "mean_ms": statistics.fmean(v), "median_ms": statistics.median(v),
                    "min_ms": min(v), "frames": len(v), "per_frame_ms": [round(m, 3) for m in v],
                })
            results.append({"size": s, "threads": t, "part": "cut_check", "max_abs_diff": cut_err})
            print(f"  done: {s}px, {t} thread(s), cut vs full max |diff| {cut_err:.1e}", file=sys.stderr)
    return results


def run_frame(sess, parts, x, image_name):
    """Full model, then stem -> middle -> head on the same frame. Outputs and ms per part."""
    ms, y = {}, {}
    y["full"], ms["full"] = timed(sess["full"], {image_name: x})
    tok, ms["stem"] = timed(sess["stem"], {image_name: x})
    norm, ms["middle"] = timed(sess["middle"], {parts["middle"][1][0]: tok})
    head_in = parts["head"][1]
    y["head"], ms["head"] = timed(sess["head"], {head_in[0]: norm, head_in[1]: x})
    return y, ms


def table(results):
    rows = [r for r in results if r["part"] != "cut_check"]
    print(f"{'size':>5} {'thr':>3} {'part':<7} {'tokens':>6} {'mean ms':>9} {'median ms':>9} {'min ms':>8} {'frames':>6}")
    for r in rows:
        print(f"{r['size']:>5} {r['threads']:>3} {r['part']:<7} {r['tokens']:>6} {r['mean_ms']:>9.1f} "
              f"{r['median_ms']:>9.1f} {r['min_ms']:>8.1f} {r['frames']:>6}")
    by = {(r["size"], r["threads"], r["part"]): r["median_ms"] for r in rows}
    for (s, t, p), v in sorted(by.items()):
        if p == "full":
            parts = sum(by[(s, t, q)] for q in ("stem", "middle", "head"))
            print(f"  {s}px {t} thr: stem+middle+head {parts:.1f} ms vs full {v:.1f} ms (medians)")


def write_json(path, args, manifest, images, results):
    """Schema: {tool, onnxruntime, model, sha256, cut, blocks: {stem, middle}, photos, host,
    results: [{size, threads, part in full|stem|middle|head, tokens, mean_ms, median_ms, min_ms,
    frames, per_frame_ms}, {size, threads, part: "cut_check", max_abs_diff}]}."""
    h = hashlib.sha256()
    with open(args.model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    n = len(manifest["tokens"]["blocks"])
    doc = {
        "tool": "ort_bench",
        "onnxruntime": ort.__version__,
        "model": os.path.relpath(args.model, ROOT),
        "sha256": h.hexdigest(),
        "cut": args.cut,
        "blocks": {"stem": f"0..{args.cut}", "middle": f"{args.cut}..{n}"},
        "warmup": args.warmup,
        "spin": not args.no_spin,
        "photos": [os.path.relpath(p, ROOT) for p in images],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache/models/vit_s_focus.onnx"))
    ap.add_argument("--manifest", default=os.path.join(ROOT, "models/vit_s_focus.toml"))
    ap.add_argument("--photos", nargs="+",
                    default=[os.path.join(ROOT, ".cache/photos"), os.path.join(ROOT, ".cache/voc/JPEGImages")])
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--cut", type=int, default=3, help="first block of the middle (a)")
    ap.add_argument("--frames", type=int, default=0, help="use the first N photos (0 = all)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per part before timing")
    ap.add_argument("--no-spin", action="store_true", help="intra-op threads sleep when idle (loaded machines)")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--dump-dir", help="write full-model outputs as DIR/{size}/{photo}.npy")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        sys.exit(f"ort_bench: {args.model}: not found (run tools/fetch_assets.sh)")
    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    images = photos(args.photos)
    if args.frames > 0:
        images = images[: args.frames]
    if not images:
        sys.exit(f"ort_bench: no photos in {args.photos} (run tools/fetch_assets.sh)")
    patch = manifest["tokens"]["patch"]
    for s in args.sizes:
        if s % patch:
            sys.exit(f"ort_bench: size {s} is not a multiple of the patch size {patch}")
    print(f"ort_bench: onnxruntime {ort.__version__}, {len(images)} photos, sizes {args.sizes}, "
          f"threads {args.threads}, cut a={args.cut}", file=sys.stderr)
    parts = cut(args.model, manifest, args.cut)
    results = bench(parts, images, args.sizes, args.threads, args.warmup, manifest, args.dump_dir, not args.no_spin)
    table(results)
    if args.json:
        write_json(args.json, args, manifest, images, results)


if __name__ == "__main__":
    main()
