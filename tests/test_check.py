"""kvmap.check: the integrity checker.

Valid databases made by the engine must check ``ok`` with the engine's own
figures; a corpus of damaged copies (one kind of damage per file) must be
reported with the right kind and the right page number.  The tests locate
pages with their own small parser of the format (``_Layout`` below), not with
the checker, and fix checksums with their own bytewise CRC-32C.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys

import pytest

import kvmap
from kvmap.checker import CheckUnreadable, check, main

# ---------------------------------------------------------------------------
# an independent little reader


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TBL = _crc_table()
RECORD_FIXED = 32      # a record's fixed fields: prev, n_written, n_freed, n_released, n_override, flags, 0


def crc(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TBL[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_crc_reference(tmp_path):
    from kvmap.checker import crc32c
    from kvmap.checker.pagelayout import SUM_FAILS, SUM_HOLDS, PageReader, uint8_array
    assert crc(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    r = random.Random(5)
    # around the engine's three-stream stripes (3 x 1360 bytes) and every page size
    for n in (0, 1, 7, 8, 9, 100, 4079, 4080, 4081, 4087, 4092, 8159, 8160, 8188, 12241, 16380, 65532):
        d = r.randbytes(n)
        assert crc32c(d) == crc(d), n
    from kvmap._lib import lib
    d = r.randbytes(9000)
    for cut in (1, 4080, 4081, 8999):   # chained: crc(a + b) from crc(a) and b
        assert lib.kvm_crc32c(lib.kvm_crc32c(0, d[:cut], cut), d[cut:], len(d) - cut) == crc(d), cut
    # the checker's page checksums (bytes [4, page_size) against the first
    # four): pages holding the reference value, and pages one bit off it
    for ps in (4096, 65536):
        pages = bytearray(r.randbytes(ps * 6))
        for i in range(6):
            struct.pack_into("<I", pages, i * ps, crc(pages[i * ps + 4:(i + 1) * ps]) ^ (i & 1))
        path = tmp_path / f"pages{ps}"
        path.write_bytes(pages)
        fd = os.open(path, os.O_RDONLY)
        try:
            sums = bytearray(6)
            PageReader(fd, ps, 6, 0, True).checksums(uint8_array(b"\x01" * 6), uint8_array(sums), 0, 6)
        finally:
            os.close(fd)
        assert list(sums) == [SUM_FAILS if i & 1 else SUM_HOLDS for i in range(6)], ps


META_PAGES = 3        # meta k at byte k x page size (format version 3)


class _Layout:
    """Pages of a kvmap file, found by walking from the meta the engine
    takes when all are sound (the larger txnid, then the larger durable: a
    close seals the newest commit durable into another slot; then the lower
    slot).  ``order``: the sound meta slots in that order; ``other_slot``:
    the one after ``slot`` in it, which the engine takes when ``slot`` is
    not valid (in a file a crash left: the durable commit it falls back
    to)."""

    def __init__(self, path, meta=None):
        self.data = bytearray(open(path, "rb").read())
        ps0 = struct.unpack_from("<I", self.data, 12)[0]
        metas = []
        for slot in range(META_PAGES):
            off = slot * ps0
            m = self.data[off:off + 128]
            if m[:8] == b"\x89KVM\r\n\x1a\n" and crc(m[:124]) == struct.unpack_from("<I", m, 124)[0]:
                txnid, durable = struct.unpack_from("<Q", m, 16)[0], struct.unpack_from("<Q", m, 96)[0]
                metas.append(((txnid, durable, -slot), slot, off))
        metas.sort(reverse=True)
        self.order = [m[1] for m in metas]
        if meta is not None:                    # walk the tree of this meta slot
            metas = [m for m in metas if m[1] == meta]
        _, self.slot, self.meta_off = metas[0]
        later = self.order[self.order.index(self.slot) + 1:]
        self.other_slot = later[0] if later else None
        f = self.meta_fields()
        self.ps = f["ps"]
        self.hwm = f["hwm"]
        self.branches = []      # (page, level)
        self.leaves = []
        self.overflow_chains = []   # lists of pages
        self.children = {}      # branch page -> [child pages]
        self.items = {}         # key -> value, read by this parser
        self.key_leaf = {}      # key -> the leaf page that stores it
        self.key_chain = {}     # key -> its overflow chain (pages)
        ps = self.ps
        todo = [(f["root"], 0)]
        while todo:
            pg, lvl = todo.pop()
            b = self.page(pg)
            nk = struct.unpack_from("<H", b, 6)[0]
            if b[4] == 1:
                self.branches.append((pg, lvl))
                kids = []
                for i in range(nk):
                    off = struct.unpack_from("<H", b, 32 + 2 * i)[0]
                    kids.append(struct.unpack_from("<Q", b, off + 2)[0])
                self.children[pg] = kids
                todo.extend((k, lvl + 1) for k in kids)
            else:
                assert b[4] == 2
                self.leaves.append(pg)
                for i in range(nk):
                    off = struct.unpack_from("<H", b, 32 + 2 * i)[0]
                    klen, vlen = struct.unpack_from("<HI", b, off)
                    key = bytes(b[off + 6:off + 6 + klen])
                    self.key_leaf[key] = pg
                    if 8 + klen + vlen > (ps - 32) // 4:
                        first = struct.unpack_from("<Q", b, off + 6 + klen)[0]
                        chain = [first]
                        while len(chain) < -(-vlen // (ps - 32)):
                            chain.append(struct.unpack_from("<Q", self.page(chain[-1]), 24)[0])
                        self.overflow_chains.append(chain)
                        self.key_chain[key] = chain
                        value = b"".join(bytes(self.page(c)[32:]) for c in chain)[:vlen]
                    else:
                        value = bytes(b[off + 6 + klen:off + 6 + klen + vlen])
                    self.items[key] = value
        self.leaves_with_overflow = set()
        # the free space: the bitmap index, the live records (newest first),
        # the newest one's overrides replacing index entries (version 1's
        # free list is another format, version 2's numbers pages from 2: not
        # read)
        self.index_pages, self.records, index = [], [], []
        self.stale_bitmaps = []     # index entries that the newest record overrides
        if struct.unpack_from("<I", self.data, self.meta_off + 8)[0] != 3:
            self.bitmaps = []
            return
        idx = f["free_index"]
        while idx:
            b = self.page(idx)
            nk = struct.unpack_from("<H", b, 6)[0]
            index += struct.unpack_from(f"<{nk}Q", b, 32)
            self.index_pages.append(idx)
            idx = struct.unpack_from("<Q", b, 24)[0]
        pg = f["record"]
        for txn in range(f["txnid"], max(f["floor"], 1), -1):
            rec = self.record(pg)
            assert rec["txnid"] == txn
            self.records.append(rec)
            pg = rec["prev"]
        for r, bm in (self.records[0]["overrides"] if self.records else []):
            self.stale_bitmaps.append(index[r])
            index[r] = bm
        self.bitmaps = [x for x in index if x]

    def meta_fields(self):
        m = self.data[self.meta_off:self.meta_off + 128]
        (ps, txnid, root, depth, flags, entries, hwm, fi, rec, fc, pc, floor, durable) = \
            struct.unpack_from("<IQQIIQQQQQQQQ", m, 12)
        return dict(ps=ps, txnid=txnid, root=root, depth=depth, flags=flags, entries=entries,
                    hwm=hwm, free_index=fi, record=rec, free_count=fc, pending_count=pc,
                    floor=floor, durable=durable)

    def record(self, pg):
        """The commit record whose first page is ``pg``: its pages, header
        txnid, prev, flags and entries (FORMAT.md §6)."""
        pages, stream = [], b""
        while pg:
            b = self.page(pg)
            assert b[4] == 8 and b[5] == (1 if pages else 0), (pg, b[4], b[5])
            pages.append(pg)
            stream += bytes(b[32:])
            pg = struct.unpack_from("<Q", b, 24)[0]
        prev, nw, nf, nr, no, flags, zero = struct.unpack_from("<QIIIIII", stream, 0)
        assert zero == 0
        off = RECORD_FIXED
        written = [struct.unpack_from("<QI", stream, off + 12 * i) for i in range(nw)]
        off += 12 * nw
        freed = [struct.unpack_from("<QQ", stream, off + 16 * i) for i in range(nf)]
        off += 16 * nf
        released = [struct.unpack_from("<QQ", stream, off + 16 * i) for i in range(nr)]
        off += 16 * nr
        overrides = [struct.unpack_from("<QQ", stream, off + 16 * i) for i in range(no)]
        return dict(txnid=struct.unpack_from("<Q", self.page(pages[0]), 8)[0], pages=pages,
                    prev=prev, flags=flags, written=written, freed=freed, released=released,
                    overrides=overrides)

    def page(self, pg):
        return self.data[pg * self.ps:(pg + 1) * self.ps]

    def edge_pages(self):
        """The pages of the leftmost and rightmost root-to-leaf paths: the
        engine verifies them at open, and refuses the file if they are
        damaged (the meta's commit is durable)."""
        out = set()
        for pick in (0, -1):
            pg = self.meta_fields()["root"]
            out.add(pg)
            while pg in self.children:
                pg = self.children[pg][pick]
                out.add(pg)
        return out

    def inner_leaves(self):
        """The leaves off the edge paths, in the walk's order."""
        edges = self.edge_pages()
        return [pg for pg in self.leaves if pg not in edges]

    def cell_off(self, pg, i):
        return pg * self.ps + struct.unpack_from("<H", self.data, pg * self.ps + 32 + 2 * i)[0]

    def fix(self, pg):
        o = pg * self.ps
        struct.pack_into("<I", self.data, o, crc(self.data[o + 4:o + self.ps]))

    def set_meta_u64(self, off, value, fix=True):
        struct.pack_into("<Q", self.data, self.meta_off + off, value)
        if fix:
            self.fix_meta()

    def fix_meta(self):
        o = self.meta_off
        struct.pack_into("<I", self.data, o + 124, crc(self.data[o:o + 124]))

    def free_pages(self):
        out = []
        B = (self.ps - 32) * 8
        for bm in self.bitmaps:
            b = self.page(bm)
            first = struct.unpack_from("<Q", b, 24)[0]
            for j in range(B):
                if b[32 + j // 8] >> (j % 8) & 1:
                    out.append((first + j, bm))
        return out

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.data)


# ---------------------------------------------------------------------------
# valid databases


def build(path, *, seed=1, page_size=4096, snapshot=True, nkeys=3000):
    """A few hundred pages: nkeys keys with 50-400 byte values, 20 values of
    9,000 bytes (overflow chains), committed in several transactions; with a
    snapshot open over the last commits so pending pages span several
    commits.  Returns the engine's stats after close and reopen.  The close
    seals the last commit durable (FORMAT.md §7): open verifies no commit's
    pages and has nothing to fall back to, so any damage is damage (the
    ``crashed`` image below is a file that a power loss left)."""
    r = random.Random(seed)
    db = kvmap.open(str(path), page_size=page_size)
    keys = [b"key-%06d" % i for i in range(nkeys)]
    r.shuffle(keys)
    for s in range(0, nkeys, 500):
        with db.transaction() as t:
            for k in keys[s:s + 500]:
                t[k] = r.randbytes(r.randint(50, 400))
    with db.transaction() as t:
        for i in range(20):
            t[b"big-%03d" % i] = r.randbytes(9000)
    snap = db.snapshot() if snapshot else None
    for _ in range(5):
        with db.transaction() as t:
            for k in r.sample(keys, 100):
                t[k] = r.randbytes(r.randint(50, 400))
            for k in r.sample(keys, 20):
                if k in t:
                    del t[k]
    if snap is not None:
        snap.close()
    db.close()
    db = kvmap.open(str(path))
    st = db.stats()
    db.close()
    return st


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    p = tmp_path_factory.mktemp("base") / "base.kv"
    st = build(p)
    return p, st


@pytest.fixture
def copy(base, tmp_path):
    def make(name="damaged.kv"):
        dst = tmp_path / name
        shutil.copyfile(base[0], dst)
        return dst
    return make


@pytest.fixture(scope="module")
def original(base):
    """Every item of the undamaged base database, read with the engine."""
    db = kvmap.open(str(base[0]), readonly=True)
    try:
        return dict(db.items())
    finally:
        db.close()


@pytest.fixture(scope="module")
def crashed(base, tmp_path_factory):
    """(path, items): the base database with one more commit (sync=True: 250
    values of 9,000 bytes under new keys, which takes the pages the base
    leaves free or pending and grows the file by over 120 pages), copied
    while the writer still had it open -- what a power loss right after
    that commit leaves.  Its meta names the base commit as durable (the
    commit's flush came after its meta) and the other slot still holds the
    base commit, so open falls back to it if the new commit's pages do not
    verify; a close would have sealed the new commit durable.  Never open it
    writable (a close writes a meta)."""
    d = tmp_path_factory.mktemp("crashed")
    work, image = d / "work.kv", d / "crashed.kv"
    shutil.copyfile(base[0], work)
    r = random.Random(11)
    db = kvmap.open(str(work))
    try:
        with db.transaction() as t:
            for i in range(250):
                t[b"big-1%03d" % i] = r.randbytes(9000)
        shutil.copyfile(work, image)
    finally:
        db.close()
    L = _Layout(image)
    f, older = L.meta_fields(), _Layout(image, meta=L.other_slot).meta_fields()
    assert f["durable"] == older["txnid"] == f["txnid"] - 1 == older["durable"]
    assert f["hwm"] - older["hwm"] > 120
    with kvmap.open(str(image), readonly=True) as db:
        assert not db.stats()["meta_fallback"]
        return image, dict(db.items())


def _keys_on_pages(layout, pages):
    """Keys stored on ``pages`` per the independent layout: the cells of a
    leaf in ``pages`` and the keys whose overflow chain touches ``pages``."""
    pages = set(pages)
    return ({k for k, leaf in layout.key_leaf.items() if leaf in pages}
            | {k for k, ch in layout.key_chain.items() if pages.intersection(ch)})


def assert_salvaged(damaged_path, tmp_path, original, damaged_pages, layout,
                    name="salvaged.kv"):
    """Salvage ``damaged_path`` into a fresh file and check that every entry
    of ``original`` not stored on ``damaged_pages`` comes back with its
    value, and that nothing else comes back (a key not on a damaged page
    with another value, or a key ``original`` does not have).  ``layout``
    is a _Layout of the same tree as ``original``, taken before the damage."""
    from kvmap.checker import salvage
    assert layout.items == original          # the independent parser agrees with the engine
    on_damaged = _keys_on_pages(layout, damaged_pages)
    assert on_damaged <= set(original)
    before = open(damaged_path, "rb").read()
    out = tmp_path / name
    assert not out.exists()
    res = salvage(damaged_path, out)
    assert open(damaged_path, "rb").read() == before        # the source is untouched
    db = kvmap.open(str(out), readonly=True)
    try:
        got = dict(db.items())
    finally:
        db.close()
    missing = sorted(k for k in original if k not in on_damaged and k not in got)
    wrong = sorted(k for k in original if k not in on_damaged and k in got
                   and got[k] != original[k])
    alien = sorted(k for k in got if k not in original)
    assert not (missing or wrong or alien), (
        f"salvage of {len(original)} entries ({len(on_damaged)} on damaged pages "
        f"{sorted(damaged_pages)}): {len(missing)} missing {missing[:5]}, "
        f"{len(wrong)} with a wrong value {wrong[:5]}, {len(alien)} not in the original "
        f"{alien[:5]}; damaged_leaves={res.damaged_leaves} orphans={res.orphan_leaves} "
        f"lost={res.lost} lost_values={res.lost_values}")
    return res


def _kinds(rep):
    return {(p.kind, p.page) for p in rep.problems}


def _cli(path, *extra):
    return main([str(path), *extra])


@pytest.mark.parametrize("page_size,snapshot", [(4096, True), (4096, False), (8192, True)])
def test_valid_database_matches_engine(tmp_path, page_size, snapshot):
    p = tmp_path / "db.kv"
    st = build(p, page_size=page_size, snapshot=snapshot, seed=page_size + snapshot)
    for quick in (False, True):
        rep = check(p, quick=quick)
        assert rep.ok, rep.problems
        assert rep.total_problems == 0
        s = rep.summary
        assert s["entries"] == st["entries"]
        assert s["depth"] == st["depth"]
        assert s["hwm"] == st["pages"]
        assert s["free_pages"] == st["free_pages"]
        assert s["pending_pages"] == st["pending_pages"]
        assert s["page_size"] == st["page_size"] == page_size
        assert s["file_size"] == st["file_size"] == os.path.getsize(p)
        assert rep.meta_used == st["meta_slot"]
        assert 0.2 < s["fill_factor"] <= 1.0
        assert sum(s["pages_by_type"].values()) == st["pages"]
        assert s["pages_by_type"]["meta"] == META_PAGES
        assert s["pages_by_type"].get("overflow", 0) >= 20 * -(-9000 // (page_size - 32))
    if snapshot:
        assert st["pending_pages"] > 0
    assert _cli(p) == 0
    assert _cli(p, "--quick") == 0


def test_library_entry_points(base):
    """kvmap.check / kvmap.salvage are the checker's: the package
    kvmap.checker, which ``python -m kvmap.checker`` runs."""
    import kvmap.checker
    assert kvmap.check is kvmap.checker.check and kvmap.salvage is kvmap.checker.salvage
    assert kvmap.check(base[0]).ok


def test_empty_and_fresh_databases(tmp_path):
    p = tmp_path / "fresh.kv"
    kvmap.open(str(p)).close()
    rep = check(p)
    assert rep.ok, rep.problems and rep.summary["entries"] == 0
    db = kvmap.open(str(p))
    db[b"a"] = b"1"
    del db[b"a"]
    db.close()
    rep = check(p)
    assert rep.ok, rep.problems
    assert rep.summary["depth"] == 0


def test_stateful_style_database(tmp_path):
    """Many small commits with deletes, overwrites and big values."""
    p = tmp_path / "st.kv"
    r = random.Random(77)
    model = {}
    db = kvmap.open(str(p), sync=False)
    for _ in range(200):
        with db.transaction() as t:
            for _ in range(r.randint(1, 30)):
                k = b"k%d" % r.randint(0, 600)
                if r.random() < 0.3 and k in model:
                    del t[k]
                    del model[k]
                else:
                    v = r.randbytes(r.choice([0, 10, 300, 1200, 5000]))
                    t[k] = v
                    model[k] = v
    st = db.stats()
    db.close()
    rep = check(p)
    assert rep.ok, rep.problems
    assert rep.summary["entries"] == len(model) == st["entries"]
    assert rep.summary["free_pages"] == st["free_pages"]
    assert rep.summary["pending_pages"] == st["pending_pages"]


# ---------------------------------------------------------------------------
# the damage corpus


def test_leaf_cell_bit_flip(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[len(L.leaves) // 2]
    off = L.cell_off(leaf, 0)
    klen = struct.unpack_from("<H", L.data, off)[0]
    L.data[off + 6 + klen] ^= 0x10                    # a value byte
    L.save(p)
    rep = check(p)
    assert ("bad-checksum", leaf) in _kinds(rep)
    assert rep.total_problems == 1
    assert _cli(p) == 1
    assert check(p, quick=True).ok                     # quick does not verify checksums
    assert_salvaged(p, tmp_path, original, {leaf}, L)   # the flipped leaf's cells are lost


def test_page_newer_than_meta(copy, tmp_path, original):
    """A leaf with a valid checksum whose header txnid is above the meta's:
    what a page reused after a lost sync=False commit looks like."""
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[len(L.leaves) // 2]
    struct.pack_into("<Q", L.data, leaf * L.ps + 8, L.meta_fields()["txnid"] + 2)
    L.fix(leaf)
    L.save(p)
    rep = check(p)
    assert ("newer-than-meta", leaf) in _kinds(rep)
    assert _cli(p) == 1
    assert ("newer-than-meta", leaf) in _kinds(check(p, quick=True))   # a header check
    assert_salvaged(p, tmp_path, original, {leaf}, L)


def test_branch_separator_bit_flip(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    br = [b for b, lvl in L.branches if lvl > 0][0]
    off = L.cell_off(br, 1)
    L.data[off + 10] ^= 0x01                           # first byte of separator 1
    L.save(p)
    rep = check(p)
    assert ("bad-checksum", br) in _kinds(rep)
    assert _cli(p) == 1
    # only a branch is damaged: it stores no entries, every leaf below it is
    # intact, so nothing may be lost
    assert_salvaged(p, tmp_path, original, {br}, L)


def test_page_header_bit_flip(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[3]
    L.data[leaf * L.ps + 16] ^= 0x04                   # the header's page number
    L.save(p)
    rep = check(p)
    k = _kinds(rep)
    assert ("bad-checksum", leaf) in k
    assert ("bad-header", leaf) in k
    assert _cli(p) == 1
    assert ("bad-header", leaf) in _kinds(check(p, quick=True))
    assert_salvaged(p, tmp_path, original, {leaf}, L)   # the leaf with the bad header


def test_overflow_page_bit_flip(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    chain = L.overflow_chains[0]
    pg = chain[1]
    L.data[pg * L.ps + 1000] ^= 0x80
    L.save(p)
    rep = check(p)
    assert {(p_.kind, p_.page) for p_ in rep.problems} == {("bad-checksum", pg)}
    assert check(p, quick=True).ok
    assert _cli(p) == 1
    assert_salvaged(p, tmp_path, original, {pg}, L)     # loses the one value on that chain


def test_two_pages_swapped(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    a, b = L.leaves[2], L.leaves[-3]
    pa, pb = L.page(a), L.page(b)
    L.data[a * L.ps:(a + 1) * L.ps] = pb
    L.data[b * L.ps:(b + 1) * L.ps] = pa
    L.save(p)
    rep = check(p)
    k = _kinds(rep)
    assert ("bad-header", a) in k and ("bad-header", b) in k
    assert not any(x.kind == "bad-checksum" for x in rep.problems)   # the pages are intact
    assert _cli(p) == 1
    # both slots hold the wrong page: the damaged set is {a, b} (their cells
    # sit intact but at the wrong page number); every other leaf must survive
    assert_salvaged(p, tmp_path, original, {a, b}, L)


def test_page_referenced_twice(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    overflow = {pg for ch in L.overflow_chains for pg in ch}
    br = [b for b, lvl in L.branches if lvl == L.meta_fields()["depth"] - 2][0]
    kids = L.children[br]
    old, dup = kids[1], kids[2]
    off = L.cell_off(br, 1)
    struct.pack_into("<Q", L.data, off + 2, dup)
    L.fix(br)
    L.save(p)
    rep = check(p)
    k = _kinds(rep)
    assert ("double-reference", dup) in k
    assert ("leaked", old) in k
    assert ("key-range", dup) in k             # one problem for the page, not one per cell
    assert sum(1 for x in rep.problems if x.kind == "key-range") == 1
    assert not any(x.kind == "bad-checksum" for x in rep.problems)
    assert _cli(p) == 1
    assert overflow    # (the corpus has overflow chains)
    # only the branch was changed (no entries on it); the cut-off leaf ``old``
    # is intact, so nothing may be lost
    assert_salvaged(p, tmp_path, original, {br}, L)


def test_leaked_page(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    free = L.free_pages()
    assert free
    pg, bm = free[0]
    bit = pg - struct.unpack_from("<Q", L.page(bm), 24)[0]
    L.data[bm * L.ps + 32 + bit // 8] &= ~(1 << (bit % 8)) & 0xFF
    L.fix(bm)
    L.set_meta_u64(72, L.meta_fields()["free_count"] - 1)
    L.save(p)
    rep = check(p)
    assert [(x.kind, x.page) for x in rep.problems] == [("leaked", pg)]
    assert _cli(p) == 1
    # the bitmap page and the meta were changed; neither stores entries, and
    # the leaked page was free: nothing may be lost
    assert_salvaged(p, tmp_path, original, {bm}, L)


def test_leaked_page_without_meta_fix(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    pg, bm = L.free_pages()[0]
    bit = pg - struct.unpack_from("<Q", L.page(bm), 24)[0]
    L.data[bm * L.ps + 32 + bit // 8] &= ~(1 << (bit % 8)) & 0xFF
    L.fix(bm)
    L.save(p)
    rep = check(p)
    assert {x.kind for x in rep.problems} == {"leaked", "free-count"}
    assert ("leaked", pg) in _kinds(rep)
    assert _cli(p) == 1
    assert_salvaged(p, tmp_path, original, {bm}, L)     # as above: nothing may be lost


def test_free_page_also_in_tree(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[5]
    B = (L.ps - 32) * 8
    bm = L.bitmaps[leaf // B]
    bit = leaf - struct.unpack_from("<Q", L.page(bm), 24)[0]
    L.data[bm * L.ps + 32 + bit // 8] |= 1 << (bit % 8)
    L.fix(bm)
    L.set_meta_u64(72, L.meta_fields()["free_count"] + 1)
    L.save(p)
    rep = check(p)
    assert [(x.kind, x.page) for x in rep.problems] == [("reachable-and-free", leaf)]
    assert _cli(p) == 1
    # only the bitmap (and meta) changed; the leaf itself is intact and in
    # the tree, so its cells must come back too
    assert_salvaged(p, tmp_path, original, {bm}, L)


def test_truncated_mid_page(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    cut = (L.hwm - 7) * L.ps + 1234
    os.truncate(p, cut)
    rep = check(p)
    assert ("truncated", L.hwm - 7) in _kinds(rep)
    assert _cli(p) == 1
    # salvage goes by the newest meta (its hwm does not fit the file) and
    # loses exactly the entries on the missing pages, the torn one included
    res = assert_salvaged(p, tmp_path, original, set(range(L.hwm - 7, L.hwm)), L)
    assert res.meta_used == L.slot


@pytest.mark.parametrize("where", ["half", "tail"])
def test_truncated_at_page_boundary(base, crashed, tmp_path, original, where):
    """"half" cuts the (sealed) base file in two: damage.  "tail" cuts the
    last 90 pages of the crashed image, whose newest commit is not durable:
    what a power loss leaves when the file's growth for that commit did not
    reach the disk.  The engine opens the durable commit its meta names,
    whose pages all remain, and so does the check (a note, no problem)."""
    p = tmp_path / "damaged.kv"
    shutil.copyfile(base[0] if where == "half" else crashed[0], p)
    if where == "tail":
        original = crashed[1]
    L = _Layout(p)
    keep = L.hwm // 2 if where == "half" else L.hwm - 90
    if where == "tail":
        assert _Layout(p, meta=L.other_slot).hwm <= keep
    os.truncate(p, keep * L.ps)
    rep = check(p)
    if where == "half":
        k = _kinds(rep)
        assert ("truncated", keep) in k
        assert any(x.kind == "out-of-range" and x.page >= keep for x in rep.problems)
        assert _cli(p) == 1
    else:                                   # the older meta fits: the check reads it
        assert rep.ok, rep.problems
        assert rep.meta_used == L.other_slot
        assert any(f"meta {L.slot}" in n and "lost by a crash" in n and f"{keep * L.ps} bytes" in n
                   and f"using meta {L.other_slot}" in n for n in rep.meta_notes), rep.meta_notes
        with kvmap.open(str(p), readonly=True) as db:       # so does the engine
            assert db.stats()["meta_fallback"] and db.stats()["meta_slot"] == L.other_slot
            assert dict(db.items()) == _contents(base[0])
        assert _cli(p) == 0
    lost = set(range(keep, L.hwm))
    if where == "tail":
        # salvage goes by the newest meta: the last 90 pages hold leaves,
        # overflow pages and the newest free space; the branches survive:
        # exactly the entries on lost pages go
        assert not lost & {b for b, _ in L.branches}
        res = assert_salvaged(p, tmp_path, original, lost, L)
        assert res.meta_used == L.slot and res.unverified == 0
        return
    # "half": the root, every branch and the newest free list are gone, and
    # the last two commits wrote no page below ``keep``: the surviving half
    # is byte for byte what it would be had those commits changed other
    # keys, so no reader can tell which surviving leaves are still current.
    # Salvage copies nothing it cannot prove current (no older value, no
    # deleted key) and, when asked, writes the unproven leaves' entries to a
    # second database, which then holds every entry not on a lost page.
    T = L.meta_fields()["txnid"]
    assert all(struct.unpack_from("<Q", L.page(pg), 8)[0] < T - 1 for pg in range(META_PAGES, keep))
    from kvmap.checker import salvage
    res = salvage(p, tmp_path / "out.kv", unverified=tmp_path / "unverified.kv")
    got = _contents(tmp_path / "out.kv")
    assert all(original.get(k_) == v for k_, v in got.items())      # nothing not in the state
    assert res.unverified > 0 and res.unverified_leaves
    assert any("cannot be proven current" in n for n in res.notes)
    unproven = _contents(tmp_path / "unverified.kv")
    on_lost = _keys_on_pages(L, lost)
    assert not [k_ for k_ in original if k_ not in on_lost and k_ not in got
                and k_ not in unproven]
    assert _cli(p, "--salvage", str(tmp_path / "cli.kv"), "--unverified",
                str(tmp_path / "cli-u.kv")) == 1
    assert _contents(tmp_path / "cli-u.kv") == unproven
    with pytest.raises(SystemExit) as e:
        _cli(p, "--unverified", str(tmp_path / "u2.kv"))
    assert e.value.code == 2


def test_truncated_to_nothing(copy, tmp_path):
    p = copy()
    os.truncate(p, 100)
    with pytest.raises(CheckUnreadable):
        check(p)
    assert _cli(p) == 2
    assert _cli(tmp_path / "missing.kv") == 2


def test_newest_meta_zeroed(base, copy, tmp_path):
    p = copy()
    L = _Layout(p)
    newest, older = L.slot, L.other_slot
    L.data[L.meta_off:L.meta_off + 128] = bytes(128)
    L.save(p)
    rep = check(p)
    assert rep.meta_used == older
    assert [(x.kind, x.page) for x in rep.problems] == [("meta-damaged", newest)]
    assert any(f"meta {newest} is damaged" in n and f"using meta {older}" in n
               for n in rep.meta_notes)
    assert _cli(p) == 1
    # salvage goes by the older meta: expect its whole tree (read by the
    # independent parser from the base file), no data page is damaged
    old = _Layout(base[0], meta=older)
    res = assert_salvaged(p, tmp_path, old.items, set(), old)
    assert res.meta_used == older


def test_newest_meta_torn(base, copy, tmp_path):
    """A meta whose checksum fails next to a valid one is what a power loss
    in a commit's meta write leaves (FORMAT.md §2: not a candidate, the
    engine opens the other meta): the file is sound, and the report says
    which meta it used and why.  (A bit flip in a meta looks the same.)"""
    p = copy()
    L = _Layout(p)
    L.data[L.meta_off + 40] ^= 1                        # entries, checksum not fixed
    L.save(p)
    rep = check(p)
    assert rep.meta_used == L.other_slot
    assert rep.ok and rep.problems == [], rep.problems
    assert any(f"meta {L.slot} fails its checksum" in n and "interrupted by a crash" in n
               and f"using meta {L.other_slot}" in n for n in rep.meta_notes), rep.meta_notes
    assert _cli(p) == 0
    with kvmap.open(p, readonly=True) as db:              # the engine agrees
        assert db.stats()["meta_slot"] == L.other_slot
    old = _Layout(base[0], meta=L.other_slot)        # as for the zeroed meta
    res = assert_salvaged(p, tmp_path, old.items, set(), old)
    assert res.meta_used == L.other_slot


@pytest.mark.parametrize("unwritten", [(0,), (1,), (2,), (0, 2), (1, 2), (0, 1)])
def test_creation_interrupted(tmp_path, unwritten):
    """A crash while a file is created can leave some of its three metas
    unwritten (zeros; txnids 0, 1 and 0 when written): a sound empty
    database, read from the newest meta written, as the engine opens it."""
    p = str(tmp_path / "new.kv")
    kvmap.open(p).close()
    with open(p, "r+b") as f:
        data = bytearray(f.read())
        assert len(data) == META_PAGES * 4096
        for slot in unwritten:
            data[slot * 4096:slot * 4096 + 128] = bytes(128)
        f.seek(0)
        f.write(data)
    newest = 1 if 1 not in unwritten else min({0, 2} - set(unwritten))
    rep = check(p)
    assert rep.ok and rep.meta_used == newest, (unwritten, rep.problems)
    for slot in unwritten:
        assert any(f"meta {slot} unwritten" in n and "creation was interrupted" in n
                   for n in rep.meta_notes), rep.meta_notes
    with kvmap.open(p, readonly=True) as db:
        assert len(db) == 0 and db.stats()["meta_slot"] == newest


def test_nosync_commit_lost_follows_the_engine(tmp_path):
    """A sync=False commit whose tree a power loss left incomplete: its meta
    names the last flushed commit as durable, and the engine opens that
    commit's meta (FORMAT.md §2, step 4) and so does the checker, noting the lost
    commit; the durable state is sound."""
    p = str(tmp_path / "nosync.kv")
    image = str(tmp_path / "image.kv")
    with kvmap.open(p, sync=False, sync_interval=None) as db:
        db.update({b"k%04d" % i: b"v" * 50 for i in range(2000)})
        db.sync()                                      # durable from here
        db[b"k0000"] = b"changed"                      # rewrites the leftmost path and root
        shutil.copyfile(p, image)                      # a power loss now (a close seals it)
    L = _Layout(image)
    f = L.meta_fields()
    assert f["flags"] & 1 and f["durable"] == f["txnid"] - 1
    assert _Layout(image, meta=L.other_slot).meta_fields()["txnid"] == f["durable"]
    with open(image, "r+b") as fh:                     # the root's write never landed
        fh.seek(f["root"] * 4096)
        fh.write(bytes(4096))
    rep = check(image)
    assert rep.ok, rep.problems
    assert rep.meta_used == L.other_slot
    assert any("sync=False" in n and "lost by a crash" in n for n in rep.meta_notes), rep.meta_notes
    with kvmap.open(image, readonly=True) as db:
        assert db.stats()["meta_fallback"] and db.stats()["meta_slot"] == rep.meta_used
        assert db[b"k0000"] == b"v" * 50


def test_every_meta_bad(copy, capsys):
    """No meta page is valid: the file cannot be checked.  With the two
    newest metas bad, the check reads the third (an older commit: the
    commits take the slots in turn) and reports the two damaged ones."""
    p = copy()
    L = _Layout(p)
    newest, oldest = L.order[:2], L.order[2]
    with open(p, "r+b") as f:
        for s, junk in zip(newest, (bytes(128), b"\xff" * 128)):
            f.seek(s * 4096)
            f.write(junk)
    rep = check(p)
    assert _kinds(rep) == {("meta-damaged", s) for s in newest} and rep.meta_used == oldest
    assert _cli(p) == 1
    with open(p, "r+b") as f:
        f.seek(oldest * 4096)
        f.write(b"\xfe" * 128)
    with pytest.raises(CheckUnreadable, match="no valid meta"):
        check(p)
    assert _cli(p) == 2
    assert "unreadable" in capsys.readouterr().err
    assert _cli(p, "--json") == 2
    assert json.loads(capsys.readouterr().out)["unreadable"] is True


def test_overflow_chain_cycle(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    chain = L.overflow_chains[0]
    last = chain[-1]
    struct.pack_into("<Q", L.data, last * L.ps + 24, chain[0])
    L.fix(last)
    L.save(p)
    rep = check(p)
    assert [(x.kind, x.page) for x in rep.problems] == [("overflow-chain", last)]
    assert ("overflow-chain", last) in _kinds(check(p, quick=True))
    assert _cli(p) == 1
    assert_salvaged(p, tmp_path, original, {last}, L)   # loses only that chain's value


def test_overflow_chain_shared(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    a, b = L.overflow_chains[0], L.overflow_chains[1]
    struct.pack_into("<Q", L.data, a[0] * L.ps + 24, b[1])   # a jumps into b
    L.fix(a[0])
    L.save(p)
    rep = check(p)
    k = _kinds(rep)
    assert ("double-reference", b[1]) in k or ("double-reference", b[2]) in k
    for pg in a[1:]:
        assert ("leaked", pg) in k
    assert _cli(p) == 1
    # only a[0] was changed: a's value is lost, b's (intact) must come back
    assert_salvaged(p, tmp_path, original, {a[0]}, L)


@pytest.mark.parametrize("which", ["newest", "older"])
def test_wrong_page_size_in_meta(base, copy, tmp_path, original, which):
    p = copy()
    L = _Layout(p)
    slot = L.slot if which == "newest" else L.other_slot
    used = L.other_slot if which == "newest" else L.slot       # the next newest valid meta
    off = slot * 4096
    struct.pack_into("<I", L.data, off + 12, 8192)
    struct.pack_into("<I", L.data, off + 124, crc(L.data[off:off + 124]))
    L.save(p)
    rep = check(p)
    assert not rep.ok
    dmg = [x for x in rep.problems if x.kind == "meta-damaged"]
    assert [x.page for x in dmg] == [slot]
    assert "8192" in dmg[0].message
    assert rep.meta_used == used
    assert rep.summary["page_size"] == 4096
    assert _cli(p) == 1
    # only a meta page is damaged: the used meta's whole tree must come back
    if which == "newest":
        old = _Layout(base[0], meta=used)
        res = assert_salvaged(p, tmp_path, old.items, set(), old)
    else:
        res = assert_salvaged(p, tmp_path, original, set(), L)
    assert res.meta_used == used


def test_hostile_meta_fields(copy, tmp_path, original):
    """A meta with a huge hwm and a checksum that matches: no crash, no
    huge allocation."""
    p = copy()
    L = _Layout(p)
    for slot_off in range(0, META_PAGES * 4096, 4096):
        struct.pack_into("<Q", L.data, slot_off + 48, (2 ** 64 - 1) // 4096)
        struct.pack_into("<I", L.data, slot_off + 124, crc(L.data[slot_off:slot_off + 124]))
    L.save(p)
    rep = check(p)
    assert not rep.ok
    assert any(x.kind == "truncated" for x in rep.problems)
    assert _cli(p) == 1
    # only the metas' hwm is wrong; every data page is intact
    assert_salvaged(p, tmp_path, original, set(), L)


def test_progress_callback(base):
    calls = []
    rep = check(base[0], progress=lambda done, total: calls.append((done, total)))
    assert rep.ok
    assert calls and calls[-1] == (1, 1)
    assert all(0 <= d <= t for d, t in calls)


def test_max_errors_caps_the_list(copy, tmp_path, original):
    p = copy()
    L = _Layout(p)
    for leaf in L.leaves[:30]:
        L.data[leaf * L.ps + 100] ^= 0xFF
    L.save(p)
    rep = check(p, max_errors=10)
    assert len(rep.problems) == 10
    assert rep.total_problems >= 30
    assert_salvaged(p, tmp_path, original, set(L.leaves[:30]), L)


# ---------------------------------------------------------------------------
# CLI


def test_cli_output(base, copy, capsys):
    assert _cli(base[0]) == 0
    out = capsys.readouterr().out
    assert "ok" in out.splitlines()
    assert "note:" not in out          # a sound file: which meta is used only with --verbose
    assert _cli(base[0], "--verbose") == 0
    assert "note: using meta" in capsys.readouterr().out
    assert _cli(base[0], "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["summary"]["entries"] == base[1]["entries"]
    p = copy()
    L = _Layout(p)
    for leaf in L.inner_leaves()[:5]:          # (damage on an edge path is one problem more)
        L.data[leaf * L.ps + 200] ^= 1
    L.save(p)
    assert _cli(p, "--max-errors", "2") == 1
    out = capsys.readouterr().out
    assert "... and 3 more" in out and "5 problem(s) found" in out
    assert _cli(p, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["total_problems"] == 5
    assert {d["kind"] for d in doc["problems"]} == {"bad-checksum"}


def test_cli_usage_errors(base):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([str(base[0]), "--max-errors", "x"])
    assert e.value.code == 2


def test_python_m_entry(base, copy):
    r = subprocess.run([sys.executable, "-m", "kvmap.checker", str(base[0]), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    p = copy()
    os.truncate(p, 50)
    r = subprocess.run([sys.executable, "-m", "kvmap.checker", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------
# salvage


def _contents(path):
    db = kvmap.open(str(path), readonly=True)
    try:
        return dict(db.items())
    finally:
        db.close()


def _leaf_keys(L, pg):
    b = L.page(pg)
    out = []
    for i in range(struct.unpack_from("<H", b, 6)[0]):
        off = struct.unpack_from("<H", b, 32 + 2 * i)[0]
        klen = struct.unpack_from("<H", b, off)[0]
        out.append(bytes(b[off + 6:off + 6 + klen]))
    return out


def test_salvage_valid(base, tmp_path):
    from kvmap.checker import salvage
    out = tmp_path / "out.kv"
    res = salvage(base[0], out)
    assert res.report.ok and res.lost == 0 and res.recovered == base[1]["entries"]
    assert res.from_orphans == 0
    assert _contents(out) == _contents(base[0])
    assert check(out).ok
    with pytest.raises(FileExistsError):
        salvage(base[0], out)
    with pytest.raises(SystemExit) as e:                       # refuses to overwrite
        _cli(base[0], "--salvage", str(out))
    assert e.value.code == 2


def test_salvage_leaf_bit_flip(base, copy, tmp_path):
    from kvmap.checker import salvage
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[len(L.leaves) // 3]
    lost = set(_leaf_keys(L, leaf))
    off = L.cell_off(leaf, 0)
    L.data[off + 7] ^= 0x20
    L.save(p)
    before = open(p, "rb").read()
    res = salvage(p, tmp_path / "out.kv")
    assert open(p, "rb").read() == before                     # the source is untouched
    assert res.damaged_leaves == [leaf]
    orig = _contents(base[0])
    got = _contents(tmp_path / "out.kv")
    assert set(got) == set(orig) - lost
    assert all(got[k] == orig[k] for k in got)
    assert res.lost == len(lost)


def test_salvage_overflow_and_orphans(base, copy, tmp_path):
    from kvmap.checker import salvage
    orig = _contents(base[0])
    # a damaged overflow page loses exactly its value
    p = copy("a.kv")
    L = _Layout(p)
    L.data[L.overflow_chains[0][1] * L.ps + 500] ^= 1
    L.save(p)
    res = salvage(p, tmp_path / "o1.kv")
    assert res.lost == 1 and res.lost_values == 1
    got = _contents(tmp_path / "o1.kv")
    assert len(got) == len(orig) - 1 and all(got[k] == orig[k] for k in got)
    # a branch pointer redirected: the cut-off leaf is found as an orphan
    p = copy("b.kv")
    L = _Layout(p)
    br = [b for b, lvl in L.branches if lvl == L.meta_fields()["depth"] - 2][0]
    kids = L.children[br]
    struct.pack_into("<Q", L.data, L.cell_off(br, 1) + 2, kids[2])
    L.fix(br)
    L.save(p)
    res = salvage(p, tmp_path / "o2.kv")
    assert res.lost == 0 and res.orphan_leaves == [kids[1]]
    assert _contents(tmp_path / "o2.kv") == orig
    # a root with a damaged type byte: everything comes back through orphans
    p = copy("c.kv")
    L = _Layout(p)
    root = L.meta_fields()["root"]
    L.data[root * L.ps + 4] = 3
    L.save(p)
    res = salvage(p, tmp_path / "o3.kv")
    assert res.lost == 0
    assert _contents(tmp_path / "o3.kv") == orig


def test_salvage_newest_meta_zeroed(copy, tmp_path, capsys):
    p = copy()
    L = _Layout(p)
    L.data[L.meta_off:L.meta_off + 128] = bytes(128)
    L.save(p)
    expected = _contents(p)          # the engine falls back to the older meta as well
    out = tmp_path / "out.kv"
    assert _cli(p, "--salvage", str(out), "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    s = doc["salvage"]
    assert s["meta_used"] == L.other_slot and s["lost"] == 0
    assert any(f"salvaged from meta {L.other_slot}" in n for n in s["notes"])
    assert _contents(out) == expected


def test_salvage_unreadable(copy, tmp_path):
    from kvmap.checker import salvage
    p = copy()
    with open(p, "r+b") as f:
        f.write(bytes(META_PAGES * 4096))
    with pytest.raises(CheckUnreadable):
        salvage(p, tmp_path / "out.kv")
    assert _cli(p, "--salvage", str(tmp_path / "out2.kv")) == 2


def test_salvage_orphans_need_the_free_list(copy, tmp_path, original):
    """Root damaged: every leaf is an orphan.  With the free list intact they
    are proven current (no free page, no newer version) and all come back;
    with a free-list page damaged too only those the newest commit wrote are
    proven; the others go to the unverified output."""
    from kvmap.checker import salvage
    p = copy()
    L = _Layout(p)
    root = L.meta_fields()["root"]
    L.data[root * L.ps + 4] = 3
    L.save(p)
    res = assert_salvaged(p, tmp_path, original, {root}, L)
    assert res.from_orphans == len(original) and res.unverified == 0
    L.data[L.bitmaps[0] * L.ps + 40] ^= 1             # a bitmap bit, checksum not fixed
    L.save(p)
    res = salvage(p, tmp_path / "o.kv", unverified=tmp_path / "u.kv")
    assert 0 < res.recovered < len(original) and res.unverified > 0
    got = _contents(tmp_path / "o.kv")
    assert all(original.get(k) == v for k, v in got.items())
    assert set(original) <= set(got) | set(_contents(tmp_path / "u.kv"))


# ---------------------------------------------------------------------------
# the free space of version 2: commit records and bitmap overrides


def _engine_refuses_writable(path):
    """A writable open loads the free space, and refuses damage there."""
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(str(path))


@pytest.mark.parametrize("damage", ["bit-flip", "freed-run"])
def test_record_page_damaged(copy, tmp_path, original, damage):
    """The newest commit's record (in the sealed base: durable, so open does
    not verify it; the free space is read through it): a flipped bit past its
    entries is a bad checksum, a freed run out of range (checksum fixed)
    leaves its pages unaccounted for."""
    p = copy()
    L = _Layout(p)
    rec = L.records[0]
    assert len(rec["pages"]) == 1 and rec["freed"]
    pg = rec["pages"][0]
    o = pg * L.ps
    if damage == "bit-flip":
        entries = RECORD_FIXED + 12 * len(rec["written"]) + 16 * (len(rec["freed"]) + len(rec["released"])
                                                                 + len(rec["overrides"]))
        assert 32 + entries < L.ps - 100
        L.data[o + L.ps - 100] ^= 0x08                # past the entries, checksum not fixed
        L.save(p)
        rep = check(p)
        assert [(x.kind, x.page) for x in rep.problems] == [("bad-checksum", pg)]
        assert "(record)" in rep.problems[0].message
        assert check(p, quick=True).ok
    else:
        start, count = rec["freed"][0]
        off = o + 32 + RECORD_FIXED + 12 * len(rec["written"])   # the first freed run
        assert struct.unpack_from("<QQ", L.data, off) == (start, count)
        struct.pack_into("<Q", L.data, off + 8, L.hwm)
        L.fix(pg)
        L.save(p)
        rep = check(p, max_errors=10 ** 6)
        k = _kinds(rep)
        assert ("free-list", pg) in k
        assert {("leaked", x) for x in range(start, start + count)} <= k
        assert {x.kind for x in rep.problems} == {"free-list", "leaked", "pending-count"}
        assert k == _kinds(check(p, quick=True, max_errors=10 ** 6))
    assert _cli(p) == 1
    _engine_refuses_writable(p)
    with kvmap.open(str(p), readonly=True) as db:      # reads do not need the free space
        assert dict(db.items()) == original
    assert_salvaged(p, tmp_path, original, set(), L)    # a record holds no entries


def test_freed_runs_longer_than_the_file(copy, original):
    """Two freed runs of the newest record (checksum fixed) each list every
    page: the first marks them all pending (the pages in use are reachable
    and free), the second stops after the pages that bring the pages marked
    to the file's count -- marking is bounded by the file, not by what the
    records say -- and so do the runs after it."""
    p = copy()
    L = _Layout(p)
    rec = L.records[0]
    assert len(rec["freed"]) > 2
    pg = rec["pages"][0]
    off = pg * L.ps + 32 + RECORD_FIXED + 12 * len(rec["written"])   # the first freed run
    for i in range(2):
        struct.pack_into("<QQ", L.data, off + 16 * i, META_PAGES, L.hwm - META_PAGES)
    L.fix(pg)
    L.save(p)
    for quick in (False, True):
        rep = check(p, quick=quick, max_errors=10 ** 6)
        # the first run marks every page but the metas: the second marks
        # as many as there are meta pages (the file's count), all taken
        assert [(x.kind, x.page) for x in rep.problems if x.kind == "double-reference"] == [
            ("double-reference", META_PAGES + i) for i in range(META_PAGES)]
        assert {x.kind for x in rep.problems} == {"reachable-and-free", "double-reference", "free-count",
                                                  "pending-count"}
        assert rep.summary["pages_by_type"]["pending"] + sum(
            n for k, n in rep.summary["pages_by_type"].items() if k != "pending") == L.hwm
    assert _cli(p) == 1
    with kvmap.open(str(p), readonly=True) as db:      # reads do not need the free space
        assert dict(db.items()) == original


@pytest.mark.parametrize("prev", ["zero", "older"])
def test_record_chain_broken(copy, tmp_path, original, prev):
    """The newest record's prev pointer (checksum fixed) no longer leads to
    the record of the commit before: the live records behind it, and the
    pages they list freed, are unaccounted for."""
    p = copy()
    L = _Layout(p)
    assert len(L.records) >= 3
    newest, lost = L.records[0], L.records[1:]
    pg = newest["pages"][0]
    target = 0 if prev == "zero" else L.records[2]["pages"][0]
    struct.pack_into("<Q", L.data, pg * L.ps + 32, target)
    L.fix(pg)
    L.save(p)
    rep = check(p, max_errors=10 ** 6)
    k = _kinds(rep)
    assert ("free-list", pg if prev == "zero" else target) in k
    unreached = {x for r in lost for x in r["pages"]} - {target}
    # and the pages the lost records freed, less those a newer record released
    # early (FORMAT.md §7: those are in a bitmap, reusable)
    released_newer = set()
    for r in L.records:   # newest first
        if r in lost:
            unreached |= {x for s_, c in r["freed"] for x in range(s_, s_ + c)} - released_newer
        released_newer |= {x for s_, c in r["released"] for x in range(s_, s_ + c)}
    assert {x for kind, x in k if kind == "leaked"} == unreached
    assert ("pending-count", L.slot) in k
    assert {x.kind for x in rep.problems} == {"free-list", "leaked", "pending-count"}
    assert _cli(p) == 1
    _engine_refuses_writable(p)
    assert_salvaged(p, tmp_path, original, set(), L)


@pytest.mark.parametrize("damage", ["stale", "out-of-order"])
def test_bitmap_override_damaged(copy, tmp_path, original, damage):
    """The newest record's bitmap overrides (checksum fixed): "stale" points
    range 0 back at the index's entry, a page the override replaced (freed
    since, and never to be read as a bitmap); "out-of-order" repeats the
    range."""
    p = copy()
    L = _Layout(p)
    rec = L.records[0]
    assert rec["overrides"] and rec["overrides"][0][0] == 0 and len(rec["overrides"]) == 1
    pg = rec["pages"][0]
    current, stale = rec["overrides"][0][1], L.stale_bitmaps[0]
    assert current != stale
    off = pg * L.ps + 32 + RECORD_FIXED + 12 * len(rec["written"]) + 16 * (len(rec["freed"]) + len(rec["released"]))
    if damage == "stale":
        struct.pack_into("<Q", L.data, off + 8, stale)
    else:
        struct.pack_into("<I", L.data, pg * L.ps + 52, 2)              # n_override
        struct.pack_into("<QQ", L.data, off + 16, 0, current)
    L.fix(pg)
    L.save(p)
    rep = check(p)
    k = _kinds(rep)
    if damage == "stale":
        assert ("leaked", current) in k              # the real bitmap page is not reached
        assert any(x.page == stale for x in rep.problems), rep.problems[:5]
    else:
        assert [(x.kind, x.page) for x in rep.problems] == [("free-list", pg)]
        _engine_refuses_writable(p)
    assert _cli(p) == 1
    assert_salvaged(p, tmp_path, original, set(), L)


@pytest.mark.parametrize("damage", ["written-page", "record-page"])
def test_commit_not_verified_falls_back(crashed, base, tmp_path, damage):
    """The crashed image's newest commit is not known durable: open verifies
    the pages its record lists.  A damaged one (an overflow page off the
    edge paths, or the record page itself) is what a power loss before the
    commit's flush leaves: the engine opens the durable commit's meta, and
    so does the checker (a note, no problem).  With that other meta damaged
    too (every other slot), the engine refuses the file, and the checker
    says so."""
    p = tmp_path / "image.kv"
    shutil.copyfile(crashed[0], p)
    L = _Layout(p)
    rec = L.records[0]
    assert rec["txnid"] > L.meta_fields()["durable"] and rec["flags"] == 0
    written = {w for w, _ in rec["written"]}
    if damage == "written-page":
        pg = L.key_chain[b"big-1100"][1]
        assert pg in written and pg not in L.edge_pages()
    else:
        pg = rec["pages"][0]
    L.data[pg * L.ps + 3000] ^= 0x40
    L.save(p)
    rep = check(p)
    assert rep.ok, rep.problems
    assert rep.meta_used == L.other_slot
    assert any(f"meta {L.slot}" in n and "lost by a crash" in n and f"page {pg}" in n
               and f"using meta {L.other_slot}" in n for n in rep.meta_notes), rep.meta_notes
    assert _cli(p) == 0
    base_items = _contents(base[0])
    with kvmap.open(str(p), readonly=True) as db:          # the engine agrees
        assert db.stats()["meta_fallback"] and db.stats()["meta_slot"] == L.other_slot
        assert dict(db.items()) == base_items
    # salvage takes the newest commit's tree, whose damaged page loses its value
    assert_salvaged(p, tmp_path, crashed[1], {pg}, L)
    fallbacks = [s for s in range(META_PAGES) if s != L.slot]   # every meta open could fall back to
    for s in fallbacks:
        L.data[s * L.ps:s * L.ps + 128] = bytes(128)
    L.save(p)
    rep = check(p)
    assert ("meta-unusable", L.slot) in _kinds(rep)
    assert all(("meta-damaged", s) in _kinds(rep) for s in fallbacks)
    msg = [x.message for x in rep.problems if x.kind == "meta-unusable"][0]
    assert "refuses to open" in msg and f"page {pg}" in msg
    assert _cli(p) == 1
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(str(p), readonly=True)


@pytest.fixture(scope="module")
def three_commits(tmp_path_factory):
    """(path, slots): a file a power loss left while sync=False commits ran
    beside background flushes (in the committing thread, kvm_set_flush_mode:
    deterministic), when its three metas hold three commits M > O1 > O2
    (``slots``: theirs) and M names as durable a commit no newer than O2:
    open may fall back to O1 or to O2."""
    from kvmap._lib import lib
    d = tmp_path_factory.mktemp("three")
    work, image = d / "work.kv", d / "three.kv"
    lib.kvm_set_flush_mode(2)
    try:
        db = kvmap.open(str(work), sync=False, sync_bytes=100_000, sync_interval=None)
        try:
            for i in range(30):
                with db.transaction() as t:
                    for j in range(40):
                        t[b"k%02d-%02d" % (i, j)] = bytes([i]) * 1000
                data = open(work, "rb").read(META_PAGES * 4096)
                # (txnid, durable) of each slot: every meta is sound, nothing crashed
                metas = [struct.unpack_from("<Q", data, k * 4096 + 16) + struct.unpack_from(
                    "<Q", data, k * 4096 + 96) for k in range(META_PAGES)]
                order = sorted(range(META_PAGES), key=lambda k: (-metas[k][0], -metas[k][1], k))
                (m_txnid, m_durable), (o1, _), (o2, _) = (metas[k] for k in order)
                if 2 <= m_durable <= o2 < o1 < m_txnid:
                    shutil.copyfile(work, image)
                    return image, order
        finally:
            db.close()
    finally:
        lib.kvm_set_flush_mode(0)
    pytest.fail("no three commits in the three slots")


def test_fallback_over_three_slots(three_commits, tmp_path):
    """The newest meta M's commits do not verify: open takes the newest other
    meta no older than the durable commit M names that passes (FORMAT.md §2,
    step 4), and so does the checker: O1 when M's page is damaged, O2 when
    O1's record is damaged too; with O2 gone as well the engine refuses the
    file, and the checker names both metas that fail."""
    src, (M, O1, O2) = three_commits
    p = tmp_path / "image.kv"
    shutil.copyfile(src, p)
    L = _Layout(p)
    assert L.order == [M, O1, O2]
    t = {k: struct.unpack_from("<Q", L.data, k * L.ps + 16)[0] for k in (M, O1, O2)}
    written = [w for w, _ in L.records[0]["written"] if w not in L.edge_pages()]
    L.data[written[0] * L.ps + 100] ^= 1
    L.save(p)

    def engine():
        with kvmap.open(str(p), readonly=True) as db:
            st = db.stats()
            return st["meta_slot"], st["meta_fallback"], st["txnid"]
    rep = check(p)
    assert rep.ok and rep.meta_used == O1, rep.problems
    assert any(f"meta {M} (txnid {t[M]}" in n and "lost by a crash" in n and f"page {written[0]}" in n
               and f"using meta {O1}" in n for n in rep.meta_notes), rep.meta_notes
    assert engine() == (O1, True, t[O1])
    rec = [r for r in L.records if r["txnid"] == t[O1]][0]["pages"][0]
    L.data[rec * L.ps + 100] ^= 1
    L.save(p)
    rep = check(p)
    assert rep.ok and rep.meta_used == O2, rep.problems
    assert any(f"meta {O1} (txnid {t[O1]}) does not pass either" in n and f"using meta {O2}" in n
               for n in rep.meta_notes), rep.meta_notes
    assert engine() == (O2, True, t[O2])
    L.data[O2 * L.ps:O2 * L.ps + 128] = bytes(128)
    L.save(p)
    rep = check(p)
    assert {("meta-damaged", O2), ("meta-unusable", M)} <= _kinds(rep)
    msg = [x.message for x in rep.problems if x.kind == "meta-unusable"][0]
    assert f"page {written[0]}" in msg and f"meta {O1} (txnid {t[O1]})" in msg and f"page {rec}" in msg
    with pytest.raises(kvmap.CorruptionError):
        engine()


def test_edge_path_damage_refused(copy):
    """A damaged page on an edge path of a durable commit's tree: the engine
    refuses the file (no commit to fall back to), and the checker says so,
    in quick mode too."""
    p = copy()
    L = _Layout(p)
    leaf = L.leaves[0]                          # the rightmost leaf
    assert leaf in L.edge_pages()
    nkeys, upper = struct.unpack_from("<H", L.page(leaf), 6)[0], struct.unpack_from("<Q", L.page(leaf), 24)[0]
    gap = 32 + 2 * nkeys                        # a byte no cell uses: only its checksum tells
    assert gap < upper
    L.data[leaf * L.ps + gap] ^= 1
    L.save(p)
    assert {("bad-checksum", leaf), ("meta-unusable", L.slot)} <= _kinds(check(p))
    assert _kinds(check(p, quick=True)) == {("meta-unusable", L.slot)}
    with pytest.raises(kvmap.CorruptionError):
        kvmap.open(str(p), readonly=True)


def test_pages_made_durable_before_the_meta(tmp_path):
    """Commits much larger than sync_bytes sync their pages before their
    meta: their records list no pages (flag 1), their metas say they are
    durable; a file left so checks sound."""
    p = str(tmp_path / "db.kv")
    image = str(tmp_path / "image.kv")
    r = random.Random(3)
    with kvmap.open(p, sync=False, sync_bytes=4096) as db:
        for i in range(20):
            with db.transaction() as t:                # some 160 pages each
                for _ in range(30):
                    t[b"k%d" % r.randrange(500)] = r.randbytes(r.choice((30, 300, 20000)))
                for _ in range(20):
                    t[b"big%d" % r.randrange(100)] = r.randbytes(20000)
        shutil.copyfile(p, image)
        st = db.stats()
    L = _Layout(image)
    f = L.meta_fields()
    assert f["durable"] == f["txnid"] and L.records
    assert all(x["flags"] == 1 and x["written"] == [] for x in L.records)
    for path in (image, p):
        rep = check(path)
        assert rep.ok, rep.problems
        assert rep.summary["entries"] == st["entries"]


def test_pages_released_early(tmp_path):
    """With sync=False, a page written since the last flush and freed again
    is reused at once (FORMAT.md §7): the commit that releases it lists it in
    its record, and the older record that freed it no longer makes it
    pending.  A file left so, copied while open or closed, checks sound and
    opens with the same contents; the checker reads the released runs."""
    p = str(tmp_path / "db.kv")
    image = str(tmp_path / "image.kv")
    r = random.Random(4)
    model = {}
    with kvmap.open(p, sync=False) as db:
        for i in range(60):                            # a hot set: the same leaves again
            with db.transaction() as t:
                for _ in range(20):
                    k, v = b"k%03d" % r.randrange(200), r.randbytes(r.choice((10, 100, 1500)))
                    t[k] = model[k] = v
        assert db.stats()["durable_txnid"] < db.stats()["txnid"]   # no flush since the first
        shutil.copyfile(p, image)
    L = _Layout(image)
    assert any(x["released"] for x in L.records), "no record lists a page released early"
    for path in (image, p):
        rep = check(path)
        assert rep.ok, rep.problems
        with kvmap.open(path) as db:
            assert dict(db.items()) == model
            db._check()


# ---------------------------------------------------------------------------
# version 1 and 2 files: two meta pages (0 and 1), the other pages from 2;
# tree pages and the page header as in version 3


def _old_meta(version, ps, txnid, root, depth, entries, hwm, record=0, floor=0, durable=0):
    """A meta page's 128 bytes in version 1's or 2's layout: version 1 has
    free_index at 56, free_pending at 64, free_count at 72, pending_count at
    80, pending_floor at 88 and zeros up to the checksum; version 2 has
    version 3's fields (free_index, record, free_count, pending_count,
    floor, durable)."""
    m = bytearray(128)
    struct.pack_into("<8sIIQQIIQQ", m, 0, b"\x89KVM\r\n\x1a\n", version, ps, txnid, root, depth, 0,
                     entries, hwm)
    if version == 2:
        struct.pack_into("<QQQQQQ", m, 56, 0, record, 0, 0, floor, durable)
    struct.pack_into("<I", m, 124, crc(m[:124]))
    return bytes(m)


def _page_header(buf, off, ptype, nkeys, txnid, pgno, nxt):
    struct.pack_into("<IBBHQQQ", buf, off, 0, ptype, 0, nkeys, txnid, pgno, nxt)


def _seal_page(buf, off, ps):
    struct.pack_into("<I", buf, off, crc(buf[off + 4:off + ps]))


def make_old(src, dst, version, first=None):
    """A version 1 or 2 file holding src's tree (its newest meta's): the
    tree's pages (branches, leaves, overflow pages) renumbered from page 2
    in their order in src, ``first`` (one of them) moved to page 2, their
    page numbers, child pointers, first overflow pages and chain links
    rewritten (checksums fixed); two metas of the commit (version 2: and a
    record page after the tree, listing nothing, the pages durable before
    the meta; meta 1 the sealed copy).  Returns the page of src now at 2."""
    L = _Layout(src)
    f, ps = L.meta_fields(), L.ps
    pages = sorted([b for b, _ in L.branches] + L.leaves + [p for ch in L.overflow_chains for p in ch])
    if first is not None:
        pages.remove(first)
        pages.insert(0, first)
    new = {pg: 2 + i for i, pg in enumerate(pages)}
    nrec = 1 if version == 2 else 0
    hwm = 2 + len(pages) + nrec
    out = bytearray(hwm * ps)
    usable_max = (ps - 32) // 4
    for pg in pages:
        o = new[pg] * ps
        out[o:o + ps] = L.page(pg)
        struct.pack_into("<Q", out, o + 16, new[pg])
        nk = struct.unpack_from("<H", out, o + 6)[0]
        if out[o + 4] == 3:                                 # overflow: the chain link
            nxt = struct.unpack_from("<Q", out, o + 24)[0]
            struct.pack_into("<Q", out, o + 24, new[nxt] if nxt else 0)
        for i in range(nk):
            c = o + struct.unpack_from("<H", out, o + 32 + 2 * i)[0]
            if out[o + 4] == 1:                             # branch: the child
                struct.pack_into("<Q", out, c + 2, new[struct.unpack_from("<Q", out, c + 2)[0]])
            else:
                klen, vlen = struct.unpack_from("<HI", out, c)
                if 8 + klen + vlen > usable_max:            # leaf: the first overflow page
                    at = c + 6 + klen
                    struct.pack_into("<Q", out, at, new[struct.unpack_from("<Q", out, at)[0]])
        _seal_page(out, o, ps)
    T = f["txnid"]
    record = 0
    if version == 2:
        record = hwm - 1
        o = record * ps
        _page_header(out, o, 8, 0, T, record, 0)
        struct.pack_into("<QIIIIII", out, o + 32, 0, 0, 0, 0, 0, 1, 0)
        _seal_page(out, o, ps)
    for slot in (0, 1):
        out[slot * ps:slot * ps + 128] = _old_meta(version, ps, T, new[f["root"]], f["depth"], f["entries"],
                                                   hwm, record, T - 1, T - 1 + slot)
    with open(dst, "wb") as fh:
        fh.write(out)
    return pages[0]


@pytest.mark.parametrize("version", [1, 2])
def test_old_version_file(base, tmp_path, original, capsys, version):
    """The engine does not open a version 1 or 2 file; the checker reports it
    as one (checking its tree only), and salvage copies it into a new
    version 3 file.  Page 2, a meta page in version 3, holds an overflow
    page (version 1) or a leaf under a bottom branch (version 2) here: both
    are read and checked as any other."""
    p = tmp_path / f"v{version}.kv"
    L0 = _Layout(base[0])
    at2 = L0.overflow_chains[0][1] if version == 1 else L0.inner_leaves()[0]
    assert make_old(base[0], p, version, first=at2) == at2
    L = _Layout(p)
    if version == 1:
        assert 2 in L.overflow_chains[0]
    else:
        assert 2 in L.inner_leaves() and 2 in {c for b, lvl in L.branches for c in L.children[b]
                                                 if lvl == L.meta_fields()["depth"] - 2}
    before = open(p, "rb").read()
    rep = check(p)
    assert not rep.ok
    assert [(x.kind, x.page) for x in rep.problems] == [("version", None)]
    msg = rep.problems[0].message
    assert f"version {version}" in msg and "--salvage" in msg
    assert rep.summary["entries"] == len(original) and rep.summary["free_pages"] is None
    assert rep.summary["pages_by_type"]["meta"] == 2
    assert sum(rep.summary["pages_by_type"].values()) == L.hwm
    assert rep.summary["pages_by_type"].get("unread", 0) == (version == 2)     # its record
    assert _cli(p) == 1
    assert f"version {version}" in capsys.readouterr().out
    for readonly in (True, False):
        with pytest.raises(kvmap.FormatError, match=f"version {version}") as e:
            kvmap.open(str(p), readonly=readonly)
        assert "--salvage" in str(e.value)
    assert open(p, "rb").read() == before
    res = assert_salvaged(p, tmp_path, original, set(), L)
    assert res.lost == 0 and res.recovered == len(original)
    out = check(tmp_path / "salvaged.kv")
    assert out.ok and out.summary["entries"] == len(original)
    assert _cli(p, "--salvage", str(tmp_path / "cli.kv")) == 1
    assert _contents(tmp_path / "cli.kv") == original


def test_version_1_file_damaged(base, tmp_path, original):
    """Damage in a version 1 file's tree is reported beside the version, and
    salvage loses only the damaged leaf; with its root damaged too, its
    orphan leaves (one of them at page 2) cannot be proven current (its
    free list is not read)."""
    p = tmp_path / "v1.kv"
    make_old(base[0], p, 1, first=_Layout(base[0]).inner_leaves()[1])
    L = _Layout(p)
    assert 2 in L.inner_leaves()
    leaf = L.inner_leaves()[3]
    L.data[leaf * L.ps + 300] ^= 2
    L.save(p)
    assert _kinds(check(p)) == {("version", None), ("bad-checksum", leaf)}
    assert_salvaged(p, tmp_path, original, {leaf}, L)
    root = L.meta_fields()["root"]
    L.data[root * L.ps + 4] = 3
    L.save(p)
    from kvmap.checker import salvage
    res = salvage(p, tmp_path / "o.kv", unverified=tmp_path / "u.kv")
    got, unproven = _contents(tmp_path / "o.kv"), _contents(tmp_path / "u.kv")
    assert all(original.get(k) == v for k, v in got.items())
    assert res.unverified > 0 and 2 in res.unverified_leaves + res.orphan_leaves
    on_lost = _keys_on_pages(L, {leaf})
    assert not [k for k in original if k not in on_lost and k not in got and k not in unproven]


def write_v2(path, pairs, ps=4096):
    """A small version 2 file written byte by byte, as a version 2 engine
    leaves one commit closed: meta 0 (commit 2, durable 1) and meta 1 (its
    sealed copy, durable 2) at pages 0 and 1; the commit's tree, one leaf
    at page 2 (the root); the overflow chains of the values not inline
    after it; its record (listing the pages it wrote) last."""
    items = sorted(pairs.items())
    max_cell = (ps - 32) // 4
    chains = {}
    npages = 3
    for k, v in items:
        if 8 + len(k) + len(v) > max_cell:
            chains[k] = list(range(npages, npages + -(-len(v) // (ps - 32))))
            npages += len(chains[k])
    record, hwm = npages, npages + 1
    out = bytearray(hwm * ps)
    leaf = 2 * ps
    upper = ps
    for i, (k, v) in enumerate(items):
        body = struct.pack("<HI", len(k), len(v)) + k + (struct.pack("<Q", chains[k][0]) if k in chains else v)
        upper -= len(body)
        out[leaf + upper:leaf + upper + len(body)] = body
        struct.pack_into("<H", out, leaf + 32 + 2 * i, upper)
    assert 32 + 2 * len(items) <= upper
    _page_header(out, leaf, 2, len(items), 2, 2, upper)
    _seal_page(out, leaf, ps)
    written = [2]
    for k, ch in chains.items():
        v = pairs[k]
        for j, pg in enumerate(ch):
            o = pg * ps
            _page_header(out, o, 3, 0, 2, pg, ch[j + 1] if j + 1 < len(ch) else 0)
            piece = v[j * (ps - 32):(j + 1) * (ps - 32)]
            out[o + 32:o + 32 + len(piece)] = piece
            _seal_page(out, o, ps)
            written.append(pg)
    o = record * ps
    _page_header(out, o, 8, 0, 2, record, 0)
    struct.pack_into("<QIIIIII", out, o + 32, 0, len(written), 0, 0, 0, 0, 0)
    for i, pg in enumerate(written):
        struct.pack_into("<QI", out, o + 64 + 12 * i, pg, struct.unpack_from("<I", out, pg * ps)[0])
    _seal_page(out, o, ps)
    for slot in (0, 1):
        out[slot * ps:slot * ps + 128] = _old_meta(2, ps, 2, 2, 1, len(items), hwm, record, 1, 1 + slot)
    with open(path, "wb") as fh:
        fh.write(out)


def test_version_2_file_refused_and_salvaged(tmp_path, capsys):
    """A version 2 file (two metas, a leaf at page 2) is refused by the
    engine with a FormatError naming version 2 and the salvage; ``kvmap-check
    --salvage OLD NEW`` copies its pairs into a version 3 file."""
    pairs = {b"apple": b"red", b"banana": b"yellow" * 3, b"big": bytes(range(256)) * 30, b"cherry": b""}
    p, out = tmp_path / "v2.kv", tmp_path / "v3.kv"
    write_v2(p, pairs)
    before = open(p, "rb").read()
    with pytest.raises(kvmap.FormatError, match="version 2") as e:
        kvmap.open(str(p), readonly=True)
    assert f"kvmap-check --salvage {p}" in str(e.value)
    with pytest.raises(kvmap.FormatError, match="version 2"):
        kvmap.open(str(p))
    rep = check(p)
    assert [(x.kind, x.page) for x in rep.problems] == [("version", None)], rep.problems
    assert "version 2" in rep.problems[0].message and "--salvage" in rep.problems[0].message
    assert rep.summary["entries"] == len(pairs)
    assert rep.summary["pages_by_type"] == {"meta": 2, "leaf": 1, "overflow": 2, "unread": 1}   # the record
    assert _cli(p, "--salvage", str(out)) == 1              # (the version is reported)
    assert f"salvage: {len(pairs)} entries recovered into {out}, 0 lost" in capsys.readouterr().out
    assert open(p, "rb").read() == before
    data = open(out, "rb").read()
    assert struct.unpack_from("<I", data, 8)[0] == 3        # a version 3 file, three metas
    assert all(data[k * 4096:k * 4096 + 8] == b"\x89KVM\r\n\x1a\n" for k in range(META_PAGES))
    assert _contents(out) == pairs
    assert check(out).ok


def test_version_2_meta_beside_version_3(copy):
    """A version 2 meta next to valid version 3 ones is damage to that meta
    (no version 3 engine writes it); the engine uses the newest valid one."""
    p = copy()
    L = _Layout(p)
    off = L.other_slot * L.ps
    struct.pack_into("<I", L.data, off + 8, 2)
    struct.pack_into("<I", L.data, off + 124, crc(L.data[off:off + 124]))
    L.save(p)
    rep = check(p)
    assert [(x.kind, x.page) for x in rep.problems] == [("meta-damaged", L.other_slot)]
    assert "version 2" in rep.problems[0].message and rep.meta_used == L.slot
    with kvmap.open(str(p), readonly=True) as db:
        assert db.stats()["meta_slot"] == L.slot


def test_pwrite_bytes_are_the_pages_a_commit_record_lists(tmp_path):
    """stats()["syscalls"]["pwrite_bytes"] counts what a commit writes: the
    pages its record lists as written, the record's own pages, and the
    meta's 128 bytes (FORMAT.md §2, §6) -- the figure kvmap-bench reports
    per commit."""
    p = str(tmp_path / "db.kv")
    with kvmap.open(p) as db:
        db.update((b"k%04d" % i, b"v" * 50) for i in range(2000))
        for j in range(3):
            before = db.stats()["syscalls"]["pwrite_bytes"]
            db[b"k%04d" % (j * 97)] = b"w" * 50
            written = db.stats()["syscalls"]["pwrite_bytes"] - before
            rec = _Layout(p).records[0]
            assert written == (len(rec["written"]) + len(rec["pages"])) * 4096 + 128, (written, rec)
