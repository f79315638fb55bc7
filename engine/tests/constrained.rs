//! Constrained decoding, target-only and speculative: on a toy Markov pair with a stateful toy
//! constraint, the speculative sequence distribution passes a χ² goodness-of-fit test against the
//! exact constrained target distribution (10⁵ draws, fixed seeds) and a draft that misreports its
//! q fails the same test; greedy constrained speculative output equals greedy constrained
//! target-only output (toy pair, tiny GGUF fixtures with a JSON schema, the real Qwen2.5-Coder
//! pair); every JSON output parses and validates against its schema.

mod common;

use common::{toy_target as target, Markov};

use burn::tensor::Device;
use engine::constraint::{Constrained, TokenConstraint, TokenMask};
use engine::generate::{generate_constrained, GenerationConfig, StopReason};
use engine::grammar::GrammarCompiler;
use engine::sampling::{warp, Probs, Sampler, SamplingParams};
use engine::source::ModelFiles;
use engine::speculative::{generate_speculative, generate_speculative_constrained, DraftModel, NGram, Proposal, Proposer, SpecConfig};
use engine::{LoadedModel, Result};

// ---------------------------------------------------------------------------------------------
// Toy models and a toy constraint
// ---------------------------------------------------------------------------------------------


/// A draft that likes exactly what the constraint often forbids (repeats and token 0).
fn draft() -> Markov {
    Markov::from_probs(&[
        &[0.40, 0.20, 0.20, 0.10, 0.10],
        &[0.30, 0.40, 0.10, 0.10, 0.10],
        &[0.30, 0.10, 0.40, 0.10, 0.10],
        &[0.30, 0.10, 0.10, 0.40, 0.10],
        &[0.30, 0.10, 0.10, 0.10, 0.40],
    ])
}

/// A stateful rule over the generated tokens: never repeat the previous token, and token 0 only
/// at even positions. The mask depends on both the last token and the position, so a wrong
/// rollback or a mask applied at the wrong position changes the distribution.
#[derive(Default)]
struct NoRepeatEvenZero {
    history: Vec<u32>,
}

impl NoRepeatEvenZero {
    fn allows(history: &[u32], t: u32) -> bool {
        history.last() != Some(&t) && (t != 0 || history.len() % 2 == 0)
    }
}

impl TokenConstraint for NoRepeatEvenZero {
    fn allowed(&mut self, mask: &mut TokenMask) -> Result<()> {
        for t in 0..mask.vocab() as u32 {
            if Self::allows(&self.history, t) {
                mask.allow(t);
            }
        }
        Ok(())
    }
    fn advance(&mut self, token: u32) -> Result<()> {
        assert!(Self::allows(&self.history, token), "advanced over a forbidden token");
        self.history.push(token);
        Ok(())
    }
    fn rollback(&mut self, n: usize) -> Result<()> {
        assert!(n <= self.history.len());
        self.history.truncate(self.history.len() - n);
        Ok(())
    }
}

fn toy_constraint(vocab: usize) -> Constrained {
    Constrained::new(Box::new(NoRepeatEvenZero::default()), vocab)
}

