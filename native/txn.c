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
**  3. The commit (FORMAT.md §7): free-space pages (freelist.c), checksums,
**     the commit record, every page in page order, the meta into the slot
**     that does not hold the newest durable commit, then one fdatasync when
**     the commit is to be durable (sync=True, or sync_bytes unsynced).  A
**     commit larger than 4 * sync_bytes syncs its pages before its meta
**     (and then the meta), so open never verifies more than sync_bytes plus
**     one commit.  Nothing reachable from a meta that open may choose is
**     ever written.  Close seals the newest commit (env_seal).
**  4. A page written by commit C and freed by commit F is reused only once
**     no snapshot and not the newest durable commit lies in [C, F)
**     (space.h), so after a power loss the newest durable meta and every
**     commit open verifies are intact.
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
    if (t->write)
        unlock_writer(t->env);
    snapshot_release(t->env, t);
    if (t->dirty)
        for (size_t i = 0; i < t->dcap; i++)
            free(t->dirty[i].buf);
    free(t->dirty);
    free(t->pool.v);
    free(t->freed.v);
    free(t->shadowed.v);
    free(t->saved);
    t->dirty = NULL;
    t->saved = NULL;
    t->dcap = t->ndirty = t->nsaved_cap = 0;
    t->level = 0;
    memset(&t->pool, 0, sizeof t->pool);
    memset(&t->freed, 0, sizeof t->freed);
    memset(&t->shadowed, 0, sizeof t->shadowed);
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    return 1;
}

/* Pages freed by commit F may be reused once no live snapshot can see them
** (F <= every snapshot's txnid) and F is durable: after a power loss open
** may fall back to the newest durable meta, and verifies the commits after
** it (design note 4); pages written after that meta, sooner (space.h).
** The page-by-page rule waits for growth (make_room, reclaim_precise). */
static int reclaim(kvm_env *e)
{
    u64vec released = {0};
    int rc = space_release(e->space, env_oldest_reader(e), __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE),
                           env_fresh_base(e), &released);
    if (!rc && released.n)
        advise_free(e, &released);
    u64_free(&released);
    return rc;
}

/* The commit that wrote page pg, from its header (space_reclaim): 0 when
** the header does not name the page (a page copy leaves pending pages
** zero) or lies past the end of the file, so unknown. */
static int page_writer(void *ctx, uint64_t pg, uint64_t *writer)
{
    kvm_env *e = ctx;
    uint8_t h[PH_PGNO + 8];
    ssize_t n = kvm_sys.pread(e->fd, h, sizeof h, (off_t)(pg * e->psize));
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading a page header");
    *writer = n == (ssize_t)sizeof h && rd64(h + PH_PGNO) == pg ? rd64(h + PH_TXNID) : 0;
    return 0;
}

/* Before the writer would grow the file: release the pending pages that no
** live snapshot and no state open may choose needs any more (space.c,
** space_reclaim; FORMAT.md §7). */
static int reclaim_precise(kvm_env *e)
{
    u64vec snaps = {0}, released = {0};
    int rc = env_live_snapshots(e, &snaps);
    if (!rc)
        rc = space_reclaim(e->space, &snaps, __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE), page_writer, e,
                           &released);
    if (!rc && released.n)
        advise_free(e, &released);
    u64_free(&snaps);
    u64_free(&released);
    return rc;
}

/* The pages held for the commits since the last flush -- the pages they
** freed, which sync=False keeps until a flush, and their records, freed one
** commit after it (*held) -- and the pages in use (*in_use). */
static void held_pages(kvm_env *e, uint64_t *held, uint64_t *in_use)
{
    kvm_space *sp = e->space;
    uint64_t free_now = space_free_count(sp), pending, records, durable = __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE), oldest = env_oldest_reader(e);
    space_held(sp, durable, oldest, &pending, &records);
    pending += space_held_by_durable(sp, durable, oldest);
    if (oldest != UINT64_MAX) {   /* after a flush, the records newer than a snapshot go too (records_carry) */
        uint64_t all_pending;
        space_held(sp, durable, UINT64_MAX, &all_pending, &records);
    }
    *held = pending + records;
    *in_use = sp->hwm - free_now - sp->pending_count - records;
}

