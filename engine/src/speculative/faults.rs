//! Deliberate faults, for tests only. Each breaks one step of lossless speculation the way a
//! plausible bug would, so that a statistical test through the full decoding loop can show it
//! has the power to notice (a test that passes a broken verifier proves nothing). A fault is
//! switched on for the current thread inside [`with_fault`] and is off everywhere else; nothing
//! outside tests sets one.

use std::cell::Cell;

/// One way to break speculation.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Token verification: after a rejection, draw from p instead of norm(max(0, p − q)).
    ResampleFromP,
    /// Block verification: draw the correction from norm(max(0, p − q)), forgetting the block's
    /// weight.
    BlockWithoutWeight,
    /// A draft with a truncated head samples correctly but writes q at the positions of its
    /// restricted list instead of at the tokens' ids.
    SubsetIndexAsId,
    /// Shared-token drafting samples among the shared tokens but reports the draft's
    /// probabilities from before the restriction (not renormalised over the shared tokens).
    UnrenormalizedQ,
}

thread_local! {
    static ACTIVE: Cell<Option<Fault>> = const { Cell::new(None) };
}

/// Runs `body` with `fault` switched on for this thread.
#[doc(hidden)]
pub fn with_fault<T>(fault: Fault, body: impl FnOnce() -> T) -> T {
    let before = ACTIVE.with(|a| a.replace(Some(fault)));
    let out = body();
    ACTIVE.with(|a| a.set(before));
    out
}

/// Whether `fault` is on for this thread.
pub(crate) fn active(fault: Fault) -> bool {
    ACTIVE.with(|a| a.get()) == Some(fault)
}
