"""kvmap-bench: compare kvmap's I/O backends and growth strategies on your own
disk, optionally side by side with py-lmdb and sqlite3.

Run ``kvmap-bench`` (or ``python -m kvmap.bench``) with no arguments for the
default suite, every workload but space (about 100 s on a 2-core VM, two
thirds of it procs);
``kvmap-bench --help`` lists the options.  Progress goes to stderr (one line
per phase, ``--quiet`` hides it); the comparison table goes to stdout.

Stores
------
kvmap backends: ``mmap:reserve``, ``mmap:mremap``, ``mmap:remap`` (each also
with ``:wm`` = ``writemap=True``) and ``pread``: the configurations of
``kvmap.configurations`` (``mmap-reserve-wm`` is ``mmap:reserve:wm`` here).  Peers (``--peers``):
``lmdb`` (py-lmdb, ``map_size`` 8 GiB, ``sync``/``metasync`` as the workload
needs) and ``sqlite3`` (``CREATE TABLE kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT
ROWID``, ``journal_mode=WAL``, ``synchronous=OFF``, or ``FULL`` for
``txn_sync``).  All stores run on the same generated data (N distinct random
keys of ``--key-size`` bytes, random values of ``--value-size`` bytes).

Workloads (in run order; the store loaded by ``bulk`` is reused by the next ones)
-------------------------------------------------------------------------------
Each workload runs on every store before the next workload starts, the stores
taking turns repetition by repetition (each repetition starting one store
further on), so that a change in the machine's load falls on all of them alike.

bulk        load N pairs in one transaction with the store's batch call (kvmap
            update, py-lmdb putmulti, sqlite3 executemany), sync off (fresh
            store per repetition)
get         random gets of all N keys in one snapshot, hot cache
get_cold    fdatasync + posix_fadvise(DONTNEED) the store's files (store closed,
            so no page stays mapped), reopen, random gets of a sample; latency per get.
            The proof that the pages left the page cache: extra.resident holds the
            pages of the store's files in the page cache (mincore(2) on a mapping
            of each file that is never touched) after the eviction ("dropped"),
            after the reopen, right before the timed gets ("start"), and after
            them ("end"), with the file's pages ("of"); extra.read_mib is what the
            gets read from the disk (read_bytes of /proc/self/io: read-ahead
            included) and extra.readahead the store's read-ahead setting
scan        ordered scan of all pairs
range       short range queries of ~100 keys at random starts; latency per query
mixed       2 reader threads doing random gets (a fresh snapshot per 100 gets)
            while the main thread commits small transactions (10 overwrites,
            sync off): params.mixed_commits of them, repeated until at least
            0.2 s have passed; throughput = reader gets/s during the writer's
            run, extra.writer_commits_per_s
procs       the same traffic from separate processes: N reader processes (one
            result per N of --procs-readers, extra.readers) and one writer
            process, each opening the store itself (kvmap.open, lmdb.open with
            its lock file, a sqlite3 connection of its own), started with
            multiprocessing's spawn.  Once every process has opened the store
            they all run for the same --procs-seconds window (a start time on
            the shared monotonic clock), so start-up and imports are outside
            it.
            A reader reads batches of 100 random gets, one snapshot / read
            transaction each, and checks that every key is found; the writer
            commits transactions of 10 overwrites, sync off, cycling over
            params.mixed_commits prepared ones.  throughput = all readers'
            gets/s; extra.reads_per_s_per_reader (each reader's gets/s),
            extra.writer_commits_per_s, extra.writer_commit_us (p50, p99),
            extra.reader_cpu_us_per_get and extra.writer_cpu_us_per_commit (CPU
            time: what an operation costs however many processes share the
            CPUs); latency_us = per batch (one snapshot of 100 gets, its begin
            and end included), over every reader; faults
            (sum) and peak_rss (max) are the child processes', and a kvmap row's
            extra.syscalls is the sum of their stats()['syscalls'] deltas
txn_nosync  transactions of 10 new keys, sync off; latency per transaction
txn_sync    the same with sync on (fewer transactions); extra.fdatasync_per_commit
churn       delete all keys and reinsert them (one transaction each) for a few
            rounds; extra.before / extra.after hold file size, allocated bytes
            (st_blocks*512) and RSS.  Runs on the peers too.
growth      (kvmap only: the peers have no growth strategies) grow a fresh store
            from empty to --growth-mib with 1 MiB values, one transaction each,
            sync off.  A growth step is a commit after which stats()['file_size']
            changed; extra.steps lists [file size MiB after, commit ms].  Then all
            values are read (extra.first_read_minflt), the file is grown by one
            more step, and the same values are read again: extra.reread_minflt is
            the ru_minflt taken by that re-read of already-touched data (remap =
            munmap+mmap refaults it, mremap and reserve keep the page tables).
space       (only when named in --workloads; one repetition whatever --repeat)
            what a store gives back, each case on an empty store with durable
            commits (space.py).  extra.giveback: load --space-mib MiB of keys
            and values in transactions of 10,000, read them all, delete 90% in
            transactions of 10,000, ten small commits; before / after hold file
            size, allocated bytes, mapped_rss and rss, fall_per_deleted each
            figure's fall as a share of the share deleted.  extra.held_snapshot:
            10,000 keys, a snapshot held while --space-txns transactions each
            overwrite 10 of them, released, ten small commits; at_snapshot /
            held / after_release, and growth_held / growth_after_release
            relative to at_snapshot.  throughput = deletes/s of the first case.

JSON schema (``--json OUT``), schema 1
--------------------------------------
{
  "schema": 1,
  "machine": {"kernel": str, "python": str, "filesystem": str (type of --dir,
              from /proc/mounts, longest matching mount point), "dir": str,
              "page_size": int, "cpu_count": int, "kvmap_version": str,
              "lmdb_version": str|null, "sqlite_version": str|null},
  "params":  {"backends": [str], "peers": [str], "workloads": [str], "n": int,
              "key_size": int, "value_size": int, "repeat": int, "seed": int,
              "growth_mib": int, "txn_nosync": int, "txn_sync": int, "cold_sample": int,
              "range_queries": int, "mixed_commits": int, "churn_rounds": int,
              "procs_readers": [int], "procs_seconds": float, "space_mib": int,
              "space_txns": int},
  "results": [{   (one per workload and store; procs: one per workload, store and extra.readers)
      "workload": str, "store": str (a backend name, "lmdb" or "sqlite3"),
      "throughput": {"median": float, "min": float, "max": float, "unit": str},
      "latency_us": {"p50": float, "p99": float} | null   (over all repetitions),
      "faults": {"minor": int, "major": int}   (getrusage delta, median repetition),
      "peak_rss": int bytes (VmHWM, reset before each repetition; max over reps),
      "file_size": int bytes, "allocated": int bytes (st_blocks*512; store files after the workload),
      "mapped_rss": int bytes (resident part of this process's mappings of the store files, then),
      "extra": {...} (per workload, see above; from the last repetition, but writer_commits_per_s is
                      the median of the repetitions; kvmap rows add "syscalls": the
                      stats()['syscalls'] delta of the last repetition),
      "error": str   (only when the workload failed; throughput is then null)
  }]
}

The package, by concept
-----------------------
``stores.py`` the stores (kvmap backends, py-lmdb, sqlite3); ``data.py`` the
data set; ``workloads.py`` the workloads of one process, ``procs.py`` the
one of many processes, ``space.py`` the space workload (also
bench/space_giveback.py's); ``figures.py`` what is measured besides time;
``runner.py`` repetitions, results and the run over every store;
``render.py`` tables and chart; ``cli.py`` the command line and ``main``.
"""

from .cli import build_parser, main
from .stores import BACKENDS, DEFAULT_BACKENDS, PEERS
from .workloads import DEFAULT_WORKLOADS, KVMAP_ONLY, UNITS, WORKLOADS, BenchError

__all__ = ["main", "build_parser", "BACKENDS", "DEFAULT_BACKENDS", "PEERS", "WORKLOADS", "DEFAULT_WORKLOADS",
           "UNITS", "KVMAP_ONLY", "BenchError"]
