"""kvmap-check: an integrity checker for kvmap files (format v2, docs/FORMAT.md;
native/format.h).

It never trusts the file: it reads its pages with ``os.pread`` only (never
through the engine's mapping or page cache; of the engine it uses the
checksum function and, to hold the commit it checks, a read-only handle with
one snapshot), every loop is
bounded by page counts, chain lengths or the tree depth, and its memory is
bounded by one byte per page of the file (an owner code per page), not by
what the file says (the meta choice adds the runs that the records of the
commits not known durable list freed; salvage adds two bytes per page, and
the first and last key and a (txnid, page) pair of each candidate orphan
leaf).

Library (``kvmap.check`` and ``kvmap.salvage`` are this module's)::

    report = kvmap.check("data.kv")      # CheckReport
    report.ok, report.problems, report.summary, report.to_json()

Command line (exit 0: sound, 1: damage found, 2: not checked -- unreadable
file or usage error -- 3: a check of the file at rest saw it change: no
verdict)::

    kvmap-check PATH [--json] [--quick] [--max-errors N] [--salvage OUT [--unverified OUT2]]
    python -m kvmap.checker ...          # the same

A database in use: handles in other processes may commit while the check
reads, and pages of several commits would look like damage.  So the check
reads one commit, held by a snapshot that it takes through the engine
(``kvmap.open(path, readonly=True)``): the snapshot's reader slot is in the
lock file beside the database (``<path>-lock``, FORMAT.md §9), and no writer
in any process reuses a page that commit reaches while it lives.  Writers
go on meanwhile; the report names the transaction checked.  The engine
gives that commit's meta fields, the checker reads its pages itself; the
meta pages, which later commits rewrite, are checked where they still hold
the snapshot's commit (see ``_Checker.snapshot_metas``).  The file is read
at rest, without a snapshot, only when none can be registered: the engine
does not open the file (so no writer can either), or the lock file cannot be
opened.  Such a check compares the file size and the raw meta pages before
and after its reads: if they differ, a commit landed meanwhile and the
report says ``changed`` (``ok`` False, no problems listed; exit 3) instead
of giving a verdict on a mix of commits.

It checks the meta the engine's open would use (the snapshot's commit,
when no commit lands while the meta pages are read), chosen as the engine
chooses it: the newest valid meta if its commits not known durable verify
against their records, its tree's edge paths verify and the file is long
enough for it, else the durable commit that meta names (what a crash leaves
of commits not yet durable -- pages unwritten, or the file's growth lost: a
note, not a problem).  Full mode verifies both metas, the checksum
of every page it reaches, the tree (types, headers, cell bounds, key order
within pages and against every ancestor separator, uniform leaf depth),
overflow chains, the free space (bitmap index, bitmaps, the commit records
after the floor), the counts in the meta, and that every page below the
high-water mark has exactly one owner.  ``quick`` does the same without
verifying page checksums and reads only the 32-byte header of overflow pages
(never their payload).  A version 1 file is reported as such (the engine
does not open it; ``--salvage`` copies it into a new file), and only its
tree is checked.

``salvage(path, out)`` / ``--salvage OUT`` copies the newest committed state,
as far as it can be read intact (from leaves and overflow pages whose
checksums match), into a new database at OUT, written with the engine; the
source is only read.  Case by case:

* a database in use, sound or not: the snapshot's commit, the newest when
  the salvage began, read under the snapshot while writers go on (a newer
  meta that the engine passes over, below, is read as at rest: a commit
  landing meanwhile gives ``changed`` and no damage figures);
* newest meta damaged (torn, zeroed, bad fields): the older meta's tree;
* a version 1 file: its newest meta's tree (its free list is not read, so
  only orphan leaves of its newest commit are proven current);
* newest meta intact but its hwm past the end of the file (truncated): still
  the newest meta's tree (the check itself reports on the older meta when
  that one fits); pages past the end count as missing;
* a damaged or missing leaf, or overflow page: its entries (value) are lost;
* a damaged or missing branch, or a pointer into the wrong place: its subtree
  is skipped and its key range recorded; intact leaves the walk does not
  reach are then taken only when provably current (see the salvage section
  below), so OUT never holds an older value or a deleted key;
* orphan leaves that cannot be proven current (the newest free space is lost
  or damaged too) are counted (``unverified``) and, with ``unverified=OUT2``
  / ``--unverified OUT2``, written to a second new database.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Optional, TextIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, StrPath

    from .txn import Snapshot

from ._kvmap_cffi import ffi as _ffi, lib as _lib
from .db import Database, open as _open_engine
from .errors import Error

__all__ = ["check", "salvage", "SalvageResult", "main", "CheckReport", "Problem", "CheckUnreadable",
           "crc32c", "EXIT_OK", "EXIT_DAMAGE", "EXIT_UNCHECKED", "EXIT_CHANGED"]

# kvmap-check's exit status
EXIT_OK = 0          # sound
EXIT_DAMAGE = 1      # damage found
EXIT_UNCHECKED = 2   # not checked: unreadable, usage error
EXIT_CHANGED = 3     # a check of the file at rest saw it change: no verdict
CHANGED_MESSAGE = "file changed during check: no verdict; re-run when the writer is idle"

MAGIC = b"\x89KVM\r\n\x1a\n"
VERSION = 2
MIN_PAGE, MAX_PAGE = 4096, 65536
MAX_DEPTH = 32
META_SIZE = 128
HDR = 32
M_FLAGS_NOSYNC = 1

PT_BRANCH, PT_LEAF, PT_OVERFLOW = 1, 2, 3
PT_FREE_INDEX, PT_FREE_BITMAP, PT_RECORD = 4, 5, 8
PF_CONTINUED = 1                 # page header flags: a record page after the first
TYPE_NAMES = {PT_BRANCH: "branch", PT_LEAF: "leaf", PT_OVERFLOW: "overflow",
              PT_FREE_INDEX: "free-index", PT_FREE_BITMAP: "free-bitmap", PT_RECORD: "record"}

# a commit record's stream (the payload of its pages, FORMAT.md §6): the fixed
# fields, then the written entries, the freed runs and the bitmap overrides
R_FLAGS_PAGES_DURABLE = 1
R_WRITTEN_SIZE, R_RUN_SIZE = 12, 16
RECORD_SPARE_MAX = 64            # pages past its entries a record may end with
_record_head = struct.Struct("<QIIIIII").unpack_from   # prev, n_written, n_freed, n_released, n_override, flags, 0
_written = struct.Struct("<QI").unpack_from          # page, checksum
_run_pair = struct.Struct("<QQ").unpack_from         # start, count; range, bitmap page

# owner codes, one byte per page
O_NONE, O_META, O_BRANCH, O_LEAF, O_OVERFLOW = 0, 1, 2, 3, 4
O_FREE_INDEX, O_FREE_BITMAP, O_RECORD, O_FREE, O_PENDING = 5, 6, 7, 8, 9
OWNER_NAMES = {O_META: "meta", O_BRANCH: "branch", O_LEAF: "leaf", O_OVERFLOW: "overflow",
               O_FREE_INDEX: "free-index", O_FREE_BITMAP: "free-bitmap", O_RECORD: "record",
               O_FREE: "free", O_PENDING: "pending"}
_FREE_SPACE_PAGES = (O_FREE_INDEX, O_FREE_BITMAP, O_RECORD)
_CHECKED = (O_BRANCH, O_LEAF, O_OVERFLOW) + _FREE_SPACE_PAGES
_REACHABLE = _CHECKED + (O_META,)

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_klen_vlen = struct.Struct("<HI").unpack_from   # a leaf cell's header
_hdr = struct.Struct("<IBBHQQQ").unpack_from      # crc type flags nkeys txnid pgno next/upper
_meta = struct.Struct("<8sIIQQIIQQQQQQQQ").unpack_from


# A decoded meta page (_decode_meta's fields), and a page reader of a record
# chain: read(page, k) -> the k-th page's bytes.
_Meta = dict[str, Any]
_Read = Callable[[int, int], bytes]
# progress(done, total)
Progress = Callable[[int, int], object]
# per kind of problem: [the first message, how many]
_Agg = dict[str, list[Any]]
# the tree walk's stack: page, level, lo, hi, what
_Walk = tuple[int, int, Optional[bytes], Optional[bytes], str]


# ---------------------------------------------------------------- CRC-32C
# The checksum is pure computation, so the checker uses the C core's (it
# reads no page through the engine: no mapping, no page cache).

def crc32c(data: ReadableBuffer, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``."""
    mv = memoryview(data).cast("B")
    value: int = _lib.kvm_crc32c(crc, _ffi.from_buffer(mv), len(mv))
    return value


def _page_crcs(buf: ReadableBuffer, page_size: int, count: int) -> list[int]:
    """Checksums (bytes [4, page_size) of each page) of ``count`` whole pages
    in ``buf``, as a list of ints."""
    out = _ffi.new("uint32_t[]", count)
    _lib.kvm_page_checksums(_ffi.from_buffer(buf), page_size, count, out)
    crcs: list[int] = _ffi.unpack(out, count)
    return crcs


# ---------------------------------------------------------------- report

class CheckUnreadable(Error):
    """The file cannot be checked at all: it cannot be opened, or neither
    meta page is a valid kvmap meta.  A :class:`kvmap.Error`."""


@dataclass
class Problem:
    kind: str
    page: Optional[int]
    message: str


