//! `specdec bench --quality`: generate answers to a prompt set (by default the first three coding
//! prompts of `notebooks-data/prompts/code.jsonl`, 100 new tokens at temperature 0.7) and gate
//! on them: enough tokens, fast enough, and coherent — the prompt's expected keywords appear, and
//! where the prompt asks for Python the answer's code parses with a real Python parser
//! (rustpython-parser). Any failed gate makes the command exit with status 2.

use crate::chat::{build_proposer, stop_ids, Models, SpeculationArgs};
use crate::config::{read_prompts, Prompt};
use anyhow::{bail, Result};
use clap::Args;
use engine::generate::{generate, GenerationConfig, Generation, StopReason};
use engine::model::LayerSkip;
use engine::sampling::SamplingParams;
use engine::speculative::{generate_speculative, SpecMetrics};
use engine::tokenizer::ChatMessage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Quality-gated benchmark settings (only read with `--quality`).
#[derive(Args, Debug, Clone)]
pub struct QualityArgs {
    /// Run a quality-gated benchmark on PROMPTS.jsonl (default: the coding prompts of
    /// notebooks-data/prompts/code.jsonl) instead of the raw speed measurement.
    #[arg(long, value_name = "PROMPTS.jsonl")]
    pub quality: Option<Option<PathBuf>>,
    /// First N prompts of the file.
    #[arg(long, default_value_t = 3)]
    pub limit: usize,
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gate: every answer has at least this many tokens.
    #[arg(long, default_value_t = 20)]
    pub min_tokens: usize,
    /// Gate: every answer decodes at least this fast (tok/s; 0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub min_tok_s: f64,
    /// Gate: every answer contains at least this fraction of its prompt's keywords (100 tokens
    /// may end before the last one, e.g. binary search's `return -1`).
    #[arg(long, default_value_t = 0.5)]
    pub min_keywords: f64,
    #[command(flatten)]
    pub speculation: SpeculationArgs,
}

/// What the Python check found in an answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum PythonCheck {
    /// The prompt does not ask for Python.
    NotApplicable,
    /// The code parses as a module.
    Parses,
    /// The code block was cut by the token budget and is a valid prefix: the parser's only
    /// complaint is the unexpected end of input.
    TruncatedPrefix,
    /// A syntax error before the end of the code.
    Invalid { line: usize, message: String },
    /// No code in the answer.
    Missing,
}

impl PythonCheck {
    pub fn passes(&self) -> bool {
        matches!(self, PythonCheck::NotApplicable | PythonCheck::Parses | PythonCheck::TruncatedPrefix)
    }

    fn label(&self) -> String {
        match self {
            PythonCheck::NotApplicable => "-".into(),
            PythonCheck::Parses => "parses".into(),
            PythonCheck::TruncatedPrefix => "parses (cut)".into(),
            PythonCheck::Invalid { line, .. } => format!("error l.{line}"),
            PythonCheck::Missing => "no code".into(),
        }
    }
}

/// The Python code of an answer: the first fenced block tagged python/py (or untagged), else the
/// whole answer when it starts like code. Returns the code and whether its block was closed.
pub fn python_code(answer: &str) -> Option<(String, bool)> {
    let mut rest = answer;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (info, body) = after.split_once('\n').unwrap_or((after, ""));
        let body_end = body.find("```");
        let lang = info.trim().to_ascii_lowercase();
        if lang.is_empty() || lang == "python" || lang == "py" || lang == "python3" {
            return Some(match body_end {
                Some(end) => (body[..end].to_string(), true),
                None => (body.to_string(), false),
            });
        }
        match body_end {
            Some(end) => rest = &body[end + 3..],
            None => return None,
        }
    }
    let t = answer.trim_start();
    ["def ", "class ", "import ", "from ", "async def "].iter().any(|p| t.starts_with(p)).then(|| (t.to_string(), true))
}

