//! `specdec align`: distil a target into its draft with a LoRA adapter (engine::align), written
//! in PEFT's format with a report of the losses, the data and the throughput.
//!
//! 1. The target continues every training prompt (through its chat template) and, where the two
//!    share a vocabulary, gives its distribution at every continuation position (top-k + rest);
//!    across vocabularies the continuation's text is re-tokenized for the draft as hard labels.
//! 2. The target is dropped; the draft is loaded on Burn's autodiff device with a fresh adapter
//!    (A random, B zero: it starts as the draft itself).
//! 3. Adam over shuffled batches for --epochs or --steps (or until --max-minutes), reporting the
//!    loss, tokens/s and the held-out loss and expected acceptance before and after.
//!
//! `--evaluate ADAPTER` trains nothing: it measures an existing adapter's expected acceptance on
//! the held-out prompts with the inference kernels, against the draft without it.

use crate::chat::stop_ids;
use crate::config::{read_prompts, Prompt};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use engine::align::{distill_from_target, evaluate, expected_acceptance, DistillConfig, Example, Loss, TrainConfig, Trainer};
use engine::model::LoraSpec;
use engine::tokenizer::{ChatMessage, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct AlignArgs {
    /// The draft to adapt (a .gguf, an HF directory or a short name).
    #[arg(long)]
    pub draft: String,
    /// The target whose distributions the draft learns.
    #[arg(long)]
    pub target: String,
    /// Training prompts (JSONL prompt files, notebooks-data/prompts/README.md).
    #[arg(long, required_unless_present = "evaluate", num_args = 1.., value_name = "PROMPTS.jsonl")]
    pub prompts: Vec<PathBuf>,
    /// Held-out prompts: their loss is reported before and after training (not trained on).
    #[arg(long, num_args = 1.., value_name = "PROMPTS.jsonl")]
    pub held_out: Vec<PathBuf>,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Projections to adapt, comma-separated: q, k, v, o, gate, up, down (or q_proj, …).
    #[arg(long, default_value = "q,v", value_delimiter = ',')]
    pub modules: Vec<String>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, conflicts_with = "steps")]
    pub epochs: usize,
    /// Optimizer steps instead of whole epochs.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop training after this many minutes (the adapter so far is written).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// kl: forward KL(target ‖ draft); tvd: total variation (1 − the acceptance rate).
    #[arg(long, value_enum, default_value = "kl")]
    pub loss: LossArg,
    /// Tokens the target generates per training prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Continuations sampled per prompt (different seeds).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Temperature the target's continuations are sampled at (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Target probabilities kept per position (the rest of the mass is one bucket).
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train nothing: measure an adapter already made (this command's or PEFT's) on the held-out
    /// prompts, the draft with it against the draft without it, both on the inference kernels;
    /// writes evaluation.json to --out.
    #[arg(long, value_name = "ADAPTER_DIR", requires = "held_out", conflicts_with_all = ["steps", "max_minutes"])]
    pub evaluate: Option<PathBuf>,
    /// Where the adapter (adapter_config.json, adapter_model.safetensors) and training.json go
    /// (evaluation.json with --evaluate).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: crate::RuntimeArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LossArg {
    Kl,
    Tvd,
}

impl From<LossArg> for Loss {
    fn from(l: LossArg) -> Loss {
        match l {
            LossArg::Kl => Loss::Kl,
            LossArg::Tvd => Loss::Tvd,
        }
    }
}

