//! The decoding loop: prefill both models, then propose → one target forward over the k drafted
//! tokens (k + 1 logit rows) → verify → roll both caches back to the accepted prefix. Nothing is
//! recomputed: the target's cache always holds the context minus its last token, which the next
//! verification feeds together with the new drafts.
//!
//! Timing convention (as target-only [`generate`](crate::generate::generate)): `prefill_s` runs to
//! the first generated token, `decode_s` covers the rest; metrics count the decode phase only.

use super::proposer::{Proposal, Proposer};
use super::schedule::{Schedule, Scheduler};
use super::verify::{verify, NextKind, VerifyMode};
use crate::constraint::Constrained;
use crate::error::{Error, Result};
use crate::generate::{check_request, checked_cache, sample_masked, stop_reason, Generation, GenerationConfig, StopReason};
use crate::model::{CausalLm, KvCache, LogitRows};
use crate::sampling::{warp, Logits, Probs, Sampler, SamplingParams};
use std::time::Instant;

/// Speculative generation settings: the target-only settings, the draft-length schedule and how
/// sampled drafts are verified.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpecConfig {
    pub generation: GenerationConfig,
    pub schedule: Schedule,
    #[serde(default)]
    pub verification: Verification,
}

impl SpecConfig {
    /// A fixed draft length k, verified token by token.
    pub fn fixed(generation: GenerationConfig, k: usize) -> Self {
        SpecConfig { generation, schedule: Schedule::Fixed { k }, verification: Verification::Token }
    }

    /// The same settings with another verification.
    pub fn with_verification(mut self, verification: Verification) -> Self {
        self.verification = verification;
        self
    }

    fn mode(&self) -> VerifyMode {
        match (self.generation.sampling.is_greedy(), self.verification) {
            (true, _) => VerifyMode::Greedy,
            (false, Verification::Token) => VerifyMode::Sample,
            (false, Verification::Block) => VerifyMode::Block,
        }
    }
}

/// How sampled drafts are judged (greedy decoding has one rule: accept while the draft is the
/// target's argmax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Token by token (Leviathan et al.).
    #[default]
    Token,
    /// The whole block jointly (Sun et al.): never fewer tokens in expectation.
    Block,
}

impl std::str::FromStr for Verification {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "token" => Ok(Verification::Token),
            "block" => Ok(Verification::Block),
            other => Err(format!("verification must be \"token\" or \"block\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verification::Token => "token",
            Verification::Block => "block",
        })
    }
}

/// Counters and timings of one speculative generation (decode phase), docs/DESIGN.md §4.
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
    /// Adds another generation's counts and times (e.g. the turns of one conversation).
    pub fn add(&mut self, o: &SpecMetrics) {
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        self.iterations += o.iterations;
        self.emitted += o.emitted;
        self.bonus += o.bonus;
        let n = self.position_tested.len().max(o.position_tested.len());
        self.position_tested.resize(n, 0);
        self.position_accepted.resize(n, 0);
        for (i, (&t, &a)) in o.position_tested.iter().zip(&o.position_accepted).enumerate() {
            self.position_tested[i] += t;
            self.position_accepted[i] += a;
        }
        self.expected_accepted += o.expected_accepted;
        self.expected_accepted_var += o.expected_accepted_var;
        self.draft_s += o.draft_s;
        self.verify_s += o.verify_s;
        self.overhead_s += o.overhead_s;
        self.draft_steps += o.draft_steps;
    }

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

    /// A / (verified positions): the per-token acceptance rate Leviathan's formula assumes. α̂
    /// also counts drafts after a rejection, which are never verified, so it is lower for k > 1.
    pub fn alpha_verified(&self) -> f64 {
        ratio(self.accepted as f64, self.tested() as f64)
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

/// A proposal must speak the target's vocabulary: ids below its size and, if it has
/// distributions, one per token over exactly the target's ids (a draft with another vocabulary
/// belongs behind [`CrossVocab`](super::CrossVocab) or [`ExtendedIds`](super::ExtendedIds)).
fn check_proposal(proposal: &Proposal, vocab: usize) -> Result<()> {
    if let Some(&bad) = proposal.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::VocabMismatch { problem: format!("the proposer drafted id {bad}, outside the target's {vocab}-token vocabulary") });
    }
    if let Some(q) = &proposal.probs {
        if q.len() < proposal.tokens.len() {
            return Err(Error::VocabMismatch { problem: format!("the proposer gave {} distributions for {} drafted tokens", q.len(), proposal.tokens.len()) });
        }
        if let Some(row) = q.iter().find(|row| row.as_slice().len() != vocab) {
            return Err(Error::VocabMismatch {
                problem: format!("the proposer's distributions cover {} ids, the target's vocabulary {vocab}", row.as_slice().len()),
            });
        }
    }
    Ok(())
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
    on_token: impl FnMut(u32),
) -> Result<SpecGeneration> {
    generate_speculative_constrained(target, proposer, prompt, eos, cfg, None, on_token)
}

