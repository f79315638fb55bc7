//! The GPT-NeoX family (EleutherAI's Pythia and GPT-NeoX-20B): LayerNorm with bias, one fused QKV
//! projection, rotary embeddings over the first `rotary_pct` of each head (NeoX halves, the rest
//! passes through), a GELU MLP with biases, an untied output head, and attention and MLP either
//! side by side on the same input (`use_parallel_residual`, as Pythia) or one after the other.

use super::act::{Act, Vector};
use super::rope::Rope;
use super::weights::{load_embedding, load_linear, load_vector};
use super::{logits_to_host, logits_tensor, AttentionShape, CausalLm, HeadSubset, KvCache, Linear, LogitRows, Matrix, ModelConfig, RopeStyle, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::{Device, Tensor};

/// Which GELU the MLP applies (HF `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Gelu {
    /// x·Φ(x) with the exact error function (`gelu`, what Pythia uses).
    Erf,
    /// The tanh approximation (`gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`).
    Tanh,
}

impl Gelu {
    /// The HF `hidden_act` name, or `None` for an activation this family does not have.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Gelu::Erf),
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Some(Gelu::Tanh),
            _ => None,
        }
    }

    fn apply(self, x: Act) -> Act {
        match self {
            Gelu::Erf => x.gelu(),
            Gelu::Tanh => x.gelu_tanh(),
        }
    }
}

/// Row order of the fused QKV projection's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QkvLayout {
    /// Head by head, each head's [q, k, v] together (HF checkpoints).
    PerHead,
    /// All queries, then all keys, then all values (GGUF: llama.cpp's converter regroups the rows).
    Grouped,
}

/// GPT-NeoX hyperparameters: the shared ones plus the residual form, the activation and the QKV
/// row order of the weights at hand.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GptNeoxConfig {
    #[serde(flatten)]
    pub base: ModelConfig,
    pub parallel_residual: bool,
    pub activation: Gelu,
    pub qkv_layout: QkvLayout,
}

impl GptNeoxConfig {
    /// From llama.cpp's `gptneox` metadata. GGUF records no activation: Pythia's exact GELU is
    /// assumed (llama.cpp itself evaluates the tanh approximation), and no rope base, unless
    /// `gptneox.rope.freq_base` is present: 10000, as llama.cpp and every Pythia.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch = gguf.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |k: &str, problem: String| Error::Metadata { path: gguf.path().into(), key: key(k), problem };
        let n_heads = gguf.get_u64(&key("attention.head_count"))? as usize;
        let hidden = gguf.get_u64(&key("embedding_length"))? as usize;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(bad("attention.head_count", format!("{n_heads} heads do not divide a width of {hidden}")));
        }
        let head_dim = hidden / n_heads;
        if let Some(kv) = gguf.get(&key("attention.head_count_kv")).and_then(|v| v.as_u64()) {
            if kv as usize != n_heads {
                return Err(bad("attention.head_count_kv", format!("GPT-NeoX has no grouped-query attention ({kv} KV heads for {n_heads})")));
            }
        }
        if let Some(kind) = gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()).filter(|k| *k != "none") {
            return Err(bad("rope.scaling.type", format!("rope scaling `{kind}` is not supported")));
        }
        let vocab_size = match gguf.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => gguf
                .tensor_info("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| Error::MissingTensor { path: gguf.path().into(), tensor: "token_embd.weight".into() })?,
        };
        let parallel_residual = match gguf.get(&key("use_parallel_residual")) {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| bad("use_parallel_residual", "not a boolean".into()))?,
        };
        let base = ModelConfig {
            architecture: arch.to_string(),
            name: gguf.get("general.name").and_then(|v| v.as_str()).unwrap_or(arch).to_string(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: gguf.get_u64(&key("feed_forward_length"))? as usize,
            n_layers: gguf.get_u64(&key("block_count"))? as usize,
            n_heads,
            n_kv_heads: n_heads,
            head_dim,
            rope_dims: gguf.get(&key("rope.dimension_count")).and_then(|v| v.as_u64()).map_or(head_dim, |v| v as usize),
            rope_theta: gguf.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            rope_style: RopeStyle::Neox,
            norm_eps: gguf.get_f64(&key("attention.layer_norm_epsilon"))?,
            context_length: gguf.get_u64(&key("context_length"))? as usize,
            qkv_bias: gguf.tensor_info("blk.0.attn_qkv.bias").is_some(),
            tied_embeddings: false,
        };
        let cfg = GptNeoxConfig { base, parallel_residual, activation: Gelu::Erf, qkv_layout: QkvLayout::Grouped };
        cfg.base.check(gguf.path())?;
        Ok(cfg)
    }
}

pub struct GptNeox {
    cfg: GptNeoxConfig,
    embed: Matrix,
    blocks: Vec<Block>,
    final_norm: (Vector, Vector),
    output: Linear,
    rope: Rope,
    device: Device,
    /// Activations and cache in host memory (CPU devices), else Burn tensors of a float type on `device`.
    placement: super::Placement,
}

struct Block {
    attn_norm: (Vector, Vector),
    qkv: Linear,
    o: Linear,
    mlp_norm: (Vector, Vector),
    up: Linear,
    down: Linear,
}

impl GptNeox {
    pub fn from_gguf(gguf: &Gguf, device: &Device) -> Result<Self> {
        Self::load(GptNeoxConfig::from_gguf(gguf)?, gguf, device)
    }

