#!/usr/bin/env python3
"""Build the tiny ONNX ViTs under tests/data/ that mirror the real model's structure.

The real model (.cache/models/vit_s_focus.onnx, a PyTorch 2.7 opset-14 export of DINOv2-S/14 with
a conv saliency decoder) is 97 MB; the runtime's cutting, inspection and reduction code is tested
on these few-KB stand-ins instead. They copy what that code relies on:

- input `input_image` [batch_size,3,S,S] (declared S = 56, patch 14 -> 4x4 tokens), output
  `output_importance` [1,1,S,S] from a Sigmoid
- a Conv patch embed (stride == kernel == 14), a cls prefix token, a position embedding added
- L = 4 pre-norm blocks, width 16, 2 heads, LayerNorm decomposed the way opset-14 exports it
  (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add), layer scale, an erf GELU MLP, two
  residual Adds per block (branch first, residual second, like the export)
- the real tensor names: block i closes with `/backbone/encoder/layer.{i}/Add_1_output_0`, the
  final norm with `/backbone/layernorm/Add_1_output_0`
- attention Reshapes built from Shape/Gather/Unsqueeze/Concat (only the constants heads and
  head width), a Softmax(axis=-1) on [B,H,T,T] logits
- a head that drops the cls token, reshapes the tokens to the grid from Shape(input_image) / 14,
  a ConvTranspose 4x4/2 + Relu, a 1x1 conv, a linear Resize to the input size and a Sigmoid

Position embedding: the real model bicubically resizes a learned 37x37 table to the grid. Here the
patch-token position embedding is computed in the graph from the grid itself, so any grid works
without interpolation: for the patch at row y, column x of an h x w grid, with centres
u = (y + 0.5) / h and v = (x + 0.5) / w, pos = sin(u * fy + v * fx + phase) with fixed random
per-channel fy, fx and phase ([C] each); the cls token gets a learned [1,1,C] vector. It is built
from Shape(patch embed) -> Range -> Cast -> Div, so it folds to a constant once the input size is
fixed (as tract does per plan). The model runs at any multiple of 14 (checked 28..112).

`tiny_vit_baked.onnx` is the same network with every attention Reshape's target shape a constant
(token count 17 = 1 + 4x4 baked in): it runs at 56 only, and never on fewer tokens.
`ailurus inspect` must warn about it.

The generator is deterministic (seeded numpy, fixed op order), so re-running it reproduces the
committed files byte for byte and the sha256 in tests/data/tiny_vit.toml.

Usage: tools/make_tiny_vit.py [--out tests/data] [--check]
  --check  run both files with ONNX Runtime at 28..112 and compare against a numpy reference.
"""

import argparse
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PATCH = 14
EXPORT = 56
WIDTH = 16
HEADS = 2
HEAD_DIM = WIDTH // HEADS
MLP = 32
BLOCKS = 4
EPS = 1e-6
SEED = 20261129
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def weights(seed=SEED):
    """All parameters, drawn in a fixed order from one seeded generator."""
    rng = np.random.RandomState(seed)

    def f(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "patch.w": f(WIDTH, 3, PATCH, PATCH, scale=1.0 / np.sqrt(3 * PATCH * PATCH)),
        "patch.b": f(WIDTH, scale=0.1),
        "cls": f(1, 1, WIDTH),
        "pos.cls": f(1, 1, WIDTH, scale=0.5),
        "pos.fy": f(WIDTH, scale=3.0),
        "pos.fx": f(WIDTH, scale=3.0),
        "pos.phase": f(WIDTH, scale=1.0),
    }
    s = 1.0 / np.sqrt(WIDTH)
    for i in range(BLOCKS):
        p = f"l{i}."
        w[p + "n1.w"] = 1.0 + f(WIDTH, scale=0.1)
        w[p + "n1.b"] = f(WIDTH, scale=0.1)
        for k in ("q", "k", "v", "o"):
            w[p + k + ".w"] = f(WIDTH, WIDTH, scale=s)
            w[p + k + ".b"] = f(WIDTH, scale=0.1)
        w[p + "ls1"] = f(WIDTH, scale=0.3)
        w[p + "n2.w"] = 1.0 + f(WIDTH, scale=0.1)
        w[p + "n2.b"] = f(WIDTH, scale=0.1)
        w[p + "fc1.w"] = f(WIDTH, MLP, scale=s)
        w[p + "fc1.b"] = f(MLP, scale=0.1)
        w[p + "fc2.w"] = f(MLP, WIDTH, scale=1.0 / np.sqrt(MLP))
        w[p + "fc2.b"] = f(WIDTH, scale=0.1)
        w[p + "ls2"] = f(WIDTH, scale=0.3)
    w["norm.w"] = 1.0 + f(WIDTH, scale=0.1)
    w["norm.b"] = f(WIDTH, scale=0.1)
    w["up.w"] = f(WIDTH, 8, 4, 4, scale=1.0 / np.sqrt(WIDTH * 4))
    w["up.b"] = f(8, scale=0.1)
    w["final.w"] = f(1, 8, 1, 1, scale=1.0)
    w["final.b"] = f(1, scale=0.1)
    return w


