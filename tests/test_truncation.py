"""A database file cut short by another process while it is open.

File locks are advisory, so nothing stops another process from truncating the file.
Through a MAP_SHARED mapping the pages past the new end raise SIGBUS on access;
the engine must turn that into a kvmap.Error, never die of it (guard.c), and
must refuse new snapshots and transactions, and growth, on a file shorter than
the database (map.c file_intact).  Each case runs in a child process so that
a SIGBUS that escapes fails the test instead of killing pytest.
"""

import pytest

from conftest import ALL_CONFIG_PARAMS, assert_child_ok, run_python

# a database of 30,000 entries, a few MiB, open as ``db``
FILLED = r"""
import os, threading, kvmap
path, cfg = ARGS["path"], ARGS["cfg"]
db = kvmap.open(path, **cfg)
with db.transaction() as t:
    for i in range(30000):
        t[b"k%06d" % i] = b"v" * 100
"""

TRUNCATE_CHILD = FILLED + r"""
snap = db.snapshot()
writer = db.transaction() if ARGS["open_writer"] else None
os.truncate(path, 4 * db.page_size)       # what another process could do

def outcome(fn):
    try:
        fn()
        return "ok"
    except kvmap.Error as e:
        return type(e).__name__

def write():
    if writer is None:
        db[b"new"] = b"1"
        return
    for i in range(30000):                  # touches pages past the new end
        writer.put(b"k%06d" % i, b"w" * 100)

print("get", outcome(lambda: db[b"k029999"]))
print("snapshot_get", outcome(lambda: snap[b"k029999"]))
print("iterate", outcome(lambda: sum(1 for _ in snap.items())))
print("new_snapshot", outcome(db.snapshot))
print("write", outcome(write))
if writer is not None:
    print("commit", outcome(writer.commit))
snap.close()
db.close()
print("CLOSED")
"""


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@pytest.mark.parametrize("open_writer", [False, True], ids=["new-writer", "open-writer"])
def test_truncated_while_open_gives_errors_not_sigbus(tmp_path, cfg, open_writer):
    rc, out, err = run_python(TRUNCATE_CHILD, args=dict(path=str(tmp_path / "db.kv"), cfg=cfg,
                                                         open_writer=open_writer))
    assert_child_ok(rc, out, err, "CLOSED")
    got = dict(line.split() for line in out.splitlines() if line != "CLOSED")
    # Reads of pages that are gone: an error (SIGBUS turned into IOFailure for
    # the mapping, a short pread for the pread backend).
    for read in ("get", "snapshot_get", "iterate"):
        assert got[read] in ("IOFailure", "CorruptionError"), (read, got)
    assert got["new_snapshot"] == "CorruptionError", got
    assert got["write"] in ("IOFailure", "CorruptionError"), got
    if open_writer:
        # the failed put aborted the transaction: it cannot commit
        assert got["commit"] == "ClosedError", got


UNGUARDED_CHILD = r"""
import os, signal, kvmap
db = kvmap.open(ARGS["path"])
db[b"a"] = b"1"
print("RAISING", flush=True)
signal.raise_signal(signal.SIGBUS)    # not inside any engine call
print("SURVIVED")
"""


@pytest.mark.parametrize("faulthandler", [True, False], ids=["faulthandler", "default"])
def test_sigbus_outside_the_engine_still_kills(tmp_path, faulthandler, monkeypatch):
    """The guard only catches faults inside engine calls: any other SIGBUS
    gets the disposition it had before kvmap (faulthandler's, or death)."""
    if not faulthandler:
        monkeypatch.setenv("PYTHONFAULTHANDLER", "")
    code = UNGUARDED_CHILD if faulthandler else "import faulthandler; faulthandler.disable()\n" + UNGUARDED_CHILD
    rc, out, err = run_python(code, args=dict(path=str(tmp_path / "db.kv")))
    assert "RAISING" in out and "SURVIVED" not in out, (rc, out, err)
    assert rc == -7, (rc, err)      # SIGBUS
    if faulthandler:
        assert "Bus error" in err, err


THREADS_CHILD = FILLED + r"""
outcomes = []
started = threading.Barrier(5)

def reader(n):
    snap = db.snapshot()
    started.wait()
    got = set()
    for _ in range(200):
        try:
            sum(1 for _ in snap.items())
            got.add("ok")
        except kvmap.Error as e:
            got.add(type(e).__name__)
    snap.close()
    outcomes.append(got)

threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
started.wait()
os.truncate(path, 4 * db.page_size)       # while four threads read through the map
for t in threads:
    t.join()
db.close()
print("OUTCOMES", sorted(set().union(*outcomes)))
print("CLOSED")
"""


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_truncated_under_reader_threads(tmp_path, cfg):
    """Each thread's faults jump to that thread's own guard: four threads
    iterating through the mapping while the file is cut short all get
    errors (or finish first), and the process lives."""
    rc, out, err = run_python(THREADS_CHILD, args=dict(path=str(tmp_path / "db.kv"), cfg=cfg))
    assert_child_ok(rc, out, err, "CLOSED")
    seen = out.split("OUTCOMES ")[1].splitlines()[0]
    assert "IOFailure" in seen or "CorruptionError" in seen, out
