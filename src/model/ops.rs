//! The forward pass as a list of prepared dispatches: every pipeline and bind group is built once
//! at load; encoding a step only picks grid sizes for the number of tokens in it.

use std::sync::Arc;

use super::linear::{matmul_tile_rows, matvec_lanes, Matrix, MatmulKernels, MATMUL_TILE_T};
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
    Linear { rows: u32, dual: bool, lanes: u32 },
    Gather { cols: u32 },
    /// One workgroup per token row.
    PerToken,
    /// `slots` workgroups per token.
    PerTokenSlots(u32),
    /// ceil(n / 256) workgroups per token.
    PerTokenSpan(u32),
}

struct Op {
    kernel: Arc<Kernel>,
    entry: &'static str,
    bind: wgpu::BindGroup,
    grid: Grid,
    /// Counts head rows (the positions whose logits are wanted) instead of all tokens.
    head: bool,
}

/// How a linear op writes its output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Set,
    /// `y += W x`: the residual add.
    Add,
}

/// Builds and holds the dispatch list of a forward pass.
pub struct Ops {
    gpu: Arc<Gpu>,
    step: wgpu::Buffer,
    dummy: wgpu::Buffer,
    pub matmuls: MatmulKernels,
    ops: Vec<Op>,
    /// Weight bytes the recorded ops read for one token (a matvec reads its whole piece, a
    /// gather one row).
    pub weight_reads_per_token: u64,
}

