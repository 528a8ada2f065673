//! Weight matrices on the GPU: the MLX formats (affine-quantized or dense), recognised from the
//! tensors themselves, and split by rows into pieces that each fit one storage binding.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{check_quant_params, QuantConfig};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Gpu, Kernel, KernelBuilder};
use crate::weights::{DType, WeightIndex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// `w = scale * q + bias`, `bits`-bit codes, one (scale, bias) per `group_size` inputs.
    Affine {
        bits: u32,
        group_size: u32,
        scale_dtype: DType,
    },
    Dense(DType),
}

impl WeightFormat {
    /// Bytes of one row of `cols` inputs: (codes or values, scales, biases).
    pub fn row_bytes(&self, cols: usize) -> (u64, u64) {
        match *self {
            WeightFormat::Affine { bits, group_size, scale_dtype } => {
                ((cols * bits as usize / 8) as u64, (cols / group_size as usize * scale_dtype.size()) as u64)
            }
            WeightFormat::Dense(d) => ((cols * d.size()) as u64, 0),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            WeightFormat::Affine { bits, group_size, scale_dtype } => {
                format!("{bits}-bit g{group_size} ({} scales)", scale_dtype.safetensors_name().to_lowercase())
            }
            WeightFormat::Dense(d) => d.safetensors_name().to_lowercase(),
        }
    }
}

/// The tensors of one module (`P.weight`, and `P.scales`/`P.biases` when quantized), or the rows
/// `row_offset .. row_offset + rows` of them (one expert of a stacked expert tensor).
#[derive(Clone, Debug)]
pub struct ModuleTensors {
    pub weight: String,
    pub scales: Option<String>,
    pub biases: Option<String>,
    pub row_offset: usize,
    pub rows: usize,
}

impl ModuleTensors {
    /// Rows `start .. start + rows` of this module.
    pub fn slice(&self, start: usize, rows: usize) -> ModuleTensors {
        ModuleTensors { row_offset: self.row_offset + start, rows, ..self.clone() }
    }
}

/// Recognise the format of module `path` (a `[rows, cols]` linear map or embedding) from its
/// tensors, checking every shape and dtype against what config.json implies.
pub fn module_format(
    index: &WeightIndex,
    quant: Option<&QuantConfig>,
    path: &str,
    rows: usize,
    cols: usize,
) -> Result<(WeightFormat, ModuleTensors)> {
    stacked_format(index, quant, path, None, rows, cols)
}

