//! Tokenizers: the vocabulary embedded in a GGUF file, or a Hugging Face `tokenizer.json`.
//!
//! Both end up as a [`tokenizers::Tokenizer`] plus what the engine needs around it: which ids are
//! special (control tokens, skipped when decoding), BOS and the set of ids that end generation,
//! the chat template, and a per-id byte table for exact, streaming-safe decoding.
//!
//! GGUF vocabularies are rebuilt the way llama.cpp reads them (`src/llama-vocab.cpp`) and the
//! way transformers' GGUF integration converts them:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` + `merges`, split first by the
//!   regex that `tokenizer.ggml.pre` names (GPT-2's, SmolLM/StarCoder's digit split, Qwen2's,
//!   Llama-3's, …). An unknown `pre` is an error rather than silently different ids.
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE. Merges are not stored; a pair merges
//!   into the token it spells, highest score first (llama.cpp's `llm_tokenizer_spm`), which is
//!   an ordinary BPE whose merge list is derived from the vocabulary and sorted by score.
//!   Spaces become `▁`, a `▁` is prepended when `tokenizer.ggml.add_space_prefix` says so
//!   (Llama: yes, Gemma: no), and characters outside the vocabulary fall back to `<0xNN>` bytes.
//!
//! Token types (`tokenizer.ggml.token_type`): control and unknown tokens become special added
//! tokens (their text in the input encodes to their single id; decoding omits them), user-defined
//! tokens become ordinary added tokens (matched before the model sees the text, decoded as text),
//! unused tokens are treated as special.

use crate::error::{Error, Result};
use crate::gguf::{Gguf, MetaArray, MetaValue};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BpeBuilder, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_code(v: i64) -> Option<Self> {
        Some(match v {
            // 0 is "undefined" in llama.cpp; converters that write it mean an ordinary token.
            0 | 1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
    fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown | TokenType::Unused)
    }
}

/// Texts of tokens that end a turn or a document in the common chat formats. A token with one of
/// these texts that is a control (special) token joins [`Tokenizer::eos_ids`], as in llama.cpp.
const END_OF_GENERATION: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "<|EOT|>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// Every id's bytes in one buffer: a 50k-entry table of separately allocated slices would cost
/// three times the memory (a pointer, a length and an allocation header per id).
#[derive(Default)]
struct Pieces {
    bytes: Vec<u8>,
    /// End of piece i in `bytes` (its start is the previous end).
    ends: Vec<usize>,
}

impl Pieces {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl std::ops::Index<usize> for Pieces {
    type Output = [u8];
    fn index(&self, i: usize) -> &[u8] {
        self.get(i).expect("piece id in range")
    }
}

impl<B: AsRef<[u8]>> FromIterator<B> for Pieces {
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Self {
        let mut p = Pieces::default();
        for piece in iter {
            p.bytes.extend_from_slice(piece.as_ref());
            p.ends.push(p.bytes.len());
        }
        p.bytes.shrink_to_fit();
        p.ends.shrink_to_fit();
        p
    }
}

/// How ids become text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoding {
    /// Through the per-id byte table (`pieces`); exact and streamable byte by byte.
    Pieces,
    /// Through the `tokenizers` decoder (a tokenizer.json decoder we do not model).
    Hf,
}

/// A tokenizer with its special-token information and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: String,
    kind: String,
    special: Vec<bool>,
    /// What each id decodes to, as bytes (used when `decoding == Pieces`, and for the fingerprint).
    pieces: Pieces,
    decoding: Decoding,
    /// SentencePiece with a prepended `▁`: drop one leading space of decoded text.
    strip_leading_space: bool,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
    fingerprint: u64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("kind", &self.kind)
            .field("vocab_size", &self.pieces.len())
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eos_ids", &self.eos_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(origin: &str, problem: impl Into<String>) -> Error {
    Error::Tokenizer { origin: origin.to_string(), problem: problem.into() }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata helpers: every malformed value is a typed error naming the key.
// ---------------------------------------------------------------------------------------------

struct Meta<'g> {
    g: &'g Gguf,
    origin: String,
}

