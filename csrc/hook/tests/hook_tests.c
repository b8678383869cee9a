/*
 * hook_tests.c: C tests of the hook against the fake driver. One binary,
 * one CTest test per case: `hook_tests <case>`. Each case writes its own
 * config into a fresh temp dir and points FLEXAI_VGPU_CONFIG at it before
 * the first CUDA call (the hook reads its config lazily, once).
 * Run with LD_PRELOAD=libflexai_hook.so (CTest does that).
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flexai_hook.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* fake driver helpers */
CUfunction fakecuda_kernel(unsigned int us);
CUgraphExec fakecuda_graph(unsigned int us);
uint64_t fakecuda_used(int phys);
void fakecuda_set_capturing(int on);
int fakecuda_records_in_capture(void);
void fakecuda_uuid_string(int phys, char *out, int len);
uint64_t fakecuda_launches(void);
/* shim API (the hook library exports nothing of it; tests link the shim) */

static int g_fail;
static char g_dir[256], g_cfg[300], g_region[300];
static const char *g_self;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
            g_fail = 1;                                                     \
        }                                                                   \
    } while (0)
#define CHECK_OK(call) CHECK((call) == CUDA_SUCCESS, "%s", #call)

static void tmpdir(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/flexai-hook-test-XXXXXX");
    if (mkdtemp(g_dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    snprintf(g_cfg, sizeof g_cfg, "%s/vgpu.conf", g_dir);
    snprintf(g_region, sizeof g_region, "%s/region", g_dir);
}

/* Write a config: "region=<dir>/region" is prepended; body lines follow. */
static void config(const char *fmt, ...)
{
    if (g_dir[0] == '\0')
        tmpdir();
    FILE *f = fopen(g_cfg, "w");
    fprintf(f, "version=1\nregion=%s\n", g_region);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
    setenv("FLEXAI_VGPU_CONFIG", g_cfg, 1);
}

static CUcontext open_ctx(int ordinal)
{
    CUdevice d;
    CUcontext c = NULL;
    CHECK_OK(cuInit(0));
    CHECK_OK(cuDeviceGet(&d, ordinal));
    CHECK_OK(cuDevicePrimaryCtxRetain(&c, d));
    CHECK_OK(cuCtxSetCurrent(c));
    return c;
}

static uint64_t region_used(int slot)
{
    static struct flexai_snapshot s;
    int r = flexai_region_snapshot(g_region, &s, sizeof s);
    CHECK(r == 0, "snapshot: %d", r);
    return s.devices[slot].memory_used;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run this binary again as `hook_tests <args>` and return its exit code. */
static int run_self(const char *arg1, const char *arg2)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl(g_self, g_self, arg1, arg2, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- memory --------------------------------------------------------------- */

typedef CUresult (*alloc_fn)(uint64_t *key, size_t bytes);
typedef CUresult (*free_fn)(uint64_t key);

static CUresult a_plain(uint64_t *k, size_t n)
{
    return cuMemAlloc((CUdeviceptr *)k, n);
}
static CUresult a_pitch(uint64_t *k, size_t n)
{
    size_t pitch;
    return cuMemAllocPitch((CUdeviceptr *)k, &pitch, 1024 * 1024, n / (1024 * 1024), 4);
}
static CUresult a_managed(uint64_t *k, size_t n)
{
    return cuMemAllocManaged((CUdeviceptr *)k, n, CU_MEM_ATTACH_GLOBAL);
}
static CUresult a_async(uint64_t *k, size_t n)
{
    return cuMemAllocAsync((CUdeviceptr *)k, n, NULL);
}
static CUresult a_pool(uint64_t *k, size_t n)
{
    return cuMemAllocFromPoolAsync((CUdeviceptr *)k, n, NULL, NULL);
}
static CUresult a_create(uint64_t *k, size_t n)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = 0;
    return cuMemCreate((CUmemGenericAllocationHandle *)k, n, &p, 0);
}
static CUresult a_array(uint64_t *k, size_t n)
{
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 1024 * 1024,
                               .Height = n / (4 * 1024 * 1024),
                               .Format = CU_AD_FORMAT_FLOAT,
                               .NumChannels = 1};
    return cuArrayCreate((CUarray *)k, &d);
}
static CUresult a_array3d(uint64_t *k, size_t n)
{
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 1024,
                                 .Height = 1024,
                                 .Depth = n / (4 * 1024 * 1024),
                                 .Format = CU_AD_FORMAT_FLOAT,
                                 .NumChannels = 1};
    return cuArray3DCreate((CUarray *)k, &d);
}
static CUresult a_mipmap(uint64_t *k, size_t n)
{
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 1024,
                                 .Height = 1024,
                                 .Depth = n / (4 * 1024 * 1024),
                                 .Format = CU_AD_FORMAT_FLOAT,
                                 .NumChannels = 1};
    return cuMipmappedArrayCreate((CUmipmappedArray *)k, &d, 1);
}
static CUresult f_ptr(uint64_t k)
{
    return cuMemFree((CUdeviceptr)k);
}
static CUresult f_async(uint64_t k)
{
    return cuMemFreeAsync((CUdeviceptr)k, NULL);
}
static CUresult f_handle(uint64_t k)
{
    return cuMemRelease(k);
}
static CUresult f_array(uint64_t k)
{
    return cuArrayDestroy((CUarray)(uintptr_t)k);
}
static CUresult f_mipmap(uint64_t k)
{
    return cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)k);
}

static const struct {
    const char *name;
    alloc_fn a;
    free_fn f;
} k_paths[] = {
    {"cuMemAlloc_v2", a_plain, f_ptr},
    {"cuMemAllocPitch_v2", a_pitch, f_ptr},
    {"cuMemAllocManaged", a_managed, f_ptr},
    {"cuMemAllocAsync", a_async, f_async},
    {"cuMemAllocFromPoolAsync", a_pool, f_async},
    {"cuMemCreate", a_create, f_handle},
    {"cuArrayCreate_v2", a_array, f_array},
    {"cuArray3DCreate_v2", a_array3d, f_array},
    {"cuMipmappedArrayCreate", a_mipmap, f_mipmap},
};

