"""Growth failures: a full disk or a file size limit must give a clean
kvmap.DiskFullError, abort only the failing transaction, keep the handle
usable for reads of everything committed before, and leave a file that
reopens with every committed transaction.  Once space is freed (a ballast
file on the full filesystem deleted, or the file size limit lifted), writing
resumes on the same handle, starting with the transaction that failed, and
nothing is lost.

The database work runs in child processes (run_python) so that a SIGBUS from
writing into an unallocated page of a mapping fails the test instead of
killing pytest.

(a) RLIMIT_FSIZE (EFBIG) for every configuration;
(b) ENOSPC on a 16 MiB tmpfs and on a 32 MiB ext4 loop filesystem, for mmap
    (default), mmap writemap=True and pread (needs root for mount);
(c) MapFullError when a growth="reserve" reservation (map_size) is exhausted;
(d) RLIMIT_AS for every mmap configuration: mremap / remap growth fails with
    ENOMEM (MapFullError), growth="reserve" gets a smaller reservation at
    open and MapFullError past it; the old mapping stays valid (same base and
    length), reads keep working, the file is cut back, and once the limit is
    raised the same write succeeds (reserve: after a reopen, as its message
    says).  An open that cannot map the file at all fails cleanly.
"""

import os
import shutil
import subprocess

import pytest

from conftest import ALL_CONFIG_PARAMS, assert_child_ok, configs_by_id, run_python

# ---------------------------------------------------------------------------
# child programs

# Writes transactions of fresh keys until one fails; records every committed
# transaction (key -> sha256) in a manifest outside the database filesystem.
FILL_CHILD = r"""
import os, resource, hashlib, traceback
import kvmap
from conftest import make_value

path, manifest, cfg = ARGS["path"], ARGS["manifest"], ARGS["cfg"]
mode = ARGS["mode"]           # "rlimit" or "fs"
per_txn = ARGS["per_txn"]      # values per transaction
vsize = ARGS["vsize"]          # bytes per value
max_txns = ARGS["max_txns"]

def h(b):
    return hashlib.sha256(b).hexdigest()

committed = {}                 # hex key -> sha
ballast = ARGS.get("ballast")  # mode "fs": a file that takes space, freed after the failure
if ballast:
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, ARGS["ballast_bytes"])
    os.fsync(fd)
    os.close(fd)
db = kvmap.open(path, **cfg)
# some committed data before the limit
for t in range(4):
    batch = {b"pre-%02d-%03d" % (t, i): make_value(("pre", t, i), 1000 + 37 * i) for i in range(50)}
    db.update(batch)
    committed.update({k.hex(): h(v) for k, v in batch.items()})
if mode == "rlimit":
    size = os.path.getsize(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2 * 1024 * 1024, hard))
    print("LIMIT", size + 2 * 1024 * 1024)

err = None
failed_keys = []
n_ok = 0
for t in range(max_txns):
    batch = {b"big-%05d-%02d" % (t, i): make_value(("big", t, i), vsize + 1013 * i) for i in range(per_txn)}
    # half of the transactions also overwrite / delete earlier keys
    if t % 2 == 1:
        old = sorted(committed)[t % len(committed)]
        batch[bytes.fromhex(old)] = make_value(("ow", t), 3000)
    try:
        with db.transaction() as txn:
            for k, v in batch.items():
                txn[k] = v
    except kvmap.Error as e:
        err = e
        failed_keys = [k.hex() for k in batch if not k.hex() in committed]
        break
    committed.update({k.hex(): h(v) for k, v in batch.items()})
    n_ok += 1

print("COMMITTED_TXNS", n_ok)
if err is None:
    print("NO_ERROR after", max_txns, "transactions")
    raise SystemExit(3)
print("EXC", type(err).__name__, "DiskFullError=%s" % isinstance(err, kvmap.DiskFullError),
      "Error=%s" % isinstance(err, kvmap.Error), repr(err)[:300])

# the same handle still reads every committed transaction
assert len(db) == len(committed), (len(db), len(committed))
for kh, hv in committed.items():
    v = db[bytes.fromhex(kh)]
    assert h(v) == hv, kh
for kh in failed_keys:
    assert bytes.fromhex(kh) not in db, "key of the failed transaction is visible: " + kh
assert [k.hex() for k in db] == sorted(committed)
with db.snapshot() as s:
    assert len(s) == len(committed)
print("READS_OK")

# the writer lock is free again: a small transaction either commits or fails cleanly
small_ok = False
try:
    with db.transaction(timeout=30) as txn:
        txn[b"small-after-failure"] = b"x" * 10
    small_ok = True
    committed[b"small-after-failure".hex()] = h(b"x" * 10)
except (kvmap.DiskFullError, kvmap.MapFullError) as e:
    print("SMALL_WRITE_FAILED", type(e).__name__)
print("SMALL_WRITE_OK", small_ok)
assert len(db) == len(committed)

# Space is freed (the ballast file deleted, or the file size limit lifted):
# writing resumes on the same handle, starting with the transaction that
# failed, and nothing committed before is lost.
if mode == "rlimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
else:
    os.unlink(ballast)
    dfd = os.open(os.path.dirname(ballast), os.O_RDONLY)
    os.fsync(dfd)              # ext4: let the freed blocks be reused at once
    os.close(dfd)
assert not db.stats()["failed"]
with db.transaction(timeout=30) as txn:
    for k, v in batch.items():
        txn[k] = v
committed.update({k.hex(): h(v) for k, v in batch.items()})
failed_keys = []
for t in range(max_txns, max_txns + 3):
    more = {b"after-%05d-%02d" % (t, i): make_value(("after", t, i), vsize + 1013 * i) for i in range(per_txn)}
    db.update(more)
    committed.update({k.hex(): h(v) for k, v in more.items()})
assert len(db) == len(committed), (len(db), len(committed))
for kh, hv in committed.items():
    assert h(db[bytes.fromhex(kh)]) == hv, kh
db._check()
print("RESUMED_OK", len(committed))
db.close()
with open(manifest, "w") as f:
    json.dump({"committed": committed, "failed": failed_keys}, f)
print("CHILD_OK")
"""

