/*
** txn.c -- transactions: begin, end, the page pool, and the commit.
**
** Design and invariants
**  1. A transaction is reference counted (the Python object, one per open
**     cursor) and freed only by kvm_txn_release; an end (commit, abort)
**     only marks it done.  A commit that releases the GIL claims the
**     transaction first (busy), so an abort from another thread waits.
**  2. A write transaction takes its pages from the free space (space.c)
**     into its pool before each operation changes anything, growing the
**     file first; an end without a commit rolls the free space back.
**  3. The commit (FORMAT.md §7): free-list pages (freelist.c), checksums,
**     every dirty page in page order, fdatasync, the meta at txnid % 2,
**     fdatasync.  Nothing reachable from either meta is ever written.
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

/* ------------------------------------------------------------ transactions */

/* End a transaction: its reader slot and pages go, the struct stays for
** the references that still point at it (kvm_txn_release frees it). */
static int txn_end(kvm_txn *t)
{
    if (t->done)
        return 0;
    if (t->write && !t->committed && t->env->space)
        space_rollback(t->env->space);   /* the free pages it took go back */
    snapshot_release(t->env, t);
    if (t->dirty)
        for (size_t i = 0; i < t->dcap; i++)
            free(t->dirty[i].buf);
    free(t->dirty);
    free(t->pool.v);
    free(t->freed.v);
    t->dirty = NULL;
    t->dcap = t->ndirty = 0;
    memset(&t->pool, 0, sizeof t->pool);
    memset(&t->freed, 0, sizeof t->freed);
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    return 1;
}

static int txn_begin(kvm_env *e, int write, kvm_txn **out)
{
    int rc = file_intact(e);
    if (rc)
        return rc;
    if (write && e->readonly)
        return kvm_err(KVM_READONLY, "database is open read-only");
    if (write && e->failed)
        return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
    kvm_txn *t = calloc(1, sizeof *t);
    if (!t)
        return kvm_err(KVM_NOMEM, "allocating a transaction");
    t->env = e;
    t->refs = 1;
    t->slot = -1;
    if (!write) {
        rc = snapshot_acquire(e, t);
        if (rc) {
            free(t);
            return rc;
        }
    } else {
        kvm_state s;
        state_load(e, &s);
        t->write = 1;
        t->txnid = s.txnid + 1;
        t->root = s.root;
        t->depth = s.depth;
        t->entries = s.entries;
        t->limit = s.hwm;
        t->dcap = 256;
        t->dirty = calloc(t->dcap, sizeof *t->dirty);
        if (!e->scratch) {   /* one writer at a time: the scratch space is the environment's */
            e->scratch = malloc((size_t)e->psize * 5);
            e->cells = malloc((size_t)e->psize * 2 * sizeof(void *));
        }
        t->scratch = e->scratch;
        t->cells = e->cells;
        if (!t->dirty || !t->scratch || !t->cells) {
            txn_end(t);
            free(t);
            return kvm_err(KVM_NOMEM, "allocating a write transaction");
        }
        /* Pages freed by commit F may be reused by this transaction once no
        ** live snapshot can see them (F <= every snapshot's txnid) and the
        ** older meta's tree is not theirs (F <= txnid - 2: until this
        ** commit's meta is on disk, metas txnid-1 and txnid-2 must both
        ** lead to intact trees). */
        uint64_t upto = env_oldest_reader(e), older = t->txnid - 2;
        u64vec released = {0};
        rc = space_release(e->space, upto < older ? upto : older, &released);
        if (!rc && released.n)
            advise_free(e, &released);
        u64_free(&released);
        space_begin(e->space);
        if (rc) {
            txn_end(t);
            free(t);
            return rc;
        }
    }
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_ACQ_REL);
    *out = t;
    return 0;
}

int kvm_txn_begin(kvm_env *e, int write, kvm_txn **out)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = txn_begin(e, write, out);
    env_leave(e);
    return rc;
}

int kvm_txn_abort(kvm_txn *t)
{
    if (!t)
        return 0;
    /* A commit running in another thread (without the GIL) finishes first
    ** (in a child after fork() that thread does not exist). */
    while (__atomic_load_n(&t->busy, __ATOMIC_ACQUIRE) && !env_forked(t->env))
        sched_yield();
    return txn_end(t);
}

void kvm_txn_release(kvm_txn *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    kvm_env *e = t->env;
    kvm_txn_abort(t);
    free(t);
    kvm_env_release(e);
}

/* The body of a public call on a transaction: run `expr` between
** txn_enter and txn_leave, or return what txn_enter refused with. */
#define TXN_CALL(t, type, expr)        \
    do {                               \
        int rc_ = txn_enter(t);        \
        if (rc_)                       \
            return rc_;                \
        type r_ = (expr);              \
        txn_leave(t);                  \
        return r_;                     \
    } while (0)

