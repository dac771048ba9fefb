/*
** freelist.c -- the free space on disk (FORMAT.md §6): the commit records,
** loading the free space at open, and the free-space pages each commit
** writes.
**
** The reusable set is a bitmap split into pages of (page_size - 32) * 8
** bits, found through a chain of bitmap-index pages.  Every commit writes
** one record (a chain of pages, usually one): the pages it wrote with their
** checksums (what open verifies for commits not known durable), the runs it
** freed (pending until released), and the bitmap pages that moved since the
** index was last written (overrides), with a pointer to the previous
** commit's record.  The records of the commits above the floor are the
** pending lists; a record is freed by the commit that releases its own.
** So a small commit writes its changed bitmap page and its record, never
** the index (rewritten only when the overrides outgrow
** RECORD_OVERRIDES_MAX or the number of ranges changes), never other
** commits' records.  Pages taken for these pages change the free space, so
** planning repeats until the pages taken are exactly what the plan needs.
*/
#include "internal.h"
#include "space.h"
#include <errno.h>
#include <stdlib.h>

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

void freelist_staged_clear(freelist_staged *st)
{
    u64_free(&st->bitmaps);
    u64_free(&st->index);
    u64_free(&st->overrides);
    u64_free(&st->records);
    u64_free(&st->freed_runs);
    u64_free(&st->freed_fresh);
    u64_free(&st->freed_old);
    u64_free(&st->released);
    st->freed_count = st->nwritten = 0;
    st->valid = 0;
}

/* -------------------------------------------------------------- records */

/* Bytes of a record's stream: the fixed fields from byte 32 of its first
** page, then the entries. */
#define R_FIXED (R_BODY - PH_SIZE)
static uint64_t record_bytes(uint64_t nwritten, uint64_t nfreed, uint64_t nreleased, uint64_t noverride)
{
    return R_FIXED + R_WRITTEN_SIZE * nwritten + R_RUN_SIZE * (nfreed + nreleased + noverride);
}

static const uint8_t *rec_written(const kvm_record *r, size_t i) { return r->body + R_FIXED + R_WRITTEN_SIZE * i; }
static const uint8_t *rec_freed(const kvm_record *r, size_t i)
{
    return r->body + R_FIXED + R_WRITTEN_SIZE * (size_t)r->nwritten + R_RUN_SIZE * i;
}
static const uint8_t *rec_released(const kvm_record *r, size_t i) { return rec_freed(r, r->nfreed + i); }
static const uint8_t *rec_override(const kvm_record *r, size_t i)
{
    return rec_freed(r, (size_t)r->nfreed + r->nreleased + i);
}

/* The pages of run (start, count) in fm (when `in`) or not, appended to *out. */
static int runs_filter(kvm_freemap *fm, uint64_t start, uint64_t count, int in, u64vec *out)
{
    int rc = 0;
    for (uint64_t p = start; p < start + count && !rc; p++) {
        uint64_t one[2];
        if (!!kvm_fm_runs(fm, p, p + 1, one, 1) == in)
            rc = run_push(out, p, 1);
    }
    return rc;
}

/* Whether run (start, count) lies in [2, the pages of the file).  A record's
** runs may lie past its commit's hwm: a page released early can be in a
** free tail that a later commit trimmed. */
static int run_in_file(const kvm_env *e, uint64_t start, uint64_t count)
{
    return start >= META_PAGES && count >= 1 && start + count > start && start + count <= e->file_size / e->psize;
}

/* Add the pages of run (start, count) to fm, those not there already. */
static int fm_add_missing(kvm_freemap *fm, uint64_t start, uint64_t count)
{
    u64vec missing = {0};
    int rc = runs_filter(fm, start, count, 0, &missing);
    if (!rc && missing.n)
        rc = kvm_fm_add(fm, missing.v, missing.n / 2);
    u64_free(&missing);
    return rc;
}

void record_free(kvm_record *r)
{
    free(r->body);
    u64_free(&r->pages);
    memset(r, 0, sizeof *r);
}

/* A record may end with pages that carry no data (planning took more pages
** than it needed); more than this many is damage. */
#define RECORD_SPARE_MAX 64

static int claim_page(kvm_freemap *seen, uint64_t pg)
{
    uint64_t run[2] = {pg, 1};
    if (seen && (pg < META_PAGES || kvm_fm_add(seen, run, 1)))
        return kvm_err(KVM_CORRUPT, "page %llu appears twice in the free space", (unsigned long long)pg);
    return 0;
}