impl<'g> Meta<'g> {
    fn err(&self, key: &str, problem: impl std::fmt::Display) -> Error {
        tok_err(&self.origin, format!("metadata `{key}`: {problem}"))
    }
    fn array(&self, key: &str) -> Result<Option<&'g MetaArray>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.err(key, "expected an array")),
        }
    }
    /// Borrowed from the file's map: the vocabulary is copied once, into the tokenizer.
    fn strings(&self, key: &str) -> Result<Option<Vec<Cow<'g, str>>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.strings().map(Some).ok_or_else(|| self.err(key, "expected an array of strings"))
    }
    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().ok_or_else(|| self.err(key, format!("element {i} is not an integer"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| self.err(key, format!("element {i} is not a number")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    fn string(&self, key: &str) -> Result<Option<&'g str>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(key, "expected a string")),
        }
    }
    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => match v.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(self.err(key, "expected a boolean")),
            },
        }
    }
    /// A token id; negative values (some converters write -1 for "none") mean absent.
    fn id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.g.get(key) else { return Ok(None) };
        let Some(i) = v.as_i64() else { return Err(self.err(key, "expected an integer token id")) };
        if i < 0 {
            return Ok(None);
        }
        if i as u64 >= n_tokens as u64 {
            return Err(self.err(key, format!("token id {i} is out of range (the vocabulary has {n_tokens} tokens)")));
        }
        Ok(Some(i as u32))
    }
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level alphabet.
// ---------------------------------------------------------------------------------------------

fn is_printable_byte(b: u32) -> bool {
    (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
}

/// GPT-2's `bytes_to_unicode`: byte -> char, and the reverse map.
fn byte_level_tables() -> &'static ([char; 256], HashMap<char, u8>) {
    static TABLES: OnceLock<([char; 256], HashMap<char, u8>)> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..256u32 {
            to_char[b as usize] = if is_printable_byte(b) {
                char::from_u32(b).expect("latin-1 char")
            } else {
                n += 1;
                char::from_u32(255 + n).expect("latin extended char")
            };
        }
        let to_byte = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        (to_char, to_byte)
    })
}

/// The bytes a byte-level token spells, or `None` if it has a character outside the alphabet.
fn byte_level_decode(token: &str) -> Option<Vec<u8>> {
    let (_, to_byte) = byte_level_tables();
    token.chars().map(|c| to_byte.get(&c).copied()).collect()
}

fn byte_level_encode(bytes: &[u8]) -> String {
    let (to_char, _) = byte_level_tables();
    bytes.iter().map(|&b| to_char[b as usize]).collect()
}

/// `<0xNN>` byte-fallback token.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers named by `tokenizer.ggml.pre`.
// ---------------------------------------------------------------------------------------------

const GPT2_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "gpt2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "jina-es",
    "jina-de",
    "jina-v2-es",
    "jina-v2-de",
    "gigachat",
    "a.x-4.0",
    "mellum",
    "exaone4",
    "granite-docling",
];
const DIGITS_GPT2_PRE: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"];
const QWEN2_PRE: &[&str] = &["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "kormo", "f2llmv2"];
const LLAMA3_PRE: &[&str] = &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"];
const LLAMA3_MERGING_PRE: &[&str] = &["dbrx", "smaug-bpe"];
const GPT4O_PRE: &[&str] = &["gpt-4o", "llama4", "kanana2"];
const TEKKEN_PRE: &[&str] = &["tekken"];
const QWEN35_PRE: &[&str] = &["qwen35"];

const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// Every `tokenizer.ggml.pre` value this module understands.
pub fn supported_pre_tokenizers() -> Vec<&'static str> {
    [GPT2_PRE, DIGITS_GPT2_PRE, QWEN2_PRE, QWEN35_PRE, LLAMA3_PRE, LLAMA3_MERGING_PRE, GPT4O_PRE, TEKKEN_PRE].concat()
}

struct PreConfig {
    pre_tokenizer: PreTokenizerWrapper,
    normalizer: Option<NormalizerWrapper>,
    /// A pre-token that is itself in the vocabulary is emitted whole (Llama-3, Tekken).
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the file does not say.
    add_bos_default: bool,
}

fn split_then_bytes(regex: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| format!("cannot compile the pre-tokenizer regex: {e}"))?;
    Ok(PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
}

fn pre_config(pre: &str) -> std::result::Result<Option<PreConfig>, String> {
    let cfg = |pre_tokenizer, normalizer, ignore_merges, add_bos_default| PreConfig {
        pre_tokenizer,
        normalizer,
        ignore_merges,
        add_bos_default,
    };
    Ok(Some(if GPT2_PRE.contains(&pre) {
        cfg(ByteLevel::new(false, true, true).into(), None, false, false)
    } else if DIGITS_GPT2_PRE.contains(&pre) {
        let seq = PreSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
        cfg(seq.into(), None, false, false)
    } else if QWEN2_PRE.contains(&pre) {
        cfg(split_then_bytes(QWEN2_SPLIT)?, Some(NFC.into()), false, false)
    } else if QWEN35_PRE.contains(&pre) {
        cfg(split_then_bytes(QWEN35_SPLIT)?, Some(NFC.into()), false, false)
    } else if LLAMA3_PRE.contains(&pre) {
        cfg(split_then_bytes(LLAMA3_SPLIT)?, None, true, true)
    } else if LLAMA3_MERGING_PRE.contains(&pre) {
        cfg(split_then_bytes(LLAMA3_SPLIT)?, None, false, false)
    } else if GPT4O_PRE.contains(&pre) {
        cfg(split_then_bytes(GPT4O_SPLIT)?, None, false, false)
    } else if TEKKEN_PRE.contains(&pre) {
        cfg(split_then_bytes(TEKKEN_SPLIT)?, None, true, true)
    } else {
        return Ok(None);
    }))
}

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------

