"""kvmap-bench: compare kvmap's I/O backends and growth strategies on your own
disk, optionally side by side with py-lmdb and sqlite3.

Run ``kvmap-bench`` (or ``python -m kvmap.bench``) with no arguments for the
default suite (about 100 s on a 2-core VM, two thirds of it procs);
``kvmap-bench --help`` lists the options.  Progress goes to stderr (one line
per phase, ``--quiet`` hides it); the comparison table goes to stdout.

Stores
------
kvmap backends: ``mmap:reserve``, ``mmap:mremap``, ``mmap:remap`` (each also
with ``:wm`` = ``writemap=True``) and ``pread``.  Peers (``--peers``):
``lmdb`` (py-lmdb, ``map_size`` 8 GiB, ``sync``/``metasync`` as the workload
needs) and ``sqlite3`` (``CREATE TABLE kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT
ROWID``, ``journal_mode=WAL``, ``synchronous=OFF``, or ``FULL`` for
``txn_sync``).  All stores run on the same generated data (N distinct random
keys of ``--key-size`` bytes, random values of ``--value-size`` bytes).

Workloads (in run order; the store loaded by ``bulk`` is reused by the next ones)
-------------------------------------------------------------------------------
bulk        load N pairs in one transaction with the store's batch call (kvmap
            update, py-lmdb putmulti, sqlite3 executemany), sync off (fresh
            store per repetition)
get         random gets of all N keys in one snapshot, hot cache
get_cold    fdatasync + posix_fadvise(DONTNEED) the store's files (store closed,
            so no page stays mapped), reopen, random gets of a sample; latency per get.
            The proof that the pages left the page cache: extra.resident holds the
            pages of the store's files in the page cache (mincore(2) on a mapping
            of each file that is never touched) after the eviction ("dropped"),
            after the reopen, right before the timed gets ("start"), and after
            them ("end"), with the file's pages ("of"); extra.read_mib is what the
            gets read from the disk (read_bytes of /proc/self/io: read-ahead
            included) and extra.readahead the store's read-ahead setting
scan        ordered scan of all pairs
range       short range queries of ~100 keys at random starts; latency per query
mixed       2 reader threads doing random gets (a fresh snapshot per 100 gets)
            while the main thread commits small transactions (10 overwrites,
            sync off): params.mixed_commits of them, repeated until at least
            0.2 s have passed; throughput = reader gets/s during the writer's
            run, extra.writer_commits_per_s
procs       the same traffic from separate processes: N reader processes (one
            result per N of --procs-readers, extra.readers) and one writer
            process, each opening the store itself (kvmap.open, lmdb.open with
            its lock file, a sqlite3 connection of its own), started with
            multiprocessing's spawn.  Once every process has opened the store
            they all run for the same --procs-seconds window (a start time on
            the shared monotonic clock), so start-up and imports are outside
            it.  Unlike the other workloads, which run store after store, procs
            runs on every store in turn, repetition by repetition, so that the
            load of other processes on the machine falls alike on all stores.
            A reader reads batches of 100 random gets, one snapshot / read
            transaction each, and checks that every key is found; the writer
            commits transactions of 10 overwrites, sync off, cycling over
            params.mixed_commits prepared ones.  throughput = all readers'
            gets/s; extra.reads_per_s_per_reader (each reader's gets/s),
            extra.writer_commits_per_s, extra.writer_commit_us (p50, p99),
            extra.reader_cpu_us_per_get and extra.writer_cpu_us_per_commit (CPU
            time: what an operation costs however many processes share the
            CPUs); latency_us = per batch (one snapshot of 100 gets, its begin
            and end included), over every reader; faults
            (sum) and peak_rss (max) are the child processes', and a kvmap row's
            extra.syscalls is the sum of their stats()['syscalls'] deltas
txn_nosync  transactions of 10 new keys, sync off; latency per transaction
txn_sync    the same with sync on (fewer transactions); extra.fdatasync_per_commit
churn       delete all keys and reinsert them (one transaction each) for a few
            rounds; extra.before / extra.after hold file size, allocated bytes
            (st_blocks*512) and RSS.  Runs on the peers too.
growth      (kvmap only: the peers have no growth strategies) grow a fresh store
            from empty to --growth-mib with 1 MiB values, one transaction each,
            sync off.  A growth step is a commit after which stats()['file_size']
            changed; extra.steps lists [file size MiB after, commit ms].  Then all
            values are read (extra.first_read_minflt), the file is grown by one
            more step, and the same values are read again: extra.reread_minflt is
            the ru_minflt taken by that re-read of already-touched data (remap =
            munmap+mmap refaults it, mremap and reserve keep the page tables).

JSON schema (``--json OUT``), schema 1
--------------------------------------
{
  "schema": 1,
  "machine": {"kernel": str, "python": str, "filesystem": str (type of --dir,
              from /proc/mounts, longest matching mount point), "dir": str,
              "page_size": int, "cpu_count": int, "kvmap_version": str,
              "lmdb_version": str|null, "sqlite_version": str|null},
  "params":  {"backends": [str], "peers": [str], "workloads": [str], "n": int,
              "key_size": int, "value_size": int, "repeat": int, "seed": int,
              "growth_mib": int, "txn_nosync": int, "txn_sync": int, "cold_sample": int,
              "range_queries": int, "mixed_commits": int, "churn_rounds": int,
              "procs_readers": [int], "procs_seconds": float},
  "results": [{   (one per workload and store; procs: one per workload, store and extra.readers)
      "workload": str, "store": str (a backend name, "lmdb" or "sqlite3"),
      "throughput": {"median": float, "min": float, "max": float, "unit": str},
      "latency_us": {"p50": float, "p99": float} | null   (over all repetitions),
      "faults": {"minor": int, "major": int}   (getrusage delta, median repetition),
      "peak_rss": int bytes (VmHWM, reset before each repetition; max over reps),
      "file_size": int bytes, "allocated": int bytes (st_blocks*512; store files after the workload),
      "extra": {...} (per workload, see above; from the last repetition, but writer_commits_per_s is
                      the median of the repetitions; kvmap rows add "syscalls": the
                      stats()['syscalls'] delta of the last repetition),
      "error": str   (only when the workload failed; throughput is then null)
  }]
}
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import itertools
import mmap
import multiprocessing
import json
import os
import pickle
import platform
import queue
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Optional

import kvmap

BACKENDS: dict[str, dict[str, Any]] = {
    "mmap:reserve": dict(backend="mmap", growth="reserve", writemap=False),
    "mmap:reserve:wm": dict(backend="mmap", growth="reserve", writemap=True),
    "mmap:mremap": dict(backend="mmap", growth="mremap", writemap=False),
    "mmap:mremap:wm": dict(backend="mmap", growth="mremap", writemap=True),
    "mmap:remap": dict(backend="mmap", growth="remap", writemap=False),
    "mmap:remap:wm": dict(backend="mmap", growth="remap", writemap=True),
    "pread": dict(backend="pread"),
}
DEFAULT_BACKENDS = ["mmap:reserve", "mmap:mremap", "mmap:remap", "pread"]
PEERS = ["lmdb", "sqlite3"]
WORKLOADS = ["bulk", "get", "get_cold", "scan", "range", "mixed", "procs", "txn_nosync",
             "txn_sync", "churn", "growth"]
UNITS = {"bulk": "key/s", "get": "get/s", "get_cold": "get/s", "scan": "item/s",
         "range": "query/s", "mixed": "get/s", "procs": "get/s", "txn_nosync": "txn/s",
         "txn_sync": "txn/s", "churn": "op/s", "growth": "MiB/s"}
KVMAP_ONLY = {"growth"}

PUTS_PER_TXN = 10
RANGE_SPAN = 100
MIXED_READERS = 2
MIXED_BATCH = 100
MIXED_MIN_S = 0.2
PROCS_READERS = [1, 2, 4]
PROCS_SECONDS = 1.0
PROCS_START_DELAY_S = 0.05   # from the last process ready to the window's start: time to wake them all
PROCS_TIMEOUT_S = 120.0      # a process that says nothing for this long has hung
LMDB_MAP_SIZE = 8 << 30
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


# A workload's result, a run's result, the runner's per-store context and
# the parameters: JSON-shaped dicts.
_Result = dict[str, Any]
_Ctx = dict[str, Any]
_Params = dict[str, Any]
_Pairs = list[tuple[bytes, bytes]]


class BenchError(Exception):
    """A store returned a wrong result during a workload."""


# ----------------------------------------------------------------------------- process figures

def _rusage() -> tuple[int, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_minflt, ru.ru_majflt


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _file_figures(paths: Iterable[str]) -> tuple[int, int]:
    size = alloc = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        size += st.st_size
        alloc += st.st_blocks * 512
    return size, alloc


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def _resident(paths: Iterable[str]) -> dict[str, int]:
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


def _read_bytes() -> Optional[int]:
    """Bytes this process made the kernel read from storage (None off Linux)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _fs_type(path: str) -> str:
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


