"""kvmap-check on a file that a writer has open (issue 9, defect 8).

The checker reads the file with ``pread`` while the writer keeps committing,
so without care it sees pages of several commits and reports damage that is
not there.  It finds writable handles in the lock file (``<path>-lock``,
FORMAT.md §9): the check refuses (``CheckBusy``, exit 2) unless forced, holds
the writer lock while it reads (writers wait), and a forced check that saw
the file change says so (``changed``, exit 3) instead of listing problems.
It must never report damage on a sound file, whatever the writer does.

The writer is a separate interpreter (``sys.executable -c``) driven through
its stdin/stdout: either committing continuously until a stop file appears,
or committing exactly when told (so that a commit can be placed in the
middle of a check through the ``progress`` callback, deterministically).
Every workload is seeded; nothing asserts on timing.
"""

import json
import random
import re
import shutil
import subprocess
import sys

import pytest

import kvmap
import kvmap.checker as checker

NKEYS = 30_000        # ~1,500 leaf pages: the tree walk calls progress mid-check
EXIT_OK, EXIT_DAMAGE, EXIT_UNCHECKED, EXIT_CHANGED = 0, 1, 2, 3
PROBLEM_LINE = re.compile(r"^page \S+: ", re.M)          # how the CLI lists a problem
CHANGED_MSG = "file changed during check: no verdict; re-run when the writer is idle"

WRITER = r'''
import json, os, random, sys
import kvmap
A = json.loads(sys.argv[1])
r = random.Random(A["seed"])
keys = [b"key-%06d" % i for i in range(A["nkeys"])]
db = kvmap.open(A["path"], sync=False)

def commit():
    with db.transaction() as t:
        for k in r.sample(keys, 60):
            t[k] = r.randbytes(r.choice((20, 150, 300, 300, 5000)))
        for k in r.sample(keys, 6):
            if k in t:
                del t[k]

n = 0
held = None                             # "hold": a transaction left open (the writer lock taken)
print("READY", flush=True)
if A["mode"] == "continuous":
    while not os.path.exists(A["stop"]):
        commit()
        n += 1
else:                                   # "driven": one command per stdin line
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "hold":
            held = db.transaction()
            for k in r.sample(keys, 60):
                held[k] = r.randbytes(300)
            print("HELD", flush=True)
        elif cmd[0] == "commit":
            for _ in range(int(cmd[1])):
                if held is not None:
                    held.commit()
                    held = None
                else:
                    commit()
                n += 1
            print("COMMITTED", flush=True)
        elif cmd[0] == "quit":
            break
entries = len(db)
db.close()
print("CLOSED", n, entries, flush=True)
'''


class Writer:
    """A writer process holding the database open for writing."""

    def __init__(self, path, mode, seed, stop=None):
        self.stop = stop
        args = dict(path=str(path), mode=mode, seed=seed, nkeys=NKEYS, stop=str(stop))
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

    def commit(self, n):
        self.p.stdin.write(f"commit {n}\n")
        self.p.stdin.flush()
        self.expect("COMMITTED")

    def hold(self):
        """Begin a transaction and leave it open: the writer lock is taken,
        so a forced check cannot hold it off; the next commit ends it."""
        self.p.stdin.write("hold\n")
        self.p.stdin.flush()
        self.expect("HELD")

    def close(self):
        """Stop the writer; returns (commits made, entries at close)."""
        if self.stop is not None:
            open(self.stop, "w").close()
        else:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        words = self.expect("CLOSED")
        assert self.p.wait(timeout=120) == 0, self.p.stderr.read()
        return int(words[1]), int(words[2])

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

    def start(path, mode, seed, stop=None):
        w = Writer(path, mode, seed, stop)
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


# ---------------------------------------------------------------------------
# (a) a live writer: the check refuses, exit 2, never a damage report

