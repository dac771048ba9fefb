"""Giving disk back: delete 90% of a database in transactions of 10,000,
then make ten small commits, and report what each store holds on to.

For kvmap (one configuration per run, ``--config``) and, beside it, py-lmdb
and sqlite3 (``--peers``), each in a process of its own: load ``--size-mib``
of data (16-byte random keys, values of ``--value-size`` bytes, 16 bytes of
cell overhead each; random keys fill pages about 60%, so the default 600 MiB
make a database of about 1 GiB) in
transactions of 10,000, read it all once (so the mapping is resident, as
in a process that used its data), then delete a seeded random 90% of the
keys in transactions of 10,000 and commit ten small transactions.  Before
the deletes and after the small commits it reports the file's size, its
allocated blocks (``st_blocks * 512``), the process's resident set
(``VmRSS``) and the resident part of the store's mapping of its file (from
``/proc/self/smaps``; sqlite3 reads with ``pread``: none).  Every store
runs with durable commits (kvmap ``sync=True``, py-lmdb ``sync=True``,
sqlite3 ``synchronous=FULL`` in its default rollback-journal mode).

    python bench/space_giveback.py --config mmap-reserve            # a 1 GiB database
    python bench/space_giveback.py --config pread --size-mib 64 --peers lmdb

docs/ARCHITECTURE.md §4 has the figures.
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
TXN = 10_000
SHARE = 0.9
CONFIGS = {
    "mmap-reserve": dict(backend="mmap", growth="reserve"),
    "mmap-reserve-wm": dict(backend="mmap", growth="reserve", writemap=True),
    "mmap-mremap": dict(backend="mmap", growth="mremap"),
    "mmap-mremap-wm": dict(backend="mmap", growth="mremap", writemap=True),
    "mmap-remap": dict(backend="mmap", growth="remap"),
    "mmap-remap-wm": dict(backend="mmap", growth="remap", writemap=True),
    "pread": dict(backend="pread"),
}


def keys_of(seed, n):
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def value_of(k, size):
    return (k * (size // 16 + 1))[:size]     # cheap, and differs per key


def vm_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mapped_rss(paths):
    paths = {os.path.realpath(p) for p in paths}
    total, ours = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and ":" not in head[0]:
                ours = len(head) == 6 and head[5].rstrip("\n") in paths
            elif ours and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def figures(files):
    files = [f for f in files if os.path.exists(f)]
    return dict(file=sum(os.path.getsize(f) for f in files),
                allocated=sum(os.stat(f).st_blocks * 512 for f in files),
                rss=vm_rss(), mapped=mapped_rss(files))


# --------------------------------------------------------------- stores

class Kvmap:
    def __init__(self, d, config):
        import kvmap
        self.path = os.path.join(d, "db")
        self.db = kvmap.open(self.path, sync=True, **CONFIGS[config])

    def files(self):
        return [self.path, self.path + "-lock"]

    def put(self, pairs):
        with self.db.transaction() as t:
            t.put_many(pairs)

    def delete(self, keys):
        with self.db.transaction() as t:
            for k in keys:
                del t[k]

    def read_all(self):
        return sum(len(v) for v in self.db.values())

    def close(self):
        self.db.close()


class Lmdb:
    def __init__(self, d, config):
        import lmdb
        self.env = lmdb.open(d, map_size=64 << 30, sync=True, metasync=True)
        self.dir = d

    def files(self):
        return [os.path.join(self.dir, "data.mdb"), os.path.join(self.dir, "lock.mdb")]

    def put(self, pairs):
        with self.env.begin(write=True) as t:
            t.cursor().putmulti(pairs)

    def delete(self, keys):
        with self.env.begin(write=True) as t:
            for k in keys:
                t.delete(k)

    def read_all(self):
        with self.env.begin() as t:
            return sum(len(v) for _, v in t.cursor())

    def close(self):
        self.env.close()


class Sqlite:
    def __init__(self, d, config):
        self.path = os.path.join(d, "db.sqlite")
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def files(self):
        return [self.path, self.path + "-journal"]

    def _txn(self, sql, rows):
        self.conn.execute("BEGIN")
        self.conn.executemany(sql, rows)
        self.conn.execute("COMMIT")

    def put(self, pairs):
        self._txn("INSERT OR REPLACE INTO kv VALUES (?, ?)", pairs)

    def delete(self, keys):
        self._txn("DELETE FROM kv WHERE k = ?", [(k,) for k in keys])

    def read_all(self):
        return sum(len(v) for (v,) in self.conn.execute("SELECT v FROM kv"))

    def close(self):
        self.conn.close()


STORES = {"kvmap": Kvmap, "lmdb": Lmdb, "sqlite3": Sqlite}


def run_store(store, config, d, size_mib, value_size, seed):
    n = size_mib * MIB // (value_size + 16 + 16)
    keys = keys_of(seed, n)
    s = STORES[store](d, config)
    t0 = time.perf_counter()
    for i in range(0, n, TXN):
        s.put([(k, value_of(k, value_size)) for k in sorted(keys[i:i + TXN])])
    load_s = time.perf_counter() - t0
    assert s.read_all() == n * value_size
    before = figures(s.files())
    gone = random.Random(seed + 1).sample(keys, int(SHARE * n))
    t0 = time.perf_counter()
    for i in range(0, len(gone), TXN):
        s.delete(gone[i:i + TXN])
    delete_s = time.perf_counter() - t0
    for i in range(10):
        s.put([(b"small-%d" % i, b"x" * 20)])
    after = figures(s.files())
    left = set(keys).difference(gone)
    assert s.read_all() == len(left) * value_size + 10 * 20
    s.close()
    return dict(store=store, config=config if store == "kvmap" else None, entries=n,
                load_s=load_s, delete_s=delete_s, before=before, after=after)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="mmap-reserve", choices=sorted(CONFIGS))
    ap.add_argument("--size-mib", type=int, default=600,
                    help="data to load, keys, values and cell overhead (default 600: a database of about 1 GiB)")
    ap.add_argument("--value-size", type=int, default=400, help="value bytes (default 400)")
    ap.add_argument("--peers", default="lmdb,sqlite3", help="comma list of lmdb, sqlite3, or ''")
    ap.add_argument("--dir", default=None, help="where the stores go (default: the system temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results as JSON")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one store here
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_store(a.one, a.config, a.dir, a.size_mib, a.value_size, a.seed)))
        return 0
    results = []
    for store in ["kvmap"] + [p for p in a.peers.split(",") if p]:
        d = tempfile.mkdtemp(prefix="giveback-%s-" % store, dir=a.dir)
        try:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", store, "--config", a.config,
                                  "--dir", d, "--size-mib", str(a.size_mib), "--value-size", str(a.value_size),
                                  "--seed", str(a.seed)], check=True, capture_output=True, text=True).stdout
        finally:
            shutil.rmtree(d, ignore_errors=True)
        results.append(json.loads(out.splitlines()[-1]))
        r = results[-1]
        name = "kvmap %s" % a.config if store == "kvmap" else store
        print("%-22s %8d entries, load %6.1f s, delete %6.1f s" % (name, r["entries"], r["load_s"], r["delete_s"]))
        for what in ("file", "allocated", "rss", "mapped"):
            b, f = r["before"][what], r["after"][what]
            print("    %-10s %9.1f MiB -> %9.1f MiB  (%+.0f%%)" % (what, b / MIB, f / MIB,
                                                               100.0 * (f - b) / b if b else 0.0))
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(size_mib=a.size_mib, value_size=a.value_size, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
