/*
 * region.c: the shared region, one file per container, mmap'ed MAP_SHARED by
 * every process of the container that uses CUDA, and read (never written) by
 * gpu-monitor and the node agent.
 *
 * Layout (version 2, native x86-64, all counters 8-byte aligned atomics):
 *   header   magic "FLEXAIRG", version, size, ndev
 *   dev[16]  per vGPU: uuid, limits (copied from the config), memory_used
 *            (sum over live processes), busy_ns (cumulative, never reset)
 *   proc[256] per process: pid (0 = free; shown, never trusted), memory_used[16],
 *            busy_ns[16]
 *
 * Liveness (why a slot's charges may be freed): the process that owns proc[i]
 * holds an open-file-description (OFD) write lock on proc[i]'s byte range of
 * the file. The kernel drops it when the last descriptor of that description
 * goes: at death or exec (O_CLOEXEC), never while the process lives. So
 * "slot i is dead" = "pid != 0 and nobody holds its lock", true the same in
 * every PID namespace (a pid means nothing outside the tenant's namespace).
 *   - the lock lives on a description of its own (g_lock_fd), not the one
 *     behind the mapping: a fork() child inherits the mapping, and with it the
 *     mapping's description; it closes its copy of g_lock_fd (pthread_atfork)
 *     and opens its own to lock its own slot, so a child never keeps its
 *     parent "alive";
 *   - taken once per process, when it claims its slot; threads share it; a
 *     region opened twice in one process (the shim reading it) uses another
 *     description, which sees the lock like any other process would;
 *   - a claimer or sweeper takes the slot's lock (F_OFD_SETLK) before touching
 *     its pid or charges, so one slot is never claimed or freed twice; a
 *     sweeper that dies mid-way leaves the lock free and the next one finishes;
 *   - readers open the file read-only, copy it (pread: a mapping would SIGBUS
 *     if the tenant truncated the file) and test with F_OFD_GETLK: a dead slot
 *     is left out of what they report, its charges not counted; they write
 *     nothing.
 *
 * Invariants:
 *   - dev.memory_used == sum of proc.memory_used over slots (up to bytes in
 *     flight between the two atomic updates of one charge);
 *   - counters never underflow: every subtraction saturates at 0;
 *   - no locks on any counter path: compare-and-swap and fetch-add only. The
 *     one flock() is taken while a process initialises the file; slot locks
 *     are taken at claim, at sweeps (attach, an allocation that would fail);
 *   - the hook never changes the mode of a file it did not create and opens
 *     only regular files, never through a final symlink.
 */
#define _GNU_SOURCE /* F_OFD_*, memfd_create, O_PATH */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define REGION_MAGIC 0x4752494158454c46ull /* "FLEXAIRG" little-endian */
#define REGION_VERSION 2

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
    uint64_t reserved;
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
static int g_fd = -1;      /* the region file; never holds a lock (fork children share it) */
static int g_lock_fd = -1; /* this process's own description: its slot lock, sweeps */
static int g_proc = -1;    /* our slot in proc[], -1 until first use */
static int g_exiting;      /* set once our slot was released at exit */
static int g_full_logged;
static pthread_mutex_t g_claim_lock = PTHREAD_MUTEX_INITIALIZER; /* claim and sweep, never a counter */

static uint64_t sat_sub(_Atomic uint64_t *v, uint64_t n)
{
    uint64_t cur = atomic_load(v), next;
    do {
        next = cur > n ? cur - n : 0;
    } while (!atomic_compare_exchange_weak(v, &cur, next));
    return cur - next; /* what was actually subtracted */
}

/* ---- slot locks ----------------------------------------------------------- */

static struct flock slot_range(int i, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl); /* l_pid must be 0 for OFD locks */
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)(offsetof(struct flexai_region, proc) + (size_t)i * sizeof(struct region_proc));
    fl.l_len = (off_t)sizeof(struct region_proc);
    return fl;
}

/* Does some other open file description hold slot i's lock? Errors count as
 * held: a charge is never freed on doubt. */
static int slot_held(int fd, int i)
{
    struct flock fl = slot_range(i, F_WRLCK);
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return 1;
    return fl.l_type != F_UNLCK;
}

