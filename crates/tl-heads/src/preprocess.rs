//! Preprocessing fitted on training features: L2 normalisation, standardisation, PCA.

use ndarray::{Array1, Array2, ArrayView2, Axis, s};
use serde::{Deserialize, Serialize};

use crate::HeadError;
use crate::la;
use crate::matrix::X;
use crate::params::{Pca, Preprocess};

/// Fitted preprocessing, saved with the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPreprocess {
    /// Settings it was fitted with.
    pub settings: Preprocess,
    /// Column means subtracted by standardisation.
    pub mean: Option<Array1<f64>>,
    /// Column scales divided by standardisation (1 for zero-variance columns).
    pub scale: Option<Array1<f64>>,
    /// PCA centre and components (input dim x kept components).
    pub pca: Option<FittedPca>,
}

/// A fitted PCA projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPca {
    /// Mean subtracted before projecting.
    pub mean: Array1<f64>,
    /// Components as columns.
    pub components: Array2<f64>,
    /// Fraction of the variance each kept component explains.
    pub explained_variance_ratio: Vec<f64>,
}

fn l2_rows(x: &mut Array2<f64>) {
    for mut row in x.axis_iter_mut(Axis(0)) {
        if let Some(values) = row.as_slice_mut() {
            tl_core::vector::l2_normalize(values);
        }
    }
}

/// The preprocessing step that needs dense features, for error messages.
fn step(settings: &Preprocess) -> String {
    if settings.standardize {
        "standardisation (it centres every column)".into()
    } else {
        "PCA".into()
    }
}

/// Column means and (population) standard deviations.
fn mean_std(x: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let n = x.nrows() as f64;
    let mean = x.sum_axis(Axis(0)) / n;
    let mut var = Array1::<f64>::zeros(x.ncols());
    for row in x.axis_iter(Axis(0)) {
        for ((v, &m), &r) in var.iter_mut().zip(mean.iter()).zip(row.iter()) {
            *v += (r - m) * (r - m);
        }
    }
    let std = var.mapv(|v| (v / n).sqrt());
    (mean, std)
}

impl FittedPreprocess {
    /// Fits on training features and returns the transformed training features too.
    pub fn fit(
        settings: &Preprocess,
        x: ArrayView2<f64>,
    ) -> Result<(Self, Array2<f64>), HeadError> {
        Self::fit_owned(settings, x.to_owned())
    }

    /// [`fit`](Self::fit) in place.
    fn fit_owned(
        settings: &Preprocess,
        mut out: Array2<f64>,
    ) -> Result<(Self, Array2<f64>), HeadError> {
        if settings.l2_normalize {
            l2_rows(&mut out);
        }
        let (mut mean, mut scale) = (None, None);
        if settings.standardize {
            let (m, s) = mean_std(&out);
            // Constant columns are only centred: dividing by ~0 would blow them up.
            let s = s.mapv(|v| if v < 1e-12 { 1.0 } else { v });
            out -= &m;
            out /= &s;
            mean = Some(m);
            scale = Some(s);
        }
        let pca = match settings.pca {
            None => None,
            Some(target) => {
                let p = fit_pca(&out, target)?;
                out = project(&out, &p);
                Some(p)
            }
        };
        Ok((
            FittedPreprocess {
                settings: settings.clone(),
                mean,
                scale,
                pca,
            },
            out,
        ))
    }

