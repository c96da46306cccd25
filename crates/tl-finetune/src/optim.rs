//! AdamW fused over the flat parameter buffer, gradient clipping and the learning-rate
//! schedule.

use rayon::prelude::*;

use crate::bert::Slot;

const CHUNK: usize = 1 << 14;

/// AdamW state: first and second moments, one per parameter, and the step count.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Steps taken.
    pub step: u64,
    /// Decay rate of the first moment.
    pub beta1: f32,
    /// Decay rate of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
}

/// Per-step settings of [`AdamW::step`].
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    /// Learning rate of the top (classifier) group this step.
    pub lr: f32,
    /// Multiplier per depth below the top: depth `d` gets `lr * layer_decay^(top - d)`.
    pub layer_decay: f32,
    /// Decoupled weight decay (not applied to biases and LayerNorm).
    pub weight_decay: f32,
    /// Gradients are multiplied by this (clipping) before use.
    pub grad_scale: f32,
    /// Slots of lower depth are frozen: neither updated nor their moments touched.
    pub first_trainable: usize,
}

impl AdamW {
    /// Fresh state for `n` parameters, PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn new(n: usize) -> AdamW {
        AdamW {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// One update of every trainable parameter, as `torch.optim.AdamW` computes it;
    /// reads each gradient once and zeroes it for the next step (one pass over memory).
    pub fn step(&mut self, slots: &[Slot], params: &mut [f32], grads: &mut [f32], cfg: StepConfig) {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let top = slots.iter().map(|s| s.depth).max().unwrap_or(0);
        for slot in slots {
            let r = slot.range.clone();
            if slot.depth < cfg.first_trainable {
                // Frozen: the backward pass never writes these gradients.
                continue;
            }
            let lr = cfg.lr * cfg.layer_decay.powi((top - slot.depth) as i32);
            let wd = if slot.decay { cfg.weight_decay } else { 0.0 };
            let step_size = lr / bc1;
            let decay = 1.0 - lr * wd;
            let gs = cfg.grad_scale;
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.m[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.v[r].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    // Element-wise only, so every instruction set gives the same bits.
                    pulp::Arch::new().dispatch(
                        #[inline(always)]
                        || {
                            for i in 0..p.len() {
                                let gi = g[i] * gs;
                                g[i] = 0.0;
                                let mi = b1 * m[i] + (1.0 - b1) * gi;
                                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                                m[i] = mi;
                                v[i] = vi;
                                let denom = vi.sqrt() / bc2_sqrt + eps;
                                p[i] = p[i] * decay - step_size * mi / denom;
                            }
                        },
                    )
                });
        }
    }
}

/// The L2 norm of the gradients of trainable slots, summed in f64 in fixed chunks.
pub fn grad_norm(slots: &[Slot], grads: &[f32], first_trainable: usize) -> f64 {
    let mut total = 0.0f64;
    for slot in slots.iter().filter(|s| s.depth >= first_trainable) {
        let parts: Vec<f64> = grads[slot.range.clone()]
            .par_chunks(CHUNK)
            .map(|c| {
                // Eight explicit lanes: vectorisable, and the same order on every CPU.
                pulp::Arch::new().dispatch(
                    #[inline(always)]
                    || {
                        let mut acc = [0.0f64; 8];
                        let mut it = c.chunks_exact(8);
                        for w in &mut it {
                            for j in 0..8 {
                                acc[j] += w[j] as f64 * w[j] as f64;
                            }
                        }
                        let tail: f64 = it.remainder().iter().map(|&g| g as f64 * g as f64).sum();
                        acc.iter().sum::<f64>() + tail
                    },
                )
            })
            .collect();
        total += parts.iter().sum::<f64>();
    }
    total.sqrt()
}

/// Linear warm-up over `warmup` steps to `peak`, then linear decay to 0 at `total`
/// (transformers' `get_linear_schedule_with_warmup`).
pub fn linear_schedule(step: u64, warmup: u64, total: u64, peak: f32) -> f32 {
    if step < warmup {
        peak * step as f32 / warmup.max(1) as f32
    } else {
        peak * (total.saturating_sub(step)) as f32 / (total.saturating_sub(warmup)).max(1) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(0, 10, 100, 1.0), 0.0);
        assert!((linear_schedule(5, 10, 100, 1.0) - 0.5).abs() < 1e-6);
        assert!((linear_schedule(10, 10, 100, 1.0) - 1.0).abs() < 1e-6);
        assert!((linear_schedule(55, 10, 100, 1.0) - 0.5).abs() < 1e-6);
        assert_eq!(linear_schedule(100, 10, 100, 1.0), 0.0);
    }
}
