//! Experiment configuration (`specdec run CONFIG.toml`): named models, pairs (a target with a
//! proposer), a grid, prompt sets, repeats and warmup. Unknown keys and wrong types are errors
//! that name the key and the line (serde `deny_unknown_fields` + the toml crate's spans).

use crate::backend::Backend;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Results go to `results/<name>/<run-id>/`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Base seed; each (prompt set, prompt, repeat) derives its own from it.
    #[serde(default)]
    pub seed: u64,
    /// Measured generations per (cell, prompt).
    #[serde(default = "one")]
    pub repeats: usize,
    /// Unrecorded generations per model (and per pair) before any measurement.
    #[serde(default = "one")]
    pub warmup: usize,
    /// Generate past end-of-sequence so every cell emits exactly `max_new_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    /// CPU threads for models that do not set their own (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Backend for models that do not set their own.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// CPU kernels for quantized weights, for models that do not set their own: "q8" (8-bit
    /// activations, integer dot products, as llama.cpp), "exact" (f32 activations) or "f32"
    /// (weights expanded at load). They change speed, c and verification cost, so they are logged.
    #[serde(default = "default_kernels")]
    pub kernels: String,
    pub models: BTreeMap<String, ModelEntry>,
    pub pairs: Vec<PairEntry>,
    pub grid: Grid,
    pub prompts: Vec<PromptSetEntry>,
    #[serde(default)]
    pub baselines: Baselines,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Anything `specdec generate --model` accepts: a file, a directory, `hf:`, `pypi:`, a short name.
    pub source: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub kernels: Option<String>,
    /// A LoRA adapter directory (PEFT's `adapter_config.json` + `adapter_model.safetensors`)
    /// applied to this model, relative to the config's directory: e.g. a draft aligned to its
    /// target by `specdec align`, listed beside the unadapted draft as a model of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProposerKind {
    Draft,
    Ngram,
    LayerSkip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    #[default]
    Fixed,
    Heuristic,
    Confidence,
    Optimal,
    /// Cost-aware k (0 included) from measured costs and online acceptance.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairEntry {
    /// Label in records, summaries and plots (default `draft→target`, `ngram→target`, …).
    #[serde(default)]
    pub name: Option<String>,
    pub target: String,
    /// A model name from `[models]`; implies `proposer = "draft"`.
    #[serde(default)]
    pub draft: Option<String>,
    #[serde(default)]
    pub proposer: Option<ProposerKind>,
    /// Longest n-gram matched by the ngram proposer.
    #[serde(default)]
    pub ngram: Option<usize>,
    /// Layers of the target the layer-skip draft runs.
    #[serde(default)]
    pub draft_layers: Option<usize>,
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Bound on k for adaptive schedules (default 8).
    #[serde(default)]
    pub max_k: Option<usize>,
    /// Cost ratio c the optimal schedule assumes (default 0.35).
    #[serde(default)]
    pub cost_ratio: Option<f64>,
    /// Confidence-stop threshold on the draft's top probability (schedule "confidence"; default 0.4).
    #[serde(default)]
    pub confidence: Option<f32>,
    /// How sampled drafts are verified: "token" or "block" (default "block").
    #[serde(default)]
    pub verify: Option<String>,
    /// A truncated draft vocabulary: the draft's head keeps the N most frequent ids.
    #[serde(default)]
    pub draft_vocab: Option<usize>,
    /// A draft with another vocabulary: "auto" (default), "text" or "shared-tokens".
    #[serde(default)]
    pub cross_vocab: crate::proposers::CrossVocabMode,
    /// The token-frequency table for that (default: the builtin one for the draft's tokenizer),
    /// relative to the config's directory.
    #[serde(default)]
    pub draft_vocab_table: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Draft lengths (the starting k of adaptive schedules).
    pub k: Vec<usize>,
    pub temperature: Vec<f32>,
    #[serde(default = "one_f32")]
    pub top_p: Vec<f32>,
    #[serde(default = "zero_usize")]
    pub top_k: Vec<usize>,
    pub max_new_tokens: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSetEntry {
    /// Label (default: the file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// JSONL prompt file (notebooks-data/prompts/README.md), relative to the config's directory or
    /// any of its ancestors (so `notebooks-data/prompts/code.jsonl` works from the repo's configs).
    pub file: PathBuf,
    /// Use only the first `limit` prompts.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Render prompts (or their `messages`) with the model's chat template.
    #[serde(default = "yes")]
    pub chat: bool,
    #[serde(default)]
    pub system: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// Draft-only runs (for the draft's speed and the cost ratio from whole generations).
    #[serde(default = "yes")]
    pub draft: bool,
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines { draft: true }
    }
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn one_f32() -> Vec<f32> {
    vec![1.0]
}
fn zero_usize() -> Vec<usize> {
    vec![0]
}
fn default_backend() -> String {
    "flex".into()
}
fn default_kernels() -> String {
    "q8".into()
}

