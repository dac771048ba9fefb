/*
** pager.c -- the file under the B+tree: meta pages, the mapping and its
** growth, the pread page cache, dirty pages of the write transaction, the
** commit, and the reader table.
**
** Design and invariants
**  1. The committed state is (root, depth, entries, hwm, free-list heads) of
**     the newest valid meta page.  A commit writes every dirty page, makes
**     them durable, then writes meta page (txnid % 2) and makes it durable.
**     Nothing reachable from either meta page is ever written: new versions
**     of pages go to page numbers the Python layer has proven unreachable.
**  2. Readers never block: a reader publishes its snapshot txnid in a reader
**     slot (kvm_env_oldest_reader is what the free-space policy honours) and
**     reads the state under a sequence lock.  The only lock a reader takes is
**     per call, never per transaction: the map lock while the mapping can
**     move (growth mremap/remap), or the cache lock (backend pread).
**  3. Backend mmap maps exactly the file (never past its end).  Growth
**     "reserve" maps new file pieces into a PROT_NONE reservation right after
**     the previous piece, so the base address never moves.  Growth "mremap"
**     and "remap" replace the mapping under the map lock; "remap" maps the
**     new mapping before unmapping the old one so a failure keeps the old.
**  4. The file grows with posix_fallocate before any new page is touched, so
**     a full disk is an error here and never a SIGBUS later.  A failed
**     growth truncates back and leaves the mapping as it was.
**  5. The B+tree reaches pages only through pg_read/pg_write/pg_new/pg_free.
**     Page numbers are checked against the transaction's limit before any
**     access, so a damaged file yields KVM_CORRUPT, not a fault.  pg_write
**     verifies the checksum of every committed page it copies, so a write
**     never gives a damaged page a fresh checksum.
**  6. Lifetime: env and transactions are reference counted and freed only
**     by kvm_*_release; close and abort only mark them.  Every public call
**     brackets its body with env_enter/txn_enter (counted in flight, refused
**     once closing, done or forked), and kvm_env_close waits for the calls
**     in flight before it unmaps, so no call ever runs on a freed mapping.
*/
#define _GNU_SOURCE
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ errors */

static __thread char err_text[320];
static __thread int  err_errno;

const char *kvm_errmsg(void) { return err_text; }
int kvm_errno(void) { return err_errno; }

int kvm_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_text, sizeof err_text, fmt, ap);
    va_end(ap);
    err_errno = 0;
    return code;
}

int kvm_err_sys(int code, int errnum, const char *what)
{
    snprintf(err_text, sizeof err_text, "%s: %s", what, strerror(errnum));
    err_errno = errnum;
    return code;
}

static int space_code(int errnum)
{
    return (errnum == ENOSPC || errnum == EFBIG || errnum == EDQUOT) ? KVM_DISKFULL : KVM_IO;
}

/* --------------------------------------------------------------- lifetime */

/* Incremented in the child after every fork(): a handle opened before the
** fork carries an older generation, and refuses every call in the child. */
uint64_t kvm_fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_child(void) { __atomic_add_fetch(&kvm_fork_gen, 1, __ATOMIC_SEQ_CST); }
static void fork_watch(void) { pthread_atfork(NULL, NULL, fork_child); }

static int env_forked(const kvm_env *e)
{
    return e->fork_gen != __atomic_load_n(&kvm_fork_gen, __ATOMIC_RELAXED);
}

/* Dekker with kvm_env_close: count this call in flight, then look at
** closing (both seq_cst), so a close either sees the call and waits for it,
** or the call sees the close and does not run. */
int env_enter(kvm_env *e)
{
    if (env_forked(e))
        return kvm_err(KVM_FORKED, "%s: this handle was opened by the parent process before fork(); "
                                   "open the database again in the child", e->path);
    __atomic_add_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&e->closing, __ATOMIC_SEQ_CST)) {
        __atomic_sub_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST);
        return kvm_err(KVM_CLOSED, "database is closed");
    }
    return 0;
}

void env_leave(kvm_env *e) { __atomic_sub_fetch(&e->inflight, 1, __ATOMIC_SEQ_CST); }

int txn_enter(kvm_txn *t)
{
    int rc = env_enter(t->env);
    if (rc)
        return rc;
    if (__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
        env_leave(t->env);
        return kvm_err(KVM_CLOSED, t->write ? "transaction is finished" : "snapshot is closed");
    }
    return 0;
}

int kvm_env_usable(kvm_env *e)
{
    int rc = env_enter(e);
    if (!rc)
        env_leave(e);
    return rc;
}

/* -------------------------------------------------------------- meta pages */

static void meta_encode(uint8_t *m, uint32_t psize, const kvm_state *s)
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

/* ----------------------------------------------------------- state publish */

static void state_load(kvm_env *e, kvm_state *out)
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
        out->free_pending = __atomic_load_n(&e->st.free_pending, __ATOMIC_RELAXED);
        out->free_count = __atomic_load_n(&e->st.free_count, __ATOMIC_RELAXED);
        out->pending_count = __atomic_load_n(&e->st.pending_count, __ATOMIC_RELAXED);
        out->pending_floor = __atomic_load_n(&e->st.pending_floor, __ATOMIC_RELAXED);
        out->depth = __atomic_load_n(&e->st.depth, __ATOMIC_RELAXED);
        out->flags = __atomic_load_n(&e->st.flags, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) == s1)
            return;
    }
}

static void state_publish(kvm_env *e, const kvm_state *s)
{
    uint64_t q = e->seq;
    __atomic_store_n(&e->seq, q + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&e->st.txnid, s->txnid, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.root, s->root, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.entries, s->entries, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.hwm, s->hwm, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.free_index, s->free_index, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.free_pending, s->free_pending, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.free_count, s->free_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.pending_count, s->pending_count, __ATOMIC_RELAXED);
    __atomic_store_n(&e->st.pending_floor, s->pending_floor, __ATOMIC_RELAXED);
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

uint64_t kvm_env_oldest_reader(kvm_env *e)
{
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < e->nreaders; i++) {
        uint64_t v = __atomic_load_n(&e->readers[i], __ATOMIC_SEQ_CST);
        if (v < m)
            m = v;
    }
    return m;
}

/* ---------------------------------------------------------------- mapping */

