//! Sparse rows (a bag of words) against the same matrix dense: every head, preprocessing step
//! and the grid search must give the same classifier either way; what cannot be done sparse
//! is refused with the reason, never by filling memory.

use ndarray::Array2;
use tl_core::Csr;
use tl_heads::{
    CentroidParams, HeadConfig, HeadSpec, KnnParams, LogisticParams, Matrix, Pca, Preprocess,
    RidgeParams, SvmParams, grid_search, grid_search_with,
};

/// A word-count-like problem: `n` rows over `d` columns, about 6 non-zeros a row, `k`
/// classes, each class preferring its own block of columns. Returns the dense matrix (the
/// reference), the same as [`Csr`], and the labels.
fn bag(n: usize, d: usize, k: usize, seed: u64) -> (Array2<f32>, Csr, Vec<usize>) {
    let mut rng = tl_core::Rng::new(seed);
    let mut x = Array2::<f32>::zeros((n, d));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % k;
        y.push(c);
        for _ in 0..6 {
            // Two words in three from the class's block, the rest anywhere.
            let j = if rng.next_u64() % 3 < 2 {
                (c * d / k) + (rng.next_u64() as usize % (d / k))
            } else {
                rng.next_u64() as usize % d
            };
            x[[i, j]] += 1.0 + (rng.next_u64() % 3) as f32;
        }
    }
    let rows = x.outer_iter().map(|r| {
        r.iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(j, &v)| (j as u32, v))
            .collect::<Vec<_>>()
    });
    let s = Csr::from_rows(d, rows);
    (x, s, y)
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("c{i}")).collect()
}

fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn every_head_gives_the_same_classifier_on_sparse_and_dense_rows() {
    for k in [2, 4] {
        let (x, s, y) = bag(240, 60, k, 3);
        let (xt, st, _) = bag(80, 60, k, 4);
        let heads = [
            HeadSpec::Logistic(LogisticParams::default()),
            HeadSpec::LinearSvm(SvmParams::default()),
            HeadSpec::Knn(KnnParams::default()),
            HeadSpec::Centroid(CentroidParams::default()),
            HeadSpec::Ridge(RidgeParams::default()),
        ];
        for head in heads {
            for preprocess in [
                Preprocess::default(),
                Preprocess {
                    l2_normalize: true,
                    ..Default::default()
                },
                Preprocess {
                    standardize: true,
                    ..Default::default()
                },
                Preprocess {
                    pca: Some(Pca::Components(5)),
                    ..Default::default()
                },
            ] {
                let config = HeadConfig {
                    preprocess: preprocess.clone(),
                    ..HeadConfig::new(head.clone())
                };
                let what = format!("{} k={k} {preprocess:?}", head.kind());
                let dense = config.fit(x.view(), &y, &names(k), None).unwrap();
                let sparse = config.fit(&s, &y, &names(k), None).unwrap();
                let pd = dense.predict_proba(xt.view()).unwrap();
                let ps = sparse.predict_proba(&st).unwrap();
                // Sums in another order: the solvers stop at slightly different points.
                let diff = max_diff(&pd, &ps);
                assert!(diff < 1e-6, "{what}: probabilities differ by {diff}");
                assert_eq!(
                    dense.predict(xt.view()).unwrap(),
                    sparse.predict(&st).unwrap(),
                    "{what}"
                );
                // A classifier fitted on sparse rows scores dense ones alike, and back.
                let cross = max_diff(&sparse.predict_proba(xt.view()).unwrap(), &ps);
                assert!(cross < 1e-9, "{what}: {cross}");
                let back = max_diff(&dense.predict_proba(&st).unwrap(), &pd);
                assert!(back < 1e-9, "{what}: {back}");
            }
        }
    }
}

#[test]
fn grid_search_on_sparse_rows_chooses_as_on_dense_ones() {
    let (x, s, y) = bag(300, 80, 3, 9);
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let values = [0.01, 0.1, 1.0, 10.0];
    let dense = grid_search(&config, &values, x.view(), &y, &names(3), 5, 1).unwrap();
    let sparse = grid_search(&config, &values, &s, &y, &names(3), 5, 1).unwrap();
    assert_eq!(dense.best_value, sparse.best_value);
    for (a, b) in dense.rows.iter().zip(&sparse.rows) {
        assert_eq!(a.fold_accuracy, b.fold_accuracy, "c = {}", a.value);
    }
    // A feature builder may hand the search sparse matrices per fold (a TF-IDF refitted on
    // each fold's training rows).
    let built = grid_search_with(&config, &values, &y, &names(3), 5, 1, |tr, te| {
        Ok::<_, tl_heads::HeadError>((
            Matrix::Sparse(s.select_rows(tr)),
            Matrix::Sparse(s.select_rows(te)),
        ))
    })
    .unwrap();
    assert_eq!(built.best_value, sparse.best_value);
}

#[test]
fn a_head_without_a_sparse_path_refuses_a_matrix_too_large_to_expand() {
    // 20 rows x 2^24 columns: 2.7 GB dense, 40 stored entries.
    let d = 1usize << 24;
    let rows = (0..20).map(|i| vec![(((i * 7919) % d) as u32, 1.0f32)]);
    let s = Csr::from_rows(d, rows);
    let y: Vec<usize> = (0..20).map(|i| i % 2).collect();
    // Logistic regression and the SVM never expand it.
    for head in [
        HeadSpec::Logistic(LogisticParams::default()),
        HeadSpec::LinearSvm(SvmParams::default()),
    ] {
        let model = HeadConfig::new(head).fit(&s, &y, &names(2), None).unwrap();
        assert_eq!(model.predict(&s).unwrap().len(), 20);
    }
    for (head, what) in [
        (HeadSpec::Knn(KnnParams::default()), "the knn head"),
        (HeadSpec::Ridge(RidgeParams::default()), "the ridge head"),
        (
            HeadSpec::Centroid(CentroidParams::default()),
            "the centroid head",
        ),
    ] {
        let e = HeadConfig::new(head)
            .fit(&s, &y, &names(2), None)
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains(what) && e.contains("20 x 16777216") && e.contains("2.7 GB"),
            "{e}"
        );
    }
    let standardise = HeadConfig {
        preprocess: Preprocess {
            standardize: true,
            ..Default::default()
        },
        ..HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()))
    };
    let e = standardise.fit(&s, &y, &names(2), None).unwrap_err();
    assert!(e.to_string().contains("standardisation"), "{e}");
}

#[test]
fn bad_sparse_input_names_the_row_and_column() {
    let (_, s, y) = bag(40, 10, 2, 1);
    let mut bad = s.clone();
    let (cols, _) = bad.row(3);
    let col = cols[0];
    bad.row_values_mut(3)[0] = f32::NAN;
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let e = config
        .fit(&bad, &y, &names(2), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("training row 3, column {col}")) && e.contains("NaN"),
        "{e}"
    );
    let model = config.fit(&s, &y, &names(2), None).unwrap();
    let e = model.predict(&bad).unwrap_err().to_string();
    assert!(e.contains("input row 3"), "{e}");
    let wider = Csr::from_rows(11, vec![vec![(10u32, 1.0f32)]]);
    let e = model.predict(&wider).unwrap_err().to_string();
    assert!(
        e.contains("11 columns") && e.contains("trained on 10"),
        "{e}"
    );
    let e = config
        .fit(&s, &y[..39], &names(2), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("40 feature rows but 39 labels"), "{e}");
}
