//! `webqwen`: the native command line over the engine: chat, generate, logits, perplexity,
//! bench, synth and info.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use webqwen::engine::{Engine, LoadOptions};
use webqwen::gpu::{Gpu, GpuOptions};
use webqwen::model::ModelOptions;
use webqwen::sample::SamplingParams;
use webqwen::session::{CompletionRequest, Session};
use webqwen::text::{Message, TextEvent};
use webqwen::ModelConfig;

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
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Start with thinking off (the model answers directly).
        #[arg(long)]
        no_think: bool,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// Generate from a prompt (chat-templated unless --raw) or from token ids.
    Generate {
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
    },
    /// Teacher-forced logits of every position, as a float32 .npy of shape [T, vocab].
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_delimiter = ',', required = true)]
        token_ids: Vec<u32>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Perplexity of a text file (no chat template; every position after the first is scored).
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode speed, dispatches, submits and readback per token, memory.
    Bench {
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
    },
    /// Write random weights of a real Qwen3 shape as an MLX model directory.
    Synth {
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
    },
    /// The GPU adapter, its features and limits, and (with --model) the model's shapes and formats.
    Info {
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        gpu: GpuArgs,
    },
}

#[derive(Args, Clone)]
struct GpuArgs {
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
struct ModelArgs {
    /// A model directory or a Hugging Face repo id (downloaded into the HF cache; honours HF_ENDPOINT).
    #[arg(long, default_value = "Qwen/Qwen3-0.6B-MLX-4bit")]
    model: String,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
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
    fn params(&self, defaults: &SamplingParams) -> SamplingParams {
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
    fn load_options(&self) -> LoadOptions {
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
        Command::Chat { model, sampling, no_think, system } => chat(model, sampling, !no_think, system).await,
        Command::Generate { model, sampling, prompt, raw, token_ids, no_think, stop, json } => {
            generate(model, sampling, prompt, raw, token_ids, !no_think, stop, json).await
        }
        Command::Logits { model, token_ids, out } => logits(model, token_ids, out).await,
        Command::Perplexity { model, text, json } => perplexity(model, text, json).await,
        Command::Bench { model, synthetic, layers, prompt_tokens, gen_tokens, json, gpu } => {
            bench(model, synthetic, layers, prompt_tokens, gen_tokens, json, gpu).await
        }
        Command::Synth { shape, layers, out, tokenizer } => {
            let bytes = webqwen::weights::synthetic::write_model_dir(&shape, layers, &out, &tokenizer)?;
            eprintln!("wrote {} ({:.1} MiB of weights)", out.display(), bytes as f64 / (1 << 20) as f64);
            Ok(())
        }
        Command::Info { model, gpu } => info(model, gpu).await,
    }
}

fn resolve(model: &str) -> Result<PathBuf> {
    webqwen::hub::resolve_model(model, true)
}

fn progress_bar(total_label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message(total_label.to_string());
    bar
}

async fn load_session(args: &ModelArgs) -> Result<Session> {
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

async fn chat(args: ModelArgs, sampling: SamplingArgs, mut thinking: bool, system: Option<String>) -> Result<()> {
    let mut session = load_session(&args).await?;
    let generating = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupted) = (generating.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })?;
    }
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &system {
        history.push(Message::new("system", s));
    }
    eprintln!(
        "webqwen chat. Commands: /reset, /think on|off, /quit. Ctrl-C stops an answer. Thinking is {}.",
        on_off(thinking)
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("\n> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                session.engine.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            "/think on" => {
                thinking = true;
                eprintln!("(thinking on)");
                continue;
            }
            "/think off" => {
                thinking = false;
                eprintln!("(thinking off)");
                continue;
            }
            _ => {}
        }
        let turn_start = history.len();
        history.push(Message::new("user", line));
        let req = CompletionRequest {
            params: sampling.params(&session.defaults),
            max_tokens: sampling.max_tokens as usize,
            stop: vec![],
        };
        // Leave the answer room: up to a quarter of the context, at least one token.
        let room = req.max_tokens.min(session.engine.model.context / 4).max(1);
        let prompt = match fitted_prompt(&session, &mut history, thinking, room) {
            Ok(p) => p,
            Err(e) => {
                history.truncate(turn_start);
                eprintln!("error: {e:#}\n(this message was not added to the conversation; /reset starts over)");
                continue;
            }
        };
        interrupted.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let mut in_reasoning = false;
        let result = session
            .complete(&prompt, &req, &mut |ev| {
                let mut out = std::io::stdout().lock();
                match ev {
                    TextEvent::Reasoning(r) => {
                        if !in_reasoning {
                            in_reasoning = true;
                            let _ = write!(out, "\x1b[2m[thinking] ");
                        }
                        let _ = write!(out, "{r}");
                    }
                    TextEvent::Content(c) => {
                        if in_reasoning {
                            in_reasoning = false;
                            let _ = write!(out, "\x1b[0m\n");
                        }
                        let _ = write!(out, "{c}");
                    }
                }
                let _ = out.flush();
                !interrupted.load(Ordering::SeqCst)
            })
            .await;
        generating.store(false, Ordering::SeqCst);
        if in_reasoning {
            print!("\x1b[0m");
        }
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                // The conversation goes on without this turn.
                history.truncate(turn_start);
                eprintln!("\nerror: {e:#}\n(this turn was dropped from the conversation; /reset starts over)");
                continue;
            }
        };
        let g = &done.generation;
        eprintln!("\n[{} tokens, {:.1} tok/s, {}]", g.tokens.len(), g.decode_tokens_per_second(), g.stop.describe());
        let mut reply = Message::new("assistant", &done.content);
        if !done.reasoning.is_empty() {
            reply.reasoning_content = Some(done.reasoning.clone());
        }
        history.push(reply);
    }
    Ok(())
}

