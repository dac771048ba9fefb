"""What verifying page checksums on reads costs, per backend.

    python bench/verify_cost.py [--n 200000] [--rounds 5] [--dir DIR]

Loads N pairs (16-byte keys, 100-byte values, random order), then for each
backend times random ``snap.get`` of every key and a full ``items()`` scan,
with ``verify_checksums`` off and on, interleaved round by round; prints the
median time of each and the ratio on/off (the cost of verifying).  The file
is warm in the page cache: this is the CPU cost of the checks, not I/O.
"""

import argparse
import os
import random
import statistics
import tempfile
import time

import kvmap


def load(path, n, seed):
    rng = random.Random(seed)
    keys = [rng.randbytes(16) for _ in range(n)]
    with kvmap.open(path, sync=False) as db:
        with db.transaction() as txn:
            for k in keys:
                txn[k] = rng.randbytes(100)
    rng.shuffle(keys)
    return keys


def time_get(db, keys):
    with db.snapshot() as snap:
        get = snap.get
        t = time.perf_counter()
        for k in keys:
            get(k)
        return time.perf_counter() - t


def time_scan(db):
    t = time.perf_counter()
    for _ in db.items():
        pass
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    d = tempfile.mkdtemp(dir=args.dir)
    path = os.path.join(d, "verify.kv")
    keys = load(path, args.n, args.seed)
    times = {}
    for _ in range(args.rounds):
        for backend in ("mmap", "pread"):
            for verify in (False, True):
                with kvmap.open(path, backend=backend, verify_checksums=verify,
                                cache_size=256 << 20) as db:
                    time_scan(db)           # warm (and fill the pread cache)
                    times.setdefault((backend, verify, "get"), []).append(time_get(db, keys))
                    times.setdefault((backend, verify, "scan"), []).append(time_scan(db))
    print(f"{args.n} pairs, median of {args.rounds} rounds; cost = verify on / verify off")
    print(f"{'backend':8} {'workload':8} {'off':>10} {'on':>10} {'cost':>7}")
    for backend in ("mmap", "pread"):
        for work in ("get", "scan"):
            off = statistics.median(times[(backend, False, work)])
            on = statistics.median(times[(backend, True, work)])
            print(f"{backend:8} {work:8} {off * 1e3:8.1f}ms {on * 1e3:8.1f}ms {on / off:6.2f}x")
    os.unlink(path)
    os.rmdir(d)


if __name__ == "__main__":
    main()
