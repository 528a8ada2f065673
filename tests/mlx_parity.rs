//! webqwen against mlx-lm on random-weight models that `mlx_lm.convert` made
//! (tests/fixtures/make_models.py). Tolerances, fixed by the project and never loosened:
//! - teacher-forced logits: relative L2 error per position <= 1e-2, and the same argmax wherever
//!   mlx-lm's top-2 margin exceeds 1e-2 of that position's logit range;
//! - perplexity within 0.5 %;
//! - the first 16 greedy tokens equal.
//! Those checks run with an f32 KV cache, mlx-lm's float32 math. Every model is also run at a
//! 1 MiB storage-binding limit (tensors split into many pieces) and without f16/subgroups, which
//! must give the same logits; and each fixed fixture with the default f16 KV cache, whose logits
//! and perplexity must meet the same tolerances against mlx-lm.

use std::path::{Path, PathBuf};

use webqwen::engine::LoadOptions;
use webqwen::model::KvCache;
use webqwen::sample::SamplingParams;
use webqwen::session::Session;
use webqwen::text::QWEN3_ID_COUNT;

const REL_L2_MAX: f64 = 1e-2;
const MARGIN_FRACTION: f32 = 1e-2;
const PPL_REL_MAX: f64 = 5e-3;

fn fixtures() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    if root.join("manifest.json").exists() {
        return Some(root);
    }
    if std::env::var_os("WEBQWEN_REQUIRE_FIXTURES").is_some() {
        panic!("fixtures missing: run tests/fixtures/make_models.py (bash tests/run_all.sh does)");
    }
    eprintln!("skipping: no fixtures (bash tests/run_all.sh makes them)");
    None
}

