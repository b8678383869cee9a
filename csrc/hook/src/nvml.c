/*
 * nvml.c: NVML's memory getters show the slice, so nvidia-smi and pynvml in
 * the container print the vGPU's quota and usage, not the whole card.
 *
 * Also the card's top SM clock and its utilisation, for the compute pacer's
 * throughput normalisation (speedup.c), read by the pacer thread only.
 *
 * NVML has no PFN typedef header in the CUDA runtime wheel; the structs and
 * signatures below follow NVML's public documentation (nvml.h, unchanged
 * since NVML 11 for these). Real functions come from the real
 * libnvidia-ml.so.1 ($FLEXAI_REAL_LIBNVML overrides the name).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct nvmlDevice_st *nvmlDevice_t;
typedef int nvmlReturn_t; /* NVML_SUCCESS = 0 */
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef nvmlReturn_t (*mem_fn)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*mem_v2_fn)(nvmlDevice_t, nvmlMemory_v2_t *);
typedef nvmlReturn_t (*uuid_fn)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*init_fn)(void);
typedef nvmlReturn_t (*by_uuid_fn)(const char *, nvmlDevice_t *);
typedef nvmlReturn_t (*clock_fn)(nvmlDevice_t, int, unsigned int *);
typedef struct {
    unsigned int gpu, memory; /* percent of the last sample period with a kernel / memory busy */
} nvmlUtilization_t;
typedef nvmlReturn_t (*util_fn)(nvmlDevice_t, nvmlUtilization_t *);
typedef nvmlReturn_t (*power_fn)(nvmlDevice_t, unsigned int *);
#define NVML_CLOCK_SM 1

static struct {
    mem_fn mem;
    mem_v2_fn mem_v2;
    uuid_fn uuid;
    init_fn init;
    by_uuid_fn by_uuid;
    clock_fn max_clock;
    util_fn util;
    power_fn power, power_limit;
} g_nvml;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void resolve(void)
{
    const char *name = getenv("FLEXAI_REAL_LIBNVML");
    if (name == NULL || *name == '\0')
        name = "libnvidia-ml.so.1";
    void *lib = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
    if (lib == NULL)
        return;
    g_nvml.mem = (mem_fn)flexai_real_dlsym(lib, "nvmlDeviceGetMemoryInfo");
    g_nvml.mem_v2 = (mem_v2_fn)flexai_real_dlsym(lib, "nvmlDeviceGetMemoryInfo_v2");
    g_nvml.uuid = (uuid_fn)flexai_real_dlsym(lib, "nvmlDeviceGetUUID");
    g_nvml.init = (init_fn)flexai_real_dlsym(lib, "nvmlInit_v2");
    g_nvml.by_uuid = (by_uuid_fn)flexai_real_dlsym(lib, "nvmlDeviceGetHandleByUUID");
    g_nvml.max_clock = (clock_fn)flexai_real_dlsym(lib, "nvmlDeviceGetMaxClockInfo");
    g_nvml.util = (util_fn)flexai_real_dlsym(lib, "nvmlDeviceGetUtilizationRates");
    g_nvml.power = (power_fn)flexai_real_dlsym(lib, "nvmlDeviceGetPowerUsage");
    g_nvml.power_limit = (power_fn)flexai_real_dlsym(lib, "nvmlDeviceGetEnforcedPowerLimit");
}

/* The NVML handle of a vGPU's card (pacer thread only: no race), NULL if none. */
static nvmlDevice_t handle_of(int slot)
{
    static nvmlDevice_t handles[FLEXAI_MAX_DEVICES];
    static int tried[FLEXAI_MAX_DEVICES];
    pthread_once(&g_once, resolve);
    if (slot < 0 || slot >= FLEXAI_MAX_DEVICES)
        return NULL;
    if (!tried[slot]) {
        tried[slot] = 1;
        const char *uuid = flexai_config()->dev[slot].uuid;
        if (uuid[0] == '\0' || g_nvml.init == NULL || g_nvml.by_uuid == NULL || g_nvml.init() != 0 ||
            g_nvml.by_uuid(uuid, &handles[slot]) != 0)
            flexai_log("throughput normalisation needs NVML and the vGPU's uuid; none");
    }
    return handles[slot];
}

uint32_t flexai_nvml_max_sm_clock(int slot)
{
    nvmlDevice_t h = handle_of(slot);
    unsigned int mhz = 0;
    if (h == NULL || g_nvml.max_clock == NULL || g_nvml.max_clock(h, NVML_CLOCK_SM, &mhz) != 0)
        return 0;
    return mhz;
}

int flexai_nvml_card_busy_pct(int slot)
{
    nvmlDevice_t h = handle_of(slot);
    nvmlUtilization_t u = {0, 0};
    if (h == NULL || g_nvml.util == NULL || g_nvml.util(h, &u) != 0)
        return -1;
    return u.gpu > 100 ? 100 : (int)u.gpu;
}

uint32_t flexai_nvml_power_mw(int slot, int limit)
{
    nvmlDevice_t h = handle_of(slot);
    power_fn f = limit ? g_nvml.power_limit : g_nvml.power;
    unsigned int mw = 0;
    if (h == NULL || f == NULL || f(h, &mw) != 0)
        return 0;
    return mw;
}

/* Slot of an NVML device, by its UUID; -1 if not a limited vGPU. */
static int slot_of(nvmlDevice_t dev)
{
    char uuid[96];
    if (g_nvml.uuid == NULL || g_nvml.uuid(dev, uuid, sizeof uuid) != 0)
        return -1;
    int slot = flexai_slot_of_uuid(uuid);
    return (slot >= 0 && flexai_config()->dev[slot].memory_bytes > 0) ? slot : -1;
}

/* total = quota, used = what the container's processes hold, free = the rest. */
static void virtualise(int slot, unsigned long long *total, unsigned long long *free_b,
                       unsigned long long *used)
{
    uint64_t limit = flexai_config()->dev[slot].memory_bytes;
    if (limit < *total)
        *total = limit;
    *used = flexai_region_used(slot);
    *free_b = *total > *used ? *total - *used : 0;
}

FLEXAI_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m)
{
    pthread_once(&g_once, resolve);
    if (g_nvml.mem == NULL)
        return 999; /* NVML_ERROR_UNKNOWN */
    nvmlReturn_t r = g_nvml.mem(dev, m);
    int slot;
    if (r == 0 && m != NULL && (slot = slot_of(dev)) >= 0)
        virtualise(slot, &m->total, &m->free, &m->used);
    return r;
}

FLEXAI_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m)
{
    pthread_once(&g_once, resolve);
    if (g_nvml.mem_v2 == NULL)
        return 999;
    nvmlReturn_t r = g_nvml.mem_v2(dev, m);
    int slot;
    if (r == 0 && m != NULL && (slot = slot_of(dev)) >= 0) {
        virtualise(slot, &m->total, &m->free, &m->used);
        m->reserved = 0;
    }
    return r;
}

void *flexai_nvml_hook_by_name(const char *name)
{
    if (flexai_config()->ndev == 0)
        return NULL;
    if (strcmp(name, "nvmlDeviceGetMemoryInfo") == 0)
        return (void *)nvmlDeviceGetMemoryInfo;
    if (strcmp(name, "nvmlDeviceGetMemoryInfo_v2") == 0)
        return (void *)nvmlDeviceGetMemoryInfo_v2;
    return NULL;
}
