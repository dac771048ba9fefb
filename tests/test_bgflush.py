"""Background flushes of ``sync=False`` commits (native/flush.c, FORMAT.md §7).

A commit that leaves ``sync_bytes`` unsynced starts a flush of itself and
returns; commits go on while it runs, into the third meta slot, and the
writer keeps both the durable commit's pages and the flushed one's.  These
tests pin the protocol down deterministically with the test mode
(``kvm_set_flush_mode(k)``: the flush's fdatasync runs at its start, its end
is taken up k write transactions later), and run the thread as users get it.
The power-loss images of the same protocol are tools/powerloss.py's.
"""

import errno
import shutil
import signal
import struct
import subprocess
import sys
import textwrap

import pytest

import kvmap
from kvmap._lib import lib
from conftest import REPO_ROOT

PS = 4096
SMALL = dict(sync=False, sync_bytes=64 << 10)


@pytest.fixture
def flush_mode():
    """Set the flush mode for one test; the thread again afterwards."""
    def set_mode(k):
        lib.kvm_set_flush_mode(k)
    yield set_mode
    lib.kvm_set_flush_mode(0)


def meta_txnids(path):
    """The txnid each of the three meta slots holds now (the page cache's view)."""
    with open(path, "rb") as f:
        return [struct.unpack_from("<Q", f.read(PS), 16)[0] for _ in range(3)]


def commit_until_flushing(db, start=0, limit=2000):
    """Commit one 200-byte value at a time until a background flush runs;
    returns (the next key number, the commit being flushed)."""
    for i in range(start, start + limit):
        db[b"k%06d" % i] = bytes([i % 251]) * 200
        f = db.stats()["flushing_txnid"]
        if f:
            return i + 1, f
    raise AssertionError("no background flush started")


def test_commits_go_on_into_the_third_slot(tmp_path, flush_mode):
    flush_mode(3)
    path = str(tmp_path / "db")
    with kvmap.open(path, **SMALL) as db:
        n, flushed = commit_until_flushing(db)
        st = db.stats()
        durable = st["durable_txnid"]
        assert durable < flushed == st["txnid"]
        slots = meta_txnids(path)
        assert durable in slots and flushed in slots
        # the next two commits begin with the flush still in flight: their
        # metas go to the slot that holds neither commit, and neither moves
        for i in range(n, n + 2):
            db[b"k%06d" % i] = b"x" * 200
            st = db.stats()
            assert st["flushing_txnid"] == flushed and st["durable_txnid"] == durable
            now = meta_txnids(path)
            assert sorted(now) == sorted([durable, flushed, st["txnid"]]), (now, durable, flushed)
        # the third write transaction since takes up the flush's end
        db[b"k%06d" % (n + 2)] = b"x" * 200
        st = db.stats()
        assert st["durable_txnid"] == flushed
        assert st["flushing_txnid"] is None or st["flushing_txnid"] > flushed
        want = dict(db.items())
    with kvmap.open(path) as db:
        assert dict(db.items()) == want
    assert kvmap.check(path).ok


