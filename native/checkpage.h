/*
** checkpage.h -- kvmap-check's byte work in C (checkpage.c): its interface
** to the checker's Python (kvmap/checker/), which decides which pages to
** read and words every problem; these functions read pages, vet them and
** say what they found, as codes.
**
** The layout is written down here a second time, apart from format.h, so
** that the checker stays an independent reader of docs/FORMAT.md (a mistake
** in the engine's layout cannot hide itself); tests/test_format_constants.py
** holds the two to each other.
**
** The text between the cdef markers is parsed by cffi (native/build_kvmap.py).
*/
#ifndef CHECKPAGE_H
#define CHECKPAGE_H
#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
/* The page header (FORMAT.md §3) and the cells of branch and leaf pages. */
#define CKP_PH_SIZE       32
#define CKP_PH_CHECKSUM    0
#define CKP_PH_TYPE        4
#define CKP_PH_NKEYS       6
#define CKP_PH_TXNID       8
#define CKP_PH_PGNO       16
#define CKP_PH_UPPER      24   /* branch, leaf: where the cells start */
#define CKP_PH_NEXT       24   /* overflow: the next page of the chain */
#define CKP_LEAF_HDR       6   /* u16 klen, u32 vlen, key, value or u64 overflow page */
#define CKP_BRANCH_HDR    10   /* u16 klen, u64 child, key */
#define CKP_PT_BRANCH      1
#define CKP_PT_LEAF        2
#define CKP_PT_OVERFLOW    3
#define CKP_META_PAGES     3   /* pages below this are meta pages */

/* A page's verdict: what is wrong with it before its cells, in the order
** the check tests it (the first that applies). */
#define CKP_PAGE_OK        0
#define CKP_PAGE_SHORT     1   /* fewer bytes than it needs could be read */
#define CKP_PAGE_MISPLACED 2   /* its header names another page number */
#define CKP_PAGE_TYPE      3   /* a type other than the ones expected */
#define CKP_PAGE_NEWER     4   /* written by a transaction after the meta's */
#define CKP_PAGE_DEPTH     5   /* a branch where a leaf belongs, or the reverse */
#define CKP_PAGE_COUNTS    6   /* nkeys and upper disagree, or a branch without cells */

/* What the cells of a branch or leaf page show, one event each, in cell
** order; the order events (first occurrence, and how many) close the list. */
#define CKP_CELL_OFFSET    1   /* the cell's offset lies outside [upper, page_size - cell head] */
#define CKP_KEY_PAST_END   2   /* the key runs past the page end */
#define CKP_CELL_PAST_END  3   /* leaf: the value, or the overflow page number, runs past the end */
#define CKP_KEY_LENGTH     4   /* leaf: a key length outside [1, max_key] */
#define CKP_OVERFLOW       5   /* leaf: a value in overflow pages (no problem: a chain to follow) */
#define CKP_FIRST_KEY      6   /* branch: cell 0 has a key */
#define CKP_KEY_ORDER      7   /* a key not greater than the cell's before it */
#define CKP_KEY_RANGE      8   /* a key outside the range its ancestors set */

/* How an overflow chain ends (ckp_overflow_chain). */
#define CKP_CHAIN_WHOLE    0   /* as long as its value needs, the last page's next 0 */
#define CKP_CHAIN_RANGE    1   /* a page number outside [2, npages) */
#define CKP_CHAIN_TAKEN    2   /* a page that has an owner already */
#define CKP_CHAIN_PAGE     3   /* a page whose header fails (verdict) */
#define CKP_CHAIN_LONG     4   /* the last page names a next page */
#define CKP_CHAIN_CUT      5   /* a page before the last has next 0 */

/* Where a scan of a free-space bitmap stops (ckp_bitmap_claims). */
#define CKP_BITS_END       0   /* at the end of the body */
#define CKP_BITS_OUTSIDE   1   /* at a bit for a page outside [2, hwm) */
#define CKP_BITS_TAKEN     2   /* at a bit for a page that has an owner */

/* What a page's checksum state is (a byte per page, ckp_checksums). */
#define CKP_SUM_UNKNOWN    0
#define CKP_SUM_HOLDS      1
#define CKP_SUM_FAILS      2

/* The facts of one check that the page rules need. */
typedef struct {
    uint32_t page_size;
    uint32_t max_key;         /* the longest key of a leaf cell */
    uint32_t max_cell;        /* a value is inline iff 8 + klen + vlen <= max_cell */
    uint64_t npages;          /* pages [2, npages) can be read: below the hwm, in the file */
    uint64_t txnid;           /* a page written by a later transaction is newer than the meta */
    int      checksums;       /* verify the checksum of every branch and leaf page read */
    int      every_key;       /* salvage's rules: key length and order over every cell whose key lies
                                 within the page (a leaf cell whose value runs past it too), and a
                                 branch's cell 1 after cell 0's empty key */
} ckp_geometry;

/* One branch or leaf page, checked. */
typedef struct {
    int32_t  verdict;         /* CKP_PAGE_*; the cells are checked only when it is OK */
    int32_t  checksum;        /* -1 not computed (or not read whole), 0 fails, 1 holds */
    uint32_t nkeys, upper;    /* from its header */
    uint32_t entries;         /* leaf: the cells that lie within the page */
    uint32_t first_event;     /* its events: events[first_event, first_event + nevents) */
    uint32_t nevents;
    uint32_t cell;            /* ckp_leaves: the branch cell that points to the leaf */
    int32_t  next_cell;       /* ckp_leaves: the next sound cell, whose key bounds the leaf (-1: the
                                 branch's own upper bound) */
    uint64_t used;            /* leaf: the bytes of those cells and of all cell offsets */
    uint64_t pgno;            /* ckp_leaves: the leaf's page */
} ckp_page;

