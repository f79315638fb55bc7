//! Causal attention over a KV cache in host memory, batch-invariant like the dense products:
//! each query's scores, softmax and weighted sum use one fixed order whatever the number of
//! queries computed together.

use super::dense::{axpy, dot_many, PARALLEL_MIN_WORK};
use super::pool;

/// The shape of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
    /// Sliding window: each query sees only the last `window` positions (itself included).
    pub window: Option<usize>,
}

/// Queries that share one pass over a KV head's keys and values (4 per multi-dot).
const QUERIES_PER_PASS: usize = 8;

/// Causal attention for `n` new queries at positions `start..start + n`, row-invariant like
/// [`matmul_wt`](super::dense::matmul_wt): each query's scores, softmax and weighted sum use one
/// fixed order whatever else is computed with it.
///
/// `q`: [n, heads, d]; `k`, `v`: [kv_heads, cap, d] (a cache of capacity `cap`) holding at least
/// positions `..start + n`. Query i sees positions `start + i + 1 − window ..= start + i` (all
/// earlier ones without a window); query head h reads KV head h / (heads / kv_heads). Returns
/// [n, heads·d].
///
/// The queries of one KV head — its query heads at every new position — are taken a few at a
/// time, and each key and value row is read once for all of them: a verification of k + 1 tokens
/// with grouped-query attention reads the cache once per KV head, not once per (query head,
/// position).
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, n: usize, cap: usize, start: usize) -> Vec<f32> {
    let (heads, d) = (shape.heads, shape.head_dim);
    let group = heads / shape.kv_heads;
    // Work items: (KV head, a run of its queries); query j of KV head g is query head
    // g·group + j / n at position j % n.
    let per_head = group * n;
    let runs = per_head.div_ceil(QUERIES_PER_PASS);
    // Work item `index`: its KV head and its (query head, position index) pairs.
    let queries_of = |index: usize| -> (usize, Vec<(usize, usize)>) {
        let (kv, run) = (index / runs, index % runs);
        (kv, (run * QUERIES_PER_PASS..((run + 1) * QUERIES_PER_PASS).min(per_head)).map(|j| (kv * group + j / n, j % n)).collect())
    };
    let item = |index: usize| -> Vec<f32> {
        let (kv, queries) = queries_of(index);
        attend_group(q, k, v, shape, cap, start, kv, &queries)
    };
    let items = shape.kv_heads * runs;
    let outputs: Vec<Vec<f32>> = if heads * n * (start + n) * d < PARALLEL_MIN_WORK {
        (0..items).map(item).collect()
    } else {
        let mut outputs = vec![Vec::new(); items];
        pool::for_each_chunk_mut(&mut outputs, 1, |i, slot| slot[0] = item(i));
        outputs
    };
    let mut y = vec![0f32; n * heads * d];
    for (index, out) in outputs.iter().enumerate() {
        for (slot, (h, i)) in queries_of(index).1.into_iter().enumerate() {
            y[(i * heads + h) * d..(i * heads + h + 1) * d].copy_from_slice(&out[slot * d..(slot + 1) * d]);
        }
    }
    y
}

