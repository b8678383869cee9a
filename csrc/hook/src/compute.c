/*
 * compute.c: hold each vGPU to its share of the card's time.
 *
 * Design (why it is accurate): time is cut into periods of P ms (config
 * period_ms, default 50) on the wall clock, which every container of a node
 * shares. A vGPU with `cores` = c% and `core_offset` = o% may submit work only
 * inside its window [o%, o%+c%) of each period. Windows of vGPUs on one card
 * don't overlap (the device plugin assigns the offsets), so a 30% and a 70%
 * container take turns instead of time-slicing, and each gets exactly its
 * window whether it is alone on the card or not.
 *
 * What a window delivers is MEASURED, not guessed from NVML samples. The
 * launching thread records CUDA events into its own stream: START before the
 * first launch of a window, a marker every N launches (N adapted so markers
 * are ~0.5 ms of GPU work apart), and END before it first blocks on a closed
 * gate. Busy time is elapsed(segment start, newest completed marker), summed
 * over "segments": a segment ends when the GPU is found to have run out of
 * our work (all markers completed: ran_dry(), checked once after each marker,
 * at each new period and at a shut gate, never per launch), so the program's
 * own idle gaps never count as busy. After an END the GPU
 * drains during the closed part anyway, so the window's figure is exact,
 * including work that ran past the close.
 *
 * The error against the target (c% of P) feeds an integral controller
 * ("lead") that shortens or lengthens the next windows, so the total
 * delivered over any run is the target times the number of periods, give or
 * take one period's spill. An overspend larger than a window (one huge kernel
 * or graph) keeps whole windows shut until repaid. Unused time is credit,
 * capped at one window: a program under its share is rarely held at all,
 * while two greedy ones have no credit and take turns exactly. No booking
 * may exceed the wall time since the last one (a guard, not the mechanism).
 *
 * Queued work is bounded (at most ~4 ms, half a window, and the time left
 * until the close, of markers may be unfinished), so a throttled process
 * cannot queue seconds of work while its window is open, nor much past its
 * close into a neighbour's window, yet the CPU may still run ahead of the
 * GPU as frameworks expect.
 *
 * Optional throughput normalisation: a power-capped card runs faster when it
 * idles part of the time, so a c% time share yields more than c% of the
 * full-load throughput (H200: 30% of the time gave 35% of the work). With
 * `ref_clock_mhz` (the SM clock the card sustains at full load) in the
 * config, busy time is weighted by the speed-up the card's duty allows:
 *
 *     1 + E * (top clock / ref - 1) * min(1, (1 - duty) / (1 - KNEE))
 *
 * duty = our own measured busy fraction, or NVML's utilisation of the whole
 * card where that is 10 points higher (a card kept full by two tenants gains
 * nothing: their 3:7 stays 3:7), top clock = NVML's maximum SM clock. E and
 * KNEE were fitted on H200s (bench/results/hook-h200.md, runs 13-17, two
 * hosts): the speed per busy second of bf16 matmuls launched from Python and
 * of the same matmuls replayed as CUDA graphs follows this curve within ~2%,
 * alike for both. The NVML SM clock itself is no guide: under 90% limits it
 * read 1734 MHz under matmuls and 1604 under graphs that ran at nearly the
 * same speed per busy second (1.09 and 1.08 of full load). The pacer reads
 * NVML once per window, never on the launch path.
 *
 * Measured instead of fitted (issue 23): the node agent calibrates each card
 * (calibrate.c) and passes `speedup_pm`, the speed per busy second of a
 * clock-bound kernel at 10/30/50/70/90% duty over full load, and
 * `idle_power_mw`. Then the weight is 1 + (curve(duty) - 1) * gate, where
 * the gate (power_gate_pm) is 1 for work that would be held back by the
 * card's power limit at full load and 0 for work that would not (memory-bound
 * loops run at the top clock even unlimited: H100, an elementwise loop drew
 * 470 W of 700 at 1980 MHz), judged from the power the card draws while we
 * are busy. Without those figures, the ref_clock_mhz formula above.
 *
 * Threads and invariants:
 *   - the pacer thread only reads NVML and stores the gate word
 *     ((period << 1) | open); it never calls CUDA;
 *   - the launch path costs two atomic loads (gate, idle-check flag) and one
 *     fetch-add of a launch counter in the common case: no lock, syscall,
 *     clock read or NVML call. Everything else (events, stream queries,
 *     sleeping) is the slow path, taken once or twice per N launches, once
 *     per window, or when the gate is shut;
 *   - launches into a stream that is being captured into a graph are never
 *     delayed nor marked (they do not run); the graph is held when launched.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define RING 16              /* marker events per vGPU */
