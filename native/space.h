/*
** space.h -- free space of a writable handle: which pages a write
** transaction may use (space.c, the rules) and how that is stored in the
** file (freelist.c, the page encoding of FORMAT.md §6).
**
** A page below the high-water mark (hwm) that the tree does not use is
** either *reusable* (no snapshot can reach it: it may be written now), in the
** bitmap of freemap.c, or *pending*: freed by commit F and still visible to a
** snapshot older than F, or to a meta that open may fall back to, kept per
** freeing commit.  A page written by commit C and freed by commit F is part
** of the states C .. F-1: it becomes reusable once no live snapshot and not
** the newest commit known durable D (the meta open falls back to; the
** commits after it open verifies against their records) lies in [C, F)
** (FORMAT.md §7).  space_release applies that to whole sets (F <= D and
** F <= every snapshot; and the pages written after D, `fresh`, once F <=
** every snapshot); space_reclaim page by page, reading C from the page's
** header, only where the writer would otherwise grow the file.  Pages
** released while their freeing commit's record is live are listed as
** released early in the next commit's record; records piled up behind an
** old snapshot are voided with their pending pages listed again as freed
** by the next commit (records_carry).
**
** Every change a write transaction makes is journaled (take, give, trim),
** so an abort or a failed commit puts the free pages back exactly
** (space_rollback); release is permanent.
**
** Giving disk back (docs/ARCHITECTURE.md §4): after a commit, when enough
** free pages piled up beyond a reserve kept for reuse, long free runs are
** punched out of the file (map.c sizes the reserve and punches,
** space_punch_plan chooses the runs).  A
** page that may be a hole is in `holes`; takes hand such pages out only
** once no other reusable page is left, and the taker allocates them again
** before anything writes them (env_take), so a full disk is an error
** there, never a SIGBUS from a store into a writable map.  `holes` holds
** the pages this handle punched and, from the moment it loaded the free
** space, every reusable page and every page past hwm: another process may
** have punched any of them.  Nothing is lost by not knowing more: punching
** happens only after a commit is published, so a handle whose free space
** is current (no other handle committed since it was loaded or made) has
** seen every punch since, its own.  The set is not journaled: a page
** leaves it only once allocated, which no abort undoes.
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
size_t   kvm_fm_take_but(kvm_freemap *fm, const kvm_freemap *but, uint64_t n, uint64_t *runs, size_t cap,
                         uint64_t *from);
uint64_t kvm_fm_tail(kvm_freemap *fm, uint64_t end);
void     kvm_fm_encode(kvm_freemap *fm, uint64_t first, uint64_t nbits, char *out);
int64_t  kvm_fm_decode(kvm_freemap *fm, uint64_t first, uint64_t nbits, const char *in, uint64_t limit);
size_t   kvm_fm_runs(kvm_freemap *fm, uint64_t lo, uint64_t hi, uint64_t *runs, size_t cap);
int      kvm_fm_set(kvm_freemap *fm, uint64_t lo, uint64_t hi, int on);
uint64_t kvm_fm_find(kvm_freemap *fm, uint64_t lo, uint64_t hi, int on);

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
    u64vec   runs;             /* pairs (start, count): reusable once txnid is durable */
    u64vec   fresh;            /* pages written since the flush `base`: reusable early */
    uint64_t base;
    int      classified;       /* fresh holds every page written after base (runs: none) */
    /* precise reclamation (space_reclaim): the commit that wrote each page,
    ** read once from its header, and what the set was last judged against */
    u64vec   writers;          /* pairs (page, writing commit; 0: unknown), by page */
    int      writers_known;
    uint64_t judged_gen;       /* kvm_space.snap_gen then; 0: never judged */
    uint64_t judged_durable;   /* the durable commit then */
    uint64_t held_by_durable;  /* pages then kept only for the durable commit */
} pending_set;

typedef struct record_set {    /* the record pages of one commit (FORMAT.md §6) */
    uint64_t txnid;
    u64vec   pages;            /* the first page first */
} record_set;

typedef struct journal_ent {
    int      kind;             /* J_TAKE, J_GIVE, J_TRIM */
    u64vec   runs;
    uint64_t old_hwm;
} journal_ent;

/* The free-space pages a commit prepares, adopted once the commit is done. */
typedef struct freelist_staged {
    u64vec      bitmaps;               /* bitmap page per range, after this commit */
    u64vec      index;                 /* the new bitmap-index chain; empty: the old one stays */
    u64vec      overrides;             /* pairs (range, bitmap page) the record carries */
    u64vec      records;               /* this commit's record pages */
    u64vec      freed_runs;            /* the pages this commit freed */
    u64vec      freed_fresh;           /* those of them written since the last flush */
    u64vec      freed_old;             /* and the others */
    uint64_t    base;                  /* the flush freed_fresh is relative to */
    int         classified;            /* freed_old holds no page written after base */
    u64vec      released;              /* runs the record lists as released early */
    uint64_t    freed_count, txnid;
    uint64_t    nwritten;              /* pages the record lists */
    uint32_t    flags;                 /* R_FLAGS_* of the record */
    int         valid;
    struct kvm_env *env;               /* the committing handle: adopt gives its file back free runs */
} freelist_staged;

/* A commit record read back from the file (freelist.c). */
typedef struct kvm_record {
    uint64_t txnid, prev;
    uint32_t nwritten, nfreed, nreleased, noverride, flags;
    uint8_t *body;                     /* the entries: written, freed, released, overrides */
    size_t   len;
    u64vec   pages;                    /* the record's own pages */
} kvm_record;

