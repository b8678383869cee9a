/*
 * fake_cuda.c: a stand-in for libcuda.so.1 so the hook can be tested on a
 * machine without a GPU. Built as libcuda.so.1 in the build tree.
 *
 * What it models, and only that:
 *   - FAKECUDA_DEVICES physical devices (default 1) of FAKECUDA_MEM_MB MiB
 *     (default 16384), with stable UUIDs, renumbered by CUDA_VISIBLE_DEVICES
 *     (indices or UUIDs) like the real driver; NVIDIA_VISIBLE_DEVICES, when
 *     set and not "all", first narrows them to the cards it names, as the
 *     NVIDIA container runtime does by exposing only those cards' devices;
 *   - device memory accounted in host memory (no bytes are really allocated);
 *   - a "kernel" (fakecuda_kernel(us)) or "graph" (fakecuda_graph(us)) keeps
 *     its device busy for that long: launches on one device run one after
 *     another on a timeline, shared between processes when FAKECUDA_STATE
 *     names a file (so two processes contend like on a real card);
 *   - events complete when their stream's work is done; elapsed time between
 *     them is exact;
 *   - cuGetProcAddress(_v2) by name, version and per-thread flag, including a
 *     made-up future "cuMemAlloc" version 14000 that the hook must not wrap.
 * Built with -Bsymbolic so its own function addresses are its own, as in the
 * real driver, even when the hook's wrappers of the same names are preloaded.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <cudaTypedefs.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#undef cuDeviceGetUuid /* the fake defines both the old and the new names */
#undef cuGetProcAddress

#define API __attribute__((visibility("default")))
#define MAXDEV 16

struct timeline {
    _Atomic uint64_t busy_until[MAXDEV];
};
struct fctx {
    int dev;
};
struct fstream {
    _Atomic uint64_t last_end;
    int dev;
};
struct fevent {
    uint64_t ts;
    int recorded;
};
struct alloc {
    uint64_t key;
    uint64_t size;
    int dev;
    int kind;
    struct alloc *next;
};

static int g_ndev = 1, g_nvis, g_visible[MAXDEV];
static uint64_t g_total;
static _Atomic uint64_t g_used[MAXDEV];
static _Atomic uint64_t g_next_addr = 0x100000000ull;
static _Atomic uint64_t g_launches;
static _Atomic uint64_t g_busy_ns; /* kernel time queued, all devices (the fake NVML's energy) */
static struct timeline g_local_tl, *g_tl = &g_local_tl;
static struct fctx g_primary[MAXDEV];
static struct fstream g_default[MAXDEV];
static __thread struct fctx *t_ctx;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct alloc *g_allocs;
static int g_inited;
/* Tests flip this to pretend every stream is being captured into a graph:
 * launches then only record (no time passes on the fake card). */
static _Atomic int g_capturing;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    uint64_t n = now_ns();
    if (t <= n)
        return;
    struct timespec ts = {.tv_sec = (time_t)((t - n) / 1000000000ull),
                          .tv_nsec = (long)((t - n) % 1000000000ull)};
    nanosleep(&ts, NULL);
}

static void uuid_bytes(int phys, unsigned char out[16])
{
    for (int i = 0; i < 16; i++)
        out[i] = (unsigned char)(0xa0 + i);
    out[15] = (unsigned char)phys;
}

