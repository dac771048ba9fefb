/*
** env.c -- the environment: errors, lifetime (close, release, fork), open,
** and the calls on the whole database (stat, entries, check).
**
** Design and invariants
**  1. The env is reference counted (the Python handle, one per live
**     transaction) and freed only by kvm_env_release.  kvm_env_close only
**     marks it closing, waits until no call is in flight, then releases the
**     file, the mapping and the cache.  Every public call brackets its body
**     with env_enter/txn_enter: counted in flight, then refused once closing
**     (a Dekker handshake with close, both sides sequentially consistent).
**  2. A child after fork() sees a newer kvm_fork_gen: every call on an env
**     opened before refuses (KVM_FORKED); the child closes its copies of
**     the lock file descriptors at once (lock.c), and closing the env in
**     the child releases only its descriptor and mappings, never a lock.
**  3. Open: a regular file only; any number of handles, writable or not,
**     in any processes (the lock region, lock.c).  The first opener builds
**     the region from the file: an empty file or a leftover of an
**     interrupted creation is initialised, the newest commit verified
**     (meta.c); later openers take the state the region holds.  A writable
**     handle loads its free space when it first writes, and again whenever
**     another handle committed since (txn.c, writer_follow).
*/
#define _GNU_SOURCE
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ errors */

static __thread char err_text[320];
static __thread int  err_errno;

const char *kvm_errmsg(void) { return err_text; }
int kvm_errno(void) { return err_errno; }

int kvm_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_text, sizeof err_text, fmt, ap);
    va_end(ap);
    err_errno = 0;
    return code;
}

int kvm_err_sys(int code, int errnum, const char *what)
{
    snprintf(err_text, sizeof err_text, "%s: %s", what, strerror(errnum));
    err_errno = errnum;
    return code;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int space_code(int errnum)
{
    return (errnum == ENOSPC || errnum == EFBIG || errnum == EDQUOT) ? KVM_DISKFULL : KVM_IO;
}

/* Write n buffers at off, all of them: a short write goes on where it
** stopped, EINTR is retried.  A failure is DiskFullError for no space,
** IOFailure otherwise, with `what` in the message. */
int file_write(kvm_env *e, struct iovec *iov, int n, off_t off, const char *what)
{
    return fd_write(e->fd, iov, n, off, what);
}

int fd_write(int fd, struct iovec *iov, int n, off_t off, const char *what)
{
    while (n > 0) {
        ssize_t w = kvm_sys.pwritev(fd, iov, n, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return kvm_err_sys(w < 0 ? space_code(errno) : KVM_IO, w < 0 ? errno : EIO, what);
        off += w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* --------------------------------------------------------------- lifetime */

/* Incremented in the child after every fork(): a handle opened before the
** fork carries an older generation, and refuses every call in the child. */
uint64_t kvm_fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_child(void)
{
    __atomic_add_fetch(&kvm_fork_gen, 1, __ATOMIC_SEQ_CST);
    lock_forget_all();
    this_thread_forget();
}
static void fork_watch(void) { pthread_atfork(NULL, NULL, fork_child); }

int env_forked(const kvm_env *e)
{
    return e->fork_gen != __atomic_load_n(&kvm_fork_gen, __ATOMIC_RELAXED);
}

/* Dekker with kvm_env_close: count this call in flight, then look at
** closing (both seq_cst), so a close either sees the call and waits for it,
** or the call sees the close and does not run. */
int env_enter_quiet(kvm_env *e)
{
    if (env_forked(e))
        return 0;
    __atomic_add_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&e->closing, __ATOMIC_SEQ_CST)) {
        __atomic_sub_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST);
        return 0;
    }
    return 1;
}

int env_enter(kvm_env *e)
{
    if (env_enter_quiet(e))
        return 0;
    if (env_forked(e))
        return kvm_err(KVM_FORKED, "%s: this handle was opened by the parent process before fork(); "
                                   "open the database again in the child", e->path);
    return kvm_err(KVM_CLOSED, "database is closed");
}

void env_leave(kvm_env *e) { __atomic_sub_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST); }

int txn_enter(kvm_txn *t)
{
    int rc = env_enter(t->env);
    if (rc)
        return rc;
    if (__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
        env_leave(t->env);
        return kvm_err(KVM_CLOSED, t->write ? "transaction is finished" : "snapshot is closed");
    }
    return 0;
}

int kvm_env_usable(kvm_env *e)
{
    int rc = env_enter(e);
    if (!rc)
        env_leave(e);
    return rc;
}

