"""Simulated power loss (tools/powerloss.py; how it works is in its module
doc and in docs/ARCHITECTURE.md, "Crash testing: simulated power loss").

Each configuration records a workload with the C core's fdatasync hooked,
builds crash images from what was written since the last completed sync
(dropped, partial, reordered, torn writes; old or new file length) and
verifies every image in a child process, so an engine crash fails a test,
not pytest:

* ``sync=True``: the image opens to exactly the state the sync points
  allow (the last acknowledged commit, or the next one once its meta and
  every page it wrote landed), with a clean ``kvmap.check`` before and
  after the reopen; every commit made one fdatasync (two when it synced its
  pages first), counted by the hook;
* ``sync=False``: flush points come from a small ``sync_bytes``, db.sync(),
  one-off syncing commits, close (and its seal), ``sync_interval``, the
  pages held for the durable commit and the flushes a transaction makes to
  reuse freed pages; a commit due to flush starts a flush of itself (a
  transaction short of pages one of the commit before), which the
  recording runs inline (``kvm_set_flush_mode(k)``, k of 1 to 4 by the
  seed: the engine takes up its end at the k-th write transaction's begin, the
  commits in between write the third meta slot); every page written since
  the last completed flush may hold its old version, its new one or a
  tear, every meta slot any version written to it since -- and in a
  flush's window the flush may not have completed at all; the image must
  open, check clean and hold exactly the state after some commit from the
  last completed flush to the last one written: never contents no commit
  had, never older than the flush.

``KVMAP_POWERLOSS_LOSSES`` (sync=True images, default 1,050),
``KVMAP_POWERLOSS_NOSYNC`` (sync=False images, default 2,100) and
``KVMAP_POWERLOSS_SEED`` change the run; ``python tools/powerloss.py
--long`` is the long version (10,050 + 10,500 images).
"""

import os
import subprocess
import sys
from collections import Counter

import pytest

from conftest import REPO_ROOT, assert_child_ok, run_python

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import powerloss  # noqa: E402

SEED = int(os.environ.get("KVMAP_POWERLOSS_SEED", "20261128"))
LOSSES = int(os.environ.get("KVMAP_POWERLOSS_LOSSES", str(powerloss.DEFAULT_LOSSES[0])))
NOSYNC = int(os.environ.get("KVMAP_POWERLOSS_NOSYNC", str(powerloss.DEFAULT_LOSSES[1])))
SPECS = powerloss.plan(LOSSES, SEED, nosync=NOSYNC)
GROUPS = {}
for _s in SPECS:
    GROUPS.setdefault("%s-%s" % (_s["config"], "sync" if _s["sync"] else "nosync"), []).append(_s)


def test_plan_covers_every_config_with_enough_images():
    """At least 2,000 sync=False images per run (10,000 with --long), over
    every configuration, and every shape of sync=False run (mixed, churn,
    with sync_interval)."""
    nosync = sum(s["losses"] for s in SPECS if not s["sync"])
    assert nosync >= 2000 or NOSYNC < 2000
    long = powerloss.plan(long=True)
    assert sum(s["losses"] for s in long if not s["sync"]) >= 10000
    assert sum(s["losses"] for s in long if s["sync"]) >= 10000
    for cfg in powerloss.CONFIGS:
        for sync in ("sync", "nosync"):
            assert "%s-%s" % (cfg, sync) in GROUPS
    shapes = {(p["shape"], p["sync_interval"]) for p in (
        powerloss.run_plan(False, s["seed"], s["commits"]) for s in SPECS if not s["sync"])}
    if NOSYNC >= 2000:
        assert {"mixed", "churn"} <= {sh for sh, _ in shapes} and powerloss.INTERVAL in {i for _, i in shapes}