API void fakecuda_uuid_string(int phys, char *out, int len)
{
    unsigned char b[16];
    uuid_bytes(phys, b);
    snprintf(out, (size_t)len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

/* The physical devices a visible-devices list names (indices or UUIDs), in its
 * order, out of `from` (NULL: 0..n-1). Unset or "all": all of them; like CUDA,
 * the list stops at its first entry that names none. */
static int parse_visible(const char *list, const int *from, int n, int out[MAXDEV])
{
    int k = 0;
    if (list == NULL || strcmp(list, "all") == 0) {
        for (int i = 0; i < n; i++)
            out[k++] = from ? from[i] : i;
        return k;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save, *tok = strtok_r(buf, ",", &save); tok && k < MAXDEV; tok = strtok_r(NULL, ",", &save)) {
        int phys = -1;
        if (strncmp(tok, "GPU-", 4) == 0) {
            for (int i = 0; i < n; i++) {
                char u[64];
                fakecuda_uuid_string(from ? from[i] : i, u, sizeof u);
                if (strcasecmp(u, tok) == 0)
                    phys = from ? from[i] : i;
            }
        } else {
            char *end;
            long i = strtol(tok, &end, 10);
            if (*end == '\0' && end != tok && i >= 0 && i < n)
                phys = from ? from[i] : (int)i;
        }
        if (phys < 0)
            break;
        out[k++] = phys;
    }
    return k;
}

static int phys_of(CUdevice d)
{
    return (d >= 0 && d < g_nvis) ? g_visible[d] : -1;
}

API CUresult cuInit(unsigned int flags)
{
    (void)flags;
    pthread_mutex_lock(&g_lock);
    if (!g_inited) {
        const char *n = getenv("FAKECUDA_DEVICES");
        g_ndev = n ? atoi(n) : 1;
        if (g_ndev < 1 || g_ndev > MAXDEV)
            g_ndev = 1;
        const char *m = getenv("FAKECUDA_MEM_MB");
        g_total = (uint64_t)(m ? atoll(m) : 16384) << 20;
        int exposed[MAXDEV], nexp = parse_visible(getenv("NVIDIA_VISIBLE_DEVICES"), NULL, g_ndev, exposed);
        g_nvis = parse_visible(getenv("CUDA_VISIBLE_DEVICES"), exposed, nexp, g_visible);
        const char *state = getenv("FAKECUDA_STATE");
        if (state != NULL) {
            int fd = open(state, O_RDWR | O_CREAT, 0666);
            if (fd >= 0 && ftruncate(fd, sizeof(struct timeline)) == 0) {
                void *p = mmap(NULL, sizeof(struct timeline), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (p != MAP_FAILED)
                    g_tl = p;
            }
            if (fd >= 0)
                close(fd);
        }
        for (int i = 0; i < MAXDEV; i++) {
            g_primary[i].dev = i;
            g_default[i].dev = i;
        }
        g_inited = 1;
    }
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int *v)
{
    *v = 13000;
    return CUDA_SUCCESS;
}
/* Like the real driver, nothing about devices answers before cuInit. */
API CUresult cuDeviceGetCount(int *n)
{
    if (!g_inited)
        return CUDA_ERROR_NOT_INITIALIZED;
    *n = g_nvis;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice *d, int ordinal)
{
    if (!g_inited)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= g_nvis)
        return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char *name, int len, CUdevice d)
{
    snprintf(name, (size_t)len, "Fake GPU %d", phys_of(d));
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d)
{
    int p = phys_of(d);
    if (p < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    uuid_bytes(p, (unsigned char *)u->bytes);
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d)
{
    return cuDeviceGetUuid_v2(u, d);
}
API CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d)
{
    if (phys_of(d) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *b = g_total;
    return CUDA_SUCCESS;
}

/* ---- contexts ---- */
API CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d)
{
    if (phys_of(d) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *c = (CUcontext)&g_primary[d];
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
    (void)d;
    return CUDA_SUCCESS;
}
API CUresult cuCtxCreate_v4(CUcontext *c, CUctxCreateParams *p, unsigned int flags, CUdevice d)
{
    (void)p;
    (void)flags;
    if (phys_of(d) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    struct fctx *x = malloc(sizeof *x);
    x->dev = d;
    *c = (CUcontext)x;
    t_ctx = x;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetCurrent(CUcontext c)
{
    t_ctx = (struct fctx *)c;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetCurrent(CUcontext *c)
{
    *c = (CUcontext)t_ctx;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetDevice(CUdevice *d)
{
    if (t_ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *d = t_ctx->dev;
    return CUDA_SUCCESS;
}
static int cur_dev(void)
{
    return t_ctx ? t_ctx->dev : -1;
}

/* ---- memory ---- */
static CUresult fake_alloc(uint64_t *key, uint64_t size, int dev, int kind)
{
    int p = phys_of(dev);
    if (p < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t cur = atomic_load(&g_used[p]);
    do {
        if (cur + size > g_total)
            return CUDA_ERROR_OUT_OF_MEMORY;
    } while (!atomic_compare_exchange_weak(&g_used[p], &cur, cur + size));
    struct alloc *a = malloc(sizeof *a);
    a->key = atomic_fetch_add(&g_next_addr, (size + 4095) & ~4095ull) | 0;
    a->size = size;
    a->dev = p;
    a->kind = kind;
    pthread_mutex_lock(&g_lock);
    a->next = g_allocs;
    g_allocs = a;
    pthread_mutex_unlock(&g_lock);
    *key = a->key;
    return CUDA_SUCCESS;
}

static CUresult fake_free(uint64_t key, int kind)
{
    pthread_mutex_lock(&g_lock);
    for (struct alloc **pp = &g_allocs; *pp; pp = &(*pp)->next) {
        if ((*pp)->key == key && (*pp)->kind == kind) {
            struct alloc *a = *pp;
            *pp = a->next;
            pthread_mutex_unlock(&g_lock);
            atomic_fetch_sub(&g_used[a->dev], a->size);
            free(a);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n)
{
    uint64_t k;
    CUresult r = fake_alloc(&k, n, cur_dev(), 1);
    if (r == CUDA_SUCCESS)
        *p = (CUdeviceptr)k;
    return r;
}
/* A pretend future version of cuMemAlloc that only cuGetProcAddress knows. */
static CUresult future_cuMemAlloc_v3(CUdeviceptr *p, size_t n)
{
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int e)
{
    (void)e;
    *pitch = (w + 511) & ~(size_t)511;
    return cuMemAlloc_v2(p, *pitch * h);
}
API CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned int f)
{
    (void)f;
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s)
{
    (void)s;
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s)
{
    (void)s;
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)
{
    (void)pool;
    (void)s;
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s)
{
    return cuMemAllocFromPoolAsync(p, n, pool, s);
}
API CUresult cuMemFree_v2(CUdeviceptr p)
{
    return fake_free((uint64_t)p, 1);
}
API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s)
{
    (void)s;
    return fake_free((uint64_t)p, 1);
}
API CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s)
{
    (void)s;
    return fake_free((uint64_t)p, 1);
}
API CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop,
                         unsigned long long flags)
{
    (void)flags;
    uint64_t k;
    CUresult r = fake_alloc(&k, n, prop->location.id, 2);
    if (r == CUDA_SUCCESS)
        *h = k;
    return r;
}
API CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    return fake_free(h, 2);
}
static uint64_t fmt_bytes(CUarray_format f)
{
    return f == CU_AD_FORMAT_UNSIGNED_INT8 ? 1 : f == CU_AD_FORMAT_HALF ? 2 : 4;
}
API CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d)
{
    uint64_t k;
    CUresult r = fake_alloc(
        &k, d->Width * (d->Height ? d->Height : 1) * d->NumChannels * fmt_bytes(d->Format), cur_dev(), 3);
    if (r == CUDA_SUCCESS)
        *a = (CUarray)(uintptr_t)k;
    return r;
}
API CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    uint64_t k;
    CUresult r = fake_alloc(&k,
                            d->Width * (d->Height ? d->Height : 1) * (d->Depth ? d->Depth : 1) *
                                d->NumChannels * fmt_bytes(d->Format),
                            cur_dev(), 3);
    if (r == CUDA_SUCCESS)
        *a = (CUarray)(uintptr_t)k;
    return r;
}
API CUresult cuArrayDestroy(CUarray a)
{
    return fake_free((uint64_t)(uintptr_t)a, 3);
}
API CUresult cuMipmappedArrayCreate(CUmipmappedArray *a, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                    unsigned int levels)
{
    uint64_t k, bytes = 0, w = d->Width, h = d->Height ? d->Height : 1, z = d->Depth ? d->Depth : 1;
    for (unsigned int l = 0; l < levels; l++) {
        bytes += w * h * z * d->NumChannels * fmt_bytes(d->Format);
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : 1;
        z = z > 1 ? z / 2 : 1;
    }
    CUresult r = fake_alloc(&k, bytes, cur_dev(), 4);
    if (r == CUDA_SUCCESS)
        *a = (CUmipmappedArray)(uintptr_t)k;
    return r;
}
API CUresult cuMipmappedArrayDestroy(CUmipmappedArray a)
{
    return fake_free((uint64_t)(uintptr_t)a, 4);
}
API CUresult cuMemGetInfo_v2(size_t *f, size_t *t)
{
    int p = phys_of(cur_dev());
    if (p < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *t = g_total;
    *f = g_total - atomic_load(&g_used[p]);
    return CUDA_SUCCESS;
}

/* ---- streams, events, kernels ---- */
static struct fstream *stream_of(CUstream s)
{
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD)
        return &g_default[cur_dev() < 0 ? 0 : cur_dev()];
    return (struct fstream *)s;
}
API CUresult cuStreamCreate(CUstream *s, unsigned int f)
{
    (void)f;
    struct fstream *x = calloc(1, sizeof *x);
    x->dev = cur_dev();
    *s = (CUstream)x;
    return CUDA_SUCCESS;
}
API CUresult cuStreamDestroy_v2(CUstream s)
{
    free(s);
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize(CUstream s)
{
    sleep_until(atomic_load(&stream_of(s)->last_end));
    return CUDA_SUCCESS;
}
/* $FAKECUDA_STREAM_BUSY: streams always answer "not ready", as a real one
 * does while work outside the hooked launches (a library's memset) runs. */
API CUresult cuStreamQuery(CUstream s)
{
    static int busy = -1;
    if (busy < 0)
        busy = getenv("FAKECUDA_STREAM_BUSY") != NULL;
    if (busy)
        return CUDA_ERROR_NOT_READY;
    return now_ns() >= atomic_load(&stream_of(s)->last_end) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
API CUresult cuStreamQuery_ptsz(CUstream s)
{
    return cuStreamQuery(s);
}
API void fakecuda_set_capturing(int on)
{
    atomic_store(&g_capturing, on);
}
API CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st)
{
    (void)s;
    *st = atomic_load(&g_capturing) ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}
API CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st)
{
    return cuStreamIsCapturing(s, st);
}
API CUresult cuCtxSynchronize(void)
{
    for (int i = 0; i < MAXDEV; i++)
        sleep_until(atomic_load(&g_default[i].last_end));
    return CUDA_SUCCESS;
}

static void run_for(struct fstream *s, uint64_t dur)
{
    if (atomic_load(&g_capturing))
        return; /* captured, not run */
    int p = phys_of(s->dev);
    if (p < 0)
        p = 0;
    _Atomic uint64_t *busy = &g_tl->busy_until[p];
    uint64_t b = atomic_load(busy), start, end;
    do {
        start = now_ns();
        if (b > start)
            start = b;
        uint64_t le = atomic_load(&s->last_end);
        if (le > start)
            start = le;
        end = start + dur;
    } while (!atomic_compare_exchange_weak(busy, &b, end));
    atomic_store(&s->last_end, end);
    atomic_fetch_add(&g_launches, 1);
    atomic_fetch_add(&g_busy_ns, dur);
}

API CUfunction fakecuda_kernel(unsigned int us)
{
    return (CUfunction)(uintptr_t)(((uint64_t)us << 4) | 1);
}
API CUgraphExec fakecuda_graph(unsigned int us)
{
    return (CUgraphExec)(uintptr_t)(((uint64_t)us << 4) | 2);
}
API uint64_t fakecuda_used(int phys)
{
    return atomic_load(&g_used[phys]);
}
API uint64_t fakecuda_launches(void)
{
    return atomic_load(&g_launches);
}
API uint64_t fakecuda_busy_ns(void)
{
    return atomic_load(&g_busy_ns);
}
static uint64_t dur_of(const void *h)
{
    return ((uint64_t)(uintptr_t)h >> 4) * 1000ull;
}
/* Modules (the launch bench loads PTX): every function is a kernel of
 * $FAKECUDA_KERNEL_US microseconds (default 0). */
API CUresult cuModuleLoadData(CUmodule *m, const void *image)
{
    (void)image;
    *m = (CUmodule)(uintptr_t)0x10;
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(CUmodule m)
{
    (void)m;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d)
{
    if (phys_of(d) < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *v = a == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT ? 4 : 0;
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
    (void)m;
    (void)name;
    const char *us = getenv("FAKECUDA_KERNEL_US");
    *f = fakecuda_kernel(us != NULL ? (unsigned int)atoi(us) : 0);
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                            unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **pa,
                            void **ex)
{
    (void)gx;
    (void)gy;
    (void)gz;
    (void)bx;
    (void)by;
    (void)bz;
    (void)sh;
    (void)pa;
    (void)ex;
    run_for(stream_of(s), dur_of(f));
    return CUDA_SUCCESS;
}
API CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                 unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                 CUstream s, void **pa, void **ex)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sh, s, pa, ex);
}
API CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **pa, void **ex)
{
    (void)pa;
    (void)ex;
    run_for(stream_of(c->hStream), dur_of(f));
    return CUDA_SUCCESS;
}
API CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **pa, void **ex)
{
    return cuLaunchKernelEx(c, f, pa, ex);
}
API CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                       CUstream s, void **pa)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sh, s, pa, NULL);
}
API CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                            unsigned int bx, unsigned int by, unsigned int bz,
                                            unsigned int sh, CUstream s, void **pa)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sh, s, pa, NULL);
}
API CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    run_for(stream_of(s), dur_of(g));
    return CUDA_SUCCESS;
}
API CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s)
{
    return cuGraphLaunch(g, s);
}

