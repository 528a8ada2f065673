// GPU sampling for webqwen: per generated token only the 4-byte id leaves the GPU.
//
// Entry points (one pipeline each; PASS / sizes come in as override constants):
//   penalty      1 WG   repetition + presence penalties, in place on the logits, distinct tokens of the window
//   reduce1      G WGs  per-workgroup (max key, lowest argmax) over a chunk of the vocab
//   reduce2      1 WG   global max / argmax; greedy: writes the token; sampling: min-p threshold, radix-select init
//   hist (PASS)  G WGs  radix-select histogram of order-preserving u32 keys (11/11/10 bits); PASS 0 also sums exp
//   select(PASS) 1 WG   picks the bucket that holds the k-th largest key, clears the histogram
//   compact      G WGs  writes the (key, id) of every survivor (key >= threshold) into a list of at most CAP
//   final        1 WG   bitonic sort of the survivors, top-p (exact nucleus), draw, write the token
//   fallback     1 WG   only when top_k = 0 and more than CAP tokens survive min-p and the nucleus does not
//                       fit: bisection on the threshold over the full vocab, then an index-order draw
// No subgroups, no f16; workgroup memory <= 9.3 KiB; 256 invocations per workgroup.

override SV: u32 = 151669u;          // ids >= SV are never sampled (and never read)
override NG: u32 = 149u;             // workgroups of the multi-workgroup passes
override CHUNK: u32 = 1024u;         // ids per workgroup in those passes (multiple of WG)
override OUT_INDEX: u32 = 0u;        // token_out[OUT_INDEX] receives the id
override PASS: u32 = 0u;             // radix pass of hist/select

const WG: u32 = 256u;
const CAP: u32 = 1024u;              // max survivors sorted in workgroup memory (also max top_k)
const HIST_CAP: u32 = 1024u;         // history ring size (max penalty window)
const NBINS: u32 = 2048u;
const COUNTER: u32 = 2048u;          // hist[COUNTER]: survivors with key > threshold
const COUNTER2: u32 = 2049u;         // hist[COUNTER2]: survivors with key == threshold

// state slots
const S_MAXKEY: u32 = 0u;
const S_ARGMAX: u32 = 1u;
const S_LOKEY: u32 = 2u;
const S_PREFIX: u32 = 3u;
const S_MASK: u32 = 4u;
const S_KREM: u32 = 5u;
const S_THR: u32 = 6u;
const S_Z: u32 = 7u;
const S_FALLBACK: u32 = 8u;
const S_CURSOR: u32 = 9u;
const S_DONE: u32 = 10u;
const S_NCAND: u32 = 11u;
const S_NFALLBACK: u32 = 12u;
const S_TOTAL: u32 = 13u;
const S_NUCLEUS: u32 = 14u;
const S_RESERVE: u32 = 16u;          // cand slots reserved for keys > threshold
const S_FITS: u32 = 17u;             // 1: every key >= threshold fits (ties take the reserved slots too)

struct Step { pos: u32, n_tokens: u32, step: u32, pad: u32 }

struct Params {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    rep_penalty: f32,
    presence: f32,
    window: u32,
    seed_lo: u32,
    seed_hi: u32,
    mode: u32,          // 0 greedy, 1 sampling
    log_min_p_t: f32,   // temperature * ln(min_p) (only read when min_p > 0)
    k_eff: u32,         // top_k if > 0 else CAP
    pad0: u32, pad1: u32, pad2: u32, pad3: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<uniform> stepu: Step;
@group(0) @binding(2) var<storage, read_write> token_out: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> partials: array<u32>;   // [0,NG) keys, [NG,2NG) ids, [2NG,3NG) f32 sums
@group(0) @binding(7) var<storage, read_write> cand: array<vec2<u32>>;  // CAP (key, id)
@group(0) @binding(8) var<storage, read_write> history: array<u32>;     // HIST_CAP ring

// ---------- helpers ----------

// order-preserving key: larger float -> larger u32; NaN -> 0 (below -inf).
fn fkey(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return 0u; }
    if ((b & 0x80000000u) != 0u) { return ~b; }
    return b | 0x80000000u;
}
fn unkey(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
    return bitcast<f32>(~k);
}
const NEG_INF_KEY: u32 = 0x007fffffu;

fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}
// uniform in [0, 1) from (seed, step)
fn rand01() -> f32 {
    var h = pcg(params.seed_lo ^ 0x9e3779b9u);
    h = pcg(h ^ params.seed_hi);
    h = pcg(h ^ stepu.step);
    h = pcg(h + 0x632be5abu);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

fn emit(tok: u32) {
    token_out[OUT_INDEX] = tok;
    let c = state[S_CURSOR];
    history[c % HIST_CAP] = tok;
    state[S_CURSOR] = c + 1u;
}

fn better(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// ---------- penalty ----------

var<workgroup> win: array<u32, HIST_CAP>;

@compute @workgroup_size(256)
fn penalty(@builtin(local_invocation_index) tid: u32) {
    let cursor = state[S_CURSOR];
    let n = min(min(cursor, params.window), HIST_CAP);
    for (var j = tid; j < n; j += WG) {
        win[j] = history[(cursor - 1u - j) % HIST_CAP];
    }
    workgroupBarrier();
    for (var j = tid; j < n; j += WG) {
        let t = win[j];
        var dup = false;
        for (var q = 0u; q < j; q++) {
            if (win[q] == t) { dup = true; break; }
        }
        if (!dup && t < SV) {
            var l = logits[t];
            if (l > 0.0) { l = l / params.rep_penalty; } else { l = l * params.rep_penalty; }
            l = l - params.presence;
            logits[t] = l;
        }
    }
}

// ---------- greedy / max reduction ----------

var<workgroup> rk: array<u32, WG>;
var<workgroup> ri: array<u32, WG>;

fn wg_argmax(tid: u32, k0: u32, i0: u32) {
    rk[tid] = k0;
    ri[tid] = i0;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            let kb = rk[tid + s];
            let ib = ri[tid + s];
            if (better(kb, ib, rk[tid], ri[tid])) { rk[tid] = kb; ri[tid] = ib; }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn reduce1(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = wid.x;
    let base = g * CHUNK;
    let end = min(base + CHUNK, SV);
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var i = base + tid; i < end; i += WG) {
        let k = fkey(logits[i]);
        if (k > bk || bi == 0xffffffffu) { bk = k; bi = i; }
    }
    wg_argmax(tid, bk, bi);
    if (tid == 0u) {
        partials[g] = rk[0];
        partials[NG + g] = ri[0];
    }
}

@compute @workgroup_size(256)
fn reduce2(@builtin(local_invocation_index) tid: u32) {
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var g = tid; g < NG; g += WG) {
        let k = partials[g];
        let i = partials[NG + g];
        if (bi == 0xffffffffu || better(k, i, bk, bi)) { bk = k; bi = i; }
    }
    wg_argmax(tid, bk, bi);
    let mk = rk[0];
    let am = ri[0];
    if (params.mode == 0u) {
        if (tid == 0u) { emit(am); }
        return;
    }
    // sampling: clear histogram + counter, set up radix select
    for (var b = tid; b <= COUNTER2; b += WG) { atomicStore(&hist[b], 0u); }
    if (tid == 0u) {
        state[S_MAXKEY] = mk;
        state[S_ARGMAX] = am;
        var lo = NEG_INF_KEY + 1u;
        if (mk <= NEG_INF_KEY) {
            lo = 0xffffffffu;   // nothing finite: degenerate, final writes the argmax
        } else if (params.min_p > 0.0) {
            let m = unkey(mk);
            lo = max(lo, fkey(m + params.log_min_p_t));
            lo = min(lo, mk);
        }
        state[S_LOKEY] = lo;
        state[S_PREFIX] = 0u;
        state[S_MASK] = 0u;
        state[S_KREM] = params.k_eff;
        state[S_THR] = lo;
        state[S_DONE] = 0u;
        state[S_FALLBACK] = 0u;
        state[S_TOTAL] = 0u;
        state[S_FITS] = 0u;
    }
}

// ---------- radix select ----------

fn pass_shift() -> u32 {
    if (PASS == 0u) { return 21u; }
    if (PASS == 1u) { return 10u; }
    return 0u;
}
fn pass_binmask() -> u32 {
    if (PASS == 2u) { return 0x3ffu; }
    return 0x7ffu;
}

var<workgroup> lh: array<atomic<u32>, NBINS>;
var<workgroup> rf: array<f32, WG>;
var<workgroup> wsum: f32;
var<workgroup> wlohi: vec2<u32>;

fn wg_sum(tid: u32, v: f32) -> f32 {
    rf[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) { rf[tid] = rf[tid] + rf[tid + s]; }
        workgroupBarrier();
    }
    if (tid == 0u) { wsum = rf[0]; }
    return workgroupUniformLoad(&wsum);
}

