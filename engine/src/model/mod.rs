//! Causal language models, written once against Burn's runtime `Device` (no backend type
//! parameter: the binary picks flex, ndarray or wgpu; the model never asks which).
//!
//! Shared pieces live here: the [`CausalLm`] trait, weight matrices and dense layers; the
//! activations and their operations ([`act`]), the [`KvCache`] with attention ([`cache`]) and
//! rotary embeddings ([`rope`]) have their own files. Each family has its own file.

mod act;
mod cache;
mod gemma3;
mod gpt_neox;
mod llama;
mod lora;
mod lora_trained;
mod rope;
mod weights;

pub use crate::cpu::AttentionShape;
pub use cache::KvCache;
pub use gemma3::{Gemma3, Gemma3Config};
pub use gpt_neox::{Gelu, GptNeox, GptNeoxConfig, QkvLayout};
pub use llama::Llama;
pub use lora::{LoraAdapter, LowRankPair};
pub use lora_trained::{LoraSpec, LoraTraining, TrainedPair};
pub use weights::WeightSource;

use act::{Act, Vector};

use crate::cpu::{dense, QuantMatrix};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::sampling::Logits;
use burn::tensor::{DType, Device, Tensor, TensorData};

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

    /// [`forward`](Self::forward)'s logits as a tensor on the model's device, inside whatever
    /// autodiff graph the device records (training, `crate::align`). Models on host kernels
    /// have no such tensor.
    fn forward_tensor(&self, _tokens: &[u32], _cache: &mut KvCache, _rows: LogitRows) -> Result<Tensor<2>> {
        Err(Error::InvalidArgument("this model computes on host kernels: load it on a Burn device to get logits as a tensor".into()))
    }

    /// The LM head restricted to `ids` (a truncated vocabulary for drafting: only those rows of
    /// the output layer are computed), for [`forward_subset`](Self::forward_subset). The default
    /// keeps just the ids (the whole layer is computed and the ids picked from it); the families
    /// override it with the selected rows of their output layer.
    fn head_subset(&self, ids: &[u32]) -> Result<HeadSubset> {
        HeadSubset::ids_only(ids, self.config().vocab_size)
    }

    /// [`forward_subset`](Self::forward_subset) with `head`, or [`forward`](Self::forward) without.
    fn forward_head(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: Option<&HeadSubset>) -> Result<Logits> {
        match head {
            Some(head) => self.forward_subset(tokens, cache, rows, head),
            None => self.forward(tokens, cache, rows),
        }
    }

    /// [`forward`](Self::forward) with logits for `head`'s ids only, in its order.
    fn forward_subset(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: &HeadSubset) -> Result<Logits> {
        let full = self.forward(tokens, cache, rows)?;
        let data = (0..full.rows()).flat_map(|r| head.ids().iter().map(move |&id| (r, id))).map(|(r, id)| full.row(r)[id as usize]).collect();
        Ok(Logits::new(data, full.rows(), head.ids().len()))
    }
}

/// An LM head over a subset of the vocabulary: the rows of the output layer for `ids`, made
/// once (repacked like any matrix) and multiplied instead of the whole layer. Logits come in the
/// order of `ids`.
pub struct HeadSubset {
    ids: Vec<u32>,
    /// The selected rows, or none where the model computes its logits another way.
    head: Option<Linear>,
}

impl HeadSubset {
    /// The rows `ids` (distinct, below `vocab`) of the head `weight` (and `bias`).
    fn new(weight: &Matrix, bias: Option<&Vector>, ids: &[u32], vocab: usize) -> Result<Self> {
        let mut subset = Self::ids_only(ids, vocab)?;
        subset.head = Some(Linear { weight: weight.select_rows(ids)?, bias: bias.map(|b| b.select(ids)), low_rank: None });
        Ok(subset)
    }

