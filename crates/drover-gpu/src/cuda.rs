//! The CUDA driver API through `dlopen("libcuda.so.1")`: the calls the `gpu-check` workload
//! makes, behind safe types. The only `unsafe` of the crate (allowed for this module alone, see
//! `crates/README.md`); each block says why it is sound.
//!
//! Signatures are those of `cuda.h` for a 64-bit Linux process: `CUresult` and `CUdevice`
//! are `int`, `CUdeviceptr` is `unsigned long long`, contexts, modules, functions and streams
//! are opaque pointers. The `_v2` entry points are the ones `cuda.h` has mapped the plain
//! names to since CUDA 4 (64-bit sizes and device pointers); the primary context
//! (`cuDevicePrimaryCtxRetain`, what the runtime API uses) avoids `cuCtxCreate`, whose
//! signature changed in CUDA 13.
//!
//! Everything here is single-threaded: a CUDA context is current per thread, and the raw
//! pointers these types hold make them neither `Send` nor `Sync`. The library is never
//! unloaded (libcuda keeps threads and handlers; unloading it under them is undefined).

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::marker::PhantomData;

use thiserror::Error;

type CuResult = c_int;
type CuDevice = c_int;
type CuDevicePtr = u64;
type Opaque = *mut c_void;

/// `CUDA_SUCCESS`.
const SUCCESS: CuResult = 0;

/// A failed CUDA call.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{call} failed: {code} {name}")]
pub(crate) struct CudaError {
    /// The entry point.
    pub call: &'static str,
    /// The `CUresult`.
    pub code: i32,
    /// Its name from `cuGetErrorName` (`CUDA_ERROR_NO_DEVICE`), or `unknown`.
    pub name: String,
}

/// Why libcuda could not be loaded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// `dlopen` failed: no NVIDIA driver, or it is not reachable from here.
    #[error("cannot load libcuda.so.1: {0}")]
    Open(String),
    /// The library lacks an entry point.
    #[error("libcuda.so.1 has no {0}")]
    Symbol(&'static str),
}

/// The entry points, resolved once.
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut Opaque, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(Opaque) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    mem_alloc_host: unsafe extern "C" fn(*mut *mut c_void, usize) -> CuResult,
    mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut Opaque, *const c_void) -> CuResult,
    module_unload: unsafe extern "C" fn(Opaque) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut Opaque, Opaque, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        Opaque,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Opaque,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// The loaded driver API.
pub(crate) struct Cuda {
    api: Api,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cuda(libcuda.so.1)")
    }
}

/// Resolves `name` in `handle` as a function pointer of type `F`.
///
/// # Safety
/// `handle` must come from a successful `dlopen`, and `F` must be the C signature of `name`.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &'static CStr) -> Result<F, LoadError> {
    // SAFETY: `handle` is a live dlopen handle (caller) and `name` is NUL-terminated.
    let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if address.is_null() {
        return Err(LoadError::Symbol(name.to_str().unwrap_or("a symbol")));
    }
    // SAFETY: `F` is a function pointer type (caller), the same size as a data pointer on
    // every platform drover builds for, and `address` is the entry point of that signature.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&address) })
}