/* runs: pairs (start, count), lowest first; popped lowest first. */
static int pool_add(kvm_txn *t, const uint64_t *runs, size_t nruns)
{
    kvm_env *e = t->env;
    for (size_t r = nruns; r-- > 0;) {
        uint64_t start = runs[2 * r], count = runs[2 * r + 1];
        if (!t->write || start < 2 || start + count < start || (start + count) * e->psize > e->file_size)
            return kvm_err(KVM_INVALID, "pool pages [%llu, %llu) are not in the file",
                           (unsigned long long)start, (unsigned long long)(start + count));
        for (uint64_t i = count; i-- > 0;) {
            int rc = u64_push(&t->pool, start + i);
            if (rc)
                return rc;
        }
        if (start + count > t->limit)
            t->limit = start + count;
    }
    return 0;
}

/* At least `need` pages in the transaction's pool, before an operation
** changes anything (so running out never leaves a change half made): a
** chunk of 64 when the file has room for it, else exactly `need`.  The file
** grows first, so a full disk is an error here, never a SIGBUS later. */
int txn_pool_ensure(kvm_txn *t, uint64_t need)
{
    if (t->pool.n >= need)
        return 0;
    kvm_env *e = t->env;
    kvm_space *sp = e->space;
    u64vec runs = {0};
    uint64_t want = need > 64 ? need : 64;
    int rc = space_take(sp, want, &runs);
    if (!rc && (rc = env_ensure_pages(e, sp->hwm)) && (rc == KVM_DISKFULL || rc == KVM_MAPFULL) && want > need) {
        runs.n = 0;
        if (!(rc = space_undo_take(sp)) && !(rc = space_take(sp, need, &runs)))
            rc = env_ensure_pages(e, sp->hwm);
    }
    if (!rc)
        rc = pool_add(t, runs.v, runs.n / 2);
    u64_free(&runs);
    return rc;
}

int64_t kvm_txn_entries(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->entries); }
int64_t kvm_txn_id(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->txnid); }

/* A free-list page of the commit (freelist.c), as a dirty page. */
int txn_put_page(kvm_txn *t, uint64_t pgno, int type, unsigned nkeys, uint64_t next,
                 const void *body, size_t len)
{
    kvm_env *e = t->env;
    if (!t->write || pgno < 2 || (pgno + 1) * e->psize > e->file_size || len > e->psize - PH_SIZE ||
        nkeys > 0xffff)
        return kvm_err(KVM_INVALID, "bad free-list page %llu", (unsigned long long)pgno);
    uint8_t *p;
    int rc = dirty_page(t, pgno, type, &p);
    if (rc)
        return rc;
    wr16(p + PH_NKEYS, (uint16_t)nkeys);
    wr64(p + PH_NEXT, next);
    memcpy(p + PH_SIZE, body, len);
    if (pgno >= t->limit)
        t->limit = pgno + 1;
    return 0;
}

static int cmp_dirty(const void *a, const void *b)
{
    pgno_t x = (*(dirty_ent *const *)a)->pgno, y = (*(dirty_ent *const *)b)->pgno;
    return x < y ? -1 : x > y;
}

/* The commit's pages, sorted by number, with one pwritev per contiguous
** run, cut at every WRITE_RUN-page boundary.  Measured on ext4 (bench/
** write_shape.py, docs/ARCHITECTURE.md §2): the page cache builds folios as
** large as the writes; a later 4 KiB write into a 1-2 MiB folio costs about
** 8x the CPU, and a store through a writable map makes fdatasync write the
** whole folio.  Runs of at most 16 pages keep folios at 64 KiB and still
** halve the time of a bulk commit against one pwrite per page. */
#define WRITE_RUN 16

static int write_pages(kvm_env *e, dirty_ent **order, size_t n)
{
    struct iovec iov[WRITE_RUN];
    for (size_t i = 0; i < n;) {
        pgno_t first = order[i]->pgno;
        int k = 0;
        do {
            iov[k].iov_base = order[i]->buf;
            iov[k].iov_len = e->psize;
            k++;
            i++;
        } while (i < n && order[i]->pgno == first + (pgno_t)k && order[i]->pgno % WRITE_RUN != 0);
        int rc = file_write(e, iov, k, (off_t)(first * e->psize), "writing pages");
        if (rc)
            return rc;
    }
    return 0;
}

static int checksum_pages(kvm_txn *t, dirty_ent **order, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = dirty_ptr(t, order[i]);
        wr32(p + PH_CHECKSUM, kvm_crc32c(0, p + 4, t->env->psize - 4));
    }
    return 0;
}

static int txn_changed(kvm_txn *t)
{
    if (t->freed.n)
        return 1;
    for (size_t i = 0; i < t->dcap; i++)
        if (t->dirty[i].pgno && t->dirty[i].live)
            return 1;
    return 0;
}