/// [`generate_speculative`] under a constraint (positioned at the start of the generated text).
/// The proposer drafts from its q masked by the constraint at each drafted position
/// ([`Proposer::propose_constrained`]), the target's p rows are masked the same way before
/// verification, and the constraint advances only over emitted tokens: the output is distributed
/// exactly as [`generate_constrained`](crate::generate::generate_constrained)'s.
pub fn generate_speculative_constrained(
    target: &dyn CausalLm,
    proposer: &mut dyn Proposer,
    prompt: &[u32],
    eos: &[u32],
    cfg: &SpecConfig,
    constraint: Option<&mut Constrained>,
    on_token: impl FnMut(u32),
) -> Result<SpecGeneration> {
    let mut cache = checked_cache(target, prompt, &cfg.generation)?;
    continue_speculative(target, &mut cache, proposer, prompt, eos, cfg, constraint, on_token)
}

/// Continues `context` speculatively with a target cache that holds a prefix of it, feeding only
/// the rest (see [`continue_generation`](crate::generate::continue_generation)); the proposer's
/// [`prefill`](Proposer::prefill) likewise keeps what its own cache shares with `context`.
/// Afterwards the target's cache holds the context and every generated token but the last.
#[allow(clippy::too_many_arguments)]
pub fn continue_speculative(
    target: &dyn CausalLm,
    cache: &mut KvCache,
    proposer: &mut dyn Proposer,
    context: &[u32],
    eos: &[u32],
    cfg: &SpecConfig,
    mut constraint: Option<&mut Constrained>,
    mut on_token: impl FnMut(u32),
) -> Result<SpecGeneration> {
    let gen = &cfg.generation;
    check_request(context, gen, cache.capacity())?;
    cfg.schedule.validate(target.config().context_length)?;
    cache.truncate(context.len() - 1);
    let fed = context.len() - cache.len();
    let mode = cfg.mode();
    let mut scheduler = Scheduler::new(cfg.schedule);
    let max_k = scheduler.max_k();
    let mut metrics = SpecMetrics {
        position_tested: vec![0; max_k],
        position_accepted: vec![0; max_k],
        ..Default::default()
    };
    let mut tokens: Vec<u32> = Vec::with_capacity(gen.max_new_tokens + max_k);
    if gen.max_new_tokens == 0 {
        let generation = Generation { tokens, prompt_tokens: fed, stop: StopReason::MaxTokens, prefill_s: 0.0, decode_s: 0.0 };
        return Ok(SpecGeneration { generation, metrics });
    }
    let mut sampler = Sampler::new(gen.sampling, gen.seed);

    let start = Instant::now();
    let logits = target.forward(&context[cache.len()..], cache, LogitRows::Last)?;
    proposer.prefill(context)?;
    let first = sample_masked(&mut sampler, logits.last(), constraint.as_deref_mut())?;
    let prefill_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let steps_before = proposer.steps();

    let mut context: Vec<u32> = context.to_vec();
    let mut stop = push(first, &mut tokens, &mut context, eos, gen, constraint.as_deref_mut(), &mut on_token)?;
    while stop.is_none() {
        // Never draft past the budget: k drafts + 1 verified token ≤ what is left.
        let k = scheduler.next_k().min(max_k).min(gen.max_new_tokens - tokens.len() - 1);
        let t = Instant::now();
        let proposal = match constraint.as_deref_mut() {
            Some(c) => proposer.propose_constrained(&context, k, &mut sampler, c)?,
            None => proposer.propose(&context, k, &mut sampler)?,
        };
        metrics.draft_s += t.elapsed().as_secs_f64();
        check_proposal(&proposal, target.config().vocab_size)?;
        let mut drafted = &proposal.tokens[..proposal.tokens.len().min(k)];

        let t = Instant::now();
        let mut feed = Vec::with_capacity(drafted.len() + 1);
        feed.push(*context.last().expect("context is never empty"));
        feed.extend_from_slice(drafted);
        let logits = target.forward(&feed, cache, LogitRows::All)?;
        metrics.verify_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let p: Vec<Probs> = match constraint.as_deref_mut() {
            None => (0..=drafted.len()).map(|i| warp(logits.row(i), &gen.sampling)).collect(),
            Some(c) => {
                let (p, allowed) = masked_rows(&logits, drafted, c, &gen.sampling)?;
                // Drafts past one the constraint forbids are not verified (its p would be 0).
                drafted = &drafted[..allowed];
                p
            }
        };
        let n = drafted.len();
        let uniforms: Vec<f64> = match mode {
            VerifyMode::Greedy => vec![0.0; n + 1],
            VerifyMode::Sample | VerifyMode::Block => (0..=n).map(|_| sampler.uniform()).collect(),
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
            stop = push(tok, &mut tokens, &mut context, eos, gen, constraint.as_deref_mut(), &mut on_token)?;
            if stop.is_some() {
                break;
            }
        }
        metrics.overhead_s += t.elapsed().as_secs_f64();
    }
    cache.truncate(context.len() - 1);
    metrics.draft_steps = (proposer.steps() - steps_before) as u64;
    let generation = Generation {
        tokens,
        prompt_tokens: fed,
        stop: stop.expect("loop ends on a stop"),
        prefill_s,
        decode_s: decode_start.elapsed().as_secs_f64(),
    };
    Ok(SpecGeneration { generation, metrics })
}

