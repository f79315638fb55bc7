//! `specdec run`: executes an experiment grid with fair baselines and writes a run directory.
//!
//! The unit of work is a *group*: one prompt, one repeat, one sampling setting. Within a group the
//! runner measures every target-only baseline, every draft-only baseline and every speculative
//! cell (pair × k) back to back in one process, so a speedup always compares generations of the
//! same prompt made minutes apart on the same machine. Shards (`--shard I/N`) take whole groups,
//! which makes every shard self-contained and N merged shards equal to one unsharded run.

use crate::backend::Backend;
use crate::config::{ExperimentConfig, PromptSet, ProposerKind};
use crate::proposers::{proposer_label, DraftSource};
use crate::records::{Kind, Record, RecordLog};
use anyhow::{Context, Result};
use engine::generate::{generate, positions_needed, GenerationConfig};
use engine::model::{CausalLm, KvCache, LayerSkip, LogitRows, ModelConfig};
use engine::sampling::{Logits, SamplingParams};
use engine::speculative::{compare_vocabularies, generate_speculative, PairMode, SpecConfig, SpecMetrics, TextBridge, VocabComparison};
use engine::tokenizer::{ChatMessage, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct RunOptions {
    /// Parent of `<experiment>/<run-id>/` (default `results`).
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub quiet: bool,
    /// Overrides the config's default thread count (e.g. from a cluster allocation).
    pub threads: Option<usize>,
}

/// A deterministic slice of the grid's groups: those whose index ≡ `index − 1` (mod `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 2/8")?;
        let (index, count): (usize, usize) = (i.parse().map_err(|_| "I is not a number")?, n.parse().map_err(|_| "N is not a number")?);
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {index}/{count}: need 1 ≤ I ≤ N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Written once at the start of a run (and amended on resume).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub experiment: String,
    pub run_id: String,
    pub git_commit: String,
    pub git_dirty: bool,
    pub engine_version: String,
    pub backend: String,
    pub threads: usize,
    pub cpu_model: String,
    pub cores: usize,
    pub hostname: String,
    pub start_time: String,
    pub command: Vec<String>,
    pub shard: Option<Shard>,
    pub models: BTreeMap<String, ModelManifest>,
    #[serde(default)]
    pub resumed: Vec<String>,
    /// For merged runs: the shard directories combined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// The auto schedule's measured costs per pair label (c and the verification curve).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub costs: BTreeMap<String, engine::speculative::Costs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelManifest {
    pub source: String,
    pub backend: String,
    pub threads: usize,
    /// CPU kernels for quantized weights (`q8`, `exact`, `f32`).
    #[serde(default)]
    pub kernels: String,
    pub architecture: String,
    pub files: Vec<FileHash>,
    /// The graphics adapter, for models on `wgpu` (its name, driver, and whether it is software).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_adapter: Option<crate::backend::GpuAdapter>,
    /// Bytes the model's weights take in device memory (accelerators that report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_weight_bytes: Option<u64>,
    /// The float type of activations and KV cache on a GPU device (`f32`, `f16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_float: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileHash {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A model whose every forward pass runs on its own thread pool (models may use different
/// thread counts in one experiment; the pool is also where Burn's CPU backends do their work).
struct Pooled {
    model: Box<dyn CausalLm>,
    pool: Arc<rayon::ThreadPool>,
}

impl CausalLm for Pooled {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows) -> engine::Result<Logits> {
        self.pool.install(|| self.model.forward(tokens, cache, rows))
    }
    fn new_cache(&self, capacity: usize) -> engine::Result<KvCache> {
        self.model.new_cache(capacity)
    }
    fn new_partial_cache(&self, capacity: usize, layers: usize) -> engine::Result<KvCache> {
        self.model.new_partial_cache(capacity, layers)
    }
    fn head_subset(&self, ids: &[u32]) -> engine::Result<engine::model::HeadSubset> {
        self.pool.install(|| self.model.head_subset(ids))
    }
    fn forward_subset(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitRows, head: &engine::model::HeadSubset) -> engine::Result<Logits> {
        self.pool.install(|| self.model.forward_subset(tokens, cache, rows, head))
    }
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }
}

struct Loaded {
    model: Pooled,
    tokenizer: Tokenizer,
}

