//! Fine-tuning image backbones: hyperparameters, seeded augmentation, the image
//! learner for the shared training loop, inference, and loading a pretrained network
//! from its model manifest.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tl_assets::manifest::{ImageSpec, Layout, Manifest};
use tl_assets::{Cache, Fetcher};
use tl_backbone::ImageInput;
use tl_core::split::stratified_split;

use crate::FinetuneError;
use crate::bert::Slot;
use crate::cnn::{BnMode, ConvNet};
use crate::conv;
use crate::fit::{Common, Learner, LoopSettings, StepOut, Validation, run_epochs, validation_of};
use crate::ops::{self, Threads, hash_uniform};
use crate::train::{EpochLog, FinetuneReport, RunOptions, Strategy, fnv};

/// Seeded data augmentation, applied to each training image every epoch (never to
/// validation or test images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random resized crop: the smallest share of the image's area a crop keeps
    /// (1 = no cropping). Aspect ratios are drawn from [3/4, 4/3].
    pub crop_scale: f32,
    /// Mirror left-right with probability 1/2. Off by default: digits and text must
    /// not be mirrored.
    pub flip: bool,
    /// Largest rotation either way, in degrees.
    pub rotation: f32,
    /// Brightness and contrast jitter: factors drawn from [1 - j, 1 + j].
    pub color_jitter: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            crop_scale: 0.8,
            flip: false,
            rotation: 10.0,
            color_jitter: 0.2,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Augment {
        Augment {
            crop_scale: 1.0,
            flip: false,
            rotation: 0.0,
            color_jitter: 0.0,
        }
    }

    /// Whether any transform is on.
    pub fn is_active(&self) -> bool {
        self.crop_scale < 1.0 || self.flip || self.rotation > 0.0 || self.color_jitter > 0.0
    }
}

/// Hyperparameters of image fine-tuning. Defaults: AdamW at 5e-4 with 10% warm-up
/// and linear decay, batch 32, 3 epochs, weight decay 0.01, dropout 0.2 before the
/// classifier, frozen BatchNorm statistics, the model's own input resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageParams {
    /// What trains: `full`, `top:N` blocks, or `head` (the classifier alone).
    pub strategy: Strategy,
    /// Peak learning rate (of the top block and the classifier).
    pub learning_rate: f32,
    /// Layer-wise decay per block below the top (1 = off).
    pub layer_decay: f32,
    /// Images per step.
    pub batch_size: usize,
    /// Passes over the training images.
    pub epochs: usize,
    /// Share of the steps spent warming the learning rate up.
    pub warmup_fraction: f32,
    /// Decoupled weight decay (none on BatchNorm and biases).
    pub weight_decay: f32,
    /// Dropout on the pooled features.
    pub dropout: f32,
    /// Gradients are rescaled to at most this L2 norm (0 = no clipping).
    pub max_grad_norm: f32,
    /// Input side in pixels (none: the model's). Small images train many times faster
    /// at a small resolution.
    pub resolution: Option<usize>,
    /// BatchNorm during training.
    pub batch_norm: BnMode,
    /// Augmentation of training images.
    pub augment: Augment,
    /// Share of the training images held out (stratified) for validation.
    pub validation_fraction: f32,
    /// Stop after this many epochs without a better validation accuracy (0 = never).
    pub patience: usize,
    /// Seed of the split, shuffling, augmentation, dropout and the new classifier.
    pub seed: u64,
    /// Threads (results are bit-identical for the same thread count).
    pub threads: usize,
}

