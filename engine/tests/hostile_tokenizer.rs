//! Tokenizers and chat templates are untrusted input. Hostile chat templates (endless loops,
//! exponential strings by every operator and filter that can grow one, deep recursion, huge
//! sources) end in a typed error naming the limit within 5 s and without allocating more than
//! 256 MB (a counting allocator measures the peak); malformed tokenizer.json files and GGUF
//! vocabularies are typed errors; and seeded structure-aware fuzzing of both builders and of the
//! template renderer finds no panic. The fuzz targets live in `hostile_tokenizer/targets.rs`,
//! shared with `examples/fuzz_tokenizer.rs`.

#[path = "hostile_tokenizer/targets.rs"]
mod targets;

use engine::gguf::Gguf;
use engine::tokenizer::{ChatMessage, TemplateLimits, Tokenizer};
use engine::Error;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use targets::{gguf_bytes, Meta};

/// Live heap bytes and their high-water mark.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tests run one at a time so the allocation peak of one is not another's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, returning its result, its time, and the peak heap growth during it.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let out = f();
    (out, t.elapsed(), PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn tiny_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::open(targets::fixtures().join("tiny/qwen2.gguf")).unwrap()).unwrap()
}

fn render(template: &str, limits: TemplateLimits) -> engine::Result<String> {
    let tok = tiny_tokenizer().with_chat_template(Some(template.to_string())).with_template_limits(limits);
    tok.apply_chat_template(&[ChatMessage::new("user", "hello")], true)
}

const MB: usize = 1 << 20;

/// Every hostile template, with the limit it must hit (`None`: any typed chat-template error).
fn hostile() -> Vec<(&'static str, String, Option<&'static str>)> {
    let doubling = |step: &str| {
        format!("{{% set ns = namespace(s='ab') %}}{{% for i in range(60) %}}{{% set ns.s = {step} %}}{{% endfor %}}{{{{ ns.s }}}}")
    };
    vec![
        ("nested loops of 10^10 iterations", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into(), Some("fuel")),
        ("a range of 10^10", "{% for i in range(10000000000) %}x{% endfor %}".into(), None),
        ("an endless recursive loop", "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}".into(), Some("recursion")),
        ("doubling by ~", doubling("ns.s ~ ns.s"), Some("bytes")),
        ("doubling by +", doubling("ns.s + ns.s"), Some("bytes")),
        ("doubling by *", doubling("ns.s * 2"), Some("bytes")),
        ("one huge *", "{{ 'ab' * 99999999 }}".into(), Some("bytes")),
        ("doubling by the replace filter", doubling("ns.s|replace('a', ns.s)"), Some("bytes")),
        ("doubling by str.replace", doubling("ns.s.replace('a', ns.s)"), Some("bytes")),
        ("doubling by the join filter", doubling("[ns.s, ns.s]|join"), Some("bytes")),
        ("doubling by str.join", doubling("ns.s.join([ns.s, ns.s])"), Some("bytes")),
        ("doubling by format", doubling("'%s%s'|format(ns.s, ns.s)"), Some("bytes")),
        ("doubling by a set block", "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}".into(), Some("output size")),
        ("doubling by a recursive macro", "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ d('ab', 40) }}".into(), Some("bytes")),
        ("doubling by a macro's output", "{% macro d(n) %}{% if n > 0 %}{{ d(n - 1) }}{{ d(n - 1) }}{% else %}ab{% endif %}{% endmacro %}{{ d(40) }}".into(), None),
        ("a list doubled then printed", "{% set ns = namespace(l=['x' * 100000]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|string }}".into(), Some("bytes")),
        ("a list of references printed", "{% set b = 'x' * 1000000 %}{{ ([b] * 70)|string }}".into(), Some("bytes")),
        ("a list of references concatenated", "{% set b = 'x' * 1000000 %}{{ ([b] * 70) ~ '' }}".into(), Some("bytes")),
        ("a list of references as JSON", "{% set b = 'x' * 1000000 %}{{ ([b] * 70)|tojson }}".into(), Some("bytes")),
        ("a list of references emitted", "{% set b = 'x' * 1000000 %}{{ [b] * 70 }}".into(), Some("bytes")),
        ("a list doubled then joined", "{% set ns = namespace(l=['x' * 100000]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|join(',') }}".into(), Some("bytes")),
        ("distinct strings kept alive", "{% set ns = namespace(l=[]) %}{% for i in range(99999) %}{% set ns.l = ns.l + ['x' * 10000 ~ i] %}{% endfor %}".into(), Some("bytes")),
        ("a huge indent", "{{ ('a\n' * 1000)|indent(100000000) }}".into(), Some("bytes")),
        ("a huge format width", "{{ '%999999999s'|format('x') }}".into(), Some("bytes")),
        ("a huge tojson indent", "{{ [[[[1, 2, 3]]]]|tojson(indent=100000000) }}".into(), Some("bytes")),
        ("an output flood", "{% for i in range(99999) %}{% for j in range(99999) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}".into(), Some("output size")),
        ("literal text in a loop", format!("{{% for i in range(99999) %}}{}{{% endfor %}}", "x".repeat(4096)), Some("output size")),
        ("deep macro recursion", "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}".into(), Some("recursion")),
        ("a huge literal", "x".repeat(2 * MB), Some("source size")),
        ("slices of a big string kept alive", "{% set s = 'x' * 8000000 %}{% set ns = namespace(l=[]) %}{% for i in range(99999) %}{% set ns.l = ns.l + [s[i:]] %}{% endfor %}".into(), Some("bytes")),
        ("comparing big strings in a loop", "{% set s = 'x' * 30000000 %}{% set t = 'x' * 30000000 %}{% for i in range(99999) %}{% for j in range(99) %}{% if s == t %}{% endif %}{% endfor %}{% endfor %}".into(), Some("bytes")),
        ("sorting a big list in a loop", "{% set l = range(99999)|list %}{% for i in range(99999) %}{{ (l|sort|first) ~ '' }}{% endfor %}".into(), Some("bytes")),
        ("testing big strings in a loop", "{% set s = 'x' * 30000000 %}{% for i in range(99999) %}{% if s is eq(s ~ '') %}{% endif %}{% endfor %}".into(), Some("bytes")),
        ("a method scanning a big string in a loop", "{% set s = 'x' * 30000000 %}{% for i in range(99999) %}{{ s.count('y') }}{% endfor %}".into(), Some("bytes")),
        ("scanning a big string in a loop", "{% set s = 'x' * 8000000 %}{% for i in range(99999) %}{% if 'y' in s %}{% endif %}{% endfor %}".into(), Some("bytes")),
    ]
}

