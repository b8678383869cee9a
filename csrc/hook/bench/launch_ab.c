/*
 * launch_ab.c: what the hook adds to one kernel launch, measured in ONE process.
 *
 * Between processes the same launch loop varies by tens of percent on a VM
 * (core placement, clocks), far more than the hook's cost. So one process
 * launches through both functions, alternately:
 *   A = the driver's cuLaunchKernel (dlopen "libcuda.so.1");
 *   B = the hook's cuLaunchKernel (libflexai_hook.so dlopen'ed RTLD_LOCAL, not
 *       preloaded, so A stays the driver's), with the config in
 *       $FLEXAI_VGPU_CONFIG as a container would have it (none: no limits).
 * Blocks of launches go A B B A ... so drift hits both alike; each block ends
 * with cuCtxSynchronize. A host busy-wait between launches (--gap-ns) stands in
 * for a framework's own per-launch work, keeping the GPU under a core limit.
 *
 *   hook_launch_ab HOOK.so [launches_per_block=20000] [rounds=40] [gap_ns=0]
 *
 * Prints one JSON line: medians (ns per launch) of A and B, and the median and
 * 10th/90th percentiles of the per-round difference B - A.
 * Against the fake driver of the tests it runs the same way (smoke test).
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* An empty kernel as PTX: the driver JIT-compiles it for any GPU. */
static const char k_ptx[] = ".version 7.0\n.target sm_50\n.address_size 64\n"
                            ".visible .entry flexai_noop()\n{\n\tret;\n}\n";

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void *sym(void *lib, const char *name)
{
    void *f = dlsym(lib, name);
    if (f == NULL) {
        fprintf(stderr, "launch_ab: no %s: %s\n", name, dlerror());
        exit(2);
    }
    return f;
}

#define OK(call)                                                     \
    do {                                                             \
        CUresult r_ = (call);                                        \
        if (r_ != CUDA_SUCCESS) {                                    \
            fprintf(stderr, "launch_ab: %s = %d\n", #call, (int)r_); \
            exit(2);                                                 \
        }                                                            \
    } while (0)

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p-th quantile (0..1) of v[0..n), sorting v. */
static double quantile(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[(int)(p * (n - 1) + 0.5)];
}

static PFN_cuCtxSynchronize_v2000 g_sync;

/* ns per launch of one block through `launch`. */
static double block(PFN_cuLaunchKernel_v4000 launch, CUfunction k, int n, uint64_t gap_ns)
{
    OK(g_sync());
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        OK(launch(k, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
        if (gap_ns) {
            uint64_t until = now_ns() + gap_ns;
            while (now_ns() < until) {
            }
        }
    }
    OK(g_sync());
    return (double)(now_ns() - t0) / n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s HOOK.so [launches_per_block] [rounds] [gap_ns]\n", argv[0]);
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 20000;
    int rounds = argc > 3 ? atoi(argv[3]) : 40;
    uint64_t gap = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
    if (n <= 0 || rounds <= 0 || rounds > 10000) {
        fprintf(stderr, "launch_ab: launches_per_block and rounds (<= 10000) must be positive\n");
        return 2;
    }
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    void *hook = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (cuda == NULL || hook == NULL) {
        fprintf(stderr, "launch_ab: %s\n", dlerror());
        return 2;
    }
    PFN_cuInit_v2000 init = (PFN_cuInit_v2000)sym(cuda, "cuInit");
    PFN_cuDeviceGet_v2000 dev_get = (PFN_cuDeviceGet_v2000)sym(cuda, "cuDeviceGet");
    PFN_cuCtxSetCurrent_v4000 set_cur = (PFN_cuCtxSetCurrent_v4000)sym(cuda, "cuCtxSetCurrent");
    PFN_cuModuleLoadData_v2000 load = (PFN_cuModuleLoadData_v2000)sym(cuda, "cuModuleLoadData");
    PFN_cuModuleGetFunction_v2000 get_fn = (PFN_cuModuleGetFunction_v2000)sym(cuda, "cuModuleGetFunction");
    g_sync = (PFN_cuCtxSynchronize_v2000)sym(cuda, "cuCtxSynchronize");
    PFN_cuLaunchKernel_v4000 a = (PFN_cuLaunchKernel_v4000)sym(cuda, "cuLaunchKernel");
    PFN_cuLaunchKernel_v4000 b = (PFN_cuLaunchKernel_v4000)sym(hook, "cuLaunchKernel");
    /* The context through the hook, as an application's would be (it charges the context). */
    PFN_cuDevicePrimaryCtxRetain_v7000 retain = (PFN_cuDevicePrimaryCtxRetain_v7000)sym(
        hook, "cuDevicePrimaryCtxRetain");

    CUdevice d;
    CUcontext ctx;
    CUmodule mod;
    CUfunction k;
    OK(init(0));
    OK(dev_get(&d, 0));
    OK(retain(&ctx, d));
    OK(set_cur(ctx));
    OK(load(&mod, k_ptx));
    OK(get_fn(&k, mod, "flexai_noop"));

    block(a, k, n, gap); /* warm-up: JIT, queues, the hook's first window */
    block(b, k, n, gap);
    double *ta = calloc((size_t)rounds, sizeof *ta), *tb = calloc((size_t)rounds, sizeof *tb);
    double *diff = calloc((size_t)rounds, sizeof *diff);
    if (ta == NULL || tb == NULL || diff == NULL)
        return 2;
    for (int r = 0; r < rounds; r++) {
        if (r % 2 == 0) {
            ta[r] = block(a, k, n, gap);
            tb[r] = block(b, k, n, gap);
        } else {
            tb[r] = block(b, k, n, gap);
            ta[r] = block(a, k, n, gap);
        }
        diff[r] = tb[r] - ta[r];
    }
    double d50 = quantile(diff, rounds, 0.5), d10 = quantile(diff, rounds, 0.1),
           d90 = quantile(diff, rounds, 0.9);
    double a50 = quantile(ta, rounds, 0.5), b50 = quantile(tb, rounds, 0.5);
    const char *conf = getenv("FLEXAI_VGPU_CONFIG");
    printf("{\"launches_per_block\": %d, \"rounds\": %d, \"gap_ns\": %llu, \"config\": \"%s\", "
           "\"driver_ns\": %.1f, \"hook_ns\": %.1f, \"diff_ns_median\": %.2f, \"diff_ns_p10\": %.2f, "
           "\"diff_ns_p90\": %.2f, \"hook_over_driver\": %.5f}\n",
           n, rounds, (unsigned long long)gap, conf != NULL && *conf ? "yes" : "none", a50, b50, d50, d10,
           d90, b50 / a50);
    return 0;
}
