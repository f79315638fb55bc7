//! One way to turn user settings into a proposer and a schedule, shared by `specdec generate`,
//! `specdec run` and `specdec certify`. A draft model drafts in the mode its vocabulary allows
//! (`engine::speculative::compare_vocabularies`): shared ids, extended ids, or text.

use crate::config::{ProposerKind, ScheduleKind};
use anyhow::{bail, Result};
use engine::model::CausalLm;
use engine::speculative::{Costs, CrossVocab, DraftModel, ExtendedIds, NGram, PairMode, Proposer, Schedule, TextBridge, Verification, VocabComparison};

/// Default confidence-stop threshold (draft top probability) of the `confidence` schedule.
pub const DEFAULT_CONFIDENCE: f32 = 0.4;
pub const DEFAULT_MAX_K: usize = 8;
pub const DEFAULT_COST_RATIO: f64 = 0.35;
/// Block verification never accepts fewer tokens in expectation (Sun et al.) and costs a few
/// passes over the vocabulary per round.
pub const DEFAULT_VERIFICATION: Verification = Verification::Block;

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
    pub verification: Verification,
}

impl ProposerSpec {
    /// The draft-length schedule for a run with (starting) draft length `k`. The `confidence`
    /// schedule drafts up to k tokens and stops early where the draft is unsure; `auto` drafts up
    /// to `max_k` with the measured `costs` (see [`crate::calibrate`]).
    pub fn schedule(&self, k: usize, costs: Option<Costs>) -> Result<Schedule> {
        Ok(match self.schedule {
            ScheduleKind::Fixed | ScheduleKind::Confidence => Schedule::Fixed { k },
            ScheduleKind::Heuristic => Schedule::Heuristic { initial: k, min: 1, max: self.max_k.max(k) },
            ScheduleKind::Optimal => Schedule::Optimal { max: self.max_k.max(1), c: self.cost_ratio },
            ScheduleKind::Auto => match costs {
                Some(costs) => Schedule::Auto { max: self.max_k.clamp(1, engine::speculative::MAX_AUTO_K), costs },
                None => bail!("the auto schedule needs measured costs"),
            },
        })
    }

    /// Whether the schedule needs [`crate::calibrate::measure`]'s costs.
    pub fn needs_costs(&self) -> bool {
        self.schedule == ScheduleKind::Auto
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
            ScheduleKind::Heuristic | ScheduleKind::Auto => p.push(format!("max_k={}", self.max_k)),
            ScheduleKind::Optimal => p.push(format!("max_k={},cost_ratio={}", self.max_k, self.cost_ratio)),
            _ => {}
        }
        p.push(format!("verify={}", self.verification));
        p.join(",")
    }

    fn confidence(&self) -> Option<f32> {
        match self.schedule {
            ScheduleKind::Confidence => Some(self.confidence.unwrap_or(DEFAULT_CONFIDENCE)),
            _ => self.confidence,
        }
    }

    /// A fresh proposer for one generation. `draft` is the draft side (a separate model, or a
    /// [`LayerSkip`](engine::model::LayerSkip) view of the target, with what its vocabulary
    /// needs); `capacity` the KV positions the generation needs.
    pub fn build<'m>(&self, draft: Option<DraftSource<'m>>, capacity: usize) -> Result<Box<dyn Proposer + 'm>> {
        match (self.kind, draft) {
            (ProposerKind::Ngram, _) => {
                if self.confidence().is_some() {
                    bail!("the confidence stop needs a model proposer (draft or layer-skip)");
                }
                Ok(Box::new(NGram::new(self.ngram, 1)?))
            }
            (_, Some(DraftSource::Shared(model))) => {
                let mut p = DraftModel::new(model, capacity)?;
                if let Some(threshold) = self.confidence() {
                    p = p.with_confidence_stop(threshold);
                }
                Ok(Box::new(p))
            }
            (_, Some(DraftSource::Extended { model, target_vocab })) => {
                if self.confidence().is_some() {
                    bail!("the confidence stop is not available for a draft with an extended vocabulary");
                }
                Ok(Box::new(ExtendedIds::new(model, capacity, target_vocab)?))
            }
            (_, Some(DraftSource::Text { model, bridge, prompt })) => {
                // The draft's tokenizer may need more tokens than the target's for the same text.
                let draft_capacity = prompt.len() + 2 * capacity + 16;
                let mut p = CrossVocab::new(model, bridge, draft_capacity)?.with_draft_prompt(prompt);
                if let Some(threshold) = self.confidence() {
                    p = p.with_confidence_stop(threshold);
                }
                Ok(Box::new(p))
            }
            (kind, None) => bail!("proposer {kind:?} needs a draft model"),
        }
    }
}

/// The draft side of a pair, in the form its vocabulary relation to the target needs
/// ([`compare_vocabularies`]).
pub enum DraftSource<'m> {
    /// The target's vocabulary (a same-tokenizer draft, or the target's own first layers).
    Shared(&'m dyn CausalLm),
    /// A vocabulary the target's extends: ids map directly, q is padded to `target_vocab`.
    Extended { model: &'m dyn CausalLm, target_vocab: usize },
    /// A different vocabulary: drafts travel as text through `bridge`; `prompt` is the prompt
    /// as the draft sees it (rendered with the draft's own chat template).
    Text { model: &'m dyn CausalLm, bridge: &'m TextBridge<'m>, prompt: Vec<u32> },
}

/// The record label of a pair mode: `draft` for shared/extended ids, `cross-vocab` for text.
pub fn proposer_label(mode: PairMode) -> &'static str {
    match mode {
        PairMode::SharedIds | PairMode::ExtendedIds => "draft",
        PairMode::Text => "cross-vocab",
    }
}

/// One line describing how a draft relates to a target and how it will draft.
pub fn describe_pair(c: &VocabComparison) -> String {
    let how = match c.mode {
        PairMode::SharedIds => "the draft's ids and distributions are verified as they are".to_string(),
        PairMode::ExtendedIds => format!(
            "draft ids are target ids; q is padded with zeros over the target's {} extra ids ({} special)",
            c.extra_ids, c.extra_special
        ),
        PairMode::Text => {
            "draft tokens are decoded to text and re-encoded with the target's tokenizer (a deterministic proposal, verified as one-hot q)"
                .to_string()
        }
    };
    format!("vocabularies {} → mode {}: {how}", c.relation, c.mode)
}
