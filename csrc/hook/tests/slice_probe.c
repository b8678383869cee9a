/*
 * slice_probe.c: what a program in a container sees of its vGPU, as one JSON
 * line per step (the real-node tests run it inside pods, under the preloaded
 * hook, on the fake driver mounted where the real one would be).
 *
 *   slice_probe info              cards visible, UUID, cuDeviceTotalMem and
 *                                 cuMemGetInfo of device 0
 *   slice_probe fill MIB HOLD_S   cuMemAlloc MIB-sized blocks on device 0
 *                                 until one is refused; hold them HOLD_S
 *                                 seconds, try one more block, free them all
 *
 * It reaches the driver as the CUDA runtime does: dlopen("libcuda.so.1") and
 * dlsym, so nothing ties it to where the driver lives.
 */
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define MAXBLOCKS 4096

static void *g_lib;

static void *sym(const char *name)
{
    void *f = dlsym(g_lib, name);
    if (f == NULL) {
        printf("{\"error\": \"no %s in libcuda.so.1\"}\n", name);
        exit(2);
    }
    return f;
}

#define CALL(name, type, ...) ((type)sym(name))(__VA_ARGS__)

static void check(CUresult r, const char *what)
{
    if (r != CUDA_SUCCESS) {
        printf("{\"error\": \"%s failed: %d\"}\n", what, (int)r);
        exit(3);
    }
}

static void uuid_string(const CUuuid *u, char out[64])
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, 64, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

typedef CUresult (*init_t)(unsigned int);
typedef CUresult (*count_t)(int *);
typedef CUresult (*get_t)(CUdevice *, int);
typedef CUresult (*uuid_t_)(CUuuid *, CUdevice);
typedef CUresult (*total_t)(size_t *, CUdevice);
typedef CUresult (*retain_t)(CUcontext *, CUdevice);
typedef CUresult (*setcur_t)(CUcontext);
typedef CUresult (*info_t)(size_t *, size_t *);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*free_t)(CUdeviceptr);

static CUdevice open_device0(int *count)
{
    check(CALL("cuInit", init_t, 0), "cuInit");
    check(CALL("cuDeviceGetCount", count_t, count), "cuDeviceGetCount");
    if (*count < 1) {
        printf("{\"error\": \"no device visible\", \"count\": %d}\n", *count);
        exit(4);
    }
    CUdevice dev;
    check(CALL("cuDeviceGet", get_t, &dev, 0), "cuDeviceGet");
    CUcontext ctx;
    check(CALL("cuDevicePrimaryCtxRetain", retain_t, &ctx, dev), "cuDevicePrimaryCtxRetain");
    check(CALL("cuCtxSetCurrent", setcur_t, ctx), "cuCtxSetCurrent");
    return dev;
}

static int info(void)
{
    int count;
    CUdevice dev = open_device0(&count);
    CUuuid u;
    char s[64];
    size_t total, mfree, mtotal;
    check(CALL("cuDeviceGetUuid", uuid_t_, &u, dev), "cuDeviceGetUuid");
    uuid_string(&u, s);
    check(CALL("cuDeviceTotalMem_v2", total_t, &total, dev), "cuDeviceTotalMem");
    check(CALL("cuMemGetInfo_v2", info_t, &mfree, &mtotal), "cuMemGetInfo");
    printf("{\"count\": %d, \"uuid\": \"%s\", \"total_mem_mib\": %zu, \"info_total_mib\": %zu, "
           "\"info_free_mib\": %zu}\n",
           count, s, total / MIB, mtotal / MIB, mfree / MIB);
    return 0;
}

static int fill(size_t block_mib, unsigned hold_s)
{
    int count;
    open_device0(&count);
    static CUdeviceptr blocks[MAXBLOCKS];
    int n = 0;
    CUresult r = CUDA_SUCCESS;
    while (n < MAXBLOCKS && (r = CALL("cuMemAlloc_v2", alloc_t, &blocks[n], block_mib * MIB)) == CUDA_SUCCESS)
        n++;
    size_t mfree, mtotal;
    check(CALL("cuMemGetInfo_v2", info_t, &mfree, &mtotal), "cuMemGetInfo");
    printf("{\"allocated_mib\": %zu, \"refused_with\": %d, \"info_free_mib\": %zu, \"pid\": %d}\n",
           (size_t)n * block_mib, (int)r, mfree / MIB, (int)getpid());
    fflush(stdout);
    if (hold_s > 0) {
        sleep(hold_s);
        CUdeviceptr extra;
        CUresult again = CALL("cuMemAlloc_v2", alloc_t, &extra, block_mib * MIB);
        if (again == CUDA_SUCCESS)
            CALL("cuMemFree_v2", free_t, extra);
        printf("{\"after_hold_refused_with\": %d}\n", (int)again);
    }
    for (int i = 0; i < n; i++)
        CALL("cuMemFree_v2", free_t, blocks[i]);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (g_lib == NULL) {
        printf("{\"error\": \"dlopen libcuda.so.1: %s\"}\n", dlerror());
        return 2;
    }
    if (argc >= 2 && strcmp(argv[1], "info") == 0)
        return info();
    if (argc >= 4 && strcmp(argv[1], "fill") == 0)
        return fill((size_t)strtoull(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10));
    fprintf(stderr, "usage: slice_probe info | slice_probe fill MIB HOLD_S\n");
    return 64;
}
