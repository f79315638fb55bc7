//! The packed kernels on x86-64: one output column per 32-bit lane — eight (one tile) per 256-bit
//! register, sixteen (two tiles) per 512-bit one — M activation rows per pass over a tile, each
//! weight tile block unpacked once into registers and multiplied into every row's own accumulator.
//!
//! One body serves every instruction set and width: it is written against [`Reg`] (the register)
//! and [`Dot`] (the 8-bit multiply-add), and instantiated inside entry points that enable each
//! set's features, where the compiler inlines everything. AVX2 multiplies with `vpmaddubsw` into 16-bit sums (as many groups
//! as cannot overflow for the weights' bit width) and widens with `vpmaddwd`, applying K-format
//! sub-block scales in that same instruction; VNNI multiplies with `vpdpbusd` straight into 32
//! bits and scales with `vpmulld`. Both compute the exact integers of
//! [`reference`](super::reference), so the f32 steps that follow — the same in every path, in the
//! same order per lane — give bitwise the same outputs.

mod regs;

use super::layout::*;
pub use regs::{Reg, Ymm, Zmm};
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

/// The 8-bit multiply-add of an instruction set on registers `R`. `w` holds unsigned weights (one
/// column per 32-bit lane, four consecutive values each), `x` points at 4·N activation bytes,
/// broadcast four at a time; results are per-column 32-bit sums.
pub trait Dot<R: Reg> {
    /// A per-column scale as this set applies it.
    type Scale: Copy;
    /// Signed weights as this set multiplies them.
    type Signed: Copy;

    /// Σ over N groups of w·x, for weights below 2^BITS.
    unsafe fn sum<const BITS: u32, const N: usize>(w: &[R], x: *const i8) -> R;
    /// The same sum times the column's scale.
    unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[R], x: *const i8, s: Self::Scale) -> R;
    /// Eight unsigned byte scales per tile, one per column.
    unsafe fn scale_u8(p: *const u8, stride: usize) -> Self::Scale;
    /// Signed byte scales from 16 bytes of pairs per tile (column c at bytes 2c, 2c + 1): the even
    /// or odd one.
    unsafe fn scale_i8(p: *const u8, stride: usize, odd: bool) -> Self::Scale;
    unsafe fn signed(w: R) -> Self::Signed;
    /// Σ over eight groups of signed w times x; `sum` is Σx over those 32 values.
    unsafe fn sum_signed(w: &[Self::Signed; 8], x: *const i8, sum: i32) -> R;
}

/// 16-bit partial sums of `vpmaddubsw` hold this many groups of weights below 2^bits without
/// overflow (each product pair is at most 2 · (2^bits − 1) · 127).
const fn groups_in_16_bits(bits: u32) -> usize {
    32767 / (2 * ((1 << bits) - 1) * 127)
}

/// AVX2: `vpmaddubsw` into 16-bit sums, widened (and scaled) by `vpmaddwd`.
pub struct Avx2;

impl Dot<Ymm> for Avx2 {
    /// 16-bit lanes: the column's scale in both halves of its lane.
    type Scale = Ymm;
    /// |w| and w (whose signs move onto x).
    type Signed = (__m256i, __m256i);

    #[inline(always)]
    unsafe fn sum<const BITS: u32, const N: usize>(w: &[Ymm], x: *const i8) -> Ymm {
        unsafe { Self::sum_scaled::<BITS, N>(w, x, Ymm(_mm256_set1_epi16(1))) }
    }

