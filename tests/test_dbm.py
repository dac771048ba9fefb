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
    the newest durable commit, the one a background flush makes durable,
    and what is unsynced; sync_bytes and sync_interval make a commit start
    a flush of itself; sync() and close() flush and wait (close seals)."""
    p = str(tmp_path / "db")
    with kvmap.open(p, sync=False, sync_bytes=64 << 10) as db:
        db[b"a"] = b"1"
        st = db.stats()
        assert st["durable_txnid"] < st["txnid"] and st["unsynced_bytes"] > 0
        db.sync()
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and st["unsynced_bytes"] == 0
        n = st["syscalls"]["fdatasync"]
        for i in range(64):                   # 64 commits of a few pages: 64 KiB is reached, a flush runs
            db[b"k%d" % i] = b"x" * 100
        st = db.stats()
        # unsynced stays below twice sync_bytes: a commit there flushes and waits
        assert st["syscalls"]["fdatasync"] > n and st["unsynced_bytes"] < 2 * (64 << 10)
    with kvmap.open(p, "r") as db:            # close flushed and sealed: nothing to verify
        st = db.stats()
        assert st["durable_txnid"] == st["txnid"] and not st["meta_fallback"] and len(db) == 65
    with kvmap.open(p, sync=False, sync_interval=0.2) as db:
        db[b"b"] = b"2"                        # right after open (which counts as a flush)
        st = db.stats()
        assert st["flushing_txnid"] is None and st["durable_txnid"] < st["txnid"]
        time.sleep(0.25)                       # past the interval: the next commit starts a flush of itself
        db[b"c"] = b"3"
        st = db.stats()
        assert st["flushing_txnid"] == st["txnid"]
        db.sync()                              # waits for it
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


# ---------------------------------------------------------------------------
# kvmap.dbm against the checklist of CPython's Lib/test/test_dbm.py (what it
# asks of every dbm module) and test_dbm_sqlite3.py (read-only handles,
# misuse, a damaged file).  Not applicable: dbm.whichdb (it knows only the
# standard library's formats); the vacuum checks (they return early for a
# module without vacuum(); kvmap gives space back on its own: hole
# punching); and dbm.sqlite3's non-bytes keys and values (10, 2.5, None):
# kvmap stores bytes and str and raises TypeError for the rest, as dbm.gnu,
# dbm.ndbm and dbm.dumb do.

import kvmap.dbm

DICT = {"a": b"Python:", "b": b"Programming", "c": b"the", "d": b"way", "f": b"Guido", "g": b"intended"}


class _FakePath:
    """os.PathLike, as test.support.os_helper.FakePath."""

    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


@pytest.fixture
def fname(tmp_path):
    return str(tmp_path / "dbmtest")


def _init_db(fname):
    with kvmap.dbm.open(fname, "n") as f:
        for k, v in DICT.items():
            f[k.encode("ascii")] = v


def _read_helper(f, expected=DICT):
    assert sorted(k.decode("ascii") for k in f.keys()) == sorted(expected)
    for k, v in expected.items():
        assert f[k.encode("ascii")] == v


def test_dbm_error_is_an_oserror_and_every_kvmap_error():
    assert issubclass(kvmap.dbm.error, OSError)
    for cls in (kvmap.CorruptionError, kvmap.FormatError, kvmap.LockedError, kvmap.ReadOnlyError,
                kvmap.ClosedError, kvmap.IOFailure, kvmap.DiskFullError):
        assert issubclass(cls, kvmap.dbm.error)


def test_dbm_not_existing(fname):
    with pytest.raises(kvmap.dbm.error):
        kvmap.dbm.open(fname)                   # dbm's default flag: "r"
    assert not os.path.exists(fname)


def test_dbm_creation(fname):
    f = kvmap.dbm.open(fname, "c")
    assert f.keys() == []
    for k, v in DICT.items():
        f[k.encode("ascii")] = v
    _read_helper(f)
    f.close()


def test_dbm_creation_n_over_an_empty_file(fname):
    open(fname, "wb").close()
    with kvmap.dbm.open(fname, "n") as f:
        assert len(f) == 0


def test_dbm_modification(fname):
    _init_db(fname)
    f = kvmap.dbm.open(fname, "c")
    expected = dict(DICT, g=b"indented")
    f[b"g"] = b"indented"
    _read_helper(f, expected)
    assert f.setdefault(b"xxx", b"foo") == b"foo"
    assert f[b"xxx"] == b"foo"
    f.close()


def test_dbm_read(fname):
    _init_db(fname)
    f = kvmap.dbm.open(fname, "r")
    _read_helper(f)
    assert f.get(b"a") == DICT["a"]
    assert f.get(b"xxx", b"foo") == b"foo"
    assert f.get(b"xxx") is None
    with pytest.raises(KeyError):
        f[b"xxx"]
    assert b"a" in f and f[b"a"] == b"Python:"
    f.close()


def test_dbm_empty_value(fname):
    f = kvmap.dbm.open(fname, "c")
    assert f.keys() == []
    f[b"empty"] = b""
    assert f.keys() == [b"empty"]
    assert b"empty" in f
    assert f[b"empty"] == b"" and f.get(b"empty") == b"" and f.setdefault(b"empty") == b""
    f.close()


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike", "pathlike-bytes"])
def test_dbm_open_with_any_path(fname, kind):
    path = {"str": fname, "bytes": os.fsencode(fname), "pathlike": _FakePath(fname),
            "pathlike-bytes": _FakePath(os.fsencode(fname))}[kind]
    kvmap.dbm.open(path, "c").close()
    with kvmap.dbm.open(path, "w") as f:
        f[b"1"] = b"1"
        assert f[b"1"] == b"1"


def test_dbm_keys_and_clear(fname):
    a = [(b"a", b"b"), (b"12345678910", b"019237410982340912840198242")]
    with kvmap.dbm.open(fname, "c") as d:
        assert d.keys() == []
        for k, v in a:
            d[k] = v
        assert d.keys() == sorted(k for k, _ in a)      # a list, in key order
        for k, v in a:
            assert k in d and d[k] == v
        assert b"xxx" not in d
        with pytest.raises(KeyError):
            d[b"xxx"]
        assert len(d) == len(a)
        d.clear()
        assert len(d) == 0 and d.keys() == []
        for k, _ in a:
            assert k not in d


def test_dbm_read_only_handle(fname):
    with kvmap.dbm.open(fname, "c") as db:
        db["key1"] = "value1"
        db["key2"] = "value2"
    with kvmap.dbm.open(fname, "r") as db:
        assert db["key1"] == b"value1" and db["key2"] == b"value2"
        with pytest.raises(kvmap.dbm.error):
            db["new"] = "value"
        with pytest.raises(kvmap.dbm.error):
            del db["key1"]
        assert db.keys() == [b"key1", b"key2"]
        assert list(db) == [b"key1", b"key2"]


def test_dbm_misuse(fname):
    db = kvmap.dbm.open(fname, "c")
    db["key"] = "value"
    with pytest.raises(kvmap.LockedError):          # a second writable handle in this process waits its turn,
        with kvmap.dbm.open(fname, "n"):            # but "n" would empty a file in use: refused
            pass
    with kvmap.dbm.open(fname, "c") as db2:         # double create: the same database
        assert db2["key"] == b"value"
    with pytest.raises(ValueError, match="must be.*'r'.*'w'.*'c'.*'n', not 'invalid'"):
        kvmap.dbm.open(fname, "invalid")
    del db["key"]
    with pytest.raises(KeyError):
        del db["key"]
    with pytest.raises(KeyError):
        db["key"]
    db["1"] = "1"
    db["2"] = "2"
    it1, it2 = iter(db), iter(db)
    assert next(it2) == b"1"
    db.close()
    db.close()                                      # double close: fine
    with pytest.raises(kvmap.dbm.error):
        next(it1)
    # a started iterator first hands out the rest of the batch it copied out
    # before the close (README, "Threads, fork, copy"), then raises
    assert next(it2) == b"2"
    with pytest.raises(kvmap.dbm.error):
        next(it2)
    for use in (lambda: db["read"], lambda: db.__setitem__("write", "value"), lambda: db.__delitem__("del"),
                lambda: len(db), lambda: db.keys()):
        with pytest.raises(kvmap.dbm.error):
            use()


@pytest.mark.parametrize("flag", ["r", "w", "c", "n"])
def test_dbm_empty_filename(flag):
    with pytest.raises(kvmap.dbm.error):
        kvmap.dbm.open("", flag)


def test_dbm_damaged_file(fname):
    """Every use of a damaged file raises dbm's error (here at open: the
    metas are gone); "n" makes a new database of it."""
    _init_db(fname)
    with open(fname, "r+b") as f:
        f.write(b"\0" * 3 * 4096)                   # the three metas
    for flag in ("r", "w", "c"):
        with pytest.raises(kvmap.dbm.error):
            kvmap.dbm.open(fname, flag)
    with kvmap.dbm.open(fname, "n") as db:
        db["foo"] = "write"
        assert db["foo"] == b"write" and next(iter(db)) == b"foo"
        del db["foo"]
