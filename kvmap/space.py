"""Free space: which pages a write transaction may use, and how that is stored.

A page below the high-water mark (``hwm``) that the tree does not use is
either *reusable* (no snapshot can reach it: it may be written now) or
*pending* (freed by commit ``F`` and still visible to an older snapshot, or to
the previous meta page).  Pages freed by commit ``F`` become reusable for write
transaction ``W`` once ``F <= W - 2`` (so the tree of the older meta page stays
intact for crash recovery) and ``F <=`` the txnid of every live snapshot.

In memory the reusable pages are a bitmap in C (``native/freemap.c``: the
mechanism; the policy is here), so a commit costs a few C calls however many
pages it frees or takes; the lowest pages are handed out first and a free tail
is given back by lowering ``hwm``.  Pending pages are kept per commit in a
``SortedDict`` (txnid -> pages), released oldest first.

On disk (``docs/FORMAT.md``) the reusable set is a bitmap split into pages of
``(page_size - 32) * 8`` bits, found through a chain of bitmap-index pages.
Each commit that frees pages writes its own pending pages (``(start, count)``
records; the page header's txnid says which commit freed them), found through
a chain of pending-index pages.  A commit writes only the bitmap pages whose
range changed, its own pending pages, and the two indexes when they changed
(one u64 per bitmap or pending page); never the whole free list, and never
the pending records of other commits.

Every change made during a write transaction is journaled, so an abort (or a
failed commit) puts the free pages back exactly.
"""

import struct

from sortedcontainers import SortedDict

from ._lib import error_for, ffi, lib, runs_array
from .errors import CorruptionError

PAGE_HEADER = 32
PT_FREE_INDEX = 4
PT_FREE_BITMAP = 5
PT_FREE_PENDING = 6
PT_FREE_PENDING_INDEX = 7
_PENDING_REC = struct.Struct("<QQ")      # start, count
_INDEX_ENTRY = struct.Struct("<QQ")      # record page, txnid


