//! The device compute layer for GPUs (burn-wgpu): weight matrices kept in their GGML blocks in
//! device memory and multiplied by CubeCL kernels that dequantize in registers, so that a 4-bit
//! file takes about 4 bits per weight on the device too, and a decode step reads that many bytes.
//!
//! Layering: like [`cpu`](crate::cpu), this imports only the formats below it; the model layer
//! decides which matrices live here.

pub mod layout;
#[cfg(feature = "wgpu")]
mod kernels;
#[cfg(feature = "wgpu")]
mod ops;
#[cfg(feature = "wgpu")]
mod matrix;

pub use layout::{pack_words, BlockFormat};
#[cfg(feature = "wgpu")]
pub use matrix::BlockMatrix;
