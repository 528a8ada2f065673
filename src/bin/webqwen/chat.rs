//! `webqwen chat`: the interactive REPL, and the oldest turns dropped when the conversation outgrows the context.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use webqwen::session::{CompletionRequest, Session};
use webqwen::text::{Message, TextEvent};

use crate::args::{load_session, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
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
}

pub async fn chat(args: ChatArgs) -> Result<()> {
    let ChatArgs { model, sampling, no_think, system } = args;
    let mut thinking = !no_think;
    let mut session = load_session(&model).await?;
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
