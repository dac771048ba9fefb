"""Free space: which pages a write transaction may use, and how that is stored.

A page below the high-water mark (``hwm``) that the tree does not use is
either *reusable* (no snapshot can reach it: it may be written now) or
*pending* (freed by commit ``F`` and still visible to an older snapshot, or to
the previous meta page).  Pages freed by commit ``F`` become reusable for write
transaction ``W`` once ``F <= W - 2`` (so the tree of the older meta page stays
intact for crash recovery) and ``F <=`` the txnid of every live snapshot.

In memory the reusable pages are extents in a ``SortedDict`` (start ->
length; never overlapping, never adjacent), so the lowest pages are handed out
first and a free tail can be given back by lowering ``hwm``.

On disk (``docs/FORMAT.md``) the reusable set is a bitmap split into pages of
``(page_size - 32) * 8`` bits, found through a chain of index pages; the
pending set is a chain of ``(txnid, start, count)`` records.  A commit writes
only the bitmap pages whose range changed, the index (a few entries per GiB)
when a bitmap moved, and the pending chain; never the whole free list.

Every change made during a write transaction is journaled, so an abort (or a
failed commit) puts the extents back exactly.
"""

import struct

from sortedcontainers import SortedDict

from .errors import CorruptionError

PAGE_HEADER = 32
PT_FREE_INDEX = 4
PT_FREE_BITMAP = 5
PT_FREE_PENDING = 6
_PENDING_REC = struct.Struct("<QQQ")


