// rmsnorm.wgsl: y[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + EPS) * weight, in f32.
// Layout: x, y row-major [T, H]; weight f32 [H] (converted from bf16 at load).
// HEAD: only rows head_offset .. head_offset + head_rows (the positions whose logits we need).
// Dispatch: one 256-thread workgroup per row; grid (T, 1).
// Prepended constants: H, EPS, HEAD.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn rmsnorm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = select(step.n_tokens, step.head_rows, HEAD);
    if (wid.x >= n) { return; }
    let row = select(wid.x, step.head_offset + wid.x, HEAD) * H;
    var ss = 0.0;
    for (var c = lid; c < H; c += 256u) {
        let v = x[row + c];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(H) + EPS);
    for (var c = lid; c < H; c += 256u) {
        y[row + c] = x[row + c] * inv * weight[c];
    }
}
