"""The stores kvmap-bench compares, behind one interface (``Store``): kvmap
in each configuration (``KvmapStore``; kvmap-bench names them
``mmap:reserve``, ``mmap:reserve:wm``, ..., ``pread``), and the peers py-lmdb
(``LmdbStore``) and sqlite3 (``SqliteStore``: a ``WITHOUT ROWID`` table in
WAL mode), each in a directory of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from typing import Any, Callable, ContextManager, Iterator, Optional

import kvmap

from ..configurations import CONFIGURATIONS
from .data import Pairs


def backend_name(configuration: str) -> str:
    """kvmap-bench's name of a configuration of kvmap.configurations: the
    same words joined by colons (mmap-reserve-wm is mmap:reserve:wm), as its
    command line and tables have always spelled them."""
    return configuration.replace("-", ":")


BACKENDS: dict[str, dict[str, Any]] = {backend_name(name): dict(kw) for name, kw in CONFIGURATIONS.items()}
DEFAULT_BACKENDS = ["mmap:reserve", "mmap:mremap", "mmap:remap", "pread"]
PEERS = ["lmdb", "sqlite3"]
LMDB_MAP_SIZE = 8 << 30

# A held reader's get: the value of a key in the snapshot it holds, or None.
HeldGet = Callable[[bytes], Optional[bytes]]


class Store:
    """One store in its own directory; ``open(sync)`` creates it if missing."""

    kind = "?"
    # What each store provides.
    open: Callable[[bool], None]
    close: Callable[[], None]
    files: Callable[[], list[str]]
    load: Callable[[Pairs], None]
    txn: Callable[[Pairs], None]
    delete_all: Callable[[list[bytes]], None]
    get_all: Callable[[list[bytes]], int]
    get_timed: Callable[[list[bytes], list[int]], int]
    read_batch: Callable[[list[bytes]], None]
    scan: Callable[[], int]
    ranges: Callable[[list[tuple[bytes, bytes]], list[int]], int]
    count: Callable[[], int]
    # a snapshot (read transaction) held open while the with block runs
    held_reader: Callable[[], ContextManager[HeldGet]]

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
    put_batch: Callable[[Any, Pairs], None]

    def load(self, pairs: Pairs) -> None:
        """A bulk load: one transaction, the store's batch call."""
        with self.writer() as t:
            self.put_batch(t, pairs)

    def txn(self, pairs: Pairs) -> None:
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

    @contextlib.contextmanager
    def held_reader(self) -> Iterator[HeldGet]:
        with self.reader() as t:
            yield t.get


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
    def put_batch(t: kvmap.Transaction, pairs: Pairs) -> None:
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
    def put_batch(t: Any, pairs: Pairs) -> None:
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

    def load(self, pairs: Pairs) -> None:
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

    def txn(self, pairs: Pairs) -> None:
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

    @contextlib.contextmanager
    def held_reader(self) -> Iterator[HeldGet]:
        """A read transaction on a connection of its own; in WAL mode its
        snapshot is taken at its first read, so one row is read at once."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM kv LIMIT 1").fetchone()

            def get(key: bytes) -> Optional[bytes]:
                row = conn.execute(self.GET, (key,)).fetchone()
                return None if row is None else bytes(row[0])
            yield get
            conn.execute("COMMIT")
        finally:
            conn.close()


def make_store(name: str, directory: str) -> Store:
    if name in BACKENDS:
        return KvmapStore(name, directory)
    if name == "lmdb":
        return LmdbStore(name, directory)
    if name == "sqlite3":
        return SqliteStore(name, directory)
    raise ValueError(name)
