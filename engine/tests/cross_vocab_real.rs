//! Cross-tokenizer speculation on real models: SmolLM2-135M (GPT-2-style BPE,
//! 49152 tokens) drafting for Qwen2.5-Coder-0.5B and -1.5B (Qwen2 BPE, 151936 tokens). Greedy
//! speculative output must equal greedy target-only output token for token, for several k, on a
//! code and a prose prompt, each model seeing the prompt through its own chat template. The
//! Gemma-3-270m (SentencePiece, 262144 tokens) → Qwen2.5-Coder-1.5B pair runs the same check.

mod common;

use burn::tensor::Device;
use common::real_model;
use engine::generate::{generate, GenerationConfig};
use engine::source::ModelFiles;
use engine::speculative::{compare_vocabularies, generate_speculative, CrossVocab, PairMode, SpecConfig, TextBridge, Trailing, VocabRelation};
use engine::tokenizer::{ChatMessage, Tokenizer};
use engine::LoadedModel;

fn load(name: &str) -> Option<LoadedModel> {
    let path = real_model(name)?;
    Some(engine::load_files(ModelFiles::Gguf(path), &Device::flex()).unwrap())
}

/// The prompt through the model's chat template (plain text with BOS for a model without one).
fn chat(tok: &Tokenizer, text: &str) -> Vec<u32> {
    match tok.chat_template() {
        Some(_) => tok.encode(&tok.apply_chat_template(&[ChatMessage::new("user", text)], true).unwrap(), false).unwrap(),
        None => tok.encode(text, true).unwrap(),
    }
}

const PROMPTS: [&str; 2] = ["Write a Python function that checks whether a number is prime.", "Explain the theory of relativity in simple terms."];

/// Greedy cross-vocabulary speculation equals target-only greedy decoding for every k and both
/// trailing-word rules (α̂, τ and the proposer's counters are printed).
fn check_pair(target: &LoadedModel, draft: &LoadedModel, ks: &[usize], max_new_tokens: usize) {
    let c = compare_vocabularies(&draft.tokenizer, &target.tokenizer);
    assert_eq!((c.relation, c.mode), (VocabRelation::Different, PairMode::Text));
    let bridge = TextBridge::new(&draft.tokenizer, &target.tokenizer);
    let gen = GenerationConfig { max_new_tokens, stop_at_eos: true, ..Default::default() };
    for text in PROMPTS {
        let prompt = chat(&target.tokenizer, text);
        let draft_prompt = chat(&draft.tokenizer, text);
        let want = generate(target.model.as_ref(), &prompt, target.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
        for &k in ks {
            for trailing in [Trailing::Keep, Trailing::DropPartialWord] {
                let capacity = draft_prompt.len() + 2 * (prompt.len() + max_new_tokens) + 16;
                let mut p = CrossVocab::new(draft.model.as_ref(), &bridge, capacity)
                    .unwrap()
                    .with_draft_prompt(draft_prompt.clone())
                    .with_trailing(trailing);
                let cfg = SpecConfig::fixed(gen.clone(), k);
                let out = generate_speculative(target.model.as_ref(), &mut p, &prompt, target.tokenizer.eos_ids(), &cfg, |_| {}).unwrap();
                let (m, s) = (&out.metrics, p.stats());
                eprintln!(
                    "{:?} k={k} {trailing:?}: α̂ = {:.3}, τ = {:.2}, E/N = {}/{}, accepted/emitted = {:.3}; draft synced {:.2} tokens/round \
                     (reused {:.0}), boundary {}, held back {}, disagrees {}, no draft {}, trimmed {}",
                    &text[..20],
                    m.alpha(),
                    m.tau(),
                    m.emitted,
                    m.iterations,
                    m.accepted as f64 / m.emitted.max(1) as f64,
                    s.synced as f64 / s.rounds.max(1) as f64,
                    s.reused as f64 / s.rounds.max(1) as f64,
                    s.boundary,
                    s.held_back,
                    s.disagrees,
                    s.no_draft,
                    s.trimmed
                );
                assert_eq!(out.generation.tokens, want, "{text:?}, k = {k}, {trailing:?}");
                assert!(m.accepted > 0, "{text:?}, k = {k}: a related draft should be accepted sometimes");
                assert_eq!(s.overflow, 0);
            }
        }
    }
}

#[test]
fn smollm2_drafts_for_qwen_coder_0_5b_across_tokenizers() {
    let (Some(target), Some(draft)) = (load("qwen2.5-coder-0.5b"), load("smollm2-135m")) else { return };
    check_pair(&target, &draft, &[1, 2, 4, 6], 48);
}

#[test]
fn smollm2_drafts_for_qwen_coder_1_5b_across_tokenizers() {
    let (Some(target), Some(draft)) = (load("qwen2.5-coder-1.5b"), load("smollm2-135m")) else { return };
    check_pair(&target, &draft, &[1, 3, 4, 8], 48);
}

/// Gemma-3-270m's SentencePiece vocabulary (of TinyLlama's kind) against Qwen's byte-level BPE:
/// the offline stand-in for the TinyLlama → Pythia pairing.
#[test]
fn gemma3_drafts_for_qwen_coder_1_5b_across_tokenizers() {
    let (Some(gemma_path), Some(qwen_path)) = (real_model("gemma3-270m"), real_model("qwen2.5-coder-1.5b")) else { return };
    let tok = |p: &std::path::Path| Tokenizer::from_model_files(&ModelFiles::Gguf(p.to_path_buf())).unwrap();
    let (gemma_tok, qwen_tok) = (tok(&gemma_path), tok(&qwen_path));
    let c = compare_vocabularies(&gemma_tok, &qwen_tok);
    assert_eq!((c.relation, c.mode), (VocabRelation::Different, PairMode::Text));
    let draft = engine::load_files(ModelFiles::Gguf(gemma_path), &Device::flex()).unwrap();
    let Some(target) = load("qwen2.5-coder-1.5b") else { return };
    check_pair(&target, &draft, &[1, 4], 48);
}
