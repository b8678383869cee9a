/*
 * config.c: read the vGPU limits once per process.
 *
 * The device plugin writes a small key=value file (format in README.md,
 * writer in flexai_node/hook/config.py) and points $FLEXAI_VGPU_CONFIG at it.
 * Invariants:
 *   - read exactly once (pthread_once); afterwards the struct is immutable,
 *     so every other module reads it without locks;
 *   - no config (variable unset or empty) = no vGPU = the hook passes every
 *     call straight through;
 *   - fails closed: a config that is named but missing, unreadable or wrong in
 *     any line sets `closed` (cuInit then refuses: the program gets no GPU),
 *     and each problem is reported on stderr with the file, line and reason.
 *     A limit that silently fell back to "none" would hand a tenant the card.
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

/* Report one problem of the config; it closes the config. */
static void bad(struct flexai_config *c, const char *origin, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void bad(struct flexai_config *c, const char *origin, int line, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        flexai_log("config %s line %d: %s", origin, line, msg);
    else
        flexai_log("config %s: %s", origin, msg);
    c->closed++;
}

/* One "device.N.field=value" assignment. */
static void set_device_field(struct flexai_config *c, const char *origin, int line, const char *key,
                             const char *val)
{
    char *end;
    long idx = strtol(key + 7, &end, 10);
    if (end == key + 7 || *end != '.' || idx < 0 || idx >= FLEXAI_MAX_DEVICES) {
        bad(c, origin, line, "'%s': device index must be 0..%d", key, FLEXAI_MAX_DEVICES - 1);
        return;
    }
    struct flexai_dev_config *d = &c->dev[idx];
    const char *field = end + 1;
    uint64_t v;
    if (idx >= c->ndev)
        c->ndev = (int)idx + 1;

    if (strcmp(field, "uuid") == 0) {
        if (strlen(val) >= FLEXAI_UUID_LEN || strncmp(val, "GPU-", 4) != 0)
            bad(c, origin, line, "%s: '%s' is not a GPU UUID (GPU-...)", key, val);
        else
            snprintf(d->uuid, sizeof d->uuid, "%s", val);
    } else if (strcmp(field, "cuda_index") == 0) {
        if (parse_u64(val, &v) != 0 || v > 1023)
            bad(c, origin, line, "%s: '%s' is not a device ordinal 0..1023", key, val);
        else
            d->cuda_index = (int)v;
    } else if (strcmp(field, "memory_bytes") == 0) {
        if (parse_u64(val, &v) != 0)
            bad(c, origin, line, "%s: '%s' is not a byte count", key, val);
        else
            d->memory_bytes = v;
    } else if (strcmp(field, "context_overhead_bytes") == 0) {
        if (parse_u64(val, &v) != 0)
            bad(c, origin, line, "%s: '%s' is not a byte count", key, val);
        else
            d->context_overhead = v;
    } else if (strcmp(field, "cores") == 0) {
        if (parse_u64(val, &v) != 0 || v > 100)
            bad(c, origin, line, "%s: '%s' is not a percentage 0..100", key, val);
        else
            d->cores = (uint32_t)v;
    } else if (strcmp(field, "core_offset") == 0) {
        if (parse_u64(val, &v) != 0 || v > 99)
            bad(c, origin, line, "%s: '%s' is not a percentage 0..99", key, val);
        else
            d->core_offset = (uint32_t)v;
    } else if (strcmp(field, "ref_clock_mhz") == 0) {
        if (parse_u64(val, &v) != 0 || v > 10000)
            bad(c, origin, line, "%s: '%s' is not a clock in MHz 0..10000", key, val);
        else
            d->ref_clock_mhz = (uint32_t)v;
    } else if (strcmp(field, "speedup_pm") == 0) {
        if (flexai_config_parse_speedup(val, d->speedup_pm) != 0) {
            bad(c, origin, line, "%s: '%s' is not %d per-mille speeds 1000..3000", key, val,
                FLEXAI_SPEEDUP_POINTS);
            memset(d->speedup_pm, 0, sizeof d->speedup_pm);
        }
    } else if (strcmp(field, "idle_power_mw") == 0) {
        if (parse_u64(val, &v) != 0 || v > 10000000)
            bad(c, origin, line, "%s: '%s' is not a power in mW 0..10000000", key, val);
        else
            d->idle_power_mw = (uint32_t)v;
    } else if (strcmp(field, "gap_power_mw") == 0) {
        if (parse_u64(val, &v) != 0 || v > 10000000)
            bad(c, origin, line, "%s: '%s' is not a power in mW 0..10000000", key, val);
        else
            d->gap_power_mw = (uint32_t)v;
    } else {
        bad(c, origin, line, "unknown field '%s'", key);
    }
}

int flexai_config_parse_speedup(const char *val, uint16_t out[FLEXAI_SPEEDUP_POINTS])
{
    const char *p = val;
    for (int i = 0; i < FLEXAI_SPEEDUP_POINTS; i++) {
        char *end;
        if (*p < '0' || *p > '9')
            return -1;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (errno != 0 || v < 1000 || v > 3000)
            return -1;
        out[i] = (uint16_t)v;
        p = end;
        if (i + 1 < FLEXAI_SPEEDUP_POINTS) {
            if (*p != ',')
                return -1;
            p++;
        }
    }
    return *p == '\0' ? 0 : -1;
}

int flexai_config_parse(const char *text, const char *origin, struct flexai_config *c)
{
    memset(c, 0, sizeof *c);
    c->period_ns = (uint64_t)FLEXAI_DEFAULT_PERIOD_MS * 1000000u;
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++)
        reset_device(&c->dev[i]);

    char *copy = strdup(text);
    if (copy == NULL) {
        bad(c, origin, 0, "out of memory");
        return c->closed;
    }
    int line = 0, version_line = 0;
    for (char *raw = copy, *next; raw != NULL; raw = next) {
        next = strchr(raw, '\n');
        if (next != NULL)
            *next++ = '\0';
        line++;
        char *hash = strchr(raw, '#'); /* a comment runs from '#' to the end of the line */
        if (hash != NULL)
            *hash = '\0';
        char *s = trim(raw);
        if (*s == '\0')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            bad(c, origin, line, "expected key=value, got '%s'", s);
        } else {
            *eq = '\0';
            char *key = trim(s), *val = trim(eq + 1);
            uint64_t v;
            if (strcmp(key, "version") == 0) {
                version_line = line;
                if (strcmp(val, "1") != 0)
                    bad(c, origin, line, "version: '%s' is not supported (this hook reads 1)", val);
            } else if (strcmp(key, "region") == 0) {
                if (strlen(val) >= sizeof c->region_path)
                    bad(c, origin, line, "region: path longer than %zu bytes", sizeof c->region_path - 1);
                else if (val[0] == '\0')
                    bad(c, origin, line, "region: empty path (leave the key out for a private region)");
                else
                    snprintf(c->region_path, sizeof c->region_path, "%s", val);
            } else if (strcmp(key, "period_ms") == 0) {
                if (parse_u64(val, &v) != 0 || v < 5 || v > 10000)
                    bad(c, origin, line, "period_ms: '%s' is not 5..10000", val);
                else
                    c->period_ns = v * 1000000u;
            } else if (strncmp(key, "device.", 7) == 0) {
                set_device_field(c, origin, line, key, val);
            } else {
                bad(c, origin, line, "unknown key '%s'", key);
            }
        }
    }
    free(copy);

    if (version_line == 0)
        bad(c, origin, 0, "no version line (expected version=1)");
    for (int i = 0; i < c->ndev; i++) {
        struct flexai_dev_config *d = &c->dev[i];
        if (d->uuid[0] == '\0' && d->cuda_index < 0) {
            bad(c, origin, 0, "device.%d has neither uuid nor cuda_index", i);
            continue;
        }
        if (d->memory_bytes > 0)
            c->memory_limited = 1;
        if (d->cores > 0 && d->cores < 100)
            c->compute_limited = 1;
    }
    if (c->closed > 0) {
        c->ndev = 0;
        c->memory_limited = c->compute_limited = 0;
    }
    return c->closed;
}

int flexai_config_load(const char *path, struct flexai_config *c)
{
    flexai_config_parse("version=1", "(none)", c);
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        flexai_log("config %s: cannot read it (%s)", path, strerror(errno));
        return ++c->closed;
    }
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int too_long = !feof(f);
    fclose(f);
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) {
        flexai_log("config %s: not text (NUL byte at offset %zu)", path,
                   (size_t)((char *)memchr(buf, '\0', n) - buf));
        return ++c->closed;
    }
    if (too_long) {
        flexai_log("config %s: longer than %zu bytes", path, sizeof buf - 1);
        return ++c->closed;
    }
    return flexai_config_parse(buf, path, c);
}

static void load(void)
{
    const char *path = getenv("FLEXAI_VGPU_CONFIG");
    if (path == NULL || *path == '\0') {
        flexai_config_parse("version=1", "(none)", &g_config);
        return; /* documented: no config, no limits */
    }
    if (flexai_config_load(path, &g_config) > 0) {
        flexai_log("config %s is not usable: CUDA is disabled for this process (no GPU) until it "
                   "is fixed",
                   path);
        g_config.ndev = 0;
    }
}

const struct flexai_config *flexai_config(void)
{
    pthread_once(&g_once, load);
    return &g_config;
}
