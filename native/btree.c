/*
** btree.c -- the copy-on-write B+tree: get, put, delete, cursors.
**
** Design and invariants
**  1. Keys are strictly increasing within a page and across siblings; branch
**     cell i (i >= 1) holds the smallest key of child i's subtree, cell 0's
**     key is empty and stands for minus infinity.  All leaves are at depth
**     t->depth.
**  2. Copy-on-write: a committed page is never modified.  Before a change the
**     whole root-to-leaf path is copied (pg_write) into pages of this
**     transaction; the old page numbers go to the freed list.  Pages born in
**     this transaction are modified in place.
**  3. Every page holds at least four cells (max_cell = usable / 4), so a
**     split always succeeds and both halves fit.  A full leaf first shares
**     its cells with its neighbours (spread), so that random-order inserts
**     leave leaves about 87% full, not two thirds.  Deletes rebalance: a
**     page under a quarter full merges with a sibling, or takes cells from
**     it.
**  4. Trust: a page read from the file is checked before use.  Read paths
**     check each cell they touch; a page copied for modification is checked
**     cell by cell (bounds and key order) once, after which this transaction
**     owns its contents.  Damage is reported as KVM_CORRUPT, never a fault.
**  5. One C call per operation.  An operation first fills the page pool
**     with its worst case of pages (txn_pool_ensure, before anything
**     changes), so running out of pages never leaves a half-done change.
*/
#include "internal.h"
#include <stdlib.h>

typedef struct path_t {
    int      depth;
    pgno_t   pg[KVM_MAX_DEPTH];
    unsigned idx[KVM_MAX_DEPTH];
    uint8_t *ptr[KVM_MAX_DEPTH];   /* the page, once this transaction owns it */
    uint8_t  own[KVM_MAX_DEPTH];
} path_t;

typedef struct cellref {
    const uint8_t *data;
    unsigned       size;
} cellref;

typedef struct lcell {
    const uint8_t *key;
    unsigned       klen;
    uint32_t       vlen;
    int            inl;
    const uint8_t *val;   /* inline value */
    pgno_t         ov;    /* first overflow page */
} lcell;

#define SCR_A    0   /* copy of a page being split or merged */
#define SCR_B    1   /* copy of its sibling (spread_split: the left one) */
#define SCR_SEP  2   /* separator key / substituted branch cell */
#define SCR_CELL 3   /* the cell being inserted */
#define SCR_PACK 4   /* compaction; spread_split: copy of the right sibling */

#define DROP_VALUE (8u << 20)   /* values at least this large: drop their pages once read */
#define DROP_RUN   1024         /* pages per madvise at most */

static inline uint8_t *scratch(kvm_txn *t, int i) { return t->scratch + (size_t)i * t->env->psize; }
static inline unsigned nkeys(const uint8_t *p) { return rd16(p + PH_NKEYS); }
static inline unsigned cptr(const uint8_t *p, unsigned i) { return rd16(p + PH_SIZE + 2 * i); }
static inline unsigned usable(const kvm_env *e) { return e->psize - PH_SIZE; }
static inline uint32_t ov_payload(const kvm_env *e) { return e->psize - PH_SIZE; }

static inline int leaf_inline(const kvm_env *e, size_t klen, size_t vlen)
{
    return 2 + LEAF_HDR + klen + vlen <= e->max_cell;
}

