//! LoRA adapters made by Python PEFT on the tiny fixtures (scripts/make_lora_fixtures.py): loaded
//! onto the safetensors and the GGUF copy of each model, on the host kernels and on Burn ops, they
//! reproduce the logits of transformers + PEFT; PEFT's own initialization (B = 0) changes no logit
//! bit for bit; a speculative pair with an adapted draft stays greedy-equal to the target; and a
//! broken adapter is a typed error naming its file, also over 2000 mutated adapters (no panic).

mod common;
mod fuzzing;

use burn::tensor::Device;
use common::{fixtures, max_abs_diff, read_json};
use engine::gguf::Gguf;
use engine::model::{CausalLm, FamilyConfig, LogitRows, LoraAdapter};
use engine::safetensors::HfModelDir;
use engine::Error;
use std::path::{Path, PathBuf};

/// Max |Δlogit| against transformers + PEFT: the tiny models' own tolerance (f32 on both sides).
const TOL: f32 = 2e-5;

const ARCHS: [&str; 3] = ["llama", "qwen2", "gemma3"];

fn lora_dir(name: &str) -> PathBuf {
    fixtures().join("lora").join(name)
}

fn adapter(name: &str) -> LoraAdapter {
    LoraAdapter::open(lora_dir(name)).unwrap()
}

fn load_gguf(arch: &str, adapter: Option<&LoraAdapter>, device: &Device) -> engine::Result<Box<dyn CausalLm>> {
    let g = Gguf::open(fixtures().join("tiny").join(format!("{arch}.gguf")))?;
    FamilyConfig::from_gguf(&g)?.load_adapted(&g, adapter, device)
}

fn load_hf(arch: &str, adapter: Option<&LoraAdapter>, device: &Device) -> engine::Result<Box<dyn CausalLm>> {
    let dir = HfModelDir::open(fixtures().join("tiny").join(format!("{arch}-hf")))?;
    dir.family_config()?.load_adapted(&dir, adapter, device)
}

fn all_logits(model: &dyn CausalLm, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(64).unwrap();
    let logits = model.forward(tokens, &mut cache, LogitRows::All).unwrap();
    (0..logits.rows()).flat_map(|r| logits.row(r).to_vec()).collect()
}

struct Reference {
    tokens: Vec<u32>,
    logits: Vec<f32>,
    max_abs_change: f32,
}

fn reference(arch: &str) -> Reference {
    let j = read_json(&fixtures().join("lora").join(format!("{arch}.ref.json")));
    Reference {
        tokens: j["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        logits: j["logits"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect(),
        max_abs_change: j["max_abs_change"].as_f64().unwrap() as f32,
    }
}

#[test]
fn peft_adapters_reproduce_transformers_logits_from_gguf_and_safetensors() {
    let device = Device::flex();
    for arch in ARCHS {
        let r = reference(arch);
        // The adapter moves the logits far more than the tolerance: matching is not vacuous.
        assert!(r.max_abs_change > 1000.0 * TOL, "{arch}: the adapter changes logits by only {}", r.max_abs_change);
        let a = adapter(arch);
        let layers = read_json(&fixtures().join("tiny").join(format!("{arch}-hf/config.json")))["num_hidden_layers"].as_u64().unwrap() as usize;
        assert_eq!((a.rank(), a.modules()), (4, 7 * layers), "{arch}: rank 4 on 7 modules of every layer");
        for (what, model) in [
            ("safetensors", load_hf(arch, Some(&a), &device).unwrap()),
            ("gguf", load_gguf(arch, Some(&a), &device).unwrap()),
            ("safetensors, Burn ops", engine::model::with_burn_ops(|| load_hf(arch, Some(&a), &device)).unwrap()),
            ("gguf, Burn ops", engine::model::with_burn_ops(|| load_gguf(arch, Some(&a), &device)).unwrap()),
        ] {
            let worst = max_abs_diff(&all_logits(model.as_ref(), &r.tokens), &r.logits);
            eprintln!("{arch} {what}: max |Δlogit| = {worst:.2e} (the adapter moves them by {:.2})", r.max_abs_change);
            assert!(worst < TOL, "{arch} {what}: logits differ from transformers + PEFT by {worst}");
        }
    }
}

/// The check has power: a loader that forgot to permute B's rows as llama.cpp's converter permuted
/// the GGUF Llama's Q and K rows would compute what the safetensors copy computes with B's q/k
/// rows un-permuted — and that misses the reference by far more than the tolerance.
#[test]
fn the_check_has_power_an_unpermuted_q_k_update_fails_it() {
    let (heads, kv_heads, head_dim) = (4, 2, 16); // tiny/llama-hf/config.json
    let unpermute = |b: &[f32], heads: usize, rank: usize| {
        // B'[h·d + j·d/2 + i] = B[h·d + 2i + j]: the inverse of the converter's permutation.
        let mut out = vec![0.0; b.len()];
        for h in 0..heads {
            for i in 0..head_dim / 2 {
                for j in 0..2 {
                    let (to, from) = (h * head_dim + j * head_dim / 2 + i, h * head_dim + 2 * i + j);
                    out[to * rank..(to + 1) * rank].copy_from_slice(&b[from * rank..(from + 1) * rank]);
                }
            }
        }
        out
    };
    let dir = edited_copy("unpermuted", |_| {}, |t| {
        for (name, values, shape) in t.iter_mut() {
            if name.contains("q_proj.lora_B") {
                *values = unpermute(values, heads, shape[1]);
            } else if name.contains("k_proj.lora_B") {
                *values = unpermute(values, kv_heads, shape[1]);
            }
        }
    });
    let r = reference("llama");
    let forgot = load_hf("llama", Some(&LoraAdapter::open(&dir).unwrap()), &Device::flex()).unwrap();
    let wrong = max_abs_diff(&all_logits(forgot.as_ref(), &r.tokens), &r.logits);
    assert!(wrong > 100.0 * TOL, "a wrong Q/K layout went unnoticed (max Δ {wrong})");
}

#[test]
fn a_zero_adapter_changes_no_logit_bit_for_bit() {
    let device = Device::flex();
    for arch in ARCHS {
        let zero = adapter(&format!("{arch}-zero"));
        let tokens: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 250).collect();
        for (what, base, adapted) in [
            ("safetensors", load_hf(arch, None, &device).unwrap(), load_hf(arch, Some(&zero), &device).unwrap()),
            ("gguf", load_gguf(arch, None, &device).unwrap(), load_gguf(arch, Some(&zero), &device).unwrap()),
        ] {
            let (x, y) = (all_logits(base.as_ref(), &tokens), all_logits(adapted.as_ref(), &tokens));
            assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{arch} {what}: a zero adapter changed the logits");
        }
    }
}