/// training.json: everything needed to tell what was trained, on what, how fast and how well.
#[derive(Debug, Serialize)]
pub struct AlignReport {
    pub draft: String,
    pub target: String,
    pub prompts: Vec<String>,
    pub held_out: Vec<String>,
    /// "distributions" (same vocabulary: the target's top-k at every position) or "labels".
    pub data: &'static str,
    pub rank: usize,
    pub lora_alpha: f64,
    pub modules: Vec<String>,
    pub trainable_parameters: usize,
    pub loss: Loss,
    pub lr: f64,
    pub batch: usize,
    pub steps: usize,
    pub epochs_completed: f64,
    pub training_sequences: usize,
    pub training_positions: usize,
    pub data_seconds: f64,
    pub train_seconds: f64,
    /// Tokens the draft read per second of training (forward + backward + update).
    pub train_tokens_per_s: f64,
    /// Tokens per second of the same forward pass without backward: the held-out evaluation
    /// after training, when every buffer and thread the pass needs has been made once.
    pub forward_tokens_per_s: Option<f64>,
    /// The same held-out evaluation before training: the draft's first passes, slower by the
    /// one-time costs (allocation, page faults) the training's rate has paid off over its steps.
    pub forward_tokens_per_s_first: Option<f64>,
    pub held_out_loss_before: Option<f64>,
    pub held_out_loss_after: Option<f64>,
    /// Per held-out file: the expected acceptance before and after training.
    pub held_out_acceptance: Vec<HeldOutAcceptance>,
    pub step_losses: Vec<f64>,
    pub stopped_by_time: bool,
    pub cpu: String,
    pub threads: usize,
}

fn module_name(m: &str) -> Result<String> {
    let full = if m.ends_with("_proj") { m.to_string() } else { format!("{m}_proj") };
    ensure!(LoraSpec::known_modules().contains(&full.as_str()), "--modules: `{m}` is none of q, k, v, o, gate, up, down");
    Ok(full)
}

/// A prompt's token ids through `tok`'s chat template (plain text without one).
fn prompt_ids(tok: &Tokenizer, p: &Prompt) -> Result<Vec<u32>> {
    let messages = p.messages.clone().unwrap_or_else(|| vec![ChatMessage::new("user", p.prompt.clone())]);
    Ok(match tok.chat_template() {
        Some(_) => tok.encode(&tok.apply_chat_template(&messages, true)?, false)?,
        None => tok.encode(&p.prompt, true)?,
    })
}

/// Every prompt of `files`, each with the index of its file.
fn read_all(files: &[PathBuf]) -> Result<Vec<(usize, Prompt)>> {
    let mut all = Vec::new();
    for (i, f) in files.iter().enumerate() {
        all.extend(read_prompts(f)?.into_iter().map(|p| (i, p)));
    }
    Ok(all)
}

/// The draft's expected acceptance on one held-out file's target continuations, before and after
/// training: 1 − TV(target, draft) per position (bucketed like the loss: the target's top-k and
/// the rest, which can only overstate it by the mass the buckets merge), averaged per sequence.
/// At T = 1 speculative sampling accepts a drafted token with exactly this probability on the
/// target's own text, so it is α without the sampling noise of a decoding run; with hard labels
/// (another vocabulary) it is the draft's probability of the target's next token.
#[derive(Debug, Serialize)]
pub struct HeldOutAcceptance {
    pub file: String,
    pub sequences: usize,
    pub before: crate::summary::Estimate,
    pub after: crate::summary::Estimate,
    /// after − before per sequence (paired), with its 95% interval.
    pub change: crate::summary::Estimate,
}

/// Each held-out sequence's mean 1 − TV under `model`.
fn acceptance_per_sequence(model: &dyn engine::model::CausalLm, examples: &[(usize, Example)]) -> Result<Vec<f64>> {
    examples.iter().map(|(_, e)| Ok(expected_acceptance(model, e)?)).collect()
}

fn acceptance_by_file(files: &[PathBuf], held: &[(usize, Example)], before: &[f64], after: &[f64]) -> Vec<HeldOutAcceptance> {
    use crate::summary::Estimate;
    files
        .iter()
        .enumerate()
        .filter_map(|(f, path)| {
            let rows: Vec<usize> = (0..held.len()).filter(|&i| held[i].0 == f).collect();
            (!rows.is_empty()).then(|| HeldOutAcceptance {
                file: path.display().to_string(),
                sequences: rows.len(),
                before: Estimate::of(&rows.iter().map(|&i| before[i]).collect::<Vec<_>>()),
                after: Estimate::of(&rows.iter().map(|&i| after[i]).collect::<Vec<_>>()),
                change: Estimate::of(&rows.iter().map(|&i| after[i] - before[i]).collect::<Vec<_>>()),
            })
        })
        .collect()
}

