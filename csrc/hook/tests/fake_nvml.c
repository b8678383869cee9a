/*
 * fake_nvml.c: a stand-in for libnvidia-ml.so.1 (tests only): FAKECUDA_DEVICES
 * devices of FAKECUDA_MEM_MB MiB with the same UUIDs as fake_cuda.c, each
 * reporting 1 GiB used. Enough for the hook's NVML memory getters.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API __attribute__((visibility("default")))

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

static unsigned long long total(void)
{
    const char *m = getenv("FAKECUDA_MEM_MB");
    return (unsigned long long)(m ? atoll(m) : 16384) << 20;
}
static int ndev(void)
{
    const char *n = getenv("FAKECUDA_DEVICES");
    return n ? atoi(n) : 1;
}

API int nvmlInit_v2(void)
{
    return 0;
}
API int nvmlInitWithFlags(unsigned int f)
{
    (void)f;
    return 0;
}
API int nvmlShutdown(void)
{
    return 0;
}
API int nvmlDeviceGetCount_v2(unsigned int *n)
{
    *n = (unsigned int)ndev();
    return 0;
}
API int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **dev)
{
    if ((int)i >= ndev())
        return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *dev = (void *)(uintptr_t)(i + 1);
    return 0;
}
API int nvmlDeviceGetUUID(void *dev, char *out, unsigned int len)
{
    int phys = (int)(uintptr_t)dev - 1;
    unsigned char b[16];
    for (int i = 0; i < 16; i++)
        b[i] = (unsigned char)(0xa0 + i);
    b[15] = (unsigned char)phys;
    snprintf(out, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return 0;
}
API int nvmlDeviceGetMemoryInfo(void *dev, nvmlMemory_t *m)
{
    (void)dev;
    m->total = total();
    m->used = 1ull << 30;
    m->free = m->total - m->used;
    return 0;
}
API int nvmlDeviceGetMemoryInfo_v2(void *dev, nvmlMemory_v2_t *m)
{
    (void)dev;
    m->total = total();
    m->reserved = 0;
    m->used = 1ull << 30;
    m->free = m->total - m->used;
    return 0;
}

/* For ref_clock_mhz: the top SM clock (FAKECUDA_SM_MAX_CLOCK MHz) and the
 * card's utilisation (FAKECUDA_UTIL percent); "not supported" when unset. */
API int nvmlDeviceGetHandleByUUID(const char *uuid, void **dev)
{
    for (int i = 0; i < ndev(); i++) {
        char mine[96];
        nvmlDeviceGetUUID((void *)(uintptr_t)(i + 1), mine, sizeof mine);
        if (strcmp(mine, uuid) == 0) {
            *dev = (void *)(uintptr_t)(i + 1);
            return 0;
        }
    }
    return 6; /* NVML_ERROR_NOT_FOUND */
}
API int nvmlDeviceGetMaxClockInfo(void *dev, int type, unsigned int *mhz)
{
    (void)dev;
    const char *c = getenv("FAKECUDA_SM_MAX_CLOCK");
    if (c == NULL || type != 1 /* NVML_CLOCK_SM */)
        return 3; /* NVML_ERROR_NOT_SUPPORTED */
    *mhz = (unsigned int)atoi(c);
    return 0;
}
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;
API int nvmlDeviceGetUtilizationRates(void *dev, nvmlUtilization_t *u)
{
    (void)dev;
    const char *c = getenv("FAKECUDA_UTIL");
    if (c == NULL)
        return 3;
    u->gpu = (unsigned int)atoi(c);
    u->memory = 0;
    return 0;
}

/* For calibration: the current SM clock (FAKECUDA_SM_CLOCK MHz), compute
 * processes on the card (FAKECUDA_PROCS), power draw and limit
 * (FAKECUDA_POWER_MW, FAKECUDA_POWER_LIMIT_MW); "not supported" when unset. */
static int env_value(const char *name, unsigned int *out)
{
    const char *c = getenv(name);
    if (c == NULL)
        return 3;
    *out = (unsigned int)atoi(c);
    return 0;
}
/* With FAKECUDA_SM_CLOCK_BOOST=MHz,MS: the clock reads MHz for the first MS
 * ms after the first read (a card at its top clock until the power
 * controller reacts), FAKECUDA_SM_CLOCK after. */
API int nvmlDeviceGetClockInfo(void *dev, int type, unsigned int *mhz)
{
    (void)dev;
    static struct timespec first;
    const char *boost = getenv("FAKECUDA_SM_CLOCK_BOOST");
    if (type != 1)
        return 3;
    if (boost != NULL) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (first.tv_sec == 0 && first.tv_nsec == 0)
            first = now;
        double ms = (double)(now.tv_sec - first.tv_sec) * 1e3 + (double)(now.tv_nsec - first.tv_nsec) / 1e6;
        unsigned int b_mhz = 0, b_ms = 0;
        if (sscanf(boost, "%u,%u", &b_mhz, &b_ms) == 2 && ms < b_ms) {
            *mhz = b_mhz;
            return 0;
        }
    }
    return env_value("FAKECUDA_SM_CLOCK", mhz);
}
typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
} proc_info_t;
API int nvmlDeviceGetComputeRunningProcesses_v3(void *dev, unsigned int *count, void *infos)
{
    (void)dev;
    unsigned int n = 0;
    env_value("FAKECUDA_PROCS", &n);
    if (n > *count) {
        *count = n;
        return 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    }
    for (unsigned int i = 0; i < n; i++)
        ((proc_info_t *)infos)[i] = (proc_info_t){.pid = 4242 + i, .used = 1u << 30};
    *count = n;
    return 0;
}
API int nvmlDeviceGetPowerUsage(void *dev, unsigned int *mw)
{
    (void)dev;
    return env_value("FAKECUDA_POWER_MW", mw);
}
/* The energy counter (mJ): FAKECUDA_GAP_POWER_MW while idle and
 * FAKECUDA_BUSY_POWER_MW while fake kernels run (fake_cuda's busy total), or
 * FAKECUDA_POWER_MW all the time; "not supported" when none is set. */
API int nvmlDeviceGetTotalEnergyConsumption(void *dev, unsigned long long *mj)
{
    (void)dev;
    static struct timespec first;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (first.tv_sec == 0 && first.tv_nsec == 0)
        first = now;
    double s = (double)(now.tv_sec - first.tv_sec) + (double)(now.tv_nsec - first.tv_nsec) / 1e9;
    unsigned int gap = 0, busy = 0, flat = 0;
    if (env_value("FAKECUDA_GAP_POWER_MW", &gap) == 0 && env_value("FAKECUDA_BUSY_POWER_MW", &busy) == 0) {
        uint64_t (*busy_ns)(void) = (uint64_t(*)(void))dlsym(RTLD_DEFAULT, "fakecuda_busy_ns");
        if (busy_ns == NULL)
            return 3;
        *mj = 1000000ull + (unsigned long long)(gap * s + ((double)busy - gap) * (double)busy_ns() / 1e9);
        return 0;
    }
    if (env_value("FAKECUDA_POWER_MW", &flat) != 0)
        return 3;
    *mj = 1000000ull + (unsigned long long)(flat * s);
    return 0;
}
API int nvmlDeviceGetEnforcedPowerLimit(void *dev, unsigned int *mw)
{
    (void)dev;
    return env_value("FAKECUDA_POWER_LIMIT_MW", mw);
}
