//! `webqwen bench`: speed and the per-token costs that decide it, counted where they happen
//! (dispatches, submits, uniform writes, bytes read back), plus weight traffic and memory.

use serde::Serialize;

use crate::engine::Engine;
use crate::error::Result;
use crate::sample::SamplingParams;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    pub backend: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub dispatches_per_token: f64,
    pub submits_per_token: f64,
    pub uniform_writes_per_token: f64,
    pub readback_bytes_per_token: f64,
    /// All weights on the GPU.
    pub weight_bytes: u64,
    /// Weight bytes the decode kernels read per token (each matrix once, one embedding row).
    pub weight_bytes_read_per_token: u64,
    /// The least a decode step can read: every weight it uses, once (of a MoE layer's experts,
    /// only the top-k chosen).
    pub ideal_weight_bytes_per_token: u64,
    pub gpu_memory_bytes: u64,
    /// Of that, the KV cache (`context` positions, `kv_cache` format).
    pub kv_cache_bytes: u64,
    pub context: usize,
    pub kv_cache: crate::model::KvCache,
    /// MoE models: expert weight bytes per decode token, measured by the expert kernels
    /// themselves (each workgroup counts the expert rows it read), against the ideal: the
    /// top-k chosen experts of every MoE layer, all of their rows once.
    pub expert_bytes_read_per_token: Option<f64>,
    pub ideal_expert_bytes_per_token: Option<u64>,
    /// All expert weights on the GPU.
    pub expert_bytes: Option<u64>,
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        format!(
            "prefill  {:.1} tok/s ({} tokens)\ndecode   {:.1} tok/s ({} tokens)\nper decode token: {:.0} dispatches, {:.2} submits, \
             {:.2} uniform writes, {:.1} bytes read back\nweights  {:.1} MiB on the GPU; {:.1} MiB read per token (ideal {:.1} MiB, ratio {:.3})\n\
             GPU memory {:.1} MiB, of which KV cache {:.1} MiB ({} positions, {})",
            self.prefill_tokens_per_second,
            self.prompt_tokens,
            self.decode_tokens_per_second,
            self.generated_tokens,
            self.dispatches_per_token,
            self.submits_per_token,
            self.uniform_writes_per_token,
            self.readback_bytes_per_token,
            mib(self.weight_bytes),
            mib(self.weight_bytes_read_per_token),
            mib(self.ideal_weight_bytes_per_token),
            self.weight_bytes_read_per_token as f64 / self.ideal_weight_bytes_per_token.max(1) as f64,
            mib(self.gpu_memory_bytes),
            mib(self.kv_cache_bytes),
            self.context,
            self.kv_cache.name(),
        ) + &match (self.expert_bytes_read_per_token, self.ideal_expert_bytes_per_token, self.expert_bytes) {
            (Some(read), Some(ideal), Some(all)) => format!(
                "\nexperts  {:.1} MiB on the GPU; {:.2} MiB read per token, counted on the GPU (ideal: top-k experts {:.2} MiB, ratio {:.3})",
                mib(all),
                read / (1 << 20) as f64,
                mib(ideal),
                read / ideal.max(1) as f64
            ),
            _ => String::new(),
        }
    }
}

/// Prefill `prompt_tokens` pseudo-random tokens, then decode `gen_tokens` greedily (no eos).
pub async fn run(engine: &mut Engine, prompt_tokens: usize, gen_tokens: usize) -> Result<BenchReport> {
    let mut state = 0x2545F4914F6CDD1Du64;
    let prompt: Vec<u32> = (0..prompt_tokens.max(1))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 150_000) as u32
        })
        .collect();
    let greedy = SamplingParams::default();
    // Warm up: first submissions pay for driver-side pipeline setup.
    engine.reset();
    engine.generate(&prompt[..prompt.len().min(8)], &greedy, 4, &[], &mut |_| true).await?;
    engine.reset();
    engine.counters = Default::default();
    engine.model.expert_bytes_read().await?; // resets the expert counters
    let g = engine.generate(&prompt, &greedy, gen_tokens.max(2), &[], &mut |_| true).await?;
    // The expert kernels count in one-token passes: the decode steps, and a prompt's last
    // chunk when it holds a single token.
    let one_token_passes = engine.counters.decode_steps + u64::from(prompt.len() % engine.model.chunk == 1);
    let expert_read = engine.model.expert_bytes_read().await?.map(|b| b as f64 / one_token_passes.max(1) as f64);
    let expert_bytes = engine.model.config.moe.as_ref().map(|_| engine.model.expert_bytes());
    let c = &engine.counters;
    let steps = c.decode_steps.max(1) as f64;
    // The prefill pass's own submits and writes are not decode costs.
    let decode_submits = c.submits.saturating_sub(prefill_passes(engine, prompt.len())) as f64;
    let decode_writes = c.uniform_writes.saturating_sub(prefill_passes(engine, prompt.len())) as f64;
    let (weight_bytes, per_token) = engine.model.weight_bytes();
    Ok(BenchReport {
        adapter: engine.gpu.adapter_info.name.clone(),
        backend: format!("{:?}", engine.gpu.adapter_info.backend),
        prompt_tokens: g.prompt_tokens,
        generated_tokens: g.tokens.len(),
        prefill_tokens_per_second: g.prefill_tokens_per_second(),
        decode_tokens_per_second: g.decode_tokens_per_second(),
        dispatches_per_token: c.dispatches as f64 / steps,
        submits_per_token: decode_submits / steps,
        uniform_writes_per_token: decode_writes / steps,
        readback_bytes_per_token: c.readback_bytes as f64 / g.tokens.len().max(1) as f64,
        weight_bytes,
        weight_bytes_read_per_token: engine.model.decode_weight_reads(),
        ideal_weight_bytes_per_token: per_token,
        gpu_memory_bytes: engine.gpu.allocated_bytes(),
        kv_cache_bytes: engine.model.kv_cache_bytes(),
        context: engine.model.context,
        kv_cache: engine.model.kv_cache,
        expert_bytes_read_per_token: expert_read,
        ideal_expert_bytes_per_token: expert_bytes.map(|(_, chosen)| chosen),
        expert_bytes: expert_bytes.map(|(all, _)| all),
    })
}

fn prefill_passes(engine: &Engine, prompt: usize) -> u64 {
    prompt.div_ceil(engine.model.chunk) as u64
}
