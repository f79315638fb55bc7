use super::*;
use super::byte_level::{byte_level_decode, byte_level_encode, parse_byte_token};
use super::chat_template::strftime;
use super::stream::take_complete_utf8;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Metadata values for the synthetic GGUF writer.
enum V {
    Str(&'static str),
    U32(u32),
    I32(i32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Writes a metadata-only GGUF (v3, no tensors) to a fresh temp file.
fn write_gguf(kv: Vec<(&str, V)>) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        match v {
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::I32(x) => {
                out.extend(5u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(b as u8);
            }
            V::Strs(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for s in a {
                    put_str(&mut out, &s);
                }
            }
            V::I32s(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
            V::F32s(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    let path = std::env::temp_dir().join(format!(
        "specdec-tokenizer-test-{}-{}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, out).unwrap();
    path
}

fn load(kv: Vec<(&str, V)>) -> Result<Tokenizer> {
    let path = write_gguf(kv);
    let g = Gguf::open(&path).unwrap();
    let t = Tokenizer::from_gguf(&g);
    let _ = std::fs::remove_file(&path);
    t
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A byte-level vocabulary: ids 0..256 are the 256 bytes, then a few merged tokens, two
/// control tokens and one user-defined token.
fn gpt2_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_level_encode(&[b])).collect();
    let merged = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "12"];
    tokens.extend(strs(&merged));
    tokens.extend(strs(&["<|im_start|>", "<|im_end|>", "<tool>"]));
    let mut types = vec![1; tokens.len()];
    let n = types.len();
    types[n - 3] = 3;
    types[n - 2] = 3;
    types[n - 1] = 4;
    let merges = strs(&["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2"]);
    (tokens, types, merges)
}

fn gpt2(pre: &'static str, extra: Vec<(&'static str, V)>) -> Result<Tokenizer> {
    let (tokens, types, merges) = gpt2_vocab();
    let mut kv = vec![
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str(pre)),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.merges", V::Strs(merges)),
        ("tokenizer.ggml.eos_token_id", V::U32(267)),
        ("tokenizer.ggml.bos_token_id", V::U32(266)),
    ];
    // An extra key replaces the default one: the GGUF reader refuses a key written twice.
    for (key, value) in extra {
        match kv.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => kv.push((key, value)),
        }
    }
    load(kv)
}

/// A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces by score.
fn spm(add_space_prefix: bool) -> Tokenizer {
    let mut tokens = strs(&["<unk>", "<s>", "</s>"]);
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "ll", "he", "hell", "hello", "▁hello", "▁w", "or", "▁wor", "ld",
        "▁world",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32) - 1.0);
    }
    tokens.push("<start>".into());
    types.push(3);
    scores.push(-1000.0);
    tokens.push("\n\n".into());
    types.push(4);
    scores.push(-1000.0);
    load(vec![
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.scores", V::F32s(scores)),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.unknown_token_id", V::U32(0)),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ("tokenizer.ggml.add_space_prefix", V::Bool(add_space_prefix)),
    ])
    .unwrap()
}

fn problem(e: Error) -> String {
    match e {
        Error::Tokenizer { problem, .. } => problem,
        other => panic!("expected Error::Tokenizer, got {other:?}"),
    }
}

