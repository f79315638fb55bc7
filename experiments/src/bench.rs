//! `specdec bench`: prefill and decode speed, the cost of verifying n tokens in one forward, load
//! time and peak memory of one model — optionally side by side with llama.cpp's `llama-bench` on
//! the same file and thread count, in the same invocation.

use anyhow::{bail, Context, Result};
use engine::model::{CausalLm, LogitRows};
use engine::sampling::argmax;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Forward sizes of the verification curve: k + 1 for k = 0, 1, 2, 4, 8, 16.
pub const VERIFY_SIZES: [usize; 6] = [1, 2, 3, 5, 9, 17];

#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub prefill_tok_s: f64,
    pub prefill_tok_s_runs: Vec<f64>,
    pub decode_tok_s: f64,
    pub decode_tok_s_runs: Vec<f64>,
    /// Forward time over n tokens ÷ one-token decode step, for n in [`VERIFY_SIZES`].
    pub verify_cost: Vec<(usize, f64)>,
    /// Seconds of one forward over n tokens (all logit rows), for n in [`VERIFY_SIZES`].
    pub forward_s: Vec<(usize, f64)>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

/// Runs the measurements on `prompt` (its length is the prefill size), generating `gen` tokens.
pub fn run(model: &dyn CausalLm, prompt: &[u32], gen: usize, repeats: usize) -> Result<BenchReport> {
    if prompt.is_empty() || gen == 0 || repeats == 0 {
        bail!("bench needs a non-empty prompt, at least one generated token and one repeat");
    }
    let capacity = prompt.len() + gen + VERIFY_SIZES[VERIFY_SIZES.len() - 1];
    let once = || -> Result<(f64, f64)> {
        let mut cache = model.new_cache(capacity)?;
        let t = Instant::now();
        let logits = model.forward(prompt, &mut cache, LogitRows::Last)?;
        let prefill = t.elapsed().as_secs_f64();
        let mut next = argmax(logits.last());
        let t = Instant::now();
        for _ in 0..gen {
            next = argmax(model.forward(&[next], &mut cache, LogitRows::Last)?.last());
        }
        let decode = t.elapsed().as_secs_f64();
        Ok((prompt.len() as f64 / prefill, gen as f64 / decode))
    };
    once()?; // warmup: page in weights, size allocations
    let mut prefill_runs = Vec::new();
    let mut decode_runs = Vec::new();
    for _ in 0..repeats {
        let (p, d) = once()?;
        prefill_runs.push(p);
        decode_runs.push(d);
    }
    // Verification curve: after the prompt, time an n-token forward (all rows), roll back, repeat.
    let mut cache = model.new_cache(capacity)?;
    model.forward(prompt, &mut cache, LogitRows::Last)?;
    let base = cache.len();
    let tokens: Vec<u32> = prompt.iter().rev().take(VERIFY_SIZES[VERIFY_SIZES.len() - 1]).copied().collect();
    let mut times = Vec::new();
    for &n in &VERIFY_SIZES {
        let mut runs = Vec::new();
        for _ in 0..(3 * repeats).max(5) {
            let t = Instant::now();
            model.forward(&tokens[..n.min(tokens.len())], &mut cache, LogitRows::All)?;
            runs.push(t.elapsed().as_secs_f64());
            cache.truncate(base);
        }
        times.push((n, median(&runs)));
    }
    let one = times[0].1;
    Ok(BenchReport {
        prefill_tok_s: median(&prefill_runs),
        prefill_tok_s_runs: prefill_runs,
        decode_tok_s: median(&decode_runs),
        decode_tok_s_runs: decode_runs,
        verify_cost: times.iter().map(|&(n, t)| (n, t / one)).collect(),
        forward_s: times,
    })
}

/// llama.cpp's figures for the same file, from `llama-bench -o json`.
#[derive(Debug, Clone)]
pub struct LlamaBench {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// llama.cpp's own verification curve: a forward over n prompt tokens ÷ one over 1 token.
    pub verify_cost: Vec<(usize, f64)>,
}

/// Runs `llama-bench` on `model`: prefill of `prompt` tokens, decode of `gen`, and single
/// forwards over each of `batch_sizes` tokens (for the verification curve; 1 must be among them).
pub fn llama_bench(bin_dir: &Path, model: &Path, threads: usize, prompt: usize, gen: usize, repeats: usize, batch_sizes: &[usize]) -> Result<LlamaBench> {
    let exe: PathBuf = bin_dir.join("llama-bench");
    let prompts: Vec<String> = std::iter::once(prompt).chain(batch_sizes.iter().copied()).map(|n| n.to_string()).collect();
    let out = Command::new(&exe)
        .args(["-m"])
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &prompts.join(","), "-n", &gen.to_string(), "-r", &repeats.to_string(), "-o", "json"])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("parsing llama-bench JSON")?;
    let find = |n_prompt: u64, n_gen: u64, field: &str| {
        rows.iter()
            .find(|r| r["n_prompt"].as_u64() == Some(n_prompt) && r["n_gen"].as_u64() == Some(n_gen))
            .and_then(|r| r[field].as_f64())
            .with_context(|| format!("llama-bench printed no test with {n_prompt} prompt and {n_gen} generated tokens"))
    };
    let one = find(1, 0, "avg_ns")?;
    let verify_cost = batch_sizes.iter().map(|&n| Ok((n, find(n as u64, 0, "avg_ns")? / one))).collect::<Result<_>>()?;
    Ok(LlamaBench { prefill_tok_s: find(prompt as u64, 0, "avg_ts")?, decode_tok_s: find(0, gen as u64, "avg_ts")?, verify_cost })
}
