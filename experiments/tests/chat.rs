//! `specdec chat` driven through standard input (and a pseudo-terminal): multi-turn replies that
//! reuse the KV cache (only the new part of the re-rendered conversation is prefilled, for the
//! target and the draft), /stats, /reset, end of input; on a real model the reply ends at the
//! template's end-of-turn token and no special token is printed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn tiny(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/tiny").join(name).to_string_lossy().into_owned()
}

/// A file of its own per call: tests run in parallel, and rewriting one shared path truncates it
/// under a `specdec chat` another test has just started (it then read an empty template).
fn temp_file(name: &str, text: &str) -> String {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("specdec-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{call}-{name}"));
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs `specdec chat ARGS` with `input` on stdin (closed afterwards: Ctrl-D).
fn chat(args: &[&str], input: &str) -> Output {
    chat_bytes(args, input.as_bytes())
}

fn chat_bytes(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_specdec"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run specdec chat");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

const TEMPLATE: &str = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

fn tiny_args(extra: &[&str]) -> Vec<String> {
    let template = temp_file("template.jinja", TEMPLATE);
    let mut v: Vec<String> =
        ["--model", &tiny("llama.gguf"), "--chat-template", &template, "--max-new-tokens", "8", "--threads", "1"].iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_tiny(extra: &[&str], input: &str) -> Output {
    let args = tiny_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    chat(&args, input)
}

#[test]
fn turns_reuse_the_cache_and_reset_starts_over() {
    for extra in [vec!["--json"], vec!["--json", "--draft", &tiny("llama-draft.gguf"), "--k", "3"]] {
        let o = run_tiny(&extra, "hello\nhow are you\n/stats\n/reset\nhello\n");
        assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        let lines = json_lines(&o);
        assert_eq!(lines.len(), 4, "three turns and one /stats: {lines:?}");
        let (t0, t1, stats, t2) = (&lines[0], &lines[1], &lines[2]["stats"], &lines[3]);
        assert_eq!(t0["reused_tokens"], 0);
        assert_eq!(t0["prefill_tokens"], t0["context_tokens"]);
        // Turn 1 re-renders turn 0's conversation: all of it but the last reply token is cached.
        let reused = t1["reused_tokens"].as_u64().unwrap();
        let before = t0["context_tokens"].as_u64().unwrap();
        assert!(reused >= before, "{extra:?}: turn 1 reused {reused} < turn 0's context {before}");
        assert_eq!(t1["prefill_tokens"].as_u64().unwrap(), t1["context_tokens"].as_u64().unwrap() - reused);
        for key in ["generated_tokens", "decode_tok_s", "reused_tokens"] {
            assert_eq!(stats[key], t1[key], "/stats describes the last turn ({key})");
        }
        // After /reset the same first message gets the same (greedy) reply from scratch.
        assert_eq!(t2["reused_tokens"], 0);
        assert_eq!(t2["tokens"], t0["tokens"]);
        if extra.len() > 1 {
            assert!(stats["alpha"].as_f64().is_some() && stats["tau"].as_f64().unwrap() >= 1.0, "{stats}");
            assert!(t1["draft_reused_tokens"].as_u64().unwrap() > 0, "the draft's cache is reused too: {t1}");
        }
    }
}

#[test]
fn speculative_replies_equal_target_only_replies_and_text_mode_streams_them() {
    // Short turns: the tiny model's context is 128 positions, and its random bytes re-encode
    // lossily (each U+FFFD is three byte tokens).
    let input = "a\nb\nc\n";
    let plain = json_lines(&run_tiny(&["--json"], input));
    let spec = json_lines(&run_tiny(&["--json", "--draft", &tiny("llama-draft.gguf"), "--k", "2"], input));
    let ngram = json_lines(&run_tiny(&["--json", "--proposer", "ngram"], input));
    for i in 0..3 {
        assert_eq!(spec[i]["tokens"], plain[i]["tokens"], "turn {i}");
        assert_eq!(ngram[i]["tokens"], plain[i]["tokens"], "turn {i}");
    }
    // Without --json the replies are streamed to stdout, one line each (the random model's bytes
    // may include newlines, so compare the concatenation).
    let o = run_tiny(&[], input);
    assert!(o.status.success());
    let streamed = String::from_utf8_lossy(&o.stdout).into_owned();
    let want: String = plain.iter().map(|t| format!("{}\n", t["text"].as_str().unwrap())).collect();
    assert_eq!(streamed, want);
    let notes = String::from_utf8_lossy(&o.stderr);
    assert!(notes.contains("> ") && notes.contains("/reset"), "{notes}");
}

#[test]
fn commands_and_errors_are_handled_without_ending_the_chat() {
    let o = run_tiny(&["--json", "--context", "40"], "/stats\n/nonsense\n/help\nhello\nthis message is far too long for a forty position context\n/reset\nhi\n/quit\nnever read\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let notes = String::from_utf8_lossy(&o.stderr);
    assert!(notes.contains("no turn yet") && notes.contains("unknown command") && notes.contains("context overflow"), "{notes}");
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2, "the overflowing turn is dropped, /quit stops before the last line: {lines:?}");
    assert_eq!(lines[1]["reused_tokens"], 0, "after /reset nothing is reused");
    // A model without a chat template is refused with a hint.
    let o = chat(&["--model", &tiny("llama.gguf")], "hi\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--chat-template"));
}