@dataclass
class CheckReport:
    ok: bool
    problems: List[Problem] = field(default_factory=list)
    total_problems: int = 0
    meta_used: Optional[int] = None
    meta_notes: List[str] = field(default_factory=list)
    # Routine facts of a sound file (which meta is used, and why); the CLI
    # prints them with --verbose.  meta_notes are what a crash or damage left.
    details: List[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # The transaction (commit) checked, and how it was read: through a
    # snapshot registered in the lock file (writers in every process went on
    # committing, and reused none of its pages), or as the file at rest (no
    # snapshot could be registered; meta_notes say why).
    txnid: Optional[int] = None
    snapshot: bool = False
    # A check at rest saw the file change while it read it (a writer
    # committed): no verdict.  ``ok`` is False and ``problems`` empty;
    # re-run when the writer is idle.
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


# ---------------------------------------------------------------- meta

def _decode_meta(buf: bytes, offset: Optional[int] = None) -> tuple[Optional[_Meta], Optional[str]]:
    """(meta dict, None) or (None, reason) following FORMAT.md §2 (meta.c,
    meta_decode).  A version 1 meta whose checksum and tree fields hold is
    decoded too, with only those fields (its tree pages and page header are
    version 2's, so salvage can copy its tree): ``version`` tells."""
    if len(buf) < META_SIZE:
        return None, "short file (no room for a meta page)"
    (magic, version, ps, txnid, root, depth, flags, entries, hwm, free_index, record,
     free_count, pending_count, floor, durable) = _meta(buf, 0)
    if magic != MAGIC:
        return None, "not a kvmap meta (bad magic)"
    stored = _u32(buf, 124)[0]
    if crc32c(memoryview(buf)[:124]) != stored:
        return None, "checksum mismatch"
    if version not in (1, VERSION):
        return None, f"unsupported version {version}"
    if ps < MIN_PAGE or ps > MAX_PAGE or ps & (ps - 1):
        return None, f"bad page size {ps}"
    if offset is not None and ps != offset:
        return None, f"page size {ps} does not match its offset {offset}"
    if hwm < 2 or hwm > (2 ** 64 - 1) // ps:
        return None, f"bad high-water mark {hwm}"
    if (root == 0) != (depth == 0) or depth > MAX_DEPTH or (root == 0 and entries != 0):
        return None, f"inconsistent root {root} / depth {depth} / entries {entries}"
    if root != 0 and not 2 <= root < hwm:
        return None, f"root {root} out of range [2, {hwm})"
    tree = dict(version=version, page_size=ps, txnid=txnid, root=root, depth=depth, flags=flags,
                entries=entries, hwm=hwm)
    if version != VERSION:
        return tree, None
    for name, v in (("free_index", free_index), ("record", record)):
        if v != 0 and not 2 <= v < hwm:
            return None, f"{name} {v} out of range [2, {hwm})"
    if free_count + pending_count > hwm:
        return None, f"free_count {free_count} + pending_count {pending_count} > hwm {hwm}"
    # every commit has a record; released commits and durable ones precede it
    if (txnid >= 2) != (record != 0):
        return None, f"record {record} for txnid {txnid} (every commit after the first has one)"
    if not floor <= durable <= txnid or (txnid >= 2 and floor >= txnid):
        return None, f"floor {floor} / durable {durable} / txnid {txnid} out of order"
    return dict(tree, free_index=free_index, record=record, free_count=free_count,
                pending_count=pending_count, floor=floor, durable=durable), None


def _recency(m: _Meta) -> tuple[int, int]:
    """Sort key of a valid meta: newer commit, then the one known durable."""
    return m["txnid"], m.get("durable", 0)


# The meta fields that say what a commit's state is: all but ``durable``,
# which the seal at close rewrites for the same commit (FORMAT.md §7).
_COMMIT_FIELDS = ("page_size", "txnid", "root", "depth", "flags", "entries", "hwm", "free_index",
                  "record", "free_count", "pending_count", "floor")


def _differing(m: _Meta, state: _Meta) -> list[str]:
    """The commit fields in which meta ``m`` differs from ``state``."""
    return [k for k in _COMMIT_FIELDS if m.get(k) != state[k]]


# ---------------------------------------------------------------- commit records

class _RecordFault(Exception):
    """A commit record that cannot be read on: ``page`` where it fails, and
    ``message`` (None when the page reader has reported the page already)."""

    def __init__(self, page: int, message: Optional[str] = None) -> None:
        super().__init__(message)
        self.page = page
        self.message = message


def _record_items(read: _Read, first: int, txn: int, ps: int, hwm: int) -> Iterator[tuple[Any, ...]]:
    """Yield the entries of the record of commit ``txn`` that starts at page
    ``first`` (FORMAT.md §6; freelist.c, record_read): ("head", prev,
    n_written, n_freed, n_override, flags, n_released), then ("written",
    page, checksum) entries, ("freed", start, count) runs, ("released",
    start, count) runs and ("override", range, bitmap page) pairs, in stream
    order.  ``read(page, k)`` gives the vetted
    bytes of the record's k-th page or raises :class:`_RecordFault`; every
    page must carry the commit's txnid and flags 0 on the first page, 1 on
    the others, and the chain is bounded by the length its counts give (plus
    at most RECORD_SPARE_MAX pages that hold no entries).  Raises
    :class:`_RecordFault` where the chain is not such a record.  Only one
    page of the stream is held at a time."""
    pay = ps - HDR
    fixed = _record_head.__self__.size  # type: ignore[attr-defined]   # the bound Struct's
    need, npages = fixed, 1
    sections = []          # [kind, entries left, entry size, unpack]
    carry = b""            # the start of an entry that runs on into the next page
    page, last, k = first, first, 0
    while page:
        if k >= npages + RECORD_SPARE_MAX:
            raise _RecordFault(page, f"the record of commit {txn} is longer than its entries")
        buf = read(page, k)
        _, _, flags, _, htxn, _, nxt = _hdr(buf, 0)
        if htxn != txn or flags != (PF_CONTINUED if k else 0):
            raise _RecordFault(page, f"page {page}: not {'a later' if k else 'the first'} page of "
                               f"the record of commit {txn} (txnid {htxn}, flags {flags})")
        start = 0
        if k == 0:
            prev, nwritten, nfreed, nreleased, noverride, rflags, _ = _record_head(buf, HDR)
            need = fixed + R_WRITTEN_SIZE * nwritten + R_RUN_SIZE * (nfreed + nreleased + noverride)
            npages = -(-need // pay)
            if npages > hwm:
                raise _RecordFault(page, f"page {page}: record counts out of range")
            yield "head", prev, nwritten, nfreed, noverride, rflags, nreleased
            sections = [["written", nwritten, R_WRITTEN_SIZE, _written],
                        ["freed", nfreed, R_RUN_SIZE, _run_pair],
                        ["released", nreleased, R_RUN_SIZE, _run_pair],
                        ["override", noverride, R_RUN_SIZE, _run_pair]]
            start = fixed
        lo = k * pay
        if lo + start < need:
            data = carry + bytes(buf[HDR + start:HDR + min(pay, need - lo)])
            off = 0
            for sec in sections:
                kind, _, size, unpack = sec
                while sec[1] and off + size <= len(data):
                    yield (kind,) + unpack(data, off)
                    off += size
                    sec[1] -= 1
                if sec[1]:
                    break
            carry = data[off:]
        last, page, k = page, nxt, k + 1
    if k < npages:
        raise _RecordFault(last, f"the record of commit {txn} is cut short ({k} of its "
                                 f"{npages} pages)")


class _Runs:
    """A set of pages kept as disjoint runs: the pages that later commits
    freed, or released early."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, count: int, limit: int) -> bool:
        """Add [start, start + count), merging with the runs already in (a
        page written, freed, reused and freed again is freed by two
        commits); False (nothing added) if the run is empty or not inside
        [2, limit)."""
        end = start + count
        if count < 1 or start < 2 or end > limit:
            return False
        i = bisect.bisect_left(self.ends, start)          # the first run ending at or after start
        j = bisect.bisect_right(self.starts, end)         # the runs starting at or before end
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]
        return True

    def outside(self, start: int, count: int) -> list[tuple[int, int]]:
        """The sub-runs of [start, start + count) not in the set."""
        out, end = [], start + count
        i = bisect.bisect_right(self.ends, start)
        while start < end:
            if i < len(self.starts) and self.starts[i] <= start:
                start = self.ends[i]
                i += 1
                continue
            stop = min(end, self.starts[i]) if i < len(self.starts) else end
            out.append((start, stop - start))
            start = stop
        return out

    def __contains__(self, page: int) -> bool:
        i = bisect.bisect_right(self.starts, page)
        return bool(i) and page < self.ends[i - 1]


# ---------------------------------------------------------------- checker

class _Checker:
    # Set by read_metas, setup, the walks, and salvage (_salvage_tree &co.).
    meta: _Meta
    metas: list[Any]          # two, None where invalid
    newest: Optional[int]     # the newest valid meta (live_metas: meta_used, the newest it judges)
    meta_used: Optional[int]  # the meta checked; None: a snapshot's commit no meta holds any more
    ps: int
    hwm: int
    npages: int
    free_bits: Any            # None until walk_free counts them, then an int
    pending_pages: Any        # likewise
    orphans: list[int]
    damaged_leaves: list[int]
    lost_values: int
    missing: list[tuple[bytes, Optional[bytes]]]
    dead: int
    taken: bytearray

    def __init__(self, fd: int, path: StrPath, file_size: int, quick: bool, max_errors: int,
                 progress: Optional[Progress]) -> None:
        self.fd = fd
        self.path = path
        self.file_size = file_size
        self.quick = quick
        self.max_errors = max_errors
        self.progress = progress
        self.problems: list[Problem] = []
        self.total = 0
        self.notes: list[str] = []
        self.details: list[str] = []

    def add(self, kind: str, page: Optional[int], message: str) -> None:
        self.total += 1
        if len(self.problems) < self.max_errors:
            self.problems.append(Problem(kind, page, message))

    # ------------------------------------------------------------ metas

    def _crash_left(self, slot: int, why: Optional[str], other: _Meta) -> Optional[str]:
        """Why an invalid meta is what a crash leaves, not damage (None when
        it is damage).  A power loss in a commit's meta write leaves that meta
        torn: the magic intact (it is the same in every meta) and the
        checksum wrong, while the other meta is valid -- the engine then
        opens the other one, as designed (FORMAT.md §2).  A power loss while
        a file is created can leave one of its two metas unwritten: zeros,
        next to a valid meta of the empty database.  A bit flipped in a meta
        looks like a tear, so it is not told apart."""
        if why == "checksum mismatch":
            return ("fails its checksum: a commit's meta write interrupted by a crash (that "
                    "commit never completed), or damage to it; the other meta stands")
        raw = os.pread(self.fd, META_SIZE, slot * other["page_size"])
        if raw == bytes(META_SIZE) and other["txnid"] <= 1 and other["root"] == 0:
            return "unwritten (zeros): the file's creation was interrupted by a crash"
        return None

    def _edge_fault(self, m: _Meta) -> Optional[str]:
        """What the engine's open-time verification (meta.c, verify_path)
        finds wrong with meta ``m``'s leftmost and rightmost root-to-leaf
        paths, or None."""
        ps, hwm = m["page_size"], m["hwm"]
        for rightmost in (False, True):
            page = m["root"]
            for level in range(m["depth"]):
                ptype = PT_BRANCH if level + 1 < m["depth"] else PT_LEAF
                if not 2 <= page < hwm:
                    return f"page number {page} out of range"
                buf = os.pread(self.fd, ps, page * ps)
                if len(buf) < ps:
                    return f"page {page} lies past the end of the file"
                crc, t, _, nkeys, txnid, pgno, upper = _hdr(buf, 0)
                if crc != crc32c(memoryview(buf)[4:]):
                    return f"page {page}: checksum mismatch"
                if t != ptype or pgno != page or not HDR + 2 * nkeys <= upper <= ps \
                        or (t == PT_BRANCH and nkeys == 0):
                    return f"page {page}: bad header"
                if txnid > m["txnid"] or (level == 0 and txnid != m["txnid"]):
                    return f"page {page}: written by transaction {txnid}"
                if t == PT_BRANCH:
                    off = _u16(buf, HDR + 2 * (nkeys - 1 if rightmost else 0))[0]
                    if off + 10 > ps:
                        return f"page {page}: cell out of bounds"
                    page = _u64(buf, off + 2)[0]
        return None

    def _commits_fault(self, m: _Meta) -> Optional[str]:
        """What the engine's open-time verification (FORMAT.md §2; freelist.c,
        records_verify) finds wrong with the commits of meta ``m`` not known
        durable -- those after ``m["durable"]`` -- or None: every page their
        records list as written must hold the checksum listed (stored and
        computed) and its own page number, unless a later one of those
        commits freed it (it may have been reused since)."""
        fd, ps, hwm = self.fd, m["page_size"], m["hwm"]

        def read(page: int, k: int) -> bytes:
            if not 2 <= page < hwm:
                raise _RecordFault(page, f"page number {page} out of range")
            buf = os.pread(fd, ps, page * ps)
            if len(buf) < ps:
                raise _RecordFault(page, f"page {page} lies past the end of the file")
            if _u32(buf, 0)[0] != crc32c(memoryview(buf)[4:]):
                raise _RecordFault(page, f"page {page}: checksum mismatch")
            if buf[4] != PT_RECORD or _u64(buf, 16)[0] != page:
                raise _RecordFault(page, f"page {page}: not the record page expected")
            return buf

        later = _Runs()
        page, stop = m["record"], max(m["durable"], 1)
        for txn in range(m["txnid"], stop, -1):    # bounded: a page carries one txnid
            if not page:
                return f"commit {txn} has no record"
            try:
                for item in _record_items(read, page, txn, ps, hwm):
                    if item[0] == "head":
                        prev = item[1]
                    elif item[0] == "written":
                        w, crc = item[1], item[2]
                        if w in later:
                            continue
                        buf = os.pread(fd, ps, w * ps) if 2 <= w < hwm else b""
                        if (len(buf) < ps or _u32(buf, 0)[0] != crc or _u64(buf, 16)[0] != w
                                or crc32c(memoryview(buf)[4:]) != crc):
                            return f"page {w}, written by commit {txn}, does not hold what it wrote"
                    elif item[0] == "freed" and not later.add(item[1], item[2], self.file_size // ps):
                        return (f"the record of commit {txn} lists a bad freed run "
                                f"({item[1]}, {item[2]})")
            except _RecordFault as f:
                return f.message
            if not prev and txn - 1 > stop:
                return f"the record of commit {txn} does not lead to its predecessor's"
            page = prev
        return None

    def _unusable(self, m: _Meta) -> Optional[str]:
        """Why the engine's open would not use meta ``m`` (meta.c,
        meta_usable): the file is too short for it, its commits not known
        durable do not verify, or its edge paths do not; None if it would."""
        need = m["hwm"] * m["page_size"]
        if need > self.file_size:
            return f"the file has {self.file_size} bytes of the {need} it needs"
        return self._commits_fault(m) or self._edge_fault(m)

    def read_metas(self) -> _Meta:
        fd, size = self.fd, self.file_size
        raw0 = os.pread(fd, META_SIZE, 0)
        m0, why0 = _decode_meta(raw0)
        m1 = why1 = None
        if m0 is not None:
            off = m0["page_size"]
            m1, why1 = _decode_meta(os.pread(fd, META_SIZE, off), off)
            if m1 is None:
                # Is there a valid meta 1 at another offset?  Then meta 0's
                # page size is the wrong one (meta 1's is confirmed by its place).
                for o in (4096, 8192, 16384, 32768, 65536):
                    if o == off or o + META_SIZE > size:
                        continue
                    alt, _ = _decode_meta(os.pread(fd, META_SIZE, o), o)
                    if alt is not None:
                        why0 = (f"page size {m0['page_size']} conflicts with meta 1 found at "
                                f"offset {o} (page size {o})")
                        m0, m1, why1 = None, alt, None
                        break
        else:
            for o in (4096, 8192, 16384, 32768, 65536):
                if o + META_SIZE > size:
                    break
                m1, why1 = _decode_meta(os.pread(fd, META_SIZE, o), o)
                if m1 is not None:
                    break
            if m1 is None:
                why1 = why1 or "short file (no room for meta 1)"
        metas: list[Any] = [m0, m1]   # (typed Any: the code below checks which is None)
        whys = [why0, why1]
        valid = [i for i in (0, 1) if metas[i] is not None]
        if not valid:
            raise CheckUnreadable(f"no valid meta page: meta 0: {why0}; meta 1: {why1}")
        version = max(metas[i]["version"] for i in valid)
        for i in valid:
            if metas[i]["version"] != version:
                metas[i], whys[i] = None, f"a version {metas[i]['version']} meta"
        if version != VERSION:
            self.add("version", None, f"{self.path} is a kvmap version {version} file; this kvmap "
                     f"reads version {VERSION}: copy its data into a new file with "
                     f"`kvmap-check --salvage {self.path} NEW` (only its tree is checked)")
        # the newest: the larger txnid, then the larger durable (the meta a
        # close sealed durable holds the same commit as the other); else meta 0
        newest = 1 if metas[0] is None or (metas[1] is not None and _recency(metas[1])
                                           > _recency(metas[0])) else 0
        other = 1 - newest
        nm, om = metas[newest], metas[other]
        crash = None
        if om is None:
            crash = self._crash_left(other, whys[other], nm)
            if not crash:
                self.add("meta-damaged", other, f"meta {other} is damaged ({whys[other]})")
        ps = nm["page_size"]

        def fits(m: _Meta) -> bool:
            return bool(m["hwm"] * ps <= size)
        # The engine's choice (FORMAT.md §2; meta.c, load_meta): the newest
        # meta if it is usable; else, when the commits after the durable one
        # it names do not verify (a file too short for them included: their
        # growth may not have reached the disk either), that durable
        # commit's meta; else nothing.
        fallback = False
        if version == VERSION:
            fault = self._unusable(nm)
            ofault = None
            if (fault and nm["durable"] < nm["txnid"] and om is not None
                    and om["txnid"] == nm["durable"]):
                ofault = self._unusable(om)
                fallback = ofault is None
            if fault and not fallback and (fits(nm) or ofault):
                self.add("meta-unusable", newest, f"the engine refuses to open the file: meta "
                         f"{newest} (txnid {nm['txnid']}): {fault}" + (
                             f"; meta {other} (txnid {om['txnid']}), the durable commit it falls "
                             f"back to: {ofault}" if ofault else ""))
        if not fits(nm) and not fallback:
            first_missing = size // ps
            self.add("truncated", first_missing,
                     f"file is {size} bytes, shorter than hwm {nm['hwm']} x page size {ps} of "
                     f"meta {newest} (txnid {nm['txnid']}); pages from {first_missing} are missing")
        chosen = other if fallback or (not fits(nm) and om is not None and fits(om)) else newest
        cm = metas[chosen]
        if not fits(cm):
            self.notes.append(f"no meta fits the file size; checking meta {chosen} anyway")
        if fallback:
            sync = ", a commit made with sync=False" if nm["flags"] & M_FLAGS_NOSYNC else ""
            self.notes.append(
                f"meta {newest} (txnid {nm['txnid']}{sync}) names commit {nm['durable']} as "
                f"durable, and the commits after it were lost by a crash before they were "
                f"durable ({fault}), or damaged; using meta {chosen} (txnid {cm['txnid']}), as "
                f"the engine does")
        elif om is None:
            self.notes.append(f"meta {other} " + (crash if crash else f"is damaged ({whys[other]})")
                              + f"; using meta {chosen}")
        elif chosen != newest:
            self.notes.append(f"meta {newest} (txnid {nm['txnid']}) does not fit the file; "
                              f"checking the older meta {chosen} (txnid {cm['txnid']})")
        elif nm["txnid"] != om["txnid"]:
            self.details.append(f"using meta {chosen}: the newer (txnid {nm['txnid']} > "
                                f"{om['txnid']})")
        elif nm.get("durable") != om.get("durable"):
            self.details.append(f"using meta {chosen}: both metas hold commit {nm['txnid']}; it "
                                f"names the newer durable one ({nm['durable']} > {om['durable']})")
        else:
            self.details.append(f"using meta {chosen}: both metas hold commit {nm['txnid']}")
        if cm.get("durable", cm["txnid"]) < cm["txnid"]:
            first = cm["durable"] + 1
            self.details.append(
                f"meta {chosen}: commit {first} was not known durable when it was written; its "
                f"pages verify against its record" if first == cm["txnid"] else
                f"meta {chosen}: commits {first} to {cm['txnid']} were not known durable when it "
                f"was written; their pages verify against their records")
        if cm["flags"] & M_FLAGS_NOSYNC:
            self.details.append(f"meta {chosen}: no flush followed its commit (sync=False)")
        self.metas = metas
        self.newest = newest
        self.meta_used = chosen
        self.meta = cm
        return self.meta

    def snapshot_metas(self, held: _HeldCommit) -> None:
        """The commit ``held`` (its meta fields are the engine's) and the
        meta pages beside it.  When the meta pages make read_metas choose
        that commit too, and no commit lands while they are read (the commit
        state and the newest published commit unchanged), they are checked
        as at rest: the choice with its notes, both metas' fields, the edge
        paths and the records of the commits not known durable.  Otherwise a
        later commit has rewritten a meta page, perhaps while it was read,
        and what read_metas found is dropped: live_metas checks what still
        belongs to the snapshot's commit."""
        state = held.state
        slots, before = _commit_state(self.fd)
        try:
            m = self.read_metas()
            at_rest = (not _differing(m, state) and held.newest_txnid() == state["txnid"]
                       and _commit_state(self.fd, slots)[1] == before)
        except CheckUnreadable:
            at_rest = False
        if not at_rest:
            self.problems, self.total, self.notes, self.details = [], 0, [], []
            self.live_metas(state)

    def live_metas(self, state: _Meta) -> None:
        """The meta pages beside a snapshot of commit ``state`` of a database
        in use.  Later commits may have rewritten either slot, or be
        rewriting it as it is read, so a slot is checked against the
        snapshot's fields only where it holds the snapshot's commit; a later
        commit's meta is not judged (its pages are not the snapshot's and may
        be changing), nor is one that fails its checksum (a write caught half
        done reads so; so do a crash's tear and damage, which a check at rest
        only notes as well).  A slot that is no kvmap meta, or fails its field
        checks, is damage as at rest: no meta write reads so, whole or half
        done (every meta has the same magic, version and page size)."""
        ps, txnid = state["page_size"], state["txnid"]
        self.meta = dict(state, version=VERSION)
        self.metas = [None, None]
        holding = []                # the slots that hold the snapshot's commit
        rewritten = False           # a slot holds a later commit's meta, or one being written
        for slot in (0, 1):
            m, why = _decode_meta(os.pread(self.fd, META_SIZE, slot * ps), slot * ps if slot else None)
            self.metas[slot] = m
            if m is None and why == "checksum mismatch":
                rewritten = True
                self.notes.append(f"meta {slot} fails its checksum: a commit was writing it as it "
                                  f"was read, or a crash tore it, or it is damaged; not checked")
            elif m is None:
                crash = self._crash_left(slot, why, self.meta)
                if crash:
                    self.notes.append(f"meta {slot} {crash}")
                else:
                    self.add("meta-damaged", slot, f"meta {slot} is damaged ({why})")
            elif m["txnid"] > txnid:
                rewritten = True
                self.details.append(f"meta {slot} holds commit {m['txnid']}, made after the "
                                    f"snapshot's: not checked")
            elif m["txnid"] < txnid:
                self.details.append(f"meta {slot} holds the older commit {m['txnid']}: its fields "
                                    f"are valid; its pages are not the snapshot's, not checked")
            elif _differing(m, state):
                self.add("meta-damaged", slot, f"meta {slot} holds commit {txnid}, the snapshot's, "
                         f"with other {', '.join(_differing(m, state))} than the engine has for it")
            else:
                holding.append(slot)
        if holding:
            self.meta_used = max(holding, key=lambda i: _recency(self.metas[i]))
            self.details.append(f"meta {self.meta_used} holds commit {txnid}, the snapshot's: its "
                                f"fields are the engine's")
        else:
            self.meta_used = None
            if rewritten:
                self.details.append(f"no meta page holds commit {txnid}, the snapshot's, any more: "
                                    f"later commits rewrote them; its fields are the engine's")
            else:
                self.add("meta-damaged", None, f"neither meta page holds commit {txnid}, the "
                         f"snapshot's, nor a later commit")
        self.newest = self.meta_used            # salvage copies the snapshot's commit
        if state["hwm"] * ps > self.file_size:
            first_missing = self.file_size // ps
            self.add("truncated", first_missing,
                     f"file is {self.file_size} bytes, shorter than hwm {state['hwm']} x page size "
                     f"{ps} of commit {txnid}; pages from {first_missing} are missing")

    # ------------------------------------------------------------ pages

    def setup(self) -> None:
        m = self.meta
        self.ps = ps = m["page_size"]
        self.hwm = m["hwm"]
        self.file_pages = self.file_size // ps
        self.npages = min(self.hwm, self.file_pages)       # pages we can account for
        self.owner = bytearray(self.npages)
        self.bad = bytearray(self.npages)                  # 1: checksum mismatch (full mode)
        self.freed = bytearray(self.npages)                # 1: listed free or pending
        for i in range(min(2, self.npages)):
            self.owner[i] = O_META
        self.usable = ps - HDR
        self.max_cell = self.usable // 4
        self.max_key = self.max_cell - 16

    def checksum_pass(self) -> None:
        """Full mode, after the walks: verify the checksum of every page the
        tree and the free space reach (free and pending pages hold whatever
        they held; they are not checked), reading the file in large
        sequential chunks."""
        ps, n, owner = self.ps, self.npages, self.owner
        checked = bytes(1 if c in _CHECKED else 0 for c in range(256))
        want = owner.translate(checked)            # 1 per page to verify
        batch = max(4, (8 << 20) // ps)
        p = 2
        while p < n:
            cnt = min(batch, n - p)
            sel = [i for i in range(cnt) if want[p + i]]
            if sel:
                buf = os.pread(self.fd, cnt * ps, p * ps)
                mv = memoryview(buf)
                pages = b"".join(mv[i * ps:(i + 1) * ps] for i in sel if (i + 1) * ps <= len(buf))
                crcs = _page_crcs(pages, ps, len(pages) // ps)
                for j, c in enumerate(crcs):
                    if c != _u32(pages, j * ps)[0]:
                        pg = p + sel[j]
                        self.bad[pg] = 1
                        self.add("bad-checksum", pg, f"page {pg} "
                                 f"({OWNER_NAMES[owner[pg]]}): checksum mismatch")
            p += cnt
            if self.progress:
                self.progress(n + p, 2 * n)

    def ref_ok(self, page: int, what: str) -> bool:
        """Is ``page`` a possible target?  Reports out-of-range otherwise."""
        if page < 2 or page >= self.hwm:
            self.add("out-of-range", page, f"{what} refers to page {page}, outside [2, {self.hwm})")
            return False
        if page >= self.npages:
            self.add("out-of-range", page,
                     f"{what} refers to page {page}, beyond the end of the file "
                     f"({self.file_pages} whole pages)")
            return False
        return True

    def claim(self, page: int, code: int, what: str) -> bool:
        """Mark ``page`` as owned by ``code``; False (and a problem) if it
        already has an owner."""
        if code in (O_FREE, O_PENDING):
            self.freed[page] = 1
        prev = self.owner[page]
        if prev == O_NONE:
            self.owner[page] = code
            return True
        if prev in (O_FREE, O_PENDING) and code in _REACHABLE:
            self.add("reachable-and-free", page,
                     f"page {page} is {OWNER_NAMES[prev]} but also {what}")
        elif code in (O_FREE, O_PENDING) and prev in _REACHABLE:
            self.add("reachable-and-free", page,
                     f"page {page} is a {OWNER_NAMES[prev]} page but also listed {OWNER_NAMES[code]}")
        else:
            self.add("double-reference", page,
                     f"page {page} is already used as {OWNER_NAMES.get(prev, prev)}; "
                     f"also {what}")
        return False

    def read_page(self, page: int, expect_types: tuple[int, ...], what: str,
                  header_only: bool = False) -> Optional[bytes]:
        """Read and vet one page: header page number, type, checksum.
        Returns the bytes or None if it must not be trusted further."""
        ps = self.ps
        buf = os.pread(self.fd, HDR if header_only else ps, page * ps)
        if len(buf) < (HDR if header_only else ps):
            self.add("out-of-range", page, f"page {page} ({what}) cannot be read whole")
            return None
        crc, ptype, flags, nkeys, txnid, pgno, nxt = _hdr(buf, 0)
        if pgno != page:
            self.add("bad-header", page,
                     f"page {page} ({what}): header says page {pgno} (misplaced or damaged page)")
            return None
        if ptype not in expect_types:
            exp = "/".join(TYPE_NAMES[t] for t in expect_types)
            self.add("bad-type", page, f"page {page} ({what}): type {ptype} "
                     f"({TYPE_NAMES.get(ptype, 'unknown')}), expected {exp}")
            return None
        if txnid > self.meta["txnid"]:
            self.add("newer-than-meta", page,
                     f"page {page} ({what}): written by transaction {txnid}, after the meta's "
                     f"{self.meta['txnid']} (a page reused after a commit that a crash lost, or damage)")
            return None
        return buf

    # ------------------------------------------------------------ tree

    def walk_tree(self) -> None:
        m = self.meta
        root, depth = m["root"], m["depth"]
        self.entries = 0
        self.leaf_used = 0
        self.nleaves = 0
        if root == 0:
            return
        ps = self.ps
        leaf_level = depth - 1
        stack: list[_Walk] = [(root, 0, None, None, "meta root")]
        visited = 0
        limit = self.npages
        while stack:
            page, level, lo, hi, what = stack.pop()
            visited += 1
            if visited > limit:                             # cannot happen: claim() dedups
                break
            if self.progress and visited % 1024 == 0:
                self.progress(min(visited, self.npages), 2 * self.npages)
            if not self.ref_ok(page, what):
                continue
            code = O_LEAF if level == leaf_level else O_BRANCH
            if not self.claim(page, code, f"referenced by {what}"):
                continue
            buf = self.read_page(page, (PT_BRANCH, PT_LEAF), what)
            if buf is None:
                continue
            ptype = buf[4]
            if (ptype == PT_LEAF) != (level == leaf_level):
                self.add("depth-mismatch", page,
                         f"page {page} ({what}) is a {TYPE_NAMES[ptype]} at level {level}; "
                         f"leaves are at level {leaf_level} (depth {depth})")
                continue
            nkeys = _u16(buf, 6)[0]
            upper = _u32(buf, 24)[0]
            if not (HDR + 2 * nkeys <= upper <= ps) or (ptype == PT_BRANCH and nkeys < 1):
                self.add("cell-out-of-bounds", page,
                         f"page {page}: nkeys {nkeys} / upper {upper} inconsistent")
                continue
            if ptype == PT_LEAF:
                self.leaf(page, buf, nkeys, upper, lo, hi)
            else:
                self.branch(page, buf, nkeys, upper, lo, hi, level, stack)

    def _cell_key(self, page: int, buf: bytes, i: int, upper: int,
                  hdr: int) -> tuple[Optional[int], Optional[bytes]]:
        off = _u16(buf, HDR + 2 * i)[0]
        if off < upper or off + hdr > self.ps:
            self.add("cell-out-of-bounds", page,
                     f"page {page} cell {i}: offset {off} outside [{upper}, {self.ps - hdr}]")
            return None, None
        klen = _u16(buf, off)[0]
        if off + hdr + klen > self.ps:
            self.add("cell-out-of-bounds", page, f"page {page} cell {i}: key of {klen} bytes "
                     f"at {off} runs past the page end")
            return None, None
        return off, bytes(buf[off + hdr:off + hdr + klen])

    def _order(self, page: int, i: int, key: bytes, prev: Optional[bytes], lo: Optional[bytes],
               hi: Optional[bytes], agg: _Agg) -> None:
        """Order checks of one cell; ``agg`` collects, per kind, the first
        violation in the page and how many cells violate it (one problem per
        page and kind, see _flush)."""
        if prev is not None and not prev < key:
            _note(agg, "key-order", f"page {page} cell {i}: key {key[:40]!r} is not greater "
                  f"than the previous key {prev[:40]!r}")
        if (lo is not None and key < lo) or (hi is not None and key >= hi):
            _note(agg, "key-range", f"page {page} cell {i}: key {key[:40]!r} outside the range "
                  f"[{lo if lo is None else lo[:40]!r}, {hi if hi is None else hi[:40]!r}) "
                  f"set by its ancestors")

    def _flush(self, page: int, agg: _Agg) -> None:
        for kind, (msg, n) in agg.items():
            self.add(kind, page, msg + (f" (and {n - 1} more cells)" if n > 1 else ""))

    def leaf(self, page: int, buf: bytes, nkeys: int, upper: int, lo: Optional[bytes],
             hi: Optional[bytes]) -> None:
        # The hot loop of a full check (one pass per cell): plain locals, and
        # the helpers above only to word a problem once one is seen.
        ps, max_cell, max_key = self.ps, self.max_cell, self.max_key
        self.nleaves += 1
        used = 2 * nkeys
        entries = 0
        prev = None
        agg: _Agg = {}
        for i, off in enumerate(struct.unpack_from(f"<{nkeys}H", buf, HDR)):
            if off < upper or off + 6 > ps:
                self._cell_key(page, buf, i, upper, 6)      # reports it
                continue
            klen, vlen = _klen_vlen(buf, off)
            end = off + 6 + klen
            if end > ps:
                self._cell_key(page, buf, i, upper, 6)
                continue
            key = bytes(buf[off + 6:end])
            inline = 8 + klen + vlen <= max_cell
            clen = 6 + klen + (vlen if inline else 8)
            if off + clen > ps:
                self.add("cell-out-of-bounds", page,
                         f"page {page} cell {i}: cell of {clen} bytes at {off} runs past the page end")
                continue
            used += clen
            entries += 1
            if not 1 <= klen <= max_key:
                self.add("cell-out-of-bounds", page, f"page {page} cell {i}: key length {klen}")
            if ((prev is not None and not prev < key) or (lo is not None and key < lo)
                    or (hi is not None and key >= hi)):
                self._order(page, i, key, prev, lo, hi, agg)
            prev = key
            if not inline:
                self.overflow(page, i, _u64(buf, end)[0], vlen)
        self.entries += entries
        self._flush(page, agg)
        self.leaf_used += used

    def branch(self, page: int, buf: bytes, nkeys: int, upper: int, lo: Optional[bytes],
               hi: Optional[bytes], level: int, stack: list[_Walk]) -> None:
        cells: list[Optional[tuple[Optional[bytes], int]]] = []
        prev = None
        agg: _Agg = {}
        for i in range(nkeys):
            off, key = self._cell_key(page, buf, i, upper, 10)
            if off is None:
                cells.append(None)
                continue
            child = _u64(buf, off + 2)[0]
            if i == 0:
                if key:
                    self.add("key-order", page,
                             f"page {page} cell 0: has a {len(key)}-byte key; it must be empty")
                key = lo
            else:
                self._order(page, i, key, prev, lo, hi, agg)  # type: ignore[arg-type]   # bytes: off is set
                prev = key
            cells.append((key, child))
        self._flush(page, agg)
        # children in reverse so that the walk visits them left to right
        for i in range(nkeys - 1, -1, -1):
            c = cells[i]
            if c is None:
                continue
            key, child = c
            nhi = hi
            for j in range(i + 1, nkeys):
                if cells[j] is not None:
                    nhi = cells[j][0]  # type: ignore[index]   # not None
                    break
            stack.append((child, level + 1, key, nhi, f"branch {page} cell {i}"))

    def overflow(self, leaf: int, cell: int, first: int, vlen: int) -> None:
        n = -(-vlen // self.usable)
        what = f"leaf {leaf} cell {cell}"
        p = first
        for k in range(n):
            if not self.ref_ok(p, f"overflow chain of {what} (piece {k})"):
                return
            if not self.claim(p, O_OVERFLOW, f"overflow piece {k} of {what}"):
                return
            buf = self.read_page(p, (PT_OVERFLOW,), f"overflow piece {k} of {what}",
                                 header_only=True)
            if buf is None:
                return
            nxt = _u64(buf, 24)[0]
            if k == n - 1:
                if nxt != 0:
                    self.add("overflow-chain", p, f"page {p}: last overflow page of {what} "
                             f"({n} pages for {vlen} bytes) has next {nxt}, not 0")
            elif nxt == 0:
                self.add("overflow-chain", p, f"page {p}: overflow chain of {what} ends after "
                         f"{k + 1} pages; {vlen} bytes need {n}")
                return
            p = nxt

    # ------------------------------------------------------------ free space

    def walk_free(self) -> None:
        """The free space of the meta (FORMAT.md §6; freelist.c,
        freelist_load): the bitmap-index chain, the records of the commits
        after the floor (the newest one's overrides replace index entries),
        then the bitmaps; the free and pending pages they list are claimed.
        A version 1 file's free list is not read (its format is gone):
        nothing is known free there."""
        m = self.meta
        self.free_bits = self.pending_pages = None
        self.free_complete = False
        if m["version"] != VERSION:
            return
        hwm = self.hwm
        B = self.usable * 8
        nranges = -(-hwm // B)
        self.free_bits = 0
        self.pending_pages = 0
        start = self.total
        try:
            bitmaps = self._free_index(m, hwm, nranges)
            self._records(m, bitmaps, nranges)
            self._bitmaps(hwm, B, bitmaps[:nranges])
            if self.free_bits != m["free_count"]:
                self.add("free-count", self.meta_used, f"bitmaps mark {self.free_bits} pages "
                         f"free; meta {self.meta_used} free_count says {m['free_count']}")
            if self.pending_pages != m["pending_count"]:
                self.add("pending-count", self.meta_used, f"live records list "
                         f"{self.pending_pages} pages freed; meta {self.meta_used} "
                         f"pending_count says {m['pending_count']}")
        finally:
            self.free_complete = self.total == start

    def _free_index(self, m: _Meta, hwm: int, nranges: int) -> list[int]:
        """The bitmap page of each range, from the bitmap-index chain."""
        bitmaps = []
        p, hops, what = m["free_index"], 0, "meta free_index"
        per = self.usable // 8
        broken = False
        while p and hops <= self.npages:
            hops += 1
            broken = True
            if not self.ref_ok(p, what) or not self.claim(p, O_FREE_INDEX, what):
                break
            buf = self.read_page(p, (PT_FREE_INDEX,), what)
            if buf is None:
                break
            nk = _u16(buf, 6)[0]
            if nk > per:
                self.add("free-list", p, f"bitmap-index page {p}: {nk} entries > {per}")
                break
            broken = False
            for i in range(nk):
                bitmaps.append(_u64(buf, HDR + 8 * i)[0])
            p, what = _u64(buf, 24)[0], f"bitmap-index page {p} next"
        if m["free_index"] and not broken and len(bitmaps) != nranges:
            self.add("free-list", m["free_index"], f"bitmap index holds {len(bitmaps)} entries; "
                     f"hwm {hwm} needs {nranges}")
        return bitmaps

    def _records(self, m: _Meta, bitmaps: list[int], nranges: int) -> None:
        """Walk the live records, newest first: those of the commits after
        the floor (older ones are void: never read), reached through their
        ``prev`` pointers from the meta's.  Their pages are claimed, so are
        the pages they list freed (pending), except those a newer record
        lists as released early; the newest record's overrides replace
        entries of ``bitmaps``."""
        stop = max(m["floor"], 1)
        page = m["record"]
        marked = 0
        released = _Runs()      # pages the records read so far released early
        for txn in range(m["txnid"], stop, -1):     # bounded: each record claims a page
            first, prev, last_range = page, 0, None
            try:
                for item in _record_items(self._record_reader(txn), first, txn, self.ps,
                                          self.hwm):
                    kind, a, b = item[:3]
                    if kind == "head":
                        prev, flags = a, item[5]
                        if flags & ~R_FLAGS_PAGES_DURABLE or (flags and b):
                            self.add("free-list", first, f"record page {first}: flags {flags} "
                                     f"and {b} written pages (the only flag, pages made durable "
                                     f"before the meta, lists none)")
                    elif kind == "freed":
                        # a run may reach past hwm where a newer record released
                        # its pages early (a later commit may have trimmed them)
                        if b < 1 or a < 2 or a + b > self.file_pages:
                            marked = self._pending_run(first, a, b, marked)   # reports it
                        else:
                            for s_, c_ in released.outside(a, b):
                                marked = self._pending_run(first, s_, c_, marked)
                    elif kind == "released" and not released.add(a, b, self.file_pages):
                        self.add("free-list", first, f"record page {first}: released run "
                                 f"({a}, {b}) is empty or outside [2, {self.file_pages}) "
                                 f"(the file's pages)")
                    elif kind == "override" and txn == m["txnid"]:
                        if a >= nranges or (last_range is not None and a <= last_range):
                            self.add("free-list", first, f"record page {first}: bitmap override "
                                     f"of range {a} out of order or out of range (hwm "
                                     f"{self.hwm} has {nranges} ranges)")
                        elif a < len(bitmaps):
                            bitmaps[a] = b
                        last_range = a
            except _RecordFault as f:
                if f.message:
                    self.add("free-list", f.page, f.message)
                return
            if not prev and txn - 1 > stop:
                self.add("free-list", first, f"record page {first}: the record of commit {txn} "
                         f"does not lead to its predecessor's (prev 0), which is live (floor "
                         f"{m['floor']})")
                return
            page = prev

    def _record_reader(self, txn: int) -> _Read:
        """``read`` for :func:`_record_items` in the walk: claims and vets
        each page of the record of commit ``txn`` (ref_ok, claim and
        read_page report what is wrong)."""
        def read(page: int, k: int) -> bytes:
            what = f"page {k} of the record of commit {txn}"
            if not self.ref_ok(page, what) or not self.claim(page, O_RECORD, what):
                raise _RecordFault(page)
            buf = self.read_page(page, (PT_RECORD,), what)
            if buf is None:
                raise _RecordFault(page)
            return buf
        return read

    def _pending_run(self, record: int, start: int, count: int, marked: int) -> int:
        """Claim the run (start, count) that a live record lists freed."""
        if count < 1 or start < 2 or start + count > self.hwm:
            self.add("free-list", record, f"record page {record}: freed run ({start}, {count}) "
                     f"is empty or outside [2, {self.hwm})")
            return marked
        self.pending_pages += count
        for pg in range(start, min(start + count, self.npages)):
            marked += 1
            if marked > self.npages:                      # garbage: stop marking
                return marked
            self.claim(pg, O_PENDING, f"listed freed in record page {record}")
        return marked

    def _bitmaps(self, hwm: int, B: int, bitmaps: list[int]) -> None:
        """Read the bitmap page of each range and claim the free pages."""
        for r, bm in enumerate(bitmaps):
            if bm == 0:
                continue
            what = f"the bitmap of range {r}"
            if not self.ref_ok(bm, what) or not self.claim(bm, O_FREE_BITMAP, what):
                continue
            buf = self.read_page(bm, (PT_FREE_BITMAP,), what)
            if buf is None:
                continue
            first = _u64(buf, 24)[0]
            if first != r * B:
                self.add("free-list", bm, f"bitmap page {bm}: first {first}, expected {r * B}")
                continue
            body = buf[HDR:]
            for j, byte in enumerate(body):
                if not byte:
                    continue
                for b in range(8):
                    if byte >> b & 1:
                        pg = first + 8 * j + b
                        if pg < 2 or pg >= hwm:
                            self.add("free-list", bm,
                                     f"bitmap page {bm}: bit set for page {pg}, outside [2, {hwm})")
                            continue
                        self.free_bits += 1
                        if pg < self.npages:
                            self.claim(pg, O_FREE, f"set in bitmap page {bm}")

    # ------------------------------------------------------------ ownership

    def ownership(self) -> None:
        owner = self.owner
        p = owner.find(0, 2)
        while p != -1:
            self.add("leaked", p, f"page {p} is neither reachable nor free nor pending")
            p = owner.find(0, p + 1)

    def summary(self) -> dict[str, Any]:
        m = self.meta
        counts = {}
        for code, name in OWNER_NAMES.items():
            c = self.owner.count(code)
            if c:
                counts[name] = c
        leaked = self.owner.count(0)
        if leaked:
            counts["leaked"] = leaked
        cap = self.nleaves * self.usable
        return dict(
            pages_by_type=counts, depth=m["depth"], entries=self.entries,
            meta_entries=m["entries"], free_pages=self.free_bits,
            pending_pages=self.pending_pages, hwm=self.hwm, file_size=self.file_size,
            page_size=self.ps, txnid=m["txnid"],
            fill_factor=round(self.leaf_used / cap, 4) if cap else 0.0,
            mode="quick" if self.quick else "full",
        )


def _note(agg: _Agg, kind: str, msg: str) -> None:
    if kind in agg:
        agg[kind][1] += 1
    else:
        agg[kind] = [msg, 1]


def _run(fd: int, path: StrPath, quick: bool, max_errors: int, progress: Optional[Progress],
         held: Optional[_HeldCommit] = None) -> tuple[CheckReport, _Checker]:
    """Check the commit ``held``, or without it the file at rest."""
    if progress:
        progress(0, 1)        # begun: the commit to check is held, nothing read yet
    try:
        size = os.fstat(fd).st_size
        c = _Checker(fd, path, size, quick, max(0, int(max_errors)), progress)
        if held is None:
            c.read_metas()
        else:
            c.snapshot_metas(held)
        c.setup()
        c.walk_tree()
        if c.entries != c.meta["entries"]:
            c.add("entry-count", c.meta_used, f"the tree holds {c.entries} entries; "
                  f"meta {c.meta_used} says {c.meta['entries']}")
        c.walk_free()
        if not quick:
            c.checksum_pass()
        if c.meta["version"] == VERSION:       # (a version 1 file's free pages are unknown)
            c.ownership()
        summary = c.summary()
    except OSError as e:
        raise CheckUnreadable(f"cannot read {path}: {e.strerror or e}") from None
    if progress:
        progress(1, 1)
    rep = CheckReport(ok=c.total == 0, problems=c.problems, total_problems=c.total,
                      meta_used=c.meta_used, meta_notes=c.notes, details=c.details, summary=summary,
                      txnid=c.meta["txnid"], snapshot=held is not None)
    return rep, c


def _open(path: StrPath) -> int:
    try:
        return os.open(os.fspath(path), os.O_RDONLY)
    except OSError as e:
        raise CheckUnreadable(f"cannot open {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------- a database in use
#
# A snapshot is what a handle takes to read one commit while writers go on,
# so the check takes one, whether or not other handles have the file open:
# the engine registers its reader slot in the lock file (FORMAT.md §9), and
# until it ends no writer in any process reuses a page that the commit
# reaches -- its tree, and its free-space pages and records, which later
# commits free when they replace them (docs/ARCHITECTURE.md §4).  The pages
# are then read here, with pread, as at rest; only the meta pages can change
# under the check (_Checker.snapshot_metas).  Nothing less would do when
# nobody has the file open either: holding the lock file's open byte shared,
# as a handle does, lets a writer open the file and commit during the check;
# holding it exclusive makes every open wait for the check.
#
# The file is read at rest, without a snapshot, only when none can be
# registered: the engine does not open the file (no meta page it would
# open: then no handle can open it to write either), or its lock file cannot
# be opened (read-only media, or one this user may not write: a writer
# elsewhere would not see the snapshot), or the engine fails otherwise (every
# reader slot taken, ...).  Such a check compares the file's "commit state"
# before and after its reads: the size and the raw first 128 bytes of both
# metas.  Equal states mean no commit completed in between, so every page
# that either meta reaches was left alone (FORMAT.md: a page is never
# overwritten while a meta can reach it; a commit in progress writes only
# pages that neither meta reaches -- free pages, or pages past the hwm --
# whose contents the check does not judge) and the report stands.  A writer
# cannot change pages and put the metas back to identical bytes: every
# commit writes the next txnid (its predecessor's + 1) into one meta's first
# 128 bytes (a close that seals the newest commit durable rewrites the other
# meta with a larger durable field), and a txnid is used again only in place
# of a commit that open passed over (lost by a crash), so after any
# completed commit at least one meta differs from every earlier version of
# itself -- short of a commit that repeats a lost one's meta byte for byte.
# A meta write caught half done by the first read is caught again by the
# second (its final bytes differ from the torn ones).  Growth (or a
# truncation by anyone) changes the size, which is compared too.

_META_SLOTS = (4096, 8192, 16384, 32768, 65536)     # where meta 1 can be


class _HeldCommit:
    """The commit a check reads, held by a snapshot of a read-only handle;
    ``state``: its meta fields (and page_size), as the engine has them."""

    def __init__(self, db: Database, snap: Snapshot, state: _Meta) -> None:
        self.db, self.snap, self.state = db, snap, state

    def newest_txnid(self) -> int:
        """The newest commit published now, by any handle."""
        txnid: int = self.db.stats()["txnid"]
        return txnid

    def close(self) -> None:
        self.snap.close()
        self.db.close()


def _register(fd: int, path: StrPath) -> tuple[Optional[_HeldCommit], str]:
    """A snapshot of the newest commit of the database at ``path``, its
    reader slot in the lock file; or (None, why the file is read at rest)."""
    try:
        kvmap_file = any(os.pread(fd, len(MAGIC), o) == MAGIC for o in (0,) + _META_SLOTS)
    except OSError as e:
        raise CheckUnreadable(f"cannot read {path}: {e.strerror or e}") from None
    if not kvmap_file:
        # no meta the engine could open: no lock file is made beside a file not kvmap's
        return None, "it holds no kvmap meta page"
    try:
        # The check reads no page through this handle: pread and the smallest
        # cache, so no mapping (and no SIGBUS handler put in the caller's process).
        db = _open_engine(os.fspath(path), readonly=True, backend="pread", cache_size=0)
    except Error as e:
        return None, f"the engine does not open it ({type(e).__name__}: {e})"
    try:
        snap = db.snapshot()
        state = snap._state()
    except Error as e:
        db.close()
        return None, f"no snapshot could be taken ({type(e).__name__}: {e})"
    if not state.pop("shared"):
        snap.close()
        db.close()
        return None, ("its lock file cannot be opened, so writers in other processes would not "
                      "see a snapshot")
    return _HeldCommit(db, snap, dict(state, page_size=db.page_size)), ""


def _at_rest_note(why: str) -> str:
    return (f"checked the file at rest, not a snapshot of it: {why}; a commit during the check "
            f"would have given 'changed'")


def _commit_state(fd: int, slots: Optional[tuple[int, ...]] = None) -> tuple[tuple[int, ...], tuple[object, ...]]:
    """(slots, state): the file size and the raw first META_SIZE bytes of
    meta 0 and of meta 1, read at ``slots`` (meta 1's possible offsets).
    Without ``slots``: the page size meta 0 names, if it is a possible one,
    plus every other offset that holds a meta magic (meta 0's page size
    field may be the damaged part); pass the result back to read the same
    places again."""
    size = os.fstat(fd).st_size
    raw0 = os.pread(fd, META_SIZE, 0)
    if slots is None:
        ps = _u32(raw0, 12)[0] if len(raw0) >= 16 else 0
        slots = tuple(o for o in _META_SLOTS
                      if o == ps or os.pread(fd, len(MAGIC), o) == MAGIC)
    return slots, (size, raw0) + tuple(os.pread(fd, META_SIZE, o) for o in slots)


class _Unchanged:
    """The file's commit state when reads began, to tell whether a commit
    landed before they ended."""

    def __init__(self, fd: int, path: StrPath) -> None:
        self.fd = fd
        try:
            self.slots, self.before = _commit_state(fd)
        except OSError as e:
            raise CheckUnreadable(f"cannot read {path}: {e.strerror or e}") from None

    def changed(self) -> bool:
        """Did a commit land (or the file otherwise change) since the start?"""
        try:
            return _commit_state(self.fd, self.slots)[1] != self.before
        except OSError:
            return True


def check(path: StrPath, *, quick: bool = False, max_errors: int = 100,
          progress: Optional[Progress] = None) -> CheckReport:
    """Check the kvmap file at ``path``; returns a :class:`CheckReport`.

    It checks the newest commit through a snapshot registered in the lock
    file, so writers in other processes go on committing (and the report's
    ``txnid`` names the commit checked); the file at rest when no snapshot
    can be registered (``snapshot`` False, a note says why): then if a
    commit lands during the check the report says ``changed`` (``ok``
    False, no problems: no verdict) instead of listing damage that a mix of
    commits would show.  Raises :class:`CheckUnreadable` when the file
    cannot be opened or has no valid meta page.  ``progress(done, total)``
    is called now and then."""
    fd = _open(path)
    try:
        held, why = _register(fd, path)
        if held is not None:
            try:
                return _run(fd, path, quick, max_errors, progress, held)[0]
            finally:
                held.close()
        unchanged = _Unchanged(fd, path)
        try:
            rep = _run(fd, path, quick, max_errors, progress)[0]
        except CheckUnreadable:
            if unchanged.changed():       # e.g. a file being created: not unreadable
                return CheckReport(ok=False, changed=True)
            raise
        if unchanged.changed():
            return CheckReport(ok=False, changed=True)
        rep.meta_notes.append(_at_rest_note(why))
        return rep
    finally:
        os.close(fd)


# ---------------------------------------------------------------- salvage
#
# Salvage recovers the newest committed state: the tree of the newest valid
# meta, even when that meta does not fit a truncated file (the check itself
# then reports on the older meta).  It walks that tree through intact pages
# only and records the key range of every subtree it cannot read.  An intact
# leaf that the walk does not reach (an "orphan") is taken only when it is
# provably the current content of such a range:
#
# * its page is not listed free or pending by the newest free space (when
#   that was read whole: a damaged one may list a current leaf), and its
#   header txnid is not above the newest meta's;
# * all its keys lie in one missing range of a subtree rooted at a branch (a
#   range whose missing page is itself the leaf is "dead": the leaf is lost);
# * no intact leaf with a higher txnid has keys overlapping its span.  A
#   commit that changes a leaf's key range rewrites the leaf (split, merge,
#   rebalance), so the leaf covering a key at the newest commit is the newest
#   version ever written for that key: an overlapping newer version proves
#   this one old;
# * and the newest free space was read whole (every page of it intact), so
#   every page freed since is known; or its txnid is the newest commit's.
#
# An orphan that passes all but the last test cannot be told apart from an
# older version whose replacement is lost: its entries are not copied, only
# counted, or written to a separate database when asked (``unverified``).

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


def _salvage_state(c: _Checker) -> _Checker:
    """The checker state salvage reads by: the check's own when it checked
    the newest valid meta, or a snapshot's commit beside meta pages that
    later commits rewrote (live_metas: no newer meta is judged); else the
    newest meta's free space, walked afresh."""
    newest = c.newest
    if c.meta_used == newest or newest is None:
        s = c
    else:
        s = _Checker(c.fd, c.path, c.file_size, True, 0, None)
        s.metas, s.newest, s.meta_used = c.metas, newest, newest
        s.meta = c.metas[newest]
        s.notes = []
        s.setup()
        s.walk_free()
    s.free_complete = s.free_complete and _free_pages_intact(s)
    return s


_FREE_SPACE_CODES = bytes(1 if i in _FREE_SPACE_PAGES else 0 for i in range(256))


def _free_pages_intact(s: _Checker) -> bool:
    """Do the checksums of all the free-space pages (index, bitmaps, live
    records) match?"""
    want = s.owner.translate(_FREE_SPACE_CODES)
    p = want.find(1, 2)
    while p != -1:
        buf = os.pread(s.fd, s.ps, p * s.ps)
        if len(buf) < s.ps or crc32c(memoryview(buf)[4:]) != _u32(buf, 0)[0]:
            return False
        p = want.find(1, p + 1)
    return True


def _node(s: _Checker, buf: bytes, page: int, ptype: int) -> Optional[tuple[list[bytes], list[int]]]:
    """The keys and cell offsets of an intact branch or leaf page
    (checksum, page number, type, bounds, keys strictly increasing), or None."""
    ps = s.ps
    if len(buf) < ps:
        return None
    crc, t, _, nkeys, _, pgno, _ = _hdr(buf, 0)
    upper = _u32(buf, 24)[0]
    if (t != ptype or pgno != page or not HDR + 2 * nkeys <= upper <= ps
            or (ptype == PT_BRANCH and nkeys < 1) or crc32c(memoryview(buf)[4:]) != crc):
        return None
    hdr = 10 if ptype == PT_BRANCH else 6
    keys: list[bytes] = []
    offs: list[int] = []
    for i in range(nkeys):
        off = _u16(buf, HDR + 2 * i)[0]
        if off < upper or off + hdr > ps:
            return None
        klen = _u16(buf, off)[0]
        if off + hdr + klen > ps or (ptype == PT_LEAF and not 1 <= klen <= s.max_key):
            return None
        key = bytes(buf[off + hdr:off + hdr + klen])
        if ptype == PT_BRANCH and i == 0:
            if key:
                return None
        elif keys and not keys[-1] < key:
            return None
        keys.append(key)
        offs.append(off)
    return keys, offs


def _salvage_tree(s: _Checker) -> Iterator[tuple[bytes, bytes]]:
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
        inside = 2 <= page < s.npages
        if inside and (s.taken[page] or seen[page]):
            s.missing.append((lo, hi))         # one page behind two pointers
            continue
        buf = os.pread(fd, ps, page * ps) if inside else b""
        node = _node(s, buf, page, PT_LEAF if leaf else PT_BRANCH) if inside else None
        if node is None:                       # past the end, out of range or damaged
            if not leaf:
                s.missing.append((lo, hi))
            else:
                s.dead += 1
                if inside:
                    s.damaged_leaves.append(page)
            continue
        keys, offs = node
        if any(k < lo or (hi is not None and k >= hi) for k in keys[1 if not leaf else 0:]):
            s.missing.append((lo, hi))         # in the wrong place: a bad pointer
            continue
        if leaf:
            s.taken[page] = 1
            yield from _leaf_pairs(s, buf, len(keys))
            continue
        seen[page] = 1
        for i in range(len(keys) - 1, -1, -1):
            child = _u64(buf, offs[i] + 2)[0]
            stack.append((child, level + 1, keys[i] if i else lo,
                          keys[i + 1] if i + 1 < len(keys) else hi))


def _salvage_orphans(s: _Checker) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (page, buf, verified) for each orphan leaf that lies in one
    missing range and that no newer leaf version overlaps (see above)."""
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
    p = 2
    while p < s.npages:
        cnt = min(chunk, s.npages - p)
        buf = os.pread(s.fd, cnt * ps, p * ps)
        mv = memoryview(buf)
        for i in range(min(cnt, len(buf) // ps)):
            pg, o = p + i, i * ps
            if s.taken[pg] or (s.freed[pg] and s.free_complete) or buf[o + 4] != PT_LEAF:
                continue
            _, _, _, nkeys, txnid, pgno, _ = _hdr(buf, o)
            if (pgno == pg and nkeys and txnid <= T
                    and crc32c(mv[o + 4:o + ps]) == _u32(buf, o)[0]):
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
            node = _node(s, buf, pg, PT_LEAF)
            if node is None:
                continue
            a, b = node[0][0], node[0][-1]
            spans.append((a, b))
            k = bisect.bisect_right(los, b) - 1
            if k >= 0 and his[k] >= a:
                continue                         # a newer version overlaps: old
            k = bisect.bisect_right(rlo, a) - 1
            if k < 0 or (rhi[k] is not None and b >= rhi[k]):  # type: ignore[operator]   # not None
                continue                         # not inside one missing range
            yield pg, buf, s.free_complete or t == T
        for a, b in spans:                       # same txnid: no conflict among them
            lo_i = bisect.bisect_left(his, a)
            hi_i = bisect.bisect_right(los, b)
            if lo_i < hi_i:
                a, b = min(a, los[lo_i]), max(b, his[hi_i - 1])
            los[lo_i:hi_i] = [a]
            his[lo_i:hi_i] = [b]
        i = j


def _leaf_pairs(c: _Checker, buf: bytes, nkeys: int) -> Iterator[tuple[bytes, bytes]]:
    ps = c.ps
    for i in range(nkeys):
        off = _u16(buf, HDR + 2 * i)[0]
        if off + 6 > ps:
            continue
        klen, vlen = _u16(buf, off)[0], _u32(buf, off + 2)[0]
        if not 1 <= klen <= c.max_key or off + 6 + klen > ps:
            continue
        key = bytes(buf[off + 6:off + 6 + klen])
        if 8 + klen + vlen <= c.max_cell:
            if off + 6 + klen + vlen > ps:
                continue
            yield key, bytes(buf[off + 6 + klen:off + 6 + klen + vlen])
            continue
        if off + 14 + klen > ps:
            continue
        value = _read_chain(c, _u64(buf, off + 6 + klen)[0], vlen)
        if value is None:
            c.lost_values += 1
        else:
            yield key, value


def _read_chain(c: _Checker, p: int, vlen: int) -> Optional[bytes]:
    ps, usable = c.ps, c.usable
    n = -(-vlen // usable)
    parts = []
    seen = set()
    for k in range(n):
        if not 2 <= p < c.npages or p in seen:
            return None
        seen.add(p)
        buf = os.pread(c.fd, ps, p * ps)
        if len(buf) < ps:
            return None
        crc, ptype, _, _, _, pgno, nxt = _hdr(buf, 0)
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
    fd = _open(path)
    try:
        held, why = _register(fd, path)
        try:
            unchanged = _Unchanged(fd, path)
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
                note = _at_rest_note(why)
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
             held: Optional[_HeldCommit]) -> tuple[SalvageResult, bool]:
    """salvage() on the open ``fd``, of the commit ``held`` if given; and whether
    it read a tree outside the snapshot (there is none, or the tree salvaged
    is the newest meta's, not the snapshot's commit)."""
    rep, c = _run(fd, path, False, 100, progress, held)
    s = _salvage_state(c)
    db = _open_engine(os.fspath(out), sync=True)
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
        for pg, buf, verified in _salvage_orphans(s):
            if verified:
                s.orphans.append(pg)
                sink.add(_leaf_pairs(s, buf, _u16(buf, 6)[0]))
                continue
            unv_leaves.append(pg)
            lost_values = s.lost_values
            pairs = list(_leaf_pairs(s, buf, _u16(buf, 6)[0]))
            s.lost_values = lost_values
            unv_pairs += len(pairs)
            if unverified is not None:
                if usink is None:
                    udb = _open_engine(os.fspath(unverified), sync=True)
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
    if any(p.kind == "meta-damaged" and p.page != s.meta_used for p in rep.problems):
        notes.append(f"salvaged from meta {s.meta_used}: the other meta is damaged")
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
                     f"space is incomplete, or unread in a version 1 file): they may be older "
                     f"values or deleted keys; {where}")
    return SalvageResult(report=rep, out=os.fspath(out), meta_used=s.meta_used,
                         recovered=recovered, lost=max(0, s.meta["entries"] - recovered),
                         damaged_leaves=sorted(s.damaged_leaves), lost_values=s.lost_values,
                         orphan_leaves=s.orphans, from_orphans=recovered - in_tree,
                         missing_ranges=len(s.missing) + s.dead, unverified=unv_pairs,
                         unverified_leaves=sorted(unv_leaves),
                         unverified_out=None if unverified is None else os.fspath(unverified),
                         notes=notes), held is None or s is not c


# ---------------------------------------------------------------- CLI

class _Bar:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < 1.0 or now - self.last < 0.1:
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        n = int(frac * 40)
        self.stream.write("\r[" + "#" * n + "." * (40 - n) + f"] {frac * 100:5.1f}%")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 50 + "\r")
            self.stream.flush()


def main(argv: Optional[list[str]] = None, prog: str = "kvmap-check") -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Check the integrity of a kvmap database file.",
        epilog="A database in use is checked through a snapshot of its newest commit, while "
               "writers go on; the report names the transaction checked.  Exit status: 0 "
               "sound; 1 damage found; 2 not checked: the file is unreadable, or a usage "
               "error; 3 a check of the file at rest (no snapshot could be registered) saw it "
               "change: no verdict, re-run when the writer is idle")
    ap.add_argument("path")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also print routine facts of a sound file (which meta page is used)")
    ap.add_argument("--quick", action="store_true",
                    help="skip page checksums and overflow payloads")
    ap.add_argument("--max-errors", type=int, default=100, metavar="N",
                    help="list at most N problems (default 100)")
    ap.add_argument("--salvage", metavar="OUT",
                    help="copy every intact key/value of the newest committed state into a "
                         "new database OUT")
    ap.add_argument("--unverified", metavar="OUT2",
                    help="with --salvage: write the entries of intact leaves that cannot be "
                         "proven current (older values or deleted keys possible) into a new "
                         "database OUT2")
    args = ap.parse_args(argv)
    if args.max_errors < 0:
        ap.error("--max-errors must be >= 0")
    if args.salvage and os.path.lexists(args.salvage):
        ap.error(f"--salvage: {args.salvage} already exists")
    if args.unverified and not args.salvage:
        ap.error("--unverified needs --salvage")
    if args.unverified and os.path.lexists(args.unverified):
        ap.error(f"--unverified: {args.unverified} already exists")
    bar = None
    if not args.json:
        try:
            if sys.stderr.isatty():
                bar = _Bar(sys.stderr)
        except (AttributeError, ValueError):
            bar = None
    sal = None
    try:
        if args.salvage:
            sal = salvage(args.path, args.salvage, unverified=args.unverified, progress=bar)
            rep = sal.report
            rep.problems = rep.problems[:args.max_errors]
        else:
            rep = check(args.path, quick=args.quick, max_errors=args.max_errors, progress=bar)
    except CheckUnreadable as e:
        if bar:
            bar.finish()
        if args.json:
            print(json.dumps({"ok": False, "unreadable": True, "error": str(e)}))
        else:
            print(f"kvmap-check: {args.path}: unreadable: {e}", file=sys.stderr)
        return EXIT_UNCHECKED
    if bar:
        bar.finish()
    if args.json:
        doc = rep.to_dict()
        if sal is not None:
            doc["salvage"] = {k: v for k, v in dataclasses.asdict(sal).items() if k != "report"}
        print(json.dumps(doc))
        return EXIT_CHANGED if rep.changed else EXIT_OK if rep.ok else EXIT_DAMAGE
    if rep.changed:                    # no verdict: nothing about damage
        if sal is not None:
            for note in sal.notes:
                print(f"salvage: {note}")
        print(CHANGED_MESSAGE)
        return EXIT_CHANGED
    s = rep.summary
    for note in rep.meta_notes + (rep.details if args.verbose else []):
        print(f"note: {note}")
    if sal is not None:
        print(f"salvage: {sal.recovered} entries recovered into {sal.out}, {sal.lost} lost "
              f"(meta {sal.meta_used}; {len(sal.damaged_leaves)} damaged leaves, "
              f"{sal.lost_values} values with a damaged overflow chain)")
        if sal.unverified:
            print(f"salvage: {sal.unverified} entries not proven current"
                  + (f", written to {sal.unverified_out}" if sal.unverified_out else ""))
        for note in sal.notes[len(rep.meta_notes):]:
            print(f"salvage: {note}")
    checked = (f"checked transaction {rep.txnid} ("
               + ("a snapshot of the live database" if rep.snapshot else "the file at rest") + ")")
    if rep.ok:
        types = ", ".join(f"{k} {v}" for k, v in s["pages_by_type"].items())
        print("ok")
        print(f"  {checked}")
        print(f"  {s['entries']} entries, depth {s['depth']}, {s['hwm']} pages of "
              f"{s['page_size']} bytes (file {s['file_size']} bytes), txnid {s['txnid']}")
        print(f"  pages: {types}")
        print(f"  free {s['free_pages']}, pending {s['pending_pages']}, "
              f"leaf fill {s['fill_factor'] * 100:.1f}%")
        return EXIT_OK
    for p in rep.problems:
        where = "-" if p.page is None else str(p.page)
        print(f"page {where}: {p.kind}: {p.message}")
    shown = len(rep.problems)
    if rep.total_problems > shown:
        print(f"... and {rep.total_problems - shown} more")
    print(f"{rep.total_problems} problem(s) found; {checked}")
    return EXIT_DAMAGE


if __name__ == "__main__":
    sys.exit(main())
