/*
 * meter.c: measure the GPU time a vGPU's window delivered, with CUDA events
 * in the launching thread's own stream.
 *
 * START is recorded before the first launch of a window, a marker every N
 * launches (N adapted so markers are ~0.5 ms of GPU work apart), and END
 * before the program first blocks on a closed gate. Busy time is
 * elapsed(segment start, newest completed marker), summed over segments: a
 * segment ends when the GPU has run out of our work (ran_dry: all
 * markers completed; checked after each marker, at a new period and at a shut gate,
 * never per launch), so the program's own idle gaps never count as busy.
 * After an END the GPU drains while the gate is shut, so the window's figure
 * is exact, including work that ran past the close.
 *
 * Queued work is bounded (at most ~4 ms, half a window, and the time left
 * until the close, of markers may be unfinished): a throttled process cannot
 * queue seconds of work while its window is open, nor much past its close
 * into a neighbour's window, yet the CPU may still run ahead of the GPU as
 * frameworks expect.
 *
 * Invariants: everything here runs under p->lock on the slow path (once or
 * twice per N launches, once per window, or at a shut gate); waits are
 * bounded (WAIT_LIMIT_NS) so a hung event never hangs the program; a stream
 * being captured into a graph is never recorded on.
 */
#include "pace.h"

#define MAX_OUTSTANDING 8   /* unfinished markers allowed before the launcher waits (~4 ms) */
#define MARKER_NS 500000ull /* aim: one marker per 0.5 ms of GPU work */
#define MAX_MARKER_EVERY 4096
#define MAX_QUEUED_NS 4000000ull    /* at most ~4 ms of GPU work queued by a limited process */
#define WAIT_LIMIT_NS 2000000000ull /* never wait longer than this on one event */
/* All markers done and no event recorded for this long: the GPU ran dry,
 * whatever cuStreamQuery says (see flexai_meter_ran_dry()). */
#define QUIET_NS (2 * MAX_QUEUED_NS)

int flexai_meter_capturing(CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) && d->stream_is_capturing_ptsz
                     ? d->stream_is_capturing_ptsz(s, &st)
                     : (d->stream_is_capturing ? d->stream_is_capturing(s, &st) : CUDA_SUCCESS);
    if (r != CUDA_SUCCESS)
        flexai_driver_note_error("cuStreamIsCapturing", r);
    return r != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* 1 if everything queued on `s` has completed: the GPU is idle for us now. */
static int stream_idle(CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) && d->stream_query_ptsz ? d->stream_query_ptsz(s)
                 : d->stream_query                                    ? d->stream_query(s)
                                                                      : CUDA_ERROR_NOT_READY;
    return r == CUDA_SUCCESS;
}

/* Call after flexai_meter_retire(p, 0). 1 if the GPU has run out of our
 * work: every marker completed, and the launches after the newest one (fewer
 * than N, so at most ~0.5 ms of work) are done too: none were made, or the
 * stream says so, or nothing was recorded for QUIET_NS. cuStreamQuery alone
 * is not trusted: work outside our launches (a library's memset) can keep it
 * "not ready" across a long idle gap (bench/results/hook-h200.md, "Figures
 * behind the hook's constants"). */
int flexai_meter_ran_dry(struct pace *p, CUstream s, int flags)
{
    if (p->count != 0)
        return 0;
    return atomic_load(&p->since_marker) == 0 || flexai_pace_now_ns() - p->mark_ns > QUIET_NS ||
           stream_idle(s, flags);
}

int flexai_meter_record(CUevent ev, CUstream s, int flags)
{
    const struct flexai_driver *d = flexai_driver();
    CUresult r = (flags & FLEXAI_LAUNCH_PTSZ) ? d->event_record_ptsz(ev, s) : d->event_record(ev, s);
    if (r != CUDA_SUCCESS)
        flexai_driver_note_error("cuEventRecord", r);
    return r == CUDA_SUCCESS;
}