/// The distillation examples for `prompts`: `samples` target continuations each.
/// Each example comes with the file index of its prompt.
fn make_data(args: &AlignArgs, prompts: &[(usize, Prompt)], target: &engine::LoadedModel, draft_tok: &Tokenizer, same_vocab: bool, what: &str) -> Result<Vec<(usize, Example)>> {
    let stop = stop_ids(&target.tokenizer);
    let bar = ProgressBar::new((prompts.len() * args.samples) as u64);
    bar.set_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]").expect("template"));
    bar.set_message(format!("target continues the {what} prompts"));
    let mut examples = Vec::new();
    for (i, (file, p)) in prompts.iter().enumerate() {
        let ids = prompt_ids(&target.tokenizer, p)?;
        for s in 0..args.samples {
            let cfg = DistillConfig { max_new_tokens: args.max_new_tokens, temperature: args.temperature, top_k: args.top_k, seed: args.seed ^ ((i * args.samples + s) as u64).wrapping_mul(0x9E37_79B9) };
            let example = distill_from_target(target.model.as_ref(), &ids, &stop, &cfg).with_context(|| format!("prompt `{}`", p.id))?;
            let example = if same_vocab {
                example
            } else {
                // Across vocabularies: the continuation's text, re-tokenized after the draft's own
                // rendering of the prompt, as hard labels.
                let text = target.tokenizer.decode(&example.tokens[example.first..])?;
                let draft_prompt = prompt_ids(draft_tok, p)?;
                let mut tokens = draft_prompt.clone();
                tokens.extend(draft_tok.encode(&text, false)?);
                if tokens.len() <= draft_prompt.len() {
                    continue;
                }
                Example::labels(tokens, draft_prompt.len())?
            };
            examples.push((*file, example));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(examples)
}

/// Loads the target once and makes the data of each prompt list from it (same seeds whichever
/// command asks); also whether target and draft share a vocabulary (distributions) or not (labels).
fn target_data(args: &AlignArgs, device: &burn::tensor::Device, draft_tok: &Tokenizer, lists: &[(&[(usize, Prompt)], &str)]) -> Result<(Vec<Vec<(usize, Example)>>, bool)> {
    let target = engine::load_model(&args.target, device).with_context(|| format!("loading target `{}`", args.target))?;
    let same_vocab = target.tokenizer.vocab_fingerprint() == draft_tok.vocab_fingerprint();
    let data = lists.iter().map(|(prompts, what)| make_data(args, prompts, &target, draft_tok, same_vocab, what)).collect::<Result<_>>()?;
    Ok((data, same_vocab))
}

fn mean_loss(model: &dyn engine::model::CausalLm, examples: &[(usize, Example)], loss: Loss) -> Result<(f64, f64)> {
    let start = Instant::now();
    let (mut sum, mut positions, mut tokens) = (0.0, 0usize, 0usize);
    for (_, e) in examples {
        sum += evaluate(model, e, loss)? * e.trained() as f64;
        positions += e.trained();
        tokens += e.tokens.len() - 1;
    }
    Ok((sum / positions.max(1) as f64, tokens as f64 / start.elapsed().as_secs_f64()))
}

/// evaluation.json of `--evaluate`: the adapter's effect on the held-out prompts.
#[derive(Debug, Serialize)]
pub struct EvaluationReport {
    pub draft: String,
    pub target: String,
    pub adapter: String,
    pub held_out: Vec<String>,
    pub data: &'static str,
    pub held_out_acceptance: Vec<HeldOutAcceptance>,
    pub seconds: f64,
    pub cpu: String,
    pub threads: usize,
}

/// `--evaluate`: the held-out data exactly as a training run makes it (same seeds), then the
/// expected acceptance of the draft without and with the adapter, loaded as `generate`,
/// `run` and `certify` load it.
fn evaluate_adapter(args: &AlignArgs, adapter_dir: &Path, device: &burn::tensor::Device, threads: usize) -> Result<()> {
    let start = Instant::now();
    let adapter = engine::model::LoraAdapter::open(adapter_dir)?;
    let held_prompts = read_all(&args.held_out)?;
    ensure!(!held_prompts.is_empty(), "no held-out prompts");
    let draft_files = engine::source::resolve(&args.draft).with_context(|| format!("resolving draft `{}`", args.draft))?;
    let draft_tok = Tokenizer::from_model_files(&draft_files)?;
    let (mut data, same_vocab) = target_data(args, device, &draft_tok, &[(&held_prompts, "held-out")])?;
    let held = data.remove(0);
    let before = {
        let plain = engine::load_files(draft_files.clone(), device).with_context(|| format!("loading draft `{}`", args.draft))?;
        acceptance_per_sequence(plain.model.as_ref(), &held)?
    };
    let adapted = engine::load_files_adapted(draft_files, Some(&adapter), device).with_context(|| format!("loading draft `{}` with {}", args.draft, adapter_dir.display()))?;
    let after = acceptance_per_sequence(adapted.model.as_ref(), &held)?;
    let report = EvaluationReport {
        draft: args.draft.clone(),
        target: args.target.clone(),
        adapter: adapter_dir.display().to_string(),
        held_out: args.held_out.iter().map(|p| p.display().to_string()).collect(),
        data: if same_vocab { "distributions" } else { "labels" },
        held_out_acceptance: acceptance_by_file(&args.held_out, &held, &before, &after),
        seconds: start.elapsed().as_secs_f64(),
        cpu: engine::cpu::features::cpu_model(),
        threads,
    };
    for a in &report.held_out_acceptance {
        println!("{}: expected acceptance {} → {} ({} paired, {} sequences)", a.file, a.before.show(3), a.after.show(3), a.change.show_signed(3), a.sequences);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    write_json(&args.out.join("evaluation.json"), &report)
}

pub fn run(args: &AlignArgs) -> Result<()> {
    let threads = args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    ensure!(args.batch > 0, "--batch must be at least 1");
    ensure!(args.samples > 0 && args.max_new_tokens > 0, "--samples and --max-new-tokens must be at least 1");
    ensure!(args.temperature.is_finite() && args.temperature >= 0.0, "--temperature must be a finite number ≥ 0");
    if std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{}: the output directory is not empty (an adapter is never overwritten)", args.out.display());
    }
    if let Some(adapter) = &args.evaluate {
        return evaluate_adapter(args, adapter, &device, threads);
    }
    let modules = args.modules.iter().map(|m| module_name(m)).collect::<Result<Vec<_>>>()?;
    let spec = LoraSpec { rank: args.rank, alpha: args.lora_alpha, modules: modules.clone() };
    let train_prompts = read_all(&args.prompts)?;
    let held_prompts = read_all(&args.held_out)?;
    ensure!(!train_prompts.is_empty(), "no training prompts");

    let data_start = Instant::now();
    let draft_files = engine::source::resolve(&args.draft).with_context(|| format!("resolving draft `{}`", args.draft))?;
    let draft_tok = Tokenizer::from_model_files(&draft_files)?;
    let (mut data, same_vocab) = target_data(args, &device, &draft_tok, &[(&train_prompts, "training"), (&held_prompts, "held-out")])?;
    let held = data.pop().expect("two lists");
    let train: Vec<Example> = data.pop().expect("two lists").into_iter().map(|(_, e)| e).collect();
    let data_seconds = data_start.elapsed().as_secs_f64();
    ensure!(!train.is_empty(), "the target produced no training data");
    let positions: usize = train.iter().map(Example::trained).sum();
    eprintln!(
        "{} training sequences ({positions} positions, {}), {} held out; made in {data_seconds:.0} s",
        train.len(),
        if same_vocab { "target distributions" } else { "hard labels: the vocabularies differ" },
        held.len()
    );

    let (loaded, training) = engine::load_files_trainable(draft_files, spec, args.seed, &device.clone().autodiff()).with_context(|| format!("loading draft `{}` for training", args.draft))?;
    let model = loaded.model.as_ref();
    let loss = Loss::from(args.loss);
    let (before, first_rate) = if held.is_empty() { (None, None) } else {
        let (l, r) = mean_loss(model, &held, loss)?;
        eprintln!("held-out loss before: {l:.4}");
        (Some(l), Some(r))
    };
    let acceptance_before = acceptance_per_sequence(model, &held)?;

    let per_epoch = train.len().div_ceil(args.batch);
    let steps = args.steps.unwrap_or(per_epoch * args.epochs);
    let mut trainer = Trainer::new(model, &training, TrainConfig { lr: args.lr, loss, max_grad_norm: 1.0 })?;
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(ProgressStyle::with_template("training {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]").expect("template"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = Vec::new();
    let (mut step_losses, mut tokens, mut stopped_by_time) = (Vec::new(), 0usize, false);
    let train_start = Instant::now();
    for step in 0..steps {
        if args.max_minutes.is_some_and(|m| train_start.elapsed().as_secs_f64() > m * 60.0) {
            stopped_by_time = true;
            break;
        }
        if order.len() < args.batch {
            let mut epoch: Vec<usize> = (0..train.len()).collect();
            epoch.shuffle(&mut rng);
            order.extend(epoch);
        }
        let batch: Vec<&Example> = order.drain(..args.batch.min(order.len())).map(|i| &train[i]).collect();
        let report = trainer.step(&batch)?;
        step_losses.push(report.loss);
        tokens += report.tokens;
        let rate = tokens as f64 / train_start.elapsed().as_secs_f64();
        bar.set_message(format!("loss {:.4} · {rate:.0} tok/s", report.loss));
        bar.set_position(step as u64 + 1);
    }
    bar.finish_and_clear();
    let train_seconds = train_start.elapsed().as_secs_f64();
    let (after, forward_rate) = if held.is_empty() { (None, None) } else {
        let (l, r) = mean_loss(model, &held, loss)?;
        (Some(l), Some(r))
    };
    let held_out_acceptance = acceptance_by_file(&args.held_out, &held, &acceptance_before, &acceptance_per_sequence(model, &held)?);
    for a in &held_out_acceptance {
        eprintln!("{}: expected acceptance {:.3} → {:.3} ({} by sequence)", a.file, a.before.mean, a.after.mean, a.change.show_signed(3));
    }
    training.save_peft(&args.out, &args.draft)?;
    let report = AlignReport {
        draft: args.draft.clone(),
        target: args.target.clone(),
        prompts: args.prompts.iter().map(|p| p.display().to_string()).collect(),
        held_out: args.held_out.iter().map(|p| p.display().to_string()).collect(),
        data: if same_vocab { "distributions" } else { "labels" },
        rank: args.rank,
        lora_alpha: args.lora_alpha,
        modules,
        trainable_parameters: training.parameter_count(),
        loss,
        lr: args.lr,
        batch: args.batch,
        steps: step_losses.len(),
        epochs_completed: (step_losses.len() * args.batch) as f64 / train.len() as f64,
        training_sequences: train.len(),
        training_positions: positions,
        data_seconds,
        train_seconds,
        train_tokens_per_s: tokens as f64 / train_seconds.max(1e-9),
        forward_tokens_per_s: forward_rate,
        forward_tokens_per_s_first: first_rate,
        held_out_loss_before: before,
        held_out_loss_after: after,
        held_out_acceptance,
        step_losses,
        stopped_by_time,
        cpu: engine::cpu::features::cpu_model(),
        threads,
    };
    write_json(&args.out.join("training.json"), &report)?;
    eprintln!(
        "{} steps in {train_seconds:.0} s ({:.0} tok/s training{}); held-out loss {} → {}; adapter in {}",
        report.steps,
        report.train_tokens_per_s,
        forward_rate.map(|r| format!(", {r:.0} tok/s forward only")).unwrap_or_default(),
        before.map_or("–".into(), |l| format!("{l:.4}")),
        after.map_or("–".into(), |l| format!("{l:.4}")),
        args.out.display()
    );
    Ok(())
}

fn write_json(path: &Path, report: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n").with_context(|| format!("writing {}", path.display()))
}
