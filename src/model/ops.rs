//! The forward pass as a list of prepared dispatches: every pipeline and bind group is built once
//! at load; encoding a step only picks grid sizes for the number of tokens in it.

use std::sync::Arc;

use super::linear::{
    matmul_tile_rows, matvec_lanes, ExpertVariant, MatmulKernels, Matrix, Piece, Variant, MATMUL_TILE_T,
};
use crate::error::Result;
use crate::gpu::{grid, Binding, Gpu, Kernel, KernelBuilder};

/// The per-step uniform, written once per forward pass (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// Absolute position of the first token of this pass.
    pub pos: u32,
    /// Tokens in this pass (1 when decoding).
    pub n_tokens: u32,
    /// Generation step: the sampler's random stream position.
    pub step: u32,
    /// Rows whose logits are computed: `head_offset .. head_offset + head_rows`.
    pub head_offset: u32,
    pub head_rows: u32,
    pub _pad: [u32; 3],
}

#[derive(Clone, Copy, Debug)]
enum Grid {
    /// A matrix piece: matvec for one token, tiled matmul for more.
    Linear {
        rows: u32,
        dual: bool,
        lanes: u32,
    },
    /// A piece of an expert matrix: `expert_matvec` over `slots` slots for one token, the grouped
    /// `expert_matmul` over the routing table's tiles for more.
    Experts {
        rows_per_expert: u32,
        dual: bool,
        lanes: u32,
        slots: u32,
        top_k: u32,
        experts: u32,
    },
    Gather {
        cols: u32,
    },
    /// One workgroup per token row.
    PerToken,
    /// `slots` workgroups per token.
    PerTokenSlots(u32),
    /// ceil(n / 256) workgroups per token.
    PerTokenSpan(u32),
    /// One workgroup.
    Single,
}

/// Which passes an op belongs to: some MoE steps differ between one token and many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Always,
    /// Only when the pass has one token.
    Decode,
    /// Only when the pass has more than one token.
    Prefill,
}

impl Phase {
    fn runs(self, n_tokens: u32) -> bool {
        match self {
            Phase::Always => true,
            Phase::Decode => n_tokens == 1,
            Phase::Prefill => n_tokens > 1,
        }
    }
}

struct Op {
    kernel: Arc<Kernel>,
    entry: &'static str,
    bind: wgpu::BindGroup,
    grid: Grid,
    /// Counts head rows (the positions whose logits are wanted) instead of all tokens.
    head: bool,
    phase: Phase,
}

/// How a linear op writes its output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Set,
    /// `y += W x`: the residual add.
    Add,
}

/// What an expert matrix op computes from the routing table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExpertOut {
    /// Row per slot: `y[s] = W_{e_s} x[token of s]` (gate/up) or `W_{e_s} x[s]` (`from_slots`).
    Slots { from_slots: bool },
    /// One token: `y += sum_j weight_j W_{e_j} x[j]` (the down projection and the weighted sum).
    WeightedSum,
}

/// Builds and holds the dispatch list of a forward pass.
pub struct Ops {
    gpu: Arc<Gpu>,
    step: wgpu::Buffer,
    dummy: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    pub matmuls: MatmulKernels,
    ops: Vec<Op>,
    /// Weight bytes the recorded ops read for one token (a matvec reads its whole piece, a
    /// gather one row, an expert op the rows of the chosen experts only).
    pub weight_reads_per_token: u64,
    /// Bench only: the expert kernels count the rows they read into this buffer, one u32 per
    /// counted op; `counted_row_bytes[i]` is the bytes of one row of op i's matrix.
    pub expert_counter: Option<wgpu::Buffer>,
    pub counted_row_bytes: Vec<u64>,
    /// Routing-table slots (most tokens per pass x top_k) the expert kernels are built for.
    pub route_slots: u32,
}

