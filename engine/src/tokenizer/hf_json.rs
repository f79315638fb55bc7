//! A Hugging Face `tokenizer.json`, with `tokenizer_config.json` and its neighbours.

use super::byte_level::{byte_level_decode, parse_byte_token};
use super::{tok_err, Decoding, Parts, Pieces, Tokenizer};
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
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| tok_err(&path.display().to_string(), format!("invalid JSON: {e}")))
}
