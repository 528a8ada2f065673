// swiglu.wgsl: act[t, i] = silu(gu[t, i]) * gu[t, I + i]. Only used when the gate and up
// projections are stored in different formats and cannot share the fused DUAL matmul.
// Layout: gu [T, 2I], act [T, I]. Dispatch: grid (ceil(I / 256), T).
// Prepended constants: I.

struct Step { pos: u32, n_tokens: u32, step: u32, head_offset: u32, head_rows: u32, p0: u32, p1: u32, p2: u32 };

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> act: array<f32>;

@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let i = gid.x;
    if (t >= step.n_tokens || i >= I) { return; }
    let g = gu[t * 2u * I + i];
    act[t * I + i] = g / (1.0 + exp(-g)) * gu[t * 2u * I + I + i];
}