impl Ops {
    pub fn new(
        gpu: Arc<Gpu>,
        step: wgpu::Buffer,
        expert_counter: Option<wgpu::Buffer>,
        route_slots: u32,
    ) -> Result<Ops> {
        let dummy = gpu.storage("unused binding", 16)?;
        let dummy_rw = gpu.storage("unused binding", 16)?;
        Ok(Ops {
            gpu,
            step,
            dummy,
            dummy_rw,
            matmuls: MatmulKernels::default(),
            ops: Vec::new(),
            weight_reads_per_token: 0,
            expert_counter,
            counted_row_bytes: Vec::new(),
            route_slots,
        })
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Dispatches a pass of `n_tokens` tokens records.
    pub fn count(&self, n_tokens: u32) -> usize {
        self.ops.iter().filter(|op| op.phase.runs(n_tokens)).count()
    }

    fn piece_uniform(
        &self,
        col0: usize,
        rows: usize,
        out_stride: usize,
        experts: (usize, usize),
        counter: usize,
    ) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let data =
            [col0 as u32, rows as u32, out_stride as u32, experts.0 as u32, experts.1 as u32, counter as u32, 0, 0];
        self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("piece"),
            contents: bytemuck::cast_slice(&data),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    fn piece_bind(
        &self,
        kernel: &Kernel,
        params: &wgpu::Buffer,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        p: &Piece,
        route: Option<&wgpu::Buffer>,
    ) -> wgpu::BindGroup {
        let s = p.scales.as_ref().unwrap_or(&self.dummy);
        let b = p.biases.as_ref().unwrap_or(&self.dummy);
        let route = route.unwrap_or(&self.dummy);
        let counter = self.expert_counter.as_ref().unwrap_or(&self.dummy_rw);
        kernel.bind(&self.gpu, &[&self.step, params, x, y, &p.weight, s, b, route, counter])
    }

    /// `y[:, col0 .. col0 + m.rows] (+)= x @ m^T`, one dispatch per piece; a paired matrix gives
    /// `silu(x @ gate^T) * (x @ up^T)` (its output has half its rows).
    pub fn linear(
        &mut self,
        m: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        col0: usize,
        out_stride: usize,
        out: Out,
        head: bool,
    ) {
        let unit = m.pair_unit();
        let variant = Variant { paired_unit: unit.unwrap_or(0) as u32, add: out == Out::Add, head, experts: None };
        let kernel = self.matmuls.get(&self.gpu, m.format, m.cols, variant);
        self.weight_reads_per_token += m.bytes();
        let half = if unit.is_some() { 2 } else { 1 };
        for p in &m.pieces {
            let params = self.piece_uniform(col0 + p.row_start / half, p.rows / half, out_stride, (0, 0), 0);
            let bind = self.piece_bind(&kernel, &params, x, y, p, None);
            let grid = Grid::Linear { rows: (p.rows / half) as u32, dual: unit.is_some(), lanes: matvec_lanes(m.cols) };
            self.ops.push(Op { kernel: kernel.clone(), entry: "", bind, grid, head, phase: Phase::Always });
        }
    }

    /// An expert matrix applied per routing-table slot (see `ExpertOut`), one dispatch per piece.
    pub fn experts(
        &mut self,
        m: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        route: &wgpu::Buffer,
        top_k: usize,
        out: ExpertOut,
        phase: Phase,
    ) {
        let (experts, rows_per_expert) = m.experts().expect("an expert matrix");
        let count = self.expert_counter.is_some() && phase != Phase::Prefill;
        let ev = ExpertVariant {
            top_k: top_k as u32,
            rows_per_expert: rows_per_expert as u32,
            slots: self.route_slots,
            x_by_slot: matches!(out, ExpertOut::Slots { from_slots: true } | ExpertOut::WeightedSum),
            sum: out == ExpertOut::WeightedSum,
            count,
        };
        let unit = m.pair_unit();
        let variant = Variant {
            paired_unit: unit.unwrap_or(0) as u32,
            add: out == ExpertOut::WeightedSum,
            head: false,
            experts: Some(ev),
        };
        let kernel = self.matmuls.get(&self.gpu, m.format, m.cols, variant);
        if phase != Phase::Prefill {
            self.weight_reads_per_token += m.decode_bytes(top_k);
        }
        let matrix_rows_per_expert = m.rows / experts;
        for p in &m.pieces {
            let counter = self.counted_row_bytes.len();
            if count {
                self.counted_row_bytes.push(m.row_bytes());
            }
            let first = (p.row_start / matrix_rows_per_expert, p.rows / matrix_rows_per_expert);
            // Output rows are slots ([slots, rows_per_expert]) or the one token's residual row.
            let params = self.piece_uniform(0, rows_per_expert, rows_per_expert, first, counter);
            let bind = self.piece_bind(&kernel, &params, x, y, p, Some(route));
            let slots = if out == ExpertOut::WeightedSum { 1 } else { top_k as u32 };
            let grid = Grid::Experts {
                rows_per_expert: rows_per_expert as u32,
                dual: unit.is_some(),
                lanes: matvec_lanes(m.cols),
                slots,
                top_k: top_k as u32,
                experts: experts as u32,
            };
            self.ops.push(Op { kernel: kernel.clone(), entry: "", bind, grid, head: false, phase });
        }
    }

    /// Embedding lookup: rows `tokens[t]` of `m` into `y[t, :]`.
    pub fn gather(&mut self, m: &Matrix, tokens: &wgpu::Buffer, y: &wgpu::Buffer) {
        let kernel = self.matmuls.get(&self.gpu, m.format, m.cols, Variant::default());
        self.weight_reads_per_token += m.bytes() / m.rows as u64;
        for p in &m.pieces {
            let params = self.piece_uniform(p.row_start, p.rows, m.cols, (0, 0), 0);
            let bind = self.piece_bind(&kernel, &params, tokens, y, p, None);
            self.ops.push(Op {
                kernel: kernel.clone(),
                entry: "gather",
                bind,
                grid: Grid::Gather { cols: m.cols as u32 },
                head: false,
                phase: Phase::Always,
            });
        }
    }

    /// A kernel with its own bindings (after the step uniform at binding 0).
    pub fn custom(
        &mut self,
        kernel: &Arc<Kernel>,
        entry: &'static str,
        buffers: &[&wgpu::Buffer],
        grid: GridKind,
        head: bool,
    ) {
        self.custom_in(kernel, entry, buffers, grid, head, Phase::Always);
    }

    pub fn custom_in(
        &mut self,
        kernel: &Arc<Kernel>,
        entry: &'static str,
        buffers: &[&wgpu::Buffer],
        grid: GridKind,
        head: bool,
        phase: Phase,
    ) {
        let mut all: Vec<&wgpu::Buffer> = vec![&self.step];
        all.extend_from_slice(buffers);
        let bind = kernel.bind(&self.gpu, &all);
        let grid = match grid {
            GridKind::PerToken => Grid::PerToken,
            GridKind::PerTokenSlots(n) => Grid::PerTokenSlots(n),
            GridKind::PerTokenSpan(n) => Grid::PerTokenSpan(n),
            GridKind::Single => Grid::Single,
        };
        self.ops.push(Op { kernel: kernel.clone(), entry, bind, grid, head, phase });
    }

    /// Unused bindings of custom kernels.
    pub fn unused(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.dummy, &self.dummy_rw)
    }

