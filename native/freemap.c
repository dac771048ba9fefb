/*
** freemap.c -- a growable bitmap of reusable pages: the mechanism under the
** free-space rules of space.c (which pages, when, is decided there).
**
** Bit p of word p/64 is set iff page p is reusable.  The on-disk free-list
** bitmap pages hold the same bits in the same order, so encoding a range is
** a copy.  "take" hands out the lowest pages first (low pages fill before
** the file grows, and a free tail can be given back); a hint remembers the
** lowest word that may have a bit set, so a take does not rescan the full
** low part of the map.  Every function checks its arguments: a page freed
** twice or outside the map is KVM_CORRUPT, never a write out of bounds.
*/
#include "internal.h"
#include <stdlib.h>

struct kvm_freemap {
    uint64_t *w;
    uint64_t  nwords;
    uint64_t  count;
    uint64_t  hint;     /* no bit is set in words below this */
};

kvm_freemap *kvm_fm_new(void) { return calloc(1, sizeof(kvm_freemap)); }

void kvm_fm_free(kvm_freemap *fm)
{
    if (fm) {
        free(fm->w);
        free(fm);
    }
}

uint64_t kvm_fm_count(kvm_freemap *fm) { return fm->count; }

static int fm_reserve(kvm_freemap *fm, uint64_t pages)
{
    uint64_t need = (pages + 63) / 64;
    if (need <= fm->nwords)
        return 0;
    uint64_t n = fm->nwords ? fm->nwords : 64;
    while (n < need)
        n *= 2;
    uint64_t *w = realloc(fm->w, n * sizeof *w);
    if (!w)
        return kvm_err(KVM_NOMEM, "allocating the free-page map");
    memset(w + fm->nwords, 0, (n - fm->nwords) * sizeof *w);
    fm->w = w;
    fm->nwords = n;
    return 0;
}

static inline uint64_t run_mask(uint64_t lo, uint64_t hi) /* bits [lo, hi) of one word, hi <= 64 */
{
    uint64_t m = hi == 64 ? ~0ull : (1ull << hi) - 1;
    return m & ~((1ull << lo) - 1);
}

/* Apply op to pages [s, s+n): 0 test-all-clear, 1 test-all-set, 2 set, 3 clear. */
static int fm_run(kvm_freemap *fm, uint64_t s, uint64_t n, int op)
{
    uint64_t e = s + n;
    while (s < e) {
        uint64_t wi = s / 64, lo = s % 64, hi = (e - wi * 64) < 64 ? e - wi * 64 : 64;
        uint64_t m = run_mask(lo, hi);
        switch (op) {
        case 0: if (fm->w[wi] & m) return 1; break;
        case 1: if ((fm->w[wi] & m) != m) return 1; break;
        case 2: fm->w[wi] |= m; break;
        case 3: fm->w[wi] &= ~m; break;
        }
        s = (wi + 1) * 64;
    }
    return 0;
}

static int fm_check_runs(kvm_freemap *fm, const uint64_t *runs, size_t nruns, int want_set)
{
    for (size_t i = 0; i < nruns; i++) {
        uint64_t s = runs[2 * i], n = runs[2 * i + 1];
        if (s < META_PAGES || n == 0 || s + n < s)
            return kvm_err(KVM_CORRUPT, "bad free-page run [%llu, +%llu)", (unsigned long long)s,
                           (unsigned long long)n);
        if (!want_set) {
            int rc = fm_reserve(fm, s + n);
            if (rc)
                return rc;
        } else if (s + n > fm->nwords * 64)
            return kvm_err(KVM_CORRUPT, "page %llu is not free", (unsigned long long)s);
        if (fm_run(fm, s, n, want_set))
            return kvm_err(KVM_CORRUPT, want_set ? "page run at %llu is not free"
                                                 : "page run at %llu freed twice",
                           (unsigned long long)s);
    }
    return 0;
}

