// moe.wgsl: the routing of a Qwen3 Mixture-of-Experts layer, entirely on the GPU.
//   route:   probs = softmax(router_logits[t]) over all E experts in f32; the TOP_K largest
//            (ties to the lower id) with their probabilities, renormalised to sum 1 when NORM.
//            One 256-thread workgroup per token; grid (T, 1).
//   group:   slots grouped by expert for the prefill matmuls: count per expert, prefix sum,
//            scatter, and a list of tiles of at most 32 slots of one expert. One workgroup; grid (1, 1).
//   combine: x[t] += sum_j weight[t, j] * expert_out[t * TOP_K + j] (prefill; decode fuses this
//            into the down projection). grid (ceil(H / 256), T).
// Routing table `route` (u32 words; SLOTS = most tokens per pass * TOP_K; slot s = t * TOP_K + j):
//   [0, SLOTS)            expert id of slot s
//   [SLOTS, 2 SLOTS)      its weight (f32 bits)
//   [2 SLOTS, 3 SLOTS)    slots in expert order (prefill)
//   [3 SLOTS]             number of tiles
//   [3 SLOTS + 1, ...)    tiles: (expert, start, end) with start..end a range of the expert order
// Prepended constants: E (experts, <= 512), TOP_K (<= 16), NORM, H, SLOTS.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> src: array<f32>;            // router logits [T, E] | expert outputs [T * TOP_K, H]
@group(0) @binding(2) var<storage, read_write> route: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;        // residual stream [T, H] (combine)

const ROUTE_WEIGHTS: u32 = SLOTS;
const ROUTE_ORDER: u32 = 2u * SLOTS;
const ROUTE_TILES: u32 = 3u * SLOTS;
const TILE: u32 = 32u;

var<workgroup> probs: array<f32, 512>;
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;
var<workgroup> chosen: array<u32, 16>;
var<workgroup> chosen_p: array<f32, 16>;

// The best (value, id) over the threads' candidates; lower id wins ties. Uniform control flow.
fn argmax_reduce(lid: u32, v: f32, i: u32) -> u32 {
    best_v[lid] = v;
    best_i[lid] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let winner = best_i[0];
    workgroupBarrier();
    return winner;
}

@compute @workgroup_size(256)
fn route_tokens(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    if (t >= step.n_tokens) { return; }
    // softmax: max, then sum of exp, over the E logits (two per thread at most)
    var m = -3.0e38;
    for (var e = lid; e < E; e += 256u) { m = max(m, src[t * E + e]); }
    best_v[lid] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { best_v[lid] = max(best_v[lid], best_v[lid + s]); }
        workgroupBarrier();
    }
    m = best_v[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var e = lid; e < E; e += 256u) {
        let p = exp(src[t * E + e] - m);
        probs[e] = p;
        sum += p;
    }
    best_v[lid] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { best_v[lid] += best_v[lid + s]; }
        workgroupBarrier();
    }
    let total = best_v[0];
    workgroupBarrier();
    for (var e = lid; e < E; e += 256u) { probs[e] = probs[e] / total; }
    workgroupBarrier();

    // top-k: k rounds of argmax, each taking its winner out of the race
    for (var j = 0u; j < TOP_K; j++) {
        var bv = -1.0;
        var bi = 0xffffffffu;
        for (var e = lid; e < E; e += 256u) {
            if (probs[e] > bv) { bv = probs[e]; bi = e; }
        }
        let winner = argmax_reduce(lid, bv, bi);
        if (lid == 0u) {
            chosen[j] = winner;
            chosen_p[j] = probs[winner];
            probs[winner] = -1.0;
        }
        workgroupBarrier();
    }
    if (lid < TOP_K) {
        var p = chosen_p[lid];
        if (NORM) {
            var picked = 0.0;
            for (var j = 0u; j < TOP_K; j++) { picked += chosen_p[j]; }
            p = p / picked;
        }
        route[t * TOP_K + lid] = chosen[lid];
        route[ROUTE_WEIGHTS + t * TOP_K + lid] = bitcast<u32>(p);
    }
}

var<workgroup> counts: array<atomic<u32>, 512>;
var<workgroup> starts: array<u32, 512>;
var<workgroup> tile_base: array<u32, 512>;

@compute @workgroup_size(256)
fn group(@builtin(local_invocation_index) lid: u32) {
    let n_slots = step.n_tokens * TOP_K;
    for (var e = lid; e < E; e += 256u) { atomicStore(&counts[e], 0u); }
    workgroupBarrier();
    for (var s = lid; s < n_slots; s += 256u) { atomicAdd(&counts[route[s]], 1u); }
    workgroupBarrier();
    if (lid == 0u) {
        // E <= 512 steps of a serial prefix sum: cheaper than a parallel scan's barriers here
        var start = 0u;
        var tiles = 0u;
        for (var e = 0u; e < E; e++) {
            let c = atomicLoad(&counts[e]);
            starts[e] = start;
            tile_base[e] = tiles;
            start += c;
            tiles += (c + TILE - 1u) / TILE;
        }
        route[ROUTE_TILES] = tiles;
    }
    workgroupBarrier();
    for (var e = lid; e < E; e += 256u) {
        let c = atomicLoad(&counts[e]);
        let end = starts[e] + c;
        for (var i = 0u; i * TILE < c; i++) {
            let at = ROUTE_TILES + 1u + 3u * (tile_base[e] + i);
            route[at] = e;
            route[at + 1u] = starts[e] + i * TILE;
            route[at + 2u] = min(starts[e] + (i + 1u) * TILE, end);
        }
        atomicStore(&counts[e], 0u);   // reused as the scatter cursor
    }
    workgroupBarrier();
    // The order within an expert's run depends on thread timing; each slot's result does not.
    for (var s = lid; s < n_slots; s += 256u) {
        let e = route[s];
        route[ROUTE_ORDER + starts[e] + atomicAdd(&counts[e], 1u)] = s;
    }
}

@compute @workgroup_size(256)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let c = gid.x;
    if (t >= step.n_tokens || c >= H) { return; }
    var acc = 0.0;
    for (var j = 0u; j < TOP_K; j++) {
        let s = t * TOP_K + j;
        acc += bitcast<f32>(route[ROUTE_WEIGHTS + s]) * src[s * H + c];
    }
    x[t * H + c] += acc;
}