/* Every allocation path: 600 MiB fits in 1 GiB, a second does not, a free
 * makes room again, and the region counts exactly. */
static void t_alloc_paths(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    open_ctx(0);
    for (size_t i = 0; i < sizeof k_paths / sizeof k_paths[0]; i++) {
        uint64_t a = 0, b = 0;
        CHECK(k_paths[i].a(&a, 600 * MiB) == CUDA_SUCCESS, "%s first", k_paths[i].name);
        CHECK(region_used(0) == 600 * MiB, "%s used %llu", k_paths[i].name,
              (unsigned long long)region_used(0));
        CHECK(k_paths[i].a(&b, 600 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "%s second must fail",
              k_paths[i].name);
        CHECK(fakecuda_used(0) == 600 * MiB, "%s: the failed call must not reach the driver",
              k_paths[i].name);
        /* the refusal swept the region: our own (live) slot must have survived it */
        CHECK(region_used(0) == 600 * MiB, "%s used after refusal %llu", k_paths[i].name,
              (unsigned long long)region_used(0));
        CHECK_OK(k_paths[i].f(a));
        CHECK(region_used(0) == 0, "%s after free %llu", k_paths[i].name, (unsigned long long)region_used(0));
        CHECK(k_paths[i].a(&b, 600 * MiB) == CUDA_SUCCESS, "%s after free", k_paths[i].name);
        CHECK_OK(k_paths[i].f(b));
    }
    CHECK(region_used(0) == 0, "end");
}

/* cuMemGetInfo / cuDeviceTotalMem / NVML show the slice; context overhead counts. */
static void t_getters(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=%llu\n",
           4 * GiB, 256 * MiB);
    open_ctx(0);
    size_t f, t, tot;
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, GiB));
    CHECK_OK(cuMemGetInfo(&f, &t));
    CHECK(t == 4 * GiB, "total %zu", t);
    CHECK(f == 4 * GiB - GiB - 256 * MiB, "free %zu", f);
    CHECK_OK(cuDeviceTotalMem(&tot, 0));
    CHECK(tot == 4 * GiB, "cuDeviceTotalMem %zu", tot);
    CHECK(region_used(0) == GiB + 256 * MiB, "used with context %llu", (unsigned long long)region_used(0));

    /* NVML, reached like nvidia-smi or pynvml do: dlopen + dlsym. Its device
     * is matched by UUID, so name the card by UUID in a second slot check. */
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    CHECK(nvml != NULL, "%s", dlerror());
    if (nvml != NULL) {
        typedef struct {
            unsigned long long total, free, used;
        } mem_t;
        int (*get)(void *, mem_t *) = (int (*)(void *, mem_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo");
        int (*handle)(unsigned int,
                      void **) = (int (*)(unsigned int, void **))dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
        void *dev;
        mem_t m;
        handle(0, &dev);
        get(dev, &m);
        /* matched by cuda_index only -> NVML (which knows UUIDs) is not virtualised */
        CHECK(m.total == 16384 * MiB, "nvml total without uuid %llu", m.total);
    }
    CHECK_OK(cuMemFree(p));
}

static void t_nvml(void)
{
    char uuid[64];
    fakecuda_uuid_string(0, uuid, sizeof uuid);
    config("device.0.uuid=%s\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", uuid,
           4 * GiB);
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, GiB));
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    CHECK(nvml != NULL, "%s", dlerror());
    typedef struct {
        unsigned long long total, free, used;
    } mem_t;
    typedef struct {
        unsigned int version;
        unsigned long long total, reserved, free, used;
    } mem2_t;
    int (*get)(void *, mem_t *) = (int (*)(void *, mem_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo");
    int (*get2)(void *, mem2_t *) = (int (*)(void *, mem2_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo_v2");
    int (*handle)(unsigned int,
                  void **) = (int (*)(unsigned int, void **))dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    void *dev;
    mem_t m;
    mem2_t m2 = {.version = 2};
    handle(0, &dev);
    CHECK(get(dev, &m) == 0, "get");
    CHECK(m.total == 4 * GiB && m.used == GiB && m.free == 3 * GiB, "nvml %llu %llu %llu", m.total, m.used,
          m.free);
    CHECK(get2(dev, &m2) == 0, "get2");
    CHECK(m2.total == 4 * GiB && m2.used == GiB && m2.free == 3 * GiB, "nvml v2 %llu %llu", m2.total,
          m2.used);
    CHECK_OK(cuMemFree(p));
}

/* A child process (run_self) of the same container sees the parent's bytes. */
static void t_two_procs(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 600 * MiB));
    CHECK(run_self("child_alloc", "600") == 2, "child must get OOM for 600 MiB");
    CHECK(run_self("child_alloc", "300") == 0, "child must get 300 MiB");
    CHECK(region_used(0) == 600 * MiB, "child's memory returned at exit: %llu",
          (unsigned long long)region_used(0));
    CHECK_OK(cuMemFree(p));
}

/* child_alloc <MiB>: exit 0 if the allocation worked, 2 on OOM. */
static int child_alloc(const char *mib)
{
    open_ctx(0);
    CUdeviceptr p;
    CUresult r = cuMemAlloc(&p, strtoull(mib, NULL, 10) * MiB);
    if (r == CUDA_SUCCESS) {
        struct flexai_snapshot *s = calloc(1, sizeof *s);
        flexai_region_snapshot(g_region, s, sizeof *s);
        int two = s->nprocs == 2;
        free(s);
        return two ? 0 : 3;
    }
    return r == CUDA_ERROR_OUT_OF_MEMORY ? 2 : 1;
}

/* A process killed with its memory is swept. */
static void t_sweep(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    CHECK(run_self("child_die", "700") == 128 + SIGKILL, "child must die by SIGKILL");
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 700 * MiB)); /* only possible once the dead child is swept */
    CHECK(region_used(0) == 700 * MiB, "exact after sweep: %llu", (unsigned long long)region_used(0));
    struct flexai_snapshot *s = calloc(1, sizeof *s);
    flexai_region_snapshot(g_region, s, sizeof *s);
    CHECK(s->nprocs == 1 && s->procs[0].pid == getpid(), "only we remain: %u", s->nprocs);
    free(s);
    CHECK_OK(cuMemFree(p));
}

