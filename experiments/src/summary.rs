//! Per-cell summaries of a run's records (docs/DESIGN.md §4): means with Student-t 95% confidence
//! intervals over prompts × repeats, the measured speedup against target-only decoding of the same
//! prompts, α̂, τ, the cost ratio c, Leviathan's predicted speedup and how far the measurement is
//! from it. Pure functions of the records: `specdec summarize` recomputes everything.

use crate::records::{Kind, Record};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use std::collections::{BTreeMap, HashMap};

/// A mean with its 95% confidence interval (None with fewer than two samples).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub n: usize,
}

impl Estimate {
    pub fn of(values: &[f64]) -> Estimate {
        let n = values.len();
        let mean = if n == 0 { f64::NAN } else { values.iter().sum::<f64>() / n as f64 };
        if n < 2 {
            return Estimate { mean, ci_low: None, ci_high: None, n };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2 degrees of freedom").inverse_cdf(0.975);
        let half = t * (var / n as f64).sqrt();
        Estimate { mean, ci_low: Some(mean - half), ci_high: Some(mean + half), n }
    }

    /// `+0.05 ± 0.04`: a difference, signed, with the CI's half-width.
    pub fn show_signed(&self, digits: usize) -> String {
        match self.ci_high {
            Some(hi) => format!("{:+.*} ± {:.*}", digits, self.mean, digits, hi - self.mean),
            None => format!("{:+.*}", digits, self.mean),
        }
    }

    /// `1.23 ± 0.04` (half-width of the CI), or just the mean.
    pub fn show(&self, digits: usize) -> String {
        match self.ci_high {
            Some(hi) => format!("{:.*} ± {:.*}", digits, self.mean, digits, hi - self.mean),
            None => format!("{:.*}", digits, self.mean),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    pub cell: String,
    pub kind: Kind,
    pub pair: String,
    pub model: String,
    pub proposer: String,
    pub schedule: String,
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub prompt_set: String,
    pub records: usize,
    pub new_tokens: f64,
    pub decode_tok_s: Estimate,
    pub prefill_tok_s: Estimate,
    /// Spec cells: per (prompt, repeat), speculative ÷ target-only decode tok/s.
    pub speedup: Option<Estimate>,
    /// α̂ = ΣA / ΣD over the cell, and the per-generation α spread.
    pub alpha: Option<f64>,
    pub alpha_per_generation: Option<Estimate>,
    /// ΣA / Σ(verified positions): the per-token acceptance probability Leviathan's formula means.
    /// α̂ also counts drafts after a rejection, which are never verified, so it is lower for k > 1.
    pub alpha_verified: Option<f64>,
    /// τ = ΣE / ΣN.
    pub tau: Option<f64>,
    /// Mean drafted tokens per verification (≤ k: budget ends and confidence stops shorten drafts).
    pub mean_draft_len: Option<f64>,
    pub per_position: Vec<f64>,
    /// Cost ratio from draft forward passes inside the speculative runs ÷ target-only decode step.
    pub c: Option<f64>,
    /// Cost ratio from whole draft-only vs target-only generations.
    pub c_baseline: Option<f64>,
    /// Verification forward (k + 1 tokens) ÷ target-only decode step.
    pub verify_cost: Option<f64>,
    /// Leviathan: (1 − α^(k+1)) / ((1 − α)(k·c + 1)), and with the measured verification cost v.
    pub predicted_speedup: Option<f64>,
    pub predicted_speedup_v: Option<f64>,
    pub measured_over_predicted: Option<f64>,
    /// Greedy spec cells: generations whose tokens equal the target-only ones, of those compared.
    pub greedy_identical: Option<usize>,
    pub greedy_compared: Option<usize>,
}

/// A spec cell's results on one prompt category, in Spec-Bench's terms: the speedup over
/// target-only decoding and the mean tokens per target call (τ).
#[derive(Debug, Clone, Serialize)]
pub struct CategoryRow {
    pub pair: String,
    pub schedule: String,
    pub k: usize,
    pub temperature: f32,
    pub category: String,
    pub records: usize,
    pub speedup: Estimate,
    pub tau: f64,
}

/// Spec cells broken down by the prompts' categories.
pub fn per_category(records: &[Record]) -> Vec<CategoryRow> {
    let baseline = baseline_index(records);
    let mut groups: BTreeMap<(String, String, usize, u32, String), Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind == Kind::Spec) {
        groups.entry((r.pair.clone(), r.schedule.clone(), r.k, r.temperature.to_bits(), r.category.clone())).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((pair, schedule, k, t, category), rs)| {
            let ratios = paired_speedups(&rs, &baseline);
            let (e, n): (u64, u64) = rs.iter().fold((0, 0), |(e, n), r| (e + r.emitted, n + r.iterations));
            CategoryRow { pair, schedule, k, temperature: f32::from_bits(t), category, records: rs.len(), speedup: Estimate::of(&ratios), tau: if n > 0 { e as f64 / n as f64 } else { f64::NAN } }
        })
        .collect()
}

/// One draft pair against the run's first pair on the same prompts, repeats and settings.
#[derive(Debug, Clone, Serialize)]
pub struct PairedRow {
    pub pair: String,
    pub against: String,
    pub prompt_set: String,
    pub schedule: String,
    pub k: usize,
    pub temperature: f32,
    /// Generations matched with the first pair's (same prompt, repeat and sampling settings).
    pub matched: usize,
    /// α̂ of this pair's generation minus the first pair's, per matched generation.
    pub alpha_difference: Estimate,
    /// Speedup of this pair's generation minus the first pair's, each over the same target-only run.
    pub speedup_difference: Option<Estimate>,
}

/// Paired differences between draft pairs. Two pairs run on the same prompts and repeats share the
/// prompt-to-prompt variation (a hard prompt is hard for both), so the per-prompt difference has a
/// much narrower interval than the two cells' separate intervals suggest. Every pair after the
/// first is compared with the first (in record order), within each prompt set, schedule, k and T.
pub fn paired_differences(records: &[Record]) -> Vec<PairedRow> {
    let baseline = baseline_index(records);
    let mut pairs: Vec<&str> = Vec::new();
    for r in records.iter().filter(|r| r.kind == Kind::Spec) {
        if !pairs.contains(&r.pair.as_str()) {
            pairs.push(&r.pair);
        }
    }
    let Some((&first, others)) = pairs.split_first() else { return vec![] };
    // The first pair's records by everything that must match except the pair itself.
    let setting = |r: &Record| (r.schedule.clone(), r.params.clone(), r.k, r.group());
    let reference: HashMap<_, &Record> = records.iter().filter(|r| r.kind == Kind::Spec && r.pair == first).map(|r| (setting(r), r)).collect();
    let mut rows = Vec::new();
    for &pair in others {
        let mut groups: BTreeMap<(String, String, usize, u32), Vec<(&Record, &Record)>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.kind == Kind::Spec && r.pair == pair) {
            if let Some(f) = reference.get(&setting(r)) {
                groups.entry((r.prompt_set.clone(), r.schedule.clone(), r.k, r.temperature.to_bits())).or_default().push((r, f));
            }
        }
        for ((prompt_set, schedule, k, t), matched) in groups {
            let alpha: Vec<f64> = matched.iter().map(|(r, f)| r.alpha - f.alpha).collect();
            let speedup: Vec<f64> = matched
                .iter()
                .filter_map(|(r, f)| {
                    let b = baseline.get(&(Kind::Target, r.model.as_str(), r.group())).filter(|b| b.decode_tok_s > 0.0 && r.model == f.model)?;
                    Some((r.decode_tok_s - f.decode_tok_s) / b.decode_tok_s)
                })
                .collect();
            rows.push(PairedRow {
                pair: pair.to_string(),
                against: first.to_string(),
                prompt_set,
                schedule,
                k,
                temperature: f32::from_bits(t),
                matched: matched.len(),
                alpha_difference: Estimate::of(&alpha),
                speedup_difference: (!speedup.is_empty()).then(|| Estimate::of(&speedup)),
            });
        }
    }
    rows
}

/// Expected tokens per verification for real-valued k (adaptive schedules average their k).
pub fn expected_tokens(alpha: f64, k: f64) -> f64 {
    if (1.0 - alpha).abs() < 1e-12 {
        k + 1.0
    } else {
        (1.0 - alpha.powf(k + 1.0)) / (1.0 - alpha)
    }
}

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Target-only records by (target model, group); draft-only by (draft label, group).
fn baseline_index(records: &[Record]) -> HashMap<(Kind, &str, String), &Record> {
    records.iter().filter(|r| r.kind != Kind::Spec).map(|r| ((r.kind, r.model.as_str(), r.group()), r)).collect()
}

/// Each spec record's decode tok/s over its target-only baseline (same model and group), where
/// the baseline exists and decoded.
fn paired_speedups(rs: &[&Record], baseline: &HashMap<(Kind, &str, String), &Record>) -> Vec<f64> {
    rs.iter()
        .filter_map(|r| baseline.get(&(Kind::Target, r.model.as_str(), r.group())).filter(|b| b.decode_tok_s > 0.0).map(|b| r.decode_tok_s / b.decode_tok_s))
        .collect()
}

/// Summaries of every cell, baselines first, then spec cells in grid order.
pub fn summarize(records: &[Record]) -> Vec<CellSummary> {
    let baseline = baseline_index(records);
    let mut cells: BTreeMap<(Kind, usize), Vec<&Record>> = BTreeMap::new();
    let mut order: HashMap<&str, usize> = HashMap::new();
    for r in records {
        let n = order.len();
        let i = *order.entry(r.cell.as_str()).or_insert(n);
        cells.entry((r.kind, i)).or_default().push(r);
    }
    cells
        .into_values()
        .map(|rs| {
            let first = rs[0];
            let decode = Estimate::of(&rs.iter().map(|r| r.decode_tok_s).collect::<Vec<_>>());
            let prefill = Estimate::of(&rs.iter().map(|r| r.prefill_tok_s).collect::<Vec<_>>());
            let mut s = CellSummary {
                cell: first.cell.clone(),
                kind: first.kind,
                pair: first.pair.clone(),
                model: first.model.clone(),
                proposer: first.proposer.clone(),
                schedule: first.schedule.clone(),
                k: first.k,
                temperature: first.temperature,
                top_p: first.top_p,
                top_k: first.top_k,
                max_new_tokens: first.max_new_tokens,
                prompt_set: first.prompt_set.clone(),
                records: rs.len(),
                new_tokens: mean(rs.iter().map(|r| r.new_tokens as f64)).unwrap_or(0.0),
                decode_tok_s: decode,
                prefill_tok_s: prefill,
                speedup: None,
                alpha: None,
                alpha_per_generation: None,
                alpha_verified: None,
                tau: None,
                mean_draft_len: None,
                per_position: vec![],
                c: None,
                c_baseline: None,
                verify_cost: None,
                predicted_speedup: None,
                predicted_speedup_v: None,
                measured_over_predicted: None,
                greedy_identical: None,
                greedy_compared: None,
            };
            if first.kind == Kind::Spec {
                spec_details(&mut s, &rs, &baseline);
            }
            s
        })
        .collect()
}

fn spec_details(s: &mut CellSummary, rs: &[&Record], baseline: &HashMap<(Kind, &str, String), &Record>) {
    let sum = |f: fn(&Record) -> u64| rs.iter().map(|r| f(r)).sum::<u64>() as f64;
    let (d, a, n, e) = (sum(|r| r.drafted), sum(|r| r.accepted), sum(|r| r.iterations), sum(|r| r.emitted));
    let alpha = if d > 0.0 { a / d } else { 0.0 };
    s.alpha = Some(alpha);
    s.alpha_per_generation = Some(Estimate::of(&rs.iter().filter(|r| r.drafted > 0).map(|r| r.alpha).collect::<Vec<_>>()));
    s.tau = (n > 0.0).then(|| e / n);
    s.mean_draft_len = (n > 0.0).then(|| d / n);
    let positions = rs.iter().map(|r| r.position_tested.len()).max().unwrap_or(0);
    s.per_position = (0..positions)
        .map(|i| {
            let t: u64 = rs.iter().map(|r| r.position_tested.get(i).copied().unwrap_or(0)).sum();
            let acc: u64 = rs.iter().map(|r| r.position_accepted.get(i).copied().unwrap_or(0)).sum();
            if t > 0 { acc as f64 / t as f64 } else { f64::NAN }
        })
        .collect();
    let tested: u64 = rs.iter().flat_map(|r| r.position_tested.iter()).sum();
    let alpha_verified = if tested > 0 { a / tested as f64 } else { 0.0 };
    s.alpha_verified = Some(alpha_verified);

    let targets: Vec<(&Record, &Record)> = rs.iter().filter_map(|r| baseline.get(&(Kind::Target, r.model.as_str(), r.group())).map(|b| (*r, *b))).collect();
    if targets.is_empty() {
        return;
    }
    s.speedup = Some(Estimate::of(&paired_speedups(rs, baseline)));
    let target_step = mean(targets.iter().map(|(_, b)| b.step_s())).unwrap_or(0.0);
    if target_step <= 0.0 {
        return;
    }
    // A model draft's cost per forward pass; a deterministic proposer's per drafted token.
    let draft_s: f64 = rs.iter().map(|r| r.draft_s).sum();
    let draft_units: f64 = rs.iter().map(|r| if r.draft_steps > 0 { r.draft_steps } else { r.drafted }).sum::<u64>() as f64;
    let c = if draft_units > 0.0 { draft_s / draft_units / target_step } else { 0.0 };
    s.c = Some(c);
    let drafts: Vec<f64> = rs.iter().filter_map(|r| baseline.get(&(Kind::Draft, r.draft.as_str(), r.group())).map(|b| b.step_s())).collect();
    if let Some(ds) = mean(drafts) {
        s.c_baseline = Some(ds / target_step);
    }
    let verify_calls: f64 = rs.iter().map(|r| r.iterations).sum::<u64>() as f64;
    let v = if verify_calls > 0.0 { rs.iter().map(|r| r.verify_s).sum::<f64>() / verify_calls / target_step } else { 1.0 };
    s.verify_cost = Some(v);
    // Fixed schedules use their k; adaptive ones the mean draft length they chose.
    let k = if s.schedule == "fixed" { s.k as f64 } else { s.mean_draft_len.unwrap_or(s.k as f64) };
    let predicted = expected_tokens(alpha_verified, k) / (k * c + 1.0);
    s.predicted_speedup = Some(predicted);
    s.predicted_speedup_v = Some(expected_tokens(alpha_verified, k) / (k * c + v));
    s.measured_over_predicted = s.speedup.map(|m| m.mean / predicted);
    if s.temperature == 0.0 {
        s.greedy_compared = Some(targets.len());
        s.greedy_identical = Some(targets.iter().filter(|(r, b)| r.tokens == b.tokens).count());
    }
}

/// Spec cells' best k per (pair, prompt set, temperature): the highest mean measured speedup.
pub fn best_k(cells: &[CellSummary]) -> Vec<(String, String, f32, usize, f64)> {
    let mut best: BTreeMap<(String, String, String), (f32, usize, f64)> = BTreeMap::new();
    for c in cells.iter().filter(|c| c.kind == Kind::Spec) {
        let Some(sp) = c.speedup else { continue };
        let key = (c.pair.clone(), c.prompt_set.clone(), format!("{:08.3}", c.temperature));
        let e = best.entry(key).or_insert((c.temperature, c.k, f64::MIN));
        if sp.mean > e.2 {
            *e = (c.temperature, c.k, sp.mean);
        }
    }
    best.into_iter().map(|((pair, set, _), (t, k, s))| (pair, set, t, k, s)).collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// The summary as a readable table (stdout at the end of a run, and report.md).
pub fn table(cells: &[CellSummary]) -> String {
    let mut out = String::new();
    out.push_str("| kind | pair / model | set | T | k | n | decode tok/s | speedup | α̂ | α | τ | c | v | predicted | meas/pred | greedy = target |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cells {
        let who = if c.kind == Kind::Spec { format!("{} ({})", c.pair, c.schedule) } else { c.model.clone() };
        let kind = format!("{:?}", c.kind).to_lowercase();
        let k = if c.kind == Kind::Spec { c.k.to_string() } else { "–".into() };
        let greedy = match (c.greedy_identical, c.greedy_compared) {
            (Some(i), Some(n)) => format!("{i}/{n}"),
            _ => "–".into(),
        };
        out.push_str(&format!(
            "| {kind} | {who} | {} | {} | {k} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {greedy} |\n",
            c.prompt_set,
            c.temperature,
            c.records,
            c.decode_tok_s.show(1),
            c.speedup.map_or("–".into(), |s| s.show(2)),
            opt(c.alpha, 3),
            opt(c.alpha_verified, 3),
            opt(c.tau, 2),
            opt(c.c.or(c.c_baseline), 3),
            opt(c.verify_cost, 2),
            opt(c.predicted_speedup, 2),
            opt(c.measured_over_predicted, 2),
        ));
    }
    out
}

/// summary.csv: one row per cell, scalar columns only.
pub fn csv_bytes(cells: &[CellSummary]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "cell", "kind", "pair", "model", "proposer", "schedule", "k", "temperature", "top_p", "top_k", "max_new_tokens", "prompt_set",
        "records", "new_tokens", "decode_tok_s", "decode_tok_s_ci_low", "decode_tok_s_ci_high", "prefill_tok_s", "speedup",
        "speedup_ci_low", "speedup_ci_high", "alpha", "alpha_verified", "tau", "mean_draft_len", "c", "c_baseline", "verify_cost", "predicted_speedup",
        "predicted_speedup_v", "measured_over_predicted", "greedy_identical", "greedy_compared",
    ])?;
    let f = |v: Option<f64>| v.filter(|x| x.is_finite()).map_or(String::new(), |x| format!("{x}"));
    let u = |v: Option<usize>| v.map_or(String::new(), |x| x.to_string());
    for c in cells {
        w.write_record([
            c.cell.clone(),
            format!("{:?}", c.kind).to_lowercase(),
            c.pair.clone(),
            c.model.clone(),
            c.proposer.clone(),
            c.schedule.clone(),
            c.k.to_string(),
            c.temperature.to_string(),
            c.top_p.to_string(),
            c.top_k.to_string(),
            c.max_new_tokens.to_string(),
            c.prompt_set.clone(),
            c.records.to_string(),
            c.new_tokens.to_string(),
            f(Some(c.decode_tok_s.mean)),
            f(c.decode_tok_s.ci_low),
            f(c.decode_tok_s.ci_high),
            f(Some(c.prefill_tok_s.mean)),
            f(c.speedup.map(|s| s.mean)),
            f(c.speedup.and_then(|s| s.ci_low)),
            f(c.speedup.and_then(|s| s.ci_high)),
            f(c.alpha),
            f(c.alpha_verified),
            f(c.tau),
            f(c.mean_draft_len),
            f(c.c),
            f(c.c_baseline),
            f(c.verify_cost),
            f(c.predicted_speedup),
            f(c.predicted_speedup_v),
            f(c.measured_over_predicted),
            u(c.greedy_identical),
            u(c.greedy_compared),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("summary.csv: {}", e.error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval_matches_a_hand_computation() {
        // mean 2, s = 1, n = 4 → half-width t(0.975, 3) · 1/2 = 3.182446 / 2.
        let e = Estimate::of(&[1.0, 2.0, 2.0, 3.0].map(|x| x));
        let s = (2.0f64 / 3.0).sqrt();
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.ci_high.unwrap() - (2.0 + 3.182446305284263 * s / 2.0)).abs() < 1e-9, "{e:?}");
        assert_eq!(Estimate::of(&[5.0]).ci_low, None);
    }

    fn record(kind: &str, pair: &str, prompt: &str, alpha: f64, decode_tok_s: f64) -> Record {
        let line = format!(
            r#"{{"key":"{kind}{pair}{prompt}","cell":"{kind}{pair}","kind":"{kind}","pair":"{pair}","model":"t","proposer":"model","schedule":"fixed","k":4,"temperature":1.0,"top_p":1.0,"top_k":0,"max_new_tokens":8,"prompt_set":"s","prompt_id":"{prompt}","category":"","repeat":0,"seed":0,"prompt_tokens":1,"new_tokens":8,"stop":"length","prefill_s":0.1,"decode_s":0.1,"prefill_tok_s":10.0,"decode_tok_s":{decode_tok_s},"drafted":8,"accepted":4,"iterations":4,"emitted":8,"position_tested":[],"position_accepted":[],"alpha":{alpha},"tau":2.0,"draft_s":0.0,"verify_s":0.0,"overhead_s":0.0,"draft_steps":0,"tokens":[1],"text":"x"}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn paired_differences_match_prompts_and_see_a_shift_the_separate_intervals_hide() {
        // Prompts differ a lot (α̂ 0.2 … 0.8); the second pair is 0.05 better on every one, ± 0.01.
        let mut records = Vec::new();
        let base = [0.2, 0.8, 0.35, 0.65, 0.5, 0.3];
        for (i, a) in base.iter().enumerate() {
            let p = format!("p{i}");
            records.push(record("target", "", &p, 0.0, 10.0));
            records.push(record("spec", "plain", &p, *a, 10.0 * (1.0 + a)));
            let shift = 0.05 + if i % 2 == 0 { 0.01 } else { -0.01 };
            records.push(record("spec", "aligned", &p, a + shift, 10.0 * (1.0 + a + shift)));
        }
        // A prompt only the second pair ran is not matched with anything.
        records.push(record("spec", "aligned", "extra", 0.99, 20.0));
        let rows = paired_differences(&records);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.pair.as_str(), row.against.as_str(), row.matched), ("aligned", "plain", 6));
        assert!((row.alpha_difference.mean - 0.05).abs() < 1e-9, "{row:?}");
        assert!(row.alpha_difference.ci_low.unwrap() > 0.03, "{row:?}");
        let speedup = row.speedup_difference.unwrap();
        assert!((speedup.mean - 0.05).abs() < 1e-9 && speedup.ci_low.unwrap() > 0.0, "{speedup:?}");
        // The two cells on their own: intervals far wider than the shift, overlapping.
        let cells = summarize(&records);
        let by_pair = |p: &str| cells.iter().find(|c| c.pair == p).unwrap().alpha_per_generation.unwrap();
        assert!(by_pair("plain").ci_high.unwrap() > by_pair("aligned").ci_low.unwrap());
        // Pairing by position instead of by prompt (a broken variant) loses the shift in noise.
        let (plain, aligned): (Vec<&Record>, Vec<&Record>) =
            (records.iter().filter(|r| r.pair == "plain").collect(), records.iter().filter(|r| r.pair == "aligned").rev().collect());
        let misaligned = Estimate::of(&plain.iter().zip(&aligned).map(|(f, r)| r.alpha - f.alpha).collect::<Vec<_>>());
        assert!(misaligned.ci_low.unwrap() < 0.0, "{misaligned:?}");
        let one_pair: Vec<Record> = records.iter().filter(|r| r.pair != "aligned").cloned().collect();
        assert!(paired_differences(&one_pair).is_empty(), "one pair: nothing to compare");
    }

    #[test]
    fn expected_tokens_agrees_with_the_engine_for_integer_k() {
        for &a in &[0.0, 0.3, 0.8, 1.0] {
            for k in 1..6 {
                assert!((expected_tokens(a, k as f64) - engine::speculative::expected_tokens(a, k)).abs() < 1e-12);
            }
        }
    }
}
