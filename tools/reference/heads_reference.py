"""scikit-learn reference for tl-heads' parity tests (crates/tl-heads/tests/parity.rs).

Usage: python heads_reference.py DIGITS_CSV_GZ OUT.json

Data: the optdigits 8x8 set as tl-data loads it (pixel p in 0..16 stored as
round(p * 255 / 16) in a byte, the feature is byte / 255 in float32). Split: row i is a
test row when i % 4 == 0 (450 test, 1347 train). Every model is fitted on the same float32
features the Rust side sees (scikit-learn upcasts them to float64, as tl-heads does).
"""

import gzip
import json
import sys

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.decomposition import PCA
from sklearn.svm import LinearSVC

PROBA_ROWS = 60


def load(path):
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",")
    pix = rows[:, :64]
    stored = np.floor(pix * 255.0 / 16.0 + 0.5).astype(np.float32)
    x = stored / np.float32(255.0)
    y = rows[:, 64].astype(int)
    return x, y


def rounded(a, digits=6):
    return [[round(float(v), digits) for v in row] for row in a]


def main():
    x, y = load(sys.argv[1])
    test = np.arange(len(y)) % 4 == 0
    xtr, ytr, xte, yte = x[~test], y[~test], x[test], y[test]
    out = {"sklearn": sklearn.__version__, "n_train": int(len(ytr)), "n_test": int(len(yte))}

    def record(name, model, xtr=xtr, ytr=ytr, xte=xte, yte=yte, proba=False):
        model.fit(xtr, ytr)
        pred = model.predict(xte)
        entry = {"accuracy": float((pred == yte).mean()), "predictions": pred.tolist()}
        if proba:
            entry["proba"] = rounded(model.predict_proba(xte[:PROBA_ROWS]))
        out[name] = entry

    record("logistic_std_c1", make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)), proba=True)
    record("logistic_raw_c10", LogisticRegression(C=10.0, max_iter=5000), proba=True)
    record("logistic_std_pca20", make_pipeline(StandardScaler(), PCA(20), LogisticRegression(C=1.0, max_iter=1000)))
    record("knn5_euclidean", KNeighborsClassifier(5, algorithm="brute"))
    record("knn7_cosine_distance", KNeighborsClassifier(7, metric="cosine", weights="distance", algorithm="brute"))
    record("centroid", NearestCentroid())
    record("ridge_a1", RidgeClassifier(alpha=1.0))
    record("svm_std_c1", make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=10000)))
    pair = (ytr == 3) | (ytr == 8)
    pair_te = (yte == 3) | (yte == 8)
    record("binary_3v8_logistic_std", make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)),
           xtr=xtr[pair], ytr=ytr[pair], xte=xte[pair_te], yte=yte[pair_te], proba=True)
    json.dump(out, open(sys.argv[2], "w"), indent=None, separators=(",", ":"))


if __name__ == "__main__":
    main()
