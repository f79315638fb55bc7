//! Structure-aware mutation of real model files, shared by the hostile-file tests (a bounded
//! number of cases in the test command) and `examples/fuzz.rs` (long runs on demand).
//!
//! Every case starts from a valid fixture and applies a few mutations chosen by an
//! [`arbitrary::Unstructured`] over bytes of a seeded ChaCha stream: a case is reproduced by its
//! seed alone. GGUF mutations know where the header's counts, lengths, types, dims and offsets
//! are (a walker over the valid seed file lists them); safetensors and `config.json` mutations
//! edit the JSON (huge, negative, zero, mistyped values; duplicated or dropped entries) and then
//! the bytes. A target returns whether the engine accepted the input; an `Err` is the expected
//! outcome for most cases, a panic is a bug.
#![allow(dead_code)]

use arbitrary::Unstructured;
use engine::gguf::Gguf;
use engine::safetensors::HfModelDir;
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// What one GGUF header field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Magic,
    Version,
    TensorCount,
    MetadataCount,
    /// The length of a key, string value, string array element or tensor name.
    StringLen,
    ValueType,
    ArrayType,
    ArrayLen,
    Scalar,
    TensorDims,
    TensorDim,
    TensorType,
    TensorOffset,
}

/// A field of a valid GGUF header: where it is, how wide, what it is.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub width: usize,
    pub kind: FieldKind,
}

/// The fields of a valid GGUF file's header, in file order, and the end of the header.
/// Panics on an invalid file: it is only run on fixtures.
pub fn gguf_fields(b: &[u8]) -> (Vec<Field>, usize) {
    let mut fields = Vec::new();
    let mut pos = 0;
    let mut field = |pos: &mut usize, width: usize, kind: FieldKind| -> u64 {
        fields.push(Field { at: *pos, width, kind });
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&b[*pos..*pos + width]);
        *pos += width;
        u64::from_le_bytes(v)
    };
    field(&mut pos, 4, FieldKind::Magic);
    field(&mut pos, 4, FieldKind::Version);
    let n_tensors = field(&mut pos, 8, FieldKind::TensorCount);
    let n_kv = field(&mut pos, 8, FieldKind::MetadataCount);
    fn value(b: &[u8], pos: &mut usize, ty: u64, field: &mut dyn FnMut(&mut usize, usize, FieldKind) -> u64) {
        match ty {
            8 => *pos += field(pos, 8, FieldKind::StringLen) as usize,
            9 => {
                let elem = field(pos, 4, FieldKind::ArrayType);
                let len = field(pos, 8, FieldKind::ArrayLen);
                for _ in 0..len {
                    value(b, pos, elem, field);
                }
            }
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => {
                field(pos, 4, FieldKind::Scalar);
            }
            10..=12 => {
                field(pos, 8, FieldKind::Scalar);
            }
            other => panic!("fixture has metadata type {other}"),
        }
    }
    for _ in 0..n_kv {
        pos += field(&mut pos, 8, FieldKind::StringLen) as usize;
        let ty = field(&mut pos, 4, FieldKind::ValueType);
        value(b, &mut pos, ty, &mut field);
    }
    for _ in 0..n_tensors {
        pos += field(&mut pos, 8, FieldKind::StringLen) as usize;
        let dims = field(&mut pos, 4, FieldKind::TensorDims);
        for _ in 0..dims {
            field(&mut pos, 8, FieldKind::TensorDim);
        }
        field(&mut pos, 4, FieldKind::TensorType);
        field(&mut pos, 8, FieldKind::TensorOffset);
    }
    (fields, pos)
}

/// Values that break parsers: zero, one past small limits, powers of two around widths, and
/// the top of every integer width (negative when read as signed).
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    13,
    31,
    32,
    33,
    255,
    256,
    4095,
    65535,
    65536,
    1 << 24,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 60,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 31,
    u64::MAX,
];

fn interesting(u: &mut Unstructured, file_len: usize) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => file_len as u64 + u.int_in_range(0..=64)? as u64,
        1 => u.arbitrary()?,
        _ => *u.choose(INTERESTING)?,
    })
}

