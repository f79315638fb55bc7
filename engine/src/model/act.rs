//! Activations and the element-wise and normalisation operations the model families are written
//! with, each implemented once for host memory and once with Burn tensor ops.
//!
//! On the CPU backends a decode step of a small model is ~1500 tiny operations; each Burn op costs
//! 3–10 µs of dispatch and allocation there, more than the math itself. So on CPU devices the
//! activations live in plain host buffers and every operation is a host routine of
//! [`crate::cpu`]; on other devices (wgpu) they are Burn tensors and the operations are Burn ops.
//! Model code calls the operations and never asks which.

use crate::cpu::ops;
use burn::tensor::activation::{gelu, silu};
use super::Placement;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// [rows, cols] activations of one forward pass (rows are positions).
#[derive(Clone)]
pub enum Act {
    Host { data: Vec<f32>, cols: usize },
    Device(Tensor<2>),
}

/// A weight vector (norm scale, bias) on the device its activations use.
pub enum Vector {
    Host(Vec<f32>),
    Device(Tensor<1>),
}

impl Vector {
    pub fn new(values: Vec<f32>, device: &Device) -> Self {
        match Placement::of(device) {
            Placement::Host => Vector::Host(values),
            Placement::Device(float) => {
                let n = values.len();
                Vector::Device(Tensor::from_data(TensorData::new(values, [n]), (device, float.dtype())))
            }
        }
    }

    /// The entries `ids`, in that order.
    pub fn select(&self, ids: &[u32]) -> Vector {
        match self {
            Vector::Host(v) => Vector::Host(ids.iter().map(|&i| v[i as usize]).collect()),
            Vector::Device(t) => Vector::Device(t.clone().select(0, super::index_tensor(ids, &t.device()))),
        }
    }

    fn device(&self) -> &Tensor<1> {
        match self {
            Vector::Device(t) => t,
            Vector::Host(_) => panic!("a host vector used with device activations"),
        }
    }

    fn host(&self) -> &[f32] {
        match self {
            Vector::Host(v) => v,
            Vector::Device(_) => panic!("a device vector used with host activations"),
        }
    }
}

impl Act {
    /// Host activations from row-major values.
    pub fn host(data: Vec<f32>, cols: usize) -> Self {
        debug_assert_eq!(data.len() % cols.max(1), 0);
        Act::Host { data, cols }
    }

    pub fn rows(&self) -> usize {
        match self {
            Act::Host { data, cols } => data.len() / cols,
            Act::Device(t) => t.dims()[0],
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Act::Host { cols, .. } => *cols,
            Act::Device(t) => t.dims()[1],
        }
    }

    /// The row-major values in host memory (a copy from the device when needed).
    pub fn into_host(self) -> Vec<f32> {
        match self {
            Act::Host { data, .. } => data,
            Act::Device(t) => t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 activations"),
        }
    }