API CUresult cuEventCreate(CUevent *e, unsigned int f)
{
    (void)f;
    *e = calloc(1, sizeof(struct fevent));
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(CUevent e)
{
    free(e);
    return CUDA_SUCCESS;
}
static _Atomic int g_records_in_capture;
API int fakecuda_records_in_capture(void)
{
    return atomic_load(&g_records_in_capture);
}
API CUresult cuEventRecord(CUevent e, CUstream s)
{
    if (atomic_load(&g_capturing))
        atomic_fetch_add(&g_records_in_capture, 1);
    struct fevent *x = (struct fevent *)e;
    uint64_t n = now_ns(), le = atomic_load(&stream_of(s)->last_end);
    x->ts = le > n ? le : n;
    x->recorded = 1;
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord_ptsz(CUevent e, CUstream s)
{
    return cuEventRecord(e, s);
}
API CUresult cuEventQuery(CUevent e)
{
    struct fevent *x = (struct fevent *)e;
    return (!x->recorded || now_ns() >= x->ts) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
API CUresult cuEventSynchronize(CUevent e)
{
    sleep_until(((struct fevent *)e)->ts);
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b)
{
    struct fevent *x = (struct fevent *)a, *y = (struct fevent *)b;
    if (!x->recorded || !y->recorded)
        return CUDA_ERROR_INVALID_HANDLE;
    if (now_ns() < x->ts || now_ns() < y->ts)
        return CUDA_ERROR_NOT_READY;
    *ms = (float)(((double)y->ts - (double)x->ts) / 1e6);
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress ---- */
struct entry {
    const char *base;
    int version;
    int ptsz;
    void *fn;
};
#define E(base, ver, ptsz, fn)      \
    {                               \
        base, ver, ptsz, (void *)fn \
    }
static const struct entry g_table[] = {
    E("cuInit", 2000, 0, cuInit),
    E("cuDriverGetVersion", 2020, 0, cuDriverGetVersion),
    E("cuDeviceGetCount", 2000, 0, cuDeviceGetCount),
    E("cuDeviceGet", 2000, 0, cuDeviceGet),
    E("cuDeviceGetName", 2000, 0, cuDeviceGetName),
    E("cuDeviceGetUuid", 11040, 0, cuDeviceGetUuid_v2),
    E("cuDeviceTotalMem", 3020, 0, cuDeviceTotalMem_v2),
    E("cuDevicePrimaryCtxRetain", 7000, 0, cuDevicePrimaryCtxRetain),
    E("cuCtxCreate", 12050, 0, cuCtxCreate_v4),
    E("cuCtxSetCurrent", 4000, 0, cuCtxSetCurrent),
    E("cuCtxGetCurrent", 4000, 0, cuCtxGetCurrent),
    E("cuCtxGetDevice", 2000, 0, cuCtxGetDevice),
    E("cuMemAlloc", 3020, 0, cuMemAlloc_v2),
    E("cuMemAlloc", 14000, 0, future_cuMemAlloc_v3),
    E("cuMemAllocPitch", 3020, 0, cuMemAllocPitch_v2),
    E("cuMemAllocManaged", 6000, 0, cuMemAllocManaged),
    E("cuMemAllocAsync", 11020, 0, cuMemAllocAsync),
    E("cuMemAllocAsync", 11020, 1, cuMemAllocAsync_ptsz),
    E("cuMemAllocFromPoolAsync", 11020, 0, cuMemAllocFromPoolAsync),
    E("cuMemAllocFromPoolAsync", 11020, 1, cuMemAllocFromPoolAsync_ptsz),
    E("cuMemFree", 3020, 0, cuMemFree_v2),
    E("cuMemFreeAsync", 11020, 0, cuMemFreeAsync),
    E("cuMemFreeAsync", 11020, 1, cuMemFreeAsync_ptsz),
    E("cuMemCreate", 10020, 0, cuMemCreate),
    E("cuMemRelease", 10020, 0, cuMemRelease),
    E("cuArrayCreate", 3020, 0, cuArrayCreate_v2),
    E("cuArray3DCreate", 3020, 0, cuArray3DCreate_v2),
    E("cuArrayDestroy", 2000, 0, cuArrayDestroy),
    E("cuMipmappedArrayCreate", 5000, 0, cuMipmappedArrayCreate),
    E("cuMipmappedArrayDestroy", 5000, 0, cuMipmappedArrayDestroy),
    E("cuMemGetInfo", 3020, 0, cuMemGetInfo_v2),
    E("cuLaunchKernel", 4000, 0, cuLaunchKernel),
    E("cuLaunchKernel", 7000, 1, cuLaunchKernel_ptsz),
    E("cuLaunchKernelEx", 11060, 0, cuLaunchKernelEx),
    E("cuLaunchKernelEx", 11060, 1, cuLaunchKernelEx_ptsz),
    E("cuLaunchCooperativeKernel", 9000, 0, cuLaunchCooperativeKernel),
    E("cuLaunchCooperativeKernel", 9000, 1, cuLaunchCooperativeKernel_ptsz),
    E("cuGraphLaunch", 10000, 0, cuGraphLaunch),
    E("cuGraphLaunch", 10000, 1, cuGraphLaunch_ptsz),
    E("cuStreamCreate", 2000, 0, cuStreamCreate),
    E("cuStreamSynchronize", 2000, 0, cuStreamSynchronize),
    E("cuEventCreate", 2000, 0, cuEventCreate),
    E("cuEventRecord", 2000, 0, cuEventRecord),
    E("cuEventQuery", 2000, 0, cuEventQuery),
    E("cuEventSynchronize", 2000, 0, cuEventSynchronize),
};

static CUresult lookup(const char *sym, void **pfn, int version, cuuint64_t flags)
{
    int want = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct entry *best = NULL;
    for (int pass = 0; pass < 2 && best == NULL; pass++, want = 0)
        for (size_t i = 0; i < sizeof g_table / sizeof g_table[0]; i++) {
            const struct entry *e = &g_table[i];
            if (strcmp(e->base, sym) == 0 && e->ptsz == want && e->version <= version &&
                (best == NULL || e->version > best->version))
                best = e;
        }
    if (best == NULL) {
        *pfn = NULL;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = best->fn;
    return CUDA_SUCCESS;
}

API CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int version, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *st)
{
    CUresult r = lookup(sym, pfn, version, flags);
    if (st)
        *st = r == CUDA_SUCCESS ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return r;
}
API CUresult cuGetProcAddress(const char *sym, void **pfn, int version, cuuint64_t flags)
{
    return lookup(sym, pfn, version, flags);
}
