"""Salvage: the newest committed state of a damaged file, as far as it can
be read intact, copied into a new database through the engine.

Salvage recovers the newest committed state: the tree of the newest valid
meta, even when that meta does not fit a truncated file (the check itself
then reports on the older meta).  It walks that tree through intact pages
only and records the key range of every subtree it cannot read.  An intact
leaf that the walk does not reach (an "orphan") is taken only when it is
provably the current content of such a range:

* its page is not listed free or pending by the newest free space (when
  that was read whole: a damaged one may list a current leaf), and its
  header txnid is not above the newest meta's;
* all its keys lie in one missing range of a subtree rooted at a branch (a
  range whose missing page is itself the leaf is "dead": the leaf is lost);
* no intact leaf with a higher txnid has keys overlapping its span.  A
  commit that changes a leaf's key range rewrites the leaf (split, merge,
  rebalance), so the leaf covering a key at the newest commit is the newest
  version ever written for that key: an overlapping newer version proves
  this one old;
* and the newest free space was read whole (every page of it intact), so
  every page freed since is known; or its txnid is the newest commit's.

An orphan that passes all but the last test cannot be told apart from an
older version whose replacement is lost: its entries are not copied, only
counted, or written to a separate database when asked (``unverified``).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional

from ..db import Database, open as open_engine
from .pagelayout import (CELL_PAST_END, HDR, NO_TXNID_LIMIT, OVERFLOW, PAGE_OK, PT_LEAF, PT_OVERFLOW, SUM_HOLDS,
                         PageReader, crc32c, header, u32, uint8_array)
from .report import CheckReport, CheckUnreadable
from .snapshot import HeldCommit, Unchanged, at_rest_note, open_file, register
from .walk import FREE_SPACE_PAGES, Checker, Progress, run

if TYPE_CHECKING:
    from _typeshed import StrPath


@dataclass
class SalvageResult:
    report: CheckReport
    out: str
    meta_used: Optional[int]  # the meta whose tree was salvaged: the newest valid one
    recovered: int          # distinct keys written to ``out``
    lost: int               # meta entries - recovered (never below 0)
    damaged_leaves: List[int] = field(default_factory=list)
    lost_values: int = 0    # entries whose overflow chain was damaged or missing
    orphan_leaves: List[int] = field(default_factory=list)
    from_orphans: int = 0   # entries found only in (proven current) orphan leaves
    missing_ranges: int = 0  # key ranges of the tree that could not be read
    unverified: int = 0     # entries of orphan leaves not proven current (not in ``out``)
    unverified_leaves: List[int] = field(default_factory=list)
    unverified_out: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def _salvage_state(c: Checker) -> Checker:
    """The checker state salvage reads by: the check's own when it checked
    the newest valid meta, or a snapshot's commit beside meta pages that
    later commits rewrote (live_metas: no newer meta is judged); else the
    newest meta's free space, walked afresh."""
    newest = c.newest
    if c.meta_used == newest or newest is None:
        s = c
    else:
        s = Checker(c.fd, c.path, c.file_size, True, 0, None)
        s.metas, s.newest, s.meta_used = c.metas, newest, newest
        s.meta = c.metas[newest]
        s.notes = []
        s.setup()
        s.walk_free()
    s.free_complete = s.free_complete and _free_pages_intact(s)
    s.intact = PageReader(s.fd, s.ps, s.npages, NO_TXNID_LIMIT, True, every_key=True)
    return s


_FREE_SPACE_CODES = bytes(1 if i in FREE_SPACE_PAGES else 0 for i in range(256))


def _free_pages_intact(s: Checker) -> bool:
    """Do the checksums of all the free-space pages (index, bitmaps, live
    records) match?"""
    want = s.owner.translate(_FREE_SPACE_CODES)
    s.reader.checksums(uint8_array(want), s.sums_c, s.first, s.npages)
    p = want.find(1, s.first)
    while p != -1:
        if s.sums[p] != SUM_HOLDS:
            return False
        p = want.find(1, p + 1)
    return True


# A cell of an intact page: key, status (CELL_PAST_END: its value runs past
# the page), inline value offset (0: in overflow pages), value length, page
# (a branch's child, a leaf's first overflow page).
_Cell = tuple[bytes, int, int, int, int]