    /// Builds the model from a config and a weight source using GGUF tensor names.
    pub fn load(cfg: GptNeoxConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        let c = &cfg.base;
        c.check(src.origin())?;
        if c.n_kv_heads != c.n_heads || c.head_dim * c.n_heads != c.hidden_size {
            return Err(Error::Metadata {
                path: src.origin().into(),
                key: "hyperparameters".into(),
                problem: format!("GPT-NeoX needs {} heads × {} = width {}", c.n_heads, c.head_dim, c.hidden_size),
            });
        }
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let linear = |name: &str, out: usize, inp: usize, bias: bool| load_linear(src, name, out, inp, bias, device);
        let norm = |name: &str| -> Result<(Vector, Vector)> {
            Ok((load_vector(src, &format!("{name}.weight"), d, device)?, load_vector(src, &format!("{name}.bias"), d, device)?))
        };
        let blocks = (0..c.n_layers)
            .map(|i| {
                let p = |t: &str| format!("blk.{i}.{t}");
                Ok(Block {
                    attn_norm: norm(&p("attn_norm"))?,
                    qkv: linear(&p("attn_qkv"), 3 * d, d, c.qkv_bias)?,
                    o: linear(&p("attn_output"), d, d, c.qkv_bias)?,
                    mlp_norm: norm(&p("ffn_norm"))?,
                    up: linear(&p("ffn_up"), f, d, true)?,
                    down: linear(&p("ffn_down"), d, f, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GptNeox {
            embed: load_embedding(src, "token_embd.weight", c.vocab_size, d, device, false)?,
            final_norm: norm("output_norm")?,
            output: linear("output", c.vocab_size, d, false)?,
            rope: Rope::new(c, c.rope_theta, c.context_length, device),
            blocks,
            device: device.clone(),
            placement: super::Placement::of(device),
            cfg,
        })
    }

    pub fn family_config(&self) -> &GptNeoxConfig {
        &self.cfg
    }
}

impl Block {
    fn attention(&self, x: &Act, layer: usize, cache: &mut KvCache, positions: std::ops::Range<usize>, cfg: &GptNeoxConfig, rope: &Rope) -> Act {
        let (nh, hd) = (cfg.base.n_heads, cfg.base.head_dim);
        let qkv = self.qkv.forward(x);
        let part = |i: usize| match cfg.qkv_layout {
            QkvLayout::Grouped => qkv.columns(i * nh * hd..(i + 1) * nh * hd),
            QkvLayout::PerHead => per_head_part(&qkv, nh, hd, i),
        };
        let q = rope.apply(part(0), positions.clone());
        let k = rope.apply(part(1), positions.clone());
        let shape = AttentionShape { heads: nh, kv_heads: nh, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), window: None };
        self.o.forward(&cache.attend(layer, q, k, part(2), positions, &shape))
    }

    fn mlp(&self, x: &Act, activation: Gelu) -> Act {
        self.down.forward(&activation.apply(self.up.forward(x)))
    }
}

/// Part `i` (0 = q, 1 = k, 2 = v) of fused projections whose columns are grouped per head
/// ([q, k, v] of head 0, then head 1, …): [n, heads·hd] with the heads in order.
fn per_head_part(qkv: &Act, heads: usize, hd: usize, i: usize) -> Act {
    match qkv {
        Act::Host { data, cols } => {
            let values = data
                .chunks_exact(*cols)
                .flat_map(|row| (0..heads).flat_map(move |h| &row[(3 * h + i) * hd..(3 * h + i + 1) * hd]))
                .copied()
                .collect();
            Act::host(values, heads * hd)
        }
        Act::Device(t) => {
            let n = t.dims()[0];
            let t = t.clone().reshape([n, heads, 3 * hd]).slice([0..n, 0..heads, i * hd..(i + 1) * hd]);
            Act::Device(t.reshape([n, heads * hd]))
        }
    }
}

fn norm(x: Act, (weight, bias): &(Vector, Vector), eps: f64) -> Act {
    x.layer_norm(weight, bias, eps)
}

impl GptNeox {
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
        let eps = c.norm_eps;
        let mut x = self.embed.gather_rows(tokens);
        for (i, block) in self.blocks.iter().take(cache.n_layers()).enumerate() {
            let attn = block.attention(&norm(x.clone(), &block.attn_norm, eps), i, cache, positions.clone(), &self.cfg, &self.rope);
            // The additions in transformers' order (mlp + attn + x; attn + x, then mlp + that).
            x = if self.cfg.parallel_residual {
                let mlp = block.mlp(&norm(x.clone(), &block.mlp_norm, eps), self.cfg.activation);
                mlp.add(&attn).add(&x)
            } else {
                let x = attn.add(&x);
                block.mlp(&norm(x.clone(), &block.mlp_norm, eps), self.cfg.activation).add(&x)
            };
        }
        cache.commit(positions.end);
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => x.last_row(),
        };
        Ok(norm(x, &self.final_norm, eps))
    }
}

impl CausalLm for GptNeox {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        logits_to_host(self.output.forward(&self.hidden(tokens, cache, rows)?))
    }

    fn forward_tensor(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Tensor<2>> {
        logits_tensor(self.output.forward(&self.hidden(tokens, cache, rows)?))
    }

    fn head_subset(&self, ids: &[u32]) -> Result<HeadSubset> {
        self.output.head_subset(ids, self.cfg.base.vocab_size)
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
