//! Statistical proof that speculative decoding is lossless: on toy Markov "models" whose exact
//! sequence probabilities are known, the distribution of speculatively generated sequences passes a
//! χ² goodness-of-fit test against the target's (p > 0.001, 10⁵ draws, fixed seeds), for several
//! (p, q) including adversarial ones; and the same test rejects a deliberately wrong verifier.

mod common;

use common::{toy_target as target, Markov};
use engine::generate::{generate, GenerationConfig};
use engine::sampling::{warp, Probs, SamplingParams};
use engine::speculative::faults::{with_fault, Fault};
use engine::speculative::{
    generate_speculative, verify, Costs, DraftModel, ExtendedIds, NGram, Proposer, Schedule, SpecConfig, Verification, VerifyMode,
};

/// χ² goodness of fit (`engine::stats`): (statistic, p-value).
fn chi_square_p_value(counts: &[u64], expected_probs: &[f64]) -> (f64, f64) {
    let fit = engine::stats::chi_square_goodness_of_fit(counts, expected_probs);
    (fit.statistic, fit.p_value)
}

const DRAWS: u64 = 100_000;
const MIN_P: f64 = 0.001;
/// Draws for a broken twin: each fault below moves the distribution far enough that this many
/// give p-values many orders of magnitude below `MIN_P` (printed), at a fifth of the cost.
const TWIN_DRAWS: u64 = 20_000;

/// A broken twin: the same test with `fault` switched on must reject (p < `MIN_P`), or the
/// test has no power for that configuration.
fn assert_caught(what: &str, fault: Fault, test: impl FnOnce() -> f64) {
    let p = with_fault(fault, test);
    eprintln!("broken twin of {what} ({fault:?}): p = {p:.2e}");
    assert!(p < MIN_P, "{what} with the deliberate fault {fault:?} passed (p = {p}): the test has no power there");
}

/// [`window_test_n`] over `TWIN_DRAWS` generations with a draft model built by `proposer`.
fn twin_test<'a>(target: &Markov, prompt: &[u32], proposer: impl Fn() -> Box<dyn Proposer + 'a>, schedule: Schedule, params: SamplingParams, len: usize) -> f64 {
    window_test_n(TWIN_DRAWS, target, prompt, proposer, schedule, Verification::Token, params, len, 3)
}

/// Drafts k tokens per round with a draft model and tests the last `window` of k + 4 generated
/// tokens: long enough that full rounds of k drafts happen after the first token (which the
/// target samples at prefill).
fn sequence_test(target: &Markov, draft: &Markov, k: usize, params: SamplingParams, window: usize) -> f64 {
    general_sequence_test(target, &[0], || Box::new(DraftModel::new(draft, 64).unwrap()), Schedule::Fixed { k }, params, k + 4, window)
}

/// The same test for any proposer and schedule, after any prompt (the target is Markov: only the
/// prompt's last token matters for the expected distribution), on the last `window` of `len`
/// generated tokens.
fn general_sequence_test<'a>(
    target: &Markov,
    prompt: &[u32],
    proposer: impl Fn() -> Box<dyn Proposer + 'a>,
    schedule: Schedule,
    params: SamplingParams,
    len: usize,
    window: usize,
) -> f64 {
    window_test(target, prompt, proposer, schedule, Verification::Token, params, len, window)
}

/// Generates `len` tokens DRAWS times and tests the distribution of the last `window` of them
/// against the target's (a window keeps the χ² cells few while the generation is long enough
/// for k drafted tokens after the first, prefill-sampled one).
#[allow(clippy::too_many_arguments)]
fn window_test<'a>(
    target: &Markov,
    prompt: &[u32],
    proposer: impl Fn() -> Box<dyn Proposer + 'a>,
    schedule: Schedule,
    verification: Verification,
    params: SamplingParams,
    len: usize,
    window: usize,
) -> f64 {
    window_test_n(DRAWS, target, prompt, proposer, schedule, verification, params, len, window)
}

