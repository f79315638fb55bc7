//! Weight matrices kept in their GGUF block format (Q4_0 … Q6_K, F16, BF16) and multiplied without
//! an f32 copy of the model: the bytes stay in the file's memory map. Two kernel modes:
//!
//! - [`KernelMode::Q8`] (default): activations rounded to 8 bits ([`q8`](super::q8)) and integer
//!   products with the weights repacked into column tiles ([`packed`](super::packed));
//! - [`KernelMode::Exact`]: f32 activations; each product dequantizes four weight rows at a time
//!   into a small cache-resident buffer that every activation row reuses.
//!
//! Batch invariance, which greedy speculative == greedy target-only rests on, holds in both: a
//! weight row always dequantizes to the same f32 values (or unpacks to the same integers), each
//! activation row is quantized alone, and every (weight row, activation row) pair goes through the
//! same operations in the same order whatever the number of rows.

use super::dense;
use super::packed::{Format, PackedMatrix};
use crate::gguf::{dequantize_fast, GgmlType, TensorBytes};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// How packed weight matrices are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Activations quantized to 8 bits, integer products on column tiles; the default.
    Q8,
    /// f32 activations times weights dequantized a few rows at a time (results match
    /// dequantize-then-matmul to f32 rounding).
    Exact,
    /// Weights expanded to f32 when the model loads (the slowest and largest; for comparison).
    F32,
}

static MODE: AtomicU8 = AtomicU8::new(u8::MAX);

thread_local! {
    static SCOPED: std::cell::Cell<Option<KernelMode>> = const { std::cell::Cell::new(None) };
}

/// The kernel mode for matrices loaded now: a [`with_kernel_mode`] scope on this thread, else the
/// process-wide mode.
pub fn kernel_mode() -> KernelMode {
    SCOPED.with(|m| m.get()).unwrap_or_else(process_kernel_mode)
}

/// Runs `f` (typically a model load) with `mode` for the matrices it creates on this thread; each
/// matrix keeps the mode it was made with, so differently loaded models can run side by side.
pub fn with_kernel_mode<T>(mode: KernelMode, f: impl FnOnce() -> T) -> T {
    let before = SCOPED.with(|m| m.replace(Some(mode)));
    let out = f();
    SCOPED.with(|m| m.set(before));
    out
}

/// The process-wide kernel mode: set by [`set_kernel_mode`], else from `SPECDEC_KERNELS`
/// (`q8`, `exact` or `f32`; default `q8`). An unknown value falls back to `q8` with a warning.
fn process_kernel_mode() -> KernelMode {
    let decode = |v: u8| [KernelMode::Q8, KernelMode::Exact, KernelMode::F32][v as usize];
    match MODE.load(Ordering::Relaxed) {
        u8::MAX => {
            let mode = match std::env::var("SPECDEC_KERNELS").as_deref() {
                Ok("exact") => KernelMode::Exact,
                Ok("f32") => KernelMode::F32,
                Ok("q8") | Ok("") | Err(_) => KernelMode::Q8,
                Ok(other) => {
                    eprintln!("warning: SPECDEC_KERNELS={other:?} is not q8, exact or f32; using q8");
                    KernelMode::Q8
                }
            };
            let _ = MODE.compare_exchange(u8::MAX, mode as u8, Ordering::Relaxed, Ordering::Relaxed);
            decode(MODE.load(Ordering::Relaxed))
        }
        v => decode(v),
    }
}

/// Sets the process-wide kernel mode for models loaded afterwards (`F32` loads f32 weights).
pub fn set_kernel_mode(mode: KernelMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}
/// A [out, inp] matrix of GGML blocks, one row of `inp` values after another.
#[derive(Clone)]
pub struct QuantMatrix {
    /// Chosen when the matrix is made ([`kernel_mode`]).
    mode: KernelMode,
    ty: GgmlType,
    /// The GGML blocks (usually a range of the file's map): exact products, lookups, uploads.
    bytes: TensorBytes,
    /// The column tiles of the Q8 products, made on first need ([`prepare`](Self::prepare)).
    packed: Arc<OnceLock<Option<PackedMatrix>>>,
    out: usize,
    inp: usize,
    row_bytes: usize,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({} [{}, {}], {} bytes)", self.ty.name(), self.out, self.inp, self.bytes.len())
    }
}

impl QuantMatrix {
    /// Types multiplied in their stored form (every GGML type this engine reads but F32).
    pub fn supports(ty: GgmlType) -> bool {
        ty != GgmlType::F32
    }

