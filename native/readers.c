/*
** readers.c -- the committed state readers see, and the reader table,
** both in the lock region (lock.c) every handle shares, in any process.
**
** Design and invariants
**  1. The committed state (sh->st) is published under a sequence lock:
**     the writer makes seq odd, stores, makes it even; a reader retries
**     until it reads the same even seq before and after.
**  2. A snapshot claims a reader slot with its txnid and handle
**     (compare-and-swap), then re-checks that no commit came in between:
**     otherwise a writer could have missed the slot and reused pages of the
**     snapshot.  env_oldest_reader, the minimum over the slots, bounds reuse.
**  3. A snapshot of a commit made by another handle first brings this
**     handle up to it (env_follow): the mapping covers its pages, and the
**     pread cache holds none that a commit since changed.
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
#include <sys/syscall.h>
#include <unistd.h>

/* ----------------------------------------------------------- state publish */

void state_load(kvm_env *e, kvm_state *out)
{
    for (;;) {
        uint64_t s1 = __atomic_load_n(&e->sh->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            continue;
        }
        out->txnid = __atomic_load_n(&e->sh->st.txnid, __ATOMIC_RELAXED);
        out->root = __atomic_load_n(&e->sh->st.root, __ATOMIC_RELAXED);
        out->entries = __atomic_load_n(&e->sh->st.entries, __ATOMIC_RELAXED);
        out->hwm = __atomic_load_n(&e->sh->st.hwm, __ATOMIC_RELAXED);
        out->free_index = __atomic_load_n(&e->sh->st.free_index, __ATOMIC_RELAXED);
        out->record = __atomic_load_n(&e->sh->st.record, __ATOMIC_RELAXED);
        out->free_count = __atomic_load_n(&e->sh->st.free_count, __ATOMIC_RELAXED);
        out->pending_count = __atomic_load_n(&e->sh->st.pending_count, __ATOMIC_RELAXED);
        out->floor = __atomic_load_n(&e->sh->st.floor, __ATOMIC_RELAXED);
        out->durable = __atomic_load_n(&e->sh->st.durable, __ATOMIC_RELAXED);
        out->depth = __atomic_load_n(&e->sh->st.depth, __ATOMIC_RELAXED);
        out->flags = __atomic_load_n(&e->sh->st.flags, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->sh->seq, __ATOMIC_RELAXED) == s1)
            return;
    }
}

