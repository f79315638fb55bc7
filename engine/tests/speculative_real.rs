//! Speculative decoding on real models: batch invariance of the target's logits, greedy
//! speculative output equal to greedy target-only output token for token for every k, a self-draft
//! that accepts everything, and seeded sampled runs that reproduce.

mod common;

use burn::tensor::Device;
use common::real_model;
use engine::generate::{generate, GenerationConfig};
use engine::cpu::{with_kernel_mode, KernelMode};
use engine::model::LogitRows;
use engine::sampling::SamplingParams;
use engine::source::ModelFiles;
use engine::speculative::{generate_speculative, DraftModel, SpecConfig};
use engine::LoadedModel;

fn load(name: &str) -> Option<LoadedModel> {
    let path = real_model(name)?;
    Some(engine::load_files(ModelFiles::Gguf(path), &Device::flex()).unwrap())
}

fn prompt(m: &LoadedModel, text: &str) -> Vec<u32> {
    let messages = [engine::tokenizer::ChatMessage { role: "user".into(), content: text.into() }];
    let rendered = m.tokenizer.apply_chat_template(&messages, true).unwrap();
    m.tokenizer.encode(&rendered, false).unwrap()
}

fn speculative(target: &LoadedModel, draft: &LoadedModel, ids: &[u32], gen: &GenerationConfig, k: usize) -> engine::speculative::SpecGeneration {
    let mut proposer = DraftModel::new(draft.model.as_ref(), ids.len() + gen.max_new_tokens).unwrap();
    let cfg = SpecConfig::fixed(gen.clone(), k);
    generate_speculative(target.model.as_ref(), &mut proposer, ids, target.tokenizer.eos_ids(), &cfg, |_| {}).unwrap()
}

/// Row i of an n-token forward has the bits of decoding that token alone, for n = `sizes`.
fn assert_batch_invariant(m: &LoadedModel, text: &str, sizes: impl IntoIterator<Item = usize>) {
    let ids = m.tokenizer.encode(text, false).unwrap();
    for rows in sizes {
        assert!(ids.len() > rows, "the prompt ({} tokens) must be longer than {rows}", ids.len());
        let split = ids.len() - rows;
        let mut batch_cache = m.model.new_cache(64).unwrap();
        m.model.forward(&ids[..split], &mut batch_cache, LogitRows::Last).unwrap();
        let batch = m.model.forward(&ids[split..], &mut batch_cache, LogitRows::All).unwrap();
        let mut single_cache = m.model.new_cache(64).unwrap();
        m.model.forward(&ids[..split], &mut single_cache, LogitRows::Last).unwrap();
        for i in 0..rows {
            let single = m.model.forward(&ids[split + i..split + i + 1], &mut single_cache, LogitRows::Last).unwrap();
            assert!(
                batch.row(i).iter().zip(single.row(0)).all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {i} of a {rows}-token forward differs from decoding it alone"
            );
        }
    }
}

#[test]
fn logits_are_bitwise_batch_invariant() {
    let Some(m) = load("smollm2-135m") else { return };
    assert_batch_invariant(&m, "The capital of France is Paris, and the capital of Italy is", [2, 3, 5, 9]);
}

/// The speculative target of the README's main job, at every verification size up to k = 16:
/// Q4_K and Q6_K matrices, single passes of up to 16 rows and a 17-row forward the kernels split
/// into several passes.
#[test]
fn qwen_15b_logits_are_bitwise_batch_invariant_for_2_to_17_rows() {
    let Some(m) = load("qwen2.5-coder-1.5b") else { return };
    let text = "def binary_search(items, target):\n    low, high = 0, len(items) - 1\n    while low <= high:\n        mid = (low + high) // 2";
    assert_batch_invariant(&m, text, 2..=17);
}