    /// Applies `host` to the values of host activations, `device` to a tensor.
    fn map(self, host: impl Fn(&mut [f32], usize), device: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Act {
        match self {
            Act::Host { mut data, cols } => {
                host(&mut data, cols);
                Act::Host { data, cols }
            }
            Act::Device(t) => Act::Device(device(t)),
        }
    }

    /// Element-wise `self ∘ other` with `host` for each pair on host activations.
    fn zip(self, other: &Act, host: impl Fn(f32, f32) -> f32, device: impl FnOnce(Tensor<2>, Tensor<2>) -> Tensor<2>) -> Act {
        match (self, other) {
            (Act::Host { mut data, cols }, Act::Host { data: b, cols: cb }) => {
                assert_eq!((data.len(), cols), (b.len(), *cb), "element-wise operands differ in shape");
                data.iter_mut().zip(b).for_each(|(a, &b)| *a = host(*a, b));
                Act::Host { data, cols }
            }
            (Act::Device(a), Act::Device(b)) => Act::Device(device(a, b.clone())),
            _ => panic!("host and device activations mixed"),
        }
    }

    pub fn add(self, other: &Act) -> Act {
        self.zip(other, |a, b| a + b, |a, b| a + b)
    }

    pub fn mul(self, other: &Act) -> Act {
        self.zip(other, |a, b| a * b, |a, b| a * b)
    }

    pub fn scale(self, s: f32) -> Act {
        self.map(|v, _| v.iter_mut().for_each(|x| *x *= s), |t| t.mul_scalar(s))
    }

    /// x·σ(x) (SwiGLU's gate).
    pub fn silu(self) -> Act {
        self.map(|v, _| ops::silu(v), silu)
    }

    /// The exact (erf) GELU.
    pub fn gelu(self) -> Act {
        self.map(|v, _| ops::gelu(v), gelu)
    }

    /// The tanh approximation of GELU (`gelu_pytorch_tanh`).
    pub fn gelu_tanh(self) -> Act {
        const C: f32 = ops::GELU_TANH_C;
        self.map(
            |v, _| ops::gelu_tanh(v),
            |t| {
                let inner = (t.clone() + t.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(C).tanh();
                t.mul_scalar(0.5) * inner.add_scalar(1.0)
            },
        )
    }

    /// RMSNorm of each row: x / sqrt(mean(x²) + eps) · w.
    pub fn rms_norm(self, w: &Vector, eps: f64) -> Act {
        self.rms_norm_groups(w, eps, 1)
    }

    /// RMSNorm of each of the `groups` equal slices of every row (per-head norms), all with `w`.
    pub fn rms_norm_groups(self, w: &Vector, eps: f64, groups: usize) -> Act {
        match self {
            Act::Host { mut data, cols } => {
                let w = w.host();
                assert_eq!(w.len() * groups, cols, "norm weight of {} for {groups} groups of a {cols}-wide row", w.len());
                ops::rms_norm(&mut data, w, eps);
                Act::Host { data, cols }
            }
            Act::Device(t) => {
                let [rows, cols] = t.dims();
                let width = cols / groups;
                let float = t.dtype();
                // In f32: squares of f16 activations overflow past 256.
                let x = t.cast(DType::F32).reshape([rows, groups, width]);
                let scale = (x.clone() * x.clone()).mean_dim(2).add_scalar(eps).sqrt().recip();
                let w = w.device().clone().cast(DType::F32).reshape([1, 1, width]);
                Act::Device((x * scale * w).reshape([rows, cols]).cast(float))
            }
        }
    }

    /// LayerNorm of each row: (x − mean) / sqrt(var + eps) · w + b.
    pub fn layer_norm(self, w: &Vector, b: &Vector, eps: f64) -> Act {
        match self {
            Act::Host { mut data, cols } => {
                assert_eq!(w.host().len(), cols, "layer norm weight of {} for {cols} columns", w.host().len());
                ops::layer_norm(&mut data, w.host(), b.host(), eps);
                Act::Host { data, cols }
            }
            Act::Device(t) => {
                let cols = t.dims()[1];
                let float = t.dtype();
                // In f32, like RMSNorm: the variance of f16 activations overflows.
                let t = t.cast(DType::F32);
                let mean = t.clone().mean_dim(1);
                let centered = t - mean;
                let var = (centered.clone() * centered.clone()).mean_dim(1);
                let normed = centered * var.add_scalar(eps).sqrt().recip();
                let (w, b) = (w.device().clone().cast(DType::F32), b.device().clone().cast(DType::F32));
                Act::Device((normed * w.reshape([1, cols]) + b.reshape([1, cols])).cast(float))
            }
        }
    }

    /// Adds a bias to every row.
    pub fn add_bias(self, b: &Vector) -> Act {
        match self {
            Act::Host { mut data, cols } => {
                assert_eq!(b.host().len(), cols, "bias of {} for {cols} columns", b.host().len());
                ops::add_bias(&mut data, b.host());
                Act::Host { data, cols }
            }
            Act::Device(t) => {
                let cols = t.dims()[1];
                Act::Device(t + b.device().clone().reshape([1, cols]))
            }
        }
    }

    /// Columns `range` of every row.
    pub fn columns(&self, range: std::ops::Range<usize>) -> Act {
        match self {
            Act::Host { data, cols } => {
                let values = data.chunks_exact(*cols).flat_map(|row| &row[range.clone()]).copied().collect();
                Act::Host { data: values, cols: range.len() }
            }
            Act::Device(t) => {
                let rows = t.dims()[0];
                Act::Device(t.clone().slice([0..rows, range]))
            }
        }
    }

    /// The last row only.
    pub fn last_row(self) -> Act {
        let rows = self.rows();
        match self {
            Act::Host { mut data, cols } => {
                data.drain(..(rows - 1) * cols);
                Act::Host { data, cols }
            }
            Act::Device(t) => {
                let cols = t.dims()[1];
                Act::Device(t.slice([rows - 1..rows, 0..cols]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each operation gives the same values on host activations and on Burn tensors.
    #[test]
    fn host_and_device_operations_agree() {
        let flex = Device::flex();
        let (rows, cols) = (3, 8);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let other: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let w: Vec<f32> = (0..cols).map(|i| 0.5 + i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 * -0.05).collect();
        let device = |v: &[f32]| Act::Device(Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), &flex));
        let host = |v: &[f32]| Act::host(v.to_vec(), cols);
        let (wh, wd) = (Vector::Host(w.clone()), Vector::Device(Tensor::from_data(TensorData::new(w.clone(), [cols]), &flex)));
        let (bh, bd) = (Vector::Host(b.clone()), Vector::Device(Tensor::from_data(TensorData::new(b.clone(), [cols]), &flex)));
        let half: Vec<f32> = w[..cols / 2].to_vec();
        let (hh, hd) = (Vector::Host(half.clone()), Vector::Device(Tensor::from_data(TensorData::new(half, [cols / 2]), &flex)));
        type Op<'a> = Box<dyn Fn(Act, &Act, &Vector, &Vector, &Vector) -> Act + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            ("add", Box::new(|a, o, _, _, _| a.add(o))),
            ("mul", Box::new(|a, o, _, _, _| a.mul(o))),
            ("scale", Box::new(|a, _, _, _, _| a.scale(1.7))),
            ("silu", Box::new(|a, _, _, _, _| a.silu())),
            ("gelu", Box::new(|a, _, _, _, _| a.gelu())),
            ("gelu_tanh", Box::new(|a, _, _, _, _| a.gelu_tanh())),
            ("rms_norm", Box::new(|a, _, w, _, _| a.rms_norm(w, 1e-5))),
            ("rms_norm_groups", Box::new(|a, _, _, _, h| a.rms_norm_groups(h, 1e-6, 2))),
            ("layer_norm", Box::new(|a, _, w, b, _| a.layer_norm(w, b, 1e-5))),
            ("add_bias", Box::new(|a, _, _, b, _| a.add_bias(b))),
            ("columns", Box::new(|a, _, _, _, _| a.columns(2..7))),
            ("last_row", Box::new(|a, _, _, _, _| a.last_row())),
        ];
        for (name, op) in ops {
            let h = op(host(&values), &host(&other), &wh, &bh, &hh);
            let d = op(device(&values), &device(&other), &wd, &bd, &hd);
            assert_eq!((h.rows(), h.cols()), (d.rows(), d.cols()), "{name}: shapes differ");
            for (a, b) in h.into_host().iter().zip(d.into_host()) {
                assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "{name}: host {a} vs Burn {b}");
            }
        }
    }
}
