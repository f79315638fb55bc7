//! The `specdec` binary end to end: output shapes, and clear errors (never panics) on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn specdec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specdec")).args(args).output().expect("run specdec")
}

fn tiny(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures/tiny")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_file(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("specdec-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn generate_json_has_the_documented_fields() {
    let model = tiny("llama.gguf");
    let o = specdec(&["generate", "--model", &model, "--prompt", "hello", "--max-new-tokens", "6", "--ignore-eos", "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["text", "tokens", "prompt_tokens", "prefill_s", "decode_s", "decode_tok_s", "prefill_tok_s", "load_s"] {
        assert!(j.get(key).is_some(), "missing `{key}` in {j}");
    }
    assert_eq!(j["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(j["prompt_tokens"], 4, "tiny byte-level vocabulary: h+e merge, then l, l, o");
}

#[test]
fn same_seed_same_sampled_text() {
    let model = tiny("qwen2.gguf");
    let run = |seed: &str| {
        let o = specdec(&["generate", "--model", &model, "--prompt", "abc", "--max-new-tokens", "12", "--ignore-eos",
            "--temperature", "0.9", "--top-p", "0.95", "--seed", seed, "--json", "--threads", "1"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["tokens"].clone()
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn inspect_describes_the_model() {
    let o = specdec(&["inspect", &tiny("qwen2.gguf")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("qwen2") && out.contains("tokenizer") && out.contains("F32"), "{out}");
    let o = specdec(&["inspect", "--json", &tiny("llama.gguf")]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["config"]["n_layers"], 2);
}

#[test]
fn models_lists_the_short_names() {
    let o = specdec(&["models"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for name in ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"] {
        assert!(out.contains(name), "{out}");
    }
}

#[test]
fn bad_inputs_fail_cleanly_with_the_file_named() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--model".into(), "/no/such/model.gguf".into()], "/no/such/model.gguf"),
        (vec!["--model".into(), temp_file("bad-magic.gguf", b"NOTGGUF at all, just text")], "not a valid GGUF"),
        (vec!["--model".into(), temp_file("truncated.gguf", &std::fs::read(tiny("llama.gguf")).unwrap()[..5000])], "truncated.gguf"),
        (vec!["--model".into(), "hf:owner-that/does-not-exist".into()], "hf:"),
    ];
    for (mut args, needle) in cases {
        let mut full = vec!["generate".to_string()];
        full.append(&mut args);
        full.extend(["--prompt".into(), "hi".into()]);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let o = specdec(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{full:?}: {err}");
        assert!(err.contains("error:") && !err.contains("panicked"), "{full:?}: {err}");
        if needle != "hf:" {
            assert!(err.contains(needle), "{full:?}: expected `{needle}` in {err}");
        }
    }
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let long = "x".repeat(300); // tiny models have a 128-token context, one token per byte
    let o = specdec(&["generate", "--model", &tiny("llama.gguf"), "--prompt", &long, "--max-new-tokens", "4"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("context overflow"), "{err}");
}

#[test]
fn offline_hub_is_reported_as_offline() {
    // No network here (and in CI): an hf: source must say so clearly, not hang or panic.
    let dir = std::env::temp_dir().join(format!("specdec-hf-home-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args(["inspect", "hf:specdec-test/definitely-not-cached"])
        .env("HF_HOME", &dir)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("offline") || err.contains("cannot reach"), "{err}");
}

#[test]
fn pairing_models_with_different_vocabularies_is_refused() {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        eprintln!("skipping: SPECDEC_SKIP_REAL=1");
        return;
    }
    let o = specdec(&["generate", "--model", "qwen2.5-coder-0.5b", "--draft", "smollm2-135m", "--prompt", "hi", "--max-new-tokens", "2"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vocabulary mismatch") && err.contains("smollm2-135m"), "{err}");
}

#[test]
fn speculative_json_reports_the_metrics() {
    let model = tiny("llama.gguf");
    let o = specdec(&["generate", "--model", &model, "--draft", &model, "--k", "3", "--prompt", "hello", "--max-new-tokens", "12",
        "--ignore-eos", "--json", "--baseline", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["drafted", "accepted", "iterations", "alpha", "tau", "per_position", "draft_s", "verify_s", "speedup", "c"] {
        assert!(j.get(key).is_some(), "missing `{key}` in {j}");
    }
    assert_eq!(j["alpha"], 1.0, "a self-draft is always accepted");
    assert_eq!(j["baseline_tokens_equal"], true);
    assert_eq!(j["per_position"].as_array().unwrap().len(), 3);
}

#[test]
fn certify_passes_a_real_draft_target_pair_on_tiny_models() {
    // The tiny llama and a perturbed copy of it: α̂ ≈ 0.4, so acceptances, rejections and residual
    // sampling all happen, and the certificate must still find no difference.
    // top-k 3 keeps the sequence space small (≤ 27 continuations of 3 tokens) so the test has power.
    let o = specdec(&["certify", "--model", &tiny("llama.gguf"), "--draft", &tiny("llama-draft.gguf"), "--k", "2",
        "--temperature", "1.0", "--top-k", "3", "--samples", "3000", "--max-new-tokens", "3", "--prompt", "hello",
        "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["consistent_with_lossless"], true, "{j}");
    let alpha = j["alpha_hat"].as_f64().unwrap();
    assert!(alpha > 0.1 && alpha < 0.9, "the pair should agree sometimes, not always: {j}");
    assert!(j["cells"].as_u64().unwrap() >= 20, "too few cells for a meaningful test: {j}");
}

#[test]
fn every_proposer_and_schedule_reproduces_greedy_target_only_output() {
    let model = tiny("llama.gguf");
    let draft = tiny("llama-draft.gguf");
    let base = ["generate", "--model", model.as_str(), "--prompt", "hello hello hello", "--max-new-tokens", "24", "--ignore-eos", "--json", "--threads", "1"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = specdec(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let want = run(&[])["tokens"].clone();
    for extra in [
        vec!["--draft", draft.as_str(), "--k", "3"],
        vec!["--draft", draft.as_str(), "--schedule", "heuristic", "--k", "1", "--max-k", "6"],
        vec!["--draft", draft.as_str(), "--schedule", "optimal", "--max-k", "6", "--cost-ratio", "0.2"],
        vec!["--draft", draft.as_str(), "--confidence", "0.2"],
        vec!["--draft", draft.as_str(), "--schedule", "confidence", "--k", "5"],
        vec!["--proposer", "layer-skip", "--draft-layers", "1", "--schedule", "confidence", "--confidence", "0.6"],
        vec!["--proposer", "ngram", "--ngram", "2"],
        vec!["--proposer", "ngram", "--schedule", "heuristic"],
        vec!["--proposer", "layer-skip", "--draft-layers", "1"],
    ] {
        let j = run(&extra);
        assert_eq!(j["tokens"], want, "{extra:?}");
        assert!(j.get("alpha").is_some() && j.get("schedule").is_some(), "{extra:?}: {j}");
    }
    // Contradictory flags are refused.
    let o = specdec(&["generate", "--model", &model, "--prompt", "x", "--proposer", "draft"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--draft"), "{}", stderr(&o));
    let o = specdec(&["generate", "--model", &model, "--prompt", "x", "--proposer", "ngram", "--schedule", "confidence"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("model proposer"), "{}", stderr(&o));
}

#[test]
fn bench_json_reports_speed_memory_and_the_verification_curve() {
    let o = specdec(&["bench", "--model", &tiny("qwen2.gguf"), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "2", "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_bytes", "verify_cost"] {
        assert!(j.get(key).is_some(), "missing `{key}` in {j}");
    }
    assert!(j["decode_tok_s"].as_f64().unwrap() > 0.0);
    let curve = j["verify_cost"].as_object().unwrap();
    assert_eq!(curve.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), ["1", "2", "3", "5", "9"].into());
    assert_eq!(curve["1"], 1.0);
    // Asking for llama.cpp with a folder that has no llama-bench is a clear error.
    let o = specdec(&["bench", "--model", &tiny("qwen2.gguf"), "--prompt-tokens", "8", "--gen-tokens", "2", "--repeats", "1",
        "--compare-llama-cpp", "/nonexistent", "--threads", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("llama-bench"), "{}", stderr(&o));
}
