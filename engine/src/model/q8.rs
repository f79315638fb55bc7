//! Integer dot products of quantized weight rows with 8-bit activations, the way llama.cpp
//! multiplies quantized matrices: each activation row is quantized to blocks of 32 signed bytes
//! with one f32 scale (Q8), and a weight block times an activation block is one integer
//! multiply-add pass (`vpmaddubsw` + `vpmaddwd`), scaled once per block.
//!
//! It reads the weights once per token like the f32-activation path but does ~4× less work per
//! weight, which is what decode on a CPU is bound by once weights are 4-bit. Activation rounding
//! costs accuracy (relative error ~ 1/254 per value; the reference-logit tests state the
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
        let blocks = x.len() / QK;
        let (mut q, mut d, mut sum) = (vec![0i8; x.len()], Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for (xb, qb) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for (v, out) in xb.iter().zip(qb.iter_mut()) {
                *out = (v * inv).round().clamp(-127.0, 127.0) as i8;
                s += *out as i32;
            }
            d.push(scale);
            sum.push(s);
        }
        let ds = d.iter().zip(&sum).map(|(d, &s)| d * s as f32).collect();
        Q8Row { q, d, sum, ds }
    }
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

/// Σ w·x for one weight row (`row`, blocks of `ty`) and one quantized activation row.
///
/// # Panics
/// When the CPU lacks the features of [`available`] or the type is not [`handles`]d.
pub fn dot(ty: GgmlType, row: &[u8], x: &Q8Row) -> f32 {
    dot_rows(ty, row, [x])[0]
}

