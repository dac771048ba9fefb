/*
** internal.h -- what the files of the C core share.  The pager, the layer
** under the B+tree, is one concept per file:
**
**   env.c       errors; lifetime (close, release, fork); open; stat, check
**   meta.c      the meta pages, the choice of meta at open, creation
**   lock.c      the lock region every handle shares, in any process
**   readers.c   the seqlock-published committed state, the reader table
**   map.c       the mapping and its growth; the growth policy
**   cache.c     the page cache of the pread backend
**   page.c      a transaction's pages: read, copy-on-write, new, free, verify
**   txn.c       transactions: begin, end, page pool, commit
**   space.c     free-space rules; freelist.c their pages on disk (space.h)
**   copy.c      a page-for-page copy of a snapshot's commit (db.copy)
**
** btree.c (the B+tree) sees pages only through pg_read/pg_write/pg_new/
** pg_free, so it cannot tell the mmap backend from the pread backend;
** guard.c turns a SIGBUS into an error; os.c is the system-call table.
*/
#ifndef KVM_INTERNAL_H
#define KVM_INTERNAL_H

#include "format.h"
#include "kvmap.h"
#include "os.h"
#include "guard.h"
#include "space.h"
#include <pthread.h>
#include <stdint.h>
#include <stddef.h>

typedef uint64_t pgno_t;

/* The committed state, published by the writer and read by readers under a
** sequence lock (env->seq odd while a commit updates it). */
typedef struct kvm_state {
    uint64_t txnid, root, entries, hwm;
    uint64_t free_index, record, free_count, pending_count, floor, durable;
    uint32_t depth, flags;
} kvm_state;

/* The lock region (lock.c; docs/FORMAT.md §9): the file <path>-lock,
** mapped by every handle on the database in any process.  Its fields
** other than the reader slots change only under the writer lock (or the
** open lock's exclusive side, while the first opener builds it). */
#define READER_FREE      UINT64_MAX              /* a reader slot: txnid << 16 | handle */
#define READER_TXNID(v)  ((v) >> 16)
#define READER_HANDLE(v) ((uint32_t)((v) & 0xffff))

typedef struct kvm_shared {
    uint64_t  magic;             /* written last by the first opener */
    uint32_t  psize, nreaders;
    uint64_t  seq;               /* sequence lock over st */
    kvm_state st;                /* the newest commit */
    /* durability (txn.c, FORMAT.md §7): the newest commit known on disk,
    ** its meta slot (never overwritten until a newer commit is durable),
    ** the slot of the newest commit's meta, and what was written since */
    uint64_t  durable;
    int32_t   durable_slot, meta_slot;
    uint64_t  unsynced_bytes, last_flush_ns;
    uint32_t  open_flush;        /* the state opened from the file may not be durable:
                                 ** the first write transaction flushes before it builds on it */
    int32_t   pending_slot;      /* the slot meta_pending's meta is written to */
    uint64_t  file_dev, file_ino;   /* the database file the region is of (st_dev, st_ino) */
    uint64_t  meta_pending;      /* the commit whose meta is being written, not yet published
                                 ** (0: none): a writer that finds it set adopts that commit
                                 ** if its meta made it to the file (meta.c, meta_adopt_pending) */
    /* a background flush (flush.c): the commit it makes durable (0: none),
    ** what its thread reports (that txnid once its fdatasync returned,
    ** FLUSH_FAILED when it failed), the bytes unsynced when it began, the
    ** meta slot of its commit and the handle whose thread runs it */
    uint64_t  flush_txnid, flush_done, flush_bytes;
    int32_t   flush_slot;
    uint32_t  flush_handle;
    uint32_t  handle_pid[LOCK_HANDLES];   /* the process of each live handle, for people */
    uint64_t  readers[];         /* nreaders slots, then a u32 thread id per slot */
} kvm_shared;

/* The thread that took each reader slot (kvm_env_readers), for people. */
static inline uint32_t *reader_threads(kvm_shared *sh) { return (uint32_t *)(sh->readers + sh->nreaders); }

/* Page cache of the pread backend: CLOCK replacement, chained hash. */
typedef struct kvm_cache {
    uint32_t  nslots, nbuckets, hand;
    uint8_t  *mem;
    pgno_t   *pgno;          /* per slot; PGNO_NONE when empty */
    int32_t  *next;          /* hash chain per slot */
    int32_t  *bucket;        /* head slot per bucket */
    uint8_t  *ref;
    uint64_t  hits, misses;
} kvm_cache;

#define PGNO_NONE UINT64_MAX

