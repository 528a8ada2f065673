//! Qwen3 (dense and MoE) on the GPU. Reads like mlx-lm's `models/qwen3.py` and `qwen3_moe.py`:
//! a decoder layer is
//!     h   = x + o_proj(attention(rope(q_norm(q), k_norm(k)), v))     with q, k, v = proj(rmsnorm(x))
//!     out = h + mlp(y)                                                with y = rmsnorm(h)
//! where mlp is the dense SwiGLU  down(silu(gate(y)) * up(y)),  or in a MoE layer
//!     sum over the top_k experts e of softmax(router(y)):  p_e * down_e(silu(gate_e(y)) * up_e(y))
//! (p renormalised over the chosen experts when norm_topk_prob), and the model is
//! embed -> layers -> rmsnorm -> lm_head (or the tied embedding).

pub mod linear;
pub mod load;
pub mod ops;

use std::sync::Arc;

use linear::{module_format, stacked_format, Layout, Matrix, ModuleTensors, WeightFormat};
use ops::{ExpertOut, GridKind, KernelShape, ModelKernels, Ops, Out, Phase, Step};

use crate::config::{ModelConfig, MoeConfig, QuantConfig};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::weights::{DType, WeightIndex};

/// How keys and values are stored in the KV cache. Attention always computes in f32.
/// Named "f16" / "f32" on the command line, in JSON and in the browser's options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCache {
    /// Two f16 per u32 (`pack2x16float`, no `shader-f16` needed): half the memory, as
    /// llama.cpp and mlx-lm (which caches in the activation dtype) store it.
    #[default]
    F16,
    /// f32, bit for bit what mlx-lm computes in float32 (the parity tests use it).
    F32,
}

impl KvCache {
    pub fn bytes_per_element(self) -> usize {
        match self {
            KvCache::F16 => 2,
            KvCache::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvCache::F16 => "f16",
            KvCache::F32 => "f32",
        }
    }
}

impl std::str::FromStr for KvCache {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [KvCache::F16, KvCache::F32]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("KV cache format {s:?}: use f16 or f32"))
    }
}

/// Load-time choices that are not in config.json.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// KV-cache length in tokens (prompt + generation). `None`: 4096, or less where the model
    /// or the storage-binding limit allows less.
    pub context: Option<usize>,
    pub kv_cache: KvCache,
    /// Most tokens per prefill pass.
    pub max_chunk: usize,
    /// Bench only: the expert kernels count the rows they read (see `expert_bytes_read`).
    pub count_expert_reads: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { context: None, kv_cache: KvCache::default(), max_chunk: 128, count_expert_reads: false }
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
    mlp: Mlp,
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
}

enum Mlp {
    /// gate and up paired row by row for the fused SwiGLU kernel.
    Fused {
        gate_up: Matrix,
        down: Matrix,
    },
    /// gate and up in different formats: two matmuls and a SwiGLU kernel.
    Split {
        gate: Matrix,
        up: Matrix,
        down: Matrix,
    },
    Moe(MoeBlock),
}

/// A sparse MoE block: the router and every expert's gate/up (paired, stacked) and down.
struct MoeBlock {
    router: Matrix,
    gate_up: Matrix,
    down: Matrix,
}

impl Mlp {
    fn matrices(&self) -> Vec<&Matrix> {
        match self {
            Mlp::Fused { gate_up, down } => vec![gate_up, down],
            Mlp::Split { gate, up, down } => vec![gate, up, down],
            Mlp::Moe(b) => vec![&b.router, &b.gate_up, &b.down],
        }
    }
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
    moe: Option<MoeActivations>,
    logits: wgpu::Buffer,
}

/// Buffers of the MoE layers (slot s = token * top_k + j).
struct MoeActivations {
    /// Router logits [T, experts].
    router: wgpu::Buffer,
    /// The routing table written on the GPU (layout in `shaders/moe.wgsl`).
    route: wgpu::Buffer,
    /// silu(gate) * up of each slot [T * top_k, moe_intermediate].
    act: wgpu::Buffer,
    /// Each slot's expert output before the weighted sum [T * top_k, hidden] (prefill).
    out: wgpu::Buffer,
}

