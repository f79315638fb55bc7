//! The Llama family: Llama 2/3, TinyLlama, SmolLM2, and Qwen2/Qwen2.5 (the same network with
//! biases on the Q/K/V projections and NeoX rotary). Pre-norm decoder blocks with RMSNorm,
//! rotary position embeddings, grouped-query attention and a SwiGLU MLP.

use super::weights::{load, load_matrix, load_matrix_opt};
use super::{logits_to_host, rms_norm, CausalLm, KvCache, Linear, LogitRows, Matrix, ModelConfig, Rope, RopeStyle, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

pub struct Llama {
    cfg: ModelConfig,
    embed: Matrix,
    blocks: Vec<Block>,
    final_norm: Tensor<1>,
    /// `None` when the LM head is tied to the embedding matrix.
    output: Option<Linear>,
    rope: Rope,
    device: Device,
}

struct Block {
    attn_norm: Tensor<1>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor<1>,
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
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
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
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: load_matrix(src, &format!("{name}.weight"), out, inp, device)?,
                bias: if bias { Some(load(src, &format!("{name}.bias"), [out], device)?) } else { None },
            })
        };
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let p = |t: &str| format!("blk.{i}.{t}");
                Ok(Block {
                    attn_norm: load(src, &p("attn_norm.weight"), [d], device)?,
                    q: linear(&p("attn_q"), q_out, d, cfg.qkv_bias)?,
                    k: linear(&p("attn_k"), kv_out, d, cfg.qkv_bias)?,
                    v: linear(&p("attn_v"), kv_out, d, cfg.qkv_bias)?,
                    o: linear(&p("attn_output"), d, q_out, false)?,
                    mlp_norm: load(src, &p("ffn_norm.weight"), [d], device)?,
                    gate: linear(&p("ffn_gate"), f, d, false)?,
                    up: linear(&p("ffn_up"), f, d, false)?,
                    down: linear(&p("ffn_down"), d, f, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = load_matrix_opt(src, "output.weight", cfg.vocab_size, d, device)?.map(|weight| Linear { weight, bias: None });
        let rope = Rope::new(&cfg, cfg.context_length, device);
        let tied_embeddings = output.is_none();
        Ok(Llama {
            embed: load_matrix(src, "token_embd.weight", cfg.vocab_size, d, device)?,
            final_norm: load(src, "output_norm.weight", [d], device)?,
            output,
            blocks,
            rope,
            cfg: ModelConfig { tied_embeddings, ..cfg },
            device: device.clone(),
        })
    }
}

impl Block {
    fn attention(&self, x: Tensor<3>, layer: usize, cache: &mut KvCache, ctx: &Step, cfg: &ModelConfig, rope: &Rope) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let heads = |t: Tensor<3>, h: usize| t.reshape([b, n, h, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q.forward(x.clone()), nh), ctx.positions.clone());
        let k = rope.apply(heads(self.k.forward(x.clone()), nkv), ctx.positions.clone());
        let v = heads(self.v.forward(x), nkv);
        let (keys, values) = cache.append(layer, ctx.positions.clone(), k, v);
        let scale = 1.0 / (hd as f64).sqrt();
        if ctx.host_kernels {
            let host = |t: Tensor<4>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 activations");
            let len = ctx.positions.end;
            let out = super::kernels::causal_attention(
                &host(q), &host(keys), &host(values), nh, nkv, n, len, ctx.positions.start, hd, scale as f32, None,
            );
            let out = Tensor::<3>::from_data(TensorData::new(out, [b, n, nh * hd]), &ctx.device);
            return self.o.forward(out);
        }
        // Grouped-query attention without copying K/V: the query heads that share a KV head are
        // stacked along the row axis, so each KV head is one matmul.
        let group = nh / nkv;
        let q = q.reshape([b, nkv, group * n, hd]);
        let scores = q.matmul(keys.swap_dims(2, 3)).mul_scalar(scale);
        let scores = match &ctx.mask {
            Some(mask) => scores + mask.clone(),
            None => scores,
        };
        let out = softmax(scores, 3).matmul(values);
        let out = out.reshape([b, nh, n, hd]).swap_dims(1, 2).reshape([b, n, nh * hd]);
        self.o.forward(out)
    }

    fn mlp(&self, x: Tensor<3>) -> Tensor<3> {
        self.down.forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }
}

/// What every layer of one forward pass shares.
struct Step {
    positions: std::ops::Range<usize>,
    /// Additive causal mask over [group·n, positions.end]; `None` for a single token or host kernels.
    mask: Option<Tensor<4>>,
    /// CPU device: attention runs in the batch-invariant host kernel.
    host_kernels: bool,
    device: Device,
}

/// 0 where query row r (position start + r mod n) may see key j, −∞ elsewhere.
pub(super) fn causal_mask(n: usize, start: usize, group: usize, device: &Device) -> Option<Tensor<4>> {
    if n == 1 {
        return None;
    }
    let end = start + n;
    let mut m = vec![0f32; group * n * end];
    for r in 0..group * n {
        let visible = start + r % n + 1;
        m[r * end + visible..(r + 1) * end].fill(f32::NEG_INFINITY);
    }
    Some(Tensor::from_data(TensorData::new(m, [1, 1, group * n, end]), device))
}

impl CausalLm for Llama {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        let cfg = &self.cfg;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let positions = cache.reserve(tokens.len())?;
        let (n, d) = (tokens.len(), cfg.hidden_size);
        let mut x = self.embed.gather_rows(tokens).reshape([1, n, d]);
        let host_kernels = super::uses_host_kernels(&self.device);
        let step = Step {
            mask: if host_kernels { None } else { causal_mask(n, positions.start, cfg.n_heads / cfg.n_kv_heads, &self.device) },
            positions: positions.clone(),
            host_kernels,
            device: self.device.clone(),
        };
        // A cache with fewer layers runs only those first blocks (a layer-skip draft).
        for (i, block) in self.blocks.iter().take(cache.n_layers()).enumerate() {
            let h = block.attention(rms_norm(x.clone(), &block.attn_norm, cfg.norm_eps), i, cache, &step, cfg, &self.rope);
            x = x + h;
            let h = block.mlp(rms_norm(x.clone(), &block.mlp_norm, cfg.norm_eps));
            x = x + h;
        }
        cache.commit(positions.end);
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => x.slice([0..1, n - 1..n, 0..d]),
        };
        let x = rms_norm(x, &self.final_norm, cfg.norm_eps);
        let m = x.dims()[1];
        let logits = match &self.output {
            Some(head) => head.forward(x).reshape([m, cfg.vocab_size]),
            None => self.embed.matmul_t(x.reshape([m, d])),
        };
        logits_to_host(logits)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_partial_cache(capacity, self.cfg.n_layers)
    }

    fn new_partial_cache(&self, capacity: usize, layers: usize) -> Result<KvCache> {
        if capacity > self.cfg.context_length {
            return Err(Error::ContextOverflow { needed: capacity, capacity: self.cfg.context_length });
        }
        if layers == 0 || layers > self.cfg.n_layers {
            return Err(Error::InvalidArgument(format!("{layers} layers requested of a {}-layer model", self.cfg.n_layers)));
        }
        Ok(KvCache::new(layers, self.cfg.n_kv_heads, self.cfg.head_dim, capacity, &self.device))
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
