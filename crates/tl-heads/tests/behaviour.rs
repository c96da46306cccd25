//! Bad input, persistence, determinism, class weights and grid search, on synthetic data.

use ndarray::{Array2, array};
use tl_heads::{
    CentroidParams, ClassWeight, Classifier, FeatureMeta, HeadConfig, HeadError, HeadSpec,
    KnnParams, LogisticParams, Metric, Pca, Preprocess, RidgeParams, SvmParams, Weighting,
    grid_search,
};

/// `n` points on a line with labels from `label(i)`: one feature, the position.
fn line(n: usize, label: impl Fn(usize) -> usize) -> (Array2<f32>, Vec<usize>) {
    let x = Array2::from_shape_fn((n, 1), |(i, _)| i as f32);
    (x, (0..n).map(label).collect())
}

/// Three Gaussian-ish blobs from a fixed LCG, `per` rows each, in `d` dimensions.
fn blobs(per: usize, d: usize, spread: f32, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut x = Array2::zeros((3 * per, d));
    let mut y = Vec::new();
    for c in 0..3 {
        for r in 0..per {
            let i = c * per + r;
            for j in 0..d {
                let centre = if j % 3 == c { 2.0 } else { 0.0 };
                x[[i, j]] = centre + spread * (next() + next() + next());
            }
            y.push(c);
        }
    }
    (x, y)
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("class{i}")).collect()
}

fn all_heads() -> Vec<HeadSpec> {
    vec![
        HeadSpec::Logistic(LogisticParams::default()),
        HeadSpec::LinearSvm(SvmParams::default()),
        HeadSpec::Knn(KnnParams::default()),
        HeadSpec::Centroid(CentroidParams::default()),
        HeadSpec::Ridge(RidgeParams::default()),
    ]
}

