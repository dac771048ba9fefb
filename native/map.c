/*
** map.c -- the mapping of the mmap backend, and the growth of the file.
**
** Design and invariants
**  1. The mapping covers exactly the file (MAP_SHARED, PROT_READ unless
**     writemap).  Growth "reserve" maps new file pieces into a PROT_NONE
**     reservation right after the mapped part (the base never moves);
**     "mremap" and "remap" replace the mapping under the map lock's write
**     side, while every call holds its read side (op_enter) for the call
**     only, never for a transaction.
**  2. The file grows with posix_fallocate before any new page is touched,
**     so a full disk is an error, never a SIGBUS; a failed growth truncates
**     back and leaves the mapping as it was.  The policy (env_ensure_pages):
**     steps of half the file between grow_min and grow_max, or exactly what
**     is needed when a step does not fit on the disk or in the mapping.
**  3. A file cut short from outside is found at every transaction begin and
**     growth (file_intact), before a fault could be.
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
#include <unistd.h>

/* ---------------------------------------------------------------- mapping */

void op_enter(kvm_env *e)
{
    kvm_op_depth++;
    if (e->backend == KVM_BACKEND_PREAD)
        pthread_mutex_lock(&e->cache_lock);
    else if (e->map_moves)
        pthread_rwlock_rdlock(&e->map_lock);
}

void op_leave(kvm_env *e)
{
    kvm_op_depth--;
    if (e->backend == KVM_BACKEND_PREAD)
        pthread_mutex_unlock(&e->cache_lock);
    else if (e->map_moves)
        pthread_rwlock_unlock(&e->map_lock);
}

static int map_prot(kvm_env *e) { return PROT_READ | (e->writemap ? PROT_WRITE : 0); }

/* A new mapping has the default advice: the kernel reads around a page
** fault (read_ahead_kb), and stops by itself for a file faulted mostly at
** random.  KVM_OPEN_RANDOM asks for MADV_RANDOM instead (docs/ARCHITECTURE.md
** §2: writemap, databases much larger than memory). */
static void map_advise(kvm_env *e, void *p, uint64_t len)
{
    if (e->random_reads)
        kvm_sys.madvise(p, len, MADV_RANDOM);
}

