//! `specdec run` end to end on the tiny fixture models: record counts, summaries and plots, a run
//! killed mid-way and resumed (every record exactly once), shards merged == one unsharded run, and
//! clear errors for bad configs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn specdec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specdec")).args(args).output().expect("run specdec")
}

fn tiny(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/tiny").join(name).canonicalize().unwrap().to_string_lossy().into_owned()
}

/// A fresh directory with a prompt file and a config over the tiny Llama pair.
fn workspace(test: &str, extra: &str, grid: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-runner-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts: String = (0..4).map(|i| format!("{{\"id\": \"p{i}\", \"category\": \"code\", \"prompt\": \"abc {i} hello hello\"}}\n")).collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let config = format!(
        r#"name = "tiny"
warmup = 1
ignore_eos = true
threads = 1
{extra}
[models.target]
source = "{}"
[models.draft]
source = "{}"
[[pairs]]
target = "target"
draft = "draft"
[[pairs]]
target = "target"
proposer = "ngram"
[grid]
{grid}
[[prompts]]
file = "prompts.jsonl"
chat = false
"#,
        tiny("llama.gguf"),
        tiny("llama-draft.gguf")
    );
    std::fs::write(dir.join("tiny.toml"), config).unwrap();
    dir
}

fn run_dirs(out: &Path) -> Vec<PathBuf> {
    // Hidden entries are run folders still being made (see runner::run_new), not runs.
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("tiny"))
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("records.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn by_key(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    for r in records(dir) {
        let key = r["key"].as_str().unwrap().to_string();
        assert!(m.insert(key.clone(), r).is_none(), "record {key} appears twice in {}", dir.display());
    }
    m
}

