//! Model-level domain adaptation on small synthetic shifts (no assets): DANN unlearns a
//! target-only word that the pretrained model misreads as a class word and recovers most
//! of what fine-tuning on the source alone leaves on the table; SimCSE learns to tell unlabelled target
//! texts apart; AdaBN undoes an input shift that a network trained on the source cannot
//! see past; DANN on an image network at lambda 0 is source fine-tuning bit for bit, and
//! above it moves every layer and keeps the source task; bad input is refused with a
//! message naming it.

use ndarray::Array2;
use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};
use tl_backbone::{ImageInput, RawImage};
use tl_finetune::conv::Padding;
use tl_finetune::ops::{self, Threads};
use tl_finetune::{
    Batch, BertClassifier, BertConfig, BnMode, ConvNet, DomainMethod, FinetuneError,
    FinetuneParams, ImageParams, RunOptions, adabn, adapt_images, adapt_text, finetune_images,
    predict_images, sentence_vectors,
};
use tl_heads::{HeadConfig, HeadSpec, LogisticParams};

const TH: Threads = Threads(1);

/// `[CLS] class-word filler x 6 [SEP]`: the class word (3: negative, 4: positive)
/// decides the label; fillers (10..20) carry none. Target texts (`FALSE_FRIEND` given)
/// have that word three times in place of three fillers in every text, whatever the label.
fn texts(n: usize, false_friend: Option<u32>, seed: u64) -> (Vec<Vec<u32>>, Vec<usize>) {
    let u = |k: u64| ops::hash_uniform(seed, k);
    (0..n)
        .map(|i| {
            let y = i % 2;
            let mut s = vec![1, 3 + y as u32];
            for j in 0..6 {
                let word = match false_friend {
                    Some(w) if j < 3 => w,
                    _ => 10 + (u((i * 8 + j) as u64) * 10.0) as u32,
                };
                s.push(word);
            }
            s.push(2);
            (s, y)
        })
        .unzip()
}

/// A target-only word the pretrained model reads like the negative class word (its
/// embedding is a copy): a word whose general meaning misleads in the new domain.
const FALSE_FRIEND: u32 = 30;

fn vectors(model: &BertClassifier, seqs: &[Vec<u32>]) -> Array2<f32> {
    let v = sentence_vectors(model, seqs, 64, TH);
    Array2::from_shape_vec((seqs.len(), model.config.hidden_size), v).unwrap()
}

/// Accuracy on `(xt, yt)` of a logistic head trained on `(xs, ys)`.
fn head_accuracy(xs: &Array2<f32>, ys: &[usize], xt: &Array2<f32>, yt: &[usize]) -> f64 {
    let names = vec!["0".to_string(), "1".to_string()];
    let head = HeadConfig::new(HeadSpec::Logistic(LogisticParams::default()));
    let model = head.fit(xs.view(), ys, &names, None).unwrap();
    let pred = model.predict(xt.view()).unwrap();
    pred.iter().zip(yt).filter(|(p, y)| p == y).count() as f64 / yt.len() as f64
}

fn text_params() -> FinetuneParams {
    FinetuneParams {
        learning_rate: 1e-3,
        batch_size: 16,
        epochs: 6,
        dropout: 0.0,
        threads: 1,
        ..Default::default()
    }
}

fn base_model() -> BertClassifier {
    let mut m = BertClassifier::random(BertConfig::tiny(40, 16, 1, 2), 2, 11);
    m.init_classifier();
    let (at, h) = (m.slots.word.start, m.config.hidden_size);
    let negative = m.params[at + 3 * h..at + 4 * h].to_vec();
    let friend = at + FALSE_FRIEND as usize * h;
    m.params[friend..friend + h].copy_from_slice(&negative);
    m
}

