//! Causal language models, written once against Burn's runtime `Device` (no backend type
//! parameter: the binary picks flex, ndarray or wgpu; the model never asks which).
//!
//! Shared pieces live here: the [`CausalLm`] trait, the [`KvCache`] (preallocated, truncatable),
//! rotary embeddings, norms, activations and attention. Each family has its own file.

mod gemma3;
mod gpt_neox;
pub mod kernels;
mod llama;
pub mod q8;
pub mod quantized;
mod weights;

pub use gemma3::{Gemma3, Gemma3Config};
pub use gpt_neox::{Gelu, GptNeox, GptNeoxConfig, QkvLayout};
pub use llama::Llama;
pub use weights::WeightSource;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::{Device, Tensor, TensorData};
use std::ops::Range;

/// Which positions of a forward pass need logits. Prefill needs only the last row; verification
/// of k drafted tokens needs all k+1. Skipping rows skips their share of the LM head, the
/// largest single matmul of a small model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    All,
    Last,
}

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    /// Runs `tokens` at positions `cache.len()..cache.len() + tokens.len()`, appends their keys and
    /// values to `cache`, and returns logits for the requested rows.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits>;

    /// An empty cache that holds `capacity` positions.
    fn new_cache(&self, capacity: usize) -> Result<KvCache>;

    /// A cache for only the first `layers` blocks: `forward` with it runs those blocks, then the
    /// final norm and LM head — the model's own early-exit draft (see [`LayerSkip`]). Models that
    /// cannot exit early say so.
    fn new_partial_cache(&self, _capacity: usize, layers: usize) -> Result<KvCache> {
        Err(Error::InvalidArgument(format!("this model cannot run only its first {layers} layers")))
    }

    fn config(&self) -> &ModelConfig;
}

/// Self-speculative drafting: the target's first `layers` blocks plus its final norm and LM head,
/// sharing every weight with the target (no extra memory but its own, smaller KV cache).
pub struct LayerSkip<'m> {
    model: &'m dyn CausalLm,
    cfg: ModelConfig,
}

impl<'m> LayerSkip<'m> {
    pub fn new(model: &'m dyn CausalLm, layers: usize) -> Result<Self> {
        let full = model.config();
        if layers == 0 || layers > full.n_layers {
            return Err(Error::InvalidArgument(format!("a layer-skip draft needs 1..={} layers, got {layers}", full.n_layers)));
        }
        Ok(LayerSkip { model, cfg: ModelConfig { n_layers: layers, name: format!("{} (first {layers} layers)", full.name), ..full.clone() } })
    }
}

impl CausalLm for LayerSkip<'_> {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> Result<Logits> {
        self.model.forward(tokens, cache, rows)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.model.new_partial_cache(capacity, self.cfg.n_layers)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}

/// How query/key pairs are rotated. GGUF "normal" rotates adjacent pairs (x[2i], x[2i+1]); llama.cpp
/// uses it for `llama` after the converter permuted Q/K rows. "NeoX" rotates halves
/// (x[i], x[i + d/2]), as transformers does for every architecture and llama.cpp for qwen2/gemma3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RopeStyle {
    Normal,
    Neox,
}

/// Architecture-independent description of a model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    /// `llama`, `qwen2`, …
    pub architecture: String,
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that are rotated (the rest pass through).
    pub rope_dims: usize,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub norm_eps: f64,
    pub context_length: usize,
    pub qkv_bias: bool,
    pub tied_embeddings: bool,
}

impl ModelConfig {
    pub(crate) fn check(&self, path: &std::path::Path) -> Result<()> {
        let bad = |problem: String| Error::Metadata { path: path.into(), key: "hyperparameters".into(), problem };
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return Err(bad(format!("{} heads cannot be grouped over {} KV heads", self.n_heads, self.n_kv_heads)));
        }
        if self.head_dim == 0 || self.rope_dims > self.head_dim || self.rope_dims % 2 != 0 {
            return Err(bad(format!("rope dims {} invalid for head dim {}", self.rope_dims, self.head_dim)));
        }
        if self.n_layers == 0 || self.vocab_size == 0 || self.context_length == 0 {
            return Err(bad("zero layers, vocabulary or context".into()));
        }
        Ok(())
    }
}