/* runs: pairs (start, count).  All or nothing. */
int kvm_fm_add(kvm_freemap *fm, const uint64_t *runs, size_t nruns)
{
    int rc = fm_check_runs(fm, runs, nruns, 0);
    if (rc)
        return rc;
    for (size_t i = 0; i < nruns; i++) {
        fm_run(fm, runs[2 * i], runs[2 * i + 1], 2);
        fm->count += runs[2 * i + 1];
        if (runs[2 * i] / 64 < fm->hint)
            fm->hint = runs[2 * i] / 64;
    }
    return 0;
}

int kvm_fm_remove(kvm_freemap *fm, const uint64_t *runs, size_t nruns)
{
    int rc = fm_check_runs(fm, runs, nruns, 1);
    if (rc)
        return rc;
    for (size_t i = 0; i < nruns; i++) {
        fm_run(fm, runs[2 * i], runs[2 * i + 1], 3);
        fm->count -= runs[2 * i + 1];
    }
    return 0;
}

/* Set (on) or clear every bit of pages [lo, hi), whatever it was: unlike
** add and remove, for a set that may hold any of them already (space.c's
** holes).  Fails only for memory. */
int kvm_fm_set(kvm_freemap *fm, uint64_t lo, uint64_t hi, int on)
{
    if (lo >= hi)
        return 0;
    if (on) {
        int rc = fm_reserve(fm, hi);
        if (rc)
            return rc;
        if (lo / 64 < fm->hint)
            fm->hint = lo / 64;
    } else if (hi > fm->nwords * 64) {
        hi = fm->nwords * 64;
    }
    for (uint64_t p = lo; p < hi;) {
        uint64_t wi = p / 64, top = hi - wi * 64 < 64 ? hi - wi * 64 : 64;
        uint64_t m = run_mask(p % 64, top), was = fm->w[wi] & m;
        fm->w[wi] = on ? fm->w[wi] | m : fm->w[wi] & ~m;
        fm->count += on ? (uint64_t)__builtin_popcountll(m & ~was) : 0;
        fm->count -= on ? 0 : (uint64_t)__builtin_popcountll(was);
        p = (wi + 1) * 64;
    }
    return 0;
}

/* The first page in [lo, hi) whose bit is `on`, or hi if none is. */
uint64_t kvm_fm_find(kvm_freemap *fm, uint64_t lo, uint64_t hi, int on)
{
    uint64_t end = fm->nwords * 64;
    for (uint64_t p = lo; p < hi;) {
        if (p >= end)
            return on ? hi : p;
        uint64_t w = (on ? fm->w[p / 64] : ~fm->w[p / 64]) >> (p % 64);
        if (w) {
            p += (uint64_t)__builtin_ctzll(w);
            return p < hi ? p : hi;
        }
        p = (p / 64 + 1) * 64;
    }
    return hi;
}

/* Take up to n of the lowest free pages whose bit is clear in `but` (when
** given), as at most cap runs; returns the number of runs written (their
** counts add up to min(n, such pages) unless cap runs were not enough).
** *hint: no such page lies in words below it; advanced past the words
** found without one. */
static size_t take(kvm_freemap *fm, const kvm_freemap *but, uint64_t n, uint64_t *runs, size_t cap,
                   uint64_t *hint)
{
    size_t k = 0;
    uint64_t wi = *hint;
    while (n > 0 && k < cap && wi < fm->nwords) {
        uint64_t w = fm->w[wi] & (but && wi < but->nwords ? ~but->w[wi] : ~0ull);
        if (!w) {
            wi++;
            *hint = wi;
            continue;
        }
        uint64_t lo = (uint64_t)__builtin_ctzll(w);
        uint64_t rest = ~(w >> lo);                 /* zeros where pages are free */
        uint64_t ones = rest ? (uint64_t)__builtin_ctzll(rest) : 64;
        if (lo + ones > 64)
            ones = 64 - lo;
        if (ones > n)
            ones = n;
        uint64_t s = wi * 64 + lo;
        fm->w[wi] &= ~run_mask(lo, lo + ones);
        fm->count -= ones;
        n -= ones;
        if (k > 0 && runs[2 * (k - 1)] + runs[2 * (k - 1) + 1] == s)
            runs[2 * (k - 1) + 1] += ones;
        else {
            runs[2 * k] = s;
            runs[2 * k + 1] = ones;
            k++;
        }
    }
    return k;
}

