"""Simulated power loss: the disk images a real crash could leave, verified.

Usage::

    python tools/powerloss.py [--losses N] [--nosync-losses N] [--long]
                              [--seed S] [--jobs J] [--configs ID,ID]
    python tools/powerloss.py --config mmap-reserve-wm --seed S --commits N \\
        --image K [--nosync] [--page-size P] [--flush-mode K] [--keep FILE]
                                                              # replay one image

It prints the images verified by configuration, mode, file length and
outcome, the sync points recorded, then every failure with the command that
replays it; exit status 1 if any image failed or a recording broke a rule of
the write protocol.  A default run verifies 1,050 ``sync=True`` and 2,100
``sync=False`` images, ``--long`` 10,050 and 10,500.

How it works
------------

**Recording.**  A child process runs ``crashkit.Workload(seed)`` on a fresh
database with one engine configuration, with the C core's fdatasync replaced
by a hook (``lib.kvm_set_sync_hook``).  It reads the file through the
engine's own descriptor (``os.pread``; with ``writemap=True`` this sees the
pages stored through the shared mapping, which a log of ``pwrite`` calls
would not) at every hooked fdatasync and after every commit, ``db.sync()``,
close and open, and records the 512-byte sectors that changed since the last
look (an *event*), with the file length before and after; a file cut short
(the last close's ``ftruncate``) writes its cut-off sectors as zeros, which
is what they read as if the file grows back.  The *shadow*, the
bytes durable on the simulated disk, is the file as it was at the last
hooked fdatasync.  ``annotate`` then names the events and gives each the
newest transaction whose meta is written (``hi``) and the newest made
durable on the disk (``lo``: raised by a completed flush; FORMAT.md §7).
At every look it also reads the flush in flight from the lock file
(``read_flight``: ``LOCK_OFF_FLUSH``, FORMAT.md §9).

Format version 3 has three meta slots, pages 0, 1 and 2: creation writes
txnids 0, 1 (durable) and 0.  A commit writes its meta to a slot that holds
neither the durable commit D nor the commit F a flush in flight makes
durable: the newest commit's when it is neither, else the next one below it
(2 after 0).

A commit's sync points (txn.c): with ``sync=True`` one, "commit", after its
meta (its pages, record and meta since the last sync); a commit larger than
4 x ``sync_bytes`` ("pages-first") first syncs its pages ("pages"), then
"commit".  ``check_syncs`` holds every commit to exactly that many
fdatasyncs, counted by the hook: one, or two when pages-first.  With
``sync=False`` a commit syncs itself ("commit", its meta without the no-sync
flag) when it is made with the handle's sync switched on for once
(``db._sync``) or when the bytes unsynced before it plus its own reach
2 x ``sync_bytes`` ("2 x sync_bytes"); pages-first as above.  Any other
commit does not wait for the disk: when no flush is in flight and the bytes
unsynced reach ``sync_bytes``, ``sync_interval`` has passed since the last
flush, or the pages held for D have grown ("held pages"), it *starts a
flush of itself* (flush.c), F = that commit; else its writes form an "ack"
event.  A transaction that needs pages while the pages held for D have
grown twice as far (make_room) takes up its own flush's end, or flushes and
waits ("flush", "in a transaction").  The recording runs a
flush's fdatasync inline, in the thread that starts it
(``kvm_set_flush_mode(k)``, k of 1 to 4 by the seed, ``plan["flush_mode"]``):
a sync point right after the commit's publication -- a "commit" point whose
meta has the no-sync flag -- or in the transaction, which makes F durable
on disk (``lo``) at the hook, while the engine takes up its end only at the
k-th write transaction's begin after it (or sooner: db.sync(), close,
make_room): until then D stays as it was, the commits made meanwhile write
their metas to the third slot, and the writer keeps the pages of both D
and F -- the *window* of the flush.  ``db.sync()``, close() and a writable
open take up a flush's end, then make a "flush" when anything is unsynced,
and close() then seals: it copies the newest meta, saying it is durable,
into a slot other than the newest's ("seal").  Creating the file is a "create" point.

Each run follows a seeded plan (``run_plan``): ``sync=True`` runs alternate
between the default ``sync_bytes`` and 32 KiB (pages-first commits), and
close and reopen now and then; ``sync=False`` runs take turns between
"mixed" (``sync_bytes`` of 16 to 64 KiB, ``db.sync()`` after about one
commit in eight, one-off syncing commits, a close and reopen; every
configuration's first batch), "churn" (big values of 64, 128 or 512 KiB
overwritten every third commit, ``sync_bytes`` of 1 or 4 MiB, few explicit
flushes) and "mixed" with ``sync_bytes`` of 256 KiB or 1 MiB and a
``sync_interval`` of 0.1 s, with a 0.11 s sleep before one planned commit,
which must start a flush whatever the timing, unless a flush is in flight
or its transaction took up a flush's end.  A commit that flushes by ``sync_interval`` without a planned
sleep (a slow machine) is recorded as what it was; the oracle holds for it
just the same, but a replay on another machine may record other flush
points and so rebuild another image k (``--image`` says so).  In half the
runs a snapshot is held across some transactions (``_plan_hold``), and must
read its transaction's state when released: the writer then reuses pages by
the precise rule (FORMAT.md §7: pages no snapshot and not the durable
commit reaches), which the recording's protocol check below covers.

The recording also checks the write protocol the simulator relies on: a
commit's meta goes to a slot holding neither the commit durable on disk,
nor the engine's durable commit D, nor, while a flush is in flight, its
commit F, and names D as its durable commit; a flush starts only at a
commit with the no-sync flag, names that commit's slot, and is taken up
within k write transactions; a "pages" or "flush" point holds no meta, a
"commit" point exactly one; a seal is the newest meta, durable, in a slot
other than the newest's and the flush's; the durable commit the simulator
tracks for the engine (the disk's, or in a flush's window the one before
it) is the one ``db.stats()`` reports, and never newer than the disk's;
and, in ``sync=False`` runs, at every flush the file checks clean and until
the next flush no write touches a page the durable state uses (its tree,
free-space pages and records, by the checker's ownership map) -- nor, in a
flush's window, a page the state durable before that flush uses, which a
flush in the background has not replaced yet.  Pages written since the
last flush may be written again (pages freed since are reused early): the
images allow every page any version written since the last completed
sync.

**Crash images.**  Image k of a run is a pure function of (run, k): an RNG
seeded with ``(seed, k)`` picks a moment and a mode.

``sync=True``: a sync point, and the image is the shadow before it plus a
subset of the sectors written since:

* the pages (every sector but the meta's): ``none``, ``all``, ``pages`` (a
  random subset of the written pages), ``reorder`` (the pages in a random
  order, cut at a random point, the page at the cut torn), ``torn`` (each
  page written, dropped, or torn: a random subset of its sectors),
  ``sectors`` (all written sectors in a random order, cut at a random point);
* at a "commit" point also the meta: ``meta-none``, ``meta-all``, and a tear
  *inside* the meta's sector (the meta is 128 bytes): ``meta-torn-prefix``
  (the first k bytes new, the rest old) and ``meta-torn-words`` (a random
  subset of its 8-byte words new); the image's mode is ``PAGES+META``
  (``pages:PAGES`` at a "pages" point, ``seal:META`` at a seal,
  ``create:PAGES`` at the creation);
* when the file grew since the last sync, the image has the old length or
  the new one (the grown part reads as zeros where nothing landed).

Expected, exactly: at a "pages" point the state after i-1; at a "commit"
point the state after i when its meta landed whole, every sector of the
pages its record lists landed inside the file, and the file is as long as
the meta needs (with writemap a commit may also have written pages it did
not use, which nothing reads), else the state after i-1; at a seal the state
after the last commit.  At a "create" point nothing was acknowledged: the
image must open empty or raise a ``kvmap.Error``.

``sync=False``: a moment -- right after an event, or during the fdatasync of
a sync point (not completed) -- and the image is the shadow at the last
completed sync plus any of what was written since (in a flush's window, for
half the images, the sync before the flush started: a flush in the
background may not have completed; FORMAT.md §7): every page may hold its
content at that sync, its newer version, or a tear between them (sector by
sector), and a meta slot any of the versions written to it since (or a
tear inside its sector between two of them); a page written more than
once since may hold any of its versions; the file has any of the lengths
it had since.  Modes: ``none`` (nothing landed: exactly the newest
commit in the shadow), ``all`` (everything landed: exactly ``hi``),
``prefix`` (the writes in the order they were made, each commit's meta after
its pages, cut at a random sector), ``pages`` (each page new or old, each
meta slot any version), ``torn`` (each page new, old or torn, each meta
slot any version), ``versions`` (each page any version or a tear, each meta
slot any version or torn inside its sector between two).  Expected: the
image opens, ``kvmap.check`` is clean, and the contents are exactly the
state after some commit j with ``lo <= j <= hi`` -- never contents no commit
had, never older than the last completed flush.

**Verification**: a read-only open, whose contents must be in the expected
range; then ``crashkit.verify`` with the range: ``kvmap.check`` on the
image, a writable open (recovery runs) whose contents must be in the range,
``db._check()``, one new commit (it must read back) and ``kvmap.check``
again; for odd k that open has ``sync=False`` and a ``sync_bytes`` of 8 KiB
(its commit flushes, beside whatever metas the crash left), and the file,
opened once more, must hold the state it recovered plus that commit.
Outcomes: ``exact``; for ``sync=False`` ranges ``state-newest`` (``hi``),
``state-durable`` (``lo``) or ``state-between``, ``-fallback`` when open
fell back from a newer meta whose commits did not verify.

Batches of images run in child processes (``--batch``, a few batches per
child), which print ``IMG k`` before verifying image k, so an engine crash
fails the batch and names the image (the batches after it run in a new
child); the parent prints the command that replays it.
"""

