/*
 * api.c: the flexai_* C API of flexai_hook.h, for Python through ctypes.
 * Built into libflexai_shim.so (region reading only, no interception) so the
 * monitor can load it without hooking its own process.
 */
#include <errno.h>

#include "internal.h"

FLEXAI_EXPORT int flexai_api_version(void)
{
    return FLEXAI_API_VERSION;
}

FLEXAI_EXPORT int flexai_region_snapshot(const char *path, struct flexai_snapshot *out, size_t out_size)
{
    if (path == NULL || out == NULL)
        return -EINVAL;
    if (out_size < sizeof *out)
        return -ENOSPC;
    return flexai_region_read(path, out);
}
