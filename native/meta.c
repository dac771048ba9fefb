/*
** meta.c -- the three meta pages, the choice of meta at open, and creation.
**
** Design and invariants (FORMAT.md §2 and §8)
**  1. A meta is valid when its magic, checksum, version and fields hold.
**     Open takes the newest valid meta whose file is long enough, whose
**     commits not known durable have all their pages as their records list
**     them (freelist.c, records_verify), and whose leftmost and rightmost
**     root-to-leaf paths verify (checksums, types, page numbers, the root
**     written by the meta's own commit).  When that meta's commits do not
**     verify, it falls back to the newest other meta no older than the
**     durable commit the meta names (a slot holds that one; a flush that
**     completed may have made a newer one durable); any other failure is
**     damage.
**  2. A new file is allocated first (posix_fallocate: a full disk is an
**     error before anything is written), then written and synced with its
**     directory.  Whatever an interrupted creation leaves (at most three
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
    wr64(m + M_RECORD, s->record);
    wr64(m + M_FREE_COUNT, s->free_count);
    wr64(m + M_PENDING_COUNT, s->pending_count);
    wr64(m + M_FLOOR, s->floor);
    wr64(m + M_DURABLE, s->durable);
    wr32(m + M_CHECKSUM, kvm_crc32c(0, m, M_CHECKSUM));
}

/* 0: valid; KVM_FORMAT: not a kvmap meta; KVM_VERSION_OLD: a version 1 or 2 meta;
** KVM_CORRUPT: damaged kvmap meta. */
#define KVM_VERSION_OLD 1
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
        uint32_t v = rd32(m + M_VERSION);
        *why = v == 1 ? "1" : v == 2 ? "2" : "unsupported format version";
        return v == 1 || v == 2 ? KVM_VERSION_OLD : KVM_FORMAT;
    }
    uint32_t ps = rd32(m + M_PAGESIZE);
    s->txnid = rd64(m + M_TXNID);
    s->root = rd64(m + M_ROOT);
    s->depth = rd32(m + M_DEPTH);
    s->flags = rd32(m + M_FLAGS);
    s->entries = rd64(m + M_ENTRIES);
    s->hwm = rd64(m + M_HWM);
    s->free_index = rd64(m + M_FREE_INDEX);
    s->record = rd64(m + M_RECORD);
    s->free_count = rd64(m + M_FREE_COUNT);
    s->pending_count = rd64(m + M_PENDING_COUNT);
    s->floor = rd64(m + M_FLOOR);
    s->durable = rd64(m + M_DURABLE);
    *why = "meta fields out of range";
    if (ps < KVM_MIN_PAGE || ps > KVM_MAX_PAGE || (ps & (ps - 1)))
        return KVM_CORRUPT;
    if (s->hwm < META_PAGES || s->hwm > (UINT64_MAX / ps))
        return KVM_CORRUPT;
    if ((s->root == 0) != (s->depth == 0) || s->depth > KVM_MAX_DEPTH)
        return KVM_CORRUPT;
    if (s->root == 0 && s->entries != 0)
        return KVM_CORRUPT;
    if ((s->root && (s->root < META_PAGES || s->root >= s->hwm)) ||
        (s->free_index && (s->free_index < META_PAGES || s->free_index >= s->hwm)) ||
        (s->record && (s->record < META_PAGES || s->record >= s->hwm)))
        return KVM_CORRUPT;
    if (s->free_count + s->pending_count > s->hwm)
        return KVM_CORRUPT;
    /* every commit has a record; released commits and durable ones precede it */
    if ((s->txnid >= 2) != (s->record != 0) || s->durable > s->txnid || s->floor > s->durable ||
        (s->txnid >= 2 && s->floor >= s->txnid))
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

/* The meta pages a new database starts with (caller frees), or NULL:
** txnids 0, 1 and 0, the one in slot 1 durable, so the first commit (2)
** goes to another slot. */
static uint8_t *creation_image(uint32_t ps)
{
    uint8_t *buf = calloc(META_PAGES, ps);
    if (!buf)
        return NULL;
    kvm_state s = {0};
    s.hwm = META_PAGES;
    meta_encode(buf, ps, &s);
    meta_encode(buf + 2 * ps, ps, &s);
    s.txnid = s.durable = 1;
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
    int rc = kvm_sys.posix_fallocate(e->fd, 0, META_PAGES * (off_t)ps);
    if (rc) {
        free(buf);
        if (e->file_size == 0)
            kvm_sys.ftruncate(e->fd, 0);   /* ext4 keeps what it got */
        return kvm_err_sys(space_code(rc), rc, "allocating the new database file");
    }
    struct iovec iov = {buf, (size_t)META_PAGES * ps};
    rc = file_write(e, &iov, 1, 0, "initialising the database file");
    free(buf);
    if (rc)
        return rc;
    if (kvm_sys.fdatasync(e->fd) != 0 || kvm_sys.fsync_dir(e->path) != 0)
        return kvm_err_sys(space_code(errno), errno, "syncing the new database file");
    kvm_state s = {0};
    s.hwm = META_PAGES;
    s.txnid = s.durable = 1;
    e->psize = ps;
    e->file_size = (uint64_t)META_PAGES * ps;
    e->sh->st = s;
    e->sh->meta_slot = e->sh->durable_slot = 1;
    e->sh->durable = 1;
    return 0;
}

