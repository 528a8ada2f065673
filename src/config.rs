//! `config.json` of a Qwen3 model as written by `mlx_lm.convert` (dense `qwen3`, MoE `qwen3_moe`),
//! including the MLX `quantization` block with its per-module overrides.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The shapes and constants of one model: everything the graph needs, nothing more.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Explicit in every Qwen3 release (128); never derived from hidden/heads unless absent.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub moe: Option<MoeConfig>,
    pub quantization: Option<QuantConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

/// MLX affine quantization: a default plus overrides keyed by module path
/// (`model.layers.0.mlp.gate`), where `false` means "left unquantized".
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConfig {
    pub default: QuantParams,
    pub overrides: Vec<(String, Option<QuantParams>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub bits: u32,
    pub group_size: u32,
}

impl QuantConfig {
    /// Parameters for the module at `path` if the config says it is quantized. The loader still
    /// decides from the file (a module is quantized iff `path.scales` exists); this supplies bits/group.
    pub fn params_for(&self, path: &str) -> Option<QuantParams> {
        for (p, q) in &self.overrides {
            if p == path {
                return *q;
            }
        }
        Some(self.default)
    }
}

/// config.json as written: every number is read as JSON gives it (u64 / f64), so nothing is
/// truncated or rounded before it is checked.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: u64,
    hidden_size: u64,
    intermediate_size: Option<u64>,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<u64>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<Value>,
    num_experts: Option<u64>,
    num_experts_per_tok: Option<u64>,
    moe_intermediate_size: Option<u64>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<u64>,
    mlp_only_layers: Option<Vec<u64>>,
    quantization: Option<Value>,
    quantization_config: Option<Value>,
    rope_scaling: Option<Value>,
}

/// What webqwen accepts of each size in config.json: every real Qwen3 (up to the 235B MoE) fits
/// with room to spare, and within these bounds every buffer size and offset the engine computes
/// fits a u64 (and a u32 where the shaders need one) without overflow.
pub mod limits {
    pub const VOCAB: u64 = 1 << 21;
    pub const HIDDEN: u64 = 1 << 16;
    pub const INTERMEDIATE: u64 = 1 << 18;
    pub const LAYERS: u64 = 1024;
    pub const HEADS: u64 = 1024;
    pub const HEAD_DIM: u64 = 256;
    pub const POSITIONS: u64 = 1 << 24;
    pub const EXPERTS: u64 = 512;
    pub const EXPERTS_PER_TOKEN: u64 = 16;
}

/// `name` must be in `1..=max`.
fn size_field(name: &str, v: u64, max: u64) -> Result<usize> {
    if v == 0 || v > max {
        return Err(Error::Config(format!("config.json: {name} is {v}; webqwen accepts 1 to {max}")));
    }
    Ok(v as usize)
}

/// `name` must be finite and in `(0, max]`, also once rounded to the f32 the shaders use (1e-300
/// is positive as a JSON number and 0 as an f32).
fn positive_float(name: &str, v: f64, max: f64) -> Result<f32> {
    let f = v as f32;
    if !(v.is_finite() && v <= max && f.is_finite() && f > 0.0) {
        return Err(Error::Config(format!("config.json: {name} is {v}; it must be a positive number up to {max:e}")));
    }
    Ok(f)
}

