//! The GPU tier: the same models and speculation on burn-wgpu (Vulkan, Metal, DX12 — or, in CI,
//! Mesa's software Vulkan device, lavapipe).
//!
//! Built only with `--features wgpu`. `SPECDEC_WGPU=1` requests the tier: then a missing adapter
//! fails every test. Without it, a machine with no adapter skips the tests, saying why.

#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{fixtures, max_abs_diff, real_model, read_json};
use engine::generate::{generate, GenerationConfig};
use engine::gguf::Gguf;
use engine::model::{load_gguf, CausalLm, LogitRows};
use engine::speculative::{generate_speculative, DraftModel, SpecConfig};

/// The wgpu device, after checking that it computes.
fn device() -> Option<Device> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    let requested = std::env::var("SPECDEC_WGPU").is_ok_and(|v| v == "1");
    let probe = DEVICE.get_or_init(|| {
        let device = Device::wgpu_options().init().map_err(|e| e.to_string())?;
        let a: Tensor<2> = Tensor::from_data(TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [2, 2]), &device);
        let product = a.clone().matmul(a).into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        assert_eq!(product, [7.0, 10.0, 15.0, 22.0], "the wgpu adapter computes a wrong 2×2 product");
        Ok(device)
    });
    match probe {
        Ok(device) => Some(device.clone()),
        Err(e) if requested => panic!("SPECDEC_WGPU=1 but no wgpu adapter works here ({e}); install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers"),
        Err(e) => {
            common::report_skip(&format!("no wgpu adapter on this machine ({e}); set SPECDEC_WGPU=1 to make that a failure"));
            None
        }
    }
}

fn tiny(name: &str, device: &Device) -> Box<dyn CausalLm> {
    let g = Gguf::open(fixtures().join("tiny").join(format!("{name}.gguf"))).unwrap();
    load_gguf(&g, device).unwrap()
}

/// Logits of every position of `tokens`.
fn all_logits(model: &dyn CausalLm, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(64).unwrap();
    let logits = model.forward(tokens, &mut cache, LogitRows::All).unwrap();
    (0..tokens.len()).map(|i| logits.row(i).to_vec()).collect()
}

#[test]
fn tiny_models_give_the_cpu_logits_and_transformers_logits() {
    let Some(gpu) = device() else { return };
    for name in ["llama", "qwen2"] {
        let reference = read_json(&fixtures().join("tiny").join(format!("{name}.ref.json")));
        let tokens: Vec<u32> = reference["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let on_gpu = all_logits(tiny(name, &gpu).as_ref(), &tokens);
        let on_cpu = all_logits(tiny(name, &Device::flex()).as_ref(), &tokens);
        let mut worst_cpu = 0f32;
        let mut worst_ref = 0f32;
        for (i, row) in on_gpu.iter().enumerate() {
            worst_cpu = worst_cpu.max(max_abs_diff(row, &on_cpu[i]));
            let want: Vec<f32> = reference["logits"][i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            worst_ref = worst_ref.max(max_abs_diff(row, &want));
        }
        eprintln!("{name} on wgpu: max |Δlogit| {worst_cpu:.2e} vs CPU, {worst_ref:.2e} vs transformers");
        assert!(worst_cpu < 2e-5 && worst_ref < 2e-5, "{name}: wgpu logits differ (CPU {worst_cpu}, transformers {worst_ref})");
        // One token at a time through the device KV cache gives the same rows.
        let model = tiny(name, &gpu);
        let mut cache = model.new_cache(64).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            let row = model.forward(&[t], &mut cache, LogitRows::Last).unwrap();
            assert!(max_abs_diff(row.last(), &on_gpu[i]) < 2e-5, "{name}: incremental decoding differs at {i}");
        }
    }
}

#[test]
fn greedy_speculative_equals_greedy_target_only_on_wgpu() {
    let Some(gpu) = device() else { return };
    let target = tiny("llama", &gpu);
    let draft = tiny("llama-draft", &gpu);
    let prompt = [72u32, 101, 108, 108, 111, 44, 32];
    let gen = GenerationConfig { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
    let want = generate(target.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    for k in [1, 2, 4] {
        let mut proposer = DraftModel::new(draft.as_ref(), prompt.len() + gen.max_new_tokens).unwrap();
        let out = generate_speculative(target.as_ref(), &mut proposer, &prompt, &[], &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
        assert_eq!(out.generation.tokens, want, "k = {k}");
        assert!(out.metrics.drafted > 0 && out.metrics.accepted < out.metrics.drafted, "k = {k}: the perturbed draft is sometimes rejected");
    }
}

#[test]
fn smollm2_decodes_on_wgpu_like_the_exact_cpu_kernels() {
    let Some(gpu) = device() else { return };
    let Some(path) = real_model("smollm2-135m") else { return };
    let on_gpu = engine::load_files(engine::source::ModelFiles::Gguf(path.clone()), &gpu).unwrap();
    let cpu = engine::cpu::with_kernel_mode(engine::cpu::KernelMode::Exact, || {
        engine::load_files(engine::source::ModelFiles::Gguf(path), &Device::flex()).unwrap()
    });
    let prompt = on_gpu.tokenizer.encode("The capital of France is", true).unwrap();
    let gen = GenerationConfig { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    let a = generate(on_gpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let b = generate(cpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    eprintln!("wgpu: {:?}", on_gpu.tokenizer.decode(&a).unwrap());
    assert_eq!(a, b, "SmolLM2's greedy tokens on wgpu differ from the f32 CPU kernels'");
    let last_gpu = all_logits(on_gpu.model.as_ref(), &prompt).pop().unwrap();
    let last_cpu = all_logits(cpu.model.as_ref(), &prompt).pop().unwrap();
    let worst = max_abs_diff(&last_gpu, &last_cpu);
    eprintln!("SmolLM2 last-position logits: max |Δ| {worst:.2e} between wgpu and the exact CPU kernels");
    assert!(worst < 1e-3, "logits differ by {worst}");
}