/* 1 when the file holds nothing but what an interrupted init_file leaves:
** at most its three pages, every byte either the creation image's or zero
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
    if (e->file_size > (uint64_t)META_PAGES * ps)
        return 0;
    *psp = ps;
    uint8_t *img = creation_image(ps), *buf = malloc((size_t)META_PAGES * ps);
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
        if (pg < META_PAGES || pg >= s->hwm) {
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

/* Whether meta state s can be used: its file is long enough, the pages of
** its commits not known durable verify against their records, and its
** tree's edge paths verify. */
static int meta_usable(kvm_env *e, const kvm_state *s, int slot)
{
    if (s->hwm * e->psize > e->file_size)
        return kvm_err(KVM_CORRUPT, "%s is truncated: meta %d needs %llu bytes, the file has %llu", e->path, slot,
                       (unsigned long long)(s->hwm * e->psize), (unsigned long long)e->file_size);
    int rc = records_verify(e, s);
    if (!rc && !(rc = verify_path(e, s, 0)))
        rc = verify_path(e, s, 1);
    return rc;
}

/* A writer that died after writing its commit's meta and before publishing
** it (sh->meta_pending) left a complete commit: its pages were all written
** before its meta, and a process's death tears no write.  It is the newest
** commit -- the first opener would take it -- so it is taken now, before a
** writer reuses its pages as free or overwrites its slot.  Under the
** writer lock (txn.c, writer_follow). */
/* The pages the file must keep for every meta (open may take any): its
** hwm and the runs its live records name (records_pages_needed); 0 when a
** meta or a record cannot be read (then keep everything). */
uint64_t meta_pages_needed(kvm_env *e)
{
    uint64_t need = 0;
    for (int slot = 0; slot < (int)META_PAGES; slot++) {
        kvm_state s;
        uint32_t ps = 0;
        uint64_t n;
        const char *why = "";
        if (meta_read(e, (uint64_t)slot * e->psize, &s, &ps, &why) != 0 || ps != e->psize ||
            records_pages_needed(e, &s, &n) != 0)
            return 0;
        if (n > need)
            need = n;
    }
    return need;
}

int meta_adopt_pending(kvm_env *e)
{
    uint64_t pending = e->sh->meta_pending;
    if (!pending)
        return 0;
    int slot = e->sh->pending_slot;   /* where that commit wrote its meta (txn.c) */
    kvm_state s;
    uint32_t ps = 0;
    const char *why = "";
    int rc = meta_read(e, (uint64_t)slot * e->psize, &s, &ps, &why);
    if (rc == KVM_IO)
        return rc;
    if (!rc && ps == e->psize && s.txnid == pending) {
        if ((rc = env_follow(e, &s)))   /* the file as that writer grew it */
            return rc;
        state_publish(e, &s);
        e->sh->meta_slot = slot;
    }
    e->sh->meta_pending = 0;
    return 0;
}

