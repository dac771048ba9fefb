/*
** space.c -- the free-space rules of a writable handle (design: space.h).
**
** Reusable pages live in freemap.c's bitmap: the lowest are handed out first
** (low pages fill before the file grows) and a free tail lowers hwm.
** Pending pages are kept per freeing commit, oldest first, and released
** oldest first.  Every change inside a write transaction is journaled and
** undone exactly by space_rollback; release is permanent.
*/
#include "internal.h"
#include "space.h"
#include <stdlib.h>

/* ------------------------------------------------------------ u64 arrays */

/* Room for n + 1 elements of `size` bytes in *v (capacity *cap, doubled). */
int vec_reserve(void **v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*v, c * size);
    if (!p)
        return kvm_err(KVM_NOMEM, "allocating a list");
    *v = p;
    *cap = c;
    return 0;
}

int u64_push(u64vec *a, uint64_t x)
{
    int rc = vec_reserve((void **)&a->v, &a->cap, a->n, sizeof *a->v);
    if (!rc)
        a->v[a->n++] = x;
    return rc;
}

int run_push(u64vec *runs, uint64_t start, uint64_t count)
{
    if (runs->n >= 2 && runs->v[runs->n - 2] + runs->v[runs->n - 1] == start) {
        runs->v[runs->n - 1] += count;
        return 0;
    }
    int rc = u64_push(runs, start);
    return rc ? rc : u64_push(runs, count);
}

