//! Causal attention over a KV cache in host memory, batch-invariant like the dense products:
//! each query's scores, softmax and weighted sum use one fixed order whatever the number of
//! queries computed together.

use super::dense::{axpy, dot, PARALLEL_MIN_WORK};
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

/// Causal attention for `n` new queries at positions `start..start + n`, row-invariant like
/// [`matmul_wt`](super::dense::matmul_wt): each query's scores, softmax and weighted sum use one fixed order.
///
/// `q`: [n, heads, d]; `k`, `v`: [kv_heads, cap, d] (a cache of capacity `cap`) holding at least
/// positions `..start + n`. Query i sees positions `start + i + 1 − window ..= start + i` (all
/// earlier ones without a window); query head h reads KV head h / (heads / kv_heads). Returns
/// [n, heads·d].
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, n: usize, cap: usize, start: usize) -> Vec<f32> {
    let (heads, d) = (shape.heads, shape.head_dim);
    let group = heads / shape.kv_heads;
    let head = |h: usize| -> Vec<f32> {
        let kv = h / group;
        let keys = &k[kv * cap * d..(kv + 1) * cap * d];
        let values = &v[kv * cap * d..(kv + 1) * cap * d];
        let mut out = vec![0f32; n * d];
        let mut scores = vec![0f32; start + n];
        for i in 0..n {
            let query = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
            let end = start + i + 1;
            let first = shape.window.map_or(0, |w| end.saturating_sub(w));
            let visible = &mut scores[first..end];
            let mut max = f32::NEG_INFINITY;
            for (t, s) in visible.iter_mut().enumerate() {
                let pos = first + t;
                *s = dot(query, &keys[pos * d..(pos + 1) * d]) * shape.scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in visible.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let o = &mut out[i * d..(i + 1) * d];
            for (t, &s) in visible.iter().enumerate() {
                let pos = first + t;
                axpy(o, s * inv, &values[pos * d..(pos + 1) * d]);
            }
        }
        out
    };
    let per_head: Vec<Vec<f32>> = if heads * n * (start + n) * d < PARALLEL_MIN_WORK {
        (0..heads).map(head).collect()
    } else {
        let mut per_head = vec![Vec::new(); heads];
        pool::for_each_chunk_mut(&mut per_head, 1, |h, slot| slot[0] = head(h));
        per_head
    };
    let mut y = vec![0f32; n * heads * d];
    for (h, out) in per_head.iter().enumerate() {
        for i in 0..n {
            y[(i * heads + h) * d..(i * heads + h + 1) * d].copy_from_slice(&out[i * d..(i + 1) * d]);
        }
    }
    y
}
