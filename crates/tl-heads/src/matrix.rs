//! Feature matrices the heads take: dense (embeddings) or sparse rows (a TF-IDF bag of words
//! with its whole vocabulary, where a dense copy would not fit in memory).

use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;
use tl_core::Csr;

use crate::HeadError;

/// Most entries a sparse matrix is expanded to for a head or preprocessing step that has no
/// sparse path (kNN, nearest centroid, ridge, standardisation, PCA): 2^27 f64, 1 GiB.
pub const DENSE_LIMIT: usize = 1 << 27;

/// Multiply-adds above which a sparse product is split over threads (below, the threads'
/// start-up costs more than they save, and a grid search already runs its folds in parallel).
const PARALLEL_WORK: usize = 1 << 22;

/// A borrowed feature matrix, rows = samples. Dense arrays and [`Csr`] matrices convert into
/// it, so `fit(x.view(), ..)` and `fit(&csr, ..)` are the same call.
#[derive(Debug, Clone, Copy)]
pub enum Features<'a> {
    /// Every entry stored.
    Dense(ArrayView2<'a, f32>),
    /// Non-zero entries only. Logistic regression and the linear SVM work on it as is; the
    /// other heads expand it (up to [`DENSE_LIMIT`] entries).
    Sparse(&'a Csr),
}

impl<'a> From<ArrayView2<'a, f32>> for Features<'a> {
    fn from(x: ArrayView2<'a, f32>) -> Self {
        Features::Dense(x)
    }
}

impl<'a> From<&'a Array2<f32>> for Features<'a> {
    fn from(x: &'a Array2<f32>) -> Self {
        Features::Dense(x.view())
    }
}

impl<'a> From<&'a Csr> for Features<'a> {
    fn from(x: &'a Csr) -> Self {
        Features::Sparse(x)
    }
}

impl<'a> From<&'a Matrix> for Features<'a> {
    fn from(x: &'a Matrix) -> Self {
        x.view()
    }
}

impl Features<'_> {
    /// Rows.
    pub fn nrows(&self) -> usize {
        match self {
            Features::Dense(x) => x.nrows(),
            Features::Sparse(x) => x.nrows(),
        }
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        match self {
            Features::Dense(x) => x.ncols(),
            Features::Sparse(x) => x.ncols(),
        }
    }

    /// The rows `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Matrix {
        match self {
            Features::Dense(x) => Matrix::Dense(x.select(Axis(0), rows)),
            Features::Sparse(x) => Matrix::Sparse(x.select_rows(rows)),
        }
    }

    /// An error naming the first non-finite value.
    pub(crate) fn check_finite(&self, what: &str) -> Result<(), HeadError> {
        let bad = |i: usize, j: usize, v: f32| {
            Err(HeadError::Data(format!(
                "{what} row {i}, column {j}: feature is {v}; features must be finite numbers"
            )))
        };
        match self {
            Features::Dense(x) => {
                for (i, row) in x.outer_iter().enumerate() {
                    if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                        return bad(i, j, row[j]);
                    }
                }
            }
            Features::Sparse(x) => {
                for i in 0..x.nrows() {
                    let (cols, vals) = x.row(i);
                    if let Some(p) = vals.iter().position(|v| !v.is_finite()) {
                        return bad(i, cols[p] as usize, vals[p]);
                    }
                }
            }
        }
        Ok(())
    }

    /// The f64 matrix the solvers work on.
    pub(crate) fn to_f64(self) -> X {
        match self {
            Features::Dense(x) => X::Dense(x.mapv(f64::from)),
            Features::Sparse(x) => X::Sparse(x.map(f64::from)),
        }
    }
}

/// An owned feature matrix (what [`crate::grid_search_with`]'s feature builder returns).
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    /// Every entry stored.
    Dense(Array2<f32>),
    /// Non-zero entries only.
    Sparse(Csr),
}

impl Matrix {
    /// Borrows it.
    pub fn view(&self) -> Features<'_> {
        match self {
            Matrix::Dense(x) => Features::Dense(x.view()),
            Matrix::Sparse(x) => Features::Sparse(x),
        }
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.view().nrows()
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        self.view().ncols()
    }
}

impl From<Array2<f32>> for Matrix {
    fn from(x: Array2<f32>) -> Self {
        Matrix::Dense(x)
    }
}

impl From<Csr> for Matrix {
    fn from(x: Csr) -> Self {
        Matrix::Sparse(x)
    }
}

/// The solvers' matrix: f64, dense or sparse. The linear heads' products go through the
/// methods below, so one solver serves both layouts.
#[derive(Debug, Clone)]
pub(crate) enum X {
    Dense(Array2<f64>),
    Sparse(Csr<f64>),
}

impl X {
    pub(crate) fn nrows(&self) -> usize {
        match self {
            X::Dense(x) => x.nrows(),
            X::Sparse(x) => x.nrows(),
        }
    }

    pub(crate) fn ncols(&self) -> usize {
        match self {
            X::Dense(x) => x.ncols(),
            X::Sparse(x) => x.ncols(),
        }
    }

