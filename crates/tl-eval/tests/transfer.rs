//! Transferability scores against the NumPy reference (fixture from
//! `tools/reference/transfer_reference.py`, which documents the data), rank correlations, and
//! LogME on real MiniLM features against SOURCES.md's figures.

use ndarray::Array2;
use tl_eval::adapt::{Method, importance_weights, reverse_validation, subspace_alignment};
use tl_eval::transfer::{h_score, kendall_tau, knn_loo_accuracy, leep, logme, spearman};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

mod common;
use common::lcg;

fn data() -> (Array2<f32>, Vec<usize>) {
    let (n, d, k) = (300, 24, 3);
    let u = lcg(7, n * (d + 1));
    let y: Vec<usize> = (0..n)
        .map(|i| (u[i * (d + 1)] * k as f64) as usize)
        .collect();
    let x = Array2::from_shape_fn((n, d), |(i, j)| {
        let mut v = u[i * (d + 1) + 1 + j] - 0.5;
        if j % k == y[i] {
            v += 0.4;
        }
        v as f32
    });
    (x, y)
}

#[test]
fn logme_and_h_score_match_numpy() {
    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/numpy_transfer.json")).unwrap();
    let (x, y) = data();
    let l = logme(x.view(), &y, 3).unwrap();
    let w = want["logme"].as_f64().unwrap();
    assert!(((l - w) / w).abs() < 1e-6, "LogME {l} vs NumPy {w}");
    let h = h_score(x.view(), &y, 3).unwrap();
    let w = want["h_score"].as_f64().unwrap();
    assert!(((h - w) / w).abs() < 1e-6, "H-score {h} vs NumPy {w}");
}

#[test]
fn scores_order_informative_over_noise_features() {
    let (x, y) = data();
    // The same rows with the class signal removed.
    let (noise, _) = {
        let mut z = x.clone();
        for (mut row, &c) in z.outer_iter_mut().zip(&y) {
            for (j, v) in row.iter_mut().enumerate() {
                if j % 3 == c {
                    *v -= 0.4;
                }
            }
        }
        (z, ())
    };
    assert!(logme(x.view(), &y, 3).unwrap() > logme(noise.view(), &y, 3).unwrap());
    assert!(h_score(x.view(), &y, 3).unwrap() > h_score(noise.view(), &y, 3).unwrap());
    let (a, b) = (
        knn_loo_accuracy(x.view(), &y, 5).unwrap(),
        knn_loo_accuracy(noise.view(), &y, 5).unwrap(),
    );
    assert!(a > 0.8 && b < 0.5, "{a} {b}");
    assert!(logme(x.view(), &y[..10], 3).is_err());
}

#[test]
fn rank_correlations() {
    assert_eq!(
        kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]),
        Some(1.0)
    );
    assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
    assert_eq!(
        spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]),
        Some(0.8)
    );
    assert_eq!(kendall_tau(&[1.0], &[1.0]), None);
    // scipy 1.17: kendalltau([1,2,2,3],[1,3,2,3]).statistic = 0.8 (tau-b, one tie each side)
    let t = kendall_tau(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 3.0]).unwrap();
    assert!((t - 0.8).abs() < 1e-12, "{t}");
}

#[test]
fn coral_matches_the_numpy_closed_form() {
    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/numpy_transfer.json")).unwrap();
    let (source, target) = domains();
    let out = tl_eval::adapt::coral(source.view(), target.view(), 0.1).unwrap();
    let worst = worst_relative(&out, &want["coral_first_rows"]);
    assert!(worst < 1e-5, "CORAL differs from NumPy by {worst}");
    // Bad input: different dimensions, NaN, too few rows.
    let e = tl_eval::adapt::coral(source.view(), target.slice(ndarray::s![.., ..5]), 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same backbone"), "{e}");
    let mut bad = target.clone();
    bad[[3, 1]] = f32::NAN;
    let e = tl_eval::adapt::coral(source.view(), bad.view(), 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("target row 3"), "{e}");
    // Fewer target rows than dimensions: the regulariser keeps it well-defined.
    let few =
        tl_eval::adapt::coral(source.view(), target.slice(ndarray::s![..5, ..]), 0.1).unwrap();
    assert!(few.iter().all(|v| v.is_finite()));
}

/// The reference's target domain: the second half of the rows, scaled and shifted per column.
fn domains() -> (Array2<f32>, Array2<f32>) {
    let (x, _) = data();
    let d = x.ncols();
    let source = x.slice(ndarray::s![..150, ..]).to_owned();
    let target = Array2::from_shape_fn((150, d), |(i, j)| {
        // float32 arithmetic as NumPy does it on the float32 array and float64 scales.
        let scale = 0.5 + 1.5 * j as f64 / (d - 1) as f64;
        (f64::from(x[[150 + i, j]]) * scale + 0.3) as f32
    });
    (source, target)
}

fn worst_relative(out: &Array2<f32>, want: &serde_json::Value) -> f64 {
    let mut worst = 0.0f64;
    for (i, row) in want.as_array().unwrap().iter().enumerate() {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            let w = v.as_f64().unwrap();
            worst = worst.max((f64::from(out[[i, j]]) - w).abs() / w.abs().max(1.0));
        }
    }
    worst
}

