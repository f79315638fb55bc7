//! LoRA adapters being trained: the low-rank pairs as tracked Burn tensors beside frozen base
//! weights, and their export in PEFT's format. The model families load them like any adapter
//! (through a [`WeightSource`] that carries them); the forward pass then records A and B in the
//! device's autodiff graph, and the trainer (`crate::align`) reads their gradients and replaces
//! them after each step.
//!
//! Pairs are kept in the row order of the loaded weights: for a Llama GGUF that is llama.cpp's
//! permuted order of Q and K, so B's rows are put back in transformers' order on export (the
//! inverse of what [`super::lora::Adapted`] does on loading).

use super::act::Act;
use super::lora::{unpermute_rows, MODULES};
use super::{CausalLm, FamilyConfig, ModelConfig, RopeStyle, WeightSource};
use crate::cpu::QuantMatrix;
use crate::error::{Error, Result};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// One trained update W + s·B·A of the weight `name`.
pub struct TrainedPair {
    /// GGUF weight name (`blk.3.attn_q.weight`).
    name: String,
    /// transformers module (`model.layers.3.self_attn.q_proj`), for the PEFT file.
    module: String,
    rank: usize,
    inp: usize,
    out: usize,
    scale: f32,
    /// Heads whose rows the loaded weight keeps permuted (Q/K of a Llama GGUF).
    permuted_heads: Option<usize>,
    /// A [rank, inp] and B [out, rank] (unscaled), as tracked leaves.
    tensors: RwLock<(Tensor<2>, Tensor<2>)>,
    device: Device,
}

impl TrainedPair {
    /// (out, in) of the weight it updates.
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Number of values in A and in B.
    pub fn sizes(&self) -> (usize, usize) {
        (self.rank * self.inp, self.out * self.rank)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// x·Aᵀ·Bᵀ·s for device activations.
    pub(super) fn apply(&self, x: &Act) -> Act {
        let (a, b) = self.tensors.read().expect("LoRA tensors poisoned").clone();
        match x {
            Act::Device(x) => Act::Device(x.clone().matmul(a.transpose()).matmul(b.transpose()).mul_scalar(self.scale)),
            Act::Host { .. } => panic!("a trained LoRA pair used with host activations"),
        }
    }

    /// A and B in host memory (row-major, in the loaded weights' row order).
    pub fn values(&self) -> (Vec<f32>, Vec<f32>) {
        let (a, b) = self.tensors.read().expect("LoRA tensors poisoned").clone();
        (host(a), host(b))
    }

    /// The gradients of the loss with respect to A and B (zero where the loss did not reach).
    pub fn gradients(&self, grads: &Gradients) -> (Vec<f32>, Vec<f32>) {
        let (a, b) = self.tensors.read().expect("LoRA tensors poisoned").clone();
        let g = |t: &Tensor<2>, n: usize| t.grad(grads).map(host).unwrap_or_else(|| vec![0.0; n]);
        let (na, nb) = self.sizes();
        (g(&a, na), g(&b, nb))
    }

    /// Replaces A and B with new tracked leaves holding these values.
    pub fn set(&self, a: Vec<f32>, b: Vec<f32>) {
        assert_eq!((a.len(), b.len()), self.sizes(), "LoRA parameter sizes");
        *self.tensors.write().expect("LoRA tensors poisoned") = leaves(a, b, self.rank, self.inp, self.out, &self.device);
    }
}

fn leaves(a: Vec<f32>, b: Vec<f32>, rank: usize, inp: usize, out: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    (
        Tensor::from_data(TensorData::new(a, [rank, inp]), device).require_grad(),
        Tensor::from_data(TensorData::new(b, [out, rank]), device).require_grad(),
    )
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 LoRA tensor")
}

/// What to train: PEFT's `r`, `lora_alpha` and `target_modules` (short names: `q_proj`, …).
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub modules: Vec<String>,
}

impl LoraSpec {
    /// The short module names this engine can adapt.
    pub fn known_modules() -> Vec<&'static str> {
        MODULES.iter().map(|(hf, _)| hf.rsplit('.').next().unwrap_or(hf)).collect()
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.rank == 0 || self.rank > 4096 {
            return bad(format!("LoRA rank {} is outside 1..=4096", self.rank));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!("lora_alpha {} is not a positive number", self.alpha));
        }
        if self.modules.is_empty() {
            return bad("no modules to adapt".into());
        }
        for m in &self.modules {
            if !Self::known_modules().contains(&m.as_str()) {
                return bad(format!("module `{m}` is none of {}", Self::known_modules().join(", ")));
            }
        }
        Ok(())
    }
}

/// The pairs of one adapter being trained on one model.
pub struct LoraTraining {
    spec: LoraSpec,
    pairs: Vec<Arc<TrainedPair>>,
}