#[test]
fn run_writes_every_record_summary_plot_and_report() {
    let ws = workspace("full", "repeats = 2", "k = [1, 3]\ntemperature = [0.0, 0.9]\nmax_new_tokens = [10]");
    let out = ws.join("results");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = &run_dirs(&out)[0];
    // 4 prompts × 2 repeats × 2 temperatures = 16 groups, each: target, draft, 2 pairs × 2 k.
    let recs = by_key(dir);
    assert_eq!(recs.len(), 16 * 6);
    for f in ["config.toml", "prompts.json", "manifest.json", "summary.json", "summary.csv", "report.md", "speedup_vs_k.svg", "per_position_acceptance.svg", "measured_vs_predicted.svg"] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["models"]["target"]["files"][0]["sha256"].as_str().unwrap().len(), 64);
    let summary: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.len(), 2 + 2 + 2 * 2 * 2, "target and draft baselines per temperature, spec cells per pair × k × T");
    for cell in summary.iter().filter(|c| c["kind"] == "spec") {
        assert_eq!(cell["records"], 8);
        assert!(cell["speedup"]["mean"].as_f64().unwrap() > 0.0);
        assert!(cell["speedup"]["ci_low"].as_f64().is_some(), "8 paired generations give a CI");
        if cell["temperature"] == 0.0 {
            assert_eq!(cell["greedy_identical"], cell["greedy_compared"], "greedy speculative must equal target-only: {cell}");
        }
        let alpha = cell["alpha"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&alpha));
        // α counts verified positions only: recomputed from the cell's records, and ≥ α̂.
        let cell_recs: Vec<&serde_json::Value> = recs.values().filter(|r| r["cell"] == cell["cell"]).collect();
        let sum = |f: &dyn Fn(&serde_json::Value) -> u64| cell_recs.iter().map(|r| f(r)).sum::<u64>() as f64;
        let accepted = sum(&|r| r["accepted"].as_u64().unwrap());
        let tested = sum(&|r| r["position_tested"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum());
        let alpha_verified = cell["alpha_verified"].as_f64().unwrap();
        assert!((alpha_verified - accepted / tested).abs() < 1e-12 && alpha_verified >= alpha, "{cell}");
        let (k, c) = (cell["k"].as_f64().unwrap(), cell["c"].as_f64().unwrap());
        let predicted = (1.0 - alpha_verified.powf(k + 1.0)) / (1.0 - alpha_verified) / (k * c + 1.0);
        assert!(alpha_verified == 1.0 || (cell["predicted_speedup"].as_f64().unwrap() - predicted).abs() < 1e-9, "{cell}");
    }
    // Every generation emitted exactly max_new_tokens (ignore_eos), baselines included.
    assert!(recs.values().all(|r| r["new_tokens"] == 10));
    // The summary table is printed, and summarize/export reproduce it from the records alone.
    assert!(String::from_utf8_lossy(&o.stdout).contains("| spec | draft→target (fixed) |"));
    let before = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    std::fs::remove_file(dir.join("summary.csv")).unwrap();
    assert!(specdec(&["summarize", dir.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(dir.join("summary.csv")).unwrap(), before);
    let exports = ws.join("exports");
    let o = specdec(&["export", dir.to_str().unwrap(), "--to", exports.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    assert_eq!(files.len(), 3);
    let gens = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(gens.lines().count(), 1 + 16 * 6, "header plus one row per generation");
}

#[test]
fn killed_runs_resume_to_every_record_exactly_once() {
    // Big enough to be killed mid-way (a few seconds on the tiny models).
    let ws = workspace("resume", "repeats = 12", "k = [1, 2, 4]\ntemperature = [0.0, 1.0]\nmax_new_tokens = [48]");
    let out = ws.join("results");
    let expected = 4 * 12 * 2 * (2 + 2 * 3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args(["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some records exist.
    let start = Instant::now();
    let dir = loop {
        if let Some(d) = run_dirs(&out).first().filter(|d| std::fs::read_to_string(d.join("records.jsonl")).map_or(0, |s| s.lines().count()) >= 20) {
            break d.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the run produced no records");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = std::fs::read_to_string(dir.join("records.jsonl")).unwrap().lines().count();
    // Simulate a kill in the middle of a write as well: half a record at the end.
    let mut text = std::fs::read_to_string(dir.join("records.jsonl")).unwrap();
    text.push_str("{\"key\": \"spec:cut-off");
    std::fs::write(dir.join("records.jsonl"), text).unwrap();

    // Resume, kill again, and resume to the end.
    let mut child = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .args(["run", "--resume", dir.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(dir.join("records.jsonl")).map_or(0, |s| s.lines().count()) < partial + 20 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = specdec(&["run", "--resume", dir.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = by_key(&dir);
    assert_eq!(recs.len(), expected, "every planned generation exactly once after kills ({partial} before the first resume)");
    assert!(partial < expected, "the first kill came before the end");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["resumed"].as_array().unwrap().len(), 2);

    // Records are deterministic: an uninterrupted run gives the same tokens for every key.
    let fresh = ws.join("fresh");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", fresh.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success());
    let reference = by_key(&run_dirs(&fresh)[0]);
    for (k, r) in &reference {
        assert_eq!(r["tokens"], recs[k]["tokens"], "{k}");
    }
}

#[test]
fn shards_merge_into_the_unsharded_record_set() {
    let ws = workspace("shard", "repeats = 1", "k = [2]\ntemperature = [0.0, 0.7]\nmax_new_tokens = [8]");
    let config = ws.join("tiny.toml");
    let whole = ws.join("whole");
    assert!(specdec(&["run", config.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--quiet"]).status.success());
    let shards = ws.join("shards");
    for i in 1..=3 {
        let o = specdec(&["run", config.to_str().unwrap(), "--out", shards.to_str().unwrap(), "--shard", &format!("{i}/3"), "--quiet"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let dirs = run_dirs(&shards);
    assert_eq!(dirs.len(), 3);
    let sizes: Vec<usize> = dirs.iter().map(|d| records(d).len()).collect();
    // 8 groups over 3 shards: 3 + 3 + 2 groups of 4 generations each.
    assert_eq!(sizes.iter().sum::<usize>(), 32);
    assert!(sizes.iter().all(|&n| n > 0 && n % 4 == 0), "shards take whole groups (baselines with their spec cells): {sizes:?}");
    let merged = ws.join("merged");
    let mut args = vec!["merge".to_string()];
    args.extend(dirs.iter().map(|d| d.to_string_lossy().into_owned()));
    args.extend(["--out".into(), merged.to_string_lossy().into_owned()]);
    let o = specdec(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (by_key(&run_dirs(&whole)[0]), by_key(&merged));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, r) in &a {
        assert_eq!(r["tokens"], b[k]["tokens"], "{k}");
    }
    assert!(merged.join("summary.json").is_file() && merged.join("report.md").is_file());
    // Shards of different configs do not merge.
    let other = workspace("shard-other", "repeats = 1", "k = [3]\ntemperature = [0.0]\nmax_new_tokens = [8]");
    let other_out = other.join("out");
    assert!(specdec(&["run", other.join("tiny.toml").to_str().unwrap(), "--out", other_out.to_str().unwrap(), "--quiet"]).status.success());
    let o = specdec(&["merge", dirs[0].to_str().unwrap(), run_dirs(&other_out)[0].to_str().unwrap(), "--out", ws.join("bad").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different config"));
}

#[test]
fn bad_configs_fail_clearly_and_keep_records() {
    let ws = workspace("bad", "repeats = 1", "k = [2]\ntemperature = [0.0]\nmax_new_tokens = [8]");
    let cfg = std::fs::read_to_string(ws.join("tiny.toml")).unwrap();
    let run = |text: &str| {
        std::fs::write(ws.join("bad.toml"), text).unwrap();
        let o = specdec(&["run", ws.join("bad.toml").to_str().unwrap(), "--out", ws.join("out").to_str().unwrap(), "--quiet"]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    let e = run(&cfg.replace("warmup = 1", "warmup = 1\nrepeat = 3"));
    assert!(e.contains("unknown field `repeat`") && e.contains("line 3"), "{e}");
    let e = run(&cfg.replace("threads = 1", "threads = \"one\""));
    assert!(e.contains("line 4") && e.contains("threads"), "{e}");
    let e = run(&cfg.replace("draft = \"draft\"", "draft = \"nope\""));
    assert!(e.contains("\"nope\" is not in [models]"), "{e}");
    let e = run(&cfg.replace(&tiny("llama-draft.gguf"), "/nonexistent/model.gguf"));
    assert!(e.contains("loading model `draft`") && e.contains("/nonexistent/model.gguf"), "{e}");
    // (Pairs with different vocabularies are not an error: they run the cross-vocabulary proposer,
    // tested in engine/tests/cross_vocab*.rs and by the seed-study-offline config.)
    let e = run(&cfg.replace("file = \"prompts.jsonl\"", "file = \"missing.jsonl\""));
    assert!(e.contains("missing.jsonl"), "{e}");
    // Requests the grid cannot make: refused by the config check, or by the engine's own check
    // (a k past the model's context is only known once the model is loaded).
    let e = run(&cfg.replace("temperature = [0.0]", "temperature = [nan]"));
    assert!(e.contains("[grid]: temperatures must be ≥ 0"), "{e}");
    let e = run(&cfg.replace("k = [2]", "k = [0]"));
    assert!(e.contains("[grid]: `k` and `max_new_tokens` values must be at least 1"), "{e}");
    let e = run(&cfg.replace("k = [2]", "k = [1000]"));
    assert!(e.contains("invalid k 1000: larger than the target's context of 128"), "{e}");

    // A context overflow mid-run stops the run with a clear message; earlier records stay.
    let long: String = "{\"id\": \"short\", \"prompt\": \"abc\"}\n".to_string() + &format!("{{\"id\": \"long\", \"prompt\": \"{}\"}}\n", "x".repeat(5000));
    std::fs::write(ws.join("prompts.jsonl"), long).unwrap();
    let out = ws.join("overflow");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("context") && !e.contains("panicked"), "{e}");
    let kept: HashMap<String, serde_json::Value> = by_key(&run_dirs(&out)[0]).into_iter().collect();
    assert_eq!(kept.len(), 4, "the short prompt's generations were recorded before the failure");
}

#[test]
fn slurm_array_scripts_shard_resume_and_merge() {
    let ws = workspace("slurm", "repeats = 1", "k = [2]\ntemperature = [0.0]\nmax_new_tokens = [6]");
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slurm");
    let sbatch = |script: &str, args: &[&str], env: &[(&str, &str)]| {
        let o = Command::new("bash")
            .arg(scripts.join(script))
            .args(args)
            .current_dir(&ws)
            .env("SPECDEC_BIN", env!("CARGO_BIN_EXE_specdec"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    };
    for task in ["1", "2"] {
        let env = [("SLURM_ARRAY_TASK_ID", task), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "2"), ("SLURM_ARRAY_JOB_ID", "77"), ("SLURM_CPUS_PER_TASK", "1")];
        sbatch("specdec-array.sbatch", &["tiny.toml"], &env);
        // A requeued task resumes its shard instead of starting a second one.
        sbatch("specdec-array.sbatch", &["tiny.toml"], &env);
    }
    assert_eq!(run_dirs(&ws.join("results/shards/77")).len(), 2);
    sbatch("specdec-merge.sbatch", &["77", "tiny"], &[]);
    let merged = by_key(&ws.join("results/tiny/merged-77"));
    assert_eq!(merged.len(), 4 * 4, "4 prompts × (target, draft, 2 pairs)");
}

#[test]
fn spec_bench_questions_run_turn_by_turn_with_a_per_category_table() {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        report_skip("SPECDEC_SKIP_REAL=1 (the tiny fixtures have no chat template)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("specdec-runner-spec-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("question.jsonl"),
        concat!(
            r#"{"question_id": 1, "category": "writing", "turns": ["Name a colour.", "Name another one."]}"#,
            "\n",
            r#"{"question_id": 2, "category": "coding", "turns": ["Write `def add(a, b):` in Python."]}"#,
            "\n"
        ),
    )
    .unwrap();
    let config = r#"name = "spec-bench"
warmup = 0
ignore_eos = true
threads = 2
[models.q]
source = "qwen2.5-coder-0.5b"
[[pairs]]
target = "q"
draft = "q"
[grid]
k = [2]
temperature = [0.0]
max_new_tokens = [6]
[baselines]
draft = false
[[prompts]]
file = "question.jsonl"
"#;
    std::fs::write(dir.join("sb.toml"), config).unwrap();
    let out = dir.join("results");
    let o = specdec(&["run", dir.join("sb.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = std::fs::read_dir(out.join("spec-bench")).unwrap().next().unwrap().unwrap().path();
    let recs = records(&run);
    assert_eq!(recs.len(), 4, "2 questions × (target-only + one spec cell)");
    for r in &recs {
        // The two-turn question: two generations of 6 tokens in one record.
        let want = if r["prompt_id"] == "1" { 12 } else { 6 };
        assert_eq!(r["new_tokens"], want, "{r}");
    }
    // Greedy: the self-draft's answers equal the target's, turn by turn.
    let text = |kind: &str| recs.iter().find(|r| r["kind"] == kind && r["prompt_id"] == "1").unwrap()["text"].clone();
    assert_eq!(text("spec"), text("target"));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Per category") && report.contains("| writing |") && report.contains("| coding |"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reports a skipped test as `SKIPPED: <test>: <reason>` (the line `.ci/run` counts), straight
/// to stderr: the test harness captures `eprintln!` from passing tests.
fn report_skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("(unnamed test)");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

/// A model entry with `adapter = "DIR"` (relative to the config): the adapted draft runs as a model
/// of its own beside the plain one, greedy speculation stays identical to the target, and the
/// manifest pins the adapter's files by hash.
#[test]
fn an_adapted_draft_is_a_model_of_its_own() {
    let ws = workspace("adapter", "", "k = [3]\ntemperature = [0.0]\nmax_new_tokens = [8]");
    let adapter = ws.join("aligned-adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/lora/llama");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture.join(f), adapter.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(ws.join("tiny.toml")).unwrap().replace(
        "[[pairs]]\ntarget = \"target\"\nproposer = \"ngram\"",
        &format!("[models.aligned]\nsource = \"{}\"\nadapter = \"aligned-adapter\"\n[[pairs]]\ntarget = \"target\"\ndraft = \"aligned\"", tiny("llama-draft.gguf")),
    );
    std::fs::write(ws.join("tiny.toml"), config).unwrap();
    let out = ws.join("results");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = &run_dirs(&out)[0];
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["models"]["aligned"]["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["path"].as_str().unwrap().ends_with("aligned-adapter/adapter_model.safetensors") && f["sha256"].as_str().unwrap().len() == 64), "{files:?}");
    let summary: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let spec: Vec<&serde_json::Value> = summary.iter().filter(|c| c["kind"] == "spec").collect();
    assert_eq!(spec.len(), 2, "{summary:?}");
    for cell in spec {
        assert_eq!(cell["greedy_identical"], cell["greedy_compared"], "{cell}");
    }
    // The run's own copy of the config names the adapter by absolute path, for --resume.
    let copied = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(copied.contains(&adapter.canonicalize().unwrap().to_string_lossy().into_owned()), "{copied}");
}
