//! Text in, text out: an engine with its tokenizer and chat template. The CLI and the browser
//! API are thin layers over this.

use crate::engine::{Engine, Generation};
use crate::error::{Error, Result};
use crate::sample::SamplingParams;
use crate::text::{
    prompt_ends_in_think, ChatTemplate, Message, RenderOptions, StopMatcher, StreamDecoder, Text, TextEvent,
    ThinkSplitter, Tokenizer,
};

pub struct Session {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// The model's recommended sampling (generation_config.json), used when a request says nothing.
    pub defaults: SamplingParams,
    pub eos: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Generation stops before any of these strings would be emitted.
    pub stop: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Completion {
    pub generation: Generation,
    /// The answer (outside `<think>`), stop strings removed.
    pub content: String,
    /// The text inside `<think>...</think>`.
    pub reasoning: String,
    /// Every generated token decoded (special tokens skipped).
    pub text: String,
}

impl Session {
    /// A session over `engine` with the model's tokenizer and template (`text::load`) and its
    /// generation_config.json, if any.
    pub fn new(engine: Engine, text: Text, generation_config: Option<&str>) -> Session {
        let Text { tokenizer, template } = text;
        let mut eos = tokenizer.eos_ids();
        for id in &engine.config().eos_token_ids {
            if !eos.contains(id) {
                eos.push(*id);
            }
        }
        let defaults = generation_config.map(sampling_from_generation_config).unwrap_or_default();
        Session { engine, tokenizer, template, defaults, eos }
    }

    /// Load a model directory natively (config, tokenizer, chat template, weights).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn load_dir(
        dir: &std::path::Path,
        opts: &crate::engine::LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Session> {
        use crate::files::{Dir, TextFiles, CONFIG, GENERATION_CONFIG};
        let files = Dir::new(dir);
        let config = crate::config::ModelConfig::from_json(&files.require(CONFIG)?)?;
        let text = crate::text::load(&files)?;
        let (index, mut source) = crate::weights::open_dir(dir)?;
        let sample_vocab = text.tokenizer.id_count() as usize;
        let engine = Engine::load(config, &index, &mut source, sample_vocab, opts, progress).await?;
        let generation_config = files.read(GENERATION_CONFIG)?;
        Ok(Session::new(engine, text, generation_config.as_deref()))
    }

    /// Token ids of a chat, rendered with the model's own template. User text can never
    /// produce control tokens.
    pub fn chat_tokens(
        &self,
        messages: &[Message],
        enable_thinking: bool,
        tools: Option<serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| Error::Text("this model has no chat template (use --raw or --token-ids)".into()))?;
        let opts = RenderOptions { add_generation_prompt: true, enable_thinking: Some(enable_thinking), tools };
        let segments = template.render(messages, &opts).map_err(|e| Error::Text(e.to_string()))?;
        self.tokenizer.encode_chat(&segments).map_err(|e| Error::Text(e.to_string()))
    }

    /// Generate after `prompt`, streaming reasoning and content events; `on_event` returns
    /// false to stop.
    pub async fn complete(
        &mut self,
        prompt: &[u32],
        req: &CompletionRequest,
        on_event: &mut dyn FnMut(&TextEvent) -> bool,
    ) -> Result<Completion> {
        // Inside an open <think> block when the prompt's last think tag is an opening one.
        let open = prompt_ends_in_think(prompt, self.tokenizer.think_ids());
        let mut decoder = StreamDecoder::new();
        let mut splitter = ThinkSplitter::for_tokenizer(&self.tokenizer, open);
        let mut stop = StopMatcher::new(req.stop.clone());
        let mut out = Completion::default();
        let tokenizer = &self.tokenizer;
        let eos = self.eos.clone();
        let mut emit = |ev: TextEvent, out: &mut Completion, stop: &mut StopMatcher| -> bool {
            match ev {
                TextEvent::Reasoning(r) => {
                    out.reasoning.push_str(&r);
                    on_event(&TextEvent::Reasoning(r))
                }
                TextEvent::Content(c) => {
                    let (text, hit) = stop.push(&c);
                    let mut go = true;
                    if !text.is_empty() {
                        out.content.push_str(&text);
                        go = on_event(&TextEvent::Content(text));
                    }
                    go && !hit
                }
            }
        };
        let mut on_token = |id: u32| -> bool {
            if eos.contains(&id) {
                return true;
            }
            let piece = decoder.push(tokenizer, id);
            let mut go = true;
            for ev in splitter.push(id, &piece) {
                go &= emit(ev, &mut out, &mut stop);
            }
            go
        };
        let generation = self.engine.generate(prompt, &req.params, req.max_tokens, &eos, &mut on_token).await?;
        if !stop.stopped() {
            let tail = decoder.finish(tokenizer);
            for ev in splitter.push(u32::MAX, &tail) {
                emit(ev, &mut out, &mut stop);
            }
            let rest = stop.finish();
            if !rest.is_empty() {
                out.content.push_str(&rest);
                on_event(&TextEvent::Content(rest));
            }
        }
        out.text = tokenizer.decode(&generation.tokens, true);
        out.generation = generation;
        Ok(out)
    }
}

/// generation_config.json's sampling fields (Qwen3: temperature 0.6, top_p 0.95, top_k 20).
pub fn sampling_from_generation_config(text: &str) -> SamplingParams {
    let mut p = SamplingParams::default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let do_sample = v.get("do_sample").and_then(|x| x.as_bool()).unwrap_or(true);
        if do_sample {
            if let Some(t) = v.get("temperature").and_then(|x| x.as_f64()) {
                p.temperature = t as f32;
            }
            if let Some(t) = v.get("top_p").and_then(|x| x.as_f64()) {
                p.top_p = t as f32;
            }
            if let Some(t) = v.get("top_k").and_then(|x| x.as_u64()) {
                p.top_k = t as u32;
            }
            if let Some(t) = v.get("min_p").and_then(|x| x.as_f64()) {
                p.min_p = t as f32;
            }
        }
        if let Some(t) = v.get("repetition_penalty").and_then(|x| x.as_f64()) {
            p.repetition_penalty = t as f32;
        }
    }
    p
}
