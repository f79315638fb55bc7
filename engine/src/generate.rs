//! Target-only generation: prefill, then one token per forward pass. The reference every
//! speculative decoder is measured against (same stopping rule, same sampling).
//!
//! Timing convention, shared with the speculative decoder: `prefill_s` runs from the start to the
//! first generated token (time to first token); `decode_s` covers every later token, so
//! `decode_tok_s = (tokens − 1) / decode_s`.

use crate::error::{Error, Result};
use crate::model::{CausalLm, KvCache, LogitRows};
use crate::sampling::{Sampler, SamplingParams};
use std::time::Instant;

/// What to generate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Stop at an end-of-sequence token (it is kept as the last generated id).
    pub stop_at_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig { max_new_tokens: 64, sampling: SamplingParams::greedy(), seed: 0, stop_at_eos: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
}

/// One finished generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Generation {
    /// Tokens per second after the first token (see the module docs).
    pub fn decode_tok_s(&self) -> f64 {
        if self.tokens.len() < 2 || self.decode_s <= 0.0 {
            return 0.0;
        }
        (self.tokens.len() - 1) as f64 / self.decode_s
    }

    pub fn prefill_tok_s(&self) -> f64 {
        if self.prefill_s <= 0.0 {
            return 0.0;
        }
        self.prompt_tokens as f64 / self.prefill_s
    }
}

/// KV positions a generation of `max_new_tokens` after `prompt_len` tokens needs (the last
/// generated token is never fed back).
pub fn positions_needed(prompt_len: usize, max_new_tokens: usize) -> usize {
    prompt_len + max_new_tokens.saturating_sub(1)
}

/// Validates a generation request before any work (sampling parameters, a non-empty prompt, prompt
/// plus budget within the model's context) and allocates the target's cache for it.
pub(crate) fn checked_cache(model: &dyn CausalLm, prompt: &[u32], cfg: &GenerationConfig) -> Result<KvCache> {
    cfg.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt has no tokens".into()));
    }
    let context = model.config().context_length;
    let needed = positions_needed(prompt.len(), cfg.max_new_tokens);
    if needed > context {
        return Err(Error::ContextOverflow { needed, capacity: context });
    }
    model.new_cache(needed.max(prompt.len()))
}

/// Generates up to `cfg.max_new_tokens` tokens after `prompt`, calling `on_token` for each as it is
/// produced (for streaming). Fails before any work if the prompt and budget overflow the context.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[u32],
    eos: &[u32],
    cfg: &GenerationConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let mut cache = checked_cache(model, prompt, cfg)?;
    let mut sampler = Sampler::new(cfg.sampling, cfg.seed);
    let mut tokens = Vec::with_capacity(cfg.max_new_tokens);
    let start = Instant::now();
    if cfg.max_new_tokens == 0 {
        return Ok(Generation { tokens, prompt_tokens: prompt.len(), stop: StopReason::MaxTokens, prefill_s: 0.0, decode_s: 0.0 });
    }
    let logits = model.forward(prompt, &mut cache, LogitRows::Last)?;
    let mut next = sampler.sample(logits.last());
    let prefill_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut stop = StopReason::MaxTokens;
    loop {
        tokens.push(next);
        on_token(next);
        if cfg.stop_at_eos && eos.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        if tokens.len() >= cfg.max_new_tokens {
            break;
        }
        let logits = model.forward(&[next], &mut cache, LogitRows::Last)?;
        next = sampler.sample(logits.last());
    }
    Ok(Generation { tokens, prompt_tokens: prompt.len(), stop, prefill_s, decode_s: decode_start.elapsed().as_secs_f64() })
}
