/*
** copy.c -- db.copy(compact=False): a page-for-page copy of a snapshot's
** commit into a new file, and putting a finished copy in place
** (docs/ARCHITECTURE.md §5b).
**
** The snapshot is a registered reader, so no writer, in any process, reuses
** a page its commit reaches while the copy reads it (FORMAT.md §7), and no
** writer waits for it: the copy takes no lock.  What the commit reaches is
** every page below its high-water mark that is neither reusable (set in
** its bitmaps) nor pending (freed by a live record): the tree, overflow
** chains, the bitmap index and bitmaps, and the live records (FORMAT.md §6,
** the invariant).  Those pages are copied to the same page numbers, each
** verified first (checksum, page number, no newer than the commit), so a
** copy never passes damage on; the others are left as allocated zeros: a
** writer of the copy rewrites a page before it uses it.  Both metas of the
** copy name the commit with durable = its txnid, so opening the copy
** verifies no record and can fall back nowhere: it is what a close leaves
** (a sealed file).
**
** Every system call goes through kvm_sys (os.c), so the fault loops and the
** kill harness reach each of them.  The copy is written to a temporary
** name, synced, and only then renamed into place (kvm_file_install) with
** the directory synced: a crash leaves no half copy at the destination.
*/
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

/* Bytes read per pread.  Writes go out in runs of COPY_WRITE_RUN pages, the
** commit's WRITE_RUN (txn.c): larger writes leave large page-cache folios
** behind, and the copy's later 4 KiB commits would pay for them. */
#define COPY_CHUNK     (1u << 20)
#define COPY_WRITE_RUN 16

/* The pages of commit s that it does not reach: its reusable pages and its
** pending ones, read from its free-space pages (freelist_load, which checks
** them and their counts against the meta's). */
static int unreached_pages(kvm_env *e, const kvm_state *s, kvm_freemap **out)
{
    kvm_space *sp;
    int rc = space_new(&sp, e->psize, s->hwm);
    if (rc)
        return rc;
    rc = freelist_load(e, sp, s);
    for (size_t i = 0; i < sp->npending && !rc; i++)   /* disjoint from the reusable pages: add says so */
        rc = kvm_fm_add(sp->fm, sp->pending[i].runs.v, sp->pending[i].runs.n / 2);
    if (!rc) {
        *out = sp->fm;
        sp->fm = NULL;
    }
    space_free(sp);
    return rc;
}

/* Read n pages from page pg of the database into buf, each verified as a
** page of commit s. */
static int read_verified(kvm_env *e, const kvm_state *s, uint64_t pg, size_t n, uint8_t *buf)
{
    size_t want = n * e->psize, got = 0;
    while (got < want) {
        ssize_t r = kvm_sys.pread(e->fd, buf + got, want - got, (off_t)(pg * e->psize + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return kvm_err_sys(KVM_IO, errno, "reading the database for the copy");
        if (r == 0)
            return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file",
                           (unsigned long long)(pg + got / e->psize));
        got += (size_t)r;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = buf + i * e->psize;
        if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, e->psize - 4) || rd64(p + PH_PGNO) != pg + i ||
            rd64(p + PH_TXNID) > s->txnid)
            return kvm_err(KVM_CORRUPT, "page %llu is damaged (%s): the copy stops rather than pass it on",
                           (unsigned long long)(pg + i),
                           rd64(p + PH_PGNO) != pg + i && rd32(p + PH_CHECKSUM) == kvm_crc32c(0, p + 4, e->psize - 4)
                               ? "it names another page"
                           : rd64(p + PH_TXNID) > s->txnid ? "newer than the commit copied" : "checksum mismatch");
    }
    return 0;
}

/* Copy every page of s that the commit reaches (not in `unreached`) to fd. */
static int copy_reached(kvm_env *e, const kvm_state *s, kvm_freemap *unreached, int fd, uint8_t *buf)
{
    size_t chunk = COPY_CHUNK / e->psize ? COPY_CHUNK / e->psize : 1;
    for (uint64_t pg = kvm_fm_find(unreached, META_PAGES, s->hwm, 0); pg < s->hwm;) {
        uint64_t end = kvm_fm_find(unreached, pg, s->hwm, 1);
        while (pg < end) {
            /* close() waits for calls in flight: let it in between two reads */
            if (__atomic_load_n(&e->closing, __ATOMIC_SEQ_CST))
                return kvm_err(KVM_CLOSED, "database is closed");
            size_t n = end - pg < chunk ? (size_t)(end - pg) : chunk;
            int rc = read_verified(e, s, pg, n, buf);
            for (size_t i = 0; i < n && !rc; i += COPY_WRITE_RUN) {
                size_t k = n - i < COPY_WRITE_RUN ? n - i : COPY_WRITE_RUN;
                struct iovec iov = {buf + i * e->psize, k * e->psize};
                rc = fd_write(fd, &iov, 1, (off_t)((pg + i) * e->psize), "writing the copy");
            }
            if (rc)
                return rc;
            pg += n;
        }
        pg = kvm_fm_find(unreached, end, s->hwm, 0);
    }
    return 0;
}

