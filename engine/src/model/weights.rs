//! Where weights come from. Model code asks for tensors by their GGUF names (`blk.3.attn_q.weight`);
//! each source maps those names to its own storage; matrices stay packed where the source keeps a
//! block format the kernels multiply (GGUF), everything else is dequantized to f32.

use crate::error::{Error, Result};
use crate::cpu::{kernel_mode, KernelMode, QuantMatrix};
use super::lora::LowRankPair;
use super::lora_trained::TrainedPair;
use super::{Linear, LowRank, MatrixData, Vector};
use crate::gguf::Gguf;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

/// A store of named tensors.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn origin(&self) -> &Path;

    /// The tensor as row-major f32 values and its shape, or `None` when absent.
    fn load_f32(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>>;

    /// The matrix `name` in its stored block format, when the source keeps one the kernels can
    /// multiply directly; `None` sends the caller to [`load_f32`](Self::load_f32).
    fn load_packed(&self, _name: &str) -> Result<Option<(QuantMatrix, Vec<usize>)>> {
        Ok(None)
    }

    /// A low-rank update of the matrix `name` and the file it comes from, when the source is
    /// adapted ([`super::lora`]).
    fn load_low_rank(&self, _name: &str) -> Result<Option<(LowRankPair, PathBuf)>> {
        Ok(None)
    }

    /// A low-rank update of the matrix `name` that is being trained, when the source carries
    /// one ([`super::lora_trained`]).
    fn trained_low_rank(&self, _name: &str) -> Option<std::sync::Arc<TrainedPair>> {
        None
    }
}

/// Packed matrices stay packed unless the kernel mode asks for f32 weights.
fn keep_packed() -> bool {
    kernel_mode() != KernelMode::F32
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

    fn load_packed(&self, name: &str) -> Result<Option<(QuantMatrix, Vec<usize>)>> {
        let Some(info) = self.tensor_info(name) else { return Ok(None) };
        let shape = info.shape();
        if !QuantMatrix::supports(info.dtype) || shape.len() != 2 || !keep_packed() {
            return Ok(None);
        }
        let w = QuantMatrix::new(info.dtype, self.tensor_bytes_shared(info), shape[0], shape[1])
            .map_err(|problem| Error::Gguf { path: self.path().to_path_buf(), problem: format!("tensor `{name}`: {problem}") })?;
        Ok(Some((w, shape)))
    }
}

/// Loads a vector (norm weight, bias) of `len` values for the device's activations.
pub(crate) fn load_vector(src: &dyn WeightSource, name: &str, len: usize, device: &Device) -> Result<Vector> {
    load_vector_opt(src, name, len, device)?
        .ok_or_else(|| Error::MissingTensor { path: src.origin().to_path_buf(), tensor: name.to_string() })
}

/// Like [`load_vector`], for vectors a model may or may not have (biases).
pub(crate) fn load_vector_opt(src: &dyn WeightSource, name: &str, len: usize, device: &Device) -> Result<Option<Vector>> {
    let Some((values, found)) = src.load_f32(name)? else { return Ok(None) };
    if found != [len] {
        return Err(Error::TensorShape { path: src.origin().to_path_buf(), tensor: name.to_string(), expected: vec![len], found });
    }
    Ok(Some(Vector::new(values, device)))
}

/// Loads a weight matrix of shape [out, inp] for the device's preferred kernels, ready for
/// products (on CPU devices, repacked for the Q8 kernels as part of loading).
pub(crate) fn load_matrix(src: &dyn WeightSource, name: &str, out: usize, inp: usize, device: &Device) -> Result<super::Matrix> {
    load_matrix_opt(src, name, out, inp, device)?
        .ok_or_else(|| Error::MissingTensor { path: src.origin().to_path_buf(), tensor: name.to_string() })
}

/// Loads the projection `{name}.weight` [out, inp] (with `{name}.bias` when `bias`), and its
/// low-rank update when the source is adapted.
pub(crate) fn load_linear(src: &dyn WeightSource, name: &str, out: usize, inp: usize, bias: bool, device: &Device) -> Result<Linear> {
    let weight_name = format!("{name}.weight");
    let low_rank = match src.load_low_rank(&weight_name)? {
        None => None,
        Some((pair, file)) => {
            let r = pair.rank;
            for (what, found, expected) in [("lora_A", &pair.a_shape, [r, inp]), ("lora_B", &pair.b_shape, [out, r])] {
                if found[..] != expected {
                    return Err(Error::TensorShape { path: file, tensor: format!("{}.{what}", pair.module), expected: expected.to_vec(), found: found.clone() });
                }
            }
            Some(LowRank::Fixed {
                a: super::Matrix::new(MatrixData::F32(pair.a), r, inp, device),
                b: super::Matrix::new(MatrixData::F32(pair.b_scaled), out, r, device),
            })
        }
    };
    let low_rank = match src.trained_low_rank(&weight_name) {
        None => low_rank,
        Some(pair) => {
            if pair.shape() != (out, inp) {
                return Err(Error::TensorShape { path: src.origin().to_path_buf(), tensor: weight_name, expected: vec![out, inp], found: vec![pair.shape().0, pair.shape().1] });
            }
            Some(LowRank::Trained(pair))
        }
    };
    Ok(Linear {
        weight: load_matrix(src, &weight_name, out, inp, device)?,
        bias: if bias { Some(load_vector(src, &format!("{name}.bias"), out, device)?) } else { None },
        low_rank,
    })
}

/// Loads an embedding matrix [vocab, hidden]: ready for products too when it is `multiplied` (an
/// LM head tied to it), else kept for row lookups only — repacking a matrix that is never
/// multiplied would cost its size in memory for nothing.
pub(crate) fn load_embedding(src: &dyn WeightSource, name: &str, vocab: usize, hidden: usize, device: &Device, multiplied: bool) -> Result<super::Matrix> {
    let (data, found) = load_data(src, name)?.ok_or_else(|| Error::MissingTensor { path: src.origin().to_path_buf(), tensor: name.to_string() })?;
    check_shape(src, name, &found, vocab, hidden)?;
    let m = super::Matrix::new(data, vocab, hidden, device);
    if multiplied {
        m.prepare();
    }
    Ok(m)
}

pub(crate) fn load_matrix_opt(
    src: &dyn WeightSource,
    name: &str,
    out: usize,
    inp: usize,
    device: &Device,
) -> Result<Option<super::Matrix>> {
    let Some((data, found)) = load_data(src, name)? else { return Ok(None) };
    check_shape(src, name, &found, out, inp)?;
    let m = super::Matrix::new(data, out, inp, device);
    m.prepare();
    Ok(Some(m))
}

/// A matrix as its source stores it: packed blocks where the kernels take them, else f32.
fn load_data(src: &dyn WeightSource, name: &str) -> Result<Option<(MatrixData, Vec<usize>)>> {
    Ok(match src.load_packed(name)? {
        Some((w, shape)) => Some((MatrixData::Packed(w), shape)),
        None => src.load_f32(name)?.map(|(values, shape)| (MatrixData::F32(values), shape)),
    })
}

fn check_shape(src: &dyn WeightSource, name: &str, found: &[usize], out: usize, inp: usize) -> Result<()> {
    if found != [out, inp] {
        return Err(Error::TensorShape { path: src.origin().to_path_buf(), tensor: name.to_string(), expected: vec![out, inp], found: found.to_vec() });
    }
    Ok(())
}
