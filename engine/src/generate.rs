//! Target-only generation: prefill, then one token per forward pass. The reference every
//! speculative decoder is measured against (same stopping rule, same sampling).
//!
//! Timing convention, shared with the speculative decoder: `prefill_s` runs from the start to the
//! first generated token (time to first token); `decode_s` covers every later token, so
//! `decode_tok_s = (tokens − 1) / decode_s`.

use crate::constraint::Constrained;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    #[default]
    MaxTokens,
    /// The constraint's text is complete (nothing may follow).
    Constraint,
}

/// One finished generation.
#[derive(Debug, Clone, Default, serde::Serialize)]
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
    check_request(prompt, cfg, model.config().context_length)?;
    let needed = positions_needed(prompt.len(), cfg.max_new_tokens);
    model.new_cache(needed.max(prompt.len()))
}

/// Sampling parameters valid, a non-empty context, and context plus budget within `capacity`.
pub(crate) fn check_request(context: &[u32], cfg: &GenerationConfig, capacity: usize) -> Result<()> {
    cfg.sampling.validate()?;
    if context.is_empty() {
        return Err(Error::InvalidArgument("the prompt has no tokens".into()));
    }
    let needed = positions_needed(context.len(), cfg.max_new_tokens);
    if needed > capacity {
        return Err(Error::ContextOverflow { needed, capacity });
    }
    Ok(())
}

/// Generates up to `cfg.max_new_tokens` tokens after `prompt`, calling `on_token` for each as it is
/// produced (for streaming). Fails before any work if the prompt and budget overflow the context.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[u32],
    eos: &[u32],
    cfg: &GenerationConfig,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_constrained(model, prompt, eos, cfg, None, on_token)
}

/// [`generate`] with every generated token allowed by `constraint` (positioned at the start of
/// the generated text): forbidden logits are masked before warping, so the output follows the
/// target's distribution restricted to what the constraint allows. Generation also stops when the
/// constraint is complete.
pub fn generate_constrained(
    model: &dyn CausalLm,
    prompt: &[u32],
    eos: &[u32],
    cfg: &GenerationConfig,
    constraint: Option<&mut Constrained>,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    let mut cache = checked_cache(model, prompt, cfg)?;
    continue_generation(model, &mut cache, prompt, eos, cfg, constraint, on_token)
}

/// Continues `context` with a cache that holds keys and values for a prefix of it (what a chat
/// session kept from earlier turns): only the rest is fed (the prefill; `prompt_tokens` of the
/// result counts it), then decoding proceeds as in [`generate`]. The caller guarantees the cached
/// positions are `context`'s own first tokens. Afterwards the cache holds the context and every
/// generated token but the last.
pub fn continue_generation(
    model: &dyn CausalLm,
    cache: &mut KvCache,
    context: &[u32],
    eos: &[u32],
    cfg: &GenerationConfig,
    mut constraint: Option<&mut Constrained>,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    check_request(context, cfg, cache.capacity())?;
    // Always feed at least the last context token: its logits give the first new token.
    cache.truncate(context.len() - 1);
    let fed = context.len() - cache.len();
    let mut sampler = Sampler::new(cfg.sampling, cfg.seed);
    let mut tokens = Vec::with_capacity(cfg.max_new_tokens);
    let start = Instant::now();
    if cfg.max_new_tokens == 0 {
        return Ok(Generation { tokens, prompt_tokens: fed, stop: StopReason::MaxTokens, prefill_s: 0.0, decode_s: 0.0 });
    }
    let logits = model.forward(&context[cache.len()..], cache, LogitRows::Last)?;
    let mut next = sample_masked(&mut sampler, logits.last(), constraint.as_deref_mut())?;
    let prefill_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let stop = loop {
        if let Some(c) = constraint.as_deref_mut() {
            c.advance(next)?;
        }
        tokens.push(next);
        on_token(next);
        if let Some(reason) = stop_reason(next, tokens.len(), eos, cfg, constraint.as_deref()) {
            break reason;
        }
        let logits = model.forward(&[next], cache, LogitRows::Last)?;
        next = sample_masked(&mut sampler, logits.last(), constraint.as_deref_mut())?;
    };
    Ok(Generation { tokens, prompt_tokens: fed, stop, prefill_s, decode_s: decode_start.elapsed().as_secs_f64() })
}

/// Samples one token from `row` masked by the constraint at its current position (the caller
/// advances the constraint over the token).
pub(crate) fn sample_masked(sampler: &mut Sampler, row: &[f32], constraint: Option<&mut Constrained>) -> Result<u32> {
    let Some(c) = constraint else { return Ok(sampler.sample(row)) };
    let mut row = row.to_vec();
    c.apply(&mut row)?;
    Ok(sampler.sample(&row))
}

/// Why generation stops after emitting `token` as the `generated`-th token, if it does. One rule
/// for target-only and speculative decoding.
pub(crate) fn stop_reason(
    token: u32,
    generated: usize,
    eos: &[u32],
    cfg: &GenerationConfig,
    constraint: Option<&Constrained>,
) -> Option<StopReason> {
    if cfg.stop_at_eos && eos.contains(&token) {
        Some(StopReason::Eos)
    } else if constraint.is_some_and(Constrained::is_finished) {
        Some(StopReason::Constraint)
    } else if generated >= cfg.max_new_tokens {
        Some(StopReason::MaxTokens)
    } else {
        None
    }
}
