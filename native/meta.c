/*
** meta.c -- the two meta pages, the choice of meta at open, and creation.
**
** Design and invariants (FORMAT.md §2 and §8)
**  1. A meta is valid when its magic, checksum, version and fields hold.
**     Open takes the newest valid meta whose file is long enough and whose
**     leftmost and rightmost root-to-leaf paths verify (checksums, types,
**     page numbers, the root written by the meta's own commit); it falls back
**     to the older meta only when the newer one was a sync=False commit.
**  2. A new file is allocated first (posix_fallocate: a full disk is an
**     error before anything is written), then written and synced with its
**     directory.  Whatever an interrupted creation leaves (at most two
**     pages, every byte the creation image's or zero) holds no data, and a
**     writable open initialises it.
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

/* -------------------------------------------------------------- meta pages */

void meta_encode(uint8_t *m, uint32_t psize, const kvm_state *s)
{
    memset(m, 0, META_SIZE);
    memcpy(m + M_MAGIC, KVM_MAGIC, 8);
    wr32(m + M_VERSION, KVM_VERSION);
    wr32(m + M_PAGESIZE, psize);
    wr64(m + M_TXNID, s->txnid);
    wr64(m + M_ROOT, s->root);
    wr32(m + M_DEPTH, s->depth);
    wr32(m + M_FLAGS, s->flags);
    wr64(m + M_ENTRIES, s->entries);
    wr64(m + M_HWM, s->hwm);
    wr64(m + M_FREE_INDEX, s->free_index);
    wr64(m + M_FREE_PENDING, s->free_pending);
    wr64(m + M_FREE_COUNT, s->free_count);
    wr64(m + M_PENDING_COUNT, s->pending_count);
    wr64(m + M_PENDING_FLOOR, s->pending_floor);
    wr32(m + M_CHECKSUM, kvm_crc32c(0, m, M_CHECKSUM));
}

/* 0: valid; KVM_FORMAT: not a kvmap meta; KVM_CORRUPT: damaged kvmap meta. */
static int meta_decode(const uint8_t *m, kvm_state *s, uint32_t *psize, const char **why)
{
    if (memcmp(m + M_MAGIC, KVM_MAGIC, 8) != 0) {
        *why = "bad magic";
        return KVM_FORMAT;
    }
    if (rd32(m + M_CHECKSUM) != kvm_crc32c(0, m, M_CHECKSUM)) {
        *why = "meta checksum mismatch";
        return KVM_CORRUPT;
    }
    if (rd32(m + M_VERSION) != KVM_VERSION) {
        *why = "unsupported format version";
        return KVM_FORMAT;
    }
    uint32_t ps = rd32(m + M_PAGESIZE);
    s->txnid = rd64(m + M_TXNID);
    s->root = rd64(m + M_ROOT);
    s->depth = rd32(m + M_DEPTH);
    s->flags = rd32(m + M_FLAGS);
    s->entries = rd64(m + M_ENTRIES);
    s->hwm = rd64(m + M_HWM);
    s->free_index = rd64(m + M_FREE_INDEX);
    s->free_pending = rd64(m + M_FREE_PENDING);
    s->free_count = rd64(m + M_FREE_COUNT);
    s->pending_count = rd64(m + M_PENDING_COUNT);
    s->pending_floor = rd64(m + M_PENDING_FLOOR);
    *why = "meta fields out of range";
    if (ps < KVM_MIN_PAGE || ps > KVM_MAX_PAGE || (ps & (ps - 1)))
        return KVM_CORRUPT;
    if (s->hwm < 2 || s->hwm > (UINT64_MAX / ps))
        return KVM_CORRUPT;
    if ((s->root == 0) != (s->depth == 0) || s->depth > KVM_MAX_DEPTH)
        return KVM_CORRUPT;
    if (s->root == 0 && s->entries != 0)
        return KVM_CORRUPT;
    if ((s->root && (s->root < 2 || s->root >= s->hwm)) ||
        (s->free_index && (s->free_index < 2 || s->free_index >= s->hwm)) ||
        (s->free_pending && (s->free_pending < 2 || s->free_pending >= s->hwm)))
        return KVM_CORRUPT;
    if (s->free_count + s->pending_count > s->hwm)
        return KVM_CORRUPT;
    *psize = ps;
    return 0;
}

/* Read the meta at byte offset off; rc as meta_decode, KVM_IO on read error. */
static int meta_read(kvm_env *e, uint64_t off, kvm_state *s, uint32_t *ps, const char **why)
{
    uint8_t m[META_SIZE];
    ssize_t n = kvm_sys.pread(e->fd, m, META_SIZE, (off_t)off);
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading meta page");
    if (n < META_SIZE) {
        *why = "short read";
        return KVM_FORMAT;
    }
    return meta_decode(m, s, ps, why);
}

/* -------------------------------------------------------------- open/close */

