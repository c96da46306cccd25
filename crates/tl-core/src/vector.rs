//! Vector arithmetic shared by the embedders, heads and transferability scores.

/// A float type the helpers work on (`f32` for embeddings, `f64` for heads).
pub trait Real:
    Copy + PartialOrd + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self>
{
    /// Zero.
    const ZERO: Self;
    /// The smallest norm divided by: sentence-transformers' (PyTorch's `F.normalize`) 1e-12.
    const EPS: Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Sum of an iterator.
    fn sum<I: Iterator<Item = Self>>(it: I) -> Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const EPS: f32 = 1e-12;
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn sum<I: Iterator<Item = f32>>(it: I) -> f32 {
        it.sum()
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const EPS: f64 = 1e-12;
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn sum<I: Iterator<Item = f64>>(it: I) -> f64 {
        it.sum()
    }
}

/// Scales `v` to unit L2 norm, dividing by `max(norm, 1e-12)` as PyTorch's `F.normalize`
/// does: a zero vector stays zero and nothing becomes NaN.
pub fn l2_normalize<T: Real>(v: &mut [T]) {
    let norm = T::sum(v.iter().map(|&x| x * x)).sqrt();
    let norm = if norm > T::EPS { norm } else { T::EPS };
    v.iter_mut().for_each(|x| *x = *x / norm);
}

/// [`l2_normalize`] on each row of a row-major matrix with `cols` columns.
pub fn l2_normalize_rows<T: Real>(values: &mut [T], cols: usize) {
    if cols > 0 {
        values.chunks_exact_mut(cols).for_each(l2_normalize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_norm_zero_stays_zero() {
        let mut v = [3.0f32, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0f64; 3];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut m = [3.0f64, 4.0, 0.0, 2.0];
        l2_normalize_rows(&mut m, 2);
        assert_eq!(m, [0.6, 0.8, 0.0, 1.0]);
    }
}