static int child_die(const char *mib)
{
    open_ctx(0);
    CUdeviceptr p;
    if (cuMemAlloc(&p, strtoull(mib, NULL, 10) * MiB) != CUDA_SUCCESS)
        return 1;
    raise(SIGKILL);
    return 1;
}

/* 64 threads allocate and free at once: totals exact, never above the limit. */
static CUcontext g_ctx;
static void *hammer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    cuCtxSetCurrent(g_ctx);
    CUdeviceptr held[8];
    int n = 0;
    for (int i = 0; i < 2000; i++) {
        if (n < 8 && (rand_r(&seed) & 1)) {
            CUresult r = cuMemAlloc(&held[n], (1 + rand_r(&seed) % 16) * MiB);
            if (r == CUDA_SUCCESS)
                n++;
            else if (r != CUDA_ERROR_OUT_OF_MEMORY)
                return (void *)1;
        } else if (n > 0) {
            if (cuMemFree(held[--n]) != CUDA_SUCCESS)
                return (void *)1;
        }
        if (fakecuda_used(0) > GiB)
            return (void *)2;
    }
    while (n > 0)
        cuMemFree(held[--n]);
    return NULL;
}

static void t_threads(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    g_ctx = open_ctx(0);
    pthread_t t[64];
    for (int i = 0; i < 64; i++)
        pthread_create(&t[i], NULL, hammer, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < 64; i++) {
        void *r;
        pthread_join(t[i], &r);
        CHECK(r == NULL, "thread %d returned %p", i, r);
    }
    CHECK(region_used(0) == 0, "region after 64 threads: %llu", (unsigned long long)region_used(0));
    struct flexai_snapshot *s = calloc(1, sizeof *s);
    flexai_region_snapshot(g_region, s, sizeof *s);
    CHECK(s->nprocs == 1 && s->procs[0].pid == getpid(), "64 threads, one process slot: %u", s->nprocs);
    free(s);
    CHECK(fakecuda_used(0) == 0, "driver after 64 threads: %llu", (unsigned long long)fakecuda_used(0));
}

/* fork(): the child has its own slot and an empty table; the parent's
 * allocations stay the parent's. */
static void t_fork(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 500 * MiB));
    pid_t pid = fork();
    if (pid == 0) {
        open_ctx(0);
        CUdeviceptr q;
        int bad = cuMemAlloc(&q, 600 * MiB) != CUDA_ERROR_OUT_OF_MEMORY; /* 500 + 600 > 1024 */
        bad |= cuMemAlloc(&q, 400 * MiB) != CUDA_SUCCESS;
        bad |= region_used(0) != 900 * MiB;
        _exit(bad ? 1 : 0); /* exits holding 400 MiB: returned at exit */
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    CHECK(region_used(0) == 500 * MiB, "parent keeps its 500 MiB: %llu", (unsigned long long)region_used(0));
    CHECK_OK(cuMemFree(p));
    CHECK(region_used(0) == 0, "after free");
}

/* Liveness is a lock on the slot held by an open file description of the
 * owner's own. A fork child that never uses CUDA must not keep its dead
 * parent's slot alive (it drops its copy of the parent's description); a
 * child that does gets its own slot, freed when it dies while the parent
 * keeps its charges. */
static void t_fork_lock(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    int fd[2];
    CHECK(pipe(fd) == 0, "pipe");
    pid_t parent = fork();
    if (parent == 0) {
        open_ctx(0);
        CUdeviceptr p;
        if (cuMemAlloc(&p, 500 * MiB) != CUDA_SUCCESS)
            _exit(1);
        int ready[2];
        if (pipe(ready) != 0)
            _exit(1);
        pid_t idle = fork();
        if (idle == 0) { /* inherits the mapping and descriptors, never uses CUDA */
            close(fd[1]);
            char c = 1; /* fork() has returned: the atfork handlers have run */
            if (write(ready[1], &c, 1) != 1)
                _exit(1);
            sleep(30);
            _exit(0);
        }
        char c;
        if (read(ready[0], &c, 1) != 1)
            _exit(1);
        pid_t user = fork();
        if (user == 0) { /* uses CUDA: its own slot, killed holding 300 MiB */
            CUdeviceptr q;
            if (cuMemAlloc(&q, 300 * MiB) != CUDA_SUCCESS)
                _exit(1);
            raise(SIGKILL);
        }
        waitpid(user, NULL, 0);
        if (region_used(0) != 500 * MiB) /* the parent's read reports the dead child freed */
            _exit(1);
        if (cuMemAlloc(&p, 500 * MiB) != CUDA_SUCCESS) /* 500 + 500: only if the child is swept */
            _exit(1);
        if (write(fd[1], &idle, sizeof idle) != sizeof idle)
            _exit(1);
        raise(SIGKILL); /* dies holding 1000 MiB while `idle` lives on */
    }
    close(fd[1]); /* a parent that fails early closes the pipe: no hang */
    pid_t idle = 0;
    CHECK(read(fd[0], &idle, sizeof idle) == sizeof idle, "the parent reached its end");
    int st;
    waitpid(parent, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "parent status %d", st);
    CHECK(idle > 0 && kill(idle, 0) == 0, "the idle child is alive");
    CHECK(region_used(0) == 0, "the dead parent's 1000 MiB are free though its child lives: %llu",
          (unsigned long long)region_used(0));
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 1000 * MiB));
    CHECK_OK(cuMemFree(p));
    if (idle > 0) {
        kill(idle, SIGKILL);
        waitpid(idle, NULL, 0);
    }
}

/* exec(): the pid lives on but the image that held the charges is gone, and
 * so is its lock (O_CLOEXEC): the new image's attach frees them. */