/* Every meta page: commit s, durable (so sealed, FORMAT.md §7). */
static int write_metas(kvm_env *e, const kvm_state *s, int fd)
{
    uint8_t *m = calloc(META_PAGES, e->psize);
    if (!m)
        return kvm_err(KVM_NOMEM, "allocating meta pages");
    kvm_state sealed = *s;
    sealed.durable = sealed.txnid;
    sealed.flags &= ~M_FLAGS_NOSYNC;
    for (unsigned i = 0; i < META_PAGES; i++)
        meta_encode(m + (size_t)i * e->psize, e->psize, &sealed);
    struct iovec iov = {m, (size_t)META_PAGES * e->psize};
    int rc = fd_write(fd, &iov, 1, 0, "writing the copy's meta pages");
    free(m);
    return rc;
}

/* The copy of snapshot t's commit into a new file at tmp: created (it must
** not exist) with the database file's permission bits, allocated whole,
** written, synced and closed.  On failure the file is removed. */
static int copy_snapshot(kvm_txn *t, const char *tmp)
{
    kvm_env *e = t->env;
    const kvm_state *s = &t->commit;
    kvm_filestat fs;
    if (kvm_sys.fstat(e->fd, &fs) != 0)
        return kvm_err_sys(KVM_IO, errno, "reading the database file's size");
    kvm_freemap *unreached = NULL;
    int rc = unreached_pages(e, s, &unreached);
    uint8_t *buf = rc ? NULL : malloc(COPY_CHUNK > e->psize ? COPY_CHUNK : e->psize);
    if (!rc && !buf)
        rc = kvm_err(KVM_NOMEM, "allocating the copy's buffer");
    int fd = -1;
    if (!rc && (fd = kvm_sys.open(tmp, O_WRONLY | O_CREAT | O_EXCL, (int)(fs.mode & 0777))) < 0)
        rc = kvm_err_sys(KVM_IO, errno, "creating the copy");
    if (!rc) {
        /* every page at once: a full disk is DiskFullError here, before a
        ** byte is written, and never a short write later */
        int err = kvm_sys.posix_fallocate(fd, 0, (off_t)(s->hwm * e->psize));
        if (err)
            rc = kvm_err_sys(space_code(err), err, "allocating the copy");
    }
    if (!rc)
        rc = copy_reached(e, s, unreached, fd, buf);
    if (!rc)
        rc = write_metas(e, s, fd);
    if (!rc && kvm_sys.fdatasync(fd) != 0)
        rc = kvm_err_sys(space_code(errno), errno, "syncing the copy");
    if (fd >= 0 && kvm_sys.close(fd) != 0 && !rc)
        rc = kvm_err_sys(KVM_IO, errno, "closing the copy");
    if (rc && fd >= 0)
        kvm_sys.unlink(tmp);
    free(buf);
    kvm_fm_free(unreached);
    return rc;
}

int kvm_txn_copy(kvm_txn *t, const char *tmp)
{
    /* Claimed as a commit claims its transaction: closing the snapshot
    ** from another thread waits for the copy, so its reader slot (what
    ** keeps writers off the pages being read) lives until the copy ends. */
    int rc = kvm_txn_claim(t);
    if (rc)
        return rc;
    rc = t->write ? kvm_err(KVM_INVALID, "a copy is made from a snapshot, not a write transaction")
                  : copy_snapshot(t, tmp);
    __atomic_store_n(&t->busy, 0, __ATOMIC_RELEASE);
    txn_leave(t);
    return rc;
}

int kvm_file_install(const char *tmp, const char *dest, int replace)
{
    if (kvm_sys.rename(tmp, dest, replace) != 0) {
        int err = errno;
        kvm_sys.unlink(tmp);
        return kvm_err_sys(KVM_IO, err, "putting the copy in place");
    }
    /* The new name is durable only once its directory is synced.  If that
    ** fails, the copy is taken away again: an error means no copy. */
    if (kvm_sys.fsync_dir(dest) != 0) {
        int err = errno;
        kvm_sys.unlink(dest);
        return kvm_err_sys(space_code(err), err, "syncing the copy's directory");
    }
    return 0;
}