#define MAX_OUTSTANDING 8    /* unfinished markers allowed before the launcher waits (~4 ms) */
#define MARKER_NS 500000ull  /* aim: one marker per 0.5 ms of GPU work */
#define MAX_MARKER_EVERY 4096
#define MAX_QUEUED_NS 4000000ull /* at most ~4 ms of GPU work queued by a limited process */
#define SPEEDUP_E_PCT 70   /* E: share of the clock headroom that shows as speed (see top) */
#define SPEEDUP_KNEE_PCT 55 /* KNEE: full speed-up up to this duty */
#define CARD_MARGIN_PM 100  /* NVML's card utilisation counts only this far above ours */
#define GATE_FROM_PCT 85    /* busy power (% of the limit) from which the speed-up starts to count */
/* Integral gain 1/2: the error of window k is known only after window k+1
 * opened, and with that one period of delay a gain of 1 would oscillate
 * (poles on the unit circle); 1/2 settles in a few periods. */
#define GAIN_DIV 2
#define WAIT_LIMIT_NS 2000000000ull /* never wait longer than this on one event */
/* All markers done and no event recorded for this long: the GPU ran dry,
 * whatever cuStreamQuery says (see ran_dry()). */
#define QUIET_NS (2 * MAX_QUEUED_NS)

struct marker {
    CUevent ev;
    uint32_t launches; /* launches covered since the previous marker */
};

struct pace {
    /* --- read on the launch path ----------------------------------------- */
    _Atomic uint64_t gate;          /* (period << 1) | open; written by the pacer */
    _Atomic uint64_t seen_gate;     /* gate value whose window START was recorded */
    _Atomic uint32_t since_marker;  /* launches since the last marker */
    _Atomic uint32_t marker_every;  /* N */
    _Atomic uint32_t poke;          /* a marker was just recorded: check for idleness */
    /* --- pacer <-> launchers --------------------------------------------- */
    _Atomic int64_t lead_ns;        /* integral term: window = target - lead */
    _Atomic uint64_t next_open_ns;  /* wall-clock time the gate opens next */
    _Atomic uint64_t close_at_ns;   /* wall-clock time the open window closes */
    uint64_t period_ns, offset_ns, target_ns;
    int limited;
    _Atomic uint32_t top_mhz;       /* the card's top SM clock; 0 = unknown */
    _Atomic int card_busy_pct;      /* NVML's utilisation of the card at the last close; -1 = unknown */
    uint32_t ref_clock_mhz;         /* from the config; 0 = no normalisation */
    uint16_t curve_pm[FLEXAI_SPEEDUP_POINTS]; /* the card's measured speed-up by duty; [0] = 0: none */
    uint32_t idle_power_mw;         /* the card's idle power (calibration); 0 = unknown */
    _Atomic uint32_t power_mw;      /* NVML's average power at the last close; 0 = unknown */
    _Atomic uint32_t power_cap_mw;  /* the card's enforced power limit; 0 = unknown */
    _Atomic uint32_t gate_pm;       /* the last power gate, for $FLEXAI_DEBUG */
    /* --- slow path, under lock ------------------------------------------- */
    pthread_mutex_t lock;
    int events_ok;                  /* event pool created in this context */
    CUevent pool[RING];
    CUevent seg_ev;                 /* where the current busy segment began */
    struct marker ring[RING];
    int head, count;                /* outstanding markers, oldest at head */
    CUevent last_done;              /* most recent retired marker (for N) */
    uint32_t pending_launches;      /* launches since the last recorded marker */
    int in_window;                  /* a segment is open (since a START) */
    int have_end;                   /* the END of that window was recorded */
    uint64_t seg_ns;                /* elapsed(seg_ev, newest retired marker) */
    uint64_t closed_ns;             /* busy of the earlier segments since START */
    uint64_t booked_ns;             /* part of closed_ns + seg_ns already booked */
    uint64_t per_marker_ns;         /* GPU time between markers, smoothed */
    uint64_t last_book_ns;          /* wall clock of the last book() */
    uint64_t mark_ns;               /* wall clock of the last START or marker */
    uint32_t duty_pm;               /* our busy fraction, per mille, smoothed over ~4 bookings */
    /* --- statistics for $FLEXAI_DEBUG (slow path only) --------------------- */
    uint64_t windows, markers, timeouts, busy_max;
    _Atomic uint64_t skipped, idle;
    /* --- pacer-private --------------------------------------------------- */
    uint64_t cur_period;
    uint64_t close_ns;
    int open, open_prev;
    int slot;
};

