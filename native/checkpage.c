/*
** checkpage.c -- kvmap-check's byte work: reading pages with pread, vetting
** their headers, checking the cells of branch and leaf pages, following
** overflow chains and verifying checksums.  The checker's Python
** (kvmap/checker/) keeps the structure -- which pages to read, what owns
** each page, how a problem is worded -- and calls these functions for the
** loops over pages and cells, which in Python took 2.0 s of a 2.5 s full
** check of 1.25 M entries (0.3 s in all now, bench/check_vs_sqlite.py).
**
** Design and invariants:
**
** * An independent reader.  Nothing here uses the engine's page code
**   (page.c, btree.c) or its layout (format.h): the offsets are
**   checkpage.h's, the rules the checker's (docs/FORMAT.md), and the engine
**   lends only its CRC-32C, which is pure computation.  Pages are read with
**   pread on the caller's descriptor, never through the engine's mapping
**   or cache.
** * The input is a possibly damaged or hostile file.  Every offset and
**   length read from a page is checked against the page before it is
**   followed; every page number against [2, npages) before it is read; no
**   arithmetic on file values can overflow (64-bit sums of 16- and 32-bit
**   fields).  Nothing aborts or asserts on file contents: what is wrong is
**   a code in the result (a page's verdict, an event, a chain's end) for
**   the Python to word.
** * Same findings as the checker's rules, in the same order: a page's
**   verdict is the first of SHORT, MISPLACED, TYPE, NEWER, DEPTH, COUNTS
**   that applies; the events of its cells come in cell order, and the
**   order events (the first cell breaking a rule, and how many) close the
**   list, key order before key range when they start at the same cell.
** * Bounded: each loop is bounded by a page's cell count (itself bounded by
**   the page size), by the caller's page count, by a bitmap's bits, or by a
**   chain's length and the pages it can claim (each once), and the caller's
**   arrays are never written past the capacities it passes (-ENOBUFS
**   instead).  The functions allocate nothing.
** * Failure: a function that reads returns -errno when pread fails (EINTR
**   is retried); a short read is not a failure but a verdict (SHORT) or an
**   unknown checksum, as the Python reads gave.
*/
#include "checkpage.h"
#include "kvmap.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* Python's comparison of two byte strings: <0, 0, >0. */
static int compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t common = alen < blen ? alen : blen;
    int c = common ? memcmp(a, b, common) : 0;     /* an empty key may come as a null pointer */
    if (c)
        return c;
    return (alen > blen) - (alen < blen);
}

/* One pread of len bytes at off, retried on EINTR: the bytes read, or -errno. */
static int64_t read_at(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    for (;;) {
        ssize_t got = pread(fd, buf, len, (off_t)off);
        if (got >= 0)
            return got;
        if (errno != EINTR)
            return -errno;
    }
}

static int checksum_holds(const uint8_t *page, uint32_t page_size)
{
    return kvm_crc32c(0, page + 4, page_size - 4) == le32(page + CKP_PH_CHECKSUM);
}

size_t ckp_max_events(uint32_t page_size)
{
    return (size_t)(page_size - CKP_PH_SIZE) / 2 * 2 + 2;
}

int ckp_header_verdict(const ckp_geometry *g, uint64_t pgno, const uint8_t *buf, size_t got, size_t need,
                       unsigned types)
{
    if (got < need || got < CKP_PH_SIZE)
        return CKP_PAGE_SHORT;
    if (le64(buf + CKP_PH_PGNO) != pgno)
        return CKP_PAGE_MISPLACED;
    unsigned type = buf[CKP_PH_TYPE];
    if (type >= 8 * sizeof types || !(types >> type & 1))
        return CKP_PAGE_TYPE;
    if (le64(buf + CKP_PH_TXNID) > g->txnid)
        return CKP_PAGE_NEWER;
    return CKP_PAGE_OK;
}

/* The rules of key order within a page and of the range [lo, hi) its
** ancestors set: the first cell that breaks each, and how many do. */
typedef struct {
    const uint8_t *lo, *hi;
    int64_t lo_length, hi_length;      /* -1: no bound (an empty key is a bound) */
    int has_prev;                      /* the key a cell is compared with: */
    uint32_t prev, prev_length;        /* the last one checked, in the page */
    ckp_event order, range;
} order_rules;

/* The key at offset key in the page is the one the next cell's is compared with. */
static void order_follow(order_rules *r, uint32_t key, uint32_t klen)
{
    r->has_prev = 1;
    r->prev = key;
    r->prev_length = klen;
}