fn load(dir: &Path, opts: &LoadOptions) -> Session {
    pollster::block_on(Session::load_dir(dir, opts, &mut |_, _| {}))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

struct LogitStats {
    worst_rel_l2: f64,
    argmax_checked: usize,
}

fn compare_logits(name: &str, ours: &[f32], reference: &[f32], vocab: usize) -> LogitStats {
    assert_eq!(ours.len(), reference.len(), "{name}: logits shape");
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (t, (a, b)) in ours.chunks_exact(vocab).zip(reference.chunks_exact(vocab)).enumerate() {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        worst = worst.max(rel);
        assert!(rel <= REL_L2_MAX, "{name}: position {t}: relative L2 error {rel:.3e} > {REL_L2_MAX:e}");
        let mut order: Vec<usize> = (0..vocab).collect();
        order.select_nth_unstable_by(1, |&i, &j| b[j].total_cmp(&b[i]));
        let (top, second) = if b[order[0]] >= b[order[1]] { (order[0], order[1]) } else { (order[1], order[0]) };
        let range = b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - b.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        if b[top] - b[second] > MARGIN_FRACTION * range {
            let ours_top = a.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
            assert_eq!(ours_top, top, "{name}: position {t}: argmax {ours_top} but mlx-lm's is {top}");
            checked += 1;
        }
    }
    LogitStats { worst_rel_l2: worst, argmax_checked: checked }
}

/// `n` greedy tokens after `prompt` (reusing whatever KV prefix the engine holds).
fn greedy(session: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    pollster::block_on(session.engine.generate(prompt, &SamplingParams::default(), n, &[], &mut |_| true))
        .unwrap()
        .tokens
}

/// Options with mlx-lm's float32 math: an f32 KV cache.
fn f32_options() -> LoadOptions {
    let mut opts = LoadOptions::default();
    opts.model.kv_cache = KvCache::F32;
    opts
}

/// `f16_kv`: also check the f16 KV cache. The fresh-seed models skip that: a new seed may put two
/// experts' router probabilities closer than f16's rounding of the cache, and a flip there
/// says nothing about the engine.
fn check_model(name: &str, f16_kv: bool) {
    let Some(root) = fixtures() else { return };
    let dir = root.join(name);
    assert!(dir.join("reference").exists(), "{name}: fixture not built");
    let reference = dir.join("reference");
    let mut session = load(&dir, &f32_options());
    let vocab = session.engine.config().vocab_size;

    // Teacher-forced logits.
    let tokens = ids(&read_json(&reference.join("logits_tokens.json")));
    let ref_bytes = std::fs::read(reference.join("logits.npy")).unwrap();
    let (shape, ref_logits) = webqwen::npy::read_f32(&ref_bytes).unwrap();
    assert_eq!(shape, vec![tokens.len(), vocab]);
    let logits = pollster::block_on(session.engine.logits(&tokens)).unwrap();
    let stats = compare_logits(name, &logits, &ref_logits, vocab);

    // Perplexity, tokenized by us (the ids must equal the Python tokenizer's).
    let ppl_ref = read_json(&reference.join("ppl.json"));
    let text = std::fs::read_to_string(reference.join("ppl.txt")).unwrap();
    let ppl_ids = session.tokenizer.encode_untrusted(&text).unwrap();
    assert_eq!(ppl_ids, ids(&ppl_ref["ids"]), "{name}: perplexity text tokenized differently");
    let (nll, scored) = pollster::block_on(webqwen::engine::perplexity(&mut session.engine, &ppl_ids)).unwrap();
    assert_eq!(scored as u64, ppl_ref["tokens"].as_u64().unwrap());
    let (ppl, ppl_mlx) = (nll.exp(), ppl_ref["ppl"].as_f64().unwrap());
    let ppl_rel = (ppl - ppl_mlx).abs() / ppl_mlx;
    assert!(ppl_rel <= PPL_REL_MAX, "{name}: perplexity {ppl} vs mlx-lm {ppl_mlx} ({ppl_rel:.2e} relative)");

    // Greedy decoding through the whole GPU path (prefill, KV cache, GPU argmax).
    let greedy_ref = read_json(&reference.join("greedy.json"));
    let prompt = ids(&greedy_ref["prompt_tokens"]);
    let want = ids(&greedy_ref["tokens"]);
    session.engine.reset();
    assert_eq!(greedy(&mut session, &prompt, want.len()), want, "{name}: greedy tokens differ from mlx-lm");
    // And again reusing the cached prompt prefix (a second chat turn does this).
    assert_eq!(
        greedy(&mut session, &prompt, want.len()),
        want,
        "{name}: greedy tokens differ when the KV prefix is reused"
    );
    drop(session);

    // Split into 1 MiB bindings, no f16, no subgroups: the same numbers.
    let mut opts = f32_options();
    opts.gpu.max_storage_binding = Some(1 << 20);
    opts.gpu.no_f16 = true;
    opts.gpu.no_subgroups = true;
    let mut small = load(&dir, &opts);
    let split = pollster::block_on(small.engine.logits(&tokens)).unwrap();
    let max_diff = split.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let pieces = small.engine.model.pieces();
    let split_experts = pieces.iter().filter(|(n, p)| n.contains("experts") && *p > 1).count();
    if name == "moe_e16k4_q8" {
        // Its stacked gate/up experts (2 MiB of codes per layer) must really be cut, so that
        // routing meets experts in other pieces.
        assert!(split_experts >= 2, "{name}: expert matrices were not split at 1 MiB: {pieces:?}");
    }
    assert!(max_diff <= 1e-4, "{name}: logits at a 1 MiB binding limit differ by {max_diff}");
    drop(small);
    println!(
        "{name}: worst rel L2 {:.2e}, argmax checked at {}/{} positions, ppl {ppl:.4} vs {ppl_mlx:.4} ({ppl_rel:.1e}), \
         16 greedy tokens equal, 1 MiB split max diff {max_diff:.1e} ({} matrices split, {split_experts} of them experts)",
        stats.worst_rel_l2,
        stats.argmax_checked,
        tokens.len(),
        pieces.iter().filter(|(_, p)| *p > 1).count()
    );
    if !f16_kv {
        return;
    }

    // The default f16 KV cache: the same tolerances against mlx-lm's float32 answers.
    let mut half = load(&dir, &LoadOptions::default());
    assert_eq!(half.engine.model.kv_cache, KvCache::F16);
    let half_logits = pollster::block_on(half.engine.logits(&tokens)).unwrap();
    let half_stats = compare_logits(&format!("{name} (f16 KV cache)"), &half_logits, &ref_logits, vocab);
    let (half_nll, _) = pollster::block_on(webqwen::engine::perplexity(&mut half.engine, &ppl_ids)).unwrap();
    let half_ppl_rel = (half_nll.exp() - ppl_mlx).abs() / ppl_mlx;
    assert!(
        half_ppl_rel <= PPL_REL_MAX,
        "{name}: f16 KV cache: perplexity {} vs mlx-lm {ppl_mlx} ({half_ppl_rel:.2e} relative)",
        half_nll.exp()
    );
    half.engine.reset();
    let half_greedy = greedy(&mut half, &prompt, want.len());
    assert_eq!(
        greedy(&mut half, &prompt, want.len()),
        half_greedy,
        "{name}: f16 KV cache: greedy tokens change when the KV prefix is reused"
    );
    let agree = half_greedy.iter().zip(&want).take_while(|(a, b)| a == b).count();
    println!(
        "{name}: f16 KV cache: worst rel L2 {:.2e}, ppl {:.1e} relative, first {agree}/{} greedy tokens equal mlx-lm's",
        half_stats.worst_rel_l2,
        half_ppl_rel,
        want.len()
    );
}

macro_rules! parity {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check_model(stringify!($name), true); } )* };
}

parity!(
    q4_g64, q4_g32, q4_g128, q8_g64, q6_g64, q3_g64, q2_g64, q5_g32, bf16, untied_q4, headdim_q4, mixed, mixed_3_6,
    unq_layer
);

