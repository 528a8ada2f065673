//! `webqwen info`: the GPU adapter, its features and limits, and a model's shapes, formats and memory.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;

use webqwen::gpu::Gpu;
use webqwen::ModelConfig;

use crate::args::{resolve, GpuArgs};

#[derive(Args)]
pub struct InfoArgs {
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub async fn info(args: InfoArgs) -> Result<()> {
    let InfoArgs { model, gpu } = args;
    let opts = gpu.load_options();
    let g = Gpu::new(&opts.gpu).await?;
    let a = &g.adapter_info;
    println!("adapter: {} ({:?}, {:?}, driver {} {})", a.name, a.backend, a.device_type, a.driver, a.driver_info);
    println!("features: shader-f16 {}, subgroups {}", yes_no(g.has_f16), yes_no(g.has_subgroups));
    println!(
        "limits: storage binding {} MiB (using {} MiB), buffer {} MiB, workgroup storage {} KiB, invocations {}",
        g.limits.max_storage_buffer_binding_size >> 20,
        g.max_binding >> 20,
        g.limits.max_buffer_size >> 20,
        g.limits.max_compute_workgroup_storage_size >> 10,
        g.limits.max_compute_invocations_per_workgroup
    );
    if let Some(m) = model {
        let dir = resolve(&m)?;
        model_info(&dir)?;
    }
    Ok(())
}

fn model_info(dir: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(dir.join("config.json")).with_context(|| format!("{}/config.json", dir.display()))?;
    let c = ModelConfig::from_json(&text)?;
    let (index, _) = webqwen::weights::open_dir(dir)?;
    println!("model: {}", dir.display());
    println!(
        "  {}: {} layers, hidden {}, heads {} (kv {}), head_dim {}, intermediate {}, vocab {}, rope theta {}, {} embeddings",
        c.model_type,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
        c.rope_theta,
        if c.tie_word_embeddings { "tied" } else { "untied" }
    );
    match &c.quantization {
        Some(q) => println!(
            "  quantization: affine {} bits, group {}{}",
            q.default.bits,
            q.default.group_size,
            if q.overrides.is_empty() {
                String::new()
            } else {
                format!(", {} per-module overrides", q.overrides.len())
            }
        ),
        None => println!("  quantization: none"),
    }
    let bytes: u64 = index.tensors.values().map(|t| t.len).sum();
    println!(
        "  weights: {} tensors in {} file(s), {:.1} MiB",
        index.tensors.len(),
        index.files.len(),
        bytes as f64 / (1 << 20) as f64
    );
    let quant = c.quantization.as_ref();
    let mut shown = vec![
        ("model.embed_tokens".to_string(), c.vocab_size, c.hidden_size),
        ("model.layers.0.self_attn.q_proj".to_string(), c.num_heads * c.head_dim, c.hidden_size),
    ];
    if let Some(l) = (0..c.num_layers).find(|&l| !c.is_moe_layer(l)) {
        shown.push((format!("model.layers.{l}.mlp.down_proj"), c.hidden_size, c.intermediate_size));
    }
    for (path, rows, cols) in shown {
        let (f, _) = webqwen::model::linear::module_format(&index, quant, &path, rows, cols)?;
        println!("  {path}: [{rows}, {cols}] {}", f.describe());
    }
    if let Some(m) = &c.moe {
        let moe_layers: Vec<usize> = (0..c.num_layers).filter(|&l| c.is_moe_layer(l)).collect();
        println!(
            "  experts: {} per MoE layer, top-{} ({}), expert size {}, {} of {} layers MoE",
            m.num_experts,
            m.num_experts_per_tok,
            if m.norm_topk_prob { "renormalised" } else { "not renormalised" },
            m.moe_intermediate_size,
            moe_layers.len(),
            c.num_layers
        );
        if let Some(&l) = moe_layers.first() {
            let router = format!("model.layers.{l}.mlp.gate");
            let (f, _) = webqwen::model::linear::module_format(&index, quant, &router, m.num_experts, c.hidden_size)?;
            println!("  {router}: [{}, {}] {}", m.num_experts, c.hidden_size, f.describe());
            let stacked = format!("model.layers.{l}.mlp.switch_mlp.down_proj");
            let layout = if index.get(&format!("{stacked}.weight")).is_some() {
                let (f, _) = webqwen::model::linear::stacked_format(
                    &index,
                    quant,
                    &stacked,
                    Some(m.num_experts),
                    c.hidden_size,
                    m.moe_intermediate_size,
                )?;
                format!("{} (stacked)", f.describe())
            } else {
                "Hugging Face per-expert tensors (stacked at load)".to_string()
            };
            println!("  {stacked}: [{}, {}, {}] {layout}", m.num_experts, c.hidden_size, m.moe_intermediate_size);
        }
        let is_expert = |name: &str| name.contains(".mlp.switch_mlp.") || name.contains(".mlp.experts.");
        let expert: u64 = index.tensors.iter().filter(|(n, _)| is_expert(n)).map(|(_, t)| t.len).sum();
        let chosen = expert / m.num_experts as u64 * m.num_experts_per_tok as u64;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "  memory: {:.1} MiB shared (embeddings, attention, routers, dense MLPs) + {:.1} MiB of experts, \
             of which a token uses {:.1} MiB (top-{} of {})",
            mib(bytes - expert),
            mib(expert),
            mib(chosen),
            m.num_experts_per_tok,
            m.num_experts
        );
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
