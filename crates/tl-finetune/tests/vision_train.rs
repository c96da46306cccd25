//! Training image networks end to end on synthetic images (no assets): a small convnet
//! learns a three-class pattern task, runs are bit-for-bit reproducible and resume
//! after an interruption exactly, strategies freeze what they say, and bad input is
//! refused with a message naming it.

use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};
use tl_backbone::{ImageInput, RawImage};
use tl_finetune::conv::Padding;
use tl_finetune::train::Strategy;
use tl_finetune::vision::{Augment, augment_image};
use tl_finetune::{
    BnMode, ConvNet, FinetuneError, ImageParams, RunOptions, finetune_images, predict_images,
};

fn spec(size: u32) -> ImageSpec {
    ImageSpec {
        size,
        resize: Resize::Stretch,
        pixel_max: 1.0,
        mean: [0.5; 3],
        std: [0.25; 3],
        layout: Layout::Nchw,
        channels: ChannelOrder::Rgb,
    }
}

/// Class 0: horizontal stripes, 1: vertical stripes, 2: a bright square; random
/// phases, positions, colours and noise. Sizes vary (the preprocessing resizes).
fn dataset(n: usize, seed: u64) -> (Vec<ImageInput>, Vec<usize>) {
    let u = |k: u64| tl_finetune::ops::hash_uniform(seed, k);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let class = i % 3;
        let k = i as u64 * 1000;
        let side = 14 + (u(k) * 6.0) as usize;
        let phase = (u(k + 1) * 4.0) as usize;
        let (sx, sy) = (
            (u(k + 2) * (side - 6) as f32) as usize,
            (u(k + 3) * (side - 6) as f32) as usize,
        );
        let tint = [u(k + 4), u(k + 5), u(k + 6)];
        let mut data = Vec::with_capacity(side * side * 3);
        for y in 0..side {
            for x in 0..side {
                let on = match class {
                    0 => (y + phase) % 4 < 2,
                    1 => (x + phase) % 4 < 2,
                    _ => (sx..sx + 6).contains(&x) && (sy..sy + 6).contains(&y),
                };
                for (c, t) in tint.iter().enumerate() {
                    let noise = u(k + 10 + ((y * side + x) * 3 + c) as u64) * 60.0;
                    let v = if on { 140.0 + 100.0 * t } else { 20.0 } + noise;
                    data.push(v.min(255.0) as u8);
                }
            }
        }
        images.push(ImageInput::Pixels(RawImage {
            width: side as u32,
            height: side as u32,
            channels: 3,
            data,
        }));
        labels.push(class);
    }
    (images, labels)
}

fn net(seed: u64) -> ConvNet {
    ConvNet::tiny(&[8, 8, 12], 16, 3, Padding::SameUpper, seed)
}

fn params() -> ImageParams {
    ImageParams {
        learning_rate: 1e-2,
        batch_size: 16,
        epochs: 6,
        threads: 2,
        resolution: Some(16),
        augment: Augment::none(),
        dropout: 0.1,
        ..Default::default()
    }
}

fn accuracy(net: &ConvNet, images: &[ImageInput], labels: &[usize], r: u32) -> f64 {
    let pred = predict_images(net, images, &spec(r), 32, tl_finetune::Threads(2)).unwrap();
    pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f64 / labels.len() as f64
}

