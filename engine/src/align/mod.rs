//! Draft alignment: training a LoRA adapter on the draft so that its next-token distributions
//! move toward the target's, measured where speculative decoding pays — acceptance.
//!
//! - [`data`]: the target's continuations of training prompts and its distributions on them
//!   (or, across vocabularies, its text re-tokenized as hard labels);
//! - [`loss`]: forward KL or total variation between the target's and the draft's distributions;
//! - [`train`]: Adam on the adapter's A and B (the base weights frozen), with gradients from
//!   Burn's autodiff through the model's Burn-ops forward.
//!
//! The adapter is created and exported by [`crate::model::LoraTraining`] (PEFT's format); the
//! model to train is loaded with [`crate::load_files_trainable`] on an autodiff device.

pub mod data;
pub mod loss;
pub mod train;

pub use data::{distill_from_target, DistillConfig, Example};
pub use loss::{Loss, SparseDistribution};
pub use train::{evaluate, expected_acceptance, StepReport, TrainConfig, Trainer};
