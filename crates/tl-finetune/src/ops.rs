//! The kernels of the training engine, each a forward and a hand-written backward.
//!
//! Tensors are plain row-major `f32` slices; shapes travel as arguments. Every
//! reduction that feeds a gradient is split into fixed-size chunks summed in order, so
//! the result does not depend on how many threads ran it (same data, same seed, same
//! weights bit for bit). Matrix products go through `faer` (blocked, AVX-512 where the
//! CPU has it, rayon across the output blocks, never across the summed dimension).

// Kernels take buffers and shapes explicitly, BLAS style, rather than a tensor type.
#![allow(clippy::too_many_arguments)]

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows per chunk of a deterministic column reduction.
const REDUCE_ROWS: usize = 64;

/// How many threads the matrix products may use.
#[derive(Debug, Clone, Copy)]
pub struct Threads(pub usize);

impl Threads {
    /// A rayon pool of this many threads: training runs inside one so its results depend
    /// on the thread count it was given, not on the machine's.
    pub fn pool(self) -> Result<rayon::ThreadPool, crate::FinetuneError> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.0)
            .build()
            .map_err(|e| crate::FinetuneError::Params(format!("threads: {e}")))
    }

    pub(crate) fn par(self) -> Par {
        match std::num::NonZeroUsize::new(self.0) {
            Some(n) if n.get() > 1 => Par::Rayon(n),
            _ => Par::Seq,
        }
    }
}

/// A row-major matrix view over a slice (`rows x cols`, row stride `stride`).
pub(crate) fn mat(s: &[f32], rows: usize, cols: usize, stride: usize) -> MatRef<'_, f32> {
    assert!(rows == 0 || (rows - 1) * stride + cols <= s.len());
    // SAFETY: the assertion above keeps every addressed element inside `s`.
    unsafe { MatRef::from_raw_parts(s.as_ptr(), rows, cols, stride as isize, 1) }
}

/// A mutable row-major matrix view over a slice.
pub(crate) fn mat_mut(s: &mut [f32], rows: usize, cols: usize, stride: usize) -> MatMut<'_, f32> {
    assert!(rows == 0 || (rows - 1) * stride + cols <= s.len());
    // SAFETY: as in `mat`; the borrow of `s` is exclusive for the view's lifetime.
    unsafe { MatMut::from_raw_parts_mut(s.as_mut_ptr(), rows, cols, stride as isize, 1) }
}

/// `y[n, out] = x[n, in] · wᵀ + b`, with `w` stored `[out, in]` as PyTorch does.
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    th: Threads,
) {
    for row in y.chunks_exact_mut(d_out) {
        row.copy_from_slice(b);
    }
    if n == 0 {
        return;
    }
    matmul(
        mat_mut(y, n, d_out, d_out),
        Accum::Add,
        mat(x, n, d_in, d_in),
        mat(w, d_out, d_in, d_in).transpose(),
        1.0,
        th.par(),
    );
}

/// Backward of [`linear_forward`]: adds into `dw` and `db`, and writes `dx` when given.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    th: Threads,
) {
    if n == 0 {
        if let Some(dx) = dx {
            dx.fill(0.0);
        }
        return;
    }
    if let Some(dx) = dx {
        matmul(
            mat_mut(dx, n, d_in, d_in),
            Accum::Replace,
            mat(dy, n, d_out, d_out),
            mat(w, d_out, d_in, d_in),
            1.0,
            th.par(),
        );
    }
    matmul(
        mat_mut(dw, d_out, d_in, d_in),
        Accum::Add,
        mat(dy, n, d_out, d_out).transpose(),
        mat(x, n, d_in, d_in),
        1.0,
        th.par(),
    );
    column_sums_add(dy, d_out, db);
}

