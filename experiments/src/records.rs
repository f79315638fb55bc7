//! `records.jsonl`: one line per measured generation, appended and synced as soon as it exists, so
//! a run killed at any point loses at most the generation in flight, and `--resume` can skip
//! every (cell, prompt, repeat) key already on disk.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
    done: HashSet<String>,
}

impl RecordLog {
    /// Opens (creating) `dir/records.jsonl`. An incomplete last line — a generation whose write was
    /// cut by a kill — is removed so the file is valid JSONL again; its key will be redone.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("records.jsonl");
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut done = HashSet::new();
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&mut file);
            reader.seek(SeekFrom::Start(0))?;
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => {
                        done.insert(r.key);
                        good_len += n as u64;
                    }
                    Err(_) => break,
                }
            }
        }
        let len = file.metadata()?.len();
        if good_len < len {
            file.set_len(good_len).with_context(|| format!("truncating the cut-off last line of {}", path.display()))?;
            eprintln!("note: dropped an incomplete record at the end of {} ({} bytes)", path.display(), len - good_len);
        }
        Ok(RecordLog { path, file, done })
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let before = self.file.metadata()?.len();
        let write = self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data());
        if let Err(e) = write {
            // Never leave half a line behind (e.g. a full disk): the file stays valid for --resume.
            let _ = self.file.set_len(before);
            return Err(e).with_context(|| format!("writing a record to {} (records already written are kept; fix the cause and --resume)", self.path.display()));
        }
        self.done.insert(record.key.clone());
        Ok(())
    }
}

/// Reads every complete record of a run directory (ignoring a cut-off last line).
pub fn read_records(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join("records.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let complete = if text.ends_with('\n') { &text[..] } else { &text[..text.rfind('\n').map_or(0, |i| i + 1)] };
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).with_context(|| format!("{}:{}: not a record", path.display(), i + 1))?;
        out.push(r);
    }
    Ok(out)
}
