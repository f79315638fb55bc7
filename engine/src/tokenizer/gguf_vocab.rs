//! The vocabulary embedded in a GGUF file, rebuilt as a `tokenizers` tokenizer.
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

use super::byte_level::{byte_level_decode, byte_level_encode, parse_byte_token};
use super::pre_tokenizers::{pre_config, supported_pre_tokenizers};
use super::special::{add_vocab_tokens, owners, TokenType};
use super::{tok_err, Decoding, Parts, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, MetaArray, MetaValue};
use std::borrow::Cow;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BpeBuilder, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, NormalizerWrapper};

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
    /// Strings that are not UTF-8 are an error: the GGUF reader replaces their bad bytes (an
    /// owned copy), which would silently merge distinct tokens into one text.
    fn strings(&self, key: &str) -> Result<Option<Vec<Cow<'g, str>>>> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        let strings = a.strings().ok_or_else(|| self.err(key, "expected an array of strings"))?;
        if let Some(i) = strings.iter().position(|s| matches!(s, Cow::Owned(_))) {
            return Err(self.err(key, format!("entry {i} is not valid UTF-8")));
        }
        Ok(Some(strings))
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

/// Longest token whose merges are derived: each split point hashes both halves, so a token
/// costs its length squared. Real SentencePiece vocabularies stay far below (Gemma 3's longest
/// ordinary tokens are runs of 31 `▁`, 93 bytes); a longer token can still be produced whole from
/// the input text, only not assembled by merges.
const MAX_SPLIT_TOKEN_BYTES: usize = 512;

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
        if t.len() > MAX_SPLIT_TOKEN_BYTES {
            continue;
        }
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
