//! The distillation losses between the target's next-token distribution p (its top entries and
//! the mass of the rest, see [`SparseDistribution`]) and the draft's q = softmax(logits), as Burn
//! tensors so the draft's side is differentiated.
//!
//! The vocabulary is split into p's listed ids and one "rest" bucket, in both distributions:
//!
//! - forward KL: Σᵢ pᵢ·(log pᵢ − log qᵢ) + p_rest·(log p_rest − log q_rest)
//! - total variation: ½·(Σᵢ |pᵢ − qᵢ| + |p_rest − q_rest|)
//!
//! With the whole support listed these are the exact divergences. Total variation is what
//! speculative sampling pays for: a draft at distance TV from the target at a position has its
//! token accepted with probability 1 − TV. A hard label (a token, for drafts of another
//! vocabulary) is p = one-hot, where KL is the cross-entropy and TV = 1 − q(label).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Which divergence to minimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Kl,
    Tvd,
}

/// The target's distribution at one position: its largest probabilities by id (the rest of the
/// mass is 1 − their sum).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparseDistribution {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
}

impl SparseDistribution {
    /// All of the mass on `id`.
    pub fn one_hot(id: u32) -> Self {
        SparseDistribution { ids: vec![id], probs: vec![1.0] }
    }

    /// The `k` most probable ids of `probs` (a full distribution), most probable first.
    pub fn top_k(probs: &[f32], k: usize) -> Self {
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        let k = k.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by(k, |&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
            order.truncate(k);
        }
        order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
        SparseDistribution { probs: order.iter().map(|&i| probs[i as usize]).collect(), ids: order }
    }

    /// 1 − the listed mass, never below 0.
    pub fn rest(&self) -> f32 {
        (1.0 - self.probs.iter().sum::<f32>()).max(0.0)
    }
}

/// Smallest probability a log is taken of (keeps a bucket the draft empties finite).
const FLOOR: f32 = 1e-12;

/// The mean over rows of the loss between `targets[r]` and softmax(`logits[r]`), `logits`
/// [rows, vocab] on any device. Rows may list different numbers of ids: shorter rows are padded
/// with entries that are masked out of both distributions.
pub fn distillation_loss(logits: Tensor<2>, targets: &[SparseDistribution], loss: Loss) -> Tensor<1> {
    let [rows, _] = logits.dims();
    assert_eq!(rows, targets.len(), "one target distribution per row of logits");
    let device = logits.device();
    let width = targets.iter().map(|t| t.ids.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0i32; rows * width];
    let mut p = vec![0f32; rows * width];
    let mut listed = vec![0f32; rows * width];
    let mut p_rest = vec![0f32; rows];
    for (r, t) in targets.iter().enumerate() {
        for (j, (&id, &prob)) in t.ids.iter().zip(&t.probs).enumerate() {
            ids[r * width + j] = id as i32;
            p[r * width + j] = prob;
            listed[r * width + j] = 1.0;
        }
        p_rest[r] = t.rest();
    }
    let ids: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [rows, width]), &device);
    let p: Tensor<2> = Tensor::from_data(TensorData::new(p, [rows, width]), &device);
    let listed: Tensor<2> = Tensor::from_data(TensorData::new(listed, [rows, width]), &device);
    let p_rest: Tensor<2> = Tensor::from_data(TensorData::new(p_rest, [rows, 1]), &device);
    let log_q = log_softmax(logits, 1);
    let log_q_listed = log_q.gather(1, ids);
    let q_listed = log_q_listed.clone().exp().mul(listed);
    let q_rest = (q_listed.clone().sum_dim(1).neg() + 1.0).clamp_min(FLOOR);
    let per_row = match loss {
        // Terms with p = 0 (padding, an empty rest) vanish; p·log p is a constant of the draft.
        Loss::Kl => {
            let listed = p.clone().mul(p.clone().clamp_min(FLOOR).log() - log_q_listed).sum_dim(1);
            let rest = p_rest.clone().mul(p_rest.clone().clamp_min(FLOOR).log() - q_rest.log());
            listed + rest
        }
        Loss::Tvd => ((p - q_listed).abs().sum_dim(1) + (p_rest - q_rest).abs()).mul_scalar(0.5),
    };
    per_row.mean().reshape([1])
}

