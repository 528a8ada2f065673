//! Property tests: whatever a model's files say, parsing them gives a value or an error, never a
//! panic, an abort or a hang. Random and extreme `config.json`s, safetensors headers and shard
//! indexes, and random tensor tables checked against configs, for a bounded number of cases
//! (`PROPTEST_CASES` raises it for a longer hunt).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use webqwen::config::limits;
use webqwen::model::linear::{module_format, stacked_format};
use webqwen::weights::{header_len, ShardIndex, WeightIndex};
use webqwen::ModelConfig;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

/// Numbers that break naive code: zero, one, powers of two around word sizes, negatives, floats
/// that overflow f32, NaN-adjacent extremes (JSON has no NaN).
fn extreme_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(7)),
        Just(json!(64)),
        Just(json!(128)),
        Just(json!(-1)),
        Just(json!(u32::MAX)),
        Just(json!((1u64 << 32) + 4)),
        Just(json!(1u64 << 62)),
        Just(json!(u64::MAX)),
        Just(json!(1e39)),
        Just(json!(-1e-6)),
        Just(json!(1e-300)),
        Just(json!(0.5)),
        Just(json!(1e308)),
        (0u64..100_000).prop_map(|n| json!(n)),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => extreme_number(),
        1 => Just(Value::Null),
        1 => Just(json!("qwen3")),
        1 => Just(json!(true)),
        1 => Just(json!([1, 2])),
        1 => Just(json!({"bits": 4})),
    ]
}

const FIELDS: [&str; 19] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "eos_token_id",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "tie_word_embeddings",
    "norm_topk_prob",
    "quantization",
];