void state_publish(kvm_env *e, const kvm_state *s)
{
    uint64_t q = e->sh->seq;
    __atomic_store_n(&e->sh->seq, q + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&e->sh->st.txnid, s->txnid, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.root, s->root, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.entries, s->entries, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.hwm, s->hwm, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.free_index, s->free_index, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.record, s->record, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.free_count, s->free_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.pending_count, s->pending_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.floor, s->floor, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.durable, s->durable, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.depth, s->depth, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->st.flags, s->flags, __ATOMIC_RELAXED);
    __atomic_store_n(&e->sh->seq, q + 2, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------ reader table */

/* This thread's id, cached (a system call otherwise); the thread that
** forks forgets it in the child (env.c, fork_child), the only thread there. */
static __thread uint32_t cached_thread;

uint32_t this_thread(void)
{
    if (!cached_thread)
        cached_thread = (uint32_t)syscall(SYS_gettid);
    return cached_thread;
}

void this_thread_forget(void) { cached_thread = 0; }

int snapshot_acquire(kvm_env *e, kvm_txn *t)
{
    kvm_shared *sh = e->sh;
    uint32_t n = sh->nreaders;
    uint32_t start = (uint32_t)(((uintptr_t)pthread_self() >> 6) * 2654435761u) % n;
    for (;;) {
        kvm_state s;
        state_load(e, &s);
        int slot = -1;
        uint64_t mine = s.txnid << 16 | e->handle;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = (start + k) % n;
            uint64_t expect = READER_FREE;
            if (__atomic_load_n(&sh->readers[i], __ATOMIC_RELAXED) == READER_FREE &&
                __atomic_compare_exchange_n(&sh->readers[i], &expect, mine, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                slot = (int)i;
                break;
            }
        }
        if (slot < 0)
            return kvm_err(KVM_READERS_FULL, "all %u reader slots are in use", n);
        /* A commit between state_load and the slot store could already have
        ** let a writer reuse pages of this snapshot: check and retry. */
        if (__atomic_load_n(&sh->st.txnid, __ATOMIC_SEQ_CST) != s.txnid) {
            __atomic_store_n(&sh->readers[slot], READER_FREE, __ATOMIC_RELEASE);
            continue;
        }
        __atomic_store_n(&reader_threads(sh)[slot], this_thread(), __ATOMIC_RELAXED);
        t->slot = slot;
        t->txnid = s.txnid;
        t->root = s.root;
        t->depth = s.depth;
        t->entries = s.entries;
        t->limit = s.hwm;
        t->commit = s;
        int rc = env_follow(e, &s);
        if (rc)
            snapshot_release(e, t);
        return rc;
    }
}

/* A snapshot ends: its slot goes -- unless the handle is closed (close
** freed the slot, which another handle may hold by now) or this is a child
** after fork() (the slot is the parent's snapshot's). */
void snapshot_release(kvm_env *e, kvm_txn *t)
{
    if (t->slot >= 0 && env_enter_quiet(e)) {
        __atomic_store_n(&e->sh->readers[t->slot], READER_FREE, __ATOMIC_RELEASE);
        env_leave(e);
    }
    t->slot = -1;
}

/* The live snapshots of every process: up to cap of them into out; the
** number there are.  Slots change meanwhile: a picture for people (kvmap
** stat), never a basis for a decision. */
static int64_t env_readers(kvm_env *e, kvm_reader *out, size_t cap)
{
    kvm_shared *sh = e->sh;
    size_t n = 0;
    for (uint32_t i = 0; i < sh->nreaders; i++) {
        uint64_t v = __atomic_load_n(&sh->readers[i], __ATOMIC_ACQUIRE);
        if (v == READER_FREE)
            continue;
        if (n < cap) {
            uint32_t h = READER_HANDLE(v);
            out[n] = (kvm_reader){.txnid = READER_TXNID(v),
                                  .pid = h < LOCK_HANDLES ? __atomic_load_n(&sh->handle_pid[h], __ATOMIC_RELAXED) : 0,
                                  .thread = __atomic_load_n(&reader_threads(sh)[i], __ATOMIC_RELAXED)};
        }
        n++;
    }
    return (int64_t)n;
}

int64_t kvm_env_readers(kvm_env *e, kvm_reader *out, size_t cap)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    int64_t n = env_readers(e, out, cap);
    env_leave(e);
    return n;
}

uint64_t env_oldest_reader(kvm_env *e) { return env_oldest_other(e, -1); }

uint64_t env_oldest_other(kvm_env *e, int slot)
{
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < e->sh->nreaders; i++) {
        uint64_t v = __atomic_load_n(&e->sh->readers[i], __ATOMIC_SEQ_CST);
        if ((int)i != slot && v != READER_FREE && READER_TXNID(v) < m)
            m = READER_TXNID(v);
    }
    return m;
}

/* The txnids of the live snapshots of every process, ascending and
** distinct, into *out (emptied first), for space_reclaim.  The slots are
** read as env_oldest_reader reads them (sequentially consistent loads, by
** the writer, after the newest commit N was published): a snapshot whose
** slot store the scan missed stored it after the scan in that order, so
** its re-check of the published txnid (snapshot_acquire, a sequentially
** consistent load after its slot store) sees N.  It then either retries or
** is of N itself, and no pending page belongs to N's state: every pending
** set is of a commit <= N, whose freed pages N no longer reaches. */
static int cmp_txnid(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int env_live_snapshots(kvm_env *e, u64vec *out)
{
    out->n = 0;
    /* the commit a flush in flight makes durable is kept as a snapshot's
    ** state is (flush.c) */
    uint64_t f = __atomic_load_n(&e->sh->flush_txnid, __ATOMIC_ACQUIRE);
    int rc = f ? u64_push(out, f) : 0;
    for (uint32_t i = 0; i < e->sh->nreaders && !rc; i++) {
        uint64_t v = __atomic_load_n(&e->sh->readers[i], __ATOMIC_SEQ_CST);
        if (v != READER_FREE)
            rc = u64_push(out, READER_TXNID(v));
    }
    if (rc)
        return rc;
    if (out->n > 1)
        qsort(out->v, out->n, sizeof *out->v, cmp_txnid);
    size_t k = 0;
    for (size_t i = 0; i < out->n; i++)
        if (!k || out->v[k - 1] != out->v[i])
            out->v[k++] = out->v[i];
    out->n = k;
    return 0;
}
