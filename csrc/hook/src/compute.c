/*
 * compute.c: hold each vGPU to its share of the card's time: the gate, the
 * pacer thread that moves it, and the launch path that obeys it.
 *
 * Time is cut into periods of P ms (config period_ms, default 50) on the
 * wall clock, which every container of a node shares. A vGPU with `cores` =
 * c% and `core_offset` = o% may submit work only inside its window
 * [o%, o%+c%) of each period. Windows of vGPUs on one card don't overlap
 * (the device plugin assigns the offsets), so a 30% and a 70% container take
 * turns instead of time-slicing, and each gets exactly its window whether it
 * is alone on the card or not. What a window delivered is measured (meter.c),
 * weighted (speedup.c) and fed back into the next windows' length
 * (controller.c); pace.h describes the shared state.
 *
 * Threads and invariants:
 *   - the pacer thread only reads NVML and stores the gate word
 *     ((period << 1) | open); it never calls CUDA;
 *   - no locks or syscalls on the launch path: it costs two atomic loads
 *     (gate, idle-check flag) and one fetch-add of a launch counter in the
 *     common case, no clock read or NVML call. Everything else (events,
 *     stream queries, sleeping) is the slow path, taken once or twice per N
 *     launches, once per window, or when the gate is shut;
 *   - launches into a stream that is being captured into a graph are never
 *     delayed nor marked (they do not run); the graph is held when launched.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pace.h"

_Atomic int flexai_compute_on = 1; /* cleared on first use if nothing is limited */

static struct pace g_pace[FLEXAI_MAX_DEVICES];
static int g_single_slot = -1; /* the only slot this process can launch on, if any */
static _Atomic int g_pacer_running;
static pthread_mutex_t g_start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) != 0)
        ;
}

/* ---- pacer thread ------------------------------------------------------ */

/* Advance one vGPU's gate to time `now`; returns the next time it changes. */
static uint64_t pace_step(struct pace *p, uint64_t now)
{
    uint64_t rel = now + p->period_ns - p->offset_ns; /* + P keeps it positive */
    uint64_t k = rel / p->period_ns;
    uint64_t open_at = k * p->period_ns + p->offset_ns - p->period_ns;
    if (k != p->cur_period) {
        /* The window that just ended was open but nobody launched in it:
         * unused share is credit (capped at one window). */
        if (p->open_prev && atomic_load(&p->seen_gate) != ((p->cur_period << 1) | 1) &&
            p->cur_period + 1 == k) {
            flexai_ctl_unused_window(p);
            atomic_fetch_add(&p->idle, 1);
        }
        p->cur_period = k;
        int64_t window = flexai_ctl_window_ns(p);
        if (window <= 0) {
            /* Still repaying an overspend: this window stays shut. */
            flexai_ctl_skipped_window(p);
            atomic_fetch_add(&p->skipped, 1);
            p->open = 0;
            p->open_prev = 0;
        } else {
            p->open = 1;
            p->open_prev = 1;
            p->close_ns = open_at + (uint64_t)window;
            atomic_store(&p->close_at_ns, p->close_ns);
        }
    }
    if (p->open && now >= p->close_ns) {
        p->open = 0;
        flexai_speedup_sample(p);
    }
    atomic_store(&p->next_open_ns, open_at + p->period_ns);
    atomic_store_explicit(&p->gate, (k << 1) | (uint64_t)p->open, memory_order_release);
    return p->open ? p->close_ns : open_at + p->period_ns;
}

static void *pacer_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the program's threads */
    for (;;) {
        uint64_t now = flexai_pace_now_ns(), next = UINT64_MAX;
        for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
            if (!g_pace[i].limited)
                continue;
            uint64_t t = pace_step(&g_pace[i], now);
            if (t < next)
                next = t;
        }
        if (next == UINT64_MAX)
            next = now + 1000000000ull;
        sleep_until(next);
    }
    return NULL;
}

static void start_pacer(void)
{
    pthread_mutex_lock(&g_start_lock);
    if (!g_pacer_running) {
        uint64_t now = flexai_pace_now_ns();
        for (int i = 0; i < FLEXAI_MAX_DEVICES; i++)
            if (g_pace[i].limited)
                pace_step(&g_pace[i], now); /* valid gate before the first launch */
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, pacer_main, NULL) == 0)
            g_pacer_running = 1;
        else
            flexai_log("cannot start the compute pacer thread; compute is not limited");
        pthread_attr_destroy(&a);
    }
    pthread_mutex_unlock(&g_start_lock);
}