VERIFY_CHILD = r"""
import hashlib
import kvmap
path, manifest, cfg = ARGS["path"], ARGS["manifest"], ARGS["cfg"]
m = json.load(open(manifest))
committed, failed = m["committed"], m["failed"]
with kvmap.open(path, **cfg) as db:
    assert len(db) == len(committed), (len(db), len(committed))
    for kh, hv in committed.items():
        assert hashlib.sha256(db[bytes.fromhex(kh)]).hexdigest() == hv, kh
    for kh in failed:
        assert bytes.fromhex(kh) not in db, kh
    assert [k.hex() for k in db] == sorted(committed)
    chk = getattr(db, "_check", None)
    if callable(chk):
        chk()
print("VERIFY_OK", len(committed))
"""


def _fill_and_verify(tmp_path, dbdir, cfg, mode, per_txn, vsize, max_txns):
    path = os.path.join(str(dbdir), "db")
    manifest = str(tmp_path / "manifest.json")
    args = dict(path=path, manifest=manifest, cfg=cfg, mode=mode, per_txn=per_txn, vsize=vsize,
                max_txns=max_txns)
    if mode == "fs":
        args.update(ballast=os.path.join(str(dbdir), "ballast"), ballast_bytes=4 << 20)
    rc, out, err = run_python(FILL_CHILD, args=args, timeout=300)
    assert_child_ok(rc, out, err, "CHILD_OK")
    assert "DiskFullError=True" in out, out
    assert "RESUMED_OK" in out, out
    # the parent side: reopen without any limit (in a subprocess too: a
    # broken file must not crash pytest) and verify every committed txn
    rc, out2, err2 = run_python(VERIFY_CHILD, args=args, timeout=300)
    assert_child_ok(rc, out2, err2, "VERIFY_OK")
    return out + out2


