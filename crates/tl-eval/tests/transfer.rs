//! Transferability scores against the NumPy reference (fixture from
//! `tools/reference/transfer_reference.py`, which documents the data), rank correlations, and
//! LogME on real MiniLM features against SOURCES.md's figures.

use ndarray::Array2;
use tl_eval::transfer::{h_score, kendall_tau, knn_loo_accuracy, logme, spearman};

fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

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
        knn_loo_accuracy(x.view(), &y, 5),
        knn_loo_accuracy(noise.view(), &y, 5),
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
    let (x, _) = data();
    let d = x.ncols();
    let source = x.slice(ndarray::s![..150, ..]).to_owned();
    let target = Array2::from_shape_fn((150, d), |(i, j)| {
        // float32 arithmetic as NumPy does it on the float32 array and float64 scales.
        let scale = 0.5 + 1.5 * j as f64 / (d - 1) as f64;
        (f64::from(x[[150 + i, j]]) * scale + 0.3) as f32
    });
    let out = tl_eval::adapt::coral(source.view(), target.view(), 0.1).unwrap();
    let mut worst = 0.0f64;
    for (i, row) in want["coral_first_rows"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            let w = v.as_f64().unwrap();
            worst = worst.max((f64::from(out[[i, j]]) - w).abs() / w.abs().max(1.0));
        }
    }
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