struct kvm_env {
    /* lifetime (kvmap.h): references, calls in flight, closing, fork */
    int32_t     refs;            /* the Python handle + one per live transaction */
    uint32_t    inflight;        /* public calls running now (env_enter) */
    int         closing;         /* set once by kvm_env_close: refuse new calls */
    int         closed;          /* the file and mapping are released */
    int         opened;          /* kvm_env_open succeeded: close flushes and seals */
    uint64_t    fork_gen;        /* kvm_fork_gen at open: a child sees a newer one */
    int         verify;          /* KVM_OPEN_VERIFY: check every page a read visits */
    int         fd;
    int         readonly, writemap, backend, growth;
    uint32_t    psize;
    uint32_t    max_cell, max_key;
    char       *path;
    uint8_t    *base;            /* mmap backend: start of the mapping */
    uint64_t    map_len;         /* bytes mapped (== file size) */
    uint64_t    reserved;        /* growth reserve: bytes of address space */
    uint64_t    file_size;
    int         map_moves;       /* mremap/remap: readers take map_lock */
    int         random_reads;    /* KVM_OPEN_RANDOM: the mapping gets MADV_RANDOM */
    pthread_rwlock_t map_lock;
    pthread_mutex_t  cache_lock;
    pthread_mutex_t  durable_lock;   /* the meta slot choice and durability (txn.c) */
    kvm_cache   cache;
    uint64_t    cache_txnid;     /* pread: the cache holds no page changed by a commit up to this */
    /* the lock region (lock.c): shared, or private to this handle when the
    ** lock file cannot be opened (read-only, on read-only media) */
    kvm_shared *sh;
    size_t      sh_len;
    int         sh_shared;       /* sh is the mapped lock file (else private memory) */
    int         lock_fd;         /* -1: the region is private */
    uint32_t    handle;          /* this handle's number in the region */
    int         registered;      /* handle is this handle's (lock_register) */
    pthread_mutex_t writer_mutex;   /* writer_depth; the writer lock is per handle */
    int         writer_depth;    /* holds of the writer lock in this handle */
    pthread_mutex_t follow_lock;    /* the mapping follows another process's growth */
    int         meta_fallback;   /* open passed over the newer valid meta (FORMAT.md §2) */
    int         metas_valid;     /* how many meta slots load_meta found valid */
    uint64_t    space_txnid;     /* the commit the free space (space) was loaded at or made */
    uint64_t    sync_bytes;      /* flush once this much is unsynced */
    uint64_t    sync_interval_ns;   /* flush at a commit this long after the last flush */
    int         failed;          /* a sync failed: refuse writes until reopen */
    uint8_t    *scratch;         /* the writer's scratch pages (see kvm_txn) */
    void       *cells;
    kvm_space  *space;           /* writable handles: the free space (space.h) */
    uint64_t    grow_min, grow_max;
    int         grow_lean;       /* the next growth is one grow_min step (txn.c, make_room) */
    /* the background flush (flush.c): its thread, the commit it is asked to
    ** make durable (0: none), and the test mode's result and countdown */
    pthread_mutex_t flush_mutex;
    pthread_cond_t  flush_cond;
    pthread_t   flusher;
    int         flusher_running, flush_stop;
    uint64_t    flush_asked;
    uint64_t    inline_done;
    int         inline_left;
    int         flush_errno;     /* a background flush failed with it: told once (env_failed) */
};

#define FLUSH_FAILED UINT64_MAX   /* sh->flush_done: the flush's fdatasync failed */

typedef struct dirty_ent {
    pgno_t   pgno;
    uint8_t *buf;                /* NULL when the page lives in a writable map */
    int      live;               /* 0: freed again in this transaction */
    uint32_t level;              /* the savepoint level that made it: changed in place only at that level */
} dirty_ent;

/* What a savepoint restores (txn.c): the tree, and how far the lists of
** freed pages went when it was taken. */
typedef struct savepoint {
    pgno_t   root;
    uint32_t depth;
    uint64_t entries;
    size_t   nfreed, nshadowed;
} savepoint;

typedef u64vec pgvec;            /* page numbers (space.h) */

#define VCACHE 16               /* pages a read transaction has verified, by hash */

