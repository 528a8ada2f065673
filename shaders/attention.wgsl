// attention.wgsl: causal grouped-query attention over the KV cache, flash-style (online softmax
// over 256-position tiles, so no T x L score matrix ever exists; prefill and decode are the same
// kernel).
// Query (token t, head h) sits at absolute position pos + t and attends positions 0 ..= pos + t of
// kv head h / (HEADS / KV_HEADS), scaled by HEAD_DIM^-0.5.
// Layout: q inside qkv [T, (HEADS + 2 KV_HEADS) * HEAD_DIM] (already normed and rotated);
//   caches f32 [KV_HEADS, CTX, HEAD_DIM]; out [T, HEADS * HEAD_DIM].
// Dispatch: one 256-thread workgroup per (head, token); grid (HEADS, T). Within a tile each thread
// scores one position; then PARTS = 256 / HEAD_DIM groups of threads each sum a share of the
// tile's p * v rows for one output dimension apiece.
// Prepended constants: HEADS, KV_HEADS, HEAD_DIM, CTX, SCALE.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const STRIDE: u32 = (HEADS + 2u * KV_HEADS) * HEAD_DIM;
const PARTS: u32 = 256u / HEAD_DIM;
const GROUP: u32 = HEADS / KV_HEADS;

var<workgroup> qs: array<f32, 256>;
var<workgroup> p: array<f32, 256>;
var<workgroup> red: array<f32, 256>;
var<workgroup> accs: array<f32, 256>;

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
    let cache0 = kvh * CTX * HEAD_DIM;
    var m = -3.0e38;
    var l = 0.0;
    var acc = 0.0;
    for (var start = 0u; start < len; start += 256u) {
        let pos = start + lid;
        var s = -3.0e38;
        if (pos < len) {
            let k0 = cache0 + pos * HEAD_DIM;
            var dotv = 0.0;
            for (var j = 0u; j < HEAD_DIM; j++) { dotv += qs[j] * k_cache[k0 + j]; }
            s = dotv;
        }
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
                acc += p[j] * v_cache[cache0 + (start + j) * HEAD_DIM + d];
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
