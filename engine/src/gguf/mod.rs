//! GGUF files: header, metadata, tensor index, memory-mapped tensor data.
//!
//! The format (llama.cpp's `gguf.md`): magic `GGUF`, version (2 or 3), tensor count, metadata
//! count, then key/value metadata, then tensor infos (name, dims, type, offset), then the
//! tensor data section starting at the next multiple of `general.alignment` (default 32).
//! Dimensions are listed fastest axis first: a matrix with `ne = [in, out]` has `out` rows of
//! `in` contiguous values, so `token_embd.weight` appears as `[hidden, vocab]`.
//!
//! Every read is bounds-checked: a truncated or corrupt file is an [`Error::Gguf`], never a panic.

mod fast;
mod quant;

pub use fast::dequantize_fast;
pub use quant::{dequantize, GgmlType};
pub(crate) use quant::scale_min_k4;

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

// Limits on what a header may claim, far above any real model (the largest vocabularies are ~2.6e5
// tokens, the largest models ~1e4 tensors, chat templates ~1e5 bytes) and far below what would
// exhaust memory: counts and lengths are also checked against the bytes left in the file.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA: u64 = 1 << 20;
const MAX_ARRAY_LEN: u64 = 1 << 24;
const MAX_STRING_LEN: u64 = 1 << 26;
/// Arrays of arrays: llama.cpp writes none deeper than 2.
const MAX_ARRAY_DEPTH: usize = 4;
const MAX_ALIGNMENT: u64 = 1 << 16;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A metadata array, left in the file and decoded on demand. A tokenizer's token and merge lists
/// are ~10⁵ short strings: parsed eagerly they would be as many heap allocations (≈ 8 MB for a
/// 49k vocabulary), and their freed holes would stay resident next to the tokenizer built from
/// them. Its bytes were walked and bounds-checked at open, so decoding cannot run off the map.
#[derive(Clone)]
pub struct MetaArray {
    elem: u32,
    len: usize,
    map: Arc<Mmap>,
    /// Byte range of the elements in the map.
    start: usize,
    end: usize,
}

impl MetaArray {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn cursor(&self) -> Cursor<'_> {
        Cursor { map: &self.map, bytes: &self.map[..self.end], pos: self.start }
    }

    /// The elements, decoded one by one (strings are copied; see [`strings`](Self::strings)).
    pub fn iter(&self) -> impl Iterator<Item = MetaValue> + '_ {
        let mut c = self.cursor();
        (0..self.len).map_while(move |_| c.value(self.elem, 1).ok())
    }

    /// The elements as text borrowed from the map (invalid UTF-8, which some converters wrote in
    /// token lists, is replaced rather than refused); `None` unless this is an array of strings.
    pub fn strings(&self) -> Option<Vec<Cow<'_, str>>> {
        if self.elem != 8 {
            return None;
        }
        let mut c = self.cursor();
        let mut out = Vec::with_capacity(self.len);
        for _ in 0..self.len {
            let n = c.string_len("string").ok()?;
            out.push(String::from_utf8_lossy(c.take(n, "string").ok()?));
        }
        Some(out)
    }
}

impl PartialEq for MetaArray {
    fn eq(&self, other: &Self) -> bool {
        self.elem == other.elem && self.len == other.len && self.map[self.start..self.end] == other.map[other.start..other.end]
    }
}