void u64_free(u64vec *a)
{
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

static uint64_t runs_total(const u64vec *runs)
{
    uint64_t n = 0;
    for (size_t i = 1; i < runs->n; i += 2)
        n += runs->v[i];
    return n;
}

/* ---------------------------------------------------------- the space */

int space_new(kvm_space **out, uint32_t psize, uint64_t hwm)
{
    kvm_space *sp = calloc(1, sizeof *sp);
    if (!sp || !(sp->fm = kvm_fm_new()) || !(sp->fresh = kvm_fm_new()) || !(sp->holes = kvm_fm_new())) {
        if (sp) {
            kvm_fm_free(sp->fm);
            kvm_fm_free(sp->fresh);
        }
        free(sp);
        return kvm_err(KVM_NOMEM, "allocating the free space");
    }
    sp->psize = psize;
    sp->bits_per_page = (uint64_t)(psize - PH_SIZE) * 8;
    sp->hwm = hwm;
    *out = sp;
    return 0;
}

static void journal_clear(kvm_space *sp)
{
    for (size_t i = 0; i < sp->njournal; i++)
        u64_free(&sp->journal[i].runs);
    sp->njournal = 0;
}

void space_free(kvm_space *sp)
{
    if (!sp)
        return;
    kvm_fm_free(sp->fm);
    kvm_fm_free(sp->fresh);
    kvm_fm_free(sp->holes);
    for (size_t i = 0; i < sp->npending; i++) {
        u64_free(&sp->pending[i].runs);
        u64_free(&sp->pending[i].fresh);
        u64_free(&sp->pending[i].writers);
    }
    free(sp->pending);
    for (size_t i = 0; i < sp->nrecords; i++)
        u64_free(&sp->records[i].pages);
    free(sp->records);
    u64_free(&sp->bitmap_pages);
    u64_free(&sp->index_pages);
    u64_free(&sp->overrides);
    u64_free(&sp->stale);
    u64_free(&sp->early);
    u64_free(&sp->carried);
    u64_free(&sp->snap_set);
    free(sp->dirty);
    journal_clear(sp);
    free(sp->journal);
    freelist_staged_clear(&sp->staged);
    free(sp);
}

uint64_t space_free_count(const kvm_space *sp) { return kvm_fm_count(sp->fm); }

/* Note the bitmap ranges that runs touch: their bitmap pages are rewritten
** by the next commit. */
int space_mark(kvm_space *sp, const uint64_t *runs, size_t nruns)
{
    uint64_t b = sp->bits_per_page;
    for (size_t i = 0; i < nruns; i++) {
        uint64_t s = runs[2 * i], n = runs[2 * i + 1];
        if (!n)
            continue;
        uint64_t last = (s + n - 1) / b;
        if (last >= sp->dirty_cap) {
            size_t cap = sp->dirty_cap ? sp->dirty_cap : 16;
            while (cap <= last)
                cap *= 2;
            uint8_t *d = realloc(sp->dirty, cap);
            if (!d)
                return kvm_err(KVM_NOMEM, "allocating the free-space ranges");
            memset(d + sp->dirty_cap, 0, cap - sp->dirty_cap);
            sp->dirty = d;
            sp->dirty_cap = cap;
        }
        for (uint64_t r = s / b; r <= last; r++)
            sp->dirty[r] = 1;
    }
    return 0;
}

/* Make runs reusable in the bitmap (the caller checked them), noting for
** space_take where it may find them. */
static int fm_put(kvm_space *sp, const uint64_t *runs, size_t nruns)
{
    int rc = kvm_fm_add(sp->fm, runs, nruns);
    for (size_t i = 0; !rc && i < nruns; i++)
        if (runs[2 * i] / 64 < sp->solid_hint)
            sp->solid_hint = runs[2 * i] / 64;
    return rc;
}

int space_add(kvm_space *sp, const uint64_t *runs, size_t nruns)
{
    for (size_t i = 0; i < nruns; i++)
        if (runs[2 * i] + runs[2 * i + 1] > sp->hwm)
            return kvm_err(KVM_CORRUPT, "free pages [%llu, %llu) outside the database",
                           (unsigned long long)runs[2 * i],
                           (unsigned long long)(runs[2 * i] + runs[2 * i + 1]));
    int rc = fm_put(sp, runs, nruns);
    return rc ? rc : space_mark(sp, runs, nruns);
}

static int space_remove(kvm_space *sp, const uint64_t *runs, size_t nruns)
{
    int rc = kvm_fm_remove(sp->fm, runs, nruns);
    return rc ? rc : space_mark(sp, runs, nruns);
}

/* ------------------------------------------------------------- release */

/* Forget which pages were written since fresh_base once a newer commit is
** durable or being flushed: they are part of a state open may take. */
static void fresh_rebase(kvm_space *sp, uint64_t base)
{
    if (sp->fresh_base == base)
        return;
    kvm_freemap *fm = kvm_fm_new();
    if (fm) {   /* else keep the old set: its pages stay fresh only where base matches */
        kvm_fm_free(sp->fresh);
        sp->fresh = fm;
        sp->fresh_base = base;
    }
}

static int release_runs(kvm_space *sp, u64vec *runs, u64vec *released)
{
    int rc = space_add(sp, runs->v, runs->n / 2);
    if (rc)
        return rc;
    sp->pending_count -= runs_total(runs);
    for (size_t i = 0; released && i < runs->n && !rc; i += 2)
        rc = run_push(released, runs->v[i], runs->v[i + 1]);
    u64_free(runs);
    return rc;
}

/* Make reusable the pages freed by commits F <= min(upto, durable) (upto:
** the oldest snapshot), and, early, the fresh pages of commits F <= upto
** whose classification is still current (written after `base`, the durable
** commit or the one a flush in flight makes durable: p->base == base);
** append their runs to *released (when given, for madvise).  The records
** of the commits released are freed by the next commit: until its meta is
** on disk, the metas there hold them as their pending lists.  Permanent:
** not journaled (the early pages are listed by the next commit's record). */
int space_release(kvm_space *sp, uint64_t upto, uint64_t durable, uint64_t base, u64vec *released)
{
    uint64_t all = upto < durable ? upto : durable;
    fresh_rebase(sp, base);
    size_t k = 0;
    int rc = 0;
    for (; k < sp->npending && sp->pending[k].txnid <= all && !rc; k++) {
        pending_set *p = &sp->pending[k];
        if (!(rc = release_runs(sp, &p->runs, released)))
            rc = release_runs(sp, &p->fresh, released);
        u64_free(&p->writers);
    }
    if (k) {
        memmove(sp->pending, sp->pending + k, (sp->npending - k) * sizeof *sp->pending);
        sp->npending -= k;
    }
    for (size_t i = 0; i < sp->npending && sp->pending[i].txnid <= upto && !rc; i++) {
        pending_set *p = &sp->pending[i];
        if (!p->fresh.n || p->base != base)
            continue;
        for (size_t j = 0; j < p->fresh.n && !rc; j += 2)
            rc = run_push(&sp->early, p->fresh.v[j], p->fresh.v[j + 1]);
        if (!rc)
            rc = release_runs(sp, &p->fresh, released);
        u64_free(&p->writers);   /* named pages released here: read again when next judged */
        p->writers_known = 0;
        p->judged_gen = 0;
    }
    if (rc)
        return rc;
    size_t r = 0;
    for (; r < sp->nrecords && sp->records[r].txnid <= all && !rc; r++) {
        record_set *rs = &sp->records[r];
        for (size_t i = 0; i < rs->pages.n && !rc; i++)
            rc = u64_push(&sp->stale, rs->pages.v[i]);
        if (rs->txnid > sp->floor)
            sp->floor = rs->txnid;
        u64_free(&rs->pages);
    }
    if (r) {
        memmove(sp->records, sp->records + r, (sp->nrecords - r) * sizeof *sp->records);
        sp->nrecords -= r;
    }
    return rc;
}

/* Pages [pages, n) were written by a commit after `base` (the durable
** commit, or the one a flush in flight makes durable): note them fresh;
** *added counts those not noted before (what a flush will have to write
** anew). */
int space_written(kvm_space *sp, uint64_t base, const uint64_t *pages, size_t n, uint64_t *added)
{
    fresh_rebase(sp, base);
    *added = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t run[2] = {pages[i], 1}, one[2];
        if (kvm_fm_runs(sp->fresh, pages[i], pages[i] + 1, one, 1))
            continue;
        int rc = kvm_fm_add(sp->fresh, run, 1);
        if (rc)
            return rc;
        ++*added;
    }
    return 0;
}

