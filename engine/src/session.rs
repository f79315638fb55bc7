//! A conversation that keeps its KV caches between calls: each call hands over the *whole*
//! context (e.g. the conversation re-rendered with the chat template), and only the part beyond
//! the longest common prefix with what the caches already hold is fed. Re-rendering everything and
//! diffing token ids is robust to templates that are not prefix-stable (a template may rewrite
//! earlier turns, and re-tokenizing a reply need not give back the sampled ids): whatever changed
//! is simply recomputed from the first differing token on.
//!
//! ```no_run
//! use engine::generate::GenerationConfig;
//! use engine::session::Session;
//! use engine::speculative::SpecConfig;
//! use engine::tokenizer::ChatMessage;
//!
//! # fn main() -> engine::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let m = engine::load_model("qwen2.5-coder-0.5b", &device)?;
//! let mut session = Session::new(m.model.as_ref(), None, 4096)?;
//! let mut messages = vec![ChatMessage::new("user", "Name a prime number.")];
//! let cfg = SpecConfig::fixed(GenerationConfig { max_new_tokens: 64, ..Default::default() }, 4);
//! for follow_up in ["And another one?"] {
//!     let ids = m.tokenizer.encode(&m.tokenizer.apply_chat_template(&messages, true)?, false)?;
//!     let turn = session.generate(&ids, m.tokenizer.eos_ids(), &cfg, None, |_| {})?;
//!     messages.push(ChatMessage::new("assistant", m.tokenizer.decode(&turn.generation.tokens)?));
//!     messages.push(ChatMessage::new("user", follow_up));
//! }
//! # Ok(()) }
//! ```

use crate::constraint::Constrained;
use crate::error::Result;
use crate::generate::{continue_generation, Generation};
use crate::model::{CausalLm, KvCache};
use crate::speculative::{continue_speculative, Proposer, SpecConfig, SpecMetrics};

/// The target's cache and (optionally) a proposer with its own cache, persisting across calls.
pub struct Session<'m> {
    target: &'m dyn CausalLm,
    cache: KvCache,
    proposer: Option<Box<dyn Proposer + 'm>>,
    /// The tokens whose keys and values the target's cache holds (its first `cache.len()`) —
    /// the last context and generation, of which the cache lacks only the final token.
    history: Vec<u32>,
}

/// One call's result: the generation (its `prompt_tokens` counts only the tokens fed), the
/// speculative metrics when a proposer drafted, and how much of the context was reused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Turn {
    pub generation: Generation,
    pub metrics: Option<SpecMetrics>,
    /// Tokens of the context handed over.
    pub context_tokens: usize,
    /// Of those, positions the target's cache already held.
    pub reused_tokens: usize,
    /// Positions the proposer's cache already held (0 without a model proposer).
    pub draft_reused_tokens: usize,
}

impl<'m> Session<'m> {
    /// A session whose caches hold up to `capacity` positions (context plus generations; a call
    /// that would need more fails with [`Error::ContextOverflow`](crate::Error::ContextOverflow)).
    /// With a proposer, calls decode speculatively; the proposer must have been built for the same
    /// capacity.
    pub fn new(target: &'m dyn CausalLm, proposer: Option<Box<dyn Proposer + 'm>>, capacity: usize) -> Result<Self> {
        let capacity = capacity.min(target.config().context_length);
        Ok(Session { target, cache: target.new_cache(capacity)?, proposer, history: Vec::new() })
    }

    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Tokens the target's cache holds.
    pub fn cached(&self) -> &[u32] {
        &self.history[..self.cache.len().min(self.history.len())]
    }

    /// Forgets the conversation (the proposer's cache is replaced on the next call by diffing).
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.history.clear();
    }

    /// Generates a continuation of `context` (the whole conversation so far), feeding only what
    /// the caches do not already hold: target-only, or speculatively with `spec.schedule` when the
    /// session has a proposer.
    pub fn generate(
        &mut self,
        context: &[u32],
        eos: &[u32],
        spec: &SpecConfig,
        constraint: Option<&mut Constrained>,
        on_token: impl FnMut(u32),
    ) -> Result<Turn> {
        let common = self.history.iter().zip(context).take_while(|(a, b)| a == b).count();
        self.cache.truncate(common.min(context.len().saturating_sub(1)));
        let reused = self.cache.len();
        // Until the call succeeds the history is only known up to the reused prefix.
        self.history.truncate(reused);
        let (generation, metrics, draft_reused) = match self.proposer.as_mut() {
            Some(p) => {
                let out = continue_speculative(self.target, &mut self.cache, p.as_mut(), context, eos, spec, constraint, on_token)?;
                (out.generation, Some(out.metrics), p.reused())
            }
            None => (continue_generation(self.target, &mut self.cache, context, eos, &spec.generation, constraint, on_token)?, None, 0),
        };
        self.history = context.iter().chain(&generation.tokens).copied().collect();
        Ok(Turn { generation, metrics, context_tokens: context.len(), reused_tokens: reused, draft_reused_tokens: draft_reused })
    }
}
