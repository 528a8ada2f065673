//! `webqwen generate`: one completion of a prompt or of token ids, streamed as text or printed as JSON.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;

use webqwen::session::CompletionRequest;
use webqwen::text::{Message, TextEvent};

use crate::args::{load_session, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, conflicts_with = "token_ids", required_unless_present = "token_ids")]
    prompt: Option<String>,
    /// Use the prompt as is (special tokens in it are honoured), without the chat template.
    #[arg(long)]
    raw: bool,
    /// Comma-separated prompt token ids.
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
    /// Thinking off: the template closes an empty <think> block.
    #[arg(long)]
    no_think: bool,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub async fn generate(args: GenerateArgs) -> Result<()> {
    let GenerateArgs { model, sampling, prompt, raw, token_ids, no_think, stop, json } = args;
    let thinking = !no_think;
    let mut session = load_session(&model).await?;
    let tokens = match (token_ids, prompt) {
        (Some(ids), _) => ids,
        (None, Some(p)) if raw => session.tokenizer.encode_trusted(&p).map_err(|e| anyhow::anyhow!("{e}"))?,
        (None, Some(p)) => session.chat_tokens(&[Message::new("user", &p)], thinking, None)?,
        (None, None) => bail!("give --prompt or --token-ids"),
    };
    let req = CompletionRequest {
        params: sampling.params(&session.defaults),
        max_tokens: sampling.max_tokens as usize,
        stop,
    };
    let done = session
        .complete(&tokens, &req, &mut |ev| {
            if !json {
                let mut out = std::io::stdout().lock();
                let _ = match ev {
                    TextEvent::Reasoning(r) => write!(out, "{r}"),
                    TextEvent::Content(c) => write!(out, "{c}"),
                };
                let _ = out.flush();
            }
            true
        })
        .await?;
    let g = &done.generation;
    let decode_tps = g.decode_tokens_per_second();
    if json {
        let v = serde_json::json!({
            "tokens": g.tokens,
            "text": done.text,
            "content": done.content,
            "reasoning": done.reasoning,
            "prompt_tokens": g.prompt_tokens,
            "stop_reason": g.stop.name(),
            "timings": {
                "prefill_seconds": g.prefill_seconds,
                "decode_seconds": g.decode_seconds,
                "prefill_tokens_per_second": g.prefill_tokens_per_second(),
                "decode_tokens_per_second": decode_tps,
            },
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated, {:.1} tok/s, {}]",
            g.prompt_tokens,
            g.tokens.len(),
            decode_tps,
            g.stop.describe()
        );
    }
    Ok(())
}