/* The free space of a writable handle, from the newest commit (which
** open verified, or another handle made: damage here is damage, never a
** power loss).  Under the writer lock. */
int space_open(kvm_env *e)
{
    space_free(e->space);
    e->space = NULL;
    kvm_state s;
    state_load(e, &s);
    int rc = space_new(&e->space, e->psize, s.hwm);
    if (!rc)
        rc = freelist_load(e, e->space, &s);
    e->space_txnid = rc ? 0 : s.txnid;
    if (rc) {
        space_free(e->space);
        e->space = NULL;
    }
    return rc;
}

/* The last handle to close cuts the file to the pages the metas reach: the
** growth overshoot (the file grows by half its size at a time, map.c) and
** a free tail are not kept on disk while nobody has the file open.  No
** other handle has it open (lock_alone) to be reading past the new end,
** and both metas fit in it.  A failure leaves the file longer: harmless. */
static void trim_tail(kvm_env *e)
{
    uint64_t need = meta_pages_needed(e) * e->psize;
    if (need >= (uint64_t)META_PAGES * e->psize && need < e->file_size && kvm_sys.ftruncate(e->fd, (off_t)need) == 0)
        e->file_size = need;
}

/* Release the file and the mapping once no call is in flight.  In a child
** after fork() the lock, mapping and file are the parent's: only the
** child's own copies go (its descriptor and mapping), never a lock, and
** nothing waits for calls that were in flight in the parent's threads. */
void kvm_env_close(kvm_env *e)
{
    if (!e || __atomic_exchange_n(&e->closing, 1, __ATOMIC_SEQ_CST))
        return;
    int forked = env_forked(e);
    while (!forked && __atomic_load_n(&e->inflight, __ATOMIC_SEQ_CST))
        sched_yield();
    /* Commits made with sync=False become durable at close, and the newest
    ** meta is sealed (txn.c, env_seal).  Python's close calls kvm_env_sync
    ** first, to report a failure. */
    if (!forked)
        flush_stop(e);   /* a background flush ends first (flush.c) */
    int writer = !forked && e->opened && !e->readonly && !e->failed;
    if (writer)
        env_seal(e);
    if (e->base)
        kvm_sys.munmap(e->base, e->reserved);
    e->base = NULL;
    if (writer && !e->failed && lock_alone(e))
        trim_tail(e);
    if (e->fd >= 0)
        kvm_sys.close(e->fd);
    e->fd = -1;
    lock_close(e, forked);
    cache_free(&e->cache);
    e->closed = 1;
}

static void env_free(kvm_env *e)
{
    kvm_env_close(e);
    if (!env_forked(e)) {   /* a parent's thread may hold them in the child's copy */
        pthread_rwlock_destroy(&e->map_lock);
        pthread_mutex_destroy(&e->cache_lock);
        pthread_mutex_destroy(&e->durable_lock);
        pthread_mutex_destroy(&e->writer_mutex);
        pthread_mutex_destroy(&e->follow_lock);
        pthread_mutex_destroy(&e->flush_mutex);
        pthread_cond_destroy(&e->flush_cond);
    }
    lock_free(e);
    free(e->scratch);
    free(e->cells);
    space_free(e->space);
    free(e->path);
    free(e);
}

void kvm_env_release(kvm_env *e)
{
    if (e && __atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0)
        env_free(e);
}

/* The first opener: the state from the file (created, or its newest
** commit verified), into the region (lock.c). */
static int build_region(kvm_env *e, const kvm_options *opt, uint32_t want)
{
    /* dbm's flag "n": whatever was there goes, but only once the lock says
    ** no other handle has the file open. */
    int rc = 0;
    if ((opt->flags & KVM_OPEN_NEW) && !e->readonly && e->file_size) {
        if (kvm_sys.ftruncate(e->fd, 0) != 0)
            return kvm_err_sys(KVM_IO, errno, "truncating the file for a new database");
        e->file_size = 0;
    }
    int may_init = !e->readonly && (opt->flags & KVM_OPEN_CREATE);
    if (e->file_size == 0) {
        if (!may_init)
            return kvm_err(KVM_FORMAT, "%s is empty, not a kvmap database", e->path);
        rc = init_file(e, want ? want : KVM_MIN_PAGE);
    } else if (((rc = load_meta(e, want)) != 0 && (rc == KVM_FORMAT || rc == KVM_CORRUPT)) ||
               (!rc && may_init && e->metas_valid < (int)META_PAGES && e->sh->st.txnid <= 1)) {
        /* A file that only an interrupted creation wrote holds nothing (one
        ** whose lost meta pages the others stand in for too: a writable open
        ** finishes the creation, so every slot holds a meta). */
        uint32_t ps = 0;
        int left = creation_leftover(e, want, &ps);
        if (left < 0)
            rc = left;
        else if (left && may_init)
            rc = init_file(e, ps);
        else if (left && rc)
            rc = kvm_err(KVM_FORMAT, "%s holds only an interrupted creation (no data): open it writable "
                                     "to initialise it", e->path);
    }
    e->sh->psize = e->psize;
    e->sh->last_flush_ns = now_ns();   /* the file as opened counts as flushed */
    return rc;
}

