//! Metrics and TF-IDF against scikit-learn 1.9.1 (fixture from
//! `tools/reference/eval_reference.py`, which documents the data).

use ndarray::Array2;
use serde_json::Value;
use tl_core::metrics::evaluate;
use tl_eval::tfidf::{Tfidf, TfidfParams};

mod common;
use common::lcg;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/sklearn_eval.json")).unwrap()
}

/// The same pseudo-random problem the script builds.
fn problem(k: usize, n: usize, seed: u64) -> (Vec<usize>, Vec<usize>, Array2<f64>) {
    let u = lcg(seed, 3 * n);
    let truth: Vec<usize> = (0..n).map(|i| (u[3 * i] * k as f64) as usize).collect();
    let mut proba = Array2::zeros((n, k));
    for i in 0..n {
        let mut raw: Vec<f64> = (0..k).map(|j| 0.2 + u[(3 * i + 1 + j) % (3 * n)]).collect();
        raw[truth[i]] += 1.5 * u[3 * i + 2];
        let s: f64 = raw.iter().sum();
        for j in 0..k {
            proba[[i, j]] = raw[j] / s;
        }
    }
    let pred = (0..n)
        .map(|i| {
            let row = proba.row(i);
            (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b })
        })
        .collect();
    (truth, pred, proba)
}

fn close(a: f64, b: &Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!((a - b).abs() < 1e-12, "{what}: {a} vs scikit-learn {b}");
}

#[test]
fn metrics_match_sklearn() {
    for r in fixture()["metrics"].as_array().unwrap() {
        let k = r["k"].as_u64().unwrap() as usize;
        let (t, p, pr) = problem(
            k,
            r["n"].as_u64().unwrap() as usize,
            r["seed"].as_u64().unwrap(),
        );
        let names: Vec<String> = (0..k).map(|c| c.to_string()).collect();
        let m = evaluate(&t, &p, pr.as_standard_layout().as_slice(), &names);
        close(m.accuracy, &r["accuracy"], "accuracy");
        close(
            m.balanced_accuracy,
            &r["balanced_accuracy"],
            "balanced accuracy",
        );
        close(m.macro_f1, &r["macro_f1"], "macro-F1");
        close(m.log_loss.unwrap(), &r["log_loss"], "log loss");
        for c in 0..k {
            close(m.per_class[c].precision, &r["precision"][c], "precision");
            close(m.per_class[c].recall, &r["recall"][c], "recall");
            close(m.per_class[c].f1, &r["f1"][c], "f1");
        }
        let conf: Vec<Vec<usize>> = serde_json::from_value(r["confusion"].clone()).unwrap();
        assert_eq!(m.confusion, conf);
        if k == 2 {
            close(m.roc_auc.unwrap(), &r["roc_auc"], "ROC-AUC");
            close(
                m.average_precision.unwrap(),
                &r["average_precision"],
                "average precision",
            );
        } else {
            assert!(m.roc_auc.is_none());
        }
    }
}

/// The Amazon sentences the fixtures were made from, in tl-data's order.
fn amazon() -> tl_data::Dataset {
    let r = tl_assets::Registry::builtin().unwrap();
    tl_data::load_builtin(
        r.get("sentiment-amazon").unwrap(),
        &tl_assets::Cache::from_env(),
    )
    .unwrap()
}

fn texts(ds: &tl_data::Dataset) -> Vec<&str> {
    ds.items
        .iter()
        .map(|i| match i {
            tl_data::Item::Text(t) => t.as_str(),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn tfidf_matches_sklearn() {
    let ds = amazon();
    let texts = texts(&ds);
    let f = fixture();
    let want = &f["tfidf"];
    let v = Tfidf::fit(&texts[..800], &TfidfParams::default());
    let vocab: Vec<&str> = want["vocabulary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(v.dim(), vocab.len());
    let x = v.transform(&texts[800..1000]);
    let mut worst = 0.0f64;
    for (i, row) in want["test_rows"].as_array().unwrap().iter().enumerate() {
        let mut expected = vec![0.0f64; vocab.len()];
        for pair in row.as_array().unwrap() {
            let term = pair[0].as_str().unwrap();
            // Our columns are in alphabetical order, as scikit-learn's.
            let j = vocab.binary_search(&term).unwrap();
            expected[j] = pair[1].as_f64().unwrap();
        }
        for (j, e) in expected.iter().enumerate() {
            worst = worst.max((f64::from(x[[i, j]]) - e).abs());
        }
    }
    eprintln!("tf-idf: {} terms, max |diff| = {worst:e}", vocab.len());
    assert!(worst < 1e-6, "{worst}");
}

/// The TF-IDF baseline as the experiment runner builds it (sparse rows, whole vocabulary)
/// and logistic regression on it, against scikit-learn's TfidfVectorizer + LogisticRegression
/// on the same sentences (fixture from `eval_reference.py --tfidf-logistic`).
#[test]
fn sparse_tfidf_and_logistic_regression_match_sklearn() {
    let want: Value =
        serde_json::from_str(include_str!("fixtures/sklearn_tfidf_logistic.json")).unwrap();
    let ds = amazon();
    let texts = texts(&ds);
    let v = Tfidf::fit(&texts[..800], &TfidfParams::default());
    assert_eq!(v.dim() as u64, want["vocabulary_size"].as_u64().unwrap());
    let (xtr, xte) = (
        v.transform_sparse(&texts[..800]),
        v.transform_sparse(&texts[800..1000]),
    );
    // The sparse rows are the dense ones without their zeros.
    assert_eq!(
        xte.to_dense_vec(0.0),
        v.transform(&texts[800..1000]).into_raw_vec_and_offset().0
    );
    let config =
        tl_heads::HeadConfig::new(tl_heads::HeadSpec::Logistic(tl_heads::LogisticParams {
            c: 1.0,
            tol: 1e-8,
            max_iter: 10_000,
        }));
    let model = config
        .fit(&xtr, &ds.labels[..800], &ds.label_names, None)
        .unwrap();
    assert!(model.warnings.is_empty(), "{:?}", model.warnings);
    let proba = model.predict_proba(&xte).unwrap();
    let mut worst = 0.0f64;
    for (i, p) in want["proba"].as_array().unwrap().iter().enumerate() {
        worst = worst.max((proba[[i, 1]] - p.as_f64().unwrap()).abs());
    }
    let tl_heads::FittedHead::Logistic { linear } = &model.head else {
        unreachable!()
    };
    let intercept = (linear.b[0] - want["intercept"].as_f64().unwrap()).abs();
    let weights = want["weights"].as_object().unwrap();
    let mut worst_w = 0.0f64;
    let mut terms: Vec<&String> = weights.keys().collect();
    terms.sort();
    for (j, t) in terms.iter().enumerate() {
        worst_w = worst_w.max((linear.w[[j, 0]] - weights[*t].as_f64().unwrap()).abs());
    }
    let pred = model.predict(&xte).unwrap();
    let correct = pred
        .iter()
        .zip(&ds.labels[800..1000])
        .filter(|(p, y)| p == y)
        .count();
    eprintln!(
        "tf-idf + logistic: max |proba diff| {worst:e}, |intercept diff| {intercept:e}, max |weight diff| {worst_w:e}, accuracy {correct}/200"
    );
    assert!(worst < 1e-5 && intercept < 1e-5 && worst_w < 1e-5);
    assert_eq!(correct as f64 / 200.0, want["accuracy"].as_f64().unwrap());
}