/// Generic byte mutations, biased to `focus` (the header) where most of the structure is.
fn mutate_bytes(u: &mut Unstructured, b: &mut Vec<u8>, focus: usize, other: &[u8]) -> arbitrary::Result<()> {
    let pick = |u: &mut Unstructured, len: usize, focus: usize| -> arbitrary::Result<usize> {
        let end = if u.ratio(3, 4)? { focus.min(len) } else { len };
        Ok(if end == 0 { 0 } else { u.int_in_range(0..=end - 1)? })
    };
    match u.int_in_range(0..=6)? {
        0 => {
            // Flip bits of a few bytes.
            for _ in 0..u.int_in_range(1..=8)? {
                if !b.is_empty() {
                    let i = pick(u, b.len(), focus)?;
                    b[i] ^= 1 << u.int_in_range(0..=7)?;
                }
            }
        }
        1 => {
            let i = pick(u, b.len(), focus)?;
            if !b.is_empty() {
                b[i] = u.arbitrary()?;
            }
        }
        2 => {
            let at = pick(u, b.len() + 1, focus)?;
            b.truncate(at);
        }
        3 => {
            // Splice a range of another file (or this one) over a position.
            if !other.is_empty() && !b.is_empty() {
                let from = u.int_in_range(0..=other.len() - 1)?;
                let n = u.int_in_range(1..=64.min(other.len() - from))?;
                let at = pick(u, b.len(), focus)?;
                let chunk = other[from..from + n].to_vec();
                b.splice(at..(at + n).min(b.len()), chunk);
            }
        }
        4 => {
            // Duplicate a section in place.
            if !b.is_empty() {
                let from = pick(u, b.len(), focus)?;
                let n = u.int_in_range(1..=256.min(b.len() - from))?;
                let chunk = b[from..from + n].to_vec();
                let at = pick(u, b.len() + 1, focus)?;
                b.splice(at..at, chunk);
            }
        }
        5 => {
            // Delete a section.
            if !b.is_empty() {
                let from = pick(u, b.len(), focus)?;
                let n = u.int_in_range(1..=256.min(b.len() - from))?;
                b.drain(from..from + n);
            }
        }
        _ => {
            // An interesting little-endian value at any position.
            let v = interesting(u, b.len())?.to_le_bytes();
            let w = *u.choose(&[1usize, 2, 4, 8])?;
            let at = pick(u, b.len(), focus)?;
            for (i, byte) in v.iter().take(w).enumerate() {
                if let Some(x) = b.get_mut(at + i) {
                    *x = *byte;
                }
            }
        }
    }
    Ok(())
}

/// A mutated GGUF image: fields of the header set to hostile values, or byte-level mutations.
pub fn mutate_gguf(u: &mut Unstructured, seed: &[u8], other: &[u8]) -> arbitrary::Result<Vec<u8>> {
    let (fields, header_end) = gguf_fields(seed);
    let mut b = seed.to_vec();
    for _ in 0..u.int_in_range(1..=3)? {
        if u.ratio(2, 3)? {
            let f = *u.choose(&fields)?;
            if f.at + f.width > b.len() {
                continue;
            }
            let v = match f.kind {
                FieldKind::ValueType | FieldKind::ArrayType | FieldKind::TensorType if u.ratio(1, 2)? => u.int_in_range(0..=40)?,
                FieldKind::TensorDims if u.ratio(1, 2)? => u.int_in_range(0..=6)?,
                FieldKind::TensorOffset if u.ratio(1, 2)? => {
                    let old = u64::from_le_bytes(b[f.at..f.at + 8].try_into().unwrap());
                    old.wrapping_add(u.int_in_range(-64i64..=64)? as u64)
                }
                _ => interesting(u, b.len())?,
            };
            b[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
        } else {
            mutate_bytes(u, &mut b, header_end, other)?;
        }
    }
    Ok(b)
}

/// A JSON value that breaks a size or count: huge, negative, zero, fractional or mistyped.
fn hostile_json(u: &mut Unstructured) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Value::from(*u.choose(INTERESTING)?),
        1 => Value::from(-(u.int_in_range(1..=1i64 << 40)?)),
        2 => Value::from(0),
        3 => serde_json::json!(1.5),
        4 => serde_json::json!("64"),
        5 => Value::Null,
        6 => serde_json::json!([1, [2, [3]]]),
        _ => serde_json::json!(1e300),
    })
}