/// Adds the column sums of the row-major `m[.., cols]` into `out`, in fixed chunks so
/// the order of the sum never depends on the thread count.
pub(crate) fn column_sums_add(m: &[f32], cols: usize, out: &mut [f32]) {
    let partials: Vec<Vec<f32>> = m
        .par_chunks(REDUCE_ROWS * cols)
        .map(|chunk| {
            let mut acc = vec![0.0f32; cols];
            for row in chunk.chunks_exact(cols) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    for p in partials {
        for (o, v) in out.iter_mut().zip(&p) {
            *o += v;
        }
    }
}

/// LayerNorm over rows of `x[n, d]`: writes `y`, and keeps `xhat` (normalised input)
/// and `rstd` (1 / standard deviation per row) for the backward pass.
pub fn layer_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    d: usize,
) {
    y.par_chunks_mut(d)
        .zip(xhat.par_chunks_mut(d))
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .for_each(|(((y, xh), r), x)| {
            let mean = x.iter().sum::<f32>() / d as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let rs = 1.0 / (var + eps).sqrt();
            *r = rs;
            for i in 0..d {
                let h = (x[i] - mean) * rs;
                xh[i] = h;
                y[i] = h * gamma[i] + beta[i];
            }
        });
}

/// Backward of [`layer_norm_forward`]: writes `dx`, adds into `dgamma` and `dbeta`.
pub fn layer_norm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    d: usize,
) {
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(REDUCE_ROWS * d)
        .zip(dy.par_chunks(REDUCE_ROWS * d))
        .zip(xhat.par_chunks(REDUCE_ROWS * d))
        .zip(rstd.par_chunks(REDUCE_ROWS))
        .map(|(((dx, dy), xh), rs)| {
            let mut dg = vec![0.0f32; d];
            let mut db = vec![0.0f32; d];
            for (((dx, dy), xh), r) in dx
                .chunks_exact_mut(d)
                .zip(dy.chunks_exact(d))
                .zip(xh.chunks_exact(d))
                .zip(rs)
            {
                let mut mean_g = 0.0f32;
                let mut mean_gx = 0.0f32;
                for i in 0..d {
                    dg[i] += dy[i] * xh[i];
                    db[i] += dy[i];
                    let g = dy[i] * gamma[i];
                    mean_g += g;
                    mean_gx += g * xh[i];
                }
                mean_g /= d as f32;
                mean_gx /= d as f32;
                for i in 0..d {
                    let g = dy[i] * gamma[i];
                    dx[i] = r * (g - mean_g - xh[i] * mean_gx);
                }
            }
            (dg, db)
        })
        .collect();
    for (dg, db) in partials {
        for i in 0..d {
            dgamma[i] += dg[i];
            dbeta[i] += db[i];
        }
    }
}

/// The error function in f32: the rational approximation Eigen and XLA use (odd
/// polynomial of degree 13 over even of degree 8 on [-4, 4]; |error| about 1e-7).
/// BERT's GELU is the exact, erf-based one, and this runs on every activation of the
/// feed-forward layers twice per step, so it must be both exact enough and cheap.
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// GELU (erf form) in place over `x`, keeping the input in `pre`.
pub fn gelu_forward(pre: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096)
        .zip(pre.par_chunks(4096))
        .for_each(|(o, p)| {
            for (o, &x) in o.iter_mut().zip(p) {
                *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        });
}

/// Backward of [`gelu_forward`]: `d[i] *= gelu'(pre[i])`.
pub fn gelu_backward(pre: &[f32], d: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    d.par_chunks_mut(4096)
        .zip(pre.par_chunks(4096))
        .for_each(|(d, p)| {
            for (d, &x) in d.iter_mut().zip(p) {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                *d *= cdf + x * pdf;
            }
        });
}