/* The slots in the order open considers them: newest commit first, and of
** equal commits the one whose meta says it is durable (a sealed copy). */
static void slot_order(const kvm_state *s, const int *rc, int *order, int *n)
{
    *n = 0;
    for (int i = 0; i < (int)META_PAGES; i++)
        if (!rc[i])
            order[(*n)++] = i;
    for (int i = 1; i < *n; i++)
        for (int j = i; j > 0; j--) {
            const kvm_state *a = &s[order[j]], *b = &s[order[j - 1]];
            if (a->txnid < b->txnid || (a->txnid == b->txnid && a->durable <= b->durable))
                break;
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

int load_meta(kvm_env *e, uint32_t want_ps)
{
    kvm_state s[META_PAGES];
    uint32_t ps[META_PAGES] = {0};
    const char *why[META_PAGES];
    int rc[META_PAGES];
    for (int i = 0; i < (int)META_PAGES; i++) {
        rc[i] = KVM_FORMAT;
        why[i] = "no such meta page";
    }
    rc[0] = meta_read(e, 0, &s[0], &ps[0], &why[0]);
    if (rc[0] == KVM_IO)
        return rc[0];
    /* the other metas at multiples of meta 0's page size, or, when meta 0 is
    ** not valid, of the first page size at which one of them is */
    for (uint32_t cand = KVM_MIN_PAGE; cand <= KVM_MAX_PAGE; cand <<= 1) {
        if (rc[0] == 0 && cand != ps[0])
            continue;
        int found = 0;
        for (int i = 1; i < (int)META_PAGES; i++) {
            if (e->file_size < (uint64_t)i * cand + META_SIZE)
                break;
            rc[i] = meta_read(e, (uint64_t)i * cand, &s[i], &ps[i], &why[i]);
            if (rc[i] == KVM_IO)
                return rc[i];
            if (rc[i] == 0 && ps[i] != cand) {
                rc[i] = KVM_CORRUPT;
                why[i] = "page size field disagrees with the meta page's position";
            }
            found |= rc[i] == 0;
        }
        if (found || rc[0] == 0)
            break;
    }
    int order[META_PAGES], nvalid;
    slot_order(s, rc, order, &nvalid);
    e->metas_valid = nvalid;
    if (!nvalid) {
        for (int i = 0; i < (int)META_PAGES; i++)
            if (rc[i] == KVM_VERSION_OLD)
                return kvm_err(KVM_FORMAT, "%s is a kvmap version %s file; this kvmap reads version %u: copy its "
                                           "data into a new file with `kvmap-check --salvage %s NEW`",
                               e->path, why[i], KVM_VERSION, e->path);
        int all_format = rc[0] == KVM_FORMAT && rc[1] == KVM_FORMAT && rc[2] == KVM_FORMAT;
        if (all_format)
            return kvm_err(KVM_FORMAT, "%s is not a kvmap database (%s)", e->path, why[0]);
        return kvm_err(KVM_CORRUPT, "%s: no valid meta page (meta 0: %s; meta 1: %s; meta 2: %s)", e->path, why[0],
                       why[1], why[2]);
    }
    uint32_t psize = ps[order[0]];
    for (int k = 1; k < nvalid; k++)
        if (ps[order[k]] != psize)
            return kvm_err(KVM_CORRUPT, "%s: the meta pages disagree on the page size", e->path);
    if (want_ps && want_ps != psize)
        return kvm_err(KVM_FORMAT, "%s has %u-byte pages, not %u", e->path, psize, want_ps);
    e->psize = psize;
    /* The newest valid meta, if its commits verify (FORMAT.md §2, §7).  A
    ** meta whose checksum fails was torn by a crash: its commit never
    ** completed.  A valid meta whose commits do not verify is what a power
    ** loss leaves of commits not yet durable: open falls back to the newest
    ** other meta no older than the durable commit it names (that one, or
    ** one a flush made durable since).  Anything else is damage. */
    const kvm_state *m = &s[order[0]];
    int use = order[0], last = meta_usable(e, m, use), fallback = 0;
    if (last == KVM_CORRUPT && m->durable < m->txnid) {
        int tried = 0;
        for (int k = 1; k < nvalid && !fallback; k++) {
            const kvm_state *o = &s[order[k]];
            if (o->txnid < m->durable || o->txnid >= m->txnid)
                continue;
            int rc_o = meta_usable(e, o, order[k]);
            if (rc_o && rc_o != KVM_CORRUPT)
                return rc_o;
            tried = 1;
            if (!rc_o) {
                use = order[k];
                fallback = 1;
                last = 0;
            }
        }
        if (tried && !fallback)
            last = meta_usable(e, m, order[0]);   /* report the newest meta's damage */
    }
    if (last)
        return last;
    e->sh->st = s[use];
    e->sh->meta_slot = use;
    e->meta_fallback = fallback;
    /* what is known durable: the chosen commit if its meta says so (or it is
    ** a fallback), else the commit it names, in the slot holding it (none:
    ** the chosen one's, and the first writer flushes before it writes) */
    int known = fallback || s[use].durable >= s[use].txnid;
    e->sh->durable = known ? s[use].txnid : s[use].durable;
    e->sh->durable_slot = use;
    for (int k = 0; k < nvalid && !known; k++)
        if (s[order[k]].txnid == s[use].durable)
            e->sh->durable_slot = order[k];
    return 0;
}