class Graph:
    """Node/initializer lists with PyTorch-export style names: node `{scope}/{Op}_{k}`, output
    `{node}_output_0`."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.counts = {}

    def node_name(self, scope, op):
        key = (scope, op)
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        return f"{scope}/{op}" if k == 0 else f"{scope}/{op}_{k}"

    def op(self, scope, op, inputs, **attrs):
        name = self.node_name(scope, op)
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def op_named(self, scope, op, inputs, output, **attrs):
        name = self.node_name(scope, op)
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def const(self, scope, value, dtype=np.int64):
        arr = np.asarray(value, dtype=dtype)
        name = self.node_name(scope, "Constant")
        out = f"{name}_output_0"
        t = numpy_helper.from_array(arr, name=out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=name, value=t))
        return out

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name=name))
        return name

    def dim(self, scope, x, axis):
        """Shape(x)[axis] as a 1-element int64 tensor (Shape -> Gather -> Unsqueeze)."""
        shp = self.op(scope, "Shape", [x])
        g = self.op(scope, "Gather", [shp, self.const(scope, axis)], axis=0)
        return self.op(scope, "Unsqueeze", [g, self.const(scope, [0])])


def layer_norm(g, scope, x, w, b):
    mean = g.op(scope, "ReduceMean", [x], axes=[-1])
    d = g.op(scope, "Sub", [x, mean])
    sq = g.op(scope, "Pow", [d, g.const(scope, 2.0, np.float32)])
    var = g.op(scope, "ReduceMean", [sq], axes=[-1])
    ve = g.op(scope, "Add", [var, g.const(scope, EPS, np.float32)])
    sd = g.op(scope, "Sqrt", [ve])
    n = g.op(scope, "Div", [d, sd])
    m = g.op(scope, "Mul", [n, w])
    return g.op(scope, "Add", [m, b])


def linear(g, scope, x, w, b):
    y = g.op(scope, "MatMul", [x, w])
    return g.op(scope, "Add", [b, y])


def split_heads(g, scope, x, baked_t):
    """[B,T,C] -> [B,T,H,D] with a Shape-built (or, baked, a constant) target shape."""
    if baked_t is None:
        bdim = g.dim(scope, x, 0)
        tdim = g.dim(scope, x, 1)
        shape = g.op(scope, "Concat", [bdim, tdim, g.const(scope, [HEADS]), g.const(scope, [HEAD_DIM])], axis=0)
    else:
        shape = g.const(scope, [1, baked_t, HEADS, HEAD_DIM])
    return g.op(scope, "Reshape", [x, shape])


def attention(g, i, x, baked_t):
    sc = f"/backbone/encoder/layer.{i}/attention/attention"
    p = f"backbone.encoder.layer.{i}.attention.attention."
    k = linear(g, sc + "/key", x, f"{p}key.weight", f"{p}key.bias")
    k = split_heads(g, sc, k, baked_t)
    v = linear(g, sc + "/value", x, f"{p}value.weight", f"{p}value.bias")
    v = g.op(sc, "Transpose", [split_heads(g, sc, v, baked_t)], perm=[0, 2, 1, 3])
    q = linear(g, sc + "/query", x, f"{p}query.weight", f"{p}query.bias")
    q = g.op(sc, "Transpose", [split_heads(g, sc, q, baked_t)], perm=[0, 2, 1, 3])
    kt = g.op(sc, "Transpose", [k], perm=[0, 2, 3, 1])
    scale = float(HEAD_DIM) ** -0.25
    q = g.op(sc, "Mul", [q, g.const(sc, scale, np.float32)])
    kt = g.op(sc, "Mul", [kt, g.const(sc, scale, np.float32)])
    logits = g.op(sc, "MatMul", [q, kt])
    attn = g.op(sc, "Softmax", [logits], axis=-1)
    ctx = g.op(sc, "MatMul", [attn, v])
    ctx = g.op(sc, "Transpose", [ctx], perm=[0, 2, 1, 3])
    if baked_t is None:
        shape = g.op(sc, "Concat", [g.dim(sc, ctx, 0), g.dim(sc, ctx, 1), g.const(sc, [WIDTH])], axis=0)
    else:
        shape = g.const(sc, [1, baked_t, WIDTH])
    ctx = g.op(sc, "Reshape", [ctx, shape])
    po = f"backbone.encoder.layer.{i}.attention.output.dense."
    return linear(g, f"/backbone/encoder/layer.{i}/attention/output/dense", ctx, po + "weight", po + "bias")


def gelu(g, scope, x):
    d = g.op(scope, "Div", [x, g.const(scope, np.sqrt(2.0), np.float32)])
    e = g.op(scope, "Erf", [d])
    a = g.op(scope, "Add", [e, g.const(scope, 1.0, np.float32)])
    m = g.op(scope, "Mul", [x, a])
    return g.op(scope, "Mul", [m, g.const(scope, 0.5, np.float32)])


def block(g, i, x, baked_t):
    sc = f"/backbone/encoder/layer.{i}"
    p = f"backbone.encoder.layer.{i}."
    h = layer_norm(g, sc + "/norm1", x, p + "norm1.weight", p + "norm1.bias")
    a = attention(g, i, h, baked_t)
    a = g.op(sc + "/layer_scale1", "Mul", [a, p + "layer_scale1.lambda1"])
    r1 = g.op(sc, "Add", [a, x])
    h = layer_norm(g, sc + "/norm2", r1, p + "norm2.weight", p + "norm2.bias")
    h = linear(g, sc + "/mlp/fc1", h, p + "mlp.fc1.weight", p + "mlp.fc1.bias")
    h = gelu(g, sc + "/mlp/activation", h)
    h = linear(g, sc + "/mlp/fc2", h, p + "mlp.fc2.weight", p + "mlp.fc2.bias")
    h = g.op(sc + "/layer_scale2", "Mul", [h, p + "layer_scale2.lambda1"])
    out = g.op(sc, "Add", [h, r1])
    assert out == f"/backbone/encoder/layer.{i}/Add_1_output_0", out
    return out


def embeddings(g, image):
    sc = "/backbone/embeddings"
    conv = g.op(sc + "/patch_embeddings/projection", "Conv",
                [image, "backbone.embeddings.patch_embeddings.projection.weight",
                 "backbone.embeddings.patch_embeddings.projection.bias"],
                kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH], pads=[0, 0, 0, 0],
                dilations=[1, 1], group=1)
    ps = sc + "/patch_embeddings"
    shp = g.op(ps, "Shape", [conv])
    bc = g.op(ps, "Slice", [shp, g.const(ps, [0]), g.const(ps, [2]), g.const(ps, [0])])
    flat = g.op(ps, "Reshape", [conv, g.op(ps, "Concat", [bc, g.const(ps, [-1])], axis=0)])
    patches = g.op(ps, "Transpose", [flat], perm=[0, 2, 1])
    # cls token expanded to the batch.
    batch = g.dim(sc, image, 0)
    cls = g.op(sc, "Expand", ["backbone.embeddings.cls_token",
                              g.op(sc, "Concat", [batch, g.const(sc, [1]), g.const(sc, [1])], axis=0)])
    tokens = g.op(sc, "Concat", [cls, patches], axis=1)
    # Grid position embedding, computed from the grid (no table, no interpolation).
    shp = g.op(sc, "Shape", [conv])

    def centres(axis):
        n = g.op(sc, "Gather", [shp, g.const(sc, axis)], axis=0)
        r = g.op(sc, "Range", [g.const(sc, 0), n, g.const(sc, 1)])
        rf = g.op(sc, "Cast", [r], to=TensorProto.FLOAT)
        nf = g.op(sc, "Cast", [n], to=TensorProto.FLOAT)
        return g.op(sc, "Div", [g.op(sc, "Add", [rf, g.const(sc, 0.5, np.float32)]), nf])

    u = g.op(sc, "Unsqueeze", [centres(2), g.const(sc, [1, 2])])  # [h,1,1]
    v = g.op(sc, "Unsqueeze", [centres(3), g.const(sc, [0, 2])])  # [1,w,1]
    arg = g.op(sc, "Add", [g.op(sc, "Mul", [u, "backbone.embeddings.pos.fy"]),
                           g.op(sc, "Mul", [v, "backbone.embeddings.pos.fx"])])
    grid = g.op(sc, "Sin", [g.op(sc, "Add", [arg, "backbone.embeddings.pos.phase"])])  # [h,w,C]
    grid = g.op(sc, "Reshape", [grid, g.const(sc, [1, -1, WIDTH])])
    pos = g.op(sc, "Concat", ["backbone.embeddings.pos.cls", grid], axis=1)
    return g.op(sc, "Add", [tokens, pos])


def head(g, image, tokens):
    # Grid side from the image shape, like the export: H / 14, W / 14.
    def side(axis):
        n = g.op("", "Gather", [g.op("", "Shape", [image]), g.const("", axis)], axis=0)
        return g.op("", "Unsqueeze", [g.op("", "Div", [n, g.const("", PATCH)]), g.const("", [0])])

    def image_dim(axis):
        n = g.op("", "Gather", [g.op("", "Shape", [image]), g.const("", axis)], axis=0)
        return g.op("", "Unsqueeze", [n, g.const("", [0])])

    big = np.iinfo(np.int64).max
    patches = g.op("", "Slice", [tokens, g.const("", [1]), g.const("", [big]), g.const("", [1]), g.const("", [1])])
    chw = g.op("", "Transpose", [patches], perm=[0, 2, 1])
    shape = g.op("", "Concat", [image_dim(0), g.const("", [WIDTH]), side(2), side(3)], axis=0)
    grid = g.op("", "Reshape", [chw, shape])
    up = g.op("/decoder/upconv1", "ConvTranspose", [grid, "decoder.upconv1.weight", "decoder.upconv1.bias"],
              kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    up = g.op("/decoder/relu1", "Relu", [up])
    logit = g.op("/decoder/final_conv", "Conv", [up, "decoder.final_conv.weight", "decoder.final_conv.bias"],
                 kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    d = "/decoder"
    hw = g.op(d, "Concat", [image_dim(2), image_dim(3)], axis=0)
    nc = g.op(d, "Slice", [g.op(d, "Shape", [logit]), g.const(d, [0]), g.const(d, [2]), g.const(d, [0])])
    sizes = g.op(d, "Concat", [nc, hw], axis=0)
    resized = g.op(d, "Resize", [logit, "", "", sizes], mode="linear",
                   coordinate_transformation_mode="half_pixel")
    return g.op_named("", "Sigmoid", [resized], "output_importance")


def build(w, baked_t=None):
    g = Graph()
    g.init("backbone.embeddings.cls_token", w["cls"])
    g.init("backbone.embeddings.pos.cls", w["pos.cls"])
    g.init("backbone.embeddings.pos.fy", w["pos.fy"])
    g.init("backbone.embeddings.pos.fx", w["pos.fx"])
    g.init("backbone.embeddings.pos.phase", w["pos.phase"])
    g.init("backbone.embeddings.patch_embeddings.projection.weight", w["patch.w"])
    g.init("backbone.embeddings.patch_embeddings.projection.bias", w["patch.b"])
    for i in range(BLOCKS):
        p, q = f"backbone.encoder.layer.{i}.", f"l{i}."
        g.init(p + "norm1.weight", w[q + "n1.w"])
        g.init(p + "norm1.bias", w[q + "n1.b"])
        for k, name in (("q", "query"), ("k", "key"), ("v", "value")):
            g.init(f"{p}attention.attention.{name}.weight", w[q + k + ".w"])
            g.init(f"{p}attention.attention.{name}.bias", w[q + k + ".b"])
        g.init(p + "attention.output.dense.weight", w[q + "o.w"])
        g.init(p + "attention.output.dense.bias", w[q + "o.b"])
        g.init(p + "layer_scale1.lambda1", w[q + "ls1"])
        g.init(p + "norm2.weight", w[q + "n2.w"])
        g.init(p + "norm2.bias", w[q + "n2.b"])
        g.init(p + "mlp.fc1.weight", w[q + "fc1.w"])
        g.init(p + "mlp.fc1.bias", w[q + "fc1.b"])
        g.init(p + "mlp.fc2.weight", w[q + "fc2.w"])
        g.init(p + "mlp.fc2.bias", w[q + "fc2.b"])
        g.init(p + "layer_scale2.lambda1", w[q + "ls2"])
    g.init("backbone.layernorm.weight", w["norm.w"])
    g.init("backbone.layernorm.bias", w["norm.b"])
    g.init("decoder.upconv1.weight", w["up.w"])
    g.init("decoder.upconv1.bias", w["up.b"])
    g.init("decoder.final_conv.weight", w["final.w"])
    g.init("decoder.final_conv.bias", w["final.b"])

    x = embeddings(g, "input_image")
    for i in range(BLOCKS):
        x = block(g, i, x, baked_t)
    x = layer_norm(g, "/backbone/layernorm", x, "backbone.layernorm.weight", "backbone.layernorm.bias")
    assert x == "/backbone/layernorm/Add_1_output_0", x
    head(g, "input_image", x)

    image = helper.make_tensor_value_info("input_image", TensorProto.FLOAT, ["batch_size", 3, EXPORT, EXPORT])
    out = helper.make_tensor_value_info("output_importance", TensorProto.FLOAT, ["batch_size", 1, EXPORT, EXPORT])
    name = "tiny_vit_baked" if baked_t else "tiny_vit"
    graph = helper.make_graph(g.nodes, "main_graph", [image], [out], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                              producer_name="ailurus tools/make_tiny_vit.py", producer_version="1")
    model.ir_version = 7
    model.doc_string = f"{name}: a tiny DINOv2-shaped ViT for tests (seed {SEED})"
    onnx.checker.check_model(model)
    return model


# ---- numpy reference (the slow, obvious forward pass) ----------------------------------------

def ln_ref(x, w, b):
    m = x.mean(-1, keepdims=True)
    d = x - m
    return d / np.sqrt((d * d).mean(-1, keepdims=True) + EPS) * w + b


def reference(w, img):
    """Forward pass of the same network in plain numpy (float64), up to the final-norm tokens."""
    from math import erf

    s = img.shape[2]
    n = s // PATCH
    pw = w["patch.w"].reshape(WIDTH, -1).astype(np.float64)
    patches = img[0].reshape(3, n, PATCH, n, PATCH).transpose(1, 3, 0, 2, 4).reshape(n * n, -1)
    tok = patches @ pw.T + w["patch.b"]
    c = (np.arange(n) + 0.5) / n
    pos = np.sin(c[:, None, None] * w["pos.fy"] + c[None, :, None] * w["pos.fx"] + w["pos.phase"])
    x = np.concatenate([w["cls"][0] + w["pos.cls"][0], tok + pos.reshape(n * n, WIDTH)], 0)
    verf = np.vectorize(erf)
    for i in range(BLOCKS):
        p = f"l{i}."
        h = ln_ref(x, w[p + "n1.w"], w[p + "n1.b"])
        q, k, v = (h @ w[p + t + ".w"] + w[p + t + ".b"] for t in "qkv")
        outs = []
        for hd in range(HEADS):
            sl = slice(hd * HEAD_DIM, (hd + 1) * HEAD_DIM)
            lg = q[:, sl] @ k[:, sl].T / np.sqrt(HEAD_DIM)
            e = np.exp(lg - lg.max(-1, keepdims=True))
            outs.append((e / e.sum(-1, keepdims=True)) @ v[:, sl])
        a = np.concatenate(outs, 1) @ w[p + "o.w"] + w[p + "o.b"]
        x = x + a * w[p + "ls1"]
        h = ln_ref(x, w[p + "n2.w"], w[p + "n2.b"]) @ w[p + "fc1.w"] + w[p + "fc1.b"]
        h = h * 0.5 * (1.0 + verf(h / np.sqrt(2.0)))
        x = x + (h @ w[p + "fc2.w"] + w[p + "fc2.b"]) * w[p + "ls2"]
    return ln_ref(x, w["norm.w"], w["norm.b"])


def check(paths, w):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # the baked model's expected failures log loudly otherwise
    rng = np.random.RandomState(1)
    for path in paths:
        m = onnx.load(path)
        # ORT checks the declared input dims; make H and W symbolic to run other sizes.
        for d, p in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
            d.dim_param = p
        for d, p in zip(m.graph.output[0].type.tensor_type.shape.dim[2:], ("H", "W")):
            d.dim_param = p
        norm = "/backbone/layernorm/Add_1_output_0"
        m.graph.output.append(helper.make_tensor_value_info(norm, TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        baked = "baked" in os.path.basename(path)
        for s in range(28, 113, 14):
            img = rng.standard_normal((1, 3, s, s)).astype(np.float32)
            try:
                out, toks = sess.run(["output_importance", norm], {"input_image": img})
            except Exception as e:  # noqa: BLE001 (ORT raises its own exception types)
                if baked and s != EXPORT:
                    print(f"  {os.path.basename(path)} at {s}: fails as expected ({str(e).splitlines()[0][:90]}...)")
                    continue
                raise
            if baked and s != EXPORT:
                sys.exit(f"{path}: ran at {s} although the token count is baked for {EXPORT}")
            ref = reference(w, img.astype(np.float64))
            err = float(np.abs(toks[0] - ref).max())
            assert out.shape == (1, 1, s, s), out.shape
            assert err < 1e-4, f"{path} at {s}: final-norm tokens differ from numpy by {err}"
            print(f"  {os.path.basename(path)} at {s}: output {out.shape}, range "
                  f"[{out.min():.3f}, {out.max():.3f}], tokens vs numpy {err:.1e}")


def manifest(name, file, sha):
    blocks = ",\n".join(f'  "/backbone/encoder/layer.{i}/Add_1_output_0"' for i in range(BLOCKS))
    return f"""# Generated by tools/make_tiny_vit.py: a tiny DINOv2-shaped test model ({BLOCKS} blocks, width {WIDTH},
