//! `webqwen synth`: random weights of a real Qwen3 shape written as an MLX model directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(webqwen::weights::synthetic::SHAPES))]
    shape: String,
    /// This many decoder layers instead of the real count.
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    out: PathBuf,
    /// Directory holding tokenizer.json and tokenizer_config.json to copy in.
    #[arg(long)]
    tokenizer: PathBuf,
}

pub fn synth(args: SynthArgs) -> Result<()> {
    let SynthArgs { shape, layers, out, tokenizer } = args;
    let bytes = webqwen::weights::synthetic::write_model_dir(&shape, layers, &out, &tokenizer)?;
    eprintln!("wrote {} ({:.1} MiB of weights)", out.display(), bytes as f64 / (1 << 20) as f64);
    Ok(())
}