@pytest.fixture(scope="module")
def group_results(request):
    """The batches of every selected group of test_power_loss (of every
    group when test_every_sync_point_kind_occurs is selected), run together
    two at a time (so no core waits for a group's slowest batch): group ->
    results."""
    items = request.session.items
    if any(getattr(item, "name", None) == "test_every_sync_point_kind_occurs" for item in items):
        selected = set(GROUPS)
    else:
        selected = {item.callspec.params["group"] for item in items
                    if getattr(item, "originalname", None) == "test_power_loss" and hasattr(item, "callspec")}
    specs = [s for g in sorted(selected) for s in GROUPS[g]]
    results = powerloss.run_specs(specs, jobs=2)
    out = {}
    for spec, res in zip(specs, results):
        out.setdefault("%s-%s" % (spec["config"], "sync" if spec["sync"] else "nosync"), []).append(res)
    return out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_power_loss(group, group_results):
    results = group_results[group]
    report = powerloss.summarize(results)
    assert not any(r["failures"] or r["problems"] for r in results), report
    assert sum(r["losses"] for r in results) == sum(s["losses"] for s in GROUPS[group]), report
    modes = set()
    lengths = set()
    outcomes = set()
    events = set()
    for r in results:
        modes.update(part for m in r["modes"] if ":" not in m for part in m.split("+"))
        modes.update(m.split(":")[0] for m in r["modes"] if ":" in m)
        lengths.update(r["lengths"])
        outcomes.update(r["outcomes"])
        events.update(r["events"])
    if group.endswith("-sync"):
        # every kind of loss happened, at commits that synced once and at
        # pages-first ones, and the file grew in some of them
        want = set(powerloss.DATA_MODES) | set(powerloss.META_MODES) | {"create"}
        assert want <= modes, report
        assert {"old-length", "new-length"} <= lengths, report
        assert "exact" in outcomes, report
        assert "commit/sync=True" in events, report
    else:
        assert set(powerloss.NOSYNC_MODES) <= modes, report
        # the state after the newest commit written, the durable one (also
        # after a fallback from a newer meta whose pages did not land)
        assert {"exact", "state-newest", "state-durable", "state-durable-fallback"} <= outcomes, report
        # flush points: pages-first commits, db.sync(), one-off syncing
        # commits, close() and its seal
        assert {"pages/pages-first", "flush/in db.sync()", "commit/syncing", "seal/in close()"} <= events, report
        # flushes started by a commit, and commits and images beside them
        # (test_a_flush_in_flight)
        flight = sum((Counter(r["flight"]) for r in results), Counter())
        assert flight["flushes started"] and flight["commits beside a flush in flight"], report


def test_every_sync_point_kind_occurs(group_results):
    """Over the runs of test_power_loss: sync=True commits that sync once and
    pages-first ones, close()'s seal; sync=False commits that start a flush
    of themselves because sync_bytes were reached, sync_interval passed or
    the pages held for the durable commit grew, commits that sync themselves because 2 x sync_bytes were
    reached, pages-first ones, db.sync(), close(), one-off syncing commits
    and the flushes a transaction makes to reuse freed pages."""
    kinds = {sync: set().union(*(r["events"] for g in GROUPS if g.endswith("-" + sync) for r in group_results[g]))
             for sync in ("sync", "nosync")}
    assert {"commit/sync=True", "pages/pages-first", "commit/pages-first", "seal/in close()"} <= kinds["sync"], \
        kinds["sync"]
    assert {"commit/sync_bytes", "commit/interval", "commit/2 x sync_bytes", "commit/held pages",
            "pages/pages-first", "flush/in db.sync()", "commit/syncing", "flush/in close()",
            "seal/in close()", "flush/in a transaction"} <= kinds["nosync"], kinds["nosync"]