    /// A dense view, expanding a sparse matrix for `what` (a head or step without a sparse
    /// path) when it has at most [`DENSE_LIMIT`] entries.
    pub(crate) fn dense(&self, what: &str) -> Result<Cow<'_, Array2<f64>>, HeadError> {
        match self {
            X::Dense(x) => Ok(Cow::Borrowed(x)),
            X::Sparse(x) => {
                let entries = x.nrows().saturating_mul(x.ncols());
                if entries > DENSE_LIMIT {
                    return Err(HeadError::Params(format!(
                        "{what} needs dense features, and these {} x {} sparse features would take {:.1} GB dense; use the logistic or svm head, or fewer columns (tfidf.max_features)",
                        x.nrows(),
                        x.ncols(),
                        entries as f64 * 8.0 / 1e9
                    )));
                }
                let v = x.to_dense_vec(0.0);
                Ok(Cow::Owned(
                    Array2::from_shape_vec((x.nrows(), x.ncols()), v).expect("nrows x ncols"),
                ))
            }
        }
    }

    /// [`dense`](Self::dense), consuming a dense matrix without a copy.
    pub(crate) fn into_dense(self, what: &str) -> Result<Array2<f64>, HeadError> {
        match self {
            X::Dense(x) => Ok(x),
            x => Ok(x.dense(what)?.into_owned()),
        }
    }

    pub(crate) fn select(&self, rows: &[usize]) -> X {
        match self {
            X::Dense(x) => X::Dense(x.select(Axis(0), rows)),
            X::Sparse(x) => X::Sparse(x.select_rows(rows)),
        }
    }

    /// `x . v`.
    pub(crate) fn dot_vec(&self, v: ArrayView1<f64>) -> Array1<f64> {
        match self {
            X::Dense(x) => x.dot(&v),
            X::Sparse(x) => (0..x.nrows()).map(|i| self.row_dot(i, v)).collect(),
        }
    }

    /// `x . w`, `w` being `ncols x m`.
    pub(crate) fn dot(&self, w: ArrayView2<f64>) -> Array2<f64> {
        if w.ncols() == 1 {
            // Matrix-vector: a d x 1 matrix product would have the gemm repack all of x on
            // every call (87% of a TF-IDF fit's time went to that packing).
            return self.dot_vec(w.column(0)).insert_axis(Axis(1));
        }
        match self {
            X::Dense(x) => x.dot(&w),
            X::Sparse(x) => {
                let m = w.ncols();
                let mut out = Array2::zeros((x.nrows(), m));
                let rows = out.as_slice_mut().expect("standard layout");
                let row = |(i, o): (usize, &mut [f64])| {
                    let mut o = ndarray::ArrayViewMut1::from(o);
                    let (cols, vals) = x.row(i);
                    for (&j, &a) in cols.iter().zip(vals) {
                        o.scaled_add(a, &w.row(j as usize));
                    }
                };
                if x.nnz() * m >= PARALLEL_WORK {
                    rows.par_chunks_mut(m).enumerate().for_each(row);
                } else {
                    rows.chunks_mut(m).enumerate().for_each(row);
                }
                out
            }
        }
    }

    /// `x^T . d`, `d` being `nrows x m`.
    pub(crate) fn t_dot(&self, d: &Array2<f64>) -> Array2<f64> {
        let m = d.ncols();
        if m == 1 {
            // One column: a sum of rows, skipping the zero weights (a d x 1 gemm would repack
            // x, see `dot`).
            let mut out = Array2::zeros((self.ncols(), 1));
            let mut col = out.column_mut(0);
            for (i, &di) in d.column(0).iter().enumerate() {
                if di != 0.0 {
                    self.row_axpy(i, di, &mut col);
                }
            }
            return out;
        }
        let x = match self {
            X::Dense(x) => return x.t().dot(d),
            X::Sparse(x) => x,
        };
        let scatter = |rows: std::ops::Range<usize>| {
            let mut acc = Array2::zeros((x.ncols(), m));
            for i in rows {
                let di = d.row(i);
                let (cols, vals) = x.row(i);
                for (&j, &a) in cols.iter().zip(vals) {
                    acc.row_mut(j as usize).scaled_add(a, &di);
                }
            }
            acc
        };
        let (n, threads) = (x.nrows(), rayon::current_num_threads());
        if x.nnz() * m < PARALLEL_WORK || threads == 1 {
            return scatter(0..n);
        }
        // One accumulator per thread over its block of rows, summed after.
        let block = n.div_ceil(threads);
        let parts: Vec<Array2<f64>> = (0..threads)
            .into_par_iter()
            .map(|t| scatter(t * block..((t + 1) * block).min(n)))
            .collect();
        let mut out = Array2::zeros((x.ncols(), m));
        for p in parts {
            out += &p;
        }
        out
    }

    /// Row `i` . `w`.
    pub(crate) fn row_dot(&self, i: usize, w: ArrayView1<f64>) -> f64 {
        match self {
            X::Dense(x) => x.row(i).dot(&w),
            X::Sparse(x) => {
                let (cols, vals) = x.row(i);
                cols.iter()
                    .zip(vals)
                    .map(|(&j, &a)| a * w[j as usize])
                    .sum()
            }
        }
    }

    /// `w += a * row i`.
    pub(crate) fn row_axpy(&self, i: usize, a: f64, w: &mut ndarray::ArrayViewMut1<f64>) {
        match self {
            X::Dense(x) => w.scaled_add(a, &x.row(i)),
            X::Sparse(x) => {
                let (cols, vals) = x.row(i);
                for (&j, &v) in cols.iter().zip(vals) {
                    w[j as usize] += a * v;
                }
            }
        }
    }

    /// Squared norm of row `i`.
    pub(crate) fn row_sq(&self, i: usize) -> f64 {
        match self {
            X::Dense(x) => x.row(i).dot(&x.row(i)),
            X::Sparse(x) => x.row(i).1.iter().map(|v| v * v).sum(),
        }
    }
}