/* Read the record of commit txnid starting at page pg: every page's
** checksum, type, number, txnid and place in the chain verified, the chain
** bounded by the length its counts give.  Pages are claimed in seen when
** given (each free-space page once). */
int record_read(kvm_env *e, uint64_t pg, uint64_t txnid, uint64_t hwm, kvm_freemap *seen, kvm_record *r)
{
    memset(r, 0, sizeof *r);
    size_t pay = e->psize - PH_SIZE;
    uint8_t *p = malloc(e->psize);
    if (!p)
        return kvm_err(KVM_NOMEM, "allocating a page");
    uint64_t need = 0, npages = 1;
    int rc = 0;
    for (uint64_t k = 0; pg && !rc; k++) {
        if (k >= npages + RECORD_SPARE_MAX) {
            rc = kvm_err(KVM_CORRUPT, "the record of commit %llu is longer than its entries", (unsigned long long)txnid);
            break;
        }
        if ((rc = claim_page(seen, pg)) || (rc = env_read_page(e, pg, hwm, PT_RECORD, (char *)p)))
            break;
        if (rd64(p + PH_TXNID) != txnid || p[PH_FLAGS] != (k ? PF_CONTINUED : 0)) {
            rc = kvm_err(KVM_CORRUPT, "page %llu: not %s page of the record of commit %llu", (unsigned long long)pg,
                         k ? "a later" : "the first", (unsigned long long)txnid);
            break;
        }
        if (k == 0) {
            r->txnid = txnid;
            r->prev = rd64(p + R_PREV);
            r->nwritten = rd32(p + R_NWRITTEN);
            r->nfreed = rd32(p + R_NFREED);
            r->nreleased = rd32(p + R_NRELEASED);
            r->noverride = rd32(p + R_NOVERRIDE);
            r->flags = rd32(p + R_FLAGS);
            need = record_bytes(r->nwritten, r->nfreed, r->nreleased, r->noverride);
            npages = ceil_div(need, pay);
            if (npages > hwm || !(r->body = malloc(need))) {
                rc = npages > hwm ? kvm_err(KVM_CORRUPT, "page %llu: record counts out of range", (unsigned long long)pg)
                                  : kvm_err(KVM_NOMEM, "allocating a commit record");
                break;
            }
            r->len = need;
        }
        uint64_t off = k * pay;
        if (off < need)
            memcpy(r->body + off, p + PH_SIZE, need - off < pay ? need - off : pay);
        if (!(rc = u64_push(&r->pages, pg)))
            pg = rd64(p + PH_NEXT);
    }
    if (!rc && r->pages.n < npages)
        rc = kvm_err(KVM_CORRUPT, "the record of commit %llu is cut short", (unsigned long long)txnid);
    free(p);
    if (rc)
        record_free(r);
    return rc;
}

/* The record page of the commit before `txnid`, or 0 where there is none
** (txnid - 1 is at most 1: no commit has a record). */
static int record_prev(const kvm_record *r, uint64_t stop, uint64_t *pg)
{
    *pg = r->prev;
    if (r->txnid - 1 > stop && r->txnid - 1 >= 2 && !r->prev)
        return kvm_err(KVM_CORRUPT, "the record of commit %llu does not lead to its predecessor's",
                       (unsigned long long)r->txnid);
    return 0;
}

/* Read the records of the commits (max(stop, 1), s->txnid], newest first,
** through their prev pointers, and give each to fn.  Pages are claimed in
** seen when given. */
typedef int (*record_fn)(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx);

static int records_walk(kvm_env *e, const kvm_state *s, uint64_t stop, kvm_freemap *seen, record_fn fn, void *ctx)
{
    uint64_t pg = s->record;
    int rc = 0;
    if (stop < 1)
        stop = 1;
    for (uint64_t txn = s->txnid; txn > stop && !rc; txn--) {
        kvm_record r;
        if (!pg)
            return kvm_err(KVM_CORRUPT, "commit %llu has no record", (unsigned long long)txn);
        if ((rc = record_read(e, pg, txn, s->hwm, seen, &r)))
            break;
        if (!(rc = fn(e, s, &r, ctx)))
            rc = record_prev(&r, stop, &pg);
        record_free(&r);
    }
    return rc;
}

typedef struct verifier {
    kvm_freemap *later;     /* pages freed by a newer commit of the walk */
    uint8_t     *page;
} verifier;