static void order_check(order_rules *r, const uint8_t *page, uint32_t cell, uint32_t key, uint32_t klen)
{
    const uint8_t *k = page + key;
    if (r->has_prev && compare(page + r->prev, r->prev_length, k, klen) >= 0) {
        if (!r->order.count++)
            r->order = (ckp_event){CKP_KEY_ORDER, cell, key, r->prev, r->prev_length, 1, klen, 0};
    }
    if ((r->lo_length >= 0 && compare(k, klen, r->lo, (size_t)r->lo_length) < 0) ||
        (r->hi_length >= 0 && compare(k, klen, r->hi, (size_t)r->hi_length) >= 0)) {
        if (!r->range.count++)
            r->range = (ckp_event){CKP_KEY_RANGE, cell, key, 0, 0, 1, klen, 0};
    }
    order_follow(r, key, klen);
}

typedef struct {
    ckp_event *events;
    size_t n;
} event_list;

static void add(event_list *l, ckp_event e) { l->events[l->n++] = e; }

static void order_close(order_rules *r, event_list *l)
{
    int order_first = r->order.count && (!r->range.count || r->order.cell <= r->range.cell);
    if (order_first)
        add(l, r->order);
    if (r->range.count)
        add(l, r->range);
    if (r->order.count && !order_first)
        add(l, r->order);
}

/* The key of cell i of a branch or leaf page (head: the cell's bytes before
** its key): its offset, with the cell's offset and the key's length; or 0
** when the cell or its key does not lie within the page (the event added,
** the cell ruled out). */
static uint32_t cell_key(const uint8_t *buf, uint32_t ps, const ckp_page *res, uint32_t i, uint32_t head,
                         event_list *l, ckp_cell *cells, uint32_t *offset, uint32_t *length)
{
    uint32_t off = le16(buf + CKP_PH_SIZE + 2 * i), problem = 0, klen = 0;
    if (off < res->upper || off + head > ps) {
        problem = CKP_CELL_OFFSET;
    } else {
        klen = le16(buf + off);
        if (off + head + klen > ps)
            problem = CKP_KEY_PAST_END;
    }
    if (problem) {
        add(l, (ckp_event){problem, i, off, 0, 0, 0, klen, 0});
        if (cells)
            cells[i] = (ckp_cell){problem, 0, 0, 0, 0, 0};
        return 0;
    }
    *offset = off;
    *length = klen;
    return off + head;
}

static void leaf_cells(const ckp_geometry *g, const uint8_t *buf, ckp_page *res, order_rules *r, event_list *l,
                       ckp_cell *cells)
{
    const uint32_t ps = g->page_size;
    uint64_t used = 2 * (uint64_t)res->nkeys;
    for (uint32_t i = 0; i < res->nkeys; i++) {
        uint32_t off, klen, key = cell_key(buf, ps, res, i, CKP_LEAF_HDR, l, cells, &off, &klen);
        if (!key)
            continue;
        uint32_t vlen = le32(buf + off + 2), end = key + klen;
        int inline_value = 8 + (uint64_t)klen + vlen <= g->max_cell;
        uint64_t clen = CKP_LEAF_HDR + (uint64_t)klen + (inline_value ? vlen : 8);
        int past_end = off + clen > ps;
        if (past_end) {
            add(l, (ckp_event){CKP_CELL_PAST_END, i, off, 0, 0, 0, clen, 0});
            if (cells)
                cells[i] = (ckp_cell){CKP_CELL_PAST_END, key, klen, 0, 0, 0};
            if (!g->every_key)
                continue;
        } else {
            used += clen;
            res->entries++;
        }
        if (klen < 1 || klen > g->max_key)
            add(l, (ckp_event){CKP_KEY_LENGTH, i, off, 0, 0, 0, klen, 0});
        order_check(r, buf, i, key, klen);
        if (past_end)
            continue;
        uint64_t first = inline_value ? 0 : le64(buf + end);
        if (!inline_value)
            add(l, (ckp_event){CKP_OVERFLOW, i, off, 0, 0, 0, vlen, first});
        if (cells)
            cells[i] = (ckp_cell){0, key, klen, inline_value ? end : 0, vlen, first};
    }
    res->used = used;
}