fn err(r: Result<Classifier, HeadError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_head_learns_separable_blobs() {
    let (x, y) = blobs(40, 6, 0.5, 1);
    let (xt, yt) = blobs(20, 6, 0.5, 2);
    for spec in all_heads() {
        let kind = spec.kind();
        let model = HeadConfig::new(spec)
            .fit(x.view(), &y, &names(3), None)
            .unwrap();
        let pred = model.predict(xt.view()).unwrap();
        let acc = pred.iter().zip(&yt).filter(|(a, b)| a == b).count() as f64 / yt.len() as f64;
        assert!(acc > 0.95, "{kind}: accuracy {acc}");
        let p = model.predict_proba(xt.view()).unwrap();
        for row in p.outer_iter() {
            assert!((row.sum() - 1.0).abs() < 1e-9, "{kind}: {row}");
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // Predictions are the argmax of the scores and (for these heads) of the probabilities.
        let s = model.decision_function(xt.view()).unwrap();
        assert_eq!(s.dim(), (60, 3));
    }
}

#[test]
fn one_class_only_is_an_error() {
    let x = array![[1.0f32, 2.0], [2.0, 1.0]];
    for spec in all_heads() {
        let e = err(HeadConfig::new(spec).fit(x.view(), &[1, 1], &names(2), None));
        assert!(e.contains("same label `class1`"), "{e}");
    }
}

#[test]
fn non_finite_features_name_the_row() {
    let (mut x, y) = blobs(5, 3, 0.5, 3);
    x[[7, 2]] = f32::NAN;
    let e = err(
        HeadConfig::new(HeadSpec::Ridge(RidgeParams::default())).fit(x.view(), &y, &names(3), None),
    );
    assert!(e.contains("row 7, column 2") && e.contains("NaN"), "{e}");
    x[[7, 2]] = f32::INFINITY;
    let e = err(
        HeadConfig::new(HeadSpec::Logistic(LogisticParams::default())).fit(
            x.view(),
            &y,
            &names(3),
            None,
        ),
    );
    assert!(e.contains("row 7, column 2") && e.contains("inf"), "{e}");
    // And at predict time.
    let (x, y) = blobs(5, 3, 0.5, 3);
    let model = HeadConfig::new(HeadSpec::Knn(KnnParams::default()))
        .fit(x.view(), &y, &names(3), None)
        .unwrap();
    let bad = array![[0.0f32, 1.0, 2.0], [0.0, f32::NEG_INFINITY, 0.0]];
    let e = model.predict(bad.view()).unwrap_err().to_string();
    assert!(e.contains("input row 1, column 1"), "{e}");
}

#[test]
fn empty_and_mismatched_input() {
    let x = Array2::<f32>::zeros((0, 4));
    let e = err(
        HeadConfig::new(HeadSpec::Centroid(CentroidParams::default())).fit(
            x.view(),
            &[],
            &names(2),
            None,
        ),
    );
    assert!(e.contains("no training rows"), "{e}");
    let x = array![[1.0f32], [2.0], [3.0]];
    let e = err(
        HeadConfig::new(HeadSpec::Ridge(RidgeParams::default())).fit(
            x.view(),
            &[0, 1],
            &names(2),
            None,
        ),
    );
    assert!(e.contains("3 feature rows but 2 labels"), "{e}");
    let e = err(
        HeadConfig::new(HeadSpec::Ridge(RidgeParams::default())).fit(
            x.view(),
            &[0, 1, 5],
            &names(2),
            None,
        ),
    );
    assert!(e.contains("label row 2: class index 5"), "{e}");
}

#[test]
fn zero_variance_and_more_features_than_samples() {
    // 8 rows, 50 features, most of them constant.
    let (mut x, y) = blobs(3, 50, 0.3, 4);
    for j in 10..50 {
        x.column_mut(j).fill(7.0);
    }
    for spec in all_heads() {
        let kind = spec.kind();
        let mut config = HeadConfig::new(spec);
        config.preprocess = Preprocess {
            standardize: true,
            ..Default::default()
        };
        let model = config.fit(x.view(), &y, &names(3), None).unwrap();
        let p = model.predict_proba(x.view()).unwrap();
        assert!(p.iter().all(|v| v.is_finite()), "{kind}: {p}");
        let pred = model.predict(x.view()).unwrap();
        let acc = pred.iter().zip(&y).filter(|(a, b)| a == b).count();
        assert!(acc >= 8, "{kind} fits its own 9 training rows: {acc}");
    }
    // PCA cannot keep more components than min(n, d).
    let mut c = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    c.preprocess.pca = Some(Pca::Components(20));
    let e = err(c.fit(x.view(), &y, &names(3), None));
    assert!(e.contains("at most 9"), "{e}");
    c.preprocess.pca = Some(Pca::Variance(0.9));
    let m = c.fit(x.view(), &y, &names(3), None).unwrap();
    let kept = m.preprocess.pca.as_ref().unwrap().components.ncols();
    assert!((1..=9).contains(&kept), "{kept}");
}

#[test]
fn k_larger_than_training_set() {
    let (x, y) = blobs(2, 3, 0.5, 5);
    let e = err(HeadConfig::new(HeadSpec::Knn(KnnParams {
        k: 7,
        ..Default::default()
    }))
    .fit(x.view(), &y, &names(3), None));
    assert!(e.contains("k = 7") && e.contains("only 6 rows"), "{e}");
}

#[test]
fn invalid_hyperparameters() {
    let (x, y) = blobs(3, 3, 0.5, 5);
    let bad = [
        (
            HeadSpec::Logistic(LogisticParams {
                c: 0.0,
                ..Default::default()
            }),
            "c must be a positive",
        ),
        (
            HeadSpec::LinearSvm(SvmParams {
                c: f64::NAN,
                ..Default::default()
            }),
            "c must be a positive",
        ),
        (
            HeadSpec::Knn(KnnParams {
                k: 0,
                ..Default::default()
            }),
            "k must be at least 1",
        ),
        (
            HeadSpec::Ridge(RidgeParams { alpha: -1.0 }),
            "alpha must be a non-negative",
        ),
    ];
    for (spec, want) in bad {
        let e = err(HeadConfig::new(spec).fit(x.view(), &y, &names(3), None));
        assert!(e.contains(want), "{e}");
    }
    let mut c = HeadConfig::new(HeadSpec::Ridge(RidgeParams::default()));
    c.class_weight = ClassWeight::Given([("nope".to_string(), 2.0)].into());
    let e = err(c.fit(x.view(), &y, &names(3), None));
    assert!(e.contains("`nope`, which is not a label"), "{e}");
    assert!(
        HeadSpec::from_kind("forest")
            .unwrap_err()
            .to_string()
            .contains("unknown head `forest`")
    );
}

#[test]
fn class_absent_from_training_is_never_predicted() {
    let (x, y) = blobs(10, 6, 0.5, 6);
    // Keep classes 0 and 2 only, but the task has 3 labels.
    let idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] != 1).collect();
    let xs = x.select(ndarray::Axis(0), &idx);
    let ys: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
    for spec in all_heads() {
        let kind = spec.kind();
        let model = HeadConfig::new(spec)
            .fit(xs.view(), &ys, &names(3), None)
            .unwrap();
        assert_eq!(model.classes, [0, 2]);
        let p = model.predict_proba(x.view()).unwrap();
        assert!(p.column(1).iter().all(|&v| v == 0.0), "{kind}");
        assert!(
            model.predict(x.view()).unwrap().iter().all(|&c| c != 1),
            "{kind}"
        );
    }
}

