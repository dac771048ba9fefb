#!/usr/bin/env python3
"""Process-kill crash harness for kvmap (issues 5 and 11).

    python tools/killtest.py [--kills N] [--long] [--seed S] [--config ID,...]
                             [--sync on|off|mix] [--procs mix|only|off] [--jobs J]
                             [--lane L] [--no-timing] [--json FILE] [--dir DIR] [--keep] [-v]

A parent process that has kvmap imported but never a database open forks
writer children.  A writer opens the database (read-write, so the open of a
crashed file runs whatever recovery there is), runs the seeded transactions
of ``crashkit.Workload`` from where the file stands, and acknowledges each
``commit()`` that returned by writing its number on a pipe; it also says when
it begins a commit, and before and after the flush points it calls: a
``db.sync()`` after some commits (``sync=False``), and a ``close()`` and
reopen after a few (close flushes, then seals the newest meta).  A
``sync=False`` lane opens with a small ``sync_bytes`` (16 KiB to 1 MiB), so
commits flush often (a commit that brings the unsynced bytes to sync_bytes
flushes once after its meta; one larger than 4 x sync_bytes syncs its pages
first), and, unless ``--no-timing``, sometimes a ``sync_interval`` of 2 or
20 ms.  The writer is SIGKILLed at a moment chosen by the parent:

* ``time``: after a random delay (uniform over about the run's length);
* ``syscall:<call>``: exactly before its n-th pwrite / fdatasync / pread /
  madvise, or before the next fallocate / mmap / mremap / munmap of a file
  growth, the next hole punch (after a commit is published: it gives free
  runs back) or the next ftruncate (the last close cutting the file)
  (``kvm_fault_set(..., KVM_FAULT_KILL)`` armed in the child after its
  open), which puts kills inside commits, inside growth and inside the
  flushes (``sync=False`` lanes kill at fdatasync twice as often)
  deterministically;
* ``ack``: right after a ``commit()`` returned, before the acknowledgement;
* ``idle``: the armed call never came within the run (the parent kills the
  idle child);
* ``copy:<call>``: inside a ``db.copy()`` (a page copy or a compact one) that
  the writer starts after a commit, at the n-th call of the copy (``copy:done``:
  the copy finished first, and the writer was killed right after); the
  source must then hold exactly the acknowledged commits, and the copy's
  destination be either absent or a complete, check-clean copy of the last
  of them (a temporary file beside it may be left);
* ``create:<call>``: at the k-th call of the open that creates the file.

Some writers also hold snapshots across commits (compared with the model when
they are released) and run reader threads that iterate snapshots and make
point reads while the writer commits ("with readers").  After some writer
kills a second child reopens the crashed file read-write and is killed at its
k-th open/lock/fstat/pread/mmap/madvise call, or (``sync=False``) at the
fdatasync with which a writable open makes the commits it found durable
("during reopen").

After each kill a verifier child runs ``crashkit.verify``: ``kvmap.check`` on
the crashed file, a read-write open, contents equal to the model after the
last acknowledged transaction or the one after it (killed after the meta
write, before the acknowledgement: a killed process loses nothing it wrote,
the page cache survives), ``db._check()``, and ``kvmap.check`` again.  Where
the kill point says which of the two it must be, that is demanded exactly
(``Harness.expectation``): in a commit, a kill before a pwrite or a growth
call comes before the commit's meta write, its last write (``acked``); a
``sync=True`` commit's one fdatasync comes after its meta (``acked+1``); a
``sync=False`` commit's fdatasync may come before its meta (pages first, or
a flush to reuse freed pages) or after it (either); a kill in ``db.sync()``,
in ``close()`` and the reopen, or between calls has nothing in flight
(``acked``); an ``ack`` kill ``acked+1``.  The next writer continues the
same file from the matched transaction + 1.

Lanes: one file lives for 150..350 transactions, then a new file starts with
the next configuration of ``kvmap.configurations`` (and ``sync=False``
for every third lane), so growth happens in every lane.  Lane L of
seed S draws every choice from ``Random("S:L")``: ``--lane L`` re-runs just
that lane, and with ``--no-timing`` (no delay kills, no reader threads) a lane
is fully deterministic, which is how a failing seed becomes a regression test.

Process lanes (every fifth lane, L % 5 == 2; ``--procs only``: every lane,
``--procs off`` or ``--no-timing``: none, since how processes interleave is
up to the scheduler) put two or three writer processes and two or three
reader processes on one file at once (the writers race to create it):

* writer w commits the transactions of its own workload
  (``WriterWorkload``: the lane's, lighter, every key under ``w<w>/``), so
  its part of the file is verified on its own, in turns with the others,
  each ``db.transaction(timeout=30)``: a survivor that times out is a
  deadlock, a failure.  It marks on a board shared by the lane (an
  anonymous shared mapping) the last transaction it began and the last
  whose commit() returned; ``sync=False`` writers call ``db.sync()`` now
  and then, and all close and reopen now and then.  The file grows by a
  fixed step of 64 KiB to 1 MiB (kvmap.db's GROW_MIN and GROW_MAX), not by
  half its size, so growth comes often;
* readers (read-only handles, so that kvmap.check can run beside them)
  take snapshot after snapshot: the txnid never goes backwards, and a
  writer's part equals its model after a transaction between the one
  acknowledged before the snapshot began and the one begun after; some
  snapshots are held across many commits and must read the same when
  released.

The parent kills one process at a time, the others going on:

* a writer at its n-th pwrite or fdatasync (or pread), at its next
  fallocate / mmap / mremap / munmap (its own growth, or mapping another's)
  while a reader holds a snapshot (the pages of its commit cannot be
  reused, so the file grows sooner; that reader is killed next), in the middle of a transaction
  holding the writer lock (``hold``: the others wait for it), right after
  a commit returned (``ack``), or after a random delay;
* a reader holding a snapshot it took for that, or after a random delay.

The process is started again.  A writer started again finds its part at
its model after transaction ``acked`` or ``acked+1``, and the kill point
decides which: killed before its commit's meta write (at a pwrite, a growth
call, outside commit()), ``acked``; after a commit returned, ``acked+1``;
inside commit() otherwise, either (an unpublished commit is lost: the
survivors' lock region never saw it); then ``db._check()`` (under the
writer lock), and it goes on from there.  Every 6 to 12 kills, a
checkpoint with no writer running: the writers close (the readers go on),
or everyone is killed at once (the check's open is then the first, and
builds the lock region from the file); then kvmap.check, every writer's
part at its model (acked, or acked+1 if killed inside a commit), a writable
handle's ``db._check()``, kvmap.check again.  After a writer died inside
commit() where either is allowed, three times in ten everyone else is
killed within 10 ms, before the survivors commit past its perhaps written,
unpublished commit, and that check, from a first open, verifies it.  At the lane's end the readers
but one take snapshots, the writers commit twice more and close, the other
reader drops its snapshots (its handle keeps the lock region), and the
holders are killed; the check then finds their reader slots, finds none
after one write transaction (a dead reader pins no page past it), and runs
a churn that rewrites 64 values of a page 8 times: the pages in use grow by
at most 64 (the same churn under a live snapshot keeps the snapshot's
versions, at least 128 more pages, the calibration; a snapshot pins only
the pages of its own commit: FORMAT.md §7) -- page counts, not timings.  Once everyone is gone, the
check again from a first open.  Every wait of the parent is bounded (60 s,
and 300 s for the lane): a hang is a failure with its reproducer, never a
stuck run.  ``--lane L`` re-runs a process lane's choices, not its exact
interleaving.

Counts (kills by moment, by where the writer was, with readers, during
reopen, matches at acked vs acked+1, per configuration; process lanes' kills
of writers and readers, by moment (``procs:writer:...``, ``procs:reader:...``)
and where, holding the writer lock, inside commits, at growth calls, readers
holding snapshots, checkpoints, dead reader slots swept) are printed at the
end, and written as JSON with ``--json``.  Exit status 1 if any kill lost or
tore a commit, the integrity check failed, a process lane hung, or a child
crashed or raised; each failure is printed with its reproducer and the
crashed file is kept.
"""

import argparse
import collections
import ctypes
import json
import mmap
import os
import random
import re
import select
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import crashkit  # noqa: E402
import kvmap  # noqa: E402
import kvmap.checker  # noqa: E402,F401  (imported once here, not in every verifier)
from kvmap.configurations import CONFIGURATIONS, open_kwargs, name_of as config_id  # noqa: E402
from kvmap._lib import lib  # noqa: E402

CONFIGS = [open_kwargs(name) for name in CONFIGURATIONS]

SYS = {name[8:].lower(): getattr(lib, name) for name in dir(lib)
       if name.startswith("KVM_SYS_") and name != "KVM_SYS_NCALLS"}
GROWTH_CALLS = {"reserve": ("fallocate", "mmap"), "mremap": ("fallocate", "mremap"),
                "remap": ("fallocate", "mmap", "munmap"), None: ("fallocate",)}
CREATE_CALLS = ("open", "lock", "fstat", "fallocate", "pwrite", "fdatasync", "fsync_dir")
HANG_SECONDS = 120          # a child silent this long is killed and reported
YOUNG = 150                 # growth kills are drawn only below this txn count
DEFAULT_RATE = {"pwrite": 25.0, "fdatasync": 1.0, "pread": 2.3, "madvise": 0.03}
DEFAULT_OPEN = {"open": 1, "lock": 1, "fstat": 1, "pread": 11, "mmap": 2, "madvise": 1}


class Workload(crashkit.Workload):
    """crashkit's workload, remembering the last few models it built (the
    harness asks for model(n) of a slowly moving n over and over).  With
    ``clear_every``, every such transaction deletes every key the workload
    can make, then puts a few back: the tree empties (root 0) and refills,
    and whole subtrees are freed in one commit."""

    def __init__(self, seed, *, clear_every=0, **kw):
        super().__init__(seed, **kw)
        self.clear_every = clear_every
        self._recent = {}           # n -> model(n), the last few asked for

    def ops(self, i):
        out = super().ops(i)
        if self.clear_every and i % self.clear_every == 0:
            wipe = [("del", b"k%05d" % k) for k in range(crashkit.KEYSPACE)]
            wipe += [("del", b"big%03d" % k) for k in range(getattr(self, "big_keys", 8))]
            keep = random.Random("%s:%d:clear" % (self.seed, i)).random() < 0.5
            out = wipe + (out if keep else [])
        return out

    def model(self, n):
        base = max((k for k in self._recent if k <= n), default=None)
        if base is None:
            m = super().model(n)
        else:
            m = dict(self._recent[base])
            for i in range(base + 1, n + 1):
                crashkit.apply_ops(m, self.ops(i))
        self._recent[n] = dict(m)
        for k in sorted(self._recent)[:-4]:
            del self._recent[k]
        return m


