"""Fuzz kvmap.check and the engine: flip 1-8 random bytes, or truncate at a
random offset, in copies of small valid databases, and check each copy (full
and quick mode; every fifth case also salvages).  The bases include one left
as a power loss leaves it (commits after the durable one, which open
verifies against their records and may fall back from).  Every case must
end with a report or CheckUnreadable (exit code 0/1/2), never another
exception and never a hang.  Then the engine opens the same copy, read-only
(iterating and reading everything) and writable (one commit): each step
either works or raises a kvmap.Error subclass, never anything else and
never a crash.

The cases run in subprocesses (a batch of cases each, with a per-case alarm
and a per-batch timeout), so a crash fails the test instead of pytest.
``KVMAP_FUZZ_CASES`` sets the number of cases (default 2,000).
"""

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

import kvmap

CASES = int(os.environ.get("KVMAP_FUZZ_CASES", "2000"))
BATCH = 50
SEED = int(os.environ.get("KVMAP_FUZZ_SEED", "20261128"))

RUNNER = r'''
import json, os, random, signal, sys, traceback
import kvmap
from kvmap.checker import check, salvage, CheckUnreadable

args = json.loads(sys.argv[1])
bases = [open(p, "rb").read() for p in args["bases"]]
work = args["work"]

class Hang(Exception):
    pass

def on_alarm(sig, frame):
    raise Hang()

signal.signal(signal.SIGALRM, on_alarm)

def code(path, quick):
    try:
        rep = check(path, quick=quick, max_errors=50)
    except CheckUnreadable as e:
        assert str(e)
        return 2
    json.loads(rep.to_json())
    assert rep.ok == (rep.total_problems == 0)
    assert len(rep.problems) <= 50
    return 0 if rep.ok else 1

def engine(path):
    """Open the copy with the engine: every step works or raises kvmap.Error."""
    outcome = []
    for readonly in (True, False):
        try:
            db = kvmap.open(path, readonly=readonly)
        except kvmap.Error:
            outcome.append("open-error")
            continue
        try:
            if readonly:
                keys = [k for k, _ in db.items()]
                for k in keys[:50]:
                    db.get(k)
            else:
                db[b"fuzz-key"] = b"fuzz-value"
                assert db[b"fuzz-key"] == b"fuzz-value"
            outcome.append("ok")
        except kvmap.Error:
            outcome.append("error")
        finally:
            db.close()
    return outcome

for case in range(args["first"], args["last"]):
    r = random.Random(args["seed"] * 1000003 + case)
    bi = r.randrange(len(bases))
    data = bytearray(bases[bi])
    if r.random() < 0.2:
        what = "truncate"
        data = data[:r.randrange(len(data) + 1)]
    else:
        n = r.randint(1, 8)
        what = "flip%d" % n
        for _ in range(n):
            # half the flips in the metas and page headers, where they hurt most
            if r.random() < 0.5:
                ps = int.from_bytes(bases[bi][12:16], "little")
                pg = r.randrange(len(data) // ps)
                off = pg * ps + (r.randrange(128) if pg < 3 else r.randrange(40))   # metas: pages 0-2
            else:
                off = r.randrange(len(data))
            data[off] ^= r.randint(1, 255)
    path = os.path.join(work, "case.kv")
    with open(path, "wb") as f:
        f.write(data)
    signal.alarm(args["per_case"])
    try:
        res = [code(path, False), code(path, True)]
        eng = engine(path)
        if case % 5 == 0:                    # salvage too, now and then
            out = os.path.join(work, "out.kv")
            try:
                s = salvage(path, out)
                assert s.recovered + s.lost >= 0 and s.recovered >= 0
            except CheckUnreadable:
                pass
            finally:
                if os.path.exists(out):
                    os.remove(out)
        out = {"case": case, "base": bi, "what": what, "rc": res, "engine": eng}
    except Hang:
        out = {"case": case, "base": bi, "what": what, "error": "TIMEOUT"}
    except BaseException:
        out = {"case": case, "base": bi, "what": what, "error": traceback.format_exc()}
    finally:
        signal.alarm(0)
    print(json.dumps(out), flush=True)
'''


def _build(path, seed, page_size, nkeys, big, crashed=False):
    """A database of nkeys small and ``big`` overflow values, with pending
    pages from a snapshot.  ``crashed``: no commit is flushed after the
    first ones, and the file is copied before the close (which would make
    them durable): what a power loss leaves."""
    r = random.Random(seed)
    work = path.with_suffix(".work") if crashed else path
    db = kvmap.open(str(work), page_size=page_size, sync=False,
                    sync_interval=None if crashed else 1.0)
    keys = [b"f%05d" % i for i in range(nkeys)]
    r.shuffle(keys)
    for s in range(0, nkeys, 300):
        with db.transaction() as t:
            for k in keys[s:s + 300]:
                t[k] = r.randbytes(r.randint(50, 400))
    with db.transaction() as t:
        for i in range(big):
            t[b"big%02d" % i] = r.randbytes(r.randint(5000, 20000))
    snap = db.snapshot()
    for _ in range(3):
        with db.transaction() as t:
            for k in r.sample(keys, 50):
                t[k] = r.randbytes(r.randint(50, 400))
            for k in r.sample(keys, 10):
                if k in t:
                    del t[k]
    snap.close()
    if crashed:
        shutil.copyfile(work, path)
    db.close()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzbase")
    paths = [d / "a.kv", d / "b.kv", d / "c.kv", d / "d.kv"]
    _build(paths[0], 1, 4096, 1500, 8)
    _build(paths[1], 2, 8192, 2000, 6)
    _build(paths[2], 3, 4096, 600, 2)
    _build(paths[3], 4, 4096, 1200, 4, crashed=True)
    from kvmap.checker import check
    for p in paths:
        rep = check(p)
        assert rep.ok, rep.problems
        # drop the preallocated tail beyond the hwm (the checker ignores it)
        # so that the flips land in pages in use
        os.truncate(p, rep.summary["hwm"] * rep.summary["page_size"])
        assert check(p).ok
    with kvmap.open(str(paths[3]), readonly=True) as db:      # commits that open verifies
        st = db.stats()
        assert st["durable_txnid"] < st["txnid"] - 3 and not st["meta_fallback"]
    return [str(p) for p in paths]


def test_fuzz_checker(bases, tmp_path):
    results = []
    for first in range(0, CASES, BATCH):
        last = min(CASES, first + BATCH)
        work = tmp_path / f"w{first}"
        work.mkdir()
        args = dict(bases=bases, work=str(work), first=first, last=last, seed=SEED, per_case=20)
        r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)],
                           capture_output=True, text=True, timeout=300)
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert [x["case"] for x in lines] == list(range(first, last))
        results += lines
    bad = [x for x in results if "error" in x]
    assert not bad, bad[:3]
    for x in results:
        assert all(c in (0, 1, 2) for c in x["rc"]), x
    rcs = [x["rc"][0] for x in results]
    # the fuzzer does find damage (and not only unreadable files)
    assert rcs.count(1) > len(rcs) // 3
