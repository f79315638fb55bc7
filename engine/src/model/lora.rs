//! LoRA adapters in PEFT's format (`adapter_config.json` and `adapter_model.safetensors`), applied
//! as a low-rank side path: y = x·Wᵀ + (x·Aᵀ)·(s·B)ᵀ with s = lora_alpha / r (or / √r with
//! rsLoRA). The base weights stay as loaded — in their GGUF blocks where the file has them — so a
//! quantized draft keeps its size and speed, and an adapter whose B is zero (PEFT's
//! initialization) changes no logit, bit for bit.
//!
//! The adapter enters loading as a [`WeightSource`] wrapped around the model's own
//! ([`Adapted`]): the families ask every projection for its low-rank pair by GGUF name, exactly as
//! they ask for its weight. An adapter matrix no projection asked for is an error, not a silent no-op.

use super::{ModelConfig, RopeStyle, WeightSource};
use crate::cpu::QuantMatrix;
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Highest rank accepted (published adapters use 4–256).
const MAX_RANK: usize = 4096;

/// The modules of a transformers Llama/Qwen2/Gemma3 layer an adapter may target, and the GGUF
/// name of each one's weight.
pub(super) const MODULES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The update of one weight: A [rank, in] and B [out, rank], B already multiplied by the scale.
#[derive(Debug, Clone)]
pub struct LowRankPair {
    /// The module's name in the adapter file, for errors.
    pub module: String,
    pub rank: usize,
    pub a: Vec<f32>,
    pub a_shape: Vec<usize>,
    pub b_scaled: Vec<f32>,
    pub b_shape: Vec<usize>,
}

/// A LoRA adapter read from a PEFT directory.
#[derive(Debug)]
pub struct LoraAdapter {
    weights_file: PathBuf,
    rank: usize,
    alpha: f64,
    scale: f32,
    /// GGUF weight name (`blk.3.attn_q.weight`) → its update.
    pairs: BTreeMap<String, LowRankPair>,
}

impl LoraAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`. Options this engine
    /// does not implement (DoRA, per-module ranks, trained biases, fan-in-fan-out layouts, …) are
    /// refused by name rather than ignored.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("adapter_config.json");
        let text = crate::safetensors::read_json_file(&config_path)?;
        let bad_config = |problem: String| Error::Adapter { path: config_path.clone(), problem };
        let config: Value = serde_json::from_str(&text).map_err(|e| bad_config(e.to_string()))?;
        let (rank, alpha, rslora) = read_config(&config).map_err(bad_config)?;
        let scale = if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 } as f32;

        let weights_file = dir.join("adapter_model.safetensors");
        let tensors = crate::safetensors::read_all_f32(&weights_file)?;
        let bad = |problem: String| Error::Adapter { path: weights_file.clone(), problem };
        // GGUF weight name → (module, [A, B]), each (values, shape)
        type Half = Option<(Vec<f32>, Vec<usize>)>;
        let mut halves: BTreeMap<String, (String, [Half; 2])> = BTreeMap::new();
        for (name, values, shape) in tensors {
            let (module, half) = split_name(&name).ok_or_else(|| bad(format!("`{name}` is not a LoRA matrix (…lora_A.weight or …lora_B.weight)")))?;
            let gguf = gguf_name(module).map_err(&bad)?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("`{name}` holds a value that is not finite")));
            }
            halves.entry(gguf).or_insert_with(|| (module.to_string(), [None, None])).1[half] = Some((values, shape));
        }
        let mut pairs = BTreeMap::new();
        for (gguf, (module, [a, b])) in halves {
            let (Some((a, a_shape)), Some((b, b_shape))) = (a, b) else {
                return Err(bad(format!("`{module}` has only one of lora_A and lora_B")));
            };
            if a_shape.len() != 2 || b_shape.len() != 2 || a_shape[0] != rank || b_shape[1] != rank {
                return Err(bad(format!(
                    "`{module}`: lora_A {a_shape:?} and lora_B {b_shape:?} are not [{rank}, in] and [out, {rank}] for the configured rank r = {rank}"
                )));
            }
            let b_scaled = b.into_iter().map(|v| v * scale).collect();
            pairs.insert(gguf, LowRankPair { module, rank, a, a_shape, b_scaled, b_shape });
        }
        if pairs.is_empty() {
            return Err(bad("no LoRA matrices".into()));
        }
        Ok(LoraAdapter { weights_file, rank, alpha, scale, pairs })
    }

    /// The adapter's weight file, named in errors about its tensors.
    pub fn weights_file(&self) -> &Path {
        &self.weights_file
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The factor B is multiplied by (lora_alpha / r, or / √r with rsLoRA).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// How many weights the adapter updates.
    pub fn modules(&self) -> usize {
        self.pairs.len()
    }
}

/// (rank, alpha, rsLoRA) from `adapter_config.json`, or what it asks for that is not implemented.
fn read_config(c: &Value) -> std::result::Result<(usize, f64, bool), String> {
    if let Some(kind) = c.get("peft_type").and_then(Value::as_str) {
        if kind != "LORA" {
            return Err(format!("peft_type `{kind}` is not LORA"));
        }
    }
    let rank = c.get("r").and_then(Value::as_u64).ok_or("`r` is missing or not a positive integer")? as usize;
    if rank == 0 || rank > MAX_RANK {
        return Err(format!("rank r = {rank} is outside 1..={MAX_RANK}"));
    }
    let alpha = c.get("lora_alpha").and_then(Value::as_f64).ok_or("`lora_alpha` is missing or not a number")?;
    if !alpha.is_finite() {
        return Err("`lora_alpha` is not finite".into());
    }
    let truthy = |key: &str| c.get(key).is_some_and(|v| v.as_bool() == Some(true));
    let nonempty = |key: &str| match c.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    for key in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
        if truthy(key) {
            return Err(format!("`{key}: true` is not supported"));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if nonempty(key) {
            return Err(format!("`{key}` is not supported (only one rank and alpha for every module)"));
        }
    }
    // Options that change what is trained or how it is applied beyond W + s·B·A.
    for key in ["modules_to_save", "layers_to_transform", "layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "use_bdlora"] {
        if nonempty(key) {
            return Err(format!("`{key}` is not supported"));
        }
    }
    if let Some(bias) = c.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            return Err(format!("bias `{bias}` is not supported (only \"none\")"));
        }
    }
    Ok((rank, alpha, truthy("use_rslora")))
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` → (`model.layers.3.self_attn.q_proj`, 0).
fn split_name(name: &str) -> Option<(&str, usize)> {
    let stem = name.strip_suffix(".weight")?;
    let (module, half) = stem.rsplit_once('.')?;
    let half = match half {
        "lora_A" => 0,
        "lora_B" => 1,
        _ => return None,
    };
    Some((module.strip_prefix("base_model.model.").unwrap_or(module), half))
}

