//! A BERT encoder with a pooling + linear classifier on top, trained by hand-written
//! backward passes over one flat parameter buffer.
//!
//! Sequences of a batch are *packed*: their tokens are concatenated (no padding), the
//! dense layers run once over all tokens and attention runs per sequence over its own
//! length. That is the same function as a padded, masked BERT (masked keys get weight
//! exactly 0 there), without the padded tokens' work.

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ops::{self, Threads, mat, mat_mut};

/// The shape of a BERT encoder (the fields of a transformers `config.json` that matter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` must divide by it).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// Token-type (segment) vocabulary.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// A tiny configuration for tests and examples.
    pub fn tiny(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize) -> Self {
        BertConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden_size,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Checks the shape is usable; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Where one layer's parameters sit in the flat buffer.
#[derive(Debug, Clone)]
pub struct LayerSlots {
    /// Query, key and value weights stacked `[3H, H]` (PyTorch `[out, in]` order).
    pub qkv_w: Range<usize>,
    /// Query, key and value biases `[3H]`.
    pub qkv_b: Range<usize>,
    /// Attention output projection `[H, H]`.
    pub ao_w: Range<usize>,
    /// Its bias.
    pub ao_b: Range<usize>,
    /// LayerNorm after attention: scale.
    pub ln1_g: Range<usize>,
    /// LayerNorm after attention: shift.
    pub ln1_b: Range<usize>,
    /// Feed-forward up projection `[I, H]`.
    pub i_w: Range<usize>,
    /// Its bias.
    pub i_b: Range<usize>,
    /// Feed-forward down projection `[H, I]`.
    pub o_w: Range<usize>,
    /// Its bias.
    pub o_b: Range<usize>,
    /// LayerNorm after the feed-forward block: scale.
    pub ln2_g: Range<usize>,
    /// LayerNorm after the feed-forward block: shift.
    pub ln2_b: Range<usize>,
}

/// One named tensor of the flat buffer, with what the optimiser needs to know about it.
#[derive(Debug, Clone)]
pub struct Slot {
    /// transformers-style name (`encoder.layer.3.attention.self.query.weight`, ...).
    pub name: String,
    /// Range in the flat buffer.
    pub range: Range<usize>,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Weight decay applies (weights yes; biases and LayerNorm no).
    pub decay: bool,
    /// 0 = embeddings, 1..=L = transformer layers, L + 1 = the classifier.
    pub depth: usize,
}

/// Where every tensor sits in the flat buffer.
#[derive(Debug, Clone)]
pub struct Slots {
    /// Word embeddings `[V, H]`.
    pub word: Range<usize>,
    /// Position embeddings `[P, H]`.
    pub pos: Range<usize>,
    /// Token-type embeddings `[T, H]`.
    pub typ: Range<usize>,
    /// Embedding LayerNorm scale.
    pub emb_g: Range<usize>,
    /// Embedding LayerNorm shift.
    pub emb_b: Range<usize>,
    /// The transformer layers, bottom first.
    pub layers: Vec<LayerSlots>,
    /// Classifier weights `[C, H]`.
    pub cls_w: Range<usize>,
    /// Classifier bias `[C]`.
    pub cls_b: Range<usize>,
    /// Every tensor by name, in buffer order.
    pub all: Vec<Slot>,
    /// Total parameter count.
    pub len: usize,
}

impl Slots {
    /// Lays out a model of this shape with `classes` outputs.
    pub fn new(c: &BertConfig, classes: usize) -> Slots {
        let h = c.hidden_size;
        let i = c.intermediate_size;
        let mut all = Vec::new();
        let mut at = 0usize;
        let mut take = |name: String, shape: Vec<usize>, decay: bool, depth: usize| {
            let n: usize = shape.iter().product();
            let r = at..at + n;
            at += n;
            all.push(Slot {
                name,
                range: r.clone(),
                shape,
                decay,
                depth,
            });
            r
        };
        let word = take(
            "embeddings.word_embeddings.weight".into(),
            vec![c.vocab_size, h],
            true,
            0,
        );
        let pos = take(
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, h],
            true,
            0,
        );
        let typ = take(
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, h],
            true,
            0,
        );
        let emb_g = take("embeddings.LayerNorm.weight".into(), vec![h], false, 0);
        let emb_b = take("embeddings.LayerNorm.bias".into(), vec![h], false, 0);
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            let d = l + 1;
            // Query, key and value are stored stacked so one product computes all three;
            // their transformers names are kept for import and export.
            let qkv_w = take(
                format!("{p}attention.self.qkv.weight"),
                vec![3 * h, h],
                true,
                d,
            );
            let qkv_b = take(format!("{p}attention.self.qkv.bias"), vec![3 * h], false, d);
            let ao_w = take(
                format!("{p}attention.output.dense.weight"),
                vec![h, h],
                true,
                d,
            );
            let ao_b = take(format!("{p}attention.output.dense.bias"), vec![h], false, d);
            let ln1_g = take(
                format!("{p}attention.output.LayerNorm.weight"),
                vec![h],
                false,
                d,
            );
            let ln1_b = take(
                format!("{p}attention.output.LayerNorm.bias"),
                vec![h],
                false,
                d,
            );
            let i_w = take(format!("{p}intermediate.dense.weight"), vec![i, h], true, d);
            let i_b = take(format!("{p}intermediate.dense.bias"), vec![i], false, d);
            let o_w = take(format!("{p}output.dense.weight"), vec![h, i], true, d);
            let o_b = take(format!("{p}output.dense.bias"), vec![h], false, d);
            let ln2_g = take(format!("{p}output.LayerNorm.weight"), vec![h], false, d);
            let ln2_b = take(format!("{p}output.LayerNorm.bias"), vec![h], false, d);
            layers.push(LayerSlots {
                qkv_w,
                qkv_b,
                ao_w,
                ao_b,
                ln1_g,
                ln1_b,
                i_w,
                i_b,
                o_w,
                o_b,
                ln2_g,
                ln2_b,
            });
        }
        let top = c.num_hidden_layers + 1;
        let cls_w = take("classifier.weight".into(), vec![classes, h], true, top);
        let cls_b = take("classifier.bias".into(), vec![classes], false, top);
        Slots {
            word,
            pos,
            typ,
            emb_g,
            emb_b,
            layers,
            cls_w,
            cls_b,
            all,
            len: at,
        }
    }
}

