/*
** kvmap.h -- the C core's public interface: what Python calls through cffi.
**
** The core holds everything a transaction does per operation and per
** commit: page I/O, the copy-on-write B+tree, the free space (which pages a
** writer may use, space.c; their pages in the file, freelist.c), the growth
** of the file and the commit.  Python calls begin, operations, commit or
** abort, and holds the API, options and error translation.
**
** Every function that can fail returns a negative KVM_* code; the text of the
** last error of the calling thread is kvm_errmsg(), its errno kvm_errno().
**
** Lifetime (handles shared between threads, closed at any moment, inherited
** across fork): the structures are reference counted and freed only by the
** *_release calls (Python's garbage collector makes them), never by close or
** abort.  kvm_env_close waits for the calls in flight, then releases the
** file and the mapping; kvm_txn_abort ends a transaction.  Every later call
** on the environment, or on a transaction or cursor of it, returns
** KVM_CLOSED.  In a child process after fork() every call returns
** KVM_FORKED, and closing the child's copy leaves the parent's lock, mapping
** and file alone.
** The text between the cdef markers is parsed by cffi (native/build_kvmap.py).
*/
#ifndef KVMAP_H
#define KVMAP_H
#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
typedef struct kvm_env kvm_env;
typedef struct kvm_txn kvm_txn;
typedef struct kvm_cursor kvm_cursor;

#define KVM_OK             0
#define KVM_NOTFOUND      -1
#define KVM_NOMEM         -2
#define KVM_IO            -3
#define KVM_CORRUPT       -4
#define KVM_FORMAT        -5
#define KVM_DISKFULL      -6
#define KVM_MAPFULL       -7
#define KVM_INVALID       -8
#define KVM_READONLY      -9
#define KVM_FAILED       -10
#define KVM_READERS_FULL -11
#define KVM_NEED_PAGES   -12
#define KVM_BUFSMALL     -13
#define KVM_LOCKED       -14
#define KVM_CLOSED       -15   /* the database is closed, or the snapshot/transaction ended */
#define KVM_FORKED       -16   /* a handle inherited across fork(): it belongs to the parent */
#define KVM_NOTREGULAR   -17   /* open: a directory, device or FIFO, not a regular file */
#define KVM_BUSY         -18   /* a write transaction begin: another handle is writing */

#define KVM_BACKEND_MMAP   0
#define KVM_BACKEND_PREAD  1
#define KVM_GROW_RESERVE   0
#define KVM_GROW_MREMAP    1
#define KVM_GROW_REMAP     2

#define KVM_OPEN_READONLY  1
#define KVM_OPEN_CREATE    2
#define KVM_OPEN_WRITEMAP  4
#define KVM_OPEN_VERIFY   16   /* verify the checksum of every page a read visits */
#define KVM_OPEN_NEW      32   /* an empty new database: truncate the file, once locked */
#define KVM_OPEN_RANDOM   64   /* mmap backend: MADV_RANDOM (no read-ahead around a page fault) */

/* cursor seek modes */
#define KVM_SEEK_FIRST     0
#define KVM_SEEK_LAST      1
#define KVM_SEEK_GE        2
#define KVM_SEEK_GT        3
#define KVM_SEEK_LE        4
#define KVM_SEEK_LT        5
/* cursor fetch flags */
#define KVM_FETCH_REVERSE     1
#define KVM_FETCH_KEYS_ONLY   2
#define KVM_FETCH_STOP_INCL   4   /* stop key is inclusive */
#define KVM_FETCH_STOP_PREFIX 8   /* stop at the first key without this prefix */

