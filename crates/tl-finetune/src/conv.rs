//! Convolution-network kernels, each a forward and a hand-written backward: dense and
//! depthwise 2-D convolution, BatchNorm (frozen statistics or batch statistics),
//! ReLU6 and global average pooling.
//!
//! Activations are laid out channel-major with the batch innermost, `[C][H][W][N]`: a
//! pointwise convolution of a whole batch is then one matrix product, BatchNorm works
//! on one contiguous row per channel, and depthwise convolution runs its inner loop over
//! the images of the batch, contiguous and as long as the batch however small the
//! feature map (a 2 x 2 map of 32 images is 32-wide work, not 2-wide). Every sum that
//! feeds a gradient runs in a fixed order per channel, so results do not depend on the
//! thread count.

// Kernels take buffers and shapes explicitly, BLAS style, rather than a tensor type.
#![allow(clippy::too_many_arguments)]

use faer::Accum;
use faer::linalg::matmul::matmul;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ops::{Threads, mat, mat_mut};

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Padding {
    /// PyTorch's `padding = k / 2` on every side.
    Symmetric,
    /// TensorFlow's "SAME": output `ceil(in / stride)`, the odd extra pixel at the end
    /// (ONNX `auto_pad = SAME_UPPER`). EfficientNet-Lite's weights need it.
    SameUpper,
}

/// The geometry of one convolution over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Images in the batch.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Square kernel side.
    pub k: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Padding rule.
    pub padding: Padding,
}

impl ConvShape {
    /// Output side for an input side of `len`.
    pub fn out_len(&self, len: usize) -> usize {
        match self.padding {
            Padding::Symmetric => (len + 2 * (self.k / 2)).saturating_sub(self.k) / self.stride + 1,
            Padding::SameUpper => len.div_ceil(self.stride),
        }
    }

    /// Padding before the first row/column for an input side of `len`.
    pub fn pad_before(&self, len: usize) -> usize {
        match self.padding {
            Padding::Symmetric => self.k / 2,
            Padding::SameUpper => {
                let out = self.out_len(len);
                ((out - 1) * self.stride + self.k).saturating_sub(len) / 2
            }
        }
    }

    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (self.out_len(self.h), self.out_len(self.w))
    }

    /// Elements of the input, `cin * n * h * w`.
    pub fn in_len(&self) -> usize {
        self.cin * self.n * self.h * self.w
    }

    /// Elements of the output.
    pub fn out_elems(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.cout * self.n * ho * wo
    }

    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1
    }
}

/// Output positions `o` whose tap `i` reads input row `o * s + i - pad` inside `0..len`.
fn valid(out: usize, len: usize, s: usize, i: usize, pad: usize) -> std::ops::Range<usize> {
    // o*s + i >= pad  and  o*s + i - pad < len
    let lo = if i >= pad { 0 } else { (pad - i).div_ceil(s) };
    let hi = if len + pad > i {
        ((len + pad - i - 1) / s + 1).min(out)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// `cols[(ci, i, j)][(oh, ow, n)]`: the input patches of a dense convolution.
fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let (m, k, n) = (s.n * ho * wo, s.k, s.n);
    cols.par_chunks_mut(m).enumerate().for_each(|(row, out)| {
        let (ci, i, j) = (row / (k * k), (row / k) % k, row % k);
        out.fill(0.0);
        let src = &x[ci * s.h * s.w * n..][..s.h * s.w * n];
        for oh in valid(ho, s.h, s.stride, i, pt) {
            let r = oh * s.stride + i - pt;
            for ow in valid(wo, s.w, s.stride, j, pl) {
                let c = ow * s.stride + j - pl;
                out[(oh * wo + ow) * n..][..n].copy_from_slice(&src[(r * s.w + c) * n..][..n]);
            }
        }
    });
}

/// The patches of a dense convolution's input: the input itself for a pointwise one.
fn patches<'a>(x: &'a [f32], s: &ConvShape) -> std::borrow::Cow<'a, [f32]> {
    if s.is_pointwise() {
        return std::borrow::Cow::Borrowed(x);
    }
    let (ho, wo) = s.out_hw();
    let mut c = vec![0.0f32; s.cin * s.k * s.k * s.n * ho * wo];
    im2col(x, s, &mut c);
    std::borrow::Cow::Owned(c)
}

