//! Compressed sparse rows: the layout of a bag-of-words matrix, where almost every entry is 0.

/// An `nrows x ncols` matrix stored by rows: row `i`'s non-zero entries are
/// `indices[indptr[i]..indptr[i + 1]]` (column numbers, increasing) with `values` at the same
/// positions. scikit-learn's (SciPy's) `csr_matrix` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr<T = f32> {
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<T>,
}

impl<T: Copy> Csr<T> {
    /// Builds a matrix from its parts, checking them: `indptr` starts at 0, never decreases and
    /// ends at `indices.len()`, `values` has as many entries as `indices`, and each row's column
    /// numbers are increasing and below `ncols`.
    pub fn new(
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Vec<T>,
    ) -> Result<Csr<T>, String> {
        if indptr.first() != Some(&0) {
            return Err("indptr must start with 0".into());
        }
        if indptr.last() != Some(&indices.len()) {
            return Err(format!(
                "indptr ends at {:?} but there are {} stored entries",
                indptr.last(),
                indices.len()
            ));
        }
        if values.len() != indices.len() {
            return Err(format!(
                "{} column indices but {} values",
                indices.len(),
                values.len()
            ));
        }
        for (i, w) in indptr.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(format!("indptr decreases at row {i}"));
            }
            let cols = &indices[w[0]..w[1]];
            if let Some(&j) = cols.iter().find(|&&j| j as usize >= ncols) {
                return Err(format!("row {i}: column {j} but the matrix has {ncols}"));
            }
            if cols.windows(2).any(|c| c[1] <= c[0]) {
                return Err(format!("row {i}: column indices are not increasing"));
            }
        }
        Ok(Csr {
            ncols,
            indptr,
            indices,
            values,
        })
    }

    /// Builds a matrix from rows of `(column, value)` pairs, each row sorted by column with
    /// no column twice. Panics otherwise: for producers that build rows themselves.
    pub fn from_rows<I>(ncols: usize, rows: I) -> Csr<T>
    where
        I: IntoIterator<Item = Vec<(u32, T)>>,
    {
        let mut m = Csr {
            ncols,
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        };
        for row in rows {
            for (j, v) in row {
                assert!((j as usize) < ncols, "column {j} of {ncols}");
                m.indices.push(j);
                m.values.push(v);
            }
            let start = *m.indptr.last().expect("indptr starts with 0");
            assert!(
                m.indices[start..].windows(2).all(|c| c[0] < c[1]),
                "row columns must increase"
            );
            m.indptr.push(m.indices.len());
        }
        m
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Row `i`: its column numbers and values.
    pub fn row(&self, i: usize) -> (&[u32], &[T]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Row `i`'s values, to change them in place (the columns stay).
    pub fn row_values_mut(&mut self, i: usize) -> &mut [T] {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        &mut self.values[a..b]
    }

    /// Scales every row to unit L2 norm (empty rows stay empty), with
    /// [`crate::vector::l2_normalize`]'s semantics.
    pub fn l2_normalize_rows(&mut self)
    where
        T: crate::vector::Real,
    {
        for i in 0..self.nrows() {
            crate::vector::l2_normalize(self.row_values_mut(i));
        }
    }

    /// The rows `rows`, in that order (a row may repeat).
    pub fn select_rows(&self, rows: &[usize]) -> Csr<T> {
        let nnz = rows
            .iter()
            .map(|&i| self.indptr[i + 1] - self.indptr[i])
            .sum();
        let mut out = Csr {
            ncols: self.ncols,
            indptr: Vec::with_capacity(rows.len() + 1),
            indices: Vec::with_capacity(nnz),
            values: Vec::with_capacity(nnz),
        };
        out.indptr.push(0);
        for &i in rows {
            let (cols, vals) = self.row(i);
            out.indices.extend_from_slice(cols);
            out.values.extend_from_slice(vals);
            out.indptr.push(out.indices.len());
        }
        out
    }

    /// The same matrix with every value converted by `f`.
    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Csr<U> {
        Csr {
            ncols: self.ncols,
            indptr: self.indptr.clone(),
            indices: self.indices.clone(),
            values: self.values.iter().map(|&v| f(v)).collect(),
        }
    }

    /// Row-major dense entries (`nrows * ncols`, zeros filled with `zero`).
    pub fn to_dense_vec(&self, zero: T) -> Vec<T> {
        let mut out = vec![zero; self.nrows() * self.ncols];
        for i in 0..self.nrows() {
            let (cols, vals) = self.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                out[i * self.ncols + j as usize] = v;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_checked_and_rows_read_back() {
        let m = Csr::new(4, vec![0, 2, 2, 3], vec![0, 3, 1], vec![1.0f32, 2.0, 3.0]).unwrap();
        assert_eq!((m.nrows(), m.ncols(), m.nnz()), (3, 4, 3));
        assert_eq!(m.row(0), (&[0u32, 3][..], &[1.0f32, 2.0][..]));
        assert_eq!(m.row(1).0.len(), 0);
        assert_eq!(
            m.to_dense_vec(0.0),
            vec![1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0]
        );
        let s = m.select_rows(&[2, 0, 2]);
        assert_eq!(s.row(0), (&[1u32][..], &[3.0f32][..]));
        assert_eq!(s.row(1), m.row(0));
        assert_eq!(s.nnz(), 4);
        assert_eq!(
            Csr::from_rows(4, vec![vec![(0, 1.0f32), (3, 2.0)], vec![], vec![(1, 3.0)]]),
            m
        );
    }

    #[test]
    fn bad_parts_are_refused_with_the_reason() {
        let e = |r: Result<Csr<f32>, String>| r.unwrap_err();
        assert!(e(Csr::new(2, vec![1, 1], vec![0], vec![1.0])).contains("start with 0"));
        assert!(e(Csr::new(2, vec![0, 2], vec![0], vec![1.0])).contains("stored entries"));
        assert!(e(Csr::new(2, vec![0, 1], vec![0], vec![])).contains("values"));
        assert!(e(Csr::new(2, vec![0, 1], vec![2], vec![1.0])).contains("column 2"));
        assert!(e(Csr::new(3, vec![0, 2], vec![1, 1], vec![1.0, 1.0])).contains("increasing"));
        assert!(e(Csr::new(3, vec![0, 2, 1, 2], vec![1, 2], vec![1.0, 1.0])).contains("decreases"));
    }
}