static void branch_cells(const ckp_geometry *g, const uint8_t *buf, ckp_page *res, order_rules *r, event_list *l,
                         ckp_cell *cells)
{
    for (uint32_t i = 0; i < res->nkeys; i++) {
        uint32_t off, klen, key = cell_key(buf, g->page_size, res, i, CKP_BRANCH_HDR, l, cells, &off, &klen);
        if (!key)
            continue;
        if (i == 0) {
            /* cell 0 stands for every key below cell 1's: its own must be empty; the
            ** check compares cell 1 with the range only, salvage with this empty key too */
            if (klen)
                add(l, (ckp_event){CKP_FIRST_KEY, i, off, 0, 0, 0, klen, 0});
            if (g->every_key)
                order_follow(r, key, klen);
        } else {
            order_check(r, buf, i, key, klen);
        }
        if (cells)
            cells[i] = (ckp_cell){0, key, klen, 0, 0, le64(buf + off + 2)};
    }
}

int ckp_tree_page(const ckp_geometry *g, uint64_t pgno, const uint8_t *buf, size_t got, int leaf,
                  const uint8_t *lo, int64_t lo_length, const uint8_t *hi, int64_t hi_length,
                  ckp_page *res, ckp_event *events, size_t event_cap, ckp_cell *cells)
{
    const uint32_t ps = g->page_size;
    *res = (ckp_page){.verdict = CKP_PAGE_OK, .checksum = -1};
    if (g->checksums && got >= ps)
        res->checksum = checksum_holds(buf, ps);
    res->verdict = ckp_header_verdict(g, pgno, buf, got, ps, 1u << CKP_PT_BRANCH | 1u << CKP_PT_LEAF);
    if (res->verdict)
        return 0;
    int is_leaf = buf[CKP_PH_TYPE] == CKP_PT_LEAF;
    if (is_leaf != !!leaf) {
        res->verdict = CKP_PAGE_DEPTH;
        return 0;
    }
    res->nkeys = le16(buf + CKP_PH_NKEYS);
    res->upper = le32(buf + CKP_PH_UPPER);
    if (CKP_PH_SIZE + 2 * (uint64_t)res->nkeys > res->upper || res->upper > ps || (!is_leaf && !res->nkeys)) {
        res->verdict = CKP_PAGE_COUNTS;
        return 0;
    }
    if (event_cap < ckp_max_events(ps))
        return -ENOBUFS;
    order_rules r = {.lo = lo, .hi = hi, .lo_length = lo_length, .hi_length = hi_length};
    event_list l = {events, 0};
    if (is_leaf)
        leaf_cells(g, buf, res, &r, &l, cells);
    else
        branch_cells(g, buf, res, &r, &l, cells);
    order_close(&r, &l);
    res->nevents = (uint32_t)l.n;
    return 0;
}

/* The next cell of a branch from cell i that is sound (its key within the
** page), or nkeys. */
static uint32_t sound_cell(const ckp_cell *cells, uint32_t nkeys, uint32_t i)
{
    while (i < nkeys && cells[i].status)
        i++;
    return i;
}

int64_t ckp_leaves(int fd, const ckp_geometry *g, const uint8_t *branch, const ckp_cell *cells, uint32_t nkeys,
                   uint32_t from, const uint8_t *lo, int64_t lo_length, const uint8_t *hi, int64_t hi_length,
                   size_t n, uint8_t *buf, ckp_page *out, ckp_event *events, size_t event_cap, uint8_t *sums)
{
    const uint32_t ps = g->page_size;
    const size_t most = ckp_max_events(ps);
    size_t used = 0, k = 0;
    for (uint32_t cell = sound_cell(cells, nkeys, from); cell < nkeys && k < n; k++) {
        if (event_cap - used < most)
            break;                       /* the caller takes these and calls again for the rest */
        uint32_t next = sound_cell(cells, nkeys, cell + 1);
        /* the leaf's range: from its cell's key (cell 0: the branch's lower bound) to the next
        ** sound cell's key (none: the branch's upper bound) */
        const uint8_t *klo = cell ? branch + cells[cell].key : lo;
        int64_t klo_length = cell ? (int64_t)cells[cell].key_length : lo_length;
        const uint8_t *khi = next < nkeys ? branch + cells[next].key : hi;
        int64_t khi_length = next < nkeys ? (int64_t)cells[next].key_length : hi_length;
        uint8_t *page = buf + k * (size_t)ps;
        uint64_t pgno = cells[cell].page;
        size_t got = 0;
        if (pgno >= CKP_META_PAGES && pgno < g->npages) {
            int64_t rc = read_at(fd, page, ps, pgno * ps);
            if (rc < 0)
                return rc;
            got = (size_t)rc;
        }
        int rc = ckp_tree_page(g, pgno, page, got, 1, klo, klo_length, khi, khi_length, &out[k],
                               events + used, event_cap - used, NULL);
        if (rc < 0)
            return rc;
        out[k].first_event = (uint32_t)used;
        out[k].cell = cell;
        out[k].next_cell = next < nkeys ? (int32_t)next : -1;
        out[k].pgno = pgno;
        used += out[k].nevents;
        if (sums && out[k].checksum >= 0)
            sums[pgno] = out[k].checksum ? CKP_SUM_HOLDS : CKP_SUM_FAILS;
        cell = next;
    }
    return (int64_t)k;
}

