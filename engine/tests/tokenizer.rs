//! Tokenizers of the real GGUF models against transformers: ids for every reference case, round
//! trips, special tokens, chat templates, streaming. References: engine/tests/fixtures/tokenizer/.
//!
//! Models are fetched by short name into the engine cache (tests/common). A missing model or
//! fixture fails the test unless `SPECDEC_SKIP_REAL=1`, which turns it into a printed skip.

mod common;

use engine::gguf::Gguf;
use engine::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

struct RealModel {
    /// Short name (engine::source::known_models).
    file: &'static str,
    /// The GGUF file the short name fetches (as the Python fixture scripts name models).
    gguf: &'static str,
    fixture: Option<&'static str>,
    /// A control token of this vocabulary, used for the special-token checks.
    special: &'static str,
}

const SMOLLM2: RealModel =
    RealModel { file: "smollm2-135m", gguf: "SmolLM2-135M-Instruct.Q4_1.gguf", fixture: Some("smollm2.json"), special: "<|im_start|>" };
const QWEN_05B: RealModel = RealModel {
    file: "qwen2.5-coder-0.5b",
    gguf: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    fixture: Some("qwen2.5-coder-0.5b.json"),
    special: "<|im_start|>",
};
const QWEN_15B: RealModel =
    RealModel { file: "qwen2.5-coder-1.5b", gguf: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", fixture: None, special: "<|im_start|>" };
const GEMMA3: RealModel =
    RealModel { file: "gemma3-270m", gguf: "gemma-3-270m-q4_k_m.gguf", fixture: Some("gemma3-270m.json"), special: "<start_of_turn>" };

/// Strings every tokenizer must round-trip and stream exactly.
const SAMPLES: &[&str] = &[
    "Hello world! 123",
    "The capital of France is",
    "  multiple   spaces\tand\ttabs\n\nnew paragraphs\r\n",
    "Café déjà vu — naïve façade.",
    "日本語のテキストと絵文字 🎉🚀👩‍👩‍👧 mixed with English.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Numbers: 3.14159, 1,000,000 and 2024-03-01T12:00:00Z; emails a.b@c.de",
    "Ünïcödé: Ελληνικά, русский, العربية, हिन्दी, 한국어",
    "x",
    "",
];

fn skip_real() -> bool {
    std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1")
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("tokenizer")
}

/// The model's tokenizer, or `None` (printing why) when it is absent and SPECDEC_SKIP_REAL=1.
fn load(m: &RealModel) -> Option<Tokenizer> {
    let path = common::real_model(m.file)?;
    let g = Gguf::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let tok = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}: {} ({} tokens) built in {:.0?}", m.file, tok.kind(), tok.vocab_size(), start.elapsed());
    Some(tok)
}

/// The model's reference fixture, or `None` (printing why) when absent and SPECDEC_SKIP_REAL=1.
fn fixture(m: &RealModel) -> Option<Value> {
    let path = fixtures_dir().join(m.fixture?);
    if !path.is_file() {
        if skip_real() {
            common::report_skip(&format!("reference checks: {} not found and SPECDEC_SKIP_REAL=1", path.display()));
            return None;
        }
        panic!("reference fixture {} not found (it is generated with transformers)", path.display());
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut s = StreamDecoder::new(tok);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = s.push(id) {
            assert!(!piece.contains('\u{FFFD}'), "{}: streamed a replacement character in {piece:?}", tok.kind());
            out.push_str(&piece);
        }
    }
    out.extend(s.flush());
    out
}

/// Round trips, special tokens and streaming: checks that need no reference.
fn check_self_consistency(m: &RealModel, tok: &Tokenizer) {
    for &s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s, "{}: decode(encode({s:?}))", m.file);
        assert_eq!(stream(tok, &ids), s, "{}: streaming {s:?}", m.file);
        let with_bos = tok.encode(s, true).unwrap();
        if tok.wants_bos() {
            assert_eq!(with_bos[0], tok.bos_id().unwrap());
            assert_eq!(&with_bos[1..], &ids[..]);
        } else {
            assert_eq!(with_bos, ids);
        }
        assert_eq!(tok.decode(&with_bos).unwrap(), s, "{}: BOS is not text", m.file);
    }
    // A special token's text encodes to its one id; decoding omits it.
    let sid = tok.token_to_id(m.special).unwrap_or_else(|| panic!("{}: no {}", m.file, m.special));
    assert!(tok.is_special(sid));
    assert_eq!(tok.token_text(sid).as_deref(), Some(m.special));
    assert_eq!(tok.encode(m.special, false).unwrap(), vec![sid]);
    let text = format!("{}user\nHi there{}", m.special, m.special);
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == sid).count(), 2, "{}: {ids:?}", m.file);
    assert_eq!(tok.decode(&ids).unwrap(), "user\nHi there");
    assert_eq!(stream(tok, &ids), "user\nHi there");
    // Every eos id is a real, special token.
    assert!(!tok.eos_ids().is_empty());
    for &e in tok.eos_ids() {
        assert!(tok.is_special(e), "{}: eos {e} ({:?}) is not special", m.file, tok.token_text(e));
    }
}

