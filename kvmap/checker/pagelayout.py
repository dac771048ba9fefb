"""The file format as kvmap-check reads it: the byte offsets and rules of
docs/FORMAT.md, written down here a second time, apart from the engine's
native/format.h (tests/test_format_constants.py holds the two to each other),
so that a mistake in the engine's layout cannot hide itself.  The check and
the salvage decode pages only through this module.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from .._kvmap_cffi import ffi as _ffi, lib as _lib

MAGIC = b"\x89KVM\r\n\x1a\n"
VERSION = 3
META_PAGES = 3                   # pages 0, 1 and 2 are meta pages: meta k at byte k x page size
OLD_META_PAGES = 2               # versions 1 and 2: meta pages 0 and 1, other pages from 2
MIN_PAGE, MAX_PAGE = 4096, 65536
MAX_DEPTH = 32
META_SIZE = 128
HDR = 32                         # the page header
M_FLAGS_NOSYNC = 1
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)     # the possible page sizes (meta k at k x one)

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
record_head = struct.Struct("<QIIIIII")   # prev, n_written, n_freed, n_released, n_override, flags, 0
record_written = struct.Struct("<QI")     # page, checksum
record_run = struct.Struct("<QQ")         # start, count; range, bitmap page

u16 = struct.Struct("<H").unpack_from
u32 = struct.Struct("<I").unpack_from
u64 = struct.Struct("<Q").unpack_from
page_header = struct.Struct("<IBBHQQQ")   # crc type flags nkeys txnid pgno next/upper
meta_fields = struct.Struct("<8sIIQQIIQQQQQQQQ")
header = page_header.unpack_from

# A decoded meta page (decode_meta's fields).
Meta = dict[str, Any]


# ---------------------------------------------------------------- CRC-32C
# The checksum is pure computation, so the checker uses the C core's (it
# reads no page through the engine: no mapping, no page cache).

def crc32c(data: ReadableBuffer, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``."""
    mv = memoryview(data).cast("B")
    value: int = _lib.kvm_crc32c(crc, _ffi.from_buffer(mv), len(mv))
    return value


# ---------------------------------------------------------------- meta

def meta_pages(version: int) -> int:
    """How many meta pages a file of format ``version`` has: its first
    other page (tree, free space) is this one."""
    return META_PAGES if version == VERSION else OLD_META_PAGES


def decode_meta(buf: bytes, slot: int = 0, page_size: Optional[int] = None
                ) -> tuple[Optional[Meta], Optional[str]]:
    """(meta dict, None) or (None, reason) following FORMAT.md §2 (meta.c,
    meta_decode), for meta ``slot`` read at ``slot`` x ``page_size`` (its
    page size field must be that one; ``page_size`` None: not checked, as
    for meta 0).  A version 1 or 2 meta whose checksum and tree fields hold
    is decoded too, with only those fields (their tree pages and page
    header are version 3's, with two meta pages before them, so salvage can
    copy the tree): ``version`` tells."""
    if len(buf) < META_SIZE:
        return None, f"short file (no room for meta {slot})"
    (magic, version, ps, txnid, root, depth, flags, entries, hwm, free_index, record,
     free_count, pending_count, floor, durable) = meta_fields.unpack_from(buf, 0)
    if magic != MAGIC:
        return None, "not a kvmap meta (bad magic)"
    stored = u32(buf, 124)[0]
    if crc32c(memoryview(buf)[:124]) != stored:
        return None, "checksum mismatch"
    if version not in (1, 2, VERSION):
        return None, f"unsupported version {version}"
    if ps < MIN_PAGE or ps > MAX_PAGE or ps & (ps - 1):
        return None, f"bad page size {ps}"
    if page_size is not None and ps != page_size:
        return None, (f"page size {ps} disagrees with the meta page's position (meta {slot} at "
                      f"offset {slot * page_size})")
    first = meta_pages(version)
    if hwm < first or hwm > (2 ** 64 - 1) // ps:
        return None, f"bad high-water mark {hwm}"
    if (root == 0) != (depth == 0) or depth > MAX_DEPTH or (root == 0 and entries != 0):
        return None, f"inconsistent root {root} / depth {depth} / entries {entries}"
    if root != 0 and not first <= root < hwm:
        return None, f"root {root} out of range [{first}, {hwm})"
    tree = dict(version=version, page_size=ps, txnid=txnid, root=root, depth=depth, flags=flags,
                entries=entries, hwm=hwm)
    if version != VERSION:
        return tree, None
    for name, v in (("free_index", free_index), ("record", record)):
        if v != 0 and not first <= v < hwm:
            return None, f"{name} {v} out of range [{first}, {hwm})"
    if free_count + pending_count > hwm:
        return None, f"free_count {free_count} + pending_count {pending_count} > hwm {hwm}"
    # every commit has a record; released commits and durable ones precede it
    if (txnid >= 2) != (record != 0):
        return None, f"record {record} for txnid {txnid} (every commit after the first has one)"
    if not floor <= durable <= txnid or (txnid >= 2 and floor >= txnid):
        return None, f"floor {floor} / durable {durable} / txnid {txnid} out of order"
    return dict(tree, free_index=free_index, record=record, free_count=free_count,
                pending_count=pending_count, floor=floor, durable=durable), None