_Atomic int flexai_compute_on = 1; /* cleared on first use if nothing is limited */

static struct pace g_pace[FLEXAI_MAX_DEVICES];
static int g_single_slot = -1;   /* the only slot this process can launch on, if any */
static _Atomic int g_pacer_running;
static pthread_mutex_t g_start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* wall clock: shared by every container of the node */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) != 0)
        ;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
    nanosleep(&ts, NULL);
}

/* ---- $FLEXAI_TRACE: a ring of slow-path events, written out at exit ------ */

#define TRACE_LEN 4096
static struct trace_rec {
    uint64_t t_ns;
    uint64_t value;
    int64_t lead_ns;
    uint32_t count;
    char what; /* S start, E end, I idle at the gate, N new segment, W wait timeout,
                  B busy measured (ns), D duty (per mille), C speed-up (per mille),
                  F busy booked (ns), P busy power estimate (W) */
} g_trace[TRACE_LEN];
static _Atomic uint32_t g_trace_n;
static int g_trace_on;

static void trace(struct pace *p, char what, uint64_t value)
{
    if (!g_trace_on)
        return;
    uint32_t i = atomic_fetch_add(&g_trace_n, 1) % TRACE_LEN;
    g_trace[i] = (struct trace_rec){now_ns(), value, atomic_load(&p->lead_ns), (uint32_t)p->count, what};
}

static void dump_trace(void)
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

/* With $FLEXAI_DEBUG: the first failures of the driver calls the pacing makes
 * itself, and of launches, on stderr (a capture that a call of ours would
 * invalidate shows here first). */
static int g_debug;
static _Atomic int g_errors_told;

void flexai_compute_note_error(const char *what, CUresult r)
{
    if (g_debug && atomic_fetch_add(&g_errors_told, 1) < 8)
        flexai_log("%s returned CUDA error %d", what, (int)r);
}

/* ---- pacer thread ------------------------------------------------------ */

/* lead += delta, but never below -target: unused time is credit for at most
 * one window, so an idle process cannot bank a long burst. */
static void steer(struct pace *p, int64_t delta)
{
    int64_t v = atomic_fetch_add(&p->lead_ns, delta) + delta;
    if (v < -(int64_t)p->target_ns)
        atomic_store(&p->lead_ns, -(int64_t)p->target_ns);
}