size_t kvm_fm_take(kvm_freemap *fm, uint64_t n, uint64_t *runs, size_t cap)
{
    return take(fm, NULL, n, runs, cap, &fm->hint);
}

/* kvm_fm_take of the pages not in `but`; *from is the caller's hint for
** them (kept by the caller: lowered whenever it adds pages to fm). */
size_t kvm_fm_take_but(kvm_freemap *fm, const kvm_freemap *but, uint64_t n, uint64_t *runs, size_t cap,
                       uint64_t *from)
{
    if (*from < fm->hint)
        *from = fm->hint;
    return take(fm, but, n, runs, cap, from);
}

/* Length of the free run that ends right below page `end` (0 if none). */
uint64_t kvm_fm_tail(kvm_freemap *fm, uint64_t end)
{
    uint64_t n = 0;
    while (end > META_PAGES && end - 1 < fm->nwords * 64 && (fm->w[(end - 1) / 64] >> ((end - 1) % 64) & 1)) {
        end--;
        n++;
    }
    return n;
}

/* Copy bits [first, first + nbits) (first and nbits multiples of 64) to out. */
void kvm_fm_encode(kvm_freemap *fm, uint64_t first, uint64_t nbits, char *out)
{
    uint64_t wi = first / 64, nw = nbits / 64;
    memset(out, 0, nw * 8);
    if (wi < fm->nwords)
        memcpy(out, fm->w + wi, (wi + nw <= fm->nwords ? nw : fm->nwords - wi) * 8);
}

/* Add the pages whose bits are set in `in` (a bitmap page body covering
** [first, first + nbits)); pages must lie in [2, limit).  Returns the number
** of pages added, or KVM_CORRUPT. */
int64_t kvm_fm_decode(kvm_freemap *fm, uint64_t first, uint64_t nbits, const char *in, uint64_t limit)
{
    if (first % 64 || nbits % 64)
        return kvm_err(KVM_INVALID, "bitmap range not word aligned");
    int rc = fm_reserve(fm, first + nbits);
    if (rc)
        return rc;
    uint64_t added = 0, wi0 = first / 64;
    for (uint64_t i = 0; i < nbits / 64; i++) {
        uint64_t w = rd64((const uint8_t *)in + 8 * i);
        if (!w)
            continue;
        uint64_t base = first + 64 * i;
        uint64_t lowbad = base < META_PAGES ? run_mask(0, META_PAGES - base) : 0;
        uint64_t highbad = base + 64 <= limit ? 0 : (limit <= base ? ~0ull : ~run_mask(0, limit - base));
        if (w & (lowbad | highbad))
            return kvm_err(KVM_CORRUPT, "free-list bitmap lists pages outside the database near page %llu",
                           (unsigned long long)base);
        if (fm->w[wi0 + i] & w)
            return kvm_err(KVM_CORRUPT, "free-list bitmap lists a page twice near page %llu",
                           (unsigned long long)base);
        fm->w[wi0 + i] |= w;
        added += (uint64_t)__builtin_popcountll(w);
        if (wi0 + i < fm->hint)
            fm->hint = wi0 + i;
    }
    fm->count += added;
    return (int64_t)added;
}

/* Runs of free pages inside [lo, hi), at most cap of them; returns how many. */
size_t kvm_fm_runs(kvm_freemap *fm, uint64_t lo, uint64_t hi, uint64_t *runs, size_t cap)
{
    size_t k = 0;
    if (hi > fm->nwords * 64)
        hi = fm->nwords * 64;
    uint64_t p = lo;
    while (p < hi && k < cap) {
        uint64_t w = fm->w[p / 64] >> (p % 64);
        if (!w) {
            p = (p / 64 + 1) * 64;
            continue;
        }
        p += (uint64_t)__builtin_ctzll(w);
        if (p >= hi)
            break;
        uint64_t s = p;
        while (p < hi && (fm->w[p / 64] >> (p % 64) & 1))
            p++;
        runs[2 * k] = s;
        runs[2 * k + 1] = p - s;
        k++;
    }
    return k;
}