class WriterWorkload(Workload):
    """Writer w's transactions in a process lane: the lane workload's, with
    every key under the writer's own prefix, so that each writer's part of
    the file is a model of its own, verified on its own."""

    def __init__(self, seed, prefix, **kw):
        super().__init__(seed, **kw)
        self.prefix = prefix

    def ops(self, i):
        return [(op[0], self.prefix + op[1]) + tuple(op[2:]) for op in super().ops(i)]


def difference(got, want):
    """What a writer's part holds against its model, in short."""
    missing = sorted(k for k in want if k not in got)[:5]
    extra = sorted(k for k in got if k not in want)[:5]
    changed = sorted(k for k in want if k in got and got[k] != want[k])[:5]
    return "missing %s, extra %s, changed %s" % (missing, extra, changed)


# --------------------------------------------------------------------------
# children (forked; they never return into the parent's code)

def _send(fd, *words):
    os.write(fd, (" ".join(str(w) for w in words) + "\n").encode())


def _send_verdict(fd, e):
    """A verifier's failure: F for a broken promise (the oracle's or the
    engine's error), X with the traceback for anything else (a harness bug)."""
    kind = "F" if isinstance(e, (crashkit.CrashCheckFailed, kvmap.Error)) else "X"
    text = "%s: %s" % (type(e).__name__, e)
    if kind == "X":
        text += "\n" + traceback.format_exc()
    _send(fd, kind, json.dumps(text[-3000:]))


def _send_error(fd, where):
    text = "%s: %s" % (where, traceback.format_exc())
    try:
        _send(fd, "X", json.dumps(text[-3000:]))
    finally:
        os._exit(3)


def _die_with_parent():
    """SIGKILL this child when its parent dies (an interrupted harness must
    not leave idle writers behind)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)       # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(0)


def _fork(fn, *args):
    """Fork a child running fn(wfd, *args); returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _die_with_parent()
            fn(w, *args)
        except BaseException:
            _send_error(w, "child")
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _arm(call, nth):
    if lib.kvm_fault_set(SYS[call], nth, lib.KVM_FAULT_KILL, 0) != 0:
        raise RuntimeError("kvm_fault_set(%s) failed" % call)