// Qwen3-MoE: 8 experts top-2 (4-bit); 16 experts top-4 without norm_topk_prob (8-bit, untied);
// a mixed dense/MoE stack (decoder_sparse_step 2, mlp_only_layers) with a 4-bit router;
// unquantized expert down projections; bf16 experts; and the same bf16 model in Hugging Face's
// per-expert layout (`moe_hf`), which the loader stacks itself.
parity!(moe_e8k2_q4, moe_e16k4_q8, moe_mixed, moe_unq_experts, moe_bf16, moe_hf);

/// Models made with a fresh random seed by the test command, so no stored answer can be tuned to.
fn fresh_model(name: &str) {
    let Some(root) = fixtures() else { return };
    if !root.join(name).exists() {
        if std::env::var_os("WEBQWEN_REQUIRE_FIXTURES").is_some() {
            panic!("{name} fixture missing: make_models.py --fresh");
        }
        return;
    }
    check_model(name, false);
}

#[test]
fn fresh() {
    fresh_model("fresh");
}

#[test]
fn fresh_moe() {
    fresh_model("fresh_moe");
}

/// Token ids equal the Python `tokenizers` package's, recorded by the test command from the
/// same tokenizer.json (tests/fixtures/tokenizer_ref.py): English, Chinese, Japanese, code,
/// emoji, whitespace runs, numbers and special-token look-alikes.
#[test]
fn tokenizer_matches_python() {
    let Some(root) = fixtures() else { return };
    let reference = read_json(&root.join("tokenizer_ref.json"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read(dir.join("tokenizer_config.json")).ok();
    let tok = webqwen::text::Tokenizer::from_bytes(&json, config.as_deref()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode_trusted(text).unwrap(), ids(&c["ids"]), "ids of {text:?}");
        assert_eq!(tok.encode_untrusted(text).unwrap(), ids(&c["ids_plain"]), "plain-text ids of {text:?}");
        assert_eq!(tok.decode(&ids(&c["ids"]), false), c["decoded"].as_str().unwrap(), "decode of {text:?}");
    }
}

/// The browser's path: whole weight files pushed from byte 0 (headers included) in chunks of odd,
/// varying sizes, as a fetch stream delivers them, give exactly the logits of the native loader.
#[test]
fn weights_pushed_in_odd_chunks_load_identically() {
    let Some(root) = fixtures() else { return };
    for name in ["mixed", "moe_e16k4_q8"] {
        let dir = root.join(name);
        let tokens = ids(&read_json(&dir.join("reference/logits_tokens.json")));
        let mut opts = LoadOptions::default();
        opts.gpu.max_storage_binding = Some(1 << 20); // many pieces, paired and expert routes
        let mut reference = load(&dir, &opts);
        let want = pollster::block_on(reference.engine.logits(&tokens)).unwrap();
        drop(reference);

        let config =
            webqwen::ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let (index, _) = webqwen::weights::open_dir(&dir).unwrap();
        let mut loading =
            pollster::block_on(webqwen::engine::Engine::prepare(config, &index, QWEN3_ID_COUNT, &opts)).unwrap();
        let sizes = [1usize, 3, 7, 4096, 5, 65_537, 2, 1 << 20, 13];
        let mut chunks = 0;
        for (f, file) in index.files.iter().enumerate() {
            let bytes = std::fs::read(file).unwrap();
            let mut at = 0;
            while at < bytes.len() {
                let n = sizes[chunks % sizes.len()].min(bytes.len() - at);
                loading.write(f, at as u64, &bytes[at..at + n]).unwrap();
                at += n;
                chunks += 1;
            }
        }
        let (done, total) = loading.progress();
        assert_eq!(done, total, "{name}: every tensor byte arrived");
        let mut engine = loading.finish().unwrap();
        let got = pollster::block_on(engine.logits(&tokens)).unwrap();
        assert!(got == want, "{name}: logits differ after a chunked load");
        println!("{name}: {chunks} chunks, identical logits");
    }
}

/// A stream that stops early is reported, naming the tensor, never used.
#[test]
fn weights_pushed_incompletely_are_an_error() {
    let Some(root) = fixtures() else { return };
    let dir = root.join("q4_g64");
    let config = webqwen::ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let (index, _) = webqwen::weights::open_dir(&dir).unwrap();
    let mut loading =
        pollster::block_on(webqwen::engine::Engine::prepare(config, &index, QWEN3_ID_COUNT, &LoadOptions::default()))
            .unwrap();
    let bytes = std::fs::read(&index.files[0]).unwrap();
    loading.write(0, 0, &bytes[..bytes.len() - 1000]).unwrap();
    let err = loading.finish().err().expect("a truncated stream must fail");
    assert!(err.to_string().contains("tensor") && err.to_string().contains("arrived"), "{err}");
}
