//! The text layer's errors (tokenizer, chat template, config files, messages). Where they reach
//! the rest of the crate they become `crate::Error::Text`, prefixed with the file they concern.

/// Errors of the text layer.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid tokenizer_config.json: {0}")]
    Config(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("no chat template: neither chat_template.jinja nor a `chat_template` key in tokenizer_config.json")]
    NoChatTemplate,
    #[error("invalid message: {0}")]
    Message(String),
}
