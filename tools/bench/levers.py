"""Text-extraction levers of `cargo xtask bench`, measured on one ONNX Runtime: batching,
threading and session options, a fused graph of the same weights, and int8 activations.

Both stacks run the same runtime (99% of their time is inside it), so a lever measured here
is what it would give either of them. Each variant embeds the same texts; the rows say how
fast and how far its mean-pooled, L2-normalised vectors are from the model file's own on
exact-length batches (the reference the parity tests hold both stacks to). A profile of the
reference pass says where the time goes and how close the matrix products are to the
machine's fp32 peak.

Usage:
  python levers.py --onnx M --tokenizer T --texts TEXTS.json --threads 2 --rounds 3 \
                   --work DIR --peak-gflops 333
Prints one JSON line.
"""

import argparse
import collections
import json
import os
import statistics
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from tokenizers import Tokenizer

# MiniLM-L6: 6 layers, d 384, ff 1536: the projections' FLOP per token (as the bench's
# % of peak counts them; attention scores are left out).
GFLOP_PER_TOKEN = 6 * 2 * (4 * 384 * 384 + 2 * 384 * 1536) / 1e9


def session(path, threads, spin=True):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    if not spin:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def batches(lens, per_batch, kind, budget=0):
    """Indices in batches: `exact` = one length per batch (this toolkit), `sorted` = sorted
    by length and padded to the longest (sentence-transformers)."""
    if kind == "sorted":
        order = np.argsort(lens, kind="stable")
        return [list(order[s : s + per_batch]) for s in range(0, len(order), per_batch)]
    groups = collections.defaultdict(list)
    for i, n in enumerate(lens):
        groups[n].append(i)
    out = []
    for n in sorted(groups):
        g = groups[n]
        size = max(per_batch, budget // n) if budget else per_batch
        out += [g[s : s + size] for s in range(0, len(g), size)]
    return out


def feeds(encs, lens, bl, names):
    out = []
    for idx in bl:
        seq = max(lens[i] for i in idx)
        ids = np.zeros((len(idx), seq), np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : lens[i]] = encs[i]
            mask[r, : lens[i]] = 1
        f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out.append({k: f[k] for k in names})
    return out


def embed(sessions, bl, fs, n):
    """Runs the batches (alternating over the sessions, each on its own thread) and returns
    the pooled vectors."""
    out = np.zeros((n, 384), np.float32)

    def work(k):
        for j in range(k, len(fs), len(sessions)):
            h = sessions[k].run(None, fs[j])[0]
            m = fs[j]["attention_mask"][..., None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            out[bl[j]] = v / np.linalg.norm(v, axis=1, keepdims=True)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(len(sessions))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def fused_graph(src, dst):
    """The same weights as a graph of ONNX Runtime's fused BERT operators: one
    EmbedLayerNormalization, and per layer Attention (q, k, v in one product),
    SkipLayerNormalization (residual, bias and LayerNorm in one pass) and BiasGelu. Weights
    stored as int8 and a scale are dequantised exactly as the graph does (Cast, then Mul)."""
    m = onnx.load(src)
    g = m.graph
    vals = {i.name: nh.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            vals[n.output[0]] = nh.to_array(n.attribute[0].t)
    casts = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Cast" and n.input[0] in vals}
    for n in g.node:
        if n.op_type == "Mul" and n.input[0] in casts and n.input[1] in vals:
            vals[n.output[0]] = vals[casts[n.input[0]]].astype(np.float32) * vals[n.input[1]].astype(np.float32)
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    # Each projection: MatMul by a constant, then Add of a constant bias.
    proj = []
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in vals:
            add = next(c for c in consumers[n.output[0]] if c.op_type == "Add")
            bias = next(i for i in add.input if i in vals)
            proj.append((vals[n.input[1]], vals[bias]))
    norms = [(vals[n.input[1]], vals[n.input[2]]) for n in g.node if n.op_type == "LayerNormalization"]
    gathers = {n.input[1]: vals[n.input[0]] for n in g.node if n.op_type == "Gather" and n.input[0] in vals}
    word, seg = gathers["input_ids"], gathers["token_type_ids"]
    pos = next(v for k, v in gathers.items() if k not in ("input_ids", "token_type_ids"))
    layers = len(proj) // 6
    assert len(proj) == 6 * layers and len(norms) == 2 * layers + 1, (len(proj), len(norms))
    inits, nodes = [], []

    def init(name, arr):
        inits.append(nh.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    ms = "com.microsoft"
    nodes += [
        oh.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        oh.make_node("Cast", ["token_type_ids"], ["seg32"], to=TensorProto.INT32),
        oh.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
        oh.make_node(
            "EmbedLayerNormalization",
            ["ids32", "seg32", init("word", word), init("pos", pos), init("seg", seg),
             init("eg", norms[0][0]), init("eb", norms[0][1]), "mask32"],
            ["x0", "mask_index"], domain=ms, epsilon=1e-12),
    ]
    x = "x0"
    heads = 12
    for l in range(layers):
        (q, qb), (k, kb), (v, vb), (o, ob), (f1, f1b), (f2, f2b) = proj[6 * l : 6 * l + 6]
        (g1, b1), (g2, b2) = norms[1 + 2 * l], norms[2 + 2 * l]
        y = f"x{l + 1}" if l + 1 < layers else "last_hidden_state"
        nodes += [
            oh.make_node("Attention", [x, init(f"qkv{l}", np.concatenate([q, k, v], 1)),
                                       init(f"qkvb{l}", np.concatenate([qb, kb, vb])), "mask_index"],
                         [f"att{l}"], domain=ms, num_heads=heads),
            oh.make_node("MatMul", [f"att{l}", init(f"o{l}", o)], [f"ao{l}"]),
            oh.make_node("SkipLayerNormalization", [f"ao{l}", x, init(f"g1{l}", g1), init(f"b1{l}", b1),
                                                    init(f"ob{l}", ob)], [f"n{l}"], domain=ms, epsilon=1e-12),
            oh.make_node("MatMul", [f"n{l}", init(f"f1{l}", f1)], [f"h{l}"]),
            oh.make_node("BiasGelu", [f"h{l}", init(f"f1b{l}", f1b)], [f"gelu{l}"], domain=ms),
            oh.make_node("MatMul", [f"gelu{l}", init(f"f2{l}", f2)], [f"fo{l}"]),
            oh.make_node("SkipLayerNormalization", [f"fo{l}", f"n{l}", init(f"g2{l}", g2), init(f"b2{l}", b2),
                                                    init(f"f2b{l}", f2b)], [y], domain=ms, epsilon=1e-12),
        ]
        x = y
    ins = [oh.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
           for n in ["input_ids", "attention_mask", "token_type_ids"]]
    out = [oh.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", 384])]
    model = oh.make_model(oh.make_graph(nodes, "bert_fused", ins, out, inits), ir_version=8,
                          opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(ms, 1)])
    onnx.save(model, dst)


def int8_graph(src, dst):
    """`src` with int8 activations: dynamic quantisation of every projection and the
    attention (MatMulInteger / QAttention: VNNI or AMX int8 kernels where the CPU has them)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def profile(path, threads, fs, tokens, work):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.enable_profiling = True
    o.profile_file_prefix = os.path.join(work, "profile")
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    for f in fs:
        s.run(None, f)
    events = json.load(open(s.end_profiling()))
    by_op, total = collections.Counter(), 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            total += e["dur"]
    matmul_s = by_op["MatMul"] / 1e6
    return {
        "op_share": [[k, v / total] for k, v in by_op.most_common(8)],
        "matmul_s": matmul_s,
        "kernel_s": total / 1e6,
        "matmul_gflops": tokens * GFLOP_PER_TOKEN / matmul_s,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--onnx", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", required=True, help="folder for the derived graphs")
    p.add_argument("--peak-gflops", type=float, required=True)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    texts = json.load(open(a.texts))
    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_padding()
    tok.enable_truncation(256)
    encs = [e.ids for e in tok.encode_batch(texts)]
    lens = np.array([len(e) for e in encs])
    fused = os.path.join(a.work, "fused.onnx")
    int8 = os.path.join(a.work, "fused-int8.onnx")
    t = time.perf_counter()
    fused_graph(a.onnx, fused)
    int8_graph(fused, int8)
    build_s = time.perf_counter() - t

    th = a.threads
    base = session(a.onnx, th)
    names = [i.name for i in base.get_inputs()]
    exact = batches(lens, 32, "exact")
    ref = embed([base], exact, feeds(encs, lens, exact, names), len(texts))

    def variant(label, paths, bl, spin=True):
        ss = [session(x, t, spin) for x, t in paths]
        ns = [i.name for i in ss[0].get_inputs()]
        return {"label": label, "sessions": ss, "batches": bl, "feeds": feeds(encs, lens, bl, ns)}

    one = [(a.onnx, th)]
    variants = [
        variant("length-sorted, padded batches of 32 (sentence-transformers' loop)", one, batches(lens, 32, "sorted")),
        variant("one length per batch, 32 rows (this toolkit)", one, exact),
        variant("one length per batch, 128 rows", one, batches(lens, 128, "exact")),
        variant("one length per batch, a budget of 4,096 tokens", one, batches(lens, 32, "exact", 4096)),
        variant("thread spinning off", one, exact, spin=False),
        variant(f"{th} sessions x 1 thread, alternating batches", [(a.onnx, 1)] * th, exact),
        variant("fused graph of the same weights (Attention, SkipLayerNorm, BiasGelu)", [(fused, th)], exact),
        variant("fused graph, int8 activations (dynamic quantisation)", [(int8, th)], exact),
    ]
    for v in variants:
        got = embed(v["sessions"], v["batches"], v["feeds"], len(texts))
        v["max_abs_diff"] = float(np.abs(got - ref).max())
        v["min_cosine"] = float((got * ref).sum(1).min())
        v["rates"] = []
    for _ in range(a.rounds):
        for v in variants:
            t = time.perf_counter()
            embed(v["sessions"], v["batches"], v["feeds"], len(texts))
            v["rates"].append(len(texts) / (time.perf_counter() - t))
    # Loading: the model file as given vs the optimised graph ONNX Runtime saved of it.
    saved = os.path.join(a.work, "optimised.onnx")
    o = ort.SessionOptions()
    o.optimized_model_filepath = saved
    ort.InferenceSession(a.onnx, o, providers=["CPUExecutionProvider"])
    load = {}
    for label, path, level in [("model file", a.onnx, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                               ("saved optimised graph", saved, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]:
        times = []
        for _ in range(3):
            o = ort.SessionOptions()
            o.intra_op_num_threads = th
            o.graph_optimization_level = level
            t = time.perf_counter()
            ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
            times.append(time.perf_counter() - t)
        load[label] = statistics.median(times)
    tokens = int(lens.sum())
    prof = profile(a.onnx, th, feeds(encs, lens, exact, names), tokens, a.work)
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    rows = []
    for v in variants:
        r = statistics.median(v["rates"])
        rows.append({"variant": v["label"], "items_per_s": r, "rates": v["rates"],
                     "max_abs_diff": v["max_abs_diff"], "min_cosine": v["min_cosine"],
                     "gflops": r * tokens / len(texts) * GFLOP_PER_TOKEN})
    print(json.dumps({"rows": rows, "profile": prof, "load_s": load, "tokens": tokens,
                      "items": len(texts), "derive_s": build_s,
                      "int8_isa": [f for f in flags if f in ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")],
                      "peak_gflops": a.peak_gflops,
                      "matmul_peak_fraction": prof["matmul_gflops"] / a.peak_gflops}))


if __name__ == "__main__":
    main()
