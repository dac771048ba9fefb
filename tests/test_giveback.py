"""Giving disk back (issue 13): free runs are punched out of the file
(fallocate PUNCH_HOLE, docs/ARCHITECTURE.md §4), and a punched page is
allocated again (posix_fallocate) before it is reused.

* Every configuration: a database of about 110 MiB loses 90% of its entries,
  deleted at random in transactions of 10,000, then ten small commits
  follow.  The file's allocated blocks, and for the mmap backends the
  resident set of the writer's mapping and of the mapping of a reader
  PROCESS that held the database open all along (and read all of it before
  the deletes), fall by at least 80% of the deleted share; the remaining
  10% reads back unchanged in both processes; kvmap.check and db._check()
  are clean.
* Churn after the give-back: putting the data back reuses the punched pages,
  which are allocated again, so the file does not grow; deleting it again
  gives the disk back again.
* A snapshot held in another process keeps its pages: nothing is punched
  while it lives (those pages are not free) and it reads its data, never
  zeros; once it ends, the disk is given back.
* A writer in another process, whose free space was loaded before this one
  punched, allocates the punched pages again when it reuses them.
* A full disk at reuse (root: a small tmpfs and an ext4 loop file system):
  reusing punched pages raises DiskFullError (never SIGBUS under writemap),
  the handle stays usable, and nothing committed is lost.
"""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

import kvmap
from kvmap._lib import lib
from conftest import ALL_CONFIG_PARAMS, assert_child_ok, configs_by_id, open_db, run_python
from test_growth_failure import small_fs  # noqa: F401  (the fixture: a small tmpfs or ext4 loop fs)

N = 100_000                 # entries: about 110 MiB of pages with these values
TXN = 10_000                # deletes per transaction
SHARE = 0.9                 # the share deleted
GIVEN = 0.8                 # what must come back of the deleted share


def _pairs(seed, n):
    rng = random.Random(seed)
    keys = [b"%08d-%s" % (i, rng.randbytes(4).hex().encode()) for i in range(n)]
    rng.shuffle(keys)
    return {k: rng.randbytes(rng.randrange(150, 550)) for k in keys}


# The contents' digest, here and in the reader process (one source for both).
DIGEST = '''
def digest(items):
    h = hashlib.sha256()
    n = 0
    for k, v in items:
        h.update(b"%d:%d:" % (len(k), len(v)) + k + v)
        n += 1
    return "%d:%s" % (n, h.hexdigest())
'''
exec(DIGEST)
_digest = digest  # noqa: F821 -- defined by the exec above


def _allocated(path):
    return os.stat(path).st_blocks * 512


def _mapped_rss(pid, path):
    """Resident bytes of process pid's mappings of the file at path."""
    path = os.path.realpath(path)
    total, ours = 0, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and ":" not in head[0]:      # a mapping's first line
                ours = len(head) == 6 and head[5].rstrip("\n") == path
            elif ours and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


# A process holding the database open: it answers commands on stdin, one
# line each, on stdout.
READER = r"""
import hashlib, json, os, sys
import kvmap
from kvmap._lib import lib
path, cfg = sys.argv[1], json.loads(sys.argv[2])
""" + DIGEST + r"""

db = kvmap.open(path, **cfg)
held = None
print("open", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "read":                  # a snapshot of the newest commit, read whole
        with db.snapshot() as s:
            out = digest(s.items())
    elif cmd == "hold":                # the same, and keep the snapshot
        held = db.snapshot()
        out = digest(held.items())
    elif cmd == "held":                # read the held snapshot again
        out = digest(held.items())
    elif cmd == "release":
        held.close()
        out = "released"
    elif cmd.startswith("put "):       # one transaction of N new keys
        n = int(cmd.split()[1])
        lib.kvm_fault_set(lib.KVM_SYS_FALLOCATE, 0, 5, 0)     # count, never fail
        size = os.path.getsize(path)
        db.update((b"other-%08d" % i, b"%08d" % i * 40) for i in range(n))
        out = "%d %d %d" % (lib.kvm_fault_calls(lib.KVM_SYS_FALLOCATE), size, os.path.getsize(path))
        lib.kvm_fault_clear()
    else:
        break
    print(out, flush=True)
db.close()
"""


