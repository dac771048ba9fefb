/*
** freelist.c -- the free space on disk (FORMAT.md §6): loading it at open,
** and the free-list pages each commit writes.
**
** The reusable set is a bitmap split into pages of (page_size - 32) * 8
** bits, found through a chain of bitmap-index pages.  Each commit that frees
** pages writes its own pending-record pages ((start, count) runs; the page
** header's txnid says which commit freed them), found through a chain of
** pending-index pages, newest first.  A commit writes only the bitmap pages
** whose range changed, its own record pages, a new index chain when a
** bitmap moved, and a new head of the pending index (its entries plus the
** old head's live ones); never the whole free list, never other commits'
** records.  Pages taken for these pages change the free list, so planning
** repeats until the pages taken are exactly what the plan needs.
*/
#include "internal.h"
#include "space.h"
#include <stdlib.h>

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

void freelist_staged_clear(freelist_staged *st)
{
    u64_free(&st->bitmaps);
    u64_free(&st->index);
    u64_free(&st->records);
    for (size_t i = 0; i < st->nfresh; i++)
        u64_free(&st->pindex[i].entries);
    free(st->pindex);
    st->pindex = NULL;
    st->npindex = st->nfresh = 0;
    u64_free(&st->freed_runs);
    st->freed_count = 0;
    st->valid = 0;
}

/* ------------------------------------------------------------------ load */

typedef struct loader {
    kvm_env     *e;
    kvm_freemap *seen;      /* free-list pages met so far: each once */
    uint8_t     *page;
} loader;

static int claim(loader *ld, uint64_t pg)
{
    uint64_t run[2] = {pg, 1};
    if (pg < 2 || kvm_fm_add(ld->seen, run, 1))
        return kvm_err(KVM_CORRUPT, "page %llu appears twice in the free list", (unsigned long long)pg);
    return 0;
}

/* Read free-list page pg of type `type` (checksum, type and number verified)
** holding nkeys entries of `width` u64s each. */
static int read_list_page(loader *ld, uint64_t pg, int type, unsigned width, unsigned *nkeys, uint64_t *next)
{
    int rc = claim(ld, pg);
    if (rc || (rc = env_read_page(ld->e, pg, type, (char *)ld->page)))
        return rc;
    *nkeys = rd16(ld->page + PH_NKEYS);
    *next = rd64(ld->page + PH_NEXT);
    if (PH_SIZE + 8ull * width * *nkeys > ld->e->psize)
        return kvm_err(KVM_CORRUPT, "page %llu: entry count out of range", (unsigned long long)pg);
    return 0;
}

static int cmp_pending(const void *a, const void *b)
{
    uint64_t x = ((const pending_set *)a)->txnid, y = ((const pending_set *)b)->txnid;
    return x < y ? -1 : x > y;
}

static int cmp_records(const void *a, const void *b)
{
    uint64_t x = ((const record_set *)a)->txnid, y = ((const record_set *)b)->txnid;
    return x < y ? -1 : x > y;
}

/* Room for one more pending set and record set (one each per commit that
** freed pages: the two arrays are parallel). */
static int sets_reserve(kvm_space *sp)
{
    int rc = vec_reserve((void **)&sp->pending, &sp->pending_cap, sp->npending, sizeof *sp->pending);
    return rc ? rc : vec_reserve((void **)&sp->records, &sp->records_cap, sp->nrecords, sizeof *sp->records);
}

/* The pending set (and record set) of txnid, appended if new: the chain is
** read newest first, so sets are sorted once loading is done. */
static int pending_for(kvm_space *sp, uint64_t txnid, pending_set **ps, record_set **rs)
{
    size_t i = sp->npending;
    while (i > 0 && sp->pending[i - 1].txnid != txnid)
        i--;
    if (i == 0) {
        int rc = sets_reserve(sp);
        if (rc)
            return rc;
        memset(&sp->pending[sp->npending], 0, sizeof *sp->pending);
        memset(&sp->records[sp->nrecords], 0, sizeof *sp->records);
        sp->pending[sp->npending].txnid = sp->records[sp->nrecords].txnid = txnid;
        i = ++sp->npending;
        sp->nrecords++;
    }
    *ps = &sp->pending[i - 1];
    *rs = &sp->records[i - 1];
    return 0;
}

