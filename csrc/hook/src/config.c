/*
 * config.c: read the vGPU limits once per process.
 *
 * The device plugin writes a small key=value file (format in README.md,
 * writer in flexai_node/hook_config.py) and points $FLEXAI_VGPU_CONFIG at it.
 * Invariants:
 *   - read exactly once (pthread_once); afterwards the struct is immutable,
 *     so every other module reads it without locks;
 *   - no config (variable unset or empty) = no vGPU = the hook passes every
 *     call straight through;
 *   - never fails: each problem is reported on stderr with its line and field
 *     and that field falls back (documented per field in README.md).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static struct flexai_config g_config;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

void flexai_log(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *c = buf; *c != '\0'; c++) /* config text may be anything: print it safely */
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
            *c = '?';
    fprintf(stderr, "flexai-hook: %s\n", buf);
}

/* Whole-string unsigned parse; 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (*s == '\0' || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static void reset_device(struct flexai_dev_config *d)
{
    memset(d, 0, sizeof *d);
    d->cuda_index = -1;
    d->context_overhead = FLEXAI_DEFAULT_CONTEXT_OVERHEAD;
}

/* One "device.N.field=value" assignment. */
static void set_device_field(struct flexai_config *c, int line, const char *key, const char *val)
{
    char *end;
    long idx = strtol(key + 7, &end, 10);
    if (end == key + 7 || *end != '.' || idx < 0 || idx >= FLEXAI_MAX_DEVICES) {
        flexai_log("config line %d: '%s': device index must be 0..%d; line ignored", line, key,
                   FLEXAI_MAX_DEVICES - 1);
        return;
    }
    struct flexai_dev_config *d = &c->dev[idx];
    const char *field = end + 1;
    uint64_t v;
    if (idx >= c->ndev)
        c->ndev = (int)idx + 1;

    if (strcmp(field, "uuid") == 0) {
        if (strlen(val) >= FLEXAI_UUID_LEN || strncmp(val, "GPU-", 4) != 0) {
            flexai_log("config line %d: %s: '%s' is not a GPU UUID (GPU-...); this vGPU matches no card",
                       line, key, val);
            return;
        }
        snprintf(d->uuid, sizeof d->uuid, "%s", val);
    } else if (strcmp(field, "cuda_index") == 0) {
        if (parse_u64(val, &v) != 0 || v > 1023) {
            flexai_log("config line %d: %s: '%s' is not a device ordinal; this vGPU matches no card",
                       line, key, val);
            return;
        }
        d->cuda_index = (int)v;
    } else if (strcmp(field, "memory_bytes") == 0) {
        if (parse_u64(val, &v) != 0) {
            flexai_log("config line %d: %s: '%s' is not a byte count; no memory limit on this vGPU",
                       line, key, val);
            v = 0;
        }
        d->memory_bytes = v;
    } else if (strcmp(field, "context_overhead_bytes") == 0) {
        if (parse_u64(val, &v) != 0) {
            flexai_log("config line %d: %s: '%s' is not a byte count; using the default %llu",
                       line, key, val, (unsigned long long)FLEXAI_DEFAULT_CONTEXT_OVERHEAD);
            v = FLEXAI_DEFAULT_CONTEXT_OVERHEAD;
        }
        d->context_overhead = v;
    } else if (strcmp(field, "cores") == 0) {
        if (parse_u64(val, &v) != 0 || v > 100) {
            flexai_log("config line %d: %s: '%s' is not a percentage 0..100; no core limit on this vGPU",
                       line, key, val);
            v = 0;
        }
        d->cores = (uint32_t)v;
    } else if (strcmp(field, "core_offset") == 0) {
        if (parse_u64(val, &v) != 0 || v > 99) {
            flexai_log("config line %d: %s: '%s' is not a percentage 0..99; using 0", line, key, val);
            v = 0;
        }
        d->core_offset = (uint32_t)v;
    } else if (strcmp(field, "ref_clock_mhz") == 0) {
        if (parse_u64(val, &v) != 0 || v > 10000) {
            flexai_log("config line %d: %s: '%s' is not a clock in MHz; no clock normalisation",
                       line, key, val);
            v = 0;
        }
        d->ref_clock_mhz = (uint32_t)v;
    } else {
        flexai_log("config line %d: unknown field '%s'; ignored", line, key);
    }
}

void flexai_config_parse(const char *text, const char *origin, struct flexai_config *c)
{
    memset(c, 0, sizeof *c);
    c->period_ns = (uint64_t)FLEXAI_DEFAULT_PERIOD_MS * 1000000u;
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++)
        reset_device(&c->dev[i]);

    char *copy = strdup(text);
    if (copy == NULL)
        return;
    int line = 0, version_ok = 1;
    for (char *raw = copy, *next; raw != NULL; raw = next) {
        next = strchr(raw, '\n');
        if (next != NULL)
            *next++ = '\0';
        line++;
        char *s = trim(raw);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            flexai_log("config line %d: expected key=value, got '%s'; line ignored", line, s);
            continue;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        uint64_t v;
        if (strcmp(key, "version") == 0) {
            if (strcmp(val, "1") != 0) {
                flexai_log("config %s: version: '%s' is not supported (this hook reads 1); "
                           "running WITHOUT limits", origin, val);
                version_ok = 0;
            }
        } else if (strcmp(key, "region") == 0) {
            if (strlen(val) >= sizeof c->region_path)
                flexai_log("config line %d: region: path too long; using a private region", line);
            else
                snprintf(c->region_path, sizeof c->region_path, "%s", val);
        } else if (strcmp(key, "period_ms") == 0) {
            if (parse_u64(val, &v) != 0 || v < 5 || v > 10000) {
                flexai_log("config line %d: period_ms: '%s' is not 5..10000; using %d", line, val,
                           FLEXAI_DEFAULT_PERIOD_MS);
                v = FLEXAI_DEFAULT_PERIOD_MS;
            }
            c->period_ns = v * 1000000u;
        } else if (strncmp(key, "device.", 7) == 0) {
            set_device_field(c, line, key, val);
        } else {
            flexai_log("config line %d: unknown key '%s'; ignored", line, key);
        }
    }
    free(copy);

    if (!version_ok) {
        c->ndev = 0;
        return;
    }
    for (int i = 0; i < c->ndev; i++) {
        struct flexai_dev_config *d = &c->dev[i];
        if (d->uuid[0] == '\0' && d->cuda_index < 0) {
            flexai_log("config %s: device.%d has neither uuid nor cuda_index; it limits nothing",
                       origin, i);
            continue;
        }
        if (d->memory_bytes > 0)
            c->memory_limited = 1;
        if (d->cores > 0 && d->cores < 100)
            c->compute_limited = 1;
    }
}

static void load(void)
{
    const char *path = getenv("FLEXAI_VGPU_CONFIG");
    flexai_config_parse("", "(none)", &g_config);
    if (path == NULL || *path == '\0')
        return; /* documented: no config, no limits */
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        flexai_log("cannot read FLEXAI_VGPU_CONFIG=%s (%s); running WITHOUT limits", path,
                   strerror(errno));
        return;
    }
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int too_long = !feof(f);
    fclose(f);
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) {
        flexai_log("config %s: not text (NUL byte at offset %zu); running WITHOUT limits", path,
                   (size_t)((char *)memchr(buf, '\0', n) - buf));
        return;
    }
    if (too_long)
        flexai_log("config %s: longer than %zu bytes; the rest is ignored", path, sizeof buf - 1);
    flexai_config_parse(buf, path, &g_config);
}

const struct flexai_config *flexai_config(void)
{
    pthread_once(&g_once, load);
    return &g_config;
}