/// The conversation's prompt, with room for `room` more tokens. When it does not fit the context,
/// the oldest turns (after any system message) are dropped, each drop said on stderr; an error
/// when even the newest message alone does not fit.
fn fitted_prompt(session: &Session, history: &mut Vec<Message>, thinking: bool, room: usize) -> Result<Vec<u32>> {
    let context = session.engine.model.context;
    let mut dropped = 0;
    loop {
        let prompt = session.chat_tokens(history, thinking, None)?;
        if prompt.len() + room <= context {
            if dropped > 0 {
                eprintln!("(dropped the {dropped} oldest message(s) so that the conversation fits the context of {context} tokens)");
            }
            return Ok(prompt);
        }
        // The oldest turn: the first non-system message and the replies up to the next user message.
        let first = history.iter().position(|m| m.role != "system").unwrap_or(history.len());
        let next_user = history.iter().skip(first + 1).position(|m| m.role == "user").map(|i| first + 1 + i);
        match next_user {
            Some(end) => {
                dropped += end - first;
                history.drain(first..end);
            }
            None => bail!(
                "this message needs {} tokens with the template and the answer {room}, more than the context of {context} \
                 tokens; shorten it, or start again with a larger --context",
                prompt.len()
            ),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[allow(clippy::too_many_arguments)]
async fn generate(
    args: ModelArgs,
    sampling: SamplingArgs,
    prompt: Option<String>,
    raw: bool,
    token_ids: Option<Vec<u32>>,
    thinking: bool,
    stop: Vec<String>,
    json: bool,
) -> Result<()> {
    let mut session = load_session(&args).await?;
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

async fn logits(args: ModelArgs, token_ids: Vec<u32>, out: PathBuf) -> Result<()> {
    // Before the model loads: a typo in --out should not cost a forward pass. A failed run
    // leaves no file behind.
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let written = async {
        let mut session = load_session(&args).await?;
        let logits = session.engine.logits(&token_ids).await?;
        let vocab = session.engine.config().vocab_size;
        webqwen::npy::write_f32(std::io::BufWriter::new(file), &[token_ids.len(), vocab], &logits)
            .with_context(|| format!("writing {}", out.display()))?;
        anyhow::Ok(vocab)
    }
    .await;
    match written {
        Ok(vocab) => {
            eprintln!("wrote {} [{}, {vocab}]", out.display(), token_ids.len());
            Ok(())
        }
        Err(e) => {
            // A regular file only: `--out /dev/null` must not delete the device (as root it would).
            if std::fs::symlink_metadata(&out).is_ok_and(|m| m.is_file()) {
                let _ = std::fs::remove_file(&out);
            }
            Err(e)
        }
    }
}

async fn perplexity(args: ModelArgs, text: PathBuf, json: bool) -> Result<()> {
    let content = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
    let mut session = load_session(&args).await?;
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

async fn bench(
    model: Option<String>,
    synthetic: Option<String>,
    layers: Option<usize>,
    prompt_tokens: usize,
    gen_tokens: usize,
    json: bool,
    gpu: GpuArgs,
) -> Result<()> {
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

async fn info(model: Option<String>, gpu: GpuArgs) -> Result<()> {
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