def _pct(sorted_vals: list[int], q: float) -> Optional[int]:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


# ----------------------------------------------------------------------------- stores

class Store:
    """One store in its own directory; ``open(sync)`` creates it if missing."""

    kind = "?"
    # What each store provides.
    open: Callable[[bool], None]
    close: Callable[[], None]
    files: Callable[[], list[str]]
    load: Callable[[_Pairs], None]
    txn: Callable[[_Pairs], None]
    delete_all: Callable[[list[bytes]], None]
    get_all: Callable[[list[bytes]], int]
    get_timed: Callable[[list[bytes], list[int]], int]
    read_batch: Callable[[list[bytes]], None]
    scan: Callable[[], int]
    ranges: Callable[[list[tuple[bytes, bytes]], list[int]], int]
    count: Callable[[], int]

    def __init__(self, name: str, directory: str) -> None:
        self.name = name
        self.dir = directory
        self.sync: Any = None    # True or False while open, None while closed
        os.makedirs(directory, exist_ok=True)

    def ensure(self, sync: bool) -> None:
        if self.sync is not sync:
            self.close()
            self.open(sync)

    def reopen(self) -> None:
        sync = self.sync
        self.close()
        self.open(sync)

    def syscalls(self) -> Optional[dict[str, int]]:
        return None

    def readahead(self) -> Optional[bool]:
        """Whether the kernel reads ahead of the store's page faults (None: it reads with pread)."""
        return None

    def flush(self) -> None:
        pass

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)


class TxnStore(Store):
    """A store read through snapshots and written through transactions with
    ``get``/``put``/``delete`` (kvmap and py-lmdb alike): ``reader()`` and
    ``writer()`` give them; the workloads' loops are shared."""

    # Each store's read and write transactions, and its batch put into one.
    reader: Callable[[], Any]
    writer: Callable[[], Any]
    put_batch: Callable[[Any, _Pairs], None]

    def load(self, pairs: _Pairs) -> None:
        """A bulk load: one transaction, the store's batch call."""
        with self.writer() as t:
            self.put_batch(t, pairs)

    def txn(self, pairs: _Pairs) -> None:
        """A small transaction: one put() per pair."""
        with self.writer() as t:
            put = t.put
            for k, v in pairs:
                put(k, v)

    def delete_all(self, keys: list[bytes]) -> None:
        with self.writer() as t:
            for k in keys:
                t.delete(k)

    def get_all(self, keys: list[bytes]) -> int:
        found = 0
        with self.reader() as t:
            get = t.get
            for k in keys:
                if get(k) is not None:
                    found += 1
        return found

    def get_timed(self, keys: list[bytes], lat: list[int]) -> int:
        found = 0
        clock = time.perf_counter_ns
        with self.reader() as t:
            get = t.get
            for k in keys:
                t0 = clock()
                v = get(k)
                lat.append(clock() - t0)
                if v is not None:
                    found += 1
        return found

    def read_batch(self, keys: list[bytes]) -> None:
        with self.reader() as t:
            get = t.get
            for k in keys:
                get(k)


class KvmapStore(TxnStore):
    kind = "kvmap"

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(name, directory)
        self.kw = BACKENDS[name]
        self.path = os.path.join(directory, "db.kvmap")
        self.db: Any = None      # the open kvmap.Database, or None

    def open(self, sync: bool) -> None:
        self.db = kvmap.open(self.path, sync=sync, **self.kw)
        self.sync = sync

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.sync = None

    def files(self) -> list[str]:
        return [self.path]

    def syscalls(self) -> dict[str, int]:
        return dict(self.db.stats()["syscalls"])

    def readahead(self) -> Optional[bool]:
        return self.db.readahead  # type: ignore[no-any-return]

    def reader(self) -> kvmap.Snapshot:
        return self.db.snapshot()  # type: ignore[no-any-return]

    def writer(self) -> kvmap.Transaction:
        return self.db.transaction()  # type: ignore[no-any-return]

    @staticmethod
    def put_batch(t: kvmap.Transaction, pairs: _Pairs) -> None:
        t.update(pairs)

    def scan(self) -> int:
        n = 0
        for _ in self.db.items():
            n += 1
        return n

    def ranges(self, bounds: list[tuple[bytes, bytes]], lat: list[int]) -> int:
        items = 0
        clock = time.perf_counter_ns
        with self.reader() as s:
            irange = s.irange_items
            for lo, hi in bounds:
                t0 = clock()
                for _ in irange(lo, hi):
                    items += 1
                lat.append(clock() - t0)
        return items

    def count(self) -> int:
        return len(self.db)


class LmdbStore(TxnStore):
    kind = "lmdb"

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(name, directory)
        import lmdb
        self.lmdb = lmdb
        self.env: Any = None     # the open lmdb.Environment, or None

    def open(self, sync: bool) -> None:
        self.env = self.lmdb.open(self.dir, map_size=LMDB_MAP_SIZE, sync=sync, metasync=sync,
                                  max_readers=126)
        self.sync = sync

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self.sync = None

    def files(self) -> list[str]:
        return [os.path.join(self.dir, "data.mdb")]

    def readahead(self) -> Optional[bool]:
        return self.env.flags()["readahead"]  # type: ignore[no-any-return]

    def reader(self) -> Any:
        return self.env.begin()

    def writer(self) -> Any:
        return self.env.begin(write=True)

    @staticmethod
    def put_batch(t: Any, pairs: _Pairs) -> None:
        t.cursor().putmulti(pairs)

    def scan(self) -> int:
        n = 0
        with self.reader() as t:
            for _ in t.cursor():
                n += 1
        return n

    def ranges(self, bounds: list[tuple[bytes, bytes]], lat: list[int]) -> int:
        items = 0
        clock = time.perf_counter_ns
        with self.reader() as t:
            cur = t.cursor()
            for lo, hi in bounds:
                t0 = clock()
                if cur.set_range(lo):
                    for k, _ in cur:
                        if k > hi:
                            break
                        items += 1
                lat.append(clock() - t0)
        return items

    def count(self) -> int:
        return self.env.stat()["entries"]  # type: ignore[no-any-return]


