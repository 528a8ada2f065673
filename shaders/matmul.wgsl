// matmul.wgsl: y[t, col0 + r] (+)= sum_k x[xrow(t), k] * W[r, k] over the rows r of one weight piece,
// for plain linear maps and for the stacked expert matrices of a Mixture-of-Experts layer.
//
// W is row-major [rows, K]: MLX affine-quantized (BITS-bit codes packed LSB-first into u32, one
// scale and one bias per GROUP inputs, stored bf16/f16/f32), or dense bf16/f16/f32. Dequantization
// is fused: per group we accumulate scale * sum(q * x) + bias * sum(x) (MLX's trick), so the
// codes are never expanded in memory. Accumulation is f32.
//   DUAL: W holds gate and up rows interleaved in units of UNIT rows ([gate unit 0; up unit 0;
//         gate unit 1; ...]) and y = silu(gate x) * (up x): Qwen3's gate/up projections and SwiGLU
//         in one pass. Output row r reads matrix rows gate_row(r) and gate_row(r) + UNIT.
//   ADD:  y += result (the residual add fused into the producer).
//   HEAD: the token rows come from step.head_offset/head_rows (lm_head on selected positions)
//         instead of 0..step.n_tokens.
//   EXPERTS: W is a run of whole experts (piece.expert0 .. + piece.experts) of E_ROWS output rows
//         each; the routing table `route` (written on the GPU by moe.wgsl) says which expert each
//         slot s = token * TOP_K + j uses. x row of slot s: s (X_BY_SLOT, the down projection reads
//         the slot's own activation) or s / TOP_K (gate/up read the token's normed hidden state).
//   SUM:  (EXPERTS, one token) y[r] += sum_j weight_j * (W_{e_j} x_j)[r]: the weighted sum of the
//         k expert outputs fused into the down projection.
//   COUNT: (EXPERTS, bench only) count the expert rows actually read into counter[piece.counter].
// Entry points and dispatch shapes:
//   matvec: one token. 256 threads = (256 / LANES) rows x LANES lanes; lanes stride over 32-input
//           blocks (LANES = min(32, blocks per row rounded up to a power of two), so short rows
//           do not leave lanes idle). grid: ceil(rows / (256 / LANES)), spilled into y past 65535.
//   matmul: many tokens. A 32-token x TILE_R-row output tile per workgroup; the K loop stages a
//           32-wide slice of x and of the dequantized W in workgroup memory (12 KiB).
//           grid: (ceil(rows / TILE_R), ceil(T / 32)).
//   expert_matvec: one token, EXPERTS. grid (ceil(E_ROWS / (256 / LANES)), 1, SUM ? 1 : TOP_K):
//           z is the slot; a workgroup whose slot's expert is not in this piece exits at once.
//   expert_matmul: many tokens, EXPERTS. Slots grouped by expert into 32-slot tiles (moe.wgsl
//           `group`); grid (ceil(E_ROWS / TILE_R), max tiles), workgroups past the live tile count
//           or for experts of other pieces exit at once, so the work is tokens x TOP_K, not
//           tokens x experts.
//   gather: the embedding lookup (below).
// Prepended constants: WFMT (0 affine, 1 bf16, 2 f16, 3 f32), BITS, GROUP, SFMT (0 bf16, 1 f16,
// 2 f32), K, BLOCK_WORDS (u32 words per 32 inputs of a row), LANES, DUAL, UNIT, ADD, HEAD,
// X_BY_SLOT, SUM, COUNT, TOP_K, E_ROWS, SLOTS (routing table layout, see moe.wgsl).

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };
// rows: output rows of this piece (half its matrix rows when DUAL).
struct Piece { col0: u32, rows: u32, out_stride: u32, expert0: u32, experts: u32, counter: u32, p0: u32, p1: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> piece: Piece;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<u32>;
@group(0) @binding(5) var<storage, read> sc: array<u32>;
@group(0) @binding(6) var<storage, read> bi: array<u32>;
@group(0) @binding(7) var<storage, read> route: array<u32>;
@group(0) @binding(8) var<storage, read_write> counter: array<atomic<u32>>;

const BLOCKS: u32 = K / 32u;               // 32-input blocks per row
const GROUPS_PER_ROW: u32 = K / GROUP;
const ROW_WORDS: u32 = BLOCKS * BLOCK_WORDS;
const MASK: u32 = (1u << BITS) - 1u;
const RPW: u32 = 256u / LANES;             // rows per matvec workgroup
const ROUTE_WEIGHTS: u32 = SLOTS;          // routing table: ids at 0, weights at SLOTS,
const ROUTE_ORDER: u32 = 2u * SLOTS;       // grouped order at 2 SLOTS, tile count at 3 SLOTS,
const ROUTE_TILES: u32 = 3u * SLOTS;       // tiles (expert, start, end) from 3 SLOTS + 1

// Matrix row of output row r (m = 0: the row itself or the gate row; m = 1: the up row).
fn matrix_row(r: u32, m: u32) -> u32 {
    if (!DUAL) { return r; }
    return (r / UNIT) * 2u * UNIT + m * UNIT + r % UNIT;
}

fn half_at(which: u32, e: u32) -> f32 {
    // element e of the scales (which == 0) or biases (which == 1)
    let idx = select(e >> 1u, e, SFMT == 2u);
    var word: u32;
    if (which == 0u) { word = sc[idx]; } else { word = bi[idx]; }
    if (SFMT == 2u) { return bitcast<f32>(word); }
    let sh = (e & 1u) * 16u;
    if (SFMT == 1u) { return unpack2x16float(word >> sh).x; }
    return bitcast<f32>(((word >> sh) & 0xffffu) << 16u);
}

// Dense element j (0..31) of block words starting at `base`.
fn dense_at(base: u32, j: u32) -> f32 {
    if (WFMT == 3u) { return bitcast<f32>(w[base + j]); }
    let word = w[base + (j >> 1u)];
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

// sum_j W[row, 32 b + j] * xb[j] for one 32-input block of matrix row `row`.
fn block_dot(row: u32, b: u32, xb: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    let base = row * ROW_WORDS + b * BLOCK_WORDS;
    if (WFMT == 0u) {
        var qx = 0.0;
        var sx = 0.0;
        if (32u % BITS == 0u) {
            // 2, 4, 8 bits: codes never straddle words, so unpack each word with fixed shifts.
            let per = 32u / BITS;
            for (var i = 0u; i < BITS; i++) {
                let wv = w[base + i];
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
            for (var i = 0u; i < BITS; i++) { words[i] = w[base + i]; }
            for (var j = 0u; j < 8u; j++) {
                let xv = (*xb)[j];
                let q = vec4<f32>(code_at(&words, 4u * j), code_at(&words, 4u * j + 1u), code_at(&words, 4u * j + 2u), code_at(&words, 4u * j + 3u));
                qx += dot(q, xv);
                sx += xv.x + xv.y + xv.z + xv.w;
            }
        }
        let g = row * GROUPS_PER_ROW + (b * 32u) / GROUP;
        return half_at(0u, g) * qx + half_at(1u, g) * sx;
    }
    var acc = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let wv = vec4<f32>(dense_at(base, 4u * j), dense_at(base, 4u * j + 1u), dense_at(base, 4u * j + 2u), dense_at(base, 4u * j + 3u));
        acc += dot(wv, (*xb)[j]);
    }
    return acc;
}

// Element j (0..31) of the 32-input block b of matrix row `row`, dequantized.
fn block_values(row: u32, b: u32, j0: u32, vals: ptr<function, array<f32, 8>>) {
    let base = row * ROW_WORDS + b * BLOCK_WORDS;
    if (WFMT == 0u) {
        var words: array<u32, 8>;
        for (var i = 0u; i < BITS; i++) { words[i] = w[base + i]; }
        let g = row * GROUPS_PER_ROW + (b * 32u) / GROUP;
        let s = half_at(0u, g);
        let o = half_at(1u, g);
        for (var j = 0u; j < 8u; j++) { (*vals)[j] = s * code_at(&words, j0 + j) + o; }
    } else {
        for (var j = 0u; j < 8u; j++) { (*vals)[j] = dense_at(base, j0 + j); }
    }
}

fn silu(v: f32) -> f32 { return v / (1.0 + exp(-v)); }

fn first_row() -> u32 { return select(0u, step.head_offset, HEAD); }
fn token_count() -> u32 { return select(step.n_tokens, step.head_rows, HEAD); }

// Output token row t (relative to this pass's first row), row r of this piece.
fn store(t: u32, r: u32, v: f32) {
    let i = t * piece.out_stride + piece.col0 + r;
    if (ADD) { y[i] = y[i] + v; } else { y[i] = v; }
}

fn expert_of(slot: u32) -> u32 { return route[slot]; }
fn in_piece(e: u32) -> bool { return e >= piece.expert0 && e < piece.expert0 + piece.experts; }
fn x_row_of_slot(slot: u32) -> u32 { return select(slot / TOP_K, slot, X_BY_SLOT); }

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

// Partial dot products of output row r (gate and, when DUAL, up) over this lane's blocks.
fn row_partials(r: u32, lane: u32, xrow: u32) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    for (var b = lane; b < BLOCKS; b += LANES) {
        var xb: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) { xb[j] = x[xrow * (K / 4u) + b * 8u + j]; }
        acc.x += block_dot(matrix_row(r, 0u), b, &xb);
        if (DUAL) { acc.y += block_dot(matrix_row(r, 1u), b, &xb); }
    }
    return acc;
}

