/*
 * intercept.c: the exported cu* wrappers, and dlsym. Each is a few lines
 * that ask memory.c or compute.c and then call the real driver function;
 * dlsym and cuGetProcAddress ask procaddr.c which hook a lookup means and
 * hand out the wrapper.
 *
 * Invariants:
 *   - a wrapper never fails a call the driver would have accepted, except
 *     allocations past the limit (CUDA_ERROR_OUT_OF_MEMORY) and, when the
 *     config is named but unusable or the region cannot be opened, cuInit and
 *     context creation (CUDA_ERROR_NOT_PERMITTED: fail closed, no GPU);
 *   - with no config every wrapper is the real call plus one predictable
 *     branch (and dlsym / cuGetProcAddress hand out the real functions);
 *   - signatures are checked against cudaTypedefs.h's PFN typedefs below.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>

#include "hooks.h"

/* The wrapper for hook `id` (the table is at the end of the file). */
static void *wrapper_of(int id);

#define REAL(name) ((PFN_##name##_t)flexai_procaddr_real(FLEXAI_HOOK_##name))
#define CALL_REAL(name, ...) (REAL(name) != NULL ? REAL(name)(__VA_ARGS__) : CUDA_ERROR_NOT_FOUND)

/* PFN_<name>_t: the typedef of each hooked function, from the list. */
#define FLEXAI_TYPEDEF(name, pfn, base, ver, ptsz) typedef pfn PFN_##name##_t;
FLEXAI_HOOKS(FLEXAI_TYPEDEF)
#undef FLEXAI_TYPEDEF

/* vGPU slot of the calling thread's device; -1 when there is no config. */
static int slot_now(void)
{
    return flexai_config()->ndev == 0 ? -1 : flexai_slot_of_current();
}

/* May this process use the GPU? No when its config is named but unusable, or
 * its limits cannot be shared (no region): running without them would hand
 * the tenant the whole card. Checked at cuInit and context creation only. */
static int gpu_allowed(void)
{
    const struct flexai_config *c = flexai_config();
    if (c->closed)
        return 0;
    return c->ndev == 0 || flexai_region_self() != NULL;
}

FLEXAI_EXPORT CUresult cuInit(unsigned int Flags)
{
    if (!gpu_allowed())
        return CUDA_ERROR_NOT_PERMITTED;
    return CALL_REAL(cuInit, Flags);
}

/* ---- allocations --------------------------------------------------------- */

#define ALLOC_BODY(name, slot, bytes, kind, key_expr, ...)                                                  \
    do {                                                                                                    \
        int s_ = (slot);                                                                                    \
        uint64_t b_ = (bytes);                                                                              \
        if (!flexai_mem_reserve(s_, b_))                                                                    \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                                \
        CUresult r_ = CALL_REAL(name, __VA_ARGS__);                                                         \
        flexai_mem_commit(s_, kind, r_ == CUDA_SUCCESS ? (uint64_t)(key_expr) : 0, b_, r_ == CUDA_SUCCESS); \
        return r_;                                                                                          \
    } while (0)

FLEXAI_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    ALLOC_BODY(cuMemAlloc_v2, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize);
}

FLEXAI_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    ALLOC_BODY(cuMemAllocManaged, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize, flags);
}

FLEXAI_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    ALLOC_BODY(cuMemAllocAsync, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize, hStream);
}

FLEXAI_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    ALLOC_BODY(cuMemAllocAsync_ptsz, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize, hStream);
}

FLEXAI_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                               CUstream hStream)
{
    ALLOC_BODY(cuMemAllocFromPoolAsync, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize, pool,
               hStream);
}

FLEXAI_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                    CUstream hStream)
{
    ALLOC_BODY(cuMemAllocFromPoolAsync_ptsz, slot_now(), bytesize, FLEXAI_MEM_PTR, *dptr, dptr, bytesize,
               pool, hStream);
}