/// [`window_test`] over `draws` generations (broken twins whose bias is large need fewer).
#[allow(clippy::too_many_arguments)]
fn window_test_n<'a>(
    draws: u64,
    target: &Markov,
    prompt: &[u32],
    proposer: impl Fn() -> Box<dyn Proposer + 'a>,
    schedule: Schedule,
    verification: Verification,
    params: SamplingParams,
    len: usize,
    window: usize,
) -> f64 {
    let v = target.table.len();
    let start = *prompt.last().unwrap();
    // Exact target probabilities under the warping: the marginal of the window's first token
    // (the chain run len − window steps from the prompt), then the chain.
    let rows: Vec<Probs> = target.table.iter().map(|r| warp(r, &params)).collect();
    let mut marginal = vec![0.0; v];
    marginal[start as usize] = 1.0;
    for _ in 0..=len - window {
        marginal = (0..v).map(|x| (0..v).map(|y| marginal[y] * rows[y].get(x as u32) as f64).sum()).collect();
    }
    let cells = v.pow(window as u32);
    let mut expected = vec![0.0; cells];
    for (c, e) in expected.iter_mut().enumerate() {
        let mut rest = c;
        let first = rest % v;
        rest /= v;
        let (mut prev, mut prob) = (first, marginal[first]);
        for _ in 1..window {
            let tok = rest % v;
            rest /= v;
            prob *= rows[prev].get(tok as u32) as f64;
            prev = tok;
        }
        *e = prob;
    }
    let mut counts = vec![0u64; cells];
    let cfg = |seed| SpecConfig {
        generation: GenerationConfig { max_new_tokens: len, sampling: params, seed, stop_at_eos: false },
        schedule,
        verification,
    };
    for seed in 0..draws {
        let mut proposer = proposer();
        let out = generate_speculative(target, proposer.as_mut(), prompt, &[], &cfg(seed), |_| {}).unwrap();
        let cell = out.generation.tokens[len - window..].iter().rev().fold(0, |acc, &t| acc * v + t as usize);
        counts[cell] += 1;
    }
    let (stat, p) = chi_square_p_value(&counts, &expected);
    eprintln!("{schedule:?} {verification} {params:?} len={len} window={window}: χ² = {stat:.1}, p = {p:.4}");
    p
}


#[test]
fn speculative_sequences_follow_the_target_distribution() {
    let t = target();
    // A plausible draft: related but different.
    let close = Markov::from_probs(&[
        &[0.20, 0.30, 0.20, 0.20, 0.10],
        &[0.20, 0.20, 0.20, 0.20, 0.20],
        &[0.40, 0.10, 0.30, 0.10, 0.10],
        &[0.10, 0.10, 0.10, 0.30, 0.40],
        &[0.30, 0.30, 0.10, 0.10, 0.20],
    ]);
    assert!(sequence_test(&t, &close, 2, SamplingParams::with_temperature(1.0), 3) > MIN_P);
    assert!(sequence_test(&t, &close, 4, SamplingParams { temperature: 0.7, top_k: 0, top_p: 0.9 }, 3) > MIN_P);
    // The first three tokens too: the prefill's sample and the first round's.
    assert!(general_sequence_test(&t, &[0], || Box::new(DraftModel::new(&close, 64).unwrap()), Schedule::Fixed { k: 2 }, SamplingParams::with_temperature(1.0), 3, 3) > MIN_P);
    // The broken twin through the same loop: after a rejection, a token from p, not the residual.
    assert_caught("a draft model with fixed k", Fault::ResampleFromP, || {
        twin_test(&t, &[0], || Box::new(DraftModel::new(&close, 64).unwrap()), Schedule::Fixed { k: 2 }, SamplingParams::with_temperature(1.0), 6)
    });
}

#[test]
fn adversarial_drafts_stay_lossless() {
    let t = target();
    // q ≫ p: the draft piles its mass on the target's least likely tokens.
    let skewed = skewed_draft();
    assert!(sequence_test(&t, &skewed, 3, SamplingParams::with_temperature(1.0), 3) > MIN_P);
    // Disjoint supports after top-k = 2: the draft never proposes what the target would keep.
    let disjoint = Markov::from_probs(&[
        &[0.0, 0.0, 0.0, 0.5, 0.5],
        &[0.5, 0.0, 0.0, 0.5, 0.0],
        &[0.0, 0.0, 0.2, 0.4, 0.4],
        &[0.5, 0.5, 0.0, 0.0, 0.0],
        &[0.0, 0.5, 0.5, 0.0, 0.0],
    ]);
    assert!(sequence_test(&t, &disjoint, 2, SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0 }, 2) > MIN_P);
}