def test_recorder_sees_every_write_and_every_sync(tmp_path):
    """The event diffs see pages written through the shared map (writemap)
    as well as by pwrite, and replaying them rebuilds the file.  sync=True:
    every commit makes one "commit" sync point holding its pages and exactly
    one meta sector, or, pages-first, a "pages" point without a meta and
    then a "commit" point; the hook counts exactly those fdatasyncs.  The
    checks that fail a run do fail on a commit with an extra fdatasync, a
    write to a page of the durable state before the next flush, a write in
    a flush's window to a page of the state durable before it, and a commit
    in that window writing its meta into the slot of the flush's commit."""
    code = r"""
import os, sys
sys.path.insert(0, ARGS["tools"])
import powerloss
spp = 4096 // 512

def raw(events):
    # the events as the recorder left them, for annotate to name again
    out = [powerloss.Event(x.index, "sync" if x.sync else "ack", x.txn if x.ctx == "txn" else None,
                           x.old_len, x.new_len, dict(x.delta), 0, 0) for x in events]
    for x, y in zip(out, events):
        x.ctx, x.flight = y.ctx, y.flight
    return out

def annotate_problems(events, flush_mode):
    got = []
    powerloss.annotate(events, spp, got, flush_mode=flush_mode)
    return got

def newest_meta(events, upto):
    buf = bytearray()
    for x in events[:upto + 1]:
        powerloss.apply_delta(buf, x.new_len, x.delta)
    slots = [bytes(buf[i * 4096:i * 4096 + 512]) for i in range(powerloss.META_PAGES)]
    return max(slots, key=lambda m: powerloss.meta_field(m, powerloss.M_TXNID))

for cfg in ("mmap-reserve-wm", "mmap-mremap", "pread"):
    for sync, seed in ((True, 7), (False, 60)):
        events, states, problems, plan = powerloss.record(cfg, sync, seed, 30, directory=ARGS["dir"])
        assert not problems, problems
        commits = [e for e in events if e.kind == "commit"]
        if sync:
            assert len(commits) >= 25, (cfg, len(commits))
            assert all(len(powerloss.metas_of(e, spp)) == 1 for e in commits), cfg
            assert any(len({s // spp for s in e.delta}) >= 3 for e in commits), cfg   # pages too
            assert any(e.kind == "pages" for e in events), cfg
            assert any(e.new_len > e.old_len for e in commits), cfg   # the file grew
        else:
            assert {e.kind for e in events} >= {"create", "pages", "commit", "flush", "seal", "ack"}, cfg
        buf = bytearray()
        for e in events:
            powerloss.apply_delta(buf, e.new_len, e.delta)
        with open(os.path.join(ARGS["dir"], "recorded.kv"), "rb") as f:
            assert f.read() == bytes(buf), cfg
        # an extra fdatasync in a sync=True commit fails the run
        if sync:
            i, how, first, end, committed, unsynced, after = next(t for t in plan["txns"] if t[4])
            extra = powerloss.Event(0, "flush", i, events[first].old_len, events[first].old_len, {}, 0, 0)
            extra.ctx = "txn"
            tampered = events[:first] + [extra] + events[first:]
            txns = [(j, h, f + (f > first), e + (e > first), c, u, a) for j, h, f, e, c, u, a in plan["txns"]]
            got = []
            powerloss.check_syncs(tampered, txns, True, plan, states, spp, got)
            assert any("extra flush" in p or "sync points" in p for p in got), got
            continue
        k = plan["flush_mode"]
        assert not annotate_problems(raw(events), k)
        # a write to a page of the durable state before the next flush
        # (here: its root, right after the commit that made it durable) fails
        # the run
        for n, e in enumerate(events):
            if e.kind == "commit" and n + 1 < len(events):
                root = powerloss.meta_field(powerloss.metas_of(e, spp)[0][1], 24)
                tampered = raw(events)
                tampered[n + 1].delta[root * spp] = bytes(512)
                got = annotate_problems(tampered, k)
                assert any("(branch) of the durable state" in p or "(leaf) of the durable state" in p
                           for p in got), got
                break
        else:
            raise AssertionError("no flushing commit")
        # in a flush's window (the flush started, its end not taken up): a
        # write to the root of the state durable before it fails the run
        for n, e in enumerate(events):
            if e.start and n + 1 < len(events) and events[n + 1].bg is not None and \
                    events[events[n + 1].bg].kind != "create":
                root = powerloss.meta_field(newest_meta(events, events[n + 1].bg), 24)
                tampered = raw(events)
                tampered[n + 1].delta[root * spp] = bytes(512)
                got = annotate_problems(tampered, k)
                assert any("while the flush that replaces it is in flight" in p for p in got), got
                break
        else:
            raise AssertionError("no flush started after another")
        # a commit beside the flush in flight that writes its meta into the
        # slot of the flush's commit fails the run
        for n, e in enumerate(events):
            if e.third:
                start = max(x.index for x in events[:n] if x.start)
                (fslot, _), = powerloss.metas_of(events[start], spp)
                (slot, m), = powerloss.metas_of(e, spp)
                tampered = raw(events)
                del tampered[n].delta[slot * spp]
                tampered[n].delta[fslot * spp] = m
                got = annotate_problems(tampered, k)
                assert any("the commit a flush in flight makes durable" in p for p in got), got
                break
        else:
            raise AssertionError("no commit beside a flush in flight")
print("RECORDER-OK")
"""
    assert_child_ok(*run_python(code, args=dict(tools=os.path.join(REPO_ROOT, "tools"),
                                                dir=str(tmp_path)), timeout=300), marker="RECORDER-OK")


