//! The crossing to linfa's ndarray 0.16 and the few dense linear-algebra routines the heads need.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::HeadError;

pub(crate) fn to16(a: ArrayView2<f64>) -> ndarray16::Array2<f64> {
    let (r, c) = a.dim();
    ndarray16::Array2::from_shape_vec((r, c), a.iter().copied().collect())
        .expect("shape matches element count")
}

pub(crate) fn from16_2(a: &ndarray16::Array2<f64>) -> Array2<f64> {
    let (r, c) = a.dim();
    Array2::from_shape_vec((r, c), a.iter().copied().collect())
        .expect("shape matches element count")
}

pub(crate) fn from16_1(a: &ndarray16::Array1<f64>) -> Array1<f64> {
    a.iter().copied().collect()
}

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky).
pub fn solve_spd(a: Array2<f64>, b: Array2<f64>) -> Result<Array2<f64>, HeadError> {
    use linfa_linalg::cholesky::SolveCInplace;
    let mut a16 = to16(a.view());
    let mut b16 = to16(b.view());
    a16.solvec_inplace(&mut b16).map_err(|e| {
        HeadError::Numerical(format!(
            "the regularised Gram matrix is not positive definite ({e}); increase alpha"
        ))
    })?;
    Ok(from16_2(&b16))
}

/// Eigen-decomposition of a symmetric matrix, eigenvalues in descending order, each eigenvector's
/// sign fixed so its largest-magnitude entry is positive (deterministic, like scikit-learn's
/// `svd_flip`).
pub fn eigh_desc(a: Array2<f64>) -> Result<(Array1<f64>, Array2<f64>), HeadError> {
    use linfa_linalg::eigh::{EigSort, EighInto};
    let (vals, vecs) = to16(a.view())
        .eigh_into()
        .map_err(|e| HeadError::Numerical(format!("eigen-decomposition failed: {e}")))?
        .sort_eig_desc();
    let vals = from16_1(&vals);
    let mut vecs = from16_2(&vecs);
    for mut col in vecs.axis_iter_mut(Axis(1)) {
        let mut best = 0.0f64;
        for &v in col.iter() {
            if v.abs() > best.abs() {
                best = v;
            }
        }
        if best < 0.0 {
            col.mapv_inplace(|v| -v);
        }
    }
    Ok((vals, vecs))
}