#[test]
fn unseen_string_labels_name_the_row() {
    let (x, y) = blobs(5, 3, 0.5, 7);
    let model = HeadConfig::new(HeadSpec::Centroid(CentroidParams::default()))
        .fit(x.view(), &y, &names(3), None)
        .unwrap();
    assert_eq!(model.encode_labels(&["class2", "class0"]).unwrap(), [2, 0]);
    let e = model
        .encode_labels(&["class0", "class9"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1: label `class9`"), "{e}");
}

#[test]
fn save_load_round_trip_and_compatibility() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = blobs(20, 5, 0.8, 8);
    for spec in all_heads() {
        let kind = spec.kind();
        let mut config = HeadConfig::new(spec);
        config.preprocess = Preprocess {
            l2_normalize: true,
            standardize: true,
            pca: Some(Pca::Components(4)),
        };
        let model = config.fit(x.view(), &y, &names(3), Some("abc123")).unwrap();
        let path = dir.path().join(format!("{kind}.json"));
        model.save(&path).unwrap();
        let back = Classifier::load(&path).unwrap();
        assert_eq!(back, model, "{kind}");
        assert_eq!(
            back.predict_proba(x.view()).unwrap(),
            model.predict_proba(x.view()).unwrap()
        );
        back.ensure_compatible(&FeatureMeta {
            dim: 5,
            fingerprint: Some("abc123".into()),
        })
        .unwrap();
        let e = back
            .ensure_compatible(&FeatureMeta {
                dim: 5,
                fingerprint: Some("fff".into()),
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("fingerprint fff") && e.contains("abc123"), "{e}");
        let e = back
            .ensure_compatible(&FeatureMeta {
                dim: 384,
                fingerprint: Some("abc123".into()),
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("384 columns") && e.contains("trained on 5"),
            "{e}"
        );
        let e = back
            .predict(Array2::<f32>::zeros((2, 7)).view())
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 columns"), "{e}");
    }
    // Damaged and foreign files.
    let path = dir.path().join("knn.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let e = Classifier::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("knn.json") && e.contains("not a readable classifier"),
        "{e}"
    );
    std::fs::write(
        &path,
        text.replace("\"format_version\":1", "\"format_version\":99"),
    )
    .unwrap();
    let e = Classifier::load(&path).unwrap_err().to_string();
    assert!(e.contains("format version 99"), "{e}");
    let e = Classifier::load(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
}

#[test]
fn same_data_and_seed_give_the_same_bytes() {
    let (x, y) = blobs(30, 8, 1.0, 9);
    for spec in all_heads() {
        let mut config = HeadConfig::new(spec);
        config.seed = 42;
        config.preprocess.standardize = true;
        let a = config.fit(x.view(), &y, &names(3), None).unwrap().to_json();
        let b = config.fit(x.view(), &y, &names(3), None).unwrap().to_json();
        assert_eq!(a, b);
    }
}

#[test]
fn balanced_class_weights_help_the_minority_class() {
    // Overlapping blobs, class 2 rare: 200 / 200 / 12.
    let (x, y) = blobs(200, 6, 1.6, 10);
    let keep: Vec<usize> = (0..y.len())
        .filter(|&i| y[i] != 2 || i % 200 < 12)
        .collect();
    let xs = x.select(ndarray::Axis(0), &keep);
    let ys: Vec<usize> = keep.iter().map(|&i| y[i]).collect();
    let (xt, yt) = blobs(200, 6, 1.6, 11);
    let recall = |m: &Classifier| {
        let p = m.predict(xt.view()).unwrap();
        let hits = p
            .iter()
            .zip(&yt)
            .filter(|(a, b)| **b == 2 && **a == 2)
            .count();
        hits as f64 / 200.0
    };
    for spec in [
        HeadSpec::Logistic(LogisticParams::default()),
        HeadSpec::LinearSvm(SvmParams::default()),
        HeadSpec::Ridge(RidgeParams::default()),
        HeadSpec::Knn(KnnParams {
            k: 15,
            metric: Metric::Euclidean,
            weighting: Weighting::Uniform,
        }),
    ] {
        let kind = spec.kind();
        let mut config = HeadConfig::new(spec);
        let plain = recall(&config.fit(xs.view(), &ys, &names(3), None).unwrap());
        config.class_weight = ClassWeight::Balanced;
        let balanced = recall(&config.fit(xs.view(), &ys, &names(3), None).unwrap());
        eprintln!("{kind}: minority recall {plain:.3} -> {balanced:.3}");
        assert!(balanced >= plain + 0.02, "{kind}: {plain} -> {balanced}");
    }
}

#[test]
fn grid_search_picks_the_best_and_is_reproducible() {
    let (x, y) = blobs(30, 10, 1.5, 12);
    let config = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let a = grid_search(&config, &[], x.view(), &y, &names(3), 5, 7).unwrap();
    let b = grid_search(&config, &[], x.view(), &y, &names(3), 5, 7).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.param, "c");
    assert_eq!(a.rows.len(), 6);
    assert!(a.rows.iter().all(|r| r.fold_accuracy.len() == 5));
    let best = a.rows.iter().map(|r| r.mean).fold(0.0, f64::max);
    assert_eq!(
        a.rows
            .iter()
            .find(|r| r.value == a.best_value)
            .unwrap()
            .mean,
        best
    );
    assert_eq!(a.best.head.main_param(), Some(("c", a.best_value)));
    // kNN searches k; a fold can lack a class entirely (5 rows of class 2 in 5 folds).
    let keep: Vec<usize> = (0..y.len()).filter(|&i| y[i] != 2 || i % 30 < 4).collect();
    let xs = x.select(ndarray::Axis(0), &keep);
    let ys: Vec<usize> = keep.iter().map(|&i| y[i]).collect();
    let knn = HeadConfig::new(HeadSpec::Knn(KnnParams::default()));
    let g = grid_search(&knn, &[1.0, 3.0, 5.0], xs.view(), &ys, &names(3), 5, 1).unwrap();
    assert_eq!(g.param, "k");
    let e = grid_search(
        &HeadConfig::new(HeadSpec::Centroid(CentroidParams::default())),
        &[],
        x.view(),
        &y,
        &names(3),
        5,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no hyperparameter"), "{e}");
}

#[test]
fn row_weights_act_like_dropping_or_repeating_rows() {
    let (x, y) = blobs(30, 6, 1.2, 9);
    let (xq, _) = blobs(10, 6, 1.2, 10);
    let n = y.len();
    let tight = LogisticParams {
        tol: 1e-10,
        max_iter: 10_000,
        ..LogisticParams::default()
    };
    for spec in [
        HeadSpec::Logistic(tight),
        HeadSpec::Ridge(RidgeParams::default()),
    ] {
        let head = HeadConfig::new(spec.clone());
        // Largest decision-function gap between a weighted fit on all rows and a plain fit on
        // `rows` (indices into x, repeats allowed).
        let gap = |w: &[f64], rows: &[usize]| {
            let a = head
                .fit_weighted(x.view(), &y, Some(w), &names(3), None)
                .unwrap()
                .decision_function(xq.view())
                .unwrap();
            let yr: Vec<usize> = rows.iter().map(|&i| y[i]).collect();
            let b = head
                .fit(
                    x.select(ndarray::Axis(0), rows).view(),
                    &yr,
                    &names(3),
                    None,
                )
                .unwrap()
                .decision_function(xq.view())
                .unwrap();
            (&a - &b).iter().fold(0.0f64, |m, v| m.max(v.abs()))
        };
        // Zero weight on every third row = fitting without those rows.
        let w: Vec<f64> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let kept: Vec<usize> = (0..n).filter(|i| i % 3 != 0).collect();
        let diff = gap(&w, &kept);
        assert!(
            diff < 1e-4,
            "{}: zero weights vs dropped rows differ by {diff}",
            spec.kind()
        );
        // Weight 2 on every row of class 0 = each of those rows twice (scikit-learn's
        // objective sums weighted losses).
        let w: Vec<f64> = y.iter().map(|&c| if c == 0 { 2.0 } else { 1.0 }).collect();
        let twice: Vec<usize> = (0..n).chain((0..n).filter(|&i| y[i] == 0)).collect();
        let diff = gap(&w, &twice);
        assert!(
            diff < 1e-4,
            "{}: weight 2 vs repeated rows differ by {diff}",
            spec.kind()
        );
    }
    // Bad weights name the row; heads without a loss refuse them.
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let mut w = vec![1.0; n];
    w[4] = -1.0;
    let e = err(head.fit_weighted(x.view(), &y, Some(&w), &names(3), None));
    assert!(e.contains("sample weight row 4"), "{e}");
    w[4] = f64::NAN;
    assert!(err(head.fit_weighted(x.view(), &y, Some(&w), &names(3), None)).contains("row 4"));
    let e = err(head.fit_weighted(x.view(), &y, Some(&[1.0; 3]), &names(3), None));
    assert!(e.contains("3 sample weights"), "{e}");
    let e = err(head.fit_weighted(x.view(), &y, Some(&vec![0.0; n]), &names(3), None));
    assert!(e.contains("all sample weights are zero"), "{e}");
    for spec in [
        HeadSpec::Knn(KnnParams::default()),
        HeadSpec::Centroid(CentroidParams::default()),
    ] {
        let e = err(HeadConfig::new(spec).fit_weighted(
            x.view(),
            &y,
            Some(&vec![1.0; n]),
            &names(3),
            None,
        ));
        assert!(e.contains("does not take sample weights"), "{e}");
    }
}

/// Damaged classifier files as data: (head, JSON pointer, new value, what the error names).
/// Each used to panic in `predict`, print NaN probabilities or predict one class silently.
#[test]
fn damaged_classifier_files_are_refused_on_load() {
    use serde_json::{Value, json};
    let (x, y) = blobs(10, 6, 0.3, 3);
    let standardised = |spec: HeadSpec| HeadConfig {
        preprocess: Preprocess {
            standardize: true,
            ..Preprocess::default()
        },
        ..HeadConfig::new(spec)
    };
    let cases: Vec<(HeadConfig, &str, Value, &str)> = vec![
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/head/linear/w/dim",
            json!([3, 6]),
            "head.linear: weights (3, 6)",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/head/linear/b",
            json!({"v": 1, "dim": [2], "data": [0.0, 0.0]}),
            "head.linear: weights (6, 3) and 2 intercepts",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/head/linear/w/data/0",
            json!(1e308),
            "magnitude at most",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/preprocess/scale/data",
            json!([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            "preprocess.scale: value 0 is 0",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/preprocess/mean",
            json!({"v": 1, "dim": [2], "data": [0.0, 0.0]}),
            "preprocess.mean: 2 values, expected 6",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/label_names",
            json!(["a"]),
            "label_names: needs at least 2",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/label_names",
            json!(["a", "", "c"]),
            "label_names[1]: empty",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/label_names",
            json!(["a", "b", "a"]),
            "appears twice",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/classes",
            json!([0, 1, 7]),
            "classes: index 7",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/classes",
            json!([1, 0, 2]),
            "ascending",
        ),
        (
            standardised(HeadSpec::Logistic(LogisticParams::default())),
            "/features/dim",
            json!(0),
            "features.dim",
        ),
        (
            standardised(HeadSpec::LinearSvm(SvmParams::default())),
            "/head/platt",
            json!([[1.0, 0.0]]),
            "head.platt",
        ),
        (
            HeadConfig::new(HeadSpec::Knn(KnnParams::default())),
            "/head/labels/0",
            json!(9),
            "head.labels: class 9",
        ),
        (
            HeadConfig::new(HeadSpec::Knn(KnnParams::default())),
            "/head/params/k",
            json!(0),
            "k",
        ),
        (
            HeadConfig::new(HeadSpec::Centroid(CentroidParams::default())),
            "/head/variance",
            json!(0.0),
            "head.variance",
        ),
        (
            HeadConfig::new(HeadSpec::Centroid(CentroidParams::default())),
            "/head/centroids",
            json!({"v": 1, "dim": [3, 2], "data": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}),
            "head.centroids: shape (3, 2)",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (config, pointer, value, want)) in cases.into_iter().enumerate() {
        let model = config.fit(x.view(), &y, &names(3), None).unwrap();
        let mut v: Value = serde_json::from_str(&model.to_json()).unwrap();
        let shown = v.to_string();
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("case {i}: no {pointer} in {shown}")) = value;
        let path = dir.path().join(format!("c{i}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Classifier::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains(&format!("c{i}.json")),
            "case {i} ({pointer}): {e}"
        );
    }
}

#[test]
fn a_fit_stopped_at_its_iteration_limit_says_so_and_the_file_keeps_it() {
    let (x, y) = blobs(20, 6, 0.8, 5);
    let capped = HeadConfig::new(HeadSpec::Logistic(LogisticParams {
        max_iter: 1,
        ..LogisticParams::default()
    }));
    let model = capped.fit(x.view(), &y, &names(3), None).unwrap();
    assert_eq!(model.warnings.len(), 1);
    assert!(
        model.warnings[0].contains("did not converge"),
        "{:?}",
        model.warnings
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    model.save(&path).unwrap();
    assert_eq!(Classifier::load(&path).unwrap().warnings, model.warnings);
    // A converged fit has none, and its file has no such field (the format is unchanged).
    let ok = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()))
        .fit(x.view(), &y, &names(3), None)
        .unwrap();
    assert!(ok.warnings.is_empty());
    assert!(!ok.to_json().contains("warnings"));
}

#[test]
fn every_head_works_on_a_single_feature() {
    // One column makes the kNN distance product an outer product (column-major in ndarray),
    // which once panicked.
    let (x, y) = line(40, |i| usize::from(i >= 20));
    for spec in all_heads() {
        for metric in [Metric::Euclidean, Metric::Cosine] {
            let spec = match &spec {
                HeadSpec::Knn(p) => HeadSpec::Knn(KnnParams {
                    metric,
                    ..p.clone()
                }),
                s => s.clone(),
            };
            let model = HeadConfig::new(spec.clone())
                .fit(x.view(), &y, &names(2), None)
                .unwrap();
            let pred = model.predict(array![[2.0f32], [37.0]].view()).unwrap();
            if metric == Metric::Euclidean {
                assert_eq!(pred, vec![0, 1], "{spec:?}");
            }
        }
    }
}

#[test]
fn grid_search_extends_past_the_end_the_best_value_lies_on() {
    let euclid = HeadConfig::new(HeadSpec::Knn(KnnParams {
        metric: Metric::Euclidean,
        ..KnnParams::default()
    }));
    // Runs of six 0s and three 1s: from k = 5 on the 0s outvote every 1, so k = 3 beats
    // k = 5 and the grid [5, 3] must grow downwards, to k = 1, where k cannot go lower.
    let (x, y) = line(360, |i| usize::from(i % 9 >= 6));
    let g = grid_search(&euclid, &[5.0, 3.0], x.view(), &y, &names(2), 5, 3).unwrap();
    assert_eq!(g.extended, vec![1.0], "{g:?}");
    assert!(g.best_value <= 3.0, "{g:?}");
    assert_eq!(g.edge, None, "k = 1 is k's own bound, not a grid edge");
    let values: Vec<f64> = g.rows.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![1.0, 3.0, 5.0], "rows in increasing order");

    // Labels from a coin that agrees with the side of the line 70% of the time: more
    // neighbours average the noise away, so the largest k of [1, 3] wins and the grid grows
    // upwards; two extensions at most, then the edge is reported if k is still at it.
    let mut state = 11u64;
    let mut coin = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let flips: Vec<bool> = (0..3000).map(|_| coin() < 0.3).collect();
    let (x, y) = line(3000, |i| usize::from((i >= 1500) != flips[i]));
    let g = grid_search(&euclid, &[1.0, 3.0], x.view(), &y, &names(2), 5, 3).unwrap();
    assert_eq!(g.extended, vec![5.0, 7.0], "{g:?}");
    match &g.edge {
        Some(e) => {
            assert_eq!(g.best_value, 7.0);
            assert!(e.contains("k = 7 is the largest value searched"), "{e}");
        }
        None => assert!(g.best_value < 7.0, "{g:?}"),
    }

    // A plateau (every C predicts the one class there is evidence for) is not an edge.
    let x = Array2::from_elem((100, 1), 1.0f32);
    let y: Vec<usize> = (0..100).map(|i| usize::from(i % 10 == 0)).collect();
    let logistic = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let g = grid_search(&logistic, &[0.01, 0.1], x.view(), &y, &names(2), 5, 3).unwrap();
    assert!(g.rows.iter().all(|r| r.mean == g.rows[0].mean), "{g:?}");
    assert_eq!((g.best_value, g.extended.len(), &g.edge), (0.01, 0, &None));

    // Non-finite grid values are refused by name.
    let e = grid_search(&logistic, &[1.0, f64::NAN], x.view(), &y, &names(2), 5, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c: grid value NaN"), "{e}");
}