void op_enter(kvm_env *e)
{
    kvm_op_depth++;
    if (e->backend == KVM_BACKEND_PREAD)
        pthread_mutex_lock(&e->cache_lock);
    else if (e->map_moves)
        pthread_rwlock_rdlock(&e->map_lock);
}

void op_leave(kvm_env *e)
{
    kvm_op_depth--;
    if (e->backend == KVM_BACKEND_PREAD)
        pthread_mutex_unlock(&e->cache_lock);
    else if (e->map_moves)
        pthread_rwlock_unlock(&e->map_lock);
}

static int map_prot(kvm_env *e) { return PROT_READ | (e->writemap ? PROT_WRITE : 0); }

static int map_open(kvm_env *e, uint64_t map_size)
{
    uint64_t len = e->file_size;
    if (e->growth == KVM_GROW_RESERVE) {
        uint64_t res = map_size > len ? map_size : len;
        res = (res + e->psize - 1) / e->psize * e->psize;
        void *r;
        for (;;) {
            r = kvm_sys.mmap(NULL, res, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (r != MAP_FAILED)
                break;
            if (res / 2 < len)
                return kvm_err_sys(KVM_MAPFULL, errno, "reserving address space for the mapping");
            res = (res / 2 + e->psize - 1) / e->psize * e->psize;  /* RLIMIT_AS: settle for less */
        }
        void *p = kvm_sys.mmap(r, len, map_prot(e), MAP_SHARED | MAP_FIXED, e->fd, 0);
        if (p == MAP_FAILED) {
            int en = errno;
            kvm_sys.munmap(r, res);
            return kvm_err_sys(KVM_MAPFULL, en, "mapping the database file");
        }
        e->base = p;
        e->reserved = res;
    } else {
        void *p = kvm_sys.mmap(NULL, len, map_prot(e), MAP_SHARED, e->fd, 0);
        if (p == MAP_FAILED)
            return kvm_err_sys(KVM_MAPFULL, errno, "mapping the database file");
        e->base = p;
        e->reserved = len;
        e->map_moves = 1;
    }
    e->map_len = len;
    /* Without MADV_RANDOM ext4 builds large folios: a 4 KiB msync can write
    ** 1 MiB and a first write into a hole reads around 8 MiB. */
    kvm_sys.madvise(e->base, len, MADV_RANDOM);
    return 0;
}

static int map_extend(kvm_env *e, uint64_t len)
{
    if (e->growth == KVM_GROW_RESERVE) {
        if (len > e->reserved)
            return kvm_err(KVM_MAPFULL,
                           "the database needs %llu bytes but only %llu bytes of address space "
                           "are reserved (%llu more pages fit): reopen with a larger map_size",
                           (unsigned long long)len, (unsigned long long)e->reserved,
                           (unsigned long long)((e->reserved - e->map_len) / e->psize));
        uint8_t *at = e->base + e->map_len;
        void *p = kvm_sys.mmap(at, len - e->map_len, map_prot(e), MAP_SHARED | MAP_FIXED,
                               e->fd, (off_t)e->map_len);
        if (p == MAP_FAILED) {
            int en = errno;
            /* A failed MAP_FIXED may have dropped that part of the reservation:
            ** take it back, or stop growing into it. */
            void *r = kvm_sys.mmap(at, e->reserved - e->map_len, PROT_NONE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
            if (r == MAP_FAILED && errno != EEXIST)
                e->reserved = e->map_len;
            else if (r != MAP_FAILED && r != at) {
                kvm_sys.munmap(r, e->reserved - e->map_len);
                e->reserved = e->map_len;
            }
            return kvm_err_sys(KVM_MAPFULL, en, "mapping the grown part of the file");
        }
        kvm_sys.madvise(at, len - e->map_len, MADV_RANDOM);
        e->map_len = len;
        return 0;
    }
    pthread_rwlock_wrlock(&e->map_lock);
    void *p;
    if (e->growth == KVM_GROW_MREMAP)
        p = kvm_sys.mremap(e->base, e->map_len, len, MREMAP_MAYMOVE);
    else
        p = kvm_sys.mmap(NULL, len, map_prot(e), MAP_SHARED, e->fd, 0);
    if (p == MAP_FAILED) {
        int en = errno;
        pthread_rwlock_unlock(&e->map_lock);
        return kvm_err_sys(KVM_MAPFULL, en, e->growth == KVM_GROW_MREMAP ? "mremap" : "mmap");
    }
    if (e->growth == KVM_GROW_REMAP) {
        kvm_sys.munmap(e->base, e->map_len);
        kvm_sys.madvise(p, len, MADV_RANDOM);
    } else {
        kvm_sys.madvise((uint8_t *)p + e->map_len, len - e->map_len, MADV_RANDOM);
    }
    e->base = p;
    e->map_len = len;
    e->reserved = len;
    pthread_rwlock_unlock(&e->map_lock);
    return 0;
}

/* A file cut short under us (by another process: flock is advisory) would
** fault in the mapping or be silently extended with holes by the next
** write: say so before a transaction starts and before the file grows. */
static int file_intact(kvm_env *e)
{
    /* Read our size before the file's: a growth in another thread between
    ** the two then only makes the file look larger. */
    uint64_t need = __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE), size;
    if (kvm_sys.fstat(e->fd, &size, NULL) != 0)
        return kvm_err_sys(KVM_IO, errno, "checking the size of the database file");
    if (size < need)
        return kvm_err(KVM_CORRUPT, "%s was truncated while open: it has %llu bytes, the database "
                       "needs %llu", e->path, (unsigned long long)size, (unsigned long long)need);
    return 0;
}

static int env_grow(kvm_env *e, uint64_t pages)
{
    if (e->readonly)
        return kvm_err(KVM_READONLY, "database is open read-only");
    if (e->failed)
        return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
    if (pages > UINT64_MAX / e->psize / 2)
        return kvm_err(KVM_DISKFULL, "database size limit reached");
    uint64_t len = pages * e->psize;
    if (len <= e->file_size)
        return 0;
    int rc = file_intact(e);
    if (rc)
        return rc;
    rc = kvm_sys.posix_fallocate(e->fd, (off_t)e->file_size, (off_t)(len - e->file_size));
    if (rc != 0) {
        kvm_sys.ftruncate(e->fd, (off_t)e->file_size);   /* ext4 keeps what it got */
        return kvm_err_sys(space_code(rc), rc, "growing the database file");
    }
    if (e->backend == KVM_BACKEND_MMAP) {
        rc = map_extend(e, len);
        if (rc) {
            kvm_sys.ftruncate(e->fd, (off_t)e->file_size);
            return rc;
        }
    }
    __atomic_store_n(&e->file_size, len, __ATOMIC_RELEASE);   /* file_intact reads it unlocked */
    return 0;
}

int kvm_env_grow(kvm_env *e, uint64_t pages)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = env_grow(e, pages);
    env_leave(e);
    return rc;
}