# ---------------------------------------------------------------------------
# (a) RLIMIT_FSIZE


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_rlimit_fsize_disk_full(tmp_path, cfg):
    dbdir = tmp_path / "d"
    dbdir.mkdir()
    out = _fill_and_verify(tmp_path, dbdir, cfg, "rlimit", per_txn=4, vsize=64 * 1024, max_txns=400)
    print(out)


# ---------------------------------------------------------------------------
# (b) ENOSPC on small filesystems


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(params=["tmpfs-16m", "ext4-loop-32m"])
def small_fs(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited filesystem")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if request.param == "tmpfs-16m":
        r = _run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)])
    else:
        img = tmp_path / "fs.img"
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("needs root to mount a size-limited filesystem (mkfs.ext4 not installed)")
        r = _run(["truncate", "-s", "32M", str(img)])
        if r.returncode == 0:
            r = _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)])
        if r.returncode == 0:
            r = _run(["mount", "-o", "loop", str(img), str(mnt)])
    if r.returncode != 0:
        pytest.skip("needs root to mount a size-limited filesystem (mount failed: %s)" % r.stderr.strip())
    try:
        yield mnt
    finally:
        u = _run(["umount", str(mnt)])
        if u.returncode != 0:
            _run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-reserve-wm", "pread"))
def test_enospc_disk_full(tmp_path, small_fs, cfg):
    out = _fill_and_verify(tmp_path, small_fs, cfg, "fs", per_txn=4, vsize=48 * 1024, max_txns=2000)
    print(out)


@pytest.mark.parametrize("cfg", configs_by_id("mmap-mremap", "mmap-remap-wm"))
def test_enospc_disk_full_other_growth(tmp_path, small_fs, cfg):
    out = _fill_and_verify(tmp_path, small_fs, cfg, "fs", per_txn=4, vsize=48 * 1024, max_txns=2000)
    print(out)


# ---------------------------------------------------------------------------
# (c) reservation exhausted

MAPFULL_CHILD = r"""
import hashlib
import kvmap
from conftest import make_value
path, cfg = ARGS["path"], ARGS["cfg"]
db = kvmap.open(path, map_size=32 * 1024 * 1024, sync=False, **cfg)
base = db.stats()["map_base"]
committed = {}
err = None
for t in range(200):
    batch = {b"k%04d-%d" % (t, i): make_value((t, i), 100 * 1024) for i in range(4)}
    try:
        db.update(batch)
    except kvmap.Error as e:
        err = e
        break
    committed.update(batch)
    assert db.stats()["map_base"] == base
print("EXC", type(err).__name__, "MapFullError=%s" % isinstance(err, kvmap.MapFullError))
assert err is not None
assert db.stats()["map_base"] == base
assert len(db) == len(committed)
for k, v in committed.items():
    assert db[k] == v
db.close()
with kvmap.open(path, **cfg) as db:   # default map_size: everything is there
    assert len(db) == len(committed)
    for k, v in committed.items():
        assert db[k] == v
    db[b"more"] = make_value("more", 8 * 1024 * 1024)
    assert len(db[b"more"]) == 8 * 1024 * 1024
print("MAPFULL_OK", len(committed))
"""


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-reserve-wm"))
def test_reserve_map_size_exhausted(tmp_path, cfg):
    rc, out, err = run_python(MAPFULL_CHILD, args=dict(path=str(tmp_path / "db"), cfg=cfg), timeout=300)
    assert_child_ok(rc, out, err, "MAPFULL_OK")
    assert "MapFullError=True" in out, out


# ---------------------------------------------------------------------------
# (d) RLIMIT_AS: the mapping cannot grow (ENOMEM)

