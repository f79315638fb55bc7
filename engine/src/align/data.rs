//! Distillation data: the sequences the draft is trained on and, at each trained position, the
//! distribution it is pulled toward.
//!
//! Same vocabulary: the target continues each prompt (sampled at its decoding temperature) and
//! one more target pass over prompt + continuation gives its full next-token distribution at every
//! continuation position, of which the `top_k` largest probabilities are kept (the rest of the
//! mass stays as one bucket, see [`super::loss`]). The contexts are the target's own text because
//! that is where speculative decoding drafts: every accepted prefix is the target's output, and a
//! draft at total-variation distance TV from the target at a position is accepted there with
//! probability 1 − TV.
//!
//! Another vocabulary: the target's text re-tokenized for the draft, each next token a hard label.

use super::loss::SparseDistribution;
use crate::error::{Error, Result};
use crate::generate::{generate, GenerationConfig};
use crate::model::{CausalLm, LogitRows};
use crate::sampling::SamplingParams;

/// One training sequence: the draft reads `tokens`, and each position `i` in `first..tokens.len()`
/// is trained toward `targets[i - first]`, the next-token distribution given `tokens[..i]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub first: usize,
    pub targets: Vec<SparseDistribution>,
}

impl Example {
    /// Hard labels: every token from `first` on is the target of its position.
    pub fn labels(tokens: Vec<u32>, first: usize) -> Result<Self> {
        if first == 0 || first >= tokens.len() {
            return Err(Error::InvalidArgument(format!("trained positions {first}.. do not fit a sequence of {} tokens with a context", tokens.len())));
        }
        let targets = tokens[first..].iter().map(|&t| SparseDistribution::one_hot(t)).collect();
        Ok(Example { tokens, first, targets })
    }

    /// Positions trained.
    pub fn trained(&self) -> usize {
        self.targets.len()
    }
}

/// How the target makes the data.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    pub max_new_tokens: usize,
    /// Temperature the continuation is sampled at (0 = greedy).
    pub temperature: f32,
    /// Probabilities kept per position.
    pub top_k: usize,
    pub seed: u64,
}

/// The target's continuation of `prompt` and its distribution at each continuation position.
pub fn distill_from_target(target: &dyn CausalLm, prompt: &[u32], eos: &[u32], cfg: &DistillConfig) -> Result<Example> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("an empty prompt has nothing to continue".into()));
    }
    let sampling = if cfg.temperature > 0.0 { SamplingParams::with_temperature(cfg.temperature) } else { SamplingParams::greedy() };
    let gen = GenerationConfig { max_new_tokens: cfg.max_new_tokens, sampling, seed: cfg.seed, stop_at_eos: true };
    let continuation = generate(target, prompt, eos, &gen, |_| {})?.tokens;
    if continuation.is_empty() {
        return Err(Error::InvalidArgument("the target generated nothing for a prompt".into()));
    }
    let tokens: Vec<u32> = prompt.iter().chain(&continuation).copied().collect();
    let mut cache = target.new_cache(tokens.len())?;
    let logits = target.forward(&tokens[..tokens.len() - 1], &mut cache, LogitRows::All)?;
    let first = prompt.len();
    let targets = (first..tokens.len())
        .map(|i| {
            let row = logits.row(i - 1);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
            let z: f32 = exp.iter().sum();
            let probs: Vec<f32> = exp.iter().map(|e| e / z).collect();
            SparseDistribution::top_k(&probs, cfg.top_k)
        })
        .collect();
    Ok(Example { tokens, first, targets })
}