#[test]
fn gpt2_bpe_encodes_merges_and_special_tokens() {
    let t = gpt2("gpt-2", vec![]).unwrap();
    assert_eq!(t.kind(), "gpt2 BPE (pre: gpt-2)");
    assert_eq!(t.vocab_size(), 269);
    assert_eq!(t.encode("hello world", true).unwrap(), vec![259, 264]); // gpt-2: no BOS by default
    assert_eq!(t.encode("<|im_start|>hello<|im_end|>", false).unwrap(), vec![266, 259, 267]);
    assert_eq!(t.decode(&[266, 259, 267]).unwrap(), "hello");
    // User-defined tokens are matched whole and decoded as text.
    assert_eq!(t.encode("hello<tool>", false).unwrap(), vec![259, 268]);
    assert_eq!(t.decode(&[259, 268]).unwrap(), "hello<tool>");
    assert!(t.is_special(266) && t.is_special(267) && !t.is_special(268) && !t.is_special(259));
    assert_eq!(t.eos_ids(), &[267]);
    assert_eq!(t.bos_id(), Some(266));
    assert_eq!(t.token_text(264).as_deref(), Some("Ġworld"));
    assert_eq!(t.token_text(9999), None);
    for s in ["hello world", "Grüße, 日本語 🎉!\n\ttabs  and   spaces", ""] {
        assert_eq!(t.decode(&t.encode(s, false).unwrap()).unwrap(), s);
    }
    assert!(t.decode(&[5000]).is_err());
    // GPT-2 regex keeps " 123" together, so the "1 2" merge applies.
    assert_eq!(t.encode("a 123", false).unwrap(), vec![97, 32, 265, 51]);
}

#[test]
fn smollm_pre_tokenizer_splits_digits() {
    let t = gpt2("smollm", vec![]).unwrap();
    assert_eq!(t.encode("a 123", false).unwrap(), vec![97, 32, 49, 50, 51]);
    let q = gpt2("qwen2", vec![]).unwrap();
    assert_eq!(q.encode("a 123", false).unwrap(), vec![97, 32, 49, 50, 51]);
}

#[test]
fn every_supported_pre_tokenizer_builds_and_round_trips() {
    let text = "Hello, it's 2024!\n\n  def f(x):  return x*12 # 日本語 🎉";
    for pre in supported_pre_tokenizers() {
        // Leak: the writer takes &'static str keys/values; a few bytes per test run.
        let pre: &'static str = Box::leak(pre.to_string().into_boxed_str());
        let t = gpt2(pre, vec![]).unwrap_or_else(|e| panic!("{pre}: {e}"));
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text, "{pre}");
    }
}

#[test]
fn add_bos_follows_metadata() {
    let t = gpt2("gpt-2", vec![("tokenizer.ggml.add_bos_token", V::Bool(true))]).unwrap();
    assert!(t.wants_bos());
    assert_eq!(t.encode("hello", true).unwrap(), vec![266, 259]);
    assert_eq!(t.encode("hello", false).unwrap(), vec![259]);
    // Llama-3 style pre-tokenizers default to a BOS, as in llama.cpp.
    assert!(gpt2("llama-bpe", vec![]).unwrap().wants_bos());
}

#[test]
fn eot_and_end_of_turn_tokens_end_generation() {
    let t = gpt2("gpt-2", vec![("tokenizer.ggml.eot_token_id", V::U32(259))]).unwrap();
    assert_eq!(t.eos_ids(), &[267, 259]);
    // <|im_end|> is a control token even when eos is something else.
    let t = gpt2("gpt-2", vec![("tokenizer.ggml.eos_token_id", V::U32(266))]);
    // (duplicate key: the later value wins in the GGUF map)
    assert!(t.unwrap().eos_ids().contains(&267));
}

