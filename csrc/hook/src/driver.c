/*
 * driver.c: find the real driver. The hook never calls a cu* function by
 * name (that would find its own wrapper); it calls pointers obtained here
 * with the real dlsym on the real libcuda.
 *
 * Invariants: resolution happens once (pthread_once or an idempotent
 * pointer store); after that every lookup is a plain load.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

typedef void *(*dlsym_fn)(void *, const char *);

void *flexai_real_dlsym(void *handle, const char *name)
{
    static dlsym_fn real;
    dlsym_fn f = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (FLEXAI_UNLIKELY(f == NULL)) {
        /* glibc >= 2.34 has dlsym in libc under GLIBC_2.34; older ones only
         * under GLIBC_2.2.5. Either way this skips our own dlsym. */
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (f == NULL)
            f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
        if (f == NULL)
            return NULL;
        __atomic_store_n(&real, f, __ATOMIC_RELEASE);
    }
    return f(handle, name);
}

static void *g_libcuda;
static pthread_once_t g_lib_once = PTHREAD_ONCE_INIT;

static void open_libcuda(void)
{
    const char *name = getenv("FLEXAI_REAL_LIBCUDA");
    if (name == NULL || *name == '\0')
        name = "libcuda.so.1";
    g_libcuda = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
    if (g_libcuda == NULL)
        flexai_log("cannot open the CUDA driver %s: %s", name, dlerror());
}

void *flexai_libcuda(void)
{
    pthread_once(&g_lib_once, open_libcuda);
    return g_libcuda;
}

void *flexai_driver_sym(const char *name)
{
    void *lib = flexai_libcuda();
    return lib != NULL ? flexai_real_dlsym(lib, name) : NULL;
}

static struct flexai_driver g_drv;
static pthread_once_t g_drv_once = PTHREAD_ONCE_INIT;

static void *first_of(const char *a, const char *b)
{
    void *p = flexai_driver_sym(a);
    return p != NULL ? p : flexai_driver_sym(b);
}

static void resolve(void)
{
    g_drv.ctx_get_current = (PFN_cuCtxGetCurrent_v4000)flexai_driver_sym("cuCtxGetCurrent");
    g_drv.ctx_get_device = (PFN_cuCtxGetDevice_v2000)flexai_driver_sym("cuCtxGetDevice");
    g_drv.device_get_count = (PFN_cuDeviceGetCount_v2000)flexai_driver_sym("cuDeviceGetCount");
    g_drv.device_get_uuid = (PFN_cuDeviceGetUuid_v11040)first_of("cuDeviceGetUuid_v2", "cuDeviceGetUuid");
    g_drv.mem_get_info = (PFN_cuMemGetInfo_v3020)flexai_driver_sym("cuMemGetInfo_v2");
    g_drv.device_total_mem = (PFN_cuDeviceTotalMem_v3020)flexai_driver_sym("cuDeviceTotalMem_v2");
    g_drv.event_create = (PFN_cuEventCreate_v2000)flexai_driver_sym("cuEventCreate");
    g_drv.event_record = (PFN_cuEventRecord_v2000)flexai_driver_sym("cuEventRecord");
    g_drv.event_record_ptsz = (PFN_cuEventRecord_v7000_ptsz)first_of("cuEventRecord_ptsz", "cuEventRecord");
    g_drv.event_query = (PFN_cuEventQuery_v2000)flexai_driver_sym("cuEventQuery");
    g_drv.event_synchronize = (PFN_cuEventSynchronize_v2000)flexai_driver_sym("cuEventSynchronize");
    g_drv.event_elapsed = (PFN_cuEventElapsedTime_v2000)first_of("cuEventElapsedTime_v2",
                                                                 "cuEventElapsedTime");
    g_drv.event_destroy = (PFN_cuEventDestroy_v4000)first_of("cuEventDestroy_v2", "cuEventDestroy");
    g_drv.stream_is_capturing = (PFN_cuStreamIsCapturing_v10000)flexai_driver_sym("cuStreamIsCapturing");
    g_drv.stream_query = (PFN_cuStreamQuery_v2000)flexai_driver_sym("cuStreamQuery");
    g_drv.stream_query_ptsz = (PFN_cuStreamQuery_v7000_ptsz)first_of("cuStreamQuery_ptsz", "cuStreamQuery");
    g_drv.stream_is_capturing_ptsz = (PFN_cuStreamIsCapturing_v10000_ptsz)first_of("cuStreamIsCapturing_ptsz",
                                                                                   "cuStreamIsCapturing");
}

const struct flexai_driver *flexai_driver(void)
{
    pthread_once(&g_drv_once, resolve);
    return &g_drv;
}

/* With $FLEXAI_DEBUG: the first failures of the driver calls the hook makes
 * itself, and of launches, on stderr (a capture that a call of ours would
 * invalidate shows here first). Only ever called after a failure. */
void flexai_driver_note_error(const char *what, CUresult r)
{
    static _Atomic int debug = -1, told;
    int on = atomic_load(&debug);
    if (on < 0) {
        on = getenv("FLEXAI_DEBUG") != NULL;
        atomic_store(&debug, on);
    }
    if (on && atomic_fetch_add(&told, 1) < 8)
        flexai_log("%s returned CUDA error %d", what, (int)r);
}