def _ceil_div(a, b):
    return -(-a // b)


def _runs(pages):
    """Sorted runs ``(start, count)`` of an iterable of page numbers.

    >>> _runs([7, 3, 4, 5, 9])
    [(3, 3), (7, 1), (9, 1)]
    """
    pages = sorted(pages)
    if not pages:
        return []
    runs = []
    start = prev = pages[0]
    for pg in pages:
        if pg > prev + 1:
            runs.append((start, prev - start + 1))
            start = pg
        prev = pg
    runs.append((start, prev - start + 1))
    return runs


class FreeSpace:
    """The free pages of one open database (policy lives here, not in C).

    >>> fs = FreeSpace(4096, hwm=10)
    >>> fs.begin(); fs.take(3)
    [(10, 3)]
    >>> fs.give([11, 12]); fs.hwm, fs.runs()
    (13, [(11, 2)])
    >>> fs.rollback(); fs.hwm, fs.runs()
    (10, [])
    """

    def __init__(self, page_size, hwm):
        self.page_size = page_size
        self.bits_per_page = (page_size - PAGE_HEADER) * 8
        self.hwm = hwm
        self.fm = ffi.gc(lib.kvm_fm_new(), lib.kvm_fm_free)
        if self.fm == ffi.NULL:
            raise MemoryError("allocating the free-page map")
        self.pending = SortedDict()      # txnid -> runs (start, count) of the pages it freed
        self.pending_count = 0
        self.bitmap_pages = []           # range -> bitmap page number (0: none)
        self.index_pages = []            # the bitmap-index chain
        self.record_pages = SortedDict() # txnid -> its pending record pages on disk
        self.pindex = []                 # pending-index chain: (page, entries, max txnid), newest first
        self.floor = 0                   # pending records of commits <= floor are void (released)
        self.stale = []                  # record pages of released commits: freed by the next commit
        self.dirty_ranges = set()        # bitmap ranges changed since the last commit
        self._journal = None
        self._staged = None
        self._buf = ffi.new("uint64_t[]", 256)

    @property
    def free_count(self):
        """Number of reusable pages.  O(1)."""
        return lib.kvm_fm_count(self.fm)

    def runs(self, lo=0, hi=None):
        """Runs ``(start, count)`` of reusable pages in [lo, hi)."""
        hi = self.hwm if hi is None else hi
        out = []
        buf = ffi.new("uint64_t[]", 512)
        while lo < hi:
            k = lib.kvm_fm_runs(self.fm, lo, hi, buf, 256)
            if not k:
                break
            out.extend((buf[2 * i], buf[2 * i + 1]) for i in range(k))
            lo = out[-1][0] + out[-1][1]
        return out

    # ------------------------------------------------------------ the map

    def _mark(self, runs):
        b = self.bits_per_page
        dirty = self.dirty_ranges
        dirty.update([s // b for s, _ in runs])
        for start, count in runs:
            if start % b + count > b:   # the run spans several bitmap pages
                dirty.update(range(start // b, (start + count - 1) // b + 1))

    def _add(self, runs):
        for s, n in runs:
            if s + n > self.hwm:
                raise CorruptionError(f"free pages [{s}, {s + n}) outside the database")
        rc = lib.kvm_fm_add(self.fm, runs_array(runs), len(runs))
        if rc:
            raise error_for(rc)
        self._mark(runs)

    def _remove(self, runs):
        rc = lib.kvm_fm_remove(self.fm, runs_array(runs), len(runs))
        if rc:
            raise error_for(rc)
        self._mark(runs)

    # --------------------------------------------------------- transaction

    def begin(self):
        """Start journaling the changes of one write transaction."""
        self._journal = []

    def take(self, n):
        """Take ``n`` pages, lowest reusable first, then from the tail.

        Returns runs ``(start, count)``; pages past ``hwm`` raise it (the
        caller grows the file before touching them).
        """
        runs = []
        buf = self._buf
        while n:
            k = lib.kvm_fm_take(self.fm, n, buf, 128)
            if not k:
                break
            flat = ffi.unpack(buf, 2 * k)
            got = list(zip(flat[0::2], flat[1::2]))
            n -= sum(c for _, c in got)
            runs.extend(got)
        self._mark(runs)
        old_hwm = self.hwm
        if n:
            runs.append((self.hwm, n))
            self.hwm += n
        self._journal.append(("take", runs, old_hwm))
        return runs

    def give(self, pages):
        """Make ``pages`` (taken in this transaction, never written by a
        commit) reusable again."""
        runs = _runs(pages)
        self._add(runs)
        self._journal.append(("give", runs))

    def _trim_tail(self):
        n = lib.kvm_fm_tail(self.fm, self.hwm)
        if n:
            run = (self.hwm - n, n)
            self._remove([run])
            self.hwm -= n
            self._journal.append(("trim", run))

    def rollback(self):
        """Undo every change since begin()."""
        for entry in reversed(self._journal or []):
            self._undo(entry)
        self._journal = None

    def undo_take(self):
        """Undo the last take() (its pages did not fit in the file)."""
        entry = self._journal.pop()
        assert entry[0] == "take", entry
        self._undo(entry)

    def _undo(self, entry):
        kind = entry[0]
        if kind == "take":
            _, runs, old_hwm = entry
            self._add([r for r in runs if r[0] < old_hwm])
            self.hwm = old_hwm
        elif kind == "give":
            self._remove(entry[1])
        elif kind == "trim":
            s, n = entry[1]
            self.hwm = s + n
            self._add([entry[1]])

    def release(self, upto):
        """Make pages freed by commits ``<= upto`` reusable; returns their runs
        (for madvise).  Permanent: not journaled."""
        runs = []
        while self.pending and self.pending.peekitem(0)[0] <= upto:
            runs.extend(self.pending.popitem(0)[1])
        while self.record_pages and self.record_pages.peekitem(0)[0] <= upto:
            t, pages = self.record_pages.popitem(0)
            self.stale.extend(pages)
            self.floor = max(self.floor, t)
        if runs:
            self.pending_count -= sum(n for _, n in runs)
            self._add(runs)
        return runs

    # -------------------------------------------------------------- commit

    def _bitmap(self, r):
        """Bytes of the bitmap page for range r (bit j: page r*B+j is free)."""
        b = self.bits_per_page
        buf = ffi.new("char[]", b // 8)
        lib.kvm_fm_encode(self.fm, r * b, b, buf)
        return ffi.buffer(buf)[:]

    def prepare_commit(self, txnid, freed, leftovers, ensure_pages, write_page):
        """Write the free-list pages of commit ``txnid``; return the meta
        fields ``[hwm, bitmap-index head, pending-index head, free count,
        pending count, pending floor]``.

        ``freed``: pages the transaction's tree changes freed; ``leftovers``:
        pool pages it did not use.  ``ensure_pages(n)`` grows the file to n
        pages; ``write_page(pgno, type, nkeys, next, body)`` adds a page to the
        commit.  Call commit_done() after the meta is durable, or rollback().

        The pending index is a chain, newest first, of ``(record page,
        txnid)`` entries.  A commit rewrites only its head page (adding its own
        record pages, dropping released entries), so its cost does not grow
        with the number of pending commits.  Released entries in older pages
        stay until all of those pages are released, then go at once; the
        meta's pending floor marks them void meanwhile.
        """
        if leftovers:
            self.give(leftovers)
        self._trim_tail()
        b = self.bits_per_page
        per_index = (self.page_size - PAGE_HEADER) // 8
        per_entries = (self.page_size - PAGE_HEADER) // _INDEX_ENTRY.size
        per_records = (self.page_size - PAGE_HEADER) // _PENDING_REC.size
        floor = self.floor
        old_bitmaps = self.bitmap_pages
        head = self.pindex[0] if self.pindex else None
        rest = self.pindex[1:]
        head_live = [e for e in head[1] if e[1] > floor] if head else []
        have = []
        spare = 0
        # Taking pages for the free-list pages changes the free list: repeat
        # until the pages taken are exactly what the free list then needs.
        # Pages taken beyond the need (rare: runs merged) become empty pending
        # pages of this commit, so nothing taken goes back and changes a
        # bitmap after it was planned.
        while True:
            nranges = _ceil_div(self.hwm, b)
            dirty = sorted(r for r in self.dirty_ranges if r < nranges)
            new_bindex = bool(dirty) or nranges != len(old_bitmaps) or not self.index_pages
            replaced = [pg for r, pg in enumerate(old_bitmaps)
                        if pg and (r >= nranges or r in self.dirty_ranges)]
            replaced += self.stale
            if new_bindex:
                replaced += self.index_pages
            upper = _ceil_div(len(freed) + len(replaced) + 1, per_records) + spare
            merged = head is not None and len(head_live) + upper <= per_entries
            drop_rest = merged and bool(rest) and rest[0][2] <= floor
            if merged:
                replaced.append(head[0])
            if drop_rest:
                replaced += [p[0] for p in rest]
            free_runs = _runs(freed + replaced)
            n_records = _ceil_div(len(free_runs), per_records) + spare
            n_entries = n_records + (len(head_live) if merged else 0)
            need = (len(dirty) + (_ceil_div(nranges, per_index) if new_bindex else 0)
                    + n_records + _ceil_div(n_entries, per_entries))
            if len(have) == need:
                break
            if len(have) > need:
                spare += len(have) - need
                continue
            for s, n in self.take(need - len(have)):
                have.extend(range(s, s + n))
        ensure_pages(self.hwm)
        new_pages = iter(have)
        bitmaps = list(old_bitmaps[:nranges]) + [0] * max(0, nranges - len(old_bitmaps))
        for r in dirty:
            pg = next(new_pages)
            bitmaps[r] = pg
            write_page(pg, PT_FREE_BITMAP, 0, r * b, self._bitmap(r))
        index_pages = self.index_pages
        if new_bindex:
            index_pages = [next(new_pages) for _ in range(_ceil_div(nranges, per_index))]
            for i, pg in enumerate(index_pages):
                chunk = bitmaps[i * per_index:(i + 1) * per_index]
                nxt = index_pages[i + 1] if i + 1 < len(index_pages) else 0
                write_page(pg, PT_FREE_INDEX, len(chunk), nxt, struct.pack(f"<{len(chunk)}Q", *chunk))
        record_pages = [next(new_pages) for _ in range(n_records)]
        for i, pg in enumerate(record_pages):
            chunk = free_runs[i * per_records:(i + 1) * per_records]
            write_page(pg, PT_FREE_PENDING, len(chunk), 0,
                       struct.pack(f"<{2 * len(chunk)}Q", *[x for r in chunk for x in r]))
        entries = [(pg, txnid) for pg in record_pages] + (head_live if merged else [])
        if merged:
            tail = [] if drop_rest else rest
        else:
            tail = self.pindex
        pindex = []
        for pg in list(new_pages):
            chunk, entries = entries[:per_entries], entries[per_entries:]
            pindex.append((pg, chunk, max(t for _, t in chunk)))
        pindex += tail
        for i, (pg, chunk, _) in enumerate(pindex):
            if i + len(tail) >= len(pindex):
                break
            nxt = pindex[i + 1][0] if i + 1 < len(pindex) else 0
            write_page(pg, PT_FREE_PENDING_INDEX, len(chunk), nxt,
                       struct.pack(f"<{2 * len(chunk)}Q", *[x for e in chunk for x in e]))
        freed_count = sum(n for _, n in free_runs)
        self._staged = (bitmaps, index_pages, record_pages, pindex, free_runs, freed_count, txnid)
        return [self.hwm, index_pages[0] if index_pages else 0,
                pindex[0][0] if pindex else 0, self.free_count,
                self.pending_count + freed_count, floor]

    def commit_done(self):
        """The commit prepared last is durable: adopt its free-list pages."""
        bitmaps, index_pages, record_pages, pindex, free_runs, freed_count, txnid = self._staged
        self.bitmap_pages, self.index_pages, self.pindex = bitmaps, index_pages, pindex
        if free_runs:
            self.pending.setdefault(txnid, []).extend(free_runs)
            self.pending_count += freed_count
            self.stale = []
        if record_pages:
            self.record_pages[txnid] = record_pages
        self.dirty_ranges.clear()
        self._journal = None
        self._staged = None

    # ---------------------------------------------------------------- load

    def load(self, read_page, index_head, pending_head, free_count, pending_count, floor):
        """Read the free-list pages of the current meta.

        ``read_page(pgno, type) -> bytes`` returns a checksum-verified page.
        Every chain is bounded by the page count, so a damaged file raises
        CorruptionError instead of looping.
        """
        b = self.bits_per_page
        self.floor = floor
        seen = set()

        def claim(pg):
            if pg in seen:
                raise CorruptionError(f"page {pg} appears twice in the free list")
            seen.add(pg)

        def chain(head, ptype, width):
            pg = head
            while pg:
                if len(seen) > self.hwm:
                    raise CorruptionError(f"free-list chain loops at page {pg}")
                claim(pg)
                page = read_page(pg, ptype)
                nkeys, = struct.unpack_from("<H", page, 6)
                nxt, = struct.unpack_from("<Q", page, 24)
                if PAGE_HEADER + 8 * width * nkeys > self.page_size:
                    raise CorruptionError(f"page {pg}: entry count out of range")
                yield pg, struct.unpack_from(f"<{width * nkeys}Q", page, PAGE_HEADER)
                pg = nxt

        for pg, entries in chain(index_head, PT_FREE_INDEX, 1):
            self.index_pages.append(pg)
            self.bitmap_pages.extend(entries)
        if index_head and len(self.bitmap_pages) != _ceil_div(self.hwm, b):
            raise CorruptionError("free index does not cover the database")
        for r, pg in enumerate(self.bitmap_pages):
            if not pg:
                continue
            claim(pg)
            page = read_page(pg, PT_FREE_BITMAP)
            first, = struct.unpack_from("<Q", page, 24)
            if first != r * b:
                raise CorruptionError(f"page {pg}: bitmap covers the wrong pages")
            rc = lib.kvm_fm_decode(self.fm, r * b, b, page[PAGE_HEADER:], self.hwm)
            if rc < 0:
                raise error_for(rc)
        for pg, flat in chain(pending_head, PT_FREE_PENDING_INDEX, 2):
            entries = list(zip(flat[0::2], flat[1::2]))
            self.pindex.append((pg, entries, max((t for _, t in entries), default=0)))
            for rec, txnid in entries:
                if txnid <= floor:
                    continue   # released before this meta was written
                claim(rec)
                page = read_page(rec, PT_FREE_PENDING)
                nkeys, = struct.unpack_from("<H", page, 6)
                written, = struct.unpack_from("<Q", page, 8)
                if written != txnid or PAGE_HEADER + _PENDING_REC.size * nkeys > self.page_size:
                    raise CorruptionError(f"page {rec}: not the pending page of commit {txnid}")
                self.record_pages.setdefault(txnid, []).append(rec)
                runs = self.pending.setdefault(txnid, [])
                for i in range(nkeys):
                    s, n = _PENDING_REC.unpack_from(page, PAGE_HEADER + i * _PENDING_REC.size)
                    if s < 2 or n < 1 or s + n > self.hwm:
                        raise CorruptionError(f"page {rec}: pending pages out of range")
                    runs.append((s, n))
                    self.pending_count += n
        self.dirty_ranges.clear()
        if self.free_count != free_count or self.pending_count != pending_count:
            raise CorruptionError("free-list page counts disagree with the meta page")

    # --------------------------------------------------------------- check

    def _check(self):
        """Assert the invariants of the in-memory free space (for tests)."""
        runs = self.runs(0, 1 << 62)
        assert sum(n for _, n in runs) == self.free_count
        assert all(s >= 2 and s + n <= self.hwm for s, n in runs), (runs, self.hwm)
        pend = [p for runs in self.pending.values() for s, n in runs for p in range(s, s + n)]
        assert len(pend) == self.pending_count
        assert len(set(pend)) == len(pend)
        free = {p for s, n in runs for p in range(s, s + n)}
        for p in pend:
            assert 2 <= p < self.hwm and p not in free, p
