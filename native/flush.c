/*
** flush.c -- background flushes of sync=False commits (FORMAT.md §7).
**
** Design and invariants
**  1. A sync=False commit that finds sync_bytes unsynced, sync_interval
**     passed, or the pages held for the durable commit grown large (txn.c)
**     does not wait for the disk: it starts a flush of itself, the newest
**     commit F, and returns.  A thread of the handle calls fdatasync;
**     everything written before the call, F's pages and meta included, is
**     then on disk.
**  2. While the flush runs, commits go on.  They write their metas to the
**     third slot -- neither the durable commit D's (what a power loss
**     falls back to) nor F's (what the flush makes durable) -- and the
**     writer keeps both states: no page that D or F reaches is reused
**     (F counts as a live snapshot in the precise rule, and pages written
**     after F, not after D, are the ones reused early).
**  3. The flush's end is taken up by a writer, under the writer lock, at
**     the next transaction begin (flush_settle): D becomes F, and the pages
**     held for the old D go back to the free space by the usual rules.  A
**     failed fdatasync fails the flushing handle (its writes are refused,
**     as after any failed sync) and leaves D as it was; so does the death
**     of the handle's process (its handle byte, lock.c).
**  4. The state lives in the lock region (flush_txnid, flush_done, ...):
**     a writer in another process sees a flush in flight and keeps both
**     slots and both states alike.
**  5. db.sync(), close and a flush that must happen now (make_room, a
**     commit with 2 x sync_bytes unsynced) wait for this handle's flush
**     first, then flush as before.
**  6. Tests that follow every write (tools/powerloss.py) cannot have a
**     thread call fdatasync while the commits they record go on:
**     kvm_set_flush_mode(k > 0) makes the flush's fdatasync at its start,
**     in the committing thread, and its end known k write transactions
**     later, so the commits in between still run beside a flush in flight.
**     A sync hook (kvm_set_sync_hook) is Python code that needs the GIL,
**     which a writer may hold while it waits for the flush: with one
**     installed, the flush runs in the committing thread too (k = 0: its
**     end is taken up at the next begin).
*/
#include "internal.h"
#include <errno.h>
#include <stdlib.h>

static int inline_commits;   /* kvm_set_flush_mode: 0 = a thread */

void kvm_set_flush_mode(int commits)
{
    __atomic_store_n(&inline_commits, commits > 0 ? commits : 0, __ATOMIC_RELEASE);
}

int flush_in_flight(kvm_env *e)
{
    return e->sh->flush_txnid != 0;
}

/* A failed flush fails the handle: the kernel may have dropped the pages it
** could not write, so it is never retried.  The next call that writes says
** why, once (env_failed). */
static void flush_failed(kvm_env *e, int err)
{
    __atomic_store_n(&e->flush_errno, err ? err : EIO, __ATOMIC_RELEASE);
    __atomic_store_n(&e->failed, 1, __ATOMIC_RELEASE);
}

/* The error of a call refused by a failed handle: the background flush's
** failure the first time, when that is what failed it. */
int env_failed(kvm_env *e)
{
    int err = __atomic_exchange_n(&e->flush_errno, 0, __ATOMIC_ACQ_REL);
    if (err)
        return kvm_err_sys(KVM_IO, err, "syncing the database file in the background "
                                        "(the handle refuses writes until reopened)");
    return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
}

static void *flusher(void *arg)
{
    kvm_env *e = arg;
    pthread_mutex_lock(&e->flush_mutex);
    for (;;) {
        while (!e->flush_asked && !e->flush_stop)
            pthread_cond_wait(&e->flush_cond, &e->flush_mutex);
        if (!e->flush_asked)
            break;
        uint64_t txnid = e->flush_asked;
        pthread_mutex_unlock(&e->flush_mutex);
        int ok = kvm_sys.fdatasync(e->fd) == 0;
        if (!ok)
            flush_failed(e, errno);
        __atomic_store_n(&e->sh->flush_done, ok ? txnid : FLUSH_FAILED, __ATOMIC_RELEASE);
        pthread_mutex_lock(&e->flush_mutex);
        e->flush_asked = 0;
        pthread_cond_broadcast(&e->flush_cond);
    }
    pthread_mutex_unlock(&e->flush_mutex);
    return NULL;
}

