//! Model files are untrusted input. Hand-built hostile files, derived from the valid fixtures,
//! must each be refused with a typed `engine::Error` of the expected class whose message names the
//! file — never a panic, hang or huge allocation — and structure-aware fuzzing of the GGUF reader,
//! the safetensors loader and `config.json` (10⁴ seeded cases each) must never panic.

mod fuzzing;

use burn::tensor::Device;
use engine::gguf::Gguf;
use engine::safetensors::HfModelDir;
use engine::Error;
use fuzzing::{gguf_fields, Corpus, Field, FieldKind, Outcome, Target, TARGETS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A scratch directory for this test binary, removed and recreated per test name.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-hostile-{}", std::process::id())).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The expected class of error.
#[derive(Debug, Clone, Copy)]
enum Class {
    Gguf,
    Dtype,
    Metadata,
    Shape,
    Arch,
    Safetensors,
    Io,
}

impl Class {
    fn matches(self, e: &Error) -> bool {
        matches!(
            (self, e),
            (Class::Gguf, Error::Gguf { .. })
                | (Class::Dtype, Error::UnsupportedDtype { .. })
                | (Class::Metadata, Error::Metadata { .. })
                | (Class::Shape, Error::TensorShape { .. })
                | (Class::Arch, Error::UnsupportedArchitecture { .. })
                | (Class::Safetensors, Error::Safetensors { .. })
                | (Class::Io, Error::Io { .. })
        )
    }
}

/// Opens and loads a GGUF file the way `specdec generate` does (tokenizer aside).
fn load_gguf_file(path: &Path) -> Result<(), Error> {
    let g = Gguf::open(path)?;
    engine::model::load_gguf(&g, &Device::flex()).map(drop)
}

fn load_hf_dir(dir: &Path) -> Result<(), Error> {
    let hf = HfModelDir::open(dir)?;
    engine::model::load_hf(&hf, &Device::flex()).map(drop)
}

/// Checks one case: refused, with the class and a message naming `file` (and `needle`).
fn expect(case: &str, result: Result<(), Error>, class: Class, file: &str, needle: &str) {
    let e = match result {
        Ok(()) => panic!("{case}: hostile input was accepted"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(class.matches(&e), "{case}: expected a {class:?} error, got {e:?}");
    assert!(msg.contains(file), "{case}: the message does not name `{file}`: {msg}");
    assert!(msg.contains(needle), "{case}: the message does not say `{needle}`: {msg}");
}

// ---------------------------------------------------------------------------------------------
// GGUF

struct GgufSeed {
    bytes: Vec<u8>,
    fields: Vec<Field>,
    header_end: usize,
}

impl GgufSeed {
    fn new(name: &str) -> Self {
        let bytes = std::fs::read(fuzzing::fixtures().join("tiny").join(name)).unwrap();
        let (fields, header_end) = gguf_fields(&bytes);
        GgufSeed { bytes, fields, header_end }
    }

    fn nth(&self, kind: FieldKind, n: usize) -> Field {
        *self.fields.iter().filter(|f| f.kind == kind).nth(n).unwrap_or_else(|| panic!("no {kind:?} #{n}"))
    }

    fn string_at(&self, f: Field) -> &[u8] {
        let n = u64::from_le_bytes(self.bytes[f.at..f.at + 8].try_into().unwrap()) as usize;
        &self.bytes[f.at + 8..f.at + 8 + n]
    }

    /// The index in `fields` of the length field of key or tensor name `name`.
    fn name_field(&self, name: &str) -> usize {
        self.fields
            .iter()
            .position(|f| f.kind == FieldKind::StringLen && self.string_at(*f) == name.as_bytes())
            .unwrap_or_else(|| panic!("no `{name}` in the fixture"))
    }

    /// The `n`th field of `kind` after key or tensor name `name`.
    fn after(&self, name: &str, kind: FieldKind, n: usize) -> Field {
        *self.fields[self.name_field(name)..].iter().filter(|f| f.kind == kind).nth(n).unwrap()
    }

    fn with(&self, edits: &[(Field, u64)]) -> Vec<u8> {
        let mut b = self.bytes.clone();
        for (f, v) in edits {
            b[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
        }
        b
    }
}

/// Replaces the bytes of string `from` (the first occurrence after the header start) with `to`
/// of the same length.
fn rename(b: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
}

/// A GGUF whose only metadata value is an array nested `depth` deep.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'x');
    b.extend(9u32.to_le_bytes());
    for _ in 0..depth {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b
}

#[test]
fn hostile_gguf_files_are_refused_naming_the_file() {
    let dir = scratch("gguf");
    let s = GgufSeed::new("llama.gguf");
    let len = s.bytes.len() as u64;
    let q = "blk.0.attn_q.weight";
    let mut cases: Vec<(&str, Vec<u8>, Class, &str)> = vec![
        ("bad magic", { let mut b = s.bytes.clone(); b[..4].copy_from_slice(b"GGML"); b }, Class::Gguf, "magic"),
        ("version 1", s.with(&[(s.nth(FieldKind::Version, 0), 1)]), Class::Gguf, "version"),
        ("version u32::MAX", s.with(&[(s.nth(FieldKind::Version, 0), u32::MAX as u64)]), Class::Gguf, "version"),
        ("tensor count 2^60", s.with(&[(s.nth(FieldKind::TensorCount, 0), 1 << 60)]), Class::Gguf, "tensor count"),
        ("tensor count 2^16", s.with(&[(s.nth(FieldKind::TensorCount, 0), 1 << 16)]), Class::Gguf, "tensor count"),
        ("metadata count u64::MAX", s.with(&[(s.nth(FieldKind::MetadataCount, 0), u64::MAX)]), Class::Gguf, "metadata count"),
        ("key length 2^62", s.with(&[(s.nth(FieldKind::StringLen, 0), 1 << 62)]), Class::Gguf, "length"),
        ("string value length 2^62", s.with(&[(s.after("general.architecture", FieldKind::StringLen, 1), 1 << 62)]), Class::Gguf, "length"),
        ("tensor name length past EOF", s.with(&[(s.name_field_at(q), len)]), Class::Gguf, "length"),
        ("array length 2^40", s.with(&[(s.nth(FieldKind::ArrayLen, 0), 1 << 40)]), Class::Gguf, "array length"),
        ("array length just past EOF", s.with(&[(s.nth(FieldKind::ArrayLen, 0), len)]), Class::Gguf, "array length"),
        ("arrays nested 100000 deep", nested_arrays(100_000), Class::Gguf, "nested"),
        ("unknown metadata type", s.with(&[(s.nth(FieldKind::ValueType, 0), 99)]), Class::Gguf, "unknown metadata value type"),
        ("unknown array element type", s.with(&[(s.nth(FieldKind::ArrayType, 0), 99)]), Class::Gguf, "unknown array element type"),
        ("unknown tensor type", s.with(&[(s.after(q, FieldKind::TensorType, 0), 200)]), Class::Dtype, "ggml type id 200"),
        ("zero dims", s.with(&[(s.after(q, FieldKind::TensorDims, 0), 0)]), Class::Gguf, "dimensions"),
        ("five dims", s.with(&[(s.after(q, FieldKind::TensorDims, 0), 5)]), Class::Gguf, "dimensions"),
        (
            "shape product overflow",
            s.with(&[(s.after(q, FieldKind::TensorDim, 0), 1 << 32), (s.after(q, FieldKind::TensorDim, 1), 1 << 32)]),
            Class::Gguf,
            "overflows",
        ),
        ("dims larger than the file", s.with(&[(s.after(q, FieldKind::TensorDim, 1), 1 << 20)]), Class::Gguf, "past the end"),
        ("offset past EOF", s.with(&[(s.after(q, FieldKind::TensorOffset, 0), len.next_multiple_of(32))]), Class::Gguf, "past the end"),
        ("offset overflowing u64", s.with(&[(s.after(q, FieldKind::TensorOffset, 0), u64::MAX - 31)]), Class::Gguf, "past the end"),
        ("misaligned offset", s.with(&[(s.after(q, FieldKind::TensorOffset, 0), 1)]), Class::Gguf, "not aligned"),
        (
            "overlapping tensors",
            s.with(&[(s.after("blk.0.attn_k.weight", FieldKind::TensorOffset, 0), s.offset_of(q))]),
            Class::Gguf,
            "overlap",
        ),
        ("duplicate tensor names", { let mut b = s.bytes.clone(); rename(&mut b[s.header_start_of("blk.0.attn_k.weight")..], "blk.0.attn_k.weight", q); b }, Class::Gguf, "duplicate tensor"),
        // Config from the header, checked before anything is sized from it.
        ("hidden size 2^32 - 4", s.with(&[(s.after("llama.embedding_length", FieldKind::Scalar, 0), u32::MAX as u64 - 3)]), Class::Metadata, "exceeds"),
        ("heads not dividing the width", s.with(&[(s.after("llama.attention.head_count", FieldKind::Scalar, 0), 3)]), Class::Metadata, "heads"),
        ("zero heads", s.with(&[(s.after("llama.attention.head_count", FieldKind::Scalar, 0), 0)]), Class::Metadata, "heads"),
        ("layers u32::MAX", s.with(&[(s.after("llama.block_count", FieldKind::Scalar, 0), u32::MAX as u64)]), Class::Metadata, "layers"),
        ("context u32::MAX", s.with(&[(s.after("llama.context_length", FieldKind::Scalar, 0), u32::MAX as u64)]), Class::Metadata, "context"),
        ("MLP width disagreeing with the tensors", s.with(&[(s.after("llama.feed_forward_length", FieldKind::Scalar, 0), 64)]), Class::Shape, "ffn_gate"),
        ("unknown architecture", { let mut b = s.bytes.clone(); rename(&mut b[s.header_start_of("general.architecture")..], "llama", "mamba"); b }, Class::Arch, "mamba"),
    ];
    // Duplicate metadata key: two keys of the same length, the second renamed to the first.
    let keys: Vec<String> = s
        .fields
        .windows(2)
        .filter(|w| w[0].kind == FieldKind::StringLen && w[1].kind == FieldKind::ValueType)
        .map(|w| String::from_utf8_lossy(s.string_at(w[0])).into_owned())
        .collect();
    let (a, b) = keys
        .iter()
        .enumerate()
        .find_map(|(i, a)| keys[i + 1..].iter().find(|b| b.len() == a.len()).map(|b| (a.clone(), b.clone())))
        .expect("two keys of equal length");
    let mut dup = s.bytes.clone();
    let at = s.header_start_of(&b);
    rename(&mut dup[at..], &b, &a);
    cases.push(("duplicate metadata key", dup, Class::Gguf, "duplicate metadata key"));

    for (i, (case, bytes, class, needle)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("hostile-{i}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        expect(case, load_gguf_file(&path), class, &format!("hostile-{i}.gguf"), needle);
        // The in-memory reader gives the same verdict.
        if let Err(e) = Gguf::from_bytes(&path, &bytes) {
            assert!(class.matches(&e), "{case}: from_bytes: {e}");
        }
    }
}

impl GgufSeed {
    fn name_field_at(&self, name: &str) -> Field {
        self.fields[self.name_field(name)]
    }

    fn header_start_of(&self, name: &str) -> usize {
        self.name_field_at(name).at
    }

    fn offset_of(&self, tensor: &str) -> u64 {
        let f = self.after(tensor, FieldKind::TensorOffset, 0);
        u64::from_le_bytes(self.bytes[f.at..f.at + 8].try_into().unwrap())
    }
}

#[test]
fn gguf_truncated_at_every_boundary_is_refused() {
    for name in ["llama.gguf", "gemma3.gguf"] {
        let s = GgufSeed::new(name);
        let data_start = s.header_end.next_multiple_of(32);
        let mut cuts: Vec<usize> = s.fields.iter().flat_map(|f| [f.at, f.at + 1, f.at + f.width - 1]).collect();
        cuts.extend([0, s.header_end, data_start, data_start + 1, (data_start + s.bytes.len()) / 2, s.bytes.len() - 1]);
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            let path = PathBuf::from(format!("/truncated/{name}"));
            let r = Gguf::from_bytes(&path, &s.bytes[..cut]).and_then(|g| engine::model::load_gguf(&g, &Device::flex()).map(drop));
            let e = r.err().unwrap_or_else(|| panic!("{name} cut at {cut} of {} was accepted", s.bytes.len()));
            assert!(e.to_string().contains(name), "cut at {cut}: {e}");
            assert!(matches!(e, Error::Gguf { .. }), "cut at {cut}: {e:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// A copy of a fixture HF directory with `model.safetensors` and `config.json` replaced.
fn hf_copy(name: &str, case: &str, shard: Option<&[u8]>, config: Option<&[u8]>) -> PathBuf {
    let src = fuzzing::fixtures().join("tiny").join(name);
    let dir = scratch(&format!("{name}-{}", case.replace([' ', '/'], "_")));
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    if let Some(b) = shard {
        std::fs::write(dir.join("model.safetensors"), b).unwrap();
    }
    if let Some(b) = config {
        std::fs::write(dir.join("config.json"), b).unwrap();
    }
    dir
}

/// (header JSON, data) of a fixture shard.
fn split_shard(b: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&b[8..8 + n]).unwrap(), b[8 + n..].to_vec())
}

fn frame(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b.extend(data);
    b
}

#[test]
fn hostile_safetensors_files_are_refused_naming_the_file() {
    let seed = std::fs::read(fuzzing::fixtures().join("tiny/llama-hf/model.safetensors")).unwrap();
    let (header, data) = split_shard(&seed);
    let emb = "model.embed_tokens.weight";
    let edit = |f: &dyn Fn(&mut Value)| -> Vec<u8> {
        let mut h = header.clone();
        f(&mut h);
        frame(&serde_json::to_vec(&h).unwrap(), &data)
    };
    let hlen = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let last = header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__").max_by_key(|(_, v)| v["data_offsets"][1].as_u64()).unwrap().0.clone();
    let (first_name, first) = header.as_object().unwrap().iter().find(|(k, _)| *k != "__metadata__").unwrap();
    let mut dup_text = serde_json::to_vec(&header).unwrap();
    dup_text.splice(1..1, format!("{}:{},", Value::from(first_name.as_str()), first).into_bytes());
    let cases: Vec<(&str, Vec<u8>, Class, &str)> = vec![
        ("empty file", vec![], Class::Safetensors, "model.safetensors"),
        ("header length > file", { let mut b = seed.clone(); b[..8].copy_from_slice(&(seed.len() as u64).to_le_bytes()); b }, Class::Safetensors, "header"),
        ("header length u64::MAX", { let mut b = seed.clone(); b[..8].copy_from_slice(&u64::MAX.to_le_bytes()); b }, Class::Safetensors, "header"),
        ("non-UTF-8 header", { let mut b = seed.clone(); b[9] = 0xff; b }, Class::Safetensors, "model.safetensors"),
        ("invalid JSON header", frame(b"{\"a\": [1, 2", &data), Class::Safetensors, "model.safetensors"),
        ("JSON nested 100000 deep", frame(&[b'['; 100_000], &data), Class::Safetensors, "model.safetensors"),
        ("unknown dtype", edit(&|h| h[emb]["dtype"] = json!("F7")), Class::Safetensors, "model.safetensors"),
        ("shape product overflow", edit(&|h| h[emb]["shape"] = json!([1u64 << 32, 1u64 << 32, 1u64 << 32])), Class::Safetensors, "overflow"),
        ("shape disagreeing with offsets", edit(&|h| h[emb]["shape"] = json!([3, 3])), Class::Safetensors, "model.safetensors"),
        ("negative offset", edit(&|h| h[emb]["data_offsets"][0] = json!(-8)), Class::Safetensors, "model.safetensors"),
        ("offset u64::MAX", edit(&|h| h[emb]["data_offsets"][1] = json!(u64::MAX)), Class::Safetensors, "model.safetensors"),
        ("offset past EOF", edit(&|h| { let e = h[&last]["data_offsets"][1].as_u64().unwrap(); h[&last]["data_offsets"][1] = json!(e + 4) }), Class::Safetensors, "model.safetensors"),
        ("overlapping tensors", edit(&|h| { let o = h[emb]["data_offsets"].clone(); let s = h[emb]["shape"].clone(); h[&last]["data_offsets"] = o; h[&last]["shape"] = s }), Class::Safetensors, "model.safetensors"),
        ("duplicate tensor name", frame(&dup_text, &data), Class::Safetensors, "listed twice"),
        ("truncated in the length", seed[..4].to_vec(), Class::Safetensors, "model.safetensors"),
        ("truncated in the header", seed[..8 + hlen / 2].to_vec(), Class::Safetensors, "model.safetensors"),
        ("truncated after the header", seed[..8 + hlen].to_vec(), Class::Safetensors, "model.safetensors"),
        ("truncated in the data", seed[..seed.len() - 1].to_vec(), Class::Safetensors, "model.safetensors"),
        ("trailing bytes", { let mut b = seed.clone(); b.push(0); b }, Class::Safetensors, "model.safetensors"),
        ("dtype the model cannot use", edit(&|h| h[emb]["dtype"] = json!("I32")), Class::Dtype, "I32"),
    ];
    for (case, bytes, class, needle) in cases {
        let dir = hf_copy("llama-hf", case, Some(&bytes), None);
        expect(case, load_hf_dir(&dir), class, "model.safetensors", needle);
    }
}

#[test]
fn hostile_shard_indexes_are_refused_naming_the_file() {
    let seed = std::fs::read(fuzzing::fixtures().join("tiny/llama-hf/model.safetensors")).unwrap();
    let (header, _) = split_shard(&seed);
    let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
    let shard = "model-00001-of-00001.safetensors";
    let index = |files: &dyn Fn(usize) -> String| -> Vec<u8> {
        let map: serde_json::Map<String, Value> = names.iter().enumerate().map(|(i, n)| (n.clone(), Value::from(files(i)))).collect();
        serde_json::to_vec(&json!({"metadata": {}, "weight_map": map})).unwrap()
    };
    let index_name = "model.safetensors.index.json";
    let cases: Vec<(&str, Vec<u8>, Class, &str)> = vec![
        ("parent directory", index(&|i| if i == 0 { "../model.safetensors".into() } else { shard.into() }), Class::Safetensors, "not a file name"),
        ("absolute path", index(&|i| if i == 0 { "/etc/passwd".into() } else { shard.into() }), Class::Safetensors, "not a file name"),
        ("missing shard", index(&|i| if i == 0 { "model-00002-of-00002.safetensors".into() } else { shard.into() }), Class::Io, "model-00002-of-00002.safetensors"),
        ("invalid JSON", b"{\"weight_map\": {".to_vec(), Class::Safetensors, index_name),
        ("no weight_map", b"{\"metadata\": {}}".to_vec(), Class::Safetensors, index_name),
        ("non-string shard", serde_json::to_vec(&json!({"weight_map": {"x": 5}})).unwrap(), Class::Safetensors, index_name),
        ("tensor not in its shard", { let mut j: Value = serde_json::from_slice(&index(&|_| shard.into())).unwrap(); j["weight_map"]["model.layers.9.mlp.up_proj.weight"] = json!(shard); serde_json::to_vec(&j).unwrap() }, Class::Safetensors, index_name),
        ("tensor in two shards", index(&|i| if i == 0 { "copy.safetensors".into() } else { shard.into() }), Class::Safetensors, "is also in"),
    ];
    for (case, text, class, needle) in cases {
        let dir = hf_copy("llama-hf", &format!("index {case}"), None, None);
        std::fs::rename(dir.join("model.safetensors"), dir.join(shard)).unwrap();
        std::fs::copy(dir.join(shard), dir.join("copy.safetensors")).unwrap();
        std::fs::write(dir.join(index_name), text).unwrap();
        let file = if matches!(class, Class::Io) || needle == "is also in" { ".safetensors" } else { index_name };
        expect(case, load_hf_dir(&dir), class, file, needle);
    }
    // An index far larger than any real one is refused before it is read (a sparse file).
    let dir = hf_copy("llama-hf", "index huge", None, None);
    let f = std::fs::File::create(dir.join(index_name)).unwrap();
    f.set_len(1 << 30).unwrap();
    expect("1 GiB index", load_hf_dir(&dir), Class::Metadata, index_name, "file size");
}

#[test]
fn hostile_config_json_is_refused_naming_the_file() {
    let base: Value = serde_json::from_slice(&std::fs::read(fuzzing::fixtures().join("tiny/llama-hf/config.json")).unwrap()).unwrap();
    let gemma: Value = serde_json::from_slice(&std::fs::read(fuzzing::fixtures().join("tiny/gemma3-hf/config.json")).unwrap()).unwrap();
    let edit = |from: &Value, f: &dyn Fn(&mut Value)| -> Vec<u8> {
        let mut c = from.clone();
        f(&mut c);
        serde_json::to_vec(&c).unwrap()
    };
    let cases: Vec<(&str, &str, Vec<u8>, Class, &str)> = vec![
        ("hidden size 2^40", "llama-hf", edit(&base, &|c| c["hidden_size"] = json!(1u64 << 40)), Class::Metadata, "hidden size"),
        ("intermediate size 2^40", "llama-hf", edit(&base, &|c| c["intermediate_size"] = json!(1u64 << 40)), Class::Metadata, "intermediate size"),
        ("zero heads", "llama-hf", edit(&base, &|c| c["num_attention_heads"] = json!(0)), Class::Metadata, "heads"),
        ("heads not dividing the hidden size", "llama-hf", edit(&base, &|c| { c["num_attention_heads"] = json!(3); c.as_object_mut().unwrap().remove("head_dim"); }), Class::Metadata, "do not divide"),
        ("heads × head dim overflowing", "llama-hf", edit(&base, &|c| { c["num_attention_heads"] = json!(1u64 << 20); c["num_key_value_heads"] = json!(1u64 << 20); c["head_dim"] = json!(1u64 << 20) }), Class::Metadata, "exceed"),
        ("layers 2^40", "llama-hf", edit(&base, &|c| c["num_hidden_layers"] = json!(1u64 << 40)), Class::Metadata, "layers"),
        ("gemma layers 2^40", "gemma3-hf", edit(&gemma, &|c| { c["num_hidden_layers"] = json!(1u64 << 40); c.as_object_mut().unwrap().remove("layer_types"); }), Class::Metadata, "layers"),
        ("context 2^62", "llama-hf", edit(&base, &|c| c["max_position_embeddings"] = json!(1u64 << 62)), Class::Metadata, "context"),
        ("negative hidden size", "llama-hf", edit(&base, &|c| c["hidden_size"] = json!(-64)), Class::Metadata, "hidden_size"),
        ("vocab size mismatching the embedding", "llama-hf", edit(&base, &|c| c["vocab_size"] = json!(261)), Class::Shape, "261"),
        ("invalid JSON", "llama-hf", b"{\"model_type\": ".to_vec(), Class::Metadata, "config.json"),
        ("non-UTF-8", "llama-hf", b"{\"model_type\": \"\xff\"}".to_vec(), Class::Io, "config.json"),
        ("JSON nested 100000 deep", "llama-hf", [b'['; 100_000].to_vec(), Class::Metadata, "config.json"),
    ];
    for (case, fixture, text, class, needle) in cases {
        let dir = hf_copy(fixture, case, None, Some(&text));
        let file = if matches!(class, Class::Shape) { fixture } else { "config.json" };
        expect(case, load_hf_dir(&dir), class, file, needle);
    }
    let dir = hf_copy("llama-hf", "huge config", None, None);
    std::fs::File::create(dir.join("config.json")).unwrap().set_len(1 << 30).unwrap();
    expect("1 GiB config.json", load_hf_dir(&dir), Class::Metadata, "config.json", "file size");
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// Cases per target in the test command; `cargo run --release --example fuzz` runs millions.
const CASES: u64 = 10_000;
/// Every `LOAD_EVERY`th case that parses also builds the model (loading dominates a case's time).
const LOAD_EVERY: u64 = 8;

#[test]
fn fuzzed_files_never_panic() {
    let corpus = Corpus::load();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for &target in TARGETS {
        let start = std::time::Instant::now();
        let (mut accepted, mut refused) = (0, 0);
        for seed in 0..CASES {
            let r = std::panic::catch_unwind(|| target.run(&corpus, seed, seed % LOAD_EVERY == 0));
            match r {
                Ok(Ok(Outcome::Accepted)) => accepted += 1,
                Ok(Ok(Outcome::Refused)) => refused += 1,
                Ok(Err(problem)) => failures.push(format!("{} seed {seed}: {problem}", target.name())),
                Err(_) => failures.push(format!("{} seed {seed}: panicked", target.name())),
            }
        }
        summary.push(format!("{}: {refused} refused, {accepted} accepted in {:.1?}", target.name(), start.elapsed()));
        // Mutations that are all refused, or all accepted, would not test the parser.
        assert!(refused > CASES / 10 && accepted > 0, "{}: {refused} refused, {accepted} accepted", target.name());
    }
    eprintln!("{}", summary.join("\n"));
    assert!(failures.is_empty(), "{} failing cases (rerun one with `cargo run --release --example fuzz -- --target T --seed S --cases 1`):\n{}", failures.len(), failures.join("\n"));
}

/// Inputs that once failed, kept as files: `<target>-<anything>.bin` runs through that target.
#[test]
fn saved_regressions_are_refused_or_accepted_cleanly() {
    let corpus = Corpus::load();
    let dir = fuzzing::fixtures().join("hostile");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(target) = name.split('-').next().and_then(Target::from_name) else { continue };
        let bytes = std::fs::read(&path).unwrap();
        // The seed picks the fixture the bytes go with (safetensors and config targets).
        let seed: u64 = name.split('-').nth(1).and_then(|s| s.trim_end_matches(".bin").parse().ok()).unwrap_or(0);
        let file = match target {
            Target::Gguf => "saved.gguf".to_string(),
            Target::Safetensors => format!("{}/model.safetensors", corpus.hf[(seed % 1009) as usize % corpus.hf.len()].0),
            Target::Config => format!("{}/config.json", corpus.hf[(seed % 1009) as usize % corpus.hf.len()].0),
        };
        let r = std::panic::catch_unwind(|| target.run_bytes(&corpus, seed, &file, &bytes, true));
        assert!(matches!(r, Ok(Ok(_))), "{name}: {r:?}");
        n += 1;
    }
    eprintln!("{n} saved regression inputs");
}