/// One verification of a single drafted token, with a pluggable rule, repeated DRAWS times.
fn single_step_p_value(p: &[f64], q: &[f64], rule: impl Fn(&[Probs], &[Probs], u32, &[f64]) -> u32) -> f64 {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(42);
    let to = |v: &[f64]| Probs::from_normalized(v.iter().map(|&x| x as f32).collect());
    let (p_rows, q_rows) = ([to(p), to(p)], [to(q)]);
    let mut counts = vec![0u64; p.len()];
    for _ in 0..DRAWS {
        let d = q_rows[0].sample(rng.random());
        let u = [rng.random::<f64>(), rng.random::<f64>()];
        counts[rule(&p_rows, &q_rows, d, &u) as usize] += 1;
    }
    chi_square_p_value(&counts, p).1
}

#[test]
fn the_test_has_power_a_verifier_without_the_residual_fails_it() {
    let p = [0.6, 0.3, 0.1, 0.0];
    let q = [0.1, 0.2, 0.3, 0.4];
    let correct = |p: &[Probs], q: &[Probs], d: u32, u: &[f64]| {
        let v = verify(p, Some(q), &[d], u, VerifyMode::Sample);
        if v.accepted == 1 { d } else { v.next }
    };
    // Wrong: accept with min(1, p/q) but, on rejection, resample from p instead of the residual.
    let no_residual = |p: &[Probs], q: &[Probs], d: u32, u: &[f64]| {
        let ratio = (p[0].get(d) / q[0].get(d)) as f64;
        if u[0] < ratio.min(1.0) { d } else { p[0].sample(u[1]) }
    };
    // Wrong: always accept the draft.
    let accept_all = |_: &[Probs], _: &[Probs], d: u32, _: &[f64]| d;
    let good = single_step_p_value(&p, &q, correct);
    let bad = single_step_p_value(&p, &q, no_residual);
    let worse = single_step_p_value(&p, &q, accept_all);
    eprintln!("correct p = {good:.4}, no-residual p = {bad:.2e}, accept-all p = {worse:.2e}");
    assert!(good > MIN_P, "the correct verifier failed the test (p = {good})");
    assert!(bad < MIN_P, "a verifier without the residual passed (p = {bad}): the test has no power");
    assert!(worse < MIN_P);
}

#[test]
fn greedy_speculative_equals_greedy_target_for_every_k() {
    let t = target();
    let d = Markov::from_probs(&[
        &[0.2, 0.3, 0.2, 0.2, 0.1],
        &[0.2, 0.2, 0.2, 0.3, 0.1],
        &[0.1, 0.1, 0.3, 0.1, 0.4],
        &[0.1, 0.1, 0.1, 0.3, 0.4],
        &[0.5, 0.3, 0.1, 0.0, 0.1],
    ]);
    let gen = GenerationConfig { max_new_tokens: 40, stop_at_eos: false, ..Default::default() };
    for start in 0..5u32 {
        let want = generate(&t, &[start], &[], &gen, |_| {}).unwrap().tokens;
        for k in [1, 2, 3, 4, 8] {
            let mut proposer = DraftModel::new(&d, 64).unwrap();
            let cfg = SpecConfig::fixed(gen.clone(), k);
            let out = generate_speculative(&t, &mut proposer, &[start], &[], &cfg, |_| {}).unwrap();
            assert_eq!(out.generation.tokens, want, "start {start}, k {k}");
            let m = &out.metrics;
            assert_eq!(m.emitted as usize, want.len() - 1, "every decode-phase token is counted once");
            assert!(m.tau() >= 1.0 && m.tau() <= (k + 1) as f64);
        }
    }
}

#[test]
fn eos_and_budget_stop_exactly_like_target_only() {
    let t = target();
    let gen = GenerationConfig { max_new_tokens: 30, stop_at_eos: true, sampling: SamplingParams::with_temperature(1.0), seed: 3 };
    for seed in 0..50 {
        let gen = GenerationConfig { seed, ..gen.clone() };
        let mut proposer = DraftModel::new(&t, 64).unwrap(); // self-draft: everything accepted
        let out = generate_speculative(&t, &mut proposer, &[0], &[4], &SpecConfig::fixed(gen.clone(), 4), |_| {}).unwrap();
        let toks = &out.generation.tokens;
        assert!(toks.len() <= 30);
        assert!(!toks[..toks.len() - 1].contains(&4), "nothing after EOS");
        assert!(toks.last() == Some(&4) || toks.len() == 30);
        assert_eq!(out.metrics.alpha(), if out.metrics.drafted > 0 { 1.0 } else { 0.0 }, "a self-draft is always accepted");
    }
}

