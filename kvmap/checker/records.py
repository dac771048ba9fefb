"""Commit records as the checker reads them (FORMAT.md §6; freelist.c):
the stream of a record's pages, and :class:`Runs`, the page runs that
records free or release."""

from __future__ import annotations

import bisect
from typing import Any, Callable, Iterator, Optional

from .pagelayout import (HDR, META_PAGES, PF_CONTINUED, R_RUN_SIZE, R_WRITTEN_SIZE, RECORD_SPARE_MAX, header,
                         record_head, record_run, record_written)

# A page reader of a record chain: read(page, k) -> the k-th page's bytes.
Read = Callable[[int, int], bytes]


class RecordFault(Exception):
    """A commit record that cannot be read on: ``page`` where it fails, and
    ``message`` (None when the page reader has reported the page already)."""

    def __init__(self, page: int, message: Optional[str] = None) -> None:
        super().__init__(message)
        self.page = page
        self.message = message


def record_items(read: Read, first: int, txn: int, ps: int, hwm: int) -> Iterator[tuple[Any, ...]]:
    """Yield the entries of the record of commit ``txn`` that starts at page
    ``first`` (FORMAT.md §6; freelist.c, record_read): ("head", prev,
    n_written, n_freed, n_override, flags, n_released), then ("written",
    page, checksum) entries, ("freed", start, count) runs, ("released",
    start, count) runs and ("override", range, bitmap page) pairs, in stream
    order.  ``read(page, k)`` gives the vetted
    bytes of the record's k-th page or raises :class:`RecordFault`; every
    page must carry the commit's txnid and flags 0 on the first page, 1 on
    the others, and the chain is bounded by the length its counts give (plus
    at most RECORD_SPARE_MAX pages that hold no entries).  Raises
    :class:`RecordFault` where the chain is not such a record.  Only one
    page of the stream is held at a time."""
    pay = ps - HDR
    fixed = record_head.size
    need, npages = fixed, 1
    sections = []          # [kind, entries left, entry size, unpack]
    carry = b""            # the start of an entry that runs on into the next page
    page, last, k = first, first, 0
    while page:
        if k >= npages + RECORD_SPARE_MAX:
            raise RecordFault(page, f"the record of commit {txn} is longer than its entries")
        buf = read(page, k)
        _, _, flags, _, htxn, _, nxt = header(buf, 0)
        if htxn != txn or flags != (PF_CONTINUED if k else 0):
            raise RecordFault(page, f"page {page}: not {'a later' if k else 'the first'} page of "
                               f"the record of commit {txn} (txnid {htxn}, flags {flags})")
        start = 0
        if k == 0:
            prev, nwritten, nfreed, nreleased, noverride, rflags, _ = record_head.unpack_from(buf, HDR)
            need = fixed + R_WRITTEN_SIZE * nwritten + R_RUN_SIZE * (nfreed + nreleased + noverride)
            npages = -(-need // pay)
            if npages > hwm:
                raise RecordFault(page, f"page {page}: record counts out of range")
            yield "head", prev, nwritten, nfreed, noverride, rflags, nreleased
            sections = [["written", nwritten, R_WRITTEN_SIZE, record_written.unpack_from],
                        ["freed", nfreed, R_RUN_SIZE, record_run.unpack_from],
                        ["released", nreleased, R_RUN_SIZE, record_run.unpack_from],
                        ["override", noverride, R_RUN_SIZE, record_run.unpack_from]]
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
        raise RecordFault(last, f"the record of commit {txn} is cut short ({k} of its "
                                 f"{npages} pages)")


class Runs:
    """A set of pages kept as disjoint runs: the pages that later commits
    freed, or released early."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, count: int, limit: int) -> bool:
        """Add [start, start + count), merging with the runs already in (a
        page written, freed, reused and freed again is freed by two
        commits); False (nothing added) if the run is empty or not inside
        [META_PAGES, limit)."""
        end = start + count
        if count < 1 or start < META_PAGES or end > limit:
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
