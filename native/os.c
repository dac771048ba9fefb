/*
** os.c -- the default system-call table (see os.h).  Each entry is a thin
** wrapper that counts the call; errors come back as the call reports them
** (-1 with errno, or an errno value for posix_fallocate).
**
** Fault injection, for tests (kvm_fault_set in kvmap.h): each entry first
** counts itself in fault_calls[] and, when the count reaches the armed N-th
** call (and after it, for a persistent fault), fails with the armed errno
** without making the call -- or SIGKILLs the process, so a crash test can
** stop the engine between any two system calls.  A sync hook, when set,
** replaces fdatasync, so a power-loss simulator sees every durability point.
** Unarmed, the cost is one relaxed atomic add per system call.
*/
#define _GNU_SOURCE
#include "os.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <signal.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include "kvmap.h"

kvm_os_counts kvm_sys_counts;
#define COUNT(f) __atomic_add_fetch(&kvm_sys_counts.f, 1, __ATOMIC_RELAXED)

typedef struct fault {
    uint64_t fail_at;       /* 0: never; else the call number that fails */
    int      err;           /* errno to fail with, or KVM_FAULT_KILL */
    int      persistent;    /* every call after fail_at fails too */
} fault;
static fault faults[KVM_SYS_NCALLS];
static uint64_t fault_calls[KVM_SYS_NCALLS], fault_failures[KVM_SYS_NCALLS];
static kvm_sync_hook sync_hook;

/* 1 (errno set) when this call is to fail; kills the process for a KILL fault. */
static int fault_inject(int call)
{
    uint64_t n = __atomic_add_fetch(&fault_calls[call], 1, __ATOMIC_RELAXED);
    uint64_t at = __atomic_load_n(&faults[call].fail_at, __ATOMIC_ACQUIRE);
    if (!at || n < at || (n > at && !faults[call].persistent))
        return 0;
    __atomic_add_fetch(&fault_failures[call], 1, __ATOMIC_RELAXED);
    if (faults[call].err == KVM_FAULT_KILL)
        kill(getpid(), SIGKILL);
    errno = faults[call].err;
    return 1;
}

int kvm_fault_set(int call, uint64_t nth, int err, int persistent)
{
    if (call < 0 || call >= KVM_SYS_NCALLS || (err <= 0 && err != KVM_FAULT_KILL))
        return KVM_INVALID;
    __atomic_store_n(&faults[call].fail_at, 0, __ATOMIC_RELEASE);
    faults[call].err = err;
    faults[call].persistent = persistent;
    __atomic_store_n(&fault_calls[call], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fault_failures[call], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&faults[call].fail_at, nth, __ATOMIC_RELEASE);
    return 0;
}

void kvm_fault_clear(void)
{
    for (int c = 0; c < KVM_SYS_NCALLS; c++) {
        __atomic_store_n(&faults[c].fail_at, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&fault_calls[c], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&fault_failures[c], 0, __ATOMIC_RELAXED);
    }
}

uint64_t kvm_fault_calls(int call)
{
    return call >= 0 && call < KVM_SYS_NCALLS ? __atomic_load_n(&fault_calls[call], __ATOMIC_RELAXED) : 0;
}

uint64_t kvm_fault_failures(int call)
{
    return call >= 0 && call < KVM_SYS_NCALLS ? __atomic_load_n(&fault_failures[call], __ATOMIC_RELAXED) : 0;
}

void kvm_set_sync_hook(kvm_sync_hook hook) { __atomic_store_n(&sync_hook, hook, __ATOMIC_RELEASE); }
int os_sync_hooked(void) { return __atomic_load_n(&sync_hook, __ATOMIC_ACQUIRE) != NULL; }

#define FAULT(call, failed) \
    do {                        \
        if (fault_inject(call)) \
            return failed;      \
    } while (0)

static int os_open(const char *path, int flags, int mode)
{
    FAULT(KVM_SYS_OPEN, -1);
    /* O_NONBLOCK so that opening a FIFO read-only cannot hang (the caller
    ** then refuses anything but a regular file); cleared at once. */
    int fd = open(path, flags | O_CLOEXEC | O_NONBLOCK, mode);
    if (fd >= 0)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}
