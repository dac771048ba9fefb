"""db.copy(): an online backup, page for page or compact, and the space
figures of db.stats() that say when a compact copy is worth it.

* The copy is exactly one commit of the source, whatever writers (a thread
  of the same handle, another process) commit meanwhile: the writers' last
  transaction number is in the data (key ``!n``), the copy must equal the
  model replayed to that number, pair for pair, and ``copy()`` returns that
  commit's transaction id.  So that commits really land while the copy runs,
  the copy's own ``fdatasync`` (through the sync hook, native/os.c) waits
  until the writer has committed three more times: by then the copy's
  snapshot was taken and, for a page copy, its pages read.
* Every copy is ``kvmap.check``-clean and opens without verifying or falling
  back; a page copy holds the same number of pages as the source's commit,
  a compact copy of a churned database is smaller than the source and as
  full as a load in key order.
* The destination: an existing file (FileExistsError, or replaced with
  ``overwrite=True``), the database itself, a missing directory, a full
  tmpfs (root only); a failed copy leaves nothing at the path, no temporary
  file, and the source as it was.
* Every system call a copy makes, failed at every N (native/os.c's fault
  table), once and persistently: the error is a kvmap.Error or OSError,
  nothing is left behind, the source is intact, and the handle copies again
  once the fault is cleared.
"""

import errno
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

import kvmap
from kvmap._lib import ffi, lib
from conftest import (ALL_CONFIG_PARAMS, DEFAULT_CFG, TESTS_DIR, assert_child_ok, make_value, mounted_tmpfs,
                      open_db, run_python)

N = 6000   # pairs of the base: about 140 pages of 4 KiB


def base_pairs(n=N):
    return {b"k%06d" % i: make_value(("base", i), 80 + i % 61) for i in range(n)} | {b"!n": b"0"}


def writer_ops(i, n=N):
    """Transaction i (1, 2, ...) of the writers: (puts, deletes)."""
    puts = {b"w%06d" % i: make_value(("w", i), 50), b"k%06d" % (i * 7919 % n): make_value(("k", i), 120),
            b"!n": b"%d" % i}
    return puts, [b"k%06d" % ((i * 104729 + 3) % n)]


def model_at(count, n=N):
    """The pairs after the base and writer transactions 1..count."""
    m = base_pairs(n)
    for i in range(1, count + 1):
        puts, dels = writer_ops(i, n)
        for k in dels:
            m.pop(k, None)
        m.update(puts)
    return m


def run_writer_txn(db, i):
    puts, dels = writer_ops(i)
    with db.transaction() as txn:
        for k in dels:
            txn.pop(k, None)
        txn.put_many(puts.items())


def make_base(path, cfg, **kw):
    db = open_db(path, cfg, **kw)
    with db.transaction() as txn:
        txn.put_many(sorted(base_pairs().items()))
    return db


def assert_copy_of(dest, txnid):
    """dest is a sound copy of commit txnid of the writers' workload."""
    report = kvmap.check(dest)
    assert report.ok, report.to_json()
    assert report.txnid == txnid
    with kvmap.open(dest, "r") as copy:
        st = copy.stats()
        assert st["txnid"] == txnid and not st["meta_fallback"] and st["durable_txnid"] == txnid
        pairs = dict(copy.items())
    assert pairs == model_at(int(pairs[b"!n"]))
    return pairs


def leftovers(directory, dest):
    """Files a copy to dest left in directory besides dest (temporary files)."""
    base = os.path.basename(dest)
    return [f for f in os.listdir(directory) if f.startswith(base) and f != base and f != base + "-lock"]


class SyncGate:
    """The sync hook: the copying thread's first fdatasync waits until
    ``more()`` says the writers committed enough; every other fdatasync
    (the writers', later ones of the copy) is a real one."""

    def __init__(self, more, timeout=60):
        self.more, self.timeout = more, timeout
        self.copier = None
        self.waited = threading.Event()
        self.writers_went_on = False      # (an exception in a C callback would be lost)
        self.cb = ffi.callback("int(int)", self._sync)

    def _sync(self, fd):
        if threading.get_ident() == self.copier and not self.waited.is_set():
            self.waited.set()
            self.writers_went_on = self.more(self.timeout)
        try:
            os.fdatasync(fd)
        except OSError as e:
            ffi.errno = e.errno
            return -1
        return 0

    def __enter__(self):
        self.copier = threading.get_ident()
        lib.kvm_set_sync_hook(self.cb)
        return self

    def __exit__(self, *exc):
        lib.kvm_set_sync_hook(ffi.NULL)