/// Parses a kernel mode name as configs and `--kernels` spell it.
pub fn parse_kernels(name: &str) -> Result<engine::cpu::KernelMode> {
    use engine::cpu::KernelMode;
    match name {
        "q8" => Ok(KernelMode::Q8),
        "exact" => Ok(KernelMode::Exact),
        "f32" => Ok(KernelMode::F32),
        other => bail!("kernels must be \"q8\", \"exact\" or \"f32\", got {other:?}"),
    }
}

/// A prompt as the runner uses it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prompt {
    pub id: String,
    #[serde(default)]
    pub category: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<engine::tokenizer::ChatMessage>>,
    /// Reference answer, where the task has one (translation, QA, math, long-context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Words a good answer contains (for quality checks; not used for timing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Follow-up user turns, each asked after the model's own answer to the one before
    /// (Spec-Bench's multi-turn questions); a record covers all turns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<String>,
}

/// A prompt set with its prompts loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptSet {
    pub name: String,
    pub chat: bool,
    pub system: Option<String>,
    pub prompts: Vec<Prompt>,
}

impl std::fmt::Display for ProposerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProposerKind::Draft => "draft",
            ProposerKind::Ngram => "ngram",
            ProposerKind::LayerSkip => "layer-skip",
        })
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Fixed => "fixed",
            ScheduleKind::Heuristic => "heuristic",
            ScheduleKind::Confidence => "confidence",
            ScheduleKind::Optimal => "optimal",
            ScheduleKind::Auto => "auto",
        })
    }
}

impl PairEntry {
    /// The proposer settings of this pair.
    /// The pair's verification (checked by `validate`).
    pub fn verification(&self) -> engine::speculative::Verification {
        self.verify.as_deref().map_or(crate::proposers::DEFAULT_VERIFICATION, |v| v.parse().unwrap_or(crate::proposers::DEFAULT_VERIFICATION))
    }

    pub fn spec(&self) -> crate::proposers::ProposerSpec {
        use crate::proposers::*;
        ProposerSpec {
            kind: self.proposer(),
            ngram: self.ngram.unwrap_or(3),
            schedule: self.schedule,
            max_k: self.max_k.unwrap_or(DEFAULT_MAX_K),
            cost_ratio: self.cost_ratio.unwrap_or(DEFAULT_COST_RATIO),
            confidence: self.confidence,
            verification: self.verification(),
            draft_vocab: self.draft_vocab,
            cross_vocab: self.cross_vocab,
        }
    }

    pub fn proposer(&self) -> ProposerKind {
        self.proposer.unwrap_or(if self.draft.is_some() { ProposerKind::Draft } else { ProposerKind::Ngram })
    }

    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.proposer() {
            ProposerKind::Draft => format!("{}→{}", self.draft.as_deref().unwrap_or("?"), self.target),
            ProposerKind::Ngram => format!("ngram{}→{}", self.ngram.unwrap_or(3), self.target),
            ProposerKind::LayerSkip => format!("{}@{}→{}", self.target, self.draft_layers.unwrap_or(0), self.target),
        })
    }

    /// The k values the grid runs this pair at: the grid's, except for the auto schedule, which
    /// chooses k itself (up to `max_k`) and runs once.
    pub fn ks(&self, grid: &[usize]) -> Vec<usize> {
        match self.schedule {
            ScheduleKind::Auto => vec![self.max_k.unwrap_or(crate::proposers::DEFAULT_MAX_K)],
            _ => grid.to_vec(),
        }
    }

    /// The model whose draft-only baseline measures this pair's drafting cost, if it has one:
    /// a draft model, or the target's first L layers (named `target@L`).
    pub fn draft_model_label(&self) -> Option<String> {
        match self.proposer() {
            ProposerKind::Draft => self.draft.clone(),
            ProposerKind::LayerSkip => self.draft_layers.map(|l| format!("{}@{l}", self.target)),
            ProposerKind::Ngram => None,
        }
    }
}