FLEXAI_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                   const CUmemAllocationProp *prop, unsigned long long flags)
{
    int slot = -1;
    if (prop != NULL && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
        slot = flexai_slot_of_device(prop->location.id);
    ALLOC_BODY(cuMemCreate, slot, size, FLEXAI_MEM_HANDLE, *handle, handle, size, prop, flags);
}

/* The driver picks the pitch: memory.c reserves an estimate, then settles. */
FLEXAI_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                                          size_t Height, unsigned int ElementSizeBytes)
{
    int slot = slot_now();
    uint64_t guess = flexai_mem_pitch_estimate(WidthInBytes, Height);
    if (!flexai_mem_reserve(slot, guess))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemAllocPitch_v2, dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    int ok = r == CUDA_SUCCESS;
    flexai_mem_commit_resized(slot, FLEXAI_MEM_PTR, ok ? *dptr : 0, guess,
                              ok ? (uint64_t)*pPitch * Height : 0, ok);
    return r;
}

/* Bytes of one array element (compressed and planar formats: 4, an over-estimate). */
static uint64_t element_bytes(CUarray_format f, unsigned int channels)
{
    uint64_t b;
    switch ((int)f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        b = 1;
        break;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        b = 2;
        break;
    default:
        b = 4;
        break;
    }
    return b * (channels ? channels : 1);
}

static uint64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned int ch)
{
    return (uint64_t)(w ? w : 1) * (h ? h : 1) * (d ? d : 1) * element_bytes(f, ch);
}

FLEXAI_EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *d)
{
    uint64_t bytes = d ? array_bytes(d->Width, d->Height, 1, d->Format, d->NumChannels) : 0;
    ALLOC_BODY(cuArrayCreate_v2, slot_now(), bytes, FLEXAI_MEM_ARRAY, (uintptr_t)*pHandle, pHandle, d);
}

FLEXAI_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    uint64_t bytes = d ? array_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels) : 0;
    ALLOC_BODY(cuArray3DCreate_v2, slot_now(), bytes, FLEXAI_MEM_ARRAY, (uintptr_t)*pHandle, pHandle, d);
}

FLEXAI_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                              unsigned int numMipmapLevels)
{
    uint64_t bytes = 0;
    if (d != NULL) {
        size_t w = d->Width, h = d->Height, z = d->Depth;
        for (unsigned int l = 0; l < (numMipmapLevels ? numMipmapLevels : 1); l++) {
            bytes += array_bytes(w, h, z, d->Format, d->NumChannels);
            w = w > 1 ? w / 2 : w;
            h = h > 1 ? h / 2 : h;
            z = z > 1 ? z / 2 : z;
        }
    }
    ALLOC_BODY(cuMipmappedArrayCreate, slot_now(), bytes, FLEXAI_MEM_MIPMAP, (uintptr_t)*pHandle, pHandle, d,
               numMipmapLevels);
}

/* ---- frees --------------------------------------------------------------- */

#define FREE_BODY(name, kind, key, ...)                \
    do {                                               \
        CUresult r_ = CALL_REAL(name, __VA_ARGS__);    \
        if (r_ == CUDA_SUCCESS)                        \
            flexai_mem_release(kind, (uint64_t)(key)); \
        return r_;                                     \
    } while (0)

FLEXAI_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    FREE_BODY(cuMemFree_v2, FLEXAI_MEM_PTR, dptr, dptr);
}

FLEXAI_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    FREE_BODY(cuMemFreeAsync, FLEXAI_MEM_PTR, dptr, dptr, hStream);
}

FLEXAI_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    FREE_BODY(cuMemFreeAsync_ptsz, FLEXAI_MEM_PTR, dptr, dptr, hStream);
}

FLEXAI_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    FREE_BODY(cuMemRelease, FLEXAI_MEM_HANDLE, handle, handle);
}

FLEXAI_EXPORT CUresult cuArrayDestroy(CUarray hArray)
{
    FREE_BODY(cuArrayDestroy, FLEXAI_MEM_ARRAY, (uintptr_t)hArray, hArray);
}

FLEXAI_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)
{
    FREE_BODY(cuMipmappedArrayDestroy, FLEXAI_MEM_MIPMAP, (uintptr_t)hMipmappedArray, hMipmappedArray);
}

/* ---- what the program sees ----------------------------------------------- */