static int load_pending(loader *ld, kvm_space *sp, uint64_t head)
{
    uint64_t hwm = sp->hwm;
    for (uint64_t pg = head; pg;) {
        unsigned n;
        uint64_t next;
        int rc = read_list_page(ld, pg, PT_FREE_PENDING_INDEX, 2, &n, &next);
        if (rc)
            return rc;
        void *grown = realloc(sp->pindex, (sp->npindex + 1) * sizeof *sp->pindex);
        if (!grown)
            return kvm_err(KVM_NOMEM, "allocating the pending index");
        sp->pindex = grown;
        pindex_page *pi = &sp->pindex[sp->npindex++];
        memset(pi, 0, sizeof *pi);
        pi->pgno = pg;
        /* copy the entries first: reading record pages reuses the page buffer */
        for (unsigned i = 0; i < n && !rc; i++) {
            uint64_t rec = rd64(ld->page + PH_SIZE + 16 * i), txnid = rd64(ld->page + PH_SIZE + 16 * i + 8);
            if (!(rc = u64_push(&pi->entries, rec)))
                rc = u64_push(&pi->entries, txnid);
            if (txnid > pi->maxtxnid)
                pi->maxtxnid = txnid;
        }
        for (size_t i = 0; i < pi->entries.n && !rc; i += 2) {
            uint64_t rec = pi->entries.v[i], txnid = pi->entries.v[i + 1];
            if (txnid <= sp->floor)
                continue;   /* released before this meta was written */
            unsigned k;
            uint64_t unused;
            if ((rc = read_list_page(ld, rec, PT_FREE_PENDING, 2, &k, &unused)))
                break;
            if (rd64(ld->page + PH_TXNID) != txnid) {
                rc = kvm_err(KVM_CORRUPT, "page %llu: not the pending page of commit %llu",
                             (unsigned long long)rec, (unsigned long long)txnid);
                break;
            }
            pending_set *ps;
            record_set *rs;
            if ((rc = pending_for(sp, txnid, &ps, &rs)) || (rc = u64_push(&rs->pages, rec)))
                break;
            for (unsigned j = 0; j < k && !rc; j++) {
                uint64_t s = rd64(ld->page + PH_SIZE + 16 * j), c = rd64(ld->page + PH_SIZE + 16 * j + 8);
                if (s < 2 || c < 1 || s + c < s || s + c > hwm)
                    rc = kvm_err(KVM_CORRUPT, "page %llu: pending pages out of range", (unsigned long long)rec);
                else if (!(rc = u64_push(&ps->runs, s)) && !(rc = u64_push(&ps->runs, c)))
                    sp->pending_count += c;
            }
        }
        if (rc)
            return rc;
        pg = next;
    }
    if (sp->npending) {
        qsort(sp->pending, sp->npending, sizeof *sp->pending, cmp_pending);
        qsort(sp->records, sp->nrecords, sizeof *sp->records, cmp_records);
    }
    return 0;
}

/* Read the free-list pages of meta state s into sp (whose hwm is s->hwm).
** Every chain is bounded (a page met twice is damage), so a damaged file
** gives KVM_CORRUPT, never a loop. */
int freelist_load(kvm_env *e, kvm_space *sp, const kvm_state *s)
{
    loader ld = {e, kvm_fm_new(), malloc(e->psize)};
    int rc = 0;
    if (!ld.seen || !ld.page) {
        rc = kvm_err(KVM_NOMEM, "allocating a page");
        goto out;
    }
    uint64_t b = sp->bits_per_page;
    sp->floor = s->pending_floor;
    for (uint64_t pg = s->free_index; pg && !rc;) {
        unsigned n;
        uint64_t next;
        if ((rc = read_list_page(&ld, pg, PT_FREE_INDEX, 1, &n, &next)) || (rc = u64_push(&sp->index_pages, pg)))
            break;
        for (unsigned i = 0; i < n && !rc; i++)
            rc = u64_push(&sp->bitmap_pages, rd64(ld.page + PH_SIZE + 8 * i));
        pg = next;
    }
    if (!rc && s->free_index && sp->bitmap_pages.n != ceil_div(sp->hwm, b))
        rc = kvm_err(KVM_CORRUPT, "free index does not cover the database");
    for (size_t r = 0; r < sp->bitmap_pages.n && !rc; r++) {
        uint64_t pg = sp->bitmap_pages.v[r];
        if (!pg)
            continue;
        if ((rc = claim(&ld, pg)) || (rc = env_read_page(e, pg, PT_FREE_BITMAP, (char *)ld.page)))
            break;
        if (rd64(ld.page + PH_NEXT) != r * b) {
            rc = kvm_err(KVM_CORRUPT, "page %llu: bitmap covers the wrong pages", (unsigned long long)pg);
            break;
        }
        int64_t added = kvm_fm_decode(sp->fm, r * b, b, (const char *)ld.page + PH_SIZE, sp->hwm);
        if (added < 0)
            rc = (int)added;
    }
    if (!rc)
        rc = load_pending(&ld, sp, s->free_pending);
    if (!rc && (space_free_count(sp) != s->free_count || sp->pending_count != s->pending_count))
        rc = kvm_err(KVM_CORRUPT, "free-list page counts disagree with the meta page");
    if (sp->dirty)
        memset(sp->dirty, 0, sp->dirty_cap);
out:
    kvm_fm_free(ld.seen);
    free(ld.page);
    return rc;
}

