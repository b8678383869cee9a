/*
 * region.c: the shared region, one file per container, mmap'ed MAP_SHARED by
 * every process of the container that uses CUDA (and read by gpu-monitor).
 *
 * Layout (version 1, native x86-64, all counters 8-byte aligned atomics):
 *   header   magic "FLEXAIRG", version, size, ndev
 *   dev[16]  per vGPU: uuid, limits (copied from the config), memory_used
 *            (sum over live processes), busy_ns (cumulative, never reset)
 *   proc[256] per process: pid (0 free, >0 owner, <0 being swept),
 *            start time (guards pid reuse), memory_used[16], busy_ns[16]
 *
 * Invariants:
 *   - dev.memory_used == sum of proc.memory_used over slots (up to bytes in
 *     flight between the two atomic updates of one charge);
 *   - counters never underflow: every subtraction saturates at 0;
 *   - no locks on any counter path: compare-and-swap and fetch-add only. The
 *     one flock() is taken while a process initialises the file;
 *   - a process that dies without freeing is swept: its slot is claimed with
 *     one CAS (pid -> -pid) so exactly one sweeper returns its memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define REGION_MAGIC 0x4752494158454c46ull /* "FLEXAIRG" little-endian */
#define REGION_VERSION 1

struct region_dev {
    char uuid[FLEXAI_UUID_LEN];
    int32_t cuda_index;
    uint32_t cores;
    uint32_t core_offset;
    uint32_t pad;
    uint64_t memory_limit;
    uint64_t period_ns;
    _Atomic uint64_t memory_used;
    _Atomic uint64_t busy_ns;
};

struct region_proc {
    _Atomic int32_t pid;
    uint32_t pad;
    _Atomic uint64_t start_time;
    _Atomic uint64_t memory_used[FLEXAI_MAX_DEVICES];
    _Atomic uint64_t busy_ns[FLEXAI_MAX_DEVICES];
};

struct flexai_region {
    uint64_t magic;
    uint32_t version;
    uint32_t size;
    uint32_t ndev;
    uint32_t pad;
    struct region_dev dev[FLEXAI_MAX_DEVICES];
    struct region_proc proc[FLEXAI_MAX_PROCS];
};

static struct flexai_region *g_region;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_proc = -1;   /* our slot in proc[], -1 until first use */
static int g_exiting;     /* set once our slot was released at exit */
static int g_full_logged;

static uint64_t sat_sub(_Atomic uint64_t *v, uint64_t n)
{
    uint64_t cur = atomic_load(v), next;
    do {
        next = cur > n ? cur - n : 0;
    } while (!atomic_compare_exchange_weak(v, &cur, next));
    return cur - next; /* what was actually subtracted */
}

/* Start time of a pid in clock ticks since boot (field 22 of /proc/pid/stat);
 * 0 when unknown. Distinguishes a live process from a new one reusing a pid. */
static uint64_t proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (p == NULL)
        return 0;
    /* after ')' come fields 3.. ; starttime is field 22 */
    int field = 2;
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s == ' ' && ++field == 22)
            return strtoull(s + 1, NULL, 10);
    }
    return 0;
}

/* Give a process slot's charges back to the devices and free the slot
 * (a swept dead process, or this one at exit). Saturating: never underflows. */
static void free_slot(struct flexai_region *r, struct region_proc *p)
{
    for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        uint64_t m = atomic_exchange(&p->memory_used[d], 0);
        sat_sub(&r->dev[d].memory_used, m);
        atomic_store(&p->busy_ns[d], 0);
    }
    atomic_store(&p->start_time, 0);
    atomic_store(&p->pid, 0);
}

static int pid_alive(pid_t pid, uint64_t start_time)
{
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    if (start_time != 0) {
        uint64_t now = proc_start_time(pid);
        if (now != 0 && now != start_time)
            return 0; /* pid reused by another process */
    }
    return 1;
}

int flexai_region_sweep(struct flexai_region *r)
{
    int swept = 0;
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        struct region_proc *p = &r->proc[i];
        int32_t pid = atomic_load(&p->pid);
        if (pid <= 0 || pid_alive(pid, atomic_load(&p->start_time)))
            continue;
        if (!atomic_compare_exchange_strong(&p->pid, &pid, -pid))
            continue; /* another sweeper won */
        free_slot(r, p);
        swept++;
    }
    return swept;
}