    pub fn new(ty: GgmlType, bytes: TensorBytes, out: usize, inp: usize) -> Result<Self, String> {
        if !Self::supports(ty) {
            return Err(format!("{} is not a packed type", ty.name()));
        }
        if inp % ty.block_size() != 0 {
            return Err(format!("rows of {inp} values do not split into {} blocks of {}", ty.name(), ty.block_size()));
        }
        let row_bytes = ty.bytes_for(inp);
        if bytes.len() != out * row_bytes {
            return Err(format!("{} bytes for a [{out}, {inp}] {} matrix, expected {}", bytes.len(), ty.name(), out * row_bytes));
        }
        Ok(QuantMatrix { mode: kernel_mode(), ty, bytes, packed: Arc::default(), out, inp, row_bytes })
    }

    /// The rows `ids` (each below `out`) as a matrix of their own, in this matrix's kernel mode
    /// (a copy of their blocks: a truncated LM head keeps a fraction of the rows).
    pub fn select_rows(&self, ids: &[u32]) -> Result<QuantMatrix, String> {
        let mut bytes = Vec::with_capacity(ids.len() * self.row_bytes);
        for &id in ids {
            let id = id as usize;
            if id >= self.out {
                return Err(format!("row {id} of a matrix of {} rows", self.out));
            }
            bytes.extend_from_slice(&self.bytes[id * self.row_bytes..(id + 1) * self.row_bytes]);
        }
        let mut w = QuantMatrix::new(self.ty, TensorBytes::Owned(bytes.into()), ids.len(), self.inp)?;
        w.mode = self.mode;
        Ok(w)
    }

    /// Readies the matrix for products in its kernel mode: in Q8 mode, repacks it into column
    /// tiles and gives the mapped file pages back to the OS (the tiles replace them; rows read for
    /// lookups fault back in). Models call this at load for every matrix they multiply, so that
    /// repacking is part of loading; an unprepared matrix is prepared by its first product.
    pub fn prepare(&self) {
        self.tiles(self.mode);
    }