    #[inline(always)]
    unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[Ymm], x: *const i8, s: Ymm) -> Ymm {
        let cap = const { groups_in_16_bits(BITS) };
        unsafe {
            let mut total = _mm256_setzero_si256();
            let mut g = 0;
            while g < N {
                let end = (g + cap).min(N);
                let mut part = _mm256_maddubs_epi16(w[g].0, Ymm::bcast(x.add(4 * g)).0);
                for h in g + 1..end {
                    part = _mm256_add_epi16(part, _mm256_maddubs_epi16(w[h].0, Ymm::bcast(x.add(4 * h)).0));
                }
                total = _mm256_add_epi32(total, _mm256_madd_epi16(part, s.0));
                g = end;
            }
            Ymm(total)
        }
    }

    #[inline(always)]
    unsafe fn scale_u8(p: *const u8, stride: usize) -> Ymm {
        unsafe { Ymm::u8_dup_i16(p, stride) }
    }

    #[inline(always)]
    unsafe fn scale_i8(p: *const u8, stride: usize, odd: bool) -> Ymm {
        unsafe { Ymm::i8_pick_dup_i16(p, stride, odd) }
    }

    #[inline(always)]
    unsafe fn signed(w: Ymm) -> (__m256i, __m256i) {
        unsafe { (_mm256_abs_epi8(w.0), w.0) }
    }

    #[inline(always)]
    unsafe fn sum_signed(w: &[(__m256i, __m256i); 8], x: *const i8, _sum: i32) -> Ymm {
        // |w| · (x with w's sign): one pair of products reaches 2 · 128 · 127, so each group is
        // widened before the next is added.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut total = _mm256_setzero_si256();
            for (g, &(abs, w)) in w.iter().enumerate() {
                let p = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(Ymm::bcast(x.add(4 * g)).0, w));
                total = _mm256_add_epi32(total, _mm256_madd_epi16(p, ones));
            }
            Ymm(total)
        }
    }
}

/// `vpdpbusd` on registers `R`: acc + Σ of four u8·i8 products per 32-bit lane.
pub trait DotProduct<R> {
    unsafe fn dp(acc: R, w: R, x: R) -> R;
}

/// AVX-VNNI: VEX-encoded `vpdpbusd` on 256-bit registers.
pub struct AvxVnni;
/// AVX-512 VNNI: EVEX-encoded `vpdpbusd`, on 256-bit (with VL) or 512-bit registers.
pub struct Avx512Vnni;

impl DotProduct<Ymm> for AvxVnni {
    #[inline(always)]
    unsafe fn dp(acc: Ymm, w: Ymm, x: Ymm) -> Ymm {
        Ymm(unsafe { _mm256_dpbusd_avx_epi32(acc.0, w.0, x.0) })
    }
}

impl DotProduct<Ymm> for Avx512Vnni {
    #[inline(always)]
    unsafe fn dp(acc: Ymm, w: Ymm, x: Ymm) -> Ymm {
        Ymm(unsafe { _mm256_dpbusd_epi32(acc.0, w.0, x.0) })
    }
}

impl DotProduct<Zmm> for Avx512Vnni {
    #[inline(always)]
    unsafe fn dp(acc: Zmm, w: Zmm, x: Zmm) -> Zmm {
        Zmm(unsafe { _mm512_dpbusd_epi32(acc.0, w.0, x.0) })
    }
}

/// VNNI: products straight into 32-bit lanes, scales applied with `vpmulld`.
pub struct Vnni<P>(std::marker::PhantomData<P>);

impl<R: Reg, P: DotProduct<R>> Dot<R> for Vnni<P> {
    /// 32-bit lanes.
    type Scale = R;
    /// w + 128 as unsigned bytes.
    type Signed = R;

    #[inline(always)]
    unsafe fn sum<const BITS: u32, const N: usize>(w: &[R], x: *const i8) -> R {
        // Two chains of `vpdpbusd` (each waits ~5 cycles for its predecessor): with few rows per
        // pass one chain would leave the multiplier idle.
        unsafe {
            let (mut a, mut b) = (R::zero(), R::zero());
            for g in (0..N).step_by(2) {
                a = P::dp(a, w[g], R::bcast(x.add(4 * g)));
                if g + 1 < N {
                    b = P::dp(b, w[g + 1], R::bcast(x.add(4 * g + 4)));
                }
            }
            a.add32(b)
        }
    }

    #[inline(always)]
    unsafe fn sum_scaled<const BITS: u32, const N: usize>(w: &[R], x: *const i8, s: R) -> R {
        unsafe { Self::sum::<BITS, N>(w, x).mullo32(s) }
    }

