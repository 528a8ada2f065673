//! The JavaScript-facing API (wasm32 only), used by the package's Web Worker (`www/pkg-src/worker.js`):
//! it fetches and caches files, and pushes weight bytes here chunk by chunk. Thin over
//! `Engine`/`Session`: everything model-related is the same code as natively.
//!
//! Errors reach JS as `Error` objects whose `name` says what went wrong: `WebGPUUnavailable`,
//! `LimitsTooSmall`, `BadModel`, `InvalidRequest`, `ContextExceeded`, `EngineError`.
//!
//! What Rust and JS both need to know is defined here once and exported: which files a model
//! has (`modelFiles`), the safetensors header length (`headerLength`), the shard list
//! (`ModelLoader.weightFiles`), finish reasons and tokens per second (on the last delta).

use std::cell::RefCell;
use std::rc::Rc;

use futures_channel::mpsc;
use futures_util::StreamExt;
use sha2::Digest;
use wasm_bindgen::prelude::*;

use crate::config::ModelConfig;
use crate::engine::{Engine as CoreEngine, LoadOptions, Loading, StopReason};
use crate::error::Error;
use crate::files::{InMemory, TextFiles, CONFIG, GENERATION_CONFIG, OPTIONAL, REQUIRED, SINGLE_WEIGHTS, WEIGHTS_INDEX};
use crate::gpu::{Gpu, GpuOptions};
use crate::model::{KvCache, ModelOptions};
use crate::sample::SamplingOverrides;
use crate::session::{CompletionRequest, Session};
use crate::text::{Message, Text, TextEvent};
use crate::weights::{ShardIndex, WeightIndex};

/// The JS error name of an error's kind.
fn error_name(e: &Error) -> &'static str {
    match e {
        Error::NoAdapter(_) => "WebGPUUnavailable",
        Error::Gpu(_) => "EngineError",
        Error::Limit(_) => "LimitsTooSmall",
        Error::Context(_) => "ContextExceeded",
        Error::Config(_) | Error::Weights { .. } | Error::Io { .. } | Error::Text(_) => "BadModel",
        Error::Invalid(_) => "InvalidRequest",
    }
}

fn named_error(name: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    err.set_name(name);
    err.into()
}

/// A JS `Error` with `name` set from the error's kind.
fn js_error(e: Error) -> JsValue {
    named_error(error_name(&e), &e.to_string())
}

fn invalid(msg: impl Into<String>) -> JsValue {
    js_error(Error::Invalid(msg.into()))
}

fn to_js(v: &serde_json::Value) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}

fn gpu_json(gpu: &Gpu) -> serde_json::Value {
    let a = &gpu.adapter_info;
    let mut features = Vec::new();
    if gpu.has_f16 {
        features.push("shader-f16");
    }
    if gpu.has_subgroups {
        features.push("subgroups");
    }
    serde_json::json!({
        "adapter": a.name,
        "backend": format!("{:?}", a.backend),
        "features": features,
        "limits": {
            "maxStorageBufferBindingSize": gpu.limits.max_storage_buffer_binding_size,
            "maxBufferSize": gpu.limits.max_buffer_size,
            "maxComputeWorkgroupStorageSize": gpu.limits.max_compute_workgroup_storage_size,
            "maxStorageBuffersPerShaderStage": gpu.limits.max_storage_buffers_per_shader_stage,
        },
        "maxBinding": gpu.max_binding,
    })
}

/// The adapter, its usable features and limits.
#[wasm_bindgen(js_name = gpuInfo)]
pub async fn gpu_info() -> Result<JsValue, JsValue> {
    let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_error)?;
    Ok(to_js(&gpu_json(&gpu)))
}

