"""Simulated power loss: the disk images a real crash could leave, verified.

Usage::

    python tools/powerloss.py [--losses N] [--long] [--seed S] [--jobs J]
                              [--configs ID,ID]
    python tools/powerloss.py --config mmap-reserve-wm --seed S --commits N \\
        --image K [--nosync] [--keep FILE]          # replay one image

It prints the images verified by configuration, mode, file length and
outcome, then every failure with the command that replays it; exit status 1
if any image failed.

How it works
------------

**Recording.**  A child process runs ``crashkit.Workload(seed)`` on a fresh
database with one engine configuration, with the C core's fdatasync replaced
by a hook (``lib.kvm_set_sync_hook``).  The simulator keeps a *shadow*: the
bytes that are durable on the simulated disk.  At every hooked fdatasync it
reads the file through the engine's own descriptor (``os.pread``; with
``writemap=True`` this sees the pages stored through the shared mapping,
which a log of ``pwrite`` calls would not) and records the 512-byte sectors
that differ from the shadow: the writes since the last completed sync (a
superset of any prefix of them), and the file length before and after.  Then
the shadow becomes the file.  A commit makes two such *sync points*: "data"
(its pages are written, its meta is not) and "meta" (its meta has been
written); creating the file makes a "create" point.  With ``sync=False``
there is no fdatasync, so the simulator diffs the file after every commit
instead: each commit is one "commit" delta (its pages and its meta).

**Crash images.**  Image k of a run is a pure function of (run, k): an RNG
seeded with ``(seed, k)`` picks a sync point and a mode, and the image is
the shadow at that point plus the chosen subset of the sectors written since:

* ``none`` (drop every unsynced write), ``all``, ``pages`` (a random subset
  of the written pages), ``reorder`` (the pages in a random order, cut at a
  random point, the page at the cut torn), ``torn`` (each page written,
  dropped, or torn: a random subset of its sectors), ``sectors`` (all
  written sectors in a random order, cut at a random point);
* at a "meta" point: ``meta-none``, ``meta-all``, and a tear *inside* the
  meta's sector (the meta is 128 bytes): ``meta-torn-prefix`` (the first k
  bytes new, the rest old) and ``meta-torn-words`` (a random subset of its
  8-byte words new);
* when the file grew since the last sync, the image has the old length or
  the new one (the grown part reads as zeros where nothing landed).

**Verification** (``sync=True``, the durability claim): ``crashkit.verify``
runs ``kvmap.check`` on the image, opens it with the run's configuration,
compares the contents with the model, runs ``db._check()`` and checks again.
The expected state is exact: at a "data" point of transaction i (and at a
"meta" point whose meta sector did not land whole) the state after i-1; at a
"meta" point whose meta landed, the state after i.  At a "create" point
nothing was acknowledged: the image must open empty or raise a
``kvmap.Error``.

**sync=False.**  Nothing is ever synced after creation, so the kernel may
have written back any dirty page, in any order, at any time.  Modes:

* ``nosync-ordered``: the file exactly as after commit j (write-back
  happened to follow commit order).  Must open to the state after j with a
  clean check.
* ``nosync-last``: as after commit j plus any subset of commit j+1's
  writes (the data modes above).  If the new meta did not land whole, the
  image must open to the state after j with a clean check; if it did, only
  the weak promise below is checked.
* ``nosync-mixed``: as after commit d, then every page written since holds
  any one of the versions it had at a commit boundary since d (or is torn
  between them), with any of the file lengths since d.  Weak promise only.

The weak promise (what kvmap guarantees for ``sync=False`` after a power
loss): ``kvmap.check`` returns a report or raises ``CheckUnreadable``; a
read-only open and a writable one, reading every item, and one new commit
either work or raise a ``kvmap.Error`` subclass; never a crash, a hang, or
any other exception.  The contents are *not* promised to be a committed
state: a page left at an older version of itself has a valid checksum, so
an image can open, read and check clean with contents that no commit ever
had.  The report counts such outcomes (``mixed...``: no commit's contents;
``state-older``: a commit older than one that was wholly on the disk) and
prints a command that replays one of each (docs/ARCHITECTURE.md, "Crash
testing: simulated power loss").

Every batch of images runs in a child process (``--batch``), which prints
``IMG k`` before verifying image k, so an engine crash fails the batch and
names the image; the parent prints the command that replays it.
"""

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import crashkit  # noqa: E402

