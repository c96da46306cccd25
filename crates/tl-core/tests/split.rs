//! Splits are deterministic (pinned indices), stratified, disjoint and complete.

use tl_core::{
    Rng,
    split::{per_class_subsample, stratified_kfold, stratified_sample, stratified_split},
};

fn labels() -> Vec<usize> {
    // 3 classes of 6, 4 and 2 examples, interleaved.
    vec![0, 1, 0, 2, 0, 1, 0, 1, 0, 2, 0, 1]
}

#[test]
fn same_seed_same_indices_pinned() {
    let l = labels();
    let all: Vec<usize> = (0..l.len()).collect();
    let (train, test) = stratified_split(&l, &all, 0.25, 42).unwrap();
    assert_eq!(test, PINNED_TEST);
    assert_eq!(train.len() + test.len(), l.len());
    let folds = stratified_kfold(&l, &all, 3, 7).unwrap();
    let tests: Vec<Vec<usize>> = folds.iter().map(|f| f.test.clone()).collect();
    assert_eq!(tests, PINNED_FOLDS);
    assert_eq!(
        per_class_subsample(&l, &all, 1, 3).unwrap(),
        PINNED_ONE_SHOT
    );
    let mut r = Rng::new(123);
    let v: Vec<u64> = (0..3).map(|_| r.below(10)).collect();
    assert_eq!(v, PINNED_BELOW);
}

const PINNED_TEST: [usize; 4] = [3, 6, 8, 11];
const PINNED_FOLDS: [[usize; 4]; 3] = [[2, 4, 5, 7], [1, 3, 8, 10], [0, 6, 9, 11]];
const PINNED_ONE_SHOT: [usize; 3] = [5, 9, 10];
const PINNED_BELOW: [u64; 3] = [5, 8, 0];

#[test]
fn split_is_stratified_and_disjoint() {
    let l: Vec<usize> = (0..1000)
        .map(|i| if i % 10 < 7 { 0 } else { 1 + i % 2 })
        .collect();
    let all: Vec<usize> = (0..l.len()).collect();
    let (train, test) = stratified_split(&l, &all, 0.3, 1).unwrap();
    assert_eq!(train.len() + test.len(), 1000);
    assert!(train.iter().all(|i| test.binary_search(i).is_err()));
    let frac =
        |idx: &[usize], c| idx.iter().filter(|&&i| l[i] == c).count() as f64 / idx.len() as f64;
    for c in 0..3 {
        assert!((frac(&train, c) - frac(&test, c)).abs() < 0.01, "class {c}");
    }
    assert_ne!(
        stratified_split(&l, &all, 0.3, 2).unwrap().1,
        test,
        "another seed, another split"
    );
}

#[test]
fn kfold_covers_every_item_once() {
    let l = labels();
    let all: Vec<usize> = (0..l.len()).collect();
    let folds = stratified_kfold(&l, &all, 4, 0).unwrap();
    let mut seen: Vec<usize> = folds.iter().flat_map(|f| f.test.iter().copied()).collect();
    seen.sort();
    assert_eq!(seen, all);
    for f in &folds {
        assert_eq!(f.train.len() + f.test.len(), l.len());
        assert!((2..=4).contains(&f.test.len()));
    }
}

#[test]
fn singleton_class_goes_to_train() {
    let l = vec![0, 0, 0, 0, 1, 1, 1, 1, 2];
    let all: Vec<usize> = (0..l.len()).collect();
    let (train, test) = stratified_split(&l, &all, 0.5, 0).unwrap();
    assert!(
        train.contains(&8),
        "the only example of class 2 stays in train"
    );
    assert!(!test.contains(&8));
}

#[test]
fn bad_split_requests() {
    let l = labels();
    let all: Vec<usize> = (0..l.len()).collect();
    for f in [0.0, 1.0, -0.5, f64::NAN] {
        let e = stratified_split(&l, &all, f, 0).unwrap_err().to_string();
        assert!(e.contains("test fraction"), "{e}");
    }
    assert!(
        stratified_kfold(&l, &all, 1, 0)
            .unwrap_err()
            .to_string()
            .contains("k >= 2")
    );
    assert!(
        stratified_kfold(&l, &all, 13, 0)
            .unwrap_err()
            .to_string()
            .contains("at least 13 items")
    );
    assert!(per_class_subsample(&l, &all, 0, 0).is_err());
    assert!(
        stratified_split(&l, &[99], 0.5, 0)
            .unwrap_err()
            .to_string()
            .contains("out of range")
    );
}

#[test]
fn k_per_class_takes_at_most_k_of_each() {
    let l = labels();
    let all: Vec<usize> = (0..l.len()).collect();
    let s = per_class_subsample(&l, &all, 3, 5).unwrap();
    let counts: Vec<usize> = (0..3)
        .map(|c| s.iter().filter(|&&i| l[i] == c).count())
        .collect();
    assert_eq!(counts, [3, 3, 2]);
    // Growing k keeps the smaller subsample inside the larger one (nested curves).
    let s4 = per_class_subsample(&l, &all, 4, 5).unwrap();
    assert!(s.iter().all(|i| s4.contains(i)));
}

#[test]
fn rare_classes_are_those_below_the_fold_count() {
    let l = labels();
    let all: Vec<usize> = (0..l.len()).collect();
    assert_eq!(
        tl_core::split::rare_classes(&l, &all, 5),
        vec![(1, 4), (2, 2)]
    );
    assert_eq!(tl_core::split::rare_classes(&l, &all, 2), vec![]);
    // Out-of-range rows are not counted (the split itself reports them).
    assert_eq!(tl_core::split::rare_classes(&l, &[0, 99], 2), vec![(0, 1)]);
}

#[test]
fn a_sample_is_the_test_side_of_a_split_and_keeps_class_shares() {
    let l: Vec<usize> = (0..1000)
        .map(|i| if i % 10 < 7 { 0 } else { 1 + i % 2 })
        .collect();
    let all: Vec<usize> = (0..l.len()).collect();
    let sample = stratified_sample(&l, &all, 200, 5).unwrap();
    assert_eq!(sample, stratified_split(&l, &all, 0.2, 5).unwrap().1);
    assert_eq!(sample.len(), 200);
    assert!(sample.windows(2).all(|w| w[0] < w[1]), "ascending");
    let count = |c| sample.iter().filter(|&&i| l[i] == c).count();
    assert_eq!([count(0), count(1), count(2)], [140, 20, 40]);
    // Not the first rows: a cap of an ordered file (all of class 0 first) keeps every class.
    let sorted: Vec<usize> = {
        let mut v = all.clone();
        v.sort_by_key(|&i| l[i]);
        v
    };
    let capped = stratified_sample(&l, &sorted[..], 10, 0).unwrap();
    assert!(
        (0..3).all(|c| capped.iter().any(|&i| l[i] == c)),
        "{capped:?}"
    );
    // A cap at or above the size keeps everything, in order; 0 is refused.
    assert_eq!(stratified_sample(&l, &[9, 3, 5], 3, 0).unwrap(), [3, 5, 9]);
    assert_eq!(stratified_sample(&l, &all, 5000, 0).unwrap(), all);
    let e = stratified_sample(&l, &all, 0, 0).unwrap_err().to_string();
    assert!(e.contains("0 items"), "{e}");
}