/// Exact probability of every sequence of `len` tokens after `start` under the constrained
/// target: at each step, warp of the logits with forbidden tokens at −∞. Cell c ↦ tokens in base v.
fn constrained_expected(t: &Markov, start: u32, params: &SamplingParams, len: usize) -> Vec<f64> {
    let v = t.table.len();
    (0..v.pow(len as u32))
        .map(|c| {
            let (mut prev, mut prob, mut rest, mut history) = (start as usize, 1.0, c, Vec::new());
            for _ in 0..len {
                let tok = (rest % v) as u32;
                rest /= v;
                let mut row = t.table[prev].clone();
                for (x, l) in row.iter_mut().enumerate() {
                    if !NoRepeatEvenZero::allows(&history, x as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                prob *= warp(&row, params).get(tok) as f64;
                history.push(tok);
                prev = tok as usize;
            }
            prob
        })
        .collect()
}

/// χ² goodness of fit (`engine::stats`): the p-value.
fn chi_square_p_value(counts: &[u64], expected_probs: &[f64]) -> f64 {
    engine::stats::chi_square_goodness_of_fit(counts, expected_probs).p_value
}

const DRAWS: u64 = 100_000;
const MIN_P: f64 = 0.001;
const LEN: usize = 4;

/// Draws DRAWS constrained sequences of LEN tokens after [start] and tests them against the exact
/// constrained target distribution. `proposer` None = target-only.
fn constrained_sequence_test<'a>(proposer: Option<&dyn Fn() -> Box<dyn Proposer + 'a>>, k: usize, params: SamplingParams) -> (f64, f64) {
    let t = target();
    let start = 2;
    let expected = constrained_expected(&t, start, &params, LEN);
    let v = t.table.len();
    let mut counts = vec![0u64; expected.len()];
    let (mut accepted, mut drafted) = (0u64, 0u64);
    for seed in 0..DRAWS {
        let gen = GenerationConfig { max_new_tokens: LEN, sampling: params, seed, stop_at_eos: false };
        let mut c = toy_constraint(v);
        let tokens = match proposer {
            Some(make) => {
                let mut p = make();
                let out = generate_speculative_constrained(&t, p.as_mut(), &[start], &[], &SpecConfig::fixed(gen, k), Some(&mut c), |_| {}).unwrap();
                accepted += out.metrics.accepted;
                drafted += out.metrics.drafted;
                out.generation.tokens
            }
            None => generate_constrained(&t, &[start], &[], &gen, Some(&mut c), |_| {}).unwrap().tokens,
        };
        assert_eq!(c.tokens(), &tokens[..], "the constraint advanced over exactly the emitted tokens");
        counts[tokens.iter().rev().fold(0, |acc, &t| acc * v + t as usize)] += 1;
    }
    let p = chi_square_p_value(&counts, &expected);
    let alpha = if drafted > 0 { accepted as f64 / drafted as f64 } else { 0.0 };
    (p, alpha)
}

/// Samples from the *masked* q (so its drafts are allowed) but hands the verifier the *unmasked*
/// q: the invariant "a draft samples from exactly the q it reports" broken the way a forgotten
/// mask would break it.
struct MisreportingDraft<'m> {
    inner: DraftModel<'m>,
    model: &'m Markov,
}

impl Proposer for MisreportingDraft<'_> {
    fn prefill(&mut self, context: &[u32]) -> Result<()> {
        self.inner.prefill(context)
    }
    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        self.inner.propose(context, k, sampler)
    }
    fn propose_constrained(&mut self, context: &[u32], k: usize, sampler: &mut Sampler, c: &mut Constrained) -> Result<Proposal> {
        let mut proposal = self.inner.propose_constrained(context, k, sampler, c)?;
        let mut prev = *context.last().unwrap();
        let params = *sampler.params();
        proposal.probs = Some(
            proposal
                .tokens
                .iter()
                .map(|&d| {
                    let q = warp(&self.model.table[prev as usize], &params);
                    prev = d;
                    q
                })
                .collect::<Vec<Probs>>(),
        );
        Ok(proposal)
    }
    fn rollback(&mut self, len: usize) {
        self.inner.rollback(len)
    }
}

#[test]
fn constrained_speculative_sequences_follow_the_constrained_target_distribution() {
    let d = draft();
    let params = SamplingParams::with_temperature(1.0);
    let (reference, _) = constrained_sequence_test(None, 0, params);
    eprintln!("target-only constrained: p = {reference:.4}");
    assert!(reference > MIN_P, "target-only constrained generation does not follow its own definition (p = {reference})");
    for k in [1, 3] {
        let make = || Box::new(DraftModel::new(&d, 64).unwrap()) as Box<dyn Proposer>;
        let (p, alpha) = constrained_sequence_test(Some(&make), k, params);
        eprintln!("speculative constrained k = {k}: p = {p:.4}, α̂ = {alpha:.3}");
        assert!(p > MIN_P, "k = {k}: constrained speculative output is not the constrained target distribution (p = {p})");
    }
    // Warped sampling (temperature and top-k after the mask) and a deterministic proposer.
    let warped = SamplingParams { temperature: 0.8, top_k: 3, top_p: 1.0 };
    let make = || Box::new(DraftModel::new(&d, 64).unwrap()) as Box<dyn Proposer>;
    let (p, _) = constrained_sequence_test(Some(&make), 2, warped);
    assert!(p > MIN_P, "temperature 0.8, top-k 3: p = {p}");
    let ngram = || Box::new(NGram::new(1, 1).unwrap()) as Box<dyn Proposer>;
    let (p, _) = constrained_sequence_test(Some(&ngram), 3, params);
    assert!(p > MIN_P, "n-gram proposer: p = {p}");
}

