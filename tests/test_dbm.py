"""kvmap in dbm's place: ``kvmap.open(path, flag, mode)`` with dbm's flags
and mode, ``sync()``, and ``shelve.Shelf`` over it.  The checks follow what
CPython's Lib/test/test_dbm*.py expect of every dbm module where they apply
to a bytes-to-bytes store (str keys and values are stored as UTF-8)."""

import errno
import os
import shelve
import stat
import time

import pytest

import kvmap


def test_flag_c_creates_and_reopens(tmp_path):
    p = str(tmp_path / "db")
    with kvmap.open(p, "c") as db:
        db[b"a"] = b"1"
        db["b"] = "2"
    with kvmap.open(p, "c") as db:
        assert dict(db) == {b"a": b"1", b"b": b"2"}


def test_flag_r_is_read_only(tmp_path):
    p = str(tmp_path / "db")
    kvmap.open(p, "c").close()
    with kvmap.open(p, "r") as db:
        assert db.readonly
        with pytest.raises(kvmap.ReadOnlyError):
            db[b"a"] = b"1"
    with pytest.raises(FileNotFoundError):
        kvmap.open(str(tmp_path / "missing"), "r")


def test_flag_w_needs_the_file(tmp_path):
    p = str(tmp_path / "db")
    with pytest.raises(FileNotFoundError) as ei:
        kvmap.open(p, "w")
    assert isinstance(ei.value, kvmap.Error) and ei.value.errno == errno.ENOENT
    assert not os.path.exists(p)
    kvmap.open(p, "c").close()
    with kvmap.open(p, "w") as db:
        db[b"x"] = b"y"
        assert not db.readonly


def test_flag_n_starts_empty(tmp_path):
    p = str(tmp_path / "db")
    with kvmap.open(p) as db:
        db.update({b"k%d" % i: b"v" * 500 for i in range(2000)})
    with kvmap.open(p, "n") as db:
        assert len(db) == 0
        db[b"fresh"] = b"1"
    with kvmap.open(p, "r") as db:
        assert dict(db) == {b"fresh": b"1"}
    assert kvmap.check(p).ok
    # a file that is not a database at all: "n" makes one of it, as dbm does
    q = tmp_path / "notes.txt"
    q.write_bytes(b"not a database\n" * 100)
    with kvmap.open(str(q), "n") as db:
        assert len(db) == 0


def test_flag_n_never_truncates_a_file_in_use(tmp_path):
    p = str(tmp_path / "db")
    with kvmap.open(p) as db:
        db[b"keep"] = b"me"
        before = open(p, "rb").read()
        with pytest.raises(kvmap.LockedError):
            kvmap.open(p, "n")
        assert open(p, "rb").read() == before
        assert db[b"keep"] == b"me"


def test_mode_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = str(tmp_path / "private")
        kvmap.open(p, "c", 0o600).close()
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        q = str(tmp_path / "default")
        kvmap.open(q).close()
        assert stat.S_IMODE(os.stat(q).st_mode) == 0o644      # 0o666 & ~0o022
    finally:
        os.umask(old)


def test_bad_flags_and_disagreements(tmp_path):
    p = str(tmp_path / "db")
    for flag in ("x", "rw", "", "cf"):
        with pytest.raises(ValueError):
            kvmap.open(p, flag)
    with pytest.raises(ValueError):
        kvmap.open(p, "r", readonly=False)
    with pytest.raises(ValueError):
        kvmap.open(p, "w", create=True)
    with pytest.raises(ValueError):
        kvmap.open(p, "c", 0o10000)
    assert not os.path.exists(p)
    with kvmap.open(p, "c", readonly=False) as db:    # agreeing: fine
        db[b"a"] = b"b"


def test_sync_method(tmp_path):
    p = str(tmp_path / "db")
    with kvmap.open(p, sync=False) as db:
        db[b"a"] = b"1"
        n = db.stats()["syscalls"]["fdatasync"]
        db.sync()
        assert db.stats()["syscalls"]["fdatasync"] == n + 1
        assert db.stats()["sync"] is False
    with kvmap.open(p, "r") as db:
        db.sync()                                     # read-only: nothing to do
    db.close()
    with pytest.raises(kvmap.ClosedError):
        db.sync()


