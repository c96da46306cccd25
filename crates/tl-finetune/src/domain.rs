//! Model-level domain adaptation of an encoder, without target labels:
//!
//! - **SimCSE** (Gao, Yao & Chen, 2021): unsupervised contrastive tuning on unlabelled
//!   target text; each text is encoded twice, dropout is the only noise, and InfoNCE
//!   pulls the two views together and the batch's other texts apart. The encoder learns
//!   the target's vocabulary and topics; no label is used at all.
//! - **DANN** (Ganin et al., 2016): the encoder and a label classifier learn the labelled
//!   source while a domain classifier learns to tell source from target vectors, and its
//!   gradient reaches the encoder reversed (scaled by `-lambda`, ramped up as in the
//!   paper), so the encoder unlearns what separates the domains. `lambda = 0` is plain
//!   fine-tuning on the source. Text encoders ([`adapt_text`]) and image networks
//!   ([`adapt_images`]) alike.
//!
//! A classical head trained on the tuned source vectors then labels the target (in
//! `tl-eval`, which also chooses the hyperparameters by reverse validation).

use std::time::Instant;

use tl_assets::manifest::ImageSpec;
use tl_backbone::ImageInput;
use tl_core::Rng;

use crate::FinetuneError;
use crate::bert::{Batch, BertClassifier, DropoutSpec, Objective, Slot};
use crate::cnn::{BnMode, ConvNet};
use crate::conv;
use crate::fit::{Learner, StepOut, Validation, run_epochs};
use crate::ops::{self, Threads};
use crate::train::{FinetuneParams, FinetuneReport, RunOptions, Strategy, check_data, fnv};
use crate::vision::{ImageParams, augmented_batch, check_images, check_resolution, spec_at};

/// Which adaptation runs, with its own hyperparameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DomainMethod {
    /// SimCSE on the target texts at this InfoNCE temperature (the paper: 0.05).
    SimCse {
        /// Softmax temperature of the cosine similarities.
        temperature: f32,
    },
    /// DANN with this weight on the reversed domain gradient (0: fine-tuning on the
    /// source alone).
    Dann {
        /// Final weight of the reversed gradient (the paper's lambda, ramped up from 0).
        lambda: f32,
    },
}

