/*
** os.c -- the default system-call table (see os.h).  Each entry is a thin
** wrapper that counts the call; errors come back as the call reports them
** (-1 with errno, or an errno value for posix_fallocate).
*/
#define _GNU_SOURCE
#include "os.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>
#include <stdlib.h>

kvm_os_counts kvm_sys_counts;
#define COUNT(f) __atomic_add_fetch(&kvm_sys_counts.f, 1, __ATOMIC_RELAXED)

static int os_open(const char *path, int flags, int mode) { return open(path, flags | O_CLOEXEC, mode); }
static int os_close(int fd) { return close(fd); }
static int os_fstat_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    *size = (uint64_t)st.st_size;
    return 0;
}
static int os_flock(int fd, int op) { return flock(fd, op); }
static ssize_t os_pread(int fd, void *b, size_t n, off_t o) { COUNT(pread); return pread(fd, b, n, o); }
static ssize_t os_pwrite(int fd, const void *b, size_t n, off_t o) { COUNT(pwrite); return pwrite(fd, b, n, o); }
static int os_fdatasync(int fd) { COUNT(fdatasync); return fdatasync(fd); }
static int os_fsync_dir(const char *path)
{
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
static int os_posix_fallocate(int fd, off_t o, off_t l) { COUNT(fallocate); return posix_fallocate(fd, o, l); }
static int os_ftruncate(int fd, off_t l) { return ftruncate(fd, l); }
static void *os_mmap(void *a, size_t l, int p, int f, int fd, off_t o) { COUNT(mmap); return mmap(a, l, p, f, fd, o); }
static int os_munmap(void *a, size_t l) { COUNT(munmap); return munmap(a, l); }
static void *os_mremap(void *o, size_t ol, size_t nl, int f) { COUNT(mremap); return mremap(o, ol, nl, f); }
static int os_madvise(void *a, size_t l, int adv) { COUNT(madvise); return madvise(a, l, adv); }

const kvm_os kvm_sys_default = {
    os_open, os_close, os_fstat_size, os_flock, os_pread, os_pwrite,
    os_fdatasync, os_fsync_dir, os_posix_fallocate, os_ftruncate,
    os_mmap, os_munmap, os_mremap, os_madvise,
};
kvm_os kvm_sys = {
    os_open, os_close, os_fstat_size, os_flock, os_pread, os_pwrite,
    os_fdatasync, os_fsync_dir, os_posix_fallocate, os_ftruncate,
    os_mmap, os_munmap, os_mremap, os_madvise,
};
