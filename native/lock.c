/*
** lock.c -- the lock region: what every handle on a database shares, in
** whatever process it is (docs/FORMAT.md §9, docs/ARCHITECTURE.md §2a).
**
** Design and invariants
**  1. The region is the file <path>-lock beside the database, mapped
**     MAP_SHARED by every handle: the published newest commit (a seqlock),
**     the durability state, the handles and the reader slots.  A file of
**     its own (as LMDB's lock.mdb and SQLite's -shm), not pages of the
**     database: the database file holds only what may become durable, and
**     the region is rebuilt from it by whoever opens the file first, so a
**     crash or a reboot leaves nothing in it to repair.
**  2. Locks are fcntl open-file-description locks on single bytes of the
**     lock file.  They belong to a handle (its own open of the lock file),
**     the kernel drops them when the process dies however it dies, and
**     closing some other descriptor of the file leaves them (POSIX record
**     locks would go).
**       byte 0      open: held shared by every open handle; exclusive while
**                   the first opener builds the region from the database
**       byte 1      writer: exclusive while a write transaction runs, or a
**                   flush or seal changes the durability state
**       byte 2 + h  handle h is alive: held exclusive by that handle
**  3. A reader slot holds txnid << 16 | handle.  A slot whose handle's byte
**     is free belongs to a dead handle (its process exited or was killed)
**     and is cleared by the next writer (lock_sweep).  Liveness is the
**     kernel's lock, not a pid, so a reused pid cannot fool it.  A handle
**     taking over a dead handle's number clears its slots first.
**  4. After fork() the child closes its copies of every lock file
**     descriptor and replaces its copies of the regions' mappings by
**     anonymous memory (lock_forget_all): the parent's locks then die with
**     the parent, not with whichever process lets go of the file last.
**  5. A handle opened read-only where the lock file cannot be opened (a
**     read-only file system, a directory it may not write) gets a private
**     region: no other process sees its snapshots, so it is safe only while
**     no process writes the file (README, "Processes and threads").
*/
#define _GNU_SOURCE
#include "internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <stddef.h>
#include <unistd.h>

_Static_assert(offsetof(kvm_shared, magic) == LOCK_OFF_MAGIC, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, nreaders) == LOCK_OFF_NREADERS, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, st) == LOCK_OFF_TXNID && offsetof(kvm_state, txnid) == 0, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, file_dev) == LOCK_OFF_FILE_ID, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, meta_pending) == LOCK_OFF_PENDING, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, flush_txnid) == LOCK_OFF_FLUSH, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, handle_pid) == LOCK_OFF_PID, "FORMAT.md §9");
_Static_assert(offsetof(kvm_shared, readers) == LOCK_OFF_READERS, "FORMAT.md §9");

/* ------------------------------------------------------- fork registry */

/* The lock file descriptors of this process's handles and their regions'
** mappings, given up in a child after fork() (design note 4): the
** descriptors closed, the mappings replaced by anonymous memory at the same
** address (a mapping of the file would keep its open file description, and
** so the parent's locks, alive for as long as the child lives).  A fixed
** table: a handle that finds it full keeps both across fork, which only
** delays the release of its locks to the child's exit. */
#define FORK_FDS 256
static struct {
    int fd;
    void *sh;
    size_t len;
} fork_fds[FORK_FDS];
static int fork_fds_init;

