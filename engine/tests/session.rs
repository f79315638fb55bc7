//! Chat sessions: the caches persist across calls and only the context beyond their longest
//! common prefix is fed — for the target and for the draft — while every turn's output equals a
//! fresh generation on the whole context (greedy, bitwise on CPU thanks to batch-invariant
//! kernels), including after a template that rewrites earlier turns (not prefix-stable).

mod common;

use burn::tensor::Device;
use engine::generate::{generate, GenerationConfig};
use engine::model::{CausalLm, KvCache, LogitRows, ModelConfig};
use engine::sampling::{Logits, SamplingParams};
use engine::session::Session;
use engine::source::ModelFiles;
use engine::speculative::{DraftModel, SpecConfig};
use engine::tokenizer::{ChatMessage, Tokenizer};
use engine::{LoadedModel, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wraps a model and counts the tokens it is fed.
struct Counting<'m> {
    inner: &'m dyn CausalLm,
    fed: AtomicUsize,
}

impl<'m> Counting<'m> {
    fn new(inner: &'m dyn CausalLm) -> Self {
        Counting { inner, fed: AtomicUsize::new(0) }
    }
    fn take(&self) -> usize {
        self.fed.swap(0, Ordering::SeqCst)
    }
}

impl CausalLm for Counting<'_> {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        self.fed.fetch_add(tokens.len(), Ordering::SeqCst);
        self.inner.forward(tokens, cache, rows)
    }
    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.inner.new_cache(capacity)
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
}

fn tiny(name: &str) -> LoadedModel {
    engine::load_files(ModelFiles::Gguf(common::fixtures().join("tiny").join(name)), &Device::flex()).unwrap()
}

/// A template that restates the number of messages first: every turn changes the rendered
/// prefix, so the cache must be cut back to the first differing token.
const UNSTABLE_TEMPLATE: &str = "{{ messages|length }}|{% for m in messages %}{{ m.role[0] }}:{{ m.content }};{% endfor %}{% if add_generation_prompt %}a:{% endif %}";
/// A prefix-stable template.
const STABLE_TEMPLATE: &str = "{% for m in messages %}{{ m.role[0] }}:{{ m.content }};{% endfor %}{% if add_generation_prompt %}a:{% endif %}";

fn templated(name: &str, template: &str) -> Tokenizer {
    let g = engine::gguf::Gguf::open(common::fixtures().join("tiny").join(name)).unwrap();
    Tokenizer::from_gguf(&g).unwrap().with_chat_template(Some(template.to_string()))
}

fn render(tok: &Tokenizer, messages: &[ChatMessage]) -> Vec<u32> {
    tok.encode(&tok.apply_chat_template(messages, true).unwrap(), false).unwrap()
}