impl Default for ImageParams {
    fn default() -> Self {
        ImageParams {
            strategy: Strategy::Full,
            learning_rate: 5e-4,
            layer_decay: 1.0,
            batch_size: 32,
            epochs: 3,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            dropout: 0.2,
            max_grad_norm: 5.0,
            resolution: None,
            batch_norm: BnMode::Frozen,
            augment: Augment::default(),
            validation_fraction: 0.0,
            patience: 0,
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl ImageParams {
    /// Checks every field's range; the message names the field and the range.
    pub fn check(&self) -> Result<(), FinetuneError> {
        let a = &self.augment;
        if self.strategy == Strategy::Contrastive {
            return Err(FinetuneError::Params(
                "strategy contrastive is for text encoders; image models take full, top:N or head"
                    .into(),
            ));
        }
        self.common().check(vec![
            (
                "resolution",
                self.resolution.is_none_or(|r| (8..=1024).contains(&r)),
                "8..=1024",
                format!("{:?}", self.resolution),
            ),
            (
                "augment.crop_scale",
                a.crop_scale > 0.05 && a.crop_scale <= 1.0,
                "(0.05, 1]",
                a.crop_scale.to_string(),
            ),
            (
                "augment.rotation",
                (0.0..=180.0).contains(&a.rotation),
                "[0, 180]",
                a.rotation.to_string(),
            ),
            (
                "augment.color_jitter",
                (0.0..1.0).contains(&a.color_jitter),
                "[0, 1)",
                a.color_jitter.to_string(),
            ),
        ])
    }

    pub(crate) fn common(&self) -> Common {
        Common {
            strategy: self.strategy,
            learning_rate: self.learning_rate,
            layer_decay: self.layer_decay,
            batch_size: self.batch_size,
            min_batch: 2,
            epochs: self.epochs,
            warmup_fraction: self.warmup_fraction,
            weight_decay: self.weight_decay,
            dropout: self.dropout,
            max_grad_norm: self.max_grad_norm,
            validation_fraction: self.validation_fraction,
            patience: self.patience,
            seed: self.seed,
            threads: self.threads,
        }
    }

    /// The lowest trainable block of `net` under this strategy.
    pub fn first_trainable(&self, net: &ConvNet) -> usize {
        let blocks = net.blocks.len();
        match self.strategy {
            Strategy::Top(n) => blocks - n.min(blocks),
            Strategy::Head => blocks,
            Strategy::Full | Strategy::Contrastive => 0,
        }
    }
}

/// The preprocessing of `spec` at `resolution` (the model's own when none).
pub fn spec_at(spec: &ImageSpec, resolution: Option<usize>) -> ImageSpec {
    let mut s = spec.clone();
    if let Some(r) = resolution {
        let r = r as u32;
        // The crop keeps its share of the resized image (224 of 256) at any size.
        if let tl_assets::manifest::Resize::ShorterCrop { shorter } = s.resize {
            let scaled = (shorter as u64 * r as u64).div_ceil(s.size as u64) as u32;
            s.resize = tl_assets::manifest::Resize::ShorterCrop {
                shorter: scaled.max(r),
            };
        }
        s.size = r;
    }
    s
}

/// Decodes and preprocesses images `idx` into one `[n, 3, r, r]` buffer, on the rayon
/// pool; errors name the item.
pub fn preprocess_batch(
    inputs: &[ImageInput],
    idx: &[usize],
    spec: &ImageSpec,
) -> Result<Vec<f32>, FinetuneError> {
    let per = (spec.size * spec.size * 3) as usize;
    let mut out = vec![0.0f32; idx.len() * per];
    out.par_chunks_mut(per)
        .zip(idx.par_iter())
        .try_for_each(|(o, &i)| {
            let v = tl_backbone::preprocess_image(&inputs[i], spec).map_err(|e| {
                FinetuneError::Data(format!("image {i} ({}): {e}", describe(&inputs[i])))
            })?;
            o.copy_from_slice(&v);
            Ok(())
        })?;
    Ok(out)
}

fn describe(input: &ImageInput) -> String {
    match input {
        ImageInput::Path(p) => p.display().to_string(),
        ImageInput::Encoded { name, .. } => name.clone(),
        ImageInput::Pixels(r) => format!("{}x{} pixels", r.width, r.height),
    }
}

/// Applies random crop, flip, rotation and colour jitter to one preprocessed image
/// `x[3, r, r]` in place; `key` seeds every draw (same key, same result).
pub fn augment_image(x: &mut [f32], r: usize, spec: &ImageSpec, a: &Augment, key: u64) {
    if !a.is_active() {
        return;
    }
    let u = |k: u64| hash_uniform(key, k);
    // Where a pixel value of 0 lands after normalisation: the fill of uncovered area.
    let fill: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    let (cw, ch) = if a.crop_scale < 1.0 {
        let area = a.crop_scale + (1.0 - a.crop_scale) * u(0);
        let ratio = (0.75f32.ln() + (4.0f32 / 3.0 / 0.75).ln() * u(1)).exp();
        (
            (area * ratio).sqrt().min(1.0),
            (area / ratio).sqrt().min(1.0),
        )
    } else {
        (1.0, 1.0)
    };
    let cx = (1.0 - cw) * u(2) + cw / 2.0;
    let cy = (1.0 - ch) * u(3) + ch / 2.0;
    let flip = a.flip && u(4) < 0.5;
    let theta = (2.0 * u(5) - 1.0) * a.rotation.to_radians();
    let (sin, cos) = theta.sin_cos();
    let rf = r as f32;
    let src = x.to_vec();
    for oy in 0..r {
        for ox in 0..r {
            // Output pixel centre in [-1/2, 1/2], mapped into the crop, then rotated.
            let mut px = (ox as f32 + 0.5) / rf - 0.5;
            let py = (oy as f32 + 0.5) / rf - 0.5;
            if flip {
                px = -px;
            }
            let (qx, qy) = (px * cw, py * ch);
            let sx = (cos * qx - sin * qy + cx) * rf - 0.5;
            let sy = (sin * qx + cos * qy + cy) * rf - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            for c in 0..3 {
                let plane = &src[c * r * r..(c + 1) * r * r];
                let at = |yy: f32, xx: f32| -> f32 {
                    if yy < 0.0 || xx < 0.0 || yy >= rf || xx >= rf {
                        fill[c]
                    } else {
                        plane[yy as usize * r + xx as usize]
                    }
                };
                let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1.0))
                    + fy * ((1.0 - fx) * at(y0 + 1.0, x0) + fx * at(y0 + 1.0, x0 + 1.0));
                x[c * r * r + oy * r + ox] = v;
            }
        }
    }
    if a.color_jitter > 0.0 {
        let j = a.color_jitter;
        let bright = 1.0 + j * (2.0 * u(6) - 1.0);
        let contrast = 1.0 + j * (2.0 * u(7) - 1.0);
        // Jitter in pixel units (0..=pixel_max), then normalise again.
        let mut mean = 0.0f64;
        for c in 0..3 {
            for v in &mut x[c * r * r..(c + 1) * r * r] {
                *v = (*v * spec.std[c] + spec.mean[c]) * bright;
                mean += *v as f64;
            }
        }
        let mean = (mean / (3 * r * r) as f64) as f32;
        for c in 0..3 {
            for v in &mut x[c * r * r..(c + 1) * r * r] {
                let p = ((*v - mean) * contrast + mean).clamp(0.0, spec.pixel_max);
                *v = (p - spec.mean[c]) / spec.std[c];
            }
        }
    }
}

/// A pretrained image network ready to fine-tune.
#[derive(Debug, Clone)]
pub struct PretrainedImage {
    /// The network, with a fresh classifier of the requested classes.
    pub model: ConvNet,
    /// The model's preprocessing (at its own resolution).
    pub spec: ImageSpec,
    /// The manifest it came from.
    pub manifest: Manifest,
}

/// Loads the trainable weights an image model's manifest declares (fetching them into
/// `cache` first), with a fresh classifier of `classes` outputs.
pub fn load_pretrained_image(
    manifest: &Manifest,
    cache: &Cache,
    classes: usize,
    seed: u64,
) -> Result<PretrainedImage, FinetuneError> {
    let model_err = |m: String| FinetuneError::Model {
        model: manifest.name.clone(),
        message: m,
    };
    let spec = manifest
        .model
        .as_ref()
        .ok_or_else(|| model_err(format!("is a {:?} asset, not a model", manifest.kind)))?;
    let image = spec
        .image
        .as_ref()
        .ok_or_else(|| model_err("is not an image model".into()))?;
    crate::model::check_trainable(manifest)?;
    let trainable = spec
        .trainable
        .as_ref()
        .ok_or_else(|| model_err("declares no trainable weights".into()))?;
    if image.layout != Layout::Nchw {
        return Err(model_err("fine-tuning needs an NCHW model".into()));
    }
    if classes < 2 {
        return Err(FinetuneError::Data(format!(
            "a classifier needs at least 2 classes, got {classes}"
        )));
    }
    Fetcher::new(cache.clone())
        .fetch_files(manifest, &[trainable.weights.as_str()])
        .map_err(|e| model_err(format!("fetching its trainable weights: {e}")))?;
    let path = cache.file_path(manifest, &trainable.weights);
    let tensors = match trainable.format.as_str() {
        "torch-legacy" => crate::torch::read_torch_legacy(&path)?,
        "safetensors" => crate::weights::read_safetensors(&path)?,
        other => {
            return Err(model_err(format!(
                "weights format {other:?} is not readable"
            )));
        }
    };
    let shown = path.display().to_string();
    let model = match trainable.architecture.as_str() {
        "mobilenetv2" => ConvNet::mobilenetv2(&tensors, &shown, classes, seed)?,
        "efficientnet-lite0" => ConvNet::efficientnet_lite0(&tensors, &shown, classes, seed)?,
        other => {
            return Err(model_err(format!(
                "architecture {other:?} is not trainable"
            )));
        }
    };
    if model.features != spec.dim {
        return Err(model_err(format!(
            "the weights give {}-d features, the manifest says {}",
            model.features, spec.dim
        )));
    }
    Ok(PretrainedImage {
        model,
        spec: image.clone(),
        manifest: manifest.clone(),
    })
}

/// Pooled features `[n, features]` of images (inference: running statistics, no
/// dropout, no augmentation), `batch_size` at a time.
pub fn image_features(
    net: &ConvNet,
    inputs: &[ImageInput],
    spec: &ImageSpec,
    batch_size: usize,
    th: Threads,
) -> Result<Vec<f32>, FinetuneError> {
    let all: Vec<usize> = (0..inputs.len()).collect();
    features_at(net, inputs, &all, spec, batch_size, th)
}

/// [`image_features`] of images `rows` of `inputs`.
fn features_at(
    net: &ConvNet,
    inputs: &[ImageInput],
    rows: &[usize],
    spec: &ImageSpec,
    batch_size: usize,
    th: Threads,
) -> Result<Vec<f32>, FinetuneError> {
    let r = spec.size as usize;
    check_resolution(net, r)?;
    let mut out = Vec::with_capacity(rows.len() * net.features);
    for idx in rows.chunks(batch_size.max(1)) {
        let x = preprocess_batch(inputs, idx, spec)?;
        out.extend(net.features_of(&x, idx.len(), r, r, th));
    }
    Ok(out)
}

/// AdaBN (Li, Wang, Shi, Liu & Hou, 2016): every BatchNorm's running statistics
/// re-estimated on unlabelled `target` images, weights untouched. (A head trained on
/// another domain's features should see that domain through its own statistics too.) Each layer normalises
/// with its batch's statistics while the running ones become the cumulative average
/// over all batches (PyTorch's `momentum=None`), so the whole target counts equally and
/// the source's statistics are gone after the first batch. Batches need at least two
/// images (a one-image batch has no variance); a last single image is left out.
pub fn adabn(
    net: &mut ConvNet,
    target: &[ImageInput],
    spec: &ImageSpec,
    batch_size: usize,
    th: Threads,
) -> Result<(), FinetuneError> {
    let r = spec.size as usize;
    check_resolution(net, r)?;
    if target.len() < 2 || batch_size < 2 {
        return Err(FinetuneError::Data(format!(
            "AdaBN needs batches of at least 2 target images, got {} images in batches of {batch_size}",
            target.len()
        )));
    }
    let all: Vec<usize> = (0..target.len()).collect();
    let momentum = net.bn_momentum;
    for (k, idx) in all.chunks(batch_size).filter(|c| c.len() >= 2).enumerate() {
        let x = preprocess_batch(target, idx, spec)?;
        let x = crate::conv::nchw_to_chwn(&x, idx.len(), 3, r * r);
        // Batch k of the cumulative average weighs 1 / (k + 1).
        net.bn_momentum = 1.0 / (k + 1) as f32;
        net.forward_train(x, idx.len(), (r, r), 0, true, 0.0, 0, th);
    }
    net.bn_momentum = momentum;
    Ok(())
}

/// Class scores (logits) `[n, classes]` of images.
pub fn image_logits(
    net: &ConvNet,
    inputs: &[ImageInput],
    spec: &ImageSpec,
    batch_size: usize,
    th: Threads,
) -> Result<Vec<f32>, FinetuneError> {
    let f = image_features(net, inputs, spec, batch_size, th)?;
    Ok(net.logits_of(&f, inputs.len(), th))
}

/// The most likely class of each image.
pub fn predict_images(
    net: &ConvNet,
    inputs: &[ImageInput],
    spec: &ImageSpec,
    batch_size: usize,
    th: Threads,
) -> Result<Vec<usize>, FinetuneError> {
    let logits = image_logits(net, inputs, spec, batch_size, th)?;
    Ok(logits.chunks_exact(net.classes).map(argmax).collect())
}

fn argmax(r: &[f32]) -> usize {
    r.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

pub(crate) fn check_resolution(net: &ConvNet, r: usize) -> Result<(), FinetuneError> {
    if r < net.min_input() {
        return Err(FinetuneError::Params(format!(
            "resolution {r} is below {}'s minimum of {} pixels ({} stride-2 stages)",
            net.arch,
            net.min_input(),
            net.min_input().trailing_zeros()
        )));
    }
    Ok(())
}

/// Images `idx` preprocessed into one `[n, 3, r, r]` buffer and augmented with `a`;
/// each image's draws follow from `key`, the epoch and its index alone.
pub(crate) fn augmented_batch(
    inputs: &[ImageInput],
    idx: &[usize],
    spec: &ImageSpec,
    a: &Augment,
    key: u64,
    epoch: usize,
) -> Result<Vec<f32>, FinetuneError> {
    let mut x = preprocess_batch(inputs, idx, spec)?;
    let r = spec.size as usize;
    let key = key ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x.par_chunks_mut(3 * r * r)
        .zip(idx.par_iter())
        .for_each(|(img, &i)| {
            augment_image(
                img,
                r,
                spec,
                a,
                key ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            );
        });
    Ok(x)
}

/// Frozen blocks' outputs kept in memory when no augmentation changes the input, up to
/// this many bytes.
const FROZEN_CACHE_BYTES: usize = 2 << 30;

pub(crate) struct ImageLearner<'a> {
    net: &'a mut ConvNet,
    inputs: &'a [ImageInput],
    labels: &'a [usize],
    spec: ImageSpec,
    params: ImageParams,
    first: usize,
    /// Input of block `first` per training image, when cached (no augmentation).
    frozen: Option<Arc<Vec<Vec<f32>>>>,
    frozen_hw: (usize, usize),
    th: Threads,
}

impl ImageLearner<'_> {
    fn batch_input(
        &self,
        idx: &[usize],
        epoch: usize,
    ) -> Result<(Vec<f32>, (usize, usize)), FinetuneError> {
        let r = self.spec.size as usize;
        let n = idx.len();
        if let Some(f) = &self.frozen {
            // Cached rows are [C][h*w] per image; the batch wants [C][h*w, n].
            let c = channels_at(self.net, self.first);
            let per = f[idx[0]].len() / c;
            let rows: Vec<&[f32]> = idx.iter().map(|&i| f[i].as_slice()).collect();
            let x = conv::chwn_of_images(&rows, c, per);
            return Ok((x, self.frozen_hw));
        }
        let x = augmented_batch(
            self.inputs,
            idx,
            &self.spec,
            &self.params.augment,
            self.params.seed ^ fnv("augment"),
            epoch,
        )?;
        let x = conv::nchw_to_chwn(&x, n, 3, r * r);
        Ok(self
            .net
            .forward_blocks(x, n, (r, r), 0..self.first, self.th))
    }
}