impl Cuda {
    /// Loads `libcuda.so.1` (the name the driver installs; the linker's search path finds it)
    /// and resolves every entry point.
    pub(crate) fn load() -> Result<Cuda, LoadError> {
        // SAFETY: dlopen takes a NUL-terminated name; loading libcuda runs only its ELF
        // constructors, which the driver supports in any process.
        let handle =
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local NUL-terminated message or null, valid until
            // the next dl* call on this thread; it is copied before any.
            let message = unsafe {
                let text = libc::dlerror();
                if text.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(text).to_string_lossy().into_owned()
                }
            };
            return Err(LoadError::Open(message));
        }
        // SAFETY: (every `symbol` call below) `handle` is the live handle just opened, never
        // closed, and each type is the signature cuda.h declares for that name (see the
        // module docs for the type mapping).
        let api = unsafe {
            Api {
                init: symbol(handle, c"cuInit")?,
                device_get_count: symbol(handle, c"cuDeviceGetCount")?,
                device_get: symbol(handle, c"cuDeviceGet")?,
                device_get_name: symbol(handle, c"cuDeviceGetName")?,
                primary_ctx_retain: symbol(handle, c"cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: symbol(handle, c"cuDevicePrimaryCtxRelease_v2")?,
                ctx_set_current: symbol(handle, c"cuCtxSetCurrent")?,
                ctx_synchronize: symbol(handle, c"cuCtxSynchronize")?,
                mem_alloc: symbol(handle, c"cuMemAlloc_v2")?,
                mem_free: symbol(handle, c"cuMemFree_v2")?,
                mem_alloc_host: symbol(handle, c"cuMemAllocHost_v2")?,
                mem_free_host: symbol(handle, c"cuMemFreeHost")?,
                memcpy_htod: symbol(handle, c"cuMemcpyHtoD_v2")?,
                memcpy_dtoh: symbol(handle, c"cuMemcpyDtoH_v2")?,
                module_load_data: symbol(handle, c"cuModuleLoadData")?,
                module_unload: symbol(handle, c"cuModuleUnload")?,
                module_get_function: symbol(handle, c"cuModuleGetFunction")?,
                launch_kernel: symbol(handle, c"cuLaunchKernel")?,
                get_error_name: symbol(handle, c"cuGetErrorName")?,
            }
        };
        Ok(Cuda { api })
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == SUCCESS {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static NUL-terminated string (or leaves
        // it null for an unknown code) through a pointer to a live local.
        let known = unsafe { (self.api.get_error_name)(code, &mut name) } == SUCCESS;
        let name = if known && !name.is_null() {
            // SAFETY: non-null, static, NUL-terminated (see above).
            unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
        } else {
            "unknown".to_owned()
        };
        Err(CudaError { call, code, name })
    }

    /// `cuInit(0)`.
    pub(crate) fn init(&self) -> Result<(), CudaError> {
        // SAFETY: takes a flags integer (must be 0) and touches no memory of ours.
        self.check("cuInit", unsafe { (self.api.init)(0) })
    }

    /// `cuDeviceGetCount`.
    pub(crate) fn device_count(&self) -> Result<i32, CudaError> {
        let mut count: c_int = 0;
        // SAFETY: writes one int through a pointer to a live local.
        self.check("cuDeviceGetCount", unsafe { (self.api.device_get_count)(&mut count) })?;
        Ok(count)
    }

    /// `cuDeviceGet(ordinal)` and its name.
    pub(crate) fn device(&self, ordinal: i32) -> Result<(Device, String), CudaError> {
        let mut device: CuDevice = 0;
        // SAFETY: writes one CUdevice (int) through a pointer to a live local.
        self.check("cuDeviceGet", unsafe { (self.api.device_get)(&mut device, ordinal) })?;
        let mut name = [0 as c_char; 256];
        // SAFETY: writes at most `len` bytes, NUL-terminated, into the live local buffer of
        // exactly that length.
        let code = unsafe { (self.api.device_get_name)(name.as_mut_ptr(), 256, device) };
        self.check("cuDeviceGetName", code)?;
        // SAFETY: the buffer is NUL-terminated by cuDeviceGetName (and zero-initialised).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        Ok((Device(device), name))
    }

    /// Retains `device`'s primary context and makes it current on this thread.
    pub(crate) fn context(&self, device: Device) -> Result<Context<'_>, CudaError> {
        let mut context: Opaque = std::ptr::null_mut();
        // SAFETY: writes one context handle through a pointer to a live local.
        let code = unsafe { (self.api.primary_ctx_retain)(&mut context, device.0) };
        self.check("cuDevicePrimaryCtxRetain", code)?;
        let retained = Context { cuda: self, device: device.0 };
        // SAFETY: `context` is the handle just retained; it stays valid until released (by
        // `Context::drop`, which runs after everything borrowing it).
        self.check("cuCtxSetCurrent", unsafe { (self.api.ctx_set_current)(context) })?;
        Ok(retained)
    }
}