FLIGHT = r"""
import io, sys
sys.path.insert(0, ARGS["tools"])
import powerloss
spp = 4096 // 512
for seed, k, kind in ARGS["runs"]:
    events, states, problems, plan = powerloss.record("pread", False, seed, 60, flush_mode=k)
    assert not problems, problems
    assert plan["flush_mode"] == k
    buf = bytearray()
    third = 0
    for e in events:
        powerloss.apply_delta(buf, e.new_len, e.delta)
        if not e.third:
            continue
        # a commit made while the flush of commit F is in flight (the engine
        # has not taken up its end): its meta went to the third slot, and
        # the slots hold F, the durable commit D its meta names and the
        # commit (a pages-first commit names itself; a commit that synced
        # itself in the window names itself, and the next ones name it)
        (slot, m), = powerloss.metas_of(e, spp)
        txnid, durable = powerloss.meta_field(m, powerloss.M_TXNID), powerloss.meta_field(m, powerloss.M_DURABLE)
        held = powerloss.slot_txnids(buf, 4096)
        assert held[slot] == txnid
        if durable != txnid:
            assert sorted(held) == sorted({durable, e.inflight, txnid}), (held, durable, e.inflight)
            assert durable != e.inflight and max(durable, e.inflight) < txnid, (durable, e.inflight, txnid)
        else:
            assert e.inflight in held and held.index(e.inflight) != slot, (held, e.inflight)
        third += 1
    assert third >= 1, k
    # the images: some in a flush's window, the flush completed or not
    spec = dict(config="pread", sync=False, seed=seed, commits=60, losses=250, page_size=4096, flush_mode=k)
    res = powerloss.run_batch(spec, out=io.StringIO())
    assert not res["failures"] and not res["problems"], powerloss.summarize([res])
    fl = res["flight"]
    assert fl["commits beside a flush in flight"] == third, fl
    assert fl["images in a flush's window, completed"] >= 5, fl
    assert fl["images in a flush's window, not completed"] >= 5, fl
    assert kind in res["events"], res["events"]
    print(k, dict(fl), third)
print("FLIGHT-OK")
"""


def test_a_flush_in_flight():
    """Format version 3's new path (native/flush.c): a sync=False commit due
    to flush starts a flush of itself (among them one for the pages held for
    the durable commit, which a transaction short of pages would otherwise
    flush and wait for, make_room); the recording runs the fdatasync at once (``kvm_set_flush_mode(k)``) and
    the engine takes up its end at the k-th write transaction's begin.
    With k = 3 and 2: commits made in between wrote their metas to the
    third slot, leaving the flush's commit and the durable one in theirs;
    the images taken in such a window -- the flush completed, or, as a
    flush in the background may not have, not -- all verify; commits start
    flushes for the pages held (seed 7513), and with 512 KiB values churned
    a transaction flushes and waits to reuse pages (seed 1568; make_room,
    after taking up its own flush's end)."""
    runs = [(7513, 3, "commit/held pages"), (1568, 2, "flush/in a transaction")]
    rc, out, err = run_python(FLIGHT, args=dict(tools=os.path.join(REPO_ROOT, "tools"), runs=runs), timeout=300)
    assert_child_ok(rc, out, err, marker="FLIGHT-OK")


