//! Which tokens are special: llama.cpp's token types, the texts that end generation, and the
//! registration of control and user-defined tokens as added tokens.

use super::tok_err;
use crate::error::Result;
use tokenizers::models::bpe::Vocab;
use tokenizers::AddedToken;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub(super) fn from_code(v: i64) -> Option<Self> {
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
    pub(super) fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown | TokenType::Unused)
    }
}

/// Texts of tokens that end a turn or a document in the common chat formats. A token with one of
/// these texts that is a control (special) token joins [`Tokenizer::eos_ids`], as in llama.cpp.
pub(super) const END_OF_GENERATION: &[&str] = &[
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

/// Which ids own their raw text in `vocab` (a duplicate text keeps the id the vocabulary maps it
/// to), for the token types [`add_vocab_tokens`] registers (their raw text is their vocabulary key).
pub(super) fn owners(vocab: &Vocab, tokens: &[&str], types: &[TokenType]) -> Vec<bool> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (&t, ty))| !matches!(ty, TokenType::Normal) && vocab.get(t) == Some(&(i as u32)))
        .collect()
}

/// Registers control/unknown tokens as special added tokens and user-defined ones as plain added
/// tokens, both matched on the raw text. Only ids that own their text are registered ([`owners`]).
pub(super) fn add_vocab_tokens(
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