# ---------------------------------------------------------------- the C reader
# native/checkpage.c does the byte work: reading pages, vetting headers,
# checking cells, following overflow chains, verifying checksums.  Its codes
# (checkpage.h) come back here; the check words them.

# (the codes the check words by name; the last of a kind comes as "else")
PAGE_OK, PAGE_SHORT, PAGE_MISPLACED, PAGE_TYPE, PAGE_DEPTH, PAGE_COUNTS = (
    _lib.CKP_PAGE_OK, _lib.CKP_PAGE_SHORT, _lib.CKP_PAGE_MISPLACED, _lib.CKP_PAGE_TYPE, _lib.CKP_PAGE_DEPTH,
    _lib.CKP_PAGE_COUNTS)
CELL_OFFSET, KEY_PAST_END, CELL_PAST_END, KEY_LENGTH, OVERFLOW, FIRST_KEY, KEY_ORDER = (
    _lib.CKP_CELL_OFFSET, _lib.CKP_KEY_PAST_END, _lib.CKP_CELL_PAST_END, _lib.CKP_KEY_LENGTH,
    _lib.CKP_OVERFLOW, _lib.CKP_FIRST_KEY, _lib.CKP_KEY_ORDER)
CHAIN_RANGE, CHAIN_TAKEN, CHAIN_PAGE, CHAIN_LONG, CHAIN_CUT = (
    _lib.CKP_CHAIN_RANGE, _lib.CKP_CHAIN_TAKEN, _lib.CKP_CHAIN_PAGE, _lib.CKP_CHAIN_LONG, _lib.CKP_CHAIN_CUT)
BITS_END, BITS_OUTSIDE = _lib.CKP_BITS_END, _lib.CKP_BITS_OUTSIDE
SUM_HOLDS, SUM_FAILS = _lib.CKP_SUM_HOLDS, _lib.CKP_SUM_FAILS
LEAF_HDR, BRANCH_HDR = _lib.CKP_LEAF_HDR, _lib.CKP_BRANCH_HDR     # a cell's bytes before its key
NO_TXNID_LIMIT = 2 ** 64 - 1
BATCH_BYTES = 8 << 20            # pages read by one call: a bottom branch's leaves, a checksum run


def _failed(rc: int) -> int:
    """``rc`` of a reading call; an OSError when it is -errno."""
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


