//! `records.jsonl`: one line per measured generation, appended and synced as soon as it exists, so
//! a run killed at any point loses at most the generation in flight, and `--resume` can skip
//! every (cell, prompt, repeat) key already on disk.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a generation measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Target-only decoding: the speedup baseline.
    Target,
    /// The draft (or layer-skip draft) decoding alone: its speed and whole-generation cost ratio.
    Draft,
    /// Speculative decoding with a pair.
    Spec,
}

/// One measured generation. Field names are the CSV/JSON schema (notebooks-data/README.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Unique per (cell, prompt, repeat): `cell|prompt_set/prompt_id|rN`.
    pub key: String,
    /// Identifies the cell (everything but prompt and repeat).
    pub cell: String,
    pub kind: Kind,
    /// Pair label for spec records; empty for baselines.
    pub pair: String,
    /// The model that decoded (the target for spec records; `target@L` for layer-skip drafts).
    pub model: String,
    /// The draft model of a spec record (`target@L` for layer-skip; empty for n-gram and baselines).
    #[serde(default)]
    pub draft: String,
    pub proposer: String,
    pub schedule: String,
    /// The proposer's and schedule's parameters, e.g. `ngram=3` or `max_k=8,cost_ratio=0.35`.
    #[serde(default)]
    pub params: String,
    /// Grid k (0 for baselines).
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub prompt_set: String,
    pub prompt_id: String,
    pub category: String,
    pub repeat: usize,
    pub seed: u64,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub stop: String,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// D, A, N, E (spec records; 0 otherwise).
    pub drafted: u64,
    pub accepted: u64,
    pub iterations: u64,
    pub emitted: u64,
    pub position_tested: Vec<u64>,
    pub position_accepted: Vec<u64>,
    pub alpha: f64,
    pub tau: f64,
    pub draft_s: f64,
    pub verify_s: f64,
    pub overhead_s: f64,
    pub draft_steps: u64,
    pub tokens: Vec<u32>,
    pub text: String,
}

impl Record {
    /// Seconds per decode step after the first token (0 when there is none).
    pub fn step_s(&self) -> f64 {
        if self.new_tokens > 1 {
            self.decode_s / (self.new_tokens - 1) as f64
        } else {
            0.0
        }
    }

    /// The group key shared by every record made on the same prompt with the same sampling
    /// settings and repeat: baselines and spec cells pair up on it.
    pub fn group(&self) -> String {
        group_key(&self.prompt_set, &self.prompt_id, self.repeat, self.temperature, self.top_p, self.top_k, self.max_new_tokens)
    }
}

pub fn group_key(set: &str, prompt: &str, repeat: usize, temperature: f32, top_p: f32, top_k: usize, max_new: usize) -> String {
    format!("{set}/{prompt}|r{repeat}|T={temperature}|top_p={top_p}|top_k={top_k}|n={max_new}")
}

/// The append-only record file of a run.
pub struct RecordLog {
    path: PathBuf,
    file: File,
    /// Bytes of whole records in the file: where a failed append is cut back to.
    len: u64,
    done: HashSet<String>,
}

impl RecordLog {
    /// Opens (creating) `dir/records.jsonl`. A torn last line — a write cut short by a crash or a
    /// full disk — is removed so the file is valid JSONL again, and its key will be redone. Damage
    /// anywhere else (a line that is not a record, a key recorded twice) is refused rather than
    /// repaired: dropping it would lose or double-count generations silently.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("records.jsonl");
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut done = HashSet::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut good_len = 0u64;
        let mut torn = None;
        {
            let mut reader = BufReader::new(&mut file);
            reader.seek(SeekFrom::Start(0))?;
            let mut line = Vec::new();
            for number in 1.. {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                if line.iter().all(u8::is_ascii_whitespace) && line.ends_with(b"\n") {
                    good_len += n as u64;
                    continue;
                }
                match serde_json::from_slice::<Record>(&line) {
                    Ok(r) if line.ends_with(b"\n") => {
                        if let Some(first) = first_line.insert(r.key.clone(), number) {
                            bail!("{}:{number}: record {} was already recorded on line {first}; remove one of the two lines, then --resume", path.display(), r.key);
                        }
                        if let Some(t) = torn {
                            bail!("{}:{t}: not a record, and records follow it; remove that line, then --resume", path.display());
                        }
                        done.insert(r.key);
                        good_len += n as u64;
                    }
                    // Not (yet) a whole record: acceptable only as the last line.
                    _ => {
                        if let Some(t) = torn {
                            bail!("{}:{t}: not a record, and more lines follow it; remove that line, then --resume", path.display());
                        }
                        torn = Some(number);
                    }
                }
            }
        }
        let len = file.metadata()?.len();
        if good_len < len {
            file.set_len(good_len).map_err(|e| crate::rundir::write_error(e, &path))?;
            file.sync_data().map_err(|e| crate::rundir::write_error(e, &path))?;
            eprintln!("note: dropped an incomplete record at the end of {} ({} bytes); it will be made again", path.display(), len - good_len);
        }
        Ok(RecordLog { path, file, len: good_len, done })
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends one record as one line in one `write` and syncs it before returning. If anything
    /// fails (a full disk), the file is cut back to its last whole record, so it stays valid for
    /// `--resume`; should even that fail, `open` drops the torn line.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        if let Err(e) = write_line(&mut self.file, &line).and_then(|_| self.file.sync_data()) {
            let _ = self.file.set_len(self.len);
            return Err(crate::rundir::write_error(e, &self.path));
        }
        self.len += line.len() as u64;
        self.done.insert(record.key.clone());
        Ok(())
    }
}

