"""kvmap-check on a database in use (issue 11).

The checker takes a snapshot through the engine, registered in the lock file
(``<path>-lock``, FORMAT.md §9), and checks that commit: writers in other
processes go on committing, and reuse no page the commit reaches while the
check runs, so it never reports damage that their commits made up, and never
makes them wait.  The report names the transaction it checked.  When no
snapshot can be registered it reads the file at rest and, if a commit lands
meanwhile, says ``changed`` (exit 3) instead of listing problems.

The writer is a separate interpreter (``sys.executable -c``) driven through
its stdin/stdout: either committing continuously until a stop file appears,
or committing exactly when told, so that commits land at chosen points of a
check (through the ``progress`` callback: before the meta pages are read,
and in the middle of the tree walk), deterministically.  Every workload is
seeded; nothing asserts on timing (a writer's transaction timeout can only
run out if something holds the writer lock, which nothing does but the one
writer).
"""

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys

import pytest

import kvmap
import kvmap.checker as checker

NKEYS = 30_000        # ~1,500 leaf pages: the tree walk calls progress mid-check
EXIT_OK, EXIT_DAMAGE, EXIT_UNCHECKED, EXIT_CHANGED = 0, 1, 2, 3
PROBLEM_LINE = re.compile(r"^page \S+: ", re.M)          # how the CLI lists a problem
CHECKED_LIVE = re.compile(r"checked transaction (\d+) \(a snapshot of the live database\)")
CHECKED_AT_REST = re.compile(r"checked transaction (\d+) \(the file at rest\)")

WRITER = r'''
import json, os, random, sys
import kvmap
A = json.loads(sys.argv[1])
r = random.Random(A["seed"])
keys = [b"key-%06d" % i for i in range(A["keys_below"])]
db = kvmap.open(A["path"], sync=False, max_readers=A["max_readers"])
locked = 0                              # transactions that timed out waiting for the writer lock

def commit(t):
    for k in r.sample(keys, 60):
        t[k] = r.randbytes(r.choice((20, 150, 300, 300, 5000)))
    for k in r.sample(keys, 6):
        if k in t:
            del t[k]

def transaction():
    # A short timeout: the writer lock is only ever this writer's, so a
    # timeout means something else (a check) held it.
    global locked
    try:
        return db.transaction(timeout=A["timeout"])
    except kvmap.LockedError:
        locked += 1
        return None

n = 0
held = None                             # "hold": a write transaction left open
snap = None                             # "snapshot": a reader slot held
print("READY", flush=True)
if A["mode"] == "continuous":
    while not os.path.exists(A["stop"]):
        t = transaction()
        if t is not None:
            with t:
                commit(t)
            n += 1
else:                                   # "driven": one command per stdin line
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "hold":
            held = transaction()
            commit(held)
            print("HELD", flush=True)
        elif cmd[0] == "snapshot":
            snap = db.snapshot()
            print("SNAPSHOT", flush=True)
        elif cmd[0] == "commit":
            for _ in range(int(cmd[1])):
                t, held = held or transaction(), None
                if t is None:
                    break
                with t:
                    commit(t)
                n += 1
            print("COMMITTED" if not locked else "LOCKED", db.stats()["txnid"], flush=True)
        elif cmd[0] == "quit":
            break
if snap is not None:
    snap.close()
entries = len(db)
db.close()
print("CLOSED", n, entries, locked, flush=True)
'''