/// Parses `code` as a Python module. `cut` says the code was truncated by the token budget, in
/// which case an error at the very end of the input (and only there) counts as a valid prefix.
pub fn check_python(code: &str, cut: bool) -> PythonCheck {
    use rustpython_parser::{lexer::LexicalErrorType, Mode, ParseErrorType};
    if code.trim().is_empty() {
        return PythonCheck::Missing;
    }
    // A cut inside the indentation of a new line leaves spaces the lexer would judge as a dedent.
    let code = if cut { code.trim_end_matches([' ', '\t']) } else { code };
    match rustpython_parser::parse(code, Mode::Module, "<answer>") {
        Ok(_) => PythonCheck::Parses,
        Err(e) => {
            let offset = usize::from(e.offset).min(code.len());
            // An error on the last non-blank line (or at the end of input) is where a cut lands.
            let last_line = code.trim_end().matches('\n').count() + 1;
            let at_end = matches!(e.error, ParseErrorType::Eof | ParseErrorType::Lexical(LexicalErrorType::Eof))
                || offset >= code.trim_end().len()
                || code[..offset].matches('\n').count() + 1 >= last_line;
            if cut && at_end {
                PythonCheck::TruncatedPrefix
            } else {
                let line = code[..offset].matches('\n').count() + 1;
                PythonCheck::Invalid { line, message: e.error.to_string() }
            }
        }
    }
}

/// The expected keywords found in `answer` (case-sensitive: they are code).
pub fn keywords_found(answer: &str, keywords: &[String]) -> usize {
    keywords.iter().filter(|k| answer.contains(k.as_str())).count()
}

/// One prompt's outcome.
#[derive(Debug, serde::Serialize)]
pub struct PromptResult {
    pub id: String,
    pub text: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub stop: StopReason,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub keywords: Vec<String>,
    pub keywords_found: usize,
    pub python: PythonCheck,
    pub alpha: Option<f64>,
    pub tau: Option<f64>,
    pub gates: Gates,
}

/// Which gates one answer passes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Gates {
    pub tokens: bool,
    pub speed: bool,
    pub keywords: bool,
    pub python: bool,
}

impl Gates {
    pub fn all(&self) -> bool {
        self.tokens && self.speed && self.keywords && self.python
    }
}

fn default_prompts() -> Result<PathBuf> {
    let rel = Path::new("notebooks-data/prompts/code.jsonl");
    let here = std::env::current_dir()?;
    let found = here.ancestors().map(|d| d.join(rel)).find(|p| p.is_file());
    match found.or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).filter(|p| p.is_file())) {
        Some(p) => Ok(p),
        None => bail!("no --quality PROMPTS.jsonl given and {} not found here or above", rel.display()),
    }
}

fn judge(args: &QualityArgs, prompt: &Prompt, text: String, prompt_tokens: usize, gen: &Generation, m: Option<&SpecMetrics>) -> PromptResult {
    let python = if prompt.prompt.contains("Python") {
        match python_code(&text) {
            Some((code, closed)) => check_python(&code, !closed && gen.stop == StopReason::MaxTokens),
            None => PythonCheck::Missing,
        }
    } else {
        PythonCheck::NotApplicable
    };
    let found = keywords_found(&text, &prompt.keywords);
    let gates = Gates {
        tokens: gen.tokens.len() >= args.min_tokens,
        speed: gen.decode_tok_s() >= args.min_tok_s,
        keywords: prompt.keywords.is_empty() || found as f64 >= args.min_keywords * prompt.keywords.len() as f64 - 1e-9,
        python: python.passes(),
    };
    PromptResult {
        id: prompt.id.clone(),
        text,
        prompt_tokens,
        tokens: gen.tokens.len(),
        stop: gen.stop,
        prefill_tok_s: gen.prefill_tok_s(),
        decode_tok_s: gen.decode_tok_s(),
        keywords: prompt.keywords.clone(),
        keywords_found: found,
        python,
        alpha: m.map(SpecMetrics::alpha),
        tau: m.map(SpecMetrics::tau),
        gates,
    }
}

