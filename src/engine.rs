//! The engine: one loaded model with its tokenizer, KV cache and sampler, and the generation loop.
//! Per generated token the host writes one 32-byte uniform, submits one command buffer and reads
//! back one 4-byte token id; the next step is submitted before that id is read, so the GPU never
//! waits for the CPU.

use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::model::ops::Step;
use crate::model::{load, ModelOptions, Qwen3};
use crate::sample::{GpuSampler, SamplerCaps, SamplingParams};
use crate::weights::{ByteSource, WeightIndex};

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub gpu: GpuOptions,
    pub model: ModelOptions,
}

/// A model whose GPU buffers and pipelines exist and whose weights are arriving.
pub struct Loading {
    parts: Parts,
    sink: load::WeightSink,
}

/// Everything of an engine but its weights' contents.
struct Parts {
    model: Qwen3,
    sampler: GpuSampler,
    readback: [wgpu::Buffer; 2],
}

impl Loading {
    pub fn model(&self) -> &Qwen3 {
        &self.parts.model
    }

    /// Bytes `offset ..` of weight file `file` (index order); each file's chunks in order, any
    /// sizes, header bytes included or not.
    pub fn write(&mut self, file: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        self.sink.write(file, offset, bytes)
    }

    /// (tensor bytes received, tensor bytes needed).
    pub fn progress(&self) -> (u64, u64) {
        self.sink.progress()
    }

    /// Check every tensor arrived whole; the engine is then ready.
    pub fn finish(self) -> Result<Engine> {
        self.sink.finish()?;
        Ok(Engine::assemble(self.parts))
    }
}

/// What one generation produced.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the previous call.
    pub reused_tokens: usize,
    pub stop: StopReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    /// Prompt tokens per second of prefill (until the first token is read back).
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    /// Generated tokens per second after the first (whose time is prefill's): what every report
    /// of decode speed shows (CLI, bench, the browser package's usage, the chat app).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// `max_tokens` reached.
    #[default]
    Length,
    Eos,
    /// The caller's callback asked to stop (stop string, Ctrl-C, abort signal).
    #[serde(rename = "stop")]
    Caller,
    /// The context (KV cache) is full.
    Context,
}

impl StopReason {
    /// The name in JSON output: "length", "eos", "stop" or "context".
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Length => "length",
            StopReason::Eos => "eos",
            StopReason::Caller => "stop",
            StopReason::Context => "context",
        }
    }

    /// OpenAI's `finish_reason`: "length" when `max_tokens` or the context cut the answer
    /// short, else "stop"; "abort" when the caller cancelled it (`cancelled`: an abort signal,
    /// not a stop string).
    pub fn finish_reason(self, cancelled: bool) -> &'static str {
        match self {
            _ if cancelled => "abort",
            StopReason::Length | StopReason::Context => "length",
            StopReason::Eos | StopReason::Caller => "stop",
        }
    }

    /// What a person reads: why the answer ended.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Length => "length limit reached",
            StopReason::Eos => "end of answer",
            StopReason::Caller => "stopped",
            StopReason::Context => "context full",
        }
    }
}

/// Per-token costs, counted where they happen (reported by `bench`).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub decode_steps: u64,
    pub submits: u64,
    pub uniform_writes: u64,
    pub readback_bytes: u64,
    pub dispatches: u64,
}

pub struct Engine {
    pub gpu: Arc<Gpu>,
    pub model: Qwen3,
    sampler: GpuSampler,
    readback: [wgpu::Buffer; 2],
    /// Tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
    pub counters: Counters,
}

/// Seconds on a monotonic clock that also works in browsers.
pub fn now_seconds() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<web_time::Instant> = OnceLock::new();
    START.get_or_init(web_time::Instant::now).elapsed().as_secs_f64()
}

