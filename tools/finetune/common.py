"""Shared helpers: paths, the photo split, preprocessing like the runtime, and an ONNX Runtime
session of the stock model that also returns the tensors training needs."""
import os
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("AILURUS_CACHE", ROOT / ".cache"))
ONNX = CACHE / "models" / "vit_s_focus.onnx"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
FINAL_NORM = "/backbone/layernorm/Add_1_output_0"
LOGITS = "/decoder/final_conv/Conv_output_0"


def block_out(i):
    return f"/backbone/encoder/layer.{i}/Add_1_output_0"


def read_split():
    """(train, val, eval) paths from tools/finetune/split.txt (paths relative to .cache)."""
    train, val, evals = [], [], []
    for line in (ROOT / "tools/finetune/split.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        kind, rel = line.split()
        {"train": train, "val": val, "eval": evals}[kind].append(CACHE / rel)
    assert not set(train) & set(evals), "a photo is in both train and eval"
    assert not set(val) & (set(train) | set(evals)), "a validation photo is also in train or eval"
    return train, val, evals


def load_rgb(path):
    return Image.open(path).convert("RGB")


def to_input(img, size):
    """PIL RGB -> normalised [1,3,S,S] f32, resized like the runtime (triangle filter, stretched
    to a square)."""
    a = np.asarray(img.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    a = (a - MEAN) / STD
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def session(extra_outputs=(), threads=2):
    """ORT session of the stock model with `extra_outputs` (tensor names) added as outputs."""
    m = onnx.load(str(ONNX))
    # The file pins the input to 224; free H and W (batch stays 1).
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        d.dim_param = name
    for d in m.graph.output[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "OH"
    for name in extra_outputs:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