/// The GGUF weight a module updates: `model.layers.3.self_attn.q_proj` → `blk.3.attn_q.weight`.
fn gguf_name(module: &str) -> std::result::Result<String, String> {
    let unsupported = || {
        let names: Vec<&str> = MODULES.iter().map(|(hf, _)| *hf).collect();
        format!("`{module}` is not a module this engine adapts (model.layers.N. followed by one of {})", names.join(", "))
    };
    let rest = module.strip_prefix("model.layers.").ok_or_else(unsupported)?;
    let (layer, hf) = rest.split_once('.').ok_or_else(unsupported)?;
    let layer: usize = layer.parse().map_err(|_| unsupported())?;
    let (_, base) = MODULES.iter().find(|(m, _)| *m == hf).ok_or_else(unsupported)?;
    Ok(format!("blk.{layer}.{base}.weight"))
}

/// `base` with `adapter`'s low-rank pairs: what the families load when a model is adapted.
pub(crate) struct Adapted<'a> {
    base: &'a dyn WeightSource,
    adapter: &'a LoraAdapter,
    /// Heads of Q and of K when the source stores their rows in llama.cpp's permuted order (GGUF
    /// `llama`, rotated "normal" style): B's rows are permuted to match.
    permuted_heads: Option<(usize, usize)>,
    used: Mutex<HashSet<String>>,
}

impl<'a> Adapted<'a> {
    pub(crate) fn new(base: &'a dyn WeightSource, adapter: &'a LoraAdapter, cfg: &ModelConfig) -> Self {
        let permuted_heads = (cfg.rope_style == RopeStyle::Normal).then_some((cfg.n_heads, cfg.n_kv_heads));
        Adapted { base, adapter, permuted_heads, used: Mutex::new(HashSet::new()) }
    }

    /// An error for the first adapter matrix no projection of the model asked for (a layer the
    /// model does not have, or a module its family lacks).
    pub(crate) fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().map_err(|_| Error::InvalidArgument("adapter bookkeeping poisoned".into()))?;
        match self.adapter.pairs.iter().find(|(gguf, _)| !used.contains(*gguf)) {
            None => Ok(()),
            Some((_, pair)) => Err(Error::Adapter {
                path: self.adapter.weights_file.clone(),
                problem: format!("`{}` updates a weight this model does not have", pair.module),
            }),
        }
    }
}

