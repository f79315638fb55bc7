//! GPT-NeoX and Gemma 3 against Python transformers on tiny random-weight models made by
//! scripts/make_tiny_models.py: `gptneox` (parallel residual, rotary over ¼ of each head),
//! `gptneox-seq` (sequential residual, rotary over ½) and `gemma3` (7 layers: six local with a
//! sliding window of 4 positions, shorter than the 12 reference tokens, and global layer 5).
//! Each is checked from its GGUF and its safetensors copy; the KV cache and batch invariance are
//! checked bitwise, wrong variants must fail the same tolerance, and bad files give typed errors.

mod common;

use burn::tensor::Device;
use common::{fixtures, max_abs_diff, read_json};
use engine::gguf::{GgmlType, Gguf};
use engine::cpu::{with_kernel_mode, KernelMode};
use engine::model::{
    load_gguf, load_hf, CausalLm, FamilyConfig, Gemma3, Gemma3Config, GptNeox, GptNeoxConfig, LogitRows, WeightSource,
};
use engine::safetensors::HfModelDir;
use engine::Error;
use std::path::{Path, PathBuf};

/// Max |Δlogit| allowed against transformers (f32 both sides), as for Llama and Qwen2.
const TOL: f32 = 2e-5;
const FAMILIES: [&str; 3] = ["gptneox", "gptneox-seq", "gemma3"];

