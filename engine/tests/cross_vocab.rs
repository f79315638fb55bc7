//! Speculative decoding across tokenizers on tiny fixtures (engine/tests/fixtures/cross/, made by
//! scripts/make_cross_vocab_fixtures.py: a SentencePiece draft and a byte-level BPE target, plus
//! a target whose vocabulary extends the BPE one).
//!
//! - the vocabulary relation and mode of each pairing;
//! - translation of target ids into the draft's (text re-encoded, special tokens by text or role);
//! - greedy speculative output == greedy target-only output, token for token, for several k: with
//!   the random-weight models, and with scripted models that follow one text (so most drafts are
//!   accepted, the target splits words and multi-byte characters unusually, and the draft makes
//!   mistakes);
//! - a χ² goodness-of-fit test under sampling on Markov models over the two real fixture
//!   vocabularies (exact sequence probabilities known), which a deliberately wrong variant (the
//!   proposal verified with a q it was not drawn from) fails.

mod common;

use burn::tensor::Device;
use common::{fixtures, toy_config};
use engine::generate::{generate, GenerationConfig};
use engine::model::{CausalLm, KvCache, LogitRows, ModelConfig};
use engine::sampling::{warp, Logits, Probs, Sampler, SamplingParams};
use engine::speculative::{
    compare_vocabularies, generate_speculative, CrossVocab, ExtendedIds, PairMode, Proposal, Proposer, SpecConfig, TextBridge,
    TextCodec, Trailing, VocabRelation,
};
use engine::tokenizer::Tokenizer;
use engine::LoadedModel;
use std::sync::Mutex;

fn load(name: &str) -> LoadedModel {
    let path = fixtures().join("cross").join(name);
    engine::load_files(engine::source::ModelFiles::Gguf(path), &Device::flex()).unwrap()
}