/// [`dot`] for R activation rows at once (the weight row is unpacked once); bitwise equal to R
/// calls of [`dot`].
pub fn dot_rows<const R: usize>(ty: GgmlType, row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
    assert!(available() && handles(ty), "the Q8 integer path is not available for {}", ty.name());
    for xr in x {
        assert_eq!(row.len(), ty.bytes_for(xr.q.len()));
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU features were checked above; sizes match (asserted).
    unsafe {
        avx2::dot(ty, row, x)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// The same sums in plain integer arithmetic (the definition the vector code is tested against).
pub fn dot_reference(ty: GgmlType, row: &[u8], x: &Q8Row) -> f64 {
    let mut total = 0f64;
    let f16 = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32() as f64;
    let xb = |blk: usize| (&x.q[blk * QK..(blk + 1) * QK], x.d[blk] as f64);
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            for (blk, b) in row.chunks_exact(ty.block_bytes()).enumerate() {
                let (xq, dx) = xb(blk);
                let (d, m, q): (f64, f64, Vec<i32>) = match ty {
                    GgmlType::Q8_0 => (f16(b, 0), 0.0, b[2..34].iter().map(|&v| v as i8 as i32).collect()),
                    _ => {
                        let (off, m, qs) = if ty == GgmlType::Q4_0 { (8, 0.0, &b[2..18]) } else { (0, f16(b, 2), &b[4..20]) };
                        let lo = qs.iter().map(|&v| (v & 15) as i32 - off);
                        (f16(b, 0), m, lo.chain(qs.iter().map(|&v| (v >> 4) as i32 - off)).collect())
                    }
                };
                let qx: i64 = q.iter().zip(xq).map(|(&a, &b)| a as i64 * b as i64).sum();
                let sx: i64 = xq.iter().map(|&v| v as i64).sum();
                total += d * dx * qx as f64 + m * dx * sx as f64;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            // The f32-dequantized weights (one rounding of the combined scale, ~1e-7 relative),
            // multiplied in f64.
            let mut w = vec![0f32; x.q.len()];
            crate::gguf::dequantize(ty, row, &mut w).unwrap();
            for (blk, wb) in w.chunks_exact(QK).enumerate() {
                let (xq, dx) = xb(blk);
                total += wb.iter().zip(xq).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * dx;
            }
        }
        other => panic!("no Q8 path for {}", other.name()),
    }
    total
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{GgmlType, Q8Row, QK};
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

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32i(b: &[i8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: 32 readable bytes (asserted).
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    /// 16 packed bytes → 32 values: low nibbles (values 0..16), then high nibbles (16..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles16(b: &[u8]) -> __m256i {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable bytes (asserted).
        let qs = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
        let m = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(qs), m), _mm_and_si128(qs, m))
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

    /// # Safety
    /// AVX2, FMA and F16C must be available; `row` holds the blocks of each `x`'s values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<const R: usize>(ty: GgmlType, row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
        match ty {
            GgmlType::Q4_0 => dot32::<0, R>(row, x),
            GgmlType::Q4_1 => dot32::<1, R>(row, x),
            GgmlType::Q8_0 => dot32::<2, R>(row, x),
            GgmlType::Q5_0 => dot32::<3, R>(row, x),
            GgmlType::Q5_1 => dot32::<4, R>(row, x),
            GgmlType::Q4K => dot_k45::<false, R>(row, x),
            GgmlType::Q5K => dot_k45::<true, R>(row, x),
            GgmlType::Q6K => dot_q6k::<R>(row, x),
            _ => unreachable!("handles() gates the types"),
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

    /// Formats with 32-value blocks: KIND 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0, 4 = Q5_1 (signed
    /// formats are multiplied as signed bytes, offset ones as unsigned plus a per-block offset). Even and odd blocks go to
    /// separate accumulators (vector sums and scalar offsets) to keep the additions independent.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot32<const KIND: u8, const R: usize>(row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
        let bb = [18, 20, 34, 22, 24][KIND as usize];
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let (mut off0, mut off1) = ([0f32; R], [0f32; R]);
        // One block into one set of accumulators. (A macro, not a helper function: the function
        // would not be inlined, and its accumulators would live in memory.)
        macro_rules! block {
            ($blk:expr, $acc:ident, $off:ident) => {{
                let blk = $blk;
                let b = &row[blk * bb..(blk + 1) * bb];
                let dw = f16_at(b, 0);
                let qh_at = if KIND == 3 { 2 } else { 4 };
                let qh = if KIND >= 3 { u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]) } else { 0 };
                let q = match KIND {
                    0 => nibbles16(&b[2..]),
                    1 => nibbles16(&b[4..]),
                    2 => load32(&b[2..]),
                    3 => _mm256_sub_epi8(_mm256_or_si256(nibbles16(&b[6..]), bits_to_16s(qh)), _mm256_set1_epi8(16)),
                    _ => _mm256_or_si256(nibbles16(&b[8..]), bits_to_16s(qh)),
                };
                let offset = match KIND {
                    0 => -8.0 * dw,
                    1 | 4 => f16_at(b, 2),
                    _ => 0.0,
                };
                for r in 0..R {
                    let xq = load32i(&x[r].q[blk * QK..]);
                    let signed = KIND == 2 || KIND == 3;
                    let p = if signed { mul_i8_i8(q, xq) } else { mul_u8_i8(q, xq) };
                    $acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * x[r].d[blk]), $acc[r]);
                    if !signed {
                        $off[r] += offset * x[r].ds[blk];
                    }
                }
            }};
        }
        let n = row.len() / bb;
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

    /// 16 where bit `k` of each byte of `qh` is set, else 0 (Q5_K's fifth bit).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fifth_bit(qh: __m256i, k: u32) -> __m256i {
        let mask = _mm256_set1_epi8(1i8.wrapping_shl(k));
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask), _mm256_set1_epi8(16))
    }

    /// Q6_K's two high bits (already shifted down into bits 0..2) moved to bits 4..6.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn six_high(h: __m256i) -> __m256i {
        _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(3)))
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
    fn dot_k45<const FIVE: bool, const R: usize>(row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
        let bb = if FIVE { 176 } else { 144 };
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut off = [_mm256_setzero_ps(); R];
        for (sb, b) in row.chunks_exact(bb).enumerate() {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let sm = k4_scales_mins(&b[4..16]);
            // SAFETY: sm holds 16 bytes; each load reads 8 of them.
            let (sc, mins) = unsafe { (_mm_loadl_epi64(sm.as_ptr().cast()), _mm_loadl_epi64(sm.as_ptr().add(8).cast())) };
            let dsc = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)));
            let m = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mins)));
            // Per row and sub-block: d·scale·dx, and the offsets dmin·min·(dx·Σq) of all eight at once.
            let mut s = [[0f32; 8]; R];
            for r in 0..R {
                // SAFETY: s[r] holds 8 f32.
                unsafe { _mm256_storeu_ps(s[r].as_mut_ptr(), _mm256_mul_ps(dsc, load8f(&x[r].d[sb * 8..]))) };
                off[r] = _mm256_fmadd_ps(m, load8f(&x[r].ds[sb * 8..]), off[r]);
            }
            let (qh, qs) = if FIVE { (load32(&b[16..48]), &b[48..176]) } else { (_mm256_setzero_si256(), &b[16..144]) };
            for c in 0..4 {
                let ql = load32(&qs[32 * c..]);
                let mut lo = _mm256_and_si256(ql, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4);
                if FIVE {
                    lo = _mm256_add_epi8(lo, fifth_bit(qh, 2 * c as u32));
                    hi = _mm256_add_epi8(hi, fifth_bit(qh, 2 * c as u32 + 1));
                }
                let blk = sb * 8 + 2 * c;
                for r in 0..R {
                    let plo = mul_u8_i8(lo, load32i(&x[r].q[blk * QK..]));
                    let phi = mul_u8_i8(hi, load32i(&x[r].q[(blk + 1) * QK..]));
                    acc[r][0] = _mm256_fmadd_ps(plo, _mm256_set1_ps(s[r][2 * c]), acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(phi, _mm256_set1_ps(s[r][2 * c + 1]), acc[r][1]);
                }
            }
        }
        std::array::from_fn(|r| hsum(_mm256_add_ps(acc[r][0], acc[r][1])) - hsum(off[r]))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q6k<const R: usize>(row: &[u8], x: [&Q8Row; R]) -> [f32; R] {
        let (low4, k32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(32));
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for (sb, b) in row.chunks_exact(210).enumerate() {
            let d = f16_at(b, 208);
            // Scale i covers values 16i..16i + 16, inside activation block i / 2.
            let mut s = [[0f32; 16]; R];
            for r in 0..R {
                for (i, v) in s[r].iter_mut().enumerate() {
                    *v = d * x[r].d[sb * 8 + i / 2] * (b[192 + i] as i8 as f32);
                }
            }
            for half in 0..2 {
                let ql_a = load32(&b[half * 64..]);
                let ql_b = load32(&b[half * 64 + 32..]);
                let qh = load32(&b[128 + half * 32..]);
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql_a, low4), six_high(qh)),
                    _mm256_or_si256(_mm256_and_si256(ql_b, low4), six_high(_mm256_srli_epi16::<2>(qh))),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_a), low4), six_high(_mm256_srli_epi16::<4>(qh))),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_b), low4), six_high(_mm256_srli_epi16::<6>(qh))),
                ];
                // Group g: 32 signed values of activation block sb·8 + half·4 + g, scale i = half·8 + 2g
                // for values 0..16 (lanes 0..4 of the product) and i + 1 for values 16..32.
                macro_rules! group {
                    ($g:expr, $acc:ident) => {{
                        let (g, i) = ($g, half * 8 + 2 * $g);
                        let qs = _mm256_sub_epi8(q[g], k32);
                        for r in 0..R {
                            let scale = _mm256_set_m128(_mm_set1_ps(s[r][i + 1]), _mm_set1_ps(s[r][i]));
                            $acc[r] = _mm256_fmadd_ps(mul_i8_i8(qs, load32i(&x[r].q[(sb * 8 + half * 4 + g) * QK..])), scale, $acc[r]);
                        }
                    }};
                }
                group!(0, acc0);
                group!(1, acc1);
                group!(2, acc0);
                group!(3, acc1);
            }
        }
        std::array::from_fn(|r| hsum(_mm256_add_ps(acc0[r], acc1[r])))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8f(v: &[f32]) -> __m256 {
        assert!(v.len() >= 8);
        // SAFETY: 8 readable f32 (asserted).
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
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
}