/// Incremental SHA-256, to check cached and downloaded files without holding them whole.
#[wasm_bindgen]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256 {
        Sha256(sha2::Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as lowercase hex; the hasher starts over.
    pub fn hex(&mut self) -> String {
        let digest = std::mem::take(&mut self.0).finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

/// The text files of a model: `{required, optional}`, arrays of file names. The worker fetches
/// these and hands them to `ModelLoader.create`.
#[wasm_bindgen(js_name = modelFiles)]
pub fn model_files() -> JsValue {
    to_js(&serde_json::json!({ "required": REQUIRED, "optional": OPTIONAL }))
}

/// How many bytes the worker must read from the start of safetensors file `file` to hold its
/// header: 8 + the header length that its first 8 bytes state. `size`: the file's size when the
/// server stated one (a header longer than the file is then an error here).
#[wasm_bindgen(js_name = headerLength)]
pub fn header_length(file: String, first8: &[u8], size: Option<f64>) -> Result<f64, JsValue> {
    let prefix: [u8; 8] =
        first8.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| invalid("need the first 8 bytes"))?;
    let n = crate::weights::header_len(&file, &prefix, size.map_or(u64::MAX, |s| s as u64)).map_err(js_error)?;
    Ok((8 + n) as f64)
}

/// The `finish_reason` of an answer whose caller cancelled it (the others arrive with the last
/// delta).
#[wasm_bindgen(js_name = abortFinishReason)]
pub fn abort_finish_reason() -> String {
    StopReason::Caller.finish_reason(true).into()
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoaderOptions {
    max_storage_binding: Option<u64>,
    context: Option<usize>,
    /// "f16" (default) or "f32".
    #[serde(default)]
    kv_cache: KvCache,
}

/// Loads one model: its text files first (`create`), then the weight files' headers
/// (`addHeader`), then `plan()` allocates the GPU buffers, then the weight bytes stream in
/// (`write`), then `finish()` gives the engine.
#[wasm_bindgen]
pub struct ModelLoader {
    config: ModelConfig,
    files: InMemory,
    text: Option<Text>,
    options: LoadOptions,
    index: WeightIndex,
    sizes: Vec<u64>,
    loading: Option<Loading>,
}

#[wasm_bindgen]
impl ModelLoader {
    /// `files`: the model's text files by name (`modelFiles()`; a missing optional one absent or
    /// null). `options`: `{ maxStorageBinding?, context?, kvCache? }`. The config, tokenizer and
    /// chat template are checked here, before any weight byte is fetched.
    pub async fn create(files: JsValue, options: JsValue) -> Result<ModelLoader, JsValue> {
        let mut texts = InMemory::default();
        for name in REQUIRED.iter().chain(OPTIONAL.iter()) {
            let v = js_sys::Reflect::get(&files, &JsValue::from_str(name))
                .map_err(|_| invalid("files must be an object"))?;
            if v.is_undefined() || v.is_null() {
                continue;
            }
            let text = v.as_string().ok_or_else(|| invalid(format!("files[{name:?}] must be a string")))?;
            texts.insert(*name, text);
        }
        let config = ModelConfig::from_json(&texts.require(CONFIG).map_err(js_error)?).map_err(js_error)?;
        let text = crate::text::load(&texts).map_err(js_error)?;
        let opts: LoaderOptions = if options.is_undefined() || options.is_null() {
            LoaderOptions::default()
        } else {
            let text = js_sys::JSON::stringify(&options).map_err(|_| invalid("options must be a plain object"))?;
            serde_json::from_str(&String::from(text)).map_err(|e| invalid(format!("options: {e}")))?
        };
        let options = LoadOptions {
            gpu: GpuOptions { max_storage_binding: opts.max_storage_binding, ..Default::default() },
            model: ModelOptions { context: opts.context, kv_cache: opts.kv_cache, ..Default::default() },
        };
        Ok(ModelLoader {
            config,
            files: texts,
            text: Some(text),
            options,
            index: WeightIndex::default(),
            sizes: Vec::new(),
            loading: None,
        })
    }

    /// The weight files to fetch, in order: the shards the index names (plain `*.safetensors`
    /// names, each once), or the single weight file of a model without an index.
    #[wasm_bindgen(js_name = weightFiles)]
    pub fn weight_files(&self) -> Result<Vec<String>, JsValue> {
        let Some(index) = self.files.read(WEIGHTS_INDEX).map_err(js_error)? else {
            return Ok(vec![SINGLE_WEIGHTS.to_string()]);
        };
        let files = ShardIndex::parse(&index).map_err(|m| js_error(Error::weights(WEIGHTS_INDEX, m)))?.files();
        if files.is_empty() {
            return Err(js_error(Error::weights(WEIGHTS_INDEX, "lists no weight files")));
        }
        Ok(files)
    }

    /// The first `headerLength` bytes of weight file `file`, and its size when the server stated
    /// one (then a header describing more bytes than that is an error now rather than at
    /// `finish`). Files are named the same way in `write`.
    #[wasm_bindgen(js_name = addHeader)]
    pub fn add_header(&mut self, file: String, header: &[u8], size: Option<f64>) -> Result<(), JsValue> {
        if self.loading.is_some() {
            return Err(invalid("addHeader after plan()"));
        }
        if header.len() < 8 {
            return Err(js_error(Error::weights(file, "file is too short to be safetensors")));
        }
        self.index.add_file(&file, size.map_or(u64::MAX, |s| s as u64), &header[8..]).map_err(js_error)?;
        let f = self.index.files.len() - 1;
        // The size the header describes: where its last tensor ends.
        let described = self
            .index
            .tensors
            .values()
            .filter(|t| t.file == f)
            .map(|t| t.start + t.len)
            .max()
            .unwrap_or(header.len() as u64);
        self.sizes.push(size.map_or(described, |s| s as u64));
        Ok(())
    }

    /// Open the GPU and allocate every buffer. Fails with `LimitsTooSmall` when the model, its KV
    /// cache or its activations cannot fit this device's limits.
    pub async fn plan(&mut self) -> Result<JsValue, JsValue> {
        if self.index.files.is_empty() {
            return Err(invalid("plan() before any addHeader"));
        }
        let text = self.text.as_ref().ok_or_else(|| invalid("plan() after finish()"))?;
        // Rows past the tokenizer's ids (padding of the embedding table) are never sampled.
        let sample_vocab = text.tokenizer.id_count() as usize;
        let loading = CoreEngine::prepare(self.config.clone(), &self.index, sample_vocab, &self.options)
            .await
            .map_err(js_error)?;
        let (weight_bytes, _) = loading.model().weight_bytes();
        let plan = serde_json::json!({
            "gpuBytes": loading.model().gpu.allocated_bytes(),
            "weightBytes": weight_bytes,
            "context": loading.model().context,
            "kvCacheBytes": loading.model().kv_cache_bytes(),
            "files": self.index.files.iter().zip(&self.sizes).map(|(n, s)| serde_json::json!({"name": n, "size": s})).collect::<Vec<_>>(),
            "gpu": gpu_json(&loading.model().gpu),
        });
        self.loading = Some(loading);
        Ok(to_js(&plan))
    }

    /// Bytes of `file` from absolute offset `offset` (each file's chunks in order).
    pub fn write(&mut self, file: String, offset: f64, bytes: &[u8]) -> Result<(), JsValue> {
        let loading = self.loading.as_mut().ok_or_else(|| invalid("write() before plan()"))?;
        let f = self
            .index
            .files
            .iter()
            .position(|n| *n == file)
            .ok_or_else(|| invalid(format!("{file} is not a weight file of this model")))?;
        loading.write(f, offset as u64, bytes).map_err(js_error)
    }

    /// Tensor bytes received and needed: `[done, total]`.
    pub fn progress(&self) -> Vec<f64> {
        let (d, t) = self.loading.as_ref().map(|l| l.progress()).unwrap_or((0, 0));
        vec![d as f64, t as f64]
    }

    /// Check every tensor arrived and build the engine with its tokenizer and chat template.
    pub async fn finish(&mut self) -> Result<Engine, JsValue> {
        let loading = self.loading.take().ok_or_else(|| invalid("finish() before plan()"))?;
        let text = self.text.take().ok_or_else(|| invalid("finish() twice"))?;
        let engine = loading.finish().map_err(js_error)?;
        let generation_config = self.files.read(GENERATION_CONFIG).map_err(js_error)?;
        let session = Session::new(engine, text, generation_config.as_deref());
        Ok(Engine { session: Rc::new(RefCell::new(session)), events: Rc::default(), cancel: Rc::default() })
    }
}

/// One step's text, as the worker turns it into OpenAI-style chunks.
#[derive(serde::Serialize, Default)]
struct Delta {
    reasoning: String,
    content: String,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<serde_json::Value>,
    /// The generated token ids (on the last delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<(String, String)>,
}

#[derive(serde::Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    #[serde(flatten)]
    sampling: SamplingOverrides,
    #[serde(default)]
    stop: Vec<String>,
    enable_thinking: Option<bool>,
}

/// A loaded model. `start` begins a chat completion; `next` resolves with each piece of text.
#[wasm_bindgen]
pub struct Engine {
    session: Rc<RefCell<Session>>,
    /// The running completion's deltas. Methods take `&self` and no borrow lives across an
    /// await, so `cancel()` works while a `next()` is pending.
    events: Rc<RefCell<Option<mpsc::UnboundedReceiver<Delta>>>>,
    cancel: Rc<std::cell::Cell<bool>>,
}

#[wasm_bindgen]
impl Engine {
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let s = self.session.try_borrow().map_err(|_| invalid("info() while generating"))?;
        let m = &s.engine.model;
        let c = &m.config;
        let (weights, _) = m.weight_bytes();
        Ok(to_js(&serde_json::json!({
            "gpu": gpu_json(&m.gpu),
            "model": {
                "type": c.model_type, "layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads,
                "kvHeads": c.num_kv_heads, "vocab": c.vocab_size,
                "experts": c.moe.as_ref().map(|x| x.num_experts), "topK": c.moe.as_ref().map(|x| x.num_experts_per_tok),
            },
            "context": m.context,
            "kvCache": m.kv_cache,
            "memory": {"gpuBytes": m.gpu.allocated_bytes(), "weightBytes": weights, "kvCacheBytes": m.kv_cache_bytes()},
        })))
    }

    /// Begin a chat completion (`request`: messages and sampling, OpenAI names, as JSON).
    pub fn start(&self, request: String) -> Result<(), JsValue> {
        if self.events.borrow().is_some() || self.session.try_borrow_mut().is_err() {
            return Err(invalid("a completion is already running: read it to the end or cancel() it"));
        }
        let req: ChatRequest = serde_json::from_str(&request).map_err(|e| invalid(format!("request: {e}")))?;
        let (tx, rx) = mpsc::unbounded();
        *self.events.borrow_mut() = Some(rx);
        self.cancel.set(false);
        let session = self.session.clone();
        let cancel = self.cancel.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let end = run_completion(&session, req, &tx, &cancel).await;
            let _ = tx.unbounded_send(end);
        });
        Ok(())
    }

    /// The next piece of text; `done` on the last.
    pub async fn next(&self) -> Result<JsValue, JsValue> {
        let mut rx = self
            .events
            .borrow_mut()
            .take()
            .ok_or_else(|| invalid("next() without start(), or while another next() is pending"))?;
        let delta = rx.next().await.unwrap_or(Delta {
            done: true,
            finish_reason: Some(abort_finish_reason()),
            ..Default::default()
        });
        if !delta.done {
            *self.events.borrow_mut() = Some(rx);
        }
        if let Some((name, message)) = &delta.error {
            return Err(named_error(name, message));
        }
        serde_wasm_json(&delta)
    }

    /// Stop the running completion after the current token.
    pub fn cancel(&self) {
        self.cancel.set(true);
    }
}

