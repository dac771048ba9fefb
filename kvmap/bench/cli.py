"""kvmap-bench's command line (also ``kvmap bench`` and ``python -m
kvmap.bench``): its options, the checks of their values, the machine's
facts, and ``main``, which runs the suite and prints or writes what it
found."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import kvmap

from .data import Data
from .figures import PAGE, fs_type
from .procs import PROCS_READERS, PROCS_SECONDS
from .render import render_details, render_table, write_plot
from .runner import run_suite
from .space import HELD_KEYS, HELD_PUTS, HELD_TXNS, entries_for
from .stores import BACKENDS, DEFAULT_BACKENDS, PEERS
from .workloads import DEFAULT_WORKLOADS, WORKLOADS

SPACE_MIB = 256


def machine_facts(directory: str) -> dict[str, Any]:
    """The facts of this machine that a JSON result records beside the figures."""
    facts = {"kernel": " ".join(platform.uname()[2:4]) if hasattr(platform, "uname") else "",
             "python": platform.python_version(), "filesystem": fs_type(directory),
             "dir": os.path.realpath(directory), "page_size": PAGE, "cpu_count": os.cpu_count(),
             "kvmap_version": getattr(kvmap, "__version__", "?"), "lmdb_version": None,
             "sqlite_version": None}
    try:
        import lmdb
        facts["lmdb_version"] = "py-lmdb %s, LMDB %s" % (lmdb.__version__,
                                                          ".".join(map(str, lmdb.version())))
    except Exception:
        pass
    try:
        import sqlite3
        facts["sqlite_version"] = sqlite3.sqlite_version
    except Exception:
        pass
    return facts


def _csv(choices: list[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad)} (choose from {', '.join(choices)})")
        return list(dict.fromkeys(items))
    return parse


def _positive_ints(text: str) -> list[int]:
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, not {text!r}")
    return list(dict.fromkeys(items))


def build_parser(prog: str = "kvmap-bench") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark kvmap's I/O backends and growth strategies on this machine, "
                    "optionally against py-lmdb and sqlite3.")
    ap.add_argument("--backends", type=_csv(list(BACKENDS), "backend"), default=DEFAULT_BACKENDS,
                    help="comma list of %s (default %s)" % (", ".join(BACKENDS), ",".join(DEFAULT_BACKENDS)))
    ap.add_argument("--workloads", type=_csv(WORKLOADS, "workload"), default=list(DEFAULT_WORKLOADS),
                    help="comma list of %s (default all but space)" % ", ".join(WORKLOADS))
    ap.add_argument("-n", "--n", type=int, default=50000, help="entries (default 50000)")
    ap.add_argument("--key-size", type=int, default=16, help="key bytes (default 16)")
    ap.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    ap.add_argument("--dir", default=None,
                    help="directory for the stores (a temporary subdirectory is made in it "
                         "and removed; default: the system temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per workload (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--peers", type=_csv(PEERS, "peer"), default=[],
                    help="comma list of lmdb, sqlite3 (default none)")
    ap.add_argument("--json", metavar="OUT", default=None, help="write all results as JSON")
    ap.add_argument("--plot", metavar="OUT.png", default=None,
                    help="write a PNG chart (needs matplotlib)")
    ap.add_argument("--growth-mib", type=int, default=256,
                    help="target size of the growth workload in MiB (default 256)")
    ap.add_argument("--procs-readers", type=_positive_ints, default=PROCS_READERS,
                    help="procs workload: comma list of reader process counts, one run each "
                         "(default %s)" % ",".join(map(str, PROCS_READERS)))
    ap.add_argument("--procs-seconds", type=float, default=PROCS_SECONDS,
                    help="procs workload: the measured window of each run in seconds (default %g)"
                         % PROCS_SECONDS)
    ap.add_argument("--space-mib", type=int, default=SPACE_MIB,
                    help="space workload: MiB of keys and values to load and delete 90%%%% of (default %d)"
                         % SPACE_MIB)
    ap.add_argument("--space-txns", type=int, default=HELD_TXNS,
                    help="space workload: transactions of %d overwrites made while a snapshot is held "
                         "(default %d)" % (HELD_PUTS, HELD_TXNS))
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: Optional[list[str]] = None, prog: str = "kvmap-bench") -> int:
    args = build_parser(prog).parse_args(argv)
    say: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if (args.n < 1 or args.key_size < 1 or args.value_size < 0 or args.repeat < 1 or args.growth_mib < 1
            or not args.procs_seconds > 0 or args.space_mib < 1 or args.space_txns < 1):
        print("kvmap-bench: -n, --key-size, --repeat, --growth-mib, --procs-seconds, --space-mib and "
              "--space-txns must be positive", file=sys.stderr)
        return 2
    if args.key_size < 8 and 256 ** args.key_size < 2 * args.n:
        print("kvmap-bench: --key-size too small for -n distinct keys", file=sys.stderr)
        return 2
    if ("space" in args.workloads and args.key_size < 8
            and 256 ** args.key_size < 2 * max(HELD_KEYS, entries_for(args.space_mib, args.key_size, args.value_size))):
        print("kvmap-bench: --key-size too small for the space workload's distinct keys", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("kvmap-bench: --plot needs matplotlib, which is not installed "
                  "(pip install matplotlib)", file=sys.stderr)
            return 2

    peers = []
    for peer in args.peers:
        try:
            __import__("lmdb" if peer == "lmdb" else "sqlite3")
        except ImportError:
            print(f"kvmap-bench: peer {peer} skipped: "
                  + ("py-lmdb is not installed (pip install lmdb)" if peer == "lmdb"
                     else "this Python has no sqlite3 module"), file=sys.stderr)
            continue
        peers.append(peer)

    stores = list(args.backends) + peers
    workloads = [w for w in WORKLOADS if w in args.workloads]
    n = args.n
    params = {"backends": list(args.backends), "peers": peers, "workloads": workloads, "n": n,
              "key_size": args.key_size, "value_size": args.value_size, "repeat": args.repeat,
              "seed": args.seed, "growth_mib": args.growth_mib,
              "txn_nosync": max(10, min(2000, n // 5)), "txn_sync": max(10, min(200, n // 10)),
              "cold_sample": min(n, 2000), "range_queries": max(10, min(2000, n // 10)),
              "mixed_commits": max(10, min(500, n // 10)), "churn_rounds": 3,
              "procs_readers": args.procs_readers, "procs_seconds": args.procs_seconds,
              "space_mib": args.space_mib, "space_txns": args.space_txns}

    base = args.dir if args.dir else None
    if base:
        os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="kvmap-bench-", dir=base)
    machine = machine_facts(workdir)
    say(f"kvmap-bench: {len(stores)} stores x {len(workloads)} workloads, N={n}, "
        f"repeat={args.repeat}, dir={workdir} ({machine['filesystem']})")
    t_start = time.perf_counter()
    data = Data(n, args.key_size, args.value_size, args.seed)
    try:
        results = run_suite(stores, workloads, data, params, workdir, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    say(f"kvmap-bench: done in {elapsed:.1f} s")

    print(f"kvmap-bench  N={n} key={args.key_size}B value={args.value_size}B repeat={args.repeat} "
          f"fs={machine['filesystem']} kernel={machine['kernel'].split()[0] if machine['kernel'] else '?'} "
          f"cpus={machine['cpu_count']}  ({elapsed:.0f} s)")
    print(render_table(results, stores, workloads, list(args.backends), peers))
    details = render_details(results)
    if details:
        print()
        print(details)
    errors = [r for r in results if r.get("error")]
    if args.json:
        doc = {"schema": 1, "machine": machine, "params": params, "results": results,
               "elapsed_s": elapsed}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.plot:
        write_plot(args.plot, results, stores, workloads)
    return 1 if errors else 0
