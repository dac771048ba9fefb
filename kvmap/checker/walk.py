"""The check proper: the walks of the tree and of the free space from the
meta chosen (metas.py), every page checked to have exactly one owner, and
:func:`check`, which holds the commit to check (snapshot.py) and runs them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from .metas import MetaChoice
from .pagelayout import (BRANCH_HDR, CELL_OFFSET, CELL_PAST_END, CHAIN_CUT, CHAIN_LONG, CHAIN_PAGE,
                         CHAIN_RANGE, CHAIN_TAKEN, FIRST_KEY, HDR, KEY_LENGTH, KEY_ORDER, KEY_PAST_END,
                         LEAF_HDR, META_PAGES, OVERFLOW, PAGE_COUNTS, PAGE_DEPTH, PAGE_MISPLACED, PAGE_OK, PAGE_SHORT,
                         PAGE_TYPE, PT_BRANCH, PT_FREE_BITMAP, PT_FREE_INDEX, PT_LEAF, PT_OVERFLOW,
                         PT_RECORD, R_FLAGS_PAGES_DURABLE, SUM_FAILS, SUM_HOLDS, TYPE_NAMES, VERSION, Meta,
                         BITS_END, BITS_OUTSIDE, BitmapClaims, PageReader, claim_run, header, meta_pages, u16,
                         u64, uint8_array)
from .records import Read, RecordFault, Runs, record_items
from ..errors import Error
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
_CHECKED_CODES = bytes(1 if c in CHECKED else 0 for c in range(256))    # owner.translate: 1 per page to verify

# progress(done, total)
Progress = Callable[[int, int], object]
# the tree walk's stack: page, level, lo, hi, what
Walk = tuple[int, int, Optional[bytes], Optional[bytes], str]


class Checker(MetaChoice):
    """One check of one commit: the meta (MetaChoice), then the walks,
    recording an owner code per page."""

    # Set by setup, the walks, and salvage (salvaging.py).
    ps: int
    first: int                # the first page after the meta pages (2 in a version 1 or 2 file)
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
    intact: PageReader        # salvage's rules: an intact page (checksum, every key in order)

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
        self.sums = bytearray(self.npages)                 # checksum states (SUM_*), full mode
        self.freed = bytearray(self.npages)                # 1: listed free or pending
        self.first = meta_pages(m["version"])
        for i in range(min(self.first, self.npages)):
            self.owner[i] = O_META
        self.reader = PageReader(self.fd, ps, self.npages, m["txnid"], not self.quick, self.sums)
        self.owner_c, self.sums_c, self.freed_c = (uint8_array(self.owner), uint8_array(self.sums),
                                                   uint8_array(self.freed))
        self.usable = self.reader.usable

    def checksum_pass(self) -> None:
        """Full mode, after the walks: verify the checksum of every page the
        tree and the free space reach (free and pending pages hold whatever
        they held; they are not checked): those the tree walk read whole
        are known already, the others are read in large sequential runs."""
        n, owner = self.npages, self.owner
        want = owner.translate(_CHECKED_CODES)            # 1 per page to verify
        want_c = uint8_array(want)
        p = self.first
        while p < n:
            cnt = min(self.reader.batch, n - p)
            self.reader.checksums(want_c, self.sums_c, p, p + cnt)
            p += cnt
            if self.progress:
                self.progress(n + p, 2 * n)
        pg = self.sums.find(SUM_FAILS, self.first)
        while pg != -1:
            if want[pg]:
                self.add("bad-checksum", pg, f"page {pg} ({OWNER_NAMES[owner[pg]]}): checksum mismatch")
            pg = self.sums.find(SUM_FAILS, pg + 1)

    def ref_ok(self, page: int, what: str) -> bool:
        """Is ``page`` a possible target?  Reports out-of-range otherwise."""
        if page < self.first or page >= self.hwm:
            self.add("out-of-range", page, f"{what} refers to page {page}, outside [{self.first}, "
                     f"{self.hwm})")
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

    def read_page(self, page: int, expect_types: tuple[int, ...], what: str) -> Optional[bytes]:
        """Read and vet one page: header page number, type, transaction.
        Returns the bytes or None if it must not be trusted further."""
        buf = os.pread(self.fd, self.ps, page * self.ps)
        verdict = self.reader.header_verdict(page, buf, expect_types)
        if verdict != PAGE_OK:
            self.unvetted(page, what, verdict, buf, expect_types)
            return None
        return buf

    def unvetted(self, page: int, what: str, verdict: int, buf: Any, expect_types: tuple[int, ...]) -> None:
        """Report the header ``verdict`` on ``page`` (its header at the
        start of ``buf``)."""
        if verdict == PAGE_SHORT:
            self.add("out-of-range", page, f"page {page} ({what}) cannot be read whole")
            return
        _, ptype, _, _, txnid, pgno, _ = header(buf, 0)
        if verdict == PAGE_MISPLACED:
            self.add("bad-header", page,
                     f"page {page} ({what}): header says page {pgno} (misplaced or damaged page)")
        elif verdict == PAGE_TYPE:
            exp = "/".join(TYPE_NAMES[t] for t in expect_types)
            self.add("bad-type", page, f"page {page} ({what}): type {ptype} "
                     f"({TYPE_NAMES.get(ptype, 'unknown')}), expected {exp}")
        else:                                      # PAGE_NEWER
            self.add("newer-than-meta", page,
                     f"page {page} ({what}): written by transaction {txnid}, after the meta's "
                     f"{self.meta['txnid']} (a page reused after a commit that a crash lost, or damage)")

    # ------------------------------------------------------------ tree

    def walk_tree(self) -> None:
        """The tree, depth first and left to right, from the meta's root:
        each page claimed, read and checked (checkpage.c), its cells' events
        reported; a branch's children pushed, or, when they are leaves, read
        and checked in batches."""
        m = self.meta
        root, depth = m["root"], m["depth"]
        self.entries = 0
        self.leaf_used = 0
        self.nleaves = 0
        self.visited = 0
        if root == 0:
            return
        ps, leaf_level = self.ps, depth - 1
        stack: list[Walk] = [(root, 0, None, None, "meta root")]
        while stack:
            page, level, lo, hi, what = stack.pop()
            if not self.visit():
                break
            if not self.ref_ok(page, what):
                continue
            code = O_LEAF if level == leaf_level else O_BRANCH
            if not self.claim(page, code, f"referenced by {what}"):
                continue
            buf = os.pread(self.fd, ps, page * ps)
            res = self.reader.tree_page(page, buf, level == leaf_level, lo, hi)
            if res.checksum >= 0:
                self.sums[page] = SUM_HOLDS if res.checksum else SUM_FAILS
            if not self.tree_page_sound(page, what, level, res, buf):
                continue
            if level == leaf_level:
                self.leaf(page, res, buf, 0, lo, hi)
                continue
            self.cell_events(page, res, buf, 0, lo, hi)
            if level + 1 < leaf_level or self.first < META_PAGES:
                # so that the walk visits them left to right (a version 1 or
                # 2 file's leaves too, one by one: the C reader's batches of
                # leaves do not read page 2, version 3's third meta page)
                stack.extend(reversed(self.children(page, level, res.nkeys, buf, lo, hi)))
            elif not self.leaves(page, res.nkeys, buf, lo, hi):
                break

    def visit(self) -> bool:
        """Count a page the walk takes up (False: more than the file has,
        which only many references to the same pages make: stop there)."""
        self.visited += 1
        if self.visited > self.npages:
            return False
        if self.progress and self.visited % 1024 == 0:
            self.progress(min(self.visited, self.npages), 2 * self.npages)
        return True

    def tree_page_sound(self, page: int, what: str, level: int, res: Any, buf: Any, base: int = 0) -> bool:
        """Report the verdict ``res`` on branch or leaf ``page`` at ``level``
        (its bytes at ``base`` in ``buf``); is it sound enough for its cells?"""
        verdict = res.verdict
        if verdict == PAGE_OK:
            return True
        if verdict == PAGE_DEPTH:
            ptype = buf[base + 4]
            self.add("depth-mismatch", page,
                     f"page {page} ({what}) is a {TYPE_NAMES[ptype]} at level {level}; "
                     f"leaves are at level {self.meta['depth'] - 1} (depth {self.meta['depth']})")
        elif verdict == PAGE_COUNTS:
            self.add("cell-out-of-bounds", page,
                     f"page {page}: nkeys {res.nkeys} / upper {res.upper} inconsistent")
        else:
            self.unvetted(page, what, verdict, memoryview(buf)[base:base + HDR], (PT_BRANCH, PT_LEAF))
        return False

    def cell_events(self, page: int, res: Any, buf: Any, base: int, lo: Optional[bytes],
                    hi: Optional[bytes]) -> None:
        """Report the events of the cells of branch or leaf ``page`` (its
        bytes at ``base`` in ``buf``, between ``lo`` and ``hi``), and follow
        its overflow chains, in cell order."""
        ps, events = self.ps, self.reader.events
        hdr = LEAF_HDR if buf[base + 4] == PT_LEAF else BRANCH_HDR
        for j in range(res.first_event, res.first_event + res.nevents):
            e = events[j]
            kind, i, off = e.kind, e.cell, e.offset
            if kind == OVERFLOW:
                self.overflow(page, i, e.page, e.length)
            elif kind == CELL_OFFSET:
                self.add("cell-out-of-bounds", page,
                         f"page {page} cell {i}: offset {off} outside [{res.upper}, {ps - hdr}]")
            elif kind == KEY_PAST_END:
                self.add("cell-out-of-bounds", page, f"page {page} cell {i}: key of {e.length} bytes "
                         f"at {off} runs past the page end")
            elif kind == CELL_PAST_END:
                self.add("cell-out-of-bounds", page,
                         f"page {page} cell {i}: cell of {e.length} bytes at {off} runs past the page end")
            elif kind == KEY_LENGTH:
                self.add("cell-out-of-bounds", page, f"page {page} cell {i}: key length {e.length}")
            elif kind == FIRST_KEY:
                self.add("key-order", page,
                         f"page {page} cell 0: has a {e.length}-byte key; it must be empty")
            else:                                  # KEY_ORDER, KEY_RANGE
                key = bytes(buf[base + off:base + off + min(e.length, 40)])
                if kind == KEY_ORDER:
                    prev = bytes(buf[base + e.prev:base + e.prev + min(e.prev_length, 40)])
                    msg = f"key {key!r} is not greater than the previous key {prev!r}"
                else:
                    msg = (f"key {key!r} outside the range [{lo if lo is None else lo[:40]!r}, "
                           f"{hi if hi is None else hi[:40]!r}) set by its ancestors")
                more = f" (and {e.count - 1} more cells)" if e.count > 1 else ""
                self.add("key-order" if kind == KEY_ORDER else "key-range", page,
                         f"page {page} cell {i}: {msg}{more}")

    def cell_key(self, buf: bytes, i: int) -> bytes:
        """The key of sound cell ``i`` of the branch in ``buf`` (tree_page's cells)."""
        cell = self.reader.cells[i]
        return buf[cell.key:cell.key + cell.key_length]

    def children(self, page: int, level: int, nkeys: int, buf: bytes, lo: Optional[bytes],
                 hi: Optional[bytes]) -> list[Walk]:
        """The children of branch ``page`` in its sound cells, left to
        right, each with the range its cell and the next sound one set (the
        first cell's: from ``lo``; the last one's: to ``hi``)."""
        cells = self.reader.cells
        sound = [i for i in range(nkeys) if not cells[i].status]
        keys = [lo if i == 0 else self.cell_key(buf, i) for i in sound]
        keys.append(hi)
        return [(cells[i].page, level + 1, keys[k], keys[k + 1], f"branch {page} cell {i}")
                for k, i in enumerate(sound)]

    def leaves(self, branch: int, nkeys: int, buf: bytes, lo: Optional[bytes], hi: Optional[bytes]) -> bool:
        """The leaves that the sound cells of bottom branch ``branch`` (its
        bytes in ``buf``) point to, in order, as the walk would take them up
        one by one from its stack; their pages read and checked in batches
        (checkpage.c).  False when the walk must stop (visit)."""
        ps, npages, owner, reader = self.ps, self.npages, self.owner, self.reader
        level = self.meta["depth"] - 1
        for n in reader.leaves(buf, nkeys, lo, hi):
            results = reader.results
            for j in range(n):
                if not self.visit():
                    return False
                res = results[j]
                page = res.pgno
                if not META_PAGES <= page < npages or owner[page]:
                    # out of range, or a page with an owner: as the walk reports them
                    what = f"branch {branch} cell {res.cell}"
                    if self.ref_ok(page, what):
                        self.claim(page, O_LEAF, f"referenced by {what}")
                    continue
                owner[page] = O_LEAF
                if res.verdict and not self.tree_page_sound(page, f"branch {branch} cell {res.cell}", level,
                                                            res, reader.buf, j * ps):
                    continue
                if res.nevents:      # the leaf's range, for the problems that name it
                    self.leaf(page, res, reader.buf, j * ps,
                              lo if res.cell == 0 else self.cell_key(buf, res.cell),
                              hi if res.next_cell < 0 else self.cell_key(buf, res.next_cell))
                else:
                    self.leaf(page, res, reader.buf, j * ps, None, None)
        return True

    def leaf(self, page: int, res: Any, buf: Any, base: int, lo: Optional[bytes], hi: Optional[bytes]) -> None:
        """A leaf sound enough for its cells: their events reported, its
        entries counted."""
        self.nleaves += 1
        if res.nevents:
            self.cell_events(page, res, buf, base, lo, hi)
        self.entries += res.entries
        self.leaf_used += res.used

    def overflow(self, leaf: int, cell: int, first: int, vlen: int) -> None:
        """The overflow chain of a value of ``vlen`` bytes (checkpage.c
        follows it and claims its pages; here what ends it is reported)."""
        n = -(-vlen // self.usable)
        what = f"leaf {leaf} cell {cell}"
        done = 0                                  # pieces followed before ``first``
        while True:
            chain = self.reader.overflow_chain(first, n - done, self.owner_c, O_OVERFLOW)
            end, k, p = chain.end, done + chain.piece, chain.page
            if not (end == CHAIN_RANGE and self.first <= p < min(META_PAGES, self.npages)):
                break
            # page 2 of a version 1 or 2 file, which the C reader takes for
            # version 3's third meta page: that piece here, then on
            nxt = self.low_overflow_piece(p, k, n, vlen, what)
            if nxt is None:
                return
            first, done = nxt, k + 1
        if end == CHAIN_RANGE:
            self.ref_ok(p, f"overflow chain of {what} (piece {k})")
        elif end == CHAIN_TAKEN:
            self.claim(p, O_OVERFLOW, f"overflow piece {k} of {what}")
        elif end == CHAIN_PAGE:
            self.unvetted(p, f"overflow piece {k} of {what}", chain.verdict, self.reader.chain_header(),
                          (PT_OVERFLOW,))
        elif end == CHAIN_LONG:
            self.add("overflow-chain", p, f"page {p}: last overflow page of {what} "
                     f"({n} pages for {vlen} bytes) has next {chain.next}, not 0")
        elif end == CHAIN_CUT:
            self.add("overflow-chain", p, f"page {p}: overflow chain of {what} ends after "
                     f"{k + 1} pages; {vlen} bytes need {n}")

    def low_overflow_piece(self, p: int, k: int, n: int, vlen: int, what: str) -> Optional[int]:
        """Piece ``k`` (of ``n``, for ``vlen`` bytes) of the overflow chain
        of ``what`` at page ``p``, below META_PAGES (a version 1 or 2 file),
        as checkpage.c follows a piece: claimed, its header vetted, its next
        page returned (None: the chain ends here, reported if it must not)."""
        if self.owner[p]:
            self.claim(p, O_OVERFLOW, f"overflow piece {k} of {what}")
            return None
        self.owner[p] = O_OVERFLOW
        buf = os.pread(self.fd, self.ps, p * self.ps)
        verdict = self.reader.header_verdict(p, buf, (PT_OVERFLOW,))
        if verdict != PAGE_OK:
            self.unvetted(p, f"overflow piece {k} of {what}", verdict, buf, (PT_OVERFLOW,))
            return None
        nxt: int = u64(buf, 24)[0]
        if k == n - 1 and nxt:
            self.add("overflow-chain", p, f"page {p}: last overflow page of {what} "
                     f"({n} pages for {vlen} bytes) has next {nxt}, not 0")
        elif k < n - 1 and not nxt:
            self.add("overflow-chain", p, f"page {p}: overflow chain of {what} ends after "
                     f"{k + 1} pages; {vlen} bytes need {n}")
        return nxt if k < n - 1 and nxt else None

    # ------------------------------------------------------------ free space

    def walk_free(self) -> None:
        """The free space of the meta (FORMAT.md §6; freelist.c,
        freelist_load): the bitmap-index chain, the records of the commits
        after the floor (the newest one's overrides replace index entries),
        then the bitmaps; the free and pending pages they list are claimed.
        A version 1 or 2 file's free space is not read (version 1's format
        is gone; version 2's names pages from 2): nothing is known free
        there."""
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
                        if b < 1 or a < META_PAGES or a + b > self.file_pages:
                            marked = self._pending_run(first, a, b, marked)   # reports it
                        else:
                            for s_, c_ in released.outside(a, b):
                                marked = self._pending_run(first, s_, c_, marked)
                    elif kind == "released" and not released.add(a, b, self.file_pages):
                        self.add("free-list", first, f"record page {first}: released run "
                                 f"({a}, {b}) is empty or outside [{META_PAGES}, {self.file_pages}) "
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
        if count < 1 or start < META_PAGES or start + count > self.hwm:
            self.add("free-list", record, f"record page {record}: freed run ({start}, {count}) "
                     f"is empty or outside [{META_PAGES}, {self.hwm})")
            return marked
        self.pending_pages += count
        pg, end = start, min(start + count, self.npages)
        while pg < end:
            # every page of the run is marked, at most npages of all the runs
            claimed = claim_run(self.owner_c, self.freed_c, pg, end - pg, O_PENDING,
                                max(0, self.npages - marked))
            marked, pg = marked + claimed, pg + claimed
            if pg == end:
                break
            marked += 1
            if marked > self.npages:                      # garbage: stop marking
                return marked
            self.claim(pg, O_PENDING, f"listed freed in record page {record}")    # it has an owner
            pg += 1
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
            bits = BitmapClaims(buf[HDR:], first, hwm, self.npages, self.owner_c, self.freed_c, O_FREE)
            while True:
                stop, bit, counted = bits.next()
                self.free_bits += counted
                if stop == BITS_END:
                    break
                pg = first + bit
                if stop == BITS_OUTSIDE:
                    self.add("free-list", bm, f"bitmap page {bm}: bit set for page {pg}, outside "
                             f"[{META_PAGES}, {hwm})")
                else:                              # BITS_TAKEN: a page with an owner
                    self.claim(pg, O_FREE, f"set in bitmap page {bm}")

    # ------------------------------------------------------------ ownership

    def ownership(self) -> None:
        owner = self.owner
        p = owner.find(0, self.first)
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
        if leaked:       # (a version 1 or 2 file's free space is not read: its pages are unread)
            counts["leaked" if m["version"] == VERSION else "unread"] = leaked
        cap = self.nleaves * self.usable
        return dict(
            pages_by_type=counts, depth=m["depth"], entries=self.entries,
            meta_entries=m["entries"], free_pages=self.free_bits,
            pending_pages=self.pending_pages, hwm=self.hwm, file_size=self.file_size,
            page_size=self.ps, txnid=m["txnid"],
            fill_factor=round(self.leaf_used / cap, 4) if cap else 0.0,
            mode="quick" if self.quick else "full",
        )


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
        if c.meta["version"] == VERSION:       # (a version 1 or 2 file's free pages are unknown)
            c.ownership()
        summary = c.summary()
    except Error:                              # kvmap's own (CheckUnreadable & co.) are OSErrors too
        raise
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