static int verify_record(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx)
{
    verifier *v = ctx;
    int rc = 0;
    for (size_t i = 0; i < r->nwritten && !rc; i++) {
        uint64_t w = rd64(rec_written(r, i)), one[2];
        uint32_t crc = rd32(rec_written(r, i) + 8);
        if (w >= META_PAGES && kvm_fm_runs(v->later, w, w + 1, one, 1))
            continue;
        ssize_t n = w < META_PAGES || w >= s->hwm ? -2 : kvm_sys.pread(e->fd, v->page, e->psize, (off_t)(w * e->psize));
        if (n == -1)
            rc = kvm_err_sys(KVM_IO, errno, "reading a page");
        else if (n != (ssize_t)e->psize || rd32(v->page + PH_CHECKSUM) != crc || rd64(v->page + PH_PGNO) != w ||
                 kvm_crc32c(0, v->page + 4, e->psize - 4) != crc)
            rc = kvm_err(KVM_CORRUPT, "page %llu, written by commit %llu, does not hold what it wrote",
                         (unsigned long long)w, (unsigned long long)r->txnid);
    }
    for (size_t i = 0; i < r->nfreed && !rc; i++) {
        uint64_t fs = rd64(rec_freed(r, i)), fc = rd64(rec_freed(r, i) + 8);
        if (!run_in_file(e, fs, fc))
            rc = kvm_err(KVM_CORRUPT, "the record of commit %llu: freed pages out of range",
                         (unsigned long long)r->txnid);
        else   /* a page written, freed, reused and freed again is freed by two commits */
            rc = fm_add_missing(v->later, fs, fc);
    }
    return rc;
}

/* Verify that the pages written by the commits (s->durable, s->txnid] --
** those not known to have reached the disk -- hold what their records say
** they were written with.  A page that a later commit of the chain freed is
** skipped: once freed it may be reused (FORMAT.md §7), and it is not part
** of s.  KVM_CORRUPT names the first page that does not verify. */
int records_verify(kvm_env *e, const kvm_state *s)
{
    if (s->durable >= s->txnid)
        return 0;
    verifier v = {kvm_fm_new(), malloc(e->psize)};
    int rc = v.later && v.page ? records_walk(e, s, s->durable, NULL, verify_record, &v)
                               : kvm_err(KVM_NOMEM, "allocating the verification");
    kvm_fm_free(v.later);
    free(v.page);
    return rc;
}

static int runs_end(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx)
{
    (void)e;
    (void)s;
    uint64_t *end = ctx;
    for (size_t i = 0; i < (size_t)r->nfreed + r->nreleased; i++) {   /* the released runs follow the freed */
        uint64_t x = rd64(rec_freed(r, i)) + rd64(rec_freed(r, i) + 8);
        if (x > *end)
            *end = x;
    }
    return 0;
}

/* The pages the file must keep for state s: its hwm, and every page run its
** live records name (freed and released runs may lie past hwm: FORMAT.md
** §6, once a free tail lowered it). */
int records_pages_needed(kvm_env *e, const kvm_state *s, uint64_t *need)
{
    *need = s->hwm;
    return records_walk(e, s, s->floor, NULL, runs_end, need);
}

typedef struct written_walk {
    void (*fn)(kvm_env *e, uint64_t pg);
} written_walk;

static int each_written(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx)
{
    (void)s;
    const written_walk *w = ctx;
    if (r->flags & R_FLAGS_PAGES_DURABLE)
        return 1;   /* its pages were synced before its meta: the record does not list them */
    for (size_t i = 0; i < r->nwritten; i++)
        w->fn(e, rd64(rec_written(r, i)));
    return 0;
}

/* fn for every page the commits (stop, s->txnid] wrote, as their records
** list them; those records must be live (stop >= s->floor).  Non-zero when
** a record could not be read, or does not list its pages (a commit that
** synced them before its meta): the caller cannot know what changed. */
int records_written(kvm_env *e, const kvm_state *s, uint64_t stop, void (*fn)(kvm_env *e, uint64_t pg))
{
    written_walk w = {fn};
    return records_walk(e, s, stop, NULL, each_written, &w);
}

/* The pending pages of record r, appended to *pending as runs: its freed
** pages less those a newer record released early (in `early`, as the walk
** reads the chain newest first); then the pages r released early join
** `early` for the older records.  Every run is checked to lie in the file. */
static int record_pending_runs(kvm_env *e, const kvm_record *r, kvm_freemap *early, u64vec *pending)
{
    int rc = 0;
    for (size_t i = 0; i < (size_t)r->nfreed + r->nreleased && !rc; i++)   /* the released runs follow the freed */
        if (!run_in_file(e, rd64(rec_freed(r, i)), rd64(rec_freed(r, i) + 8)))
            rc = kvm_err(KVM_CORRUPT, "the record of commit %llu: page runs out of range",
                         (unsigned long long)r->txnid);
    for (size_t i = 0; i < r->nfreed && !rc; i++)
        rc = runs_filter(early, rd64(rec_freed(r, i)), rd64(rec_freed(r, i) + 8), 0, pending);
    for (size_t i = 0; i < r->nreleased && !rc; i++)
        rc = fm_add_missing(early, rd64(rec_released(r, i)), rd64(rec_released(r, i) + 8));
    return rc;
}

