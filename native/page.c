/*
** page.c -- the pages of a transaction, as the B+tree sees them.
**
** Design and invariants
**  1. The B+tree reaches pages only through pg_read, pg_write, pg_new and
**     pg_free.  A page number is checked against the transaction's limit
**     before any access, so a damaged reference gives KVM_CORRUPT.
**  2. Copy-on-write: pg_write copies a committed page to a page of the pool
**     (after verifying its checksum: a damaged page is never given a fresh
**     one) and frees the old number; pages born in this transaction are
**     changed in place, and freed straight back to the pool.
**  3. The dirty table is open addressing over its entries; with writemap a
**     dirty page lives in the mapping itself, else in its own buffer.
**  4. Savepoints (txn.c): a dirty page belongs to the savepoint level that
**     made it and is changed in place only at that level; a deeper level
**     copies it like a committed page, and its free leaves it as it was
**     (t->shadowed) so that a rollback finds the tree of the savepoint.
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

/* ------------------------------------------------------------ dirty pages */

/* The dirty table is open addressing over the entries themselves (one
** cache miss per lookup); pgno 0 (a meta page, never dirty) marks a free
** slot.  The hash keeps neighbouring page numbers in neighbouring slots:
** pages are handed out in runs, so a descent finds its pages close by. */
static inline size_t dhash(pgno_t pg, size_t cap) { return (size_t)(pg ^ (pg >> 17)) & (cap - 1); }

static dirty_ent *dirty_find(kvm_txn *t, pgno_t pg)
{
    for (size_t h = dhash(pg, t->dcap);; h = (h + 1) & (t->dcap - 1)) {
        dirty_ent *d = &t->dirty[h];
        if (d->pgno == pg)
            return d;
        if (d->pgno == 0)
            return NULL;
    }
}

static int dirty_resize(kvm_txn *t, size_t cap)
{
    dirty_ent *n = calloc(cap, sizeof *n);
    if (!n)
        return kvm_err(KVM_NOMEM, "allocating the dirty page table");
    for (size_t i = 0; i < t->dcap; i++) {
        if (!t->dirty[i].pgno)
            continue;
        size_t k = dhash(t->dirty[i].pgno, cap);
        while (n[k].pgno)
            k = (k + 1) & (cap - 1);
        n[k] = t->dirty[i];
    }
    free(t->dirty);
    t->dirty = n;
    t->dcap = cap;
    return 0;
}

/* Entry pointers stay valid until the next dirty_add. */
static int dirty_add(kvm_txn *t, pgno_t pg, dirty_ent **out)
{
    if ((t->ndirty + 1) * 2 > t->dcap) {
        int rc = dirty_resize(t, t->dcap * 2);
        if (rc)
            return rc;
    }
    uint8_t *buf = NULL;
    if (!t->env->writemap && posix_memalign((void **)&buf, 64, t->env->psize))
        return kvm_err(KVM_NOMEM, "allocating a dirty page");
    size_t k = dhash(pg, t->dcap);
    while (t->dirty[k].pgno)
        k = (k + 1) & (t->dcap - 1);
    dirty_ent *d = &t->dirty[k];
    d->pgno = pg;
    d->live = 1;
    d->level = t->level;
    d->buf = buf;
    t->ndirty++;
    *out = d;
    return 0;
}

uint8_t *dirty_ptr(kvm_txn *t, const dirty_ent *d)
{
    return d->buf ? d->buf : t->env->base + d->pgno * t->env->psize;
}

/* ------------------------------------------------------ pages for the tree */

int pg_read(kvm_txn *t, pgno_t pg, const uint8_t **out)
{
    int own;
    return pg_read_own(t, pg, out, &own);
}

int pg_read_own(kvm_txn *t, pgno_t pg, const uint8_t **out, int *own)
{
    kvm_env *e = t->env;
    *own = PAGE_COMMITTED;
    if (pg < META_PAGES || pg >= t->limit)
        return kvm_err(KVM_CORRUPT, "page number %llu out of range (database has %llu pages)",
                       (unsigned long long)pg, (unsigned long long)t->limit);
    if (t->write) {
        dirty_ent *d = dirty_find(t, pg);
        if (d && d->live) {
            *out = dirty_ptr(t, d);
            *own = d->level == t->level ? PAGE_WRITABLE : PAGE_DIRTY;
            return 0;
        }
    }
    if (e->backend == KVM_BACKEND_PREAD)
        return cache_get(e, pg, out);   /* verified when read into the cache */
    if ((pg + 1) * e->psize > e->map_len)
        return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pg);
    *out = e->base + pg * e->psize;
    if (e->verify) {
        /* A committed page cannot change while this transaction can see it,
        ** so one check per page and transaction is enough: a cursor visits
        ** its leaf once per record and its branches once per leaf. */
        pgno_t *slot = &t->verified[(pg * 0x9E3779B97F4A7C15ull) >> 60];
        if (*slot != pg) {
            int rc = pg_verify(t, *out, pg);
            if (rc)
                return rc;
            *slot = pg;
        }
    }
    return 0;
}