    /// The column tiles (made now if they were not yet), when the format has a layout.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        self.tiles(KernelMode::Q8)
    }

    fn tiles(&self, mode: KernelMode) -> Option<&PackedMatrix> {
        if mode != KernelMode::Q8 {
            return None;
        }
        self.packed
            .get_or_init(|| {
                let format = Format::of(self.ty)?;
                let release = |range| self.bytes.release_range(range);
                let packed = PackedMatrix::new(format, &self.bytes, self.out, self.inp, release).expect("sizes were checked when the matrix was made");
                // The chunks' ranges leave their boundary pages; the whole range takes them too.
                self.bytes.release_pages();
                Some(packed)
            })
            .as_ref()
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// The GGML blocks, row after row (uploads to a device that reads them in place).
    pub fn blocks(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes the weights occupy in their GGML blocks.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Dequantizes rows `first..first + out.len() / inp` into `out`.
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let n = out.len() / self.inp;
        let bytes = &self.bytes[first * self.row_bytes..(first + n) * self.row_bytes];
        dequantize_fast(self.ty, bytes, out);
    }

    /// y = x·Wᵀ for x: [rows, inp], into [rows, out]: in the matrix's kernel mode — with 8-bit
    /// activations on the column tiles where the format has a layout, else with f32 activations.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.matmul_t_with(self.mode, x, rows)
    }

    /// [`matmul_t`](Self::matmul_t) in a given mode (`F32` behaves as `Exact` here).
    pub fn matmul_t_with(&self, mode: KernelMode, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.inp);
        if let Some(tiles) = self.tiles(mode) {
            return tiles.matmul_t(x, rows);
        }
        dense::matmul_rows(x, rows, self.inp, self.out, |first, buf| {
            self.dequantize_rows(first, buf);
        })
    }

    /// Rows `ids` of W as f32 (embedding lookup), [ids.len(), inp].
    pub fn gather_rows(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = vec![0f32; ids.len() * self.inp];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.inp)) {
            self.dequantize_rows(id as usize, row);
        }
        out
    }

    /// The whole matrix as f32 (for devices without these kernels).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out * self.inp];
        self.dequantize_rows(0, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::packed::layout::tests::random_blocks;
    use crate::cpu::q8;
    use crate::gguf::dequantize;
    use crate::gguf::GgmlType::*;
    use rand::{Rng, SeedableRng};

    fn naive(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for j in 0..out {
                y[r * out + j] = (0..inp).map(|i| x[r * inp + i] as f64 * w[j * inp + i] as f64).sum();
            }
        }
        y
    }

    /// Every packed type: the fused product equals dequantize-then-matmul, and a row's result is
    /// bitwise the same alone and among others (sizes leave remainders in every loop).
    #[test]
    fn quantized_products_match_dequantized_and_are_row_invariant() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for ty in [F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            let inp = if ty.block_size() == 256 { 512 } else { 96 };
            let out = 70;
            let bytes = random_blocks(ty, out * inp, &mut rng);
            let w = QuantMatrix::new(ty, TensorBytes::Owned(bytes.clone().into()), out, inp).unwrap();
            let mut reference = vec![0f32; out * inp];
            dequantize(ty, &bytes, &mut reference).unwrap();
            assert_eq!(w.to_f32(), reference, "{}: fast dequantization differs from the reference", ty.name());
            let rows = 5;
            let x: Vec<f32> = (0..rows * inp).map(|_| rng.random_range(-1f32..1.0)).collect();
            let y = w.matmul_t_with(KernelMode::Exact, &x, rows);
            let exact = naive(&x, &reference, rows, inp, out);
            let scale = exact.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            for (a, b) in y.iter().zip(&exact) {
                assert!(((*a as f64) - b).abs() <= 1e-5 * scale, "{}: {a} vs {b}", ty.name());
            }
            for r in 0..rows {
                let alone = w.matmul_t_with(KernelMode::Exact, &x[r * inp..(r + 1) * inp], 1);
                assert_eq!(&y[r * out..(r + 1) * out], &alone[..], "{}: row {r} depends on the batch", ty.name());
            }
            // Embedding lookup returns the dequantized rows.
            assert_eq!(w.gather_rows(&[3, 0]), [&reference[3 * inp..4 * inp], &reference[..inp]].concat());
        }
    }

    /// The Q8 path: within the activation-rounding bound of the exact product (each activation
    /// moves by at most half its step), and a row's result is the same alone and among others.
    #[test]
    fn q8_products_stay_within_the_rounding_bound() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            if ty.block_size() == 256 {
                check_q8::<q8::Q8KRow>(ty, &mut rng);
            } else {
                check_q8::<q8::Q8Row>(ty, &mut rng);
            }
        }
    }

    fn check_q8<A: q8::Activations>(ty: GgmlType, rng: &mut rand_chacha::ChaCha8Rng) {
        let inp = if ty.block_size() == 256 { 768 } else { 160 };
        let (out, rows) = (37, 7);
        let bytes = random_blocks(ty, out * inp, rng);
        let w = QuantMatrix::new(ty, TensorBytes::Owned(bytes.clone().into()), out, inp).unwrap();
        let reference = w.to_f32();
        // Activations with outliers (as real hidden states have), so blocks differ in scale.
        let x: Vec<f32> = (0..rows * inp).map(|i| rng.random_range(-2f32..2.0) * if i % 97 == 0 { 20.0 } else { 1.0 }).collect();
        let y = w.matmul_t_with(KernelMode::Q8, &x, rows);
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let qx = A::quantize(xr);
            for j in 0..out {
                let wr = &reference[j * inp..(j + 1) * inp];
                let got = y[r * out + j] as f64;
                let magnitude: f64 = wr.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                // |Σ w·(x − x̂)| ≤ Σ |w|·step/2.
                let bound: f64 = wr.iter().enumerate().map(|(i, v)| v.abs() as f64 * qx.step(i) as f64 / 2.0).sum();
                let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((got - exact).abs() <= bound + 1e-5 * magnitude, "{}: {got} vs exact {exact} (bound {bound})", ty.name());
            }
            let alone = w.matmul_t_with(KernelMode::Q8, &x[r * inp..(r + 1) * inp], 1);
            assert_eq!(&y[r * out..(r + 1) * out], &alone[..], "{}: row {r} depends on the batch", ty.name());
        }
    }

    #[test]
    fn sizes_are_checked() {
        let bytes = TensorBytes::Owned(vec![0u8; 18 * 4].into());
        assert!(QuantMatrix::new(Q4_0, bytes.clone(), 2, 64).is_ok());
        assert!(QuantMatrix::new(Q4_0, bytes.clone(), 3, 64).unwrap_err().contains("expected"));
        assert!(QuantMatrix::new(Q4_0, bytes.clone(), 4, 33).unwrap_err().contains("blocks"));
        assert!(QuantMatrix::new(F32, bytes, 1, 18).is_err());
    }
}
