"""NumPy reference for tl-eval's transferability scores and CORAL (crates/tl-eval/tests/transfer.rs).

Usage: python transfer_reference.py OUT.json

LogME is the authors' reference implementation (thuml/LogME, LogME._fit_icml, fixed-point
iteration), H-score the usual trace formula with a pseudo-inverse. The features are replayed
in the test from the same LCG: n = 300 rows, d = 24, 3 classes, class signal on a few
columns, float32 like real features.
"""

import json
import sys

import numpy as np


def lcg(seed, n):
    out, state = [], seed
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((state >> 11) / float(1 << 53))
    return out


def data(n=300, d=24, k=3, seed=7):
    u = lcg(seed, n * (d + 1))
    y = np.array([int(u[i * (d + 1)] * k) for i in range(n)])
    x = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        for j in range(d):
            v = u[i * (d + 1) + 1 + j] - 0.5
            if j % k == y[i]:
                v += 0.4
            x[i, j] = np.float32(v)
    return x, y


def each_evidence(y_, f, fh, v, s, vh, N, D):
    epsilon = 1e-5
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    tmp = vh @ (f @ np.ascontiguousarray(y_))
    for _ in range(11):
        gamma = (s / (s + lam)).sum()
        m = v @ (tmp * beta / (alpha + beta * s))
        alpha_de = (m * m).sum()
        alpha = gamma / (alpha_de + epsilon)
        beta_de = ((y_ - fh @ m) ** 2).sum()
        beta = (N - gamma) / (beta_de + epsilon)
        new_lam = alpha / beta
        if np.abs(new_lam - lam) / lam < 0.01:
            break
        lam = new_lam
    evidence = (D / 2.0 * np.log(alpha) + N / 2.0 * np.log(beta)
                - 0.5 * np.sum(np.log(alpha + beta * s))
                - beta / 2.0 * (beta_de + epsilon) - alpha / 2.0 * (alpha_de + epsilon)
                - N / 2.0 * np.log(2 * np.pi))
    return evidence / N


def logme(f, y):
    f = f.astype(np.float64)
    fh = f
    f = f.transpose()
    D, N = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    evidences = []
    for c in range(y.max() + 1):
        y_ = (y == c).astype(np.float64)
        evidences.append(each_evidence(y_, f, fh, v, s, vh, N, D))
    return float(np.mean(evidences))


def hscore(f, y):
    f = f.astype(np.float64)
    cov_f = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    mean = f.mean(axis=0)
    for c in range(y.max() + 1):
        g[y == c] = f[y == c].mean(axis=0) - mean
    cov_g = g.T @ g / (len(f) - 1)
    w, v = np.linalg.eigh(cov_f)
    keep = w > w.max() * 1e-10
    return float(sum(v[:, j] @ cov_g @ v[:, j] / w[j] for j in np.where(keep)[0]))


def spd_power(c, p):
    w, v = np.linalg.eigh(c)
    return (v * np.maximum(w, 1e-12) ** p) @ v.T


def coral(source, target, eps_scale):
    """CORAL with lambda = eps_scale * mean feature variance (see tl_eval::adapt::coral)."""
    s = source.astype(np.float64)
    t = target.astype(np.float64)
    cs, ct = np.cov(s, rowvar=False), np.cov(t, rowvar=False)
    lam = eps_scale * (np.trace(cs) + np.trace(ct)) / (2 * s.shape[1])
    cs += lam * np.eye(s.shape[1])
    ct += lam * np.eye(s.shape[1])
    return (s - s.mean(0)) @ spd_power(cs, -0.5) @ spd_power(ct, 0.5) + t.mean(0)


def flip(v):
    """Each column's largest-magnitude entry positive (tl_heads::linalg::eigh_desc's rule)."""
    idx = np.argmax(np.abs(v), axis=0)
    return v * np.sign(v[idx, np.arange(v.shape[1])])


def subspace_alignment(source, target, dims):
    """Subspace alignment with per-domain centring (see tl_eval::adapt::subspace_alignment)."""
    def basis(x):
        x = x.astype(np.float64)
        w, v = np.linalg.eigh(np.cov(x, rowvar=False))
        v = flip(v[:, ::-1])[:, :dims]
        return x - x.mean(0), v
    cs, ps = basis(source)
    ct, pt = basis(target)
    return cs @ ps @ ps.T @ pt, ct @ pt


def leep(logits, y):
    """LEEP (Nguyen et al., 2020) from source-model logits."""
    z = logits.astype(np.float64)
    theta = np.exp(z - z.max(axis=1, keepdims=True))
    theta /= theta.sum(axis=1, keepdims=True)
    n = len(y)
    joint = np.zeros((y.max() + 1, theta.shape[1]))
    for c in range(y.max() + 1):
        joint[c] = theta[y == c].sum(axis=0) / n
    cond = joint / joint.sum(axis=0, keepdims=True)
    return float(np.mean(np.log((theta * cond[y]).sum(axis=1))))


def main():
    x, y = data()
    # Target domain: the second half of the rows, scaled and shifted per column.
    target = (x[150:] * np.linspace(0.5, 2.0, x.shape[1]) + 0.3).astype(np.float32)
    out = {"logme": logme(x, y), "h_score": hscore(x, y),
           "coral_first_rows": coral(x[:150], target, 0.1)[:5].tolist()}
    sa_s, sa_t = subspace_alignment(x[:150], target, 5)
    out["subspace_source_first_rows"] = sa_s[:5].tolist()
    out["subspace_target_first_rows"] = sa_t[:5].tolist()
    # Logits of an 8-class "source model": three times the first 8 feature columns.
    out["leep"] = leep(3.0 * x[:, :8], y)
    json.dump(out, open(sys.argv[1], "w"))


if __name__ == "__main__":
    main()