/// Adds the patch gradients `dcols` back into the input gradient `dx`.
fn col2im_add(dcols: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let (m, k, n) = (s.n * ho * wo, s.k, s.n);
    dx.par_chunks_mut(s.h * s.w * n)
        .enumerate()
        .for_each(|(ci, d)| {
            for i in 0..k {
                for j in 0..k {
                    let g = &dcols[((ci * k + i) * k + j) * m..][..m];
                    for oh in valid(ho, s.h, s.stride, i, pt) {
                        let r = oh * s.stride + i - pt;
                        for ow in valid(wo, s.w, s.stride, j, pl) {
                            let c = ow * s.stride + j - pl;
                            add_scaled(
                                &mut d[(r * s.w + c) * n..][..n],
                                1.0,
                                &g[(oh * wo + ow) * n..][..n],
                            );
                        }
                    }
                }
            }
        });
}

/// `a += w * b`, element-wise.
#[inline(always)]
fn add_scaled(a: &mut [f32], w: f32, b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += w * y;
    }
}

/// `sum(a * b)` over eight fixed lanes: vectorisable, and the same order on every CPU.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Dense convolution (groups = 1), no bias: `y[cout][n,ho,wo]` from `x[cin][n,h,w]`
/// and `w[cout, cin, k, k]`.
pub fn conv_forward(x: &[f32], w: &[f32], y: &mut [f32], s: &ConvShape, th: Threads) {
    let (ho, wo) = s.out_hw();
    let m = s.n * ho * wo;
    let kk = s.cin * s.k * s.k;
    let cols = patches(x, s);
    matmul(
        mat_mut(y, s.cout, m, m),
        Accum::Replace,
        mat(w, s.cout, kk, kk),
        mat(&cols, kk, m, m),
        1.0,
        th.par(),
    );
}

/// Backward of [`conv_forward`]: adds into `dw`, and writes `dx` when given.
pub fn conv_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    s: &ConvShape,
    th: Threads,
) {
    let (ho, wo) = s.out_hw();
    let m = s.n * ho * wo;
    let kk = s.cin * s.k * s.k;
    let cols = patches(x, s);
    matmul(
        mat_mut(dw, s.cout, kk, kk),
        Accum::Add,
        mat(dy, s.cout, m, m),
        mat(&cols, kk, m, m).transpose(),
        1.0,
        th.par(),
    );
    if let Some(dx) = dx {
        if s.is_pointwise() {
            matmul(
                mat_mut(dx, kk, m, m),
                Accum::Replace,
                mat(w, s.cout, kk, kk).transpose(),
                mat(dy, s.cout, m, m),
                1.0,
                th.par(),
            );
        } else {
            let mut dcols = vec![0.0f32; kk * m];
            matmul(
                mat_mut(&mut dcols, kk, m, m),
                Accum::Replace,
                mat(w, s.cout, kk, kk).transpose(),
                mat(dy, s.cout, m, m),
                1.0,
                th.par(),
            );
            dx.fill(0.0);
            col2im_add(&dcols, s, dx);
        }
    }
}

/// Depthwise convolution (groups = channels, one filter each), no bias; `w[c, 1, k, k]`.
pub fn depthwise_forward(x: &[f32], w: &[f32], y: &mut [f32], s: &ConvShape) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let (k, n) = (s.k, s.n);
    y.par_chunks_mut(ho * wo * n)
        .enumerate()
        .for_each(|(c, yc)| {
            let wc = &w[c * k * k..][..k * k];
            let xc = &x[c * s.h * s.w * n..][..s.h * s.w * n];
            pulp::Arch::new().dispatch(
                #[inline(always)]
                || {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            let out = &mut yc[(oh * wo + ow) * n..][..n];
                            out.fill(0.0);
                            for i in 0..k {
                                let Some(r) =
                                    (oh * s.stride + i).checked_sub(pt).filter(|r| *r < s.h)
                                else {
                                    continue;
                                };
                                for j in 0..k {
                                    let Some(col) =
                                        (ow * s.stride + j).checked_sub(pl).filter(|c| *c < s.w)
                                    else {
                                        continue;
                                    };
                                    add_scaled(out, wc[i * k + j], &xc[(r * s.w + col) * n..][..n]);
                                }
                            }
                        }
                    }
                },
            )
        });
}

