//! Tiny random-weight Llama and Qwen2 models made by scripts/make_tiny_models.py with Python
//! transformers: our logits must match the reference for every position, from both the GGUF and
//! the safetensors copy, on flex and ndarray, with the host kernels and with Burn ops (the path
//! GPU devices take); and the KV cache must behave.

mod common;

use burn::tensor::Device;
use common::{fixtures, max_abs_diff, read_json};
use engine::gguf::Gguf;
use engine::model::{load_gguf, load_hf, CausalLm, LogitRows};
use engine::safetensors::HfModelDir;
use engine::Error;

/// Max |Δlogit| allowed against transformers (f32 both sides; measured ≈ 2e-6, logits are O(1)).
const TOL: f32 = 2e-5;

struct Reference {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn reference(name: &str) -> Reference {
    let j = read_json(&fixtures().join("tiny").join(format!("{name}.ref.json")));
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
    let g = Gguf::open(fixtures().join("tiny").join(format!("{name}.gguf"))).unwrap();
    load_gguf(&g, device).unwrap()
}

fn hf_model(name: &str, device: &Device) -> Box<dyn CausalLm> {
    let dir = HfModelDir::open(fixtures().join("tiny").join(format!("{name}-hf"))).unwrap();
    load_hf(&dir, device).unwrap()
}

fn check_logits(model: &dyn CausalLm, r: &Reference, what: &str) {
    let mut cache = model.new_cache(64).unwrap();
    let logits = model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
    assert_eq!(logits.rows(), r.tokens.len());
    let mut worst = 0f32;
    for (i, want) in r.logits.iter().enumerate() {
        worst = worst.max(max_abs_diff(logits.row(i), want));
    }
    eprintln!("{what}: max |Δlogit| = {worst:.2e}");
    assert!(worst < TOL, "{what}: logits differ from transformers by {worst}");
}

fn greedy(model: &dyn CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let cfg = engine::generate::GenerationConfig { max_new_tokens: n, stop_at_eos: false, ..Default::default() };
    engine::generate::generate(model, prompt, &[], &cfg, |_| {}).unwrap().tokens
}

#[test]
fn logits_match_transformers_gguf_and_safetensors_on_flex() {
    let device = Device::flex();
    for name in ["llama", "qwen2"] {
        let r = reference(name);
        check_logits(gguf_model(name, &device).as_ref(), &r, &format!("{name} gguf flex"));
        check_logits(hf_model(name, &device).as_ref(), &r, &format!("{name} safetensors flex"));
    }
}

#[test]
#[allow(deprecated)] // burn-ndarray is deprecated upstream; the design keeps it covered.
fn logits_match_transformers_on_ndarray() {
    let device = Device::ndarray();
    for name in ["llama", "qwen2"] {
        let r = reference(name);
        check_logits(gguf_model(name, &device).as_ref(), &r, &format!("{name} gguf ndarray"));
        // ndarray's own tensor ops, as a non-CPU device would run them.
        let burn = engine::model::with_burn_ops(|| gguf_model(name, &device));
        check_logits(burn.as_ref(), &r, &format!("{name} gguf ndarray, Burn ops"));
        assert_eq!(greedy(burn.as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} ndarray greedy, Burn ops");
    }
}

/// The Burn-op path (what wgpu runs: tensor activations, tensor KV cache, masked attention) on
/// flex: the same logits, all at once and one token at a time.
#[test]
fn burn_ops_path_matches_transformers_and_decodes_incrementally() {
    let device = Device::flex();
    for name in ["llama", "qwen2"] {
        let r = reference(name);
        let model = engine::model::with_burn_ops(|| gguf_model(name, &device));
        check_logits(model.as_ref(), &r, &format!("{name} gguf flex, Burn ops"));
        let hf = engine::model::with_burn_ops(|| hf_model(name, &device));
        check_logits(hf.as_ref(), &r, &format!("{name} safetensors flex, Burn ops"));
        let mut cache = model.new_cache(64).unwrap();
        let mut worst = 0f32;
        for (i, &t) in r.tokens.iter().enumerate() {
            let logits = model.forward(&[t], &mut cache, LogitRows::Last).unwrap();
            worst = worst.max(max_abs_diff(logits.last(), &r.logits[i]));
        }
        assert!(worst < TOL, "{name}: incremental Burn-op decoding differs by {worst}");
        assert_eq!(greedy(model.as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} greedy, Burn ops");
    }
}

#[test]
fn the_logit_check_has_power_wrong_rope_style_fails_it() {
    // The GGUF llama has Q/K rows permuted for adjacent-pair rotation; rotating halves instead must
    // be caught by the same tolerance.
    let device = Device::flex();
    let g = Gguf::open(fixtures().join("tiny").join("llama.gguf")).unwrap();
    let mut cfg = engine::model::Llama::config_from_gguf(&g).unwrap();
    assert_eq!(cfg.rope_style, engine::model::RopeStyle::Normal);
    cfg.rope_style = engine::model::RopeStyle::Neox;
    let wrong = engine::model::Llama::load(cfg, &g, &device).unwrap();
    let r = reference("llama");
    let mut cache = wrong.new_cache(64).unwrap();
    let logits = wrong.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
    let worst = (0..r.tokens.len()).map(|i| max_abs_diff(logits.row(i), &r.logits[i])).fold(0.0, f32::max);
    assert!(worst > 100.0 * TOL, "a wrong rotation went unnoticed (max Δ {worst})");
}

#[test]
fn greedy_continuation_matches_transformers() {
    let device = Device::flex();
    for name in ["llama", "qwen2"] {
        let r = reference(name);
        assert_eq!(greedy(gguf_model(name, &device).as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} gguf");
        assert_eq!(greedy(hf_model(name, &device).as_ref(), &r.tokens, r.greedy.len()), r.greedy, "{name} hf");
    }
}

#[test]
fn incremental_forward_equals_one_pass() {
    let device = Device::flex();
    for name in ["llama", "qwen2"] {
        let model = gguf_model(name, &device);
        let r = reference(name);
        let mut cache = model.new_cache(64).unwrap();
        let full = model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
        // Chunks of 1, 4 and the rest, each starting at the cache length.
        let mut cache = model.new_cache(64).unwrap();
        let mut row = 0;
        for chunk in [&r.tokens[..1], &r.tokens[1..5], &r.tokens[5..]] {
            let part = model.forward(chunk, &mut cache, LogitRows::All).unwrap();
            for i in 0..chunk.len() {
                let d = max_abs_diff(part.row(i), full.row(row));
                assert!(d < 1e-5, "{name}: chunked row {row} differs by {d}");
                row += 1;
            }
        }
        assert_eq!(cache.len(), r.tokens.len());
        // LogitRows::Last is the last row of All.
        let mut cache = model.new_cache(64).unwrap();
        let last = model.forward(&r.tokens, &mut cache, LogitRows::Last).unwrap();
        assert_eq!(last.rows(), 1);
        assert!(max_abs_diff(last.row(0), full.last()) < 1e-5);
    }
}

#[test]
fn truncate_rolls_back_and_recomputes_identically() {
    let device = Device::flex();
    let model = gguf_model("llama", &device);
    let r = reference("llama");
    let mut cache = model.new_cache(32).unwrap();
    let full = model.forward(&r.tokens, &mut cache, LogitRows::All).unwrap();
    // Overwrite positions 6.. with other tokens, roll back, and redo the originals.
    cache.truncate(6);
    let junk: Vec<u32> = r.tokens[6..].iter().map(|t| (t + 17) % 256).collect();
    model.forward(&junk, &mut cache, LogitRows::All).unwrap();
    cache.truncate(6);
    assert_eq!(cache.len(), 6);
    let redo = model.forward(&r.tokens[6..], &mut cache, LogitRows::All).unwrap();
    for i in 0..r.tokens.len() - 6 {
        let d = max_abs_diff(redo.row(i), full.row(6 + i));
        assert!(d < 1e-5, "row {} differs by {d} after rollback", 6 + i);
    }
}

#[test]
fn overflow_and_bad_tokens_are_typed_errors_that_leave_the_cache_alone() {
    let device = Device::flex();
    let model = gguf_model("qwen2", &device);
    let mut cache = model.new_cache(4).unwrap();
    model.forward(&[1, 2, 3], &mut cache, LogitRows::Last).unwrap();
    let err = model.forward(&[4, 5], &mut cache, LogitRows::Last).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { needed: 5, capacity: 4 }), "{err}");
    assert_eq!(cache.len(), 3, "a failed forward must not move the cache");
    let err = model.forward(&[100_000], &mut cache, LogitRows::Last).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(matches!(model.forward(&[], &mut cache, LogitRows::Last), Err(Error::InvalidArgument(_))));
    let ctx = model.config().context_length;
    assert!(matches!(model.new_cache(ctx + 1), Err(Error::ContextOverflow { .. })));
    // generate() refuses up front when prompt + budget cannot fit.
    let cfg = engine::generate::GenerationConfig { max_new_tokens: ctx, ..Default::default() };
    let err = engine::generate::generate(model.as_ref(), &[1, 2, 3], &[], &cfg, |_| {}).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { .. }), "{err}");
}

#[test]
fn unsupported_architecture_names_the_file() {
    let dir = std::env::temp_dir().join(format!("specdec-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Copy the tiny llama GGUF and rename its architecture in the metadata (same length string).
    let mut bytes = std::fs::read(fixtures().join("tiny").join("llama.gguf")).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"llama").unwrap();
    bytes[pos..pos + 5].copy_from_slice(b"mamba");
    let path = dir.join("mamba.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let err = match Gguf::open(&path) {
        Ok(g) => load_gguf(&g, &Device::flex()).err().expect("mamba must not load"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("mamba.gguf"), "{err}");
}