impl Learner for ImageLearner<'_> {
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
        let (x, hw) = self.batch_input(idx, epoch)?;
        let batch_stats = self.params.batch_norm == BnMode::Batch;
        let key = self.params.seed ^ fnv("dropout") ^ step.wrapping_mul(0x9E37_79B9);
        let n = idx.len();
        let (logits, acts) = self.net.forward_train(
            x,
            n,
            hw,
            self.first,
            batch_stats,
            self.params.dropout,
            key,
            self.th,
        );
        let y: Vec<usize> = idx.iter().map(|&i| self.labels[i]).collect();
        let mut d = vec![0.0f32; logits.len()];
        let loss = ops::cross_entropy(&logits, &y, self.net.classes, &mut d);
        let forward_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        if loss.is_finite() {
            self.net.backward(&acts, &d, self.first, grads, self.th);
        }
        Ok(StepOut {
            loss,
            items: n,
            forward_seconds,
            backward_seconds: t1.elapsed().as_secs_f64(),
        })
    }

    fn evaluate(&mut self, rows: &[usize]) -> Result<Validation, FinetuneError> {
        let f = features_at(self.net, self.inputs, rows, &self.spec, 64, self.th)?;
        let logits = self.net.logits_of(&f, rows.len(), self.th);
        let y: Vec<usize> = rows.iter().map(|&i| self.labels[i]).collect();
        Ok(validation_of(&logits, &y, self.net.classes))
    }
}