typedef struct kvm_options {
    uint32_t page_size;     /* 0: the file's, or 4096 for a new file */
    int      backend;
    int      growth;
    int      flags;
    uint64_t map_size;      /* address space reserved (growth reserve) */
    uint64_t cache_bytes;   /* page cache size (backend pread) */
    uint32_t max_readers;
    uint64_t grow_min;      /* the file grows by half its size, at least grow_min */
    uint64_t grow_max;      /* and at most grow_max bytes (0: 1 MiB and 1 GiB) */
    uint32_t mode;          /* permissions of a file created (under the umask) */
    uint64_t sync_bytes;    /* sync=False: a background flush once this many bytes are unsynced (0: 64 MiB) */
    uint64_t sync_interval_ms;  /* and at a commit this long after the last flush (0: never) */
} kvm_options;

typedef struct kvm_stat {
    uint64_t txnid, root, entries, hwm, free_index, record;
    uint64_t free_count, pending_count, floor, durable, unsynced_bytes;
    uint64_t flushing;      /* the commit a background flush makes durable (0: none) */
    uint32_t depth, page_size;
    int      meta_slot, meta_fallback, meta_nosync, failed;
    uint64_t file_size, map_base, map_length, map_reserved;
    uint64_t cache_hits, cache_misses;
    uint64_t n_pread, n_pwrite, n_fdatasync, n_fallocate, n_mmap, n_mremap, n_munmap, n_madvise, n_punch;
    uint64_t n_pwrite_bytes;
} kvm_stat;

const char *kvm_errmsg(void);
int         kvm_errno(void);

int      kvm_env_open(const char *path, const kvm_options *opt, kvm_env **out);
void     kvm_env_close(kvm_env *e);
void     kvm_env_release(kvm_env *e);
int      kvm_env_usable(kvm_env *e);
int      kvm_env_stat(kvm_env *e, kvm_stat *st);
/* The live snapshots of every process on the database (readers.c): up to
** cap of them into out (their commit, process and thread); returns how many
** there are (more than cap: call again with room for them), or an error. */
typedef struct kvm_reader {
    uint64_t txnid;
    uint32_t pid, thread;
} kvm_reader;
int64_t  kvm_env_readers(kvm_env *e, kvm_reader *out, size_t cap);
uint32_t kvm_env_max_key(kvm_env *e);
int64_t  kvm_env_entries(kvm_env *e);
int64_t  kvm_env_txnid(kvm_env *e);
int64_t  kvm_env_get(kvm_env *e, const char *key, size_t klen, char *out, size_t cap);
int      kvm_env_check(kvm_env *e);   /* the free space's invariants (tests) */
int      kvm_env_sync(kvm_env *e, int wait);   /* fdatasync: every commit so far on the disk;
                                               ** wait 0: without waiting for another handle's
                                               ** write transaction (close), then the durable
                                               ** marker stays that handle's to move */
/* Read the database's pages (below its high-water mark) into the OS page
** cache, and return once they are there (env.c). */
int      kvm_env_warm(kvm_env *e);
/* The space figures stats() adds that take more than a look at the
** published state (env.c): the file's disk use (fstat), and the pending
** pages that live snapshots hold from reuse, read from the records of the
** commits after the oldest snapshot (none: no read).  A figure that cannot
** be read is UINT64_MAX ("not known"): only a closed or inherited handle
** is an error. */
typedef struct kvm_spacestat {
    uint64_t txnid;            /* the newest commit, which these figures are of */
    uint64_t pinned_pages;     /* pending pages freed after the oldest snapshot's commit
                               ** (not known: every reader slot is taken, or a read failed) */
    uint64_t oldest_reader;    /* the oldest live snapshot's commit; UINT64_MAX: none */
    uint64_t file_size;        /* st_size (not known: fstat failed) */
    uint64_t allocated;        /* bytes of disk the file holds, st_blocks * 512 (likewise) */
} kvm_spacestat;
int      kvm_env_space(kvm_env *e, kvm_spacestat *out);

