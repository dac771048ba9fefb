"""Many processes on one database (the lock region, native/lock.c).

Every process here opens the file itself; children are started with the
``spawn`` method, so none inherits a handle.  What is checked:

* readers in several processes beside writers in several processes, on every
  configuration: every snapshot sees the invariant of the writers' moves and
  a transaction id that never goes backwards; nothing is lost;
* a writer killed while it holds the writer lock: the next writer goes on at
  once, and the dead one's half-made transaction is invisible;
* a reader killed while it holds a snapshot stops holding pages back at the
  next write transaction (a live one does hold them: the same churn grows
  the file);
* a reader follows the file that another process grew (every growth
  strategy), and the pread backend's cache never serves a page that another
  process has since rewritten;
* a read-only open where the lock file cannot be made (read-only media).

Nothing asserts on timing: the mixed workload runs for a fixed time and
checks only correctness.
"""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import kvmap
from conftest import ALL_CONFIG_PARAMS, PREAD_CFG, assert_child_ok, configs_by_id, open_db, run_python

ACCOUNTS = 40
START = 1000
MIXED_SECONDS = 10
spawn = multiprocessing.get_context("spawn")


def _writer(path, cfg, seed, seconds, out):
    rng = random.Random(seed)
    n = 0
    with open_db(path, cfg) as db:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with db.transaction(timeout=30) as txn:
                a, b = rng.sample(range(ACCOUNTS), 2)
                ka, kb = b"acct%03d" % a, b"acct%03d" % b
                amount = rng.randint(0, 50)
                txn[ka] = b"%d" % (int(txn[ka]) - amount)
                txn[kb] = b"%d" % (int(txn[kb]) + amount)
                if rng.random() < 0.2:   # pages of every size class come and go, the file grows
                    k = b"blob%05d" % rng.randrange(3000)
                    if rng.random() < 0.3 and k in txn:
                        del txn[k]
                    else:
                        txn[k] = rng.randbytes(rng.choice([10, 900, 5000]))
            n += 1
    out.put(("writer", seed, n))


def _reader(path, cfg, seed, seconds, out):
    n, last = 0, 0
    with open_db(path, cfg, readonly=bool(seed % 2)) as db:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with db.snapshot() as snap:
                total = sum(int(v) for v in snap.get_many([b"acct%03d" % i for i in range(ACCOUNTS)]))
                assert total == ACCOUNTS * START, (total, snap.txnid)
                assert snap.txnid >= last, (snap.txnid, last)
                last = snap.txnid
                blobs = list(snap.prefix_items(b"blob"))
                assert all(len(v) in (10, 900, 5000) for _, v in blobs)
            n += 1
    out.put(("reader", seed, n))


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_readers_and_writers_in_many_processes(tmp_path, cfg):
    """4 reader processes (half of them read-only handles) and 2 writer
    processes for MIXED_SECONDS; writers move amounts between accounts."""
    path = str(tmp_path / "db")
    with open_db(path, cfg) as db:
        db.update({b"acct%03d" % i: b"%d" % START for i in range(ACCOUNTS)})
    out = spawn.Queue()
    procs = [spawn.Process(target=_writer, args=(path, cfg, s, MIXED_SECONDS, out)) for s in (1, 2)]
    procs += [spawn.Process(target=_reader, args=(path, cfg, s, MIXED_SECONDS, out)) for s in range(4)]
    for p in procs:
        p.start()
    done = []
    try:   # results first: a process exits only once what it put in the queue is read
        for _ in procs:
            done.append(out.get(timeout=MIXED_SECONDS + 120))
    finally:
        for p in procs:
            p.join(120)
            if p.exitcode is None:
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    commits = sum(n for kind, _, n in done if kind == "writer")
    assert commits > 0 and all(n > 0 for _, _, n in done), done
    with open_db(path, cfg) as db:
        assert sum(int(v) for v in db.get_many([b"acct%03d" % i for i in range(ACCOUNTS)])) == ACCOUNTS * START
        assert db.stats()["txnid"] >= commits   # every commit of both writers is there
        db._check()
    assert kvmap.check(path).ok


# ---------------------------------------------------------------------------
# killed processes

HOLDER = r"""
import os, sys, time, kvmap
path, what = sys.argv[1], sys.argv[2]
db = kvmap.open(path)
if what == "writer":
    txn = db.transaction()
    for i in range(500):
        txn[b"dead%03d" % i] = b"x" * 100
elif what == "reader":
    snap = db.snapshot()
    assert len(snap) > 0
child = 0
if len(sys.argv) > 3:         # a forked child that outlives us, inheriting every mapping
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
print("READY", child, flush=True)
time.sleep(600)
"""


def _hold(path, what, *fork):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path, what, *fork], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("READY"), (line, p.stderr.read())
    p.child = int(line.split()[1])
    return p


