//! The Llama family: Llama 2/3, TinyLlama, SmolLM2, and Qwen2/Qwen2.5 (the same network with
//! biases on the Q/K/V projections and NeoX rotary). Pre-norm decoder blocks with RMSNorm,
//! rotary position embeddings, grouped-query attention and a SwiGLU MLP.

use super::act::{Act, Vector};
use super::rope::Rope;
use super::weights::{load_embedding, load_linear, load_matrix_opt, load_vector};
use super::{logits_to_host, logits_tensor, AttentionShape, CausalLm, HeadSubset, KvCache, Linear, LogitRows, Matrix, ModelConfig, RopeStyle, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::{Device, Tensor};

pub struct Llama {
    cfg: ModelConfig,
    embed: Matrix,
    blocks: Vec<Block>,
    final_norm: Vector,
    /// `None` when the LM head is tied to the embedding matrix.
    output: Option<Linear>,
    rope: Rope,
    device: Device,
    /// Activations and cache in host memory (CPU devices), else Burn tensors of a float type on `device`.
    placement: super::Placement,
}

struct Block {
    attn_norm: Vector,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Vector,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Llama {
    /// Reads hyperparameters from GGUF metadata (`{arch}.*` keys) and loads the weights.
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        Self::load(Self::config_from_gguf(gguf)?, gguf, device)
    }

    /// Hyperparameters from GGUF metadata.
    pub fn config_from_gguf(gguf: &Gguf) -> Result<ModelConfig> {
        let arch = gguf.architecture()?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = gguf.get_u64(&key("attention.head_count"))? as usize;
        let hidden = gguf.get_u64(&key("embedding_length"))? as usize;
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(v) => v.as_u64().unwrap_or(0) as usize,
            None if n_heads > 0 && hidden % n_heads == 0 => hidden / n_heads,
            None => {
                return Err(Error::Metadata {
                    path: gguf.path().into(),
                    key: key("attention.head_count"),
                    problem: format!("{n_heads} heads do not divide the width {hidden}"),
                })
            }
        };
        let vocab_size = match gguf.get_u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => gguf
                .tensor_info("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| Error::MissingTensor { path: gguf.path().into(), tensor: "token_embd.weight".into() })?,
        };
        if let Some(kind) = gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            if kind != "none" {
                return Err(Error::Metadata {
                    path: gguf.path().into(),
                    key: key("rope.scaling.type"),
                    problem: format!("rope scaling `{kind}` is not supported"),
                });
            }
        }
        let cfg = ModelConfig {
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or(&arch).to_string(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: gguf.get_u64(&key("feed_forward_length"))? as usize,
            n_layers: gguf.get_u64(&key("block_count"))? as usize,
            n_heads,
            n_kv_heads: gguf.get(&key("attention.head_count_kv")).and_then(|v| v.as_u64()).map_or(n_heads, |v| v as usize),
            head_dim,
            rope_dims: gguf.get(&key("rope.dimension_count")).and_then(|v| v.as_u64()).map_or(head_dim, |v| v as usize),
            rope_theta: gguf.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            // llama.cpp's LLM_ARCH_LLAMA uses "normal" rotation on Q/K rows the converter permuted;
            // qwen2 is converted unpermuted and rotated NeoX-style.
            rope_style: if arch == "llama" { RopeStyle::Normal } else { RopeStyle::Neox },
            norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.get_u64(&key("context_length"))? as usize,
            qkv_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            tied_embeddings: gguf.tensor_info("output.weight").is_none(),
            architecture: arch,
        };
        cfg.check(gguf.path())?;
        Ok(cfg)
    }

    /// Builds the model from a validated config and a weight source using GGUF tensor names.
    pub fn load(cfg: ModelConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        cfg.check(src.origin())?;
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let linear = |name: &str, out: usize, inp: usize, bias: bool| load_linear(src, name, out, inp, bias, device);
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let p = |t: &str| format!("blk.{i}.{t}");
                Ok(Block {
                    attn_norm: load_vector(src, &p("attn_norm.weight"), d, device)?,
                    q: linear(&p("attn_q"), q_out, d, cfg.qkv_bias)?,
                    k: linear(&p("attn_k"), kv_out, d, cfg.qkv_bias)?,
                    v: linear(&p("attn_v"), kv_out, d, cfg.qkv_bias)?,
                    o: linear(&p("attn_output"), d, q_out, false)?,
                    mlp_norm: load_vector(src, &p("ffn_norm.weight"), d, device)?,
                    gate: linear(&p("ffn_gate"), f, d, false)?,
                    up: linear(&p("ffn_up"), f, d, false)?,
                    down: linear(&p("ffn_down"), d, f, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = load_matrix_opt(src, "output.weight", cfg.vocab_size, d, device)?.map(|weight| Linear { weight, bias: None, low_rank: None });
        let rope = Rope::new(&cfg, cfg.rope_theta, cfg.context_length, device);
        let tied_embeddings = output.is_none();
        Ok(Llama {
            embed: load_embedding(src, "token_embd.weight", cfg.vocab_size, d, device, tied_embeddings)?,
            final_norm: load_vector(src, "output_norm.weight", d, device)?,
            output,
            blocks,
            rope,
            cfg: ModelConfig { tied_embeddings, ..cfg },
            device: device.clone(),
            placement: super::Placement::of(device),
        })
    }
}

impl Block {
    fn attention(&self, x: &Act, layer: usize, cache: &mut KvCache, positions: std::ops::Range<usize>, cfg: &ModelConfig, rope: &Rope) -> Act {
        let q = rope.apply(self.q.forward(x), positions.clone());
        let k = rope.apply(self.k.forward(x), positions.clone());
        let v = self.v.forward(x);
        let shape = AttentionShape {
            heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            window: None,
        };
        self.o.forward(&cache.attend(layer, q, k, v, positions, &shape))
    }

    fn mlp(&self, x: &Act) -> Act {
        self.down.forward(&self.gate.forward(x).silu().mul(&self.up.forward(x)))
    }
}

impl Llama {
    /// The final norm's output for the requested rows (the LM head's input).
    fn hidden(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Act> {
        let cfg = &self.cfg;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let positions = cache.reserve(tokens.len())?;
        let mut x = self.embed.gather_rows(tokens);
        // A cache with fewer layers runs only those first blocks (a layer-skip draft).
        for (i, block) in self.blocks.iter().take(cache.n_layers()).enumerate() {
            let h = block.attention(&x.clone().rms_norm(&block.attn_norm, cfg.norm_eps), i, cache, positions.clone(), cfg, &self.rope);
            x = x.add(&h);
            let h = block.mlp(&x.clone().rms_norm(&block.mlp_norm, cfg.norm_eps));
            x = x.add(&h);
        }
        cache.commit(positions.end);
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => x.last_row(),
        };
        Ok(x.rms_norm(&self.final_norm, cfg.norm_eps))
    }
}

impl Llama {
    /// Logits of the requested rows: the LM head (or the tied embedding) over the final norm.
    fn logits(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Act> {
        let x = self.hidden(tokens, cache, rows)?;
        Ok(match &self.output {
            Some(head) => head.forward(&x),
            None => self.embed.matmul_t(&x),
        })
    }
}

impl CausalLm for Llama {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        logits_to_host(self.logits(tokens, cache, rows)?)
    }

    fn forward_tensor(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Tensor<2>> {
        logits_tensor(self.logits(tokens, cache, rows)?)
    }

    fn head_subset(&self, ids: &[u32]) -> Result<HeadSubset> {
        match &self.output {
            Some(head) => head.head_subset(ids, self.cfg.vocab_size),
            None => HeadSubset::new(&self.embed, None, ids, self.cfg.vocab_size),
        }
    }

    fn forward_subset(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: &HeadSubset) -> Result<Logits> {
        head.logits(&self.hidden(tokens, cache, rows)?)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_partial_cache(capacity, self.cfg.n_layers)
    }

    fn new_partial_cache(&self, capacity: usize, layers: usize) -> Result<KvCache> {
        self.cfg.cache(capacity, layers, &self.device, self.placement)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