/* Before the file grows for `want` pages, or punched pages are allocated
** again for them, flush instead when the pages held (held_pages) are an
** eighth of the pages in use and at least FLUSH_MIN_BYTES: a churning
** database's file stays within about 1.5 times its data, a small one
** flushes at most once per FLUSH_MIN_BYTES held, and a growing one grows.
** A commit starts a background flush at half that bar once the free pages
** the file has are fewer than those held (flush_due), so by the time a
** transaction reaches the bar the flush has mostly ended: this handle's
** flush in flight is waited for and taken up first, and only without one
** does the transaction flush itself.  Called when a write
** transaction begins (for its commit's free-space pages) and before its
** pool takes pages. */
#define FLUSH_MIN_BYTES (512u << 10)

/* The pages held, when they are 1/divisor of those in use and min_bytes; else 0. */
static uint64_t held_due(kvm_env *e, unsigned divisor, uint64_t min_bytes)
{
    uint64_t held, in_use;
    held_pages(e, &held, &in_use);
    return held >= in_use / divisor && held * e->psize >= min_bytes ? held : 0;
}

static int make_room(kvm_env *e, uint64_t want)
{
    kvm_space *sp = e->space;
    /* punched pages count as growth: they are allocated again before use */
    if (space_room(sp, e->file_size / e->psize) >= want)
        return 0;
    int rc = reclaim_precise(e);
    if (rc || space_room(sp, e->file_size / e->psize) >= want)
        return rc;
    if (!held_due(e, 8, FLUSH_MIN_BYTES))
        return 0;
    if (flush_in_flight(e) && e->sh->flush_handle == e->handle) {
        flush_wait_own(e);
        pthread_mutex_lock(&e->durable_lock);
        flush_settle(e);
        pthread_mutex_unlock(&e->durable_lock);
        if ((rc = reclaim(e)) || (rc = reclaim_precise(e)) || space_room(sp, e->file_size / e->psize) >= want)
            return rc;
    }
    rc = env_flush(e);
    if (!rc && !(rc = reclaim(e)) && !(rc = reclaim_precise(e)))
        /* the records held are freed by the next flush: grow by the least */
        e->grow_lean = space_free_count(sp) < want;
    return rc;
}

/* After a sync=False commit s, under the durable lock: start a flush of it
** in the background (flush.c) when sync_bytes are unsynced, sync_interval
** has passed, or the pages held reach half of make_room's bar while the
** file has fewer free pages than that left (a file with room to spare
** does not flush for it).  One flush at a time. */
static void flush_due(kvm_env *e, const kvm_state *s)
{
    kvm_shared *sh = e->sh;
    if (flush_in_flight(e) || s->txnid <= sh->durable || e->failed)
        return;
    /* the pages held are about those written since the flush (each page
    ** freed since then was written before, or is written again): the room
    ** is compared with those first, to count the pages held (a walk of the
    ** commits since) only once the room is short */
    uint64_t held, room = space_room(e->space, e->file_size / e->psize);
    if (sh->unsynced_bytes >= e->sync_bytes ||
        (e->sync_interval_ns && now_ns() - sh->last_flush_ns >= e->sync_interval_ns) ||
        (sh->unsynced_bytes >= FLUSH_MIN_BYTES / 2 && room < sh->unsynced_bytes / e->psize &&
         (held = held_due(e, 16, FLUSH_MIN_BYTES / 2)) && room < held))
        flush_start(e, s->txnid, sh->meta_slot, sh->unsynced_bytes);
}

/* A write transaction begins where the newest commit is, whichever handle
** made it (lock.c): the file as it is now (another handle may have grown
** it), the free space loaded again when another handle committed since
** this one's space was made, the pread cache without the pages changed
** since, and the reader slots of dead handles cleared.  Under the writer
** lock; *s: the newest commit. */
int writer_follow(kvm_env *e, kvm_state *s)
{
    int rc = meta_adopt_pending(e);
    if (rc)
        return rc;
    pthread_mutex_lock(&e->durable_lock);
    flush_settle(e);
    pthread_mutex_unlock(&e->durable_lock);
    state_load(e, s);
    rc = env_follow(e, s);
    if (!rc && e->sh->open_flush && !(rc = env_flush(e)))
        e->sh->open_flush = 0;
    if (!rc && (!e->space || e->space_txnid != s->txnid))
        rc = space_open(e);
    if (!rc)
        lock_sweep(e);
    return rc;
}