/* The two meta pages a new database starts with (caller frees), or NULL. */
static uint8_t *creation_image(uint32_t ps)
{
    uint8_t *buf = calloc(2, ps);
    if (!buf)
        return NULL;
    kvm_state s = {0};
    s.hwm = 2;
    meta_encode(buf, ps, &s);
    s.txnid = 1;
    meta_encode(buf + ps, ps, &s);
    return buf;
}

/* Write the creation image.  Space first (posix_fallocate), so a full disk
** is DiskFullError before anything is written; a failure leaves what
** creation_leftover() accepts, which the next writable open initialises. */
int init_file(kvm_env *e, uint32_t ps)
{
    uint8_t *buf = creation_image(ps);
    if (!buf)
        return kvm_err(KVM_NOMEM, "allocating meta pages");
    int rc = kvm_sys.posix_fallocate(e->fd, 0, 2 * (off_t)ps);
    if (rc) {
        free(buf);
        if (e->file_size == 0)
            kvm_sys.ftruncate(e->fd, 0);   /* ext4 keeps what it got */
        return kvm_err_sys(space_code(rc), rc, "allocating the new database file");
    }
    struct iovec iov = {buf, 2ull * ps};
    rc = file_write(e, &iov, 1, 0, "initialising the database file");
    free(buf);
    if (rc)
        return rc;
    if (kvm_sys.fdatasync(e->fd) != 0 || kvm_sys.fsync_dir(e->path) != 0)
        return kvm_err_sys(space_code(errno), errno, "syncing the new database file");
    kvm_state s = {0};
    s.hwm = 2;
    s.txnid = 1;
    e->psize = ps;
    e->file_size = 2ull * ps;
    e->st = s;
    e->meta_slot = 1;
    return 0;
}

/* 1 when the file holds nothing but what an interrupted init_file leaves:
** at most its two pages, every byte either the creation image's or zero
** (any prefix, any subset of sectors written).  The page size is the one
** asked for (4096 by default), or the one a surviving meta header names.
** Such a file has no committed data in it.  0 otherwise; <0 on a read error. */
int creation_leftover(kvm_env *e, uint32_t want, uint32_t *psp)
{
    uint32_t ps = want ? want : KVM_MIN_PAGE;
    uint8_t head[M_PAGESIZE + 4];
    ssize_t n = kvm_sys.pread(e->fd, head, sizeof head, 0);
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading the meta pages");
    if (n == (ssize_t)sizeof head && memcmp(head + M_MAGIC, KVM_MAGIC, 8) == 0) {
        uint32_t hp = rd32(head + M_PAGESIZE);
        if (hp >= KVM_MIN_PAGE && hp <= KVM_MAX_PAGE && !(hp & (hp - 1))) {
            if (want && want != hp)
                return 0;
            ps = hp;
        }
    }
    if (e->file_size > 2ull * ps)
        return 0;
    *psp = ps;
    uint8_t *img = creation_image(ps), *buf = malloc(2ull * ps);
    int rc = 1;
    if (!img || !buf)
        rc = kvm_err(KVM_NOMEM, "allocating meta pages");
    else if ((n = kvm_sys.pread(e->fd, buf, e->file_size, 0)) != (ssize_t)e->file_size)
        rc = n < 0 ? kvm_err_sys(KVM_IO, errno, "reading the meta pages") : 0;
    for (uint64_t i = 0; rc == 1 && i < e->file_size; i++)
        rc = buf[i] == 0 || buf[i] == img[i];
    free(img);
    free(buf);
    return rc;
}

/* Read one tree path (leftmost or rightmost) with pread and check every page's
** checksum, type and page number: cheap proof that the chosen meta's tree
** was completely written. */
static int verify_path(kvm_env *e, const kvm_state *s, int rightmost)
{
    if (!s->root)
        return 0;
    uint8_t *p = malloc(e->psize);
    if (!p)
        return kvm_err(KVM_NOMEM, "allocating a page");
    pgno_t pg = s->root;
    int rc = 0;
    for (uint32_t l = 0; l < s->depth && !rc; l++) {
        int type = l + 1 < s->depth ? PT_BRANCH : PT_LEAF;
        if (pg < 2 || pg >= s->hwm) {
            rc = kvm_err(KVM_CORRUPT, "page number %llu out of range", (unsigned long long)pg);
            break;
        }
        ssize_t n = kvm_sys.pread(e->fd, p, e->psize, (off_t)(pg * e->psize));
        if (n != (ssize_t)e->psize) {
            rc = n < 0 ? kvm_err_sys(KVM_IO, errno, "reading a page")
                       : kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pg);
            break;
        }
        if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, e->psize - 4)) {
            rc = kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch", (unsigned long long)pg);
            break;
        }
        kvm_txn probe = {.env = e, .limit = s->hwm, .txnid = s->txnid};
        if ((rc = pg_check_node(&probe, p, pg, type)))
            break;
        /* Every commit rewrites the root (copy-on-write of the changed path):
        ** an older root is one a crash left in place of the commit's own. */
        if (l == 0 && rd64(p + PH_TXNID) != s->txnid) {
            rc = kvm_err(KVM_CORRUPT, "page %llu: root written by transaction %llu, not by the meta's %llu",
                         (unsigned long long)pg, (unsigned long long)rd64(p + PH_TXNID),
                         (unsigned long long)s->txnid);
            break;
        }
        if (type == PT_BRANCH) {
            unsigned n = rd16(p + PH_NKEYS);
            unsigned off = rd16(p + PH_SIZE + 2 * (rightmost ? n - 1 : 0));
            if (off + BRANCH_HDR > e->psize) {
                rc = kvm_err(KVM_CORRUPT, "page %llu: cell out of bounds", (unsigned long long)pg);
                break;
            }
            pg = rd64(p + off + 2);
        }
    }
    free(p);
    return rc;
}