typedef struct pending_counter {
    kvm_freemap *early;     /* pages a newer record released early */
    uint64_t     pages;
} pending_counter;

static int count_pending(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx)
{
    (void)s;
    pending_counter *c = ctx;
    u64vec runs = {0};
    int rc = record_pending_runs(e, r, c->early, &runs);
    for (size_t i = 1; i < runs.n && !rc; i += 2)
        c->pages += runs.v[i];
    u64_free(&runs);
    return rc;
}

/* *pages: the pending pages of the commits (stop, s->txnid] -- their freed
** pages less those a newer record released early, as freelist_load counts
** them -- read from their records, which must be live (stop >= s->floor)
** and held from reuse by the caller's snapshot of s.  For stats(): the
** pages that snapshots newer than `stop` keep from reuse. */
int records_pending(kvm_env *e, const kvm_state *s, uint64_t stop, uint64_t *pages)
{
    pending_counter c = {kvm_fm_new(), 0};
    int rc = c.early ? records_walk(e, s, stop, NULL, count_pending, &c) : kvm_err(KVM_NOMEM, "allocating a page map");
    kvm_fm_free(c.early);
    *pages = c.pages;
    return rc;
}

/* ------------------------------------------------------------------ load */

/* Room for one more record set and pending set (freelist_adopt cannot fail). */
static int sets_reserve(kvm_space *sp)
{
    int rc = vec_reserve((void **)&sp->pending, &sp->pending_cap, sp->npending, sizeof *sp->pending);
    return rc ? rc : vec_reserve((void **)&sp->records, &sp->records_cap, sp->nrecords, sizeof *sp->records);
}

/* Keep record r (and its pending pages) as the oldest so far: the chain is
** read newest first, so the arrays are reversed once loading is done.  Its
** freed pages that a newer commit released early (in `early`) are not
** pending; the pages r released early are added to `early` for the older
** records.  The newest record's overrides replace index entries. */
typedef struct loader {
    kvm_space   *sp;
    kvm_freemap *early;     /* pages a newer record released early */
} loader;

static int load_record(kvm_env *e, const kvm_state *s, kvm_record *r, void *ctx)
{
    kvm_space *sp = ((loader *)ctx)->sp;
    kvm_freemap *early = ((loader *)ctx)->early;
    int rc = 0;
    for (size_t i = 0; r->txnid == s->txnid && i < r->noverride && !rc; i++) {   /* the newest record's */
        uint64_t range = rd64(rec_override(r, i)), bp = rd64(rec_override(r, i) + 8);
        if (range >= sp->bitmap_pages.n || (i && range <= sp->overrides.v[sp->overrides.n - 2]))
            rc = kvm_err(KVM_CORRUPT, "the record of commit %llu: bitmap override out of range",
                         (unsigned long long)r->txnid);
        else if (!(rc = u64_push(&sp->overrides, range)) && !(rc = u64_push(&sp->overrides, bp)))
            sp->bitmap_pages.v[range] = bp;
    }
    if (!rc)
        rc = sets_reserve(sp);
    if (rc)
        return rc;
    record_set *rs = &sp->records[sp->nrecords++];
    rs->txnid = r->txnid;
    rs->pages = r->pages;
    memset(&r->pages, 0, sizeof r->pages);
    pending_set *ps = &sp->pending[sp->npending];
    memset(ps, 0, sizeof *ps);
    ps->txnid = r->txnid;
    rc = record_pending_runs(e, r, early, &ps->runs);
    for (size_t i = 0; i < ps->runs.n && !rc; i += 2)
        if (ps->runs.v[i] + ps->runs.v[i + 1] > sp->hwm)
            rc = kvm_err(KVM_CORRUPT, "the record of commit %llu: pending pages past the high-water mark",
                         (unsigned long long)r->txnid);
    if (!rc && ps->runs.n) {
        sp->npending++;
        for (size_t i = 1; i < ps->runs.n; i += 2)
            sp->pending_count += ps->runs.v[i];
    } else
        u64_free(&ps->runs);
    return rc;
}

