//! Parsing tests on synthetic files, including every malformed-input path.

use super::*;
use std::io::Write;

/// Builds a GGUF image in memory (v3, alignment 32) with the given metadata and F32 tensors.
pub(crate) struct Builder {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Builder {
    pub fn new() -> Self {
        Builder { kv: vec![], tensors: vec![] }
    }
    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }
    pub fn string(mut self, k: &str, v: &str) -> Self {
        self.kv.push((k.into(), 8, Self::s(v)));
        self
    }
    pub fn u32(mut self, k: &str, v: u32) -> Self {
        self.kv.push((k.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    pub fn f32(mut self, k: &str, v: f32) -> Self {
        self.kv.push((k.into(), 6, v.to_le_bytes().to_vec()));
        self
    }
    pub fn strings(mut self, k: &str, v: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(Self::s(x));
        }
        self.kv.push((k.into(), 9, b));
        self
    }
    pub fn tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push((name.into(), dims.to_vec(), 0, data));
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            out.extend(Self::s(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        let mut offsets = vec![];
        for (name, dims, ty, data) in &self.tensors {
            out.extend(Self::s(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(data);
        }
        out
    }
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn sample() -> Builder {
    Builder::new()
        .string("general.architecture", "llama")
        .u32("llama.block_count", 2)
        .f32("llama.rope.freq_base", 10000.0)
        .strings("tokenizer.ggml.tokens", &["a", "b", "c"])
        .tensor_f32("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .tensor_f32("v", &[4], &[7.0, 8.0, 9.0, 10.0])
}

#[test]
fn parses_metadata_and_tensors() {
    let p = write_temp("ok.gguf", &sample().bytes());
    let g = Gguf::open(&p).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "b", "c"]);
    let info = g.tensor_info("w").unwrap();
    assert_eq!(info.dims, vec![3, 2]);
    assert_eq!(info.shape(), vec![2, 3], "row-major shape reverses GGUF's ne order");
    let (v, shape) = g.tensor_f32("v").unwrap();
    assert_eq!((v, shape), (vec![7.0, 8.0, 9.0, 10.0], vec![4]));
    let (w, _) = g.tensor_f32("w").unwrap();
    assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(matches!(g.tensor_f32("nope"), Err(Error::MissingTensor { .. })));
    assert!(matches!(g.get_u64("general.architecture"), Err(Error::Metadata { .. })));
}

#[test]
fn bad_magic_is_a_typed_error() {
    let mut b = sample().bytes();
    b[0] = b'X';
    let p = write_temp("magic.gguf", &b);
    let e = Gguf::open(&p).unwrap_err();
    assert!(matches!(e, Error::Gguf { .. }), "{e}");
    assert!(e.to_string().contains("magic") && e.to_string().contains("magic.gguf"), "{e}");
}

#[test]
fn every_truncation_is_a_typed_error() {
    let full = sample().bytes();
    for len in 0..full.len() {
        let p = write_temp("trunc.gguf", &full[..len]);
        match Gguf::open(&p) {
            Err(Error::Gguf { problem, .. }) => assert!(!problem.is_empty()),
            Err(e) => panic!("unexpected error kind at {len}: {e}"),
            Ok(_) => panic!("truncated file of {len} bytes opened"),
        }
    }
}

#[test]
fn unknown_tensor_type_and_absurd_counts() {
    let mut b = Builder::new().string("general.architecture", "llama");
    b.tensors.push(("q".into(), vec![32], 99, vec![0; 64]));
    let p = write_temp("dtype.gguf", &b.bytes());
    assert!(matches!(Gguf::open(&p), Err(Error::UnsupportedDtype { .. })));

    let mut bytes = sample().bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let p = write_temp("count.gguf", &bytes);
    assert!(matches!(Gguf::open(&p), Err(Error::Gguf { .. })));
}

#[test]
fn missing_file_names_the_path() {
    let e = Gguf::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn arrays_stay_in_the_file_and_decode_on_demand() {
    // [[1, 2], [3]] as nested i32 arrays, a string list with one invalid UTF-8 entry, and an
    // unknown element type inside an array (refused at open, not when read).
    let i32s = |v: &[i32]| {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| b.extend(x.to_le_bytes()));
        b
    };
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    nested.extend(i32s(&[1, 2]));
    nested.extend(i32s(&[3]));
    let mut bad_utf8 = 8u32.to_le_bytes().to_vec();
    bad_utf8.extend(2u64.to_le_bytes());
    for s in [&b"ok"[..], &[0x66, 0xff]] {
        bad_utf8.extend((s.len() as u64).to_le_bytes());
        bad_utf8.extend(s);
    }
    let mut b = sample();
    b.kv.push(("nested".into(), 9, nested));
    b.kv.push(("bytes".into(), 9, bad_utf8));
    let p = write_temp("arrays.gguf", &b.bytes());
    let g = Gguf::open(&p).unwrap();

    let outer = g.get("nested").and_then(MetaValue::as_array).unwrap();
    assert_eq!(outer.len(), 2);
    assert!(outer.strings().is_none(), "not an array of strings");
    let inner: Vec<Vec<i64>> = outer
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
        .collect();
    assert_eq!(inner, vec![vec![1, 2], vec![3]]);
    assert_eq!(g.get_str_array("bytes").unwrap(), vec!["ok", "f\u{fffd}"]);
    assert_eq!(g.get("nested").unwrap().summary(), "[2 items]");

    // Dropping the header's pages loses nothing: the next read faults them back from the file.
    g.release_header_pages();
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["a", "b", "c"]);
    assert_eq!(inner, outer.iter().map(|v| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>()).collect::<Vec<_>>());

    let mut b = sample();
    let mut unknown = 13u32.to_le_bytes().to_vec();
    unknown.extend(1u64.to_le_bytes());
    unknown.extend([0u8; 8]);
    b.kv.push(("unknown".into(), 9, unknown));
    let p = write_temp("unknown-elem.gguf", &b.bytes());
    match Gguf::open(&p) {
        Err(Error::Gguf { problem, .. }) => assert!(problem.contains("unknown array element type 13"), "{problem}"),
        other => panic!("expected a typed error, got {other:?}"),
    }
}
