//! How many tokens to draft in each iteration.
//!
//! - `Fixed(k)`.
//! - `Heuristic` — transformers' assisted generation: k += 2 after a fully accepted round, k −= 1
//!   otherwise, within bounds.
//! - `Optimal` — estimates α online (accepted / verified positions, with a weak prior) and picks the
//!   k maximising Leviathan's speedup (1 − α^(k+1)) / ((1 − α)(k·c + 1)) for a cost ratio c.
//! - `Auto` — cost-aware: measured [`Costs`] (the draft's step c and the target's verification
//!   curve v(n), both in target decode steps) and acceptance tracked online per draft position;
//!   each round takes the k, 0 included (a plain target step), with the most expected tokens per
//!   unit of time. While k = 0 wins it still drafts one token now and then, at growing intervals,
//!   so that a draft that starts to agree is noticed.
//!
//! A confidence stop (end a draft early when the draft's top probability is low) is a property of
//! the draft model proposer: [`DraftModel::with_confidence_stop`](super::DraftModel::with_confidence_stop).

/// A draft-length policy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    Fixed { k: usize },
    Heuristic { initial: usize, min: usize, max: usize },
    Optimal { max: usize, c: f64 },
    Auto { max: usize, costs: Costs },
}

impl Schedule {
    /// Checks the draft lengths against a target with `context` positions: a schedule that may
    /// draft must be able to draft at least one token, and never more than the context holds.
    /// (`Auto` may choose k = 0 on its own, but its `max` must allow drafting.)
    pub fn validate(&self, context: usize) -> crate::Result<()> {
        let invalid = |parameter: &'static str, value: usize, expected: String| Err(crate::Error::InvalidParameter { parameter, value: value.to_string(), expected });
        let (parameter, value) = match *self {
            Schedule::Fixed { k } => ("k", k),
            Schedule::Heuristic { initial, min, max } => {
                if min == 0 || initial < min || min > max {
                    return invalid("k", initial, format!("the heuristic schedule needs 1 ≤ min ({min}) ≤ k ({initial}) ≤ max ({max})"));
                }
                ("max k", max)
            }
            Schedule::Optimal { max, c } => {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(crate::Error::InvalidParameter { parameter: "cost ratio", value: c.to_string(), expected: "must be a finite number ≥ 0".into() });
                }
                ("max k", max)
            }
            Schedule::Auto { max, .. } => ("max k", max),
        };
        if value == 0 {
            return invalid(parameter, value, "drafts at least 1 token (k = 0 is target-only decoding: decode without a proposer)".into());
        }
        if value > context {
            return invalid(parameter, value, format!("larger than the target's context of {context} positions"));
        }
        Ok(())
    }
}

/// The longest draft [`Costs`] describes.
pub const MAX_AUTO_K: usize = 16;

/// What a round costs, in target decode steps (one target forward over one token = 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Costs {
    /// c: one draft forward over one token.
    pub draft_step: f64,
    /// v(n) for n = 1..=17 at index n − 1: one target forward over n tokens (v(1) = 1).
    pub verify: [f64; MAX_AUTO_K + 1],
}

impl Costs {
    /// Costs from c and the verification curve measured at some sizes (n, v(n)), interpolated
    /// linearly between them, extended along the last segment's slope, and made non-decreasing.
    pub fn from_curve(draft_step: f64, measured: &[(usize, f64)]) -> Self {
        let mut points: Vec<(f64, f64)> = std::iter::once((1.0, 1.0)).chain(measured.iter().filter(|(n, _)| *n > 1).map(|&(n, v)| (n as f64, v))).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        let at = |n: f64| -> f64 {
            let i = points.iter().rposition(|p| p.0 <= n).unwrap_or(0);
            let (a, b) = if i + 1 < points.len() { (points[i], points[i + 1]) } else if i > 0 { (points[i - 1], points[i]) } else { return 1.0 + (n - 1.0) };
            (a.1 + (b.1 - a.1) * (n - a.0) / (b.0 - a.0)).max(1.0)
        };
        // A forward over more tokens never costs less: timing noise is not allowed to say so.
        let mut verify: [f64; MAX_AUTO_K + 1] = std::array::from_fn(|i| if i == 0 { 1.0 } else { at((i + 1) as f64) });
        for i in 1..verify.len() {
            verify[i] = verify[i].max(verify[i - 1]);
        }
        Costs { draft_step: draft_step.max(0.0), verify }
    }