static void reverse_sets(kvm_space *sp)
{
    for (size_t i = 0, j = sp->nrecords; i + 1 < j--; i++) {
        record_set x = sp->records[i];
        sp->records[i] = sp->records[j];
        sp->records[j] = x;
    }
    for (size_t i = 0, j = sp->npending; i + 1 < j--; i++) {
        pending_set x = sp->pending[i];
        sp->pending[i] = sp->pending[j];
        sp->pending[j] = x;
    }
}

/* Read the free space of meta state s into sp (whose hwm is s->hwm): the
** index chain, the records of the commits above the floor (the newest one's
** overrides replace index entries), then the bitmaps.  Every page is read
** once at most (a page met twice is damage), so a damaged file gives
** KVM_CORRUPT, never a loop. */
int freelist_load(kvm_env *e, kvm_space *sp, const kvm_state *s)
{
    kvm_freemap *seen = kvm_fm_new(), *early = kvm_fm_new();
    uint8_t *page = malloc(e->psize);
    int rc = 0;
    if (!seen || !early || !page) {
        rc = kvm_err(KVM_NOMEM, "allocating a page");
        goto out;
    }
    uint64_t b = sp->bits_per_page, nranges = ceil_div(sp->hwm, b);
    sp->floor = s->floor;
    sp->last_record = s->record;
    for (uint64_t pg = s->free_index; pg && !rc;) {
        if ((rc = claim_page(seen, pg)) || (rc = env_read_page(e, pg, s->hwm, PT_FREE_INDEX, (char *)page)) ||
            (rc = u64_push(&sp->index_pages, pg)))
            break;
        unsigned n = rd16(page + PH_NKEYS);
        if (PH_SIZE + 8ull * n > e->psize)
            rc = kvm_err(KVM_CORRUPT, "page %llu: entry count out of range", (unsigned long long)pg);
        for (unsigned i = 0; i < n && !rc; i++)
            rc = u64_push(&sp->bitmap_pages, rd64(page + PH_SIZE + 8 * i));
        pg = rd64(page + PH_NEXT);
    }
    if (!rc && s->free_index && sp->bitmap_pages.n != nranges)
        rc = kvm_err(KVM_CORRUPT, "free index does not cover the database");
    loader ld = {sp, early};
    if (!rc)
        rc = records_walk(e, s, s->floor, seen, load_record, &ld);
    reverse_sets(sp);
    for (size_t r = 0; r < sp->bitmap_pages.n && !rc; r++) {
        uint64_t bp = sp->bitmap_pages.v[r];
        if (!bp)
            continue;
        if ((rc = claim_page(seen, bp)) || (rc = env_read_page(e, bp, s->hwm, PT_FREE_BITMAP, (char *)page)))
            break;
        if (rd64(page + PH_NEXT) != r * b) {
            rc = kvm_err(KVM_CORRUPT, "page %llu: bitmap covers the wrong pages", (unsigned long long)bp);
            break;
        }
        int64_t added = kvm_fm_decode(sp->fm, r * b, b, (const char *)page + PH_SIZE, sp->hwm);
        if (added < 0)
            rc = (int)added;
    }
    if (!rc && (space_free_count(sp) != s->free_count || sp->pending_count != s->pending_count))
        rc = kvm_err(KVM_CORRUPT, "free-space counts disagree with the meta page");
    if (!rc)
        rc = space_holes_load(sp, e->file_size / e->psize);
    if (sp->dirty)
        memset(sp->dirty, 0, sp->dirty_cap);
out:
    kvm_fm_free(seen);
    kvm_fm_free(early);
    free(page);
    return rc;
}

/* --------------------------------------------------------------- commit */

/* The plan of one commit's free-space pages, for a given set of pages taken. */
typedef struct plan {
    uint64_t nranges, ndirty, nindex, noverride, nwritten, nrecord, need;
    int      new_index;
    u64vec   free_runs;            /* the pages this commit frees, as runs */
} plan;

static int range_dirty(const kvm_space *sp, uint64_t r) { return r < sp->dirty_cap && sp->dirty[r]; }

