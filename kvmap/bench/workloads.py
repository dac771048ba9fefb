"""kvmap-bench's workloads that run in this process (procs.py has the one
of many processes, space.py the one that measures disk and memory given
back): bulk, get, get_cold, scan, range, mixed, txn_nosync, txn_sync,
churn and growth, and what they share (the loaded store, the small
transactions that overwrite keys and their undoing).

Each workload function runs one repetition and returns
``{"ops": float, "seconds": float, "lat_ns": [..] or None, "extra": {...}}``
(runner.py makes a result of the repetitions)."""

from __future__ import annotations

import gc
import itertools
import os
import random
import statistics
import threading
import time
from typing import Any

from .data import Data, Pairs
from .figures import MIB, disk_read_bytes, resident_pages, rusage, space_figures
from .stores import KvmapStore, Store

# A workload's result, the runner's per-store context and the parameters:
# JSON-shaped dicts.
Result = dict[str, Any]
Ctx = dict[str, Any]
Params = dict[str, Any]

# Every workload (procs.py and space.py hold one each), in run order, and its throughput's unit.
WORKLOADS = ["bulk", "get", "get_cold", "scan", "range", "mixed", "procs", "txn_nosync",
             "txn_sync", "churn", "growth", "space"]
# space is asked for by name: it loads --space-mib per store, far more than the others
DEFAULT_WORKLOADS = [w for w in WORKLOADS if w != "space"]
UNITS = {"bulk": "key/s", "get": "get/s", "get_cold": "get/s", "scan": "item/s",
         "range": "query/s", "mixed": "get/s", "procs": "get/s", "txn_nosync": "txn/s",
         "txn_sync": "txn/s", "churn": "op/s", "growth": "MiB/s", "space": "del/s"}
KVMAP_ONLY = {"growth"}

PUTS_PER_TXN = 10
RANGE_SPAN = 100
MIXED_READERS = 2
MIXED_BATCH = 100
MIXED_MIN_S = 0.2


class BenchError(Exception):
    """A store returned a wrong result during a workload."""


def ensure_loaded(store: Store, data: Data, ctx: Ctx) -> None:
    """Open the shared loaded store (sync off), loading it untimed if needed."""
    store.ensure(False)
    if not ctx.get("loaded"):
        store.load(data.pairs)
        ctx["loaded"] = True