class SqliteStore(Store):
    kind = "sqlite3"
    GET = "SELECT v FROM kv WHERE k = ?"

    def __init__(self, name: str, directory: str) -> None:
        super().__init__(name, directory)
        import sqlite3
        self.sqlite3 = sqlite3
        self.path = os.path.join(directory, "db.sqlite")
        self.conn: Any = None    # the open sqlite3.Connection, or None
        self.local = threading.local()
        self.readers: list[Any] = []

    def _connect(self) -> Any:
        conn = self.sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def open(self, sync: bool) -> None:
        self.conn = self._connect()
        self.conn.execute("PRAGMA synchronous=%s" % ("FULL" if sync else "OFF"))
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self.sync = sync

    def ensure(self, sync: bool) -> None:
        if self.conn is None:
            self.open(sync)
        elif self.sync is not sync:
            self.conn.execute("PRAGMA synchronous=%s" % ("FULL" if sync else "OFF"))
            self.sync = sync

    def close(self) -> None:
        for c in self.readers:
            c.close()
        self.readers = []
        self.local = threading.local()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.sync = None

    def flush(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def files(self) -> list[str]:
        return [self.path, self.path + "-wal", self.path + "-shm"]

    def load(self, pairs: _Pairs) -> None:
        c = self.conn
        c.execute("BEGIN")
        c.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", pairs)
        c.execute("COMMIT")

    def _get_loop(self, conn: Any, keys: list[bytes], lat: Optional[list[int]] = None) -> int:
        found = 0
        ex = conn.execute
        ex("BEGIN")
        clock = time.perf_counter_ns
        for k in keys:
            if lat is not None:
                t0 = clock()
            row = ex(self.GET, (k,)).fetchone()
            if lat is not None:
                lat.append(clock() - t0)
            if row is not None:
                found += 1
        ex("COMMIT")
        return found

    def get_all(self, keys: list[bytes]) -> int:
        return self._get_loop(self.conn, keys)

    def get_timed(self, keys: list[bytes], lat: list[int]) -> int:
        return self._get_loop(self.conn, keys, lat)

    def scan(self) -> int:
        n = 0
        for _ in self.conn.execute("SELECT k, v FROM kv ORDER BY k"):
            n += 1
        return n

    def ranges(self, bounds: list[tuple[bytes, bytes]], lat: list[int]) -> int:
        items = 0
        ex = self.conn.execute
        clock = time.perf_counter_ns
        ex("BEGIN")
        for lo, hi in bounds:
            t0 = clock()
            for _ in ex("SELECT k, v FROM kv WHERE k >= ? AND k <= ? ORDER BY k", (lo, hi)):
                items += 1
            lat.append(clock() - t0)
        ex("COMMIT")
        return items

    def txn(self, pairs: _Pairs) -> None:
        c = self.conn
        c.execute("BEGIN")
        c.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", pairs)
        c.execute("COMMIT")

    def delete_all(self, keys: list[bytes]) -> None:
        c = self.conn
        c.execute("BEGIN")
        c.executemany("DELETE FROM kv WHERE k = ?", ((k,) for k in keys))
        c.execute("COMMIT")

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM kv").fetchone()[0])

    def read_batch(self, keys: list[bytes]) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
            self.readers.append(conn)
        self._get_loop(conn, keys)


def make_store(name: str, directory: str) -> Store:
    if name in BACKENDS:
        return KvmapStore(name, directory)
    if name == "lmdb":
        return LmdbStore(name, directory)
    if name == "sqlite3":
        return SqliteStore(name, directory)
    raise ValueError(name)


# ----------------------------------------------------------------------------- data

class Data:
    def __init__(self, n: int, key_size: int, value_size: int, seed: int) -> None:
        rng = random.Random(seed)
        seen = set()
        keys: list[bytes] = []
        while len(keys) < n:
            k = rng.randbytes(key_size)
            if k not in seen:
                seen.add(k)
                keys.append(k)
        self.n = n
        self.key_size = key_size
        self.value_size = value_size
        self.keys = keys
        self.pairs = [(k, rng.randbytes(value_size)) for k in keys]
        self.sorted_keys = sorted(keys)
        self.get_order = list(keys)
        rng.shuffle(self.get_order)
        self.seed = seed


# ----------------------------------------------------------------------------- workloads
# Each workload function runs one repetition and returns
#   {"ops": float, "seconds": float, "lat_ns": [..] or None, "extra": {...}}.

def _ensure_loaded(store: Store, data: Data, ctx: _Ctx) -> None:
    """Open the shared loaded store (sync off), loading it untimed if needed."""
    store.ensure(False)
    if not ctx.get("loaded"):
        store.load(data.pairs)
        ctx["loaded"] = True


def w_bulk(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    store.destroy()
    store.open(False)
    t0 = time.perf_counter()
    store.load(data.pairs)
    dt = time.perf_counter() - t0
    ctx["loaded"] = True
    n = store.count()
    if n != data.n:
        raise BenchError(f"{n} entries after loading {data.n}")
    return {"ops": data.n, "seconds": dt}


def w_get(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    t0 = time.perf_counter()
    found = store.get_all(data.get_order)
    dt = time.perf_counter() - t0
    if found != data.n:
        raise BenchError(f"found {found} of {data.n} keys")
    return {"ops": data.n, "seconds": dt}


def _drop_cache(store: Store) -> dict[str, int]:
    """Evict the store's files from the page cache and reopen it; returns
    their resident pages once evicted, before the reopen."""
    store.flush()
    sync = store.sync
    store.close()
    for path in store.files():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    dropped = _resident(store.files())
    store.open(sync)
    return dropped


def w_get_cold(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    rng = random.Random(data.seed + 2 + ctx["rep"])
    sample = rng.sample(data.keys, min(p["cold_sample"], data.n))
    dropped = _drop_cache(store)
    start = _resident(store.files())
    lat: list[int] = []
    rb0 = _read_bytes()
    t0 = time.perf_counter()
    found = store.get_timed(sample, lat)
    dt = time.perf_counter() - t0
    rb1 = _read_bytes()
    if found != len(sample):
        raise BenchError(f"found {found} of {len(sample)} keys")
    return {"ops": len(sample), "seconds": dt, "lat_ns": lat,
            "extra": {"resident": {"dropped": dropped, "start": start, "end": _resident(store.files())},
                      "read_mib": None if rb0 is None else round((rb1 - rb0) / MIB, 2),  # type: ignore[operator]
                      "readahead": store.readahead()}}


def w_scan(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    t0 = time.perf_counter()
    n = store.scan()
    dt = time.perf_counter() - t0
    if n != data.n:
        raise BenchError(f"scan yielded {n} of {data.n} pairs")
    return {"ops": n, "seconds": dt}


def w_range(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    rng = random.Random(data.seed + 3 + ctx["rep"])
    sk = data.sorted_keys
    span = min(RANGE_SPAN, data.n)
    bounds = []
    for _ in range(p["range_queries"]):
        i = rng.randrange(0, data.n - span + 1)
        bounds.append((sk[i], sk[i + span - 1]))
    lat: list[int] = []
    t0 = time.perf_counter()
    items = store.ranges(bounds, lat)
    dt = time.perf_counter() - t0
    if items != span * len(bounds):
        raise BenchError(f"range queries yielded {items} items, expected {span * len(bounds)}")
    return {"ops": len(bounds), "seconds": dt, "lat_ns": lat, "extra": {"keys_per_query": span}}


def _txn_workload(store: Store, data: Data, ctx: _Ctx, p: _Params, sync: bool, count: int) -> _Result:
    _ensure_loaded(store, data, ctx)
    store.ensure(sync)
    rng = random.Random(data.seed + 4 + ctx["rep"] + (1000 if sync else 0))
    ks, vs = data.key_size, data.value_size
    chunks = [[(rng.randbytes(ks), rng.randbytes(vs)) for _ in range(PUTS_PER_TXN)]
              for _ in range(count)]
    sc0 = store.syscalls()
    lat = []
    clock = time.perf_counter_ns
    txn = store.txn
    t0 = time.perf_counter()
    for c in chunks:
        a = clock()
        txn(c)
        lat.append(clock() - a)
    dt = time.perf_counter() - t0
    extra: dict[str, Any] = {"puts_per_txn": PUTS_PER_TXN, "sync": sync}
    if sc0 is not None:
        sc1 = store.syscalls()
        assert sc1 is not None   # a store counts its calls or does not
        extra["fdatasync_per_commit"] = (sc1["fdatasync"] - sc0["fdatasync"]) / count
        extra["pwrite_per_commit"] = (sc1["pwrite"] - sc0["pwrite"]) / count
    # drop the added keys so later workloads see exactly the data set
    store.ensure(False)
    store.delete_all([k for c in chunks for k, _ in c])
    return {"ops": count, "seconds": dt, "lat_ns": lat, "extra": extra}


def w_txn_nosync(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    return _txn_workload(store, data, ctx, p, False, p["txn_nosync"])


def w_txn_sync(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    return _txn_workload(store, data, ctx, p, True, p["txn_sync"])


def _overwrite_chunks(data: Data, rng: random.Random, count: int) -> list[_Pairs]:
    """`count` small write transactions: PUTS_PER_TXN existing keys each, new values."""
    return [[(k, rng.randbytes(data.value_size)) for k in rng.sample(data.keys, min(PUTS_PER_TXN, data.n))]
            for _ in range(count)]


def _restore_overwritten(store: Store, data: Data, chunks: list[_Pairs]) -> None:
    """Put back the values `chunks` overwrote, so later workloads see exactly the data set."""
    originals = dict(data.pairs)
    touched = {k for c in chunks for k, _ in c}
    store.load([(k, originals[k]) for k in touched])


def _read_batches(keys: list[bytes], seed: int) -> list[list[bytes]]:
    """A reader's batches of MIXED_BATCH random keys (len(keys) draws in
    all), made before the timing starts and cycled: drawing them in the
    timed loop would cost about as much Python time as the gets themselves."""
    keys = random.Random(seed).choices(keys, k=max(len(keys), MIXED_BATCH))
    return [keys[i:i + MIXED_BATCH] for i in range(0, len(keys) - MIXED_BATCH + 1, MIXED_BATCH)]


def w_mixed(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    rng = random.Random(data.seed + 5 + ctx["rep"])
    chunks = _overwrite_chunks(data, rng, p["mixed_commits"])
    batches = [_read_batches(data.keys, data.seed * 31 + i) for i in range(MIXED_READERS)]
    stop = threading.Event()
    counts = [0] * MIXED_READERS
    errors = []

    def reader(i: int) -> None:
        try:
            for batch in itertools.cycle(batches[i]):
                if stop.is_set():
                    break
                store.read_batch(batch)
                counts[i] += MIXED_BATCH
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(MIXED_READERS)]
    for t in threads:
        t.start()
    time.sleep(0.01)
    base = sum(counts)
    t0 = time.perf_counter()
    done = 0
    while True:  # the fixed number of commits, continued until MIXED_MIN_S have passed
        for c in chunks:
            store.txn(c)
        done += len(chunks)
        dt = time.perf_counter() - t0
        if dt >= MIXED_MIN_S:
            break
    gets = sum(counts) - base
    commits = done
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"reader thread failed: {errors[0]!r}")
    _restore_overwritten(store, data, chunks)
    return {"ops": gets, "seconds": dt,
            "extra": {"readers": MIXED_READERS, "writer_commits": commits,
                      "writer_commits_per_s": commits / dt if dt > 0 else 0.0}}


# The procs workload.  Its processes are spawned (a fresh interpreter: no
# handle, lock or thread inherited from this one), so what they run is here
# at module level; they get the store by its name and directory, and their
# keys and transactions from a file: a large argument of Process, which
# start() writes into a pipe the child reads, would block start() for ever
# if the child died before reading it all.

def _procs_read(store: Store, batch: list[bytes]) -> None:
    found = store.get_all(batch)
    if found != len(batch):
        raise BenchError(f"found {found} of {len(batch)} keys")


def _procs_loop(op: Callable[[Any], None], work: list[Any], start_ns: int, end_ns: int) -> _Result:
    """op on each item of work, cycling, from start_ns until a call ends
    at end_ns or later (time.monotonic_ns: one clock for every process);
    returns the calls and their durations, the window they took and this
    process's CPU time, page faults and peak RSS in it."""
    clock = time.monotonic_ns
    time.sleep(max(0, start_ns - clock()) / 1e9)
    lat: list[int] = []
    f0 = _rusage()
    cpu0 = time.process_time()
    b = clock()
    for item in itertools.cycle(work):
        a = clock()
        op(item)
        b = clock()
        lat.append(b - a)
        if b >= end_ns:
            break
    cpu = time.process_time() - cpu0
    f1 = _rusage()
    return {"ops": len(lat), "seconds": (b - start_ns) / 1e9, "lat_ns": lat, "cpu_s": cpu,
            "faults": (f1[0] - f0[0], f1[1] - f0[1]), "peak_rss": _peak_rss()}


def _procs_process(role: str, name: str, directory: str, work_path: str, seed: int, seconds: float,
                   index: int, start: Any, start_ns: Any, out: Any) -> None:
    """One process of the procs workload: open the store, say so on `out`,
    wait for `start`, then run `role`'s loop in the window that begins at
    start_ns.value, and put its figures on `out`.  A "reader" reads batches
    of the keys in work_path (drawn with `seed`), the "writer" commits its
    transactions."""
    try:
        with open(work_path, "rb") as f:
            keys, chunks = pickle.load(f)
        work = chunks if role == "writer" else _read_batches(keys, seed)
        store = make_store(name, directory)
        store.open(False)
        try:
            out.put(("ready", index, None))
            if not start.wait(PROCS_TIMEOUT_S):
                raise BenchError("never told to start")
            t0 = start_ns.value
            sc0 = store.syscalls()
            op: Callable[[Any], None] = store.txn if role == "writer" else functools.partial(_procs_read, store)
            r = _procs_loop(op, work, t0, t0 + int(seconds * 1e9))
            sc1 = store.syscalls()
            if sc0 is not None and sc1 is not None:
                r["syscalls"] = {k: sc1[k] - sc0.get(k, 0) for k in sc1}
        finally:
            store.close()
        out.put(("done", index, r))
    except BaseException as exc:  # reported by the parent
        out.put(("error", index, f"{role} process: {type(exc).__name__}: {exc}"))


def _procs_collect(out: Any, procs: list[Any], kind: str) -> list[Any]:
    """Every process's message of `kind`, in process order; BenchError for
    an error reported, a process dead without one, or silence."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + PROCS_TIMEOUT_S
    while len(got) < len(procs):
        try:
            what, index, payload = out.get(timeout=0.2)
        except queue.Empty:
            dead = [pr.exitcode for pr in procs if pr.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"a procs process died (exit status {dead[0]})") from None
            if time.monotonic() > deadline:
                raise BenchError(f"procs processes silent for {PROCS_TIMEOUT_S:.0f} s") from None
            continue
        if what == "error":
            raise BenchError(payload)
        if what == kind:
            got[index] = payload
    return [got[i] for i in range(len(procs))]


def w_procs(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    nreaders = ctx["readers"]
    seconds = p["procs_seconds"]
    rng = random.Random(data.seed + 7 + ctx["rep"])
    chunks = _overwrite_chunks(data, rng, p["mixed_commits"])
    roles = ["writer"] + ["reader"] * nreaders
    mp = multiprocessing.get_context("spawn")
    out = mp.Queue()
    start = mp.Event()
    start_ns = mp.Value("q", 0, lock=False)   # written once, before start is set
    with tempfile.TemporaryDirectory(prefix="procs-", dir=os.path.dirname(store.dir)) as tmp:
        work_path = os.path.join(tmp, "work.pickle")
        with open(work_path, "wb") as f:
            pickle.dump((data.keys, chunks), f, protocol=pickle.HIGHEST_PROTOCOL)
        procs = [mp.Process(target=_procs_process, daemon=True,
                            args=(role, store.name, store.dir, work_path, data.seed * 31 + i, seconds, i,
                                  start, start_ns, out))
                 for i, role in enumerate(roles)]
        try:
            for pr in procs:
                pr.start()
            _procs_collect(out, procs, "ready")
            start_ns.value = time.monotonic_ns() + int(PROCS_START_DELAY_S * 1e9)
            start.set()
            figures = _procs_collect(out, procs, "done")
        finally:
            for pr in procs:
                pr.join(timeout=10 if start.is_set() else 0)
                if pr.is_alive():   # a failure elsewhere: it waits for a start that never comes
                    pr.terminate()
                    pr.join()
    writer, readers = figures[0], figures[1:]
    _restore_overwritten(store, data, chunks)
    syscalls = [f["syscalls"] for f in figures if "syscalls" in f]
    gets = sum(f["ops"] for f in readers) * MIXED_BATCH
    commit_ns = sorted(writer["lat_ns"])
    result: _Result = {
        "ops": gets,
        "seconds": max(f["seconds"] for f in readers),
        "lat_ns": [ns for f in readers for ns in f["lat_ns"]],
        "faults": tuple(sum(f["faults"][j] for f in figures) for j in (0, 1)),
        "peak_rss": max(f["peak_rss"] for f in figures),
        "extra": {"readers": nreaders, "gets_per_snapshot": MIXED_BATCH, "window_s": seconds,
                  "latency_per": f"snapshot of {MIXED_BATCH} gets",
                  "reads_per_s_per_reader": [f["ops"] * MIXED_BATCH / f["seconds"] for f in readers],
                  # what a get and a commit cost, however many processes share the CPUs
                  "reader_cpu_us_per_get": sum(f["cpu_s"] for f in readers) / gets * 1e6,
                  "writer_cpu_us_per_commit": writer["cpu_s"] / writer["ops"] * 1e6,
                  "puts_per_txn": PUTS_PER_TXN, "writer_commits": writer["ops"],
                  "writer_commits_per_s": writer["ops"] / writer["seconds"],
                  "writer_commit_us": {"p50": _pct(commit_ns, 0.50) / 1e3,  # type: ignore[operator]
                                       "p99": _pct(commit_ns, 0.99) / 1e3}}}  # type: ignore[operator]
    if syscalls:
        result["syscalls"] = {k: sum(sc[k] for sc in syscalls) for k in syscalls[0]}
    return result


def w_churn(store: Store, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    _ensure_loaded(store, data, ctx)
    store.flush()

    def figures() -> dict[str, int]:
        size, alloc = _file_figures(store.files())
        return {"file_size": size, "allocated": alloc, "rss": _rss()}

    before = figures()
    rounds = p["churn_rounds"]
    t0 = time.perf_counter()
    for _ in range(rounds):
        store.delete_all(data.keys)
        store.load(data.pairs)
    dt = time.perf_counter() - t0
    store.flush()
    after = figures()
    n = store.count()
    if n != data.n:
        raise BenchError(f"{n} entries after churn, expected {data.n}")
    return {"ops": 2 * data.n * rounds, "seconds": dt,
            "extra": {"rounds": rounds, "before": before, "after": after}}


def w_growth(store: KvmapStore, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    store.destroy()
    ctx["loaded"] = False   # a workload after this one loads the data set again
    store.open(False)
    db = store.db
    target = p["growth_mib"] * MIB
    block = random.Random(data.seed + 6).randbytes(MIB)
    clock = time.perf_counter_ns
    steps = []       # [file size MiB after, commit ms]
    plain = []       # commit ns of non-growth commits
    size = db.stats()["file_size"]
    i = 0
    t0 = time.perf_counter()
    while size < target:
        k = b"g%08d" % i
        a = clock()
        db[k] = k + block[len(k):]
        el = clock() - a
        i += 1
        new = db.stats()["file_size"]
        if new != size:
            steps.append([round(new / MIB, 3), el / 1e6])
            size = new
        else:
            plain.append(el)
    dt = time.perf_counter() - t0
    written = i

    def read_all() -> int:
        gc.collect()
        f0, _ = _rusage()
        with db.snapshot() as s:
            for j in range(written):
                v = s.get(b"g%08d" % j)
                if v is None or len(v) != MIB:
                    raise BenchError(f"value {j} missing or wrong size after growth")
        f1, _ = _rusage()
        return f1 - f0

    first = read_all()
    # one more growth step, then re-read the already-touched values
    extra_step = None
    j = written
    while True:
        k = b"g%08d" % j
        a = clock()
        db[k] = k + block[len(k):]
        el = clock() - a
        j += 1
        new = db.stats()["file_size"]
        if new != size:
            extra_step = [round(new / MIB, 3), el / 1e6]
            break
        if j - written > 4096:
            break
    reread = read_all()
    plain.sort()
    step_ms = sorted(s[1] for s in steps)
    return {"ops": written * MIB / MIB, "seconds": dt,
            "extra": {"values": written, "value_size": MIB, "steps": steps,
                      "growth_steps": len(steps),
                      "step_ms_median": statistics.median(step_ms) if step_ms else None,
                      "step_ms_max": step_ms[-1] if step_ms else None,
                      "plain_commit_ms_median": plain[len(plain) // 2] / 1e6 if plain else None,
                      "first_read_minflt": first, "extra_step": extra_step,
                      "reread_minflt": reread,
                      "reread_minflt_per_mib": reread / written if written else None}}


# (Any: w_growth takes only a KvmapStore)
WORKLOAD_FUNCS: dict[str, Callable[[Any, Data, _Ctx, _Params], _Result]] = {
    "bulk": w_bulk, "get": w_get, "get_cold": w_get_cold, "scan": w_scan, "range": w_range,
    "mixed": w_mixed, "procs": w_procs, "txn_nosync": w_txn_nosync, "txn_sync": w_txn_sync, "churn": w_churn,
    "growth": w_growth}


# ----------------------------------------------------------------------------- runner

def run_repetition(store: Store, workload: str, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    """One repetition of `workload` (ctx["rep"] is its number): the
    workload's figures, and the faults, peak RSS and (kvmap) syscalls of
    this process in it -- procs gives those of its processes instead."""
    _reset_peak_rss()
    sc0 = None
    if isinstance(store, KvmapStore):
        if store.db is None:
            store.ensure(False)  # a handle to read the (process-wide) counters
        sc0 = store.syscalls()
    f0 = _rusage()
    r = WORKLOAD_FUNCS[workload](store, data, ctx, p)
    f1 = _rusage()
    if isinstance(store, KvmapStore) and store.db is not None and sc0 is not None:
        sc1 = store.syscalls()
        r.setdefault("syscalls", {k: sc1[k] - sc0.get(k, 0) for k in sc1})
    r.setdefault("peak_rss", _peak_rss())
    r.setdefault("faults", (f1[0] - f0[0], f1[1] - f0[1]))
    return r


def summarize(store: Store, workload: str, reps: list[_Result]) -> _Result:
    """The result of `workload` on `store` from its repetitions."""
    rates = [r["ops"] / r["seconds"] if r["seconds"] > 0 else float("inf") for r in reps]
    lat_all = sorted(ns for r in reps for ns in r.get("lat_ns") or ())
    extra = dict(reps[-1].get("extra", {}))
    if "syscalls" in reps[-1]:
        extra["syscalls"] = reps[-1]["syscalls"]
    writer_rates = [r["extra"]["writer_commits_per_s"] for r in reps if "writer_commits_per_s" in r.get("extra", {})]
    if writer_rates:   # mixed and procs
        extra["writer_commits_per_s"] = statistics.median(writer_rates)
    mid = sorted(range(len(rates)), key=lambda i: rates[i])[len(rates) // 2]
    size, alloc = _file_figures(store.files())
    return {
        "workload": workload, "store": store.name,
        "throughput": {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                       "unit": UNITS[workload]},
        "latency_us": ({"p50": _pct(lat_all, 0.50) / 1e3, "p99": _pct(lat_all, 0.99) / 1e3}  # type: ignore[operator]
                       if lat_all else None),
        "faults": {"minor": reps[mid]["faults"][0], "major": reps[mid]["faults"][1]},
        "peak_rss": max(r["peak_rss"] for r in reps), "file_size": size, "allocated": alloc, "extra": extra,
    }


def run_workload(store: Store, workload: str, data: Data, ctx: _Ctx, p: _Params) -> _Result:
    reps = []
    for rep in range(p["repeat"]):
        ctx["rep"] = rep
        reps.append(run_repetition(store, workload, data, ctx, p))
    return summarize(store, workload, reps)


def _fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suf}"
    return f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def _fmt_bytes(x: Optional[int]) -> str:
    if x is None:
        return "-"
    return f"{x / MIB:.1f}M"


def _label(r: _Result) -> str:
    """A result's row in the tables: its workload, and procs's reader processes."""
    readers = r["extra"].get("readers") if r["workload"] == "procs" else None
    return f"procs {readers}r" if readers else str(r["workload"])


def _labels(results: list[_Result], workloads: list[str]) -> list[tuple[str, str]]:
    """(row label, workload) of the results, in the order of workloads."""
    return list(dict.fromkeys((_label(r), w) for w in workloads for r in results if r["workload"] == w))


def render_table(results: list[_Result], stores: list[str], workloads: list[str], kvmap_stores: list[str],
                 peers: list[str]) -> str:
    """The comparison table (rows workloads, columns stores, best kvmap marked '*')."""
    by = {(_label(r), r["store"]): r for r in results}
    rows: list[tuple[str, str, Callable[[_Result], Optional[float]], str]] = []
    for label, w in _labels(results, workloads):
        rows.append((label, label, lambda r: r["throughput"]["median"] if r.get("throughput") else None,
                     UNITS[w]))
        if w == "procs":
            rows.append((f"{label}/reader", label,
                         lambda r: r["throughput"]["median"] / r["extra"]["readers"] if r.get("throughput") else None,
                         UNITS[w]))
        if w in ("mixed", "procs"):
            rows.append((f"{label}:writer", label,
                         lambda r: r["extra"].get("writer_commits_per_s") if r.get("throughput") else None,
                         "commit/s"))
    header = ["workload"] + list(stores) + [f"best kvmap / {p}" for p in peers]
    lines = []
    for label, w, get, unit in rows:
        vals: dict[str, Any] = {}
        for s in stores:
            r = by.get((w, s))
            vals[s] = get(r) if r is not None else None
        kv = [(vals[s], s) for s in kvmap_stores if vals.get(s) is not None]
        best = max(kv)[1] if kv else None
        cells = [label]
        for s in stores:
            v = vals[s]
            if v is None:
                r = by.get((w, s))
                cells.append("error" if r is not None and r.get("error") else "n/a")
            else:
                cells.append(f"{_fmt_rate(v)} {unit}" + (" *" if s == best else "  "))
        for peer in peers:
            pv = vals.get(peer)
            cells.append(f"{vals[best] / pv:.2f}x" if best and pv else "-")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    out = []
    fmt: Callable[[list[str]], str] = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out.append(fmt(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt(c) for c in lines)
    out.append("* = best kvmap backend per row (median of repetitions; higher is better)")
    return "\n".join(out)


def render_details(results: list[_Result]) -> str:
    """Latency, growth and churn details (secondary table)."""
    out = []
    stores = list(dict.fromkeys(r["store"] for r in results))
    lat_w = list(dict.fromkeys((_label(r), r["extra"].get("latency_per")) for r in results if r.get("latency_us")))
    if lat_w:
        by = {(_label(r), r["store"]): r for r in results}
        rows = []
        for w, per in lat_w:
            # procs: the readers' latency per snapshot, then the writer's per commit
            lat_rows: list[tuple[str, Callable[[_Result], Any]]] = [
                (f"{w} p50/p99 us" + (f" per {per}" if per else ""), lambda r: r.get("latency_us")),
                (f"{w}:writer p50/p99 us per commit", lambda r: r["extra"].get("writer_commit_us"))]
            for label, lat_of in lat_rows:
                lats = {s: lat_of(by[w, s]) if (w, s) in by else None for s in stores}
                if any(lats.values()):
                    rows.append([label] + [f"{lu['p50']:.1f}/{lu['p99']:.1f}" if lu else "-"
                                           for lu in lats.values()])
            if any("fdatasync_per_commit" in (by.get((w, s)) or {}).get("extra", {}) for s in stores):
                cells = [f"{w} fdatasync/commit"]
                for s in stores:
                    e = (by.get((w, s)) or {}).get("extra") or {}
                    cells.append(f"{e['fdatasync_per_commit']:.2f}" if "fdatasync_per_commit" in e else "-")
                rows.append(cells)
        header = ["latency"] + stores
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]
        for cells in [header] + rows:
            out.append("  ".join(c.rjust(wd) if i else c.ljust(wd)
                                 for i, (c, wd) in enumerate(zip(cells, widths))))
        out.append("")
    cold = [r for r in results if r["workload"] == "get_cold" and r.get("throughput")]
    if cold:
        out.append("get_cold (last repetition)  resident pages: evicted  at start  after gets"
                   "  of file  read MiB  readahead")
        for r in cold:
            e = r["extra"]
            res = e["resident"]
            out.append(f"  {r['store']:<25} {res['dropped']['pages']:>15}  {res['start']['pages']:>8}"
                       f"  {res['end']['pages']:>10}  {res['end']['of']:>7}  {e['read_mib'] or 0:>8.1f}"
                       f"  {e['readahead']}")
        out.append("")
    gr = [r for r in results if r["workload"] == "growth" and r.get("throughput")]
    if gr:
        out.append("growth                 steps  step ms med  step ms max  commit ms  "
                   "first-read minflt  re-read minflt after growth")
        for r in gr:
            e = r["extra"]
            out.append(f"  {r['store']:<20} {e['growth_steps']:>5}  {e['step_ms_median'] or 0:>11.2f}  "
                       f"{e['step_ms_max'] or 0:>11.2f}  {e['plain_commit_ms_median'] or 0:>9.2f}  "
                       f"{e['first_read_minflt']:>17}  {e['reread_minflt']:>14}")
    ch = [r for r in results if r["workload"] == "churn" and r.get("throughput")]
    if ch:
        out.append("")
        out.append("churn                  file before->after   allocated before->after   "
                   "RSS before->after")
        for r in ch:
            b, a = r["extra"]["before"], r["extra"]["after"]
            out.append(f"  {r['store']:<20} {_fmt_bytes(b['file_size']):>8} -> {_fmt_bytes(a['file_size']):<8}"
                       f"  {_fmt_bytes(b['allocated']):>8} -> {_fmt_bytes(a['allocated']):<8}"
                       f"         {_fmt_bytes(b['rss']):>8} -> {_fmt_bytes(a['rss'])}")
    return "\n".join(out)


def write_plot(path: str, results: list[_Result], stores: list[str], workloads: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(_label(r), r["store"]): r for r in results if r.get("throughput")}
    labels = [label for label, _ in _labels(results, workloads)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(labels)), 9))
    width = 0.8 / max(1, len(stores))
    for j, s in enumerate(stores):
        ys = []
        for w in labels:
            best = max((by[w, t]["throughput"]["median"] for t in stores if (w, t) in by), default=0)
            r = by.get((w, s))
            ys.append(r["throughput"]["median"] / best if r and best else 0)
        ax1.bar([i + j * width for i in range(len(labels))], ys, width, label=s)
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax1.set_xticklabels(labels, rotation=20)
    ax1.set_ylabel("throughput / best in workload")
    ax1.set_title("kvmap-bench: throughput per store, normalised per workload")
    ax1.legend(fontsize=8)
    any_growth = False
    for s in stores:
        r = by.get(("growth", s))
        if r and r["extra"].get("steps"):
            xs = [st[0] for st in r["extra"]["steps"]]
            ys = [st[1] for st in r["extra"]["steps"]]
            ax2.plot(xs, ys, marker="o", label=s)
            any_growth = True
    ax2.set_xlabel("file size after the growth step (MiB)")
    ax2.set_ylabel("growth-step commit (ms)")
    ax2.set_title("growth step latency (last repetition)")
    if any_growth:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine_facts(directory: str) -> dict[str, Any]:
    facts = {"kernel": " ".join(platform.uname()[2:4]) if hasattr(platform, "uname") else "",
             "python": platform.python_version(), "filesystem": _fs_type(directory),
             "dir": os.path.realpath(directory), "page_size": PAGE, "cpu_count": os.cpu_count(),
             "kvmap_version": getattr(kvmap, "__version__", "?"), "lmdb_version": None,
             "sqlite_version": None}
    try:
        import lmdb
        facts["lmdb_version"] = "py-lmdb %s, LMDB %s" % (lmdb.__version__,
                                                          ".".join(map(str, lmdb.version())))
    except Exception:
        pass
    try:
        import sqlite3
        facts["sqlite_version"] = sqlite3.sqlite_version
    except Exception:
        pass
    return facts


def _csv(choices: list[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad)} (choose from {', '.join(choices)})")
        return list(dict.fromkeys(items))
    return parse


def _positive_ints(text: str) -> list[int]:
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, not {text!r}")
    return list(dict.fromkeys(items))


def build_parser(prog: str = "kvmap-bench") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark kvmap's I/O backends and growth strategies on this machine, "
                    "optionally against py-lmdb and sqlite3.")
    ap.add_argument("--backends", type=_csv(list(BACKENDS), "backend"), default=DEFAULT_BACKENDS,
                    help="comma list of %s (default %s)" % (", ".join(BACKENDS), ",".join(DEFAULT_BACKENDS)))
    ap.add_argument("--workloads", type=_csv(WORKLOADS, "workload"), default=list(WORKLOADS),
                    help="comma list of %s (default all)" % ", ".join(WORKLOADS))
    ap.add_argument("-n", "--n", type=int, default=50000, help="entries (default 50000)")
    ap.add_argument("--key-size", type=int, default=16, help="key bytes (default 16)")
    ap.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    ap.add_argument("--dir", default=None,
                    help="directory for the stores (a temporary subdirectory is made in it "
                         "and removed; default: the system temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per workload (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--peers", type=_csv(PEERS, "peer"), default=[],
                    help="comma list of lmdb, sqlite3 (default none)")
    ap.add_argument("--json", metavar="OUT", default=None, help="write all results as JSON")
    ap.add_argument("--plot", metavar="OUT.png", default=None,
                    help="write a PNG chart (needs matplotlib)")
    ap.add_argument("--growth-mib", type=int, default=256,
                    help="target size of the growth workload in MiB (default 256)")
    ap.add_argument("--procs-readers", type=_positive_ints, default=PROCS_READERS,
                    help="procs workload: comma list of reader process counts, one run each "
                         "(default %s)" % ",".join(map(str, PROCS_READERS)))
    ap.add_argument("--procs-seconds", type=float, default=PROCS_SECONDS,
                    help="procs workload: the measured window of each run in seconds (default %g)"
                         % PROCS_SECONDS)
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: Optional[list[str]] = None, prog: str = "kvmap-bench") -> int:
    args = build_parser(prog).parse_args(argv)
    say: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if (args.n < 1 or args.key_size < 1 or args.value_size < 0 or args.repeat < 1 or args.growth_mib < 1
            or not args.procs_seconds > 0):
        print("kvmap-bench: -n, --key-size, --repeat, --growth-mib and --procs-seconds must be positive",
              file=sys.stderr)
        return 2
    if args.key_size < 8 and 256 ** args.key_size < 2 * args.n:
        print("kvmap-bench: --key-size too small for -n distinct keys", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("kvmap-bench: --plot needs matplotlib, which is not installed "
                  "(pip install matplotlib)", file=sys.stderr)
            return 2

    peers = []
    for peer in args.peers:
        try:
            __import__("lmdb" if peer == "lmdb" else "sqlite3")
        except ImportError:
            print(f"kvmap-bench: peer {peer} skipped: "
                  + ("py-lmdb is not installed (pip install lmdb)" if peer == "lmdb"
                     else "this Python has no sqlite3 module"), file=sys.stderr)
            continue
        peers.append(peer)

    stores = list(args.backends) + peers
    workloads = [w for w in WORKLOADS if w in args.workloads]
    n = args.n
    params = {"backends": list(args.backends), "peers": peers, "workloads": workloads, "n": n,
              "key_size": args.key_size, "value_size": args.value_size, "repeat": args.repeat,
              "seed": args.seed, "growth_mib": args.growth_mib,
              "txn_nosync": max(10, min(2000, n // 5)), "txn_sync": max(10, min(200, n // 10)),
              "cold_sample": min(n, 2000), "range_queries": max(10, min(2000, n // 10)),
              "mixed_commits": max(10, min(500, n // 10)), "churn_rounds": 3,
              "procs_readers": args.procs_readers, "procs_seconds": args.procs_seconds}

    base = args.dir if args.dir else None
    if base:
        os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="kvmap-bench-", dir=base)
    machine = machine_facts(workdir)
    say(f"kvmap-bench: {len(stores)} stores x {len(workloads)} workloads, N={n}, "
        f"repeat={args.repeat}, dir={workdir} ({machine['filesystem']})")
    t_start = time.perf_counter()
    data = Data(n, args.key_size, args.value_size, args.seed)
    results = []
    def runs(s: str, w: str) -> bool:
        return not (w in KVMAP_ONLY and s not in BACKENDS)

    for s in stores:
        skipped = [w for w in workloads if not runs(s, w)]
        if skipped:
            say(f"  {s}: skipping {', '.join(skipped)} (kvmap growth strategies only)")
    phases = sum(len(args.procs_readers) if w == "procs" else 1 for s in stores for w in workloads if runs(s, w))
    live: dict[str, tuple[Store, _Ctx]] = {}   # the stores made and not yet removed, with their context

    def store_of(s: str) -> tuple[Store, _Ctx]:
        if s not in live:
            live[s] = (make_store(s, os.path.join(workdir, s.replace(":", "-"))), {"loaded": False})
        return live[s]

    def finish(s: str) -> None:
        store, _ = live.pop(s)
        with contextlib.suppress(Exception):
            store.close()
        shutil.rmtree(store.dir, ignore_errors=True)

    def failed(s: str, w: str, variant: dict[str, int], exc: Exception) -> _Result:
        """The result of a workload that raised; the store is closed (and
        emptied if the workload was building it) for the next to load."""
        store, ctx = live[s]
        r = {"workload": w, "store": s, "throughput": None, "latency_us": None, "faults": None,
             "peak_rss": None, "file_size": None, "allocated": None, "extra": dict(variant),
             "error": f"{type(exc).__name__}: {exc}"}
        print(f"kvmap-bench: {_label(r)} on {s} failed: {r['error']}", file=sys.stderr)
        with contextlib.suppress(Exception):
            store.close()
        ctx["loaded"] = False
        if w in ("bulk", "growth"):
            with contextlib.suppress(Exception):
                store.destroy()
        return r

    def report(r: _Result, t0: float) -> None:
        results.append(r)
        if r.get("throughput"):
            tp = r["throughput"]
            say(f"[{len(results)}/{phases}] {_label(r):<10} {r['store']:<16} {_fmt_rate(tp['median'])} "
                f"{tp['unit']}  ({time.perf_counter() - t0:.1f} s)")

    def run_one(s: str, w: str) -> None:
        if not runs(s, w):
            return
        store, ctx = store_of(s)
        t0 = time.perf_counter()
        try:
            r = run_workload(store, w, data, ctx, params)
        except Exception as exc:
            r = failed(s, w, {}, exc)
        report(r, t0)

    def run_procs(variant: dict[str, int]) -> None:
        """procs with ctx["readers"] = variant's on every store, the
        repetitions interleaved: the stores take turns, each repetition
        starting one store further on, so that a change in the machine's
        load (other processes) falls on all of them, not on one store's
        block of repetitions as with the other workloads."""
        t0 = time.perf_counter()
        reps: dict[str, list[_Result]] = {s: [] for s in stores}
        errors: dict[str, _Result] = {}
        for rep in range(args.repeat):
            for s in stores[rep % len(stores):] + stores[:rep % len(stores)]:
                if s in errors:
                    continue
                store, ctx = store_of(s)
                ctx.update(variant, rep=rep)
                try:
                    reps[s].append(run_repetition(store, "procs", data, ctx, params))
                except Exception as exc:
                    errors[s] = failed(s, "procs", variant, exc)
        for s in stores:
            report(errors.get(s) or summarize(live[s][0], "procs", reps[s]), t0)

    # Store after store, each through the workloads in order -- but procs
    # runs on every store in turn at its place in the order, so the stores
    # wait for it (and are removed after their last workload).
    procs_at = workloads.index("procs") if "procs" in workloads else len(workloads)
    try:
        for s in stores:
            for w in workloads[:procs_at]:
                run_one(s, w)
            if procs_at == len(workloads):
                finish(s)
        if procs_at < len(workloads):
            for readers in args.procs_readers:
                run_procs({"readers": readers})
            for s in stores:
                for w in workloads[procs_at + 1:]:
                    run_one(s, w)
                finish(s)
    finally:
        for s in list(live):
            finish(s)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    say(f"kvmap-bench: done in {elapsed:.1f} s")

    print(f"kvmap-bench  N={n} key={args.key_size}B value={args.value_size}B repeat={args.repeat} "
          f"fs={machine['filesystem']} kernel={machine['kernel'].split()[0] if machine['kernel'] else '?'} "
          f"cpus={machine['cpu_count']}  ({elapsed:.0f} s)")
    print(render_table(results, stores, workloads, list(args.backends), peers))
    details = render_details(results)
    if details:
        print()
        print(details)
    errors = [r for r in results if r.get("error")]
    if args.json:
        doc = {"schema": 1, "machine": machine, "params": params, "results": results,
               "elapsed_s": elapsed}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.plot:
        write_plot(args.plot, results, stores, workloads)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
