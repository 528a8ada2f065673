//! Qwen3 (dense) on the GPU. Reads like mlx-lm's `models/qwen3.py`: a decoder layer is
//!     h   = x + o_proj(attention(rope(q_norm(q), k_norm(k)), v))     with q, k, v = proj(rmsnorm(x))
//!     out = h + down_proj(silu(gate_proj(y)) * up_proj(y))            with y = rmsnorm(h)
//! and the model is embed -> layers -> rmsnorm -> lm_head (or the tied embedding).

pub mod linear;
pub mod load;
pub mod ops;

use std::sync::Arc;

use linear::{module_format, Matrix, WeightFormat};
use ops::{GridKind, KernelShape, ModelKernels, Ops, Out, Step};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::weights::{DType, WeightIndex};

/// Load-time choices that are not in config.json.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// KV-cache length in tokens (prompt + generation). `None`: 4096, or less where the model
    /// or the storage-binding limit allows less.
    pub context: Option<usize>,
    /// Most tokens per prefill pass.
    pub max_chunk: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { context: None, max_chunk: 128 }
    }
}

struct Layer {
    input_norm: wgpu::Buffer,
    post_norm: wgpu::Buffer,
    q_norm: wgpu::Buffer,
    k_norm: wgpu::Buffer,
    /// q, k and v stacked by rows (one matrix when their formats agree).
    qkv: Vec<Matrix>,
    o_proj: Matrix,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
}

/// Activations, sized for the largest pass (`chunk` tokens).
struct Activations {
    tokens: wgpu::Buffer,
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    act: wgpu::Buffer,
    /// Only when gate and up differ in format and SwiGLU runs as its own kernel.
    gate_up: Option<wgpu::Buffer>,
    logits: wgpu::Buffer,
}

pub struct Qwen3 {
    pub config: ModelConfig,
    pub gpu: Arc<Gpu>,
    pub context: usize,
    /// Most tokens per forward pass.
    pub chunk: usize,
    /// Most logits rows per pass (the logits buffer must fit one binding).
    pub head_chunk: usize,
    pub step: wgpu::Buffer,
    embed: Matrix,
    lm_head: Option<Matrix>,
    layers: Vec<Layer>,
    final_norm: wgpu::Buffer,
    act: Activations,
    ops: Ops,
    /// `ops[..body_ops]` is the trunk, `ops[body_ops..]` the final norm and lm_head.
    body_ops: usize,
    /// Small f32 tensors (norm weights) to load: (tensor, buffer, elements).
    norms: Vec<(String, wgpu::Buffer, usize)>,
}

