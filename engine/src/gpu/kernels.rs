//! CubeCL kernels that multiply by weights kept in their GGML blocks ([`super::layout`]),
//! dequantizing in registers: nothing wider than the file's blocks is ever stored.
//!
//! Every format is read as groups of 16 values that share a scale: value = d · (q + bias) + m,
//! with `q + bias` an exact small integer (or, for F16/BF16, the value itself and d = 1, m = 0),
//! the same arithmetic as the host's exact dequantization in [`crate::gguf::dequantize`].
//!
//! Activations (x, y) are of the model's float type `F` (f32, or f16 where the adapter computes
//! in it); weights are dequantized and products accumulated in f32 whatever `F` is, so an f16
//! model loses precision only where its activations are stored.

use super::layout::BlockFormat;
use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Byte `offset` of the block whose first word is `base`.
#[cube]
fn byte_at(w: &[u32], base: usize, offset: usize) -> u32 {
    (w[base + offset / 4] >> ((offset % 4) * 8) as u32) & 0xFF
}

/// The little-endian 16-bit value at even byte `offset` of a block.
#[cube]
fn half_bits_at(w: &[u32], base: usize, offset: usize) -> u32 {
    (w[base + offset / 4] >> ((offset % 4) * 8) as u32) & 0xFFFF
}

/// IEEE half-precision bits as f32 (exact; WGSL has f16 arithmetic only with an optional feature).
#[cube]
fn half_to_f32(h: u32) -> f32 {
    let sign = (h >> 15) << 31;
    let exp = (h >> 10) & 0x1F;
    let man = h & 0x3FF;
    let mut value = f32::reinterpret(sign | ((exp + 112) << 23) | (man << 13));
    if exp == 0 {
        // Subnormal (or zero): man · 2⁻²⁴, exact in f32.
        let magnitude = f32::cast_from(man) * 0.000000059604645;
        value = if sign != 0 { -magnitude } else { magnitude };
    }
    if exp == 31 {
        value = f32::reinterpret(sign | 0x7F80_0000 | (man << 13));
    }
    value
}

#[cube]
fn half_at(w: &[u32], base: usize, offset: usize) -> f32 {
    half_to_f32(half_bits_at(w, base, offset))
}

/// A byte read as a signed 8-bit integer.
#[cube]
fn signed_byte(b: u32) -> f32 {
    f32::cast_from(b ^ 0x80) - 128.0
}

/// The 6-bit (scale, min) pair `j` of a Q4_K/Q5_K block (scales at bytes 4..16).
#[cube]
fn scale_min_k4(w: &[u32], base: usize, j: usize) -> (f32, f32) {
    let (sc, mn) = if j < 4 {
        (byte_at(w, base, 4 + j) & 63, byte_at(w, base, 8 + j) & 63)
    } else {
        (
            (byte_at(w, base, 8 + j) & 0xF) | ((byte_at(w, base, j) >> 6) << 4),
            (byte_at(w, base, 8 + j) >> 4) | ((byte_at(w, base, 4 + j) >> 6) << 4),
        )
    };
    (f32::cast_from(sc), f32::cast_from(mn))
}

/// (d, m) of group `g` (16 values) of the block at word `base`.
#[cube]
fn group_scale(w: &[u32], base: usize, g: usize, #[comptime] format: BlockFormat) -> (f32, f32) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => (half_at(w, base, 0), f32::new(0.0)),
        BlockFormat::Q4_1 | BlockFormat::Q5_1 => (half_at(w, base, 0), half_at(w, base, 2)),
        BlockFormat::Q4K | BlockFormat::Q5K => {
            let (sc, mn) = scale_min_k4(w, base, g / 2);
            (half_at(w, base, 0) * sc, -(half_at(w, base, 2) * mn))
        }
        BlockFormat::Q6K => {
            // Scale index within the half: l/16 + 2c, with c the 32-value chunk of the half.
            let half = g / 8;
            let chunk = (g % 8) / 2;
            let sc = signed_byte(byte_at(w, base, 192 + half * 8 + g % 2 + 2 * chunk));
            (half_at(w, base, 208) * sc, f32::new(0.0))
        }
        BlockFormat::F16 | BlockFormat::BF16 => (f32::new(1.0), f32::new(0.0)),
    }
}