/* --------------------------------------------------------------- commit */

/* The plan of one commit's free-list pages, for a given set of pages taken. */
typedef struct plan {
    uint64_t nranges, ndirty, nindex, nrecords, nentries, npindex, need;
    int      new_bindex, merged, drop_rest;
    u64vec   free_runs;            /* the pages this commit frees, as runs */
} plan;

static int plan_make(kvm_space *sp, const u64vec *freed, uint64_t spare, plan *pl)
{
    uint32_t ps = sp->psize;
    uint64_t b = sp->bits_per_page, per_index = (ps - PH_SIZE) / 8, per_entries = (ps - PH_SIZE) / 16,
             per_records = (ps - PH_SIZE) / 16;
    const u64vec *old = &sp->bitmap_pages;
    pindex_page *head = sp->npindex ? &sp->pindex[0] : NULL;
    uint64_t head_live = 0;
    for (size_t i = 0; head && i < head->entries.n; i += 2)
        head_live += head->entries.v[i + 1] > sp->floor;
    memset(pl, 0, sizeof *pl);
    pl->nranges = ceil_div(sp->hwm, b);
    for (uint64_t r = 0; r < pl->nranges; r++)
        pl->ndirty += r < sp->dirty_cap && sp->dirty[r];
    pl->new_bindex = pl->ndirty || pl->nranges != old->n || !sp->index_pages.n;
    u64vec replaced = {0};
    int rc = 0;
    for (size_t r = 0; r < old->n && !rc; r++)
        if (old->v[r] && (r >= pl->nranges || (r < sp->dirty_cap && sp->dirty[r])))
            rc = u64_push(&replaced, old->v[r]);
    for (size_t i = 0; i < sp->stale.n && !rc; i++)
        rc = u64_push(&replaced, sp->stale.v[i]);
    for (size_t i = 0; pl->new_bindex && i < sp->index_pages.n && !rc; i++)
        rc = u64_push(&replaced, sp->index_pages.v[i]);
    uint64_t upper = ceil_div(freed->n + replaced.n + 1, per_records) + spare;
    pl->merged = head && head_live + upper <= per_entries;
    pl->drop_rest = pl->merged && sp->npindex > 1 && sp->pindex[1].maxtxnid <= sp->floor;
    if (pl->merged && !rc)
        rc = u64_push(&replaced, head->pgno);
    for (size_t i = 1; pl->drop_rest && i < sp->npindex && !rc; i++)
        rc = u64_push(&replaced, sp->pindex[i].pgno);
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
    pl->nrecords = ceil_div(pl->free_runs.n / 2, per_records) + spare;
    pl->nentries = pl->nrecords + (pl->merged ? head_live : 0);
    pl->nindex = pl->new_bindex ? ceil_div(pl->nranges, per_index) : 0;
    pl->npindex = ceil_div(pl->nentries, per_entries);
    pl->need = pl->ndirty + pl->nindex + pl->nrecords + pl->npindex;
    return 0;
}

/* Write one free-list page of the commit (txn.c checks it and marks it dirty). */
static int put(kvm_txn *t, uint64_t pg, int type, unsigned nkeys, uint64_t next, const void *body, size_t len)
{
    return txn_put_page(t, pg, type, nkeys, next, body, len);
}