impl Engine {
    /// Build the model for `config`, then stream its weights from `source`.
    /// `sample_vocab`: ids at or above it (padding rows past the tokenizer) are never sampled.
    pub async fn load(
        config: ModelConfig,
        index: &WeightIndex,
        source: &mut dyn ByteSource,
        sample_vocab: usize,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Engine> {
        let Loading { parts, sink } = Engine::prepare(config, index, sample_vocab, opts).await?;
        load::stream_weights(sink, source, progress)?;
        Ok(Engine::assemble(parts))
    }

    /// Open the GPU, allocate the model and build every pipeline; its weights then arrive
    /// through `Loading::write` (the browser pushes fetch-stream chunks there). GPU errors
    /// (out of memory, a rejected shader) come back as `Error::Gpu`.
    pub async fn prepare(
        config: ModelConfig,
        index: &WeightIndex,
        sample_vocab: usize,
        opts: &LoadOptions,
    ) -> Result<Loading> {
        let gpu = Gpu::new(&opts.gpu).await?;
        let parts = gpu
            .scoped("allocating the model", || {
                let model = Qwen3::new(gpu.clone(), config, index, &opts.model)?;
                let vocab = model.config.vocab_size as u32;
                let sampler = GpuSampler::new(
                    &gpu.device,
                    model.logits_buffer(),
                    vocab,
                    (sample_vocab as u32).min(vocab),
                    &model.step,
                    model.token_buffer(),
                    0,
                    SamplerCaps { subgroups: gpu.has_subgroups },
                );
                let rb = |label| {
                    gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size: 4,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                };
                Ok(Parts { model, sampler, readback: [rb("token readback 0"), rb("token readback 1")] })
            })
            .await?;
        let (dests, norms) = parts.model.weight_routes();
        let sink = load::WeightSink::new(gpu, index, &dests, norms)?;
        Ok(Loading { parts, sink })
    }

    fn assemble(parts: Parts) -> Engine {
        let Parts { model, sampler, readback } = parts;
        Engine { gpu: model.gpu.clone(), model, sampler, readback, cached: Vec::new(), counters: Counters::default() }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Forget the KV cache (the next call prefills from scratch).
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    fn write_step(&mut self, step: Step) {
        self.gpu.queue.write_buffer(&self.model.step, 0, bytemuck::bytes_of(&step));
        self.counters.uniform_writes += 1;
    }

    /// `prompt` tokens plus `extra` positions for generation must fit the KV cache.
    fn check_fits(&self, prompt: usize, extra: usize) -> Result<()> {
        if prompt + extra > self.model.context {
            let need = if extra > 0 { format!(" and generation needs {extra} more position") } else { String::new() };
            return Err(Error::Context(format!(
                "the prompt has {prompt} tokens{need}, but the context holds {} (raise --context, up to the model's {} \
                 positions, or shorten the prompt)",
                self.model.context, self.model.config.max_position_embeddings
            )));
        }
        Ok(())
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size as u32;
        if let Some(t) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Invalid(format!("token id {t} is outside the vocabulary (size {vocab})")));
        }
        Ok(())
    }

