//! The CUDA device through cudarc with dynamic loading: library checks, context and streams,
//! kernel compilation and loading, raw device and pinned host buffers, and kernel launches.
//!
//! Nothing here knows the model. Every entry point first checks that `libcuda` and `libnvrtc`
//! can be loaded, so a machine without CUDA gets `BackendError::Unavailable` and never a panic
//! from cudarc's lazy loader. cudarc's per-buffer event tracking is switched off: this backend
//! orders its work itself on one compute stream (plus one copy stream for trace downloads), and
//! tracking events would break CUDA graph capture.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream};

use super::kernels::{self, KernelModule, NVRTC_OPTIONS};
use crate::backend::BackendError;

pub(crate) fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable { backend: "cuda", reason: reason.into() }
}

pub(crate) fn dev_err(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

/// Checks that the CUDA driver and NVRTC libraries can be loaded, without loading any symbol.
pub fn check_libraries() -> Result<(), BackendError> {
    // SAFETY: these only try `dlopen` on the candidate names and drop the handle.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(unavailable("no CUDA driver (libcuda.so could not be loaded)"));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(unavailable("no NVRTC (libnvrtc.so could not be loaded), needed to compile the kernels"));
    }
    Ok(())
}

/// What a recording needs to know about the device that produced it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    pub nvrtc_version: (i32, i32),
    pub total_mem: usize,
    /// sha256 of the kernel sources and compile options (see `kernels::source_hash`).
    pub kernel_hash: String,
    pub nvrtc_options: Vec<String>,
}

impl DeviceInfo {
    /// One line for `/health` and logs.
    pub fn describe(&self) -> String {
        let (dmaj, dmin) = (self.driver_version / 1000, (self.driver_version % 1000) / 10);
        format!(
            "{} (sm_{}{}, {:.1} GiB, CUDA driver {dmaj}.{dmin}, NVRTC {}.{})",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.nvrtc_version.0,
            self.nvrtc_version.1
        )
    }
}