/* Advance one vGPU's gate to time `now`; returns the next time it changes. */
static uint64_t pace_step(struct pace *p, uint64_t now)
{
    uint64_t rel = now + p->period_ns - p->offset_ns; /* + P keeps it positive */
    uint64_t k = rel / p->period_ns;
    uint64_t open_at = k * p->period_ns + p->offset_ns - p->period_ns;
    if (k != p->cur_period) {
        /* The window that just ended was open but nobody launched in it:
         * unused share is credit (steer() caps it at one window). */
        if (p->open_prev && atomic_load(&p->seen_gate) != ((p->cur_period << 1) | 1) &&
            p->cur_period + 1 == k) {
            steer(p, -(int64_t)p->target_ns / GAIN_DIV);
            atomic_fetch_add(&p->idle, 1);
        }
        p->cur_period = k;
        int64_t window = (int64_t)p->target_ns - atomic_load(&p->lead_ns);
        if (window > (int64_t)p->period_ns)
            window = (int64_t)p->period_ns;
        if (window <= 0) {
            /* Still repaying an overspend: this window stays shut and counts as
             * delivering nothing (integral: lead += GAIN * (0 - target)). */
            atomic_fetch_sub(&p->lead_ns, (int64_t)p->target_ns / GAIN_DIV);
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
        if (p->ref_clock_mhz != 0 || p->curve_pm[0] != 0) {
            if (atomic_load(&p->top_mhz) == 0)
                atomic_store(&p->top_mhz, flexai_nvml_max_sm_clock(p->slot));
            atomic_store(&p->card_busy_pct, flexai_nvml_card_busy_pct(p->slot));
            if (p->curve_pm[0] != 0 && p->idle_power_mw != 0) {
                if (atomic_load(&p->power_cap_mw) == 0)
                    atomic_store(&p->power_cap_mw, flexai_nvml_power_mw(p->slot, 1));
                atomic_store(&p->power_mw, flexai_nvml_power_mw(p->slot, 0));
            }
        }
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
        uint64_t now = now_ns(), next = UINT64_MAX;
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
        uint64_t now = now_ns();
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
            flexai_log("compute vGPU %d: target %llu us per %llu us, %llu windows (%llu skipped, "
                       "%llu idle), %llu markers, %llu wait timeouts, max busy %llu us, lead %lld us, "
                       "marker every %u launches, duty %u/1000, card %d%%, clock %u/%u MHz, power %u mW of %u, "
                       "power gate %u/1000", i,
                       (unsigned long long)p->target_ns / 1000, (unsigned long long)p->period_ns / 1000,
                       (unsigned long long)p->windows, (unsigned long long)atomic_load(&p->skipped),
                       (unsigned long long)atomic_load(&p->idle), (unsigned long long)p->markers,
                       (unsigned long long)p->timeouts, (unsigned long long)p->busy_max / 1000,
                       (long long)atomic_load(&p->lead_ns) / 1000, atomic_load(&p->marker_every),
                       p->duty_pm, atomic_load(&p->card_busy_pct), atomic_load(&p->top_mhz), p->ref_clock_mhz,
                       atomic_load(&p->power_mw), atomic_load(&p->power_cap_mw), atomic_load(&p->gate_pm));
    }
    dump_trace();
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
    g_debug = getenv("FLEXAI_DEBUG") != NULL;
    if (!c->compute_limited) {
        atomic_store_explicit(&flexai_compute_on, 0, memory_order_relaxed);
        return;
    }
    reset_state();
    /* One vGPU and one visible device: the slot is a constant, so the launch
     * path needs no driver call to find it. */
    int n = 0;
    const struct flexai_driver *d = flexai_driver();
    if (c->ndev == 1 && d->device_get_count != NULL && d->device_get_count(&n) == CUDA_SUCCESS &&
        n == 1)
        g_single_slot = flexai_slot_of_device(0);
    pthread_atfork(NULL, NULL, in_child);
    g_trace_on = getenv("FLEXAI_TRACE") != NULL;
    if (getenv("FLEXAI_DEBUG") != NULL || g_trace_on)
        atexit(report);
}

/* ---- slow path (under p->lock) ------------------------------------------ */

static int capturing(CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) && d->stream_is_capturing_ptsz
                     ? d->stream_is_capturing_ptsz(s, &st)
                     : (d->stream_is_capturing ? d->stream_is_capturing(s, &st) : CUDA_SUCCESS);
    if (r != CUDA_SUCCESS)
        flexai_compute_note_error("cuStreamIsCapturing", r);
    return r != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* 1 if everything queued on `s` has completed: the GPU is idle for us now. */
static int stream_idle(CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) && d->stream_query_ptsz ? d->stream_query_ptsz(s)
                 : d->stream_query ? d->stream_query(s) : CUDA_ERROR_NOT_READY;
    return r == CUDA_SUCCESS;
}

/* Call after retire(p, 0). 1 if the GPU has run out of our work: every marker
 * completed, and the launches after the newest one (fewer than N, so at most
 * ~0.5 ms of work) are done too: none were made, or the stream says so, or
 * nothing was recorded for QUIET_NS. The last test does not trust
 * cuStreamQuery alone: on an H200, a process back from a 6 s barrier found its
 * stream "not ready" (work outside our launches, e.g. a library's memset) and
 * an END across the gap booked 7 s as busy. */
static int ran_dry(struct pace *p, CUstream s, int flags)
{
    if (p->count != 0)
        return 0;
    return atomic_load(&p->since_marker) == 0 || now_ns() - p->mark_ns > QUIET_NS || stream_idle(s, flags);
}

static int record(CUevent ev, CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) ? d->event_record_ptsz(ev, s) : d->event_record(ev, s);
    if (r != CUDA_SUCCESS)
        flexai_compute_note_error("cuEventRecord", r);
    return r == CUDA_SUCCESS;
}