/// The target's k + 1 distributions under the constraint: row i masked after the first i drafts.
/// Stops at the first draft the constraint forbids (returning how many were allowed) and leaves
/// the constraint where it was.
fn masked_rows(logits: &Logits, drafted: &[u32], c: &mut Constrained, params: &SamplingParams) -> Result<(Vec<Probs>, usize)> {
    let mut p = Vec::with_capacity(drafted.len() + 1);
    let mut walked = 0;
    for i in 0..=drafted.len() {
        let mut row = logits.row(i).to_vec();
        c.apply(&mut row)?;
        p.push(warp(&row, params));
        if i == drafted.len() || !c.mask()?.allows(drafted[i]) {
            break;
        }
        c.advance(drafted[i])?;
        walked += 1;
    }
    c.rollback(walked)?;
    Ok((p, walked))
}

/// β = Σₓ min(p(x), q(x)): the probability that verification accepts a token drawn from q.
fn acceptance_probability(p: &Probs, q: Option<&Probs>, drafted: u32, mode: VerifyMode) -> f64 {
    match (mode, q) {
        (VerifyMode::Greedy, _) => f64::from(u8::from(crate::sampling::argmax(p.as_slice()) == drafted)),
        (VerifyMode::Sample | VerifyMode::Block, Some(q)) => {
            p.as_slice().iter().zip(q.as_slice()).map(|(&a, &b)| a.min(b) as f64).sum::<f64>().min(1.0)
        }
        (VerifyMode::Sample | VerifyMode::Block, None) => p.get(drafted) as f64,
    }
}

/// Appends one token (advancing the constraint over it); returns why
/// generation stops, if it does.
fn push(
    tok: u32,
    tokens: &mut Vec<u32>,
    context: &mut Vec<u32>,
    eos: &[u32],
    gen: &GenerationConfig,
    constraint: Option<&mut Constrained>,
    on_token: &mut impl FnMut(u32),
) -> Result<Option<StopReason>> {
    let constraint = match constraint {
        Some(c) => {
            c.advance(tok)?;
            Some(&*c)
        }
        None => None,
    };
    tokens.push(tok);
    context.push(tok);
    on_token(tok);
    Ok(stop_reason(tok, tokens.len(), eos, gen, constraint))
}
