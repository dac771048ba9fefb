"""Regressions of the defects found using kvmap the way applications do
(issue 9): each test failed on the engine before its fix.  Where the failure
was a crash, the test runs in a child process and a death by signal fails it.

* a failed write of a bytearray/memoryview value, then garbage collection;
* close() racing threads that read, iterate, write and snapshot;
* copy/deepcopy/pickle of every public object;
* fork: the child's use, close, collection or exit of an inherited handle;
* a write copying a damaged page (laundering), and verifying reads;
* creation on a nearly full disk, and every leftover of an interrupted one;
* small writes after MapFullError;
* errors from an errno: the builtin OSError subclasses, with the path.
"""

import errno
import os
import pickle
import struct

import pytest

import kvmap
from conftest import (ALL_CONFIG_PARAMS, CONFIGS, assert_child_ok, config_id, make_value, mounted_tmpfs,
                      open_db, run_python)

PS = 4096

# ---------------------------------------------------------------------------
# helpers: find pages of a closed file with pread (FORMAT.md §2 and §4)


def newest_meta(path):
    """(txnid, root, depth) of the newest meta page."""
    with open(path, "rb") as f:
        metas = []
        for off in (0, PS):
            f.seek(off)
            m = f.read(128)
            metas.append((struct.unpack_from("<Q", m, 16)[0], struct.unpack_from("<Q", m, 24)[0],
                          struct.unpack_from("<I", m, 32)[0]))
    return max(metas)


def read_page(path, pg):
    with open(path, "rb") as f:
        f.seek(pg * PS)
        return f.read(PS)