def _kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    p.stdout.close()
    p.stderr.close()


def test_writer_killed_holding_the_lock(tmp_path):
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db[b"before"] = b"1"
        p = _hold(path, "writer")
        try:
            with pytest.raises(kvmap.LockedError, match="timed out"):
                db.transaction(timeout=0.2)              # it waits its turn, bounded by the timeout
        finally:
            _kill(p)
        with db.transaction(timeout=30) as txn:          # the kernel released the dead writer's lock
            txn[b"after"] = b"2"
        assert dict(db.items()) == {b"before": b"1", b"after": b"2"}   # nothing of the dead one's
        db._check()
    assert kvmap.check(path).ok


def test_writer_killed_while_its_forked_child_lives(tmp_path):
    """The child of a fork inherits the lock file's mapping and descriptor;
    it gives both up at the fork, so the locks die with the process that
    took them, not with the child."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        p = _hold(path, "writer", "fork")
        try:
            _kill(p)
            with db.transaction(timeout=30) as txn:      # not held by the living child
                txn[b"after"] = b"2"
        finally:
            os.kill(p.child, signal.SIGKILL)
        assert dict(db.items()) == {b"after": b"2"}


def test_readers_of_every_process(tmp_path):
    """db.readers() lists the live snapshots of every process (commit,
    process, thread); a killed process's go at the next write transaction.
    A forked child that opens the file names its own thread, not the thread
    of the parent that forked it."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db[b"a"] = b"1"
        p = _hold(path, "reader")
        try:
            held = {}
            t = threading.Thread(target=lambda: held.update(snap=db.snapshot(), tid=threading.get_native_id()))
            t.start()
            t.join()
            db[b"b"] = b"2"
            with db.snapshot():
                pass                                      # this thread's id is known (cached) before the fork
            r, w = os.pipe()
            child = os.fork()
            if child == 0:       # the forking thread's id was cached: the child's must be its own
                with kvmap.open(path) as own, own.snapshot():
                    os.write(w, repr(own.readers()).encode())
                os._exit(0)
            os.close(w)
            _, status = os.waitpid(child, 0)
            seen_by_child = os.read(r, 4096).decode()
            os.close(r)
            assert os.WEXITSTATUS(status) == 0
            assert f"pid={child}, thread={child})" in seen_by_child, seen_by_child
            readers = db.readers()
            assert kvmap.Reader(2, os.getpid(), held["tid"]) in readers, readers
            assert any(x.pid == p.pid and x.txnid == 2 for x in readers), readers
        finally:
            _kill(p)
        db[b"c"] = b"3"                                   # this write transaction clears the dead one's slot
        assert db.readers() == [kvmap.Reader(2, os.getpid(), held["tid"])]
        held["snap"].close()
        assert db.readers() == []


CHURN_KEYS, CHURN_VALUE = 50, 64 << 10     # 50 values of 17 pages each


def _churn(db, rounds):
    for r in range(rounds):
        with db.transaction() as txn:
            for i in range(CHURN_KEYS):
                txn[b"churn%03d" % i] = bytes([r % 251]) * CHURN_VALUE


def test_dead_reader_does_not_pin_pages(tmp_path):
    """A live reader in another process holding an old snapshot keeps the
    pages of its commit that the churn rewrites (a snapshot pins the pages
    of its own commit: FORMAT.md §7), so the file grows by them; once that
    reader is killed, the next write transaction clears its slot and the
    same churn no longer grows the file."""
    path = str(tmp_path / "db")
    with kvmap.open(path, sync=False) as db:
        _churn(db, 5)
        p = _hold(path, "reader")
        base = os.path.getsize(path)
        _churn(db, 20)
        pinned = os.path.getsize(path) - base
        _kill(p)
        _churn(db, 2)                                    # the slot goes at this begin
        db.sync()
        db[b"after"] = b"the flush"                      # its begin releases what the flush let go
        st = db.stats()
        assert st["oldest_snapshot"] is None, st
        # what the reader held is reusable: a slot left behind would keep its
        # commit's values pending
        assert st["pending_pages"] < CHURN_KEYS * 16 / 2, st
        base = os.path.getsize(path)
        _churn(db, 20)
        free = os.path.getsize(path) - base
        # the live reader held its commit's values: 16 pages of each at least
        assert pinned >= CHURN_KEYS * 16 * db.page_size, pinned
        assert free < pinned / 10, (free, pinned)
        db._check()


# ---------------------------------------------------------------------------
# following another process

