//! JSON-schema and Lark-grammar constraints, backed by [llguidance] (the Earley-parser engine
//! behind guidance, and the structured-output backend of vLLM, SGLang and llama.cpp). It computes
//! each token mask lazily from the parser state (no precomputed automaton over the whole
//! vocabulary, so a 150k-token vocabulary costs nothing up front) and rolls back token by token,
//! which is what speculative verification needs.
//!
//! The token trie is built from this engine's own tokenizer: every id's exact bytes, special
//! tokens marked as such (they can never appear inside constrained text). llguidance's single
//! end-of-sequence token stands for every id of the model's end-of-generation set.
//!
//! [llguidance]: https://github.com/guidance-ai/llguidance

use crate::constraint::{TokenConstraint, TokenMask};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

fn constraint_err(e: impl std::fmt::Display) -> Error {
    Error::Constraint(e.to_string())
}

/// Compiles schemas and grammars for one model's vocabulary (build once, reuse per request).
pub struct GrammarCompiler {
    factory: ParserFactory,
    vocab: usize,
    eos: Vec<u32>,
}

impl GrammarCompiler {
    /// `vocab` is the model's vocabulary size (its logit rows), which may exceed the tokenizer's;
    /// `eos` the ids that end generation (the constraint allows them once the text is complete).
    pub fn new(tokenizer: &Tokenizer, vocab: usize, eos: &[u32]) -> Result<Self> {
        let &first_eos = eos.first().ok_or_else(|| Error::Constraint("constrained generation needs an end-of-sequence token".into()))?;
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match tokenizer.piece_bytes(id) {
                Some(bytes) if tokenizer.is_special(id) || eos.contains(&id) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(bytes);
                    w
                }
                Some(bytes) => bytes.to_vec(),
                None => Vec::new(),
            })
            .collect();
        let mut info = TokRxInfo::new(vocab as u32, first_eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(constraint_err)?;
        factory.quiet();
        Ok(GrammarCompiler { factory, vocab, eos: eos.to_vec() })
    }

    /// Output must be one JSON value valid against `schema` (JSON Schema; llguidance's supported
    /// subset, which covers types, properties, required, enums, const, arrays, numeric and length
    /// bounds, patterns, anyOf/oneOf and local `$ref`s).
    pub fn json_schema(&self, schema: &serde_json::Value) -> Result<Grammar> {
        self.compile(TopLevelGrammar::from_json_schema(schema.clone()))
    }

    /// Output must match a Lark grammar (llguidance's dialect: `start: ...`, `/regex/` terminals,
    /// `%json{...}` for embedded schemas).
    pub fn lark(&self, grammar: &str) -> Result<Grammar> {
        self.compile(TopLevelGrammar::from_lark(grammar.to_string()))
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<Grammar> {
        let parser = self.factory.create_parser(grammar).map_err(constraint_err)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Constraint(e));
        }
        Ok(Grammar { matcher, eos: self.eos.clone(), vocab: self.vocab })
    }
}

/// One compiled constraint, ready for one generation.
pub struct Grammar {
    matcher: Matcher,
    eos: Vec<u32>,
    vocab: usize,
}

impl Grammar {
    fn llg_eos(&self) -> u32 {
        self.eos[0]
    }
}

impl TokenConstraint for Grammar {
    fn allowed(&mut self, mask: &mut TokenMask) -> Result<()> {
        if self.matcher.is_stopped() {
            if let Some(e) = self.matcher.get_error() {
                return Err(Error::Constraint(e));
            }
        }
        let set = self.matcher.compute_mask_or_eos().map_err(constraint_err)?;
        let eos = self.llg_eos();
        let mut saw_eos = false;
        set.iter_set_entries(|i| {
            if i as u32 == eos {
                saw_eos = true;
            } else if i < self.vocab {
                mask.allow(i as u32);
            }
        });
        if saw_eos {
            for &e in &self.eos {
                mask.allow(e);
            }
        }
        Ok(())
    }

    fn advance(&mut self, token: u32) -> Result<()> {
        let token = if self.eos.contains(&token) { self.llg_eos() } else { token };
        self.matcher.consume_token(token).map_err(constraint_err)
    }

    fn rollback(&mut self, n: usize) -> Result<()> {
        self.matcher.rollback(n).map_err(constraint_err)
    }

    fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