/// Per-layer keys and values for one sequence, preallocated to `capacity` positions.
///
/// Writes go through `slice_assign` into the same buffers (in place when the tensor is uniquely
/// owned), and `truncate` only moves the length: rolling back rejected draft tokens is free.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
}

struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize, device: &Device) -> Self {
        let layers = (0..n_layers)
            .map(|_| LayerCache {
                k: Some(Tensor::zeros([1, n_kv_heads, capacity, head_dim], device)),
                v: Some(Tensor::zeros([1, n_kv_heads, capacity, head_dim], device)),
            })
            .collect();
        KvCache { layers, len: 0, capacity }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layers this cache holds (a model runs that many of its blocks with it).
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forget everything after `len` (no-op when `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Fails without touching the cache when `n` more positions do not fit.
    pub fn reserve(&self, n: usize) -> Result<Range<usize>> {
        let end = self.len + n;
        if end > self.capacity {
            return Err(Error::ContextOverflow { needed: end, capacity: self.capacity });
        }
        Ok(self.len..end)
    }

    /// Marks `len` positions as filled. Models call this after writing every layer for the
    /// positions [`reserve`](Self::reserve) handed out; stateless toy models call it alone.
    pub fn commit(&mut self, len: usize) {
        assert!(len <= self.capacity, "commit past the reserved capacity");
        self.len = len;
    }

    /// Writes this layer's new keys/values (shape [1, kv_heads, n, head_dim]) at `positions` and
    /// returns views of all keys/values up to `positions.end`.
    fn append(&mut self, layer: usize, positions: Range<usize>, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let end = positions.end;
        let cache = &mut self.layers[layer];
        let write = |slot: &mut Option<Tensor<4>>, new: Tensor<4>| {
            let [_, h, _, d] = new.dims();
            let full = slot.take().expect("cache slot is always refilled");
            let full = full.slice_assign([0..1, 0..h, positions.clone(), 0..d], new);
            let view = full.clone().slice([0..1, 0..h, 0..end, 0..d]);
            *slot = Some(full);
            view
        };
        (write(&mut cache.k, k), write(&mut cache.v, v))
    }

}

/// Precomputed rotary tables for positions `0..max_positions`.
struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    dims: usize,
    style: RopeStyle,
}

impl Rope {
    fn new(cfg: &ModelConfig, max_positions: usize, device: &Device) -> Self {
        let half = cfg.rope_dims / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        let inv_freq: Vec<f64> =
            (0..half).map(|i| cfg.rope_theta.powf(-((2 * i) as f64) / cfg.rope_dims as f64)).collect();
        for pos in 0..max_positions {
            for &f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = [max_positions, half];
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            dims: cfg.rope_dims,
            style: cfg.rope_style,
        }
    }

    /// Rotates x: [1, heads, n, head_dim] whose rows sit at `positions`.
    fn apply(&self, x: Tensor<4>, positions: Range<usize>) -> Tensor<4> {
        let [b, h, n, d] = x.dims();
        let half = self.dims / 2;
        let cos = self.cos.clone().slice([positions.clone(), 0..half]);
        let sin = self.sin.clone().slice([positions, 0..half]);
        let (rot, pass) = if self.dims < d {
            (x.clone().slice([0..b, 0..h, 0..n, 0..self.dims]), Some(x.slice([0..b, 0..h, 0..n, self.dims..d])))
        } else {
            (x, None)
        };
        let rotated = match self.style {
            RopeStyle::Neox => {
                let cos = cos.reshape([1, 1, n, half]);
                let sin = sin.reshape([1, 1, n, half]);
                let x1 = rot.clone().slice([0..b, 0..h, 0..n, 0..half]);
                let x2 = rot.slice([0..b, 0..h, 0..n, half..2 * half]);
                Tensor::cat(
                    vec![x1.clone() * cos.clone() - x2.clone() * sin.clone(), x2 * cos + x1 * sin],
                    3,
                )
            }
            RopeStyle::Normal => {
                let pairs: Tensor<5> = rot.reshape([b, h, n, half, 2]);
                let cos = cos.reshape([1, 1, n, half, 1]);
                let sin = sin.reshape([1, 1, n, half, 1]);
                let x1 = pairs.clone().slice([0..b, 0..h, 0..n, 0..half, 0..1]);
                let x2 = pairs.slice([0..b, 0..h, 0..n, 0..half, 1..2]);
                let out = Tensor::cat(
                    vec![x1.clone() * cos.clone() - x2.clone() * sin.clone(), x2 * cos + x1 * sin],
                    4,
                );
                out.reshape([b, h, n, 2 * half])
            }
        };
        match pass {
            Some(pass) => Tensor::cat(vec![rotated, pass], 3),
            None => rotated,
        }
    }
}

/// RMSNorm over the last axis: x / sqrt(mean(x²) + eps) * weight.
fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let d = weight.dims()[0];
    let scale = (x.clone() * x.clone()).mean_dim(2).add_scalar(eps).sqrt().recip();
    x * scale * weight.clone().reshape([1, 1, d])
}

/// LayerNorm over the last axis: (x − mean) / sqrt(var + eps) · weight + bias, with the biased
/// variance (as torch).
fn layer_norm(x: Tensor<3>, weight: &Tensor<1>, bias: &Tensor<1>, eps: f64) -> Tensor<3> {
    let d = weight.dims()[0];
    let centered = x.clone() - x.mean_dim(2);
    let var = (centered.clone() * centered.clone()).mean_dim(2);
    centered * var.add_scalar(eps).sqrt().recip() * weight.clone().reshape([1, 1, d]) + bias.clone().reshape([1, 1, d])
}

/// GELU with the tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as torch's
/// `gelu(approximate="tanh")` (HF `gelu_pytorch_tanh`, `gelu_new`). The cube is two products, not
/// `powf`, so it is exact for negative x too.
fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044715)).mul_scalar(SQRT_2_OVER_PI);
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// Attention for the layers of one forward pass over new positions `positions`: the
/// batch-invariant host kernel on CPU devices, Burn ops with additive masks elsewhere (one mask per
/// distinct sliding window, built once per pass).
struct AttentionStep {
    positions: Range<usize>,
    heads: usize,
    kv_heads: usize,
    host: bool,
    masks: Vec<(Option<usize>, Option<Tensor<4>>)>,
    device: Device,
}

impl AttentionStep {
    /// `windows`: the sliding windows the layers will ask for (`None`: causal over everything).
    fn new(positions: Range<usize>, heads: usize, kv_heads: usize, windows: &[Option<usize>], host: bool, device: &Device) -> Self {
        let mut masks: Vec<(Option<usize>, Option<Tensor<4>>)> = Vec::new();
        if !host {
            for &w in windows {
                if !masks.iter().any(|(have, _)| *have == w) {
                    masks.push((w, attention_mask(positions.clone(), heads / kv_heads, w, device)));
                }
            }
        }
        AttentionStep { positions, heads, kv_heads, host, masks, device: device.clone() }
    }

    /// softmax(q·kᵀ·scale)·v for q: [1, heads, n, hd] at `positions` and keys/values
    /// [1, kv_heads, positions.end, hd]; query i sees keys ≤ its position and, with a `window`,
    /// only the last `window` of them. Returns [1, n, heads·hd].
    fn attend(&self, q: Tensor<4>, keys: Tensor<4>, values: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<3> {
        let [b, nh, n, hd] = q.dims();
        let nkv = self.kv_heads;
        if self.host {
            let host = |t: Tensor<4>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 activations");
            let (start, len) = (self.positions.start, self.positions.end);
            let out = kernels::causal_attention(&host(q), &host(keys), &host(values), nh, nkv, n, len, start, hd, scale as f32, window);
            return Tensor::from_data(TensorData::new(out, [b, n, nh * hd]), &self.device);
        }
        // Grouped-query attention without copying K/V: the query heads sharing a KV head are
        // stacked along the row axis, so each KV head is one matmul.
        let group = self.heads / nkv;
        let scores = q.reshape([b, nkv, group * n, hd]).matmul(keys.swap_dims(2, 3)).mul_scalar(scale);
        let mask = self.masks.iter().find(|(w, _)| *w == window).expect("mask built for every window asked for");
        let scores = match &mask.1 {
            Some(mask) => scores + mask.clone(),
            None => scores,
        };
        let out = burn::tensor::activation::softmax(scores, 3).matmul(values);
        out.reshape([b, nh, n, hd]).swap_dims(1, 2).reshape([b, n, nh * hd])
    }
}

/// Additive mask over [group·n, positions.end]: 0 where query row r (position start + r mod n) may
/// see key j (j ≤ its position and, with a window, j > position − window), −∞ elsewhere; `None`
/// when every key is visible (one token, no window in effect).
fn attention_mask(positions: Range<usize>, group: usize, window: Option<usize>, device: &Device) -> Option<Tensor<4>> {
    let (start, end) = (positions.start, positions.end);
    let n = end - start;
    let first = |p: usize| window.map_or(0, |w| (p + 1).saturating_sub(w));
    if n == 1 && first(start) == 0 {
        return None;
    }
    let mut m = vec![f32::NEG_INFINITY; group * n * end];
    for r in 0..group * n {
        let p = start + r % n;
        m[r * end + first(p)..r * end + p + 1].fill(0.0);
    }
    Some(Tensor::from_data(TensorData::new(m, [1, 1, group * n, end]), device))
}

/// A weight matrix [out, in] (GGUF/PyTorch layout). On CPU devices it lives in host memory and is
/// multiplied by the batch-invariant kernels of [`kernels`] — in its GGUF quantization when it has
/// one ([`quantized`]); elsewhere it is a Burn tensor.
enum Matrix {
    Device(Tensor<2>),
    Host { data: Vec<f32>, out: usize, inp: usize, device: Device },
    Quant { w: quantized::QuantMatrix, device: Device },
}

/// A weight matrix as read from its source, before it is placed on a device.
pub enum MatrixData {
    F32(Vec<f32>),
    Packed(quantized::QuantMatrix),
}

/// Whether dense layers use the host kernels: true for Burn's CPU backends (flex, ndarray).
fn uses_host_kernels(device: &Device) -> bool {
    // Burn 0.22 exposes the backend only through the dispatch enum's Debug form.
    let name = format!("{device:?}");
    name.starts_with("Device<Flex") || name.starts_with("Device<NdArray")
}

impl Matrix {
    fn new(data: MatrixData, out: usize, inp: usize, device: &Device) -> Self {
        match (data, uses_host_kernels(device)) {
            (MatrixData::Packed(w), true) => Matrix::Quant { w, device: device.clone() },
            (MatrixData::F32(values), true) => Matrix::Host { data: values, out, inp, device: device.clone() },
            (data, false) => {
                let values = match data {
                    MatrixData::F32(values) => values,
                    MatrixData::Packed(w) => w.to_f32(),
                };
                Matrix::Device(Tensor::from_data(TensorData::new(values, [out, inp]), device))
            }
        }
    }

    fn out(&self) -> usize {
        match self {
            Matrix::Device(w) => w.dims()[0],
            Matrix::Host { out, .. } => *out,
            Matrix::Quant { w, .. } => w.out(),
        }
    }

    /// x·Wᵀ for x: [rows, in].
    fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Matrix::Device(w) => x.matmul(w.clone().transpose()),
            Matrix::Host { data, out, inp, device } => {
                let rows = x.dims()[0];
                let xs = x.into_data().convert::<f32>().try_into_vec::<f32>().expect("activations are f32");
                let y = kernels::matmul_wt(&xs, data, rows, *inp, *out);
                Tensor::from_data(TensorData::new(y, [rows, *out]), device)
            }
            Matrix::Quant { w, device } => {
                let rows = x.dims()[0];
                let xs = x.into_data().convert::<f32>().try_into_vec::<f32>().expect("activations are f32");
                Tensor::from_data(TensorData::new(w.matmul_t(&xs, rows), [rows, w.out()]), device)
            }
        }
    }

    /// Rows `ids` of W (embedding lookup): [ids.len(), in].
    fn gather_rows(&self, ids: &[u32]) -> Tensor<2> {
        match self {
            Matrix::Device(w) => {
                let idx: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [ids.len()]), &w.device());
                w.clone().select(0, idx)
            }
            Matrix::Host { data, inp, device, .. } => {
                let rows: Vec<f32> = ids.iter().flat_map(|&t| &data[t as usize * inp..(t as usize + 1) * inp]).copied().collect();
                Tensor::from_data(TensorData::new(rows, [ids.len(), *inp]), device)
            }
            Matrix::Quant { w, device } => Tensor::from_data(TensorData::new(w.gather_rows(ids), [ids.len(), w.inp()]), device),
        }
    }
}

/// A dense projection y = x·Wᵀ (+ b).
struct Linear {
    weight: Matrix,
    bias: Option<Tensor<1>>,
}

impl Linear {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let out = self.weight.out();
        let y = self.weight.matmul_t(x.reshape([b * n, d]));
        let y = match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, out]),
            None => y,
        };
        y.reshape([b, n, out])
    }
}

/// A family's full configuration: the shared [`ModelConfig`] and what only that family has.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum FamilyConfig {
    Llama(ModelConfig),
    GptNeox(GptNeoxConfig),
    Gemma3(Gemma3Config),
}

impl FamilyConfig {
    pub fn base(&self) -> &ModelConfig {
        match self {
            FamilyConfig::Llama(c) => c,
            FamilyConfig::GptNeox(c) => &c.base,
            FamilyConfig::Gemma3(c) => &c.base,
        }
    }

    /// Hyperparameters from GGUF metadata, choosing the family from `general.architecture`.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        match gguf.architecture()? {
            "llama" | "qwen2" => Ok(FamilyConfig::Llama(Llama::config_from_gguf(gguf)?)),
            "gptneox" => Ok(FamilyConfig::GptNeox(GptNeoxConfig::from_gguf(gguf)?)),
            "gemma3" => Ok(FamilyConfig::Gemma3(Gemma3Config::from_gguf(gguf)?)),
            other => Err(Error::UnsupportedArchitecture {
                path: gguf.path().to_path_buf(),
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            }),
        }
    }

    /// Builds the family's model from `src`, whose tensors carry GGUF names.
    pub fn load(self, src: &dyn WeightSource, device: &Device) -> Result<Box<dyn CausalLm>> {
        Ok(match self {
            FamilyConfig::Llama(c) => Box::new(Llama::load(c, src, device)?),
            FamilyConfig::GptNeox(c) => Box::new(GptNeox::load(c, src, device)?),
            FamilyConfig::Gemma3(c) => Box::new(Gemma3::load(c, src, device)?),
        })
    }
}

/// Loads a model from an opened GGUF file, choosing the family from `general.architecture`.
pub fn load_gguf(gguf: &Gguf, device: &Device) -> Result<Box<dyn CausalLm>> {
    FamilyConfig::from_gguf(gguf)?.load(gguf, device)
}

/// Loads a model from a Hugging Face directory, choosing the family from `model_type`.
pub fn load_hf(dir: &crate::safetensors::HfModelDir, device: &Device) -> Result<Box<dyn CausalLm>> {
    dir.family_config()?.load(dir, device)
}

/// GGUF `general.architecture` values `load_gguf` accepts.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gptneox", "gemma3"];

/// Hugging Face `model_type` values `load_hf` accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "qwen2", "gpt_neox", "gemma3_text"];

/// Turns the last-axis logits of `rows` positions into host memory.
fn logits_to_host(logits: Tensor<2>) -> Result<Logits> {
    let [rows, vocab] = logits.dims();
    let data = logits
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::InvalidArgument(format!("reading logits back from the device: {e:?}")))?;
    Ok(Logits::new(data, rows, vocab))
}