/// One measured generation to make.
#[derive(Debug, Clone)]
struct Job {
    kind: Kind,
    /// Index into `cfg.pairs` (spec jobs).
    pair: Option<usize>,
    /// Target model name (baselines: the model that decodes; `target@L` for layer-skip drafts).
    model: String,
    k: usize,
    cell: String,
    key: String,
}

/// One prompt under one sampling setting and repeat, with everything measured on it.
#[derive(Debug, Clone)]
struct Group {
    set: usize,
    prompt: usize,
    repeat: usize,
    sampling: SamplingParams,
    max_new_tokens: usize,
    jobs: Vec<Job>,
}

/// Every group of the experiment, in a canonical order that does not depend on the shard.
fn plan(cfg: &ExperimentConfig, sets: &[PromptSet]) -> Vec<Group> {
    let targets: Vec<&str> = dedup(cfg.pairs.iter().map(|p| p.target.as_str()));
    let drafts: Vec<String> = if cfg.baselines.draft { dedup(cfg.pairs.iter().filter_map(|p| p.draft_model_label())) } else { vec![] };
    let g = &cfg.grid;
    let mut groups = Vec::new();
    for (si, set) in sets.iter().enumerate() {
        for (pi, prompt) in set.prompts.iter().enumerate() {
            for repeat in 0..cfg.repeats {
                for &t in &g.temperature {
                    for &top_p in &g.top_p {
                        for &top_k in &g.top_k {
                            for &max_new in &g.max_new_tokens {
                                let sampling = SamplingParams { temperature: t, top_k, top_p };
                                let sampling_key = format!("{}|T={t}|top_p={top_p}|top_k={top_k}|n={max_new}", set.name);
                                let record_key = |cell: &str| format!("{cell}|{}/{}|r{repeat}", set.name, prompt.id);
                                let mut jobs = Vec::new();
                                for m in &targets {
                                    let cell = format!("target:{m}|{sampling_key}");
                                    jobs.push(Job { kind: Kind::Target, pair: None, model: m.to_string(), k: 0, key: record_key(&cell), cell });
                                }
                                for m in &drafts {
                                    let cell = format!("draft:{m}|{sampling_key}");
                                    jobs.push(Job { kind: Kind::Draft, pair: None, model: m.to_string(), k: 0, key: record_key(&cell), cell });
                                }
                                for (i, pair) in cfg.pairs.iter().enumerate() {
                                    for k in pair.ks(&g.k) {
                                        let cell = format!("spec:{}|{}|k={k}|{sampling_key}", pair.label(), pair.schedule);
                                        jobs.push(Job { kind: Kind::Spec, pair: Some(i), model: pair.target.clone(), k, key: record_key(&cell), cell });
                                    }
                                }
                                groups.push(Group { set: si, prompt: pi, repeat, sampling, max_new_tokens: max_new, jobs });
                            }
                        }
                    }
                }
            }
        }
    }
    groups
}

