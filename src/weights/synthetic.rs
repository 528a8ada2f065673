//! Random 4-bit weights of the real Qwen3 shapes, generated on the fly: `bench --synthetic` runs
//! anywhere without downloads, and `synth` writes the same bytes out as an MLX model directory.
//! Values are scaled so activations stay O(1) (codes uniform, bias = -(max code / 2) * scale).
//! The MoE shape (30B-A3B) has its router at 8 bits, as mlx-lm's current conversions do.

use super::{ByteSource, DType, TensorEntry, WeightIndex};
use crate::error::{Error, Result};

pub const SHAPES: &[&str] = &["0.6b", "1.7b", "4b", "8b", "30b-a3b"];

/// config.json of a synthetic model (official shapes, 4-bit group 64), with `layers` decoder
/// layers instead of the real count when given (a smaller model of the same layer shape).
pub fn config_json(shape: &str, layers: Option<usize>) -> Result<String> {
    let (hidden, real_layers, heads, kv, inter, tied, theta) = match shape {
        "0.6b" => (1024, 28, 16, 8, 3072, true, 1e6),
        "1.7b" => (2048, 28, 16, 8, 6144, true, 1e6),
        "4b" => (2560, 36, 32, 8, 9728, true, 1e6),
        "8b" => (4096, 36, 32, 8, 12288, false, 1e6),
        "30b-a3b" => (2048, 48, 32, 4, 6144, false, 1e6),
        other => {
            return Err(Error::Invalid(format!(
                "unknown synthetic shape {other:?} (choose one of {})",
                SHAPES.join(", ")
            )))
        }
    };
    let layers = match layers {
        Some(0) => return Err(Error::Invalid("--layers must be at least 1".into())),
        Some(n) => n,
        None => real_layers,
    };
    let moe = shape == "30b-a3b";
    let mut quantization = serde_json::json!({"group_size": 64, "bits": 4, "mode": "affine"});
    if moe {
        for l in 0..layers {
            quantization[format!("model.layers.{l}.mlp.gate")] = serde_json::json!({"group_size": 64, "bits": 8});
        }
    }
    let mut config = serde_json::json!({
        "architectures": [if moe { "Qwen3MoeForCausalLM" } else { "Qwen3ForCausalLM" }],
        "model_type": if moe { "qwen3_moe" } else { "qwen3" },
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": theta,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": tied,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": "bfloat16",
        "quantization": quantization.clone(),
        "quantization_config": quantization,
    });
    if moe {
        for (k, v) in [
            ("num_experts", serde_json::json!(128)),
            ("num_experts_per_tok", serde_json::json!(8)),
            ("moe_intermediate_size", serde_json::json!(768)),
            ("norm_topk_prob", serde_json::json!(true)),
            ("decoder_sparse_step", serde_json::json!(1)),
            ("mlp_only_layers", serde_json::json!([])),
        ] {
            config[k] = v;
        }
    }
    Ok(config.to_string())
}

#[derive(Clone, Copy)]
enum Fill {
    Codes,
    /// bf16 scale for a row of `cols` inputs.
    Scale(f32),
    Bias(f32),
    Ones,
}

pub struct SyntheticSource {
    /// (start, len, fill), sorted by start.
    regions: Vec<(u64, u64, Fill)>,
}