    /// Teacher-forced logits of every position: `[tokens.len(), vocab]` row-major.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len() * self.model.config.vocab_size);
        self.logits_with(tokens, &mut |_, rows| out.extend_from_slice(rows)).await?;
        Ok(out)
    }

    /// Teacher-forced logits, handed over a few rows at a time (`on_rows(first_row, rows)`), so
    /// long inputs never need a `[T, vocab]` buffer on either side.
    pub async fn logits_with(&mut self, tokens: &[u32], on_rows: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.check_ids(tokens)?;
        self.check_fits(tokens.len(), 0)?;
        self.cached.clear();
        let vocab = self.model.config.vocab_size;
        let mut pos = 0;
        for chunk in tokens.chunks(self.model.chunk) {
            let n = chunk.len() as u32;
            self.gpu.queue.write_buffer(self.model.token_buffer(), 0, bytemuck::cast_slice(chunk));
            self.write_step(Step { pos: pos as u32, n_tokens: n, ..Default::default() });
            self.submit(|m, pass| m.encode(pass, n, 0));
            let mut h0 = 0;
            while h0 < n {
                let hn = (n - h0).min(self.model.head_chunk as u32);
                self.write_step(Step {
                    pos: pos as u32,
                    n_tokens: n,
                    head_offset: h0,
                    head_rows: hn,
                    ..Default::default()
                });
                self.submit(|m, pass| m.encode_head(pass, n, hn));
                let bytes = self.gpu.read_back(self.model.logits_buffer(), 0, hn as u64 * vocab as u64 * 4).await?;
                on_rows(pos + h0 as usize, bytemuck::cast_slice::<u8, f32>(&bytes));
                h0 += hn;
            }
            pos += chunk.len();
            self.cached.extend_from_slice(chunk);
        }
        Ok(())
    }

    fn submit(&mut self, f: impl FnOnce(&Qwen3, &mut wgpu::ComputePass<'_>)) -> wgpu::SubmissionIndex {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            f(&self.model, &mut pass);
        }
        self.counters.submits += 1;
        self.gpu.queue.submit([enc.finish()])
    }

    /// Encode and submit one pass over `n` tokens at `pos` that ends by sampling the next token
    /// and copying it into `readback[slot]`.
    fn submit_sampling_pass(&mut self, pos: usize, n: u32, step: u32, slot: usize) -> wgpu::SubmissionIndex {
        self.write_step(Step {
            pos: pos as u32,
            n_tokens: n,
            step,
            head_offset: n - 1,
            head_rows: 1,
            ..Default::default()
        });
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.model.encode(&mut pass, n, 1);
            self.sampler.encode(&mut pass);
        }
        enc.copy_buffer_to_buffer(self.model.token_buffer(), 0, &self.readback[slot], 0, 4);
        self.counters.submits += 1;
        self.gpu.queue.submit([enc.finish()])
    }

    /// Generate after `prompt`. `on_token` sees each new token as soon as it is read back and
    /// returns false to stop. Stops by itself on `eos` ids (the eos token is returned), after
    /// `max_tokens`, or when the context is full.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        eos: &[u32],
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let result = self.generate_inner(prompt, params, max_tokens, eos, on_token).await;
        if result.is_err() {
            // What the cache holds is unknown after a failure: the next call starts afresh.
            self.cached.clear();
        }
        result
    }

    async fn generate_inner(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        eos: &[u32],
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        params.validate().map_err(Error::Invalid)?;
        if prompt.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        self.check_ids(prompt)?;
        self.check_fits(prompt.len(), 1)?;
        if max_tokens == 0 {
            return Ok(Generation { prompt_tokens: prompt.len(), ..Default::default() });
        }
        let t0 = now_seconds();
        // Reuse the cached prefix (a chat's earlier turns); at least one token must run to get logits.
        let mut reuse = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        reuse = reuse.min(prompt.len() - 1);
        self.cached.truncate(reuse);
        self.sampler.set_params(&self.gpu.queue, params);
        let window = params.penalty_window as usize;
        self.sampler.reset_history(&self.gpu.queue, &prompt[prompt.len().saturating_sub(window)..]);

        // Prefill: all chunks but the last only fill the cache; the last also samples.
        let mut pos = reuse;
        let rest = &prompt[reuse..];
        let chunks: Vec<&[u32]> = rest.chunks(self.model.chunk).collect();
        let mut last = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let n = chunk.len() as u32;
            self.gpu.queue.write_buffer(self.model.token_buffer(), 0, bytemuck::cast_slice(chunk));
            if i + 1 < chunks.len() {
                self.write_step(Step { pos: pos as u32, n_tokens: n, ..Default::default() });
                self.submit(|m, pass| m.encode(pass, n, 0));
            } else {
                last = Some(self.submit_sampling_pass(pos, n, 0, 0));
            }
            pos += chunk.len();
        }
        self.cached.extend_from_slice(rest);
        let max_new = max_tokens.min(self.model.context - prompt.len());
        let mut out = Generation { prompt_tokens: prompt.len(), reused_tokens: reuse, ..Default::default() };
        let mut pending = last.expect("non-empty prompt");
        let mut t_first = None;
        let mut k = 0usize;
        loop {
            // Submit step k + 1 before reading token k: the GPU keeps busy while we wait.
            let more = out.tokens.len() + 1 < max_new;
            let next = if more {
                let slot = (k + 1) % 2;
                let idx = self.submit_sampling_pass(pos, 1, (k + 1) as u32, slot);
                self.counters.decode_steps += 1;
                self.counters.dispatches +=
                    (self.model.decode_dispatches() + self.sampler.dispatches_per_step() as usize) as u64;
                Some(idx)
            } else {
                None
            };
            let bytes = self.read_token(k % 2, pending).await?;
            self.counters.readback_bytes += 4;
            let token = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if t_first.is_none() {
                t_first = Some(now_seconds());
            }
            out.tokens.push(token);
            if next.is_some() {
                // Step k + 1 wrote this token's keys and values.
                self.cached.push(token);
                pos += 1;
            }
            let keep_going = on_token(token);
            if eos.contains(&token) {
                out.stop = StopReason::Eos;
                break;
            }
            if !keep_going {
                out.stop = StopReason::Caller;
                break;
            }
            match next {
                Some(idx) => pending = idx,
                None => {
                    out.stop = if out.tokens.len() >= max_tokens { StopReason::Length } else { StopReason::Context };
                    break;
                }
            }
            k += 1;
        }
        // Let a speculative step finish before the next call reuses the buffers.
        self.gpu.wait_idle()?;
        let t_end = now_seconds();
        let t_first = t_first.unwrap_or(t_end);
        out.prefill_seconds = t_first - t0;
        out.decode_seconds = t_end - t_first;
        Ok(out)
    }

    async fn read_token(&self, slot: usize, after: wgpu::SubmissionIndex) -> Result<Vec<u8>> {
        self.gpu.map_read_after(&self.readback[slot], Some(after)).await
    }
}

/// Mean negative log-likelihood of `tokens` (every position after the first of each window
/// scored) and the number of scored positions. Texts longer than the context are scored in
/// consecutive, non-overlapping windows of the context length.
pub async fn perplexity(engine: &mut Engine, tokens: &[u32]) -> Result<(f64, usize)> {
    let vocab = engine.model.config.vocab_size;
    let mut total = 0.0f64;
    let mut count = 0usize;
    for window in tokens.chunks(engine.model.context) {
        engine
            .logits_with(window, &mut |first, rows| {
                for (i, row) in rows.chunks_exact(vocab).enumerate() {
                    let t = first + i;
                    if t + 1 >= window.len() {
                        continue;
                    }
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                    let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                    total += lse - row[window[t + 1] as usize] as f64;
                    count += 1;
                }
            })
            .await?;
    }
    if count == 0 {
        return Err(Error::Invalid("nothing to score: need at least 2 tokens".into()));
    }
    Ok((total / count as f64, count))
}
