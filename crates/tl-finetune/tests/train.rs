//! Training behaviour on tiny models: it learns, it is reproducible bit for bit, a
//! killed run resumes to the same weights, and every bad input is a clear error.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tl_finetune::ops::hash_uniform;
use tl_finetune::{
    BertClassifier, BertConfig, FinetuneError, FinetuneParams, RunOptions, Strategy, Threads,
    finetune, finetune_with, predict,
};

/// Sequences of random tokens 4..30 between [CLS] = 1 and [SEP] = 2; the label says
/// whether token 3 occurs before token 4 (both occur once): a task that needs
/// attention and positions, not just a bag of tokens.
fn order_task(n: usize, seed: u64) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut seqs = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n as u64 {
        let len = 4 + (hash_uniform(seed, 10 * i) * 8.0) as usize;
        let mut body: Vec<u32> = (0..len)
            .map(|j| 5 + (hash_uniform(seed, 10 * i + 1 + j as u64 * 1000) * 25.0) as u32)
            .collect();
        let a = (hash_uniform(seed, 10 * i + 2) * len as f32) as usize;
        let mut b = (hash_uniform(seed, 10 * i + 3) * len as f32) as usize;
        if b == a {
            b = (a + 1) % len;
        }
        body[a] = 3;
        body[b] = 4;
        let mut s = vec![1];
        s.extend(body);
        s.push(2);
        seqs.push(s);
        labels.push(usize::from(a < b));
    }
    (seqs, labels)
}

fn tiny_model(seed: u64) -> BertClassifier {
    BertClassifier::random(BertConfig::tiny(32, 32, 2, 4), 2, seed)
}

fn params() -> FinetuneParams {
    FinetuneParams {
        learning_rate: 3e-3,
        epochs: 12,
        batch_size: 16,
        warmup_fraction: 0.1,
        dropout: 0.0,
        threads: 1,
        ..FinetuneParams::default()
    }
}

#[test]
fn a_tiny_model_learns_a_task_that_needs_attention() {
    let (seqs, labels) = order_task(1200, 1);
    let (test_seqs, test_labels) = order_task(400, 2);
    let mut model = tiny_model(0);
    let before = predict(&model, &test_seqs, 64, Threads(1));
    let acc =
        |p: &[usize]| p.iter().zip(&test_labels).filter(|(a, b)| a == b).count() as f64 / 400.0;
    let report = finetune(
        &mut model,
        &seqs,
        &labels,
        &params(),
        &RunOptions::default(),
    )
    .unwrap();
    let after = acc(&predict(&model, &test_seqs, 64, Threads(1)));
    eprintln!(
        "before {:.3}, after {after:.3}, losses {:?}",
        acc(&before),
        report
            .epochs
            .iter()
            .map(|e| e.train_loss)
            .collect::<Vec<_>>()
    );
    assert!(after > 0.95, "held-out accuracy {after}");
    assert!(report.epochs.last().unwrap().train_loss < report.epochs[0].train_loss);
}

