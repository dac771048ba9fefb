"""Power-loss images where a meta page is torn or missing (tools/powerloss.py).

A power loss during the meta write of commit T can leave the meta's sector
torn (the meta is 128 bytes of a 512-byte sector); a power loss while a new
file is created can leave any of its three metas unwritten; with
``sync=False`` a meta slot written by several commits since the last flush
can hold any of them or be torn between two -- the third slot too, which
the commits made beside a flush in flight write (format version 3); close()
seals the newest meta into another slot, and that write can be torn too.
FORMAT.md §2: a meta whose checksum fails is simply not a candidate: it was
torn by a crash, its commit never completed, and open uses another meta.
The crash oracle also demands a clean ``kvmap.check`` on such images (the
checker notes a torn meta instead of reporting it as damage).

The images are chosen from a recorded run by what they hold, not by number
(numbers move whenever the engine's write pattern changes), and each is
replayed with the command a failure report prints.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, assert_child_ok, run_python

TOOL = os.path.join(REPO_ROOT, "tools", "powerloss.py")
CONFIG, COMMITS = "mmap-reserve", 60
# sync: pages-first commits too; nosync: several commits per flush; flight:
# commits beside flushes in flight (sync=False too)
SEED = {"sync": 1001, "nosync": 1503, "flight": 1500}

FIND = r'''
import json, re, sys
sys.path.insert(0, ARGS["tools"])
import powerloss
spp = 4096 // 512
found = {}
for sync, seed in (("sync", ARGS["seed_sync"]), ("nosync", ARGS["seed_nosync"]), ("flight", ARGS["seed_flight"])):
    events, states, problems, plan = powerloss.record(ARGS["config"], sync == "sync", seed, ARGS["commits"])
    assert not problems, problems
    gen = powerloss.images_sync if sync == "sync" else powerloss.images_nosync
    third = {e.index: powerloss.metas_of(e, spp)[0][0] for e in events if e.third}
    for img in gen(events, states, seed, 0, 3000, 4096):
        e, d = img.point, img.data
        if sync == "sync":
            if img.mode.startswith("create:") and not any(d[:512]) and len(d) > 4096 and \
                    d[4096:4608] == e.delta.get(spp):
                kind = "create: only meta 1's sector landed (meta 0 reads as zeros)"
            elif img.mode.startswith("seal:meta-torn"):
                kind = "close()'s seal torn (%s)" % img.mode[5:]
            elif e.kind == "commit" and img.mode.endswith("+meta-torn-words") and "meta lost" in img.note:
                kind = "commit: meta half written (8-byte words), the previous commit's other meta stands"
            elif e.kind == "commit" and img.mode.endswith("+meta-torn-prefix") and "meta lost" in img.note:
                kind = "commit: meta written up to a byte inside it"
            elif e.kind == "commit" and img.mode.startswith("all+meta-all") and img.expect[1] == e.txn:
                kind = "commit: everything landed"
            else:
                continue
        elif sync == "flight":
            if img.window and any(i <= e.index and e.bg is not None and i > e.bg and
                                  re.search(r"meta %d torn \(meta-torn-" % slot, img.note)
                                  for i, slot in third.items()):
                kind = "sync=False: the third slot torn beside a flush in flight (%s)" % img.window
            else:
                continue
        else:
            if "torn (meta-torn-words) between versions" in img.note and img.expect[0] < img.expect[1]:
                kind = "sync=False: a meta slot torn (8-byte words) between two unsynced commits' metas"
            elif "torn (meta-torn-prefix) between versions" in img.note and img.expect[0] < img.expect[1]:
                kind = "sync=False: a meta slot torn (prefix) between two unsynced commits' metas"
            elif img.mode == "pages" and re.search(r"meta \d version 0 of ([2-9]|\d\d)", img.note):
                kind = "sync=False: a meta slot two commits wrote since the last flush as it was then"
            else:
                continue
        found.setdefault(kind, [sync, img.k])
print("FOUND " + json.dumps(found))
'''


def _find():
    rc, out, err = run_python(FIND, args=dict(tools=os.path.join(REPO_ROOT, "tools"), config=CONFIG,
                                              commits=COMMITS, seed_sync=SEED["sync"], seed_nosync=SEED["nosync"],
                                              seed_flight=SEED["flight"]), timeout=300)
    assert_child_ok(rc, out, err, "FOUND")
    return json.loads(out.split("FOUND ", 1)[1])


KINDS = [
    "create: only meta 1's sector landed (meta 0 reads as zeros)",
    "close()'s seal torn (meta-torn-words)",
    "close()'s seal torn (meta-torn-prefix)",
    "commit: meta half written (8-byte words), the previous commit's other meta stands",
    "commit: meta written up to a byte inside it",
    "commit: everything landed",
    "sync=False: a meta slot torn (8-byte words) between two unsynced commits' metas",
    "sync=False: a meta slot torn (prefix) between two unsynced commits' metas",
    "sync=False: a meta slot two commits wrote since the last flush as it was then",
    "sync=False: the third slot torn beside a flush in flight (completed)",
    "sync=False: the third slot torn beside a flush in flight (not completed)",
]


@pytest.fixture(scope="module")
def found():
    return _find()


@pytest.mark.parametrize("kind", KINDS)
def test_torn_meta_image(found, kind):
    assert kind in found, "no such image in the first 3000 of the run: %s (found: %s)" % (kind, sorted(found))
    mode, k = found[kind]
    cmd = [sys.executable, TOOL, "--config", CONFIG, "--seed", str(SEED[mode]),
           "--commits", str(COMMITS), "--image", str(k)] + (["--nosync"] if mode != "sync" else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "%s (image %d)\n%s%s" % (kind, k, p.stdout, p.stderr)
    assert "simulated power losses: 1 " in p.stdout and "failures: 0" in p.stdout, p.stdout


def test_torn_meta_batch():
    """A whole sync=True batch per configuration, with every mode, in-sector
    meta tears included."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import powerloss
    specs = powerloss.plan(300, 20261128, configs=["mmap-reserve", "mmap-reserve-wm", "pread"], nosync=0)
    results = powerloss.run_specs(specs, jobs=2)
    assert not any(r["failures"] or r["problems"] for r in results), powerloss.summarize(results)
    assert sum(r["losses"] for r in results) == 300
