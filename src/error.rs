//! One error type for the library: every message names what the user can fix
//! (the file, the tensor, the limit), because the CLI and the browser show it as is.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{file}: {message}")]
    Weights { file: String, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// No GPU adapter: no Vulkan/Metal/DX12 driver natively, no WebGPU adapter in a browser.
    #[error("GPU: {0}")]
    NoAdapter(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("{0}")]
    Limit(String),
    /// The prompt (and the tokens asked for) do not fit the context.
    #[error("{0}")]
    Context(String),
    #[error("{0}")]
    Text(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn weights(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Weights { file: file.into(), message: message.into() }
    }
}