def _intact_cells(s: Checker, buf: bytes, page: int, leaf: bool) -> Optional[list[_Cell]]:
    """The cells of an intact branch or leaf page (checksum, page number,
    type, bounds, keys strictly increasing: checkpage.c with salvage's
    rules), or None."""
    res = s.intact.tree_page(page, buf, leaf, None, None)
    if res.verdict != PAGE_OK or res.checksum != 1:
        return None
    events, cells = s.intact.events, s.intact.cells
    if any(events[j].kind not in (CELL_PAST_END, OVERFLOW)
           for j in range(res.first_event, res.first_event + res.nevents)):
        return None
    return [(bytes(buf[c.key:c.key + c.key_length]), c.status, c.value, c.value_length, c.page)
            for c in (cells[i] for i in range(res.nkeys))]


def _salvage_tree(s: Checker) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of every leaf of the salvage meta's tree reached
    through intact pages whose keys lie in the range their ancestors set;
    values whose overflow pages are all intact.  A subtree that cannot be
    read so is not followed: a branch's range goes to ``s.missing``; a lost
    leaf's range is dead (``s.dead``)."""
    ps, fd = s.ps, s.fd
    root, depth = s.meta["root"], s.meta["depth"]
    s.damaged_leaves, s.lost_values = [], 0
    s.missing, s.dead = [], 0
    s.taken = bytearray(s.npages)
    if root == 0:
        return
    seen = bytearray(s.npages)                 # branches visited: each once
    # page, level, lo, hi (None: no bound)
    stack: list[tuple[int, int, bytes, Optional[bytes]]] = [(root, 0, b"", None)]
    while stack:
        page, level, lo, hi = stack.pop()
        leaf = level == depth - 1
        inside = s.first <= page < s.npages
        if inside and (s.taken[page] or seen[page]):
            s.missing.append((lo, hi))         # one page behind two pointers
            continue
        buf = os.pread(fd, ps, page * ps) if inside else b""
        cells = _intact_cells(s, buf, page, leaf) if inside else None
        if cells is None:                      # past the end, out of range or damaged
            if not leaf:
                s.missing.append((lo, hi))
            else:
                s.dead += 1
                if inside:
                    s.damaged_leaves.append(page)
            continue
        keys = [c[0] for c in cells]
        if any(k < lo or (hi is not None and k >= hi) for k in keys[1 if not leaf else 0:]):
            s.missing.append((lo, hi))         # in the wrong place: a bad pointer
            continue
        if leaf:
            s.taken[page] = 1
            yield from _leaf_pairs(s, buf, cells)
            continue
        seen[page] = 1
        for i in range(len(keys) - 1, -1, -1):
            stack.append((cells[i][4], level + 1, keys[i] if i else lo,
                          keys[i + 1] if i + 1 < len(keys) else hi))


