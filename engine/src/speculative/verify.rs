//! Verification of drafted tokens: a pure function of the target's distributions p, the draft's
//! distributions q (or none, for deterministic proposals), the drafted tokens and the uniforms.
//! No model, no RNG, no clock — so every case can be written down by hand and tested.
//!
//! Sampling mode is the rejection scheme of Leviathan et al. (2023) and Chen et al. (2023): accept
//! dᵢ with probability min(1, pᵢ(dᵢ)/qᵢ(dᵢ)); at the first rejection emit a token from
//! norm(max(0, pᵢ − qᵢ)); if all k are accepted emit a bonus token from p_{k+1}. The emitted tokens
//! are then distributed exactly as sampling from p alone.
//!
//! Block mode (Sun et al., "Block Verification Accelerates Speculative Decoding", ICLR 2025) judges
//! the drafted block jointly: a weight wᵢ = min(1, wᵢ₋₁·pᵢ(dᵢ)/qᵢ(dᵢ)) (w₀ = 1) carries the
//! evidence of the whole prefix, the block is cut after the *last* position whose test passes,
//! and the emitted token comes from norm(max(0, w_τ·p_{τ+1} − q_{τ+1})). It is as lossless as
//! token verification and never accepts fewer tokens in expectation (a later position can vouch
//! for an earlier one that token verification would have rejected).

use super::faults::{active, Fault};
use crate::sampling::{argmax, Probs};

/// How drafted tokens are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Accept while the drafted token is the target's argmax (ties to the lowest id, exactly as
    /// target-only greedy decoding breaks them); emit the argmax of the first mismatching row.
    Greedy,
    /// Rejection sampling (lossless for any temperature/top-k/top-p, applied to both p and q).
    Sample,
    /// Rejection sampling of the whole block at once (module docs): the same output
    /// distribution, at least as many accepted tokens in expectation.
    Block,
}

/// Where the token emitted after the accepted prefix came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NextKind {
    /// Drawn from the residual (or argmax) at the first rejected position.
    Recovered,
    /// Drawn from p_{k+1} after all k drafted tokens were accepted.
    Bonus,
}

/// The outcome of verifying k drafted tokens: `accepted` of them, then `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub accepted: usize,
    pub next: u32,
    pub kind: NextKind,
}

/// Judges `drafted` (k tokens) against the target rows `p` (k + 1 of them: row i is the target's
/// distribution for drafted[i], row k the bonus distribution). `q` holds the draft's k rows, or is
/// `None` for a deterministic proposal (one-hot q). `uniforms` supplies k + 1 values in [0, 1): one
/// per acceptance test and one for the emitted token. In greedy mode only `p` is read: each row's
/// argmax is the target-only greedy choice (pass one-hot rows from `warp` with temperature 0, or
/// any rows whose argmax is the target's).
///
/// # Panics
/// If the row counts do not match k (a programming error, not bad input).
pub fn verify(p: &[Probs], q: Option<&[Probs]>, drafted: &[u32], uniforms: &[f64], mode: VerifyMode) -> Verdict {
    let k = drafted.len();
    assert_eq!(p.len(), k + 1, "verify needs k + 1 target rows");
    assert!(uniforms.len() > k, "verify needs k + 1 uniforms");
    if let Some(q) = q {
        assert_eq!(q.len(), k, "verify needs k draft rows");
    }
    if mode == VerifyMode::Block {
        // A token q could not have drawn (q(d) = 0) marks a proposal the block test's weights do
        // not describe; token verification treats it as deterministic, which stays lossless.
        let drawable = q.is_none_or(|q| drafted.iter().zip(q).all(|(&d, row)| row.get(d) > 0.0));
        return if drawable { verify_block(p, q, drafted, uniforms) } else { verify(p, q, drafted, uniforms, VerifyMode::Sample) };
    }
    for (i, &d) in drafted.iter().enumerate() {
        let p_row = p[i].as_slice();
        match mode {
            VerifyMode::Greedy => {
                let best = argmax(p_row);
                if d != best {
                    return Verdict { accepted: i, next: best, kind: NextKind::Recovered };
                }
            }
            VerifyMode::Sample | VerifyMode::Block => {
                let pd = p[i].get(d) as f64;
                let qd = q.map_or(1.0, |q| q[i].get(d) as f64);
                // q(d) = 0 cannot come from sampling q; treat such a token as a deterministic
                // proposal (one-hot q), which keeps the scheme lossless.
                let (ratio, q_row) = if qd > 0.0 { (pd / qd, q.map(|q| q[i].as_slice())) } else { (pd, None) };
                if uniforms[i] < ratio.min(1.0) {
                    continue;
                }
                let next = if active(Fault::ResampleFromP) { p[i].sample(uniforms[k]) } else { residual_sample(p_row, q_row, d, uniforms[k]) };
                return Verdict { accepted: i, next, kind: NextKind::Recovered };
            }
        }
    }
    let bonus = bonus_row(p, k);
    let next = match mode {
        VerifyMode::Greedy => argmax(bonus.as_slice()),
        VerifyMode::Sample | VerifyMode::Block => bonus.sample(uniforms[k]),
    };
    Verdict { accepted: k, next, kind: NextKind::Bonus }
}

