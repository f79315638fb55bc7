//! Deliberate faults, for tests only. Each breaks one step of lossless speculation the way a
//! plausible bug would, so that a statistical test through the full decoding loop can show it
//! has the power to notice (a test that passes a broken verifier proves nothing). A fault is
//! switched on for the current thread inside [`with_fault`] and is off everywhere else; nothing
//! outside tests sets one.
//!
//! With the cargo feature `fault-injection` (off by default; the experiments crate turns it on
//! only through its dev-dependency on the engine, so only binaries built by `cargo test` have
//! it) a fault can also be switched on for the whole process by naming it in the environment
//! variable `SPECDEC_FAULT` (e.g. `SPECDEC_FAULT=bonus-from-wrong-row`): that is how a test
//! breaks the verifier of the `specdec` binary it runs as a child process. Builds without the
//! feature never read the variable.

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
    /// The confidence stop judges the token it has just sampled (stop, dropping it, when q(d) is
    /// below the threshold) instead of the row before sampling: the tokens it proposes are then
    /// biased toward the draft's likely ones while q still claims they were drawn from the whole
    /// row.
    ConfidenceOfSampledToken,
    /// When every drafted token is accepted, the bonus token is drawn from the last drafted
    /// position's row p_k instead of p_{k+1} (an off-by-one). Unlike the residual faults this
    /// one shows even when the draft equals the target (everything is accepted, so every round
    /// ends in a bonus token).
    BonusFromWrongRow,
}

impl Fault {
    /// Every fault, with the name `SPECDEC_FAULT` knows it by.
    pub const ALL: [(Fault, &'static str); 6] = [
        (Fault::ResampleFromP, "resample-from-p"),
        (Fault::BlockWithoutWeight, "block-without-weight"),
        (Fault::SubsetIndexAsId, "subset-index-as-id"),
        (Fault::UnrenormalizedQ, "unrenormalized-q"),
        (Fault::ConfidenceOfSampledToken, "confidence-of-sampled-token"),
        (Fault::BonusFromWrongRow, "bonus-from-wrong-row"),
    ];
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

/// Whether `fault` is on for this thread (or, with `fault-injection`, for the process).
pub(crate) fn active(fault: Fault) -> bool {
    ACTIVE.with(|a| a.get()) == Some(fault) || process_fault() == Some(fault)
}

/// The fault `SPECDEC_FAULT` names, read once. An unknown name stops the process: the variable
/// is set only by tests, and a misspelt fault would otherwise make a broken-twin test pass a
/// correct verifier off as a broken one.
#[cfg(feature = "fault-injection")]
fn process_fault() -> Option<Fault> {
    static FAULT: std::sync::OnceLock<Option<Fault>> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| {
        let name = std::env::var("SPECDEC_FAULT").ok().filter(|v| !v.is_empty())?;
        match Fault::ALL.iter().find(|(_, n)| *n == name) {
            Some(&(fault, _)) => Some(fault),
            None => {
                let known: Vec<&str> = Fault::ALL.iter().map(|(_, n)| *n).collect();
                panic!("SPECDEC_FAULT={name:?} names no fault (known: {})", known.join(", "))
            }
        }
    })
}

#[cfg(not(feature = "fault-injection"))]
fn process_fault() -> Option<Fault> {
    None
}
