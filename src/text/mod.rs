//! The text layer: tokenizer, chat template, messages, and the streaming of generated text.
//! `load` builds it from a model's files, for the native session, the browser and the tests
//! alike.
//!
//! The files, each using only those listed before it (no cycles):
//! - `error.rs`: `TextError`.
//! - `segment.rs`: `Segment`, a piece of rendered prompt that is the template's (trusted) or
//!   the caller's, and the special-token matching the template and the tokenizer share.
//! - `messages.rs`: `Message`, as OpenAI-shaped JSON.
//! - `json.rs`: Python's `json.dumps` as the templates' `tojson`.
//! - `tokenizer.rs`: `Tokenizer` (encodes segments so that caller text never yields control
//!   tokens).
//! - `escape.rs`: placeholders for the caller's text while the template runs.
//! - `template.rs`: `ChatTemplate`, the bounded minijinja sandbox.
//! - `stream.rs`: `StreamDecoder`, `ThinkSplitter`, `StopMatcher`.
//! - `mod.rs`: `load`.

mod error;
mod escape;
mod json;
mod messages;
mod segment;
mod stream;
mod template;
#[cfg(test)]
mod tests;
mod tokenizer;

pub use error::TextError;
pub use messages::Message;
pub use segment::Segment;
pub use stream::{prompt_ends_in_think, StopMatcher, StreamDecoder, TextEvent, ThinkSplitter};
pub use template::{ChatTemplate, RenderOptions, MAX_RENDER_BYTES, MAX_TOJSON_INDENT, RENDER_FUEL};
pub use tokenizer::{Tokenizer, QWEN3_ID_COUNT};

use crate::error::{Error, Result};
use crate::files::{TextFiles, CHAT_TEMPLATE, TOKENIZER, TOKENIZER_CONFIG};

/// A model's tokenizer and chat template.
#[derive(Debug)]
pub struct Text {
    pub tokenizer: Tokenizer,
    /// None when the model has none (raw prompts and token ids still work).
    pub template: Option<ChatTemplate>,
}

/// The tokenizer and chat template of a model from its files: tokenizer.json and
/// tokenizer_config.json (its special tokens), and the template from chat_template.jinja, else
/// from tokenizer_config.json's `chat_template` (older releases; where that is a list of named
/// templates, the one named "default"). Errors name the file.
pub fn load(files: &dyn TextFiles) -> Result<Text> {
    let origin = files.origin();
    let tokenizer_json = files.require(TOKENIZER)?;
    let tokenizer_config = files.require(TOKENIZER_CONFIG)?;
    let tokenizer = Tokenizer::from_bytes(tokenizer_json.as_bytes(), Some(tokenizer_config.as_bytes()))
        .map_err(|e| Error::Text(format!("{origin}{TOKENIZER}: {e}")))?;
    let source = match files.read(CHAT_TEMPLATE)? {
        Some(t) => Some((t, CHAT_TEMPLATE)),
        None => match ChatTemplate::source_from_tokenizer_config(tokenizer_config.as_bytes()) {
            Ok(t) => Some((t, TOKENIZER_CONFIG)),
            Err(TextError::NoChatTemplate) => None,
            Err(e) => return Err(Error::Text(format!("{origin}{TOKENIZER_CONFIG}: {e}"))),
        },
    };
    let template = source
        .map(|(t, file)| ChatTemplate::for_tokenizer(&t, &tokenizer).map(|t| t.named(format!("{origin}{file}"))))
        .transpose()
        .map_err(|e| Error::Text(format!("{origin}chat template: {e}")))?;
    Ok(Text { tokenizer, template })
}
