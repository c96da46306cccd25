//! Every hand-written backward pass against central finite differences, op by op and
//! through the whole model (dropout included), and the failure the issue names: a
//! parameter that silently receives no gradient.

use tl_finetune::ops::{self, Threads};
use tl_finetune::{Batch, BertClassifier, BertConfig, DropoutSpec};

const TH: Threads = Threads(1);

/// A deterministic pseudo-random vector in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| 2.0 * ops::hash_uniform(seed, i as u64) - 1.0)
        .collect()
}

/// Checks `analytic` against central differences of `f` at `x` on every coordinate.
fn check(name: &str, x: &[f32], analytic: &[f32], f: impl Fn(&[f32]) -> f64, h: f32, tol: f64) {
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        xp[i] += h;
        let mut xm = x.to_vec();
        xm[i] -= h;
        let fd = (f(&xp) - f(&xm)) / (2.0 * h as f64);
        let a = analytic[i] as f64;
        let err = (a - fd).abs() / (a.abs().max(fd.abs()) + 1e-3);
        worst = worst.max(err);
        assert!(
            err < tol,
            "{name}[{i}]: analytic {a:.6e} vs finite difference {fd:.6e}"
        );
    }
    eprintln!(
        "{name}: worst relative error {worst:.2e} over {} coordinates",
        x.len()
    );
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (n, di, dout) = (5, 4, 3);
    let x = noise(n * di, 1);
    let w = noise(dout * di, 2);
    let b = noise(dout, 3);
    let r = noise(n * dout, 4); // the loss is <r, y>
    let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; n * dout];
        ops::linear_forward(x, w, b, &mut y, n, di, dout, TH);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; n * di];
    let mut dw = vec![0.0; dout * di];
    let mut db = vec![0.0; dout];
    ops::linear_backward(&x, &w, &r, Some(&mut dx), &mut dw, &mut db, n, di, dout, TH);
    check("linear dx", &x, &dx, |x| fwd(x, &w, &b), 1e-2, 1e-3);
    check("linear dw", &w, &dw, |w| fwd(&x, w, &b), 1e-2, 1e-3);
    check("linear db", &b, &db, |b| fwd(&x, &w, b), 1e-2, 1e-3);
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let (n, d) = (4, 6);
    let x: Vec<f32> = noise(n * d, 5).iter().map(|v| v * 3.0).collect();
    let g = noise(d, 6);
    let b = noise(d, 7);
    let r = noise(n * d, 8);
    let fwd = |x: &[f32], g: &[f32], b: &[f32]| {
        let (mut y, mut xh, mut rs) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n]);
        ops::layer_norm_forward(x, g, b, 1e-12, &mut y, &mut xh, &mut rs, d);
        dot(&y, &r)
    };
    let (mut y, mut xh, mut rs) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n]);
    ops::layer_norm_forward(&x, &g, &b, 1e-12, &mut y, &mut xh, &mut rs, d);
    let (mut dx, mut dg, mut db) = (vec![0.0; n * d], vec![0.0; d], vec![0.0; d]);
    ops::layer_norm_backward(&r, &xh, &rs, &g, &mut dx, &mut dg, &mut db, d);
    check("layernorm dx", &x, &dx, |x| fwd(x, &g, &b), 1e-2, 2e-3);
    check("layernorm dgamma", &g, &dg, |g| fwd(&x, g, &b), 1e-2, 1e-3);
    check("layernorm dbeta", &b, &db, |b| fwd(&x, &g, b), 1e-2, 1e-3);
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let x: Vec<f32> = noise(40, 9).iter().map(|v| v * 4.0).collect();
    let r = noise(40, 10);
    let fwd = |x: &[f32]| {
        let mut y = vec![0.0; x.len()];
        ops::gelu_forward(x, &mut y);
        dot(&y, &r)
    };
    let mut d = r.clone();
    ops::gelu_backward(&x, &mut d);
    check("gelu", &x, &d, fwd, 1e-2, 1e-2);
}

#[test]
fn softmax_and_cross_entropy_backward_match_finite_differences() {
    let cols = 5;
    let s = noise(3 * cols, 11);
    let r = noise(3 * cols, 12);
    let fwd = |s: &[f32]| {
        let mut p = s.to_vec();
        ops::softmax_rows(&mut p, cols);
        dot(&p, &r)
    };
    let mut p = s.clone();
    ops::softmax_rows(&mut p, cols);
    let mut d = r.clone();
    ops::softmax_rows_backward(&p, &mut d, cols);
    check("softmax", &s, &d, fwd, 1e-2, 1e-3);

    let labels = [0usize, 3, 4];
    let mut dl = vec![0.0; s.len()];
    ops::cross_entropy(&s, &labels, cols, &mut dl);
    let ce = |s: &[f32]| {
        let mut scratch = vec![0.0; s.len()];
        ops::cross_entropy(s, &labels, cols, &mut scratch) as f64
    };
    check("cross-entropy", &s, &dl, ce, 1e-2, 1e-3);
}