int kvm_env_advise_free(kvm_env *e, const uint64_t *runs, size_t nruns)
{
    if (e->backend != KVM_BACKEND_MMAP)
        return 0;
    int rc = env_enter(e);
    if (rc)
        return rc;
    op_enter(e);
    for (size_t i = 0; i < nruns; i++) {
        uint64_t start = runs[2 * i], count = runs[2 * i + 1];
        if (start < 2 || count == 0 || (start + count) * e->psize > e->map_len)
            continue;
        kvm_sys.madvise(e->base + start * e->psize, count * e->psize, MADV_DONTNEED);
    }
    op_leave(e);
    env_leave(e);
    return 0;
}

/* ------------------------------------------------------------- page cache */

static int cache_init(kvm_cache *c, uint64_t pages, uint32_t psize)
{
    if (pages < 64)
        pages = 64;
    if (pages > (1u << 30))
        pages = 1u << 30;
    c->nslots = (uint32_t)pages;
    c->nbuckets = 1;
    while (c->nbuckets < c->nslots)
        c->nbuckets <<= 1;
    if (posix_memalign((void **)&c->mem, 4096, (size_t)c->nslots * psize))
        c->mem = NULL;
    c->pgno = malloc(sizeof(pgno_t) * c->nslots);
    c->next = malloc(sizeof(int32_t) * c->nslots);
    c->bucket = malloc(sizeof(int32_t) * c->nbuckets);
    c->ref = calloc(c->nslots, 1);
    if (!c->mem || !c->pgno || !c->next || !c->bucket || !c->ref)
        return kvm_err(KVM_NOMEM, "allocating the page cache");
    for (uint32_t i = 0; i < c->nslots; i++)
        c->pgno[i] = PGNO_NONE;
    for (uint32_t i = 0; i < c->nbuckets; i++)
        c->bucket[i] = -1;
    return 0;
}

static void cache_free(kvm_cache *c)
{
    free(c->mem);
    free(c->pgno);
    free(c->next);
    free(c->bucket);
    free(c->ref);
    memset(c, 0, sizeof *c);
}

static inline uint32_t cache_bucket(const kvm_cache *c, pgno_t pg)
{
    return (uint32_t)((pg * 0x9E3779B97F4A7C15ull) >> 32) & (c->nbuckets - 1);
}

static int32_t cache_find(kvm_cache *c, pgno_t pg)
{
    for (int32_t s = c->bucket[cache_bucket(c, pg)]; s >= 0; s = c->next[s])
        if (c->pgno[s] == pg)
            return s;
    return -1;
}

static void cache_unlink(kvm_cache *c, int32_t s)
{
    int32_t *pp = &c->bucket[cache_bucket(c, c->pgno[s])];
    while (*pp != s)
        pp = &c->next[*pp];
    *pp = c->next[s];
    c->pgno[s] = PGNO_NONE;
}

/* Caller holds cache_lock (op_enter).  The pointer stays valid until this
** operation ends: CLOCK gives every page read in it a second chance, and an
** operation touches far fewer pages than the cache holds. */
static int cache_get(kvm_env *e, pgno_t pg, const uint8_t **out)
{
    kvm_cache *c = &e->cache;
    int32_t s = cache_find(c, pg);
    if (s >= 0) {
        c->ref[s] = 1;
        c->hits++;
        *out = c->mem + (size_t)s * e->psize;
        return 0;
    }
    c->misses++;
    for (;;) {
        s = (int32_t)c->hand;
        c->hand = (c->hand + 1) % c->nslots;
        if (c->pgno[s] == PGNO_NONE || !c->ref[s])
            break;
        c->ref[s] = 0;
    }
    if (c->pgno[s] != PGNO_NONE)
        cache_unlink(c, s);
    uint8_t *dst = c->mem + (size_t)s * e->psize;
    ssize_t n = kvm_sys.pread(e->fd, dst, e->psize, (off_t)(pg * e->psize));
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading a page");
    if ((size_t)n < e->psize)
        return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pg);
    if (e->verify && rd32(dst + PH_CHECKSUM) != kvm_crc32c(0, dst + 4, e->psize - 4))
        return kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch (the page is damaged; run kvmap-check)",
                       (unsigned long long)pg);
    uint32_t b = cache_bucket(c, pg);
    c->pgno[s] = pg;
    c->next[s] = c->bucket[b];
    c->bucket[b] = s;
    c->ref[s] = 1;
    *out = dst;
    return 0;
}

/* ------------------------------------------------------------ dirty pages */

/* The dirty table is open addressing over the entries themselves (one
** cache miss per lookup); pgno 0 (a meta page, never dirty) marks a free
** slot.  The hash keeps neighbouring page numbers in neighbouring slots:
** pages are handed out in runs, so a descent finds its pages close by. */
static inline size_t dhash(pgno_t pg, size_t cap) { return (size_t)(pg ^ (pg >> 17)) & (cap - 1); }

static dirty_ent *dirty_find(kvm_txn *t, pgno_t pg)
{
    for (size_t h = dhash(pg, t->dcap);; h = (h + 1) & (t->dcap - 1)) {
        dirty_ent *d = &t->dirty[h];
        if (d->pgno == pg)
            return d;
        if (d->pgno == 0)
            return NULL;
    }
}

static int dirty_resize(kvm_txn *t, size_t cap)
{
    dirty_ent *n = calloc(cap, sizeof *n);
    if (!n)
        return kvm_err(KVM_NOMEM, "allocating the dirty page table");
    for (size_t i = 0; i < t->dcap; i++) {
        if (!t->dirty[i].pgno)
            continue;
        size_t k = dhash(t->dirty[i].pgno, cap);
        while (n[k].pgno)
            k = (k + 1) & (cap - 1);
        n[k] = t->dirty[i];
    }
    free(t->dirty);
    t->dirty = n;
    t->dcap = cap;
    return 0;
}