/// The same loss computed in f64 on the host from one row of logits, as a reference.
pub fn reference_loss(logits: &[f32], target: &SparseDistribution, loss: Loss) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let q = |id: u32| (logits[id as usize] as f64 - max).exp() / z;
    let q_listed: f64 = target.ids.iter().map(|&i| q(i)).sum();
    let (p_rest, q_rest) = (target.rest() as f64, (1.0 - q_listed).max(FLOOR as f64));
    match loss {
        Loss::Kl => {
            let kl = |p: f64, q: f64| if p > 0.0 { p * (p.max(FLOOR as f64).ln() - q.ln()) } else { 0.0 };
            target.ids.iter().zip(&target.probs).map(|(&i, &p)| kl(p as f64, q(i))).sum::<f64>() + kl(p_rest, q_rest)
        }
        Loss::Tvd => 0.5 * (target.ids.iter().zip(&target.probs).map(|(&i, &p)| (p as f64 - q(i)).abs()).sum::<f64>() + (p_rest - q_rest).abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn device_loss(logits: &[f32], vocab: usize, targets: &[SparseDistribution], loss: Loss) -> f64 {
        let rows = logits.len() / vocab;
        let t: Tensor<2> = Tensor::from_data(TensorData::new(logits.to_vec(), [rows, vocab]), &Device::flex());
        distillation_loss(t, targets, loss).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[0] as f64
    }

    #[test]
    fn losses_match_the_host_reference_and_the_textbook_cases() {
        let logits = [0.5f32, -1.0, 2.0, 0.0, 1.0, 0.3, -0.2, 0.9];
        let full = {
            let e: Vec<f64> = logits[..4].iter().map(|&l| (l as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| (v / z) as f32).collect::<Vec<_>>()
        };
        // Rows of different lengths (the second is padded) and a padded id (0) also listed.
        let targets = [SparseDistribution { ids: vec![2, 0], probs: vec![0.6, 0.3] }, SparseDistribution::one_hot(0)];
        for loss in [Loss::Kl, Loss::Tvd] {
            let want = (reference_loss(&logits[..4], &targets[0], loss) + reference_loss(&logits[4..], &targets[1], loss)) / 2.0;
            let got = device_loss(&logits, 4, &targets, loss);
            assert!((got - want).abs() < 1e-5, "{loss:?}: {got} vs {want}");
        }
        // The draft's own distribution, fully listed: zero divergence.
        let own = SparseDistribution { ids: vec![0, 1, 2, 3], probs: full.clone() };
        for loss in [Loss::Kl, Loss::Tvd] {
            assert!(device_loss(&logits[..4], 4, std::slice::from_ref(&own), loss).abs() < 1e-5);
        }
        // A hard label: KL is the cross-entropy, TV is 1 − q(label).
        let label = SparseDistribution::one_hot(1);
        assert!((device_loss(&logits[..4], 4, std::slice::from_ref(&label), Loss::Kl) + (full[1] as f64).ln()).abs() < 1e-5);
        assert!((device_loss(&logits[..4], 4, std::slice::from_ref(&label), Loss::Tvd) - (1.0 - full[1] as f64)).abs() < 1e-5);
    }

    #[test]
    fn top_k_keeps_the_largest_probabilities_in_order() {
        let d = SparseDistribution::top_k(&[0.1, 0.4, 0.05, 0.3, 0.15], 3);
        assert_eq!(d.ids, vec![1, 3, 4]);
        assert_eq!(d.probs, vec![0.4, 0.3, 0.15]);
        assert!((d.rest() - 0.15).abs() < 1e-6);
        assert_eq!(SparseDistribution::top_k(&[0.5, 0.5], 9).ids.len(), 2);
    }
}