    /// v(n), for 1 ≤ n ≤ 17.
    pub fn verify_cost(&self, n: usize) -> f64 {
        self.verify[n.clamp(1, MAX_AUTO_K + 1) - 1]
    }

    /// Time of a round drafting k tokens (k draft steps, a forward over k + 1 tokens).
    pub fn round(&self, k: usize) -> f64 {
        k as f64 * self.draft_step + self.verify_cost(k + 1)
    }
}

/// Leviathan et al.'s expected speedup for per-token acceptance α, draft length k and cost ratio c.
pub fn predicted_speedup(alpha: f64, k: usize, c: f64) -> f64 {
    expected_tokens(alpha, k) / (k as f64 * c + 1.0)
}

/// Expected tokens per verification: (1 − α^(k+1)) / (1 − α).
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    if (1.0 - alpha).abs() < 1e-12 {
        (k + 1) as f64
    } else {
        (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha)
    }
}

/// The k in 1..=max with the highest predicted speedup (the smallest on ties).
pub fn optimal_k(alpha: f64, c: f64, max: usize) -> usize {
    (1..=max.max(1)).fold((1, f64::MIN), |(bk, bs), k| {
        let s = predicted_speedup(alpha, k, c);
        if s > bs + 1e-12 {
            (k, s)
        } else {
            (bk, bs)
        }
    })
    .0
}

/// Expected tokens emitted by a round drafting k tokens, when draft position i is accepted with
/// probability `a[i]` given that all before it were: 1 + Σⱼ Πᵢ≤ⱼ aᵢ.
pub fn expected_round_tokens(a: &[f64], k: usize) -> f64 {
    let mut total = 1.0;
    let mut all = 1.0;
    for &ai in a.iter().take(k) {
        all *= ai;
        total += all;
    }
    total
}

/// The k in 0..=max with the most expected tokens per unit of time under `costs`.
pub fn best_k(a: &[f64], costs: &Costs, max: usize) -> usize {
    let rate = |k: usize| expected_round_tokens(a, k) / costs.round(k);
    (1..=max.min(MAX_AUTO_K).min(a.len())).fold(0, |best, k| if rate(k) > rate(best) + 1e-12 { k } else { best })
}

/// Online per-position acceptance: exponentially discounted counts (recent rounds weigh more, so
/// the estimate follows a change of text), shrunk toward the pooled rate of all positions, which
/// itself starts from an optimistic prior (so that drafting is tried first).
#[derive(Debug, Clone)]
struct Acceptance {
    tested: Vec<f64>,
    accepted: Vec<f64>,
}

impl Acceptance {
    /// Weight of the past per new round.
    const DECAY: f64 = 0.9;
    /// Pseudo-counts of the prior (rate `PRIOR_RATE`) and of the pull toward the pooled rate.
    const PRIOR: f64 = 2.0;
    const PRIOR_RATE: f64 = 0.75;
    const POOL: f64 = 2.0;

    fn new(positions: usize) -> Self {
        Acceptance { tested: vec![0.0; positions], accepted: vec![0.0; positions] }
    }

    /// Scales every count by `weight`: the evidence so far counts for less.
    fn discount(&mut self, weight: f64) {
        for (t, a) in self.tested.iter_mut().zip(self.accepted.iter_mut()) {
            *t *= weight;
            *a *= weight;
        }
    }

    fn observe(&mut self, drafted: usize, accepted: usize) {
        self.discount(Self::DECAY);
        for i in 0..drafted.min(accepted + 1).min(self.tested.len()) {
            self.tested[i] += 1.0;
            self.accepted[i] += f64::from(u8::from(i < accepted));
        }
    }

    /// The estimated aᵢ for every position.
    fn rates(&self) -> Vec<f64> {
        let pooled = (self.accepted.iter().sum::<f64>() + Self::PRIOR * Self::PRIOR_RATE) / (self.tested.iter().sum::<f64>() + Self::PRIOR);
        self.tested.iter().zip(&self.accepted).map(|(&t, &a)| (a + Self::POOL * pooled) / (t + Self::POOL)).collect()
    }
}

/// While `Auto` prefers k = 0, a one-token draft after this many rounds, doubling each time
/// drafting still does not pay, up to `PROBE_MAX`.
const PROBE_FIRST: usize = 8;
const PROBE_MAX: usize = 128;