@compute @workgroup_size(256)
fn hist_pass(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if (params.mode == 0u) { return; }
    for (var b = tid; b < NBINS; b += WG) { atomicStore(&lh[b], 0u); }
    workgroupBarrier();
    let lo = state[S_LOKEY];
    let prefix = state[S_PREFIX];
    let mask = state[S_MASK];
    let done = state[S_DONE];
    let shift = pass_shift();
    let bm = pass_binmask();
    let m = unkey(state[S_MAXKEY]);
    let t = params.temperature;
    let g = wid.x;
    let base = g * CHUNK;
    let end = min(base + CHUNK, SV);
    var z = 0.0;
    if (done == 0u) {
        for (var i = base + tid; i < end; i += WG) {
            let l = logits[i];
            let k = fkey(l);
            if (k >= lo && (k & mask) == prefix) {
                atomicAdd(&lh[(k >> shift) & bm], 1u);
                if (PASS == 0u) { z += exp((l - m) / t); }
            }
        }
    }
    workgroupBarrier();
    for (var b = tid; b < NBINS; b += WG) {
        let c = atomicLoad(&lh[b]);
        if (c != 0u) { atomicAdd(&hist[b], c); }
    }
    if (PASS == 0u) {
        let zs = wg_sum(tid, z);
        if (tid == 0u) { partials[2u * NG + g] = bitcast<u32>(zs); }
    }
}

var<workgroup> scan_u: array<u32, WG>;
var<workgroup> wflag: u32;

@compute @workgroup_size(256)
fn select_pass(@builtin(local_invocation_index) tid: u32) {
    if (params.mode == 0u) { return; }
    if (tid == 0u) { wflag = state[S_DONE]; }
    let done = workgroupUniformLoad(&wflag);
    // counts of this thread's 8 bins, from the top
    var c: array<u32, 8>;
    var s = 0u;
    for (var j = 0u; j < 8u; j++) {
        let b = NBINS - 1u - (tid * 8u + j);
        c[j] = atomicLoad(&hist[b]);
        atomicStore(&hist[b], 0u);
        s += c[j];
    }
    if (PASS == 0u) {
        var z = 0.0;
        for (var g = tid; g < NG; g += WG) { z += bitcast<f32>(partials[2u * NG + g]); }
        let zs = wg_sum(tid, z);
        if (tid == 0u) { state[S_Z] = bitcast<u32>(zs); }
    }
    if (done != 0u) { return; }
    // inclusive scan of s over threads (Hillis-Steele)
    scan_u[tid] = s;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var v = scan_u[tid];
        if (tid >= off) { v += scan_u[tid - off]; }
        workgroupBarrier();
        scan_u[tid] = v;
        workgroupBarrier();
    }
    let incl = scan_u[tid];
    let excl = incl - s;
    let total = scan_u[WG - 1u];
    let krem = state[S_KREM];
    let shift = pass_shift();
    let bm = pass_binmask();
    if (PASS == 0u && tid == 0u) { state[S_TOTAL] = total; }
    if (total < krem) {
        // fewer eligible tokens than k: everything eligible survives
        if (tid == 0u) {
            state[S_THR] = state[S_LOKEY];
            state[S_RESERVE] = params.k_eff - krem + total;
            state[S_FITS] = 1u;
            state[S_DONE] = 1u;
        }
        return;
    }
    if (excl < krem && krem <= incl) {
        var cum = excl;
        for (var j = 0u; j < 8u; j++) {
            if (cum + c[j] >= krem) {
                let b = NBINS - 1u - (tid * 8u + j);
                let prefix = state[S_PREFIX] | (b << shift);
                state[S_PREFIX] = prefix;
                state[S_MASK] = state[S_MASK] | (bm << shift);
                state[S_KREM] = krem - cum;
                // tokens with key >= prefix (low bits 0): those above this pass's range plus the
                // bins >= b. If they fit in the sorted list, stop here: final applies top-k exactly.
                let above = params.k_eff - krem;
                if (above + cum + c[j] <= CAP) {
                    // (the bin may reach below the min-p bound: never go under it)
                    state[S_THR] = max(prefix, state[S_LOKEY]); state[S_RESERVE] = above + cum + c[j]; state[S_FITS] = 1u; state[S_DONE] = 1u;
                } else if (PASS == 2u) {
                    // ties at the k-th key overflow the list: keys above it first, then as many ties as fit
                    state[S_THR] = prefix; state[S_RESERVE] = above + cum; state[S_FITS] = 0u; state[S_DONE] = 1u;
                }
                break;
            }
            cum += c[j];
        }
    }
}