/* The pages that a flush would make reusable: those freed by the commits
** F with durable < F <= upto and not released yet (*pending), and those
** commits' record pages (*records). */
void space_held(const kvm_space *sp, uint64_t durable, uint64_t upto, uint64_t *pending, uint64_t *records)
{
    *pending = *records = 0;
    for (size_t i = sp->npending; i-- > 0 && sp->pending[i].txnid > durable;)
        if (sp->pending[i].txnid <= upto)
            *pending += runs_total(&sp->pending[i].runs) + runs_total(&sp->pending[i].fresh);
    for (size_t i = sp->nrecords; i-- > 0 && sp->records[i].txnid > durable;)
        if (sp->records[i].txnid <= upto)
            *records += sp->records[i].pages.n;
}

/* ---------------------------------------------------------- transaction */

void space_begin(kvm_space *sp)
{
    journal_clear(sp);
    sp->taken = 0;
}

static int journal_add(kvm_space *sp, int kind, u64vec *runs, uint64_t old_hwm)
{
    int rc = vec_reserve((void **)&sp->journal, &sp->journal_cap, sp->njournal, sizeof *sp->journal);
    if (rc)
        return rc;
    journal_ent *j = &sp->journal[sp->njournal++];
    j->kind = kind;
    j->runs = *runs;            /* the journal owns the runs now */
    j->old_hwm = old_hwm;
    memset(runs, 0, sizeof *runs);
    return 0;
}

/* Take n pages: the lowest reusable pages known to be allocated first,
** then the lowest that may be holes (the caller allocates them again: like
** growth, only once the allocated ones are used up, so pages given back
** stay given back while a workload reuses what it frees), then from the
** tail (raising hwm: the caller grows the file before touching them).
** Appends the runs to *out. */
int space_take(kvm_space *sp, uint64_t n, u64vec *out)
{
    u64vec runs = {0};
    uint64_t buf[256];
    int rc = 0;
    for (int holes = 0; holes < 2; holes++)
        while (n && !rc) {
            size_t k = holes ? kvm_fm_take(sp->fm, n, buf, 128)
                             : kvm_fm_take_but(sp->fm, sp->holes, n, buf, 128, &sp->solid_hint);
            if (!k)
                break;
            for (size_t i = 0; i < k && !rc; i++) {
                n -= buf[2 * i + 1];
                rc = run_push(&runs, buf[2 * i], buf[2 * i + 1]);
            }
        }
    uint64_t old_hwm = sp->hwm;
    if (!rc && n) {   /* a run of its own, never merged: undo tells the two apart by old_hwm */
        if (!(rc = u64_push(&runs, sp->hwm)) && !(rc = u64_push(&runs, n)))
            sp->hwm += n;
    }
    if (!rc)
        rc = space_mark(sp, runs.v, runs.n / 2);
    for (size_t i = 0; !rc && i < runs.n; i += 2)
        rc = run_push(out, runs.v[i], runs.v[i + 1]);
    if (!rc)
        sp->taken += runs_total(&runs);
    if (rc) {   /* give back what the map handed out */
        for (size_t i = 0; i < runs.n; i += 2)
            if (runs.v[i] < old_hwm)
                fm_put(sp, runs.v + i, 1);
        sp->hwm = old_hwm;
        u64_free(&runs);
        return rc;
    }
    return journal_add(sp, J_TAKE, &runs, old_hwm);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Append the sorted, coalesced runs of a list of page numbers to *runs. */
int runs_of(const uint64_t *pages, size_t n, u64vec *runs)
{
    if (!n)
        return 0;
    uint64_t *s = malloc(n * sizeof *s);
    if (!s)
        return kvm_err(KVM_NOMEM, "allocating a page list");
    memcpy(s, pages, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_u64);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = run_push(runs, s[i], 1);
    free(s);
    return rc;
}

/* Make pages (taken in this transaction, never written by a commit)
** reusable again. */
int space_give(kvm_space *sp, const uint64_t *pages, size_t n)
{
    if (!n)
        return 0;
    u64vec runs = {0};
    int rc = runs_of(pages, n, &runs);
    if (!rc)
        rc = space_add(sp, runs.v, runs.n / 2);
    if (rc) {
        u64_free(&runs);
        return rc;
    }
    sp->taken -= n < sp->taken ? n : sp->taken;
    return journal_add(sp, J_GIVE, &runs, sp->hwm);
}

/* Lower hwm over a free tail. */
int space_trim_tail(kvm_space *sp)
{
    uint64_t n = kvm_fm_tail(sp->fm, sp->hwm);
    if (!n)
        return 0;
    u64vec runs = {0};
    int rc = run_push(&runs, sp->hwm - n, n);
    if (!rc)
        rc = space_remove(sp, runs.v, 1);
    if (rc) {
        u64_free(&runs);
        return rc;
    }
    uint64_t old = sp->hwm;
    sp->hwm -= n;
    return journal_add(sp, J_TRIM, &runs, old);
}

/* Undo one journal entry.  Undoing only restores pages this transaction
** changed, so it cannot fail but for memory (marking ranges), which leaves
** the ranges marked: a superset, harmless. */
static void undo(kvm_space *sp, journal_ent *j)
{
    switch (j->kind) {
    case J_TAKE:
        for (size_t i = 0; i < j->runs.n; i += 2)
            if (j->runs.v[i] < j->old_hwm)
                fm_put(sp, j->runs.v + i, 1);
        sp->hwm = j->old_hwm;
        sp->taken -= runs_total(&j->runs);
        break;
    case J_GIVE:
        kvm_fm_remove(sp->fm, j->runs.v, j->runs.n / 2);
        sp->taken += runs_total(&j->runs);
        break;
    case J_TRIM:
        sp->hwm = j->old_hwm;
        fm_put(sp, j->runs.v, j->runs.n / 2);
        break;
    }
    space_mark(sp, j->runs.v, j->runs.n / 2);
    u64_free(&j->runs);
}

void space_rollback(kvm_space *sp)
{
    while (sp->njournal)
        undo(sp, &sp->journal[--sp->njournal]);
    freelist_staged_clear(&sp->staged);
}

/* Undo the last take (its pages did not fit in the file). */
int space_undo_take(kvm_space *sp)
{
    if (!sp->njournal || sp->journal[sp->njournal - 1].kind != J_TAKE)
        return kvm_err(KVM_INVALID, "no take to undo");
    undo(sp, &sp->journal[--sp->njournal]);
    return 0;
}

/* ------------------------------------------------- precise reclamation */

/* A page written by commit C and freed by commit F is part of exactly the
** states C .. F-1.  space_release waits until no snapshot and no durable
** commit is older than F; while one old snapshot is held, that keeps every
** page freed since, though the snapshot reaches none of those written after
** it.  space_reclaim makes a pending page reusable as soon as no live
** snapshot t (in any process) has C <= t < F and the newest durable commit
** D is not in [C, F) either (FORMAT.md §7): D is the state open falls back
** to, and pages written after D are in no state open may choose unverified
** (the early rule of space_release is the case of no snapshot below F).
** It runs only where the writer would otherwise grow the file (make_room),
** judges each set once per set of live snapshots (and again after a flush
** for the sets D did not reach), and reads each page's writer from its
** header once: a pending page is never rewritten, so the header still
** names the commit that wrote it. */

/* Whether some snapshot of snaps (ascending) lies in [lo, hi). */
static int snap_within(const u64vec *snaps, uint64_t lo, uint64_t hi)
{
    size_t a = 0, b = snaps->n;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (snaps->v[m] < lo)
            a = m + 1;
        else
            b = m;
    }
    return a < snaps->n && snaps->v[a] < hi;
}