static void fds_add(int fd)
{
    if (!__atomic_exchange_n(&fork_fds_init, 1, __ATOMIC_ACQ_REL))
        for (int i = 0; i < FORK_FDS; i++)
            __atomic_store_n(&fork_fds[i].fd, -1, __ATOMIC_RELEASE);
    for (int i = 0; i < FORK_FDS; i++) {
        int expect = -1;
        if (__atomic_compare_exchange_n(&fork_fds[i].fd, &expect, fd, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            __atomic_store_n(&fork_fds[i].sh, NULL, __ATOMIC_RELEASE);
            return;
        }
    }
}

/* The region of descriptor fd is mapped at sh. */
static void fds_region(int fd, void *sh, size_t len)
{
    for (int i = 0; i < FORK_FDS && fork_fds_init; i++)
        if (__atomic_load_n(&fork_fds[i].fd, __ATOMIC_ACQUIRE) == fd) {
            fork_fds[i].len = len;
            __atomic_store_n(&fork_fds[i].sh, sh, __ATOMIC_RELEASE);
            return;
        }
}

static void fds_remove(int fd)
{
    for (int i = 0; i < FORK_FDS && fork_fds_init; i++) {
        int expect = fd;
        if (__atomic_load_n(&fork_fds[i].fd, __ATOMIC_ACQUIRE) != fd)
            continue;
        __atomic_store_n(&fork_fds[i].sh, NULL, __ATOMIC_RELEASE);
        if (__atomic_compare_exchange_n(&fork_fds[i].fd, &expect, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return;
    }
}

void lock_forget_all(void)
{
    /* not through kvm_sys: a child's clean-up, no fault injection */
    for (int i = 0; i < FORK_FDS && fork_fds_init; i++) {
        int fd = __atomic_exchange_n(&fork_fds[i].fd, -1, __ATOMIC_ACQ_REL);
        void *sh = __atomic_exchange_n(&fork_fds[i].sh, NULL, __ATOMIC_ACQ_REL);
        if (sh)   /* the handle's calls refuse in the child: what the memory holds no longer matters */
            mmap(sh, fork_fds[i].len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (fd >= 0)
            close(fd);
    }
}

/* ------------------------------------------------------------- the region */

static size_t region_bytes(uint32_t nreaders)
{
    size_t n = sizeof(kvm_shared) + (size_t)nreaders * (sizeof(uint64_t) + sizeof(uint32_t));
    long pg = sysconf(_SC_PAGESIZE);
    return (n + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int lock_err(const char *what) { return kvm_err_sys(KVM_IO, errno, what); }

static int region_map(kvm_env *e, size_t len)
{
    void *p = kvm_sys.mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, e->lock_fd, 0);
    if (p == MAP_FAILED)
        return kvm_err_sys(KVM_IO, errno, "mapping the lock file");
    e->sh = p;
    e->sh_len = len;
    e->sh_shared = 1;
    fds_region(e->lock_fd, p, len);
    return 0;
}

/* A private region: this handle only (design note 5). */
static int region_private(kvm_env *e, uint32_t nreaders)
{
    e->sh_len = region_bytes(nreaders);
    e->sh = calloc(1, e->sh_len);
    if (!e->sh)
        return kvm_err(KVM_NOMEM, "allocating the reader table");
    e->sh->nreaders = nreaders;
    memset(e->sh->readers, 0xff, nreaders * sizeof(uint64_t));
    return 0;
}

/* Open (creating it if need be) and map the lock region; *first: this
** handle holds the open byte exclusive and must build the region (then
** lock_opened).  Otherwise the region is built and in use. */
int lock_open(kvm_env *e, uint32_t nreaders, uint32_t mode, int *first)
{
    *first = 1;
    size_t n = strlen(e->path);
    char *lp = malloc(n + 6);
    if (!lp)
        return kvm_err(KVM_NOMEM, "allocating the lock file's name");
    memcpy(lp, e->path, n);
    memcpy(lp + n, "-lock", 6);
    e->lock_fd = kvm_sys.open(lp, O_RDWR | O_CREAT, (int)(mode & 0666));
    int en = errno;
    free(lp);
    if (e->lock_fd < 0) {
        if (e->readonly && (en == EROFS || en == EACCES || en == EPERM))
            return region_private(e, nreaders);
        return kvm_err_sys(KVM_IO, en, "opening the lock file (<database>-lock)");
    }
    fds_add(e->lock_fd);
    for (int tries = 0;; tries++) {
        if (kvm_sys.lock(e->lock_fd, KVM_LK_EXCL, LOCK_BYTE_OPEN) == 0) {
            /* No other handle: whatever the file holds is from handles
            ** gone (a crash, a reboot).  Start it afresh. */
            /* Zeroed, and its blocks allocated: a full disk is an error
            ** here, never a SIGBUS when the mapping is written. */
            size_t len = region_bytes(nreaders);
            int en;
            if (kvm_sys.ftruncate(e->lock_fd, 0) != 0)
                return lock_err("emptying the lock file");
            if ((en = kvm_sys.posix_fallocate(e->lock_fd, 0, (off_t)len)) != 0)
                return kvm_err_sys(space_code(en), en, "sizing the lock file");
            int rc = region_map(e, len);
            if (rc)
                return rc;
            e->sh->nreaders = nreaders;
            memset(e->sh->readers, 0xff, nreaders * sizeof(uint64_t));
            return 0;
        }
        if (errno != EAGAIN)
            return lock_err("locking the lock file");
        if (kvm_sys.lock(e->lock_fd, KVM_LK_SHARED_WAIT, LOCK_BYTE_OPEN) != 0)
            return lock_err("locking the lock file");
        kvm_shared head;
        ssize_t got = kvm_sys.pread(e->lock_fd, &head, sizeof head, 0);
        if (got == (ssize_t)sizeof head && head.magic == LOCK_MAGIC && head.nreaders) {
            *first = 0;
            return region_map(e, region_bytes(head.nreaders));
        }
        /* The first opener failed before it finished: try to be it. */
        kvm_sys.lock(e->lock_fd, KVM_LK_UNLOCK, LOCK_BYTE_OPEN);
        if (tries > 1000)
            return kvm_err(KVM_LOCKED, "%s: the lock file is never initialised", e->path);
        sleep_ms(1);
    }
}

/* The first opener has built the region: publish it, keep the open byte
** shared like every other handle. */
int lock_opened(kvm_env *e)
{
    __atomic_store_n(&e->sh->magic, LOCK_MAGIC, __ATOMIC_RELEASE);
    if (e->lock_fd >= 0 && kvm_sys.lock(e->lock_fd, KVM_LK_SHARED, LOCK_BYTE_OPEN) != 0)
        return lock_err("locking the lock file");
    return 0;
}

/* The slots of handle h, which this handle holds the byte of (h is dead,
** and no new handle can take its number meanwhile). */
static void clear_slots(kvm_env *e, uint32_t h)
{
    for (uint32_t i = 0; i < e->sh->nreaders; i++) {
        uint64_t v = __atomic_load_n(&e->sh->readers[i], __ATOMIC_ACQUIRE);
        if (v != READER_FREE && READER_HANDLE(v) == h)
            __atomic_compare_exchange_n(&e->sh->readers[i], &v, READER_FREE, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED);
    }
    __atomic_store_n(&e->sh->handle_pid[h], 0, __ATOMIC_RELEASE);
}

/* Take a handle number: the first whose byte is free.  Slots left by the
** dead handle that had it go first (design note 3). */
int lock_register(kvm_env *e)
{
    if (e->lock_fd < 0) {
        e->handle = 0;
        return 0;
    }
    for (uint32_t h = 0; h < LOCK_HANDLES; h++) {
        if (kvm_sys.lock(e->lock_fd, KVM_LK_EXCL, LOCK_BYTE_HANDLE + h) != 0) {
            if (errno == EAGAIN)
                continue;
            return lock_err("locking the lock file");
        }
        clear_slots(e, h);
        e->handle = h;
        e->registered = 1;
        __atomic_store_n(&e->sh->handle_pid[h], (uint32_t)getpid(), __ATOMIC_RELEASE);
        return 0;
    }
    return kvm_err(KVM_READERS_FULL, "%s: %u handles are open on this database, the most there can be",
                   e->path, LOCK_HANDLES);
}

/* Give up the locks at close: this handle's reader slots go first (its
** snapshots can no longer read, and their later ends leave the slots
** alone: readers.c), then the descriptor and with it every lock.  In a
** child after fork() the slots and locks are the parent's: nothing to do
** (the descriptor was closed at the fork, lock_forget_all). */
void lock_close(kvm_env *e, int forked)
{
    if (e->lock_fd < 0 || forked)
        return;
    if (e->registered)
        clear_slots(e, e->handle);
    /* The mapping of the region keeps the open file description, and so
    ** its locks, alive after the descriptor closes, until the handle is
    ** freed (which a snapshot or a traceback may delay): drop them now. */
    kvm_sys.lock(e->lock_fd, KVM_LK_UNLOCK_ALL, 0);
    fds_remove(e->lock_fd);
    kvm_sys.close(e->lock_fd);
    e->lock_fd = -1;
}

/* 1 if no other handle has the database open, in any process: the open
** byte taken exclusive, which this handle keeps until lock_close, so no
** handle opens meanwhile (an opener waits for the byte shared). */
int lock_alone(kvm_env *e)
{
    return e->lock_fd >= 0 && kvm_sys.lock(e->lock_fd, KVM_LK_EXCL, LOCK_BYTE_OPEN) == 0;
}

/* The region itself goes when the handle is freed (a late snapshot end
** may still look at it; it writes nothing once the handle is closed). */
void lock_free(kvm_env *e)
{
    if (e->sh_shared && e->sh)
        kvm_sys.munmap(e->sh, e->sh_len);
    else
        free(e->sh);
    e->sh = NULL;
}

/* ------------------------------------------------------------ the writer */

/* The writer lock, taken once per handle however many of its calls hold
** it (a db.sync() in one thread while another's transaction runs: the
** durable lock orders them).  wait: block until granted; else KVM_BUSY
** when another handle holds it. */
int lock_writer(kvm_env *e, int wait)
{
    int rc = 0;
    pthread_mutex_lock(&e->writer_mutex);
    if (e->writer_depth == 0 && e->lock_fd >= 0 &&
        kvm_sys.lock(e->lock_fd, wait ? KVM_LK_EXCL_WAIT : KVM_LK_EXCL, LOCK_BYTE_WRITER) != 0)
        rc = errno == EAGAIN && !wait ? KVM_BUSY : lock_err("taking the writer lock");
    if (!rc)
        e->writer_depth++;
    pthread_mutex_unlock(&e->writer_mutex);
    return rc;
}

void unlock_writer(kvm_env *e)
{
    pthread_mutex_lock(&e->writer_mutex);
    if (e->writer_depth > 0 && --e->writer_depth == 0 && e->lock_fd >= 0)
        kvm_sys.lock(e->lock_fd, KVM_LK_UNLOCK, LOCK_BYTE_WRITER);
    pthread_mutex_unlock(&e->writer_mutex);
}

/* Clear the reader slots of dead handles (design note 3): a handle whose
** byte this handle can lock is dead, and while this handle holds the byte
** no new handle can take the number, so what it clears is stale.  The
** writer calls it when its transaction begins: a killed reader holds pages
** back until the next write transaction at most. */
void lock_sweep(kvm_env *e)
{
    if (e->lock_fd < 0)
        return;
    uint8_t asked[LOCK_HANDLES];
    memset(asked, 0, sizeof asked);
    asked[e->handle] = 1;
    for (uint32_t i = 0; i < e->sh->nreaders; i++) {
        uint64_t v = __atomic_load_n(&e->sh->readers[i], __ATOMIC_ACQUIRE);
        uint32_t h = READER_HANDLE(v);
        if (v == READER_FREE || h >= LOCK_HANDLES || asked[h])
            continue;
        asked[h] = 1;
        if (kvm_sys.lock(e->lock_fd, KVM_LK_EXCL, LOCK_BYTE_HANDLE + h) == 0) {
            clear_slots(e, h);
            kvm_sys.lock(e->lock_fd, KVM_LK_UNLOCK, LOCK_BYTE_HANDLE + h);
        }
    }
}

/* 1 when handle h is not alive: its byte can be locked (its process died,
** or it closed).  This handle's own, and any in a private region, live. */
int lock_handle_dead(kvm_env *e, uint32_t h)
{
    if (e->lock_fd < 0 || h == e->handle || h >= LOCK_HANDLES)
        return 0;
    if (kvm_sys.lock(e->lock_fd, KVM_LK_EXCL, LOCK_BYTE_HANDLE + h) != 0)
        return 0;
    kvm_sys.lock(e->lock_fd, KVM_LK_UNLOCK, LOCK_BYTE_HANDLE + h);
    return 1;
}