/// The row the bonus token is drawn from once all k drafts are accepted: p_{k+1} (index k), or
/// under the deliberate off-by-one fault the last drafted position's.
fn bonus_row(p: &[Probs], k: usize) -> &Probs {
    if active(Fault::BonusFromWrongRow) { &p[k.saturating_sub(1)] } else { &p[k] }
}

/// Block verification (module docs): uniforms 0..k test the positions, uniform k draws the
/// emitted token. `q` rows give every drafted token positive probability (or `q` is `None`:
/// one-hot rows on the drafted tokens).
fn verify_block(p: &[Probs], q: Option<&[Probs]>, drafted: &[u32], uniforms: &[f64]) -> Verdict {
    let k = drafted.len();
    // q row i at x: the draft's distribution for position i (one-hot on drafted[i] without q).
    let q_at = |i: usize, x: usize| -> f64 {
        match q {
            Some(q) => q[i].as_slice()[x] as f64,
            None => f64::from(u8::from(x == drafted[i] as usize)),
        }
    };
    // Σₓ max(0, w·p_i(x) − q_i(x)): the mass left for a correction drawn at position i.
    let residual_mass = |i: usize, w: f64| -> f64 { p[i].as_slice().iter().enumerate().map(|(x, &px)| (w * px as f64 - q_at(i, x)).max(0.0)).sum() };
    let mut weights = vec![1.0f64; k + 1];
    let mut cut = 0;
    for i in 1..=k {
        let d = drafted[i - 1];
        weights[i] = (weights[i - 1] * p[i - 1].get(d) as f64 / q_at(i - 1, d as usize)).min(1.0);
        // The probability of ending the block after position i, given that no later position
        // will: the residual mass at i against what the weight has not covered.
        let h = if i == k {
            weights[i]
        } else {
            let r = residual_mass(i, weights[i]);
            let total = r + 1.0 - weights[i];
            if total > 0.0 { r / total } else { 0.0 }
        };
        if uniforms[i - 1] < h {
            cut = i;
        }
    }
    if cut == k {
        return Verdict { accepted: k, next: bonus_row(p, k).sample(uniforms[k]), kind: NextKind::Bonus };
    }
    let w = if active(Fault::BlockWithoutWeight) { 1.0 } else { weights[cut] };
    let residual: Vec<f64> = p[cut].as_slice().iter().enumerate().map(|(x, &px)| (w * px as f64 - q_at(cut, x)).max(0.0)).collect();
    let total: f64 = residual.iter().sum();
    let next = if total > 0.0 {
        let target = uniforms[k] * total;
        let mut acc = 0.0;
        let mut last = 0;
        let mut chosen = None;
        for (x, &r) in residual.iter().enumerate() {
            if r > 0.0 {
                acc += r;
                last = x;
                if target < acc {
                    chosen = Some(x);
                    break;
                }
            }
        }
        chosen.unwrap_or(last) as u32
    } else {
        // No residual (rounding): fall back to p itself, as token verification does.
        p[cut].sample(uniforms[k])
    };
    Verdict { accepted: cut, next, kind: NextKind::Recovered }
}

