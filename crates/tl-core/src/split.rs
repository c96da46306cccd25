//! Deterministic, stratified splitting: train/test, k-fold, k-per-class subsamples.
//!
//! Randomness comes from [`Rng`] (SplitMix64) with explicit seeds, not from a crate whose
//! stream may change between versions, so the same seed gives the same indices on every
//! platform and every release (the tests pin them).

use std::collections::BTreeMap;

use crate::Rng;

/// A split that cannot be made: the message says which argument and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot split: {}", self.message)
    }
}

impl std::error::Error for SplitError {}

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
) -> Result<BTreeMap<usize, Vec<usize>>, SplitError> {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in subset {
        let label = *labels.get(i).ok_or(SplitError {
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
/// split may lack rare classes ([`rare_classes`] finds them).
pub fn stratified_split(
    labels: &[usize],
    subset: &[usize],
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), SplitError> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(SplitError {
            message: format!("test fraction must be in (0, 1), got {test_fraction}"),
        });
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for members in shuffled_by_class(labels, subset, seed)?.into_values() {
        let n = members.len();
        let k = ((n as f64 * test_fraction).round() as usize).min(n - 1);
        test.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    if test.is_empty() {
        return Err(SplitError {
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
/// allowed (as in scikit-learn); [`rare_classes`] finds such classes for a warning.
pub fn stratified_kfold(
    labels: &[usize],
    subset: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<Fold>, SplitError> {
    if k < 2 {
        return Err(SplitError {
            message: format!("k-fold needs k >= 2, got {k}"),
        });
    }
    if subset.len() < k {
        return Err(SplitError {
            message: format!("{k}-fold needs at least {k} items, got {}", subset.len()),
        });
    }
    let mut tests: Vec<Vec<usize>> = vec![Vec::new(); k];
    let mut start = 0;
    for members in shuffled_by_class(labels, subset, seed)?.into_values() {
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

/// A stratified random sample of about `n` items of `subset` (each class keeps its share,
/// rounded per class), ascending; all of `subset` when it has at most `n` items. The one
/// meaning of a row cap everywhere (`--limit`, `--train-rows`, an experiment's `subsample` or
/// `limit`): it is the test side of [`stratified_split`] at fraction `n / len`, so equal
/// arguments pick equal rows and features cached by one command are hits for another.
pub fn stratified_sample(
    labels: &[usize],
    subset: &[usize],
    n: usize,
    seed: u64,
) -> Result<Vec<usize>, SplitError> {
    if n == 0 {
        return Err(SplitError {
            message: "a sample of 0 items keeps nothing; ask for at least 1".into(),
        });
    }
    if n >= subset.len() {
        let mut all = subset.to_vec();
        all.sort_unstable();
        return Ok(all);
    }
    let fraction = n as f64 / subset.len() as f64;
    Ok(stratified_split(labels, subset, fraction, seed)?.1)
}

/// Up to `k` random examples of each class of `subset` (all of a class that has fewer),
/// ascending. For few-shot learning curves.
pub fn per_class_subsample(
    labels: &[usize],
    subset: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>, SplitError> {
    if k == 0 {
        return Err(SplitError {
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

/// Classes of `subset` with fewer than `min` examples, as (label, count), ascending by
/// label: the classes a `min`-fold split leaves out of some test folds.
pub fn rare_classes(labels: &[usize], subset: &[usize], min: usize) -> Vec<(usize, usize)> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in subset {
        if let Some(&l) = labels.get(i) {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts.into_iter().filter(|&(_, n)| n < min).collect()
}