#[test]
fn same_data_seed_and_threads_give_the_same_weights_bit_for_bit() {
    let (seqs, labels) = order_task(200, 3);
    let p = FinetuneParams {
        epochs: 2,
        dropout: 0.1,
        threads: 2,
        ..params()
    };
    let mut a = tiny_model(5);
    let mut b = tiny_model(5);
    finetune(&mut a, &seqs, &labels, &p, &RunOptions::default()).unwrap();
    finetune(&mut b, &seqs, &labels, &p, &RunOptions::default()).unwrap();
    assert!(
        a.params
            .iter()
            .zip(&b.params)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    let mut c = tiny_model(5);
    finetune(
        &mut c,
        &seqs,
        &labels,
        &FinetuneParams { seed: 1, ..p },
        &RunOptions::default(),
    )
    .unwrap();
    assert_ne!(a.params, c.params, "another seed must change the run");
}

#[test]
fn top_strategy_leaves_lower_layers_untouched() {
    let (seqs, labels) = order_task(100, 4);
    let before = tiny_model(6);
    let mut model = before.clone();
    let p = FinetuneParams {
        strategy: Strategy::Top(1),
        epochs: 1,
        ..params()
    };
    finetune(&mut model, &seqs, &labels, &p, &RunOptions::default()).unwrap();
    for slot in &model.slots.all {
        let same = model.params[slot.range.clone()] == before.params[slot.range.clone()];
        // depth 0 = embeddings, 1 = layer 0 (frozen), 2 = layer 1, 3 = classifier.
        assert_eq!(same, slot.depth < 2, "{}", slot.name);
    }
}

#[test]
fn early_stopping_keeps_the_best_epoch_unless_the_last_is_within_one_standard_error() {
    let (seqs, labels) = order_task(300, 7);
    let mut model = tiny_model(8);
    let p = FinetuneParams {
        epochs: 6,
        validation_fraction: 0.2,
        patience: 1,
        ..params()
    };
    let r = finetune(&mut model, &seqs, &labels, &p, &RunOptions::default()).unwrap();
    assert_eq!(r.validation_rows, 60);
    assert_eq!(r.train_rows, 240);
    let accs: Vec<f64> = r
        .epochs
        .iter()
        .map(|e| e.validation_accuracy.unwrap())
        .collect();
    let best = accs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let best_epoch = accs.iter().position(|&a| a == best).unwrap() + 1;
    let last = *accs.last().unwrap();
    let se = (best * (1.0 - best) / 60.0).sqrt();
    if best - last > se {
        assert_eq!(r.best_epoch, best_epoch, "{accs:?}");
    } else {
        assert_eq!(r.best_epoch, accs.len(), "{accs:?}");
    }
    // It stopped one epoch after the last improvement, or ran out of epochs.
    assert!(
        r.epochs.len() == 6 || r.epochs.len() == best_epoch + 1,
        "{accs:?}"
    );
}

#[test]
fn a_tie_with_an_earlier_epoch_keeps_the_last_epochs_weights() {
    let (seqs, labels) = order_task(300, 7);
    let mut model = tiny_model(8);
    let p = FinetuneParams {
        epochs: 4,
        validation_fraction: 0.2,
        seed: 4,
        ..params()
    };
    let mut seen: Vec<(f64, Vec<f32>)> = Vec::new();
    let r = finetune_with(
        &mut model,
        &seqs,
        &labels,
        &p,
        &RunOptions::default(),
        &mut |log, m| seen.push((log.validation_accuracy.unwrap(), m.params.clone())),
    )
    .unwrap();
    let accs: Vec<f64> = seen.iter().map(|s| s.0).collect();
    // Epochs 2 and 4 tie (35 of 60 rows) above epoch 3: the first best is epoch 2,
    // one standard error is 3.8 rows, so the schedule's end is kept.
    assert_eq!(accs[1], accs[3], "{accs:?}");
    assert!(accs[2] < accs[1] && accs[0] < accs[1], "{accs:?}");
    assert_eq!(r.best_epoch, 4);
    assert!(model.params == seen[3].1);
    assert!(model.params != seen[1].1);
}

const CHILD_ENV: &str = "TL_FINETUNE_TEST_CHILD_DIR";

fn resume_params() -> FinetuneParams {
    FinetuneParams {
        epochs: 4,
        dropout: 0.1,
        ..params()
    }
}

fn resume_data() -> (Vec<Vec<u32>>, Vec<usize>) {
    order_task(3000, 9)
}

/// Not a test on its own: the body of the child process below.
#[test]
#[ignore]
fn child_train() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (seqs, labels) = resume_data();
    let mut model = tiny_model(10);
    let run = RunOptions {
        dir: Some(dir.into()),
        resume: true,
        progress: false,
        ..Default::default()
    };
    finetune(&mut model, &seqs, &labels, &resume_params(), &run).unwrap();
}

