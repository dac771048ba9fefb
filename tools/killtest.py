#!/usr/bin/env python3
"""Process-kill crash harness for kvmap (issue 5).

    python tools/killtest.py [--kills N] [--long] [--seed S] [--config ID,...]
                             [--sync on|off|mix] [--jobs J] [--lane L]
                             [--no-timing] [--json FILE] [--dir DIR] [--keep] [-v]

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
  growth (``kvm_fault_set(..., KVM_FAULT_KILL)`` armed in the child after its
  open), which puts kills inside commits, inside growth and inside the
  flushes (``sync=False`` lanes kill at fdatasync twice as often)
  deterministically;
* ``ack``: right after a ``commit()`` returned, before the acknowledgement;
* ``idle``: the armed call never came within the run (the parent kills the
  idle child);
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
the next configuration of ``tests/conftest.py``'s CONFIGS (and ``sync=False``
for every third lane), so growth happens in every lane.  Lane L of
seed S draws every choice from ``Random("S:L")``: ``--lane L`` re-runs just
that lane, and with ``--no-timing`` (no delay kills, no reader threads) a lane
is fully deterministic, which is how a failing seed becomes a regression test.

Counts (kills by moment, by where the writer was, with readers, during
reopen, matches at acked vs acked+1, per configuration) are printed at the
end, and written as JSON with ``--json``.  Exit status 1 if any kill lost or tore a commit, the integrity
check failed, or a child crashed or raised; each failure is printed with its
reproducer and the crashed file is kept.
"""

import argparse
import collections
import ctypes
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import crashkit  # noqa: E402
import kvmap  # noqa: E402
import kvmap.checker  # noqa: E402,F401  (imported once here, not in every verifier)
from conftest import CONFIGS, config_id  # noqa: E402
from kvmap._lib import lib  # noqa: E402

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


# --------------------------------------------------------------------------
# children (forked; they never return into the parent's code)

def _send(fd, *words):
    os.write(fd, (" ".join(str(w) for w in words) + "\n").encode())


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
        kind = "F" if isinstance(e, (crashkit.CrashCheckFailed, kvmap.Error)) else "X"
        text = "%s: %s" % (type(e).__name__, e)
        if kind == "X":
            text += "\n" + traceback.format_exc()
        _send(fd, kind, json.dumps(text[-3000:]))
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
        self.txn_time = {}        # (cid, sync) -> seconds per transaction (EMA)
        self.start_time = {}      # (cid, sync) -> seconds to the child's open (EMA)
        self.log = args.verbose

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
        # sync=False: the fdatasyncs are the flushes (sync_bytes, pages
        # first, sync_interval, db.sync(), close): kill there more often
        calls = ["pwrite"] * 4 + ["fdatasync"] * (3 if lane.sync else 6)
        if lane.cfg.get("backend") == "pread":
            calls += ["pread"]
        if lane.n < YOUNG and not readers:
            calls += ["growth"] * 3
            if lane.cfg.get("backend") == "mmap":
                calls += ["madvise"]
        call = rng.choice(calls)
        if call == "growth":
            call = rng.choice(GROWTH_CALLS[lane.cfg.get("growth")])
        if call in ("fallocate", "mmap", "mremap", "munmap", "madvise"):
            nth = 1
            end = start + 120
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
        yet (it is the commit's last write): acked; a sync=True commit's one
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
        if (lane.rng.random() < 0.2 and os.path.exists(lane.path) and os.path.getsize(lane.path) > 0
                and not creation_left(lane)):
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
        cmd = "python tools/killtest.py --seed %s --lane %d%s%s%s%s" % (
            self.args.seed, lane.index,
            " --page-size %d" % self.args.page_size if self.args.page_size else "",
            " --config %s" % self.args.config if self.args.config else "",
            " --sync %s" % self.args.sync if self.args.sync != "mix" else "",
            " --lie-ack" if self.args.lie_ack else "")
        f = {"lane": lane.index, "config": lane.cid, "sync": lane.sync,
             "workload_seed": lane.workload.seed, "plan": {k: v for k, v in plan.items() if k != "rng"},
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
        while self.counts["kills"] < budget:
            lane = Lane(index, a.seed, self.configs[index % len(self.configs)], a.dir, a.sync, a.page_size,
                        timing=self.timing)
            self.counts["lanes"] += 1
            self.counts["lanes sync=%s" % lane.sync] += 1
            while not lane.done and lane.n < lane.length and self.counts["kills"] < budget:
                before = self.counts["kills"]
                self.step(lane)
                self.by_sync["sync=%s" % lane.sync] += self.counts["kills"] - before
            for p in (lane.path, lane.crash_copy):
                if os.path.exists(p) and not a.keep:
                    os.unlink(p)
            if a.lane is not None:
                break
            index += step
        return {"counts": dict(self.counts), "by_moment": {m: dict(v) for m, v in self.by_moment.items()},
                "by_config": dict(self.by_config), "by_sync": dict(self.by_sync),
                "by_where": dict(self.by_where), "failures": self.failures}


def merge(parts):
    total = {"counts": collections.Counter(), "by_moment": collections.defaultdict(collections.Counter),
             "by_config": collections.Counter(), "by_sync": collections.Counter(),
             "by_where": collections.Counter(), "failures": []}
    for p in parts:
        total["counts"].update(p["counts"])
        for m, v in p["by_moment"].items():
            total["by_moment"][m].update(v)
        total["by_config"].update(p["by_config"])
        total["by_sync"].update(p["by_sync"])
        total["by_where"].update(p["by_where"])
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
        "  verified %d: matched acked %d, acked+1 %d; failures (lost or partial commits, bad checks,"
        " crashes): %d" % (out["verified"], out["matched_acked"], out["matched_acked_plus_1"], len(failures)),
        "  by moment (kills / matched acked / acked+1):",
    ]
    for m, v in out["by_moment"].items():
        lines.append("    %-20s %6d %6d %6d" % (m, v.get("kills", 0), v.get("acked", 0), v.get("acked+1", 0)))
    lines.append("  by config: " + ", ".join("%s %d" % kv for kv in out["by_config"].items()))
    lines.append("  by sync: " + ", ".join("%s %d" % kv for kv in out["by_sync"].items()))
    lines.append("  system-call kills by where the writer was:")
    lines += ["    %-50s %6d" % kv for kv in out["by_where"].items()]
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
