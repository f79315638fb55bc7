//! Proposers: anything that can guess the next k tokens. A draft model returns the distributions it
//! sampled from (its q); deterministic proposers return none and are verified as one-hot q.

use super::faults::{active, Fault};
use crate::constraint::Constrained;
use crate::error::Result;
use crate::model::{CausalLm, HeadSubset, KvCache, LogitRows};
use crate::sampling::{argmax, warp, Probs, Sampler};

/// Up to k proposed tokens, and the draft distribution each was sampled from (if any).
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    /// One row per token: exactly the warped distribution the token was drawn from.
    pub probs: Option<Vec<Probs>>,
}

/// The seam between drafting and verification.
pub trait Proposer {
    /// Sees the prompt before decoding starts (a model proposer prefills its cache here).
    fn prefill(&mut self, _context: &[u32]) -> Result<()> {
        Ok(())
    }

    /// Proposes up to `k` tokens continuing `context` (prompt and everything emitted so far). A
    /// sampling proposer must draw from the warping in `sampler.params()` — the target's — using
    /// `sampler`'s uniforms, and return those distributions.
    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal>;

    /// [`propose`](Self::propose) under a constraint positioned at the end of `context`. The
    /// result must contain only tokens the constraint allows, in sequence, and the constraint must
    /// be left where it was. This default keeps the unconstrained proposal up to its first
    /// forbidden token (lossless for any proposer: verification never depended on how the drafts
    /// were chosen, only on q being what they were drawn from); a sampling proposer should override
    /// it and draw from its q masked by the constraint, which is what makes drafts acceptable.
    fn propose_constrained(
        &mut self,
        context: &[u32],
        k: usize,
        sampler: &mut Sampler,
        constraint: &mut Constrained,
    ) -> Result<Proposal> {
        let mut proposal = self.propose(context, k, sampler)?;
        let mut allowed = 0;
        for &t in &proposal.tokens {
            if !constraint.mask()?.allows(t) {
                break;
            }
            constraint.advance(t)?;
            allowed += 1;
        }
        constraint.rollback(allowed)?;
        proposal.tokens.truncate(allowed);
        if let Some(q) = proposal.probs.as_mut() {
            q.truncate(allowed);
        }
        Ok(proposal)
    }

    /// Only the first `len` tokens of the last `context` + proposal stand; forget the rest.
    fn rollback(&mut self, len: usize);

    /// Positions of the last [`prefill`](Self::prefill)'s context that the proposer's cache
    /// already held (a chat session's earlier turns), for accounting.
    fn reused(&self) -> usize {
        0
    }

    /// Forward passes run so far (for cost accounting: c = time per draft step / target step).
    fn steps(&self) -> usize {
        0
    }
}

/// A smaller model with the target's vocabulary, drafting autoregressively with its own KV cache.
pub struct DraftModel<'m> {
    model: &'m dyn CausalLm,
    cache: KvCache,
    /// The tokens whose keys/values are in `cache` (its first `cache.len()`).
    seen: Vec<u32>,
    steps: usize,
    /// Stop drafting when the draft's top probability (softmax at temperature 1) falls below this.
    confidence_stop: Option<f32>,
    /// Positions the last prefill found already cached.
    reused: usize,
    /// A truncated vocabulary: the head computes only these ids and the draft samples among them.
    head: Option<&'m HeadSubset>,
}

impl<'m> DraftModel<'m> {
    pub fn new(model: &'m dyn CausalLm, capacity: usize) -> Result<Self> {
        Ok(DraftModel { cache: model.new_cache(capacity)?, model, seen: Vec::new(), steps: 0, confidence_stop: None, reused: 0, head: None })
    }

    /// Ends each draft early at the first position where the draft model's top probability is
    /// below `threshold` (that position is not proposed): a cheap guess that it would be rejected.
    pub fn with_confidence_stop(mut self, threshold: f32) -> Self {
        self.confidence_stop = Some(threshold);
        self
    }

    /// Drafts from a truncated vocabulary: the output layer computes only `head`'s ids (made by
    /// the draft model's [`CausalLm::head_subset`]), the draft's distribution is the warped
    /// distribution over those ids alone, and q is that distribution (zero elsewhere) — so
    /// verification stays exact while the draft's largest matrix shrinks.
    pub fn with_head_subset(mut self, head: &'m HeadSubset) -> Self {
        self.head = Some(head);
        self
    }

