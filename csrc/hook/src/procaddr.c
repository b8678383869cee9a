/*
 * procaddr.c: which hooked function a lookup means, and the real driver
 * function behind each hook. intercept.c's dlsym and cuGetProcAddress(_v2)
 * wrappers ask it, then hand out their own wrapper for the answer.
 *
 * - Direct calls reach the exported wrappers because the hook is preloaded.
 * - dlsym(handle_of_libcuda, "cuMemAlloc_v2") searches libcuda only, never a
 *   preloaded library: so the hook exports dlsym itself and, when the real
 *   dlsym finds a name we wrap, returns the wrapper (flexai_procaddr_by_name).
 * - cuGetProcAddress(_v2) (how the CUDA runtime gets nearly everything):
 *   the wrapper swaps the driver's answer (flexai_procaddr_find).
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
 *
 * Invariants: knows names and real pointers only, never the wrappers (so it
 * sits below intercept.c); the real pointers are resolved once.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hooks.h"

struct flexai_hook {
    const char *name; /* exported symbol */
    const char *base; /* name as cuGetProcAddress is asked for it */
    int version;
    int ptsz;
};

#define FLEXAI_ENTRY(name, pfn, base, ver, ptsz) {#name, base, ver, ptsz},
static const struct flexai_hook g_hooks[FLEXAI_HOOK_COUNT] = {FLEXAI_HOOKS(FLEXAI_ENTRY)};
#undef FLEXAI_ENTRY

static void *g_real[FLEXAI_HOOK_COUNT];
static pthread_once_t g_real_once = PTHREAD_ONCE_INIT;

static void resolve_real(void)
{
    for (int i = 0; i < FLEXAI_HOOK_COUNT; i++)
        g_real[i] = flexai_driver_sym(g_hooks[i].name);
}

void *flexai_procaddr_real(int id)
{
    pthread_once(&g_real_once, resolve_real);
    return g_real[id];
}

/* Wrappers are handed out when there are limits, and when the config is
 * unusable (so cuInit, however it is found, is the hook's and refuses). */
static int hand_out_wrappers(void)
{
    const struct flexai_config *c = flexai_config();
    return c->ndev > 0 || c->closed;
}

int flexai_procaddr_by_name(const char *name)
{
    if (!hand_out_wrappers())
        return -1;
    for (int i = 0; i < FLEXAI_HOOK_COUNT; i++)
        if (strcmp(g_hooks[i].name, name) == 0)
            return i;
    return -1;
}

/* How lookups were answered; printed at exit when $FLEXAI_DEBUG is set. */
static _Atomic unsigned g_by_pointer, g_by_name, g_passed;

static void report(void)
{
    flexai_log("cuGetProcAddress: %u wrapped by address, %u by name, %u passed through",
               atomic_load(&g_by_pointer), atomic_load(&g_by_name), atomic_load(&g_passed));
}

int flexai_procaddr_find(const char *symbol, void *pfn, int version, cuuint64_t flags)
{
    static _Atomic int reported;
    if (pfn == NULL || symbol == NULL || !hand_out_wrappers())
        return -1;
    if (!atomic_exchange(&reported, 1) && getenv("FLEXAI_DEBUG") != NULL)
        atexit(report);
    for (int i = 0; i < FLEXAI_HOOK_COUNT; i++) {
        if (flexai_procaddr_real(i) == pfn) {
            atomic_fetch_add(&g_by_pointer, 1);
            return i;
        }
    }
    atomic_fetch_add(&g_passed, 1); /* undone below if the name matches */
    if (version > CUDA_VERSION)
        return -1;
    int want_ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    for (int pass = 0; pass < 2; pass++) {
        int best = -1;
        for (int i = 0; i < FLEXAI_HOOK_COUNT; i++) {
            const struct flexai_hook *h = &g_hooks[i];
            if (h->ptsz == want_ptsz && version >= h->version && strcmp(h->base, symbol) == 0 &&
                (best < 0 || h->version > g_hooks[best].version))
                best = i;
        }
        if (best >= 0) {
            atomic_fetch_sub(&g_passed, 1);
            atomic_fetch_add(&g_by_name, 1);
            return best;
        }
        if (!want_ptsz)
            return -1;
        want_ptsz = 0; /* functions without a per-thread variant */
    }
    return -1;
}