static int ensure_events(struct pace *p)
{
    if (p->events_ok)
        return 1;
    const struct flexai_driver *d = flexai_driver();
    if (d->event_create == NULL || d->event_record == NULL || d->event_query == NULL ||
        d->event_elapsed == NULL)
        return 0;
    for (int i = 0; i < RING; i++)
        if (d->event_create(&p->pool[i], CU_EVENT_DEFAULT) != CUDA_SUCCESS)
            return 0;
    if (d->event_create(&p->seg_ev, CU_EVENT_DEFAULT) != CUDA_SUCCESS)
        return 0;
    p->events_ok = 1;
    return 1;
}

static uint64_t elapsed_ns(CUevent a, CUevent b)
{
    float ms = 0;
    if (flexai_driver()->event_elapsed(&ms, a, b) != CUDA_SUCCESS || ms < 0)
        return 0;
    return (uint64_t)((double)ms * 1e6);
}

/* Wait (bounded) until `ev` completed; 1 if it did. */
static int wait_event(CUevent ev)
{
    const struct flexai_driver *d = flexai_driver();
    uint64_t waited = 0, step = 20000;
    for (;;) {
        CUresult r = d->event_query(ev);
        if (r == CUDA_SUCCESS)
            return 1;
        if (r != CUDA_ERROR_NOT_READY || waited > WAIT_LIMIT_NS)
            return 0;
        sleep_ns(step);
        waited += step;
    }
}

/* Retire finished markers from the head; `block` waits for the oldest first. */
static void retire(struct pace *p, int block)
{
    while (p->count > 0) {
        struct marker *m = &p->ring[p->head];
        if (block) {
            block = 0;
            if (!wait_event(m->ev)) {
                p->timeouts++;
                trace(p, 'W', (uint64_t)p->count);
                break;
            }
        } else if (flexai_driver()->event_query(m->ev) != CUDA_SUCCESS) {
            break;
        }
        if (p->in_window) { /* markers older than seg_ev give 0 */
            uint64_t b = elapsed_ns(p->seg_ev, m->ev);
            if (b > p->seg_ns)
                p->seg_ns = b;
        }
        if (p->last_done != NULL && m->launches > 0) {
            uint64_t gap = elapsed_ns(p->last_done, m->ev);
            p->per_marker_ns = (3 * p->per_marker_ns + gap) / 4;
            uint64_t per = gap / m->launches;
            uint64_t n = per > 0 ? MARKER_NS / per : MAX_MARKER_EVERY;
            atomic_store(&p->marker_every, (uint32_t)(n < 1 ? 1 : n > MAX_MARKER_EVERY ? MAX_MARKER_EVERY : n));
        }
        p->last_done = m->ev;
        p->head = (p->head + 1) % RING;
        p->count--;
    }
}

/* Start a new busy segment here, before the launch about to happen. Called
 * only when everything we queued has completed, i.e. the GPU is idle (for
 * us) now: the idle time since must not count as busy. */
static void new_segment(struct pace *p, CUstream s, int flags)
{
    if (record(p->seg_ev, s, flags)) {
        trace(p, 'N', p->seg_ns);
        p->mark_ns = now_ns();
        p->closed_ns += p->seg_ns;
        p->seg_ns = 0;
        p->last_done = NULL;
        p->pending_launches = 0;
    }
}

/* Record a marker after what was launched on `s`; bound what is in flight. */
static void add_marker(struct pace *p, CUstream s, int flags)
{
    if (!ensure_events(p))
        return;
    retire(p, 0);
    if (p->count == RING)
        retire(p, 1);
    if (p->count == RING)
        return;
    int idx = (p->head + p->count) % RING;
    struct marker *m = &p->ring[idx];
    m->ev = p->pool[idx];
    if (m->ev == p->last_done)
        p->last_done = NULL; /* about to be re-recorded */
    if (!record(m->ev, s, flags))
        return;
    m->launches = p->pending_launches;
    p->mark_ns = now_ns();
    p->markers++;
    p->pending_launches = 0;
    p->count++;
    /* At most ~4 ms of work queued (and at most half a window): enough for
     * the CPU to run ahead, little to spill past a window's close. */
    uint64_t per = p->per_marker_ns ? p->per_marker_ns : MARKER_NS;
    uint64_t budget = p->target_ns / 2 < MAX_QUEUED_NS ? p->target_ns / 2 : MAX_QUEUED_NS;
    /* Nor past the close: what is queued then runs in the next tenant's
     * window, and that tenant books it as its own busy time (H200, 30/70
     * pair with 4 ms of spill allowed: 0.38 of the other's throughput
     * instead of 3:7). */
    uint64_t close = atomic_load(&p->close_at_ns);
    if (close > p->mark_ns && close - p->mark_ns < budget)
        budget = close - p->mark_ns;
    uint64_t max_out = budget / per;
    max_out = max_out < 2 ? 2 : max_out > MAX_OUTSTANDING ? MAX_OUTSTANDING : max_out;
    while ((uint64_t)p->count > max_out) {
        int before = p->count;
        retire(p, 1);
        if (p->count == before)
            break; /* waited too long: give up rather than hang the program */
    }
}