fn tiny() -> (BertClassifier, Batch, Vec<usize>) {
    let mut model = BertClassifier::random(BertConfig::tiny(12, 8, 2, 2), 3, 42);
    // Larger weights than BERT's 0.02 so every path carries a measurable gradient.
    for (i, v) in model.params.iter_mut().enumerate() {
        *v += 0.3 * (2.0 * ops::hash_uniform(77, i as u64) - 1.0);
    }
    let batch = Batch::pack([&[1u32, 5, 7, 2][..], &[1, 9, 2], &[1, 3, 4, 11, 6, 2]]);
    (model, batch, vec![0, 2, 1])
}

/// The whole model, every slot, with dropout on: the three largest analytic gradients
/// of each tensor and two more coordinates must match finite differences.
#[test]
fn whole_model_gradient_matches_finite_differences_with_dropout() {
    let (model, batch, labels) = tiny();
    let drop = Some(DropoutSpec {
        hidden: 0.1,
        attention: 0.1,
        key: 1234,
    });
    let mut grads = vec![0.0f32; model.params.len()];
    model.loss_and_grads(&batch, &labels, drop, 0, &mut grads, TH);
    let loss_at = |params: &[f32]| {
        let mut m = model.clone();
        m.params.copy_from_slice(params);
        let mut scratch = vec![0.0f32; params.len()];
        m.loss_and_grads(&batch, &labels, drop, 0, &mut scratch, TH)
            .loss as f64
    };
    let h = 3e-3f32;
    for slot in &model.slots.all {
        let r = slot.range.clone();
        let mut idx: Vec<usize> = r.clone().collect();
        idx.sort_by(|&a, &b| grads[b].abs().total_cmp(&grads[a].abs()));
        let mut picks: Vec<usize> = idx.iter().take(3).copied().collect();
        picks.push(r.start + (r.len() / 3));
        picks.push(r.end - 1);
        for i in picks {
            let mut p = model.params.clone();
            p[i] += h;
            let up = loss_at(&p);
            p[i] -= 2.0 * h;
            let down = loss_at(&p);
            let fd = (up - down) / (2.0 * h as f64);
            let a = grads[i] as f64;
            let err = (a - fd).abs();
            assert!(
                err <= 2e-2 * a.abs().max(fd.abs()) + 3e-4,
                "{} [{}]: analytic {a:.5e} vs finite difference {fd:.5e}",
                slot.name,
                i - r.start
            );
        }
    }
}

/// The defect found in candle's BERT: a gradient that stops at LayerNorm so only the
/// head learns. Here every tensor gets a gradient, and frozen ones none.
#[test]
fn every_trainable_tensor_gets_a_gradient_and_frozen_ones_none() {
    let (model, batch, labels) = tiny();
    let mut grads = vec![0.0f32; model.params.len()];
    model.loss_and_grads(&batch, &labels, None, 0, &mut grads, TH);
    for slot in &model.slots.all {
        let g = &grads[slot.range.clone()];
        assert!(
            g.iter().any(|v| *v != 0.0),
            "{} received no gradient",
            slot.name
        );
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{} has a non-finite gradient",
            slot.name
        );
    }
    let trainable = model
        .slots
        .all
        .iter()
        .filter(|s| grads[s.range.clone()].iter().any(|v| *v != 0.0))
        .count();
    assert_eq!(trainable, model.slots.all.len());

    // top:1 of 2 layers: first trainable depth 2 (layer index 1).
    let mut grads = vec![0.0f32; model.params.len()];
    model.loss_and_grads(&batch, &labels, None, 2, &mut grads, TH);
    for slot in &model.slots.all {
        let any = grads[slot.range.clone()].iter().any(|v| *v != 0.0);
        assert_eq!(any, slot.depth >= 2, "{} (depth {})", slot.name, slot.depth);
    }
}

/// Packing is the same function as padding: a sequence's output does not depend on
/// what else is in the batch.
#[test]
fn a_sequence_encodes_the_same_alone_and_in_a_batch() {
    let (model, _, _) = tiny();
    let a = [1u32, 5, 7, 2];
    let b = [1u32, 3, 4, 11, 6, 9, 9, 2];
    let alone = model.sentence_vectors(&Batch::pack([&a[..]]), TH);
    let both = model.sentence_vectors(&Batch::pack([&b[..], &a[..]]), TH);
    let h = model.config.hidden_size;
    for (x, y) in alone.iter().zip(&both[h..]) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
}