struct kvm_txn {
    kvm_env  *env;
    int32_t   refs;              /* the Python object + one per open cursor */
    int       done;              /* committed or aborted: calls return KVM_CLOSED */
    int       busy;              /* a commit is running (it may release the GIL) */
    int       write;
    int       slot;              /* reader slot, -1 for none */
    uint64_t  txnid;             /* snapshot txnid (read) or new txnid (write) */
    pgno_t    root;
    uint32_t  depth;
    uint64_t  entries;
    uint64_t  limit;             /* pages below this number exist */
    kvm_state commit;            /* snapshots: the whole state of their commit (kvm_txn_state) */
    uint64_t  mod;               /* bumped by every change (cursors re-seek) */
    int       broken;            /* a write txn hit a SIGBUS mid-change: abort only */
    int       committed;         /* its free space was adopted: an end rolls nothing back */
    /* write transactions only */
    dirty_ent *dirty;
    size_t     ndirty, dcap;     /* dirty: open-addressing table of dcap slots */
    pgvec      pool, freed;
    /* savepoints: level = how many are open; shadowed = pages of outer
    ** levels that an inner level freed (they stay as they were, for a
    ** rollback, until their own level lets them go) */
    uint32_t   level;
    savepoint *saved;
    size_t     nsaved_cap;
    pgvec      shadowed;
    uint8_t   *scratch;          /* 5 scratch pages: copies A, B, separator, cell, compaction */
    void      *cells;            /* cell references for splits and merges */
    pgno_t     verified[VCACHE]; /* env->verify: committed pages already checked */
};

struct kvm_cursor {
    kvm_txn  *t;
    int       state;             /* 0 unpositioned, 1 at a record, 2 at end */
    int       depth;
    pgno_t    pg[KVM_MAX_DEPTH];
    int       idx[KVM_MAX_DEPTH];
    uint64_t  mod;
    uint8_t  *key;               /* write txns: key positioned at, or last returned */
    size_t    klen;
    int       key_emitted;       /* key is the last one returned */
    size_t    need;
};


/* across the files of the pager (env, meta, readers, map, cache, page, txn) */
/* env.c */
int space_code(int errnum);
uint64_t now_ns(void);          /* CLOCK_MONOTONIC */
int env_forked(const kvm_env *e);
/* meta.c */
void meta_encode(uint8_t *m, uint32_t psize, const kvm_state *s);
int init_file(kvm_env *e, uint32_t ps);
int creation_leftover(kvm_env *e, uint32_t want, uint32_t *psp);
int load_meta(kvm_env *e, uint32_t want_ps);
int meta_adopt_pending(kvm_env *e);
uint64_t meta_pages_needed(kvm_env *e);   /* what either meta reaches; 0: unreadable */
/* env.c: the free space from the newest commit (writable handles) */
int space_open(kvm_env *e);
/* lock.c */
int  lock_open(kvm_env *e, uint32_t nreaders, uint32_t mode, int *first);
int  lock_opened(kvm_env *e);
int  lock_register(kvm_env *e);
void lock_close(kvm_env *e, int forked);
int  lock_alone(kvm_env *e);            /* 1: no other handle in any process (until lock_close) */
void lock_free(kvm_env *e);
int  lock_writer(kvm_env *e, int wait);   /* KVM_BUSY: another handle writes (not wait) */
void unlock_writer(kvm_env *e);
void lock_sweep(kvm_env *e);
int  lock_handle_dead(kvm_env *e, uint32_t h);   /* 1: handle h's process is gone */
void lock_forget_all(void);
uint32_t this_thread(void);              /* readers.c: the thread id, cached */
void this_thread_forget(void);           /* a child after fork() */               /* a child after fork(): close the lock descriptors */
/* readers.c */
void state_load(kvm_env *e, kvm_state *out);
void state_publish(kvm_env *e, const kvm_state *s);
uint64_t env_oldest_reader(kvm_env *e);   /* the oldest snapshot's txnid; UINT64_MAX: none */
uint64_t env_oldest_other(kvm_env *e, int slot);   /* the same, but for reader slot `slot` */
int env_live_snapshots(kvm_env *e, u64vec *out);   /* every live snapshot's txnid and a flush's, ascending, distinct */
/* map.c */
int map_open(kvm_env *e, uint64_t map_size);
int env_follow(kvm_env *e, const kvm_state *s);   /* up to a commit another handle may have made */
int file_intact(kvm_env *e);
void advise_free(kvm_env *e, const u64vec *runs);
void env_give_back(kvm_env *e);                     /* punch free runs, after a commit */
int env_refill(kvm_env *e, const u64vec *taken);    /* allocate the holes among taken pages */
/* cache.c */
int cache_init(kvm_cache *c, uint64_t pages, uint32_t psize);
void cache_free(kvm_cache *c);
int32_t cache_find(kvm_cache *c, pgno_t pg);
int cache_get(kvm_env *e, pgno_t pg, const uint8_t **out);
void cache_follow(kvm_env *e, const kvm_state *s);
/* page.c */
int dirty_page(kvm_txn *t, pgno_t pg, int type, const uint8_t *src, uint8_t **out);
uint8_t *dirty_ptr(kvm_txn *t, const dirty_ent *d);
/* freelist.c: the commit record, once the other pages have their checksums */
int freelist_record(kvm_txn *t, kvm_space *sp, dirty_ent *const *order, size_t n);