/* Entry pointers stay valid until the next dirty_add. */
static int dirty_add(kvm_txn *t, pgno_t pg, dirty_ent **out)
{
    if ((t->ndirty + 1) * 2 > t->dcap) {
        int rc = dirty_resize(t, t->dcap * 2);
        if (rc)
            return rc;
    }
    uint8_t *buf = NULL;
    if (!t->env->writemap && posix_memalign((void **)&buf, 64, t->env->psize))
        return kvm_err(KVM_NOMEM, "allocating a dirty page");
    size_t k = dhash(pg, t->dcap);
    while (t->dirty[k].pgno)
        k = (k + 1) & (t->dcap - 1);
    dirty_ent *d = &t->dirty[k];
    d->pgno = pg;
    d->live = 1;
    d->buf = buf;
    t->ndirty++;
    *out = d;
    return 0;
}

static inline uint8_t *dirty_ptr(kvm_txn *t, const dirty_ent *d)
{
    return d->buf ? d->buf : t->env->base + d->pgno * t->env->psize;
}

static int pgvec_push(pgvec *v, pgno_t pg)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        pgno_t *p = realloc(v->v, cap * sizeof *p);
        if (!p)
            return kvm_err(KVM_NOMEM, "allocating a page list");
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = pg;
    return 0;
}

/* ------------------------------------------------------ pages for the tree */

int pg_read(kvm_txn *t, pgno_t pg, const uint8_t **out)
{
    int own;
    return pg_read_own(t, pg, out, &own);
}

int pg_read_own(kvm_txn *t, pgno_t pg, const uint8_t **out, int *own)
{
    kvm_env *e = t->env;
    *own = 0;
    if (pg < 2 || pg >= t->limit)
        return kvm_err(KVM_CORRUPT, "page number %llu out of range (database has %llu pages)",
                       (unsigned long long)pg, (unsigned long long)t->limit);
    if (t->write) {
        dirty_ent *d = dirty_find(t, pg);
        if (d && d->live) {
            *out = dirty_ptr(t, d);
            *own = 1;
            return 0;
        }
    }
    if (e->backend == KVM_BACKEND_PREAD)
        return cache_get(e, pg, out);   /* verified when read into the cache */
    if ((pg + 1) * e->psize > e->map_len)
        return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pg);
    *out = e->base + pg * e->psize;
    if (e->verify) {
        /* A committed page cannot change while this transaction can see it,
        ** so one check per page and transaction is enough: a cursor visits
        ** its leaf once per record and its branches once per leaf. */
        pgno_t *slot = &t->verified[(pg * 0x9E3779B97F4A7C15ull) >> 60];
        if (*slot != pg) {
            int rc = pg_verify(t, *out, pg);
            if (rc)
                return rc;
            *slot = pg;
        }
    }
    return 0;
}

/* Drop the mapped pages [pg, pg+n) from this process (mmap backend; a
** no-op for pread and for the pages of the write transaction's own
** buffers).  Only the process's view goes: the file and the page cache
** keep the data, and the next access faults it back in. */
void pg_drop(kvm_txn *t, pgno_t pg, uint64_t n)
{
    kvm_env *e = t->env;
    if (e->backend != KVM_BACKEND_MMAP || !n || pg < 2 || (pg + n) * e->psize > e->map_len)
        return;
    kvm_sys.madvise(e->base + pg * e->psize, n * e->psize, MADV_DONTNEED);
}

int pg_verify(kvm_txn *t, const uint8_t *p, pgno_t pg)
{
    uint32_t ps = t->env->psize;
    if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, ps - 4))
        return kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch (the page is damaged; run kvmap-check)",
                       (unsigned long long)pg);
    return 0;
}

/* A zeroed page of this transaction at pg, with its header's type, txnid
** and page number set. */
static int dirty_page(kvm_txn *t, pgno_t pg, int type, uint8_t **out)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d)
        d->live = 1;
    else {
        int rc = dirty_add(t, pg, &d);
        if (rc)
            return rc;
    }
    uint8_t *p = dirty_ptr(t, d);
    memset(p, 0, t->env->psize);
    p[PH_TYPE] = (uint8_t)type;
    wr64(p + PH_TXNID, t->txnid);
    wr64(p + PH_PGNO, pg);
    *out = p;
    return 0;
}

int pg_new(kvm_txn *t, int type, uint8_t **out, pgno_t *pgp)
{
    if (t->pool.n == 0)
        return kvm_err(KVM_NEED_PAGES, "page pool exhausted");
    pgno_t pg = t->pool.v[--t->pool.n];
    int rc = dirty_page(t, pg, type, out);
    if (rc)
        return rc;
    if (type == PT_BRANCH || type == PT_LEAF)
        wr32(*out + PH_UPPER, t->env->psize);
    *pgp = pg;
    return 0;
}

int pg_write(kvm_txn *t, pgno_t pg, uint8_t **out, pgno_t *newpg)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d && d->live) {
        *out = dirty_ptr(t, d);
        *newpg = pg;
        return 0;
    }
    const uint8_t *src;
    int rc = pg_read(t, pg, &src);
    if (rc)
        return rc;
    /* Copying a damaged page would give it a fresh checksum: verify first
    ** (a verifying handle's pg_read did already). */
    if (!t->env->verify && (rc = pg_verify(t, src, pg)))
        return rc;
    uint8_t *dst;
    pgno_t np;
    if ((rc = pg_new(t, src[PH_TYPE], &dst, &np)))
        return rc;
    memcpy(dst, src, t->env->psize);
    wr64(dst + PH_TXNID, t->txnid);
    wr64(dst + PH_PGNO, np);
    if ((rc = pg_free(t, pg)))
        return rc;
    *out = dst;
    *newpg = np;
    return 0;
}

int pg_free(kvm_txn *t, pgno_t pg)
{
    dirty_ent *d = dirty_find(t, pg);
    if (d && d->live) {
        d->live = 0;   /* born in this transaction: reuse it right away */
        return pgvec_push(&t->pool, pg);
    }
    return pgvec_push(&t->freed, pg);
}