    #[inline(always)]
    unsafe fn scale_u8(p: *const u8, stride: usize) -> R {
        unsafe { R::u8_i32(p, stride) }
    }

    #[inline(always)]
    unsafe fn scale_i8(p: *const u8, stride: usize, odd: bool) -> R {
        unsafe { R::i8_pick_i32(p, stride, odd) }
    }

    #[inline(always)]
    unsafe fn signed(w: R) -> R {
        unsafe { w.xor(R::splat8(-128)) }
    }

    #[inline(always)]
    unsafe fn sum_signed(w: &[R; 8], x: *const i8, sum: i32) -> R {
        // Σ (w + 128)·x − 128·Σx.
        unsafe { Self::sum::<8, 8>(w, x).sub32(R::splat32(sum.wrapping_mul(128))) }
    }
}

/// Four nibble vectors at `p` (per tile) → the eight groups of a run of 32 values.
#[inline(always)]
unsafe fn nibbles<R: Reg>(p: *const u8, stride: usize) -> [R; 8] {
    unsafe {
        let low = R::splat8(0x0F);
        let mut v = [R::zero(); 8];
        for h in 0..4 {
            let q = R::load(p.add(32 * h), stride);
            v[h] = q.and(low);
            v[h + 4] = q.srl16::<4>().and(low);
        }
        v
    }
}

/// ORs in the fifth bits of a fifth-bit vector at `p` (bit g of each byte → bit 4 of group g).
#[inline(always)]
unsafe fn add_fifth_bits<R: Reg>(v: &mut [R; 8], p: *const u8, stride: usize) {
    unsafe {
        let qh = R::load(p, stride);
        let bit = R::splat8(0x10);
        let h = [
            qh.sll16::<4>(),
            qh.sll16::<3>(),
            qh.sll16::<2>(),
            qh.sll16::<1>(),
            qh,
            qh.srl16::<1>(),
            qh.srl16::<2>(),
            qh.srl16::<3>(),
        ];
        for g in 0..8 {
            v[g] = v[g].or(h[g].and(bit));
        }
    }
}

/// ORs in Q6_K's high bits from its two high-bit vectors at `p` (bits 2g..2g+2 → bits 4..6).
#[inline(always)]
unsafe fn add_q6_high<R: Reg>(v: &mut [R; 8], p: *const u8, stride: usize) {
    unsafe {
        let (a, b) = (R::load(p, stride), R::load(p.add(32), stride));
        let bits = R::splat8(0x30);
        let h = [a.sll16::<4>(), a.sll16::<2>(), a, a.srl16::<2>(), b.sll16::<4>(), b.sll16::<2>(), b, b.srl16::<2>()];
        for g in 0..8 {
            v[g] = v[g].or(h[g].and(bits));
        }
    }
}

/// A format's work on one tile block (of each of `R::TILES` tiles, `stride` bytes apart) for M
/// rows: `acc[r]` gains row r's contribution of block `b`.
pub trait Kernel {
    type Row: Copy;
    const TILE: usize;
    unsafe fn block<R: Reg, D: Dot<R>, const M: usize>(t: *const u8, stride: usize, x: &[Self::Row; M], b: usize, acc: &mut [R::F; M]);
}

