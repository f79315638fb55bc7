//! Statistics for comparing output distributions and for proportions (no I/O, no clock).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use std::collections::HashMap;
use std::hash::Hash;

/// χ² test of homogeneity of two samples over the same categories.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Homogeneity {
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    pub p_value: f64,
    /// Empirical total-variation distance ½ Σ |f_a − f_b| over the raw categories.
    pub total_variation: f64,
    /// Categories after pooling rare ones (each kept cell expects ≥ 5 in both samples).
    pub cells: usize,
    pub categories: usize,
}

/// ½ Σ |x/na − y/nb| over the (count in a, count in b) of every outcome.
fn total_variation(counts: impl Iterator<Item = (f64, f64)>, na: f64, nb: f64) -> f64 {
    0.5 * counts.map(|(x, y)| (x / na - y / nb).abs()).sum::<f64>()
}

/// Compares two samples of categorical outcomes (e.g. generated token sequences). Categories whose
/// expected count is below 5 in either sample are pooled into one cell, as the χ² approximation
/// needs; with fewer than two cells left the test has no power and the p-value is 1.
pub fn chi_square_homogeneity<T: Eq + Hash + Clone>(a: &[T], b: &[T]) -> Homogeneity {
    let mut counts: HashMap<T, (f64, f64)> = HashMap::new();
    for x in a {
        counts.entry(x.clone()).or_default().0 += 1.0;
    }
    for x in b {
        counts.entry(x.clone()).or_default().1 += 1.0;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let n = na + nb;
    let total_variation = if na > 0.0 && nb > 0.0 { total_variation(counts.values().copied(), na, nb) } else { 0.0 };
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut pooled = (0.0, 0.0);
    // Deterministic order: sort by total count, then by first-sample count.
    let mut all: Vec<(f64, f64)> = counts.values().copied().collect();
    all.sort_by(|x, y| (y.0 + y.1).total_cmp(&(x.0 + x.1)).then(y.0.total_cmp(&x.0)));
    for (x, y) in all {
        let total = x + y;
        if total * na / n >= 5.0 && total * nb / n >= 5.0 {
            cells.push((x, y));
        } else {
            pooled.0 += x;
            pooled.1 += y;
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        cells.push(pooled);
    }
    let categories = counts.len();
    if cells.len() < 2 || na == 0.0 || nb == 0.0 {
        return Homogeneity { statistic: 0.0, degrees_of_freedom: 0, p_value: 1.0, total_variation, cells: cells.len(), categories };
    }
    let statistic: f64 = cells
        .iter()
        .map(|&(x, y)| {
            let total = x + y;
            let (ea, eb) = (total * na / n, total * nb / n);
            (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
        })
        .sum();
    let df = cells.len() - 1;
    let p_value = 1.0 - ChiSquared::new(df as f64).expect("df ≥ 1").cdf(statistic);
    Homogeneity { statistic, degrees_of_freedom: df, p_value, total_variation, cells: cells.len(), categories }
}

/// χ² goodness of fit of observed `counts` to a distribution `expected_probs` over the same
/// categories.
impl Homogeneity {
    /// Whether any test was possible: at least two cells after pooling. With one cell the
    /// p-value of 1 says nothing about the two distributions.
    pub fn is_testable(&self) -> bool {
        self.degrees_of_freedom >= 1
    }
}

/// The total-variation distance two samples of these sizes show when they come from one
/// distribution: the `quantile` of the empirical TV over `permutations` random re-splits of the
/// pooled samples (deterministic for a `seed`). An observed TV below it is indistinguishable from
/// sampling noise at this N, so it is the smallest difference the comparison could detect. Near
/// 1 when almost every outcome is distinct (long continuations over a large vocabulary).
pub fn total_variation_noise<T: Eq + Hash + Clone>(a: &[T], b: &[T], permutations: usize, quantile: f64, seed: u64) -> f64 {
    if a.is_empty() || b.is_empty() || permutations == 0 {
        return 1.0;
    }
    // Outcomes as small integers, so each permutation is a pass over a Vec.
    let mut index: HashMap<T, usize> = HashMap::new();
    let mut order: Vec<usize> = a
        .iter()
        .chain(b)
        .map(|x| {
            let next = index.len();
            *index.entry(x.clone()).or_insert(next)
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let mut counts = vec![(0.0f64, 0.0f64); index.len()];
    let mut tvs = Vec::with_capacity(permutations);
    for _ in 0..permutations {
        order.shuffle(&mut rng);
        counts.iter_mut().for_each(|c| *c = (0.0, 0.0));
        for (i, &o) in order.iter().enumerate() {
            if i < a.len() {
                counts[o].0 += 1.0;
            } else {
                counts[o].1 += 1.0;
            }
        }
        tvs.push(total_variation(counts.iter().copied(), na, nb));
    }
    tvs.sort_by(f64::total_cmp);
    tvs[((quantile.clamp(0.0, 1.0) * (tvs.len() - 1) as f64).round() as usize).min(tvs.len() - 1)]
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GoodnessOfFit {
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    pub p_value: f64,
}

/// Tests `counts` against `expected_probs`. Categories expected below 5 are pooled into one cell;
/// an observation where nothing was expected makes the statistic infinite (p = 0): a certain
/// failure, as it should be for a sampler that emits an impossible outcome. With fewer than two
/// cells the test has no power and the p-value is 1.
pub fn chi_square_goodness_of_fit(counts: &[u64], expected_probs: &[f64]) -> GoodnessOfFit {
    assert_eq!(counts.len(), expected_probs.len(), "one probability per category");
    let n: u64 = counts.iter().sum();
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let (mut pooled_o, mut pooled_e) = (0.0, 0.0);
    for (&o, &p) in counts.iter().zip(expected_probs) {
        let e = p * n as f64;
        if e < 5.0 {
            pooled_o += o as f64;
            pooled_e += e;
        } else {
            cells.push((o as f64, e));
        }
    }
    if pooled_e > 0.0 || pooled_o > 0.0 {
        cells.push((pooled_o, pooled_e.max(1e-12)));
    }
    if cells.len() < 2 {
        return GoodnessOfFit { statistic: 0.0, degrees_of_freedom: 0, p_value: 1.0 };
    }
    let statistic: f64 = cells.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    let df = cells.len() - 1;
    let p_value = 1.0 - ChiSquared::new(df as f64).expect("df ≥ 1").cdf(statistic);
    GoodnessOfFit { statistic, degrees_of_freedom: df, p_value }
}

/// Wilson score interval for a binomial proportion (`successes` of `n`) at `confidence` (e.g.
/// 0.95): unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0
/// and 1 and for small n, as accuracies on a few dozen questions per subject need. `n = 0` gives
/// the uninformative [0, 1].
pub fn wilson_interval(successes: u64, n: u64, confidence: f64) -> (f64, f64) {
    assert!(successes <= n && confidence > 0.0 && confidence < 1.0, "wilson_interval({successes}, {n}, {confidence})");
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = Normal::new(0.0, 1.0).expect("standard normal").inverse_cdf(0.5 + confidence / 2.0);
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    // At 0 and n the bound is exactly 0 or 1; rounding would leave ±1e-17.
    let low = if successes == 0 { 0.0 } else { centre - half };
    let high = if p == 1.0 { 1.0 } else { centre + half };
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodness_of_fit_accepts_the_right_distribution_and_rejects_others() {
        let fair = chi_square_goodness_of_fit(&[1000, 1010, 990], &[1.0 / 3.0; 3]);
        assert_eq!(fair.degrees_of_freedom, 2);
        assert!(fair.p_value > 0.5, "{fair:?}");
        let skewed = chi_square_goodness_of_fit(&[1200, 900, 900], &[1.0 / 3.0; 3]);
        assert!(skewed.p_value < 1e-6, "{skewed:?}");
        // An outcome of probability zero is never acceptable, however rare.
        let impossible = chi_square_goodness_of_fit(&[500, 499, 1], &[0.5, 0.5, 0.0]);
        assert_eq!(impossible.p_value, 0.0, "{impossible:?}");
    }

    #[test]
    fn identical_samples_are_homogeneous_and_different_ones_are_not() {
        let a: Vec<u32> = (0..3000).map(|i| i % 3).collect();
        let h = chi_square_homogeneity(&a, &a);
        assert_eq!(h.statistic, 0.0);
        assert!(h.p_value > 0.99 && h.total_variation == 0.0);
        let b: Vec<u32> = (0..3000).map(|i| if i % 2 == 0 { 0 } else { i % 3 }).collect();
        let h = chi_square_homogeneity(&a, &b);
        assert!(h.p_value < 1e-6, "{h:?}");
        assert!(h.total_variation > 0.1);
    }

    #[test]
    fn hand_computed_two_by_two() {
        // a: 30 × x, 10 × y; b: 20 × x, 20 × y. Expected 25 and 15 in each sample: χ² = 1 + 5/3 + 1 + 5/3.
        let a: Vec<char> = std::iter::repeat_n('x', 30).chain(std::iter::repeat_n('y', 10)).collect();
        let b: Vec<char> = std::iter::repeat_n('x', 20).chain(std::iter::repeat_n('y', 20)).collect();
        let h = chi_square_homogeneity(&a, &b);
        assert!((h.statistic - 5.333333).abs() < 1e-4, "{h:?}");
        assert_eq!(h.degrees_of_freedom, 1);
        assert!((h.p_value - 0.020921).abs() < 1e-4, "{h:?}");
        assert!((h.total_variation - 0.25).abs() < 1e-12);
    }

    #[test]
    fn rare_categories_are_pooled() {
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (100..200).collect();
        let h = chi_square_homogeneity(&a, &b);
        assert_eq!(h.cells, 1);
        assert_eq!(h.p_value, 1.0, "one pooled cell: no test possible");
        assert!(!h.is_testable());
        assert!((h.total_variation - 1.0).abs() < 1e-9);
        // All outcomes distinct: even one distribution split in two shows TV 1, so no
        // difference is detectable.
        assert!((total_variation_noise(&a, &b, 50, 0.95, 1) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_noise_floor_shrinks_with_the_sample_and_a_real_difference_exceeds_it() {
        let a: Vec<u32> = (0..4000).map(|i| (i * 7919) % 4).collect();
        let b: Vec<u32> = (0..4000).map(|i| (i * 104729 + 1) % 4).collect();
        let small = total_variation_noise(&a[..200], &b[..200], 200, 0.95, 3);
        let large = total_variation_noise(&a, &b, 200, 0.95, 3);
        assert!(large < small && large < 0.05, "noise floor {small} at 200, {large} at 4000");
        // Moving a tenth of the mass to outcome 0 (TV 0.075) is well above the floor at 4000.
        let shifted: Vec<u32> = (0..4000).map(|i| if i % 10 == 0 { 0 } else { (i * 104729 + 1) % 4 }).collect();
        let h = chi_square_homogeneity(&a, &shifted);
        assert!(h.total_variation > large && h.p_value < 1e-3, "{h:?} vs floor {large}");
        assert_eq!(total_variation_noise(&a, &b, 200, 0.95, 3), large, "deterministic for a seed");
    }

    #[test]
    fn wilson_interval_matches_published_values() {
        // Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 15/148 → 0.0624–0.1605 (95%).
        let (lo, hi) = wilson_interval(81, 263, 0.95);
        assert!((lo - 0.2553).abs() < 5e-5 && (hi - 0.3662).abs() < 5e-5, "{lo} {hi}");
        let (lo, hi) = wilson_interval(15, 148, 0.95);
        assert!((lo - 0.0624).abs() < 5e-5 && (hi - 0.1605).abs() < 5e-5, "{lo} {hi}");
        // 0 of 10 and 10 of 10 touch the bounds; an empty sample says nothing.
        assert_eq!(wilson_interval(0, 10, 0.95).0, 0.0);
        assert_eq!(wilson_interval(10, 10, 0.95).1, 1.0);
        assert_eq!(wilson_interval(0, 0, 0.95), (0.0, 1.0));
    }
}
