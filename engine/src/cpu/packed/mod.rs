//! Quantized weight matrices repacked for small-M integer products: the 8-bit-activation kernels
//! behind [`KernelMode::Q8`](super::KernelMode::Q8).
//!
//! At load, each matrix of a GGML block format is rewritten once into column tiles ([`layout`]):
//! eight output columns side by side, so a kernel multiplies a block of eight columns with each
//! activation row in a few register-wide integer instructions and accumulates eight outputs per
//! register, with no per-column scalar work and no horizontal sums. For M activation rows (a
//! verification of k + 1 = M tokens, or a slice of a prefill) each tile block is unpacked once and
//! used by every row, so the weights are read once per forward whatever M is, and the arithmetic
//! per row is a third to a fifth of a per-row dot product's.
//!
//! Batch invariance: a row's result is a fixed sequence of exact integer sums and f32 operations
//! that depends on nothing but that row and the weights ([`reference`] defines it), whatever the
//! number of rows, the rows per pass, the thread count or the split of columns; and every
//! instruction set computes it bit for bit ([`x86`]).

pub mod layout;
pub mod reference;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use super::dense::PARALLEL_MIN_WORK;
use super::features::Isa;
use super::pool;
use super::q8::{Activations, Q8KRow, Q8Row};
pub use layout::{Format, COLS};

/// A [out, inp] matrix in column tiles.
pub struct PackedMatrix {
    format: Format,
    out: usize,
    inp: usize,
    tiles: usize,
    blocks: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?} [{}, {}], {} bytes)", self.format, self.out, self.inp, self.data.len())
    }
}

/// Tiles each thread's share of a product is cut into: one long run per chunk keeps the weights a
/// sequential stream for the hardware prefetcher; two per thread balance the load.
const CHUNKS_PER_THREAD: usize = 2;

/// Weight bytes a group of tiles may span when the rows are multiplied in several passes: the
/// group is read from memory once and stays in L1/L2 for the other passes.
const TILE_GROUP_BYTES: usize = 32 << 10;

/// How many passes over each tile `rows` activation rows take. Rows in one pass share each
/// unpacked weight block, so fewer passes mean less unpacking; but each row holds accumulators in
/// registers (16 on AVX2, 32 with AVX-512), and beyond that they spill. Measured on a Sapphire
/// Rapids core: AVX2 and 256-bit VNNI are fastest with up to 8 rows a pass; 512-bit VNNI with up
/// to 16 for a verification (n ≤ 16), and passes of 8 for longer prefills. The split never
/// changes a row's result.
fn passes(isa: Isa, rows: usize) -> usize {
    match isa {
        Isa::Portable => rows,
        Isa::Avx512Vnni if rows <= 16 => 1,
        _ => rows.div_ceil(8),
    }
}

impl PackedMatrix {
    /// Repacks a [out, inp] matrix of GGML blocks (`src`, row-major, as in a GGUF file), using the
    /// kernel thread pool. `done(range)` is told each byte range of `src` as soon as it has been
    /// repacked, so that a caller can give mapped pages back while the rest is still being read
    /// (a 150 MB output layer would otherwise be resident twice).
    pub fn new(format: Format, src: &[u8], out: usize, inp: usize, done: impl Fn(std::ops::Range<usize>) + Sync) -> Result<Self, String> {
        let ty = format.ggml();
        if inp % format.block_values() != 0 {
            return Err(format!("rows of {inp} values do not split into {} blocks of {}", ty.name(), format.block_values()));
        }
        if src.len() != out * ty.bytes_for(inp) {
            return Err(format!("{} bytes for a [{out}, {inp}] {} matrix, expected {}", src.len(), ty.name(), out * ty.bytes_for(inp)));
        }
        let (tiles, blocks) = (out.div_ceil(COLS), inp / format.block_values());
        let tile_bytes = blocks * format.tile_bytes();
        let mut data = vec![0u8; tiles * tile_bytes];
        if tile_bytes > 0 {
            // Chunks of about 1 MB of source, at least four per thread.
            let per_chunk = tiles.div_ceil(rayon::current_num_threads() * 4).min((1 << 20) / tile_bytes).max(1);
            let row_bytes = ty.bytes_for(inp);
            pool::for_each_chunk_mut(&mut data, per_chunk * tile_bytes, |c, part| {
                let tiles = c * per_chunk..c * per_chunk + part.len() / tile_bytes;
                layout::repack_tiles(format, src, out, inp, tiles.clone(), part);
                done((COLS * tiles.start).min(out) * row_bytes..(COLS * tiles.end).min(out) * row_bytes);
            });
        }
        Ok(PackedMatrix { format, out, inp, tiles, blocks, data })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// Bytes the tiles occupy.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    /// y = x·Wᵀ for x: [rows, inp], into [rows, out], on the fastest path this CPU has.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.matmul_t_on(Isa::active(), x, rows)
    }