/// Attention outputs ([queries.len(), d]) of the `(query head, position index)` pairs, all reading
/// KV head `kv`.
#[allow(clippy::too_many_arguments)]
fn attend_group(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, cap: usize, start: usize, kv: usize, queries: &[(usize, usize)]) -> Vec<f32> {
    let (heads, d) = (shape.heads, shape.head_dim);
    let keys = &k[kv * cap * d..(kv + 1) * cap * d];
    let values = &v[kv * cap * d..(kv + 1) * cap * d];
    let vector = |&(h, i): &(usize, usize)| &q[(i * heads + h) * d..(i * heads + h + 1) * d];
    // Query i sees first..end.
    let range = |&(_, i): &(usize, usize)| {
        let end = start + i + 1;
        (shape.window.map_or(0, |w| end.saturating_sub(w)), end)
    };
    let ranges: Vec<(usize, usize)> = queries.iter().map(range).collect();
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    // Scores: row per query over lo..hi (positions a query cannot see are computed and ignored).
    let width = hi - lo;
    let mut scores = vec![0f32; queries.len() * width];
    for pos in lo..hi {
        let key = &keys[pos * d..(pos + 1) * d];
        let mut store = |j: usize, s: f32| scores[j * width + pos - lo] = s * shape.scale;
        for (c, chunk) in queries.chunks(4).enumerate() {
            if let [a, b, e, f] = chunk {
                let dots = dot_many(key, [vector(a), vector(b), vector(e), vector(f)]);
                dots.into_iter().enumerate().for_each(|(j, s)| store(4 * c + j, s));
            } else {
                for (j, qv) in chunk.iter().enumerate() {
                    store(4 * c + j, dot_many(key, [vector(qv)])[0]);
                }
            }
        }
    }
    // Softmax per query over its own positions, in position order.
    for (row, &(first, end)) in scores.chunks_exact_mut(width.max(1)).zip(&ranges) {
        let visible = &mut row[first - lo..end - lo];
        let max = visible.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in visible.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        visible.iter_mut().for_each(|s| *s *= inv);
    }
    // Weighted sums: each value row read once, added to every query that sees it, in order.
    let mut out = vec![0f32; queries.len() * d];
    for pos in lo..hi {
        let value = &values[pos * d..(pos + 1) * d];
        for (j, &(first, end)) in ranges.iter().enumerate() {
            if (first..end).contains(&pos) {
                axpy(&mut out[j * d..(j + 1) * d], scores[j * width + pos - lo], value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dense::{axpy, dot};

    /// One query at a time, one head at a time: the definition.
    fn per_query(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, n: usize, cap: usize, start: usize) -> Vec<f32> {
        let (heads, d) = (shape.heads, shape.head_dim);
        let group = heads / shape.kv_heads;
        let mut y = vec![0f32; n * heads * d];
        for h in 0..heads {
            let kv = h / group;
            for i in 0..n {
                let query = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                let end = start + i + 1;
                let first = shape.window.map_or(0, |w| end.saturating_sub(w));
                let scores: Vec<f32> = (first..end).map(|p| dot(query, &k[(kv * cap + p) * d..(kv * cap + p + 1) * d]) * shape.scale).collect();
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let inv = 1.0 / e.iter().sum::<f32>();
                let o = &mut y[(i * heads + h) * d..(i * heads + h + 1) * d];
                for (t, w) in e.iter().enumerate() {
                    let p = first + t;
                    axpy(o, w * inv, &v[(kv * cap + p) * d..(kv * cap + p + 1) * d]);
                }
            }
        }
        y
    }

    /// The grouped passes give the definition's bits for every query, with grouped-query heads,
    /// sliding windows, and any number of queries (so a row is the same alone or in a batch).
    #[test]
    fn grouped_passes_equal_one_query_at_a_time() {
        let data = |len: usize, seed: u32| -> Vec<f32> { (0..len).map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5).collect() };
        for (heads, kv_heads, d, window) in [(4, 1, 16, None), (6, 2, 8, None), (3, 3, 12, Some(5)), (12, 2, 64, Some(40))] {
            let shape = AttentionShape { heads, kv_heads, head_dim: d, scale: 0.3, window };
            let cap = 80;
            let (k, v) = (data(kv_heads * cap * d, 1), data(kv_heads * cap * d, 2));
            for (n, start) in [(1, 0), (1, 37), (3, 10), (5, 60), (17, 50)] {
                let q = data(n * heads * d, 3 + n as u32);
                let want = per_query(&q, &k, &v, &shape, n, cap, start);
                let got = causal_attention(&q, &k, &v, &shape, n, cap, start);
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{heads}/{kv_heads} heads, d {d}, {window:?}, n {n}, start {start}");
            }
        }
    }
}
