//! Batch-invariant CPU matrix products for the models' dense layers.
//!
//! y[r, j] = Σᵢ x[r, i]·W[j, i] is computed for every row r by the same dot-product routine with
//! the same accumulation order, whatever the number of rows: a token's logits are bitwise the
//! same whether it is decoded alone or inside a (k+1)-token verification. That is what makes greedy
//! speculative output exactly equal to greedy target-only output (gemm-style kernels change their
//! blocking with the row count and differ in the last bits, ~6e-5 on SmolLM2's logits).
//!
//! Rows share each weight row while it is in cache, so verifying k+1 tokens still reads the weights
//! once. Work is split over output columns (rayon), which does not change any sum.

use rayon::prelude::*;

/// Dot product with a fixed accumulation order (8 lanes, then a fixed tree), vectorised where the
/// CPU allows. The choice of routine is made once per process, never per call size.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    reduce8(acc) + tail
}

#[inline]
fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= len of both slices.
        unsafe {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc);
        }
        i += 8;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut tail = 0f32;
    for j in n..a.len() {
        tail = a[j].mul_add(b[j], tail);
    }
    reduce8(lanes) + tail
}

/// y = x·Wᵀ for x: [rows, inp] and W: [out, inp] (row-major), into y: [rows, out].
pub fn matmul_wt(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * inp);
    assert_eq!(w.len(), out * inp);
    let mut y = vec![0f32; rows * out];
    // Column-major scratch per chunk of output columns, transposed into y afterwards.
    const COLS: usize = 64;
    let cols: Vec<Vec<f32>> = w
        .par_chunks(COLS * inp)
        .map(|wc| {
            let n = wc.len() / inp;
            let mut part = vec![0f32; n * rows];
            for (j, wrow) in wc.chunks_exact(inp).enumerate() {
                for (r, xrow) in x.chunks_exact(inp).enumerate() {
                    part[j * rows + r] = dot(xrow, wrow);
                }
            }
            part
        })
        .collect();
    for (c, part) in cols.iter().enumerate() {
        let n = part.len() / rows;
        for j in 0..n {
            for r in 0..rows {
                y[r * out + c * COLS + j] = part[j * rows + r];
            }
        }
    }
    y
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
        assert_eq!(dot_portable(&x[..inp], &w[..inp]).to_bits(), dot_portable(&x[..inp], &w[..inp]).to_bits());
    }
}

/// Causal attention for `n` new queries at positions `start..start + n`, row-invariant like
/// [`matmul_wt`]: each query's scores, softmax and weighted sum use one fixed order.
///
/// `q`: [heads, n, d]; `k`, `v`: [kv_heads, len, d] with len ≥ start + n (only the first start + i + 1
/// keys are visible to query i); returns [n, heads·d]. Query head h reads KV head h / (heads / kv_heads).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    n: usize,
    len: usize,
    start: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let kv = h / group;
            let keys = &k[kv * len * d..(kv + 1) * len * d];
            let values = &v[kv * len * d..(kv + 1) * len * d];
            let mut out = vec![0f32; n * d];
            let mut scores = vec![0f32; start + n];
            for i in 0..n {
                let query = &q[(h * n + i) * d..(h * n + i + 1) * d];
                let visible = start + i + 1;
                let mut max = f32::NEG_INFINITY;
                for (t, s) in scores[..visible].iter_mut().enumerate() {
                    *s = dot(query, &keys[t * d..(t + 1) * d]) * scale;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in &mut scores[..visible] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                let o = &mut out[i * d..(i + 1) * d];
                for (t, &s) in scores[..visible].iter().enumerate() {
                    let w = s * inv;
                    for (oj, vj) in o.iter_mut().zip(&values[t * d..(t + 1) * d]) {
                        *oj = w.mul_add(*vj, *oj);
                    }
                }
            }
            out
        })
        .collect();
    let mut y = vec![0f32; n * heads * d];
    for (h, out) in per_head.iter().enumerate() {
        for i in 0..n {
            y[(i * heads + h) * d..(i * heads + h + 1) * d].copy_from_slice(&out[i * d..(i + 1) * d]);
        }
    }
    y
}