def test_open_takes_a_flushed_commit_over_the_older_durable_one(tmp_path, flush_mode):
    """A power loss right after a flush completed and before the writer
    took that up: the disk holds D, the flushed B, and a newer W whose pages
    did not land.  Open falls back to B -- the newest meta no older than the
    durable commit W names -- not to D (whose pages the writer may reuse
    once it has taken up B)."""
    flush_mode(50)
    path = str(tmp_path / "db")
    image = str(tmp_path / "image")
    with kvmap.open(path, **SMALL) as db:
        n, flushed = commit_until_flushing(db)
        at_flush = dict(db.items())
        durable = db.stats()["durable_txnid"]
        db[b"k%06d" % n] = b"w" * 200              # W, in the third slot
        newest = db.stats()["txnid"]
        slots = meta_txnids(path)
        assert sorted(slots) == sorted([durable, flushed, newest])
        shutil.copyfile(path, image)                # what the disk holds, everything landed
    # W's root page did not land whole: its checksum fails
    with open(image, "r+b") as f:
        f.seek(slots.index(newest) * PS)
        m = f.read(128)
        root = struct.unpack_from("<Q", m, 24)[0]
        f.seek(root * PS + 100)
        b = f.read(1)
        f.seek(root * PS + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    with kvmap.open(image) as db:
        st = db.stats()
        assert st["meta_fallback"] and st["txnid"] == flushed
        assert dict(db.items()) == at_flush
    assert kvmap.check(image).ok


def test_the_flush_thread(tmp_path):
    """As users get it: a thread flushes while commits go on, and close
    waits for it and seals; everything committed is there after reopen."""
    path = str(tmp_path / "db")
    flushes = 0
    with kvmap.open(path, **SMALL) as db:
        before = db.stats()["syscalls"]["fdatasync"]
        for i in range(600):
            with db.transaction() as t:
                for j in range(5):
                    t[b"k%05d-%d" % (i, j)] = bytes([i % 251]) * 100
        db.sync()
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and st["flushing_txnid"] is None
        flushes = st["syscalls"]["fdatasync"] - before
        want = dict(db.items())
    assert flushes >= 10          # 600 commits of ~5 pages each past 16 KiB: many flushes
    with kvmap.open(path) as db:
        assert dict(db.items()) == want and len(want) == 3000
    assert kvmap.check(path).ok


def test_a_failed_background_flush_fails_the_handle(tmp_path):
    """Its commit had returned; the next call that writes says why, once
    (IOFailure: the handle refuses writes until reopened), then FailedError.
    The commits acknowledged are all in the file after reopen (the fault is
    injected: the pages are in the page cache)."""
    path = str(tmp_path / "db")
    db = kvmap.open(path, **SMALL)
    db[b"first"] = b"1"
    db.sync()
    lib.kvm_fault_clear()
    assert lib.kvm_fault_set(lib.KVM_SYS_FDATASYNC, 1, errno.EIO, 0) == 0
    try:
        n, _ = commit_until_flushing(db)
        with pytest.raises(kvmap.IOFailure, match="refuses writes until reopened"):
            db.sync()
        with pytest.raises(kvmap.FailedError, match="reopen"):
            db[b"after"] = b"x"
        assert db.stats()["failed"]
        assert lib.kvm_fault_failures(lib.KVM_SYS_FDATASYNC) == 1
    finally:
        lib.kvm_fault_clear()
    want = dict(db.items())
    db.close()
    assert len(want) == n + 1
    with kvmap.open(path) as db:
        assert dict(db.items()) == want


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import kvmap
    from kvmap._lib import lib
    lib.kvm_set_flush_mode(1000)      # the flush stays in flight until this process dies
    db = kvmap.open({path!r}, sync=False, sync_bytes=16 << 10)
    for i in range(2000):
        db[b"c%06d" % i] = b"c" * 200
        if db.stats()["flushing_txnid"]:
            break
    print(db.stats()["flushing_txnid"], i + 1, flush=True)
    os.kill(os.getpid(), 9)
""")


def test_a_flush_whose_process_died_is_dropped(tmp_path):
    """Another process started a flush and was killed before anyone took up
    its end: a writer here finds its handle dead, drops the flush (the
    durable commit stays where it was: that flush may never have reached
    the disk), and goes on; nothing acknowledged is lost."""
    path = str(tmp_path / "db")
    with kvmap.open(path, sync=False) as db:
        db[b"parent"] = b"p"
        db.sync()
        durable = db.stats()["durable_txnid"]
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=REPO_ROOT, path=path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == -signal.SIGKILL, out.stderr
        flushed, count = map(int, out.stdout.split())
        st = db.stats()
        assert st["flushing_txnid"] == flushed and st["durable_txnid"] == durable
        db[b"parent2"] = b"q"                      # a write transaction takes it up
        st = db.stats()
        assert st["flushing_txnid"] is None and st["durable_txnid"] == durable
        db.sync()
        assert db.stats()["durable_txnid"] == db.stats()["txnid"]
        want = dict(db.items())
    assert len(want) == count + 2
    with kvmap.open(path) as db:
        assert dict(db.items()) == want
    assert kvmap.check(path).ok


def test_an_aborted_growth_of_a_new_file_still_opens(tmp_path):
    """A new file grown by a transaction that never committed holds only
    creation's metas and is longer than them: that is no damage."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        with pytest.raises(RuntimeError):
            with db.transaction() as t:
                for i in range(2000):
                    t[b"k%04d" % i] = b"v" * 100
                raise RuntimeError("abort")
    with kvmap.open(path) as db:
        assert len(db) == 0