/// Fine-tunes `net` (whose classifier has one output per class) on images and labels,
/// preprocessed with `spec` at the resolution of `params`. The weights kept are the last
/// epoch's, or the best validation epoch's if it beats the last by more than one
/// standard error.
pub fn finetune_images(
    net: &mut ConvNet,
    inputs: &[ImageInput],
    labels: &[usize],
    spec: &ImageSpec,
    params: &ImageParams,
    run: &RunOptions,
    on_epoch: &mut (dyn FnMut(&EpochLog, &ConvNet) + Send),
) -> Result<FinetuneReport, FinetuneError> {
    params.check()?;
    check_images(net, inputs, labels)?;
    let pool = crate::ops::Threads(params.threads).pool()?;
    pool.install(|| {
        let (train, val) = image_split(labels, params)?;
        let mut frozen = FrozenBlocks::default();
        let (mut learner, units, settings) =
            image_learner(net, inputs, labels, spec, params, run, &train, &mut frozen)?;
        run_epochs(
            &mut learner,
            &units,
            train.len(),
            &val,
            &settings,
            run,
            on_epoch,
        )
    })
}

/// Checks labelled training images; errors name the row.
pub(crate) fn check_images(
    net: &ConvNet,
    inputs: &[ImageInput],
    labels: &[usize],
) -> Result<(), FinetuneError> {
    if inputs.is_empty() {
        return Err(FinetuneError::Data("no training images".into()));
    }
    if inputs.len() != labels.len() {
        return Err(FinetuneError::Data(format!(
            "{} images but {} labels",
            inputs.len(),
            labels.len()
        )));
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, y)| **y >= net.classes) {
        return Err(FinetuneError::Data(format!(
            "row {i}: label {y} but the model has {} classes",
            net.classes
        )));
    }
    let mut seen = vec![false; net.classes];
    labels.iter().for_each(|&y| seen[y] = true);
    if seen.iter().filter(|s| **s).count() < 2 {
        return Err(FinetuneError::Data(
            "the training rows hold a single class: a classifier needs at least two".into(),
        ));
    }
    Ok(())
}