static int txn_begin(kvm_env *e, int write, kvm_txn **out)
{
    int rc = file_intact(e);
    if (rc)
        return rc;
    if (write && e->readonly)
        return kvm_err(KVM_READONLY, "database is open read-only");
    if (write && e->failed)
        return env_failed(e);
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
        if ((rc = lock_writer(e, 0))) {
            free(t);
            return rc;
        }
        t->write = 1;
        kvm_state s;
        if ((rc = writer_follow(e, &s))) {
            txn_end(t);
            free(t);
            return rc;
        }
        t->txnid = s.txnid < 1 ? 2 : s.txnid + 1;   /* commits are 2, 3, ...: 0 and 1 are creation's */
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
        if (!(rc = reclaim(e)))
            rc = make_room(e, 16);   /* the commit's free-space pages */
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
        if (!t->write || start < META_PAGES || start + count < start || (start + count) * e->psize > e->file_size)
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

/* Take n pages from the free space into *runs (empty), ready to be
** written: the file grown for those past its end, and those that may be
** holes (punched: space.h) allocated again.  So a full disk is an error
** here, never a SIGBUS later.  On failure nothing is taken. */
int env_take(kvm_env *e, uint64_t n, u64vec *runs)
{
    kvm_space *sp = e->space;
    int rc = space_take(sp, n, runs);
    if (!rc && ((rc = env_ensure_pages(e, sp->hwm)) || (rc = env_refill(e, runs))))
        space_undo_take(sp);   /* the take just made: cannot fail */
    if (rc)
        runs->n = 0;
    return rc;
}

/* At least `need` pages in the transaction's pool, before an operation
** changes anything (so running out never leaves a change half made): a
** chunk of 64 when the file has room for it, else exactly `need`. */
int txn_pool_ensure(kvm_txn *t, uint64_t need)
{
    if (t->pool.n >= need)
        return 0;
    kvm_env *e = t->env;
    u64vec runs = {0};
    uint64_t want = need > 64 ? need : 64;
    int rc = make_room(e, want);
    if (!rc && (rc = env_take(e, want, &runs)) && (rc == KVM_DISKFULL || rc == KVM_MAPFULL) && want > need)
        rc = env_take(e, need, &runs);
    if (!rc)
        rc = pool_add(t, runs.v, runs.n / 2);
    u64_free(&runs);
    return rc;
}

int64_t kvm_txn_entries(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->entries); }
int64_t kvm_txn_id(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->txnid); }

static int savepoint_call(kvm_txn *t, uint32_t *level, uint32_t end, int rollback)
{
    if (!t->write)
        return kvm_err(KVM_READONLY, "savepoints belong to write transactions");
    if (t->broken)
        return kvm_err(KVM_IO, "the transaction was interrupted by a bus error (SIGBUS): abort it");
    return level ? pg_savepoint(t, level) : pg_savepoint_end(t, end, rollback);
}

int kvm_txn_savepoint(kvm_txn *t, uint32_t *level) { TXN_CALL(t, int, savepoint_call(t, level, 0, 0)); }

int kvm_txn_savepoint_end(kvm_txn *t, uint32_t level, int rollback)
{
    TXN_CALL(t, int, savepoint_call(t, NULL, level, rollback));
}

static int txn_state(kvm_txn *t, kvm_txninfo *out)
{
    if (t->write)
        return kvm_err(KVM_INVALID, "a write transaction's commit has no state until it is made");
    const kvm_state *s = &t->commit;
    *out = (kvm_txninfo){.txnid = s->txnid, .root = s->root, .entries = s->entries, .hwm = s->hwm,
                         .free_index = s->free_index, .record = s->record, .free_count = s->free_count,
                         .pending_count = s->pending_count, .floor = s->floor, .durable = s->durable,
                         .depth = s->depth, .flags = s->flags, .shared = t->env->sh_shared};
    return 0;
}

int kvm_txn_state(kvm_txn *t, kvm_txninfo *out) { TXN_CALL(t, int, txn_state(t, out)); }