def _ceil_div(a, b):
    return -(-a // b)


def _runs(pages):
    """Sorted runs ``(start, count)`` of an iterable of page numbers.

    >>> _runs([7, 3, 4, 5, 9])
    [(3, 3), (7, 1), (9, 1)]
    """
    runs = []
    for pg in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == pg:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((pg, 1))
    return runs


def _bit_runs(bits, base):
    """Runs of set bits of the int ``bits``, as page runs starting at ``base``.

    >>> _bit_runs(0b1110011, 100)
    [(100, 2), (104, 3)]
    """
    runs = []
    pos = 0
    while bits:
        zeros = (bits & -bits).bit_length() - 1
        bits >>= zeros
        pos += zeros
        ones = (~bits & (bits + 1)).bit_length() - 1
        runs.append((base + pos, ones))
        bits >>= ones
        pos += ones
    return runs


class FreeSpace:
    """The free pages of one open database (policy lives here, not in C).

    >>> fs = FreeSpace(4096, hwm=10)
    >>> fs.begin(); fs.take(3)
    [(10, 3)]
    >>> fs.give([11, 12]); fs.hwm, list(fs.extents.items())
    (13, [(11, 2)])
    >>> fs.rollback(); fs.hwm, list(fs.extents.items())
    (10, [])
    """

    def __init__(self, page_size, hwm):
        self.page_size = page_size
        self.bits_per_page = (page_size - PAGE_HEADER) * 8
        self.hwm = hwm
        self.extents = SortedDict()      # reusable: start -> length
        self.free_count = 0
        self.pending = {}                # txnid -> list of page numbers
        self.pending_count = 0
        self.bitmap_pages = []           # range -> bitmap page number (0: none)
        self.index_pages = []
        self.pending_pages = []
        self.dirty_ranges = set()        # bitmap ranges changed since the last commit
        self._journal = None

    # ------------------------------------------------------------ extents

    def _mark(self, start, count):
        b = self.bits_per_page
        self.dirty_ranges.update(range(start // b, (start + count - 1) // b + 1))

    def _add_run(self, start, count):
        """Add pages [start, start+count) to the reusable extents. O(log n)."""
        ext = self.extents
        lo, hi = start, start + count
        if lo < 2 or hi > self.hwm:
            raise CorruptionError(f"free pages [{lo}, {hi}) outside the database")
        i = ext.bisect_left(lo)
        if i < len(ext) and ext.peekitem(i)[0] < hi:
            raise CorruptionError(f"page {ext.peekitem(i)[0]} freed twice")
        if i and sum(ext.peekitem(i - 1)) > lo:
            raise CorruptionError(f"page {lo} freed twice")
        end = hi
        if hi in ext:
            end += ext.pop(hi)
        if i and sum(ext.peekitem(i - 1)) == lo:
            start = ext.peekitem(i - 1)[0]
            del ext[start]
        ext[start] = end - start
        self._mark(lo, hi - lo)

    def _remove_run(self, start, count):
        """Remove pages [start, start+count), which lie inside one extent."""
        ext = self.extents
        i = ext.bisect_right(start) - 1
        es, en = ext.peekitem(i)
        del ext[es]
        if es < start:
            ext[es] = start - es
        if start + count < es + en:
            ext[start + count] = es + en - start - count
        self._mark(start, count)

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
        ext = self.extents
        while n and ext:
            start, length = ext.peekitem(0)
            k = min(n, length)
            self._remove_run(start, k)
            runs.append((start, k))
            n -= k
        taken = sum(k for _, k in runs)
        self.free_count -= taken
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
        for s, n in runs:
            self._add_run(s, n)
            self.free_count += n
        self._journal.append(("give", runs))

    def _trim_tail(self):
        ext = self.extents
        if ext:
            s, n = ext.peekitem(-1)
            if s + n == self.hwm:
                del ext[s]
                self._mark(s, n)
                self.free_count -= n
                self.hwm = s
                self._journal.append(("trim", s, n))

    def rollback(self):
        """Undo every change since begin()."""
        for entry in reversed(self._journal or []):
            kind = entry[0]
            if kind == "take":
                _, runs, old_hwm = entry
                self.hwm = max(self.hwm, old_hwm)
                for s, n in runs:
                    if s >= old_hwm:
                        continue
                    self._add_run(s, n)
                    self.free_count += n
                self.hwm = old_hwm
            elif kind == "give":
                for s, n in entry[1]:
                    self._remove_run(s, n)
                    self.free_count -= n
            elif kind == "trim":
                _, s, n = entry
                self.hwm = s + n
                self._add_run(s, n)
                self.free_count += n
        self._journal = None

    def release(self, upto):
        """Make pages freed by commits ``<= upto`` reusable; returns their runs
        (for madvise).  Permanent: not journaled."""
        ready = [t for t in self.pending if t <= upto]
        pages = []
        for t in ready:
            pages.extend(self.pending.pop(t))
        if not pages:
            return []
        self.pending_count -= len(pages)
        runs = _runs(pages)
        for s, n in runs:
            self._add_run(s, n)
            self.free_count += n
        return runs

    # -------------------------------------------------------------- commit

    def _bitmap(self, r):
        """Bytes of the bitmap page for range r (bit j: page r*B+j is free)."""
        b = self.bits_per_page
        lo, hi = r * b, (r + 1) * b
        ext = self.extents
        bits = 0
        i = max(ext.bisect_right(lo) - 1, 0)
        for s in ext.islice(i):
            if s >= hi:
                break
            e = s + ext[s]
            a, z = max(s, lo), min(e, hi)
            if a < z:
                bits |= ((1 << (z - a)) - 1) << (a - lo)
        return bits.to_bytes(b // 8, "little")

    def _pending_records(self, txnid, freed):
        recs = []
        for t in sorted(self.pending):
            recs.extend((t, s, n) for s, n in _runs(self.pending[t]))
        recs.extend((txnid, s, n) for s, n in _runs(freed))
        return recs

    def prepare_commit(self, txnid, freed, leftovers, ensure_pages, write_page):
        """Write the free-list pages of commit ``txnid``; return the meta
        fields ``[hwm, index head, pending head, free count, pending count]``.

        ``freed``: pages the transaction's tree changes freed; ``leftovers``:
        pool pages it did not use.  ``ensure_pages(n)`` grows the file to n
        pages; ``write_page(pgno, type, nkeys, next, body)`` adds a page to the
        commit.  Call commit_done() after the meta is durable, or rollback().
        """
        if leftovers:
            self.give(leftovers)
        self._trim_tail()
        b = self.bits_per_page
        per_index = (self.page_size - PAGE_HEADER) // 8
        per_pending = (self.page_size - PAGE_HEADER) // _PENDING_REC.size
        old_bitmaps = self.bitmap_pages
        have = []
        while True:
            nranges = _ceil_div(self.hwm, b)
            dirty = sorted(r for r in self.dirty_ranges if r < nranges)
            gone = [pg for r, pg in enumerate(old_bitmaps) if pg and (r >= nranges or r in self.dirty_ranges)]
            rewrite_index = bool(dirty) or nranges != len(old_bitmaps) or not self.index_pages
            to_free = list(freed) + gone + list(self.pending_pages)
            if rewrite_index:
                to_free += self.index_pages
            records = self._pending_records(txnid, to_free)
            need = (len(dirty) + (_ceil_div(nranges, per_index) if rewrite_index else 0)
                    + _ceil_div(len(records), per_pending))
            if len(have) >= need:
                break
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
        if rewrite_index:
            index_pages = [next(new_pages) for _ in range(_ceil_div(nranges, per_index))]
            for i, pg in enumerate(index_pages):
                chunk = bitmaps[i * per_index:(i + 1) * per_index]
                nxt = index_pages[i + 1] if i + 1 < len(index_pages) else 0
                write_page(pg, PT_FREE_INDEX, len(chunk), nxt, struct.pack(f"<{len(chunk)}Q", *chunk))
        pending_pages = list(new_pages)   # every page left over holds pending records
        for i, pg in enumerate(pending_pages):
            chunk = records[i * per_pending:(i + 1) * per_pending]
            nxt = pending_pages[i + 1] if i + 1 < len(pending_pages) else 0
            write_page(pg, PT_FREE_PENDING, len(chunk), nxt, b"".join(_PENDING_REC.pack(*r) for r in chunk))
        self._staged = (bitmaps, index_pages, pending_pages, to_free, txnid)
        pending_total = self.pending_count + len(to_free)
        return [self.hwm, index_pages[0] if index_pages else 0,
                pending_pages[0] if pending_pages else 0, self.free_count, pending_total]

    def commit_done(self):
        """The commit prepared last is durable: adopt its free-list pages."""
        bitmaps, index_pages, pending_pages, to_free, txnid = self._staged
        self.bitmap_pages, self.index_pages, self.pending_pages = bitmaps, index_pages, pending_pages
        if to_free:
            self.pending.setdefault(txnid, []).extend(to_free)
            self.pending_count += len(to_free)
        self.dirty_ranges.clear()
        self._journal = None
        self._staged = None

    # ---------------------------------------------------------------- load

    def load(self, read_page, index_head, pending_head, free_count, pending_count):
        """Read the free-list pages of the current meta.

        ``read_page(pgno, type) -> bytes`` returns a checksum-verified page.
        Every chain is bounded by the page count, so a damaged file raises
        CorruptionError instead of looping.
        """
        b = self.bits_per_page
        seen = set()

        def chain(head, ptype):
            pg = head
            while pg:
                if pg in seen or len(seen) > self.hwm:
                    raise CorruptionError(f"free-list chain loops at page {pg}")
                seen.add(pg)
                page = read_page(pg, ptype)
                nkeys, = struct.unpack_from("<H", page, 6)
                nxt, = struct.unpack_from("<Q", page, 24)
                yield pg, nkeys, page
                pg = nxt

        for pg, nkeys, page in chain(index_head, PT_FREE_INDEX):
            if PAGE_HEADER + 8 * nkeys > self.page_size:
                raise CorruptionError(f"page {pg}: free-index entry count out of range")
            self.index_pages.append(pg)
            self.bitmap_pages.extend(struct.unpack_from(f"<{nkeys}Q", page, PAGE_HEADER))
        if len(self.bitmap_pages) != _ceil_div(self.hwm, b) and index_head:
            raise CorruptionError("free index does not cover the database")
        for r, pg in enumerate(self.bitmap_pages):
            if not pg:
                continue
            if pg in seen:
                raise CorruptionError(f"page {pg} used twice in the free list")
            seen.add(pg)
            page = read_page(pg, PT_FREE_BITMAP)
            first, = struct.unpack_from("<Q", page, 24)
            if first != r * b:
                raise CorruptionError(f"page {pg}: bitmap covers the wrong pages")
            bits = int.from_bytes(page[PAGE_HEADER:], "little")
            for s, n in _bit_runs(bits, r * b):
                self._add_run(s, n)
                self.free_count += n
        for pg, nkeys, page in chain(pending_head, PT_FREE_PENDING):
            if PAGE_HEADER + _PENDING_REC.size * nkeys > self.page_size:
                raise CorruptionError(f"page {pg}: pending entry count out of range")
            self.pending_pages.append(pg)
            for i in range(nkeys):
                t, s, n = _PENDING_REC.unpack_from(page, PAGE_HEADER + i * _PENDING_REC.size)
                if s < 2 or s + n > self.hwm:
                    raise CorruptionError(f"page {pg}: pending pages out of range")
                self.pending.setdefault(t, []).extend(range(s, s + n))
                self.pending_count += n
        self.dirty_ranges.clear()
        if self.free_count != free_count or self.pending_count != pending_count:
            raise CorruptionError("free-list page counts disagree with the meta page")

    # --------------------------------------------------------------- check

    def _check(self):
        """Assert the invariants of the in-memory free space (for tests)."""
        prev_end = 2
        total = 0
        for s, n in self.extents.items():
            assert n > 0 and s >= prev_end and (s > prev_end or s == 2 and prev_end == 2), (s, n)
            prev_end = s + n
            total += n
        assert prev_end <= self.hwm
        assert total == self.free_count, (total, self.free_count)
        pend = [p for pages in self.pending.values() for p in pages]
        assert len(pend) == self.pending_count
        assert len(set(pend)) == len(pend)
        for p in pend:
            assert 2 <= p < self.hwm
            i = self.extents.bisect_right(p) - 1
            assert i < 0 or sum(self.extents.peekitem(i)) <= p, p