/// A `CUdevice`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Device(CuDevice);

/// The current primary context; released on drop. Buffers and modules borrow it, so they are
/// freed while it is still current.
#[derive(Debug)]
pub(crate) struct Context<'c> {
    cuda: &'c Cuda,
    device: CuDevice,
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the retain made in `Cuda::context`; nothing borrowing this context
        // outlives it.
        let _ = unsafe { (self.cuda.api.primary_ctx_release)(self.device) };
    }
}

impl<'c> Context<'c> {
    /// `cuCtxSynchronize`.
    pub(crate) fn synchronize(&self) -> Result<(), CudaError> {
        // SAFETY: no arguments; waits for the current context, which `self` keeps alive.
        self.cuda.check("cuCtxSynchronize", unsafe { (self.cuda.api.ctx_synchronize)() })
    }

    /// `cuMemAlloc` of `len` `u32`s of device memory.
    pub(crate) fn device_buffer(&self, len: usize) -> Result<DeviceBuffer<'_>, CudaError> {
        let bytes = len * 4;
        let mut pointer: CuDevicePtr = 0;
        // SAFETY: writes one device pointer through a pointer to a live local.
        let code = unsafe { (self.cuda.api.mem_alloc)(&mut pointer, bytes) };
        self.cuda.check("cuMemAlloc", code)?;
        Ok(DeviceBuffer { context: PhantomData, cuda: self.cuda, pointer, len })
    }

    /// `cuMemAllocHost` of `len` `u32`s of pinned host memory, zeroed.
    pub(crate) fn pinned_buffer(&self, len: usize) -> Result<PinnedBuffer<'_>, CudaError> {
        let mut pointer: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one host pointer through a pointer to a live local.
        let code = unsafe { (self.cuda.api.mem_alloc_host)(&mut pointer, len * 4) };
        self.cuda.check("cuMemAllocHost", code)?;
        if pointer.is_null() {
            return Err(CudaError { call: "cuMemAllocHost", code: -1, name: "null".into() });
        }
        // SAFETY: the driver returned `len * 4` bytes of page-aligned host memory, so `len`
        // u32s; writing zeroes initialises them before any slice is made.
        unsafe { std::ptr::write_bytes(pointer.cast::<u32>(), 0, len) };
        Ok(PinnedBuffer { context: PhantomData, cuda: self.cuda, pointer: pointer.cast(), len })
    }

    /// `cuMemcpyHtoD` of all of `from` into `to` (same length).
    pub(crate) fn copy_to_device(
        &self,
        from: &PinnedBuffer<'_>,
        to: &DeviceBuffer<'_>,
    ) -> Result<(), CudaError> {
        let bytes = from.len.min(to.len) * 4;
        // SAFETY: both allocations are live (borrowed) and at least `bytes` long.
        let code = unsafe { (self.cuda.api.memcpy_htod)(to.pointer, from.pointer.cast(), bytes) };
        self.cuda.check("cuMemcpyHtoD", code)
    }

    /// `cuMemcpyDtoH` of all of `from` into `to` (same length).
    pub(crate) fn copy_to_host(
        &self,
        from: &DeviceBuffer<'_>,
        to: &mut PinnedBuffer<'_>,
    ) -> Result<(), CudaError> {
        let bytes = from.len.min(to.len) * 4;
        // SAFETY: both allocations are live and at least `bytes` long; `to` is borrowed
        // mutably, so no slice of it is alive while the driver writes it (the copy is
        // synchronous for pageable and pinned destinations alike).
        let code = unsafe { (self.cuda.api.memcpy_dtoh)(to.pointer.cast(), from.pointer, bytes) };
        self.cuda.check("cuMemcpyDtoH", code)
    }

    /// `cuModuleLoadData` of NUL-terminated PTX text (JIT-compiled by the driver).
    pub(crate) fn load_ptx(&self, ptx: &CStr) -> Result<Module<'_>, CudaError> {
        let mut module: Opaque = std::ptr::null_mut();
        // SAFETY: reads the NUL-terminated image, writes one module handle to a live local.
        let code = unsafe { (self.cuda.api.module_load_data)(&mut module, ptx.as_ptr().cast()) };
        self.cuda.check("cuModuleLoadData", code)?;
        Ok(Module { context: PhantomData, cuda: self.cuda, module })
    }

    /// Launches `kernel`, whose PTX parameters must be exactly `(.u64 pointer, .u32 count)`,
    /// on `buffer` and its length, with `block` threads per block and enough blocks to cover
    /// it, on the default stream. Returns at once (launches are asynchronous).
    pub(crate) fn launch_over(
        &self,
        kernel: &Function<'_>,
        buffer: &DeviceBuffer<'_>,
        block: u32,
    ) -> Result<(), CudaError> {
        let count = u32::try_from(buffer.len).unwrap_or(u32::MAX);
        let grid = count.div_ceil(block.max(1));
        let mut pointer: u64 = buffer.pointer;
        let mut len: u32 = count;
        let mut params: [*mut c_void; 2] =
            [(&raw mut pointer).cast::<c_void>(), (&raw mut len).cast::<c_void>()];
        // SAFETY: `params` holds one pointer per kernel parameter, each to a live local of
        // the parameter's PTX type (u64, u32), which the driver copies before returning; the
        // function and buffer are live for the call and until synchronisation (both borrow
        // the context, which synchronises before it is released); no extra options.
        let code = unsafe {
            (self.cuda.api.launch_kernel)(
                kernel.function,
                grid,
                1,
                1,
                block,
                1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.cuda.check("cuLaunchKernel", code)
    }
}

/// Device memory of `len` `u32`s; freed on drop.
#[derive(Debug)]
pub(crate) struct DeviceBuffer<'a> {
    context: PhantomData<&'a Context<'a>>,
    cuda: &'a Cuda,
    pointer: CuDevicePtr,
    len: usize,
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: frees this allocation once; its context is still alive (borrowed).
        let _ = unsafe { (self.cuda.api.mem_free)(self.pointer) };
    }
}