static void t_exec(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    open_ctx(0);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 600 * MiB));
    CHECK(run_self("child_exec", "400") == 0, "after exec, 600 + 400 must fit again");
    CHECK(region_used(0) == 600 * MiB, "only ours is left: %llu", (unsigned long long)region_used(0));
    CHECK_OK(cuMemFree(p));
}

/* child_exec <MiB>: take MiB, then exec into `child_alloc <MiB>` (same pid). */
static int child_exec(const char *mib)
{
    open_ctx(0);
    CUdeviceptr p;
    if (cuMemAlloc(&p, strtoull(mib, NULL, 10) * MiB) != CUDA_SUCCESS)
        return 1;
    execl(g_self, g_self, "child_alloc", mib, (char *)NULL);
    return 127;
}

/* A config with one bad line fails closed: cuInit (called directly, the
 * exported symbol) and context creation refuse, so no device is usable. */
static void t_closed(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=1G\n");
    CHECK(cuInit(0) == CUDA_ERROR_NOT_PERMITTED, "cuInit must refuse");
    CUcontext c = NULL;
    CHECK(cuDevicePrimaryCtxRetain(&c, 0) == CUDA_ERROR_NOT_PERMITTED, "no context");
    int n = -1;
    CHECK(cuDeviceGetCount(&n) != CUDA_SUCCESS, "no device is counted: %d", n);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(lib != NULL && dlsym(lib, "cuInit") == dlsym(RTLD_DEFAULT, "cuInit"),
          "dlsym hands out the refusal");
}

/* dlsym on libcuda and cuGetProcAddress hand out the hook's functions. */
static void t_lookup(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    open_ctx(0);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(lib != NULL, "dlopen");
    void *hook_alloc = dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"); /* the preloaded wrapper */
    CHECK(dlsym(lib, "cuMemAlloc_v2") == hook_alloc, "dlsym(libcuda) must give the hook");
    CHECK(dlsym(lib, "cuLaunchKernel_ptsz") == dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz"), "ptsz");
    CHECK(dlsym(lib, "cuGraphLaunch") == dlsym(RTLD_DEFAULT, "cuGraphLaunch"), "graph");
    CHECK(dlsym(lib, "cuDeviceGetName") != NULL, "unhooked names still resolve");
    CHECK(dlsym(lib, "cuNoSuchFunction") == NULL, "absent names stay absent");

    PFN_cuGetProcAddress_v12000 gpa = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
    CHECK(gpa == (PFN_cuGetProcAddress_v12000)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"),
          "gpa itself hooked");
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    CHECK_OK(gpa("cuMemAlloc", &fn, 13000, 0, &st));
    CHECK(fn == hook_alloc, "cuGetProcAddress(cuMemAlloc, 13000) must give the hook");
    CHECK_OK(gpa("cuLaunchKernel", &fn, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz"), "per-thread flavour");
    CHECK_OK(gpa("cuLaunchKernel", &fn, 13000, 0, &st));
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuLaunchKernel"), "legacy flavour");
    CHECK_OK(gpa("cuMemCreate", &fn, 12000, 0, &st));
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuMemCreate"), "cuMemCreate");
    CHECK_OK(gpa("cuDeviceGetName", &fn, 13000, 0, &st));
    CHECK(fn != NULL && fn == dlsym(lib, "cuDeviceGetName"), "unknown name passes through");
    CHECK_OK(gpa("cuMemAlloc", &fn, 14000, 0, &st));
    CHECK(fn != hook_alloc && fn != NULL, "a newer version passes through");

    /* And the function handed out really enforces the limit. */
    CHECK_OK(gpa("cuMemAlloc", &fn, 13000, 0, &st));
    CUdeviceptr a, b;
    CHECK(((PFN_cuMemAlloc_v3020)fn)(&a, 600 * MiB) == CUDA_SUCCESS, "alloc via gpa");
    CHECK(((PFN_cuMemAlloc_v3020)fn)(&b, 600 * MiB) == CUDA_ERROR_OUT_OF_MEMORY, "limit via gpa");
    PFN_cuMemFree_v3020 fr = (PFN_cuMemFree_v3020)dlsym(lib, "cuMemFree_v2");
    CHECK_OK(fr(a));
    CHECK(region_used(0) == 0, "free via dlsym counted");
}

/* No config: nothing limited, the real driver handed out. */
static void t_no_config(void)
{
    unsetenv("FLEXAI_VGPU_CONFIG");
    open_ctx(0);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(dlsym(lib, "cuMemAlloc_v2") != dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), "real driver handed out");
    /* The CUDA runtime (so PyTorch) finds the driver through cuGetProcAddress:
     * the hook's own hands out the driver's entry points, so a launch runs no
     * instruction of the hook's (why no-limit overhead is zero by design). */
    PFN_cuGetProcAddress_v12000 gpa = (PFN_cuGetProcAddress_v12000)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2");
    PFN_cuGetProcAddress_v12000 real_gpa = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
    CHECK(gpa != real_gpa, "the hook's cuGetProcAddress is the one asked");
    const char *names[] = {"cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cuMemAlloc",
                           "cuMemGetInfo"};
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
        void *fn = NULL;
        CUdriverProcAddressQueryResult st;
        CHECK_OK(gpa(names[i], &fn, 13000, 0, &st));
        void *real = NULL;
        CHECK_OK(real_gpa(names[i], &real, 13000, 0, &st));
        CHECK(fn == real && fn != NULL, "no config: %s is the driver's own", names[i]);
    }
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 15 * GiB));
    size_t f, t;
    CHECK_OK(cuMemGetInfo(&f, &t));
    CHECK(t == 16 * GiB, "whole card: %zu", t);
    CHECK_OK(cuMemFree(p));
}

/* Several fake cards, renumbered by CUDA_VISIBLE_DEVICES: each limit lands on
 * its card (by UUID), whatever ordinal the process sees it as. */