/// Runs the quality benchmark; returns the report and whether every gate passed.
pub fn run(model: &str, args: &QualityArgs, device: &burn::tensor::Device, threads: usize, backend: &str) -> Result<(serde_json::Value, bool)> {
    let file = match args.quality.clone().flatten() {
        Some(p) => p,
        None => default_prompts()?,
    };
    let mut prompts = read_prompts(&file)?;
    prompts.truncate(args.limit);
    if prompts.is_empty() {
        bail!("{}: no prompts", file.display());
    }
    let sampling = SamplingParams { temperature: args.temperature as f32, top_k: 0, top_p: 1.0 };
    sampling.validate()?;
    let load_start = Instant::now();
    let models = Models::load(model, &args.speculation, device)?;
    let load_s = load_start.elapsed().as_secs_f64();
    let tok = &models.target.tokenizer;
    let stop = stop_ids(tok);
    let early = match models.early {
        Some(layers) => Some(LayerSkip::new(models.target.model.as_ref(), layers)?),
        None => None,
    };
    let target = models.target.model.as_ref();
    let costs = models.costs(&args.speculation, early.as_ref())?;
    let mut results = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let messages = prompt.messages.clone().unwrap_or_else(|| vec![ChatMessage::new("user", prompt.prompt.clone())]);
        let ids = match tok.chat_template() {
            Some(_) => tok.encode(&tok.apply_chat_template(&messages, true)?, false)?,
            None => tok.encode(&prompt.prompt, true)?,
        };
        let gen = GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, seed: args.seed.wrapping_add(i as u64), stop_at_eos: true };
        let spec = args.speculation.config(gen.clone(), costs)?;
        let capacity = engine::generate::positions_needed(ids.len(), gen.max_new_tokens).max(ids.len());
        let (generation, metrics) = match build_proposer(&models, early.as_ref(), &args.speculation, capacity)? {
            Some(mut p) => {
                let out = generate_speculative(target, p.as_mut(), &ids, &stop, &spec, |_| {})?;
                (out.generation, Some(out.metrics))
            }
            None => (generate(target, &ids, &stop, &gen, |_| {})?, None),
        };
        let text = tok.decode(&generation.tokens)?;
        results.push(judge(args, prompt, text, ids.len(), &generation, metrics.as_ref()));
    }
    let passed = results.iter().all(|r| r.gates.all());
    let pooled = |f: fn(&PromptResult) -> Option<f64>| {
        let v: Vec<f64> = results.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let json = serde_json::json!({
        "model": model,
        "draft": args.speculation.draft,
        "proposer": args.speculation.kind()?.map(|k| k.to_string()),
        "k": args.speculation.k,
        "prompts_file": file,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "backend": backend,
        "kernels": format!("{:?}", engine::cpu::kernel_mode()).to_lowercase(),
        "threads": threads,
        "load_s": load_s,
        "peak_rss_bytes": crate::backend::peak_rss_bytes(),
        "thresholds": { "min_tokens": args.min_tokens, "min_tok_s": args.min_tok_s, "min_keywords": args.min_keywords },
        "mean_decode_tok_s": results.iter().map(|r| r.decode_tok_s).sum::<f64>() / results.len() as f64,
        "mean_alpha": pooled(|r| r.alpha),
        "mean_tau": pooled(|r| r.tau),
        "results": results,
        "passed": passed,
    });
    Ok((json, passed))
}

