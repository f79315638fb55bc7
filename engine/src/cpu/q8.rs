//! Activations rounded to 8 bits for the integer kernels ([`packed`](super::packed)), the way
//! llama.cpp quantizes them. Each activation row is quantized alone, in the block layout its
//! weight format pairs with:
//!
//! - [`Q8Row`], blocks of 32 with one f32 scale and the block's sum, for the 32-value formats
//!   (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
//! - [`Q8KRow`], super-blocks of 256 with one scale and sums per 16 and per 32 values, for the K
//!   formats (Q4_K, Q5_K, Q6_K), whose sub-block scales are applied in integers.
//!
//! Rounding costs accuracy (relative error ~ 1/254 per value; the reference-logit tests state the
//! tolerance), never batch invariance: a row's quantization depends on that row alone.

use crate::gguf::GgmlType;

/// Values per activation block.
pub const QK: usize = 32;

/// One activation row quantized to Q8 blocks.
pub struct Q8Row {
    /// round(x / d) per value, in [-127, 127].
    pub q: Vec<i8>,
    /// Scale per block of 32: max|x| / 127.
    pub d: Vec<f32>,
    /// Σ q per block (for formats with a per-block offset).
    pub sum: Vec<i32>,
    /// d · Σ q per block: the block's sum of dequantized activations, as the offsets need it.
    pub ds: Vec<f32>,
}

impl Q8Row {
    /// Quantizes `x` (whose length is a multiple of 32).
    pub fn new(x: &[f32]) -> Self {
        assert_eq!(x.len() % QK, 0);
        let (q, d) = quantize_blocks(x, QK);
        let sum: Vec<i32> = q.chunks_exact(QK).map(|c| c.iter().map(|&v| v as i32).sum()).collect();
        let ds = d.iter().zip(&sum).map(|(d, &s)| d * s as f32).collect();
        Q8Row { q, d, sum, ds }
    }
}

/// Values per activation super-block ([`Q8KRow`]).
pub const QK_K: usize = 256;

/// One activation row quantized to super-blocks of 256 values (llama.cpp's Q8_K).
pub struct Q8KRow {
    /// round(x / d) per value, in [-127, 127].
    pub q: Vec<i8>,
    /// Scale per super-block: max|x| / 127.
    pub d: Vec<f32>,
    /// Σ q per 16 values (Q6_K's offset) …
    pub sums16: Vec<i16>,
    /// … and per 32 values (the Q4_K/Q5_K minimums).
    pub sums32: Vec<i16>,
}

impl Q8KRow {
    /// Quantizes `x` (whose length is a multiple of 256).
    pub fn new(x: &[f32]) -> Self {
        assert_eq!(x.len() % QK_K, 0);
        let (q, d) = quantize_blocks(x, QK_K);
        let sums16: Vec<i16> = q.chunks_exact(16).map(|c| c.iter().map(|&v| v as i16).sum()).collect();
        let sums32 = sums16.chunks_exact(2).map(|p| p[0] + p[1]).collect();
        Q8KRow { q, d, sums16, sums32 }
    }
}

/// Quantizes each block of `block` values (a multiple of 32) to i8 with scale max|x| / 127,
/// rounding to nearest with ties to even: the vector conversion's rounding, so the AVX2 path and
/// [`quantize_block_scalar`] give the same bytes.
fn quantize_blocks(x: &[f32], block: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(block % 32, 0);
    let mut q = vec![0i8; x.len()];
    let d = x
        .chunks_exact(block)
        .zip(q.chunks_exact_mut(block))
        .map(|(xb, qb)| {
            #[cfg(target_arch = "x86_64")]
            if super::features::Isa::Avx2.supported() {
                // SAFETY: AVX2 is available; both blocks hold `block` values, a multiple of 32.
                return unsafe { avx2::quantize_block(xb, qb) };
            }
            quantize_block_scalar(xb, qb)
        })
        .collect();
    (q, d)
}