#[test]
fn acceptance_count_matches_the_expected_acceptance_probabilities() {
    // A ~ Σ Bernoulli(βᵢ) over verified positions: |A − Σβ| / sqrt(Σβ(1 − β)) stays within 4σ.
    let t = target();
    let d = Markov::from_probs(&[
        &[0.30, 0.30, 0.20, 0.10, 0.10],
        &[0.10, 0.10, 0.50, 0.10, 0.20],
        &[0.25, 0.25, 0.25, 0.15, 0.10],
        &[0.40, 0.05, 0.05, 0.10, 0.40],
        &[0.20, 0.20, 0.20, 0.20, 0.20],
    ]);
    let (mut accepted, mut tested, mut mean, mut var) = (0u64, 0u64, 0.0, 0.0);
    let (mut drafted, mut emitted, mut iterations) = (0u64, 0u64, 0u64);
    for seed in 0..3000 {
        let gen = GenerationConfig { max_new_tokens: 30, stop_at_eos: false, sampling: SamplingParams::with_temperature(1.0), seed };
        let mut proposer = DraftModel::new(&d, 64).unwrap();
        let out = generate_speculative(&t, &mut proposer, &[0], &[], &SpecConfig::fixed(gen, 4), |_| {}).unwrap();
        let m = &out.metrics;
        accepted += m.accepted;
        tested += m.tested();
        mean += m.expected_accepted;
        var += m.expected_accepted_var;
        drafted += m.drafted;
        emitted += m.emitted;
        iterations += m.iterations;
    }
    let z = (accepted as f64 - mean) / var.sqrt();
    let alpha = mean / tested as f64;
    let tau = emitted as f64 / iterations as f64;
    let tau_formula = (1.0 - alpha.powi(5)) / (1.0 - alpha);
    eprintln!(
        "A = {accepted}, expected {mean:.1} ± {:.1} (z = {z:.2}); acceptance per verified position {:.4} vs β̄ {alpha:.4}; \
         α̂ = A/D = {:.4}; τ = {tau:.3} vs (1 − β̄⁵)/(1 − β̄) = {tau_formula:.3}",
        var.sqrt(),
        accepted as f64 / tested as f64,
        accepted as f64 / drafted as f64
    );
    assert!(z.abs() < 4.0, "acceptances deviate from Σβ by {z:.2}σ");
    // The closed form assumes one acceptance rate for every position; a Markov draft varies by state
    // and the last iteration is cut by the budget, so only rough agreement is expected.
    assert!((tau - tau_formula).abs() / tau_formula < 0.15, "τ {tau} vs formula {tau_formula}");
}

/// A draft that piles its mass on the target's least likely tokens (q ≫ p).
fn skewed_draft() -> Markov {
    Markov::from_probs(&[
        &[0.90, 0.01, 0.01, 0.01, 0.07],
        &[0.01, 0.90, 0.01, 0.07, 0.01],
        &[0.01, 0.01, 0.01, 0.07, 0.90],
        &[0.90, 0.07, 0.01, 0.01, 0.01],
        &[0.01, 0.90, 0.07, 0.01, 0.01],
    ])
}

/// The auto schedule with costs of this machine's shape (c 0.2, v growing 0.1 per token).
fn auto() -> Schedule {
    Schedule::Auto { max: 6, costs: Costs::from_curve(0.2, &[(2, 1.1), (5, 1.4), (9, 1.8)]) }
}

fn close_draft() -> Markov {
    Markov::from_probs(&[
        &[0.20, 0.30, 0.20, 0.20, 0.10],
        &[0.20, 0.20, 0.20, 0.20, 0.20],
        &[0.40, 0.10, 0.30, 0.10, 0.10],
        &[0.10, 0.10, 0.10, 0.30, 0.40],
        &[0.30, 0.30, 0.10, 0.10, 0.20],
    ])
}

