//! Gemma 3 (text): embeddings scaled by √hidden, RMSNorm before and after both attention and MLP,
//! RMS-normalised queries and keys per head, a GELU-tanh gated MLP, tied embeddings, and two kinds
//! of layers: local ones attend to a sliding window of recent positions with RoPE base 10000,
//! global ones (every sixth layer by default) to everything with the model's `rope.freq_base`.
//!
//! Norm weights follow the GGUF convention: the stored weight is the full scale (HF stores
//! scale − 1 and adds the 1 in its forward; the HF weight source adds it when loading).

use super::act::{Act, Vector};
use super::rope::Rope;
use super::weights::{load_embedding, load_linear, load_matrix_opt, load_vector};
use super::{logits_to_host, logits_tensor, AttentionShape, CausalLm, HeadSubset, KvCache, Linear, LogitRows, Matrix, ModelConfig, RopeStyle, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::{Device, Tensor};

/// Gemma 3 hyperparameters beyond the shared ones.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gemma3Config {
    #[serde(flatten)]
    pub base: ModelConfig,
    /// Positions a local layer's query sees, its own included; `None`: every layer is global.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is local (sliding window, local RoPE base).
    pub local_layers: Vec<bool>,
    /// RoPE base of the local layers (`base.rope_theta` is the global layers').
    pub local_rope_theta: f64,
    /// Factor on q·k: `query_pre_attn_scalar`^-½.
    pub query_scale: f64,
}

/// llama.cpp's defaults for what Gemma 3 GGUFs may leave out (gemma-3-270m's does): five local
/// layers, then a global one; local RoPE base 10000.
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_LOCAL_ROPE_THETA: f64 = 10_000.0;

impl Gemma3Config {
    /// Layer `i` is local unless it closes a period of `pattern` layers (HF `sliding_window_pattern`,
    /// llama.cpp's `set_swa_pattern`; 0 makes every layer local, as there).
    pub fn pattern_layers(n_layers: usize, pattern: usize) -> Vec<bool> {
        (0..n_layers).map(|i| pattern == 0 || i % pattern < pattern - 1).collect()
    }

    /// From llama.cpp's `gemma3` metadata. The local RoPE base and the layer pattern are read from
    /// `rope.freq_base_swa` and `attention.sliding_window_pattern` (a period or one flag per layer)
    /// when present, else llama.cpp's defaults; the query scale is head_dim^-½ as in llama.cpp, which
    /// hard-codes (hidden / heads)^-½ for the 62-layer 27B only.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch = gguf.architecture()?;
        let path = gguf.path();
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |k: &str, problem: String| Error::Metadata { path: path.into(), key: key(k), problem };
        let n_heads = gguf.get_u64(&key("attention.head_count"))? as usize;
        let hidden = gguf.get_u64(&key("embedding_length"))? as usize;
        let n_layers = gguf.get_u64(&key("block_count"))? as usize;
        super::check_layer_count(n_layers, path)?;
        let head_dim = match gguf.get(&key("attention.key_length")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => hidden / n_heads.max(1),
        };
        if let Some(kind) = gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()).filter(|k| *k != "none") {
            return Err(bad("rope.scaling.type", format!("rope scaling `{kind}` is not supported")));
        }
        if gguf.get(&key("final_logit_softcapping")).and_then(|v| v.as_f64()).is_some_and(|c| c != 0.0) {
            return Err(bad("final_logit_softcapping", "logit soft-capping is not supported".into()));
        }
        let vocab_size = match gguf.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => gguf
                .tensor_info("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| Error::MissingTensor { path: path.into(), tensor: "token_embd.weight".into() })?,
        };
        let sliding_window = gguf.get(&key("attention.sliding_window")).and_then(|v| v.as_u64()).map(|w| w as usize).filter(|&w| w > 0);
        let local_layers = match gguf.get(&key("attention.sliding_window_pattern")) {
            None => Self::pattern_layers(n_layers, DEFAULT_PATTERN),
            Some(v) => match (v.as_u64(), v.as_array()) {
                (Some(p), _) => Self::pattern_layers(n_layers, p as usize),
                (None, Some(flags)) if flags.len() == n_layers => flags
                    .iter()
                    .map(|f| f.as_bool().ok_or_else(|| bad("attention.sliding_window_pattern", "not a list of booleans".into())))
                    .collect::<Result<Vec<_>>>()?,
                _ => return Err(bad("attention.sliding_window_pattern", format!("neither a period nor {n_layers} flags"))),
            },
        };
        let base = ModelConfig {
            architecture: arch.to_string(),
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or(arch).to_string(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: gguf.get_u64(&key("feed_forward_length"))? as usize,
            n_layers,
            n_heads,
            n_kv_heads: gguf.get(&key("attention.head_count_kv")).and_then(|v| v.as_u64()).map_or(n_heads, |v| v as usize),
            head_dim,
            rope_dims: gguf.get(&key("rope.dimension_count")).and_then(|v| v.as_u64()).map_or(head_dim, |v| v as usize),
            rope_theta: gguf.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(1_000_000.0),
            rope_style: RopeStyle::Neox,
            norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.get_u64(&key("context_length"))? as usize,
            qkv_bias: false,
            tied_embeddings: gguf.tensor_info("output.weight").is_none(),
        };
        let scale_dim = if n_layers == 62 { hidden / n_heads.max(1) } else { head_dim };
        let cfg = Gemma3Config {
            base,
            sliding_window,
            local_layers,
            local_rope_theta: gguf.get(&key("rope.freq_base_swa")).and_then(|v| v.as_f64()).unwrap_or(DEFAULT_LOCAL_ROPE_THETA),
            query_scale: 1.0 / (scale_dim as f64).sqrt(),
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    pub(crate) fn check(&self, path: &std::path::Path) -> Result<()> {
        self.base.check(path)?;
        if self.local_layers.len() != self.base.n_layers {
            return Err(Error::Metadata {
                path: path.into(),
                key: "layer pattern".into(),
                problem: format!("{} layer kinds for {} layers", self.local_layers.len(), self.base.n_layers),
            });
        }
        Ok(())
    }

    /// The window layer `i` attends through (`None`: all positions).
    fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.local_layers[layer])
    }
}