AS_CHILD = r"""
import hashlib, os, resource
import kvmap
from conftest import make_value

path, cfg = ARGS["path"], ARGS["cfg"]
MiB = 1 << 20
SOFT, HARD = resource.getrlimit(resource.RLIMIT_AS)
reserve = cfg["growth"] == "reserve"


def vmsize():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024


def limit(extra):
    resource.setrlimit(resource.RLIMIT_AS, (vmsize() + extra, HARD))


def unlimit():
    resource.setrlimit(resource.RLIMIT_AS, (SOFT, HARD))


def check_all(db, committed):
    assert len(db) == len(committed), (len(db), len(committed))
    for k, v in committed.items():
        assert db[k] == v, k
    with db.snapshot() as s:
        assert list(s.keys()) == sorted(committed)


def sha(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


committed = {}
db = kvmap.open(path, sync=False, **cfg)
for t in range(8):
    batch = {b"pre-%02d-%02d" % (t, i): make_value(("pre", t, i), 9000 + i) for i in range(25)}
    db.update(batch)
    committed.update(batch)
big = make_value("big", 32 * MiB)            # made before the limit
if reserve:
    # The reservation made at open counts against RLIMIT_AS, growth inside it
    # does not: so open under the limit, and the reservation itself shrinks.
    db.close()
    limit(24 * MiB)
    db = kvmap.open(path, sync=False, **cfg)
    st = db.stats()
    print("RESERVED", st["map_size"], "FILE", st["file_size"])
    assert st["file_size"] <= st["map_size"] <= 24 * MiB, st
else:
    limit(16 * MiB)
st0 = db.stats()
size0 = os.path.getsize(path)
check_all(db, committed)

# growth beyond the limit: MapFullError, the old mapping stays valid
try:
    db[b"big"] = big
except kvmap.MapFullError as e:
    print("EXC", type(e).__name__, e)
    msg = str(e)
else:
    raise SystemExit("the mapping grew past RLIMIT_AS")
if reserve:
    assert "reopen with a larger map_size" in msg, msg
else:
    assert "Cannot allocate memory" in msg, msg
st = db.stats()
assert (st["map_base"], st["map_length"], st["map_size"], st["file_size"]) == \
    (st0["map_base"], st0["map_length"], st0["map_size"], st0["file_size"]), (st0, st)
assert os.path.getsize(path) == size0, "the file was not cut back after the failed growth"
assert not st["failed"]
check_all(db, committed)
print("READS_OK")

# a write that needs no more address space still commits, under the limit
db[b"small"] = b"s" * 100
committed[b"small"] = b"s" * 100
check_all(db, committed)

unlimit()
if reserve:
    # the reservation is fixed for the life of the handle: growing past it
    # takes a reopen (the message says so), now with the full reservation
    try:
        db[b"big"] = big
    except kvmap.MapFullError as e:
        assert "reopen with a larger map_size" in str(e), e
    else:
        raise SystemExit("the reservation grew")
    check_all(db, committed)
    db.close()
    db = kvmap.open(path, sync=False, **cfg)
    assert db.stats()["map_size"] > 24 * MiB
db[b"big"] = big                             # the limit raised: growth resumes
committed[b"big"] = big
check_all(db, committed)
db._check()
db.close()
print("RESUMED_OK")

# open when the limit leaves no room to map the file: a clean MapFullError,
# no descriptor leaked, nothing written, and the file opens again later
digest = sha(path)
nfd = len(os.listdir("/proc/self/fd"))
limit(2 * MiB)
try:
    kvmap.open(path, sync=False, **cfg)
except kvmap.MapFullError as e:
    print("OPEN_EXC", e)
else:
    raise SystemExit("opened a %d MiB file with 2 MiB of address space" % (size0 // MiB))
unlimit()
assert len(os.listdir("/proc/self/fd")) == nfd
assert sha(path) == digest
with kvmap.open(path, **cfg) as db:
    check_all(db, committed)
    db._check()
print("AS_OK")
"""


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-reserve-wm", "mmap-mremap", "mmap-mremap-wm",
                                              "mmap-remap", "mmap-remap-wm"))
def test_rlimit_as_map_growth(tmp_path, cfg):
    rc, out, err = run_python(AS_CHILD, args=dict(path=str(tmp_path / "db"), cfg=cfg), timeout=300)
    assert_child_ok(rc, out, err, "AS_OK")
    assert "READS_OK" in out and "RESUMED_OK" in out, out
    print(out)