int load_meta(kvm_env *e, uint32_t want_ps, int older)
{
    kvm_state s[2];
    uint32_t ps[2] = {0, 0};
    const char *why[2] = {"", ""};
    int rc[2];
    rc[0] = meta_read(e, 0, &s[0], &ps[0], &why[0]);
    if (rc[0] == KVM_IO)
        return rc[0];
    rc[1] = KVM_FORMAT;
    why[1] = "no second meta page";
    for (uint32_t cand = KVM_MIN_PAGE; cand <= KVM_MAX_PAGE; cand <<= 1) {
        if (rc[0] == 0 && cand != ps[0])
            continue;
        if (e->file_size < (uint64_t)cand + META_SIZE)
            break;
        rc[1] = meta_read(e, cand, &s[1], &ps[1], &why[1]);
        if (rc[1] == KVM_IO)
            return rc[1];
        if (rc[1] == 0 && ps[1] != cand) {
            rc[1] = KVM_CORRUPT;
            why[1] = "page size field disagrees with the meta page's position";
        }
        if (rc[1] == 0 || rc[0] == 0)
            break;
    }
    if (rc[0] && rc[1]) {
        if (rc[0] == KVM_FORMAT && rc[1] == KVM_FORMAT && strcmp(why[0], "unsupported format version") != 0)
            return kvm_err(KVM_FORMAT, "%s is not a kvmap database (%s)", e->path, why[0]);
        return kvm_err(rc[0] == KVM_FORMAT && rc[1] == KVM_FORMAT ? KVM_FORMAT : KVM_CORRUPT,
                       "%s: no valid meta page (meta 0: %s; meta 1: %s)", e->path, why[0], why[1]);
    }
    if (!rc[0] && !rc[1] && ps[0] != ps[1])
        return kvm_err(KVM_CORRUPT, "%s: the meta pages disagree on the page size", e->path);
    uint32_t psize = rc[0] == 0 ? ps[0] : ps[1];
    if (want_ps && want_ps != psize)
        return kvm_err(KVM_FORMAT, "%s has %u-byte pages, not %u", e->path, psize, want_ps);
    e->psize = psize;
    /* Newest valid meta first.  A meta whose checksum fails was torn by a
    ** crash: its commit never completed and the older meta is the state.  A
    ** valid meta whose file is too short or whose tree fails its checksums
    ** is damage to committed data: an error, unless that commit was made
    ** without sync (M_FLAGS_NOSYNC), where a power loss can leave exactly
    ** that and the older meta's tree is intact. */
    int order[2] = {0, 1};
    if (!rc[1] && (rc[0] || s[1].txnid > s[0].txnid)) {
        order[0] = 1;
        order[1] = 0;
    }
    int last = KVM_CORRUPT;
    for (int k = 0; k < 2; k++) {
        int i = order[k];
        if (rc[i])
            continue;
        if (k == 0 && older && !rc[order[1]] && (s[i].flags & M_FLAGS_NOSYNC)) {
            /* older: the caller (space_open) found more of this sync=False
            ** commit missing (its free list) and wants the state before it. */
            last = kvm_err(KVM_CORRUPT, "%s: meta %d passed over (its free list is damaged)", e->path, i);
            continue;
        }
        if (s[i].hwm * psize > e->file_size)
            last = kvm_err(KVM_CORRUPT, "%s is truncated: meta %d needs %llu bytes, the file has %llu",
                           e->path, i, (unsigned long long)(s[i].hwm * psize),
                           (unsigned long long)e->file_size);
        else if (!(last = verify_path(e, &s[i], 0)) && !(last = verify_path(e, &s[i], 1))) {
            e->st = s[i];
            e->meta_slot = i;
            e->meta_fallback = k == 1 && rc[order[0]] == 0;   /* a valid newer meta was passed over */
            return 0;
        }
        if (!(s[i].flags & M_FLAGS_NOSYNC))
            return last;
    }
    return last;
}
