//! The decoding loop: prefill both models, then propose → one target forward over the k drafted
//! tokens (k + 1 logit rows) → verify → roll both caches back to the accepted prefix. Nothing is
//! recomputed: the target's cache always holds the context minus its last token, which the next
//! verification feeds together with the new drafts.
//!
//! Timing convention (as target-only [`generate`](crate::generate::generate)): `prefill_s` runs to
//! the first generated token, `decode_s` covers the rest; metrics count the decode phase only.

use super::proposer::Proposer;
use super::schedule::{Schedule, Scheduler};
use super::verify::{verify, NextKind, VerifyMode};
use crate::error::Result;
use crate::generate::{checked_cache, Generation, GenerationConfig, StopReason};
use crate::model::{CausalLm, LogitRows};
use crate::sampling::{warp, Probs, Sampler};
use std::time::Instant;

/// Speculative generation settings: the target-only settings plus the draft-length schedule.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpecConfig {
    pub generation: GenerationConfig,
    pub schedule: Schedule,
}

impl SpecConfig {
    /// A fixed draft length k.
    pub fn fixed(generation: GenerationConfig, k: usize) -> Self {
        SpecConfig { generation, schedule: Schedule::Fixed { k } }
    }
}

/// Counters and timings of one speculative generation (decode phase), DESIGN.md §4.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpecMetrics {
    /// D: drafted tokens.
    pub drafted: u64,
    /// A: accepted drafted tokens.
    pub accepted: u64,
    /// N: verification calls (target forwards).
    pub iterations: u64,
    /// E: tokens emitted by those calls (accepted + recovered/bonus, after stop truncation).
    pub emitted: u64,
    /// Per draft position i: how often it was verified (all before it accepted), and accepted.
    pub position_tested: Vec<u64>,
    pub position_accepted: Vec<u64>,
    /// Iterations ending in a bonus token (all k accepted).
    pub bonus: u64,
    /// Σ over verified positions of the acceptance probability βᵢ = Σₓ min(pᵢ(x), qᵢ(x)) given what
    /// was drafted before (one-hot q for deterministic proposals; 0/1 in greedy mode), and
    /// Σ βᵢ(1 − βᵢ): the mean and variance of the number of acceptances the verifier should produce.
    pub expected_accepted: f64,
    pub expected_accepted_var: f64,
    pub draft_s: f64,
    pub verify_s: f64,
    /// Warping, verification and bookkeeping between the forwards.
    pub overhead_s: f64,
    /// Draft forward passes in the decode phase.
    pub draft_steps: u64,
}

impl SpecMetrics {
    /// α̂ = A / D.
    pub fn alpha(&self) -> f64 {
        ratio(self.accepted as f64, self.drafted as f64)
    }

    /// τ = E / N: tokens per target call.
    pub fn tau(&self) -> f64 {
        ratio(self.emitted as f64, self.iterations as f64)
    }

    /// aᵢ = P(dᵢ accepted | d₁..dᵢ₋₁ accepted).
    pub fn per_position(&self) -> Vec<f64> {
        self.position_accepted.iter().zip(&self.position_tested).map(|(&a, &t)| ratio(a as f64, t as f64)).collect()
    }

    /// Verified draft positions (Σᵢ of `position_tested`).
    pub fn tested(&self) -> u64 {
        self.position_tested.iter().sum()
    }

    /// Mean seconds per draft forward pass.
    pub fn draft_step_s(&self) -> f64 {
        ratio(self.draft_s, self.draft_steps as f64)
    }