class PageReader:
    """native/checkpage.c for one check: the geometry of its pages, and the
    buffers its calls fill (reused: a result is read before the next call).
    ``txnid``: a page written later is newer than the meta (salvage: no
    limit); ``checksums``: verify those of the branch and leaf pages read
    (the batches of leaves record them in ``sums``, a byte per page);
    ``every_key``: salvage's cell rules (checkpage.h)."""

    def __init__(self, fd: int, page_size: int, npages: int, txnid: int, checksums: bool,
                 sums: Optional[bytearray] = None, every_key: bool = False) -> None:
        self.fd = fd
        self._sums = _ffi.NULL if sums is None or not checksums else uint8_array(sums)
        self.ps = page_size
        self.usable = page_size - HDR            # a page's bytes after its header
        max_cell = self.usable // 4              # FORMAT.md §4: four cells fit in any page
        self.geometry = _ffi.new("ckp_geometry *", dict(
            page_size=page_size, max_key=max_cell - 16, max_cell=max_cell, npages=npages,
            txnid=txnid, checksums=checksums, every_key=every_key))
        self.batch = max(4, BATCH_BYTES // page_size)
        self.buf = bytearray(self.batch * page_size)
        self._buf = _ffi.from_buffer("uint8_t[]", self.buf)
        self.results = _ffi.new("ckp_page[]", self.batch)
        self.page = _ffi.new("ckp_page *")   # tree_page's result
        most = _lib.ckp_max_events(page_size)
        self.event_cap = max(2 * most, 1 << 16)
        self.events = _ffi.new("ckp_event[]", self.event_cap)
        self.cells = _ffi.new("ckp_cell[]", (page_size - HDR) // 2)
        self.chain = _ffi.new("ckp_chain *")

    def tree_page(self, page: int, buf: bytes, leaf: bool, lo: Optional[bytes],
                  hi: Optional[bytes]) -> Any:
        """Check branch or leaf page ``page`` whose bytes ``buf`` holds:
        its ckp_page, with the events in ``events`` and the cells in
        ``cells``."""
        _failed(_lib.ckp_tree_page(self.geometry, page, _ffi.from_buffer(buf), len(buf), leaf, *_key(lo),
                                   *_key(hi), self.page, self.events, self.event_cap, self.cells))
        return self.page

    def leaves(self, branch: bytes, nkeys: int, lo: Optional[bytes], hi: Optional[bytes]) -> Iterator[int]:
        """Read and check the leaves that the sound cells (in ``cells``) of
        bottom branch ``branch`` (``nkeys`` cells, between ``lo`` and
        ``hi``) point to, a batch a call: yields n for the n next leaves,
        that ``buf`` and ``results`` then hold (leaf j at j * page size,
        results[j]: with its page, cell and upper bound's cell).  Their
        checksums, when verified, go to ``sums``."""
        branch_c = _ffi.from_buffer(branch)
        lo_c, lo_n = _key(lo)
        hi_c, hi_n = _key(hi)
        cell = 0
        while cell < nkeys:
            n = _failed(_lib.ckp_leaves_released(
                self.fd, self.geometry, branch_c, self.cells, nkeys, cell, lo_c, lo_n, hi_c, hi_n,
                self.batch, self._buf, self.results, self.events, self.event_cap, self._sums))
            if not n:
                return
            yield n
            cell = self.results[n - 1].cell + 1

    def header_verdict(self, page: int, buf: bytes, types: tuple[int, ...]) -> int:
        """PAGE_OK, or what is wrong with the page header in ``buf`` (the
        whole page) for a page of one of ``types``."""
        verdict: int = _lib.ckp_header_verdict(self.geometry, page, _ffi.from_buffer(buf), len(buf),
                                               self.ps, sum(1 << t for t in types))
        return verdict

    def overflow_chain(self, first: int, pieces: int, owner: Any, code: int) -> Any:
        """Follow the overflow chain of ``pieces`` pages from ``first``,
        claiming its pages with ``code`` in ``owner`` (a uint8 array): a
        ckp_chain, where and why it ends."""
        _failed(_lib.ckp_overflow_chain_released(self.fd, self.geometry, first, pieces, owner, code,
                                                 self.chain))
        return self.chain

    def chain_header(self) -> bytes:
        """The header of the page where the last overflow chain ended."""
        return bytes(_ffi.buffer(self.chain.header))

    def checksums(self, want: Any, sums: Any, start: int, end: int) -> None:
        """Verify the checksums of the pages in [start, end) that ``want``
        marks and ``sums`` does not know yet, into ``sums`` (uint8
        arrays)."""
        _failed(_lib.ckp_checksums_released(self.fd, self.ps, want, sums, start, end, self._buf,
                                            self.batch))


def claim_run(owner: Any, freed: Any, start: int, count: int, code: int, most: int) -> int:
    """Claim pages [start, start + count) for ``code`` in ``owner`` and mark
    them in ``freed`` (uint8 arrays), in order, at most ``most`` of them:
    how many, up to the first that has an owner."""
    claimed: int = _lib.ckp_claim_run(owner, freed, start, count, code, most)
    return claimed


class BitmapClaims:
    """The set bits of a free-space bitmap page's body (bit b: page
    ``first`` + b), in order: each for a page in [META_PAGES, hwm) counted, claimed
    for ``code`` in ``owner`` below ``npages`` and marked in ``freed``, up to
    the next bit a caller must report (``next``)."""

    def __init__(self, body: bytes, first: int, hwm: int, npages: int, owner: Any, freed: Any,
                 code: int) -> None:
        self.args = (_ffi.from_buffer(body), len(body), first, hwm, npages, owner, freed, code)
        self.place = _ffi.new("uint64_t[2]")     # the bit, the bits counted

    def next(self) -> tuple[int, int, int]:
        """(BITS_END / BITS_OUTSIDE / BITS_TAKEN, the bit it stops at, the
        bits counted on the way, that one included when TAKEN); the next
        call goes on after that bit."""
        stop: int = _lib.ckp_bitmap_claims(*self.args, self.place, self.place + 1)
        bit, counted = self.place[0], self.place[1]
        self.place[0] = bit + 1
        return stop, bit, counted


def _key(key: Optional[bytes]) -> tuple[Any, int]:
    """A bound for the C reader: pointer and length, -1 for none."""
    return (_ffi.NULL, -1) if key is None else (_ffi.from_buffer(key), len(key))


def uint8_array(buf: Any) -> Any:
    """A uint8_t[] over a bytearray or bytes, for the C reader."""
    return _ffi.from_buffer("uint8_t[]", buf)