#[test]
fn dann_recovers_most_of_a_false_friend_shift_that_source_fine_tuning_leaves() {
    let (xs, ys) = texts(160, None, 1);
    let (xt, yt) = texts(160, Some(FALSE_FRIEND), 2);
    let tuned = |lambda| {
        let mut m = base_model();
        let method = DomainMethod::Dann { lambda };
        let run = RunOptions::default();
        adapt_text(&mut m, method, &xs, &ys, &xt, &text_params(), &run).unwrap();
        m
    };
    // lambda 0: fine-tuning on the source alone.
    let (plain, dann) = (tuned(0.0), tuned(1.0));
    let score = |m: &BertClassifier| {
        let (vs, vt) = (vectors(m, &xs), vectors(m, &xt));
        // Source-trained head on the target; the bound trains on half the target's
        // labels and scores the other half.
        let half: Vec<usize> = (0..vt.nrows()).filter(|i| i % 4 < 2).collect();
        let rest: Vec<usize> = (0..vt.nrows()).filter(|i| i % 4 >= 2).collect();
        let pick = |x: &Array2<f32>, r: &[usize]| x.select(ndarray::Axis(0), r);
        let y = |r: &[usize]| r.iter().map(|&i| yt[i]).collect::<Vec<_>>();
        (
            head_accuracy(&vs, &ys, &vt, &yt),
            head_accuracy(&pick(&vt, &half), &y(&half), &pick(&vt, &rest), &y(&rest)),
        )
    };
    let (base_acc, base_bound) = score(&base_model());
    eprintln!("untuned {base_acc:.3} (bound {base_bound:.3})");
    let (plain_acc, plain_bound) = score(&plain);
    let (dann_acc, _) = score(&dann);
    eprintln!("source fine-tuning {plain_acc:.3} (bound {plain_bound:.3}), dann {dann_acc:.3}");
    let gap = plain_bound - plain_acc;
    assert!(
        gap > 0.1,
        "the shift must cost something: {plain_acc} vs {plain_bound}"
    );
    assert!(
        dann_acc - plain_acc > 0.5 * gap,
        "dann {dann_acc} recovers under half of the gap {plain_acc} -> {plain_bound}"
    );
}

/// Mean InfoNCE of the target texts, each with itself under two dropout masks.
fn info_nce(model: &BertClassifier, seqs: &[Vec<u32>]) -> f64 {
    let mut total = 0.0;
    let chunks: Vec<&[Vec<u32>]> = seqs.chunks(16).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let batch = Batch::pack(chunk.iter().flat_map(|s| [s.as_slice(), s.as_slice()]));
        let mut scratch = vec![0.0f32; model.params.len()];
        let drop = tl_finetune::DropoutSpec {
            hidden: 0.1,
            attention: 0.1,
            key: 99 + k as u64,
        };
        total += model
            .loss_and_grads_from(
                &batch,
                None,
                tl_finetune::Objective::InfoNce(0.05),
                Some(drop),
                0,
                &mut scratch,
                TH,
            )
            .loss as f64;
    }
    total / chunks.len() as f64
}

