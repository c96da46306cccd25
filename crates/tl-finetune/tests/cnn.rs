//! The convolutional engine: finite-difference gradient checks of every parameter of a
//! small network (dense and depthwise convolutions, strides 1 and 2, kernels 3 and 5,
//! both paddings, BatchNorm with frozen and with batch statistics, ReLU6, residuals,
//! pooling, dropout, classifier), and training to high accuracy on a synthetic task.

use tl_finetune::Threads;
use tl_finetune::cnn::ConvNet;
use tl_finetune::conv::{self, Padding};

const TH: Threads = Threads(2);

/// Deterministic pseudo-random images `[n, 3, h, w]` in about [-1, 1].
fn images(n: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    (0..n * 3 * h * w)
        .map(|i| tl_finetune::ops::hash_uniform(seed, i as u64) * 2.0 - 1.0)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn loss(
    net: &mut ConvNet,
    x: &[f32],
    n: usize,
    hw: (usize, usize),
    labels: &[usize],
    first: usize,
    batch_stats: bool,
    dropout: f32,
) -> (f64, Vec<f32>) {
    let stats = net.stats.clone();
    let xin = conv::nchw_to_chwn(x, n, 3, hw.0 * hw.1);
    let (xin, hw1) = net.forward_blocks(xin, n, hw, 0..first, TH);
    let (logits, acts) = net.forward_train(xin, n, hw1, first, batch_stats, dropout, 7, TH);
    let mut d = vec![0.0f32; logits.len()];
    let l = tl_finetune::ops::cross_entropy(&logits, labels, net.classes, &mut d);
    let mut grads = vec![0.0f32; net.params.len()];
    net.backward(&acts, &d, first, &mut grads, TH);
    // Running statistics move in batch mode; put them back so every evaluation of the
    // loss sees the same network.
    net.stats = stats;
    (l as f64, grads)
}

fn check(pad: Padding, batch_stats: bool, first: usize, dropout: f32) {
    let mut net = ConvNet::tiny(&[6, 6, 8], 10, 3, pad, 1);
    let (n, hw) = (4, (11, 9));
    let x = images(n, hw.0, hw.1, 3);
    // Running statistics near this batch's own (momentum 1 copies them), then moved a
    // little: frozen mode is then not the identity, and activations stay in ReLU6's
    // range instead of piling up at its kinks, where finite differences are meaningless.
    net.bn_momentum = 1.0;
    let xin = conv::nchw_to_chwn(&x, n, 3, hw.0 * hw.1);
    net.forward_train(xin, n, hw, 0, true, 0.0, 0, TH);
    net.bn_momentum = 0.1;
    for (name, r) in net.stat_names.clone() {
        for i in r {
            let f = 1.0 + 0.2 * ((i % 5) as f32 - 2.0) / 2.0;
            if name.ends_with("running_var") {
                net.stats[i] *= f;
            } else {
                net.stats[i] += 0.05 * (f - 1.0);
            }
        }
    }
    let labels = [0, 2, 1, 2];
    let (_, grads) = loss(&mut net, &x, n, hw, &labels, first, batch_stats, dropout);
    let slots = net.slots.clone();
    let mut worst = 0.0f64;
    for slot in &slots {
        let trainable = slot.depth >= first;
        let g = &grads[slot.range.clone()];
        if !trainable {
            assert!(
                g.iter().all(|&v| v == 0.0),
                "{} is frozen but got a gradient",
                slot.name
            );
            continue;
        }
        assert!(g.iter().any(|&v| v != 0.0), "{} got no gradient", slot.name);
        // A few entries per tensor, spread over it.
        let len = slot.range.len();
        for k in [0, len / 3, len / 2, len - 1] {
            let i = slot.range.start + k;
            let orig = net.params[i];
            // Small enough to rarely cross a ReLU6 kink (a step of 1e-2 crosses several
            // in a network this small), large enough for f32 forward passes.
            let eps = 1e-4f32;
            net.params[i] = orig + eps;
            let (lp, _) = loss(&mut net, &x, n, hw, &labels, first, batch_stats, dropout);
            net.params[i] = orig - eps;
            let (lm, _) = loss(&mut net, &x, n, hw, &labels, first, batch_stats, dropout);
            net.params[i] = orig;
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = grads[i] as f64;
            // Relative error, with a floor for the f32 rounding of the loss (~1e-7 / eps).
            let err = (fd - an).abs() / (0.05 * fd.abs().max(an.abs()) + 1e-3);
            worst = worst.max(err);
            assert!(
                err < 1.0,
                "{}[{k}]: analytic {an:.6e}, finite difference {fd:.6e}",
                slot.name
            );
        }
    }
    assert!(worst < 1.0);
}

#[test]
fn gradients_match_finite_differences_with_frozen_batchnorm() {
    check(Padding::Symmetric, false, 0, 0.0);
}

#[test]
fn gradients_match_finite_differences_with_batch_statistics() {
    check(Padding::Symmetric, true, 0, 0.0);
}

#[test]
fn gradients_match_with_same_padding_and_dropout() {
    check(Padding::SameUpper, false, 0, 0.3);
}

#[test]
fn frozen_lower_blocks_get_no_gradient() {
    check(Padding::SameUpper, true, 2, 0.0);
}

#[test]
fn same_padding_puts_the_extra_pixel_at_the_end() {
    let s = conv::ConvShape {
        n: 1,
        cin: 1,
        cout: 1,
        h: 6,
        w: 7,
        k: 3,
        stride: 2,
        padding: Padding::SameUpper,
    };
    // 6 rows, stride 2: 3 outputs, total pad 1, all of it after the last row.
    assert_eq!(s.out_hw(), (3, 4));
    assert_eq!(s.pad_before(6), 0);
    assert_eq!(s.pad_before(7), 1);
    let sym = conv::ConvShape {
        padding: Padding::Symmetric,
        ..s
    };
    assert_eq!(sym.out_hw(), (3, 4));
    assert_eq!(sym.pad_before(6), 1);
}
