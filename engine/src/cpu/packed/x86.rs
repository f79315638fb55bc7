//! The packed kernels on x86-64: eight output columns per 256-bit register (one per 32-bit lane),
//! M activation rows per pass over a tile, each weight tile block unpacked once into registers and
//! multiplied into every row's own accumulator.
//!
//! One body serves every instruction set: it is written against [`Dot`], the 8-bit multiply-add
//! primitive, and instantiated inside entry points that enable each set's features, where the
//! compiler inlines everything. AVX2 multiplies with `vpmaddubsw` into 16-bit sums (as many groups
//! as cannot overflow for the weights' bit width) and widens with `vpmaddwd`, applying K-format
//! sub-block scales in that same instruction; VNNI multiplies with `vpdpbusd` straight into 32
//! bits and scales with `vpmulld`. Both compute the exact integers of
//! [`reference`](super::reference), so the f32 steps that follow — the same in every path, in the
//! same order per lane — give bitwise the same outputs.

use super::layout::*;
use std::arch::x86_64::*;

/// One activation row of a 32-value format, as raw pointers (sizes are checked by the caller).
#[derive(Clone, Copy)]
pub struct Row32 {
    pub q: *const i8,
    pub d: *const f32,
    pub sum: *const i32,
    pub ds: *const f32,
}

/// One activation row of a K format.
#[derive(Clone, Copy)]
pub struct RowK {
    pub q: *const i8,
    pub d: *const f32,
    pub sums16: *const i16,
    pub sums32: *const i16,
}

/// The 8-bit multiply-add of an instruction set. `w` holds unsigned weights (one column per 32-bit
/// lane, four consecutive values each), `x` points at 4·N activation bytes, broadcast four at a
/// time; results are per-column 32-bit sums.
pub trait Dot {
    /// A per-column scale as this set applies it.
    type Scale: Copy;
    /// Signed weights as this set multiplies them.
    type Signed: Copy;

    /// Σ over N groups of w·x, for weights below 2^BITS.
    unsafe fn sum<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8) -> __m256i;
    /// The same sum times the column's scale.
    unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8, s: Self::Scale) -> __m256i;
    /// Eight unsigned byte scales, one per column.
    unsafe fn scale_u8(p: *const u8) -> Self::Scale;
    /// Signed byte scales from 16 bytes of pairs (column c at bytes 2c, 2c + 1): the even or odd one.
    unsafe fn scale_i8(pairs: __m128i, odd: bool) -> Self::Scale;
    unsafe fn signed(w: __m256i) -> Self::Signed;
    /// Σ over eight groups of signed w times x; `sum` is Σx over those 32 values.
    unsafe fn sum_signed(w: &[Self::Signed; 8], x: *const i8, sum: i32) -> __m256i;
}

#[inline(always)]
unsafe fn bcast(x: *const i8, g: usize) -> __m256i {
    // SAFETY (caller): four readable bytes at x + 4g.
    _mm256_set1_epi32(unsafe { x.add(4 * g).cast::<i32>().read_unaligned() })
}

/// 16-bit partial sums of `vpmaddubsw` hold this many groups of weights below 2^bits without
/// overflow (each product pair is at most 2 · (2^bits − 1) · 127).
const fn groups_in_16_bits(bits: u32) -> usize {
    32767 / (2 * ((1 << bits) - 1) * 127)
}

pub struct Avx2;

impl Dot for Avx2 {
    /// 16 lanes of i16: the column's scale twice (for `vpmaddwd`'s pairs).
    type Scale = __m256i;
    /// |w| and w (whose signs move onto x).
    type Signed = (__m256i, __m256i);