/* Take slot i's lock through `fd` without waiting; 0 when taken. */
static int slot_lock(int fd, int i)
{
    struct flock fl = slot_range(i, F_WRLCK);
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static void slot_unlock(int fd, int i)
{
    struct flock fl = slot_range(i, F_UNLCK);
    (void)fcntl(fd, F_OFD_SETLK, &fl);
}

/* A new open file description of what `fd` refers to (flags: O_RDWR or
 * O_RDONLY): /proc/self/fd/N opens the same inode whatever was renamed or
 * unlinked since. -1 when /proc is missing. */
static int reopen(int fd, int flags)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    return open(p, flags | O_CLOEXEC | O_NOCTTY);
}

/* ---- charges -------------------------------------------------------------- */

/* Give a slot's charges back to the devices and free it (a dead owner's,
 * under its lock, or our own at exit). Saturating: never underflows. */
static void free_slot(struct flexai_region *r, struct region_proc *p)
{
    for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
        uint64_t m = atomic_exchange(&p->memory_used[d], 0);
        sat_sub(&r->dev[d].memory_used, m);
        atomic_store(&p->busy_ns[d], 0);
    }
    atomic_store(&p->pid, 0);
}

/* Our own lock description, opened on first need (and again in a fork child). */
static int lock_fd(void)
{
    if (g_lock_fd < 0 && g_fd >= 0)
        g_lock_fd = reopen(g_fd, O_RDWR);
    return g_lock_fd;
}

/* Free every slot whose owner is gone. Caller holds g_claim_lock. */
static int sweep_locked(struct flexai_region *r)
{
    int fd = lock_fd(), swept = 0;
    if (fd < 0)
        return 0;
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        if (i == g_proc || atomic_load(&r->proc[i].pid) == 0)
            continue;
        if (slot_lock(fd, i) != 0)
            continue; /* its owner lives (or another sweeper is at it) */
        if (atomic_load(&r->proc[i].pid) != 0) {
            free_slot(r, &r->proc[i]);
            swept++;
        }
        slot_unlock(fd, i);
    }
    return swept;
}

int flexai_region_sweep(void)
{
    struct flexai_region *r = flexai_region_self();
    if (r == NULL)
        return 0;
    pthread_mutex_lock(&g_claim_lock);
    int n = sweep_locked(r);
    pthread_mutex_unlock(&g_claim_lock);
    return n;
}

/* ---- attaching ------------------------------------------------------------ */

static void release_self(void);
static void forget_slot_in_child(void);

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

static void init_header(struct flexai_region *r)
{
    r->version = REGION_VERSION;
    r->size = sizeof *r;
    atomic_thread_fence(memory_order_release);
    r->magic = REGION_MAGIC;
}

/* No region in the config: a memfd, shared with fork()ed children only. */
static struct flexai_region *map_private(void)
{
    int fd = memfd_create("flexai-region", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, sizeof(struct flexai_region)) != 0) {
        flexai_log("private region: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    void *m = mmap(NULL, sizeof(struct flexai_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        flexai_log("private region: mmap: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    init_header(m);
    g_fd = fd;
    return m;
}

/* Open the region file read-write: create it (then, and only then, make it
 * 0666 for every user of the container), or open an existing one if it is a
 * regular file, looked at through O_PATH first so a FIFO or device is never
 * opened. A final symlink is never followed. -1 with `why` set otherwise. */
static int open_region_file(const char *path, const char **why)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd >= 0) {
        (void)fchmod(fd, 0666); /* ours: undo the umask so every user of the container shares it */
        return fd;
    }
    *why = strerror(errno);
    if (errno != EEXIST)
        return -1;
    int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (pfd < 0 || fstat(pfd, &st) != 0) {
        *why = strerror(errno);
        if (pfd >= 0)
            close(pfd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        *why = S_ISLNK(st.st_mode) ? "a symbolic link (not followed)" : "not a regular file";
        close(pfd);
        return -1;
    }
    fd = reopen(pfd, O_RDWR);
    if (fd < 0)
        *why = strerror(errno);
    close(pfd);
    return fd;
}

