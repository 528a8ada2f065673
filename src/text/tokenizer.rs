//! The Qwen3 tokenizer (byte-level BPE from `tokenizer.json`).
//!
//! - `encode_trusted` turns special-token strings (`<|im_start|>`, ...) into
//!   control tokens; it is for template text and developer `--raw` prompts.
//! - `encode_untrusted` keeps them as plain text (the tokenizers crate's
//!   `encode_special_tokens` mode); it is for anything a user or an API caller
//!   wrote.
//! - `encode_chat` encodes rendered chat segments (see `template.rs`) and is
//!   byte-for-byte the Hugging Face `apply_chat_template(tokenize=True)` result
//!   whenever caller text holds no special-token strings.
//!
//! No filesystem access (files arrive through `text::load`), so this builds for wasm32.

use std::sync::{Arc, OnceLock};

use super::error::TextError;
use super::segment::{find_any, longest_first, Segment};

/// How many token ids Qwen3's tokenizer knows (151 643 BPE tokens and 26 added ones), the same
/// for every Qwen3 release. Where a tokenizer is loaded, `Tokenizer::id_count` says it; this is
/// for models that come without one (the synthetic benchmark models).
pub const QWEN3_ID_COUNT: usize = 151_669;

/// Qwen3 tokenizer. Cheap to clone (shared internals), `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    /// Clone of `tok` with `encode_special_tokens = true`, made on first need:
    /// toggling the flag on the shared instance would race between threads, and
    /// most prompts never need it (text without special-token strings encodes
    /// the same either way).
    split: OnceLock<tokenizers::Tokenizer>,
    /// Contents of the added tokens flagged `special` (`<|im_start|>`, ...).
    /// `<think>`, `<tool_call>` etc. are added but not special: Hugging Face
    /// matches them in user text too, and so do we.
    specials: Vec<String>,
    id_count: u32,
    eos: Vec<u32>,
    think: Option<(u32, u32)>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("id_count", &self.inner.id_count)
            .field("eos", &self.inner.eos)
            .field("think", &self.inner.think)
            .finish_non_exhaustive()
    }
}