#[test]
fn a_small_convnet_learns_a_synthetic_image_task() {
    let (train_x, train_y) = dataset(240, 1);
    let (test_x, test_y) = dataset(90, 2);
    for bn in [BnMode::Frozen, BnMode::Batch] {
        let mut m = net(0);
        let before = accuracy(&m, &test_x, &test_y, 16);
        let p = ImageParams {
            batch_norm: bn,
            ..params()
        };
        let report = finetune_images(
            &mut m,
            &train_x,
            &train_y,
            &spec(16),
            &p,
            &RunOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let after = accuracy(&m, &test_x, &test_y, 16);
        eprintln!(
            "{bn:?}: test accuracy {before:.3} -> {after:.3}; losses {:?}",
            report
                .epochs
                .iter()
                .map(|e| e.train_loss)
                .collect::<Vec<_>>()
        );
        assert!(after > 0.95, "{bn:?}: {after}");
        assert!(report.epochs.last().unwrap().train_loss < report.epochs[0].train_loss);
    }
}

#[test]
fn augmentation_trains_too_and_batch_statistics_move_the_running_averages() {
    let (train_x, train_y) = dataset(240, 3);
    let (test_x, test_y) = dataset(90, 4);
    let mut m = net(1);
    let stats0 = m.stats.clone();
    let p = ImageParams {
        augment: Augment {
            crop_scale: 0.85,
            flip: true,
            rotation: 8.0,
            color_jitter: 0.2,
        },
        batch_norm: BnMode::Batch,
        epochs: 8,
        ..params()
    };
    finetune_images(
        &mut m,
        &train_x,
        &train_y,
        &spec(16),
        &p,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(
        m.stats, stats0,
        "batch statistics must update the running averages"
    );
    let after = accuracy(&m, &test_x, &test_y, 16);
    assert!(after > 0.9, "{after}");
    // Frozen statistics never move.
    let mut f = net(1);
    let p = ImageParams {
        epochs: 1,
        ..params()
    };
    finetune_images(
        &mut f,
        &train_x,
        &train_y,
        &spec(16),
        &p,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(f.stats, stats0);
}

#[test]
fn same_seed_same_weights_and_resume_continues_exactly() {
    let (x, y) = dataset(96, 5);
    let p = ImageParams {
        epochs: 3,
        validation_fraction: 0.25,
        augment: Augment::default(),
        ..params()
    };
    let mut a = net(2);
    finetune_images(
        &mut a,
        &x,
        &y,
        &spec(16),
        &p,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let mut b = net(2);
    finetune_images(
        &mut b,
        &x,
        &y,
        &spec(16),
        &p,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        a.params, b.params,
        "same data, seed and threads: same weights"
    );

    // Interrupted after epoch 1 (an error from the callback stands for the kill: the
    // checkpoint of epoch 1 is on disk, nothing after it), then resumed.
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut c = net(2);
    let one = ImageParams {
        epochs: 3,
        ..p.clone()
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        finetune_images(&mut c, &x, &y, &spec(16), &one, &run, &mut |log, _| {
            if log.epoch == 1 {
                panic!("killed");
            }
        })
    }));
    assert!(r.is_err());
    let mut d = net(2);
    let resumed = RunOptions {
        resume: true,
        ..run.clone()
    };
    let report = finetune_images(&mut d, &x, &y, &spec(16), &p, &resumed, &mut |_, _| {}).unwrap();
    assert_eq!(report.resumed_epochs, 1);
    assert_eq!(report.epochs.len(), 3);
    assert_eq!(
        d.params, a.params,
        "resumed run equals the uninterrupted one bit for bit"
    );
    assert_eq!(d.stats, a.stats);
    // Other hyperparameters: refused.
    let other = ImageParams {
        learning_rate: 2e-2,
        ..p.clone()
    };
    let err = finetune_images(
        &mut net(2),
        &x,
        &y,
        &spec(16),
        &other,
        &resumed,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("other hyperparameters"), "{err}");
}

#[test]
fn strategies_train_only_what_they_name() {
    let (x, y) = dataset(48, 6);
    let base = net(3);
    for (strategy, frozen_depths) in [
        (Strategy::Head, 0..5),
        (Strategy::Top(2), 0..3),
        (Strategy::Full, 0..0),
    ] {
        let mut m = base.clone();
        let p = ImageParams {
            strategy,
            epochs: 1,
            ..params()
        };
        finetune_images(
            &mut m,
            &x,
            &y,
            &spec(16),
            &p,
            &RunOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        for s in &m.slots {
            let same = m.params[s.range.clone()] == base.params[s.range.clone()];
            assert_eq!(
                same,
                frozen_depths.contains(&s.depth),
                "{strategy}: {} (depth {})",
                s.name,
                s.depth
            );
        }
    }
}

#[test]
fn frozen_blocks_are_stored_once_and_read_back_to_the_same_weights() {
    let (x, y) = dataset(64, 8);
    let p = ImageParams {
        strategy: Strategy::Top(2),
        epochs: 2,
        ..params()
    };
    let mut plain = net(5);
    finetune_images(
        &mut plain,
        &x,
        &y,
        &spec(16),
        &p,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        frozen_store: Some(tl_features::Store::new(dir.path())),
        ..Default::default()
    };
    let files = |d: &std::path::Path| walk(d).len();
    for round in 0..2 {
        let mut m = net(5);
        finetune_images(&mut m, &x, &y, &spec(16), &p, &run, &mut |_, _| {}).unwrap();
        assert_eq!(
            m.params, plain.params,
            "round {round}: stored states change nothing"
        );
    }
    let stored = files(dir.path());
    assert!(stored > 0, "the frozen blocks' outputs are in the store");
    // Another boundary is another fingerprint: a new entry, never the old states.
    let mut m = net(5);
    let p3 = ImageParams {
        strategy: Strategy::Top(3),
        ..p.clone()
    };
    finetune_images(&mut m, &x, &y, &spec(16), &p3, &run, &mut |_, _| {}).unwrap();
    assert!(files(dir.path()) > stored);
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let (x, y) = dataset(12, 7);
    let run = RunOptions::default();
    let fit = |x: &[ImageInput], y: &[usize], p: &ImageParams| -> FinetuneError {
        finetune_images(&mut net(4), x, y, &spec(16), p, &run, &mut |_, _| {}).unwrap_err()
    };
    let msg = |e: FinetuneError| e.to_string();
    assert!(msg(fit(&[], &[], &params())).contains("no training images"));
    assert!(msg(fit(&x, &[1; 12], &params())).contains("single class"));
    assert!(msg(fit(&x, &y[..5], &params())).contains("12 images but 5 labels"));
    let mut bad_label = y.clone();
    bad_label[3] = 7;
    assert!(msg(fit(&x, &bad_label, &params())).contains("row 3: label 7"));
    let small = ImageParams {
        resolution: Some(4),
        ..params()
    };
    assert!(msg(fit(&x, &y, &small)).contains("resolution must be in 8..=1024"));
    // Five stride-2 stages need 32 pixels.
    let mut deep = ConvNet::tiny(&[4; 8], 8, 3, Padding::SameUpper, 0);
    let e = finetune_images(
        &mut deep,
        &x,
        &y,
        &spec(16),
        &params(),
        &run,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("resolution 16 is below tiny's minimum of 32"),
        "{e}"
    );
    let mut broken = x.clone();
    broken[5] = ImageInput::Encoded {
        name: "broken.png".into(),
        bytes: b"not a png".to_vec(),
    };
    let e = msg(fit(&broken, &y, &params()));
    assert!(e.contains("image 5 (broken.png)"), "{e}");
    assert!(
        msg(fit(
            &x,
            &y,
            &ImageParams {
                strategy: Strategy::Contrastive,
                ..params()
            }
        ))
        .contains("for text encoders")
    );
    // Grayscale and RGB images mix: the preprocessing makes every image 3 channels.
    let mut mixed = x.clone();
    mixed[0] = ImageInput::Pixels(RawImage {
        width: 10,
        height: 12,
        channels: 1,
        data: vec![90; 120],
    });
    finetune_images(
        &mut net(4),
        &mixed,
        &y,
        &spec(16),
        &ImageParams {
            epochs: 1,
            ..params()
        },
        &run,
        &mut |_, _| {},
    )
    .unwrap();
}

#[test]
fn augmentation_is_seeded_and_off_means_identity() {
    let s = spec(16);
    let img: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 17) as f32 / 17.0).collect();
    let a = Augment::default();
    let (mut x1, mut x2, mut x3) = (img.clone(), img.clone(), img.clone());
    augment_image(&mut x1, 16, &s, &a, 42);
    augment_image(&mut x2, 16, &s, &a, 42);
    augment_image(&mut x3, 16, &s, &a, 43);
    assert_eq!(x1, x2);
    assert_ne!(x1, x3);
    assert_ne!(x1, img);
    let mut x4 = img.clone();
    augment_image(&mut x4, 16, &s, &Augment::none(), 42);
    assert_eq!(x4, img);
    // A flip alone mirrors each row exactly.
    let flip = Augment {
        flip: true,
        ..Augment::none()
    };
    let mut found = false;
    for key in 0..8 {
        let mut x = img.clone();
        augment_image(&mut x, 16, &s, &flip, key);
        if x != img {
            assert!((x[0] - img[15]).abs() < 1e-6 && (x[16] - img[31]).abs() < 1e-6);
            found = true;
        }
    }
    assert!(found);
}