def writer_child(fd, lane, plan):
    lib.kvm_fault_clear()
    if plan["kind"] == "create":
        _arm(plan["call"], plan["nth"])
    db = kvmap.open(lane.path, **lane.open_kw)
    _send(fd, "O")
    call = plan.get("call")
    if plan["kind"] == "syscall":
        _arm(call, plan["nth"])

    def calls():
        return lib.kvm_fault_calls(SYS[call]) if call else 0
    rng = random.Random(plan["rng"])
    w = lane.workload
    start, end = plan["start"], plan["end"]
    held = collections.deque()
    model = None
    if plan.get("readers"):
        model = w.model(start - 1)
        held.append((db.snapshot(), start - 1, dict(model)))
        for t in range(plan.get("threads", 0)):
            threading.Thread(target=reader_thread, args=(fd, db, rng.random()), daemon=True).start()
    for i in range(start, end + 1):
        ops = w.ops(i)
        _send(fd, "B", i, calls())
        if plan.get("lie"):         # self-test: a writer that acknowledges too early
            _send(fd, "A", i, calls())
        crashkit.run_txn(db, ops)
        if plan["kind"] == "ack" and i == plan["at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if not plan.get("lie"):
            _send(fd, "A", i, calls())
        # the flush points of sync=False (and close's seal): db.sync(), and a
        # close and reopen, after some commits
        after = plan.get("after", {}).get(str(i))
        if after == "sync":
            _send(fd, "S", calls())
            db.sync()
            _send(fd, "s", calls())
        elif after == "reopen" and model is None:
            _send(fd, "C", calls())
            db.close()
            db = kvmap.open(lane.path, **lane.open_kw)
            _send(fd, "c", calls())
        if plan["kind"] == "copy" and i == plan["at"]:
            _send(fd, "K", calls())
            _arm(plan["call"], plan["nth"])
            db.copy(copy_dest(lane), compact=plan["compact"])
            _send(fd, "k")
            os.kill(os.getpid(), signal.SIGKILL)
        if model is not None:
            crashkit.apply_ops(model, ops)
            if rng.random() < 0.3:
                held.append((db.snapshot(), i, dict(model)))
            while len(held) > 3 or (held and rng.random() < 0.1):
                snap, at, want = held.popleft()
                got = dict(snap.items())
                snap.close()
                if got != want:
                    raise AssertionError("snapshot taken after txn %d changed (%d keys, want %d)"
                                         % (at, len(got), len(want)))
    _send(fd, "D")
    while True:                     # the parent kills an idle writer
        time.sleep(60)


def copy_dest(lane):
    return lane.path + ".copy"


def copy_check_child(fd, lane, acked, done):
    """After a kill inside db.copy(): the destination is absent (not when the
    copy had returned), or a sound copy of commit ``acked``; temporary files
    of the copy (beside it) are allowed, and removed with it."""
    dest = copy_dest(lane)
    try:
        if os.path.exists(dest):
            rep = kvmap.checker.check(dest)
            if not rep.ok:
                raise crashkit.CrashCheckFailed("the copy is not sound: %s" % "; ".join(
                    "%s page %s: %s" % (p.kind, p.page, p.message) for p in rep.problems[:5]))
            with kvmap.open(dest, "r") as c:
                if dict(c.items()) != lane.workload.model(acked):
                    raise crashkit.CrashCheckFailed("the copy does not hold commit %d" % acked)
            state = "complete"
        elif done:
            raise crashkit.CrashCheckFailed("db.copy() returned, and there is no copy")
        else:
            state = "absent"
    except Exception as e:
        _send_verdict(fd, e)
        return
    left = [f for f in os.listdir(os.path.dirname(dest)) if f.startswith(os.path.basename(dest))]
    for f in left:
        os.unlink(os.path.join(os.path.dirname(dest), f))
    _send(fd, "Y", state, int(any(".copy-" in f and not f.endswith("-lock") for f in left)))


def reader_thread(fd, db, seed):
    rng = random.Random(seed)
    try:
        while True:
            with db.snapshot() as s:
                n = 0
                for _k, _v in s.items():
                    n += 1
                if n != len(s):
                    raise AssertionError("snapshot iterated %d items, len() says %d" % (n, len(s)))
            for _ in range(20):
                db.get(b"k%05d" % rng.randrange(crashkit.KEYSPACE))
            list(db.irange(b"k%05d" % rng.randrange(crashkit.KEYSPACE), None))[:50]
    except BaseException:
        _send_error(fd, "reader thread")


def reopen_child(fd, lane, plan):
    lib.kvm_fault_clear()
    _arm(plan["call"], plan["nth"])
    db = kvmap.open(lane.path, **lane.open_kw)
    _send(fd, "O")
    del db
    os.kill(os.getpid(), signal.SIGKILL)   # the armed call came after the open


def creation_left(lane):
    """The lane's file is a leftover of an interrupted creation (FORMAT.md §8)."""
    with open(lane.path, "rb") as f:
        head = f.read(2 * 65536 + 1)
    return crashkit.creation_leftover(head, lane.cfg.get("page_size", 4096))


def verifier_child(fd, lane, acked):
    lib.kvm_fault_clear()
    note = "-"
    if not os.path.exists(lane.path) or os.path.getsize(lane.path) == 0:
        # killed while creating the file: open must (re)initialise it
        note = "nofile" if not os.path.exists(lane.path) else "emptyfile"
        kvmap.open(lane.path, **lane.open_kw).close()
    elif creation_left(lane):
        # killed after creation allocated or partly wrote the file: it holds
        # no data yet (the checker finds no database), and open initialises it
        note = "leftover"
        kvmap.open(lane.path, **lane.open_kw).close()
    try:
        n = crashkit.verify(lane.path, lane.workload, acked, open_kw=lane.open_kw)
    except Exception as e:
        _send_verdict(fd, e)
        return
    lib.kvm_fault_clear()          # count the calls of a plain reopen
    db = kvmap.open(lane.path, **lane.open_kw)
    counts = {c: lib.kvm_fault_calls(v) for c, v in SYS.items()}
    db.close()
    _send(fd, "M", n, note, json.dumps({c: k for c, k in counts.items() if k}, separators=(",", ":")))


# --------------------------------------------------------------------------
# parent


def run_child(fn, args, deadline=None):
    """Fork fn, read its messages until it dies; kill it at ``deadline``
    (monotonic) or when it reports "D" (idle).  Returns (messages, status,
    killed_by_parent, stamps) where messages are split lines and stamps
    the seconds from the fork to the "O" message and the first and last
    "A" (keys "O", "A0", "A1")."""
    t0 = time.monotonic()
    pid, r = _fork(fn, *args)
    msgs, buf, killed, stamps = [], b"", None, {}
    limit = deadline if deadline is not None else t0 + HANG_SECONDS
    try:
        while True:
            now = time.monotonic()
            if killed is None and now >= limit:
                killed = "time" if deadline is not None else "hang"
                os.kill(pid, signal.SIGKILL)
            wait = None if killed else max(0.0, limit - now)
            ready, _, _ = select.select([r], [], [], wait)
            if not ready:
                continue
            data = os.read(r, 1 << 16)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.decode().split(" ", 2)
                msgs.append(parts)
                if parts[0] in ("O", "A"):
                    at = time.monotonic() - t0
                    stamps.setdefault(parts[0] if parts[0] == "O" else "A0", at)
                    if parts[0] == "A":
                        stamps["A1"] = at
                if parts[0] == "D" and killed is None:
                    killed = "idle"
                    os.kill(pid, signal.SIGKILL)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    return msgs, status, killed, stamps


def payload(msg):
    """The JSON text of an "X"/"F" message (split on spaces by run_child)."""
    return json.loads(" ".join(msg[1:]))


def describe_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "killed by signal %d (%s)" % (sig, signal.Signals(sig).name)
    return "exited with code %d" % os.WEXITSTATUS(status)


class Lane:
    def __init__(self, index, seed, cfg, workdir, sync_policy, page_size=None, timing=True):
        self.index = index
        self.seed = seed
        self.rng = random.Random("%s:%d" % (seed, index))
        self.cfg = dict(cfg)
        self.cid = config_id(cfg)
        if page_size:
            self.cfg["page_size"] = page_size
        if sync_policy == "mix":
            self.sync = index % 3 != 2       # every third lane runs with sync=False
        else:
            self.sync = sync_policy == "on"
        self.workload = Workload(self.rng.randrange(1 << 30),
                                 clear_every=self.rng.choice((0, 0, 30, 70)))
        self.workload_seed = self.workload.seed
        self.length = self.rng.randint(150, 350)
        # sync=False flushes often: a small sync_bytes (a commit that brings
        # the unsynced bytes to it flushes; one over 4x syncs its pages
        # first), and sync_interval when timing is allowed (a lane must stay
        # deterministic without it)
        self.open_kw = dict(self.cfg, sync=self.sync)
        if not self.sync:
            self.open_kw["sync_bytes"] = self.rng.choice((16 << 10, 64 << 10, 256 << 10, 256 << 10, 1 << 20))
            interval = self.rng.choice((None, None, 0.002, 0.02))
            self.open_kw["sync_interval"] = interval if timing else None
        self.path = crashkit.scratch_path(workdir, "lane%d.kv" % index)
        self.crash_copy = os.path.join(workdir, "lane%d.crashed.kv" % index)
        self.n = 0                   # transactions the file holds (verified)
        self.rate = dict(DEFAULT_RATE)      # calls per transaction, learnt from the runs
        if cfg.get("writemap"):
            self.rate["pwrite"] = 1.0        # only the meta page is written
        if not self.sync:
            self.rate["fdatasync"] = 0.5     # flushes only
        self.open_counts = dict(DEFAULT_OPEN)
        self.history = []
        self.done = False
        self.lie = False             # --lie-ack (process lanes; the single writer gets it in its plan)

    @property
    def name(self):
        return "lane %d (%s, sync=%s)" % (self.index, self.cid, self.sync)


class Harness:
    def __init__(self, args, configs):
        self.args = args
        self.configs = configs
        self.timing = not args.no_timing
        self.counts = collections.Counter()
        self.by_moment = collections.defaultdict(collections.Counter)
        self.by_config = collections.Counter()
        self.by_sync = collections.Counter()
        self.by_where = collections.Counter()
        self.failures = []
        self.process_sizes = []   # size_check's page counts, one per process lane
        self.txn_time = {}        # (cid, sync) -> seconds per transaction (EMA)
        self.start_time = {}      # (cid, sync) -> seconds to the child's open (EMA)
        self.log = args.verbose

    # the calls of a page copy and of a compact one (a new database's: open,
    # growth, a commit, close), and how many of each a lane's copy makes at most
    COPY_CALLS = {False: ("pread", "pwrite", "fallocate", "fdatasync", "rename", "fsync_dir"),
                  True: ("open", "pwrite", "fallocate", "mmap", "fdatasync", "rename", "fsync_dir")}
    COPY_NTH = {"pread": 6, "pwrite": 8, "fdatasync": 3, "fallocate": 2}

    # ---- choosing a kill
    def plan(self, lane):
        rng = lane.rng
        start = lane.n + 1
        plan = {"start": start, "rng": rng.randrange(1 << 30)}
        if self.args.lie_ack:
            plan["lie"] = True
        if not os.path.exists(lane.path) and rng.random() < 0.5:
            call = rng.choice(CREATE_CALLS + ("mmap",) if lane.cfg.get("backend") == "mmap"
                              else CREATE_CALLS)
            plan.update(kind="create", call=call, nth=1, end=start + 5)
            return plan
        r = rng.random()
        readers = r >= 0.82
        if readers:
            plan["readers"] = True
            plan["threads"] = rng.randint(1, 2) if self.timing else 0
            r = rng.random() * 0.75       # time or syscall below
        if r < 0.25 and self.timing:
            k = rng.uniform(0, rng.randint(1, 30))
            key = (lane.cid, lane.sync)
            delay = self.start_time.get(key, 0.003) + k * self.txn_time.get(key, 0.001)
            plan.update(kind="time", delay=delay, end=start + 100000)
            return plan
        if 0.70 <= r < 0.75 or (r < 0.25 and rng.random() < 0.2):
            at = start + rng.randrange(10)
            plan.update(kind="ack", at=at, end=at)
            return plan
        if 0.78 <= r < 0.82:
            at = start + rng.randrange(10)
            compact = rng.random() < 0.5
            call = rng.choice(self.COPY_CALLS[compact])
            plan.update(kind="copy", at=at, end=at, compact=compact, call=call,
                        nth=rng.randint(1, self.COPY_NTH.get(call, 1)))
            return plan
        # sync=False: the fdatasyncs are the flushes (sync_bytes, pages
        # first, sync_interval, db.sync(), close): kill there more often
        calls = ["pwrite"] * 4 + ["fdatasync"] * (3 if lane.sync else 6)
        if lane.cfg.get("backend") == "pread":
            calls += ["pread"]
        if lane.n < YOUNG and not readers:
            calls += ["growth"] * 3
            if lane.cfg.get("backend") == "mmap":
                calls += ["madvise"]
        if not readers:   # a snapshot held stops both: its pages are not free, its handle is not the last
            calls += ["punch", "ftruncate"]
        call = rng.choice(calls)
        if call == "growth":
            call = rng.choice(GROWTH_CALLS[lane.cfg.get("growth")])
        if call in ("fallocate", "mmap", "mremap", "munmap", "madvise"):
            nth = 1
            end = start + 120
        elif call in ("punch", "ftruncate"):   # after a commit, at a close: often enough in 40
            nth = 1
            end = start + 40
        else:
            k = rng.randint(1, 20)
            nth = 1 + int(rng.uniform(0, k) * lane.rate[call])
            end = start + k + 10
        plan.update(kind="syscall", call=call, nth=nth, end=end)
        return plan

    def add_flush_points(self, lane, plan):
        """db.sync() after some commits (sync=False), a close and reopen
        after a few (close flushes, then seals the newest meta)."""
        rng = random.Random("%s:flush" % plan["rng"])
        after = {}
        for i in range(plan["start"], min(plan["end"], plan["start"] + 400) + 1):
            r = rng.random()
            if not lane.sync and r < 0.25:
                after[str(i)] = "sync"
            elif 0.25 <= r < 0.28:
                after[str(i)] = "reopen"
        plan["after"] = after

    @staticmethod
    def expectation(lane, plan, msgs):
        """(where, expect): where the writer was when it was killed (in
        commit i, db.sync(), close() and the reopen, or between them), and
        what the file must then hold, where the kill point says: before a
        pwrite or a growth call in a commit, the commit's meta is not written
        yet (it is the commit's last write): acked; a punch comes after the
        commit is published: acked+1; a sync=True commit's one
        fdatasync comes after its meta: acked+1 (a commit that would sync
        its pages first is over 4 x the default sync_bytes, far more than
        any this workload makes); a
        sync=False commit's fdatasync may be a flush before its meta (pages
        first, or to reuse freed pages) or the one after it: either; in
        db.sync(), close() or the reopen nothing is in flight: acked."""
        marks = [m for m in msgs if m[0] in ("B", "A", "S", "s", "C", "c")]
        last = marks[-1][0] if marks else None
        where = {"B": "commit", "S": "db.sync()", "C": "close/reopen"}.get(last, "between")
        call = plan.get("call")
        if plan["kind"] != "syscall":
            return where, None
        if where == "commit":
            if call in ("pwrite", "fallocate", "mmap", "mremap", "munmap"):
                return where, "acked"
            if call == "punch":
                return where, "acked+1"
            if call == "fdatasync":
                return where, "acked+1" if lane.sync else None
            return where, None
        return where, "acked"

    # ---- one kill of a writer, then (sometimes) one during reopen, then verify
    def step(self, lane):
        plan = self.plan(lane)
        if plan["kind"] != "create":
            self.add_flush_points(lane, plan)
        deadline = time.monotonic() + plan["delay"] if plan["kind"] == "time" else None
        msgs, status, killed, stamps = run_child(writer_child, (lane, plan), deadline)
        acks = [int(m[1]) for m in msgs if m[0] == "A"]
        acked = acks[-1] if acks else plan["start"] - 1
        rec = dict(plan, acked=acked)
        rec.pop("rng", None)
        lane.history.append(rec)
        errors = [payload(m) for m in msgs if m[0] == "X"]
        if errors or not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL) \
                or killed == "hang":
            self.fail(lane, plan, acked, "writer %s%s: %s" % (
                describe_status(status), " (hung)" if killed == "hang" else "",
                errors[0] if errors else "no message"))
            return
        if plan["kind"] == "create":
            moment = "create:" + plan["call"] if not msgs else "idle"
        elif killed in ("time", "idle"):
            moment = killed
        elif plan["kind"] == "syscall":
            moment = "syscall:" + plan["call"]
        elif plan["kind"] == "copy":    # the copy writes nothing to the source: nothing in flight
            moment = "copy:done" if any(m[0] == "k" for m in msgs) else "copy:" + plan["call"]
            plan["expect"] = rec["expect"] = "acked" if any(m[0] == "K" for m in msgs) else None
        else:
            moment = plan["kind"]
        if moment == "idle":
            plan.pop("expect", None)
        elif moment.startswith("syscall:"):
            plan["where"], plan["expect"] = self.expectation(lane, plan, msgs)
            rec.update(where=plan["where"], expect=plan["expect"])
            self.by_where["%s in %s (sync=%s)" % (moment, plan["where"], lane.sync)] += 1
            if plan["expect"] is None:
                self.counts["kill point allows either"] += 1
        # rates for the next plans
        key = (lane.cid, lane.sync)
        if self.timing and "O" in stamps:
            self.start_time[key] = 0.8 * self.start_time.get(key, stamps["O"]) + 0.2 * stamps["O"]
            if len(acks) >= 5 and not plan.get("readers"):
                per = (stamps["A1"] - stamps["A0"]) / (len(acks) - 1)
                self.txn_time[key] = 0.8 * self.txn_time.get(key, per) + 0.2 * per
        if plan["kind"] == "syscall" and len(acks) >= 2 and plan["call"] in lane.rate:
            calls = int([m for m in msgs if m[0] == "A"][-1][2])
            lane.rate[plan["call"]] = 0.5 * lane.rate[plan["call"]] + 0.5 * calls / len(acks)
        self.count_kill(lane, moment, plan)

        reopen = None
        if (lane.rng.random() < 0.2 and self.counts["kills"] < self.budget   # a reopen kill is one more
                and os.path.exists(lane.path) and os.path.getsize(lane.path) > 0 and not creation_left(lane)):
            # the crashed file must be sound before the reopen is killed too
            msgs_c, status_c, _, _ = run_child(check_child, (lane,))
            bad = [payload(m) for m in msgs_c if m[0] != "C"]
            if bad or status_c != 0:
                self.fail(lane, plan, acked, "kvmap.check of the crashed file: %s %s" % (
                    describe_status(status_c), bad))
                return
            oc = lane.open_counts
            call = lane.rng.choices(list(oc), weights=list(oc.values()))[0]
            reopen = {"call": call, "nth": lane.rng.randint(1, oc[call])}
            if not lane.sync and lane.rng.random() < 0.3:
                # a writable open of a file whose newest commits are not
                # known durable flushes them before it builds on them
                reopen = {"call": "fdatasync", "nth": 1}
            rec["reopen"] = reopen
            msgs_r, status_r, _, _ = run_child(reopen_child, (lane, reopen))
            errors = [payload(m) for m in msgs_r if m[0] == "X"]
            if errors or not (os.WIFSIGNALED(status_r) and os.WTERMSIG(status_r) == signal.SIGKILL):
                self.fail(lane, plan, acked, "reopen child %s: %s" % (
                    describe_status(status_r), errors[0] if errors else "no message"))
                return
            during = not any(m[0] == "O" for m in msgs_r)
            self.counts["kills"] += 1
            self.counts["during reopen" if during else "right after reopen"] += 1
            self.by_moment["reopen:" + reopen["call"] if during else "reopen:after-open"]["kills"] += 1
            self.by_config[lane.cid] += 1

        self.verify(lane, plan, acked, moment)
        if plan["kind"] == "copy" and not lane.done:
            self.verify_copy(lane, plan, acked, moment)

    def verify_copy(self, lane, plan, acked, moment):
        msgs, status, _, _ = run_child(copy_check_child, (lane, acked, moment == "copy:done"))
        res = [m for m in msgs if m[0] in ("Y", "F", "X")]
        if status != 0 or not res or res[0][0] != "Y":
            self.fail(lane, plan, acked, "the copy (%s, compact=%s): %s" % (
                moment, plan["compact"], payload(res[0]) if res else describe_status(status)))
            return
        _, state, rest = res[0]
        self.counts["copy left %s" % state] += 1
        self.counts["copy left a temporary file"] += int(rest)

    def count_kill(self, lane, moment, plan):
        self.counts["kills"] += 1
        self.counts["writer kills"] += 1
        if plan.get("readers"):
            self.counts["with readers"] += 1
            if plan.get("threads"):
                self.counts["with reader threads"] += 1
        if moment.startswith("syscall:"):
            c = plan["call"]
            if plan.get("where") in ("db.sync()", "close/reopen"):
                self.counts["during flush"] += 1     # db.sync(), close's flush and seal, the reopen
            else:
                self.counts["during growth" if c in ("fallocate", "mmap", "mremap", "munmap")
                            else "during commit" if c in ("pwrite", "fdatasync") else "at other calls"] += 1
        self.by_moment[moment]["kills"] += 1
        self.by_config[lane.cid] += 1

    def verify(self, lane, plan, acked, moment):
        if os.path.exists(lane.path):
            shutil.copyfile(lane.path, lane.crash_copy)
        elif os.path.exists(lane.crash_copy):
            os.unlink(lane.crash_copy)
        lane.workload.model(acked)            # warm the memo the verifier inherits
        msgs, status, _, _ = run_child(verifier_child, (lane, acked))
        res = [m for m in msgs if m[0] in ("M", "F", "X")]
        if status != 0 or not res or res[0][0] != "M":
            why = payload(res[0]) if res else "no verdict"
            self.fail(lane, plan, acked, "verification (%s): %s" % (describe_status(status), why),
                      crashed=lane.crash_copy)
            return
        _, n, rest = res[0]
        n = int(n)
        note, counts = rest.split(" ", 1)
        lane.open_counts = {c: k for c, k in json.loads(counts).items() if c in DEFAULT_OPEN} \
            or dict(DEFAULT_OPEN)
        if note != "-":
            self.counts["create left " + note] += 1
        want = plan.get("expect")
        if plan["kind"] == "ack" and moment == "ack":
            want = "acked+1"
        got = "acked" if n == acked else "acked+1"
        if want and got != want and lane.workload.model(acked) == lane.workload.model(acked + 1):
            # transaction acked+1 changes nothing (deletes only absent keys):
            # its commit writes nothing, and verify() reports the first match
            self.counts["no-op transaction at the kill"] += 1
            want = None
        if want and got != want:
            self.fail(lane, plan, acked, "killed at %s (nth=%s): the file holds transaction %d, "
                      "but the kill point says %s (%d)" % (moment, plan.get("nth"), n, want,
                                                          acked + (want == "acked+1")),
                      crashed=lane.crash_copy)
            return
        self.counts["verified"] += 1
        self.counts["matched " + got] += 1
        self.by_moment[moment][got] += 1
        self.counts["transactions"] += n - (plan["start"] - 1)
        lane.n = n
        lane.workload.model(n)
        if self.log:
            print("%s: %s acked=%d matched=%s" % (lane.name, moment, acked, got), file=sys.stderr)

    def fail(self, lane, plan, acked, message, crashed=None):
        """Record a failure; ``crashed`` is the file as the kill left it
        (default: the lane's file, which nothing has touched yet)."""
        keep = os.path.join(self.args.dir, "failure-lane%d-step%d.kv" % (lane.index, len(lane.history)))
        crashed = crashed or lane.path
        if os.path.exists(crashed):
            shutil.copyfile(crashed, keep)
        cmd = "python tools/killtest.py --seed %s --lane %d%s%s%s%s%s" % (
            self.args.seed, lane.index,
            " --procs %s" % self.args.procs if self.args.procs != "mix" else "",
            " --page-size %d" % self.args.page_size if self.args.page_size else "",
            " --config %s" % self.args.config if self.args.config else "",
            " --sync %s" % self.args.sync if self.args.sync != "mix" else "",
            " --lie-ack" if self.args.lie_ack else "")
        f = {"lane": lane.index, "config": lane.cid, "sync": lane.sync,
             "workload_seed": lane.workload_seed, "plan": {k: v for k, v in plan.items() if k != "rng"},
             "acked": acked, "message": message, "kept_file": keep,
             "reproduce": cmd + (" --no-timing" if not self.timing else "") + "   (lane step %d)" % len(lane.history),
             "history_tail": lane.history[-8:]}
        self.failures.append(f)
        print("FAILURE in %s, step %d: %s\n  reproduce: %s\n  kept: %s" % (
            lane.name, len(lane.history), message, f["reproduce"], keep), file=sys.stderr)
        lane.done = True               # the file is suspect: start the next lane

    # ---- the run
    def run(self, first, step, budget):
        """Lanes first, first+step, ... until ``budget`` kills (or just lane
        ``--lane``).  Returns the raw counts (see merge())."""
        a = self.args
        index = first
        # A lane takes at most its share of the budget, so that this job's
        # lanes reach every configuration it owns however slowly a loaded
        # machine commits (a lane ends at a number of commits, not kills).
        share = budget if a.lane is not None else max(1, budget // -(-len(self.configs) // step))
        while self.counts["kills"] < budget:
            self.budget = min(budget, self.counts["kills"] + share)
            procs = self.process_lane(index)
            lane = (ProcLane if procs else Lane)(index, a.seed, self.configs[index % len(self.configs)], a.dir,
                                                 a.sync, a.page_size, timing=self.timing)
            self.counts["lanes"] += 1
            self.counts["lanes sync=%s" % lane.sync] += 1
            if procs:
                self.counts["process lanes"] += 1
                lane.lie = a.lie_ack
                before, failures = self.counts["kills"], len(self.failures)
                ProcRun(self, lane, self.budget).run()
                self.by_sync["sync=%s" % lane.sync] += self.counts["kills"] - before
                if len(self.failures) > failures and self.counts["kills"] == before:
                    break           # failed before its first kill: the next lanes could do the same forever
            while not procs and not lane.done and lane.n < lane.length and self.counts["kills"] < self.budget:
                before = self.counts["kills"]
                self.step(lane)
                self.by_sync["sync=%s" % lane.sync] += self.counts["kills"] - before
            for p in (lane.path, lane.path + "-lock", lane.crash_copy):
                if os.path.exists(p) and not a.keep:
                    os.unlink(p)
            if a.lane is not None:
                break
            index += step
        return {"counts": dict(self.counts), "by_moment": {m: dict(v) for m, v in self.by_moment.items()},
                "by_config": dict(self.by_config), "by_sync": dict(self.by_sync),
                "by_where": dict(self.by_where), "process_sizes": self.process_sizes, "failures": self.failures}

    def process_lane(self, index):
        """Whether lane ``index`` is a process lane (--procs; never without
        timing: processes interleave as the scheduler lets them)."""
        if not self.timing or self.args.procs == "off":
            return False
        return self.args.procs == "only" or index % PROC_EVERY == PROC_AT


# --------------------------------------------------------------------------
# process lanes: several writer and reader processes on one file

PROC_EVERY, PROC_AT = 5, 2      # --procs mix: lane L is a process lane when L % 5 == 2
WRITER_TIMEOUT = 30.0           # a survivor waiting longer than this for the writer lock: deadlock
STEP_SECONDS = 60.0             # no wait of a process lane may take longer: a hang, reported
LANE_SECONDS = 300.0            # nor the whole lane
CHURN_KEYS, CHURN_ROUNDS = 64, 8    # the file-size check at a process lane's end
PACE = 0.004                    # writers rest up to this long between commits, readers 8x between
                                # snapshots: the kills and checks, not the commits, are what a lane is for


def _lock_offsets():
    """Where the lock file keeps its reader slots (FORMAT.md §9), as
    native/format.h defines it."""
    with open(os.path.join(REPO, "native", "format.h")) as f:
        text = f.read()
    return [int(re.search(r"#define\s+%s\s+(\d+)" % name, text).group(1))
            for name in ("LOCK_OFF_NREADERS", "LOCK_OFF_READERS")]


LOCK_OFF_NREADERS, LOCK_OFF_READERS = _lock_offsets()


def reader_slots(path):
    """The occupied reader slots of the database's lock file, read raw:
    (txnid, handle) each."""
    with open(path + "-lock", "rb") as f:
        data = f.read()
    n = struct.unpack_from("<I", data, LOCK_OFF_NREADERS)[0]
    return [(slot >> 16, slot & 0xFFFF) for slot in struct.unpack_from("<%dQ" % n, data, LOCK_OFF_READERS)
            if slot != (1 << 64) - 1]


class Board:
    """What the processes of a process lane share beside the database: for
    each writer, the last transaction it began and the last whose commit()
    returned, in an anonymous shared mapping made before the forks.  A
    reader reads ``acked`` before it takes a snapshot and ``begun`` after:
    the writer's part of the snapshot must be its model after a transaction
    in between.  Aligned 8-byte stores and loads: never torn."""

    def __init__(self, writers):
        self.mem = mmap.mmap(-1, 16 * writers)
        self.begun = (ctypes.c_int64 * writers).from_buffer(self.mem)
        self.acked = (ctypes.c_int64 * writers).from_buffer(self.mem, 8 * writers)


class ProcLane(Lane):
    """A lane of several writer processes, each with its own key prefix and
    workload (derived from the lane's), and reader processes, on one file."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        rng = self.rng
        # lighter transactions than a single writer's (a lane makes thousands)
        big, grow_every = rng.choice(((64 << 10, 10), (256 << 10, 25)))
        self.writers = [WriterWorkload("%d:w%d" % (self.workload.seed, w), b"w%d/" % w, max_ops=20, big=big,
                                       grow_every=grow_every, clear_every=self.workload.clear_every)
                        for w in range(rng.choice((2, 2, 3)))]
        self.nreaders = rng.choice((2, 3))
        self.kills = rng.randint(25, 45)      # one at a time, then the lane's end
        # the file grows by this much at a time (kvmap.db's GROW_MIN and
        # GROW_MAX, read at open), not by half its size: it grows often, so
        # growth kills come soon
        self.grow_step = rng.choice((64 << 10, 256 << 10, 1 << 20))
        self.board = Board(len(self.writers))
        self.workload_seed = [wl.seed for wl in self.writers]

    @property
    def name(self):
        return "process lane %d (%s, sync=%s, %d writers, %d readers)" % (
            self.index, self.cid, self.sync, len(self.writers), self.nreaders)


class Control:
    """A child's end of its command pipe from the parent: a command a line."""

    def __init__(self, fd):
        self.fd, self.buf = fd, b""

    def poll(self, wait=0.0):
        """The commands that came, each a list of words; ``wait`` None
        blocks until one comes."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            data = os.read(self.fd, 4096)
            if not data:                # the parent is gone
                os._exit(0)
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode().split() for line in lines]

    def wait(self, word):
        while not any(c[0] == word for c in self.poll(None)):
            pass


def proc_writer(fd, ctl, lane, w, acked, seed):
    """Writer w of a process lane.  It opens the file and finds what its
    killed predecessor left of its part: the model after transaction
    ``acked`` or ``acked + 1`` ("M n"; "F" if neither), checks the handle
    (``db._check()`` while the other processes go on), then commits its
    transactions n+1, n+2, ... in turns with them, each bounded by
    WRITER_TIMEOUT (a LockedError is a deadlock), marking each on the pipe
    (B: beginning, L: holding the writer lock, P: in commit(), A: its
    commit returned) and on the board.  Commands, between transactions:
    ``K call nth`` arms a kill at that call; ``H`` holds the writer lock in
    the next transaction until the parent kills it; ``Q`` dies after the
    next commit returns, before acknowledging it; ``P`` closes, waits for
    ``G``, and reopens (the checkpoints)."""
    lib.kvm_fault_clear()
    kvmap.db.GROW_MIN = kvmap.db.GROW_MAX = lane.grow_step
    control = Control(ctl)
    wl, board = lane.writers[w], lane.board
    db = kvmap.open(lane.path, **lane.open_kw)
    _send(fd, "O")
    with db.snapshot() as snap:
        part = dict(snap.prefix_items(wl.prefix))
    n = next((k for k in (acked, acked + 1) if part == wl.model(k)), None)
    if n is None:
        _send(fd, "F", json.dumps("writer %d's part matches neither transaction %d nor %d: %s" % (
            w, acked, acked + 1, difference(part, wl.model(acked)))))
        return
    # under the writer lock: db._check() compares the newest commit's page
    # count with this handle's view of the file size (stats()), which
    # another process's growth and commit could make stale in between; and
    # the free space it checks is then the newest commit's
    with db.transaction(timeout=WRITER_TIMEOUT):
        db._check()
    board.acked[w] = n
    _send(fd, "M", n)
    rng = random.Random(seed)
    call, hold, die_after_commit = None, False, False
    i = n + 1
    while True:
        for cmd in control.poll():
            if cmd[0] == "K":
                call = cmd[1]
                _arm(call, int(cmd[2]))
            elif cmd[0] == "H":
                hold = True
            elif cmd[0] == "Q":
                die_after_commit = True
            elif cmd[0] == "P":
                db.close()
                _send(fd, "p")
                control.wait("G")
                db = kvmap.open(lane.path, **lane.open_kw)
                _send(fd, "g")
        ops = wl.ops(i)
        board.begun[w] = i
        _send(fd, "B", i)
        with db.transaction(timeout=WRITER_TIMEOUT) as txn:
            _send(fd, "L", i)
            for j, op in enumerate(ops):
                if hold and j == len(ops) // 2:
                    _send(fd, "H", i)
                    time.sleep(10 * STEP_SECONDS)      # until the parent kills it
                if op[0] == "put":
                    txn.put(op[1], op[2])
                else:
                    txn.pop(op[1], None)
            if lane.lie:            # self-test: a writer that acknowledges too early
                board.acked[w] = i
            _send(fd, "P", i)
        if die_after_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        board.acked[w] = i
        _send(fd, "A", i, lib.kvm_fault_calls(SYS[call]) if call else 0)
        i += 1
        r = rng.random()
        if not lane.sync and r < 0.1:
            _send(fd, "S")
            db.sync()
            _send(fd, "s")
        elif r > 0.98:
            _send(fd, "C")
            db.close()
            db = kvmap.open(lane.path, **lane.open_kw)
            _send(fd, "c")
        time.sleep(rng.uniform(0, PACE))


def proc_reader(fd, ctl, lane, seed):
    """A reader process of a process lane (a read-only handle, so that the
    checkpoints' kvmap.check may run beside it).  Snapshot after snapshot:
    its txnid never goes backwards, and a writer's part (each writer in
    turn: reading a part is most of a reader's work) equals the writer's
    model after a transaction between the one acknowledged before the
    snapshot began and the one begun after; a quarter of them are held
    across more (up to two at a time, for a long while) and must read the
    same when released.  Marks: "S txnid" a snapshot taken, "s" one
    released.  Commands: ``R`` takes a snapshot and holds it until the
    parent kills the reader ("r"); ``I`` releases every snapshot ("I") and
    waits for the end, holding the handle."""
    lib.kvm_fault_clear()
    control = Control(ctl)
    db = kvmap.open(lane.path, readonly=True, **lane.cfg)
    _send(fd, "O")
    rng = random.Random(seed)
    board, wls = lane.board, lane.writers
    last, turn = [0], [rng.randrange(len(wls))]

    def look():
        w = turn[0] = (turn[0] + 1) % len(wls)
        wl = wls[w]
        lo = board.acked[w]
        snap = db.snapshot()
        _send(fd, "S", snap.txnid)
        hi = board.begun[w]
        if snap.txnid < last[0]:
            raise AssertionError("snapshot txnid %d after %d: backwards" % (snap.txnid, last[0]))
        last[0] = snap.txnid
        part = dict(snap.prefix_items(wl.prefix))
        if not any(part == wl.model(k) for k in range(lo, hi + 1)):
            raise AssertionError("snapshot txnid %d: writer %d's part is its model after no transaction from %d "
                                 "(acknowledged) to %d (begun): vs %d: %s" % (
                                     snap.txnid, w, lo, hi, lo, difference(part, wl.model(lo))))
        return snap, wl, part

    def release(snap, wl, part):
        if dict(snap.prefix_items(wl.prefix)) != part:
            raise AssertionError("snapshot txnid %d changed while it was held" % snap.txnid)
        snap.close()
        _send(fd, "s")

    held, pinned = collections.deque(), []
    while True:
        for cmd in control.poll():
            if cmd[0] == "R":
                pinned.append(look())
                _send(fd, "r")
            elif cmd[0] == "I":
                for snap, _, _ in list(held) + pinned:
                    snap.close()
                _send(fd, "I")
                while True:                 # the parent kills it
                    control.poll(None)
        seen = look()
        if len(held) < 2 and rng.random() < 0.25:
            held.append(seen)
        else:
            release(*seen)
        while held and rng.random() < 0.15:
            release(*held.popleft())
        time.sleep(rng.uniform(0, 8 * PACE))


def size_check(db, lane, dead, holders):
    """A dead reader pins no page past the next write transaction, and the
    file then stops growing (the lane's end: ``holders`` readers were
    killed holding snapshots, no writer has the file open, the reader that
    keeps the lock region holds no snapshot, ``dead`` were the occupied
    reader slots before this handle opened).  Page counts, not timings:
    nothing else runs.

    * the dead holders' slots are there: at least ``holders``;
    * after one write transaction no slot is occupied;
    * a churn rewriting CHURN_KEYS values of a page each (two or more pages
      each), CHURN_ROUNDS times, leaves the pages in use or pending
      (hwm - free) within CHURN_KEYS of where two warm-up rounds left them
      (this handle syncs: each round reuses the pages the one before freed);
    * calibration: the same churn under a live snapshot keeps the
      snapshot's versions of the values, one round's worth (>= 2 x
      CHURN_KEYS pages) more: a snapshot pins the pages of its own commit,
      and no others (FORMAT.md §7, the reuse rule), so a slot left behind
      pins the pages of its commit, which this churn does not rewrite:
      the check that no slot is occupied is what finds it."""
    if len(dead) < holders:
        raise crashkit.CrashCheckFailed("%d readers died holding snapshots, but only %d reader slots are "
                                        "occupied: %s" % (holders, len(dead), dead))
    with db.transaction(timeout=WRITER_TIMEOUT) as txn:
        txn[b"~sweep"] = b"the next write transaction"
    left = reader_slots(lane.path)
    if left:
        raise crashkit.CrashCheckFailed("after a write transaction, reader slots of dead processes remain "
                                        "(txnid, handle): %s (before it: %s)" % (left, dead))

    def churn(rounds):
        for r in range(rounds):
            with db.transaction(timeout=WRITER_TIMEOUT) as txn:
                for k in range(CHURN_KEYS):
                    txn[b"~churn%03d" % k] = bytes([r % 251]) * db.page_size

    def in_use():
        st = db.stats()
        return st["pages"] - st["free_pages"]
    churn(2)
    c0 = in_use()
    churn(CHURN_ROUNDS)
    c1 = in_use()
    with db.snapshot():
        churn(CHURN_ROUNDS)
        c2 = in_use()
    if c1 - c0 > CHURN_KEYS:
        raise crashkit.CrashCheckFailed("the file keeps growing with no reader: %d rounds of the churn took %d "
                                        "more pages (bound %d)" % (CHURN_ROUNDS, c1 - c0, CHURN_KEYS))
    if c2 - c1 < 2 * CHURN_KEYS:
        raise crashkit.CrashCheckFailed("calibration: the churn under a live snapshot took only %d more pages"
                                        % (c2 - c1))
    return {"dead": len(dead), "growth": c1 - c0, "pinned": c2 - c1}


def proc_check_child(fd, lane, acked, allow_next, holders):
    """A process lane's check while no writer has the file open (readers
    may, read-only; or no process at all, and this open rebuilds the lock
    region from the file): kvmap.check; a writable open finds every
    writer's part at its model after transaction ``acked[w]`` (or
    ``acked[w] + 1`` where ``allow_next[w]``: the writer was killed inside
    a commit); ``db._check()``; with ``holders`` not None the lane's end,
    ``size_check``; kvmap.check again.  Says "M" and the counts found, as
    JSON."""
    lib.kvm_fault_clear()
    try:
        crashkit.checked(lane.path, "with no writer running")
        dead = reader_slots(lane.path) if holders is not None else None
        db = kvmap.open(lane.path, **dict(lane.cfg, sync=True))
        try:
            ns = []
            with db.snapshot() as snap:
                for w, wl in enumerate(lane.writers):
                    part = dict(snap.prefix_items(wl.prefix))
                    n = next((k for k in (acked[w], acked[w] + 1)[:1 + allow_next[w]] if part == wl.model(k)), None)
                    if n is None:
                        raise crashkit.CrashCheckFailed("writer %d's part matches neither transaction %d%s: %s" % (
                            w, acked[w], " nor %d" % (acked[w] + 1) if allow_next[w] else "",
                            difference(part, wl.model(acked[w]))))
                    ns.append(n)
            db._check()
            sizes = None
            if holders is not None:
                sizes = size_check(db, lane, dead, holders)
                db._check()
        finally:
            db.close()
        crashkit.checked(lane.path, "after a writable handle closed")
    except Exception as e:
        _send_verdict(fd, e)
        return
    _send(fd, "M", json.dumps({"n": ns, "sizes": sizes}, separators=(",", ":")))


class LaneFailure(Exception):
    """A process lane failed: the message says how."""


class ProcChild:
    """A process of a process lane, as the parent sees it."""

    def __init__(self, role, slot, pid, rfd, ctl):
        self.role, self.slot, self.pid, self.rfd, self.ctl = role, slot, pid, rfd, ctl
        self.alive, self.status = True, None
        self.doomed = False     # its death is the parent's doing (a kill, or an armed one)
        self.buf = b""
        self.mark = None        # writer: the last of B L H P A S s C c, where it is
        self.held = 0           # reader: snapshots open
        self.acks = 0           # writer: commits acknowledged
        self.calls = 0          # writer: calls of the armed system call, at the last acknowledgement
        self.got = {}           # replies: "O", "M", "H", "r", "p", "g", "I" -> the rest of the line
        self.error = None

    @property
    def name(self):
        return "%s %d" % (self.role, self.slot)

    def tell(self, *words):
        try:
            os.write(self.ctl, (" ".join(str(w) for w in words) + "\n").encode())
        except BrokenPipeError:     # died meanwhile: the wait that follows finds out
            pass


WRITER_MARKS = set("BLHPASsCc")
WHERE = {"B": "at begin", "L": "holding the writer lock", "H": "holding the writer lock",
         "P": "in commit", "S": "in db.sync()", "C": "in close/reopen"}


class ProcRun:
    """The parent's side of one process lane: the writers and readers are
    started, then killed one at a time (``step``) and started again, with
    checkpoints now and then and the checks of the lane's end (``finish``).
    Every wait is bounded (STEP_SECONDS, and LANE_SECONDS for the lane):
    a hang is a failure, never a stuck run."""

    def __init__(self, harness, lane, budget):
        self.h, self.lane, self.budget = harness, lane, budget
        self.writers = [None] * len(lane.writers)
        self.readers = [None] * lane.nreaders
        self.deadline = time.monotonic() + LANE_SECONDS
        self.plan = {}
        self.crashed = None     # the file as everyone's death left it, while the check of it runs

    def children(self):
        return [c for c in self.writers + self.readers if c is not None]

    # ---- processes
    def warm(self):
        """Bring every writer's model up to its acknowledged count, for the
        children to inherit: a process started late in a lane would replay
        thousands of transactions to build it."""
        for w, wl in enumerate(self.lane.writers):
            wl.model(self.lane.board.acked[w])

    def spawn(self, role, slot, fn, *args):
        self.warm()
        inherited = [fd for c in self.children() if c.alive for fd in (c.rfd, c.ctl)]
        r, w = os.pipe()
        cr, cw = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in [r, cw] + inherited:
                    os.close(fd)
                _die_with_parent()
                fn(w, cr, *args)
            except BaseException:
                _send_error(w, "%s %d" % (role, slot))
            finally:
                os._exit(0)
        os.close(w)
        os.close(cr)
        c = ProcChild(role, slot, pid, r, cw)
        (self.writers if role == "writer" else self.readers)[slot] = c
        return c

    def spawn_writer(self, w, acked):
        return self.spawn("writer", w, proc_writer, self.lane, w, acked, self.lane.rng.randrange(1 << 30))

    def spawn_reader(self, r):
        return self.spawn("reader", r, proc_reader, self.lane, self.lane.rng.randrange(1 << 30))

    def pump(self, wait):
        """Read what the children say, for up to ``wait`` seconds; reap the
        dead."""
        live = {c.rfd: c for c in self.children() if c.alive}
        if not live:
            time.sleep(wait)
            return
        ready, _, _ = select.select(list(live), [], [], wait)
        for fd in ready:
            c = live[fd]
            data = os.read(fd, 1 << 16)
            if not data:
                os.close(c.rfd)
                os.close(c.ctl)
                _, c.status = os.waitpid(c.pid, 0)
                c.alive = False
                continue
            c.buf += data
            *lines, c.buf = c.buf.split(b"\n")
            for line in lines:
                self.heard(c, *line.decode().split(" ", 1))

    def heard(self, c, word, rest=""):
        if word in ("X", "F"):
            c.error = c.error or json.loads(rest)
            return
        if c.role == "writer" and word in WRITER_MARKS:
            c.mark = word
            if word == "A":
                c.acks += 1
                c.calls = int(rest.split()[1])
                self.h.counts["process commits"] += 1
        elif c.role == "reader" and word in ("S", "s"):
            c.held += 1 if word == "S" else -1
            self.h.counts["process snapshots taken by readers"] += word == "S"
        c.got[word] = rest

    def trouble(self):
        for c in self.children():
            if c.error:
                return "%s: %s" % (c.name, c.error)
            if not c.alive and not c.doomed:
                return "%s %s" % (c.name, describe_status(c.status))
            if not c.alive and not (os.WIFSIGNALED(c.status) and os.WTERMSIG(c.status) == signal.SIGKILL):
                return "%s %s, not by the kill" % (c.name, describe_status(c.status))
        return None

    def wait(self, done, what, bound=STEP_SECONDS):
        """Pump until ``done()``; LaneFailure if a child reports a failure or
        dies unbidden, or when ``bound`` seconds (or the lane's) pass
        first: a hang."""
        limit = min(time.monotonic() + bound, self.deadline)
        while True:
            problem = self.trouble()
            if problem:
                raise LaneFailure(problem)
            if done():
                return
            now = time.monotonic()
            if now >= limit:
                raise LaneFailure("hang: %s took more than %.0f s%s" % (
                    what, bound, " (the lane's bound)" if limit == self.deadline else ""))
            self.pump(min(0.01, limit - now))

    def sleep(self, seconds):
        end = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= end, "a pause of %.3f s" % seconds)

    def kill(self, *victims):
        victims = [c for c in victims if c.alive]
        for c in victims:
            c.doomed = True
            os.kill(c.pid, signal.SIGKILL)
        self.wait(lambda: not any(c.alive for c in victims), "the death of " + ", ".join(c.name for c in victims))

    def start_writer(self, w, acked):
        """Start writer w again; returns the transaction its part was found at."""
        c = self.spawn_writer(w, acked)
        self.wait(lambda: "M" in c.got, "writer %d's open and check" % w)
        return int(c.got["M"])

    def start_reader(self, r):
        c = self.spawn_reader(r)
        self.wait(lambda: "O" in c.got, "reader %d's open" % r)

    def check(self, acked, allow_next, holders=None):
        """Run proc_check_child (readers go on meanwhile); its result."""
        self.warm()
        msgs, status, killed, _ = run_child(proc_check_child, (self.lane, acked, allow_next, holders))
        res = [m for m in msgs if m[0] in ("M", "F", "X")]
        if status != 0 or killed or not res or res[0][0] != "M":
            raise LaneFailure("check with no writer running (%s%s): %s" % (
                describe_status(status), ", hung" if killed else "", payload(res[0]) if res else "no verdict"))
        return json.loads(" ".join(res[0][1:]))

    # ---- the lane
    def run(self):
        lane, rng, counts = self.lane, self.lane.rng, self.h.counts
        try:
            for w in range(len(self.writers)):      # all at once: they race to create the file
                self.spawn_writer(w, 0)
            self.wait(lambda: all("M" in c.got for c in self.writers), "the writers' first open")
            for r in range(len(self.readers)):
                self.start_reader(r)
            done, checkpoint = 0, rng.randint(6, 12)
            while done < lane.kills and counts["kills"] < self.budget:
                self.step()
                done += 1
                if done == checkpoint and done < lane.kills:
                    self.checkpoint()
                    checkpoint += rng.randint(6, 12)
            self.finish()
        except LaneFailure as e:
            self.stop()         # the file kept is the one the failure saw
            self.h.fail(lane, self.plan, list(lane.board.acked), str(e), crashed=self.crashed)
        finally:
            self.stop()

    def stop(self):
        """Kill every child still alive, without waiting on anything else."""
        for c in self.children():
            if c.alive:
                os.kill(c.pid, signal.SIGKILL)
                os.close(c.rfd)
                os.close(c.ctl)
                os.waitpid(c.pid, 0)
                c.alive = False

    def record(self, kind, moment, where=None, got=None):
        counts = self.h.counts
        counts["kills"] += 1
        counts["process kills"] += 1
        counts["process %s kills" % kind] += 1
        self.h.by_moment["procs:%s:%s" % (kind, moment)]["kills"] += 1
        if got:
            self.h.by_moment["procs:%s:%s" % (kind, moment)][got] += 1
        if where:
            self.h.by_where["procs: %s %s %s (sync=%s)" % (kind, moment, where, self.lane.sync)] += 1
        self.h.by_config[self.lane.cid] += 1
        self.plan["moment"] = moment
        self.lane.history.append(dict(self.plan))
        if self.h.log:
            print("%s: %s %s %s%s" % (self.lane.name, self.plan["victim"], moment, where,
                                      " matched " + got if got else ""), file=sys.stderr)

    def step(self):
        rng = self.lane.rng
        if rng.random() < 0.6:
            self.kill_writer(rng.randrange(len(self.writers)))
        else:
            self.kill_reader(rng.randrange(len(self.readers)))

    def kill_writer(self, w):
        """Kill writer w at a system call (inside a commit, inside growth, in
        a flush), while it holds the writer lock, right after a commit
        returned, or after a random delay; start it again and check what it
        finds of its part against where it was."""
        lane, rng, c, counts = self.lane, self.lane.rng, self.writers[w], self.h.counts
        self.plan = {"step": len(lane.history), "victim": c.name}
        pin = None          # a reader made to hold a snapshot meanwhile
        r = rng.random()
        if r < 0.5:
            calls = ["pwrite"] * 4 + ["fdatasync"] * (3 if lane.sync else 5) + ["growth"] * 3
            if lane.cfg.get("backend") == "pread":
                calls.append("pread")
            call = rng.choice(calls)
            if call == "growth":
                call = rng.choice(GROWTH_CALLS[lane.cfg.get("growth")])
                nth, k = 1, 40
                # a reader holds a snapshot from now on (it dies next): no
                # page can be reused, so the file grows a step every few
                # commits
                pin = rng.randrange(len(self.readers))
                self.readers[pin].tell("R")
                self.wait(lambda: "r" in self.readers[pin].got, "reader %d to take a snapshot" % pin)
            else:
                k = rng.randint(1, 10)
                nth = 1 + int(rng.uniform(0, k) * lane.rate[call])
            self.plan.update(kind="syscall", call=call, nth=nth)
            start = c.acks
            c.doomed = True
            c.tell("K", call, nth)
            self.wait(lambda: not c.alive or c.acks >= start + k + 10, "writer %d's death at %s" % (w, call))
            moment = ("syscall:" if not c.alive else "idle:") + call
            if c.alive:
                self.kill(c)
            if c.acks - start >= 2 and call in lane.rate:
                lane.rate[call] = 0.5 * lane.rate[call] + 0.5 * c.calls / (c.acks - start)
        elif r < 0.7:
            self.plan.update(kind="hold")
            c.tell("H")
            self.wait(lambda: "H" in c.got, "writer %d to hold the writer lock" % w)
            self.sleep(rng.uniform(0, 0.02))        # the others wait for it meanwhile
            self.kill(c)
            moment = "hold"
        elif r < 0.8:
            self.plan.update(kind="ack")
            c.doomed = True
            c.tell("Q")
            self.wait(lambda: not c.alive, "writer %d's death after a commit" % w)
            moment = "ack"
        else:
            self.plan.update(kind="time")
            self.sleep(rng.uniform(0, 0.05))
            self.kill(c)
            moment = "time"
        acked = lane.board.acked[w]
        where = WHERE.get(c.mark, "between transactions")
        if moment == "ack":
            expect = "acked+1"
        elif where == "in commit" and (not moment.startswith("syscall:") or moment == "syscall:fdatasync"):
            # before its meta write (acked), or after it: published before
            # the kill (acked+1) or not (acked: the survivors' lock region
            # never saw it, and the next commit takes its slot)
            expect = None
        else:
            expect = "acked"        # nothing written that a meta reaches
        self.plan.update(where=where, expect=expect, acked=acked)
        if rng.random() < 0.3 and expect is None:      # drawn always: the lane's draws follow its seed
            # its commit may be written and not published: kill the others
            # before they commit past it (a next writer may be writing pages
            # the region thinks free), and let a first open, which builds
            # the lock region from the file, judge what the file holds
            counts["process everyone killed right after a kill inside commit()"] += 1
            n = self.everyone_killed(0.01)[w]
        else:
            n = self.start_writer(w, acked)
        got = "acked" if n == acked else "acked+1"
        if expect and got != expect and lane.writers[w].model(acked) == lane.writers[w].model(acked + 1):
            # transaction acked+1 changes nothing (deletes only absent keys):
            # its commit writes nothing, and the writer reports the first match
            counts["process no-op transaction at the kill"] += 1
            expect = None
        if expect and got != expect:
            raise LaneFailure("writer %d killed at %s %s: its part is at transaction %d, but the kill point says "
                              "%s (%d)" % (w, moment, where, n, expect, acked + (expect == "acked+1")))
        counts["process verified"] += 1
        counts["process matched " + got] += 1
        if where in ("holding the writer lock", "in commit"):
            counts["process writer kills holding the writer lock"] += 1
        if where == "in commit":
            counts["process writer kills in commit"] += 1
        if moment in ("syscall:fallocate", "syscall:mmap", "syscall:mremap", "syscall:munmap"):
            counts["process writer kills at growth calls"] += 1
        self.record("writer", moment, where, got)
        if pin is not None:
            self.kill_reader(pin, pinned=True)

    def kill_reader(self, r, pinned=False):
        """Kill reader r holding a snapshot it took for that (``pinned``:
        it already holds one), or after a random delay (holding snapshots
        or not); start it again."""
        rng, c = self.lane.rng, self.readers[r]
        self.plan = {"step": len(self.lane.history), "victim": c.name}
        if pinned or rng.random() < 0.5:
            moment = "snapshot"
            if not pinned:
                c.tell("R")
                self.wait(lambda: "r" in c.got, "reader %d to take a snapshot" % r)
        else:
            moment = "time"
        self.plan.update(kind=moment)
        self.sleep(rng.uniform(0, 0.05))
        self.kill(c)
        self.count_reader(c, moment)
        self.start_reader(r)

    def count_reader(self, c, moment):
        if c.held > 0:
            self.h.counts["process reader kills holding a snapshot"] += 1
        self.record("reader", moment, "holding a snapshot" if c.held > 0 else "between snapshots")

    def checkpoint(self):
        """Every writer stopped: either paused (closed; the readers go on)
        or everyone killed at once (then the check's open is the first and
        rebuilds the lock region from the file); the check; everyone goes
        on."""
        lane, board, counts = self.lane, self.lane.board, self.h.counts
        self.plan = {"step": len(lane.history), "checkpoint": True}
        if lane.rng.random() < 0.5:
            self.pause()
            self.check(list(board.acked), [False] * len(self.writers))
            for c in self.writers:
                c.tell("G")
            self.wait(lambda: all("g" in c.got for c in self.writers), "the writers' reopen")
            counts["process checkpoints with the writers paused"] += 1
        else:
            self.everyone_killed(0.03)

    def everyone_killed(self, delay):
        """After a random delay up to ``delay`` seconds, kill every process
        still alive at once; check the file from a first open; start
        everyone again.  Returns the transaction each writer's part was
        found at."""
        lane, board, counts = self.lane, self.lane.board, self.h.counts
        self.sleep(lane.rng.uniform(0, delay))
        self.kill(*self.children())
        acked = list(board.acked)
        allow = [c.mark == "P" for c in self.writers]       # killed inside a commit
        shutil.copyfile(lane.path, lane.crash_copy)
        self.crashed = lane.crash_copy
        ns = self.check(acked, allow)["n"]
        self.crashed = None
        for w, n in enumerate(ns):
            board.acked[w] = board.begun[w] = n
            self.spawn_writer(w, n)
        self.wait(lambda: all("M" in c.got for c in self.writers), "the writers' open after everyone died")
        for w, c in enumerate(self.writers):
            if int(c.got["M"]) != ns[w]:
                raise LaneFailure("writer %d finds its part at transaction %s, the check found %d" % (
                    w, c.got["M"], ns[w]))
        for r in range(len(self.readers)):
            self.start_reader(r)
        counts["process checkpoints after killing everyone"] += 1
        counts["process matched acked+1 after killing everyone"] += sum(n != a for n, a in zip(ns, acked))
        return ns

    def pause(self):
        for c in self.writers:
            c.got.pop("g", None)
            c.tell("P")
        self.wait(lambda: all("p" in c.got for c in self.writers), "the writers' pause")
        for c in self.writers:
            c.got.pop("p")

    def finish(self):
        """The lane's end: every reader but one takes a snapshot, the writers
        commit twice more each (the snapshots are old) and stop, the other
        reader lets its snapshots go (its handle keeps the lock region), the
        holders are killed; then the check with size_check, and, everyone
        gone, the check again from a first open."""
        lane, board, counts = self.lane, self.lane.board, self.h.counts
        self.plan = {"step": len(lane.history), "end": True}
        keeper, holders = self.readers[0], self.readers[1:]
        for c in holders:
            c.tell("R")
        self.wait(lambda: all("r" in c.got for c in holders), "the readers' snapshots")
        base = [c.acks for c in self.writers]
        self.wait(lambda: all(c.acks >= b + 2 for c, b in zip(self.writers, base)), "two more commits each")
        self.pause()
        keeper.tell("I")
        self.wait(lambda: "I" in keeper.got, "the keeper's snapshots to go")
        self.kill(*holders)
        for c in holders:
            self.plan = {"step": len(lane.history), "victim": c.name, "kind": "end"}
            self.count_reader(c, "end")
        self.plan = {"step": len(lane.history), "end": True}
        acked = list(board.acked)
        res = self.check(acked, [False] * len(self.writers), holders=len(holders))
        self.kill(*self.children())
        self.check(acked, [False] * len(self.writers))
        counts["process size checks"] += 1
        counts["process dead reader slots swept"] += res["sizes"]["dead"]
        self.h.process_sizes.append(res["sizes"])


def merge(parts):
    total = {"counts": collections.Counter(), "by_moment": collections.defaultdict(collections.Counter),
             "by_config": collections.Counter(), "by_sync": collections.Counter(),
             "by_where": collections.Counter(), "process_sizes": [], "failures": []}
    for p in parts:
        total["counts"].update(p["counts"])
        for m, v in p["by_moment"].items():
            total["by_moment"][m].update(v)
        total["by_config"].update(p["by_config"])
        total["by_sync"].update(p["by_sync"])
        total["by_where"].update(p["by_where"])
        total["process_sizes"].extend(p["process_sizes"])
        total["failures"].extend(p["failures"])
    return total


def run_jobs(args, configs):
    """Run the lanes in ``args.jobs`` forked workers (lane j, j+jobs, ...);
    returns the merged counts."""
    if args.lane is not None or args.jobs <= 1:
        h = Harness(args, configs)
        return merge([h.run(args.lane or 0, 1, args.kills)])
    workers = []
    for j in range(args.jobs):
        budget = args.kills // args.jobs + (j < args.kills % args.jobs)
        out = os.path.join(args.dir, "worker%d.json" % j)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with_parent()
                res = Harness(args, configs).run(j, args.jobs, budget)
                with open(out, "w") as f:
                    json.dump(res, f)
            except BaseException:
                traceback.print_exc()
                code = 2
            finally:
                os._exit(code)
        workers.append((pid, out))
    parts = []
    for pid, out in workers:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit("killtest worker %d %s" % (pid, describe_status(status)))
        with open(out) as f:
            parts.append(json.load(f))
        os.unlink(out)
    return merge(parts)


def report(args, total, elapsed):
    c = total["counts"]
    failures = total["failures"]
    out = {
        "seed": args.seed, "seconds": round(elapsed, 1), "jobs": args.jobs,
        "kills": c["kills"], "writer_kills": c["writer kills"],
        "during_reopen": c["during reopen"], "right_after_reopen": c["right after reopen"],
        "with_readers": c["with readers"], "with_reader_threads": c["with reader threads"],
        "during_commit": c["during commit"], "during_growth": c["during growth"],
        "verified": c["verified"], "matched_acked": c["matched acked"],
        "matched_acked_plus_1": c["matched acked+1"], "transactions": c["transactions"],
        "lanes": c["lanes"], "lanes_sync_off": c["lanes sync=False"],
        "create_left_empty": c["create left emptyfile"], "create_left_no_file": c["create left nofile"],
        "create_left_leftover": c["create left leftover"],
        "noop_txn_at_kill": c["no-op transaction at the kill"],
        "either_allowed": c["kill point allows either"],
        "during_flush": c["during flush"],
        "copy_left_absent": c["copy left absent"], "copy_left_complete": c["copy left complete"],
        "copy_left_temporary": c["copy left a temporary file"],
        "process_lanes": c["process lanes"], "process_kills": c["process kills"],
        "process_writer_kills": c["process writer kills"], "process_reader_kills": c["process reader kills"],
        "process_writer_kills_holding_lock": c["process writer kills holding the writer lock"],
        "process_writer_kills_in_commit": c["process writer kills in commit"],
        "process_writer_kills_at_growth": c["process writer kills at growth calls"],
        "process_reader_kills_holding_snapshot": c["process reader kills holding a snapshot"],
        "process_verified": c["process verified"], "process_matched_acked": c["process matched acked"],
        "process_matched_acked_plus_1": c["process matched acked+1"],
        "process_checkpoints_paused": c["process checkpoints with the writers paused"],
        "process_checkpoints_all_killed": c["process checkpoints after killing everyone"],
        "process_all_killed_after_commit_kill": c["process everyone killed right after a kill inside commit()"],
        "process_all_killed_matched_acked_plus_1": c["process matched acked+1 after killing everyone"],
        "process_size_checks": c["process size checks"],
        "process_dead_slots_swept": c["process dead reader slots swept"],
        "process_commits": c["process commits"], "process_snapshots": c["process snapshots taken by readers"],
        "process_churn_growth_max": max((z["growth"] for z in total["process_sizes"]), default=None),
        "process_churn_pinned_min": min((z["pinned"] for z in total["process_sizes"]), default=None),
        "by_moment": {m: dict(v) for m, v in sorted(total["by_moment"].items())},
        "by_config": dict(sorted(total["by_config"].items())),
        "by_sync": dict(sorted(total["by_sync"].items())),
        "by_where": dict(sorted(total["by_where"].items())),
        "failures": failures,
    }
    lines = [
        "kvmap killtest: seed %s, %d kills in %.1f s with %d job(s) (%d lanes, %d with sync=False;"
        " %d transactions committed)" % (out["seed"], out["kills"], elapsed, args.jobs, out["lanes"],
                                         out["lanes_sync_off"], out["transactions"]),
        "  writer kills %d: during commit %d (pwrite/fdatasync), during growth %d, in db.sync() or close()"
        " and reopen %d, with readers %d (%d with reader threads)" % (
            out["writer_kills"], out["during_commit"], out["during_growth"], out["during_flush"],
            out["with_readers"], out["with_reader_threads"]),
        "  reopen kills %d: during open %d, right after it %d" % (
            out["during_reopen"] + out["right_after_reopen"], out["during_reopen"],
            out["right_after_reopen"]),
        "  process lanes %d: kills %d, of writers %d (holding the writer lock %d, in commit %d, at growth calls"
        " %d), of readers %d (holding a snapshot %d); %d commits, %d reader snapshots" % (
            out["process_lanes"], out["process_kills"], out["process_writer_kills"],
            out["process_writer_kills_holding_lock"], out["process_writer_kills_in_commit"],
            out["process_writer_kills_at_growth"], out["process_reader_kills"],
            out["process_reader_kills_holding_snapshot"], out["process_commits"], out["process_snapshots"]),
        "    writers started again and verified %d: matched acked %d, acked+1 %d; checkpoints: writers paused %d,"
        " everyone killed %d (%d right after a writer died inside commit()); lane ends %d (dead reader slots"
        " swept %d, churn growth at most %s pages, pinned at least %s)" % (
            out["process_verified"], out["process_matched_acked"], out["process_matched_acked_plus_1"],
            out["process_checkpoints_paused"], out["process_checkpoints_all_killed"],
            out["process_all_killed_after_commit_kill"], out["process_size_checks"],
            out["process_dead_slots_swept"], out["process_churn_growth_max"], out["process_churn_pinned_min"]),
        "  verified %d: matched acked %d, acked+1 %d; failures (lost or partial commits, bad checks,"
        " crashes, hangs): %d" % (out["verified"], out["matched_acked"], out["matched_acked_plus_1"], len(failures)),
        "  by moment (kills / matched acked / acked+1):",
    ]
    for m, v in out["by_moment"].items():
        lines.append("    %-34s %6d %6d %6d" % (m, v.get("kills", 0), v.get("acked", 0), v.get("acked+1", 0)))
    lines.append("  by config: " + ", ".join("%s %d" % kv for kv in out["by_config"].items()))
    lines.append("  by sync: " + ", ".join("%s %d" % kv for kv in out["by_sync"].items()))
    lines.append("  system-call kills by where the writer was (procs: process lanes, every kill):")
    lines += ["    %-66s %6d" % kv for kv in out["by_where"].items()]
    print("\n".join(lines))
    for f in failures:
        print("FAILURE: lane %d (%s, sync=%s): %s\n  reproduce: %s\n  kept: %s" % (
            f["lane"], f["config"], f["sync"], f["message"], f["reproduce"], f["kept_file"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def check_child(fd, lane):
    from kvmap.checker import check
    rep = check(lane.path)
    if rep.ok:
        _send(fd, "C")
    else:
        _send(fd, "F", json.dumps("; ".join("%s page %s: %s" % (p.kind, p.page, p.message)
                                            for p in rep.problems[:5])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=None, help="kills to run (default 300; --long: 10000)")
    p.add_argument("--long", action="store_true", help="the long run: 10,000 kills unless --kills")
    p.add_argument("--seed", default="1", help="master seed (lane L draws from Random('SEED:L'))")
    p.add_argument("--config", default=None, help="comma-separated config ids (default: all 7)")
    p.add_argument("--sync", choices=("on", "off", "mix"), default="mix")
    p.add_argument("--page-size", type=int, default=None, help="page size of new files (default: the engine's)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, each running every jobs-th lane")
    p.add_argument("--lane", type=int, default=None, help="run only this lane (a reproducer)")
    p.add_argument("--procs", choices=("mix", "only", "off"), default="mix",
                   help="process lanes (writer and reader processes on one file): every %dth lane (mix), "
                        "every lane (only), none (off; also with --no-timing)" % PROC_EVERY)
    p.add_argument("--no-timing", action="store_true",
                   help="no delay kills and no reader threads: every lane is deterministic")
    p.add_argument("--lie-ack", action="store_true",
                   help="self-test: the writer acknowledges before commit(); the harness must fail")
    p.add_argument("--json", default=None, help="write the counts here")
    p.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the database files")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per kill on stderr")
    a = p.parse_args(argv)
    if a.kills is None:
        a.kills = 10000 if a.long else 300
    if a.no_timing and a.procs == "only":
        p.error("--procs only needs timing: process lanes are not deterministic")
    configs = CONFIGS
    if a.config:
        want = a.config.split(",")
        configs = [c for c in CONFIGS if config_id(c) in want]
        if len(configs) != len(want):
            p.error("unknown config in %r; known: %s" % (a.config, ", ".join(config_id(c) for c in CONFIGS)))
    made = a.dir is None
    a.dir = tempfile.mkdtemp(prefix="kvmap-killtest-") if made else a.dir
    os.makedirs(a.dir, exist_ok=True)
    t0 = time.monotonic()
    total = run_jobs(a, configs)
    out = report(a, total, time.monotonic() - t0)
    if out["failures"]:
        print("crashed files kept in %s" % a.dir, file=sys.stderr)
    elif made and not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
