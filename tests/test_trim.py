"""The last handle to close cuts the file to the pages its metas reach
(native/env.c, trim_tail): the growth overshoot (the file grows by half its
size at a time) and a free tail are not kept on disk while nobody has the
database open.  A handle never cuts the file under another one: not while a
second handle, in this process or another, has it open (readers included),
and not from a read-only handle."""

import errno
import os
import random

import pytest

import kvmap
from kvmap._lib import lib
from conftest import ALL_CONFIG_PARAMS, open_db

PS = 4096


def _load(db, n=60000, seed=1):
    r = random.Random(seed)
    pairs = {r.randbytes(16): r.randbytes(100) for _ in range(n)}
    db.update(pairs)
    return pairs


def _hwm(path):
    """The largest hwm of the three metas (FORMAT.md §2: hwm at byte 48)."""
    with open(path, "rb") as f:
        data = f.read(3 * PS)
    return max(int.from_bytes(data[s * PS + 48:s * PS + 56], "little") for s in range(3))


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_last_close_cuts_the_overshoot(tmp_path, cfg):
    p = tmp_path / "db.kv"
    with open_db(p, cfg, sync=False) as db:
        pairs = _load(db)
        grown = os.path.getsize(p)
        hwm = db.stats()["pages"]
        assert grown > hwm * PS                      # the growth step overshoots
    assert os.path.getsize(p) == _hwm(p) * PS == hwm * PS
    assert kvmap.check(str(p)).ok
    with open_db(p, cfg) as db:                      # grows again from there
        assert dict(db.items()) == pairs
        db.update({b"more%05d" % i: b"v" * 300 for i in range(20000)})
        db._check()
    assert os.path.getsize(p) == _hwm(p) * PS
    assert kvmap.check(str(p)).ok


def test_a_free_tail_is_cut(tmp_path):
    """Deleting the keys written last frees the tail of the file: the file
    shrinks to what the metas reach."""
    p = tmp_path / "db.kv"
    with kvmap.open(str(p)) as db:
        db.update({b"a%06d" % i: b"x" * 100 for i in range(30000)})
        db.update({b"z%06d" % i: b"y" * 3000 for i in range(3000)})     # overflow pages at the end
    full = os.path.getsize(p)
    with kvmap.open(str(p)) as db:
        del db[b"z":]
        for i in range(3):
            db[b"tick%d" % i] = b"t"                 # the freed pages become reusable
    assert os.path.getsize(p) == _hwm(p) * PS < full // 2
    with kvmap.open(str(p), "r") as db:
        assert len(db) == 30003
    assert kvmap.check(str(p)).ok


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_the_cut_keeps_what_live_records_name(tmp_path, sync):
    """A free tail released by the last commit lies past hwm, but the live
    records (FORMAT.md §6) name those pages: the cut keeps them, so the file
    checks sound and opens, and later commits let them go."""
    p = tmp_path / "db.kv"
    with kvmap.open(str(p), sync=sync) as db:
        db.update({b"a%06d" % i: b"x" * 100 for i in range(30000)})
        db.update({b"z%06d" % i: b"y" * 3000 for i in range(3000)})
        del db[b"z":]                                # frees the tail
        db[b"tick"] = b"t"                           # releases it (sync=False: early), lowering hwm
        hwm = db.stats()["pages"]
    assert hwm * PS <= os.path.getsize(p)
    rep = kvmap.check(str(p))
    assert rep.ok, rep.problems[:5]
    with kvmap.open(str(p)) as db:
        for i in range(3):
            db[b"tick%d" % i] = b"t"
        assert len(db) == 30004
        db._check()
    assert os.path.getsize(p) == _hwm(p) * PS
    assert kvmap.check(str(p)).ok


def test_no_cut_while_another_handle_of_this_process_is_open(tmp_path):
    p = tmp_path / "db.kv"
    a = kvmap.open(str(p), sync=False)
    b = kvmap.open(str(p), readonly=True)
    _load(a)
    grown = os.path.getsize(p)
    a.close()
    assert os.path.getsize(p) == grown               # b is open: nothing cut
    assert len(b) == 60000
    b.close()                                        # read-only: it never cuts
    assert os.path.getsize(p) == grown
    kvmap.open(str(p)).close()                       # the last writable close cuts
    assert os.path.getsize(p) == _hwm(p) * PS < grown


def test_a_failed_cut_leaves_the_file_whole(tmp_path):
    """ftruncate failing at the last close (EIO, injected through the
    system-call table): the close succeeds, the file keeps its length and
    every commit, and the next last close cuts it."""
    p = tmp_path / "db.kv"
    db = kvmap.open(str(p), sync=False)
    pairs = _load(db)
    grown = os.path.getsize(p)
    assert lib.kvm_fault_set(lib.KVM_SYS_FTRUNCATE, 1, errno.EIO, 1) == 0
    try:
        db.close()
        failed = lib.kvm_fault_failures(lib.KVM_SYS_FTRUNCATE)
    finally:
        lib.kvm_fault_clear()
    assert failed == 1 and os.path.getsize(p) == grown
    assert kvmap.check(str(p)).ok
    with kvmap.open(str(p)) as db:
        assert dict(db.items()) == pairs
    assert os.path.getsize(p) == _hwm(p) * PS < grown


READER = r"""
import os, sys, kvmap
db = kvmap.open(ARGS["path"], readonly=True)
snap = db.snapshot()
n = len(snap)
sys.stdout.write("OPEN\n"); sys.stdout.flush()
sys.stdin.readline()                 # the writer has closed
got = sum(len(v) for _, v in snap.items())
print("READ", n, got)
snap.close(); db.close()
print("DONE")
"""


def test_no_cut_under_a_reader_in_another_process(tmp_path):
    import json
    import subprocess
    import sys
    p = tmp_path / "db.kv"
    db = kvmap.open(str(p), sync=False)
    pairs = _load(db)
    here = os.path.dirname(__file__)
    child = subprocess.Popen([sys.executable, "-c", "import json,sys; ARGS=json.loads(sys.argv[1])\n" + READER,
                              json.dumps({"path": str(p)})], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=here)
    assert child.stdout.readline() == "OPEN\n"
    grown = os.path.getsize(p)
    db.close()
    assert os.path.getsize(p) == grown               # the reader has it open
    out, _ = child.communicate("go\n", timeout=120)
    assert child.returncode == 0 and f"READ {len(pairs)} {100 * len(pairs)}" in out and "DONE" in out, out
