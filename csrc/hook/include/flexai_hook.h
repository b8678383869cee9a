/*
 * flexai_hook.h: the public, ctypes-friendly C API of the Flex:ai CUDA hook.
 *
 * Python (flexai_node/hook/shim.py) loads libflexai_shim.so and calls
 * flexai_region_snapshot() to read one container's shared region: the limits
 * of each vGPU and what every live process uses. The snapshot struct below is
 * the contract: fixed-size, no pointers, versioned. A reader passes
 * sizeof(its struct) and checks `version`; fields are only ever appended.
 *
 * Layout version 1 (all little-endian, natural alignment, no packing):
 *   flexai_device_usage  =  64 + 8*6 + 4*4               = 128 bytes
 *   flexai_proc_usage    =  4 + 4 + 8*16 + 8*16          = 264 bytes
 *   flexai_snapshot      =  4*4 + 128*16 + 264*256       = 69648 bytes
 */
#ifndef FLEXAI_HOOK_H
#define FLEXAI_HOOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLEXAI_API_VERSION 1
#define FLEXAI_MAX_DEVICES 16 /* vGPUs one container can hold */
#define FLEXAI_MAX_PROCS 256  /* processes of one container using CUDA at once */
#define FLEXAI_UUID_LEN 64    /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" + NUL fits */

struct flexai_device_usage {
    char uuid[FLEXAI_UUID_LEN]; /* "" when the vGPU is matched by cuda_index */
    uint64_t memory_limit;      /* bytes; 0 = no memory limit */
    uint64_t memory_used;       /* bytes, all live processes, context overhead included */
    uint64_t busy_ns;           /* GPU time measured for this vGPU, cumulative (limited vGPUs only) */
    uint64_t period_ns;         /* compute period of the duty cycle */
    uint64_t reserved0;
    uint64_t reserved1;
    uint32_t cores;       /* percent of the card, 0 or 100 = no compute limit */
    uint32_t core_offset; /* percent: where this vGPU's window opens in each period */
    int32_t cuda_index;   /* -1 when matched by uuid */
    uint32_t reserved2;
};

struct flexai_proc_usage {
    int32_t pid;                              /* in the tenant's PID namespace: shown, not trusted */
    uint32_t alive;                           /* 1: only processes alive at the snapshot are listed */
    uint64_t memory_used[FLEXAI_MAX_DEVICES]; /* bytes per vGPU slot */
    uint64_t busy_ns[FLEXAI_MAX_DEVICES];     /* measured GPU time per vGPU slot, cumulative */
};

struct flexai_snapshot {
    uint32_t version;  /* FLEXAI_API_VERSION of the library that filled it */
    uint32_t size;     /* sizeof(struct flexai_snapshot) of that library */
    uint32_t ndevices; /* valid entries in devices[] */
    uint32_t nprocs;   /* valid entries in procs[] */
    struct flexai_device_usage devices[FLEXAI_MAX_DEVICES];
    struct flexai_proc_usage procs[FLEXAI_MAX_PROCS];
};

/* The API version this library speaks (FLEXAI_API_VERSION). */
int flexai_api_version(void);

/*
 * Fill *out from the region file at `path`; `out_size` must be at least
 * sizeof(struct flexai_snapshot) of version 1. The reader only reads: no
 * symbolic link is followed anywhere in `path`, the file must be a regular
 * file with one link, and it is opened read-only and copied (never mapped: a
 * tenant truncating it would SIGBUS a mapping). Processes found gone (their
 * slot lock is free, see region.c) are left out and their memory is not
 * counted in the vGPU totals; nothing is written back.
 * Returns 0, or a negative errno-style code (-ENOENT; -ELOOP / -ENOTDIR a link
 * on the way; -EPERM not a regular file, or hard-linked; -EINVAL not a region;
 * -EPROTO a region of another layout version; -ENOSPC out_size too small).
 */
int flexai_region_snapshot(const char *path, struct flexai_snapshot *out, size_t out_size);

/*
 * Calibration (the node agent, once per card while the card is idle): the SM
 * clock the card sustains under full tensor-core load, which the hook needs
 * as `ref_clock_mhz` to hold a share of throughput rather than of time.
 * flexai_calibrate() runs a burst of `burst_ms` milliseconds of matrix
 * instructions on the card with this `uuid` through the driver API and reads
 * NVML's SM clock every ~10 ms; sm_clock_mhz is the median over the burst's
 * second half (the power controller has settled by then). Then the same
 * kernel at 90, 70, 50, 30 and 10% duty (~1.2 s each) gives speedup_pm, the
 * hook's measured speed-up curve, and gap_power_mw (about 6 s more).
 */
#define FLEXAI_CALIBRATION_MMA 1 /* bf16 mma.sync (sm_80 and newer) */
#define FLEXAI_CALIBRATION_FMA 2 /* fp32 fma, where the matrix kernel does not load */

struct flexai_calibration {
    uint32_t version;          /* FLEXAI_API_VERSION */
    uint32_t sm_clock_mhz;     /* median SM clock, second half of the burst */
    uint32_t max_sm_clock_mhz; /* NVML's maximum SM clock of the card */
    uint32_t samples;          /* clock samples in the median */
    uint32_t busy_pct_before;  /* NVML utilisation of the card before the burst */
    uint32_t kernel;           /* FLEXAI_CALIBRATION_MMA or _FMA */
    uint32_t power_mw;         /* median power draw over the same samples, 0 if unknown */
    uint32_t power_limit_mw;   /* enforced power limit, 0 if unknown */
    uint64_t burst_ns;         /* how long the burst ran */
    uint32_t procs_before;     /* compute processes on the card before (other than the caller) */
    uint32_t idle_power_mw;    /* NVML power before the burst, the card idle; 0 if unknown */
    /* The same kernel run for a part of every 50 ms (10, 30, 50, 70, 90%) right after
     * the burst: its speed per busy second over its speed at full load, per mille. */
    uint32_t speedup_pm[5];
    /* The card's power between the busy parts of that duty cycle (mW, 0 if unknown): the
     * line through the power at 10% and 30% duty, at duty 0 (the hook's power model). */
    uint32_t gap_power_mw;
};

/*
 * Returns 0, or -ENODEV (no card with this uuid), -EBUSY (the card is in use:
 * utilisation above `max_busy_pct` or compute processes on it; nothing was
 * run), -ENOSYS (no CUDA driver or NVML), -EIO (a driver or NVML call
 * failed), -EINVAL / -ENOSPC (bad arguments, `out_size` too small).
 */
int flexai_calibrate(const char *uuid, uint32_t burst_ms, uint32_t max_busy_pct,
                     struct flexai_calibration *out, size_t out_size);

#ifdef __cplusplus
}
#endif
#endif
