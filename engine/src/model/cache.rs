//! The KV cache and attention over it.
//!
//! Preallocated to a capacity; writes go in place and `truncate` only moves the length, so
//! rolling back rejected draft tokens is free. On CPU devices keys and values live in host memory,
//! laid out [kv_head, position, head_dim] so that each head's keys are one contiguous run for the
//! attention kernel; on other devices they are Burn tensors written with `slice_assign`.

use super::act::Act;
use super::Placement;
use crate::cpu::{causal_attention, AttentionShape};
use crate::error::{Error, Result};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::ops::Range;

/// Per-layer keys and values for one sequence.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
}

enum LayerCache {
    Host { k: Vec<f32>, v: Vec<f32> },
    Device { k: Option<Tensor<4>>, v: Option<Tensor<4>>, device: Device },
}

impl KvCache {
    /// A cache where a model loaded now on `device` keeps its activations ([`Placement::of`]).
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize, capacity: usize, device: &Device) -> Self {
        Self::placed(n_layers, kv_heads, head_dim, capacity, device, Placement::of(device))
    }

    /// A cache in host memory or of tensors of a float type on `device`: a model passes where
    /// its own activations live.
    pub(crate) fn placed(n_layers: usize, kv_heads: usize, head_dim: usize, capacity: usize, device: &Device, placement: Placement) -> Self {
        let layers = (0..n_layers)
            .map(|_| match placement {
                Placement::Host => {
                    let n = kv_heads * capacity * head_dim;
                    LayerCache::Host { k: vec![0.0; n], v: vec![0.0; n] }
                }
                Placement::Device(float) => {
                    let zeros = || Some(Tensor::zeros([1, kv_heads, capacity, head_dim], (device, float.dtype())));
                    LayerCache::Device { k: zeros(), v: zeros(), device: device.clone() }
                }
            })
            .collect();
        KvCache { layers, len: 0, capacity, kv_heads, head_dim }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layers this cache holds (a model runs that many of its blocks with it).
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forget everything after `len` (no-op when `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Fails without touching the cache when `n` more positions do not fit.
    pub fn reserve(&self, n: usize) -> Result<Range<usize>> {
        let end = self.len + n;
        if end > self.capacity {
            return Err(Error::ContextOverflow { needed: end, capacity: self.capacity });
        }
        Ok(self.len..end)
    }

    /// Marks `len` positions as filled. Models call this after writing every layer for the
    /// positions [`reserve`](Self::reserve) handed out; stateless toy models call it alone.
    pub fn commit(&mut self, len: usize) {
        assert!(len <= self.capacity, "commit past the reserved capacity");
        self.len = len;
    }

    /// Writes layer `layer`'s keys and values of the new `positions` (`k`, `v`: [n, kv_heads·head_dim],
    /// rotated already) and returns causal attention of the queries `q` ([n, heads·head_dim]) over
    /// every position up to `positions.end`: [n, heads·head_dim].
    pub fn attend(&mut self, layer: usize, q: Act, k: Act, v: Act, positions: Range<usize>, shape: &AttentionShape) -> Act {
        let (kvh, hd, cap) = (self.kv_heads, self.head_dim, self.capacity);
        assert_eq!((shape.kv_heads, shape.head_dim), (kvh, hd), "attention shape differs from the cache's");
        let n = positions.len();
        match (&mut self.layers[layer], q, k, v) {
            (LayerCache::Host { k: kc, v: vc }, Act::Host { data: q, .. }, Act::Host { data: k, .. }, Act::Host { data: v, .. }) => {
                for (i, pos) in positions.clone().enumerate() {
                    for g in 0..kvh {
                        let (src, dst) = ((i * kvh + g) * hd, (g * cap + pos) * hd);
                        kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                        vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                    }
                }
                let out = causal_attention(&q, kc, vc, shape, n, cap, positions.start);
                Act::host(out, shape.heads * hd)
            }
            (LayerCache::Device { k: kc, v: vc, device }, Act::Device(q), Act::Device(k), Act::Device(v)) => {
                let end = positions.end;
                let split = |t: Tensor<2>, h: usize| t.reshape([1, n, h, hd]).swap_dims(1, 2);
                let write = |slot: &mut Option<Tensor<4>>, new: Tensor<4>| {
                    let full = slot.take().expect("cache slot is always refilled");
                    let full = full.slice_assign([0..1, 0..kvh, positions.clone(), 0..hd], new);
                    let view = full.clone().slice([0..1, 0..kvh, 0..end, 0..hd]);
                    *slot = Some(full);
                    view
                };
                let keys = write(kc, split(k, kvh));
                let values = write(vc, split(v, kvh));
                // Grouped-query attention without copying K/V: the query heads sharing a KV head
                // are stacked along the row axis, so each KV head is one matmul.
                let group = shape.heads / kvh;
                let q = split(q, shape.heads).reshape([1, kvh, group * n, hd]);
                // Scores and their softmax in f32 whatever the cache holds: an f16 sum over a long
                // context would lose the small probabilities.
                let float = q.dtype();
                let scores = q.matmul(keys.swap_dims(2, 3)).cast(DType::F32).mul_scalar(shape.scale);
                let scores = match mask(n, positions.start, group, shape.window, device) {
                    Some(mask) => scores + mask,
                    None => scores,
                };
                let out = softmax(scores, 3).cast(float).matmul(values);
                Act::Device(out.reshape([1, shape.heads, n, hd]).swap_dims(1, 2).reshape([n, shape.heads * hd]))
            }
            _ => panic!("cache and activations live on different devices"),
        }
    }
}

/// 0 where stacked query row r (position start + r mod n) may see key j, −∞ elsewhere; `None`
/// when nothing is masked (one query, no window in reach).
fn mask(n: usize, start: usize, group: usize, window: Option<usize>, device: &Device) -> Option<Tensor<4>> {
    let end = start + n;
    let first_visible = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
    if n == 1 && first_visible(start) == 0 {
        return None;
    }
    let mut m = vec![0f32; group * n * end];
    for r in 0..group * n {
        let pos = start + r % n;
        let row = &mut m[r * end..(r + 1) * end];
        row[..first_visible(pos)].fill(f32::NEG_INFINITY);
        row[pos + 1..].fill(f32::NEG_INFINITY);
    }
    Some(Tensor::from_data(TensorData::new(m, [1, 1, group * n, end]), device))
}