/// Greedy speculative output equals greedy target-only output under the exact (f32-activation)
/// kernels too, not only under the default q8 ones.
#[test]
fn qwen_pair_greedy_speculative_equals_target_only_under_exact_kernels() {
    let (Some(t), Some(d)) = (real_model("qwen2.5-coder-1.5b"), real_model("qwen2.5-coder-0.5b")) else { return };
    let load_exact = |path| with_kernel_mode(KernelMode::Exact, || engine::load_files(ModelFiles::Gguf(path), &Device::flex())).unwrap();
    let (target, draft) = (load_exact(t), load_exact(d));
    let ids = prompt(&target, "Write a Python function that checks whether a number is prime.");
    let gen = GenerationConfig { max_new_tokens: 24, stop_at_eos: true, ..Default::default() };
    let want = generate(target.model.as_ref(), &ids, target.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
    for k in [2, 4] {
        let out = speculative(&target, &draft, &ids, &gen, k);
        eprintln!("exact kernels, k = {k}: α̂ = {:.3}, τ = {:.2}", out.metrics.alpha(), out.metrics.tau());
        assert_eq!(out.generation.tokens, want, "k = {k}");
        assert!(out.metrics.accepted > 0, "the pair agrees on code: some drafts must be accepted");
    }
}

#[test]
fn smollm2_self_draft_accepts_everything_and_matches_greedy() {
    let Some(m) = load("smollm2-135m") else { return };
    let ids = prompt(&m, "What is the capital of France? Answer in one long sentence.");
    let gen = GenerationConfig { max_new_tokens: 40, stop_at_eos: false, ..Default::default() };
    let want = generate(m.model.as_ref(), &ids, m.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
    for k in [1, 4] {
        let out = speculative(&m, &m, &ids, &gen, k);
        assert_eq!(out.generation.tokens, want, "k = {k}");
        assert_eq!(out.metrics.alpha(), 1.0, "a model drafting for itself must always be accepted");
    }
}

#[test]
fn qwen_pair_greedy_speculative_equals_target_only_for_every_k() {
    let (Some(target), Some(draft)) = (load("qwen2.5-coder-1.5b"), load("qwen2.5-coder-0.5b")) else { return };
    assert_eq!(target.tokenizer.vocab_fingerprint(), draft.tokenizer.vocab_fingerprint());
    let gen = GenerationConfig { max_new_tokens: 32, stop_at_eos: true, ..Default::default() };
    for text in ["Write a Python function that reverses a linked list.", "Explain what a hash map is in two sentences."] {
        let ids = prompt(&target, text);
        let want = generate(target.model.as_ref(), &ids, target.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
        for k in [1, 2, 4, 8] {
            let out = speculative(&target, &draft, &ids, &gen, k);
            let m = &out.metrics;
            eprintln!("{text:?} k={k}: α̂ = {:.3}, τ = {:.2}, per position {:?}", m.alpha(), m.tau(), m.per_position());
            assert_eq!(out.generation.tokens, want, "{text:?}, k = {k}");
        }
    }
}

#[test]
fn sampled_speculative_runs_reproduce_with_a_seed() {
    let (Some(target), Some(draft)) = (load("smollm2-135m"), load("smollm2-135m")) else { return };
    let ids = prompt(&target, "Tell me a short story about a robot.");
    let gen = |seed| GenerationConfig {
        max_new_tokens: 24,
        stop_at_eos: false,
        sampling: SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95 },
        seed,
    };
    let a = speculative(&target, &draft, &ids, &gen(11), 3).generation.tokens;
    let b = speculative(&target, &draft, &ids, &gen(11), 3).generation.tokens;
    let c = speculative(&target, &draft, &ids, &gen(12), 3).generation.tokens;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn qwen_pair_acceptances_match_the_expected_acceptance_probabilities() {
    // Sampled at T = 0.7: the number of accepted drafts is a sum of Bernoulli(βᵢ) with
    // βᵢ = Σₓ min(pᵢ, qᵢ) computed from the same logits; it must sit within 4σ of Σβ.
    let (Some(target), Some(draft)) = (load("qwen2.5-coder-1.5b"), load("qwen2.5-coder-0.5b")) else { return };
    let ids = prompt(&target, "Explain what a hash map is in two sentences.");
    let (mut accepted, mut mean, mut var) = (0u64, 0.0, 0.0);
    for seed in 0..2 {
        let gen = GenerationConfig { max_new_tokens: 40, stop_at_eos: false, sampling: SamplingParams::with_temperature(0.7), seed };
        let m = speculative(&target, &draft, &ids, &gen, 4).metrics;
        accepted += m.accepted;
        mean += m.expected_accepted;
        var += m.expected_accepted_var;
    }
    let z = (accepted as f64 - mean) / var.sqrt().max(1e-9);
    eprintln!("accepted {accepted}, expected {mean:.1} ± {:.1}, z = {z:.2}", var.sqrt());
    assert!(z.abs() < 4.0, "acceptances deviate from Σβ by {z:.2}σ");
}

#[test]
fn layer_skip_self_draft_matches_greedy_and_full_depth_accepts_everything() {
    let Some(m) = load("smollm2-135m") else { return };
    let ids = prompt(&m, "Name three colours of the rainbow and explain why the sky is blue.");
    let gen = GenerationConfig { max_new_tokens: 32, stop_at_eos: false, ..Default::default() };
    let want = generate(m.model.as_ref(), &ids, m.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
    for layers in [10, 20, 30] {
        let early = engine::model::LayerSkip::new(m.model.as_ref(), layers).unwrap();
        let mut proposer = DraftModel::new(&early, ids.len() + 32).unwrap();
        let out = generate_speculative(m.model.as_ref(), &mut proposer, &ids, &[], &SpecConfig::fixed(gen.clone(), 4), |_| {}).unwrap();
        eprintln!("first {layers}/30 layers: α̂ = {:.3}, τ = {:.2}", out.metrics.alpha(), out.metrics.tau());
        assert_eq!(out.generation.tokens, want, "{layers} layers");
        if layers == 30 {
            assert_eq!(out.metrics.alpha(), 1.0, "all layers = the target itself");
        }
    }
    assert!(engine::model::LayerSkip::new(m.model.as_ref(), 31).is_err());
}

#[test]
fn a_truncated_head_computes_exactly_the_full_heads_rows() {
    // SmolLM2's head is tied to its Q8_0 embedding table; the subset is every 7th id.
    let Some(m) = load("smollm2-135m") else { return };
    let ids: Vec<u32> = (0..m.model.config().vocab_size as u32).step_by(7).collect();
    let head = m.model.head_subset(&ids).unwrap();
    let tokens = m.tokenizer.encode("A truncated head keeps some rows of the output layer.", false).unwrap();
    for rows in [LogitRows::Last, LogitRows::All] {
        let mut full_cache = m.model.new_cache(64).unwrap();
        let full = m.model.forward(&tokens, &mut full_cache, rows).unwrap();
        let mut cache = m.model.new_cache(64).unwrap();
        let part = m.model.forward_subset(&tokens, &mut cache, rows, &head).unwrap();
        assert_eq!((part.rows(), part.vocab()), (full.rows(), ids.len()));
        for r in 0..full.rows() {
            for (j, &id) in ids.iter().enumerate() {
                assert_eq!(part.row(r)[j].to_bits(), full.row(r)[id as usize].to_bits(), "row {r}, id {id}");
            }
        }
    }
}

#[test]
fn qwen_pair_with_a_truncated_draft_vocabulary_stays_exact() {
    let (Some(target), Some(draft)) = (load("qwen2.5-coder-1.5b"), load("qwen2.5-coder-0.5b")) else { return };
    // The 16384 lowest ids (byte-level BPE's most common merges) and the special tokens.
    let tok = &draft.tokenizer;
    let ids: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&i| i < 16384 || tok.is_special(i)).collect();
    let head = draft.model.head_subset(&ids).unwrap();
    let gen = GenerationConfig { max_new_tokens: 32, stop_at_eos: true, ..Default::default() };
    let text = "Write a Python function that checks whether a string is a palindrome.";
    let prompt_ids = prompt(&target, text);
    let want = generate(target.model.as_ref(), &prompt_ids, target.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
    let mut proposer = DraftModel::new(draft.model.as_ref(), prompt_ids.len() + 40).unwrap().with_head_subset(&head);
    let out = generate_speculative(target.model.as_ref(), &mut proposer, &prompt_ids, target.tokenizer.eos_ids(), &SpecConfig::fixed(gen, 4), |_| {}).unwrap();
    eprintln!("truncated draft (16384 ids): α̂ = {:.3}, τ = {:.2}", out.metrics.alpha(), out.metrics.tau());
    assert_eq!(out.generation.tokens, want);
    assert!(out.metrics.alpha() > 0.5, "a 16k-id draft still agrees on code (α̂ {})", out.metrics.alpha());
}
