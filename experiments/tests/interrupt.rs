//! `specdec run` under interruption, on the tiny fixture models: SIGKILL, SIGINT and SIGTERM at
//! random moments, each followed by `--resume`, end with exactly the records of an uninterrupted
//! run; a folder in use is refused; a full disk stops the run with every finished record intact.

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

fn specdec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specdec")).args(args).output().expect("run specdec")
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_specdec")).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run specdec")
}

fn tiny(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/tiny").join(name).canonicalize().unwrap().to_string_lossy().into_owned()
}

/// A fresh directory with 4 prompts and a config over the tiny Llama pair and prompt lookup:
/// 4 prompts × `repeats` × 2 temperatures groups of 6 generations (two baselines, 2 pairs × 2 k).
fn workspace(test: &str, repeats: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-interrupt-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts: String = (0..4).map(|i| format!("{{\"id\": \"p{i}\", \"category\": \"code\", \"prompt\": \"abc {i} hello hello\"}}\n")).collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let config = format!(
        "name = \"tiny\"\nwarmup = 1\nignore_eos = true\nthreads = 1\nrepeats = {repeats}\n\
         [models.target]\nsource = \"{}\"\n[models.draft]\nsource = \"{}\"\n\
         [[pairs]]\ntarget = \"target\"\ndraft = \"draft\"\n[[pairs]]\ntarget = \"target\"\nproposer = \"ngram\"\n\
         [grid]\nk = [1, 3]\ntemperature = [0.0, 1.0]\nmax_new_tokens = [24]\n\
         [[prompts]]\nfile = \"prompts.jsonl\"\nchat = false\n",
        tiny("llama.gguf"),
        tiny("llama-draft.gguf")
    );
    std::fs::write(dir.join("tiny.toml"), config).unwrap();
    dir
}

fn planned(repeats: usize) -> usize {
    4 * repeats * 2 * 6
}

/// The run folders under `out` (hidden ones are a run's folder being made, not yet a run).
fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("tiny"))
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Timing fields: the only ones two runs of the same grid may differ in.
const TIMINGS: [&str; 7] = ["prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s", "draft_s", "verify_s", "overhead_s"];