/* The commit that wrote each page of set p (pairs (page, writer), by page),
** read once.  A header that names another page, or a commit not older than
** the one that freed the page (never so: a page written and freed by one
** commit goes straight back), gives 0, unknown: the page then waits as one
** written by the first commit would, which is space_release's rule. */
static int set_writers(pending_set *p, page_writer_fn writer_of, void *ctx)
{
    if (p->writers_known)
        return 0;
    u64vec w = {0};
    const u64vec *lists[2] = {&p->runs, &p->fresh};
    int rc = 0;
    for (int l = 0; l < 2 && !rc; l++)
        for (size_t i = 0; i < lists[l]->n && !rc; i += 2)
            for (uint64_t pg = lists[l]->v[i]; pg < lists[l]->v[i] + lists[l]->v[i + 1] && !rc; pg++) {
                uint64_t c = 0;
                if (!(rc = writer_of(ctx, pg, &c)) && !(rc = u64_push(&w, pg)))
                    rc = u64_push(&w, c < p->txnid ? c : 0);
            }
    if (rc) {
        u64_free(&w);
        return rc;
    }
    if (w.n > 2)
        qsort(w.v, w.n / 2, 2 * sizeof *w.v, cmp_u64);   /* by page, the first of each pair */
    u64_free(&p->writers);
    p->writers = w;
    p->writers_known = 1;
    return 0;
}

/* The parts of runs that are not in gone, into *out. */
static int runs_without(const u64vec *runs, kvm_freemap *gone, u64vec *out)
{
    int rc = 0;
    for (size_t i = 0; i < runs->n && !rc; i += 2) {
        uint64_t e = runs->v[i] + runs->v[i + 1];
        for (uint64_t p = kvm_fm_find(gone, runs->v[i], e, 0); p < e && !rc;) {
            uint64_t q = kvm_fm_find(gone, p, e, 1);
            rc = run_push(out, p, q - p);
            p = kvm_fm_find(gone, q, e, 0);
        }
    }
    return rc;
}

