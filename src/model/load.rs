//! Streaming weights into the GPU. A `WeightSink` takes the bytes of the weight files as they
//! arrive, in chunks of any size (a browser's fetch stream, a file read natively), and routes
//! every byte of every tensor straight into its place in the GPU pieces; host memory holds one
//! chunk, never a whole tensor or file (the small norm vectors excepted: they are converted to
//! f32 once complete).

use std::collections::HashMap;
use std::sync::Arc;

use super::linear::Dest;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::weights::{to_f32, ByteSource, DType, WeightIndex};

/// Bytes read per `ByteSource::read` natively.
pub const CHUNK: usize = 4 << 20;
/// Submit (and so release wgpu's staging copies) after this many bytes written.
const FLUSH_EVERY: u64 = 64 << 20;

enum Target {
    /// Bytes go to `buffer` from `dst_offset` on (a route of a matrix piece).
    Gpu { buffer: wgpu::Buffer, dst_offset: u64 },
    /// A norm vector: gathered, then converted to f32.
    Norm { buffer: wgpu::Buffer, dtype: DType, bytes: Vec<u8> },
}

/// One contiguous range of a weight file and where it goes.
struct Segment {
    tensor: String,
    /// Absolute offsets in the file.
    start: u64,
    len: u64,
    target: Target,
    /// Bytes of this segment received so far (they arrive in order).
    done: u64,
    /// A partial 4-byte word waiting for the next chunk (`write_buffer` writes whole words).
    carry: Vec<u8>,
}

/// Routes weight-file bytes into GPU buffers. Each file's bytes must arrive in order (any chunk
/// sizes, gaps and header bytes allowed: bytes outside every tensor are ignored); bytes at
/// offset 0 again start that file over.
pub struct WeightSink {
    gpu: Arc<Gpu>,
    file_names: Vec<String>,
    /// Per file, sorted by start.
    segments: Vec<Vec<Segment>>,
    /// Per file: where the next chunk may start (bytes before it have been seen).
    cursor: Vec<u64>,
    written: u64,
    total: u64,
    since_flush: u64,
}

impl WeightSink {
    pub fn new(
        gpu: Arc<Gpu>,
        index: &WeightIndex,
        dests: &[Dest],
        norms: &[(String, wgpu::Buffer, usize)],
    ) -> Result<WeightSink> {
        let mut by_tensor: HashMap<&str, Vec<&Dest>> = HashMap::new();
        for d in dests {
            by_tensor.entry(d.tensor.as_str()).or_default().push(d);
        }
        let mut segments: Vec<Vec<Segment>> = index.files.iter().map(|_| Vec::new()).collect();
        for (name, routes) in &by_tensor {
            let t = index.get(name).expect("routes are made from the index");
            let covered: u64 = routes.iter().map(|d| d.len).sum();
            if covered != t.len {
                return Err(Error::weights(
                    index.file_name(t),
                    format!("tensor {name}: {} bytes in the file, but the model expects {covered}", t.len),
                ));
            }
            for d in routes {
                segments[t.file].push(Segment {
                    tensor: name.to_string(),
                    start: t.start + d.src_offset,
                    len: d.len,
                    target: Target::Gpu { buffer: d.buffer.clone(), dst_offset: d.dst_offset },
                    done: 0,
                    carry: Vec::new(),
                });
            }
        }
        for (name, buffer, len) in norms {
            let t = index.get(name).expect("norms are checked against the index");
            debug_assert_eq!(t.len as usize, len * t.dtype.size());
            segments[t.file].push(Segment {
                tensor: name.clone(),
                start: t.start,
                len: t.len,
                target: Target::Norm {
                    buffer: buffer.clone(),
                    dtype: t.dtype,
                    bytes: Vec::with_capacity(t.len as usize),
                },
                done: 0,
                carry: Vec::new(),
            });
        }
        for s in &mut segments {
            s.sort_by_key(|g| g.start);
        }
        let total = segments.iter().flatten().map(|s| s.len).sum();
        Ok(WeightSink {
            gpu,
            file_names: index.files.clone(),
            cursor: vec![0; segments.len()],
            segments,
            written: 0,
            total,
            since_flush: 0,
        })
    }

