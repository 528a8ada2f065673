//! GPU plumbing, apart from any model: the device and its limits, buffers, pipelines built from
//! `shaders/`, and reading results back. Model code only asks for "a kernel with these bindings".

mod kernel;
pub use kernel::{Binding, Kernel, KernelBuilder};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What the caller allows the engine to use; the adapter decides what it can.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Lower the per-binding storage limit (bytes) below the adapter's, e.g. to test tensor splitting.
    pub max_storage_binding: Option<u64>,
    /// Never use `shader-f16`, even where the adapter has it.
    pub no_f16: bool,
    /// Never use subgroup operations, even where the adapter has them.
    pub no_subgroups: bool,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The largest storage binding (and buffer) we will create: min(binding limit, buffer limit, option).
    pub max_binding: u64,
    pub has_f16: bool,
    pub has_subgroups: bool,
    /// Bytes of GPU buffers this engine allocated, for `bench` and `info`.
    allocated: AtomicU64,
    /// The first error the GPU reported outside an error scope, or the device's loss.
    failure: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    pub async fn new(opts: &GpuOptions) -> Result<Arc<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "no GPU adapter found ({e}). Natively webqwen needs Vulkan, Metal or DX12 \
                     (on Linux without a GPU: apt-get install mesa-vulkan-drivers); in a browser it needs WebGPU"
                ))
            })?;
        let adapter_info = adapter.get_info();
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        let has_f16 = !opts.no_f16 && available.contains(wgpu::Features::SHADER_F16);
        if has_f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        let has_subgroups = !opts.no_subgroups && available.contains(wgpu::Features::SUBGROUP);
        if has_subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        // Ask for everything the adapter offers: WebGPU's defaults (128 MiB bindings) are far below
        // what most devices can do, and we split tensors to whatever we get.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webqwen"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("could not open the GPU device: {e}")))?;
        let mut max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        if let Some(m) = opts.max_storage_binding {
            if m < 64 * 1024 {
                return Err(Error::Invalid(format!("--max-storage-binding {m} is too small (at least 65536)")));
            }
            max_binding = max_binding.min(m);
        }
        max_binding &= !255; // keep pieces nicely aligned
                             // wgpu's default reaction to an error outside a scope, or to a lost device, is to panic
                             // (natively) or to log it (on the web). Record it instead: the next wait or readback
                             // turns it into an `Error::Gpu`, and the caller decides what to do.
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let record = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| note_failure(&record, describe_gpu_error(&e))));
        let record = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                note_failure(&record, format!("the GPU device was lost ({message}); load the model again"));
            }
        });
        Ok(Arc::new(Gpu {
            device,
            queue,
            adapter_info,
            limits,
            max_binding,
            has_f16,
            has_subgroups,
            allocated: AtomicU64::new(0),
            failure,
        }))
    }

    /// The first GPU error reported outside an error scope (or the device's loss), as an error.
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().map(|f| f.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(Error::Gpu(message)),
            Err(_) => Err(Error::Gpu("a GPU error handler failed".into())),
        }
    }

    /// Run `f` (buffer allocations, pipeline creation) with the GPU's out-of-memory, validation
    /// and internal errors captured: any of them becomes an `Error::Gpu` saying what `what` was
    /// doing and how much GPU memory was allocated by then.
    pub async fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let result = f();
        // Scopes pop in reverse order of their pushes.
        let errors = [internal.pop().await, validation.pop().await, oom.pop().await];
        if let Some(e) = errors.into_iter().flatten().next() {
            let mib = self.allocated_bytes() as f64 / (1 << 20) as f64;
            return Err(Error::Gpu(format!(
                "{what}, with {mib:.1} MiB of GPU memory allocated: {}",
                describe_gpu_error(&e)
            )));
        }
        self.check()?;
        result
    }

    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// A storage buffer of `size` bytes (rounded up to 4), zero-initialised.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        )
    }

    pub fn uniform(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.buffer(label, size, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)
    }

    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let size = size.max(16).next_multiple_of(16);
        if usage.contains(wgpu::BufferUsages::STORAGE) && size > self.max_binding {
            return Err(Error::Limit(format!(
                "buffer {label:?} needs {size} bytes but the storage-binding limit is {} bytes",
                self.max_binding
            )));
        }
        self.allocated.fetch_add(size, Ordering::Relaxed);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }))
    }

    /// Copy `size` bytes at `offset` of `src` back to the host. Waits for the GPU; on the web it
    /// yields to the event loop instead of blocking.
    pub async fn read_back(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let padded = size.next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, padded);
        self.queue.submit([enc.finish()]);
        let bytes = self.map_read(&staging).await?;
        Ok(bytes[..size as usize].to_vec())
    }

    /// Map an already-filled MAP_READ buffer and return its contents.
    pub async fn map_read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        self.map_read_after(staging, None).await
    }

    /// Like `map_read`, but natively waits only for submission `after` (later submissions keep
    /// running), which is what lets decoding overlap the readback with the next step.
    pub async fn map_read_after(
        &self,
        staging: &wgpu::Buffer,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: after, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        let _ = after;
        let mapped = rx.await.map_err(|_| Error::Gpu("the GPU device was lost while reading back".into()))?;
        self.check()?;
        mapped.map_err(|e| Error::Gpu(format!("reading back from the GPU failed: {e}")))?;
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading back from the GPU failed: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Block until submitted work is done (natively); a no-op on the web, where map callbacks
    /// fire from the event loop.
    pub fn wait_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check()
    }
}

