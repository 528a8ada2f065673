//! Token sampling on the GPU: per generated token only the 4-byte sampled id is ever read back.
//!
//! [`GpuSampler`] appends the dispatches of one sampling step to a compute pass. It reads the
//! last position's logits (f32, in a GPU buffer), applies repetition/presence penalties from a
//! history ring kept on the GPU, then either takes the exact argmax (temperature 0) or samples
//! with temperature, top-k, min-p and top-p, and writes the id to `token_out[token_out_index]`
//! (and into its history ring). The kernels live in `shaders/sample.wgsl`; they need neither
//! subgroups nor `shader-f16` and stay within WebGPU's default limits.
//!
//! Order of operations (temperature > 0): penalties → temperature → top-k (ties at the k-th value
//! are kept, as in Hugging Face) → min-p (relative to the max probability) → top-p over the
//! renormalised survivors (a token is kept while the probability mass strictly before it, in
//! descending order, is < top_p; the top token always survives) → draw from a counter-based RNG
//! keyed by `(seed, step)`, so the same seed and step give the same token.
//!
//! Note: penalties are applied **in place** to the logits buffer (the logits are recomputed by
//! every forward pass, so this is invisible to the engine as long as `encode` runs once per
//! forward pass).

use std::sync::atomic::{AtomicU32, Ordering};

/// Largest supported `top_k` (also the number of survivors sorted in workgroup memory).
pub const MAX_TOP_K: u32 = 1024;
/// Largest supported penalty window (size of the GPU history ring).
pub const MAX_PENALTY_WINDOW: u32 = 1024;

const CHUNK: u32 = 1024; // ids per workgroup in the vocab-wide passes
const STATE_WORDS: u64 = 32;
const HIST_WORDS: u64 = 2050; // 2048 bins + two compaction counters

// state slots (must match the shader)
const S_CURSOR: u64 = 9;

/// Sampling parameters. `Default` is greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 => greedy (exact argmax).
    pub temperature: f32,
    /// 0 => off; at most [`MAX_TOP_K`].
    pub top_k: u32,
    /// 1 => off; in (0, 1].
    pub top_p: f32,
    /// 0 => off; in [0, 1). Keeps tokens with p >= min_p * p_max.
    pub min_p: f32,
    /// 1 => off. Hugging Face semantics for every distinct token in the window:
    /// `logit > 0 ? logit / p : logit * p`.
    pub repetition_penalty: f32,
    /// 0 => off. OpenAI semantics: subtracted once from the logit of every distinct token in
    /// the window.
    pub presence_penalty: f32,
    /// Number of most recent tokens the penalties look at (default 64, at most
    /// [`MAX_PENALTY_WINDOW`]).
    pub penalty_window: u32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            penalty_window: 64,
            seed: 0,
        }
    }
}

/// What a request (CLI flags, an OpenAI-style JSON body) says about sampling; unset fields keep
/// the model's defaults (generation_config.json).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingOverrides {
    pub fn apply(&self, defaults: &SamplingParams) -> SamplingParams {
        let mut p = defaults.clone();
        p.temperature = self.temperature.unwrap_or(p.temperature);
        p.top_k = self.top_k.unwrap_or(p.top_k);
        p.top_p = self.top_p.unwrap_or(p.top_p);
        p.min_p = self.min_p.unwrap_or(p.min_p);
        p.repetition_penalty = self.repetition_penalty.unwrap_or(p.repetition_penalty);
        p.presence_penalty = self.presence_penalty.unwrap_or(p.presence_penalty);
        p.seed = self.seed.unwrap_or(p.seed);
        p
    }
}

impl SamplingParams {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks ranges; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature must be a finite number >= 0 (0 = greedy), got {}", self.temperature));
        }
        if self.temperature > 0.0 && self.temperature < 1e-4 {
            return Err(format!(
                "temperature {} is too small to sample with; use 0 for greedy decoding",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1] (1 = off), got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return Err(format!("min_p must be in [0, 1) (0 = off), got {}", self.min_p));
        }
        if self.top_k > MAX_TOP_K {
            return Err(format!("top_k must be at most {MAX_TOP_K} (0 = off), got {}", self.top_k));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(format!("presence_penalty must be finite (0 = off), got {}", self.presence_penalty));
        }
        if self.penalty_window > MAX_PENALTY_WINDOW {
            return Err(format!("penalty_window must be at most {MAX_PENALTY_WINDOW}, got {}", self.penalty_window));
        }
        Ok(())
    }

    fn penalties_active(&self) -> bool {
        self.penalty_window > 0 && (self.repetition_penalty != 1.0 || self.presence_penalty != 0.0)
    }
}