# ---------------------------------------------------------------------------
# consistency while writers commit


@pytest.mark.parametrize("compact", [False, True], ids=["pages", "compact"])
def test_copy_is_one_commit_while_a_thread_commits(tmp_path, cfg, compact):
    db = make_base(tmp_path / "src.kv", cfg, sync=False)
    done = [0]
    cond = threading.Condition()
    stop = threading.Event()
    errors = []

    def writer():
        try:
            i = 0
            while not stop.is_set():
                i += 1
                run_writer_txn(db, i)
                with cond:
                    done[0] = i
                    cond.notify_all()
        except BaseException as e:   # reported by the test thread
            errors.append(e)

    def three_more(timeout):
        with cond:
            start = done[0]
            return cond.wait_for(lambda: done[0] >= start + 3 or errors, timeout) and not errors

    t = threading.Thread(target=writer)
    t.start()
    try:
        with cond:
            cond.wait_for(lambda: done[0] >= 5 or errors, 60)
        dest = str(tmp_path / "copy.kv")
        with SyncGate(three_more) as gate:
            txnid = db.copy(dest, compact=compact)
        assert gate.waited.is_set() and gate.writers_went_on
        before_copy_end = done[0]
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    pairs = assert_copy_of(dest, txnid if not compact else 2)
    copied = int(pairs[b"!n"])
    assert copied + 3 <= before_copy_end      # the three commits came after the copy's snapshot
    assert txnid == 2 + copied                # the base is commit 2, writer transaction i commit 2 + i
    assert dict(db.items()) == model_at(done[0])
    if not compact:
        with kvmap.open(dest, "r") as copy:
            assert copy.stats()["pages"] <= db.stats()["pages"]
    db._check()
    db.close()
    assert kvmap.check(tmp_path / "src.kv").ok
    assert leftovers(tmp_path, dest) == []
    # the copy is a database like any other: it takes commits, and keeps them
    with open_db(dest, cfg) as copy:
        run_writer_txn(copy, copied + 1)
        copy._check()
    assert_copy_of(dest, (txnid if not compact else 2) + 1)


WRITER_PROCESS = """
import sys
sys.path.insert(0, %r)
import kvmap
from test_copy import run_writer_txn
db = kvmap.open(%r, sync=False)
i = 0
while True:          # until killed
    i += 1
    run_writer_txn(db, i)
"""


@pytest.mark.parametrize("compact", [False, True], ids=["pages", "compact"])
def test_copy_while_another_process_commits(tmp_path, compact):
    path = str(tmp_path / "src.kv")
    make_base(path, DEFAULT_CFG).close()
    child = subprocess.Popen([sys.executable, "-c", WRITER_PROCESS % (TESTS_DIR, path)])
    try:
        with kvmap.open(path, "r") as db:
            def counter():
                return int(db.get(b"!n", b"0"))

            def three_more(timeout):
                start = counter()
                deadline = time.monotonic() + timeout
                while counter() < start + 3:
                    if time.monotonic() > deadline or child.poll() is not None:
                        return False
                    time.sleep(0.001)
                return True

            while counter() < 5:
                assert child.poll() is None
            dest = str(tmp_path / "copy.kv")
            with SyncGate(three_more) as gate:
                txnid = db.copy(dest, compact=compact)
            assert gate.waited.is_set() and gate.writers_went_on
            with kvmap.open(dest, "r") as copy:
                assert counter() >= int(copy[b"!n"]) + 3
    finally:
        child.kill()
        child.wait()
    assert_copy_of(dest, txnid if not compact else 2)
    assert leftovers(tmp_path, dest) == []


def test_copy_in_a_forked_child(tmp_path):
    """A child made with fork() opens the database itself (its parent's
    handle is the parent's) and copies it while the parent commits."""
    path = str(tmp_path / "src.kv")
    db = make_base(path, DEFAULT_CFG)
    run_writer_txn(db, 1)
    dest = str(tmp_path / "copy.kv")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: nothing of pytest's, one way out
        code = 1
        try:
            os.close(r)
            try:
                db.copy(dest)                     # the parent's handle
            except kvmap.InheritedHandleError:
                pass
            else:
                os._exit(3)
            with kvmap.open(path, "r") as own:
                txnid = own.copy(dest)
            os.write(w, b"%d" % txnid)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    for i in range(2, 40):
        run_writer_txn(db, i)
    txnid = int(os.read(r, 64) or b"0")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert_copy_of(dest, txnid)
    db.close()