fn dedup<T: PartialEq, I: IntoIterator<Item = T>>(items: I) -> Vec<T> {
    let mut out = Vec::new();
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Deterministic per-(set, prompt, repeat) seed: FNV-1a over the names, mixed with the base seed.
fn seed_for(base: u64, set: &str, prompt: &str, repeat: usize) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ base.wrapping_mul(0x9E3779B97F4A7C15);
    for b in set.bytes().chain([0]).chain(prompt.bytes()).chain([0]).chain((repeat as u64).to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A run directory and its lock, held until the caller has written the summaries.
pub struct RunDir {
    pub path: PathBuf,
    _lock: crate::rundir::RunLock,
}

/// Starts a new run of `config_path`; returns its directory, still locked.
pub fn run_new(config_path: &Path, opts: &RunOptions) -> Result<RunDir> {
    let mut cfg = ExperimentConfig::from_file(config_path)?;
    if opts.threads.is_some() {
        cfg.threads = opts.threads;
    }
    let base = config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let sets = cfg.load_prompts(base)?;
    // Frequency tables named relative to the config are pinned to absolute paths, so the run
    // directory's copy of the config (and --resume) finds them.
    for pair in &mut cfg.pairs {
        if let Some(table) = pair.draft_vocab_table.as_mut() {
            *table = base.join(&*table).canonicalize().with_context(|| format!("draft_vocab_table {}", table.display()))?;
        }
    }
    // Adapters likewise.
    for (name, model) in &mut cfg.models {
        if let Some(dir) = model.adapter.as_mut() {
            *dir = base.join(&*dir).canonicalize().with_context(|| format!("model `{name}`: adapter {}", dir.display()))?;
        }
    }
    let mut run_id = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "").replace('T', "-").trim_end_matches('Z').to_string();
    if let Some(s) = opts.shard {
        run_id.push_str(&format!("-shard{}of{}", s.index, s.count));
    }
    // The directory is made under a hidden name with its config, prompts and lock, then renamed
    // into place: a run directory that exists always has what --resume needs, and is locked
    // from its first moment.
    let parent = opts.out.join(&cfg.name);
    std::fs::create_dir_all(&parent).map_err(|e| crate::rundir::write_error(e, &parent))?;
    let staging = parent.join(format!(".{run_id}.{}.new", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| crate::rundir::write_error(e, &staging))?;
    let lock = crate::rundir::lock(&staging)?;
    let staged = (|| {
        crate::rundir::write_atomic(&staging.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        crate::rundir::write_atomic(&staging.join("prompts.json"), serde_json::to_string_pretty(&sets)?.as_bytes())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Two runs started in the same second get distinct ids (a rename never replaces a
    // directory that has files).
    let base_id = run_id.clone();
    let mut n = 1;
    let dir = loop {
        let dir = parent.join(&run_id);
        if !dir.exists() && std::fs::rename(&staging, &dir).is_ok() {
            break dir;
        }
        n += 1;
        run_id = format!("{base_id}-{n}");
        if n > 1000 {
            let _ = std::fs::remove_dir_all(&staging);
            anyhow::bail!("cannot create a run directory under {}", parent.display());
        }
    };
    crate::rundir::sync_dir(&parent);
    match execute(&dir, cfg, sets, opts.shard, opts.quiet, None, run_id) {
        Ok(()) => Ok(RunDir { path: dir, _lock: lock }),
        Err(e) => {
            // A run that failed before recording anything (a missing model, an incompatible
            // pair) leaves no directory behind; an interrupted run, or one with records, is
            // kept for --resume.
            let recorded = std::fs::metadata(dir.join("records.jsonl")).map_or(0, |m| m.len());
            if recorded == 0 && crate::interrupt::find(&e).is_none() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            Err(stopped(&dir, e))
        }
    }
}

/// Continues a run from its directory: same config, prompts and shard; finished keys are skipped.
/// Refused while another process holds the directory.
pub fn resume(dir: &Path, quiet: bool) -> Result<RunDir> {
    if !dir.join("config.toml").is_file() {
        anyhow::bail!("{} is not a run directory (it has no config.toml)", dir.display());
    }
    let lock = crate::rundir::lock(dir)?;
    let cfg = ExperimentConfig::from_file(&dir.join("config.toml"))?;
    let sets: Vec<PromptSet> = serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).with_context(|| format!("reading {}/prompts.json", dir.display()))?)
        .with_context(|| format!("reading {}/prompts.json", dir.display()))?;
    // A run stopped before its models were loaded has no manifest yet: it starts afresh in place.
    let manifest_path = dir.join("manifest.json");
    let manifest: Option<Manifest> = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| format!("reading {}", manifest_path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    };
    let run_id = manifest.as_ref().map_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), |m| m.run_id.clone());
    let shard = manifest.as_ref().and_then(|m| m.shard).or_else(|| shard_of(&run_id));
    execute(dir, cfg, sets, shard, quiet, manifest, run_id).map_err(|e| stopped(dir, e))?;
    Ok(RunDir { path: dir.to_path_buf(), _lock: lock })
}

/// The shard a run id names (`...-shardIofN`), for a run stopped before its manifest existed.
fn shard_of(run_id: &str) -> Option<Shard> {
    let spec = run_id.rsplit_once("-shard")?.1;
    let spec = spec.split('-').next()?.replacen("of", "/", 1);
    spec.parse().ok()
}

/// A run that stopped before its end (an error, a full disk, a signal): the cause, and what is
/// kept and how to go on.
#[derive(Debug)]
pub struct Stopped {
    pub cause: anyhow::Error,
    pub dir: PathBuf,
    pub kept: usize,
}

impl Stopped {
    /// 128 + the signal for an interrupted run, 1 for a failure.
    pub fn exit_code(&self) -> i32 {
        crate::interrupt::find(&self.cause).map_or(1, |i| i.exit_code())
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.display();
        write!(f, "{:#}\nthe run stopped; its {} finished records are kept in {dir}: continue with `specdec run --resume {dir}`", self.cause, self.kept)
    }
}

impl std::error::Error for Stopped {}

pub fn stopped(dir: &Path, cause: anyhow::Error) -> anyhow::Error {
    let kept = crate::records::read_records(dir).map_or(0, |r| r.len());
    anyhow::Error::new(Stopped { cause, dir: dir.to_path_buf(), kept })
}

fn execute(dir: &Path, cfg: ExperimentConfig, sets: Vec<PromptSet>, shard: Option<Shard>, quiet: bool, previous: Option<Manifest>, run_id: String) -> Result<()> {
    let mut log = RecordLog::open(dir)?;
    let groups: Vec<Group> = plan(&cfg, &sets)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index - 1))
        .map(|(_, g)| g)
        .collect();
    let total: usize = groups.iter().map(|g| g.jobs.len()).sum();
    let todo: usize = groups.iter().flat_map(|g| &g.jobs).filter(|j| !log.is_done(&j.key)).count();
    if !quiet {
        eprintln!("{}: {} generations in this run ({} already recorded) → {}", cfg.name, total, total - todo, dir.display());
    }

    // Load every model the pairs use, each on its backend and thread pool.
    let default_threads = cfg.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut used: Vec<&str> = dedup(cfg.pairs.iter().map(|p| p.target.as_str()));
    used.extend(dedup(cfg.pairs.iter().filter_map(|p| p.draft.as_deref())).into_iter().filter(|d| !cfg.pairs.iter().any(|p| p.target == *d)));
    let mut models: HashMap<String, Loaded> = HashMap::new();
    let mut manifest_models = BTreeMap::new();
    let mut pools: HashMap<usize, Arc<rayon::ThreadPool>> = HashMap::new();
    for name in dedup(used) {
        crate::interrupt::check()?;
        let entry = &cfg.models[name];
        let backend: Backend = cfg.backend_of(name)?;
        let threads = entry.threads.unwrap_or(default_threads);
        let pool = match pools.get(&threads) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?);
                pools.insert(threads, p.clone());
                p
            }
        };
        let device = backend.device()?;
        if !quiet {
            eprintln!("loading {name} ({}) on {backend} with {threads} threads", entry.source);
        }
        let kernels = cfg.kernels_of(name)?;
        let adapter = match &entry.adapter {
            Some(dir) => Some(engine::model::LoraAdapter::open(dir).with_context(|| format!("model `{name}`: adapter {}", dir.display()))?),
            None => None,
        };
        let (loaded, device_weight_bytes) = crate::backend::with_device_bytes(&device, || {
            pool.install(|| engine::cpu::with_kernel_mode(kernels, || engine::load_model_adapted(&entry.source, adapter.as_ref(), &device)))
        });
        let loaded = loaded.with_context(|| format!("loading model `{name}` from `{}`", entry.source))?;
        let gpu_adapter = match backend {
            crate::backend::Backend::Wgpu => Some(crate::backend::gpu_adapter()?),
            _ => None,
        };
        // The model's files and its adapter's, hashed once per run (a resumed run keeps its manifest).
        let files = match (&previous, &entry.adapter) {
            (Some(_), _) => vec![],
            (None, None) => hash_files(loaded.files.path())?,
            (None, Some(dir)) => [hash_files(loaded.files.path())?, hash_files(dir)?].concat(),
        };
        manifest_models.insert(
            name.to_string(),
            ModelManifest {
                source: entry.source.clone(),
                backend: backend.to_string(),
                threads,
                kernels: format!("{kernels:?}").to_lowercase(),
                architecture: loaded.model.config().name.clone(),
                files,
                gpu_adapter,
                device_weight_bytes,
                device_float: engine::model::Placement::of(&device).device_float().map(|f| f.name().to_string()),
            },
        );
        models.insert(name.to_string(), Loaded { model: Pooled { model: loaded.model, pool }, tokenizer: loaded.tokenizer });
    }
    // How each draft model relates to its target's vocabulary, and the text bridge of pairs
    // whose vocabularies differ (built once: it copies both tokenizers).
    let vocabs: Vec<Option<PairVocab<'_>>> = cfg
        .pairs
        .iter()
        .map(|pair| {
            pair.draft.as_ref().map(|d| {
                let (dt, tt) = (&models[d].tokenizer, &models[&pair.target].tokenizer);
                let comparison = compare_vocabularies(dt, tt);
                if !quiet {
                    eprintln!("{}: {}", pair.label(), crate::proposers::describe_pair(&comparison));
                }
                let bridge = (comparison.mode == PairMode::Text).then(|| TextBridge::new(dt, tt));
                PairVocab { comparison, bridge }
            })
        })
        .collect();
    let layer_skips: HashMap<String, LayerSkip<'_>> = cfg
        .pairs
        .iter()
        .filter(|p| p.proposer() == ProposerKind::LayerSkip)
        .map(|p| {
            let layers = p.draft_layers.unwrap_or(0);
            Ok((format!("{}@{layers}", p.target), LayerSkip::new(&models[&p.target].model, layers)?))
        })
        .collect::<Result<_>>()?;
    let draft_of = |label: &str| -> &dyn CausalLm {
        match layer_skips.get(label) {
            Some(l) => l,
            None => &models[label].model,
        }
    };

    // Truncated draft vocabularies: each pair's drafting head, made once.
    let heads: Vec<Option<engine::model::HeadSubset>> = cfg
        .pairs
        .iter()
        .map(|pair| match (pair.draft_vocab, pair.draft_model_label()) {
            (Some(n), Some(label)) => {
                crate::proposers::draft_head(draft_of(&label), &models[model_name(&label)].tokenizer, n, pair.draft_vocab_table.as_deref()).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    // The auto schedule's costs, measured once per pair on this machine (a resumed run keeps
    // the costs it started with, so its rounds keep their rule).
    let mut costs: Vec<Option<engine::speculative::Costs>> = vec![None; cfg.pairs.len()];
    for (i, pair) in cfg.pairs.iter().enumerate() {
        if !pair.spec().needs_costs() {
            continue;
        }
        if let Some(c) = previous.as_ref().and_then(|m| m.costs.get(&pair.label())) {
            costs[i] = Some(*c);
            continue;
        }
        crate::interrupt::check()?;
        let draft = pair.draft_model_label().map(|l| draft_of(&l));
        let measured = crate::calibrate::measure(&models[&pair.target].model, draft, heads[i].as_ref(), pair.spec().max_k)?;
        if !quiet {
            eprintln!("{}: auto schedule costs {}", pair.label(), crate::calibrate::describe(&measured, pair.spec().max_k));
        }
        costs[i] = Some(measured);
    }
    let pair_costs: BTreeMap<String, engine::speculative::Costs> =
        cfg.pairs.iter().zip(&costs).filter_map(|(p, c)| c.map(|c| (p.label(), c))).collect();
    let manifest = match previous {
        Some(mut m) => {
            m.resumed.push(now());
            m
        }
        None => Manifest {
            experiment: cfg.name.clone(),
            run_id,
            git_commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            backend: cfg.backend.clone(),
            threads: default_threads,
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hostname: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
            start_time: now(),
            command: std::env::args().collect(),
            shard,
            models: manifest_models,
            resumed: vec![],
            merged_from: vec![],
            costs: pair_costs,
        },
    };
    crate::rundir::write_atomic(&dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?.as_bytes())?;

    // Prompt ids per (model, set, prompt), rendered with that model's template.
    let mut encoded: HashMap<(String, usize, usize), Vec<u32>> = HashMap::new();
    let mut encode = |model: &str, set: usize, prompt: usize| -> Result<Vec<u32>> {
        let key = (model.to_string(), set, prompt);
        if let Some(ids) = encoded.get(&key) {
            return Ok(ids.clone());
        }
        let tok = &models[model_name(model)].tokenizer;
        let ids = encode_prompt(tok, &sets[set], prompt).with_context(|| format!("encoding prompt {}/{} for {model}", sets[set].name, sets[set].prompts[prompt].id))?;
        encoded.insert(key, ids.clone());
        Ok(ids)
    };

    // Warmup: each model and each pair generates a few unrecorded times before measurements.
    if todo > 0 && cfg.warmup > 0 {
        let g = groups.iter().find(|g| g.jobs.iter().any(|j| !log.is_done(&j.key))).expect("work left");
        let mut seen = std::collections::HashSet::new();
        for job in &g.jobs {
            let what = if job.kind == Kind::Spec { job.cell.split('|').next().unwrap_or("").to_string() } else { job.model.clone() };
            if !seen.insert(what.clone()) {
                continue;
            }
            if !quiet {
                eprintln!("warmup: {what}");
            }
            for w in 0..cfg.warmup {
                crate::interrupt::check()?;
                let mut short = g.clone();
                short.max_new_tokens = g.max_new_tokens.min(16);
                run_job(&cfg, &sets, &short, job, &models, &vocabs, &costs, &heads, &draft_of, &mut encode, w as u64)?;
            }
        }
    }

    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(todo as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise} / ETA {eta}] {wide_bar} {pos}/{len}\n  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for g in &groups {
        for job in &g.jobs {
            if log.is_done(&job.key) {
                continue;
            }
            // A signal stops the run here, between two records: nothing is half written.
            if let Err(i) = crate::interrupt::check() {
                bar.abandon();
                return Err(i.into());
            }
            bar.set_message(format!("{} · {}/{}", job.cell, sets[g.set].name, sets[g.set].prompts[g.prompt].id));
            let seed = seed_for(cfg.seed, &sets[g.set].name, &sets[g.set].prompts[g.prompt].id, g.repeat);
            let record = run_job(&cfg, &sets, g, job, &models, &vocabs, &costs, &heads, &draft_of, &mut encode, seed)?;
            log.append(&record)?;
            bar.inc(1);
            let live = if record.kind == Kind::Spec { format!("α̂ {:.2} τ {:.2} · ", record.alpha, record.tau) } else { String::new() };
            bar.println_if(!quiet, format!("{} {}{:.1} tok/s", record.key, live, record.decode_tok_s));
        }
    }
    bar.finish_and_clear();
    if !quiet {
        eprintln!("{} records in {}", log.done_count(), dir.join("records.jsonl").display());
    }
    Ok(())
}

trait PrintIf {
    fn println_if(&self, on: bool, line: String);
}

impl PrintIf for ProgressBar {
    fn println_if(&self, on: bool, line: String) {
        if on && self.is_hidden() {
            eprintln!("{line}");
        } else if on {
            self.println(line);
        }
    }
}

/// A draft model's vocabulary relation to its pair's target, and the bridge text mode needs.
struct PairVocab<'t> {
    comparison: VocabComparison,
    bridge: Option<TextBridge<'t>>,
}