def test_oracle_rejects_a_state_outside_the_range(tmp_path):
    """The sync=False oracle is not vacuous: the same images verified
    against a range that leaves out the state they open to fail, as do
    sync=True images held to the other of the two states."""
    code = r'''
import io, sys
sys.path.insert(0, ARGS["tools"])
import powerloss
real = {True: powerloss.images_sync, False: powerloss.images_nosync}
COMMITS = 20
for sync in (True, False):
    n = [0]
    def shifted(*a, **kw):
        for img in real[sync](*a, **kw):
            if img.expect != "empty-or-error" and img.expect[1] < COMMITS:
                lo, hi, exact = img.expect
                img.expect = (hi + 1, hi + 1, True)     # a state no image can hold yet
                n[0] += 1
            yield img
    if sync:
        powerloss.images_sync = shifted
    else:
        powerloss.images_nosync = shifted
    spec = dict(config="pread", sync=sync, seed=11, commits=COMMITS, losses=40, page_size=4096)
    res = powerloss.run_batch(spec, out=io.StringIO())
    assert len(res["failures"]) == n[0] > 25, (sync, n, res["failures"][:3], res["outcomes"])
    assert all("expected the state after transaction" in f["error"] for f in res["failures"])
print("ORACLE-OK")
'''
    assert_child_ok(*run_python(code, args=dict(tools=os.path.join(REPO_ROOT, "tools")), timeout=300),
                    marker="ORACLE-OK")


def test_a_crashing_child_fails_its_batch_only():
    """An engine crash (here: abort() before image 7) fails the batch it
    hit, naming the image and the command that replays it; the batches
    after it in the same child run in a new one."""
    base = dict(config="pread", sync=False, commits=20, losses=12, page_size=4096)
    specs = [dict(base, seed=1), dict(base, seed=2, abort_at=7), dict(base, seed=3)]
    results = powerloss.run_child(specs)
    assert [r["spec"]["seed"] for r in results] == [1, 2, 3]
    assert not results[0]["failures"] and not results[2]["failures"], powerloss.summarize(results)
    assert results[0]["losses"] == results[2]["losses"] == 12
    (f,) = results[1]["failures"]
    assert f["image"] == 7 and "on image 7" in f["error"] and "--image 7" in f["replay"], f
    assert "--nosync" in f["replay"] and "--seed 2 " in f["replay"], f


