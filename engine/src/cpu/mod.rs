//! The host (CPU) compute layer: batch-invariant matrix products over weights kept in their GGUF
//! quantization, attention over a host KV cache, element-wise operations, and the fork-join pool
//! that splits them over the cores. It knows no model family; the families in
//! [`model`](crate::model) call it through their activations on CPU devices.
//!
//! Layering: this module imports only the formats below it ([`gguf`](crate::gguf)); nothing here
//! imports from `model`, `speculative` or above.

pub mod attention;
pub mod dense;
pub mod features;
pub mod matrix;
pub mod ops;
pub mod packed;
pub(crate) mod pool;
pub mod q8;

pub use attention::{causal_attention, AttentionShape};
pub use features::Isa;
pub use matrix::{kernel_mode, set_kernel_mode, with_kernel_mode, KernelMode, QuantMatrix};