impl DomainMethod {
    /// Checks the method's own hyperparameter.
    pub fn check(&self) -> Result<(), FinetuneError> {
        match *self {
            DomainMethod::SimCse { temperature } if !(temperature > 0.0 && temperature <= 1.0) => {
                Err(FinetuneError::Params(format!(
                    "simcse temperature must be in (0, 1], got {temperature}"
                )))
            }
            DomainMethod::Dann { lambda }
                if !(lambda.is_finite() && (0.0..=10.0).contains(&lambda)) =>
            {
                Err(FinetuneError::Params(format!(
                    "dann lambda must be in [0, 10], got {lambda}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Hidden units of DANN's domain classifier (one ReLU layer, then a logit).
pub const DOMAIN_HIDDEN: usize = 256;
/// Adam learning rate of the domain classifier: it starts from scratch and must keep up
/// with the encoder, so it learns far faster than the encoder's fine-tuning rate.
pub const DOMAIN_LEARNING_RATE: f32 = 1e-3;

/// Adapts `model`'s encoder to the `target` texts (token ids) with `method`. SimCSE uses
/// only `target`; DANN also trains on `source` with `labels` (one per source text,
/// indices below the model's classes). `params` are the fine-tuning hyperparameters
/// (learning rate, batch size: source texts per step, epochs, strategy `full` or
/// `top:N`, dropout, seed); there is no validation part, since no target label may
/// choose an epoch. One epoch passes over the target texts (SimCSE) or the source texts
/// (DANN, each step with as many target texts, cycling).
pub fn adapt_text(
    model: &mut BertClassifier,
    method: DomainMethod,
    source: &[Vec<u32>],
    labels: &[usize],
    target: &[Vec<u32>],
    params: &FinetuneParams,
    run: &RunOptions,
) -> Result<FinetuneReport, FinetuneError> {
    params.check()?;
    method.check()?;
    check_adaptation(params.strategy, params.validation_fraction, params.patience)?;
    let positions = model.config.max_position_embeddings;
    if target.len() < 2 {
        return Err(FinetuneError::Data(format!(
            "domain adaptation needs at least 2 target texts, got {}",
            target.len()
        )));
    }
    if let Some((i, s)) = target
        .iter()
        .enumerate()
        .find(|(_, s)| s.is_empty() || s.len() > positions)
    {
        return Err(FinetuneError::Data(format!(
            "target row {i}: {} tokens but the model takes 1 to {positions}",
            s.len()
        )));
    }
    if let DomainMethod::Dann { .. } = method {
        check_data(source, labels, model.classes, positions).map_err(|e| match e {
            FinetuneError::Data(m) => FinetuneError::Data(format!("source: {m}")),
            e => e,
        })?;
    }
    let pool = crate::ops::Threads(params.threads).pool()?;
    let th = Threads(params.threads);
    let first_trainable = params
        .strategy
        .first_trainable(model.config.num_hidden_layers);
    let fingerprint = serde_json::json!({
        "params": params,
        "method": format!("{method:?}"),
    })
    .to_string();
    let settings = params
        .common()
        .settings(first_trainable, fingerprint, "sentences");
    let kind = match method {
        DomainMethod::SimCse { temperature } => Kind::SimCse { temperature },
        DomainMethod::Dann { lambda } => Kind::Dann(Dann {
            source,
            labels,
            state: DannState::new(
                lambda,
                target.len(),
                source.len().div_ceil(params.batch_size) as u64 * params.epochs as u64,
                model.config.hidden_size,
                params.seed,
            ),
        }),
    };
    // One epoch passes over the target texts (SimCSE) or the labelled source (DANN).
    let units: Vec<usize> = match &kind {
        Kind::SimCse { .. } => (0..target.len()).collect(),
        Kind::Dann(_) => (0..source.len()).collect(),
    };
    let mut learner = Adapter {
        model,
        target,
        kind,
        dropout: params.dropout,
        seed: params.seed,
        first_trainable,
        no_state: Vec::new(),
        th,
    };
    let report = pool.install(|| {
        run_epochs(
            &mut learner,
            &units,
            units.len(),
            &[],
            &settings,
            run,
            &mut |_, _| {},
        )
    })?;
    if let Kind::Dann(d) = &learner.kind {
        d.state.log();
    }
    Ok(report)
}

/// What every model-level adaptation refuses: a strategy that trains no layer of the
/// encoder, and a validation part (no target label may choose an epoch).
fn check_adaptation(
    strategy: Strategy,
    validation_fraction: f32,
    patience: usize,
) -> Result<(), FinetuneError> {
    if !matches!(strategy, Strategy::Full | Strategy::Top(_)) {
        return Err(FinetuneError::Params(format!(
            "domain adaptation trains the encoder: strategy must be `full` or `top:N`, not `{strategy}`"
        )));
    }
    if validation_fraction > 0.0 || patience > 0 {
        return Err(FinetuneError::Params(
            "domain adaptation has no validation part (no target label may choose an epoch): \
             set validation_fraction = 0 and patience = 0"
                .into(),
        ));
    }
    Ok(())
}

fn dropout_spec(p: f32, seed: u64, step: u64) -> Option<DropoutSpec> {
    (p > 0.0).then_some(DropoutSpec {
        hidden: p,
        attention: p,
        key: seed ^ fnv("dropout") ^ step.wrapping_mul(0x9E37_79B9),
    })
}

/// DANN's domain classifier: `logit = w2 . relu(W1 x + b1) + b2`, trained by its own
/// Adam (it is not part of the exported model).
struct DomainClassifier {
    h: usize,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    /// Right domain calls and calls made in the current epoch.
    right: usize,
    seen: usize,
}

impl DomainClassifier {
    fn new(h: usize, seed: u64) -> DomainClassifier {
        let n = DOMAIN_HIDDEN * h + DOMAIN_HIDDEN + DOMAIN_HIDDEN + 1;
        let mut params = vec![0.0f32; n];
        // Uniform in +-1/sqrt(fan_in), as torch.nn.Linear initialises.
        let key = seed ^ fnv("dann-domain");
        let w2_at = DOMAIN_HIDDEN * h + DOMAIN_HIDDEN;
        for (i, p) in params.iter_mut().enumerate() {
            let fan_in = if i < DOMAIN_HIDDEN * h {
                h
            } else {
                DOMAIN_HIDDEN
            };
            if i < DOMAIN_HIDDEN * h || (w2_at..w2_at + DOMAIN_HIDDEN).contains(&i) {
                *p = (2.0 * ops::hash_uniform(key, i as u64) - 1.0) / (fan_in as f32).sqrt();
            }
        }
        DomainClassifier {
            h,
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            right: 0,
            seen: 0,
        }
    }

    fn accuracy(&self) -> f64 {
        self.right as f64 / self.seen.max(1) as f64
    }

    /// Mean binary cross-entropy of rows `x[b, h]` against `domain` (1 = target); adds
    /// the gradient w.r.t. `x` times `scale` into `dx` and updates the classifier.
    fn loss_and_update(
        &mut self,
        x: &[f32],
        domain: &[f32],
        scale: f32,
        dx: &mut [f32],
        th: Threads,
    ) -> f32 {
        let (h, m, b) = (self.h, DOMAIN_HIDDEN, domain.len());
        let (w1, rest) = self.params.split_at(m * h);
        let (b1, rest) = rest.split_at(m);
        let (w2, b2) = rest.split_at(m);
        let mut hidden = vec![0.0f32; b * m];
        ops::linear_forward(x, w1, b1, &mut hidden, b, h, m, th);
        let pre = hidden.clone();
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut dout = vec![0.0f32; b];
        let mut loss = 0.0f64;
        for r in 0..b {
            let z: f32 = hidden[r * m..(r + 1) * m]
                .iter()
                .zip(w2)
                .map(|(a, w)| a * w)
                .sum::<f32>()
                + b2[0];
            let p = 1.0 / (1.0 + (-z).exp());
            let y = domain[r];
            loss -= (y * p.max(1e-7).ln() + (1.0 - y) * (1.0 - p).max(1e-7).ln()) as f64;
            dout[r] = (p - y) / b as f32;
            self.seen += 1;
            self.right += usize::from((p >= 0.5) == (y >= 0.5));
        }
        let mut grads = vec![0.0f32; self.params.len()];
        let (g1, grest) = grads.split_at_mut(m * h);
        let (gb1, grest) = grest.split_at_mut(m);
        let (gw2, gb2) = grest.split_at_mut(m);
        let mut dhidden = vec![0.0f32; b * m];
        for r in 0..b {
            gb2[0] += dout[r];
            for j in 0..m {
                gw2[j] += dout[r] * hidden[r * m + j];
                dhidden[r * m + j] = if pre[r * m + j] > 0.0 {
                    dout[r] * w2[j]
                } else {
                    0.0
                };
            }
        }
        let mut dxd = vec![0.0f32; b * h];
        ops::linear_backward(x, w1, &dhidden, Some(&mut dxd), g1, gb1, b, h, m, th);
        for (d, g) in dx.iter_mut().zip(&dxd) {
            *d += scale * g;
        }
        // Adam, PyTorch's defaults.
        self.t += 1;
        let (b1c, b2c) = (1.0 - 0.9f32.powi(self.t), 1.0 - 0.999f32.powi(self.t));
        for (((p, g), m), v) in self
            .params
            .iter_mut()
            .zip(&grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = 0.9 * *m + 0.1 * g;
            *v = 0.999 * *v + 0.001 * g * g;
            *p -= DOMAIN_LEARNING_RATE * (*m / b1c) / ((*v / b2c).sqrt() + 1e-8);
        }
        (loss / b as f64) as f32
    }
}

/// The encoder under adaptation, for the shared loop; `kind` is what a step computes.
struct Adapter<'a> {
    model: &'a mut BertClassifier,
    target: &'a [Vec<u32>],
    kind: Kind<'a>,
    dropout: f32,
    seed: u64,
    first_trainable: usize,
    no_state: Vec<f32>,
    th: Threads,
}

enum Kind<'a> {
    SimCse { temperature: f32 },
    Dann(Dann<'a>),
}

struct Dann<'a> {
    source: &'a [Vec<u32>],
    labels: &'a [usize],
    state: DannState,
}

/// What DANN keeps between steps, for any encoder: the target rows' order, the
/// schedule of the reversed gradient and the domain classifier.
struct DannState {
    /// Target rows in the order steps take them (cycling).
    target_order: Vec<usize>,
    lambda: f32,
    total_steps: u64,
    domain: DomainClassifier,
    /// The epoch of the last step.
    epoch: usize,
}

impl DannState {
    fn new(lambda: f32, targets: usize, total_steps: u64, width: usize, seed: u64) -> DannState {
        let mut order: Vec<usize> = (0..targets).collect();
        Rng::new(seed ^ fnv("dann-target")).shuffle(&mut order);
        DannState {
            target_order: order,
            lambda,
            total_steps,
            domain: DomainClassifier::new(width, seed),
            epoch: usize::MAX,
        }
    }

    /// The target rows that join `b` source rows at optimizer step `step` (they follow
    /// from the step number alone, so a resumed run takes the same ones) and the weight
    /// of the reversed gradient then.
    fn step(&mut self, epoch: usize, step: u64, b: usize) -> (Vec<usize>, f32) {
        if epoch != self.epoch {
            // The domain classifier's accuracy is reported over the last epoch.
            self.epoch = epoch;
            self.domain.right = 0;
            self.domain.seen = 0;
        }
        let nt = self.target_order.len();
        let start = ((step - 1) as usize * b) % nt;
        // Without a domain loss (lambda 0: source fine-tuning) target rows would only
        // cost a forward pass.
        let take = if self.lambda > 0.0 { b.min(nt) } else { 0 };
        let tgt = (0..take)
            .map(|k| self.target_order[(start + k) % nt])
            .collect();
        let weight = self.lambda * dann_ramp(step as f64 / self.total_steps.max(1) as f64);
        (tgt, weight)
    }

    /// Trains the domain classifier on `pooled` (`b` source rows, then target rows) and
    /// adds its reversed gradient, times `weight`, into `dpooled`.
    fn domain_loss(
        &mut self,
        pooled: &[f32],
        b: usize,
        weight: f32,
        dpooled: &mut [f32],
        th: Threads,
    ) {
        if weight > 0.0 {
            let rows = pooled.len() / self.domain.h;
            let domain: Vec<f32> = (0..rows).map(|r| if r < b { 0.0 } else { 1.0 }).collect();
            self.domain
                .loss_and_update(pooled, &domain, -weight, dpooled, th);
        }
    }

    fn log(&self) {
        tracing::info!(
            "dann: domain classifier accuracy {:.1}% over the last epoch",
            100.0 * self.domain.accuracy()
        );
    }
}

/// The paper's schedule of the reversed gradient's weight: `2 / (1 + e^(-10 p)) - 1` at
/// training progress `p`, from 0 (the domain classifier's early noise must not wreck
/// the encoder) to almost 1.
pub fn dann_ramp(progress: f64) -> f32 {
    (2.0 / (1.0 + (-10.0 * progress.clamp(0.0, 1.0)).exp()) - 1.0) as f32
}

impl Learner for Adapter<'_> {
    type Model = BertClassifier;

    fn model(&self) -> &BertClassifier {
        self.model
    }

    fn parts(&mut self) -> (&[Slot], &mut Vec<f32>) {
        (&self.model.slots.all, &mut self.model.params)
    }

    fn state(&mut self) -> &mut Vec<f32> {
        &mut self.no_state
    }

    fn step(
        &mut self,
        idx: &[usize],
        epoch: usize,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepOut, FinetuneError> {
        let drop = dropout_spec(self.dropout, self.seed, step);
        let (model, th) = (&*self.model, self.th);
        let out = match &mut self.kind {
            Kind::SimCse { temperature } => {
                // Each text twice, side by side: the two copies sit at different token
                // positions of the batch, so they draw different dropout masks.
                let batch = Batch::pack(idx.iter().flat_map(|&i| {
                    let s = self.target[i].as_slice();
                    [s, s]
                }));
                let objective = Objective::InfoNce(*temperature);
                model.loss_and_grads_from(
                    &batch,
                    None,
                    objective,
                    drop,
                    self.first_trainable,
                    grads,
                    th,
                )
            }
            Kind::Dann(d) => d.step(
                model,
                self.target,
                (idx, epoch, step),
                drop,
                self.first_trainable,
                grads,
                th,
            ),
        };
        Ok(StepOut {
            loss: out.loss,
            items: idx.len(),
            forward_seconds: out.forward_seconds,
            backward_seconds: out.backward_seconds,
        })
    }

    fn evaluate(&mut self, _rows: &[usize]) -> Result<Validation, FinetuneError> {
        unreachable!("domain adaptation runs without a validation part")
    }
}

impl Dann<'_> {
    /// A batch of source texts `idx` and as many target texts: the label loss on the
    /// source rows, the domain loss on all, reversed into the encoder.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &BertClassifier,
        target: &[Vec<u32>],
        (idx, epoch, step): (&[usize], usize, u64),
        drop: Option<DropoutSpec>,
        first_trainable: usize,
        grads: &mut [f32],
        th: Threads,
    ) -> crate::bert::StepOutput {
        let b = idx.len();
        let (tgt, weight) = self.state.step(epoch, step, b);
        let batch = Batch::pack(
            idx.iter()
                .map(|&i| self.source[i].as_slice())
                .chain(tgt.iter().map(|&i| target[i].as_slice())),
        );
        let y: Vec<usize> = idx.iter().map(|&i| self.labels[i]).collect();
        let (h, c) = (model.config.hidden_size, model.classes);
        let (wr, br) = (model.slots.cls_w.clone(), model.slots.cls_b.clone());
        let (w, bias) = (&model.params[wr.clone()], &model.params[br.clone()]);
        let (mut gw, mut gb) = (vec![0.0f32; w.len()], vec![0.0f32; bias.len()]);
        let state = &mut self.state;
        let mut objective = |pooled: &[f32], dpooled: &mut [f32]| -> f32 {
            // The label classifier sees the source rows only.
            let src = &pooled[..b * h];
            let mut logits = vec![0.0f32; b * c];
            ops::linear_forward(src, w, bias, &mut logits, b, h, c, th);
            let mut dlogits = vec![0.0f32; logits.len()];
            let loss = ops::cross_entropy(&logits, &y, c, &mut dlogits);
            let dsrc = Some(&mut dpooled[..b * h]);
            ops::linear_backward(src, w, &dlogits, dsrc, &mut gw, &mut gb, b, h, c, th);
            // The domain classifier descends its loss; the encoder gets the gradient
            // reversed.
            state.domain_loss(pooled, b, weight, dpooled, th);
            loss
        };
        let out = model.loss_and_grads_from(
            &batch,
            None,
            Objective::Pooled(&mut objective),
            drop,
            first_trainable,
            grads,
            th,
        );
        for (g, v) in grads[wr].iter_mut().zip(&gw) {
            *g += v;
        }
        for (g, v) in grads[br].iter_mut().zip(&gb) {
            *g += v;
        }
        out
    }
}

/// Adapts image network `net` (its classifier has one output per source class) with
/// DANN: each step trains on a batch of labelled `source` images and as many unlabelled
/// `target` images, the label loss on the source rows and the domain loss, reversed into
/// the network, on all. `params` are image fine-tuning's (learning rate, batch size:
/// source images per step, epochs, strategy `full` or `top:N`, resolution, BatchNorm
/// mode, dropout, augmentation of both domains, seed); there is no validation part.
/// SimCSE is for text encoders (image networks also have [`crate::adabn`]).
#[allow(clippy::too_many_arguments)]
pub fn adapt_images(
    net: &mut ConvNet,
    method: DomainMethod,
    source: &[ImageInput],
    labels: &[usize],
    target: &[ImageInput],
    spec: &ImageSpec,
    params: &ImageParams,
    run: &RunOptions,
) -> Result<FinetuneReport, FinetuneError> {
    params.check()?;
    method.check()?;
    let DomainMethod::Dann { lambda } = method else {
        return Err(FinetuneError::Params(
            "simcse tunes text encoders; image networks take dann (or adabn)".into(),
        ));
    };
    check_adaptation(params.strategy, params.validation_fraction, params.patience)?;
    check_images(net, source, labels).map_err(|e| match e {
        FinetuneError::Data(m) => FinetuneError::Data(format!("source: {m}")),
        e => e,
    })?;
    if target.len() < 2 {
        return Err(FinetuneError::Data(format!(
            "domain adaptation needs at least 2 target images, got {}",
            target.len()
        )));
    }
    let spec = spec_at(spec, params.resolution);
    check_resolution(net, spec.size as usize)?;
    let pool = Threads(params.threads).pool()?;
    let first = params.first_trainable(net);
    let fingerprint = serde_json::json!({
        "params": params,
        "method": format!("{method:?}"),
    })
    .to_string();
    let settings = params.common().settings(first, fingerprint, "images");
    let total_steps = source.len().div_ceil(params.batch_size) as u64 * params.epochs as u64;
    let state = DannState::new(lambda, target.len(), total_steps, net.features, params.seed);
    let units: Vec<usize> = (0..source.len()).collect();
    let mut learner = ImageDann {
        net,
        source,
        labels,
        target,
        spec,
        params: params.clone(),
        first,
        state,
        th: Threads(params.threads),
    };
    let report = pool.install(|| {
        run_epochs(
            &mut learner,
            &units,
            units.len(),
            &[],
            &settings,
            run,
            &mut |_, _| {},
        )
    })?;
    learner.state.log();
    Ok(report)
}

/// An image network under DANN, for the shared loop.
struct ImageDann<'a> {
    net: &'a mut ConvNet,
    source: &'a [ImageInput],
    labels: &'a [usize],
    target: &'a [ImageInput],
    spec: ImageSpec,
    params: ImageParams,
    first: usize,
    state: DannState,
    th: Threads,
}

impl Learner for ImageDann<'_> {
    type Model = ConvNet;

    fn model(&self) -> &ConvNet {
        self.net
    }

    fn parts(&mut self) -> (&[Slot], &mut Vec<f32>) {
        (&self.net.slots, &mut self.net.params)
    }

    fn state(&mut self) -> &mut Vec<f32> {
        &mut self.net.stats
    }

    fn step(
        &mut self,
        idx: &[usize],
        epoch: usize,
        step: u64,
        grads: &mut [f32],
    ) -> Result<StepOut, FinetuneError> {
        let t0 = Instant::now();
        let (b, th, r) = (idx.len(), self.th, self.spec.size as usize);
        let (tgt, weight) = self.state.step(epoch, step, b);
        let (a, seed) = (&self.params.augment, self.params.seed);
        let mut x = augmented_batch(
            self.source,
            idx,
            &self.spec,
            a,
            seed ^ fnv("augment"),
            epoch,
        )?;
        let key = seed ^ fnv("augment-target");
        x.extend(augmented_batch(
            self.target,
            &tgt,
            &self.spec,
            a,
            key,
            epoch,
        )?);
        let n = b + tgt.len();
        let x = conv::nchw_to_chwn(&x, n, 3, r * r);
        let (x, hw) = self.net.forward_blocks(x, n, (r, r), 0..self.first, th);
        let (logits, acts) = self.net.forward_train(
            x,
            n,
            hw,
            self.first,
            self.params.batch_norm == BnMode::Batch,
            self.params.dropout,
            seed ^ fnv("dropout") ^ step.wrapping_mul(0x9E37_79B9),
            th,
        );
        // The label loss sees the source rows only; the target rows' logits get no
        // gradient.
        let c = self.net.classes;
        let y: Vec<usize> = idx.iter().map(|&i| self.labels[i]).collect();
        let mut dlogits = vec![0.0f32; logits.len()];
        let loss = ops::cross_entropy(&logits[..b * c], &y, c, &mut dlogits[..b * c]);
        let mut dpooled = vec![0.0f32; acts.pooled().len()];
        self.state
            .domain_loss(acts.pooled(), b, weight, &mut dpooled, th);
        let forward_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        if loss.is_finite() {
            let first = self.first;
            self.net
                .backward_with_pooled(&acts, &dlogits, Some(&dpooled), first, grads, th);
        }
        Ok(StepOut {
            loss,
            items: b,
            forward_seconds,
            backward_seconds: t1.elapsed().as_secs_f64(),
        })
    }

    fn evaluate(&mut self, _rows: &[usize]) -> Result<Validation, FinetuneError> {
        unreachable!("domain adaptation runs without a validation part")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_goes_from_zero_to_almost_one() {
        assert_eq!(dann_ramp(0.0), 0.0);
        assert!((dann_ramp(0.5) - 0.9866).abs() < 1e-3);
        assert!(dann_ramp(1.0) > 0.999);
        assert!(dann_ramp(0.1) < dann_ramp(0.2));
    }

    #[test]
    fn domain_classifier_learns_to_separate_and_reverses_its_gradient() {
        let h = 4;
        let mut d = DomainClassifier::new(h, 3);
        // Source rows lean on feature 0, target rows on feature 1.
        let x: Vec<f32> = (0..8)
            .flat_map(|r| {
                let t = r >= 4;
                [
                    if t { 0.0 } else { 1.0 },
                    if t { 1.0 } else { 0.0 },
                    0.1 * r as f32,
                    0.0,
                ]
            })
            .collect();
        let y: Vec<f32> = (0..8).map(|r| if r >= 4 { 1.0 } else { 0.0 }).collect();
        let mut first = 0.0;
        let mut last = 0.0;
        for k in 0..300 {
            let mut dx = vec![0.0f32; x.len()];
            let l = d.loss_and_update(&x, &y, 1.0, &mut dx, Threads(1));
            if k == 0 {
                first = l;
            }
            last = l;
        }
        assert!(last < 0.05 * first, "loss {first} -> {last}");
        // The reversed gradient pushes a source row towards the target side: along
        // +feature 1 / -feature 0 the classifier's target logit grows, and the reversed
        // gradient of the loss points that way for a source row (descending it moves
        // the row to where the classifier errs).
        let mut plain = vec![0.0f32; x.len()];
        let mut reversed = vec![0.0f32; x.len()];
        let mut frozen = d.clone_for_test();
        frozen.loss_and_update(&x, &y, 1.0, &mut plain, Threads(1));
        let mut frozen = d.clone_for_test();
        frozen.loss_and_update(&x, &y, -1.0, &mut reversed, Threads(1));
        for (p, r) in plain.iter().zip(&reversed) {
            assert!((p + r).abs() < 1e-6);
        }
        assert!(plain[1] > 0.0 && plain[0] < 0.0, "{:?}", &plain[..4]);
    }

    impl DomainClassifier {
        fn clone_for_test(&self) -> DomainClassifier {
            DomainClassifier {
                h: self.h,
                params: self.params.clone(),
                m: self.m.clone(),
                v: self.v.clone(),
                t: self.t,
                right: 0,
                seen: 0,
            }
        }
    }
}
