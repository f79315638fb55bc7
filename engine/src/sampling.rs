//! From logits to tokens. [`Logits`] (raw scores, one row per position) and [`Probs`] (a warped,
//! normalised distribution) are distinct types: warping (temperature → top-k → top-p, the order
//! transformers applies them) is the only way from one to the other, so a draft samples from exactly
//! the distribution it later hands to a verifier.
//!
//! No hidden RNG: sampling takes explicit uniforms; [`Sampler`] owns a seeded ChaCha stream.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Logits for `rows` positions over a vocabulary, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    data: Vec<f32>,
    rows: usize,
    vocab: usize,
}

impl Logits {
    pub fn new(data: Vec<f32>, rows: usize, vocab: usize) -> Self {
        assert_eq!(data.len(), rows * vocab, "logits buffer does not match rows × vocab");
        Logits { data, rows, vocab }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    pub fn last(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
}

/// How logits become a distribution.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches top_p; 1 disables.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    pub fn with_temperature(temperature: f32) -> Self {
        SamplingParams { temperature, ..Self::greedy() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks what warping needs: a finite temperature ≥ 0 and top-p in (0, 1]. Any top-k is
    /// meaningful (0 = off; a k at or above the vocabulary keeps every token). Called by every
    /// generation entry point before any work.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidParameter {
                parameter: "temperature",
                value: self.temperature.to_string(),
                expected: "must be a finite number ≥ 0 (0 = greedy)".into(),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidParameter { parameter: "top-p", value: self.top_p.to_string(), expected: "must be in (0, 1] (1 = off)".into() });
        }
        Ok(())
    }
}

/// A normalised probability distribution over the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Probs(Vec<f32>);

impl Probs {
    /// Wraps probabilities that are already non-negative and sum to 1 (within rounding).
    pub fn from_normalized(p: Vec<f32>) -> Self {
        Probs(p)
    }