// Sum the partials over the LANES lanes of each row; lane 0 gets the row's result
// (silu(gate) * up when DUAL). Call in uniform control flow.
fn reduce_lanes(lid: u32, lane: u32, acc: vec2<f32>) -> f32 {
    red[lid] = acc.x;
    red2[lid] = acc.y;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid] += red[lid + s];
            if (DUAL) { red2[lid] += red2[lid + s]; }
        }
        workgroupBarrier();
    }
    var v = red[lid];
    if (DUAL) { v = silu(v) * red2[lid]; }
    workgroupBarrier();
    return v;
}

@compute @workgroup_size(256)
fn matvec(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid % LANES;
    let r = (wid.x + wid.y * nwg.x) * RPW + lid / LANES;
    let live = r < piece.rows;
    var acc = vec2<f32>(0.0);
    if (live) { acc = row_partials(r, lane, first_row()); }
    let v = reduce_lanes(lid, lane, acc);
    if (live && lane == 0u) { store(0u, r, v); }
}

@compute @workgroup_size(256)
fn expert_matvec(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = lid % LANES;
    let r = wid.x * RPW + lid / LANES;   // output row within an expert
    let live = r < E_ROWS;
    let rows_here = min(RPW, E_ROWS - wid.x * RPW);
    var total = 0.0;
    var any = false;
    let j0 = select(wid.z, 0u, SUM);
    let j1 = select(wid.z + 1u, TOP_K, SUM);
    for (var j = j0; j < j1; j++) {
        let e = expert_of(j);
        if (!in_piece(e)) { continue; }
        any = true;
        if (COUNT && lid == 0u) { atomicAdd(&counter[piece.counter], rows_here * select(1u, 2u, DUAL)); }
        var acc = vec2<f32>(0.0);
        if (live) { acc = row_partials((e - piece.expert0) * E_ROWS + r, lane, x_row_of_slot(j)); }
        let v = reduce_lanes(lid, lane, acc);
        if (SUM) {
            total += bitcast<f32>(route[ROUTE_WEIGHTS + j]) * v;
        } else if (live && lane == 0u) {
            store(j, r, v);
        }
    }
    if (SUM && any && live && lane == 0u) { store(0u, r, total); }
}

