"""How kvmap-bench runs its workloads: each workload's function, one
repetition of a workload on one store, the summary of its repetitions (a
result), and the whole run over every store (``run_suite``), the stores
taking turns repetition by repetition."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import time
from typing import Any, Callable

from .data import Data
from .figures import peak_rss, percentile, reset_peak_rss, rusage, space_figures
from .procs import w_procs
from .render import fmt_rate, row_label
from .space import w_space
from .stores import BACKENDS, KvmapStore, Store, make_store
from .workloads import (KVMAP_ONLY, UNITS, Ctx, Params, Result, w_bulk, w_churn, w_get, w_get_cold, w_growth,
                        w_mixed, w_range, w_scan, w_txn_nosync, w_txn_sync)

# Workloads that build their own store: after a failure it is emptied for the next to load.
BUILDS_STORE = {"bulk", "growth", "space"}
# space runs once whatever --repeat says: its figures are sizes, not times,
# and a repetition would load --space-mib again.
ONE_REPETITION = {"space"}

# (Any: w_growth takes only a KvmapStore)
WORKLOAD_FUNCS: dict[str, Callable[[Any, Data, Ctx, Params], Result]] = {
    "bulk": w_bulk, "get": w_get, "get_cold": w_get_cold, "scan": w_scan, "range": w_range,
    "mixed": w_mixed, "procs": w_procs, "txn_nosync": w_txn_nosync, "txn_sync": w_txn_sync, "churn": w_churn,
    "growth": w_growth, "space": w_space}


def run_repetition(store: Store, workload: str, data: Data, ctx: Ctx, p: Params) -> Result:
    """One repetition of `workload` (ctx["rep"] is its number): the
    workload's figures, and the faults, peak RSS and (kvmap) syscalls of
    this process in it -- procs gives those of its processes instead."""
    reset_peak_rss()
    sc0 = None
    if isinstance(store, KvmapStore):
        if store.db is None:
            store.ensure(False)  # a handle to read the (process-wide) counters
        sc0 = store.syscalls()
    f0 = rusage()
    r = WORKLOAD_FUNCS[workload](store, data, ctx, p)
    f1 = rusage()
    if isinstance(store, KvmapStore) and store.db is not None and sc0 is not None:
        sc1 = store.syscalls()
        r.setdefault("syscalls", {k: sc1[k] - sc0.get(k, 0) for k in sc1})
    r.setdefault("peak_rss", peak_rss())
    r.setdefault("faults", (f1[0] - f0[0], f1[1] - f0[1]))
    return r


def summarize(store: Store, workload: str, reps: list[Result]) -> Result:
    """The result of `workload` on `store` from its repetitions."""
    rates = [r["ops"] / r["seconds"] if r["seconds"] > 0 else float("inf") for r in reps]
    lat_all = sorted(ns for r in reps for ns in r.get("lat_ns") or ())
    extra = dict(reps[-1].get("extra", {}))
    if "syscalls" in reps[-1]:
        extra["syscalls"] = reps[-1]["syscalls"]
    writer_rates = [r["extra"]["writer_commits_per_s"] for r in reps if "writer_commits_per_s" in r.get("extra", {})]
    if writer_rates:   # mixed and procs
        extra["writer_commits_per_s"] = statistics.median(writer_rates)
    mid = sorted(range(len(rates)), key=lambda i: rates[i])[len(rates) // 2]
    space = space_figures(store.files())
    return {
        "workload": workload, "store": store.name,
        "throughput": {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                       "unit": UNITS[workload]},
        "latency_us": ({"p50": percentile(lat_all, 0.50) / 1e3, "p99": percentile(lat_all, 0.99) / 1e3}  # type: ignore[operator]
                       if lat_all else None),
        "faults": {"minor": reps[mid]["faults"][0], "major": reps[mid]["faults"][1]},
        "peak_rss": max(r["peak_rss"] for r in reps), "file_size": space["file_size"],
        "allocated": space["allocated"], "mapped_rss": space["mapped_rss"], "extra": extra,
    }


def run_suite(stores: list[str], workloads: list[str], data: Data, params: Params, workdir: str,
              say: Callable[[str], None]) -> list[Result]:
    """Every workload on every store, each store in a directory of its own
    under workdir (removed at the end), workload after workload.  A
    workload's repetitions are interleaved: the stores take turns, each
    repetition starting one store further on, so that a change in the
    machine's load (other processes, another tenant of the host) falls on
    every store alike, not on one store's block of repetitions, and the
    ratios between stores stay fair."""
    results: list[Result] = []

    def runs(s: str, w: str) -> bool:
        return not (w in KVMAP_ONLY and s not in BACKENDS)

    for s in stores:
        skipped = [w for w in workloads if not runs(s, w)]
        if skipped:
            say(f"  {s}: skipping {', '.join(skipped)} (kvmap growth strategies only)")
    phases = sum(len(params["procs_readers"]) if w == "procs" else 1 for s in stores for w in workloads if runs(s, w))
    live: dict[str, tuple[Store, Ctx]] = {}   # the stores made and not yet removed, with their context

    def store_of(s: str) -> tuple[Store, Ctx]:
        if s not in live:
            live[s] = (make_store(s, os.path.join(workdir, s.replace(":", "-"))), {"loaded": False})
        return live[s]

    def finish(s: str) -> None:
        store, _ = live.pop(s)
        with contextlib.suppress(Exception):
            store.close()
        shutil.rmtree(store.dir, ignore_errors=True)

    def failed(s: str, w: str, variant: dict[str, int], exc: Exception) -> Result:
        """The result of a workload that raised; the store is closed (and
        emptied if the workload was building it) for the next to load."""
        store, ctx = live[s]
        r = {"workload": w, "store": s, "throughput": None, "latency_us": None, "faults": None,
             "peak_rss": None, "file_size": None, "allocated": None, "mapped_rss": None, "extra": dict(variant),
             "error": f"{type(exc).__name__}: {exc}"}
        print(f"kvmap-bench: {row_label(r)} on {s} failed: {r['error']}", file=sys.stderr)
        with contextlib.suppress(Exception):
            store.close()
        ctx["loaded"] = False
        if w in BUILDS_STORE:
            with contextlib.suppress(Exception):
                store.destroy()
        return r

    def report(r: Result, t0: float) -> None:
        results.append(r)
        if r.get("throughput"):
            tp = r["throughput"]
            say(f"[{len(results)}/{phases}] {row_label(r):<10} {r['store']:<16} {fmt_rate(tp['median'])} "
                f"{tp['unit']}  ({time.perf_counter() - t0:.1f} s)")

    def run_interleaved(w: str, variant: dict[str, int]) -> None:
        """Workload w (with ctx updated by variant) on every store that runs
        it, repetition by repetition."""
        t0 = time.perf_counter()
        active = [s for s in stores if runs(s, w)]
        if not active:
            return
        reps: dict[str, list[Result]] = {s: [] for s in active}
        errors: dict[str, Result] = {}
        for rep in range(1 if w in ONE_REPETITION else params["repeat"]):
            for s in active[rep % len(active):] + active[:rep % len(active)]:
                if s in errors:
                    continue
                store, ctx = store_of(s)
                ctx.update(variant, rep=rep)
                try:
                    reps[s].append(run_repetition(store, w, data, ctx, params))
                except Exception as exc:
                    errors[s] = failed(s, w, variant, exc)
        for s in active:
            report(errors.get(s) or summarize(live[s][0], w, reps[s]), t0)

    try:
        for w in workloads:
            for variant in ([{"readers": r} for r in params["procs_readers"]] if w == "procs" else [{}]):
                run_interleaved(w, variant)
    finally:
        for s in list(live):
            finish(s)
    return results