    #[inline(always)]
    unsafe fn sum<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8) -> __m256i {
        unsafe { Self::sum_scaled::<BITS, N>(w, x, _mm256_set1_epi16(1)) }
    }

    #[inline(always)]
    unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8, s: __m256i) -> __m256i {
        let cap = const { groups_in_16_bits(BITS) };
        let mut total = _mm256_setzero_si256();
        let mut g = 0;
        while g < N {
            let end = (g + cap).min(N);
            let mut part = unsafe { _mm256_maddubs_epi16(w[g], bcast(x, g)) };
            for h in g + 1..end {
                part = _mm256_add_epi16(part, unsafe { _mm256_maddubs_epi16(w[h], bcast(x, h)) });
            }
            total = _mm256_add_epi32(total, _mm256_madd_epi16(part, s));
            g = end;
        }
        total
    }

    #[inline(always)]
    unsafe fn scale_u8(p: *const u8) -> __m256i {
        let v = unsafe { _mm_loadl_epi64(p.cast()) };
        _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
    }

    #[inline(always)]
    unsafe fn scale_i8(pairs: __m128i, odd: bool) -> __m256i {
        let o = odd as i8;
        let pick = _mm_setr_epi8(o, o, 2 + o, 2 + o, 4 + o, 4 + o, 6 + o, 6 + o, 8 + o, 8 + o, 10 + o, 10 + o, 12 + o, 12 + o, 14 + o, 14 + o);
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(pairs, pick))
    }

    #[inline(always)]
    unsafe fn signed(w: __m256i) -> (__m256i, __m256i) {
        (_mm256_abs_epi8(w), w)
    }

    #[inline(always)]
    unsafe fn sum_signed(w: &[(__m256i, __m256i); 8], x: *const i8, _sum: i32) -> __m256i {
        // |w| · (x with w's sign): one pair of products reaches 2 · 128 · 127, so each group is
        // widened before the next is added.
        let ones = _mm256_set1_epi16(1);
        let mut total = _mm256_setzero_si256();
        for (g, &(abs, w)) in w.iter().enumerate() {
            let p = unsafe { _mm256_maddubs_epi16(abs, _mm256_sign_epi8(bcast(x, g), w)) };
            total = _mm256_add_epi32(total, _mm256_madd_epi16(p, ones));
        }
        total
    }
}

macro_rules! vnni {
    ($name:ident, $dp:path, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;

        impl Dot for $name {
            /// 8 lanes of i32.
            type Scale = __m256i;
            /// w + 128 as unsigned bytes.
            type Signed = __m256i;

            #[inline(always)]
            unsafe fn sum<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8) -> __m256i {
                let mut acc = _mm256_setzero_si256();
                for g in 0..N {
                    acc = unsafe { $dp(acc, w[g], bcast(x, g)) };
                }
                acc
            }

            #[inline(always)]
            unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[__m256i], x: *const i8, s: __m256i) -> __m256i {
                _mm256_mullo_epi32(unsafe { Self::sum::<BITS, N>(w, x) }, s)
            }

            #[inline(always)]
            unsafe fn scale_u8(p: *const u8) -> __m256i {
                _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) })
            }

            #[inline(always)]
            unsafe fn scale_i8(pairs: __m128i, odd: bool) -> __m256i {
                let o = odd as i8;
                let pick = _mm_setr_epi8(o, 2 + o, 4 + o, 6 + o, 8 + o, 10 + o, 12 + o, 14 + o, -1, -1, -1, -1, -1, -1, -1, -1);
                _mm256_cvtepi8_epi32(_mm_shuffle_epi8(pairs, pick))
            }

            #[inline(always)]
            unsafe fn signed(w: __m256i) -> __m256i {
                _mm256_xor_si256(w, _mm256_set1_epi8(-128))
            }

            #[inline(always)]
            unsafe fn sum_signed(w: &[__m256i; 8], x: *const i8, sum: i32) -> __m256i {
                // Σ (w + 128)·x − 128·Σx.
                _mm256_sub_epi32(unsafe { Self::sum::<8, 8>(w, x) }, _mm256_set1_epi32(sum.wrapping_mul(128)))
            }
        }
    };
}

vnni!(AvxVnni, _mm256_dpbusd_avx_epi32, "AVX-VNNI (VEX-encoded `vpdpbusd`).");
vnni!(Avx512Vnni, _mm256_dpbusd_epi32, "AVX-512 VNNI on 256-bit registers (EVEX-encoded `vpdpbusd`).");

/// Four nibble vectors at `p` → the eight groups of a run of 32 values.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> [__m256i; 8] {
    let low = _mm256_set1_epi8(0x0F);
    let mut v = [_mm256_setzero_si256(); 8];
    for h in 0..4 {
        let q = unsafe { _mm256_loadu_si256(p.add(32 * h).cast()) };
        v[h] = _mm256_and_si256(q, low);
        v[h + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
    }
    v
}

/// ORs in the fifth bits of a fifth-bit vector at `p` (bit g of each byte → bit 4 of group g).
#[inline(always)]
unsafe fn add_fifth_bits(v: &mut [__m256i; 8], p: *const u8) {
    let qh = unsafe { _mm256_loadu_si256(p.cast()) };
    let bit = _mm256_set1_epi8(0x10);
    let at = |s: __m256i| _mm256_and_si256(s, bit);
    let h = [
        at(_mm256_slli_epi16::<4>(qh)),
        at(_mm256_slli_epi16::<3>(qh)),
        at(_mm256_slli_epi16::<2>(qh)),
        at(_mm256_slli_epi16::<1>(qh)),
        at(qh),
        at(_mm256_srli_epi16::<1>(qh)),
        at(_mm256_srli_epi16::<2>(qh)),
        at(_mm256_srli_epi16::<3>(qh)),
    ];
    for g in 0..8 {
        v[g] = _mm256_or_si256(v[g], h[g]);
    }
}

