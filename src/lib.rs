//! webqwen: Qwen3 language models (official MLX releases, dense and MoE) on WebGPU, natively
//! through wgpu and in browsers through wasm. See README.md and ARCHITECTURE.md.

pub mod config;
pub mod error;
pub mod gpu;
pub mod model;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub mod bench;
pub mod engine;
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod npy;
pub mod sample;
pub mod session;
pub mod text;
#[cfg(target_arch = "wasm32")]
pub mod web;