    /// Bytes (of tensors the model uses) received so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.written, self.total)
    }

    /// The (file, start, len) ranges the model needs, in file order: what a source must deliver.
    pub fn needed_ranges(&self) -> Vec<(usize, u64, u64)> {
        let mut out: Vec<(usize, u64, u64)> = Vec::new();
        for (f, segs) in self.segments.iter().enumerate() {
            for s in segs {
                match out.last_mut() {
                    Some((lf, ls, ll)) if *lf == f && *ls + *ll == s.start => *ll += s.len,
                    _ => out.push((f, s.start, s.len)),
                }
            }
        }
        out
    }

    /// Bytes `offset .. offset + bytes.len()` of file `file`.
    pub fn write(&mut self, file: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        if file >= self.segments.len() {
            return Err(Error::Invalid(format!(
                "bytes for weight file {file}, but the model has {}",
                self.segments.len()
            )));
        }
        let name = || self.file_names[file].clone();
        if offset == 0 && self.cursor[file] > 0 {
            // The file starts over (a failed checksum, a server that ignored a Range request):
            // its bytes will be written again, to the same places.
            for s in &mut self.segments[file] {
                self.written -= s.done;
                s.done = 0;
                s.carry.clear();
                if let Target::Norm { bytes, .. } = &mut s.target {
                    bytes.clear();
                }
            }
        } else if offset < self.cursor[file] {
            return Err(Error::weights(
                name(),
                format!("bytes at {offset} arrived after bytes up to {}: chunks must come in order", self.cursor[file]),
            ));
        }
        let end = offset + bytes.len() as u64;
        self.cursor[file] = end;
        let segs = &mut self.segments[file];
        let first = segs.partition_point(|s| s.start + s.len <= offset);
        for s in segs[first..].iter_mut() {
            if s.start >= end {
                break;
            }
            let lo = s.start.max(offset);
            let hi = (s.start + s.len).min(end);
            if lo - s.start != s.done {
                return Err(Error::weights(
                    name(),
                    format!("tensor {}: bytes from {} missing (a chunk was skipped)", s.tensor, s.start + s.done),
                ));
            }
            let part = &bytes[(lo - offset) as usize..(hi - offset) as usize];
            match &mut s.target {
                Target::Norm { buffer, dtype, bytes } => {
                    bytes.extend_from_slice(part);
                    if bytes.len() as u64 == s.len {
                        self.gpu.queue.write_buffer(buffer, 0, bytemuck::cast_slice(&to_f32(*dtype, bytes)));
                    }
                }
                Target::Gpu { buffer, dst_offset } => {
                    let at = *dst_offset + s.done - s.carry.len() as u64;
                    let complete = s.done + part.len() as u64 == s.len;
                    write_words(&self.gpu, buffer, at, &mut s.carry, part, complete);
                }
            }
            s.done += part.len() as u64;
            self.written += part.len() as u64;
            self.since_flush += part.len() as u64;
        }
        if self.since_flush >= FLUSH_EVERY {
            self.gpu.queue.submit([]);
            self.gpu.wait_idle()?;
            self.since_flush = 0;
        }
        Ok(())
    }

    /// Check that every tensor arrived whole, and wait for the writes.
    pub fn finish(self) -> Result<()> {
        for (f, segs) in self.segments.iter().enumerate() {
            if let Some(s) = segs.iter().find(|s| s.done != s.len) {
                return Err(Error::weights(
                    self.file_names[f].clone(),
                    format!(
                        "tensor {}: only {} of its {} bytes arrived (the file is truncated or the download stopped)",
                        s.tensor, s.done, s.len
                    ),
                ));
            }
        }
        self.gpu.queue.submit([]);
        self.gpu.wait_idle()
    }
}

/// Write `carry ++ part` at `at` (4-byte aligned), keeping an unfinished trailing word in `carry`
/// unless `complete` (the route's last bytes: its tail word is zero-padded).
fn write_words(gpu: &Gpu, buffer: &wgpu::Buffer, at: u64, carry: &mut Vec<u8>, part: &[u8], complete: bool) {
    debug_assert_eq!(at % 4, 0, "routes start 4-byte aligned");
    let mut joined: Vec<u8>;
    let data: &[u8] = if carry.is_empty() {
        part
    } else {
        joined = std::mem::take(carry);
        joined.extend_from_slice(part);
        &joined
    };
    let whole = data.len() / 4 * 4;
    if whole > 0 {
        gpu.queue.write_buffer(buffer, at, &data[..whole]);
    }
    let tail = &data[whole..];
    if tail.is_empty() {
        return;
    }
    if complete {
        let mut word = [0u8; 4];
        word[..tail.len()].copy_from_slice(tail);
        gpu.queue.write_buffer(buffer, at + whole as u64, &word);
    } else {
        *carry = tail.to_vec();
    }
}

/// Natively: read the ranges the model needs from `source`, `CHUNK` bytes at a time, in file order.
pub fn stream_weights(
    mut sink: WeightSink,
    source: &mut dyn ByteSource,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for (file, start, len) in sink.needed_ranges() {
        let mut offset = 0u64;
        while offset < len {
            let n = (CHUNK as u64).min(len - offset) as usize;
            source.read(file, start + offset, &mut buf[..n])?;
            sink.write(file, start + offset, &buf[..n])?;
            offset += n as u64;
            let (done, total) = sink.progress();
            progress(done, total);
        }
    }
    let (_, total) = sink.progress();
    sink.finish()?;
    progress(total, total);
    Ok(())
}