int      kvm_txn_begin(kvm_env *e, int write, kvm_txn **out);
int      kvm_txn_abort(kvm_txn *t);   /* 1: it ended the transaction, 0: already ended */
void     kvm_txn_release(kvm_txn *t);
/* Commit: the free-list pages, every dirty page, the meta (FORMAT.md §7).
** On success the transaction is ended; on failure it is left for an abort. */
int      kvm_txn_commit(kvm_txn *t, int sync);
int64_t  kvm_txn_entries(kvm_txn *t);
int64_t  kvm_txn_id(kvm_txn *t);
/* Savepoints of a write transaction (page.c): open one (*level: 1 for the
** outermost, then 2, ...); end one and every one inside it, rolling back
** to it (rollback = 1) or keeping what was done since (0).  A commit ends
** every open savepoint, keeping what they did. */
int      kvm_txn_savepoint(kvm_txn *t, uint32_t *level);
int      kvm_txn_savepoint_end(kvm_txn *t, uint32_t level, int rollback);
/* The whole state of a snapshot's commit: the meta fields (FORMAT.md §2),
** for kvmap-check, which reads that commit's pages from the file while the
** snapshot keeps every writer off them: the state as the snapshot took it
** (`durable` may have grown since: a seal rewrites only that field of the
** same commit's meta).  KVM_INVALID for a write transaction. */
typedef struct kvm_txninfo {
    uint64_t txnid, root, entries, hwm, free_index, record;
    uint64_t free_count, pending_count, floor, durable;
    uint32_t depth, flags;
    int      shared;   /* 1: the snapshot's reader slot is in the lock file, where the
                       ** writers of every process see it; 0: in this handle's memory
                       ** (the lock file could not be opened: a read-only open on
                       ** read-only media), so only this handle's writers would */
} kvm_txninfo;
int      kvm_txn_state(kvm_txn *t, kvm_txninfo *out);
/* db.copy(compact=False) (copy.c): the pages snapshot t's commit reaches,
** at their page numbers, verified, into a new file at tmp (it must not
** exist), with both metas naming that commit as durable; synced and
** closed, or removed on failure.  Then kvm_file_install renames tmp to
** dest (replace 0: an existing dest is EEXIST, and tmp is removed) and
** syncs the directory (if that fails, dest is removed). */
int      kvm_txn_copy(kvm_txn *t, const char *tmp);
int      kvm_file_install(const char *tmp, const char *dest, int replace);

int64_t  kvm_get(kvm_txn *t, const char *key, size_t klen, char *out, size_t cap);
/* Looks up n keys, packed (key i is klens[i] bytes of keys, after key i-1),
** in one snapshot: copies the values found into out back to back, sets
** lens[i] to each one's length (KVM_NOTFOUND if absent), and writes into fmt
** the struct format that splits out ("100s0s7s...", a missing key's field
** "0s"; *fmtlen bytes).  Stops where out or fmt is full: *done keys were
** looked up.  Returns how many of them are missing; KVM_BUFSMALL when the
** first value alone does not fit (lens[0] is its length). */
int      kvm_get_many(kvm_txn *t, const char *keys, const uint32_t *klens, size_t n, char *out,
                      size_t cap, int64_t *lens, size_t *done, char *fmt, size_t fmtcap, size_t *fmtlen);
int      kvm_put(kvm_txn *t, const char *key, size_t klen, const char *val, size_t vlen);
/* Puts n pairs, packed: key i is klens[i] bytes of keys, after key i-1;
** values likewise.  Applied in key order (of equal keys the later wins);
** KVM_INVALID, changing nothing, when any size is out of range. */
int      kvm_put_many(kvm_txn *t, const char *keys, const uint32_t *klens, const char *vals,
                      const uint64_t *vlens, size_t n);
int      kvm_del(kvm_txn *t, const char *key, size_t klen);
/* Deletes every key from lo to hi (NULL: unbounded), *count of them. */
#define KVM_DEL_LO_EXCL 1   /* lo itself stays */
#define KVM_DEL_HI_EXCL 2   /* hi itself stays */
int      kvm_del_range(kvm_txn *t, const char *lo, size_t lolen, const char *hi, size_t hilen, int flags,
                       uint64_t *count);