/// One block: writes round(x / d) into `qb` and returns d.
fn quantize_block_scalar(xb: &[f32], qb: &mut [i8]) -> f32 {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (v, out) in xb.iter().zip(qb.iter_mut()) {
        *out = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// An activation row in the layout some weight formats multiply with.
pub trait Activations: Sized + Sync {
    fn quantize(x: &[f32]) -> Self;

    /// The quantized values.
    fn values(&self) -> &[i8];

    /// The step (scale) of value `i`: it stands for `values()[i] as f32 * step(i)`.
    fn step(&self, i: usize) -> f32;
}

impl Activations for Q8Row {
    fn quantize(x: &[f32]) -> Self {
        Q8Row::new(x)
    }

    fn values(&self) -> &[i8] {
        &self.q
    }

    fn step(&self, i: usize) -> f32 {
        self.d[i / QK]
    }
}

impl Activations for Q8KRow {
    fn quantize(x: &[f32]) -> Self {
        Q8KRow::new(x)
    }

    fn values(&self) -> &[i8] {
        &self.q
    }

    fn step(&self, i: usize) -> f32 {
        self.d[i / QK_K]
    }
}

/// Σ w·x in f64 from the dequantized weights and the dequantized activations: the definition the
/// vector code is tested against (equal up to f32 rounding of the scales and the final sums).
pub fn dot_reference<A: Activations>(ty: GgmlType, row: &[u8], x: &A) -> f64 {
    let mut w = vec![0f32; x.values().len()];
    crate::gguf::dequantize(ty, row, &mut w).expect("row size matches the activations");
    w.iter().zip(x.values()).enumerate().map(|(i, (&a, &q))| a as f64 * q as f64 * x.step(i) as f64).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::quantize_block_scalar`] with 32 values per step.
    ///
    /// # Safety
    /// AVX2 must be available; `xb` and `qb` have the same length, a multiple of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(xb: &[f32], qb: &mut [i8]) -> f32 {
        assert!(xb.len() == qb.len() && xb.len() % 32 == 0);
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        for c in xb.chunks_exact(8) {
            // SAFETY: 8 readable f32.
            m = _mm256_max_ps(m, _mm256_and_ps(abs, unsafe { _mm256_loadu_ps(c.as_ptr()) }));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (c, o) in xb.chunks_exact(32).zip(qb.chunks_exact_mut(32)) {
            // SAFETY: 32 readable f32 in c (4 loads of 8).
            let i: [__m256i; 4] = std::array::from_fn(|k| _mm256_cvtps_epi32(_mm256_mul_ps(unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * k)) }, inv)));
            // Saturating packs interleave 128-bit lanes; the permutation restores the order.
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
            // SAFETY: 32 writable bytes in o.
            unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(packed, order)) };
        }
        scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_quantization_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let q = Q8Row::new(&x);
        for (i, v) in x.iter().enumerate() {
            let d = q.d[i / QK];
            assert!((q.q[i] as f32 * d - v).abs() <= 0.5 * d + 1e-6);
        }
        assert_eq!(q.sum[0], q.q[..32].iter().map(|&v| v as i32).sum::<i32>());
        // An all-zero block has a zero scale and zero quants (no division by zero).
        let z = Q8Row::new(&[0.0; 32]);
        assert_eq!((z.d[0], z.q.iter().all(|&v| v == 0)), (0.0, true));
    }

    #[test]
    fn vector_and_scalar_quantization_agree() {
        let x: Vec<f32> = (0..1024).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 37.0 + if i % 41 == 0 { 0.5 } else { 0.0 }).collect();
        for block in [32, 256] {
            let (q, d) = quantize_blocks(&x, block);
            for (b, xb) in x.chunks_exact(block).enumerate() {
                let mut qs = vec![0i8; block];
                assert_eq!(quantize_block_scalar(xb, &mut qs).to_bits(), d[b].to_bits());
                assert_eq!(qs, &q[b * block..(b + 1) * block]);
            }
        }
    }

    #[test]
    fn super_block_quantization_keeps_exact_sums() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 53 % 211) as f32 - 105.0) / 3.0).collect();
        let q = Q8KRow::new(&x);
        assert_eq!((q.d.len(), q.sums16.len(), q.sums32.len()), (2, 32, 16));
        for (i, v) in x.iter().enumerate() {
            assert!((q.q[i] as f32 * q.d[i / QK_K] - v).abs() <= 0.5 * q.d[i / QK_K] * (1.0 + 1e-6));
        }
        for (j, &s) in q.sums16.iter().enumerate() {
            assert_eq!(s as i32, q.q[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum::<i32>());
        }
        for (j, &s) in q.sums32.iter().enumerate() {
            assert_eq!(s as i32, q.q[32 * j..32 * j + 32].iter().map(|&v| v as i32).sum::<i32>());
        }
    }
}
