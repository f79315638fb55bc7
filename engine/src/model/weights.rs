//! Where weights come from. Model code asks for tensors by their GGUF names (`blk.3.attn_q.weight`);
//! each source maps those names to its own storage and dequantizes to f32.

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::Path;

/// A store of named tensors.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn origin(&self) -> &Path;

    /// The tensor as row-major f32 values and its shape, or `None` when absent.
    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
}

impl WeightSource for Gguf {
    fn origin(&self) -> &Path {
        self.path()
    }

    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        if self.tensor_info(name).is_none() {
            return Ok(None);
        }
        self.tensor_f32(name).map(Some)
    }
}

/// Loads `name` onto `device`, checking its shape.
pub(crate) fn load<const D: usize>(
    src: &dyn WeightSource,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    load_opt(src, name, shape, device)?.ok_or_else(|| Error::MissingTensor {
        path: src.origin().to_path_buf(),
        tensor: name.to_string(),
    })
}

/// Like [`load`], for tensors a model may or may not have (biases, untied output).
pub(crate) fn load_opt<const D: usize>(
    src: &dyn WeightSource,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Option<Tensor<D>>> {
    let Some((values, found)) = src.load_f32(name)? else { return Ok(None) };
    if found != shape {
        return Err(Error::TensorShape {
            path: src.origin().to_path_buf(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found,
        });
    }
    Ok(Some(Tensor::from_data(TensorData::new(values, shape), device)))
}

/// Loads a weight matrix of shape [out, inp] for the device's preferred kernels.
pub(crate) fn load_matrix(src: &dyn WeightSource, name: &str, out: usize, inp: usize, device: &Device) -> Result<super::Matrix> {
    load_matrix_opt(src, name, out, inp, device)?
        .ok_or_else(|| Error::MissingTensor { path: src.origin().to_path_buf(), tensor: name.to_string() })
}

pub(crate) fn load_matrix_opt(
    src: &dyn WeightSource,
    name: &str,
    out: usize,
    inp: usize,
    device: &Device,
) -> Result<Option<super::Matrix>> {
    let Some((values, found)) = src.load_f32(name)? else { return Ok(None) };
    if found != [out, inp] {
        return Err(Error::TensorShape { path: src.origin().to_path_buf(), tensor: name.to_string(), expected: vec![out, inp], found });
    }
    Ok(Some(super::Matrix::new(values, out, inp, device)))
}