static void t_visible(void)
{
    char u0[64], u2[64];
    fakecuda_uuid_string(0, u0, sizeof u0);
    fakecuda_uuid_string(2, u2, sizeof u2);
    config("device.0.uuid=%s\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n"
           "device.1.uuid=%s\ndevice.1.memory_bytes=%llu\ndevice.1.context_overhead_bytes=0\n",
           u2, 1 * GiB, u0, 3 * GiB);
    setenv("FAKECUDA_DEVICES", "4", 1);
    setenv("CUDA_VISIBLE_DEVICES", "2,0", 1);
    CHECK_OK(cuInit(0));
    int n;
    CHECK_OK(cuDeviceGetCount(&n));
    CHECK(n == 2, "two visible: %d", n);
    size_t t0, t1;
    CHECK_OK(cuDeviceTotalMem(&t0, 0));
    CHECK_OK(cuDeviceTotalMem(&t1, 1));
    CHECK(t0 == 1 * GiB, "ordinal 0 is card 2: %zu", t0);
    CHECK(t1 == 3 * GiB, "ordinal 1 is card 0: %zu", t1);
    open_ctx(1);
    CUdeviceptr p;
    CHECK_OK(cuMemAlloc(&p, 2 * GiB));
    CHECK(region_used(1) == 2 * GiB && region_used(0) == 0, "charged to card 0's slot");
    open_ctx(0);
    CHECK(cuMemAlloc(&p, 2 * GiB) == CUDA_ERROR_OUT_OF_MEMORY, "card 2's limit is 1 GiB");
}

/* The same by ordinal: a config without UUIDs uses the ordinals the process sees. */
static void t_visible_index(void)
{
    config("device.0.cuda_index=1\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=0\n", GiB);
    setenv("FAKECUDA_DEVICES", "3", 1);
    setenv("CUDA_VISIBLE_DEVICES", "2,1", 1);
    CHECK_OK(cuInit(0));
    size_t t0, t1;
    CHECK_OK(cuDeviceTotalMem(&t0, 0));
    CHECK_OK(cuDeviceTotalMem(&t1, 1));
    CHECK(t0 == 16384 * MiB && t1 == GiB, "%zu %zu", t0, t1);
}

/* ---- compute -------------------------------------------------------------- */

/* Launch `us`-long fake kernels (or graphs) for `secs`; return the busy fraction delivered. */
static double busy_fraction(unsigned us, double secs, int graph)
{
    CUfunction k = fakecuda_kernel(us);
    CUgraphExec g = fakecuda_graph(us);
    double t0 = now_s();
    unsigned long n = 0;
    while (now_s() - t0 < secs) {
        if (graph)
            cuGraphLaunch(g, NULL);
        else
            cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        n++;
        if (n % 64 == 0)
            cuStreamSynchronize(NULL); /* keeps an unlimited run from queueing forever */
    }
    cuStreamSynchronize(NULL);
    return (double)n * us / 1e6 / (now_s() - t0);
}

/* Sleep until `pct`% into the current (or next) 50 ms wall-clock period. */
static void sleep_to_phase(int pct)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long period_us = 50000, into = (ts.tv_nsec / 1000) % period_us, target = period_us * pct / 100;
    usleep((useconds_t)((target - into + period_us) % period_us));
}