class Writer:
    """A writer process holding the database open for writing."""

    def __init__(self, path, mode, seed, stop=None, keys_below=NKEYS, max_readers=126):
        self.stop = stop
        args = dict(path=str(path), mode=mode, seed=seed, keys_below=keys_below, stop=str(stop),
                    timeout=0.5, max_readers=max_readers)
        self.p = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(args)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.expect("READY")

    def expect(self, word):
        line = self.p.stdout.readline()
        if not line.startswith(word):
            self.p.kill()
            _, err = self.p.communicate(timeout=60)
            raise AssertionError(f"writer: expected {word}, got {line!r}\n{err}")
        return line.split()

    def send(self, command, answer):
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        return self.expect(answer)

    def commit(self, n):
        """Make n commits; returns the newest txnid after them."""
        return int(self.send(f"commit {n}", "COMMITTED")[1])

    def hold(self):
        """Begin a write transaction and leave it open (the writer lock
        taken); the next commit ends it."""
        self.send("hold", "HELD")

    def snapshot(self):
        """Take a snapshot and keep it (a reader slot held)."""
        self.send("snapshot", "SNAPSHOT")

    def close(self):
        """Stop the writer; returns (commits made, entries at close,
        transactions that waited in vain for the writer lock)."""
        if self.stop is not None:
            open(self.stop, "w").close()
        else:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        words = self.expect("CLOSED")
        assert self.p.wait(timeout=120) == 0, self.p.stderr.read()
        return int(words[1]), int(words[2]), int(words[3])

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=60)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A sound database of NKEYS entries (a few with overflow values)."""
    p = tmp_path_factory.mktemp("live") / "base.kv"
    r = random.Random(9)
    keys = [b"key-%06d" % i for i in range(NKEYS)]
    with kvmap.open(str(p)) as db:         # closed: its last commit sealed durable, no fallback
        for s in range(0, NKEYS, 5000):
            with db.transaction() as t:
                for k in keys[s:s + 5000]:
                    t[k] = r.randbytes(r.choice((20, 150, 300, 300, 5000)))
    assert checker.check(p).ok
    return p


@pytest.fixture
def db_path(base, tmp_path):
    dst = tmp_path / "db.kv"
    shutil.copyfile(base, dst)
    return dst


@pytest.fixture
def writers():
    started = []

    def start(path, mode, seed, **kw):
        w = Writer(path, mode, seed, **kw)
        started.append(w)
        return w
    yield start
    for w in started:
        w.kill()


def cli(path, *extra):
    r = subprocess.run([sys.executable, "-m", "kvmap.checker", str(path), *extra],
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def newest(path):
    """(txnid, entries) of the newest commit, read through the engine."""
    with kvmap.open(str(path), readonly=True) as db, db.snapshot() as snap:
        return snap.txnid, len(snap)


def mid_check(*steps):
    """A progress callback that runs ``steps[i]`` at the i-th point chosen:
    the first call (the commit to check is held, the meta pages not read
    yet), then the first call from inside the tree walk (0 < done < total).
    Returns (callback, calls made)."""
    calls = []

    def progress(done, total):
        at_start = not calls
        calls.append((done, total))
        if at_start:
            assert done == 0
            steps[0]()
        elif len(steps) > 1 and 0 < done < total and sum(1 for d, t in calls if 0 < d < t) == 1:
            steps[1]()
    return progress, calls


# ---------------------------------------------------------------------------
# writers committing: no false report, never blocked, the transaction named

def test_continuous_writer(db_path, writers, tmp_path):
    """Checks while a writer in another process commits continuously: every
    one is sound and names a snapshot's transaction; the writer never waits
    for the writer lock."""
    start_txnid, _ = newest(db_path)
    w = writers(db_path, "continuous", seed=1, stop=tmp_path / "stop")
    seen = []
    for i in range(4):
        r = cli(db_path, *(("--quick",) if i % 2 else ()))
        assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
        assert "ok" in r.stdout.splitlines() and not PROBLEM_LINE.search(r.stdout), r.stdout
        m = CHECKED_LIVE.search(r.stdout)
        assert m, r.stdout
        seen.append(int(m.group(1)))
    r = cli(db_path, "--json")
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["problems"] == [] and doc["total_problems"] == 0, doc
    assert doc["snapshot"] is True and doc["changed"] is False
    assert doc["txnid"] == doc["summary"]["txnid"]
    seen.append(doc["txnid"])
    commits, entries, locked = w.close()
    assert locked == 0 and commits > 0
    assert start_txnid <= seen[0] and seen == sorted(seen), seen
    rep = checker.check(db_path)                       # no handle open now
    assert rep.ok and rep.snapshot and not rep.changed, rep.problems[:5]
    assert rep.txnid == start_txnid + commits and rep.summary["entries"] == entries


@pytest.mark.parametrize("quick", [False, True])
def test_commits_during_the_check(db_path, writers, quick):
    """Deterministic: the writer, mid-transaction when the check begins,
    commits it and 99 more before the check reads the meta pages, and 200
    more in the middle of the tree walk: the pages the check has yet to read
    would be reused by then (the unguarded check reported 3,165 problems
    here), and the meta pages no longer hold the snapshot's commit.  The
    report is sound, for the transaction of the snapshot."""
    w = writers(db_path, "driven", seed=4)
    txnid, entries = newest(db_path)
    w.hold()                         # the writer lock is taken: the check does not need it
    after = []
    progress, calls = mid_check(lambda: after.append(w.commit(100)),
                                lambda: after.append(w.commit(200)))
    rep = checker.check(db_path, quick=quick, progress=progress)
    assert after == [txnid + 100, txnid + 300], after
    assert calls[-1] == (1, 1)
    assert rep.ok and not rep.changed, rep.problems[:5]
    assert rep.problems == [] and rep.total_problems == 0
    assert rep.snapshot and rep.txnid == rep.summary["txnid"] == txnid
    assert rep.summary["entries"] == entries
    # the meta pages were rewritten under the check: not checked, and said so
    assert any("made after the snapshot's" in d for d in rep.details), rep.details
    doc = json.loads(rep.to_json())
    assert doc["txnid"] == txnid and doc["snapshot"] is True
    w.close()
    assert checker.check(db_path).ok


def test_writers_are_not_blocked(db_path, writers):
    """While a check runs (paused in its tree walk), a writer in another
    process and a writable handle in this one each commit, with a
    transaction timeout far shorter than the check's pause."""
    w = writers(db_path, "driven", seed=5)
    txnid, _ = newest(db_path)
    done = []

    def write_from_here():
        with kvmap.open(str(db_path)) as db:
            with db.transaction(timeout=0.2) as t:
                t[b"written during the check"] = b"1"
            done.append(db.stats()["txnid"])

    progress, _ = mid_check(lambda: done.append(w.commit(1)),
                            write_from_here)
    rep = checker.check(db_path, progress=progress)
    assert done == [txnid + 1, txnid + 2], done
    assert rep.ok and rep.snapshot and rep.txnid == txnid, rep.problems[:5]
    assert w.close()[2] == 0
    assert checker.check(db_path).txnid == txnid + 2


