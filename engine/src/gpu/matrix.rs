//! A weight matrix in device memory as its GGML blocks.

use super::layout::{pack_words, BlockFormat};
use super::ops;
use burn::tensor::kind::Basic;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Products with at most this many rows (decode, verification of k + 1 ≤ 16 tokens) run on the
/// matrix-vector kernel, which reads each block once per four rows; longer ones (prefill)
/// dequantize row tiles of W and multiply with Burn's tuned matmul.
const MATVEC_ROWS: usize = 16;

/// Values per dequantized tile in the prefill path (64 MiB of f32): bounds the scratch memory
/// whatever the matrix (the 151936-row output layer of Qwen2.5 takes ~15 tiles).
const TILE_VALUES: usize = 16 << 20;

/// Bytes of blocks per device buffer: 128 MiB, WebGPU's guaranteed storage-binding size (and
/// lavapipe's); larger matrices — output layers of 150k-token vocabularies — are split by rows.
const CHUNK_BYTES: usize = 128 << 20;

/// W [out, inp] as packed GGML blocks on a Burn device (burn-wgpu), in row chunks.
#[derive(Clone, Debug)]
pub struct BlockMatrix {
    /// [rows, row words] u32 each, consecutive rows of W; all but the last have `chunk_rows` rows.
    chunks: Vec<Tensor<2, Int>>,
    chunk_rows: usize,
    format: BlockFormat,
    out: usize,
    inp: usize,
}

impl BlockMatrix {
    /// Uploads the GGML bytes of an [out, inp] matrix.
    pub fn new(format: BlockFormat, bytes: &[u8], out: usize, inp: usize, device: &Device) -> Result<Self, String> {
        Self::with_chunk_bytes(format, bytes, out, inp, CHUNK_BYTES, device)
    }

    /// [`new`](Self::new) with buffers of at most `chunk_bytes` (at least one row each); tests use
    /// small ones to exercise the chunked paths on small matrices.
    pub fn with_chunk_bytes(format: BlockFormat, bytes: &[u8], out: usize, inp: usize, chunk_bytes: usize, device: &Device) -> Result<Self, String> {
        let words = pack_words(format, bytes, out, inp)?;
        let row_words = format.row_words(inp);
        let chunk_rows = (chunk_bytes / (4 * row_words)).max(1);
        let chunks = words
            .chunks(chunk_rows * row_words)
            .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), [c.len() / row_words, row_words]), (device, DType::U32)))
            .collect();
        Ok(BlockMatrix { chunks, chunk_rows, format, out, inp })
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// Bytes the blocks take on the device.
    pub fn size_bytes(&self) -> usize {
        4 * self.out * self.format.row_words(self.inp)
    }

    fn chunk_out(&self, c: usize) -> usize {
        self.chunks[c].dims()[0]
    }

    /// x·Wᵀ for x: [rows, inp] on the same device.
    pub fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        concat((0..self.chunks.len()).flat_map(|c| self.chunk_matmul_t(c, &x)).collect(), 1)
    }

    /// x·Wᵀ over the rows of chunk `c`, as column blocks of the result.
    fn chunk_matmul_t(&self, c: usize, x: &Tensor<2>) -> Vec<Tensor<2>> {
        let (w, out) = (&self.chunks[c], self.chunk_out(c));
        if x.dims()[0] <= MATVEC_ROWS {
            return vec![ops::matvec(x.clone(), w, self.format, out, self.inp)];
        }
        let tile = (TILE_VALUES / self.inp).max(1);
        let device = x.device();
        (0..out)
            .step_by(tile)
            .map(|first| {
                let ids: Vec<u32> = (first..(first + tile).min(out)).map(|r| r as u32).collect();
                let w = ops::rows(w, ids_tensor(&ids, &device), self.format, self.inp, x.dtype());
                x.clone().matmul(w.transpose())
            })
            .collect()
    }

    /// `ids` (each below `out`) split by chunk: each chunk's local row ids, in chunk order, and
    /// where each id's row lands in their concatenation (None when that is already the order).
    fn by_chunk(&self, ids: &[u32]) -> (Vec<(usize, Vec<u32>)>, Option<Vec<u32>>) {
        let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut slots = vec![Vec::new(); self.chunks.len()];
        for (i, &id) in ids.iter().enumerate() {
            slots[id as usize / self.chunk_rows].push((i, id % self.chunk_rows as u32));
        }
        let mut position = vec![0u32; ids.len()];
        let mut next = 0u32;
        for (c, slot) in slots.into_iter().enumerate() {
            if slot.is_empty() {
                continue;
            }
            for &(i, _) in &slot {
                position[i] = next;
                next += 1;
            }
            groups.push((c, slot.into_iter().map(|(_, local)| local).collect()));
        }
        let in_order = position.iter().enumerate().all(|(i, &p)| p as usize == i);
        (groups, (!in_order).then_some(position))
    }

    /// `take(chunk, local ids)` over the chunks that hold `ids` (each below `out`), its rows put
    /// back in the order of `ids`.
    fn take_rows<K: Basic>(&self, ids: &[u32], take: impl Fn(&Tensor<2, Int>, Tensor<1, Int>) -> Tensor<2, K>) -> Tensor<2, K> {
        let device = self.chunks[0].device();
        let (groups, position) = self.by_chunk(ids);
        let rows = concat(groups.iter().map(|(c, local)| take(&self.chunks[*c], ids_tensor(local, &device))).collect(), 0);
        match position {
            Some(p) => rows.select(0, ids_tensor(&p, &device)),
            None => rows,
        }
    }

    /// Rows `ids` (each below `out`) as `dtype` (f32 or f16): [ids.len(), inp] (embedding lookup).
    pub fn gather_rows(&self, ids: &[u32], dtype: DType) -> Tensor<2> {
        self.take_rows(ids, |chunk, local| ops::rows(chunk, local, self.format, self.inp, dtype))
    }

    /// The rows `ids` as a matrix of their own (a truncated output layer).
    pub fn select_rows(&self, ids: &[u32]) -> Result<BlockMatrix, String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.out) {
            return Err(format!("row {bad} of a matrix of {} rows", self.out));
        }
        let chunks = ids.chunks(self.chunk_rows).map(|part| self.take_rows(part, |chunk, local| chunk.clone().select(0, local))).collect();
        Ok(BlockMatrix { chunks, chunk_rows: self.chunk_rows, format: self.format, out: ids.len(), inp: self.inp })
    }
}

/// `parts` joined along `dim` (a single part as it is, without a copy).
fn concat<K: Basic>(mut parts: Vec<Tensor<2, K>>, dim: usize) -> Tensor<2, K> {
    if parts.len() == 1 {
        return parts.pop().unwrap();
    }
    Tensor::cat(parts, dim)
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [ids.len()]), (device, DType::U32))
}
