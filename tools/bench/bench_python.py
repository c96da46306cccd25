"""The Python side of `cargo xtask bench`: onnxruntime + tokenizers (text) or
onnxruntime + PIL/numpy (images) on the same model file, inputs, batch size and threads.

Usage:
  python bench_python.py text  --onnx M --tokenizer T --max-length L --pooling mean|output
                               --output NAME_OR_INDEX --texts TEXTS.json [--sort] ...
  python bench_python.py image --onnx M --spec SPEC.json --idx IMAGES --limit N ...
Common: --batch-size B --threads T --repeat R. Prints one JSON line like the Rust runner.
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def text_workload(a):
    from tokenizers import Tokenizer

    texts = json.load(open(a.texts))
    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_padding()
    tok.enable_truncation(a.max_length)
    sess = session(a.onnx, a.threads)
    names = [i.name for i in sess.get_inputs()]
    out_idx = int(a.output) if a.output.isdigit() else [o.name for o in sess.get_outputs()].index(a.output)

    def run(warm=False):
        texts_ = texts[:64] if warm else texts
        stats = {"prepare_s": 0.0, "run_s": 0.0, "pool_s": 0.0, "real": 0, "processed": 0}
        t0 = time.perf_counter()
        encs = tok.encode_batch(texts_)
        order = sorted(range(len(texts_)), key=lambda i: len(encs[i].ids)) if a.sort else list(range(len(texts_)))
        stats["prepare_s"] += time.perf_counter() - t0
        out = np.zeros((len(texts_), 384), np.float32)
        for s in range(0, len(order), a.batch_size):
            t1 = time.perf_counter()
            idx = order[s : s + a.batch_size]
            seq = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), seq), np.int64)
            mask = np.zeros_like(ids)
            for r, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[r, :n] = encs[i].ids
                mask[r, :n] = 1
                stats["real"] += n
            stats["processed"] += ids.size
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            t2 = time.perf_counter()
            res = sess.run(None, {k: feed[k] for k in names})[out_idx]
            t3 = time.perf_counter()
            if a.pooling == "mean":
                m = mask[..., None].astype(np.float32)
                v = (res * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            else:
                v = res
            v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
            out[idx] = v
            t4 = time.perf_counter()
            stats["prepare_s"] += t2 - t1
            stats["run_s"] += t3 - t2
            stats["pool_s"] += t4 - t3
        stats["total_s"] = time.perf_counter() - t0
        return len(texts_), stats

    return run


def image_workload(a):
    from PIL import Image

    spec = json.load(open(a.spec))
    raw = open(a.idx, "rb").read()
    n, h, w = (int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(3))
    n = min(n, a.limit)
    digits = [np.frombuffer(raw[16 + i * h * w : 16 + (i + 1) * h * w], np.uint8).reshape(h, w) for i in range(n)]
    sess = session(a.onnx, a.threads)
    name = sess.get_inputs()[0].name
    size = spec["size"]
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)

    def prep(d):
        img = Image.fromarray(d).convert("RGB")
        if spec["resize"]["mode"] == "stretch":
            img = img.resize((size, size), Image.BILINEAR)
        else:
            s = spec["resize"]["shorter"]
            img = img.resize((s, s), Image.BILINEAR)
            o = (s - size) // 2
            img = img.crop((o, o, o + size, o + size))
        x = np.asarray(img, np.float32) * (spec["pixel_max"] / 255.0)
        if spec["channels"] == "bgr":
            x = x[..., ::-1]
        x = (x - mean) / std
        return x.transpose(2, 0, 1) if spec["layout"] == "nchw" else x

    def run(warm=False):
        m = min(n, 64) if warm else n
        stats = {"prepare_s": 0.0, "run_s": 0.0, "pool_s": 0.0}
        t0 = time.perf_counter()
        for s in range(0, m, a.batch_size):
            t1 = time.perf_counter()
            batch = np.stack([prep(d) for d in digits[s : min(s + a.batch_size, m)]]).astype(np.float32)
            t2 = time.perf_counter()
            sess.run(None, {name: batch})
            stats["prepare_s"] += t2 - t1
            stats["run_s"] += time.perf_counter() - t2
        stats["total_s"] = time.perf_counter() - t0
        return m, stats

    return run


def exported(folder):
    """The train and test matrices and labels fit-bench exported (raw little-endian f32 / u32)."""
    import os

    meta = json.load(open(os.path.join(folder, "meta.json")))

    def load(name):
        x = np.fromfile(os.path.join(folder, name + ".f32"), dtype="<f4").reshape(-1, meta["dim"])
        y = np.fromfile(os.path.join(folder, name + ".labels"), dtype="<u4")
        return x, y

    return load("train"), load("test")


def fit_workload(a):
    """scikit-learn LogisticRegression(C=1, lbfgs, max_iter=1000) on the features the Rust side
    exported; prints fit times, test accuracy and peak RSS."""
    import os
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from sklearn.linear_model import LogisticRegression

    (xtr, ytr), (xte, yte) = exported(a.features)
    fit_s, acc, iters = [], 0.0, 0
    for _ in range(a.repeat):
        t = time.perf_counter()
        m = LogisticRegression(C=1.0, max_iter=1000).fit(xtr, ytr)
        fit_s.append(time.perf_counter() - t)
        acc = float((m.predict(xte) == yte).mean())
        iters = int(m.n_iter_.max())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"fit_s": fit_s, "accuracy": acc, "iterations": iters, "peak_rss_mb": rss}))


def grid_workload(a):
    """GridSearchCV(LogisticRegression(max_iter=1000), C in 6 values, 5 stratified folds,
    n_jobs=threads) and KNeighborsClassifier(5, cosine, brute) on the features fit-bench
    exported, as heads-side does: seconds, chosen C, kNN accuracy."""
    import os
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    (xtr, ytr), (xte, yte) = exported(a.features)
    t = time.perf_counter()
    knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(xtr, ytr)
    knn_acc = float((knn.predict(xte) == yte).mean())
    knn_s = time.perf_counter() - t
    t = time.perf_counter()
    g = GridSearchCV(LogisticRegression(max_iter=1000), {"C": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]},
                     cv=StratifiedKFold(5, shuffle=True, random_state=0), n_jobs=a.threads).fit(xtr, ytr)
    grid_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"knn_s": knn_s, "knn_accuracy": knn_acc, "grid_s": grid_s,
                      "best_c": g.best_params_["C"], "best_cv_accuracy": float(g.best_score_),
                      "peak_rss_mb": rss}))


def tfidf_workload(a):
    """TfidfVectorizer(sublinear_tf=True, min_df=2) + LogisticRegression(C=1, lbfgs,
    max_iter=1000) on the documents the tfidf-bench binary wrote (JSON lines: split, text,
    label): seconds to vectorise, to fit and in all, test accuracy, vocabulary size."""
    import os
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = [json.loads(line) for line in open(a.docs, encoding="utf-8")]
    tr = [r["text"] for r in rows if r["split"] == "train"]
    ytr = np.array([r["label"] for r in rows if r["split"] == "train"])
    te = [r["text"] for r in rows if r["split"] == "test"]
    yte = np.array([r["label"] for r in rows if r["split"] == "test"])
    del rows
    vec_s, fit_s, total_s = [], [], []
    acc, vocab, nnz = 0.0, 0, 0
    for _ in range(a.repeat):
        t = time.perf_counter()
        v = TfidfVectorizer(sublinear_tf=True, min_df=2)
        xtr = v.fit_transform(tr)
        xte = v.transform(te)
        vectorised = time.perf_counter() - t
        m = LogisticRegression(C=1.0, max_iter=1000).fit(xtr, ytr)
        fitted = time.perf_counter() - t
        pred = m.predict(xte)
        total_s.append(time.perf_counter() - t)
        vec_s.append(vectorised)
        fit_s.append(fitted - vectorised)
        acc = float((pred == yte).mean())
        vocab, nnz = len(v.vocabulary_), int(xtr.nnz)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"vectorise_s": vec_s, "fit_s": fit_s, "total_s": total_s, "accuracy": acc,
                      "vocabulary": vocab, "train_nnz": nnz, "peak_rss_mb": rss}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["text", "image", "fit", "grid", "tfidf"])
    p.add_argument("--docs", help="tfidf: JSON lines written by the tfidf-bench binary")
    p.add_argument("--features", help="fit: folder written by the fit-bench binary")
    p.add_argument("--onnx")
    p.add_argument("--tokenizer")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--output", default="0")
    p.add_argument("--texts")
    p.add_argument("--sort", action="store_true")
    p.add_argument("--spec")
    p.add_argument("--idx")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    if a.kind == "fit":
        fit_workload(a)
        return
    if a.kind == "tfidf":
        tfidf_workload(a)
        return
    if a.kind == "grid":
        grid_workload(a)
        return
    run = text_workload(a) if a.kind == "text" else image_workload(a)
    run(warm=True)
    rates, stats = [], None
    for _ in range(a.repeat):
        t = time.perf_counter()
        items, stats = run()
        rates.append(items / (time.perf_counter() - t))
    res = {"items_per_s": rates, "items": items, "prepare_s": stats["prepare_s"], "run_s": stats["run_s"], "pool_s": stats["pool_s"], "total_s": stats["total_s"]}
    if "processed" in stats:
        res["padding_efficiency"] = stats["real"] / stats["processed"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