/// Runs one job and returns its record.
#[allow(clippy::too_many_arguments)]
fn run_job<'m>(
    cfg: &ExperimentConfig,
    sets: &[PromptSet],
    g: &Group,
    job: &Job,
    models: &HashMap<String, Loaded>,
    vocabs: &'m [Option<PairVocab<'m>>],
    costs: &[Option<engine::speculative::Costs>],
    heads: &'m [Option<engine::model::HeadSubset>],
    draft_of: &dyn Fn(&str) -> &'m dyn CausalLm,
    encode: &mut dyn FnMut(&str, usize, usize) -> Result<Vec<u32>>,
    seed: u64,
) -> Result<Record> {
    let set = &sets[g.set];
    let prompt = &set.prompts[g.prompt];
    let gen = GenerationConfig { max_new_tokens: g.max_new_tokens, sampling: g.sampling, seed, stop_at_eos: !cfg.ignore_eos };
    let base_model = model_name(&job.model);
    let tok = &models[base_model].tokenizer;
    let eos = tok.eos_ids().to_vec();
    // The pair's labels and, for a draft model, how it drafts (fixed for the whole prompt).
    let (mut pair_label, mut draft_label, mut proposer_name, mut schedule, mut params) = Default::default();
    let mut mode = None;
    if let (Kind::Spec, Some(index)) = (job.kind, job.pair) {
        let pair = &cfg.pairs[index];
        let spec = pair.spec();
        (pair_label, draft_label, schedule) = (pair.label(), pair.draft_model_label().unwrap_or_default(), pair.schedule.to_string());
        (proposer_name, params) = (pair.proposer().to_string(), spec.params());
        if let (Some(_), Some(v)) = (pair.draft_model_label(), &vocabs[index]) {
            let m = match &v.bridge {
                Some(bridge) => crate::proposers::cross_vocab_mode(spec.cross_vocab, bridge, &g.sampling),
                None => v.comparison.mode,
            };
            proposer_name = proposer_label(m).to_string();
            params = [format!("vocab={}", v.comparison.relation), params].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(",");
            mode = Some(m);
        }
    }
    // One generation per user turn: the prompt, then each follow-up after the model's own
    // answers (Spec-Bench's multi-turn questions); a record sums the turns.
    if !prompt.turns.is_empty() && !set.chat {
        anyhow::bail!("prompt {}/{} has follow-up turns: its set must use the chat template", set.name, prompt.id);
    }
    let mut answers: Vec<String> = Vec::new();
    let mut total = Turns::default();
    for turn in 0..=prompt.turns.len() {
        let ids = if turn == 0 { encode(base_model, g.set, g.prompt)? } else { encode_follow_up(tok, set, g.prompt, &answers)? };
        let (generation, metrics) = match job.kind {
            Kind::Target | Kind::Draft => {
                let model: &dyn CausalLm = if job.kind == Kind::Target { &models[&job.model].model } else { draft_of(&job.model) };
                (generate(model, &ids, &eos, &gen, |_| {})?, SpecMetrics::default())
            }
            Kind::Spec => {
                let index = job.pair.expect("spec jobs name their pair");
                let pair = &cfg.pairs[index];
                let spec = pair.spec();
                let target = &models[&pair.target].model;
                let draft = match (pair.draft_model_label(), &vocabs[index]) {
                    (Some(label), Some(v)) => {
                        let model = draft_of(&label);
                        Some(match (v.comparison.mode, &v.bridge) {
                            (PairMode::Text, Some(bridge)) => {
                                let draft_tok = &models[model_name(&label)].tokenizer;
                                let prompt = if turn == 0 { encode(&label, g.set, g.prompt)? } else { encode_follow_up(draft_tok, set, g.prompt, &answers)? };
                                DraftSource::Text { model, bridge, prompt, shared_tokens: mode == Some(PairMode::SharedTokens) }
                            }
                            (PairMode::ExtendedIds, _) => DraftSource::Extended { model, target_vocab: target.config().vocab_size },
                            _ => DraftSource::Shared(model),
                        })
                    }
                    (Some(label), None) => Some(DraftSource::Shared(draft_of(&label))),
                    (None, _) => None,
                };
                let capacity = positions_needed(ids.len(), g.max_new_tokens).max(ids.len());
                let mut proposer = spec.build(draft, heads[index].as_ref(), capacity)?;
                let sc = SpecConfig { generation: gen.clone(), schedule: spec.schedule(job.k, costs[index])?, verification: spec.verification };
                let out = generate_speculative(target, proposer.as_mut(), &ids, &eos, &sc, |_| {})?;
                (out.generation, out.metrics)
            }
        };
        answers.push(tok.decode(&generation.tokens)?);
        total.add(generation, &metrics);
    }
    let decode_tok_s = total.decode_tok_s();
    let (generation, metrics) = (total.generation, total.metrics);
    let text = answers.join("\n\n");
    Ok(Record {
        key: job.key.clone(),
        cell: job.cell.clone(),
        kind: job.kind,
        pair: pair_label,
        model: job.model.clone(),
        draft: draft_label,
        proposer: proposer_name,
        schedule,
        params,
        k: job.k,
        temperature: g.sampling.temperature,
        top_p: g.sampling.top_p,
        top_k: g.sampling.top_k,
        max_new_tokens: g.max_new_tokens,
        prompt_set: set.name.clone(),
        prompt_id: prompt.id.clone(),
        category: prompt.category.clone(),
        repeat: g.repeat,
        seed,
        prompt_tokens: generation.prompt_tokens,
        new_tokens: generation.tokens.len(),
        stop: format!("{:?}", generation.stop).to_lowercase(),
        prefill_s: generation.prefill_s,
        decode_s: generation.decode_s,
        prefill_tok_s: generation.prefill_tok_s(),
        decode_tok_s,
        drafted: metrics.drafted,
        accepted: metrics.accepted,
        iterations: metrics.iterations,
        emitted: metrics.emitted,
        alpha: metrics.alpha(),
        tau: metrics.tau(),
        position_tested: metrics.position_tested,
        position_accepted: metrics.position_accepted,
        draft_s: metrics.draft_s,
        verify_s: metrics.verify_s,
        overhead_s: metrics.overhead_s,
        draft_steps: metrics.draft_steps,
        tokens: generation.tokens,
        text,
    })
}

