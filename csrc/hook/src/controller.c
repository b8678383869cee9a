/*
 * controller.c: turn the busy time a window delivered into the length of the
 * next windows, so the total delivered over any run is the target (c% of
 * each period) times the number of periods, give or take one period's spill.
 *
 * An integral controller: the error against the target accumulates in
 * `lead`, and the next window is target - lead. An overspend larger than a
 * window (one huge kernel or graph) keeps whole windows shut until repaid.
 * Unused time is credit, capped at one window: a program under its share is
 * rarely held at all, while two greedy ones have no credit and take turns
 * exactly. No booking may exceed the wall time since the last one (a guard,
 * not the mechanism).
 *
 * Invariants: `lead` is an atomic shared by the pacer thread (window
 * lengths, credit, skipped windows) and the launchers (bookings, under
 * p->lock); it never drops below -target. No NVML or CUDA call here.
 */
#include "pace.h"

/* Integral gain 1/2: the error of window k is known only after window k+1
 * opened, and with that one period of delay a gain of 1 would oscillate
 * (poles on the unit circle); 1/2 settles in a few periods. */
#define GAIN_DIV 2

/* lead += delta, but never below -target: unused time is credit for at most
 * one window, so an idle process cannot bank a long burst. */
static void steer(struct pace *p, int64_t delta)
{
    int64_t v = atomic_fetch_add(&p->lead_ns, delta) + delta;
    if (v < -(int64_t)p->target_ns)
        atomic_store(&p->lead_ns, -(int64_t)p->target_ns);
}

int64_t flexai_ctl_window_ns(const struct pace *p)
{
    int64_t window = (int64_t)p->target_ns - atomic_load(&p->lead_ns);
    return window > (int64_t)p->period_ns ? (int64_t)p->period_ns : window;
}

void flexai_ctl_unused_window(struct pace *p)
{
    steer(p, -(int64_t)p->target_ns / GAIN_DIV);
}

/* A shut window counts as delivering nothing (lead += GAIN * (0 - target)). */
void flexai_ctl_skipped_window(struct pace *p)
{
    atomic_fetch_sub(&p->lead_ns, (int64_t)p->target_ns / GAIN_DIV);
}

/* Our busy fraction (per mille) over the bookings of the last DUTY_SPAN_NS,
 * each weighted by its wall time: bookings come at uneven intervals (a
 * window, two, a fraction of one), and NVML's power, which the duty is set
 * against (speedup.c), is an average over time. */
static uint32_t duty_update(struct pace *p, uint64_t now, uint64_t wall, uint64_t busy)
{
    if (wall > DUTY_SPAN_NS) /* after a long pause only its last second counts */
        wall = DUTY_SPAN_NS;
    if (busy > wall)
        busy = wall;
    p->duty_ring[p->duty_next].at_ns = now;
    p->duty_ring[p->duty_next].wall_ns = wall;
    p->duty_ring[p->duty_next].busy_ns = busy;
    p->duty_next = (p->duty_next + 1) % DUTY_RING;
    uint64_t w = 0, b = 0;
    for (int i = 0; i < DUTY_RING; i++)
        if (p->duty_ring[i].wall_ns != 0 && now - p->duty_ring[i].at_ns < DUTY_SPAN_NS) {
            w += p->duty_ring[i].wall_ns;
            b += p->duty_ring[i].busy_ns;
        }
    return w ? (uint32_t)(b * 1000 / w) : 1000;
}

/* Book the busy time measured since the last booking to this period: usage
 * for gpu-monitor, and the integral controller (over the target shortens the
 * next windows, under it lengthens them, up to one window of credit). */
void flexai_ctl_book(struct pace *p, int slot)
{
    uint64_t total = p->closed_ns + p->seg_ns;
    uint64_t busy = total > p->booked_ns ? total - p->booked_ns : 0;
    p->booked_ns = total;
    /* Never more GPU time than wall time since the last booking: a guard
     * against any idle gap the segments failed to exclude. */
    uint64_t now = flexai_pace_now_ns(), wall = p->last_book_ns ? now - p->last_book_ns : p->period_ns;
    p->last_book_ns = now;
    if (busy > wall)
        busy = wall;
    flexai_trace(p, 'B', busy);
    p->duty_pm = duty_update(p, now, wall, busy); /* busy <= wall: at most 1000 */
    busy = busy * flexai_speedup_pm(p) / 1000;
    flexai_region_add_busy(slot, busy);
    p->windows++;
    if (busy > p->busy_max)
        p->busy_max = busy;
    flexai_trace(p, 'F', busy);
    steer(p, ((int64_t)busy - (int64_t)p->target_ns) / GAIN_DIV);
}