fn note_failure(slot: &Mutex<Option<String>>, message: String) {
    if let Ok(mut first) = slot.lock() {
        first.get_or_insert(message);
    }
}

/// An actionable sentence for a wgpu error.
fn describe_gpu_error(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => "the GPU ran out of memory; try a smaller model, a shorter --context or \
             --kv-cache f16, or close other programs that use the GPU"
            .into(),
        wgpu::Error::Validation { description, .. } => {
            format!("the GPU rejected a command (a webqwen bug; please report it): {description}")
        }
        wgpu::Error::Internal { description, .. } => format!("the GPU driver failed: {description}"),
    }
}

/// Workgroup grid for `n` workgroups: WebGPU allows at most 65535 per dimension, so large counts
/// spill into y (kernels rebuild the linear index as `x + y * num_workgroups.x`).
pub fn grid(n: u32) -> (u32, u32) {
    const MAX: u32 = 65535;
    if n <= MAX {
        (n.max(1), 1)
    } else {
        let y = n.div_ceil(MAX);
        (n.div_ceil(y), y)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn gpu() -> Option<Arc<Gpu>> {
        match pollster::block_on(Gpu::new(&GpuOptions::default())) {
            Ok(g) => Some(g),
            Err(e) if std::env::var_os("WEBQWEN_REQUIRE_FIXTURES").is_none() => {
                eprintln!("note: no GPU adapter ({e}), skipping");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A shader the GPU rejects, built inside `scoped`, is an error naming what was being done,
    /// not a panic.
    #[test]
    fn scoped_turns_gpu_errors_into_errors() {
        let Some(gpu) = gpu() else { return };
        let built = pollster::block_on(gpu.scoped("building a test kernel", || {
            Ok(KernelBuilder::new("broken", "@compute @workgroup_size(1) fn main( {", &["main"]).build(&gpu))
        }));
        let e = built.err().expect("an invalid shader must be an error");
        assert!(e.to_string().contains("building a test kernel"), "{e}");
        // The device is still usable afterwards.
        let ok = pollster::block_on(gpu.scoped("allocating", || gpu.storage("fine", 1024)));
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    /// An error outside any scope is remembered and reported by the next wait, not a panic.
    #[test]
    fn uncaptured_errors_are_reported_on_the_next_wait() {
        let Some(gpu) = gpu() else { return };
        gpu.wait_idle().unwrap();
        // A buffer larger than the device allows: a validation error, outside any scope.
        let _too_big = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("too big"),
            size: gpu.limits.max_buffer_size.saturating_add(4096),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = gpu.wait_idle().expect_err("the validation error must come back");
        assert!(matches!(e, Error::Gpu(_)) && e.to_string().contains("too big"), "{e}");
    }
}
