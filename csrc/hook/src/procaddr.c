/*
 * procaddr.c: make every way of finding a driver function find the hook's.
 *
 * - Direct calls reach our exported wrappers because the hook is preloaded.
 * - dlsym(handle_of_libcuda, "cuMemAlloc_v2") searches libcuda only, never a
 *   preloaded library: so we export dlsym itself and, when the real dlsym
 *   finds a name we wrap, return our wrapper instead.
 * - cuGetProcAddress(_v2) (how the CUDA runtime gets nearly everything) is
 *   wrapped in intercept.c, which calls flexai_procaddr_swap() on the answer.
 *
 * Rules of the swap, in order:
 *   1. the driver's answer IS the address of a real function we wrap (same
 *      pointer as dlsym gives): hand out that wrapper. This is exact for any
 *      version and per-thread-stream flag the driver resolved;
 *   2. else the name is one we wrap, the requested version is at least the
 *      wrapper's and at most the headers' CUDA_VERSION, and the stream flavour
 *      matches: hand out the newest such wrapper;
 *   3. anything else (unknown names, newer versions) passes through untouched.
 * With no config nothing is swapped: the program gets the real driver. With
 * an unusable one everything is, so every route to cuInit meets the refusal.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "hooks.h"
#include "internal.h"

/* Wrappers are handed out when there are limits, and when the config is
 * unusable (so cuInit, however it is found, is the hook's and refuses). */
static int hand_out_wrappers(void)
{
    const struct flexai_config *c = flexai_config();
    return c->ndev > 0 || c->closed;
}

void *flexai_hook_by_name(const char *name)
{
    if (!hand_out_wrappers())
        return NULL;
    for (int i = 0; i < FLEXAI_HOOK_COUNT; i++)
        if (strcmp(flexai_hooks[i].name, name) == 0)
            return flexai_hooks[i].fn;
    return NULL;
}

/* How lookups were answered; printed at exit when $FLEXAI_DEBUG is set. */
static _Atomic unsigned g_by_pointer, g_by_name, g_passed;

static void report(void)
{
    flexai_log("cuGetProcAddress: %u wrapped by address, %u by name, %u passed through",
               atomic_load(&g_by_pointer), atomic_load(&g_by_name), atomic_load(&g_passed));
}

void flexai_procaddr_swap(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    static _Atomic int reported;
    if (pfn == NULL || *pfn == NULL || symbol == NULL || !hand_out_wrappers())
        return;
    if (!atomic_exchange(&reported, 1) && getenv("FLEXAI_DEBUG") != NULL)
        atexit(report);
    for (int i = 0; i < FLEXAI_HOOK_COUNT; i++) {
        if (flexai_hook_real(i) == *pfn) {
            *pfn = flexai_hooks[i].fn;
            atomic_fetch_add(&g_by_pointer, 1);
            return;
        }
    }
    atomic_fetch_add(&g_passed, 1); /* undone below if the name matches */
    if (version > CUDA_VERSION)
        return;
    int want_ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    for (int pass = 0; pass < 2; pass++) {
        int best = -1;
        for (int i = 0; i < FLEXAI_HOOK_COUNT; i++) {
            const struct flexai_hook *h = &flexai_hooks[i];
            if (h->ptsz == want_ptsz && version >= h->version && strcmp(h->base, symbol) == 0 &&
                (best < 0 || h->version > flexai_hooks[best].version))
                best = i;
        }
        if (best >= 0) {
            *pfn = flexai_hooks[best].fn;
            atomic_fetch_sub(&g_passed, 1);
            atomic_fetch_add(&g_by_name, 1);
            return;
        }
        if (!want_ptsz)
            return;
        want_ptsz = 0; /* functions without a per-thread variant */
    }
}

/* Our dlsym. Limitation: dlsym(RTLD_NEXT, ...) from another library resolves
 * relative to this one (glibc offers no public way to forward the caller). */
FLEXAI_EXPORT void *dlsym(void *handle, const char *name)
{
    void *found = flexai_real_dlsym(handle, name);
    if (found == NULL) /* also covers name == NULL */
        return found;
    void *hook = NULL;
    if (name[0] == 'c' && name[1] == 'u')
        hook = flexai_hook_by_name(name);
    else if (strncmp(name, "nvml", 4) == 0)
        hook = flexai_nvml_hook_by_name(name);
    return hook != NULL ? hook : found;
}