/* Whether range r is among the old overrides (sorted by range). */
static int range_overridden(const kvm_space *sp, uint64_t r)
{
    size_t lo = 0, hi = sp->overrides.n / 2;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (sp->overrides.v[2 * mid] < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < sp->overrides.n / 2 && sp->overrides.v[2 * lo] == r;
}

static int plan_make(kvm_space *sp, const u64vec *freed, uint64_t ntree, int pages_durable, uint64_t spare,
                     plan *pl)
{
    uint64_t b = sp->bits_per_page, per_index = (sp->psize - PH_SIZE) / 8, pay = sp->psize - PH_SIZE;
    const u64vec *old = &sp->bitmap_pages;
    memset(pl, 0, sizeof *pl);
    pl->nranges = ceil_div(sp->hwm, b);
    for (uint64_t r = 0; r < pl->nranges; r++) {
        pl->ndirty += range_dirty(sp, r);
        pl->noverride += range_dirty(sp, r) || range_overridden(sp, r);
    }
    pl->new_index = !sp->index_pages.n || pl->nranges != old->n || pl->noverride > RECORD_OVERRIDES_MAX;
    if (pl->new_index) {
        pl->noverride = 0;
        pl->nindex = ceil_div(pl->nranges, per_index);
    }
    u64vec replaced = {0};
    int rc = 0;
    for (size_t r = 0; r < old->n && !rc; r++)
        if (old->v[r] && (r >= pl->nranges || range_dirty(sp, r)))
            rc = u64_push(&replaced, old->v[r]);
    for (size_t i = 0; i < sp->stale.n && !rc; i++)
        rc = u64_push(&replaced, sp->stale.v[i]);
    for (size_t i = 0; i < sp->carried.n && !rc; i += 2)   /* still pending: now in this record */
        for (uint64_t pg = sp->carried.v[i]; pg < sp->carried.v[i] + sp->carried.v[i + 1] && !rc; pg++)
            rc = u64_push(&replaced, pg);
    for (size_t i = 0; pl->new_index && i < sp->index_pages.n && !rc; i++)
        rc = u64_push(&replaced, sp->index_pages.v[i]);
    if (!rc) {
        uint64_t *all = malloc((freed->n + replaced.n + 1) * sizeof *all);
        if (!all)
            rc = kvm_err(KVM_NOMEM, "allocating a page list");
        else {
            if (freed->n)
                memcpy(all, freed->v, freed->n * sizeof *all);
            if (replaced.n)
                memcpy(all + freed->n, replaced.v, replaced.n * sizeof *all);
            rc = runs_of(all, freed->n + replaced.n, &pl->free_runs);
            free(all);
        }
    }
    u64_free(&replaced);
    if (rc)
        return rc;
    pl->nwritten = pages_durable ? 0 : ntree + pl->ndirty + pl->nindex;
    pl->nrecord = ceil_div(record_bytes(pl->nwritten, pl->free_runs.n / 2, sp->early.n / 2, pl->noverride), pay) + spare;
    pl->need = pl->ndirty + pl->nindex + pl->nrecord;
    return 0;
}

/* Plan the free-space pages of commit t (after its tree changes, which
** wrote ntree pages): the leftover pool pages go back, a free tail is
** trimmed, the changed bitmaps and (when due) the index are written, and the
** record's pages are taken (freelist_record fills them once the other
** pages have their checksums).  s gets the meta's free-space fields.
** Adopted by freelist_adopt once the commit is done; undone by
** space_rollback. */
int freelist_prepare(kvm_txn *t, kvm_space *sp, kvm_state *s, size_t ntree, int pages_durable)
{
    kvm_env *e = t->env;
    uint32_t ps = sp->psize;
    uint64_t b = sp->bits_per_page, per_index = (ps - PH_SIZE) / 8;
    freelist_staged *st = &sp->staged;
    freelist_staged_clear(st);
    int rc = space_give(sp, t->pool.v, t->pool.n);
    if (rc || (rc = space_trim_tail(sp)))
        return rc;
    t->pool.n = 0;
    u64vec freed = {t->freed.v, t->freed.n, t->freed.cap};   /* borrowed */
    u64vec have = {0};
    uint64_t spare = 0;
    plan pl;
    /* Taking pages changes the free space: repeat until the pages taken are
    ** exactly what it then needs.  Pages taken beyond the need (rare: runs
    ** merged) become empty pages at the end of the record, so nothing taken
    ** goes back and changes a bitmap after it was planned. */
    for (;;) {
        if ((rc = plan_make(sp, &freed, ntree, pages_durable, spare, &pl)))
            goto fail;
        if (have.n == pl.need)
            break;
        if (have.n > pl.need) {
            spare += have.n - pl.need;
            u64_free(&pl.free_runs);
            if (spare > RECORD_SPARE_MAX) {
                rc = kvm_err(KVM_INVALID, "planning the free-space pages did not settle");
                goto fail;
            }
            continue;
        }
        u64vec runs = {0};
        rc = env_take(e, pl.need - have.n, &runs);
        for (size_t i = 0; i < runs.n && !rc; i += 2)
            for (uint64_t p = runs.v[i]; p < runs.v[i] + runs.v[i + 1] && !rc; p++)
                rc = u64_push(&have, p);
        u64_free(&runs);
        u64_free(&pl.free_runs);
        if (rc)
            goto fail;
    }
    size_t next = 0;
    const u64vec *old = &sp->bitmap_pages;
    for (uint64_t r = 0; r < pl.nranges && !rc; r++)
        rc = u64_push(&st->bitmaps, r < old->n ? old->v[r] : 0);
    uint8_t *body = malloc(ps);
    if (!body && !rc)
        rc = kvm_err(KVM_NOMEM, "allocating a page");
    /* the bitmaps of the changed ranges; the overrides the record carries */
    for (uint64_t r = 0; r < pl.nranges && !rc; r++) {
        if (range_dirty(sp, r)) {
            uint64_t pg = have.v[next++];
            st->bitmaps.v[r] = pg;
            kvm_fm_encode(sp->fm, r * b, b, (char *)body);
            rc = txn_put_page(t, pg, PT_FREE_BITMAP, 0, 0, r * b, body, b / 8, NULL);
        }
        if (!rc && !pl.new_index && (range_dirty(sp, r) || range_overridden(sp, r)) &&
            !(rc = u64_push(&st->overrides, r)))
            rc = u64_push(&st->overrides, st->bitmaps.v[r]);
    }
    /* the bitmap index, when due */
    for (uint64_t i = 0; i < pl.nindex && !rc; i++)
        rc = u64_push(&st->index, have.v[next++]);
    for (uint64_t i = 0; i < pl.nindex && !rc; i++) {
        uint64_t lo = i * per_index, hi = lo + per_index < pl.nranges ? lo + per_index : pl.nranges;
        for (uint64_t r = lo; r < hi; r++)
            wr64(body + 8 * (r - lo), st->bitmaps.v[r]);
        rc = txn_put_page(t, st->index.v[i], PT_FREE_INDEX, 0, (unsigned)(hi - lo),
                          i + 1 < pl.nindex ? st->index.v[i + 1] : 0, body, 8 * (hi - lo), NULL);
    }
    free(body);
    /* the record's pages, filled by freelist_record */
    for (uint64_t i = 0; i < pl.nrecord && !rc; i++)
        if (!(rc = u64_push(&st->records, have.v[next])))   /* in the commit's pages, filled later */
            rc = txn_put_page(t, have.v[next++], PT_RECORD, 0, 0, 0, "", 0, NULL);
    if (!rc)
        rc = sets_reserve(sp);   /* freelist_adopt cannot fail */
    /* which freed pages were written since the last flush (fresh: reusable
    ** early, space.h), and the early releases this record lists */
    int current = sp->fresh_base == env_fresh_base(e);
    st->base = sp->fresh_base;
    st->classified = current;
    for (size_t i = 0; i < pl.free_runs.n && !rc; i += 2) {
        if (current)
            rc = runs_filter(sp->fresh, pl.free_runs.v[i], pl.free_runs.v[i + 1], 1, &st->freed_fresh);
        if (!rc)
            rc = current ? runs_filter(sp->fresh, pl.free_runs.v[i], pl.free_runs.v[i + 1], 0, &st->freed_old)
                         : run_push(&st->freed_old, pl.free_runs.v[i], pl.free_runs.v[i + 1]);
    }
    for (size_t i = 0; i < sp->early.n && !rc; i += 2)
        rc = run_push(&st->released, sp->early.v[i], sp->early.v[i + 1]);
    if (rc)
        goto fail;
    st->freed_runs = pl.free_runs;
    memset(&pl.free_runs, 0, sizeof pl.free_runs);
    st->freed_count = 0;
    for (size_t i = 1; i < st->freed_runs.n; i += 2)
        st->freed_count += st->freed_runs.v[i];
    st->nwritten = pl.nwritten;
    st->flags = pages_durable ? R_FLAGS_PAGES_DURABLE : 0;
    st->txnid = t->txnid;
    st->env = e;
    st->valid = 1;
    u64_free(&have);
    s->hwm = sp->hwm;
    s->free_index = pl.new_index ? st->index.v[0] : (sp->index_pages.n ? sp->index_pages.v[0] : 0);
    s->record = st->records.v[0];
    s->free_count = space_free_count(sp);
    s->pending_count = sp->pending_count + st->freed_count;
    s->floor = sp->floor;
    return 0;
fail:
    u64_free(&pl.free_runs);
    u64_free(&have);
    freelist_staged_clear(st);
    return rc;
}

/* Write the record of the commit prepared last: order[0..n) are its pages,
** the record's own (type PT_RECORD) among them, the others' checksums
** computed (FORMAT.md §6). */
int freelist_record(kvm_txn *t, kvm_space *sp, dirty_ent *const *order, size_t n)
{
    freelist_staged *st = &sp->staged;
    uint32_t ps = sp->psize;
    size_t pay = ps - PH_SIZE;
    if (!st->valid || (!(st->flags & R_FLAGS_PAGES_DURABLE) && n != st->nwritten + st->records.n))
        return kvm_err(KVM_INVALID, "the commit record does not match its plan");
    size_t nfreed = st->freed_runs.n / 2, nrel = st->released.n / 2, nover = st->overrides.n / 2;
    size_t len = record_bytes(st->nwritten, nfreed, nrel, nover);
    uint8_t *s = calloc(1, st->records.n * pay);
    if (!s)
        return kvm_err(KVM_NOMEM, "allocating the commit record");
    wr64(s + R_PREV - PH_SIZE, sp->last_record);
    wr32(s + R_NWRITTEN - PH_SIZE, (uint32_t)st->nwritten);
    wr32(s + R_NFREED - PH_SIZE, (uint32_t)nfreed);
    wr32(s + R_NRELEASED - PH_SIZE, (uint32_t)nrel);
    wr32(s + R_NOVERRIDE - PH_SIZE, (uint32_t)nover);
    wr32(s + R_FLAGS - PH_SIZE, st->flags);
    uint8_t *w = s + R_FIXED;
    for (size_t i = 0; i < n && st->nwritten; i++) {
        const uint8_t *p = dirty_ptr(t, order[i]);
        if (p[PH_TYPE] == PT_RECORD)
            continue;
        wr64(w, order[i]->pgno);
        wr32(w + 8, rd32(p + PH_CHECKSUM));
        w += R_WRITTEN_SIZE;
    }
    for (size_t i = 0; i < st->freed_runs.n; i++, w += 8)
        wr64(w, st->freed_runs.v[i]);
    for (size_t i = 0; i < st->released.n; i++, w += 8)
        wr64(w, st->released.v[i]);
    for (size_t i = 0; i < st->overrides.n; i++, w += 8)
        wr64(w, st->overrides.v[i]);
    int rc = (size_t)(w - s) == len ? 0 : kvm_err(KVM_INVALID, "the commit record overran its plan");
    for (size_t i = 0; i < st->records.n && !rc; i++) {
        uint8_t *p;
        uint64_t pg = st->records.v[i];
        rc = txn_put_page(t, pg, PT_RECORD, i ? PF_CONTINUED : 0, 0, i + 1 < st->records.n ? st->records.v[i + 1] : 0,
                          s + i * pay, pay, &p);
        if (!rc)
            wr32(p + PH_CHECKSUM, kvm_crc32c(0, p + 4, ps - 4));
    }
    free(s);
    return rc;
}

/* The commit prepared last is done: adopt its free-space pages. */
void freelist_adopt(kvm_space *sp)
{
    freelist_staged *st = &sp->staged;
    u64_free(&sp->bitmap_pages);
    sp->bitmap_pages = st->bitmaps;
    memset(&st->bitmaps, 0, sizeof st->bitmaps);
    if (st->index.n) {
        u64_free(&sp->index_pages);
        sp->index_pages = st->index;
        memset(&st->index, 0, sizeof st->index);
    }
    u64_free(&sp->overrides);
    sp->overrides = st->overrides;
    memset(&st->overrides, 0, sizeof st->overrides);
    /* sets_reserve made room for one of each */
    record_set *rs = &sp->records[sp->nrecords++];
    rs->txnid = st->txnid;
    rs->pages = st->records;
    memset(&st->records, 0, sizeof st->records);
    sp->last_record = rs->pages.v[0];
    if (st->freed_runs.n) {
        pending_set *ps = &sp->pending[sp->npending++];
        memset(ps, 0, sizeof *ps);
        ps->txnid = st->txnid;
        ps->runs = st->freed_old;
        ps->fresh = st->freed_fresh;
        ps->base = st->base;   /* what the fresh pages were classified against */
        ps->classified = st->classified;
        memset(&st->freed_old, 0, sizeof st->freed_old);
        memset(&st->freed_fresh, 0, sizeof st->freed_fresh);
        sp->pending_count += st->freed_count;
    }
    u64_free(&sp->stale);   /* in this commit's freed runs */
    u64_free(&sp->carried);   /* the same */
    u64_free(&sp->early);   /* in this commit's record */
    if (sp->dirty)
        memset(sp->dirty, 0, sp->dirty_cap);
    kvm_env *e = st->env;
    freelist_staged_clear(st);
    /* Published: a handle that writes next loads the free space again, or
    ** is this one, so it knows of the holes (space.h). */
    env_give_back(e);
}