/* ---- setup -------------------------------------------------------------- */

static void reset_state(void)
{
    const struct flexai_config *c = flexai_config();
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
        struct pace *p = &g_pace[i];
        memset(p, 0, sizeof *p);
        pthread_mutex_init(&p->lock, NULL);
        atomic_store(&p->seen_gate, UINT64_MAX); /* no gate value equals it: first launch goes slow */
        if (i >= c->ndev || c->dev[i].cores == 0 || c->dev[i].cores >= 100)
            continue;
        p->limited = 1;
        p->slot = i;
        p->ref_clock_mhz = c->dev[i].ref_clock_mhz;
        memcpy(p->curve_pm, c->dev[i].speedup_pm, sizeof p->curve_pm);
        p->idle_power_mw = c->dev[i].idle_power_mw;
        p->gap_power_mw = c->dev[i].gap_power_mw;
        atomic_store(&p->gate_pm, 1000);
        atomic_store(&p->card_busy_pct, -1);
        p->period_ns = c->period_ns;
        p->target_ns = c->period_ns * c->dev[i].cores / 100;
        p->offset_ns = c->period_ns * c->dev[i].core_offset / 100;
        p->cur_period = UINT64_MAX;
        atomic_store(&p->marker_every, 8);
    }
}

static void report(void)
{
    for (int i = 0; i < FLEXAI_MAX_DEVICES; i++) {
        struct pace *p = &g_pace[i];
        if (p->limited)
            flexai_log(
                "compute vGPU %d: target %llu us per %llu us, %llu windows (%llu skipped, "
                "%llu idle), %llu markers, %llu wait timeouts, max busy %llu us, lead %lld us, "
                "marker every %u launches, duty %u/1000, card %d%%, clock %u/%u MHz, power %u mW of %u "
                "(gap %u), power gate %u/1000",
                i, (unsigned long long)p->target_ns / 1000, (unsigned long long)p->period_ns / 1000,
                (unsigned long long)p->windows, (unsigned long long)atomic_load(&p->skipped),
                (unsigned long long)atomic_load(&p->idle), (unsigned long long)p->markers,
                (unsigned long long)p->timeouts, (unsigned long long)p->busy_max / 1000,
                (long long)atomic_load(&p->lead_ns) / 1000, atomic_load(&p->marker_every), p->duty_pm,
                atomic_load(&p->card_busy_pct), atomic_load(&p->top_mhz), p->ref_clock_mhz,
                atomic_load(&p->power_mw), atomic_load(&p->power_cap_mw), p->gap_power_mw,
                atomic_load(&p->gate_pm));
    }
    flexai_trace_dump();
}

static void in_child(void)
{
    /* The pacer thread and the events do not survive fork(). */
    g_pacer_running = 0;
    pthread_mutex_init(&g_start_lock, NULL);
    reset_state();
}

static void init(void)
{
    const struct flexai_config *c = flexai_config();
    if (!c->compute_limited) {
        atomic_store_explicit(&flexai_compute_on, 0, memory_order_relaxed);
        return;
    }
    reset_state();
    /* One vGPU and one visible device: the slot is a constant, so the launch
     * path needs no driver call to find it. */
    int n = 0;
    const struct flexai_driver *d = flexai_driver();
    if (c->ndev == 1 && d->device_get_count != NULL && d->device_get_count(&n) == CUDA_SUCCESS && n == 1)
        g_single_slot = flexai_slot_of_device(0);
    pthread_atfork(NULL, NULL, in_child);
    if (flexai_trace_init() || getenv("FLEXAI_DEBUG") != NULL)
        atexit(report);
}

