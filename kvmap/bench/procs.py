"""kvmap-bench's procs workload: reader processes beside one writer
process, each opening the store itself, all running in one window of time.

Its processes are spawned (a fresh interpreter: no handle, lock or thread
inherited from this one), so what they run is here at module level; they
get the store by its name and directory, and their keys and transactions
from a file: a large argument of Process, which start() writes into a pipe
the child reads, would block start() for ever if the child died before
reading it all."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import pickle
import queue
import random
import tempfile
import time
from typing import Any, Callable

from .data import Data
from .figures import peak_rss, percentile, rusage
from .stores import Store, make_store
from .workloads import (MIXED_BATCH, PUTS_PER_TXN, BenchError, Ctx, Params, Result, ensure_loaded,
                        overwrite_chunks, read_batches, restore_overwritten)

PROCS_READERS = [1, 2, 4]
PROCS_SECONDS = 1.0
PROCS_START_DELAY_S = 0.05   # from the last process ready to the window's start: time to wake them all
PROCS_TIMEOUT_S = 120.0      # a process that says nothing for this long has hung


def _procs_read(store: Store, batch: list[bytes]) -> None:
    found = store.get_all(batch)
    if found != len(batch):
        raise BenchError(f"found {found} of {len(batch)} keys")


def _procs_loop(op: Callable[[Any], None], work: list[Any], start_ns: int, end_ns: int) -> Result:
    """op on each item of work, cycling, from start_ns until a call ends
    at end_ns or later (time.monotonic_ns: one clock for every process);
    returns the calls and their durations, the window they took and this
    process's CPU time, page faults and peak RSS in it."""
    clock = time.monotonic_ns
    time.sleep(max(0, start_ns - clock()) / 1e9)
    lat: list[int] = []
    f0 = rusage()
    cpu0 = time.process_time()
    b = clock()
    for item in itertools.cycle(work):
        a = clock()
        op(item)
        b = clock()
        lat.append(b - a)
        if b >= end_ns:
            break
    cpu = time.process_time() - cpu0
    f1 = rusage()
    return {"ops": len(lat), "seconds": (b - start_ns) / 1e9, "lat_ns": lat, "cpu_s": cpu,
            "faults": (f1[0] - f0[0], f1[1] - f0[1]), "peak_rss": peak_rss()}


def _procs_process(role: str, name: str, directory: str, work_path: str, seed: int, seconds: float,
                   index: int, start: Any, start_ns: Any, out: Any) -> None:
    """One process of the procs workload: open the store, say so on `out`,
    wait for `start`, then run `role`'s loop in the window that begins at
    start_ns.value, and put its figures on `out`.  A "reader" reads batches
    of the keys in work_path (drawn with `seed`), the "writer" commits its
    transactions."""
    try:
        with open(work_path, "rb") as f:
            keys, chunks = pickle.load(f)
        work = chunks if role == "writer" else read_batches(keys, seed)
        store = make_store(name, directory)
        store.open(False)
        try:
            out.put(("ready", index, None))
            if not start.wait(PROCS_TIMEOUT_S):
                raise BenchError("never told to start")
            t0 = start_ns.value
            sc0 = store.syscalls()
            op: Callable[[Any], None] = store.txn if role == "writer" else functools.partial(_procs_read, store)
            r = _procs_loop(op, work, t0, t0 + int(seconds * 1e9))
            sc1 = store.syscalls()
            if sc0 is not None and sc1 is not None:
                r["syscalls"] = {k: sc1[k] - sc0.get(k, 0) for k in sc1}
        finally:
            store.close()
        out.put(("done", index, r))
    except BaseException as exc:  # reported by the parent
        out.put(("error", index, f"{role} process: {type(exc).__name__}: {exc}"))