int flexai_meter_ensure_events(struct pace *p)
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
        flexai_pace_sleep_ns(step);
        waited += step;
    }
}

/* Retire finished markers from the head; `block` waits for the oldest first. */
void flexai_meter_retire(struct pace *p, int block)
{
    while (p->count > 0) {
        struct marker *m = &p->ring[p->head];
        if (block) {
            block = 0;
            if (!wait_event(m->ev)) {
                p->timeouts++;
                flexai_trace(p, 'W', (uint64_t)p->count);
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
            atomic_store(&p->marker_every, (uint32_t)(n < 1                  ? 1
                                                      : n > MAX_MARKER_EVERY ? MAX_MARKER_EVERY
                                                                             : n));
        }
        p->last_done = m->ev;
        p->head = (p->head + 1) % RING;
        p->count--;
    }
}

/* Start a new busy segment here, before the launch about to happen. Called
 * only when everything we queued has completed, i.e. the GPU is idle (for
 * us) now: the idle time since must not count as busy. */
void flexai_meter_new_segment(struct pace *p, CUstream s, int flags)
{
    if (flexai_meter_record(p->seg_ev, s, flags)) {
        flexai_trace(p, 'N', p->seg_ns);
        p->mark_ns = flexai_pace_now_ns();
        p->closed_ns += p->seg_ns;
        p->seg_ns = 0;
        p->last_done = NULL;
        p->pending_launches = 0;
    }
}

/* Record a marker after what was launched on `s`; bound what is in flight. */
void flexai_meter_add_marker(struct pace *p, CUstream s, int flags)
{
    if (!flexai_meter_ensure_events(p))
        return;
    flexai_meter_retire(p, 0);
    if (p->count == RING)
        flexai_meter_retire(p, 1);
    if (p->count == RING)
        return;
    int idx = (p->head + p->count) % RING;
    struct marker *m = &p->ring[idx];
    m->ev = p->pool[idx];
    if (m->ev == p->last_done)
        p->last_done = NULL; /* about to be re-recorded */
    if (!flexai_meter_record(m->ev, s, flags))
        return;
    m->launches = p->pending_launches;
    p->mark_ns = flexai_pace_now_ns();
    p->markers++;
    p->pending_launches = 0;
    p->count++;
    /* At most ~4 ms of work queued (and at most half a window): enough for
     * the CPU to run ahead, little to spill past a window's close. */
    uint64_t per = p->per_marker_ns ? p->per_marker_ns : MARKER_NS;
    uint64_t budget = p->target_ns / 2 < MAX_QUEUED_NS ? p->target_ns / 2 : MAX_QUEUED_NS;
    /* Nor past the close: what is queued then runs in the next tenant's
     * window and is booked as that tenant's busy time (bench/results/
     * hook-h200.md, "Figures behind the hook's constants"). */
    uint64_t close = atomic_load(&p->close_at_ns);
    if (close > p->mark_ns && close - p->mark_ns < budget)
        budget = close - p->mark_ns;
    uint64_t max_out = budget / per;
    max_out = max_out < 2 ? 2 : max_out > MAX_OUTSTANDING ? MAX_OUTSTANDING : max_out;
    while ((uint64_t)p->count > max_out) {
        int before = p->count;
        flexai_meter_retire(p, 1);
        if (p->count == before)
            break; /* waited too long: give up rather than hang the program */
    }
}

/* The program hit the closed gate (END) and is now past it: the GPU drained
 * during the gap, so waiting for the last markers costs nothing and makes the
 * window's figure exact. */
void flexai_meter_finish_window(struct pace *p, int slot)
{
    if (!p->in_window)
        return;
    while (p->count > 0) {
        int before = p->count;
        flexai_meter_retire(p, 1);
        if (p->count == before)
            break;
    }
    flexai_ctl_book(p, slot);
    p->in_window = 0;
    p->have_end = 0;
    p->seg_ns = p->closed_ns = p->booked_ns = 0;
}