#[test]
fn subspace_alignment_matches_numpy() {
    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/numpy_transfer.json")).unwrap();
    let (source, target) = domains();
    let (s, t) = subspace_alignment(source.view(), target.view(), 5).unwrap();
    assert_eq!((s.dim(), t.dim()), ((150, 5), (150, 5)));
    let w = worst_relative(&s, &want["subspace_source_first_rows"]);
    assert!(w < 1e-5, "aligned source differs from NumPy by {w}");
    let w = worst_relative(&t, &want["subspace_target_first_rows"]);
    assert!(w < 1e-5, "projected target differs from NumPy by {w}");
    // Bad input: too many dimensions for the rows, zero dimensions, NaN.
    let e = subspace_alignment(source.view(), target.slice(ndarray::s![..4, ..]), 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dims must be in 1..=3"), "{e}");
    assert!(subspace_alignment(source.view(), target.view(), 0).is_err());
    let mut bad = source.clone();
    bad[[7, 2]] = f32::INFINITY;
    let e = subspace_alignment(bad.view(), target.view(), 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("source row 7"), "{e}");
}

#[test]
fn leep_matches_numpy_and_accepts_probabilities() {
    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/numpy_transfer.json")).unwrap();
    let (x, y) = data();
    let logits = x.slice(ndarray::s![.., ..8]).mapv(|v| 3.0 * v);
    let l = leep(logits.view(), &y, 3).unwrap();
    let w = want["leep"].as_f64().unwrap();
    assert!(((l - w) / w).abs() < 1e-6, "LEEP {l} vs NumPy {w}");
    assert!(
        l < 0.0 && l > (1.0f64 / 3.0).ln() - 1e-9,
        "{l} not above chance"
    );
    // The same source model given as probabilities (a graph ending in softmax).
    let probs = Array2::from_shape_fn(logits.dim(), |(i, j)| {
        let row = logits.row(i);
        let m = row.fold(f32::MIN, |a, &b| a.max(b));
        let z: f64 = row.iter().map(|&v| f64::from(v - m).exp()).sum();
        (f64::from(logits[[i, j]] - m).exp() / z) as f32
    });
    let p = leep(probs.view(), &y, 3).unwrap();
    assert!((p - l).abs() < 1e-5, "{p} vs {l}");
    // Uninformative source classes give chance-level evidence.
    let flat = Array2::<f32>::zeros((300, 4));
    let f = leep(flat.view(), &y, 3).unwrap();
    let prior: f64 = (0..3)
        .map(|c| {
            let p = y.iter().filter(|&&l| l == c).count() as f64 / 300.0;
            p * p.ln()
        })
        .sum();
    assert!((f - prior).abs() < 1e-9, "{f} vs {prior}");
    // Bad input.
    assert!(leep(logits.view(), &y[..10], 3).is_err());
    assert!(leep(logits.view(), &y, 2).is_err());
    let mut bad = logits.clone();
    bad[[4, 0]] = f32::NAN;
    let e = leep(bad.view(), &y, 3).unwrap_err().to_string();
    assert!(e.contains("row 4"), "{e}");
}

#[test]
fn importance_weights_favour_source_rows_that_look_like_the_target() {
    // Source rows spread along column 0; the target sits at its positive end.
    let u = lcg(11, 2000);
    let source = Array2::from_shape_fn((200, 4), |(i, j)| (u[i * 4 + j] * 2.0 - 1.0) as f32);
    let target = Array2::from_shape_fn((100, 4), |(i, j)| {
        let v = u[800 + i * 4 + j] as f32;
        if j == 0 { 0.5 + 0.5 * v } else { v * 2.0 - 1.0 }
    });
    let w = importance_weights(source.view(), target.view(), 1.0, 10.0, 0).unwrap();
    assert_eq!(w.len(), 200);
    let mean = w.iter().sum::<f64>() / 200.0;
    assert!((mean - 1.0).abs() < 1e-9, "{mean}");
    assert!(w.iter().all(|&v| (0.0..=10.0 + 1e-9).contains(&v)));
    let (mut near, mut far) = (0.0, 0.0);
    for (i, &v) in w.iter().enumerate() {
        if source[[i, 0]] > 0.5 {
            near += v;
        } else if source[[i, 0]] < -0.5 {
            far += v;
        }
    }
    assert!(near > 5.0 * far, "near-target rows {near} vs far {far}");
    // Deterministic, and the clip is honoured.
    assert_eq!(
        w,
        importance_weights(source.view(), target.view(), 1.0, 10.0, 0).unwrap()
    );
    let tight = importance_weights(source.view(), target.view(), 1.0, 1.5, 0).unwrap();
    assert!(tight.iter().all(|&v| v <= 1.5 + 1e-9), "{tight:?}");
    assert!(importance_weights(source.view(), target.view(), 1.0, 1.0, 0).is_err());
}

#[test]
fn reverse_validation_prefers_the_method_that_aligns_the_domains() {
    // Two classes separated along column 0; the target is the same problem shifted by +3 on
    // every column, so the source-only head calls every target row class 1.
    let u = lcg(5, 4000);
    let make = |n: usize, off: usize, shift: f32| {
        let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let x = Array2::from_shape_fn((n, 3), |(i, j)| {
            let noise = (u[off + i * 3 + j] as f32 - 0.5) * 0.8;
            let signal = if j == 0 { 2.0 * y[i] as f32 - 1.0 } else { 0.0 };
            signal + noise + shift
        });
        (x, y)
    };
    let (xs, ys) = make(200, 0, 0.0);
    let (xt, yt) = make(200, 1000, 3.0);
    let names = vec!["a".to_string(), "b".to_string()];
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let score = |m: &Method| {
        let a = m.apply(xs.view(), xt.view(), 0).unwrap();
        let rv = reverse_validation(&a, &ys, &names, &head, 0.2, 0).unwrap();
        let model = head
            .fit_weighted(a.source.view(), &ys, a.weights.as_deref(), &names, None)
            .unwrap();
        let pred = model.predict(a.target.view()).unwrap();
        let acc = pred.iter().zip(&yt).filter(|(p, y)| p == y).count() as f64 / 200.0;
        (rv, acc)
    };
    let (rv_so, acc_so) = score(&Method::SourceOnly);
    let (rv_c, acc_c) = score(&Method::Coral { eps_scale: 1.0 });
    assert!(acc_so < 0.6, "source-only {acc_so}");
    assert!(acc_c > 0.95, "CORAL {acc_c}");
    assert_eq!(
        rv_so, 0.0,
        "one pseudo-class: reverse validation cannot score"
    );
    assert!(rv_c > 0.95, "{rv_c}");
    let (_, acc_sa) = score(&Method::Subspace { dims: 2 });
    assert!(acc_sa > 0.95, "subspace alignment {acc_sa}");
    assert_eq!(
        Method::Coral { eps_scale: 1.0 }.label(),
        "coral(eps_scale=1)"
    );
}

#[test]
fn scores_refuse_labels_outside_the_classes_instead_of_panicking() {
    let x = ndarray::Array2::<f32>::from_shape_fn((6, 3), |(i, j)| (i * 3 + j) as f32 * 0.1);
    let y = [0, 1, 0, 1, 2, 5];
    for e in [
        logme(x.view(), &y, 2).unwrap_err(),
        h_score(x.view(), &y, 3).unwrap_err(),
        leep(x.view(), &y, 3).unwrap_err(),
        knn_loo_accuracy(x.view(), &y[..4], 5).unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("label") && (e.contains("row") || e.contains("rows")),
            "{e}"
        );
    }
}