    /// The distribution that puts all mass on `token`.
    pub fn one_hot(token: u32, vocab: usize) -> Self {
        let mut p = vec![0.0; vocab];
        p[token as usize] = 1.0;
        Probs(p)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn get(&self, token: u32) -> f32 {
        self.0.get(token as usize).copied().unwrap_or(0.0)
    }

    /// Inverse-CDF sampling with a uniform `u` in [0, 1). Zero-probability tokens are never returned.
    pub fn sample(&self, u: f64) -> u32 {
        let total: f64 = self.0.iter().map(|&p| p as f64).sum();
        let target = u * total;
        let mut acc = 0.0f64;
        let mut last_nonzero = 0;
        for (i, &p) in self.0.iter().enumerate() {
            if p > 0.0 {
                acc += p as f64;
                last_nonzero = i;
                if target < acc {
                    return i as u32;
                }
            }
        }
        last_nonzero as u32
    }
}

/// Index of the largest logit; ties go to the lowest id, NaN never wins.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Temperature, then top-k, then top-p; greedy parameters give the one-hot argmax distribution.
pub fn warp(row: &[f32], params: &SamplingParams) -> Probs {
    if params.is_greedy() {
        return Probs::one_hot(argmax(row), row.len());
    }
    let inv_t = 1.0 / params.temperature as f64;
    let max = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = row
        .iter()
        .map(|&v| if v.is_nan() { 0.0 } else { ((v as f64 - max) * inv_t).exp() })
        .collect();
    let needs_cut = (params.top_k > 0 && params.top_k < row.len()) || params.top_p < 1.0;
    if needs_cut {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        // Descending probability, ties by id, so the kept set is deterministic.
        order.sort_unstable_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
        let mut keep = if params.top_k > 0 { params.top_k.min(row.len()) } else { row.len() };
        if params.top_p < 1.0 {
            let total: f64 = order[..keep].iter().map(|&i| p[i as usize]).sum();
            let mut cum = 0.0;
            let mut n = 0;
            for &i in &order[..keep] {
                if n > 0 && cum >= params.top_p as f64 * total {
                    break;
                }
                cum += p[i as usize];
                n += 1;
            }
            keep = n;
        }
        for &i in &order[keep..] {
            p[i as usize] = 0.0;
        }
    }
    let total: f64 = p.iter().sum();
    Probs(p.into_iter().map(|v| (v / total) as f32).collect())
}

/// A seeded sampler: the same seed and logits give the same tokens on every machine.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Sampler { params, rng: ChaCha20Rng::seed_from_u64(seed) }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Picks the next token from one row of logits. Greedy consumes no randomness.
    pub fn sample(&mut self, row: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(row);
        }
        let probs = warp(row, &self.params);
        let u = self.uniform();
        probs.sample(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_go_to_lowest_id_and_nan_never_wins() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn temperature_softmax_matches_hand_computation() {
        let p = warp(&[0.0, 1.0f32.ln(), 2.0f32.ln()], &SamplingParams::with_temperature(1.0));
        let e = [1.0 / 4.0, 1.0 / 4.0, 2.0 / 4.0];
        for (a, b) in p.as_slice().iter().zip(e) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        // T = 0.5 squares the odds.
        let p = warp(&[0.0, 2.0f32.ln()], &SamplingParams::with_temperature(0.5));
        assert!((p.get(1) - 0.8).abs() < 1e-6 && (p.get(0) - 0.2).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn top_k_and_top_p_cut_and_renormalise() {
        let row = [4.0f32.ln(), 3.0f32.ln(), 2.0f32.ln(), 1.0f32.ln()]; // p = .4 .3 .2 .1
        let p = warp(&row, &SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0 });
        assert!((p.get(0) - 4.0 / 7.0).abs() < 1e-6 && (p.get(1) - 3.0 / 7.0).abs() < 1e-6 && p.get(2) == 0.0);
        // top-p 0.65: .4 then .3 reaches .7 ≥ .65; the rest is cut.
        let p = warp(&row, &SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.65 });
        assert!(p.get(2) == 0.0 && p.get(3) == 0.0 && (p.get(0) - 4.0 / 7.0).abs() < 1e-6);
        // top-p smaller than the top token still keeps one token.
        let p = warp(&row, &SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.1 });
        assert_eq!(p.as_slice(), &[1.0, 0.0, 0.0, 0.0]);
        // top-k then top-p: within the top 3 (mass .9), .4 + .3 = .7 ≥ .75·.9 = .675.
        let p = warp(&row, &SamplingParams { temperature: 1.0, top_k: 3, top_p: 0.75 });
        assert!(p.get(2) == 0.0 && p.get(1) > 0.0);
    }

    #[test]
    fn greedy_warp_is_one_hot_argmax() {
        let p = warp(&[0.5, 2.0, 2.0], &SamplingParams::greedy());
        assert_eq!(p.as_slice(), &[0.0, 1.0, 0.0]);
    }

    #[test]
    fn inverse_cdf_sampling_skips_zero_mass() {
        let p = Probs::from_normalized(vec![0.0, 0.25, 0.0, 0.75]);
        assert_eq!(p.sample(0.0), 1);
        assert_eq!(p.sample(0.2499), 1);
        assert_eq!(p.sample(0.25), 3);
        assert_eq!(p.sample(0.999999), 3);
    }

    #[test]
    fn same_seed_same_tokens() {
        let row: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let params = SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.95 };
        let draw = |seed| {
            let mut s = Sampler::new(params, seed);
            (0..100).map(|_| s.sample(&row)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let refused = |p: SamplingParams| match p.validate() {
            Err(Error::InvalidParameter { parameter, .. }) => parameter,
            other => panic!("{p:?} gave {other:?}"),
        };
        for t in [-1.0, f32::NAN, f32::INFINITY, -0.001] {
            assert_eq!(refused(SamplingParams::with_temperature(t)), "temperature");
        }
        for top_p in [0.0, -0.5, 1.0001, 1.5, f32::NAN] {
            assert_eq!(refused(SamplingParams { temperature: 1.0, top_k: 0, top_p }), "top-p");
        }
        let e = SamplingParams::with_temperature(-1.0).validate().unwrap_err().to_string();
        assert_eq!(e, "invalid temperature -1: must be a finite number ≥ 0 (0 = greedy)");
        for ok in [SamplingParams::with_temperature(0.7), SamplingParams::greedy(), SamplingParams { temperature: 1.0, top_k: usize::MAX, top_p: 1.0 }] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
    }
}