static void copy_limits(struct flexai_region *r, const struct flexai_config *c)
{
    r->ndev = (uint32_t)c->ndev;
    for (int i = 0; i < c->ndev; i++) {
        struct region_dev *d = &r->dev[i];
        memcpy(d->uuid, c->dev[i].uuid, sizeof d->uuid);
        d->cuda_index = c->dev[i].cuda_index;
        d->cores = c->dev[i].cores;
        d->core_offset = c->dev[i].core_offset;
        d->memory_limit = c->dev[i].memory_bytes;
        d->period_ns = c->period_ns;
    }
}

static struct flexai_region *map_private(void)
{
    /* MAP_SHARED|ANONYMOUS: still shared with fork()ed children. */
    void *m = mmap(NULL, sizeof(struct flexai_region), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    struct flexai_region *r = m;
    r->magic = REGION_MAGIC;
    r->version = REGION_VERSION;
    r->size = sizeof *r;
    return r;
}

static struct flexai_region *map_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        flexai_log("region %s: %s; using a private region (no sharing between processes)", path,
                   strerror(errno));
        return NULL;
    }
    struct flexai_region *r = NULL;
    struct stat st;
    if (flock(fd, LOCK_EX) != 0 || fstat(fd, &st) != 0) {
        flexai_log("region %s: %s; using a private region", path, strerror(errno));
        goto out;
    }
    if (st.st_size == 0) {
        (void)fchmod(fd, 0666); /* every user of the container shares it */
        if (ftruncate(fd, sizeof *r) != 0) {
            flexai_log("region %s: %s; using a private region", path, strerror(errno));
            goto out;
        }
    } else if ((size_t)st.st_size < sizeof *r) {
        flexai_log("region %s: %lld bytes, expected %zu; using a private region", path,
                   (long long)st.st_size, sizeof *r);
        goto out;
    }
    void *m = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        flexai_log("region %s: mmap: %s; using a private region", path, strerror(errno));
        goto out;
    }
    r = m;
    if (r->magic == 0) {
        r->version = REGION_VERSION;
        r->size = sizeof *r;
        atomic_thread_fence(memory_order_release);
        r->magic = REGION_MAGIC;
    } else if (r->magic != REGION_MAGIC || r->version != REGION_VERSION) {
        flexai_log("region %s: not a version %d region; using a private region", path,
                   REGION_VERSION);
        munmap(m, sizeof *r);
        r = NULL;
    }
out:
    flock(fd, LOCK_UN);
    close(fd);
    return r;
}

static void attach(void)
{
    const struct flexai_config *c = flexai_config();
    if (c->ndev == 0)
        return;
    struct flexai_region *r = NULL;
    if (c->region_path[0] != '\0')
        r = map_file(c->region_path);
    if (r == NULL)
        r = map_private();
    if (r == NULL) {
        flexai_log("cannot map any region; memory limits are per process only");
        return;
    }
    copy_limits(r, c);
    flexai_region_sweep(r);
    g_region = r;
}

struct flexai_region *flexai_region_self(void)
{
    pthread_once(&g_once, attach);
    return g_region;
}

static void release_self(void)
{
    struct flexai_region *r = g_region;
    if (r == NULL || g_proc < 0)
        return;
    struct region_proc *p = &r->proc[g_proc];
    free_slot(r, p);
    g_proc = -1;
    g_exiting = 1; /* frees during exit must not claim a new slot */
}

static void forget_slot_in_child(void)
{
    g_proc = -1; /* the parent's slot is the parent's */
}

/* Our process slot, claimed on first use; NULL if the table is full. */
static struct region_proc *self_proc(struct flexai_region *r)
{
    static pthread_mutex_t claim_lock = PTHREAD_MUTEX_INITIALIZER; /* claim only, once per process */
    if (FLEXAI_LIKELY(g_proc >= 0))
        return &r->proc[g_proc];
    if (g_exiting)
        return NULL;
    pthread_mutex_lock(&claim_lock);
    if (g_proc < 0) {
        static int hooks_registered;
        int32_t me = (int32_t)getpid();
        for (int pass = 0; pass < 2 && g_proc < 0; pass++) {
            for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
                int32_t expect = 0;
                if (atomic_compare_exchange_strong(&r->proc[i].pid, &expect, me)) {
                    atomic_store(&r->proc[i].start_time, proc_start_time(me));
                    g_proc = i;
                    break;
                }
            }
            if (g_proc < 0)
                flexai_region_sweep(r); /* make room, then try once more */
        }
        if (g_proc >= 0 && !hooks_registered) {
            hooks_registered = 1;
            atexit(release_self);
            pthread_atfork(NULL, NULL, forget_slot_in_child);
        }
        if (g_proc < 0 && !g_full_logged) {
            g_full_logged = 1;
            flexai_log("region: all %d process slots in use; this process is counted "
                       "in the vGPU totals only", FLEXAI_MAX_PROCS);
        }
    }
    pthread_mutex_unlock(&claim_lock);
    return g_proc >= 0 ? &r->proc[g_proc] : NULL;
}

