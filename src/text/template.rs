//! Chat templates: the model's own Jinja template (from chat_template.jinja or
//! tokenizer_config.json) rendered in a sandboxed minijinja environment set up like
//! Hugging Face's (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`, Python-style `tojson`), so the rendered text is the same
//! as `apply_chat_template`. One caveat: JSON objects (tool schemas, tool-call
//! arguments) keep serde_json's key order, which is sorted unless serde_json's
//! `preserve_order` feature is enabled; Python keeps the caller's order.
//!
//! Caller text is escaped before rendering and comes back as untrusted segments (escape.rs);
//! rendering is bounded in work, memory and output so that no template can hang the process.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

use super::error::TextError;
use super::escape::{json_value, message_value, Escaper, OrderedMap};
use super::json::tojson_filter;
use super::messages::Message;
use super::segment::{longest_first, Segment};
use super::tokenizer::Tokenizer;

/// Options passed to the template.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Append the assistant header (`<|im_start|>assistant\n`).
    pub add_generation_prompt: bool,
    /// `None`: leave the variable undefined (Qwen3: thinking on). `Some(false)`:
    /// Qwen3 appends an empty `<think>\n\n</think>\n\n`.
    pub enable_thinking: Option<bool>,
    /// OpenAI-style tool schemas (a JSON array), if any.
    pub tools: Option<serde_json::Value>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (`chat_template.jinja`, ...), for errors.
    name: String,
    /// Special-token strings to neutralize in caller text (longest first).
    specials: Vec<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("specials", &self.specials.len()).finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Templates come with a model, from wherever it was downloaded: rendering is bounded so that
/// none can hang, exhaust memory or abort the process. minijinja's fuel charges every
/// instruction and every byte a template creates (one fuel pays for one instruction or 64
/// bytes), so this bounds both time (a few hundred milliseconds) and memory (about 128 MiB).
/// Qwen3's template spends about 95 fuel per KiB of conversation (measured on the test
/// `real_template_fits_the_bounds`), so a conversation as long as `MAX_RENDER_BYTES` uses 5% of it.
pub const RENDER_FUEL: u64 = 2_000_000;
/// The largest rendered prompt: 1 MiB is about 250 000 tokens, beyond any Qwen3 context.
pub const MAX_RENDER_BYTES: usize = 1 << 20;
/// The largest `tojson(indent=...)`: templates use 2 or 4.
pub const MAX_TOJSON_INDENT: usize = 16;
/// Neutralized in caller text even without a tokenizer: any `<|...|>` special
/// token contains both, so escaping them (and fragments of them at the edges of
/// a value) keeps such tokens from forming. Escaping never changes the
/// rendered text, and `encode_chat` still encodes text without real special
/// tokens in one piece, so this costs nothing in fidelity.
const DEFAULT_MARKERS: [&str; 2] = ["<|", "|>"];