int map_open(kvm_env *e, uint64_t map_size)
{
    uint64_t len = e->file_size;
    if (e->growth == KVM_GROW_RESERVE) {
        uint64_t res = map_size > len ? map_size : len;
        res = (res + e->psize - 1) / e->psize * e->psize;
        void *r;
        for (;;) {
            r = kvm_sys.mmap(NULL, res, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (r != MAP_FAILED)
                break;
            if (res / 2 < len)
                return kvm_err_sys(KVM_MAPFULL, errno, "reserving address space for the mapping");
            res = (res / 2 + e->psize - 1) / e->psize * e->psize;  /* RLIMIT_AS: settle for less */
        }
        void *p = kvm_sys.mmap(r, len, map_prot(e), MAP_SHARED | MAP_FIXED, e->fd, 0);
        if (p == MAP_FAILED) {
            int en = errno;
            kvm_sys.munmap(r, res);
            return kvm_err_sys(KVM_MAPFULL, en, "mapping the database file");
        }
        e->base = p;
        e->reserved = res;
    } else {
        void *p = kvm_sys.mmap(NULL, len, map_prot(e), MAP_SHARED, e->fd, 0);
        if (p == MAP_FAILED)
            return kvm_err_sys(KVM_MAPFULL, errno, "mapping the database file");
        e->base = p;
        e->reserved = len;
        e->map_moves = 1;
    }
    e->map_len = len;
    map_advise(e, e->base, len);
    return 0;
}

static int map_extend(kvm_env *e, uint64_t len)
{
    if (e->growth == KVM_GROW_RESERVE) {
        if (len > e->reserved)
            return kvm_err(KVM_MAPFULL,
                           "the database needs %llu bytes but only %llu bytes of address space "
                           "are reserved (%llu more pages fit): reopen with a larger map_size",
                           (unsigned long long)len, (unsigned long long)e->reserved,
                           (unsigned long long)((e->reserved - e->map_len) / e->psize));
        uint8_t *at = e->base + e->map_len;
        void *p = kvm_sys.mmap(at, len - e->map_len, map_prot(e), MAP_SHARED | MAP_FIXED,
                               e->fd, (off_t)e->map_len);
        if (p == MAP_FAILED) {
            int en = errno;
            /* A failed MAP_FIXED may have dropped that part of the reservation:
            ** take it back, or stop growing into it. */
            void *r = kvm_sys.mmap(at, e->reserved - e->map_len, PROT_NONE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
            if (r == MAP_FAILED && errno != EEXIST)
                e->reserved = e->map_len;
            else if (r != MAP_FAILED && r != at) {
                kvm_sys.munmap(r, e->reserved - e->map_len);
                e->reserved = e->map_len;
            }
            return kvm_err_sys(KVM_MAPFULL, en, "mapping the grown part of the file");
        }
        map_advise(e, at, len - e->map_len);
        __atomic_store_n(&e->map_len, len, __ATOMIC_RELEASE);   /* readers check pages against it */
        return 0;
    }
    pthread_rwlock_wrlock(&e->map_lock);
    void *p;
    if (e->growth == KVM_GROW_MREMAP)
        p = kvm_sys.mremap(e->base, e->map_len, len, MREMAP_MAYMOVE);
    else
        p = kvm_sys.mmap(NULL, len, map_prot(e), MAP_SHARED, e->fd, 0);
    if (p == MAP_FAILED) {
        int en = errno;
        pthread_rwlock_unlock(&e->map_lock);
        return kvm_err_sys(KVM_MAPFULL, en, e->growth == KVM_GROW_MREMAP ? "mremap" : "mmap");
    }
    if (e->growth == KVM_GROW_REMAP) {
        kvm_sys.munmap(e->base, e->map_len);
        map_advise(e, p, len);
    } else {
        map_advise(e, (uint8_t *)p + e->map_len, len - e->map_len);
    }
    e->base = p;
    e->map_len = len;
    e->reserved = len;
    pthread_rwlock_unlock(&e->map_lock);
    return 0;
}

/* A file cut short under us (by another process: locks are advisory) would
** fault in the mapping or be silently extended with holes by the next
** write: say so before a transaction starts and before the file grows. */
int file_intact(kvm_env *e)
{
    /* Read our size before the file's: a growth in another thread between
    ** the two then only makes the file look larger. */
    uint64_t need = __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE);
    kvm_filestat fs;
    if (kvm_sys.fstat(e->fd, &fs) != 0)
        return kvm_err_sys(KVM_IO, errno, "checking the size of the database file");
    uint64_t size = fs.size;
    if (size < need)
        return kvm_err(KVM_CORRUPT, "%s was truncated while open: it has %llu bytes, the database "
                       "needs %llu", e->path, (unsigned long long)size, (unsigned long long)need);
    return 0;
}

/* Bring this handle up to state s, which another handle may have
** committed (readers.c, lock.c): the file it needs (that handle may have
** grown it) mapped, and, for the pread backend, no page in the cache that
** a commit since the cache's last look changed. */
int env_follow(kvm_env *e, const kvm_state *s)
{
    uint64_t need = s->hwm * e->psize;
    int rc = 0;
    if (need > __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE) ||
        (e->backend == KVM_BACKEND_MMAP && need > __atomic_load_n(&e->map_len, __ATOMIC_ACQUIRE))) {
        pthread_mutex_lock(&e->follow_lock);
        kvm_filestat fs;
        uint64_t size = 0;
        if (kvm_sys.fstat(e->fd, &fs) != 0)
            rc = kvm_err_sys(KVM_IO, errno, "checking the size of the database file");
        else if ((size = fs.size / e->psize * e->psize) < need)
            rc = kvm_err(KVM_CORRUPT, "%s was truncated while open: it has %llu bytes, the database "
                         "needs %llu", e->path, (unsigned long long)size, (unsigned long long)need);
        else {
            if (e->backend == KVM_BACKEND_MMAP && size > e->map_len)
                rc = map_extend(e, size);
            if (!rc && size > e->file_size)
                __atomic_store_n(&e->file_size, size, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&e->follow_lock);
    }
    if (!rc && e->backend == KVM_BACKEND_PREAD)
        cache_follow(e, s);
    return rc;
}

static int env_grow(kvm_env *e, uint64_t pages)
{
    if (e->readonly)
        return kvm_err(KVM_READONLY, "database is open read-only");
    if (e->failed)
        return env_failed(e);
    if (pages > UINT64_MAX / e->psize / 2)
        return kvm_err(KVM_DISKFULL, "database size limit reached");
    uint64_t len = pages * e->psize;
    if (len <= e->file_size)
        return 0;
    int rc = file_intact(e);
    if (rc)
        return rc;
    rc = kvm_sys.posix_fallocate(e->fd, (off_t)e->file_size, (off_t)(len - e->file_size));
    if (rc != 0) {
        kvm_sys.ftruncate(e->fd, (off_t)e->file_size);   /* ext4 keeps what it got */
        return kvm_err_sys(space_code(rc), rc, "growing the database file");
    }
    pthread_mutex_lock(&e->follow_lock);   /* a reader thread may be mapping what another handle grew */
    if (e->backend == KVM_BACKEND_MMAP && len > e->map_len)
        rc = map_extend(e, len);
    if (rc)
        kvm_sys.ftruncate(e->fd, (off_t)e->file_size);
    else
        __atomic_store_n(&e->file_size, len, __ATOMIC_RELEASE);   /* file_intact reads it unlocked */
    pthread_mutex_unlock(&e->follow_lock);
    return rc;
}

/* The growth policy's step for a database of `pages` pages, in pages:
** half of them, between grow_min and grow_max (env_ensure_pages, and the
** give-back reserve below). */
static uint64_t growth_step_pages(kvm_env *e, uint64_t pages)
{
    uint64_t ps = e->psize, step = pages / 2;
    step = step < e->grow_min / ps ? e->grow_min / ps : step;
    return step > e->grow_max / ps ? e->grow_max / ps : step;
}

/* Grow the file to hold `pages` pages: a geometric step (half the file,
** between grow_min and grow_max), or exactly `pages` when the step does not
** fit on the disk or in the mapping. */
int env_ensure_pages(kvm_env *e, uint64_t pages)
{
    uint64_t have = e->file_size / e->psize;
    if (pages <= have)
        return 0;
    /* Half the file, clamped; just grow_min when a flush has just released
    ** what it could and will release more soon (txn.c, make_room). */
    uint64_t step = growth_step_pages(e, e->grow_lean ? 0 : have);
    e->grow_lean = 0;
    uint64_t target = have + step;
    if (target < pages)
        target = pages;
    int rc = env_grow(e, target);
    if ((rc == KVM_DISKFULL || rc == KVM_MAPFULL) && target > pages)
        rc = env_grow(e, pages);
    return rc;
}

/* Released runs at least this long leave the process's resident set
** (MADV_DONTNEED; no disk space is freed).  Shorter runs are left alone:
** churn reuses them at once and a madvise per page costs more than it saves. */
#define ADVISE_MIN_RUN 16

void advise_free(kvm_env *e, const u64vec *runs)
{
    if (e->backend != KVM_BACKEND_MMAP)
        return;
    op_enter(e);
    for (size_t i = 0; i < runs->n; i += 2) {
        uint64_t start = runs->v[i], count = runs->v[i + 1];
        if (count < ADVISE_MIN_RUN || start < META_PAGES || (start + count) * e->psize > e->map_len)
            continue;
        kvm_sys.madvise(e->base + start * e->psize, count * e->psize, MADV_DONTNEED);
    }
    op_leave(e);
}

/* The give-back reserve (docs/ARCHITECTURE.md §4), in pages: the free
** pages a pass keeps allocated for the next takes.  It is one growth step
** for the pages in use (half of them, between grow_min and grow_max), or a
** quarter of them when `prompt` (env_give_back), or, when that is more,
** what one of the last 8 commits took and kept (the ring; the take of the
** commit just made joins it): steady commits find what they take
** allocated, and a workload that frees many pages and takes them back (a
** delete of every key, then a reload) keeps them. */
#define PROMPT_SHARE 4   /* the quarter, for the reserve and the step */
#define PROMPT_STEP_MIN 16

static uint64_t give_back_reserve(kvm_env *e, uint64_t used, int prompt)
{
    kvm_space *sp = e->space;
    size_t window = sizeof sp->taken_recent / sizeof *sp->taken_recent;
    sp->taken_recent[sp->taken_next++ % window] = sp->taken;
    uint64_t most = 0, keep = prompt ? used / PROMPT_SHARE : growth_step_pages(e, used);
    for (size_t i = 0; i < window; i++)
        if (most < sp->taken_recent[i])
            most = sp->taken_recent[i];
    if (keep > e->grow_max / e->psize)
        keep = e->grow_max / e->psize;
    return keep > most ? keep : most;
}

/* After a commit (freelist_adopt, under the writer lock): give the file
** system back the free runs space_punch_plan chooses, punched out of the
** file, but for the reserve.
**
** `prompt`: the commit is durable, no snapshot is older than it, and at
** most one commit's freed pages are pending -- as after every sync=True
** commit.  The next write transaction's begin then makes the pending
** pages reusable, before it takes a page, and they are allocated already:
** they count in the reserve, which is a quarter of the pages in use, and a
** pass is due when the free pages beyond it grew by a quarter of the pages
** in use (16 at least, grow_min at most).  But while fewer pages than that
** are free below hwm (holes included), the next takes reach the file past
** hwm, the growth step the database is filling: the reserve is then one
** growth step, as below, so what the file just grew by is not punched and
** allocated again page by page.  With this, once a long snapshot ends, a
** small database's file holds about 1.4 times its pages in use again
** (tests/test_reclaim.py), and steady commits, which take what the commit
** before freed, never punch.
**
** Otherwise the reserve is one growth step for the pages in use and a pass
** waits for grow_min beyond it.  A sync=False writer keeps the pages it
** frees until a flush, which starts only once the free pages that need no
** allocation run short while 256 KiB and a sixteenth of the database are
** held (txn.c, flush_due and make_room): it goes through every free page
** the file has between two flushes, and what a pass punched of them would
** be allocated again
** (a commit that is durable now and then, by sync_bytes or sync_interval,
** has the pages of many commits pending, so it is not prompt either).  An
** older snapshot's pages come back at once when it ends; the first prompt
** commit after that gives them back.
**
** Every pass is also due only by 1/1024 of the database, which bounds the
** bitmap scan per page given back.  Advisory, like madvise: a punch that
** fails leaves the data as it was and is skipped; a file system that
** cannot punch holes is not asked again. */
void env_give_back(kvm_env *e)
{
    kvm_space *sp = e->space;
    uint64_t ps = e->psize, used = sp->hwm - space_free_count(sp) - sp->pending_count, step = e->grow_min / ps;
    int prompt = __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE) == e->space_txnid && sp->npending <= 1 &&
                 env_oldest_reader(e) >= e->space_txnid;
    uint64_t keep = give_back_reserve(e, used, prompt);
    if (prompt) {
        keep -= keep < sp->pending_count ? keep : sp->pending_count;
        if (kvm_fm_count(sp->fm) < keep) {
            uint64_t filling = growth_step_pages(e, used);
            keep = keep > filling ? keep : filling;
        } else if (step > used / PROMPT_SHARE)
            step = used / PROMPT_SHARE;
        if (step < PROMPT_STEP_MIN)
            step = PROMPT_STEP_MIN;
    }
    if (step < sp->hwm / 1024)
        step = sp->hwm / 1024;
    u64vec runs = {0};
    if (!space_punch_plan(sp, e->file_size / ps, keep, step, &runs))
        for (size_t i = 0; i < runs.n; i += 2)
            if (kvm_sys.punch(e->fd, (off_t)(runs.v[i] * ps), (off_t)(runs.v[i + 1] * ps)) != 0 &&
                (errno == EOPNOTSUPP || errno == ENOSYS)) {
                sp->no_punch = 1;
                break;
            }
    u64_free(&runs);
}

/* Allocate again the pages of `taken` (the runs of one take, before
** anything writes them) that may be holes (space.h): a full disk is then
** DiskFullError here, not a SIGBUS when a writable map or the kernel's
** writeback stores into the page. */
int env_refill(kvm_env *e, const u64vec *taken)
{
    u64vec spans = {0};
    int rc = space_holes_of(e->space, taken, &spans);
    for (size_t i = 0; i < spans.n && !rc; i += 2) {
        uint64_t s = spans.v[i], n = spans.v[i + 1];
        int en = kvm_sys.posix_fallocate(e->fd, (off_t)(s * e->psize), (off_t)(n * e->psize));
        if (en)
            rc = kvm_err_sys(space_code(en), en, "allocating free pages again");
        else
            kvm_fm_set(e->space->holes, s, s + n, 0);   /* clearing needs no memory */
    }
    u64_free(&spans);
    return rc;
}