/// A valid small config with some fields replaced by random or extreme values.
fn config_json() -> impl Strategy<Value = (String, Map<String, Value>)> {
    let base = json!({
        "model_type": "qwen3_moe", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 4096, "eos_token_id": 7,
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "quantization": {"group_size": 64, "bits": 4, "model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}}
    });
    let edits = proptest::collection::vec((0..FIELDS.len(), any_value(), 0..4u8), 1..6);
    (edits, prop_oneof![Just("qwen3"), Just("qwen3_moe")]).prop_map(move |(edits, model_type)| {
        let mut c = base.as_object().unwrap().clone();
        c.insert("model_type".into(), json!(model_type));
        for (field, value, how) in edits {
            let key = FIELDS[field];
            let quant = c.get_mut("quantization").and_then(|q| q.as_object_mut());
            match (key, how, quant) {
                (_, 0, _) => {
                    c.remove(key);
                }
                ("quantization", 1, Some(q)) => {
                    q.insert("bits".into(), value);
                }
                ("quantization", 2, Some(q)) => {
                    q.insert("group_size".into(), value);
                }
                ("quantization", 3, Some(q)) => {
                    q.insert("model.layers.0.mlp.gate".into(), json!({"group_size": 64, "bits": value}));
                }
                _ => {
                    c.insert(key.into(), value);
                }
            }
        }
        (serde_json::to_string(&c).unwrap(), c)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// A config parses to values within webqwen's limits, or is refused; never a panic.
    #[test]
    fn configs_parse_or_fail(config in config_json()) {
        let (text, _) = config;
        if let Ok(c) = ModelConfig::from_json(&text) {
            prop_assert!(c.hidden_size as u64 <= limits::HIDDEN && c.hidden_size > 0);
            prop_assert!(c.num_layers as u64 <= limits::LAYERS && c.num_layers > 0);
            prop_assert!(c.vocab_size as u64 <= limits::VOCAB && c.vocab_size > 0);
            prop_assert!(c.rope_theta.is_finite() && c.rope_theta > 0.0);
            prop_assert!(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0);
            prop_assert!(c.num_heads % c.num_kv_heads == 0);
            prop_assert!(c.eos_token_ids.iter().all(|&id| (id as usize) < c.vocab_size));
            if let Some(q) = &c.quantization {
                prop_assert!([2, 3, 4, 5, 6, 8].contains(&q.default.bits));
            }
        }
    }

    /// Random bytes as a whole config.json.
    #[test]
    fn config_bytes_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ModelConfig::from_json(&String::from_utf8_lossy(&bytes));
    }

    /// Random safetensors headers against random file lengths: an index or an error.
    #[test]
    fn safetensors_headers_index_or_fail(
        tensors in proptest::collection::vec(
            (prop_oneof![Just("U32"), Just("BF16"), Just("F16"), Just("F32"), Just("I64"), Just("F8_E4M3")],
             proptest::collection::vec(prop_oneof![Just(0u64), Just(1), Just(64), Just(1 << 31), Just(1 << 40), Just(u64::MAX / 2), Just(u64::MAX)], 0..4),
             prop_oneof![Just(0u64), Just(256), Just(1 << 40), Just(u64::MAX - 1), Just(u64::MAX)]),
            0..5),
        file_len in prop_oneof![Just(0u64), Just(1024), Just(1 << 20), Just(u64::MAX)],
        prefix in any::<[u8; 8]>(),
    ) {
        let mut header = Map::new();
        let mut offset = 0u64;
        for (i, (dtype, shape, extra)) in tensors.iter().enumerate() {
            let end = offset.wrapping_add(*extra);
            header.insert(format!("t{i}"), json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}));
            offset = end;
        }
        let text = serde_json::to_vec(&header).unwrap();
        let mut index = WeightIndex::default();
        if index.add_file("model.safetensors", file_len, &text).is_ok() {
            for t in index.tensors.values() {
                prop_assert!(t.start.checked_add(t.len).is_some_and(|end| end <= file_len));
            }
        }
        let _ = header_len("model.safetensors", &prefix, file_len);
    }

    /// Shard indexes only ever name plain *.safetensors files.
    #[test]
    fn shard_indexes_name_only_plain_files(
        names in proptest::collection::vec(prop_oneof![
            Just("model-00001-of-00002.safetensors".to_string()),
            Just("../x.safetensors".to_string()),
            Just("/etc/passwd".to_string()),
            Just("a/b.safetensors".to_string()),
            Just("..".to_string()),
            Just(".safetensors".to_string()),
            Just("c:\\x.safetensors".to_string()),
            "[a-z./\\\\]{0,12}",
        ], 1..4)
    ) {
        let map: Map<String, Value> = names.iter().enumerate().map(|(i, n)| (format!("w{i}"), json!(n))).collect();
        let text = json!({"weight_map": map}).to_string();
        if let Ok(index) = ShardIndex::parse(&text) {
            for f in index.files() {
                prop_assert!(!f.contains('/') && !f.contains('\\') && !f.starts_with('.') && f.ends_with(".safetensors"), "{f}");
            }
        }
    }

    /// Random tensor tables against a config: each module's format is recognised or refused.
    #[test]
    fn tensor_tables_against_configs(
        config in config_json(),
        weight_dtype in prop_oneof![Just("U32"), Just("BF16"), Just("F32")],
        weight_shape in proptest::collection::vec(prop_oneof![Just(0u64), Just(1), Just(2), Just(8), Just(16), Just(32), Just(64), Just(128), Just(1 << 33)], 1..4),
        scales in proptest::option::of(proptest::collection::vec(prop_oneof![Just(0u64), Just(1), Just(2), Just(64), Just(1 << 33)], 1..4)),
        scale_dtype in prop_oneof![Just("BF16"), Just("F16"), Just("F32"), Just("U32")],
    ) {
        let (text, _) = config;
        let Ok(c) = ModelConfig::from_json(&text) else { return Ok(()) };
        let path = "model.layers.0.mlp.gate";
        let mut header = Map::new();
        let mut offset = 0u64;
        let mut add = |name: &str, dtype: &str, shape: &[u64]| {
            let bits = if dtype == "U32" || dtype == "F32" { 32 } else { 16 };
            let Some(n) = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)) else { return };
            let Some(bytes) = n.checked_mul(bits / 8) else { return };
            if bytes > 1 << 40 { return }
            header.insert(name.into(), json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
        };
        add(&format!("{path}.weight"), weight_dtype, &weight_shape);
        if let Some(s) = &scales {
            add(&format!("{path}.scales"), scale_dtype, s);
            add(&format!("{path}.biases"), scale_dtype, s);
        }
        let text = serde_json::to_vec(&header).unwrap();
        let mut index = WeightIndex::default();
        if index.add_file("model.safetensors", u64::MAX / 4, &text).is_err() {
            return Ok(());
        }
        let quant = c.quantization.as_ref();
        let experts = c.moe.as_ref().map(|m| m.num_experts);
        for (rows, cols) in [(8, c.hidden_size), (c.vocab_size, c.hidden_size), (c.hidden_size, 48)] {
            let _ = module_format(&index, quant, path, rows, cols);
            let _ = stacked_format(&index, quant, path, experts, rows, cols);
        }
    }
}
