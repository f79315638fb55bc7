//! Speculative decoding: a [`Proposer`] drafts k tokens, the target scores all of them in one
//! forward pass, [`verify`] keeps the longest acceptable prefix plus one more token, and both KV
//! caches roll back to what was accepted. The emitted sequence is distributed exactly as
//! target-only sampling with the same warping; greedy output is target-only greedy output.

mod decoder;
mod proposer;
mod verify;

pub use decoder::{generate_speculative, SpecConfig, SpecGeneration, SpecMetrics};
pub use proposer::{DraftModel, Proposal, Proposer};
pub use verify::{verify, NextKind, Verdict, VerifyMode};
