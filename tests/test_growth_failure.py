"""Growth failures: a full disk or a file size limit must give a clean
kvmap.DiskFullError, abort only the failing transaction, keep the handle
usable for reads of everything committed before, and leave a file that
reopens with every committed transaction.

The database work runs in child processes (run_python) so that a SIGBUS from
writing into an unallocated page of a mapping fails the test instead of
killing pytest.

(a) RLIMIT_FSIZE (EFBIG) for every configuration;
(b) ENOSPC on a 16 MiB tmpfs and on a 32 MiB ext4 loop filesystem, for mmap
    (default), mmap writemap=True and pread (needs root for mount);
(c) MapFullError when a growth="reserve" reservation (map_size) is exhausted.
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
    rc, out, err = run_python(FILL_CHILD, args=args, timeout=300)
    assert_child_ok(rc, out, err, "CHILD_OK")
    assert "DiskFullError=True" in out, out
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