// ---------- compaction ----------

@compute @workgroup_size(256)
fn compact(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if (params.mode == 0u) { return; }
    let thr = state[S_THR];
    let reserve = state[S_RESERVE];
    let fits = state[S_FITS] != 0u;
    let base = wid.x * CHUNK;
    let end = min(base + CHUNK, SV);
    for (var i = base + tid; i < end; i += WG) {
        let k = fkey(logits[i]);
        if (k > thr || (fits && k == thr)) {
            let slot = atomicAdd(&hist[COUNTER], 1u);
            if (slot < reserve) { cand[slot] = vec2<u32>(k, i); }
        } else if (k == thr && atomicLoad(&hist[COUNTER2]) < CAP - reserve) {
            let slot = atomicAdd(&hist[COUNTER2], 1u);
            if (reserve + slot < CAP) { cand[reserve + slot] = vec2<u32>(k, i); }
        }
    }
}

// ---------- final: sort, top-p, draw ----------

var<workgroup> sk: array<u32, CAP>;   // keys, then f32 inclusive prefix sums (bits)
var<workgroup> si: array<u32, CAP>;   // ids
var<workgroup> wcount: atomic<u32>;
var<workgroup> wcount2: atomic<u32>;
var<workgroup> wcount3: atomic<u32>;
var<workgroup> wn: u32;
var<workgroup> wna: u32;

fn before(a: u32, b: u32) -> bool {
    return better(sk[a], si[a], sk[b], si[b]);
}