fn tokenizer(name: &str) -> Tokenizer {
    let g = engine::gguf::Gguf::open(fixtures().join("cross").join(name)).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

fn id(tok: &Tokenizer, raw: &str) -> u32 {
    tok.token_to_id(raw).unwrap_or_else(|| panic!("{raw:?} is not in {}", tok.origin()))
}

#[test]
fn pairings_are_classified_with_their_mode() {
    let (spm, bpe, wide) = (tokenizer("spm-draft.gguf"), tokenizer("bpe-target.gguf"), tokenizer("bpe-wide.gguf"));
    let c = compare_vocabularies(&spm, &bpe);
    assert_eq!((c.relation, c.mode), (VocabRelation::Different, PairMode::Text));
    assert_eq!((c.draft_size, c.target_size), (321, 298));
    // Shared texts: the 256 bytes (SentencePiece byte tokens vs byte-level tokens) and some words.
    assert!(c.shared_texts > 256 && c.shared_texts < 321, "{c:?}");
    let c = compare_vocabularies(&bpe, &bpe);
    assert_eq!((c.relation, c.mode, c.same_ids), (VocabRelation::Identical, PairMode::SharedIds, 298));
    let c = compare_vocabularies(&bpe, &wide);
    assert_eq!((c.relation, c.mode, c.extra_ids, c.extra_special), (VocabRelation::Superset, PairMode::ExtendedIds, 2, 2));
    // The other way round the draft has ids the target lacks: only text can bridge them.
    assert_eq!(compare_vocabularies(&wide, &bpe).relation, VocabRelation::Different);
}

#[test]
fn target_ids_translate_into_draft_ids_through_text() {
    let (spm, bpe) = (tokenizer("spm-draft.gguf"), tokenizer("bpe-target.gguf"));
    let bridge = TextBridge::new(&spm, &bpe);
    let text = " the cat sat on the mat, café";
    let target_ids = bpe.encode(text, false).unwrap();
    // After a draft context ending in "hello", the ids continue it and spell the text exactly.
    let draft_ids = bridge.to_draft(&target_ids, b"hello").unwrap();
    let spelled: Vec<u8> = draft_ids.iter().flat_map(|&i| spm.token_bytes(i).unwrap().to_vec()).collect();
    assert_eq!(String::from_utf8(spelled).unwrap(), text);
    assert!(spm.encode(&format!("hello{text}"), false).unwrap().ends_with(&draft_ids), "the draft's own tokenization");
    // Special tokens are mapped, never spelled: <|im_end|> by its text, <|endoftext|> (eos) by role.
    let (im_end_t, eot_t) = (id(&bpe, "<|im_end|>"), id(&bpe, "<|endoftext|>"));
    let (im_end_d, eos_d) = (id(&spm, "<|im_end|>"), id(&spm, "</s>"));
    let mut ids = bpe.encode(" a", false).unwrap();
    ids.push(im_end_t);
    ids.extend(bpe.encode("b", false).unwrap());
    ids.push(eot_t);
    let d = bridge.to_draft(&ids, b"").unwrap();
    assert_eq!(d.iter().filter(|&&i| i == im_end_d).count(), 1);
    assert_eq!(*d.last().unwrap(), eos_d);
    assert_eq!(bridge.special_to_target(eos_d), Some(eot_t));
    // A prompt: a leading target BOS (here also its EOS, as GPT-NeoX's <|endoftext|>) becomes the
    // draft's BOS, which the SentencePiece draft wants.
    let mut prompt = vec![eot_t];
    prompt.extend(bpe.encode("the cat", false).unwrap());
    let d = bridge.prompt_to_draft(&prompt).unwrap();
    assert_eq!(d, spm.encode("the cat", true).unwrap());
    assert_eq!(d[0], id(&spm, "<s>"));
    // An incomplete character at the very end is left for the draft to write.
    let mut partial = bpe.encode(" caf", false).unwrap();
    partial.push(id(&bpe, "Ã")); // the first byte of "é"
    let d = bridge.to_draft(&partial, b"").unwrap();
    let spelled: Vec<u8> = d.iter().flat_map(|&i| spm.token_bytes(i).unwrap().to_vec()).collect();
    assert_eq!(spelled, b" caf");
    // A literal "<|im_end|>" typed as text stays text for the draft.
    let typed = bpe.encode("x", false).unwrap().into_iter().chain(bridge.target.encode_text("<|im_end|>").unwrap()).collect::<Vec<_>>();
    assert!(!typed.contains(&im_end_t));
    assert!(!bridge.to_draft(&typed, b"").unwrap().contains(&im_end_d));
}

fn greedy(max_new_tokens: usize, stop_at_eos: bool) -> GenerationConfig {
    GenerationConfig { max_new_tokens, stop_at_eos, ..Default::default() }
}

#[test]
fn random_tiny_models_greedy_speculative_equals_target_only() {
    let (target, draft) = (load("bpe-target.gguf"), load("spm-draft.gguf"));
    let bridge = TextBridge::new(&draft.tokenizer, &target.tokenizer);
    for text in ["the cat sat on", "hello world, café", "é"] {
        let prompt = target.tokenizer.encode(text, true).unwrap();
        let gen = greedy(40, false);
        let want = generate(target.model.as_ref(), &prompt, target.tokenizer.eos_ids(), &gen, |_| {}).unwrap().tokens;
        for k in [1, 2, 3, 4, 6] {
            for trailing in [Trailing::Keep, Trailing::DropPartialWord] {
                let mut p = CrossVocab::new(draft.model.as_ref(), &bridge, 256).unwrap().with_trailing(trailing);
                let out = generate_speculative(target.model.as_ref(), &mut p, &prompt, &[], &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
                assert_eq!(out.generation.tokens, want, "{text:?}, k = {k}, {trailing:?}");
                assert_eq!(out.metrics.drafted, p.stats().proposed, "every proposed token is verified");
            }
        }
    }
}

#[test]
fn extended_ids_draft_matches_greedy_and_is_accepted() {
    let (target, draft) = (load("bpe-wide.gguf"), load("bpe-target.gguf"));
    let prompt = target.tokenizer.encode("the cat sat on the mat", false).unwrap();
    let gen = greedy(40, false);
    let want = generate(target.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    for k in [1, 3, 5] {
        let mut p = ExtendedIds::new(draft.model.as_ref(), 128, target.model.config().vocab_size).unwrap();
        let out = generate_speculative(target.model.as_ref(), &mut p, &prompt, &[], &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
        assert_eq!(out.generation.tokens, want, "k = {k}");
        eprintln!("extended ids k={k}: α̂ = {:.3}", out.metrics.alpha());
        assert!(out.metrics.alpha() > 0.3, "a near-copy of the target should be accepted often");
        assert!(!p.is_blind());
    }
    // Sampled: the padded q rows have the target's length (verification would panic otherwise).
    let sampled = GenerationConfig { sampling: SamplingParams::with_temperature(1.0), seed: 3, ..gen.clone() };
    let mut p = ExtendedIds::new(draft.model.as_ref(), 128, target.model.config().vocab_size).unwrap();
    generate_speculative(target.model.as_ref(), &mut p, &prompt, &[], &SpecConfig::fixed(sampled, 4), |_| {}).unwrap();
    // A context holding one of the target's extra ids: the draft cannot read it and stops drafting.
    let mut with_pad = prompt.clone();
    with_pad.push(id(&target.tokenizer, "[PAD0]"));
    let mut p = ExtendedIds::new(draft.model.as_ref(), 128, target.model.config().vocab_size).unwrap();
    let out = generate_speculative(target.model.as_ref(), &mut p, &with_pad, &[], &SpecConfig::fixed(gen.clone(), 4), |_| {}).unwrap();
    let want = generate(target.model.as_ref(), &with_pad, &[], &gen, |_| {}).unwrap().tokens;
    assert_eq!(out.generation.tokens, want);
    assert!(p.is_blind() && out.metrics.drafted == 0);
}

// ---------------------------------------------------------------------------------------------
// Scripted models: a target and a draft that both write one text
// ---------------------------------------------------------------------------------------------

/// A "model" whose greedy choice continues `script`: after the first `prompt_len` tokens it
/// reads the text of the context; while that text is a prefix of the script it picks the
/// longest vocabulary piece that continues it — or, at positions `quirk` selects, the shortest
/// one (a target splitting words and characters unusually) or `wrong` (a draft's mistake). Off
/// the script it writes `wrong`; at its end, `end`.
struct Scripted {
    pieces: Vec<Option<Vec<u8>>>,
    script: Vec<u8>,
    prompt_len: usize,
    quirk: fn(usize) -> bool,
    shortest_on_quirk: bool,
    wrong: u32,
    end: u32,
    ids: Mutex<Vec<u32>>,
    cfg: ModelConfig,
}

impl Scripted {
    fn new(tok: &Tokenizer, script: &str, prompt_len: usize, quirk: fn(usize) -> bool, shortest_on_quirk: bool, wrong: u32, end: u32) -> Self {
        let pieces = (0..tok.vocab_size() as u32).map(|i| tok.token_bytes(i).map(<[u8]>::to_vec)).collect();
        Scripted {
            pieces,
            script: script.as_bytes().to_vec(),
            prompt_len,
            quirk,
            shortest_on_quirk,
            wrong,
            end,
            ids: Mutex::new(Vec::new()),
            cfg: toy_config("scripted", tok.vocab_size()),
        }
    }

    fn next(&self, ctx: &[u32]) -> u32 {
        let text: Vec<u8> = ctx[self.prompt_len.min(ctx.len())..].iter().filter_map(|&i| self.pieces[i as usize].clone()).flatten().collect();
        let Some(rest) = self.script.strip_prefix(&text[..]) else { return self.wrong };
        if rest.is_empty() {
            return self.end;
        }
        let quirk = (self.quirk)(text.len());
        if quirk && !self.shortest_on_quirk {
            return self.wrong;
        }
        let fits = self.pieces.iter().enumerate().filter_map(|(i, p)| p.as_ref().filter(|p| !p.is_empty() && rest.starts_with(p)).map(|p| (p.len(), i)));
        let pick = if quirk { fits.min() } else { fits.max() };
        pick.map_or(self.wrong, |(_, i)| i as u32)
    }
}

impl CausalLm for Scripted {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> engine::Result<Logits> {
        let start = cache.len();
        let range = cache.reserve(tokens.len())?;
        cache.commit(range.end);
        let mut ids = self.ids.lock().unwrap();
        ids.truncate(start);
        ids.extend_from_slice(tokens);
        let positions: Vec<usize> = match rows {
            LogitRows::All => (start..start + tokens.len()).collect(),
            LogitRows::Last => vec![start + tokens.len() - 1],
        };
        let v = self.cfg.vocab_size;
        let mut data = vec![0.0f32; positions.len() * v];
        for (r, &pos) in positions.iter().enumerate() {
            data[r * v + self.next(&ids[..=pos]) as usize] = 5.0;
        }
        Ok(Logits::new(data, positions.len(), v))
    }
    fn new_cache(&self, capacity: usize) -> engine::Result<KvCache> {
        Ok(KvCache::new(0, 1, 1, capacity, &Device::flex()))
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}

const SCRIPT: &str = " the cat sat on the mat. hello world, the café au lait costs 3€ 😀 and the theory of relativity is a theory of space and time.";

#[test]
fn scripted_pair_accepts_most_drafts_and_still_equals_target_only() {
    let (spm, bpe) = (tokenizer("spm-draft.gguf"), tokenizer("bpe-target.gguf"));
    let bridge = TextBridge::new(&spm, &bpe);
    let prompt_text = "Once upon";
    let prompt = bpe.encode(prompt_text, false).unwrap();
    let draft_prompt = spm.encode(prompt_text, true).unwrap();
    let eot = id(&bpe, "<|endoftext|>");
    // The target takes the shortest piece at every 5th byte offset: split words, lone bytes of
    // multi-byte characters. The draft errs at every 11th.
    let target = Scripted::new(&bpe, SCRIPT, prompt.len(), |n| n % 5 == 3, true, id(&bpe, "~"), eot);
    let draft = Scripted::new(&spm, SCRIPT, draft_prompt.len(), |n| n % 11 == 7, false, id(&spm, "<0x7E>"), id(&spm, "</s>"));
    let gen = greedy(200, true);
    let want = generate(&target, &prompt, &[eot], &gen, |_| {}).unwrap().tokens;
    assert_eq!(bpe.decode(&want).unwrap(), SCRIPT);
    for k in [1, 2, 3, 4, 8] {
        for trailing in [Trailing::Keep, Trailing::DropPartialWord] {
            let mut p = CrossVocab::new(&draft, &bridge, 512).unwrap().with_draft_prompt(draft_prompt.clone()).with_trailing(trailing);
            let out = generate_speculative(&target, &mut p, &prompt, &[eot], &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
            let (m, s) = (&out.metrics, p.stats());
            eprintln!(
                "k={k} {trailing:?}: α̂ = {:.3}, τ = {:.2}, N = {}; rounds {}, synced {} draft tokens ({:.2}/round), reused {}, \
                 boundary {}, disagrees {}, held back {}, no draft {}, trimmed {}",
                m.alpha(), m.tau(), m.iterations, s.rounds, s.synced, s.synced as f64 / s.rounds as f64, s.reused, s.boundary,
                s.disagrees, s.held_back, s.no_draft, s.trimmed
            );
            assert_eq!(out.generation.tokens, want, "k = {k}, {trailing:?}");
            // α̂ = A/D falls with k (drafts after a mistake are never verified); the acceptance
            // rate of verified positions does not.
            let verified = m.accepted as f64 / m.tested() as f64;
            assert!(verified > 0.5, "k = {k}: the draft follows the script, A/tested = {verified:.3}");
            if k > 1 {
                assert!(m.tau() > 1.5, "k = {k}: τ = {}", m.tau());
            }
            // Re-syncing feeds only what changed: on average a few draft tokens per round, not
            // the whole (growing) context.
            assert!((s.synced as f64) < 0.25 * s.reused as f64, "synced {} vs reused {}", s.synced, s.reused);
        }
    }
}

#[test]
fn scripted_pair_exercises_the_boundary_rules() {
    // Same pair, k = 4: the target's odd splits must make some rounds hit a word or a character
    // split across the end of the context, and the draft's mistakes must make some disagree.
    let (spm, bpe) = (tokenizer("spm-draft.gguf"), tokenizer("bpe-target.gguf"));
    let bridge = TextBridge::new(&spm, &bpe);
    let prompt = bpe.encode("Once upon", false).unwrap();
    let draft_prompt = spm.encode("Once upon", true).unwrap();
    let eot = id(&bpe, "<|endoftext|>");
    let target = Scripted::new(&bpe, SCRIPT, prompt.len(), |n| n % 5 == 3, true, id(&bpe, "~"), eot);
    let draft = Scripted::new(&spm, SCRIPT, draft_prompt.len(), |n| n % 11 == 7, false, id(&spm, "<0x7E>"), id(&spm, "</s>"));
    let mut p = CrossVocab::new(&draft, &bridge, 512).unwrap().with_draft_prompt(draft_prompt);
    let out = generate_speculative(&target, &mut p, &prompt, &[eot], &SpecConfig::fixed(greedy(200, true), 4), |_| {}).unwrap();
    let s = p.stats();
    assert!(s.boundary > 0, "{s:?}");
    // The draft's end of text (</s>) maps to the target's <|endoftext|>, proposed and accepted.
    assert_eq!(out.generation.tokens.last(), Some(&eot));
    assert!(out.metrics.bonus > 0 || out.metrics.accepted > 0);
}

// ---------------------------------------------------------------------------------------------
// χ² losslessness on Markov models over the two fixture vocabularies
// ---------------------------------------------------------------------------------------------

/// First-order Markov "model": logits after token t are `table[t]`; `-inf` outside `support`.
struct Markov {
    table: Vec<Vec<f32>>,
    cfg: ModelConfig,
}

impl Markov {
    /// Transition probabilities among `support` (row i = after support[i]); other tokens get
    /// probability 0, and after a token outside the support the first row applies.
    fn new(vocab: usize, support: &[u32], probs: &[&[f64]]) -> Self {
        let row_of = |from: usize| {
            let mut row = vec![f32::NEG_INFINITY; vocab];
            for (j, &s) in support.iter().enumerate() {
                row[s as usize] = probs[from][j].ln() as f32;
            }
            row
        };
        let default = row_of(0);
        let mut table = vec![default; vocab];
        for (i, &s) in support.iter().enumerate() {
            table[s as usize] = row_of(i);
        }
        Markov { table, cfg: toy_config("markov", vocab) }
    }
}

impl CausalLm for Markov {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> engine::Result<Logits> {
        let range = cache.reserve(tokens.len())?;
        cache.commit(range.end);
        let picked: Vec<u32> = match rows {
            LogitRows::All => tokens.to_vec(),
            LogitRows::Last => vec![*tokens.last().unwrap()],
        };
        let data = picked.iter().flat_map(|&t| self.table[t as usize].iter().copied()).collect();
        Ok(Logits::new(data, picked.len(), self.cfg.vocab_size))
    }
    fn new_cache(&self, capacity: usize) -> engine::Result<KvCache> {
        Ok(KvCache::new(0, 1, 1, capacity, &Device::flex()))
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}

/// The wrong variant: the same proposals, but claimed to be drawn from a q that puts half its
/// mass on the proposed token (as if a draft's probabilities could be carried over to re-encoded
/// tokens). Verification then accepts with min(1, p/q) ≠ p and the output is no longer p's.
struct SoftQ<'a>(CrossVocab<'a>, usize);

impl Proposer for SoftQ<'_> {
    fn prefill(&mut self, context: &[u32]) -> engine::Result<()> {
        self.0.prefill(context)
    }
    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> engine::Result<Proposal> {
        let p = self.0.propose(context, k, sampler)?;
        let v = self.1;
        let rows = p
            .tokens
            .iter()
            .map(|&t| {
                let mut q = vec![0.5 / (v - 1) as f32; v];
                q[t as usize] = 0.5;
                Probs::from_normalized(q)
            })
            .collect();
        Ok(Proposal { tokens: p.tokens, probs: Some(rows) })
    }
    fn rollback(&mut self, len: usize) {
        self.0.rollback(len)
    }
}

const DRAWS: u64 = 100_000;
const MIN_P: f64 = 0.001;

/// χ² goodness of fit (`engine::stats`): (statistic, p-value).
fn chi_square_p_value(counts: &[u64], expected_probs: &[f64]) -> (f64, f64) {
    let fit = engine::stats::chi_square_goodness_of_fit(counts, expected_probs);
    (fit.statistic, fit.p_value)
}

struct MarkovPair {
    spm: Tokenizer,
    bpe: Tokenizer,
    target: Markov,
    draft: Markov,
    support: Vec<u32>,
    start: u32,
}

/// Target support: "a", "b", "ab", " a", and the two bytes of "é" as lone byte tokens (so the
/// target writes words the BPE would merge and splits characters); the draft writes "a", "b",
/// "ab", "▁a", "é" and its byte-fallback halves.
fn markov_pair() -> MarkovPair {
    let (spm, bpe) = (tokenizer("spm-draft.gguf"), tokenizer("bpe-target.gguf"));
    let support: Vec<u32> = ["a", "b", "ab", "Ġa", "Ã", "©"].iter().map(|t| id(&bpe, t)).collect();
    let target = Markov::new(
        bpe.vocab_size(),
        &support,
        &[
            &[0.10, 0.30, 0.20, 0.20, 0.10, 0.10],
            &[0.30, 0.05, 0.25, 0.20, 0.10, 0.10],
            &[0.20, 0.20, 0.10, 0.30, 0.15, 0.05],
            &[0.15, 0.25, 0.30, 0.10, 0.10, 0.10],
            &[0.05, 0.05, 0.05, 0.05, 0.20, 0.60],
            &[0.25, 0.20, 0.15, 0.20, 0.15, 0.05],
        ],
    );
    let draft_support: Vec<u32> = ["a", "b", "ab", "▁a", "é", "<0xC3>", "<0xA9>"].iter().map(|t| id(&spm, t)).collect();
    let draft = Markov::new(
        spm.vocab_size(),
        &draft_support,
        &[
            &[0.20, 0.30, 0.20, 0.10, 0.10, 0.05, 0.05],
            &[0.30, 0.10, 0.20, 0.20, 0.10, 0.05, 0.05],
            &[0.20, 0.20, 0.20, 0.20, 0.10, 0.05, 0.05],
            &[0.10, 0.30, 0.30, 0.10, 0.10, 0.05, 0.05],
            &[0.30, 0.20, 0.20, 0.10, 0.10, 0.05, 0.05],
            &[0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.70],
            &[0.30, 0.20, 0.20, 0.20, 0.05, 0.03, 0.02],
        ],
    );
    let start = support[0];
    MarkovPair { spm, bpe, target, draft, support, start }
}

/// Draws DRAWS sequences of `len` tokens speculatively and tests them against the target's exact
/// sequence distribution; returns the p-value.
fn chi_square(pair: &MarkovPair, k: usize, len: usize, params: SamplingParams, broken: bool) -> f64 {
    chi_square_with(pair, k, len, params, broken, false)
}

/// [`chi_square`], drafting in text mode or (`shared`) among the tokens both vocabularies have.
fn chi_square_with(pair: &MarkovPair, k: usize, len: usize, params: SamplingParams, broken: bool, shared: bool) -> f64 {
    let bridge = TextBridge::new(&pair.spm, &pair.bpe);
    let s = pair.support.len();
    let index = |t: u32| pair.support.iter().position(|&x| x == t).unwrap_or_else(|| panic!("token {t} outside the target's support"));
    let rows: Vec<Probs> = pair.support.iter().map(|&t| warp(&pair.target.table[t as usize], &params)).collect();
    let cells = s.pow(len as u32);
    let expected: Vec<f64> = (0..cells)
        .map(|c| {
            let (mut prev, mut prob, mut rest) = (index(pair.start), 1.0, c);
            for _ in 0..len {
                let tok = rest % s;
                rest /= s;
                prob *= rows[prev].get(pair.support[tok]) as f64;
                prev = tok;
            }
            prob
        })
        .collect();
    let mut counts = vec![0u64; cells];
    let (mut drafted, mut accepted) = (0u64, 0u64);
    let vocab = pair.bpe.vocab_size();
    for seed in 0..DRAWS {
        let cfg = SpecConfig::fixed(GenerationConfig { max_new_tokens: len, sampling: params, seed, stop_at_eos: false }, k);
        let mut p = CrossVocab::new(&pair.draft, &bridge, 64).unwrap();
        if shared {
            p = p.with_shared_tokens();
        }
        let mut proposer: Box<dyn Proposer + '_> = if broken && !shared { Box::new(SoftQ(p, vocab)) } else { Box::new(p) };
        let out = generate_speculative(&pair.target, proposer.as_mut(), &[pair.start], &[], &cfg, |_| {}).unwrap();
        drafted += out.metrics.drafted;
        accepted += out.metrics.accepted;
        let cell = out.generation.tokens.iter().rev().fold(0, |acc, &t| acc * s + index(t));
        counts[cell] += 1;
    }
    let (stat, p) = chi_square_p_value(&counts, &expected);
    eprintln!("k={k} len={len} {params:?} broken={broken}: χ² = {stat:.1}, p = {p:.4}, {drafted} drafted, α̂ = {:.3}", accepted as f64 / drafted as f64);
    assert!(drafted > DRAWS, "the draft must actually propose");
    p
}

#[test]
fn sampled_cross_vocab_speculation_is_lossless() {
    let pair = markov_pair();
    assert!(chi_square(&pair, 3, 4, SamplingParams::with_temperature(1.0), false) > MIN_P);
    assert!(chi_square(&pair, 2, 4, SamplingParams { temperature: 0.8, top_k: 4, top_p: 0.95 }, false) > MIN_P);
}

#[test]
fn the_test_rejects_a_proposal_verified_with_the_wrong_q() {
    let pair = markov_pair();
    let p = chi_square(&pair, 3, 4, SamplingParams::with_temperature(1.0), true);
    assert!(p < MIN_P, "a verifier fed a q the proposal was not drawn from passed (p = {p}): the test has no power");
}

#[test]
fn shared_token_drafting_is_lossless_and_its_broken_twin_is_caught() {
    use engine::speculative::faults::{with_fault, Fault};
    let pair = markov_pair();
    let bridge = TextBridge::new(&pair.spm, &pair.bpe);
    // Bytes, "a", "b", "ab" and "▁a" (" a") are tokens of both vocabularies.
    assert!(bridge.shared_tokens() > 256, "{} shared", bridge.shared_tokens());
    assert_eq!(bridge.shared_token(id(&pair.spm, "▁a")), Some(id(&pair.bpe, "Ġa")));
    // A draft that also likes a word the target's vocabulary lacks (its mass is dropped by the
    // restriction, which is what renormalisation is for).
    let unshared = (0..pair.spm.vocab_size() as u32)
        .find(|&i| !pair.spm.is_special(i) && pair.spm.token_bytes(i).is_some_and(|b| b.len() > 1) && bridge.shared_token(i).is_none())
        .expect("a draft word the target lacks");
    let draft_support: Vec<u32> = ["a", "b", "ab", "▁a", "é"].iter().map(|t| id(&pair.spm, t)).chain([unshared]).collect();
    let rows: [&[f64]; 6] = [
        &[0.15, 0.25, 0.15, 0.10, 0.05, 0.30],
        &[0.25, 0.10, 0.15, 0.15, 0.05, 0.30],
        &[0.15, 0.15, 0.15, 0.15, 0.10, 0.30],
        &[0.10, 0.25, 0.25, 0.05, 0.05, 0.30],
        &[0.25, 0.15, 0.15, 0.10, 0.05, 0.30],
        &[0.30, 0.20, 0.20, 0.10, 0.05, 0.15],
    ];
    let pair = MarkovPair { draft: Markov::new(pair.spm.vocab_size(), &draft_support, &rows), ..pair };
    // Four tokens: the first is sampled at prefill, then a full round of k = 2 drafts.
    assert!(chi_square_with(&pair, 2, 4, SamplingParams::with_temperature(1.0), false, true) > MIN_P);
    assert!(chi_square_with(&pair, 2, 4, SamplingParams { temperature: 0.8, top_k: 4, top_p: 0.95 }, false, true) > MIN_P);
    // q from before the restriction (the plausible bug of forgetting to renormalise) is caught.
    let broken = with_fault(Fault::UnrenormalizedQ, || chi_square_with(&pair, 2, 4, SamplingParams::with_temperature(1.0), false, true));
    assert!(broken < MIN_P, "an unrenormalised q passed (p = {broken})");
}