int pg_check_node(kvm_txn *t, const uint8_t *p, pgno_t pg, int type)
{
    uint32_t ps = t->env->psize;
    unsigned n = rd16(p + PH_NKEYS);
    uint32_t upper = rd32(p + PH_UPPER);
    if (p[PH_TYPE] != type)
        return kvm_err(KVM_CORRUPT, "page %llu: type %u where a %s page belongs",
                       (unsigned long long)pg, p[PH_TYPE], type == PT_LEAF ? "leaf" : "branch");
    if (rd64(p + PH_PGNO) != pg)
        return kvm_err(KVM_CORRUPT, "page %llu: header says it is page %llu",
                       (unsigned long long)pg, (unsigned long long)rd64(p + PH_PGNO));
    /* Every page of a snapshot's tree was written by its commit or an
    ** earlier one: a later txnid is a page reused after a meta that a
    ** crash (without sync) left behind. */
    if (rd64(p + PH_TXNID) > t->txnid)
        return kvm_err(KVM_CORRUPT, "page %llu: written by transaction %llu, after this snapshot's %llu",
                       (unsigned long long)pg, (unsigned long long)rd64(p + PH_TXNID),
                       (unsigned long long)t->txnid);
    if (PH_SIZE + 2u * n > upper || upper > ps || (type == PT_BRANCH && n == 0))
        return kvm_err(KVM_CORRUPT, "page %llu: bad cell count or content offset", (unsigned long long)pg);
    return 0;
}

/* ------------------------------------------------------------ transactions */

/* End a transaction: its reader slot and pages go, the struct stays for
** the references that still point at it (kvm_txn_release frees it). */
static int txn_end(kvm_txn *t)
{
    if (t->done)
        return 0;
    snapshot_release(t->env, t);
    if (t->dirty)
        for (size_t i = 0; i < t->dcap; i++)
            free(t->dirty[i].buf);
    free(t->dirty);
    free(t->pool.v);
    free(t->freed.v);
    t->dirty = NULL;
    t->dcap = t->ndirty = 0;
    memset(&t->pool, 0, sizeof t->pool);
    memset(&t->freed, 0, sizeof t->freed);
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    return 1;
}

static int txn_begin(kvm_env *e, int write, kvm_txn **out)
{
    int rc = file_intact(e);
    if (rc)
        return rc;
    if (write && e->readonly)
        return kvm_err(KVM_READONLY, "database is open read-only");
    if (write && e->failed)
        return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
    kvm_txn *t = calloc(1, sizeof *t);
    if (!t)
        return kvm_err(KVM_NOMEM, "allocating a transaction");
    t->env = e;
    t->refs = 1;
    t->slot = -1;
    if (!write) {
        rc = snapshot_acquire(e, t);
        if (rc) {
            free(t);
            return rc;
        }
    } else {
        kvm_state s;
        state_load(e, &s);
        t->write = 1;
        t->txnid = s.txnid + 1;
        t->root = s.root;
        t->depth = s.depth;
        t->entries = s.entries;
        t->limit = s.hwm;
        t->dcap = 256;
        t->dirty = calloc(t->dcap, sizeof *t->dirty);
        if (!e->scratch) {   /* one writer at a time: the scratch space is the environment's */
            e->scratch = malloc((size_t)e->psize * 5);
            e->cells = malloc((size_t)e->psize * 2 * sizeof(void *));
        }
        t->scratch = e->scratch;
        t->cells = e->cells;
        if (!t->dirty || !t->scratch || !t->cells) {
            txn_end(t);
            free(t);
            return kvm_err(KVM_NOMEM, "allocating a write transaction");
        }
    }
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_ACQ_REL);
    *out = t;
    return 0;
}

int kvm_txn_begin(kvm_env *e, int write, kvm_txn **out)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = txn_begin(e, write, out);
    env_leave(e);
    return rc;
}

int kvm_txn_abort(kvm_txn *t)
{
    if (!t)
        return 0;
    /* A commit running in another thread (without the GIL) finishes first
    ** (in a child after fork() that thread does not exist). */
    while (__atomic_load_n(&t->busy, __ATOMIC_ACQUIRE) && !env_forked(t->env))
        sched_yield();
    return txn_end(t);
}

void kvm_txn_release(kvm_txn *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    kvm_env *e = t->env;
    kvm_txn_abort(t);
    free(t);
    kvm_env_release(e);
}

/* The body of a public call on a transaction: run `expr` between
** txn_enter and txn_leave, or return what txn_enter refused with. */
#define TXN_CALL(t, type, expr)        \
    do {                               \
        int rc_ = txn_enter(t);        \
        if (rc_)                       \
            return rc_;                \
        type r_ = (expr);              \
        txn_leave(t);                  \
        return r_;                     \
    } while (0)

/* runs: pairs (start, count), lowest first; popped lowest first. */
static int pool_add(kvm_txn *t, const uint64_t *runs, size_t nruns)
{
    kvm_env *e = t->env;
    for (size_t r = nruns; r-- > 0;) {
        uint64_t start = runs[2 * r], count = runs[2 * r + 1];
        if (!t->write || start < 2 || start + count < start || (start + count) * e->psize > e->file_size)
            return kvm_err(KVM_INVALID, "pool pages [%llu, %llu) are not in the file",
                           (unsigned long long)start, (unsigned long long)(start + count));
        for (uint64_t i = count; i-- > 0;) {
            int rc = pgvec_push(&t->pool, start + i);
            if (rc)
                return rc;
        }
        if (start + count > t->limit)
            t->limit = start + count;
    }
    return 0;
}

int kvm_txn_pool_add(kvm_txn *t, const uint64_t *runs, size_t nruns)
{
    TXN_CALL(t, int, pool_add(t, runs, nruns));
}

static int64_t txn_dirty(kvm_txn *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->dcap; i++)
        n += t->dirty[i].pgno && t->dirty[i].live;
    return (int64_t)(n + t->freed.n);
}

int64_t kvm_txn_dirty(kvm_txn *t) { TXN_CALL(t, int64_t, txn_dirty(t)); }

uint64_t kvm_txn_pages_needed(kvm_txn *t) { return t->need; }

static int64_t pages_out(const pgvec *v, const uint64_t **out)
{
    *out = v->v;
    return (int64_t)v->n;
}

