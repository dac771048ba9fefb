/*
** cache.c -- the page cache of the pread backend.
**
** Design and invariants
**  1. CLOCK replacement, a reference bit per slot, a chained hash on the
**     page number; one mutex (cache_lock) held for each C call (op_enter).
**  2. A pointer into the cache stays valid until the call ends: CLOCK gives
**     every page read in the call a second chance, and a call touches far
**     fewer pages than the cache holds.
**  3. With verification on, a page's checksum is checked once, when it is
**     read into the cache.
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

/* ------------------------------------------------------------- page cache */

int cache_init(kvm_cache *c, uint64_t pages, uint32_t psize)
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

void cache_free(kvm_cache *c)
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

int32_t cache_find(kvm_cache *c, pgno_t pg)
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
int cache_get(kvm_env *e, pgno_t pg, const uint8_t **out)
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

/* Bring the cache up to state s (readers.c design note 3): drop the pages
** that the commits after the last one the cache knows wrote, as their
** records list them; everything when those records are gone (older than
** s's floor), many, or unreadable -- an empty cache is always right. */
#define FOLLOW_RECORDS_MAX 1024

static void drop_page(kvm_env *e, uint64_t pg)
{
    int32_t s = cache_find(&e->cache, pg);
    if (s >= 0)
        cache_unlink(&e->cache, s);
}

void cache_follow(kvm_env *e, const kvm_state *s)
{
    kvm_cache *c = &e->cache;
    pthread_mutex_lock(&e->cache_lock);
    uint64_t known = e->cache_txnid;
    if (s->txnid > known) {
        if (known < s->floor || s->txnid - known > FOLLOW_RECORDS_MAX ||
            records_written(e, s, known, drop_page)) {
            for (uint32_t i = 0; i < c->nslots; i++)
                c->pgno[i] = PGNO_NONE;
            for (uint32_t i = 0; i < c->nbuckets; i++)
                c->bucket[i] = -1;
        }
        e->cache_txnid = s->txnid;
    }
    pthread_mutex_unlock(&e->cache_lock);
}