/* The first 8 bytes of a key as a big-endian number: compared as numbers,
** they order as memcmp orders them. */
static inline uint64_t key_head(const uint8_t *k)
{
    uint64_t v;
    memcpy(&v, k, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Byte order of two keys.  Most comparisons of a search end in the first 8
** bytes, so those are compared inline, not through a call of memcmp: a
** lookup makes a dozen or more comparisons. */
static inline int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t n = al < bl ? al : bl, skip = 0;
    if (n >= 8) {
        uint64_t x = key_head(a), y = key_head(b);
        if (x != y)
            return x < y ? -1 : 1;
        skip = 8;
    }
    int c = memcmp(a + skip, b + skip, n - skip);
    return c ? c : (al > bl) - (al < bl);
}

static int corrupt_cell(pgno_t pg, unsigned i)
{
    return kvm_err(KVM_CORRUPT, "page %llu: cell %u out of bounds", (unsigned long long)pg, i);
}

/* Size of cell i of a page this transaction owns (already checked). */
static unsigned cell_size(const kvm_env *e, const uint8_t *p, unsigned i)
{
    const uint8_t *c = p + cptr(p, i);
    unsigned klen = rd16(c);
    if (p[PH_TYPE] == PT_BRANCH)
        return BRANCH_HDR + klen;
    uint32_t vlen = rd32(c + 2);
    return LEAF_HDR + klen + (leaf_inline(e, klen, vlen) ? vlen : 8);
}

/* Checked decoding of one cell of any tree page: offset and size in bounds. */
static int cell_span(kvm_txn *t, const uint8_t *p, pgno_t pg, unsigned i, unsigned *size)
{
    const kvm_env *e = t->env;
    unsigned n = nkeys(p), off = cptr(p, i);
    if (off < PH_SIZE + 2 * n || off + (p[PH_TYPE] == PT_BRANCH ? BRANCH_HDR : LEAF_HDR) > e->psize)
        return corrupt_cell(pg, i);
    unsigned klen = rd16(p + off);
    uint64_t sz;
    if (p[PH_TYPE] == PT_BRANCH)
        sz = BRANCH_HDR + (uint64_t)klen;
    else {
        uint32_t vlen = rd32(p + off + 2);
        sz = LEAF_HDR + (uint64_t)klen + (leaf_inline(e, klen, vlen) ? vlen : 8);
    }
    if (off + sz > e->psize || klen > e->max_key)
        return corrupt_cell(pg, i);
    if (klen == 0 && p[PH_TYPE] != PT_BRANCH)   /* a branch's cell 0 stands for minus infinity */
        return kvm_err(KVM_CORRUPT, "page %llu: cell %u: a leaf cell with an empty key", (unsigned long long)pg, i);
    *size = (unsigned)sz;
    return 0;
}

static int leaf_cell(kvm_txn *t, const uint8_t *p, pgno_t pg, unsigned i, lcell *c)
{
    unsigned size;
    int rc = cell_span(t, p, pg, i, &size);
    if (rc)
        return rc;
    const uint8_t *q = p + cptr(p, i);
    c->klen = rd16(q);
    c->vlen = rd32(q + 2);
    c->key = q + LEAF_HDR;
    c->inl = leaf_inline(t->env, c->klen, c->vlen);
    c->val = c->key + c->klen;
    c->ov = c->inl ? 0 : rd64(c->val);
    return 0;
}

/* Key of cell i (branch or leaf), checked. */
static int cell_key(kvm_txn *t, const uint8_t *p, pgno_t pg, unsigned i, const uint8_t **key, unsigned *klen)
{
    const kvm_env *e = t->env;
    unsigned off = cptr(p, i), hdr = p[PH_TYPE] == PT_BRANCH ? BRANCH_HDR : LEAF_HDR;
    if (off + hdr > e->psize)
        return corrupt_cell(pg, i);
    unsigned kl = rd16(p + off);
    if (off + hdr + kl > e->psize)
        return corrupt_cell(pg, i);
    *key = p + off + hdr;
    *klen = kl;
    return 0;
}

static int branch_child(kvm_txn *t, const uint8_t *p, pgno_t pg, unsigned i, pgno_t *child)
{
    unsigned off = cptr(p, i);
    if (i >= nkeys(p) || off + BRANCH_HDR > t->env->psize)
        return corrupt_cell(pg, i);
    *child = rd64(p + off + 2);
    return 0;
}

/* Full check of a page before this transaction modifies it. */
static int node_validate(kvm_txn *t, const uint8_t *p, pgno_t pg, int type)
{
    int rc = pg_check_node(t, p, pg, type);
    if (rc)
        return rc;
    unsigned n = nkeys(p), size;
    uint64_t used = 0;
    const uint8_t *prev = NULL;
    unsigned prevlen = 0;
    for (unsigned i = 0; i < n; i++) {
        if ((rc = cell_span(t, p, pg, i, &size)))
            return rc;
        used += size + 2;
        const uint8_t *k;
        unsigned kl;
        cell_key(t, p, pg, i, &k, &kl);
        if (type == PT_BRANCH && i == 0) {
            if (kl != 0)
                return kvm_err(KVM_CORRUPT, "page %llu: first branch cell has a key", (unsigned long long)pg);
            continue;
        }
        if (prev && keycmp(prev, prevlen, k, kl) >= 0)
            return kvm_err(KVM_CORRUPT, "page %llu: keys out of order at cell %u", (unsigned long long)pg, i);
        prev = k;
        prevlen = kl;
    }
    if (used > usable(t->env))
        return kvm_err(KVM_CORRUPT, "page %llu: cells overlap", (unsigned long long)pg);
    return 0;
}

/* ------------------------------------------------------------- searching */

/* One step of a binary search for the first index in [*lo, *hi) whose key
** is > key (strict) or >= key: compares the middle cell and halves the
** range.  search() runs the steps in a row; lookup_group() interleaves the
** steps of several searches. */
static inline int search_step(kvm_txn *t, const uint8_t *p, pgno_t pg, const uint8_t *key, size_t klen,
                              int strict, unsigned *lo, unsigned *hi)
{
    unsigned mid = (*lo + *hi) / 2;
    const uint8_t *k = NULL;
    unsigned kl = 0;
    int rc = cell_key(t, p, pg, mid, &k, &kl);
    if (rc)
        return rc;
    if (keycmp(k, kl, key, klen) < strict)
        *lo = mid + 1;
    else
        *hi = mid;
    return 0;
}

/* First index in [lo, n) whose key is > key (strict) or >= key. */
static int search(kvm_txn *t, const uint8_t *p, pgno_t pg, unsigned lo, const uint8_t *key, size_t klen,
                  int strict, unsigned *idx)
{
    unsigned hi = nkeys(p);
    int rc = 0;
    while (lo < hi && !(rc = search_step(t, p, pg, key, klen, strict, &lo, &hi)))
        ;
    *idx = lo;
    return rc;
}

/* Whether cell idx of a leaf, the first whose key is >= key, holds key. */
static int leaf_found(kvm_txn *t, const uint8_t *p, pgno_t pg, const uint8_t *key, size_t klen,
                      unsigned idx, int *found)
{
    *found = 0;
    if (idx >= nkeys(p))
        return 0;
    const uint8_t *k = NULL;
    unsigned kl = 0;
    int rc = cell_key(t, p, pg, idx, &k, &kl);
    if (!rc)
        *found = keycmp(k, kl, key, klen) == 0;
    return rc;
}

/* First index whose key is >= key; *found if equal. */
static int leaf_search(kvm_txn *t, const uint8_t *p, pgno_t pg, const uint8_t *key, size_t klen,
                       unsigned *idx, int *found)
{
    int rc = search(t, p, pg, 0, key, klen, 0, idx);
    *found = 0;
    return rc ? rc : leaf_found(t, p, pg, key, klen, *idx, found);
}

/* Index of the child whose subtree holds key: the last cell whose key is
** <= key (cell 0 stands for minus infinity). */
static int branch_search(kvm_txn *t, const uint8_t *p, pgno_t pg, const uint8_t *key, size_t klen, unsigned *idx)
{
    int rc = search(t, p, pg, 1, key, klen, 1, idx);
    *idx -= 1;
    return rc;
}

/* Ask the CPU for every line of a page about to be searched: a binary
** search touches a handful of lines spread over the page, one after the
** other; fetched together, their misses overlap.  (A descent of a tree of
** 200,000 entries, larger than the L2 cache, went from about 690 to 580 ns.) */
static inline void prefetch_page(const kvm_env *e, const uint8_t *p)
{
    for (unsigned off = 0; off < e->psize; off += 64)
        __builtin_prefetch(p + off);
}

static int node_read(kvm_txn *t, pgno_t pg, int type, const uint8_t **p)
{
    int rc = pg_read(t, pg, p);
    return rc ? rc : pg_check_node(t, *p, pg, type);
}

static inline int level_type(uint32_t depth, int level) { return level + 1 < (int)depth ? PT_BRANCH : PT_LEAF; }

static int descend(kvm_txn *t, const uint8_t *key, size_t klen, path_t *ph, int *found)
{
    pgno_t pg = t->root;
    ph->depth = (int)t->depth;
    for (int l = 0; l < ph->depth; l++) {
        const uint8_t *p;
        int own;
        int rc = pg_read_own(t, pg, &p, &own);
        if (rc)
            return rc;
        prefetch_page(t->env, p);
        if ((rc = pg_check_node(t, p, pg, level_type(t->depth, l))))
            return rc;
        ph->pg[l] = pg;
        ph->own[l] = own == PAGE_WRITABLE;
        ph->ptr[l] = (uint8_t *)p;
        if (l + 1 < ph->depth) {
            if ((rc = branch_search(t, p, pg, key, klen, &ph->idx[l])) ||
                (rc = branch_child(t, p, pg, ph->idx[l], &pg)))
                return rc;
        } else if ((rc = leaf_search(t, p, pg, key, klen, &ph->idx[l], found)))
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- values */

/* Copy a value into out (cap bytes); returns its length, copied iff <= cap. */
static int64_t value_copy(kvm_txn *t, const lcell *c, uint8_t *out, size_t cap)
{
    if (c->vlen > cap)
        return c->vlen;
    if (c->inl) {
        memcpy(out, c->val, c->vlen);
        return c->vlen;
    }
    const kvm_env *e = t->env;
    uint32_t pay = ov_payload(e);
    uint64_t left = c->vlen, pages = (left + pay - 1) / pay;
    pgno_t pg = c->ov;
    /* A large value's pages leave the process once copied, in runs, so that
    ** reading it costs about one copy of memory, not two (pg_drop). */
    int drop = c->vlen >= DROP_VALUE;
    pgno_t run = pg, run_end = pg;
    for (uint64_t i = 0; i < pages; i++) {
        const uint8_t *p;
        if (drop && (pg != run_end || run_end - run >= DROP_RUN)) {
            pg_drop(t, run, run_end - run);
            run = run_end = pg;
        }
        int rc = pg_read(t, pg, &p);
        if (rc)
            return rc;
        if (p[PH_TYPE] != PT_OVERFLOW || rd64(p + PH_PGNO) != pg || rd64(p + PH_TXNID) > t->txnid)
            return kvm_err(KVM_CORRUPT, "page %llu: not an overflow page of this value", (unsigned long long)pg);
        uint32_t n = left < pay ? (uint32_t)left : pay;
        memcpy(out, p + PH_SIZE, n);
        out += n;
        left -= n;
        run_end = pg + 1;
        pg = rd64(p + PH_NEXT);
    }
    if (drop)
        pg_drop(t, run, run_end - run);
    if (pg != 0)
        return kvm_err(KVM_CORRUPT, "overflow chain longer than its value");
    return c->vlen;
}

static int overflow_free(kvm_txn *t, const lcell *c)
{
    uint32_t pay = ov_payload(t->env);
    uint64_t pages = ((uint64_t)c->vlen + pay - 1) / pay;
    pgno_t pg = c->ov;
    for (uint64_t i = 0; i < pages; i++) {
        const uint8_t *p;
        int own;
        int rc = pg_read_own(t, pg, &p, &own);
        if (rc)
            return rc;
        if (p[PH_TYPE] != PT_OVERFLOW || rd64(p + PH_PGNO) != pg || rd64(p + PH_TXNID) > t->txnid)
            return kvm_err(KVM_CORRUPT, "page %llu: not an overflow page of this value", (unsigned long long)pg);
        /* A damaged next pointer would free a page in use: trust it only
        ** on a committed page whose checksum holds (a verifying pg_read
        ** checked already; this transaction's own pages have none yet). */
        if (own == PAGE_COMMITTED && !t->env->verify && (rc = pg_verify(t, p, pg)))
            return rc;
        pgno_t next = rd64(p + PH_NEXT);
        if ((rc = pg_free(t, pg)))
            return rc;
        pg = next;
    }
    return 0;
}

static int overflow_write(kvm_txn *t, const uint8_t *val, size_t vlen, pgno_t *first)
{
    uint32_t pay = ov_payload(t->env);
    uint8_t *prev = NULL;
    *first = 0;
    while (vlen > 0) {
        uint8_t *p;
        pgno_t pg;
        int rc = pg_new(t, PT_OVERFLOW, &p, &pg);
        if (rc)
            return rc;
        size_t n = vlen < pay ? vlen : pay;
        memcpy(p + PH_SIZE, val, n);
        if (prev)
            wr64(prev + PH_NEXT, pg);
        else
            *first = pg;
        prev = p;
        val += n;
        vlen -= n;
    }
    return 0;
}

/* ------------------------------------------------------- page rebuilding */

static void node_rebuild(const kvm_env *e, uint8_t *p, const cellref *refs, unsigned n)
{
    unsigned upper = e->psize;
    for (unsigned i = 0; i < n; i++) {
        upper -= refs[i].size;
        memcpy(p + upper, refs[i].data, refs[i].size);
        wr16(p + PH_SIZE + 2 * i, (uint16_t)upper);
    }
    memset(p + PH_SIZE + 2 * n, 0, upper - (PH_SIZE + 2 * n));
    wr16(p + PH_NKEYS, (uint16_t)n);
    wr32(p + PH_UPPER, upper);
}

/* Gather references to the cells of an owned page (copied first to scratch). */
static unsigned gather(kvm_txn *t, const uint8_t *p, int scr, cellref *refs)
{
    uint8_t *s = scratch(t, scr);
    memcpy(s, p, t->env->psize);
    unsigned n = nkeys(s);
    for (unsigned i = 0; i < n; i++) {
        refs[i].data = s + cptr(s, i);
        refs[i].size = cell_size(t->env, s, i);
    }
    return n;
}

/* Bytes the cells take on a page, with their offsets. */
static unsigned refs_bytes(const cellref *refs, unsigned n)
{
    unsigned bytes = 0;
    for (unsigned i = 0; i < n; i++)
        bytes += refs[i].size + 2;
    return bytes;
}

static unsigned node_used(const kvm_env *e, const uint8_t *p)
{
    unsigned used = 0, n = nkeys(p);
    for (unsigned i = 0; i < n; i++)
        used += cell_size(e, p, i) + 2;
    return used;
}

static void node_compact(kvm_txn *t, uint8_t *p)
{
    cellref *refs = t->cells;
    unsigned n = gather(t, p, SCR_PACK, refs);
    node_rebuild(t->env, p, refs, n);
}

/* 1 if a cell of `size` bytes and its offset fit in the page's gap. */
static inline int gap_fits(const uint8_t *p, unsigned size)
{
    return rd32(p + PH_UPPER) >= PH_SIZE + 2 * nkeys(p) + size + 2;
}

/* Insert a cell at idx if it fits (compacting if need be); 1 if inserted. */
static int node_insert(kvm_txn *t, uint8_t *p, unsigned idx, const uint8_t *cell, unsigned size)
{
    const kvm_env *e = t->env;
    unsigned n = nkeys(p), upper = rd32(p + PH_UPPER);
    if (!gap_fits(p, size)) {
        if (node_used(e, p) + size + 2 > usable(e))
            return 0;
        node_compact(t, p);
        upper = rd32(p + PH_UPPER);
    }
    upper -= size;
    memcpy(p + upper, cell, size);
    uint8_t *ptrs = p + PH_SIZE;
    memmove(ptrs + 2 * (idx + 1), ptrs + 2 * idx, 2 * (n - idx));
    wr16(ptrs + 2 * idx, (uint16_t)upper);
    wr16(p + PH_NKEYS, (uint16_t)(n + 1));
    wr32(p + PH_UPPER, upper);
    return 1;
}

static void node_remove(uint8_t *p, unsigned idx)
{
    unsigned n = nkeys(p);
    uint8_t *ptrs = p + PH_SIZE;
    memmove(ptrs + 2 * idx, ptrs + 2 * (idx + 1), 2 * (n - idx - 1));
    wr16(p + PH_NKEYS, (uint16_t)(n - 1));
}

static unsigned build_branch_cell(uint8_t *c, const uint8_t *key, unsigned klen, pgno_t child)
{
    wr16(c, (uint16_t)klen);
    wr64(c + 2, child);
    if (klen)
        memmove(c + BRANCH_HDR, key, klen);
    return BRANCH_HDR + klen;
}

static void set_child(uint8_t *p, unsigned i, pgno_t child) { wr64(p + cptr(p, i) + 2, child); }

/* Make page ph->pg[level] writable (copy-on-write) and fix its parent. */
static int touch(kvm_txn *t, path_t *ph, int level, int type, uint8_t **out)
{
    if (ph->own[level]) {
        *out = ph->ptr[level];
        return 0;
    }
    pgno_t np;
    int rc = pg_write(t, ph->pg[level], out, &np);
    if (rc)
        return rc;
    ph->own[level] = 1;
    ph->ptr[level] = *out;
    if (np == ph->pg[level])
        return 0;
    if ((rc = node_validate(t, *out, np, type)))
        return rc;
    ph->pg[level] = np;
    if (level == 0)
        t->root = np;
    else   /* the parent was touched first: it is ours */
        set_child(ph->ptr[level - 1], ph->idx[level - 1], np);
    return 0;
}

static int touch_path(kvm_txn *t, path_t *ph)
{
    for (int l = 0; l < ph->depth; l++) {
        uint8_t *p;
        int rc = touch(t, ph, l, level_type(t->depth, l), &p);
        if (rc)
            return rc;
    }
    return 0;
}

/* Owned page pointer (after touch). */
static uint8_t *owned(kvm_txn *t, pgno_t pg)
{
    const uint8_t *p = NULL;
    pg_read(t, pg, &p);   /* cannot fail: the page is in the dirty table */
    return (uint8_t *)p;
}

/* A full leaf shares its cells with its two neighbours at most. */
#define SPREAD 3

/*
** Cut refs[0..n), `total` bytes with their offsets, into k pages (k <=
** SPREAD + 1) as evenly as the cell sizes allow: page j gets
** refs[b[j]..b[j+1]), b[0] = 0, b[k] = n, every page at least one cell
** (n >= k).  0 if the cells do not fit in k pages.
**
** lo[j] is the smallest b[j] for which refs[b[j]..n) still fit in pages
** j..k-1 (those pages packed from the right).  Page j-1 then takes cells up
** to lo[j] at least -- they fit, since the cells from b[j-1] on fit in pages
** j-1..k-1 -- and beyond that only while it stays nearer its even share of
** what is left.
*/
static int distribute(const kvm_env *e, const cellref *refs, unsigned n, unsigned total, unsigned k, unsigned *b)
{
    unsigned lo[SPREAD + 2], done = 0;
    lo[k] = n;
    for (unsigned j = k - 1; j > 0; j--) {
        unsigned x = lo[j + 1], size = 0;
        while (x > j && size + refs[x - 1].size + 2 <= usable(e))
            size += refs[--x].size + 2;
        lo[j] = x;
    }
    b[0] = 0;
    for (unsigned j = 1; j < k; j++) {
        unsigned x = b[j - 1], size = 0, share = (total - done) / (k - j + 1);
        while (x < n - (k - j)) {
            unsigned s = refs[x].size + 2;
            if (size + s > usable(e) || (x >= lo[j] && x > b[j - 1] && 2 * size + s > 2 * share))
                break;
            size += s;
            x++;
        }
        if (x < lo[j])
            return 0;
        b[j] = x;
        done += size;
    }
    b[k] = n;
    return 1;   /* the last page fits: it starts at lo[k - 1] or later */
}

/*
** Split owned page pg while inserting cell at idx.  The left part stays in pg,
** the right part goes to a new page *right; the separator (the smallest key of
** the right part) is copied to SCR_SEP, its length to *seplen.
*/
static int split(kvm_txn *t, pgno_t pg, unsigned idx, const uint8_t *cell, unsigned csize,
                 pgno_t *right, unsigned *seplen)
{
    const kvm_env *e = t->env;
    uint8_t *p = owned(t, pg);
    int type = p[PH_TYPE];
    cellref *refs = t->cells;
    unsigned n = gather(t, p, SCR_A, refs);
    memmove(refs + idx + 1, refs + idx, (n - idx) * sizeof *refs);
    refs[idx].data = cell;
    refs[idx].size = csize;
    n++;
    unsigned b[3];
    if (idx == n - 1 && type == PT_LEAF)
        b[1] = n - 1;       /* appending: keep the left page full */
    else if (idx == n - 1)
        b[1] = n - 2;
    else   /* fits: a page's cells and one more, each at most a quarter page */
        distribute(e, refs, n, refs_bytes(refs, n), 2, b);
    unsigned m = b[1];
    uint8_t *r;
    int rc = pg_new(t, type, &r, right);
    if (rc)
        return rc;
    const uint8_t *sk = refs[m].data + (type == PT_BRANCH ? BRANCH_HDR : LEAF_HDR);
    *seplen = rd16(refs[m].data);
    memcpy(scratch(t, SCR_SEP), sk, *seplen);
    uint8_t first[BRANCH_HDR];
    if (type == PT_BRANCH) {      /* the right page's first key moves up */
        build_branch_cell(first, NULL, 0, rd64(refs[m].data + 2));
        refs[m].data = first;
        refs[m].size = BRANCH_HDR;
    }
    node_rebuild(e, p, refs, m);
    node_rebuild(e, r, refs + m, n - m);
    return 0;
}

/* Child j of the parent at level - 1, which this transaction owns, read
** and checked: its page number and contents. */
static int child_read(kvm_txn *t, const path_t *ph, int level, unsigned j, int type, pgno_t *pg,
                      const uint8_t **p)
{
    int rc = branch_child(t, ph->ptr[level - 1], ph->pg[level - 1], j, pg);
    return rc ? rc : node_read(t, *pg, type, p);
}

/* Make child j of the parent at level - 1 writable, as touch does a page
** of the path: its (maybe new) page number and the page. */
static int touch_child(kvm_txn *t, const path_t *ph, int level, unsigned j, int type, pgno_t *pg, uint8_t **out)
{
    path_t sib = *ph;
    const uint8_t *p;
    sib.idx[level - 1] = j;
    sib.own[level] = 0;   /* pg_write tells: changed in place or copied */
    int rc = child_read(t, ph, level, j, type, &sib.pg[level], &p);
    if (rc || (rc = touch(t, &sib, level, type, out)))
        return rc;
    *pg = sib.pg[level];
    return 0;
}

/* Bytes a leaf's cells and offsets take at most (dead cells count too),
** from its header alone, which node_read checked; the rest of the page is
** its gap. */
static unsigned used_bound(const kvm_env *e, const uint8_t *p)
{
    return e->psize - rd32(p + PH_UPPER) + 2 * nkeys(p);
}

/*
** The parent's cells lo + j (j = 1..g-1) become the first keys of the pages
** a spread rewrote, pages[j], except where !renew[j] (the page's first cell
** did not change).  The caller made sure they fit.  The keys are read from
** the pages: compacting the parent reuses SCR_PACK, and the cells are built
** in SCR_SEP.
*/
static void set_separators(kvm_txn *t, uint8_t *pp, pgno_t ppg, unsigned lo, uint8_t *const *pages,
                           const int *renew, unsigned g)
{
    for (unsigned j = 1; j < g; j++) {
        if (!renew[j])
            continue;
        const uint8_t *key, *c = pages[j] + cptr(pages[j], 0);
        unsigned klen, nklen = rd16(c);
        cell_key(t, pp, ppg, lo + j, &key, &klen);   /* checked when the parent was copied */
        if (nklen == klen) {
            memcpy((uint8_t *)key, c + LEAF_HDR, klen);
            continue;
        }
        pgno_t child = rd64(pp + cptr(pp, lo + j) + 2);
        uint8_t *cell = scratch(t, SCR_SEP);
        unsigned size = build_branch_cell(cell, c + LEAF_HDR, nklen, child);
        node_remove(pp, lo + j);
        node_insert(t, pp, lo + j, cell, size);
    }
}

/* 1 if the parent has room for separators that grow: page j's (j = 1..g-1,
** renew[j]) becomes the key of its first cell, w[b[j]]. */
static int separators_fit(kvm_txn *t, const uint8_t *pp, pgno_t ppg, unsigned lo, const cellref *w,
                          const unsigned *b, const int *renew, unsigned g)
{
    unsigned grow = 0;
    for (unsigned j = 1; j < g; j++) {
        if (!renew[j])
            continue;
        const uint8_t *key;
        unsigned klen, nklen = rd16(w[b[j]].data);
        cell_key(t, pp, ppg, lo + j, &key, &klen);
        grow += nklen > klen ? nklen - klen : 0;
    }
    return !grow || node_used(t->env, pp) + grow <= usable(t->env);
}

/*
** Step 2 of spread: the leaf's cells, refs[1..n] (`total` bytes), and those
** of its neighbours (has[0]: left, has[1]: right) are cut evenly into one
** page more, the new one last; all are rebuilt.  It fits: the old pages as
** they were and the leaf cut in two would do.
*/
static int spread_split(kvm_txn *t, path_t *ph, int level, cellref *refs, unsigned n, unsigned total,
                        const int *has, pgno_t *right, unsigned *seplen, unsigned *at)
{
    static const int scr[2] = {SCR_B, SCR_PACK};
    const kvm_env *e = t->env;
    uint8_t *pp = ph->ptr[level - 1], *pages[SPREAD + 1];
    pgno_t ppg = ph->pg[level - 1], npg;
    unsigned i = ph->idx[level - 1], lo = i - has[0], g = 1 + has[0] + has[1], b[SPREAD + 2], nb[2] = {0, 0};
    int renew[SPREAD + 1] = {1, 1, 1, 1}, rc;
    pages[has[0]] = ph->ptr[level];
    for (int s = 0; s < 2; s++)
        if (has[s] && (rc = touch_child(t, ph, level, s ? i + 1 : i - 1, PT_LEAF, &npg, &pages[s ? g - 1 : 0])))
            return rc;
    if (has[0])
        nb[0] = nkeys(pages[0]);
    memmove(refs + nb[0], refs + 1, n * sizeof *refs);
    for (int s = 0; s < 2; s++) {
        cellref *r = s ? refs + nb[0] + n : refs;
        if (has[s]) {
            nb[s] = gather(t, pages[s ? g - 1 : 0], scr[s], r);
            total += refs_bytes(r, nb[s]);
        }
    }
    n += nb[0] + nb[1];
    if (!distribute(e, refs, n, total, g + 1, b) || !separators_fit(t, pp, ppg, lo, refs, b, renew, g))
        return 1;
    if ((rc = pg_new(t, PT_LEAF, &pages[g], right)))
        return rc;
    for (unsigned j = 0; j <= g; j++)
        node_rebuild(e, pages[j], refs + b[j], b[j + 1] - b[j]);
    set_separators(t, pp, ppg, lo, pages, renew, g);
    const uint8_t *c = pages[g] + cptr(pages[g], 0);
    *seplen = rd16(c);
    memcpy(scratch(t, SCR_SEP), c + LEAF_HDR, *seplen);
    *at = lo + g;
    return 0;
}

/*
** The leaf at `level` is to take a cell at idx, and its gap is too small.
** If the cells fit in the page with it (dead cells took the room), the leaf
** is rebuilt with them (node_insert would compact it: its cells are
** gathered here anyway).  Else it is full.  Split on its own, a
** leaf of random-order inserts is two thirds full on average; sharing its
** cells with its neighbours under the same parent first, as SQLite's
** balance does, keeps them about 87% full:
**
**  1. In place, with the emptier neighbour, else with both, if they have
**     room: the leaf gives cells from its ends to its neighbours, so that
**     the pages come out as even as they can without a neighbour giving
**     any.  In the cut a neighbour stands for one cell of the bytes its
**     header says it takes at most (dead cells count as used), so what it
**     gains fits in its gap: node_insert puts the cells there, at its end
**     next to the leaf.  A neighbour is neither gathered nor rebuilt: of
**     its lines only those the new cells and offsets go to are written.
**     Only the leaf is rebuilt.
**  2. Else spread_split: the leaf and its neighbours into one page more.
**
** Neighbours are touched like pages of the path (copied if committed or of
** an outer savepoint level) before anything changes, and always changed.
** Returns 0 with *right = 0 when done in place, or with *right the new page:
** its separator (its first key) is in SCR_SEP, *seplen bytes, and goes into
** the parent at *at.  Returns 1 when the leaf splits on its own instead: it
** is an only child; or the cell goes at the end of the last child, as in a
** key-order load, where the leaf stays full and the next one starts; or the
** parent has no room for separators that grew.
*/
static int spread(kvm_txn *t, path_t *ph, int level, unsigned idx, const uint8_t *cell, unsigned csize,
                  pgno_t *right, unsigned *seplen, unsigned *at)
{
    const kvm_env *e = t->env;
    uint8_t *pp = ph->ptr[level - 1], *pages[SPREAD];
    pgno_t ppg = ph->pg[level - 1], npg;
    unsigned pn = nkeys(pp), i = ph->idx[level - 1], b[SPREAD + 1], bound[2] = {0, 0};
    int has[2] = {i > 0, i + 1 < pn}, renew[SPREAD], rc;
    /* refs[0] and refs[n + 1] stand for the neighbours.  At most SPREAD
    ** leaves of cells, one more and the two stand-ins: fewer than t->cells
    ** holds (a page's worth of references; a cell takes at least 9 bytes). */
    cellref *refs = t->cells;
    unsigned n = gather(t, ph->ptr[level], SCR_A, refs + 1);
    memmove(refs + 2 + idx, refs + 1 + idx, (n - idx) * sizeof *refs);
    refs[1 + idx].data = cell;
    refs[1 + idx].size = csize;
    n++;
    unsigned total = refs_bytes(refs + 1, n);
    if (total <= usable(e)) {   /* dead cells took the room: compacted, it fits */
        node_rebuild(e, ph->ptr[level], refs + 1, n);
        *right = 0;
        return 0;
    }
    if ((!has[0] && !has[1]) || (idx == n - 1 && !has[1]))
        return 1;
    for (int s = 0; s < 2; s++) {
        const uint8_t *np;
        if (has[s]) {
            if ((rc = child_read(t, ph, level, s ? i + 1 : i - 1, PT_LEAF, &npg, &np)))
                return rc;
            bound[s] = used_bound(e, np);
        }
    }
    refs[0] = (cellref){NULL, bound[0]};
    refs[n + 1] = (cellref){NULL, bound[1]};
    int emptier = has[1] && (!has[0] || bound[1] < bound[0]);
    for (int both = 0; both <= (has[0] && has[1]); both++) {
        int use[2] = {both || !emptier, both || emptier};
        const cellref *w = refs + !use[0];
        unsigned g = 1 + use[0] + use[1], m = n + use[0] + use[1], me = use[0], lo = i - use[0];
        unsigned sum = total + use[0] * (bound[0] + 2) + use[1] * (bound[1] + 2);
        if (sum > g * usable(e) || !distribute(e, w, m, sum, g, b))
            continue;
        for (unsigned j = 0; j < g; j++)
            renew[j] = w[b[j]].data != NULL;   /* a stand-in first: that page keeps its first cell */
        if (!separators_fit(t, pp, ppg, lo, w, b, renew, g))
            return 1;
        pages[me] = ph->ptr[level];
        for (int s = 0; s < 2; s++)
            if (use[s] && (rc = touch_child(t, ph, level, s ? i + 1 : i - 1, PT_LEAF, &npg, &pages[s ? g - 1 : 0])))
                return rc;
        if (use[0])   /* to the end of the left neighbour */
            for (unsigned x = 1, at_end = nkeys(pages[0]); x < b[1]; x++)
                node_insert(t, pages[0], at_end++, w[x].data, w[x].size);
        if (use[1])   /* to the front of the right one */
            for (unsigned x = b[g - 1]; x < m - 1; x++)
                node_insert(t, pages[g - 1], x - b[g - 1], w[x].data, w[x].size);
        node_rebuild(e, pages[me], w + b[me], b[me + 1] - b[me]);
        set_separators(t, pp, ppg, lo, pages, renew, g);
        *right = 0;
        return 0;
    }
    return spread_split(t, ph, level, refs, n, total, has, right, seplen, at);
}

/* Insert cell at (level, idx), spreading or splitting upward as needed:
** 0 if the cell went into its page, 1 if pages were spread or split (the
** path no longer describes the tree), or an error. */
static int insert_at(kvm_txn *t, path_t *ph, int level, unsigned idx, const uint8_t *cell, unsigned csize)
{
    for (int reshaped = 0;; reshaped = 1) {
        uint8_t *p = ph->ptr[level];
        int leaf = level > 0 && p[PH_TYPE] == PT_LEAF;   /* and not the root: it spreads */
        if ((!leaf || gap_fits(p, csize)) && node_insert(t, p, idx, cell, csize))
            return reshaped;
        pgno_t right;
        unsigned seplen = 0, at = level > 0 ? ph->idx[level - 1] + 1 : 0;
        int rc = leaf ? spread(t, ph, level, idx, cell, csize, &right, &seplen, &at) : 1;
        if (rc == 1)
            rc = split(t, ph->pg[level], idx, cell, csize, &right, &seplen);
        if (rc)
            return rc;
        if (!right)
            return 1;
        uint8_t *c = scratch(t, SCR_CELL);
        csize = build_branch_cell(c, scratch(t, SCR_SEP), seplen, right);
        cell = c;
        if (level == 0) {
            uint8_t *root;
            pgno_t rpg;
            if (t->depth >= KVM_MAX_DEPTH)
                return kvm_err(KVM_CORRUPT, "tree deeper than %d levels", KVM_MAX_DEPTH);
            if ((rc = pg_new(t, PT_BRANCH, &root, &rpg)))
                return rc;
            uint8_t c0[BRANCH_HDR];
            unsigned s0 = build_branch_cell(c0, NULL, 0, ph->pg[0]);
            node_insert(t, root, 0, c0, s0);
            node_insert(t, root, 1, cell, csize);
            t->root = rpg;
            t->depth++;
            return 1;
        }
        level--;
        idx = at;
    }
}

/*
** After a delete at `level`: merge an underfull page with a sibling, or move
** cells over from it; collapse the root when it has one child left.
*/
static int rebalance(kvm_txn *t, path_t *ph, int level)
{
    const kvm_env *e = t->env;
    for (;;) {
        uint8_t *p = owned(t, ph->pg[level]);
        int type = p[PH_TYPE];
        unsigned n = nkeys(p);
        if (level == 0) {
            if (type == PT_BRANCH && n == 1) {
                pgno_t child = rd64(p + cptr(p, 0) + 2);
                int rc = pg_free(t, ph->pg[0]);
                if (rc)
                    return rc;
                t->root = child;
                t->depth--;
            } else if (type == PT_LEAF && n == 0) {
                int rc = pg_free(t, ph->pg[0]);
                if (rc)
                    return rc;
                t->root = 0;
                t->depth = 0;
            }
            return 0;
        }
        if (node_used(e, p) >= usable(e) / 4 && (type == PT_LEAF || n >= 2))
            return 0;
        uint8_t *pp = owned(t, ph->pg[level - 1]);
        unsigned pn = nkeys(pp), i = ph->idx[level - 1];
        if (pn < 2)
            return 0;
        unsigned j = i + 1 < pn ? i + 1 : i - 1;
        pgno_t spg;
        uint8_t *sp;
        int rc = touch_child(t, ph, level, j, type, &spg, &sp);
        if (rc)
            return rc;
        unsigned r = j > i ? j : i;            /* parent cell of the right page */
        pgno_t lpg = j > i ? ph->pg[level] : spg;
        pgno_t rpg = j > i ? spg : ph->pg[level];
        uint8_t *L = owned(t, lpg), *R = owned(t, rpg);
        cellref *refs = t->cells;
        unsigned ln = gather(t, L, SCR_A, refs);
        unsigned rn = gather(t, R, SCR_B, refs + ln);
        const uint8_t *sep;
        unsigned seplen;
        cell_key(t, pp, ph->pg[level - 1], r, &sep, &seplen);
        if (type == PT_BRANCH) {   /* the separator comes down into R's first cell */
            uint8_t *c = scratch(t, SCR_SEP);
            refs[ln].size = build_branch_cell(c, sep, seplen, rd64(refs[ln].data + 2));
            refs[ln].data = c;
        }
        unsigned total = refs_bytes(refs, ln + rn);
        if (total <= usable(e)) {
            node_rebuild(e, L, refs, ln + rn);
            if ((rc = pg_free(t, rpg)))
                return rc;
            node_remove(pp, r);
            if (r == i)
                ph->idx[level - 1] = j;
            level--;
            continue;
        }
        unsigned b[3];
        distribute(e, refs, ln + rn, total, 2, b);   /* fits: one page is under a quarter full */
        unsigned m = b[1];
        const uint8_t *nk = refs[m].data + (type == PT_BRANCH ? BRANCH_HDR : LEAF_HDR);
        unsigned nklen = rd16(refs[m].data);
        unsigned old = cell_size(e, pp, r);
        if (node_used(e, pp) - old + BRANCH_HDR + nklen > usable(e))
            return 0;   /* the new separator would not fit: leave the page as it is */
        uint8_t *c = scratch(t, SCR_CELL);
        unsigned csize = build_branch_cell(c, nk, nklen, rpg);
        uint8_t first[BRANCH_HDR];
        if (type == PT_BRANCH) {
            build_branch_cell(first, NULL, 0, rd64(refs[m].data + 2));
            refs[m].data = first;
            refs[m].size = BRANCH_HDR;
        }
        node_rebuild(e, L, refs, m);
        node_rebuild(e, R, refs + m, ln + rn - m);
        node_remove(pp, r);
        node_insert(t, pp, r, c, csize);
        return 0;
    }
}

/* --------------------------------------------------------------- public */

static int key_check(kvm_txn *t, size_t klen)
{
    if (klen == 0 || klen > t->env->max_key)
        return kvm_err(KVM_INVALID, "key length %zu is outside 1..%u", klen, t->env->max_key);
    return 0;
}

/* A write may go ahead: the pool holds its worst case of pages (taken and
** the file grown now, before anything changes and before the map lock). */
static int write_check(kvm_txn *t, uint64_t need)
{
    if (!t->write)
        return kvm_err(KVM_READONLY, "transaction is read-only");
    return txn_pool_ensure(t, need);
}

/* Lookups that go down the tree together, level by level (get_many; a
** single get is a group of one).  The binary searches of a group take their
** steps in turn, each step first asking the CPU for the line of every
** search's next probe, so the cache misses of different keys overlap and
** only lines a search reads are fetched.  (Asking for whole pages, the
** descent's way, runs out of the CPU's outstanding-miss slots: 64 lines a
** page against the 5 or so a leaf search reads.  get_many of 1,000 random
** keys of 200,000 went from about 850-1,070 to 650-830 ns per key.)  A
** lone lookup has no other search to overlap with: it asks for its whole
** page at once, and for nothing more.  The pread backend's cache may evict
** a page while another is read, so there a group is one lookup. */
#define LOOKUP_GROUP 16

typedef struct lookup {
    const uint8_t *key;
    size_t         klen;
    pgno_t         pg;      /* the page at the level reached; at the end, the leaf */
    unsigned       idx;     /* in the leaf: the key's cell, or where it would go */
    int            found;
} lookup;

static int lookup_group(kvm_txn *t, lookup *q, int g)
{
    const kvm_env *e = t->env;
    const uint8_t *p[LOOKUP_GROUP];
    unsigned lo[LOOKUP_GROUP], hi[LOOKUP_GROUP];
    for (int j = 0; j < g; j++) {
        q[j].pg = t->root;
        q[j].found = 0;
    }
    for (int l = 0; l < (int)t->depth; l++) {
        int type = level_type(t->depth, l), strict = type == PT_BRANCH, rc;
        for (int j = 0; j < g; j++) {
            if ((rc = pg_read(t, q[j].pg, &p[j])))
                return rc;
            if (g == 1)
                prefetch_page(e, p[j]);
            else
                __builtin_prefetch(p[j]);
        }
        for (int j = 0; j < g; j++) {
            if ((rc = pg_check_node(t, p[j], q[j].pg, type)))
                return rc;
            lo[j] = (unsigned)strict;   /* a branch's cell 0 stands for minus infinity */
            hi[j] = nkeys(p[j]);
            for (unsigned off = 64; g > 1 && off < PH_SIZE + 2 * hi[j]; off += 64)
                __builtin_prefetch(p[j] + off);
        }
        for (int live = g; live;) {
            for (int j = 0; g > 1 && j < g; j++) {
                unsigned off = lo[j] < hi[j] ? cptr(p[j], (lo[j] + hi[j]) / 2) : 0;
                if (off < e->psize)
                    __builtin_prefetch(p[j] + off);
            }
            live = 0;
            for (int j = 0; j < g; j++) {
                if (lo[j] < hi[j] &&
                    (rc = search_step(t, p[j], q[j].pg, q[j].key, q[j].klen, strict, &lo[j], &hi[j])))
                    return rc;
                live |= lo[j] < hi[j];
            }
        }
        for (int j = 0; j < g; j++) {
            if (type == PT_LEAF) {
                q[j].idx = lo[j];
                rc = leaf_found(t, p[j], q[j].pg, q[j].key, q[j].klen, lo[j], &q[j].found);
            } else {
                q[j].idx = lo[j] - 1;
                rc = branch_child(t, p[j], q[j].pg, q[j].idx, &q[j].pg);
            }
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* The value a lookup found, copied to out if it fits: its length, or
** KVM_NOTFOUND. */
static int64_t lookup_value(kvm_txn *t, const lookup *q, uint8_t *out, size_t cap)
{
    if (!q->found)
        return KVM_NOTFOUND;
    const uint8_t *p;
    lcell c;
    int rc = pg_read(t, q->pg, &p);
    if (rc || (rc = leaf_cell(t, p, q->pg, q->idx, &c)))
        return rc;
    return value_copy(t, &c, out, cap);
}

static int64_t get_locked(kvm_txn *t, const uint8_t *key, size_t klen, uint8_t *out, size_t cap)
{
    if (!t->root)
        return KVM_NOTFOUND;
    lookup q = {.key = key, .klen = klen};
    int rc = lookup_group(t, &q, 1);
    return rc ? rc : lookup_value(t, &q, out, cap);
}

static int64_t get_op(kvm_txn *t, const char *key, size_t klen, char *out, size_t cap)
{
    int rc = key_check(t, klen);
    if (rc)
        return rc;
    op_enter(t->env);
    int64_t r = get_locked(t, (const uint8_t *)key, klen, (uint8_t *)out, cap);
    op_leave(t->env);
    return r;
}

/* The public calls that read or write mapped memory run under the SIGBUS
** guard (guard.h); the *_op functions are their bodies.  kvm_env_get runs
** on a snapshot of the newest state taken for this call only. */
int64_t kvm_get(kvm_txn *t, const char *key, size_t klen, char *out, size_t cap)
{
    int64_t r = txn_enter(t);
    if (r)
        return r;
    GUARDED(t->env, t, r, get_op(t, key, klen, out, cap));
    txn_leave(t);
    return r;
}

int64_t kvm_env_get(kvm_env *e, const char *key, size_t klen, char *out, size_t cap)
{
    kvm_txn r = {.env = e, .slot = -1};
    int rc = key_check(&r, klen);
    if (rc || (rc = env_enter(e)))
        return rc;
    int64_t v = snapshot_acquire(e, &r);
    if (!v) {
        GUARDED(e, NULL, v, get_op(&r, key, klen, out, cap));
        snapshot_release(e, &r);
    }
    env_leave(e);
    return v;
}

/* Append "<n>s" to the struct format at fmt + *flen (cap bytes); 0 if full. */
static int fmt_field(char *fmt, size_t cap, size_t *flen, uint64_t n)
{
    char digits[24];
    int k = 0;
    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    if (*flen + (size_t)k + 1 > cap)
        return 0;
    while (k)
        fmt[(*flen)++] = digits[--k];
    fmt[(*flen)++] = 's';
    return 1;
}

static int get_many_op(kvm_txn *t, const char *keys, const uint32_t *klens, size_t n, char *out,
                       size_t cap, int64_t *lens, size_t *done, char *fmt, size_t fmtcap, size_t *fmtlen)
{
    const uint8_t *k = (const uint8_t *)keys;
    int group = t->env->backend == KVM_BACKEND_PREAD ? 1 : LOOKUP_GROUP, rc = 0, missing = 0;
    size_t off = 0, i = 0;
    op_enter(t->env);
    while (i < n && !rc) {
        lookup q[LOOKUP_GROUP];
        int g = n - i < (size_t)group ? (int)(n - i) : group;
        for (int j = 0; j < g && !rc; j++) {
            rc = key_check(t, klens[i + j]);
            q[j] = (lookup){.key = k, .klen = klens[i + j]};
            k += klens[i + j];
        }
        if (rc || (t->root && (rc = lookup_group(t, q, g))))
            break;
        for (int j = 0; j < g; j++, i++) {
            int64_t v = lookup_value(t, &q[j], (uint8_t *)out + off, cap - off);
            if (v < 0 && v != KVM_NOTFOUND) {
                rc = (int)v;
                break;
            }
            lens[i] = v;
            size_t flen = *fmtlen;
            if (v > (int64_t)(cap - off) || !fmt_field(fmt, fmtcap, fmtlen, v < 0 ? 0 : (uint64_t)v)) {
                *fmtlen = flen;
                if (i == 0)
                    rc = KVM_BUFSMALL;
                goto out;
            }
            if (v > 0)
                off += (size_t)v;
            else if (v < 0)
                missing++;
        }
    }
out:
    op_leave(t->env);
    *done = i;
    return rc ? rc : missing;
}

/* The path a put of a sorted batch went down, kept for the next put
** (put_batch_op): consecutive keys mostly land in the same leaf, and then
** the next put searches that leaf alone.  The path holds while no page on
** it was spread or split and the map did not move (growth under writemap),
** for a key from the last one up to the separator bounding the leaf on
** the right.  Every page on it is this transaction's. */
typedef struct put_hint {
    path_t         ph;
    int            valid;
    const uint8_t *base;    /* the map's base when the path was taken */
    const uint8_t *upper;   /* the separator bounding the leaf; NULL: the rightmost leaf */
    unsigned       upper_len;
} put_hint;

/* The bound of the leaf a fresh path ends in: the key after the path's
** cell at the deepest branch that has one. */
static int hint_take(kvm_txn *t, put_hint *h)
{
    h->upper = NULL;
    h->base = t->env->base;
    for (int l = h->ph.depth - 2; l >= 0; l--) {
        const uint8_t *p = h->ph.ptr[l];
        if (h->ph.idx[l] + 1 < nkeys(p))
            return cell_key(t, p, h->ph.pg[l], h->ph.idx[l] + 1, &h->upper, &h->upper_len);
    }
    return 0;
}

/* Whether key (no lower than the last put's) falls in the hint's leaf. */
static int hint_holds(const kvm_txn *t, const put_hint *h, const uint8_t *key, size_t klen)
{
    return h && h->valid && h->base == t->env->base &&
           (!h->upper || keycmp(key, klen, h->upper, h->upper_len) < 0);
}

/* A put; hint is a batch's (NULL for one put alone). */
static int put_op(kvm_txn *t, const char *key_, size_t klen, const char *val_, size_t vlen, put_hint *hint)
{
    const uint8_t *key = (const uint8_t *)key_, *val = (const uint8_t *)val_;
    kvm_env *e = t->env;
    int rc = key_check(t, klen);
    if (rc)
        return rc;
    if (vlen > UINT32_MAX)
        return kvm_err(KVM_INVALID, "value of %zu bytes is larger than 4 GiB - 1", vlen);
    int inl = leaf_inline(e, klen, vlen);
    uint64_t ovpages = inl ? 0 : (vlen + ov_payload(e) - 1) / ov_payload(e);
    if ((rc = write_check(t, 2ull * (t->depth + 2) + 4 + ovpages)))
        return rc;
    op_enter(e);
    uint8_t *cell = scratch(t, SCR_CELL);
    wr16(cell, (uint16_t)klen);
    wr32(cell + 2, (uint32_t)vlen);
    memcpy(cell + LEAF_HDR, key, klen);
    unsigned csize = LEAF_HDR + (unsigned)klen + (inl ? (unsigned)vlen : 8);
    if (inl)
        memcpy(cell + LEAF_HDR + klen, val, vlen);
    path_t local, *ph = hint ? &hint->ph : &local;
    int found = 0, leaf, reuse = hint_holds(t, hint, key, klen);
    if (hint)
        hint->valid = 0;   /* until this put ends with the path as it found it */
    if (!t->root) {
        uint8_t *p;
        pgno_t pg;
        if ((rc = pg_new(t, PT_LEAF, &p, &pg)))
            goto out;
        t->root = pg;
        t->depth = 1;
        ph->depth = 1;
        ph->pg[0] = pg;
        ph->idx[0] = 0;
        ph->ptr[0] = p;
        ph->own[0] = 1;
        if (hint && (rc = hint_take(t, hint)))
            goto out;
    } else if (reuse) {
        leaf = ph->depth - 1;
        if ((rc = search(t, ph->ptr[leaf], ph->pg[leaf], ph->idx[leaf], key, klen, 0, &ph->idx[leaf])) ||
            (rc = leaf_found(t, ph->ptr[leaf], ph->pg[leaf], key, klen, ph->idx[leaf], &found)))
            goto out;
    } else if ((rc = descend(t, key, klen, ph, &found)) || (rc = touch_path(t, ph)) ||
               (hint && (rc = hint_take(t, hint))))
        goto out;
    leaf = ph->depth - 1;
    if (!inl) {
        pgno_t first;
        if ((rc = overflow_write(t, val, vlen, &first)))
            goto out;
        wr64(cell + LEAF_HDR + klen, first);
    }
    if (found) {
        uint8_t *p = ph->ptr[leaf];
        lcell old;
        if ((rc = leaf_cell(t, p, ph->pg[leaf], ph->idx[leaf], &old)))
            goto out;
        if (!old.inl && (rc = overflow_free(t, &old)))
            goto out;
        if (cell_size(t->env, p, ph->idx[leaf]) == csize) {
            /* the same size: in place, no dead cell for a compaction to gather */
            memcpy(p + cptr(p, ph->idx[leaf]), cell, csize);
            t->mod++;
            goto kept;
        }
        node_remove(p, ph->idx[leaf]);
    } else
        t->entries++;
    rc = insert_at(t, ph, leaf, ph->idx[leaf], cell, csize);
    t->mod++;
    if (rc)
        goto out;
kept:
    if (hint)
        hint->valid = 1;
out:
    op_leave(e);
    return rc < 0 ? rc : 0;
}

/* A batch of puts (kvm_put_many).  They are applied in key order -- a
** stable sort, so of equal keys the later one wins, as applied one by one --
** because consecutive keys share their path and leaf: the pages a put
** touches are still in the CPU cache for the next one.  Every key and value
** size is checked before the first put, so a bad argument changes nothing. */
typedef struct batch_ent {
    uint64_t       prefix;   /* the key's first 8 bytes, big-endian, zero-padded: most comparisons end here */
    const uint8_t *key, *val;
    uint32_t       klen;
    uint64_t       vlen;
    size_t         idx;      /* position in the caller's batch */
} batch_ent;

static uint64_t key_prefix(const uint8_t *key, size_t klen)
{
    uint8_t head[8] = {0};
    memcpy(head, key, klen < 8 ? klen : 8);
    return key_head(head);
}

static int batch_cmp(const void *a_, const void *b_)
{
    const batch_ent *a = a_, *b = b_;
    if (a->prefix != b->prefix)
        return a->prefix < b->prefix ? -1 : 1;
    int c = keycmp(a->key, a->klen, b->key, b->klen);
    return c ? c : (a->idx > b->idx) - (a->idx < b->idx);
}

/* Sorting a batch: a comparison sort calls batch_cmp n log n times, which
** was most of a 200,000-pair update.  A large batch is sorted instead by
** its key prefixes, a byte at a time (a stable radix sort of (prefix,
** position) pairs, skipping the bytes every prefix shares), and only the
** runs of equal prefixes are compared whole. */
#define RADIX_MIN 1024

typedef struct batch_order {
    uint64_t prefix;
    size_t   pos;
} batch_order;

static int batch_sort(batch_ent **ents_, size_t n)
{
    batch_ent *ents = *ents_;
    if (n < RADIX_MIN) {
        qsort(ents, n, sizeof *ents, batch_cmp);
        return 0;
    }
    batch_order *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    batch_ent *sorted = malloc(n * sizeof *sorted);
    if (!a || !b || !sorted) {
        free(a);
        free(b);
        free(sorted);
        return kvm_err(KVM_NOMEM, "out of memory sorting a batch of %zu puts", n);
    }
    size_t count[8][256] = {{0}};   /* per byte of the prefix, least significant first */
    for (size_t i = 0; i < n; i++) {
        a[i] = (batch_order){ents[i].prefix, i};
        for (unsigned d = 0; d < 8; d++)
            count[d][ents[i].prefix >> (8 * d) & 255]++;
    }
    for (unsigned d = 0; d < 8; d++) {
        if (count[d][a[0].prefix >> (8 * d) & 255] == n)
            continue;   /* every prefix has this byte */
        size_t at = 0;
        for (unsigned v = 0; v < 256; v++) {
            size_t c = count[d][v];
            count[d][v] = at;
            at += c;
        }
        for (size_t i = 0; i < n; i++)
            b[count[d][a[i].prefix >> (8 * d) & 255]++] = a[i];
        batch_order *swap = a;
        a = b;
        b = swap;
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = ents[a[i].pos];
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && sorted[j].prefix == sorted[i].prefix; j++)
            ;
        if (j - i > 1)
            qsort(sorted + i, j - i, sizeof *sorted, batch_cmp);
    }
    free(a);
    free(b);
    free(ents);
    *ents_ = sorted;
    return 0;
}

/* The batch in the order its puts are applied; caller memory only, so this
** runs outside the SIGBUS guard (which forbids heap allocations). */
static int batch_plan(kvm_txn *t, const char *keys, const uint32_t *klens, const char *vals,
                      const uint64_t *vlens, size_t n, batch_ent **out)
{
    if (!t->write)
        return kvm_err(KVM_READONLY, "transaction is read-only");
    batch_ent *ents = malloc((n ? n : 1) * sizeof *ents);
    if (!ents)
        return kvm_err(KVM_NOMEM, "out of memory for a batch of %zu puts", n);
    int rc = 0, sorted = 1;
    const uint8_t *k = (const uint8_t *)keys, *v = (const uint8_t *)vals;
    for (size_t i = 0; i < n && !rc; i++) {
        if ((rc = key_check(t, klens[i])))
            break;
        if (vlens[i] > UINT32_MAX)
            rc = kvm_err(KVM_INVALID, "value of %llu bytes is larger than 4 GiB - 1",
                         (unsigned long long)vlens[i]);
        ents[i] = (batch_ent){key_prefix(k, klens[i]), k, v, klens[i], vlens[i], i};
        k += klens[i];
        v += vlens[i];
        if (i && sorted && keycmp(ents[i - 1].key, ents[i - 1].klen, ents[i].key, ents[i].klen) > 0)
            sorted = 0;
    }
    if (!rc && !sorted)
        rc = batch_sort(&ents, n);
    if (rc) {
        free(ents);
        return rc;
    }
    *out = ents;
    return 0;
}

/* The puts in key order; each asks the CPU early for a later one's key
** and value, which lie anywhere in the caller's batch. */
#define BATCH_AHEAD 8

static int put_batch_op(kvm_txn *t, const batch_ent *ents, size_t n)
{
    put_hint hint = {.valid = 0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (i + BATCH_AHEAD < n) {
            __builtin_prefetch(ents[i + BATCH_AHEAD].key);
            __builtin_prefetch(ents[i + BATCH_AHEAD].val);
        }
        rc = put_op(t, (const char *)ents[i].key, ents[i].klen, (const char *)ents[i].val, ents[i].vlen, &hint);
    }
    return rc;
}

/* The puts of a planned batch, under the SIGBUS guard (a function of its
** own: no local of the caller lives across the guard's sigsetjmp). */
static int put_batch_guarded(kvm_txn *t, const batch_ent *ents, size_t n)
{
    int rc = 0;
    GUARDED(t->env, t, rc, put_batch_op(t, ents, n));
    return rc;
}

static int del_op(kvm_txn *t, const char *key_, size_t klen)
{
    const uint8_t *key = (const uint8_t *)key_;
    int rc = key_check(t, klen);
    if (rc || (rc = write_check(t, 2ull * (t->depth + 2) + 4)))
        return rc;
    if (!t->root)
        return KVM_NOTFOUND;
    op_enter(t->env);
    path_t ph;
    int found = 0;
    if ((rc = descend(t, key, klen, &ph, &found)))
        goto out;
    if (!found) {
        rc = KVM_NOTFOUND;
        goto out;
    }
    if ((rc = touch_path(t, &ph)))
        goto out;
    int leaf = ph.depth - 1;
    uint8_t *p = ph.ptr[leaf];
    lcell c;
    if ((rc = leaf_cell(t, p, ph.pg[leaf], ph.idx[leaf], &c)) || (!c.inl && (rc = overflow_free(t, &c))))
        goto out;
    node_remove(p, ph.idx[leaf]);
    t->entries--;
    t->mod++;
    rc = rebalance(t, &ph, leaf);
out:
    op_leave(t->env);
    return rc;
}

/* The public calls that read or write mapped memory: lifetime check
** (txn_enter), then the body under the SIGBUS guard. */
#define GUARDED_TXN_CALL(t, type, body)   \
    do {                                  \
        type r_ = txn_enter(t);           \
        if (r_)                           \
            return r_;                    \
        GUARDED((t)->env, t, r_, body);   \
        txn_leave(t);                     \
        return r_;                        \
    } while (0)

int kvm_get_many(kvm_txn *t, const char *keys, const uint32_t *klens, size_t n, char *out, size_t cap,
                 int64_t *lens, size_t *done, char *fmt, size_t fmtcap, size_t *fmtlen)
{
    *done = *fmtlen = 0;
    GUARDED_TXN_CALL(t, int, get_many_op(t, keys, klens, n, out, cap, lens, done, fmt, fmtcap, fmtlen));
}

int kvm_put(kvm_txn *t, const char *key, size_t klen, const char *val, size_t vlen)
{
    GUARDED_TXN_CALL(t, int, put_op(t, key, klen, val, vlen, NULL));
}

int kvm_put_many(kvm_txn *t, const char *keys, const uint32_t *klens, const char *vals,
                 const uint64_t *vlens, size_t n)
{
    batch_ent *ents = NULL;
    int rc = txn_enter(t);
    if (rc)
        return rc;
    if (!(rc = batch_plan(t, keys, klens, vals, vlens, n, &ents))) {
        rc = put_batch_guarded(t, ents, n);
        free(ents);
    }
    txn_leave(t);
    return rc;
}

int kvm_del(kvm_txn *t, const char *key, size_t klen)
{
    GUARDED_TXN_CALL(t, int, del_op(t, key, klen));
}

/* --------------------------------------------------------------- cursors */

/* A cursor holds a reference to its transaction (kvm_txn_release). */
int kvm_cursor_open(kvm_txn *t, kvm_cursor **out)
{
    int rc = txn_enter(t);
    if (rc)
        return rc;
    kvm_cursor *c = calloc(1, sizeof *c);
    if (!c || (t->write && !(c->key = malloc(t->env->max_key)))) {
        free(c);
        txn_leave(t);
        return kvm_err(KVM_NOMEM, "allocating a cursor");
    }
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
    c->t = t;
    *out = c;
    txn_leave(t);
    return 0;
}

void kvm_cursor_close(kvm_cursor *c)
{
    if (!c)
        return;
    kvm_txn_release(c->t);
    free(c->key);
    free(c);
}

size_t kvm_cursor_need(kvm_cursor *c) { return c->need; }

/* Descend from level l (whose page is set) to the leaf, taking the first
** (or last) entry of every page on the way. */
static int cur_descend_edge(kvm_cursor *c, int l, int last)
{
    kvm_txn *t = c->t;
    for (; l < c->depth; l++) {
        const uint8_t *p;
        int rc = node_read(t, c->pg[l], level_type(t->depth, l), &p);
        if (rc)
            return rc;
        c->idx[l] = last ? (int)nkeys(p) - 1 : 0;
        if (l + 1 < c->depth && (rc = branch_child(t, p, c->pg[l], (unsigned)c->idx[l], &c->pg[l + 1])))
            return rc;
    }
    return 0;
}

/* Move to the next (dir > 0) or previous leaf entry when idx ran off the leaf. */
static int cur_fix(kvm_cursor *c, int dir)
{
    kvm_txn *t = c->t;
    for (int guard = 0; guard < 1 << 20; guard++) {
        const uint8_t *p;
        int d = c->depth - 1;
        int rc = node_read(t, c->pg[d], PT_LEAF, &p);
        if (rc)
            return rc;
        int n = (int)nkeys(p);
        if (c->idx[d] >= 0 && c->idx[d] < n) {
            c->state = 1;
            return 0;
        }
        int l = d - 1;
        for (; l >= 0; l--) {
            const uint8_t *q;
            if ((rc = node_read(t, c->pg[l], PT_BRANCH, &q)))
                return rc;
            int qn = (int)nkeys(q);
            if (dir > 0 ? c->idx[l] + 1 < qn : c->idx[l] > 0)
                break;
        }
        if (l < 0) {
            c->state = 2;
            return 0;
        }
        c->idx[l] += dir;
        const uint8_t *q;
        if ((rc = node_read(t, c->pg[l], PT_BRANCH, &q)) ||
            (rc = branch_child(t, q, c->pg[l], (unsigned)c->idx[l], &c->pg[l + 1])) ||
            (rc = cur_descend_edge(c, l + 1, dir < 0)))
            return rc;
    }
    return kvm_err(KVM_CORRUPT, "cursor walked too many empty pages");
}

/* Ask for the lines of the leaf after this one (before it, dir < 0) under
** the same parent while this one is copied.  mmap only: a page read into
** the pread backend's cache could evict the leaf being copied.  Not inlined
** into the guarded fetch: its locals would live across the sigsetjmp. */
static __attribute__((noinline)) void cur_prefetch_next(kvm_cursor *c, int dir)
{
    kvm_txn *t = c->t;
    int l = c->depth - 2;
    const uint8_t *q;
    pgno_t next = 0;
    if (l < 0 || t->env->backend != KVM_BACKEND_MMAP || pg_read(t, c->pg[l], &q))
        return;
    int i = c->idx[l] + dir;
    if (i >= 0 && i < (int)nkeys(q) && !branch_child(t, q, c->pg[l], (unsigned)i, &next) &&
        next >= META_PAGES && next < t->limit && (next + 1) * t->env->psize <= t->env->map_len)
        prefetch_page(t->env, t->env->base + next * t->env->psize);
}

/* Write transactions: remember the key the cursor is positioned at, so that
** after a change it can seek back (the pages it stood on may be gone). */
static int cur_save_key(kvm_cursor *c)
{
    kvm_txn *t = c->t;
    c->mod = t->mod;
    c->key_emitted = 0;
    if (!t->write || c->state != 1)
        return 0;
    const uint8_t *p, *k;
    unsigned kl;
    int d = c->depth - 1;
    int rc = pg_read(t, c->pg[d], &p);
    if (rc || (rc = cell_key(t, p, c->pg[d], (unsigned)c->idx[d], &k, &kl)))
        return rc;
    memcpy(c->key, k, kl);
    c->klen = kl;
    return 0;
}

static int cur_seek(kvm_cursor *c, const uint8_t *key, size_t klen, int mode)
{
    kvm_txn *t = c->t;
    c->depth = (int)t->depth;
    c->state = 2;
    c->mod = t->mod;
    if (!t->root)
        return 0;
    c->pg[0] = t->root;
    int rc;
    if (mode == KVM_SEEK_FIRST || mode == KVM_SEEK_LAST) {
        int last = mode == KVM_SEEK_LAST;
        if ((rc = cur_descend_edge(c, 0, last)) || (rc = cur_fix(c, last ? -1 : 1)))
            return rc;
        return cur_save_key(c);
    }
    path_t ph;
    int found = 0;
    if ((rc = descend(t, key, klen, &ph, &found)))
        return rc;
    for (int l = 0; l < ph.depth; l++) {
        c->pg[l] = ph.pg[l];
        c->idx[l] = (int)ph.idx[l];
    }
    int d = c->depth - 1, dir = 1;
    if (mode == KVM_SEEK_GT && found)
        c->idx[d]++;
    else if (mode == KVM_SEEK_LE && !found) {
        c->idx[d]--;
        dir = -1;
    } else if (mode == KVM_SEEK_LT) {
        c->idx[d]--;
        dir = -1;
    } else if (mode == KVM_SEEK_LE)
        dir = -1;
    if ((rc = cur_fix(c, dir)))
        return rc;
    return cur_save_key(c);
}

static int cursor_seek_op(kvm_cursor *c, const char *key, size_t klen, int mode)
{
    if (mode < KVM_SEEK_FIRST || mode > KVM_SEEK_LT)
        return kvm_err(KVM_INVALID, "bad seek mode");
    if (mode >= KVM_SEEK_GE && klen > c->t->env->max_key)
        klen = c->t->env->max_key + 1;   /* longer than any key: order is still right */
    op_enter(c->t->env);
    int rc = cur_seek(c, (const uint8_t *)key, klen, mode);
    op_leave(c->t->env);
    return rc;
}


static int64_t cursor_fetch_op(kvm_cursor *c, char *buf_, size_t cap, uint32_t max_n, int flags,
                               const char *stop_, size_t stoplen, char *fmt, size_t fmtcap, size_t *fmtlen)
{
    kvm_txn *t = c->t;
    uint8_t *buf = (uint8_t *)buf_;
    const uint8_t *stop = (const uint8_t *)stop_;
    int rev = flags & KVM_FETCH_REVERSE, dir = rev ? -1 : 1, keys_only = flags & KVM_FETCH_KEYS_ONLY;
    *fmtlen = 0;
    if (c->state == 0)
        return kvm_err(KVM_INVALID, "cursor is not positioned");
    op_enter(t->env);
    int rc = 0;
    size_t used = 0, flen = 0;
    uint32_t count = 0;
    /* After a change, continue after the last key returned (so keys inserted
    ** behind it are seen), or from the key the cursor was positioned at. */
    if (t->write && c->mod != t->mod && c->state == 1)
        rc = cur_seek(c, c->key, c->klen, c->key_emitted ? (rev ? KVM_SEEK_LT : KVM_SEEK_GT)
                                                         : (rev ? KVM_SEEK_LE : KVM_SEEK_GE));
    while (!rc && count < max_n && c->state == 1) {
        /* One leaf at a time: it is checked once, then its cells are copied
        ** in a loop of their own. */
        int d = c->depth - 1;
        const uint8_t *p;
        pgno_t pg = c->pg[d];
        if ((rc = pg_read(t, pg, &p)))
            break;
        prefetch_page(t->env, p);   /* its cells lie in insertion order, not key order */
        cur_prefetch_next(c, dir);
        if ((rc = pg_check_node(t, p, pg, PT_LEAF)))
            break;
        int n = (int)nkeys(p), stopped = 0;
        while (count < max_n && c->idx[d] >= 0 && c->idx[d] < n) {
            lcell lc;
            if ((rc = leaf_cell(t, p, pg, (unsigned)c->idx[d], &lc)))
                break;
            if (stop) {
                int past;
                if (flags & KVM_FETCH_STOP_PREFIX)
                    past = lc.klen < stoplen || memcmp(lc.key, stop, stoplen) != 0;
                else {
                    int cmp = keycmp(lc.key, lc.klen, stop, stoplen) * dir;
                    past = cmp > 0 || (cmp == 0 && !(flags & KVM_FETCH_STOP_INCL));
                }
                if (past) {
                    c->state = 2;
                    stopped = 1;
                    break;
                }
            }
            uint64_t vlen = keys_only ? 0 : lc.vlen;
            size_t fmark = flen;
            if (used + lc.klen + vlen > cap || !fmt_field(fmt, fmtcap, &flen, lc.klen) ||
                (!keys_only && !fmt_field(fmt, fmtcap, &flen, vlen))) {
                flen = fmark;
                if (count == 0) {
                    c->need = lc.klen + vlen;
                    rc = kvm_err(KVM_BUFSMALL, "record of %llu bytes", (unsigned long long)(lc.klen + vlen));
                }
                stopped = 1;
                break;
            }
            memcpy(buf + used, lc.key, lc.klen);
            if (vlen) {
                int64_t v = value_copy(t, &lc, buf + used + lc.klen, vlen);
                if (v < 0) {
                    rc = (int)v;
                    break;
                }
                /* An overflow chain read through the pread cache can evict
                ** the leaf: take the pointer again (the page is the same). */
                if (!lc.inl && (rc = pg_read(t, pg, &p)))
                    break;
            }
            used += lc.klen + vlen;
            count++;
            if (t->write) {
                memcpy(c->key, lc.key, lc.klen);
                c->klen = lc.klen;
            }
            c->idx[d] += dir;
            c->key_emitted = 1;
            c->mod = t->mod;
        }
        if (rc || stopped)
            break;
        if ((rc = cur_fix(c, dir)))   /* off this leaf: on to the next (or the end) */
            break;
    }
    op_leave(t->env);
    *fmtlen = flen;
    return rc ? rc : (int64_t)used;
}

int kvm_cursor_seek(kvm_cursor *c, const char *key, size_t klen, int mode)
{
    GUARDED_TXN_CALL(c->t, int, cursor_seek_op(c, key, klen, mode));
}

int64_t kvm_cursor_fetch(kvm_cursor *c, char *buf, size_t cap, uint32_t max_n, int flags,
                         const char *stop, size_t stoplen, char *fmt, size_t fmtcap, size_t *fmtlen)
{
    GUARDED_TXN_CALL(c->t, int64_t, cursor_fetch_op(c, buf, cap, max_n, flags, stop, stoplen,
                                                    fmt, fmtcap, fmtlen));
}

/* ----------------------------------------------------------- range delete */

/* Delete every key from lo to hi (NULL: unbounded; KVM_DEL_*_EXCL leave the
** bound itself) in one call: a cursor on the write transaction finds the
** first key of the range, which is deleted, then the first key after it,
** and so on.  *count is how many were deleted, also after an error. */
static int del_range_op(kvm_cursor *c, const uint8_t *lo, size_t lolen, const uint8_t *hi, size_t hilen,
                        int flags, uint64_t *count)
{
    kvm_txn *t = c->t;
    int mode = !lo ? KVM_SEEK_FIRST : flags & KVM_DEL_LO_EXCL ? KVM_SEEK_GT : KVM_SEEK_GE, rc;
    for (;;) {
        op_enter(t->env);
        rc = cur_seek(c, lo, lolen, mode);
        op_leave(t->env);
        if (rc || c->state != 1)
            return rc;
        if (hi) {
            int cmp = keycmp(c->key, c->klen, hi, hilen);
            if (cmp > 0 || (cmp == 0 && (flags & KVM_DEL_HI_EXCL)))
                return 0;
        }
        if ((rc = del_op(t, (const char *)c->key, c->klen)))
            return rc;
        ++*count;
        lo = c->key;   /* deleted: the next one is the first key after it */
        lolen = c->klen;
        mode = KVM_SEEK_GT;
    }
}

static int del_range_guarded(kvm_cursor *c, const char *lo, size_t lolen, const char *hi, size_t hilen,
                             int flags, uint64_t *count)
{
    int rc;
    GUARDED(c->t->env, c->t, rc, del_range_op(c, (const uint8_t *)lo, lolen, (const uint8_t *)hi, hilen,
                                               flags, count));
    return rc;
}

int kvm_del_range(kvm_txn *t, const char *lo, size_t lolen, const char *hi, size_t hilen, int flags,
                  uint64_t *count)
{
    *count = 0;
    int rc = txn_enter(t);
    if (rc)
        return rc;
    kvm_cursor c = {.t = t};
    if (lo && lolen > t->env->max_key)
        lolen = t->env->max_key + 1;   /* longer than any key: order is still right */
    if (!t->write)
        rc = kvm_err(KVM_READONLY, "transaction is read-only");
    if (!rc && !(c.key = malloc(t->env->max_key)))
        rc = kvm_err(KVM_NOMEM, "allocating a cursor");
    if (!rc)
        rc = del_range_guarded(&c, lo, lolen, hi, hilen, flags, count);
    free(c.key);
    txn_leave(t);
    return rc;
}