/// Every reference case and the rendered chat prompt, against transformers.
fn check_reference(m: &RealModel, tok: &Tokenizer, r: &Value) {
    let file = m.file;
    if let Some(e) = r.get("error").and_then(|e| e.as_str()) {
        // transformers itself could not load this GGUF: nothing to compare against.
        eprintln!("{file}: no reference ({e})");
        return;
    }
    if let Some(n) = r["vocab_size"].as_u64() {
        assert_eq!(tok.vocab_size() as u64, n, "{file}: vocab size");
    }
    if let Some(b) = r["bos_id"].as_u64() {
        assert_eq!(tok.bos_id(), Some(b as u32), "{file}: bos id");
    }
    if let Some(e) = r["eos_id"].as_u64() {
        assert_eq!(tok.eos_ids().first().copied(), Some(e as u32), "{file}: eos id");
    }
    if let Some(add_bos) = r["add_bos_token"].as_bool() {
        assert_eq!(tok.wants_bos(), add_bos, "{file}: add_bos_token");
    }
    let cases = r["cases"].as_array().expect("fixture cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().expect("case text");
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "{file}: ids of {text:?}");
        if let Some(with) = case.get("ids_with_special") {
            assert_eq!(tok.encode(text, true).unwrap(), ids(with), "{file}: ids (with BOS if wanted) of {text:?}");
        }
        // transformers decodes special tokens as text; ours omits them, so compare plain text only.
        if let Some(decoded) = case.get("decoded").and_then(|d| d.as_str()) {
            if !want.iter().any(|&i| tok.is_special(i)) {
                assert_eq!(tok.decode(&want).unwrap(), decoded, "{file}: decode of {text:?}");
            }
        }
        let plain: String = {
            let mut t = text.to_string();
            for &i in want.iter().filter(|&&i| tok.is_special(i)) {
                t = t.replacen(&tok.token_text(i).unwrap(), "", 1);
            }
            t
        };
        assert_eq!(tok.decode(&want).unwrap(), plain, "{file}: decode(reference ids of {text:?})");
        assert_eq!(stream(tok, &want), plain, "{file}: streaming the reference ids of {text:?}");
    }
    eprintln!("{file}: all {} reference cases give transformers' ids", cases.len());

    let template = r.get("chat_template").and_then(|t| t.as_str());
    assert_eq!(tok.chat_template(), template, "{file}: chat template");
    if let Some(chat) = r.get("chat") {
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).expect("chat messages");
        match chat.get("text").and_then(|t| t.as_str()) {
            Some(want) => {
                let text = tok.apply_chat_template(&messages, true).unwrap();
                assert_eq!(text, want, "{file}: rendered chat");
                assert_eq!(tok.encode(&text, false).unwrap(), ids(&chat["ids"]), "{file}: ids of the rendered chat");
                eprintln!("{file}: chat template renders and tokenizes like transformers");
            }
            None => {
                // No template (or transformers failed to render it): ours must fail too, typed.
                let e = tok.apply_chat_template(&messages, true);
                if template.is_none() {
                    assert!(matches!(e, Err(engine::Error::ChatTemplate { .. })), "{file}: {e:?}");
                }
            }
        }
    }
    if let Some(same) = r.get("same_vocab_as").and_then(|v| v.as_object()) {
        assert!(!same.is_empty(), "{file}: an empty same_vocab_as compares nothing");
        for (other, is_same) in same {
            let om = [&SMOLLM2, &QWEN_05B, &QWEN_15B, &GEMMA3]
                .into_iter()
                .find(|x| x.gguf == other)
                .unwrap_or_else(|| panic!("{file}: same_vocab_as names {other}, which is none of the short-name models' files"));
            let Some(o) = load(om) else { continue };
            assert_eq!(
                o.vocab_fingerprint() == tok.vocab_fingerprint(),
                is_same.as_bool().unwrap(),
                "{file} vs {other}: vocabulary fingerprints"
            );
        }
    }
}