/// A schedule's running state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedule: Schedule,
    k: usize,
    accepted: f64,
    tested: f64,
    /// `Auto`: per-position acceptance, rounds since the last draft, and the probing interval.
    positions: Acceptance,
    idle: usize,
    probe_after: usize,
}

impl Scheduler {
    pub fn new(schedule: Schedule) -> Self {
        let mut positions = Acceptance::new(0);
        let k = match schedule {
            Schedule::Fixed { k } => k,
            Schedule::Heuristic { initial, min, max } => initial.clamp(min, max),
            Schedule::Optimal { max, .. } => max.min(4),
            Schedule::Auto { max, costs } => {
                positions = Acceptance::new(max.min(MAX_AUTO_K));
                best_k(&positions.rates(), &costs, max)
            }
        };
        Scheduler { schedule, k, accepted: 0.0, tested: 0.0, positions, idle: 0, probe_after: PROBE_FIRST }
    }

    /// The largest k this schedule can ask for.
    pub fn max_k(&self) -> usize {
        match self.schedule {
            Schedule::Fixed { k } => k,
            Schedule::Heuristic { max, .. } | Schedule::Optimal { max, .. } => max,
            Schedule::Auto { max, .. } => max.min(MAX_AUTO_K),
        }
    }

    /// `Auto`'s current estimates of the per-position acceptance aᵢ (empty for other schedules).
    pub fn acceptance(&self) -> Vec<f64> {
        self.positions.rates()
    }

    /// Draft length for the next iteration.
    pub fn next_k(&self) -> usize {
        self.k
    }

