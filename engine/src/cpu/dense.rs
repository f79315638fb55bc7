//! Batch-invariant CPU matrix products for the models' dense layers.
//!
//! y[r, j] = Σᵢ x[r, i]·W[j, i] is computed for every row r by the same dot-product routine with
//! the same accumulation order, whatever the number of rows: a token's logits are bitwise the
//! same whether it is decoded alone or inside a (k+1)-token verification. That is what makes greedy
//! speculative output exactly equal to greedy target-only output (gemm-style kernels change their
//! blocking with the row count and differ in the last bits, ~6e-5 on SmolLM2's logits).
//!
//! Rows share each weight row while it is in cache, so verifying k+1 tokens still reads the weights
//! once. Work is split over output columns ([`pool`]), which does not change any sum.

use super::pool;

/// Multiply-adds below which a product runs on the calling thread.
pub(crate) const PARALLEL_MIN_WORK: usize = 1 << 17;

/// Chunks of output columns per thread in a parallel product.
const CHUNKS_PER_THREAD: usize = 2;

/// Output columns per chunk: a few long runs per thread, each a sequential stream of weight rows
/// the hardware prefetcher follows, with one spare per thread for balance. (Chunks of 16 columns
/// taken in turn kept SmolLM2's decode at 80 tok/s, reading the weights at 8 of 32 GB/s; this
/// split runs it at 120–150.) A multiple of `step`, the kernel's own column step.
fn column_chunk(out: usize, step: usize) -> usize {
    out.div_ceil(rayon::current_num_threads() * CHUNKS_PER_THREAD).next_multiple_of(step).max(step)
}

/// Dot product with a fixed accumulation order (two 8-lane accumulators over 16-element steps, 8-lane
/// steps into the first, a fixed reduction, then the scalar tail), vectorised where the CPU allows.
/// The routine is chosen once per process, never per call size; [`dot4`] performs exactly the same
/// operations per row, so the two are interchangeable bit for bit.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2(a, [b])[0] };
        }
    }
    dot_portable(a, b)
}

/// `[dot(x, w[0]), …, dot(x, w[N − 1])]`: each the same bits as [`dot`] (products commute, and
/// every row accumulates in the same order), with `x` read once.
#[inline]
pub fn dot_many<const N: usize>(x: &[f32], w: [&[f32]; N]) -> [f32; N] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2(x, w) };
        }
    }
    w.map(|wr| dot_portable(x, wr))
}

/// `[dot(x, w[0]), …, dot(x, w[3])]`, reading four weight rows as independent streams.
#[inline]
pub fn dot4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2(x, w) };
        }
    }
    w.map(|wr| dot_portable(x, wr))
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Same order as the vector path, with separate multiply and add (no fused multiply-add without
/// hardware support: `mul_add` would be a slow library call).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let (n16, n8) = (a.len() / 16 * 16, a.len() / 8 * 8);
    let mut acc = [[0f32; 8]; 2];
    let mut i = 0;
    while i < n16 {
        for (h, lanes) in acc.iter_mut().enumerate() {
            for l in 0..8 {
                lanes[l] += a[i + 8 * h + l] * b[i + 8 * h + l];
            }
        }
        i += 16;
    }
    while i < n8 {
        for l in 0..8 {
            acc[0][l] += a[i + l] * b[i + l];
        }
        i += 8;
    }
    let sum: [f32; 8] = std::array::from_fn(|l| acc[0][l] + acc[1][l]);
    let tail: f32 = (n8..a.len()).fold(0.0, |t, j| t + a[j] * b[j]);
    reduce8(sum) + tail
}

#[inline]
fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `x` times each of N rows, every row in the same order whatever N is.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(x: &[f32], w: [&[f32]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let len = x.len();
    let (n16, n8) = (len / 16 * 16, len / 8 * 8);
    let px = x.as_ptr();
    let pw = w.map(|r| {
        assert_eq!(r.len(), len);
        r.as_ptr()
    });
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut i = 0;
    // SAFETY (every load): i + 16 <= n16 or i + 8 <= n8, both <= len of every slice.
    while i < n16 {
        let (x0, x1) = unsafe { (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8))) };
        for r in 0..N {
            unsafe {
                acc[r][0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(pw[r].add(i)), acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(pw[r].add(i + 8)), acc[r][1]);
            }
        }
        i += 16;
    }
    while i < n8 {
        let x0 = unsafe { _mm256_loadu_ps(px.add(i)) };
        for r in 0..N {
            acc[r][0] = unsafe { _mm256_fmadd_ps(x0, _mm256_loadu_ps(pw[r].add(i)), acc[r][0]) };
        }
        i += 8;
    }
    std::array::from_fn(|r| {
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[r][0], acc[r][1])) };
        let tail: f32 = (n8..len).fold(0.0, |t, j| t + x[j] * w[r][j]);
        reduce8(lanes) + tail
    })
}

/// y += a·x, element by element (a multiply, then an add: the same rounding on every path).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 (checked at run time); the lengths are equal.
            return unsafe { axpy_avx2(y, a, x) };
        }
    }
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    use std::arch::x86_64::*;
    let n8 = y.len() / 8 * 8;
    let av = _mm256_set1_ps(a);
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= n8 <= len of both slices.
        unsafe {
            let v = _mm256_add_ps(_mm256_loadu_ps(y.as_ptr().add(i)), _mm256_mul_ps(av, _mm256_loadu_ps(x.as_ptr().add(i))));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
        }
    }
    for i in n8..y.len() {
        y[i] += a * x[i];
    }
}