typedef struct {
    uint32_t kind;            /* CKP_CELL_OFFSET ... CKP_KEY_RANGE */
    uint32_t cell;            /* ORDER, RANGE: the first cell that breaks the rule */
    uint32_t offset;          /* the cell's offset; ORDER, RANGE: the key's */
    uint32_t prev, prev_length;   /* ORDER: the key before it (offset, length) */
    uint32_t count;           /* ORDER, RANGE: how many cells break the rule */
    uint64_t length;          /* the key's length; CELL_PAST_END: the cell's; OVERFLOW: the value's */
    uint64_t page;            /* OVERFLOW: the first page of the chain */
} ckp_event;

/* A cell of a page, for a caller that reads its keys and values. */
typedef struct {
    uint32_t status;          /* 0, or the event that rules the cell out (CELL_OFFSET, KEY_PAST_END:
                                 no key; CELL_PAST_END: the key only) */
    uint32_t key, key_length;
    uint32_t value;           /* leaf: an inline value's offset (0: the value is in overflow pages) */
    uint32_t value_length;    /* leaf: the value's length */
    uint64_t page;            /* branch: the child; leaf: the first overflow page, 0 for an inline value */
} ckp_cell;

/* Where an overflow chain ends. */
typedef struct {
    int32_t  end;             /* CKP_CHAIN_* */
    int32_t  verdict;         /* CHAIN_PAGE: the page's */
    uint32_t piece;           /* the piece (0: the first page) where it ends */
    uint64_t page;            /* that piece's page */
    uint64_t next;            /* CHAIN_LONG: the next page the last one names */
    uint8_t  header[32];      /* CHAIN_PAGE: the page's header */
} ckp_chain;

/* The most events one page can give: two per cell and the two order events. */
size_t   ckp_max_events(uint32_t page_size);

/* The verdict on the header of page pgno in buf (got bytes read, need
** wanted), for a page of one of the types whose bits are set in types. */
int      ckp_header_verdict(const ckp_geometry *g, uint64_t pgno, const uint8_t *buf, size_t got,
                            size_t need, unsigned types);

/* Check branch or leaf page pgno in buf (got bytes read): a leaf if leaf,
** else a branch; its keys within [lo, hi) (a length of -1: no bound).  The
** verdict and counts go to *page, the events to events (room for
** ckp_max_events), the cells, unless cells is NULL, to cells (room for
** (page_size - 32) / 2).  0, or -ENOBUFS when event_cap is too small. */
int      ckp_tree_page(const ckp_geometry *g, uint64_t pgno, const uint8_t *buf, size_t got, int leaf,
                       const uint8_t *lo, int64_t lo_length, const uint8_t *hi, int64_t hi_length,
                       ckp_page *page, ckp_event *events, size_t event_cap, ckp_cell *cells);

/* Read and check the leaves that the sound cells of a bottom branch point
** to, from cell `from` on: the branch's bytes and cells (from its
** ckp_tree_page), its bounds lo and hi.  Leaf k of the call goes to
** buf + k * page_size and out[k], at most n of them, and as many as the
** events fit (all their events in events); full mode records each checksum
** in sums[page] (CKP_SUM_*).  The leaves done (0: no sound cell left), or
** -errno. */
int64_t  ckp_leaves(int fd, const ckp_geometry *g, const uint8_t *branch, const ckp_cell *cells, uint32_t nkeys,
                    uint32_t from, const uint8_t *lo, int64_t lo_length, const uint8_t *hi, int64_t hi_length,
                    size_t n, uint8_t *buf, ckp_page *out, ckp_event *events, size_t event_cap,
                    uint8_t *sums);

/* Follow the overflow chain of `pieces` pages from page first, claiming
** each page for code in owner (a byte per page, npages of them) and reading
** its header, until it ends (*out).  0 or -errno. */
int      ckp_overflow_chain(int fd, const ckp_geometry *g, uint64_t first, uint64_t pieces,
                            uint8_t *owner, uint8_t code, ckp_chain *out);

/* Claim pages [start, start + count) for code in owner, marking each in
** freed, at most `most` of them: how many, up to the first that has an owner
** (marked in freed, not claimed).  The caller keeps the run below npages. */
uint64_t ckp_claim_run(uint8_t *owner, uint8_t *freed, uint64_t start, uint64_t count, uint8_t code,
                       uint64_t most);

/* The set bits of a free-space bitmap page's body (len bytes; bit b stands
** for page first + b) from bit *bit: a page in [2, hwm) is counted, and
** below npages claimed for code in owner and marked in freed; it stops at
** a bit the caller reports (CKP_BITS_OUTSIDE, CKP_BITS_TAKEN: counted),
** leaving it in *bit, or at the end.  *counted: the bits counted. */
int      ckp_bitmap_claims(const uint8_t *body, size_t len, uint64_t first, uint64_t hwm, uint64_t npages,
                           uint8_t *owner, uint8_t *freed, uint8_t code, uint64_t *bit, uint64_t *counted);

/* Verify the checksums of the pages in [from, to) that want marks and sums
** does not know yet (CKP_SUM_UNKNOWN), into sums, reading runs of them into
** buf (buf_pages pages).  A page past the end of the file stays unknown.
** 0 or -errno. */
int      ckp_checksums(int fd, uint32_t page_size, const uint8_t *want, uint8_t *sums, uint64_t from,
                       uint64_t to, uint8_t *buf, size_t buf_pages);
/* cdef-end */

#endif