/// Edits one random leaf (or entry) of a JSON document.
fn mutate_json(u: &mut Unstructured, v: &mut Value, depth: usize) -> arbitrary::Result<()> {
    match v {
        Value::Object(map) if !map.is_empty() && depth < 6 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = u.choose(&keys)?.clone();
            match u.int_in_range(0..=9)? {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    let dup = map[&k].clone();
                    map.insert(format!("{k}.copy"), dup);
                }
                2 => {
                    map.insert(k, hostile_json(u)?);
                }
                _ => mutate_json(u, map.get_mut(&k).unwrap(), depth + 1)?,
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 => {
            let i = u.int_in_range(0..=items.len() - 1)?;
            match u.int_in_range(0..=5)? {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let dup = items[i].clone();
                    items.push(dup);
                }
                _ => mutate_json(u, &mut items[i], depth + 1)?,
            }
        }
        Value::String(s) if u.ratio(1, 2)? => {
            *s = u.choose(&["F7", "I64", "BOOL", "F8_E4M3", "", "../x", "gemma3_text", "gpt_neox", "qwen2", "mamba"])?.to_string();
        }
        other => *other = hostile_json(u)?,
    }
    Ok(())
}

/// A mutated safetensors file: the header's JSON edited (dtypes, shapes, offsets, names) and
/// re-framed with a correct or hostile length prefix, or byte-level mutations.
pub fn mutate_safetensors(u: &mut Unstructured, seed: &[u8], other: &[u8]) -> arbitrary::Result<Vec<u8>> {
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&seed[8..8 + n]).expect("fixture header is JSON");
    let mut data = seed[8 + n..].to_vec();
    let mut b;
    if u.ratio(2, 3)? {
        for _ in 0..u.int_in_range(1..=3)? {
            mutate_json(u, &mut header, 0)?;
        }
        let mut text = serde_json::to_vec(&header).unwrap();
        if u.ratio(1, 8)? {
            // A key listed twice, which a JSON map would silently collapse.
            if let Some(first) = header.as_object().and_then(|m| m.iter().find(|(k, _)| *k != "__metadata__")) {
                let entry = format!("{}:{},", Value::from(first.0.as_str()), first.1);
                text.splice(1..1, entry.into_bytes());
            }
        }
        if u.ratio(1, 8)? {
            data.truncate(u.int_in_range(0..=data.len())?);
        }
        let len = if u.ratio(5, 6)? { text.len() as u64 } else { interesting(u, text.len())? };
        b = len.to_le_bytes().to_vec();
        b.extend(text);
        b.extend(data);
    } else {
        b = seed.to_vec();
        for _ in 0..u.int_in_range(1..=3)? {
            mutate_bytes(u, &mut b, 8 + n, other)?;
        }
    }
    Ok(b)
}

/// A mutated `config.json`: fields edited as JSON, or the text's bytes mutated.
pub fn mutate_config(u: &mut Unstructured, seed: &str) -> arbitrary::Result<Vec<u8>> {
    if u.ratio(3, 4)? {
        let mut json: Value = serde_json::from_str(seed).expect("fixture config is JSON");
        for _ in 0..u.int_in_range(1..=3)? {
            mutate_json(u, &mut json, 0)?;
        }
        Ok(serde_json::to_vec(&json).unwrap())
    } else {
        let mut b = seed.as_bytes().to_vec();
        let len = b.len();
        mutate_bytes(u, &mut b, len, &[])?;
        Ok(b)
    }
}

/// The valid files every case starts from.
pub struct Corpus {
    /// (file name, bytes) of every GGUF fixture.
    pub gguf: Vec<(String, Vec<u8>)>,
    /// (directory name, config.json, model.safetensors) of every HF fixture.
    pub hf: Vec<(String, String, Vec<u8>)>,
}

impl Corpus {
    pub fn load() -> Corpus {
        let mut gguf = Vec::new();
        let mut hf = Vec::new();
        for sub in ["tiny", "cross"] {
            let mut entries: Vec<_> = std::fs::read_dir(fixtures().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for p in entries {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.ends_with(".gguf") {
                    gguf.push((name, std::fs::read(&p).unwrap()));
                } else if p.join("config.json").is_file() {
                    hf.push((name, std::fs::read_to_string(p.join("config.json")).unwrap(), std::fs::read(p.join("model.safetensors")).unwrap()));
                }
            }
        }
        Corpus { gguf, hf }
    }
}

/// What a fuzz target checks. One function per target: a new target (tokenizers, chat
/// templates) is one more variant and one more arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The GGUF reader on mutated headers, then everything read from the header (metadata
    /// values, arrays, tensor ranges, the family config) and, when that passes, the model load.
    Gguf,
    /// The safetensors loader on mutated shards (with the fixture's config), then the model load.
    Safetensors,
    /// `config.json` parsing and the family config on mutated configs, then the model load with
    /// the fixture's weights.
    Config,
}

pub const TARGETS: &[Target] = &[Target::Gguf, Target::Safetensors, Target::Config];

