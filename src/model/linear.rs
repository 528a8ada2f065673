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
    Affine { bits: u32, group_size: u32, scale_dtype: DType },
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

/// The tensors of one module (`P.weight`, and `P.scales`/`P.biases` when quantized).
#[derive(Clone, Debug)]
pub struct ModuleTensors {
    pub weight: String,
    pub scales: Option<String>,
    pub biases: Option<String>,
    pub rows: usize,
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
        if w.dtype != DType::U32 || w.shape.len() != 2 || w.shape[0] != rows || (w.shape[1] * 32) % cols != 0 {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, but a {rows}x{cols} quantized matrix needs U32 [{rows}, {cols}*bits/32]",
                w.dtype, w.shape
            )));
        }
        let bits = (w.shape[1] * 32 / cols) as u32;
        let shapes = || {
            format!(
                "{name} is U32 {:?} and {scales_name} is {:?}, but config.json implies a [{rows}, {cols}] matrix \
                 (check hidden_size, intermediate_size, head_dim and the head counts)",
                w.shape, s.shape
            )
        };
        if s.shape.len() != 2 || s.shape[0] != rows || s.shape[1] == 0 || cols % s.shape[1] != 0 {
            return Err(bad(format!("tensor {scales_name} has shape {:?}, expected [{rows}, {cols}/group_size]", s.shape)));
        }
        let group_size = (cols / s.shape[1]) as u32;
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
        Ok((format, ModuleTensors { weight: name, scales: Some(scales_name), biases: Some(biases_name), rows }))
    } else {
        if w.dtype == DType::U32 {
            return Err(bad(format!("tensor {scales_name} is missing ({name} is packed U32, so it needs scales and biases)")));
        }
        if w.shape != [rows, cols] {
            return Err(bad(format!("tensor {name} is {:?} {:?}, expected a float [{rows}, {cols}] matrix", w.dtype, w.shape)));
        }
        if cols % 32 != 0 {
            return Err(bad(format!("{path}: input size {cols} is not a multiple of 32")));
        }
        Ok((WeightFormat::Dense(w.dtype), ModuleTensors { weight: name, scales: None, biases: None, rows }))
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

/// A `[rows, cols]` matrix on the GPU made of one or more modules stacked by rows (q, k and v
/// share one matrix when their formats agree, so they cost one dispatch).
pub struct Matrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
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
    pub fn new(gpu: &Gpu, name: &str, cols: usize, format: WeightFormat, modules: Vec<ModuleTensors>) -> Result<Matrix> {
        let rows: usize = modules.iter().map(|m| m.rows).sum();
        let (wrow, srow) = format.row_bytes(cols);
        // Piece boundaries on multiples of 8 rows keep every scale/bias offset 4-byte aligned.
        let max_rows = (gpu.max_binding / wrow.max(1)) as usize / 8 * 8;
        if max_rows == 0 {
            return Err(Error::Limit(format!(
                "{name}: one row needs {wrow} bytes, more than the storage-binding limit of {} bytes",
                gpu.max_binding
            )));
        }
        let n_pieces = rows.div_ceil(max_rows);
        let per_piece = rows.div_ceil(n_pieces).next_multiple_of(8).min(max_rows);
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
        Ok(Matrix { name: name.to_string(), rows, cols, format, modules, pieces })
    }

    pub fn bytes(&self) -> u64 {
        let (w, s) = self.format.row_bytes(self.cols);
        (w + 2 * s) * self.rows as u64
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
                        src_offset: (lo - module_row) as u64 * row_bytes,
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

/// Specialised `matmul.wgsl` modules, built once per distinct (format, K, variant).
#[derive(Default)]
pub struct MatmulKernels {
    cache: HashMap<(WeightFormat, usize, bool, bool, bool), Arc<Kernel>>,
}

pub const MATMUL_SOURCE: &str = include_str!("../../shaders/matmul.wgsl");
pub const MATMUL_TILE_T: u32 = 32;

/// Lanes that share one row in `matvec`: enough for the row's 32-input blocks, at most 32.
pub fn matvec_lanes(k: usize) -> u32 {
    (k.div_ceil(32) as u32).next_power_of_two().min(32)
}

pub fn matmul_tile_rows(dual: bool) -> u32 {
    if dual { 32 } else { 64 }
}

impl MatmulKernels {
    pub fn get(&mut self, gpu: &Gpu, format: WeightFormat, k: usize, dual: bool, add: bool, head: bool) -> Arc<Kernel> {
        self.cache
            .entry((format, k, dual, add, head))
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
                use Binding::*;
                Arc::new(
                    KernelBuilder::new("matmul", MATMUL_SOURCE, &["matvec", "matmul", "gather"])
                        .u32("WFMT", wfmt)
                        .u32("BITS", bits)
                        .u32("GROUP", group)
                        .u32("SFMT", sfmt)
                        .u32("K", k as u32)
                        .u32("BLOCK_WORDS", block_words)
                        .u32("LANES", matvec_lanes(k))
                        .bool("DUAL", dual)
                        .bool("ADD", add)
                        .bool("HEAD", head)
                        .bindings(&[Uniform, Uniform, Read, ReadWrite, Read, Read, Read, Read, Read, Read])
                        .build(gpu),
                )
            })
            .clone()
    }
}