SECTOR = 512
META_SIZE = 128
IMAGE_TIMEOUT = 60          # seconds per image before it counts as a hang

# configurations, with the ids tests/conftest.py uses
CONFIGS = {}
for _g in ("reserve", "mremap", "remap"):
    for _wm in (False, True):
        CONFIGS["mmap-%s%s" % (_g, "-wm" if _wm else "")] = dict(backend="mmap", growth=_g, writemap=_wm)
CONFIGS["pread"] = dict(backend="pread")

DATA_MODES = ("none", "all", "pages", "reorder", "torn", "sectors")
META_MODES = ("meta-none", "meta-all", "meta-torn-prefix", "meta-torn-words")
NOSYNC_MODES = ("nosync-ordered", "nosync-last", "nosync-mixed")


# ---------------------------------------------------------------- recording

class SyncPoint:
    """Writes since the last durable point: ``delta`` maps sector number to
    its new 512 bytes; the file was ``old_len`` bytes long at the last
    durable point and is ``new_len`` now.  ``txn`` is the workload
    transaction being committed (0 for the creation of the file)."""

    __slots__ = ("index", "txn", "phase", "old_len", "new_len", "delta")

    def __init__(self, index, txn, phase, old_len, new_len, delta):
        self.index, self.txn, self.phase = index, txn, phase
        self.old_len, self.new_len, self.delta = old_len, new_len, delta

    def __repr__(self):
        return "SyncPoint(#%d txn %d %s, %d -> %d bytes, %d sectors)" % (
            self.index, self.txn, self.phase, self.old_len, self.new_len, len(self.delta))


def _read_all(fd, size):
    parts, off = [], 0
    while off < size:
        b = os.pread(fd, min(size - off, 1 << 30), off)
        if not b:
            raise OSError("short read at %d of %d bytes" % (off, size))
        parts.append(b)
        off += len(b)
    return b"".join(parts)