int flexai_region_charge(int slot, uint64_t bytes, int force)
{
    struct flexai_region *r = flexai_region_self();
    if (r == NULL || slot < 0)
        return 1;
    uint64_t limit = flexai_config()->dev[slot].memory_bytes;
    _Atomic uint64_t *used = &r->dev[slot].memory_used;
    uint64_t cur = atomic_load(used);
    do {
        if (!force && limit != 0 && (cur > limit || bytes > limit - cur))
            return 0;
    } while (!atomic_compare_exchange_weak(used, &cur, cur + bytes));
    struct region_proc *p = self_proc(r);
    if (p != NULL)
        atomic_fetch_add(&p->memory_used[slot], bytes);
    return 1;
}

void flexai_region_uncharge(int slot, uint64_t bytes)
{
    struct flexai_region *r = g_region;
    if (r == NULL || slot < 0 || g_exiting)
        return;
    struct region_proc *p = self_proc(r);
    uint64_t n = p != NULL ? sat_sub(&p->memory_used[slot], bytes) : bytes;
    sat_sub(&r->dev[slot].memory_used, n);
}

uint64_t flexai_region_used(int slot)
{
    struct flexai_region *r = flexai_region_self();
    return (r == NULL || slot < 0) ? 0 : atomic_load(&r->dev[slot].memory_used);
}

void flexai_region_add_busy(int slot, uint64_t ns)
{
    struct flexai_region *r = flexai_region_self();
    if (r == NULL || slot < 0 || g_exiting)
        return;
    atomic_fetch_add(&r->dev[slot].busy_ns, ns);
    struct region_proc *p = self_proc(r);
    if (p != NULL)
        atomic_fetch_add(&p->busy_ns[slot], ns);
}

int flexai_region_read(const char *path, struct flexai_snapshot *out)
{
    int writable = 1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        writable = 0;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(struct flexai_region)) {
        close(fd);
        return -EINVAL;
    }
    void *m = mmap(NULL, sizeof(struct flexai_region), writable ? PROT_READ | PROT_WRITE : PROT_READ,
                   MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -errno;
    struct flexai_region *r = m;
    if (r->magic != REGION_MAGIC || r->version != REGION_VERSION) {
        munmap(m, sizeof *r);
        return -EINVAL;
    }
    if (writable)
        flexai_region_sweep(r);

    memset(out, 0, sizeof *out);
    out->version = FLEXAI_API_VERSION;
    out->size = sizeof *out;
    out->ndevices = r->ndev > FLEXAI_MAX_DEVICES ? FLEXAI_MAX_DEVICES : r->ndev;
    for (uint32_t i = 0; i < out->ndevices; i++) {
        struct flexai_device_usage *o = &out->devices[i];
        struct region_dev *d = &r->dev[i];
        memcpy(o->uuid, d->uuid, sizeof o->uuid);
        o->uuid[sizeof o->uuid - 1] = '\0';
        o->memory_limit = d->memory_limit;
        o->memory_used = atomic_load(&d->memory_used);
        o->busy_ns = atomic_load(&d->busy_ns);
        o->period_ns = d->period_ns;
        o->cores = d->cores;
        o->core_offset = d->core_offset;
        o->cuda_index = d->cuda_index;
    }
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        struct region_proc *p = &r->proc[i];
        int32_t pid = atomic_load(&p->pid);
        if (pid <= 0)
            continue;
        struct flexai_proc_usage *o = &out->procs[out->nprocs++];
        o->pid = pid;
        o->alive = (uint32_t)pid_alive(pid, atomic_load(&p->start_time));
        for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
            o->memory_used[d] = atomic_load(&p->memory_used[d]);
            o->busy_ns[d] = atomic_load(&p->busy_ns[d]);
        }
    }
    munmap(m, sizeof *r);
    return 0;
}