impl Qwen3 {
    /// Allocate every buffer and prepare every dispatch for this config; weights are loaded after.
    pub fn new(gpu: Arc<Gpu>, config: ModelConfig, index: &WeightIndex, opts: &ModelOptions) -> Result<Qwen3> {
        if config.moe.is_some() {
            return Err(Error::Config("qwen3_moe models are not supported yet by this build".into()));
        }
        let c = &config;
        let (hidden, heads, kv_heads, head_dim, inter) =
            (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size);
        let q_rows = heads * head_dim;
        let kv_rows = kv_heads * head_dim;
        let qkv_width = q_rows + 2 * kv_rows;
        // Each layer's K (and V) cache is one binding: [kv_heads, context, head_dim] f32.
        let max_context_for_binding = (gpu.max_binding / (kv_heads * head_dim * 4) as u64) as usize;
        let context = match opts.context {
            Some(n) if n == 0 || n > c.max_position_embeddings => {
                return Err(Error::Limit(format!(
                    "a context of {n} tokens is not possible: this model has {} positions",
                    c.max_position_embeddings
                )));
            }
            Some(n) => n,
            None => 4096.min(c.max_position_embeddings).min(max_context_for_binding),
        };
        let quant = c.quantization.as_ref();
        let mut norms = Vec::new();
        let mut norm = |name: String, len: usize| -> Result<wgpu::Buffer> {
            check_vector(index, &name, len)?;
            let b = gpu.storage(&name, len as u64 * 4)?;
            norms.push((name, b.clone(), len));
            Ok(b)
        };

        // The largest activation row decides how many tokens one pass may hold.
        let widest = [hidden, qkv_width, inter * 2, q_rows].into_iter().max().unwrap() as u64 * 4;
        let chunk = (opts.max_chunk as u64).min(gpu.max_binding / widest).max(1) as usize;
        let head_chunk = (chunk as u64).min(gpu.max_binding / (c.vocab_size as u64 * 4)).max(1) as usize;
        if gpu.max_binding < c.vocab_size as u64 * 4 {
            return Err(Error::Limit(format!(
                "one row of logits ({} bytes) exceeds the storage-binding limit of {} bytes",
                c.vocab_size * 4,
                gpu.max_binding
            )));
        }
        let cache_bytes = (kv_heads * context * head_dim * 4) as u64;
        if cache_bytes > gpu.max_binding {
            return Err(Error::Limit(format!(
                "a layer's KV cache for a context of {context} tokens needs {cache_bytes} bytes, more than the \
                 storage-binding limit of {} bytes: use a shorter context (at most {max_context_for_binding})",
                gpu.max_binding
            )));
        }

        let matrix = |path: &str, rows: usize, cols: usize| -> Result<(WeightFormat, linear::ModuleTensors)> {
            module_format(index, quant, path, rows, cols)
        };
        let single = |path: &str, rows: usize, cols: usize| -> Result<Matrix> {
            let (f, t) = matrix(path, rows, cols)?;
            Matrix::new(&gpu, path, cols, f, vec![t])
        };

        let embed = single("model.embed_tokens", c.vocab_size, hidden)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(single("lm_head", c.vocab_size, hidden)?) };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let q = matrix(&format!("{p}.self_attn.q_proj"), q_rows, hidden)?;
            let k = matrix(&format!("{p}.self_attn.k_proj"), kv_rows, hidden)?;
            let v = matrix(&format!("{p}.self_attn.v_proj"), kv_rows, hidden)?;
            // Stack runs of equal format so q/k/v usually cost one dispatch.
            let mut qkv: Vec<Matrix> = Vec::new();
            let mut run: Vec<(WeightFormat, linear::ModuleTensors)> = Vec::new();
            for part in [q, k, v] {
                if run.last().is_some_and(|(f, _)| *f != part.0) {
                    qkv.push(stack(&gpu, &format!("{p}.self_attn.qkv"), hidden, std::mem::take(&mut run))?);
                }
                run.push(part);
            }
            qkv.push(stack(&gpu, &format!("{p}.self_attn.qkv"), hidden, run)?);
            layers.push(Layer {
                input_norm: norm(format!("{p}.input_layernorm.weight"), hidden)?,
                post_norm: norm(format!("{p}.post_attention_layernorm.weight"), hidden)?,
                q_norm: norm(format!("{p}.self_attn.q_norm.weight"), head_dim)?,
                k_norm: norm(format!("{p}.self_attn.k_norm.weight"), head_dim)?,
                qkv,
                o_proj: single(&format!("{p}.self_attn.o_proj"), hidden, q_rows)?,
                gate: single(&format!("{p}.mlp.gate_proj"), inter, hidden)?,
                up: single(&format!("{p}.mlp.up_proj"), inter, hidden)?,
                down: single(&format!("{p}.mlp.down_proj"), hidden, inter)?,
                k_cache: gpu.storage(&format!("{p}.k_cache"), cache_bytes)?,
                v_cache: gpu.storage(&format!("{p}.v_cache"), cache_bytes)?,
            });
        }
        let final_norm = norm("model.norm.weight".into(), hidden)?;

        let fused_mlp = layers.iter().all(|l| l.gate.format == l.up.format);
        let t = chunk as u64;
        let act = Activations {
            tokens: gpu.storage("tokens", t * 4)?,
            x: gpu.storage("x", t * hidden as u64 * 4)?,
            xn: gpu.storage("x_normed", t * hidden as u64 * 4)?,
            qkv: gpu.storage("qkv", t * qkv_width as u64 * 4)?,
            attn: gpu.storage("attn", t * q_rows as u64 * 4)?,
            act: gpu.storage("mlp_act", t * inter as u64 * 4)?,
            gate_up: if fused_mlp { None } else { Some(gpu.storage("gate_up", t * 2 * inter as u64 * 4)?) },
            logits: gpu.storage("logits", head_chunk as u64 * c.vocab_size as u64 * 4)?,
        };
        let step = gpu.uniform("step", std::mem::size_of::<Step>() as u64)?;
        let kernels = ModelKernels::new(
            &gpu,
            &KernelShape {
                hidden,
                heads,
                kv_heads,
                head_dim,
                context,
                theta: c.rope_theta,
                eps: c.rms_norm_eps,
                intermediate: inter,
            },
        );
        let ops = Ops::new(gpu.clone(), step.clone())?;
        let mut model = Qwen3 {
            config,
            gpu,
            context,
            chunk,
            head_chunk,
            step,
            embed,
            lm_head,
            layers,
            final_norm,
            act,
            ops,
            body_ops: 0,
            norms,
        };
        model.record(&kernels);
        Ok(model)
    }

    /// The forward pass, recorded once as a dispatch list.
    fn record(&mut self, k: &ModelKernels) {
        let (hidden, inter) = (self.config.hidden_size, self.config.intermediate_size);
        let (heads, kv_heads) = (self.config.num_heads as u32, self.config.num_kv_heads as u32);
        let qkv_width = (self.config.num_heads + 2 * self.config.num_kv_heads) * self.config.head_dim;
        let a = &self.act;
        let ops = &mut self.ops;
        ops.gather(&self.embed, &a.tokens, &a.x);
        for layer in &self.layers {
            // h = x + o_proj(attention(rope(q, k), v)),  q, k, v = qkv(rmsnorm(x))
            ops.custom(&k.rmsnorm, "rmsnorm", &[&a.x, &a.xn, &layer.input_norm], GridKind::PerToken, false);
            let mut col = 0;
            for m in &layer.qkv {
                ops.linear(m, &a.xn, &a.qkv, col, qkv_width, Out::Set, false);
                col += m.rows;
            }
            let rope_bufs = [&a.qkv, &layer.q_norm, &layer.k_norm, &layer.k_cache, &layer.v_cache];
            ops.custom(&k.rope, "rope", &rope_bufs, GridKind::PerTokenSlots(heads + 2 * kv_heads), false);
            let attn_bufs = [&a.qkv, &layer.k_cache, &layer.v_cache, &a.attn];
            ops.custom(&k.attention, "attention", &attn_bufs, GridKind::PerTokenSlots(heads), false);
            ops.linear(&layer.o_proj, &a.attn, &a.x, 0, hidden, Out::Add, false);

            // out = h + down(silu(gate(y)) * up(y)),  y = rmsnorm(h)
            ops.custom(&k.rmsnorm, "rmsnorm", &[&a.x, &a.xn, &layer.post_norm], GridKind::PerToken, false);
            match &a.gate_up {
                None => ops.linear_swiglu(&layer.gate, &layer.up, &a.xn, &a.act),
                Some(gu) => {
                    ops.linear(&layer.gate, &a.xn, gu, 0, 2 * inter, Out::Set, false);
                    ops.linear(&layer.up, &a.xn, gu, inter, 2 * inter, Out::Set, false);
                    ops.custom(&k.swiglu, "swiglu", &[gu, &a.act], GridKind::PerTokenSpan(inter as u32), false);
                }
            }
            ops.linear(&layer.down, &a.act, &a.x, 0, hidden, Out::Add, false);
        }
        self.body_ops = ops.len();
        // logits = lm_head(rmsnorm(x)) on the head rows only
        ops.custom(&k.rmsnorm_head, "rmsnorm", &[&a.x, &a.xn, &self.final_norm], GridKind::PerToken, true);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        ops.linear(head, &a.xn, &a.logits, 0, self.config.vocab_size, Out::Set, true);
    }

    /// Every (tensor -> GPU bytes) route the loader must serve, plus the norm vectors.
    pub fn weight_routes(&self) -> (Vec<linear::Dest>, &[(String, wgpu::Buffer, usize)]) {
        let mut dests = self.embed.destinations();
        if let Some(h) = &self.lm_head {
            dests.extend(h.destinations());
        }
        for l in &self.layers {
            for m in l.qkv.iter().chain([&l.o_proj, &l.gate, &l.up, &l.down]) {
                dests.extend(m.destinations());
            }
        }
        (dests, &self.norms)
    }

    /// Bytes of weights a decode step reads (each matrix once; the embedding only one row).
    pub fn weight_bytes(&self) -> (u64, u64) {
        let mut total = self.embed.bytes();
        let mut per_token = self.embed.bytes() / self.config.vocab_size as u64;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if let Some(h) = &self.lm_head {
            total += h.bytes();
        }
        per_token += head.bytes();
        for l in &self.layers {
            for m in l.qkv.iter().chain([&l.o_proj, &l.gate, &l.up, &l.down]) {
                total += m.bytes();
                per_token += m.bytes();
            }
        }
        let norms: u64 = self.norms.iter().map(|n| n.2 as u64 * 4).sum();
        (total + norms, per_token + norms)
    }

    pub fn describe_formats(&self) -> Vec<(String, String)> {
        let mut out = vec![("model.embed_tokens".to_string(), self.embed.format.describe())];
        if let Some(h) = &self.lm_head {
            out.push(("lm_head".into(), h.format.describe()));
        }
        if let Some(l) = self.layers.first() {
            for m in l.qkv.iter().chain([&l.o_proj, &l.gate, &l.up, &l.down]) {
                out.push((m.name.clone(), m.format.describe()));
            }
        }
        out
    }

    /// Weight bytes the decode kernels read per token, counted op by op as they were recorded.
    pub fn decode_weight_reads(&self) -> u64 {
        let norms: u64 = self.norms.iter().map(|n| n.2 as u64 * 4).sum();
        self.ops.weight_reads_per_token + norms
    }

    pub fn token_buffer(&self) -> &wgpu::Buffer {
        &self.act.tokens
    }

    pub fn logits_buffer(&self) -> &wgpu::Buffer {
        &self.act.logits
    }

    pub fn dispatches(&self, n_tokens: u32) -> usize {
        let _ = n_tokens;
        self.ops.len()
    }

    /// Record a forward pass of `n_tokens` tokens (ids already in the token buffer, positions
    /// from the step uniform). With `head_rows > 0`, the final norm and lm_head run on those rows.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, head_rows: u32) {
        self.ops.encode(pass, 0..self.body_ops, n_tokens, head_rows);
        if head_rows > 0 {
            self.ops.encode(pass, self.body_ops..self.ops.len(), n_tokens, head_rows);
        }
    }

    /// Only the final norm and lm_head (the logits command computes many rows in several passes).
    pub fn encode_head(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, head_rows: u32) {
        self.ops.encode(pass, self.body_ops..self.ops.len(), n_tokens, head_rows);
    }
}

fn stack(gpu: &Gpu, name: &str, cols: usize, parts: Vec<(WeightFormat, linear::ModuleTensors)>) -> Result<Matrix> {
    let format = parts[0].0;
    Matrix::new(gpu, name, cols, format, parts.into_iter().map(|p| p.1).collect())
}

fn check_vector(index: &WeightIndex, name: &str, len: usize) -> Result<()> {
    let t = index.get(name).ok_or_else(|| {
        Error::weights(index.files.first().cloned().unwrap_or_default(), format!("tensor {name} is missing"))
    })?;
    if t.shape != [len] || t.dtype == DType::U32 {
        return Err(Error::weights(
            index.file_name(t),
            format!("tensor {name} is {:?} {:?}, expected a float vector of {len}", t.dtype, t.shape),
        ));
    }
    Ok(())
}