/// What both construction paths hand to [`Tokenizer::assemble`].
struct Parts {
    inner: tokenizers::Tokenizer,
    origin: String,
    kind: String,
    special: Vec<bool>,
    pieces: Pieces,
    decoding: Decoding,
    strip_leading_space: bool,
    bos_id: Option<u32>,
    add_bos: bool,
    /// eos/eot ids stated by the source, in priority order.
    stated_eos: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes in its `tokenizer.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let m = Meta { g, origin: g.path().display().to_string() };
        let origin = m.origin.clone();
        let model = match m.string("tokenizer.ggml.model")? {
            Some(model) => model,
            None => {
                return Err(tok_err(
                    &origin,
                    "metadata `tokenizer.ggml.model` is missing: this GGUF file carries no tokenizer",
                ))
            }
        };
        let token_list = m.strings("tokenizer.ggml.tokens")?.ok_or_else(|| m.err("tokenizer.ggml.tokens", "missing"))?;
        let tokens: Vec<&str> = token_list.iter().map(|t| t.as_ref()).collect();
        if tokens.is_empty() {
            return Err(m.err("tokenizer.ggml.tokens", "the vocabulary is empty"));
        }
        if tokens.len() > u32::MAX as usize {
            return Err(m.err("tokenizer.ggml.tokens", "more tokens than u32 ids"));
        }
        let n = tokens.len();
        let types: Vec<TokenType> = match m.ints("tokenizer.ggml.token_type")? {
            None => tokens
                .iter()
                .map(|t| {
                    if model == "llama" && parse_byte_token(t).is_some() {
                        TokenType::Byte
                    } else {
                        TokenType::Normal
                    }
                })
                .collect(),
            Some(codes) => {
                if codes.len() != n {
                    return Err(m.err(
                        "tokenizer.ggml.token_type",
                        format!("has {} entries but `tokenizer.ggml.tokens` has {n}", codes.len()),
                    ));
                }
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        TokenType::from_code(c).ok_or_else(|| {
                            m.err("tokenizer.ggml.token_type", format!("unknown token type {c} for id {i}"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let bos_id = m.id("tokenizer.ggml.bos_token_id", n)?;
        let eos_id = m.id("tokenizer.ggml.eos_token_id", n)?;
        let eot_id = m.id("tokenizer.ggml.eot_token_id", n)?;
        let eom_id = m.id("tokenizer.ggml.eom_token_id", n)?;
        let unk_id = m.id("tokenizer.ggml.unknown_token_id", n)?;
        let add_bos_meta = m.boolean("tokenizer.ggml.add_bos_token")?;
        let chat_template = m.string("tokenizer.chat_template")?.map(str::to_string);
        let stated_eos: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();

        let special: Vec<bool> = types.iter().map(|t| t.is_special()).collect();

        match model {
            "gpt2" => {
                let pre = m.string("tokenizer.ggml.pre")?.unwrap_or("default");
                let cfg = pre_config(pre).map_err(|p| tok_err(&origin, p))?.ok_or_else(|| {
                    m.err(
                        "tokenizer.ggml.pre",
                        format!(
                            "unsupported pre-tokenizer `{pre}` (supported: {})",
                            supported_pre_tokenizers().join(", ")
                        ),
                    )
                })?;
                let merges = m.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
                    m.err("tokenizer.ggml.merges", "missing (a gpt2 byte-level BPE vocabulary needs its merges)")
                })?;
                let inner = build_byte_level_bpe(&origin, &tokens, &types, &merges, cfg.ignore_merges, |inner| {
                    inner.with_pre_tokenizer(Some(cfg.pre_tokenizer));
                    if let Some(nz) = cfg.normalizer {
                        inner.with_normalizer(Some(nz)).map_err(|e| tok_err(&origin, e.to_string()))?;
                    }
                    inner.with_decoder(Some(ByteLevel::default()));
                    Ok(())
                })?;
                let pieces = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        TokenType::Normal | TokenType::Byte => {
                            byte_level_decode(t).unwrap_or_else(|| t.as_bytes().to_vec()).into_boxed_slice()
                        }
                        _ => t.as_bytes().to_vec().into_boxed_slice(),
                    })
                    .collect();
                Tokenizer::assemble(Parts {
                    inner,
                    origin,
                    kind: format!("gpt2 BPE (pre: {pre})"),
                    special,
                    pieces,
                    decoding: Decoding::Pieces,
                    strip_leading_space: false,
                    bos_id,
                    add_bos: add_bos_meta.unwrap_or(cfg.add_bos_default) && bos_id.is_some(),
                    stated_eos,
                    chat_template,
                })
            }
            "llama" => {
                let scores = m.floats("tokenizer.ggml.scores")?.ok_or_else(|| {
                    m.err("tokenizer.ggml.scores", "missing (SentencePiece merges are ordered by token score)")
                })?;
                if scores.len() != n {
                    return Err(m.err(
                        "tokenizer.ggml.scores",
                        format!("has {} entries but `tokenizer.ggml.tokens` has {n}", scores.len()),
                    ));
                }
                let add_space_prefix = m.boolean("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let unk = unk_id.map(|i| tokens[i as usize]);
                let inner = build_sentencepiece_bpe(&origin, &tokens, &types, &scores, unk, add_space_prefix)?;
                let pieces = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match (ty, parse_byte_token(t)) {
                        (TokenType::Byte, Some(b)) => vec![b].into_boxed_slice(),
                        _ => t.replace('▁', " ").into_bytes().into_boxed_slice(),
                    })
                    .collect();
                Tokenizer::assemble(Parts {
                    inner,
                    origin,
                    kind: "llama SentencePiece".to_string(),
                    special,
                    pieces,
                    decoding: Decoding::Pieces,
                    strip_leading_space: add_space_prefix,
                    bos_id,
                    add_bos: add_bos_meta.unwrap_or(true) && bos_id.is_some(),
                    stated_eos,
                    chat_template,
                })
            }
            other => Err(m.err(
                "tokenizer.ggml.model",
                format!("unsupported tokenizer model `{other}` (supported: gpt2, llama)"),
            )),
        }
    }

    /// The tokenizer of a resolved model without loading its weights: the GGUF metadata, or the
    /// directory's `tokenizer.json` (with `tokenizer_config.json` when present).
    pub fn from_model_files(files: &crate::source::ModelFiles) -> Result<Self> {
        match files {
            crate::source::ModelFiles::Gguf(path) => Tokenizer::from_gguf(&Gguf::open(path)?),
            crate::source::ModelFiles::HfDir(dir) => {
                let json = dir.join("tokenizer.json");
                if !json.is_file() {
                    return Err(tok_err(&dir.display().to_string(), "no tokenizer.json in the model directory"));
                }
                let config = dir.join("tokenizer_config.json");
                Tokenizer::from_json_file(&json, config.is_file().then_some(config.as_path()))
            }
        }
    }

    /// Loads a Hugging Face `tokenizer.json`, with `tokenizer_config.json` (chat template,
    /// bos/eos tokens, `add_bos_token`) when given. A `generation_config.json` next to
    /// `tokenizer.json` contributes its `eos_token_id`s, and a `chat_template.jinja` there is used
    /// when the config has no template.
    pub fn from_json_file(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        let origin = tokenizer_json.display().to_string();
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| tok_err(&origin, format!("cannot parse tokenizer.json: {e}")))?;
        inner.with_truncation(None).map_err(|e| tok_err(&origin, e.to_string()))?;
        inner.with_padding(None);

        let config = match tokenizer_config_json {
            None => None,
            Some(p) => Some(read_json(p)?),
        };
        let dir = tokenizer_json.parent();

        // Vocabulary by id, special flags.
        let vocab = inner.get_vocab(true);
        let size = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![String::new(); size];
        for (t, &i) in &vocab {
            tokens[i as usize] = t.clone();
        }
        let mut special = vec![false; size];
        let mut added_plain = HashSet::new();
        for (id, tok) in inner.get_added_tokens_decoder() {
            if let Some(s) = special.get_mut(id as usize) {
                *s = tok.special;
            }
            if !tok.special {
                added_plain.insert(id);
            }
        }

        // A plain ByteLevel decoder is modelled exactly by the byte table; anything else is left
        // to `tokenizers`.
        let decoder_type = inner
            .get_decoder()
            .and_then(|d| serde_json::to_value(d).ok())
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string));
        let byte_level = decoder_type.as_deref() == Some("ByteLevel");
        let pieces: Pieces = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let raw = || t.as_bytes().to_vec();
                if byte_level && !special[i] {
                    byte_level_decode(t).unwrap_or_else(raw).into_boxed_slice()
                } else if !byte_level && !added_plain.contains(&(i as u32)) {
                    // Canonical text for the fingerprint only: SentencePiece spelling and bytes.
                    match parse_byte_token(t) {
                        Some(b) => vec![b].into_boxed_slice(),
                        None => t.replace('▁', " ").into_bytes().into_boxed_slice(),
                    }
                } else {
                    raw().into_boxed_slice()
                }
            })
            .collect();

        let token_field = |key: &str| -> Option<String> {
            let v = config.as_ref()?.get(key)?;
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            }
        };
        let mut bos_id = token_field("bos_token").and_then(|t| inner.token_to_id(&t));
        let eos_id = token_field("eos_token").and_then(|t| inner.token_to_id(&t));
        let add_bos_cfg = config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool());
        // Without an explicit flag, ask the post-processor: does it put a special token first?
        let probe_first = {
            let with = inner.encode_fast("a", true).map_err(|e| tok_err(&origin, e.to_string()))?;
            let without = inner.encode_fast("a", false).map_err(|e| tok_err(&origin, e.to_string()))?;
            let (w, wo) = (with.get_ids(), without.get_ids());
            (w.len() > wo.len() && w.first() != wo.first()).then(|| w[0])
        };
        let add_bos = match add_bos_cfg {
            Some(b) => b,
            None => probe_first.is_some() && (bos_id.is_none() || probe_first == bos_id),
        };
        if bos_id.is_none() && add_bos {
            bos_id = probe_first;
        }

        let mut stated_eos: Vec<u32> = eos_id.into_iter().collect();
        if let Some(gen) = dir.map(|d| d.join("generation_config.json")).filter(|p| p.is_file()) {
            // Optional extra: a malformed generation config is ignored rather than fatal.
            if let Ok(v) = read_json(&gen) {
                match v.get("eos_token_id") {
                    Some(serde_json::Value::Number(x)) => stated_eos.extend(x.as_u64().map(|x| x as u32)),
                    Some(serde_json::Value::Array(a)) => {
                        stated_eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                    }
                    _ => {}
                }
            }
        }
        stated_eos.retain(|&i| (i as usize) < size);

        let mut chat_template = config.as_ref().and_then(|c| c.get("chat_template")).and_then(|t| match t {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => {
                let named = |name: &str| list.iter().find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name));
                named("default")
                    .or_else(|| list.first())
                    .and_then(|e| e.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            }
            _ => None,
        });
        if chat_template.is_none() {
            if let Some(p) = dir.map(|d| d.join("chat_template.jinja")).filter(|p| p.is_file()) {
                chat_template = Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?);
            }
        }

        let model_kind = match inner.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };
        Tokenizer::assemble(Parts {
            inner,
            origin,
            kind: format!("tokenizer.json ({model_kind})"),
            special,
            pieces,
            decoding: if byte_level { Decoding::Pieces } else { Decoding::Hf },
            strip_leading_space: false,
            bos_id,
            add_bos: add_bos && bos_id.is_some(),
            stated_eos,
            chat_template,
        })
    }

    fn assemble(p: Parts) -> Result<Self> {
        let mut eos_ids = Vec::new();
        let mut push = |id: u32| {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        };
        for &id in &p.stated_eos {
            push(id);
        }
        for (id, _) in p.special.iter().enumerate().filter(|(_, &s)| s) {
            if p.inner.id_to_token(id as u32).is_some_and(|t| END_OF_GENERATION.contains(&t.as_str())) {
                push(id as u32);
            }
        }
        let fingerprint = fingerprint(&p.pieces);
        Ok(Tokenizer {
            inner: p.inner,
            origin: p.origin,
            kind: p.kind,
            special: p.special,
            pieces: p.pieces,
            decoding: p.decoding,
            strip_leading_space: p.strip_leading_space,
            bos_id: p.bos_id,
            add_bos: p.add_bos,
            eos_ids,
            chat_template: p.chat_template,
            fingerprint,
        })
    }

    /// Replaces the chat template (e.g. to give a base model one, or to fix a broken one).
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self
    }

    // -----------------------------------------------------------------------------------------
    // Encoding and decoding
    // -----------------------------------------------------------------------------------------

    /// Token ids of `text`. Special-token strings in `text` (e.g. `<|im_start|>`) become their
    /// single ids. With `add_bos`, BOS is prepended if the model wants one
    /// ([`wants_bos`](Self::wants_bos)).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode_fast(text, false).map_err(|e| tok_err(&self.origin, format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`; special (control) tokens are omitted. Byte sequences that never complete
    /// valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.pieces.len()) {
            return Err(tok_err(
                &self.origin,
                format!("token id {bad} is out of range (the vocabulary has {} tokens)", self.pieces.len()),
            ));
        }
        match self.decoding {
            Decoding::Pieces => {
                let mut bytes = Vec::new();
                let mut first = true;
                for &id in ids {
                    if self.special[id as usize] {
                        continue;
                    }
                    let piece = &self.pieces[id as usize][..];
                    bytes.extend_from_slice(self.strip_first(piece, first));
                    first = false;
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Decoding::Hf => {
                self.inner.decode(ids, true).map_err(|e| tok_err(&self.origin, format!("decoding failed: {e}")))
            }
        }
    }

    fn strip_first<'p>(&self, piece: &'p [u8], first: bool) -> &'p [u8] {
        if first && self.strip_leading_space {
            piece.strip_prefix(b" ").unwrap_or(piece)
        } else {
            piece
        }
    }

    // -----------------------------------------------------------------------------------------
    // Vocabulary information
    // -----------------------------------------------------------------------------------------

    /// Number of token ids (GGUF: the length of `tokenizer.ggml.tokens`, which matches the
    /// embedding table; tokenizer.json: highest id + 1, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether [`encode`](Self::encode) with `add_bos = true` prepends BOS.
    pub fn wants_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends generation: the stated eos (and eot/eom), then any special token whose
    /// text is a known end-of-turn marker (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`, …).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Control/special tokens (and unknown/unused ones in GGUF vocabularies).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The vocabulary entry of `id` as the tokenizer's model spells it (e.g. `Ġthe`, `▁the`,
    /// `<0x0A>`, `<|im_start|>`); `None` for ids outside the vocabulary or holes in it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id).filter(|t| !t.is_empty())
    }

    /// The bytes `id` stands for inside a text (what it adds to a decoding that does not start
    /// with it); `None` for special tokens and ids outside the vocabulary. Concatenating the
    /// bytes of a run of ordinary tokens gives their text exactly: this is how text is aligned
    /// with token boundaries when translating between vocabularies.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        (i < self.pieces.len() && !self.special[i]).then(|| &self.pieces[i][..])
    }

    /// Like [`token_bytes`](Self::token_bytes), but special tokens give their literal text:
    /// what constraint engines build their token tries from (marking the specials themselves).
    pub fn piece_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize)
    }

    /// The id whose raw vocabulary entry is `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A short description: `gpt2 BPE (pre: smollm)`, `llama SentencePiece`, `tokenizer.json (BPE)`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Where the tokenizer came from (file path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A stable 64-bit hash (FNV-1a) of the id -> token table, over each id's canonical text
    /// (what it decodes to; special tokens by their literal text), so the same vocabulary read
    /// from GGUF or tokenizer.json fingerprints alike. Equal fingerprints mean two models agree
    /// on every id, including the vocabulary size.
    pub fn vocab_fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    // -----------------------------------------------------------------------------------------
    // Chat templates
    // -----------------------------------------------------------------------------------------

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template (Jinja, as transformers does: trim_blocks, lstrip_blocks, Python
    /// string methods) with `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the
    /// functions `raise_exception` and `strftime_now`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(template) = &self.chat_template else {
            return Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                problem: "the model has no chat template".into(),
            });
        };
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        render_chat_template(
            template,
            &self.origin,
            messages,
            add_generation_prompt,
            &text(self.bos_id),
            &text(self.eos_ids.first().copied()),
        )
    }
}