/// The 32-value formats; `F` is the [`Format`](super::Format) as a number (const generics take no enums).
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
    unsafe fn block<R: Reg, D: Dot<R>, const M: usize>(t: *const u8, stride: usize, x: &[Row32; M], b: usize, acc: &mut [R::F; M]) {
        unsafe {
            let d = R::f16(t.add(D_AT), stride);
            if F == Q8_0 {
                let w: [D::Signed; 8] = std::array::from_fn(|g| D::signed(R::load(t.add(Q8_0_QS + 32 * g), stride)));
                for r in 0..M {
                    let xr = x[r];
                    let i = D::sum_signed(&w, xr.q.add(32 * b), *xr.sum.add(b));
                    acc[r] = R::fmadd(i.cvt(), R::fmul(d, R::fsplat(*xr.d.add(b))), acc[r]);
                }
                return;
            }
            let (qs, qh) = match F {
                Q4_0 => (Q4_0_QS, 0),
                Q4_1 => (Q4_1_QS, 0),
                Q5_0 => (Q5_0_QS, Q5_0_QH),
                _ => (Q5_1_QS, Q5_1_QH),
            };
            let mut v = nibbles::<R>(t.add(qs), stride);
            let five = F == Q5_0 || F == Q5_1;
            if five {
                add_fifth_bits(&mut v, t.add(qh), stride);
            }
            let with_min = F == Q4_1 || F == Q5_1;
            let m = if with_min { R::f16(t.add(M_AT), stride) } else { d };
            let offset = [8, 0, 16, 0][F as usize];
            for r in 0..M {
                let xr = x[r];
                let mut i = if five { D::sum::<5, 8>(&v, xr.q.add(32 * b)) } else { D::sum::<4, 8>(&v, xr.q.add(32 * b)) };
                if offset != 0 {
                    i = i.sub32(R::splat32(offset * *xr.sum.add(b)));
                }
                acc[r] = R::fmadd(i.cvt(), R::fmul(d, R::fsplat(*xr.d.add(b))), acc[r]);
                if with_min {
                    acc[r] = R::fmadd(m, R::fsplat(*xr.ds.add(b)), acc[r]);
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
    unsafe fn block<R: Reg, D: Dot<R>, const M: usize>(t: *const u8, stride: usize, x: &[RowK; M], b: usize, acc: &mut [R::F; M]) {
        unsafe {
            let mut sums = [R::zero(); M];
            for run in 0..8 {
                let mut v = nibbles::<R>(t.add(if FIVE { Q5K_QS } else { Q4K_QS } + 128 * run), stride);
                if FIVE {
                    add_fifth_bits(&mut v, t.add(Q5K_QH + 32 * run), stride);
                }
                let s = D::scale_u8(t.add(K_SC + 8 * run), stride);
                for r in 0..M {
                    let xq = x[r].q.add(256 * b + 32 * run);
                    let p = if FIVE { D::sum_scaled::<5, 8>(&v, xq, s) } else { D::sum_scaled::<4, 8>(&v, xq, s) };
                    sums[r] = sums[r].add32(p);
                }
            }
            let mins: [R; 4] = std::array::from_fn(|p| R::u8_i16(t.add(K_MIN + 16 * p), stride));
            let (d, dmin) = (R::f16(t.add(D_AT), stride), R::f16(t.add(M_AT), stride));
            for r in 0..M {
                let xr = x[r];
                let mut imin = R::zero();
                for (p, &mp) in mins.iter().enumerate() {
                    let pair = xr.sums32.add(8 * b + 2 * p).cast::<i32>().read_unaligned();
                    imin = imin.add32(mp.madd16(R::splat32(pair)));
                }
                let dx = R::fsplat(*xr.d.add(b));
                acc[r] = R::fmadd(sums[r].cvt(), R::fmul(d, dx), acc[r]);
                acc[r] = R::fnmadd(imin.cvt(), R::fmul(dmin, dx), acc[r]);
            }
        }
    }
}

pub struct Q6K;

impl Kernel for Q6K {
    type Row = RowK;
    const TILE: usize = 1680;

    #[inline(always)]
    unsafe fn block<R: Reg, D: Dot<R>, const M: usize>(t: *const u8, stride: usize, x: &[RowK; M], b: usize, acc: &mut [R::F; M]) {
        unsafe {
            let mut sums = [R::zero(); M];
            let mut offsets = [R::zero(); M];
            for run in 0..8 {
                let mut v = nibbles::<R>(t.add(Q6K_QL + 128 * run), stride);
                add_q6_high(&mut v, t.add(Q6K_QH + 64 * run), stride);
                let sc = t.add(Q6K_SC + 16 * run);
                let (even, odd) = (D::scale_i8(sc, stride, false), D::scale_i8(sc, stride, true));
                let pairs = R::i8_i16(sc, stride);
                for r in 0..M {
                    let xr = x[r];
                    let xq = xr.q.add(256 * b + 32 * run);
                    let p = D::sum_scaled::<6, 4>(&v[..4], xq, even).add32(D::sum_scaled::<6, 4>(&v[4..], xq.add(16), odd));
                    sums[r] = sums[r].add32(p);
                    let s16 = xr.sums16.add(16 * b + 2 * run).cast::<i32>().read_unaligned();
                    offsets[r] = offsets[r].add32(pairs.madd16(R::splat32(s16)));
                }
            }
            let d = R::f16(t.add(D_AT), stride);
            for r in 0..M {
                let i = sums[r].sub32(offsets[r].sll32::<5>());
                acc[r] = R::fmadd(i.cvt(), R::fmul(d, R::fsplat(*x[r].d.add(b))), acc[r]);
            }
        }
    }
}

/// How far ahead of the tile block being multiplied its successors are prefetched.
const PREFETCH: usize = 4096;

/// Tiles `0..tiles` at `w` (each `blocks` tile blocks) times M rows, `R::TILES` tiles at a time:
/// row r's eight outputs of tile t go to `y[r] + 8t`, all eight, or the first `last` of the final
/// tile. Returns how many tiles it did (a multiple of `R::TILES`).
///
/// # Safety
/// The CPU has the features of `R` and `D`; `w` holds the tiles; each row holds `blocks` blocks;
/// each `y[r]` has room for `8 · (tiles − 1) + last` values.
#[inline(always)]
unsafe fn run<R: Reg, D: Dot<R>, K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) -> usize {
    let stride = blocks * K::TILE;
    let end = w.wrapping_add(tiles * stride);
    let mut t = 0;
    while t + R::TILES <= tiles {
        let tile = unsafe { w.add(t * stride) };
        let mut acc = [unsafe { R::fzero() }; M];
        for b in 0..blocks {
            let at = unsafe { tile.add(b * K::TILE) };
            // Each tile is a sequential stream: ask for the bytes a few kilobytes ahead.
            for s in 0..R::TILES {
                let ahead = at.wrapping_add(s * stride + PREFETCH);
                if ahead < end {
                    for line in (0..K::TILE).step_by(64) {
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.add(line).cast()) };
                    }
                }
            }
            unsafe { K::block::<R, D, M>(at, stride, x, b, &mut acc) };
        }
        let n = if t + R::TILES == tiles { COLS * (R::TILES - 1) + last } else { COLS * R::TILES };
        for r in 0..M {
            unsafe { R::store(acc[r], y[r].add(COLS * t), n) };
        }
        t += R::TILES;
    }
    t
}