    /// [`matmul_t`](Self::matmul_t) on a given path (bitwise the same result on every path).
    ///
    /// # Panics
    /// When the CPU does not support `isa`, or `x` is not `rows` rows of `inp` values.
    pub fn matmul_t_on(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(isa.supported(), "this CPU cannot run the {} kernels", isa.name());
        assert_eq!(x.len(), rows * self.inp, "activations are not {rows} rows of {}", self.inp);
        if self.format.super_blocks() {
            self.product::<Q8KRow>(isa, x, rows)
        } else {
            self.product::<Q8Row>(isa, x, rows)
        }
    }

    fn product<A: Activations + RowView>(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let qx: Vec<A> = x.chunks_exact(self.inp).map(A::quantize).collect();
        let mut y = vec![0f32; rows * self.out];
        if self.out == 0 || rows == 0 {
            return y;
        }
        let per_chunk = self.tiles.div_ceil(rayon::current_num_threads() * CHUNKS_PER_THREAD).max(1);
        let chunks = self.tiles.div_ceil(per_chunk);
        let out_ptr = SendPtr(y.as_mut_ptr());
        let chunk = |c: usize| {
            let first = c * per_chunk;
            let tiles = first..(first + per_chunk).min(self.tiles);
            // SAFETY: chunks cover disjoint columns; every pointer stays inside y (checked sizes).
            unsafe { self.chunk(isa, &qx, tiles, out_ptr.get()) };
        };
        if rows * self.out * self.inp < PARALLEL_MIN_WORK {
            (0..chunks).for_each(chunk);
        } else {
            pool::run(chunks, chunk);
        }
        y
    }