struct Reference {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn tiny(name: &str) -> PathBuf {
    fixtures().join("tiny").join(name)
}

fn reference(name: &str) -> Reference {
    let j = read_json(&tiny(&format!("{name}.ref.json")));
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    Reference {
        tokens: ids(&j["tokens"]),
        logits: j["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect(),
        greedy: ids(&j["greedy"]),
    }
}

fn gguf_model(name: &str, device: &Device) -> Box<dyn CausalLm> {
    load_gguf(&Gguf::open(tiny(&format!("{name}.gguf"))).unwrap(), device).unwrap()
}

fn hf_model(name: &str, device: &Device) -> Box<dyn CausalLm> {
    load_hf(&HfModelDir::open(tiny(&format!("{name}-hf"))).unwrap(), device).unwrap()
}

/// Max |Δlogit| over every position against the reference.
fn logit_error(model: &dyn CausalLm, r: &Reference) -> f32 {
    let mut cache = model.new_cache(64).unwrap();
    let logits = model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
    assert_eq!(logits.rows(), r.tokens.len());
    (0..r.tokens.len()).map(|i| max_abs_diff(logits.row(i), &r.logits[i])).fold(0.0, f32::max)
}

fn check_logits(model: &dyn CausalLm, r: &Reference, what: &str) {
    let worst = logit_error(model, r);
    eprintln!("{what}: max |Δlogit| = {worst:.2e}");
    assert!(worst < TOL, "{what}: logits differ from transformers by {worst}");
}

fn greedy(model: &dyn CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let cfg = engine::generate::GenerationConfig { max_new_tokens: n, stop_at_eos: false, ..Default::default() };
    engine::generate::generate(model, prompt, &[], &cfg, |_| {}).unwrap().tokens
}

fn bitwise_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-families-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn logits_match_transformers_gguf_and_safetensors_on_flex() {
    let device = Device::flex();
    for name in FAMILIES {
        let r = reference(name);
        check_logits(gguf_model(name, &device).as_ref(), &r, &format!("{name} gguf flex"));
        check_logits(hf_model(name, &device).as_ref(), &r, &format!("{name} safetensors flex"));
    }
}

#[test]
#[allow(deprecated)] // burn-ndarray is deprecated upstream; the design keeps it covered.
fn logits_match_transformers_on_ndarray() {
    let device = Device::ndarray();
    for name in FAMILIES {
        let r = reference(name);
        check_logits(gguf_model(name, &device).as_ref(), &r, &format!("{name} gguf ndarray"));
        check_logits(hf_model(name, &device).as_ref(), &r, &format!("{name} safetensors ndarray"));
    }
}

#[test]
fn greedy_continuation_matches_transformers() {
    // 16 tokens past the 12-token prompt: Gemma's local layers see only 4 of up to 28 positions.
    let device = Device::flex();
    for name in FAMILIES {
        let r = reference(name);
        assert_eq!(greedy(gguf_model(name, &device).as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} gguf");
        assert_eq!(greedy(hf_model(name, &device).as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} hf");
    }
}

#[test]
fn incremental_forward_equals_one_pass_bitwise() {
    let device = Device::flex();
    for name in FAMILIES {
        let model = gguf_model(name, &device);
        let r = reference(name);
        let mut cache = model.new_cache(64).unwrap();
        let full = model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
        // Chunks of 1, 4 and the rest, each starting at the cache length (the last chunk starts
        // past Gemma's window).
        let mut cache = model.new_cache(64).unwrap();
        let mut row = 0;
        for chunk in [&r.tokens[..1], &r.tokens[1..5], &r.tokens[5..]] {
            let part = model.forward(chunk, &mut cache, LogitRows::All).unwrap();
            for i in 0..chunk.len() {
                assert!(bitwise_eq(part.row(i), full.row(row)), "{name}: chunked row {row} differs from the one-pass row");
                row += 1;
            }
        }
        assert_eq!(cache.len(), r.tokens.len());
        let mut cache = model.new_cache(64).unwrap();
        let last = model.forward(&r.tokens, &mut cache, LogitRows::Last).unwrap();
        assert_eq!(last.rows(), 1);
        assert!(bitwise_eq(last.row(0), full.last()), "{name}: LogitRows::Last is not the last row of All");
        // Rolling back and redoing the tail recomputes the same rows.
        cache.truncate(6);
        let junk: Vec<u32> = r.tokens[6..].iter().map(|t| (t + 17) % 256).collect();
        model.forward(&junk, &mut cache, LogitRows::All).unwrap();
        cache.truncate(6);
        let redo = model.forward(&r.tokens[6..], &mut cache, LogitRows::All).unwrap();
        for i in 0..r.tokens.len() - 6 {
            assert!(bitwise_eq(redo.row(i), full.row(6 + i)), "{name}: row {} differs after rollback", 6 + i);
        }
    }
}

#[test]
fn a_row_alone_equals_the_same_row_in_a_five_row_forward_bitwise() {
    let device = Device::flex();
    for name in FAMILIES {
        for model in [gguf_model(name, &device), hf_model(name, &device)] {
            let tokens = reference(name).tokens;
            let split = tokens.len() - 5;
            let mut batch_cache = model.new_cache(64).unwrap();
            model.forward(&tokens[..split], &mut batch_cache, LogitRows::Last).unwrap();
            let batch = model.forward(&tokens[split..], &mut batch_cache, LogitRows::All).unwrap();
            let mut single_cache = model.new_cache(64).unwrap();
            model.forward(&tokens[..split], &mut single_cache, LogitRows::Last).unwrap();
            for i in 0..5 {
                let single = model.forward(&tokens[split + i..split + i + 1], &mut single_cache, LogitRows::Last).unwrap();
                assert!(bitwise_eq(batch.row(i), single.row(0)), "{name}: row {i} of a 5-token forward differs from decoding it alone");
            }
        }
    }
}

#[test]
fn the_logit_check_has_power_wrong_variants_fail_it() {
    let device = Device::flex();
    let wrong = |what: &str, model: &dyn CausalLm, r: &Reference| {
        let worst = logit_error(model, r);
        eprintln!("wrong variant ({what}): max |Δlogit| = {worst:.2e}");
        assert!(worst > 100.0 * TOL, "{what} went unnoticed (max Δ {worst})");
    };
    // GPT-NeoX: rotary over the whole head instead of its first quarter; the other residual form.
    let g = Gguf::open(tiny("gptneox.gguf")).unwrap();
    let r = reference("gptneox");
    let right = GptNeoxConfig::from_gguf(&g).unwrap();
    assert_eq!((right.base.rope_dims, right.base.head_dim, right.parallel_residual), (4, 16, true));
    let cfg = GptNeoxConfig { base: engine::model::ModelConfig { rope_dims: 16, ..right.base.clone() }, ..right.clone() };
    wrong("full-head rotary", &GptNeox::load(cfg, &g, &device).unwrap(), &r);
    let cfg = GptNeoxConfig { parallel_residual: false, ..right.clone() };
    wrong("sequential residual on a parallel model", &GptNeox::load(cfg, &g, &device).unwrap(), &r);
    let cfg = GptNeoxConfig { activation: engine::model::Gelu::Tanh, ..right.clone() };
    let tanh = logit_error(&GptNeox::load(cfg, &g, &device).unwrap(), &r);
    eprintln!("wrong variant (tanh GELU for exact): max |Δlogit| = {tanh:.2e}");
    assert!(tanh > TOL, "tanh GELU is indistinguishable from exact GELU here ({tanh})");
    // Gemma 3: no sliding window; the global RoPE base on local layers; every layer global.
    let g = Gguf::open(tiny("gemma3.gguf")).unwrap();
    let r = reference("gemma3");
    let right = Gemma3Config::from_gguf(&g).unwrap();
    assert_eq!(right.sliding_window, Some(4));
    assert_eq!(right.local_layers, [true, true, true, true, true, false, true]);
    wrong("missing window", &Gemma3::load(Gemma3Config { sliding_window: None, ..right.clone() }, &g, &device).unwrap(), &r);
    let cfg = Gemma3Config { local_rope_theta: right.base.rope_theta, ..right.clone() };
    wrong("global rope base on local layers", &Gemma3::load(cfg, &g, &device).unwrap(), &r);
    let cfg = Gemma3Config { local_layers: vec![true; 7], ..right.clone() };
    wrong("layer 5 local", &Gemma3::load(cfg, &g, &device).unwrap(), &r);
}

#[test]
fn windowed_attention_kernel_sees_exactly_the_last_window_keys() {
    use engine::cpu::causal_attention;
    use engine::model::AttentionShape;
    let data = |n: usize, seed: u32| -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    };
    let (heads, kv, d, start, n) = (4, 2, 8, 6, 3);
    let cap = start + n;
    // q: [n, heads, d]; k, v: [kv_heads, cap, d].
    let (q, k, v) = (data(n * heads * d, 1), data(kv * cap * d, 2), data(kv * cap * d, 3));
    let shape = |window: Option<usize>| AttentionShape { heads, kv_heads: kv, head_dim: d, scale: 0.3, window };
    let full = causal_attention(&q, &k, &v, &shape(None), n, cap, start);
    // A window covering everything changes nothing.
    assert_eq!(full, causal_attention(&q, &k, &v, &shape(Some(cap)), n, cap, start));
    // Window 2: query i at position start + i attends to keys start + i − 1 and start + i only,
    // the same as causal attention of that one query over a cache holding just those two keys.
    let w = 2;
    let windowed = causal_attention(&q, &k, &v, &shape(Some(w)), n, cap, start);
    for i in 0..n {
        let first = start + i + 1 - w;
        let cut = |t: &[f32]| -> Vec<f32> { (0..kv).flat_map(|h| t[(h * cap + first) * d..(h * cap + first + w) * d].to_vec()).collect() };
        let qi = &q[i * heads * d..(i + 1) * heads * d];
        let alone = causal_attention(qi, &cut(&k), &cut(&v), &shape(None), 1, w, w - 1);
        assert_eq!(&windowed[i * heads * d..(i + 1) * heads * d], &alone[..], "query {i}");
    }
    assert_ne!(full, windowed);
}

/// The Burn-ops path (what GPU devices run: additive masks, the window among them) on flex.
#[test]
fn burn_ops_path_matches_transformers_too() {
    let device = Device::flex();
    for name in FAMILIES {
        let r = reference(name);
        let model = engine::model::with_burn_ops(|| gguf_model(name, &device));
        check_logits(model.as_ref(), &r, &format!("{name} gguf, Burn ops on flex"));
        assert_eq!(greedy(model.as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} Burn ops greedy");
    }
}

/// The bytes of `file` with the first occurrence of `from` replaced by `to` (same length).
fn patched(file: &Path, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(file).unwrap();
    let pos = bytes.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("{from:?} not in {}", file.display()));
    bytes[pos..pos + to.len()].copy_from_slice(to);
    bytes
}

fn load_gguf_err(path: &Path) -> Error {
    match Gguf::open(path) {
        Ok(g) => load_gguf(&g, &Device::flex()).err().expect("the broken file must not load"),
        Err(e) => e,
    }
}

#[test]
fn bad_gguf_files_are_typed_errors_naming_the_file() {
    let dir = temp_dir("gguf");
    // An architecture we do not have (general.architecture is the file's first "gemma3").
    let path = dir.join("gemmax.gguf");
    std::fs::write(&path, patched(&tiny("gemma3.gguf"), b"gemma3", b"gemmax")).unwrap();
    let err = load_gguf_err(&path);
    assert!(matches!(&err, Error::UnsupportedArchitecture { arch, .. } if arch == "gemmax"), "{err}");
    assert!(err.to_string().contains("gemmax.gguf") && err.to_string().contains("gptneox"), "{err}");
    // A missing tensor (renamed in the tensor index).
    let path = dir.join("missing.gguf");
    std::fs::write(&path, patched(&tiny("gptneox.gguf"), b"blk.1.ffn_down.weight", b"blk.1.ffn_down.weighz")).unwrap();
    let err = load_gguf_err(&path);
    assert!(matches!(&err, Error::MissingTensor { tensor, .. } if tensor == "blk.1.ffn_down.weight"), "{err}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    // A wrong shape: the metadata claims an MLP width of 96, the tensors have 128.
    let key = b"gptneox.feed_forward_length";
    let mut bytes = std::fs::read(tiny("gptneox.gguf")).unwrap();
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "a u32 value follows the key");
    assert_eq!(u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()), 128);
    bytes[at + 4..at + 8].copy_from_slice(&96u32.to_le_bytes());
    let path = dir.join("shape.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = load_gguf_err(&path);
    assert!(matches!(&err, Error::TensorShape { expected, found, .. } if expected[0] == 96 && found[0] == 128), "{err}");
    assert!(err.to_string().contains("shape.gguf") && err.to_string().contains("ffn_up"), "{err}");
}

/// A copy of tiny/<name>-hf with `edit` applied to its config.json.
fn hf_copy(name: &str, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = temp_dir(tag);
    let mut config = read_json(&tiny(&format!("{name}-hf/config.json")));
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(tiny(&format!("{name}-hf/model.safetensors")), dir.join("model.safetensors")).unwrap();
    dir
}

fn load_hf_err(dir: &Path) -> Error {
    match HfModelDir::open(dir) {
        Ok(hf) => load_hf(&hf, &Device::flex()).err().expect("the broken directory must not load"),
        Err(e) => e,
    }
}

/// Every tensor of a safetensors file as (name, dtype, shape, bytes).
fn tensors(path: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_tensors(path: &Path, list: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = list
        .iter()
        .map(|(n, dt, shape, data)| (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn bad_hf_directories_are_typed_errors_naming_the_file() {
    // Unsupported model_type (the multimodal Gemma 3 wrapper is not the text model).
    let dir = hf_copy("gemma3", "hf-arch", |c| c["model_type"] = "gemma3".into());
    let err = load_hf_err(&dir);
    assert!(matches!(&err, Error::UnsupportedArchitecture { arch, .. } if arch == "gemma3"), "{err}");
    assert!(err.to_string().contains("config.json") && err.to_string().contains("gemma3_text"), "{err}");
    // A config whose MLP width disagrees with the tensors.
    let dir = hf_copy("gptneox", "hf-shape", |c| c["intermediate_size"] = 96.into());
    let err = load_hf_err(&dir);
    assert!(matches!(&err, Error::TensorShape { tensor, .. } if tensor == "blk.0.ffn_up.weight"), "{err}");
    assert!(err.to_string().contains(&dir.display().to_string()), "{err}");
    // A missing tensor.
    let dir = hf_copy("gemma3", "hf-missing", |_| {});
    let mut list = tensors(&dir.join("model.safetensors"));
    list.retain(|t| t.0 != "model.layers.3.self_attn.k_norm.weight");
    write_tensors(&dir.join("model.safetensors"), &list);
    let err = load_hf_err(&dir);
    assert!(matches!(&err, Error::MissingTensor { tensor, .. } if tensor == "blk.3.attn_k_norm.weight"), "{err}");
    assert!(err.to_string().contains(&dir.display().to_string()), "{err}");
    // A config.json without a field the family needs.
    let dir = hf_copy("gemma3", "hf-field", |c| {
        c.as_object_mut().unwrap().remove("num_key_value_heads");
    });
    let err = load_hf_err(&dir);
    assert!(matches!(err, Error::Metadata { .. }) && err.to_string().contains("num_key_value_heads"), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn sharded_directory_loads_and_a_mismatched_index_is_a_typed_error() {
    let dir = hf_copy("gemma3", "shards", |_| {});
    let list = tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (first, second): (Vec<_>, Vec<_>) = list.iter().cloned().partition(|t| t.0.contains("layers.0.") || t.0.contains("embed"));
    write_tensors(&dir.join("model-00001-of-00002.safetensors"), &first);
    write_tensors(&dir.join("model-00002-of-00002.safetensors"), &second);
    let index = |wrong: Option<&str>| {
        let map: serde_json::Map<String, serde_json::Value> = list
            .iter()
            .map(|t| {
                let shard = if first.iter().any(|f| f.0 == t.0) { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
                let shard = if Some(t.0.as_str()) == wrong { "model-00001-of-00002.safetensors" } else { shard };
                (t.0.clone(), shard.into())
            })
            .collect();
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    };
    index(None);
    let r = reference("gemma3");
    check_logits(load_hf(&HfModelDir::open(&dir).unwrap(), &Device::flex()).unwrap().as_ref(), &r, "gemma3 two shards");
    // The index puts a second-shard tensor in the first shard.
    index(Some("model.norm.weight"));
    let err = HfModelDir::open(&dir).err().expect("a mismatched index must not open");
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors.index.json") && err.to_string().contains("model.norm.weight"), "{err}");
    // A shard the index names is gone.
    index(None);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = HfModelDir::open(&dir).err().expect("a missing shard must not open");
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("model-00002-of-00002.safetensors"), "{err}");
}

/// tiny/<name>-hf rewritten with every floating tensor in `dtype` (f16 or bf16), and a twin whose
/// f32 tensors hold exactly the rounded values.
fn half_precision_copies(name: &str, dtype: safetensors::Dtype) -> (PathBuf, PathBuf) {
    let tag = format!("{name}-{dtype:?}");
    let (half_dir, twin_dir) = (hf_copy(name, &format!("{tag}-packed"), |_| {}), hf_copy(name, &format!("{tag}-f32"), |_| {}));
    let list = tensors(&half_dir.join("model.safetensors"));
    let round = |x: f32| -> (Vec<u8>, f32) {
        match dtype {
            safetensors::Dtype::F16 => {
                let h = half::f16::from_f32(x);
                (h.to_le_bytes().to_vec(), h.to_f32())
            }
            _ => {
                let h = half::bf16::from_f32(x);
                (h.to_le_bytes().to_vec(), h.to_f32())
            }
        }
    };
    let (mut packed, mut twin) = (Vec::new(), Vec::new());
    for (n, dt, shape, data) in list {
        assert_eq!(dt, safetensors::Dtype::F32);
        let values = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        let (bytes, rounded): (Vec<Vec<u8>>, Vec<f32>) = values.map(round).unzip();
        packed.push((n.clone(), dtype, shape.clone(), bytes.concat()));
        twin.push((n, dt, shape, rounded.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    write_tensors(&half_dir.join("model.safetensors"), &packed);
    write_tensors(&twin_dir.join("model.safetensors"), &twin);
    (half_dir, twin_dir)
}

#[test]
fn f16_and_bf16_safetensors_stay_packed_and_multiply_like_their_f32_values() {
    let device = Device::flex();
    for (dtype, ggml) in [(safetensors::Dtype::F16, GgmlType::F16), (safetensors::Dtype::BF16, GgmlType::BF16)] {
        for name in ["gptneox", "gemma3"] {
            let (packed_dir, twin_dir) = half_precision_copies(name, dtype);
            let packed = HfModelDir::open(&packed_dir).unwrap();
            // Matrices come out packed, straight from the map; norms (and Gemma's shifted norms) do not.
            let matrix = if name == "gptneox" { "blk.0.attn_qkv.weight" } else { "blk.0.attn_q.weight" };
            let (w, shape) = with_kernel_mode(KernelMode::Exact, || packed.load_packed(matrix)).unwrap().expect("packed");
            assert_eq!(w.ggml_type(), ggml);
            assert_eq!(w.size_bytes(), shape[0] * shape[1] * 2);
            assert!(with_kernel_mode(KernelMode::Exact, || packed.load_packed("blk.0.attn_norm.weight")).unwrap().is_none());
            assert!(with_kernel_mode(KernelMode::F32, || packed.load_packed(matrix)).unwrap().is_none(), "f32 mode unpacks");
            // Exact kernels dequantize each row to the very f32 values of the twin: same logits, bitwise.
            let r = reference(name);
            let run = |dir: &Path| {
                let model = with_kernel_mode(KernelMode::Exact, || load_hf(&HfModelDir::open(dir).unwrap(), &device)).unwrap();
                let mut cache = model.new_cache(32).unwrap();
                model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap()
            };
            let (a, b) = (run(&packed_dir), run(&twin_dir));
            for i in 0..r.tokens.len() {
                assert!(bitwise_eq(a.row(i), b.row(i)), "{name} {dtype:?}: row {i} differs from the f32 twin");
            }
            // And the rounding moves logits only a little from transformers' f32 model.
            let worst = (0..r.tokens.len()).map(|i| max_abs_diff(a.row(i), &r.logits[i])).fold(0.0, f32::max);
            eprintln!("{name} {dtype:?} packed: max |Δlogit| vs f32 transformers = {worst:.2e}");
            assert!(worst < 0.1, "{name} {dtype:?}: {worst}");
        }
    }
}

#[test]
fn configs_from_gguf_and_safetensors_agree() {
    for name in FAMILIES {
        let g = FamilyConfig::from_gguf(&Gguf::open(tiny(&format!("{name}.gguf"))).unwrap()).unwrap();
        let h = HfModelDir::open(tiny(&format!("{name}-hf"))).unwrap().family_config().unwrap();
        let (a, b) = (g.base(), h.base());
        assert_eq!(
            (a.vocab_size, a.hidden_size, a.intermediate_size, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.rope_dims),
            (b.vocab_size, b.hidden_size, b.intermediate_size, b.n_layers, b.n_heads, b.n_kv_heads, b.head_dim, b.rope_dims),
            "{name}"
        );
        assert_eq!((a.rope_theta, a.norm_eps as f32, a.tied_embeddings, a.qkv_bias), (b.rope_theta, b.norm_eps as f32, b.tied_embeddings, b.qkv_bias), "{name}");
        match (g, h) {
            (FamilyConfig::GptNeox(a), FamilyConfig::GptNeox(b)) => {
                assert_eq!((a.parallel_residual, a.activation), (b.parallel_residual, b.activation), "{name}");
                assert_eq!((a.qkv_layout, b.qkv_layout), (engine::model::QkvLayout::Grouped, engine::model::QkvLayout::PerHead));
            }
            (FamilyConfig::Gemma3(a), FamilyConfig::Gemma3(b)) => {
                assert_eq!((a.sliding_window, &a.local_layers, a.local_rope_theta), (b.sliding_window, &b.local_layers, b.local_rope_theta));
                assert_eq!(a.query_scale, b.query_scale);
            }
            (g, h) => panic!("{name}: families differ: {g:?} / {h:?}"),
        }
    }
}

#[test]
fn inspect_reports_the_family() {
    use engine::source::ModelFiles;
    let report = engine::inspect::inspect(&ModelFiles::Gguf(tiny("gemma3.gguf"))).unwrap();
    assert!(report.supported);
    let text = report.to_string();
    assert!(text.contains("sliding window 4") && text.contains("global layers 5"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["config"]["family"], "gemma3");
    assert_eq!(json["config"]["n_layers"], 7);
    let report = engine::inspect::inspect(&ModelFiles::HfDir(tiny("gptneox-seq-hf"))).unwrap();
    assert!(report.supported && report.architecture == "gpt_neox");
    assert!(report.to_string().contains("sequential residual"), "{report}");
}
