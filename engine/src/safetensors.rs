//! Hugging Face model directories: `config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`, memory-mapped. Tensor names are mapped to the GGUF names the
//! model code uses, so one model implementation serves both formats.

use crate::error::{Error, Result};
use crate::model::{ModelConfig, RopeStyle, WeightSource};
use crate::source::safetensors_shards;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The subset of `config.json` the supported families use.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta` (and `rope_scaling`) at the top level; 5.x nests them
    /// in `rope_parameters`.
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}

/// An opened HF directory.
pub struct HfModelDir {
    dir: PathBuf,
    pub config: HfConfig,
    shards: Vec<(PathBuf, Mmap)>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
}

impl HfModelDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: HfConfig = serde_json::from_str(&text).map_err(|e| Error::Metadata {
            path: config_path.clone(),
            key: "config.json".into(),
            problem: e.to_string(),
        })?;
        let index_path = dir.join("model.safetensors.index.json");
        let files = if index_path.is_file() { safetensors_shards(&index_path)? } else { vec!["model.safetensors".to_string()] };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for name in files {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map of a file we do not modify.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let names = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::Safetensors { path: path.clone(), problem: e.to_string() })?
                .1
                .tensors()
                .into_keys()
                .collect::<Vec<_>>();
            for n in names {
                index.insert(n, shards.len());
            }
            shards.push((path, mmap));
        }
        if index_path.is_file() {
            check_index(&index_path, &index, &shards)?;
        }
        Ok(HfModelDir { dir, config, shards, index })
    }

    /// Parameter count over all shards.
    pub fn parameter_count(&self) -> u64 {
        self.dtype_histogram().values().map(|v| v.1).sum()
    }

    /// Tensor dtype → (tensor count, parameters).
    pub fn dtype_histogram(&self) -> std::collections::BTreeMap<String, (usize, u64)> {
        let mut out = std::collections::BTreeMap::<String, (usize, u64)>::new();
        for (_, mmap) in &self.shards {
            if let Ok((_, meta)) = SafeTensors::read_metadata(mmap) {
                for info in meta.tensors().values() {
                    let e = out.entry(format!("{:?}", info.dtype)).or_default();
                    e.0 += 1;
                    e.1 += info.shape.iter().product::<usize>() as u64;
                }
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine config for the Llama/Qwen2 family.
    pub fn llama_config(&self) -> Result<ModelConfig> {
        let c = &self.config;
        let path = self.dir.join("config.json");
        if let Some(scaling) = c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(Error::Metadata { path, key: "rope_scaling".into(), problem: format!("unsupported: {scaling}") });
        }
        let params = c.rope_parameters.as_ref();
        if let Some(kind) = params.and_then(|p| p.get("rope_type")).and_then(|t| t.as_str()).filter(|t| *t != "default") {
            return Err(Error::Metadata { path, key: "rope_parameters.rope_type".into(), problem: format!("unsupported: {kind}") });
        }
        let rope_theta = c
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()))
            .unwrap_or(10_000.0);
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
        Ok(ModelConfig {
            architecture: c.model_type.clone(),
            name: c.architectures.first().cloned().unwrap_or_else(|| c.model_type.clone()),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            n_layers: c.num_hidden_layers,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rope_dims: head_dim,
            rope_theta,
            rope_style: RopeStyle::Neox,
            norm_eps: c.rms_norm_eps,
            context_length: c.max_position_embeddings,
            qkv_bias: c.attention_bias.unwrap_or(c.model_type == "qwen2"),
            tied_embeddings: c.tie_word_embeddings,
        })
    }

    /// The HF name for a GGUF tensor name of the Llama family.
    fn hf_name(&self, gguf: &str) -> Option<String> {
        let simple = match gguf {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" if self.config.tie_word_embeddings => return None,
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(s) = simple {
            return Some(s.to_string());
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, tail) = rest.split_once('.')?;
        let (base, kind) = tail.rsplit_once('.')?;
        let hf = match base {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}.{kind}"))
    }
}

fn check_index(index_path: &Path, found: &HashMap<String, usize>, shards: &[(PathBuf, Mmap)]) -> Result<()> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Safetensors { path: index_path.into(), problem: e.to_string() })?;
    let map = json["weight_map"].as_object().into_iter().flatten();
    for (tensor, shard) in map {
        let expected = shard.as_str().unwrap_or_default();
        match found.get(tensor) {
            Some(&i) if shards[i].0.file_name().is_some_and(|f| f == expected) => {}
            _ => {
                return Err(Error::Safetensors {
                    path: index_path.into(),
                    problem: format!("index lists `{tensor}` in {expected}, but that shard does not contain it"),
                })
            }
        }
    }
    Ok(())
}

impl WeightSource for HfModelDir {
    fn origin(&self) -> &Path {
        &self.dir
    }

    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(hf) = self.hf_name(name) else { return Ok(None) };
        let Some(&shard) = self.index.get(&hf) else { return Ok(None) };
        let (path, mmap) = &self.shards[shard];
        let bad = |problem: String| Error::Safetensors { path: path.clone(), problem };
        let st = SafeTensors::deserialize(mmap).map_err(|e| bad(e.to_string()))?;
        let view = st.tensor(&hf).map_err(|e| bad(format!("{hf}: {e}")))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::UnsupportedDtype { path: path.clone(), tensor: hf, dtype: format!("{other:?}") })
            }
        };
        Ok(Some((values, view.shape().to_vec())))
    }
}