/// The report as a table.
pub fn table(j: &serde_json::Value) -> String {
    let mut s = String::new();
    let pass = |b: bool| if b { "ok" } else { "FAIL" };
    s.push_str(&format!(
        "{} {} · {} new tokens at T = {} · load {:.2} s · peak RSS {:.0} MB\n",
        j["model"].as_str().unwrap_or("?"),
        j["draft"].as_str().map(|d| format!("(draft {d}, k = {})", j["k"])).unwrap_or_else(|| "(target-only)".into()),
        j["max_new_tokens"],
        j["temperature"],
        j["load_s"].as_f64().unwrap_or(0.0),
        j["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6
    ));
    s.push_str(&format!("{:<22} {:>6} {:>10} {:>9} {:>7} {:>8} {:>13} {:>6}\n", "prompt", "tokens", "stop", "tok/s", "α̂", "keywords", "python", "gates"));
    for r in j["results"].as_array().into_iter().flatten() {
        let g = &r["gates"];
        let all = ["tokens", "speed", "keywords", "python"].iter().all(|k| g[k] == true);
        let failed: Vec<&str> = ["tokens", "speed", "keywords", "python"].into_iter().filter(|k| g[*k] != true).collect();
        let python: PythonCheck = match r["python"]["status"].as_str() {
            Some("parses") => PythonCheck::Parses,
            Some("truncated_prefix") => PythonCheck::TruncatedPrefix,
            Some("invalid") => PythonCheck::Invalid { line: r["python"]["line"].as_u64().unwrap_or(0) as usize, message: String::new() },
            Some("missing") => PythonCheck::Missing,
            _ => PythonCheck::NotApplicable,
        };
        s.push_str(&format!(
            "{:<22} {:>6} {:>10} {:>9.1} {:>7} {:>8} {:>13} {:>6}\n",
            r["id"].as_str().unwrap_or("?"),
            r["tokens"].to_string(),
            r["stop"].as_str().unwrap_or("?"),
            r["decode_tok_s"].as_f64().unwrap_or(0.0),
            r["alpha"].as_f64().map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into()),
            format!("{}/{}", r["keywords_found"], r["keywords"].as_array().map_or(0, |k| k.len())),
            python.label(),
            if all { "ok".to_string() } else { format!("FAIL({})", failed.join(",")) }
        ));
    }
    s.push_str(&format!(
        "gates: ≥ {} tokens, ≥ {} tok/s, ≥ {:.0}% of keywords, Python parses → {}\n",
        j["thresholds"]["min_tokens"],
        j["thresholds"]["min_tok_s"],
        j["thresholds"]["min_keywords"].as_f64().unwrap_or(0.0) * 100.0,
        pass(j["passed"] == true)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_taken_from_the_first_python_block() {
        let a = "Here:\n```rust\nfn x() {}\n```\nand\n```python\ndef f():\n    return 1\n```\nDone.";
        assert_eq!(python_code(a), Some(("def f():\n    return 1\n".into(), true)));
        assert_eq!(python_code("```python\ndef f(:\n"), Some(("def f(:\n".into(), false)));
        assert_eq!(python_code("def g(): pass"), Some(("def g(): pass".into(), true)));
        assert_eq!(python_code("No code here."), None);
    }

    #[test]
    fn the_parser_separates_valid_cut_and_broken_code() {
        assert_eq!(check_python("def f(n):\n    return n + 1\n", false), PythonCheck::Parses);
        // Cut in the middle of a call or a docstring: a valid prefix only when the budget cut it.
        let cut = "def f(n):\n    \"\"\"Adds one.\n";
        assert_eq!(check_python(cut, true), PythonCheck::TruncatedPrefix);
        assert!(matches!(check_python(cut, false), PythonCheck::Invalid { .. }));
        assert_eq!(check_python("def f(n):\n    return max(n,", true), PythonCheck::TruncatedPrefix);
        assert_eq!(check_python("def f(n):\n    # base case\n   ", true), PythonCheck::TruncatedPrefix);
        // A real syntax error early on fails even when the block was cut later.
        let broken = "def f(n)\n    return n\nx = 1\ny = (";
        assert!(matches!(check_python(broken, true), PythonCheck::Invalid { line: 1, .. }), "{:?}", check_python(broken, true));
        assert_eq!(check_python("  \n", false), PythonCheck::Missing);
    }

    #[test]
    fn keywords_are_counted_case_sensitively() {
        let k = vec!["def is_prime".to_string(), "return".to_string(), "Return".to_string()];
        assert_eq!(keywords_found("def is_prime(n):\n    return n > 1", &k), 2);
    }
}