/* Per mille, 0..1000: how far this workload would be held back by the card's
 * power limit at full load, judged by the power it draws while busy. The card
 * slows down at full load only for work that would draw more than its limit
 * (bf16 matmuls on an H100: ~960 W estimated at the top clock against 700;
 * an elementwise loop: ~480 W, and it ran at the top clock unlimited), so only
 * such work runs faster per busy second when it idles. Busy power comes from
 * NVML's average power and our duty: idle + (average - idle) / duty. 1000
 * without the figures. */
static uint64_t power_gate_pm(struct pace *p, uint64_t duty)
{
    uint64_t avg = atomic_load(&p->power_mw), cap = atomic_load(&p->power_cap_mw), idle = p->idle_power_mw;
    if (avg == 0 || cap == 0 || idle == 0 || idle >= cap)
        return 1000;
    uint64_t d = duty < 50 ? 50 : duty;
    uint64_t busy = idle + (avg > idle ? (avg - idle) * 1000 / d : 0);
    uint64_t lo = cap * GATE_FROM_PCT / 100;
    uint64_t gate = busy <= lo ? 0 : busy >= cap ? 1000 : (busy - lo) * 1000 / (cap - lo);
    trace(p, 'P', busy / 1000);
    atomic_store(&p->gate_pm, (uint32_t)gate);
    return gate;
}

/* The card's measured speed-up at `duty` (per mille of duty), interpolated
 * between its points at 10, 30, 50, 70 and 90%, and 1000 at full duty. */
static uint64_t curve_at(const uint16_t *curve, uint64_t duty)
{
    static const uint64_t at[FLEXAI_SPEEDUP_POINTS + 1] = {100, 300, 500, 700, 900, 1000};
    if (duty <= at[0])
        return curve[0];
    for (int i = 0; i < FLEXAI_SPEEDUP_POINTS; i++) {
        int64_t y0 = curve[i], y1 = i + 1 < FLEXAI_SPEEDUP_POINTS ? curve[i + 1] : 1000;
        if (duty <= at[i + 1])
            return (uint64_t)(y0 + (y1 - y0) * (int64_t)(duty - at[i]) / (int64_t)(at[i + 1] - at[i]));
    }
    return 1000;
}

/* Per mille: how much more a busy ns of ours delivers than one at full load
 * (see the top of the file); 1000 without the card's figures or NVML. */
static uint64_t speedup_pm(struct pace *p)
{
    uint32_t top = atomic_load(&p->top_mhz);
    if (p->curve_pm[0] == 0 && (p->ref_clock_mhz == 0 || top <= p->ref_clock_mhz))
        return 1000;
    /* NVML reads a card a few points busier than it is (a sample period with
     * any kernel in it counts); beyond that margin, others are using it. */
    int card = atomic_load(&p->card_busy_pct);
    uint64_t duty = card * 10 > (int)p->duty_pm + CARD_MARGIN_PM ? (uint64_t)card * 10 : p->duty_pm;
    uint64_t pm;
    if (p->curve_pm[0] != 0) {
        /* The calibration kernel moves data and multiplies matrices like a
         * matmul: its measured speed-up is taken as the workload's. */
        uint64_t c = curve_at(p->curve_pm, duty);
        pm = 1000 + (c > 1000 ? (c - 1000) * power_gate_pm(p, duty) / 1000 : 0);
    } else {
        uint64_t room = (uint64_t)SPEEDUP_E_PCT * 10 * (top - p->ref_clock_mhz) / p->ref_clock_mhz;
        uint64_t scale = (1000 - duty) * 1000 / (1000 - SPEEDUP_KNEE_PCT * 10);
        pm = 1000 + room * (scale > 1000 ? 1000 : scale) / 1000;
    }
    trace(p, 'D', duty);
    trace(p, 'C', pm);
    return pm;
}

