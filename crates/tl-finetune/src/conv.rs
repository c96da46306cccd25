//! Convolution-network kernels, each a forward and a hand-written backward: dense and
//! depthwise 2-D convolution, BatchNorm (frozen statistics or batch statistics),
//! ReLU6 and global average pooling.
//!
//! Activations are laid out channel-major across the batch, `[C][N * H * W]`: a
//! pointwise convolution of a whole batch is then one matrix product, and BatchNorm and
//! depthwise convolution work on one contiguous row per channel. Every sum that feeds a
//! gradient runs in a fixed order per channel, so results do not depend on the thread
//! count.

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

/// `cols[(ci, i, j)][(n, oh, ow)]`: the input patches of a dense convolution.
fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let m = s.n * ho * wo;
    let k = s.k;
    cols.par_chunks_mut(m).enumerate().for_each(|(row, out)| {
        let (ci, i, j) = (row / (k * k), (row / k) % k, row % k);
        out.fill(0.0);
        let oy = valid(ho, s.h, s.stride, i, pt);
        let ox = valid(wo, s.w, s.stride, j, pl);
        for n in 0..s.n {
            let src = &x[(ci * s.n + n) * s.h * s.w..][..s.h * s.w];
            let dst = &mut out[n * ho * wo..][..ho * wo];
            for oh in oy.clone() {
                let r = oh * s.stride + i - pt;
                for ow in ox.clone() {
                    dst[oh * wo + ow] = src[r * s.w + ow * s.stride + j - pl];
                }
            }
        }
    });
}

/// Adds the patch gradients `dcols` back into the input gradient `dx`.
fn col2im_add(dcols: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (ho, wo) = s.out_hw();
    let (pt, pl) = (s.pad_before(s.h), s.pad_before(s.w));
    let m = s.n * ho * wo;
    let k = s.k;
    dx.par_chunks_mut(s.n * s.h * s.w)
        .enumerate()
        .for_each(|(ci, dxc)| {
            for i in 0..k {
                for j in 0..k {
                    let src = &dcols[((ci * k + i) * k + j) * m..][..m];
                    let oy = valid(ho, s.h, s.stride, i, pt);
                    let ox = valid(wo, s.w, s.stride, j, pl);
                    for n in 0..s.n {
                        let d = &mut dxc[n * s.h * s.w..][..s.h * s.w];
                        let g = &src[n * ho * wo..][..ho * wo];
                        for oh in oy.clone() {
                            let r = oh * s.stride + i - pt;
                            for ow in ox.clone() {
                                d[r * s.w + ow * s.stride + j - pl] += g[oh * wo + ow];
                            }
                        }
                    }
                }
            }
        });
}