/* Plan and write the free-list pages of commit t (after its tree changes):
** the leftover pool pages go back, a free tail is trimmed, and s gets the
** meta's free-space fields.  Adopted by freelist_adopt once the commit is
** done; undone by space_rollback. */
int freelist_prepare(kvm_txn *t, kvm_space *sp, kvm_state *s)
{
    kvm_env *e = t->env;
    uint32_t ps = sp->psize;
    uint64_t b = sp->bits_per_page, per_index = (ps - PH_SIZE) / 8, per_entries = (ps - PH_SIZE) / 16,
             per_records = (ps - PH_SIZE) / 16;
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
    /* Taking pages changes the free list: repeat until the pages taken are
    ** exactly what the free list then needs.  Pages taken beyond the need
    ** (rare: runs merged) become empty record pages of this commit, so
    ** nothing taken goes back and changes a bitmap after it was planned. */
    for (;;) {
        if ((rc = plan_make(sp, &freed, spare, &pl)))
            goto fail;
        if (have.n == pl.need)
            break;
        if (have.n > pl.need) {
            spare += have.n - pl.need;
            u64_free(&pl.free_runs);
            continue;
        }
        u64vec runs = {0};
        rc = space_take(sp, pl.need - have.n, &runs);
        for (size_t i = 0; i < runs.n && !rc; i += 2)
            for (uint64_t p = runs.v[i]; p < runs.v[i] + runs.v[i + 1] && !rc; p++)
                rc = u64_push(&have, p);
        u64_free(&runs);
        u64_free(&pl.free_runs);
        if (rc)
            goto fail;
    }
    if ((rc = env_ensure_pages(e, sp->hwm)))
        goto fail;
    size_t next = 0;
    /* bitmaps of the changed ranges */
    const u64vec *old = &sp->bitmap_pages;
    for (uint64_t r = 0; r < pl.nranges && !rc; r++)
        rc = u64_push(&st->bitmaps, r < old->n ? old->v[r] : 0);
    uint8_t *body = malloc(ps);
    if (!body && !rc)
        rc = kvm_err(KVM_NOMEM, "allocating a page");
    for (uint64_t r = 0; r < pl.nranges && !rc; r++) {
        if (!(r < sp->dirty_cap && sp->dirty[r]))
            continue;
        uint64_t pg = have.v[next++];
        st->bitmaps.v[r] = pg;
        kvm_fm_encode(sp->fm, r * b, b, (char *)body);
        rc = put(t, pg, PT_FREE_BITMAP, 0, r * b, body, b / 8);
    }
    /* the bitmap index */
    if (!rc && pl.new_bindex) {
        for (uint64_t i = 0; i < pl.nindex && !rc; i++)
            rc = u64_push(&st->index, have.v[next++]);
        for (uint64_t i = 0; i < pl.nindex && !rc; i++) {
            uint64_t lo = i * per_index, hi = lo + per_index < pl.nranges ? lo + per_index : pl.nranges;
            for (uint64_t r = lo; r < hi; r++)
                wr64(body + 8 * (r - lo), st->bitmaps.v[r]);
            rc = put(t, st->index.v[i], PT_FREE_INDEX, (unsigned)(hi - lo),
                     i + 1 < pl.nindex ? st->index.v[i + 1] : 0, body, 8 * (hi - lo));
        }
    } else
        for (size_t i = 0; i < sp->index_pages.n && !rc; i++)
            rc = u64_push(&st->index, sp->index_pages.v[i]);
    /* this commit's pending records */
    size_t nruns = pl.free_runs.n / 2;
    for (uint64_t i = 0; i < pl.nrecords && !rc; i++) {
        uint64_t pg = have.v[next++];
        size_t lo = i * per_records, hi = lo + per_records < nruns ? lo + per_records : nruns;
        if (lo > hi)
            lo = hi;
        for (size_t k = lo; k < hi; k++) {
            wr64(body + 16 * (k - lo), pl.free_runs.v[2 * k]);
            wr64(body + 16 * (k - lo) + 8, pl.free_runs.v[2 * k + 1]);
        }
        if (!(rc = u64_push(&st->records, pg)))
            rc = put(t, pg, PT_FREE_PENDING, (unsigned)(hi - lo), 0, body, 16 * (hi - lo));
    }
    /* the new head(s) of the pending index, then the chain kept */
    u64vec entries = {0};
    for (size_t i = 0; i < st->records.n && !rc; i++)
        if (!(rc = u64_push(&entries, st->records.v[i])))
            rc = u64_push(&entries, t->txnid);
    if (pl.merged && sp->npindex)
        for (size_t i = 0; i < sp->pindex[0].entries.n && !rc; i += 2)
            if (sp->pindex[0].entries.v[i + 1] > sp->floor &&
                !(rc = u64_push(&entries, sp->pindex[0].entries.v[i])))
                rc = u64_push(&entries, sp->pindex[0].entries.v[i + 1]);
    size_t keep_from = pl.merged ? (pl.drop_rest ? sp->npindex : 1) : 0;
    size_t ntail = sp->npindex - keep_from;
    st->npindex = pl.npindex + ntail;
    st->nfresh = pl.npindex;
    st->pindex = calloc(st->npindex ? st->npindex : 1, sizeof *st->pindex);
    if (!st->pindex && !rc)
        rc = kvm_err(KVM_NOMEM, "allocating the pending index");
    for (uint64_t i = 0; i < pl.npindex && !rc; i++) {
        pindex_page *pi = &st->pindex[i];
        pi->pgno = have.v[next++];
        size_t lo = 2 * i * per_entries, hi = lo + 2 * per_entries < entries.n ? lo + 2 * per_entries : entries.n;
        for (size_t k = lo; k < hi && !rc; k += 2) {
            if (!(rc = u64_push(&pi->entries, entries.v[k])))
                rc = u64_push(&pi->entries, entries.v[k + 1]);
            if (entries.v[k + 1] > pi->maxtxnid)
                pi->maxtxnid = entries.v[k + 1];
        }
    }
    for (size_t i = 0; i < ntail && st->pindex; i++)
        st->pindex[pl.npindex + i] = sp->pindex[keep_from + i];   /* shared with sp until adopted */
    for (uint64_t i = 0; i < pl.npindex && !rc; i++) {
        pindex_page *pi = &st->pindex[i];
        for (size_t k = 0; k < pi->entries.n; k++)
            wr64(body + 8 * k, pi->entries.v[k]);
        rc = put(t, pi->pgno, PT_FREE_PENDING_INDEX, (unsigned)(pi->entries.n / 2),
                 i + 1 < st->npindex ? st->pindex[i + 1].pgno : 0, body, 8 * pi->entries.n);
    }
    u64_free(&entries);
    free(body);
    if (!rc)
        rc = sets_reserve(sp);   /* freelist_adopt cannot fail */
    if (rc)
        goto fail;
    st->freed_runs = pl.free_runs;
    memset(&pl.free_runs, 0, sizeof pl.free_runs);
    st->freed_count = 0;
    for (size_t i = 1; i < st->freed_runs.n; i += 2)
        st->freed_count += st->freed_runs.v[i];
    st->txnid = t->txnid;
    st->valid = 1;
    u64_free(&have);
    s->hwm = sp->hwm;
    s->free_index = st->index.n ? st->index.v[0] : 0;
    s->free_pending = st->npindex ? st->pindex[0].pgno : 0;
    s->free_count = space_free_count(sp);
    s->pending_count = sp->pending_count + st->freed_count;
    s->pending_floor = sp->floor;
    return 0;
fail:
    u64_free(&pl.free_runs);
    u64_free(&have);
    freelist_staged_clear(st);
    return rc;
}

