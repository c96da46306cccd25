"""Reference embeddings from Python onnxruntime, for tl-backbone's parity tests.

Usage: python reference.py REQUEST.json OUT.json

REQUEST.json describes one model and its inputs:
  {"kind": "text", "onnx": ..., "tokenizer": ..., "max_length": 256,
   "pooling": "mean" | "cls" | "output", "output": NAME_OR_INDEX, "normalize": true,
   "texts": [...]}
  {"kind": "image", "onnx": ..., "output": NAME, "image": {ImageSpec as in the manifest},
   "images": [path or {"width", "height", "channels", "pixels": [...]}, ...]}

Texts are embedded one at a time (no padding at all), so the comparison also checks
that tl-backbone's length-sorted, padded batches change nothing. Images are decoded
with PIL and resized with the same antialiased triangle filter tl-backbone uses,
computed here in float64 with numpy: both sides feed the model the same tensor.
"""

import json
import math
import sys

import numpy as np
import onnxruntime as ort


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def output_index(sess, output):
    names = [o.name for o in sess.get_outputs()]
    return output if isinstance(output, int) else names.index(output)


def text(req):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(req["tokenizer"])
    tok.no_padding()
    tok.enable_truncation(req["max_length"])
    sess = session(req["onnx"])
    inputs = [i.name for i in sess.get_inputs()]
    idx = output_index(sess, req["output"])
    out = []
    for t in req["texts"]:
        enc = tok.encode(t)
        ids = np.array([enc.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}
        res = sess.run(None, {k: feed[k] for k in inputs})[idx]
        if req["pooling"] == "mean":
            v = res[0].mean(0)
        elif req["pooling"] == "cls":
            v = res[0][0]
        else:
            v = res[0]
        v = v.astype(np.float64)
        if req["normalize"]:
            v = v / max(np.linalg.norm(v), 1e-12)
        out.append(v.tolist())
    return out


def axis_weights(in_len, out_len, start, count):
    scale = in_len / out_len
    fs = max(scale, 1.0)
    w = np.zeros((count, in_len))
    for k, i in enumerate(range(start, start + count)):
        center = (i + 0.5) * scale
        lo = max(int(math.floor(center - fs + 0.5)), 0)
        hi = min(int(math.floor(center + fs + 0.5)), in_len)
        xs = (np.arange(lo, hi) - center + 0.5) / fs
        ws = np.maximum(0.0, 1.0 - np.abs(xs))
        if ws.sum() > 0:
            w[k, lo:hi] = ws / ws.sum()
    return w


def load_rgb(item):
    from PIL import Image

    if isinstance(item, str):
        return np.asarray(Image.open(item).convert("RGB"), dtype=np.float64)
    px = np.array(item["pixels"], dtype=np.float64).reshape(item["height"], item["width"], item["channels"])
    return np.repeat(px, 3, axis=2) if item["channels"] == 1 else px


def preprocess(rgb, spec):
    h, w, _ = rgb.shape
    size = spec["size"]
    if spec["resize"]["mode"] == "stretch":
        rw, rh, left, top = size, size, 0, 0
    else:
        s = spec["resize"]["shorter"]
        if w <= h:
            rw, rh = s, max(int(math.floor(h * s / w + 0.5)), s)
        else:
            rw, rh = max(int(math.floor(w * s / h + 0.5)), s), s
        left, top = (rw - size) // 2, (rh - size) // 2
    wx = axis_weights(w, rw, left, size)
    wy = axis_weights(h, rh, top, size)
    img = np.einsum("yh,hwc->ywc", wy, rgb)
    img = np.einsum("ywc,xw->yxc", img, wx)
    x = img / 255.0 * spec["pixel_max"]
    if spec["channels"] == "bgr":
        x = x[..., ::-1]
    x = (x - np.array(spec["mean"])) / np.array(spec["std"])
    if spec["layout"] == "nchw":
        x = x.transpose(2, 0, 1)
    return x.astype(np.float32)


def image(req):
    sess = session(req["onnx"])
    idx = output_index(sess, req["output"])
    name = sess.get_inputs()[0].name
    out = []
    for item in req["images"]:
        x = preprocess(load_rgb(item), req["image"])[None]
        out.append(sess.run(None, {name: x})[idx][0].astype(np.float64).tolist())
    return out


def main():
    req = json.load(open(sys.argv[1]))
    res = text(req) if req["kind"] == "text" else image(req)
    json.dump({"embeddings": res}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
