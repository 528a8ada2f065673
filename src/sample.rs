// TEMPORARY placeholder until the GPU sampler lands (replaced before commit).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams { pub temperature: f32, pub top_k: u32, pub top_p: f32, pub min_p: f32, pub repetition_penalty: f32, pub presence_penalty: f32, pub penalty_window: u32, pub seed: u64 }
impl Default for SamplingParams { fn default() -> Self { SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, presence_penalty: 0.0, penalty_window: 64, seed: 0 } } }
impl SamplingParams { pub fn validate(&self) -> Result<(), String> { Ok(()) } }
pub struct SamplerCaps { pub subgroups: bool }
pub struct GpuSampler;
impl GpuSampler {
    pub fn new(_d: &wgpu::Device, _l: &wgpu::Buffer, _v: u32, _s: u32, _st: &wgpu::Buffer, _t: &wgpu::Buffer, _i: u32, _c: SamplerCaps) -> Self { GpuSampler }
    pub fn set_params(&self, _q: &wgpu::Queue, _p: &SamplingParams) {}
    pub fn reset_history(&self, _q: &wgpu::Queue, _t: &[u32]) {}
    pub fn encode(&self, _p: &mut wgpu::ComputePass<'_>) { unimplemented!() }
    pub fn dispatches_per_step(&self) -> u32 { 0 }
}