def diff_sectors(old, new, page_size):
    """Sectors of ``new`` that differ from ``old`` (zero-extended, as a
    grown file reads): {sector number: 512 bytes}."""
    delta = {}
    n = len(new)
    chunk = page_size * 16
    zeros = bytes(chunk)
    for c in range(0, n, chunk):
        a = old[c:c + chunk]
        b = new[c:c + chunk]
        if len(a) < len(b):
            a = a + zeros[:len(b) - len(a)]
        if a == b:
            continue
        for s in range(c, c + len(b), SECTOR):
            o = s - c
            if a[o:o + SECTOR] != b[o:o + SECTOR]:
                delta[s // SECTOR] = b[o:o + SECTOR]
    return delta


def apply_delta(buf, length, sectors):
    """Set ``buf`` (a bytearray) to ``length`` bytes (zero-extending) and
    store the given {sector: bytes} that lie inside it."""
    if len(buf) > length:
        del buf[length:]
    elif len(buf) < length:
        buf.extend(bytes(length - len(buf)))
    for s, data in sectors.items():
        o = s * SECTOR
        if o + SECTOR <= length:
            buf[o:o + SECTOR] = data


class Recorder:
    """The sync hook and the shadow durable image (see the module doc)."""

    def __init__(self, page_size):
        self.page_size = page_size
        self.shadow = b""
        self.points = []
        self.txn = 0
        self.phase_count = 0
        self.error = None

    def capture(self, fd, phase):
        size = os.fstat(fd).st_size
        cur = _read_all(fd, size)
        delta = diff_sectors(self.shadow, cur, self.page_size)
        self.points.append(SyncPoint(len(self.points), self.txn, phase, len(self.shadow), size, delta))
        self.shadow = cur

    def hook(self, fd):
        try:
            if self.txn == 0:
                phase = "create"
            else:
                phase = "data" if self.phase_count % 2 == 0 else "meta"
                self.phase_count += 1
            self.capture(fd, phase)
        except BaseException as e:      # a hook must not raise into C
            self.error = self.error or e
        return 0


class States:
    """The workload's model after every transaction 0..n, precomputed (a
    ``crashkit.Workload`` whose ``model(i)`` is a lookup)."""

    def __init__(self, seed, n):
        self.workload = crashkit.Workload(seed)
        self.states = [{}]
        m = {}
        for i in range(1, n + 1):
            crashkit.apply_ops(m, self.workload.ops(i))
            self.states.append(dict(m))
        self._index = None

    def model(self, n):
        return dict(self.states[n])

    def ops(self, i):
        return self.workload.ops(i)

    def which(self, contents):
        """The transaction numbers whose state equals ``contents``."""
        if self._index is None:
            self._index = {}
            for i, s in enumerate(self.states):
                self._index.setdefault(_digest(s), []).append(i)
        return self._index.get(_digest(contents), [])


def _digest(d):
    h = hashlib.sha1()
    for k in sorted(d):
        v = d[k]
        h.update(b"%d:%d:" % (len(k), len(v)))
        h.update(k)
        h.update(v)
    return h.digest()


def record(cfg_id, sync, seed, commits, page_size=4096, directory=None):
    """Run ``commits`` workload transactions on a fresh database with the
    sync hook; return (points, states, problems).  ``problems`` lists
    anything about the write order the simulator relies on that did not
    hold (the engine must write a commit's pages, sync, its meta, sync)."""
    import kvmap
    from kvmap._lib import ffi, lib

    states = States(seed, commits)
    rec = Recorder(page_size)
    cb = ffi.callback("int(int)", rec.hook)
    own_dir = directory is None
    directory = directory or tempfile.mkdtemp(prefix="kvmap-powerloss-")
    path = crashkit.scratch_path(directory, "recorded.kv")
    problems = []
    lib.kvm_set_sync_hook(cb)
    try:
        db = kvmap.open(path, sync=sync, page_size=page_size, **CONFIGS[cfg_id])
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                for i in range(1, commits + 1):
                    rec.txn = i
                    before = len(rec.points)
                    crashkit.run_txn(db, states.ops(i))
                    made = len(rec.points) - before
                    if sync:
                        if made not in (0, 2) or (made == 0 and states.states[i] != states.states[i - 1]):
                            problems.append("transaction %d made %d syncs" % (i, made))
                    else:
                        if made:
                            problems.append("transaction %d synced with sync=False" % i)
                        rec.capture(fd, "commit")
            finally:
                os.close(fd)
        finally:
            db.close()
    finally:
        lib.kvm_set_sync_hook(ffi.NULL)
        if own_dir:
            try:
                os.unlink(path)
                os.rmdir(directory)
            except OSError:
                pass
    if rec.error is not None:
        raise rec.error
    spp = page_size // SECTOR
    meta_sectors = {0, spp}
    for p in rec.points:
        touched = set(p.delta)
        if p.phase == "data" and min(touched, default=2 * spp) < 2 * spp:
            problems.append("%r: the data sync includes a meta page" % p)
        if p.phase == "meta" and not (touched and touched <= meta_sectors and len(touched) == 1):
            problems.append("%r: the meta sync is not exactly one meta sector" % p)
    if not rec.points or rec.points[0].phase != "create":
        problems.append("creating the file made no sync")
    return rec.points, states, problems


# ---------------------------------------------------------------- images

class Image:
    """One crash image: its bytes, how it was made, and what it must open to
    (``expect``: a transaction number, "empty-or-error" or "weak").
    ``span``: (base, top): every write up to transaction ``base`` is in the
    image, none after ``top`` (for classifying weak outcomes)."""

    __slots__ = ("k", "point", "mode", "length", "data", "expect", "note", "span")

    def __init__(self, k, point, mode, length, data, expect, note="", span=(0, 0)):
        self.k, self.point, self.mode, self.length = k, point, mode, length
        self.data, self.expect, self.note, self.span = data, expect, note, span


def _pages_of(delta, spp):
    pages = {}
    for s in delta:
        pages.setdefault(s // spp, []).append(s)
    return pages


def _tear(rng, sectors):
    """A random proper, non-empty subset of a page's written sectors (all of
    them when there is only one)."""
    if len(sectors) == 1:
        return list(sectors)
    k = rng.randint(1, len(sectors) - 1)
    return rng.sample(sorted(sectors), k)


def choose_sectors(rng, mode, delta, spp):
    """The subset of ``delta``'s sectors that reached the disk, per mode."""
    if mode == "none":
        return []
    if mode == "all":
        return list(delta)
    pages = _pages_of(delta, spp)
    order = sorted(pages)
    if mode == "pages":
        q = rng.random()
        return [s for p in order if rng.random() < q for s in pages[p]]
    if mode == "reorder":
        rng.shuffle(order)
        cut = rng.randint(0, len(order))
        out = [s for p in order[:cut] for s in pages[p]]
        if cut < len(order):
            out += _tear(rng, pages[order[cut]])
        return out
    if mode == "torn":
        out = []
        for p in order:
            r = rng.random()
            if r < 0.4:
                out += pages[p]
            elif r < 0.7:
                out += _tear(rng, pages[p])
        return out
    if mode == "sectors":
        secs = sorted(delta)
        rng.shuffle(secs)
        return secs[:rng.randint(0, len(secs))]
    raise ValueError(mode)


def tear_meta(rng, mode, old, new):
    """The meta sector as the crash left it (old and new are 512 bytes)."""
    if mode == "meta-none":
        return old
    if mode == "meta-all":
        return new
    if mode == "meta-torn-prefix":
        k = rng.randint(1, META_SIZE - 1)
        return new[:k] + old[k:]
    if mode == "meta-torn-words":
        b = bytearray(old)
        for w in range(0, META_SIZE, 8):
            if rng.random() < 0.5:
                b[w:w + 8] = new[w:w + 8]
        return bytes(b)
    raise ValueError(mode)


def _length(rng, old_len, new_len):
    if old_len == new_len:
        return new_len, "same-length"
    return (old_len, "old-length") if rng.random() < 0.5 else (new_len, "new-length")


def plan_sync(points, seed, first, last):
    """For sync=True: (k, point index, rng) of images first..last-1.  A
    fifth of the "data" images are at a point where the file grew, so both
    lengths are well covered."""
    create = [p.index for p in points if p.phase == "create"]
    data = [p.index for p in points if p.phase == "data"]
    grown = [p.index for p in points if p.phase == "data" and p.new_len != p.old_len]
    meta = [p.index for p in points if p.phase == "meta"]
    out = []
    for k in range(first, last):
        rng = random.Random("powerloss:%s:%d" % (seed, k))
        r = rng.random()
        if r < 0.03 or not data:
            pool = create
        elif r < 0.6:
            pool = grown if grown and rng.random() < 0.2 else data
        else:
            pool = meta
        out.append((k, rng.choice(pool), rng))
    return out


def images_sync(points, states, seed, first, last, page_size):
    """Yield the sync=True crash images first..last-1 (in sync-point order)."""
    spp = page_size // SECTOR
    meta_modes = META_MODES
    data_modes = DATA_MODES
    plans = sorted(plan_sync(points, seed, first, last), key=lambda t: (t[1], t[0]))
    shadow = bytearray()
    at = 0                          # points[:at] are applied to shadow
    for k, pi, rng in plans:
        while at < pi:
            apply_delta(shadow, points[at].new_len, points[at].delta)
            at += 1
        p = points[pi]
        if p.phase == "meta":
            mode = rng.choice(meta_modes)
            (s, new), = p.delta.items()
            old = bytes(shadow[s * SECTOR:(s + 1) * SECTOR])
            got = tear_meta(rng, mode, old, new)
            img = bytearray(shadow)
            img[s * SECTOR:(s + 1) * SECTOR] = got
            landed = got[:META_SIZE] == new[:META_SIZE]
            expect = p.txn if landed else p.txn - 1
            yield Image(k, p, mode, "same-length", bytes(img), expect,
                        "meta landed" if landed else "meta lost or torn")
            continue
        mode = rng.choice(DATA_MODES if p.phase != "create" else data_modes)
        length, lname = _length(rng, p.old_len, p.new_len)
        chosen = choose_sectors(rng, mode, p.delta, spp)
        img = bytearray(shadow)
        apply_delta(img, length, {s: p.delta[s] for s in chosen})
        expect = "empty-or-error" if p.phase == "create" else p.txn - 1
        yield Image(k, p, mode, lname, bytes(img), expect,
                    "%d of %d sectors" % (len(chosen), len(p.delta)))


def images_nosync(points, states, seed, first, last, page_size):
    """Yield the sync=False crash images first..last-1 (see the module doc).
    ``points`` are the creation point and one "commit" delta per
    transaction 1..n, so the file after transaction j is points 0..j."""
    spp = page_size // SECTOR
    n = len(points) - 1
    # lengths and full files after every transaction, rebuilt on demand
    lens = [p.new_len for p in points]

    def file_after(j):
        buf = bytearray()
        for p in points[:j + 1]:
            apply_delta(buf, p.new_len, p.delta)
        return buf

    for k in range(first, last):
        rng = random.Random("powerloss:%s:%d" % (seed, k))
        mode = rng.choices(NOSYNC_MODES, (1, 4, 3))[0]
        if mode == "nosync-ordered":
            j = rng.randint(0, n)
            p = points[j]
            yield Image(k, p, mode, "same-length", bytes(file_after(j)), j, "file after transaction %d" % j)
            continue
        if mode == "nosync-last":
            j = rng.randint(0, n - 1)
            p = points[j + 1]
            img = file_after(j)
            sub = rng.choice(DATA_MODES)
            length, lname = _length(rng, p.old_len, p.new_len)
            chosen = choose_sectors(rng, sub, p.delta, spp)
            apply_delta(img, length, {s: p.delta[s] for s in chosen})
            metas = [s for s in p.delta if s in (0, spp)]
            landed = all(img[s * SECTOR:s * SECTOR + META_SIZE] == p.delta[s][:META_SIZE] for s in metas)
            expect = "weak" if (metas and landed) else j
            yield Image(k, p, "%s/%s" % (mode, sub), lname, bytes(img), expect,
                        "after %d, %d of %d sectors of %d; %s" % (
                            j, len(chosen), len(p.delta), j + 1,
                            "its meta landed" if expect == "weak" else "its meta did not land"),
                        span=(j, j + 1))
            continue
        # nosync-mixed: mostly a recent base (the kernel writes dirty pages
        # back within about 30 s), sometimes any
        d = rng.randint(max(0, n - 4) if rng.random() < 0.7 else 0, n - 1)
        base = file_after(d)
        versions = {}                   # page -> [bytes of each version since d]
        cur = bytearray(base)
        ps = page_size
        for p in points[d + 1:]:
            touched = {s // spp for s in p.delta}
            for pg in touched:
                if pg not in versions:
                    old = bytes(cur[pg * ps:(pg + 1) * ps])
                    versions[pg] = [old + bytes(ps - len(old))]
            apply_delta(cur, p.new_len, p.delta)
            for pg in touched:
                versions[pg].append(bytes(cur[pg * ps:(pg + 1) * ps]))
        length = rng.choice(sorted(set(lens[d:])))
        img = bytearray(base)
        apply_delta(img, length, {})
        torn = 0
        for pg, vs in versions.items():
            if (pg + 1) * ps > length:
                continue
            if rng.random() < 0.2:
                torn += 1
                page = b"".join(rng.choice(vs)[i * SECTOR:(i + 1) * SECTOR] for i in range(spp))
            else:
                page = rng.choice(vs)
            img[pg * ps:(pg + 1) * ps] = page
        yield Image(k, points[d], mode, "length %d" % length, bytes(img), "weak",
                    "base after %d, %d pages with several versions, %d torn" % (d, len(versions), torn),
                    span=(d, n))


# ---------------------------------------------------------------- verification

class Hang(Exception):
    pass


def _on_alarm(sig, frame):
    raise Hang("image took longer than %ds" % IMAGE_TIMEOUT)


def _contents(db):
    """Every item (iteration) and the first 50 again by key: (contents,
    anomaly).  On a tree that mixes page versions, iteration can return
    keys out of order or twice, and a lookup can find another version than
    iteration did; that is silently wrong data, which the weak promise
    allows, so it is reported ("unordered", "get-differs"), not raised."""
    items = list(db.items())
    contents = dict(items)
    anomaly = ""
    if any(items[i][0] >= items[i + 1][0] for i in range(len(items) - 1)):
        anomaly = "unordered"
    elif any(db[key] != contents[key] for key in list(contents)[:50]):
        anomaly = "get-differs"
    return contents, anomaly


def probe(path, cfg, states):
    """The weak promise: check; open read-only and read everything; open
    writable, read everything and commit once.  Every step works or raises a
    kvmap.Error (CheckUnreadable for the checker); anything else propagates.
    Returns a dict: ``check`` ("ok", "problems" or "unreadable"), ``ro``
    (the read-only pass: the states its contents equal, or the class of
    its kvmap.Error),
    ``error`` (writable pass: the step and class of a kvmap.Error, or None),
    ``states`` (transactions whose state the contents equal, when read),
    ``fallback`` (open used the older meta)."""
    import kvmap
    from kvmap.checker import CheckUnreadable, check

    info = dict(check="unreadable", ro=None, error=None, states=None, fallback=False, anomaly="")
    try:
        info["check"] = "ok" if check(path).ok else "problems"
    except CheckUnreadable:
        pass
    try:
        db = kvmap.open(path, readonly=True, **cfg)
        try:
            contents, anomaly = _contents(db)
            info["ro"] = [] if anomaly else states.which(contents)
        finally:
            db.close()
    except kvmap.Error as e:
        info["ro"] = type(e).__name__
    try:
        db = kvmap.open(path, **cfg)
    except kvmap.Error as e:
        info["error"] = "open-error:" + type(e).__name__
        return info
    step = "read-error:"
    try:
        contents, info["anomaly"] = _contents(db)
        info["fallback"] = db.stats()["meta_fallback"]
        info["states"] = [] if info["anomaly"] else states.which(contents)
        step = "write-error:"
        db[b"powerloss-probe"] = b"after the crash"
        if db[b"powerloss-probe"] != b"after the crash":
            raise AssertionError("a commit after the crash reads back wrong")
    except kvmap.Error as e:
        info["error"] = step + type(e).__name__
    finally:
        db.close()
    return info


def _which(got, span):
    base, top = span
    if not got:
        return "mixed"
    return ("state-top" if top in got else "state-base" if base in got
            else "state-between" if any(base < g < top for g in got) else "state-older")


def classify(info, span):
    """An outcome class for the report (sync=False and creation images).
    With ``span = (base, top)``: the contents are the state after ``top``
    (state-top), after ``base`` (state-base), after a transaction between
    them, or after one before ``base`` (state-older: a commit that was
    wholly on the disk is lost); or no committed state at all (mixed)."""
    if info["error"] and info["states"] is None:
        return info["error"]
    if info["states"]:
        tag = _which(info["states"], span) + ("-fallback" if info["fallback"] else "")
    else:
        # the engine returned contents that no commit ever had, without an
        # error; the checker may flag the file (-check-problems) or not
        tag = "mixed" + ("-" + info["anomaly"] if info["anomaly"] else "")
    if info["check"] != "ok" or tag.startswith("mixed"):
        tag += "-check-" + info["check"]
    if info["error"]:
        tag += "-" + info["error"]
    return tag


def verify_image(img, path, cfg, states):
    """Returns (outcome, error): error is None or the text of a failure."""
    import kvmap
    with open(path, "wb") as f:
        f.write(img.data)
    try:
        if img.expect == "weak":
            info = probe(path, cfg, states)
            ro = info["ro"] if isinstance(info["ro"], str) else _which(info["ro"], img.span)
            return classify(info, img.span) + " | read-only: " + ro, None
        if img.expect == "empty-or-error":
            # nothing was acknowledged: an empty database (a file of length
            # zero, or any leftover of creation, is initialised by the
            # engine; the checker finds no database in it) or a clear error
            info = probe(path, cfg, states)
            out = "create-" + classify(info, (0, 0))
            if info["error"] and info["error"].startswith("open-error"):
                return out, None
            if info["error"] is None and 0 in (info["states"] or ()) and (
                    info["check"] == "ok" or (info["check"] == "unreadable" and crashkit.creation_leftover(
                        img.data, cfg.get("page_size", 4096)))):
                return out, None
            return out, "a creation image gave " + out
        try:
            crashkit.verify(path, states, img.expect, open_kw=cfg, allow_next=False)
            return "exact", None
        except crashkit.CrashCheckFailed as e:
            got = _which_state(path, cfg, states)
            return "failed", "expected the state after transaction %s: %s (%s)" % (img.expect, e, got)
        except kvmap.Error as e:
            return "failed", "expected the state after transaction %s: %s: %s" % (
                img.expect, type(e).__name__, e)
    finally:
        os.unlink(path)


def _which_state(path, cfg, states):
    import kvmap
    try:
        db = kvmap.open(path, **cfg)
        try:
            got = states.which(dict(db.items()))
        finally:
            db.close()
        return "the file holds the state after transaction(s) %s" % got if got else "no committed state"
    except Exception as e:      # diagnostics only
        return "reopening: %s: %s" % (type(e).__name__, e)


def run_batch(spec, out=None, only=None, keep=None):
    """Record one run and verify its images (this process).  ``spec``:
    config, sync, seed, commits, losses, page_size.  Returns a result dict
    with counts and failures.  ``only``: verify image ``only`` alone;
    ``keep``: also copy each image verified to that path."""
    out = out or sys.stdout
    cfg = dict(CONFIGS[spec["config"]])
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="kvmap-powerloss-")
    points, states, problems = record(spec["config"], spec["sync"], spec["seed"], spec["commits"],
                                      spec["page_size"], directory=tmp)
    first, last = (only, only + 1) if only is not None else (0, spec["losses"])
    gen = images_sync if spec["sync"] else images_nosync
    res = dict(spec=spec, modes=Counter(), lengths=Counter(), outcomes=Counter(), failures=[],
               problems=problems, losses=0, examples={})
    path = os.path.join(tmp, "image.kv")
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for img in gen(points, states, spec["seed"], first, last, spec["page_size"]):
            print("IMG %d" % img.k, file=out, flush=True)
            if keep:
                with open(keep, "wb") as f:
                    f.write(img.data)
            signal.alarm(IMAGE_TIMEOUT)
            try:
                outcome, err = verify_image(img, path, cfg, states)
            except Exception as e:      # a non-kvmap exception, or a hang
                outcome, err = "exception", "%s: %s" % (type(e).__name__, e)
            finally:
                signal.alarm(0)
            res["losses"] += 1
            res["modes"][img.mode] += 1
            res["lengths"][img.length] += 1
            res["outcomes"][outcome] += 1
            res["examples"].setdefault(outcome, img.k)
            if err:
                res["failures"].append(dict(image=img.k, mode=img.mode, length=img.length,
                                            point=repr(img.point), note=img.note, error=err))
    finally:
        signal.signal(signal.SIGALRM, old)
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    res["seconds"] = round(time.time() - t0, 2)
    return res


# ---------------------------------------------------------------- driver

def plan(losses, seed, *, long=False, configs=None, nosync_share=0.25, per_batch=None):
    """Split ``losses`` images into batch specs over the configurations:
    ``1 - nosync_share`` of them with sync=True, the rest with sync=False."""
    configs = list(configs or CONFIGS)
    commits = 150 if long else 60
    per_batch = per_batch or (200 if long else 110)
    specs = []
    n_nosync = int(round(losses * nosync_share))
    for sync, total in ((True, losses - n_nosync), (False, n_nosync)):
        if total <= 0:
            continue
        each = -(-total // len(configs))
        for ci, c in enumerate(configs):
            left = min(each, total - ci * each)
            b = 0
            while left > 0:
                n = min(per_batch, left)
                specs.append(dict(config=c, sync=sync, seed=seed * 1000 + ci * 10 + b + (500 if not sync else 0),
                                  commits=commits, losses=n,
                                  page_size=8192 if (long and b % 3 == 2) else 4096))
                left -= n
                b += 1
    return specs


def replay_command(spec, image):
    return ("python tools/powerloss.py --config %s%s --seed %d --commits %d --page-size %d --image %d "
            "--keep /tmp/powerloss-image.kv" % (
                spec["config"], "" if spec["sync"] else " --nosync",
                spec["seed"], spec["commits"], spec["page_size"], image))


def run_child(spec, timeout=1800):
    """Run one batch in a child process; a crash or hang of the child
    becomes a failure naming the image it was on."""
    cmd = [sys.executable, os.path.abspath(__file__), "--batch", json.dumps(spec)]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = "TIMEOUT after %ss" % timeout
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            for f in res["failures"]:
                f["replay"] = replay_command(spec, f["image"])
            if rc != 0 and not res["failures"]:
                res["failures"].append(dict(error="child exited with %r" % rc, stderr=stderr[-3000:]))
            return res
    imgs = [int(l.split()[1]) for l in stdout.splitlines() if l.startswith("IMG ")]
    at = imgs[-1] if imgs else None
    return dict(spec=spec, modes={}, lengths={}, outcomes={}, examples={},
                losses=len(imgs) - 1 if imgs else 0,
                problems=[], seconds=None,
                failures=[dict(image=at, error="child died (returncode %r) %s" % (
                    rc, "while recording" if at is None else "on image %d" % at),
                    stderr=stderr[-3000:],
                    replay=replay_command(spec, at) if at is not None else
                    "python tools/powerloss.py --batch '%s'" % json.dumps(spec))])


def run_specs(specs, jobs=None):
    """Run the batches, ``jobs`` children at a time; list of results."""
    jobs = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(run_child, specs))


def summarize(results):
    """A table of counts by configuration and mode; failures last."""
    by_cfg = Counter()
    modes = Counter()
    lengths = Counter()
    outcomes = {True: Counter(), False: Counter()}
    failures = []
    problems = []
    examples = {}
    for r in results:
        for outcome, k in r.get("examples", {}).items():
            examples.setdefault(outcome, replay_command(r["spec"], k))
        s = r["spec"]
        key = "%-16s %s" % (s["config"], "sync=True " if s["sync"] else "sync=False")
        by_cfg[key] += r["losses"]
        modes.update(r["modes"])
        lengths.update(r["lengths"])
        outcomes[s["sync"]].update(r["outcomes"])
        failures += r["failures"]
        problems += ["%s seed %d: %s" % (s["config"], s["seed"], p) for p in r["problems"]]
    lines = ["simulated power losses: %d" % sum(by_cfg.values()), "", "by configuration:"]
    lines += ["  %-28s %6d" % (k, v) for k, v in sorted(by_cfg.items())]
    lines += ["", "by mode:"] + ["  %-28s %6d" % (k, v) for k, v in sorted(modes.items())]
    lines += ["", "by file length:"] + ["  %-28s %6d" % (k, v) for k, v in sorted(lengths.items())
                                        if not k.startswith("length ")]
    for sync in (True, False):
        if outcomes[sync]:
            lines += ["", "outcomes, sync=%s:" % sync]
            lines += ["  %-28s %6d" % (k, v) for k, v in sorted(outcomes[sync].items())]
    silent = sorted(o for o in examples if "mixed" in o.split(" | ")[0] or "state-older" in o)
    if silent:
        lines += ["", "an example of each outcome with silently wrong contents (sync=False):"]
        lines += ["  %s\n    %s" % (o, examples[o]) for o in silent]
    lines += ["", "simulator problems: %d" % len(problems)] + ["  " + p for p in problems[:20]]
    lines += ["failures: %d" % len(failures)]
    kinds = Counter()
    for f in failures:
        kinds["%s: %s" % (f.get("mode"), re.sub(r"\d+", "N", f["error"].split(" (the file holds")[0])[:150])] += 1
    lines += ["  %5d x %s" % (v, k) for k, v in kinds.most_common(10)]
    for f in failures[:20]:
        lines.append("  %s" % json.dumps({k: v for k, v in f.items() if k != "stderr"}))
        if f.get("stderr"):
            lines.append("    stderr: " + f["stderr"][-800:].replace("\n", "\n    "))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", type=int, help="images to verify (default 2,700; --long 13,400: a quarter of them sync=False)")
    ap.add_argument("--long", action="store_true", help="13,400 images (10,050 sync=True), 150-transaction runs, some 8 KiB pages")
    ap.add_argument("--seed", type=int, default=1, help="base seed (batch seeds derive from it)")
    ap.add_argument("--jobs", type=int, help="child processes at a time (default: CPUs)")
    ap.add_argument("--configs", help="comma-separated config ids (default: all: %s)" % ", ".join(CONFIGS))
    ap.add_argument("--config", help="with --image: the run's configuration")
    ap.add_argument("--nosync", action="store_true", help="with --image: the run used sync=False")
    ap.add_argument("--commits", type=int, default=60, help="with --image: transactions in the run")
    ap.add_argument("--page-size", type=int, default=4096, help="with --image: the run's page size")
    ap.add_argument("--image", type=int, help="replay one image of the run (--config, --seed, ...)")
    ap.add_argument("--keep", help="with --image: write the image to this file too")
    ap.add_argument("--batch", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.batch:
        res = run_batch(json.loads(a.batch))
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if a.image is not None:
        if a.config not in CONFIGS:
            ap.error("--image needs --config, one of: " + ", ".join(CONFIGS))
        spec = dict(config=a.config, sync=not a.nosync, seed=a.seed, commits=a.commits, losses=a.image + 1,
                    page_size=a.page_size)
        res = run_batch(spec, only=a.image, keep=a.keep)
        print(summarize([res]))
        if a.keep:
            print("image kept in %s" % a.keep)
        return 1 if res["failures"] or res["problems"] else 0
    losses = a.losses if a.losses is not None else (13_400 if a.long else 2_700)
    configs = a.configs.split(",") if a.configs else None
    for c in configs or ():
        if c not in CONFIGS:
            ap.error("unknown config %r" % c)
    specs = plan(losses, a.seed, long=a.long, configs=configs)
    t0 = time.time()
    results = run_specs(specs, a.jobs)
    print(summarize(results))
    print("\n%d batches in %.1f s" % (len(specs), time.time() - t0))
    bad = any(r["failures"] or r["problems"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