#[test]
fn the_test_rejects_a_draft_that_misreports_its_masked_q() {
    let d = draft();
    let make = || Box::new(MisreportingDraft { inner: DraftModel::new(&d, 64).unwrap(), model: &d }) as Box<dyn Proposer>;
    let (p, alpha) = constrained_sequence_test(Some(&make), 3, SamplingParams::with_temperature(1.0));
    eprintln!("misreported q: p = {p:.2e}, α̂ = {alpha:.3}");
    assert!(p < MIN_P, "a draft reporting its unmasked q passed (p = {p}): the test has no power");
}

#[test]
fn constrained_greedy_speculative_equals_constrained_greedy_target_only_on_the_toy_pair() {
    let (t, d) = (target(), draft());
    let gen = GenerationConfig { max_new_tokens: 40, stop_at_eos: false, ..Default::default() };
    for start in 0..5u32 {
        let want = generate_constrained(&t, &[start], &[], &gen, Some(&mut toy_constraint(5)), |_| {}).unwrap().tokens;
        for (i, w) in want.iter().enumerate() {
            assert!(NoRepeatEvenZero::allows(&want[..i], *w));
        }
        for k in [1, 2, 4, 8] {
            let mut proposer = DraftModel::new(&d, 64).unwrap();
            let out = generate_speculative_constrained(&t, &mut proposer, &[start], &[], &SpecConfig::fixed(gen.clone(), k), Some(&mut toy_constraint(5)), |_| {}).unwrap();
            assert_eq!(out.generation.tokens, want, "start {start}, k {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON schema through llguidance
// ---------------------------------------------------------------------------------------------

fn person_schema(compact: bool) -> serde_json::Value {
    let mut s = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "languages": {"type": "array", "items": {"enum": ["python", "rust", "sql"]}, "maxItems": 3},
            "admin": {"type": "boolean"}
        },
        "required": ["name", "age", "admin"],
        "additionalProperties": false
    });
    if compact {
        // Random-weight models would otherwise wander in optional whitespace forever.
        s["x-guidance"] = serde_json::json!({"whitespace_flexible": false});
    }
    s
}

fn validate(schema: &serde_json::Value, text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("output is not JSON ({e}): {text:?}"));
    let mut schema = schema.clone();
    schema.as_object_mut().unwrap().remove("x-guidance");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text}: {errors:?}");
}

fn tiny(name: &str) -> LoadedModel {
    engine::load_files(ModelFiles::Gguf(common::fixtures().join("tiny").join(name)), &Device::flex()).unwrap()
}

#[test]
fn tiny_models_emit_only_schema_valid_json_and_speculation_keeps_greedy_output() {
    let (t, d) = (tiny("llama.gguf"), tiny("llama-draft.gguf"));
    let schema = person_schema(true);
    let eos = t.tokenizer.eos_ids().to_vec();
    let compiler = GrammarCompiler::new(&t.tokenizer, t.model.config().vocab_size, &eos).unwrap();
    let constraint = || Constrained::new(Box::new(compiler.json_schema(&schema).unwrap()), t.model.config().vocab_size);
    let prompt = t.tokenizer.encode("person: ", false).unwrap();
    let budget = 120;
    for (i, sampling) in [SamplingParams::greedy(), SamplingParams::with_temperature(1.0)].into_iter().enumerate() {
        for seed in 0..if i == 0 { 1 } else { 8 } {
            let gen = GenerationConfig { max_new_tokens: budget, sampling, seed, stop_at_eos: true };
            let mut c = constraint();
            let plain = generate_constrained(t.model.as_ref(), &prompt, &eos, &gen, Some(&mut c), |_| {}).unwrap();
            assert_ne!(plain.stop, StopReason::MaxTokens, "the JSON was not finished within {budget} tokens");
            let text = t.tokenizer.decode(&plain.tokens).unwrap();
            validate(&schema, &text);
            for k in [1, 3, 5] {
                let mut proposer = DraftModel::new(d.model.as_ref(), prompt.len() + budget).unwrap();
                let mut c = constraint();
                let out = generate_speculative_constrained(t.model.as_ref(), &mut proposer, &prompt, &eos, &SpecConfig::fixed(gen.clone(), k), Some(&mut c), |_| {}).unwrap();
                let spec_text = t.tokenizer.decode(&out.generation.tokens).unwrap();
                validate(&schema, &spec_text);
                if sampling.is_greedy() {
                    assert_eq!(out.generation.tokens, plain.tokens, "k = {k}: {spec_text} vs {text}");
                    eprintln!("greedy k = {k}: α̂ = {:.3} on {text}", out.metrics.alpha());
                }
            }
        }
    }
}