/// One `write` of the whole line (the file is opened for appending, so it lands at the end). A
/// short write only happens when the device cannot take more; writing the rest then either
/// succeeds or surfaces the device's own error (ENOSPC) for the message.
fn write_line(file: &mut File, line: &[u8]) -> std::io::Result<()> {
    let written = loop {
        match file.write(line) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    file.write_all(&line[written..])
}

/// Reads every complete record of a run directory (ignoring a torn last line).
pub fn read_records(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join("records.jsonl");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    let mut out = Vec::new();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let r: Record = serde_json::from_slice(line).with_context(|| format!("{}:{}: not a record", path.display(), i + 1))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str) -> Record {
        let line = format!(
            r#"{{"key":"{key}","cell":"c","kind":"target","pair":"","model":"m","proposer":"","schedule":"","k":0,"temperature":0.0,"top_p":1.0,"top_k":0,"max_new_tokens":1,"prompt_set":"s","prompt_id":"p","category":"","repeat":0,"seed":0,"prompt_tokens":1,"new_tokens":1,"stop":"length","prefill_s":0.0,"decode_s":0.0,"prefill_tok_s":0.0,"decode_tok_s":0.0,"drafted":0,"accepted":0,"iterations":0,"emitted":0,"position_tested":[],"position_accepted":[],"alpha":0.0,"tau":0.0,"draft_s":0.0,"verify_s":0.0,"overhead_s":0.0,"draft_steps":0,"tokens":[1],"text":"x"}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    fn dir_with(name: &str, bytes: &[u8]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("specdec-records-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("records.jsonl"), bytes).unwrap();
        d
    }

    fn line(key: &str) -> Vec<u8> {
        let mut l = serde_json::to_vec(&record(key)).unwrap();
        l.push(b'\n');
        l
    }

    #[test]
    fn a_torn_last_line_is_dropped_even_when_not_utf8_and_redone_once() {
        let mut bytes = [line("a"), line("b")].concat();
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(b"{\"key\":\"c\",\"text\":\"\xe2\x82");
        let d = dir_with("torn", &bytes);
        let mut log = RecordLog::open(&d).unwrap();
        assert_eq!(std::fs::metadata(d.join("records.jsonl")).unwrap().len(), whole);
        assert!(log.is_done("a") && log.is_done("b") && !log.is_done("c"));
        log.append(&record("c")).unwrap();
        let keys: Vec<String> = read_records(&d).unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn damage_before_the_last_line_or_a_repeated_key_is_refused_not_repaired() {
        let d = dir_with("middle", &[line("a"), b"garbage\n".to_vec(), line("b")].concat());
        let e = RecordLog::open(&d).err().expect("refused").to_string();
        assert!(e.contains("records.jsonl:2") && e.contains("not a record"), "{e}");
        assert_eq!(read_records(&d).map(|_| ()).unwrap_err().to_string(), format!("{}:2: not a record", d.join("records.jsonl").display()));
        let d = dir_with("twice", &[line("a"), line("b"), line("a")].concat());
        let e = RecordLog::open(&d).err().expect("refused").to_string();
        assert!(e.contains("records.jsonl:3") && e.contains("already recorded on line 1"), "{e}");
    }
}