class Reader:
    """A process with the database open, read-only unless cfg says
    otherwise (see READER)."""

    def __init__(self, path, cfg):
        cfg = dict(dict(readonly=True), **cfg)
        self.p = subprocess.Popen([sys.executable, "-c", READER, str(path), json.dumps(cfg)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.ask(None) == "open"

    def ask(self, cmd):
        if cmd is not None:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        assert line, "the reader process ended (returncode %s)" % self.p.poll()
        return line

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.write("exit\n")
            self.p.stdin.close()
            self.p.wait(timeout=60)
        assert self.p.returncode == 0, self.p.returncode


def _delete(db, keys):
    for s in range(0, len(keys), TXN):
        with db.transaction() as t:
            for k in keys[s:s + TXN]:
                del t[k]


def _small(tag):
    return {b"small-%d-%d" % (tag, i): b"s" * 20 for i in range(10)}


def _small_commits(db, tag):
    for k, v in _small(tag).items():
        db[k] = v


def _load(db, pairs):
    items = list(pairs.items())
    for s in range(0, len(items), TXN):
        db.update(items[s:s + TXN])


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_delete_most_gives_disk_and_memory_back(tmp_path, cfg):
    p = tmp_path / "db"
    pairs = _pairs(13, N)
    keys = list(pairs)
    gone = random.Random(14).sample(keys, int(SHARE * N))
    mmap = cfg["backend"] == "mmap"
    with open_db(p, cfg) as db:
        reader = Reader(p, cfg)
        try:
            _load(db, pairs)
            assert reader.ask("read") == _digest(sorted(pairs.items()))
            assert _digest(db.items()) == _digest(sorted(pairs.items()))   # the writer's mapping too
            blocks0 = _allocated(p)
            rss0 = _mapped_rss(os.getpid(), p), _mapped_rss(reader.p.pid, p)
            _delete(db, gone)
            _small_commits(db, 0)
            blocks1 = _allocated(p)
            rss1 = _mapped_rss(os.getpid(), p), _mapped_rss(reader.p.pid, p)
            for k in gone:
                del pairs[k]
            pairs.update(_small(0))
            want = _digest(sorted(pairs.items()))
            print("\n[%s] allocated %.1f -> %.1f MiB; mapping resident: writer %.1f -> %.1f MiB, "
                  "reader %.1f -> %.1f MiB; file %.1f MiB"
                  % (cfg, blocks0 / 2**20, blocks1 / 2**20, rss0[0] / 2**20, rss1[0] / 2**20,
                     rss0[1] / 2**20, rss1[1] / 2**20, os.path.getsize(p) / 2**20))
            assert blocks0 - blocks1 >= GIVEN * SHARE * blocks0, (blocks0, blocks1)
            if mmap:
                for before, after in zip(rss0, rss1):
                    assert before - after >= GIVEN * SHARE * before, (before, after)
            assert _digest(db.items()) == want
            assert reader.ask("read") == want
            db._check()
        finally:
            reader.close()
    assert kvmap.check(str(p)).ok
    with open_db(p, cfg) as db:
        assert _digest(db.items()) == want
        db._check()


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-remap-wm", "pread"))
def test_punched_pages_are_allocated_again_when_reused(tmp_path, cfg):
    """Churn after a give-back: the data goes back in, on the punched pages
    (allocated again first: posix_fallocate calls while the file does not
    grow), and out again, three times."""
    p = tmp_path / "db"
    pairs = _pairs(21, N // 2)
    keys = list(pairs)
    with open_db(p, cfg) as db:
        _load(db, pairs)
        size = os.path.getsize(p)
        full = _allocated(p)
        for r in range(3):
            gone = random.Random(r).sample(keys, int(SHARE * len(keys)))
            _delete(db, gone)
            _small_commits(db, r)
            low = _allocated(p)
            lib.kvm_fault_set(lib.KVM_SYS_FALLOCATE, 0, 5, 0)    # count, never fail
            _load(db, {k: pairs[k] for k in gone})
            refills = lib.kvm_fault_calls(lib.KVM_SYS_FALLOCATE)
            lib.kvm_fault_clear()
            high = _allocated(p)
            st = db.stats()
            in_use = (st["pages"] - st["free_pages"] - st["pending_pages"]) * db.page_size
            print("\n[%s] round %d: allocated %.1f -> %.1f -> %.1f MiB (%.1f MiB in use), %d posix_fallocate "
                  "calls, file %.1f MiB" % (cfg, r, full / 2**20, low / 2**20, high / 2**20, in_use / 2**20,
                                           refills, os.path.getsize(p) / 2**20))
            assert full - low >= GIVEN * SHARE * full, (full, low)
            assert os.path.getsize(p) == size          # reused, not grown
            assert refills > 0                         # ... so these allocated punched pages again
            assert high >= in_use, (high, in_use)
            pairs.update(_small(r))
            assert _digest(db.items()) == _digest(sorted(pairs.items()))
        db._check()
    assert kvmap.check(str(p)).ok


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-mremap-wm", "pread"))
def test_snapshot_in_another_process_keeps_its_pages(tmp_path, cfg):
    """Another process's snapshot of the old data keeps every page it can
    reach: they are pending, not free, so none is punched while it lives,
    and it reads its data to the end, every page's checksum verified (a
    punched page reads as zeros).  Once it ends they are given back."""
    p = tmp_path / "db"
    pairs = _pairs(31, N // 2)
    old = _digest(sorted(pairs.items()))
    gone = random.Random(32).sample(list(pairs), int(SHARE * len(pairs)))
    with open_db(p, cfg) as db:
        _load(db, pairs)
        reader = Reader(p, dict(cfg, verify_checksums=True))
        try:
            assert reader.ask("hold") == old
            blocks0 = _allocated(p)
            lib.kvm_fault_set(lib.KVM_SYS_PUNCH, 0, 5, 0)    # count, never fail
            _delete(db, gone)
            _small_commits(db, 0)
            held = _allocated(p)
            assert reader.ask("held") == old
            punched = lib.kvm_fault_calls(lib.KVM_SYS_PUNCH)
            assert reader.ask("release") == "released"
            _small_commits(db, 1)
            after = _allocated(p)
            lib.kvm_fault_clear()
            print("\n[%s] allocated %.1f MiB, with the snapshot after the deletes %.1f MiB (%d punches), "
                  "after it ended %.1f MiB" % (cfg, blocks0 / 2**20, held / 2**20, punched, after / 2**20))
            assert blocks0 - after >= GIVEN * SHARE * blocks0, (blocks0, after)
            for k in gone:
                del pairs[k]
            pairs.update(_small(0))
            pairs.update(_small(1))
            assert reader.ask("read") == _digest(sorted(pairs.items()))
            db._check()
        finally:
            reader.close()
    assert kvmap.check(str(p)).ok


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve-wm", "pread"))
def test_writer_in_another_process_allocates_what_this_one_punched(tmp_path, cfg):
    """Another process's writer loaded the free space before this one
    punched; its next transaction finds that this one committed since, loads
    the free space again, takes every free page for a possible hole, and
    allocates the pages it reuses: posix_fallocate calls while the file does
    not grow, in one transaction, before that process punched anything
    itself (it punches only after a commit)."""
    p = tmp_path / "db"
    pairs = _pairs(41, N // 2)
    with open_db(p, cfg) as db:
        _load(db, pairs)
        other = Reader(p, dict(cfg, readonly=False))
        try:
            assert other.ask("put 1").split()[1:] == [str(os.path.getsize(p))] * 2
            blocks0 = _allocated(p)
            gone = random.Random(42).sample(list(pairs), int(SHARE * len(pairs)))
            _delete(db, gone)
            _small_commits(db, 0)
            low = _allocated(p)
            assert blocks0 - low >= GIVEN * SHARE * blocks0, (blocks0, low)
            calls, before, after = map(int, other.ask("put %d" % TXN).split())
            print("\n[%s] allocated %.1f -> %.1f -> %.1f MiB, %d posix_fallocate calls in the other "
                  "process" % (cfg, blocks0 / 2**20, low / 2**20, _allocated(p) / 2**20, calls))
            assert calls > 0 and before == after == os.path.getsize(p), (calls, before, after)
            for k in gone:
                del pairs[k]
            pairs.update(_small(0))
            pairs.update((b"other-%08d" % i, b"%08d" % i * 40) for i in range(TXN))
            assert _digest(db.items()) == _digest(sorted(pairs.items()))
            db._check()
        finally:
            other.close()
    assert kvmap.check(str(p)).ok


# ---------------------------------------------------------------------------
# a full disk when punched pages are reused

FULL_CHILD = r"""
import errno, hashlib, os, random
import kvmap
path, cfg, ballast = ARGS["path"], ARGS["cfg"], ARGS["ballast"]

def blob(i):
    return random.Random(i).randbytes(3000)

db = kvmap.open(path, **cfg)
model = {}
for s in range(0, 2000, 200):                      # about 6 MiB of overflow pages
    batch = {b"k%05d" % i: blob(i) for i in range(s, s + 200)}
    db.update(batch)
    model.update(batch)
with db.transaction() as t:                        # 90% out
    for i in range(200, 2000):
        del t[b"k%05d" % i]
        del model[b"k%05d" % i]
for i in range(10):                                # the deleted pages become free, and are punched
    db[b"small%d" % i] = b"x"
    model[b"small%d" % i] = b"x"
size, allocated = os.path.getsize(path), os.stat(path).st_blocks * 512
print("GIVEN_BACK", size, allocated)
assert allocated <= size // 2, (size, allocated)
os.sync()                                          # ext4: the punched blocks free at once
fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
chunk = 1 << 20
off = 0
while chunk >= 4096:                               # take every free block of the file system
    try:
        os.posix_fallocate(fd, off, chunk)
        off += chunk
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        chunk //= 2
os.close(fd)
err = None
for s in range(0, 1800, 100):                      # put data back: onto the punched pages
    batch = {b"n%05d" % i: blob(10000 + i) for i in range(s, s + 100)}
    try:
        db.update(batch)
    except kvmap.Error as e:
        err = e
        break
    model.update(batch)
print("EXC", type(err).__name__, err)
assert isinstance(err, kvmap.DiskFullError) and err.errno == errno.ENOSPC, err
assert "allocating free pages again" in str(err), err
assert os.path.getsize(path) == size               # it failed at reuse, not at growth
assert not db.stats()["failed"]
assert dict(db.items()) == model                   # the same handle reads every commit
db._check()
os.unlink(ballast)
os.sync()
db.update(batch)                                   # space again: the failed batch goes in
model.update(batch)
assert dict(db.items()) == model
db.close()
with kvmap.open(path, **cfg) as db:
    assert dict(db.items()) == model
    db._check()
assert kvmap.check(path).ok
print("FULL_OK")
"""


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-reserve-wm", "pread"))
def test_full_disk_at_reuse_of_punched_pages(tmp_path, small_fs, cfg):  # noqa: F811
    args = dict(path=str(small_fs / "db"), cfg=cfg, ballast=str(small_fs / "ballast"))
    rc, out, err = run_python(FULL_CHILD, args=args, timeout=300)
    assert_child_ok(rc, out, err, "FULL_OK")
    print(out)