/// Pinned host memory of `len` `u32`s; freed on drop.
#[derive(Debug)]
pub(crate) struct PinnedBuffer<'a> {
    context: PhantomData<&'a Context<'a>>,
    cuda: &'a Cuda,
    pointer: *mut u32,
    len: usize,
}

impl PinnedBuffer<'_> {
    /// The memory as a slice.
    pub(crate) fn as_slice(&self) -> &[u32] {
        // SAFETY: `len` initialised u32s (zeroed at allocation), live until drop; the only
        // writer besides `as_mut_slice` is `copy_to_host`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.pointer, self.len) }
    }

    /// The memory as a mutable slice.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as `as_slice`, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.pointer, self.len) }
    }
}

impl Drop for PinnedBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: frees this allocation once; no slice of it outlives `self`.
        let _ = unsafe { (self.cuda.api.mem_free_host)(self.pointer.cast()) };
    }
}

/// A loaded module; unloaded on drop.
#[derive(Debug)]
pub(crate) struct Module<'a> {
    context: PhantomData<&'a Context<'a>>,
    cuda: &'a Cuda,
    module: Opaque,
}

impl Module<'_> {
    /// `cuModuleGetFunction`.
    pub(crate) fn function(&self, name: &CStr) -> Result<Function<'_>, CudaError> {
        let mut function: Opaque = std::ptr::null_mut();
        // SAFETY: the module is live; the name is NUL-terminated; one handle is written to a
        // live local.
        let code = unsafe {
            (self.cuda.api.module_get_function)(&mut function, self.module, name.as_ptr())
        };
        self.cuda.check("cuModuleGetFunction", code)?;
        Ok(Function { module: PhantomData, function })
    }
}

impl Drop for Module<'_> {
    fn drop(&mut self) {
        // SAFETY: unloads this module once; its functions borrow it and are gone.
        let _ = unsafe { (self.cuda.api.module_unload)(self.module) };
    }
}

/// A kernel of a [`Module`].
#[derive(Debug)]
pub(crate) struct Function<'m> {
    module: PhantomData<&'m Module<'m>>,
    function: Opaque,
}