impl ModelConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |msg: String| Error::Config(msg);
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(format!("config.json: {e}")))?;
        let model_type = raw.model_type.unwrap_or_default();
        if model_type != "qwen3" && model_type != "qwen3_moe" {
            return Err(bad(format!(
                "config.json: model_type {model_type:?} is not supported (webqwen runs \"qwen3\" and \"qwen3_moe\")"
            )));
        }
        if let Some(scaling) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(bad(format!("config.json: rope_scaling {scaling} is not supported yet")));
        }
        let vocab_size = size_field("vocab_size", raw.vocab_size, limits::VOCAB)?;
        let hidden_size = size_field("hidden_size", raw.hidden_size, limits::HIDDEN)?;
        let num_layers = size_field("num_hidden_layers", raw.num_hidden_layers, limits::LAYERS)?;
        let num_heads = size_field("num_attention_heads", raw.num_attention_heads, limits::HEADS)?;
        let num_kv_heads =
            size_field("num_key_value_heads", raw.num_key_value_heads.unwrap_or(num_heads as u64), limits::HEADS)?;
        if num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "config.json: num_attention_heads {num_heads} must be a positive multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = raw.head_dim.unwrap_or((hidden_size / num_heads) as u64);
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > limits::HEAD_DIM {
            return Err(bad(format!("config.json: head_dim {head_dim} must be even and at most {}", limits::HEAD_DIM)));
        }
        let intermediate_size = match raw.intermediate_size {
            Some(n) => size_field("intermediate_size", n, limits::INTERMEDIATE)?,
            None => 0,
        };
        let eos_ids: Vec<u64> = match raw.eos_token_id {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_u64()).collect::<Option<_>>().unwrap_or_else(|| vec![u64::MAX])
            }
            Some(v) => vec![v.as_u64().unwrap_or(u64::MAX)],
        };
        if let Some(bad_id) = eos_ids.iter().find(|&&id| id >= vocab_size as u64) {
            let shown = if *bad_id == u64::MAX { "not a token id".to_string() } else { bad_id.to_string() };
            return Err(bad(format!(
                "config.json: eos_token_id {shown} is outside the vocabulary (vocab_size {vocab_size})"
            )));
        }
        let moe = match raw.num_experts.unwrap_or(0) {
            0 => None,
            num_experts => {
                let experts = raw.num_experts_per_tok.unwrap_or(8);
                if num_experts > limits::EXPERTS || experts == 0 || experts > limits::EXPERTS_PER_TOKEN.min(num_experts)
                {
                    return Err(bad(format!(
                        "config.json: {num_experts} experts with {experts} per token is not supported (webqwen routes up to \
                         {} experts, 1 to {} per token)",
                        limits::EXPERTS,
                        limits::EXPERTS_PER_TOKEN
                    )));
                }
                let inter = raw
                    .moe_intermediate_size
                    .ok_or_else(|| bad("config.json: num_experts set but moe_intermediate_size missing".into()))?;
                Some(MoeConfig {
                    num_experts: num_experts as usize,
                    num_experts_per_tok: experts as usize,
                    moe_intermediate_size: size_field("moe_intermediate_size", inter, limits::INTERMEDIATE)?,
                    norm_topk_prob: raw.norm_topk_prob.unwrap_or(false),
                    decoder_sparse_step: raw.decoder_sparse_step.unwrap_or(1).clamp(1, limits::LAYERS) as usize,
                    mlp_only_layers: raw
                        .mlp_only_layers
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|&l| l < num_layers as u64)
                        .map(|l| l as usize)
                        .collect(),
                })
            }
        };
        let quant_value = raw.quantization.or(raw.quantization_config).filter(|v| !v.is_null());
        let quantization = quant_value.map(|v| parse_quantization(&v)).transpose()?;
        let config = ModelConfig {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: head_dim as usize,
            rms_norm_eps: positive_float("rms_norm_eps", raw.rms_norm_eps.unwrap_or(1e-6), 0.5)?,
            rope_theta: positive_float("rope_theta", raw.rope_theta.unwrap_or(1_000_000.0), 1e15)?,
            max_position_embeddings: size_field(
                "max_position_embeddings",
                raw.max_position_embeddings.unwrap_or(40960),
                limits::POSITIONS,
            )?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            eos_token_ids: eos_ids.into_iter().map(|id| id as u32).collect(),
            moe,
            quantization,
        };
        if config.intermediate_size == 0 && (0..num_layers).any(|l| !config.is_moe_layer(l)) {
            return Err(bad("config.json: intermediate_size is missing (the model has dense MLP layers)".into()));
        }
        Ok(config)
    }

    /// Whether decoder layer `layer` uses the sparse MoE block (mlx-lm's rule).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        match &self.moe {
            Some(m) => !m.mlp_only_layers.contains(&layer) && (layer + 1) % m.decoder_sparse_step == 0,
            None => false,
        }
    }
}