def test_check_beside_a_writable_handle_of_this_process(db_path):
    """A writable handle of the checking process, idle or committing, is a
    writer like any other: the check registers beside it."""
    with kvmap.open(str(db_path)) as db:
        db[b"x"] = b"y"
        txnid = db.stats()["txnid"]
        progress, _ = mid_check(lambda: db.update({b"a": b"1", b"b": b"2"}))
        rep = checker.check(db_path, progress=progress)
        assert rep.ok and rep.snapshot and rep.txnid == txnid, rep.problems[:5]
        assert rep.summary["entries"] == NKEYS + 1
        assert checker.check(db_path).txnid == txnid + 1


# ---------------------------------------------------------------------------
# damage on a live file is still found

def _leaf_holding(path, key):
    """(page, page size, nkeys, upper) of the leaf that holds ``key`` in the
    newest commit's tree, found with a little parser of its own (FORMAT.md
    §2, §4): the newest of the three metas (txnid at 16, root at 24, depth
    at 32), then branch cells (key length u16, child u64, key) down to the
    leaf."""
    data = open(path, "rb").read()
    ps = struct.unpack_from("<I", data, 12)[0]
    txnid, root, depth = max(struct.unpack_from("<QQI", data, off + 16) for off in (0, ps, 2 * ps))
    page = root
    for _ in range(depth - 1):
        o = page * ps
        nkeys = struct.unpack_from("<H", data, o + 6)[0]
        child = None
        for i in range(nkeys):
            off = o + struct.unpack_from("<H", data, o + 32 + 2 * i)[0]
            klen, pg = struct.unpack_from("<HQ", data, off)
            if i == 0 or data[off + 10:off + 10 + klen] <= key:
                child = pg
        page = child
    o = page * ps
    assert data[o + 4] == 2                                       # a leaf
    return page, ps, struct.unpack_from("<H", data, o + 6)[0], struct.unpack_from("<I", data, o + 24)[0]


