//! Pre-tokenizers named by a GGUF file's `tokenizer.ggml.pre`.

use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};


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

pub(super) struct PreConfig {
    pub(super) pre_tokenizer: PreTokenizerWrapper,
    pub(super) normalizer: Option<NormalizerWrapper>,
    /// A pre-token that is itself in the vocabulary is emitted whole (Llama-3, Tekken).
    pub(super) ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the file does not say.
    pub(super) add_bos_default: bool,
}

fn split_then_bytes(regex: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| format!("cannot compile the pre-tokenizer regex: {e}"))?;
    Ok(PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
}

pub(super) fn pre_config(pre: &str) -> std::result::Result<Option<PreConfig>, String> {
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
