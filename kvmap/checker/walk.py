"""The check proper: the walks of the tree and of the free space from the
meta chosen (metas.py), every page checked to have exactly one owner, and
:func:`check`, which holds the commit to check (snapshot.py) and runs them."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any, Callable, Optional

from .metas import MetaChoice
from .pagelayout import (HDR, PT_BRANCH, PT_FREE_BITMAP, PT_FREE_INDEX, PT_LEAF, PT_OVERFLOW, PT_RECORD,
                         R_FLAGS_PAGES_DURABLE, TYPE_NAMES, VERSION, Meta, header, leaf_cell_head,
                         page_crcs, u16, u32, u64)
from .records import Read, RecordFault, Runs, record_items
from .report import CheckReport, CheckUnreadable
from .snapshot import HeldCommit, Unchanged, at_rest_note, open_file, register

if TYPE_CHECKING:
    from _typeshed import StrPath


# owner codes, one byte per page
O_NONE, O_META, O_BRANCH, O_LEAF, O_OVERFLOW = 0, 1, 2, 3, 4
O_FREE_INDEX, O_FREE_BITMAP, O_RECORD, O_FREE, O_PENDING = 5, 6, 7, 8, 9
OWNER_NAMES = {O_META: "meta", O_BRANCH: "branch", O_LEAF: "leaf", O_OVERFLOW: "overflow",
               O_FREE_INDEX: "free-index", O_FREE_BITMAP: "free-bitmap", O_RECORD: "record",
               O_FREE: "free", O_PENDING: "pending"}
FREE_SPACE_PAGES = (O_FREE_INDEX, O_FREE_BITMAP, O_RECORD)
CHECKED = (O_BRANCH, O_LEAF, O_OVERFLOW) + FREE_SPACE_PAGES
REACHABLE = CHECKED + (O_META,)

# progress(done, total)
Progress = Callable[[int, int], object]
# per kind of problem: [the first message, how many]
Agg = dict[str, list[Any]]
# the tree walk's stack: page, level, lo, hi, what
Walk = tuple[int, int, Optional[bytes], Optional[bytes], str]


class Checker(MetaChoice):
    """One check of one commit: the meta (MetaChoice), then the walks,
    recording an owner code per page."""

    # Set by setup, the walks, and salvage (salvaging.py).
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
        super().__init__(fd, path, file_size, max_errors)
        self.quick = quick
        self.progress = progress

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
        checked = bytes(1 if c in CHECKED else 0 for c in range(256))
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
                crcs = page_crcs(pages, ps, len(pages) // ps)
                for j, c in enumerate(crcs):
                    if c != u32(pages, j * ps)[0]:
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
        if prev in (O_FREE, O_PENDING) and code in REACHABLE:
            self.add("reachable-and-free", page,
                     f"page {page} is {OWNER_NAMES[prev]} but also {what}")
        elif code in (O_FREE, O_PENDING) and prev in REACHABLE:
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
        crc, ptype, flags, nkeys, txnid, pgno, nxt = header(buf, 0)
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
        stack: list[Walk] = [(root, 0, None, None, "meta root")]
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
            nkeys = u16(buf, 6)[0]
            upper = u32(buf, 24)[0]
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
        off = u16(buf, HDR + 2 * i)[0]
        if off < upper or off + hdr > self.ps:
            self.add("cell-out-of-bounds", page,
                     f"page {page} cell {i}: offset {off} outside [{upper}, {self.ps - hdr}]")
            return None, None
        klen = u16(buf, off)[0]
        if off + hdr + klen > self.ps:
            self.add("cell-out-of-bounds", page, f"page {page} cell {i}: key of {klen} bytes "
                     f"at {off} runs past the page end")
            return None, None
        return off, bytes(buf[off + hdr:off + hdr + klen])

    def _order(self, page: int, i: int, key: bytes, prev: Optional[bytes], lo: Optional[bytes],
               hi: Optional[bytes], agg: Agg) -> None:
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

    def _flush(self, page: int, agg: Agg) -> None:
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
        agg: Agg = {}
        for i, off in enumerate(struct.unpack_from(f"<{nkeys}H", buf, HDR)):
            if off < upper or off + 6 > ps:
                self._cell_key(page, buf, i, upper, 6)      # reports it
                continue
            klen, vlen = leaf_cell_head.unpack_from(buf, off)
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
                self.overflow(page, i, u64(buf, end)[0], vlen)
        self.entries += entries
        self._flush(page, agg)
        self.leaf_used += used

    def branch(self, page: int, buf: bytes, nkeys: int, upper: int, lo: Optional[bytes],
               hi: Optional[bytes], level: int, stack: list[Walk]) -> None:
        cells: list[Optional[tuple[Optional[bytes], int]]] = []
        prev = None
        agg: Agg = {}
        for i in range(nkeys):
            off, key = self._cell_key(page, buf, i, upper, 10)
            if off is None:
                cells.append(None)
                continue
            child = u64(buf, off + 2)[0]
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
            nxt = u64(buf, 24)[0]
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

    def _free_index(self, m: Meta, hwm: int, nranges: int) -> list[int]:
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
            nk = u16(buf, 6)[0]
            if nk > per:
                self.add("free-list", p, f"bitmap-index page {p}: {nk} entries > {per}")
                break
            broken = False
            for i in range(nk):
                bitmaps.append(u64(buf, HDR + 8 * i)[0])
            p, what = u64(buf, 24)[0], f"bitmap-index page {p} next"
        if m["free_index"] and not broken and len(bitmaps) != nranges:
            self.add("free-list", m["free_index"], f"bitmap index holds {len(bitmaps)} entries; "
                     f"hwm {hwm} needs {nranges}")
        return bitmaps

    def _records(self, m: Meta, bitmaps: list[int], nranges: int) -> None:
        """Walk the live records, newest first: those of the commits after
        the floor (older ones are void: never read), reached through their
        ``prev`` pointers from the meta's.  Their pages are claimed, so are
        the pages they list freed (pending), except those a newer record
        lists as released early; the newest record's overrides replace
        entries of ``bitmaps``."""
        stop = max(m["floor"], 1)
        page = m["record"]
        marked = 0
        released = Runs()      # pages the records read so far released early
        for txn in range(m["txnid"], stop, -1):     # bounded: each record claims a page
            first, prev, last_range = page, 0, None
            try:
                for item in record_items(self._record_reader(txn), first, txn, self.ps,
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
            except RecordFault as f:
                if f.message:
                    self.add("free-list", f.page, f.message)
                return
            if not prev and txn - 1 > stop:
                self.add("free-list", first, f"record page {first}: the record of commit {txn} "
                         f"does not lead to its predecessor's (prev 0), which is live (floor "
                         f"{m['floor']})")
                return
            page = prev

    def _record_reader(self, txn: int) -> Read:
        """``read`` for :func:`_record_items` in the walk: claims and vets
        each page of the record of commit ``txn`` (ref_ok, claim and
        read_page report what is wrong)."""
        def read(page: int, k: int) -> bytes:
            what = f"page {k} of the record of commit {txn}"
            if not self.ref_ok(page, what) or not self.claim(page, O_RECORD, what):
                raise RecordFault(page)
            buf = self.read_page(page, (PT_RECORD,), what)
            if buf is None:
                raise RecordFault(page)
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
            first = u64(buf, 24)[0]
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


def _note(agg: Agg, kind: str, msg: str) -> None:
    if kind in agg:
        agg[kind][1] += 1
    else:
        agg[kind] = [msg, 1]


def run(fd: int, path: StrPath, quick: bool, max_errors: int, progress: Optional[Progress],
         held: Optional[HeldCommit] = None) -> tuple[CheckReport, Checker]:
    """Check the commit ``held``, or without it the file at rest."""
    if progress:
        progress(0, 1)        # begun: the commit to check is held, nothing read yet
    try:
        size = os.fstat(fd).st_size
        c = Checker(fd, path, size, quick, max(0, int(max_errors)), progress)
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
    fd = open_file(path)
    try:
        held, why = register(fd, path)
        if held is not None:
            try:
                return run(fd, path, quick, max_errors, progress, held)[0]
            finally:
                held.close()
        unchanged = Unchanged(fd, path)
        try:
            rep = run(fd, path, quick, max_errors, progress)[0]
        except CheckUnreadable:
            if unchanged.changed():       # e.g. a file being created: not unreadable
                return CheckReport(ok=False, changed=True)
            raise
        if unchanged.changed():
            return CheckReport(ok=False, changed=True)
        rep.meta_notes.append(at_rest_note(why))
        return rep
    finally:
        os.close(fd)