    /// Applies the fitted transformation to new features.
    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        self.transform_owned(x.to_owned())
    }

    fn transform_owned(&self, mut out: Array2<f64>) -> Array2<f64> {
        if self.settings.l2_normalize {
            l2_rows(&mut out);
        }
        if let (Some(m), Some(s)) = (&self.mean, &self.scale) {
            out -= m;
            out /= s;
        }
        match &self.pca {
            Some(p) => project(&out, p),
            None => out,
        }
    }

    /// [`fit`](Self::fit) on the solvers' matrix: a sparse one stays sparse through L2
    /// normalisation; standardisation and PCA expand it (they centre every column).
    pub(crate) fn fit_x(settings: &Preprocess, x: X) -> Result<(Self, X), HeadError> {
        match x {
            X::Sparse(mut m) if !settings.standardize && settings.pca.is_none() => {
                if settings.l2_normalize {
                    m.l2_normalize_rows();
                }
                let fitted = FittedPreprocess {
                    settings: settings.clone(),
                    mean: None,
                    scale: None,
                    pca: None,
                };
                Ok((fitted, X::Sparse(m)))
            }
            x => {
                let dense = x.into_dense(&step(settings))?;
                let (fitted, out) = Self::fit_owned(settings, dense)?;
                Ok((fitted, X::Dense(out)))
            }
        }
    }

    /// [`transform`](Self::transform) on the solvers' matrix.
    pub(crate) fn transform_x(&self, x: X) -> Result<X, HeadError> {
        match x {
            X::Sparse(mut m) if self.mean.is_none() && self.pca.is_none() => {
                if self.settings.l2_normalize {
                    m.l2_normalize_rows();
                }
                Ok(X::Sparse(m))
            }
            x => Ok(X::Dense(
                self.transform_owned(x.into_dense(&step(&self.settings))?),
            )),
        }
    }

    /// Dimension of the transformed features.
    pub fn output_dim(&self, input_dim: usize) -> usize {
        self.pca
            .as_ref()
            .map_or(input_dim, |p| p.components.ncols())
    }
}

fn project(x: &Array2<f64>, p: &FittedPca) -> Array2<f64> {
    (x - &p.mean).dot(&p.components)
}

fn fit_pca(x: &Array2<f64>, target: Pca) -> Result<FittedPca, HeadError> {
    let (n, d) = x.dim();
    if n < 2 {
        return Err(HeadError::Data(format!(
            "pca needs at least 2 training rows, got {n}"
        )));
    }
    let mean = x.sum_axis(Axis(0)) / n as f64;
    let centred = x - &mean;
    // Covariance in the smaller of the two spaces; with n < d the Gram matrix has the same
    // non-zero spectrum and its eigenvectors map back through X^T.
    let (vals, vecs) = if d <= n {
        let cov = centred.t().dot(&centred) / (n as f64 - 1.0);
        la::eigh_desc(cov)?
    } else {
        let gram = centred.dot(&centred.t()) / (n as f64 - 1.0);
        let (vals, u) = la::eigh_desc(gram)?;
        let mut v = centred.t().dot(&u);
        for (j, mut col) in v.axis_iter_mut(Axis(1)).enumerate() {
            let norm = col.dot(&col).sqrt();
            if norm > 1e-12 && vals[j] > 0.0 {
                col.mapv_inplace(|e| e / norm);
            } else {
                col.fill(0.0);
            }
        }
        (vals, v)
    };
    let vals = vals.mapv(|v| v.max(0.0));
    let total: f64 = vals.sum();
    let rank_limit = n.min(d);
    let keep = match target {
        Pca::Components(k) => {
            if k > rank_limit {
                return Err(HeadError::Data(format!(
                    "pca asks for {k} components but {n} rows x {d} features allow at most {rank_limit}"
                )));
            }
            k
        }
        Pca::Variance(frac) => {
            let mut acc = 0.0;
            let mut k = 0;
            while k < rank_limit {
                acc += vals[k];
                k += 1;
                if total <= 0.0 || acc / total >= frac - 1e-12 {
                    break;
                }
            }
            k.max(1)
        }
    };
    let ratio = (0..keep)
        .map(|i| if total > 0.0 { vals[i] / total } else { 0.0 })
        .collect();
    Ok(FittedPca {
        mean,
        components: vecs.slice(s![.., ..keep]).to_owned(),
        explained_variance_ratio: ratio,
    })
}
