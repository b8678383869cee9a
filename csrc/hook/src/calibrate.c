/*
 * calibrate.c: measure the SM clock a card sustains under full load, for the
 * node agent (flexai_calibrate() in flexai_hook.h; built into the shim only).
 *
 * Why: a power-capped card clocks down under a long full load and runs at its
 * top clock when it idles part of the time, so a share of its time is more
 * than that share of its full-load throughput. The hook corrects for that
 * (speedup.c, flexai_speedup_pm) given the full-load clock as `ref_clock_mhz`; this
 * file finds that clock on the card itself, so no figure is set by hand per
 * card model.
 *
 * How: a burst of back-to-back launches of a kernel that keeps every SM's
 * tensor cores busy (bf16 mma.sync, PTX JIT-compiled by the driver; an fp32
 * fma kernel where the card has no such instruction), with NVML's SM clock
 * read after each launch (~10 ms apart). The power controller needs a moment
 * to settle, so the figure is the median over the second half of the burst.
 *
 * Invariants: refuses (-EBUSY) and runs nothing when the card is in use, so
 * it never slows a tenant down nor measures a clock that a tenant set; leaves
 * no context behind (the primary context is released); never aborts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Eight independent accumulators per warp keep the tensor pipes full, and
 * one 16-byte load from a 1 GiB buffer per 16 matrix instructions keeps the
 * memory busy too: matrix instructions alone do not reach the power limit,
 * a matmul that also moves data does (bench/results/hook-h200.md, "Figures
 * behind the hook's constants"). */
/* The PTX and its macros are laid out as the instructions read (clang-format does not settle
 * on a layout for these macros). */
/* clang-format off */
static const char k_mma_ptx[] =
    ".version 7.0\n.target sm_80\n.address_size 64\n"
    ".visible .entry flexai_burn(.param .u64 out, .param .u32 iters, .param .u64 buf, .param .u64 mask)\n{\n"
    ".reg .b32 a<4>, b<2>, q<4>, x;\n.reg .f32 d<32>;\n.reg .u32 i, n, t, w, g;\n"
    ".reg .u64 o, off, bp, m, k, addr, nt;\n.reg .pred p;\n"
    "mov.u32 t, %tid.x;\nmov.b32 a0, 0x3c003c00;\nxor.b32 a1, a0, t;\nmov.b32 a2, 0x3c013c01;\n"
    "mov.b32 a3, 0x3c023c02;\nmov.b32 b0, 0x3c003c00;\nmov.b32 b1, 0x3c033c03;\nmov.b32 x, 0;\n"
#define Z4(a, b, c, e) "mov.f32 d" #a ", 0f00000000;\nmov.f32 d" #b ", 0f00000000;\n" \
                       "mov.f32 d" #c ", 0f00000000;\nmov.f32 d" #e ", 0f00000000;\n"
    Z4(0, 1, 2, 3) Z4(4, 5, 6, 7) Z4(8, 9, 10, 11) Z4(12, 13, 14, 15)
    Z4(16, 17, 18, 19) Z4(20, 21, 22, 23) Z4(24, 25, 26, 27) Z4(28, 29, 30, 31)
    "ld.param.u32 n, [iters];\nld.param.u64 bp, [buf];\nld.param.u64 m, [mask];\n"
    "mov.u32 g, %ctaid.x;\nmov.u32 w, %ntid.x;\nmad.lo.u32 g, g, w, t;\ncvt.u64.u32 k, g;\n"
    "mov.u32 w, %nctaid.x;\nmov.u32 i, %ntid.x;\nmul.wide.u32 nt, w, i;\n"
    "mov.u32 i, 0;\nLOOP:\n"
    "and.b64 off, k, m;\nshl.b64 off, off, 4;\nadd.u64 addr, bp, off;\n"
    "ld.global.cg.v4.u32 {q0,q1,q2,q3}, [addr];\nadd.u64 k, k, nt;\n"
#define MMA(a, b, c, e) "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d" #a ",d" #b ",d" #c ",d" #e \
                        "}, {a0,a1,a2,a3}, {b0,b1}, {d" #a ",d" #b ",d" #c ",d" #e "};\n"