static struct flexai_region *map_file(const char *path)
{
    const char *why = "";
    int fd = open_region_file(path, &why);
    if (fd < 0) {
        flexai_log("region %s: %s", path, why);
        return NULL;
    }
    struct flexai_region *r = NULL;
    struct stat st;
    if (flock(fd, LOCK_EX) != 0 || fstat(fd, &st) != 0) {
        flexai_log("region %s: %s", path, strerror(errno));
        goto out;
    }
    if (st.st_size == 0 && ftruncate(fd, sizeof *r) != 0) {
        flexai_log("region %s: %s", path, strerror(errno));
        goto out;
    }
    if (st.st_size != 0 && (size_t)st.st_size < sizeof *r) {
        flexai_log("region %s: %lld bytes, expected %zu", path, (long long)st.st_size, sizeof *r);
        goto out;
    }
    void *m = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        flexai_log("region %s: mmap: %s", path, strerror(errno));
        goto out;
    }
    r = m;
    if (r->magic == 0) {
        init_header(r);
    } else if (r->magic != REGION_MAGIC || r->version != REGION_VERSION) {
        flexai_log("region %s: not a version %d region", path, REGION_VERSION);
        munmap(m, sizeof *r);
        r = NULL;
    }
out:
    flock(fd, LOCK_UN);
    if (r != NULL)
        g_fd = fd;
    else
        close(fd);
    return r;
}

static void attach(void)
{
    const struct flexai_config *c = flexai_config();
    if (c->ndev == 0)
        return;
    struct flexai_region *r = c->region_path[0] != '\0' ? map_file(c->region_path) : map_private();
    if (r == NULL) {
        flexai_log("no usable region: CUDA is disabled for this process (limits could not be shared)");
        return;
    }
    copy_limits(r, c);
    g_region = r;
    atexit(release_self);
    pthread_atfork(NULL, NULL, forget_slot_in_child);
    pthread_mutex_lock(&g_claim_lock);
    sweep_locked(r);
    pthread_mutex_unlock(&g_claim_lock);
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
    free_slot(r, &r->proc[g_proc]);
    g_proc = -1;
    g_exiting = 1; /* frees during exit must not claim a new slot */
    if (g_lock_fd >= 0)
        close(g_lock_fd); /* the slot is free already: let the next owner lock it */
    g_lock_fd = -1;
}

/* The parent's slot and lock description are the parent's: drop our copy of
 * the description (the parent keeps its lock) and claim our own on first use. */
static void forget_slot_in_child(void)
{
    pthread_mutex_init(&g_claim_lock, NULL); /* a parent thread may have held it */
    if (g_lock_fd >= 0)
        close(g_lock_fd);
    g_lock_fd = -1;
    g_proc = -1;
}

/* Claim a free (or dead) slot under its lock; the lock stays ours while we live. */
static int claim_locked(struct flexai_region *r)
{
    int fd = lock_fd();
    if (fd < 0)
        return -1;
    int32_t me = (int32_t)getpid();
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        if (slot_lock(fd, i) != 0)
            continue; /* a live owner */
        if (atomic_load(&r->proc[i].pid) != 0)
            free_slot(r, &r->proc[i]); /* its owner died: its lock was free */
        atomic_store(&r->proc[i].pid, me);
        return i;
    }
    return -1;
}

/* Our process slot, claimed on first use; NULL if none can be had. */
static struct region_proc *self_proc(struct flexai_region *r)
{
    if (FLEXAI_LIKELY(g_proc >= 0))
        return &r->proc[g_proc];
    if (g_exiting)
        return NULL;
    pthread_mutex_lock(&g_claim_lock);
    if (g_proc < 0) {
        g_proc = claim_locked(r);
        if (g_proc < 0 && !g_full_logged) {
            g_full_logged = 1;
            flexai_log("region: no process slot (%d in use, or no lock: %s); this process is "
                       "counted in the vGPU totals only",
                       FLEXAI_MAX_PROCS, g_lock_fd < 0 ? "cannot reopen the region" : "all held");
        }
    }
    pthread_mutex_unlock(&g_claim_lock);
    return g_proc >= 0 ? &r->proc[g_proc] : NULL;
}

