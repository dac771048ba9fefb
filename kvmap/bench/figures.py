"""What kvmap-bench measures besides time: this process's page faults,
resident set (whole, peak, and of the mappings of given files), a store's
files' size and allocated blocks, their pages in the page cache
(``mincore``), the bytes read from storage, the file system under a
directory, and percentiles of latencies.  Linux's ``/proc`` first, with
``getrusage`` where it is missing."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import resource
from typing import Iterable, Optional

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rusage() -> tuple[int, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_minflt, ru.ru_majflt


def rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def file_figures(paths: Iterable[str]) -> tuple[int, int]:
    size = alloc = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        size += st.st_size
        alloc += st.st_blocks * 512
    return size, alloc


def mapped_rss(paths: Iterable[str]) -> int:
    """Bytes of this process's mappings of the files `paths` that are
    resident (the Rss lines of /proc/self/smaps; 0 where it cannot be read)."""
    wanted = {os.path.realpath(p) for p in paths}
    total, ours = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if not head:
                    continue
                if "-" in head[0] and ":" not in head[0]:   # a mapping's first line: range, perms, ..., path
                    ours = len(head) == 6 and head[5].rstrip("\n") in wanted
                elif ours and head[0] == "Rss:":
                    total += int(head[1]) * 1024
    except OSError:
        return 0
    return total


def space_figures(paths: list[str]) -> dict[str, int]:
    """What a store's files hold on to: their size, their allocated blocks
    (st_blocks*512), the resident set of this process's mappings of them,
    and this process's whole resident set."""
    size, alloc = file_figures(paths)
    return {"file_size": size, "allocated": alloc, "mapped_rss": mapped_rss(paths), "rss": rss()}


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_pages(paths: Iterable[str]) -> dict[str, int]:
    """{"pages": in the page cache, "of": in the files}: mincore(2) on a
    mapping of each file, made and dropped here and never touched, so the
    probe itself brings nothing in."""
    res = total = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            if not size:
                continue
            n = (size + PAGE - 1) // PAGE
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap for mincore")
            try:
                vec = ctypes.create_string_buffer(n)
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), "mincore")
            finally:
                _libc.munmap(addr, size)
            res += sum(b & 1 for b in vec.raw)
            total += n
        finally:
            os.close(fd)
    return {"pages": res, "of": total}


def disk_read_bytes() -> Optional[int]:
    """Bytes this process made the kernel read from storage (None off Linux)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fs_type(path: str) -> str:
    path = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def percentile(sorted_vals: list[int], q: float) -> Optional[int]:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]