#define RECORD_OVERRIDES_MAX 32        /* beyond: rewrite the bitmap index */

typedef struct kvm_space {
    uint32_t     psize;
    uint64_t     bits_per_page;        /* pages one bitmap page covers */
    uint64_t     hwm;
    kvm_freemap *fm;                   /* reusable pages */
    pending_set *pending;              /* ascending txnid */
    size_t       npending, pending_cap;
    uint64_t     pending_count;
    /* the free space on disk as the last commit left it (freelist.c) */
    u64vec       bitmap_pages;         /* bitmap page per range, 0: none */
    u64vec       index_pages;          /* the bitmap-index chain */
    u64vec       overrides;            /* pairs (range, page): bitmaps moved since the index */
    record_set  *records;              /* every commit above floor, ascending txnid */
    size_t       nrecords, records_cap;
    uint64_t     last_record;          /* first page of the newest commit's record, 0: none */
    uint64_t     floor;                /* commits <= floor are released */
    u64vec       stale;                /* record pages of released commits: freed next commit */
    u64vec       early;                /* runs released early, for the next commit's record */
    u64vec       carried;              /* pending runs of voided records: freed again by the next commit */
    u64vec       snap_set;             /* the live snapshots space_reclaim judged against last */
    uint64_t     snap_gen;             /* bumped when snap_set changes */
    uint64_t     judged_upto;          /* every set up to this commit judged against snap_gen */
    uint64_t     judged_gen, judged_durable;   /* ... and this durable commit */
    kvm_freemap *fresh;                /* pages written by commits after the flush fresh_base */
    uint64_t     fresh_base;
    uint8_t     *dirty;                /* per bitmap range: changed since the last commit */
    size_t       dirty_cap;
    journal_ent *journal;
    size_t       njournal, journal_cap;
    freelist_staged staged;
    kvm_freemap *holes;                /* free pages that may be holes in the file */
    uint64_t     punch_base;           /* space_room beyond the reserve after the last punch pass */
    uint64_t     taken;                /* pages the write transaction took and kept */
    uint64_t     taken_recent[8];      /* the same of each of the last commits, a ring */
    unsigned     taken_next;
    uint64_t     solid_hint;           /* no reusable page but holes in bitmap words below this */
    int          no_punch;             /* the file system cannot punch holes */
} kvm_space;

#define J_TAKE 1
#define J_GIVE 2
#define J_TRIM 3

/* space.c: the rules */
int      space_new(kvm_space **out, uint32_t psize, uint64_t hwm);
void     space_free(kvm_space *sp);
uint64_t space_free_count(const kvm_space *sp);
int      space_release(kvm_space *sp, uint64_t upto, uint64_t durable, uint64_t base, u64vec *released);
int      space_written(kvm_space *sp, uint64_t base, const uint64_t *pages, size_t n, uint64_t *added);
void     space_held(const kvm_space *sp, uint64_t durable, uint64_t upto, uint64_t *pending, uint64_t *records);
typedef int (*page_writer_fn)(void *ctx, uint64_t pg, uint64_t *writer);
int      space_reclaim(kvm_space *sp, const u64vec *snaps, uint64_t durable, page_writer_fn writer_of, void *ctx,
                       u64vec *released);
uint64_t space_held_by_durable(const kvm_space *sp, uint64_t durable, uint64_t upto);
void     space_begin(kvm_space *sp);
int      space_take(kvm_space *sp, uint64_t n, u64vec *runs);
int      space_undo_take(kvm_space *sp);
int      space_give(kvm_space *sp, const uint64_t *pages, size_t n);
int      space_trim_tail(kvm_space *sp);
void     space_rollback(kvm_space *sp);
int      space_add(kvm_space *sp, const uint64_t *runs, size_t nruns);
int      space_mark(kvm_space *sp, const uint64_t *runs, size_t nruns);
int      space_check(kvm_space *sp);
int      space_holes_load(kvm_space *sp, uint64_t file_pages);
uint64_t space_room(kvm_space *sp, uint64_t file_pages);
int      space_punch_plan(kvm_space *sp, uint64_t file_pages, uint64_t keep, uint64_t step, u64vec *runs);
int      space_holes_of(kvm_space *sp, const u64vec *taken, u64vec *spans);

/* freelist.c: the encoding (FORMAT.md §6) */
int  freelist_load(struct kvm_env *e, kvm_space *sp, const struct kvm_state *s);
int  freelist_prepare(struct kvm_txn *t, kvm_space *sp, struct kvm_state *s, size_t nwritten, int pages_durable);
void freelist_adopt(kvm_space *sp);
void freelist_staged_clear(freelist_staged *st);
int  record_read(struct kvm_env *e, uint64_t pg, uint64_t txnid, uint64_t hwm, kvm_freemap *seen, kvm_record *r);
void record_free(kvm_record *r);
int  records_verify(struct kvm_env *e, const struct kvm_state *s);
int  records_pages_needed(struct kvm_env *e, const struct kvm_state *s, uint64_t *need);
int  records_pending(struct kvm_env *e, const struct kvm_state *s, uint64_t stop, uint64_t *pages);
int  records_written(struct kvm_env *e, const struct kvm_state *s, uint64_t stop,
                     void (*fn)(struct kvm_env *e, uint64_t pg));

#endif