pub struct Qwen3 {
    pub config: ModelConfig,
    pub gpu: Arc<Gpu>,
    pub context: usize,
    pub kv_cache: KvCache,
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
    decode_dispatches: usize,
    /// Small f32 tensors (norm weights) to load: (tensor, buffer, elements).
    norms: Vec<(String, wgpu::Buffer, usize)>,
}

impl Qwen3 {
    /// Allocate every buffer and prepare every dispatch for this config; weights are loaded after.
    pub fn new(gpu: Arc<Gpu>, config: ModelConfig, index: &WeightIndex, opts: &ModelOptions) -> Result<Qwen3> {
        let c = &config;
        let (hidden, heads, kv_heads, head_dim, inter) =
            (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size);
        let q_rows = heads * head_dim;
        let kv_rows = kv_heads * head_dim;
        let qkv_width = q_rows + 2 * kv_rows;
        // Each layer's K (and V) cache is one binding: [kv_heads, context, head_dim].
        let kv_row_bytes = (kv_heads * head_dim * opts.kv_cache.bytes_per_element()) as u64;
        let max_context_for_binding = (gpu.max_binding / kv_row_bytes) as usize;
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
        let (moe_slots_per_token, moe_widest) = match &c.moe {
            Some(m) => (m.num_experts_per_tok, m.num_experts_per_tok * hidden.max(m.moe_intermediate_size)),
            None => (0, 0),
        };
        let widest = [hidden, qkv_width, inter * 2, q_rows, moe_widest].into_iter().max().unwrap() as u64 * 4;
        let chunk = (opts.max_chunk as u64).min(gpu.max_binding / widest).max(1) as usize;
        let head_chunk = (chunk as u64).min(gpu.max_binding / (c.vocab_size as u64 * 4)).max(1) as usize;
        if gpu.max_binding < c.vocab_size as u64 * 4 {
            return Err(Error::Limit(format!(
                "one row of logits ({} bytes) exceeds the storage-binding limit of {} bytes",
                c.vocab_size * 4,
                gpu.max_binding
            )));
        }
        let cache_bytes = context as u64 * kv_row_bytes;
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
            let mlp = match &c.moe {
                Some(m) if c.is_moe_layer(l) => Mlp::Moe(moe_block(&gpu, index, quant, &p, m, hidden)?),
                _ => {
                    let (gf, gate) = matrix(&format!("{p}.mlp.gate_proj"), inter, hidden)?;
                    let (uf, up) = matrix(&format!("{p}.mlp.up_proj"), inter, hidden)?;
                    let down = single(&format!("{p}.mlp.down_proj"), hidden, inter)?;
                    if gf == uf {
                        Mlp::Fused {
                            gate_up: Matrix::paired(&gpu, &format!("{p}.mlp.gate_up"), hidden, gf, gate, up)?,
                            down,
                        }
                    } else {
                        let gate = Matrix::new(&gpu, &format!("{p}.mlp.gate_proj"), hidden, gf, vec![gate])?;
                        let up = Matrix::new(&gpu, &format!("{p}.mlp.up_proj"), hidden, uf, vec![up])?;
                        Mlp::Split { gate, up, down }
                    }
                }
            };
            layers.push(Layer {
                input_norm: norm(format!("{p}.input_layernorm.weight"), hidden)?,
                post_norm: norm(format!("{p}.post_attention_layernorm.weight"), hidden)?,
                q_norm: norm(format!("{p}.self_attn.q_norm.weight"), head_dim)?,
                k_norm: norm(format!("{p}.self_attn.k_norm.weight"), head_dim)?,
                qkv,
                o_proj: single(&format!("{p}.self_attn.o_proj"), hidden, q_rows)?,
                mlp,
                k_cache: gpu.storage(&format!("{p}.k_cache"), cache_bytes)?,
                v_cache: gpu.storage(&format!("{p}.v_cache"), cache_bytes)?,
            });
        }
        let final_norm = norm("model.norm.weight".into(), hidden)?;