    /// One forward, logits of the last position: over the head subset's ids if there is one.
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.model.forward_head(tokens, &mut self.cache, LogitRows::Last, self.head)?;
        self.steps += 1;
        Ok(logits.last().to_vec())
    }

    /// The draft's q over the whole vocabulary for a distribution `local` over the logit row's
    /// positions (the head subset's ids, or the vocabulary itself).
    fn full_q(&self, local: Probs) -> Probs {
        match self.head {
            None => local,
            Some(head) => {
                let mut q = vec![0f32; self.model.config().vocab_size];
                // The deliberate fault writes probabilities at subset positions, not their ids.
                let index_as_id = active(Fault::SubsetIndexAsId);
                for (j, (&id, &p)) in head.ids().iter().zip(local.as_slice()).enumerate() {
                    q[if index_as_id { j } else { id as usize }] = p;
                }
                Probs::from_normalized(q)
            }
        }
    }

    /// The token id at position `j` of a logit row.
    fn token_at(&self, j: u32) -> u32 {
        self.head.map_or(j, |h| h.ids()[j as usize])
    }

    /// Truncates the cache to the longest prefix it shares with `context`, at most `limit`.
    fn keep_common_prefix(&mut self, context: &[u32], limit: usize) -> usize {
        let common = self.seen.iter().zip(context).take_while(|(a, b)| a == b).count();
        let keep = common.min(limit).min(self.cache.len());
        self.cache.truncate(keep);
        self.seen.truncate(keep);
        keep
    }

    /// Feeds whatever of `context` the cache has not seen and returns the logits of its last token.
    fn catch_up(&mut self, context: &[u32]) -> Result<Vec<f32>> {
        // Always re-feed at least the last token so there are logits to draft from.
        let keep = self.keep_common_prefix(context, context.len().saturating_sub(1));
        let row = self.forward_last(&context[keep..])?;
        self.seen.extend_from_slice(&context[keep..]);
        Ok(row)
    }

    /// Drafts up to `k` tokens, each from the warped (and, under a constraint, masked) row.
    fn draft(&mut self, context: &[u32], k: usize, sampler: &mut Sampler, mut constraint: Option<&mut Constrained>) -> Result<Proposal> {
        if k == 0 {
            return Ok(Proposal { tokens: vec![], probs: Some(vec![]) });
        }
        let params = *sampler.params();
        let mut row = self.catch_up(context)?;
        let mut tokens = Vec::with_capacity(k);
        let mut probs = Vec::with_capacity(k);
        for i in 0..k {
            if let Some(c) = constraint.as_deref_mut() {
                match self.head {
                    None => c.apply(&mut row)?,
                    Some(head) => {
                        let mask = c.mask()?;
                        for (x, &id) in row.iter_mut().zip(head.ids()) {
                            if !mask.allows(id) {
                                *x = f32::NEG_INFINITY;
                            }
                        }
                        // Nothing the constraint allows is in the draft's vocabulary: propose
                        // what there is (the target decodes the rest alone).
                        if row.iter().all(|x| *x == f32::NEG_INFINITY) {
                            break;
                        }
                    }
                }
            }
            if let Some(threshold) = self.confidence_stop {
                if top_probability(&row) < threshold && !active(Fault::ConfidenceOfSampledToken) {
                    break;
                }
            }
            let q = warp(&row, &params);
            let j = if params.is_greedy() { argmax(&row) } else { q.sample(sampler.uniform()) };
            // The deliberate fault: the stop looks at the sampled token instead of the row.
            if self.confidence_stop.is_some_and(|t| active(Fault::ConfidenceOfSampledToken) && q.get(j) < t) {
                break;
            }
            let d = self.token_at(j);
            tokens.push(d);
            probs.push(self.full_q(q));
            if let Some(c) = constraint.as_deref_mut() {
                c.advance(d)?;
                if c.is_finished() {
                    break;
                }
            }
            if i + 1 < k {
                row = self.forward_last(&[d])?;
                self.seen.push(d);
            }
        }
        if let Some(c) = constraint {
            c.rollback(tokens.len())?;
        }
        Ok(Proposal { tokens, probs: Some(probs) })
    }
}

/// max softmax(row) at temperature 1.
pub(super) fn top_probability(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (1.0 / total) as f32
}

impl Proposer for DraftModel<'_> {
    fn prefill(&mut self, context: &[u32]) -> Result<()> {
        // Everything but the last token (the first propose() feeds that one and drafts from it),
        // minus what the cache already holds from an earlier call on the same conversation.
        let limit = context.len().saturating_sub(1);
        self.reused = self.keep_common_prefix(context, limit);
        if limit > self.reused {
            let feed = &context[self.reused..limit];
            // Prefill's logits are not used: the subset head (if any) is the cheaper one.
            self.model.forward_head(feed, &mut self.cache, LogitRows::Last, self.head)?;
            self.seen.extend_from_slice(feed);
        }
        Ok(())
    }

    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        self.draft(context, k, sampler, None)
    }

    fn propose_constrained(&mut self, context: &[u32], k: usize, sampler: &mut Sampler, constraint: &mut Constrained) -> Result<Proposal> {
        self.draft(context, k, sampler, Some(constraint))
    }

    fn rollback(&mut self, len: usize) {
        self.cache.truncate(len);
        self.seen.truncate(self.cache.len());
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn reused(&self) -> usize {
        self.reused
    }
}