def test_sync_options_and_durability_figures(tmp_path):
    """sync=False commits are durable once a flush says so: stats() reports
    the newest durable commit and what is unsynced; sync_bytes makes a
    commit that reaches it flush; close() flushes and seals."""
    p = str(tmp_path / "db")
    with kvmap.open(p, sync=False, sync_bytes=64 << 10) as db:
        db[b"a"] = b"1"
        st = db.stats()
        assert st["durable_txnid"] < st["txnid"] and st["unsynced_bytes"] > 0
        db.sync()
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and st["unsynced_bytes"] == 0
        n = st["syscalls"]["fdatasync"]
        for i in range(64):                   # 64 commits of a few pages: 64 KiB is reached
            db[b"k%d" % i] = b"x" * 100
        st = db.stats()
        assert st["syscalls"]["fdatasync"] > n and st["unsynced_bytes"] < 64 << 10
    with kvmap.open(p, "r") as db:            # close flushed and sealed: nothing to verify
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and not st["meta_fallback"] and len(db) == 65
    with kvmap.open(p, sync=False, sync_interval=0.001) as db:
        db[b"b"] = b"2"
        time.sleep(0.02)                       # well past the interval: the next commit flushes
        db[b"c"] = b"3"
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and st["unsynced_bytes"] == 0
    for bad in (dict(sync_bytes=0), dict(sync_bytes=4095), dict(sync_bytes=1.5), dict(sync_interval=0),
                dict(sync_interval=-1), dict(sync_interval="1")):
        with pytest.raises(ValueError):
            kvmap.open(p, **bad)


def test_sync_failure_fails_the_handle(tmp_path):
    from conftest import assert_child_ok, run_python
    code = r"""
import errno, kvmap
from kvmap._lib import lib
db = kvmap.open(ARGS["path"], sync=False)
db[b"a"] = b"1"
lib.kvm_fault_set(lib.KVM_SYS_FDATASYNC, 1, errno.EIO, 0)
try:
    db.sync()
except kvmap.IOFailure as e:
    print("RAISED", e.errno == errno.EIO)
lib.kvm_fault_clear()
try:
    db[b"b"] = b"2"
except kvmap.FailedError:
    print("FAILED HANDLE")
db.close()
with kvmap.open(ARGS["path"]) as db:
    assert db[b"a"] == b"1"
print("DONE")
"""
    rc, out, err = run_python(code, args=dict(path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "DONE")
    assert "RAISED True" in out and "FAILED HANDLE" in out, out


def test_dbm_mapping_behaviour(tmp_path):
    """The checks CPython's dbm tests make of every dbm module."""
    p = str(tmp_path / "db")
    with kvmap.open(p, "c") as db:
        assert list(db.keys()) == [] and len(db) == 0
        db[b"a"] = b"b"
        db[b"12345678910"] = b"019237410982340912840198242"
        db["str"] = "value"                           # str in, UTF-8 bytes out
        assert db[b"str"] == b"value" and db["str"] == b"value"
        assert b"a" in db and "a" in db and b"zz" not in db
        assert db.get(b"zz") is None and db.get(b"zz", b"d") == b"d"
        with pytest.raises(KeyError):
            db[b"zz"]
        assert db.setdefault(b"new", b"v") == b"v" and db.setdefault(b"new", b"w") == b"v"
        del db[b"new"]
        with pytest.raises(KeyError):
            del db[b"new"]
        assert sorted(db.keys()) == sorted([b"a", b"12345678910", b"str"])
        for bad in (1, None, 3.5):
            with pytest.raises(TypeError):
                db[bad] = b"x"
            with pytest.raises(TypeError):
                db[b"k"] = bad
        db[b"empty"] = b""
        assert db[b"empty"] == b""
    with kvmap.open(p, "r") as db:
        assert len(db) == 4


def test_shelve_over_kvmap(tmp_path):
    p = str(tmp_path / "shelf")
    with shelve.Shelf(kvmap.open(p, "c")) as shelf:
        shelf["list"] = [1, 2, 3]
        shelf["dict"] = {"nested": ("tuple", 4.5)}
        shelf.sync()
    with shelve.Shelf(kvmap.open(p, "w"), writeback=True) as shelf:
        shelf["list"].append(4)                       # writeback: written at close
        assert sorted(shelf) == ["dict", "list"]
    with shelve.Shelf(kvmap.open(p, "r")) as shelf:
        assert shelf["list"] == [1, 2, 3, 4]
        assert shelf["dict"] == {"nested": ("tuple", 4.5)}