static void t_compute(const char *pct, const char *graph)
{
    int cores = atoi(pct);
    /* TEST_REF_CLOCK: hold to a share of throughput. The fake card's top
     * clock (FAKECUDA_SM_MAX_CLOCK) is above it and nothing else runs on it
     * (FAKECUDA_UTIL), so each busy ms at this duty books as more: the
     * speed-up of compute.c, solved for the duty it settles at. */
    const char *ref = getenv("TEST_REF_CLOCK");
    const char *top = getenv("FAKECUDA_SM_MAX_CLOCK");
    const char *card = getenv("FAKECUDA_UTIL");
    double weight = 1.0, expect = cores;
    const char *curve = getenv("TEST_SPEEDUP");
    const char *gap = getenv("TEST_GAP_POWER");
    if (gap != NULL) {
        /* The power model: the fake card draws FAKECUDA_POWER_MW on average
         * whatever we do, so its busy power is gap + (avg - gap) / duty;
         * solved for the duty the controller settles at (the weight capped
         * at 1.5, and 1 where the busy power is within the limit). */
        char uuid[64];
        fakecuda_uuid_string(0, uuid, sizeof uuid);
        config("period_ms=50\ndevice.0.uuid=%s\ndevice.0.cores=%d\ndevice.0.gap_power_mw=%s\n", uuid, cores,
               gap);
        double g = atof(gap), avg = atof(getenv("FAKECUDA_POWER_MW")),
               lim = atof(getenv("FAKECUDA_POWER_LIMIT_MW"));
        double duty = cores / 100.0;
        for (int i = 0; i < 200; i++) {
            double busy = g + (avg - g) / duty;
            double w = busy > lim ? pow((busy - g) / (lim - g), 0.42) : 1.0;
            weight = w > 1.5 ? 1.5 : w;
            duty = 0.5 * duty + 0.5 * cores / 100.0 / weight; /* damped: the plain iteration can cycle */
        }
        expect = cores / weight;
    } else if (curve != NULL) {
        /* The agent's calibration figures: a flat measured curve and, with
         * TEST_IDLE_POWER, the power gate; TEST_WEIGHT is what each busy ms
         * should book as (1 + (curve - 1) x gate). */
        char uuid[64];
        fakecuda_uuid_string(0, uuid, sizeof uuid);
        const char *idle = getenv("TEST_IDLE_POWER");
        config("period_ms=50\ndevice.0.uuid=%s\ndevice.0.cores=%d\ndevice.0.speedup_pm=%s\n"
               "device.0.idle_power_mw=%s\n",
               uuid, cores, curve, idle ? idle : "0");
        weight = atof(getenv("TEST_WEIGHT"));
        expect = cores / weight;
    } else if (ref != NULL) {
        char uuid[64];
        fakecuda_uuid_string(0, uuid, sizeof uuid);
        config("period_ms=50\ndevice.0.uuid=%s\ndevice.0.cores=%d\ndevice.0.ref_clock_mhz=%s\n", uuid, cores,
               ref);
        double room = 0.70 * ((top ? atof(top) : atof(ref)) / atof(ref) - 1.0), duty = cores / 100.0;
        for (int i = 0; i < 100; i++) {
            double d = card && atof(card) / 100.0 > duty ? atof(card) / 100.0 : duty;
            double scale = (1.0 - d) / 0.45;
            weight = 1.0 + room * (scale > 1.0 ? 1.0 : scale);
            duty = cores / 100.0 / weight;
        }
        expect = cores / weight;
    } else {
        config("period_ms=50\ndevice.0.cuda_index=0\ndevice.0.cores=%d\n", cores);
    }
    open_ctx(0);
    busy_fraction(1000, 0.3, 0); /* settle */
    if (getenv("TEST_IDLE_MS") != NULL) {
        /* Like bench/hook_gpu.py's pair: short kernels (so markers
         * come every few launches), ONE launch early in an open window, the
         * program idle (a barrier), back while the window is shut. An END
         * marker recorded then would span the idle gap and starve the program
         * for seconds. Periods sit on the wall clock; the window is the first
         * `cores`% of each. */
        busy_fraction(100, 0.3, 0);
        sleep_to_phase(cores / 4);
        cuLaunchKernel(fakecuda_kernel(100), 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        usleep((useconds_t)atoi(getenv("TEST_IDLE_MS")) * 1000);
        sleep_to_phase(cores + (100 - cores) / 2);
    }
    double f = busy_fraction(1000, 2.0, graph != NULL && strcmp(graph, "graph") == 0);
    printf("cores=%d clock weight %.3f: expect %.1f%%, delivered=%.1f%%\n", cores, weight, expect, f * 100);
    /* Loose on purpose: on a loaded 2-core CI machine the test thread itself
     * is descheduled for ms at a time and the fake GPU idles; what this
     * guards is that launches are held near the share, not its accuracy
     * (measured on the real GPU: bench/results/hook-h200.md). */
    CHECK(f * 100 > expect - 10 && f * 100 < expect + 6, "delivered %.1f%% for %.1f%%", f * 100, expect);
}

/* A program under its share (about 50% busy, limit 70%) is not held back:
 * its idle gaps are not counted as busy. */
static void t_duty(void)
{
    config("period_ms=50\ndevice.0.cuda_index=0\ndevice.0.cores=70\n");
    open_ctx(0);
    CUfunction k = fakecuda_kernel(1000);
    double t0 = now_s(), busy = 0;
    while (now_s() - t0 < 2.0) {
        for (int i = 0; i < 10; i++)
            cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        cuStreamSynchronize(NULL);
        busy += 0.010;
        usleep(10000);
    }
    double f = busy / (now_s() - t0);
    printf("duty: delivered %.1f%% (about 50%% expected unthrottled)\n", f * 100);
    CHECK(f > 0.40, "a program under its limit was held back: %.1f%%", f * 100);
}

/* Launches into a stream being captured into a graph do not run: they are
 * never held, even with the gate shut (10% leaves it shut 90% of the time),
 * and the hook records no event into the capture. */
static void t_capture(void)
{
    config("period_ms=50\ndevice.0.cuda_index=0\ndevice.0.cores=10\n");
    open_ctx(0);
    busy_fraction(1000, 0.3, 0); /* a limited program, windows running */
    fakecuda_set_capturing(1);
    CUfunction k = fakecuda_kernel(1000);
    double t0 = now_s();
    for (int i = 0; i < 2000; i++) /* 2 s of kernels if they ran */
        CHECK_OK(cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    double dt = now_s() - t0;
    fakecuda_set_capturing(0);
    printf("capture: 2000 launches in %.1f ms\n", dt * 1e3);
    CHECK(dt < 0.2, "captured launches were held: %.3f s", dt);
    CHECK(fakecuda_records_in_capture() == 0, "%d events recorded into the capture",
          fakecuda_records_in_capture());
    double f = busy_fraction(1000, 1.0, 1); /* the graph replay is held again */
    CHECK(f < 0.2, "graph replay after capture not limited: %.1f%%", f * 100);
}

/* Cost of the launch wrapper: ns per cuLaunchKernel of a zero-length fake
 * kernel (compare runs with and without LD_PRELOAD). Prints, asserts nothing. */
static void t_launch_rate(void)
{
    open_ctx(0);
    CUfunction k = fakecuda_kernel(0);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        for (int i = 0; i < 2000000; i++)
            cuLaunchKernel(k, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        printf("launch: %.1f ns per launch\n", (now_s() - t0) / 2000000 * 1e9);
    }
}

/* Two containers on one card, 30% and 70% (offsets 0 and 30): 3:7. */
static void t_pair(void)
{
    tmpdir();
    char state[300];
    snprintf(state, sizeof state, "%s/card", g_dir);
    setenv("FAKECUDA_STATE", state, 1);
    int fd[2][2];
    pid_t pid[2];
    for (int i = 0; i < 2; i++) {
        if (pipe(fd[i]) != 0)
            exit(2);
        pid[i] = fork();
        if (pid[i] == 0) {
            snprintf(g_region, sizeof g_region, "%s/region%d", g_dir, i);
            snprintf(g_cfg, sizeof g_cfg, "%s/vgpu%d.conf", g_dir, i);
            FILE *f = fopen(g_cfg, "w");
            fprintf(f,
                    "version=1\nregion=%s\nperiod_ms=50\ndevice.0.cuda_index=0\ndevice.0.cores=%d\n"
                    "device.0.core_offset=%d\n",
                    g_region, i == 0 ? 30 : 70, i == 0 ? 0 : 30);
            fclose(f);
            setenv("FLEXAI_VGPU_CONFIG", g_cfg, 1);
            open_ctx(0);
            busy_fraction(1000, 0.3, 0);
            if (getenv("TEST_IDLE_MS") != NULL)
                usleep((useconds_t)atoi(getenv("TEST_IDLE_MS")) * 1000 * (unsigned)(2 - i));
            double b = busy_fraction(1000, 2.0, 0);
            if (write(fd[i][1], &b, sizeof b) != sizeof b)
                _exit(1);
            _exit(0);
        }
    }
    double b[2];
    for (int i = 0; i < 2; i++) {
        if (read(fd[i][0], &b[i], sizeof b[i]) != sizeof b[i])
            b[i] = 0;
        waitpid(pid[i], NULL, 0);
    }
    double ratio = b[0] / b[1];
    printf("30%%: %.1f%%, 70%%: %.1f%%, ratio %.3f (3:7 = 0.429)\n", b[0] * 100, b[1] * 100, ratio);
    /* +-20% here (the GPU proof asks +-10% and got it): on a loaded 2-core CI
     * machine the short 30% windows lose more to scheduling delays, and the
     * fake card runs the neighbour's spill inside them. 1:1 would be 1.0. */
    CHECK(ratio > 0.429 * 0.8 && ratio < 0.429 * 1.2, "ratio %.3f", ratio);
    CHECK(b[0] + b[1] > 0.85, "the card stays busy: %.2f", b[0] + b[1]);
}

/* A context costs memory: in a slice without room for it, opening one is
 * refused with CUDA_ERROR_OUT_OF_MEMORY and nothing stays charged;
 * with room, it is charged once. */
static void t_context_refused(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=%llu\n",
           512 * MiB, 768 * MiB);
    CUdevice d;
    CUcontext c = NULL;
    CHECK_OK(cuInit(0));
    CHECK_OK(cuDeviceGet(&d, 0));
    CUresult r = cuDevicePrimaryCtxRetain(&c, d);
    CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "retain in a full slice: %d", (int)r);
    CHECK(region_used(0) == 0, "charged after a refusal: %llu", (unsigned long long)region_used(0));
    CUctxCreateParams params = {0};
    r = cuCtxCreate_v4(&c, &params, 0, d);
    CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "create in a full slice: %d", (int)r);
    CHECK(region_used(0) == 0, "charged after a refusal: %llu", (unsigned long long)region_used(0));
}