@compute @workgroup_size(256)
fn final_pass(@builtin(local_invocation_index) tid: u32) {
    if (params.mode == 0u) { return; }
    if (tid == 0u) {
        let reserve = state[S_RESERVE];
        let na = min(atomicLoad(&hist[COUNTER]), reserve);
        let nb = min(atomicLoad(&hist[COUNTER2]), CAP - reserve);
        wn = na + nb;
        wna = na;
        atomicStore(&wcount, 0u);
        atomicStore(&wcount2, 0u);
        atomicStore(&wcount3, 0u);
    }
    let n = workgroupUniformLoad(&wn);
    let na = workgroupUniformLoad(&wna);
    let reserve = state[S_RESERVE];
    if (n == 0u) {
        if (tid == 0u) { state[S_NCAND] = 0u; emit(state[S_ARGMAX]); }
        return;
    }
    var np2 = 1u;
    while (np2 < n) { np2 <<= 1u; }
    for (var j = tid; j < np2; j += WG) {
        if (j < n) {
            var e: vec2<u32>;
            if (j < na) { e = cand[j]; } else { e = cand[reserve + j - na]; }
            sk[j] = e.x; si[j] = e.y;
        } else { sk[j] = 0u; si[j] = 0xffffffffu; }
    }
    workgroupBarrier();
    // bitonic sort: (key desc, id asc)
    for (var k = 2u; k <= np2; k <<= 1u) {
        for (var jj = k >> 1u; jj > 0u; jj >>= 1u) {
            for (var p = tid; p < np2 / 2u; p += WG) {
                let i = (p / jj) * 2u * jj + (p % jj);
                let l = i + jj;
                var sw = false;
                if ((i & k) == 0u) { sw = before(l, i); } else { sw = before(i, l); }
                if (sw) {
                    let tk = sk[i]; sk[i] = sk[l]; sk[l] = tk;
                    let ti = si[i]; si[i] = si[l]; si[l] = ti;
                }
            }
            workgroupBarrier();
        }
    }
    // top-k: the survivors may extend past the k-th key (when the radix select stopped early)
    var ne = n;
    if (params.top_k > 0u && n > params.top_k) {
        let kth = sk[params.top_k - 1u];
        var c3 = 0u;
        for (var j = tid; j < n; j += WG) { if (sk[j] >= kth) { c3 += 1u; } }
        atomicAdd(&wcount3, c3);
        workgroupBarrier();
        ne = atomicLoad(&wcount3);
    }
    // probabilities relative to the max, 4 consecutive per thread, inclusive prefix sums
    let m = unkey(state[S_MAXKEY]);
    let t = params.temperature;
    var pv: array<f32, 4>;
    var s = 0.0;
    for (var q = 0u; q < 4u; q++) {
        let j = tid * 4u + q;
        var p = 0.0;
        if (j < ne) { p = exp((unkey(sk[j]) - m) / t); }
        s += p;
        pv[q] = s;
    }
    rf[tid] = s;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var v = rf[tid];
        if (tid >= off) { v += rf[tid - off]; }
        workgroupBarrier();
        rf[tid] = v;
        workgroupBarrier();
    }
    let excl_t = rf[tid] - s;
    let total = rf[WG - 1u];
    for (var q = 0u; q < 4u; q++) {
        sk[tid * 4u + q] = bitcast<u32>(excl_t + pv[q]);
    }
    workgroupBarrier();
    // nucleus
    let truncated = params.top_k == 0u && state[S_TOTAL] > n;
    var goal = params.top_p * total;
    if (truncated) { goal = params.top_p * bitcast<f32>(state[S_Z]); }
    var r = ne;
    var need_fallback = false;
    if (params.top_p < 1.0) {
        var cnt = 0u;
        for (var q = 0u; q < 4u; q++) {
            let j = tid * 4u + q;
            if (j < ne) {
                var ex = 0.0;
                if (j > 0u) { ex = bitcast<f32>(sk[j - 1u]); }
                if (ex < goal) { cnt += 1u; }
            }
        }
        atomicAdd(&wcount, cnt);
        workgroupBarrier();
        r = max(atomicLoad(&wcount), 1u);
        if (truncated && r == ne && total < goal) { need_fallback = true; }
    } else if (truncated) {
        need_fallback = true;
    }
    if (tid == 0u) { wflag = select(0u, 1u, need_fallback); }
    if (workgroupUniformLoad(&wflag) != 0u) {
        if (tid == 0u) { state[S_FALLBACK] = 1u; state[S_NCAND] = n; }
        return;
    }
    let mass = bitcast<f32>(sk[r - 1u]);
    let x = rand01() * mass;
    var c2 = 0u;
    for (var q = 0u; q < 4u; q++) {
        let j = tid * 4u + q;
        if (j < r && bitcast<f32>(sk[j]) <= x) { c2 += 1u; }
    }
    atomicAdd(&wcount2, c2);
    workgroupBarrier();
    if (tid == 0u) {
        let pick = min(atomicLoad(&wcount2), r - 1u);
        state[S_NCAND] = n;
        state[S_NUCLEUS] = r;
        state[S_NUCLEUS + 1u] = ne;
        emit(si[pick]);
    }
}

// ---------- fallback: full-vocab nucleus by bisection ----------