#[test]
fn hostile_templates_end_in_a_limit_error_quickly_and_in_bounded_memory() {
    let _g = serial();
    let limits = TemplateLimits::default();
    for (name, template, limit) in hostile() {
        let (result, took, peak) = measured(|| render(&template, limits));
        let err = result.expect_err(name);
        match (limit, &err) {
            (Some(want), Error::ChatTemplateLimit { limit, origin, .. }) => {
                assert_eq!(limit, &want, "{name}: {err}");
                assert!(origin.ends_with("qwen2.gguf"), "{name}: the error names the template's origin: {err}");
            }
            (None, Error::ChatTemplateLimit { .. } | Error::ChatTemplate { .. }) => {}
            _ => panic!("{name}: expected the {limit:?} limit, got {err}"),
        }
        assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
        assert!(peak < 256 * MB, "{name}: peak allocation {} MB", peak / MB);
        eprintln!("{name}: {err} ({took:?}, peak {:.1} MB)", peak as f64 / MB as f64);
    }
}

#[test]
fn limits_are_settable_and_real_templates_render_within_them() {
    let _g = serial();
    let messages = [ChatMessage::new("system", "You are helpful."), ChatMessage::new("user", "Write hello world in Python.")];
    let expected = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWrite hello world in Python.<|im_end|>\n<|im_start|>assistant\n";
    for template in &targets::TEMPLATES[..2] {
        let tok = tiny_tokenizer().with_chat_template(Some(template.to_string()));
        assert_eq!(tok.template_limits(), &TemplateLimits::default());
        assert_eq!(tok.apply_chat_template(&messages, true).unwrap(), expected);
    }
    // TinyLlama's template concatenates with `+` and reads eos_token (here `<|endoftext|>`).
    let zephyr = tiny_tokenizer().with_chat_template(Some(targets::TEMPLATES[3].to_string()));
    let eos = zephyr.token_text(zephyr.eos_ids()[0]).unwrap();
    assert_eq!(
        zephyr.apply_chat_template(&messages, true).unwrap(),
        format!("<|system|>\nYou are helpful.{eos}\n<|user|>\nWrite hello world in Python.{eos}\n<|assistant|>\n")
    );
    // The same conversation under limits it just exceeds, one at a time.
    let chatml = tiny_tokenizer().with_chat_template(Some(targets::TEMPLATES[1].to_string()));
    let cases = [
        (TemplateLimits { max_source_bytes: 100, ..Default::default() }, "source size"),
        (TemplateLimits { fuel: 20, ..Default::default() }, "fuel"),
        (TemplateLimits { max_output_bytes: expected.len() - 1, ..Default::default() }, "output size"),
        (TemplateLimits { max_bytes: 50, ..Default::default() }, "bytes"),
    ];
    for (limits, want) in cases {
        let tok = chatml.clone().with_template_limits(limits);
        match tok.apply_chat_template(&messages, true) {
            Err(Error::ChatTemplateLimit { limit, .. }) => assert_eq!(limit, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    // Keyword arguments pass through the checks to the filters.
    let kwargs = chatml.clone().with_chat_template(Some("{{ 'a\nb'|indent(2, first=true) }}|{{ [1]|tojson(indent=2) }}|{{ '%s-%s'|format(1, 2) }}".into()));
    assert_eq!(kwargs.apply_chat_template(&messages, true).unwrap(), "  a\n  b|[\n  1\n]|1-2");
    let recursive = "{% macro r(n) %}{% if n > 0 %}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(10) }}";
    let tok = chatml.with_chat_template(Some(recursive.into()));
    assert!(tok.clone().apply_chat_template(&messages, true).is_ok(), "10 levels are within the default");
    match tok.with_template_limits(TemplateLimits { max_recursion: 5, ..Default::default() }).apply_chat_template(&messages, true) {
        Err(Error::ChatTemplateLimit { limit, .. }) => assert_eq!(limit, "recursion"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer building
// ---------------------------------------------------------------------------------------------

fn problem(r: engine::Result<Tokenizer>) -> String {
    match r {
        Err(e @ Error::Tokenizer { .. }) => e.to_string(),
        Err(e) => panic!("expected a tokenizer error, got {e}"),
        Ok(t) => panic!("expected an error, got {t:?}"),
    }
}

fn load_gguf(kv: Vec<(String, Meta)>) -> engine::Result<Tokenizer> {
    let path = targets::scratch("case.gguf");
    std::fs::write(&path, gguf_bytes(&kv)).unwrap();
    Tokenizer::from_gguf(&Gguf::open(&path)?)
}

fn edit(base: usize, key: &str, f: impl FnOnce(&mut Meta)) -> Vec<(String, Meta)> {
    let mut kv = targets::base_vocabularies()[base].clone();
    f(&mut kv.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key}")).1);
    kv
}

#[test]
fn malformed_gguf_vocabularies_are_typed_errors() {
    let _g = serial();
    // Base 0 is byte-level BPE (qwen2), base 2 SentencePiece (spm-draft).
    for base in [0, 2] {
        assert!(load_gguf(targets::base_vocabularies()[base].clone()).is_ok());
    }
    let cases: Vec<(&str, Vec<(String, Meta)>, &str)> = vec![
        ("empty vocabulary", edit(0, "tokenizer.ggml.tokens", |m| *m = Meta::Strs(vec![])), "the vocabulary is empty"),
        ("token not UTF-8", edit(0, "tokenizer.ggml.tokens", |m| if let Meta::Strs(a) = m { a[5] = vec![b'a', 0xff] }), "`tokenizer.ggml.tokens`: entry 5 is not valid UTF-8"),
        ("merge not UTF-8", edit(0, "tokenizer.ggml.merges", |m| if let Meta::Strs(a) = m { a[0] = vec![0xc3, b' ', b'a'] }), "entry 0 is not valid UTF-8"),
        ("types shorter than tokens", edit(0, "tokenizer.ggml.token_type", |m| if let Meta::I32s(a) = m { a.pop(); }), "has 259 entries but `tokenizer.ggml.tokens` has 260"),
        ("unknown token type", edit(0, "tokenizer.ggml.token_type", |m| if let Meta::I32s(a) = m { a[3] = 99 }), "unknown token type 99 for id 3"),
        ("scores shorter than tokens", edit(2, "tokenizer.ggml.scores", |m| if let Meta::F32s(a) = m { a.truncate(10) }), "has 10 entries"),
        ("bos out of range", edit(0, "tokenizer.ggml.bos_token_id", |m| *m = Meta::I32(260)), "token id 260 is out of range"),
        ("eos out of range", edit(2, "tokenizer.ggml.eos_token_id", |m| *m = Meta::I32(i32::MAX)), "out of range"),
        ("unk out of range", edit(2, "tokenizer.ggml.unknown_token_id", |m| *m = Meta::I32(321)), "token id 321 is out of range"),
        ("bos of the wrong type", edit(0, "tokenizer.ggml.bos_token_id", |m| *m = Meta::Str(b"1".to_vec())), "expected an integer token id"),
        ("tokens of the wrong type", edit(0, "tokenizer.ggml.tokens", |m| *m = Meta::I32s(vec![1, 2])), "expected an array of strings"),
        ("malformed merge", edit(0, "tokenizer.ggml.merges", |m| if let Meta::Strs(a) = m { a[0] = b"nospace".to_vec() }), "is not two tokens separated by a space"),
        ("unknown model", edit(0, "tokenizer.ggml.model", |m| *m = Meta::Str(b"wordpiece".to_vec())), "unsupported tokenizer model"),
        ("unknown pre-tokenizer", edit(0, "tokenizer.ggml.pre", |m| *m = Meta::Str(b"nope".to_vec())), "unsupported pre-tokenizer"),
    ];
    for (name, kv, want) in cases {
        let p = problem(load_gguf(kv));
        assert!(p.contains(want), "{name}: {p}");
        assert!(p.contains("case.gguf"), "{name}: the error names the file: {p}");
    }
    // Merges naming tokens the vocabulary lacks are inert, as in llama.cpp (not an error).
    let mut kv = targets::base_vocabularies()[0].clone();
    if let Some((_, Meta::Strs(a))) = kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.merges") {
        a.push(b"zzz qqq".to_vec());
    }
    let tok = load_gguf(kv).unwrap();
    assert_eq!(tok.decode(&tok.encode("hello", false).unwrap()).unwrap(), "hello");
    targets::remove_scratch();
}

fn write_json_pair(tokenizer: &[u8], config: Option<&[u8]>) -> (std::path::PathBuf, Option<std::path::PathBuf>) {
    let t = targets::scratch("t.json");
    std::fs::write(&t, tokenizer).unwrap();
    let c = config.map(|c| {
        let p = targets::scratch("c.json");
        std::fs::write(&p, c).unwrap();
        p
    });
    (t, c)
}

#[test]
fn malformed_tokenizer_json_is_a_typed_error() {
    let _g = serial();
    let base = targets::base_tokenizer_jsons()
        .iter()
        .find(|j| j["added_tokens"].as_array().is_some_and(|a| !a.is_empty()))
        .expect("a base with added (special) tokens")
        .clone();
    let ok = serde_json::to_vec(&base).unwrap();
    let (t, _) = write_json_pair(&ok, None);
    assert!(Tokenizer::from_json_file(&t, None).is_ok());

    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut far_id = base.clone();
    far_id["model"]["vocab"]["a"] = serde_json::json!(4_000_000_000u64);
    let mut added_far = base.clone();
    added_far["added_tokens"][0]["id"] = serde_json::json!(3_000_000_000u64);
    added_far["added_tokens"][0]["content"] = serde_json::json!("<|not in the vocabulary|>");
    // Regressions found by the fuzz target: inputs on which `tokenizers` itself panics (a syntax
    // error inside the decoder reaches an `expect`; a subword prefix longer than a merge's
    // second half is sliced past its end).
    let mut bad_decoder = base.clone();
    bad_decoder["decoder"] = serde_json::json!([1, 2]);
    let mut bad_prefix = base.clone();
    bad_prefix["model"]["continuing_subword_prefix"] = serde_json::json!("########");
    let cases: Vec<(&str, Vec<u8>, Option<Vec<u8>>, &str)> = vec![
        ("a decoder of the wrong shape", serde_json::to_vec(&bad_decoder).unwrap(), None, "cannot parse tokenizer.json"),
        ("a syntax error inside the decoder", String::from_utf8(ok.clone()).unwrap().replacen("\"decoder\":{\"type\":", "\"decoder\":{\"type\" ", 1).into_bytes(), None, "expected `:`"),
        ("a subword prefix longer than the merges", serde_json::to_vec(&bad_prefix).unwrap(), None, "panicking"),
        ("not JSON", b"{\"model\": ".to_vec(), None, "cannot parse tokenizer.json"),
        ("deeply nested tokenizer.json", nested.clone().into_bytes(), None, "cannot parse tokenizer.json"),
        ("deeply nested config", ok.clone(), Some(nested.into_bytes()), "invalid JSON"),
        ("config not UTF-8", ok.clone(), Some(b"{\"bos_token\": \"\xff\"}".to_vec()), "invalid JSON"),
        ("an id far past the vocabulary", serde_json::to_vec(&far_id).unwrap(), None, "token id 4000000000 is out of range"),
    ];
    for (name, tokenizer, config, want) in cases {
        let (t, c) = write_json_pair(&tokenizer, config.as_deref());
        let (r, took, peak) = measured(|| Tokenizer::from_json_file(&t, c.as_deref()));
        let p = match r {
            Ok(tok) => panic!("{name}: expected an error, got {tok:?}"),
            r => problem(r),
        };
        assert!(p.contains(want), "{name}: {p}");
        assert!(took < Duration::from_secs(5) && peak < 256 * MB, "{name}: {took:?}, {} MB", peak / MB);
    }
    // An added token's stated id far past the vocabulary: `tokenizers` renumbers it, and no
    // table of three billion entries is allocated.
    let (t2, _) = write_json_pair(&serde_json::to_vec(&added_far).unwrap(), None);
    let (r, _, peak) = measured(|| Tokenizer::from_json_file(&t2, None));
    assert_eq!(r.unwrap().vocab_size(), base["model"]["vocab"].as_object().unwrap().len() + 1);
    assert!(peak < 16 * MB);
    // Files past the size caps are refused before they are read.
    let big = targets::scratch("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(2 << 30).unwrap();
    let (r, _, peak) = measured(|| Tokenizer::from_json_file(&big, None));
    let p = problem(r);
    assert!(p.contains("larger than") && peak < 16 * MB, "{p}");
    let (r, _, _) = measured(|| Tokenizer::from_json_file(&t, Some(&big)));
    assert!(problem(r).contains("larger than"));
    targets::remove_scratch();
}

// ---------------------------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------------------------

/// Runs `target` on `cases` seeded cases; a panic fails with the case number to replay
/// (`cargo run --release --example fuzz_tokenizer -- --target T --seed S --case N`).
fn fuzz(name: &str, cases: u64, regressions: &[u64], target: fn(&mut targets::Gen)) {
    let seed = 0x5eed_70c3;
    let t = Instant::now();
    for case in (0..cases).chain(regressions.iter().copied()) {
        let mut g = targets::gen(seed, case);
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&mut g))) {
            panic!("{name}: case {case} (seed {seed:#x}) panicked: {e:?}");
        }
    }
    eprintln!("{name}: {cases} cases in {:?}", t.elapsed());
    targets::remove_scratch();
}

#[test]
fn fuzz_tokenizer_builders() {
    let _g = serial();
    fuzz("gguf vocabulary", 10_000, &[], targets::gguf_vocab_case);
    fuzz("tokenizer.json", 10_000, &[], targets::tokenizer_json_case);
    // Cases of the example's `tokenizer` target (10^6 run) that panicked in `tokenizers`' Strip
    // decoder before decoding was guarded.
    fuzz("tokenizer regressions", 0, &[358_996, 607_005, 655_818, 826_291, 961_544], targets::tokenizer_case);
}

#[test]
fn fuzz_chat_templates() {
    let _g = serial();
    fuzz("chat template", 10_000, &[], targets::template_case);
}
