/*
** readers.c -- the committed state readers see, and the reader table.
**
** Design and invariants
**  1. The committed state (env->st) is published under a sequence lock:
**     the writer makes seq odd, stores, makes it even; a reader retries
**     until it reads the same even seq before and after.
**  2. A snapshot claims a reader slot with its txnid (compare-and-swap),
**     then re-checks that no commit came in between: otherwise a writer
**     could have missed the slot and reused pages of the snapshot.
**     env_oldest_reader, the minimum over the slots, bounds reuse.
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

/* ----------------------------------------------------------- state publish */

void state_load(kvm_env *e, kvm_state *out)
{
    for (;;) {
        uint64_t s1 = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            continue;
        }
        out->txnid = __atomic_load_n(&e->st.txnid, __ATOMIC_RELAXED);
        out->root = __atomic_load_n(&e->st.root, __ATOMIC_RELAXED);
        out->entries = __atomic_load_n(&e->st.entries, __ATOMIC_RELAXED);
        out->hwm = __atomic_load_n(&e->st.hwm, __ATOMIC_RELAXED);
        out->free_index = __atomic_load_n(&e->st.free_index, __ATOMIC_RELAXED);
        out->record = __atomic_load_n(&e->st.record, __ATOMIC_RELAXED);
        out->free_count = __atomic_load_n(&e->st.free_count, __ATOMIC_RELAXED);
        out->pending_count = __atomic_load_n(&e->st.pending_count, __ATOMIC_RELAXED);
        out->floor = __atomic_load_n(&e->st.floor, __ATOMIC_RELAXED);
        out->durable = __atomic_load_n(&e->st.durable, __ATOMIC_RELAXED);
        out->depth = __atomic_load_n(&e->st.depth, __ATOMIC_RELAXED);
        out->flags = __atomic_load_n(&e->st.flags, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) == s1)
            return;
    }
}

void state_publish(kvm_env *e, const kvm_state *s)
{
    uint64_t q = e->seq;
    __atomic_store_n(&e->seq, q + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&e->st.txnid, s->txnid, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.root, s->root, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.entries, s->entries, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.hwm, s->hwm, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.free_index, s->free_index, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.record, s->record, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.free_count, s->free_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.pending_count, s->pending_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.floor, s->floor, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.durable, s->durable, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.depth, s->depth, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.flags, s->flags, __ATOMIC_RELAXED);
    __atomic_store_n(&e->seq, q + 2, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------ reader table */

int snapshot_acquire(kvm_env *e, kvm_txn *t)
{
    uint32_t start = (uint32_t)(((uintptr_t)pthread_self() >> 6) * 2654435761u) % e->nreaders;
    for (;;) {
        kvm_state s;
        state_load(e, &s);
        int slot = -1;
        for (uint32_t k = 0; k < e->nreaders; k++) {
            uint32_t i = (start + k) % e->nreaders;
            uint64_t expect = UINT64_MAX;
            if (__atomic_load_n(&e->readers[i], __ATOMIC_RELAXED) == UINT64_MAX &&
                __atomic_compare_exchange_n(&e->readers[i], &expect, s.txnid, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
                slot = (int)i;
                break;
            }
        }
        if (slot < 0)
            return kvm_err(KVM_READERS_FULL, "all %u reader slots are in use", e->nreaders);
        /* A commit between state_load and the slot store could already have
        ** let a writer reuse pages of this snapshot: check and retry. */
        if (__atomic_load_n(&e->st.txnid, __ATOMIC_SEQ_CST) != s.txnid) {
            __atomic_store_n(&e->readers[slot], UINT64_MAX, __ATOMIC_RELEASE);
            continue;
        }
        t->slot = slot;
        t->txnid = s.txnid;
        t->root = s.root;
        t->depth = s.depth;
        t->entries = s.entries;
        t->limit = s.hwm;
        return 0;
    }
}

void snapshot_release(kvm_env *e, kvm_txn *t)
{
    if (t->slot >= 0)
        __atomic_store_n(&e->readers[t->slot], UINT64_MAX, __ATOMIC_RELEASE);
    t->slot = -1;
}

uint64_t env_oldest_reader(kvm_env *e)
{
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < e->nreaders; i++) {
        uint64_t v = __atomic_load_n(&e->readers[i], __ATOMIC_SEQ_CST);
        if (v < m)
            m = v;
    }
    return m;
}