# {HEADS} heads, random weights). Runs at any multiple of {PATCH}{' (the baked variant only at 56)' if 'baked' in name else ''}.
name = "{name}"
file = "{file}"
sha256 = "{sha}"

[input]
name = "input_image"
size = {EXPORT}
mean = {MEAN}
std = {STD}

[tokens]
patch = {PATCH}
prefix = 1
width = {WIDTH}
final_norm = "/backbone/layernorm/Add_1_output_0"
blocks = [
{blocks},
]

[output]
name = "output_importance"
kind = "saliency"
threshold = 0.5
classes = [
  {{ name = "background", color = [0, 0, 0] }},
  {{ name = "salient", color = [255, 64, 0] }},
]
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "data"))
    ap.add_argument("--check", action="store_true", help="run with ONNX Runtime against numpy")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    w = weights()
    tokens = 1 + (EXPORT // PATCH) ** 2
    written = []
    for name, baked in (("tiny_vit", None), ("tiny_vit_baked", tokens)):
        data = build(w, baked).SerializeToString()
        path = os.path.join(args.out, name + ".onnx")
        with open(path, "wb") as f:
            f.write(data)
        sha = hashlib.sha256(data).hexdigest()
        with open(os.path.join(args.out, name + ".toml"), "w") as f:
            f.write(manifest(name, name + ".onnx", sha))
        print(f"{path}: {len(data)} bytes, sha256 {sha}")
        written.append(path)
    if args.check:
        check(written, w)


if __name__ == "__main__":
    main()
