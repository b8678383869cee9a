/*
 * pace.h: the per-vGPU pacing state that the compute files share, and what
 * each of them offers the others. Not part of internal.h: only the compute
 * files (compute.c, meter.c, controller.c, speedup.c, trace.c) see it.
 *
 * Layers, each calling only those below it:
 *   compute.c     the gate, the pacer thread and the launch path
 *   meter.c       CUDA events that measure the busy time a window delivered
 *   controller.c  the integral controller: busy time booked -> next windows
 *   speedup.c     clock normalisation: what a busy ns is worth at our duty
 *   trace.c       $FLEXAI_TRACE, a ring of slow-path events
 *
 * Locking: fields under "launch path" are atomics read without a lock;
 * "slow path" fields are guarded by p->lock; "pacer-private" fields are
 * touched by the pacer thread only (and by setup before it starts).
 */
#ifndef FLEXAI_PACE_H
#define FLEXAI_PACE_H

#include <pthread.h>
#include <time.h>

#include "internal.h"

#define RING 16                    /* marker events per vGPU */
#define DUTY_RING 64               /* bookings remembered for the duty (~20 ms or more apart) */
#define DUTY_SPAN_NS 1000000000ull /* the duty covers the last second: NVML averages power over one */

struct marker {
    CUevent ev;
    uint32_t launches; /* launches covered since the previous marker */
};

struct pace {
    /* --- read on the launch path ----------------------------------------- */
    _Atomic uint64_t gate;         /* (period << 1) | open; written by the pacer */
    _Atomic uint64_t seen_gate;    /* gate value whose window START was recorded */
    _Atomic uint32_t since_marker; /* launches since the last marker */
    _Atomic uint32_t marker_every; /* N */
    _Atomic uint32_t poke;         /* a marker was just recorded: check for idleness */
    /* --- pacer <-> launchers --------------------------------------------- */
    _Atomic int64_t lead_ns;       /* integral term: window = target - lead */
    _Atomic uint64_t next_open_ns; /* wall-clock time the gate opens next */
    _Atomic uint64_t close_at_ns;  /* wall-clock time the open window closes */
    uint64_t period_ns, offset_ns, target_ns;
    int limited;
    _Atomic uint32_t top_mhz;  /* the card's top SM clock; 0 = unknown */
    _Atomic int card_busy_pct; /* NVML's utilisation of the card at the last close; -1 = unknown */
    uint32_t ref_clock_mhz;    /* from the config; 0 = no normalisation */
    uint16_t curve_pm[FLEXAI_SPEEDUP_POINTS]; /* the card's measured speed-up by duty; [0] = 0: none */
    uint32_t idle_power_mw;                   /* the card's idle power (calibration); 0 = unknown */
    uint32_t gap_power_mw;         /* the card's power between windows (calibration); 0 = unknown */
    _Atomic uint32_t power_mw;     /* NVML's average power at the last close; 0 = unknown */
    _Atomic uint32_t power_cap_mw; /* the card's enforced power limit; 0 = unknown */
    _Atomic uint32_t gate_pm;      /* the last power gate, for $FLEXAI_DEBUG */
    /* --- slow path, under lock ------------------------------------------- */
    pthread_mutex_t lock;
    int events_ok; /* event pool created in this context */
    CUevent pool[RING];
    CUevent seg_ev; /* where the current busy segment began */
    struct marker ring[RING];
    int head, count;           /* outstanding markers, oldest at head */
    CUevent last_done;         /* most recent retired marker (for N) */
    uint32_t pending_launches; /* launches since the last recorded marker */
    int in_window;             /* a segment is open (since a START) */
    int have_end;              /* the END of that window was recorded */
    uint64_t seg_ns;           /* elapsed(seg_ev, newest retired marker) */
    uint64_t closed_ns;        /* busy of the earlier segments since START */
    uint64_t booked_ns;        /* part of closed_ns + seg_ns already booked */
    uint64_t per_marker_ns;    /* GPU time between markers, smoothed */
    uint64_t last_book_ns;     /* wall clock of the last book() */
    uint64_t mark_ns;          /* wall clock of the last START or marker */
    uint32_t duty_pm;          /* our busy fraction over the last DUTY_SPAN_NS of bookings, per mille */
    struct {
        uint64_t at_ns, wall_ns, busy_ns;
    } duty_ring[DUTY_RING]; /* the last bookings, for duty_pm */
    int duty_next;
    /* --- statistics for $FLEXAI_DEBUG (slow path only) --------------------- */
    uint64_t windows, markers, timeouts, busy_max;
    _Atomic uint64_t skipped, idle;
    /* --- pacer-private --------------------------------------------------- */
    uint64_t cur_period;
    uint64_t close_ns;
    int open, open_prev;
    int slot;
};

/* The wall clock: periods sit on it, and every container of the node shares it. */
static inline uint64_t flexai_pace_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void flexai_pace_sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

/* ---- meter.c (all under p->lock) ----------------------------------------- */
/* 1 if `s` is being captured into a graph (or the driver cannot say). */
int flexai_meter_capturing(CUstream s, int flags);
/* Create the event pool in the current context; 0 if the driver cannot. */
int flexai_meter_ensure_events(struct pace *p);
/* Record `ev` on `s`; 1 on success. */
int flexai_meter_record(CUevent ev, CUstream s, int flags);
/* Retire finished markers from the head; `block` waits for the oldest first. */
void flexai_meter_retire(struct pace *p, int block);
/* After flexai_meter_retire(p, 0): 1 if the GPU has run out of our work. */
int flexai_meter_ran_dry(struct pace *p, CUstream s, int flags);
/* Start a new busy segment before the launch about to happen. */
void flexai_meter_new_segment(struct pace *p, CUstream s, int flags);
/* Record a marker after what was launched on `s`; bound what is in flight. */
void flexai_meter_add_marker(struct pace *p, CUstream s, int flags);
/* Wait for the window's last markers, book it, and close it. */
void flexai_meter_finish_window(struct pace *p, int slot);

/* ---- controller.c --------------------------------------------------------- */
/* Book the busy time measured since the last booking (under p->lock). */
void flexai_ctl_book(struct pace *p, int slot);
/* Pacer: the length of the window about to open (<= 0: stays shut). */
int64_t flexai_ctl_window_ns(const struct pace *p);
/* Pacer: a window opened and nobody launched in it (credit). */
void flexai_ctl_unused_window(struct pace *p);
/* Pacer: a window stayed shut to repay an overspend. */
void flexai_ctl_skipped_window(struct pace *p);

/* ---- speedup.c ------------------------------------------------------------ */
/* Pacer, at a window's close: read the NVML figures the weight needs. */
void flexai_speedup_sample(struct pace *p);
/* Per mille: what a busy ns of ours is worth against one at full load. */
uint64_t flexai_speedup_pm(struct pace *p);

/* ---- trace.c -------------------------------------------------------------- */
/* `what`: S start, E end, I idle at the gate, N new segment, W wait timeout,
 * B busy measured (ns), D duty (per mille), C speed-up (per mille),
 * F busy booked (ns), P busy power estimate (W). */
void flexai_trace(const struct pace *p, char what, uint64_t value);
/* Turn tracing on when $FLEXAI_TRACE names a file; 1 if on. */
int flexai_trace_init(void);
/* Write the ring to $FLEXAI_TRACE (at exit). */
void flexai_trace_dump(void);

#endif
