//! Model sources that need no network: an `hf:` repo served from a pre-populated hub cache while
//! the hub is unreachable, and typed errors for everything else.

mod common;

use common::{fixtures, max_abs_diff, read_json};
use engine::model::{load_hf, LogitRows};
use engine::safetensors::HfModelDir;
use engine::source::{resolve, ModelFiles};
use engine::Error;

#[test]
fn hf_source_loads_from_the_hub_cache_when_offline() {
    // Lay out the tiny Qwen2 directory the way huggingface_hub caches it.
    let home = std::env::temp_dir().join(format!("specdec-hf-cache-{}", std::process::id()));
    let repo = home.join("hub").join("models--specdec--tiny-qwen2");
    let snapshot = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123456789abcdef").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny/qwen2-hf").join(f), snapshot.join(f)).unwrap();
    }
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9"); // nothing listens: offline

    let files = resolve("hf:specdec/tiny-qwen2").unwrap();
    let ModelFiles::HfDir(dir) = &files else { panic!("expected a directory, got {files:?}") };
    assert_eq!(dir, &snapshot);
    let model = load_hf(&HfModelDir::open(dir).unwrap(), &burn::tensor::Device::flex()).unwrap();
    let r = read_json(&fixtures().join("tiny/qwen2.ref.json"));
    let tokens: Vec<u32> = r["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let mut cache = model.new_cache(32).unwrap();
    let logits = model.forward(&tokens, &mut cache, LogitRows::Last).unwrap();
    let want: Vec<f32> = r["logits"].as_array().unwrap().last().unwrap().as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert!(max_abs_diff(logits.last(), &want) < 2e-5);

    // A repo that is not cached: a clear offline error, not a hang or a panic.
    let err = resolve("hf:specdec/not-cached").unwrap_err();
    assert!(matches!(err, Error::Offline { .. }), "{err}");
    assert!(err.to_string().contains("specdec/not-cached"), "{err}");
}

#[test]
fn hf_directory_problems_are_typed_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("specdec-bad-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Unsupported architecture in config.json.
    let mut config: serde_json::Value = read_json(&fixtures().join("tiny/llama-hf/config.json"));
    config["model_type"] = "mamba".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(fixtures().join("tiny/llama-hf/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = load_hf(&HfModelDir::open(&dir).unwrap(), &burn::tensor::Device::flex()).err().unwrap();
    assert!(matches!(err, Error::UnsupportedArchitecture { .. }) && err.to_string().contains("config.json"), "{err}");
    // An index naming a shard that does not hold the tensor.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model.safetensors", "lm_head.weight": "model-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = HfModelDir::open(&dir).err().unwrap();
    assert!(err.to_string().contains("model-00002.safetensors"), "{err}");
    // Corrupt safetensors.
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let err = HfModelDir::open(&dir).err().unwrap();
    assert!(matches!(err, Error::Safetensors { .. }) && err.to_string().contains("model.safetensors"), "{err}");
}
