//! `webqwen bench`: prefill and decode speed of a model or of synthetic weights of a real shape.

use anyhow::{bail, Result};
use clap::Args;

use webqwen::engine::Engine;
use webqwen::session::Session;
use webqwen::ModelConfig;

use crate::args::{progress_bar, resolve, GpuArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, conflicts_with = "synthetic", required_unless_present = "synthetic")]
    model: Option<String>,
    /// Random 4-bit weights of a real Qwen3 shape, made in process (no download).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(webqwen::weights::synthetic::SHAPES))]
    synthetic: Option<String>,
    /// With --synthetic: this many decoder layers instead of the real count (to fit memory).
    #[arg(long, requires = "synthetic")]
    layers: Option<usize>,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub async fn bench(args: BenchArgs) -> Result<()> {
    let BenchArgs { model, synthetic, layers, prompt_tokens, gen_tokens, json, gpu } = args;
    let mut opts = gpu.load_options();
    // MoE kernels then count the expert rows they read, to show only the chosen experts are.
    opts.model.count_expert_reads = true;
    let t0 = std::time::Instant::now();
    let (mut engine, label) = if let Some(shape) = synthetic {
        let config = ModelConfig::from_json(&webqwen::weights::synthetic::config_json(&shape, layers)?)?;
        let (index, mut source) = webqwen::weights::synthetic::synthetic(&config);
        let bar = progress_bar("generating weights");
        let engine = Engine::load(config, &index, &mut source, webqwen::text::QWEN3_ID_COUNT, &opts, &mut |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        })
        .await?;
        bar.finish_and_clear();
        let layers = layers.map(|n| format!(", {n} layers")).unwrap_or_default();
        (engine, format!("synthetic Qwen3-{shape} 4-bit g64{layers}"))
    } else {
        let name = model.expect("clap requires --model or --synthetic");
        let dir = resolve(&name)?;
        let bar = progress_bar("loading weights");
        let session = Session::load_dir(&dir, &opts, &mut |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        })
        .await?;
        bar.finish_and_clear();
        (session.engine, name)
    };
    let load_seconds = t0.elapsed().as_secs_f64();
    if prompt_tokens.saturating_add(gen_tokens).saturating_add(8) > engine.model.context {
        bail!("--prompt-tokens + --gen-tokens exceed the context ({}); raise --context", engine.model.context);
    }
    let report = webqwen::bench::run(&mut engine, prompt_tokens, gen_tokens).await?;
    let mut v = serde_json::to_value(&report)?;
    v["model"] = serde_json::json!(label);
    v["load_seconds"] = serde_json::json!(load_seconds);
    if json {
        println!("{v}");
    } else {
        println!("{label} on {} ({:?})", engine.gpu.adapter_info.name, engine.gpu.adapter_info.backend);
        println!("{}", report.to_text());
    }
    Ok(())
}
