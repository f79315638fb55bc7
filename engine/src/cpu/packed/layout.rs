//! The column-interleaved layout: GGML blocks of eight output columns (weight rows) rewritten side
//! by side, so that one 256-bit register holds four consecutive values of each of the eight
//! columns, and a kernel computes eight outputs per register lane-wise, with no horizontal sums.
//!
//! A matrix [out, inp] becomes ⌈out / 8⌉ column tiles; tile t holds columns 8t..8t+8 (missing
//! columns of the last tile are zero) as `inp / block` tile blocks of [`Format::tile_bytes`] each,
//! one after another, so each thread streams its tiles sequentially. Inside a tile block, a
//! *vector* is 32 bytes whose byte `4c + k` belongs to column c (c < 8, k < 4); *group* g of a run
//! of 32 values is values 4g..4g+4.
//!
//! | format | tile block (8 columns) | same bytes as GGML |
//! |---|---|---|
//! | Q4_0 | d[8] f16, 4 nibble vectors | 144 = 8 × 18 |
//! | Q4_1 | d[8], m[8] f16, 4 nibble vectors | 160 = 8 × 20 |
//! | Q5_0 | d[8], a fifth-bit vector, 4 nibble vectors | 176 = 8 × 22 |
//! | Q5_1 | d[8], m[8], a fifth-bit vector, 4 nibble vectors | 192 = 8 × 24 |
//! | Q8_0 | d[8], 8 byte vectors | 272 = 8 × 34 |
//! | Q4_K | d[8], dmin[8], scales[8][8] u8, mins[4][8][2] u8, 8 × 4 nibble vectors | 1184 = 8 × 148 (GGML 144: scales unpacked from 6 bits) |
//! | Q5_K | as Q4_K, then 8 fifth-bit vectors, then the nibbles | 1440 = 8 × 180 (176) |
//! | Q6_K | d[8], scales[8][8][2] i8, 8 × 4 nibble vectors, 8 × 2 high-bit vectors | 1680 = 8 × 210 |
//!
//! Nibble vectors: vector h (h < 4) of a run of 32 values holds group h in its low nibbles and
//! group h + 4 in its high nibbles. Fifth-bit vector: bit g of byte 4c + k is bit 4 of value
//! 4g + k of column c. Q6_K high-bit vectors: the first holds bits 4..6 of groups 0..4 at bits
//! 2g..2g+2, the second those of groups 4..8. Byte vectors (Q8_0): vector g is group g.

use crate::gguf::GgmlType;
use half::f16;

/// Output columns per tile: one per 32-bit lane of a 256-bit register.
pub const COLS: usize = 8;

/// The GGML formats with a packed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 8] = [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K];

    pub fn of(ty: GgmlType) -> Option<Format> {
        Some(match ty {
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q5_0 => Format::Q5_0,
            GgmlType::Q5_1 => Format::Q5_1,
            GgmlType::Q8_0 => Format::Q8_0,
            GgmlType::Q4K => Format::Q4K,
            GgmlType::Q5K => Format::Q5K,
            GgmlType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            Format::Q4_0 => GgmlType::Q4_0,
            Format::Q4_1 => GgmlType::Q4_1,
            Format::Q5_0 => GgmlType::Q5_0,
            Format::Q5_1 => GgmlType::Q5_1,
            Format::Q8_0 => GgmlType::Q8_0,
            Format::Q4K => GgmlType::Q4K,
            Format::Q5K => GgmlType::Q5K,
            Format::Q6K => GgmlType::Q6K,
        }
    }

    /// The K formats pair with activations quantized per 256 values ([`Q8KRow`](crate::cpu::q8::Q8KRow)),
    /// the others per 32 ([`Q8Row`](crate::cpu::q8::Q8Row)).
    pub fn super_blocks(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Values per block (per column).
    pub fn block_values(self) -> usize {
        if self.super_blocks() {
            256
        } else {
            32
        }
    }

    /// Bytes of one tile block: [`COLS`] columns × one block.
    pub fn tile_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 144,
            Format::Q4_1 => 160,
            Format::Q5_0 => 176,
            Format::Q5_1 => 192,
            Format::Q8_0 => 272,
            Format::Q4K => 1184,
            Format::Q5K => 1440,
            Format::Q6K => 1680,
        }
    }
}