static void gate_slow(struct pace *p, int slot, CUstream s, int flags)
{
    if (!g_pacer_running)
        start_pacer();
    pthread_mutex_lock(&p->lock);
    if (flexai_meter_capturing(s, flags)) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    for (;;) {
        uint64_t g = atomic_load_explicit(&p->gate, memory_order_acquire);
        if (g == atomic_load(&p->seen_gate))
            break; /* another thread already opened this window */
        if ((g & 1) == 0) {
            if (p->in_window && !p->have_end && flexai_meter_ensure_events(p)) {
                flexai_meter_retire(p, 0);
                if (flexai_meter_ran_dry(p, s, flags)) {
                    /* Everything we queued completed before this launch: the
                     * program sat idle (a barrier, a sleep) and the busy
                     * segment ended at its last marker. An END recorded now
                     * would count that whole gap as busy. */
                    flexai_trace(p, 'I', 0);
                } else {
                    flexai_meter_add_marker(p, s, flags);
                    flexai_trace(p, 'E', (uint64_t)p->count);
                }
                p->have_end = 1;
            }
            pthread_mutex_unlock(&p->lock);
            uint64_t t = atomic_load(&p->next_open_ns), now = flexai_pace_now_ns();
            if (t > now)
                sleep_until(t);
            else
                flexai_pace_sleep_ns(50000); /* the pacer is about to flip the gate */
            pthread_mutex_lock(&p->lock);
            continue;
        }
        if (p->in_window && !p->have_end) {
            /* Open straight into open: the segment goes on (nothing drained,
             * nothing to wait for); book what completed in the last period. */
            flexai_meter_retire(p, 0);
            flexai_ctl_book(p, slot);
            if (flexai_meter_ran_dry(p, s, flags)) /* idle since: restart at this launch */
                flexai_meter_new_segment(p, s, flags);
        } else {
            flexai_meter_finish_window(p, slot);
            if (flexai_meter_ensure_events(p) && flexai_meter_record(p->seg_ev, s, flags)) {
                p->in_window = 1;
                p->mark_ns = flexai_pace_now_ns();
                atomic_store(&p->since_marker, 0); /* earlier launches: last window's */
                p->last_done = NULL;
                /* The next launch checks whether the stream ran dry after
                 * this one, as after a marker: an idle gap early in a window
                 * must not count either. */
                atomic_store(&p->poke, 1);
                flexai_trace(p, 'S', g >> 1);
            }
        }
        atomic_store(&p->seen_gate, g);
        break;
    }
    pthread_mutex_unlock(&p->lock);
}

/* First launch after a marker: if the GPU has run dry (everything we queued
 * completed), it sat idle before this launch; the busy segment ends there and
 * a new one starts here, so the idle gap is not counted. A program that keeps
 * its queue full has a marker outstanding: one event query, nothing more. */
static void idle_check(struct pace *p, CUstream s, int flags)
{
    pthread_mutex_lock(&p->lock);
    if (atomic_exchange(&p->poke, 0) && p->in_window && p->events_ok && !flexai_meter_capturing(s, flags)) {
        flexai_meter_retire(p, 0);
        if (flexai_meter_ran_dry(p, s, flags))
            flexai_meter_new_segment(p, s, flags);
    }
    pthread_mutex_unlock(&p->lock);
}

/* ---- launch path -------------------------------------------------------- */

static inline struct pace *pace_for_launch(int *slot)
{
    int s = g_single_slot >= 0 ? g_single_slot : flexai_slot_of_current();
    if (s < 0 || !g_pace[s].limited)
        return NULL;
    *slot = s;
    return &g_pace[s];
}

void flexai_compute_before_launch(CUstream stream, int flags)
{
    pthread_once(&g_once, init);
    if (!atomic_load_explicit(&flexai_compute_on, memory_order_relaxed))
        return;
    int slot;
    struct pace *p = pace_for_launch(&slot);
    if (p == NULL)
        return;
    if (FLEXAI_UNLIKELY(atomic_load_explicit(&p->poke, memory_order_relaxed)))
        idle_check(p, stream, flags);
    uint64_t g = atomic_load_explicit(&p->gate, memory_order_acquire);
    if (FLEXAI_UNLIKELY(g != atomic_load_explicit(&p->seen_gate, memory_order_relaxed)))
        gate_slow(p, slot, stream, flags);
}

void flexai_compute_after_launch(CUstream stream, int flags)
{
    if (!atomic_load_explicit(&flexai_compute_on, memory_order_relaxed))
        return;
    int slot;
    struct pace *p = pace_for_launch(&slot);
    if (p == NULL)
        return;
    uint32_t n = atomic_fetch_add_explicit(&p->since_marker, 1, memory_order_relaxed) + 1;
    if (FLEXAI_LIKELY(!(flags & FLEXAI_LAUNCH_GRAPH) &&
                      n < atomic_load_explicit(&p->marker_every, memory_order_relaxed)))
        return;
    pthread_mutex_lock(&p->lock);
    uint32_t launches = atomic_exchange(&p->since_marker, 0);
    if (!flexai_meter_capturing(stream, flags)) {
        p->pending_launches += launches;
        flexai_meter_add_marker(p, stream, flags);
        atomic_store(&p->poke, 1); /* at the next launch: did the GPU run dry meanwhile? */
    }
    pthread_mutex_unlock(&p->lock);
}