/* Judge set p against the live snapshots and the durable commit: release
** the pages no state needs (listed as released early by the next commit's
** record, appended to *released).  Everything that can fail is built
** before the set or the free space changes. */
static int set_judge(kvm_space *sp, pending_set *p, const u64vec *snaps, uint64_t durable, u64vec *released)
{
    u64vec rel = {0}, kept = {0}, runs = {0}, fresh = {0}, early = {0};
    kvm_freemap *gone = NULL;
    uint64_t held = 0, nrel = 0;
    int rc = 0;
    for (size_t i = 0; i < p->writers.n && !rc; i += 2) {
        uint64_t pg = p->writers.v[i], c = p->writers.v[i + 1];
        int for_snapshot = snap_within(snaps, c, p->txnid), for_durable = c <= durable && durable < p->txnid;
        if (!for_snapshot && !for_durable) {
            rc = run_push(&rel, pg, 1);
            nrel++;
        } else {
            held += !for_snapshot;
            if (!(rc = u64_push(&kept, pg)))
                rc = u64_push(&kept, c);
        }
    }
    if (!rc && nrel) {
        if (!(gone = kvm_fm_new()))
            rc = kvm_err(KVM_NOMEM, "allocating a page map");
        if (!rc)
            rc = kvm_fm_add(gone, rel.v, rel.n / 2);
        if (!rc)
            rc = runs_without(&p->runs, gone, &runs);
        if (!rc)
            rc = runs_without(&p->fresh, gone, &fresh);
        for (size_t i = 0; i < sp->early.n && !rc; i += 2)
            rc = run_push(&early, sp->early.v[i], sp->early.v[i + 1]);
        for (size_t i = 0; i < rel.n && !rc; i += 2)
            rc = run_push(&early, rel.v[i], rel.v[i + 1]);
        if (!rc)
            rc = space_add(sp, rel.v, rel.n / 2);
        for (size_t i = 0; released && i < rel.n && !rc; i += 2)
            rc = run_push(released, rel.v[i], rel.v[i + 1]);
    }
    if (!rc && nrel) {
        u64_free(&p->runs);
        u64_free(&p->fresh);
        u64_free(&sp->early);
        p->runs = runs;
        p->fresh = fresh;
        sp->early = early;
        sp->pending_count -= nrel;
        memset(&runs, 0, sizeof runs);
        memset(&fresh, 0, sizeof fresh);
        memset(&early, 0, sizeof early);
    }
    if (!rc && nrel) {
        u64_free(&p->writers);
        p->writers = kept;
        memset(&kept, 0, sizeof kept);
    }
    if (!rc) {
        p->judged_durable = durable;
        p->held_by_durable = held;
    }
    kvm_fm_free(gone);
    u64_free(&rel);
    u64_free(&kept);
    u64_free(&runs);
    u64_free(&fresh);
    u64_free(&early);
    return rc;
}

/* Records of commits up to this many pages, and four times the record
** pages their sets' pending pages take to list again, are voided by
** records_carry. */
#define CARRY_MIN_PAGES 64

/* Void the live records of the commits <= durable that pile up while a
** snapshot older than them holds some of their pending pages (a record is
** void only with every older one, FORMAT.md §6): their pending pages are
** listed again, as freed, by the next commit's record (`carried`; pending
** there, and held for [writer, that commit), a longer span than before:
** never less safe), their record pages are freed by it (stale), as
** space_release does.  Never past durable: open verifies the records of
** the commits after it.  Amortised: only once the records hold
** CARRY_MIN_PAGES pages and four times what listing the pages again takes. */
static int records_carry(kvm_space *sp, uint64_t durable)
{
    size_t r = 0, k = 0;
    uint64_t rec_pages = 0, nruns = 0, moved = 0;
    for (; r < sp->nrecords && sp->records[r].txnid <= durable; r++)
        rec_pages += sp->records[r].pages.n;
    if (!r)
        return 0;
    uint64_t upto = sp->records[r - 1].txnid, pay = sp->psize - PH_SIZE;
    for (; k < sp->npending && sp->pending[k].txnid <= upto; k++)
        nruns += (sp->pending[k].runs.n + sp->pending[k].fresh.n) / 2;
    if (rec_pages < CARRY_MIN_PAGES || rec_pages < 4 * ((nruns * R_RUN_SIZE + pay - 1) / pay + 1))
        return 0;
    u64vec carried = {0}, stale = {0};
    int rc = 0;
    for (size_t i = 0; i < sp->carried.n && !rc; i += 2)
        rc = run_push(&carried, sp->carried.v[i], sp->carried.v[i + 1]);
    for (size_t i = 0; i < k && !rc; i++)
        for (int l = 0; l < 2 && !rc; l++) {
            const u64vec *runs = l ? &sp->pending[i].fresh : &sp->pending[i].runs;
            for (size_t j = 0; j < runs->n && !rc; j += 2) {
                rc = run_push(&carried, runs->v[j], runs->v[j + 1]);
                moved += runs->v[j + 1];
            }
        }
    for (size_t i = 0; i < sp->stale.n && !rc; i++)
        rc = u64_push(&stale, sp->stale.v[i]);
    for (size_t i = 0; i < r && !rc; i++)
        for (size_t j = 0; j < sp->records[i].pages.n && !rc; j++)
            rc = u64_push(&stale, sp->records[i].pages.v[j]);
    if (rc) {
        u64_free(&carried);
        u64_free(&stale);
        return rc;
    }
    u64_free(&sp->carried);
    u64_free(&sp->stale);
    sp->carried = carried;
    sp->stale = stale;
    sp->pending_count -= moved;
    for (size_t i = 0; i < k; i++) {
        u64_free(&sp->pending[i].runs);
        u64_free(&sp->pending[i].fresh);
        u64_free(&sp->pending[i].writers);
    }
    if (k)
        memmove(sp->pending, sp->pending + k, (sp->npending - k) * sizeof *sp->pending);
    sp->npending -= k;
    for (size_t i = 0; i < r; i++)
        u64_free(&sp->records[i].pages);
    memmove(sp->records, sp->records + r, (sp->nrecords - r) * sizeof *sp->records);
    sp->nrecords -= r;
    if (upto > sp->floor)
        sp->floor = upto;
    return 0;
}