# ---------------------------------------------------------------------------
# what a copy holds


def churn(db, seed=7):
    """Delete two thirds of the base and overwrite the rest with longer
    values, in small transactions: a file with many free pages."""
    import random
    rng = random.Random(seed)
    keys = sorted(base_pairs())
    rng.shuffle(keys)
    for s in range(0, len(keys), 500):
        with db.transaction() as txn:
            for k in keys[s:s + 500]:
                if rng.random() < 2 / 3:
                    txn.pop(k, None)
                else:
                    txn[k] = make_value(("churn", k), 150)


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_compact_copy_of_a_churned_database(tmp_path, cfg):
    path = str(tmp_path / "src.kv")
    with make_base(path, cfg) as db:
        churn(db)
        st = db.stats()
        assert st["free_pages"] + st["pending_pages"] > st["pages"] // 3
        pairs = dict(db.items())
        db.copy(str(tmp_path / "pages.kv"))
        db.copy(str(tmp_path / "compact.kv"), compact=True)
    seq = str(tmp_path / "sequential.kv")
    with kvmap.open(seq) as ref:
        with ref.transaction() as txn:
            txn.put_many(sorted(pairs.items()))
    reports = {name: kvmap.check(str(tmp_path / (name + ".kv"))) for name in ("pages", "compact", "sequential")}
    for name, rep in reports.items():
        assert rep.ok, (name, rep.to_json())
    for name in ("pages", "compact"):
        with kvmap.open(str(tmp_path / (name + ".kv")), "r") as c:
            assert dict(c.items()) == pairs
    # the page copy is the commit as it was: same pages, same free space;
    # its three meta pages (0, 1 and 2) all hold that commit, sealed durable
    with open(str(tmp_path / "pages.kv"), "rb") as f:
        head = f.read(3 * 4096)
    slots = [(struct.unpack_from("<Q", head, k * 4096 + 16)[0], struct.unpack_from("<Q", head, k * 4096 + 96)[0])
             for k in range(3)]          # (txnid, durable)
    assert slots == [(st["txnid"], st["txnid"])] * 3, slots
    assert reports["pages"].summary["hwm"] == st["pages"]
    assert reports["pages"].summary["free_pages"] == st["free_pages"]
    # the compact one: smaller, filled as a load in key order fills
    size = os.path.getsize
    assert size(str(tmp_path / "compact.kv")) < size(path) / 2
    assert size(str(tmp_path / "compact.kv")) == reports["compact"].summary["hwm"] * 4096
    fill, seq_fill = reports["compact"].summary["fill_factor"], reports["sequential"].summary["fill_factor"]
    assert fill >= 0.95 and abs(fill - seq_fill) < 0.01, (fill, seq_fill)
    assert reports["compact"].summary["pending_pages"] == 0
    assert reports["compact"].summary["free_pages"] <= 16   # what one commit's planning gives back


@pytest.mark.parametrize("compact", [False, True], ids=["pages", "compact"])
def test_copy_of_an_empty_database(tmp_path, compact):
    fresh = str(tmp_path / "fresh.kv")
    with kvmap.open(fresh) as db:                  # never committed to: creation's metas
        db.copy(str(tmp_path / "fresh-copy.kv"), compact=compact)
    emptied = str(tmp_path / "emptied.kv")
    with make_base(emptied, DEFAULT_CFG) as db:    # committed, then every key deleted
        db.clear()
        db.copy(str(tmp_path / "emptied-copy.kv"), compact=compact)
    for name in ("fresh-copy", "emptied-copy"):
        dest = str(tmp_path / (name + ".kv"))
        assert kvmap.check(dest).ok
        with kvmap.open(dest) as c:
            assert len(c) == 0 and list(c.items()) == []
            c[b"a"] = b"1"
            c._check()
        with kvmap.open(dest, "r") as c:
            assert dict(c.items()) == {b"a": b"1"}


@pytest.mark.parametrize("page_size", [8192, 65536])
def test_copy_keeps_the_page_size_and_large_values(tmp_path, page_size):
    path = str(tmp_path / "src.kv")
    big = {b"big%d" % i: make_value(("big", i), 200_000 + i) for i in range(5)}
    with kvmap.open(path, page_size=page_size) as db:
        db.update(big)
        db[b"big0"] = b"small now"       # its chain is freed
        big[b"big0"] = b"small now"
        for compact in (False, True):
            dest = str(tmp_path / ("c%d.kv" % compact))
            db.copy(dest, compact=compact)
            assert kvmap.check(dest).ok
            with kvmap.open(dest, "r") as c:
                assert c.page_size == page_size and dict(c.items()) == big