/// ORs in Q6_K's high bits from its two high-bit vectors at `p` (bits 2g..2g+2 → bits 4..6).
#[inline(always)]
unsafe fn add_q6_high(v: &mut [__m256i; 8], p: *const u8) {
    let (a, b) = unsafe { (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(32).cast())) };
    let bits = _mm256_set1_epi8(0x30);
    let at = |s: __m256i| _mm256_and_si256(s, bits);
    let h = [
        at(_mm256_slli_epi16::<4>(a)),
        at(_mm256_slli_epi16::<2>(a)),
        at(a),
        at(_mm256_srli_epi16::<2>(a)),
        at(_mm256_slli_epi16::<4>(b)),
        at(_mm256_slli_epi16::<2>(b)),
        at(b),
        at(_mm256_srli_epi16::<2>(b)),
    ];
    for g in 0..8 {
        v[g] = _mm256_or_si256(v[g], h[g]);
    }
}

/// Eight f16 at `p` as f32 lanes.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// A format's work on one tile block for M rows: `acc[r]` gains row r's contribution of block `b`.
pub trait Kernel {
    type Row: Copy;
    const TILE: usize;
    unsafe fn block<D: Dot, const M: usize>(t: *const u8, x: &[Self::Row; M], b: usize, acc: &mut [__m256; M]);
}

/// The 32-value formats; `F` is the [`Format`] as a number (const generics take no enums).
pub struct Blocks32<const F: u8>;

pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q5_0: u8 = 2;
pub const Q5_1: u8 = 3;
pub const Q8_0: u8 = 4;

impl<const F: u8> Kernel for Blocks32<F> {
    type Row = Row32;
    const TILE: usize = [144, 160, 176, 192, 272][F as usize];

    #[inline(always)]
    unsafe fn block<D: Dot, const M: usize>(t: *const u8, x: &[Row32; M], b: usize, acc: &mut [__m256; M]) {
        unsafe {
            let d = f16x8(t.add(D_AT));
            if F == Q8_0 {
                let w: [D::Signed; 8] = std::array::from_fn(|g| D::signed(_mm256_loadu_si256(t.add(Q8_0_QS + 32 * g).cast())));
                for r in 0..M {
                    let xr = x[r];
                    let i = D::sum_signed(&w, xr.q.add(32 * b), *xr.sum.add(b));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(d, _mm256_set1_ps(*xr.d.add(b))), acc[r]);
                }
                return;
            }
            let (qs, qh) = match F {
                Q4_0 => (Q4_0_QS, 0),
                Q4_1 => (Q4_1_QS, 0),
                Q5_0 => (Q5_0_QS, Q5_0_QH),
                _ => (Q5_1_QS, Q5_1_QH),
            };
            let mut v = nibbles(t.add(qs));
            let five = F == Q5_0 || F == Q5_1;
            if five {
                add_fifth_bits(&mut v, t.add(qh));
            }
            let with_min = F == Q4_1 || F == Q5_1;
            let m = if with_min { f16x8(t.add(M_AT)) } else { d };
            let offset = [8, 0, 16, 0][F as usize];
            for r in 0..M {
                let xr = x[r];
                let mut i = if five { D::sum::<5, 8>(&v, xr.q.add(32 * b)) } else { D::sum::<4, 8>(&v, xr.q.add(32 * b)) };
                if offset != 0 {
                    i = _mm256_sub_epi32(i, _mm256_set1_epi32(offset * *xr.sum.add(b)));
                }
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(d, _mm256_set1_ps(*xr.d.add(b))), acc[r]);
                if with_min {
                    acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(*xr.ds.add(b)), acc[r]);
                }
            }
        }
    }
}

/// Q4_K (`FIVE` false) and Q5_K.
pub struct K45<const FIVE: bool>;

impl<const FIVE: bool> Kernel for K45<FIVE> {
    type Row = RowK;
    const TILE: usize = if FIVE { 1440 } else { 1184 };

