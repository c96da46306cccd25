//! Deterministic, stratified splitting: train/test, k-fold, k-per-class subsamples.
//!
//! Randomness comes from SplitMix64 with explicit seeds, not from a crate whose stream
//! may change between versions, so the same seed gives the same indices on every
//! platform and every release (the tests pin them).

use std::collections::BTreeMap;

use crate::DataError;

/// SplitMix64: tiny, fast, and fully specified.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (unbiased, by rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// One fold of a k-fold split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// Training indices, ascending.
    pub train: Vec<usize>,
    /// Held-out indices, ascending.
    pub test: Vec<usize>,
}

/// Indices of `subset` grouped by label, each group shuffled with `seed`.
fn shuffled_by_class(
    labels: &[usize],
    subset: &[usize],
    seed: u64,
) -> Result<BTreeMap<usize, Vec<usize>>, DataError> {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in subset {
        let label = *labels.get(i).ok_or(DataError::Split {
            message: format!("index {i} is out of range for {} labels", labels.len()),
        })?;
        by_class.entry(label).or_default().push(i);
    }
    let mut rng = Rng::new(seed);
    for members in by_class.values_mut() {
        rng.shuffle(members);
    }
    Ok(by_class)
}

/// Stratified train/test split of `subset`: each class contributes
/// `round(n_c * test_fraction)` items to test, but always keeps at least one in train.
/// A class with a single example goes to train (it cannot be in both), so the test
/// split may lack rare classes; that is reported through `tracing`.
pub fn stratified_split(
    labels: &[usize],
    subset: &[usize],
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::Split {
            message: format!("test fraction must be in (0, 1), got {test_fraction}"),
        });
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, members) in shuffled_by_class(labels, subset, seed)? {
        let n = members.len();
        let mut k = (n as f64 * test_fraction).round() as usize;
        k = k.min(n - 1);
        if n == 1 {
            tracing::warn!("class {label} has one example; it goes to train only");
        }
        test.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    if test.is_empty() {
        return Err(DataError::Split {
            message: "the test split would be empty".into(),
        });
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

/// Stratified k-fold split of `subset`. Each class's examples are dealt round-robin to
/// the folds from a rotating start, so fold sizes differ by at most one per class.
/// A class with fewer than `k` examples is missing from some test folds; that is
/// allowed (as in scikit-learn) and reported through `tracing`.
pub fn stratified_kfold(
    labels: &[usize],
    subset: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<Fold>, DataError> {
    if k < 2 {
        return Err(DataError::Split {
            message: format!("k-fold needs k >= 2, got {k}"),
        });
    }
    if subset.len() < k {
        return Err(DataError::Split {
            message: format!("{k}-fold needs at least {k} items, got {}", subset.len()),
        });
    }
    let mut tests: Vec<Vec<usize>> = vec![Vec::new(); k];
    let mut start = 0;
    for (label, members) in shuffled_by_class(labels, subset, seed)? {
        if members.len() < k {
            tracing::warn!(
                "class {label} has {} examples, fewer than {k} folds",
                members.len()
            );
        }
        for (j, &i) in members.iter().enumerate() {
            tests[(start + j) % k].push(i);
        }
        start = (start + members.len()) % k;
    }
    let mut all: Vec<usize> = subset.to_vec();
    all.sort_unstable();
    Ok(tests
        .into_iter()
        .map(|mut test| {
            test.sort_unstable();
            let train = all
                .iter()
                .copied()
                .filter(|i| test.binary_search(i).is_err())
                .collect();
            Fold { train, test }
        })
        .collect())
}

/// Up to `k` random examples of each class of `subset` (all of a class that has fewer),
/// ascending. For few-shot learning curves.
pub fn per_class_subsample(
    labels: &[usize],
    subset: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    if k == 0 {
        return Err(DataError::Split {
            message: "k examples per class needs k >= 1".into(),
        });
    }
    let mut out: Vec<usize> = shuffled_by_class(labels, subset, seed)?
        .into_values()
        .flat_map(|m| m.into_iter().take(k))
        .collect();
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