    /// Feeds back one iteration: `drafted` tokens of which the first `accepted` were accepted.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        // Verified positions: the accepted ones plus the first rejected one, if any.
        self.tested += (accepted + usize::from(accepted < drafted)) as f64;
        self.accepted += accepted as f64;
        match self.schedule {
            Schedule::Fixed { .. } => {}
            Schedule::Heuristic { min, max, .. } => {
                if drafted == 0 {
                    return;
                }
                self.k = if accepted == drafted { (self.k + 2).min(max) } else { self.k.saturating_sub(1).max(min) };
            }
            Schedule::Optimal { max, c } => {
                // Beta(1, 1)-style prior keeps early estimates away from 0 and 1.
                let alpha = (self.accepted + 1.0) / (self.tested + 2.0);
                self.k = optimal_k(alpha, c, max);
            }
            Schedule::Auto { max, costs } => {
                let probe = drafted > 0 && self.idle >= self.probe_after;
                let agreed = probe && accepted == drafted;
                if agreed {
                    // The draft agrees again after a stretch of silence: the old evidence
                    // against it may be stale, so it weighs half. Not cleared: starting over from
                    // the optimistic prior would draft long runs again on text where the draft
                    // agrees at one position in two, and each such relapse costs target steps.
                    self.positions.discount(0.5);
                }
                if drafted > 0 {
                    self.positions.observe(drafted, accepted);
                }
                let best = best_k(&self.positions.rates(), &costs, max);
                if best > 0 {
                    (self.k, self.idle, self.probe_after) = (best, 0, PROBE_FIRST);
                } else if agreed {
                    // Not yet worth drafting, but the draft agreed: look again soon.
                    (self.k, self.idle, self.probe_after) = (0, 0, PROBE_FIRST);
                } else if probe {
                    // A probe that did not pay: wait twice as long for the next.
                    (self.k, self.idle, self.probe_after) = (0, 0, (2 * self.probe_after).min(PROBE_MAX));
                } else {
                    self.idle += 1;
                    self.k = if self.idle >= self.probe_after { 1 } else { 0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn draft_lengths_are_checked_against_nothing_and_the_context() {
        let refused = |s: Schedule| match s.validate(128) {
            Err(crate::Error::InvalidParameter { parameter, expected, .. }) => format!("{parameter}: {expected}"),
            other => panic!("{s:?} gave {other:?}"),
        };
        assert!(refused(Schedule::Fixed { k: 0 }).starts_with("k: drafts at least 1 token"));
        assert!(refused(Schedule::Fixed { k: 129 }).contains("context of 128"));
        assert!(refused(Schedule::Heuristic { initial: 0, min: 1, max: 8 }).starts_with("k: the heuristic schedule needs"));
        assert!(refused(Schedule::Heuristic { initial: 2, min: 1, max: 500 }).starts_with("max k: larger"));
        assert!(refused(Schedule::Optimal { max: 0, c: 0.1 }).starts_with("max k: drafts at least"));
        assert!(refused(Schedule::Optimal { max: 4, c: f64::NAN }).starts_with("cost ratio"));
        for ok in [Schedule::Fixed { k: 1 }, Schedule::Fixed { k: 128 }, Schedule::Heuristic { initial: 1, min: 1, max: 8 }, Schedule::Optimal { max: 12, c: 0.0 }] {
            assert!(ok.validate(128).is_ok(), "{ok:?}");
        }
    }

    use super::*;

    #[test]
    fn optimal_k_matches_a_brute_force_of_the_closed_form() {
        for &alpha in &[0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99] {
            for &c in &[0.01, 0.05, 0.1, 0.3, 0.6, 1.0] {
                let k = optimal_k(alpha, c, 16);
                let best = (1..=16).map(|k| predicted_speedup(alpha, k, c)).fold(f64::MIN, f64::max);
                assert!((predicted_speedup(alpha, k, c) - best).abs() < 1e-12, "α {alpha} c {c}");
            }
        }
        // Known values: α = 0.8, c = 0.05 → speedup peaks at k = 8 (3.092×), from the closed form.
        assert_eq!(optimal_k(0.8, 0.05, 16), 8);
        assert!((predicted_speedup(0.8, 8, 0.05) - 3.0921).abs() < 1e-3);
        // A useless draft: k = 1 (the smallest) is chosen.
        assert_eq!(optimal_k(0.0, 0.5, 8), 1);
        assert!((expected_tokens(1.0, 4) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn heuristic_follows_the_assisted_generation_rule() {
        let mut s = Scheduler::new(Schedule::Heuristic { initial: 4, min: 1, max: 8 });
        s.observe(4, 4);
        assert_eq!(s.next_k(), 6);
        s.observe(6, 6);
        assert_eq!(s.next_k(), 8);
        s.observe(8, 8);
        assert_eq!(s.next_k(), 8, "bounded above");
        s.observe(8, 2);
        assert_eq!(s.next_k(), 7);
        for _ in 0..10 {
            s.observe(s.next_k(), 0);
        }
        assert_eq!(s.next_k(), 1, "bounded below");
    }

    #[test]
    fn optimal_schedule_tracks_the_acceptance_rate() {
        let mut s = Scheduler::new(Schedule::Optimal { max: 12, c: 0.1 });
        for _ in 0..200 {
            s.observe(4, 4); // everything accepted: α → 1, k → max
        }
        assert_eq!(s.next_k(), 12);
        let mut s = Scheduler::new(Schedule::Optimal { max: 12, c: 0.1 });
        for _ in 0..200 {
            s.observe(4, 0); // nothing accepted: α → 0, k → 1
        }
        assert_eq!(s.next_k(), 1);
    }

    fn costs(c: f64, slope: f64) -> Costs {
        Costs { draft_step: c, verify: std::array::from_fn(|i| 1.0 + slope * i as f64) }
    }

    #[test]
    fn auto_picks_the_best_rate_by_brute_force() {
        for &a in &[0.0, 0.2, 0.5, 0.8, 0.95, 1.0] {
            for &c in &[0.05, 0.2, 0.5, 1.0] {
                for &slope in &[0.0, 0.1, 0.4, 1.0] {
                    let rates = vec![a; 8];
                    let costs = costs(c, slope);
                    let k = best_k(&rates, &costs, 8);
                    let rate = |k: usize| expected_round_tokens(&rates, k) / costs.round(k);
                    let best = (0..=8).map(rate).fold(f64::MIN, f64::max);
                    assert!((rate(k) - best).abs() < 1e-12, "a {a} c {c} slope {slope}: k {k}");
                }
            }
        }
        // Hand-worked: a = 0.9, c = 0.1, v(n) = 1 + 0.1(n − 1): k = 1 gives 1.9 / 1.2 = 1.583,
        // k = 2: 2.71 / 1.4 = 1.936, k = 3: 3.439 / 1.6 = 2.149, k = 4: 4.0951 / 1.8 = 2.275,
        // k = 5: 4.6856 / 2.0 = 2.343, k = 6: 5.217 / 2.2 = 2.371, k = 7: 5.695 / 2.4 = 2.373,
        // k = 8: 6.126 / 2.6 = 2.356 → 7.
        assert_eq!(best_k(&[0.9; 8], &costs(0.1, 0.1), 8), 7);
        // A draft as slow as the target that is never accepted: a plain target step.
        assert_eq!(best_k(&[0.0; 8], &costs(1.0, 0.5), 8), 0);
        // On this machine's measured shape (c ≈ 0.4, v(5) ≈ 1.6): one draft pays at a = 0.6
        // (1.6 / 1.55), none at a = 0.5 (1.5 / 1.55).
        assert_eq!(best_k(&[0.6; 8], &costs(0.4, 0.15), 8), 1);
        assert_eq!(best_k(&[0.5; 8], &costs(0.4, 0.15), 8), 0);
        assert!(best_k(&[0.97; 8], &costs(0.4, 0.15), 8) >= 2);
    }

    #[test]
    fn costs_interpolate_the_measured_curve() {
        let c = Costs::from_curve(0.3, &[(1, 1.0), (3, 1.4), (5, 2.0), (9, 3.0)]);
        assert_eq!(c.verify_cost(1), 1.0);
        assert!((c.verify_cost(2) - 1.2).abs() < 1e-12);
        assert!((c.verify_cost(4) - 1.7).abs() < 1e-12);
        assert!((c.verify_cost(7) - 2.5).abs() < 1e-12);
        // Past the last point, the last segment's slope (0.25 per token).
        assert!((c.verify_cost(13) - 4.0).abs() < 1e-12);
        assert!((c.round(4) - (1.2 + 2.0)).abs() < 1e-12);
    }

    #[test]
    fn auto_stops_drafting_when_it_does_not_pay_and_probes_less_and_less() {
        let mut s = Scheduler::new(Schedule::Auto { max: 8, costs: costs(0.3, 0.15) });
        assert!(s.next_k() > 0, "the optimistic prior tries drafting first");
        let mut ks = Vec::new();
        for _ in 0..400 {
            let k = s.next_k();
            ks.push(k);
            s.observe(k, 0); // never accepted
        }
        let probes: Vec<usize> = ks.iter().enumerate().skip(20).filter(|(_, &k)| k > 0).map(|(i, _)| i).collect();
        assert!(probes.iter().all(|&i| ks[i] == 1), "probes draft one token");
        let gaps: Vec<usize> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "probe intervals never shrink: {gaps:?}");
        assert!(probes.len() < 12, "at most a few probes in 380 rounds: {probes:?}");
        // A draft that starts to agree is picked up again by a probe.
        for _ in 0..300 {
            let k = s.next_k();
            s.observe(k, k);
        }
        assert!(s.next_k() >= 4, "k {} after a run of full acceptances", s.next_k());
    }

    /// Drafts near the break-even point (position 1 accepted in 1, 2 or 3 of every 5 tries,
    /// position 2 never; costs as measured for the Qwen pair, where a one-token round pays from
    /// 45% acceptance): whatever auto does, tokens per unit of time stay within 3% of target-only.
    /// Clearing the evidence after each successful probe (drafting again from the optimistic
    /// prior) fell below that at 2 in 5.
    #[test]
    fn auto_near_break_even_costs_no_more_than_target_only() {
        let costs = Costs::from_curve(0.28, &[(1, 1.0), (2, 1.17), (3, 1.26), (5, 1.41), (9, 2.0)]);
        for agree_in_5 in 1..=3 {
            let mut s = Scheduler::new(Schedule::Auto { max: 8, costs });
            let (mut tokens, mut time, mut tries) = (0.0, 0.0, 0usize);
            for _ in 0..600 {
                let k = s.next_k();
                let accepted = if k > 0 {
                    tries += 1;
                    usize::from([0, 2, 4][..agree_in_5].contains(&(tries % 5)))
                } else {
                    0
                };
                s.observe(k, accepted);
                tokens += (accepted + 1) as f64;
                time += costs.round(k);
            }
            assert!(tokens / time >= 0.97, "{agree_in_5} in 5: {:.3} tokens per target step", tokens / time);
        }
    }

    #[test]
    fn auto_tracks_acceptance_per_position() {
        let mut s = Scheduler::new(Schedule::Auto { max: 6, costs: costs(0.05, 0.05) });
        for _ in 0..200 {
            // Position 1 always accepted, position 2 never.
            s.observe(4, 1);
        }
        let a = s.acceptance();
        assert!(a[0] > 0.9 && a[1] < 0.2, "{a:?}");
        assert_eq!(s.next_k(), 1, "drafting past a position that always fails only costs time");
    }
}