/// The entry points: [`run`] compiled for each instruction set.
///
/// # Safety
/// As [`run`], with the CPU supporting the named set.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn run_avx2<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe { run::<Ymm, Avx2, K, M>(w, tiles, blocks, x, y, last) };
}

/// See [`run_avx2`].
///
/// # Safety
/// As [`run`], on a CPU with AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn run_avx_vnni<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe { run::<Ymm, Vnni<AvxVnni>, K, M>(w, tiles, blocks, x, y, last) };
}

/// See [`run_avx2`]: pairs of tiles in 512-bit registers, an odd last tile in a 256-bit one.
///
/// # Safety
/// As [`run`], on a CPU with AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn run_avx512_vnni<K: Kernel, const M: usize>(w: *const u8, tiles: usize, blocks: usize, x: &[K::Row; M], y: &[*mut f32; M], last: usize) {
    unsafe {
        let done = run::<Zmm, Vnni<Avx512Vnni>, K, M>(w, tiles, blocks, x, y, last);
        if done < tiles {
            let y: [*mut f32; M] = std::array::from_fn(|r| y[r].add(COLS * done));
            run::<Ymm, Vnni<Avx512Vnni>, K, M>(w.add(done * blocks * K::TILE), tiles - done, blocks, x, &y, last);
        }
    }
}