    /// The ids alone (distinct, below `vocab`), for a model that picks them from its full logits.
    pub fn ids_only(ids: &[u32], vocab: usize) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("a vocabulary subset needs at least one id".into()));
        }
        let mut seen = vec![false; vocab];
        for &id in ids {
            match seen.get_mut(id as usize) {
                None => return Err(Error::InvalidArgument(format!("id {id} of the vocabulary subset is outside the vocabulary of {vocab}"))),
                Some(true) => return Err(Error::InvalidArgument(format!("id {id} appears twice in the vocabulary subset"))),
                Some(s) => *s = true,
            }
        }
        Ok(HeadSubset { ids: ids.to_vec(), head: None })
    }

    /// The token id of each logit, in order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Logits of the subset from the final hidden states `x`.
    fn logits(&self, x: &Act) -> Result<Logits> {
        match &self.head {
            Some(head) => logits_to_host(head.forward(x)),
            None => Err(Error::InvalidArgument("this vocabulary subset belongs to a model that computes its own logits".into())),
        }
    }
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

    fn head_subset(&self, ids: &[u32]) -> Result<HeadSubset> {
        self.model.head_subset(ids)
    }

    fn forward_subset(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: &HeadSubset) -> Result<Logits> {
        self.model.forward_subset(tokens, cache, rows, head)
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
    /// A KV cache for the first `layers` layers (all of them for the model itself, fewer for a
    /// layer-skip draft), refusing a capacity beyond the model's context length.
    pub(crate) fn cache(&self, capacity: usize, layers: usize, device: &Device, placement: Placement) -> Result<KvCache> {
        if capacity > self.context_length {
            return Err(Error::ContextOverflow { needed: capacity, capacity: self.context_length });
        }
        if layers == 0 || layers > self.n_layers {
            return Err(Error::InvalidArgument(format!("{layers} layers requested of a {}-layer model", self.n_layers)));
        }
        Ok(KvCache::placed(layers, self.n_kv_heads, self.head_dim, capacity, device, placement))
    }

    pub(crate) fn check(&self, path: &std::path::Path) -> Result<()> {
        let bad = |problem: String| Error::Metadata { path: path.into(), key: "hyperparameters".into(), problem };
        // Sizes come from the file: bound them before anything is sized from them (tables,
        // caches, products such as heads × head_dim that must not overflow).
        let widths = [("hidden size", self.hidden_size), ("intermediate size", self.intermediate_size), ("head dim", self.head_dim)];
        let counts = [("heads", self.n_heads), ("KV heads", self.n_kv_heads), ("layers", self.n_layers)];
        for (what, v) in widths.into_iter().chain(counts) {
            if v > MAX_WIDTH {
                return Err(bad(format!("{what} {v} exceeds the limit of {MAX_WIDTH}")));
            }
        }
        check_layer_count(self.n_layers, path)?;
        if self.n_heads * self.head_dim > MAX_WIDTH {
            return Err(bad(format!("{} heads × head dim {} exceed the limit of {MAX_WIDTH}", self.n_heads, self.head_dim)));
        }
        if self.vocab_size > MAX_VOCAB || self.context_length > MAX_CONTEXT {
            return Err(bad(format!(
                "vocabulary {} or context {} exceeds the limits ({MAX_VOCAB}, {MAX_CONTEXT})",
                self.vocab_size, self.context_length
            )));
        }
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

// Hyperparameter limits, far above any real model (widths ~2e4, 126 layers, vocabularies ~2.6e5,
// contexts ~1e7) and far below sizes whose products overflow or whose tables exhaust memory.
const MAX_WIDTH: usize = 1 << 20;
const MAX_LAYERS: usize = 1 << 12;
const MAX_VOCAB: usize = 1 << 24;
const MAX_CONTEXT: usize = 1 << 24;

/// A layer count read from `path`, bounded before per-layer tables are built from it.
pub(crate) fn check_layer_count(n_layers: usize, path: &std::path::Path) -> Result<()> {
    if n_layers > MAX_LAYERS {
        return Err(Error::Metadata {
            path: path.into(),
            key: "hyperparameters".into(),
            problem: format!("{n_layers} layers exceed the limit of {MAX_LAYERS}"),
        });
    }
    Ok(())
}

/// A weight matrix [out, in] (GGUF/PyTorch layout). On CPU devices it lives in host memory and is
/// multiplied by the batch-invariant kernels of [`crate::cpu`] — in its GGUF quantization when it
/// has one ([`QuantMatrix`]); on burn-wgpu a quantized matrix stays in its blocks on the device
/// ([`crate::gpu::BlockMatrix`]); elsewhere it is an f32 Burn tensor.
enum Matrix {
    Device(Tensor<2>),
    /// Blocks and the float type of the activations they are multiplied with (and looked up as).
    #[cfg(feature = "wgpu")]
    Blocks(crate::gpu::BlockMatrix, DeviceFloat),
    Host { data: Vec<f32>, out: usize, inp: usize },
    Quant { w: QuantMatrix },
}

/// A weight matrix as read from its source, before it is placed on a device.
pub enum MatrixData {
    F32(Vec<f32>),
    Packed(QuantMatrix),
}

/// Whether weights and activations live in host memory and run on the host kernels: true for
/// Burn's CPU backends (flex, ndarray), unless inside [`with_burn_ops`].
fn uses_host_kernels(device: &Device) -> bool {
    if BURN_OPS.with(std::cell::Cell::get) {
        return false;
    }
    // Burn 0.22 exposes the backend only through the dispatch enum's Debug form.
    let name = format!("{device:?}");
    name.starts_with("Device<Flex") || name.starts_with("Device<NdArray")
}

/// The float type of activations, KV cache and logits kept as Burn tensors on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceFloat {
    F32,
    /// Half the memory and bandwidth of f32 for the cache and activations; norms' statistics,
    /// attention's softmax and the block kernels' sums are still computed in f32.
    F16,
}

impl DeviceFloat {
    pub fn dtype(self) -> DType {
        match self {
            DeviceFloat::F32 => DType::F32,
            DeviceFloat::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceFloat::F32 => "f32",
            DeviceFloat::F16 => "f16",
        }
    }
}

/// Where a model keeps its activations and KV cache: host memory (CPU devices, host kernels) or
/// Burn tensors of a float type on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Host,
    Device(DeviceFloat),
}

