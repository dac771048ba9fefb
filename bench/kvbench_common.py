"""Shared constants, data set and store helpers for the kvmap benchmarks.

Imported by bench/conftest.py (fixtures) and bench/test_bench.py (workloads).
Not a test module: pytest does not collect it.

Environment knobs (all optional):
  KVMAP_BENCH_N       number of pairs (default 100000)
  KVMAP_BENCH_SEED    data seed (default 20240601)
  KVMAP_BENCH_ROUNDS  measured rounds per benchmark (default 5)
  KVMAP_BENCH_DIR     directory for the stores (default: pytest's tmp dir)
"""


import os
import sqlite3

import pytest

# kvmap is needed by every row: the data set and the configurations are its
import kvmap
from kvmap.bench.data import Data
from kvmap.configurations import CONFIGURATIONS, open_kwargs

try:
    import lmdb
except ImportError:
    lmdb = None

# --------------------------------------------------------------------------- parameters

N = int(os.environ.get("KVMAP_BENCH_N", "100000"))
SEED = int(os.environ.get("KVMAP_BENCH_SEED", "20240601"))
ROUNDS = int(os.environ.get("KVMAP_BENCH_ROUNDS", "5"))
KEY_SIZE = 16
VALUE_SIZE = 100

PUTS_PER_TXN = 10
TXNS = min(2000, N // PUTS_PER_TXN)  # workload (d): 2,000 transactions x 10 puts

LMDB_MAP_SIZE = 2**32
SQLITE_CACHE_KIB = 64 * 1024  # same 64 MiB as kvmap's default pread cache_size

# The seven kvmap configurations, by the names of kvmap.configurations.
KVMAP_CONFIG_IDS = list(CONFIGURATIONS)


class BenchData(Data):
    """kvmap-bench's data set (kvmap.bench.data.Data): N distinct random
    16-byte keys with 100-byte values, loaded in the order drawn (``pairs``),
    looked up in a fixed shuffled order (``get_order``); and what the
    workloads here check against and commit."""

    def __init__(self, n=N, seed=SEED):
        super().__init__(n, KEY_SIZE, VALUE_SIZE, seed)
        self.mapping = dict(self.pairs)
        self.sorted_pairs = sorted(self.pairs)
        # workload (d): the first TXNS*10 pairs, in chunks of 10
        small = self.pairs[: TXNS * PUTS_PER_TXN]
        self.txn_chunks = [small[i : i + PUTS_PER_TXN] for i in range(0, len(small), PUTS_PER_TXN)]
        self.txn_dicts = [dict(c) for c in self.txn_chunks]


# --------------------------------------------------------------------------- store helpers


def require(store):
    if store == "lmdb" and lmdb is None:
        pytest.skip("py-lmdb is not installed (pip install lmdb)")


def kvmap_kwargs(config, sync):
    kw = open_kwargs(config)
    kw["sync"] = sync
    return kw


def open_store(store, config, directory, sync):
    """Open an empty (or existing) store in ``directory``; returns the handle."""
    os.makedirs(directory, exist_ok=True)
    if store == "kvmap":
        kw = kvmap_kwargs(config, sync)
        db = kvmap.open(os.path.join(directory, "db.kvmap"), **kw)
        check_kvmap_config(db, config, kw)
        return db
    if store == "lmdb":
        kw = dict(map_size=LMDB_MAP_SIZE, writemap=False)
        if not sync:
            kw.update(sync=False, metasync=False)
        return lmdb.open(directory, **kw)
    if store == "sqlite":
        conn = sqlite3.connect(os.path.join(directory, "db.sqlite"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        if not sync:
            conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        conn.execute("CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        return conn
    raise ValueError(store)


def check_kvmap_config(db, config, kw):
    """The row label must match what the engine actually runs (stats() per the API spec)."""
    st = db.stats()
    want = {"backend": kw["backend"], "sync": kw["sync"]}
    if kw["backend"] == "mmap":
        want.update(growth=kw["growth"], writemap=kw["writemap"])
    got = {k: st.get(k, "<missing>") for k in want}
    if got != want:
        db.close()
        check(False, "kvmap", config, f"stats() reports {got}, opened with {want}")


def kvmap_syscalls(store, handle):
    if store != "kvmap":
        return None
    sc = handle.stats().get("syscalls")
    return dict(sc) if isinstance(sc, dict) else None


def close_store(store, handle):
    if store == "kvmap":
        handle.close()
    elif store == "lmdb":
        handle.close()
    elif store == "sqlite":
        handle.close()


def count_entries(store, handle):
    if store == "kvmap":
        return len(handle)
    if store == "lmdb":
        return handle.stat()["entries"]
    if store == "sqlite":
        return handle.execute("SELECT count(*) FROM kv").fetchone()[0]
    raise ValueError(store)


def scan_items(store, handle):
    if store == "kvmap":
        return list(handle.items())
    if store == "lmdb":
        with handle.begin() as txn:
            return list(txn.cursor())
    if store == "sqlite":
        return handle.execute("SELECT k, v FROM kv ORDER BY k").fetchall()
    raise ValueError(store)


def bulk_load(store, handle, pairs):
    """Load ``pairs`` in one transaction with the store's bulk API (used for preloading)."""
    if store == "kvmap":
        handle.update(pairs)
    elif store == "lmdb":
        with handle.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)
    elif store == "sqlite":
        handle.execute("BEGIN")
        handle.executemany("INSERT INTO kv VALUES (?, ?)", pairs)
        handle.execute("COMMIT")
    else:
        raise ValueError(store)


def check(cond, store, config, what):
    """Correctness guard (never a timing assertion)."""
    if not cond:
        label = store if config is None else f"{store}[{config}]"
        pytest.fail(f"{label}: wrong result: {what}", pytrace=False)


def verify_contents(store, config, handle, data):
    got_n = count_entries(store, handle)
    check(got_n == data.n, store, config, f"entry count {got_n} != {data.n}")
    items = [(bytes(k), bytes(v)) for k, v in scan_items(store, handle)]
    if items != data.sorted_pairs:
        bad = next(
            (i for i, (a, b) in enumerate(zip(items, data.sorted_pairs)) if a != b),
            min(len(items), len(data.sorted_pairs)),
        )
        check(False, store, config, f"ordered scan differs from the loaded data at position {bad} "
                                    f"(scan yielded {len(items)} items)")


