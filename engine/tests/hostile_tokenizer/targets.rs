//! Structure-aware fuzz targets for tokenizer building and chat-template rendering, shared by
//! `tests/hostile_tokenizer.rs` (a fixed number of seeded cases in the test command) and
//! `examples/fuzz_tokenizer.rs` (as many as asked). A target takes a case number's generator,
//! builds one hostile input from the real fixtures, and runs it; any panic is a failure, any
//! `Err` an accepted outcome.
//!
//! Inputs are generated with the engine's ChaCha generator rather than a fuzzing crate: each
//! mutation knows the format (JSON values, GGUF metadata arrays, Jinja tokens), which is the
//! part a byte-level fuzzer would not supply.

#![allow(dead_code)]

use engine::gguf::{Gguf, MetaValue};
use engine::tokenizer::{ChatMessage, TemplateLimits, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub type Gen = ChaCha8Rng;

pub fn gen(seed: u64, case: u64) -> Gen {
    let mut g = ChaCha8Rng::seed_from_u64(seed);
    g.set_stream(case);
    g
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

// ---------------------------------------------------------------------------------------------
// Metadata-only GGUF writer.
// ---------------------------------------------------------------------------------------------

/// A metadata value as the writer emits it.
#[derive(Clone, Debug)]
pub enum Meta {
    Str(Vec<u8>),
    U32(u32),
    I32(i32),
    I64(i64),
    Bool(bool),
    Strs(Vec<Vec<u8>>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// GGUF v3 bytes with `kv` and no tensors.
pub fn gguf_bytes(kv: &[(String, Meta)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k.as_bytes());
        let array = |out: &mut Vec<u8>, elem: u32, n: usize| {
            out.extend(9u32.to_le_bytes());
            out.extend(elem.to_le_bytes());
            out.extend((n as u64).to_le_bytes());
        };
        match v {
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::I32(x) => {
                out.extend(5u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::I64(x) => {
                out.extend(11u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(*b as u8);
            }
            Meta::Strs(a) => {
                array(&mut out, 8, a.len());
                for s in a {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(a) => {
                array(&mut out, 5, a.len());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
            Meta::F32s(a) => {
                array(&mut out, 6, a.len());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    out
}

/// A per-thread scratch file (the loaders read paths), in memory where the system has a tmpfs:
/// rewriting a file on a virtual disk costs milliseconds, a hundred times the case itself.
pub fn scratch(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = root.join(format!("specdec-hostile-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    dir.join(format!("{thread}-{name}"))
}

/// Removes this process's scratch files.
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch("x").parent().unwrap());
}

/// The tokenizer metadata of a fixture GGUF, as writer values.
pub fn vocab_metadata(path: &Path) -> Vec<(String, Meta)> {
    let g = Gguf::open(path).unwrap();
    let mut kv = Vec::new();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.chat_template",
    ] {
        let Some(v) = g.get(key) else { continue };
        let meta = match v {
            MetaValue::String(s) => Meta::Str(s.as_bytes().to_vec()),
            MetaValue::Bool(b) => Meta::Bool(*b),
            MetaValue::Array(a) => match a.strings() {
                Some(s) => Meta::Strs(s.iter().map(|s| s.as_bytes().to_vec()).collect()),
                None => match a.iter().next() {
                    Some(MetaValue::F32(_)) | Some(MetaValue::F64(_)) => {
                        Meta::F32s(a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                    }
                    _ => Meta::I32s(a.iter().map(|x| x.as_i64().unwrap_or(0) as i32).collect()),
                },
            },
            other => match other.as_i64() {
                Some(i) => Meta::I32(i as i32),
                None => continue,
            },
        };
        kv.push((key.to_string(), meta));
    }
    kv
}

pub fn base_vocabularies() -> &'static [Vec<(String, Meta)>] {
    static BASES: OnceLock<Vec<Vec<(String, Meta)>>> = OnceLock::new();
    BASES.get_or_init(|| {
        ["tiny/qwen2.gguf", "tiny/llama.gguf", "cross/spm-draft.gguf", "cross/bpe-target.gguf"]
            .iter()
            .map(|f| vocab_metadata(&fixtures().join(f)))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

const INTERESTING_INTS: &[i64] =
    &[-1, 0, 1, 2, 7, 255, 256, 259, 260, 321, 65535, i32::MAX as i64, i32::MIN as i64, u32::MAX as i64, -4096];

fn random_bytes(g: &mut Gen, max: usize) -> Vec<u8> {
    let n = g.random_range(0..=max);
    match g.random_range(0..4) {
        // Valid UTF-8 from a mix of scripts and the byte-level alphabet.
        0 => {
            let alphabet = ["a", "Ġ", "▁", "é", "日", "🎉", " ", "\n", "<", "|", ">", "<0x0A>", "Ċ", "\u{FFFD}"];
            (0..n).flat_map(|_| alphabet[g.random_range(0..alphabet.len())].bytes()).collect()
        }
        // Arbitrary bytes, usually not UTF-8.
        1 => (0..n).map(|_| g.random::<u8>()).collect(),
        // Lone continuation or truncated sequences.
        2 => (0..n).map(|i| if i % 2 == 0 { 0x80 | g.random::<u8>() & 0x3f } else { 0xe6 }).collect(),
        _ => b"a b".to_vec(),
    }
}

fn mutate_strings(g: &mut Gen, a: &mut Vec<Vec<u8>>, pool: &[Vec<u8>]) {
    for _ in 0..g.random_range(1..4) {
        let n = a.len();
        match g.random_range(0..8) {
            0 if n > 0 => {
                let i = g.random_range(0..n);
                a[i] = random_bytes(g, 12);
            }
            1 if n > 0 => {
                a.truncate(g.random_range(0..n));
            }
            2 if n > 0 => {
                let i = g.random_range(0..n);
                let j = g.random_range(0..n);
                a[i] = a[j].clone();
            }
            3 if !pool.is_empty() => {
                let x = pool[g.random_range(0..pool.len())].clone();
                let i = g.random_range(0..=n);
                a.insert(i, x);
            }
            4 if n > 0 => {
                // A merge-like entry joining two random entries of the pool.
                let i = g.random_range(0..n);
                let x = pool.get(g.random_range(0..pool.len().max(1))).cloned().unwrap_or_default();
                let mut m = x.clone();
                m.push(if g.random_bool(0.8) { b' ' } else { b'\t' });
                m.extend(random_bytes(g, 4));
                a[i] = m;
            }
            5 => a.clear(),
            6 if n > 0 => {
                let i = g.random_range(0..n);
                a[i].clear();
            }
            _ => a.push(random_bytes(g, 8)),
        }
    }
}

fn mutate_meta(g: &mut Gen, v: &mut Meta, pool: &[Vec<u8>]) {
    match v {
        Meta::Strs(a) => mutate_strings(g, a, pool),
        Meta::I32s(a) => {
            let n = a.len();
            match g.random_range(0..4) {
                0 if n > 0 => a.truncate(g.random_range(0..n)),
                1 if n > 0 => {
                    let i = g.random_range(0..n);
                    a[i] = INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())] as i32;
                }
                2 => a.push(g.random_range(-2..9)),
                _ if n > 0 => {
                    let i = g.random_range(0..n);
                    a[i] = g.random_range(-1..8);
                }
                _ => {}
            }
        }
        Meta::F32s(a) => {
            let n = a.len();
            match g.random_range(0..3) {
                0 if n > 0 => a.truncate(g.random_range(0..n)),
                1 if n > 0 => {
                    let i = g.random_range(0..n);
                    a[i] = [f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, -1e30][g.random_range(0..5)];
                }
                _ => a.push(g.random::<f32>()),
            }
        }
        Meta::I32(x) => *x = INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())] as i32,
        Meta::I64(x) => *x = INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())],
        Meta::U32(x) => *x = g.random(),
        Meta::Bool(b) => *b = !*b,
        Meta::Str(s) => {
            *s = match g.random_range(0..4) {
                0 => b"gpt2".to_vec(),
                1 => b"llama".to_vec(),
                2 if g.random_bool(0.1) => {
                    ["qwen2", "llama3", "tekken", "gpt-4o"][g.random_range(0..4)].as_bytes().to_vec()
                }
                2 => ["smollm", "default", "gpt-2", "unknown-pre"][g.random_range(0..4)].as_bytes().to_vec(),
                _ => random_bytes(g, 10),
            }
        }
    }
}

/// One mutated GGUF vocabulary (as metadata), from a real fixture vocabulary.
pub fn mutated_vocabulary(g: &mut Gen) -> Vec<(String, Meta)> {
    let bases = base_vocabularies();
    // Qwen2's regex pre-tokenizer costs milliseconds to compile: one case in twenty uses it.
    let base = if g.random_bool(0.05) { 0 } else { g.random_range(1..bases.len()) };
    let mut kv = bases[base].clone();
    let pool: Vec<Vec<u8>> = kv
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| match v {
            Meta::Strs(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_default();
    for _ in 0..g.random_range(1..4) {
        match g.random_range(0..10) {
            // Remove a key.
            0 if !kv.is_empty() => {
                let i = g.random_range(0..kv.len());
                kv.remove(i);
            }
            // Give a key a value of the wrong type.
            1 if !kv.is_empty() => {
                let i = g.random_range(0..kv.len());
                kv[i].1 = match g.random_range(0..4) {
                    0 => Meta::I64(-1),
                    1 => Meta::Str(random_bytes(g, 6)),
                    2 => Meta::I32s(vec![1, 2, 3]),
                    _ => Meta::Strs(vec![b"x".to_vec()]),
                };
            }
            // Add a special-token id that may be out of range.
            2 => {
                let key = ["bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "unknown_token_id"]
                    [g.random_range(0..5)];
                let v = INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())];
                kv.push((format!("tokenizer.ggml.{key}"), if g.random_bool(0.5) { Meta::I32(v as i32) } else { Meta::I64(v) }));
            }
            _ if !kv.is_empty() => {
                let i = g.random_range(0..kv.len());
                mutate_meta(g, &mut kv[i].1, &pool);
            }
            _ => {}
        }
    }
    kv
}

/// Target: build a tokenizer from a mutated GGUF vocabulary, then use it a little.
pub fn gguf_vocab_case(g: &mut Gen) {
    let kv = mutated_vocabulary(g);
    let path = scratch("vocab.gguf");
    std::fs::write(&path, gguf_bytes(&kv)).unwrap();
    let Ok(gguf) = Gguf::open(&path) else { return };
    if let Ok(tok) = Tokenizer::from_gguf(&gguf) {
        exercise(g, &tok);
    }
}

fn exercise(g: &mut Gen, tok: &Tokenizer) {
    let text = String::from_utf8_lossy(&random_bytes(g, 24)).into_owned();
    if let Ok(ids) = tok.encode(&text, true) {
        let _ = tok.decode(&ids);
        let mut stream = engine::tokenizer::StreamDecoder::new(tok);
        for &id in &ids {
            let _ = stream.push(id);
        }
        let _ = stream.flush();
    }
    let n = tok.vocab_size() as u32;
    let _ = tok.decode(&[g.random_range(0..n.saturating_add(2)), n]);
    let _ = tok.end_of_turn_id();
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json
// ---------------------------------------------------------------------------------------------

/// Real tokenizer.json texts: the fixture GGUF vocabularies serialized by `tokenizers`.
pub fn base_tokenizer_jsons() -> &'static [Value] {
    static BASES: OnceLock<Vec<Value>> = OnceLock::new();
    BASES.get_or_init(|| {
        ["tiny/llama.gguf", "cross/spm-draft.gguf", "cross/bpe-target.gguf"]
            .iter()
            .map(|f| {
                let tok = Tokenizer::from_gguf(&Gguf::open(fixtures().join(f)).unwrap()).unwrap();
                serde_json::from_str(&tok.hf().to_string(false).unwrap()).unwrap()
            })
            .collect()
    })
}

fn random_json_leaf(g: &mut Gen) -> Value {
    match g.random_range(0..7) {
        0 => Value::Null,
        1 => Value::Bool(g.random()),
        2 => INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())].into(),
        3 => serde_json::json!(1e300),
        4 => Value::String(String::from_utf8_lossy(&random_bytes(g, 8)).into_owned()),
        5 => serde_json::json!(["a", "b"]),
        _ => {
            let types = ["BPE", "WordPiece", "Unigram", "WordLevel", "ByteLevel", "Sequence", "Metaspace", "Split", "Replace"];
            serde_json::json!({ "type": types[g.random_range(0..types.len())] })
        }
    }
}

/// Applies one random edit somewhere in `v` (walking down a random path).
fn mutate_json(g: &mut Gen, v: &mut Value, depth: usize) {
    let descend = depth < 6 && g.random_bool(0.7);
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys[g.random_range(0..keys.len())].clone();
            if descend {
                mutate_json(g, map.get_mut(&key).unwrap(), depth + 1);
            } else {
                match g.random_range(0..3) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        map.insert(key, random_json_leaf(g));
                    }
                    _ => {
                        let val = map[&key].clone();
                        map.insert(format!("{key}{}", g.random_range(0..3)), val);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = g.random_range(0..a.len());
            if descend {
                mutate_json(g, &mut a[i], depth + 1);
            } else {
                match g.random_range(0..4) {
                    0 => {
                        a.remove(i);
                    }
                    1 => {
                        let x = a[g.random_range(0..a.len())].clone();
                        a.insert(i, x);
                    }
                    2 => a.truncate(i),
                    _ => a[i] = random_json_leaf(g),
                }
            }
        }
        _ => *v = random_json_leaf(g),
    }
}

/// The vocabulary's ids are where out-of-range and duplicate ids hide: edit them directly.
fn mutate_vocab_ids(g: &mut Gen, v: &mut Value) {
    if let Some(Value::Object(vocab)) = v.pointer_mut("/model/vocab") {
        let keys: Vec<String> = vocab.keys().cloned().collect();
        if let Some(k) = keys.get(g.random_range(0..keys.len().max(1))) {
            vocab.insert(k.clone(), INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())].into());
        }
    }
    if let Some(Value::Array(added)) = v.pointer_mut("/added_tokens") {
        if let Some(Value::Object(t)) = added.first_mut() {
            t.insert("id".into(), INTERESTING_INTS[g.random_range(0..INTERESTING_INTS.len())].into());
        }
    }
}

/// Target: load a mutated tokenizer.json (with a mutated tokenizer_config.json).
pub fn tokenizer_json_case(g: &mut Gen) {
    let bases = base_tokenizer_jsons();
    let mut json = bases[g.random_range(0..bases.len())].clone();
    for _ in 0..g.random_range(1..4) {
        if g.random_bool(0.3) {
            mutate_vocab_ids(g, &mut json);
        } else {
            mutate_json(g, &mut json, 0);
        }
    }
    let mut text = serde_json::to_vec(&json).unwrap();
    if g.random_bool(0.1) {
        // Byte-level damage too: truncation, a flipped byte.
        let n = text.len();
        match g.random_range(0..2) {
            0 => text.truncate(g.random_range(0..n)),
            _ => {
                let i = g.random_range(0..n);
                text[i] ^= 1 << g.random_range(0..8);
            }
        }
    }
    let mut config = serde_json::json!({
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>"},
        "add_bos_token": false,
        "chat_template": TEMPLATES[0],
    });
    if g.random_bool(0.5) {
        mutate_json(g, &mut config, 0);
    }
    let path = scratch("tokenizer.json");
    let config_path = scratch("tokenizer_config.json");
    std::fs::write(&path, &text).unwrap();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    if let Ok(tok) = Tokenizer::from_json_file(&path, Some(&config_path)) {
        exercise(g, &tok);
    }
}

/// Target: either tokenizer builder.
pub fn tokenizer_case(g: &mut Gen) {
    if g.random_bool(0.5) {
        gguf_vocab_case(g)
    } else {
        tokenizer_json_case(g)
    }
}

// ---------------------------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------------------------

/// Real chat templates: SmolLM2's (ChatML), Qwen2.5's (ChatML with tools), a Gemma-3 style and a
/// TinyLlama (Zephyr) style one.
pub const TEMPLATES: &[&str] = &[
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}",
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
];

/// Jinja fragments the template mutator splices in: syntax, the growth operators, loops, macros.
const FRAGMENTS: &[&str] = &[
    "{{ ", " }}", "{% ", " %}", "{%- ", " -%}", "{% endfor %}", "{% endif %}", "{% else %}",
    "{% for m in messages %}", "{% for i in range(99999) %}", "{% if loop.last %}", "{% set ns = namespace(s='ab') %}",
    "{% set ns.s = ns.s ~ ns.s %}", "{% set ns.s = ns.s + ns.s %}", "{{ ns.s }}", " ~ ", " + ", " * 3 ", " * 99999999 ",
    "|join(messages|string)", "|replace('a', 'bb')", "|indent(40)", "|tojson", "|tojson(indent=9)", "|string", "|length",
    "|upper", "|trim", ".replace('', 'xx')", ".split()", "messages", "message['content']", "m.content", "loop.index",
    "{% macro f(x) %}{{ f(x ~ x) }}{% endmacro %}{{ f('ab') }}", "{{ raise_exception('no') }}", "{{ strftime_now('%Y') }}",
    "'%99s'|format(1)", "{% for x in messages recursive %}{{ loop(messages) }}{% endfor %}", "[1, 2] + [3]", "{}",
    "{% set x %}{{ messages }}{% endset %}", "{% filter upper %}", "{% endfilter %}", "(", ")", "[", "]", "'", "\"",
];

fn mutate_template(g: &mut Gen) -> String {
    let mut t: Vec<u8> = TEMPLATES[g.random_range(0..TEMPLATES.len())].as_bytes().to_vec();
    for _ in 0..g.random_range(1..6) {
        let n = t.len();
        let i = g.random_range(0..=n);
        match g.random_range(0..5) {
            0 => {
                let f = FRAGMENTS[g.random_range(0..FRAGMENTS.len())];
                t.splice(i..i, f.bytes());
            }
            1 if n > 0 => {
                let j = (i + g.random_range(1..40)).min(n);
                t.drain(i.min(n)..j);
            }
            2 if n > 0 => {
                // Duplicate a span (repeats blocks, loops, tags).
                let j = (i + g.random_range(1..120)).min(n);
                let span: Vec<u8> = t[i.min(n)..j].to_vec();
                t.splice(j..j, span);
            }
            3 => {
                let mut s = String::new();
                for _ in 0..g.random_range(1..4) {
                    s.push_str(FRAGMENTS[g.random_range(0..FRAGMENTS.len())]);
                }
                t.splice(i..i, s.bytes());
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&t).into_owned()
}

pub fn random_messages(g: &mut Gen) -> Vec<ChatMessage> {
    let roles = ["system", "user", "assistant", "tool", "", "{{ x }}"];
    (0..g.random_range(0..6))
        .map(|_| {
            let role = roles[g.random_range(0..roles.len())];
            let content = match g.random_range(0..4) {
                0 => String::from_utf8_lossy(&random_bytes(g, 30)).into_owned(),
                1 => "{{ messages }} {% for %} <|im_end|>".to_string(),
                2 => "x".repeat(g.random_range(0..2000)),
                _ => "Write hello world in Python.".to_string(),
            };
            ChatMessage::new(role, content)
        })
        .collect()
}

/// Small limits for the template target: every case stays fast, and exceeding them is routine.
pub fn fuzz_limits() -> TemplateLimits {
    TemplateLimits { fuel: 20_000, max_bytes: 4 << 20, max_output_bytes: 1 << 20, ..TemplateLimits::default() }
}

fn template_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    // Not Qwen2's: cloning its regex pre-tokenizer recompiles it.
    TOK.get_or_init(|| Tokenizer::from_gguf(&Gguf::open(fixtures().join("tiny/llama.gguf")).unwrap()).unwrap())
}

/// Target: render a mutated real template with random messages under small limits.
pub fn template_case(g: &mut Gen) {
    let template = mutate_template(g);
    let messages = random_messages(g);
    let tok = template_tokenizer().clone().with_chat_template(Some(template)).with_template_limits(fuzz_limits());
    let _ = tok.apply_chat_template(&messages, g.random());
}
