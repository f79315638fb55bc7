//! Integer dot products of quantized weight rows with 8-bit activations, the way llama.cpp
//! multiplies quantized matrices. Each activation row is quantized alone, in the block layout its
//! weight format pairs with:
//!
//! - [`Q8Row`], blocks of 32 with one f32 scale, for the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1,
//!   Q8_0): a weight block times an activation block is one integer multiply-add pass
//!   (`vpmaddubsw` + `vpmaddwd`) scaled once per block;
//! - [`Q8KRow`], super-blocks of 256 with one scale and per-16 sums, for the K formats (Q4_K,
//!   Q5_K, Q6_K): the sub-block scales are applied in the integer domain (`vpmaddwd` with the
//!   scales), sums stay integers over the whole super-block and turn into floats once per 256
//!   values; the formats' offsets (Q4_K/Q5_K mins, Q6_K's −32) come from the activation sums.
//!
//! Per (weight row, activation row) the K kernels do four vector operations per 32 values, which
//! is what lets a (k+1)-row verification cost little more than one decode step. Activation
//! rounding costs accuracy (relative error ~ 1/254 per value; the reference-logit tests state the
//! tolerance), never batch invariance: a row is quantized alone and every (weight row, activation
//! row) pair goes through the same routine in the same order, however many rows are multiplied.

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
            if available() {
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

    /// Σ w·x of one weight row (blocks of `ty`) with R activation rows, bitwise equal to R
    /// separate calls.
    ///
    /// # Panics
    /// When the CPU lacks the features of [`available`] or `ty` does not pair with this layout.
    fn dot_rows<const R: usize>(ty: GgmlType, row: &[u8], x: [&Self; R]) -> [f32; R];

    /// [`dot_rows`](Self::dot_rows) for each weight row of `w` (consecutive rows of `row_bytes`
    /// bytes): row j's R sums go to `out[j·stride ..][..R]`. Bitwise equal to calling `dot_rows`
    /// per row; the sizes are checked once per call instead of once per row, which for the
    /// 576-wide rows of a small model was a fifth of the product's time.
    ///
    /// # Panics
    /// As `dot_rows`, and when `w` is not whole rows or `out` is too short.
    fn dot_columns<const R: usize>(ty: GgmlType, w: &[u8], row_bytes: usize, x: [&Self; R], out: &mut [f32], stride: usize);
}