/// The model a label names: a label is a model's name, or `name@L` for its first L layers.
fn model_name(label: &str) -> &str {
    label.split('@').next().unwrap_or(label)
}

/// The generations of a prompt's turns, added up: tokens concatenated, times and counts summed.
#[derive(Default)]
struct Turns {
    generation: engine::generate::Generation,
    metrics: SpecMetrics,
    /// Σ (tokens − 1) over turns: each turn's first token belongs to its prefill.
    decode_tokens: usize,
}

impl Turns {
    fn add(&mut self, g: engine::generate::Generation, m: &SpecMetrics) {
        self.decode_tokens += g.tokens.len().saturating_sub(1);
        let t = &mut self.generation;
        t.tokens.extend(g.tokens);
        t.prompt_tokens += g.prompt_tokens;
        t.prefill_s += g.prefill_s;
        t.decode_s += g.decode_s;
        t.stop = g.stop;
        self.metrics.add(m);
    }

    fn decode_tok_s(&self) -> f64 {
        if self.generation.decode_s > 0.0 {
            self.decode_tokens as f64 / self.generation.decode_s
        } else {
            0.0
        }
    }
}

/// Prompt ids for follow-up turn `answers.len()` of prompt `index`: the conversation so far with
/// the model's own `answers`, then the next user turn.
fn encode_follow_up(tok: &Tokenizer, set: &PromptSet, index: usize, answers: &[String]) -> Result<Vec<u32>> {
    let p = &set.prompts[index];
    let mut messages = conversation(set, index);
    for (answer, next) in answers.iter().zip(&p.turns) {
        messages.push(ChatMessage { role: "assistant".into(), content: answer.clone() });
        messages.push(ChatMessage { role: "user".into(), content: next.clone() });
    }
    Ok(tok.encode(&tok.apply_chat_template(&messages, true)?, false)?)
}