/// A device allocation freed on drop. Holds the raw pointer that kernels take as an argument.
pub struct DevBuf {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Pointer `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: allocated by cuMemAlloc in this context and freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

// SAFETY: a device pointer is plain data; the context is thread-safe and bound before use.
unsafe impl Send for DevBuf {}

/// Page-locked host memory for asynchronous copies, freed on drop.
pub struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl PinnedBuf {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The first `n` f32 values. Only valid after the copy that fills them has completed.
    pub fn f32s(&self, n: usize) -> &[f32] {
        assert!(n * 4 <= self.bytes);
        // SAFETY: page-locked allocation of `bytes` bytes, aligned to a page.
        unsafe { std::slice::from_raw_parts(self.ptr as *const f32, n) }
    }
    pub fn f32s_mut(&mut self, n: usize) -> &mut [f32] {
        assert!(n * 4 <= self.bytes);
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut f32, n) }
    }
    pub fn i32s_mut(&mut self, n: usize) -> &mut [i32] {
        assert!(n * 4 <= self.bytes);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut i32, n) }
    }
    pub fn u32s_mut(&mut self, n: usize) -> &mut [u32] {
        assert!(n * 4 <= self.bytes);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u32, n) }
    }
    /// The first `n` bytes. Only valid after the copy that fills them has completed.
    pub fn bytes_of(&self, n: usize) -> &[u8] {
        assert!(n <= self.bytes);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, n) }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemHostAlloc and freed once.
        let _ = unsafe { result::free_host(self.ptr as *mut _) };
    }
}

// SAFETY: the host memory is owned by this value alone.
unsafe impl Send for PinnedBuf {}

/// A kernel argument: device pointers travel as u64, sizes as i32, scalars as f32.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
}

/// The device: context, streams, compiled kernels, device memory accounting.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// All compute work, in order.
    pub stream: Arc<CudaStream>,
    /// Trace downloads, ordered after the compute stream by an event.
    pub copy_stream: Arc<CudaStream>,
    /// Raw function handles (cudarc's wrapper hides them, and `cuLaunchKernelEx` needs them).
    functions: HashMap<&'static str, sys::CUfunction>,
    /// Modules stay loaded for the context's lifetime.
    _modules: Vec<sys::CUmodule>,
    /// Whether the next launches may overlap their predecessor (programmatic dependent launch).
    pdl: std::cell::Cell<bool>,
    /// PDL is used at all (compute capability 9.0 or later, and WORKER_ORCD_CUDA_PDL is not 0).
    pdl_supported: bool,
    pub info: DeviceInfo,
    allocated: std::sync::atomic::AtomicUsize,
    /// Seconds spent compiling kernels at start-up (0 when all came from the cache).
    pub compile_seconds: f64,
    /// Dynamic shared memory a block of the big kernels may use, in bytes.
    pub max_dynamic_smem: usize,
    /// Streaming multiprocessors (the persistent decode kernel runs one block on each).
    pub sm_count: usize,
    /// Whether the device supports cooperative launches (grids guaranteed co-resident).
    pub cooperative: bool,
}

impl Gpu {
    /// Opens device `ordinal`, compiles (or loads cached) kernels for its architecture.
    pub fn open(ordinal: usize) -> Result<Gpu, BackendError> {
        check_libraries()?;
        result::init().map_err(|e| unavailable(format!("cuInit failed: {e:?}")))?;
        let count = result::device::get_count().map_err(|e| unavailable(format!("no CUDA device: {e:?}")))?;
        if count as usize <= ordinal {
            return Err(unavailable(format!("no CUDA device {ordinal} ({count} present)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("cannot create a CUDA context: {e:?}")))?;
        // SAFETY: no buffers or streams exist yet; we never use cudarc's tracked buffers.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("stream", e))?;
        let copy_stream = ctx.new_stream().map_err(|e| dev_err("copy stream", e))?;
        let cc = ctx.compute_capability().map_err(|e| dev_err("compute capability", e))?;
        let mut driver_version = 0i32;
        // SAFETY: plain out-parameter call on a loaded driver.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result().map_err(|e| dev_err("driver version", e))?;
        let nvrtc_version = nvrtc_version()?;
        let info = DeviceInfo {
            name: ctx.name().map_err(|e| dev_err("device name", e))?,
            compute_capability: cc,
            driver_version,
            nvrtc_version,
            total_mem: ctx.total_mem().map_err(|e| dev_err("device memory", e))?,
            kernel_hash: kernels::source_hash(),
            nvrtc_options: NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect(),
        };
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let t0 = std::time::Instant::now();
        let mut compiled_any = false;
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for m in KernelModule::ALL {
            let (cubin, fresh) = compiled_module(m, &arch, nvrtc_version)?;
            compiled_any |= fresh;
            let mut module: sys::CUmodule = std::ptr::null_mut();
            // SAFETY: `cubin` is a complete CUBIN image; the context is current.
            unsafe { sys::cuModuleLoadData(&mut module, cubin.as_ptr() as *const _) }
                .result()
                .map_err(|e| dev_err(&format!("loading {}", m.file_name()), e))?;
            modules.push(module);
            for &f in m.functions() {
                let name = CString::new(f).expect("kernel names contain no NUL");
                let mut func: sys::CUfunction = std::ptr::null_mut();
                // SAFETY: out-parameter lookup in a loaded module.
                unsafe { sys::cuModuleGetFunction(&mut func, module, name.as_ptr()) }.result().map_err(|e| dev_err(&format!("kernel {f}"), e))?;
                functions.insert(f, func);
            }
        }
        let compile_seconds = if compiled_any { t0.elapsed().as_secs_f64() } else { 0.0 };
        // Kernels whose dynamic shared memory grows with the context or the batch tile may use
        // the opt-in maximum (227 KB on Hopper) instead of the default 48 KB.
        let optin =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).map_err(|e| dev_err("shared memory limit", e))?;
        let max_dynamic_smem = (optin as usize).saturating_sub(4096).max(48 * 1024);
        let big_smem =
            ["attention_f32", "attention_rows_f32_p6", "attention_rows_f32_p8", "matvec_q4_1_q8_1", "matvec_q4_0_q8_0", "matvec_q8_0_q8_0", "pick_choose"];
        for &name in big_smem.iter().chain(super::kernels::DECODER_LAYERS) {
            // The dynamic limit plus the kernel's static shared memory may not pass the opt-in.
            let mut stat = 0i32;
            // SAFETY: a loaded function handle; plain attribute calls.
            unsafe { sys::cuFuncGetAttribute(&mut stat, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, functions[name]) }
                .result()
                .map_err(|e| dev_err(&format!("reading the static shared memory of {name}"), e))?;
            let limit = max_dynamic_smem.min((optin as usize).saturating_sub(stat.max(0) as usize));
            // SAFETY: as above.
            unsafe { sys::cuFuncSetAttribute(functions[name], sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit as i32) }
                .result()
                .map_err(|e| dev_err(&format!("raising the shared memory limit of {name}"), e))?;
        }
        let sm_count =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| dev_err("multiprocessor count", e))? as usize;
        let cooperative =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH).map_err(|e| dev_err("cooperative launch support", e))? != 0;
        let pdl_supported = cc.0 >= 9 && super::options::options().pdl;
        Ok(Gpu {
            ctx,
            stream,
            copy_stream,
            functions,
            _modules: modules,
            pdl: std::cell::Cell::new(false),
            pdl_supported,
            info,
            allocated: 0.into(),
            compile_seconds,
            max_dynamic_smem,
            sm_count,
            cooperative,
        })
    }

    pub fn bind(&self) -> Result<(), BackendError> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("binding the CUDA context", e))
    }

    /// Bytes allocated through `alloc` and still live (weights, caches, scratch).
    pub fn allocated_bytes(&self) -> usize {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Device memory in use on the whole device, from `cuMemGetInfo` (total - free).
    pub fn device_used_bytes(&self) -> usize {
        let _ = self.bind();
        result::mem_get_info().map(|(free, total)| total - free).unwrap_or(0)
    }

    /// An uninitialized device allocation of `bytes` (at least 1).
    pub fn alloc(&self, bytes: usize) -> Result<DevBuf, BackendError> {
        self.bind()?;
        // SAFETY: plain allocation; the memory is written before it is read by construction.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| dev_err(&format!("allocating {bytes} bytes"), e))?;
        self.allocated.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(DevBuf { ptr, bytes, ctx: Arc::clone(&self.ctx) })
    }

    /// A device allocation holding `data`, copied synchronously (start-up and tests only).
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DevBuf, BackendError> {
        let bytes = std::mem::size_of_val(data);
        let buf = self.alloc(bytes)?;
        if bytes > 0 {
            // SAFETY: `buf` holds `bytes` bytes; the stream is synchronized before returning.
            unsafe { result::memcpy_htod_async(buf.ptr, data, self.stream.cu_stream()) }.map_err(|e| dev_err("upload", e))?;
            self.sync()?;
        }
        Ok(buf)
    }

    /// Copies `data` into `dst` at byte `offset`, synchronously (start-up and tests only).
    pub fn write<T: Copy>(&self, dst: &DevBuf, offset: usize, data: &[T]) -> Result<(), BackendError> {
        assert!(offset + std::mem::size_of_val(data) <= dst.bytes, "write past the end of a device buffer");
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: bounds checked above; synchronized before returning.
        unsafe { result::memcpy_htod_async(dst.at(offset), data, self.stream.cu_stream()) }.map_err(|e| dev_err("upload", e))?;
        self.sync()
    }

    /// Reads `n` values of type T from `src` at byte `offset`, synchronously (tests, debug taps).
    pub fn read<T: Copy + Default>(&self, src: u64, n: usize) -> Result<Vec<T>, BackendError> {
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        self.sync()?;
        // SAFETY: the caller names a live device range of n values; synchronized below.
        unsafe { result::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream()) }.map_err(|e| dev_err("download", e))?;
        self.sync()?;
        Ok(out)
    }

    pub fn pinned(&self, bytes: usize) -> Result<PinnedBuf, BackendError> {
        self.bind()?;
        // SAFETY: plain page-locked allocation (flags 0: cached, readable by the host at speed).
        let ptr = unsafe { result::malloc_host(bytes.max(4), 0) }.map_err(|e| dev_err("pinned allocation", e))?;
        Ok(PinnedBuf { ptr: ptr as *mut u8, bytes, ctx: Arc::clone(&self.ctx) })
    }

    pub fn sync(&self) -> Result<(), BackendError> {
        self.stream.synchronize().map_err(|e| dev_err("stream synchronize", e))
    }

    /// Lets the following launches overlap their predecessor's tail (each kernel waits for it
    /// with `griddepcontrol.wait` before reading its results). Only for kernel-to-kernel
    /// sequences: the first kernel after a copy must be launched with this off.
    pub fn set_overlap(&self, on: bool) {
        self.pdl.set(on && self.pdl_supported);
    }

    /// Launches kernel `name` on the compute stream.
    pub fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, smem: u32, args: &[Arg]) -> Result<(), BackendError> {
        self.launch_ex(name, grid, block, smem, args, false)
    }

    /// A cooperative launch: the driver guarantees every block of the grid is resident at once
    /// (or fails the launch), which grid barriers need. Never overlapped with its predecessor.
    pub fn launch_cooperative(&self, name: &str, grid: u32, block: u32, smem: u32, args: &[Arg]) -> Result<(), BackendError> {
        self.launch_ex(name, (grid, 1, 1), block, smem, args, true)
    }

    fn launch_ex(&self, name: &str, grid: (u32, u32, u32), block: u32, smem: u32, args: &[Arg], cooperative: bool) -> Result<(), BackendError> {
        let func = *self.functions.get(name).ok_or_else(|| BackendError::Device(format!("unknown kernel {name}")))?;
        // Each argument in an 8-byte slot; the driver copies the parameter's own size from it
        // (little-endian: an i32 or f32 sits in the low half).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(i) => i as u32 as u64,
                Arg::F32(f) => f.to_bits() as u64,
                Arg::U64(v) => v,
            })
            .collect();
        let mut params: Vec<*mut std::ffi::c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut std::ffi::c_void).collect();
        // SAFETY: a zeroed attribute is valid; the union field written matches the id.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        if cooperative {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            attr.value.cooperative = 1;
        } else {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
        }
        let overlap = cooperative || self.pdl.get();
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: if overlap { &mut attr } else { std::ptr::null_mut() },
            numAttrs: if overlap { 1 } else { 0 },
        };
        self.bind()?;
        // SAFETY: argument lists match the kernels' signatures (one call site per kernel in
        // `ops`/`forward`, exercised by the parity tests); buffers outlive the stream's work;
        // `slots`, `params` and `attr` live until the call returns (the driver copies them).
        unsafe { sys::cuLaunchKernelEx(&cfg, func, params.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| dev_err(&format!("launching {name}"), e))?;
        Ok(())
    }
}

// SAFETY: CUDA driver handles (functions, modules) may be used from any thread that binds the
// context, which every entry point does; the overlap flag is only touched by the owner.
unsafe impl Send for Gpu {}

fn nvrtc_version() -> Result<(i32, i32), BackendError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameter call on a loaded library.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(unavailable(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

/// The CUBIN of `module` for `arch`: from the disk cache, else compiled and cached. The flag is
/// true when it was compiled now.
fn compiled_module(module: KernelModule, arch: &str, nvrtc_version: (i32, i32)) -> Result<(Vec<u8>, bool), BackendError> {
    let path = kernels::cache_dir().map(|d| d.join(kernels::cache_key(module, arch, nvrtc_version)));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, false));
            }
        }
    }
    let cubin = compile_cubin(module, arch)?;
    if let Some(p) = &path {
        // A cache that cannot be written only costs compile time.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok((cubin, true))
}

/// Compiles one module with NVRTC straight to a CUBIN for `arch` (e.g. `sm_90`).
pub fn compile_cubin(module: KernelModule, arch: &str) -> Result<Vec<u8>, BackendError> {
    use cudarc::nvrtc::{result as nv, sys as nvsys};
    let src = CString::new(module.full_source()).expect("kernel sources contain no NUL");
    let name = CString::new(module.file_name()).expect("file names contain no NUL");
    let prog = nv::create_program(&src, Some(&name)).map_err(|e| dev_err("nvrtcCreateProgram", e))?;
    let mut opts: Vec<String> = NVRTC_OPTIONS.iter().chain(kernels::extra_options()).map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` is a live program; options are valid C strings.
    let compiled = unsafe { nv::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: out-parameters on a compiled program; the buffer has the reported size.
            unsafe {
                let r = nvsys::nvrtcGetCUBINSize(prog, &mut size);
                if r != nvsys::nvrtcResult::NVRTC_SUCCESS {
                    Err(dev_err("nvrtcGetCUBINSize", r))
                } else {
                    let mut buf = vec![0u8; size];
                    let r = nvsys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
                    if r != nvsys::nvrtcResult::NVRTC_SUCCESS {
                        Err(dev_err("nvrtcGetCUBIN", r))
                    } else {
                        Ok(buf)
                    }
                }
            }
        }
        Err(e) => {
            // SAFETY: reading the log of a live program.
            let log = unsafe { nv::get_program_log(prog) }.ok().map(|l| {
                let bytes: Vec<u8> = l.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            });
            Err(BackendError::Device(format!("compiling {} failed ({e:?}): {}", module.file_name(), log.unwrap_or_default())))
        }
    };
    // SAFETY: destroyed once.
    let _ = unsafe { nv::destroy_program(prog) };
    out
}