fn parse_quantization(v: &Value) -> Result<QuantConfig> {
    let bad = |msg: String| Error::Config(format!("config.json quantization: {msg}"));
    let obj = v.as_object().ok_or_else(|| bad("expected an object".into()))?;
    if let Some(mode) = obj.get("mode").and_then(|m| m.as_str()) {
        if mode != "affine" {
            return Err(bad(format!(
                "mode {mode:?} is not supported (webqwen supports MLX \"affine\" quantization; mxfp4/mxfp8/nvfp4 are not implemented)"
            )));
        }
    }
    let params = |o: &serde_json::Map<String, Value>, what: &str| -> Result<QuantParams> {
        let number = |key: &str| -> Result<u32> {
            let v = o.get(key).ok_or_else(|| bad(format!("{what}: missing {key}")))?;
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(format!("{what}: {key} {v} is not a supported value")))
        };
        let (bits, group_size) = (number("bits")?, number("group_size")?);
        if let Some(mode) = o.get("mode").and_then(|m| m.as_str()) {
            if mode != "affine" {
                return Err(bad(format!("{what}: mode {mode:?} is not supported (only \"affine\")")));
            }
        }
        check_quant_params(bits, group_size).map_err(|m| bad(format!("{what}: {m}")))?;
        Ok(QuantParams { bits, group_size })
    };
    let default = params(obj, "default")?;
    let mut overrides = Vec::new();
    for (key, val) in obj {
        match val {
            Value::Object(o) => overrides.push((key.clone(), Some(params(o, key)?))),
            Value::Bool(false) => overrides.push((key.clone(), None)),
            _ => {}
        }
    }
    Ok(QuantConfig { default, overrides })
}

pub fn check_quant_params(bits: u32, group_size: u32) -> std::result::Result<(), String> {
    if ![2, 3, 4, 5, 6, 8].contains(&bits) {
        return Err(format!("{bits}-bit quantization is not supported (2, 3, 4, 5, 6 and 8 are)"));
    }
    if ![32, 64, 128].contains(&group_size) {
        return Err(format!("group size {group_size} is not supported (32, 64 and 128 are)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantized_dense_config_with_overrides() {
        let cfg = ModelConfig::from_json(
            r#"{"model_type":"qwen3","vocab_size":151936,"hidden_size":1024,"intermediate_size":3072,
            "num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
            "tie_word_embeddings":true,"eos_token_id":151645,
            "quantization":{"group_size":64,"bits":4,"mode":"affine","model.layers.0.mlp.down_proj":{"group_size":32,"bits":8},"lm_head":false}}"#,
        )
        .unwrap();
        assert_eq!(cfg.head_dim, 128);
        let q = cfg.quantization.unwrap();
        assert_eq!(q.params_for("model.layers.1.mlp.down_proj"), Some(QuantParams { bits: 4, group_size: 64 }));
        assert_eq!(q.params_for("model.layers.0.mlp.down_proj"), Some(QuantParams { bits: 8, group_size: 32 }));
        assert_eq!(q.params_for("lm_head"), None);
    }

    #[test]
    fn rejects_unsupported_mode_and_model_type() {
        let base = r#""vocab_size":10,"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2"#;
        let e = ModelConfig::from_json(&format!(r#"{{"model_type":"llama",{base}}}"#)).unwrap_err();
        assert!(e.to_string().contains("llama"), "{e}");
        let e = ModelConfig::from_json(&format!(
            r#"{{"model_type":"qwen3",{base},"quantization":{{"group_size":32,"bits":4,"mode":"mxfp4"}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("mxfp4"), "{e}");
    }

    #[test]
    fn moe_layer_rule_matches_mlx_lm() {
        let cfg = ModelConfig::from_json(
            r#"{"model_type":"qwen3_moe","vocab_size":10,"hidden_size":64,"num_hidden_layers":4,"num_attention_heads":2,
            "intermediate_size":128,"num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":32,"decoder_sparse_step":2,"mlp_only_layers":[3]}"#,
        )
        .unwrap();
        let moe: Vec<bool> = (0..4).map(|l| cfg.is_moe_layer(l)).collect();
        assert_eq!(moe, vec![false, true, false, false]);
    }

    #[test]
    fn rejects_unroutable_expert_counts() {
        let base = r#""model_type":"qwen3_moe","vocab_size":10,"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":2,"moe_intermediate_size":32"#;
        for (experts, k) in [(1024, 8), (8, 0), (8, 9), (64, 32)] {
            let e = ModelConfig::from_json(&format!(r#"{{{base},"num_experts":{experts},"num_experts_per_tok":{k}}}"#))
                .unwrap_err();
            assert!(e.to_string().contains("per token"), "{e}");
        }
        assert!(ModelConfig::from_json(&format!(r#"{{{base},"num_experts":512,"num_experts_per_tok":16}}"#)).is_ok());
    }
}