fn sanitize(p: &SamplingParams) -> SamplingParams {
    let mut q = p.clone();
    if !(q.temperature.is_finite() && q.temperature >= 1e-4) {
        q.temperature = 0.0;
    }
    q.top_k = q.top_k.min(MAX_TOP_K);
    if !(q.top_p > 0.0 && q.top_p <= 1.0) {
        q.top_p = if q.top_p > 0.0 { 1.0 } else { f32::MIN_POSITIVE };
    }
    if !(q.min_p >= 0.0 && q.min_p < 1.0) {
        q.min_p = if q.min_p >= 1.0 { 0.999_999 } else { 0.0 };
    }
    if !(q.repetition_penalty.is_finite() && q.repetition_penalty > 0.0) {
        q.repetition_penalty = 1.0;
    }
    if !q.presence_penalty.is_finite() {
        q.presence_penalty = 0.0;
    }
    q.penalty_window = q.penalty_window.min(MAX_PENALTY_WINDOW);
    q
}

/// What the sampler may use on this device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerCaps {
    /// Subgroup operations are allowed. Currently unused: every kernel works through workgroup
    /// memory, so the sampler runs the same everywhere.
    pub subgroups: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ParamsGpu {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    rep_penalty: f32,
    presence: f32,
    window: u32,
    seed_lo: u32,
    seed_hi: u32,
    mode: u32,
    log_min_p_t: f32,
    k_eff: u32,
    pad: [u32; 4],
}

struct Pipelines {
    penalty: wgpu::ComputePipeline,
    reduce1: wgpu::ComputePipeline,
    reduce2: wgpu::ComputePipeline,
    hist: [wgpu::ComputePipeline; 3],
    select: [wgpu::ComputePipeline; 3],
    compact: wgpu::ComputePipeline,
    final_: wgpu::ComputePipeline,
    fallback: wgpu::ComputePipeline,
}

// encode flags, set by `set_params`
const F_SAMPLE: u32 = 1;
const F_PENALTY: u32 = 2;

/// Sampling on the GPU. See the module docs.
pub struct GpuSampler {
    pipes: Pipelines,
    bind_group: wgpu::BindGroup,
    params_buf: wgpu::Buffer,
    state_buf: wgpu::Buffer,
    history_buf: wgpu::Buffer,
    num_groups: u32,
    flags: AtomicU32,
}

