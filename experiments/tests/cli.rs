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

/// Each bad request fails with exit status 1 and a message naming the parameter and what it must
/// be (the engine's check, surfaced by the CLI), never a panic or a silent run.
#[test]
fn bad_requests_are_refused_with_the_parameter_named() {
    let (model, draft) = (tiny("llama.gguf"), tiny("llama-draft.gguf"));
    let cases: &[(&[&str], &str)] = &[
        (&["--prompt", ""], "the prompt has no tokens"),
        (&["--prompt", "hi", "--temperature", "-1"], "invalid temperature -1: must be a finite number ≥ 0"),
        (&["--prompt", "hi", "--temperature", "NaN"], "invalid temperature NaN"),
        (&["--prompt", "hi", "--temperature", "inf"], "invalid temperature inf"),
        (&["--prompt", "hi", "--temperature", "1", "--top-p", "0"], "invalid top-p 0: must be in (0, 1]"),
        (&["--prompt", "hi", "--temperature", "1", "--top-p", "1.5"], "invalid top-p 1.5"),
        (&["--prompt", "hi", "--temperature", "1", "--top-p", "-0.5"], "invalid top-p -0.5"),
        (&["--prompt", "hi", "--draft", &draft, "--schedule", "fixed", "--k", "0"], "invalid k 0: drafts at least 1 token"),
        (&["--prompt", "hi", "--draft", &draft, "--schedule", "fixed", "--k", "100000"], "invalid k 100000: larger than the target's context of 128"),
        (&["--prompt", "hi", "--draft", &draft, "--schedule", "heuristic", "--k", "0"], "invalid k 0: the heuristic schedule needs"),
        (&["--prompt", "hi", "--draft", &draft, "--schedule", "optimal", "--max-k", "1000"], "invalid max k 1000: larger than the target's context"),
        // Also with speculation: the sampling check comes before any drafting.
        (&["--prompt", "hi", "--draft", &draft, "--temperature", "-1"], "invalid temperature -1"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["generate", "--model", &model];
        full.extend_from_slice(args);
        let o = specdec(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: expected `{needle}` in {err}");
    }
    // Nonsense top-k is refused by the argument parser (exit 2), naming the option.
    for bad in ["-3", "abc", "1.5"] {
        let o = specdec(&["generate", "--model", &model, "--prompt", "hi", "--top-k", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("--top-k"), "{}", stderr(&o));
    }
    // A top-k at or past the vocabulary keeps every token: a valid request.
    let o = specdec(&["generate", "--model", &model, "--prompt", "hi", "--temperature", "1", "--top-k", "100000000", "--max-new-tokens", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `--max-new-tokens 0` is a defined empty result, not an error: no tokens, stop "max_tokens",
/// and no forward pass (zero prefill time), with or without a draft.
#[test]
fn zero_new_tokens_is_an_empty_generation() {
    let (model, draft) = (tiny("llama.gguf"), tiny("llama-draft.gguf"));
    for extra in [&[][..], &["--draft", &draft, "--schedule", "fixed"][..]] {
        let mut args = vec!["generate", "--model", &model];
        args.extend_from_slice(&["--prompt", "hi", "--max-new-tokens", "0", "--json"]);
        args.extend_from_slice(extra);
        let o = specdec(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["tokens"], serde_json::json!([]), "{j}");
        assert_eq!(j["text"], "");
        assert_eq!(j["stop"], "max_tokens");
        assert_eq!(j["prefill_s"], 0.0);
    }
}

/// `models --verify` re-hashes each cached file against its record: ok / MISMATCH per file, exit
/// status 1 when any differs.
#[test]
fn models_verify_reports_each_cached_file() {
    let cache = std::env::temp_dir().join(format!("specdec-cli-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(cache.join("models")).unwrap();
    std::fs::create_dir_all(cache.join("records")).unwrap();
    let record = |file: &str, bytes: usize, sha: &str| std::fs::write(cache.join("records").join(format!("{file}.json")), format!(r#"{{"file": "{file}", "bytes": {bytes}, "sha256": "{sha}"}}"#)).unwrap();
    std::fs::write(cache.join("models/good.gguf"), b"hello world").unwrap();
    record("good.gguf", 11, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    let verify = || Command::new(env!("CARGO_BIN_EXE_specdec")).args(["models", "--verify"]).env("SPECDEC_CACHE", &cache).output().unwrap();
    let o = verify();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.contains("ok") && out.contains("good.gguf"), "{out}{}", stderr(&o));
    // A truncated file.
    std::fs::write(cache.join("models/cut.gguf"), b"hello").unwrap();
    record("cut.gguf", 11, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    let o = verify();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.lines().any(|l| l.starts_with("MISMATCH") && l.contains("cut.gguf") && l.contains("5 bytes, recorded 11")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("ok") && l.contains("good.gguf")), "{out}");
    assert!(stderr(&o).contains("1 cached file(s) do not match"), "{}", stderr(&o));
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
fn speculative_json_reports_the_metrics() {
    let model = tiny("llama.gguf");
    let o = specdec(&["generate", "--model", &model, "--draft", &model, "--k", "3", "--schedule", "fixed", "--prompt", "hello",
        "--max-new-tokens", "12", "--ignore-eos", "--json", "--baseline", "--threads", "1"]);
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
    assert_eq!((j["consistent_with_lossless"].as_bool(), j["verdict"].as_str()), (Some(true), Some("consistent")), "{j}");
    assert!(j["tv_noise_95"].as_f64().unwrap() < 0.15, "3000 samples over ≤ 27 sequences detect small differences: {j}");
    let alpha = j["alpha_hat"].as_f64().unwrap();
    assert!(alpha > 0.1 && alpha < 0.9, "the pair should agree sometimes, not always: {j}");
    assert!(j["cells"].as_u64().unwrap() >= 20, "too few cells for a meaningful test: {j}");
}

/// Certify cannot pass vacuously: continuations so varied that pooling leaves one cell give the
/// verdict "insufficient" and exit status 3, not "consistent" and 0.
#[test]
fn certify_with_too_few_cells_says_insufficient() {
    let o = specdec(&["certify", "--model", &tiny("llama.gguf"), "--draft", &tiny("llama-draft.gguf"), "--k", "2",
        "--temperature", "1.0", "--top-k", "0", "--samples", "40", "--max-new-tokens", "6", "--prompt", "hello",
        "--json", "--threads", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["verdict"].as_str(), j["consistent_with_lossless"].as_bool()), (Some("insufficient"), Some(false)), "{j}");
    assert!(j["cells"].as_u64().unwrap() < 2, "{j}");
    assert!(j["tv_noise_95"].as_f64().unwrap() > 0.9, "every continuation distinct: nothing detectable: {j}");
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
    assert_eq!(curve.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), ["1", "2", "3", "5", "9", "17"].into());
    assert_eq!(curve["1"], 1.0);
    // Asking for llama.cpp with a folder that has no llama-bench is a clear error.
    let o = specdec(&["bench", "--model", &tiny("qwen2.gguf"), "--prompt-tokens", "8", "--gen-tokens", "2", "--repeats", "1",
        "--compare-llama-cpp", "/nonexistent", "--threads", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("llama-bench"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// Pairs with different vocabularies (cross-tokenizer speculation)
// ---------------------------------------------------------------------------------------------

fn cross(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/cross").join(name).to_string_lossy().into_owned()
}

fn skip_real() -> bool {
    let skip = std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1");
    if skip {
        report_skip("SPECDEC_SKIP_REAL=1");
    }
    skip
}

#[test]
fn inspect_pair_reports_the_vocabulary_relation_and_mode() {
    let json = |d: &str, t: &str| {
        let o = specdec(&["inspect", "--pair", d, t, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let j = json(&cross("spm-draft.gguf"), &cross("bpe-target.gguf"));
    assert_eq!((j["relation"].as_str(), j["mode"].as_str()), (Some("different"), Some("text")), "{j}");
    assert_eq!((j["draft"]["vocab_size"].as_u64(), j["target"]["vocab_size"].as_u64()), (Some(321), Some(298)));
    let j = json(&cross("bpe-target.gguf"), &cross("bpe-wide.gguf"));
    assert_eq!((j["relation"].as_str(), j["mode"].as_str(), j["extra_ids"].as_u64()), (Some("superset"), Some("extended-ids"), Some(2)), "{j}");
    let j = json(&cross("bpe-target.gguf"), &cross("bpe-target.gguf"));
    assert_eq!((j["relation"].as_str(), j["mode"].as_str()), (Some("identical"), Some("shared-ids")), "{j}");
    let o = specdec(&["inspect", "--pair", &cross("spm-draft.gguf"), &cross("bpe-target.gguf")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("relation: different") && out.contains("mode text") && out.contains("one-hot"), "{out}");
    // Neither a model nor a pair: a usage error, not a panic.
    let o = specdec(&["inspect"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    if skip_real() {
        return;
    }
    // The registry models: SmolLM2 and Qwen share most token texts but no id layout; Gemma's
    // tokenizer reads without its architecture.
    let j = json("smollm2-135m", "qwen2.5-coder-1.5b");
    assert_eq!((j["relation"].as_str(), j["mode"].as_str()), (Some("different"), Some("text")), "{j}");
    let shared = j["shared_texts"].as_f64().unwrap() / j["draft_size"].as_f64().unwrap();
    assert!(shared > 0.6 && shared < 0.95, "{j}");
    let j = json("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b");
    assert_eq!(j["relation"], "identical", "{j}");
    let j = json("gemma3-270m", "qwen2.5-coder-1.5b");
    assert_eq!((j["relation"].as_str(), j["mode"].as_str(), j["draft"]["vocab_size"].as_u64()), (Some("different"), Some("text"), Some(262144)), "{j}");
}

#[test]
fn cross_vocab_generate_on_tiny_models_matches_target_only() {
    let o = specdec(&["generate", "--model", &cross("bpe-target.gguf"), "--draft", &cross("spm-draft.gguf"), "--k", "3", "--prompt", "the cat sat",
        "--max-new-tokens", "24", "--ignore-eos", "--json", "--baseline", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["vocab"].as_str(), j["pair_mode"].as_str()), (Some("different"), Some("text")), "{j}");
    assert_eq!(j["baseline_tokens_equal"], true, "{j}");
}

#[test]
fn cross_vocab_generate_on_real_models_reports_alpha_tau_and_equal_tokens() {
    if skip_real() {
        return;
    }
    let o = specdec(&["generate", "--model", "qwen2.5-coder-0.5b", "--draft", "smollm2-135m", "--k", "4", "--chat",
        "--prompt", "Write a Python function that checks whether a number is prime.", "--max-new-tokens", "40", "--json", "--baseline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["vocab"].as_str(), j["pair_mode"].as_str()), (Some("different"), Some("text")), "{j}");
    assert_eq!(j["baseline_tokens_equal"], true, "{j}");
    let (alpha, tau) = (j["alpha"].as_f64().unwrap(), j["tau"].as_f64().unwrap());
    eprintln!("SmolLM2-135M → Qwen2.5-Coder-0.5B, k = 4: α̂ = {alpha:.3}, τ = {tau:.2}, speedup {:.2}", j["speedup"].as_f64().unwrap_or(0.0));
    assert!(alpha > 0.1 && alpha <= 1.0 && tau > 1.0 && tau <= 5.0, "{j}");
}

#[test]
fn certify_accepts_a_pair_with_different_tokenizers() {
    let o = specdec(&["certify", "--model", &cross("bpe-target.gguf"), "--draft", &cross("spm-draft.gguf"), "--k", "2",
        "--temperature", "1.0", "--top-k", "3", "--samples", "2000", "--max-new-tokens", "3", "--prompt", "the cat",
        "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["pair_mode"].as_str(), j["consistent_with_lossless"].as_bool()), (Some("text"), Some(true)), "{j}");
}

#[test]
fn run_records_say_a_pair_drafts_across_vocabularies() {
    let dir = std::env::temp_dir().join(format!("specdec-cli-cross-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prompts.jsonl"), "{\"id\": \"a\", \"prompt\": \"the cat sat\"}\n{\"id\": \"b\", \"prompt\": \"hello world\"}\n").unwrap();
    let config = format!(
        "name = \"cross\"\nwarmup = 0\nignore_eos = true\nthreads = 1\n[models.spm]\nsource = {:?}\n[models.bpe]\nsource = {:?}\n\
         [[pairs]]\ntarget = \"bpe\"\ndraft = \"spm\"\n[grid]\nk = [2, 4]\ntemperature = [0.0, 1.0]\nmax_new_tokens = [12]\n\
         [[prompts]]\nfile = \"prompts.jsonl\"\nchat = false\n",
        cross("spm-draft.gguf"),
        cross("bpe-target.gguf")
    );
    std::fs::write(dir.join("cross.toml"), config).unwrap();
    let out = dir.join("results");
    let o = specdec(&["run", dir.join("cross.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = std::fs::read_dir(out.join("cross")).unwrap().next().unwrap().unwrap().path();
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("records.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let spec: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "spec").collect();
    assert_eq!(spec.len(), 2 * 2 * 2, "2 prompts × 2 k × 2 temperatures");
    for r in &spec {
        // Auto mode: greedy drafts through text; sampling drafts among the shared tokens (these
        // two fixtures share most of their tokens), which hands q over and so accepts more.
        let proposer = if r["temperature"] == 0.0 { "cross-vocab" } else { "shared-tokens" };
        assert_eq!((r["proposer"].as_str(), r["params"].as_str()), (Some(proposer), Some("vocab=different,verify=block")), "{r}");
    }
    // Greedy cells equal the target-only baseline token for token.
    for r in spec.iter().filter(|r| r["temperature"] == 0.0) {
        let base = records.iter().find(|b| b["kind"] == "target" && b["prompt_id"] == r["prompt_id"] && b["temperature"] == 0.0).unwrap();
        assert_eq!(r["tokens"], base["tokens"], "{}", r["key"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--compare-llama-cpp` against a stand-in `llama-bench` that checks its arguments and prints
/// llama-bench's JSON: the ratios and llama.cpp's own verification curve come from those rows.
#[test]
fn bench_compares_with_llama_bench_output() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("specdec-fake-llama-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let row = |p: u32, n: u32, ns: f64| format!(r#"{{"n_prompt": {p}, "n_gen": {n}, "avg_ns": {ns}, "avg_ts": {}}}"#, (p + n) as f64 / (ns * 1e-9));
    let rows = [row(8, 0, 4e6), row(1, 0, 1e6), row(2, 0, 1.5e6), row(3, 0, 2e6), row(5, 0, 3e6), row(9, 0, 5e6), row(17, 0, 9e6), row(0, 4, 4e6)];
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in *'-p 8,1,2,3,5,9,17 -n 4'*) ;; *) echo \"unexpected arguments: $*\" >&2; exit 1;; esac\ncat <<'JSON'\n[{}]\nJSON\n",
        rows.join(",")
    );
    let exe = dir.join("llama-bench");
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = specdec(&[
        "bench", "--model", &tiny("llama.gguf"), "--prompt-tokens", "8", "--gen-tokens", "4", "--repeats", "1", "--threads", "1",
        "--compare-llama-cpp", dir.to_str().unwrap(), "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = &j["llama_cpp"];
    assert_eq!(l["prefill_tok_s"], 2000.0);
    assert_eq!(l["decode_tok_s"], 1000.0);
    assert_eq!(l["verify_cost"]["5"], 3.0);
    let ratio = l["decode_ratio"].as_f64().unwrap();
    assert!((ratio - j["decode_tok_s"].as_f64().unwrap() / 1000.0).abs() < 1e-9);
    // A llama-bench that fails is a clear error, not a panic.
    let o = specdec(&["bench", "--model", &tiny("llama.gguf"), "--prompt-tokens", "7", "--gen-tokens", "4", "--repeats", "1", "--compare-llama-cpp", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("llama-bench failed: unexpected arguments"), "{}", stderr(&o));
}

/// Reports a skipped test as `SKIPPED: <test>: <reason>` (the line `.ci/run` counts), straight
/// to stderr: the test harness captures `eprintln!` from passing tests.
fn report_skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("(unnamed test)");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

#[test]
fn generate_chat_takes_a_template_file_and_its_limits() {
    let model = tiny("llama.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &model, "--prompt", "hello", "--chat", "--max-new-tokens", "2", "--threads", "1"];
        args.extend_from_slice(extra);
        specdec(&args)
    };
    // The tiny model has no template of its own: a template file supplies one.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no chat template"), "{}", stderr(&o));
    let good = temp_file("plain.jinja", b"{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
    let o = run(&["--chat-template", &good]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same template under a tiny budget.
    let o = run(&["--chat-template", &good, "--template-fuel", "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("plain.jinja") && stderr(&o).contains("exceeded its fuel limit"), "{}", stderr(&o));
    let o = run(&["--chat-template", &good, "--template-max-bytes", "4"]);
    assert!(stderr(&o).contains("exceeded its bytes limit"), "{}", stderr(&o));
    // Its errors name the file.
    let doubling = temp_file("doubling.jinja", b"{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
    let o = run(&["--chat-template", &doubling]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("doubling.jinja") && stderr(&o).contains("exceeded its"), "{}", stderr(&o));
}

fn lora(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/lora").join(name).to_string_lossy().into_owned()
}

/// `--draft-adapter`: an adapted draft changes acceptance, never the greedy output; certify's χ²
/// test passes with it; a broken adapter is refused naming its file.
#[test]
fn a_draft_adapter_changes_acceptance_but_not_the_output() {
    let (model, draft, adapter) = (tiny("llama.gguf"), tiny("llama-draft.gguf"), lora("llama"));
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &model, "--draft", &draft, "--k", "3", "--schedule", "fixed", "--prompt", "hello",
            "--max-new-tokens", "24", "--ignore-eos", "--json", "--baseline", "--threads", "1"];
        args.extend_from_slice(extra);
        let o = specdec(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (plain, adapted, zero) = (gen(&[]), gen(&["--draft-adapter", &adapter]), gen(&["--draft-adapter", &lora("llama-zero")]));
    for j in [&plain, &adapted, &zero] {
        assert_eq!(j["baseline_tokens_equal"], true, "{j}");
        assert_eq!(j["tokens"], plain["tokens"]);
    }
    assert_eq!(zero["accepted"], plain["accepted"], "a zero adapter drafts exactly what the draft alone drafts");
    assert_ne!(adapted["per_position"], plain["per_position"], "the adapter should change what the draft proposes");

    let o = specdec(&["certify", "--model", &model, "--draft", &draft, "--draft-adapter", &adapter, "--k", "2",
        "--temperature", "1.0", "--top-k", "3", "--samples", "3000", "--max-new-tokens", "3", "--prompt", "hello",
        "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verdict"].as_str(), Some("consistent"), "{j}");
    assert!(j["cells"].as_u64().unwrap() >= 20, "{j}");

    // An adapter for another architecture's layout, and one that is not there.
    let o = specdec(&["generate", "--model", &model, "--draft", &draft, "--draft-adapter", &lora("gemma3"), "--prompt", "hello", "--max-new-tokens", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("adapter_model.safetensors"), "{}", stderr(&o));
    let o = specdec(&["generate", "--model", &model, "--draft", &draft, "--draft-adapter", "/nonexistent", "--prompt", "hello"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/adapter_config.json"), "{}", stderr(&o));
}

/// `specdec align` on the tiny Llama pair: the draft's loss on the target's distributions falls,
/// the adapter it writes is PEFT's layout and drives a speculative run that stays equal to the
/// target; a non-empty output folder and an unknown module are refused.
#[test]
fn align_trains_an_adapter_that_lowers_the_loss_and_drives_a_lossless_run() {
    let (model, draft) = (tiny("llama.gguf"), tiny("llama-draft.gguf"));
    let prompts = temp_file("align.jsonl", br#"{"id": "a", "prompt": "hello"}
{"id": "b", "prompt": "the cat"}
{"id": "c", "prompt": "once upon"}
{"id": "d", "prompt": "zebra"}
"#);
    let out = std::env::temp_dir().join(format!("specdec-align-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_string_lossy().into_owned();
    let align = |extra: &[&str]| {
        let mut args = vec!["align", "--draft", &draft, "--target", &model, "--prompts", &prompts, "--held-out", &prompts,
            "--rank", "4", "--modules", "q,k,v,o,gate,up,down", "--steps", "15", "--batch", "2", "--lr", "1e-2",
            "--max-new-tokens", "12", "--out", &out_s, "--threads", "1"];
        args.extend_from_slice(extra);
        specdec(&args)
    };
    let o = align(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["adapter_config.json", "adapter_model.safetensors", "training.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("training.json")).unwrap()).unwrap();
    let (before, after) = (report["held_out_loss_before"].as_f64().unwrap(), report["held_out_loss_after"].as_f64().unwrap());
    assert!(after < 0.8 * before, "loss {before} → {after}: {report}");
    assert_eq!(report["data"], "distributions");
    assert_eq!(report["steps"], 15);
    for rate in ["train_tokens_per_s", "forward_tokens_per_s", "forward_tokens_per_s_first"] {
        assert!(report[rate].as_f64().is_some_and(|r| r > 0.0), "{rate}: {report}");
    }
    // The prompts are their own held-out file here: one row, whose expected acceptance rose.
    let acceptance = &report["held_out_acceptance"][0];
    assert_eq!(acceptance["sequences"], 4, "{report}");
    let (b, a) = (acceptance["before"]["mean"].as_f64().unwrap(), acceptance["after"]["mean"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&b) && (0.0..=1.0).contains(&a) && a > b, "expected acceptance {b} → {a}: {report}");
    assert!((acceptance["change"]["mean"].as_f64().unwrap() - (a - b)).abs() < 1e-9, "{report}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(4)));

    // --evaluate: the same held-out data, the adapter loaded for inference: the same gain.
    let evaluation = out.with_extension("evaluation");
    let _ = std::fs::remove_dir_all(&evaluation);
    let o = specdec(&["align", "--draft", &draft, "--target", &model, "--held-out", &prompts, "--evaluate", &out_s,
        "--max-new-tokens", "12", "--out", &evaluation.to_string_lossy(), "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(evaluation.join("evaluation.json")).unwrap()).unwrap();
    let row = &e["held_out_acceptance"][0];
    for (when, trained) in [("before", b), ("after", a)] {
        let measured = row[when]["mean"].as_f64().unwrap();
        assert!((measured - trained).abs() < 0.05, "{when}: {measured} on the inference kernels, {trained} in training: {e}");
    }
    let _ = std::fs::remove_dir_all(&evaluation);
    let o = specdec(&["align", "--draft", &draft, "--target", &model, "--evaluate", &out_s, "--out", &evaluation.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2), "--evaluate without --held-out: {}", stderr(&o));

    let o = specdec(&["generate", "--model", &model, "--draft", &draft, "--draft-adapter", &out_s, "--k", "3", "--prompt", "hello",
        "--max-new-tokens", "24", "--ignore-eos", "--json", "--baseline", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["baseline_tokens_equal"], true, "{j}");

    let o = align(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&out);
    let o = align(&["--modules", "q,lm_head"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("lm_head"), "{}", stderr(&o));
}

#[test]
#[cfg(not(feature = "wgpu"))]
fn gpu_without_the_wgpu_build_says_how_to_get_it() {
    // The CPU build (this test binary's) has no wgpu: `specdec gpu` fails and names the feature,
    // which is what scripts/gpu-check.sh relies on to never report figures without an adapter.
    let o = specdec(&["gpu", "--require-hardware"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--features wgpu"), "{}", stderr(&o));
}

#[test]
fn f16_activations_are_refused_on_cpu_backends() {
    // Host kernels compute in f32: asking them for f16 is an error, not silently ignored.
    let model = tiny("llama.gguf");
    let o = specdec(&["generate", "--model", &model, "--prompt", "hi", "--max-new-tokens", "1", "--device-float", "f16"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--device-float f16 is for GPU backends"), "{}", stderr(&o));
    let o = specdec(&["generate", "--model", &model, "--prompt", "hi", "--max-new-tokens", "1", "--device-float", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