/// Dense convolution (groups = 1), no bias: `y[cout][n,ho,wo]` from `x[cin][n,h,w]`
/// and `w[cout, cin, k, k]`.
pub fn conv_forward(x: &[f32], w: &[f32], y: &mut [f32], s: &ConvShape, th: Threads) {
    let (ho, wo) = s.out_hw();
    let m = s.n * ho * wo;
    let kk = s.cin * s.k * s.k;
    let owned;
    let cols: &[f32] = if s.is_pointwise() {
        x
    } else {
        let mut c = vec![0.0f32; kk * m];
        im2col(x, s, &mut c);
        owned = c;
        &owned
    };
    matmul(
        mat_mut(y, s.cout, m, m),
        Accum::Replace,
        mat(w, s.cout, kk, kk),
        mat(cols, kk, m, m),
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
    let owned;
    let cols: &[f32] = if s.is_pointwise() {
        x
    } else {
        let mut c = vec![0.0f32; kk * m];
        im2col(x, s, &mut c);
        owned = c;
        &owned
    };
    matmul(
        mat_mut(dw, s.cout, kk, kk),
        Accum::Add,
        mat(dy, s.cout, m, m),
        mat(cols, kk, m, m).transpose(),
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
    let k = s.k;
    y.par_chunks_mut(s.n * ho * wo)
        .enumerate()
        .for_each(|(c, yc)| {
            yc.fill(0.0);
            let wc = &w[c * k * k..][..k * k];
            let xc = &x[c * s.n * s.h * s.w..][..s.n * s.h * s.w];
            for n in 0..s.n {
                let src = &xc[n * s.h * s.w..][..s.h * s.w];
                let dst = &mut yc[n * ho * wo..][..ho * wo];
                for i in 0..k {
                    let oy = valid(ho, s.h, s.stride, i, pt);
                    for j in 0..k {
                        let wv = wc[i * k + j];
                        let ox = valid(wo, s.w, s.stride, j, pl);
                        if ox.is_empty() {
                            continue;
                        }
                        for oh in oy.clone() {
                            let row = &src[(oh * s.stride + i - pt) * s.w..][..s.w];
                            let out = &mut dst[oh * wo..][..wo];
                            if s.stride == 1 {
                                let off = ox.start + j - pl;
                                for (o, xv) in out[ox.clone()].iter_mut().zip(&row[off..]) {
                                    *o += wv * xv;
                                }
                            } else {
                                for ow in ox.clone() {
                                    out[ow] += wv * row[ow * s.stride + j - pl];
                                }
                            }
                        }
                    }
                }
            }
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
    let k = s.k;
    let hw = s.h * s.w;
    let per_c = s.n * hw;
    let mut dx_buf;
    let dx: &mut [f32] = match dx {
        Some(d) => d,
        None => {
            dx_buf = Vec::new();
            &mut dx_buf
        }
    };
    let want_dx = !dx.is_empty();
    type Task<'a> = (usize, &'a mut [f32], Option<&'a mut [f32]>);
    let chunks: Vec<Task> = if want_dx {
        dw.chunks_mut(k * k)
            .zip(dx.chunks_mut(per_c))
            .enumerate()
            .map(|(c, (a, b))| (c, a, Some(b)))
            .collect()
    } else {
        dw.chunks_mut(k * k)
            .enumerate()
            .map(|(c, a)| (c, a, None))
            .collect()
    };
    chunks.into_par_iter().for_each(|(c, dwc, dxc)| {
        let wc = &w[c * k * k..][..k * k];
        let xc = &x[c * per_c..][..per_c];
        let gc = &dy[c * s.n * ho * wo..][..s.n * ho * wo];
        let mut dxc = dxc;
        if let Some(d) = dxc.as_deref_mut() {
            d.fill(0.0);
        }
        for i in 0..k {
            let oy = valid(ho, s.h, s.stride, i, pt);
            for j in 0..k {
                let ox = valid(wo, s.w, s.stride, j, pl);
                if ox.is_empty() {
                    continue;
                }
                let wv = wc[i * k + j];
                let mut acc = 0.0f32;
                for n in 0..s.n {
                    let src = &xc[n * hw..][..hw];
                    let g = &gc[n * ho * wo..][..ho * wo];
                    for oh in oy.clone() {
                        let r = (oh * s.stride + i - pt) * s.w;
                        let grow = &g[oh * wo..][..wo];
                        if s.stride == 1 {
                            let off = r + ox.start + j - pl;
                            let n_ox = ox.len();
                            let xs = &src[off..off + n_ox];
                            let gs = &grow[ox.clone()];
                            let mut part = 0.0f32;
                            for (a, b) in xs.iter().zip(gs) {
                                part += a * b;
                            }
                            acc += part;
                            if let Some(d) = dxc.as_deref_mut() {
                                let dd = &mut d[n * hw + off..][..n_ox];
                                for (a, b) in dd.iter_mut().zip(gs) {
                                    *a += wv * b;
                                }
                            }
                        } else {
                            for ow in ox.clone() {
                                let at = r + ow * s.stride + j - pl;
                                acc += src[at] * grow[ow];
                                if let Some(d) = dxc.as_deref_mut() {
                                    d[n * hw + at] += wv * grow[ow];
                                }
                            }
                        }
                    }
                }
                dwc[i * k + j] += acc;
            }
        }
    });
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

/// BatchNorm over `x[c][m]` into `y` (may alias nothing; `y` is written whole).
/// With `batch_stats`, normalises by this batch's mean and (biased) variance and moves
/// `running_mean`/`running_var` towards them by `momentum` (PyTorch's update, unbiased
/// variance); otherwise uses the running statistics unchanged.
pub fn batch_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    eps: f32,
    momentum: f32,
    batch_stats: bool,
    y: &mut [f32],
    m: usize,
) -> BnCache {
    let c = gamma.len();
    let stats: Vec<(f32, f32)> = if batch_stats {
        x.par_chunks(m)
            .map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
                (mean as f32, var as f32)
            })
            .collect()
    } else {
        (0..c).map(|i| (running_mean[i], running_var[i])).collect()
    };
    if batch_stats {
        let unbias = if m > 1 {
            m as f32 / (m - 1) as f32
        } else {
            1.0
        };
        for (i, &(mean, var)) in stats.iter().enumerate() {
            running_mean[i] = (1.0 - momentum) * running_mean[i] + momentum * mean;
            running_var[i] = (1.0 - momentum) * running_var[i] + momentum * var * unbias;
        }
    }
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let inv_std: Vec<f32> = stats.iter().map(|s| 1.0 / (s.1 + eps).sqrt()).collect();
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
        mean,
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

/// Global average pooling of `x[c][n, hw]` into row-major `out[n, c]`.
pub fn global_pool_forward(x: &[f32], c: usize, n: usize, hw: usize, out: &mut [f32]) {
    for ci in 0..c {
        for ni in 0..n {
            let s: f32 = x[(ci * n + ni) * hw..][..hw].iter().sum();
            out[ni * c + ci] = s / hw as f32;
        }
    }
}

/// Backward of [`global_pool_forward`]: spreads `d[n, c]` over `dx[c][n, hw]`.
pub fn global_pool_backward(d: &[f32], c: usize, n: usize, hw: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(n * hw).enumerate().for_each(|(ci, row)| {
        for ni in 0..n {
            let g = d[ni * c + ci] / hw as f32;
            row[ni * hw..][..hw].fill(g);
        }
    });
}

/// Images `x[n, c, h, w]` (row-major, as preprocessing writes them) to `[c][n, h, w]`.
pub fn nchw_to_cnhw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for ni in 0..n {
        for ci in 0..c {
            out[(ci * n + ni) * hw..][..hw].copy_from_slice(&x[(ni * c + ci) * hw..][..hw]);
        }
    }
    out
}