import argparse
import json
import os
import random
import re
import signal
import struct
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
META_PAGES = 3                  # meta slots: pages 0, 1 and 2 (native/format.h)
FLUSH_MIN_BYTES = 512 << 10     # txn.c: a commit's flush for the pages held starts at half of it
M_TXNID, M_FLAGS, M_HWM, M_RECORD, M_DURABLE = 16, 36, 48, 64, 96     # meta fields (native/format.h)
M_FLAGS_NOSYNC = 1              # a sync=False commit's meta that did not sync itself
IMAGE_TIMEOUT = 60          # seconds per image before it counts as a hang
INTERVAL = 0.1              # sync_interval of the runs that use one
PROBE_KEY = b"\xffpowerloss-probe"
MAGIC = b"\x89KVM\r\n\x1a\n"

# configurations: name -> kvmap.open keyword arguments (read-only)
from kvmap.configurations import CONFIGURATIONS as CONFIGS  # noqa: E402

DATA_MODES = ("none", "all", "pages", "reorder", "torn", "sectors")
META_MODES = ("meta-none", "meta-all", "meta-torn-prefix", "meta-torn-words")
NOSYNC_MODES = ("none", "all", "prefix", "pages", "torn", "versions")
NOSYNC_WEIGHTS = (1, 2, 3, 4, 5, 5)

# images per run: (sync=True, sync=False)
DEFAULT_LOSSES = (1050, 2100)
LONG_LOSSES = (10050, 10500)


# ---------------------------------------------------------------- recording

class Event:
    """What was written between two looks at the file: ``delta`` maps
    sector number to its new 512 bytes; the file was ``old_len`` bytes long
    at the previous look and is ``new_len`` now.  ``kind``: "create",
    "pages", "commit", "flush", "seal" (sync points: an fdatasync follows
    these writes; "sync" until ``annotate`` names them) or "ack" (a commit,
    db.sync(), close() or open returned).  ``ctx``: what the writer was
    doing ("create", "txn", "sync", "close", "open").  ``txn``: the workload
    transaction (0: creation; outside a transaction, the last one
    committed).  ``hi``: the newest transaction whose meta was written by
    the end of these writes; ``lo``: the newest one the engine has made
    durable once this event is over (for a sync point: once its fdatasync
    completed)."""

    __slots__ = ("index", "kind", "txn", "old_len", "new_len", "delta", "sync", "lo", "hi", "why", "ctx",
                 "ntree", "listed", "flight", "start", "bg", "engine", "inflight", "takeup", "third")

    def __init__(self, index, kind, txn, old_len, new_len, delta, lo, hi, why=""):
        self.index, self.kind, self.txn = index, kind, txn
        self.old_len, self.new_len, self.delta = old_len, new_len, delta
        self.sync = kind != "ack"
        self.lo, self.hi, self.why = lo, hi, why
        self.ctx = None
        self.ntree = None           # a commit's tree pages, by its record
        self.listed = None          # the pages its record lists, and the record's own
        self.flight = None          # the lock region's flush fields at the look (read_flight)
        self.start = False          # a sync point that starts a flush of its commit (flush.c)
        self.bg = None              # in a flush's window: the last sync before its start (annotate)
        self.engine = None          # the engine's durable txnid once the event is over (annotate)
        self.inflight = 0           # a commit's meta: the txnid of the flush in flight when written
        self.takeup = None          # the flush in flight before the event, taken up by it: its bytes
        self.third = False          # a commit's meta written beside a flush in flight

    def __repr__(self):
        return "Event(#%d txn %s %s%s, %d -> %d bytes, %d sectors, lo %d hi %d%s)" % (
            self.index, self.txn, self.kind, "/" + self.why if self.why else "", self.old_len, self.new_len,
            len(self.delta), self.lo, self.hi, ", flush in flight" if self.flight and self.flight[0] else "")


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


def meta_field(sector, off):
    return struct.unpack_from("<Q", sector, off)[0]


def meta_flags(sector):
    return struct.unpack_from("<I", sector, M_FLAGS)[0]


def _lock_off_flush():
    """Where the lock file keeps the flush in flight (FORMAT.md §9), as
    native/format.h defines it: u64 flush_txnid, flush_done, flush_bytes,
    then i32 flush_slot, u32 flush_handle."""
    with open(os.path.join(os.path.dirname(HERE), "native", "format.h")) as f:
        return int(re.search(r"#define\s+LOCK_OFF_FLUSH\s+(\d+)", f.read()).group(1))


LOCK_OFF_FLUSH = _lock_off_flush()
FLIGHT = struct.Struct("<QQQiI")


def read_flight(lock_path):
    """(flush_txnid, flush_slot, flush_bytes) of the lock region: the commit
    a flush in flight makes durable (0: none), its meta slot and the bytes
    unsynced when it began; None when the lock file cannot be read."""
    try:
        with open(lock_path, "rb") as f:
            f.seek(LOCK_OFF_FLUSH)
            b = f.read(FLIGHT.size)
    except OSError:
        return None
    if len(b) < FLIGHT.size:
        return None
    txnid, _done, nbytes, slot, _handle = FLIGHT.unpack(b)
    return (txnid, slot, nbytes)


