//! Domain adaptation on features: carry a head from a labelled source domain to an unlabelled
//! target domain by aligning feature statistics. Each method sees target features, never
//! target labels.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::EvalError;

fn mean_cov(x: ArrayView2<f64>) -> (Array1<f64>, Array2<f64>) {
    let n = x.nrows() as f64;
    let mean = x.mean_axis(Axis(0)).expect("rows");
    let c = &x - &mean;
    (mean, c.t().dot(&c) / (n - 1.0).max(1.0))
}

/// `C^p` for a symmetric positive definite `C` (eigenvalues floored at a tiny positive value).
fn spd_power(c: Array2<f64>, p: f64) -> Result<Array2<f64>, EvalError> {
    let (vals, vecs) = tl_heads::linalg::eigh_desc(c)?;
    let scaled = &vecs * &vals.mapv(|v| v.max(1e-12).powf(p));
    Ok(scaled.dot(&vecs.t()))
}

fn check(source: ArrayView2<f32>, target: ArrayView2<f32>) -> Result<(), EvalError> {
    if source.ncols() != target.ncols() {
        return Err(EvalError::Config(format!(
            "source features have {} columns, target {}: they must come from the same backbone",
            source.ncols(),
            target.ncols()
        )));
    }
    if source.nrows() < 2 || target.nrows() < 2 {
        return Err(EvalError::Config(
            "domain adaptation needs at least 2 source and 2 target rows".into(),
        ));
    }
    for (what, x) in [("source", source), ("target", target)] {
        if let Some((i, _)) = x
            .outer_iter()
            .enumerate()
            .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
        {
            return Err(EvalError::Config(format!(
                "{what} row {i}: features must be finite"
            )));
        }
    }
    Ok(())
}

/// Standardises each domain with its own mean and standard deviation.
pub fn per_domain_standardize(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
) -> Result<(Array2<f32>, Array2<f32>), EvalError> {
    check(source, target)?;
    let z = |x: ArrayView2<f32>| {
        let x = x.mapv(f64::from);
        let mean = x.mean_axis(Axis(0)).expect("rows");
        let std = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s < 1e-12 { 1.0 } else { s });
        ((&x - &mean) / &std).mapv(|v| v as f32)
    };
    Ok((z(source), z(target)))
}

/// CORAL (Sun, Feng & Saenko, 2016): recolours source features with the target covariance,
/// `(x_s - mu_s) C_s^{-1/2} C_t^{1/2} + mu_t`, where `C = cov + lambda I` and
/// `lambda = eps_scale * mean feature variance`. The textbook `lambda = 1` swamps the
/// covariance of L2-normalised embeddings (per-dimension variance ~2e-3) and changes nothing;
/// scaling by the features' own variance keeps the regulariser meaningful. With fewer target
/// rows than dimensions the target covariance is rank-deficient and `lambda` is what keeps it
/// invertible. Returns the transformed source and the (unchanged) target.
pub fn coral(
    source: ArrayView2<f32>,
    target: ArrayView2<f32>,
    eps_scale: f64,
) -> Result<Array2<f32>, EvalError> {
    check(source, target)?;
    if !(eps_scale.is_finite() && eps_scale > 0.0) {
        return Err(EvalError::Config(format!(
            "CORAL eps_scale must be positive, got {eps_scale}"
        )));
    }
    let s = source.mapv(f64::from);
    let t = target.mapv(f64::from);
    let (ms, mut cs) = mean_cov(s.view());
    let (mt, mut ct) = mean_cov(t.view());
    let d = cs.nrows() as f64;
    let lambda = eps_scale * (cs.diag().sum() + ct.diag().sum()) / (2.0 * d);
    cs.diag_mut().mapv_inplace(|v| v + lambda);
    ct.diag_mut().mapv_inplace(|v| v + lambda);
    let a = spd_power(cs, -0.5)?.dot(&spd_power(ct, 0.5)?);
    Ok(((&s - &ms).dot(&a) + &mt).mapv(|v| v as f32))
}
