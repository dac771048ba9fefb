"""The file format as kvmap-check reads it: the byte offsets and rules of
docs/FORMAT.md, written down here a second time, apart from the engine's
native/format.h (tests/test_format_constants.py holds the two to each other),
so that a mistake in the engine's layout cannot hide itself.  The check and
the salvage decode pages only through this module.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from .._kvmap_cffi import ffi as _ffi, lib as _lib

MAGIC = b"\x89KVM\r\n\x1a\n"
VERSION = 2
MIN_PAGE, MAX_PAGE = 4096, 65536
MAX_DEPTH = 32
META_SIZE = 128
HDR = 32                         # the page header
M_FLAGS_NOSYNC = 1
META_SLOTS = (4096, 8192, 16384, 32768, 65536)     # where meta 1 can be: at its page size

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
leaf_cell_head = struct.Struct("<HI")     # klen, vlen
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


def page_crcs(buf: ReadableBuffer, page_size: int, count: int) -> list[int]:
    """Checksums (bytes [4, page_size) of each page) of ``count`` whole pages
    in ``buf``, as a list of ints."""
    out = _ffi.new("uint32_t[]", count)
    _lib.kvm_page_checksums(_ffi.from_buffer(buf), page_size, count, out)
    crcs: list[int] = _ffi.unpack(out, count)
    return crcs


# ---------------------------------------------------------------- meta

def decode_meta(buf: bytes, offset: Optional[int] = None) -> tuple[Optional[Meta], Optional[str]]:
    """(meta dict, None) or (None, reason) following FORMAT.md §2 (meta.c,
    meta_decode).  A version 1 meta whose checksum and tree fields hold is
    decoded too, with only those fields (its tree pages and page header are
    version 2's, so salvage can copy its tree): ``version`` tells."""
    if len(buf) < META_SIZE:
        return None, "short file (no room for a meta page)"
    (magic, version, ps, txnid, root, depth, flags, entries, hwm, free_index, record,
     free_count, pending_count, floor, durable) = meta_fields.unpack_from(buf, 0)
    if magic != MAGIC:
        return None, "not a kvmap meta (bad magic)"
    stored = u32(buf, 124)[0]
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