/// The checks every column call makes once: whole rows, rows matching each activation row, room
/// for every result.
fn check_columns(ty: GgmlType, w: &[u8], row_bytes: usize, lens: impl Iterator<Item = usize>, r: usize, out: usize, stride: usize) {
    assert!(row_bytes > 0 && w.len() % row_bytes == 0, "weights are not whole rows of {row_bytes} bytes");
    for n in lens {
        assert_eq!(row_bytes, ty.bytes_for(n), "a weight row of {} does not match {n} activations", ty.name());
    }
    let cols = w.len() / row_bytes;
    assert!(stride >= r && (cols == 0 || (cols - 1) * stride + r <= out), "output too short for {cols} columns");
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

    fn dot_rows<const R: usize>(ty: GgmlType, row: &[u8], x: [&Self; R]) -> [f32; R] {
        assert!(available() && handles(ty) && !super_blocks(ty), "no 32-block Q8 path for {}", ty.name());
        for xr in x {
            assert_eq!(row.len(), ty.bytes_for(xr.q.len()));
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were checked above; sizes match (asserted). An empty row
        // (no blocks) is a zero sum: `dot_columns` needs rows of at least one byte.
        unsafe {
            let mut out = [0f32; R];
            if !row.is_empty() {
                avx2::dot_columns(ty, row, row.len(), x, &mut out, R);
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    }

    fn dot_columns<const R: usize>(ty: GgmlType, w: &[u8], row_bytes: usize, x: [&Self; R], out: &mut [f32], stride: usize) {
        assert!(available() && handles(ty) && !super_blocks(ty), "no 32-block Q8 path for {}", ty.name());
        check_columns(ty, w, row_bytes, x.iter().map(|xr| xr.q.len()), R, out.len(), stride);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were checked above; sizes match (checked).
        unsafe {
            avx2::dot_columns(ty, w, row_bytes, x, out, stride)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
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

    fn dot_rows<const R: usize>(ty: GgmlType, row: &[u8], x: [&Self; R]) -> [f32; R] {
        assert!(available() && super_blocks(ty), "no super-block Q8 path for {}", ty.name());
        for xr in x {
            assert_eq!(row.len(), ty.bytes_for(xr.q.len()));
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were checked above; sizes match (asserted). An empty row
        // (no blocks) is a zero sum: `dot_columns` needs rows of at least one byte.
        unsafe {
            let mut out = [0f32; R];
            if !row.is_empty() {
                avx2::dot_k_columns(ty, row, row.len(), x, &mut out, R);
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    }

    fn dot_columns<const R: usize>(ty: GgmlType, w: &[u8], row_bytes: usize, x: [&Self; R], out: &mut [f32], stride: usize) {
        assert!(available() && super_blocks(ty), "no super-block Q8 path for {}", ty.name());
        check_columns(ty, w, row_bytes, x.iter().map(|xr| xr.q.len()), R, out.len(), stride);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were checked above; sizes match (checked).
        unsafe {
            avx2::dot_k_columns(ty, w, row_bytes, x, out, stride)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!()
    }
}

/// Whether `ty`'s integer path takes [`Q8KRow`] activations (the K formats) rather than [`Q8Row`].
pub fn super_blocks(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// Weight formats with an integer path.
pub fn handles(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Whether this CPU runs the integer path (AVX2 with F16C and FMA), decided once per process.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Σ w·x in f64 from the dequantized weights and the dequantized activations: the definition the
/// vector code is tested against (equal up to f32 rounding of the scales and the final sums).
pub fn dot_reference<A: Activations>(ty: GgmlType, row: &[u8], x: &A) -> f64 {
    let mut w = vec![0f32; x.values().len()];
    crate::gguf::dequantize(ty, row, &mut w).expect("row size matches the activations");
    w.iter().zip(x.values()).enumerate().map(|(i, (&a, &q))| a as f64 * q as f64 * x.step(i) as f64).sum()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{GgmlType, Q8KRow, Q8Row, QK, QK_K};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[i], b[i + 1]]) as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: 32 readable bytes (asserted).
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    /// Eight i32 lanes, each the sum of four consecutive products of unsigned `w` (< 128 or, with
    /// `x` in [-127, 127], small enough not to saturate 16 bits) and signed `x`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_u8_i8(w: __m256i, x: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
    }

    /// The same for signed `w`: |w| times x with w's sign moved onto x.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_i8_i8(w: __m256i, x: __m256i) -> __m256 {
        mul_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `out[j·stride ..][..R]` = the kernel's R sums for weight row j of `w` (rows of `row_bytes`).
    macro_rules! each_row {
        ($w:expr, $row_bytes:expr, $x:expr, $out:expr, $stride:expr, $kernel:expr) => {
            for (j, row) in $w.chunks_exact($row_bytes).enumerate() {
                $out[j * $stride..j * $stride + $x.len()].copy_from_slice(&$kernel(row, $x));
            }
        };
    }

    /// Every weight row of `w` (rows of `row_bytes`, at least one byte) times the R activation
    /// rows, into `out[j·stride ..][..R]`, for the 32-value formats; the format is matched once.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; every row holds the blocks of each `x`'s values;
    /// `out` holds `(rows − 1)·stride + R` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_columns<const R: usize>(ty: GgmlType, w: &[u8], row_bytes: usize, x: [&Q8Row; R], out: &mut [f32], stride: usize) {
        match ty {
            GgmlType::Q4_0 => each_row!(w, row_bytes, x, out, stride, dot32::<0, R>),
            GgmlType::Q4_1 => each_row!(w, row_bytes, x, out, stride, dot32::<1, R>),
            GgmlType::Q8_0 => each_row!(w, row_bytes, x, out, stride, dot32::<2, R>),
            GgmlType::Q5_0 => each_row!(w, row_bytes, x, out, stride, dot32::<3, R>),
            GgmlType::Q5_1 => each_row!(w, row_bytes, x, out, stride, dot32::<4, R>),
            _ => unreachable!("dot_columns gates the types"),
        }
    }

    /// [`dot_columns`] for the K formats.
    ///
    /// # Safety
    /// As [`dot_columns`], with every row holding the super-blocks of each `x`'s values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_k_columns<const R: usize>(ty: GgmlType, w: &[u8], row_bytes: usize, x: [&Q8KRow; R], out: &mut [f32], stride: usize) {
        match ty {
            GgmlType::Q4K => each_row!(w, row_bytes, x, out, stride, dot_k45::<false, R>),
            GgmlType::Q5K => each_row!(w, row_bytes, x, out, stride, dot_k45::<true, R>),
            GgmlType::Q6K => each_row!(w, row_bytes, x, out, stride, dot_q6k::<R>),
            _ => unreachable!("dot_columns gates the types"),
        }
    }

    // Every kernel below takes R activation rows: each weight block is unpacked once and
    // multiplied into each row's own accumulators, in the same order for every R, so a row's
    // result is bitwise the same whether it is computed alone or with others.

    /// 32 bits → 32 bytes, 16 where the bit is set (Q5_0/Q5_1's fifth bit of value i is bit i).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn bits_to_16s(bits: u32) -> __m256i {
        // Byte i takes the byte holding bit i, ORs in every bit but its own, and compares with all-ones.
        let shuffle = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
        let all_but = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, all_but), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    /// Formats with 32-value blocks: KIND 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0, 4 = Q5_1 (Q8_0 is
    /// multiplied as signed bytes, the others as unsigned plus a per-block offset). Even and odd
    /// blocks go to separate accumulators (vector sums and scalar offsets) to keep the additions
    /// independent.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot32<const KIND: u8, const R: usize>(row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
        let bb = [18, 20, 34, 22, 24][KIND as usize];
        let n = row.len() / bb;
        // The loads below go through raw pointers: per-load bounds checks cost as much as the
        // arithmetic on 576-wide rows. Every activation row covers the weight row's n blocks
        // (its length was checked against the row's by `dot_rows` / `dot_columns`); re-checked
        // here once per row, not per block.
        for xr in x {
            assert!(xr.q.len() >= n * QK && xr.d.len() >= n && xr.ds.len() >= n);
        }
        let xq: [*const i8; R] = std::array::from_fn(|r| x[r].q.as_ptr());
        let xd: [*const f32; R] = std::array::from_fn(|r| x[r].d.as_ptr());
        let xds: [*const f32; R] = std::array::from_fn(|r| x[r].ds.as_ptr());
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let (mut off0, mut off1) = ([0f32; R], [0f32; R]);
        // One block into one set of accumulators. (A macro, not a helper function: the function
        // would not be inlined, and its accumulators would live in memory.)
        macro_rules! block {
            ($blk:expr, $acc:ident, $off:ident) => {{
                let blk = $blk;
                // SAFETY: blk < n, so the block's bb bytes lie inside `row`; each activation row
                // holds n blocks of 32 values with one scale and one sum each (asserted above).
                unsafe {
                    let b = row.as_ptr().add(blk * bb);
                    let dw = f16_ptr(b);
                    let qh_at = if KIND == 3 { 2 } else { 4 };
                    let qh = if KIND >= 3 { b.add(qh_at).cast::<u32>().read_unaligned() } else { 0 };
                    let q = match KIND {
                        0 => nibbles16_ptr(b.add(2)),
                        1 => nibbles16_ptr(b.add(4)),
                        2 => _mm256_loadu_si256(b.add(2).cast()),
                        3 => _mm256_or_si256(nibbles16_ptr(b.add(6)), bits_to_16s(u32::from_le(qh))),
                        _ => _mm256_or_si256(nibbles16_ptr(b.add(8)), bits_to_16s(u32::from_le(qh))),
                    };
                    // Q4_0 and Q5_0 store q + 8 and q + 16: multiplied unsigned, the shift comes off
                    // as an offset times the activation block's sum (cheaper than signed products).
                    let offset = match KIND {
                        0 => -8.0 * dw,
                        3 => -16.0 * dw,
                        1 | 4 => f16_ptr(b.add(2)),
                        _ => 0.0,
                    };
                    for r in 0..R {
                        let xv = _mm256_loadu_si256(xq[r].add(blk * QK).cast());
                        let signed = KIND == 2;
                        let p = if signed { mul_i8_i8(q, xv) } else { mul_u8_i8(q, xv) };
                        $acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * *xd[r].add(blk)), $acc[r]);
                        if !signed {
                            $off[r] += offset * *xds[r].add(blk);
                        }
                    }
                }
            }};
        }
        let mut blk = 0;
        while blk + 1 < n {
            block!(blk, acc0, off0);
            block!(blk + 1, acc1, off1);
            blk += 2;
        }
        if blk < n {
            block!(blk, acc0, off0);
        }
        std::array::from_fn(|r| hsum(_mm256_add_ps(acc0[r], acc1[r])) + (off0[r] + off1[r]))
    }

    /// An f16 at `p` (little-endian, unaligned) as f32.
    ///
    /// # Safety
    /// Two bytes at `p` are readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_ptr(p: *const u8) -> f32 {
        let bits = u16::from_le(unsafe { p.cast::<u16>().read_unaligned() });
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// 16 packed bytes at `p` → 32 values: low nibbles (values 0..16), then high nibbles (16..32).
    ///
    /// # Safety
    /// Sixteen bytes at `p` are readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles16_ptr(p: *const u8) -> __m256i {
        let qs = unsafe { _mm_loadu_si128(p.cast()) };
        let m = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(qs), m), _mm_and_si128(qs, m))
    }

    /// 16 where bit `k` of each byte of `qh` is set, else 0 (Q5_K's fifth bit).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fifth_bit(qh: __m256i, k: u32) -> __m256i {
        let mask = _mm256_set1_epi8(1i8.wrapping_shl(k));
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask), _mm256_set1_epi8(16))
    }


    /// The 6-bit scales and mins of a Q4_K/Q5_K super-block, unpacked as llama.cpp does: bytes
    /// 0..8 of the result are the scales of sub-blocks 0..8, bytes 8..16 their mins.
    #[inline]
    fn k4_scales_mins(scales: &[u8]) -> [u8; 16] {
        let u = |i: usize| u32::from_le_bytes([scales[4 * i], scales[4 * i + 1], scales[4 * i + 2], scales[4 * i + 3]]);
        let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let words = [u0 & k1, (u2 & k2) | (((u0 >> 6) & k3) << 4), u1 & k1, ((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4)];
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(words) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16i(v: &[i16]) -> __m256i {
        assert!(v.len() >= 16);
        // SAFETY: 16 readable i16 (asserted).
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8i(v: &[i16]) -> __m128i {
        assert!(v.len() >= 8);
        // SAFETY: 8 readable i16 (asserted).
        unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
    }

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

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum128(v: __m128) -> f32 {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `_mm256_shuffle_epi8` masks that broadcast 16-bit word `w` of each 128-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn word_broadcast(w: usize) -> __m256i {
        let (lo, hi) = ((2 * w) as i8, (2 * w + 1) as i8);
        _mm256_setr_epi8(
            lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
        )
    }

    /// Q4_K / Q5_K × Q8_K. Per super-block: Σ over sub-blocks j of scale_j · Σ q·x in integers
    /// (`vpmaddubsw`, then `vpmaddwd` with the scale), one float multiply-add with d·dx; the
    /// minimums contribute dmin·dx·Σ_j min_j·Σx_j from the activation sums.
    ///
    /// The inner loops address through raw pointers: the sizes are checked once per call (in
    /// `dot_rows` / `dot_columns`), and per-load bounds checks would cost as much as the arithmetic.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_k45<const FIVE: bool, const R: usize>(row: &[u8], x: [&Q8KRow; R]) -> [f32; R] {
        let bb = if FIVE { 176 } else { 144 };
        let low4 = _mm256_set1_epi8(0x0F);
        let shuffles: [__m256i; 8] = std::array::from_fn(|w| word_broadcast(w));
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_min = [_mm_setzero_ps(); R];
        for (sb, b) in row.chunks_exact(bb).enumerate() {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let sm = k4_scales_mins(&b[4..16]);
            // SAFETY (both loads): sm holds 16 bytes.
            let scales8 = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(sm.as_ptr().cast()) });
            let mins = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(sm.as_ptr().add(8).cast()) });
            let scales = _mm256_set_m128i(scales8, scales8);
            let (qh, qs) = if FIVE { (load32(&b[16..48]), &b[48..176]) } else { (_mm256_setzero_si256(), &b[16..144]) };
            // SAFETY: every row holds whole super-blocks (checked by `dot_rows` / `dot_columns`), so sb·256 + 256 ≤ len.
            let xq: [*const __m256i; R] = std::array::from_fn(|r| unsafe { x[r].q.as_ptr().add(sb * QK_K) }.cast());
            let mut sums = [_mm256_setzero_si256(); R];
            for c in 0..4 {
                // SAFETY: qs holds 128 bytes; c < 4.
                let ql = unsafe { _mm256_loadu_si256(qs.as_ptr().add(32 * c).cast()) };
                let mut lo = _mm256_and_si256(ql, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4);
                if FIVE {
                    lo = _mm256_add_epi8(lo, fifth_bit(qh, 2 * c as u32));
                    hi = _mm256_add_epi8(hi, fifth_bit(qh, 2 * c as u32 + 1));
                }
                let s_lo = _mm256_shuffle_epi8(scales, shuffles[2 * c]);
                let s_hi = _mm256_shuffle_epi8(scales, shuffles[2 * c + 1]);
                for r in 0..R {
                    // SAFETY: xq[r] points at 256 readable bytes (8 vectors); 2c + 1 < 8.
                    let (a, b) = unsafe { (_mm256_loadu_si256(xq[r].add(2 * c)), _mm256_loadu_si256(xq[r].add(2 * c + 1))) };
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a), s_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, b), s_hi);
                    sums[r] = _mm256_add_epi32(sums[r], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for r in 0..R {
                let dx = x[r].d[sb];
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sums[r]), acc[r]);
                let m = _mm_madd_epi16(mins, load8i(&x[r].sums32[sb * 8..]));
                acc_min[r] = _mm_fmadd_ps(_mm_set1_ps(dmin * dx), _mm_cvtepi32_ps(m), acc_min[r]);
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - hsum128(acc_min[r]))
    }

    /// Q6_K × Q8_K: the 6-bit values are multiplied unsigned (0..64) with their signed 16-value
    /// scales in integers, and the −32 offset is taken off as 32·Σ_i scale_i·Σx_i once per
    /// super-block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q6k<const R: usize>(row: &[u8], x: [&Q8KRow; R]) -> [f32; R] {
        let (low4, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
        // Group j (32 values) uses scale 2j for its first 16 values and 2j + 1 for the rest:
        // byte masks picking those scales into the two halves of 16 bytes.
        let pick: [__m128i; 8] = std::array::from_fn(|j| {
            let (a, b) = ((2 * j) as i8, (2 * j + 1) as i8);
            _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
        });
        let mut acc = [_mm256_setzero_ps(); R];
        for (sb, b) in row.chunks_exact(210).enumerate() {
            let d = f16_at(b, 208);
            // SAFETY: b holds 210 bytes; the scales are bytes 192..208.
            let sc = unsafe { _mm_loadu_si128(b.as_ptr().add(192).cast()) };
            let scales = _mm256_cvtepi8_epi16(sc);
            // SAFETY: every row holds whole super-blocks (checked by `dot_rows` / `dot_columns`).
            let xq: [*const __m256i; R] = std::array::from_fn(|r| unsafe { x[r].q.as_ptr().add(sb * QK_K) }.cast());
            let mut sums = [_mm256_setzero_si256(); R];
            for half in 0..2 {
                // SAFETY: b holds 210 bytes: ql at 0..128, qh at 128..192.
                let (ql_a, ql_b, qh) = unsafe {
                    (
                        _mm256_loadu_si256(b.as_ptr().add(half * 64).cast()),
                        _mm256_loadu_si256(b.as_ptr().add(half * 64 + 32).cast()),
                        _mm256_loadu_si256(b.as_ptr().add(128 + half * 32).cast()),
                    )
                };
                for g in 0..4 {
                    let ql = match g {
                        0 => ql_a,
                        1 => ql_b,
                        2 => _mm256_srli_epi16::<4>(ql_a),
                        _ => _mm256_srli_epi16::<4>(ql_b),
                    };
                    let high = match g {
                        0 => qh,
                        1 => _mm256_srli_epi16::<2>(qh),
                        2 => _mm256_srli_epi16::<4>(qh),
                        _ => _mm256_srli_epi16::<6>(qh),
                    };
                    let q = _mm256_or_si256(_mm256_and_si256(ql, low4), _mm256_slli_epi16::<4>(_mm256_and_si256(high, two)));
                    let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick[half * 4 + g]));
                    for r in 0..R {
                        // SAFETY: xq[r] points at 8 readable vectors; half·4 + g < 8.
                        let xv = unsafe { _mm256_loadu_si256(xq[r].add(half * 4 + g)) };
                        sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), s));
                    }
                }
            }
            for r in 0..R {
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(scales, load16i(&x[r].sums16[sb * 16..])));
                let total = _mm256_sub_epi32(sums[r], offset);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[r].d[sb]), _mm256_cvtepi32_ps(total), acc[r]);
            }
        }
        std::array::from_fn(|r| hsum(acc[r]))
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