// Byte offsets inside a tile block.
pub const D_AT: usize = 0;
/// Q4_1/Q5_1 minimums, Q4_K/Q5_K `dmin`.
pub const M_AT: usize = 16;
pub const Q4_0_QS: usize = 16;
pub const Q4_1_QS: usize = 32;
pub const Q5_0_QH: usize = 16;
pub const Q5_0_QS: usize = 48;
pub const Q5_1_QH: usize = 32;
pub const Q5_1_QS: usize = 64;
pub const Q8_0_QS: usize = 16;
/// Q4_K/Q5_K: scale of sub-block j, column c at `K_SC + 8j + c`.
pub const K_SC: usize = 32;
/// Q4_K/Q5_K: minimums of sub-blocks 2p, 2p + 1 of column c at `K_MIN + 16p + 2c`, `+ 1`.
pub const K_MIN: usize = 96;
pub const Q4K_QS: usize = 160;
pub const Q5K_QH: usize = 160;
pub const Q5K_QS: usize = 416;
/// Q6_K: scales of sub-blocks 2j, 2j + 1 (16 values each) of column c at `Q6K_SC + 16j + 2c`, `+ 1`.
pub const Q6K_SC: usize = 16;
pub const Q6K_QL: usize = 144;
pub const Q6K_QH: usize = 1168;

/// Value `i` (< 32) of column `c` from four nibble vectors.
#[inline]
pub fn nibble(qs: &[u8], c: usize, i: usize) -> u8 {
    let (g, k) = (i / 4, i % 4);
    if g < 4 {
        qs[32 * g + 4 * c + k] & 0x0F
    } else {
        qs[32 * (g - 4) + 4 * c + k] >> 4
    }
}

/// Bit 4 of value `i` of column `c` from a fifth-bit vector, as 0 or 16.
#[inline]
pub fn fifth_bit(qh: &[u8], c: usize, i: usize) -> u8 {
    ((qh[4 * c + i % 4] >> (i / 4)) & 1) << 4
}

/// Bits 4..6 of value `i` of column `c` from Q6_K's two high-bit vectors, in place (0, 16, 32, 48).
#[inline]
pub fn q6_high(qh: &[u8], c: usize, i: usize) -> u8 {
    let (g, k) = (i / 4, i % 4);
    let byte = if g < 4 { qh[4 * c + k] >> (2 * g) } else { qh[32 + 4 * c + k] >> (2 * (g - 4)) };
    (byte & 3) << 4
}

/// Value `i` of column `c` from eight byte vectors.
#[inline]
pub fn byte(qs: &[u8], c: usize, i: usize) -> u8 {
    qs[32 * (i / 4) + 4 * c + i % 4]
}

/// The f16 of column `c` in a run of eight, as f32.
#[inline]
pub fn f16_of(b: &[u8], at: usize, c: usize) -> f32 {
    f16::from_le_bytes([b[at + 2 * c], b[at + 2 * c + 1]]).to_f32()
}

/// One GGML block reduced to what the layouts store: the values as stored (unsigned, offsets not
/// applied; Q8_0's signed bytes as their bit patterns), the scales' f16 bits, and the K formats'
/// sub-block scales and minimums.
struct Decoded {
    q: [u8; 256],
    d: [u8; 2],
    m: [u8; 2],
    /// Q4_K/Q5_K: 6-bit scales of the 8 sub-blocks; Q6_K: the 16 signed scales' bytes.
    sc: [u8; 16],
    /// Q4_K/Q5_K: 6-bit minimums.
    mins: [u8; 8],
}

impl Decoded {
    const ZERO: Decoded = Decoded { q: [0; 256], d: [0; 2], m: [0; 2], sc: [0; 16], mins: [0; 8] };