    #[inline(always)]
    unsafe fn block<D: Dot, const M: usize>(t: *const u8, x: &[RowK; M], b: usize, acc: &mut [__m256; M]) {
        unsafe {
            let mut sums = [_mm256_setzero_si256(); M];
            for run in 0..8 {
                let mut v = nibbles(t.add(if FIVE { Q5K_QS } else { Q4K_QS } + 128 * run));
                if FIVE {
                    add_fifth_bits(&mut v, t.add(Q5K_QH + 32 * run));
                }
                let s = D::scale_u8(t.add(K_SC + 8 * run));
                for r in 0..M {
                    let xq = x[r].q.add(256 * b + 32 * run);
                    let p = if FIVE { D::sum_scaled::<5, 8>(&v, xq, s) } else { D::sum_scaled::<4, 8>(&v, xq, s) };
                    sums[r] = _mm256_add_epi32(sums[r], p);
                }
            }
            let mins: [__m256i; 4] = std::array::from_fn(|p| _mm256_cvtepu8_epi16(_mm_loadu_si128(t.add(K_MIN + 16 * p).cast())));
            let (d, dmin) = (f16x8(t.add(D_AT)), f16x8(t.add(M_AT)));
            for r in 0..M {
                let xr = x[r];
                let mut imin = _mm256_setzero_si256();
                for (p, &mp) in mins.iter().enumerate() {
                    let pair = xr.sums32.add(8 * b + 2 * p).cast::<i32>().read_unaligned();
                    imin = _mm256_add_epi32(imin, _mm256_madd_epi16(mp, _mm256_set1_epi32(pair)));
                }
                let dx = _mm256_set1_ps(*xr.d.add(b));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), _mm256_mul_ps(d, dx), acc[r]);
                acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dmin, dx), acc[r]);
            }
        }
    }
}

pub struct Q6K;

impl Kernel for Q6K {
    type Row = RowK;
    const TILE: usize = 1680;

    #[inline(always)]
    unsafe fn block<D: Dot, const M: usize>(t: *const u8, x: &[RowK; M], b: usize, acc: &mut [__m256; M]) {
        unsafe {
            let mut sums = [_mm256_setzero_si256(); M];
            let mut offsets = [_mm256_setzero_si256(); M];
            for run in 0..8 {
                let mut v = nibbles(t.add(Q6K_QL + 128 * run));
                add_q6_high(&mut v, t.add(Q6K_QH + 64 * run));
                let pairs = _mm_loadu_si128(t.add(Q6K_SC + 16 * run).cast());
                let (even, odd) = (D::scale_i8(pairs, false), D::scale_i8(pairs, true));
                let pairs16 = _mm256_cvtepi8_epi16(pairs);
                for r in 0..M {
                    let xr = x[r];
                    let xq = xr.q.add(256 * b + 32 * run);
                    let p = _mm256_add_epi32(D::sum_scaled::<6, 4>(&v[..4], xq, even), D::sum_scaled::<6, 4>(&v[4..], xq.add(16), odd));
                    sums[r] = _mm256_add_epi32(sums[r], p);
                    let s16 = xr.sums16.add(16 * b + 2 * run).cast::<i32>().read_unaligned();
                    offsets[r] = _mm256_add_epi32(offsets[r], _mm256_madd_epi16(pairs16, _mm256_set1_epi32(s16)));
                }
            }
            let d = f16x8(t.add(D_AT));
            for r in 0..M {
                let i = _mm256_sub_epi32(sums[r], _mm256_slli_epi32::<5>(offsets[r]));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(d, _mm256_set1_ps(*x[r].d.add(b))), acc[r]);
            }
        }
    }
}

/// Tiles `0..tiles` at `w` (each `blocks` tile blocks) times M rows: row r's eight outputs of tile
/// t go to `y[r] + 8t`, all eight, or the first `last` of the final tile.
///
/// # Safety
/// The CPU has `D`'s features; `w` holds the tiles; each row holds `blocks` blocks; each `y[r]`
/// has room for `8 · (tiles − 1) + last` values.
#[inline(always)]
unsafe fn run<D: Dot, K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    for t in 0..tiles {
        let tile = unsafe { w.add(t * blocks * K::TILE) };
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..blocks {
            unsafe { K::block::<D, M>(tile.add(b * K::TILE), x, b, &mut acc) };
        }
        for r in 0..M {
            let dst = unsafe { y[r].add(COLS * t) };
            if t + 1 < tiles || last == COLS {
                unsafe { _mm256_storeu_ps(dst, acc[r]) };
            } else {
                let mut lanes = [0f32; COLS];
                unsafe {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, last);
                }
            }
        }
    }
}

/// The entry points: [`run`] compiled for each instruction set.
///
/// # Safety
/// As [`run`], with the CPU supporting the named set.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn run_avx2<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe { run::<Avx2, K, M>(w, tiles, blocks, x, y, last) }
}

/// See [`run_avx2`].
///
/// # Safety
/// As [`run`], on a CPU with AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn run_avx_vnni<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe { run::<AvxVnni, K, M>(w, tiles, blocks, x, y, last) }
}

/// See [`run_avx2`].
///
/// # Safety
/// As [`run`], on a CPU with AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn run_avx512_vnni<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe { run::<Avx512Vnni, K, M>(w, tiles, blocks, x, y, last) }
}