#[test]
fn simcse_learns_to_tell_unlabelled_target_texts_apart() {
    let (xt, _) = texts(160, Some(FALSE_FRIEND), 2);
    let (held_out, _) = texts(64, Some(FALSE_FRIEND), 3);
    let base = base_model();
    let params = FinetuneParams {
        dropout: 0.1,
        epochs: 3,
        learning_rate: 1e-3,
        ..text_params()
    };
    let tune = || {
        let mut m = base.clone();
        let method = DomainMethod::SimCse { temperature: 0.05 };
        let run = RunOptions::default();
        let report = adapt_text(&mut m, method, &[], &[], &xt, &params, &run).unwrap();
        (m, report)
    };
    let (tuned, report) = tune();
    let losses: Vec<f64> = report.epochs.iter().map(|e| e.train_loss).collect();
    let (before, after) = (info_nce(&base, &held_out), info_nce(&tuned, &held_out));
    eprintln!("simcse: training losses {losses:?}; held-out InfoNCE {before:.3} -> {after:.3}");
    assert!(losses[2] < losses[0]);
    assert!(after < 0.7 * before, "{before} -> {after}");
    // Same seed, same bits.
    let (again, _) = tune();
    assert!(
        again
            .params
            .iter()
            .zip(&tuned.params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn bad_domain_adaptation_input_is_refused_with_a_message() {
    let (xs, ys) = texts(8, None, 1);
    let (xt, _) = texts(8, Some(FALSE_FRIEND), 2);
    let run = RunOptions::default();
    let p = text_params();
    let err = |method, xs: &[Vec<u32>], ys: &[usize], xt: &[Vec<u32>], p: &FinetuneParams| {
        let mut m = base_model();
        match adapt_text(&mut m, method, xs, ys, xt, p, &run) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    };
    let dann = DomainMethod::Dann { lambda: 1.0 };
    let simcse = DomainMethod::SimCse { temperature: 0.05 };
    for (got, want) in [
        (err(dann, &xs, &ys, &xt[..1], &p), "at least 2 target texts"),
        (
            err(simcse, &[], &[], &xt[..1], &p),
            "at least 2 target texts",
        ),
        (
            err(dann, &xs, &ys[..4], &xt, &p),
            "source: 8 texts but 4 labels",
        ),
        (err(dann, &xs, &[5; 8], &xt, &p), "source: row 0: label 5"),
        (
            err(DomainMethod::Dann { lambda: -1.0 }, &xs, &ys, &xt, &p),
            "lambda must be in [0, 10]",
        ),
        (
            err(DomainMethod::SimCse { temperature: 0.0 }, &[], &[], &xt, &p),
            "temperature must be in (0, 1]",
        ),
        (
            err(
                dann,
                &xs,
                &ys,
                &xt,
                &FinetuneParams {
                    validation_fraction: 0.2,
                    ..text_params()
                },
            ),
            "no validation part",
        ),
        (
            err(
                simcse,
                &[],
                &[],
                &xt,
                &FinetuneParams {
                    strategy: tl_finetune::train::Strategy::Head,
                    ..text_params()
                },
            ),
            "strategy must be `full` or `top:N`",
        ),
        (
            err(simcse, &[], &[], &[vec![1; 600], vec![1, 2]], &p),
            "target row 0: 600 tokens",
        ),
        (
            err(simcse, &[], &[], &[vec![], vec![1, 2]], &p),
            "target row 0: 0 tokens",
        ),
    ] {
        assert!(got.contains(want), "{got:?} should say {want:?}");
    }
    // AdaBN needs two images per batch.
    let mut net = ConvNet::tiny(&[4], 8, 2, Padding::SameUpper, 0);
    let one = stripes(1, 1, false).0;
    let e: FinetuneError = adabn(&mut net, &one, &spec(), 32, TH).unwrap_err();
    assert!(e.to_string().contains("at least 2 target images"), "{e}");
}

fn spec() -> ImageSpec {
    ImageSpec {
        size: 12,
        resize: Resize::Stretch,
        pixel_max: 1.0,
        mean: [0.5; 3],
        std: [0.25; 3],
        layout: Layout::Nchw,
        channels: ChannelOrder::Rgb,
    }
}

/// Horizontal (class 0) or vertical (class 1) stripes with noise; `washed` is the
/// target domain: the same scenes at 15% of the contrast on a bright background.
fn stripes(n: usize, seed: u64, washed: bool) -> (Vec<ImageInput>, Vec<usize>) {
    let u = |k: u64| ops::hash_uniform(seed, k);
    (0..n)
        .map(|i| {
            let class = i % 2;
            let k = i as u64 * 1000;
            let phase = (u(k) * 4.0) as usize;
            let mut data = Vec::with_capacity(144 * 3);
            for y in 0..12 {
                for x in 0..12 {
                    let on = if class == 0 {
                        (y + phase) % 4 < 2
                    } else {
                        (x + phase) % 4 < 2
                    };
                    let v = if on { 200.0 } else { 40.0 } + u(k + 1 + (y * 12 + x) as u64) * 40.0;
                    let v = if washed { 200.0 + 0.15 * v } else { v };
                    data.extend([v.min(255.0) as u8; 3]);
                }
            }
            let img = ImageInput::Pixels(RawImage {
                width: 12,
                height: 12,
                channels: 3,
                data,
            });
            (img, class)
        })
        .unzip()
}

#[test]
fn adabn_undoes_a_contrast_shift_with_target_statistics_alone() {
    let (xs, ys) = stripes(160, 1, false);
    let (xt, yt) = stripes(160, 2, true);
    let mut net = ConvNet::tiny(&[8, 8], 16, 2, Padding::SameUpper, 0);
    let params = ImageParams {
        learning_rate: 1e-2,
        batch_size: 16,
        epochs: 4,
        threads: 1,
        batch_norm: BnMode::Batch,
        augment: tl_finetune::Augment::none(),
        dropout: 0.0,
        ..Default::default()
    };
    finetune_images(
        &mut net,
        &xs,
        &ys,
        &spec(),
        &params,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let acc = |net: &ConvNet, x: &[ImageInput], y: &[usize]| {
        let p = predict_images(net, x, &spec(), 32, TH).unwrap();
        p.iter().zip(y).filter(|(p, y)| p == y).count() as f64 / y.len() as f64
    };
    let source = acc(&net, &xs, &ys);
    let before = acc(&net, &xt, &yt);
    let weights = net.params.clone();
    adabn(&mut net, &xt, &spec(), 32, TH).unwrap();
    let after = acc(&net, &xt, &yt);
    eprintln!("adabn: source {source:.3}; target {before:.3} -> {after:.3}");
    assert!(source > 0.95, "{source}");
    assert!(before < 0.8, "the shift must cost something: {before}");
    assert!(
        after - before > 0.7 * (source - before),
        "{before} -> {after}"
    );
    // Statistics only: no weight moved.
    assert_eq!(weights, net.params);
}

fn image_params() -> ImageParams {
    ImageParams {
        learning_rate: 1e-2,
        batch_size: 16,
        epochs: 4,
        threads: 1,
        augment: tl_finetune::Augment::none(),
        dropout: 0.1,
        ..Default::default()
    }
}

/// Pooled features `[n, features]` of images under the network's running statistics.
fn image_vectors(net: &ConvNet, x: &[ImageInput]) -> Array2<f32> {
    let v = tl_finetune::image_features(net, x, &spec(), 32, TH).unwrap();
    Array2::from_shape_vec((x.len(), net.features), v).unwrap()
}

#[test]
fn image_dann_at_lambda_zero_is_source_fine_tuning_bit_for_bit() {
    let (xs, ys) = stripes(48, 1, false);
    let (xt, _) = stripes(48, 2, true);
    let p = image_params();
    let run = RunOptions::default();
    let mut plain = ConvNet::tiny(&[4, 8], 8, 2, Padding::SameUpper, 0);
    let mut adapted = plain.clone();
    finetune_images(&mut plain, &xs, &ys, &spec(), &p, &run, &mut |_, _| {}).unwrap();
    let dann = DomainMethod::Dann { lambda: 0.0 };
    adapt_images(&mut adapted, dann, &xs, &ys, &xt, &spec(), &p, &run).unwrap();
    assert_eq!(plain.params, adapted.params);
    assert_eq!(plain.stats, adapted.stats);
}

#[test]
fn image_dann_moves_the_network_and_keeps_the_source_task() {
    let (xs, ys) = stripes(160, 1, false);
    let (xt, _) = stripes(160, 2, true);
    let run = RunOptions::default();
    let tuned = |lambda| {
        let mut net = ConvNet::tiny(&[8, 8], 16, 2, Padding::SameUpper, 0);
        let dann = DomainMethod::Dann { lambda };
        adapt_images(
            &mut net,
            dann,
            &xs,
            &ys,
            &xt,
            &spec(),
            &image_params(),
            &run,
        )
        .unwrap();
        net
    };
    let (plain, dann) = (tuned(0.0), tuned(1.0));
    let source =
        |net: &ConvNet| head_accuracy(&image_vectors(net, &xs), &ys, &image_vectors(net, &xs), &ys);
    // The reversed domain gradient reaches every layer (the classifier's weights only
    // see it through the features), and the source task survives it.
    let moved = |range: std::ops::Range<usize>| {
        plain.params[range.clone()]
            .iter()
            .zip(&dann.params[range])
            .any(|(a, b)| a != b)
    };
    for slot in &plain.slots {
        assert!(moved(slot.range.clone()), "{} did not move", slot.name);
    }
    assert!(source(&plain) > 0.95 && source(&dann) > 0.95);
}

#[test]
fn bad_image_domain_adaptation_input_is_refused_with_a_message() {
    let (xs, ys) = stripes(8, 1, false);
    let (xt, _) = stripes(8, 2, true);
    let run = RunOptions::default();
    let dann = DomainMethod::Dann { lambda: 1.0 };
    let err = |method, xs: &[ImageInput], ys: &[usize], xt: &[ImageInput], p: &ImageParams| {
        let mut net = ConvNet::tiny(&[4], 8, 2, Padding::SameUpper, 0);
        match tl_finetune::adapt_images(&mut net, method, xs, ys, xt, &spec(), p, &run) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    };
    let p = image_params();
    for (got, want) in [
        (
            err(dann, &xs, &ys, &xt[..1], &p),
            "at least 2 target images",
        ),
        (
            err(dann, &xs, &ys[..4], &xt, &p),
            "source: 8 images but 4 labels",
        ),
        (err(dann, &xs, &[5; 8], &xt, &p), "source: row 0: label 5"),
        (
            err(
                DomainMethod::SimCse { temperature: 0.05 },
                &xs,
                &ys,
                &xt,
                &p,
            ),
            "simcse tunes text encoders",
        ),
        (
            err(
                dann,
                &xs,
                &ys,
                &xt,
                &ImageParams {
                    validation_fraction: 0.2,
                    ..image_params()
                },
            ),
            "no validation part",
        ),
        (
            err(
                dann,
                &xs,
                &ys,
                &xt,
                &ImageParams {
                    strategy: tl_finetune::train::Strategy::Head,
                    ..image_params()
                },
            ),
            "strategy must be `full` or `top:N`",
        ),
        (
            err(
                dann,
                &xs,
                &ys,
                &xt,
                &ImageParams {
                    resolution: Some(2),
                    ..image_params()
                },
            ),
            "resolution",
        ),
    ] {
        assert!(got.contains(want), "{got:?} should say {want:?}");
    }
}