    /// Mean seconds per verification forward (k + 1 tokens).
    pub fn verify_call_s(&self) -> f64 {
        ratio(self.verify_s, self.iterations as f64)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// A finished speculative generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpecGeneration {
    pub generation: Generation,
    pub metrics: SpecMetrics,
}

/// Generates with `proposer` drafting for `target`; same stopping rule and sampling distribution as
/// target-only generation. `on_token` sees every emitted token in order.
pub fn generate_speculative(
    target: &dyn CausalLm,
    proposer: &mut dyn Proposer,
    prompt: &[u32],
    eos: &[u32],
    cfg: &SpecConfig,
    mut on_token: impl FnMut(u32),
) -> Result<SpecGeneration> {
    let gen = &cfg.generation;
    let mut cache = checked_cache(target, prompt, gen)?;
    let mode = if gen.sampling.is_greedy() { VerifyMode::Greedy } else { VerifyMode::Sample };
    let mut scheduler = Scheduler::new(cfg.schedule);
    let max_k = scheduler.max_k();
    let mut metrics = SpecMetrics {
        position_tested: vec![0; max_k],
        position_accepted: vec![0; max_k],
        ..Default::default()
    };
    let mut tokens: Vec<u32> = Vec::with_capacity(gen.max_new_tokens + max_k);
    if gen.max_new_tokens == 0 {
        let generation = Generation { tokens, prompt_tokens: prompt.len(), stop: StopReason::MaxTokens, prefill_s: 0.0, decode_s: 0.0 };
        return Ok(SpecGeneration { generation, metrics });
    }
    let mut sampler = Sampler::new(gen.sampling, gen.seed);

    let start = Instant::now();
    let logits = target.forward(prompt, &mut cache, LogitRows::Last)?;
    proposer.prefill(prompt)?;
    let first = sampler.sample(logits.last());
    let prefill_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let steps_before = proposer.steps();

    let mut context: Vec<u32> = prompt.to_vec();
    let mut stop = push(first, &mut tokens, &mut context, eos, gen, &mut on_token);
    while stop.is_none() {
        // Never draft past the budget: k drafts + 1 verified token ≤ what is left.
        let k = scheduler.next_k().min(max_k).min(gen.max_new_tokens - tokens.len() - 1);
        let t = Instant::now();
        let proposal = proposer.propose(&context, k, &mut sampler)?;
        metrics.draft_s += t.elapsed().as_secs_f64();
        let drafted = &proposal.tokens[..proposal.tokens.len().min(k)];
        let n = drafted.len();

        let t = Instant::now();
        let mut feed = Vec::with_capacity(n + 1);
        feed.push(*context.last().expect("context is never empty"));
        feed.extend_from_slice(drafted);
        let logits = target.forward(&feed, &mut cache, LogitRows::All)?;
        metrics.verify_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let p: Vec<Probs> = (0..=n).map(|i| warp(logits.row(i), &gen.sampling)).collect();
        let uniforms: Vec<f64> = match mode {
            VerifyMode::Greedy => vec![0.0; n + 1],
            VerifyMode::Sample => (0..=n).map(|_| sampler.uniform()).collect(),
        };
        let q = proposal.probs.as_ref().map(|q| &q[..n]);
        let verdict = verify(&p, q, drafted, &uniforms, mode);
        scheduler.observe(n, verdict.accepted);

        // The target's cache keeps the fed last token and the accepted drafts.
        let keep = context.len() + verdict.accepted;
        cache.truncate(keep);
        proposer.rollback(keep);

        metrics.iterations += 1;
        metrics.drafted += n as u64;
        metrics.accepted += verdict.accepted as u64;
        metrics.bonus += u64::from(verdict.kind == NextKind::Bonus && n > 0);
        for i in 0..n.min(verdict.accepted + 1) {
            metrics.position_tested[i] += 1;
            metrics.position_accepted[i] += u64::from(i < verdict.accepted);
            let beta = acceptance_probability(&p[i], q.map(|q| &q[i]), drafted[i], mode);
            metrics.expected_accepted += beta;
            metrics.expected_accepted_var += beta * (1.0 - beta);
        }
        for &tok in drafted[..verdict.accepted].iter().chain([&verdict.next]) {
            metrics.emitted += 1;
            stop = push(tok, &mut tokens, &mut context, eos, gen, &mut on_token);
            if stop.is_some() {
                break;
            }
        }
        metrics.overhead_s += t.elapsed().as_secs_f64();
    }
    metrics.draft_steps = (proposer.steps() - steps_before) as u64;
    let generation = Generation {
        tokens,
        prompt_tokens: prompt.len(),
        stop: stop.expect("loop ends on a stop"),
        prefill_s,
        decode_s: decode_start.elapsed().as_secs_f64(),
    };
    Ok(SpecGeneration { generation, metrics })
}

/// β = Σₓ min(p(x), q(x)): the probability that verification accepts a token drawn from q.
fn acceptance_probability(p: &Probs, q: Option<&Probs>, drafted: u32, mode: VerifyMode) -> f64 {
    match (mode, q) {
        (VerifyMode::Greedy, _) => f64::from(u8::from(crate::sampling::argmax(p.as_slice()) == drafted)),
        (VerifyMode::Sample, Some(q)) => {
            p.as_slice().iter().zip(q.as_slice()).map(|(&a, &b)| a.min(b) as f64).sum::<f64>().min(1.0)
        }
        (VerifyMode::Sample, None) => p.get(drafted) as f64,
    }
}

/// Appends one token; returns why generation stops, if it does.
fn push(
    tok: u32,
    tokens: &mut Vec<u32>,
    context: &mut Vec<u32>,
    eos: &[u32],
    gen: &GenerationConfig,
    on_token: &mut impl FnMut(u32),
) -> Option<StopReason> {
    tokens.push(tok);
    context.push(tok);
    on_token(tok);
    if gen.stop_at_eos && eos.contains(&tok) {
        Some(StopReason::Eos)
    } else if tokens.len() >= gen.max_new_tokens {
        Some(StopReason::MaxTokens)
    } else {
        None
    }
}