#[test]
fn deterministic_ngram_proposals_stay_lossless() {
    // A repetitive prompt so prompt lookup proposes (and is often wrong) at every step.
    let t = target();
    let prompt = [0, 1, 3, 4, 0, 1, 3, 4, 0, 1, 3, 4, 0];
    let p = general_sequence_test(&t, &prompt, || Box::new(NGram::new(3, 1).unwrap()), Schedule::Fixed { k: 3 },
        SamplingParams::with_temperature(1.0), 7, 3);
    assert!(p > MIN_P);
    // One-hot q: the residual of a rejected lookup is p without the proposed token, and drawing
    // from p instead re-emits that token too often.
    assert_caught("prompt lookup", Fault::ResampleFromP, || {
        twin_test(&t, &prompt, || Box::new(NGram::new(3, 1).unwrap()), Schedule::Fixed { k: 3 }, SamplingParams::with_temperature(1.0), 7)
    });
}

#[test]
fn adaptive_schedules_and_confidence_stops_stay_lossless() {
    let t = target();
    let d = close_draft();
    let params = SamplingParams::with_temperature(1.0);
    // Twelve tokens leave room for the schedules to change k between rounds.
    let heuristic = Schedule::Heuristic { initial: 1, min: 1, max: 6 };
    assert!(general_sequence_test(&t, &[0], || Box::new(DraftModel::new(&d, 64).unwrap()), heuristic, params, 12, 3) > MIN_P);
    let optimal = Schedule::Optimal { max: 6, c: 0.2 };
    assert!(general_sequence_test(&t, &[0], || Box::new(DraftModel::new(&d, 64).unwrap()), optimal, params, 12, 3) > MIN_P);
    let confident = || Box::new(DraftModel::new(&d, 64).unwrap().with_confidence_stop(0.35)) as Box<dyn Proposer>;
    assert!(general_sequence_test(&t, &[0], confident, Schedule::Fixed { k: 4 }, params, 8, 3) > MIN_P);
    assert!(general_sequence_test(&t, &[0], || Box::new(DraftModel::new(&d, 64).unwrap()), auto(), params, 12, 3) > MIN_P);
}

/// The broken twins of the schedules and of the confidence stop, through the same loop and test.
/// A schedule only picks k from rounds already verified, so no bug of its own can bias the
/// output; what a schedule changes is the mix of draft lengths, rejection positions and bonus
/// tokens the verifier sees, and the twin shows the test still notices a wrong residual under
/// that mix. The confidence stop decides what is proposed, so its twin is its own plausible
/// bug: judging the sampled token instead of the row (the proposals are then not drawn from q).
#[test]
fn schedules_and_confidence_stops_have_broken_twins_the_test_catches() {
    let t = target();
    let d = close_draft();
    let params = SamplingParams::with_temperature(1.0);
    let draft = || Box::new(DraftModel::new(&d, 64).unwrap()) as Box<dyn Proposer>;
    let schedules = [
        ("the heuristic schedule", Schedule::Heuristic { initial: 1, min: 1, max: 6 }),
        ("the optimal schedule", Schedule::Optimal { max: 6, c: 0.2 }),
        ("the auto schedule", auto()),
    ];
    for (what, schedule) in schedules {
        assert_caught(what, Fault::ResampleFromP, || twin_test(&t, &[0], draft, schedule, params, 12));
    }
    let confident = || Box::new(DraftModel::new(&d, 64).unwrap().with_confidence_stop(0.35)) as Box<dyn Proposer>;
    assert_caught("the confidence stop", Fault::ConfidenceOfSampledToken, || twin_test(&t, &[0], confident, Schedule::Fixed { k: 4 }, params, 8));
}