pub struct Gemma3 {
    cfg: Gemma3Config,
    embed: Matrix,
    blocks: Vec<Block>,
    final_norm: Vector,
    /// `None` when the LM head is the embedding matrix (every released Gemma 3).
    output: Option<Linear>,
    global_rope: Rope,
    local_rope: Rope,
    device: Device,
    /// Activations and cache in host memory (CPU devices), else Burn tensors of a float type on `device`.
    placement: super::Placement,
}

struct Block {
    attn_norm: Vector,
    q: Linear,
    k: Linear,
    v: Linear,
    q_norm: Vector,
    k_norm: Vector,
    o: Linear,
    post_attn_norm: Vector,
    mlp_norm: Vector,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_mlp_norm: Vector,
}

impl Gemma3 {
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        Self::load(Gemma3Config::from_gguf(gguf)?, gguf, device)
    }

    /// Builds the model from a config and a weight source using GGUF tensor names.
    pub fn load(cfg: Gemma3Config, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        // Always f32 on devices: Gemma's residual stream (embeddings scaled by √d, trained in
        // bf16) leaves f16's range — in f16 Gemma3-270M's logits become NaN. As in transformers,
        // which warns against float16 for Gemma.
        super::with_device_float(super::DeviceFloat::F32, || Self::load_in(cfg, src, device))
    }

    fn load_in(cfg: Gemma3Config, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        cfg.check(src.origin())?;
        let c = &cfg.base;
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_out, kv_out) = (c.n_heads * hd, c.n_kv_heads * hd);
        let linear = |name: &str, out: usize, inp: usize| load_linear(src, name, out, inp, false, device);
        let blocks = (0..c.n_layers)
            .map(|i| {
                let p = |t: &str| format!("blk.{i}.{t}");
                Ok(Block {
                    attn_norm: load_vector(src, &p("attn_norm.weight"), d, device)?,
                    q: linear(&p("attn_q"), q_out, d)?,
                    k: linear(&p("attn_k"), kv_out, d)?,
                    v: linear(&p("attn_v"), kv_out, d)?,
                    q_norm: load_vector(src, &p("attn_q_norm.weight"), hd, device)?,
                    k_norm: load_vector(src, &p("attn_k_norm.weight"), hd, device)?,
                    o: linear(&p("attn_output"), d, q_out)?,
                    post_attn_norm: load_vector(src, &p("post_attention_norm.weight"), d, device)?,
                    mlp_norm: load_vector(src, &p("ffn_norm.weight"), d, device)?,
                    gate: linear(&p("ffn_gate"), f, d)?,
                    up: linear(&p("ffn_up"), f, d)?,
                    down: linear(&p("ffn_down"), d, f)?,
                    post_mlp_norm: load_vector(src, &p("post_ffw_norm.weight"), d, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = load_matrix_opt(src, "output.weight", c.vocab_size, d, device)?.map(|weight| Linear { weight, bias: None, low_rank: None });
        Ok(Gemma3 {
            embed: load_embedding(src, "token_embd.weight", c.vocab_size, d, device, output.is_none())?,
            final_norm: load_vector(src, "output_norm.weight", d, device)?,
            global_rope: Rope::new(c, c.rope_theta, c.context_length, device),
            local_rope: Rope::new(c, cfg.local_rope_theta, c.context_length, device),
            cfg: Gemma3Config { base: ModelConfig { tied_embeddings: output.is_none(), ..c.clone() }, ..cfg },
            output,
            blocks,
            device: device.clone(),
            placement: super::Placement::of(device),
        })
    }

    pub fn family_config(&self) -> &Gemma3Config {
        &self.cfg
    }
}

impl Block {
    fn attention(&self, x: &Act, layer: usize, cache: &mut KvCache, positions: std::ops::Range<usize>, cfg: &Gemma3Config, rope: &Rope) -> Act {
        let c = &cfg.base;
        let (nh, nkv, eps) = (c.n_heads, c.n_kv_heads, c.norm_eps);
        // RMSNorm of every head's query and key, then the rotation.
        let q = rope.apply(self.q.forward(x).rms_norm_groups(&self.q_norm, eps, nh), positions.clone());
        let k = rope.apply(self.k.forward(x).rms_norm_groups(&self.k_norm, eps, nkv), positions.clone());
        let v = self.v.forward(x);
        let shape = AttentionShape { heads: nh, kv_heads: nkv, head_dim: c.head_dim, scale: cfg.query_scale as f32, window: cfg.window(layer) };
        self.o.forward(&cache.attend(layer, q, k, v, positions, &shape))
    }

    fn mlp(&self, x: &Act) -> Act {
        self.down.forward(&self.gate.forward(x).gelu_tanh().mul(&self.up.forward(x)))
    }
}

impl Gemma3 {
    /// The final norm's output for the requested rows (the LM head's input).
    fn hidden(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Act> {
        let c = &self.cfg.base;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let positions = cache.reserve(tokens.len())?;
        let (d, eps) = (c.hidden_size, c.norm_eps);
        let mut x = self.embed.gather_rows(tokens).scale((d as f64).sqrt() as f32);
        for (i, block) in self.blocks.iter().take(cache.n_layers()).enumerate() {
            let rope = if self.cfg.local_layers[i] { &self.local_rope } else { &self.global_rope };
            let h = block.attention(&x.clone().rms_norm(&block.attn_norm, eps), i, cache, positions.clone(), &self.cfg, rope);
            x = x.add(&h.rms_norm(&block.post_attn_norm, eps));
            let h = block.mlp(&x.clone().rms_norm(&block.mlp_norm, eps));
            x = x.add(&h.rms_norm(&block.post_mlp_norm, eps));
        }
        cache.commit(positions.end);
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => x.last_row(),
        };
        Ok(x.rms_norm(&self.final_norm, eps))
    }
}

impl Gemma3 {
    /// Logits of the requested rows: the LM head (or the tied embedding) over the final norm.
    fn logits(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Act> {
        let x = self.hidden(tokens, cache, rows)?;
        Ok(match &self.output {
            Some(head) => head.forward(&x),
            None => self.embed.matmul_t(&x),
        })
    }
}

impl CausalLm for Gemma3 {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        logits_to_host(self.logits(tokens, cache, rows)?)
    }

    fn forward_tensor(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Tensor<2>> {
        logits_tensor(self.logits(tokens, cache, rows)?)
    }

    fn head_subset(&self, ids: &[u32]) -> Result<HeadSubset> {
        match &self.output {
            Some(head) => head.head_subset(ids, self.cfg.base.vocab_size),
            None => HeadSubset::new(&self.embed, None, ids, self.cfg.base.vocab_size),
        }
    }

    fn forward_subset(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: &HeadSubset) -> Result<Logits> {
        head.logits(&self.hidden(tokens, cache, rows)?)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_partial_cache(capacity, self.cfg.base.n_layers)
    }

    fn new_partial_cache(&self, capacity: usize, layers: usize) -> Result<KvCache> {
        self.cfg.base.cache(capacity, layers, &self.device, self.placement)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg.base
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn layer_pattern_is_five_local_then_one_global() {
        let layers = super::Gemma3Config::pattern_layers(18, 6);
        let global: Vec<usize> = (0..18).filter(|&i| !layers[i]).collect();
        assert_eq!(global, [5, 11, 17]);
        assert!(super::Gemma3Config::pattern_layers(3, 0).iter().all(|&l| l));
    }
}