/// Softmax of each row of `s[rows, cols]`, in place.
pub fn softmax_rows(s: &mut [f32], cols: usize) {
    for row in s.chunks_exact_mut(cols) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Backward of a row softmax: `dp` (gradient w.r.t. the probabilities) becomes the
/// gradient w.r.t. the scores, in place.
pub fn softmax_rows_backward(p: &[f32], dp: &mut [f32], cols: usize) {
    for (p, d) in p.chunks_exact(cols).zip(dp.chunks_exact_mut(cols)) {
        let dot: f32 = p.iter().zip(d.iter()).map(|(a, b)| a * b).sum();
        for (d, p) in d.iter_mut().zip(p) {
            *d = p * (*d - dot);
        }
    }
}

/// Mean cross-entropy of `logits[b, c]` against `labels`; writes the gradient w.r.t. the
/// logits into `dlogits` (already divided by the batch size) and returns the loss.
pub fn cross_entropy(logits: &[f32], labels: &[usize], c: usize, dlogits: &mut [f32]) -> f32 {
    let b = labels.len();
    let mut loss = 0.0f64;
    dlogits.copy_from_slice(logits);
    for (row, &y) in dlogits.chunks_exact_mut(c).zip(labels) {
        softmax_rows(row, c);
        loss -= (row[y].max(f32::MIN_POSITIVE) as f64).ln();
        row[y] -= 1.0;
        for v in row.iter_mut() {
            *v /= b as f32;
        }
    }
    (loss / b as f64) as f32
}

/// Mean over pairs of `(cos(u, v) - target)²`, where pair `k` is rows `2k` and `2k+1`
/// of `pooled[2P, h]`; writes the gradient w.r.t. `pooled` into `d` and returns the loss.
pub fn cosine_pairs_loss(pooled: &[f32], targets: &[f32], h: usize, d: &mut [f32]) -> f32 {
    let p = targets.len();
    let mut loss = 0.0f64;
    for (k, &t) in targets.iter().enumerate() {
        let u = &pooled[2 * k * h..(2 * k + 1) * h];
        let v = &pooled[(2 * k + 1) * h..(2 * k + 2) * h];
        let uv: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
        // A zero vector has no direction; the epsilon keeps its gradient finite.
        let nu = u.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        let nv = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        let c = uv / (nu * nv);
        loss += ((c - t) as f64).powi(2);
        let dc = 2.0 * (c - t) / p as f32;
        let (du, dv) = d[2 * k * h..(2 * k + 2) * h].split_at_mut(h);
        for j in 0..h {
            du[j] = dc * (v[j] / (nu * nv) - c * u[j] / (nu * nu));
            dv[j] = dc * (u[j] / (nu * nv) - c * v[j] / (nv * nv));
        }
    }
    (loss / p as f64) as f32
}

/// SimCSE's contrastive loss (InfoNCE, both directions, mean over the `2P` choices):
/// rows `2k` and `2k+1` of `pooled[2P, h]` are two views of item `k` (the same sequence
/// under two dropout masks), and each view must pick its partner among all `P` views of
/// the other side by cosine similarity over `temperature`. Writes the gradient w.r.t.
/// `pooled` into `d` and returns the loss. With one item there is nothing to contrast and
/// the loss is 0.
pub fn info_nce_loss(pooled: &[f32], h: usize, temperature: f32, d: &mut [f32]) -> f32 {
    let p = pooled.len() / (2 * h);
    d.fill(0.0);
    if p < 2 {
        return 0.0;
    }
    // Unit vectors and the norms the backward pass divides by.
    let mut u = vec![0.0f32; pooled.len()];
    let mut norms = vec![0.0f32; 2 * p];
    for (r, (row, out)) in pooled
        .chunks_exact(h)
        .zip(u.chunks_exact_mut(h))
        .enumerate()
    {
        // A zero vector has no direction; the epsilon keeps its gradient finite.
        let n = row.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        norms[r] = n;
        for (o, v) in out.iter_mut().zip(row) {
            *o = v / n;
        }
    }
    let view = |side: usize, k: usize| &u[(2 * k + side) * h..(2 * k + side + 1) * h];
    // s[i, j] = cos(view a of i, view b of j) / temperature.
    let mut s = vec![0.0f64; p * p];
    for i in 0..p {
        for j in 0..p {
            let dot: f32 = view(0, i).iter().zip(view(1, j)).map(|(x, y)| x * y).sum();
            s[i * p + j] = dot as f64 / temperature as f64;
        }
    }
    // dL/ds from the row softmax (a picks among b) and the column softmax (b among a).
    let mut g = vec![0.0f64; p * p];
    let mut loss = 0.0f64;
    let scale = 1.0 / (2 * p) as f64;
    for dir in 0..2 {
        for i in 0..p {
            let at = |j: usize| if dir == 0 { i * p + j } else { j * p + i };
            let max = (0..p).map(|j| s[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..p).map(|j| (s[at(j)] - max).exp()).sum();
            loss -= s[at(i)] - max - z.ln();
            for j in 0..p {
                let prob = (s[at(j)] - max).exp() / z;
                g[at(j)] += scale * (prob - if i == j { 1.0 } else { 0.0 });
            }
        }
    }
    // Through the cosine: du_a[i] = sum_j g[i, j] u_b[j] / t, du_b[j] = sum_i g[i, j] u_a[i] / t;
    // then through the normalisation: dz = (du - u (u . du)) / |z|.
    let mut du = vec![0.0f32; pooled.len()];
    for i in 0..p {
        for j in 0..p {
            let w = (g[i * p + j] / temperature as f64) as f32;
            for k in 0..h {
                du[(2 * i) * h + k] += w * view(1, j)[k];
                du[(2 * j + 1) * h + k] += w * view(0, i)[k];
            }
        }
    }
    for r in 0..2 * p {
        let (ur, dr) = (&u[r * h..(r + 1) * h], &du[r * h..(r + 1) * h]);
        let proj: f32 = ur.iter().zip(dr).map(|(a, b)| a * b).sum();
        for k in 0..h {
            d[r * h + k] = (dr[k] - ur[k] * proj) / norms[r];
        }
    }
    (loss * scale) as f32
}

/// A counter-based random stream (SplitMix64 of a key): dropout masks can be drawn in
/// any order, on any thread, and still be the same for the same seed and step.
pub fn hash_uniform(key: u64, i: u64) -> f32 {
    let mut z = key
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Inverted dropout in place: keeps each element with probability `1 - p` and scales
/// kept ones by `1 / (1 - p)`. Returns the mask (scale or 0 per element) for backward.
pub fn dropout(x: &mut [f32], p: f32, key: u64) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut mask = vec![0.0f32; x.len()];
    mask.par_chunks_mut(4096)
        .zip(x.par_chunks_mut(4096))
        .enumerate()
        .for_each(|(c, (m, x))| {
            for (j, (m, x)) in m.iter_mut().zip(x.iter_mut()).enumerate() {
                let keep = hash_uniform(key, (c * 4096 + j) as u64) >= p;
                *m = if keep { scale } else { 0.0 };
                *x *= *m;
            }
        });
    mask
}

/// Multiplies `d` by a dropout mask in place.
pub fn apply_mask(d: &mut [f32], mask: &[f32]) {
    d.par_chunks_mut(4096)
        .zip(mask.par_chunks(4096))
        .for_each(|(d, m)| {
            for (d, m) in d.iter_mut().zip(m) {
                *d *= m;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun, table 7.1.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_813_047),
            (1.0, 0.842_700_792_949_715),
            (2.0, 0.995_322_265_018_953),
            (3.0, 0.999_977_909_503_001),
            (-1.0, -0.842_700_792_949_715),
        ] {
            assert!((erf(x) as f64 - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
        assert!((erf(10.0) - 1.0).abs() < 2e-7);
    }

    #[test]
    fn dropout_keeps_expected_share_and_is_reproducible() {
        let mut a = vec![1.0f32; 100_000];
        let m = dropout(&mut a, 0.1, 7);
        let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / 1e5;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        let mut b = vec![1.0f32; 100_000];
        assert_eq!(dropout(&mut b, 0.1, 7), m);
        let mut c = vec![1.0f32; 100_000];
        assert_ne!(dropout(&mut c, 0.1, 8), m);
    }
}