impl Tokenizer {
    /// The special token the chat template closes an assistant turn with (`<|im_end|>`,
    /// `<end_of_turn>`, `<|eot_id|>`, …), found by rendering a probe conversation and reading the
    /// first token after the assistant's text. `None` without a template or when the turn is
    /// closed by plain text.
    pub fn end_of_turn_id(&self) -> Option<u32> {
        const PROBE: &str = "specdec-end-of-turn-probe";
        let messages = [ChatMessage::new("user", "hi"), ChatMessage::new("assistant", PROBE)];
        let text = self.apply_chat_template(&messages, false).ok()?;
        let after = &text[text.rfind(PROBE)? + PROBE.len()..];
        let first = *self.encode(after, false).ok()?.first()?;
        self.is_special(first).then_some(first)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| tok_err(&path.display().to_string(), format!("invalid JSON: {e}")))
}

fn fingerprint(pieces: &Pieces) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(&(pieces.len() as u64).to_le_bytes());
    for p in pieces.iter() {
        eat(&(p.len() as u32).to_le_bytes());
        eat(p);
    }
    h
}

/// Which ids own their raw text in `vocab` (a duplicate text keeps the id the vocabulary maps it
/// to), for the token types [`add_vocab_tokens`] registers (their raw text is their vocabulary key).
fn owners(vocab: &Vocab, tokens: &[&str], types: &[TokenType]) -> Vec<bool> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (&t, ty))| !matches!(ty, TokenType::Normal) && vocab.get(t) == Some(&(i as u32)))
        .collect()
}