#[test]
fn lark_grammars_constrain_too() {
    let t = tiny("qwen2.gguf");
    let eos = t.tokenizer.eos_ids().to_vec();
    let compiler = GrammarCompiler::new(&t.tokenizer, t.model.config().vocab_size, &eos).unwrap();
    let grammar = compiler.lark(r#"start: "answer: " ("yes" | "no") "." "#).unwrap();
    let mut c = Constrained::new(Box::new(grammar), t.model.config().vocab_size);
    let prompt = t.tokenizer.encode("question? ", false).unwrap();
    let gen = GenerationConfig { max_new_tokens: 40, sampling: SamplingParams::with_temperature(1.0), seed: 3, stop_at_eos: true };
    let out = generate_constrained(t.model.as_ref(), &prompt, &eos, &gen, Some(&mut c), |_| {}).unwrap();
    let text = t.tokenizer.decode(&out.tokens).unwrap();
    assert!(text == "answer: yes." || text == "answer: no.", "{text:?}");
    assert!(compiler.lark("start: (").is_err(), "a malformed grammar is a typed error");
}

// ---------------------------------------------------------------------------------------------
// Real models
// ---------------------------------------------------------------------------------------------

fn real(name: &str) -> Option<LoadedModel> {
    let path = common::real_model(name)?;
    Some(engine::load_files(ModelFiles::Gguf(path), &Device::flex()).unwrap())
}

#[test]
fn qwen_pair_constrained_greedy_speculative_equals_constrained_target_only() {
    let (Some(target), Some(draft)) = (real("qwen2.5-coder-1.5b"), real("qwen2.5-coder-0.5b")) else { return };
    let tok = &target.tokenizer;
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "function_name": {"type": "string"},
            "arguments": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"enum": ["int", "str", "list", "bool"]}}, "required": ["name", "type"], "additionalProperties": false}, "maxItems": 4},
            "returns": {"enum": ["int", "str", "list", "bool", "None"]},
            "pure": {"type": "boolean"}
        },
        "required": ["function_name", "arguments", "returns", "pure"],
        "additionalProperties": false
    });
    let vocab = target.model.config().vocab_size;
    let eos = tok.eos_ids().to_vec();
    let compiler = GrammarCompiler::new(tok, vocab, &eos).unwrap();
    let text = "Describe the Python function `def is_prime(n: int) -> bool` as a JSON object with its name, arguments, return type and whether it is pure.";
    let messages = [engine::tokenizer::ChatMessage::new("user", text)];
    let prompt = tok.encode(&tok.apply_chat_template(&messages, true).unwrap(), false).unwrap();
    let gen = GenerationConfig { max_new_tokens: 80, stop_at_eos: true, ..Default::default() };
    let mut c = Constrained::new(Box::new(compiler.json_schema(&schema).unwrap()), vocab);
    let want = generate_constrained(target.model.as_ref(), &prompt, &eos, &gen, Some(&mut c), |_| {}).unwrap();
    let want_text = tok.decode(&want.tokens).unwrap();
    eprintln!("constrained target-only ({:?}): {want_text}", want.stop);
    validate(&schema, &want_text);
    for k in [2, 4] {
        let mut proposer = DraftModel::new(draft.model.as_ref(), prompt.len() + 80).unwrap();
        let mut c = Constrained::new(Box::new(compiler.json_schema(&schema).unwrap()), vocab);
        let out = generate_speculative_constrained(target.model.as_ref(), &mut proposer, &prompt, &eos, &SpecConfig::fixed(gen.clone(), k), Some(&mut c), |_| {}).unwrap();
        let mut free = DraftModel::new(draft.model.as_ref(), prompt.len() + 80).unwrap();
        let unconstrained = generate_speculative(target.model.as_ref(), &mut free, &prompt, &eos, &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
        eprintln!(
            "k = {k}: α̂ constrained {:.3} (τ {:.2}), unconstrained {:.3} (τ {:.2}); {} masks computed for {} tokens",
            out.metrics.alpha(),
            out.metrics.tau(),
            unconstrained.metrics.alpha(),
            unconstrained.metrics.tau(),
            c.masks_computed(),
            out.generation.tokens.len()
        );
        assert_eq!(out.generation.tokens, want.tokens, "k = {k}");
    }
}
