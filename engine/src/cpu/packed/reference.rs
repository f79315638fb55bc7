//! The packed kernels in plain Rust: the definition every vector path reproduces bit for bit, and
//! the path on CPUs without one.
//!
//! Per (activation row, output column), block by block in order, an exact integer sum of products
//! of the stored weight integers with the row's 8-bit values, then f32 operations in this order
//! (`fma(a, b, c)` = a·b + c rounded once; `d`, `m`, `dmin` the column's f16 scales as f32, `dx`
//! the activation block's scale, `ds` = dx·Σx as [`Q8Row`] stores it):
//!
//! | format | integer I of a block | f32 accumulation |
//! |---|---|---|
//! | Q4_0, Q5_0 | Σ q·x − 8Σx (Q5_0: 16Σx), q unsigned as stored | acc = fma(I, d·dx, acc) |
//! | Q8_0 | Σ q·x, q signed | acc = fma(I, d·dx, acc) |
//! | Q4_1, Q5_1 | Σ q·x | acc = fma(I, d·dx, acc); acc = fma(m, ds, acc) |
//! | Q4_K, Q5_K | Σ_j sc_j·Σ_{i∈j} q·x, and Imin = Σ_j min_j·Σ_{i∈j} x (32-value sub-blocks) | acc = fma(I, d·dx, acc); acc = fma(Imin, −(dmin·dx), acc) |
//! | Q6_K | Σ_j sc_j·(Σ_{i∈j} q·x − 32·Σ_{i∈j} x) (16-value sub-blocks) | acc = fma(I, d·dx, acc) |
//!
//! Every integer fits in 32 bits for any stored bytes (the largest, Q6_K: 16 · 128 · (16 · 63 ·
//! 127 + 32 · 16 · 127) < 2³¹), so any summation order gives the same I; only the f32 steps have an
//! order, and it is fixed per column, never across columns or rows.

use super::layout::*;
use crate::cpu::q8::{Q8KRow, Q8Row, QK, QK_K};

/// The integer sums of one 32-value tile block with one activation block (`x`: 32 values, `sum`:
/// their sum), per column.
fn block32(f: Format, tile: &[u8], x: &[i8], sum: i32) -> [i32; COLS] {
    std::array::from_fn(|c| {
        let q = |i: usize| -> i32 {
            match f {
                Format::Q4_0 => nibble(&tile[Q4_0_QS..], c, i) as i32,
                Format::Q4_1 => nibble(&tile[Q4_1_QS..], c, i) as i32,
                Format::Q5_0 => (nibble(&tile[Q5_0_QS..], c, i) | fifth_bit(&tile[Q5_0_QH..], c, i)) as i32,
                Format::Q5_1 => (nibble(&tile[Q5_1_QS..], c, i) | fifth_bit(&tile[Q5_1_QH..], c, i)) as i32,
                Format::Q8_0 => byte(&tile[Q8_0_QS..], c, i) as i8 as i32,
                _ => unreachable!("a K format in a 32-value block"),
            }
        };
        let dot: i32 = (0..QK).map(|i| q(i) * x[i] as i32).sum();
        match f {
            Format::Q4_0 => dot - 8 * sum,
            Format::Q5_0 => dot - 16 * sum,
            _ => dot,
        }
    })
}

/// The integer sums (I, Imin) of one K-format tile block with one activation super-block.
fn block_k(f: Format, tile: &[u8], x: &[i8], sums16: &[i16], sums32: &[i16]) -> ([i32; COLS], [i32; COLS]) {
    let mut main = [0i32; COLS];
    let mut mins = [0i32; COLS];
    for c in 0..COLS {
        for run in 0..8 {
            let xr = &x[32 * run..32 * run + 32];
            match f {
                Format::Q4K | Format::Q5K => {
                    let q = |i: usize| -> i32 {
                        if f == Format::Q5K {
                            (nibble(&tile[Q5K_QS + 128 * run..], c, i) | fifth_bit(&tile[Q5K_QH + 32 * run..], c, i)) as i32
                        } else {
                            nibble(&tile[Q4K_QS + 128 * run..], c, i) as i32
                        }
                    };
                    let dot: i32 = (0..32).map(|i| q(i) * xr[i] as i32).sum();
                    main[c] += tile[K_SC + 8 * run + c] as i32 * dot;
                    mins[c] += tile[K_MIN + 16 * (run / 2) + 2 * c + run % 2] as i32 * sums32[run] as i32;
                }
                Format::Q6K => {
                    for half in 0..2 {
                        let q = |i: usize| (nibble(&tile[Q6K_QL + 128 * run..], c, i) | q6_high(&tile[Q6K_QH + 64 * run..], c, i)) as i32;
                        let dot: i32 = (16 * half..16 * half + 16).map(|i| q(i) * xr[i] as i32).sum();
                        let sc = tile[Q6K_SC + 16 * run + 2 * c + half] as i8 as i32;
                        main[c] += sc * (dot - 32 * sums16[2 * run + half] as i32);
                    }
                }
                _ => unreachable!("a 32-value format in a super-block"),
            }
        }
    }
    (main, mins)
}

/// One column tile (all its blocks, `blocks · tile_bytes` bytes) times one activation row of a
/// 32-value format: the eight outputs.
pub fn tile32(f: Format, tile: &[u8], x: &Q8Row) -> [f32; COLS] {
    let mut acc = [0f32; COLS];
    for (b, t) in tile.chunks_exact(f.tile_bytes()).enumerate() {
        let i = block32(f, t, &x.q[b * QK..(b + 1) * QK], x.sum[b]);
        for c in 0..COLS {
            acc[c] = (i[c] as f32).mul_add(f16_of(t, D_AT, c) * x.d[b], acc[c]);
            if matches!(f, Format::Q4_1 | Format::Q5_1) {
                acc[c] = f16_of(t, M_AT, c).mul_add(x.ds[b], acc[c]);
            }
        }
    }
    acc
}

/// [`tile32`] for the K formats.
pub fn tile_k(f: Format, tile: &[u8], x: &Q8KRow) -> [f32; COLS] {
    let mut acc = [0f32; COLS];
    for (b, t) in tile.chunks_exact(f.tile_bytes()).enumerate() {
        let (i, imin) = block_k(f, t, &x.q[b * QK_K..(b + 1) * QK_K], &x.sums16[16 * b..16 * b + 16], &x.sums32[8 * b..8 * b + 8]);
        for c in 0..COLS {
            acc[c] = (i[c] as f32).mul_add(f16_of(t, D_AT, c) * x.d[b], acc[c]);
            if f != Format::Q6K {
                acc[c] = (imin[c] as f32).mul_add(-(f16_of(t, M_AT, c) * x.d[b]), acc[c]);
            }
        }
    }
    acc
}