/// The training and validation images (stratified with the run's seed when
/// `validation_fraction > 0`): the same for every configuration of a search.
pub(crate) fn image_split(
    labels: &[usize],
    params: &ImageParams,
) -> Result<(Vec<usize>, Vec<usize>), FinetuneError> {
    let all: Vec<usize> = (0..labels.len()).collect();
    if params.validation_fraction > 0.0 {
        stratified_split(
            labels,
            &all,
            params.validation_fraction as f64,
            params.seed ^ 0x5EED,
        )
        .map_err(|e| FinetuneError::Data(e.to_string()))
    } else {
        Ok((all, Vec::new()))
    }
}

/// Frozen blocks' outputs per training image and their size, by first trainable block
/// and resolution: configurations of a search that freeze the same blocks share them.
pub(crate) type FrozenBlocks =
    std::collections::BTreeMap<(usize, usize), (Arc<Vec<Vec<f32>>>, (usize, usize))>;

/// The learner of one configuration, the units its epochs shuffle and the loop's
/// settings.
#[allow(clippy::too_many_arguments)]
pub(crate) fn image_learner<'a>(
    net: &'a mut ConvNet,
    inputs: &'a [ImageInput],
    labels: &'a [usize],
    spec: &ImageSpec,
    params: &ImageParams,
    run: &RunOptions,
    train: &[usize],
    frozen: &mut FrozenBlocks,
) -> Result<(ImageLearner<'a>, Vec<usize>, LoopSettings), FinetuneError> {
    let spec = spec_at(spec, params.resolution);
    let r = spec.size as usize;
    check_resolution(net, r)?;
    let th = Threads(params.threads);
    let first = params.first_trainable(net);
    let mut learner = ImageLearner {
        net,
        inputs,
        labels,
        spec,
        params: params.clone(),
        first,
        frozen: None,
        frozen_hw: (r, r),
        th,
    };
    if first > 0 && !params.augment.is_active() {
        if let Some((f, hw)) = frozen.get(&(first, r)) {
            learner.frozen = Some(f.clone());
            learner.frozen_hw = *hw;
        } else {
            cache_frozen(&mut learner, train, run.frozen_store.as_ref())?;
            if let Some(f) = &learner.frozen {
                frozen.insert((first, r), (f.clone(), learner.frozen_hw));
            }
        }
    }
    let settings = params.common().settings(
        first,
        serde_json::to_string(params).expect("plain struct"),
        "images",
    );
    Ok((learner, train.to_vec(), settings))
}