/* Release what the live snapshots snaps (txnids, ascending, distinct) and
** the durable commit no longer need (above); *released gets the runs (for
** madvise).  Permanent, like space_release. */
int space_reclaim(kvm_space *sp, const u64vec *snaps, uint64_t durable, page_writer_fn writer_of, void *ctx,
                  u64vec *released)
{
    int rc = 0;
    if (!sp->snap_gen || snaps->n != sp->snap_set.n ||
        (snaps->n && memcmp(snaps->v, sp->snap_set.v, snaps->n * sizeof *snaps->v))) {
        u64vec copy = {0};
        for (size_t i = 0; i < snaps->n && !rc; i++)
            rc = u64_push(&copy, snaps->v[i]);
        if (rc) {
            u64_free(&copy);
            return rc;
        }
        u64_free(&sp->snap_set);
        sp->snap_set = copy;
        sp->snap_gen++;
    }
    /* the sets judged by the last call against the same snapshots and
    ** durable commit are judged: start after them */
    size_t first = 0;
    if (sp->judged_gen == sp->snap_gen && sp->judged_durable == durable)
        for (first = sp->npending; first > 0 && sp->pending[first - 1].txnid > sp->judged_upto; first--)
            ;
    for (size_t i = first; i < sp->npending && !rc; i++) {
        pending_set *p = &sp->pending[i];
        if (p->judged_gen == sp->snap_gen && (p->judged_durable == durable || p->txnid <= p->judged_durable))
            continue;   /* judged against the same snapshots, and D's place against the set is the same */
        if (p->txnid > durable && p->classified && p->base == durable && !snap_within(snaps, 0, p->txnid))
            continue;   /* its pages written after D are space_release's (no snapshot below F), the others D's */
        if (!(rc = set_writers(p, writer_of, ctx)) && !(rc = set_judge(sp, p, snaps, durable, released)))
            p->judged_gen = sp->snap_gen;
    }
    if (rc)
        return rc;
    sp->judged_gen = sp->snap_gen;
    sp->judged_durable = durable;
    sp->judged_upto = sp->npending ? sp->pending[sp->npending - 1].txnid : 0;
    return records_carry(sp, durable);
}

/* The pages space_reclaim last found kept for the durable commit alone
** (a flush would release them), in the sets newer than upto (space_held
** counts the others). */
uint64_t space_held_by_durable(const kvm_space *sp, uint64_t durable, uint64_t upto)
{
    uint64_t n = 0;
    for (size_t i = sp->npending; i-- > 0 && sp->pending[i].txnid > durable;)
        if (sp->pending[i].txnid > upto && sp->pending[i].judged_gen == sp->snap_gen &&
            sp->pending[i].judged_durable == durable)
            n += sp->pending[i].held_by_durable;
    return n;
}

/* -------------------------------------------------------- giving back */

/* fn on every free run [s, e) (a give-back pass, the holes a load assumes): the reusable runs
** ascending, then the file past hwm, up to file_pages. */
typedef int (*free_run_fn)(kvm_space *sp, uint64_t s, uint64_t e, void *ctx);

static int each_free_run(kvm_space *sp, uint64_t file_pages, free_run_fn fn, void *ctx)
{
    uint64_t buf[256], lo = META_PAGES;
    size_t k;
    int rc = 0;
    while (!rc && (k = kvm_fm_runs(sp->fm, lo, sp->hwm, buf, 128)) > 0) {
        for (size_t i = 0; i < k && !rc; i++)
            rc = fn(sp, buf[2 * i], buf[2 * i] + buf[2 * i + 1], ctx);
        lo = buf[2 * (k - 1)] + buf[2 * (k - 1) + 1];
    }
    if (!rc && file_pages > sp->hwm)
        rc = fn(sp, sp->hwm, file_pages, ctx);
    return rc;
}

static int mark_hole(kvm_space *sp, uint64_t s, uint64_t e, void *ctx)
{
    (void)ctx;
    return kvm_fm_set(sp->holes, s, e, 1);
}

/* The free space was just loaded: any reusable page, and any page past
** hwm, may be a hole another handle punched (space.h). */
int space_holes_load(kvm_space *sp, uint64_t file_pages)
{
    return each_free_run(sp, file_pages, mark_hole, NULL);
}