#[test]
fn extended_ids_drafting_is_lossless_and_its_broken_twin_is_caught() {
    // The target has one id more than the draft (4, as a target adds special tokens after the
    // draft's last id), emitted now and then: the draft's q, padded with a zero for it, must
    // leave the residual to produce it. After the target emits it the draft cannot read the
    // context and the target decodes alone.
    let t = Markov::from_probs(&[
        &[0.10, 0.40, 0.20, 0.25, 0.05],
        &[0.30, 0.05, 0.30, 0.30, 0.05],
        &[0.25, 0.25, 0.25, 0.20, 0.05],
        &[0.05, 0.10, 0.10, 0.70, 0.05],
        &[0.50, 0.10, 0.10, 0.20, 0.10],
    ]);
    let d = Markov::from_probs(&[
        &[0.25, 0.25, 0.25, 0.25],
        &[0.10, 0.30, 0.30, 0.30],
        &[0.40, 0.10, 0.40, 0.10],
        &[0.20, 0.20, 0.20, 0.40],
    ]);
    let extended = || Box::new(ExtendedIds::new(&d, 64, 5).unwrap()) as Box<dyn Proposer>;
    let params = SamplingParams::with_temperature(1.0);
    assert!(general_sequence_test(&t, &[0], extended, Schedule::Fixed { k: 3 }, params, 7, 3) > MIN_P);
    assert!(window_test(&t, &[0], extended, Schedule::Fixed { k: 3 }, Verification::Block, params, 7, 3) > MIN_P);
    assert_caught("extended ids", Fault::ResampleFromP, || twin_test(&t, &[0], extended, Schedule::Fixed { k: 3 }, params, 7));
    // It drafts, and the target does emit the id the draft lacks.
    let gen = GenerationConfig { max_new_tokens: 7, sampling: params, seed: 0, stop_at_eos: false };
    let (mut drafted, mut extra) = (0, 0);
    for seed in 0..200 {
        let out = generate_speculative(&t, extended().as_mut(), &[0], &[], &SpecConfig::fixed(GenerationConfig { seed, ..gen.clone() }, 3), |_| {}).unwrap();
        drafted += out.metrics.drafted;
        extra += out.generation.tokens.iter().filter(|&&x| x == 4).count();
    }
    assert!(drafted > 400 && extra > 10, "{drafted} drafted, id 4 emitted {extra} times");
}