impl Placement {
    /// Where a model loaded now on `device` keeps its activations: host memory on CPU devices;
    /// on others the float type asked for by a [`with_device_float`] scope on this thread, else
    /// by [`set_device_float`] for the process, else by `SPECDEC_DEVICE_FLOAT` (`f32`, `f16` or
    /// `auto`); automatically (and whenever f16 is asked of a device that cannot compute in it)
    /// f16 on devices that run the block kernels and compute in f16 (the adapter's shader-f16
    /// feature), else f32.
    pub fn of(device: &Device) -> Placement {
        if uses_host_kernels(device) {
            return Placement::Host;
        }
        let f16_capable = device.supports_dtype(DType::F16);
        match DEVICE_FLOAT.with(std::cell::Cell::get).or_else(process_device_float) {
            Some(DeviceFloat::F16) if f16_capable => Placement::Device(DeviceFloat::F16),
            Some(DeviceFloat::F32) => Placement::Device(DeviceFloat::F32),
            _ if f16_capable && runs_block_kernels(device) => Placement::Device(DeviceFloat::F16),
            _ => Placement::Device(DeviceFloat::F32),
        }
    }

    /// The float type on the device (None for host activations, which are f32).
    pub fn device_float(self) -> Option<DeviceFloat> {
        match self {
            Placement::Host => None,
            Placement::Device(float) => Some(float),
        }
    }

    /// The Burn dtype of device tensors (f32 for host placement, whose values never become tensors).
    fn dtype(self) -> DType {
        self.device_float().unwrap_or(DeviceFloat::F32).dtype()
    }
}

/// Whether the device runs the block kernels of [`crate::gpu`] (CubeCL devices: burn-wgpu).
fn runs_block_kernels(device: &Device) -> bool {
    cfg!(feature = "wgpu") && format!("{device:?}").starts_with("Device<Cube")
}

/// The matrix kept in its GGML blocks on a device that multiplies them in place, when it is one
/// and the format has a kernel; else the matrix back, to be expanded to f32.
#[cfg(feature = "wgpu")]
fn on_block_device(w: QuantMatrix, device: &Device) -> std::result::Result<Matrix, QuantMatrix> {
    let Some(format) = crate::gpu::BlockFormat::of(w.ggml_type()) else { return Err(w) };
    if !runs_block_kernels(device) || format.check_width(w.inp()).is_err() {
        return Err(w);
    }
    let float = Placement::of(device).device_float().unwrap_or(DeviceFloat::F32);
    match crate::gpu::BlockMatrix::new(format, w.blocks(), w.out(), w.inp(), device) {
        Ok(m) => Ok(Matrix::Blocks(m, float)),
        Err(_) => Err(w),
    }
}

thread_local! {
    static BURN_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static DEVICE_FLOAT: std::cell::Cell<Option<DeviceFloat>> = const { std::cell::Cell::new(None) };
}

/// The process-wide choice: 0 automatic, 1 f32, 2 f16; `u8::MAX` until read from the environment.
static PROCESS_FLOAT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

fn encode_float(float: Option<DeviceFloat>) -> u8 {
    match float {
        None => 0,
        Some(DeviceFloat::F32) => 1,
        Some(DeviceFloat::F16) => 2,
    }
}

