//! A Hugging Face `tokenizer.json`, with `tokenizer_config.json` and its neighbours.

use super::byte_level::{byte_level_decode, parse_byte_token};
use super::{guarded, tok_err, Decoding, Parts, Pieces, Tokenizer};
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::Path;
use tokenizers::ModelWrapper;

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`, with `tokenizer_config.json` (chat template,
    /// bos/eos tokens, `add_bos_token`) when given. A `generation_config.json` next to
    /// `tokenizer.json` contributes its `eos_token_id`s, and a `chat_template.jinja` there is used
    /// when the config has no template.
    pub fn from_json_file(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self> {
        let origin = tokenizer_json.display().to_string();
        let bytes = read_capped(tokenizer_json, MAX_TOKENIZER_JSON_BYTES)?;
        let mut inner = parse_tokenizer_json(&bytes).map_err(|e| tok_err(&origin, format!("cannot parse tokenizer.json: {e}")))?;
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
        // Ids index a table, so a stray huge id would allocate gigabytes of empty entries.
        if size > MAX_VOCAB_IDS || size > vocab.len().saturating_mul(4).saturating_add(1024) {
            return Err(tok_err(
                &origin,
                format!(
                    "token id {} is out of range: {} entries may use ids below {}",
                    size - 1,
                    vocab.len(),
                    vocab.len().saturating_mul(4).saturating_add(1024).min(MAX_VOCAB_IDS)
                ),
            ));
        }
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
            let with = guarded(|| inner.encode_fast("a", true)).map_err(|e| tok_err(&origin, e))?;
            let without = guarded(|| inner.encode_fast("a", false)).map_err(|e| tok_err(&origin, e))?;
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
                let text = String::from_utf8(read_capped(&p, MAX_CONFIG_BYTES)?)
                    .map_err(|e| tok_err(&p.display().to_string(), format!("not valid UTF-8: {e}")))?;
                chat_template = Some(text);
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
}

/// `tokenizers`' own parser, which panics on some malformed input (a `decoder` or `normalizer`
/// object of the wrong shape reaches an `expect`): syntax is checked first, and a panic left is
/// caught and reported like any other parse error.
fn parse_tokenizer_json(bytes: &[u8]) -> std::result::Result<tokenizers::Tokenizer, String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("the tokenizers crate rejected it by panicking ({message})"))
        }
    }
}

/// Largest tokenizer.json read: the largest real ones (262k-token vocabularies) are ~35 MB.
const MAX_TOKENIZER_JSON_BYTES: u64 = 256 << 20;
/// Largest tokenizer_config.json, generation_config.json or chat_template.jinja read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Highest token id + 1 accepted, 64 times the largest real vocabularies.
const MAX_VOCAB_IDS: usize = 1 << 24;

/// The file's bytes, refused before reading when larger than `cap`. Nesting depth needs no cap
/// here: serde_json refuses JSON nested deeper than 128 levels.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let too_large = |len: u64| tok_err(&path.display().to_string(), format!("the file has {len} bytes, larger than the {cap}-byte limit"));
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > cap {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow after the size check: never read more than the cap.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = read_capped(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| tok_err(&path.display().to_string(), format!("invalid JSON: {e}")))
}