def _procs_collect(out: Any, procs: list[Any], kind: str) -> list[Any]:
    """Every process's message of `kind`, in process order; BenchError for
    an error reported, a process dead without one, or silence."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + PROCS_TIMEOUT_S
    while len(got) < len(procs):
        try:
            what, index, payload = out.get(timeout=0.2)
        except queue.Empty:
            dead = [pr.exitcode for pr in procs if pr.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"a procs process died (exit status {dead[0]})") from None
            if time.monotonic() > deadline:
                raise BenchError(f"procs processes silent for {PROCS_TIMEOUT_S:.0f} s") from None
            continue
        if what == "error":
            raise BenchError(payload)
        if what == kind:
            got[index] = payload
    return [got[i] for i in range(len(procs))]


def w_procs(store: Store, data: Data, ctx: Ctx, p: Params) -> Result:
    ensure_loaded(store, data, ctx)
    nreaders = ctx["readers"]
    seconds = p["procs_seconds"]
    rng = random.Random(data.seed + 7 + ctx["rep"])
    chunks = overwrite_chunks(data, rng, p["mixed_commits"])
    roles = ["writer"] + ["reader"] * nreaders
    mp = multiprocessing.get_context("spawn")
    out = mp.Queue()
    start = mp.Event()
    start_ns = mp.Value("q", 0, lock=False)   # written once, before start is set
    with tempfile.TemporaryDirectory(prefix="procs-", dir=os.path.dirname(store.dir)) as tmp:
        work_path = os.path.join(tmp, "work.pickle")
        with open(work_path, "wb") as f:
            pickle.dump((data.keys, chunks), f, protocol=pickle.HIGHEST_PROTOCOL)
        procs = [mp.Process(target=_procs_process, daemon=True,
                            args=(role, store.name, store.dir, work_path, data.seed * 31 + i, seconds, i,
                                  start, start_ns, out))
                 for i, role in enumerate(roles)]
        try:
            for pr in procs:
                pr.start()
            _procs_collect(out, procs, "ready")
            start_ns.value = time.monotonic_ns() + int(PROCS_START_DELAY_S * 1e9)
            start.set()
            figures = _procs_collect(out, procs, "done")
        finally:
            for pr in procs:
                pr.join(timeout=10 if start.is_set() else 0)
                if pr.is_alive():   # a failure elsewhere: it waits for a start that never comes
                    pr.terminate()
                    pr.join()
    writer, readers = figures[0], figures[1:]
    restore_overwritten(store, data, chunks)
    syscalls = [f["syscalls"] for f in figures if "syscalls" in f]
    gets = sum(f["ops"] for f in readers) * MIXED_BATCH
    commit_ns = sorted(writer["lat_ns"])
    result: Result = {
        "ops": gets,
        "seconds": max(f["seconds"] for f in readers),
        "lat_ns": [ns for f in readers for ns in f["lat_ns"]],
        "faults": tuple(sum(f["faults"][j] for f in figures) for j in (0, 1)),
        "peak_rss": max(f["peak_rss"] for f in figures),
        "extra": {"readers": nreaders, "gets_per_snapshot": MIXED_BATCH, "window_s": seconds,
                  "latency_per": f"snapshot of {MIXED_BATCH} gets",
                  "reads_per_s_per_reader": [f["ops"] * MIXED_BATCH / f["seconds"] for f in readers],
                  # what a get and a commit cost, however many processes share the CPUs
                  "reader_cpu_us_per_get": sum(f["cpu_s"] for f in readers) / gets * 1e6,
                  "writer_cpu_us_per_commit": writer["cpu_s"] / writer["ops"] * 1e6,
                  "puts_per_txn": PUTS_PER_TXN, "writer_commits": writer["ops"],
                  "writer_commits_per_s": writer["ops"] / writer["seconds"],
                  "writer_commit_us": {"p50": percentile(commit_ns, 0.50) / 1e3,  # type: ignore[operator]
                                       "p99": percentile(commit_ns, 0.99) / 1e3}}}  # type: ignore[operator]
    if syscalls:
        result["syscalls"] = {k: sum(sc[k] for sc in syscalls) for k in syscalls[0]}
    return result