/// Runs the frozen blocks once per training image (or reads their outputs from the
/// run's frozen store) and keeps them in memory, when they fit in [`FROZEN_CACHE_BYTES`].
fn cache_frozen(
    l: &mut ImageLearner,
    train: &[usize],
    store: Option<&tl_features::Store>,
) -> Result<(), FinetuneError> {
    let r = l.spec.size as usize;
    let (h, w) = l.net.output_hw((r, r), 0..l.first);
    let c = channels_at(l.net, l.first);
    if train.len() * c * h * w * 4 > FROZEN_CACHE_BYTES {
        tracing::info!(
            "frozen blocks recomputed every epoch: their outputs would not fit in memory"
        );
        return Ok(());
    }
    let t = Instant::now();
    let (states, computed) = crate::frozen::frozen_image_states(
        l.net,
        l.inputs,
        train,
        &l.spec,
        l.first,
        c * h * w,
        store,
        l.th,
    )?;
    tracing::info!(
        "frozen blocks: {computed} of {} images computed, the rest cached ({:.1}s)",
        train.len(),
        t.elapsed().as_secs_f64()
    );
    let mut rows = vec![Vec::new(); l.inputs.len()];
    for (&i, v) in train.iter().zip(states) {
        rows[i] = v;
    }
    l.frozen = Some(Arc::new(rows));
    l.frozen_hw = (h, w);
    Ok(())
}

/// Channels of the input of block `first` (the pooled width above the last block).
fn channels_at(net: &ConvNet, first: usize) -> usize {
    net.blocks
        .get(first)
        .map_or(net.features, |b| b.units[0].cin)
}
