//! Rotary position embeddings, precomputed for every position of the context.

use super::act::Act;
use super::{ModelConfig, RopeStyle};
use burn::tensor::{Device, Tensor, TensorData};
use std::ops::Range;

/// cos/sin tables for positions `0..max_positions` and the first `dims` dimensions of each head.
pub struct Rope {
    inv_freq: Vec<f64>,
    /// (cos, sin) as [position, dims / 2], row-major, for the positions used so far: filled on
    /// demand, so a 32k-token context costs memory only when it is used.
    host: std::sync::RwLock<(Vec<f32>, Vec<f32>)>,
    /// The same tables as tensors, for devices whose activations are tensors.
    tensors: Option<(Tensor<2>, Tensor<2>)>,
    dims: usize,
    head_dim: usize,
    style: RopeStyle,
}

impl Rope {
    /// Tables for `cfg` (its rotated dimensions, style and head size) with base `theta`.
    pub fn new(cfg: &ModelConfig, theta: f64, max_positions: usize, device: &Device) -> Self {
        let half = cfg.rope_dims / 2;
        let inv_freq: Vec<f64> = (0..half).map(|i| theta.powf(-((2 * i) as f64) / cfg.rope_dims as f64)).collect();
        let tensors = super::Placement::of(device).device_float().map(|float| {
            let (cos, sin) = tables(&inv_freq, 0..max_positions);
            let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [max_positions, half]), (device, float.dtype()));
            (table(cos), table(sin))
        });
        let host = std::sync::RwLock::new((Vec::new(), Vec::new()));
        Rope { inv_freq, host, tensors, dims: cfg.rope_dims, head_dim: cfg.head_dim, style: cfg.rope_style }
    }

    /// Runs `f` with host tables covering positions `..end`.
    fn with_tables<T>(&self, end: usize, f: impl FnOnce(&[f32], &[f32]) -> T) -> T {
        let half = self.inv_freq.len();
        {
            let t = self.host.read().unwrap_or_else(|e| e.into_inner());
            if t.0.len() >= end * half {
                return f(&t.0, &t.1);
            }
        }
        let mut t = self.host.write().unwrap_or_else(|e| e.into_inner());
        let have = t.0.len() / half;
        if have < end {
            // Grow geometrically so a long generation extends the tables a few times only.
            let (cos, sin) = tables(&self.inv_freq, have..end.max(2 * have).max(64));
            t.0.extend(cos);
            t.1.extend(sin);
        }
        f(&t.0, &t.1)
    }

    /// Rotates every head of `x` ([n, heads·head_dim]) whose rows sit at `positions`.
    pub fn apply(&self, x: Act, positions: Range<usize>) -> Act {
        let (half, hd) = (self.dims / 2, self.head_dim);
        match x {
            Act::Host { mut data, cols } => {
                self.with_tables(positions.end, |cos, sin| {
                    for (row, pos) in data.chunks_exact_mut(cols).zip(positions) {
                        let (cos, sin) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
                        for head in row.chunks_exact_mut(hd) {
                            for j in 0..half {
                                let (a, b) = match self.style {
                                    RopeStyle::Neox => (j, j + half),
                                    RopeStyle::Normal => (2 * j, 2 * j + 1),
                                };
                                let (x1, x2) = (head[a], head[b]);
                                head[a] = x1 * cos[j] - x2 * sin[j];
                                head[b] = x2 * cos[j] + x1 * sin[j];
                            }
                        }
                    }
                });
                Act::Host { data, cols }
            }
            Act::Device(t) => {
                let (cos, sin) = self.tensors.as_ref().expect("device tables exist for device activations");
                let [n, cols] = t.dims();
                let heads = cols / hd;
                let cos = cos.clone().slice([positions.clone(), 0..half]);
                let sin = sin.clone().slice([positions, 0..half]);
                let x = t.reshape([n, heads, hd]);
                let (rot, pass) = if self.dims < hd {
                    (x.clone().slice([0..n, 0..heads, 0..self.dims]), Some(x.slice([0..n, 0..heads, self.dims..hd])))
                } else {
                    (x, None)
                };
                let rotated = match self.style {
                    RopeStyle::Neox => {
                        let (cos, sin) = (cos.reshape([n, 1, half]), sin.reshape([n, 1, half]));
                        let x1 = rot.clone().slice([0..n, 0..heads, 0..half]);
                        let x2 = rot.slice([0..n, 0..heads, half..2 * half]);
                        Tensor::cat(vec![x1.clone() * cos.clone() - x2.clone() * sin.clone(), x2 * cos + x1 * sin], 2)
                    }
                    RopeStyle::Normal => {
                        let pairs: Tensor<4> = rot.reshape([n, heads, half, 2]);
                        let (cos, sin) = (cos.reshape([n, 1, half, 1]), sin.reshape([n, 1, half, 1]));
                        let x1 = pairs.clone().slice([0..n, 0..heads, 0..half, 0..1]);
                        let x2 = pairs.slice([0..n, 0..heads, 0..half, 1..2]);
                        let out = Tensor::cat(vec![x1.clone() * cos.clone() - x2.clone() * sin.clone(), x2 * cos + x1 * sin], 3);
                        out.reshape([n, heads, 2 * half])
                    }
                };
                let full = match pass {
                    Some(pass) => Tensor::cat(vec![rotated, pass], 2),
                    None => rotated,
                };
                Act::Device(full.reshape([n, cols]))
            }
        }
    }
}

/// cos and sin of position × frequency for `positions`, computed in f64.
fn tables(inv_freq: &[f64], positions: Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let angles = positions.flat_map(|pos| inv_freq.iter().map(move |f| pos as f64 * f));
    angles.map(|a| (a.cos() as f32, a.sin() as f32)).unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_device_rotations_agree_for_both_styles_and_partial_rotary() {
        let flex = Device::flex();
        for (style, dims) in [(RopeStyle::Neox, 8), (RopeStyle::Normal, 8), (RopeStyle::Neox, 4)] {
            let cfg = ModelConfig {
                architecture: "test".into(),
                name: "test".into(),
                vocab_size: 10,
                hidden_size: 16,
                intermediate_size: 32,
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 2,
                head_dim: 8,
                rope_dims: dims,
                rope_theta: 10_000.0,
                rope_style: style,
                norm_eps: 1e-6,
                context_length: 16,
                qkv_bias: false,
                tied_embeddings: true,
            };
            let host = Rope::new(&cfg, 10_000.0, 16, &flex);
            let device = crate::model::with_burn_ops(|| Rope::new(&cfg, 10_000.0, 16, &flex));
            let x: Vec<f32> = (0..3 * 16).map(|i| (i as f32 * 0.7).sin()).collect();
            let a = host.apply(Act::host(x.clone(), 16), 5..8).into_host();
            let b = device.apply(Act::Device(Tensor::from_data(TensorData::new(x.clone(), [3, 16]), &flex)), 5..8).into_host();
            assert_eq!(a, b, "{style:?} with {dims} rotated dims");
            assert_ne!(a, x, "rotation at positions 5..8 changes the values");
            if dims < 8 {
                // The unrotated tail of each head is untouched.
                for r in 0..3 {
                    for h in 0..2 {
                        let at = r * 16 + h * 8;
                        assert_eq!(&a[at + dims..at + 8], &x[at + dims..at + 8]);
                    }
                }
            }
        }
    }
}