impl std::fmt::Debug for MetaArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} items of type {}]", self.len, self.elem)
    }
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for `inspect` (arrays are summarised, not dumped).
    pub fn summary(&self) -> String {
        match self {
            MetaValue::String(s) if s.len() > 60 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            MetaValue::String(s) => format!("{s:?}"),
            MetaValue::Array(a) => format!("[{} items]", a.len()),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            MetaValue::Bool(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// One entry of the tensor index.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: fastest-varying axis first.
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Row-major shape (slowest axis first), as PyTorch/Burn would write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn n_bytes(&self) -> usize {
        self.dtype.bytes_for(self.n_elements())
    }
}

/// An opened, memory-mapped GGUF file.
pub struct Gguf {
    path: PathBuf,
    mmap: Arc<Mmap>,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: usize,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Reads the header out of `bytes`, a prefix of `map` (arrays keep a handle on the map).
struct Cursor<'a> {
    map: &'a Arc<Mmap>,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("truncated while reading {what} at byte {} (file has {} bytes)", self.pos, self.bytes.len())
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count that must be satisfiable by the bytes left (each item takes at least `min_item`
    /// bytes) and at most `max`: checked before anything is allocated for the items.
    fn count(&mut self, what: &str, min_item: usize, max: u64) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        if n > max {
            return Err(format!("{what} = {n} exceeds the limit of {max}"));
        }
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(format!("{what} = {n} is impossible with {left} bytes left"));
        }
        Ok(n as usize)
    }
    /// A string's length, checked as [`count`](Self::count) checks counts.
    fn string_len(&mut self, what: &str) -> std::result::Result<usize, String> {
        self.count(&format!("{what} length"), 1, MAX_STRING_LEN)
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.string_len(what)?;
        let b = self.take(n, what)?;
        // Some converters wrote invalid UTF-8 in token lists; keep the bytes visible rather than fail.
        Ok(String::from_utf8(b.to_vec()).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => MetaValue::U32(self.u32("u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => MetaValue::Bool(self.array::<1>("bool")?[0] != 0),
            8 => MetaValue::String(self.string("string")?),
            9 => {
                if depth > MAX_ARRAY_DEPTH {
                    return Err(format!("metadata arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32("array type")?;
                let min_item = min_value_size(elem).ok_or_else(|| format!("unknown array element type {elem}"))?;
                let len = self.count("array length", min_item, MAX_ARRAY_LEN)?;
                let start = self.pos;
                for _ in 0..len {
                    self.skip(elem, depth + 1)?;
                }
                MetaValue::Array(MetaArray { elem, len, map: self.map.clone(), start, end: self.pos })
            }
            10 => MetaValue::U64(self.u64("u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
    /// Steps over one value, checking it as [`value`](Self::value) would, without building it.
    fn skip(&mut self, ty: u32, depth: usize) -> std::result::Result<(), String> {
        let fixed = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let n = self.string_len("string")?;
                return self.take(n, "string").map(drop);
            }
            9 => return self.value(9, depth).map(drop),
            other => return Err(format!("unknown metadata value type {other}")),
        };
        self.take(fixed, "array element").map(drop)
    }
}

/// The fewest bytes a metadata value of type `ty` takes (a string or array at least its length
/// field, an array also its element type), or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl Gguf {
    /// Memory-map and parse a GGUF file. Tensor data is not read until asked for.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a file truncated under us while mapped is outside our contract
        // (as for every mmap-based loader), all offsets are validated against the length at open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, Arc::new(mmap))
    }

    /// Parses a GGUF image held in memory (copied into an anonymous map), as if read from `path`,
    /// which only names it in errors: for checking a file's bytes without writing them out.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: &[u8]) -> Result<Self> {
        let path = path.into();
        Self::parse(path.clone(), Arc::new(anonymous_map(bytes).map_err(|e| Error::io(&path, e))?))
    }

    fn parse(path: PathBuf, mmap: Arc<Mmap>) -> Result<Self> {
        let bad = |problem: String| Error::Gguf { path: path.clone(), problem };
        let mut c = Cursor { map: &mmap, bytes: &mmap, pos: 0 };
        let magic = c.take(4, "magic").map_err(bad)?;
        if magic != MAGIC {
            return Err(bad(format!("bad magic {:?}, expected \"GGUF\"", String::from_utf8_lossy(magic))));
        }
        let version = c.u32("version").map_err(bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported GGUF version {version} (supported: 2, 3)")));
        }
        // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        let n_tensors = c.count("tensor count", 24, MAX_TENSORS).map_err(bad)?;
        // A key/value takes at least 8 (key len) + 4 (type) + 1 (smallest value) bytes.
        let n_kv = c.count("metadata count", 13, MAX_METADATA).map_err(bad)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key").map_err(bad)?;
            let ty = c.u32("metadata type").map_err(bad)?;
            let value = c.value(ty, 0).map_err(|e| bad(format!("metadata `{key}`: {e}")))?;
            if metadata.contains_key(&key) {
                return Err(bad(format!("duplicate metadata key `{key}`")));
            }
            metadata.insert(key, value);
        }
        // Grown as entries are read: the count was checked against the file, but an entry in memory
        // is larger than its 24-byte minimum on disk.
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name").map_err(bad)?;
            let n_dims = c.u32("tensor dims").map_err(bad)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("tensor `{name}` has {n_dims} dimensions (1..=4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64("tensor dim").map_err(bad)?;
                dims.push(usize::try_from(d).map_err(|_| bad(format!("tensor `{name}` dim {d} too large")))?);
            }
            let ty = c.u32("tensor type").map_err(bad)?;
            let dtype = GgmlType::from_id(ty).ok_or_else(|| Error::UnsupportedDtype {
                path: path.clone(),
                tensor: name.clone(),
                dtype: format!("ggml type id {ty}"),
            })?;
            let offset = c.u64("tensor offset").map_err(bad)?;
            tensors.push(TensorInfo { name, dims, dtype, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two() && *a <= MAX_ALIGNMENT).ok_or_else(|| {
                bad(format!("general.alignment {v:?} is not a power of two up to {MAX_ALIGNMENT}"))
            })?,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        if !tensors.is_empty() && data_start > mmap.len() as u64 {
            return Err(bad(format!(
                "tensor data would start at byte {data_start}, past the end of the file ({} bytes; truncated?)",
                mmap.len()
            )));
        }
        let data_len = (mmap.len() as u64).saturating_sub(data_start);
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let size = n.and_then(|n| (n / t.dtype.block_size()).checked_mul(t.dtype.block_bytes()));
            let (Some(n), Some(size)) = (n, size) else {
                return Err(bad(format!("tensor `{}` with dims {:?}: size overflows", t.name, t.dims)));
            };
            if n % t.dtype.block_size() != 0 || t.dims[0] % t.dtype.block_size() != 0 {
                return Err(bad(format!(
                    "tensor `{}` row length {} is not a multiple of the {:?} block size {}",
                    t.name, t.dims[0], t.dtype, t.dtype.block_size()
                )));
            }
            if t.offset % alignment != 0 {
                return Err(bad(format!("tensor `{}` offset {} is not aligned to {alignment}", t.name, t.offset)));
            }
            if t.offset.checked_add(size as u64).is_none_or(|e| e > data_len) {
                return Err(bad(format!(
                    "tensor `{}` ({size} bytes at offset {}) runs past the end of the file (truncated download?)",
                    t.name, t.offset
                )));
            }
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(bad(format!("duplicate tensor `{}`", t.name)));
            }
        }
        // Two tensors sharing bytes would alias each other's weights: no writer does that.
        let mut ranges: Vec<(u64, u64, &str)> = tensors
            .iter()
            .map(|t| (t.offset, t.offset + t.n_bytes() as u64, t.name.as_str()))
            .filter(|r| r.1 > r.0)
            .collect();
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(bad(format!("tensors `{}` and `{}` overlap in the data section", w[0].2, w[1].2)));
        }
        Ok(Gguf { path, mmap, version, metadata, tensors, by_name, data_start: data_start as usize })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the header's pages (metadata and tensor index, ~1.8 MB for a 49k-token vocabulary)
    /// back to the OS once the tokenizer and model are built from them: they would otherwise stay
    /// resident for the model's lifetime. Reading metadata later faults them in again.
    pub fn release_header_pages(&self) {
        // Whole pages below the data section (the kernel rounds the length up to its page size,
        // which at worst drops one page of tensor data that is read back on use).
        let len = self.data_start / 4096 * 4096;
        #[cfg(unix)]
        if len > 0 {
            // SAFETY: the map is shared and read-only: MADV_DONTNEED only drops our page-table
            // entries, and the next access reads the same bytes back from the file.
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, len) };
        }
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> usize {
        self.mmap.len()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn meta_err(&self, key: &str, problem: &str) -> Error {
        Error::Metadata { path: self.path.clone(), key: key.to_string(), problem: problem.to_string() }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "missing"))?;
        v.as_str().ok_or_else(|| self.meta_err(key, "expected a string"))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "missing"))?;
        v.as_u64().ok_or_else(|| self.meta_err(key, "expected an unsigned integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "missing"))?;
        v.as_f64().ok_or_else(|| self.meta_err(key, "expected a number"))
    }

    /// A string array (e.g. `tokenizer.ggml.tokens`), borrowed from the map.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<Cow<'_, str>>> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "missing"))?;
        let a = v.as_array().ok_or_else(|| self.meta_err(key, "expected an array"))?;
        a.strings().ok_or_else(|| self.meta_err(key, "expected an array of strings"))
    }

    /// The general.architecture key.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Raw bytes of a tensor, straight from the map (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start + info.offset as usize;
        &self.mmap[start..start + info.n_bytes()]
    }

    /// A tensor's bytes as a shared range of the map, which outlives this `Gguf` (weights kept
    /// in their quantization point into the file instead of copying it).
    pub fn tensor_bytes_shared(&self, info: &TensorInfo) -> TensorBytes {
        let start = self.data_start + info.offset as usize;
        TensorBytes::Mapped { map: self.mmap.clone(), start, len: info.n_bytes() }
    }

    /// Dequantize a tensor to f32, row-major (slowest axis first).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let mut out = vec![0f32; info.n_elements()];
        // Rows are independent: dequantize them in parallel chunks (loading is otherwise the
        // slowest part of starting a 1B model).
        let row = info.dims[0];
        if out.is_empty() {
            return Ok((out, info.shape()));
        }
        let rows_per_chunk = (1 << 16) / row + 1;
        let bytes = self.tensor_bytes(info);
        let row_bytes = info.dtype.bytes_for(row);
        use rayon::prelude::*;
        out.par_chunks_mut(row * rows_per_chunk)
            .zip(bytes.par_chunks(row_bytes * rows_per_chunk))
            .try_for_each(|(o, b)| dequantize(info.dtype, b, o))
            .map_err(|problem| Error::Gguf { path: self.path.clone(), problem: format!("tensor `{name}`: {problem}") })?;
        Ok((out, info.shape()))
    }
}