impl ExperimentConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let cfg: ExperimentConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Cross-field checks the types cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            bail!("`name` must be a plain directory name, got {:?}", self.name);
        }
        if self.repeats == 0 {
            bail!("`repeats` must be at least 1");
        }
        if self.models.is_empty() || self.pairs.is_empty() || self.prompts.is_empty() {
            bail!("a config needs at least one entry in each of [models], [[pairs]] and [[prompts]]");
        }
        for (name, m) in &self.models {
            if name.contains(['|', '@', '/']) {
                bail!("model name {name:?} must not contain '|', '@' or '/'");
            }
            self.backend_of(name).with_context(|| format!("[models.{name}]"))?;
            self.kernels_of(name).with_context(|| format!("[models.{name}]"))?;
            if m.threads == Some(0) {
                bail!("[models.{name}] threads must be at least 1");
            }
        }
        self.backend.parse::<Backend>().map_err(|e| anyhow::anyhow!("`backend`: {e}"))?;
        let mut labels = std::collections::BTreeSet::new();
        for (i, p) in self.pairs.iter().enumerate() {
            let at = format!("[[pairs]] #{} ({})", i + 1, p.label());
            if !self.models.contains_key(&p.target) {
                bail!("{at}: target {:?} is not in [models]", p.target);
            }
            match (p.proposer(), &p.draft) {
                (ProposerKind::Draft, None) => bail!("{at}: proposer \"draft\" needs `draft = \"<model>\"`"),
                (ProposerKind::Draft, Some(d)) if !self.models.contains_key(d) => bail!("{at}: draft {d:?} is not in [models]"),
                (ProposerKind::Ngram | ProposerKind::LayerSkip, Some(_)) => bail!("{at}: `draft` implies proposer \"draft\""),
                (ProposerKind::LayerSkip, None) if p.draft_layers.unwrap_or(0) == 0 => {
                    bail!("{at}: proposer \"layer-skip\" needs `draft_layers` ≥ 1")
                }
                _ => {}
            }
            if p.schedule == ScheduleKind::Confidence && p.proposer() == ProposerKind::Ngram {
                bail!("{at}: the confidence schedule needs a model proposer (draft or layer-skip)");
            }
            if p.ngram == Some(0) || p.max_k == Some(0) {
                bail!("{at}: `ngram` and `max_k` must be at least 1");
            }
            if p.draft_vocab == Some(0) || (p.draft_vocab.is_some() && p.proposer() == ProposerKind::Ngram) {
                bail!("{at}: `draft_vocab` must be at least 1 and needs a model proposer");
            }
            if let Some(v) = &p.verify {
                v.parse::<engine::speculative::Verification>().map_err(|e| anyhow::anyhow!("{at}: `verify`: {e}"))?;
            }
            if p.schedule == ScheduleKind::Auto && p.max_k.unwrap_or(crate::proposers::DEFAULT_MAX_K) > engine::speculative::MAX_AUTO_K {
                bail!("{at}: the auto schedule drafts at most {} tokens (`max_k`)", engine::speculative::MAX_AUTO_K);
            }
            if !labels.insert(p.label()) {
                bail!("{at}: two pairs share the label {:?}; give one a `name`", p.label());
            }
        }
        let g = &self.grid;
        if g.k.is_empty() || g.temperature.is_empty() || g.top_p.is_empty() || g.top_k.is_empty() || g.max_new_tokens.is_empty() {
            bail!("[grid]: every axis needs at least one value");
        }
        if g.k.contains(&0) || g.max_new_tokens.contains(&0) {
            bail!("[grid]: `k` and `max_new_tokens` values must be at least 1");
        }
        if g.temperature.iter().any(|t| !(t.is_finite() && *t >= 0.0)) || g.top_p.iter().any(|p| !(*p > 0.0 && *p <= 1.0)) {
            bail!("[grid]: temperatures must be ≥ 0 and top_p in (0, 1]");
        }
        Ok(())
    }

    pub fn kernels_of(&self, model: &str) -> Result<engine::cpu::KernelMode> {
        parse_kernels(self.models.get(model).and_then(|m| m.kernels.as_deref()).unwrap_or(&self.kernels)).context("`kernels`")
    }

    pub fn backend_of(&self, model: &str) -> Result<Backend> {
        let name = self.models.get(model).and_then(|m| m.backend.as_deref()).unwrap_or(&self.backend);
        name.parse::<Backend>().map_err(|e| anyhow::anyhow!("backend: {e}"))
    }

    /// Loads every prompt set, resolving file paths against `base` and its ancestors.
    pub fn load_prompts(&self, base: &Path) -> Result<Vec<PromptSet>> {
        let mut sets = Vec::new();
        for entry in &self.prompts {
            let path = find_upwards(base, &entry.file)
                .with_context(|| format!("prompt file {} not found from {} or its parents", entry.file.display(), base.display()))?;
            let name = entry.name.clone().unwrap_or_else(|| entry.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            let mut prompts = read_prompts(&path)?;
            if let Some(limit) = entry.limit {
                prompts.truncate(limit);
            }
            if prompts.is_empty() {
                bail!("prompt set {name:?} ({}) has no prompts", path.display());
            }
            if sets.iter().any(|s: &PromptSet| s.name == name) {
                bail!("two prompt sets are named {name:?}; give one a `name`");
            }
            sets.push(PromptSet { name, chat: entry.chat, system: entry.system.clone(), prompts });
        }
        Ok(sets)
    }
}