/// Like `module_format`, for `experts` matrices of `[rows, cols]` stacked along a leading
/// dimension (MLX's `switch_mlp`), or one plain matrix when `experts` is `None`. The module's
/// rows are then `experts * rows`.
pub fn stacked_format(
    index: &WeightIndex,
    quant: Option<&QuantConfig>,
    path: &str,
    experts: Option<usize>,
    rows: usize,
    cols: usize,
) -> Result<(WeightFormat, ModuleTensors)> {
    let lead: Vec<usize> = experts.into_iter().collect();
    let stacked = |last: usize| -> Vec<usize> { lead.iter().copied().chain([rows, last]).collect() };
    let shown = match experts {
        Some(e) => format!("{e} stacked {rows}x{cols}"),
        None => format!("{rows}x{cols}"),
    };
    let total_rows = rows * experts.unwrap_or(1);
    let name = format!("{path}.weight");
    let w = index.get(&name).ok_or_else(|| Error::Weights {
        file: index.files.first().cloned().unwrap_or_default(),
        message: format!("tensor {name} is missing"),
    })?;
    let file = index.file_name(w).to_string();
    let bad = |m: String| Error::weights(file.clone(), m);
    let scales_name = format!("{path}.scales");
    if let Some(s) = index.get(&scales_name) {
        let biases_name = format!("{path}.biases");
        let b = index.get(&biases_name).ok_or_else(|| {
            bad(format!("tensor {scales_name} has no {biases_name}: only MLX \"affine\" quantization (with biases) is supported"))
        })?;
        let dims = lead.len() + 2;
        if w.dtype != DType::U32
            || w.shape.len() != dims
            || w.shape[..dims - 1] != stacked(0)[..dims - 1]
            || (w.shape[dims - 1] * 32) % cols != 0
        {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, but a {shown} quantized matrix needs U32 {:?} with {cols}*bits/32 last",
                w.dtype,
                w.shape,
                stacked(0)[..dims - 1].to_vec()
            )));
        }
        let bits = (w.shape[dims - 1] * 32 / cols) as u32;
        let shapes = || {
            format!(
                "{name} is U32 {:?} and {scales_name} is {:?}, but config.json implies a {shown} matrix \
                 (check hidden_size, intermediate_size, moe_intermediate_size, head_dim and the head counts)",
                w.shape, s.shape
            )
        };
        if s.shape.len() != dims
            || s.shape[..dims - 1] != stacked(0)[..dims - 1]
            || s.shape[dims - 1] == 0
            || cols % s.shape[dims - 1] != 0
        {
            return Err(bad(format!(
                "tensor {scales_name} has shape {:?}, expected {:?} with {cols}/group_size last",
                s.shape,
                stacked(0)[..dims - 1].to_vec()
            )));
        }
        let group_size = (cols / s.shape[dims - 1]) as u32;
        if let Some(q) = quant.and_then(|q| q.params_for(path)) {
            if q.bits != bits || q.group_size != group_size {
                return Err(bad(format!(
                    "{path}: config.json says {} bits, group {}, which does not match the tensors: {}",
                    q.bits,
                    q.group_size,
                    shapes()
                )));
            }
        }
        check_quant_params(bits, group_size).map_err(|m| bad(format!("{path}: {m}; {}", shapes())))?;
        if s.dtype == DType::U32 || b.dtype != s.dtype || b.shape != s.shape {
            return Err(bad(format!("{biases_name} must match {scales_name} (bf16, f16 or f32, same shape)")));
        }
        if cols % 32 != 0 {
            return Err(bad(format!("{path}: input size {cols} is not a multiple of 32")));
        }
        let format = WeightFormat::Affine { bits, group_size, scale_dtype: s.dtype };
        Ok((
            format,
            ModuleTensors {
                weight: name,
                scales: Some(scales_name),
                biases: Some(biases_name),
                row_offset: 0,
                rows: total_rows,
            },
        ))
    } else {
        if w.dtype == DType::U32 {
            return Err(bad(format!(
                "tensor {scales_name} is missing ({name} is packed U32, so it needs scales and biases)"
            )));
        }
        if w.shape != stacked(cols) {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, expected a float {:?} matrix",
                w.dtype,
                w.shape,
                stacked(cols)
            )));
        }
        if cols % 32 != 0 {
            return Err(bad(format!("{path}: input size {cols} is not a multiple of 32")));
        }
        Ok((
            WeightFormat::Dense(w.dtype),
            ModuleTensors { weight: name, scales: None, biases: None, row_offset: 0, rows: total_rows },
        ))
    }
}

/// One storage-binding-sized slice of a matrix: rows `row_start .. row_start + rows`.
pub struct Piece {
    pub row_start: usize,
    pub rows: usize,
    pub weight: wgpu::Buffer,
    pub scales: Option<wgpu::Buffer>,
    pub biases: Option<wgpu::Buffer>,
}

/// How a matrix's rows are organised, which decides where it may be cut into pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Plain rows (modules stacked by rows: q, k and v share one matrix when their formats
    /// agree, so they cost one dispatch).
    Rows,
    /// gate and up interleaved in units of `unit` rows each (`[gate; up]` per unit), for the
    /// fused gate/up/SwiGLU kernel; pieces hold whole unit pairs.
    Paired { unit: usize },
    /// `experts` stacked experts of `rows_per_expert` rows each (paired by halves when `paired`);
    /// pieces hold whole experts.
    Experts { experts: usize, rows_per_expert: usize, paired: bool },
}

/// A `[rows, cols]` matrix on the GPU made of one or more modules stacked by rows, split into
/// pieces that each fit one storage binding.
pub struct Matrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
    pub layout: Layout,
    pub modules: Vec<ModuleTensors>,
    pub pieces: Vec<Piece>,
}

/// Where the loader must put the bytes of one tensor: `len` bytes from `src_offset` within the
/// tensor go to `dst_offset` of `buffer`.
pub struct Dest {
    pub tensor: String,
    pub buffer: wgpu::Buffer,
    pub src_offset: u64,
    pub dst_offset: u64,
    pub len: u64,
}

impl Matrix {
    pub fn new(
        gpu: &Gpu,
        name: &str,
        cols: usize,
        format: WeightFormat,
        modules: Vec<ModuleTensors>,
    ) -> Result<Matrix> {
        Matrix::with_layout(gpu, name, cols, format, modules, Layout::Rows)
    }

    /// gate and up (same format and shape) as one interleaved matrix for the fused kernel.
    pub fn paired(
        gpu: &Gpu,
        name: &str,
        cols: usize,
        format: WeightFormat,
        gate: ModuleTensors,
        up: ModuleTensors,
    ) -> Result<Matrix> {
        let (wrow, _) = format.row_bytes(cols);
        // Big units keep the loader's writes few; a unit pair must still fit one binding.
        let mut unit = gcd(gate.rows, 256);
        while unit > 8 && unit % 2 == 0 && 2 * unit as u64 * wrow > gpu.max_binding {
            unit /= 2;
        }
        let mut modules = Vec::new();
        for u in 0..gate.rows / unit {
            modules.push(gate.slice(u * unit, unit));
            modules.push(up.slice(u * unit, unit));
        }
        Matrix::with_layout(gpu, name, cols, format, modules, Layout::Paired { unit })
    }