// sum of exp((l - m)/t) over ids < SV with key >= thr (and key >= lo)
fn mass_at(tid: u32, thr: u32, m: f32, t: f32) -> f32 {
    var z = 0.0;
    for (var i = tid; i < SV; i += WG) {
        let l = logits[i];
        if (fkey(l) >= thr) { z += exp((l - m) / t); }
    }
    return wg_sum(tid, z);
}

@compute @workgroup_size(256)
fn fallback(@builtin(local_invocation_index) tid: u32) {
    if (params.mode == 0u) { return; }
    if (tid == 0u) { wflag = state[S_FALLBACK]; }
    let f = workgroupUniformLoad(&wflag);
    if (f == 0u) { return; }
    let mk = state[S_MAXKEY];
    let m = unkey(mk);
    let t = params.temperature;
    // tokens whose probability underflows to 0 never matter
    if (tid == 0u) { wlohi = vec2<u32>(max(state[S_LOKEY], min(fkey(m - 104.0 * t), mk)), mk + 1u); }
    let lh0 = workgroupUniformLoad(&wlohi);
    var lo = lh0.x;
    if (params.top_p < 1.0) {
        let z = mass_at(tid, lo, m, t);
        let goal = params.top_p * z;
        var hi = lh0.y;
        // 16-way search: each full pass narrows [lo, hi) by 16 (8 passes for 32 bits)
        for (var it = 0u; it < 16u; it++) {
            if (hi - lo <= 1u) { break; }
            let w = hi - lo;
            let stp = max(w / 16u, 1u);
            var acc: array<f32, 16>;
            for (var b = 0u; b < 16u; b++) { acc[b] = 0.0; }
            var above = 0.0;
            for (var i = tid; i < SV; i += WG) {
                let l = logits[i];
                let k = fkey(l);
                if (k >= lo) {
                    let p = exp((l - m) / t);
                    if (k >= hi) { above += p; } else { acc[min((k - lo) / stp, 15u)] += p; }
                }
            }
            // S(lo + j*stp) = above + sum_{b >= j} acc[b]
            var suf = above;
            for (var b = 15u; b >= 1u; b--) { suf += acc[b]; acc[b] = suf; }
            var nlo = lo;
            var nhi = hi;
            var found = false;
            for (var j = 15u; j >= 1u; j--) {
                let sj = wg_sum(tid, acc[j]);
                if (j < w && !found && sj >= goal) {
                    found = true;
                    nlo = lo + j * stp;
                    if (j < 15u && j + 1u < w) { nhi = lo + (j + 1u) * stp; }
                }
            }
            if (!found) { nhi = lo + stp; }
            lo = nlo;
            hi = nhi;
        }
    }
    // draw in index order among ids with key >= lo
    let per = (SV + WG - 1u) / WG;
    let b0 = tid * per;
    let b1 = min(b0 + per, SV);
    var s = 0.0;
    for (var i = b0; i < b1; i++) {
        let l = logits[i];
        if (fkey(l) >= lo) { s += exp((l - m) / t); }
    }
    rf[tid] = s;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var v = rf[tid];
        if (tid >= off) { v += rf[tid - off]; }
        workgroupBarrier();
        rf[tid] = v;
        workgroupBarrier();
    }
    let incl = rf[tid];
    let excl = incl - s;
    let total = rf[WG - 1u];
    let x = rand01() * total;
    // the thread whose range holds x (or the last non-empty range when rounding pushes x past the end)
    var mine = s > 0.0 && excl <= x && x < incl;
    if (!mine && s > 0.0 && x >= incl && incl >= total) { mine = true; }
    if (mine) {
        var acc = excl;
        var pick = 0xffffffffu;
        var last = 0xffffffffu;
        for (var i = b0; i < b1; i++) {
            let l = logits[i];
            if (fkey(l) >= lo) {
                let p = exp((l - m) / t);
                if (p > 0.0) { last = i; }
                acc += p;
                if (acc > x && p > 0.0) { pick = i; break; }
            }
        }
        if (pick == 0xffffffffu) { pick = last; }
        state[S_NFALLBACK] = state[S_NFALLBACK] + 1u;
        emit(pick);
    }
}