fn epochs_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("log.jsonl")).map_or(0, |t| t.lines().count())
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let (seqs, labels) = resume_data();
    let mut straight = tiny_model(10);
    finetune(
        &mut straight,
        &seqs,
        &labels,
        &resume_params(),
        &RunOptions::default(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_train", "--ignored", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while epochs_logged(dir.path()) < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "child made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child finished before it was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Right after the first checkpoint: mid-epoch 2 (each epoch takes far longer than
    // the 10 ms poll).
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = epochs_logged(dir.path());
    assert!(done < 4, "the kill came after the end ({done} epochs)");

    let mut resumed = tiny_model(10);
    let run = RunOptions {
        dir: Some(dir.path().into()),
        resume: true,
        progress: false,
        ..Default::default()
    };
    let r = finetune(&mut resumed, &seqs, &labels, &resume_params(), &run).unwrap();
    assert_eq!(r.resumed_epochs, done);
    assert_eq!(r.epochs.len(), 4);
    assert!(
        resumed
            .params
            .iter()
            .zip(&straight.params)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "resumed weights differ from an uninterrupted run"
    );
    // No temporary files left behind by the kill are taken for a checkpoint.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".tmp-"))
        .collect();
    assert!(
        names.contains(&"checkpoint.safetensors".to_string()),
        "{names:?}"
    );
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let (seqs, labels) = order_task(64, 11);
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        dir: Some(dir.path().into()),
        resume: true,
        progress: false,
        ..Default::default()
    };
    let p = FinetuneParams {
        epochs: 1,
        ..params()
    };
    finetune(&mut tiny_model(0), &seqs, &labels, &p, &run).unwrap();
    let other = FinetuneParams {
        learning_rate: 1e-4,
        ..p
    };
    let err = finetune(&mut tiny_model(0), &seqs, &labels, &other, &run).unwrap_err();
    assert!(err.to_string().contains("other hyperparameters"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let (seqs, labels) = order_task(40, 12);
    let run = RunOptions::default();
    let p = params();
    let msg = |r: Result<tl_finetune::FinetuneReport, FinetuneError>| r.unwrap_err().to_string();

    let one_class = vec![1usize; seqs.len()];
    assert!(
        msg(finetune(&mut tiny_model(0), &seqs, &one_class, &p, &run)).contains("single class")
    );
    assert!(msg(finetune(&mut tiny_model(0), &[], &[], &p, &run)).contains("no training rows"));
    assert!(
        msg(finetune(&mut tiny_model(0), &seqs, &labels[1..], &p, &run))
            .contains("40 texts but 39 labels")
    );
    let mut bad = labels.clone();
    bad[7] = 5;
    assert!(msg(finetune(&mut tiny_model(0), &seqs, &bad, &p, &run)).contains("row 7: label 5"));
    let long = vec![vec![1u32; 100]; 2];
    assert!(
        msg(finetune(&mut tiny_model(0), &long, &[0, 1], &p, &run))
            .contains("100 tokens but the model has 64 positions")
    );

    for (bad, field) in [
        (
            FinetuneParams {
                learning_rate: 0.0,
                ..p.clone()
            },
            "learning_rate",
        ),
        (
            FinetuneParams {
                learning_rate: f32::NAN,
                ..p.clone()
            },
            "learning_rate",
        ),
        (
            FinetuneParams {
                batch_size: 0,
                ..p.clone()
            },
            "batch_size",
        ),
        (
            FinetuneParams {
                epochs: 0,
                ..p.clone()
            },
            "epochs",
        ),
        (
            FinetuneParams {
                warmup_fraction: 1.0,
                ..p.clone()
            },
            "warmup_fraction",
        ),
        (
            FinetuneParams {
                dropout: 0.95,
                ..p.clone()
            },
            "dropout",
        ),
        (
            FinetuneParams {
                max_length: 1,
                ..p.clone()
            },
            "max_length",
        ),
        (
            FinetuneParams {
                layer_decay: 0.0,
                ..p.clone()
            },
            "layer_decay",
        ),
        (
            FinetuneParams {
                validation_fraction: 0.7,
                ..p.clone()
            },
            "validation_fraction",
        ),
        (
            FinetuneParams {
                patience: 2,
                ..p.clone()
            },
            "patience",
        ),
        (
            FinetuneParams {
                threads: 0,
                ..p.clone()
            },
            "threads",
        ),
        (
            FinetuneParams {
                strategy: Strategy::Top(0),
                ..p.clone()
            },
            "top:N",
        ),
    ] {
        let m = msg(finetune(&mut tiny_model(0), &seqs, &labels, &bad, &run));
        assert!(m.contains(field), "{field}: {m}");
    }
    assert!(Strategy::parse("top:x").is_err());
    assert_eq!(Strategy::parse("top:2").unwrap(), Strategy::Top(2));
}

#[test]
fn a_diverging_run_stops_with_the_step_number() {
    let (seqs, labels) = order_task(64, 13);
    let mut model = tiny_model(0);
    // Poison one weight: the first forward pass is non-finite.
    let r = model.slots.layers[0].i_w.start;
    model.params[r] = f32::INFINITY;
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        dir: Some(dir.path().into()),
        resume: false,
        progress: false,
        ..Default::default()
    };
    let err = finetune(&mut model, &seqs, &labels, &params(), &run).unwrap_err();
    match err {
        FinetuneError::NonFinite { step, epoch, .. } => assert_eq!((step, epoch), (1, 1)),
        other => panic!("expected NonFinite, got {other}"),
    }
}

#[test]
fn top_n_with_the_frozen_cache_trains_the_same_weights_and_reuses_the_states() {
    let (seqs, labels) = order_task(300, 14);
    let p = FinetuneParams {
        strategy: Strategy::Top(1),
        epochs: 2,
        dropout: 0.1,
        ..params()
    };
    let mut plain = tiny_model(3);
    finetune(&mut plain, &seqs, &labels, &p, &RunOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = tl_features::Store::new(dir.path());
    let run = RunOptions {
        frozen_store: Some(store.clone()),
        ..Default::default()
    };
    let mut cached = tiny_model(3);
    finetune(&mut cached, &seqs, &labels, &p, &run).unwrap();
    assert!(
        cached
            .params
            .iter()
            .zip(&plain.params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    let info = store.info().unwrap();
    assert_eq!(info.len(), 1, "one frozen-states store");
    let rows: usize = seqs.iter().map(|s| s.len()).sum();
    let (states, computed) =
        tl_finetune::frozen::frozen_states(&tiny_model(3), &seqs, 2, Some(&store), Threads(1))
            .unwrap();
    assert_eq!(computed, 0, "a second pass reads every item from the store");
    assert_eq!(states.iter().map(|s| s.len()).sum::<usize>(), rows * 32);
    // Another frozen boundary or other weights never read these states.
    assert_eq!(
        tl_finetune::frozen::frozen_states(&tiny_model(4), &seqs[..5], 2, Some(&store), Threads(1))
            .unwrap()
            .1,
        5
    );
}

#[test]
fn pairs_are_half_same_class_and_never_self() {
    let labels = vec![0, 0, 0, 1, 1, 2, 0, 1];
    let train: Vec<usize> = (0..labels.len()).collect();
    let pairs = tl_finetune::train::make_pairs(&train, &labels, 4, 0);
    assert_eq!(
        pairs.len(),
        4 * 7 + 4,
        "class 2 has one member: only its 2 negatives... {pairs:?}"
    );
    for &(a, b, t) in &pairs {
        assert_ne!(a, b);
        assert_eq!(t == 1.0, labels[a] == labels[b], "{a} {b} {t}");
    }
    assert_eq!(pairs, tl_finetune::train::make_pairs(&train, &labels, 4, 0));
}

#[test]
fn contrastive_tuning_separates_the_classes() {
    let (seqs, labels) = order_task(600, 15);
    let (test, test_labels) = order_task(300, 16);
    let mut model = tiny_model(1);
    let p = FinetuneParams {
        strategy: Strategy::Contrastive,
        pairs_per_item: 4,
        epochs: 10,
        validation_fraction: 0.2,
        ..params()
    };
    let r = finetune(&mut model, &seqs, &labels, &p, &RunOptions::default()).unwrap();
    let val: Vec<f64> = r
        .epochs
        .iter()
        .map(|e| e.validation_accuracy.unwrap())
        .collect();
    eprintln!("validation (nearest centroid) by epoch: {val:?}");
    // Centroids of the training rows classify held-out rows.
    let h = 32;
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let tv = tl_finetune::sentence_vectors(&model, &seqs, 64, Threads(1));
    let mut cent = vec![vec![0.0f32; h]; 2];
    for (row, &y) in tv.chunks(h).zip(&labels) {
        for (c, v) in cent[y].iter_mut().zip(unit(row)) {
            *c += v;
        }
    }
    let qv = tl_finetune::sentence_vectors(&model, &test, 64, Threads(1));
    let correct = qv
        .chunks(h)
        .zip(&test_labels)
        .filter(|(q, y)| {
            let q = unit(q);
            let s: Vec<f32> = cent
                .iter()
                .map(|c| c.iter().zip(&q).map(|(a, b)| a * b).sum())
                .collect();
            usize::from(s[1] > s[0]) == **y
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    eprintln!("held-out nearest-centroid accuracy {acc:.3}");
    assert!(acc > 0.9, "{acc}");
}

#[test]
fn hyperparameters_round_trip_through_json_with_readable_strategies() {
    for s in [Strategy::Full, Strategy::Top(2), Strategy::Contrastive] {
        let p = FinetuneParams {
            strategy: s,
            ..params()
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(&format!("\"strategy\":\"{s}\"")), "{text}");
        assert_eq!(serde_json::from_str::<FinetuneParams>(&text).unwrap(), p);
    }
    let err = serde_json::from_str::<FinetuneParams>(r#"{"strategy":"top:x"}"#).unwrap_err();
    assert!(err.to_string().contains("top:N"), "{err}");
    let err = serde_json::from_str::<FinetuneParams>(r#"{"learning_rat":0.1}"#).unwrap_err();
    assert!(err.to_string().contains("learning_rat"), "{err}");
}