    /// Decodes one block of `f` (its GGML bytes; layouts of ggml-quants.c).
    fn new(f: Format, b: &[u8]) -> Decoded {
        let mut x = Decoded::ZERO;
        x.d = [b[0], b[1]];
        let nibbles = |x: &mut Decoded, qs: &[u8]| {
            for j in 0..16 {
                x.q[j] = qs[j] & 0x0F;
                x.q[j + 16] = qs[j] >> 4;
            }
        };
        let fifth = |x: &mut Decoded, qh: u32| {
            for j in 0..32 {
                x.q[j] |= (((qh >> j) & 1) as u8) << 4;
            }
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        match f {
            Format::Q4_0 => nibbles(&mut x, &b[2..18]),
            Format::Q4_1 => {
                x.m = [b[2], b[3]];
                nibbles(&mut x, &b[4..20]);
            }
            Format::Q5_0 => {
                nibbles(&mut x, &b[6..22]);
                fifth(&mut x, u32_at(2));
            }
            Format::Q5_1 => {
                x.m = [b[2], b[3]];
                nibbles(&mut x, &b[8..24]);
                fifth(&mut x, u32_at(4));
            }
            Format::Q8_0 => x.q[..32].copy_from_slice(&b[2..34]),
            Format::Q4K | Format::Q5K => {
                x.m = [b[2], b[3]];
                let scales = &b[4..16];
                for j in 0..8 {
                    let (sc, m) = crate::gguf::scale_min_k4(j, scales);
                    (x.sc[j], x.mins[j]) = (sc as u8, m as u8);
                }
                let five = f == Format::Q5K;
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for c in 0..4 {
                    for l in 0..32 {
                        let (lo, hi) = (qs[32 * c + l] & 0x0F, qs[32 * c + l] >> 4);
                        let (h1, h2) = if five { (((qh[l] >> (2 * c)) & 1) << 4, ((qh[l] >> (2 * c + 1)) & 1) << 4) } else { (0, 0) };
                        x.q[64 * c + l] = lo | h1;
                        x.q[64 * c + 32 + l] = hi | h2;
                    }
                }
            }
            Format::Q6K => {
                x.d = [b[208], b[209]];
                x.sc.copy_from_slice(&b[192..208]);
                for half in 0..2 {
                    let (ql, qh) = (&b[64 * half..64 * half + 64], &b[128 + 32 * half..128 + 32 * half + 32]);
                    let q = &mut x.q[128 * half..128 * half + 128];
                    for l in 0..32 {
                        q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                        q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                        q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
        }
        x
    }
}

/// Writes four nibble vectors for values `run * 32 ..` of each column.
fn put_nibbles(dst: &mut [u8], cols: &[Decoded; COLS], run: usize) {
    for h in 0..4 {
        for (c, col) in cols.iter().enumerate() {
            for k in 0..4 {
                let q = &col.q[32 * run..];
                dst[32 * h + 4 * c + k] = (q[4 * h + k] & 0x0F) | ((q[4 * h + 16 + k] & 0x0F) << 4);
            }
        }
    }
}

/// Writes a fifth-bit vector for values `run * 32 ..` of each column.
fn put_fifth_bits(dst: &mut [u8], cols: &[Decoded; COLS], run: usize) {
    for (c, col) in cols.iter().enumerate() {
        for k in 0..4 {
            dst[4 * c + k] = (0..8).map(|g| ((col.q[32 * run + 4 * g + k] >> 4) & 1) << g).sum();
        }
    }
}

fn put_f16s(dst: &mut [u8], cols: &[Decoded; COLS], pick: impl Fn(&Decoded) -> [u8; 2]) {
    for (c, col) in cols.iter().enumerate() {
        dst[2 * c..2 * c + 2].copy_from_slice(&pick(col));
    }
}

/// Writes the tile block of `cols` (decoded blocks of eight columns) into `dst`.
fn encode(f: Format, cols: &[Decoded; COLS], dst: &mut [u8]) {
    put_f16s(&mut dst[D_AT..], cols, |c| c.d);
    match f {
        Format::Q4_0 => put_nibbles(&mut dst[Q4_0_QS..], cols, 0),
        Format::Q4_1 => {
            put_f16s(&mut dst[M_AT..], cols, |c| c.m);
            put_nibbles(&mut dst[Q4_1_QS..], cols, 0);
        }
        Format::Q5_0 => {
            put_fifth_bits(&mut dst[Q5_0_QH..], cols, 0);
            put_nibbles(&mut dst[Q5_0_QS..], cols, 0);
        }
        Format::Q5_1 => {
            put_f16s(&mut dst[M_AT..], cols, |c| c.m);
            put_fifth_bits(&mut dst[Q5_1_QH..], cols, 0);
            put_nibbles(&mut dst[Q5_1_QS..], cols, 0);
        }
        Format::Q8_0 => {
            for (c, col) in cols.iter().enumerate() {
                for i in 0..32 {
                    dst[Q8_0_QS + 32 * (i / 4) + 4 * c + i % 4] = col.q[i];
                }
            }
        }
        Format::Q4K | Format::Q5K => {
            put_f16s(&mut dst[M_AT..], cols, |c| c.m);
            for (c, col) in cols.iter().enumerate() {
                for j in 0..8 {
                    dst[K_SC + 8 * j + c] = col.sc[j];
                }
                for p in 0..4 {
                    dst[K_MIN + 16 * p + 2 * c] = col.mins[2 * p];
                    dst[K_MIN + 16 * p + 2 * c + 1] = col.mins[2 * p + 1];
                }
            }
            let qs = if f == Format::Q5K { Q5K_QS } else { Q4K_QS };
            for run in 0..8 {
                if f == Format::Q5K {
                    put_fifth_bits(&mut dst[Q5K_QH + 32 * run..], cols, run);
                }
                put_nibbles(&mut dst[qs + 128 * run..], cols, run);
            }
        }
        Format::Q6K => {
            for (c, col) in cols.iter().enumerate() {
                for j in 0..8 {
                    dst[Q6K_SC + 16 * j + 2 * c] = col.sc[2 * j];
                    dst[Q6K_SC + 16 * j + 2 * c + 1] = col.sc[2 * j + 1];
                }
            }
            for run in 0..8 {
                put_nibbles(&mut dst[Q6K_QL + 128 * run..], cols, run);
                let qh = &mut dst[Q6K_QH + 64 * run..Q6K_QH + 64 * run + 64];
                for (c, col) in cols.iter().enumerate() {
                    for k in 0..4 {
                        let high = |g: usize| (col.q[32 * run + 4 * g + k] >> 4) & 3;
                        qh[4 * c + k] = (0..4).map(|g| high(g) << (2 * g)).sum();
                        qh[32 + 4 * c + k] = (0..4).map(|g| high(g + 4) << (2 * g)).sum();
                    }
                }
            }
        }
    }
}

/// Rewrites column tiles `tiles` of a [out, inp] matrix of GGML blocks (`src`, row-major) into
/// `dst`, which holds exactly those tiles.
pub fn repack_tiles(f: Format, src: &[u8], out: usize, inp: usize, tiles: std::ops::Range<usize>, dst: &mut [u8]) {
    let blocks = inp / f.block_values();
    let (row_bytes, block_bytes, tile_bytes) = (f.ggml().bytes_for(inp), f.ggml().block_bytes(), f.tile_bytes());
    assert_eq!(dst.len(), tiles.len() * blocks * tile_bytes);
    let mut cols: [Decoded; COLS] = std::array::from_fn(|_| Decoded::ZERO);
    for (t, tile) in tiles.zip(dst.chunks_exact_mut(blocks * tile_bytes.max(1))) {
        for (b, block) in tile.chunks_exact_mut(tile_bytes).enumerate() {
            for (c, col) in cols.iter_mut().enumerate() {
                let j = COLS * t + c;
                *col = if j < out {
                    let at = j * row_bytes + b * block_bytes;
                    Decoded::new(f, &src[at..at + block_bytes])
                } else {
                    Decoded::ZERO
                };
            }
            encode(f, &cols, block);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random but valid GGML blocks: small f16 scales (finite values), random quant bytes.
    pub fn random_blocks(ty: GgmlType, n_values: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..ty.bytes_for(n_values)).map(|_| rng.random()).collect();
        let mut scale = |b: &mut [u8], at: usize| b[at..at + 2].copy_from_slice(&f16::from_f32(rng.random_range(-0.05f32..0.05)).to_le_bytes());
        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
            match ty {
                GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => scale(block, 0),
                GgmlType::BF16 => block.copy_from_slice(&half::bf16::from_f32(0.25).to_le_bytes()),
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => {
                    scale(block, 0);
                    scale(block, 2);
                }
                GgmlType::Q6K => scale(block, 208),
                GgmlType::F32 => unreachable!("F32 has no blocks to randomise"),
            }
        }
        bytes
    }

    /// The value of column `c`, index `i` (< inp) in the packed tiles, dequantized with the
    /// reference's formula: reads the layout back through the accessors the reference kernels use.
    fn packed_value(f: Format, tile: &[u8], c: usize, i: usize) -> f32 {
        let d = f16_of(tile, D_AT, c);
        let m = f16_of(tile, M_AT, c);
        match f {
            Format::Q4_0 => (nibble(&tile[Q4_0_QS..], c, i) as i32 - 8) as f32 * d,
            Format::Q4_1 => nibble(&tile[Q4_1_QS..], c, i) as f32 * d + m,
            Format::Q5_0 => ((nibble(&tile[Q5_0_QS..], c, i) | fifth_bit(&tile[Q5_0_QH..], c, i)) as i32 - 16) as f32 * d + 0.0,
            Format::Q5_1 => (nibble(&tile[Q5_1_QS..], c, i) | fifth_bit(&tile[Q5_1_QH..], c, i)) as f32 * d + m,
            Format::Q8_0 => byte(&tile[Q8_0_QS..], c, i) as i8 as f32 * d,
            Format::Q4K | Format::Q5K => {
                let (run, j) = (i / 32, i % 32);
                let (sc, min) = (tile[K_SC + 8 * run + c] as f32, tile[K_MIN + 16 * (run / 2) + 2 * c + run % 2] as f32);
                let mut q = if f == Format::Q5K { nibble(&tile[Q5K_QS + 128 * run..], c, j) } else { nibble(&tile[Q4K_QS + 128 * run..], c, j) };
                if f == Format::Q5K {
                    q |= fifth_bit(&tile[Q5K_QH + 32 * run..], c, j);
                }
                d * sc * q as f32 - m * min
            }
            Format::Q6K => {
                let (run, j) = (i / 32, i % 32);
                let sc = tile[Q6K_SC + 16 * run + 2 * c + j / 16] as i8 as f32;
                let q = nibble(&tile[Q6K_QL + 128 * run..], c, j) | q6_high(&tile[Q6K_QH + 64 * run..], c, j);
                d * sc * (q as i32 - 32) as f32
            }
        }
    }

    /// Every value of every format survives repacking: read back from the tiles with the
    /// reference's formula, it equals the reference dequantization bit for bit (sizes leave a
    /// partial last tile).
    #[test]
    fn repacked_tiles_hold_every_value() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for f in Format::ALL {
            let (out, inp) = (13, 2 * f.block_values());
            let src = random_blocks(f.ggml(), out * inp, &mut rng);
            let mut reference = vec![0f32; out * inp];
            crate::gguf::dequantize(f.ggml(), &src, &mut reference).unwrap();
            let (tiles, blocks) = (out.div_ceil(COLS), inp / f.block_values());
            let mut packed = vec![0xAAu8; tiles * blocks * f.tile_bytes()];
            repack_tiles(f, &src, out, inp, 0..tiles, &mut packed);
            for j in 0..tiles * COLS {
                for i in 0..inp {
                    let (t, c, b) = (j / COLS, j % COLS, i / f.block_values());
                    let tile = &packed[(t * blocks + b) * f.tile_bytes()..][..f.tile_bytes()];
                    let got = packed_value(f, tile, c, i % f.block_values());
                    if j < out {
                        let want = reference[j * inp + i];
                        assert_eq!(got.to_bits(), want.to_bits(), "{f:?}: column {j}, value {i}: {got} vs {want}");
                    } else {
                        assert_eq!(got, 0.0, "{f:?}: padding column {j} holds {got}");
                    }
                }
            }
        }
    }
}