/// A line of Spec-Bench's `question.jsonl` (MT-bench's layout): a numbered question of a
/// category, asked in one or more turns.
#[derive(Deserialize)]
struct SpecBenchQuestion {
    question_id: serde_json::Value,
    category: String,
    turns: Vec<String>,
    #[serde(default)]
    reference: Vec<String>,
}

impl SpecBenchQuestion {
    fn into_prompt(self) -> Result<Prompt> {
        let id = match self.question_id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => bail!("question_id must be a number or a string, not {other}"),
        };
        let mut turns = self.turns.into_iter();
        let prompt = turns.next().context("a question needs at least one turn")?;
        Ok(Prompt {
            id,
            category: self.category,
            prompt,
            messages: None,
            answer: self.reference.into_iter().next(),
            keywords: vec![],
            turns: turns.collect(),
        })
    }
}

/// Reads a JSONL prompt file — this project's prompt objects or Spec-Bench questions
/// (`question_id`, `category`, `turns`) — where a bad line is an error naming the file and line.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut prompts: Vec<Prompt> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let p: Prompt = if value.get("question_id").is_some() {
            serde_json::from_value::<SpecBenchQuestion>(value).with_context(|| format!("{}: not a Spec-Bench question", at()))?.into_prompt().with_context(at)?
        } else {
            serde_json::from_value(value).with_context(|| format!("{}: not a prompt object", at()))?
        };
        if prompts.iter().any(|q| q.id == p.id) {
            bail!("{}:{}: duplicate prompt id {:?}", path.display(), i + 1, p.id);
        }
        if p.id.is_empty() || p.prompt.trim().is_empty() {
            bail!("{}:{}: `id` and `prompt` must not be empty", path.display(), i + 1);
        }
        if let Some(m) = &p.messages {
            // The last turn is the one the model answers; `prompt` repeats it for plain-text runs.
            if m.last().map(|t| (t.role.as_str(), t.content.as_str())) != Some(("user", p.prompt.as_str())) {
                bail!("{}:{}: `messages` must end with a user turn equal to `prompt`", path.display(), i + 1);
            }
        }
        prompts.push(p);
    }
    Ok(prompts)
}