impl LoraTraining {
    /// PEFT's initialization for every selected module of every layer: A uniform in ±1/√in (its
    /// Kaiming-uniform with a = √5), B zero — so the adapted model starts as the model itself.
    pub fn new(cfg: &ModelConfig, spec: LoraSpec, seed: u64, device: &Device) -> Result<Self> {
        spec.check()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q, kv) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let permuted = cfg.rope_style == RopeStyle::Normal;
        let mut pairs = Vec::new();
        for layer in 0..cfg.n_layers {
            for (hf, gguf) in MODULES {
                let short = hf.rsplit('.').next().unwrap_or(hf);
                if !spec.modules.iter().any(|m| m == short) {
                    continue;
                }
                let (out, inp, heads) = match *gguf {
                    "attn_q" => (q, d, permuted.then_some(cfg.n_heads)),
                    "attn_k" | "attn_v" => (kv, d, (permuted && *gguf == "attn_k").then_some(cfg.n_kv_heads)),
                    "attn_output" => (d, q, None),
                    "ffn_gate" | "ffn_up" => (f, d, None),
                    _ => (d, f, None),
                };
                let bound = 1.0 / (inp as f32).sqrt();
                let a = (0..spec.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let b = vec![0.0; out * spec.rank];
                let (ta, tb) = leaves(a, b, spec.rank, inp, out, device);
                pairs.push(Arc::new(TrainedPair {
                    name: format!("blk.{layer}.{gguf}.weight"),
                    module: format!("model.layers.{layer}.{hf}"),
                    rank: spec.rank,
                    inp,
                    out,
                    scale: (spec.alpha / spec.rank as f64) as f32,
                    permuted_heads: heads,
                    tensors: RwLock::new((ta, tb)),
                    device: device.clone(),
                }));
            }
        }
        Ok(LoraTraining { spec, pairs })
    }

    pub fn pairs(&self) -> &[Arc<TrainedPair>] {
        &self.pairs
    }

    /// Trainable values in all.
    pub fn parameter_count(&self) -> usize {
        self.pairs.iter().map(|p| p.rank * (p.inp + p.out)).sum()
    }

    /// Loads `family` from `src` on `device` with these pairs on its projections. `device`
    /// should record gradients (`Device::autodiff`) and must not compute on host kernels.
    pub fn load(&self, family: FamilyConfig, src: &dyn WeightSource, device: &Device) -> Result<Box<dyn CausalLm>> {
        if super::uses_host_kernels(device) {
            return Err(Error::InvalidArgument("LoRA training needs a Burn device (the host kernels do not differentiate)".into()));
        }
        if let FamilyConfig::GptNeox(_) = family {
            return Err(Error::InvalidArgument("LoRA training for GPT-NeoX models is not supported (Llama, Qwen2 and Gemma3 are)".into()));
        }
        let model = family.load(&WithTrained { base: src, pairs: &self.pairs }, device)?;
        // Each pair is held here and, once loaded, by its projection.
        if let Some(unused) = self.pairs.iter().find(|p| Arc::strong_count(p) < 2) {
            return Err(Error::InvalidArgument(format!("the model has no weight `{}` to adapt", unused.name)));
        }
        Ok(model)
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` as PEFT does, so
    /// `PeftModel.from_pretrained(model, dir)` and [`super::LoraAdapter::open`] both load it.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        let io = |path: PathBuf| move |e: std::io::Error| Error::Io { path: path.clone(), source: e };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for p in &self.pairs {
            let (a, mut b) = p.values();
            if let Some(heads) = p.permuted_heads {
                b = unpermute_rows(&b, p.out, p.rank, heads).map_err(Error::InvalidArgument)?;
            }
            tensors.push((format!("base_model.model.{}.lora_A.weight", p.module), a, vec![p.rank, p.inp]));
            tensors.push((format!("base_model.model.{}.lora_B.weight", p.module), b, vec![p.out, p.rank]));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(name, values, shape)| {
                let bytes: &[u8] = bytemuck_f32(values);
                (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).expect("consistent LoRA tensor"))
            })
            .collect();
        let weights = dir.join("adapter_model.safetensors");
        let bytes = safetensors::serialize(views, None).map_err(|e| Error::InvalidArgument(format!("serializing {}: {e}", weights.display())))?;
        write_atomically(&weights, &bytes)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.spec.rank,
            "lora_alpha": self.spec.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.spec.modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
        });
        write_atomically(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&config).expect("JSON").as_bytes())
    }
}

fn bytemuck_f32(values: &[f32]) -> &[u8] {
    // f32 has no padding and any byte pattern is a valid u8: viewing the slice as bytes is sound.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `base` plus pairs being trained, handed to the families' loaders.
struct WithTrained<'a> {
    base: &'a dyn WeightSource,
    pairs: &'a [Arc<TrainedPair>],
}

impl WeightSource for WithTrained<'_> {
    fn origin(&self) -> &Path {
        self.base.origin()
    }

    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        self.base.load_f32(name)
    }

    fn load_packed(&self, name: &str) -> Result<Option<(QuantMatrix, Vec<usize>)>> {
        self.base.load_packed(name)
    }

    fn trained_low_rank(&self, name: &str) -> Option<Arc<TrainedPair>> {
        self.pairs.iter().find(|p| p.name == name).cloned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermuting_inverts_the_permutation() {
        let m: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let p = super::super::lora::permute_rows(&m, 12, 4, 3).unwrap();
        assert_ne!(p, m);
        assert_eq!(super::unpermute_rows(&p, 12, 4, 3).unwrap(), m);
    }
}