/* Free runs shorter than this stay allocated.  Each punch is a system call
** that changes the file's extent tree, and on a file system mounted with
** online discard it waits for the device: on this project's machine
** (ext4, `discard`, virtio) about 2 ms per call whatever its length, and
** 1 us per page beyond that; 15-20 us per call on ext4 without discard.
** After 90% of a database is deleted at random, runs of 16 pages or more
** hold 85-88% of its free pages, in one run per 180-200 free pages
** (docs/ARCHITECTURE.md §4). */
#define PUNCH_MIN_RUN 16

/* A free run [s, e) is punched, if at all, from its first page that is
** not a hole: a run whose part from there is shorter than PUNCH_MIN_RUN
** stays allocated. */
static int run_too_short(kvm_space *sp, uint64_t s, uint64_t e)
{
    return e - kvm_fm_find(sp->holes, s, e, 0) < PUNCH_MIN_RUN;
}

/* The free pages that are not holes in the runs too short to punch: they
** stay, and are the first part of the reserve. */
static int count_short(kvm_space *sp, uint64_t s, uint64_t e, void *ctx)
{
    if (run_too_short(sp, s, e))
        for (uint64_t p = kvm_fm_find(sp->holes, s, e, 0), q; p < e; p = kvm_fm_find(sp->holes, q, e, 0)) {
            q = kvm_fm_find(sp->holes, p, e, 1);
            *(uint64_t *)ctx += q - p;
        }
    return 0;
}

typedef struct punch_plan {
    uint64_t keep;   /* the rest of the reserve: in the longer runs, lowest first */
    u64vec  *out;
} punch_plan;

/* One free run [s, e) of the plan: a run too short to punch stays (it was
** counted in the reserve); of a longer one, the first plan->keep free pages
** that are not holes stay, and the rest from its first page that is not a
** hole, when that is PUNCH_MIN_RUN pages or more, is given back (a hole
** punched again costs nothing).  It is noted as a hole before it is
** punched: a punch that fails may have made a hole. */
static int plan_run(kvm_space *sp, uint64_t s, uint64_t e, void *ctx)
{
    punch_plan *plan = ctx;
    if (run_too_short(sp, s, e))
        return 0;
    uint64_t p = s;
    while (plan->keep && (p = kvm_fm_find(sp->holes, p, e, 0)) < e) {
        uint64_t q = kvm_fm_find(sp->holes, p, e, 1), k = q - p < plan->keep ? q - p : plan->keep;
        plan->keep -= k;
        p += k;
    }
    uint64_t first = kvm_fm_find(sp->holes, p, e, 0);
    if (e - first < PUNCH_MIN_RUN)
        return 0;
    int rc = kvm_fm_set(sp->holes, first, e, 1);
    return rc ? rc : run_push(plan->out, first, e - first);
}

/* Free pages that need no allocation before use: reusable, or in the file
** past hwm, and not noted as holes.  Every page noted is free
** (space_check), so this is a difference of counts. */
uint64_t space_room(kvm_space *sp, uint64_t file_pages)
{
    uint64_t free = kvm_fm_count(sp->fm) + (file_pages > sp->hwm ? file_pages - sp->hwm : 0);
    uint64_t holes = kvm_fm_count(sp->holes);
    return free > holes ? free - holes : 0;
}

/* The runs to give back to the file system after a commit, into *out
** (empty: none).  The reserve -- the free pages that are not holes and
** stay, which the next takes hand out before any hole -- is `keep` pages
** (env_give_back sets it): the free runs too short to punch, wherever they
** are, then the lowest pages of the longer runs.  A pass is due once the
** free pages beyond the reserve that need no allocation (space_room) are
** `step` more than after the last pass (or than since, when reuse lowered
** them): pages freed and reused between two passes never trigger one, and
** a commit pays a few counts for the check.  A pass gives back every free
** run of PUNCH_MIN_RUN pages or more -- reusable pages and the file past
** hwm, up to file_pages -- but for the reserve. */
int space_punch_plan(kvm_space *sp, uint64_t file_pages, uint64_t keep, uint64_t step, u64vec *out)
{
    uint64_t room = space_room(sp, file_pages), excess = room > keep ? room - keep : 0;
    if (excess < sp->punch_base)
        sp->punch_base = excess;
    if (sp->no_punch || excess < sp->punch_base + step)
        return 0;
    uint64_t short_pages = 0;
    int rc = each_free_run(sp, file_pages, count_short, &short_pages);
    punch_plan plan = {keep > short_pages ? keep - short_pages : 0, out};
    if (!rc)
        rc = each_free_run(sp, file_pages, plan_run, &plan);
    room = space_room(sp, file_pages);
    sp->punch_base = room > keep ? room - keep : 0;
    return rc;
}

/* Holes of one take closer together than this are allocated by one call
** over the pages between them.  Those are allocated already: a take hands
** out the holes lowest first, and only once no other reusable page is
** left, then the file past hwm, so a page between two of its holes is in
** use or its own.  On ext4 such a call costs about 1 us where it finds
** nothing to allocate. */
#define REFILL_GAP 64

