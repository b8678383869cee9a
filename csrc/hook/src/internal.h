/*
 * internal.h: what the hook's modules tell each other. Nothing here is
 * exported from the shared library (everything is built with
 * -fvisibility=hidden); exported symbols are the intercepted CUDA/NVML/dlsym
 * entry points and the flexai_* API of flexai_hook.h.
 *
 * Modules, one job each:
 *   config.c    reads the vGPU config once (pthread_once)
 *   region.c    the file-backed shared region: per-vGPU counters, process slots, sweeping
 *   driver.c    finds the real libcuda and its entry points
 *   devices.c   maps a CUDA device ordinal of this process to a vGPU slot
 *   memory.c    counts every allocation and free against the slot's limit
 *   compute.c   holds kernel launches to the slot's share of the card's time
 *               (with meter.c, controller.c, speedup.c, trace.c; see pace.h)
 *   intercept.c the exported cu* functions and dlsym: thin wrappers over memory.c /
 *               compute.c (hooks.h is the one list of them, with their PFN typedefs)
 *   procaddr.c  which hook a dlsym / cuGetProcAddress lookup means; the real functions
 *   nvml.c      NVML memory getters show the slice
 *   api.c       the flexai_* C API read by Python through ctypes
 */
#ifndef FLEXAI_INTERNAL_H
#define FLEXAI_INTERNAL_H

#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdatomic.h>
#include <stdint.h>

#include "flexai_hook.h"

/* cuda.h maps some old names onto new versions for application code; the
 * hook defines the old entry points themselves, so it wants the plain names. */
#undef cuGetProcAddress

#define FLEXAI_EXPORT __attribute__((visibility("default")))
#define FLEXAI_LIKELY(x) __builtin_expect(!!(x), 1)
#define FLEXAI_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* "flexai-hook: <message>" on stderr. Never on the launch path. */
void flexai_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- config.c ---------------------------------------------------------- */
#define FLEXAI_DEFAULT_PERIOD_MS 50
#define FLEXAI_DEFAULT_CONTEXT_OVERHEAD (512ull << 20) /* bytes, per process and vGPU */

#define FLEXAI_SPEEDUP_POINTS 5 /* duties 10, 30, 50, 70, 90% */

struct flexai_dev_config {
    char uuid[FLEXAI_UUID_LEN]; /* match by UUID when set ...        */
    int cuda_index;             /* ... else by this process's ordinal (-1 = unset) */
    uint64_t memory_bytes;      /* 0 = unlimited */
    uint64_t context_overhead;  /* charged once per process that opens a context */
    uint32_t cores;             /* 1..99 = limited; 0 or 100 = unlimited */
    uint32_t core_offset;       /* 0..99 */
    uint32_t ref_clock_mhz;     /* SM clock at full load; 0 = measure time, not work */
    /* Measured by the agent's calibration (speedup.c, flexai_speedup_pm): the card's speed per busy
     * second at 10/30/50/70/90% duty over its speed at full load, per mille (0: unknown);
     * its power when idle (mW; 0: unknown); its power between the windows of a duty cycle (mW;
     * 0: unknown), which turns on the power model. */
    uint16_t speedup_pm[FLEXAI_SPEEDUP_POINTS];
    uint32_t idle_power_mw;
    uint32_t gap_power_mw;
};

struct flexai_config {
    int ndev;            /* 0 = no limits at all: the hook only passes calls through */
    int closed;          /* problems found: named but unusable, no GPU for this process */
    int memory_limited;  /* some vGPU has a memory limit */
    int compute_limited; /* some vGPU has a core limit */
    uint64_t period_ns;
    char region_path[512]; /* "" = a private region (this process only) */
    struct flexai_dev_config dev[FLEXAI_MAX_DEVICES];
};

/* The config, read on first use from $FLEXAI_VGPU_CONFIG. Never NULL. */
const struct flexai_config *flexai_config(void);
/* "1210,1160,1140,1110,1040" -> out; 0, or -1 if not 5 values 1000..3000. */
int flexai_config_parse_speedup(const char *val, uint16_t out[FLEXAI_SPEEDUP_POINTS]);
/* Parse `text` (the file's content) into *out; returns the number of
 * problems, each reported on stderr with `origin`, line and reason. Any
 * problem sets out->closed and leaves no vGPU (the caller refuses CUDA). */
int flexai_config_parse(const char *text, const char *origin, struct flexai_config *out);
/* Read and parse the file at `path` (at most 16 KiB of text); as above. */
int flexai_config_load(const char *path, struct flexai_config *out);

/* ---- region.c ---------------------------------------------------------- */
struct flexai_region; /* opaque; layout in region.c */

/* The region of this process (attached on first use). NULL if the config
 * has no vGPU, or the region could not be opened (then CUDA is refused). */
struct flexai_region *flexai_region_self(void);
/* Try to add `bytes` to slot's usage; fails (returns 0) past the limit unless
 * `force`. On success the bytes are also booked to this process. */
int flexai_region_charge(int slot, uint64_t bytes, int force);
/* Give back `bytes` of this process on `slot`; saturates at 0. */
void flexai_region_uncharge(int slot, uint64_t bytes);
uint64_t flexai_region_used(int slot);
void flexai_region_add_busy(int slot, uint64_t ns);
/* Return the memory of processes that are gone (their slot lock is free);
 * returns how many were swept. Not on any hot path: a syscall per slot. */
int flexai_region_sweep(void);
/* Open a region file for reading (api.c); fills a snapshot. */
int flexai_region_read(const char *path, struct flexai_snapshot *out);