impl ChatTemplate {
    /// Compile `source`. Caller text is neutralized against `<|` and `|>`,
    /// which covers every special token of the `<|...|>` family (Qwen, Llama 3).
    /// Use `for_tokenizer` to add the tokenizer's exact special-token list
    /// (needed for other shapes such as `</s>` or `<start_of_turn>`).
    pub fn new(source: &str) -> Result<Self, TextError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks + lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        // Python string/dict/list methods (.strip, .split, .startswith, .items, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Sandbox: no loader (no includes from disk), bounded recursion, work and memory.
        env.set_recursion_limit(128);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", raise_exception);
        // Python's json.dumps(ensure_ascii=False): minijinja's own tojson
        // HTML-escapes `<`, `>`, `&`, `'`, which would change the prompt.
        env.add_filter("tojson", tojson_filter(MAX_TOJSON_INDENT, MAX_RENDER_BYTES));
        env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(template_error)?;
        let t = Self { env, name: TEMPLATE_NAME.to_string(), specials: Vec::new(), bos_token: None, eos_token: None };
        Ok(t.with_special_tokens(&DEFAULT_MARKERS.map(String::from)))
    }

    /// Name the template in errors by where it came from (a file name).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Also neutralize these strings in caller text.
    pub fn with_special_tokens(mut self, special_tokens: &[String]) -> Self {
        self.specials.extend(special_tokens.iter().cloned());
        // Longest first: find_any takes the first needle that matches.
        self.specials = longest_first(std::mem::take(&mut self.specials));
        self
    }

    /// Compile `source` for `tok`: its special tokens are neutralized too, and
    /// its bos/eos token strings are available to the template.
    pub fn for_tokenizer(source: &str, tok: &Tokenizer) -> Result<Self, TextError> {
        let mut t = Self::new(source)?.with_special_tokens(tok.special_tokens());
        t.bos_token = tok.bos_token().map(str::to_owned);
        t.eos_token = tok.eos_token().map(str::to_owned);
        Ok(t)
    }

    /// The `chat_template` of a tokenizer_config.json. A list of named templates
    /// (older HF format) yields the one named "default".
    pub fn source_from_tokenizer_config(config_json: &[u8]) -> Result<String, TextError> {
        let config: serde_json::Value =
            serde_json::from_slice(config_json).map_err(|e| TextError::Config(e.to_string()))?;
        match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_owned)
                .ok_or(TextError::NoChatTemplate),
            _ => Err(TextError::NoChatTemplate),
        }
    }

    /// Render to segments (see the module comment for what is untrusted).
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<Vec<Segment>, TextError> {
        let mut esc = Escaper::new(&self.specials);
        let messages: Vec<Value> = messages.iter().map(|m| message_value(m, &mut esc)).collect::<Result<_, _>>()?;

        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(opts.add_generation_prompt)),
        ];
        // Undefined (not false/none) when not given: templates test `is defined`.
        if let Some(t) = opts.enable_thinking {
            ctx.push(("enable_thinking", Value::from(t)));
        }
        if let Some(tools) = opts.tools.as_ref().filter(|t| !t.is_null()) {
            ctx.push(("tools", json_value(tools, &mut esc)));
        }
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        let ctx = Value::from_object(OrderedMap(ctx.into_iter().map(|(k, v)| (Value::from(k), v)).collect()));

        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let mut out = CappedOutput::default();
        let result = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
        if out.overflow {
            return Err(TextError::Template(format!(
                "{}: the rendered prompt exceeds {} bytes; shorten the conversation",
                self.name, MAX_RENDER_BYTES
            )));
        }
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(TextError::Template(format!(
                    "{}: rendering stopped after {RENDER_FUEL} units of work (a loop that does not end, or \
                     strings or lists grown beyond about {} MiB); this template cannot be used",
                    self.name,
                    (RENDER_FUEL * 64) >> 20
                )))
            }
            Err(e) => return Err(TextError::Template(format!("{}: {}", self.name, error_text(&e)))),
        }
        let rendered = String::from_utf8(out.bytes)
            .map_err(|_| TextError::Template(format!("{}: rendered text is not UTF-8", self.name)))?;
        Ok(esc.restore(&rendered))
    }

    /// Render to one plain string: the exact rendered text (placeholders are
    /// swapped back), e.g. for display or debugging. Encode with `render` +
    /// `encode_chat`, never with `encode_trusted(render_text(..))`.
    pub fn render_text(&self, messages: &[Message], opts: &RenderOptions) -> Result<String, TextError> {
        Ok(self.render(messages, opts)?.into_iter().map(|s| s.text).collect())
    }
}

fn template_error(e: Error) -> TextError {
    TextError::Template(error_text(&e))
}

/// A minijinja error with its causes (its Display includes the line).
fn error_text(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// The render target: refuses to grow past `MAX_RENDER_BYTES`.
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflow: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDER_BYTES {
            self.overflow = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::tests::{fixture_dir, qwen_tokenizer};

    /// The bounds leave real conversations room: Qwen3's own template with tools renders a
    /// conversation of nearly `MAX_RENDER_BYTES` well within the fuel.
    #[test]
    fn real_template_fits_the_bounds() {
        let Some(tok) = qwen_tokenizer() else { return };
        let source = || {
            let config = std::fs::read(fixture_dir().join("tokenizer_config.json")).unwrap();
            ChatTemplate::source_from_tokenizer_config(&config).unwrap()
        };
        let tmpl = ChatTemplate::for_tokenizer(&source(), &tok).unwrap();
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "description": "d",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]);
        let turn = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(150); // ~8.5 KB
        let mut messages = vec![Message::system("You are helpful.")];
        for i in 0..58 {
            messages.push(Message::user(format!("{i} {turn}")));
            let mut a = Message::assistant(format!("<think>\nhmm\n</think>\n\n{turn}"));
            a.reasoning_content = None;
            messages.push(a);
        }
        messages.push(Message::user("last"));
        let opts = RenderOptions { add_generation_prompt: true, enable_thinking: Some(true), tools: Some(tools) };
        let text = tmpl.render_text(&messages, &opts).unwrap();
        assert!(text.len() > MAX_RENDER_BYTES * 9 / 10, "{}", text.len());
        // ... with a tenth of the fuel, too
        let mut lean = ChatTemplate::for_tokenizer(&source(), &tok).unwrap();
        lean.env.set_fuel(Some(RENDER_FUEL / 10));
        assert_eq!(lean.render_text(&messages, &opts).unwrap(), text);
    }
}