# ---------------------------------------------------------------------------
# the destination


def test_destination_errors(tmp_path):
    path = str(tmp_path / "src.kv")
    with make_base(path, DEFAULT_CFG) as db:
        dest = str(tmp_path / "copy.kv")
        with open(dest, "wb") as f:
            f.write(b"not to be touched")
        for compact in (False, True):
            with pytest.raises(FileExistsError) as ei:
                db.copy(dest, compact=compact)
            assert isinstance(ei.value, kvmap.IOFailure) and ei.value.errno == errno.EEXIST
            assert ei.value.filename == dest and "overwrite=True" in str(ei.value)
            assert open(dest, "rb").read() == b"not to be touched"
            # overwrite: replaced in one rename
            db.copy(dest, compact=compact, overwrite=True)
            assert_copy_of(dest, db.stats()["txnid"] if not compact else 2)
            os.unlink(dest)
            with open(dest, "wb") as f:
                f.write(b"not to be touched")
        with pytest.raises(ValueError, match="onto itself"):
            db.copy(path, overwrite=True)
        with pytest.raises(ValueError, match="onto itself"):
            db.copy(os.path.join(str(tmp_path), ".", "src.kv"), overwrite=True)
        for compact in (False, True):
            missing = str(tmp_path / "no-such-dir" / "copy.kv")
            with pytest.raises(FileNotFoundError) as ei:
                db.copy(missing, compact=compact)
            assert isinstance(ei.value, kvmap.IOFailure)
            a_dir = tmp_path / "a-dir"
            a_dir.mkdir(exist_ok=True)
            with pytest.raises(FileExistsError):
                db.copy(str(a_dir), compact=compact)
            with pytest.raises(IsADirectoryError):
                db.copy(str(a_dir), compact=compact, overwrite=True)
            assert leftovers(tmp_path, str(a_dir)) == []
        assert leftovers(tmp_path, dest) == []
    assert kvmap.check(path).ok


def test_copy_to_a_full_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        path = str(tmp_path / "src.kv")
        with make_base(path, DEFAULT_CFG) as db:      # about 1 MiB of pages: more than the tmpfs holds
            pairs = dict(db.items())
            for compact in (False, True):
                dest = str(mnt / "copy.kv")
                with pytest.raises(kvmap.DiskFullError) as ei:
                    db.copy(dest, compact=compact)
                assert ei.value.errno == errno.ENOSPC
                assert os.listdir(mnt) == [], compact     # nothing left: no copy, no temporary file
            assert dict(db.items()) == pairs
            # with most keys deleted, the pages still span the high-water mark,
            # but the pairs fit: a compact copy is what fits on a small disk
            db.delete_range(b"k000100")
            pairs = dict(db.items())
            with pytest.raises(kvmap.DiskFullError):
                db.copy(str(mnt / "copy.kv"))
            assert os.listdir(mnt) == []
            db.copy(str(mnt / "copy.kv"), compact=True)
        assert kvmap.check(str(mnt / "copy.kv")).ok
        with kvmap.open(str(mnt / "copy.kv"), "r") as c:
            assert dict(c.items()) == pairs


# ---------------------------------------------------------------------------
# failing system calls

