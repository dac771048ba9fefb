"""``python -m kvmap``: a short demonstration on a temporary database.

It writes 100,000 entries in one transaction, reads them back at random,
scans a range, shows a snapshot staying put while a write commits, and prints
the database's figures.
"""

import os
import random
import tempfile
import time

import kvmap


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.kv")
        n = 100_000
        rnd = random.Random(42)
        keys = [b"key:%08d" % i for i in range(n)]
        with kvmap.open(path) as db:
            t = time.perf_counter()
            with db.transaction() as txn:
                for k in keys:
                    txn[k] = k[::-1] * 4
            print(f"loaded {len(db):,} entries in one transaction: {time.perf_counter() - t:.2f} s")
            sample = rnd.sample(keys, 10_000)
            t = time.perf_counter()
            with db.snapshot() as snap:
                for k in sample:
                    assert snap[k] == k[::-1] * 4
            print(f"10,000 random gets: {time.perf_counter() - t:.3f} s")
            print("range key:00000100..key:00000104:", list(db.irange(b"key:00000100", b"key:00000104")))
            with db.snapshot() as snap:
                db[b"key:00000100"] = b"changed"
                print("snapshot still sees:", snap[b"key:00000100"], "| database sees:", db[b"key:00000100"])
            st = db.stats()
            print(f"depth {st['depth']}, {st['pages']:,} pages of {st['page_size']} bytes, "
                  f"file {st['file_size'] / 2**20:.1f} MiB, backend {st['backend']}/{st['growth']}")


if __name__ == "__main__":
    main()
