//! Tokenizers: the vocabulary embedded in a GGUF file, or a Hugging Face `tokenizer.json`.
//!
//! Both end up as a [`tokenizers::Tokenizer`] plus what the engine needs around it: which ids are
//! special (control tokens, skipped when decoding), BOS and the set of ids that end generation,
//! the chat template, and a per-id byte table for exact, streaming-safe decoding.

mod byte_level;
mod chat_template;
mod gguf_vocab;
mod hf_json;
mod pre_tokenizers;
mod special;
mod stream;
mod template_budget;
#[cfg(test)]
mod tests;

pub use pre_tokenizers::supported_pre_tokenizers;
pub use stream::StreamDecoder;
pub use template_budget::TemplateLimits;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use special::END_OF_GENERATION;

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

/// three times the memory (a pointer, a length and an allocation header per id).
#[derive(Clone, Default)]
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
#[derive(Clone)]
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
    /// Where a replacement chat template came from (errors name it); `None`: the model's own.
    chat_template_origin: Option<String>,
    template_limits: TemplateLimits,
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

/// Runs a `tokenizers` call, turning its error or its panic into a message.
fn guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> std::result::Result<T, E>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .map_or_else(|| "the tokenizers crate panicked".to_string(), |m| format!("the tokenizers crate panicked: {m}"))),
    }
}

fn tok_err(origin: &str, problem: impl Into<String>) -> Error {
    Error::Tokenizer { origin: origin.to_string(), problem: problem.into() }
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
            chat_template_origin: None,
            template_limits: TemplateLimits::default(),
            fingerprint,
        })
    }

    /// Replaces the chat template (e.g. to give a base model one, or to fix a broken one).
    pub fn with_chat_template(mut self, template: Option<String>) -> Self {
        self.chat_template = template;
        self.chat_template_origin = None;
        self
    }

    /// Replaces the chat template with one read from elsewhere: its errors (syntax, limits)
    /// name `origin` (e.g. the template file) instead of the model.
    pub fn with_chat_template_from(mut self, template: String, origin: impl Into<String>) -> Self {
        self.chat_template = Some(template);
        self.chat_template_origin = Some(origin.into());
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
            guarded(|| self.inner.encode_fast(text, false)).map_err(|e| tok_err(&self.origin, format!("encoding failed: {e}")))?;
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
                self.hf_decode(ids).map_err(|e| tok_err(&self.origin, format!("decoding failed: {e}")))
            }
        }
    }

    /// The `tokenizers` decoder, which panics on some hostile configurations (a `Strip` decoder
    /// asked to strip more than a piece holds, found by fuzzing): that becomes an error.
    fn hf_decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        guarded(|| self.inner.decode(ids, true))
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