#[test]
fn sentencepiece_merges_by_score_with_space_prefix() {
    let t = spm(true);
    assert_eq!(t.kind(), "llama SentencePiece");
    let id = |s: &str| t.token_to_id(s).unwrap();
    let ids = t.encode("hello world", true).unwrap();
    assert_eq!(ids, vec![1, id("▁hello"), id("▁world")]);
    assert_eq!(t.decode(&ids).unwrap(), "hello world");
    // Byte fallback for characters outside the vocabulary.
    let ids = t.encode("é", false).unwrap();
    assert_eq!(ids, vec![id("▁"), 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(t.decode(&ids).unwrap(), "é");
    // Control tokens split the text; each piece after one gets its own prefix (llama.cpp).
    let ids = t.encode("<start>hello", false).unwrap();
    assert_eq!(ids, vec![id("<start>"), id("▁hello")]);
    assert_eq!(t.decode(&ids).unwrap(), "hello");
    // (After a control or user-defined token the next piece gets a prefix `▁` again, as in
    // llama.cpp, so text following one does not round-trip byte for byte.)
    for s in ["hello world", "héllo  wörld\nok", "x"] {
        assert_eq!(t.decode(&t.encode(s, true).unwrap()).unwrap(), s, "{s:?}");
    }
}

#[test]
fn sentencepiece_without_space_prefix() {
    let t = spm(false);
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(t.encode("hello world", false).unwrap(), vec![id("hello"), id("▁world")]);
    // User-defined tokens are matched on the raw text.
    assert_eq!(t.encode("hello\n\nhello", false).unwrap(), vec![id("hello"), id("\n\n"), id("hello")]);
    for s in ["hello world", " hello", "a\n\nb  c"] {
        assert_eq!(t.decode(&t.encode(s, true).unwrap()).unwrap(), s, "{s:?}");
    }
}

#[test]
fn stream_decoder_holds_back_incomplete_utf8() {
    let t = spm(true);
    let mut s = StreamDecoder::new(&t);
    assert_eq!(s.push(1), None); // BOS: special, no text
    assert_eq!(s.push(t.token_to_id("▁").unwrap()), None); // the stripped prefix space
    assert_eq!(s.push(3 + 0xC3), None);
    assert_eq!(s.push(3 + 0xA9).as_deref(), Some("é"));
    // A 4-byte emoji arrives one byte at a time.
    let bytes = "🎉".as_bytes();
    for &b in &bytes[..3] {
        assert_eq!(s.push(3 + b as u32), None);
    }
    assert_eq!(s.push(3 + bytes[3] as u32).as_deref(), Some("🎉"));
    assert_eq!(s.push(t.token_to_id("▁world").unwrap()).as_deref(), Some(" world"));
    // A dangling lead byte is flushed as U+FFFD; an impossible byte is replaced at once.
    assert_eq!(s.push(3 + 0xE6), None);
    assert_eq!(s.flush().as_deref(), Some("\u{FFFD}"));
    assert_eq!(s.push(3 + 0xFF).as_deref(), Some("\u{FFFD}"));
    assert_eq!(s.flush(), None);
}

#[test]
fn stream_decoder_matches_decode_for_byte_level() {
    let t = gpt2("gpt-2", vec![]).unwrap();
    let text = "hello 日本語 world 🎉!";
    let ids = t.encode(text, false).unwrap();
    let mut s = StreamDecoder::new(&t);
    let mut out = String::new();
    for &id in &ids {
        if let Some(p) = s.push(id) {
            assert!(!p.contains('\u{FFFD}'));
            out.push_str(&p);
        }
    }
    out.extend(s.flush());
    assert_eq!(out, text);
}

#[test]
fn take_complete_utf8_cases() {
    let mut b = vec![b'a', 0xE6, 0x97];
    assert_eq!(take_complete_utf8(&mut b), "a");
    assert_eq!(b, vec![0xE6, 0x97]);
    b.push(0xA5);
    assert_eq!(take_complete_utf8(&mut b), "日");
    assert!(b.is_empty());
    let mut b = vec![0x80, b'x', 0xF0];
    assert_eq!(take_complete_utf8(&mut b), "\u{FFFD}x");
    assert_eq!(b, vec![0xF0]);
}

#[test]
fn fingerprint_tracks_the_vocabulary() {
    let a = gpt2("gpt-2", vec![]).unwrap();
    let b = gpt2("smollm", vec![]).unwrap();
    assert_eq!(a.vocab_fingerprint(), b.vocab_fingerprint(), "the pre-tokenizer is not part of the table");
    let (mut tokens, types, merges) = gpt2_vocab();
    tokens[260] = "ho".into();
    let c = load(vec![
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        ("tokenizer.ggml.merges", V::Strs(merges)),
    ])
    .unwrap();
    assert_ne!(a.vocab_fingerprint(), c.vocab_fingerprint());
    assert_ne!(a.vocab_fingerprint(), spm(true).vocab_fingerprint());
    assert_eq!(spm(true).vocab_fingerprint(), spm(false).vocab_fingerprint());
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "specdec-tokenizer-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tokenizer_json_with_config_matches_the_gguf_build() {
    let g = gpt2("smollm", vec![]).unwrap();
    let dir = temp_dir("json");
    let json = dir.join("tokenizer.json");
    g.hf().save(&json, false).unwrap();
    let config = dir.join("tokenizer_config.json");
    std::fs::write(
        &config,
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": true,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [267, 259]}"#).unwrap();
    let j = Tokenizer::from_json_file(&json, Some(&config)).unwrap();
    assert_eq!(j.kind(), "tokenizer.json (BPE)");
    assert_eq!(j.vocab_size(), g.vocab_size());
    assert_eq!(j.vocab_fingerprint(), g.vocab_fingerprint());
    assert_eq!(j.bos_id(), Some(266));
    assert!(j.wants_bos());
    assert_eq!(j.eos_ids(), &[267, 259]);
    assert_eq!(j.apply_chat_template(&[], false).unwrap(), "<|im_start|>D");
    let text = "<|im_start|>hello world 123<tool> 日本語";
    assert_eq!(j.encode(text, false).unwrap(), g.encode(text, false).unwrap());
    assert_eq!(j.encode("hello", true).unwrap(), vec![266, 259]);
    let ids = j.encode(text, false).unwrap();
    assert_eq!(j.decode(&ids).unwrap(), g.decode(&ids).unwrap());
    assert!(j.is_special(266) && !j.is_special(268));
    // Without a config: no template, BOS only if the post-processor adds one (it does not).
    let bare = Tokenizer::from_json_file(&json, None).unwrap();
    assert!(bare.chat_template().is_none() && !bare.wants_bos());
    assert_eq!(bare.eos_ids(), &[267, 259]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenizer_json_with_a_sentencepiece_decoder_streams_through_tokenizers() {
    let g = spm(true);
    let dir = temp_dir("json-spm");
    let json = dir.join("tokenizer.json");
    g.hf().save(&json, false).unwrap();
    let j = Tokenizer::from_json_file(&json, None).unwrap();
    assert_eq!(j.vocab_fingerprint(), g.vocab_fingerprint());
    let text = "hello wörld é🎉";
    let ids = g.encode(text, false).unwrap();
    assert_eq!(j.encode(text, false).unwrap(), ids);
    assert_eq!(g.decode(&ids).unwrap(), text);
    assert_eq!(j.decode(&ids).unwrap(), text);
    let mut s = StreamDecoder::new(&j);
    let mut out = String::new();
    for &id in &ids {
        if let Some(p) = s.push(id) {
            assert!(!p.contains('\u{FFFD}'), "{p:?}");
            out.push_str(&p);
        }
    }
    out.extend(s.flush());
    assert_eq!(out, text);
    let e = Tokenizer::from_json_file(&dir.join("missing.json"), None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    std::fs::write(dir.join("bad.json"), "{").unwrap();
    problem(Tokenizer::from_json_file(&dir.join("bad.json"), None).unwrap_err());
    let _ = std::fs::remove_dir_all(&dir);
}

// --- malformed metadata: typed errors, never panics ------------------------------------

#[test]
fn gguf_without_tokenizer_model_is_an_error() {
    let e = load(vec![("general.architecture", V::Str("llama"))]).unwrap_err();
    let p = problem(e);
    assert!(p.contains("tokenizer.ggml.model") && p.contains("missing"), "{p}");
}

#[test]
fn malformed_metadata_is_a_typed_error() {
    let (tokens, types, merges) = gpt2_vocab();
    let base = |skip: &str| -> Vec<(&'static str, V)> {
        let mut kv = vec![
            ("tokenizer.ggml.model", V::Str("gpt2")),
            ("tokenizer.ggml.tokens", V::Strs(tokens.clone())),
            ("tokenizer.ggml.token_type", V::I32s(types.clone())),
            ("tokenizer.ggml.merges", V::Strs(merges.clone())),
        ];
        kv.retain(|(k, _)| *k != skip);
        kv
    };
    let check = |kv: Vec<(&'static str, V)>, want: &[&str]| {
        let p = problem(load(kv).unwrap_err());
        for w in want {
            assert!(p.contains(w), "{p:?} should mention {w:?}");
        }
    };
    check(base("tokenizer.ggml.merges"), &["tokenizer.ggml.merges", "missing"]);
    check(base("tokenizer.ggml.tokens"), &["tokenizer.ggml.tokens", "missing"]);
    let mut kv = base("tokenizer.ggml.token_type");
    kv.push(("tokenizer.ggml.token_type", V::I32s(vec![1, 1, 1])));
    check(kv, &["tokenizer.ggml.token_type", "3 entries"]);
    let mut kv = base("tokenizer.ggml.token_type");
    kv.push(("tokenizer.ggml.token_type", V::I32s(vec![9; tokens.len()])));
    check(kv, &["unknown token type 9"]);
    let mut kv = base("tokenizer.ggml.merges");
    kv.push(("tokenizer.ggml.merges", V::Strs(strs(&["h e", "nospace"]))));
    check(kv, &["tokenizer.ggml.merges", "entry 1"]);
    let mut kv = base("");
    kv.push(("tokenizer.ggml.pre", V::Str("no-such-pre")));
    check(kv, &["unsupported pre-tokenizer `no-such-pre`", "qwen2"]);
    let mut kv = base("");
    kv.push(("tokenizer.ggml.eos_token_id", V::U32(100_000)));
    check(kv, &["tokenizer.ggml.eos_token_id", "out of range"]);
    let mut kv = base("");
    kv.push(("tokenizer.ggml.bos_token_id", V::Str("one")));
    check(kv, &["tokenizer.ggml.bos_token_id"]);
    let mut kv = base("tokenizer.ggml.model");
    kv.push(("tokenizer.ggml.model", V::Str("rwkv")));
    check(kv, &["unsupported tokenizer model `rwkv`"]);
    let mut kv = base("tokenizer.ggml.tokens");
    kv.push(("tokenizer.ggml.tokens", V::Str("not an array")));
    check(kv, &["tokenizer.ggml.tokens", "array"]);
    let mut kv = base("tokenizer.ggml.tokens");
    kv.push(("tokenizer.ggml.tokens", V::I32s(vec![1, 2])));
    check(kv, &["tokenizer.ggml.tokens", "expected an array of strings"]);
    let mut kv = base("tokenizer.ggml.tokens");
    kv.push(("tokenizer.ggml.tokens", V::Strs(vec![])));
    check(kv, &["empty"]);
    // Negative ids mean "none".
    let mut kv = base("");
    kv.push(("tokenizer.ggml.padding_token_id", V::I32(-1)));
    kv.push(("tokenizer.ggml.bos_token_id", V::I32(-1)));
    assert_eq!(load(kv).unwrap().bos_id(), None);
}

#[test]
fn malformed_sentencepiece_metadata_is_a_typed_error() {
    let tokens = strs(&["<unk>", "a", "b"]);
    let p = problem(
        load(vec![
            ("tokenizer.ggml.model", V::Str("llama")),
            ("tokenizer.ggml.tokens", V::Strs(tokens.clone())),
            ("tokenizer.ggml.scores", V::F32s(vec![0.0, -1.0])),
        ])
        .unwrap_err(),
    );
    assert!(p.contains("tokenizer.ggml.scores") && p.contains("2 entries"), "{p}");
    let p = problem(
        load(vec![("tokenizer.ggml.model", V::Str("llama")), ("tokenizer.ggml.tokens", V::Strs(tokens))])
            .unwrap_err(),
    );
    assert!(p.contains("tokenizer.ggml.scores") && p.contains("missing"), "{p}");
}

// --- chat templates -----------------------------------------------------------------------

fn templated(template: &str) -> Tokenizer {
    gpt2("gpt-2", vec![]).unwrap().with_chat_template(Some(template.to_string()))
}

fn template_problem(r: Result<String>) -> String {
    match r {
        Err(Error::ChatTemplate { problem, .. }) => problem,
        other => panic!("expected Error::ChatTemplate, got {other:?}"),
    }
}

#[test]
fn chat_template_renders_chatml() {
    let t = templated(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m.content.strip() + '<|im_end|>\\n' }}{% endfor %}\
         {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    );
    let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "  Hi!  ")];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(!t.apply_chat_template(&msgs, false).unwrap().ends_with("assistant\n"));
}

#[test]
fn chat_template_sees_bos_eos_and_trims_blocks() {
    let t = templated("{{ bos_token }}\n{% for m in messages %}\n  {{ m.content }}|\n{% endfor %}{{ eos_token }}");
    let out = t.apply_chat_template(&[ChatMessage::new("user", "x")], false).unwrap();
    assert_eq!(out, "<|im_start|>\n  x|\n<|im_end|>");
}

#[test]
fn chat_template_errors_are_chat_template_errors() {
    let t =
        templated("{% if messages[0].role != 'system' %}{{ raise_exception('System role required') }}{% endif %}");
    let p = template_problem(t.apply_chat_template(&[ChatMessage::new("user", "x")], true));
    assert!(p.contains("System role required"), "{p}");
    let t = templated("{% for %}");
    template_problem(t.apply_chat_template(&[], true));
    let t = gpt2("gpt-2", vec![]).unwrap();
    assert!(t.chat_template().is_none());
    let p = template_problem(t.apply_chat_template(&[], true));
    assert!(p.contains("no chat template"), "{p}");
}

#[test]
fn chat_template_helpers() {
    let t = templated("{{ {'b': [1, 2.5, none, true], 'a': 'x\"y'} | tojson }}|{{ [] | tojson }}|{{ strftime_now('%Y') | length }}");
    // (map literal keys come back sorted: minijinja without `preserve_order`)
    assert_eq!(t.apply_chat_template(&[], false).unwrap(), r#"{"a": "x\"y", "b": [1, 2.5, null, true]}|[]|4"#);
    let t = templated("{{ {'a': [1]} | tojson(indent=2) }}");
    assert_eq!(t.apply_chat_template(&[], false).unwrap(), "{\n  \"a\": [\n    1\n  ]\n}");
}

#[test]
fn strftime_formats_utc() {
    assert_eq!(
        strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %%", 0),
        "1970-01-01 00:00:00 Thu Thursday Jan January 001 70 %"
    );
    // 2024-03-01 13:05:09 UTC, a Friday in a leap year.
    assert_eq!(strftime("%d %b %Y, %I:%M %p, %A, day %j", 1_709_298_309), "01 Mar 2024, 01:05 PM, Friday, day 061");
    assert_eq!(strftime("%e|%Q", 1_709_298_309), " 1|%Q");
}

#[test]
fn byte_level_alphabet_round_trips() {
    let all: Vec<u8> = (0..=255).collect();
    let s = byte_level_encode(&all);
    assert_eq!(s.chars().count(), 256);
    assert_eq!(byte_level_decode(&s).unwrap(), all);
    assert_eq!(byte_level_encode(b" \n"), "ĠĊ");
    assert_eq!(byte_level_decode(" "), None);
    assert_eq!(parse_byte_token("<0x0A>"), Some(10));
    assert_eq!(parse_byte_token("<0x0A"), None);
}
