//! Weight matrices kept in their GGUF block format (Q4_0 … Q6_K, F16, BF16) and multiplied without
//! an f32 copy of the model: the bytes stay in the file's memory map. Two kernel modes:
//!
//! - [`KernelMode::Q8`] (default): activations rounded to 8 bits per block of 32 and integer dot
//!   products with the packed blocks ([`q8`]), as llama.cpp does;
//! - [`KernelMode::Exact`]: f32 activations; each product dequantizes four weight rows at a time
//!   into a small cache-resident buffer that every activation row reuses.
//!
//! Batch invariance, which greedy speculative == greedy target-only rests on, holds in both: a
//! weight row always dequantizes to the same f32 values (or unpacks to the same integers), each
//! activation row is quantized alone, and every (weight row, activation row) pair goes through the
//! same operations in the same order whatever the number of rows.

use super::{dense, q8};
use crate::gguf::{dequantize_fast, GgmlType, TensorBytes};
use std::sync::atomic::{AtomicU8, Ordering};

/// How packed weight matrices are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Activations quantized to 8 bits, integer dot products ([`q8`]); the default, as in llama.cpp.
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
    bytes: TensorBytes,
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
        Ok(QuantMatrix { mode: kernel_mode(), ty, bytes, out, inp, row_bytes })
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

    /// Bytes the weights occupy.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Dequantizes rows `first..first + out.len() / inp` into `out`.
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        let n = out.len() / self.inp;
        let bytes = &self.bytes[first * self.row_bytes..(first + n) * self.row_bytes];
        dequantize_fast(self.ty, bytes, out);
    }

    /// y = x·Wᵀ for x: [rows, inp], into [rows, out]: with 8-bit activations where the format
    /// and CPU have the integer path and the matrix's kernel mode allows it, else with f32
    /// activations.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.matmul_t_with(self.mode, x, rows)
    }

    /// [`matmul_t`](Self::matmul_t) in a given mode (`F32` behaves as `Exact` here).
    pub fn matmul_t_with(&self, mode: KernelMode, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.inp);
        if mode == KernelMode::Q8 && q8::handles(self.ty) && q8::available() {
            return if q8::super_blocks(self.ty) {
                self.integer_product::<q8::Q8KRow>(x, rows)
            } else {
                self.integer_product::<q8::Q8Row>(x, rows)
            };
        }
        dense::matmul_rows(x, rows, self.inp, self.out, |first, buf| {
            self.dequantize_rows(first, buf);
        })
    }

    /// The Q8 path: quantize each activation row in the layout the format pairs with, then for
    /// each run of 16 weight rows, up to four activation rows per pass (each weight block is
    /// unpacked once per pass, and the 16 rows stay in L1 for the next pass).
    fn integer_product<A: q8::Activations>(&self, x: &[f32], rows: usize) -> Vec<f32> {
        const RUN: usize = 16;
        let qx: Vec<A> = x.chunks_exact(self.inp).map(A::quantize).collect();
        let rb = self.row_bytes;
        dense::by_column(rows, self.out, rows * self.out * self.inp, |first, part| {
            for (s, run) in part.chunks_mut(RUN * rows).enumerate() {
                let j = first + s * RUN;
                let w = &self.bytes[j * rb..(j + run.len() / rows) * rb];
                let mut r = 0;
                while r < rows {
                    let n = (rows - r).min(4);
                    let out = &mut run[r..];
                    match n {
                        4 => A::dot_columns(self.ty, w, rb, [&qx[r], &qx[r + 1], &qx[r + 2], &qx[r + 3]], out, rows),
                        3 => A::dot_columns(self.ty, w, rb, [&qx[r], &qx[r + 1], &qx[r + 2]], out, rows),
                        2 => A::dot_columns(self.ty, w, rb, [&qx[r], &qx[r + 1]], out, rows),
                        _ => A::dot_columns(self.ty, w, rb, [&qx[r]], out, rows),
                    }
                    r += n;
                }
            }
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
    use crate::gguf::dequantize;
    use crate::gguf::GgmlType::*;
    use rand::{Rng, SeedableRng};

    /// Random but valid blocks: small f16 scales (so values stay finite), random quant bytes.
    fn random_blocks(ty: GgmlType, n_values: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..ty.bytes_for(n_values)).map(|_| rng.random()).collect();
        let scale = |rng: &mut rand_chacha::ChaCha8Rng| half::f16::from_f32(rng.random_range(-0.05f32..0.05)).to_le_bytes();
        let f16_at = |b: &mut [u8], at: usize, rng: &mut rand_chacha::ChaCha8Rng| b[at..at + 2].copy_from_slice(&scale(rng));
        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
            match ty {
                F16 => f16_at(block, 0, rng),
                BF16 => block.copy_from_slice(&half::bf16::from_f32(rng.random_range(-1f32..1.0)).to_le_bytes()),
                Q4_0 | Q5_0 | Q8_0 => f16_at(block, 0, rng),
                Q4_1 | Q5_1 | Q4K | Q5K => {
                    f16_at(block, 0, rng);
                    f16_at(block, 2, rng);
                }
                Q6K => f16_at(block, 208, rng),
                F32 => unreachable!(),
            }
        }
        bytes
    }

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

    /// The integer path: equal to its definition (quantized activations, exact integer sums) to
    /// f32 rounding, within the activation-rounding bound of the exact product, and row-invariant.
    #[test]
    fn q8_products_match_their_definition_and_are_row_invariant() {
        if !q8::available() {
            eprintln!("skipped: this CPU has no AVX2/FMA/F16C, so the Q8 path is never used");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            if q8::super_blocks(ty) {
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
                let def = q8::dot_reference(ty, &bytes[j * w.row_bytes..(j + 1) * w.row_bytes], &qx);
                assert!((got - def).abs() <= 1e-5 * magnitude.max(1.0), "{}: {got} vs definition {def}", ty.name());
                // |Σ w·(x − x̂)| ≤ Σ |w|·step/2.
                let bound: f64 = wr.iter().enumerate().map(|(i, v)| v.abs() as f64 * qx.step(i) as f64 / 2.0).sum();
                let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!((got - exact).abs() <= bound + 1e-5 * magnitude, "{}: {got} vs exact {exact} (bound {bound})", ty.name());
            }
            let alone = w.matmul_t_with(KernelMode::Q8, &x[r * inp..(r + 1) * inp], 1);
            assert_eq!(&y[r * out..(r + 1) * out], &alone[..], "{}: row {r} depends on the batch", ty.name());
        }
        // The column driver equals per-row calls bit for bit, at any stride.
        let qx: Vec<A> = x.chunks_exact(inp).take(2).map(A::quantize).collect();
        let mut strided = vec![f32::NAN; 1 + 3 * out];
        A::dot_columns(ty, &bytes, w.row_bytes, [&qx[0], &qx[1]], &mut strided[1..], 3);
        for j in 0..out {
            let want = A::dot_rows(ty, &bytes[j * w.row_bytes..(j + 1) * w.row_bytes], [&qx[0], &qx[1]]);
            assert_eq!(strided[1 + 3 * j..3 + 3 * j], want, "{}: column {j}", ty.name());
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