/// Index and byte source of a synthetic model with the given config (one virtual file).
pub fn synthetic(config: &crate::config::ModelConfig) -> (WeightIndex, SyntheticSource) {
    let c = config;
    let mut index = WeightIndex { files: vec!["synthetic".into()], ..Default::default() };
    let mut regions = Vec::new();
    let mut at = 0u64;
    let mut add = |name: String, dtype: DType, shape: Vec<usize>, fill: Fill| {
        let len = shape.iter().product::<usize>() as u64 * dtype.size() as u64;
        index.tensors.insert(name, TensorEntry { file: 0, dtype, shape, start: at, len });
        regions.push((at, len, fill));
        at += len;
    };
    // `lead`: a leading expert dimension (stacked experts), empty for a plain matrix.
    let quantized = |add: &mut dyn FnMut(String, DType, Vec<usize>, Fill),
                     path: String,
                     lead: &[usize],
                     rows: usize,
                     cols: usize,
                     bits: usize| {
        let max_code = ((1 << bits) - 1) as f32;
        // uniform codes have std max/sqrt(12): scale so that each output has unit variance
        let scale = 1.0 / (max_code / 12f32.sqrt() * (cols as f32).sqrt());
        let shape = |last: usize| lead.iter().copied().chain([rows, last]).collect::<Vec<_>>();
        add(format!("{path}.weight"), DType::U32, shape(cols * bits / 32), Fill::Codes);
        add(format!("{path}.scales"), DType::BF16, shape(cols / 64), Fill::Scale(scale));
        add(format!("{path}.biases"), DType::BF16, shape(cols / 64), Fill::Bias(-max_code / 2.0 * scale));
    };
    let linear = |add: &mut dyn FnMut(String, DType, Vec<usize>, Fill), path: String, rows: usize, cols: usize| {
        quantized(add, path, &[], rows, cols, 4)
    };
    let (h, q, kv) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    linear(&mut add, "model.embed_tokens".into(), c.vocab_size, h);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), DType::BF16, vec![h], Fill::Ones);
        add(format!("{p}.post_attention_layernorm.weight"), DType::BF16, vec![h], Fill::Ones);
        add(format!("{p}.self_attn.q_norm.weight"), DType::BF16, vec![c.head_dim], Fill::Ones);
        add(format!("{p}.self_attn.k_norm.weight"), DType::BF16, vec![c.head_dim], Fill::Ones);
        linear(&mut add, format!("{p}.self_attn.q_proj"), q, h);
        linear(&mut add, format!("{p}.self_attn.k_proj"), kv, h);
        linear(&mut add, format!("{p}.self_attn.v_proj"), kv, h);
        linear(&mut add, format!("{p}.self_attn.o_proj"), h, q);
        match &c.moe {
            Some(m) if c.is_moe_layer(l) => {
                let (e, i) = (m.num_experts, m.moe_intermediate_size);
                quantized(&mut add, format!("{p}.mlp.gate"), &[], e, h, 8);
                quantized(&mut add, format!("{p}.mlp.switch_mlp.gate_proj"), &[e], i, h, 4);
                quantized(&mut add, format!("{p}.mlp.switch_mlp.up_proj"), &[e], i, h, 4);
                quantized(&mut add, format!("{p}.mlp.switch_mlp.down_proj"), &[e], h, i, 4);
            }
            _ => {
                linear(&mut add, format!("{p}.mlp.gate_proj"), c.intermediate_size, h);
                linear(&mut add, format!("{p}.mlp.up_proj"), c.intermediate_size, h);
                linear(&mut add, format!("{p}.mlp.down_proj"), h, c.intermediate_size);
            }
        }
    }
    add("model.norm.weight".into(), DType::BF16, vec![h], Fill::Ones);
    if !c.tie_word_embeddings {
        linear(&mut add, "lm_head".into(), c.vocab_size, h);
    }
    (index, SyntheticSource { regions })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl ByteSource for SyntheticSource {
    fn read(&mut self, _file: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        // A read may span several tensors: fill it region by region.
        let mut at = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let i = self.regions.partition_point(|r| r.0 <= at).saturating_sub(1);
            let (start, len, fill) = *self
                .regions
                .get(i)
                .filter(|r| r.0 <= at && at < r.0 + r.1)
                .ok_or_else(|| Error::Invalid(format!("synthetic read at {at} is outside every tensor")))?;
            let n = ((start + len - at) as usize).min(rest.len());
            let (now, later) = rest.split_at_mut(n);
            fill_region(fill, start, at, now);
            at += n as u64;
            rest = later;
        }
        Ok(())
    }
}

fn fill_region(fill: Fill, start: u64, offset: u64, buf: &mut [u8]) {
    match fill {
        Fill::Codes => {
            // 8 random bytes per 8-byte-aligned word, so any sub-range reads the same bytes.
            for (k, b) in buf.iter_mut().enumerate() {
                let at = offset + k as u64;
                *b = (splitmix(at / 8) >> ((at % 8) * 8)) as u8;
            }
        }
        Fill::Scale(v) | Fill::Bias(v) => {
            let bytes = half::bf16::from_f32(v).to_le_bytes();
            for (k, b) in buf.iter_mut().enumerate() {
                *b = bytes[((offset - start) as usize + k) % 2];
            }
        }
        Fill::Ones => {
            let bytes = half::bf16::from_f32(1.0).to_le_bytes();
            for (k, b) in buf.iter_mut().enumerate() {
                *b = bytes[((offset - start) as usize + k) % 2];
            }
        }
    }
}

/// Write a synthetic model as an MLX model directory: config.json, model.safetensors (streamed
/// tensor by tensor), and the tokenizer files copied from `tokenizer_dir`.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_model_dir(
    shape: &str,
    layers: Option<usize>,
    out: &std::path::Path,
    tokenizer_dir: &std::path::Path,
) -> Result<u64> {
    use std::io::Write;
    let io = |p: &std::path::Path, e: std::io::Error| Error::Io { path: p.display().to_string(), source: e };
    let config_text = config_json(shape, layers)?;
    let config = crate::config::ModelConfig::from_json(&config_text)?;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let src = tokenizer_dir.join(f);
        std::fs::copy(&src, out.join(f)).map_err(|e| io(&src, e))?;
    }
    let pretty: serde_json::Value = serde_json::from_str(&config_text).expect("generated config is JSON");
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&pretty).unwrap()).map_err(|e| io(&cfg_path, e))?;
    let (index, mut source) = synthetic(&config);
    let mut tensors: Vec<(&String, &TensorEntry)> = index.tensors.iter().collect();
    tensors.sort_by_key(|(_, t)| t.start);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "mlx"}));
    for (name, t) in &tensors {
        header.insert(
            (*name).clone(),
            serde_json::json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [t.start, t.start + t.len]}),
        );
    }
    let mut header_bytes = serde_json::to_vec(&header).unwrap();
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');
    let path = out.join("model.safetensors");
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes()).map_err(|e| io(&path, e))?;
    w.write_all(&header_bytes).map_err(|e| io(&path, e))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0;
    for (_, t) in tensors {
        let mut off = 0;
        while off < t.len {
            let n = (buf.len() as u64).min(t.len - off) as usize;
            source.read(0, t.start + off, &mut buf[..n])?;
            w.write_all(&buf[..n]).map_err(|e| io(&path, e))?;
            off += n as u64;
        }
        total += t.len;
    }
    w.flush().map_err(|e| io(&path, e))?;
    Ok(total)
}
