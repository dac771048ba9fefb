"""Free-space reuse under churn: overwriting data must not grow the file
without bound.

Load 10,000 keys with 100-byte values, then overwrite every key 50 times in
transactions of 100 keys (5,000 commits, 500,000 puts).  The file must stay
within 2x its size after the initial load.  Run with ``pytest -s`` to see the
sizes, and the file's allocated blocks against the live database.

Issue 13 asks for allocated blocks within 1.3x the live size after the 50
rounds; that is not asserted, because it cannot hold here
(docs/ARCHITECTURE.md §4).  Each commit rewrites about 90 of the 300 leaves:
with sync=True the pages the last commit freed, which the next one reuses,
are 25-32% of the live pages by themselves (1.29x at the end of round 50,
1.32x at worst), before any free page (1.41x allocated); with sync=False the
pages freed since the last flush wait for the next one, which make_room
(txn.c) calls only once 512 KiB (0.4x this database) are held.  What is
asserted with sync=True: after the first round, which gives back the file's
growth step, the commits neither punch nor allocate (posix_fallocate) a
page: they take what the commit before freed.
"""

import os
import random

import pytest

from kvmap.configurations import open_kwargs
from conftest import DEFAULT_CFG, PREAD_CFG, configs_by_id, open_db

NKEYS = 10_000
ROUNDS = 50
BATCH = 100


def _value(i, r):
    head = b"%06d/%03d|" % (i, r)
    return (head * 10)[:100]


