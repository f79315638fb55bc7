//! A description of a model on disk, for `specdec inspect`: what it is, how big, how quantized,
//! which tokenizer and whether it carries a chat template.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::model::{FamilyConfig, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES};
use crate::safetensors::HfModelDir;
use crate::source::ModelFiles;
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, serde::Serialize)]
pub struct ModelReport {
    pub path: String,
    pub format: &'static str,
    pub architecture: String,
    pub name: String,
    pub supported: bool,
    pub file_bytes: u64,
    pub parameters: u64,
    /// Tensor type → (tensor count, parameters).
    pub tensor_types: BTreeMap<String, (usize, u64)>,
    /// The family's hyperparameters (the shared ones flattened, plus `family` and its own).
    pub config: Option<FamilyConfig>,
    #[serde(flatten)]
    pub tokenizer: TokenizerReport,
}

/// What `inspect` says about a tokenizer (or why it could not be built).
#[derive(Debug, serde::Serialize)]
pub struct TokenizerReport {
    pub tokenizer: String,
    pub vocab_size: Option<usize>,
    pub chat_template: bool,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
}

impl From<Result<Tokenizer>> for TokenizerReport {
    fn from(tok: Result<Tokenizer>) -> Self {
        match tok {
            Ok(t) => TokenizerReport {
                tokenizer: t.kind().to_string(),
                vocab_size: Some(t.vocab_size()),
                chat_template: t.chat_template().is_some(),
                bos_id: t.bos_id(),
                eos_ids: t.eos_ids().to_vec(),
            },
            Err(e) => TokenizerReport {
                tokenizer: format!("unavailable: {e}"),
                vocab_size: None,
                chat_template: false,
                bos_id: None,
                eos_ids: vec![],
            },
        }
    }
}

pub fn inspect(files: &ModelFiles) -> Result<ModelReport> {
    match files {
        ModelFiles::Gguf(path) => {
            let g = Gguf::open(path)?;
            let arch = g.architecture()?.to_string();
            let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
            for t in &g.tensors {
                let e = types.entry(t.dtype.name().to_string()).or_default();
                e.0 += 1;
                e.1 += t.n_elements() as u64;
            }
            let supported = SUPPORTED_ARCHITECTURES.contains(&arch.as_str());
            // An architecture we run whose hyperparameters do not make a model is an error to
            // report, not a blank line: the file would fail to load the same way.
            let config = if supported { Some(FamilyConfig::from_gguf(&g)?) } else { None };
            Ok(ModelReport {
                path: path.display().to_string(),
                format: "GGUF",
                name: g.get("general.name").and_then(|v| v.as_str()).unwrap_or("").to_string(),
                supported,
                architecture: arch,
                file_bytes: g.file_size() as u64,
                parameters: types.values().map(|v| v.1).sum(),
                tensor_types: types,
                config,
                tokenizer: Tokenizer::from_gguf(&g).into(),
            })
        }
        ModelFiles::HfDir(dir) => {
            let hf = HfModelDir::open(dir)?;
            let supported = SUPPORTED_MODEL_TYPES.contains(&hf.config.model_type.as_str());
            let config = if supported { Some(hf.family_config()?) } else { None };
            let tok_json = dir.join("tokenizer.json");
            let tok_cfg = dir.join("tokenizer_config.json");
            let tok = Tokenizer::from_json_file(&tok_json, tok_cfg.is_file().then_some(tok_cfg.as_path()));
            let file_bytes = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
                .unwrap_or(0);
            Ok(ModelReport {
                path: dir.display().to_string(),
                format: "safetensors",
                architecture: hf.config.model_type.clone(),
                name: hf.config.architectures.first().cloned().unwrap_or_default(),
                supported,
                file_bytes,
                parameters: hf.parameter_count(),
                tensor_types: hf.dtype_histogram(),
                config,
                tokenizer: tok.into(),
            })
        }
    }
}

impl fmt::Display for ModelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model:        {}", self.path)?;
        writeln!(f, "format:       {}", self.format)?;
        writeln!(f, "architecture: {}{}", self.architecture, if self.supported { "" } else { " (not supported)" })?;
        if !self.name.is_empty() {
            writeln!(f, "name:         {}", self.name)?;
        }
        writeln!(f, "size:         {:.1} MB on disk, {:.1} M parameters", self.file_bytes as f64 / 1e6, self.parameters as f64 / 1e6)?;
        let types: Vec<String> =
            self.tensor_types.iter().map(|(t, (n, p))| format!("{t} ×{n} ({:.1} M)", *p as f64 / 1e6)).collect();
        writeln!(f, "tensor types: {}", types.join(", "))?;
        if let Some(family) = &self.config {
            let c = family.base();
            writeln!(
                f,
                "layers {} · hidden {} · ffn {} · heads {} / {} KV · head dim {} · context {} · vocab {}",
                c.n_layers, c.hidden_size, c.intermediate_size, c.n_heads, c.n_kv_heads, c.head_dim, c.context_length, c.vocab_size
            )?;
            writeln!(
                f,
                "rope θ {} ({:?}, {} dims) · norm eps {:e} · qkv bias {} · tied embeddings {}",
                c.rope_theta, c.rope_style, c.rope_dims, c.norm_eps, c.qkv_bias, c.tied_embeddings
            )?;
            match family {
                FamilyConfig::Llama(_) => {}
                FamilyConfig::GptNeox(n) => writeln!(
                    f,
                    "{} residual · GELU {:?} · fused QKV rows {:?}",
                    if n.parallel_residual { "parallel" } else { "sequential" },
                    n.activation,
                    n.qkv_layout
                )?,
                FamilyConfig::Gemma3(g) => {
                    let global: Vec<String> =
                        (0..g.local_layers.len()).filter(|&i| !g.local_layers[i]).map(|i| i.to_string()).collect();
                    let window = g.sliding_window.map_or("none".to_string(), |w| w.to_string());
                    writeln!(
                        f,
                        "sliding window {window} (local rope θ {}) · global layers {} · query scale {:.4}",
                        g.local_rope_theta,
                        global.join(", "),
                        g.query_scale
                    )?
                }
            }
        }
        let t = &self.tokenizer;
        writeln!(f, "tokenizer:    {}", t.tokenizer)?;
        if let Some(v) = t.vocab_size {
            writeln!(f, "vocab:        {v} · bos {:?} · eos {:?}", t.bos_id, t.eos_ids)?;
        }
        writeln!(f, "chat template: {}", if t.chat_template { "yes" } else { "no" })
    }
}