/* errors (env.c) */
int  file_write(kvm_env *e, struct iovec *iov, int n, off_t off, const char *what);
int  fd_write(int fd, struct iovec *iov, int n, off_t off, const char *what);   /* the same, any file */
int  kvm_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int  kvm_err_sys(int code, int errnum, const char *what);

/* lifetime (env.c): every public call brackets its body with these; enter
** returns KVM_CLOSED or KVM_FORKED (with the message set) when the call
** must not run. */
extern uint64_t kvm_fork_gen;
int  env_enter(kvm_env *e);
int  env_enter_quiet(kvm_env *e);   /* env_enter without an error message: 0 refused */
void env_leave(kvm_env *e);
int  txn_enter(kvm_txn *t);
#define txn_leave(t) env_leave((t)->env)

/* file, free space and pool for the commit and the B+tree (page.c, map.c, txn.c) */
int  env_read_page(kvm_env *e, uint64_t pgno, uint64_t hwm, int type, char *out);   /* pread, verified */
int  env_ensure_pages(kvm_env *e, uint64_t pages);                    /* grow by the policy */
int  txn_put_page(kvm_txn *t, uint64_t pgno, int type, int flags, unsigned nkeys, uint64_t next,
                  const void *body, size_t len, uint8_t **out);
int  txn_pool_ensure(kvm_txn *t, uint64_t need);   /* at least need pages in the pool */
int  env_take(kvm_env *e, uint64_t n, u64vec *runs);   /* n pages from the free space, ready to write */
int  env_flush(kvm_env *e);                        /* every commit so far durable (txn.c) */
/* flush.c: background flushes of sync=False commits */
int  flush_in_flight(kvm_env *e);
int  env_failed(kvm_env *e);                      /* the error of a write refused by a failed handle */
void flush_start(kvm_env *e, uint64_t txnid, int slot, uint64_t bytes);
void flush_wait_own(kvm_env *e);
int  flush_settle(kvm_env *e);                     /* under the writer and durable locks; 1: D moved */
void flush_stop(kvm_env *e);
/* the slot a commit writes its meta to: neither the durable commit's nor a flush's */
int  commit_slot(kvm_env *e);
/* pages written after this commit are the ones reused early: the durable
** commit, or the one a flush in flight makes durable */
static inline uint64_t env_fresh_base(kvm_env *e)
{
    uint64_t d = __atomic_load_n(&e->sh->durable, __ATOMIC_ACQUIRE), f = __atomic_load_n(&e->sh->flush_txnid, __ATOMIC_ACQUIRE);
    return f > d ? f : d;
}
int  env_sync(kvm_env *e, int wait);               /* the same; wait 0: see kvm_env_sync */
int  writer_follow(kvm_env *e, kvm_state *s);      /* a writer up to the newest commit (txn.c) */
int  env_seal(kvm_env *e);                         /* and the newest meta sealed durable (close) */

/* page access for the B+tree (page.c) */
int  pg_read(kvm_txn *t, pgno_t pg, const uint8_t **out);
/* What pg_read_own says of a page: committed (checksummed), this
** transaction's from an outer savepoint level (no checksum yet, copied
** before a change), or this level's (changed in place). */
#define PAGE_COMMITTED 0
#define PAGE_DIRTY     1
#define PAGE_WRITABLE  2
int  pg_read_own(kvm_txn *t, pgno_t pg, const uint8_t **out, int *own);
int  pg_savepoint(kvm_txn *t, uint32_t *level);
int  pg_savepoint_end(kvm_txn *t, uint32_t level, int rollback);
int  pg_write(kvm_txn *t, pgno_t pg, uint8_t **out, pgno_t *newpg);
int  pg_new(kvm_txn *t, int type, uint8_t **out, pgno_t *pg);
int  pg_free(kvm_txn *t, pgno_t pg);
int  pg_check_node(kvm_txn *t, const uint8_t *p, pgno_t pg, int type);
int  pg_verify(kvm_txn *t, const uint8_t *p, pgno_t pg);   /* checksum, KVM_CORRUPT naming pg */
void pg_drop(kvm_txn *t, pgno_t pg, uint64_t n);          /* madvise(DONTNEED) a run of the mapping */
void op_enter(kvm_env *e);
void op_leave(kvm_env *e);
extern __thread int kvm_op_depth;    /* op_enter()s not yet left (guard.c) */
int  snapshot_acquire(kvm_env *e, kvm_txn *t);
void snapshot_release(kvm_env *e, kvm_txn *t);

#endif