/// How a case ended (a panic is not an outcome: it unwinds to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused with an error naming the file.
    Refused,
    /// Parsed (and loaded, where the target loads).
    Accepted,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Gguf => "gguf",
            Target::Safetensors => "safetensors",
            Target::Config => "config",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        TARGETS.iter().copied().find(|t| t.name() == name)
    }

    /// The mutated input of case `seed`: (file name, bytes).
    pub fn input(self, corpus: &Corpus, seed: u64) -> (String, Vec<u8>) {
        let mut entropy = vec![0u8; 4096];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut entropy);
        let mut u = Unstructured::new(&entropy);
        let pick = (seed % 1009) as usize;
        match self {
            Target::Gguf => {
                let (name, seed_file) = &corpus.gguf[pick % corpus.gguf.len()];
                let other = &corpus.gguf[(pick + 1) % corpus.gguf.len()].1;
                (name.clone(), mutate_gguf(&mut u, seed_file, other).unwrap_or_else(|_| seed_file.clone()))
            }
            Target::Safetensors => {
                let (name, _, st) = &corpus.hf[pick % corpus.hf.len()];
                let other = &corpus.hf[(pick + 1) % corpus.hf.len()].2;
                (format!("{name}/model.safetensors"), mutate_safetensors(&mut u, st, other).unwrap_or_else(|_| st.clone()))
            }
            Target::Config => {
                let (name, config, _) = &corpus.hf[pick % corpus.hf.len()];
                (format!("{name}/config.json"), mutate_config(&mut u, config).unwrap_or_else(|_| config.clone().into_bytes()))
            }
        }
    }

    /// Runs case `seed`. An `Err` is a contract violation other than a panic (an error that
    /// does not name the file); panics propagate.
    pub fn run(self, corpus: &Corpus, seed: u64, load: bool) -> Result<Outcome, String> {
        let (name, bytes) = self.input(corpus, seed);
        self.run_bytes(corpus, seed, &name, &bytes, load)
    }

    /// Runs the target on `bytes` (as produced by [`input`](Self::input) for `name`).
    pub fn run_bytes(self, corpus: &Corpus, seed: u64, name: &str, bytes: &[u8], load: bool) -> Result<Outcome, String> {
        let device = burn::tensor::Device::flex();
        let origin = Path::new("/fuzz").join(name);
        let named = |e: engine::Error, file: &str| -> Result<Outcome, String> {
            let msg = e.to_string();
            if msg.contains(file) {
                Ok(Outcome::Refused)
            } else {
                Err(format!("error does not name `{file}`: {msg}"))
            }
        };
        match self {
            Target::Gguf => {
                let g = match Gguf::from_bytes(&origin, bytes) {
                    Ok(g) => g,
                    Err(e) => return named(e, name),
                };
                exercise_metadata(&g);
                let cfg = match engine::model::FamilyConfig::from_gguf(&g) {
                    Ok(c) => c,
                    Err(e) => return named(e, name),
                };
                if load {
                    if let Err(e) = cfg.load(&g, &device) {
                        return named(e, name);
                    }
                }
                Ok(Outcome::Accepted)
            }
            Target::Safetensors | Target::Config => {
                let (dir, config, st) = &corpus.hf[(seed % 1009) as usize % corpus.hf.len()];
                let (config, st, file) = match self {
                    Target::Config => (String::from_utf8_lossy(bytes).into_owned(), &st[..], "config.json"),
                    _ => (config.clone(), bytes, "model.safetensors"),
                };
                let hf = match HfModelDir::from_memory(Path::new("/fuzz").join(dir), &config, &[("model.safetensors", st)]) {
                    Ok(hf) => hf,
                    Err(e) => return named(e, file),
                };
                let _ = (hf.parameter_count(), hf.dtype_histogram());
                let cfg = match hf.family_config() {
                    Ok(c) => c,
                    Err(e) => return named(e, dir),
                };
                if load {
                    if let Err(e) = cfg.load(&hf, &device) {
                        return named(e, dir);
                    }
                }
                Ok(Outcome::Accepted)
            }
        }
    }
}

/// Reads everything a header offers, as `inspect` and the tokenizer would.
fn exercise_metadata(g: &Gguf) {
    for v in g.metadata.values() {
        let _ = v.summary();
        if let Some(a) = v.as_array() {
            let _ = a.strings().map(|s| s.len());
            for item in a.iter() {
                if let Some(inner) = item.as_array() {
                    let _ = inner.iter().count();
                }
            }
        }
    }
    for t in &g.tensors {
        let _ = (t.n_elements(), t.shape(), g.tensor_bytes(t).len());
    }
}