/// q + bias of value `l` (0..16) of group `g` of the block at word `base`.
#[cube]
fn group_value(w: &[u32], base: usize, g: usize, l: usize, #[comptime] format: BlockFormat) -> f32 {
    match format {
        BlockFormat::Q8_0 => signed_byte(byte_at(w, base, 2 + g * 16 + l)),
        BlockFormat::Q4_0 => f32::cast_from((byte_at(w, base, 2 + l) >> (4 * g) as u32) & 0xF) - 8.0,
        BlockFormat::Q4_1 => f32::cast_from((byte_at(w, base, 4 + l) >> (4 * g) as u32) & 0xF),
        BlockFormat::Q5_0 => {
            let bit = g * 16 + l;
            let high = (byte_at(w, base, 2 + bit / 8) >> (bit % 8) as u32) & 1;
            let low = (byte_at(w, base, 6 + l) >> (4 * g) as u32) & 0xF;
            f32::cast_from(low | (high << 4)) - 16.0
        }
        BlockFormat::Q5_1 => {
            let bit = g * 16 + l;
            let high = (byte_at(w, base, 4 + bit / 8) >> (bit % 8) as u32) & 1;
            let low = (byte_at(w, base, 8 + l) >> (4 * g) as u32) & 0xF;
            f32::cast_from(low | (high << 4))
        }
        BlockFormat::Q4K => {
            // 32-value group `is` = g/2: nibbles of bytes 16 + 32·(is/2) + l32, low half for even is.
            let is = g / 2;
            let l32 = (g % 2) * 16 + l;
            f32::cast_from((byte_at(w, base, 16 + (is / 2) * 32 + l32) >> (4 * (is % 2)) as u32) & 0xF)
        }
        BlockFormat::Q5K => {
            let is = g / 2;
            let l32 = (g % 2) * 16 + l;
            let low = (byte_at(w, base, 48 + (is / 2) * 32 + l32) >> (4 * (is % 2)) as u32) & 0xF;
            let high = (byte_at(w, base, 16 + l32) >> is as u32) & 1;
            f32::cast_from(low + 16 * high)
        }
        BlockFormat::Q6K => {
            let half = g / 8;
            let chunk = (g % 8) / 2;
            let l32 = (g % 2) * 16 + l;
            let low = (byte_at(w, base, half * 64 + l32 + 32 * (chunk % 2)) >> (4 * (chunk / 2)) as u32) & 0xF;
            let high = (byte_at(w, base, 128 + half * 32 + l32) >> (2 * chunk) as u32) & 3;
            f32::cast_from(low | (high << 4)) - 32.0
        }
        BlockFormat::F16 => half_at(w, base, 2 * l),
        BlockFormat::BF16 => f32::reinterpret(half_bits_at(w, base, 2 * l) << 16),
    }
}

/// y[r, o] = Σ_i x[r, i] · W[o, i] for `tile` rows r of x per cube (1 for decode, 4 for
/// verification: each block is then read once per four rows). Cube (o, tile index): its units
/// stride over the row's groups, then sum their partial dot products through shared memory.
#[cube(launch)]
pub fn matvec_kernel<F: Float>(
    w: &[u32],
    x: &[F],
    y: &mut [F],
    rows: usize,
    out: usize,
    inp: usize,
    #[comptime] format: BlockFormat,
    #[comptime] units: usize,
    #[comptime] tile: usize,
    #[define(F)] _float: ElemType,
) {
    let o = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    // Whole cubes leave together, so the barriers below stay uniform.
    if o >= out {
        terminate!();
    }
    let first = CUBE_POS_Z as usize * tile;
    // Rows past the last are read as the last row and never written.
    let last = rows - 1;
    let x0 = first.min(last) * inp;
    let x1 = (first + 1).min(last) * inp;
    let x2 = (first + 2).min(last) * inp;
    let x3 = (first + 3).min(last) * inp;
    let block_words = comptime!(format.block_words());
    let groups_per_block = comptime!(format.groups_per_block());
    let groups = inp / 16;
    let row_base = o * (groups / groups_per_block) * block_words;
    let mut a0 = 0.0f32;
    let mut a1 = 0.0f32;
    let mut a2 = 0.0f32;
    let mut a3 = 0.0f32;
    let mut group = UNIT_POS as usize;
    while group < groups {
        let base = row_base + (group / groups_per_block) * block_words;
        let g = group % groups_per_block;
        let (d, m) = group_scale(w, base, g, format);
        let col = group * 16;
        #[unroll]
        for l in 0..16usize {
            let v = d * group_value(w, base, g, l, format) + m;
            a0 += v * f32::cast_from(x[x0 + col + l]);
            if comptime!(tile == 4) {
                a1 += v * f32::cast_from(x[x1 + col + l]);
                a2 += v * f32::cast_from(x[x2 + col + l]);
                a3 += v * f32::cast_from(x[x3 + col + l]);
            }
        }
        group += units;
    }
    let mut sums = Shared::<[f32]>::new_slice(units * tile);
    let u = UNIT_POS as usize;
    sums[u] = a0;
    if comptime!(tile == 4) {
        sums[units + u] = a1;
        sums[2 * units + u] = a2;
        sums[3 * units + u] = a3;
    }
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if u < stride {
            sums[u] += sums[u + stride];
            if comptime!(tile == 4) {
                sums[units + u] += sums[units + u + stride];
                sums[2 * units + u] += sums[2 * units + u + stride];
                sums[3 * units + u] += sums[3 * units + u + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
    if u < tile && first + u < rows {
        y[(first + u) * out + o] = F::cast_from(sums[u * units]);
    }
}

/// Rows `ids` of W as `F`, [ids.len(), inp]: one unit per group of 16 values (embedding lookups,
/// and row tiles of W for long prompts, which Burn's matmul then multiplies).
#[cube(launch)]
pub fn dequantize_rows_kernel<F: Float>(
    w: &[u32],
    ids: &[u32],
    y: &mut [F],
    groups_total: usize,
    inp: usize,
    #[comptime] format: BlockFormat,
    #[define(F)] _float: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= groups_total {
        terminate!();
    }
    let block_words = comptime!(format.block_words());
    let groups_per_block = comptime!(format.groups_per_block());
    let groups = inp / 16;
    let r = pos / groups;
    let group = pos % groups;
    let row = ids[r] as usize;
    let base = row * (groups / groups_per_block) * block_words + (group / groups_per_block) * block_words;
    let g = group % groups_per_block;
    let (d, m) = group_scale(w, base, g, format);
    let out = r * inp + group * 16;
    for l in 0..16usize {
        y[out + l] = F::cast_from(d * group_value(w, base, g, l, format) + m);
    }
}
