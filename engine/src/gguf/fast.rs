//! Dequantization of whole blocks with hand-written AVX2 code for the common formats, bit for bit
//! equal to the reference in [`quant`](super::quant) (used where a product needs f32 weights: the
//! exact CPU kernels, embedding lookups, device uploads).

use super::quant::{dequantize, scale_min_k4, GgmlType};

/// Dequantizes whole blocks with hand-written AVX2 code for the common formats when the CPU has
/// it (chosen once per process), else with the reference [`dequantize`]. Both produce the same
/// values bit for bit: the vector code does the reference's operations in the reference's order
/// (no fused multiply-adds), so a row's weights never depend on the path.
pub fn dequantize_fast(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::handles(ty) && *AVX2.get_or_init(avx2::available) {
            // SAFETY: the CPU supports AVX2 (checked at run time); sizes were checked at construction.
            unsafe { avx2::dequantize(ty, bytes, out) };
            return;
        }
    }
    dequantize(ty, bytes, out).expect("the caller passes whole blocks for every value");
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::GgmlType;
    use std::arch::x86_64::*;

    pub fn handles(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
        )
    }

    /// The CPU features this module needs (x86-64 CPUs with AVX2 have F16C too, but check).
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// The little-endian f16 at `b[i..i + 2]`, converted by the F16C instruction (exact, like
    /// `half`'s conversion, without its per-call feature dispatch).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[i], b[i + 1]]) as i32)))
    }

    /// Eight unsigned bytes (the low half of `v`) as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// Eight signed bytes (the low half of `v`) as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn i8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
    }

    /// Stores 32 bytes of `v` (unsigned or signed) as 32 f32 values, each times `d`, minus `m`
    /// when given — `(q as f32) * d - m` in the reference's order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store32(v: __m256i, signed: bool, d: __m256, m: Option<__m256>, out: &mut [f32]) {
        assert!(out.len() >= 32);
        let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
        for (h, half) in halves.into_iter().enumerate() {
            for (e, bytes) in [half, _mm_srli_si128::<8>(half)].into_iter().enumerate() {
                let q = if signed { i8x8(bytes) } else { u8x8(bytes) };
                let mut y = _mm256_mul_ps(q, d);
                if let Some(m) = m {
                    y = _mm256_sub_ps(y, m);
                }
                // SAFETY: out holds at least 32 values (asserted above); offset + 8 <= 32.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(16 * h + 8 * e), y) };
            }
        }
    }

    // Helpers are functions, not closures: closures do not inherit `target_feature`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: 32 readable bytes (asserted).
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16(b: &[u8]) -> __m128i {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable bytes (asserted).
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    /// 16 packed bytes → 32 nibbles: the low nibbles (values 0..16), then the high ones.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles16(qs: __m128i) -> __m256i {
        let lo = _mm_and_si128(qs, _mm_set1_epi8(0x0F));
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), _mm_set1_epi8(0x0F));
        _mm256_set_m128i(hi, lo)
    }

    /// 16 where bit `k` of each byte of `qh` is set, else 0 (Q5_K's fifth bit).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fifth_bit(qh: __m256i, k: u32) -> __m256i {
        let mask = _mm256_set1_epi8(1i8.wrapping_shl(k));
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask), _mm256_set1_epi8(16))
    }

    /// 32 bits → 32 bytes, 16 where the bit is set (Q5_0/Q5_1's fifth bit of value i is bit i).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bits_to_16s(bits: u32) -> __m256i {
        // Byte i takes the byte holding bit i, ORs in every bit but its own, and compares with all-ones.
        let shuffle = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
        let all_but = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, all_but), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    /// Q6_K's two high bits (shifted down into bits 0..2) moved to bits 4..6.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn six_high(h: __m256i) -> __m256i {
        _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(3)))
    }

    /// # Safety
    /// The CPU must support AVX2; `bytes` must hold exactly the blocks of `out.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
        let blocks = bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(ty.block_size()));
        let low4 = _mm256_set1_epi8(0x0F);
        match ty {
            GgmlType::Q4_0 => {
                for (b, y) in blocks {
                    let q = _mm256_sub_epi8(nibbles16(load16(&b[2..])), _mm256_set1_epi8(8));
                    store32(q, true, _mm256_set1_ps(f16_at(b, 0)), None, y);
                }
            }
            GgmlType::Q4_1 => {
                for (b, y) in blocks {
                    let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(-f16_at(b, 2)));
                    // q·d + m == q·d − (−m) exactly.
                    store32(nibbles16(load16(&b[4..])), false, d, Some(m), y);
                }
            }
            GgmlType::Q8_0 => {
                for (b, y) in blocks {
                    store32(load32(&b[2..]), true, _mm256_set1_ps(f16_at(b, 0)), None, y);
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let one = ty == GgmlType::Q5_1;
                let (h, qs) = if one { (4, 8) } else { (2, 6) };
                for (b, y) in blocks {
                    let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
                    let q = _mm256_or_si256(nibbles16(load16(&b[qs..])), bits_to_16s(qh));
                    // The reference adds the minimum (0.0 for Q5_0, which turns −0 into +0): q·d − (−m).
                    let m = if one { -f16_at(b, 2) } else { -0.0 };
                    let q = if one { q } else { _mm256_sub_epi8(q, _mm256_set1_epi8(16)) };
                    store32(q, !one, _mm256_set1_ps(f16_at(b, 0)), Some(_mm256_set1_ps(m)), y);
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let five = ty == GgmlType::Q5K;
                for (b, y) in blocks {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let scales = &b[4..16];
                    let (qh, qs) = if five { (load32(&b[16..48]), &b[48..176]) } else { (_mm256_setzero_si256(), &b[16..144]) };
                    for c in 0..4 {
                        let ql = load32(&qs[32 * c..]);
                        let mut lo = _mm256_and_si256(ql, low4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4);
                        if five {
                            // Bit 2c of qh adds 16 to the low nibbles, bit 2c + 1 to the high ones.
                            lo = _mm256_add_epi8(lo, fifth_bit(qh, 2 * c as u32));
                            hi = _mm256_add_epi8(hi, fifth_bit(qh, 2 * c as u32 + 1));
                        }
                        let (sc1, m1) = super::scale_min_k4(2 * c, scales);
                        let (sc2, m2) = super::scale_min_k4(2 * c + 1, scales);
                        let chunk = &mut y[64 * c..64 * c + 64];
                        store32(lo, false, _mm256_set1_ps(d * sc1), Some(_mm256_set1_ps(dmin * m1)), &mut chunk[..32]);
                        store32(hi, false, _mm256_set1_ps(d * sc2), Some(_mm256_set1_ps(dmin * m2)), &mut chunk[32..]);
                    }
                }
            }
            GgmlType::Q6K => {
                let k32 = _mm256_set1_epi8(32);
                for (b, y) in blocks {
                    let d = f16_at(b, 208);
                    for half in 0..2 {
                        let ql_a = load32(&b[half * 64..]);
                        let ql_b = load32(&b[half * 64 + 32..]);
                        let qh = load32(&b[128 + half * 32..]);
                        let sc = &b[192 + half * 8..192 + half * 8 + 8];
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(ql_a, low4), six_high(qh)),
                            _mm256_or_si256(_mm256_and_si256(ql_b, low4), six_high(_mm256_srli_epi16::<2>(qh))),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_a), low4), six_high(_mm256_srli_epi16::<4>(qh))),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_b), low4), six_high(_mm256_srli_epi16::<6>(qh))),
                        ]
                        ;
                        let q = [_mm256_sub_epi8(q[0], k32), _mm256_sub_epi8(q[1], k32), _mm256_sub_epi8(q[2], k32), _mm256_sub_epi8(q[3], k32)];
                        let chunk = &mut y[half * 128..half * 128 + 128];
                        for (g, qg) in q.into_iter().enumerate() {
                            // Values 0..16 of each group use scale 2g, values 16..32 scale 2g + 1.
                            let (s0, s1) = (d * (sc[2 * g] as i8 as f32), d * (sc[2 * g + 1] as i8 as f32));
                            let out = &mut chunk[32 * g..32 * g + 32];
                            let lanes = [_mm256_castsi256_si128(qg), _mm256_extracti128_si256::<1>(qg)];
                            for (h, (lane, s)) in lanes.into_iter().zip([s0, s1]).enumerate() {
                                for (e, bytes) in [lane, _mm_srli_si128::<8>(lane)].into_iter().enumerate() {
                                    let v = _mm256_mul_ps(i8x8(bytes), _mm256_set1_ps(s));
                                    // SAFETY: out holds 32 values; 16h + 8e + 8 <= 32.
                                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(16 * h + 8 * e), v) };
                                }
                            }
                        }
                    }
                }
            }
            _ => unreachable!("handles() gates the types"),
        }
    }
}

