pub mod error;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod safetensors;
pub mod sampling;
pub mod source;
pub mod tokenizer;
pub use error::{Error, Result};