/* Drop the mapped pages [pg, pg+n) from this process (mmap backend; a
** no-op for pread and for the pages of the write transaction's own
** buffers).  Only the process's view goes: the file and the page cache
** keep the data, and the next access faults it back in. */
void pg_drop(kvm_txn *t, pgno_t pg, uint64_t n)
{
    kvm_env *e = t->env;
    if (e->backend != KVM_BACKEND_MMAP || !n || pg < META_PAGES || (pg + n) * e->psize > e->map_len)
        return;
    kvm_sys.madvise(e->base + pg * e->psize, n * e->psize, MADV_DONTNEED);
}

int pg_verify(kvm_txn *t, const uint8_t *p, pgno_t pg)
{
    uint32_t ps = t->env->psize;
    if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, ps - 4))
        return kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch (the page is damaged; run kvmap-check)",
                       (unsigned long long)pg);
    return 0;
}

/* A page of this transaction at pg, a copy of src or zeroed, with its
** header's type, txnid and page number set. */
int dirty_page(kvm_txn *t, pgno_t pg, int type, const uint8_t *src, uint8_t **out)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d) {
        d->live = 1;
        d->level = t->level;
    } else {
        int rc = dirty_add(t, pg, &d);
        if (rc)
            return rc;
    }
    uint8_t *p = dirty_ptr(t, d);
    if (src)
        memcpy(p, src, t->env->psize);
    else
        memset(p, 0, t->env->psize);
    p[PH_TYPE] = (uint8_t)type;
    wr64(p + PH_TXNID, t->txnid);
    wr64(p + PH_PGNO, pg);
    *out = p;
    return 0;
}

/* A page of the pool made dirty: a copy of src, or empty. */
static int pool_page(kvm_txn *t, int type, const uint8_t *src, uint8_t **out, pgno_t *pgp)
{
    if (t->pool.n == 0)
        return kvm_err(KVM_NEED_PAGES, "page pool exhausted");
    pgno_t pg = t->pool.v[--t->pool.n];
    int rc = dirty_page(t, pg, type, src, out);
    if (rc)
        return rc;
    if (!src && (type == PT_BRANCH || type == PT_LEAF))
        wr32(*out + PH_UPPER, t->env->psize);
    *pgp = pg;
    return 0;
}

int pg_new(kvm_txn *t, int type, uint8_t **out, pgno_t *pgp) { return pool_page(t, type, NULL, out, pgp); }

int pg_write(kvm_txn *t, pgno_t pg, uint8_t **out, pgno_t *newpg)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d && d->live && d->level == t->level) {
        *out = dirty_ptr(t, d);
        *newpg = pg;
        return 0;
    }
    const uint8_t *src;
    int own, rc = pg_read_own(t, pg, &src, &own);
    if (rc)
        return rc;
    /* Copying a damaged page would give it a fresh checksum: verify first
    ** (a verifying handle's pg_read did already; a page of an outer
    ** savepoint level has no checksum yet). */
    if (own == PAGE_COMMITTED && !t->env->verify && (rc = pg_verify(t, src, pg)))
        return rc;
    uint8_t *dst;
    pgno_t np = 0;
    if ((rc = pool_page(t, src[PH_TYPE], src, &dst, &np)))
        return rc;
    if ((rc = pg_free(t, pg)))
        return rc;
    *out = dst;
    *newpg = np;
    return 0;
}

int pg_free(kvm_txn *t, pgno_t pg)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d && d->live && d->level < t->level)
        return u64_push(&t->shadowed, pg);   /* an outer level's: kept for a rollback */
    if (d && d->live) {
        d->live = 0;   /* born in this transaction: reuse it right away */
        return u64_push(&t->pool, pg);
    }
    return u64_push(&t->freed, pg);
}