    /// Record the ops `range` for a pass of `n_tokens` tokens whose logits rows number `head_rows`.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        range: std::ops::Range<usize>,
        n_tokens: u32,
        head_rows: u32,
    ) {
        for op in &self.ops[range] {
            if !op.phase.runs(n_tokens) {
                continue;
            }
            let t = if op.head { head_rows } else { n_tokens };
            let (entry, x, y, z) = match op.grid {
                Grid::Linear { rows, lanes, .. } if t == 1 => {
                    let (x, y) = grid(rows.div_ceil(256 / lanes));
                    ("matvec", x, y, 1)
                }
                Grid::Linear { rows, dual, .. } => {
                    ("matmul", rows.div_ceil(matmul_tile_rows(dual)), t.div_ceil(MATMUL_TILE_T), 1)
                }
                Grid::Experts { rows_per_expert, lanes, slots, .. } if t == 1 => {
                    ("expert_matvec", rows_per_expert.div_ceil(256 / lanes), 1, slots)
                }
                Grid::Experts { rows_per_expert, dual, top_k, experts, .. } => {
                    let tiles = max_expert_tiles((t * top_k) as usize, experts as usize) as u32;
                    ("expert_matmul", rows_per_expert.div_ceil(matmul_tile_rows(dual)), tiles, 1)
                }
                Grid::Gather { cols } => ("gather", cols.div_ceil(256), t, 1),
                Grid::PerToken => (op.entry, t, 1, 1),
                Grid::PerTokenSlots(n) => (op.entry, n, t, 1),
                Grid::PerTokenSpan(n) => (op.entry, n.div_ceil(256), t, 1),
                Grid::Single => (op.entry, 1, 1, 1),
            };
            pass.set_pipeline(op.kernel.pipeline(entry));
            pass.set_bind_group(0, &op.bind, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// Most tiles the grouped expert matmul can need for `slots` slots over `experts` experts: every
/// expert's run rounds up to whole 32-slot tiles.
pub fn max_expert_tiles(slots: usize, experts: usize) -> usize {
    slots.div_ceil(MATMUL_TILE_T as usize) + experts.min(slots)
}

#[derive(Clone, Copy, Debug)]
pub enum GridKind {
    PerToken,
    PerTokenSlots(u32),
    PerTokenSpan(u32),
    Single,
}

/// The fixed-function kernels of one model (everything but the matrix kernels).
pub struct ModelKernels {
    pub rmsnorm: Arc<Kernel>,
    pub rmsnorm_head: Arc<Kernel>,
    pub rope: Arc<Kernel>,
    pub attention: Arc<Kernel>,
    pub swiglu: Arc<Kernel>,
    /// Routing of MoE layers (`moe.wgsl`), when the model has experts.
    pub moe: Option<Arc<Kernel>>,
}

pub struct KernelShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    /// The KV cache holds f16 pairs packed in u32 (else f32).
    pub kv_f16: bool,
    pub theta: f32,
    pub eps: f32,
    pub intermediate: usize,
    /// (experts, top_k, norm_topk_prob, routing-table slots) of a MoE model.
    pub moe: Option<(usize, usize, bool, usize)>,
}

impl ModelKernels {
    pub fn new(gpu: &Gpu, s: &KernelShape) -> ModelKernels {
        use Binding::*;
        let norm = |head: bool| {
            Arc::new(
                KernelBuilder::new("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl"), &["rmsnorm"])
                    .u32("H", s.hidden as u32)
                    .f32("EPS", s.eps)
                    .bool("HEAD", head)
                    .bindings(&[Uniform, Read, ReadWrite, Read])
                    .build(gpu),
            )
        };
        let rope = KernelBuilder::new("rope", include_str!("../../shaders/rope.wgsl"), &["rope"])
            .u32("HEADS", s.heads as u32)
            .u32("KV_HEADS", s.kv_heads as u32)
            .u32("HEAD_DIM", s.head_dim as u32)
            .u32("CTX", s.context as u32)
            .f32("THETA", s.theta)
            .f32("EPS", s.eps)
            .bool("KV_F16", s.kv_f16)
            .bindings(&[Uniform, ReadWrite, Read, Read, ReadWrite, ReadWrite])
            .build(gpu);
        let attention = KernelBuilder::new("attention", include_str!("../../shaders/attention.wgsl"), &["attention"])
            .u32("HEADS", s.heads as u32)
            .u32("KV_HEADS", s.kv_heads as u32)
            .u32("HEAD_DIM", s.head_dim as u32)
            .u32("CTX", s.context as u32)
            .f32("SCALE", (s.head_dim as f32).powf(-0.5))
            .bool("KV_F16", s.kv_f16)
            .bindings(&[Uniform, Read, Read, Read, ReadWrite])
            .build(gpu);
        let swiglu = KernelBuilder::new("swiglu", include_str!("../../shaders/swiglu.wgsl"), &["swiglu"])
            .u32("I", s.intermediate as u32)
            .bindings(&[Uniform, Read, ReadWrite])
            .build(gpu);
        let moe = s.moe.map(|(experts, top_k, norm_topk, slots)| {
            Arc::new(
                KernelBuilder::new(
                    "moe",
                    include_str!("../../shaders/moe.wgsl"),
                    &["route_tokens", "group", "combine"],
                )
                .u32("E", experts as u32)
                .u32("TOP_K", top_k as u32)
                .bool("NORM", norm_topk)
                .u32("H", s.hidden as u32)
                .u32("SLOTS", slots as u32)
                .bindings(&[Uniform, Read, ReadWrite, ReadWrite])
                .build(gpu),
            )
        });
        ModelKernels {
            rmsnorm: norm(false),
            rmsnorm_head: norm(true),
            rope: Arc::new(rope),
            attention: Arc::new(attention),
            swiglu: Arc::new(swiglu),
            moe,
        }
    }
}