/// y = x·Wᵀ for x: [rows, inp] and W: [out, inp] (row-major), into y: [rows, out].
pub fn matmul_wt(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    assert_eq!(w.len(), out * inp);
    matmul_rows(x, rows, inp, out, |first, buf| buf.copy_from_slice(&w[first * inp..first * inp + buf.len()]))
}

/// y = x·Wᵀ where `weight_rows(j, buf)` writes weight rows j, j+1, … (as many as `buf` holds, at
/// most four) into `buf`: plain f32 matrices copy them, quantized ones dequantize them. Each group
/// of four rows is produced once and reused for every activation row, so verifying k+1 tokens
/// reads the weights once.
pub fn matmul_rows<F>(x: &[f32], rows: usize, inp: usize, out: usize, weight_rows: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    assert_eq!(x.len(), rows * inp);
    let mut y = vec![0f32; rows * out];
    // Column-major scratch per chunk of output columns, transposed into y afterwards.
    let width = column_chunk(out, 4);
    let column_block = |c: usize| -> Vec<f32> {
        let (first, n) = (c * width, width.min(out - c * width));
        let mut part = vec![0f32; n * rows];
        let mut buf = vec![0f32; 4 * inp];
        for j in (0..n).step_by(4) {
            let m = 4.min(n - j);
            weight_rows(first + j, &mut buf[..m * inp]);
            // Row t of the group, without allocating (narrow products call this per 4 columns).
            let wr = |t: usize| &buf[t * inp..(t + 1) * inp];
            for (r, xrow) in x.chunks_exact(inp).enumerate() {
                if m == 4 {
                    for (t, v) in dot4(xrow, [wr(0), wr(1), wr(2), wr(3)]).into_iter().enumerate() {
                        part[(j + t) * rows + r] = v;
                    }
                } else {
                    for t in 0..m {
                        part[(j + t) * rows + r] = dot(xrow, wr(t));
                    }
                }
            }
        }
        part
    };
    // Small products are not worth waking the thread pool for; the split never changes a sum.
    let chunks = out.div_ceil(width);
    let cols: Vec<Vec<f32>> = if rows * out * inp < PARALLEL_MIN_WORK {
        (0..chunks).map(column_block).collect()
    } else {
        let mut cols = vec![Vec::new(); chunks];
        pool::for_each_chunk_mut(&mut cols, 1, |c, slot| slot[0] = column_block(c));
        cols
    };
    for (c, part) in cols.iter().enumerate() {
        let n = part.len() / rows;
        for j in 0..n {
            for r in 0..rows {
                y[r * out + c * width + j] = part[j * rows + r];
            }
        }
    }
    y
}

/// y[r, j] for x rows r < `rows` and output columns j < `out`, where `f(first, part)` fills
/// columns `first..first + part.len() / rows` (column-major: column first + c is
/// `part[c·rows..][..rows]`, one value per row; `first` is a multiple of 16). Columns go to
/// threads in chunks like [`matmul_rows`] (`work` = multiply-adds, to decide whether threads are worth waking).
pub fn by_column<F>(rows: usize, out: usize, work: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let cols = column_chunk(out, 16);
    let parallel = work >= PARALLEL_MIN_WORK;
    if rows == 1 {
        // One row: column-major is row-major, and the chunks fill y in place.
        let mut y = vec![0f32; out];
        if parallel {
            pool::for_each_chunk_mut(&mut y, cols, |c, part| f(c * cols, part));
        } else {
            y.chunks_mut(cols).enumerate().for_each(|(c, part)| f(c * cols, part));
        }
        return y;
    }
    // Each chunk fills its own column-major buffer and copies it into y: only the chunks in
    // flight exist twice, not the whole product (a 9-row verification's logits are 1.8 MB on
    // SmolLM2, the largest allocation of a step).
    let y = std::sync::Mutex::new(vec![0f32; rows * out]);
    let chunk = |c: usize| {
        let (first, n) = (c * cols, cols.min(out - c * cols));
        let mut part = vec![0f32; n * rows];
        f(first, &mut part);
        let mut y = y.lock().unwrap_or_else(|e| e.into_inner());
        for (j, col) in part.chunks_exact(rows).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                y[r * out + first + j] = v;
            }
        }
    };
    if parallel {
        pool::run(out.div_ceil(cols), chunk);
    } else {
        (0..out.div_ceil(cols)).for_each(chunk);
    }
    y.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matches_naive_and_is_row_count_invariant() {
        let (inp, out) = (67, 130); // odd sizes: remainders in the dot and in the column chunks
        let w = data(out * inp, 1);
        let x = data(5 * inp, 2);
        let y = matmul_wt(&x, &w, 5, inp, out);
        for r in 0..5 {
            for j in 0..out {
                let naive: f64 = (0..inp).map(|i| x[r * inp + i] as f64 * w[j * inp + i] as f64).sum();
                assert!((y[r * out + j] as f64 - naive).abs() < 1e-4);
            }
            // The same row alone gives bitwise the same result.
            let alone = matmul_wt(&x[r * inp..(r + 1) * inp], &w, 1, inp, out);
            assert_eq!(&y[r * out..(r + 1) * out], &alone[..]);
        }
        // dot and dot4 agree bit for bit (the kernel mixes them at chunk edges).
        let quad = [&w[..inp], &w[inp..2 * inp], &w[2 * inp..3 * inp], &w[3 * inp..4 * inp]];
        let four = dot4(&x[..inp], quad);
        for t in 0..4 {
            assert_eq!(four[t].to_bits(), dot(&x[..inp], quad[t]).to_bits());
        }
    }
}
