//! `specdec vocab-freq`: counts a tokenizer's token frequencies in text the project has or is
//! given — prompt sets, the model's own generations on them, corpus files — and writes the table
//! a truncated draft vocabulary (`--draft-vocab N`) keeps its N most frequent ids from.

use crate::config::read_prompts;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::generate::{generate, GenerationConfig};
use engine::sampling::SamplingParams;
use engine::speculative::VocabFrequency;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct VocabFreqArgs {
    /// The model whose tokenizer is counted (and which writes the generations).
    #[arg(long)]
    pub model: String,
    /// JSONL prompt files: their prompts and reference answers are counted.
    #[arg(long)]
    pub prompts: Vec<PathBuf>,
    /// Also count the model's own continuation of every prompt, this many tokens each (chat
    /// template if the model has one).
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Text files or directories (read recursively, files in name order) to count.
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Bytes read from each --corpus at most.
    #[arg(long, default_value_t = 4 << 20)]
    pub corpus_bytes: usize,
    /// Where to write the table (JSON).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: crate::RuntimeArgs,
}

/// Files under `path` (itself if a file), sorted, with an extension in `exts`.
fn text_files(path: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            text_files(&p, exts, out)?;
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
            out.push(p);
        }
    }
    Ok(())
}

pub fn run(args: &VocabFreqArgs) -> Result<()> {
    let threads = args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    let loaded = engine::load_model(&args.model, &device).with_context(|| format!("loading model `{}`", args.model))?;
    let tok = &loaded.tokenizer;
    let mut sources: Vec<(String, Vec<Vec<u32>>)> = Vec::new();
    let mut prompts = Vec::new();
    for file in &args.prompts {
        prompts.extend(read_prompts(file)?);
    }
    if !prompts.is_empty() {
        let texts = prompts.iter().flat_map(|p| std::iter::once(p.prompt.as_str()).chain(p.answer.as_deref())).map(|t| tok.encode(t, false)).collect::<Result<Vec<_>, _>>()?;
        sources.push((format!("{} prompts", prompts.len()), texts));
    }
    if args.generate > 0 {
        let sampling = SamplingParams::with_temperature(args.temperature);
        sampling.validate()?;
        let mut texts = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let ids = crate::encode_prompt(tok, &p.prompt, tok.chat_template().is_some(), None)?;
            let gen = GenerationConfig { max_new_tokens: args.generate, sampling, seed: args.seed.wrapping_add(i as u64), stop_at_eos: true };
            let out = generate(loaded.model.as_ref(), &ids, tok.eos_ids(), &gen, |_| {})?;
            eprintln!("[{}/{}] {}: {} tokens", i + 1, prompts.len(), p.id, out.tokens.len());
            texts.push(out.tokens);
        }
        sources.push((format!("the model's continuations of them (≤ {} tokens, T = {})", args.generate, args.temperature), texts));
    }
    for corpus in &args.corpus {
        let mut files = Vec::new();
        text_files(corpus, &["py", "txt", "md", "rst", "rs", "c", "h", "js", "html"], &mut files)?;
        let (mut texts, mut read) = (Vec::new(), 0usize);
        for f in files {
            if read >= args.corpus_bytes {
                break;
            }
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            let text: String = text.chars().take(args.corpus_bytes - read).collect();
            read += text.len();
            texts.push(tok.encode(&text, false)?);
        }
        sources.push((format!("{} ({} bytes)", corpus.display(), read), texts));
    }
    if sources.is_empty() {
        bail!("nothing to count: give --prompts (and --generate) or --corpus");
    }
    let table = VocabFrequency::count(tok, &sources)?;
    std::fs::write(&args.out, table.to_json()).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{}: {} tokens counted, {} distinct ids of {}; the top 4096 / 8192 / 16384 / 32768 hold {:.1}% / {:.1}% / {:.1}% / {:.1}% of the mass ({threads} threads)",
        args.out.display(),
        table.tokens,
        table.ids.len(),
        table.vocab_size,
        100.0 * table.coverage(4096),
        100.0 * table.coverage(8192),
        100.0 * table.coverage(16384),
        100.0 * table.coverage(32768)
    );
    Ok(())
}