GROWER = r"""
import sys, kvmap
path, cfg = sys.argv[1], eval(sys.argv[2])
with kvmap.open(path, **cfg) as db:
    with db.transaction() as txn:
        for i in range(20000):
            txn[b"grow%05d" % i] = b"%05d" % i * 40
    db[b"first"] = b"changed"
print("GREW")
"""


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-mremap", "mmap-remap", "pread"))
def test_reader_follows_growth_by_another_process(tmp_path, cfg):
    path = str(tmp_path / "db")
    with open_db(path, cfg) as db:
        db[b"first"] = b"1"
        old = db.snapshot()
        size = os.path.getsize(path)
        r = subprocess.run([sys.executable, "-c", GROWER, path, repr(cfg)], capture_output=True, text=True,
                           timeout=300)
        assert "GREW" in r.stdout, r.stderr
        assert os.path.getsize(path) > 4 * size
        assert old[b"first"] == b"1" and len(old) == 1   # the old snapshot reads its commit
        assert db[b"first"] == b"changed"                # a new one reads the grown file
        assert len(db) == 20001 and db[b"grow19999"] == b"19999" * 40
        assert sum(1 for _ in db.prefix(b"grow")) == 20000
        old.close()
        db._check()


PREAD_WRITER = r"""
import sys, kvmap
path, rounds = sys.argv[1], int(sys.argv[2])
with kvmap.open(path, sync=False) as db:
    for r in range(rounds):
        with db.transaction() as txn:
            for i in range(0, 300, 7):
                txn[b"k%03d" % i] = b"round%d" % r
print("WROTE")
"""


@pytest.mark.parametrize("rounds", [3, 1500], ids=["from-records", "cache-dropped"])
def test_pread_cache_never_serves_a_page_another_process_rewrote(tmp_path, rounds):
    """This process has every leaf in its page cache; another process
    rewrites them (and reuses the freed pages) over `rounds` commits: few
    enough that the cache drops exactly the pages their records list, or
    too many, so it drops everything."""
    path = str(tmp_path / "db")
    with open_db(path, PREAD_CFG) as db:
        db.update({b"k%03d" % i: b"start" for i in range(300)})
        assert list(db.values()) == [b"start"] * 300             # every page cached
        r = subprocess.run([sys.executable, "-c", PREAD_WRITER, path, str(rounds)], capture_output=True,
                           text=True, timeout=300)
        assert "WROTE" in r.stdout, r.stderr
        want = [b"round%d" % (rounds - 1) if i % 7 == 0 else b"start" for i in range(300)]
        assert list(db.values()) == want
        assert db.get_many([b"k%03d" % i for i in range(300)]) == want
        db[b"k001"] = b"mine"                                   # and it writes on from there
        db._check()


def test_two_writable_handles_in_one_process(tmp_path):
    """Handles of one process take turns like processes do: a transaction
    of one waits for the other's, then sees its commit."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as a, kvmap.open(path) as b:
        with a.transaction() as ta:
            ta[b"x"] = b"a"
            with pytest.raises(kvmap.LockedError, match="timed out"):
                b.transaction(timeout=0.1)
        with b.transaction(timeout=5) as tb:
            assert tb[b"x"] == b"a"
            tb[b"x"] = b"b"
        assert a[b"x"] == b"b"
        a._check()


def test_file_replaced_under_open_handles(tmp_path):
    """A database deleted and created again at its path while a handle has
    the old one open: the lock file is that handle's, so a handle of the new
    file is refused with LockedError (never given the old file's state), and
    opens normally once the old handle closes."""
    path = str(tmp_path / "db")
    old = kvmap.open(path)
    old[b"old"] = b"1"
    os.unlink(path)
    with kvmap.open(path + ".new") as db:
        db[b"new"] = b"2"
    os.rename(path + ".new", path)
    with pytest.raises(kvmap.LockedError, match="another file that was at this path"):
        kvmap.open(path)
    assert old[b"old"] == b"1"
    old.close()
    with kvmap.open(path) as db:
        assert dict(db.items()) == {b"new": b"2"}


READ_ONLY_MEDIA = r"""
import errno, kvmap
path = ARGS["path"]
with kvmap.open(path, readonly=True) as db:           # no lock file can be made: a private one
    assert db[b"a"] == b"1" and len(db) == 100
    with db.snapshot() as s:
        assert len(list(s.items())) == 100
try:
    kvmap.open(path)
except OSError as e:
    print("WRITABLE REFUSED", e.errno == errno.EROFS)
print("DONE")
"""


def test_read_only_media(tmp_path):
    """A database on a file system mounted read-only, with no lock file
    beside it: a read-only open works on a private lock region; a writable
    open is an OSError (EROFS)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip("needs root to mount a tmpfs read-only (mount failed: %s)" % r.stderr.strip())
    try:
        path = str(mnt / "db")
        with kvmap.open(path) as db:
            db.update({b"a": b"1", **{b"k%02d" % i: b"v" for i in range(99)}})
        os.unlink(path + "-lock")
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rc, out, err = run_python(READ_ONLY_MEDIA, args=dict(path=path))
        assert_child_ok(rc, out, err, "DONE")
        assert "WRITABLE REFUSED True" in out, out
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
