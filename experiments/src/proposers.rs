//! One way to turn user settings into a proposer and a schedule, shared by `specdec generate`,
//! `specdec run` and `specdec certify`. A draft model drafts in the mode its vocabulary allows
//! (`engine::speculative::compare_vocabularies`): shared ids, extended ids, or text.

use crate::config::{ProposerKind, ScheduleKind};
use anyhow::{bail, Context, Result};
use engine::model::{CausalLm, HeadSubset};
use engine::speculative::VocabFrequency;
use engine::tokenizer::Tokenizer;
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
    /// A truncated draft vocabulary: the draft's head keeps this many ids.
    pub draft_vocab: Option<usize>,
    /// How a draft with another vocabulary drafts.
    pub cross_vocab: CrossVocabMode,
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
        if let Some(n) = self.draft_vocab {
            p.push(format!("draft_vocab={n}"));
        }
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
    pub fn build<'m>(&self, draft: Option<DraftSource<'m>>, head: Option<&'m HeadSubset>, capacity: usize) -> Result<Box<dyn Proposer + 'm>> {
        if head.is_some() && !matches!(draft, Some(_)) {
            bail!("a truncated draft vocabulary needs a draft model");
        }
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
                if let Some(head) = head {
                    p = p.with_head_subset(head);
                }
                Ok(Box::new(p))
            }
            (_, Some(DraftSource::Extended { model, target_vocab })) => {
                if self.confidence().is_some() {
                    bail!("the confidence stop is not available for a draft with an extended vocabulary");
                }
                let mut p = ExtendedIds::new(model, capacity, target_vocab)?;
                if let Some(head) = head {
                    p = p.with_head_subset(head);
                }
                Ok(Box::new(p))
            }
            (_, Some(DraftSource::Text { model, bridge, prompt, shared_tokens })) => {
                // The draft's tokenizer may need more tokens than the target's for the same text.
                let draft_capacity = prompt.len() + 2 * capacity + 16;
                let mut p = CrossVocab::new(model, bridge, draft_capacity)?.with_draft_prompt(prompt);
                if let Some(threshold) = self.confidence() {
                    p = p.with_confidence_stop(threshold);
                }
                if let Some(head) = head {
                    p = p.with_head_subset(head);
                }
                if shared_tokens {
                    p = p.with_shared_tokens();
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
    /// A different vocabulary: drafts travel as text through `bridge` (or, with `shared_tokens`,
    /// as the tokens both vocabularies have, with q); `prompt` is the prompt as the draft sees it
    /// (rendered with the draft's own chat template).
    Text { model: &'m dyn CausalLm, bridge: &'m TextBridge<'m>, prompt: Vec<u32>, shared_tokens: bool },
}

/// How a draft with another vocabulary drafts (config key `cross_vocab`, `--cross-vocab`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CrossVocabMode {
    /// Shared tokens for sampled decoding when the target shares at least half of the draft's
    /// tokens; text otherwise (greedy decoding gains nothing from q, and text keeps the draft's
    /// own tokens proposable).
    #[default]
    Auto,
    Text,
    SharedTokens,
}

/// The mode a pair of different vocabularies drafts in for `sampling`.
pub fn cross_vocab_mode(mode: CrossVocabMode, bridge: &TextBridge<'_>, sampling: &engine::sampling::SamplingParams) -> PairMode {
    match mode {
        CrossVocabMode::Text => PairMode::Text,
        CrossVocabMode::SharedTokens => PairMode::SharedTokens,
        CrossVocabMode::Auto => {
            let share = bridge.shared_tokens() as f64 / bridge.draft.tokenizer().vocab_size().max(1) as f64;
            if !sampling.is_greedy() && share >= 0.5 {
                PairMode::SharedTokens
            } else {
                PairMode::Text
            }
        }
    }
}

/// The record label of a pair mode: `draft` for shared/extended ids, `cross-vocab` for text.
pub fn proposer_label(mode: PairMode) -> &'static str {
    match mode {
        PairMode::SharedIds | PairMode::ExtendedIds => "draft",
        PairMode::Text => "cross-vocab",
        PairMode::SharedTokens => "shared-tokens",
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
        PairMode::Text | PairMode::SharedTokens => format!(
            "draft tokens are decoded to text and re-encoded with the target's tokenizer (a deterministic proposal, verified as one-hot q); \
             {} of the draft's {} tokens ({:.0}%) are target tokens too, so sampled runs draft among those and verify their q (shared-tokens mode)",
            c.shared_texts,
            c.draft_size,
            100.0 * c.shared_texts as f64 / c.draft_size.max(1) as f64
        ),
    };
    format!("vocabularies {} → mode {}: {how}", c.relation, c.mode)
}

/// The head a draft with a truncated vocabulary computes: the `n` ids a frequency table ranks
/// highest for the draft's tokenizer (the builtin table for the short-name models, or `table`).
pub fn draft_head(model: &dyn CausalLm, tok: &Tokenizer, n: usize, table: Option<&std::path::Path>) -> Result<HeadSubset> {
    if n == 0 {
        bail!("--draft-vocab must be at least 1");
    }
    let freq = match table {
        Some(path) => VocabFrequency::from_json(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?, &path.display().to_string())?,
        None => VocabFrequency::builtin(tok).with_context(|| {
            format!("no builtin token-frequency table for the draft's tokenizer ({}): make one with `specdec vocab-freq` and pass --draft-vocab-table", tok.origin())
        })?,
    };
    if !freq.fits(tok) {
        bail!("the token-frequency table was counted with another tokenizer ({} ids, fingerprint {}) than the draft's ({} ids)", freq.vocab_size, freq.fingerprint, tok.vocab_size());
    }
    Ok(model.head_subset(&freq.top(n, tok))?)
}