/// A batch of token sequences, packed end to end.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Token ids of all sequences, concatenated.
    pub ids: Vec<u32>,
    /// Start of each sequence in `ids`, plus the total at the end (`len = B + 1`).
    pub offsets: Vec<usize>,
}

impl Batch {
    /// Packs sequences (each non-empty).
    pub fn pack<'a>(seqs: impl IntoIterator<Item = &'a [u32]>) -> Batch {
        let mut b = Batch {
            ids: Vec::new(),
            offsets: vec![0],
        };
        for s in seqs {
            b.ids.extend_from_slice(s);
            b.offsets.push(b.ids.len());
        }
        b
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    fn seq(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }
}

/// Dropout probabilities and the key their masks are drawn from.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSpec {
    /// On hidden states (embeddings, attention output, feed-forward output).
    pub hidden: f32,
    /// On attention probabilities.
    pub attention: f32,
    /// Seed of this step's masks.
    pub key: u64,
}

/// What a training step minimises.
pub enum Objective<'a> {
    /// Cross-entropy of the linear classifier on the pooled vectors, one label per
    /// sequence.
    Classify(&'a [usize]),
    /// Sequences come in pairs (0 with 1, 2 with 3, ...): squared error between the
    /// cosine of each pair's pooled vectors and its target (SetFit's
    /// CosineSimilarityLoss). The classifier is not used.
    CosinePairs(&'a [f32]),
    /// Sequences come in pairs, each the same text twice: the two dropout masks make
    /// two views, and SimCSE's InfoNCE ([`ops::info_nce_loss`]) at this temperature
    /// pulls them together and the other texts apart. The classifier is not used.
    InfoNce(f32),
    /// Any loss of the pooled vectors `[B, H]`: the function writes the loss's gradient
    /// w.r.t. them into its second argument and returns the loss. The model's classifier
    /// is not used; heads the loss trains belong to the caller (DANN's label and domain
    /// classifiers).
    Pooled(&'a mut dyn FnMut(&[f32], &mut [f32]) -> f32),
}

/// The loss of one training step and where its time went.
#[derive(Debug, Clone, Copy)]
pub struct StepOutput {
    /// Mean cross-entropy of the batch.
    pub loss: f32,
    /// Seconds in the forward pass (up to the loss).
    pub forward_seconds: f64,
    /// Seconds in the backward pass.
    pub backward_seconds: f64,
}

/// A BERT encoder with a classifier, its weights in one flat buffer.
#[derive(Debug, Clone)]
pub struct BertClassifier {
    /// Shape.
    pub config: BertConfig,
    /// Number of classes of the linear head.
    pub classes: usize,
    /// Where each tensor sits.
    pub slots: Slots,
    /// All weights, laid out by `slots`.
    pub params: Vec<f32>,
}

struct LayerCache {
    x_in: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    pmask: Option<Vec<f32>>,
    ctx: Vec<f32>,
    mask1: Option<Vec<f32>>,
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    x1: Vec<f32>,
    inter_pre: Vec<f32>,
    inter: Vec<f32>,
    mask2: Option<Vec<f32>>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
}

struct EmbCache {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    mask: Option<Vec<f32>>,
}

/// A raw pointer that may cross threads; each task writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only where every task writes a region no other task touches.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the wrapper (Send + Sync), not the field.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// Offsets of each (sequence, head) score matrix in a layer's probability buffer.
fn score_offsets(batch: &Batch, heads: usize) -> (Vec<(usize, usize, usize)>, usize) {
    let mut out = Vec::with_capacity(batch.len() * heads);
    let mut at = 0;
    for s in 0..batch.len() {
        let l = batch.seq(s).len();
        for h in 0..heads {
            out.push((s, h, at));
            at += l * l;
        }
    }
    (out, at)
}

impl BertClassifier {
    /// A model with every weight drawn from N(0, 0.02²) (LayerNorm 1 and 0, biases 0),
    /// as BERT initialises; deterministic in `seed`.
    pub fn random(config: BertConfig, classes: usize, seed: u64) -> BertClassifier {
        let slots = Slots::new(&config, classes);
        let mut params = vec![0.0f32; slots.len];
        for slot in &slots.all {
            let p = &mut params[slot.range.clone()];
            if slot.name.ends_with("LayerNorm.weight") {
                p.fill(1.0);
            } else if slot.shape.len() == 2 {
                let key = seed ^ crate::train::fnv(&slot.name);
                for (i, v) in p.iter_mut().enumerate() {
                    *v = 0.02 * normal(key, i);
                }
            }
        }
        BertClassifier {
            config,
            classes,
            slots,
            params,
        }
    }

    /// Draws the classifier's weights from N(0, 0.02²) with a fixed key and zeroes its
    /// bias, as transformers initialises a new head. (A zero head would pass no gradient
    /// to the encoder on the first step.)
    pub fn init_classifier(&mut self) {
        let key = crate::train::fnv("classifier.weight");
        let r = self.slots.cls_w.clone();
        for (i, v) in self.params[r].iter_mut().enumerate() {
            *v = normal(key, i) * 0.02;
        }
        let b = self.slots.cls_b.clone();
        self.params[b].fill(0.0);
    }

    fn p(&self, r: &Range<usize>) -> &[f32] {
        &self.params[r.clone()]
    }

    /// Embedding layer: word + position + type 0, then LayerNorm (and dropout).
    fn embed(&self, batch: &Batch, drop: Option<DropoutSpec>) -> (Vec<f32>, EmbCache) {
        let h = self.config.hidden_size;
        let n = batch.tokens();
        let mut e = vec![0.0f32; n * h];
        let word = self.p(&self.slots.word);
        let pos = self.p(&self.slots.pos);
        let typ = &self.p(&self.slots.typ)[..h];
        for s in 0..batch.len() {
            for (t, tok) in batch.seq(s).enumerate() {
                let id = batch.ids[tok] as usize;
                let row = &mut e[tok * h..(tok + 1) * h];
                let w = &word[id * h..(id + 1) * h];
                let p = &pos[t * h..(t + 1) * h];
                for j in 0..h {
                    row[j] = w[j] + p[j] + typ[j];
                }
            }
        }
        let mut y = vec![0.0f32; n * h];
        let mut xhat = vec![0.0f32; n * h];
        let mut rstd = vec![0.0f32; n];
        ops::layer_norm_forward(
            &e,
            self.p(&self.slots.emb_g),
            self.p(&self.slots.emb_b),
            self.config.layer_norm_eps,
            &mut y,
            &mut xhat,
            &mut rstd,
            h,
        );
        let mask = drop
            .filter(|d| d.hidden > 0.0)
            .map(|d| ops::dropout(&mut y, d.hidden, d.key ^ 0xE0));
        (y, EmbCache { xhat, rstd, mask })
    }

    fn layer_forward(
        &self,
        l: usize,
        x_in: Vec<f32>,
        batch: &Batch,
        drop: Option<DropoutSpec>,
        th: Threads,
    ) -> (Vec<f32>, LayerCache) {
        let c = &self.config;
        let s = &self.slots.layers[l];
        let (h, i, n) = (c.hidden_size, c.intermediate_size, batch.tokens());
        let key = drop.map(|d| d.key ^ ((l as u64 + 1) << 32));
        let mut qkv = vec![0.0f32; n * 3 * h];
        ops::linear_forward(
            &x_in,
            self.p(&s.qkv_w),
            self.p(&s.qkv_b),
            &mut qkv,
            n,
            h,
            3 * h,
            th,
        );
        let (probs, pmask, ctx) = self.attention_forward(&qkv, batch, drop, key);
        let mut a = vec![0.0f32; n * h];
        ops::linear_forward(&ctx, self.p(&s.ao_w), self.p(&s.ao_b), &mut a, n, h, h, th);
        let mask1 = drop
            .filter(|d| d.hidden > 0.0)
            .map(|d| ops::dropout(&mut a, d.hidden, key.unwrap_or(0) ^ 1));
        for (a, x) in a.iter_mut().zip(&x_in) {
            *a += x;
        }
        let mut x1 = vec![0.0f32; n * h];
        let mut xhat1 = vec![0.0f32; n * h];
        let mut rstd1 = vec![0.0f32; n];
        let eps = c.layer_norm_eps;
        ops::layer_norm_forward(
            &a,
            self.p(&s.ln1_g),
            self.p(&s.ln1_b),
            eps,
            &mut x1,
            &mut xhat1,
            &mut rstd1,
            h,
        );
        let mut inter_pre = vec![0.0f32; n * i];
        ops::linear_forward(
            &x1,
            self.p(&s.i_w),
            self.p(&s.i_b),
            &mut inter_pre,
            n,
            h,
            i,
            th,
        );
        let mut inter = vec![0.0f32; n * i];
        ops::gelu_forward(&inter_pre, &mut inter);
        let mut o = a; // reuse the buffer
        ops::linear_forward(&inter, self.p(&s.o_w), self.p(&s.o_b), &mut o, n, i, h, th);
        let mask2 = drop
            .filter(|d| d.hidden > 0.0)
            .map(|d| ops::dropout(&mut o, d.hidden, key.unwrap_or(0) ^ 2));
        for (o, x) in o.iter_mut().zip(&x1) {
            *o += x;
        }
        let mut x2 = vec![0.0f32; n * h];
        let mut xhat2 = vec![0.0f32; n * h];
        let mut rstd2 = vec![0.0f32; n];
        ops::layer_norm_forward(
            &o,
            self.p(&s.ln2_g),
            self.p(&s.ln2_b),
            eps,
            &mut x2,
            &mut xhat2,
            &mut rstd2,
            h,
        );
        let cache = LayerCache {
            x_in,
            qkv,
            probs,
            pmask,
            ctx,
            mask1,
            xhat1,
            rstd1,
            x1,
            inter_pre,
            inter,
            mask2,
            xhat2,
            rstd2,
        };
        (x2, cache)
    }

    /// Softmax attention per (sequence, head); returns probabilities (before dropout),
    /// the dropout mask if any, and the context `[N, H]`.
    fn attention_forward(
        &self,
        qkv: &[f32],
        batch: &Batch,
        drop: Option<DropoutSpec>,
        key: Option<u64>,
    ) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
        let c = &self.config;
        let (h, heads, d) = (c.hidden_size, c.num_attention_heads, c.head_dim());
        let scale = 1.0 / (d as f32).sqrt();
        let n = batch.tokens();
        let (offs, total) = score_offsets(batch, heads);
        let mut probs = vec![0.0f32; total];
        let p_attn = drop.map(|d| d.attention).unwrap_or(0.0);
        let mut pmask = (p_attn > 0.0).then(|| vec![0.0f32; total]);
        let mut ctx = vec![0.0f32; n * h];
        let ctx_ptr = SharedMut(ctx.as_mut_ptr());
        let probs_ptr = SharedMut(probs.as_mut_ptr());
        let mask_ptr = pmask.as_mut().map(|m| SharedMut(m.as_mut_ptr()));
        let akey = key.unwrap_or(0) ^ 3;
        offs.par_iter().for_each(|&(s, hd, at)| {
            let seq = batch.seq(s);
            let (o, l) = (seq.start, seq.len());
            let q = mat(&qkv[o * 3 * h + hd * d..], l, d, 3 * h);
            let k = mat(&qkv[o * 3 * h + h + hd * d..], l, d, 3 * h);
            let v = mat(&qkv[o * 3 * h + 2 * h + hd * d..], l, d, 3 * h);
            // SAFETY: (s, hd) pairs own disjoint score blocks [at, at + l*l).
            let sc = unsafe { std::slice::from_raw_parts_mut(probs_ptr.at(at), l * l) };
            matmul(
                mat_mut(sc, l, l, l),
                Accum::Replace,
                q,
                k.transpose(),
                scale,
                Par::Seq,
            );
            ops::softmax_rows(sc, l);
            let weights: Vec<f32>;
            let w: &[f32] = match mask_ptr {
                Some(mp) => {
                    // SAFETY: same disjoint block of the mask buffer.
                    let m = unsafe { std::slice::from_raw_parts_mut(mp.at(at), l * l) };
                    for (j, m) in m.iter_mut().enumerate() {
                        let keep = ops::hash_uniform(akey, (at + j) as u64) >= p_attn;
                        *m = if keep { 1.0 / (1.0 - p_attn) } else { 0.0 };
                    }
                    weights = sc.iter().zip(m.iter()).map(|(p, m)| p * m).collect();
                    &weights
                }
                None => sc,
            };
            // SAFETY: the context block rows o..o+l, columns hd*d..(hd+1)*d belong to
            // this (sequence, head) alone; the view stays inside `ctx`.
            let cv = unsafe {
                faer::MatMut::from_raw_parts_mut(ctx_ptr.at(o * h + hd * d), l, d, h as isize, 1)
            };
            matmul(cv, Accum::Replace, mat(w, l, l, l), v, 1.0, Par::Seq);
        });
        (probs, pmask, ctx)
    }

    /// LayerNorm backward of the tensors in slots `g` and `b`: writes `dx`, adds their
    /// gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_bwd(
        &self,
        grads: &mut [f32],
        g: &Range<usize>,
        b: &Range<usize>,
        dy: &[f32],
        xhat: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
    ) {
        let (dg, db) = two_mut(grads, g, b);
        ops::layer_norm_backward(
            dy,
            xhat,
            rstd,
            self.p(g),
            dx,
            dg,
            db,
            self.config.hidden_size,
        );
    }

    /// Linear backward of the weight and bias in slots `w` and `b`: writes `dx` when
    /// given, adds their gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        grads: &mut [f32],
        w: &Range<usize>,
        b: &Range<usize>,
        x: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        n: usize,
        d_in: usize,
        d_out: usize,
        th: Threads,
    ) {
        let (dw, db) = two_mut(grads, w, b);
        ops::linear_backward(x, self.p(w), dy, dx, dw, db, n, d_in, d_out, th);
    }

    /// Backward of one layer: takes the gradient w.r.t. its output, adds its parameter
    /// gradients into `grads`, and returns the gradient w.r.t. its input.
    fn layer_backward(
        &self,
        l: usize,
        cache: &LayerCache,
        mut dx2: Vec<f32>,
        batch: &Batch,
        grads: &mut [f32],
        th: Threads,
    ) -> Vec<f32> {
        let c = &self.config;
        let s = &self.slots.layers[l];
        let (h, i, n) = (c.hidden_size, c.intermediate_size, batch.tokens());
        // LayerNorm 2: dx2 -> dr2.
        let mut dr2 = vec![0.0f32; n * h];
        self.layer_norm_bwd(
            grads,
            &s.ln2_g,
            &s.ln2_b,
            &dx2,
            &cache.xhat2,
            &cache.rstd2,
            &mut dr2,
        );
        // Feed-forward down projection (with dropout).
        let mut d_o = dr2.clone();
        if let Some(m) = &cache.mask2 {
            ops::apply_mask(&mut d_o, m);
        }
        let mut dinter = vec![0.0f32; n * i];
        self.linear_bwd(
            grads,
            &s.o_w,
            &s.o_b,
            &cache.inter,
            &d_o,
            Some(&mut dinter),
            n,
            i,
            h,
            th,
        );
        ops::gelu_backward(&cache.inter_pre, &mut dinter);
        let mut dx1 = dx2; // reuse: becomes the gradient w.r.t. x1
        self.linear_bwd(
            grads,
            &s.i_w,
            &s.i_b,
            &cache.x1,
            &dinter,
            Some(&mut dx1),
            n,
            h,
            i,
            th,
        );
        for (a, b) in dx1.iter_mut().zip(&dr2) {
            *a += b; // residual
        }
        // LayerNorm 1.
        let mut dr1 = dr2; // reuse
        self.layer_norm_bwd(
            grads,
            &s.ln1_g,
            &s.ln1_b,
            &dx1,
            &cache.xhat1,
            &cache.rstd1,
            &mut dr1,
        );
        let mut da = dr1.clone();
        if let Some(m) = &cache.mask1 {
            ops::apply_mask(&mut da, m);
        }
        let mut dctx = dx1; // reuse
        self.linear_bwd(
            grads,
            &s.ao_w,
            &s.ao_b,
            &cache.ctx,
            &da,
            Some(&mut dctx),
            n,
            h,
            h,
            th,
        );
        let dqkv = self.attention_backward(cache, &dctx, batch);
        dx2 = dctx; // reuse as the input gradient
        self.linear_bwd(
            grads,
            &s.qkv_w,
            &s.qkv_b,
            &cache.x_in,
            &dqkv,
            Some(&mut dx2),
            n,
            h,
            3 * h,
            th,
        );
        for (a, b) in dx2.iter_mut().zip(&dr1) {
            *a += b; // residual
        }
        dx2
    }

    fn attention_backward(&self, cache: &LayerCache, dctx: &[f32], batch: &Batch) -> Vec<f32> {
        let c = &self.config;
        let (h, heads, d) = (c.hidden_size, c.num_attention_heads, c.head_dim());
        let scale = 1.0 / (d as f32).sqrt();
        let n = batch.tokens();
        let (offs, _) = score_offsets(batch, heads);
        let mut dqkv = vec![0.0f32; n * 3 * h];
        let dptr = SharedMut(dqkv.as_mut_ptr());
        let qkv = &cache.qkv;
        offs.par_iter().for_each(|&(s, hd, at)| {
            let seq = batch.seq(s);
            let (o, l) = (seq.start, seq.len());
            let q = mat(&qkv[o * 3 * h + hd * d..], l, d, 3 * h);
            let k = mat(&qkv[o * 3 * h + h + hd * d..], l, d, 3 * h);
            let v = mat(&qkv[o * 3 * h + 2 * h + hd * d..], l, d, 3 * h);
            let dc = mat(&dctx[o * h + hd * d..], l, d, h);
            let p = &cache.probs[at..at + l * l];
            let pw: Vec<f32> = match &cache.pmask {
                Some(m) => p
                    .iter()
                    .zip(&m[at..at + l * l])
                    .map(|(p, m)| p * m)
                    .collect(),
                None => p.to_vec(),
            };
            let mut dp = vec![0.0f32; l * l];
            matmul(
                mat_mut(&mut dp, l, l, l),
                Accum::Replace,
                dc,
                v.transpose(),
                1.0,
                Par::Seq,
            );
            // SAFETY: rows o..o+l and this head's columns of dq, dk, dv belong to this
            // task alone; every view stays inside `dqkv`.
            let view = |col: usize| unsafe {
                faer::MatMut::from_raw_parts_mut(dptr.at(o * 3 * h + col), l, d, 3 * h as isize, 1)
            };
            matmul(
                view(2 * h + hd * d),
                Accum::Replace,
                mat(&pw, l, l, l).transpose(),
                dc,
                1.0,
                Par::Seq,
            );
            if let Some(m) = &cache.pmask {
                for (g, m) in dp.iter_mut().zip(&m[at..at + l * l]) {
                    *g *= m;
                }
            }
            ops::softmax_rows_backward(p, &mut dp, l);
            let ds = mat(&dp, l, l, l);
            matmul(view(hd * d), Accum::Replace, ds, k, scale, Par::Seq);
            matmul(
                view(h + hd * d),
                Accum::Replace,
                ds.transpose(),
                q,
                scale,
                Par::Seq,
            );
        });
        dqkv
    }

    /// Runs the encoder and returns the token states `[tokens, H]` (no dropout).
    pub fn encode(&self, batch: &Batch, th: Threads) -> Vec<f32> {
        let (mut x, _) = self.embed(batch, None);
        for l in 0..self.config.num_hidden_layers {
            x = self.layer_forward(l, x, batch, None, th).0;
        }
        x
    }

    /// Mean of each sequence's token states: `[B, H]`.
    pub fn mean_pool(&self, x: &[f32], batch: &Batch) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut pooled = vec![0.0f32; batch.len() * h];
        for s in 0..batch.len() {
            let seq = batch.seq(s);
            let inv = 1.0 / seq.len() as f32;
            let out = &mut pooled[s * h..(s + 1) * h];
            for t in seq {
                for (o, v) in out.iter_mut().zip(&x[t * h..(t + 1) * h]) {
                    *o += v;
                }
            }
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
        pooled
    }

    /// Mean-pooled sentence vectors `[B, H]` (no dropout, no normalisation).
    pub fn sentence_vectors(&self, batch: &Batch, th: Threads) -> Vec<f32> {
        let x = self.encode(batch, th);
        self.mean_pool(&x, batch)
    }

    /// Class scores `[B, C]` of the jointly trained linear head.
    pub fn logits(&self, batch: &Batch, th: Threads) -> Vec<f32> {
        let pooled = self.sentence_vectors(batch, th);
        let mut logits = vec![0.0f32; batch.len() * self.classes];
        ops::linear_forward(
            &pooled,
            self.p(&self.slots.cls_w),
            self.p(&self.slots.cls_b),
            &mut logits,
            batch.len(),
            self.config.hidden_size,
            self.classes,
            th,
        );
        logits
    }

    /// One forward and backward pass: mean cross-entropy of the batch against `labels`;
    /// parameter gradients are *added* into `grads` (same layout as `params`). Layers
    /// below `first_trainable` (0 = embeddings, `l + 1` = layer `l`) run without dropout
    /// or gradients.
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        labels: &[usize],
        drop: Option<DropoutSpec>,
        first_trainable: usize,
        grads: &mut [f32],
        th: Threads,
    ) -> StepOutput {
        self.loss_and_grads_from(
            batch,
            None,
            Objective::Classify(labels),
            drop,
            first_trainable,
            grads,
            th,
        )
    }

    /// The output of the frozen part below `first_trainable` (embeddings and the layers
    /// under it, no dropout): `[tokens, H]`. Deterministic, so it can be cached per item
    /// and given to [`loss_and_grads_from`](Self::loss_and_grads_from).
    pub fn frozen_states(&self, batch: &Batch, first_trainable: usize, th: Threads) -> Vec<f32> {
        let (mut x, _) = self.embed(batch, None);
        for l in 0..first_trainable
            .saturating_sub(1)
            .min(self.config.num_hidden_layers)
        {
            x = self.layer_forward(l, x, batch, None, th).0;
        }
        x
    }

    /// [`loss_and_grads`](Self::loss_and_grads), optionally starting from the frozen
    /// part's output (`frozen`, from [`frozen_states`](Self::frozen_states); needs
    /// `first_trainable >= 1`) instead of running it.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads_from(
        &self,
        batch: &Batch,
        frozen: Option<Vec<f32>>,
        objective: Objective<'_>,
        drop: Option<DropoutSpec>,
        first_trainable: usize,
        grads: &mut [f32],
        th: Threads,
    ) -> StepOutput {
        let t0 = std::time::Instant::now();
        let c = &self.config;
        let (h, nl) = (c.hidden_size, c.num_hidden_layers);
        let emb_drop = if first_trainable == 0 { drop } else { None };
        let given = frozen.is_some();
        assert!(
            !given || first_trainable >= 1,
            "frozen states need a frozen part"
        );
        let (mut x, emb_cache) = match frozen {
            Some(x) => {
                assert_eq!(x.len(), batch.tokens() * h, "frozen states of this batch");
                (x, None)
            }
            None => {
                let (x, cache) = self.embed(batch, emb_drop);
                (x, Some(cache))
            }
        };
        let mut caches = Vec::with_capacity(nl);
        for l in 0..nl {
            if l + 1 < first_trainable {
                if !given {
                    x = self.layer_forward(l, x, batch, None, th).0;
                }
            } else {
                let (y, cache) = self.layer_forward(l, x, batch, drop, th);
                caches.push((l, cache));
                x = y;
            }
        }
        let pooled = self.mean_pool(&x, batch);
        let b = batch.len();
        let mut dpooled = vec![0.0f32; b * h];
        let (loss, forward_seconds, t1) = match objective {
            Objective::Classify(labels) => {
                let mut logits = vec![0.0f32; b * self.classes];
                ops::linear_forward(
                    &pooled,
                    self.p(&self.slots.cls_w),
                    self.p(&self.slots.cls_b),
                    &mut logits,
                    b,
                    h,
                    self.classes,
                    th,
                );
                let mut dlogits = vec![0.0f32; logits.len()];
                let loss = ops::cross_entropy(&logits, labels, self.classes, &mut dlogits);
                let forward_seconds = t0.elapsed().as_secs_f64();
                let t1 = std::time::Instant::now();
                let (w, bias) = (&self.slots.cls_w, &self.slots.cls_b);
                self.linear_bwd(
                    grads,
                    w,
                    bias,
                    &pooled,
                    &dlogits,
                    Some(&mut dpooled),
                    b,
                    h,
                    self.classes,
                    th,
                );
                (loss, forward_seconds, t1)
            }
            Objective::CosinePairs(targets) => {
                assert_eq!(b, 2 * targets.len(), "two sequences per pair");
                let loss = ops::cosine_pairs_loss(&pooled, targets, h, &mut dpooled);
                (loss, t0.elapsed().as_secs_f64(), std::time::Instant::now())
            }
            Objective::InfoNce(temperature) => {
                assert_eq!(b % 2, 0, "two views per text");
                let loss = ops::info_nce_loss(&pooled, h, temperature, &mut dpooled);
                (loss, t0.elapsed().as_secs_f64(), std::time::Instant::now())
            }
            Objective::Pooled(f) => {
                let loss = f(&pooled, &mut dpooled);
                (loss, t0.elapsed().as_secs_f64(), std::time::Instant::now())
            }
        };
        let done = |loss| StepOutput {
            loss,
            forward_seconds,
            backward_seconds: t1.elapsed().as_secs_f64(),
        };
        if first_trainable > nl {
            return done(loss);
        }
        let mut dx = vec![0.0f32; batch.tokens() * h];
        for s in 0..b {
            let seq = batch.seq(s);
            let inv = 1.0 / seq.len() as f32;
            let dp = &dpooled[s * h..(s + 1) * h];
            for t in seq {
                for (o, v) in dx[t * h..(t + 1) * h].iter_mut().zip(dp) {
                    *o = v * inv;
                }
            }
        }
        for (l, cache) in caches.iter().rev() {
            dx = self.layer_backward(*l, cache, dx, batch, grads, th);
        }
        if let (0, Some(emb_cache)) = (first_trainable, &emb_cache) {
            self.embed_backward(batch, emb_cache, dx, grads);
        }
        done(loss)
    }

    fn embed_backward(&self, batch: &Batch, cache: &EmbCache, mut dy: Vec<f32>, grads: &mut [f32]) {
        let h = self.config.hidden_size;
        if let Some(m) = &cache.mask {
            ops::apply_mask(&mut dy, m);
        }
        let mut de = vec![0.0f32; dy.len()];
        self.layer_norm_bwd(
            grads,
            &self.slots.emb_g,
            &self.slots.emb_b,
            &dy,
            &cache.xhat,
            &cache.rstd,
            &mut de,
        );
        let (word, pos, typ) = (
            self.slots.word.start,
            self.slots.pos.start,
            self.slots.typ.start,
        );
        for s in 0..batch.len() {
            for (t, tok) in batch.seq(s).enumerate() {
                let id = batch.ids[tok] as usize;
                let g = &de[tok * h..(tok + 1) * h];
                for j in 0..h {
                    grads[word + id * h + j] += g[j];
                    grads[pos + t * h + j] += g[j];
                    grads[typ + j] += g[j];
                }
            }
        }
    }
}

/// A standard normal draw (Box-Muller from two counter-based uniforms).
fn normal(key: u64, i: usize) -> f32 {
    let u1 = ops::hash_uniform(key, 2 * i as u64).max(1e-7);
    let u2 = ops::hash_uniform(key, 2 * i as u64 + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Two disjoint mutable ranges of one buffer (a weight's and its bias's gradient).
fn two_mut<'a>(
    buf: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start, "slots are laid out weight before bias");
    let (lo, hi) = buf.split_at_mut(b.start);
    (&mut lo[a.clone()], &mut hi[..b.len()])
}
