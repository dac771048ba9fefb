"""What a store gives back of its disk and memory: kvmap-bench's space
workload, whose first case bench/space_giveback.py also runs (a process per
store, larger).

Case 1, ``giveback``: load a database (keys and values of a given size, in
transactions of 10,000), read it all once (so its mapping is resident, as in
a process that used its data), delete a seeded random 90% of the keys in
transactions of 10,000, then make ten small commits.  Figures before the
deletes and after the small commits, and the fall of each as a share of the
share deleted (1.0: the figure fell as much as the data did).

Case 3, ``held_snapshot``: a database of 10,000 keys; a snapshot (read
transaction) is held while 5,000 transactions each overwrite 10 of the keys,
then released, then ten small commits.  Figures when the snapshot is taken
(the database it sees), while it is held and after the release and commits,
and the growth of each since the snapshot relative to the size of the
database it sees (its file's size then).  The held snapshot must still
read the values of its commit at the end.

Each case starts from an empty store, opened with durable commits (kvmap
``sync=True``, py-lmdb ``sync=True``, sqlite3 ``synchronous=FULL``); the
figures are of the store's files as its own commits leave them (no
checkpoint or flush is asked for): ``figures.space_figures``.
"""

from __future__ import annotations

import random
import time
from typing import Any, Optional

from .data import Data, distinct_keys
from .figures import MIB, space_figures
from .stores import Store
from .workloads import BenchError, Ctx, Params, Result

TXN = 10_000                # keys per transaction of the load and the deletes
SHARE = 0.9                 # of the keys deleted
SMALL_COMMITS = 10          # after the deletes, or the release, before the last figures
CELL_OVERHEAD = 16          # bytes a stored pair takes beside its key and value, for the entries of a size
HELD_KEYS = 10_000
HELD_PUTS = 10              # overwrites per transaction while the snapshot is held
HELD_TXNS = 5_000
HELD_PROBES = 100           # keys the held snapshot reads back at the end


def entries_for(size_mib: int, key_size: int, value_size: int) -> int:
    """How many pairs make size_mib MiB of keys, values and cell overhead."""
    return max(1, size_mib * MIB // (key_size + value_size + CELL_OVERHEAD))


def value_of(key: bytes, size: int) -> bytes:
    """A value of `size` bytes that differs per key and costs nothing to make."""
    return (key * (size // len(key) + 1))[:size]


def _small_commits(store: Store) -> None:
    for i in range(SMALL_COMMITS):
        store.txn([(b"small-%d" % i, b"x" * 20)])


def _change(before: dict[str, int], after: dict[str, int], base: int) -> dict[str, Optional[float]]:
    """(after - before) / base of each figure (None where base is 0)."""
    return {k: (after[k] - before[k]) / base if base else None for k in before}


def giveback(store: Store, entries: int, key_size: int, value_size: int, seed: int) -> dict[str, Any]:
    """Case 1 on `store` (emptied first), with `entries` pairs."""
    store.destroy()
    store.open(True)
    keys = distinct_keys(random.Random(seed), entries, key_size)
    t0 = time.perf_counter()
    for i in range(0, entries, TXN):
        store.load([(k, value_of(k, value_size)) for k in sorted(keys[i:i + TXN])])
    load_s = time.perf_counter() - t0
    if store.scan() != entries:
        raise BenchError(f"a scan after loading {entries} pairs yielded another count")
    before = space_figures(store.files())
    gone = random.Random(seed + 1).sample(keys, int(SHARE * entries))
    t0 = time.perf_counter()
    for i in range(0, len(gone), TXN):
        store.delete_all(gone[i:i + TXN])
    delete_s = time.perf_counter() - t0
    _small_commits(store)
    after = space_figures(store.files())
    left = store.count()
    if left != entries - len(gone) + SMALL_COMMITS:
        raise BenchError(f"{left} entries after deleting {len(gone)} of {entries} and {SMALL_COMMITS} commits")
    deleted_share = len(gone) / entries
    fall = {k: -(after[k] - before[k]) / before[k] / deleted_share if before[k] else None for k in before}
    return {"entries": entries, "deleted": len(gone), "key_size": key_size, "value_size": value_size,
            "load_s": load_s, "delete_s": delete_s, "before": before, "after": after,
            "fall_per_deleted": fall}


def held_snapshot(store: Store, txns: int, key_size: int, value_size: int, seed: int) -> dict[str, Any]:
    """Case 3 on `store` (emptied first), with `txns` transactions while the snapshot is held."""
    store.destroy()
    store.open(True)
    rng = random.Random(seed + 2)
    keys = distinct_keys(rng, HELD_KEYS, key_size)
    store.load([(k, value_of(k, value_size)) for k in keys])
    with store.held_reader() as get:
        at_snapshot = space_figures(store.files())
        for _ in range(txns):
            store.txn([(k, rng.randbytes(value_size)) for k in rng.sample(keys, HELD_PUTS)])
        held = space_figures(store.files())
        for k in keys[:HELD_PROBES]:
            if get(k) != value_of(k, value_size):
                raise BenchError("the held snapshot reads a value its commit did not have")
    _small_commits(store)
    after = space_figures(store.files())
    return {"keys": HELD_KEYS, "txns": txns, "puts_per_txn": HELD_PUTS, "at_snapshot": at_snapshot,
            "held": held, "after_release": after,
            "growth_held": _change(at_snapshot, held, at_snapshot["file_size"]),
            "growth_after_release": _change(at_snapshot, after, at_snapshot["file_size"])}


def w_space(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    """Both cases, with the run's key and value sizes; its rate is case 1's deletes."""
    ctx["loaded"] = False   # a workload after this one loads the data set again
    g = giveback(store, entries_for(p["space_mib"], data.key_size, data.value_size), data.key_size,
                 data.value_size, data.seed)
    h = held_snapshot(store, p["space_txns"], data.key_size, data.value_size, data.seed)
    return {"ops": g["deleted"], "seconds": g["delete_s"], "extra": {"giveback": g, "held_snapshot": h}}
