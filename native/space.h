/*
** space.h -- free space of a writable handle: which pages a write
** transaction may use (space.c, the rules) and how that is stored in the
** file (freelist.c, the page encoding of FORMAT.md §6).
**
** A page below the high-water mark (hwm) that the tree does not use is
** either *reusable* (no snapshot can reach it: it may be written now), in the
** bitmap of freemap.c, or *pending*: freed by commit F and still visible to a
** snapshot older than F, or to the previous meta page, kept per freeing
** commit.  Pages freed by F become reusable for write transaction W once
** F <= W - 2 (the tree of the older meta stays intact for crash recovery)
** and F <= the txnid of every live snapshot (space_release).
**
** Every change a write transaction makes is journaled (take, give, trim),
** so an abort or a failed commit puts the free pages back exactly
** (space_rollback); release is permanent.
*/
#ifndef KVM_SPACE_H
#define KVM_SPACE_H

#include <stddef.h>
#include <stdint.h>

struct kvm_env;
struct kvm_txn;
struct kvm_state;

/* The bitmap of reusable pages (freemap.c); runs are pairs (start, count). */
typedef struct kvm_freemap kvm_freemap;
kvm_freemap *kvm_fm_new(void);
void     kvm_fm_free(kvm_freemap *fm);
uint64_t kvm_fm_count(kvm_freemap *fm);
int      kvm_fm_add(kvm_freemap *fm, const uint64_t *runs, size_t nruns);
int      kvm_fm_remove(kvm_freemap *fm, const uint64_t *runs, size_t nruns);
size_t   kvm_fm_take(kvm_freemap *fm, uint64_t n, uint64_t *runs, size_t cap);
uint64_t kvm_fm_tail(kvm_freemap *fm, uint64_t end);
void     kvm_fm_encode(kvm_freemap *fm, uint64_t first, uint64_t nbits, char *out);
int64_t  kvm_fm_decode(kvm_freemap *fm, uint64_t first, uint64_t nbits, const char *in, uint64_t limit);
size_t   kvm_fm_runs(kvm_freemap *fm, uint64_t lo, uint64_t hi, uint64_t *runs, size_t cap);

/* A growable array of u64 (page numbers, or pairs: runs (start, count),
** index entries (page, txnid)). */
typedef struct u64vec { uint64_t *v; size_t n, cap; } u64vec;
int  vec_reserve(void **v, size_t *cap, size_t n, size_t size);
int  u64_push(u64vec *a, uint64_t x);
int  runs_of(const uint64_t *pages, size_t n, u64vec *runs);     /* sorted, coalesced */
int  run_push(u64vec *runs, uint64_t start, uint64_t count);   /* merges with the last run */
void u64_free(u64vec *a);

typedef struct pending_set {   /* pages freed by one commit, not yet reusable */
    uint64_t txnid;
    u64vec   runs;             /* pairs (start, count) */
} pending_set;

typedef struct record_set {    /* the pending-record pages one commit wrote */
    uint64_t txnid;
    u64vec   pages;
} record_set;

typedef struct pindex_page {   /* a page of the pending-index chain */
    uint64_t pgno;
    u64vec   entries;          /* pairs (record page, txnid) */
    uint64_t maxtxnid;
} pindex_page;

typedef struct journal_ent {
    int      kind;             /* J_TAKE, J_GIVE, J_TRIM */
    u64vec   runs;
    uint64_t old_hwm;
} journal_ent;

/* The on-disk free list a commit prepares, adopted once the commit is done. */
typedef struct freelist_staged {
    u64vec      bitmaps, index;        /* bitmap page per range; the index chain */
    u64vec      records;               /* this commit's pending-record pages */
    pindex_page *pindex;               /* the new pending-index chain, newest first */
    size_t      npindex;
    size_t      nfresh;                /* pindex[0..nfresh) are new pages */
    u64vec      freed_runs;            /* the pages this commit freed */
    uint64_t    freed_count, txnid;
    int         valid;
} freelist_staged;

typedef struct kvm_space {
    uint32_t     psize;
    uint64_t     bits_per_page;        /* pages one bitmap page covers */
    uint64_t     hwm;
    kvm_freemap *fm;                   /* reusable pages */
    pending_set *pending;              /* ascending txnid */
    size_t       npending, pending_cap;
    uint64_t     pending_count;
    /* the on-disk free list as the last commit left it (freelist.c) */
    u64vec       bitmap_pages;         /* bitmap page per range, 0: none */
    u64vec       index_pages;          /* the bitmap-index chain */
    record_set  *records;              /* ascending txnid */
    size_t       nrecords, records_cap;
    pindex_page *pindex;               /* newest first */
    size_t       npindex;
    uint64_t     floor;                /* pending records of commits <= floor are void */
    u64vec       stale;                /* record pages of released commits: freed next commit */
    uint8_t     *dirty;                /* per bitmap range: changed since the last commit */
    size_t       dirty_cap;
    journal_ent *journal;
    size_t       njournal, journal_cap;
    freelist_staged staged;
} kvm_space;

#define J_TAKE 1
#define J_GIVE 2
#define J_TRIM 3

/* space.c: the rules */
int      space_new(kvm_space **out, uint32_t psize, uint64_t hwm);
void     space_free(kvm_space *sp);
uint64_t space_free_count(const kvm_space *sp);
int      space_release(kvm_space *sp, uint64_t upto, u64vec *released);
void     space_begin(kvm_space *sp);
int      space_take(kvm_space *sp, uint64_t n, u64vec *runs);
int      space_undo_take(kvm_space *sp);
int      space_give(kvm_space *sp, const uint64_t *pages, size_t n);
int      space_trim_tail(kvm_space *sp);
void     space_rollback(kvm_space *sp);
int      space_add(kvm_space *sp, const uint64_t *runs, size_t nruns);
int      space_mark(kvm_space *sp, const uint64_t *runs, size_t nruns);
int      space_check(kvm_space *sp);

/* freelist.c: the encoding (FORMAT.md §6) */
int  freelist_load(struct kvm_env *e, kvm_space *sp, const struct kvm_state *s);
int  freelist_prepare(struct kvm_txn *t, kvm_space *sp, struct kvm_state *s);
void freelist_adopt(kvm_space *sp);
void freelist_staged_clear(freelist_staged *st);

#endif