#[test]
fn greedy_equality_holds_for_every_proposer_and_schedule() {
    let t = target();
    let d = close_draft();
    let gen = GenerationConfig { max_new_tokens: 40, stop_at_eos: false, ..Default::default() };
    let prompt = [2, 0, 1, 2, 0, 1, 2];
    let want = generate(&t, &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let schedules = [
        Schedule::Fixed { k: 3 },
        Schedule::Heuristic { initial: 2, min: 1, max: 8 },
        Schedule::Optimal { max: 8, c: 0.1 },
        auto(),
    ];
    for schedule in schedules {
        let proposers: Vec<Box<dyn Proposer>> = vec![
            Box::new(DraftModel::new(&d, 128).unwrap()),
            Box::new(DraftModel::new(&d, 128).unwrap().with_confidence_stop(0.3)),
            Box::new(NGram::new(2, 1).unwrap()),
        ];
        for (i, mut proposer) in proposers.into_iter().enumerate() {
            let out = generate_speculative(&t, proposer.as_mut(), &prompt, &[], &SpecConfig { generation: gen.clone(), schedule, verification: Default::default() }, |_| {}).unwrap();
            assert_eq!(out.generation.tokens, want, "{schedule:?}, proposer {i}");
        }
    }
}

#[test]
fn a_draft_with_another_vocabulary_is_a_typed_error_not_a_panic() {
    let t = target();
    // Six ids against the target's five: its q rows are one id too long, and id 5 does not exist.
    let row: &[f64] = &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let wide = Markov::from_probs(&[row; 6]);
    for sampling in [SamplingParams::greedy(), SamplingParams::with_temperature(1.0)] {
        let gen = GenerationConfig { max_new_tokens: 10, stop_at_eos: false, sampling, seed: 1 };
        let mut proposer = DraftModel::new(&wide, 64).unwrap();
        let err = generate_speculative(&t, &mut proposer, &[0], &[], &SpecConfig::fixed(gen, 3), |_| {}).unwrap_err();
        assert!(matches!(err, engine::Error::VocabMismatch { .. }), "{err}");
        assert!(err.to_string().contains("vocabulary"), "{err}");
    }
}

#[test]
fn block_verification_is_lossless_and_its_broken_twin_is_caught() {
    let t = target();
    let skewed = skewed_draft();
    // Seven tokens: after the first (sampled at prefill) the rounds draft up to k = 3; the χ²
    // cells are the last three.
    let block = |d: &Markov, k: usize, params: SamplingParams| {
        window_test(&t, &[0], || Box::new(DraftModel::new(d, 64).unwrap()), Schedule::Fixed { k }, Verification::Block, params, 7, 3)
    };
    let close = close_draft();
    assert!(block(&close, 3, SamplingParams::with_temperature(1.0)) > MIN_P);
    assert!(block(&skewed, 2, SamplingParams { temperature: 0.7, top_k: 0, top_p: 0.9 }) > MIN_P);
    // Deterministic proposals, judged as a block with one-hot rows.
    let prompt = [0, 1, 3, 4, 0, 1, 3, 4, 0, 1, 3, 4, 0];
    let ngram = window_test(&t, &prompt, || Box::new(NGram::new(3, 1).unwrap()), Schedule::Fixed { k: 3 }, Verification::Block, SamplingParams::with_temperature(1.0), 7, 3);
    assert!(ngram > MIN_P);
    // The same test rejects block verification whose correction forgets the block's weight. (A
    // draft found by searching for where that bug shows most: 5% total variation on two tokens.)
    let revealing = Markov::from_probs(&[
        &[0.05, 0.93, 0.00, 0.00, 0.02],
        &[0.12, 0.37, 0.00, 0.41, 0.10],
        &[0.03, 0.28, 0.42, 0.14, 0.13],
        &[0.26, 0.28, 0.01, 0.13, 0.32],
        &[0.26, 0.01, 0.31, 0.15, 0.27],
    ]);
    assert!(block(&revealing, 3, SamplingParams::with_temperature(1.0)) > MIN_P);
    let broken = with_fault(Fault::BlockWithoutWeight, || block(&revealing, 3, SamplingParams::with_temperature(1.0)));
    assert!(broken < MIN_P, "block verification without the weight passed (p = {broken}): the test has no power");
}

#[test]
fn block_verification_accepts_at_least_as_many_tokens() {
    // Same seeds, same drafts' distributions: τ under block verification is not below τ under
    // token verification (in expectation; 4000 generations make the comparison firm).
    let t = target();
    let d = close_draft();
    let tau = |verification| {
        let (mut emitted, mut iterations) = (0u64, 0u64);
        for seed in 0..4000 {
            let gen = GenerationConfig { max_new_tokens: 24, stop_at_eos: false, sampling: SamplingParams::with_temperature(1.0), seed };
            let cfg = SpecConfig::fixed(gen, 4).with_verification(verification);
            let mut proposer = DraftModel::new(&d, 64).unwrap();
            let m = generate_speculative(&t, &mut proposer, &[0], &[], &cfg, |_| {}).unwrap().metrics;
            emitted += m.emitted;
            iterations += m.iterations;
        }
        emitted as f64 / iterations as f64
    };
    let (token, block) = (tau(Verification::Token), tau(Verification::Block));
    eprintln!("τ token {token:.4}, block {block:.4}");
    assert!(block > token, "block verification emitted {block} tokens per round, token verification {token}");
}

#[test]
fn a_truncated_draft_vocabulary_is_lossless_and_its_broken_twin_is_caught() {
    // The draft samples among three of the five ids (renormalised); q is zero elsewhere.
    use engine::model::CausalLm;
    let t = target();
    let d = close_draft();
    let head = d.head_subset(&[3, 0, 2]).unwrap();
    let truncated = || Box::new(DraftModel::new(&d, 64).unwrap().with_head_subset(&head)) as Box<dyn Proposer>;
    let params = SamplingParams { temperature: 0.8, top_k: 0, top_p: 1.0 };
    let p = general_sequence_test(&t, &[0], truncated, Schedule::Fixed { k: 3 }, params, 7, 3);
    assert!(p > MIN_P);
    let block = window_test(&t, &[0], truncated, Schedule::Fixed { k: 3 }, Verification::Block, params, 7, 3);
    assert!(block > MIN_P);
    // Writing q at the subset's positions instead of its ids breaks it, and the test sees it.
    let broken = with_fault(Fault::SubsetIndexAsId, || general_sequence_test(&t, &[0], truncated, Schedule::Fixed { k: 3 }, params, 7, 3));
    assert!(broken < MIN_P, "q at subset positions passed (p = {broken})");
    // Greedy: the draft proposes its argmax among the subset, the output is the target's.
    let gen = GenerationConfig { max_new_tokens: 30, stop_at_eos: false, ..Default::default() };
    let want = generate(&t, &[1], &[], &gen, |_| {}).unwrap().tokens;
    let mut proposer = DraftModel::new(&d, 64).unwrap().with_head_subset(&head);
    let out = generate_speculative(&t, &mut proposer, &[1], &[], &SpecConfig::fixed(gen, 4), |_| {}).unwrap();
    assert_eq!(out.generation.tokens, want);
    assert!(out.metrics.drafted > 0);
}

/// The tiny random-weight Llama (2 layers, 260 ids), the only family fixture with early exit.
fn tiny_llama() -> Box<dyn engine::model::CausalLm> {
    let g = engine::gguf::Gguf::open(common::fixtures().join("tiny").join("llama.gguf")).unwrap();
    engine::model::load_gguf(&g, &burn::tensor::Device::flex()).unwrap()
}

/// χ² of `draws` speculative `len`-token continuations of `prompt` against the target's exact
/// distribution over them, found by walking the tree of every continuation the warping allows
/// (top-k keeps it small) with one target forward per prefix. Works for any target, not only
/// a Markov one; a continuation outside the tree counts in a cell expected to stay empty.
fn tree_test<'a>(target: &dyn engine::model::CausalLm, prompt: &[u32], proposer: impl Fn() -> Box<dyn Proposer + 'a>, k: usize, params: SamplingParams, len: usize, draws: u64) -> f64 {
    use engine::model::LogitRows;
    use std::collections::HashMap;
    let mut cells: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut expected = Vec::new();
    let mut frontier = vec![(Vec::<u32>::new(), 1.0f64)];
    while let Some((prefix, prob)) = frontier.pop() {
        if prefix.len() == len {
            cells.insert(prefix, expected.len());
            expected.push(prob);
            continue;
        }
        let context: Vec<u32> = prompt.iter().chain(&prefix).copied().collect();
        let mut cache = target.new_cache(prompt.len() + len).unwrap();
        let row = warp(target.forward(&context, &mut cache, LogitRows::Last).unwrap().last(), &params);
        for (x, &px) in row.as_slice().iter().enumerate() {
            if px > 0.0 {
                frontier.push((prefix.iter().copied().chain([x as u32]).collect(), prob * px as f64));
            }
        }
    }
    let outside = expected.len();
    expected.push(0.0);
    let mut counts = vec![0u64; expected.len()];
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..draws {
        let cfg = SpecConfig::fixed(GenerationConfig { max_new_tokens: len, sampling: params, seed, stop_at_eos: false }, k);
        let out = generate_speculative(target, proposer().as_mut(), prompt, &[], &cfg, |_| {}).unwrap();
        counts[cells.get(&out.generation.tokens).copied().unwrap_or(outside)] += 1;
        drafted += out.metrics.drafted;
        accepted += out.metrics.accepted;
    }
    let (stat, p) = chi_square_p_value(&counts, &expected);
    eprintln!("tree test, {} continuations, k={k}, {draws} draws: χ² = {stat:.1}, p = {p:.4}, α̂ = {:.3}", outside, accepted as f64 / drafted as f64);
    assert!(drafted >= draws, "the proposer must draft");
    p
}