/* A free-space page of the commit (freelist.c), as a dirty page; *out (when
** given) is the page. */
int txn_put_page(kvm_txn *t, uint64_t pgno, int type, int flags, unsigned nkeys, uint64_t next,
                 const void *body, size_t len, uint8_t **out)
{
    kvm_env *e = t->env;
    if (!t->write || pgno < META_PAGES || (pgno + 1) * e->psize > e->file_size || len > e->psize - PH_SIZE ||
        nkeys > 0xffff)
        return kvm_err(KVM_INVALID, "bad free-list page %llu", (unsigned long long)pgno);
    uint8_t *p;
    int rc = dirty_page(t, pgno, type, NULL, &p);
    if (rc)
        return rc;
    p[PH_FLAGS] = (uint8_t)flags;
    wr16(p + PH_NKEYS, (uint16_t)nkeys);
    wr64(p + PH_NEXT, next);
    memcpy(p + PH_SIZE, body, len);
    if (pgno >= t->limit)
        t->limit = pgno + 1;
    if (out)
        *out = p;
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

/* The checksums of the pages but the record's (freelist_record sums those). */
static void checksum_pages(kvm_txn *t, dirty_ent **order, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = dirty_ptr(t, order[i]);
        if (p[PH_TYPE] != PT_RECORD)
            wr32(p + PH_CHECKSUM, kvm_crc32c(0, p + 4, t->env->psize - 4));
    }
}

/* The live dirty pages, sorted by number (the caller frees *out). */
static int dirty_order(kvm_txn *t, dirty_ent ***out, size_t *n)
{
    dirty_ent **order = malloc((t->ndirty + 1) * sizeof *order);
    if (!order)
        return kvm_err(KVM_NOMEM, "allocating the commit list");
    size_t k = 0;
    for (size_t i = 0; i < t->dcap; i++) {
        dirty_ent *d = &t->dirty[i];
        if (d->pgno && d->live)
            order[k++] = d;
    }
    qsort(order, k, sizeof *order, cmp_dirty);
    *out = order;
    *n = k;
    return 0;
}

__attribute__((noinline)) static size_t live_pages(kvm_txn *t)   /* (inlined, GUARDED's setjmp would clobber it) */
{
    size_t n = 0;
    for (size_t i = 0; i < t->dcap; i++)
        n += t->dirty[i].pgno && t->dirty[i].live;
    return n;
}

/* fdatasync, or fail the handle: the kernel may have dropped the pages it
** could not write, so a failed sync is never retried. */
static int flush(kvm_env *e, const char *what)
{
    if (kvm_sys.fdatasync(e->fd) == 0)
        return 0;
    e->failed = 1;
    return kvm_err_sys(KVM_IO, errno, what);
}

/* Everything committed so far is on disk (a flush just returned): the
** newest meta's slot now holds the durable commit.  Under durable_lock. */
static void now_durable(kvm_env *e, uint64_t txnid, int slot)
{
    __atomic_store_n(&e->sh->durable, txnid, __ATOMIC_RELEASE);
    e->sh->durable_slot = slot;
    e->sh->unsynced_bytes = 0;
    e->sh->last_flush_ns = now_ns();
}

/* The meta slot a commit writes: neither the durable commit's (what a
** power loss falls back to) nor that of a flush in flight (what it makes
** durable); the newest commit's when it is neither, so the commits
** between two flushes share one slot, else the next one below it (2
** after 0).  Taking the slots in turn leaves no meta in any of them much
** older than the durable commit (a creation meta is gone by the second
** flush); going down, the first commit takes slot 0 (FORMAT.md §8).
** Under the durable lock. */
int commit_slot(kvm_env *e)
{
    int d = e->sh->durable_slot, f = flush_in_flight(e) ? e->sh->flush_slot : -1, m = e->sh->meta_slot;
    if (m != d && m != f)
        return m;
    int slot = (m + (int)META_PAGES - 1) % (int)META_PAGES;
    while (slot == d || slot == f)
        slot = (slot + (int)META_PAGES - 1) % (int)META_PAGES;
    return slot;
}