/* The spans to allocate again before the pages of `taken` (the runs of one
** take) are used: those that may be holes, ascending, into *spans. */
int space_holes_of(kvm_space *sp, const u64vec *taken, u64vec *spans)
{
    if (!kvm_fm_count(sp->holes))
        return 0;
    int rc = 0;
    for (size_t i = 0; i < taken->n && !rc; i += 2) {
        uint64_t end = taken->v[i] + taken->v[i + 1];
        for (uint64_t p = kvm_fm_find(sp->holes, taken->v[i], end, 1); p < end && !rc;) {
            uint64_t q = kvm_fm_find(sp->holes, p, end, 0);
            size_t n = spans->n;
            if (n && p - (spans->v[n - 2] + spans->v[n - 1]) < REFILL_GAP)
                spans->v[n - 1] = q - spans->v[n - 2];
            else
                rc = run_push(spans, p, q - p);
            p = kvm_fm_find(sp->holes, q, end, 1);
        }
    }
    return rc;
}

/* --------------------------------------------------------------- check */

/* Pending runs r lie in [2, hwm), are pending once (seen) and not reusable. */
static int check_pending(kvm_space *sp, kvm_freemap *seen, const u64vec *r, uint64_t *pend)
{
    for (size_t j = 0; j < r->n; j += 2) {
        uint64_t s = r->v[j], n = r->v[j + 1];
        *pend += n;
        if (s < META_PAGES || s + n > sp->hwm)
            return kvm_err(KVM_CORRUPT, "pending run [%llu, +%llu) outside the database", (unsigned long long)s,
                           (unsigned long long)n);
        if (kvm_fm_add(seen, r->v + j, 1))
            return kvm_err(KVM_CORRUPT, "page %llu pending twice", (unsigned long long)s);
        for (uint64_t p = s; p < s + n; p++) {
            uint64_t one[2];
            if (kvm_fm_runs(sp->fm, p, p + 1, one, 1))
                return kvm_err(KVM_CORRUPT, "page %llu is both pending and reusable", (unsigned long long)p);
        }
    }
    return 0;
}

/* A page that may be a hole is reusable or past hwm: a page in use, or
** pending, was allocated before it was taken. */
static int check_holes(kvm_space *sp)
{
    uint64_t buf[256], lo = META_PAGES;
    size_t k;
    while ((k = kvm_fm_runs(sp->holes, lo, sp->hwm, buf, 128)) > 0) {
        for (size_t i = 0; i < k; i++) {
            uint64_t s = buf[2 * i], e = s + buf[2 * i + 1], p = kvm_fm_find(sp->fm, s, e, 0);
            if (p < e)
                return kvm_err(KVM_CORRUPT, "page %llu may be a hole in the file but is not free",
                               (unsigned long long)p);
        }
        lo = buf[2 * (k - 1)] + buf[2 * (k - 1) + 1];
    }
    return 0;
}

/* The invariants of the in-memory free space (for tests): counts agree,
** every run lies in [2, hwm), no pending page is also reusable or pending
** twice, and every page that may be a hole is free. */
int space_check(kvm_space *sp)
{
    uint64_t buf[512], total = 0, lo = 0;
    for (;;) {
        size_t k = kvm_fm_runs(sp->fm, lo, UINT64_MAX >> 2, buf, 256);
        if (!k)
            break;
        for (size_t i = 0; i < k; i++) {
            if (buf[2 * i] < META_PAGES || buf[2 * i] + buf[2 * i + 1] > sp->hwm)
                return kvm_err(KVM_CORRUPT, "reusable run [%llu, +%llu) outside [%u, %llu)",
                               (unsigned long long)buf[2 * i], (unsigned long long)buf[2 * i + 1], META_PAGES,
                               (unsigned long long)sp->hwm);
            total += buf[2 * i + 1];
        }
        lo = buf[2 * (k - 1)] + buf[2 * (k - 1) + 1];
    }
    if (total != kvm_fm_count(sp->fm))
        return kvm_err(KVM_CORRUPT, "reusable count %llu, bitmap holds %llu",
                       (unsigned long long)kvm_fm_count(sp->fm), (unsigned long long)total);
    kvm_freemap *seen = kvm_fm_new();
    if (!seen)
        return kvm_err(KVM_NOMEM, "allocating a check map");
    uint64_t pend = 0;
    int rc = 0;
    for (size_t i = 0; i < sp->npending && !rc; i++) {
        if (i && sp->pending[i].txnid <= sp->pending[i - 1].txnid)
            rc = kvm_err(KVM_CORRUPT, "pending sets out of order");
        if (!rc)
            rc = check_pending(sp, seen, &sp->pending[i].runs, &pend);
        if (!rc)
            rc = check_pending(sp, seen, &sp->pending[i].fresh, &pend);
    }
    kvm_fm_free(seen);
    if (!rc && pend != sp->pending_count)
        rc = kvm_err(KVM_CORRUPT, "pending count %llu, the sets hold %llu",
                     (unsigned long long)sp->pending_count, (unsigned long long)pend);
    return rc ? rc : check_holes(sp);
}