int64_t kvm_txn_freed(kvm_txn *t, const uint64_t **out) { TXN_CALL(t, int64_t, pages_out(&t->freed, out)); }
int64_t kvm_txn_pool(kvm_txn *t, const uint64_t **out) { TXN_CALL(t, int64_t, pages_out(&t->pool, out)); }
int64_t kvm_txn_entries(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->entries); }
int64_t kvm_txn_id(kvm_txn *t) { TXN_CALL(t, int64_t, (int64_t)t->txnid); }

static int write_page_op(kvm_txn *t, uint64_t pgno, int type, uint32_t nkeys, uint64_t next,
                         const char *body, size_t len)
{
    kvm_env *e = t->env;
    if (!t->write || pgno < 2 || (pgno + 1) * e->psize > e->file_size || len > e->psize - PH_SIZE ||
        nkeys > 0xffff)
        return kvm_err(KVM_INVALID, "bad free-list page %llu", (unsigned long long)pgno);
    uint8_t *p;
    int rc = dirty_page(t, pgno, type, &p);
    if (rc)
        return rc;
    wr16(p + PH_NKEYS, (uint16_t)nkeys);
    wr64(p + PH_NEXT, next);
    memcpy(p + PH_SIZE, body, len);
    if (pgno >= t->limit)
        t->limit = pgno + 1;
    return 0;
}

int kvm_txn_write_page(kvm_txn *t, uint64_t pgno, int type, uint32_t nkeys, uint64_t next,
                       const char *body, size_t len)
{
    int rc = txn_enter(t);
    if (rc)
        return rc;
    GUARDED(t->env, t, rc, write_page_op(t, pgno, type, nkeys, next, body, len));   /* writemap */
    txn_leave(t);
    return rc;
}

static int cmp_dirty(const void *a, const void *b)
{
    pgno_t x = (*(dirty_ent *const *)a)->pgno, y = (*(dirty_ent *const *)b)->pgno;
    return x < y ? -1 : x > y;
}

/* One pwrite per page, never a long vectored write: ext4 turns long writes
** into large page-cache folios, after which every 4 KiB write or msync of a
** later commit costs as much as a whole folio (research/os-probe.md). */
static int write_page(kvm_env *e, const uint8_t *p, pgno_t pg)
{
    size_t done = 0;
    while (done < e->psize) {
        ssize_t n = kvm_sys.pwrite(e->fd, p + done, e->psize - done, (off_t)(pg * e->psize + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return kvm_err_sys(space_code(errno), errno, "writing pages");
        }
        if (n == 0)
            return kvm_err_sys(KVM_IO, EIO, "writing pages");
        done += (size_t)n;
    }
    return 0;
}

static int checksum_pages(kvm_txn *t, dirty_ent **order, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = dirty_ptr(t, order[i]);
        wr32(p + PH_CHECKSUM, kvm_crc32c(0, p + 4, t->env->psize - 4));
    }
    return 0;
}

/* meta[]: hwm, free_index, free_pending, free_count, pending_count, pending_floor */
static int txn_commit(kvm_txn *t, const uint64_t *meta, int sync)
{
    kvm_env *e = t->env;
    if (!t->write)
        return kvm_err(KVM_INVALID, "commit of a read-only transaction");
    if (e->failed)
        return kvm_err(KVM_FAILED, "an earlier write or sync failed: reopen the database");
    kvm_state s = {t->txnid, t->root, t->entries, meta[0], meta[1], meta[2], meta[3], meta[4], meta[5],
                   t->depth, sync ? 0 : M_FLAGS_NOSYNC};
    if (s.hwm < 2 || s.hwm * e->psize > e->file_size)
        return kvm_err(KVM_INVALID, "commit with a high-water mark of %llu pages", (unsigned long long)s.hwm);

    dirty_ent **order = malloc((t->ndirty + 1) * sizeof *order);
    if (!order)
        return kvm_err(KVM_NOMEM, "allocating the commit list");
    size_t n = 0;
    for (size_t i = 0; i < t->dcap; i++)
        if (t->dirty[i].pgno && t->dirty[i].live) {
            if (t->dirty[i].pgno >= s.hwm) {
                free(order);
                return kvm_err(KVM_INVALID, "page %llu lies above the high-water mark %llu",
                               (unsigned long long)t->dirty[i].pgno, (unsigned long long)s.hwm);
            }
            order[n++] = &t->dirty[i];
        }
    qsort(order, n, sizeof *order, cmp_dirty);
    int rc;
    GUARDED(e, t, rc, checksum_pages(t, order, n));   /* writemap: the pages are mapped */
    for (size_t i = 0; i < n && !rc && !e->writemap; i++)
        rc = write_page(e, order[i]->buf, order[i]->pgno);
    if (!rc && sync && kvm_sys.fdatasync(e->fd) != 0) {
        e->failed = 1;  /* the kernel may have dropped the dirty pages: never retry */
        rc = kvm_err_sys(KVM_IO, errno, "syncing pages (the handle refuses writes until reopened)");
    }
    if (!rc) {
        uint8_t m[META_SIZE];
        meta_encode(m, e->psize, &s);
        ssize_t w = kvm_sys.pwrite(e->fd, m, META_SIZE, (off_t)((s.txnid & 1) * e->psize));
        if (w < 0 && space_code(errno) == KVM_DISKFULL) {
            /* Nothing was written: the commit did not happen, the older meta
            ** stands and the handle stays usable (DiskFullError's promise). */
            rc = kvm_err_sys(KVM_DISKFULL, errno, "writing the meta page");
        } else if (w != META_SIZE) {
            /* EIO may report an earlier writeback failure; a short write
            ** left part of a meta: trust nothing more of this handle. */
            e->failed = 1;
            rc = kvm_err_sys(KVM_IO, w < 0 ? errno : EIO,
                             "writing the meta page (the handle refuses writes until reopened)");
        } else if (sync && kvm_sys.fdatasync(e->fd) != 0) {
            e->failed = 1;
            rc = kvm_err_sys(KVM_IO, errno, "syncing the meta page (the handle refuses writes until reopened)");
        }
    }
    if (!rc && e->backend == KVM_BACKEND_PREAD) {
        pthread_mutex_lock(&e->cache_lock);
        for (size_t i = 0; i < n; i++) {
            int32_t sl = cache_find(&e->cache, order[i]->pgno);
            if (sl >= 0)
                memcpy(e->cache.mem + (size_t)sl * e->psize, order[i]->buf, e->psize);
        }
        pthread_mutex_unlock(&e->cache_lock);
    }
    free(order);
    if (rc)
        return rc;
    e->meta_slot = (int)(s.txnid & 1);
    state_publish(e, &s);
    txn_end(t);
    return 0;
}