/// Starting from cached frozen states is the same computation as running the frozen part.
#[test]
fn gradients_from_frozen_states_equal_a_full_pass() {
    let (model, batch, labels) = tiny();
    for first in 1..=3 {
        let mut a = vec![0.0f32; model.params.len()];
        let mut b = vec![0.0f32; model.params.len()];
        let la = model
            .loss_and_grads(&batch, &labels, None, first, &mut a, TH)
            .loss;
        let states = model.frozen_states(&batch, first, TH);
        let lb = model
            .loss_and_grads_from(
                &batch,
                Some(states),
                tl_finetune::Objective::Classify(&labels),
                None,
                first,
                &mut b,
                TH,
            )
            .loss;
        assert_eq!(la.to_bits(), lb.to_bits());
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "first trainable {first}"
        );
    }
}

#[test]
fn cosine_pairs_loss_matches_finite_differences() {
    let h = 6;
    let pooled = noise(4 * h, 20);
    let targets = [1.0f32, 0.0];
    let mut d = vec![0.0; pooled.len()];
    ops::cosine_pairs_loss(&pooled, &targets, h, &mut d);
    let f = |x: &[f32]| {
        let mut scratch = vec![0.0; x.len()];
        ops::cosine_pairs_loss(x, &targets, h, &mut scratch) as f64
    };
    check("cosine pairs", &pooled, &d, f, 1e-2, 2e-3);
}

#[test]
fn info_nce_loss_matches_finite_differences() {
    let h = 5;
    // Three texts, two views each (rows 2k and 2k+1).
    let pooled = noise(6 * h, 21);
    let mut d = vec![0.0; pooled.len()];
    let loss = ops::info_nce_loss(&pooled, h, 0.5, &mut d);
    assert!(loss > 0.0 && loss.is_finite());
    let f = |x: &[f32]| {
        let mut scratch = vec![0.0; x.len()];
        ops::info_nce_loss(x, h, 0.5, &mut scratch) as f64
    };
    check("info-nce", &pooled, &d, f, 1e-2, 2e-3);
    // Views that already match their partner and nothing else cost almost nothing.
    let mut aligned = vec![0.0f32; 6 * h];
    for k in 0..3 {
        aligned[2 * k * h + k] = 1.0;
        aligned[(2 * k + 1) * h + k] = 1.0;
    }
    let mut scratch = vec![0.0; aligned.len()];
    assert!(ops::info_nce_loss(&aligned, h, 0.05, &mut scratch) < 1e-6);
    // One text has nothing to be contrasted with.
    assert_eq!(
        ops::info_nce_loss(&pooled[..2 * h], h, 0.5, &mut scratch[..2 * h]),
        0.0
    );
}

/// The contrastive objective through the whole model.
#[test]
fn whole_model_gradient_under_the_pair_objective() {
    let (model, _, _) = tiny();
    let batch = Batch::pack([
        &[1u32, 5, 7, 2][..],
        &[1, 9, 2],
        &[1, 3, 4, 11, 6, 2],
        &[1, 8, 8, 2],
    ]);
    let targets = [1.0f32, 0.0];
    let obj = || tl_finetune::Objective::CosinePairs(&targets);
    let mut grads = vec![0.0f32; model.params.len()];
    model.loss_and_grads_from(&batch, None, obj(), None, 0, &mut grads, TH);
    let loss_at = |params: &[f32]| {
        let mut m = model.clone();
        m.params.copy_from_slice(params);
        let mut scratch = vec![0.0f32; params.len()];
        m.loss_and_grads_from(&batch, None, obj(), None, 0, &mut scratch, TH)
            .loss as f64
    };
    let h = 3e-3f32;
    for slot in model
        .slots
        .all
        .iter()
        .filter(|s| !s.name.starts_with("classifier"))
    {
        let mut idx: Vec<usize> = slot.range.clone().collect();
        idx.sort_by(|&a, &b| grads[b].abs().total_cmp(&grads[a].abs()));
        assert!(grads[idx[0]] != 0.0, "{} received no gradient", slot.name);
        for &i in idx.iter().take(2) {
            let mut p = model.params.clone();
            p[i] += h;
            let up = loss_at(&p);
            p[i] -= 2.0 * h;
            let fd = (up - loss_at(&p)) / (2.0 * h as f64);
            let a = grads[i] as f64;
            assert!(
                (a - fd).abs() <= 2e-2 * a.abs().max(fd.abs()) + 3e-4,
                "{}: {a:.5e} vs {fd:.5e}",
                slot.name
            );
        }
    }
}
