// rope.wgsl: Qwen3's per-head q/k RMSNorm, then RoPE, then the KV-cache write, in one pass.
// Input: qkv [T, (HEADS + 2 KV_HEADS) * HEAD_DIM] as produced by the q/k/v projections.
//   q heads: normalised with q_norm, rotated, written back in place (attention reads them there);
//   k heads: normalised with k_norm, rotated, written to k_cache[kv_head, pos, :];
//   v heads: copied to v_cache[kv_head, pos, :].
// RoPE is the non-interleaved "rotate half" form: pair (i, i + HEAD_DIM/2) turns by
// pos * THETA^(-2i / HEAD_DIM).
// Caches [KV_HEADS, CTX, HEAD_DIM] per layer, as u32 words: f32 bits, or with KV_F16 two f16
// per word (element 2w in the low half of word w, pack2x16float: no shader-f16 needed).
// Dispatch: one 128-thread workgroup per (head slot, token); grid (HEADS + 2 KV_HEADS, T).
// Prepended constants: HEADS, KV_HEADS, HEAD_DIM, CTX, THETA, EPS, KV_F16.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> q_norm: array<f32>;
@group(0) @binding(3) var<storage, read> k_norm: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

const HALF: u32 = HEAD_DIM / 2u;
const STRIDE: u32 = (HEADS + 2u * KV_HEADS) * HEAD_DIM;
// u32 words per cached row (one head at one position).
const ROW_WORDS: u32 = select(HEAD_DIM, HEAD_DIM / 2u, KV_F16);

var<workgroup> red: array<f32, 128>;
// The head's output row, for the cache write (which packs neighbours, not rotation pairs).
var<workgroup> head: array<f32, 256>;

// Word w of a cached row from the staged head row.
fn cache_word(w: u32) -> u32 {
    if (KV_F16) { return pack2x16float(vec2<f32>(head[2u * w], head[2u * w + 1u])); }
    return bitcast<u32>(head[w]);
}

@compute @workgroup_size(128)
fn rope(@builtin(local_invocation_index) i: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let slot = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let pos = step.pos + t;
    let row = t * STRIDE + slot * HEAD_DIM;
    if (slot >= HEADS + KV_HEADS) {
        for (var d = i; d < HEAD_DIM; d += 128u) { head[d] = qkv[row + d]; }
        workgroupBarrier();
        let dst = ((slot - HEADS - KV_HEADS) * CTX + pos) * ROW_WORDS;
        for (var w = i; w < ROW_WORDS; w += 128u) { v_cache[dst + w] = cache_word(w); }
        return;
    }
    let is_q = slot < HEADS;
    var x1 = 0.0;
    var x2 = 0.0;
    if (i < HALF) {
        x1 = qkv[row + i];
        x2 = qkv[row + i + HALF];
    }
    red[i] = x1 * x1 + x2 * x2;
    workgroupBarrier();
    for (var s = 64u; s > 0u; s >>= 1u) {
        if (i < s) { red[i] += red[i + s]; }
        workgroupBarrier();
    }
    if (i < HALF) {
        let inv = inverseSqrt(red[0] / f32(HEAD_DIM) + EPS);
        var a: f32;
        var b: f32;
        if (is_q) {
            a = x1 * inv * q_norm[i];
            b = x2 * inv * q_norm[i + HALF];
        } else {
            a = x1 * inv * k_norm[i];
            b = x2 * inv * k_norm[i + HALF];
        }
        let angle = f32(pos) * pow(THETA, -f32(2u * i) / f32(HEAD_DIM));
        let c = cos(angle);
        let s = sin(angle);
        let o1 = a * c - b * s;
        let o2 = b * c + a * s;
        if (is_q) {
            qkv[row + i] = o1;
            qkv[row + i + HALF] = o2;
        } else {
            head[i] = o1;
            head[i + HALF] = o2;
        }
    }
    if (is_q) { return; }
    workgroupBarrier();
    let dst = ((slot - HEADS) * CTX + pos) * ROW_WORDS;
    for (var w = i; w < ROW_WORDS; w += 128u) { k_cache[dst + w] = cache_word(w); }
}