def middle_leaf(path):
    """(page number, first key) of a leaf that is on neither edge path of a
    depth-2 tree (open verifies the edge paths)."""
    _, root, depth = newest_meta(path)
    assert depth == 2, depth
    p = read_page(path, root)
    n = struct.unpack_from("<H", p, 6)[0]
    assert n >= 3, n
    off = struct.unpack_from("<H", p, 32 + 2 * (n // 2))[0]
    child = struct.unpack_from("<Q", p, off + 2)[0]
    leaf = read_page(path, child)
    coff = struct.unpack_from("<H", leaf, 32)[0]
    klen = struct.unpack_from("<H", leaf, coff)[0]
    return child, leaf[coff + 6:coff + 6 + klen]


def build_two_level(path, n=400, **kw):
    with kvmap.open(path, **kw) as db:
        db.update({b"key%05d" % i: make_value(i, 60) for i in range(n)})


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# ---------------------------------------------------------------------------
# 1. a failed write of a bytearray / memoryview value, then gc


GC_CHILD = r"""
import gc, mmap, kvmap
path, key = ARGS["path"], bytes.fromhex(ARGS["key"])
db = kvmap.open(path)
for value in (bytearray(b"x" * 50), memoryview(bytearray(b"y" * 50)), memoryview(b"z" * 50)):
    try:
        db[key] = value
    except kvmap.CorruptionError:
        pass
    else:
        raise SystemExit("the write into a damaged leaf succeeded")
    gc.collect()
# one byte over the largest value: ValueError, then the same
big = mmap.mmap(-1, (1 << 32) + 1)   # address space only: never touched
for value in (memoryview(big), ):
    try:
        db[b"big"] = value
    except ValueError:
        pass
    else:
        raise SystemExit("an oversize value was accepted")
    del value
gc.collect()
db.close()
gc.collect()
print("DONE")
"""


def test_failed_buffer_write_then_gc(tmp_path):
    path = str(tmp_path / "db")
    build_two_level(path)
    leaf, key = middle_leaf(path)
    flip_byte(path, leaf * PS + 4)        # the leaf's type byte
    rc, out, err = run_python(GC_CHILD, args=dict(path=path, key=key.hex()))
    assert_child_ok(rc, out, err, "DONE")


# ---------------------------------------------------------------------------
# 2. close() racing threads


RACE_CHILD = r"""
import random, sys, threading, time, kvmap
sys.setswitchinterval(1e-5)
cfg, rounds, seed = ARGS["cfg"], ARGS["rounds"], ARGS["seed"]
rng = random.Random(seed)
bad = []
for r in range(rounds):
    path = ARGS["dir"] + "/race%d" % r
    db = kvmap.open(path, **cfg)
    db.update({b"k%04d" % i: b"v" * 40 for i in range(300)})
    go = threading.Event()
    snaps = []

    def guard(fn):
        def run():
            go.wait()
            try:
                while True:
                    fn()
            except kvmap.ClosedError:
                pass
            except BaseException as e:
                bad.append("%s: %r" % (fn.__name__, e))
        return run

    def reader():
        db.get(b"k%04d" % rng.randrange(300))
    def iterate():
        for _ in db.items():
            pass
    def writer():
        with db.transaction() as t:
            for i in range(5):
                t[b"k%04d" % rng.randrange(400)] = b"w" * rng.randrange(1, 3000)
    def snapshot():
        with db.snapshot() as s:
            snaps.append(s)
            for _ in s.irange(b"k0100", b"k0200"):
                pass
            s.get(b"k0001")
    def held():   # a snapshot another thread closes under it
        if snaps:
            s = snaps.pop()
            s.close()
        s = db.snapshot()
        snaps.append(s)
        len(s), s.get(b"k0005"), list(s.irange(b"k0001", b"k0010"))
    kinds = [reader, iterate, writer, snapshot, held]
    threads = [threading.Thread(target=guard(f)) for f in rng.sample(kinds, rng.randrange(2, 5))]
    for t in threads:
        t.start()
    go.set()
    time.sleep(rng.random() * 0.02)
    db.close()
    for t in threads:
        t.join(30)
        if t.is_alive():
            bad.append("a thread hung after close")
    for s in snaps:
        try:
            s.get(b"k0001")
            bad.append("a snapshot read after close")
        except kvmap.ClosedError:
            pass
print("BAD", len(bad))
for b in bad[:20]:
    print(b)
print("DONE")
"""


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_close_races_threads(tmp_path, cfg):
    """200 rounds in all (about 29 per configuration): 2-4 threads read,
    iterate, write and snapshot while the main thread closes; no crash,
    every error a ClosedError, no hang."""
    rounds = -(-200 // len(CONFIGS))
    rc, out, err = run_python(RACE_CHILD, args=dict(cfg=cfg, rounds=rounds, dir=str(tmp_path),
                                                    seed=config_id(cfg)), timeout=600)
    assert_child_ok(rc, out, err, "DONE")
    assert "BAD 0" in out, out


SELF_RACE_CHILD = r"""
import sys, threading, kvmap
sys.setswitchinterval(1e-6)    # switch threads between almost any two bytecodes
db = kvmap.open(ARGS["path"])
db.update({b"k%04d" % i: b"v" * 40 for i in range(300)})
bad = []
for r in range(200):
    snap = db.snapshot()
    it = snap.irange_items()
    next(it)
    t = threading.Thread(target=snap.close)
    t.start()
    try:
        for _ in range(300):
            next(it)
    except (kvmap.ClosedError, StopIteration):
        pass
    except BaseException as e:
        bad.append(repr(e))
    t.join()
    # a transaction aborted by another thread while its owner writes
    txn = db.transaction()
    t = threading.Thread(target=txn.abort)
    t.start()
    try:
        for i in range(200):
            txn[b"x%04d" % i] = b"y" * 100
        txn.commit()
    except kvmap.ClosedError:
        pass
    except BaseException as e:
        bad.append(repr(e))
    t.join()
    db._check()
db.close()
print("BAD", bad[:5])
print("DONE")
"""


def test_snapshot_and_transaction_closed_by_another_thread(tmp_path):
    rc, out, err = run_python(SELF_RACE_CHILD, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    assert "BAD []" in out, out


def test_handle_outlives_its_opening_thread(tmp_path):
    import threading
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("db", kvmap.open(str(tmp_path / "db"))))
    t.start()
    t.join()
    db = box.pop("db")
    db[b"a"] = b"1"
    with db.transaction() as txn:
        txn[b"b"] = b"2"
    assert dict(db) == {b"a": b"1", b"b": b"2"}
    db.close()


SHUTDOWN_CHILD = r"""
import kvmap
db = kvmap.open(ARGS["path"])
db[b"a"] = b"1"
snap = db.snapshot()
txn_db = kvmap.open(ARGS["path"] + "2")
txn = txn_db.transaction()
txn[b"b"] = b"2"
it = iter(db.items())
next(it)
print("DONE")
# everything left open for interpreter shutdown
"""


def test_shutdown_with_everything_open(tmp_path):
    rc, out, err = run_python(SHUTDOWN_CHILD, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    with kvmap.open(str(tmp_path / "db2")) as db:
        assert len(db) == 0           # the open transaction was not committed


# ---------------------------------------------------------------------------
# 3. copy and pickle


COPY_CHILD = r"""
import copy, pickle, kvmap
db = kvmap.open(ARGS["path"])
db[b"a"] = b"1"
snap = db.snapshot()
it = iter(db.items())
objs = {"Database": db, "Snapshot": snap, "iterator": it, "keys view": db.keys(),
        "keys iterator": iter(db.keys()), "values iterator": iter(db.values())}
seen = []
for name, obj in objs.items():
    for how in (copy.copy, copy.deepcopy, pickle.dumps):
        try:
            c = how(obj)
        except TypeError as e:
            seen.append((name, how.__name__, str(e)))
        else:
            if not (name == "keys view" and how is copy.copy):
                raise SystemExit("%s of %s did not raise" % (how.__name__, name))
with db.transaction() as txn:
    for how in (copy.copy, copy.deepcopy, pickle.dumps):
        try:
            how(txn)
        except TypeError as e:
            seen.append(("Transaction", how.__name__, str(e)))
        else:
            raise SystemExit("%s of a Transaction did not raise" % how.__name__)
for s in seen:
    print("RAISED", *s)
snap.close()
assert db[b"a"] == b"1"
db.close()
import gc; gc.collect()
print("DONE")
"""


def test_copy_and_pickle_are_refused(tmp_path):
    rc, out, err = run_python(COPY_CHILD, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    raised = [line for line in out.splitlines() if line.startswith("RAISED")]
    assert len(raised) == 20, out       # every case but copy.copy of a keys view
    for line in raised:
        if "Database" in line or "Snapshot" in line or "Transaction" in line:
            if "dumps" in line:
                assert "open it in the other process" in line, line
            else:
                assert "open the path again" in line, line


# ---------------------------------------------------------------------------
# 4. fork


FORK_CHILD = r"""
import os, subprocess, sys, kvmap
path = ARGS["path"]
db = kvmap.open(path)
db[b"parent:0"] = b"0"
snap = db.snapshot()
it = iter(db.items())
next(it)
txn = None

# Another process writes: it opens the file beside the parent's handle, and
# overwrites parent:0 many times (so pages the parent's old snapshot reads
# would be reused, were its reader slot gone), then adds a key of its own.
OTHER = ("import kvmap, sys\n"
         "with kvmap.open(sys.argv[1]) as db:\n"
         "    for i in range(300):\n"
         "        db[b'parent:0'] = b'other%d' % i\n"
         "    db[b'other:' + sys.argv[2].encode()] = b'1'\n"
         "print('WROTE')\n")

def other_process_writes(mode):
    out = subprocess.run([sys.executable, "-c", OTHER, path, mode], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() + out.stderr.strip()

def child(mode):
    if mode == "close":
        db.close()
        snap.close()
        os._exit(0)
    if mode == "exit":
        sys.exit(0)          # normal exit: collection and shutdown close everything
    if mode == "_exit":
        os._exit(0)
    if mode == "use":
        errs = []
        for name, fn in [("get", lambda: db[b"parent:0"]), ("len", lambda: len(db)),
                         ("put", lambda: db.__setitem__(b"child", b"1")),
                         ("transaction", lambda: db.transaction()),
                         ("snapshot", lambda: db.snapshot()),
                         ("items", lambda: list(db.items())),
                         ("old snapshot", lambda: snap[b"parent:0"]),
                         ("old iterator", lambda: next(it)),
                         ("stats", lambda: db.stats())]:
            try:
                fn()
            except kvmap.InheritedHandleError as e:
                errs.append(name)
                msg = str(e)
            except BaseException as e:
                print("WRONG", name, repr(e))
        print("REFUSED", len(errs), "of 9", "parent process" in msg and "open the database again" in msg)
        sys.stdout.flush()
        db.close()
        os._exit(0)

n = 0
for mode in ARGS["modes"]:
    pid = os.fork()
    if pid == 0:
        child(mode)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (mode, status)
    print("AFTER", mode, other_process_writes(mode))
    # the parent's snapshot from before the fork still reads its commit:
    # the child left the parent's reader slots alone
    print("SNAPSHOT", mode, snap[b"parent:0"] == b"0" and list(snap.items()) == [(b"parent:0", b"0")])
    for i in range(20):
        n += 1
        db[b"parent:%d" % n] = b"%d" % n
print("COMMITS", n)
snap.close()
del it
db.close()
with kvmap.open(path) as db:
    assert len(db) == n + 1 + len(ARGS["modes"]), (len(db), n)
    assert all(db[b"parent:%d" % i] == b"%d" % i for i in range(1, n + 1))
    assert db[b"parent:0"] == b"other299"
    assert all(db[b"other:" + m.encode()] == b"1" for m in ARGS["modes"])
print("CHECK", kvmap.check(path).ok)
print("DONE")
"""


def test_fork_never_releases_the_parents_locks(tmp_path):
    """A child that closes, exits or uses the handle it inherited refuses
    every use of it and releases nothing of the parent's: after each child,
    another process writes beside the parent (it waits its turn, never
    LockedError), churning the key the parent's old snapshot reads, and the
    snapshot still reads its commit; every process's commits survive."""
    modes = ["close", "exit", "_exit", "use"]
    rc, out, err = run_python(FORK_CHILD, args=dict(path=str(tmp_path / "db"), modes=modes))
    assert_child_ok(rc, out, err, "DONE")
    for mode in modes:
        assert f"AFTER {mode} WROTE" in out, out
        assert f"SNAPSHOT {mode} True" in out, out
    assert "REFUSED 9 of 9 True" in out and "WRONG" not in out, out
    assert "COMMITS 80" in out and "CHECK True" in out, out


@pytest.mark.parametrize("parent_writes", [False, True], ids=["parent-reads", "parent-writes"])
def test_fork_child_opens_the_file_itself(tmp_path, parent_writes):
    """A child opens the file for writing on its own while the parent holds
    it open -- reading, or writing at the same time: both sets of commits
    survive, and each process sees the other's."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db[b"a"] = b"1"
    code = r"""
import os, kvmap
path, parent_writes = ARGS["path"], ARGS["parent_writes"]
parent = kvmap.open(path, readonly=not parent_writes)
pid = os.fork()
if pid == 0:
    with kvmap.open(path) as own:
        ok = own[b"a"] == b"1"
        for i in range(200):
            own[b"child:%03d" % i] = b"c"
    os._exit(0 if ok else 1)
if parent_writes:
    for i in range(200):
        parent[b"parent:%03d" % i] = b"p"
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0
assert len(list(parent.prefix(b"child:"))) == 200        # the child's commits, seen here
parent.close()
with kvmap.open(path) as db:
    assert len(db) == 1 + 200 + (200 if parent_writes else 0), len(db)
    db._check()
print("CHECK", kvmap.check(path).ok)
print("DONE")
"""
    rc, out, err = run_python(code, args=dict(path=path, parent_writes=parent_writes))
    assert_child_ok(rc, out, err, "DONE")
    assert "CHECK True" in out


# ---------------------------------------------------------------------------
# 5. checksums: a write never launders a damaged page; verifying reads


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_write_does_not_launder_a_damaged_page(tmp_path, cfg):
    path = str(tmp_path / "db")
    build_two_level(path, **cfg)
    leaf, first = middle_leaf(path)
    flip_byte(path, (leaf + 1) * PS - 20)      # inside the last cell's value
    assert not kvmap.check(path).ok
    with open_db(path, cfg) as db:
        with pytest.raises(kvmap.CorruptionError, match=f"page {leaf}: checksum"):
            db[first + b"x"] = b"lands in the damaged leaf"
        if not db.verify_checksums:   # a verifying handle's _check() reads the damage
            db._check()
    rep = kvmap.check(path)
    assert not rep.ok and any(p.kind == "bad-checksum" and p.page == leaf for p in rep.problems), rep


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_verifying_reads_name_the_damaged_page(tmp_path, cfg):
    path = str(tmp_path / "db")
    build_two_level(path, **cfg)
    leaf, first = middle_leaf(path)
    flip_byte(path, (leaf + 1) * PS - 20)
    with open_db(path, cfg, verify_checksums=True) as db:
        assert db.stats()["verify_checksums"]
        with pytest.raises(kvmap.CorruptionError, match=f"page {leaf}: checksum"):
            db[first]
        with pytest.raises(kvmap.CorruptionError, match=f"page {leaf}: checksum"):
            list(db.items())
        assert db[b"key00000"] == make_value(0, 60)    # the rest reads fine
    with open_db(path, cfg, verify_checksums=False) as db:
        assert db[first] is not None                    # unverified: read as it is
    with open_db(path, cfg) as db:
        assert db.verify_checksums == (cfg["backend"] == "pread")


def test_damaged_overflow_page_is_not_freed_through(tmp_path):
    """Overwriting a value frees its overflow chain by following its next
    pointers.  A chain page whose next pointer was damaged to point into
    another value's chain raises, instead of freeing that value's pages."""
    path = str(tmp_path / "db")
    with kvmap.open(path) as db:
        db[b"a"] = make_value(1, 3 * PS)      # commit 2: 4 overflow pages
        db[b"b"] = make_value(2, 3 * PS)      # commit 3: 4 more
    data = open(path, "rb").read()

    def chain(txnid):
        return [pg for pg in range(2, len(data) // PS) if data[pg * PS + 4] == 3
                and struct.unpack_from("<Q", data, pg * PS + 8)[0] == txnid]
    a, b = chain(2), chain(3)
    assert len(a) == len(b) == 4
    with open(path, "r+b") as f:             # a's first page now leads into b's chain
        f.seek(a[0] * PS + 24)
        f.write(struct.pack("<Q", b[1]))
    with kvmap.open(path) as db:
        with pytest.raises(kvmap.CorruptionError, match=f"page {a[0]}: checksum"):
            db[b"a"] = b"small"
        db._check()
        assert db[b"b"] == make_value(2, 3 * PS)
    rep = kvmap.check(path)
    assert {p.page for p in rep.problems if p.kind == "bad-checksum"} == {a[0]}, rep


# ---------------------------------------------------------------------------
# 6. creation: a full disk, and whatever an interrupted creation leaves


def creation_image(ps=PS):
    """The bytes a new database starts with (three meta pages)."""
    d = tmp = None
    import tempfile
    d = tempfile.mkdtemp()
    tmp = os.path.join(d, "new")
    kvmap.open(tmp, page_size=ps).close()
    with open(tmp, "rb") as f:
        return f.read()


@pytest.mark.parametrize("ps", [PS, 16384])
def test_every_leftover_of_creation_is_initialised(tmp_path, ps):
    """Any prefix of the creation image, and any mix of its sectors written
    or not (zero), holds no data: a writable open initialises it; a
    read-only open refuses it saying so; nothing else is such a file."""
    img = creation_image(ps)
    assert len(img) == 3 * ps            # metas 0, 1 and 2
    cases = {}
    for n in sorted({1, 16, 100, 128, 129, 512, 4095, 4096, 4200, ps, ps + 128, 2 * ps - 1, 2 * ps,
                     2 * ps + 128, 3 * ps - 1}):
        if n <= len(img):
            cases[f"prefix{n}"] = img[:n]
    for lost in ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2)):
        sec = bytearray(img)
        for k in lost:                   # these metas' sectors lost, the others written
            sec[k * ps:k * ps + 512] = bytes(512)
        cases["lost-meta" + "".join(map(str, lost))] = bytes(sec)
    cases["zeros-short"] = bytes(ps + 7)
    kw = {} if ps == PS else dict(page_size=ps)
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        try:   # a whole meta page already opens: an empty database
            with kvmap.open(str(p), readonly=True, **kw) as db:
                assert len(db) == 0, name
        except kvmap.FormatError as e:
            assert "interrupted creation" in str(e), (name, e)
        assert p.read_bytes() == data, name
        with kvmap.open(str(p), **kw) as db:
            assert len(db) == 0 and db.page_size == ps, name
            db[b"x"] = b"y"
        with kvmap.open(str(p), readonly=True) as db:
            assert dict(db) == {b"x": b"y"}, name
        assert kvmap.check(str(p)).ok, name


def test_truncated_real_database_is_not_taken_for_a_creation(tmp_path):
    """A committed database cut to its meta pages or less still raises: its meta
    carries a txnid and tree that creation never writes."""
    p = tmp_path / "db"
    with kvmap.open(str(p)) as db:
        for i in range(5):
            db[b"k%d" % i] = b"v" * 100
    data = p.read_bytes()
    for n in (100, 128, PS, PS + 300, 2 * PS, 2 * PS + 300, 3 * PS):
        p.write_bytes(data[:n])
        with pytest.raises((kvmap.CorruptionError, kvmap.FormatError)):
            kvmap.open(str(p)).close()
        assert p.read_bytes() == data[:n]


def test_creation_out_of_space_is_diskfull_and_recoverable(tmp_path):
    """posix_fallocate of the new file fails with ENOSPC (injected), then a
    short write: DiskFullError, and the next open initialises the file."""
    from kvmap._lib import lib
    code = r"""
import errno, os, kvmap
from kvmap._lib import lib
path = ARGS["path"]
lib.kvm_fault_set(lib.KVM_SYS_FALLOCATE, 1, errno.ENOSPC, 0)
try:
    kvmap.open(path)
except kvmap.DiskFullError as e:
    print("RAISED", e.errno == errno.ENOSPC, e.filename == path)
lib.kvm_fault_clear()
print("SIZE", os.path.getsize(path))
with kvmap.open(path) as db:
    db[b"a"] = b"1"
print("DONE")
"""
    rc, out, err = run_python(code, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    assert "RAISED True True" in out and "SIZE 0" in out, out
    assert lib is not None


def test_creation_on_a_nearly_full_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", "256k") as mnt:
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.truncate(filler, os.path.getsize(filler) - 4096)   # exactly one page free
        path = str(mnt / "db")
        with pytest.raises(kvmap.DiskFullError) as ei:
            kvmap.open(path)
        assert ei.value.errno == errno.ENOSPC and ei.value.filename == path
        # whatever it left, it is not a permanent error: free space, open again
        os.unlink(filler)
        with kvmap.open(path) as db:
            db[b"a"] = b"1"
        with kvmap.open(path, readonly=True) as db:
            assert db[b"a"] == b"1"


# ---------------------------------------------------------------------------
# 7. after MapFullError, writes that fit still succeed


def test_small_writes_fill_the_reservation(tmp_path):
    """With map_size 8 MiB, one-value transactions go on until a
    transaction's worst case (about 15 pages) no longer fits in what is
    left of the reservation, not until a growth step does."""
    path = str(tmp_path / "db")
    cap = 8 << 20
    with kvmap.open(path, map_size=cap, sync=False) as db:
        i = 0
        err = None
        while i < 5000:
            try:
                db[b"k%05d" % i] = make_value(i, 3000)     # one overflow page each
            except kvmap.MapFullError as e:
                err = e
                break
            i += 1
        assert err is not None
        st = db.stats()
        assert cap - st["file_size"] < 32 * PS, (cap, st["file_size"], i)
        assert "more pages fit" in str(err) and "map_size" in str(err), err
        db._check()
        assert db[b"k%05d" % (i - 1)] == make_value(i - 1, 3000)
    assert kvmap.check(path).ok


# ---------------------------------------------------------------------------
# 9. errors from an errno


def test_missing_directory_is_file_not_found(tmp_path):
    path = str(tmp_path / "no" / "such" / "db")
    with pytest.raises(FileNotFoundError) as ei:
        kvmap.open(path)
    e = ei.value
    assert isinstance(e, kvmap.Error) and isinstance(e, kvmap.IOFailure)
    assert e.errno == errno.ENOENT and e.filename == path and e.strerror == os.strerror(errno.ENOENT)
    assert path in str(e)
    with pytest.raises(FileNotFoundError) as ei:
        kvmap.open(str(tmp_path / "absent"), create=False)
    assert isinstance(ei.value, kvmap.Error) and ei.value.filename == str(tmp_path / "absent")


def test_permission_denied_is_permission_error(tmp_path):
    code = r"""
import errno, kvmap
from kvmap._lib import lib
lib.kvm_fault_set(lib.KVM_SYS_OPEN, 1, errno.EACCES, 0)
try:
    kvmap.open(ARGS["path"])
except PermissionError as e:
    print("OK", isinstance(e, kvmap.Error), e.errno == errno.EACCES, e.filename == ARGS["path"])
print("DONE")
"""
    rc, out, err = run_python(code, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    assert "OK True True True" in out, out


@pytest.mark.parametrize("readonly", [False, True])
def test_directory_is_refused(tmp_path, readonly):
    with pytest.raises(IsADirectoryError) as ei:
        kvmap.open(str(tmp_path), readonly=readonly)
    assert isinstance(ei.value, kvmap.Error) and ei.value.filename == str(tmp_path)


@pytest.mark.parametrize("readonly", [False, True])
def test_special_files_are_refused(tmp_path, readonly):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    for path in ("/dev/null", fifo):       # a FIFO opened read-only must not hang
        with pytest.raises(kvmap.FormatError, match="not a regular file") as ei:
            kvmap.open(path, readonly=readonly)
        assert path in str(ei.value)


def test_every_exception_class_is_a_kvmap_error():
    import inspect

    import kvmap.errors
    for name in kvmap.__all__:
        obj = getattr(kvmap, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, kvmap.Error), name
    for name, obj in vars(kvmap.errors).items():
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "kvmap.errors":
            assert issubclass(obj, kvmap.Error), name


def test_os_errors_pickle():
    e = kvmap.errors.os_error(errno.ENOENT, "opening", "/x")
    f = pickle.loads(pickle.dumps(e))
    assert type(f) is type(e) and f.errno == e.errno and f.filename == "/x" and str(f) == str(e)


# ---------------------------------------------------------------------------
# also: the read buffer of a thread does not keep the largest value


LARGE_CHILD = r"""
import gc, resource, kvmap
path, backend = ARGS["path"], ARGS["backend"]
size = 128 << 20
kw = dict(backend=backend, cache_size=4 << 20)
with kvmap.open(path, **kw) as db:
    db[b"big"] = bytes(size)
gc.collect()
def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
with kvmap.open(path, **kw) as db:
    # reset the high-water mark of this process
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss_kib()
    v = db[b"big"]
    peak = rss_kib() - base
    assert len(v) == size and v.count(0) == size
    del v
    for k, v in db.items():
        pass
    del k, v
    from kvmap._lib import buffers
    print("BUFFER", buffers.cap)
print("PEAK_MIB", peak // 1024)
print("DONE")
"""


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_reading_a_large_value_costs_about_one_copy(tmp_path, backend):
    rc, out, err = run_python(LARGE_CHILD, args=dict(path=str(tmp_path / "db"), backend=backend))
    assert_child_ok(rc, out, err, "DONE")
    peak = int(out.split("PEAK_MIB")[1].split()[0])
    assert peak < 128 * 1.5, out            # one copy of 128 MiB, not two or three
    assert "BUFFER 65536" in out, out        # the scan's buffer went back to its usual size
