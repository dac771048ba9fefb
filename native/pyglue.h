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
** close, a syncing commit, sync() (fdatasync) and warm() (reads the file).
** Like Python's own mmap objects, a read that faults a page in from disk
** holds the GIL meanwhile.
*/
#include "kvmap.h"

/* cdef-begin */
int  kvm_env_open_released(const char *path, const kvm_options *opt, kvm_env **out);
void kvm_env_close_released(kvm_env *e);
int  kvm_txn_commit_released(kvm_txn *t, int sync);
int  kvm_env_sync_released(kvm_env *e, int wait);
int  kvm_env_warm_released(kvm_env *e);
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

/* From here on, the wrappers cffi generates keep the GIL. */
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