int kvm_env_open(const char *path, const kvm_options *opt, kvm_env **out)
{
    uint32_t want = opt->page_size;
    if (want && (want < KVM_MIN_PAGE || want > KVM_MAX_PAGE || (want & (want - 1))))
        return kvm_err(KVM_INVALID, "page size must be a power of two from 4096 to 65536");
    if (opt->backend != KVM_BACKEND_MMAP && opt->backend != KVM_BACKEND_PREAD)
        return kvm_err(KVM_INVALID, "unknown backend");
    if (opt->growth < KVM_GROW_RESERVE || opt->growth > KVM_GROW_REMAP)
        return kvm_err(KVM_INVALID, "unknown growth strategy");
    kvm_env *e = calloc(1, sizeof *e);
    if (!e)
        return kvm_err(KVM_NOMEM, "allocating the environment");
    pthread_once(&fork_once, fork_watch);
    e->refs = 1;
    e->fork_gen = __atomic_load_n(&kvm_fork_gen, __ATOMIC_RELAXED);
    e->verify = (opt->flags & KVM_OPEN_VERIFY) != 0;
    e->grow_min = opt->grow_min ? opt->grow_min : 1ull << 20;
    e->grow_max = opt->grow_max ? opt->grow_max : 1ull << 30;
    e->fd = -1;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&e->map_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&e->cache_lock, NULL);
    pthread_mutex_init(&e->durable_lock, NULL);
    pthread_mutex_init(&e->writer_mutex, NULL);
    pthread_mutex_init(&e->follow_lock, NULL);
    pthread_mutex_init(&e->flush_mutex, NULL);
    pthread_cond_init(&e->flush_cond, NULL);
    e->lock_fd = -1;
    e->sync_bytes = opt->sync_bytes ? opt->sync_bytes : 64ull << 20;
    e->sync_interval_ns = opt->sync_interval_ms * 1000000ull;
    e->readonly = (opt->flags & KVM_OPEN_READONLY) != 0;
    e->backend = opt->backend;
    e->growth = opt->growth;
    e->writemap = opt->backend == KVM_BACKEND_MMAP && !e->readonly && (opt->flags & KVM_OPEN_WRITEMAP);
    e->random_reads = (opt->flags & KVM_OPEN_RANDOM) != 0;
    e->path = strdup(path);
    int rc = 0, first = 0;
    if (!e->path) {
        rc = kvm_err(KVM_NOMEM, "allocating the environment");
        goto fail;
    }
    int oflags = e->readonly ? O_RDONLY : O_RDWR | ((opt->flags & KVM_OPEN_CREATE) ? O_CREAT : 0);
    e->fd = kvm_sys.open(path, oflags, (int)(opt->mode & 07777));
    if (e->fd < 0) {
        rc = kvm_err_sys(KVM_IO, errno, "opening the database file");
        goto fail;
    }
    /* A directory, device or FIFO is refused (before a lock file is made
    ** beside it); the size is read again under the lock. */
    kvm_filestat fs;
    if (kvm_sys.fstat(e->fd, &fs) != 0) {
        rc = kvm_err_sys(KVM_IO, errno, "reading the file's status");
        goto fail;
    }
    uint32_t mode = fs.mode;
    if (S_ISDIR(mode)) {
        rc = kvm_err_sys(KVM_IO, EISDIR, "opening the database file");
        goto fail;
    }
    if (!S_ISREG(mode)) {
        rc = kvm_err(KVM_NOTREGULAR, "%s is a %s, not a regular file: a kvmap database is a regular file",
                     path, S_ISCHR(mode) ? "character device" : S_ISBLK(mode) ? "block device"
                                          : S_ISFIFO(mode) ? "FIFO" : S_ISSOCK(mode) ? "socket" : "special file");
        goto fail;
    }
    if ((rc = lock_open(e, opt->max_readers ? opt->max_readers : 126, opt->mode, &first)))
        goto fail;
    if (kvm_sys.fstat(e->fd, &fs) != 0) {
        rc = kvm_err_sys(KVM_IO, errno, "reading the file's status");
        goto fail;
    }
    e->file_size = fs.size;
    if (first) {
        e->sh->file_dev = fs.dev;
        e->sh->file_ino = fs.ino;
    } else if (e->sh->file_dev != fs.dev || e->sh->file_ino != fs.ino) {
        /* The handles that hold the region have another file open: the
        ** one at this path was deleted or replaced under them. */
        rc = kvm_err(KVM_LOCKED, "%s-lock belongs to handles of another file that was at this path (deleted "
                     "or replaced while open): close them first", path);
        goto fail;
    }
    if (!first) {
        /* The region holds the state: the file is built and in use. */
        if (opt->flags & KVM_OPEN_NEW) {
            rc = kvm_err(KVM_LOCKED, "%s is open in another handle: flag 'n' would empty it under it", path);
            goto fail;
        }
        e->psize = e->sh->psize;
        if (want && want != e->psize) {
            rc = kvm_err(KVM_FORMAT, "%s has %u-byte pages, not %u", path, e->psize, want);
            goto fail;
        }
    } else if ((rc = build_region(e, opt, want)))
        goto fail;
    e->file_size = e->file_size / e->psize * e->psize;
    e->max_cell = (e->psize - PH_SIZE) / 4;
    e->max_key = e->max_cell - 16;
    if (e->backend == KVM_BACKEND_MMAP && !(rc = guard_install()))
        rc = map_open(e, opt->map_size);
    else
        rc = cache_init(&e->cache, opt->cache_bytes / e->psize, e->psize);
    /* The state the first opener found may not be durable (after a crash,
    ** the newest commits may be in the page cache only): the first write
    ** transaction, in whichever handle, flushes it before building on it,
    ** so its commit may take the other meta slot (txn.c, writer_follow). */
    if (!rc && first)
        e->sh->open_flush = e->sh->st.txnid > e->sh->durable;
    /* A writable first opener does that now, and loads its free space, so
    ** damage there is an error at open -- unless something that is not a
    ** handle holds the writer byte (a handle would hold byte 0 too): then
    ** the first write does it. */
    if (!rc && first && !e->readonly && !(rc = lock_writer(e, 0))) {
        kvm_state s;
        rc = writer_follow(e, &s);
        unlock_writer(e);
    } else if (rc == KVM_BUSY)
        rc = 0;
    if (!rc)
        rc = lock_register(e);
    if (!rc && first)
        rc = lock_opened(e);
    if (rc)
        goto fail;
    e->cache_txnid = e->sh->st.txnid;
    e->opened = 1;
    *out = e;
    return 0;