    pub fn with_layout(
        gpu: &Gpu,
        name: &str,
        cols: usize,
        format: WeightFormat,
        modules: Vec<ModuleTensors>,
        layout: Layout,
    ) -> Result<Matrix> {
        let rows: usize = modules.iter().map(|m| m.rows).sum();
        let (wrow, srow) = format.row_bytes(cols);
        // Pieces are cut on multiples of `cut` rows: whole units or experts, and offsets that keep
        // every scale/bias write 4-byte aligned.
        let group = match layout {
            Layout::Rows => 1,
            Layout::Paired { unit } => 2 * unit,
            Layout::Experts { rows_per_expert, .. } => rows_per_expert,
        };
        let align = if srow == 0 { 1 } else { 4 / gcd(srow as usize, 4) };
        let cut = lcm(lcm(group, align), if layout == Layout::Rows { 8 } else { 1 });
        let mut module_row = 0;
        for m in &modules {
            if (module_row * srow as usize) % 4 != 0 {
                return Err(Error::Config(format!(
                    "{name}: module {} starts at row {module_row}, which would misalign its scales",
                    m.weight
                )));
            }
            module_row += m.rows;
        }
        let max_rows = (gpu.max_binding / wrow.max(1)) as usize / cut * cut;
        if max_rows == 0 {
            return Err(Error::Limit(format!(
                "{name}: {cut} rows ({}) need {} bytes, more than the storage-binding limit of {} bytes",
                if group > 1 { "one expert or unit" } else { "the smallest piece" },
                wrow * cut as u64,
                gpu.max_binding
            )));
        }
        let n_pieces = rows.div_ceil(max_rows);
        let per_piece = rows.div_ceil(n_pieces).next_multiple_of(cut).min(max_rows);
        let mut pieces = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = per_piece.min(rows - row_start);
            let label = format!("{name}[{row_start}..{}]", row_start + n);
            let weight = gpu.storage(&label, wrow * n as u64)?;
            let (scales, biases) = if srow > 0 {
                (Some(gpu.storage(&label, srow * n as u64)?), Some(gpu.storage(&label, srow * n as u64)?))
            } else {
                (None, None)
            };
            pieces.push(Piece { row_start, rows: n, weight, scales, biases });
            row_start += n;
        }
        Ok(Matrix { name: name.to_string(), rows, cols, format, layout, modules, pieces })
    }

    /// Bytes of the whole matrix (codes, scales and biases).
    pub fn bytes(&self) -> u64 {
        let (w, s) = self.format.row_bytes(self.cols);
        (w + 2 * s) * self.rows as u64
    }

    /// Bytes of one row (codes, scales and biases).
    pub fn row_bytes(&self) -> u64 {
        let (w, s) = self.format.row_bytes(self.cols);
        w + 2 * s
    }

    /// For gate/up pairs (the fused SwiGLU kernel): the rows of one gate (or up) run, each
    /// followed by its partner run; the output then has half the matrix's rows.
    pub fn pair_unit(&self) -> Option<usize> {
        match self.layout {
            Layout::Paired { unit } => Some(unit),
            Layout::Experts { rows_per_expert, paired: true, .. } => Some(rows_per_expert / 2),
            _ => None,
        }
    }

    /// (experts, output rows per expert) of an expert matrix.
    pub fn experts(&self) -> Option<(usize, usize)> {
        match self.layout {
            Layout::Experts { experts, rows_per_expert, paired } => {
                Some((experts, if paired { rows_per_expert / 2 } else { rows_per_expert }))
            }
            _ => None,
        }
    }

    /// Bytes a decode step reads: the whole matrix, or of an expert matrix the `top_k` chosen experts.
    pub fn decode_bytes(&self, top_k: usize) -> u64 {
        match self.experts() {
            Some((experts, _)) => self.bytes() / experts as u64 * top_k as u64,
            None => self.bytes(),
        }
    }

    /// The byte routes from this matrix's tensors into its pieces.
    pub fn destinations(&self) -> Vec<Dest> {
        let (wrow, srow) = self.format.row_bytes(self.cols);
        let mut out = Vec::new();
        let mut module_row = 0;
        for m in &self.modules {
            for p in &self.pieces {
                let lo = module_row.max(p.row_start);
                let hi = (module_row + m.rows).min(p.row_start + p.rows);
                if lo >= hi {
                    continue;
                }
                let mut route = |tensor: &str, buffer: &wgpu::Buffer, row_bytes: u64| {
                    out.push(Dest {
                        tensor: tensor.to_string(),
                        buffer: buffer.clone(),
                        src_offset: (m.row_offset + lo - module_row) as u64 * row_bytes,
                        dst_offset: (lo - p.row_start) as u64 * row_bytes,
                        len: (hi - lo) as u64 * row_bytes,
                    })
                };
                route(&m.weight, &p.weight, wrow);
                if let (Some(s), Some(b), Some(sb), Some(bb)) = (&m.scales, &m.biases, &p.scales, &p.biases) {
                    route(s, sb, srow);
                    route(b, bb, srow);
                }
            }
            module_row += m.rows;
        }
        out
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// What a `matmul.wgsl` specialisation does besides `y = W x` (see the shader's header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Gate/up pairs interleaved in units of this many rows (0: not paired).
    pub paired_unit: u32,
    pub add: bool,
    pub head: bool,
    pub experts: Option<ExpertVariant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpertVariant {
    pub top_k: u32,
    /// Output rows per expert.
    pub rows_per_expert: u32,
    /// Routing-table slots (most tokens per pass x top_k).
    pub slots: u32,
    /// x row = slot (else slot / top_k, the token).
    pub x_by_slot: bool,
    /// Weighted sum over the slots into one row (decode down projection).
    pub sum: bool,
    /// Count the expert rows read (bench).
    pub count: bool,
}

/// Specialised `matmul.wgsl` modules, built once per distinct (format, K, variant).
#[derive(Default)]
pub struct MatmulKernels {
    cache: HashMap<(WeightFormat, usize, Variant), Arc<Kernel>>,
}

pub const MATMUL_SOURCE: &str = include_str!("../../shaders/matmul.wgsl");
pub const MATMUL_TILE_T: u32 = 32;

/// Lanes that share one row in `matvec`: enough for the row's 32-input blocks, at most 32.
pub fn matvec_lanes(k: usize) -> u32 {
    (k.div_ceil(32) as u32).next_power_of_two().min(32)
}

pub fn matmul_tile_rows(dual: bool) -> u32 {
    if dual {
        32
    } else {
        64
    }
}

impl MatmulKernels {
    pub fn get(&mut self, gpu: &Gpu, format: WeightFormat, k: usize, v: Variant) -> Arc<Kernel> {
        self.cache
            .entry((format, k, v))
            .or_insert_with(|| {
                let (wfmt, bits, group, sfmt, block_words) = match format {
                    WeightFormat::Affine { bits, group_size, scale_dtype } => {
                        let sfmt = match scale_dtype {
                            DType::BF16 => 0,
                            DType::F16 => 1,
                            _ => 2,
                        };
                        (0, bits, group_size, sfmt, bits)
                    }
                    WeightFormat::Dense(DType::BF16) => (1, 8, 32, 0, 16),
                    WeightFormat::Dense(DType::F16) => (2, 8, 32, 0, 16),
                    WeightFormat::Dense(_) => (3, 8, 32, 0, 32),
                };
                let e = v.experts.unwrap_or(ExpertVariant {
                    top_k: 1,
                    rows_per_expert: 1,
                    slots: 1,
                    x_by_slot: false,
                    sum: false,
                    count: false,
                });
                let entries: &[&str] = if v.experts.is_some() {
                    &["expert_matvec", "expert_matmul"]
                } else {
                    &["matvec", "matmul", "gather"]
                };
                use Binding::*;
                Arc::new(
                    KernelBuilder::new("matmul", MATMUL_SOURCE, entries)
                        .u32("WFMT", wfmt)
                        .u32("BITS", bits)
                        .u32("GROUP", group)
                        .u32("SFMT", sfmt)
                        .u32("K", k as u32)
                        .u32("BLOCK_WORDS", block_words)
                        .u32("LANES", matvec_lanes(k))
                        .bool("DUAL", v.paired_unit > 0)
                        .u32("UNIT", v.paired_unit.max(1))
                        .bool("ADD", v.add)
                        .bool("HEAD", v.head)
                        .bool("X_BY_SLOT", e.x_by_slot)
                        .bool("SUM", e.sum)
                        .bool("COUNT", e.count)
                        .u32("TOP_K", e.top_k)
                        .u32("E_ROWS", e.rows_per_expert)
                        .u32("SLOTS", e.slots)
                        .bindings(&[Uniform, Uniform, Read, ReadWrite, Read, Read, Read, Read, ReadWrite])
                        .build(gpu),
                )
            })
            .clone()
    }
}