int      kvm_cursor_open(kvm_txn *t, kvm_cursor **out);
void     kvm_cursor_close(kvm_cursor *c);
int      kvm_cursor_seek(kvm_cursor *c, const char *key, size_t klen, int mode);
/* Copies up to max_n records into buf, each its key then its value (only
** the key with KVM_FETCH_KEYS_ONLY), and into fmt the struct format that
** splits them ("16s100s16s100s..."; *fmtlen bytes, at most fmtcap: a batch
** ends where either buffer is full).  Returns the bytes used in buf, 0 at
** the end of the range; KVM_BUFSMALL (kvm_cursor_need) when the next record
** alone does not fit. */
int64_t  kvm_cursor_fetch(kvm_cursor *c, char *buf, size_t cap, uint32_t max_n, int flags,
                          const char *stop, size_t stoplen, char *fmt, size_t fmtcap, size_t *fmtlen);
size_t   kvm_cursor_need(kvm_cursor *c);
/* CRC-32C as the file format uses it (crc32c.c); the integrity checker's
** (checkpage.c, kvmap/checker/pagelayout.py) too. */
uint32_t kvm_crc32c(uint32_t crc, const void *buf, size_t len);

/* Fault injection, for tests (os.c).  Every system call of the core goes
** through one table; kvm_fault_set(call, nth, err, persistent) makes the
** nth call of `call` from now on (1 = the next) fail with errno `err`
** without being made -- and every later one too when `persistent` -- or,
** with err KVM_FAULT_KILL, SIGKILLs the process just before that call.
** nth 0 disarms and only counts.  Setting a call resets its counters;
** kvm_fault_clear() disarms and resets every call.  The hook, when set,
** replaces every fdatasync (a power-loss simulator's durability points);
** it returns what fdatasync would.  Process-wide: tests only. */
#define KVM_SYS_OPEN       0
#define KVM_SYS_CLOSE      1
#define KVM_SYS_FSTAT      2
#define KVM_SYS_LOCK       3   /* fcntl OFD byte locks of the lock file */
#define KVM_SYS_PREAD      4
#define KVM_SYS_PWRITE     5
#define KVM_SYS_FDATASYNC  6
#define KVM_SYS_FSYNC_DIR  7
#define KVM_SYS_FALLOCATE  8
#define KVM_SYS_FTRUNCATE  9
#define KVM_SYS_MMAP      10
#define KVM_SYS_MUNMAP    11
#define KVM_SYS_MREMAP    12
#define KVM_SYS_MADVISE   13
#define KVM_SYS_PUNCH     14   /* fallocate(PUNCH_HOLE): free runs given back to the file system */
#define KVM_SYS_RENAME    15   /* db.copy: the finished copy renamed into place */
#define KVM_SYS_UNLINK    16   /* db.copy: a failed copy's file removed */
#define KVM_SYS_NCALLS    17
#define KVM_FAULT_KILL    -1
typedef int (*kvm_sync_hook)(int fd);
int      kvm_fault_set(int call, uint64_t nth, int err, int persistent);
void     kvm_fault_clear(void);
uint64_t kvm_fault_calls(int call);
uint64_t kvm_fault_failures(int call);
void     kvm_set_sync_hook(kvm_sync_hook hook);
/* 0 (default): a sync=False flush runs in a thread of the handle; k > 0:
** its fdatasync runs at its start, in the committing thread, and it ends k
** write transactions later (tests that record every write; flush.c) */
void     kvm_set_flush_mode(int commits);
/* cdef-end */

/* kvm_txn_commit in two steps, for a caller that releases the GIL between
** them (pyglue.h): claim, then commit. */
int      kvm_txn_claim(kvm_txn *t);
int      kvm_txn_commit_claimed(kvm_txn *t, int sync);

#endif
