pub mod error;
pub mod gguf;
pub use error::{Error, Result};
