/*
 * devices.c: which vGPU slot of the config a CUDA device of this process is.
 *
 * The config names cards by UUID (stable whatever CUDA_VISIBLE_DEVICES does)
 * or, failing that, by the ordinal this process sees. Ordinals are resolved
 * once each (the driver's UUID query is not free) and cached in an atomic
 * array, so later lookups are one load.
 * Invariant: a cached answer never changes during the life of the process
 * (a fork child keeps it: it sees the same devices under the same names).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define MAX_ORDINALS 64

static _Atomic int g_map[MAX_ORDINALS]; /* slot + 2; 0 = not resolved yet */

static void format_uuid(const CUuuid *u, char *out, size_t n)
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int flexai_slot_of_uuid(const char *uuid)
{
    const struct flexai_config *c = flexai_config();
    for (int i = 0; i < c->ndev; i++)
        if (c->dev[i].uuid[0] != '\0' && strcasecmp(c->dev[i].uuid, uuid) == 0)
            return i;
    return -1;
}

static int resolve(CUdevice dev)
{
    const struct flexai_config *c = flexai_config();
    const struct flexai_driver *d = flexai_driver();
    CUuuid u;
    if (d->device_get_uuid != NULL && d->device_get_uuid(&u, dev) == CUDA_SUCCESS) {
        char s[FLEXAI_UUID_LEN];
        format_uuid(&u, s, sizeof s);
        int slot = flexai_slot_of_uuid(s);
        if (slot >= 0)
            return slot;
    }
    for (int i = 0; i < c->ndev; i++)
        if (c->dev[i].uuid[0] == '\0' && c->dev[i].cuda_index == (int)dev)
            return i;
    return -1;
}

int flexai_slot_of_device(CUdevice dev)
{
    if (flexai_config()->ndev == 0 || dev < 0)
        return -1;
    if (dev >= MAX_ORDINALS)
        return resolve(dev);
    int v = atomic_load_explicit(&g_map[dev], memory_order_acquire);
    if (FLEXAI_LIKELY(v != 0))
        return v - 2;
    int slot = resolve(dev);
    atomic_store_explicit(&g_map[dev], slot + 2, memory_order_release);
    return slot;
}

int flexai_slot_of_current(void)
{
    const struct flexai_driver *d = flexai_driver();
    CUdevice dev;
    CUresult r = d->ctx_get_device != NULL ? d->ctx_get_device(&dev) : CUDA_ERROR_NOT_SUPPORTED;
    if (r != CUDA_SUCCESS) {
        flexai_driver_note_error("cuCtxGetDevice", r);
        return -1;
    }
    return flexai_slot_of_device(dev);
}