fail:
    env_free(e);
    return rc;
}

int kvm_env_stat(kvm_env *e, kvm_stat *st)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_state s;
    state_load(e, &s);
    memset(st, 0, sizeof *st);
    st->txnid = s.txnid;
    st->root = s.root;
    st->entries = s.entries;
    st->hwm = s.hwm;
    st->free_index = s.free_index;
    st->record = s.record;
    st->free_count = e->space ? space_free_count(e->space) : s.free_count;
    st->pending_count = e->space ? e->space->pending_count : s.pending_count;
    st->floor = s.floor;
    st->durable = __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE);
    st->unsynced_bytes = e->sh->unsynced_bytes;
    st->flushing = __atomic_load_n(&e->sh->flush_txnid, __ATOMIC_ACQUIRE);
    st->depth = s.depth;
    st->page_size = e->psize;
    st->meta_slot = e->sh->meta_slot;
    st->meta_fallback = e->meta_fallback;
    st->meta_nosync = (s.flags & M_FLAGS_NOSYNC) != 0;
    st->failed = e->failed;
    st->file_size = e->file_size;
    st->map_base = (uint64_t)(uintptr_t)e->base;
    st->map_length = e->map_len;
    st->map_reserved = e->reserved;
    st->cache_hits = e->cache.hits;
    st->cache_misses = e->cache.misses;
    st->n_pread = kvm_sys_counts.pread;
    st->n_pwrite = kvm_sys_counts.pwrite;
    st->n_fdatasync = kvm_sys_counts.fdatasync;
    st->n_fallocate = kvm_sys_counts.fallocate;
    st->n_mmap = kvm_sys_counts.mmap;
    st->n_mremap = kvm_sys_counts.mremap;
    st->n_munmap = kvm_sys_counts.munmap;
    st->n_madvise = kvm_sys_counts.madvise;
    st->n_punch = kvm_sys_counts.punch;
    st->n_pwrite_bytes = kvm_sys_counts.pwrite_bytes;
    env_leave(e);
    return 0;
}