#define MMA8 MMA(0, 1, 2, 3) MMA(4, 5, 6, 7) MMA(8, 9, 10, 11) MMA(12, 13, 14, 15) \
             MMA(16, 17, 18, 19) MMA(20, 21, 22, 23) MMA(24, 25, 26, 27) MMA(28, 29, 30, 31)
    MMA8 "xor.b32 x, x, q0;\nxor.b32 x, x, q3;\n" MMA8
    "add.u32 i, i, 1;\nsetp.lt.u32 p, i, n;\n@p bra LOOP;\n"
    "add.f32 d0, d0, d4;\nadd.f32 d0, d0, d8;\nadd.f32 d0, d0, d12;\nadd.f32 d0, d0, d16;\n"
    "add.f32 d0, d0, d20;\nadd.f32 d0, d0, d24;\nadd.f32 d0, d0, d28;\nadd.f32 d0, d0, d1;\n"
    "mov.b32 w, d0;\nxor.b32 w, w, x;\nmov.b32 d0, w;\n"
    "mul.wide.u32 off, g, 4;\nld.param.u64 o, [out];\nadd.u64 o, o, off;\nst.global.f32 [o], d0;\nret;\n}\n";
/* clang-format on */

static const char k_fma_ptx[] =
    ".version 7.0\n.target sm_50\n.address_size 64\n"
    ".visible .entry flexai_burn(.param .u64 out, .param .u32 iters, .param .u64 buf, .param .u64 mask)\n{\n"
    ".reg .f32 x<8>;\n.reg .u32 i, n, t, w;\n.reg .u64 o, off;\n.reg .pred p;\n"
    "mov.u32 t, %tid.x;\ncvt.rn.f32.u32 x0, t;\nmul.f32 x0, x0, 0f3A800000;\n"
    "add.f32 x1, x0, 0f3F800000;\nadd.f32 x2, x0, 0f40000000;\nadd.f32 x3, x0, 0f40400000;\n"
    "add.f32 x4, x0, 0f40800000;\nadd.f32 x5, x0, 0f40A00000;\nadd.f32 x6, x0, 0f40C00000;\n"
    "add.f32 x7, x0, 0f40E00000;\nld.param.u32 n, [iters];\nmov.u32 i, 0;\nLOOP:\n"
#define FMA(k) "fma.rn.f32 x" #k ", x" #k ", 0f3F7FFFEF, 0f3A800000;\n"
    FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6)
        FMA(7) "add.u32 i, i, 1;\nsetp.lt.u32 p, i, n;\n@p bra LOOP;\n"
               "add.f32 x0, x0, x1;\nadd.f32 x0, x0, x2;\nadd.f32 x0, x0, x3;\nadd.f32 x0, x0, x4;\n"
               "add.f32 x0, x0, x5;\nadd.f32 x0, x0, x6;\nadd.f32 x0, x0, x7;\n"
               "mov.u32 t, %ctaid.x;\nmov.u32 i, %ntid.x;\nmov.u32 w, %tid.x;\nmad.lo.u32 t, t, i, w;\n"
               "mul.wide.u32 off, t, 4;\nld.param.u64 o, [out];\nadd.u64 o, o, off;\nst.global.f32 [o], "
               "x0;\nret;\n}\n";

#define BLOCK 256
#define BLOCKS_PER_SM 4
#define LAUNCH_NS 10000000ull /* one launch: ~10 ms of work, one NVML read each */
#define PROBE_ITERS 1024u
#define MAX_SAMPLES 4096

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned int gpu, memory;
} nvml_util_t;
#define NVML_CLOCK_SM 1
#define NVML_ERROR_INSUFFICIENT_SIZE 7

struct nvml {
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*by_uuid)(const char *, nvmlDevice_t *);
    nvmlReturn_t (*clock)(nvmlDevice_t, int, unsigned int *);
    nvmlReturn_t (*max_clock)(nvmlDevice_t, int, unsigned int *);
    nvmlReturn_t (*util)(nvmlDevice_t, nvml_util_t *);
    nvmlReturn_t (*procs)(nvmlDevice_t, unsigned int *, void *);
    nvmlReturn_t (*power)(nvmlDevice_t, unsigned int *);
    nvmlReturn_t (*power_limit)(nvmlDevice_t, unsigned int *);
    nvmlReturn_t (*energy)(nvmlDevice_t, unsigned long long *); /* mJ since the driver loaded */
};

