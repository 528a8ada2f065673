//! Streaming weights into the GPU: tensors are visited in file order (so a network stream can
//! feed them) and copied in bounded chunks straight into their pieces; host memory holds at
//! most one chunk, never a whole tensor or file.

use std::collections::HashMap;

use super::linear::Dest;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::weights::{to_f32, ByteSource, WeightIndex};

/// Bytes read per `ByteSource::read`; also the most host memory a weight ever occupies.
pub const CHUNK: usize = 4 << 20;
/// Submit (and so release wgpu's staging copies) after this many bytes written.
const FLUSH_EVERY: u64 = 64 << 20;

pub fn stream_weights(
    gpu: &Gpu,
    index: &WeightIndex,
    source: &mut dyn ByteSource,
    dests: &[Dest],
    norms: &[(String, wgpu::Buffer, usize)],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut by_tensor: HashMap<&str, Vec<&Dest>> = HashMap::new();
    for d in dests {
        by_tensor.entry(d.tensor.as_str()).or_default().push(d);
    }
    let norm_by_tensor: HashMap<&str, &(String, wgpu::Buffer, usize)> = norms.iter().map(|n| (n.0.as_str(), n)).collect();
    let mut wanted: Vec<(&str, &crate::weights::TensorEntry)> = index
        .tensors
        .iter()
        .filter(|(name, _)| by_tensor.contains_key(name.as_str()) || norm_by_tensor.contains_key(name.as_str()))
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    wanted.sort_by_key(|(_, t)| (t.file, t.start));
    let total: u64 = wanted.iter().map(|(_, t)| t.len).sum();
    let mut done = 0u64;
    let mut since_flush = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for (name, t) in wanted {
        if let Some((_, buffer, len)) = norm_by_tensor.get(name) {
            let mut bytes = vec![0u8; t.len as usize];
            source.read(t.file, t.start, &mut bytes)?;
            let values = to_f32(t.dtype, &bytes);
            debug_assert_eq!(values.len(), *len);
            gpu.queue.write_buffer(buffer, 0, bytemuck::cast_slice(&values));
            done += t.len;
            continue;
        }
        let routes = &by_tensor[name];
        let covered: u64 = routes.iter().map(|d| d.len).sum();
        if covered != t.len {
            return Err(Error::weights(
                index.file_name(t),
                format!("tensor {name}: {} bytes in the file, but the model expects {covered}", t.len),
            ));
        }
        // Route by route (they tile the tensor in order), so every write starts 4-byte aligned.
        let mut routes = routes.clone();
        routes.sort_by_key(|d| d.src_offset);
        for d in routes {
            let mut offset = 0u64;
            while offset < d.len {
                let n = (CHUNK as u64).min(d.len - offset) as usize;
                let chunk = &mut buf[..n];
                source.read(t.file, t.start + d.src_offset + offset, chunk)?;
                write_padded(gpu, &d.buffer, d.dst_offset + offset, chunk);
                offset += n as u64;
                done += n as u64;
                since_flush += n as u64;
                if since_flush >= FLUSH_EVERY {
                    gpu.queue.submit([]);
                    gpu.wait_idle()?;
                    since_flush = 0;
                }
                progress(done, total);
            }
        }
    }
    gpu.queue.submit([]);
    gpu.wait_idle()?;
    progress(total, total);
    Ok(())
}

/// `write_buffer` needs 4-byte multiples; pad the odd tail (an odd count of 16-bit values).
fn write_padded(gpu: &Gpu, buffer: &wgpu::Buffer, dst: u64, bytes: &[u8]) {
    debug_assert_eq!(dst % 4, 0, "routes start 4-byte aligned");
    let whole = bytes.len() / 4 * 4;
    if whole > 0 {
        gpu.queue.write_buffer(buffer, dst, &bytes[..whole]);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        gpu.queue.write_buffer(buffer, dst + whole as u64, &tail);
    }
}
