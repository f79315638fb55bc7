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
use engine::model::{load_gguf, with_device_float, CausalLm, DeviceFloat, LogitRows, Placement};
use engine::speculative::{generate_speculative, DraftModel, SpecConfig};

/// The wgpu device, held by one test at a time: the tests measure device memory, which a test
/// running beside them would change (and on lavapipe the device is the same two cores anyway).
struct Gpu {
    device: Device,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Gpu {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

/// The wgpu device, after checking that it computes.
fn device() -> Option<Gpu> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let requested = std::env::var("SPECDEC_WGPU").is_ok_and(|v| v == "1");
    let probe = DEVICE.get_or_init(|| {
        let device = Device::wgpu_options().init().map_err(|e| e.to_string())?;
        let a: Tensor<2> = Tensor::from_data(TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [2, 2]), &device);
        let product = a.clone().matmul(a).into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        assert_eq!(product, [7.0, 10.0, 15.0, 22.0], "the wgpu adapter computes a wrong 2×2 product");
        Ok(device)
    });
    match probe {
        Ok(device) => Some(Gpu { device: device.clone(), _serial: serial }),
        Err(e) if requested => panic!("SPECDEC_WGPU=1 but no wgpu adapter works here ({e}); install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers"),
        Err(e) => {
            common::report_skip(&format!("no wgpu adapter on this machine ({e}); set SPECDEC_WGPU=1 to make that a failure"));
            None
        }
    }
}

/// The float types to test activations in on `gpu`: f32, and f16 where the adapter computes in
/// it (lavapipe does).
fn floats(gpu: &Device) -> Vec<DeviceFloat> {
    let mut floats = vec![DeviceFloat::F32];
    if gpu.supports_dtype(burn::tensor::DType::F16) {
        floats.push(DeviceFloat::F16);
    } else {
        common::report_skip("this adapter has no shader-f16: f16 activations are not tested");
    }
    floats
}

fn tiny(name: &str, device: &Device, float: DeviceFloat) -> Box<dyn CausalLm> {
    let g = Gguf::open(fixtures().join("tiny").join(format!("{name}.gguf"))).unwrap();
    with_device_float(float, || load_gguf(&g, device)).unwrap()
}

fn load_real(path: &std::path::Path, device: &Device, float: DeviceFloat) -> engine::LoadedModel {
    with_device_float(float, || engine::load_files(engine::source::ModelFiles::Gguf(path.to_path_buf()), device)).unwrap()
}

/// Largest |logit| of `rows`: the scale f16's relative rounding applies to.
fn logit_scale(rows: &[Vec<f32>]) -> f32 {
    rows.iter().flatten().fold(0f32, |m, v| m.max(v.abs()))
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
        let on_gpu = all_logits(tiny(name, &gpu, DeviceFloat::F32).as_ref(), &tokens);
        let on_cpu = all_logits(tiny(name, &Device::flex(), DeviceFloat::F32).as_ref(), &tokens);
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
        let model = tiny(name, &gpu, DeviceFloat::F32);
        let mut cache = model.new_cache(64).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            let row = model.forward(&[t], &mut cache, LogitRows::Last).unwrap();
            assert!(max_abs_diff(row.last(), &on_gpu[i]) < 2e-5, "{name}: incremental decoding differs at {i}");
        }
    }
}

#[test]
fn tiny_models_in_f16_stay_within_half_precision_of_the_cpu() {
    let Some(gpu) = device() else { return };
    if !floats(&gpu).contains(&DeviceFloat::F16) {
        return;
    }
    for name in ["llama", "qwen2"] {
        let reference = read_json(&fixtures().join("tiny").join(format!("{name}.ref.json")));
        let tokens: Vec<u32> = reference["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let on_cpu = all_logits(tiny(name, &Device::flex(), DeviceFloat::F32).as_ref(), &tokens);
        let on_gpu = all_logits(tiny(name, &gpu, DeviceFloat::F16).as_ref(), &tokens);
        let worst = on_gpu.iter().zip(&on_cpu).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max);
        let scale = logit_scale(&on_cpu);
        eprintln!("{name} on wgpu in f16: max |Δlogit| {worst:.2e} vs CPU f32 (logits up to {scale:.2})");
        // Activations rounded to 11 significant bits at every layer: a few units of 2⁻¹¹ of the
        // logits' scale, not the 2e-5 of f32.
        assert!(worst <= 0.01 * scale, "{name}: f16 logits differ by {worst} (scale {scale})");
        assert!(worst > 0.0, "{name}: f16 logits equal f32's bit for bit: f16 was not used");
    }
}

