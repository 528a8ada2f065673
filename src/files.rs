//! The files of a model (the MLX layout): their names, which of the small ones a model must
//! have, and how their text is read. One list for everyone who fetches or opens a model: the
//! hub client (`hub`), `Session::load_dir`, and the browser worker (`modelFiles()` in `web`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The shard index of a model whose weights are split (`weights::ShardIndex`).
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The weights of a model without a shard index.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";

/// The text files every model has: the architecture, the tokenizer, and the tokenizer's
/// settings (its special tokens and, in older releases, the chat template).
pub const REQUIRED: [&str; 3] = [CONFIG, TOKENIZER, TOKENIZER_CONFIG];
/// The text files a model may have: sampling defaults, the chat template (newer releases) and
/// the shard index.
pub const OPTIONAL: [&str; 3] = [GENERATION_CONFIG, CHAT_TEMPLATE, WEIGHTS_INDEX];

/// The largest text file read (Qwen3's tokenizer.json is 11 MB).
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// Where a model's text files come from: a directory natively, the worker's downloads in the
/// browser.
pub trait TextFiles {
    /// The text of `name`, or None when the model has no such file.
    fn read(&self, name: &str) -> Result<Option<String>>;

    /// Prefixed to file names in errors: the directory natively, nothing in the browser.
    fn origin(&self) -> String;

    /// The text of a file the model must have; its absence is an error that says so.
    fn require(&self, name: &str) -> Result<String>;
}

/// Text files already in memory, by name.
#[derive(Clone, Debug, Default)]
pub struct InMemory(pub BTreeMap<String, String>);

impl InMemory {
    pub fn insert(&mut self, name: impl Into<String>, text: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), text.into());
        self
    }
}

impl TextFiles for InMemory {
    fn read(&self, name: &str) -> Result<Option<String>> {
        Ok(self.0.get(name).cloned())
    }

    fn origin(&self) -> String {
        String::new()
    }

    fn require(&self, name: &str) -> Result<String> {
        self.0.get(name).cloned().ok_or_else(|| Error::Config(format!("the model has no {name}")))
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::Dir;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A model directory.
    #[derive(Clone, Debug)]
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(dir: impl AsRef<Path>) -> Dir {
            Dir(dir.as_ref().to_path_buf())
        }
    }

    impl TextFiles for Dir {
        /// Regular files only (a FIFO would block), of at most `MAX_TEXT_FILE` bytes.
        fn read(&self, name: &str) -> Result<Option<String>> {
            let p = self.0.join(name);
            let io = |e| Error::Io { path: p.display().to_string(), source: e };
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            if !meta.is_file() || meta.len() > MAX_TEXT_FILE {
                return Err(Error::Config(format!(
                    "{}: not a regular file of at most {} MiB",
                    p.display(),
                    MAX_TEXT_FILE >> 20
                )));
            }
            std::fs::read_to_string(&p).map(Some).map_err(io)
        }

        fn origin(&self) -> String {
            format!("{}/", self.0.display())
        }

        fn require(&self, name: &str) -> Result<String> {
            self.read(name)?.ok_or_else(|| Error::Config(format!("{}: no {name} in this directory", self.0.display())))
        }
    }
}