static int os_close(int fd)
{
    FAULT(KVM_SYS_CLOSE, -1);
    return close(fd);
}
static int os_fstat(int fd, kvm_filestat *out)
{
    FAULT(KVM_SYS_FSTAT, -1);
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    out->size = (uint64_t)st.st_size;
    out->dev = (uint64_t)st.st_dev;
    out->ino = (uint64_t)st.st_ino;
    out->allocated = (uint64_t)st.st_blocks * 512;
    out->mode = (uint32_t)st.st_mode;
    return 0;
}
static int os_lock(int fd, int op, off_t at)
{
    /* Releasing a lock one holds cannot fail in a way a caller could act
    ** on: only taking one is a fault to inject. */
    if (op != KVM_LK_UNLOCK && op != KVM_LK_UNLOCK_ALL)
        FAULT(KVM_SYS_LOCK, -1);
    struct flock fl = {.l_whence = SEEK_SET, .l_start = op == KVM_LK_UNLOCK_ALL ? 0 : at,
                       .l_len = op == KVM_LK_UNLOCK_ALL ? 0 : 1};
    fl.l_type = op == KVM_LK_UNLOCK || op == KVM_LK_UNLOCK_ALL ? F_UNLCK : op == KVM_LK_SHARED || op == KVM_LK_SHARED_WAIT ? F_RDLCK : F_WRLCK;
    int cmd = op == KVM_LK_SHARED_WAIT || op == KVM_LK_EXCL_WAIT ? F_OFD_SETLKW : F_OFD_SETLK;
    int rc;
    while ((rc = fcntl(fd, cmd, &fl)) != 0 && errno == EINTR)
        ;
    if (rc != 0 && errno == EACCES)
        errno = EAGAIN;
    return rc;
}
static ssize_t os_pread(int fd, void *b, size_t n, off_t o)
{
    FAULT(KVM_SYS_PREAD, -1);
    COUNT(pread);
    return pread(fd, b, n, o);
}
static ssize_t os_pwritev(int fd, const struct iovec *iov, int n, off_t o)
{
    FAULT(KVM_SYS_PWRITE, -1);
    COUNT(pwrite);
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += iov[i].iov_len;
    __atomic_add_fetch(&kvm_sys_counts.pwrite_bytes, bytes, __ATOMIC_RELAXED);
    return pwritev(fd, iov, n, o);
}
static int os_fdatasync(int fd)
{
    FAULT(KVM_SYS_FDATASYNC, -1);
    COUNT(fdatasync);
    kvm_sync_hook hook = __atomic_load_n(&sync_hook, __ATOMIC_ACQUIRE);
    return hook ? hook(fd) : fdatasync(fd);
}
static int os_fsync_dir(const char *path)
{
    FAULT(KVM_SYS_FSYNC_DIR, -1);
    /* Make a new file's directory entry durable: fsync the parent directory. */
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = 0;
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = -1;
    if (fd >= 0) {
        rc = fsync(fd);
        close(fd);
    }
    free(dir);
    return rc;
}
static int os_posix_fallocate(int fd, off_t o, off_t l)
{
    if (fault_inject(KVM_SYS_FALLOCATE))
        return errno;
    COUNT(fallocate);
    return posix_fallocate(fd, o, l);
}
static int os_ftruncate(int fd, off_t l)
{
    FAULT(KVM_SYS_FTRUNCATE, -1);
    return ftruncate(fd, l);
}
static void *os_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
    FAULT(KVM_SYS_MMAP, MAP_FAILED);
    COUNT(mmap);
    return mmap(a, l, p, f, fd, o);
}
static int os_munmap(void *a, size_t l)
{
    FAULT(KVM_SYS_MUNMAP, -1);
    COUNT(munmap);
    return munmap(a, l);
}
static void *os_mremap(void *o, size_t ol, size_t nl, int f)
{
    FAULT(KVM_SYS_MREMAP, MAP_FAILED);
    COUNT(mremap);
    return mremap(o, ol, nl, f);
}
static int os_madvise(void *a, size_t l, int adv)
{
    FAULT(KVM_SYS_MADVISE, -1);
    COUNT(madvise);
    return madvise(a, l, adv);
}
/* Deallocate a range of the file: it reads as zeros, its page-cache pages
** and every process's mappings of them are dropped, and its size stays. */
static int os_punch(int fd, off_t o, off_t l)
{
    FAULT(KVM_SYS_PUNCH, -1);
    COUNT(punch);
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, l);
}
/* Put a finished file in place (db.copy).  Without `replace`, atomically
** refuse an existing `to` (EEXIST): renameat2's RENAME_NOREPLACE, or, on a
** file system without it (EINVAL), a hard link, which refuses an existing
** name too, and the unlink of `from`. */
static int os_rename(const char *from, const char *to, int replace)
{
    FAULT(KVM_SYS_RENAME, -1);
    if (replace)
        return rename(from, to);
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    if (link(from, to) != 0)
        return -1;
    unlink(from);   /* both names are the file now: `to` is in place whatever this does */
    return 0;
}
static int os_unlink(const char *path)
{
    FAULT(KVM_SYS_UNLINK, -1);
    return unlink(path);
}

kvm_os kvm_sys = {
    os_open, os_close, os_fstat, os_lock, os_pread, os_pwritev,
    os_fdatasync, os_fsync_dir, os_posix_fallocate, os_ftruncate,
    os_mmap, os_munmap, os_mremap, os_madvise, os_punch,
    os_rename, os_unlink,
};
