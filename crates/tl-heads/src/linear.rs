//! Linear heads: logistic regression (L-BFGS), ridge (closed form), linear SVM (dual
//! coordinate descent), and Platt scaling for the two margin heads.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_core::Rng;

use crate::HeadError;
use crate::la;
use crate::matrix::X;
use crate::params::{LogisticParams, SvmParams};

/// `scores = x . w + b`; one column for a binary problem (positive = the second class),
/// otherwise one column per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weights, features x outputs.
    pub w: Array2<f64>,
    /// Intercepts, one per output.
    pub b: Array1<f64>,
}

impl Linear {
    pub(crate) fn scores(&self, x: &X) -> Array2<f64> {
        x.dot(self.w.view()) + &self.b
    }

    /// Scores with one column per class: a binary score `s` becomes `[-s, s]`.
    pub(crate) fn class_scores(&self, x: &X) -> Array2<f64> {
        let s = self.scores(x);
        if s.ncols() == 1 {
            let mut out = Array2::zeros((s.nrows(), 2));
            for (i, &v) in s.column(0).iter().enumerate() {
                out[[i, 0]] = -v;
                out[[i, 1]] = v;
            }
            out
        } else {
            s
        }
    }
}

/// Logistic loss + `alpha/2 |W|^2` and its gradient at `theta` = [W row-major (d x m), b (m)].
/// One score column is the binary model (class 1 positive), more columns the multinomial one.
fn logistic_objective(
    x: &X,
    y: &[usize],
    sw: &Array1<f64>,
    alpha: f64,
    m: usize,
    theta: &[f64],
) -> (f64, Vec<f64>) {
    let d = x.ncols();
    let w = ArrayView2::from_shape((d, m), &theta[..d * m]).expect("theta holds W");
    let b = ndarray::ArrayView1::from(&theta[d * m..]);
    let s = x.dot(w) + b;
    let mut loss = 0.0;
    let mut diff = Array2::<f64>::zeros(s.dim());
    for (i, row) in s.outer_iter().enumerate() {
        let wi = sw[i];
        if m == 1 {
            let z = row[0];
            let t = if y[i] == 1 { 1.0 } else { 0.0 };
            // log(1 + e^z) - t z, computed without overflow.
            let softplus = if z > 0.0 {
                z + (-z).exp().ln_1p()
            } else {
                z.exp().ln_1p()
            };
            loss += wi * (softplus - t * z);
            diff[[i, 0]] = wi * (1.0 / (1.0 + (-z).exp()) - t);
        } else {
            let max = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            loss += wi * (lse - row[y[i]]);
            for j in 0..m {
                diff[[i, j]] = wi * (row[j] - lse).exp();
            }
            diff[[i, y[i]]] -= wi;
        }
    }
    let gw = x.t_dot(&diff) + &w * alpha;
    let gb = diff.sum_axis(Axis(0));
    loss += 0.5 * alpha * w.iter().map(|v| v * v).sum::<f64>();
    let mut grad = Vec::with_capacity(theta.len());
    grad.extend(gw.iter());
    grad.extend(gb.iter());
    (loss, grad)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Outcome of [`lbfgs`].
struct Minimum {
    theta: Vec<f64>,
    iterations: u64,
    grad_max: f64,
}

/// Limited-memory BFGS (memory 10) with a backtracking Armijo line search. Stops when the largest
/// gradient entry is at most `gtol`, after `max_iter` iterations, or when no step lowers the loss.
fn lbfgs(
    f: impl Fn(&[f64]) -> (f64, Vec<f64>),
    mut theta: Vec<f64>,
    max_iter: u64,
    gtol: f64,
) -> Minimum {
    const MEMORY: usize = 10;
    let grad_max = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (mut fx, mut g) = f(&theta);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::new();
    let mut iterations = 0;
    while iterations < max_iter && grad_max(&g) > gtol {
        iterations += 1;
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = history
            .back()
            .map_or(1.0, |(s, y, _)| dot(s, y) / dot(y, y));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let bcoef = rho * dot(y, &q);
            q.iter_mut()
                .zip(s)
                .for_each(|(qi, si)| *qi += (a - bcoef) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            history.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        let mut step = if history.is_empty() {
            (1.0 / dot(&g, &g).sqrt()).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        while step > 1e-20 {
            let cand: Vec<f64> = theta.iter().zip(&dir).map(|(t, d)| t + step * d).collect();
            let (fc, gc) = f(&cand);
            if fc.is_finite() && fc <= fx + 1e-4 * step * slope {
                accepted = Some((cand, fc, gc));
                break;
            }
            step *= 0.5;
        }
        let Some((cand, fc, gc)) = accepted else {
            break;
        };
        let s: Vec<f64> = cand.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gc.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        theta = cand;
        fx = fc;
        g = gc;
    }
    Minimum {
        grad_max: grad_max(&g),
        theta,
        iterations,
    }
}

/// Fits L2-penalised logistic regression, scikit-learn's objective
/// `sum_i w_i loss_i + |W|^2 / (2C)` (intercepts unpenalised), by L-BFGS. `y` holds class indices
/// `0..k`, all present. Binary problems fit one weight vector (as scikit-learn does, so `C` means
/// the same), more classes the multinomial model. Convergence uses scikit-learn's criterion:
/// max |gradient of the weighted mean loss| <= tol.
///
/// Not linfa-logistic: its More-Thuente line search gives up early on ordinary data and it then
/// returns the unconverged point without saying so (rust-ml/linfa#334; on optdigits it stops at 5x
/// the optimal loss, 0.9 points under scikit-learn). It also takes no sample weights, which class
/// weights need. `tests/parity.rs` keeps the comparison.
pub(crate) fn fit_logistic(
    p: &LogisticParams,
    x: &X,
    y: &[usize],
    k: usize,
    sw: &Array1<f64>,
    start: Option<&Linear>,
) -> Result<(Linear, Option<String>), HeadError> {
    let d = x.ncols();
    let m = if k == 2 { 1 } else { k };
    let alpha = 1.0 / p.c;
    let theta0 = match start {
        Some(l) if l.w.dim() == (d, m) && l.b.len() == m => {
            let mut t: Vec<f64> = l.w.iter().copied().collect();
            t.extend(l.b.iter());
            t
        }
        _ => vec![0.0; d * m + m],
    };
    let min = lbfgs(
        |theta| logistic_objective(x, y, sw, alpha, m, theta),
        theta0,
        p.max_iter,
        p.tol * sw.sum(),
    );
    if min.grad_max.is_nan() {
        return Err(HeadError::Numerical(
            "logistic regression diverged (NaN gradient); standardise the features or lower c"
                .into(),
        ));
    }
    let mut warning = None;
    if min.grad_max > p.tol * sw.sum() {
        // Returned, not only logged: the classifier and the reports carry it.
        let w = format!(
            "logistic regression did not converge: stopped after {} iterations with max |gradient| {:.1e} > tol {:.0e} (raise max_iter, standardise the features or lower c)",
            min.iterations,
            min.grad_max / sw.sum(),
            p.tol
        );
        tracing::debug!("{w}");
        warning = Some(w);
    } else {
        tracing::debug!(
            "logistic regression converged in {} iterations",
            min.iterations
        );
    }
    let w = Array2::from_shape_vec((d, m), min.theta[..d * m].to_vec()).expect("d x m");
    let b = Array1::from(min.theta[d * m..].to_vec());
    Ok((Linear { w, b }, warning))
}

/// ±1 targets: one column for two classes (class 1 positive), else one per class.
fn sign_targets(y: &[usize], k: usize) -> Array2<f64> {
    let m = if k == 2 { 1 } else { k };
    let mut t = Array2::from_elem((y.len(), m), -1.0);
    for (i, &c) in y.iter().enumerate() {
        if k == 2 {
            if c == 1 {
                t[[i, 0]] = 1.0;
            }
        } else {
            t[[i, c]] = 1.0;
        }
    }
    t
}

/// Weighted ridge regression on ±1 targets with an unpenalised intercept (centring), solved in
/// the primal (d x d) or, with more features than rows, the dual (n x n).
pub(crate) fn fit_ridge(
    alpha: f64,
    x: &X,
    y: &[usize],
    k: usize,
    sw: &Array1<f64>,
) -> Result<Linear, HeadError> {
    let x = x.dense("the ridge head")?;
    let x = x.view();
    let (n, d) = x.dim();
    let t = sign_targets(y, k);
    let wsum = sw.sum();
    let xmean = x.t().dot(sw) / wsum;
    let tmean = t.t().dot(sw) / wsum;
    let sq = sw.mapv(f64::sqrt).insert_axis(Axis(1));
    let xs = (&x - &xmean) * &sq;
    let ts = (&t - &tmean) * &sq;
    let coef = if d <= n {
        let mut gram = xs.t().dot(&xs);
        gram.diag_mut().mapv_inplace(|v| v + alpha);
        la::solve_spd(gram, xs.t().dot(&ts))?
    } else {
        let mut kernel = xs.dot(&xs.t());
        kernel.diag_mut().mapv_inplace(|v| v + alpha);
        xs.t().dot(&la::solve_spd(kernel, ts)?)
    };
    let b = &tmean - &xmean.dot(&coef);
    Ok(Linear { w: coef, b })
}

/// One binary L2-loss SVM by dual coordinate descent (Hsieh et al., 2008), with the intercept as
/// an extra constant feature as liblinear and scikit-learn's LinearSVC do. Returns (w, b).
fn svm_binary(p: &SvmParams, x: &X, y: &[f64], cost: &[f64], seed: u64) -> (Array1<f64>, f64) {
    let (n, d) = (x.nrows(), x.ncols());
    let mut w = Array1::<f64>::zeros(d);
    let mut b = 0.0;
    let mut alpha = vec![0.0f64; n];
    let diag: Vec<f64> = cost.iter().map(|c| 0.5 / c).collect();
    let qii: Vec<f64> = (0..n).map(|i| x.row_sq(i) + 1.0 + diag[i]).collect();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for _ in 0..p.max_iter {
        rng.shuffle(&mut order);
        let (mut pg_max, mut pg_min) = (f64::NEG_INFINITY, f64::INFINITY);
        for &i in &order {
            let g = y[i] * (x.row_dot(i, w.view()) + b) - 1.0 + diag[i] * alpha[i];
            let pg = if alpha[i] == 0.0 { g.min(0.0) } else { g };
            pg_max = pg_max.max(pg);
            pg_min = pg_min.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (old - g / qii[i]).max(0.0);
                let step = (alpha[i] - old) * y[i];
                x.row_axpy(i, step, &mut w.view_mut());
                b += step;
            }
        }
        if pg_max - pg_min < p.tol {
            break;
        }
    }
    (w, b)
}

/// One-vs-rest linear SVM; binary problems fit one model with class 1 positive.
pub(crate) fn fit_svm(
    p: &SvmParams,
    x: &X,
    y: &[usize],
    k: usize,
    sw: &Array1<f64>,
    seed: u64,
) -> Linear {
    let m = if k == 2 { 1 } else { k };
    let cost: Vec<f64> = sw.iter().map(|w| p.c * w).collect();
    let fits: Vec<(Array1<f64>, f64)> = (0..m)
        .into_par_iter()
        .map(|j| {
            let positive = if k == 2 { 1 } else { j };
            let target: Vec<f64> = y
                .iter()
                .map(|&c| if c == positive { 1.0 } else { -1.0 })
                .collect();
            svm_binary(p, x, &target, &cost, seed.wrapping_add(j as u64))
        })
        .collect();
    let mut w = Array2::zeros((x.ncols(), m));
    let mut b = Array1::zeros(m);
    for (j, (wj, bj)) in fits.into_iter().enumerate() {
        w.column_mut(j).assign(&wj);
        b[j] = bj;
    }
    Linear { w, b }
}

/// Platt's sigmoid `P(y = 1 | f) = 1 / (1 + exp(a f + b))`, fitted by the Newton method with
/// backtracking of Lin, Lin & Weng (2007), on regularised targets.
pub(crate) fn platt(scores: &[f64], positive: &[bool]) -> (f64, f64) {
    let prior1 = positive.iter().filter(|&&p| p).count() as f64;
    let prior0 = positive.len() as f64 - prior1;
    let hi = (prior1 + 1.0) / (prior1 + 2.0);
    let lo = 1.0 / (prior0 + 2.0);
    let t: Vec<f64> = positive.iter().map(|&p| if p { hi } else { lo }).collect();
    let (mut a, mut b) = (0.0, ((prior0 + 1.0) / (prior1 + 1.0)).ln());
    let objective = |a: f64, b: f64| -> f64 {
        scores
            .iter()
            .zip(&t)
            .map(|(&f, &ti)| {
                let z = f * a + b;
                if z >= 0.0 {
                    ti * z + (-z).exp().ln_1p()
                } else {
                    (ti - 1.0) * z + z.exp().ln_1p()
                }
            })
            .sum()
    };
    let mut fval = objective(a, b);
    for _ in 0..100 {
        let (mut h11, mut h22, mut h21, mut g1, mut g2) = (1e-12, 1e-12, 0.0, 0.0, 0.0);
        for (&f, &ti) in scores.iter().zip(&t) {
            let z = f * a + b;
            let (p, q) = if z >= 0.0 {
                let e = (-z).exp();
                (e / (1.0 + e), 1.0 / (1.0 + e))
            } else {
                let e = z.exp();
                (1.0 / (1.0 + e), e / (1.0 + e))
            };
            let d2 = p * q;
            h11 += f * f * d2;
            h22 += d2;
            h21 += f * d2;
            let d1 = ti - p;
            g1 += f * d1;
            g2 += d1;
        }
        if g1.abs() < 1e-5 && g2.abs() < 1e-5 {
            break;
        }
        let det = h11 * h22 - h21 * h21;
        let da = -(h22 * g1 - h21 * g2) / det;
        let db = -(-h21 * g1 + h11 * g2) / det;
        let gd = g1 * da + g2 * db;
        let mut step = 1.0;
        let mut improved = false;
        while step >= 1e-10 {
            let (na, nb) = (a + step * da, b + step * db);
            let nf = objective(na, nb);
            if nf < fval + 1e-4 * step * gd {
                a = na;
                b = nb;
                fval = nf;
                improved = true;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    (a, b)
}

/// Probability of each class from per-output Platt sigmoids over linear scores.
pub(crate) fn platt_proba(scores: &Array2<f64>, sigmoids: &[(f64, f64)]) -> Array2<f64> {
    let n = scores.nrows();
    let sig = |f: f64, (a, b): (f64, f64)| 1.0 / (1.0 + (a * f + b).exp());
    if scores.ncols() == 1 {
        let mut out = Array2::zeros((n, 2));
        for i in 0..n {
            let p = sig(scores[[i, 0]], sigmoids[0]);
            out[[i, 0]] = 1.0 - p;
            out[[i, 1]] = p;
        }
        return out;
    }
    let k = scores.ncols();
    let mut out = Array2::zeros((n, k));
    for i in 0..n {
        let mut sum = 0.0;
        for j in 0..k {
            let p = sig(scores[[i, j]], sigmoids[j]);
            out[[i, j]] = p;
            sum += p;
        }
        for j in 0..k {
            out[[i, j]] = if sum > 0.0 {
                out[[i, j]] / sum
            } else {
                1.0 / k as f64
            };
        }
    }
    out
}