struct cuda {
    PFN_cuInit_v2000 init;
    PFN_cuDeviceGetCount_v2000 count;
    PFN_cuDeviceGet_v2000 get;
    PFN_cuDeviceGetUuid_v11040 uuid;
    PFN_cuDeviceGetAttribute_v2000 attr;
    PFN_cuDevicePrimaryCtxRetain_v7000 retain;
    PFN_cuDevicePrimaryCtxRelease_v11000 release;
    PFN_cuCtxSetCurrent_v4000 set_current;
    PFN_cuCtxSynchronize_v2000 sync;
    PFN_cuModuleLoadData_v2000 load;
    PFN_cuModuleGetFunction_v2000 function;
    PFN_cuModuleUnload_v2000 unload;
    PFN_cuMemAlloc_v3020 alloc;
    PFN_cuMemFree_v3020 free;
    PFN_cuLaunchKernel_v4000 launch;
    PFN_cuEventCreate_v2000 event_create;
    PFN_cuEventRecord_v2000 event_record;
    PFN_cuEventSynchronize_v2000 event_sync;
    PFN_cuEventElapsedTime_v2000 event_elapsed;
    PFN_cuEventDestroy_v4000 event_destroy;
};

static uint64_t mono_ns(void);

static void sleep_ms(unsigned int ms)
{
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void sleep_until_ns(uint64_t t)
{
    uint64_t now = mono_ns();
    if (t > now) {
        struct timespec d = {.tv_sec = (time_t)((t - now) / 1000000000ull),
                             .tv_nsec = (long)((t - now) % 1000000000ull)};
        nanosleep(&d, NULL);
    }
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void *open_lib(const char *env, const char *fallback)
{
    const char *name = getenv(env);
    return dlopen(name != NULL && *name != '\0' ? name : fallback, RTLD_NOW | RTLD_LOCAL);
}

/* dlsym into a function pointer of any type; 1 if found. */
static int sym(void *lib, const char *name, void *dst)
{
    void *f = dlsym(lib, name);
    memcpy(dst, &f, sizeof f);
    return f != NULL;
}
#define SYM(lib, dst, name) sym(lib, name, &(dst))

static int load_nvml(struct nvml *n)
{
    void *lib = open_lib("FLEXAI_REAL_LIBNVML", "libnvidia-ml.so.1");
    if (lib == NULL)
        return 0;
    /* The optional ones (processes, power) may be missing: checked at use. */
    SYM(lib, n->procs, "nvmlDeviceGetComputeRunningProcesses_v3");
    SYM(lib, n->power, "nvmlDeviceGetPowerUsage");
    SYM(lib, n->power_limit, "nvmlDeviceGetEnforcedPowerLimit");
    SYM(lib, n->energy, "nvmlDeviceGetTotalEnergyConsumption");
    return SYM(lib, n->init, "nvmlInit_v2") && SYM(lib, n->by_uuid, "nvmlDeviceGetHandleByUUID") &&
           SYM(lib, n->clock, "nvmlDeviceGetClockInfo") &&
           SYM(lib, n->max_clock, "nvmlDeviceGetMaxClockInfo") &&
           SYM(lib, n->util, "nvmlDeviceGetUtilizationRates");
}

static int load_cuda(struct cuda *c)
{
    void *lib = open_lib("FLEXAI_REAL_LIBCUDA", "libcuda.so.1");
    if (lib == NULL)
        return 0;
    return SYM(lib, c->init, "cuInit") && SYM(lib, c->count, "cuDeviceGetCount") &&
           SYM(lib, c->get, "cuDeviceGet") && SYM(lib, c->uuid, "cuDeviceGetUuid_v2") &&
           SYM(lib, c->attr, "cuDeviceGetAttribute") && SYM(lib, c->retain, "cuDevicePrimaryCtxRetain") &&
           SYM(lib, c->release, "cuDevicePrimaryCtxRelease_v2") &&
           SYM(lib, c->set_current, "cuCtxSetCurrent") && SYM(lib, c->sync, "cuCtxSynchronize") &&
           SYM(lib, c->load, "cuModuleLoadData") && SYM(lib, c->function, "cuModuleGetFunction") &&
           SYM(lib, c->unload, "cuModuleUnload") && SYM(lib, c->alloc, "cuMemAlloc_v2") &&
           SYM(lib, c->free, "cuMemFree_v2") && SYM(lib, c->launch, "cuLaunchKernel") &&
           SYM(lib, c->event_create, "cuEventCreate") && SYM(lib, c->event_record, "cuEventRecord") &&
           SYM(lib, c->event_sync, "cuEventSynchronize") &&
           (SYM(lib, c->event_elapsed, "cuEventElapsedTime_v2") ||
            SYM(lib, c->event_elapsed, "cuEventElapsedTime")) &&
           SYM(lib, c->event_destroy, "cuEventDestroy_v2");
}

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" of a CUDA device. */
static void uuid_string(const CUuuid *u, char *out, size_t len)
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int find_device(const struct cuda *c, const char *uuid, CUdevice *out)
{
    int n = 0;
    if (c->count(&n) != CUDA_SUCCESS)
        return -EIO;
    for (int i = 0; i < n; i++) {
        CUdevice d;
        CUuuid u;
        char s[FLEXAI_UUID_LEN];
        if (c->get(&d, i) != CUDA_SUCCESS || c->uuid(&u, d) != CUDA_SUCCESS)
            return -EIO;
        uuid_string(&u, s, sizeof s);
        if (strcasecmp(s, uuid) == 0) {
            *out = d;
            return 0;
        }
    }
    return -ENODEV;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t median(uint32_t *v, uint32_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u32);
    return v[n / 2];
}

struct burst {
    CUfunction fn;
    CUdeviceptr out;
    CUdeviceptr buf; /* what the matrix kernel streams through */
    uint64_t mask;   /* 16-byte units in buf, minus 1 (a power of two) */
    unsigned int blocks;
    unsigned int iters;
};

static CUresult launch(const struct cuda *c, struct burst *b)
{
    void *args[] = {&b->out, &b->iters, &b->buf, &b->mask};
    return c->launch(b->fn, b->blocks, 1, 1, BLOCK, 1, 1, 0, NULL, args, NULL);
}

/* Scale `iters` so one launch is about LAUNCH_NS of work (one timed probe). */
static int size_launch(const struct cuda *c, struct burst *b, CUevent e0, CUevent e1)
{
    float ms = 0;
    b->iters = PROBE_ITERS;
    if (c->event_record(e0, NULL) != CUDA_SUCCESS || launch(c, b) != CUDA_SUCCESS ||
        c->event_record(e1, NULL) != CUDA_SUCCESS || c->event_sync(e1) != CUDA_SUCCESS ||
        c->event_elapsed(&ms, e0, e1) != CUDA_SUCCESS)
        return -EIO;
    double scale = ms > 0.001f ? (double)LAUNCH_NS / ((double)ms * 1e6) : 1.0;
    double iters = PROBE_ITERS * (scale < 1 ? 1 : scale);
    b->iters = iters > 1e9 ? 1000000000u : (unsigned int)iters;
    return 0;
}

/* The burst itself: one launch always queued behind the running one, the
 * clock read as each completes. */
static int run_burst(const struct cuda *c, const struct nvml *n, nvmlDevice_t h, struct burst *b,
                     uint32_t burst_ms, struct flexai_calibration *out)
{
    CUevent ev[2] = {NULL, NULL};
    if (c->event_create(&ev[0], CU_EVENT_DEFAULT) != CUDA_SUCCESS ||
        c->event_create(&ev[1], CU_EVENT_DEFAULT) != CUDA_SUCCESS)
        return -EIO;
    int rc = size_launch(c, b, ev[0], ev[1]);
    uint32_t clocks[MAX_SAMPLES], power[MAX_SAMPLES];
    uint64_t t[MAX_SAMPLES];
    uint32_t ns = 0, np = 0;
    uint64_t t0 = mono_ns(), end = t0 + (uint64_t)burst_ms * 1000000ull;
    if (rc == 0 && (launch(c, b) != CUDA_SUCCESS || c->event_record(ev[0], NULL) != CUDA_SUCCESS))
        rc = -EIO;
    for (int k = 1; rc == 0 && mono_ns() < end && ns < MAX_SAMPLES; k ^= 1) {
        if (launch(c, b) != CUDA_SUCCESS || c->event_record(ev[k], NULL) != CUDA_SUCCESS ||
            c->event_sync(ev[k ^ 1]) != CUDA_SUCCESS) {
            rc = -EIO;
            break;
        }
        unsigned int mhz = 0, mw = 0;
        if (n->clock(h, NVML_CLOCK_SM, &mhz) == 0) {
            t[ns] = mono_ns();
            clocks[ns++] = mhz;
        }
        if (n->power != NULL && n->power(h, &mw) == 0 && mono_ns() - t0 >= (end - t0) / 2)
            power[np++] = mw;
    }
    c->sync();
    out->burst_ns = mono_ns() - t0;
    c->event_destroy(ev[0]);
    c->event_destroy(ev[1]);
    if (rc != 0)
        return rc;
    /* The second half: samples taken after the burst's midpoint. */
    uint64_t mid = t0 + (mono_ns() - t0) / 2;
    uint32_t first = 0;
    while (first < ns && t[first] < mid)
        first++;
    if (ns - first == 0)
        return -EIO;
    out->samples = ns - first;
    out->sm_clock_mhz = median(clocks + first, ns - first);
    out->power_mw = median(power, np);
    return 0;
}

#define CURVE_PERIOD_NS 50000000ull /* the hook's default period */
#define CURVE_STEP_NS 1200000000ull /* per duty; the second half is measured */
#define CURVE_BATCH 10

/* GPU time of one launch, median over the second half of `ns` of batches of
 * CURVE_BATCH back-to-back launches (no idle time: full load). */
static int full_load_per_launch(const struct cuda *c, struct burst *b, CUevent e0, CUevent e1, uint64_t ns,
                                double *out)
{
    double v[256];
    int n = 0;
    uint64_t t0 = mono_ns(), half = t0 + ns / 2;
    while (mono_ns() - t0 < ns && n < 256) {
        float ms = 0;
        if (c->event_record(e0, NULL) != CUDA_SUCCESS)
            return -EIO;
        for (int i = 0; i < CURVE_BATCH; i++)
            if (launch(c, b) != CUDA_SUCCESS)
                return -EIO;
        if (c->event_record(e1, NULL) != CUDA_SUCCESS || c->event_sync(e1) != CUDA_SUCCESS ||
            c->event_elapsed(&ms, e0, e1) != CUDA_SUCCESS)
            return -EIO;
        if (mono_ns() >= half)
            v[n++] = (double)ms / CURVE_BATCH;
    }
    if (n == 0)
        return -EIO;
    uint32_t us[256];
    for (int i = 0; i < n; i++)
        us[i] = (uint32_t)(v[i] * 1000.0 * 1000.0); /* ns */
    *out = (double)median(us, (uint32_t)n);
    return 0;
}

/* What one duty step measured: GPU time per launch (ns), the busy fraction
 * and the card's average power over its second half. */
struct step {
    double per_launch_ns;
    double duty;
    uint32_t power_mw; /* 0: unknown */
};

/* The card's energy counter in mJ, or 0 where NVML has none. */
static unsigned long long energy_mj(const struct nvml *n, nvmlDevice_t h)
{
    unsigned long long mj = 0;
    return n->energy != NULL && n->energy(h, &mj) == 0 ? mj : 0;
}

/* The kernel busy `pct`% of every period: GPU time of one launch (median over
 * the periods of the second half), the busy fraction it made and the power
 * it drew (the energy counter over those periods; else NVML's one-second
 * average at their end). */
static int paced_step(const struct cuda *c, const struct nvml *n, nvmlDevice_t h, struct burst *b, CUevent e0,
                      CUevent e1, uint32_t pct, double full_ns, struct step *out)
{
    uint32_t v[64];
    uint32_t k = 0;
    unsigned int per = (unsigned int)((double)CURVE_PERIOD_NS * pct / 100.0 / full_ns + 0.5);
    if (per == 0)
        per = 1;
    uint64_t t0 = mono_ns(), start = t0, t_half = 0;
    unsigned long long mj0 = 0;
    double busy_ns = 0;
    for (; start - t0 < CURVE_STEP_NS && k < 64; start += CURVE_PERIOD_NS) {
        float ms = 0;
        sleep_until_ns(start);
        int second = start - t0 >= CURVE_STEP_NS / 2;
        if (second && t_half == 0) {
            /* The clock read on both sides of the counter: a preempted read skews neither. */
            uint64_t a = mono_ns();
            mj0 = energy_mj(n, h);
            t_half = a + (mono_ns() - a) / 2;
        }
        if (c->event_record(e0, NULL) != CUDA_SUCCESS)
            return -EIO;
        for (unsigned int i = 0; i < per; i++)
            if (launch(c, b) != CUDA_SUCCESS)
                return -EIO;
        if (c->event_record(e1, NULL) != CUDA_SUCCESS || c->event_sync(e1) != CUDA_SUCCESS ||
            c->event_elapsed(&ms, e0, e1) != CUDA_SUCCESS)
            return -EIO;
        if (second) {
            v[k++] = (uint32_t)((double)ms * 1e6 / per);
            busy_ns += (double)ms * 1e6;
        }
    }
    sleep_until_ns(start); /* the last period's idle part belongs to the step */
    uint64_t a = mono_ns();
    unsigned long long mj1 = energy_mj(n, h);
    uint64_t t1 = a + (mono_ns() - a) / 2;
    if (k == 0 || t1 <= t_half)
        return -EIO;
    out->per_launch_ns = (double)median(v, k);
    out->duty = busy_ns / (double)(t1 - t_half);
    unsigned int mw = 0;
    if (mj0 != 0 && mj1 > mj0)
        out->power_mw = (uint32_t)((double)(mj1 - mj0) * 1e9 / (double)(t1 - t_half));
    else
        out->power_mw = n->power != NULL && n->power(h, &mw) == 0 ? mw : 0;
    return 0;
}

/* Power readings of two steps closer than this (per mille of the lower) are
 * one flat line: the energy counter and the clock disagree by about that much
 * on a loaded host, so a card drawing the same at every duty reads either way. */
#define FLAT_PM 20

/* The card's power between windows: the line through (duty, power) of the
 * 10% and 30% steps, where the card is below its power limit, taken at duty
 * 0; 0 when it cannot be told (no power reading, a slope that falls beyond
 * FLAT_PM, or a figure outside (0, limit)). */
static uint32_t gap_power(const struct step *lo, const struct step *hi, uint32_t limit_mw)
{
    if (lo->power_mw == 0 || hi->power_mw == 0 || hi->duty <= lo->duty + 0.05)
        return 0;
    if (hi->power_mw < lo->power_mw) {
        if ((uint64_t)(lo->power_mw - hi->power_mw) * 1000 > (uint64_t)lo->power_mw * FLAT_PM)
            return 0;
        /* Flat: the card draws the same between windows as in them. */
        return limit_mw != 0 && lo->power_mw >= limit_mw ? 0 : lo->power_mw;
    }
    double slope = ((double)hi->power_mw - (double)lo->power_mw) / (hi->duty - lo->duty);
    double gap = (double)lo->power_mw - slope * lo->duty;
    if (gap <= 0 || (limit_mw != 0 && gap >= limit_mw))
        return 0;
    return (uint32_t)(gap + 0.5);
}

/* speedup_pm and gap_power_mw: after the full-load burst, shorter launches
 * (~2 ms) at full load, then at 90, 70, 50, 30 and 10% of every 50 ms. */
static int measure_curve(const struct cuda *c, const struct nvml *n, nvmlDevice_t h, struct burst *b,
                         struct flexai_calibration *out)
{
    static const uint32_t duties[5] = {10, 30, 50, 70, 90};
    struct step steps[5] = {{0, 0, 0}};
    CUevent e0 = NULL, e1 = NULL;
    if (c->event_create(&e0, CU_EVENT_DEFAULT) != CUDA_SUCCESS ||
        c->event_create(&e1, CU_EVENT_DEFAULT) != CUDA_SUCCESS)
        return -EIO;
    unsigned int iters = b->iters;
    b->iters = iters / 5 > 0 ? iters / 5 : 1;
    double full = 0;
    int rc = full_load_per_launch(c, b, e0, e1, 800000000ull, &full);
    for (int i = 4; rc == 0 && i >= 0; i--) {
        rc = paced_step(c, n, h, b, e0, e1, duties[i], full, &steps[i]);
        if (rc == 0)
            out->speedup_pm[i] = steps[i].per_launch_ns > 0
                                     ? (uint32_t)(1000.0 * full / steps[i].per_launch_ns + 0.5)
                                     : 0;
    }
    if (rc == 0)
        out->gap_power_mw = gap_power(&steps[0], &steps[1], out->power_limit_mw);
    b->iters = iters;
    c->event_destroy(e0);
    c->event_destroy(e1);
    return rc;
}

/* Load the matrix kernel, else the fma one; allocate the output. */
static int prepare(const struct cuda *c, CUdevice dev, CUmodule *mod, struct burst *b, uint32_t *kernel)
{
    int sms = 0;
    if (c->attr(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != CUDA_SUCCESS || sms <= 0)
        sms = 1;
    b->blocks = (unsigned int)sms * BLOCKS_PER_SM;
    *kernel = FLEXAI_CALIBRATION_MMA;
    if (c->load(mod, k_mma_ptx) != CUDA_SUCCESS) {
        *kernel = FLEXAI_CALIBRATION_FMA;
        if (c->load(mod, k_fma_ptx) != CUDA_SUCCESS)
            return -EIO;
    }
    if (c->function(&b->fn, *mod, "flexai_burn") != CUDA_SUCCESS ||
        c->alloc(&b->out, (size_t)b->blocks * BLOCK * sizeof(float)) != CUDA_SUCCESS)
        return -EIO;
    for (uint64_t bytes = 1ull << 30; bytes >= (16ull << 20); bytes >>= 1)
        if (c->alloc(&b->buf, (size_t)bytes) == CUDA_SUCCESS) {
            b->mask = bytes / 16 - 1;
            return 0;
        }
    return -EIO;
}

/* Busy: NVML's utilisation above the bound in every one of 5 samples (one
 * high sample right after the card was touched is not a tenant), or a compute
 * process other than ours on it. */
static int card_busy(const struct nvml *n, nvmlDevice_t h, uint32_t max_busy_pct,
                     struct flexai_calibration *out)
{
    uint32_t low = UINT32_MAX;
    for (int i = 0; i < 5; i++) {
        nvml_util_t u = {0, 0};
        if (n->util(h, &u) == 0 && u.gpu < low)
            low = u.gpu;
        if (i < 4)
            sleep_ms(60);
    }
    out->busy_pct_before = low == UINT32_MAX ? 0 : low;
    if (n->procs != NULL) {
        struct {
            unsigned int pid;
            unsigned long long used;
            unsigned int gi, ci;
        } info[64];
        unsigned int count = 64;
        if (n->procs(h, &count, info) == 0)
            for (unsigned int i = 0; i < count && i < 64; i++)
                out->procs_before += info[i].pid != (unsigned int)getpid();
        else
            out->procs_before = 0; /* unknown: utilisation decides */
    }
    return (low != UINT32_MAX && low > max_busy_pct) || out->procs_before > 0;
}

FLEXAI_EXPORT int flexai_calibrate(const char *uuid, uint32_t burst_ms, uint32_t max_busy_pct,
                                   struct flexai_calibration *out, size_t out_size)
{
    if (uuid == NULL || out == NULL || burst_ms == 0 || burst_ms > 60000)
        return -EINVAL;
    if (out_size < sizeof *out)
        return -ENOSPC;
    memset(out, 0, sizeof *out);
    out->version = FLEXAI_API_VERSION;
    struct nvml n = {0};
    struct cuda c = {0};
    if (!load_nvml(&n) || !load_cuda(&c))
        return -ENOSYS;
    nvmlDevice_t h;
    if (n.init() != 0)
        return -ENOSYS;
    if (n.by_uuid(uuid, &h) != 0)
        return -ENODEV;
    unsigned int top = 0, limit = 0;
    if (n.max_clock(h, NVML_CLOCK_SM, &top) == 0)
        out->max_sm_clock_mhz = top;
    if (n.power_limit != NULL && n.power_limit(h, &limit) == 0)
        out->power_limit_mw = limit;
    if (card_busy(&n, h, max_busy_pct, out))
        return -EBUSY;
    unsigned int idle_mw = 0;
    if (n.power != NULL && n.power(h, &idle_mw) == 0)
        out->idle_power_mw = idle_mw;
    CUdevice dev;
    CUcontext ctx = NULL;
    if (c.init(0) != CUDA_SUCCESS)
        return -ENOSYS;
    int rc = find_device(&c, uuid, &dev);
    if (rc != 0)
        return rc;
    if (c.retain(&ctx, dev) != CUDA_SUCCESS || c.set_current(ctx) != CUDA_SUCCESS)
        return -EIO;
    CUmodule mod = NULL;
    struct burst b = {0};
    rc = prepare(&c, dev, &mod, &b, &out->kernel);
    if (rc == 0)
        rc = run_burst(&c, &n, h, &b, burst_ms, out);
    if (rc == 0)
        rc = measure_curve(&c, &n, h, &b, out);
    if (b.out != 0)
        c.free(b.out);
    if (b.buf != 0)
        c.free(b.buf);
    if (mod != NULL)
        c.unload(mod);
    c.set_current(NULL);
    c.release(dev);
    return rc;
}