def w_bulk(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
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


def w_get(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
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
    dropped = resident_pages(store.files())
    store.open(sync)
    return dropped


def w_get_cold(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
    rng = random.Random(data.seed + 2 + ctx["rep"])
    sample = rng.sample(data.keys, min(p["cold_sample"], data.n))
    dropped = _drop_cache(store)
    start = resident_pages(store.files())
    lat: list[int] = []
    rb0 = disk_read_bytes()
    t0 = time.perf_counter()
    found = store.get_timed(sample, lat)
    dt = time.perf_counter() - t0
    rb1 = disk_read_bytes()
    if found != len(sample):
        raise BenchError(f"found {found} of {len(sample)} keys")
    return {"ops": len(sample), "seconds": dt, "lat_ns": lat,
            "extra": {"resident": {"dropped": dropped, "start": start, "end": resident_pages(store.files())},
                      "read_mib": None if rb0 is None else round((rb1 - rb0) / MIB, 2),  # type: ignore[operator]
                      "readahead": store.readahead()}}


def w_scan(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
    t0 = time.perf_counter()
    n = store.scan()
    dt = time.perf_counter() - t0
    if n != data.n:
        raise BenchError(f"scan yielded {n} of {data.n} pairs")
    return {"ops": n, "seconds": dt}


def w_range(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
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


def _txn_workload(store: Store, data: Data, ctx: Ctx, p: Params, sync: bool, count: int) -> Result:
    ensure_loaded(store, data, ctx)
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
        extra["kib_written_per_commit"] = (sc1["pwrite_bytes"] - sc0["pwrite_bytes"]) / count / 1024
    # drop the added keys so later workloads see exactly the data set
    store.ensure(False)
    store.delete_all([k for c in chunks for k, _ in c])
    return {"ops": count, "seconds": dt, "lat_ns": lat, "extra": extra}


def w_txn_nosync(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    return _txn_workload(store, data, ctx, p, False, p["txn_nosync"])


def w_txn_sync(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    return _txn_workload(store, data, ctx, p, True, p["txn_sync"])


def overwrite_chunks(data: Data, rng: random.Random, count: int) -> list[Pairs]:
    """`count` small write transactions: PUTS_PER_TXN existing keys each, new values."""
    return [[(k, rng.randbytes(data.value_size)) for k in rng.sample(data.keys, min(PUTS_PER_TXN, data.n))]
            for _ in range(count)]


def restore_overwritten(store: Store, data: Data, chunks: list[Pairs]) -> None:
    """Put back the values `chunks` overwrote, so later workloads see exactly the data set."""
    originals = dict(data.pairs)
    touched = {k for c in chunks for k, _ in c}
    store.load([(k, originals[k]) for k in touched])


def read_batches(keys: list[bytes], seed: int) -> list[list[bytes]]:
    """A reader's batches of MIXED_BATCH random keys (len(keys) draws in
    all), made before the timing starts and cycled: drawing them in the
    timed loop would cost about as much Python time as the gets themselves."""
    keys = random.Random(seed).choices(keys, k=max(len(keys), MIXED_BATCH))
    return [keys[i:i + MIXED_BATCH] for i in range(0, len(keys) - MIXED_BATCH + 1, MIXED_BATCH)]


def w_mixed(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
    rng = random.Random(data.seed + 5 + ctx["rep"])
    chunks = overwrite_chunks(data, rng, p["mixed_commits"])
    batches = [read_batches(data.keys, data.seed * 31 + i) for i in range(MIXED_READERS)]
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
    restore_overwritten(store, data, chunks)
    return {"ops": gets, "seconds": dt,
            "extra": {"readers": MIXED_READERS, "writer_commits": commits,
                      "writer_commits_per_s": commits / dt if dt > 0 else 0.0}}


def w_churn(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
    store.flush()
    before = space_figures(store.files())
    rounds = p["churn_rounds"]
    t0 = time.perf_counter()
    for _ in range(rounds):
        store.delete_all(data.keys)
        store.load(data.pairs)
    dt = time.perf_counter() - t0
    store.flush()
    after = space_figures(store.files())
    n = store.count()
    if n != data.n:
        raise BenchError(f"{n} entries after churn, expected {data.n}")
    return {"ops": 2 * data.n * rounds, "seconds": dt,
            "extra": {"rounds": rounds, "before": before, "after": after}}


def w_growth(store: KvmapStore, data: Data, ctx: Ctx, p: Params) -> Result:
    store.destroy()
    ctx["loaded"] = False   # a workload after this one loads the data set again
    store.open(False)
    db = store.db
    target = p["growth_mib"] * MIB
    block = random.Random(data.seed + 6).randbytes(MIB)
    clock = time.perf_counter_ns
    steps = []       # [file size MiB after, commit ms]
    plain = []       # commit ns of non-growth commits

    def put(j: int) -> tuple[int, int]:
        """Commit value j: the file's size after, and the commit's ns."""
        k = b"g%08d" % j
        a = clock()
        db[k] = k + block[len(k):]
        el = clock() - a
        return db.stats()["file_size"], el

    size = db.stats()["file_size"]
    i = 0
    t0 = time.perf_counter()
    while size < target:
        new, el = put(i)
        i += 1
        if new != size:
            steps.append([round(new / MIB, 3), el / 1e6])
            size = new
        else:
            plain.append(el)
    dt = time.perf_counter() - t0
    written = i

    def read_all() -> int:
        gc.collect()
        f0, _ = rusage()
        with db.snapshot() as s:
            for j in range(written):
                v = s.get(b"g%08d" % j)
                if v is None or len(v) != MIB:
                    raise BenchError(f"value {j} missing or wrong size after growth")
        f1, _ = rusage()
        return f1 - f0

    first = read_all()
    # one more growth step, then re-read the already-touched values
    extra_step = None
    j = written
    while True:
        new, el = put(j)
        j += 1
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