/// `"eos_token"` in tokenizer_config.json is either a string or an AddedToken
/// object with a `content` field.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// Build from the bytes of `tokenizer.json` and, optionally,
    /// `tokenizer_config.json` (used for its `eos_token`/`bos_token` names).
    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Self, TextError> {
        let mut tok = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| TextError::Tokenizer(format!("cannot parse tokenizer.json: {e}")))?;
        // Normal mode: special tokens are matched. (A tokenizer.json never sets
        // this, but be explicit: encode_trusted depends on it.)
        tok.set_encode_special_tokens(false);

        let (bos_token, eos_token) = match tokenizer_config_json {
            Some(bytes) => {
                let config: serde_json::Value =
                    serde_json::from_slice(bytes).map_err(|e| TextError::Config(e.to_string()))?;
                (config_token(&config, "bos_token"), config_token(&config, "eos_token"))
            }
            None => (None, None),
        };

        let added = tok.get_added_tokens_decoder();
        // Longest first, so that at one position the longest token wins (as the
        // tokenizer's leftmost-longest matcher does).
        let specials = longest_first(added.values().filter(|t| t.special).map(|t| t.content.clone()).collect());

        let max_vocab = tok.get_vocab(false).values().copied().max();
        let max_added = added.keys().copied().max();
        let id_count = max_vocab.max(max_added).map_or(0, |m| m + 1);

        // Stop ids looked up by their strings, so a different numbering (or a
        // base model whose eos_token is <|endoftext|>) still works.
        let mut eos = Vec::new();
        for s in ["<|im_end|>", "<|endoftext|>"].into_iter().chain(eos_token.as_deref()) {
            if let Some(id) = tok.token_to_id(s) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let think = match (tok.token_to_id("<think>"), tok.token_to_id("</think>")) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };

        Ok(Self {
            inner: Arc::new(Inner {
                tok,
                split: OnceLock::new(),
                specials,
                id_count,
                eos,
                think,
                bos_token,
                eos_token,
            }),
        })
    }

    /// Encode text in which special-token strings are meant as control tokens
    /// (template text, developer raw prompts). Adds no BOS/EOS.
    pub fn encode_trusted(&self, text: &str) -> Result<Vec<u32>, TextError> {
        encode_with(&self.inner.tok, text)
    }

    /// Encode caller/user text: special-token strings such as `<|im_start|>`
    /// stay plain text and can never become control tokens.
    pub fn encode_untrusted(&self, text: &str) -> Result<Vec<u32>, TextError> {
        if self.find_specials(text).is_empty() {
            // Identical result in either mode; skip building the second instance.
            return encode_with(&self.inner.tok, text);
        }
        encode_with(self.split_tokenizer(), text)
    }

    fn split_tokenizer(&self) -> &tokenizers::Tokenizer {
        self.inner.split.get_or_init(|| {
            let mut t = self.inner.tok.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// Encode rendered chat segments (from `ChatTemplate::render`).
    ///
    /// Special-token strings produce control tokens only where they lie wholly
    /// inside trusted text. When the text has no other occurrences (the normal
    /// case) the whole string is encoded in one go, which is exactly what
    /// Hugging Face does with the rendered template. Otherwise the text is cut
    /// at the trusted control tokens and every piece in between is encoded with
    /// special tokens disabled.
    pub fn encode_chat(&self, segments: &[Segment]) -> Result<Vec<u32>, TextError> {
        // Concatenate, merging neighbours of equal trust, and collect the
        // special-token matches that lie inside trusted runs.
        let mut text = String::new();
        let mut trusted_matches: Vec<(usize, usize)> = Vec::new();
        let mut run_start = 0;
        let mut run_trusted: Option<bool> = None;
        let close_run = |text: &str, start: usize, trusted: Option<bool>, out: &mut Vec<(usize, usize)>| {
            if trusted == Some(true) {
                out.extend(self.find_specials(&text[start..]).into_iter().map(|(a, b)| (a + start, b + start)));
            }
        };
        for seg in segments.iter().filter(|s| !s.text.is_empty()) {
            if run_trusted != Some(seg.trusted) {
                close_run(&text, run_start, run_trusted, &mut trusted_matches);
                run_start = text.len();
                run_trusted = Some(seg.trusted);
            }
            text.push_str(&seg.text);
        }
        close_run(&text, run_start, run_trusted, &mut trusted_matches);

        if self.find_specials(&text) == trusted_matches {
            return self.encode_trusted(&text);
        }
        let mut ids = Vec::new();
        let mut pos = 0;
        for (a, b) in trusted_matches {
            ids.extend(self.encode_untrusted(&text[pos..a])?);
            let id = self
                .inner
                .tok
                .token_to_id(&text[a..b])
                .ok_or_else(|| TextError::Tokenizer(format!("special token {:?} has no id", &text[a..b])))?;
            ids.push(id);
            pos = b;
        }
        ids.extend(self.encode_untrusted(&text[pos..])?);
        Ok(ids)
    }

    /// Non-overlapping occurrences of special-token strings, leftmost first and
    /// longest at each position (the tokenizer's own matching rule).
    pub(crate) fn find_specials(&self, text: &str) -> Vec<(usize, usize)> {
        find_any(text, &self.inner.specials)
    }

    /// Contents of the special added tokens, longest first.
    pub fn special_tokens(&self) -> &[String] {
        &self.inner.specials
    }

    /// Decode ids to text. `skip_special` drops special tokens (`<|im_end|>`,
    /// ...); `<think>`/`</think>` are not special and are always kept.
    /// Unknown ids are ignored.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.tok.decode(ids, skip_special).unwrap_or_default()
    }

    /// Number of ids the tokenizer knows: max id over vocab and added tokens,
    /// plus one (`QWEN3_ID_COUNT` for Qwen3; the embedding table may be larger).
    pub fn id_count(&self) -> u32 {
        self.inner.id_count
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// Ids that end generation: `<|im_end|>`, `<|endoftext|>` and the config's
    /// `eos_token`, whichever exist (151645, 151643 for Qwen3).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.inner.eos.clone()
    }

    /// `(<think>, </think>)` ids when the vocabulary has both.
    pub fn think_ids(&self) -> Option<(u32, u32)> {
        self.inner.think
    }

    /// `bos_token` / `eos_token` strings from tokenizer_config.json (for templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }
    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }
}

fn encode_with(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, TextError> {
    // add_special_tokens=false: Qwen3 adds no BOS/EOS, and chat templates
    // already contain everything.
    tok.encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| TextError::Tokenizer(format!("encode failed: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// tests/fixtures/tokenizer: Qwen3's tokenizer.json and tokenizer_config.json.
    pub(crate) fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
    }

    /// Qwen3's tokenizer from the fixture, or None (with a note) when absent.
    pub(crate) fn qwen_tokenizer() -> Option<Tokenizer> {
        let dir = fixture_dir();
        let (Ok(json), Ok(config)) =
            (std::fs::read(dir.join("tokenizer.json")), std::fs::read(dir.join("tokenizer_config.json")))
        else {
            eprintln!("note: {} missing, skipping tokenizer test", dir.display());
            return None;
        };
        Some(Tokenizer::from_bytes(&json, Some(&config)).expect("fixture tokenizer loads"))
    }
}
