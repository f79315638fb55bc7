//! How many tokens to draft in each iteration.
//!
//! - `Fixed(k)`.
//! - `Heuristic` — transformers' assisted generation: k += 2 after a fully accepted round, k −= 1
//!   otherwise, within bounds.
//! - `Optimal` — estimates α online (accepted / verified positions, with a weak prior) and picks the
//!   k maximising Leviathan's speedup (1 − α^(k+1)) / ((1 − α)(k·c + 1)) for a cost ratio c.
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

/// A schedule's running state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedule: Schedule,
    k: usize,
    accepted: f64,
    tested: f64,
}

impl Scheduler {
    pub fn new(schedule: Schedule) -> Self {
        let k = match schedule {
            Schedule::Fixed { k } => k,
            Schedule::Heuristic { initial, min, max } => initial.clamp(min, max),
            Schedule::Optimal { max, .. } => max.min(4),
        };
        Scheduler { schedule, k, accepted: 0.0, tested: 0.0 }
    }

    /// The largest k this schedule can ask for.
    pub fn max_k(&self) -> usize {
        match self.schedule {
            Schedule::Fixed { k } => k,
            Schedule::Heuristic { max, .. } | Schedule::Optimal { max, .. } => max,
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
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
}
