/*
 * hooks.h: the one list of driver functions the hook intercepts.
 *
 * X(exported name, PFN typedef from cudaTypedefs.h, name cuGetProcAddress
 *   is asked for, CUDA version that introduced this variant, per-thread
 *   default stream variant?)
 * intercept.c defines a wrapper for each (its signature is checked against
 * the PFN typedef at compile time) and hands them out through dlsym and
 * cuGetProcAddress; procaddr.c (below it) resolves the real functions and
 * decides which hook a lookup means.
 */
#ifndef FLEXAI_HOOKS_H
#define FLEXAI_HOOKS_H

#include "internal.h"

#define FLEXAI_HOOKS(X)                                                                                      \
    X(cuInit, PFN_cuInit_v2000, "cuInit", 2000, 0)                                                           \
    X(cuMemAlloc_v2, PFN_cuMemAlloc_v3020, "cuMemAlloc", 3020, 0)                                            \
    X(cuMemAllocPitch_v2, PFN_cuMemAllocPitch_v3020, "cuMemAllocPitch", 3020, 0)                             \
    X(cuMemAllocManaged, PFN_cuMemAllocManaged_v6000, "cuMemAllocManaged", 6000, 0)                          \
    X(cuMemAllocAsync, PFN_cuMemAllocAsync_v11020, "cuMemAllocAsync", 11020, 0)                              \
    X(cuMemAllocAsync_ptsz, PFN_cuMemAllocAsync_v11020_ptsz, "cuMemAllocAsync", 11020, 1)                    \
    X(cuMemAllocFromPoolAsync, PFN_cuMemAllocFromPoolAsync_v11020, "cuMemAllocFromPoolAsync", 11020, 0)      \
    X(cuMemAllocFromPoolAsync_ptsz, PFN_cuMemAllocFromPoolAsync_v11020_ptsz, "cuMemAllocFromPoolAsync",      \
      11020, 1)                                                                                              \
    X(cuMemCreate, PFN_cuMemCreate_v10020, "cuMemCreate", 10020, 0)                                          \
    X(cuArrayCreate_v2, PFN_cuArrayCreate_v3020, "cuArrayCreate", 3020, 0)                                   \
    X(cuArray3DCreate_v2, PFN_cuArray3DCreate_v3020, "cuArray3DCreate", 3020, 0)                             \
    X(cuMipmappedArrayCreate, PFN_cuMipmappedArrayCreate_v5000, "cuMipmappedArrayCreate", 5000, 0)           \
    X(cuMemFree_v2, PFN_cuMemFree_v3020, "cuMemFree", 3020, 0)                                               \
    X(cuMemFreeAsync, PFN_cuMemFreeAsync_v11020, "cuMemFreeAsync", 11020, 0)                                 \
    X(cuMemFreeAsync_ptsz, PFN_cuMemFreeAsync_v11020_ptsz, "cuMemFreeAsync", 11020, 1)                       \
    X(cuMemRelease, PFN_cuMemRelease_v10020, "cuMemRelease", 10020, 0)                                       \
    X(cuArrayDestroy, PFN_cuArrayDestroy_v2000, "cuArrayDestroy", 2000, 0)                                   \
    X(cuMipmappedArrayDestroy, PFN_cuMipmappedArrayDestroy_v5000, "cuMipmappedArrayDestroy", 5000, 0)        \
    X(cuMemGetInfo_v2, PFN_cuMemGetInfo_v3020, "cuMemGetInfo", 3020, 0)                                      \
    X(cuDeviceTotalMem_v2, PFN_cuDeviceTotalMem_v3020, "cuDeviceTotalMem", 3020, 0)                          \
    X(cuDevicePrimaryCtxRetain, PFN_cuDevicePrimaryCtxRetain_v7000, "cuDevicePrimaryCtxRetain", 7000, 0)     \
    X(cuCtxCreate_v2, PFN_cuCtxCreate_v3020, "cuCtxCreate", 3020, 0)                                         \
    X(cuCtxCreate_v3, PFN_cuCtxCreate_v11040, "cuCtxCreate", 11040, 0)                                       \
    X(cuCtxCreate_v4, PFN_cuCtxCreate_v12050, "cuCtxCreate", 12050, 0)                                       \
    X(cuLaunchKernel, PFN_cuLaunchKernel_v4000, "cuLaunchKernel", 4000, 0)                                   \
    X(cuLaunchKernel_ptsz, PFN_cuLaunchKernel_v7000_ptsz, "cuLaunchKernel", 7000, 1)                         \
    X(cuLaunchKernelEx, PFN_cuLaunchKernelEx_v11060, "cuLaunchKernelEx", 11060, 0)                           \
    X(cuLaunchKernelEx_ptsz, PFN_cuLaunchKernelEx_v11060_ptsz, "cuLaunchKernelEx", 11060, 1)                 \
    X(cuLaunchCooperativeKernel, PFN_cuLaunchCooperativeKernel_v9000, "cuLaunchCooperativeKernel", 9000, 0)  \
    X(cuLaunchCooperativeKernel_ptsz, PFN_cuLaunchCooperativeKernel_v9000_ptsz, "cuLaunchCooperativeKernel", \
      9000, 1)                                                                                               \
    X(cuGraphLaunch, PFN_cuGraphLaunch_v10000, "cuGraphLaunch", 10000, 0)                                    \
    X(cuGraphLaunch_ptsz, PFN_cuGraphLaunch_v10000_ptsz, "cuGraphLaunch", 10000, 1)                          \
    X(cuGetProcAddress, PFN_cuGetProcAddress_v11030, "cuGetProcAddress", 11030, 0)                           \
    X(cuGetProcAddress_v2, PFN_cuGetProcAddress_v12000, "cuGetProcAddress", 12000, 0)                        \
    X(cuGetProcAddress_v2_ptsz, PFN_cuGetProcAddress_v12000, "cuGetProcAddress", 12000, 1)

enum flexai_hook_id {
#define FLEXAI_ENUM(name, pfn, base, ver, ptsz) FLEXAI_HOOK_##name,
    FLEXAI_HOOKS(FLEXAI_ENUM)
#undef FLEXAI_ENUM
        FLEXAI_HOOK_COUNT
};

/* The real driver function behind hook `id` (NULL if the driver lacks it). */
void *flexai_procaddr_real(int id);
/* cuGetProcAddress answered `pfn` for `symbol`: the hook whose wrapper to
 * hand out instead, or -1 to pass the answer through (procaddr.c has the rules). */
int flexai_procaddr_find(const char *symbol, void *pfn, int version, cuuint64_t flags);
/* The hook exported as `name` (for dlsym), or -1; -1 for all when there is no config. */
int flexai_procaddr_by_name(const char *name);

#endif