/// Every record of a run folder by key, without its timings. Fails on a line that is not a whole
/// record (a torn last line included: the runner never leaves one after an orderly stop) and on a
/// key recorded twice.
fn records(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("records.jsonl")).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "{}: a torn last line", dir.display());
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", dir.display(), i + 1));
        for t in TIMINGS {
            r.as_object_mut().unwrap().remove(t).unwrap_or_else(|| panic!("record without {t}"));
        }
        let key = r["key"].as_str().unwrap().to_string();
        assert!(out.insert(key.clone(), r).is_none(), "{}: record {key} appears twice", dir.display());
    }
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not yet waited for.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn finish(mut child: Child) -> (ExitStatus, String) {
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

/// One uninterrupted run of `ws`'s config into `ws/reference`: the records every interrupted
/// run must end up with.
fn reference(ws: &Path) -> BTreeMap<String, serde_json::Value> {
    let out = ws.join("reference");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    records(&run_dirs(&out)[0])
}

#[test]
fn random_kills_and_signals_lose_and_duplicate_nothing() {
    let repeats = 6;
    let ws = workspace("random", repeats);
    let started = Instant::now();
    let expected = reference(&ws);
    assert_eq!(expected.len(), planned(repeats));
    let reference_s = started.elapsed().as_secs_f64();

    let seed: u64 = std::env::var("SPECDEC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("kill schedule seed {seed} (set SPECDEC_KILL_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let out = ws.join("results");
    let config = ws.join("tiny.toml");
    let (mut kills, mut clean_stops, mut attempts) = (0, 0, 0);
    let mut history = Vec::new();
    // Shrinks the kill windows when a run outpaces them (a warm cache, a faster machine).
    let mut pace = 1.0;
    loop {
        attempts += 1;
        assert!(attempts < 200 && started.elapsed() < Duration::from_secs(90), "no end after {attempts} attempts: {history:?}");
        // Until a run folder exists, start the run; then resume it.
        let dir = run_dirs(&out).into_iter().next();
        let child = match &dir {
            None => spawn(&["run", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]),
            Some(d) => spawn(&["run", "--resume", d.to_str().unwrap(), "--quiet"]),
        };
        // Kill times spread over start-up, model loading, warm-up and recording: the work left
        // shared among the kills left, so that at least 24 land before the end; after those,
        // late enough for the run to finish.
        let left = expected.len() - dir.as_deref().map_or(0, |d| records(d).len());
        let share = pace * reference_s * left as f64 / expected.len() as f64;
        let window = if kills < 24 { 0.02 + share / (30 - kills) as f64 } else { reference_s * 3.0 };
        std::thread::sleep(Duration::from_secs_f64(rng.random_range(0.0..window)));
        let sig = [libc::SIGKILL, libc::SIGINT, libc::SIGTERM][rng.random_range(0..3)];
        signal(&child, sig);
        let (status, err) = finish(child);
        assert!(!err.contains("panicked"), "{err}");
        history.push((sig, status.code(), status.signal()));
        if status.success() {
            // The run ended before the signal was handled (or the signal came after the end).
            if kills >= 20 {
                break;
            }
            // Too early to have tested enough interruptions: start over with shorter windows
            // (what the finished run left on disk was checked like every other state).
            if let Some(d) = run_dirs(&out).first() {
                assert_eq!(records(d).len(), expected.len(), "a finished run with records missing: {history:?}");
            }
            std::fs::remove_dir_all(&out).unwrap();
            pace *= 0.5;
            continue;
        }
        kills += 1;
        match (sig, status.code(), status.signal()) {
            (libc::SIGKILL, None, Some(libc::SIGKILL)) => {}
            // An orderly stop: a distinct status, a message, and how to go on.
            (libc::SIGINT | libc::SIGTERM, Some(code), None) if code == 128 + sig => {
                assert!(err.contains(if sig == libc::SIGINT { "interrupted by SIGINT" } else { "interrupted by SIGTERM" }) && err.contains("--resume"), "{err}");
                clean_stops += 1;
            }
            // The signal came before the handler was installed (the first moments of the process).
            (_, None, Some(s)) if s == sig => {}
            other => panic!("unexpected end {other:?} after signal {sig}: {err}"),
        }
        // Whatever the moment, what is on disk is whole records, each once.
        if let Some(d) = run_dirs(&out).first() {
            let _ = records(d);
        }
    }
    eprintln!("{kills} kills ({clean_stops} orderly stops) in {attempts} attempts, {:.1} s: {history:?}", started.elapsed().as_secs_f64());
    assert!(kills >= 20, "only {kills} interruptions landed: {history:?}");
    assert!(clean_stops >= 3, "SIGINT/SIGTERM never stopped a run in order: {history:?}");
    let dirs = run_dirs(&out);
    assert_eq!(dirs.len(), 1, "one run folder: {dirs:?}");
    let got = records(&dirs[0]);
    let lost: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(lost.is_empty(), "lost records: {lost:?}");
    assert_eq!(got.len(), expected.len(), "extra records");
    for (key, r) in &expected {
        assert_eq!(&got[key], r, "{key} differs from the uninterrupted run");
    }
    assert!(dirs[0].join("summary.json").is_file() && dirs[0].join("report.md").is_file());
}

#[test]
fn a_folder_in_use_is_refused_and_free_again_after() {
    let ws = workspace("locked", 6);
    let out = ws.join("results");
    let child = spawn(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    let start = Instant::now();
    let dir = loop {
        if let Some(d) = run_dirs(&out).into_iter().next() {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no run folder");
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = specdec(&["run", "--resume", dir.to_str().unwrap(), "--quiet"]);
    let (status, err) = finish(child);
    assert!(status.success(), "{err}");
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(&dir.display().to_string()) && e.contains("in use by another specdec run"), "{e}");
    assert_eq!(records(&dir).len(), planned(6), "the refused resume wrote nothing");
    // The lock died with its owner: resuming the finished run now works (and has nothing to do).
    let o = specdec(&["run", "--resume", dir.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(records(&dir).len(), planned(6));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: usize) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", at.to_str().unwrap()]).output().map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, bytes: usize) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={bytes}"), self.0.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_run_and_resume_completes_it() {
    let repeats = 2;
    let ws = workspace("full", repeats);
    let expected = reference(&ws);
    // Records are about 1 kB each: 48 kB holds the run's first files and some of its 96 records.
    let mount = ws.join("small-disk");
    let disk = match Tmpfs::mount(&mount, 48 << 10) {
        Ok(d) => d,
        Err(reason) => {
            println!("SKIPPED: a_full_disk_stops_the_run_and_resume_completes_it: {reason}");
            return;
        }
    };
    let out = mount.join("results");
    let o = specdec(&["run", ws.join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{e}");
    let dir = run_dirs(&out).into_iter().next().expect("the run folder is kept");
    assert!(e.contains(&format!("no space left on device writing {}", dir.join("records.jsonl").display())), "{e}");
    assert!(e.contains("--resume") && !e.contains("panicked"), "{e}");
    let kept = records(&dir);
    assert!(!kept.is_empty() && kept.len() < expected.len(), "{} of {} records before the disk filled", kept.len(), expected.len());
    assert!(e.contains(&format!("its {} finished records are kept", kept.len())), "{e}");
    for (key, r) in &kept {
        assert_eq!(&expected[key], r, "{key}");
    }
    // Room again: the run goes on from where it stopped.
    disk.resize(8 << 20);
    let o = specdec(&["run", "--resume", dir.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(records(&dir), expected);
    drop(disk);
}
