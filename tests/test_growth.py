"""Growing a database from empty to >= 256 MiB under each growth strategy
(reserve, mremap, remap) and the pread backend, with all data verified after
the growth and after reopening.  Under growth="reserve" the mapping base must
never move.  sync=False keeps it fast (durability is not what is tested).

Also: snapshots and live iterators must survive a mapping that moves
(mremap / remap), checked in a subprocess so a use-after-unmap crash fails
the test instead of killing pytest.
"""

import os

import pytest

from conftest import ALL_CONFIG_PARAMS, assert_child_ok, configs_by_id, make_value, open_db, run_python, sha

MiB = 1 << 20
TARGET = 256 * MiB


def _val(i):
    return make_value(("grow", i), MiB)


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_grow_to_256mib(tmp_path, cfg):
    p = tmp_path / "db"
    hashes = {}
    bases = []
    try:
        with open_db(p, cfg, sync=False) as db:
            st = db.stats()
            base0 = st["map_base"]
            bases.append(base0)
            if cfg["backend"] == "mmap":
                assert base0 != 0
            else:
                assert base0 == 0
            i = 0
            # until the file is >= 256 MiB *and* 256 MiB of values were written
            # (growth is geometric, so the file size alone runs ahead of the data)
            while os.path.getsize(p) < TARGET or i < TARGET // MiB:
                assert i < 400, "file did not reach 256 MiB after %d MiB of values" % i
                with db.transaction() as t:
                    for _ in range(4):
                        v = _val(i)
                        t[b"v%05d" % i] = v
                        hashes[i] = sha(v)
                        i += 1
                b = db.stats()["map_base"]
                bases.append(b)
                if cfg.get("growth") == "reserve" or cfg["backend"] == "pread":
                    assert b == base0, "map_base moved after %d values: %#x -> %#x" % (i, base0, b)
                # a small write between the big ones
                db[b"counter"] = b"%d" % i
            st = db.stats()
            assert st["file_size"] >= TARGET
            assert st["entries"] == len(hashes) + 1
            print("\n[growth %s] %d values, file %d bytes, map_base moved %d times"
                  % (cfg, len(hashes), os.path.getsize(p), len(set(bases)) - 1))
            # verify everything on the same handle
            for j, h in hashes.items():
                v = db[b"v%05d" % j]
                assert len(v) == MiB and sha(v) == h, j
            assert db[b"counter"] == b"%d" % i
        with open_db(p, cfg) as db:
            assert len(db) == len(hashes) + 1
            for j, (k, v) in enumerate(db.irange_items(b"v", b"w")):
                assert k == b"v%05d" % j
                assert sha(v) == hashes[j], j
            assert j == len(hashes) - 1
    finally:
        if p.exists():
            os.remove(p)


GROW_WHILE_READING = r"""
import os, kvmap
from conftest import make_value, sha
cfg = ARGS["cfg"]
path = ARGS["path"]
MiB = 1 << 20
db = kvmap.open(path, sync=False, **cfg)
small = {b"s%05d" % i: make_value(("s", i), 200 + i % 3000) for i in range(3000)}
db.update(small)
snap = db.snapshot().__enter__()
it = snap.irange_items()            # an iterator in progress over the old mapping
first = [next(it) for _ in range(1000)]
val_before = snap[b"s00007"]
bases = {db.stats()["map_base"]}
# grow the file a lot (forces remaps / moves for mremap and remap)
for i in range(48):
    with db.transaction() as t:
        t[b"big%03d" % i] = make_value(("big", i), 2 * MiB)
        # also overwrite and delete keys the snapshot still sees
        t[b"s%05d" % (i * 7)] = b"new"
        t.pop(b"s%05d" % (i * 11 + 1), None)
    bases.add(db.stats()["map_base"])
rest = list(it)
got = first + rest
assert got == sorted(small.items()), "iterator started before growth saw wrong data"
assert list(snap.items()) == sorted(small.items()), "snapshot changed"
assert snap[b"s00007"] == val_before
assert sha(db[b"big047"]) == sha(make_value(("big", 47), 2 * MiB))
snap.close()
db.close()
print("GROW_READ_OK moved=%d" % (len(bases) - 1))
"""


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-mremap", "mmap-remap", "mmap-remap-wm",
                                              "pread"))
def test_snapshot_and_iterator_survive_growth(tmp_path, cfg):
    rc, out, err = run_python(GROW_WHILE_READING, args=dict(cfg=cfg, path=str(tmp_path / "db")), timeout=300)
    assert_child_ok(rc, out, err, "GROW_READ_OK")