static int txn_commit(kvm_txn *t, int sync)
{
    kvm_env *e = t->env;
    if (!t->write)
        return kvm_err(KVM_INVALID, "commit of a read-only transaction");
    if (e->failed)
        return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
    if (!txn_changed(t)) {   /* nothing to write, and no txnid used */
        txn_end(t);
        return 0;
    }
    kvm_state s = {.txnid = t->txnid, .root = t->root, .entries = t->entries, .depth = t->depth,
                   .flags = sync ? 0 : M_FLAGS_NOSYNC};
    int rc;
    GUARDED(e, t, rc, freelist_prepare(t, e->space, &s));   /* writemap: its pages are mapped */
    if (rc)
        return rc;
    if (s.hwm < 2 || s.hwm * e->psize > e->file_size)
        return kvm_err(KVM_INVALID, "commit with a high-water mark of %llu pages", (unsigned long long)s.hwm);

    dirty_ent **order = malloc((t->ndirty + 1) * sizeof *order);
    if (!order)
        return kvm_err(KVM_NOMEM, "allocating the commit list");
    size_t n = 0;
    for (size_t i = 0; i < t->dcap; i++)
        if (t->dirty[i].pgno && t->dirty[i].live) {
            if (t->dirty[i].pgno >= s.hwm) {
                free(order);
                return kvm_err(KVM_INVALID, "page %llu lies above the high-water mark %llu",
                               (unsigned long long)t->dirty[i].pgno, (unsigned long long)s.hwm);
            }
            order[n++] = &t->dirty[i];
        }
    qsort(order, n, sizeof *order, cmp_dirty);
    GUARDED(e, t, rc, checksum_pages(t, order, n));   /* writemap: the pages are mapped */
    if (!rc && !e->writemap)
        rc = write_pages(e, order, n);
    if (!rc && sync && kvm_sys.fdatasync(e->fd) != 0) {
        e->failed = 1;  /* the kernel may have dropped the dirty pages: never retry */
        rc = kvm_err_sys(KVM_IO, errno, "syncing pages (the handle refuses writes until reopened)");
    }
    if (!rc) {
        uint8_t m[META_SIZE];
        meta_encode(m, e->psize, &s);
        struct iovec iov = {m, META_SIZE};
        ssize_t w = kvm_sys.pwritev(e->fd, &iov, 1, (off_t)((s.txnid & 1) * e->psize));
        if (w < 0 && space_code(errno) == KVM_DISKFULL) {
            /* Nothing was written: the commit did not happen, the older meta
            ** stands and the handle stays usable (DiskFullError's promise). */
            rc = kvm_err_sys(KVM_DISKFULL, errno, "writing the meta page");
        } else if (w != META_SIZE) {
            /* EIO may report an earlier writeback failure; a short write
            ** left part of a meta: trust nothing more of this handle. */
            e->failed = 1;
            rc = kvm_err_sys(KVM_IO, w < 0 ? errno : EIO,
                             "writing the meta page (the handle refuses writes until reopened)");
        } else if (sync && kvm_sys.fdatasync(e->fd) != 0) {
            e->failed = 1;
            rc = kvm_err_sys(KVM_IO, errno, "syncing the meta page (the handle refuses writes until reopened)");
        }
    }
    if (!rc && e->backend == KVM_BACKEND_PREAD) {
        pthread_mutex_lock(&e->cache_lock);
        for (size_t i = 0; i < n; i++) {
            int32_t sl = cache_find(&e->cache, order[i]->pgno);
            if (sl >= 0)
                memcpy(e->cache.mem + (size_t)sl * e->psize, order[i]->buf, e->psize);
        }
        pthread_mutex_unlock(&e->cache_lock);
    }
    free(order);
    if (rc)
        return rc;
    e->meta_slot = (int)(s.txnid & 1);
    state_publish(e, &s);
    freelist_adopt(e->space);
    space_begin(e->space);
    t->committed = 1;
    txn_end(t);
    return 0;
}

/* A commit may run without the GIL (pyglue.h): claim the transaction while
** the caller still holds it, so an abort from another thread waits for the
** commit instead of freeing its pages under it. */
int kvm_txn_claim(kvm_txn *t)
{
    int rc = txn_enter(t);
    if (rc)
        return rc;
    if (__atomic_exchange_n(&t->busy, 1, __ATOMIC_ACQ_REL)) {
        txn_leave(t);
        return kvm_err(KVM_INVALID, "the transaction is being committed by another thread");
    }
    return 0;
}

int kvm_txn_commit_claimed(kvm_txn *t, int sync)
{
    int rc = txn_commit(t, sync);
    __atomic_store_n(&t->busy, 0, __ATOMIC_RELEASE);
    txn_leave(t);
    return rc;
}

int kvm_txn_commit(kvm_txn *t, int sync)
{
    int rc = kvm_txn_claim(t);
    return rc ? rc : kvm_txn_commit_claimed(t, sync);
}
