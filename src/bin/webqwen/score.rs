//! `webqwen logits` and `webqwen perplexity`: teacher-forced scoring of given tokens or of a text file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{load_session, ModelArgs};

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn logits(args: LogitsArgs) -> Result<()> {
    let LogitsArgs { model, token_ids, out } = args;
    // Before the model loads: a typo in --out should not cost a forward pass. Nothing is
    // created (or removed) until the logits exist, so a failed run leaves no file behind.
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("--out {}: the directory {} does not exist", out.display(), dir.display());
    }
    let mut session = load_session(&model).await?;
    let logits = session.engine.logits(&token_ids).await?;
    let vocab = session.engine.config().vocab_size;
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    webqwen::npy::write_f32(std::io::BufWriter::new(file), &[token_ids.len(), vocab], &logits)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} [{}, {vocab}]", out.display(), token_ids.len());
    Ok(())
}

pub async fn perplexity(args: PerplexityArgs) -> Result<()> {
    let PerplexityArgs { model, text, json } = args;
    let content = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
    let mut session = load_session(&model).await?;
    let tokens = session.tokenizer.encode_untrusted(&content).map_err(|e| anyhow::anyhow!("{e}"))?;
    if tokens.len() < 2 {
        bail!("{}: need at least 2 tokens to score, got {}", text.display(), tokens.len());
    }
    let (nll, scored) = webqwen::engine::perplexity(&mut session.engine, &tokens).await?;
    let ppl = nll.exp();
    if json {
        println!("{}", serde_json::json!({"ppl": ppl, "nll": nll, "tokens": scored}));
    } else {
        println!("perplexity {ppl:.4} (mean nll {nll:.6} over {scored} tokens)");
    }
    Ok(())
}