fn run_conversation(template: &str, speculative: bool) {
    let (t, d) = (tiny("llama.gguf"), tiny("llama-draft.gguf"));
    let tok = templated("llama.gguf", template);
    let target = Counting::new(t.model.as_ref());
    let draft = Counting::new(d.model.as_ref());
    let capacity = 128;
    let proposer = speculative.then(|| Box::new(DraftModel::new(&draft, capacity).unwrap()) as Box<dyn engine::speculative::Proposer>);
    let mut session = Session::new(&target, proposer, capacity).unwrap();
    let gen = GenerationConfig { max_new_tokens: 6, stop_at_eos: false, sampling: SamplingParams::greedy(), seed: 0 };
    let spec = SpecConfig::fixed(gen.clone(), 3);
    let mut messages = Vec::new();
    let mut previous: Vec<u32> = Vec::new();
    let mut previous_context: Vec<u32> = Vec::new();
    for (i, user) in ["hello", "more", "why?", "ok"].into_iter().enumerate() {
        messages.push(ChatMessage::new("user", user));
        let context = render(&tok, &messages);
        let common = previous.iter().zip(&context).take_while(|(a, b)| a == b).count();
        target.take();
        draft.take();
        let turn = session.generate(&context, &[], &spec, None, |_| {}).unwrap();
        let fed = target.take();
        // Fresh reference: the same context from an empty cache.
        let want = generate(t.model.as_ref(), &context, &[], &gen, |_| {}).unwrap().tokens;
        assert_eq!(turn.generation.tokens, want, "turn {i} ({template}): session output differs from a fresh generation");
        // The cache held all of the previous history but its last token.
        let reused = common.min(previous.len().saturating_sub(1)).min(context.len() - 1);
        assert_eq!(turn.reused_tokens, reused, "turn {i}");
        assert_eq!(turn.generation.prompt_tokens, context.len() - reused, "turn {i}");
        if speculative {
            assert!(turn.metrics.is_some());
            assert!(turn.draft_reused_tokens <= reused, "turn {i}: the draft reused {} > {reused}", turn.draft_reused_tokens);
            if reused > 0 {
                assert!(turn.draft_reused_tokens > 0, "turn {i}: the draft reused nothing of {reused}");
            }
            // The target is fed the new context once, then one token per verification plus drafts.
            let m = turn.metrics.as_ref().unwrap();
            assert_eq!(fed, (context.len() - reused) + (m.iterations + m.drafted) as usize, "turn {i}: target fed {fed}");
            // The draft is fed only what it had not seen: never the reused prefix again.
            let draft_fed = draft.take();
            assert!(draft_fed < context.len() - turn.draft_reused_tokens + 2 * gen.max_new_tokens, "turn {i}: draft fed {draft_fed}");
        } else {
            // Prefill of the new part, then one token per generated token but the last.
            assert_eq!(fed, context.len() - reused + want.len() - 1, "turn {i}: target fed {fed}");
        }
        if template == STABLE_TEMPLATE {
            // At least the whole previous context is reused (the reply itself may re-tokenize
            // differently: random bytes decode lossily).
            assert!(reused >= previous_context.len(), "turn {i}: reused {reused} of {}", previous_context.len());
        }
        previous_context = context.clone();
        previous = context.iter().chain(&turn.generation.tokens).copied().collect();
        assert_eq!(session.cached(), &previous[..previous.len() - 1]);
        let reply = tok.decode(&turn.generation.tokens).unwrap();
        messages.push(ChatMessage::new("assistant", reply));
    }
    if template == UNSTABLE_TEMPLATE {
        // The message count at the front changed every turn: little could be reused.
        let context = render(&tok, &messages);
        assert!(previous.iter().zip(&context).take_while(|(a, b)| a == b).count() < 3);
    }
    session.reset();
    assert!(session.cached().is_empty());
}

#[test]
fn target_only_session_reuses_the_cache_and_matches_fresh_generation() {
    run_conversation(STABLE_TEMPLATE, false);
    run_conversation(UNSTABLE_TEMPLATE, false);
}

#[test]
fn speculative_session_reuses_both_caches_and_matches_fresh_generation() {
    run_conversation(STABLE_TEMPLATE, true);
    run_conversation(UNSTABLE_TEMPLATE, true);
}

#[test]
fn a_turn_that_does_not_fit_is_a_context_overflow_and_the_session_recovers() {
    let t = tiny("qwen2.gguf");
    let mut session = Session::new(t.model.as_ref(), None, 40).unwrap();
    let gen = SpecConfig::fixed(GenerationConfig { max_new_tokens: 8, stop_at_eos: false, ..Default::default() }, 2);
    let short: Vec<u32> = (0..20).collect();
    session.generate(&short, &[], &gen, None, |_| {}).unwrap();
    let long: Vec<u32> = (0..40).collect();
    let err = session.generate(&long, &[], &gen, None, |_| {}).unwrap_err();
    assert!(matches!(err, engine::Error::ContextOverflow { .. }), "{err}");
    session.reset();
    let out = session.generate(&short, &[], &gen, None, |_| {}).unwrap();
    assert_eq!(out.reused_tokens, 0);
    assert_eq!(out.generation.tokens, generate(t.model.as_ref(), &short, &[], &gen.generation, |_| {}).unwrap().tokens);
}
