"""db.warm() reads the database into the OS page cache, and the mapping's
read-ahead advice (open's ``readahead``).

warm() must work with every configuration, leave the contents as they were,
refuse a closed handle, turn a failed system call or a file cut short by
another process into a kvmap.Error (never a SIGBUS), and leave every page
below the high-water mark in the page cache.
"""

import errno
import os

import pytest

import kvmap
from kvmap._lib import lib
from kvmap.bench.figures import resident_pages
from conftest import ALL_CONFIG_PARAMS, assert_child_ok, make_value, open_db, run_python


def fill(db):
    """Small values, a few overflow values and deletions: the file grows a few times."""
    with db.transaction() as t:
        for i in range(3000):
            t.put(b"k%05d" % i, make_value(i, 50 + i % 200))
        for i in range(8):
            t.put(b"big%d" % i, make_value(("big", i), 300_000))
    with db.transaction() as t:
        for i in range(0, 3000, 7):
            t.delete(b"k%05d" % i)


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_warm_reads_every_page_and_changes_nothing(tmp_path, cfg):
    path = str(tmp_path / "db.kv")
    with open_db(path, cfg) as db:
        fill(db)
        before = dict(db.items())
    evict(path)
    with open_db(path, cfg) as db:
        snap = db.snapshot()                 # warm() with a reader and a writer open
        with db.transaction() as t:
            t.put(b"during", b"warm")
            db.warm()
        pages = db.stats()["pages"]
        assert resident_pages([path])["pages"] >= pages
        assert dict(snap.items()) == before
        snap.close()
        before[b"during"] = b"warm"
        assert dict(db.items()) == before
        db._check()
    with open_db(path, cfg, readonly=True) as db:
        db.warm()
        assert dict(db.items()) == before


def test_warm_closed_database_raises(tmp_path):
    db = open_db(tmp_path / "db.kv")
    db[b"a"] = b"1"
    db.close()
    with pytest.raises(kvmap.ClosedError):
        db.warm()


def test_warm_failed_mmap_is_an_error_and_the_handle_stays_usable(tmp_path):
    with open_db(tmp_path / "db.kv") as db:
        fill(db)
        lib.kvm_fault_set(lib.KVM_SYS_MMAP, 1, errno.ENOMEM, 0)
        try:
            with pytest.raises(kvmap.IOFailure) as exc:
                db.warm()
        finally:
            lib.kvm_fault_clear()
        assert exc.value.errno == errno.ENOMEM
        db.warm()
        assert db[b"k00001"] == make_value(1, 51)


TRUNCATED_CHILD = r"""
import os, kvmap
from test_warm import fill
db = kvmap.open(ARGS["path"], **ARGS["cfg"])
fill(db)
os.truncate(ARGS["path"], 4 * db.page_size)      # what another process could do
try:
    db.warm()
    print("warm ok")
except kvmap.Error as e:
    print("warm", type(e).__name__)
db.close()
print("CLOSED")
"""


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_warm_on_a_truncated_file_is_an_error_not_sigbus(tmp_path, cfg):
    rc, out, err = run_python(TRUNCATED_CHILD, args=dict(path=str(tmp_path / "db.kv"), cfg=cfg))
    assert_child_ok(rc, out, err, "CLOSED")
    assert "warm CorruptionError" in out, out


@pytest.mark.parametrize("writemap, readahead, advised", [
    (False, None, False), (False, False, True), (True, None, True), (True, True, False)])
def test_readahead_advice(tmp_path, writemap, readahead, advised):
    """MADV_RANDOM only when asked for, or by default under writemap."""
    before = lib.kvm_fault_calls(lib.KVM_SYS_MADVISE)
    with open_db(tmp_path / "db.kv", writemap=writemap, readahead=readahead) as db:
        assert db.stats()["readahead"] is (not advised)
        fill(db)                             # growth advises each new piece alike
        assert (lib.kvm_fault_calls(lib.KVM_SYS_MADVISE) > before) is advised
        assert db[b"big3"] == make_value(("big", 3), 300_000)
    with open_db(tmp_path / "p.kv", backend="pread", readahead=False) as db:
        assert db.stats()["readahead"] is None
