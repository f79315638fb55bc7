//! A weight matrix in device memory as its GGML blocks.

use super::layout::{pack_words, BlockFormat};
use super::ops;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Products with at most this many rows (decode, verification of k + 1 ≤ 16 tokens) run on the
/// matrix-vector kernel, which reads each block once per four rows; longer ones (prefill)
/// dequantize row tiles of W and multiply with Burn's tuned matmul.
const MATVEC_ROWS: usize = 16;

/// Values per dequantized tile in the prefill path (64 MiB of f32): bounds the scratch memory
/// whatever the matrix (the 151936-row output layer of Qwen2.5 takes ~15 tiles).
const TILE_VALUES: usize = 16 << 20;

/// W [out, inp] as packed GGML blocks on a Burn device (burn-wgpu).
#[derive(Clone, Debug)]
pub struct BlockMatrix {
    /// [out, row words], u32.
    words: Tensor<2, Int>,
    format: BlockFormat,
    out: usize,
    inp: usize,
}

impl BlockMatrix {
    /// Uploads the GGML bytes of an [out, inp] matrix.
    pub fn new(format: BlockFormat, bytes: &[u8], out: usize, inp: usize, device: &Device) -> Result<Self, String> {
        let words = pack_words(format, bytes, out, inp)?;
        let data = TensorData::new(words, [out, format.row_words(inp)]);
        Ok(BlockMatrix { words: Tensor::from_data(data, (device, DType::U32)), format, out, inp })
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

    /// x·Wᵀ for x: [rows, inp] on the same device.
    pub fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        let rows = x.dims()[0];
        if rows <= MATVEC_ROWS {
            return ops::matvec(x, &self.words, self.format, self.out, self.inp);
        }
        let tile = (TILE_VALUES / self.inp).max(1);
        let device = x.device();
        let parts: Vec<Tensor<2>> = (0..self.out)
            .step_by(tile)
            .map(|first| {
                let ids: Vec<u32> = (first..(first + tile).min(self.out)).map(|r| r as u32).collect();
                let w = ops::rows(&self.words, ids_tensor(&ids, &device), self.format, self.inp);
                x.clone().matmul(w.transpose())
            })
            .collect();
        if parts.len() == 1 {
            return parts.into_iter().next().unwrap();
        }
        Tensor::cat(parts, 1)
    }

    /// Rows `ids` (each below `out`) as f32: [ids.len(), inp] (embedding lookup).
    pub fn gather_rows(&self, ids: &[u32]) -> Tensor<2> {
        ops::rows(&self.words, ids_tensor(ids, &self.words.device()), self.format, self.inp)
    }

    /// The rows `ids` as a matrix of their own (a truncated output layer).
    pub fn select_rows(&self, ids: &[u32]) -> Result<BlockMatrix, String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.out) {
            return Err(format!("row {bad} of a matrix of {} rows", self.out));
        }
        let words = self.words.clone().select(0, ids_tensor(ids, &self.words.device()));
        Ok(BlockMatrix { words, format: self.format, out: ids.len(), inp: self.inp })
    }
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [ids.len()]), (device, DType::U32))
}
