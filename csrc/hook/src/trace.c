/*
 * trace.c: $FLEXAI_TRACE, a ring of the pacer's slow-path events (window
 * starts and ends, busy time measured and booked, ...) written to the named
 * file at exit, to see what the pacing did on a real card.
 *
 * Invariants: off (one predictable branch) unless $FLEXAI_TRACE is set;
 * recording is one fetch-add and a store, no lock or syscall beyond reading
 * the clock; never called on the launch path's fast case.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pace.h"

#define TRACE_LEN 4096

static struct trace_rec {
    uint64_t t_ns;
    uint64_t value;
    int64_t lead_ns;
    uint32_t count;
    char what; /* see flexai_trace() in pace.h */
} g_trace[TRACE_LEN];
static _Atomic uint32_t g_trace_n;
static int g_trace_on;

int flexai_trace_init(void)
{
    g_trace_on = getenv("FLEXAI_TRACE") != NULL;
    return g_trace_on;
}

void flexai_trace(const struct pace *p, char what, uint64_t value)
{
    if (!g_trace_on)
        return;
    uint32_t i = atomic_fetch_add(&g_trace_n, 1) % TRACE_LEN;
    g_trace[i] = (struct trace_rec){flexai_pace_now_ns(), value, atomic_load(&p->lead_ns), (uint32_t)p->count,
                                    what};
}

void flexai_trace_dump(void)
{
    const char *path = getenv("FLEXAI_TRACE");
    if (!g_trace_on || path == NULL)
        return;
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return;
    uint32_t n = atomic_load(&g_trace_n), first = n > TRACE_LEN ? n - TRACE_LEN : 0;
    for (uint32_t i = first; i < n; i++) {
        struct trace_rec *r = &g_trace[i % TRACE_LEN];
        fprintf(f, "%llu %c %llu lead=%lld count=%u\n", (unsigned long long)(r->t_ns / 1000), r->what,
                (unsigned long long)r->value, (long long)r->lead_ns / 1000, r->count);
    }
    fclose(f);
}
