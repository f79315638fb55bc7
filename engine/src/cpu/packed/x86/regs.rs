//! Registers of column lanes: [`Ymm`] holds one tile's eight columns, [`Zmm`] two adjacent
//! tiles' sixteen (loaded from the same offset in each, `stride` bytes apart). The kernels are
//! written once against [`Reg`]; every operation is lane-wise, so a column's integers and f32
//! steps are the same in either width.

use std::arch::x86_64::*;

/// A vector of 32-bit column lanes (bytes 4c..4c+4 of a loaded vector belong to column c).
///
/// Loads read `p` for the first tile and `p + stride` for the second (Zmm only). Every method is
/// `unsafe`: it needs the CPU features of the entry point it is inlined into, and loads read
/// through raw pointers the caller vouches for.
pub trait Reg: Copy {
    /// Tiles per register.
    const TILES: usize;
    type F: Copy;

    /// 32 bytes per tile.
    unsafe fn load(p: *const u8, stride: usize) -> Self;
    /// Eight f16 per tile, as f32 lanes.
    unsafe fn f16(p: *const u8, stride: usize) -> Self::F;
    /// Eight bytes per tile, unsigned, one per column → 32-bit lanes.
    unsafe fn u8_i32(p: *const u8, stride: usize) -> Self;
    /// Eight bytes per tile, unsigned, one per column → both 16-bit halves of the column's lane.
    unsafe fn u8_dup_i16(p: *const u8, stride: usize) -> Self;
    /// Sixteen bytes per tile (column c: bytes 2c, 2c + 1), unsigned → 16-bit halves.
    unsafe fn u8_i16(p: *const u8, stride: usize) -> Self;
    /// The same, signed.
    unsafe fn i8_i16(p: *const u8, stride: usize) -> Self;
    /// Sixteen bytes per tile (column c: bytes 2c, 2c + 1), signed: byte 2c + `odd` → 32-bit lane.
    unsafe fn i8_pick_i32(p: *const u8, stride: usize, odd: bool) -> Self;
    /// The same byte into both 16-bit halves of the column's lane.
    unsafe fn i8_pick_dup_i16(p: *const u8, stride: usize, odd: bool) -> Self;
    /// The four bytes at `x` in every lane.
    unsafe fn bcast(x: *const i8) -> Self;

    unsafe fn zero() -> Self;
    unsafe fn splat8(v: i8) -> Self;
    unsafe fn splat32(v: i32) -> Self;
    unsafe fn and(self, o: Self) -> Self;
    unsafe fn or(self, o: Self) -> Self;
    unsafe fn xor(self, o: Self) -> Self;
    unsafe fn add32(self, o: Self) -> Self;
    unsafe fn sub32(self, o: Self) -> Self;
    unsafe fn mullo32(self, o: Self) -> Self;
    /// Pairs of 16-bit products summed into 32-bit lanes (`vpmaddwd`).
    unsafe fn madd16(self, o: Self) -> Self;
    /// Logical shifts of 16-bit lanes (0 ≤ N < 8) and of 32-bit lanes.
    unsafe fn srl16<const N: u32>(self) -> Self;
    unsafe fn sll16<const N: u32>(self) -> Self;
    unsafe fn sll32<const N: u32>(self) -> Self;

    unsafe fn fzero() -> Self::F;
    unsafe fn fsplat(v: f32) -> Self::F;
    unsafe fn cvt(self) -> Self::F;
    unsafe fn fmul(a: Self::F, b: Self::F) -> Self::F;
    /// a·b + c, rounded once.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// c − a·b, rounded once.
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The first `n` lanes to `dst`.
    unsafe fn store(v: Self::F, dst: *mut f32, n: usize);
}

/// Expands a const shift count into the immediate forms the intrinsics take.
macro_rules! shift {
    ($f:ident, $v:expr, $n:expr) => {
        match $n {
            0 => $v,
            1 => $f::<1>($v),
            2 => $f::<2>($v),
            3 => $f::<3>($v),
            4 => $f::<4>($v),
            5 => $f::<5>($v),
            6 => $f::<6>($v),
            _ => $f::<7>($v),
        }
    };
}