impl GpuSampler {
    /// Builds every pipeline and the bind group once.
    ///
    /// * `logits`: f32 storage buffer with at least `vocab_rows` floats (the last position's
    ///   logits), STORAGE usage. Penalised logits are written back into it.
    /// * `step_uniform`: the engine's 16-byte uniform `{pos, n_tokens, step, _pad}`; `step` is
    ///   the RNG counter.
    /// * `token_out`: u32 storage buffer; the id goes to `token_out[token_out_index]`.
    /// * `sample_vocab`: ids `>= sample_vocab` are never sampled (nor read).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &wgpu::Device,
        logits: &wgpu::Buffer,
        vocab_rows: u32,
        sample_vocab: u32,
        step_uniform: &wgpu::Buffer,
        token_out: &wgpu::Buffer,
        token_out_index: u32,
        caps: SamplerCaps,
    ) -> Self {
        let _ = caps;
        let sv = sample_vocab.min(vocab_rows).max(1);
        assert!(logits.size() >= vocab_rows as u64 * 4, "logits buffer smaller than vocab_rows floats");
        assert!(token_out.size() >= (token_out_index as u64 + 1) * 4, "token_out too small for token_out_index");
        let num_groups = sv.div_ceil(CHUNK);
        assert!(num_groups <= 65535, "vocabulary too large");

        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sample.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../shaders/sample.wgsl").into()),
        });

        let storage = |binding: u32| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let uniform = |binding: u32| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("sampler bgl"),
            entries: &[
                storage(0),
                uniform(1),
                storage(2),
                uniform(3),
                storage(4),
                storage(5),
                storage(6),
                storage(7),
                storage(8),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("sampler layout"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });

        let mk_buf = |label: &str, words: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: words * 4,
                usage,
                mapped_at_creation: false,
            })
        };
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let params_buf = mk_buf(
            "sampler params",
            (std::mem::size_of::<ParamsGpu>() / 4) as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        let state_buf = mk_buf("sampler state", STATE_WORDS, st);
        let hist_buf = mk_buf("sampler hist", HIST_WORDS, st);
        let partials_buf = mk_buf("sampler partials", 3 * num_groups as u64, st);
        let cand_buf = mk_buf("sampler candidates", 2 * MAX_TOP_K as u64, st);
        let history_buf = mk_buf("sampler history", MAX_PENALTY_WINDOW as u64, st);

        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sampler bg"),
            layout: &bgl,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: logits.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: step_uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: token_out.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: params_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: state_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 5, resource: hist_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 6, resource: partials_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 7, resource: cand_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 8, resource: history_buf.as_entire_binding() },
            ],
        });

        let base: [(&str, f64); 4] = [
            ("SV", sv as f64),
            ("NG", num_groups as f64),
            ("CHUNK", CHUNK as f64),
            ("OUT_INDEX", token_out_index as f64),
        ];
        let pipe = |entry: &str, pass: Option<u32>| {
            let mut constants: Vec<(&str, f64)> = base.to_vec();
            if let Some(p) = pass {
                constants.push(("PASS", p as f64));
            }
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // every kernel initialises the workgroup memory it reads
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        let pipes = Pipelines {
            penalty: pipe("penalty", None),
            reduce1: pipe("reduce1", None),
            reduce2: pipe("reduce2", None),
            hist: [pipe("hist_pass", Some(0)), pipe("hist_pass", Some(1)), pipe("hist_pass", Some(2))],
            select: [pipe("select_pass", Some(0)), pipe("select_pass", Some(1)), pipe("select_pass", Some(2))],
            compact: pipe("compact", None),
            final_: pipe("final_pass", None),
            fallback: pipe("fallback", None),
        };
        Self { pipes, bind_group, params_buf, state_buf, history_buf, num_groups, flags: AtomicU32::new(0) }
    }

    /// Uploads the sampling parameters (once per request, not per token). Call
    /// [`SamplingParams::validate`] first to report bad input; here out-of-range values are
    /// sanitised (clamped, or the feature switched off) so the kernels always see sane values.
    pub fn set_params(&self, queue: &wgpu::Queue, params: &SamplingParams) {
        let params = &sanitize(params);
        let sample = params.temperature > 0.0;
        let p = ParamsGpu {
            temperature: if sample { params.temperature } else { 1.0 },
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            rep_penalty: params.repetition_penalty,
            presence: params.presence_penalty,
            window: params.penalty_window.min(MAX_PENALTY_WINDOW),
            seed_lo: params.seed as u32,
            seed_hi: (params.seed >> 32) as u32,
            mode: sample as u32,
            log_min_p_t: if params.min_p > 0.0 && sample { params.temperature * params.min_p.ln() } else { 0.0 },
            k_eff: if params.top_k > 0 { params.top_k } else { MAX_TOP_K },
            pad: [0; 4],
        };
        queue.write_buffer(&self.params_buf, 0, bytemuck::bytes_of(&p));
        let mut f = 0;
        if sample {
            f |= F_SAMPLE;
        }
        if params.penalties_active() {
            f |= F_PENALTY;
        }
        self.flags.store(f, Ordering::Relaxed);
    }

    /// Seeds the penalty window with the prompt's last tokens (the last
    /// [`MAX_PENALTY_WINDOW`] are kept).
    pub fn reset_history(&self, queue: &wgpu::Queue, recent_tokens: &[u32]) {
        let n = recent_tokens.len().min(MAX_PENALTY_WINDOW as usize);
        let tail = &recent_tokens[recent_tokens.len() - n..];
        if n > 0 {
            queue.write_buffer(&self.history_buf, 0, bytemuck::cast_slice(tail));
        }
        queue.write_buffer(&self.state_buf, S_CURSOR * 4, bytemuck::bytes_of(&(n as u32)));
    }

    /// Appends the dispatches of one sampling step (no buffer creation, no queue writes).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        let f = self.flags.load(Ordering::Relaxed);
        let g = self.num_groups;
        let p = &self.pipes;
        pass.set_bind_group(0, &self.bind_group, &[]);
        if f & F_PENALTY != 0 {
            pass.set_pipeline(&p.penalty);
            pass.dispatch_workgroups(1, 1, 1);
        }
        pass.set_pipeline(&p.reduce1);
        pass.dispatch_workgroups(g, 1, 1);
        pass.set_pipeline(&p.reduce2);
        pass.dispatch_workgroups(1, 1, 1);
        if f & F_SAMPLE != 0 {
            for (hist, select) in p.hist.iter().zip(&p.select) {
                pass.set_pipeline(hist);
                pass.dispatch_workgroups(g, 1, 1);
                pass.set_pipeline(select);
                pass.dispatch_workgroups(1, 1, 1);
            }
            pass.set_pipeline(&p.compact);
            pass.dispatch_workgroups(g, 1, 1);
            pass.set_pipeline(&p.final_);
            pass.dispatch_workgroups(1, 1, 1);
            pass.set_pipeline(&p.fallback);
            pass.dispatch_workgroups(1, 1, 1);
        }
    }

    /// Dispatches `encode` appends with the current parameters: greedy 2 (+1 with penalties),
    /// sampling 11 (+1 with penalties).
    pub fn dispatches_per_step(&self) -> u32 {
        let f = self.flags.load(Ordering::Relaxed);
        let mut n = 2;
        if f & F_SAMPLE != 0 {
            n += 9;
        }
        if f & F_PENALTY != 0 {
            n += 1;
        }
        n
    }

    /// Internal state buffer (debugging and tests): slot 11 = survivors sorted in the last
    /// sampling step, 12 = number of full-vocab fallback draws so far, 14 = nucleus size.
    pub fn state_buffer(&self) -> &wgpu::Buffer {
        &self.state_buf
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    const VOCAB: u32 = 151936;
    const SV: u32 = 151669;
    const OUT_IDX: u32 = 1;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        }
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    struct H {
        device: wgpu::Device,
        queue: wgpu::Queue,
        logits: wgpu::Buffer,
        step: wgpu::Buffer,
        tok: wgpu::Buffer,
        s: GpuSampler,
    }

    fn harness() -> Option<H> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("note: no wgpu adapter ({e}); skipping GPU sampler test");
                return None;
            }
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        }))
        .ok()?;
        let logits = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: VOCAB as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let step = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let tok = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let s = GpuSampler::new(&device, &logits, VOCAB, SV, &step, &tok, OUT_IDX, SamplerCaps::default());
        Some(H { device, queue, logits, step, tok, s })
    }

    impl H {
        fn set_logits(&self, l: &[f32]) {
            self.queue.write_buffer(&self.logits, 0, bytemuck::cast_slice(l));
        }
        fn read_u32(&self, buf: &wgpu::Buffer, words: u64) -> Vec<u32> {
            let rb = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: words * 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buf, 0, &rb, 0, words * 4);
            self.queue.submit([enc.finish()]);
            rb.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
            self.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            bytemuck::cast_slice(&rb.slice(..).get_mapped_range().unwrap()).to_vec()
        }
        /// Runs one sampling step per entry of `steps` in a single submission; returns the ids.
        /// If `relog` is given, the logits are restored before every step (penalties modify them).
        fn run(&self, steps: &[u32], relog: Option<&wgpu::Buffer>) -> Vec<u32> {
            let n = steps.len() as u64;
            let mut src = Vec::with_capacity(steps.len() * 4);
            for &s in steps {
                src.extend_from_slice(&[0u32, 1, s, 0]);
            }
            let src_buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: n * 16,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.queue.write_buffer(&src_buf, 0, bytemuck::cast_slice(&src));
            let res = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: n * 4,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            for i in 0..n {
                if let Some(orig) = relog {
                    enc.copy_buffer_to_buffer(orig, 0, &self.logits, 0, VOCAB as u64 * 4);
                }
                enc.copy_buffer_to_buffer(&src_buf, i * 16, &self.step, 0, 16);
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    self.s.encode(&mut pass);
                }
                enc.copy_buffer_to_buffer(&self.tok, OUT_IDX as u64 * 4, &res, i * 4, 4);
            }
            self.queue.submit([enc.finish()]);
            self.read_u32(&res, n)
        }
        fn sample_many(&self, p: &SamplingParams, first_step: u32, n: u32) -> Vec<u32> {
            self.s.set_params(&self.queue, p);
            let steps: Vec<u32> = (first_step..first_step + n).collect();
            let mut out = Vec::new();
            for ch in steps.chunks(500) {
                out.extend(self.run(ch, None));
            }
            out
        }
    }

    fn cpu_argmax(l: &[f32]) -> u32 {
        let mut best = 0usize;
        for i in 1..SV as usize {
            if l[i] > l[best] || (l[best].is_nan() && !l[i].is_nan()) {
                best = i;
            }
        }
        best as u32
    }

    /// CPU reference of the sampling distribution: (id, probability), descending.
    fn cpu_dist(l: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
        let t = p.temperature as f64;
        let mut v: Vec<(u32, f64)> =
            (0..SV as usize).filter(|&i| l[i].is_finite()).map(|i| (i as u32, l[i] as f64)).collect();
        v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        let m = v[0].1;
        if p.top_k > 0 && (p.top_k as usize) < v.len() {
            let kth = v[p.top_k as usize - 1].1;
            v.retain(|e| e.1 >= kth);
        }
        let mut pr: Vec<(u32, f64)> = v.iter().map(|&(i, x)| (i, ((x - m) / t).exp())).collect();
        if p.min_p > 0.0 {
            pr.retain(|e| e.1 >= p.min_p as f64);
        }
        let z: f64 = pr.iter().map(|e| e.1).sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = 0;
            for e in &pr {
                if acc < p.top_p as f64 * z {
                    keep += 1;
                }
                acc += e.1;
            }
            pr.truncate(keep.max(1));
        }
        let z: f64 = pr.iter().map(|e| e.1).sum();
        pr.iter().map(|&(i, x)| (i, x / z)).collect()
    }

    fn random_logits(rng: &mut Rng, ties: bool) -> Vec<f32> {
        let mut l: Vec<f32> = (0..VOCAB)
            .map(|_| if ties { ((rng.f32() * 64.0).floor() / 8.0) - 4.0 } else { rng.f32() * 20.0 - 10.0 })
            .collect();
        for x in &mut l[SV as usize..] {
            *x = 1e30; // padded rows: larger than everything, must be ignored
        }
        l
    }

    #[test]
    fn greedy_matches_cpu_argmax() {
        let Some(h) = harness() else { return };
        h.s.set_params(&h.queue, &SamplingParams::greedy());
        assert_eq!(h.s.dispatches_per_step(), 2);
        let mut rng = Rng(1);
        for trial in 0..6 {
            let mut l = random_logits(&mut rng, trial % 2 == 0);
            if trial == 3 {
                // a few NaN / inf values, max tied at several places including near the end
                l[5] = f32::NAN;
                l[7] = f32::NEG_INFINITY;
                l[1000] = 50.0;
                l[140000] = 50.0;
                l[SV as usize - 1] = 50.0;
            }
            if trial == 4 {
                l[SV as usize - 1] = 99.0; // the last sampleable id
            }
            h.set_logits(&l);
            let got = h.run(&[trial], None)[0];
            assert_eq!(got, cpu_argmax(&l), "trial {trial}");
        }
    }

    #[test]
    fn top_k1_equals_greedy_and_seeds() {
        let Some(h) = harness() else { return };
        let mut rng = Rng(7);
        let l = random_logits(&mut rng, false);
        h.set_logits(&l);
        let am = cpu_argmax(&l);
        let p = SamplingParams { temperature: 1.0, top_k: 1, seed: 3, ..Default::default() };
        let got = h.sample_many(&p, 0, 20);
        assert!(got.iter().all(|&t| t == am), "{got:?} vs {am}");

        // near-uniform distribution over 200 tokens
        let mut l = vec![-30.0f32; VOCAB as usize];
        for i in 0..200 {
            l[i * 700] = 1.0 + (i as f32) * 1e-3;
        }
        h.set_logits(&l);
        let p = SamplingParams { temperature: 1.0, seed: 42, ..Default::default() };
        let a = h.sample_many(&p, 10, 64);
        let b = h.sample_many(&p, 10, 64);
        let c = h.sample_many(&SamplingParams { seed: 43, ..p.clone() }, 10, 64);
        assert_eq!(a, b, "same seed and steps must give the same ids");
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        assert!(same < 16, "different seeds gave {same}/64 equal ids");
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 40, "ids over steps not varied: {}", distinct.len());
        assert!(a.iter().all(|&t| t % 700 == 0 && t < 200 * 700));
    }

    fn check_distribution(h: &H, l: &[f32], p: &SamplingParams, n: u32) {
        h.set_logits(l);
        let want = cpu_dist(l, p);
        let got = h.sample_many(p, 1000, n);
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in &got {
            *counts.entry(t).or_default() += 1;
        }
        // membership: allow for f32-vs-f64 summation at the nucleus boundary
        let lenient =
            SamplingParams { top_p: if p.top_p < 1.0 { (p.top_p + 1e-4).min(1.0) } else { 1.0 }, ..p.clone() };
        let allowed: std::collections::HashMap<u32, f64> = cpu_dist(l, &lenient).into_iter().collect();
        for (&t, &c) in &counts {
            assert!(
                allowed.contains_key(&t),
                "{p:?}: token {t} (logit {}) sampled {c} times but is outside the kept set {want:?}",
                l[t as usize]
            );
        }
        let nf = n as f64;
        let mut chi2 = 0.0;
        for &(t, pt) in &want {
            let f = *counts.get(&t).unwrap_or(&0) as f64 / nf;
            let sd = (pt * (1.0 - pt) / nf).sqrt();
            assert!((f - pt).abs() <= 5.0 * sd + 1e-3, "{p:?}: token {t}: freq {f} vs p {pt}");
            chi2 += (f - pt).powi(2) * nf / pt;
        }
        eprintln!("{p:?}: {} kept tokens, chi2 {chi2:.1}", want.len());
    }

    /// 16 distinct logits at scattered ids; the rest at -40 or uniform in [lo, lo + 4).
    fn small_logits(background: Option<(&mut Rng, f32)>) -> Vec<f32> {
        let mut l = vec![-40.0f32; VOCAB as usize];
        if let Some((rng, lo)) = background {
            for x in l.iter_mut() {
                *x = lo + rng.f32() * 4.0;
            }
        }
        let special = [3.0f32, 2.7, 2.5, 2.2, 2.0, 1.9, 1.5, 1.2, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0];
        for (j, &v) in special.iter().enumerate() {
            l[(j * 9431 + 17) % SV as usize] = v;
        }
        for x in &mut l[SV as usize..] {
            *x = 100.0;
        }
        l
    }

    #[test]
    fn distribution_matches_cpu() {
        let Some(h) = harness() else { return };
        let l = small_logits(None);
        let cases = [
            SamplingParams { temperature: 0.7, top_k: 5, seed: 1, ..Default::default() },
            SamplingParams { temperature: 1.0, top_p: 0.8, seed: 2, ..Default::default() },
            SamplingParams { temperature: 1.3, min_p: 0.1, seed: 3, ..Default::default() },
            SamplingParams { temperature: 0.8, top_k: 10, top_p: 0.9, min_p: 0.05, seed: 4, ..Default::default() },
            SamplingParams { temperature: 1.0, seed: 5, ..Default::default() },
        ];
        const N: u32 = 800;
        for p in &cases {
            check_distribution(&h, &l, p, N);
        }
        // many survivors of min-p (more than the sorted cap): top-p over the top 1024 plus the total mass
        // (background mass ~0.23 of ~86: the 0.9-nucleus lies within the 16)
        let mut rng = Rng(11);
        let lb = small_logits(Some((&mut rng, -16.0)));
        let p = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 6, ..Default::default() };
        let fallbacks_before = h.read_u32(h.s.state_buffer(), 16)[12];
        check_distribution(&h, &lb, &p, N);
        let st = h.read_u32(h.s.state_buffer(), 16);
        assert_eq!(st[12], fallbacks_before, "no full-vocab fallback expected");
        assert_eq!(st[11], MAX_TOP_K);
        // background mass ~12.6 of ~99: the 0.9-nucleus takes thousands of background ids,
        // more than the sorted list holds, so the full-vocab fallback decides it
        let lb = small_logits(Some((&mut rng, -12.0)));
        let p = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 7, ..Default::default() };
        check_distribution(&h, &lb, &p, N);
        let st2 = h.read_u32(h.s.state_buffer(), 16);
        assert_eq!(st2[12], st[12] + N, "full-vocab fallback expected");
    }

    #[test]
    fn fallback_full_vocab_nucleus() {
        let Some(h) = harness() else { return };
        // flat distribution: the 0.5-nucleus holds ~75k tokens, beyond the sorted cap
        let mut rng = Rng(5);
        let mut l: Vec<f32> = (0..VOCAB).map(|_| rng.f32()).collect();
        for x in &mut l[SV as usize..] {
            *x = 100.0;
        }
        h.set_logits(&l);
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, seed: 9, ..Default::default() };
        let got = h.sample_many(&p, 0, 200);
        let st = h.read_u32(h.s.state_buffer(), 16);
        assert_eq!(st[12], 200, "every draw should have used the fallback");
        // nucleus threshold on the CPU
        let mut v: Vec<f32> = l[..SV as usize].to_vec();
        v.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let m = v[0] as f64;
        let z: f64 = v.iter().map(|&x| (x as f64 - m).exp()).sum();
        let mut acc = 0.0;
        let mut thr = v[0];
        for &x in &v {
            if acc >= 0.5 * z {
                break;
            }
            thr = x;
            acc += (x as f64 - m).exp();
        }
        let tol = 1e-4; // float summation order at the boundary
        for &t in &got {
            assert!(
                t < SV && l[t as usize] >= thr - tol,
                "token {t} logit {} below nucleus threshold {thr}",
                l[t as usize]
            );
        }
        let distinct: std::collections::HashSet<_> = got.iter().collect();
        assert!(distinct.len() > 190);
        // the same with top_p off: sample from everything
        let p = SamplingParams { temperature: 1.0, seed: 9, ..Default::default() };
        let got = h.sample_many(&p, 0, 100);
        assert!(got.iter().all(|&t| t < SV));
        let below = got.iter().filter(|&&t| l[t as usize] < thr).count();
        assert!(below > 20, "top_p = 1 should reach below the 0.5 nucleus: {below}");
    }

    #[test]
    fn penalties_follow_cpu_formula() {
        let Some(h) = harness() else { return };
        let (a, b, c) = (100u32, 200u32, 300u32);
        let mut base = vec![-5.0f32; VOCAB as usize];
        base[a as usize] = 5.0;
        base[b as usize] = 4.0;
        base[c as usize] = -1.0;
        for x in &mut base[SV as usize..] {
            *x = 50.0;
        }
        let run1 = |l: &[f32], p: &SamplingParams, hist: &[u32]| -> (u32, Vec<f32>) {
            h.set_logits(l);
            h.s.set_params(&h.queue, p);
            h.s.reset_history(&h.queue, hist);
            let t = h.run(&[0], None)[0];
            let lv: Vec<f32> = bytemuck::cast_slice(&h.read_u32(&h.logits, VOCAB as u64)).to_vec();
            (t, lv)
        };
        // repetition penalty, positive logit: 5 / 1.5 < 4
        let p = SamplingParams { repetition_penalty: 1.5, ..Default::default() };
        assert_eq!(h.s.dispatches_per_step(), 2);
        let (t, lv) = run1(&base, &p, &[7, a, 9, a]);
        assert_eq!(h.s.dispatches_per_step(), 3);
        assert_eq!(t, b);
        assert_eq!(lv[a as usize], 5.0f32 / 1.5);
        assert_eq!(lv[7], -5.0f32 * 1.5);
        assert_eq!(lv[b as usize], 4.0);
        // negative logit is multiplied
        let mut l2 = vec![-1.2f32; VOCAB as usize];
        l2[c as usize] = -1.0;
        let (t, lv) = run1(&l2, &p, &[c]);
        assert_eq!(lv[c as usize], -1.0f32 * 1.5);
        assert_eq!(t, 0);
        // presence: subtracted once per distinct token
        let p = SamplingParams { presence_penalty: 0.4, ..Default::default() };
        let mut l3 = base.clone();
        l3[b as usize] = 4.5;
        let (t, lv) = run1(&l3, &p, &[a, a, a]);
        assert_eq!(lv[a as usize], 5.0f32 - 0.4);
        assert_eq!(t, a);
        let p = SamplingParams { presence_penalty: 0.6, ..Default::default() };
        let (t, _) = run1(&l3, &p, &[a, a, a]);
        assert_eq!(t, b);
        // both: repetition first, then presence
        let p = SamplingParams { repetition_penalty: 1.25, presence_penalty: 0.5, ..Default::default() };
        let (_, lv) = run1(&base, &p, &[a]);
        assert_eq!(lv[a as usize], 5.0f32 / 1.25 - 0.5);
        // outside the window: not penalised
        let mut hist = vec![a];
        hist.extend(std::iter::repeat_n(11u32, 64));
        let p = SamplingParams { repetition_penalty: 1.5, penalty_window: 64, ..Default::default() };
        let (t, lv) = run1(&base, &p, &hist);
        assert_eq!(t, a);
        assert_eq!(lv[a as usize], 5.0);
        // sampled tokens enter the history: greedy with a strong presence penalty alternates
        let p = SamplingParams { presence_penalty: 3.0, penalty_window: 1, ..Default::default() };
        h.set_logits(&base);
        h.s.set_params(&h.queue, &p);
        h.s.reset_history(&h.queue, &[]);
        let orig = h.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: VOCAB as u64 * 4,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        h.queue.write_buffer(&orig, 0, bytemuck::cast_slice(&base));
        let seq = h.run(&[0, 1, 2, 3], Some(&orig));
        assert_eq!(seq, vec![a, b, a, b]);
        // the same through the sampling path (top_k = 1)
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            presence_penalty: 3.0,
            penalty_window: 1,
            ..Default::default()
        };
        h.s.set_params(&h.queue, &p);
        h.s.reset_history(&h.queue, &[b]);
        let seq = h.run(&[0, 1, 2], Some(&orig));
        assert_eq!(seq, vec![a, b, a]);
    }

    #[test]
    fn validate_messages() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { min_p: 1.0, ..Default::default() },
            SamplingParams { top_k: MAX_TOP_K + 1, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
            SamplingParams { presence_penalty: f32::INFINITY, ..Default::default() },
            SamplingParams { penalty_window: MAX_PENALTY_WINDOW + 1, ..Default::default() },
        ];
        for p in bad {
            let e = p.validate().unwrap_err();
            assert!(!e.is_empty());
        }
    }

    #[test]
    #[ignore]
    fn bench_step_time() {
        let Some(h) = harness() else { return };
        let mut rng = Rng(3);
        let l = random_logits(&mut rng, false);
        h.set_logits(&l);
        for (name, p) in [
            ("greedy", SamplingParams::greedy()),
            (
                "T0.6 top_p0.95 top_k20",
                SamplingParams { temperature: 0.6, top_p: 0.95, top_k: 20, ..Default::default() },
            ),
            (
                "T0.7 top_p0.8 min_p0.05",
                SamplingParams { temperature: 0.7, top_p: 0.8, min_p: 0.05, ..Default::default() },
            ),
            ("k64", SamplingParams { temperature: 1.0, top_k: 64, ..Default::default() }),
            ("k256", SamplingParams { temperature: 1.0, top_k: 256, ..Default::default() }),
            ("k1024", SamplingParams { temperature: 1.0, top_k: 1024, ..Default::default() }),
            ("T1 top_p0.9 (no top-k)", SamplingParams { temperature: 1.0, top_p: 0.9, ..Default::default() }),
        ] {
            h.s.set_params(&h.queue, &p);
            let steps: Vec<u32> = (0..20).collect();
            h.run(&steps[..5], None);
            let t0 = std::time::Instant::now();
            h.run(&steps, None);
            let dt = t0.elapsed().as_secs_f64() / 20.0;
            eprintln!("{name}: {:.3} ms/step, {} dispatches", dt * 1e3, h.s.dispatches_per_step());
        }
    }
}