def test_cli_counts_and_replay(tmp_path):
    """The CLI prints counts by configuration and mode; --image rebuilds one
    image of a run and verifies it alone."""
    tool = os.path.join(REPO_ROOT, "tools", "powerloss.py")
    p = subprocess.run([sys.executable, tool, "--losses", "40", "--nosync-losses", "30", "--seed", "3",
                        "--configs", "pread,mmap-reserve-wm"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "simulated power losses: 70 (sync=True 40, sync=False 30)" in p.stdout, p.stdout
    assert "pread            sync=True" in p.stdout and "failures: 0" in p.stdout, p.stdout
    assert "pread            sync=False" in p.stdout, p.stdout
    for nosync in ([], ["--nosync"]):
        keep = tmp_path / "image.kv"
        p = subprocess.run([sys.executable, tool, "--config", "mmap-reserve-wm", "--seed", "3",
                            "--commits", "30", "--image", "5", "--keep", str(keep)] + nosync,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "simulated power losses: 1" in p.stdout and keep.stat().st_size > 0, p.stdout
        keep.unlink()



@pytest.mark.parametrize("config,seed,image", [("pread", 4401564, 57), ("mmap-reserve-wm", 4401513, 30)])
def test_a_file_cut_at_close_and_grown_again(config, seed, image):
    """Regression (found by ``--long --seed 4401``): the last close cuts the
    file (native/env.c, trim_tail), the reopened writer grows it again, and
    a sync=False commit writes a page in the regrown part.  The recorder
    must count the cut-off sectors as written with zeros, or its "all"
    image rebuilt that page from the shadow's content before the cut, which
    no disk could hold, and the oracle failed a sound engine."""
    tool = os.path.join(REPO_ROOT, "tools", "powerloss.py")
    p = subprocess.run([sys.executable, tool, "--config", config, "--nosync", "--seed", str(seed),
                        "--commits", "150", "--page-size", "4096", "--image", str(image)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "failures: 0" in p.stdout, p.stdout + p.stderr


def test_give_back_after_a_durable_commit_is_no_protocol_break():
    """Regression (found by ``--long --seed 4403``): a sync=True commit
    publishes, then punches free runs out of the file (zeros after its one
    fdatasync); the recorder's protocol check must take those zeros for the
    give-back, not for a write the commit made after its sync."""
    tool = os.path.join(REPO_ROOT, "tools", "powerloss.py")
    p = subprocess.run([sys.executable, tool, "--config", "mmap-remap-wm", "--seed", "4403050",
                        "--commits", "150", "--page-size", "4096", "--image", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "simulator problems (broken write-protocol rules): 0" in p.stdout, \
        p.stdout + p.stderr

STALE_PAGE = r'''
import os, sys
import kvmap
from kvmap.checker import check

path = os.path.join(ARGS["dir"], "db.kv")
image = os.path.join(ARGS["dir"], "image.kv")
PS = 4096
db = kvmap.open(path, sync=False, sync_interval=None)
with db.transaction() as t:
    for i in range(200):
        t[b"key%03d" % i] = b"v" * 100
db.sync()
files, states, txnids, durable = [open(path, "rb").read()], [dict(db.items())], [db.stats()["txnid"]], [0]
for n in range(1, 16):
    with db.transaction() as t:              # one leaf each, two leaves apart
        t[b"key050"] = b"%03d" % n * 33
        t[b"key150"] = b"%03d" % n * 33
    files.append(open(path, "rb").read())
    states.append(dict(db.items()))
    txnids.append(db.stats()["txnid"])
    # the durable commit when commit n was written: what a crash before the
    # next flush falls back to
    durable.append(txnids.index(db.stats()["durable_txnid"]))
    if n % 3 == 0:
        db.sync()                            # the pages freed so far become reusable
db.close()

def leaf_with(buf, pg, key):
    page = buf[pg * PS:(pg + 1) * PS]
    return len(page) == PS and page[4] == 2 and key in page

found = 0
for n in range(2, len(files)):
    old, new = files[n - 1], files[n]
    for pg in range(3, len(new) // PS):
        # commit n reused page pg, which held an older version of key050's
        # leaf at the last flush, for the new one: a write-back that did not
        # reach pg leaves the older leaf, with a valid checksum
        if (new[pg * PS:(pg + 1) * PS] != old[pg * PS:(pg + 1) * PS]
                and leaf_with(new, pg, b"key050") and leaf_with(old, pg, b"key050")):
            d = durable[n]
            img = bytearray(new)
            img[pg * PS:(pg + 1) * PS] = old[pg * PS:(pg + 1) * PS]
            with open(image, "wb") as f:
                f.write(img)
            rep = check(image)
            db = kvmap.open(image)
            got = dict(db.items())
            fallback = db.stats()["meta_fallback"]
            db[b"after"] = b"the crash"          # and it takes new commits
            db.close()
            print("commit", n, "page", pg, "check ok", rep.ok, "fallback", fallback,
                  "a committed state", got in states, "the durable one (%d)" % d, got == states[d])
            assert rep.ok and fallback and got == states[d]
            assert check(image).ok
            found += 1
if not found:
    print("no such page found")
    sys.exit(1)
print("STALE-DETECTED", found)
'''


def test_nosync_stale_page_is_detected(tmp_path):
    """What sync=False could not promise in format version 1 and now does:
    a write-back that left one leaf page at an older version of itself
    (valid checksum, right page number, same keys) gave a file that opened
    and checked clean with contents no commit had.  In version 2 a page is
    not rewritten between two flushes, so the older version is the one the
    page held at the last flush; the commit records list every page with
    its checksum, so open sees that the newest commits did not land and
    falls back to the last flush (the durable commit): a committed state,
    with a clean check."""
    rc, out, err = run_python(STALE_PAGE, args=dict(dir=str(tmp_path)))
    assert_child_ok(rc, out, err, marker="STALE-DETECTED")