/* Note the pages of a commit that is not durable as written since the last
** flush (space.h); the number new to that set is what the next flush has to
** write for it (rewriting a fresh page costs the flush nothing more).  On a
** failure to note them, all n count and the pages stay unnoted: reused only
** once durable, which is always safe. */
static uint64_t fresh_pages(kvm_env *e, dirty_ent *const *order, size_t n)
{
    uint64_t *pages = malloc((n + 1) * sizeof *pages), added = n;
    if (pages) {
        for (size_t i = 0; i < n; i++)
            pages[i] = order[i]->pgno;
        if (space_written(e->space, env_fresh_base(e), pages, n, &added))
            added = n;
        free(pages);
    }
    return added;
}

/* Write the meta of state s into slot; on a full disk nothing was written
** and the handle stays usable. */
static int write_meta(kvm_env *e, const kvm_state *s, int slot)
{
    uint8_t m[META_SIZE];
    meta_encode(m, e->psize, s);
    struct iovec iov = {m, META_SIZE};
    ssize_t w = kvm_sys.pwritev(e->fd, &iov, 1, (off_t)slot * e->psize);
    if (w < 0 && space_code(errno) == KVM_DISKFULL)
        /* the commit did not happen: the older metas stand (DiskFullError's promise) */
        return kvm_err_sys(KVM_DISKFULL, errno, "writing the meta page");
    if (w != META_SIZE) {
        /* EIO may report an earlier writeback failure; a short write left
        ** part of a meta: trust nothing more of this handle. */
        e->failed = 1;
        return kvm_err_sys(KVM_IO, w < 0 ? errno : EIO, "writing the meta page (the handle refuses writes until reopened)");
    }
    return 0;
}

/* The checksums of the commit's pages, then its record (which lists them);
** *order: every page to write, sorted (the caller frees it). */
static int seal_pages(kvm_txn *t, uint64_t hwm, dirty_ent ***out, size_t *nout)
{
    dirty_ent **order;
    size_t n;
    int rc = dirty_order(t, &order, &n);
    for (size_t i = 0; !rc && i < n; i++)
        if (order[i]->pgno >= hwm)
            rc = kvm_err(KVM_INVALID, "page %llu lies above the high-water mark %llu",
                         (unsigned long long)order[i]->pgno, (unsigned long long)hwm);
    if (!rc)
        GUARDED(t->env, t, rc, (checksum_pages(t, order, n), freelist_record(t, t->env->space, order, n)));
    if (rc) {
        free(order);
        return rc;
    }
    *out = order;
    *nout = n;
    return 0;
}