static void t_context_charged_once(void)
{
    config("device.0.cuda_index=0\ndevice.0.memory_bytes=%llu\ndevice.0.context_overhead_bytes=%llu\n", GiB,
           768 * MiB);
    open_ctx(0);
    CUdevice d;
    CUcontext c = NULL;
    CHECK_OK(cuDeviceGet(&d, 0));
    CHECK_OK(cuDevicePrimaryCtxRetain(&c, d)); /* a second retain: no second charge, no refusal */
    CHECK(region_used(0) == 768 * MiB, "used %llu", (unsigned long long)region_used(0));
}

/* Calibration (shim API, run by the node agent) on the fake card: the median
 * clock of the burst's second half, and every refusal. */
static void t_calibrate(void)
{
    char uuid[64];
    fakecuda_uuid_string(0, uuid, sizeof uuid);
    struct flexai_calibration cal;
    setenv("FAKECUDA_KERNEL_US", "2000", 1);
    setenv("FAKECUDA_SM_MAX_CLOCK", "1980", 1);
    setenv("FAKECUDA_SM_CLOCK", "1455", 1);
    /* The first 150 ms at the top clock: the median must not see them. */
    setenv("FAKECUDA_SM_CLOCK_BOOST", "1980,150", 1);
    setenv("FAKECUDA_POWER_MW", "699000", 1);
    setenv("FAKECUDA_POWER_LIMIT_MW", "700000", 1);
    uint64_t before = fakecuda_launches();
    int rc = flexai_calibrate(uuid, 600, 10, &cal, sizeof cal);
    CHECK(rc == 0, "rc %d", rc);
    printf("calibration: %u MHz (top %u), %u samples, kernel %u, %.0f ms, %u mW of %u\n", cal.sm_clock_mhz,
           cal.max_sm_clock_mhz, cal.samples, cal.kernel, (double)cal.burst_ns / 1e6, cal.power_mw,
           cal.power_limit_mw);
    CHECK(cal.version == FLEXAI_API_VERSION, "version %u", cal.version);
    CHECK(cal.sm_clock_mhz == 1455, "clock %u", cal.sm_clock_mhz);
    CHECK(cal.max_sm_clock_mhz == 1980, "top %u", cal.max_sm_clock_mhz);
    CHECK(cal.samples >= 50, "samples %u (one per 2 ms launch over 300 ms)", cal.samples);
    CHECK(cal.kernel == FLEXAI_CALIBRATION_MMA, "kernel %u", cal.kernel);
    CHECK(cal.burst_ns >= 600000000ull && cal.burst_ns < 2000000000ull, "burst %llu ns",
          (unsigned long long)cal.burst_ns);
    CHECK(cal.power_mw == 699000 && cal.power_limit_mw == 700000, "power %u / %u", cal.power_mw,
          cal.power_limit_mw);
    CHECK(fakecuda_launches() - before >= 250, "launches %llu",
          (unsigned long long)(fakecuda_launches() - before));
    /* The fake kernel takes the same time at any duty: a flat curve. */
    for (int i = 0; i < 5; i++)
        CHECK(cal.speedup_pm[i] >= 950 && cal.speedup_pm[i] <= 1050, "speedup[%d] %u", i, cal.speedup_pm[i]);
    CHECK(cal.idle_power_mw == 699000 && cal.procs_before == 0, "idle %u mW, %u processes", cal.idle_power_mw,
          cal.procs_before);
    /* A card that draws the same at every duty: the gap power is that power. */
    CHECK(cal.gap_power_mw > 699000 * 0.97 && cal.gap_power_mw < 699000 * 1.03, "gap %u mW",
          cal.gap_power_mw);

    /* 130 W between kernels, 600 W while one runs: the line through the 10%
     * and 30% steps finds the 130 W at duty 0 (the energy counter). */
    setenv("FAKECUDA_GAP_POWER_MW", "130000", 1);
    setenv("FAKECUDA_BUSY_POWER_MW", "600000", 1);
    CHECK((rc = flexai_calibrate(uuid, 200, 10, &cal, sizeof cal)) == 0, "rc %d", rc);
    printf("calibration: gap %u mW\n", cal.gap_power_mw);
    CHECK(cal.gap_power_mw > 130000 * 0.9 && cal.gap_power_mw < 130000 * 1.1, "gap %u mW", cal.gap_power_mw);
    unsetenv("FAKECUDA_GAP_POWER_MW");
    unsetenv("FAKECUDA_BUSY_POWER_MW");

    /* A card in use is left alone: nothing launched. */
    setenv("FAKECUDA_UTIL", "40", 1);
    before = fakecuda_launches();
    CHECK((rc = flexai_calibrate(uuid, 100, 10, &cal, sizeof cal)) == -EBUSY, "busy card: rc %d", rc);
    CHECK(cal.busy_pct_before == 40, "busy %u", cal.busy_pct_before);
    unsetenv("FAKECUDA_UTIL");
    setenv("FAKECUDA_PROCS", "1", 1);
    CHECK((rc = flexai_calibrate(uuid, 100, 10, &cal, sizeof cal)) == -EBUSY, "a process on it: rc %d", rc);
    CHECK(fakecuda_launches() == before, "launched on a busy card");
    unsetenv("FAKECUDA_PROCS");

    CHECK((rc = flexai_calibrate("GPU-00000000-0000-0000-0000-000000000000", 100, 10, &cal, sizeof cal)) ==
              -ENODEV,
          "unknown card: rc %d", rc);
    CHECK((rc = flexai_calibrate(uuid, 0, 10, &cal, sizeof cal)) == -EINVAL, "0 ms: rc %d", rc);
    CHECK((rc = flexai_calibrate(NULL, 100, 10, &cal, sizeof cal)) == -EINVAL, "no uuid: rc %d", rc);
    CHECK((rc = flexai_calibrate(uuid, 100, 10, &cal, 8)) == -ENOSPC, "small struct: rc %d", rc);
    /* No clock from NVML: no figure, an error rather than 0 MHz. */
    unsetenv("FAKECUDA_SM_CLOCK");
    unsetenv("FAKECUDA_SM_CLOCK_BOOST");
    CHECK((rc = flexai_calibrate(uuid, 100, 10, &cal, sizeof cal)) == -EIO, "no clock: rc %d", rc);
}