impl Ops {
    pub fn new(gpu: Arc<Gpu>, step: wgpu::Buffer) -> Result<Ops> {
        let dummy = gpu.storage("unused binding", 16)?;
        Ok(Ops { gpu, step, dummy, matmuls: MatmulKernels::default(), ops: Vec::new(), weight_reads_per_token: 0 })
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    fn piece_uniform(&self, col0: usize, rows: usize, out_stride: usize) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let data = [col0 as u32, rows as u32, out_stride as u32, 0];
        self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("piece"),
            contents: bytemuck::cast_slice(&data),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// `y[:, col0 .. col0 + m.rows] (+)= x @ m^T`, one dispatch per piece.
    pub fn linear(&mut self, m: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer, col0: usize, out_stride: usize, out: Out, head: bool) {
        let kernel = self.matmuls.get(&self.gpu, m.format, m.cols, false, out == Out::Add, head);
        self.weight_reads_per_token += m.bytes();
        for p in &m.pieces {
            let params = self.piece_uniform(col0 + p.row_start, p.rows, out_stride);
            let s = p.scales.as_ref().unwrap_or(&self.dummy);
            let b = p.biases.as_ref().unwrap_or(&self.dummy);
            let d = &self.dummy;
            let bind = kernel.bind(&self.gpu, &[&self.step, &params, x, y, &p.weight, s, b, d, d, d]);
            self.ops.push(Op { kernel: kernel.clone(), entry: "", bind, grid: Grid::Linear { rows: p.rows as u32, dual: false, lanes: matvec_lanes(m.cols) }, head });
        }
    }

    /// `y = silu(x @ gate^T) * (x @ up^T)` in one pass; gate and up must share format and pieces.
    pub fn linear_swiglu(&mut self, gate: &Matrix, up: &Matrix, x: &wgpu::Buffer, y: &wgpu::Buffer) {
        let kernel = self.matmuls.get(&self.gpu, gate.format, gate.cols, true, false, false);
        self.weight_reads_per_token += gate.bytes() + up.bytes();
        for (g, u) in gate.pieces.iter().zip(&up.pieces) {
            let params = self.piece_uniform(g.row_start, g.rows, gate.rows);
            let d = &self.dummy;
            let bind = kernel.bind(
                &self.gpu,
                &[
                    &self.step,
                    &params,
                    x,
                    y,
                    &g.weight,
                    g.scales.as_ref().unwrap_or(d),
                    g.biases.as_ref().unwrap_or(d),
                    &u.weight,
                    u.scales.as_ref().unwrap_or(d),
                    u.biases.as_ref().unwrap_or(d),
                ],
            );
            self.ops.push(Op { kernel: kernel.clone(), entry: "", bind, grid: Grid::Linear { rows: g.rows as u32, dual: true, lanes: matvec_lanes(gate.cols) }, head: false });
        }
    }

    /// Embedding lookup: rows `tokens[t]` of `m` into `y[t, :]`.
    pub fn gather(&mut self, m: &Matrix, tokens: &wgpu::Buffer, y: &wgpu::Buffer) {
        let kernel = self.matmuls.get(&self.gpu, m.format, m.cols, false, false, false);
        self.weight_reads_per_token += m.bytes() / m.rows as u64;
        for p in &m.pieces {
            let params = self.piece_uniform(p.row_start, p.rows, m.cols);
            let s = p.scales.as_ref().unwrap_or(&self.dummy);
            let b = p.biases.as_ref().unwrap_or(&self.dummy);
            let d = &self.dummy;
            let bind = kernel.bind(&self.gpu, &[&self.step, &params, tokens, y, &p.weight, s, b, d, d, d]);
            self.ops.push(Op { kernel: kernel.clone(), entry: "gather", bind, grid: Grid::Gather { cols: m.cols as u32 }, head: false });
        }
    }

    /// A kernel with its own bindings (after the step uniform at binding 0).
    pub fn custom(&mut self, kernel: &Arc<Kernel>, entry: &'static str, buffers: &[&wgpu::Buffer], grid: GridKind, head: bool) {
        let mut all: Vec<&wgpu::Buffer> = vec![&self.step];
        all.extend_from_slice(buffers);
        let bind = kernel.bind(&self.gpu, &all);
        let grid = match grid {
            GridKind::PerToken => Grid::PerToken,
            GridKind::PerTokenSlots(n) => Grid::PerTokenSlots(n),
            GridKind::PerTokenSpan(n) => Grid::PerTokenSpan(n),
        };
        self.ops.push(Op { kernel: kernel.clone(), entry, bind, grid, head });
    }

    /// Record the ops `range` for a pass of `n_tokens` tokens whose logits rows number `head_rows`.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, range: std::ops::Range<usize>, n_tokens: u32, head_rows: u32) {
        for op in &self.ops[range] {
            let t = if op.head { head_rows } else { n_tokens };
            let (entry, x, y) = match op.grid {
                Grid::Linear { rows, lanes, .. } if t == 1 => {
                    let (x, y) = grid(rows.div_ceil(256 / lanes));
                    ("matvec", x, y)
                }
                Grid::Linear { rows, dual, .. } => ("matmul", rows.div_ceil(matmul_tile_rows(dual)), t.div_ceil(MATMUL_TILE_T)),
                Grid::Gather { cols } => ("gather", cols.div_ceil(256), t),
                Grid::PerToken => (op.entry, t, 1),
                Grid::PerTokenSlots(n) => (op.entry, n, t),
                Grid::PerTokenSpan(n) => (op.entry, n.div_ceil(256), t),
            };
            pass.set_pipeline(op.kernel.pipeline(entry));
            pass.set_bind_group(0, &op.bind, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum GridKind {
    PerToken,
    PerTokenSlots(u32),
    PerTokenSpan(u32),
}

/// The fixed-function kernels of one model (everything but the matrix kernels).
pub struct ModelKernels {
    pub rmsnorm: Arc<Kernel>,
    pub rmsnorm_head: Arc<Kernel>,
    pub rope: Arc<Kernel>,
    pub attention: Arc<Kernel>,
    pub swiglu: Arc<Kernel>,
}

pub struct KernelShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub theta: f32,
    pub eps: f32,
    pub intermediate: usize,
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
            .bindings(&[Uniform, ReadWrite, Read, Read, ReadWrite, ReadWrite])
            .build(gpu);
        let attention = KernelBuilder::new("attention", include_str!("../../shaders/attention.wgsl"), &["attention"])
            .u32("HEADS", s.heads as u32)
            .u32("KV_HEADS", s.kv_heads as u32)
            .u32("HEAD_DIM", s.head_dim as u32)
            .u32("CTX", s.context as u32)
            .f32("SCALE", (s.head_dim as f32).powf(-0.5))
            .bindings(&[Uniform, Read, Read, Read, ReadWrite])
            .build(gpu);
        let swiglu = KernelBuilder::new("swiglu", include_str!("../../shaders/swiglu.wgsl"), &["swiglu"])
            .u32("I", s.intermediate as u32)
            .bindings(&[Uniform, Read, ReadWrite])
            .build(gpu);
        ModelKernels { rmsnorm: norm(false), rmsnorm_head: norm(true), rope: Arc::new(rope), attention: Arc::new(attention), swiglu: Arc::new(swiglu) }
    }
}