static int txn_commit(kvm_txn *t, int sync)
{
    kvm_env *e = t->env;
    if (!t->write)
        return kvm_err(KVM_INVALID, "commit of a read-only transaction");
    if (e->failed)
        return env_failed(e);
    int rc;
    if (t->level && (rc = pg_savepoint_end(t, 1, 0)))   /* a commit releases every savepoint */
        return rc;
    size_t ntree = live_pages(t);
    if (!ntree && !t->freed.n) {   /* nothing to write, and no txnid used */
        txn_end(t);
        return 0;
    }
    /* How durable (FORMAT.md §7): a sync=True commit flushes once, after
    ** its meta; a commit larger than 4 * sync_bytes syncs its pages before
    ** its meta too.  A sync=False commit that leaves sync_bytes unsynced or
    ** is due by sync_interval starts a flush in the background (flush.c)
    ** and does not wait, unless 2 * sync_bytes are unsynced (a flush cannot
    ** keep up): then it flushes itself.  So open verifies at most
    ** 2 * sync_bytes plus one commit. */
    uint64_t bytes = (ntree + 2) * (uint64_t)e->psize;
    int pages_first = bytes > 4 * e->sync_bytes;
    int flushing = sync || pages_first || e->sh->unsynced_bytes + bytes >= 2 * e->sync_bytes;
    kvm_state s = {.txnid = t->txnid, .root = t->root, .entries = t->entries, .depth = t->depth,
                   .flags = flushing ? 0 : M_FLAGS_NOSYNC};
    GUARDED(e, t, rc, freelist_prepare(t, e->space, &s, ntree, pages_first));   /* writemap: pages are mapped */
    if (rc)
        return rc;
    if (s.hwm < 2 || s.hwm * e->psize > e->file_size)
        return kvm_err(KVM_INVALID, "commit with a high-water mark of %llu pages", (unsigned long long)s.hwm);
    dirty_ent **order;
    size_t n;
    if ((rc = seal_pages(t, s.hwm, &order, &n)))
        return rc;
    if (!e->writemap)
        rc = write_pages(e, order, n);
    if (!rc && pages_first)
        rc = flush(e, "syncing pages (the handle refuses writes until reopened)");
    if (!rc) {
        /* The slot of the newest durable commit stays as it is until a newer
        ** commit is durable: it is what open falls back to. */
        pthread_mutex_lock(&e->durable_lock);
        int slot = commit_slot(e);
        s.durable = pages_first ? s.txnid : e->sh->durable;
        e->sh->pending_slot = slot;
        e->sh->meta_pending = s.txnid;   /* until published: a writer after a death here adopts it */
        rc = write_meta(e, &s, slot);
        if (!rc && flushing)
            rc = flush(e, "syncing the meta page (the handle refuses writes until reopened)");
        if (!rc) {
            if (flushing)
                now_durable(e, s.txnid, slot);
            else
                e->sh->unsynced_bytes += (uint64_t)(fresh_pages(e, order, n) + 1) * e->psize;
            e->sh->meta_slot = slot;
        }
        pthread_mutex_unlock(&e->durable_lock);
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
    state_publish(e, &s);
    e->sh->meta_pending = 0;
    e->space_txnid = s.txnid;
    if (!sync) {
        pthread_mutex_lock(&e->durable_lock);
        flush_due(e, &s);
        pthread_mutex_unlock(&e->durable_lock);
    }
    pthread_mutex_lock(&e->cache_lock);
    if (e->cache_txnid == s.txnid - 1)   /* the cache has this commit's pages as written */
        e->cache_txnid = s.txnid;
    pthread_mutex_unlock(&e->cache_lock);
    freelist_adopt(e->space);
    space_begin(e->space);
    t->committed = 1;
    txn_end(t);
    return 0;
}

/* Make every commit so far durable (db.sync(), close): one fdatasync when
** some commit is not yet.  A failed sync fails the handle, as in a commit.
** The durability state is shared by every handle (lock.c): changed under
** the writer lock, waited for (wait), or else -- a close while another
** handle writes -- only the fdatasync, leaving the marker to that handle.
** With seal, see env_seal. */
static int env_durable(kvm_env *e, int seal, int wait)
{
    if (e->readonly)
        return 0;
    if (e->failed)
        return env_failed(e);
    int rc = lock_writer(e, wait);
    if (rc == KVM_BUSY)
        return flush(e, "syncing the database file (the handle refuses writes until reopened)");
    if (rc)
        return rc;
    pthread_mutex_lock(&e->durable_lock);
    flush_wait_own(e);   /* then it ends here: this flush covers it */
    flush_settle(e);
    kvm_state s;
    state_load(e, &s);
    if (e->failed)
        rc = env_failed(e);
    else if (s.txnid > e->sh->durable && !(rc = flush(e, "syncing the database file (the handle refuses writes until reopened)")))
        now_durable(e, s.txnid, e->sh->meta_slot);
    if (!rc && seal && s.durable < s.txnid && s.txnid >= 2) {
        int slot = commit_slot(e);   /* now the newest commit's slot is the durable one */
        s.durable = s.txnid;
        if (!(rc = write_meta(e, &s, slot)) && !(rc = flush(e, "syncing the meta page"))) {
            state_publish(e, &s);
            e->sh->meta_slot = e->sh->durable_slot = slot;
        }
    }
    pthread_mutex_unlock(&e->durable_lock);
    unlock_writer(e);
    return rc;
}

int env_sync(kvm_env *e, int wait)
{
    return env_durable(e, 0, wait);
}

int env_flush(kvm_env *e)
{
    return env_sync(e, 1);
}

/* At close: every commit durable, and then the newest commit's meta copied,
** saying it is durable, into the other slot: open then takes it without
** verifying it, so damage to its pages met later is an error at the read,
** never taken for a power loss that rolls the commit back (FORMAT.md §7). */
int env_seal(kvm_env *e)
{
    return env_durable(e, 1, 0);
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