/* The commit prepared last is done: adopt its free-list pages. */
void freelist_adopt(kvm_space *sp)
{
    freelist_staged *st = &sp->staged;
    /* the pending-index pages not kept by the new chain go */
    size_t kept = st->npindex - st->nfresh;
    for (size_t i = 0; i < sp->npindex - kept; i++)
        u64_free(&sp->pindex[i].entries);
    free(sp->pindex);
    sp->pindex = st->pindex;
    sp->npindex = st->npindex;
    st->pindex = NULL;
    st->npindex = st->nfresh = 0;
    u64_free(&sp->bitmap_pages);
    u64_free(&sp->index_pages);
    sp->bitmap_pages = st->bitmaps;
    sp->index_pages = st->index;
    memset(&st->bitmaps, 0, sizeof st->bitmaps);
    memset(&st->index, 0, sizeof st->index);
    if (st->freed_runs.n) {
        pending_set *ps;
        record_set *rs;
        /* a new newest commit: pending_for appends it (txnid above all) */
        if (pending_for(sp, st->txnid, &ps, &rs) == 0) {
            ps->runs = st->freed_runs;
            memset(&st->freed_runs, 0, sizeof st->freed_runs);
            sp->pending_count += st->freed_count;
            rs->pages = st->records;
            memset(&st->records, 0, sizeof st->records);
        }
        u64_free(&sp->stale);
    }
    u64_free(&st->records);
    u64_free(&st->freed_runs);
    if (sp->dirty)
        memset(sp->dirty, 0, sp->dirty_cap);
    st->valid = 0;
}