    /// Columns of `tiles` for every row, into `y` ([rows, out], row-major).
    ///
    /// # Safety
    /// `y` holds `qx.len() · out` values; no other thread writes these columns.
    unsafe fn chunk<A: RowView>(&self, isa: Isa, qx: &[A], tiles: std::ops::Range<usize>, y: *mut f32) {
        let tile_bytes = self.blocks * self.format.tile_bytes();
        if isa == Isa::Portable {
            for t in tiles {
                let tile = &self.data[t * tile_bytes..(t + 1) * tile_bytes];
                let n = COLS.min(self.out - COLS * t);
                for (r, xr) in qx.iter().enumerate() {
                    let v = xr.reference(self.format, tile);
                    // SAFETY: column COLS·t + n ≤ out of row r < rows.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), y.add(r * self.out + COLS * t), n) };
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let passes = passes(isa, qx.len());
            // An even number of tiles, so that 512-bit registers always find pairs.
            let group = if passes == 1 { tiles.len() } else { (TILE_GROUP_BYTES / tile_bytes.max(1)).max(2) / 2 * 2 };
            let mut start = tiles.start;
            while start < tiles.end {
                let end = (start + group).min(tiles.end);
                let last = if end == self.tiles { self.out - COLS * (end - 1) } else { COLS };
                // Balanced passes: 9 rows with passes of up to 8 run as 5 + 4, not 8 + 1.
                let mut r0 = 0;
                for p in 0..passes {
                    let r1 = r0 + (qx.len() - r0).div_ceil(passes - p);
                    // SAFETY: forwarded from the caller; tiles start..end lie inside the data.
                    unsafe { A::run(isa, self.format, self.data.as_ptr().add(start * tile_bytes), end - start, self.blocks, &qx[r0..r1], y.add(r0 * self.out), self.out, COLS * start, last) };
                    r0 = r1;
                }
                start = end;
            }
        }
    }
}

/// How the kernels see an activation row of each layout.
trait RowView: Sync {
    fn reference(&self, f: Format, tile: &[u8]) -> [f32; COLS];

    /// Runs the x86 kernel of `isa` for these rows over `tiles` tiles at `w`, writing row r's
    /// columns `col..` into `y + r·out + col`.
    ///
    /// # Safety
    /// As [`x86::run_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(isa: Isa, f: Format, w: *const u8, tiles: usize, blocks: usize, rows: &[Self], y: *mut f32, out: usize, col: usize, last: usize)
    where
        Self: Sized;
}

/// [`x86::Kernel`] `K` on `isa` for `x.len()` rows (1 ..= 8, or 16 with AVX-512), as const
/// generics need.
///
/// # Safety
/// As [`x86::run_avx2`]; `y` has a pointer per row.
#[cfg(target_arch = "x86_64")]
unsafe fn run_rows<K: x86::Kernel>(isa: Isa, w: *const u8, tiles: usize, blocks: usize, x: &[K::Row], y: &[*mut f32], last: usize) {
    /// Up to 8 rows, on every instruction set.
    unsafe fn fixed<K: x86::Kernel, const R: usize>(isa: Isa, w: *const u8, tiles: usize, blocks: usize, x: &[K::Row], y: &[*mut f32], last: usize) {
        let x: [K::Row; R] = std::array::from_fn(|i| x[i]);
        let y: [*mut f32; R] = std::array::from_fn(|i| y[i]);
        // SAFETY: forwarded from the caller, who checked the CPU's support for `isa`.
        unsafe {
            match isa {
                Isa::Avx2 => x86::run_avx2::<K, R>(w, tiles, blocks, &x, &y, last),
                Isa::AvxVnni => x86::run_avx_vnni::<K, R>(w, tiles, blocks, &x, &y, last),
                Isa::Avx512Vnni => x86::run_avx512_vnni::<K, R>(w, tiles, blocks, &x, &y, last),
                Isa::Portable => unreachable!("the portable path has no x86 kernel"),
            }
        }
    }
    /// 9 ..= 16 rows: only AVX-512 has the registers for them.
    unsafe fn wide<K: x86::Kernel, const R: usize>(isa: Isa, w: *const u8, tiles: usize, blocks: usize, x: &[K::Row], y: &[*mut f32], last: usize) {
        assert_eq!(isa, Isa::Avx512Vnni, "{R} rows in one pass need AVX-512");
        let x: [K::Row; R] = std::array::from_fn(|i| x[i]);
        let y: [*mut f32; R] = std::array::from_fn(|i| y[i]);
        // SAFETY: forwarded from the caller, who checked the CPU's support for `isa`.
        unsafe { x86::run_avx512_vnni::<K, R>(w, tiles, blocks, &x, &y, last) }
    }
    // SAFETY: forwarded.
    unsafe {
        match x.len() {
            1 => fixed::<K, 1>(isa, w, tiles, blocks, x, y, last),
            2 => fixed::<K, 2>(isa, w, tiles, blocks, x, y, last),
            3 => fixed::<K, 3>(isa, w, tiles, blocks, x, y, last),
            4 => fixed::<K, 4>(isa, w, tiles, blocks, x, y, last),
            5 => fixed::<K, 5>(isa, w, tiles, blocks, x, y, last),
            6 => fixed::<K, 6>(isa, w, tiles, blocks, x, y, last),
            7 => fixed::<K, 7>(isa, w, tiles, blocks, x, y, last),
            8 => fixed::<K, 8>(isa, w, tiles, blocks, x, y, last),
            9 => wide::<K, 9>(isa, w, tiles, blocks, x, y, last),
            10 => wide::<K, 10>(isa, w, tiles, blocks, x, y, last),
            11 => wide::<K, 11>(isa, w, tiles, blocks, x, y, last),
            12 => wide::<K, 12>(isa, w, tiles, blocks, x, y, last),
            13 => wide::<K, 13>(isa, w, tiles, blocks, x, y, last),
            14 => wide::<K, 14>(isa, w, tiles, blocks, x, y, last),
            15 => wide::<K, 15>(isa, w, tiles, blocks, x, y, last),
            16 => wide::<K, 16>(isa, w, tiles, blocks, x, y, last),
            n => unreachable!("{n} rows in one pass"),
        }
    }
}

impl RowView for Q8Row {
    fn reference(&self, f: Format, tile: &[u8]) -> [f32; COLS] {
        reference::tile32(f, tile, self)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn run(isa: Isa, f: Format, w: *const u8, tiles: usize, blocks: usize, rows: &[Self], y: *mut f32, out: usize, col: usize, last: usize) {
        for r in rows {
            assert!(r.q.len() >= blocks * 32 && r.d.len() >= blocks && r.sum.len() >= blocks && r.ds.len() >= blocks);
        }
        let x: Vec<x86::Row32> = rows.iter().map(|r| x86::Row32 { q: r.q.as_ptr(), d: r.d.as_ptr(), sum: r.sum.as_ptr(), ds: r.ds.as_ptr() }).collect();
        // SAFETY (the caller's): row r's outputs start at y + r·out + col.
        let yr: Vec<*mut f32> = (0..rows.len()).map(|r| unsafe { y.add(r * out + col) }).collect();
        // SAFETY: as the caller's; the format picks the kernel of its own layout.
        unsafe {
            match f {
                Format::Q4_0 => run_rows::<x86::Blocks32<{ x86::Q4_0 }>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q4_1 => run_rows::<x86::Blocks32<{ x86::Q4_1 }>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q5_0 => run_rows::<x86::Blocks32<{ x86::Q5_0 }>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q5_1 => run_rows::<x86::Blocks32<{ x86::Q5_1 }>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q8_0 => run_rows::<x86::Blocks32<{ x86::Q8_0 }>>(isa, w, tiles, blocks, &x, &yr, last),
                _ => unreachable!("{f:?} pairs with super-block activations"),
            }
        }
    }
}

impl RowView for Q8KRow {
    fn reference(&self, f: Format, tile: &[u8]) -> [f32; COLS] {
        reference::tile_k(f, tile, self)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn run(isa: Isa, f: Format, w: *const u8, tiles: usize, blocks: usize, rows: &[Self], y: *mut f32, out: usize, col: usize, last: usize) {
        for r in rows {
            assert!(r.q.len() >= blocks * 256 && r.d.len() >= blocks && r.sums16.len() >= blocks * 16 && r.sums32.len() >= blocks * 8);
        }
        let x: Vec<x86::RowK> =
            rows.iter().map(|r| x86::RowK { q: r.q.as_ptr(), d: r.d.as_ptr(), sums16: r.sums16.as_ptr(), sums32: r.sums32.as_ptr() }).collect();
        // SAFETY (the caller's): row r's outputs start at y + r·out + col.
        let yr: Vec<*mut f32> = (0..rows.len()).map(|r| unsafe { y.add(r * out + col) }).collect();
        // SAFETY: as the caller's; the format picks the kernel of its own layout.
        unsafe {
            match f {
                Format::Q4K => run_rows::<x86::K45<false>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q5K => run_rows::<x86::K45<true>>(isa, w, tiles, blocks, &x, &yr, last),
                Format::Q6K => run_rows::<x86::Q6K>(isa, w, tiles, blocks, &x, &yr, last),
                _ => unreachable!("{f:?} pairs with 32-value activations"),
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint columns of one output (see `product`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::layout::tests::random_blocks;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn activations(rows: usize, inp: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        // Outliers (as real hidden states have), so blocks differ in scale.
        (0..rows * inp).map(|i| rng.random_range(-2f32..2.0) * if i % 97 == 0 { 20.0 } else { 1.0 }).collect()
    }

    /// The portable path against the definition in f64 (dequantized weights times the quantized
    /// activations): equal to f32 rounding.
    #[test]
    fn the_reference_computes_the_definition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for f in Format::ALL {
            let (out, inp, rows) = (19, 3 * f.block_values(), 3);
            let src = random_blocks(f.ggml(), out * inp, &mut rng);
            let w = PackedMatrix::new(f, &src, out, inp, |_| ()).unwrap();
            let x = activations(rows, inp, &mut rng);
            let y = w.matmul_t_on(Isa::Portable, &x, rows);
            let row_bytes = f.ggml().bytes_for(inp);
            for r in 0..rows {
                let xr = &x[r * inp..(r + 1) * inp];
                for j in 0..out {
                    let row = &src[j * row_bytes..(j + 1) * row_bytes];
                    let def = if f.super_blocks() {
                        crate::cpu::q8::dot_reference(f.ggml(), row, &Q8KRow::new(xr))
                    } else {
                        crate::cpu::q8::dot_reference(f.ggml(), row, &Q8Row::new(xr))
                    };
                    let mut w32 = vec![0f32; inp];
                    crate::gguf::dequantize(f.ggml(), row, &mut w32).unwrap();
                    let magnitude: f64 = w32.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let got = y[r * out + j] as f64;
                    assert!((got - def).abs() <= 1e-5 * magnitude.max(1.0), "{f:?} row {r} column {j}: {got} vs {def}");
                }
            }
        }
    }

    /// Every path this CPU has gives the portable result bit for bit, for every format and every
    /// number of rows 1 ..= 17 (one pass, several passes, a partial last tile, several chunks).
    #[test]
    fn every_path_and_row_count_gives_the_reference_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for f in Format::ALL {
            let (out, inp) = (43, 2 * f.block_values());
            let src = random_blocks(f.ggml(), out * inp, &mut rng);
            let w = PackedMatrix::new(f, &src, out, inp, |_| ()).unwrap();
            let x = activations(17, inp, &mut rng);
            let reference = w.matmul_t_on(Isa::Portable, &x, 17);
            for isa in Isa::supported_all() {
                for rows in 1..=17 {
                    let y = w.matmul_t_on(isa, &x[..rows * inp], rows);
                    for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{f:?} on {}: {rows} rows, output {i}: {a} vs {b}", isa.name());
                    }
                }
            }
        }
    }

    /// Extreme stored values (every weight and activation at its largest magnitude, either sign)
    /// must not overflow the 16-bit partial sums of the AVX2 path.
    #[test]
    fn saturating_inputs_still_match_the_reference() {
        for f in Format::ALL {
            let (out, inp) = (8, f.block_values());
            for fill in [0x00u8, 0xFF, 0x80, 0x7F] {
                let mut src = vec![fill; out * f.ggml().bytes_for(inp)];
                // Finite scales so the integers show; everything else at the fill pattern.
                for block in src.chunks_exact_mut(f.ggml().block_bytes()) {
                    let scales: &[usize] = match f {
                        Format::Q6K => &[208],
                        Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => &[0, 2],
                        _ => &[0],
                    };
                    for &at in scales {
                        block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
                    }
                }
                let w = PackedMatrix::new(f, &src, out, inp, |_| ()).unwrap();
                for sign in [1f32, -1.0] {
                    let x = vec![sign * 3.0; inp];
                    let reference = w.matmul_t_on(Isa::Portable, &x, 1);
                    for isa in Isa::supported_all() {
                        let y = w.matmul_t_on(isa, &x, 1);
                        assert_eq!(y, reference, "{f:?} on {} with bytes {fill:#x}", isa.name());
                    }
                }
            }
        }
    }
}