/* Start a flush of commit txnid (the newest, its meta in slot), with
** `bytes` unsynced.  Under the writer lock, with no flush in flight.  A
** thread that cannot be made leaves the commit as it is (the next trigger
** tries again; close makes it durable). */
void flush_start(kvm_env *e, uint64_t txnid, int slot, uint64_t bytes)
{
    int k = __atomic_load_n(&inline_commits, __ATOMIC_ACQUIRE), in_thread = !k && !os_sync_hooked();
    pthread_mutex_lock(&e->flush_mutex);
    if (in_thread && !e->flusher_running) {
        if (pthread_create(&e->flusher, NULL, flusher, e) != 0) {
            pthread_mutex_unlock(&e->flush_mutex);
            return;
        }
        e->flusher_running = 1;
    }
    kvm_shared *sh = e->sh;
    sh->flush_slot = slot;
    sh->flush_bytes = bytes;
    sh->flush_handle = e->handle;
    __atomic_store_n(&sh->flush_done, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sh->flush_txnid, txnid, __ATOMIC_RELEASE);
    if (!in_thread) {
        int ok = kvm_sys.fdatasync(e->fd) == 0;
        if (!ok)
            flush_failed(e, errno);
        e->inline_done = ok ? txnid : FLUSH_FAILED;
        e->inline_left = k;
    } else {
        e->flush_asked = txnid;
        pthread_cond_broadcast(&e->flush_cond);
    }
    pthread_mutex_unlock(&e->flush_mutex);
}

/* Wait until this handle's flush, if any, has returned. */
void flush_wait_own(kvm_env *e)
{
    pthread_mutex_lock(&e->flush_mutex);
    while (e->flush_asked)
        pthread_cond_wait(&e->flush_cond, &e->flush_mutex);
    if (e->inline_done) {
        __atomic_store_n(&e->sh->flush_done, e->inline_done, __ATOMIC_RELEASE);
        e->inline_done = 0;
    }
    pthread_mutex_unlock(&e->flush_mutex);
}

/* Take up the end of the flush in flight, if it ended (design note 3).
** Under the writer lock and the durable lock; 1 if D moved. */
int flush_settle(kvm_env *e)
{
    kvm_shared *sh = e->sh;
    uint64_t f = sh->flush_txnid;
    if (!f)
        return 0;
    if (sh->flush_handle == e->handle && e->inline_done) {
        if (e->inline_left > 0 && --e->inline_left > 0)
            return 0;
        flush_wait_own(e);
    }
    uint64_t done = __atomic_load_n(&sh->flush_done, __ATOMIC_ACQUIRE);
    if (done != f && done != FLUSH_FAILED && (sh->flush_handle == e->handle || !lock_handle_dead(e, sh->flush_handle)))
        return 0;   /* still running */
    int moved = done == f && f > sh->durable;
    if (moved) {
        __atomic_store_n(&sh->durable, f, __ATOMIC_RELEASE);
        sh->durable_slot = sh->flush_slot;
        sh->unsynced_bytes = sh->unsynced_bytes > sh->flush_bytes ? sh->unsynced_bytes - sh->flush_bytes : 0;
        sh->last_flush_ns = now_ns();
    }
    sh->flush_slot = -1;
    __atomic_store_n(&sh->flush_txnid, 0, __ATOMIC_RELEASE);
    return moved;
}

/* At close: the thread ends once its flush, if any, has returned. */
void flush_stop(kvm_env *e)
{
    pthread_mutex_lock(&e->flush_mutex);
    e->flush_stop = 1;
    pthread_cond_broadcast(&e->flush_cond);
    int running = e->flusher_running;
    e->flusher_running = 0;
    pthread_mutex_unlock(&e->flush_mutex);
    if (running)
        pthread_join(e->flusher, NULL);
}