/// Samples from norm(max(0, p − q)), with q one-hot on `drafted` when `q` is `None`. When the
/// residual has no mass (p ≤ q everywhere up to rounding, reachable only through rounding since
/// then the acceptance probability is 1), falls back to p itself.
fn residual_sample(p: &[f32], q: Option<&[f32]>, drafted: u32, u: f64) -> u32 {
    let residual = |i: usize| -> f64 {
        let qi = match q {
            Some(q) => q[i] as f64,
            None => f64::from(u8::from(i == drafted as usize)),
        };
        (p[i] as f64 - qi).max(0.0)
    };
    let total: f64 = (0..p.len()).map(residual).sum();
    if total <= 0.0 {
        return Probs::from_normalized(p.to_vec()).sample(u);
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last = None;
    for i in 0..p.len() {
        let r = residual(i);
        if r > 0.0 {
            acc += r;
            last = Some(i);
            if target < acc {
                return i as u32;
            }
        }
    }
    last.expect("positive total has a positive entry") as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(v: &[f32]) -> Probs {
        Probs::from_normalized(v.to_vec())
    }

    #[test]
    fn full_acceptance_emits_a_bonus_from_the_last_row() {
        let p = [probs(&[0.1, 0.9]), probs(&[0.2, 0.8]), probs(&[1.0, 0.0])];
        let q = [probs(&[0.1, 0.9]), probs(&[0.2, 0.8])];
        let v = verify(&p, Some(&q), &[1, 1], &[0.99, 0.99, 0.5], VerifyMode::Sample);
        assert_eq!(v, Verdict { accepted: 2, next: 0, kind: NextKind::Bonus });
    }

    #[test]
    fn first_position_rejection_samples_the_residual() {
        // p(1) / q(1) = 0.25: u = 0.3 rejects. Residual max(0, p − q) = [0.6, 0, 0] → token 0.
        let p = [probs(&[0.7, 0.2, 0.1]), probs(&[0.0, 1.0, 0.0])];
        let q = [probs(&[0.1, 0.8, 0.1])];
        let v = verify(&p, Some(&q), &[1], &[0.3, 0.99], VerifyMode::Sample);
        assert_eq!(v, Verdict { accepted: 0, next: 0, kind: NextKind::Recovered });
        // u = 0.2 < 0.25 accepts.
        let v = verify(&p, Some(&q), &[1], &[0.2, 0.5], VerifyMode::Sample);
        assert_eq!(v, Verdict { accepted: 1, next: 1, kind: NextKind::Bonus });
    }

    #[test]
    fn residual_is_sampled_by_inverse_cdf() {
        // Residual [0.2, 0, 0.3] normalised [0.4, 0, 0.6]: u < 0.4 → 0, else 2.
        let p = [probs(&[0.3, 0.2, 0.5]), probs(&[1.0, 0.0, 0.0])];
        let q = [probs(&[0.1, 0.7, 0.2])];
        assert_eq!(verify(&p, Some(&q), &[1], &[0.9, 0.39], VerifyMode::Sample).next, 0);
        assert_eq!(verify(&p, Some(&q), &[1], &[0.9, 0.41], VerifyMode::Sample).next, 2);
    }

    #[test]
    fn zero_draft_probability_is_treated_as_a_deterministic_proposal() {
        // q(d) = 0: accept with p(d) = 0.5, and the residual excludes d.
        let p = [probs(&[0.5, 0.5]), probs(&[0.0, 1.0])];
        let q = [probs(&[1.0, 0.0])];
        assert_eq!(verify(&p, Some(&q), &[1], &[0.49, 0.0], VerifyMode::Sample).accepted, 1);
        let v = verify(&p, Some(&q), &[1], &[0.51, 0.99], VerifyMode::Sample);
        assert_eq!((v.accepted, v.next), (0, 0));
    }

    #[test]
    fn disjoint_supports_always_reject_into_p() {
        let p = [probs(&[0.0, 0.0, 0.5, 0.5]), probs(&[1.0, 0.0, 0.0, 0.0])];
        let q = [probs(&[0.5, 0.5, 0.0, 0.0])];
        for u in [0.0, 0.3, 0.999] {
            let v = verify(&p, Some(&q), &[0], &[u, u], VerifyMode::Sample);
            assert_eq!(v.accepted, 0);
            assert!(v.next == 2 || v.next == 3);
        }
    }

    #[test]
    fn equal_distributions_always_accept_even_with_rounding() {
        let row = probs(&[0.3, 0.3, 0.4]);
        let p = [row.clone(), row.clone(), row.clone()];
        let q = [row.clone(), row];
        let v = verify(&p, Some(&q), &[2, 0], &[0.999999, 0.999999, 0.1], VerifyMode::Sample);
        assert_eq!((v.accepted, v.kind), (2, NextKind::Bonus));
        // A rounding-only rejection (p(d) slightly below q(d), u above the ratio) has an all-zero
        // residual: it falls back to p rather than dividing by zero.
        let p = [probs(&[0.3, 0.29999998, 0.4]), probs(&[1.0, 0.0, 0.0])];
        let q = [probs(&[0.3, 0.3, 0.4])];
        let v = verify(&p, Some(&q), &[1], &[0.9999999999, 0.5], VerifyMode::Sample);
        // u is above p(1)/q(1), so token 1 is rejected; the residual max(p − q, 0) is zero
        // everywhere, so the next token is p's own sample at u = 0.5: token 1 (0.3 ≤ 0.5 < 0.6).
        assert_eq!((v.accepted, v.next, v.kind), (0, 1, NextKind::Recovered));
    }

    #[test]
    fn deterministic_proposals_accept_with_p_of_the_token() {
        let p = [probs(&[0.25, 0.75]), probs(&[0.6, 0.4])];
        assert_eq!(verify(&p, None, &[1], &[0.74, 0.0], VerifyMode::Sample).accepted, 1);
        let v = verify(&p, None, &[1], &[0.76, 0.99], VerifyMode::Sample);
        assert_eq!((v.accepted, v.next), (0, 0), "residual of a one-hot q removes the drafted token");
    }

    #[test]
    fn greedy_accepts_while_drafts_match_argmax_with_lowest_id_ties() {
        let p = [probs(&[0.1, 0.6, 0.3]), probs(&[0.4, 0.2, 0.4]), probs(&[0.0, 0.0, 1.0])];
        // Row 1 ties 0 and 2: argmax is 0 (lowest id), so drafting 2 is rejected and 0 emitted.
        let v = verify(&p, None, &[1, 2], &[0.0; 3], VerifyMode::Greedy);
        assert_eq!(v, Verdict { accepted: 1, next: 0, kind: NextKind::Recovered });
        let v = verify(&p, None, &[1, 0], &[0.0; 3], VerifyMode::Greedy);
        assert_eq!(v, Verdict { accepted: 2, next: 2, kind: NextKind::Bonus });
        let v = verify(&p, None, &[0, 0], &[0.0; 3], VerifyMode::Greedy);
        assert_eq!(v, Verdict { accepted: 0, next: 1, kind: NextKind::Recovered });
    }

    #[test]
    fn k_zero_is_plain_sampling_from_p() {
        let p = [probs(&[0.5, 0.5])];
        assert_eq!(verify(&p, None, &[], &[0.7], VerifyMode::Sample), Verdict { accepted: 0, next: 1, kind: NextKind::Bonus });
    }

    /// The example of Sun et al.: Mb = (a ⅓, b ⅔), Ms = (a ⅔, b ⅓) at every position.
    fn binary() -> (Probs, Probs) {
        (probs(&[1.0 / 3.0, 2.0 / 3.0]), probs(&[2.0 / 3.0, 1.0 / 3.0]))
    }

    #[test]
    fn block_verification_of_one_token_is_token_verification() {
        let p = [probs(&[0.5, 0.3, 0.2]), probs(&[0.1, 0.1, 0.8])];
        let q = [probs(&[0.2, 0.6, 0.2])];
        for d in 0..3 {
            for u0 in [0.0, 0.2, 0.4, 0.49, 0.51, 0.8, 0.99] {
                for u1 in [0.0, 0.3, 0.7, 0.99] {
                    let u = [u0, u1];
                    assert_eq!(verify(&p, Some(&q), &[d], &u, VerifyMode::Block), verify(&p, Some(&q), &[d], &u, VerifyMode::Sample), "d {d}, u {u:?}");
                }
            }
        }
    }

    #[test]
    fn a_later_position_can_vouch_for_an_earlier_one() {
        // Drafts (a, b): token verification keeps a with probability ½; block verification's
        // weight after b is min(1, ½ · (⅔)/(⅓)) = 1, so the block is kept whatever η₁ is.
        let (mb, ms) = binary();
        let p = [mb.clone(), mb.clone(), mb.clone()];
        let q = [ms.clone(), ms.clone()];
        let u = [0.9, 0.5, 0.3];
        assert_eq!(verify(&p, Some(&q), &[0, 1], &u, VerifyMode::Sample).accepted, 0);
        assert_eq!(verify(&p, Some(&q), &[0, 1], &u, VerifyMode::Block), Verdict { accepted: 2, next: 0, kind: NextKind::Bonus });
        // Drafts (a, a): weights ½ then ¼; nothing can end after position 1 (no residual there),
        // so the block is kept with probability ¼, else cut to nothing with a correction from
        // max(0, Mb − Ms) = (0, ⅓): always b.
        assert_eq!(verify(&p, Some(&q), &[0, 0], &[0.9, 0.2, 0.7], VerifyMode::Block).accepted, 2);
        assert_eq!(verify(&p, Some(&q), &[0, 0], &[0.0, 0.3, 0.7], VerifyMode::Block), Verdict { accepted: 0, next: 1, kind: NextKind::Recovered });
    }

    /// Mean accepted drafts over many rounds of two drafted tokens in the binary example: 10/9 for
    /// token verification, 11/9 for block verification (the figures of Sun et al.).
    #[test]
    fn block_verification_accepts_eleven_ninths_in_the_binary_example() {
        use rand::{Rng, SeedableRng};
        let (mb, ms) = binary();
        let p = [mb.clone(), mb.clone(), mb.clone()];
        let q = [ms.clone(), ms.clone()];
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let rounds = 400_000;
        let (mut token, mut block) = (0usize, 0usize);
        for _ in 0..rounds {
            let d = [ms.sample(rng.random()), ms.sample(rng.random())];
            let u: [f64; 3] = [rng.random(), rng.random(), rng.random()];
            token += verify(&p, Some(&q), &d, &u, VerifyMode::Sample).accepted;
            block += verify(&p, Some(&q), &d, &u, VerifyMode::Block).accepted;
        }
        let (token, block) = (token as f64 / rounds as f64, block as f64 / rounds as f64);
        // Standard error ≈ 0.8 / √rounds ≈ 0.0013.
        assert!((token - 10.0 / 9.0).abs() < 0.006, "token verification accepted {token}");
        assert!((block - 11.0 / 9.0).abs() < 0.006, "block verification accepted {block}");
    }

    #[test]
    fn block_verification_with_a_deterministic_proposal_and_a_token_q_cannot_draw() {
        // One-hot proposals (q = None) are judged with one-hot rows: weights ¾ then ⅜; ending
        // after position 1 has probability 0.375 / (0.375 + ¼) = 0.6 (its residual is all on 0).
        let p = [probs(&[0.25, 0.75]), probs(&[0.5, 0.5]), probs(&[1.0, 0.0])];
        assert_eq!(verify(&p, None, &[1, 1], &[0.5, 0.3, 0.0], VerifyMode::Block), Verdict { accepted: 2, next: 0, kind: NextKind::Bonus });
        assert_eq!(verify(&p, None, &[1, 1], &[0.5, 0.9, 0.9], VerifyMode::Block), Verdict { accepted: 1, next: 0, kind: NextKind::Recovered });
        assert_eq!(verify(&p, None, &[1, 1], &[0.7, 0.4, 0.9], VerifyMode::Block).accepted, 0);
        // A drafted token with q(d) = 0 sends the round to token verification.
        let q = [probs(&[1.0, 0.0]), probs(&[0.5, 0.5])];
        let u = [0.7, 0.4, 0.6];
        assert_eq!(verify(&p, Some(&q), &[1, 1], &u, VerifyMode::Block), verify(&p, Some(&q), &[1, 1], &u, VerifyMode::Sample));
    }
}
