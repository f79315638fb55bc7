//! Speculative decoding: a [`Proposer`] drafts k tokens, the target scores all of them in one
//! forward pass, [`verify`] keeps the longest acceptable prefix plus one more token, and both KV
//! caches roll back to what was accepted. The emitted sequence is distributed exactly as
//! target-only sampling with the same warping; greedy output is target-only greedy output.
//!
//! ```no_run
//! use engine::generate::GenerationConfig;
//! use engine::sampling::SamplingParams;
//! use engine::speculative::{generate_speculative, DraftModel, SpecConfig};
//!
//! # fn main() -> engine::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let target = engine::load_model("qwen2.5-coder-1.5b", &device)?;
//! let draft = engine::load_model("qwen2.5-coder-0.5b", &device)?;
//! let prompt = target.tokenizer.encode("def quicksort(arr):", true)?;
//! let generation = GenerationConfig { max_new_tokens: 64, sampling: SamplingParams::with_temperature(0.7), ..Default::default() };
//! let cfg = SpecConfig::fixed(generation, 4);
//! let mut proposer = DraftModel::new(draft.model.as_ref(), prompt.len() + 64)?;
//! let out = generate_speculative(target.model.as_ref(), &mut proposer, &prompt, target.tokenizer.eos_ids(), &cfg, |_| {})?;
//! println!("{}", target.tokenizer.decode(&out.generation.tokens)?);
//! println!("α̂ = {:.2}, τ = {:.2}", out.metrics.alpha(), out.metrics.tau());
//! # Ok(()) }
//! ```
//!
//! A draft with another tokenizer drafts through text: see [`CrossVocab`] and
//! [`compare_vocabularies`].
//!
//! Any type implementing [`Proposer`] can draft: see `engine/examples/custom_proposer.rs` for a
//! prompt-lookup proposer in thirty lines.

mod cross_vocab;
mod decoder;
mod draft_vocab;
pub mod faults;
mod ngram;
mod proposer;
mod schedule;
mod verify;

pub use cross_vocab::{
    compare_vocabularies, encode_after, incomplete_utf8_tail, partial_word_cut, text_proposal, Codec, CrossVocab, CrossVocabStats,
    ExtendedIds, PairMode, ProposalOutcome, ProposalRules, TextBridge, TextCodec, TextProposal, Trailing, VocabComparison,
    VocabRelation,
};
pub use draft_vocab::VocabFrequency;
pub use decoder::{continue_speculative, generate_speculative, generate_speculative_constrained, SpecConfig, SpecGeneration, SpecMetrics, Verification};
pub use ngram::NGram;
pub use proposer::{DraftModel, Proposal, Proposer};
pub use schedule::{best_k, expected_round_tokens, expected_tokens, optimal_k, predicted_speedup, Costs, Schedule, Scheduler, MAX_AUTO_K};
pub use verify::{verify, NextKind, Verdict, VerifyMode};