class Recorder:
    """The sync hook and the event log (see the module doc).  ``ctx`` says
    what the writer is doing: ("create",), ("txn", i), ("sync",),
    ("close",) or ("open",).  Events are recorded raw; ``annotate`` names
    their kinds once the transaction they belong to is over."""

    def __init__(self, page_size, lock_path=None):
        self.page_size = page_size
        self.spp = page_size // SECTOR
        self.cur = b""              # the file at the last look
        self.events = []
        self.ctx = ("create",)
        self.hooks = 0              # fdatasyncs seen
        self.error = None
        self.lock_path = lock_path  # the database's lock file: the flush in flight (read_flight)

    def look(self, fd, hook=False, why=""):
        size = os.fstat(fd).st_size
        cur = _read_all(fd, size)
        delta = diff_sectors(self.cur, cur, self.page_size)
        old_len = len(self.cur)
        # A file cut short (the last close's ftruncate, native/env.c) reads
        # zeros where it grows back: the cut-off sectors are written as zeros,
        # writes that may or may not land like the others (past the new
        # length they only count once the file grows again).
        for x in range(len(cur) // SECTOR, old_len // SECTOR):
            delta[x] = bytes(SECTOR)
        self.cur = cur
        txn = self.ctx[1] if self.ctx[0] == "txn" else None
        ev = Event(len(self.events), "sync" if hook else "ack", txn, old_len, len(cur), delta, 0, 0, why)
        ev.ctx = self.ctx[0]
        if self.lock_path:
            ev.flight = read_flight(self.lock_path)
        self.events.append(ev)
        return ev

    def hook(self, fd):
        try:
            self.hooks += 1
            self.look(fd, hook=True)
        except BaseException as e:      # a hook must not raise into C
            self.error = self.error or e
        return 0


def is_meta(sector, spp):
    """Whether sector number ``sector`` holds a meta (the first of a meta page)."""
    return sector % spp == 0 and sector < META_PAGES * spp


def metas_of(ev, spp):
    """The meta slots an event wrote: [(slot, sector bytes)]."""
    return [(s // spp, ev.delta[s]) for s in sorted(ev.delta) if is_meta(s, spp)]


def record_lists(buf, first, page_size):
    """The pages a commit wrote, by its record (format.h): (the record's own
    pages, the pages it lists)."""
    pages, stream, pg = [], b"", first
    while pg:
        if pg in pages or (pg + 1) * page_size > len(buf):
            raise ValueError("record chain through page %d" % pg)
        p = bytes(buf[pg * page_size:(pg + 1) * page_size])
        pages.append(pg)
        stream += p[32:]
        pg = struct.unpack_from("<Q", p, 24)[0]
    # the record's fixed fields and entries as the checker reads them
    # (tests/test_format_constants.py holds them to format.h)
    from kvmap.checker.pagelayout import record_head as head, record_written as entry
    nwritten = head.unpack_from(stream, 0)[1]
    return pages, [entry.unpack_from(stream, head.size + entry.size * i)[0] for i in range(nwritten)]


def durable_pages(buf, scratch, problems, where):
    """The pages the state in ``buf`` (a whole file, every commit of it
    durable) uses: its tree, free-space pages and records, by the checker's
    ownership map; a problem if the file does not check clean."""
    from kvmap.checker import walk
    with open(scratch, "wb") as f:
        f.write(buf)
    fd = os.open(scratch, os.O_RDONLY)
    try:
        rep, c = walk.run(fd, scratch, True, 10, None)
    except walk.CheckUnreadable as e:
        problems.append("%r: the durable state is unreadable: %s" % (where, e))
        return {}
    finally:
        os.close(fd)
        os.unlink(scratch)
    if not rep.ok:
        problems.append("%r: the durable state does not check clean: %s" % (where, "; ".join(
            "%s page %s: %s" % (p.kind, p.page, p.message) for p in rep.problems[:3])))
    return {pg: walk.OWNER_NAMES[o] for pg, o in enumerate(c.owner) if o in walk.CHECKED}


def slot_txnids(buf, page_size):
    """The txnid each meta slot of ``buf`` holds (None: none there)."""
    out = []
    for i in range(META_PAGES):
        m = bytes(buf[i * page_size:i * page_size + META_SIZE])
        out.append(meta_field(m, M_TXNID) if len(m) == META_SIZE and m[:8] == MAGIC else None)
    return out


def open_slot(buf, page_size):
    """The slot open takes in a file whose metas are all whole and whose
    commits all verify (native/meta.c, slot_order): the newest commit, of
    equal ones the meta that says it is durable, of equal ones the lowest
    slot."""
    best = None
    for i in range(META_PAGES):
        m = bytes(buf[i * page_size:i * page_size + META_SIZE])
        if len(m) == META_SIZE and m[:8] == MAGIC:
            key = (meta_field(m, M_TXNID), meta_field(m, M_DURABLE))
            if best is None or key > best[0]:
                best = (key, i)
    return None if best is None else best[1]


def annotate(events, spp, problems, scratch=None, reuse=True, flush_mode=None):
    """Name each event's kind and set its ``txn``, ``lo`` and ``hi``
    (Event), checking the write protocol (module doc) on the way.

    Sync points: "create"; in a transaction, the one that holds its meta is
    "commit" (the commit synced itself, or, a sync=False commit whose meta
    says it did not, the fdatasync is the start of a flush of it: ``start``),
    a meta-less one right before it in a pages-first commit (its meta says
    it is durable) is "pages", any other meta-less one is a "flush" (the
    engine flushed to reuse freed pages); in db.sync() or when opening,
    "flush"; in close(), "flush", then "seal" (the newest meta copied into
    another slot, saying it is durable).

    The engine learns of a flush's end later (flush.c; with
    ``kvm_set_flush_mode(k)`` at the k-th write transaction's begin): until then it
    keeps both the durable commit D and the flushed one F, and a commit
    writes neither's slot.  The lock region read at every look says which
    flush is in flight (``Event.flight``); an event whose look no longer
    shows it took its end up before its writes.  ``Event.engine`` is the
    engine's durable commit after the event (db.stats() must say the same,
    ``record``), never newer than the disk's; ``Event.bg`` marks the events
    of a flush's window (after its start, before its end is taken up or
    another sync completes), where a flush running in the background may
    not have completed: the last sync before its start (``images_nosync``).

    At every sync the whole file is durable: the checker's ownership map of
    it gives the pages the durable state uses (tree, free-space pages,
    records), and no later write may touch one of them before the next
    sync completes (FORMAT.md §7, the reuse rule) -- nor, in a flush's
    window, a page of the state durable before its start; ``reuse=False``
    skips this (a sync=True run, where every commit is a flush and its
    images test the same rule).  Pages written since the last flush may be
    written again (freed and reused early, or written through the map with
    writemap and not used): the images allow any version."""
    lo = hi = 0
    last = 0                        # the newest workload transaction so far
    newest_slot = None              # the newest meta's slot
    newest = None                   # the newest meta's sector
    disk_slot = None                # the slot of the newest commit the disk holds durable (lo)
    wl = {0: 0, 1: 0}               # engine txnid -> workload transaction (0 and 1: creation)
    eng_d = eng_d_slot = None       # the engine's durable commit D (txnid) and its slot
    eng_f = eng_f_slot = eng_f_bytes = eng_f_txn = 0    # the flush in flight F (0: none)
    bg = None                       # F's window: the last sync before its start
    protected = {}                  # page -> owner: the durable state's pages
    prot_bg = {}                    # in F's window: the pages of the state durable before it
    flushed = flushed_bg = None     # the last sync; the one before F's start
    last_sync = None
    buf = bytearray()               # the file after the events so far
    page_size = spp * SECTOR
    if scratch is None:
        scratch = os.path.join(tempfile.gettempdir(), "kvmap-powerloss-%d.kv" % os.getpid())
    i = 0
    while i < len(events):
        # one group: the events of one transaction, or of one other call
        j = i + 1
        while j < len(events) and events[j].ctx == events[i].ctx and (
                events[i].ctx != "txn" or events[j].txn == events[i].txn) and events[j - 1].kind != "ack":
            j += 1
        group = events[i:j]
        ctx = group[0].ctx
        metas = [(e, m) for e in group for m in metas_of(e, spp)]
        pages_first = False
        if ctx == "txn":
            last = group[0].txn
            if len(metas) > 1:
                problems.append("txn %d wrote %d metas" % (last, len(metas)))
            if metas:
                m = metas[-1][1][1]
                pages_first = meta_field(m, M_DURABLE) == meta_field(m, M_TXNID)
        for k, e in enumerate(group):
            e.txn = last
            ms = metas_of(e, spp)
            fl = e.flight
            # the end of the flush in flight taken up (at a transaction's
            # begin, in make_room, db.sync() or close): before these writes
            if eng_f and fl is not None and fl[0] != eng_f:
                if eng_f > eng_d:   # (else a commit that synced itself since made a newer one durable)
                    e.takeup = eng_f_bytes
                    eng_d, eng_d_slot = eng_f, eng_f_slot
                eng_f = 0
                bg, prot_bg, flushed_bg = None, {}, None
            if eng_f and flush_mode and ctx == "txn" and last - eng_f_txn >= flush_mode:
                problems.append("%r: the flush of txn %d (flush mode %d) is still in flight" % (
                    e, eng_f_txn, flush_mode))
            e.bg = bg
            if e.kind == "sync":
                if ctx == "create":
                    e.kind = "create"
                elif ctx == "txn":
                    e.kind = ("commit" if ms else
                              "pages" if pages_first and k + 1 < len(group) and group[k + 1].kind == "sync"
                              and metas_of(group[k + 1], spp) else "flush")
                    if e.kind == "flush":
                        e.why = "in a transaction"
                else:
                    e.kind = "seal" if ms and ctx == "close" else "flush"
                    e.why = e.why or ("in %s" % {"sync": "db.sync()", "close": "close()", "open": "open"}[ctx])
            if ms and ctx == "create":
                got = [(slot, meta_field(m, M_TXNID), meta_field(m, M_DURABLE)) for slot, m in ms]
                if [(slot, t) for slot, t, _ in got] != [(0, 0), (1, 1), (2, 0)] or got[1][2] != 1:
                    problems.append("%r: creation wrote the metas (slot, txnid, durable) %s, not txnids 0, 1 "
                                    "(durable), 0" % (e, got))
                newest_slot, newest = 1, e.delta[spp]
                eng_d, eng_d_slot = 1, 1
            elif ms and e.kind == "seal":
                (slot, m), = ms
                if slot == newest_slot or (eng_f and slot == eng_f_slot) or m[:M_DURABLE] != newest[:M_DURABLE] \
                        or meta_field(m, M_DURABLE) != meta_field(m, M_TXNID):
                    problems.append("%r: the seal is not the newest meta, saying durable, in another slot" % e)
                newest_slot, newest = slot, m
                eng_d, eng_d_slot = meta_field(m, M_TXNID), slot
            elif ms and ctx == "txn":
                for slot, m in ms:
                    txnid = meta_field(m, M_TXNID)
                    holds = []
                    if slot == disk_slot:
                        holds.append("the durable commit on disk (txn %d)" % lo)
                    if slot == eng_d_slot:
                        holds.append("the engine's durable commit (txnid %s)" % eng_d)
                    if eng_f and slot == eng_f_slot:
                        holds.append("the commit a flush in flight makes durable (txnid %d)" % eng_f)
                    if holds:
                        problems.append("txn %d wrote its meta into slot %d, which holds %s" % (
                            last, slot, " and ".join(holds)))
                    if meta_field(m, M_DURABLE) not in (eng_d, txnid):
                        problems.append("txn %d's meta names durable commit %d, the engine's is %s" % (
                            last, meta_field(m, M_DURABLE), eng_d))
                    e.inflight = eng_f
                    e.third = bool(eng_f)
                    wl[txnid] = last
                    newest_slot, newest = slot, m
                    hi = last
            elif ms:
                problems.append("%r wrote a meta" % e)
            if e.kind == "commit" and len(ms) != 1:
                problems.append("%r: a commit point without exactly one meta" % e)
            if e.kind in ("pages", "flush") and ms:
                problems.append("%r: a %s point with a meta" % (e, e.kind))
            apply_delta(buf, e.new_len, e.delta)
            written = {s // spp for s in e.delta}
            for pg in sorted(written & set(protected)):
                problems.append("page %d (%s) of the durable state of %r written by %r before the next flush"
                                % (pg, protected[pg], flushed, e))
            for pg in sorted(written & set(prot_bg) - set(protected)):
                problems.append("page %d (%s) of the durable state of %r written by %r while the flush that "
                                "replaces it is in flight" % (pg, prot_bg[pg], flushed_bg, e))
            if ctx == "open" and k == 0:
                # what the engine took from the file (native/meta.c, load_meta)
                eng_d_slot = newest_slot = disk_slot = open_slot(buf, page_size)
                newest = bytes(buf[newest_slot * page_size:newest_slot * page_size + SECTOR])
                eng_d, eng_f = meta_field(newest, M_TXNID), 0
                if meta_field(newest, M_DURABLE) < eng_d:
                    problems.append("%r: the newest meta after close is not sealed" % e)
            if ms and ctx == "txn":
                try:
                    own, lists = record_lists(buf, meta_field(ms[-1][1], M_RECORD), page_size)
                except (struct.error, ValueError) as x:
                    problems.append("%r: its record does not parse: %s" % (e, x))
                else:
                    e.listed = frozenset(own + lists)
                    # the commit's tree pages (branch, leaf, overflow)
                    if any((pg + 1) * page_size > len(buf) for pg in lists):
                        problems.append("%r: its record lists pages past the end of the file" % e)
                    e.ntree = sum(buf[pg * page_size + 4] in (1, 2, 3) for pg in lists
                                  if (pg + 1) * page_size <= len(buf))
            if e.kind in ("create", "commit", "pages", "flush", "seal"):
                # an fdatasync returned: everything written so far is on disk
                if e.kind == "commit":
                    cslot, m = ms[-1]
                    txnid = meta_field(m, M_TXNID)
                    nosync = meta_flags(m) & M_FLAGS_NOSYNC
                    e.start = fl is not None and fl[0] == txnid
                    if nosync and not e.start:
                        problems.append("%r: a commit whose meta says it did not sync made an fdatasync that "
                                        "starts no flush of it (flush in flight: %s)" % (e, fl))
                    elif e.start and not nosync:
                        problems.append("%r: a commit that synced itself started a flush of itself" % e)
                    if e.start:
                        if fl[1] != cslot:
                            problems.append("%r: the flush in flight names slot %d, its commit wrote %d" % (
                                e, fl[1], cslot))
                        bg, prot_bg, flushed_bg = last_sync, protected, flushed
                        eng_f, eng_f_slot, eng_f_bytes, eng_f_txn = txnid, fl[1], fl[2], last
                    else:
                        eng_d, eng_d_slot = txnid, cslot
                elif e.kind == "flush":
                    t = meta_field(newest, M_TXNID)
                    if eng_d is not None and t <= eng_d:
                        problems.append("%r: a flush with every commit durable (txnid %d)" % (e, t))
                    eng_d, eng_d_slot = t, newest_slot
                if not e.start:
                    # a sync that completed: the window of a flush in flight is over
                    bg, prot_bg, flushed_bg = None, {}, None
                last_sync = e.index
                if e.kind != "pages":
                    # (a pages-first commit's first sync is not a flush: the
                    # engine makes no commit durable by it, and the commit's
                    # meta may then replace a newer one than the durable one)
                    lo = hi
                    disk_slot = newest_slot
                    flushed = e
                    protected = durable_pages(buf, scratch, problems, e) if e.kind != "create" and reuse else {}
            e.lo, e.hi = lo, hi
            e.engine = eng_d
            if eng_d is not None and wl.get(eng_d, hi + 1) > lo:
                problems.append("%r: the engine's durable commit (txnid %d) is newer than the disk's (txn %d)"
                                % (e, eng_d, lo))
        i = j
    return events


class States:
    """The workload's model after every transaction 0..n, precomputed (a
    ``crashkit.Workload`` whose ``model(i)`` is a lookup)."""

    def __init__(self, seed, n, **workload):
        self.workload = crashkit.Workload(seed, **workload)
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
            for i, st in enumerate(self.states):
                self._index.setdefault(_digest(st), []).append(i)
        return [i for i in self._index.get(_digest(contents), []) if self.states[i] == contents]


def _digest(d):
    return hash(frozenset(d.items()))


def run_plan(sync, seed, commits):
    """How a run is driven, a pure function of (sync, seed, commits):
    ``sync_bytes``, ``sync_interval``, the workload's shape and, per
    transaction, what the writer does after it ("sync": db.sync(),
    "reopen": close and open) or for it ("syncing": a one-off syncing
    commit, "sleep": sleep past the interval first)."""
    rng = random.Random("powerloss-plan:%s:%s:%d" % (sync, seed, commits))
    plan = dict(after={}, before={}, workload={}, sync_interval=None, shape="sync")
    # the engine's flushes inline (kvm_set_flush_mode): their end taken up
    # at the 1st to 4th write transaction's begin after their start (k = 1:
    # the next one, no commit in between), by the batch and configuration
    # (plan(): the seed's last digit and the one before), so that every
    # configuration has a batch with commits beside a flush in flight
    plan["flush_mode"] = 1 + (seed % 10 + 2 * (seed // 10 % 10) + 1) % 4
    if sync:
        # a small sync_bytes (pages-first commits) in every other batch,
        # alternating over batches and configurations (plan(): the seed's last
        # digit is the batch, the one before the configuration); a close and
        # reopen now and then (close seals the newest meta)
        plan["sync_bytes"] = 32 << 10 if (seed % 10 + seed // 10 % 10) % 2 else 16 << 20
        for i in range(6, commits - 5):
            if rng.random() < 0.03:
                plan["after"][i] = "reopen"
        return _plan_hold(plan, sync, seed, commits)
    # the shape by the batch's seed (plan(): the last digit is the batch of
    # its configuration, the one before the configuration): each
    # configuration's first batch is mixed, its others churn or mixed with
    # sync_interval, alternating over batches and configurations
    b, c = seed % 10, seed // 10 % 10
    shape = "mixed" if b == 0 else ("churn", "interval")[(b + c) % 2]
    if shape == "churn":
        # churn: big values overwritten every third commit, few explicit
        # flushes: freed pages pile up until a commit starts a flush for them
        # (txn.c, flush_due), or, with 512 KiB values, faster than the flushes
        # in flight end, until a transaction flushes to reuse them (make_room);
        # the value size taking turns over batches and configurations
        rng.random()                # (the draw that chose the size before)
        plan.update(shape="churn", sync_bytes=rng.choice((1 << 20, 4 << 20)),
                    workload=dict(grow_every=3, big=(64 << 10, 128 << 10, 512 << 10)[(b + c // 2) % 3], big_keys=2))
        p_sync, p_reopen, p_syncing = 0.03, 0.01, 0.02
    else:
        # small sync_bytes (pages-first commits too), or with sync_interval
        # larger ones (several commits between flushes)
        plan.update(shape="mixed", sync_bytes=rng.choice((256 << 10, 1 << 20) if shape == "interval" else
                                                          (16 << 10, 32 << 10, 64 << 10)))
        p_sync, p_reopen, p_syncing = 0.12, 0.02, 0.06
    if shape == "interval":
        plan["sync_interval"] = INTERVAL
    for i in range(1, commits + 1):
        r = rng.random()
        if r < p_sync:
            plan["after"][i] = "sync"
        elif r < p_sync + p_reopen and 5 < i < commits - 5:
            plan["after"][i] = "reopen"
        elif r < p_sync + p_reopen + p_syncing:
            plan["before"][i] = "syncing"
    if plan["sync_interval"]:
        plan["before"][rng.randint(commits // 3, commits - 2)] = "sleep"
    return _plan_hold(plan, sync, seed, commits)


def _plan_hold(plan, sync, seed, commits):
    """In half the runs, a snapshot held from after transaction a to after
    transaction b (plan["hold"] = (a, b), no reopen in between): the writer
    then reuses pages by the precise rule (FORMAT.md §7), pages the
    snapshot does not reach but the durable state may.  Its own generator,
    so the rest of the plan is what it was without it."""
    rng = random.Random("powerloss-hold:%s:%s:%d" % (sync, seed, commits))
    if commits < 4 or rng.random() < 0.5:
        return plan
    a = rng.randint(1, commits // 2)
    b = min([commits, a + rng.randint(3, commits)] +
            [i for i, what in plan["after"].items() if what == "reopen" and i >= a])
    if b > a:
        plan["hold"] = (a, b)
    return plan


def check_syncs(events, txns, sync, plan, states, spp, problems):
    """The fdatasyncs of every commit (FORMAT.md §7, txn.c): a commit of
    ``bytes`` = (its tree pages + 2) x page size syncs its pages before its
    meta ("pages", then "commit") when bytes > 4 x sync_bytes; else it
    syncs itself once after its meta ("commit", its meta without the
    no-sync flag) with sync=True, as a one-off syncing commit, or when the
    bytes unsynced before it plus ``bytes`` reach 2 x sync_bytes.  Any other
    sync=False commit makes no fdatasync of its own, but starts a flush of
    itself ("commit" too, its meta with the no-sync flag: the fdatasync
    right after it, flush.c) when no flush is in flight and the bytes
    unsynced after it reach sync_bytes, when sync_interval has passed since
    the last flush (a planned sleep makes sure, unless a flush's end was
    taken up in the transaction; without one, only allowed), or when the
    pages held for the durable commit are large (only allowed: at least
    half of FLUSH_MIN_BYTES unsynced).  The bytes unsynced before a commit
    are those db.stats() said before its transaction, less what a flush
    whose end the transaction took up made durable, if it made the
    engine's durable commit newer (all of them after a "flush" in it).  A
    "flush" in a transaction (to reuse freed pages) is extra.  Returns the
    commits that flushed by sync_interval without a planned sleep.
    ``txns``: (i, how, first event, end event, committed, unsynced bytes
    before, unsynced bytes after) per workload transaction."""
    unplanned = []
    ps = spp * SECTOR
    limit = plan["sync_bytes"]
    for i, how, first, end, committed, unsynced, after in txns:
        group = events[first:end]
        kinds = [e.kind for e in group if e.sync]
        own = [k for k in kinds if k != "flush"]
        metas = [(e, m) for e in group for m in metas_of(e, spp)]
        changed = len({x // spp for e in group for x in e.delta} - set(range(META_PAGES)))
        if not committed:
            if kinds or group[-1].delta or states.states[i] != states.states[i - 1]:
                problems.append("transaction %d did not commit but made %d syncs, %d sectors"
                                % (i, len(kinds), len(group[-1].delta)))
            continue
        if len(metas) != 1:
            problems.append("transaction %d wrote %d metas" % (i, len(metas)))
            continue
        me, (_, m) = metas[-1]
        reset = False               # last_flush_ns moved in the transaction (no interval flush)
        for e in group:
            if e.takeup is not None:
                unsynced = max(0, unsynced - e.takeup)
                reset = True
            if e.kind == "flush":
                unsynced, reset = 0, True
            if e is me:
                break
        pages_first = meta_field(m, M_DURABLE) == meta_field(m, M_TXNID)
        nosync = bool(meta_flags(m) & M_FLAGS_NOSYNC)
        ntree = me.ntree if not pages_first else None
        nbytes = ((ntree if ntree is not None else changed) + 2) * ps
        big = ntree is not None and nbytes > 4 * limit
        twice = unsynced + nbytes >= 2 * limit
        if pages_first:
            why = "pages-first"
            ok = own == ["pages", "commit"] and not nosync and (changed + 2) * ps > 4 * limit
        elif not nosync:
            why = "sync=True" if sync else "syncing" if how == "syncing" else "2 x sync_bytes"
            ok = own == ["commit"] and not me.start and not big and (sync or how == "syncing" or twice)
        else:
            fits = not (sync or how == "syncing" or big or twice)
            due = after >= limit
            if me.start:
                why = ("sync_bytes" if due else "interval" if how == "sleep" or plan["sync_interval"]
                       else "held pages")
                ok = fits and own == ["commit"] and not me.inflight and (
                    due or how == "sleep" or plan["sync_interval"] or after >= FLUSH_MIN_BYTES // 2)
                if ok and why == "interval" and how != "sleep":
                    unplanned.append(i)
            else:
                why = None
                must = not me.inflight and (due or (how == "sleep" and not reset))
                ok = fits and own == [] and not must
        if not ok:
            problems.append("transaction %d (%d tree pages, %d pages changed, %d bytes unsynced before, %d after, "
                            "sync_bytes %d, %s%s%s) made the sync points %s" % (
                                i, -1 if ntree is None else ntree, changed, unsynced, after, limit,
                                "pages-first" if pages_first else how or "sync=%s" % sync,
                                ", no-sync meta" if nosync else "",
                                ", a flush in flight" if me.inflight else "", kinds))
        elif sync and kinds != own:
            problems.append("transaction %d (sync=True) made an extra flush: %s" % (i, kinds))
        elif sync and (any(any(v) for v in group[-1].delta.values()) or group[-1].old_len != group[-1].new_len):
            # zeros after it are the give-back: free runs punched out of the
            # file once the commit is published (native/map.c, env_give_back),
            # which the images then hold or not, as any write since the sync
            problems.append("transaction %d wrote after its last fdatasync" % i)
        for e in group:
            if e.kind in ("commit", "pages"):
                e.why = why
    return unplanned


def record(cfg_id, sync, seed, commits, page_size=4096, directory=None, flush_mode=None):
    """Run ``commits`` workload transactions on a fresh database with the
    sync hook; return (events, states, problems, plan).  ``problems`` lists
    anything about the write protocol the simulator relies on that did not
    hold (module doc), and every commit that did not make the fdatasyncs it
    must (``sync=True``: exactly one, two when pages-first).  The engine's
    flushes run inline, their end taken up ``plan["flush_mode"]`` write
    transactions later (``flush_mode`` overrides the plan's)."""
    import kvmap
    from kvmap._lib import ffi, lib

    plan = run_plan(sync, seed, commits)
    if flush_mode is not None:
        plan["flush_mode"] = flush_mode
    states = States(seed, commits, **plan["workload"])
    own_dir = directory is None
    directory = directory or tempfile.mkdtemp(prefix="kvmap-powerloss-")
    path = crashkit.scratch_path(directory, "recorded.kv")
    rec = Recorder(page_size, lock_path=path + "-lock")
    cb = ffi.callback("int(int)", rec.hook)
    problems = []
    kw = dict(sync=sync, page_size=page_size, sync_bytes=plan["sync_bytes"],
              sync_interval=plan["sync_interval"], **CONFIGS[cfg_id])
    txns = []                       # (i, how, first event, events after, committed, unsynced before, after)
    durable = []                    # (event count, workload txn, engine durable txnid) after each call
    txnid_of = {}                   # workload txn -> engine txnid after it
    lib.kvm_set_sync_hook(cb)
    # the flush's fdatasync in this thread, at its start (so the hook sees
    # every write in order), its end taken up at the k-th write
    # transaction's begin (native/flush.c); process-wide, so set here,
    # before the open
    lib.kvm_set_flush_mode(plan["flush_mode"])
    try:
        db = kvmap.open(path, **kw)
        txnid_of[0] = db.stats()["txnid"]
        fd = os.open(path, os.O_RDONLY)
        held = None                 # the snapshot plan["hold"] keeps
        try:
            if rec.hooks != 1 or len(rec.events) != 1:
                problems.append("creating the file made %d syncs" % rec.hooks)
            for i in range(1, commits + 1):
                how = plan["before"].get(i)
                if how == "sleep":
                    time.sleep(INTERVAL * 1.1)
                rec.ctx = ("txn", i)
                first = len(rec.events)
                unsynced = db.stats()["unsynced_bytes"]
                db._sync = sync or how == "syncing"
                try:
                    crashkit.run_txn(db, states.ops(i))
                finally:
                    db._sync = sync
                st = db.stats()
                txnid_of[i] = st["txnid"]
                rec.look(fd)
                txns.append((i, how, first, len(rec.events), st["txnid"] != txnid_of[i - 1], unsynced,
                             st["unsynced_bytes"]))
                durable.append((len(rec.events), i, st["durable_txnid"]))
                if held is not None and i == plan["hold"][1]:
                    if dict(held.items()) != states.model(plan["hold"][0]):
                        problems.append("the snapshot held from transaction %d to %d changed"
                                        % plan["hold"])
                    held.close()
                    held = None
                what = plan["after"].get(i)
                if what == "sync":
                    rec.ctx = ("sync",)
                    hooks = rec.hooks
                    # db.sync() takes up the end of a flush in flight first
                    # (its fdatasync made that commit durable)
                    fl = read_flight(rec.lock_path) or (0,)
                    unsynced = st["txnid"] > max(st["durable_txnid"], fl[0])
                    db.sync()
                    if rec.hooks - hooks != int(unsynced):
                        problems.append("db.sync() after txn %d made %d fdatasyncs with %s unsynced" % (
                            i, rec.hooks - hooks, "commits" if unsynced else "nothing"))
                    rec.look(fd, why="after db.sync()")
                    durable.append((len(rec.events), i, db.stats()["durable_txnid"]))
                elif what == "reopen":
                    rec.ctx = ("close",)
                    db.close()
                    rec.look(fd, why="after close()")
                    rec.ctx = ("open",)
                    hooks = rec.hooks
                    db = kvmap.open(path, **kw)
                    if rec.hooks != hooks:
                        problems.append("reopening after txn %d made %d fdatasyncs" % (i, rec.hooks - hooks))
                    rec.look(fd, why="after open")
                    durable.append((len(rec.events), i, db.stats()["durable_txnid"]))
                if "hold" in plan and i == plan["hold"][0]:
                    held = db.snapshot()
            rec.ctx = ("close",)
            db.close()
            rec.look(fd, why="after close()")
        finally:
            os.close(fd)
        if rec.error is not None:
            raise rec.error
        spp = page_size // SECTOR
        events = annotate(rec.events, spp, problems, scratch=os.path.join(directory, "durable.kv"), reuse=not sync,
                          flush_mode=plan["flush_mode"])
    finally:
        lib.kvm_set_sync_hook(ffi.NULL)
        lib.kvm_set_flush_mode(0)
        if own_dir:
            try:
                for name in os.listdir(directory):
                    os.unlink(os.path.join(directory, name))
                os.rmdir(directory)
            except OSError:
                pass
    unplanned = check_syncs(events, txns, sync, plan, states, spp, problems)
    # the durable commit the simulator tracks (annotate: the disk's, or while
    # the end of a flush is not taken up, the one before it) is the engine's
    for n, i, d in durable:
        e = events[n - 1]
        if e.engine != d:
            problems.append("after txn %d: durable_txnid %d, the simulator says txnid %s (on disk: txn %d, "
                            "txnid %d)" % (i, d, e.engine, e.lo, txnid_of[e.lo]))
    if events[-1].lo != events[-1].hi:
        problems.append("close() left txn %d not durable" % events[-1].hi)
    plan["unplanned_flushes"] = unplanned
    plan["txns"] = txns
    return events, states, problems, plan


# ---------------------------------------------------------------- images

class Image:
    """One crash image: its bytes, how it was made, and what it must open to:
    ``expect`` is "empty-or-error" or (lo, hi, exact): the state after a
    transaction in lo..hi (exact: after hi itself, lo == hi)."""

    __slots__ = ("k", "point", "mode", "length", "data", "expect", "note", "window")

    def __init__(self, k, point, mode, length, data, expect, note="", window=None):
        self.k, self.point, self.mode, self.length = k, point, mode, length
        self.data, self.expect, self.note = data, expect, note
        self.window = window        # sync=False, in a flush's window: "completed" or "not completed"


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


def plan_sync(events, seed, first, last):
    """For sync=True: (k, event index, rng) of images first..last-1: a few at
    the creation and at the seals of close(), some at "pages" points, a
    fifth of the rest at commits that grew the file, so both lengths are
    well covered."""
    create = [e.index for e in events if e.kind == "create"]
    seal = [e.index for e in events if e.kind == "seal"]
    pages = [e.index for e in events if e.kind == "pages"]
    commit = [e.index for e in events if e.kind == "commit"]
    grown = [e.index for e in events if e.kind == "commit" and e.new_len != e.old_len]
    out = []
    for k in range(first, last):
        rng = random.Random("powerloss:%s:%d" % (seed, k))
        r = rng.random()
        if r < 0.03 or not commit:
            pool = create
        elif r < 0.06 and seal:
            pool = seal
        elif r < 0.2 and pages:
            pool = pages
        else:
            pool = grown if grown and rng.random() < 0.2 else commit
        out.append((k, rng.choice(pool), rng))
    return out


def images_sync(events, states, seed, first, last, page_size):
    """Yield the sync=True crash images first..last-1 (in event order)."""
    spp = page_size // SECTOR
    plans = sorted(plan_sync(events, seed, first, last), key=lambda t: (t[1], t[0]))
    shadow = bytearray()
    at = 0                          # the writes of events[:at] are applied to shadow
    for k, ei, rng in plans:
        while at < ei:
            apply_delta(shadow, events[at].new_len, events[at].delta)
            at += 1
        e = events[ei]
        if e.kind == "create":
            mode = rng.choice(DATA_MODES)
            length, lname = _length(rng, e.old_len, e.new_len)
            chosen = choose_sectors(rng, mode, e.delta, spp)
            img = bytearray(shadow)
            apply_delta(img, length, {s: e.delta[s] for s in chosen})
            yield Image(k, e, "create:" + mode, lname, bytes(img), "empty-or-error",
                        "%d of %d sectors" % (len(chosen), len(e.delta)))
            continue
        if e.kind == "seal":
            # every commit is durable: the copy of the newest meta landing or
            # not (or torn) changes nothing
            (s,) = e.delta
            mmode = rng.choice(META_MODES)
            old = bytes(shadow[s * SECTOR:(s + 1) * SECTOR]).ljust(SECTOR, b"\0")
            img = bytearray(shadow)
            img[s * SECTOR:(s + 1) * SECTOR] = tear_meta(rng, mmode, old, e.delta[s])
            yield Image(k, e, "seal:" + mmode, "same-length", bytes(img), (e.hi, e.hi, True), "close()'s seal")
            continue
        metas = [s for s in e.delta if is_meta(s, spp)]
        pages = {s: d for s, d in e.delta.items() if not is_meta(s, spp)}
        if rng.random() < 0.15:
            mode = "all"
        else:
            mode = rng.choice(DATA_MODES)
        length, lname = _length(rng, e.old_len, e.new_len)
        chosen = choose_sectors(rng, mode, pages, spp)
        img = bytearray(shadow)
        apply_delta(img, length, {s: pages[s] for s in chosen})
        # the pages the commit's record lists (with writemap a commit may also
        # have written pages it did not use: nothing reads those)
        used = [s for s in pages if e.listed is None or s // spp in e.listed]
        landed_set = set(chosen)
        every_page = all(s in landed_set and (s + 1) * SECTOR <= length for s in used)
        if e.kind == "pages":
            yield Image(k, e, "pages:" + mode, lname, bytes(img), (e.txn - 1,) * 2 + (True,),
                        "pages-first, %d of %d sectors" % (len(chosen), len(pages)))
            continue
        (s,) = metas
        new = e.delta[s]
        old = bytes(shadow[s * SECTOR:(s + 1) * SECTOR]).ljust(SECTOR, b"\0")
        mmode = "meta-all" if mode == "all" and rng.random() < 0.6 else rng.choice(META_MODES)
        got = tear_meta(rng, mmode, old, new)
        img[s * SECTOR:(s + 1) * SECTOR] = got
        landed = got[:META_SIZE] == new[:META_SIZE]
        fits = meta_field(new, M_HWM) * page_size <= length
        done = landed and every_page and fits
        want = e.txn if done else e.txn - 1
        yield Image(k, e, "%s+%s" % (mode, mmode), lname, bytes(img), (want, want, True),
                    "%d of %d sectors; meta %s%s" % (len(chosen), len(pages), "landed" if landed else "lost or torn",
                                                      "" if fits else "; the file is shorter than its meta needs"))


def _nosync_moment(events, moments, rng):
    """(moment event index, during): a crash right after event m's writes,
    or during its fdatasync (``during``, sync points only)."""
    if rng.random() < 0.03:
        return 0, True              # during the creation's sync
    m = rng.choice(moments)
    return m, events[m].sync and rng.random() < 0.75


def images_nosync(events, states, seed, first, last, page_size):
    """Yield the sync=False crash images first..last-1 (see the module doc)."""
    spp = page_size // SECTOR
    ps = page_size
    plans = []
    moments = [e.index for e in events[1:] if e.delta or e.sync]
    for k in range(first, last):
        rng = random.Random("powerloss:%s:%d" % (seed, k))
        m, during = _nosync_moment(events, moments, rng)
        # the last completed sync: the shadow the crash starts from
        s = m if (events[m].sync and not during) else max(
            (e.index for e in events[:m] if e.sync), default=-1)
        # in a flush's window (after its start, before the engine took up its
        # end): a flush in the background may not have completed yet, the
        # crash then starts from the sync before it (annotate, Event.bg)
        window = None
        if events[m].bg is not None and (during or not events[m].sync):
            window = "completed"
            if rng.random() < 0.5:
                s, window = events[m].bg, "not completed"
        plans.append((s, m, k, during, rng, window))
    plans.sort(key=lambda t: (t[0], t[2]))
    shadow = bytearray()
    at = 0                          # the writes of events[:at] are applied to shadow
    for s, m, k, during, rng, window in plans:
        while at <= s:
            apply_delta(shadow, events[at].new_len, events[at].delta)
            at += 1
        e = events[m]
        if s < 0:                   # during the creation's sync: nothing acknowledged
            mode = rng.choice(DATA_MODES)
            length, lname = _length(rng, e.old_len, e.new_len)
            chosen = choose_sectors(rng, mode, e.delta, spp)
            img = bytearray()
            apply_delta(img, length, {x: e.delta[x] for x in chosen})
            yield Image(k, e, "create:" + mode, lname, bytes(img), "empty-or-error",
                        "%d of %d sectors" % (len(chosen), len(e.delta)))
            continue
        base = events[s]
        since = events[s + 1:m + 1]
        lo, hi = base.lo, e.hi
        # every version of every page written since the last completed sync
        versions = {}
        cur = {}
        writes = []                 # (event, sector) in the order written
        for ev in since:
            for pg in sorted({x // spp for x in ev.delta}):
                if pg not in versions:
                    old = bytes(shadow[pg * ps:(pg + 1) * ps]).ljust(ps, b"\0")
                    versions[pg] = [old]
                    cur[pg] = bytearray(old)
            for x in sorted(ev.delta, key=lambda x: (is_meta(x, spp), x)):     # pages, then the meta
                pg = x // spp
                o = (x - pg * spp) * SECTOR
                cur[pg][o:o + SECTOR] = ev.delta[x]
                writes.append((ev, x))
            for pg in {x // spp for x in ev.delta}:
                versions[pg].append(bytes(cur[pg]))
        lengths = sorted({base.new_len} | {ev.new_len for ev in since})
        mode = rng.choices(NOSYNC_MODES, NOSYNC_WEIGHTS)[0]
        img = bytearray(shadow)
        expect = (lo, hi, False)
        note = ""
        if mode == "none":
            length = rng.choice(lengths)
            apply_delta(img, length, {})
            expect = (base.hi, base.hi, True)
        elif mode == "all":
            length = e.new_len
            apply_delta(img, length, {})
            for pg, vs in versions.items():
                img[pg * ps:(pg + 1) * ps] = vs[-1]
            expect = (hi, hi, True)
        elif mode == "prefix":
            cut = rng.randint(0, len(writes))
            length = writes[cut - 1][0].new_len if cut else base.new_len
            apply_delta(img, length, {x: ev.delta[x] for ev, x in writes[:cut]})
            note = "%d of %d sectors in order" % (cut, len(writes))
        else:
            length = rng.choice(lengths)
            apply_delta(img, length, {})
            q = rng.random()
            torn = 0
            metas = []
            for pg, vs in versions.items():
                if (pg + 1) * ps > length:
                    continue
                if pg < META_PAGES:
                    # version 0: as at the last completed sync; tears inside the sector
                    if mode == "pages":
                        v = rng.randrange(len(vs))
                        got, what = vs[v][:SECTOR], "version %d" % v
                    else:
                        a, b = sorted(rng.sample(range(len(vs)), 2)) if len(vs) > 2 else (0, len(vs) - 1)
                        mm = rng.choice(META_MODES) if mode == "versions" else rng.choice(("meta-none", "meta-all"))
                        got = tear_meta(rng, mm, vs[a][:SECTOR], vs[b][:SECTOR])
                        what = ("version %d" % (a if mm == "meta-none" else b) if mm in ("meta-none", "meta-all")
                                else "torn (%s) between versions %d and %d" % (mm, a, b))
                    img[pg * ps:pg * ps + SECTOR] = got
                    metas.append("meta %d %s of %d" % (pg, what, len(vs) - 1))
                    continue
                r = rng.random()
                if mode == "pages":
                    page = vs[-1] if r < q else vs[0]
                elif mode == "torn" and r < 0.4:
                    page = vs[-1]
                elif mode == "torn" and r < 0.7:
                    page = vs[0]
                elif mode == "versions" and r < 0.5:
                    page = rng.choice(vs)
                else:
                    torn += 1
                    page = b"".join(rng.choice(vs)[i * SECTOR:(i + 1) * SECTOR] for i in range(spp))
                img[pg * ps:(pg + 1) * ps] = page
            note = "%d torn pages; %s" % (torn, "; ".join(metas) or "no meta written")
        lname = "same-length" if len(lengths) == 1 else "old-length" if length < lengths[-1] else "new-length"
        yield Image(k, e, mode, lname, bytes(img), expect,
                    "crash %s %r; last completed sync #%d%s; %d pages written since (%s); %s" % (
                        "during" if during else "after", e, s,
                        " (the flush in flight not completed)" if window == "not completed" else
                        " (in a flush's window)" if window else "", len(versions),
                        ",".join(sorted({ev.kind for ev in since})) or "-", note), window=window)


# ---------------------------------------------------------------- verification

class Hang(Exception):
    pass


def _on_alarm(sig, frame):
    raise Hang("image took longer than %ds" % IMAGE_TIMEOUT)


def _create_image(path, cfg, img):
    """Nothing was acknowledged: an empty database (a file of length zero,
    or any leftover of creation, is initialised by the engine; the checker
    finds no database in it) or a clear error.  Returns (outcome, error)."""
    import kvmap
    from kvmap.checker import CheckUnreadable, check
    try:
        chk = "ok" if check(path).ok else "problems"
    except CheckUnreadable:
        chk = "unreadable"
    try:
        db = kvmap.open(path, **cfg)
    except kvmap.Error as e:
        return "create-open-error:" + type(e).__name__, None
    try:
        n = len(dict(db.items()))
        db[PROBE_KEY] = b"after the crash"
        back = db[PROBE_KEY]
    finally:
        db.close()
    leftover = chk == "unreadable" and crashkit.creation_leftover(img.data, cfg.get("page_size", 4096))
    out = "create-empty-check-" + chk
    if n or back != b"after the crash" or not (chk == "ok" or leftover):
        return out, "a creation image gave %d items, check %s" % (n, chk)
    return out, None


def verify_image(img, path, cfg, states):
    """Returns (outcome, error): error is None or the text of a failure."""
    import kvmap
    with open(path, "wb") as f:
        f.write(img.data)
    try:
        if img.expect == "empty-or-error":
            return _create_image(path, cfg, img)
        lo, hi, exact = img.expect
        want = "the state after transaction %d" % hi if exact else "a state after a transaction in %d..%d" % (lo, hi)
        try:
            db = kvmap.open(path, readonly=True, **cfg)
            try:
                ro = [j for j in states.which(dict(db.items())) if lo <= j <= hi]
                fallback = db.stats()["meta_fallback"]
            finally:
                db.close()
            if not ro:
                raise crashkit.CrashCheckFailed("a read-only open: %s" % _which_state(path, dict(cfg, readonly=True),
                                                                                    states))
            # the recovery commits once (the probe key); for odd k with
            # sync=False and a small sync_bytes: a flush of its own (started,
            # or the commit's) beside the metas the crash left, then close's
            # seal -- and the file holds that commit when opened again
            nosync = img.k % 2 == 1
            kw = dict(cfg, sync=False, sync_bytes=8192) if nosync else cfg
            n = crashkit.verify(path, states, hi, oldest=lo, open_kw=kw, allow_next=False, probe=PROBE_KEY)
        except crashkit.CrashCheckFailed as e:
            return "failed", "expected %s: %s (%s)" % (want, e, _which_state(path, cfg, states))
        except kvmap.Error as e:
            return "failed", "expected %s: %s: %s" % (want, type(e).__name__, e)
        err = _reopened(path, cfg, states, n) if nosync else None
        if err:
            return "failed", err
        if exact:
            return "exact", None
        tag = "state-newest" if n == hi else "state-durable" if n == lo else "state-between"
        return tag + ("-fallback" if fallback else ""), None
    finally:
        os.unlink(path)


def _reopened(path, cfg, states, n):
    """The file, opened again after crashkit.verify's commit on the state
    after transaction n, holds that state and the probe key: None, or the
    text of a failure."""
    import kvmap
    try:
        db = kvmap.open(path, readonly=True, **cfg)
        try:
            got = dict(db.items())
        finally:
            db.close()
    except kvmap.Error as e:
        return "reopened after the commit made after the crash: %s: %s" % (type(e).__name__, e)
    probe = got.pop(PROBE_KEY, None)
    if probe == b"written after the crash" and got == states.states[n]:
        return None
    return "reopened after the commit made after the crash on the state after transaction %d: the state after " \
           "transaction(s) %s, %s" % (n, states.which(got) or "none",
                                      "the probe key lost" if probe is None else "the probe key")


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
    events, states, problems, plan = record(spec["config"], spec["sync"], spec["seed"], spec["commits"],
                                            spec["page_size"], directory=tmp, flush_mode=spec.get("flush_mode"))
    first, last = (only, only + 1) if only is not None else (0, spec["losses"])
    gen = images_sync if spec["sync"] else images_nosync
    res = dict(spec=spec, modes=Counter(), lengths=Counter(), outcomes=Counter(), failures=[],
               problems=problems, losses=0, examples={}, events=Counter(e.kind + ("/" + e.why if e.why else "")
                                                                      for e in events),
               unplanned_flushes=plan["unplanned_flushes"], flush_mode=plan["flush_mode"],
               flight=Counter({"flushes started": sum(e.start for e in events),
                               "commits beside a flush in flight": sum(e.third for e in events)}))
    path = os.path.join(tmp, "image.kv")
    old = signal.signal(signal.SIGALRM, _on_alarm)
    # the verification's own syncs (its commit, the flush of a reopened
    # image, close's seal) need not wait for the disk
    from kvmap._lib import ffi, lib
    no_sync = ffi.callback("int(int)", lambda fd: 0)
    lib.kvm_set_sync_hook(no_sync)
    lib.kvm_set_flush_mode(1)       # no thread calls the hook (verify_image's sync=False commits)
    try:
        for img in gen(events, states, spec["seed"], first, last, spec["page_size"]):
            print("IMG %d" % img.k, file=out, flush=True)
            if img.k == spec.get("abort_at"):       # self-test: the engine crashing on an image
                os.abort()
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
            if img.window:
                res["flight"]["images in a flush's window, %s" % img.window] += 1
                if err:
                    res["flight"]["failures in a flush's window, %s" % img.window] += 1
            if err:
                res["failures"].append(dict(image=img.k, mode=img.mode, length=img.length,
                                            point=repr(img.point), note=img.note, error=err))
    finally:
        lib.kvm_set_sync_hook(ffi.NULL)
        lib.kvm_set_flush_mode(0)
        signal.signal(signal.SIGALRM, old)
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    res["seconds"] = round(time.time() - t0, 2)
    return res


# ---------------------------------------------------------------- driver

def plan(losses=None, seed=1, *, long=False, configs=None, nosync=None, per_batch=None):
    """Batch specs over the configurations: ``losses`` sync=True images and
    ``nosync`` sync=False ones (default: DEFAULT_LOSSES, or LONG_LOSSES
    with ``long``)."""
    configs = list(configs or CONFIGS)
    dflt = LONG_LOSSES if long else DEFAULT_LOSSES
    n_sync = dflt[0] if losses is None else losses
    n_nosync = dflt[1] if nosync is None else nosync
    commits = 150 if long else 60
    per_batch = per_batch or (200 if long else 150)
    specs = []
    for sync, total in ((True, n_sync), (False, n_nosync)):
        if total <= 0:
            continue
        each = -(-total // len(configs))
        for ci, c in enumerate(configs):
            left = min(each, total - ci * each)
            nb = -(-left // per_batch)       # batches of this configuration, of even sizes
            b = 0
            while left > 0:
                n = -(-left // (nb - b))
                specs.append(dict(config=c, sync=sync, seed=seed * 1000 + ci * 10 + b + (500 if not sync else 0),
                                  commits=commits, losses=n,
                                  page_size=8192 if (long and b % 3 == 2) else 4096))
                left -= n
                b += 1
    return specs


def replay_command(spec, image):
    return ("python tools/powerloss.py --config %s%s --seed %d --commits %d --page-size %d%s --image %d "
            "--keep /tmp/powerloss-image.kv" % (
                spec["config"], "" if spec["sync"] else " --nosync",
                spec["seed"], spec["commits"], spec["page_size"],
                " --flush-mode %d" % spec["flush_mode"] if spec.get("flush_mode") is not None else "", image))


def run_child(specs, timeout=1800):
    """Run batches, one after another, in a child process (``--batch`` with
    a list); a list of results.  A crash or hang of the child becomes a
    failure of the batch it was in, naming the image it was on, and the
    batches after it run in a new child."""
    if isinstance(specs, dict):
        specs = [specs]
    cmd = [sys.executable, os.path.abspath(__file__), "--batch", json.dumps(specs)]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(specs), env=env)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = "TIMEOUT after %ss" % (timeout * len(specs))
    results, imgs = [], []
    for line in stdout.splitlines():
        if line.startswith("BATCH "):
            imgs = []
        elif line.startswith("IMG "):
            imgs.append(int(line.split()[1]))
        elif line.startswith("RESULT "):
            res = json.loads(line[7:])
            for f in res["failures"]:
                f["replay"] = replay_command(res["spec"], f["image"])
            results.append(res)
    if len(results) == len(specs):
        if rc != 0 and not results[-1]["failures"]:
            results[-1]["failures"].append(dict(error="child exited with %r" % rc, stderr=stderr[-3000:]))
        return results
    spec = specs[len(results)]
    at = imgs[-1] if imgs else None
    results.append(dict(
        spec=spec, modes={}, lengths={}, outcomes={}, examples={}, events={}, unplanned_flushes=[], flight={},
        losses=len(imgs) - 1 if imgs else 0, problems=[], seconds=None,
        failures=[dict(image=at, error="child died (returncode %r) %s" % (
            rc, "while recording" if at is None else "on image %d" % at),
            stderr=stderr[-3000:],
            replay=replay_command(spec, at) if at is not None else
            "python tools/powerloss.py --batch '%s'" % json.dumps(spec))]))
    rest = specs[len(results):]
    return results + (run_child(rest, timeout) if rest else [])


def run_specs(specs, jobs=None, per_child=4):
    """Run the batches, ``jobs`` children at a time, ``per_child`` batches in
    each (a child's start costs about what 30 images do); the list of
    results, in the order of ``specs``."""
    jobs = jobs or os.cpu_count() or 1
    chunks = [specs[i:i + per_child] for i in range(0, len(specs), per_child)]
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        return [res for part in ex.map(run_child, chunks) for res in part]


def summarize(results):
    """A table of counts by configuration and mode; failures last."""
    by_cfg = Counter()
    modes = {True: Counter(), False: Counter()}
    lengths = Counter()
    outcomes = {True: Counter(), False: Counter()}
    events = {True: Counter(), False: Counter()}
    flight = Counter()
    failures = []
    problems = []
    unplanned = 0
    for r in results:
        s = r["spec"]
        key = "%-16s %s" % (s["config"], "sync=True " if s["sync"] else "sync=False")
        by_cfg[key] += r["losses"]
        modes[s["sync"]].update(r["modes"])
        lengths.update(r["lengths"])
        outcomes[s["sync"]].update(r["outcomes"])
        events[s["sync"]].update(r.get("events", {}))
        flight.update(r.get("flight", {}))
        unplanned += len(r.get("unplanned_flushes", ()))
        failures += r["failures"]
        problems += ["%s seed %d: %s" % (s["config"], s["seed"], p) for p in r["problems"]]
    total = {sync: sum(r["losses"] for r in results if r["spec"]["sync"] == sync) for sync in (True, False)}
    lines = ["simulated power losses: %d (sync=True %d, sync=False %d)" % (
        sum(by_cfg.values()), total[True], total[False]), "", "by configuration:"]
    lines += ["  %-28s %6d" % (k, v) for k, v in sorted(by_cfg.items())]
    for sync in (True, False):
        if modes[sync]:
            lines += ["", "by mode, sync=%s:" % sync] + ["  %-28s %6d" % (k, v) for k, v in sorted(modes[sync].items())]
    lines += ["", "by file length:"] + ["  %-28s %6d" % (k, v) for k, v in sorted(lengths.items())]
    for sync in (True, False):
        if outcomes[sync]:
            lines += ["", "outcomes, sync=%s:" % sync]
            lines += ["  %-28s %6d" % (k, v) for k, v in sorted(outcomes[sync].items())]
    for sync in (True, False):
        if events[sync]:
            lines += ["", "recorded events, sync=%s (kind/why):" % sync]
            lines += ["  %-28s %6d" % (k, v) for k, v in sorted(events[sync].items())]
    if unplanned:
        lines += ["  (%d commits flushed by sync_interval without a planned sleep: the first after an open,"
                  " or a slow machine)" % unplanned]
    if flight:
        lines += ["", "flushes in flight (sync=False; their end taken up at the k-th write transaction's begin, "
                      "k the run's flush mode):"]
        lines += ["  %-44s %6d" % (k, v) for k, v in sorted(flight.items())]
    lines += ["", "simulator problems (broken write-protocol rules): %d" % len(problems)]
    lines += ["  " + p for p in problems[:20]]
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
    ap.add_argument("--losses", type=int,
                    help="sync=True images to verify (default %d; --long %d)" % (DEFAULT_LOSSES[0], LONG_LOSSES[0]))
    ap.add_argument("--nosync-losses", type=int,
                    help="sync=False images to verify (default %d; --long %d)" % (DEFAULT_LOSSES[1], LONG_LOSSES[1]))
    ap.add_argument("--long", action="store_true",
                    help="%d + %d images, 150-transaction runs, some 8 KiB pages" % LONG_LOSSES)
    ap.add_argument("--seed", type=int, default=1, help="base seed (batch seeds derive from it)")
    ap.add_argument("--jobs", type=int, help="child processes at a time (default: CPUs)")
    ap.add_argument("--configs", help="comma-separated config ids (default: all: %s)" % ", ".join(CONFIGS))
    ap.add_argument("--config", help="with --image: the run's configuration")
    ap.add_argument("--nosync", action="store_true", help="with --image: the run used sync=False")
    ap.add_argument("--commits", type=int, default=60, help="with --image: transactions in the run")
    ap.add_argument("--page-size", type=int, default=4096, help="with --image: the run's page size")
    ap.add_argument("--image", type=int, help="replay one image of the run (--config, --seed, ...)")
    ap.add_argument("--flush-mode", type=int,
                    help="with --image: the write transactions after which the engine takes up a flush's end "
                         "(default: the run's plan, 1 to 4 by the seed)")
    ap.add_argument("--keep", help="with --image: write the image to this file too")
    ap.add_argument("--batch", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.batch:
        specs = json.loads(a.batch)
        for spec in specs if isinstance(specs, list) else [specs]:
            print("BATCH", flush=True)
            res = run_batch(spec)
            print("RESULT " + json.dumps(res), flush=True)
        return 0
    if a.image is not None:
        if a.config not in CONFIGS:
            ap.error("--image needs --config, one of: " + ", ".join(CONFIGS))
        spec = dict(config=a.config, sync=not a.nosync, seed=a.seed, commits=a.commits, losses=a.image + 1,
                    page_size=a.page_size)
        if a.flush_mode is not None:
            spec["flush_mode"] = a.flush_mode
        res = run_batch(spec, only=a.image, keep=a.keep)
        print(summarize([res]))
        for f in res["failures"]:
            print("\n%s\n  %s\n  %s" % (f["point"], f["note"], f["error"]))
        if res["unplanned_flushes"]:
            print("note: commits %s flushed by sync_interval without a planned sleep; a run on a slower or "
                  "faster machine may record other flush points (and so another image k)" % res["unplanned_flushes"])
        if a.keep:
            print("image kept in %s" % a.keep)
        return 1 if res["failures"] or res["problems"] else 0
    configs = a.configs.split(",") if a.configs else None
    for c in configs or ():
        if c not in CONFIGS:
            ap.error("unknown config %r" % c)
    specs = plan(a.losses, a.seed, long=a.long, configs=configs, nosync=a.nosync_losses)
    t0 = time.time()
    results = run_specs(specs, a.jobs)
    print(summarize(results))
    print("\n%d batches in %.1f s" % (len(specs), time.time() - t0))
    bad = any(r["failures"] or r["problems"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