#[test]
fn layer_skip_drafting_is_lossless_and_its_broken_twins_are_caught() {
    // The tiny Llama's first layer (its own norm and head, its own cache) drafts for both layers.
    // Top-3 sampling over four tokens: 81 continuations, each with a known probability.
    let target = tiny_llama();
    let prompt = [10, 20, 30];
    let params = SamplingParams { temperature: 1.0, top_k: 3, top_p: 1.0 };
    let first = engine::model::LayerSkip::new(target.as_ref(), 1).unwrap();
    let early = || Box::new(DraftModel::new(&first, 16).unwrap()) as Box<dyn Proposer>;
    // A real model costs about half a millisecond per generation here, so fewer draws than on
    // the toys: the twins still land far beyond the critical value (χ² ≈ 500 at 2000 draws, and
    // an impossible continuation for the self-draft's, against ≈ 120 for p = 0.001 at 80 df).
    assert!(tree_test(target.as_ref(), &prompt, early, 2, params, 4, 6_000) > MIN_P);
    assert_caught("layer skip", Fault::ResampleFromP, || tree_test(target.as_ref(), &prompt, early, 2, params, 4, 2_000));
    // All layers: the draft is the target (q = p bitwise), every draft is accepted and a wrong
    // residual never comes into play, so its twin is the bonus token drawn from the wrong row.
    let all = engine::model::LayerSkip::new(target.as_ref(), 2).unwrap();
    let whole = || Box::new(DraftModel::new(&all, 16).unwrap()) as Box<dyn Proposer>;
    assert!(tree_test(target.as_ref(), &prompt, whole, 2, params, 4, 2_000) > MIN_P);
    assert_caught("a self-draft", Fault::BonusFromWrongRow, || tree_test(target.as_ref(), &prompt, whole, 2, params, 4, 1_000));
}