def _salvage_orphans(s: Checker) -> Iterator[tuple[int, bytes, list[_Cell], bool]]:
    """Yield (page, buf, cells, verified) for each orphan leaf that lies in
    one missing range and that no newer leaf version overlaps (see above)."""
    if not s.missing:
        return
    ps, T = s.ps, s.meta["txnid"]
    s.missing.sort(key=lambda r: r[0])
    rlo = [r[0] for r in s.missing]
    rhi = [r[1] for r in s.missing]
    # candidates: intact leaves at their own page, not taken, not free (as
    # far as the free space can tell)
    cands = []
    chunk = max(4, (8 << 20) // ps)
    p = s.first
    while p < s.npages:
        cnt = min(chunk, s.npages - p)
        buf = os.pread(s.fd, cnt * ps, p * ps)
        mv = memoryview(buf)
        for i in range(min(cnt, len(buf) // ps)):
            pg, o = p + i, i * ps
            if s.taken[pg] or (s.freed[pg] and s.free_complete) or buf[o + 4] != PT_LEAF:
                continue
            _, _, _, nkeys, txnid, pgno, _ = header(buf, o)
            if (pgno == pg and nkeys and txnid <= T
                    and crc32c(mv[o + 4:o + ps]) == u32(buf, o)[0]):
                cands.append((txnid, pg))
        p += cnt
    cands.sort(reverse=True)
    los: list[bytes] = []        # union of the key spans of newer versions, disjoint
    his: list[bytes] = []
    i = 0
    while i < len(cands):
        t = cands[i][0]
        j = i
        while j < len(cands) and cands[j][0] == t:
            j += 1
        spans = []
        for _, pg in cands[i:j]:
            buf = os.pread(s.fd, ps, pg * ps)
            cells = _intact_cells(s, buf, pg, True)
            if cells is None:
                continue
            a, b = cells[0][0], cells[-1][0]
            spans.append((a, b))
            k = bisect.bisect_right(los, b) - 1
            if k >= 0 and his[k] >= a:
                continue                         # a newer version overlaps: old
            k = bisect.bisect_right(rlo, a) - 1
            if k < 0 or (rhi[k] is not None and b >= rhi[k]):  # type: ignore[operator]   # not None
                continue                         # not inside one missing range
            yield pg, buf, cells, s.free_complete or t == T
        for a, b in spans:                       # same txnid: no conflict among them
            lo_i = bisect.bisect_left(his, a)
            hi_i = bisect.bisect_right(los, b)
            if lo_i < hi_i:
                a, b = min(a, los[lo_i]), max(b, his[hi_i - 1])
            los[lo_i:hi_i] = [a]
            his[lo_i:hi_i] = [b]
        i = j


def _leaf_pairs(c: Checker, buf: bytes, cells: list[_Cell]) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of an intact leaf (its bytes ``buf``, its ``cells``) that
    can be read whole: a cell within the page, the value's overflow pages
    intact."""
    for key, status, value, vlen, first in cells:
        if status:
            continue
        if value:
            yield key, bytes(buf[value:value + vlen])
            continue
        whole = _read_chain(c, first, vlen)
        if whole is None:
            c.lost_values += 1
        else:
            yield key, whole


def _read_chain(c: Checker, p: int, vlen: int) -> Optional[bytes]:
    ps, usable = c.ps, c.usable
    n = -(-vlen // usable)
    parts = []
    seen = set()
    for k in range(n):
        if not c.first <= p < c.npages or p in seen:
            return None
        seen.add(p)
        buf = os.pread(c.fd, ps, p * ps)
        if len(buf) < ps:
            return None
        crc, ptype, _, _, _, pgno, nxt = header(buf, 0)
        if ptype != PT_OVERFLOW or pgno != p or crc32c(memoryview(buf)[4:]) != crc:
            return None
        if (k == n - 1) != (nxt == 0):
            return None
        parts.append(buf[HDR:HDR + min(usable, vlen - k * usable)])
        p = nxt
    return b"".join(parts)


class _Sink:
    """Writes pairs into a database in transactions of ``batch`` pairs;
    with ``new_only`` a key already there is kept."""

    def __init__(self, db: Database, batch: int, new_only: bool) -> None:
        self.db, self.batch, self.new_only = db, batch, new_only
        self.pending: list[tuple[bytes, bytes]] = []

    def add(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for kv in pairs:
            self.pending.append(kv)
            if len(self.pending) >= self.batch:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.db.transaction() as t:
                for k, v in self.pending:
                    if not (self.new_only and k in t):
                        t[k] = v
            self.pending = []


def salvage(path: StrPath, out: StrPath, *, unverified: Optional[StrPath] = None,
            progress: Optional[Progress] = None, batch: int = 10_000) -> SalvageResult:
    """Copy every key/value of the newest committed state of ``path`` that
    can be read intact into a new database at ``out`` (which must not
    exist); the source is only read.  ``unverified``: an optional path for a
    second new database that receives the entries of intact orphan leaves
    that cannot be proven current (they may be older versions or deleted
    keys); without it they are only counted.  Raises CheckUnreadable if the
    source has no valid meta, FileExistsError if an output exists.

    A database in use is read through a snapshot, as :func:`check` reads it,
    and its commit copied while writers go on.  Where the salvage reads
    outside a snapshot (the file at rest, or a newest meta that the engine
    passes over) and a commit lands meanwhile, the result's
    ``report.changed`` is True and it reports no damage (``lost``,
    ``damaged_leaves``, ``lost_values`` and ``missing_ranges`` are 0): the
    outputs were copied from a changing file and may mix commits or miss
    entries; delete them and salvage again when the writer is idle."""
    for o in (out, unverified):
        if o is not None and os.path.lexists(o):
            raise FileExistsError(f"{o} already exists")
    fd = open_file(path)
    try:
        held, why = register(fd, path)
        try:
            unchanged = Unchanged(fd, path)
            try:
                res, outside = _salvage(fd, path, out, unverified, progress, batch, held)
            except CheckUnreadable:
                if held is not None or not unchanged.changed():
                    raise
                return SalvageResult(
                    report=CheckReport(ok=False, changed=True),
                    out=os.fspath(out), meta_used=None, recovered=0, lost=0,
                    notes=["the file changed during the salvage (a writer committed) before a "
                           "meta could be read: nothing was written; salvage again when the "
                           "writer is idle"])
            if outside and unchanged.changed():
                res.report = CheckReport(ok=False, changed=True)
                res.lost = res.lost_values = res.missing_ranges = 0
                res.damaged_leaves = []
                outs = " and ".join(o for o in (res.out, res.unverified_out) if o)
                res.notes = [f"the file changed during the salvage (a writer committed): "
                             f"{outs} may mix commits or miss entries; delete and salvage "
                             f"again when the writer is idle"]
            elif held is None:
                note = at_rest_note(why)
                res.notes.insert(len(res.report.meta_notes), note)
                res.report.meta_notes.append(note)
            return res
        finally:
            if held is not None:
                held.close()
    finally:
        os.close(fd)


def _salvage(fd: int, path: StrPath, out: StrPath, unverified: Optional[StrPath],
             progress: Optional[Progress], batch: int,
             held: Optional[HeldCommit]) -> tuple[SalvageResult, bool]:
    """salvage() on the open ``fd``, of the commit ``held`` if given; and whether
    it read a tree outside the snapshot (there is none, or the tree salvaged
    is the newest meta's, not the snapshot's commit)."""
    rep, c = run(fd, path, False, 100, progress, held)
    s = _salvage_state(c)
    db = open_engine(os.fspath(out), sync=True)
    udb = None
    try:
        sink = _Sink(db, batch, False)
        sink.add(_salvage_tree(s))
        sink.flush()
        in_tree = db.stats()["entries"]
        # then the orphan leaves proven current (the tree wins)
        s.orphans, unv_leaves, unv_pairs = [], [], 0
        sink.new_only = True
        usink = None
        for pg, buf, cells, verified in _salvage_orphans(s):
            if verified:
                s.orphans.append(pg)
                sink.add(_leaf_pairs(s, buf, cells))
                continue
            unv_leaves.append(pg)
            lost_values = s.lost_values
            pairs = list(_leaf_pairs(s, buf, cells))
            s.lost_values = lost_values
            unv_pairs += len(pairs)
            if unverified is not None:
                if usink is None:
                    udb = open_engine(os.fspath(unverified), sync=True)
                    usink = _Sink(udb, batch, True)
                usink.add(pairs)
        sink.flush()
        recovered = db.stats()["entries"]
        if usink is not None:
            usink.flush()
            assert udb is not None    # opened with usink
            unv_pairs = udb.stats()["entries"]
    finally:
        db.close()
        if udb is not None:
            udb.close()
    notes = list(rep.meta_notes)
    if s is not c:
        notes.append(f"salvaged the newest meta {s.meta_used} (txnid {s.meta['txnid']}), not "
                     f"the meta {c.meta_used} checked: its pages past the end of the file are lost")
    damaged = sorted({p.page for p in rep.problems if p.kind == "meta-damaged" and p.page is not None
                      and p.page != s.meta_used})
    if damaged:
        which = f"meta {damaged[0]} is" if len(damaged) == 1 else f"metas {damaged[0]} and {damaged[1]} are"
        notes.append(f"salvaged from meta {s.meta_used}: {which} damaged")
    if s.missing or s.dead:
        notes.append(f"{len(s.missing) + s.dead} parts of the tree are missing or damaged "
                     f"({s.dead} of them single leaves)")
    if recovered > in_tree:
        notes.append(f"{recovered - in_tree} entries come from {len(s.orphans)} intact leaf "
                     f"pages that the damaged tree no longer reaches (proven current: not "
                     f"free, no newer version, the free space read whole)")
    if unv_leaves:
        where = (f"written to {unverified}" if unverified is not None
                 else "not copied (see --unverified)")
        notes.append(f"{unv_pairs} entries in {len(unv_leaves)} intact leaf pages under the "
                     f"missing parts of the tree cannot be proven current (the newest free "
                     f"space is incomplete, or unread in a version 1 or 2 file): they may be older "
                     f"values or deleted keys; {where}")
    return SalvageResult(report=rep, out=os.fspath(out), meta_used=s.meta_used,
                         recovered=recovered, lost=max(0, s.meta["entries"] - recovered),
                         damaged_leaves=sorted(s.damaged_leaves), lost_values=s.lost_values,
                         orphan_leaves=s.orphans, from_orphans=recovered - in_tree,
                         missing_ranges=len(s.missing) + s.dead, unverified=unv_pairs,
                         unverified_leaves=sorted(unv_leaves),
                         unverified_out=None if unverified is None else os.fspath(unverified),
                         notes=notes), held is None or s is not c