fn find_upwards(base: &Path, rel: &Path) -> Option<PathBuf> {
    if rel.is_absolute() {
        return rel.is_file().then(|| rel.to_path_buf());
    }
    let base = base.canonicalize().ok()?;
    base.ancestors().map(|dir| dir.join(rel)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[models.a]
source = "a.gguf"
[[pairs]]
target = "a"
proposer = "ngram"
[grid]
k = [2]
temperature = [0.0]
max_new_tokens = [8]
[[prompts]]
file = "p.jsonl"
"#;

    #[test]
    fn spec_bench_questions_read_as_prompts() {
        let dir = std::env::temp_dir().join(format!("specdec-spec-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("question.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]}"#,
                "\n",
                r#"{"question_id": "qa-1", "category": "qa", "turns": ["What is 2 + 2?"], "reference": ["4"]}"#,
                "\n",
                r#"{"id": "own", "category": "code", "prompt": "def f():"}"#,
                "\n"
            ),
        )
        .unwrap();
        let p = read_prompts(&path).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].id.as_str(), p[0].category.as_str(), p[0].prompt.as_str()), ("81", "writing", "Write a haiku about rain."));
        assert_eq!(p[0].turns, vec!["Now make it about snow.".to_string()]);
        assert_eq!((p[1].id.as_str(), p[1].answer.as_deref(), p[1].turns.len()), ("qa-1", Some("4"), 0));
        assert_eq!((p[2].id.as_str(), p[2].turns.len()), ("own", 0));
        std::fs::write(&path, r#"{"question_id": 1, "category": "x", "turns": []}"#).unwrap();
        let err = format!("{:#}", read_prompts(&path).unwrap_err());
        assert!(err.contains("question.jsonl:1") && err.contains("at least one turn"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = ExperimentConfig::parse(MINIMAL).unwrap();
        assert_eq!((c.repeats, c.warmup, c.grid.top_p.clone(), c.grid.top_k.clone()), (1, 1, vec![1.0], vec![0]));
        assert_eq!(c.pairs[0].label(), "ngram3→a");
        // The resolved config round-trips through TOML.
        let again = ExperimentConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.to_toml().unwrap(), c.to_toml().unwrap());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_line() {
        let e = ExperimentConfig::parse(&MINIMAL.replace("max_new_tokens = [8]", "max_new_tokens = [8]\nkk = 3")).unwrap_err().to_string();
        assert!(e.contains("kk") && e.contains("line 12"), "{e}");
        let e = ExperimentConfig::parse(&MINIMAL.replace("k = [2]", "k = \"two\"")).unwrap_err().to_string();
        assert!(e.contains("line 9") && e.contains("sequence"), "{e}");
    }

    /// Every shipped config parses and finds its prompts; every shipped prompt set is well formed.
    #[test]
    fn shipped_configs_and_prompt_sets_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut configs = 0;
        for entry in std::fs::read_dir(root.join("experiments/configs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = ExperimentConfig::from_file(&path).unwrap();
                c.load_prompts(path.parent().unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                configs += 1;
            }
        }
        assert!(configs >= 5, "found {configs} configs");
        let categories = ["translation", "summarization", "qa", "math", "long-context", "multi-turn", "code"];
        for cat in categories {
            let prompts = read_prompts(&root.join(format!("notebooks-data/prompts/{cat}.jsonl"))).unwrap();
            assert!(prompts.len() >= 8, "{cat}: {} prompts", prompts.len());
            assert!(prompts.iter().all(|p| p.category == cat), "{cat}: category field");
        }
        let multi = read_prompts(&root.join("notebooks-data/prompts/multi-turn.jsonl")).unwrap();
        assert!(multi.iter().all(|p| p.messages.as_ref().is_some_and(|m| m.len() >= 3)));
    }

    /// The alignment split: no held-out prompt (by id or by text) is among the prompts an adapter
    /// may be trained on — every `*-train.jsonl` of the split and the vocabulary-table prompts.
    #[test]
    fn alignment_held_out_prompts_are_never_trained_on() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = root.join("notebooks-data/prompts/align");
        let (mut training, mut held_out) = (vec![read_prompts(&root.join("notebooks-data/prompts/vocab-train.jsonl")).unwrap()], Vec::new());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let prompts = read_prompts(&path).unwrap();
            if name.ends_with("-train.jsonl") {
                training.push(prompts);
            } else if name.ends_with("-held-out.jsonl") {
                held_out.push(prompts);
            } else {
                panic!("{name}: neither a training nor a held-out half");
            }
        }
        assert_eq!(held_out.len(), 4, "one held-out half per category");
        let trained: Vec<_> = training.iter().flatten().collect();
        for p in held_out.iter().flatten() {
            assert!(trained.iter().all(|t| t.id != p.id && t.prompt != p.prompt), "held-out prompt `{}` is also a training prompt", p.id);
        }
    }

    #[test]
    fn cross_references_are_checked() {
        let e = ExperimentConfig::parse(&MINIMAL.replace("proposer = \"ngram\"", "draft = \"b\"")).unwrap_err().to_string();
        assert!(e.contains("\"b\" is not in [models]"), "{e}");
        let e = ExperimentConfig::parse(&MINIMAL.replace("proposer = \"ngram\"", "proposer = \"layer-skip\"")).unwrap_err().to_string();
        assert!(e.contains("draft_layers"), "{e}");
        let e = ExperimentConfig::parse(&MINIMAL.replace("k = [2]", "k = [0]")).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
}