fn serde_wasm_json(d: &Delta) -> Result<JsValue, JsValue> {
    Ok(to_js(&serde_json::to_value(d).map_err(|e| invalid(e.to_string()))?))
}

async fn run_completion(
    session: &RefCell<Session>,
    req: ChatRequest,
    tx: &mpsc::UnboundedSender<Delta>,
    cancel: &std::cell::Cell<bool>,
) -> Delta {
    let fail =
        |e: Error| Delta { done: true, error: Some((error_name(&e).into(), e.to_string())), ..Default::default() };
    let Ok(mut s) = session.try_borrow_mut() else {
        return fail(Error::Invalid("the engine is busy".into()));
    };
    let prompt = match s.chat_tokens(&req.messages, req.enable_thinking.unwrap_or(true), None) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut sampling = req.sampling.clone();
    // Without a seed each completion samples differently, as OpenAI's API does.
    sampling.seed = sampling.seed.or_else(|| Some((js_sys::Math::random() * 9.007_199_254_740_991e15) as u64));
    let params = sampling.apply(&s.defaults);
    let context = s.engine.model.context;
    let max_tokens = req.max_tokens.unwrap_or(context).min(context.saturating_sub(prompt.len()));
    let request = CompletionRequest { params, max_tokens, stop: req.stop };
    let mut on_event = |ev: &TextEvent| -> bool {
        let mut d = Delta::default();
        match ev {
            TextEvent::Reasoning(r) => d.reasoning = r.clone(),
            TextEvent::Content(c) => d.content = c.clone(),
        }
        let _ = tx.unbounded_send(d);
        !cancel.get()
    };
    match s.complete(&prompt, &request, &mut on_event).await {
        Ok(done) => {
            let g = &done.generation;
            Delta {
                done: true,
                finish_reason: Some(g.stop.finish_reason(cancel.get()).into()),
                usage: Some(serde_json::json!({
                    "prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len(),
                    "total_tokens": g.prompt_tokens + g.tokens.len(),
                })),
                timings: Some(serde_json::json!({
                    "prefill_seconds": g.prefill_seconds, "decode_seconds": g.decode_seconds,
                    "prefill_tokens_per_second": g.prefill_tokens_per_second(),
                    "decode_tokens_per_second": g.decode_tokens_per_second(),
                })),
                tokens: Some(g.tokens.clone()),
                ..Default::default()
            }
        }
        Err(e) => fail(e),
    }
}
