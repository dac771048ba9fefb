"""How full kvmap's leaves are after a load, beside py-lmdb and SQLite.

    python bench/fill.py [--n 200000,2000000] [--orders random,key] [--peers lmdb,sqlite]
                         [--dir DIR] [--seed 1] [--json OUT]

Each store gets the same N pairs (16-byte random keys, 100-byte values) in one
transaction, sync off, in random order or in key order, through its plain
put call (kvmap ``txn.put``, py-lmdb ``txn.put``, SQLite ``INSERT`` in
``executemany``; not ``db.update``, which applies each batch of 4,096 pairs
in key order, so that its random-order load is not quite random).  Then, per store:

* kvmap: ``kvmap.check`` walks the file.  ``fill`` is its ``fill_factor``:
  the bytes of the leaves' cells and cell offsets over the bytes the leaves
  have for them (4 KiB less the 32-byte header; a leaf holds at most 32 of
  these 124-byte entries: fill 0.976).
* py-lmdb: ``env.stat()``'s leaf pages and entries.
* SQLite (``WITHOUT ROWID``, 4 KiB pages): the ``dbstat`` table's leaf pages
  and cells; ``fill`` is 1 - unused bytes / (page less its 8-byte header).

``MB`` is the file's size in 10^6 bytes.  kvmap grows its file in steps of
half its size (native/map.c), so for kvmap ``used MB`` also gives the bytes of
the pages in use, up to its high-water mark (the other stores' files hold just
their pages).  The loads are not timed (see bench/README.md for the
speed benchmarks).
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile

import kvmap

KEY, VALUE = 16, 100


def dataset(n, seed):
    """n random keys (distinct with overwhelming odds: 128 random bits, and
    every store reports its entry count) and a value for each, cut from one
    random buffer so that 2,000,000 pairs cost no more memory than needed."""
    rng = random.Random(seed)
    kb = rng.randbytes(n * KEY)
    keys = [kb[i:i + KEY] for i in range(0, n * KEY, KEY)]
    vb = rng.randbytes(1 << 20)
    span = len(vb) - VALUE
    values = [vb[(i * 7919) % span:(i * 7919) % span + VALUE] for i in range(n)]
    return keys, values


def load_kvmap(path, pairs):
    with kvmap.open(path, sync=False) as db:
        with db.transaction() as txn:
            put = txn.put
            for k, v in pairs:
                put(k, v)
        entries = len(db)
    s = kvmap.check(path).summary
    leaves = s["pages_by_type"]["leaf"]
    return dict(entries=entries, leaf_pages=leaves, fill=s["fill_factor"], used=s["hwm"] * s["page_size"],
                per_leaf=round(s["entries"] / leaves, 1), depth=s["depth"],
                bytes=os.path.getsize(path))


def load_lmdb(path, pairs):
    import lmdb
    env = lmdb.open(path, map_size=1 << 34, sync=False, metasync=False, writemap=False)
    try:
        with env.begin(write=True) as txn:
            put = txn.put
            for k, v in pairs:
                put(k, v)
        st = env.stat()
    finally:
        env.close()
    return dict(entries=st["entries"], leaf_pages=st["leaf_pages"],
                per_leaf=round(st["entries"] / st["leaf_pages"], 1), depth=st["depth"],
                bytes=os.path.getsize(os.path.join(path, "data.mdb")))


def load_sqlite(path, pairs):
    c = sqlite3.connect(path, isolation_level=None)
    try:
        c.execute("PRAGMA page_size=4096")
        c.execute("PRAGMA synchronous=OFF")
        c.execute("PRAGMA cache_size=-65536")
        c.execute("CREATE TABLE kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        c.execute("BEGIN")
        c.executemany("INSERT INTO kv VALUES (?, ?)", pairs)
        c.execute("COMMIT")
        entries = c.execute("SELECT count(*) FROM kv").fetchone()[0]
        leaves, cells, unused, size = c.execute(
            "SELECT count(*), sum(ncell), sum(unused), max(pgsize) FROM dbstat "
            "WHERE name = 'kv' AND pagetype = 'leaf'").fetchone()
    finally:
        c.close()
    return dict(entries=entries, leaf_pages=leaves, fill=round(1 - unused / (leaves * (size - 8)), 4),
                per_leaf=round(cells / leaves, 1), bytes=os.path.getsize(path))


LOADERS = {"kvmap": load_kvmap, "lmdb": load_lmdb, "sqlite": load_sqlite}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="200000,2000000", help="comma list of pair counts")
    ap.add_argument("--orders", default="random,key", help="comma list of random, key")
    ap.add_argument("--peers", default="lmdb,sqlite", help="comma list of lmdb, sqlite (or none)")
    ap.add_argument("--dir", default=None, help="where the stores are made (default: the temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows as JSON")
    a = ap.parse_args(argv)
    stores = ["kvmap"] + [p for p in a.peers.split(",") if p and p != "none"]
    rows = []
    print(f"{'n':>9} {'order':>6} {'store':>6} {'entries':>9} {'leaves':>7} {'per leaf':>8} "
          f"{'fill':>6} {'MB':>7} {'used MB':>7}")
    for n in (int(x) for x in a.n.split(",")):
        keys, values = dataset(n, a.seed)
        for order in a.orders.split(","):
            pairs = list(zip(sorted(keys) if order == "key" else keys, values))
            for store in stores:
                d = tempfile.mkdtemp(prefix="kvfill-", dir=a.dir)
                try:
                    r = LOADERS[store](os.path.join(d, "db"), pairs)
                finally:
                    shutil.rmtree(d)
                if r["entries"] != n:
                    sys.exit(f"{store}: {r['entries']} entries after loading {n}")
                r.update(n=n, order=order, store=store)
                rows.append(r)
                fill = f"{r['fill']:.3f}" if "fill" in r else "-"
                used = f"{r['used'] / 1e6:.1f}" if "used" in r else "-"
                print(f"{n:>9} {order:>6} {store:>6} {r['entries']:>9} {r['leaf_pages']:>7} "
                      f"{r['per_leaf']:>8} {fill:>6} {r['bytes'] / 1e6:>7.1f} {used:>7}", flush=True)
            del pairs
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
