// scratch: compare logits against the mlx-lm reference of one fixture
use webqwen::engine::{Engine, LoadOptions};
use webqwen::weights::open_dir;

#[test]
fn quick() {
    let name = std::env::var("FIX").unwrap_or("q4_g64".into());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(&name);
    let cfg = webqwen::ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let (index, mut src) = open_dir(&dir).unwrap();
    let mut opts = LoadOptions::default();
    if let Ok(m) = std::env::var("MAXB") { opts.gpu.max_storage_binding = Some(m.parse().unwrap()); }
    let mut eng = pollster::block_on(Engine::load(cfg.clone(), &index, &mut src, 151669, &opts, &mut |_, _| {})).unwrap();
    let toks: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(dir.join("reference/logits_tokens.json")).unwrap()).unwrap();
    let logits = pollster::block_on(eng.logits(&toks)).unwrap();
    let raw = std::fs::read(dir.join("reference/logits.npy")).unwrap();
    let hl = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    let refl: &[f32] = bytemuck::cast_slice(&raw[10 + hl..]);
    let v = cfg.vocab_size;
    for t in 0..toks.len() {
        let a = &logits[t * v..(t + 1) * v];
        let b = &refl[t * v..(t + 1) * v];
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        let am = a.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        let bm = b.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        println!("t={t} rel={:.2e} argmax {am} {bm} a0={} b0={}", (num / den).sqrt(), a[0], b[0]);
    }
}