#[test]
fn greedy_speculation_with_an_adapted_draft_equals_the_target_alone() {
    use engine::speculative::{generate_speculative, DraftModel, SpecConfig};
    let device = Device::flex();
    let target = load_gguf("llama", None, &device).unwrap();
    // The draft: the perturbed tiny Llama with the adapter on top.
    let a = adapter("llama");
    let g = Gguf::open(fixtures().join("tiny").join("llama-draft.gguf")).unwrap();
    let draft = FamilyConfig::from_gguf(&g).unwrap().load_adapted(&g, Some(&a), &device).unwrap();
    let prompt = [72, 101, 108, 108, 111];
    let generation = engine::generate::GenerationConfig { max_new_tokens: 40, stop_at_eos: false, ..Default::default() };
    let alone = engine::generate::generate(target.as_ref(), &prompt, &[], &generation, |_| {}).unwrap().tokens;
    for k in [1, 3, 6] {
        let cfg = SpecConfig::fixed(generation.clone(), k);
        let mut proposer = DraftModel::new(draft.as_ref(), 128).unwrap();
        let out = generate_speculative(target.as_ref(), &mut proposer, &prompt, &[], &cfg, |_| {}).unwrap();
        assert_eq!(out.generation.tokens, alone, "k = {k}");
    }
}

