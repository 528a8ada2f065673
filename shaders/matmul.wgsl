// matmul.wgsl: y[t, col0 + r] (+)= sum_k x[x0 + t, k] * W[r, k] over the rows r of one weight piece.
//
// W is row-major [rows, K]: MLX affine-quantized (BITS-bit codes packed LSB-first into u32, one
// scale and one bias per GROUP inputs, stored bf16/f16/f32), or dense bf16/f16/f32. Dequantization
// is fused: per group we accumulate scale * sum(q * x) + bias * sum(x) (MLX's trick), so the
// codes are never expanded in memory. Accumulation is f32.
//   DUAL: a second matrix W2 (same shape and format) is read too and y = silu(W x) * (W2 x):
//         Qwen3's gate/up projections and SwiGLU in one pass.
//   ADD:  y += result (the residual add fused into the producer).
//   HEAD: the token rows come from step.head_offset/head_rows (lm_head on selected positions)
//         instead of 0..step.n_tokens.
// Entry points and dispatch shapes:
//   matvec: one token. 256 threads = (256 / LANES) rows x LANES lanes; lanes stride over 32-input
//           blocks (LANES = min(32, blocks per row rounded up to a power of two), so short rows
//           do not leave lanes idle). grid: ceil(rows / (256 / LANES)), spilled into y past 65535.
//   matmul: many tokens. A 32-token x TILE_R-row output tile per workgroup; the K loop stages a
//           32-wide slice of x and of the dequantized W in workgroup memory (12 KiB).
//           grid: (ceil(rows / TILE_R), ceil(T / 32)).
// Prepended constants: WFMT (0 affine, 1 bf16, 2 f16, 3 f32), BITS, GROUP, SFMT (0 bf16, 1 f16,
// 2 f32), K, BLOCK_WORDS (u32 words per 32 inputs of a row), LANES, DUAL, ADD, HEAD.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };
struct Piece { col0: u32, rows: u32, out_stride: u32, p0: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> piece: Piece;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<u32>;
@group(0) @binding(5) var<storage, read> sc: array<u32>;
@group(0) @binding(6) var<storage, read> bi: array<u32>;
@group(0) @binding(7) var<storage, read> w2: array<u32>;
@group(0) @binding(8) var<storage, read> sc2: array<u32>;
@group(0) @binding(9) var<storage, read> bi2: array<u32>;

const BLOCKS: u32 = K / 32u;               // 32-input blocks per row
const GROUPS_PER_ROW: u32 = K / GROUP;
const ROW_WORDS: u32 = BLOCKS * BLOCK_WORDS;
const MASK: u32 = (1u << BITS) - 1u;

fn load_w(m: u32, i: u32) -> u32 {
    if (DUAL && m == 1u) { return w2[i]; }
    return w[i];
}

fn half_at(m: u32, which: u32, e: u32) -> f32 {
    // element e of the scales (which == 0) or biases (which == 1) of matrix m
    let idx = select(e >> 1u, e, SFMT == 2u);
    var word: u32;
    if (DUAL && m == 1u) {
        if (which == 0u) { word = sc2[idx]; } else { word = bi2[idx]; }
    } else {
        if (which == 0u) { word = sc[idx]; } else { word = bi[idx]; }
    }
    if (SFMT == 2u) { return bitcast<f32>(word); }
    let sh = (e & 1u) * 16u;
    if (SFMT == 1u) { return unpack2x16float(word >> sh).x; }
    return bitcast<f32>(((word >> sh) & 0xffffu) << 16u);
}

// Dense element j (0..31) of block words starting at `base`.
fn dense_at(m: u32, base: u32, j: u32) -> f32 {
    if (WFMT == 3u) { return bitcast<f32>(load_w(m, base + j)); }
    let word = load_w(m, base + (j >> 1u));
    let sh = (j & 1u) * 16u;
    if (WFMT == 2u) { return unpack2x16float(word >> sh).x; }
    return bitcast<f32>(((word >> sh) & 0xffffu) << 16u);
}

// Quantized code j (0..31) from a block's words (codes may straddle words for 3/5/6 bits).
fn code_at(words: ptr<function, array<u32, 8>>, j: u32) -> f32 {
    let bit = j * BITS;
    let wi = bit >> 5u;
    let sh = bit & 31u;
    var v = (*words)[wi] >> sh;
    if (sh + BITS > 32u) {
        v = v | ((*words)[wi + 1u] << (32u - sh));
    }
    return f32(v & MASK);
}

// sum_j W[row, 32 b + j] * xb[j] for one 32-input block.
fn block_dot(m: u32, row: u32, b: u32, xb: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    let base = row * ROW_WORDS + b * BLOCK_WORDS;
    if (WFMT == 0u) {
        var qx = 0.0;
        var sx = 0.0;
        if (32u % BITS == 0u) {
            // 2, 4, 8 bits: codes never straddle words, so unpack each word with fixed shifts.
            let per = 32u / BITS;
            for (var i = 0u; i < BITS; i++) {
                let wv = load_w(m, base + i);
                for (var c = 0u; c < per; c += 4u) {
                    let sh = c * BITS;
                    let q = vec4<u32>(wv >> sh, wv >> (sh + BITS), wv >> (sh + 2u * BITS), wv >> (sh + 3u * BITS)) & vec4<u32>(MASK);
                    let xv = (*xb)[(i * per + c) / 4u];
                    qx += dot(vec4<f32>(q), xv);
                    sx += xv.x + xv.y + xv.z + xv.w;
                }
            }
        } else {
            var words: array<u32, 8>;
            for (var i = 0u; i < BITS; i++) { words[i] = load_w(m, base + i); }
            for (var j = 0u; j < 8u; j++) {
                let xv = (*xb)[j];
                let q = vec4<f32>(code_at(&words, 4u * j), code_at(&words, 4u * j + 1u), code_at(&words, 4u * j + 2u), code_at(&words, 4u * j + 3u));
                qx += dot(q, xv);
                sx += xv.x + xv.y + xv.z + xv.w;
            }
        }
        let g = row * GROUPS_PER_ROW + (b * 32u) / GROUP;
        return half_at(m, 0u, g) * qx + half_at(m, 1u, g) * sx;
    }
    var acc = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let wv = vec4<f32>(dense_at(m, base, 4u * j), dense_at(m, base, 4u * j + 1u), dense_at(m, base, 4u * j + 2u), dense_at(m, base, 4u * j + 3u));
        acc += dot(wv, (*xb)[j]);
    }
    return acc;
}

fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }

fn first_row() -> u32 { return select(0u, step.head_offset, HEAD); }
fn token_count() -> u32 { return select(step.n_tokens, step.head_rows, HEAD); }

fn store(t: u32, r: u32, v: f32) {
    let i = t * piece.out_stride + piece.col0 + r;
    if (ADD) { y[i] = y[i] + v; } else { y[i] = v; }
}

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

@compute @workgroup_size(256)
fn matvec(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid % LANES;
    let row = (wid.x + wid.y * nwg.x) * (256u / LANES) + lid / LANES;
    let live = row < piece.rows;
    let xrow = first_row() * (K / 4u);
    var acc = 0.0;
    var acc2 = 0.0;
    if (live) {
        for (var b = lane; b < BLOCKS; b += LANES) {
            var xb: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) { xb[j] = x[xrow + b * 8u + j]; }
            acc += block_dot(0u, row, b, &xb);
            if (DUAL) { acc2 += block_dot(1u, row, b, &xb); }
        }
    }
    red[lid] = acc;
    red2[lid] = acc2;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid] += red[lid + s];
            if (DUAL) { red2[lid] += red2[lid + s]; }
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        var v = red[lid];
        if (DUAL) { v = silu(v) * red2[lid]; }
        store(0u, row, v);
    }
}

const TILE_T: u32 = 32u;
const TILE_R: u32 = select(64u, 32u, DUAL);   // output rows per tile (per matrix)
const RPT: u32 = TILE_R / 16u;                // rows per thread
var<workgroup> xs: array<f32, 1024>;          // [TILE_T][32]
var<workgroup> ws: array<f32, 2048>;          // [64][32]: TILE_R rows of W (and TILE_R of W2 when DUAL)