/// A chat prompt's messages: the set's system message, then the prompt's own messages (or its
/// single user turn).
fn conversation(set: &PromptSet, index: usize) -> Vec<ChatMessage> {
    let p = &set.prompts[index];
    let mut messages = Vec::new();
    if let Some(system) = &set.system {
        messages.push(ChatMessage { role: "system".into(), content: system.clone() });
    }
    match &p.messages {
        Some(m) => messages.extend(m.iter().cloned()),
        None => messages.push(ChatMessage { role: "user".into(), content: p.prompt.clone() }),
    }
    messages
}

/// Prompt ids for a prompt of a set: plain text, or the chat template over its messages (or over
/// a single user turn with the prompt).
pub fn encode_prompt(tok: &Tokenizer, set: &PromptSet, index: usize) -> Result<Vec<u32>> {
    if !set.chat {
        return Ok(tok.encode(&set.prompts[index].prompt, true)?);
    }
    Ok(tok.encode(&tok.apply_chat_template(&conversation(set, index), true)?, false)?)
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// sha256 of a model's files (a GGUF file, or the weights/config/tokenizer of an HF directory).
fn hash_files(path: &Path) -> Result<Vec<FileHash>> {
    use sha2::Digest;
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors" || x == "json"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|p| {
            let mut f = std::fs::File::open(&p).with_context(|| format!("hashing {}", p.display()))?;
            let mut h = sha2::Sha256::new();
            let bytes = std::io::copy(&mut f, &mut h)?;
            Ok(FileHash { path: p.display().to_string(), bytes, sha256: format!("{:x}", h.finalize()) })
        })
        .collect()
}

/// Record keys of a config's whole grid (all shards), for merge checks.
pub fn planned_keys(cfg: &ExperimentConfig, sets: &[PromptSet]) -> Vec<String> {
    plan(cfg, sets).into_iter().flat_map(|g| g.jobs.into_iter().map(|j| j.key)).collect()
}
