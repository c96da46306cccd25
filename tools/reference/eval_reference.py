"""scikit-learn reference for tl-eval's parity tests (crates/tl-eval/tests/parity.rs).

Usage: python eval_reference.py AMAZON_JSON OUT.json
       python eval_reference.py --tfidf-logistic AMAZON_JSON OUT.json

1. Metrics on a fixed pseudo-random binary and 4-class problem (generated here from a seeded
   LCG the test replays): accuracy, balanced accuracy, macro-F1, log loss, ROC-AUC, average
   precision, per-class precision/recall/F1, confusion matrix.
2. TfidfVectorizer(sublinear_tf=True, min_df=2) fitted on the first 800 Amazon sentences:
   vocabulary, idf, and the rows of the last 200 sentences transformed.
3. (--tfidf-logistic, fixture sklearn_tfidf_logistic.json) the same vectoriser, sparse, then
   LogisticRegression(C=1, tol=1e-8) on the same 800 sentences and their classes: the test
   probabilities of the next 200, the intercept and the weight of every term.
"""

import json
import sys

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             confusion_matrix, f1_score, log_loss, precision_recall_fscore_support,
                             roc_auc_score)


def lcg(seed, n):
    out = []
    state = seed
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((state >> 11) / float(1 << 53))
    return out


def problem(k, n, seed):
    u = lcg(seed, 3 * n)
    truth = [int(u[3 * i] * k) for i in range(n)]
    proba = []
    for i in range(n):
        raw = [0.2 + u[(3 * i + 1 + j) % (3 * n)] for j in range(k)]
        raw[truth[i]] += 1.5 * u[3 * i + 2]
        s = sum(raw)
        proba.append([r / s for r in raw])
    pred = [int(np.argmax(p)) for p in proba]
    return truth, pred, proba


def metrics(k, n, seed):
    t, p, pr = problem(k, n, seed)
    pr = np.array(pr)
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, labels=list(range(k)), zero_division=0)
    out = {
        "k": k, "n": n, "seed": seed,
        "accuracy": accuracy_score(t, p),
        "balanced_accuracy": balanced_accuracy_score(t, p),
        "macro_f1": f1_score(t, p, average="macro"),
        "log_loss": log_loss(t, pr, labels=list(range(k))),
        "precision": prec.tolist(), "recall": rec.tolist(), "f1": f1.tolist(),
        "confusion": confusion_matrix(t, p, labels=list(range(k))).tolist(),
    }
    if k == 2:
        out["roc_auc"] = roc_auc_score(t, pr[:, 1])
        out["average_precision"] = average_precision_score(t, pr[:, 1])
    return out


def tfidf_logistic(path, out_path):
    from sklearn.linear_model import LogisticRegression
    rows = [r for r in json.load(open(path)) if r["text"].strip()]
    texts = [r["text"] for r in rows]
    labels = [r["class"] for r in rows]
    v = TfidfVectorizer(sublinear_tf=True, min_df=2).fit(texts[:800])
    xtr, xte = v.transform(texts[:800]), v.transform(texts[800:1000])
    m = LogisticRegression(C=1.0, tol=1e-8, max_iter=10000).fit(xtr, labels[:800])
    vocab = sorted(v.vocabulary_, key=v.vocabulary_.get)
    out = {
        "train_rows": 800,
        "test_rows": 200,
        "vocabulary_size": len(vocab),
        "intercept": round(float(m.intercept_[0]), 7),
        "weights": {t: round(float(w), 7) for t, w in zip(vocab, m.coef_[0])},
        "proba": [round(float(p), 7) for p in m.predict_proba(xte)[:, 1]],
        "accuracy": float(m.score(xte, labels[800:1000])),
    }
    json.dump(out, open(out_path, "w"), separators=(",", ":"))


def main():
    if sys.argv[1] == "--tfidf-logistic":
        return tfidf_logistic(sys.argv[2], sys.argv[3])
    texts = [r["text"] for r in json.load(open(sys.argv[1])) if r["text"].strip()]
    train, test = texts[:800], texts[800:1000]
    v = TfidfVectorizer(sublinear_tf=True, min_df=2).fit(train)
    x = v.transform(test)
    vocab = sorted(v.vocabulary_, key=v.vocabulary_.get)
    rows = []
    for i in range(x.shape[0]):
        row = x.getrow(i)
        rows.append([[vocab[j], round(float(val), 7)] for j, val in zip(row.indices, row.data)])
    out = {
        "metrics": [metrics(2, 400, 1), metrics(4, 500, 2)],
        "tfidf": {"vocabulary": vocab, "idf": [round(float(i), 7) for i in v.idf_], "test_rows": rows},
    }
    json.dump(out, open(sys.argv[2], "w"), separators=(",", ":"))


if __name__ == "__main__":
    main()