int pg_check_node(kvm_txn *t, const uint8_t *p, pgno_t pg, int type)
{
    uint32_t ps = t->env->psize;
    unsigned n = rd16(p + PH_NKEYS);
    uint32_t upper = rd32(p + PH_UPPER);
    if (p[PH_TYPE] != type)
        return kvm_err(KVM_CORRUPT, "page %llu: type %u where a %s page belongs",
                       (unsigned long long)pg, p[PH_TYPE], type == PT_LEAF ? "leaf" : "branch");
    if (rd64(p + PH_PGNO) != pg)
        return kvm_err(KVM_CORRUPT, "page %llu: header says it is page %llu",
                       (unsigned long long)pg, (unsigned long long)rd64(p + PH_PGNO));
    /* Every page of a snapshot's tree was written by its commit or an
    ** earlier one: a later txnid is a page reused after a meta that a
    ** crash (without sync) left behind. */
    if (rd64(p + PH_TXNID) > t->txnid)
        return kvm_err(KVM_CORRUPT, "page %llu: written by transaction %llu, after this snapshot's %llu",
                       (unsigned long long)pg, (unsigned long long)rd64(p + PH_TXNID),
                       (unsigned long long)t->txnid);
    if (PH_SIZE + 2u * n > upper || upper > ps || (type == PT_BRANCH && n == 0))
        return kvm_err(KVM_CORRUPT, "page %llu: bad cell count or content offset", (unsigned long long)pg);
    return 0;
}

/* ------------------------------------------------------------ savepoints */

/* Room in the pool for n more pages, so that what follows cannot fail
** half-way. */
static int pool_room(kvm_txn *t, size_t n)
{
    int rc = 0;
    while (!rc && t->pool.cap < t->pool.n + n)
        rc = vec_reserve((void **)&t->pool.v, &t->pool.cap, t->pool.cap, sizeof *t->pool.v);
    return rc;
}

/* Open savepoint level t->level + 1: the tree as it is now, and how far
** the lists of freed pages go (design note 4). */
int pg_savepoint(kvm_txn *t, uint32_t *level)
{
    if (t->level == t->nsaved_cap) {
        size_t cap = t->nsaved_cap ? 2 * t->nsaved_cap : 4;
        savepoint *s = realloc(t->saved, cap * sizeof *s);
        if (!s)
            return kvm_err(KVM_NOMEM, "allocating a savepoint");
        t->saved = s;
        t->nsaved_cap = cap;
    }
    t->saved[t->level] = (savepoint){.root = t->root, .depth = t->depth, .entries = t->entries,
                                     .nfreed = t->freed.n, .nshadowed = t->shadowed.n};
    *level = ++t->level;
    return 0;
}

/* Close savepoint `level` and every level inside it.  rollback: the pages
** those levels made go back to the pool, the pages they freed are in use
** again, and the tree is the savepoint's.  Else (release) what they made
** belongs to the level outside, and the outer pages they freed that now
** belong to it are freed for real.  Fails only before changing anything. */
int pg_savepoint_end(kvm_txn *t, uint32_t level, int rollback)
{
    if (level == 0 || level > t->level)
        return kvm_err(KVM_INVALID, "savepoint %u is not open (%u are)", level, t->level);
    const savepoint *s = &t->saved[level - 1];
    uint32_t outer = level - 1;
    size_t n = 0;
    for (size_t i = 0; i < t->dcap; i++)
        n += t->dirty[i].pgno && t->dirty[i].live && t->dirty[i].level >= level;
    int rc = pool_room(t, rollback ? n : t->shadowed.n - s->nshadowed);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->dcap; i++) {
        dirty_ent *d = &t->dirty[i];
        if (!d->pgno || !d->live || d->level < level)
            continue;
        if (rollback) {
            d->live = 0;
            t->pool.v[t->pool.n++] = d->pgno;
        } else
            d->level = outer;
    }
    if (rollback) {
        t->root = s->root;
        t->depth = s->depth;
        t->entries = s->entries;
        t->freed.n = s->nfreed;
        t->shadowed.n = s->nshadowed;
        t->mod++;
    } else {
        size_t keep = s->nshadowed;
        for (size_t i = s->nshadowed; i < t->shadowed.n; i++) {
            dirty_ent *d = dirty_find(t, t->shadowed.v[i]);
            if (d && d->live && d->level == outer) {
                d->live = 0;
                t->pool.v[t->pool.n++] = d->pgno;
            } else
                t->shadowed.v[keep++] = t->shadowed.v[i];
        }
        t->shadowed.n = keep;
    }
    t->level = outer;
    return 0;
}
