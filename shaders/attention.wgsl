// attention.wgsl: causal grouped-query attention over the KV cache, flash-style (online softmax
// over 256-position tiles, so no T x L score matrix ever exists; prefill and decode are the same
// kernel).
// Query (token t, head h) sits at absolute position pos + t and attends positions 0 ..= pos + t of
// kv head h / (HEADS / KV_HEADS), scaled by HEAD_DIM^-0.5.
// Layout: q inside qkv [T, (HEADS + 2 KV_HEADS) * HEAD_DIM] (already normed and rotated);
//   caches [KV_HEADS, CTX, HEAD_DIM] as u32 words, f32 bits or (KV_F16) two f16 per word, as
//   rope.wgsl writes them; out [T, HEADS * HEAD_DIM].
// Dispatch: one 256-thread workgroup per (head, token); grid (HEADS, T). Within a tile each thread
// scores one position; then PARTS = 256 / HEAD_DIM groups of threads each sum a share of the
// tile's p * v rows for one output dimension apiece.
// Prepended constants: HEADS, KV_HEADS, HEAD_DIM, CTX, SCALE, KV_F16.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const STRIDE: u32 = (HEADS + 2u * KV_HEADS) * HEAD_DIM;
const PARTS: u32 = 256u / HEAD_DIM;
const GROUP: u32 = HEADS / KV_HEADS;
const ROW_WORDS: u32 = select(HEAD_DIM, HEAD_DIM / 2u, KV_F16);

var<workgroup> qs: array<f32, 256>;
var<workgroup> p: array<f32, 256>;
var<workgroup> red: array<f32, 256>;
var<workgroup> accs: array<f32, 256>;

// q · k for the cached key row starting at word k0.
fn score(k0: u32) -> f32 {
    var dotv = 0.0;
    if (KV_F16) {
        for (var w = 0u; w < ROW_WORDS; w++) {
            let k = unpack2x16float(k_cache[k0 + w]);
            dotv += qs[2u * w] * k.x + qs[2u * w + 1u] * k.y;
        }
    } else {
        for (var j = 0u; j < HEAD_DIM; j++) { dotv += qs[j] * bitcast<f32>(k_cache[k0 + j]); }
    }
    return dotv;
}

// Element d of the cached value row starting at word v0.
fn value(v0: u32, d: u32) -> f32 {
    if (KV_F16) { return unpack2x16float(v_cache[v0 + d / 2u])[d & 1u]; }
    return bitcast<f32>(v_cache[v0 + d]);
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    if (t >= step.n_tokens) { return; }
    let kvh = h / GROUP;
    let len = step.pos + t + 1u;
    if (lid < HEAD_DIM) { qs[lid] = qkv[t * STRIDE + h * HEAD_DIM + lid] * SCALE; }
    workgroupBarrier();
    let d = lid % HEAD_DIM;
    let part = lid / HEAD_DIM;
    let cache0 = kvh * CTX * ROW_WORDS;
    var m = -3.0e38;
    var l = 0.0;
    var acc = 0.0;
    for (var start = 0u; start < len; start += 256u) {
        let pos = start + lid;
        var s = -3.0e38;
        if (pos < len) { s = score(cache0 + pos * ROW_WORDS); }
        let m_new = max(m, reduce_max(lid, s));
        var e = 0.0;
        if (pos < len) { e = exp(s - m_new); }
        p[lid] = e;
        let alpha = exp(m - m_new);
        l = l * alpha + reduce_sum(lid, e);
        m = m_new;
        // p is visible to all threads after reduce_sum's barriers.
        acc *= alpha;
        if (part < PARTS) {
            let n = min(256u, len - start);
            for (var j = part; j < n; j += PARTS) {
                acc += p[j] * value(cache0 + (start + j) * ROW_WORDS, d);
            }
        }
        workgroupBarrier();
    }
    accs[lid] = acc;
    workgroupBarrier();
    if (lid < HEAD_DIM) {
        var total = 0.0;
        for (var q = 0u; q < PARTS; q++) { total += accs[q * HEAD_DIM + lid]; }
        out[t * HEADS * HEAD_DIM + h * HEAD_DIM + lid] = total / l;
    }
}