def test_live_writer_refused(db_path, writers, tmp_path):
    w = writers(db_path, "continuous", seed=1, stop=tmp_path / "stop")
    for _ in range(3):
        r = cli(db_path)
        assert r.returncode == EXIT_UNCHECKED, (r.returncode, r.stdout, r.stderr)
        assert "open for writing by another process" in r.stderr, r.stderr
        assert "--force" in r.stderr and "problem" not in r.stdout, (r.stdout, r.stderr)
    r = cli(db_path, "--json")
    assert r.returncode == EXIT_UNCHECKED, (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["busy"] is True and "unreadable" not in doc, doc
    assert "open for writing" in doc["error"]
    r = cli(db_path, "--salvage", str(tmp_path / "out.kv"))
    assert r.returncode == EXIT_UNCHECKED, (r.returncode, r.stdout, r.stderr)
    assert not (tmp_path / "out.kv").exists()
    # the library: CheckBusy, which existing callers catch as CheckUnreadable
    for quick in (False, True):
        with pytest.raises(checker.CheckBusy, match="open for writing by another process"):
            checker.check(db_path, quick=quick)
    with pytest.raises(checker.CheckUnreadable):
        kvmap.check(db_path)
    with pytest.raises(checker.CheckBusy):
        checker.salvage(db_path, tmp_path / "out.kv")
    assert not (tmp_path / "out.kv").exists()
    assert issubclass(checker.CheckBusy, kvmap.Error)
    assert issubclass(checker.CheckUnreadable, kvmap.Error)
    assert issubclass(checker.CheckUnreadable, Exception)
    w.close()


def test_writable_handle_in_this_process_is_a_writer(db_path):
    """Locks belong to the open file description: the checker's own open of
    the lock file is a different one, so a writable handle of the checking
    process counts."""
    with kvmap.open(str(db_path)) as db:
        db[b"x"] = b"y"
        with pytest.raises(checker.CheckBusy, match="open for writing"):
            checker.check(db_path)
        rep = checker.check(db_path, force=True)          # idle: the report stands
        assert rep.ok and not rep.changed and rep.live_writer, rep
    rep = checker.check(db_path)
    assert rep.ok and not rep.live_writer and not rep.changed


# ---------------------------------------------------------------------------
# (b) forced, while the writer commits: ok or "changed", never damage

def test_forced_while_committing(db_path, writers, tmp_path):
    w = writers(db_path, "continuous", seed=2, stop=tmp_path / "stop")
    codes = []
    for i in range(5):
        extra = ("--force",) if i % 2 == 0 else ("--force", "--quick")
        r = cli(db_path, *extra)
        codes.append(r.returncode)
        assert r.returncode in (EXIT_OK, EXIT_CHANGED), (r.returncode, r.stdout, r.stderr)
        assert "problem" not in r.stdout and not PROBLEM_LINE.search(r.stdout), r.stdout
        if r.returncode == EXIT_CHANGED:
            assert CHANGED_MSG in r.stdout, r.stdout
    r = cli(db_path, "--force", "--json")
    assert r.returncode in (EXIT_OK, EXIT_CHANGED), (r.returncode, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["live_writer"] is True and doc["problems"] == [] and doc["total_problems"] == 0
    assert doc["changed"] is (r.returncode == EXIT_CHANGED) and doc["ok"] is (not doc["changed"])
    commits, _ = w.close()
    assert commits > 0
    # (c) the writer stopped and closed: the same file checks ok
    r = cli(db_path)
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    assert "ok" in r.stdout.splitlines()


def test_writer_stopped_file_checks_ok(db_path, writers, tmp_path):
    """(c) after the writer stops and closes, the file checks ok, with the
    entry count the writer saw last."""
    w = writers(db_path, "continuous", seed=3, stop=tmp_path / "stop")
    assert cli(db_path).returncode == EXIT_UNCHECKED
    commits, entries = w.close()
    assert commits > 0
    r = cli(db_path)
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    rep = checker.check(db_path)
    assert rep.ok and not rep.changed and not rep.live_writer, rep.problems
    assert rep.summary["entries"] == entries


@pytest.mark.parametrize("quick", [False, True])
def test_commits_in_mid_check_give_changed_not_damage(db_path, writers, quick):
    """Deterministic: the writer, mid-transaction when the forced check
    starts, commits it and 299 more while the check is in its tree walk
    (from the progress callback).  The pages the check has
    yet to read are reused by then (the unguarded check reported 3,165
    problems here), yet the report lists none: the file changed."""
    w = writers(db_path, "driven", seed=4)
    w.hold()                       # mid-transaction: the check cannot take the writer lock
    calls = []

    def progress(done, total):
        if not calls:
            w.commit(300)
        calls.append((done, total))
    rep = checker.check(db_path, quick=quick, force=True, progress=progress)
    assert calls and calls[0][0] < calls[0][1]           # the commits came mid-check
    assert rep.changed and rep.live_writer and not rep.ok, rep
    assert rep.problems == [] and rep.total_problems == 0, rep.problems[:5]
    assert json.loads(rep.to_json())["changed"] is True
    w.close()
    assert checker.check(db_path).ok


def test_salvage_forced_while_changing(db_path, writers, tmp_path):
    """salvage is guarded the same way: a changed source gives no damage
    figures, only the warning; an idle writer's file is copied whole."""
    w = writers(db_path, "driven", seed=5)
    w.hold()
    calls = []

    def progress(done, total):
        if not calls:
            w.commit(300)
        calls.append(1)
    res = checker.salvage(db_path, tmp_path / "o1.kv", force=True, progress=progress)
    assert res.report.changed and res.report.problems == [] and not res.report.ok
    assert res.damaged_leaves == [] and res.lost == 0 and res.lost_values == 0
    assert any("changed during" in n for n in res.notes), res.notes
    res = checker.salvage(db_path, tmp_path / "o2.kv", force=True)        # idle now
    assert res.report.ok and not res.report.changed and res.lost == 0
    _, entries = w.close()
    assert res.recovered == entries
    with kvmap.open(str(tmp_path / "o2.kv"), readonly=True) as a, \
            kvmap.open(str(db_path), readonly=True) as b:
        assert dict(a.items()) == dict(b.items())


def test_check_holds_the_writer_lock(db_path):
    """While the check runs, handles open and read, but no commit lands: a
    write transaction waits for the check (its timeout gives LockedError);
    the lock is released when the check ends."""
    seen = []

    def progress(done, total):
        if not seen:
            with kvmap.open(str(db_path)) as db:
                with pytest.raises(kvmap.LockedError, match="timed out"):
                    db.transaction(timeout=0.2)
                seen.append(len(db))
    assert checker.check(db_path, progress=progress).ok
    assert seen == [NKEYS]
    with kvmap.open(str(db_path)) as db:                          # released
        db[b"after"] = b"1"
    assert checker.check(db_path).ok


# ---------------------------------------------------------------------------
# (d) a read-only handle is not a writer

def test_readonly_handle_is_not_a_writer(db_path, tmp_path):
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
            assert "ok" in r.stdout.splitlines()
            rep = checker.check(db_path)
            assert rep.ok and not rep.live_writer and not rep.changed
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
# (e) an idle writer, forced: a clean report

def test_idle_writer_forced_is_clean(db_path, writers):
    w = writers(db_path, "driven", seed=6)
    w.commit(20)                       # then idle: it answers only when asked
    for extra in ((), ("--quick",)):
        r = cli(db_path, "--force", *extra)
        assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
        assert "ok" in r.stdout.splitlines()
        assert "writer" in r.stdout                       # it says a writer had the file open
    r = cli(db_path, "--force", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == EXIT_OK and doc["ok"] and not doc["changed"] and doc["live_writer"]
    rep = checker.check(db_path, force=True)
    assert rep.ok and rep.live_writer and not rep.changed, rep.problems[:5]
    _, entries = w.close()
    assert rep.summary["entries"] == entries
