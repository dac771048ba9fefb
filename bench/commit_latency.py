"""Per-commit latency of small sync=False transactions, kvmap beside py-lmdb.

    python bench/commit_latency.py [--puts 10] [--commits 6000] [--keys 200000]

Loads --keys random 16-byte keys with 100-byte values, then times --commits
transactions of --puts new random keys each, and prints mean, p50, p99,
p99.9 and max wall time per commit for each store.  The tail shows the
flushes a sync=False writer makes so that freed pages can be reused (a
background flush, native/flush.c, takes them off the commit path); py-lmdb
with sync=False never flushes.  Each run prints one line per store: run it
several times, alternating builds, and compare ratios, not lone figures.
"""

import argparse
import os
import random
import shutil
import tempfile
import time


def run(name, begin, put, keys, commits, puts, seed):
    rng = random.Random(seed)
    chunks = [[(rng.randbytes(16), rng.randbytes(100)) for _ in range(puts)] for _ in range(commits)]
    lat = []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for c in chunks:
        a = clock()
        with begin() as t:
            for k, v in c:
                put(t, k, v)
        lat.append(clock() - a)
    wall = time.perf_counter() - t0
    lat.sort()

    def q(p):
        return lat[int(p * (len(lat) - 1))] / 1000
    print(f"{name:6} mean {wall / commits * 1e6:6.0f}  p50 {q(.5):6.0f}  p99 {q(.99):7.0f}  "
          f"p99.9 {q(.999):7.0f}  max {q(1):8.0f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=10)
    ap.add_argument("--commits", type=int, default=6000)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="kvmap-latency-")
    try:
        import kvmap
        rng = random.Random(a.seed)
        db = kvmap.open(os.path.join(d, "db.kv"), sync=False)
        with db.transaction() as t:
            for _ in range(a.keys):
                t.put(rng.randbytes(16), rng.randbytes(100))
        run("kvmap", db.transaction, lambda t, k, v: t.put(k, v), a.keys, a.commits, a.puts, a.seed + 1)
        db.close()
        try:
            import lmdb
        except ImportError:
            print("py-lmdb not installed: pip install lmdb")
            return
        rng = random.Random(a.seed)
        env = lmdb.open(os.path.join(d, "lmdb"), map_size=1 << 34, sync=False)
        with env.begin(write=True) as t:
            for _ in range(a.keys):
                t.put(rng.randbytes(16), rng.randbytes(100))
        run("lmdb", lambda: env.begin(write=True), lambda t, k, v: t.put(k, v), a.keys, a.commits, a.puts,
            a.seed + 1)
        env.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