/// Registers control/unknown tokens as special added tokens and user-defined ones as plain added
/// tokens, both matched on the raw text. Only ids that own their text are registered ([`owners`]).
fn add_vocab_tokens(
    origin: &str,
    inner: &mut tokenizers::Tokenizer,
    tokens: &[&str],
    types: &[TokenType],
    owns: &[bool],
) -> Result<()> {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (i, (&t, ty)) in tokens.iter().zip(types).enumerate() {
        if t.is_empty() || !owns[i] {
            continue;
        }
        match ty {
            TokenType::Control | TokenType::Unknown => special.push(AddedToken::from(t, true).normalized(false)),
            TokenType::UserDefined => plain.push(AddedToken::from(t, false).normalized(false)),
            _ => {}
        }
    }
    if !special.is_empty() {
        inner.add_special_tokens(special).map_err(|e| tok_err(origin, e.to_string()))?;
    }
    if !plain.is_empty() {
        inner.add_tokens(plain).map_err(|e| tok_err(origin, e.to_string()))?;
    }
    Ok(())
}

fn build_byte_level_bpe(
    origin: &str,
    tokens: &[&str],
    types: &[TokenType],
    merges: &[Cow<str>],
    ignore_merges: bool,
    configure: impl FnOnce(&mut tokenizers::Tokenizer) -> Result<()>,
) -> Result<tokenizers::Tokenizer> {
    // Model keys: ordinary tokens in byte-level spelling. A converter occasionally writes an
    // ordinary token raw (e.g. U+FFFD); respell it so the merges can reach it.
    let mut vocab: Vocab = Vocab::with_capacity(tokens.len());
    for (i, (&t, ty)) in tokens.iter().zip(types).enumerate() {
        let key = if matches!(ty, TokenType::Normal) && byte_level_decode(t).is_none() {
            byte_level_encode(t.as_bytes())
        } else {
            t.to_string()
        };
        vocab.insert(key, i as u32);
    }
    let mut pairs: Merges = Vec::with_capacity(merges.len());
    for (i, line) in merges.iter().map(|m| m.as_ref()).enumerate() {
        // llama.cpp splits at the first space after the first character.
        let first = line.chars().next().map(char::len_utf8).unwrap_or(0);
        let Some(pos) = line[first..].find(' ').map(|p| p + first) else {
            return Err(tok_err(
                origin,
                format!(
                    "metadata `tokenizer.ggml.merges`: entry {i} ({line:?}) is not two tokens separated by a space"
                ),
            ));
        };
        let (a, b) = (&line[..pos], &line[pos + 1..]);
        // A merge naming something the vocabulary lacks can never apply; llama.cpp keeps it
        // inertly, `tokenizers` refuses it, so it is dropped.
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}")) {
            pairs.push((a.to_string(), b.to_string()));
        }
    }
    let owns = owners(&vocab, tokens, types);
    let bpe = BpeBuilder::new()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tok_err(origin, format!("cannot build the BPE model: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    configure(&mut inner)?;
    add_vocab_tokens(origin, &mut inner, tokens, types, &owns)?;
    Ok(inner)
}

fn build_sentencepiece_bpe(
    origin: &str,
    tokens: &[&str],
    types: &[TokenType],
    scores: &[f32],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let mut vocab: Vocab = Vocab::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    // Merges: every split of an ordinary token into two vocabulary entries, the token's score
    // deciding the merge's priority (ties: lower id first), as llama.cpp's SPM tokenizer does.
    let mut targets: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&i| types[i as usize] == TokenType::Normal && vocab.get(tokens[i as usize]) == Some(&i))
        .collect();
    targets.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    let mut pairs: Merges = Vec::new();
    let mut local: Vec<(u32, u32, usize)> = Vec::new();
    for &id in &targets {
        let t = tokens[id as usize];
        local.clear();
        for (k, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (vocab.get(&t[..k]), vocab.get(&t[k..])) {
                local.push((l, r, k));
            }
        }
        local.sort_by(|x, y| {
            scores[y.0 as usize]
                .total_cmp(&scores[x.0 as usize])
                .then(scores[y.1 as usize].total_cmp(&scores[x.1 as usize]))
        });
        pairs.extend(local.iter().map(|&(_, _, k)| (t[..k].to_string(), t[k..].to_string())));
    }
    let owns = owners(&vocab, tokens, types);
    let mut builder = BpeBuilder::new().vocab_and_merges(vocab, pairs).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| tok_err(origin, format!("cannot build the BPE model: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", "▁").map_err(|e| tok_err(origin, e.to_string()))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        tokenizers::normalizers::Sequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    inner.with_normalizer(Some(normalizer)).map_err(|e| tok_err(origin, e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(|e| tok_err(origin, e.to_string()))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    add_vocab_tokens(origin, &mut inner, tokens, types, &owns)?;
    Ok(inner)
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// Incremental detokenizer: feed generated ids one at a time, get text as soon as it is complete.
/// Never emits a partial UTF-8 sequence; special tokens produce no text. The concatenation of
/// every `push` and the final [`flush`](Self::flush) equals [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    // Byte-table path.
    pending: Vec<u8>,
    started: bool,
    // Generic path (decode-and-diff, like `tokenizers`' DecodeStream): `ids` holds the chunk of
    // ids whose text was emitted last (`emitted` of them, decoding to `prefix`) followed by the
    // ids not emitted yet. Diffing against that chunk gives spacing rules their left context and
    // always starts decoding at a character boundary.
    ids: Vec<u32>,
    emitted: usize,
    prefix: String,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder { tok, pending: Vec::new(), started: false, ids: Vec::new(), emitted: 0, prefix: String::new() }
    }

    /// Adds one id; returns newly completed text, if any. Out-of-range ids are ignored.
    pub fn push(&mut self, id: u32) -> Option<String> {
        let tok = self.tok;
        if id as usize >= tok.pieces.len() || tok.special[id as usize] {
            return None;
        }
        match tok.decoding {
            Decoding::Pieces => {
                let piece = tok.strip_first(&tok.pieces[id as usize], !self.started);
                self.started = true;
                self.pending.extend_from_slice(piece);
                let out = take_complete_utf8(&mut self.pending);
                (!out.is_empty()).then_some(out)
            }
            Decoding::Hf => {
                self.ids.push(id);
                let text = tok.inner.decode(&self.ids, true).unwrap_or_default();
                if text.ends_with('\u{FFFD}') {
                    return None;
                }
                self.take_new(&text)
            }
        }
    }

    /// Emits what `text` (the decoding of `ids`) adds to `prefix`, and makes the ids not yet
    /// emitted the new chunk.
    fn take_new(&mut self, text: &str) -> Option<String> {
        if text.len() <= self.prefix.len() || !text.is_char_boundary(self.prefix.len()) {
            return None;
        }
        let new = text[self.prefix.len()..].to_string();
        self.ids.drain(..self.emitted);
        self.emitted = self.ids.len();
        self.prefix = self.tok.inner.decode(&self.ids, true).unwrap_or_default();
        Some(new)
    }

    /// Whatever is still held back (an incomplete UTF-8 tail becomes U+FFFD).
    pub fn flush(&mut self) -> Option<String> {
        let out = match self.tok.decoding {
            Decoding::Pieces => String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned(),
            Decoding::Hf => {
                let text = self.tok.inner.decode(&self.ids, true).unwrap_or_default();
                self.take_new(&text).unwrap_or_default()
            }
        };
        (!out.is_empty()).then_some(out)
    }
}

/// Removes and returns the longest prefix of `buf` that is complete UTF-8; invalid bytes (that
/// no continuation can fix) become U+FFFD, an incomplete tail stays in `buf`.
fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..start + valid]).expect("validated"));
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    out
}