int flexai_region_charge(int slot, uint64_t bytes, int force)
{
    struct flexai_region *r = flexai_region_self();
    if (r == NULL || slot < 0)
        return 1;
    /* Claim the slot (and its lock) before the first byte is charged, so no
     * charge of a live process ever sits in a slot that looks dead. */
    struct region_proc *p = self_proc(r);
    uint64_t limit = flexai_config()->dev[slot].memory_bytes;
    _Atomic uint64_t *used = &r->dev[slot].memory_used;
    uint64_t cur = atomic_load(used);
    do {
        if (!force && limit != 0 && (cur > limit || bytes > limit - cur))
            return 0;
    } while (!atomic_compare_exchange_weak(used, &cur, cur + bytes));
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

/* ---- reading (gpu-monitor, the node agent: read only) ---------------------- */

/* Open `path` for reading without following any symbolic link on the way
 * (each directory opened O_NOFOLLOW relative to the one before, like
 * openat2's RESOLVE_NO_SYMLINKS) and only if it is a regular file with one
 * link, looked at through O_PATH before it is opened. fd or -errno. */
static int open_region_readonly(const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= 4096)
        return -ENOENT;
    char buf[4096];
    memcpy(buf, path, n + 1);
    int dir = open(buf[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -errno;
    char *save = NULL, *leaf = NULL;
    for (char *c = strtok_r(buf, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
        if (leaf != NULL) {
            int next = openat(dir, leaf, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
            int e = errno;
            close(dir);
            if (next < 0)
                return -e;
            dir = next;
        }
        leaf = c;
    }
    if (leaf == NULL) {
        close(dir);
        return -EISDIR;
    }
    int pfd = openat(dir, leaf, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(dir);
    if (pfd < 0)
        return -e;
    struct stat st;
    int rc = 0;
    if (fstat(pfd, &st) != 0)
        rc = -errno;
    else if (S_ISLNK(st.st_mode))
        rc = -ELOOP;
    else if (!S_ISREG(st.st_mode) || st.st_nlink != 1)
        rc = -EPERM; /* a FIFO, device, directory, or a hard link to who knows what */
    int fd = rc == 0 ? reopen(pfd, O_RDONLY) : -1;
    if (rc == 0 && fd < 0)
        rc = -errno;
    close(pfd);
    return rc == 0 ? fd : rc;
}

int flexai_region_read(const char *path, struct flexai_snapshot *out)
{
    int fd = open_region_readonly(path);
    if (fd < 0)
        return fd;
    /* A copy, not a mapping: the tenant may truncate the file at any moment,
     * and a mapping read past the end would kill the reader with SIGBUS. */
    struct flexai_region *r = malloc(sizeof *r);
    if (r == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = pread(fd, (char *)r + got, sizeof *r - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < sizeof *r || r->magic != REGION_MAGIC || r->version != REGION_VERSION) {
        int rc = got == sizeof *r && r->magic == REGION_MAGIC ? -EPROTO : -EINVAL; /* EPROTO: another build */
        free(r);
        close(fd);
        return rc;
    }

    memset(out, 0, sizeof *out);
    out->version = FLEXAI_API_VERSION;
    out->size = sizeof *out;
    out->ndevices = r->ndev > FLEXAI_MAX_DEVICES ? FLEXAI_MAX_DEVICES : r->ndev;
    uint64_t dead[FLEXAI_MAX_DEVICES] = {0}; /* charges of dead slots: reported as freed */
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        const struct region_proc *p = &r->proc[i];
        int32_t pid = atomic_load(&p->pid);
        if (pid == 0)
            continue;
        if (!slot_held(fd, i)) {
            for (int d = 0; d < FLEXAI_MAX_DEVICES; d++)
                dead[d] += atomic_load(&p->memory_used[d]);
            continue;
        }
        struct flexai_proc_usage *o = &out->procs[out->nprocs++];
        o->pid = pid;
        o->alive = 1;
        for (int d = 0; d < FLEXAI_MAX_DEVICES; d++) {
            o->memory_used[d] = atomic_load(&p->memory_used[d]);
            o->busy_ns[d] = atomic_load(&p->busy_ns[d]);
        }
    }
    for (uint32_t i = 0; i < out->ndevices; i++) {
        struct flexai_device_usage *o = &out->devices[i];
        const struct region_dev *d = &r->dev[i];
        memcpy(o->uuid, d->uuid, sizeof o->uuid);
        o->uuid[sizeof o->uuid - 1] = '\0';
        o->memory_limit = d->memory_limit;
        uint64_t used = atomic_load(&d->memory_used);
        o->memory_used = used > dead[i] ? used - dead[i] : 0;
        o->busy_ns = atomic_load(&d->busy_ns);
        o->period_ns = d->period_ns;
        o->cores = d->cores;
        o->core_offset = d->core_offset;
        o->cuda_index = d->cuda_index;
    }
    free(r);
    close(fd);
    return 0;
}