impl WeightSource for Adapted<'_> {
    fn origin(&self) -> &Path {
        self.base.origin()
    }

    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        self.base.load_f32(name)
    }

    fn load_packed(&self, name: &str) -> Result<Option<(QuantMatrix, Vec<usize>)>> {
        self.base.load_packed(name)
    }

    fn load_low_rank(&self, name: &str) -> Result<Option<(LowRankPair, PathBuf)>> {
        let Some(pair) = self.adapter.pairs.get(name) else { return Ok(None) };
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        let mut pair = pair.clone();
        let heads = match self.permuted_heads {
            Some((q, _)) if name.ends_with(".attn_q.weight") => Some(q),
            Some((_, k)) if name.ends_with(".attn_k.weight") => Some(k),
            _ => None,
        };
        if let Some(heads) = heads {
            pair.b_scaled = permute_rows(&pair.b_scaled, pair.b_shape[0], pair.rank, heads)
                .map_err(|problem| Error::Adapter { path: self.adapter.weights_file.clone(), problem: format!("`{}`: {problem}", pair.module) })?;
        }
        Ok(Some((pair, self.adapter.weights_file.clone())))
    }
}

/// Rows of a [out, cols] matrix reordered as llama.cpp's converter reorders Q and K for its
/// "normal" rotation: within each head, rows (i, i + d/2) become neighbours (2i, 2i + 1).
pub(super) fn permute_rows(m: &[f32], out: usize, cols: usize, heads: usize) -> std::result::Result<Vec<f32>, String> {
    reorder_rows(m, out, cols, heads, false)
}

/// The inverse of [`permute_rows`]: llama.cpp's row order back to transformers'.
pub(super) fn unpermute_rows(m: &[f32], out: usize, cols: usize, heads: usize) -> std::result::Result<Vec<f32>, String> {
    reorder_rows(m, out, cols, heads, true)
}

/// Row (h, i, j) of llama.cpp's order is row (h, j, i) of transformers' (i < d/2, j < 2);
/// `inverse` copies the other way.
fn reorder_rows(m: &[f32], out: usize, cols: usize, heads: usize, inverse: bool) -> std::result::Result<Vec<f32>, String> {
    if heads == 0 || out % heads != 0 || (out / heads) % 2 != 0 {
        return Err(format!("{out} rows do not split into {heads} heads of an even size"));
    }
    let head = out / heads;
    let half = head / 2;
    let mut reordered = vec![0.0; m.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (llama_cpp, transformers) = (h * head + 2 * i + j, h * head + j * half + i);
                let (to, from) = if inverse { (transformers, llama_cpp) } else { (llama_cpp, transformers) };
                reordered[to * cols..(to + 1) * cols].copy_from_slice(&m[from * cols..(from + 1) * cols]);
            }
        }
    }
    Ok(reordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_map_to_gguf_names() {
        assert_eq!(split_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"), Some(("model.layers.3.self_attn.q_proj", 0)));
        assert_eq!(split_name("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"), Some(("model.layers.3.mlp.down_proj", 1)));
        assert_eq!(split_name("base_model.model.model.layers.3.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj").unwrap(), "blk.3.attn_q.weight");
        assert_eq!(gguf_name("model.layers.0.mlp.gate_proj").unwrap(), "blk.0.ffn_gate.weight");
        assert!(gguf_name("gpt_neox.layers.0.attention.query_key_value").unwrap_err().contains("not a module"));
        assert!(gguf_name("model.layers.x.self_attn.q_proj").is_err());
        assert!(gguf_name("lm_head").is_err());
    }

    #[test]
    fn permutation_matches_llama_cpp_for_one_head() {
        // One head of 4 rows, 1 column: rows (0, 1, 2, 3) = halves (0, 1 | 2, 3) → (0, 2, 1, 3).
        assert_eq!(permute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1).unwrap(), vec![0.0, 2.0, 1.0, 3.0]);
        // Two heads of 4, 2 columns each.
        let m: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let p = permute_rows(&m, 8, 2, 2).unwrap();
        assert_eq!(p, vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
        assert!(permute_rows(&m, 8, 2, 3).is_err());
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let ok = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "rank_pattern": {}, "alpha_pattern": {}, "bias": "none", "use_rslora": true});
        assert_eq!(read_config(&ok).unwrap(), (8, 16.0, true));
        for (edit, word) in [
            (serde_json::json!({"use_dora": true}), "use_dora"),
            (serde_json::json!({"rank_pattern": {"q_proj": 4}}), "rank_pattern"),
            (serde_json::json!({"bias": "all"}), "bias"),
            (serde_json::json!({"r": 0}), "rank"),
            (serde_json::json!({"peft_type": "IA3"}), "IA3"),
            (serde_json::json!({"lora_alpha": "x"}), "lora_alpha"),
        ] {
            let mut c = ok.clone();
            for (k, v) in edit.as_object().unwrap() {
                c[k] = v.clone();
            }
            let e = read_config(&c).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
    }
}