// ---------------------------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------------------------

fn render_chat_template(
    template: &str,
    origin: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    use minijinja::{Environment, ErrorKind};
    let fail = |e: minijinja::Error| {
        let problem = if e.kind() == ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.starts_with(RAISED)) {
            let d = e.detail().unwrap_or_default();
            format!("template raised an exception: {}", &d[RAISED.len()..])
        } else {
            let mut p = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                p.push_str(&format!(": {s}"));
                src = s.source();
            }
            p
        };
        Error::ChatTemplate { origin: origin.to_string(), problem }
    };
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        strftime(&fmt, secs)
    });
    env.add_filter("tojson", tojson_python);
    let tmpl = env.template_from_str(template).map_err(fail)?;
    let ctx = minijinja::context! {
        messages => minijinja::Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    tmpl.render(ctx).map_err(fail)
}

const RAISED: &str = "raise_exception: ";

/// `tojson` as transformers defines it: Python's `json.dumps(ensure_ascii=False)` (separators
/// `", "`/`": "`, keys in insertion order unless `sort_keys`), not HTML-escaped.
fn tojson_python(
    value: minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<minijinja::Value> = match indent {
        Some(v) => Some(v),
        None => kwargs.get("indent")?,
    };
    let indent: Option<usize> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<minijinja::Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators {
        Some(s) => (
            s.get_item_by_index(0)?.as_str().unwrap_or(",").to_string(),
            s.get_item_by_index(1)?.as_str().unwrap_or(": ").to_string(),
        ),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let style = JsonStyle { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    write_json(&value, &style, 0, &mut out)?;
    Ok(minijinja::Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    v: &minijinja::Value,
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let json_err =
        |e: serde_json::Error| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("tojson: {e}"));
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).map_err(json_err)?),
        ValueKind::Map => {
            let mut keys: Vec<minijinja::Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&serde_json::to_string(&key).map_err(json_err)?);
                out.push_str(&style.key_sep);
                write_json(&v.get_item(k)?, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(item, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => out.push_str(&serde_json::to_string(v).map_err(json_err)?),
    }
    Ok(())
}

/// A small `strftime` for `strftime_now` (UTC): `%Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%`.
fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let d = doy_march - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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
        kv.extend(extra);
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
}
