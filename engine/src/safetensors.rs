//! Hugging Face model directories: `config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`, memory-mapped. `config.json` becomes the family's config (serde,
//! per family); tensor names are mapped to the GGUF names the model code uses, so one model
//! implementation serves both formats. f16/bf16 matrices stay in the map, packed.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::cpu::{kernel_mode, KernelMode, QuantMatrix};
use crate::gguf::TensorBytes;
use crate::model::{
    FamilyConfig, Gelu, Gemma3Config, GptNeoxConfig, ModelConfig, QkvLayout, RopeStyle, WeightSource, SUPPORTED_MODEL_TYPES,
};
use crate::source::safetensors_shards;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The fields of `config.json` every family has; each family reads the rest itself
/// ([`HfModelDir::family_config`]).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    /// The whole file, for the family's own fields.
    #[serde(skip)]
    json: Value,
}

/// `config.json` of the Llama family (Llama, SmolLM2, TinyLlama, Qwen2).
#[derive(Deserialize)]
struct LlamaJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta` (and `rope_scaling`) at the top level; 5.x nests them
    /// in `rope_parameters`.
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

/// `config.json` of GPT-NeoX (`model_type: "gpt_neox"`): Pythia's files have `rotary_pct` and
/// `rotary_emb_base`, transformers 5 writes `rope_parameters.partial_rotary_factor` / `rope_theta`.
#[derive(Deserialize)]
struct GptNeoxJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_gelu")]
    hidden_act: String,
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: usize,
    #[serde(default = "default_ln_eps")]
    layer_norm_eps: f64,
    #[serde(default = "yes")]
    use_parallel_residual: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    attention_bias: bool,
}

/// `config.json` of Gemma 3 text models (`model_type: "gemma3_text"`). Older files give the RoPE
/// bases as `rope_theta` / `rope_local_base_freq` and the layer kinds as `sliding_window_pattern`;
/// transformers 5 nests the bases per layer kind in `rope_parameters` and lists `layer_types`.
#[derive(Deserialize)]
struct Gemma3Json {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    #[serde(default = "default_gemma_head_dim")]
    head_dim: usize,
    #[serde(default = "default_gelu_tanh")]
    hidden_activation: String,
    max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    #[serde(default = "default_query_pre_attn_scalar")]
    query_pre_attn_scalar: f64,
    sliding_window: Option<usize>,
    #[serde(alias = "_sliding_window_pattern")]
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_bidirectional_attention: bool,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_gelu() -> String {
    "gelu".into()
}
fn default_gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_gemma_head_dim() -> usize {
    256
}
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn yes() -> bool {
    true
}

/// Largest `config.json` or `model.safetensors.index.json` read (real ones are a few kB; the index
/// of a 400B-parameter model ~100 kB): a bigger file is refused before it is read.
const MAX_JSON_BYTES: u64 = 16 << 20;
/// Most shards an index may name (the largest public checkpoints have a few hundred).
const MAX_SHARDS: usize = 1 << 12;

/// One memory-mapped `.safetensors` file and its header, parsed once at open.
struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl Shard {
    /// Maps the file at `path` and parses its header.
    fn open(path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Shard::parse(path, Arc::new(map))
    }

    /// Parses the header of `map`: the safetensors crate bounds the header (100 MB), checks the
    /// JSON, dtypes, shape products (overflow-checked) and that the data ranges tile the rest of
    /// the file exactly; a name listed twice (which JSON parsers silently collapse) is refused here.
    fn parse(path: PathBuf, map: Arc<Mmap>) -> Result<Self> {
        let bad = |problem: String| Error::Safetensors { path: path.clone(), problem };
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let header = std::str::from_utf8(&map[8..8 + header_len]).map_err(|e| bad(e.to_string()))?;
        if let Some(name) = duplicate_key(header) {
            return Err(bad(format!("tensor `{name}` is listed twice in the header")));
        }
        let tensors = meta.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        Ok(Shard { data_start: 8 + header_len, tensors, path, map })
    }

    /// The bytes of tensor `info` (validated against the file at parse).
    fn data(&self, info: &safetensors::tensor::TensorInfo) -> &[u8] {
        let (s, e) = info.data_offsets;
        &self.map[self.data_start + s..self.data_start + e]
    }
}

/// The first key a JSON object lists twice, if any (`None` also for text that is not an object:
/// the caller has parsed it already).
fn duplicate_key(json: &str) -> Option<String> {
    struct FirstDuplicate;
    impl<'de> serde::de::Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            // The whole map is read even after a duplicate: the deserializer checks its end.
            let (mut seen, mut first) = (std::collections::HashSet::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if first.is_none() && !seen.insert(key.clone()) {
                    first = Some(key);
                }
            }
            Ok(first)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    serde::Deserializer::deserialize_map(&mut de, FirstDuplicate).ok().flatten()
}

/// A JSON file of a model or adapter directory, refused unread when larger than [`MAX_JSON_BYTES`].
pub(crate) fn read_json_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_JSON_BYTES {
        return Err(Error::Metadata {
            path: path.into(),
            key: "file size".into(),
            problem: format!("{len} bytes, more than the {MAX_JSON_BYTES} a JSON file of a model directory may have"),
        });
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// `config.json`'s text as the common fields and the whole document.
fn parse_config(path: &Path, text: &str) -> Result<HfConfig> {
    let invalid = |e: serde_json::Error| Error::Metadata { path: path.into(), key: "config.json".into(), problem: e.to_string() };
    let json: Value = serde_json::from_str(text).map_err(invalid)?;
    Ok(HfConfig { json: json.clone(), ..HfConfig::deserialize(&json).map_err(invalid)? })
}

/// The shard files an index names: plain file names inside the model directory (an index from
/// elsewhere must not make us map `../../x` or `/etc/x`), at most [`MAX_SHARDS`] of them.
fn shard_names(index_path: &Path) -> Result<Vec<String>> {
    read_json_file(index_path)?;
    let names = safetensors_shards(index_path)?;
    let bad = |problem: String| Error::Safetensors { path: index_path.into(), problem };
    if names.len() > MAX_SHARDS {
        return Err(bad(format!("{} shards listed, more than {MAX_SHARDS}", names.len())));
    }
    for name in &names {
        let mut parts = Path::new(name).components();
        if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) || name.contains(['/', '\\']) {
            return Err(bad(format!("shard `{name}` is not a file name inside the model directory")));
        }
    }
    Ok(names)
}

/// Tensor name → shard, refusing a name two shards both hold.
fn tensor_index(shards: &[Shard]) -> Result<HashMap<String, usize>> {
    let mut index = HashMap::new();
    for (i, shard) in shards.iter().enumerate() {
        for name in shard.tensors.keys() {
            if let Some(j) = index.insert(name.clone(), i) {
                return Err(Error::Safetensors {
                    path: shard.path.clone(),
                    problem: format!("tensor `{name}` is also in {}", shards[j].path.display()),
                });
            }
        }
    }
    Ok(index)
}

/// Little-endian f32, f16 or bf16 values as f32 (`None` for other dtypes).
fn f32_values(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// Every tensor of the `.safetensors` file at `path` as (name, f32 values, shape), in name order,
/// checked as a model shard is. For small files used whole (LoRA adapters): the values take at
/// most twice the file's size.
pub(crate) fn read_all_f32(path: &Path) -> Result<Vec<(String, Vec<f32>, Vec<usize>)>> {
    let shard = Shard::open(path.to_path_buf())?;
    let mut names: Vec<&String> = shard.tensors.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let info = &shard.tensors[name];
            let values = f32_values(info.dtype, shard.data(info))
                .ok_or_else(|| Error::UnsupportedDtype { path: path.into(), tensor: name.clone(), dtype: format!("{:?}", info.dtype) })?;
            Ok((name.clone(), values, info.shape.clone()))
        })
        .collect()
}

/// An opened HF directory.
pub struct HfModelDir {
    dir: PathBuf,
    pub config: HfConfig,
    shards: Vec<Shard>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
}

impl HfModelDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let config = parse_config(&config_path, &read_json_file(&config_path)?)?;
        let index_path = dir.join("model.safetensors.index.json");
        let files = if index_path.is_file() { shard_names(&index_path)? } else { vec!["model.safetensors".to_string()] };
        let mut shards = Vec::new();
        for name in files {
            shards.push(Shard::open(dir.join(&name))?);
        }
        let index = tensor_index(&shards)?;
        if index_path.is_file() {
            check_index(&index_path, &index, &shards)?;
        }
        Ok(HfModelDir { dir, config, shards, index })
    }

    /// A directory held in memory, as if read from `dir` (which only names it in errors):
    /// `config_json` and the shards' bytes by file name (copied into anonymous maps). For checking
    /// files' contents without writing them out.
    pub fn from_memory(dir: impl Into<PathBuf>, config_json: &str, shards: &[(&str, &[u8])]) -> Result<Self> {
        let dir = dir.into();
        let config = parse_config(&dir.join("config.json"), config_json)?;
        let shards = shards
            .iter()
            .map(|(name, bytes)| {
                let path = dir.join(name);
                let map = crate::gguf::anonymous_map(bytes).map_err(|e| Error::io(&path, e))?;
                Shard::parse(path, Arc::new(map))
            })
            .collect::<Result<Vec<_>>>()?;
        let index = tensor_index(&shards)?;
        Ok(HfModelDir { dir, config, shards, index })
    }

    /// Parameter count over all shards.
    pub fn parameter_count(&self) -> u64 {
        self.dtype_histogram().values().map(|v| v.1).sum()
    }

    /// Tensor dtype → (tensor count, parameters).
    pub fn dtype_histogram(&self) -> std::collections::BTreeMap<String, (usize, u64)> {
        let mut out = std::collections::BTreeMap::<String, (usize, u64)>::new();
        for shard in &self.shards {
            for info in shard.tensors.values() {
                let e = out.entry(format!("{:?}", info.dtype)).or_default();
                e.0 += 1;
                // Shape products were checked at open (they fit the file).
                e.1 += info.shape.iter().product::<usize>() as u64;
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The family config `config.json` describes; an unknown `model_type` is
    /// [`Error::UnsupportedArchitecture`] naming the file.
    pub fn family_config(&self) -> Result<FamilyConfig> {
        let path = self.config_path();
        let cfg = match self.config.model_type.as_str() {
            "llama" | "qwen2" => FamilyConfig::Llama(self.llama_config()?),
            "gpt_neox" => FamilyConfig::GptNeox(self.gpt_neox_config()?),
            "gemma3_text" => FamilyConfig::Gemma3(self.gemma3_config()?),
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path,
                    arch: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        cfg.base().check(&path)?;
        Ok(cfg)
    }

    /// `config.json` read as `T`; a missing or mistyped field names the file.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.config.json).map_err(|e| Error::Metadata {
            path: self.config_path(),
            key: "config.json".into(),
            problem: format!("{} config: {e}", self.config.model_type),
        })
    }

    fn unsupported(&self, key: &str, problem: String) -> Error {
        Error::Metadata { path: self.config_path(), key: key.into(), problem }
    }

    fn name(&self) -> String {
        self.config.architectures.first().cloned().unwrap_or_else(|| self.config.model_type.clone())
    }

    /// The engine config for the Llama/Qwen2 family.
    pub fn llama_config(&self) -> Result<ModelConfig> {
        let c: LlamaJson = self.parse()?;
        if let Some(scaling) = c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(self.unsupported("rope_scaling", format!("unsupported: {scaling}")));
        }
        let params = c.rope_parameters.as_ref();
        check_default_rope(params, "rope_parameters.rope_type").map_err(|(k, p)| self.unsupported(&k, p))?;
        let rope_theta = c
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()))
            .unwrap_or(10_000.0);
        let head_dim = match c.head_dim {
            Some(d) => d,
            None => heads_divide(c.hidden_size, c.num_attention_heads).map_err(|p| self.unsupported("num_attention_heads", p))?,
        };
        Ok(ModelConfig {
            architecture: self.config.model_type.clone(),
            name: self.name(),
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
            qkv_bias: c.attention_bias.unwrap_or(self.config.model_type == "qwen2"),
            tied_embeddings: c.tie_word_embeddings,
        })
    }

    /// The engine config for GPT-NeoX: rotary over `int(head_dim · rotary_pct)` dimensions, as
    /// transformers computes it.
    pub fn gpt_neox_config(&self) -> Result<GptNeoxConfig> {
        let c: GptNeoxJson = self.parse()?;
        if let Some(scaling) = c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(self.unsupported("rope_scaling", format!("unsupported: {scaling}")));
        }
        let params = c.rope_parameters.as_ref();
        check_default_rope(params, "rope_parameters.rope_type").map_err(|(k, p)| self.unsupported(&k, p))?;
        if c.tie_word_embeddings {
            return Err(self.unsupported("tie_word_embeddings", "GPT-NeoX with tied embeddings is not supported".into()));
        }
        let activation =
            Gelu::from_hf(&c.hidden_act).ok_or_else(|| self.unsupported("hidden_act", format!("unsupported: {}", c.hidden_act)))?;
        let param = |k: &str| params.and_then(|p| p.get(k)).and_then(|v| v.as_f64());
        let fraction = c.rotary_pct.or_else(|| param("partial_rotary_factor")).unwrap_or(0.25);
        let rope_theta = c.rotary_emb_base.or_else(|| param("rope_theta")).unwrap_or(10_000.0);
        let head_dim = heads_divide(c.hidden_size, c.num_attention_heads).map_err(|p| self.unsupported("num_attention_heads", p))?;
        let base = ModelConfig {
            architecture: self.config.model_type.clone(),
            name: self.name(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            n_layers: c.num_hidden_layers,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_attention_heads,
            head_dim,
            rope_dims: (head_dim as f64 * fraction) as usize,
            rope_theta,
            rope_style: RopeStyle::Neox,
            norm_eps: c.layer_norm_eps,
            context_length: c.max_position_embeddings,
            qkv_bias: c.attention_bias,
            tied_embeddings: false,
        };
        Ok(GptNeoxConfig { base, parallel_residual: c.use_parallel_residual, activation, qkv_layout: QkvLayout::PerHead })
    }

    /// The engine config for Gemma 3 text models.
    pub fn gemma3_config(&self) -> Result<Gemma3Config> {
        let c: Gemma3Json = self.parse()?;
        let unsupported = |k: &str, what: &str| Err(self.unsupported(k, format!("{what} is not supported")));
        if c.final_logit_softcapping.is_some() {
            return unsupported("final_logit_softcapping", "logit soft-capping");
        }
        if c.attn_logit_softcapping.is_some() {
            return unsupported("attn_logit_softcapping", "attention soft-capping");
        }
        if c.attention_bias {
            return unsupported("attention_bias", "Gemma 3 with attention biases");
        }
        if c.use_bidirectional_attention {
            return unsupported("use_bidirectional_attention", "bidirectional attention");
        }
        if c.hidden_activation != "gelu_pytorch_tanh" {
            return Err(self.unsupported("hidden_activation", format!("unsupported: {}", c.hidden_activation)));
        }
        if let Some(scaling) = c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(self.unsupported("rope_scaling", format!("unsupported: {scaling}")));
        }
        // transformers 5: {"full_attention": {rope_type, rope_theta}, "sliding_attention": {…}}.
        let kind = |k: &str| c.rope_parameters.as_ref().and_then(|p| p.get(k));
        for k in ["full_attention", "sliding_attention"] {
            check_default_rope(kind(k), &format!("rope_parameters.{k}.rope_type")).map_err(|(k, p)| self.unsupported(&k, p))?;
        }
        let theta = |k: &str| kind(k).and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64());
        let n = c.num_hidden_layers;
        crate::model::check_layer_count(n, &self.config_path())?;
        let local_layers = match &c.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(self.unsupported("layer_types", format!("{} entries for {n} layers", types.len())));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(self.unsupported("layer_types", format!("unknown layer type `{other}`"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => Gemma3Config::pattern_layers(n, c.sliding_window_pattern.unwrap_or(6)),
        };
        let base = ModelConfig {
            architecture: self.config.model_type.clone(),
            name: self.name(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            n_layers: n,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            rope_dims: c.head_dim,
            rope_theta: c.rope_theta.or_else(|| theta("full_attention")).unwrap_or(1_000_000.0),
            rope_style: RopeStyle::Neox,
            norm_eps: c.rms_norm_eps,
            context_length: c.max_position_embeddings,
            qkv_bias: false,
            tied_embeddings: c.tie_word_embeddings,
        };
        let cfg = Gemma3Config {
            base,
            sliding_window: c.sliding_window.filter(|&w| w > 0),
            local_layers,
            local_rope_theta: c.rope_local_base_freq.or_else(|| theta("sliding_attention")).unwrap_or(10_000.0),
            query_scale: 1.0 / c.query_pre_attn_scalar.sqrt(),
        };
        cfg.check(&self.config_path())?;
        Ok(cfg)
    }

    /// The HF tensor for a GGUF tensor name, and what to add to it (Gemma's norms store scale − 1).
    fn hf_name(&self, gguf: &str) -> Option<(String, f32)> {
        match self.config.model_type.as_str() {
            "gpt_neox" => gpt_neox_name(gguf).map(|n| (n, 0.0)),
            "gemma3_text" => gemma3_name(gguf, self.config.json["tie_word_embeddings"] == Value::Bool(false)),
            _ => llama_name(gguf, self.config.json["tie_word_embeddings"] == Value::Bool(true)).map(|n| (n, 0.0)),
        }
    }

    /// The shard holding `hf`, opened.
    fn tensor(&self, hf: &str) -> Result<Option<(&Path, &Arc<Mmap>, safetensors::tensor::TensorView<'_>)>> {
        let Some(&shard) = self.index.get(hf) else { return Ok(None) };
        let shard = &self.shards[shard];
        let info = &shard.tensors[hf];
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), shard.data(info))
            .map_err(|e| Error::Safetensors { path: shard.path.clone(), problem: format!("{hf}: {e}") })?;
        Ok(Some((&shard.path, &shard.map, view)))
    }
}

/// The head size `hidden / heads`, or why there is none.
fn heads_divide(hidden: usize, heads: usize) -> std::result::Result<usize, String> {
    if heads == 0 || hidden % heads != 0 {
        return Err(format!("{heads} heads do not divide the hidden size {hidden}"));
    }
    Ok(hidden / heads)
}

/// `Err((key, problem))` when a rope parameter block asks for anything but plain RoPE.
fn check_default_rope(params: Option<&Value>, key: &str) -> std::result::Result<(), (String, String)> {
    match params.and_then(|p| p.get("rope_type")).and_then(|t| t.as_str()) {
        Some(kind) if kind != "default" => Err((key.to_string(), format!("unsupported: {kind}"))),
        _ => Ok(()),
    }
}

/// `blk.{layer}.{base}.{kind}` → (layer, base, kind).
fn split_block(gguf: &str) -> Option<(&str, &str, &str)> {
    let (layer, tail) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (base, kind) = tail.rsplit_once('.')?;
    Some((layer, base, kind))
}

fn llama_name(gguf: &str, tied: bool) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" if tied => return None,
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let (layer, base, kind) = split_block(gguf)?;
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

fn gpt_neox_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("gpt_neox.embed_in.weight"),
        "output_norm.weight" => Some("gpt_neox.final_layer_norm.weight"),
        "output_norm.bias" => Some("gpt_neox.final_layer_norm.bias"),
        "output.weight" => Some("embed_out.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let (layer, base, kind) = split_block(gguf)?;
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_qkv" => "attention.query_key_value",
        "attn_output" => "attention.dense",
        "ffn_up" => "mlp.dense_h_to_4h",
        "ffn_down" => "mlp.dense_4h_to_h",
        _ => return None,
    };
    Some(format!("gpt_neox.layers.{layer}.{hf}.{kind}"))
}

/// Gemma's RMSNorm multiplies by 1 + w: every norm weight gets its 1 here, as llama.cpp's
/// converter adds it to the GGUF.
fn gemma3_name(gguf: &str, untied: bool) -> Option<(String, f32)> {
    let simple = match gguf {
        "token_embd.weight" => Some(("model.embed_tokens.weight", 0.0)),
        "output_norm.weight" => Some(("model.norm.weight", 1.0)),
        "output.weight" if untied => Some(("lm_head.weight", 0.0)),
        _ => None,
    };
    if let Some((s, shift)) = simple {
        return Some((s.to_string(), shift));
    }
    let (layer, base, kind) = split_block(gguf)?;
    let (hf, shift) = match base {
        "attn_norm" => ("input_layernorm", 1.0),
        "post_attention_norm" => ("post_attention_layernorm", 1.0),
        "ffn_norm" => ("pre_feedforward_layernorm", 1.0),
        "post_ffw_norm" => ("post_feedforward_layernorm", 1.0),
        "attn_q_norm" => ("self_attn.q_norm", 1.0),
        "attn_k_norm" => ("self_attn.k_norm", 1.0),
        "attn_q" => ("self_attn.q_proj", 0.0),
        "attn_k" => ("self_attn.k_proj", 0.0),
        "attn_v" => ("self_attn.v_proj", 0.0),
        "attn_output" => ("self_attn.o_proj", 0.0),
        "ffn_gate" => ("mlp.gate_proj", 0.0),
        "ffn_up" => ("mlp.up_proj", 0.0),
        "ffn_down" => ("mlp.down_proj", 0.0),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), shift))
}

fn check_index(index_path: &Path, found: &HashMap<String, usize>, shards: &[Shard]) -> Result<()> {
    let text = read_json_file(index_path)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::Safetensors { path: index_path.into(), problem: e.to_string() })?;
    let map = json["weight_map"].as_object().into_iter().flatten();
    for (tensor, shard) in map {
        let expected = shard.as_str().unwrap_or_default();
        match found.get(tensor) {
            Some(&i) if shards[i].path.file_name().is_some_and(|f| f == expected) => {}
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
        let Some((hf, shift)) = self.hf_name(name) else { return Ok(None) };
        let Some((path, _, view)) = self.tensor(&hf)? else { return Ok(None) };
        let Some(mut values) = f32_values(view.dtype(), view.data()) else {
            return Err(Error::UnsupportedDtype { path: path.to_path_buf(), tensor: hf, dtype: format!("{:?}", view.dtype()) });
        };
        if shift != 0.0 {
            values.iter_mut().for_each(|v| *v += shift);
        }
        Ok(Some((values, view.shape().to_vec())))
    }

    /// f16/bf16 matrices as a range of the shard's map, multiplied in place by the packed kernels.
    fn load_packed(&self, name: &str) -> Result<Option<(QuantMatrix, Vec<usize>)>> {
        let Some((hf, shift)) = self.hf_name(name) else { return Ok(None) };
        if shift != 0.0 || kernel_mode() == KernelMode::F32 {
            return Ok(None);
        }
        let Some((path, mmap, view)) = self.tensor(&hf)? else { return Ok(None) };
        let ty = match view.dtype() {
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            _ => return Ok(None),
        };
        let shape = view.shape().to_vec();
        if shape.len() != 2 {
            return Ok(None);
        }
        let data = view.data();
        // The view borrows the map: its offset in the map is the distance between the two.
        let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
        let bytes = TensorBytes::Mapped { map: mmap.clone(), start, len: data.len() };
        let w = QuantMatrix::new(ty, bytes, shape[0], shape[1])
            .map_err(|problem| Error::Safetensors { path: path.to_path_buf(), problem: format!("{hf}: {problem}") })?;
        Ok(Some((w, shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding only `config.json` (no weights: family configs need none).
    fn dir_with_config(json: &str, tag: &str) -> HfModelDir {
        let config: HfConfig = serde_json::from_str(json).unwrap();
        let config = HfConfig { json: serde_json::from_str(json).unwrap(), ..config };
        HfModelDir { dir: PathBuf::from(format!("/nonexistent/{tag}")), config, shards: vec![], index: HashMap::new() }
    }

    #[test]
    fn duplicate_keys_are_found() {
        assert_eq!(duplicate_key(r#"{"a": {"x": 1}, "b": [1, {"a": 2}], "a": 3}"#).as_deref(), Some("a"));
        assert_eq!(duplicate_key(r#"{"a": {"x": 1}, "b": 2}"#), None);
        let st = r#"{"l":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"},"l":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"m":{}}"#;
        assert_eq!(duplicate_key(st).as_deref(), Some("l"));
    }

    #[test]
    fn pythia_style_config_json() {
        // The fields of EleutherAI/pythia-1b's config.json (transformers 4 era).
        let dir = dir_with_config(
            r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
                "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "layer_norm_eps": 1e-05,
                "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
                "num_hidden_layers": 16, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
                "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": true,
                "use_parallel_residual": true, "vocab_size": 50304}"#,
            "pythia",
        );
        let FamilyConfig::GptNeox(c) = dir.family_config().unwrap() else { panic!("not GPT-NeoX") };
        assert_eq!((c.base.head_dim, c.base.rope_dims, c.base.rope_theta), (256, 64, 10_000.0));
        assert_eq!((c.base.n_layers, c.base.vocab_size, c.base.norm_eps), (16, 50304, 1e-5));
        assert!(c.parallel_residual && c.base.qkv_bias && !c.base.tied_embeddings);
        assert_eq!((c.activation, c.qkv_layout), (Gelu::Erf, QkvLayout::PerHead));
    }

    #[test]
    fn gemma3_270m_style_config_json() {
        // The fields of google/gemma-3-270m's config.json (transformers 4 era): top-level RoPE bases
        // and a pattern period instead of per-kind rope_parameters.
        let dir = dir_with_config(
            r#"{"architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
                "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": null,
                "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "initializer_range": 0.02,
                "intermediate_size": 2048, "max_position_embeddings": 32768, "model_type": "gemma3_text",
                "num_attention_heads": 4, "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
                "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
                "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512, "_sliding_window_pattern": 6,
                "use_bidirectional_attention": false, "use_cache": true, "vocab_size": 262144}"#,
            "gemma",
        );
        let FamilyConfig::Gemma3(c) = dir.family_config().unwrap() else { panic!("not Gemma 3") };
        assert_eq!((c.base.rope_theta, c.local_rope_theta, c.sliding_window), (1e6, 1e4, Some(512)));
        assert_eq!(c.query_scale, 1.0 / 16.0);
        assert_eq!((0..18).filter(|&i| !c.local_layers[i]).collect::<Vec<_>>(), [5, 11, 17]);
        assert!(c.base.tied_embeddings);
        // query_pre_attn_scalar is read, not assumed to be head_dim.
        let mut json: Value = dir.config.json.clone();
        json["query_pre_attn_scalar"] = 168.into();
        let dir = dir_with_config(&json.to_string(), "gemma-27b-scale");
        let FamilyConfig::Gemma3(c) = dir.family_config().unwrap() else { panic!() };
        assert_eq!(c.query_scale, 1.0 / 168f64.sqrt());
        // Soft-capping and scaled RoPE are refused, naming the key and the file.
        json["final_logit_softcapping"] = 30.0.into();
        let err = dir_with_config(&json.to_string(), "capped").family_config().unwrap_err();
        assert!(err.to_string().contains("final_logit_softcapping") && err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn unknown_model_type_and_missing_fields_name_config_json() {
        let err = dir_with_config(r#"{"model_type": "mamba"}"#, "mamba").family_config().unwrap_err();
        assert!(matches!(err, Error::UnsupportedArchitecture { .. }), "{err}");
        assert!(err.to_string().contains("config.json") && err.to_string().contains("gemma3_text"), "{err}");
        let err = dir_with_config(r#"{"model_type": "gpt_neox", "hidden_size": 64}"#, "partial").family_config().unwrap_err();
        assert!(matches!(err, Error::Metadata { .. }) && err.to_string().contains("config.json"), "{err}");
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }
}