FLEXAI_EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b)
{
    CUresult r = CALL_REAL(cuMemGetInfo_v2, free_b, total_b);
    if (r == CUDA_SUCCESS && free_b != NULL && total_b != NULL)
        flexai_mem_info(slot_now(), free_b, total_b);
    return r;
}

FLEXAI_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult r = CALL_REAL(cuDeviceTotalMem_v2, bytes, dev);
    if (r == CUDA_SUCCESS && bytes != NULL) {
        size_t free_b = *bytes;
        flexai_mem_info(flexai_slot_of_device(dev), &free_b, bytes);
    }
    return r;
}

/* ---- contexts: charge their overhead once per process and vGPU ----------- */

#define CONTEXT_RESERVE(dev)                           \
    int ctx_charge_ = flexai_mem_context_reserve(dev); \
    if (ctx_charge_ == FLEXAI_CTX_REFUSED)             \
    return CUDA_ERROR_OUT_OF_MEMORY
#define CONTEXT_SETTLE(dev, r)                                    \
    if ((r) != CUDA_SUCCESS && ctx_charge_ == FLEXAI_CTX_CHARGED) \
    flexai_mem_context_unreserve(dev)

FLEXAI_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    if (!gpu_allowed())
        return CUDA_ERROR_NOT_PERMITTED;
    CONTEXT_RESERVE(dev);
    CUresult r = CALL_REAL(cuDevicePrimaryCtxRetain, pctx, dev);
    CONTEXT_SETTLE(dev, r);
    return r;
}

FLEXAI_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    if (!gpu_allowed())
        return CUDA_ERROR_NOT_PERMITTED;
    CONTEXT_RESERVE(dev);
    CUresult r = CALL_REAL(cuCtxCreate_v2, pctx, flags, dev);
    CONTEXT_SETTLE(dev, r);
    return r;
}

FLEXAI_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                                      unsigned int flags, CUdevice dev)
{
    if (!gpu_allowed())
        return CUDA_ERROR_NOT_PERMITTED;
    CONTEXT_RESERVE(dev);
    CUresult r = CALL_REAL(cuCtxCreate_v3, pctx, paramsArray, numParams, flags, dev);
    CONTEXT_SETTLE(dev, r);
    return r;
}

FLEXAI_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                                      CUdevice dev)
{
    if (!gpu_allowed())
        return CUDA_ERROR_NOT_PERMITTED;
    CONTEXT_RESERVE(dev);
    CUresult r = CALL_REAL(cuCtxCreate_v4, pctx, params, flags, dev);
    CONTEXT_SETTLE(dev, r);
    return r;
}

/* ---- launches: one load when nothing is limited -------------------------- */

#define COMPUTE_ON() atomic_load_explicit(&flexai_compute_on, memory_order_relaxed)
#define LAUNCH_BODY(name, stream, flags, ...)                \
    do {                                                     \
        if (COMPUTE_ON())                                    \
            flexai_compute_before_launch((stream), (flags)); \
        CUresult r_ = CALL_REAL(name, __VA_ARGS__);          \
        if (r_ != CUDA_SUCCESS)                              \
            flexai_driver_note_error(#name, r_);             \
        else if (COMPUTE_ON())                               \
            flexai_compute_after_launch((stream), (flags));  \
        return r_;                                           \
    } while (0)

FLEXAI_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                      unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                      CUstream s, void **params, void **extra)
{
    LAUNCH_BODY(cuLaunchKernel, s, FLEXAI_LAUNCH_KERNEL, f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
}

FLEXAI_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                           unsigned int bx, unsigned int by, unsigned int bz,
                                           unsigned int shmem, CUstream s, void **params, void **extra)
{
    LAUNCH_BODY(cuLaunchKernel_ptsz, s, FLEXAI_LAUNCH_PTSZ, f, gx, gy, gz, bx, by, bz, shmem, s, params,
                extra);
}

FLEXAI_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                                        void **extra)
{
    LAUNCH_BODY(cuLaunchKernelEx, config ? config->hStream : NULL, FLEXAI_LAUNCH_KERNEL, config, f, params,
                extra);
}

FLEXAI_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                                             void **extra)
{
    LAUNCH_BODY(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL, FLEXAI_LAUNCH_PTSZ, config, f, params,
                extra);
}