#[test]
fn ctrl_d_in_a_terminal_ends_the_chat() {
    // util-linux `script` runs the chat on a pseudo-terminal; ^D at the start of a line is the
    // terminal's end of input.
    if Command::new("script").arg("--version").output().is_err() {
        report_skip("no `script` (util-linux) for a pseudo-terminal");
        return;
    }
    let args = tiny_args(&[]);
    let cmd = format!("{} chat {}", env!("CARGO_BIN_EXE_specdec"), args.join(" "));
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin.write_all(b"\x04").unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(start.elapsed().as_secs() < 60, "chat did not end on ^D");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains("chatting with") && screen.contains("hello"), "{screen}");
}

#[test]
fn real_model_replies_end_at_the_end_of_turn_token_and_print_no_special_tokens() {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        report_skip("SPECDEC_SKIP_REAL=1");
        return;
    }
    let input = "What is 2 + 2? Answer with one number only.\nAnd 3 + 3?\n/stats\n";
    let base = ["--model", "qwen2.5-coder-0.5b", "--max-new-tokens", "48", "--threads", "2"];
    let args: Vec<&str> = base.iter().copied().chain(["--json", "--draft", "qwen2.5-coder-0.5b", "--k", "3", "--schedule", "fixed"]).collect();
    let o = chat(&args, input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3);
    for t in &lines[..2] {
        assert_eq!(t["stop"], "eos", "the reply ends at <|im_end|>: {t}");
        let text = t["text"].as_str().unwrap();
        assert!(!text.contains("<|im_end|>") && !text.contains("<|im_start|>") && !text.contains("<|endoftext|>"), "{text:?}");
    }
    assert!(lines[0]["text"].as_str().unwrap().contains('4'), "{}", lines[0]);
    assert!(lines[1]["text"].as_str().unwrap().contains('6'), "{}", lines[1]);
    // The second turn prefills only its own tokens plus the template's glue; a self-draft's cache
    // is reused as well and accepts everything.
    let (ctx, reused) = (lines[1]["context_tokens"].as_u64().unwrap(), lines[1]["reused_tokens"].as_u64().unwrap());
    assert!(reused >= lines[0]["context_tokens"].as_u64().unwrap(), "{}", lines[1]);
    assert!(ctx - reused < 25, "turn 2 prefilled {} tokens", ctx - reused);
    assert!(lines[1]["draft_reused_tokens"].as_u64().unwrap() >= lines[0]["context_tokens"].as_u64().unwrap());
    assert_eq!(lines[2]["stats"]["alpha"], 1.0);
    // Streaming text mode prints the same reply, without special tokens.
    let o = chat(&base, input);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(lines[0]["text"].as_str().unwrap()), "{out}");
    assert!(!out.contains("<|"), "{out}");
    assert!(out.contains("α̂ = 1.000") || out.contains("target-only"), "{out}");
}

#[test]
fn input_that_is_not_utf8_is_reported_and_ignored() {
    let args = tiny_args(&["--json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Line 1 is Latin-1 (0xE9), lines 2-3 are one input continued with `\` whose second line is
    // a lone continuation byte; line 4 is a valid turn.
    let o = chat_bytes(&args, b"caf\xe9\nfirst \\\nsecond \x80\nhello\n");
    let notes = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{notes}");
    assert!(notes.contains("error: input line 1 is not valid UTF-8 (invalid byte at offset 3)"), "{notes}");
    assert!(notes.contains("error: input line 3 is not valid UTF-8 (invalid byte at offset 7)"), "{notes}");
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "only the valid input is a turn: {lines:?}");
    // The dropped lines left no trace (no lossily decoded text joined the conversation): the turn
    // is the one a clean "hello" gets.
    let clean = json_lines(&run_tiny(&["--json"], "hello\n"));
    assert_eq!(lines[0]["turn"], 0);
    assert_eq!(lines[0]["context_tokens"], clean[0]["context_tokens"]);
    assert_eq!(lines[0]["tokens"], clean[0]["tokens"]);
}

#[test]
fn template_limits_are_settable_and_reported() {
    let o = run_tiny(&["--json", "--template-fuel", "10"], "hello\n");
    let notes = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{notes}");
    assert!(notes.contains("exceeded its fuel limit: the template ran more than 10 instructions"), "{notes}");
    let o = run_tiny(&["--json", "--template-max-bytes", "20"], "hello\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("exceeded its bytes limit"));
    assert!(run_tiny(&["--json", "--template-fuel", "100000"], "hello\n").status.success());
}

/// Reports a skipped test as `SKIPPED: <test>: <reason>` (the line `.ci/run` counts), straight
/// to stderr: the test harness captures `eprintln!` from passing tests.
fn report_skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("(unnamed test)");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}
