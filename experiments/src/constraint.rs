//! `--json-schema FILE` / `--grammar FILE`: load and compile a constraint once, start a fresh
//! instance per generation, and check what came out (the JSON parses and validates against the
//! schema with the `jsonschema` crate — an independent validator, not the constraint engine).

use anyhow::{Context, Result};
use engine::constraint::Constrained;
use engine::generate::StopReason;
use engine::grammar::GrammarCompiler;
use engine::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

enum Source {
    JsonSchema(serde_json::Value),
    Grammar(String),
}

/// A compiled constraint source for one model.
pub struct Constraint {
    compiler: GrammarCompiler,
    source: Source,
    file: PathBuf,
    vocab: usize,
}

/// Reads and checks the file given by `--json-schema` or `--grammar` (None when neither is).
/// `stop` are the ids that end generation: the constraint allows them once the text is complete.
pub fn load(tok: &Tokenizer, vocab: usize, stop: &[u32], json_schema: Option<&Path>, grammar: Option<&Path>) -> Result<Option<Constraint>> {
    let (file, source) = match (json_schema, grammar) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let schema = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
            (path, Source::JsonSchema(schema))
        }
        (None, Some(path)) => (path, Source::Grammar(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)),
        (None, None) => return Ok(None),
    };
    let c = Constraint { compiler: GrammarCompiler::new(tok, vocab, stop)?, source, file: file.to_path_buf(), vocab };
    c.start().with_context(|| format!("compiling {}", file.display()))?;
    Ok(Some(c))
}

impl Constraint {
    /// A fresh constraint positioned at the start of the generated text.
    pub fn start(&self) -> Result<Constrained> {
        let grammar = match &self.source {
            Source::JsonSchema(schema) => self.compiler.json_schema(schema)?,
            Source::Grammar(text) => self.compiler.lark(text)?,
        };
        Ok(Constrained::new(Box::new(grammar), self.vocab))
    }

    /// What the output is and whether it is what was asked for, for JSON reports.
    pub fn report(&self, text: &str, stop: StopReason) -> serde_json::Value {
        let (kind, errors) = match &self.source {
            Source::JsonSchema(schema) => ("json_schema", validation_errors(schema, text)),
            Source::Grammar(_) => ("grammar", Vec::new()),
        };
        serde_json::json!({
            "constraint": kind,
            "constraint_file": self.file,
            "constraint_complete": stop != StopReason::MaxTokens,
            "schema_valid": (kind == "json_schema").then_some(errors.is_empty()),
            "schema_errors": errors,
        })
    }
}

/// Why `text` is not a JSON value valid against `schema` (empty when it is). llguidance's own
/// `x-guidance` options are not JSON Schema and are ignored.
pub fn validation_errors(schema: &serde_json::Value, text: &str) -> Vec<String> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let mut schema = schema.clone();
    if let Some(o) = schema.as_object_mut() {
        o.remove("x-guidance");
    }
    match jsonschema::validator_for(&schema) {
        Ok(v) => v.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path)).collect(),
        Err(e) => vec![format!("invalid schema: {e}")],
    }
}
