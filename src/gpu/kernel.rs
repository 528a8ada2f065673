//! A compute kernel = one WGSL entry point specialised by `const` definitions prepended to its
//! source, with an explicit bind-group layout (so variants may leave bindings unused).

use super::Gpu;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`
    Uniform,
}

/// Pipelines for one or more entry points of one specialised module, sharing one layout so that a
/// bind group serves them all (e.g. `matvec` for decode and `matmul` for prefill).
pub struct Kernel {
    pub pipelines: Vec<(String, wgpu::ComputePipeline)>,
    pub layout: wgpu::BindGroupLayout,
    pub name: String,
}

pub struct KernelBuilder<'a> {
    name: &'a str,
    source: &'a str,
    entries: &'a [&'a str],
    consts: Vec<(String, String)>,
    bindings: Vec<Binding>,
    enable_subgroups: bool,
}

impl<'a> KernelBuilder<'a> {
    pub fn new(name: &'a str, source: &'a str, entries: &'a [&'a str]) -> Self {
        KernelBuilder { name, source, entries, consts: Vec::new(), bindings: Vec::new(), enable_subgroups: false }
    }

    pub fn u32(mut self, name: &str, v: u32) -> Self {
        self.consts.push((name.into(), format!("const {name}: u32 = {v}u;")));
        self
    }

    pub fn f32(mut self, name: &str, v: f32) -> Self {
        self.consts.push((name.into(), format!("const {name}: f32 = {v:e};")));
        self
    }

    pub fn bool(mut self, name: &str, v: bool) -> Self {
        self.consts.push((name.into(), format!("const {name}: bool = {v};")));
        self
    }

    pub fn subgroups(mut self, on: bool) -> Self {
        self.enable_subgroups = on;
        self
    }

    pub fn bindings(mut self, b: &[Binding]) -> Self {
        self.bindings = b.to_vec();
        self
    }

    pub fn build(self, gpu: &Gpu) -> Kernel {
        let mut src = String::new();
        if self.enable_subgroups {
            src.push_str("enable subgroups;\n");
        }
        for (_, line) in &self.consts {
            src.push_str(line);
            src.push('\n');
        }
        src.push_str(self.source);
        let device = &gpu.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(self.name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = self
            .bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Binding::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::Read | Binding::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *b == Binding::Read },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(self.name), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(self.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = self
            .entries
            .iter()
            .map(|entry| {
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
                (entry.to_string(), p)
            })
            .collect();
        Kernel { pipelines, layout, name: self.name.to_string() }
    }
}

impl Kernel {
    pub fn pipeline(&self, entry: &str) -> &wgpu::ComputePipeline {
        &self.pipelines.iter().find(|(e, _)| e == entry).expect("kernel entry point built at load").1
    }

    /// A bind group with `buffers[i]` at binding i (whole buffers).
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }
}
