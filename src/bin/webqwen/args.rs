//! What the commands share: the model, GPU and sampling flags, model loading and its progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use webqwen::engine::LoadOptions;
use webqwen::gpu::GpuOptions;
use webqwen::model::ModelOptions;
use webqwen::sample::SamplingParams;
use webqwen::session::Session;

#[derive(Args, Clone)]
pub struct GpuArgs {
    /// Lower the per-binding storage limit (bytes); tensors are split to fit.
    #[arg(long)]
    max_storage_binding: Option<u64>,
    /// Never use shader-f16.
    #[arg(long)]
    no_f16: bool,
    /// Never use subgroup operations.
    #[arg(long)]
    no_subgroups: bool,
    /// KV-cache length in tokens [default: 4096, or what the model and the binding limit allow].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    context: Option<u32>,
    /// How the KV cache stores keys and values: f16 (half the memory) or f32 (exactly
    /// mlx-lm's float32 math). Attention computes in f32 either way.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    kv_cache: String,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A model directory or a Hugging Face repo id (downloaded into the HF cache; honours HF_ENDPOINT).
    #[arg(long, default_value = "Qwen/Qwen3-0.6B-MLX-4bit")]
    model: String,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// 0 = greedy. Default: the model's generation_config.json.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    min_p: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    repetition_penalty: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    presence_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    pub fn params(&self, defaults: &SamplingParams) -> SamplingParams {
        webqwen::sample::SamplingOverrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            seed: Some(self.seed),
        }
        .apply(defaults)
    }
}

impl GpuArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            gpu: GpuOptions {
                max_storage_binding: self.max_storage_binding,
                no_f16: self.no_f16,
                no_subgroups: self.no_subgroups,
            },
            model: ModelOptions {
                context: self.context.map(|c| c as usize),
                kv_cache: self.kv_cache.parse().expect("clap allows only f16 and f32"),
                ..Default::default()
            },
        }
    }
}

pub fn resolve(model: &str) -> Result<PathBuf> {
    webqwen::hub::resolve_model(model, true)
}

pub fn progress_bar(total_label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message(total_label.to_string());
    bar
}

pub async fn load_session(args: &ModelArgs) -> Result<Session> {
    let dir = resolve(&args.model)?;
    let bar = progress_bar("loading weights");
    let session = Session::load_dir(&dir, &args.gpu.load_options(), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .with_context(|| format!("loading {}", dir.display()))?;
    bar.finish_and_clear();
    Ok(session)
}