/* Figures for people (stats()), so a figure that cannot be read is "not
** known" (UINT64_MAX), never an error: stats() also reports a failed handle,
** whose disk may be failing. */
int kvm_env_space(kvm_env *e, kvm_spacestat *out)
{
    memset(out, 0, sizeof *out);
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_filestat fs;
    if (kvm_sys.fstat(e->fd, &fs) != 0) {
        out->file_size = out->allocated = UINT64_MAX;
    } else {
        out->file_size = fs.size;
        out->allocated = fs.allocated;
    }
    /* A snapshot of the newest commit (which holds nothing back: nothing
    ** was freed after it) keeps the records read below from reuse. */
    kvm_txn r = {.env = e, .slot = -1};
    out->pinned_pages = UINT64_MAX;
    if (snapshot_acquire(e, &r) != 0) {   /* every reader slot taken, or the file cut short */
        out->oldest_reader = env_oldest_reader(e);
    } else {
        const kvm_state *s = &r.commit;
        out->txnid = s->txnid;
        out->oldest_reader = env_oldest_other(e, r.slot);
        /* the pages freed by the commits after the oldest snapshot's, still
        ** pending: the live records of (max(oldest, floor), txnid] */
        uint64_t pinned = 0;
        if (out->oldest_reader >= s->txnid ||
            records_pending(e, s, out->oldest_reader > s->floor ? out->oldest_reader : s->floor, &pinned) == 0)
            out->pinned_pages = pinned;
        snapshot_release(e, &r);
    }
    env_leave(e);
    return 0;
}

uint32_t kvm_env_max_key(kvm_env *e) { return e->max_key; }
/* The newest committed state, for the calls that report one of its fields. */
static int state_now(kvm_env *e, kvm_state *s)
{
    int rc = env_enter(e);
    if (!rc) {
        state_load(e, s);
        env_leave(e);
    }
    return rc;
}

int64_t kvm_env_entries(kvm_env *e)
{
    kvm_state s;
    int rc = state_now(e, &s);
    return rc ? rc : (int64_t)s.entries;
}

int64_t kvm_env_txnid(kvm_env *e)
{
    kvm_state s;
    int rc = state_now(e, &s);
    return rc ? rc : (int64_t)s.txnid;
}

/* Read a free-space page below hwm with pread: number in range, checksum, type and
** header page number verified. */
int env_read_page(kvm_env *e, uint64_t pgno, uint64_t hwm, int type, char *out)
{
    uint8_t *p = (uint8_t *)out;
    if (pgno < META_PAGES || pgno >= hwm)
        return kvm_err(KVM_CORRUPT, "page number %llu out of range", (unsigned long long)pgno);
    ssize_t n = kvm_sys.pread(e->fd, p, e->psize, (off_t)(pgno * e->psize));
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading a page");
    if (n != (ssize_t)e->psize)
        return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pgno);
    if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, e->psize - 4))
        return kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch", (unsigned long long)pgno);
    if (p[PH_TYPE] != type || rd64(p + PH_PGNO) != pgno)
        return kvm_err(KVM_CORRUPT, "page %llu: not the expected free-list page", (unsigned long long)pgno);
    return 0;
}

/* Make every commit so far durable (txn.c, env_flush). */
int kvm_env_sync(kvm_env *e, int wait)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = env_sync(e, wait);
    env_leave(e);
    return rc;
}

/* Temporary mappings of this many bytes at most: the address space warming
** takes stays small (RLIMIT_AS, the reserve growth's reservation). */
#define WARM_CHUNK (64u << 20)

/* MAP_POPULATE of a temporary mapping, one piece at a time: the fastest of
** the ways measured (docs/ARCHITECTURE.md §2, Warming), the same for both backends,
** read-ahead whatever the advice of the database's own mapping.  Nothing
** here touches the pages, so a file cut short meanwhile only ends the
** population early: no SIGBUS to guard. */
int kvm_env_warm(kvm_env *e)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_state s;
    state_load(e, &s);
    uint64_t end = s.hwm * e->psize;
    rc = file_intact(e);
    for (uint64_t off = 0; !rc && off < end; off += WARM_CHUNK) {
        size_t len = end - off < WARM_CHUNK ? (size_t)(end - off) : WARM_CHUNK;
        void *p = kvm_sys.mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, e->fd, (off_t)off);
        if (p == MAP_FAILED)
            rc = kvm_err_sys(KVM_IO, errno, "mapping the database file to read it in");
        else
            kvm_sys.munmap(p, len);
    }
    env_leave(e);
    return rc;
}

int kvm_env_check(kvm_env *e)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = e->space ? space_check(e->space) : 0;
    env_leave(e);
    return rc;
}