/* ---- driver.c ---------------------------------------------------------- */
/* dlsym itself, found with dlvsym so our own dlsym wrapper is skipped. */
void *flexai_real_dlsym(void *handle, const char *name);
/* The real libcuda (dlopen'd once; $FLEXAI_REAL_LIBCUDA overrides the name). */
void *flexai_libcuda(void);
/* A real driver entry point by exported name, NULL if absent. */
void *flexai_driver_sym(const char *name);

/* Real entry points the hook itself needs (never our wrappers). */
struct flexai_driver {
    PFN_cuCtxGetCurrent_v4000 ctx_get_current;
    PFN_cuCtxGetDevice_v2000 ctx_get_device;
    PFN_cuDeviceGetCount_v2000 device_get_count;
    PFN_cuDeviceGetUuid_v11040 device_get_uuid;
    PFN_cuMemGetInfo_v3020 mem_get_info;
    PFN_cuDeviceTotalMem_v3020 device_total_mem;
    PFN_cuEventCreate_v2000 event_create;
    PFN_cuEventRecord_v2000 event_record;
    PFN_cuEventRecord_v7000_ptsz event_record_ptsz;
    PFN_cuEventQuery_v2000 event_query;
    PFN_cuEventSynchronize_v2000 event_synchronize;
    PFN_cuEventElapsedTime_v2000 event_elapsed;
    PFN_cuEventDestroy_v4000 event_destroy;
    PFN_cuStreamIsCapturing_v10000 stream_is_capturing;
    PFN_cuStreamIsCapturing_v10000_ptsz stream_is_capturing_ptsz;
    PFN_cuStreamQuery_v2000 stream_query;
    PFN_cuStreamQuery_v7000_ptsz stream_query_ptsz;
};
/* Resolved on first call; members may be NULL if the driver lacks them. */
const struct flexai_driver *flexai_driver(void);
/* With $FLEXAI_DEBUG: log (a few) failed driver calls of the hook's own and failed launches. */
void flexai_driver_note_error(const char *what, CUresult r);

/* ---- devices.c --------------------------------------------------------- */
/* vGPU slot for a CUDA device ordinal of this process; -1 = not limited. */
int flexai_slot_of_device(CUdevice dev);
/* vGPU slot of the calling thread's current context; -1 = none/not limited. */
int flexai_slot_of_current(void);
/* vGPU slot for a GPU UUID string "GPU-..."; -1 = not configured. */
int flexai_slot_of_uuid(const char *uuid);

/* ---- memory.c ---------------------------------------------------------- */
enum flexai_mem_kind { FLEXAI_MEM_PTR = 1, FLEXAI_MEM_HANDLE, FLEXAI_MEM_ARRAY, FLEXAI_MEM_MIPMAP };
/* Reserve bytes on slot before the real allocation; 0 = over the limit. */
int flexai_mem_reserve(int slot, uint64_t bytes);
/* After the real call: on success remember (kind,key)->bytes, else give back. */
void flexai_mem_commit(int slot, enum flexai_mem_kind kind, uint64_t key, uint64_t bytes, int ok);
/* Where the driver picks the size: reserve this estimate of a pitched
 * allocation, then flexai_mem_commit_resized() charges the real size. */
uint64_t flexai_mem_pitch_estimate(size_t width_bytes, size_t height);
/* Like flexai_mem_commit, for `reserved` bytes that turned out to be `actual`. */
void flexai_mem_commit_resized(int slot, enum flexai_mem_kind kind, uint64_t key, uint64_t reserved,
                               uint64_t actual, int ok);
/* On free: forget (kind,key) and give its bytes back. */
void flexai_mem_release(enum flexai_mem_kind kind, uint64_t key);
/* Before a context opens on `dev`: charge its overhead once per process and
 * vGPU. FLEXAI_CTX_REFUSED: no room in the slice (the caller returns
 * CUDA_ERROR_OUT_OF_MEMORY); FLEXAI_CTX_CHARGED: charged now, so undo with
 * flexai_mem_context_unreserve() if the driver then fails; FLEXAI_CTX_FREE:
 * nothing to charge. */
#define FLEXAI_CTX_REFUSED 0
#define FLEXAI_CTX_CHARGED 1
#define FLEXAI_CTX_FREE 2
int flexai_mem_context_reserve(CUdevice dev);
void flexai_mem_context_unreserve(CUdevice dev);
/* Virtualised getters. */
void flexai_mem_info(int slot, size_t *free_b, size_t *total_b);

/* ---- compute.c --------------------------------------------------------- */
/* 1 when some vGPU has a core limit: the launch wrappers check this first. */
extern _Atomic int flexai_compute_on;
/* Called before / after every real launch; `is_graph` for cuGraphLaunch. */
enum { FLEXAI_LAUNCH_KERNEL = 0, FLEXAI_LAUNCH_GRAPH = 1, FLEXAI_LAUNCH_PTSZ = 2 };
void flexai_compute_before_launch(CUstream stream, int flags);
void flexai_compute_after_launch(CUstream stream, int flags);

/* ---- nvml.c ------------------------------------------------------------ */
void *flexai_nvml_hook_by_name(const char *name);
/* vGPU `slot`'s card through NVML: its top SM clock (MHz, 0 if unknown) and
 * its utilisation (percent, -1 if unknown). Pacer thread only, never on the
 * launch path. */
uint32_t flexai_nvml_max_sm_clock(int slot);
int flexai_nvml_card_busy_pct(int slot);
/* The card's power draw (NVML's average), or with `limit` its enforced power limit; mW, 0 = unknown. */
uint32_t flexai_nvml_power_mw(int slot, int limit);

#endif
