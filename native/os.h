/*
** os.h -- every system call the C core makes goes through kvm_os, one table
** of function pointers (SQLite's aSyscall[] idea), so tests can make the
** N-th call of any of them fail without touching the engine.  Nothing else
** in native/ calls these functions directly.
*/
#ifndef KVM_OS_H
#define KVM_OS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* What kvm_sys.fstat reports of a file. */
typedef struct kvm_filestat {
    uint64_t size, dev, ino;
    uint64_t allocated;   /* bytes of disk the file holds (st_blocks * 512): holes excluded */
    uint32_t mode;
} kvm_filestat;

typedef struct kvm_os {
    int     (*open)(const char *path, int flags, int mode);    /* O_CLOEXEC; never blocks on a FIFO */
    int     (*close)(int fd);
    int     (*fstat)(int fd, kvm_filestat *out);
    int     (*lock)(int fd, int op, off_t at);   /* KVM_LK_*: an fcntl OFD lock of one byte */
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    ssize_t (*pwritev)(int fd, const struct iovec *iov, int n, off_t off);   /* KVM_SYS_PWRITE */
    int     (*fdatasync)(int fd);
    int     (*fsync_dir)(const char *path);
    int     (*posix_fallocate)(int fd, off_t off, off_t len);   /* returns errno */
    int     (*ftruncate)(int fd, off_t len);
    void   *(*mmap)(void *addr, size_t len, int prot, int flags, int fd, off_t off);
    int     (*munmap)(void *addr, size_t len);
    void   *(*mremap)(void *old, size_t oldlen, size_t newlen, int flags);
    int     (*madvise)(void *addr, size_t len, int advice);
    int     (*punch)(int fd, off_t off, off_t len);   /* a hole; the file keeps its size */
    int     (*rename)(const char *from, const char *to, int replace);   /* replace 0: EEXIST if `to` exists */
    int     (*unlink)(const char *path);
} kvm_os;

extern kvm_os kvm_sys;          /* the table in use */

/* Operations of kvm_sys.lock on byte `at` (lock.c): take it shared or
** exclusive (-1 with EAGAIN when another open file description holds it),
** the same waiting until granted, or release it; or release every lock
** this open file description holds on the file (`at` ignored). */
#define KVM_LK_SHARED      0
#define KVM_LK_EXCL        1
#define KVM_LK_SHARED_WAIT 2
#define KVM_LK_EXCL_WAIT   3
#define KVM_LK_UNLOCK      4
#define KVM_LK_UNLOCK_ALL  5

/* Counters of calls made through the table (process-wide; for stats and
** kvmap-bench).  Fault injection (kvm_fault_set, kvmap.h) and its per-call
** counters live in os.c too: every default entry asks fault_inject() first. */
typedef struct kvm_os_counts {
    uint64_t pread, pwrite, fdatasync, fallocate, mmap, mremap, munmap, madvise, punch;
    uint64_t pwrite_bytes;   /* what the pwrite calls asked to write */
} kvm_os_counts;
extern kvm_os_counts kvm_sys_counts;

/* 1 while a sync hook (kvm_set_sync_hook) replaces fdatasync: a Python
** hook needs the GIL, which a thread of the engine must not wait for
** (flush.c then flushes in the committing thread). */
int os_sync_hooked(void);

#endif