#[test]
fn greedy_speculative_equals_greedy_target_only_on_wgpu() {
    let Some(gpu) = device() else { return };
    for float in floats(&gpu) {
        let target = tiny("llama", &gpu, float);
        let draft = tiny("llama-draft", &gpu, float);
        let prompt = [72u32, 101, 108, 108, 111, 44, 32];
        let gen = GenerationConfig { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
        let want = generate(target.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
        for k in [1, 2, 4] {
            let mut proposer = DraftModel::new(draft.as_ref(), prompt.len() + gen.max_new_tokens).unwrap();
            let out = generate_speculative(target.as_ref(), &mut proposer, &prompt, &[], &SpecConfig::fixed(gen.clone(), k), |_| {}).unwrap();
            assert_eq!(out.generation.tokens, want, "{float:?}, k = {k}");
            assert!(out.metrics.drafted > 0 && out.metrics.accepted < out.metrics.drafted, "{float:?}, k = {k}: the perturbed draft is sometimes rejected");
        }
    }
}

#[test]
fn the_device_chooses_f16_where_the_adapter_computes_in_it_and_the_cache_halves() {
    let Some(gpu) = device() else { return };
    let want = if gpu.supports_dtype(burn::tensor::DType::F16) { DeviceFloat::F16 } else { DeviceFloat::F32 };
    assert_eq!(Placement::of(&gpu), Placement::Device(want), "the automatic choice on this adapter");
    assert_eq!(with_device_float(DeviceFloat::F32, || Placement::of(&gpu)), Placement::Device(DeviceFloat::F32));
    assert_eq!(Placement::of(&Device::flex()), Placement::Host, "CPU devices keep activations in host memory");
    if want != DeviceFloat::F16 {
        return;
    }
    // The KV cache of the tiny Llama in each float: f16 takes half the bytes.
    let cache_bytes = |float| {
        let model = tiny("llama", &gpu, float);
        let before = gpu.memory_pool_usage().unwrap().bytes_in_use;
        let cache = model.new_cache(64).unwrap();
        let bytes = gpu.memory_pool_usage().unwrap().bytes_in_use.saturating_sub(before);
        drop(cache);
        bytes
    };
    let (f32_bytes, f16_bytes) = (cache_bytes(DeviceFloat::F32), cache_bytes(DeviceFloat::F16));
    let cfg = tiny("llama", &gpu, DeviceFloat::F32).config().clone();
    let values = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 64) as u64;
    eprintln!("tiny Llama KV cache of 64 positions: {f32_bytes} bytes in f32, {f16_bytes} in f16 ({values} values)");
    assert!(f32_bytes >= 4 * values && f16_bytes >= 2 * values && f16_bytes < 3 * values, "cache bytes {f32_bytes} (f32), {f16_bytes} (f16)");
}

#[test]
fn smollm2_decodes_on_wgpu_like_the_exact_cpu_kernels() {
    let Some(gpu) = device() else { return };
    let Some(path) = real_model("smollm2-135m") else { return };
    let on_gpu = load_real(&path, &gpu, DeviceFloat::F32);
    let cpu = engine::cpu::with_kernel_mode(engine::cpu::KernelMode::Exact, || load_real(&path, &Device::flex(), DeviceFloat::F32));
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

#[test]
fn smollm2_in_f16_decodes_the_tokens_of_the_exact_cpu_kernels() {
    let Some(gpu) = device() else { return };
    if !floats(&gpu).contains(&DeviceFloat::F16) {
        return;
    }
    let Some(path) = real_model("smollm2-135m") else { return };
    let on_gpu = load_real(&path, &gpu, DeviceFloat::F16);
    let cpu = engine::cpu::with_kernel_mode(engine::cpu::KernelMode::Exact, || load_real(&path, &Device::flex(), DeviceFloat::F32));
    let prompt = on_gpu.tokenizer.encode("The capital of France is", true).unwrap();
    let gen = GenerationConfig { max_new_tokens: 8, stop_at_eos: false, ..Default::default() };
    let a = generate(on_gpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let b = generate(cpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    assert_eq!(a, b, "SmolLM2's greedy tokens in f16 on wgpu differ from the f32 CPU kernels'");
    let last_gpu = all_logits(on_gpu.model.as_ref(), &prompt);
    let last_cpu = all_logits(cpu.model.as_ref(), &prompt);
    let worst = last_gpu.iter().zip(&last_cpu).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max);
    let scale = logit_scale(&last_cpu);
    eprintln!("SmolLM2 in f16 on wgpu: max |Δlogit| {worst:.2e} vs the exact CPU kernels (logits up to {scale:.1})");
    assert!(worst <= 0.01 * scale, "f16 logits differ by {worst} (scale {scale})");
}

#[test]
fn gemma3_stays_in_f32_on_the_device_and_decodes_like_the_cpu() {
    // Gemma's residual stream leaves f16's range: the family keeps f32 activations whatever the
    // adapter offers (loaded here with the automatic choice, f16 on lavapipe).
    let Some(gpu) = device() else { return };
    let Some(path) = real_model("gemma3-270m") else { return };
    let on_gpu = engine::load_files(engine::source::ModelFiles::Gguf(path.clone()), &gpu).unwrap();
    let cpu = engine::cpu::with_kernel_mode(engine::cpu::KernelMode::Exact, || load_real(&path, &Device::flex(), DeviceFloat::F32));
    let prompt = on_gpu.tokenizer.encode("The capital of France is", true).unwrap();
    let last_gpu = all_logits(on_gpu.model.as_ref(), &prompt).pop().unwrap();
    let last_cpu = all_logits(cpu.model.as_ref(), &prompt).pop().unwrap();
    assert!(last_gpu.iter().all(|v| v.is_finite()), "Gemma3 logits on the device are not finite");
    let worst = max_abs_diff(&last_gpu, &last_cpu);
    eprintln!("Gemma3-270M on wgpu: max |Δlogit| {worst:.2e} vs the exact CPU kernels");
    assert!(worst < 1e-2, "Gemma3 logits differ by {worst}");
    let gen = GenerationConfig { max_new_tokens: 6, stop_at_eos: false, ..Default::default() };
    let a = generate(on_gpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let b = generate(cpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    assert_eq!(a, b, "Gemma3's greedy tokens on wgpu differ from the CPU's");
}

// ---- Weights in their GGML blocks on the device (engine::gpu) ----

use engine::cpu::{KernelMode, QuantMatrix};
use engine::gguf::{GgmlType, TensorBytes};
use engine::gpu::{BlockFormat, BlockMatrix};
use rand::{Rng, SeedableRng};

const BLOCK_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::F16,
    GgmlType::BF16,
];

/// Random blocks of `ty` for an [out, inp] matrix: random bytes, with every f16 scale (and every
/// F16/BF16 value) set to a random finite number — random bits could be infinities or NaNs.
fn random_blocks(ty: GgmlType, out: usize, inp: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..ty.bytes_for(out * inp)).map(|_| rng.random()).collect();
    let halves: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &at in halves {
            let bits = match ty {
                GgmlType::BF16 => half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits(),
                // Small scales, and now and then a subnormal one (the kernels convert those too).
                _ if rng.random_range(0..50) == 0 => rng.random_range(1..0x400u16),
                _ => half::f16::from_f32(rng.random_range(-0.05..0.05)).to_bits(),
            };
            block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    bytes
}

fn host_matrix(ty: GgmlType, bytes: Vec<u8>, out: usize, inp: usize) -> QuantMatrix {
    QuantMatrix::new(ty, TensorBytes::Owned(bytes.into()), out, inp).unwrap()
}

fn on_device(w: &QuantMatrix, gpu: &Device) -> BlockMatrix {
    BlockMatrix::new(BlockFormat::of(w.ggml_type()).unwrap(), w.blocks(), w.out(), w.inp(), gpu).unwrap()
}

fn to_host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

const F32: burn::tensor::DType = burn::tensor::DType::F32;

/// Each product y[r, o] of the device against the host's exact kernel, within f32 rounding of the
/// sum's magnitude Σ|w||x| (the two sum in different orders).
fn assert_products_match(what: &str, w: &QuantMatrix, device_w: &BlockMatrix, rows: usize, rng: &mut impl Rng, gpu: &Device) {
    let (out, inp) = (w.out(), w.inp());
    let x: Vec<f32> = (0..rows * inp).map(|_| rng.random_range(-1.0..1.0)).collect();
    let want = w.matmul_t_with(KernelMode::Exact, &x, rows);
    let dense = w.to_f32();
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inp]), gpu);
    let got = to_host(device_w.matmul_t(xt));
    assert_eq!(got.len(), rows * out, "{what}: shape");
    for r in 0..rows {
        for o in 0..out {
            let magnitude: f32 = (0..inp).map(|i| (dense[o * inp + i] * x[r * inp + i]).abs()).sum();
            let (a, b) = (got[r * out + o], want[r * out + o]);
            assert!((a - b).abs() <= 1e-5 * magnitude + 1e-30, "{what}, {rows} rows: y[{r}, {o}] = {a} on the device, {b} on the host (Σ|wx| {magnitude})");
        }
    }
}

#[test]
fn block_kernels_match_the_exact_cpu_kernels_for_every_format() {
    let Some(gpu) = device() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
    // 2048 values a row: 128 groups, so each of the kernel's 64 units takes two.
    let (out, inp) = (67, 2048);
    for &ty in BLOCK_TYPES {
        let w = host_matrix(ty, random_blocks(ty, out, inp, &mut rng), out, inp);
        let device_w = on_device(&w, &gpu);
        assert!(device_w.size_bytes() as f64 <= 1.12 * w.size_bytes() as f64, "{}: {} device bytes for {}", ty.name(), device_w.size_bytes(), w.size_bytes());
        // Lookups: every row, dequantized in the kernel, against the host's dequantization.
        let ids: Vec<u32> = (0..out as u32).rev().collect();
        // Within a few ulps of the row's largest value: d·q + m may be fused into one multiply-add
        // on a GPU, which can differ from the host's two roundings when d·q and m nearly cancel.
        let rows = to_host(device_w.gather_rows(&ids, F32));
        let want = w.gather_rows(&ids);
        for (r, (got_row, want_row)) in rows.chunks(inp).zip(want.chunks(inp)).enumerate() {
            let scale = want_row.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got_row.iter().zip(want_row).enumerate() {
                assert!((a - b).abs() <= 4.0 * f32::EPSILON * scale, "{}: row {r} value {i} dequantized to {a} on the device, {b} on the host", ty.name());
            }
        }
        // Products: decode (1 row), verification (4, 5, 16 rows: the matrix-vector kernel's
        // row tiles, full and partial) and prefill (17, 40 rows: dequantized tiles × matmul).
        for rows in [1, 4, 5, 16, 17, 40] {
            assert_products_match(ty.name(), &w, &device_w, rows, &mut rng, &gpu);
        }
        // A subset of the rows (a truncated output layer) multiplies like those rows.
        let subset = [out as u32 - 1, 0, 3, 3];
        let host_subset = w.select_rows(&subset).unwrap();
        assert_products_match(&format!("{} rows {subset:?}", ty.name()), &host_subset, &device_w.select_rows(&subset).unwrap(), 2, &mut rng, &gpu);
        assert!(device_w.select_rows(&[out as u32]).is_err());
    }
}

#[test]
fn block_kernels_dequantize_real_blocks_like_the_gguf_package() {
    let Some(gpu) = device() else { return };
    let dir = fixtures().join("dequant");
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"] {
        let meta = read_json(&dir.join(format!("{name}.json")));
        let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let ty = GgmlType::from_id(meta["ggml_type_id"].as_u64().unwrap() as u32).unwrap();
        let want: Vec<f32> = meta["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let (out, inp) = (want.len() / 256, 256);
        let w = host_matrix(ty, raw, out, inp);
        let got = to_host(on_device(&w, &gpu).gather_rows(&(0..out as u32).collect::<Vec<_>>(), F32));
        let worst = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{name} ({}): {} real values dequantized on the device, max |Δ| {worst:.1e} vs gguf", meta["source"], want.len());
        assert!(worst <= 4.0 * f32::EPSILON * scale, "{name}: the device's values differ from gguf's by {worst}");
    }
}

#[test]
fn wide_matrices_spread_their_rows_over_two_dispatch_dimensions() {
    // 40000 output rows: more cubes than one dispatch dimension holds (65535 is the limit; the
    // kernel folds rows over x and y past 32768).
    let Some(gpu) = device() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (out, inp) = (40_000, 32);
    let w = host_matrix(GgmlType::Q8_0, random_blocks(GgmlType::Q8_0, out, inp, &mut rng), out, inp);
    let device_w = on_device(&w, &gpu);
    assert_products_match("Q8_0 [40000, 32]", &w, &device_w, 1, &mut rng, &gpu);
}

#[test]
fn matrices_split_into_row_chunks_multiply_and_look_up_like_whole_ones() {
    // Output layers above 128 MiB are split into buffers by rows; here chunks of 7 rows (1 KiB)
    // of a Q4_K matrix, with lookups and subsets whose ids cross chunks out of order.
    let Some(gpu) = device() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let (out, inp) = (45, 256);
    let w = host_matrix(GgmlType::Q4K, random_blocks(GgmlType::Q4K, out, inp, &mut rng), out, inp);
    let chunked = BlockMatrix::with_chunk_bytes(BlockFormat::Q4K, w.blocks(), out, inp, 1024, &gpu).unwrap();
    for rows in [1, 5, 17] {
        assert_products_match("Q4_K in chunks of 7 rows", &w, &chunked, rows, &mut rng, &gpu);
    }
    // Nine ids: the subset itself spans two chunks of 7 rows.
    let ids = [44u32, 0, 13, 7, 6, 44, 21, 40, 1];
    assert_eq!(to_host(chunked.gather_rows(&ids, F32)), w.gather_rows(&ids), "lookups across chunks");
    let subset = chunked.select_rows(&ids).unwrap();
    assert_products_match("a subset across chunks", &w.select_rows(&ids).unwrap(), &subset, 3, &mut rng, &gpu);
}

/// Device bytes a model loaded from `path` holds (its weights), measured by the allocator.
fn device_weight_bytes(path: &std::path::Path, gpu: &Device) -> (u64, engine::LoadedModel) {
    let before = gpu.memory_pool_usage().expect("the wgpu device reports its memory").bytes_in_use;
    let loaded = engine::load_files(engine::source::ModelFiles::Gguf(path.to_path_buf()), gpu).unwrap();
    let after = gpu.memory_pool_usage().unwrap().bytes_in_use;
    (after.saturating_sub(before), loaded)
}

#[test]
fn real_models_take_their_file_size_in_device_memory_not_four_bytes_a_weight() {
    let Some(gpu) = device() else { return };
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b"] {
        let Some(path) = real_model(name) else { return };
        let file = std::fs::metadata(&path).unwrap().len();
        let (bytes, loaded) = device_weight_bytes(&path, &gpu);
        let ratio = bytes as f64 / file as f64;
        eprintln!("{name}: {:.0} MB of weights on the device for a {:.0} MB file ({ratio:.3}×)", bytes as f64 / 1e6, file as f64 / 1e6);
        assert!(ratio <= 1.2, "{name}: the weights take {ratio:.2}× the file on the device");
        // …and the model computes from them (a forward pass of two tokens).
        let mut cache = loaded.model.new_cache(8).unwrap();
        let logits = loaded.model.forward(&[1, 2], &mut cache, LogitRows::Last).unwrap();
        assert!(logits.last().iter().all(|v| v.is_finite()), "{name}: non-finite logits");
    }
}

