/*
 * memory.c: count every byte of device memory a process takes, per vGPU.
 *
 * Protocol of an allocation wrapper (intercept.c):
 *     reserve(slot, bytes)      -> 0 means over the limit: return OUT_OF_MEMORY
 *     real allocation
 *     commit(slot, kind, key, bytes, ok)   remembers key -> bytes, or gives back
 * and of a free wrapper: release(kind, key) after the real free succeeded.
 * Where the driver picks the size (cuMemAllocPitch), reserve an estimate and
 * commit_resized() settles the difference to the real size.
 * Reserving BEFORE the real call means two processes racing for the last
 * bytes cannot both get them (the check-and-add is one CAS in region.c).
 *
 * Invariants:
 *   - a key is in the table iff its bytes are charged to this process;
 *   - the table is striped (256 mutexes, picked by hash) so 64 threads
 *     allocating at once rarely meet; allocation is not the launch path;
 *   - a fork child starts with an empty table: the parent's allocations stay
 *     the parent's.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

#define STRIPES 256

struct node {
    uint64_t key;
    uint64_t bytes;
    struct node *next;
    int kind;
    int slot;
};

static struct stripe {
    pthread_mutex_t lock;
    struct node *head;
} g_tab[STRIPES];

/* bit i set = context overhead of slot i already charged by this process */
static _Atomic uint32_t g_ctx_charged;
static pthread_once_t g_fork_once = PTHREAD_ONCE_INIT;

static struct stripe *stripe_of(int kind, uint64_t key)
{
    uint64_t h = (key ^ ((uint64_t)kind << 59)) * 0x9e3779b97f4a7c15ull;
    return &g_tab[h >> 56];
}

static void reset_in_child(void)
{
    for (int i = 0; i < STRIPES; i++) {
        pthread_mutex_init(&g_tab[i].lock, NULL); /* a parent thread may have held it */
        for (struct node *n = g_tab[i].head, *next; n != NULL; n = next) {
            next = n->next;
            free(n);
        }
        g_tab[i].head = NULL;
    }
    atomic_store(&g_ctx_charged, 0);
}

static void init_table(void)
{
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&g_tab[i].lock, NULL);
    pthread_atfork(NULL, NULL, reset_in_child);
}

int flexai_mem_reserve(int slot, uint64_t bytes)
{
    if (slot < 0)
        return 1;
    pthread_once(&g_fork_once, init_table);
    if (flexai_region_charge(slot, bytes, 0))
        return 1;
    /* Over the limit: maybe a dead process still holds memory. */
    if (flexai_region_sweep() > 0 && flexai_region_charge(slot, bytes, 0))
        return 1;
    return 0;
}

void flexai_mem_commit(int slot, enum flexai_mem_kind kind, uint64_t key, uint64_t bytes, int ok)
{
    if (slot < 0)
        return;
    if (!ok) {
        flexai_region_uncharge(slot, bytes);
        return;
    }
    struct node *n = malloc(sizeof *n);
    if (n == NULL) {
        /* Cannot remember it, so cannot give it back at free: stay correct by
         * not counting it at all. */
        flexai_region_uncharge(slot, bytes);
        return;
    }
    *n = (struct node){.key = key, .bytes = bytes, .kind = (int)kind, .slot = slot};
    struct stripe *s = stripe_of((int)kind, key);
    pthread_mutex_lock(&s->lock);
    n->next = s->head;
    s->head = n;
    pthread_mutex_unlock(&s->lock);
}

uint64_t flexai_mem_pitch_estimate(size_t width_bytes, size_t height)
{
    return (((uint64_t)width_bytes + 511) & ~511ull) * height;
}

void flexai_mem_commit_resized(int slot, enum flexai_mem_kind kind, uint64_t key, uint64_t reserved,
                               uint64_t actual, int ok)
{
    if (slot < 0)
        return;
    if (!ok) {
        flexai_mem_commit(slot, kind, 0, reserved, 0);
        return;
    }
    /* Forced: the memory is already taken, so the count must show it even
     * if the estimate was short and that puts the slot past its limit. */
    if (actual > reserved)
        flexai_region_charge(slot, actual - reserved, 1);
    else if (actual < reserved)
        flexai_region_uncharge(slot, reserved - actual);
    flexai_mem_commit(slot, kind, key, actual, 1);
}

void flexai_mem_release(enum flexai_mem_kind kind, uint64_t key)
{
    if (flexai_config()->ndev == 0)
        return;
    pthread_once(&g_fork_once, init_table);
    struct stripe *s = stripe_of((int)kind, key);
    struct node *found = NULL;
    pthread_mutex_lock(&s->lock);
    for (struct node **pp = &s->head; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->key == key && (*pp)->kind == (int)kind) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (found != NULL) {
        flexai_region_uncharge(found->slot, found->bytes);
        free(found);
    }
}

int flexai_mem_context_reserve(CUdevice dev)
{
    int slot = flexai_slot_of_device(dev);
    if (slot < 0 || slot >= 32)
        return FLEXAI_CTX_FREE;
    uint32_t bit = 1u << slot;
    if (atomic_fetch_or(&g_ctx_charged, bit) & bit)
        return FLEXAI_CTX_FREE;
    /* Charged before the driver opens it, like an allocation: a context costs
     * real memory, so past the limit it is refused with
     * CUDA_ERROR_OUT_OF_MEMORY rather than taken outside the slice
     * (bench/results/hook-h200.md, "Figures behind the hook's constants").
     * Returned with the rest of the process's memory when the process ends. */
    if (!flexai_region_charge(slot, flexai_config()->dev[slot].context_overhead, 0)) {
        atomic_fetch_and(&g_ctx_charged, ~bit);
        return FLEXAI_CTX_REFUSED;
    }
    return FLEXAI_CTX_CHARGED;
}

void flexai_mem_context_unreserve(CUdevice dev)
{
    int slot = flexai_slot_of_device(dev);
    if (slot < 0 || slot >= 32)
        return;
    atomic_fetch_and(&g_ctx_charged, ~(1u << slot));
    flexai_region_uncharge(slot, flexai_config()->dev[slot].context_overhead);
}

void flexai_mem_info(int slot, size_t *free_b, size_t *total_b)
{
    if (slot < 0)
        return;
    uint64_t limit = flexai_config()->dev[slot].memory_bytes;
    if (limit == 0)
        return;
    uint64_t total = limit < *total_b ? limit : *total_b;
    uint64_t used = flexai_region_used(slot);
    uint64_t avail = total > used ? total - used : 0;
    if (avail < *free_b)
        *free_b = (size_t)avail;
    *total_b = (size_t)total;
}
