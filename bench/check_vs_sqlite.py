"""kvmap-check against SQLite's own integrity check, on the same data.

Builds a kvmap database of about ``--gib`` GiB and an SQLite file holding the
same key/value pairs (a WITHOUT ROWID table, the closest SQLite layout to an
ordered key-value store), then times, in one run and alternating, a full and a
quick ``kvmap.check`` and ``PRAGMA integrity_check`` / ``quick_check``.  The
page cache is warm for both (each file is read once before timing), so the
figures compare the checkers' work, not the disk.

    python bench/check_vs_sqlite.py [--gib 1.0] [--dir DIR] [--rounds 3]
"""

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time

import kvmap
from kvmap.checker import check

VALUE = 200


def pairs(n, seed=1):
    rng = random.Random(seed)
    for i in range(n):
        yield b"key%012d" % rng.randrange(1 << 40), rng.randbytes(VALUE)


def build(dirname, gib):
    # Random-order inserts leave pages about half full, and the file grows in
    # steps of up to half its size: about 860 bytes of file per entry.
    n = int(gib * (1 << 30) / 860)
    kv = os.path.join(dirname, "check.kv")
    sq = os.path.join(dirname, "check.sqlite")
    with kvmap.open(kv, sync=False) as db:
        it = pairs(n)
        while True:
            batch = [p for _, p in zip(range(200_000), it)]
            if not batch:
                break
            with db.transaction() as txn:
                for k, v in batch:
                    txn.put(k, v)
    con = sqlite3.connect(sq)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", pairs(n))
    con.commit()
    con.close()
    return kv, sq, n


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sqlite_check(path, pragma):
    con = sqlite3.connect(path)
    res = con.execute(f"PRAGMA {pragma}").fetchall()
    con.close()
    assert res == [("ok",)], res


def kvmap_check(path, quick):
    rep = check(path, quick=quick)
    assert rep.ok, rep.problems[:3]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        kv, sq, n = build(d, a.gib)
        summary = check(kv).summary
        print(f"{n:,} entries; kvmap file {os.path.getsize(kv) / (1 << 30):.2f} GiB "
              f"({summary['hwm'] * summary['page_size'] / (1 << 30):.2f} GiB below the high-water "
              f"mark, fill {summary['fill_factor']:.2f}), sqlite file {os.path.getsize(sq) / (1 << 30):.2f} GiB")
        warm(kv)
        warm(sq)
        runs = {name: [] for name in ("kvmap full", "kvmap quick", "sqlite integrity_check",
                                      "sqlite quick_check")}
        for _ in range(a.rounds):
            runs["kvmap full"].append(timed(lambda: kvmap_check(kv, False)))
            runs["sqlite integrity_check"].append(timed(lambda: sqlite_check(sq, "integrity_check")))
            runs["kvmap quick"].append(timed(lambda: kvmap_check(kv, True)))
            runs["sqlite quick_check"].append(timed(lambda: sqlite_check(sq, "quick_check")))
        med = {k: statistics.median(v) for k, v in runs.items()}
        for k, v in runs.items():
            print(f"{k:24} median {med[k]:6.2f} s   runs " + " ".join(f"{x:.2f}" for x in v))
        print(f"full / integrity_check: {med['kvmap full'] / med['sqlite integrity_check']:.2f}x; "
              f"quick / quick_check: {med['kvmap quick'] / med['sqlite quick_check']:.2f}x")


if __name__ == "__main__":
    main()