fn check_model(m: &RealModel) {
    let Some(tok) = load(m) else { return };
    check_self_consistency(m, &tok);
    if m.fixture.is_some() {
        if let Some(r) = fixture(m) {
            check_reference(m, &tok, &r);
        }
    }
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    check_model(&SMOLLM2);
    let Some(tok) = load(&SMOLLM2) else { return };
    assert_eq!(tok.kind(), "gpt2 BPE (pre: smollm)");
    assert_eq!((tok.bos_id(), tok.wants_bos()), (Some(1), false));
    // eos <|im_end|>, then <|endoftext|> which also ends a document.
    assert_eq!(tok.eos_ids(), &[2, 0]);
    // Individual digits (SmolLM2's Digits pre-tokenizer), GPT-2 spacing.
    assert_eq!(tok.encode("Hello world! 123", false).unwrap(), vec![19556, 905, 17, 216, 33, 34, 35]);
}

#[test]
fn qwen_coder_05b_tokenizer_matches_transformers() {
    check_model(&QWEN_05B);
    let Some(tok) = load(&QWEN_05B) else { return };
    assert_eq!(tok.kind(), "gpt2 BPE (pre: qwen2)");
    assert!(!tok.wants_bos());
    assert_eq!(tok.eos_ids(), &[151645, 151643]);
    assert_eq!(tok.encode("The capital of France is", false).unwrap(), vec![785, 6722, 315, 9625, 374]);
    // <tool_call> is user-defined: matched whole, but text when decoded.
    let tc = tok.token_to_id("<tool_call>").unwrap();
    assert!(!tok.is_special(tc));
    assert_eq!(tok.encode("a<tool_call>b", false).unwrap().iter().filter(|&&i| i == tc).count(), 1);
    assert_eq!(tok.decode(&[tc]).unwrap(), "<tool_call>");
}

#[test]
fn qwen_coder_15b_shares_the_05b_vocabulary() {
    check_model(&QWEN_15B);
    let (Some(a), Some(b)) = (load(&QWEN_05B), load(&QWEN_15B)) else { return };
    assert_eq!(a.vocab_fingerprint(), b.vocab_fingerprint());
    assert_eq!(a.vocab_size(), b.vocab_size());
    for &s in SAMPLES {
        assert_eq!(a.encode(s, true).unwrap(), b.encode(s, true).unwrap());
    }
    if let Some(smol) = load(&SMOLLM2) {
        assert_ne!(a.vocab_fingerprint(), smol.vocab_fingerprint());
    }
}

#[test]
fn gemma3_tokenizer_matches_transformers() {
    check_model(&GEMMA3);
    let Some(tok) = load(&GEMMA3) else { return };
    assert_eq!(tok.kind(), "llama SentencePiece");
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!((tok.bos_id(), tok.wants_bos()), (Some(2), true));
    // <eos>, then <end_of_turn>.
    assert_eq!(tok.eos_ids(), &[1, 106]);
}

/// The greedy-decoding references (fixtures/real, made with transformers from the same GGUFs)
/// also record each prompt's text, its chat rendering and its ids: check those too.
#[test]
fn greedy_reference_prompts_tokenize_identically() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("real");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no {}: nothing to compare", dir.display());
        return;
    };
    let mut checked = 0;
    for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")) {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        // The fixtures are named after the short names (fixtures/real/<short name>.json).
        let stem = entry.path().file_stem().unwrap().to_string_lossy().into_owned();
        let file = stem.as_str();
        let m = [&SMOLLM2, &QWEN_05B, &QWEN_15B, &GEMMA3]
            .into_iter()
            .find(|m| m.file == file)
            .unwrap_or_else(|| panic!("fixtures/real/{file}.json names no short-name model"));
        let Some(tok) = load(m) else { continue };
        for case in r["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            // As transformers made them: a chat rendering already holds its special tokens; a
            // plain prompt gets the tokenizer's own (Gemma's <bos>).
            let ours = if case["chat"].as_bool() == Some(true) {
                let rendered = tok.apply_chat_template(&[ChatMessage::new("user", prompt)], true).unwrap();
                assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{file}: chat rendering of {prompt:?}");
                tok.encode(&rendered, false).unwrap()
            } else {
                tok.encode(prompt, true).unwrap()
            };
            assert_eq!(ours, ids(&case["prompt_ids"]), "{file}: ids of {prompt:?}");
            checked += 1;
        }
    }
    eprintln!("{checked} reference prompts tokenized identically");
    assert!(checked >= 16 || skip_real(), "only {checked} reference prompts were compared (4 models × 4 prompts expected)");
}

#[test]
fn chat_templates_render() {
    let Some(tok) = load(&SMOLLM2) else { return };
    let msgs = [ChatMessage::new("user", "What is 2+2?")];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let Some(qwen) = load(&QWEN_05B) else { return };
    let text = qwen.apply_chat_template(&msgs, true).unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."), "{text}");
    assert!(text.ends_with("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"), "{text:?}");
}
