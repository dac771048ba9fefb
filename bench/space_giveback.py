"""Giving disk back: delete 90% of a database in transactions of 10,000,
then make ten small commits, and report what each store holds on to.

The first case of kvmap-bench's space workload (``kvmap.bench.space.giveback``,
whose docstring says what it does), larger and with each store in a process
of its own, so that a process's resident set is that store's: kvmap (one
configuration per run, ``--config``) and, beside it, py-lmdb and sqlite3
(``--peers``; kvmap-bench's stores: sqlite3 in WAL mode).  It loads
``--size-mib`` of data (16-byte random keys, values of ``--value-size``
bytes, 16 bytes of cell overhead each; random keys fill pages about 60%, so
the default 600 MiB make a database of about 1 GiB).  Before the deletes and
after the small commits it reports the file's size, its allocated blocks
(``st_blocks * 512``), the process's resident set and the resident part of
the store's mapping of its files (sqlite3 reads with ``pread``: only its
``-shm``).  Every store runs with durable commits (kvmap ``sync=True``,
py-lmdb ``sync=True``, sqlite3 ``synchronous=FULL``).

    python bench/space_giveback.py --config mmap-reserve            # a 1 GiB database
    python bench/space_giveback.py --config pread --size-mib 64 --peers lmdb

docs/ARCHITECTURE.md §4 has the figures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from kvmap.bench.space import entries_for, giveback
from kvmap.bench.stores import backend_name, make_store
from kvmap.configurations import CONFIGURATIONS

MIB = 1 << 20
KEY_SIZE = 16
FIGURES = (("file_size", "file"), ("allocated", "allocated"), ("rss", "rss"), ("mapped_rss", "mapped"))


def run_store(store, config, d, size_mib, value_size, seed):
    """Case 1 on one store in directory d, in this process."""
    name = backend_name(config) if store == "kvmap" else store
    s = make_store(name, d)
    try:
        r = giveback(s, entries_for(size_mib, KEY_SIZE, value_size), KEY_SIZE, value_size, seed)
    finally:
        s.close()
    return dict(r, store=store, config=config if store == "kvmap" else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="mmap-reserve", choices=list(CONFIGURATIONS))
    ap.add_argument("--size-mib", type=int, default=600,
                    help="data to load, keys, values and cell overhead (default 600: a database of about 1 GiB)")
    ap.add_argument("--value-size", type=int, default=400, help="value bytes (default 400)")
    ap.add_argument("--peers", default="lmdb,sqlite3", help="comma list of lmdb, sqlite3, or ''")
    ap.add_argument("--dir", default=None, help="where the stores go (default: the system temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results as JSON")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: run one store here
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_store(a.one, a.config, a.dir, a.size_mib, a.value_size, a.seed)))
        return 0
    results = []
    for store in ["kvmap"] + [p for p in a.peers.split(",") if p]:
        d = tempfile.mkdtemp(prefix="giveback-%s-" % store, dir=a.dir)
        try:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", store, "--config", a.config,
                                  "--dir", d, "--size-mib", str(a.size_mib), "--value-size", str(a.value_size),
                                  "--seed", str(a.seed)], check=True, capture_output=True, text=True).stdout
        finally:
            shutil.rmtree(d, ignore_errors=True)
        results.append(json.loads(out.splitlines()[-1]))
        r = results[-1]
        name = "kvmap %s" % a.config if store == "kvmap" else store
        print("%-22s %8d entries, load %6.1f s, delete %6.1f s" % (name, r["entries"], r["load_s"], r["delete_s"]))
        for key, what in FIGURES:
            b, f = r["before"][key], r["after"][key]
            print("    %-10s %9.1f MiB -> %9.1f MiB  (%+.0f%%)" % (what, b / MIB, f / MIB,
                                                               100.0 * (f - b) / b if b else 0.0))
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(size_mib=a.size_mib, value_size=a.value_size, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