/// A copy of the llama adapter with `edit` applied to its config and tensors.
fn edited_copy(case: &str, edit_config: impl Fn(&mut serde_json::Value), edit_tensors: impl Fn(&mut Vec<(String, Vec<f32>, Vec<usize>)>)) -> PathBuf {
    let src = lora_dir("llama");
    let dir = std::env::temp_dir().join(format!("specdec-lora-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = read_json(&src.join("adapter_config.json"));
    edit_config(&mut config);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), view.shape().to_vec()))
        .collect();
    edit_tensors(&mut tensors);
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = tensors.into_iter().map(|(n, v, s)| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), s)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        raw.iter().map(|(n, b, s)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

fn error_of(dir: &Path) -> (Error, String) {
    let device = Device::flex();
    let e = match LoraAdapter::open(dir) {
        Err(e) => e,
        Ok(a) => match load_gguf("llama", Some(&a), &device) {
            Err(e) => e,
            Ok(_) => panic!("{}: a broken adapter loaded", dir.display()),
        },
    };
    let text = e.to_string();
    (e, text)
}

#[test]
fn broken_adapters_are_typed_errors_naming_the_file() {
    let keep = |_: &mut Vec<(String, Vec<f32>, Vec<usize>)>| {};
    let same = |_: &mut serde_json::Value| {};
    let cases: Vec<(&str, PathBuf, &str, &str)> = vec![
        ("dora", edited_copy("dora", |c| c["use_dora"] = true.into(), keep), "adapter_config.json", "use_dora"),
        ("rank", edited_copy("rank", |c| c["r"] = 8.into(), keep), "adapter_model.safetensors", "configured rank"),
        ("alpha", edited_copy("alpha", |c| c["lora_alpha"] = "sixteen".into(), keep), "adapter_config.json", "lora_alpha"),
        (
            "layer 7",
            edited_copy("layer7", same, |t| {
                for (name, _, _) in t.iter_mut() {
                    *name = name.replace("layers.1.", "layers.7.");
                }
            }),
            "adapter_model.safetensors",
            "does not have",
        ),
        ("half", edited_copy("half", same, |t| t.retain(|(n, _, _)| !n.contains("layers.0.mlp.up_proj.lora_B"))), "adapter_model.safetensors", "only one of"),
        ("module", edited_copy("module", same, |t| t[0].0 = "base_model.model.lm_head.lora_A.weight".into()), "adapter_model.safetensors", "not a module"),
        ("nan", edited_copy("nan", same, |t| t[3].1[0] = f32::NAN), "adapter_model.safetensors", "not finite"),
        (
            "shape",
            edited_copy("shape", same, |t| {
                let a = t.iter_mut().find(|(n, _, _)| n.contains("lora_A")).unwrap();
                a.1.truncate(4 * 32);
                a.2 = vec![4, 32];
            }),
            "adapter_model.safetensors",
            "lora_A",
        ),
    ];
    for (case, dir, file, word) in cases {
        let (e, text) = error_of(&dir);
        assert!(text.contains(file) && text.contains(word), "{case}: {text}");
        assert!(matches!(e, Error::Adapter { .. } | Error::TensorShape { .. }), "{case}: {e:?}");
    }
    // A missing directory, and a GPT-NeoX model (not supported), are errors too.
    let (_, text) = error_of(Path::new("/nonexistent/adapter"));
    assert!(text.contains("adapter_config.json"), "{text}");
    let g = Gguf::open(fixtures().join("tiny").join("gptneox.gguf")).unwrap();
    let e = FamilyConfig::from_gguf(&g).unwrap().load_adapted(&g, Some(&adapter("llama")), &Device::flex()).err().unwrap();
    assert!(e.to_string().contains("GPT-NeoX"), "{e}");
}

/// Adapters are untrusted input like model files: 2000 seeded structure-aware mutations of the
/// llama adapter (its config as JSON or bytes; its safetensors header, lengths and bytes, spliced
/// with the Qwen2 adapter) are each loaded onto the tiny Llama and run: an error naming the
/// adapter's file, or a model that runs, never a panic.
#[test]
fn mutated_adapters_are_refused_or_loaded_never_a_panic() {
    use rand::{RngCore, SeedableRng};
    let src = lora_dir("llama");
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let other = std::fs::read(lora_dir("qwen2").join("adapter_model.safetensors")).unwrap();
    let dir = std::env::temp_dir().join(format!("specdec-lora-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = Gguf::open(fixtures().join("tiny").join("llama.gguf")).unwrap();
    let device = Device::flex();
    let (mut loaded, mut refused) = (0, 0);
    for seed in 0..2000u64 {
        let mut entropy = vec![0u8; 4096];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut entropy);
        let mut u = arbitrary::Unstructured::new(&entropy);
        let (c, w) = if seed % 2 == 0 {
            (fuzzing::mutate_config(&mut u, &config).unwrap_or_else(|_| config.clone().into_bytes()), weights.clone())
        } else {
            (config.clone().into_bytes(), fuzzing::mutate_safetensors(&mut u, &weights, &other).unwrap_or_else(|_| weights.clone()))
        };
        std::fs::write(dir.join("adapter_config.json"), &c).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), &w).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let a = LoraAdapter::open(&dir)?;
            let model = FamilyConfig::from_gguf(&g)?.load_adapted(&g, Some(&a), &device)?;
            let mut cache = model.new_cache(8)?;
            model.forward(&[1, 2, 3], &mut cache, LogitRows::Last).map(|_| ())
        }));
        match outcome {
            Err(_) => panic!("mutated adapter, seed {seed}: panic"),
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                let text = e.to_string();
                assert!(text.contains("adapter_config.json") || text.contains("adapter_model.safetensors"), "seed {seed}: {text}");
                refused += 1;
            }
        }
    }
    eprintln!("2000 mutated adapters: {loaded} loaded, {refused} refused");
    assert!(refused > 500, "mutations too weak to test anything: {refused} refused");
}
