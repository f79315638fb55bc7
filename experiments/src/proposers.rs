//! One way to turn user settings into a proposer and a schedule, shared by `specdec generate`,
//! `specdec run` and `specdec certify`.

use crate::config::{ProposerKind, ScheduleKind};
use anyhow::{bail, Context, Result};
use engine::model::CausalLm;
use engine::speculative::{DraftModel, NGram, Proposer, Schedule};
use engine::tokenizer::Tokenizer;

/// Default confidence-stop threshold (draft top probability) of the `confidence` schedule.
pub const DEFAULT_CONFIDENCE: f32 = 0.4;
pub const DEFAULT_MAX_K: usize = 8;
pub const DEFAULT_COST_RATIO: f64 = 0.35;

/// How a speculative run drafts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposerSpec {
    pub kind: ProposerKind,
    /// Longest n-gram for the ngram proposer.
    pub ngram: usize,
    pub schedule: ScheduleKind,
    pub max_k: usize,
    pub cost_ratio: f64,
    /// Confidence-stop threshold; set by the `confidence` schedule (or explicitly on `generate`).
    pub confidence: Option<f32>,
}

impl ProposerSpec {
    /// The draft-length schedule for a run with (starting) draft length `k`. The `confidence`
    /// schedule drafts up to k tokens and stops early where the draft is unsure.
    pub fn schedule(&self, k: usize) -> Schedule {
        match self.schedule {
            ScheduleKind::Fixed | ScheduleKind::Confidence => Schedule::Fixed { k },
            ScheduleKind::Heuristic => Schedule::Heuristic { initial: k, min: 1, max: self.max_k.max(k) },
            ScheduleKind::Optimal => Schedule::Optimal { max: self.max_k.max(1), c: self.cost_ratio },
        }
    }

    /// The parameters that matter for this proposer and schedule, for records.
    pub fn params(&self) -> String {
        let mut p = Vec::new();
        if self.kind == ProposerKind::Ngram {
            p.push(format!("ngram={}", self.ngram));
        }
        if let Some(c) = self.confidence() {
            p.push(format!("confidence={c}"));
        }
        match self.schedule {
            ScheduleKind::Heuristic => p.push(format!("max_k={}", self.max_k)),
            ScheduleKind::Optimal => p.push(format!("max_k={},cost_ratio={}", self.max_k, self.cost_ratio)),
            _ => {}
        }
        p.join(",")
    }

    fn confidence(&self) -> Option<f32> {
        match self.schedule {
            ScheduleKind::Confidence => Some(self.confidence.unwrap_or(DEFAULT_CONFIDENCE)),
            _ => self.confidence,
        }
    }

    /// A fresh proposer for one generation. `draft` is the draft model (a separate model, or a
    /// [`LayerSkip`](engine::model::LayerSkip) view of the target); `capacity` the KV positions the
    /// generation needs.
    pub fn build<'m>(&self, draft: Option<&'m dyn CausalLm>, capacity: usize) -> Result<Box<dyn Proposer + 'm>> {
        match (self.kind, draft) {
            (ProposerKind::Ngram, _) => {
                if self.confidence().is_some() {
                    bail!("the confidence stop needs a model proposer (draft or layer-skip)");
                }
                Ok(Box::new(NGram::new(self.ngram, 1)?))
            }
            (_, Some(model)) => {
                let mut p = DraftModel::new(model, capacity)?;
                if let Some(threshold) = self.confidence() {
                    p = p.with_confidence_stop(threshold);
                }
                Ok(Box::new(p))
            }
            (kind, None) => bail!("proposer {kind:?} needs a draft model"),
        }
    }
}

/// Checks a draft shares the target's vocabulary (token ids must mean the same thing).
pub fn check_vocabularies(draft: &Tokenizer, draft_name: &str, target: &Tokenizer, target_name: &str) -> Result<()> {
    if draft.vocab_fingerprint() != target.vocab_fingerprint() {
        return Err(engine::Error::VocabMismatch {
            problem: format!(
                "draft `{draft_name}` ({} tokens, {}) and target `{target_name}` ({} tokens, {}) have different vocabularies; \
                 speculative decoding across tokenizers is not supported yet",
                draft.vocab_size(),
                draft.kind(),
                target.vocab_size(),
                target.kind()
            ),
        })
        .context("incompatible pair");
    }
    Ok(())
}