/// Parses `f32`, `f16` or `auto` (None) as the CLI and `SPECDEC_DEVICE_FLOAT` spell them.
pub fn parse_device_float(name: &str) -> std::result::Result<Option<DeviceFloat>, String> {
    match name {
        "auto" | "" => Ok(None),
        "f32" => Ok(Some(DeviceFloat::F32)),
        "f16" => Ok(Some(DeviceFloat::F16)),
        other => Err(format!("device float must be \"auto\", \"f32\" or \"f16\", got {other:?}")),
    }
}

fn process_device_float() -> Option<DeviceFloat> {
    use std::sync::atomic::Ordering;
    if PROCESS_FLOAT.load(Ordering::Relaxed) == u8::MAX {
        let float = match std::env::var("SPECDEC_DEVICE_FLOAT") {
            Err(_) => None,
            Ok(v) => parse_device_float(&v).unwrap_or_else(|e| {
                eprintln!("warning: SPECDEC_DEVICE_FLOAT: {e}; choosing automatically");
                None
            }),
        };
        let _ = PROCESS_FLOAT.compare_exchange(u8::MAX, encode_float(float), Ordering::Relaxed, Ordering::Relaxed);
    }
    [None, Some(DeviceFloat::F32), Some(DeviceFloat::F16)][PROCESS_FLOAT.load(Ordering::Relaxed) as usize]
}