def _damage_leaf_gap(db_path, key):
    """Flip one byte of the unused middle of the leaf holding key (after the
    cell pointers, below the cells): its checksum fails, nothing else.
    Returns the leaf's page number."""
    leaf, ps, nkeys, upper = _leaf_holding(db_path, key)
    gap = leaf * ps + 32 + 2 * nkeys
    assert gap < leaf * ps + upper
    with open(db_path, "r+b") as f:
        f.seek(gap)
        b = f.read(1)
        f.seek(gap)
        f.write(bytes([b[0] ^ 0x5A]))
    return leaf


def test_damage_found_on_a_live_file(db_path, writers):
    """A leaf of the newest commit's tree damaged (one byte of its unused
    middle: its checksum fails, nothing else) while a writer has the file
    open; the writer commits 300 times during the check (it writes keys of
    the lower half only: the damaged leaf, at three quarters, stays in every
    tree).  The check finds exactly that damage in the snapshot's tree."""
    w = writers(db_path, "driven", seed=6, keys_below=NKEYS // 2)
    w.commit(5)
    txnid, _ = newest(db_path)
    leaf = _damage_leaf_gap(db_path, b"key-%06d" % (NKEYS * 3 // 4))
    progress, _ = mid_check(lambda: w.commit(100), lambda: w.commit(200))
    rep = checker.check(db_path, progress=progress)
    assert {(p.kind, p.page) for p in rep.problems} == {("bad-checksum", leaf)}, rep.problems[:5]
    assert rep.total_problems == 1 and not rep.ok and not rep.changed
    assert rep.snapshot and rep.txnid == txnid
    r = cli(db_path)                                 # the CLI, beside the idle writer
    assert r.returncode == EXIT_DAMAGE, (r.returncode, r.stdout, r.stderr)
    assert f"page {leaf}: bad-checksum" in r.stdout and "1 problem(s) found" in r.stdout
    assert CHECKED_LIVE.search(r.stdout), r.stdout
    assert w.close()[2] == 0


# ---------------------------------------------------------------------------
# salvage of a database in use copies the snapshot

def test_salvage_of_a_live_database(db_path, writers, tmp_path):
    w = writers(db_path, "driven", seed=7)
    w.commit(3)
    with kvmap.open(str(db_path), readonly=True) as db:
        txnid, contents = db.stats()["txnid"], dict(db.items())
    progress, _ = mid_check(lambda: w.commit(100), lambda: w.commit(200))
    res = checker.salvage(db_path, tmp_path / "out.kv", progress=progress)
    assert res.report.ok and not res.report.changed and res.report.snapshot, res.notes
    assert res.report.txnid == txnid and res.lost == 0 and res.recovered == len(contents)
    with kvmap.open(str(tmp_path / "out.kv"), readonly=True) as out:
        assert dict(out.items()) == contents
    r = cli(db_path, "--salvage", str(tmp_path / "out2.kv"))       # the CLI, beside the idle writer
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    assert "salvage:" in r.stdout and CHECKED_LIVE.search(r.stdout), r.stdout
    w.close()


# ---------------------------------------------------------------------------
# a read-only handle

def test_readonly_handle(db_path, tmp_path):
    code = ("import kvmap, sys\n"
            "db = kvmap.open(sys.argv[1], readonly=True)\n"
            "print('READY', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.close()\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("READY"), p.stderr.read()
        with kvmap.open(str(db_path), readonly=True) as ro:           # and one in this process
            r = cli(db_path)
            assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
            assert "ok" in r.stdout.splitlines() and CHECKED_LIVE.search(r.stdout)
            rep = checker.check(db_path)
            assert rep.ok and rep.snapshot and not rep.changed
            assert rep.summary["entries"] == len(ro) == NKEYS
            res = checker.salvage(db_path, tmp_path / "out.kv")
            assert res.report.ok and res.recovered == NKEYS
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=60)
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()


# ---------------------------------------------------------------------------
# no snapshot can be registered: the file at rest, and "changed"

def test_at_rest_when_every_reader_slot_is_taken(db_path, writers):
    """The writer opened the database first with one reader slot, and holds
    it with a snapshot: the check cannot register, reads the file at rest
    and says so; commits during such a check give "changed" (no verdict,
    no problems), never damage."""
    w = writers(db_path, "driven", seed=8, max_readers=1)
    w.snapshot()
    txnid = w.commit(2)
    rep = checker.check(db_path)
    assert rep.ok and not rep.snapshot and not rep.changed and rep.txnid == txnid, rep.problems[:5]
    assert any("at rest" in n and "ReadersFullError" in n for n in rep.meta_notes), rep.meta_notes
    r = cli(db_path)
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    assert CHECKED_AT_REST.search(r.stdout) and "note: checked the file at rest" in r.stdout
    for quick in (False, True):
        progress, _ = mid_check(lambda: None, lambda: w.commit(300))
        rep = checker.check(db_path, quick=quick, progress=progress)
        assert rep.changed and not rep.ok and rep.problems == [] and rep.total_problems == 0, rep
        assert json.loads(rep.to_json())["changed"] is True
    progress, _ = mid_check(lambda: None, lambda: w.commit(300))
    res = checker.salvage(db_path, db_path.with_name("out.kv"), progress=progress)
    assert res.report.changed and res.report.problems == [] and not res.report.ok
    assert res.damaged_leaves == [] and res.lost == 0 and res.lost_values == 0
    assert any("changed during" in n for n in res.notes), res.notes
    assert w.close()[2] == 0
    rep = checker.check(db_path)                            # no handle open: a snapshot again
    assert rep.ok and rep.snapshot


def test_at_rest_when_the_lock_file_cannot_be_opened(db_path):
    """A read-only handle whose lock file cannot be opened for writing
    keeps its reader slot to itself: the check reads the file at rest."""
    lock = f"{db_path}-lock"
    kvmap.open(str(db_path), readonly=True).close()          # the lock file exists
    if os.geteuid() != 0:
        os.chmod(lock, 0o444)
        undo = None
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", lock],
                                                   capture_output=True).returncode == 0:
        undo = ["chattr", "-i", lock]      # (root opens any file whatever its mode)
    else:
        pytest.skip("cannot make the lock file unwritable here (root without chattr +i)")
    try:
        rep = checker.check(db_path)
        assert rep.ok and not rep.snapshot and not rep.changed, rep.problems[:5]
        assert any("lock file cannot be opened" in n for n in rep.meta_notes), rep.meta_notes
    finally:
        if undo:
            subprocess.run(undo, check=True)


def test_a_file_the_engine_refuses_is_checked_at_rest(db_path):
    """A damaged page on an edge path of the durable commit's tree: the
    engine refuses the file, so no handle can open it to write either, and
    the check reads it at rest and reports the damage."""
    leaf = _damage_leaf_gap(db_path, b"key-000000")     # the leftmost leaf
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(str(db_path), readonly=True)
    rep = checker.check(db_path)
    assert ("bad-checksum", leaf) in {(p.kind, p.page) for p in rep.problems}, rep.problems
    assert "meta-unusable" in {p.kind for p in rep.problems} and not rep.snapshot
    assert any("the engine does not open it" in n for n in rep.meta_notes), rep.meta_notes
    r = cli(db_path)
    assert r.returncode == EXIT_DAMAGE and CHECKED_AT_REST.search(r.stdout), (r.returncode, r.stdout)