/// Backward of [`depthwise_forward`]: adds into `dw`, and writes `dx` when given.
pub fn depthwise_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    s: &ConvShape,
) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let (k, n) = (s.k, s.n);
    let per_c = s.h * s.w * n;
    let per_out = ho * wo * n;
    let channel = |c: usize, dwc: &mut [f32], mut dxc: Option<&mut [f32]>| {
        let wc = &w[c * k * k..][..k * k];
        let xc = &x[c * per_c..][..per_c];
        let gc = &dy[c * per_out..][..per_out];
        if let Some(d) = dxc.as_deref_mut() {
            d.fill(0.0);
        }
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let g = &gc[(oh * wo + ow) * n..][..n];
                        for i in 0..k {
                            let Some(r) = (oh * s.stride + i).checked_sub(pt).filter(|r| *r < s.h)
                            else {
                                continue;
                            };
                            for j in 0..k {
                                let Some(col) =
                                    (ow * s.stride + j).checked_sub(pl).filter(|c| *c < s.w)
                                else {
                                    continue;
                                };
                                let at = (r * s.w + col) * n;
                                dwc[i * k + j] += dot(&xc[at..at + n], g);
                                if let Some(d) = dxc.as_deref_mut() {
                                    add_scaled(&mut d[at..at + n], wc[i * k + j], g);
                                }
                            }
                        }
                    }
                }
            },
        )
    };
    match dx {
        Some(dx) => dw
            .par_chunks_mut(k * k)
            .zip(dx.par_chunks_mut(per_c))
            .enumerate()
            .for_each(|(c, (dwc, dxc))| channel(c, dwc, Some(dxc))),
        None => dw
            .par_chunks_mut(k * k)
            .enumerate()
            .for_each(|(c, dwc)| channel(c, dwc, None)),
    }
}