const TILE_T: u32 = 32u;
const TILE_R: u32 = select(64u, 32u, DUAL);   // output rows per tile
const RPT: u32 = TILE_R / 16u;                // rows per thread
var<workgroup> xs: array<f32, 1024>;          // [TILE_T][32]
var<workgroup> ws: array<f32, 2048>;          // [64][32]: TILE_R rows of W (and TILE_R up rows when DUAL)
var<workgroup> tile_x: array<u32, 32>;        // x row of each token row of the tile (NONE: padding)
var<workgroup> tile_y: array<u32, 32>;        // output row of each token row of the tile
const NONE: u32 = 0xffffffffu;

// One 32-token x TILE_R-row output tile: output rows r0 .. r0 + TILE_R (rows at or past row_end
// are padding) of the matrix rows from row_base (an expert's first row), token rows from
// tile_x/tile_y.
fn matmul_tile(lid: u32, r0: u32, row_base: u32, row_end: u32) {
    let tx = lid & 15u;   // rows tx*RPT ..
    let ty = lid >> 4u;   // tile token rows 2ty, 2ty+1
    var acc: array<array<f32, 4>, 2>;
    var acc2: array<array<f32, 4>, 2>;
    // loader roles: x: token lid/8, vec4 lid%8; W: staged row lid/4 (of 64), 8 inputs (lid%4)*8..
    let lt = lid >> 3u;
    let lk = lid & 7u;
    let wr = lid >> 2u;
    let wj = (lid & 3u) * 8u;
    let wm = select(0u, 1u, DUAL && wr >= TILE_R);
    let wout = r0 + wr - wm * TILE_R;
    let xrow = tile_x[lt];
    for (var b = 0u; b < BLOCKS; b++) {
        var xv = vec4<f32>(0.0);
        if (xrow != NONE) { xv = x[xrow * (K / 4u) + b * 8u + lk]; }
        xs[lt * 32u + lk * 4u] = xv.x;
        xs[lt * 32u + lk * 4u + 1u] = xv.y;
        xs[lt * 32u + lk * 4u + 2u] = xv.z;
        xs[lt * 32u + lk * 4u + 3u] = xv.w;
        if (wr < 64u) {
            var vals: array<f32, 8>;
            if (wout < row_end) { block_values(matrix_row(row_base + wout, wm), b, wj, &vals); }
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
        let t = tile_y[2u * ty + tt];
        if (t == NONE) { continue; }
        for (var i = 0u; i < RPT; i++) {
            let r = r0 + tx * RPT + i;
            if (r < row_end) {
                var v = acc[tt][i];
                if (DUAL) { v = silu(v) * acc2[tt][i]; }
                store(t, r, v);
            }
        }
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t0 = wid.y * TILE_T;
    if (lid < 32u) {
        let live = t0 + lid < token_count();
        tile_x[lid] = select(NONE, first_row() + t0 + lid, live);
        tile_y[lid] = select(NONE, t0 + lid, live);
    }
    workgroupBarrier();
    matmul_tile(lid, wid.x * TILE_R, 0u, piece.rows);
}

@compute @workgroup_size(256)
fn expert_matmul(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if (wid.y >= route[ROUTE_TILES]) { return; }
    let tile = ROUTE_TILES + 1u + 3u * wid.y;
    let e = route[tile];
    if (!in_piece(e)) { return; }
    let start = route[tile + 1u];
    let end = route[tile + 2u];
    if (lid < 32u) {
        var slot = NONE;
        if (start + lid < end) { slot = route[ROUTE_ORDER + start + lid]; }
        tile_x[lid] = select(x_row_of_slot(slot), NONE, slot == NONE);
        tile_y[lid] = slot;
    }
    workgroupBarrier();
    matmul_tile(lid, wid.x * TILE_R, (e - piece.expert0) * E_ROWS, E_ROWS);
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
    var vals: array<f32, 8>;
    block_values(row, b, (c % 32u) / 8u * 8u, &vals);
    y[t * K + c] = vals[c % 8u];
}