/// Byte indices 2c + `odd` of the first eight columns, for `pshufb`.
#[inline(always)]
unsafe fn pick(odd: bool, dup: bool) -> __m128i {
    let o = odd as i8;
    if dup {
        _mm_setr_epi8(o, o, 2 + o, 2 + o, 4 + o, 4 + o, 6 + o, 6 + o, 8 + o, 8 + o, 10 + o, 10 + o, 12 + o, 12 + o, 14 + o, 14 + o)
    } else {
        _mm_setr_epi8(o, 2 + o, 4 + o, 6 + o, 8 + o, 10 + o, 12 + o, 14 + o, -1, -1, -1, -1, -1, -1, -1, -1)
    }
}

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    unsafe { _mm_loadu_si128(p.cast()) }
}

#[inline(always)]
unsafe fn load8(p: *const u8) -> __m128i {
    unsafe { _mm_loadl_epi64(p.cast()) }
}

/// One tile: eight columns in a 256-bit register.
#[derive(Clone, Copy)]
pub struct Ymm(pub __m256i);

impl Reg for Ymm {
    const TILES: usize = 1;
    type F = __m256;

    #[inline(always)]
    unsafe fn load(p: *const u8, _: usize) -> Self {
        Ymm(unsafe { _mm256_loadu_si256(p.cast()) })
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8, _: usize) -> __m256 {
        unsafe { _mm256_cvtph_ps(load16(p)) }
    }
    #[inline(always)]
    unsafe fn u8_i32(p: *const u8, _: usize) -> Self {
        Ymm(unsafe { _mm256_cvtepu8_epi32(load8(p)) })
    }
    #[inline(always)]
    unsafe fn u8_dup_i16(p: *const u8, _: usize) -> Self {
        let v = unsafe { load8(p) };
        Ymm(unsafe { _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v)) })
    }
    #[inline(always)]
    unsafe fn u8_i16(p: *const u8, _: usize) -> Self {
        Ymm(unsafe { _mm256_cvtepu8_epi16(load16(p)) })
    }
    #[inline(always)]
    unsafe fn i8_i16(p: *const u8, _: usize) -> Self {
        Ymm(unsafe { _mm256_cvtepi8_epi16(load16(p)) })
    }
    #[inline(always)]
    unsafe fn i8_pick_i32(p: *const u8, _: usize, odd: bool) -> Self {
        Ymm(unsafe { _mm256_cvtepi8_epi32(_mm_shuffle_epi8(load16(p), pick(odd, false))) })
    }
    #[inline(always)]
    unsafe fn i8_pick_dup_i16(p: *const u8, _: usize, odd: bool) -> Self {
        Ymm(unsafe { _mm256_cvtepi8_epi16(_mm_shuffle_epi8(load16(p), pick(odd, true))) })
    }
    #[inline(always)]
    unsafe fn bcast(x: *const i8) -> Self {
        Ymm(unsafe { _mm256_set1_epi32(x.cast::<i32>().read_unaligned()) })
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        Ymm(unsafe { _mm256_setzero_si256() })
    }
    #[inline(always)]
    unsafe fn splat8(v: i8) -> Self {
        Ymm(unsafe { _mm256_set1_epi8(v) })
    }
    #[inline(always)]
    unsafe fn splat32(v: i32) -> Self {
        Ymm(unsafe { _mm256_set1_epi32(v) })
    }
    #[inline(always)]
    unsafe fn and(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_and_si256(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn or(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_or_si256(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn xor(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_xor_si256(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn add32(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_add_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub32(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_sub_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mullo32(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_mullo_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn madd16(self, o: Self) -> Self {
        Ymm(unsafe { _mm256_madd_epi16(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn srl16<const N: u32>(self) -> Self {
        Ymm(unsafe { shift!(_mm256_srli_epi16, self.0, N) })
    }
    #[inline(always)]
    unsafe fn sll16<const N: u32>(self) -> Self {
        Ymm(unsafe { shift!(_mm256_slli_epi16, self.0, N) })
    }
    #[inline(always)]
    unsafe fn sll32<const N: u32>(self) -> Self {
        Ymm(unsafe { shift!(_mm256_slli_epi32, self.0, N) })
    }
    #[inline(always)]
    unsafe fn fzero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn fsplat(v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn cvt(self) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(self.0) }
    }
    #[inline(always)]
    unsafe fn fmul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(v: __m256, dst: *mut f32, n: usize) {
        unsafe {
            if n == 8 {
                _mm256_storeu_ps(dst, v);
            } else {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, n);
            }
        }
    }
}

/// Two adjacent tiles: sixteen columns in a 512-bit register (AVX-512 F and BW).
#[derive(Clone, Copy)]
pub struct Zmm(pub __m512i);

/// Two 16-byte loads, `stride` apart, as one 256-bit register.
#[inline(always)]
unsafe fn pair16(p: *const u8, stride: usize) -> __m256i {
    unsafe { _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load16(p)), load16(p.add(stride))) }
}

impl Reg for Zmm {
    const TILES: usize = 2;
    type F = __m512;

    #[inline(always)]
    unsafe fn load(p: *const u8, stride: usize) -> Self {
        Zmm(unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(p.cast())), _mm256_loadu_si256(p.add(stride).cast())) })
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8, stride: usize) -> __m512 {
        unsafe { _mm512_cvtph_ps(pair16(p, stride)) }
    }
    #[inline(always)]
    unsafe fn u8_i32(p: *const u8, stride: usize) -> Self {
        Zmm(unsafe { _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(load8(p), load8(p.add(stride)))) })
    }
    #[inline(always)]
    unsafe fn u8_dup_i16(p: *const u8, stride: usize) -> Self {
        unsafe {
            let (a, b) = (load8(p), load8(p.add(stride)));
            Zmm(_mm512_cvtepu8_epi16(_mm256_set_m128i(_mm_unpacklo_epi8(b, b), _mm_unpacklo_epi8(a, a))))
        }
    }
    #[inline(always)]
    unsafe fn u8_i16(p: *const u8, stride: usize) -> Self {
        Zmm(unsafe { _mm512_cvtepu8_epi16(pair16(p, stride)) })
    }
    #[inline(always)]
    unsafe fn i8_i16(p: *const u8, stride: usize) -> Self {
        Zmm(unsafe { _mm512_cvtepi8_epi16(pair16(p, stride)) })
    }
    #[inline(always)]
    unsafe fn i8_pick_i32(p: *const u8, stride: usize, odd: bool) -> Self {
        unsafe {
            let m = pick(odd, false);
            let (a, b) = (_mm_shuffle_epi8(load16(p), m), _mm_shuffle_epi8(load16(p.add(stride)), m));
            Zmm(_mm512_cvtepi8_epi32(_mm_unpacklo_epi64(a, b)))
        }
    }
    #[inline(always)]
    unsafe fn i8_pick_dup_i16(p: *const u8, stride: usize, odd: bool) -> Self {
        unsafe {
            let m = pick(odd, true);
            let (a, b) = (_mm_shuffle_epi8(load16(p), m), _mm_shuffle_epi8(load16(p.add(stride)), m));
            Zmm(_mm512_cvtepi8_epi16(_mm256_set_m128i(b, a)))
        }
    }
    #[inline(always)]
    unsafe fn bcast(x: *const i8) -> Self {
        Zmm(unsafe { _mm512_set1_epi32(x.cast::<i32>().read_unaligned()) })
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        Zmm(unsafe { _mm512_setzero_si512() })
    }
    #[inline(always)]
    unsafe fn splat8(v: i8) -> Self {
        Zmm(unsafe { _mm512_set1_epi8(v) })
    }
    #[inline(always)]
    unsafe fn splat32(v: i32) -> Self {
        Zmm(unsafe { _mm512_set1_epi32(v) })
    }
    #[inline(always)]
    unsafe fn and(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_and_si512(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn or(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_or_si512(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn xor(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_xor_si512(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn add32(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_add_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub32(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_sub_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mullo32(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_mullo_epi32(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn madd16(self, o: Self) -> Self {
        Zmm(unsafe { _mm512_madd_epi16(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn srl16<const N: u32>(self) -> Self {
        Zmm(unsafe { shift!(_mm512_srli_epi16, self.0, N) })
    }
    #[inline(always)]
    unsafe fn sll16<const N: u32>(self) -> Self {
        Zmm(unsafe { shift!(_mm512_slli_epi16, self.0, N) })
    }
    #[inline(always)]
    unsafe fn sll32<const N: u32>(self) -> Self {
        Zmm(unsafe { shift!(_mm512_slli_epi32, self.0, N) })
    }
    #[inline(always)]
    unsafe fn fzero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn fsplat(v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn cvt(self) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(self.0) }
    }
    #[inline(always)]
    unsafe fn fmul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(v: __m512, dst: *mut f32, n: usize) {
        unsafe { _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, v) }
    }
}