@compute @workgroup_size(256)
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n_tok = token_count();
    let t0 = wid.y * TILE_T;
    let r0 = wid.x * TILE_R;
    let tx = lid & 15u;   // rows tx*RPT ..
    let ty = lid >> 4u;   // tokens 2ty, 2ty+1
    var acc: array<array<f32, 4>, 2>;
    var acc2: array<array<f32, 4>, 2>;
    // loader roles: x: token lid/8, vec4 lid%8; W: row lid/4 (of 64 staged rows), 8 inputs (lid%4)*8..
    let lt = lid >> 3u;
    let lk = lid & 7u;
    let wr = lid >> 2u;
    let wj = (lid & 3u) * 8u;
    let wm = select(0u, 1u, DUAL && wr >= TILE_R);
    let wrow = r0 + wr - wm * TILE_R;
    let xrow0 = first_row();
    for (var b = 0u; b < BLOCKS; b++) {
        var xv = vec4<f32>(0.0);
        if (t0 + lt < n_tok) { xv = x[(xrow0 + t0 + lt) * (K / 4u) + b * 8u + lk]; }
        xs[lt * 32u + lk * 4u] = xv.x;
        xs[lt * 32u + lk * 4u + 1u] = xv.y;
        xs[lt * 32u + lk * 4u + 2u] = xv.z;
        xs[lt * 32u + lk * 4u + 3u] = xv.w;
        if (wr < 64u) {
            var vals: array<f32, 8>;
            if (wrow < piece.rows) {
                let base = wrow * ROW_WORDS + b * BLOCK_WORDS;
                if (WFMT == 0u) {
                    var words: array<u32, 8>;
                    for (var i = 0u; i < BITS; i++) { words[i] = load_w(wm, base + i); }
                    let g = wrow * GROUPS_PER_ROW + (b * 32u) / GROUP;
                    let s = half_at(wm, 0u, g);
                    let o = half_at(wm, 1u, g);
                    for (var j = 0u; j < 8u; j++) { vals[j] = s * code_at(&words, wj + j) + o; }
                } else {
                    for (var j = 0u; j < 8u; j++) { vals[j] = dense_at(wm, base, wj + j); }
                }
            }
            for (var j = 0u; j < 8u; j++) { ws[wr * 32u + wj + j] = vals[j]; }
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a0 = xs[(2u * ty) * 32u + k];
            let a1 = xs[(2u * ty + 1u) * 32u + k];
            for (var i = 0u; i < RPT; i++) {
                let wv = ws[(tx * RPT + i) * 32u + k];
                acc[0][i] += a0 * wv;
                acc[1][i] += a1 * wv;
                if (DUAL) {
                    let wv2 = ws[(TILE_R + tx * RPT + i) * 32u + k];
                    acc2[0][i] += a0 * wv2;
                    acc2[1][i] += a1 * wv2;
                }
            }
        }
        workgroupBarrier();
    }
    for (var tt = 0u; tt < 2u; tt++) {
        let t = t0 + 2u * ty + tt;
        if (t >= n_tok) { continue; }
        for (var i = 0u; i < RPT; i++) {
            let r = r0 + tx * RPT + i;
            if (r < piece.rows) {
                var v = acc[tt][i];
                if (DUAL) { v = silu(v) * acc2[tt][i]; }
                store(t, r, v);
            }
        }
    }
}

// gather: the embedding lookup. Row tokens[t] of W, dequantized, into y[t, 0..K]; each piece
// writes only the ids it holds. The token ids (u32) are bound in x's slot and bitcast, so the
// decode step reads the id the sampler just wrote without a round trip to the CPU.
// grid: (ceil(K / 256), T).
@compute @workgroup_size(256)
fn gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let c = wid.x * 256u + lid;
    if (t >= step.n_tokens || c >= K) { return; }
    let id = bitcast<u32>(x[t >> 2u][t & 3u]);
    if (id < piece.col0 || id >= piece.col0 + piece.rows) { return; }
    let row = id - piece.col0;
    let b = c / 32u;
    let j = c % 32u;
    let base = row * ROW_WORDS + b * BLOCK_WORDS;
    var v: f32;
    if (WFMT == 0u) {
        var words: array<u32, 8>;
        for (var i = 0u; i < BITS; i++) { words[i] = w[base + i]; }
        let g = row * GROUPS_PER_ROW + (b * 32u) / GROUP;
        v = half_at(0u, 0u, g) * code_at(&words, j) + half_at(0u, 1u, g);
    } else {
        v = dense_at(0u, base, j);
    }
    y[t * K + c] = v;
}
