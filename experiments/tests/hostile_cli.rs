//! `specdec inspect`, `generate` and `chat` on hostile model files and templates: a clean non-zero exit with an
//! error naming the file — no panic, no signal, within 30 s, under a 4 GiB address-space limit
//! (via util-linux `prlimit` where present). The engine's own tests cover many more cases
//! (engine/tests/hostile_files.rs); these are representative of each layer: GGUF header, GGUF
//! hyperparameters, safetensors header, shard index and config.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT_AS: &str = "--as=4294967296";
const TIMEOUT: Duration = Duration::from_secs(30);

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/tiny").join(name)
}

/// A fresh directory per test (tests run in parallel threads of one process).
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-hostile-cli-{}", std::process::id())).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs specdec under the address-space limit and the timeout: (exit code, stderr).
fn specdec(args: &[&str]) -> (Option<i32>, String) {
    let bin = env!("CARGO_BIN_EXE_specdec");
    let mut cmd = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.args([LIMIT_AS, "--", bin]);
        c
    } else {
        Command::new(bin)
    };
    // Standard input is one chat turn (read only by `chat`).
    let mut child = cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run specdec");
    {
        use std::io::Write;
        // A refusal before the turn is read closes the pipe: that is not an error here.
        let _ = child.stdin.take().unwrap().write_all(b"hello\n");
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("specdec {args:?} ran longer than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// `specdec` refused `path` cleanly: exit code 1 (a signal gives none), an error naming `file`,
/// no panic.
fn assert_refused(case: &str, args: &[&str], file: &str) {
    let (code, err) = specdec(args);
    assert!(!err.contains("panicked at"), "{case}: {args:?} panicked:\n{err}");
    assert_eq!(code, Some(1), "{case}: {args:?} did not exit cleanly with 1:\n{err}");
    assert!(err.contains(file), "{case}: {args:?}: the error does not name `{file}`:\n{err}");
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn hostile_gguf_files_fail_cleanly_through_the_cli() {
    let dir = scratch("gguf");
    let seed = std::fs::read(tiny("llama.gguf")).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = seed.clone();
        f(&mut b);
        b
    };
    // The value of `general.architecture` follows the key, its type (u32) and its length (u64).
    let key = b"general.architecture";
    let value_at = seed.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 12;
    assert_eq!(&seed[value_at..value_at + 5], b"llama");
    // (case, bytes, whether inspect must refuse it too: inspect reads the header only)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("bad magic", edit(&|b| b[..4].copy_from_slice(b"GGML")), true),
        ("tensor count 2^60", edit(&|b| set_u64(b, 8, 1 << 60)), true),
        ("metadata count u64::MAX", edit(&|b| set_u64(b, 16, u64::MAX)), true),
        ("key length 2^62", edit(&|b| set_u64(b, 24, 1 << 62)), true),
        ("truncated in the header", seed[..seed.len() / 8].to_vec(), true),
        ("truncated in the data", seed[..seed.len() - 100].to_vec(), true),
        ("unknown architecture", edit(&|b| b[value_at..value_at + 5].copy_from_slice(b"mamba")), false),
    ];
    for (i, (case, bytes, inspect_refuses)) in cases.iter().enumerate() {
        let name = format!("hostile-{i}.gguf");
        let path = dir.join(&name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.to_str().unwrap();
        assert_refused(case, &["generate", "--model", p, "--prompt", "hi", "--max-new-tokens", "2", "--threads", "1"], &name);
        assert_refused(case, &["chat", "--model", p, "--max-new-tokens", "2", "--threads", "1"], &name);
        if *inspect_refuses {
            assert_refused(case, &["inspect", p], &name);
        } else {
            let (code, err) = specdec(&["inspect", p]);
            assert!(code.is_some() && !err.contains("panicked at"), "{case}: inspect: {err}");
        }
    }
}

#[test]
fn hostile_model_directories_fail_cleanly_through_the_cli() {
    let root = scratch("hf");
    let copy = |case: &str| -> PathBuf {
        let dir = root.join(case.replace(' ', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(tiny("llama-hf").join(f), dir.join(f)).unwrap();
        }
        dir
    };
    let seed = std::fs::read(tiny("llama-hf/model.safetensors")).unwrap();
    let config = std::fs::read_to_string(tiny("llama-hf/config.json")).unwrap();
    // (case, file written, its bytes, the file the error must name)
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("header length past EOF", "model.safetensors", { let mut b = seed.clone(); set_u64(&mut b, 0, seed.len() as u64); b }, "model.safetensors"),
        ("invalid header JSON", "model.safetensors", { let mut b = seed.clone(); b[8] = b'x'; b }, "model.safetensors"),
        ("config hidden size 2^40", "config.json", config.replace("\"hidden_size\": 64", "\"hidden_size\": 1099511627776").into_bytes(), "config.json"),
        ("config invalid JSON", "config.json", config[..config.len() / 2].as_bytes().to_vec(), "config.json"),
        (
            "index escaping the directory",
            "model.safetensors.index.json",
            br#"{"weight_map": {"model.embed_tokens.weight": "../../model.safetensors"}}"#.to_vec(),
            "model.safetensors.index.json",
        ),
    ];
    for (case, file, bytes, named) in cases {
        let dir = copy(case);
        std::fs::write(dir.join(file), bytes).unwrap();
        // An HF directory without tokenizer.json cannot reach the weights through generate;
        // inspect opens config and shards first, and refuses sizes no model of a supported
        // family could have.
        assert_refused(case, &["inspect", dir.to_str().unwrap()], named);
    }
}

#[test]
fn hostile_chat_templates_fail_cleanly_through_the_cli() {
    let dir = scratch("templates");
    let model = tiny("llama.gguf");
    // (case, template, the limit the error must name)
    let cases = [
        // (minijinja refuses a range past 10⁴ elements itself; nested ones are 10⁸ iterations.)
        ("endless loop", "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}", "exceeded its"),
        (
            "string doubled sixty times",
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "exceeded its",
        ),
        ("recursive macro", "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}", "exceeded its"),
    ];
    for (i, (case, template, message)) in cases.iter().enumerate() {
        let name = format!("hostile-{i}.jinja");
        let path = dir.join(&name);
        std::fs::write(&path, template).unwrap();
        // (`generate --chat` renders the model's own template through the same limits; only
        // `chat` takes a template file.)
        let args = ["chat", "--model", model.to_str().unwrap(), "--chat-template", path.to_str().unwrap(), "--max-new-tokens", "2", "--threads", "1"];
        let (code, err) = specdec(&args);
        assert!(!err.contains("panicked at"), "{case}: chat panicked:\n{err}");
        assert_eq!(code, Some(1), "{case}: chat did not exit cleanly with 1:\n{err}");
        assert!(err.contains(message) && err.contains(&name), "{case}: chat: no limit or template named:\n{err}");
    }
}