int ckp_overflow_chain(int fd, const ckp_geometry *g, uint64_t first, uint64_t pieces, uint8_t *owner,
                       uint8_t code, ckp_chain *out)
{
    const uint32_t ps = g->page_size;
    memset(out, 0, sizeof *out);
    uint64_t p = first;
    for (uint64_t k = 0; k < pieces; k++) {
        out->piece = (uint32_t)k;
        out->page = p;
        if (p < CKP_META_PAGES || p >= g->npages) {
            out->end = CKP_CHAIN_RANGE;
            return 0;
        }
        if (owner[p]) {
            out->end = CKP_CHAIN_TAKEN;
            return 0;
        }
        owner[p] = code;
        int64_t got = read_at(fd, out->header, CKP_PH_SIZE, p * ps);
        if (got < 0)
            return (int)got;
        out->verdict = ckp_header_verdict(g, p, out->header, (size_t)got, CKP_PH_SIZE, 1u << CKP_PT_OVERFLOW);
        if (out->verdict) {
            out->end = CKP_CHAIN_PAGE;
            return 0;
        }
        uint64_t next = le64(out->header + CKP_PH_NEXT);
        if (k == pieces - 1 && next) {
            out->end = CKP_CHAIN_LONG;
            out->next = next;
            return 0;
        }
        if (k < pieces - 1 && !next) {
            out->end = CKP_CHAIN_CUT;
            return 0;
        }
        p = next;
    }
    out->end = CKP_CHAIN_WHOLE;
    return 0;
}

uint64_t ckp_claim_run(uint8_t *owner, uint8_t *freed, uint64_t start, uint64_t count, uint8_t code, uint64_t most)
{
    uint64_t k = 0;
    for (; k < count && k < most; k++) {
        uint64_t p = start + k;
        freed[p] = 1;
        if (owner[p])
            break;
        owner[p] = code;
    }
    return k;
}

int ckp_bitmap_claims(const uint8_t *body, size_t len, uint64_t first, uint64_t hwm, uint64_t npages,
                      uint8_t *owner, uint8_t *freed, uint8_t code, uint64_t *bit, uint64_t *counted)
{
    *counted = 0;
    for (uint64_t b = *bit; b < 8 * (uint64_t)len; b++) {
        if (!(body[b / 8] >> (b % 8) & 1)) {
            if (!body[b / 8])
                b |= 7;                  /* the rest of a zero byte */
            continue;
        }
        *bit = b;
        if (b > UINT64_MAX - first || first + b < CKP_META_PAGES || first + b >= hwm)
            return CKP_BITS_OUTSIDE;
        uint64_t p = first + b;
        ++*counted;
        if (p < npages) {
            freed[p] = 1;
            if (owner[p])
                return CKP_BITS_TAKEN;
            owner[p] = code;
        }
    }
    *bit = 8 * (uint64_t)len;
    return CKP_BITS_END;
}

int ckp_checksums(int fd, uint32_t page_size, const uint8_t *want, uint8_t *sums, uint64_t from, uint64_t to,
                  uint8_t *buf, size_t buf_pages)
{
    uint64_t p = from;
    while (p < to) {
        if (!want[p] || sums[p] != CKP_SUM_UNKNOWN) {
            p++;
            continue;
        }
        /* a run of pages to verify, read at once */
        uint64_t run = 1;
        while (p + run < to && run < buf_pages && want[p + run] && sums[p + run] == CKP_SUM_UNKNOWN)
            run++;
        int64_t got = read_at(fd, buf, run * page_size, p * page_size);
        if (got < 0)
            return (int)got;
        for (uint64_t i = 0; i < run && (i + 1) * page_size <= (uint64_t)got; i++)
            sums[p + i] = checksum_holds(buf + i * page_size, page_size) ? CKP_SUM_HOLDS : CKP_SUM_FAILS;
        p += run;
    }
    return 0;
}
