//! The training loop: the draft's LoRA pairs (tracked tensors, base weights frozen) are updated
//! with Adam on the distillation loss, batch by batch. The forward pass and its gradients are
//! Burn's autodiff on the model's device; the optimizer's few arithmetic lines run on the host
//! copies of A and B, which are then put back as new leaves.

use super::data::Example;
use super::loss::{distillation_loss, reference_loss, Loss};
use crate::error::{Error, Result};
use crate::model::{CausalLm, LogitRows, LoraTraining};
use burn::tensor::Tensor;

/// Optimizer settings (Adam with the usual β₁ = 0.9, β₂ = 0.999, ε = 10⁻⁸, no weight decay).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub lr: f64,
    pub loss: Loss,
    /// The gradient's global norm is clipped to this (as transformers' Trainer does by default);
    /// 0 = no clipping.
    pub max_grad_norm: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Mean loss per trained position over the batch, before the update.
    pub loss: f64,
    /// Positions trained.
    pub positions: usize,
    /// Tokens the draft read (forward and backward).
    pub tokens: usize,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
}

/// First and second moments of one pair.
struct Moments {
    a: (Vec<f64>, Vec<f64>),
    b: (Vec<f64>, Vec<f64>),
}

pub struct Trainer<'a> {
    model: &'a dyn CausalLm,
    training: &'a LoraTraining,
    cfg: TrainConfig,
    moments: Vec<Moments>,
    steps: u64,
}

impl<'a> Trainer<'a> {
    /// `model` must have been loaded by `training` (its projections hold the pairs).
    pub fn new(model: &'a dyn CausalLm, training: &'a LoraTraining, cfg: TrainConfig) -> Result<Self> {
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(Error::InvalidArgument(format!("learning rate {} is not a positive number", cfg.lr)));
        }
        let moments = training
            .pairs()
            .iter()
            .map(|p| {
                let (a, b) = p.sizes();
                Moments { a: (vec![0.0; a], vec![0.0; a]), b: (vec![0.0; b], vec![0.0; b]) }
            })
            .collect();
        Ok(Trainer { model, training, cfg, moments, steps: 0 })
    }

    /// One Adam step on the mean loss per trained position over `batch`.
    pub fn step(&mut self, batch: &[&Example]) -> Result<StepReport> {
        let positions: usize = batch.iter().map(|e| e.trained()).sum();
        if positions == 0 {
            return Err(Error::InvalidArgument("a training batch without trained positions".into()));
        }
        let pairs = self.training.pairs();
        // Sizes only: the values themselves stay on the device until the update.
        let mut grads: Vec<(Vec<f32>, Vec<f32>)> = pairs.iter().map(|p| {
            let (a, b) = p.sizes();
            (vec![0.0; a], vec![0.0; b])
        }).collect();
        let mut total = 0.0;
        for example in batch {
            // Each example's mean loss, weighted by its share of the batch's positions.
            let weight = example.trained() as f64 / positions as f64;
            let loss = example_loss(self.model, example, self.cfg.loss)?.mul_scalar(weight);
            total += scalar(loss.clone());
            let g = loss.backward();
            for (acc, pair) in grads.iter_mut().zip(pairs) {
                let (ga, gb) = pair.gradients(&g);
                acc.0.iter_mut().zip(ga).for_each(|(s, v)| *s += v);
                acc.1.iter_mut().zip(gb).for_each(|(s, v)| *s += v);
            }
        }
        let norm = grads.iter().flat_map(|(a, b)| a.iter().chain(b)).map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Err(Error::InvalidArgument(format!("the gradient is not finite (loss {total})")));
        }
        let clip = if self.cfg.max_grad_norm > 0.0 && norm > self.cfg.max_grad_norm { self.cfg.max_grad_norm / norm } else { 1.0 };
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let lr = self.cfg.lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        let adam = |w: &mut [f32], g: &[f32], (m, v): &mut (Vec<f64>, Vec<f64>)| {
            for i in 0..w.len() {
                let g = g[i] as f64 * clip;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                w[i] -= (lr * m[i] / (v[i].sqrt() + eps)) as f32;
            }
        };
        for ((pair, (ga, gb)), moments) in pairs.iter().zip(&grads).zip(&mut self.moments) {
            let (mut a, mut b) = pair.values();
            adam(&mut a, ga, &mut moments.a);
            adam(&mut b, gb, &mut moments.b);
            pair.set(a, b);
        }
        let tokens = batch.iter().map(|e| e.tokens.len() - 1).sum();
        Ok(StepReport { loss: total, positions, tokens, grad_norm: norm })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// The mean loss per trained position of `example` under `model` (no update), e.g. on held-out data.
pub fn evaluate(model: &dyn CausalLm, example: &Example, loss: Loss) -> Result<f64> {
    Ok(scalar(example_loss(model, example, loss)?))
}

/// The mean over `example`'s trained positions of 1 − TV(target, draft) — the probability that
/// speculative sampling at T = 1 accepts the draft's token there — over the loss's buckets, from
/// the model's host logits: any model, on host kernels (as inference runs it) or a Burn device.
pub fn expected_acceptance(model: &dyn CausalLm, example: &Example) -> Result<f64> {
    let n = check(example)?;
    let mut cache = model.new_cache(n)?;
    let logits = model.forward(&example.tokens[..n - 1], &mut cache, LogitRows::All)?;
    let vocab = logits.row(0).len();
    if let Some(id) = example.targets.iter().flat_map(|t| t.ids.iter()).find(|&&id| id as usize >= vocab) {
        return Err(Error::InvalidArgument(format!("a target distribution lists token {id}, past the model's {vocab} logits")));
    }
    let total: f64 = (example.first - 1..n - 1).zip(&example.targets).map(|(row, t)| 1.0 - reference_loss(logits.row(row), t, Loss::Tvd)).sum();
    Ok(total / example.targets.len() as f64)
}

/// The example's length, once its trained positions and targets are known to agree.
fn check(example: &Example) -> Result<usize> {
    let n = example.tokens.len();
    if example.first == 0 || example.first >= n || example.targets.len() != n - example.first {
        return Err(Error::InvalidArgument(format!(
            "an example of {n} tokens trains positions {}.. with {} targets",
            example.first,
            example.targets.len()
        )));
    }
    Ok(n)
}

/// The example's mean loss as a one-element tensor in the model's graph.
pub fn example_loss(model: &dyn CausalLm, example: &Example, loss: Loss) -> Result<Tensor<1>> {
    let n = check(example)?;
    let mut cache = model.new_cache(n)?;
    let logits = model.forward_tensor(&example.tokens[..n - 1], &mut cache, LogitRows::All)?;
    let vocab = logits.dims()[1];
    let rows = logits.slice([example.first - 1..n - 1, 0..vocab]);
    Ok(distillation_loss(rows, &example.targets, loss))
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map(|v| v[0] as f64).unwrap_or(f64::NAN)
}