# The default configuration runs with the default sync=True (about 15 s
# here for 5,000 durable commits).  The other two use sync=False to keep the
# suite short: sync does not affect which pages are reused (a page freed by
# commit N is reusable once no reader older than N is alive).
@pytest.mark.parametrize("cfg,sync", [
    pytest.param(dict(DEFAULT_CFG), True, id="mmap-reserve-sync"),
    pytest.param(open_kwargs("mmap-reserve-wm"), False, id="mmap-reserve-wm-nosync"),
    pytest.param(dict(PREAD_CFG), False, id="pread-nosync"),
])
def test_churn_file_size_bounded(tmp_path, cfg, sync):
    p = tmp_path / "db"
    keys = [b"churn-%06d" % i for i in range(NKEYS)]
    with open_db(p, cfg, sync=sync) as db:
        for s in range(0, NKEYS, 1000):
            db.update((keys[i], _value(i, 0)) for i in range(s, s + 1000))
        assert len(db) == NKEYS
        size_loaded = os.path.getsize(p)
        st0 = db.stats()

        rng = random.Random(50)
        max_size = size_loaded
        for r in range(1, ROUNDS + 1):
            order = list(range(NKEYS))
            rng.shuffle(order)
            for s in range(0, NKEYS, BATCH):
                with db.transaction() as t:
                    for i in order[s:s + BATCH]:
                        t[keys[i]] = _value(i, r)
            max_size = max(max_size, os.path.getsize(p))
            if r == 1:
                calls0 = db.stats()["syscalls"]
        size_final = os.path.getsize(p)
        st1 = db.stats()
        calls1 = st1["syscalls"]
        live = st1["used_pages"] * db.page_size
        print("\n[churn %s sync=%s] file size after load: %d bytes (%d pages high-water), "
              "after %d rounds: %d bytes (%d pages high-water), max seen %d bytes, free_pages=%s; "
              "allocated %d bytes, %.3fx the live %d bytes (pending %d pages); %d punch and %d fallocate calls "
              "after round 1"
              % (cfg, sync, size_loaded, st0["pages"], ROUNDS, size_final, st1["pages"], max_size,
                 st1.get("free_pages"), st1["allocated_bytes"], st1["allocated_bytes"] / live, live,
                 st1["pending_pages"], calls1["punch"] - calls0["punch"], calls1["fallocate"] - calls0["fallocate"]))
        # all data is the last round's
        for i in range(0, NKEYS, 97):
            assert db[keys[i]] == _value(i, ROUNDS)
        assert len(db) == NKEYS
        assert size_final <= 2 * size_loaded, (size_loaded, size_final)
        assert st1["pages"] * db.page_size <= 2 * size_loaded, (size_loaded, st1["pages"])
        if sync:   # steady commits take what the commit before freed: nothing punched and allocated again
            assert (calls1["punch"], calls1["fallocate"]) == (calls0["punch"], calls0["fallocate"]), (calls0, calls1)
    with open_db(p, cfg) as db:
        assert len(db) == NKEYS
        assert list(db.items()) == [(keys[i], _value(i, ROUNDS)) for i in range(NKEYS)]


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "pread"))
def test_space_held_by_live_snapshot_is_linear(tmp_path, cfg):
    """While an old snapshot is alive no freed page can be reused, so the file
    grows -- but only by what the commits actually replaced.  Each commit here
    rewrites one 100-byte value in a 400-key, depth-2 tree: a handful of pages
    (leaf, root, free-list bookkeeping), the same handful every time.

    Checked: (1) at most 8 pending pages per commit on average; (2) linear,
    not faster: the pages held by commits 3001-4000 are at most 1.3x (+200)
    those held by commits 1001-2000 (a pending-free list rewritten whole on
    every commit, with its old copy kept pending too, grows quadratically);
    (3) once the snapshot is closed the held pages are reused: no growth."""
    N = 4000
    p = tmp_path / "db"
    model = {b"key%05d" % i: b"x" * 100 for i in range(400)}
    # sync=True: with sync=False the pages waiting for a background flush,
    # and so the counts below, depend on when each flush ends (the machine's
    # load): the check was flaky (pending 126 at 1,000 commits, 41 at 2,000)
    with open_db(p, cfg, sync=True) as db:
        db.update(model)
        ps = db.page_size
        snap = db.snapshot().__enter__()
        hw0 = db.stats()["pages"]
        pending = {0: db.stats()["pending_pages"]}
        for c in range(N):
            with db.transaction() as t:
                t[b"key%05d" % (c % 400)] = b"%0100d" % c
            model[b"key%05d" % (c % 400)] = b"%0100d" % c
            if (c + 1) % 1000 == 0:
                pending[c + 1] = db.stats()["pending_pages"]
        st = db.stats()
        size_held = os.path.getsize(p)
        print("\n[snapshot held %s] pending pages after 0/1000/2000/3000/4000 commits: %s; "
              "pages %d -> %d, file %d bytes"
              % (cfg, [pending[k] for k in sorted(pending)], hw0, st["pages"], size_held))
        assert list(snap.items()) == [(b"key%05d" % i, b"x" * 100) for i in range(400)]
        inc_early = pending[2000] - pending[1000]
        inc_late = pending[4000] - pending[3000]
        assert inc_late <= 1.3 * inc_early + 200, (
            "space held by a live snapshot grows faster than linearly", pending)
        assert st["pending_pages"] <= 8 * N, pending
        assert (st["pages"] - hw0) <= 8 * N + 64, (hw0, st)
        snap.close()
        hw_closed = db.stats()["pages"]
        for c in range(N, N + 1500):
            with db.transaction() as t:
                t[b"key%05d" % (c % 400)] = b"%0100d" % c
            model[b"key%05d" % (c % 400)] = b"%0100d" % c
        st2 = db.stats()
        print("[snapshot closed] 1500 more commits: pages %d -> %d, pending=%d free=%d, file %d bytes"
              % (hw_closed, st2["pages"], st2["pending_pages"], st2["free_pages"], os.path.getsize(p)))
        assert st2["pages"] <= hw_closed + 16, (hw_closed, st2)
        assert st2["pages"] * ps <= max(size_held, os.path.getsize(p))
        assert list(db.items()) == sorted(model.items())
    with open_db(p, cfg) as db:
        assert list(db.items()) == sorted(model.items())
