//! `webqwen`, the native command line over the engine: the commands, `main` and their dispatch.

mod args;
mod bench;
mod chat;
mod generate;
mod info;
mod score;
mod synth;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "webqwen",
    version,
    about = "Qwen3 (official MLX releases) on WebGPU: chat, generate, score and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive chat (/reset, /think on|off, /quit; Ctrl-C stops the current answer).
    Chat(chat::ChatArgs),
    /// Generate from a prompt (chat-templated unless --raw) or from token ids.
    Generate(generate::GenerateArgs),
    /// Teacher-forced logits of every position, as a float32 .npy of shape [T, vocab].
    Logits(score::LogitsArgs),
    /// Perplexity of a text file (no chat template; every position after the first is scored).
    Perplexity(score::PerplexityArgs),
    /// Prefill and decode speed, dispatches, submits and readback per token, memory.
    Bench(bench::BenchArgs),
    /// Write random weights of a real Qwen3 shape as an MLX model directory.
    Synth(synth::SynthArgs),
    /// The GPU adapter, its features and limits, and (with --model) the model's shapes and formats.
    Info(info::InfoArgs),
}

fn main() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan drivers warn without it; nothing here needs a real one.
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let cli = Cli::parse();
    if let Err(e) = pollster::block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Chat(args) => chat::chat(args).await,
        Command::Generate(args) => generate::generate(args).await,
        Command::Logits(args) => score::logits(args).await,
        Command::Perplexity(args) => score::perplexity(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Synth(args) => synth::synth(args),
        Command::Info(args) => info::info(args).await,
    }
}