/// An anonymous read-only map holding a copy of `bytes` (a zero-length map is allowed).
pub(crate) fn anonymous_map(bytes: &[u8]) -> std::io::Result<Mmap> {
    let mut map = memmap2::MmapMut::map_anon(bytes.len())?;
    map.copy_from_slice(bytes);
    map.make_read_only()
}

/// Bytes of a tensor: a range of a shared memory map (zero-copy) or an owned buffer.
#[derive(Clone)]
pub enum TensorBytes {
    Mapped { map: Arc<Mmap>, start: usize, len: usize },
    Owned(Arc<[u8]>),
}

impl TensorBytes {
    /// Gives the pages of a mapped range back to the OS once its contents live elsewhere (weights
    /// repacked for the kernels): the map is shared and read-only, so the next access to these
    /// bytes reads them back from the file. Only whole 4 KiB pages inside the range are dropped.
    pub fn release_pages(&self) {
        self.release_range(0..self.len());
    }

    /// [`release_pages`](Self::release_pages) for bytes `range` of the tensor only.
    pub fn release_range(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let TensorBytes::Mapped { map, start, len } = self {
            const PAGE: usize = 4096;
            let (from, to) = (start + range.start.min(*len), start + range.end.min(*len));
            let (first, end) = (from.next_multiple_of(PAGE), to / PAGE * PAGE);
            if end > first {
                // SAFETY: as in `Gguf::release_header_pages`: MADV_DONTNEED on a shared read-only
                // file map only drops page-table entries.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first) };
            }
        }
    }
}

impl std::ops::Deref for TensorBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { map, start, len } => &map[*start..*start + *len],
            TensorBytes::Owned(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests;