FLEXAI_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                                 unsigned int gz, unsigned int bx, unsigned int by,
                                                 unsigned int bz, unsigned int shmem, CUstream s,
                                                 void **params)
{
    LAUNCH_BODY(cuLaunchCooperativeKernel, s, FLEXAI_LAUNCH_KERNEL, f, gx, gy, gz, bx, by, bz, shmem, s,
                params);
}

FLEXAI_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                                      unsigned int gz, unsigned int bx, unsigned int by,
                                                      unsigned int bz, unsigned int shmem, CUstream s,
                                                      void **params)
{
    LAUNCH_BODY(cuLaunchCooperativeKernel_ptsz, s, FLEXAI_LAUNCH_PTSZ, f, gx, gy, gz, bx, by, bz, shmem, s,
                params);
}

FLEXAI_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    LAUNCH_BODY(cuGraphLaunch, s, FLEXAI_LAUNCH_GRAPH, g, s);
}

FLEXAI_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    LAUNCH_BODY(cuGraphLaunch_ptsz, s, FLEXAI_LAUNCH_GRAPH | FLEXAI_LAUNCH_PTSZ, g, s);
}

/* ---- cuGetProcAddress and dlsym: how programs find driver functions ------- */

/* cuGetProcAddress handed out *pfn for `symbol`: swap in our wrapper if it
 * is one of ours (procaddr.c has the rules). */
static void swap(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    if (pfn == NULL)
        return;
    int id = flexai_procaddr_find(symbol, *pfn, version, flags);
    if (id >= 0)
        *pfn = wrapper_of(id);
}

FLEXAI_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    CUresult r = CALL_REAL(cuGetProcAddress, symbol, pfn, cudaVersion, flags);
    if (r == CUDA_SUCCESS)
        swap(symbol, pfn, cudaVersion, flags);
    return r;
}

FLEXAI_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                           CUdriverProcAddressQueryResult *found)
{
    CUresult r = CALL_REAL(cuGetProcAddress_v2, symbol, pfn, cudaVersion, flags, found);
    if (r == CUDA_SUCCESS)
        swap(symbol, pfn, cudaVersion, flags);
    return r;
}

FLEXAI_EXPORT CUresult cuGetProcAddress_v2_ptsz(const char *symbol, void **pfn, int cudaVersion,
                                                cuuint64_t flags, CUdriverProcAddressQueryResult *found)
{
    CUresult r = CALL_REAL(cuGetProcAddress_v2_ptsz, symbol, pfn, cudaVersion, flags, found);
    if (r == CUDA_SUCCESS)
        swap(symbol, pfn, cudaVersion, flags);
    return r;
}

/* Our dlsym. Limitation: dlsym(RTLD_NEXT, ...) from another library resolves
 * relative to this one (glibc offers no public way to forward the caller). */
FLEXAI_EXPORT void *dlsym(void *handle, const char *name)
{
    void *found = flexai_real_dlsym(handle, name);
    if (found == NULL) /* also covers name == NULL */
        return found;
    void *hook = NULL;
    if (name[0] == 'c' && name[1] == 'u') {
        int id = flexai_procaddr_by_name(name);
        hook = id >= 0 ? wrapper_of(id) : NULL;
    } else if (strncmp(name, "nvml", 4) == 0)
        hook = flexai_nvml_hook_by_name(name);
    return hook != NULL ? hook : found;
}

/* ---- the table, and the compile-time signature check --------------------- */

#define FLEXAI_ENTRY(name, pfn, base, ver, ptsz) (void *)name,
static void *const g_wrapper[FLEXAI_HOOK_COUNT] = {FLEXAI_HOOKS(FLEXAI_ENTRY)};
#undef FLEXAI_ENTRY

static void *wrapper_of(int id)
{
    return g_wrapper[id];
}

#define FLEXAI_CHECK(name, pfn, base, ver, ptsz) \
    _Static_assert(__builtin_types_compatible_p(__typeof__(&name), pfn), #name " does not match " #pfn);
FLEXAI_HOOKS(FLEXAI_CHECK)
#undef FLEXAI_CHECK
