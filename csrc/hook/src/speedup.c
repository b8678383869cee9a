/*
 * speedup.c: clock normalisation, what a busy ns of ours is worth.
 *
 * A power-capped card runs faster when it idles part of the time, so a c%
 * share of its time yields more than c% of its full-load throughput. When
 * the config carries the card's figures, busy time is weighted by the
 * speed-up that the card's duty allows before it is booked:
 *
 *   - the power model (the node agent measured `gap_power_mw`, the card's
 *     power between the windows of a duty cycle): the power the card draws
 *     per busy second, P_busy = gap + (NVML average - gap) / duty, is what a
 *     full load of this work would draw at the clock it runs at now. Above
 *     the card's enforced limit L, a full load would be clocked down until it
 *     drew L; the clock, and with it the speed of power-bound work, goes as
 *     the dynamic power to the 0.42 (voltage falls with the clock), so
 *     weight = ((P_busy - gap) / (L - gap))^0.42, at most 1.5; at or below L
 *     (memory-bound loops, host-bound decoding) it is 1;
 *   - else the measured curve (`speedup_pm`, with `idle_power_mw`): the
 *     speed per busy second at 10..90% duty over full load, gated by the
 *     same busy power against 85..100% of the limit;
 *   - else fitted: with `ref_clock_mhz` (the SM clock the card sustains at
 *     full load), 1 + E * (top clock / ref - 1) * min(1, (1 - duty) / (1 - KNEE)).
 *
 * duty = our own measured busy fraction over the last second (the span of
 * NVML's power average), or NVML's utilisation of the whole card where that
 * is 10 points higher: the card's power then covers the other tenants' work
 * too, and a card kept full by two tenants gains nothing (their 3:7 stays
 * 3:7). The figures behind the exponent are in bench/results/hook-frameworks.md,
 * those behind E and KNEE in bench/results/hook-h200.md.
 *
 * Invariants: NVML is read by the pacer thread once per window close
 * (flexai_speedup_sample), never on the launch path; the weight is computed
 * from those stored figures at booking time, under p->lock. Without figures
 * or NVML the weight is exactly 1.
 */
#include <math.h>

#include "pace.h"

#define SPEEDUP_E_PCT 70    /* E: share of the clock headroom that shows as speed */
#define SPEEDUP_KNEE_PCT 55 /* KNEE: full speed-up up to this duty */
#define CARD_MARGIN_PM 100  /* NVML's card utilisation counts only this far above ours */
#define GATE_FROM_PCT 85    /* busy power (% of the limit) from which the speed-up starts to count */
#define POWER_EXPONENT 0.42 /* clock (and speed of power-bound work) ~ dynamic power^0.42 at the limit */
#define POWER_MAX_PM 1500   /* the power model's weight never exceeds this */
#define MIN_DUTY_PM 50      /* busy power is not estimated from less than 5% duty */

void flexai_speedup_sample(struct pace *p)
{
    if (p->ref_clock_mhz == 0 && p->curve_pm[0] == 0 && p->gap_power_mw == 0)
        return;
    if (atomic_load(&p->top_mhz) == 0)
        atomic_store(&p->top_mhz, flexai_nvml_max_sm_clock(p->slot));
    atomic_store(&p->card_busy_pct, flexai_nvml_card_busy_pct(p->slot));
    if (p->gap_power_mw != 0 || (p->curve_pm[0] != 0 && p->idle_power_mw != 0)) {
        if (atomic_load(&p->power_cap_mw) == 0)
            atomic_store(&p->power_cap_mw, flexai_nvml_power_mw(p->slot, 1));
        atomic_store(&p->power_mw, flexai_nvml_power_mw(p->slot, 0));
    }
}

/* Per mille, 0..1000: how far this workload would be held back by the card's
 * power limit at full load, judged by the power it draws while busy: only
 * work that would draw more than the limit at the top clock runs faster per
 * busy second when it idles. Busy power comes from NVML's average power and
 * our duty: idle + (average - idle) / duty. 1000 without the figures. */
static uint64_t power_gate_pm(struct pace *p, uint64_t duty)
{
    uint64_t avg = atomic_load(&p->power_mw), cap = atomic_load(&p->power_cap_mw), idle = p->idle_power_mw;
    if (avg == 0 || cap == 0 || idle == 0 || idle >= cap)
        return 1000;
    uint64_t d = duty < 50 ? 50 : duty;
    uint64_t busy = idle + (avg > idle ? (avg - idle) * 1000 / d : 0);
    uint64_t lo = cap * GATE_FROM_PCT / 100;
    uint64_t gate = busy <= lo ? 0 : busy >= cap ? 1000 : (busy - lo) * 1000 / (cap - lo);
    flexai_trace(p, 'P', busy / 1000);
    atomic_store(&p->gate_pm, (uint32_t)gate);
    return gate;
}

/* Per mille: the power model's weight at `duty` (see the top of the file);
 * 1000 without NVML's power and limit, or when the busy power is within the
 * limit. */
static uint64_t power_model_pm(struct pace *p, uint64_t duty)
{
    uint64_t avg = atomic_load(&p->power_mw), cap = atomic_load(&p->power_cap_mw), gap = p->gap_power_mw;
    if (avg == 0 || cap == 0 || gap >= cap)
        return 1000;
    uint64_t d = duty < MIN_DUTY_PM ? MIN_DUTY_PM : duty;
    uint64_t busy = gap + (avg > gap ? (avg - gap) * 1000 / d : 0);
    flexai_trace(p, 'P', busy / 1000);
    if (busy <= cap) {
        atomic_store(&p->gate_pm, 0);
        return 1000;
    }
    atomic_store(&p->gate_pm, 1000);
    double w = pow((double)(busy - gap) / (double)(cap - gap), POWER_EXPONENT) * 1000.0;
    return w > POWER_MAX_PM ? POWER_MAX_PM : (uint64_t)w;
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
uint64_t flexai_speedup_pm(struct pace *p)
{
    uint32_t top = atomic_load(&p->top_mhz);
    if (p->gap_power_mw == 0 && p->curve_pm[0] == 0 && (p->ref_clock_mhz == 0 || top <= p->ref_clock_mhz))
        return 1000;
    /* NVML reads a card a few points busier than it is (a sample period with
     * any kernel in it counts); beyond that margin, others are using it. */
    int card = atomic_load(&p->card_busy_pct);
    uint64_t duty = card * 10 > (int)p->duty_pm + CARD_MARGIN_PM ? (uint64_t)card * 10 : p->duty_pm;
    uint64_t pm;
    if (p->gap_power_mw != 0) {
        pm = power_model_pm(p, duty);
    } else if (p->curve_pm[0] != 0) {
        /* The calibration kernel moves data and multiplies matrices like a
         * matmul: its measured speed-up is taken as the workload's. */
        uint64_t c = curve_at(p->curve_pm, duty);
        pm = 1000 + (c > 1000 ? (c - 1000) * power_gate_pm(p, duty) / 1000 : 0);
    } else {
        uint64_t room = (uint64_t)SPEEDUP_E_PCT * 10 * (top - p->ref_clock_mhz) / p->ref_clock_mhz;
        uint64_t scale = (1000 - duty) * 1000 / (1000 - SPEEDUP_KNEE_PCT * 10);
        pm = 1000 + room * (scale > 1000 ? 1000 : scale) / 1000;
    }
    flexai_trace(p, 'D', duty);
    flexai_trace(p, 'C', pm);
    return pm;
}