#[test]
fn smollm2_prefill_tiles_and_speculation_on_device_blocks() {
    let Some(gpu) = device() else { return };
    let Some(path) = real_model("smollm2-135m") else { return };
    let on_gpu = load_real(&path, &gpu, DeviceFloat::F32);
    let cpu = engine::cpu::with_kernel_mode(engine::cpu::KernelMode::Exact, || load_real(&path, &Device::flex(), DeviceFloat::F32));
    // 30 tokens in one forward: past the matrix-vector kernel's 16 rows, so every product runs on
    // dequantized row tiles (the 49152-row output layer in two of them) and Burn's matmul.
    let text = "Speculative decoding lets a small draft model propose tokens that a larger target model verifies in one pass, so the output is exactly the target's.";
    let prompt = on_gpu.tokenizer.encode(text, true).unwrap();
    assert!(prompt.len() > 16, "{} tokens", prompt.len());
    let a = all_logits(on_gpu.model.as_ref(), &prompt);
    let b = all_logits(cpu.model.as_ref(), &prompt);
    let worst = a.iter().zip(&b).map(|(x, y)| max_abs_diff(x, y)).fold(0f32, f32::max);
    eprintln!("SmolLM2, {} prompt positions at once: max |Δlogit| {worst:.2e} between wgpu and the exact CPU kernels", prompt.len());
    assert!(worst < 1e-3, "prefill logits differ by {worst}");
    // Greedy speculation on the device, drafted by the target's first 20 of 30 layers, equals
    // greedy target-only decoding on the device.
    let draft = engine::model::LayerSkip::new(on_gpu.model.as_ref(), 20).unwrap();
    let gen = GenerationConfig { max_new_tokens: 10, stop_at_eos: false, ..Default::default() };
    let want = generate(on_gpu.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let mut proposer = DraftModel::new(&draft, prompt.len() + gen.max_new_tokens).unwrap();
    let out = generate_speculative(on_gpu.model.as_ref(), &mut proposer, &prompt, &[], &SpecConfig::fixed(gen, 4), |_| {}).unwrap();
    assert_eq!(out.generation.tokens, want, "greedy speculative decoding on the device differs from target-only");
    eprintln!("SmolLM2 on wgpu, k = 4, layer-skip draft: accepted {} of {} drafted", out.metrics.accepted, out.metrics.drafted);
    assert!(out.metrics.drafted > 0);
    // The same in f16: the prefill on dequantized f16 tiles near the CPU's, and speculation
    // equal to target-only in f16.
    if !floats(&gpu).contains(&DeviceFloat::F16) {
        return;
    }
    let half = load_real(&real_model("smollm2-135m").unwrap(), &gpu, DeviceFloat::F16);
    let a = all_logits(half.model.as_ref(), &prompt);
    let worst = a.iter().zip(&b).map(|(x, y)| max_abs_diff(x, y)).fold(0f32, f32::max);
    let scale = logit_scale(&b);
    eprintln!("SmolLM2 in f16, {} prompt positions at once: max |Δlogit| {worst:.2e} (logits up to {scale:.1})", prompt.len());
    assert!(worst <= 0.01 * scale, "f16 prefill logits differ by {worst} (scale {scale})");
    let draft = engine::model::LayerSkip::new(half.model.as_ref(), 20).unwrap();
    let gen = GenerationConfig { max_new_tokens: 10, stop_at_eos: false, ..Default::default() };
    let want = generate(half.model.as_ref(), &prompt, &[], &gen, |_| {}).unwrap().tokens;
    let mut proposer = DraftModel::new(&draft, prompt.len() + gen.max_new_tokens).unwrap();
    let out = generate_speculative(half.model.as_ref(), &mut proposer, &prompt, &[], &SpecConfig::fixed(gen, 4), |_| {}).unwrap();
    assert_eq!(out.generation.tokens, want, "greedy speculative decoding in f16 on the device differs from target-only");
}

#[test]
fn block_kernels_take_and_give_f16_activations() {
    // The kernels read f16 x, accumulate in f32 and write f16 y: against the host's exact product
    // of the same (f16-rounded) x, each y within f16 rounding of itself plus f32 rounding of the sum.
    let Some(gpu) = device() else { return };
    if !floats(&gpu).contains(&DeviceFloat::F16) {
        return;
    }
    let f16 = burn::tensor::DType::F16;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let (out, inp) = (37, 512);
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16] {
        let w = host_matrix(ty, random_blocks(ty, out, inp, &mut rng), out, inp);
        let device_w = on_device(&w, &gpu);
        for rows in [1, 5, 40] {
            let x: Vec<f32> = (0..rows * inp).map(|_| half::f16::from_f32(rng.random_range(-1.0..1.0)).to_f32()).collect();
            let want = w.matmul_t_with(KernelMode::Exact, &x, rows);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inp]), (&*gpu, f16));
            let y = device_w.matmul_t(xt);
            assert_eq!(y.dtype(), f16, "{}: the product keeps the activations' float type", ty.name());
            let dense = w.to_f32();
            for (i, (a, b)) in to_host(y).iter().zip(&want).enumerate() {
                let (r, o) = (i / out, i % out);
                let magnitude: f32 = (0..inp).map(|j| (dense[o * inp + j] * x[r * inp + j]).abs()).sum();
                // Prefill (40 rows) multiplies f16 tiles with Burn's matmul: its sums may be f16 too.
                let sum_rounding = if rows > 16 { 2e-3 } else { 1e-5 };
                assert!((a - b).abs() <= 1e-3 * b.abs() + sum_rounding * magnitude, "{}, {rows} rows: y[{r}, {o}] = {a} in f16, {b} on the host", ty.name());
            }
        }
        let ids = [5u32, 0, 36];
        let rows = to_host(device_w.gather_rows(&ids, f16));
        for (a, b) in rows.iter().zip(w.gather_rows(&ids)) {
            assert_eq!(*a, half::f16::from_f32(b).to_f32(), "{}: f16 lookups are the f32 values rounded once", ty.name());
        }
    }
}