/* Book the busy time measured since the last booking to this period: usage
 * for gpu-monitor, and the integral controller (over the target shortens the
 * next windows, under it lengthens them, up to one window of credit). */
static void book(struct pace *p, int slot)
{
    uint64_t total = p->closed_ns + p->seg_ns;
    uint64_t busy = total > p->booked_ns ? total - p->booked_ns : 0;
    p->booked_ns = total;
    /* Never more GPU time than wall time since the last booking: a guard
     * against any idle gap the segments failed to exclude. */
    uint64_t now = now_ns(), wall = p->last_book_ns ? now - p->last_book_ns : p->period_ns;
    p->last_book_ns = now;
    if (busy > wall)
        busy = wall;
    trace(p, 'B', busy);
    /* Our busy fraction, smoothed over ~4 bookings (busy <= wall: at most 1000). */
    p->duty_pm = (uint32_t)((3 * (uint64_t)p->duty_pm + (wall ? busy * 1000 / wall : 1000)) / 4);
    busy = busy * speedup_pm(p) / 1000;
    flexai_region_add_busy(slot, busy);
    p->windows++;
    if (busy > p->busy_max)
        p->busy_max = busy;
    trace(p, 'F', busy);
    steer(p, ((int64_t)busy - (int64_t)p->target_ns) / GAIN_DIV);
}

/* The program hit the closed gate (END) and is now past it: the GPU drained
 * during the gap, so waiting for the last markers costs nothing and makes the
 * window's figure exact. */
static void finish_window(struct pace *p, int slot)
{
    if (!p->in_window)
        return;
    while (p->count > 0) {
        int before = p->count;
        retire(p, 1);
        if (p->count == before)
            break;
    }
    book(p, slot);
    p->in_window = 0;
    p->have_end = 0;
    p->seg_ns = p->closed_ns = p->booked_ns = 0;
}

static void gate_slow(struct pace *p, int slot, CUstream s, int flags)
{
    if (!g_pacer_running)
        start_pacer();
    pthread_mutex_lock(&p->lock);
    if (capturing(s, flags)) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    for (;;) {
        uint64_t g = atomic_load_explicit(&p->gate, memory_order_acquire);
        if (g == atomic_load(&p->seen_gate))
            break; /* another thread already opened this window */
        if ((g & 1) == 0) {
            if (p->in_window && !p->have_end && ensure_events(p)) {
                retire(p, 0);
                if (ran_dry(p, s, flags)) {
                    /* Everything we queued completed before this launch: the
                     * program sat idle (a barrier, a sleep) and the busy
                     * segment ended at its last marker. An END recorded now
                     * would count that whole gap as busy. */
                    trace(p, 'I', 0);
                } else {
                    add_marker(p, s, flags);
                    trace(p, 'E', (uint64_t)p->count);
                }
                p->have_end = 1;
            }
            pthread_mutex_unlock(&p->lock);
            uint64_t t = atomic_load(&p->next_open_ns), now = now_ns();
            if (t > now)
                sleep_until(t);
            else
                sleep_ns(50000); /* the pacer is about to flip the gate */
            pthread_mutex_lock(&p->lock);
            continue;
        }
        if (p->in_window && !p->have_end) {
            /* Open straight into open: the segment goes on (nothing drained,
             * nothing to wait for); book what completed in the last period. */
            retire(p, 0);
            book(p, slot);
            if (ran_dry(p, s, flags)) /* idle since: restart at this launch */
                new_segment(p, s, flags);
        } else {
            finish_window(p, slot);
            if (ensure_events(p) && record(p->seg_ev, s, flags)) {
                p->in_window = 1;
                p->mark_ns = now_ns();
                atomic_store(&p->since_marker, 0); /* earlier launches: last window's */
                p->last_done = NULL;
                /* The next launch checks whether the stream ran dry after
                 * this one, as after a marker: an idle gap early in a window
                 * must not count either. */
                atomic_store(&p->poke, 1);
                trace(p, 'S', g >> 1);
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
    if (atomic_exchange(&p->poke, 0) && p->in_window && p->events_ok && !capturing(s, flags)) {
        retire(p, 0);
        if (ran_dry(p, s, flags))
            new_segment(p, s, flags);
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
    if (!capturing(stream, flags)) {
        p->pending_launches += launches;
        add_marker(p, stream, flags);
        atomic_store(&p->poke, 1); /* at the next launch: did the GPU run dry meanwhile? */
    }
    pthread_mutex_unlock(&p->lock);
}