/* A commit may run without the GIL (pyglue.h): claim the transaction while
** the caller still holds it, so an abort from another thread waits for the
** commit instead of freeing its pages under it. */
int kvm_txn_claim(kvm_txn *t)
{
    int rc = txn_enter(t);
    if (rc)
        return rc;
    if (__atomic_exchange_n(&t->busy, 1, __ATOMIC_ACQ_REL)) {
        txn_leave(t);
        return kvm_err(KVM_INVALID, "the transaction is being committed by another thread");
    }
    return 0;
}

int kvm_txn_commit_claimed(kvm_txn *t, const uint64_t *meta, int sync)
{
    int rc = txn_commit(t, meta, sync);
    __atomic_store_n(&t->busy, 0, __ATOMIC_RELEASE);
    txn_leave(t);
    return rc;
}

int kvm_txn_commit(kvm_txn *t, const uint64_t *meta, int sync)
{
    int rc = kvm_txn_claim(t);
    return rc ? rc : kvm_txn_commit_claimed(t, meta, sync);
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
static int init_file(kvm_env *e, uint32_t ps)
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
    for (size_t done = 0; done < 2ull * ps && !rc;) {
        ssize_t w = kvm_sys.pwrite(e->fd, buf + done, 2ull * ps - done, (off_t)done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = kvm_err_sys(w < 0 ? space_code(errno) : KVM_IO, w < 0 ? errno : EIO,
                             "initialising the database file");
        else
            done += (size_t)w;
    }
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
static int creation_leftover(kvm_env *e, uint32_t want, uint32_t *psp)
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

static int load_meta(kvm_env *e, uint32_t want_ps, int older)
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
            /* KVM_OPEN_OLDER: the caller found more of this sync=False
            ** commit missing (its free list) and wants the state before it. */
            last = kvm_err(KVM_CORRUPT, "%s: meta %d passed over (KVM_OPEN_OLDER)", e->path, i);
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

/* Release the file and the mapping once no call is in flight.  In a child
** after fork() the lock, mapping and file are the parent's: only the
** child's own copies go (its descriptor and mapping), never the flock, and
** nothing waits for calls that were in flight in the parent's threads. */
void kvm_env_close(kvm_env *e)
{
    if (!e || __atomic_exchange_n(&e->closing, 1, __ATOMIC_SEQ_CST))
        return;
    int forked = env_forked(e);
    while (!forked && __atomic_load_n(&e->inflight, __ATOMIC_SEQ_CST))
        sched_yield();
    if (e->base)
        kvm_sys.munmap(e->base, e->reserved);
    e->base = NULL;
    if (e->fd >= 0) {
        /* A mapping that failed to unmap (here, or the old one of a remap)
        ** keeps the open file, and so its flock, alive: drop the lock
        ** explicitly or the file stays locked until the process exits. */
        if (!forked)
            kvm_sys.flock(e->fd, LOCK_UN);
        kvm_sys.close(e->fd);
    }
    e->fd = -1;
    cache_free(&e->cache);
    e->closed = 1;
}

static void env_free(kvm_env *e)
{
    kvm_env_close(e);
    if (!env_forked(e)) {   /* a parent's thread may hold them in the child's copy */
        pthread_rwlock_destroy(&e->map_lock);
        pthread_mutex_destroy(&e->cache_lock);
    }
    free(e->readers);
    free(e->scratch);
    free(e->cells);
    free(e->path);
    free(e);
}

void kvm_env_release(kvm_env *e)
{
    if (e && __atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0)
        env_free(e);
}

int kvm_env_open(const char *path, const kvm_options *opt, kvm_env **out)
{
    uint32_t want = opt->page_size;
    if (want && (want < KVM_MIN_PAGE || want > KVM_MAX_PAGE || (want & (want - 1))))
        return kvm_err(KVM_INVALID, "page size must be a power of two from 4096 to 65536");
    if (opt->backend != KVM_BACKEND_MMAP && opt->backend != KVM_BACKEND_PREAD)
        return kvm_err(KVM_INVALID, "unknown backend");
    if (opt->growth < KVM_GROW_RESERVE || opt->growth > KVM_GROW_REMAP)
        return kvm_err(KVM_INVALID, "unknown growth strategy");
    kvm_env *e = calloc(1, sizeof *e);
    if (!e)
        return kvm_err(KVM_NOMEM, "allocating the environment");
    pthread_once(&fork_once, fork_watch);
    e->refs = 1;
    e->fork_gen = __atomic_load_n(&kvm_fork_gen, __ATOMIC_RELAXED);
    e->verify = (opt->flags & KVM_OPEN_VERIFY) != 0;
    e->fd = -1;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&e->map_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&e->cache_lock, NULL);
    e->readonly = (opt->flags & KVM_OPEN_READONLY) != 0;
    e->backend = opt->backend;
    e->growth = opt->growth;
    e->writemap = opt->backend == KVM_BACKEND_MMAP && !e->readonly && (opt->flags & KVM_OPEN_WRITEMAP);
    e->nreaders = opt->max_readers ? opt->max_readers : 126;
    e->readers = malloc(sizeof(uint64_t) * e->nreaders);
    e->path = strdup(path);
    int rc = 0;
    if (!e->readers || !e->path) {
        rc = kvm_err(KVM_NOMEM, "allocating the environment");
        goto fail;
    }
    memset(e->readers, 0xff, sizeof(uint64_t) * e->nreaders);
    int oflags = e->readonly ? O_RDONLY : O_RDWR | ((opt->flags & KVM_OPEN_CREATE) ? O_CREAT : 0);
    e->fd = kvm_sys.open(path, oflags, 0644);
    if (e->fd < 0) {
        rc = kvm_err_sys(KVM_IO, errno, "opening the database file");
        goto fail;
    }
    uint32_t mode;
    if (kvm_sys.fstat(e->fd, &e->file_size, &mode) != 0) {
        rc = kvm_err_sys(KVM_IO, errno, "reading the file's status");
        goto fail;
    }
    if (S_ISDIR(mode)) {
        rc = kvm_err_sys(KVM_IO, EISDIR, "opening the database file");
        goto fail;
    }
    if (!S_ISREG(mode)) {
        rc = kvm_err(KVM_NOTREGULAR, "%s is a %s, not a regular file: a kvmap database is a regular file",
                     path, S_ISCHR(mode) ? "character device" : S_ISBLK(mode) ? "block device"
                                          : S_ISFIFO(mode) ? "FIFO" : S_ISSOCK(mode) ? "socket" : "special file");
        goto fail;
    }
    /* Until the lock file and shared reader table of multi-process support
    ** exist: one writable handle, or any number of read-only ones, per file
    ** (in this or any process).  A writer would otherwise reuse pages that
    ** another handle's readers still reach. */
    if (kvm_sys.flock(e->fd, (e->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK
                 ? kvm_err(KVM_LOCKED, e->readonly ? "%s is open for writing by another handle"
                                                   : "%s is already open in another handle", path)
                 : kvm_err_sys(KVM_IO, errno, "locking the database file");
        goto fail;
    }
    /* the size again, under the lock: a writer may have grown the file */
    if (kvm_sys.fstat(e->fd, &e->file_size, &mode) != 0) {
        rc = kvm_err_sys(KVM_IO, errno, "reading the file's status");
        goto fail;
    }
    int may_init = !e->readonly && (opt->flags & KVM_OPEN_CREATE);
    if (e->file_size == 0) {
        if (!may_init) {
            rc = kvm_err(KVM_FORMAT, "%s is empty, not a kvmap database", path);
            goto fail;
        }
        rc = init_file(e, want ? want : KVM_MIN_PAGE);
    } else if ((rc = load_meta(e, want, (opt->flags & KVM_OPEN_OLDER) != 0)) != 0 &&
               (rc == KVM_FORMAT || rc == KVM_CORRUPT)) {
        /* A file that only an interrupted creation wrote holds nothing. */
        uint32_t ps = 0;
        int left = creation_leftover(e, want, &ps);
        if (left < 0)
            rc = left;
        else if (left && may_init)
            rc = init_file(e, ps);
        else if (left)
            rc = kvm_err(KVM_FORMAT, "%s holds only an interrupted creation (no data): open it writable "
                                     "to initialise it", path);
    }
    if (rc)
        goto fail;
    e->file_size = e->file_size / e->psize * e->psize;
    e->max_cell = (e->psize - PH_SIZE) / 4;
    e->max_key = e->max_cell - 16;
    if (e->backend == KVM_BACKEND_MMAP && !(rc = guard_install()))
        rc = map_open(e, opt->map_size);
    else
        rc = cache_init(&e->cache, opt->cache_bytes / e->psize, e->psize);
    if (rc)
        goto fail;
    *out = e;
    return 0;
fail:
    env_free(e);
    return rc;
}

int kvm_env_stat(kvm_env *e, kvm_stat *st)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_state s;
    state_load(e, &s);
    memset(st, 0, sizeof *st);
    st->txnid = s.txnid;
    st->root = s.root;
    st->entries = s.entries;
    st->hwm = s.hwm;
    st->free_index = s.free_index;
    st->free_pending = s.free_pending;
    st->free_count = s.free_count;
    st->pending_count = s.pending_count;
    st->pending_floor = s.pending_floor;
    st->depth = s.depth;
    st->page_size = e->psize;
    st->meta_slot = e->meta_slot;
    st->meta_fallback = e->meta_fallback;
    st->meta_nosync = (s.flags & M_FLAGS_NOSYNC) != 0;
    st->failed = e->failed;
    st->file_size = e->file_size;
    st->map_base = (uint64_t)(uintptr_t)e->base;
    st->map_length = e->map_len;
    st->map_reserved = e->reserved;
    st->cache_hits = e->cache.hits;
    st->cache_misses = e->cache.misses;
    st->n_pread = kvm_sys_counts.pread;
    st->n_pwrite = kvm_sys_counts.pwrite;
    st->n_fdatasync = kvm_sys_counts.fdatasync;
    st->n_fallocate = kvm_sys_counts.fallocate;
    st->n_mmap = kvm_sys_counts.mmap;
    st->n_mremap = kvm_sys_counts.mremap;
    st->n_munmap = kvm_sys_counts.munmap;
    st->n_madvise = kvm_sys_counts.madvise;
    env_leave(e);
    return 0;
}

uint32_t kvm_env_max_key(kvm_env *e) { return e->max_key; }
int64_t kvm_env_entries(kvm_env *e)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_state s;
    state_load(e, &s);
    env_leave(e);
    return (int64_t)s.entries;
}

int64_t kvm_env_txnid(kvm_env *e)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    kvm_state s;
    state_load(e, &s);
    env_leave(e);
    return (int64_t)s.txnid;
}