        let split_mlp = layers.iter().any(|l| matches!(l.mlp, Mlp::Split { .. }));
        let t = chunk as u64;
        let route_slots = chunk * moe_slots_per_token.max(1);
        let moe = match &c.moe {
            Some(m) => {
                let slots = route_slots as u64;
                let tiles = ops::max_expert_tiles(route_slots, m.num_experts) as u64;
                Some(MoeActivations {
                    router: gpu.storage("router_logits", t * m.num_experts as u64 * 4)?,
                    route: gpu.storage("route", (3 * slots + 1 + 3 * tiles) * 4)?,
                    act: gpu.storage("expert_act", slots * m.moe_intermediate_size as u64 * 4)?,
                    out: gpu.storage("expert_out", slots * hidden as u64 * 4)?,
                })
            }
            None => None,
        };
        let act = Activations {
            tokens: gpu.storage("tokens", t * 4)?,
            x: gpu.storage("x", t * hidden as u64 * 4)?,
            xn: gpu.storage("x_normed", t * hidden as u64 * 4)?,
            qkv: gpu.storage("qkv", t * qkv_width as u64 * 4)?,
            attn: gpu.storage("attn", t * q_rows as u64 * 4)?,
            act: gpu.storage("mlp_act", t * inter as u64 * 4)?,
            gate_up: if split_mlp { Some(gpu.storage("gate_up", t * 2 * inter as u64 * 4)?) } else { None },
            moe,
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
                kv_f16: opts.kv_cache == KvCache::F16,
                theta: c.rope_theta,
                eps: c.rms_norm_eps,
                intermediate: inter,
                moe: c.moe.as_ref().map(|m| (m.num_experts, m.num_experts_per_tok, m.norm_topk_prob, route_slots)),
            },
        );
        let counted_ops: usize = layers
            .iter()
            .map(|l| match &l.mlp {
                Mlp::Moe(b) => b.gate_up.pieces.len() + b.down.pieces.len(),
                _ => 0,
            })
            .sum();
        let expert_counter = match opts.count_expert_reads && counted_ops > 0 {
            true => Some(gpu.storage("expert_rows_read", counted_ops as u64 * 4)?),
            false => None,
        };
        let ops = Ops::new(gpu.clone(), step.clone(), expert_counter, route_slots as u32)?;
        let mut model = Qwen3 {
            config,
            gpu,
            context,
            kv_cache: opts.kv_cache,
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
            decode_dispatches: 0,
            norms,
        };
        model.record(&kernels);
        model.decode_dispatches = model.ops.count(1);
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

            // out = h + mlp(y),  y = rmsnorm(h)
            ops.custom(&k.rmsnorm, "rmsnorm", &[&a.x, &a.xn, &layer.post_norm], GridKind::PerToken, false);
            match &layer.mlp {
                // down(silu(gate(y)) * up(y))
                Mlp::Fused { gate_up, down } => {
                    ops.linear(gate_up, &a.xn, &a.act, 0, inter, Out::Set, false);
                    ops.linear(down, &a.act, &a.x, 0, hidden, Out::Add, false);
                }
                Mlp::Split { gate, up, down } => {
                    let gu = a.gate_up.as_ref().expect("allocated for split MLPs");
                    ops.linear(gate, &a.xn, gu, 0, 2 * inter, Out::Set, false);
                    ops.linear(up, &a.xn, gu, inter, 2 * inter, Out::Set, false);
                    ops.custom(&k.swiglu, "swiglu", &[gu, &a.act], GridKind::PerTokenSpan(inter as u32), false);
                    ops.linear(down, &a.act, &a.x, 0, hidden, Out::Add, false);
                }
                // sum over the top-k experts e of softmax(router(y)): p_e * down_e(silu(gate_e(y)) * up_e(y))
                Mlp::Moe(b) => {
                    let m = a.moe.as_ref().expect("allocated for MoE models");
                    let route_k = k.moe.as_ref().expect("built for MoE models");
                    let top_k = self.config.moe.as_ref().expect("MoE config").num_experts_per_tok;
                    let experts = b.router.rows;
                    let (unused, unused_rw) = (ops.unused().0.clone(), ops.unused().1.clone());
                    ops.linear(&b.router, &a.xn, &m.router, 0, experts, Out::Set, false);
                    ops.custom(route_k, "route_tokens", &[&m.router, &m.route, &unused_rw], GridKind::PerToken, false);
                    ops.custom_in(
                        route_k,
                        "group",
                        &[&unused, &m.route, &unused_rw],
                        GridKind::Single,
                        false,
                        Phase::Prefill,
                    );
                    ops.experts(
                        &b.gate_up,
                        &a.xn,
                        &m.act,
                        &m.route,
                        top_k,
                        ExpertOut::Slots { from_slots: false },
                        Phase::Always,
                    );
                    // one token: the weighted sum fused into the down projection
                    ops.experts(&b.down, &m.act, &a.x, &m.route, top_k, ExpertOut::WeightedSum, Phase::Decode);
                    // many tokens: down per slot, then the weighted sum into the residual
                    ops.experts(
                        &b.down,
                        &m.act,
                        &m.out,
                        &m.route,
                        top_k,
                        ExpertOut::Slots { from_slots: true },
                        Phase::Prefill,
                    );
                    ops.custom_in(
                        route_k,
                        "combine",
                        &[&m.out, &m.route, &a.x],
                        GridKind::PerTokenSpan(hidden as u32),
                        false,
                        Phase::Prefill,
                    );
                }
            }
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
            for m in l.matrices() {
                dests.extend(m.destinations());
            }
        }
        (dests, &self.norms)
    }

    /// Bytes of every layer's K and V caches together.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.k_cache.size() + l.v_cache.size()).sum()
    }

    /// (all weight bytes, the least a decode step can read): each matrix once, the embedding only
    /// one row, and of each MoE layer's experts only the top_k chosen.
    pub fn weight_bytes(&self) -> (u64, u64) {
        let mut total = self.embed.bytes();
        let mut per_token = self.embed.bytes() / self.config.vocab_size as u64;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if let Some(h) = &self.lm_head {
            total += h.bytes();
        }
        per_token += head.bytes();
        for l in &self.layers {
            for m in l.matrices() {
                total += m.bytes();
                per_token += m.decode_bytes(self.top_k());
            }
        }
        let norms: u64 = self.norms.iter().map(|n| n.2 as u64 * 4).sum();
        (total + norms, per_token + norms)
    }

    /// (name, pieces) of every weight matrix: how the storage-binding limit split them.
    pub fn pieces(&self) -> Vec<(String, usize)> {
        let mut all: Vec<&Matrix> = vec![&self.embed];
        all.extend(&self.lm_head);
        all.extend(self.layers.iter().flat_map(|l| l.matrices()));
        all.iter().map(|m| (m.name.clone(), m.pieces.len())).collect()
    }

    /// Experts chosen per token (0 for a dense model).
    fn top_k(&self) -> usize {
        self.config.moe.as_ref().map_or(0, |m| m.num_experts_per_tok)
    }

    /// (bytes of all expert weights, bytes of the top-k experts a decode step reads), over all
    /// MoE layers.
    pub fn expert_bytes(&self) -> (u64, u64) {
        let experts = self.layers.iter().flat_map(|l| l.matrices()).filter(|m| m.experts().is_some());
        experts.fold((0, 0), |(all, chosen), m| (all + m.bytes(), chosen + m.decode_bytes(self.top_k())))
    }

    pub fn describe_formats(&self) -> Vec<(String, String)> {
        let mut out = vec![("model.embed_tokens".to_string(), self.embed.format.describe())];
        if let Some(h) = &self.lm_head {
            out.push(("lm_head".into(), h.format.describe()));
        }
        let first_dense = self.layers.iter().find(|l| !matches!(l.mlp, Mlp::Moe(_)));
        let first_moe = self.layers.iter().find(|l| matches!(l.mlp, Mlp::Moe(_)));
        for (i, l) in first_dense.into_iter().chain(first_moe).enumerate() {
            let attention = if i == 0 { l.qkv.iter().chain([&l.o_proj]).collect() } else { Vec::new() };
            for m in attention.into_iter().chain(l.mlp.matrices()) {
                out.push((m.name.clone(), m.format.describe()));
            }
        }
        out
    }

    /// Bench only (`ModelOptions::count_expert_reads`): expert weight bytes the decode kernels
    /// read since the last call, from the rows the GPU counted; resets the counters.
    pub async fn expert_bytes_read(&self) -> Result<Option<u64>> {
        let Some(counter) = &self.ops.expert_counter else { return Ok(None) };
        let bytes = self.gpu.read_back(counter, 0, self.ops.counted_row_bytes.len() as u64 * 4).await?;
        let rows: &[u32] = bytemuck::cast_slice(&bytes);
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(counter, 0, None);
        self.gpu.queue.submit([encoder.finish()]);
        Ok(Some(rows.iter().zip(&self.ops.counted_row_bytes).map(|(&r, &b)| r as u64 * b).sum()))
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

    /// Dispatches of a one-token pass (counted once, at record time: the decode loop asks every token).
    pub fn decode_dispatches(&self) -> usize {
        self.decode_dispatches
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

impl Layer {
    fn matrices(&self) -> Vec<&Matrix> {
        let mut out: Vec<&Matrix> = self.qkv.iter().chain([&self.o_proj]).collect();
        out.extend(self.mlp.matrices());
        out
    }
}

/// The router and experts of MoE layer `p`, from MLX's stacked `switch_mlp` tensors or from
/// Hugging Face's per-expert `experts.E.*` tensors (stacked here, on the GPU).
fn moe_block(
    gpu: &Gpu,
    index: &WeightIndex,
    quant: Option<&QuantConfig>,
    p: &str,
    m: &MoeConfig,
    hidden: usize,
) -> Result<MoeBlock> {
    let (experts, inter) = (m.num_experts, m.moe_intermediate_size);
    let (rf, router) = module_format(index, quant, &format!("{p}.mlp.gate"), experts, hidden)?;
    let router = Matrix::new(gpu, &format!("{p}.mlp.gate"), hidden, rf, vec![router])?;
    // (format, one module per expert) of each projection
    let projection = |name: &str, rows: usize, cols: usize| -> Result<(WeightFormat, Vec<ModuleTensors>)> {
        let stacked = format!("{p}.mlp.switch_mlp.{name}");
        if index.get(&format!("{stacked}.weight")).is_some()
            || index.get(&format!("{p}.mlp.experts.0.{name}.weight")).is_none()
        {
            let (f, t) = stacked_format(index, quant, &stacked, Some(experts), rows, cols)?;
            return Ok((f, (0..experts).map(|e| t.slice(e * rows, rows)).collect()));
        }
        let mut format: Option<WeightFormat> = None;
        let mut modules = Vec::with_capacity(experts);
        for e in 0..experts {
            let path = format!("{p}.mlp.experts.{e}.{name}");
            let (f, t) = module_format(index, quant, &path, rows, cols)?;
            if format.is_some_and(|g| g != f) {
                return Err(Error::weights(
                    index.file_name(index.get(&format!("{path}.weight")).expect("checked")),
                    format!(
                        "{path} is {}, unlike expert 0 ({}): the experts of a layer must share one format",
                        f.describe(),
                        format.unwrap().describe()
                    ),
                ));
            }
            format = Some(f);
            modules.push(t);
        }
        Ok((format.expect("at least one expert"), modules))
    };
    let (gf, gate) = projection("gate_proj", inter, hidden)?;
    let (uf, up) = projection("up_proj", inter, hidden)?;
    let (df, down) = projection("down_proj", hidden, inter)?;
    if gf != uf {
        return Err(Error::Config(format!(
            "{p}.mlp: the experts' gate_proj ({}) and up_proj ({}) differ in format, which webqwen does not support yet",
            gf.describe(),
            uf.describe()
        )));
    }
    let paired: Vec<ModuleTensors> = gate.into_iter().zip(up).flat_map(|(g, u)| [g, u]).collect();
    let gate_up = Matrix::with_layout(
        gpu,
        &format!("{p}.mlp.experts.gate_up"),
        hidden,
        gf,
        paired,
        Layout::Experts { experts, rows_per_expert: 2 * inter, paired: true },
    )?;
    let down = Matrix::with_layout(
        gpu,
        &format!("{p}.mlp.experts.down_proj"),
        inter,
        df,
        down,
        Layout::Experts { experts, rows_per_expert: hidden, paired: false },
    )?;
    Ok(MoeBlock { router, gate_up, down })
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
