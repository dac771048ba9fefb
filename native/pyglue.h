/*
** pyglue.h -- the preamble of the cffi module: which C calls let other
** Python threads run.  Included only by the generated module source, after
** Python.h.
**
** cffi releases the GIL around every call it wraps.  For kvmap's short
** calls (a get, a put, a cursor batch: micro-seconds) that is a loss: when
** another thread is busy in Python, taking the GIL back waits up to the
** switch interval (5 ms), so a writer's commit made of many small calls
** crawls while readers iterate (the GIL "convoy").  So the wrappers keep the
** GIL, and the calls that wait on the disk release it themselves: open,
** close, a syncing commit, sync() (fdatasync), warm() (reads the file) and
** copy() (reads, writes and syncs a whole file).
** Like Python's own mmap objects, a read that faults a page in from disk
** holds the GIL meanwhile.  kvmap-check's reads (checkpage.c) release it
** too: each reads a batch of pages, or an overflow chain, with pread.
*/
#include "checkpage.h"
#include "kvmap.h"

/* cdef-begin */
int  kvm_env_open_released(const char *path, const kvm_options *opt, kvm_env **out);
void kvm_env_close_released(kvm_env *e);
int  kvm_txn_commit_released(kvm_txn *t, int sync);
int  kvm_env_sync_released(kvm_env *e, int wait);
int  kvm_env_warm_released(kvm_env *e);
int  kvm_txn_copy_released(kvm_txn *t, const char *tmp);
int  kvm_file_install_released(const char *tmp, const char *dest, int replace);
int64_t ckp_leaves_released(int fd, const ckp_geometry *g, const uint8_t *branch, const ckp_cell *cells,
                            uint32_t nkeys, uint32_t from, const uint8_t *lo, int64_t lo_length,
                            const uint8_t *hi, int64_t hi_length, size_t n, uint8_t *buf, ckp_page *out,
                            ckp_event *events, size_t event_cap, uint8_t *sums);
int  ckp_overflow_chain_released(int fd, const ckp_geometry *g, uint64_t first, uint64_t pieces,
                                 uint8_t *owner, uint8_t code, ckp_chain *out);
int  ckp_checksums_released(int fd, uint32_t page_size, const uint8_t *want, uint8_t *sums,
                            uint64_t from, uint64_t to, uint8_t *buf, size_t buf_pages);
/* cdef-end */

#define KVM_RELEASED(call) \
    do {                   \
        Py_BEGIN_ALLOW_THREADS call; Py_END_ALLOW_THREADS \
    } while (0)

int kvm_env_open_released(const char *path, const kvm_options *opt, kvm_env **out)
{
    int rc;
    KVM_RELEASED(rc = kvm_env_open(path, opt, out));
    return rc;
}

void kvm_env_close_released(kvm_env *e) { KVM_RELEASED(kvm_env_close(e)); }

int kvm_txn_commit_released(kvm_txn *t, int sync)
{
    int rc = kvm_txn_claim(t);   /* before other threads can run */
    if (rc)
        return rc;
    KVM_RELEASED(rc = kvm_txn_commit_claimed(t, sync));
    return rc;
}

int kvm_env_sync_released(kvm_env *e, int wait)
{
    int rc;
    KVM_RELEASED(rc = kvm_env_sync(e, wait));
    return rc;
}

int kvm_env_warm_released(kvm_env *e)
{
    int rc;
    KVM_RELEASED(rc = kvm_env_warm(e));
    return rc;
}

int kvm_txn_copy_released(kvm_txn *t, const char *tmp)
{
    int rc;
    KVM_RELEASED(rc = kvm_txn_copy(t, tmp));
    return rc;
}

int kvm_file_install_released(const char *tmp, const char *dest, int replace)
{
    int rc;
    KVM_RELEASED(rc = kvm_file_install(tmp, dest, replace));
    return rc;
}

int64_t ckp_leaves_released(int fd, const ckp_geometry *g, const uint8_t *branch, const ckp_cell *cells,
                            uint32_t nkeys, uint32_t from, const uint8_t *lo, int64_t lo_length,
                            const uint8_t *hi, int64_t hi_length, size_t n, uint8_t *buf, ckp_page *out,
                            ckp_event *events, size_t event_cap, uint8_t *sums)
{
    int64_t rc;
    KVM_RELEASED(rc = ckp_leaves(fd, g, branch, cells, nkeys, from, lo, lo_length, hi, hi_length, n, buf, out,
                                 events, event_cap, sums));
    return rc;
}

int ckp_overflow_chain_released(int fd, const ckp_geometry *g, uint64_t first, uint64_t pieces, uint8_t *owner,
                                uint8_t code, ckp_chain *out)
{
    int rc;
    KVM_RELEASED(rc = ckp_overflow_chain(fd, g, first, pieces, owner, code, out));
    return rc;
}

int ckp_checksums_released(int fd, uint32_t page_size, const uint8_t *want, uint8_t *sums, uint64_t from,
                           uint64_t to, uint8_t *buf, size_t buf_pages)
{
    int rc;
    KVM_RELEASED(rc = ckp_checksums(fd, page_size, want, sums, from, to, buf, buf_pages));
    return rc;
}

/* From here on, the wrappers cffi generates keep the GIL. */
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