FAULTS = r"""
import errno, os, sys
import kvmap
from kvmap._lib import ffi, lib
from conftest import config_id
from test_copy import make_base, base_pairs, run_writer_txn, model_at, leftovers

CFG, WORK, COMPACT = ARGS["cfg"], ARGS["dir"], ARGS["compact"]
# close is not failed (as in test_faults.py: Linux releases the descriptor
# whatever close reports, an injected failure would keep it); unlink runs
# only on the way out of a failure, so a dry run never counts one
CALLS = {name: getattr(lib, "KVM_SYS_" + name) for name in (
    "OPEN", "FSTAT", "LOCK", "PREAD", "PWRITE", "FDATASYNC", "FSYNC_DIR", "FALLOCATE",
    "FTRUNCATE", "MMAP", "MUNMAP", "MREMAP", "MADVISE", "PUNCH", "RENAME")}
ERRORS = {"PREAD": ["EIO"], "PWRITE": ["EIO", "ENOSPC"], "FDATASYNC": ["EIO", "ENOSPC"],
          "FALLOCATE": ["ENOSPC", "EIO"], "OPEN": ["EACCES"], "FSTAT": ["EIO"],
          "RENAME": ["EIO", "EXDEV"], "FSYNC_DIR": ["EIO"], "MMAP": ["ENOMEM"],
          "MREMAP": ["ENOMEM"], "MUNMAP": ["ENOMEM"], "MADVISE": ["ENOMEM"], "LOCK": ["ENOLCK"],
          "FTRUNCATE": ["EIO"], "PUNCH": ["EIO"]}
# (no fdatasync hook: the copy's sync is a real one, on a small file)

path = os.path.join(WORK, "src.kv")
db = make_base(path, CFG)
for i in range(1, 30):
    run_writer_txn(db, i)          # free and pending pages, records
want = model_at(29)
dest = os.path.join(WORK, "copy.kv")

def count():
    lib.kvm_fault_clear()
    for c in CALLS.values():
        lib.kvm_fault_set(c, 0, errno.EIO, 0)       # nth 0: count, never fail
    db.copy(dest, compact=COMPACT)
    made = {n: lib.kvm_fault_calls(c) for n, c in CALLS.items()}
    lib.kvm_fault_clear()
    os.unlink(dest)
    return {n: k for n, k in made.items() if k}

made = count()
print("CALLS", config_id(CFG), COMPACT, made, flush=True)
assert made["PWRITE"] and made["FDATASYNC"] and made["RENAME"] == 1
runs = failed = absorbed = 0
ABS = []
for call, n_calls in sorted(made.items()):
    for err in ERRORS[call]:
        for persistent in (0, 1):
            for nth in range(1, n_calls + 1):
                lib.kvm_fault_clear()
                lib.kvm_fault_set(CALLS[call], nth, getattr(errno, err), persistent)
                runs += 1
                try:
                    db.copy(dest, compact=COMPACT)
                except (kvmap.Error, OSError) as e:
                    hit = lib.kvm_fault_failures(CALLS[call])
                    lib.kvm_fault_clear()
                    assert hit, (call, err, nth, persistent, e)
                    failed += 1
                    assert not os.path.lexists(dest), (call, err, nth, persistent, e)
                    left = leftovers(WORK, dest)
                    assert left == [], (call, err, nth, left, e)
                    if isinstance(e, kvmap.DiskFullError):
                        assert e.errno == errno.ENOSPC
                    elif isinstance(e, kvmap.IOFailure):
                        assert e.errno == getattr(errno, err), (call, err, e)
                else:
                    lib.kvm_fault_clear()   # absorbed (advisory calls, cleanup): a sound copy
                    absorbed += 1
                    ABS.append((call, err, nth, persistent))
                    with kvmap.open(dest, "r") as c:
                        assert dict(c.items()) == want, (call, err, nth)
                    assert kvmap.check(dest).ok, (call, err, nth)
                    os.unlink(dest)
                # the source is as it was, and the handle goes on
                assert dict(db.items()) == want, (call, err, nth)
lib.kvm_fault_clear()
db._check()
db.copy(dest, compact=COMPACT)
with kvmap.open(dest, "r") as c:
    assert dict(c.items()) == want
db.close()
assert kvmap.check(path).ok and kvmap.check(dest).ok
print("RUNS", runs, "FAILED", failed, "ABSORBED", absorbed, sorted(set((a[0], a[3]) for a in ABS)), flush=True)
print("OK")
"""


@pytest.mark.parametrize("compact", [False, True], ids=["pages", "compact"])
@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_copy_fault_loop(tmp_path, cfg, compact):
    rc, out, err = run_python(FAULTS, timeout=600,
                              args={"cfg": cfg, "dir": str(tmp_path), "compact": compact})
    assert_child_ok(rc, out, err, "OK")


# ---------------------------------------------------------------------------
# space figures