static int read_page(kvm_env *e, uint64_t pgno, int type, char *out)
{
    uint8_t *p = (uint8_t *)out;
    kvm_state s;
    state_load(e, &s);
    if (pgno < 2 || pgno >= s.hwm)
        return kvm_err(KVM_CORRUPT, "page number %llu out of range", (unsigned long long)pgno);
    ssize_t n = kvm_sys.pread(e->fd, p, e->psize, (off_t)(pgno * e->psize));
    if (n < 0)
        return kvm_err_sys(KVM_IO, errno, "reading a page");
    if (n != (ssize_t)e->psize)
        return kvm_err(KVM_CORRUPT, "page %llu lies past the end of the file", (unsigned long long)pgno);
    if (rd32(p + PH_CHECKSUM) != kvm_crc32c(0, p + 4, e->psize - 4))
        return kvm_err(KVM_CORRUPT, "page %llu: checksum mismatch", (unsigned long long)pgno);
    if (p[PH_TYPE] != type || rd64(p + PH_PGNO) != pgno)
        return kvm_err(KVM_CORRUPT, "page %llu: not the expected free-list page", (unsigned long long)pgno);
    return 0;
}

int kvm_env_read_page(kvm_env *e, uint64_t pgno, int type, char *out)
{
    int rc = env_enter(e);
    if (rc)
        return rc;
    rc = read_page(e, pgno, type, out);
    env_leave(e);
    return rc;
}