/// What a BatchNorm forward pass keeps for its backward pass, per channel.
#[derive(Debug, Clone, Default)]
pub struct BnCache {
    /// The mean that was subtracted.
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` that was applied.
    pub inv_std: Vec<f32>,
    /// Whether the statistics were the batch's own (their gradient flows).
    pub batch_stats: bool,
}

/// Per-channel mean and biased variance of `x[c][m]` (summed in f64, one channel per
/// task, so the result does not depend on the thread count).
pub fn batch_statistics(x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
    x.par_chunks(m)
        .map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
            (mean as f32, var as f32)
        })
        .unzip()
}

/// Moves running statistics towards a batch's (`m` values per channel) by `momentum`,
/// as PyTorch does (the running variance is the unbiased one).
pub fn update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &[f32],
    var: &[f32],
    momentum: f32,
    m: usize,
) {
    let unbias = if m > 1 {
        m as f32 / (m - 1) as f32
    } else {
        1.0
    };
    for i in 0..mean.len() {
        running_mean[i] = (1.0 - momentum) * running_mean[i] + momentum * mean[i];
        running_var[i] = (1.0 - momentum) * running_var[i] + momentum * var[i] * unbias;
    }
}

/// BatchNorm over `x[c][m]` into `y` (written whole), normalising by `mean` and `var`:
/// the running statistics, or with `batch_stats` the batch's own from
/// [`batch_statistics`] (their gradient then flows through the backward pass).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    batch_stats: bool,
    y: &mut [f32],
    m: usize,
) -> BnCache {
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    y.par_chunks_mut(m)
        .zip(x.par_chunks(m))
        .enumerate()
        .for_each(|(i, (yr, xr))| {
            let a = gamma[i] * inv_std[i];
            let b = beta[i] - mean[i] * a;
            for (o, v) in yr.iter_mut().zip(xr) {
                *o = v * a + b;
            }
        });
    BnCache {
        mean: mean.to_vec(),
        inv_std,
        batch_stats,
    }
}

/// Backward of [`batch_norm_forward`]: `dy` becomes `dx` in place; adds into `dgamma`
/// and `dbeta`.
pub fn batch_norm_backward(
    x: &[f32],
    gamma: &[f32],
    cache: &BnCache,
    dy: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    m: usize,
) {
    let sums: Vec<(f32, f32)> = dy
        .par_chunks_mut(m)
        .zip(x.par_chunks(m))
        .enumerate()
        .map(|(i, (d, xr))| {
            let (mean, is) = (cache.mean[i], cache.inv_std[i]);
            let mut sd = 0.0f64;
            let mut sdx = 0.0f64;
            for (g, v) in d.iter().zip(xr) {
                sd += *g as f64;
                sdx += *g as f64 * ((v - mean) * is) as f64;
            }
            let a = gamma[i] * is;
            if cache.batch_stats {
                let (md, mdx) = ((sd / m as f64) as f32, (sdx / m as f64) as f32);
                for (g, v) in d.iter_mut().zip(xr) {
                    let xhat = (v - mean) * is;
                    *g = a * (*g - md - xhat * mdx);
                }
            } else {
                for g in d.iter_mut() {
                    *g *= a;
                }
            }
            (sdx as f32, sd as f32)
        })
        .collect();
    for (i, (g, b)) in sums.into_iter().enumerate() {
        dgamma[i] += g;
        dbeta[i] += b;
    }
}

/// ReLU6 in place.
pub fn relu6_forward(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            *v = v.clamp(0.0, 6.0);
        }
    });
}

/// Backward of ReLU6 given its output `y`: zeroes `d` where the input was clipped.
pub fn relu6_backward(y: &[f32], d: &mut [f32]) {
    d.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(d, y)| {
            for (g, v) in d.iter_mut().zip(y) {
                if *v <= 0.0 || *v >= 6.0 {
                    *g = 0.0;
                }
            }
        });
}

/// Global average pooling of `x[c][hw, n]` into row-major `out[n, c]`.
pub fn global_pool_forward(x: &[f32], c: usize, n: usize, hw: usize, out: &mut [f32]) {
    let mut acc = vec![0.0f32; n];
    for ci in 0..c {
        acc.fill(0.0);
        for p in 0..hw {
            for (a, v) in acc.iter_mut().zip(&x[(ci * hw + p) * n..][..n]) {
                *a += v;
            }
        }
        for (ni, a) in acc.iter().enumerate() {
            out[ni * c + ci] = a / hw as f32;
        }
    }
}

/// Backward of [`global_pool_forward`]: spreads `d[n, c]` over `dx[c][hw, n]`.
pub fn global_pool_backward(d: &[f32], c: usize, n: usize, hw: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(hw * n).enumerate().for_each(|(ci, row)| {
        for p in 0..hw {
            for (ni, v) in row[p * n..][..n].iter_mut().enumerate() {
                *v = d[ni * c + ci] / hw as f32;
            }
        }
    });
}

/// Images `x[n, c, h, w]` (row-major, as preprocessing writes them) to `[c][h, w, n]`.
pub fn nchw_to_chwn(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for ni in 0..n {
        for ci in 0..c {
            for (p, v) in x[(ni * c + ci) * hw..][..hw].iter().enumerate() {
                out[(ci * hw + p) * n + ni] = *v;
            }
        }
    }
    out
}

/// One image's `[c][h, w]` out of a batch tensor `[c][h, w, n]`.
pub fn image_of_chwn(x: &[f32], c: usize, hw: usize, n: usize, image: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; c * hw];
    for ci in 0..c {
        for p in 0..hw {
            out[ci * hw + p] = x[(ci * hw + p) * n + image];
        }
    }
    out
}

/// A batch tensor `[c][h, w, n]` from images `[c][h, w]` each.
pub fn chwn_of_images(images: &[&[f32]], c: usize, hw: usize) -> Vec<f32> {
    let n = images.len();
    let mut out = vec![0.0f32; c * hw * n];
    for (ni, img) in images.iter().enumerate() {
        for (q, v) in img.iter().enumerate() {
            out[q * n + ni] = *v;
        }
    }
    out
}