/* Without NVML the agent gets -ENOSYS (in a process of its own: NVML, once
 * loaded, stays). */
static void t_calibrate_no_nvml(void)
{
    char uuid[64];
    fakecuda_uuid_string(0, uuid, sizeof uuid);
    struct flexai_calibration cal;
    setenv("FLEXAI_REAL_LIBNVML", "/nonexistent/libnvidia-ml.so.1", 1);
    int rc = flexai_calibrate(uuid, 100, 10, &cal, sizeof cal);
    CHECK(rc == -ENOSYS, "rc %d", rc);
}

int main(int argc, char **argv)
{
    g_self = argv[0];
    if (argc < 2) {
        fprintf(stderr, "usage: hook_tests <case>\n");
        return 2;
    }
    const char *c = argv[1];
    const char *env_dir = getenv("FLEXAI_TEST_DIR"); /* children reuse the parent's files */
    if (env_dir != NULL) {
        snprintf(g_dir, sizeof g_dir, "%s", env_dir);
        snprintf(g_cfg, sizeof g_cfg, "%s/vgpu.conf", g_dir);
        snprintf(g_region, sizeof g_region, "%s/region", g_dir);
    }
    if (strcmp(c, "child_alloc") == 0)
        return child_alloc(argv[2]);
    if (strcmp(c, "child_die") == 0)
        return child_die(argv[2]);
    if (strcmp(c, "child_exec") == 0)
        return child_exec(argv[2]);
    if (strcmp(c, "alloc_paths") == 0)
        t_alloc_paths();
    else if (strcmp(c, "getters") == 0)
        t_getters();
    else if (strcmp(c, "nvml") == 0)
        t_nvml();
    else if (strcmp(c, "two_procs") == 0) {
        tmpdir();
        setenv("FLEXAI_TEST_DIR", g_dir, 1);
        t_two_procs();
    } else if (strcmp(c, "sweep") == 0) {
        tmpdir();
        setenv("FLEXAI_TEST_DIR", g_dir, 1);
        t_sweep();
    } else if (strcmp(c, "threads") == 0)
        t_threads();
    else if (strcmp(c, "fork") == 0)
        t_fork();
    else if (strcmp(c, "fork_lock") == 0)
        t_fork_lock();
    else if (strcmp(c, "exec") == 0) {
        tmpdir();
        setenv("FLEXAI_TEST_DIR", g_dir, 1);
        t_exec();
    } else if (strcmp(c, "lookup") == 0)
        t_lookup();
    else if (strcmp(c, "closed") == 0)
        t_closed();
    else if (strcmp(c, "no_config") == 0)
        t_no_config();
    else if (strcmp(c, "visible") == 0)
        t_visible();
    else if (strcmp(c, "visible_index") == 0)
        t_visible_index();
    else if (strcmp(c, "compute") == 0)
        t_compute(argv[2], argc > 3 ? argv[3] : NULL);
    else if (strcmp(c, "pair") == 0)
        t_pair();
    else if (strcmp(c, "duty") == 0)
        t_duty();
    else if (strcmp(c, "capture") == 0)
        t_capture();
    else if (strcmp(c, "launch_rate") == 0)
        t_launch_rate();
    else if (strcmp(c, "calibrate") == 0)
        t_calibrate();
    else if (strcmp(c, "context_refused") == 0)
        t_context_refused();
    else if (strcmp(c, "context_charged_once") == 0)
        t_context_charged_once();
    else if (strcmp(c, "calibrate_no_nvml") == 0)
        t_calibrate_no_nvml();
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    if (!g_fail)
        printf("PASS %s\n", c);
    return g_fail;
}