def test_space_figures(tmp_path):
    path = str(tmp_path / "src.kv")
    with make_base(path, DEFAULT_CFG) as db:
        st = db.stats()
        assert st["used_pages"] + st["free_pages"] + st["pending_pages"] == st["pages"]
        assert st["pinned_pages"] == 0 and st["oldest_snapshot"] is None
        assert st["allocated_bytes"] >= st["file_size"] and st["given_back_bytes"] == 0
        assert "punch" in st["syscalls"]
        used = st["used_pages"]
        # deleting half the keys frees pages: free + pending grows, used falls
        db.delete_range(b"k000000", b"k%06d" % (N // 2))
        st2 = db.stats()
        assert st2["free_pages"] + st2["pending_pages"] > st["free_pages"] + st["pending_pages"]
        assert st2["used_pages"] < used * 0.7
        assert st2["used_pages"] + st2["free_pages"] + st2["pending_pages"] == st2["pages"]
        # a snapshot pins what commits after it free
        with db.snapshot() as snap:
            held = snap._state()["txnid"]
            for i in range(1, 20):
                run_writer_txn(db, i)
            st3 = db.stats()
            assert st3["oldest_snapshot"] == held
            assert 0 < st3["pinned_pages"] <= st3["pending_pages"]
            # every page the 19 commits freed is pinned: each rewrote at least its root
            assert st3["pinned_pages"] >= 19
        st4 = db.stats()
        assert st4["oldest_snapshot"] is None and st4["pinned_pages"] == 0
        # a snapshot in another process pins too, and is named
        code = r'''
import kvmap, sys
with kvmap.open(ARGS["path"], "r") as db, db.snapshot() as snap:
    print(snap._state()["txnid"], flush=True)
    sys.stdin.readline()
'''
        import sys, json, tempfile
        fd, args_path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"path": path}, f)
        child = subprocess.Popen([sys.executable, "-c", "import json; ARGS = json.load(open(%r))\n" % args_path
                                  + code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            theirs = int(child.stdout.readline())
            for i in range(20, 30):
                run_writer_txn(db, i)
            st5 = db.stats()
            assert st5["oldest_snapshot"] == theirs and st5["pinned_pages"] >= 10
        finally:
            child.stdin.write("\n")
            child.stdin.close()
            child.wait(60)
            os.unlink(args_path)
        assert db.stats()["pinned_pages"] == 0


def test_given_back_bytes(tmp_path):
    """After 90% of a database is deleted, free runs are punched out of the
    file: given_back_bytes is the holes, allocated_bytes what is left."""
    path = str(tmp_path / "big.kv")
    with kvmap.open(path) as db:
        for s in range(0, 40000, 10000):
            with db.transaction() as txn:
                txn.put_many((b"k%06d" % i, make_value(("g", i), 400)) for i in range(s, s + 10000))
        before = db.stats()
        punches = before["syscalls"]["punch"]
        db.delete_range(b"k000000", b"k036000")
        for i in range(10):
            db[b"small%d" % i] = b"x"
        st = db.stats()
        assert st["syscalls"]["punch"] > punches
        assert st["given_back_bytes"] > 8 << 20, st
        assert st["allocated_bytes"] < st["file_size"] - (8 << 20)
        assert st["file_size"] == before["file_size"]
        # a compact copy gives back the rest: no holes, only what the data needs
        dest = str(tmp_path / "compact.kv")
        db.copy(dest, compact=True)
    with kvmap.open(dest, "r") as c:
        cst = c.stats()
    assert cst["given_back_bytes"] == 0 and cst["file_size"] < st["allocated_bytes"]


def test_close_from_another_thread_during_a_copy(tmp_path):
    """Database.close() from another thread while a page copy reads: the
    copy ends (ClosedError) or has finished; either way no half copy, no
    temporary file, and the database opens with its commits."""
    path = str(tmp_path / "src.kv")
    with kvmap.open(path) as db:
        for s in range(0, 60000, 20000):
            with db.transaction() as txn:
                txn.put_many((b"k%06d" % i, make_value(("close", i), 500)) for i in range(s, s + 20000))
    db = kvmap.open(path, "r")
    dest = str(tmp_path / "copy.kv")
    outcome = []

    def copy():
        try:
            outcome.append(db.copy(dest))
        except kvmap.ClosedError as e:
            outcome.append(e)

    t = threading.Thread(target=copy)
    t.start()
    while not leftovers(tmp_path, dest) and t.is_alive():   # the copy's file exists: it reads now
        time.sleep(0.0005)
    db.close()
    t.join(60)
    assert len(outcome) == 1
    if isinstance(outcome[0], kvmap.ClosedError):
        assert not os.path.lexists(dest)
    else:
        assert kvmap.check(dest).ok
    assert leftovers(tmp_path, dest) == []
    with kvmap.open(path, "r") as again:
        assert len(again) == 60000