/// Sets the process-wide float type of device activations for models loaded afterwards (None:
/// automatic, see [`Placement::of`]).
pub fn set_device_float(float: Option<DeviceFloat>) {
    PROCESS_FLOAT.store(encode_float(float), std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` — a model load — with device activations of `float` instead of the process's or the
/// device's choice ([`Placement::of`]): f32 on an adapter that could compute in f16 (to compare
/// the two), or f16.
pub fn with_device_float<T>(float: DeviceFloat, f: impl FnOnce() -> T) -> T {
    let before = DEVICE_FLOAT.with(|d| d.replace(Some(float)));
    let out = f();
    DEVICE_FLOAT.with(|d| d.set(before));
    out
}

/// Runs `f` — typically a model load — with CPU devices treated like accelerators: the model it
/// builds keeps its weights, activations and cache as Burn tensors and computes with Burn ops, as
/// on wgpu. This exercises the GPU code path on a CPU (tests compare it with the host path).
pub fn with_burn_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = BURN_OPS.with(|b| b.replace(true));
    let out = f();
    BURN_OPS.with(|b| b.set(before));
    out
}

impl Matrix {
    fn new(data: MatrixData, out: usize, inp: usize, device: &Device) -> Self {
        match (data, uses_host_kernels(device)) {
            (MatrixData::Packed(w), true) => Matrix::Quant { w },
            (MatrixData::F32(values), true) => Matrix::Host { data: values, out, inp },
            (data, false) => {
                let values = match data {
                    MatrixData::F32(values) => values,
                    #[cfg(feature = "wgpu")]
                    MatrixData::Packed(w) => match on_block_device(w, device) {
                        Ok(m) => return m,
                        Err(w) => w.to_f32(),
                    },
                    #[cfg(not(feature = "wgpu"))]
                    MatrixData::Packed(w) => w.to_f32(),
                };
                Matrix::Device(Tensor::from_data(TensorData::new(values, [out, inp]), (device, Placement::of(device).dtype())))
            }
        }
    }

    /// Readies the matrix for products (repacks quantized host weights for the Q8 kernels).
    fn prepare(&self) {
        if let Matrix::Quant { w } = self {
            w.prepare();
        }
    }

    /// x·Wᵀ for x: [rows, in].
    fn matmul_t(&self, x: &Act) -> Act {
        match (self, x) {
            (Matrix::Device(w), Act::Device(x)) => Act::Device(x.clone().matmul(w.clone().transpose())),
            #[cfg(feature = "wgpu")]
            (Matrix::Blocks(w, _), Act::Device(x)) => Act::Device(w.matmul_t(x.clone())),
            (Matrix::Host { data, out, inp, .. }, Act::Host { data: xs, .. }) => {
                Act::host(dense::matmul_wt(xs, data, xs.len() / inp, *inp, *out), *out)
            }
            (Matrix::Quant { w, .. }, Act::Host { data: xs, .. }) => Act::host(w.matmul_t(xs, xs.len() / w.inp()), w.out()),
            _ => panic!("weights and activations live on different devices"),
        }
    }

    /// A matrix of the rows `ids` of this one (each below `out`), multiplied the same way.
    fn select_rows(&self, ids: &[u32]) -> Result<Matrix> {
        Ok(match self {
            Matrix::Device(w) => Matrix::Device(w.clone().select(0, index_tensor(ids, &w.device()))),
            #[cfg(feature = "wgpu")]
            Matrix::Blocks(w, float) => Matrix::Blocks(w.select_rows(ids).map_err(Error::InvalidArgument)?, *float),
            Matrix::Host { data, inp, .. } => Matrix::Host { data: host_rows(data, *inp, ids), out: ids.len(), inp: *inp },
            Matrix::Quant { w } => {
                let w = w.select_rows(ids).map_err(Error::InvalidArgument)?;
                w.prepare();
                Matrix::Quant { w }
            }
        })
    }

    /// Rows `ids` of W (embedding lookup): [ids.len(), in].
    fn gather_rows(&self, ids: &[u32]) -> Act {
        match self {
            Matrix::Device(w) => Act::Device(w.clone().select(0, index_tensor(ids, &w.device()))),
            #[cfg(feature = "wgpu")]
            Matrix::Blocks(w, float) => Act::Device(w.gather_rows(ids, float.dtype())),
            Matrix::Host { data, inp, .. } => Act::host(host_rows(data, *inp, ids), *inp),
            Matrix::Quant { w, .. } => Act::host(w.gather_rows(ids), w.inp()),
        }
    }
}

/// `ids` as a device index tensor, for `select` along a dimension.
fn index_tensor(ids: &[u32], device: &Device) -> Tensor<1, burn::tensor::Int> {
    let idx: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    Tensor::from_data(TensorData::new(idx, [ids.len()]), device)
}

/// The rows `ids` of a row-major host matrix with rows of `inp` values, in that order.
fn host_rows(data: &[f32], inp: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter().flat_map(|&t| &data[t as usize * inp..(t as usize + 1) * inp]).copied().collect()
}

/// A dense projection y = x·Wᵀ (+ b) (+ x·Aᵀ·Bᵀ, a LoRA update).
struct Linear {
    weight: Matrix,
    bias: Option<Vector>,
    low_rank: Option<LowRank>,
}

/// A low-rank update added beside the unchanged weight.
enum LowRank {
    /// From an adapter file: A [r, in] and B [out, r], B already scaled.
    Fixed { a: Matrix, b: Matrix },
    /// Being trained (`crate::align`): tracked tensors the trainer replaces after each step.
    Trained(std::sync::Arc<TrainedPair>),
}

impl Linear {
    /// The head over `ids` only.
    fn head_subset(&self, ids: &[u32], vocab: usize) -> Result<HeadSubset> {
        HeadSubset::new(&self.weight, self.bias.as_ref(), ids, vocab)
    }

    fn forward(&self, x: &Act) -> Act {
        let y = self.weight.matmul_t(x);
        let y = match &self.bias {
            Some(b) => y.add_bias(b),
            None => y,
        };
        match &self.low_rank {
            Some(LowRank::Fixed { a, b }) => y.add(&b.matmul_t(&a.matmul_t(x))),
            Some(LowRank::Trained(pair)) => y.add(&pair.apply(x)),
            None => y,
        }
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

    /// [`load`](Self::load) with `adapter`'s low-rank updates on its projections (none without);
    /// an adapter matrix that matches no projection of the model is an error.
    pub fn load_adapted(self, src: &dyn WeightSource, adapter: Option<&LoraAdapter>, device: &Device) -> Result<Box<dyn CausalLm>> {
        let Some(adapter) = adapter else { return self.load(src, device) };
        if let FamilyConfig::GptNeox(_) = self {
            return Err(Error::Adapter {
                path: adapter.weights_file().to_path_buf(),
                problem: "LoRA adapters for GPT-NeoX models are not supported (Llama, Qwen2 and Gemma3 are)".into(),
            });
        }
        let adapted = lora::Adapted::new(src, adapter, self.base());
        let model = self.load(&adapted, device)?;
        adapted.check_all_used()?;
        Ok(model)
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

/// Logits as a device tensor, for [`CausalLm::forward_tensor`].
fn logits_tensor(logits: Act) -> Result<Tensor<2>> {
    match logits {
        Act::Device(t) => Ok(t),
        Act::Host { .. } => Err(Error::InvalidArgument("this model computes on host kernels: load it on a Burn device to get logits as a tensor".into())),
    }
}

/// Logits of `rows` positions in host memory.
fn logits_to_host(logits: Act) -> Result<Logits> {
    let (rows, vocab) = (logits.rows(), logits.cols());
    let data = match logits {
        Act::Host { data, .. } => data,
        Act::Device(t) => t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::InvalidArgument(format!("reading logits back from the device: {e:?}")))?,
    };
    Ok(Logits::new(data, rows, vocab))
}
