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


def crc(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TBL[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_crc_reference():
    from kvmap.checker import _page_crcs, crc32c
    assert crc(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    r = random.Random(5)
    for n in (0, 1, 7, 8, 9, 100, 4092):
        d = r.randbytes(n)
        assert crc32c(d) == crc(d)
    pages = r.randbytes(4096 * 6)
    assert _page_crcs(pages, 4096, 6) == [crc(pages[i * 4096 + 4:(i + 1) * 4096]) for i in range(6)]


class _Layout:
    """Pages of a kvmap file, found by walking from the newest valid meta."""

    def __init__(self, path, meta=None):
        self.data = bytearray(open(path, "rb").read())
        metas = []
        for slot in (0, 1):
            off = slot * 4096 if slot == 0 else struct.unpack_from("<I", self.data, 12)[0]
            m = self.data[off:off + 128]
            if m[:8] == b"\x89KVM\r\n\x1a\n" and crc(m[:124]) == struct.unpack_from("<I", m, 124)[0]:
                metas.append((struct.unpack_from("<Q", m, 16)[0], slot, off))
        if meta is not None:                    # walk the tree of this meta slot
            metas = [m for m in metas if m[1] == meta]
        txnid, self.slot, self.meta_off = max(metas)
        self.other_slot = 1 - self.slot
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
        self.bitmaps = []
        idx = f["free_index"]
        while idx:
            b = self.page(idx)
            nk = struct.unpack_from("<H", b, 6)[0]
            self.bitmaps += [x for x in struct.unpack_from(f"<{nk}Q", b, 32) if x]
            idx = struct.unpack_from("<Q", b, 24)[0]

    def meta_fields(self):
        m = self.data[self.meta_off:self.meta_off + 128]
        (ps, txnid, root, depth, flags, entries, hwm, fi, fp, fc, pc, floor) = struct.unpack_from(
            "<IQQIIQQQQQQQ", m, 12)
        return dict(ps=ps, txnid=txnid, root=root, depth=depth, entries=entries, hwm=hwm,
                    free_index=fi, free_pending=fp, free_count=fc, pending_count=pc)

    def page(self, pg):
        return self.data[pg * self.ps:(pg + 1) * self.ps]

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
    commits.  Returns the engine's stats after close and reopen.  Commits
    sync: damage to a sync=False commit's edge paths is a lost commit that
    the engine and the checker pass over (FORMAT.md §2), not damage."""
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
        assert s["pages_by_type"].get("overflow", 0) >= 20 * -(-9000 // (page_size - 32))
    if snapshot:
        assert st["pending_pages"] > 0
    assert _cli(p) == 0
    assert _cli(p, "--quick") == 0


def test_library_entry_points(base):
    """kvmap.check / kvmap.salvage are the checker's (the module is
    kvmap.checker, so that ``python -m kvmap.checker`` runs it cleanly)."""
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
def test_truncated_at_page_boundary(copy, tmp_path, original, where):
    p = copy()
    L = _Layout(p)
    keep = L.hwm // 2 if where == "half" else L.hwm - 90
    os.truncate(p, keep * L.ps)
    rep = check(p)
    k = _kinds(rep)
    assert ("truncated", keep) in k
    if where == "half":
        assert any(x.kind == "out-of-range" and x.page >= keep for x in rep.problems)
    else:                                   # the older meta fits: the check reads it
        assert rep.meta_used == L.other_slot
    assert _cli(p) == 1
    lost = set(range(keep, L.hwm))
    if where == "tail":
        # the last 90 pages hold leaves, overflow pages and the newest free
        # list; the branches survive: exactly the entries on lost pages go
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
    assert all(struct.unpack_from("<Q", L.page(pg), 8)[0] < T - 1 for pg in range(2, keep))
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


def test_creation_interrupted(tmp_path):
    """A crash while a file is created can leave one of its two metas
    unwritten (zeros): a sound empty database, as the engine opens it."""
    p = str(tmp_path / "new.kv")
    kvmap.open(p).close()
    for slot in (0, 1):
        with open(p, "r+b") as f:
            data = bytearray(f.read())
            good = bytes(data)
            data[slot * 4096:slot * 4096 + 128] = bytes(128)
            f.seek(0)
            f.write(data)
        rep = check(p)
        assert rep.ok and rep.meta_used == 1 - slot, (slot, rep.problems)
        assert any("creation was interrupted" in n for n in rep.meta_notes), rep.meta_notes
        with open(p, "wb") as f:
            f.write(good)


def test_nosync_commit_lost_follows_the_engine(tmp_path):
    """A sync=False commit whose tree a power loss left incomplete: the
    engine opens the older meta (FORMAT.md §2 step 4) and so does the
    checker, noting the lost commit; the older state is sound."""
    p = str(tmp_path / "nosync.kv")
    with kvmap.open(p, sync=False) as db:
        db.update({b"k%04d" % i: b"v" * 50 for i in range(2000)})
        db[b"k0000"] = b"changed"                      # rewrites the leftmost path and root
    root = _Layout(p).meta_fields()["root"]
    with open(p, "r+b") as f:                          # the root's write never landed
        f.seek(root * 4096)
        f.write(bytes(4096))
    rep = check(p)
    assert rep.ok, rep.problems
    assert any("sync=False" in n and "lost by a crash" in n for n in rep.meta_notes), rep.meta_notes
    with kvmap.open(p, readonly=True) as db:
        assert db.stats()["meta_fallback"] and db.stats()["meta_slot"] == rep.meta_used
        assert db[b"k0000"] == b"v" * 50


def test_both_metas_bad(copy, capsys):
    p = copy()
    with open(p, "r+b") as f:
        f.write(bytes(128))
        f.seek(4096)
        f.write(b"\xff" * 128)
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
    off = 0 if slot == 0 else 4096
    struct.pack_into("<I", L.data, off + 12, 8192)
    struct.pack_into("<I", L.data, off + 124, crc(L.data[off:off + 124]))
    L.save(p)
    rep = check(p)
    assert not rep.ok
    dmg = [x for x in rep.problems if x.kind == "meta-damaged"]
    assert [x.page for x in dmg] == [slot]
    assert "8192" in dmg[0].message
    assert rep.meta_used == 1 - slot
    assert rep.summary["page_size"] == 4096
    assert _cli(p) == 1
    # only a meta page is damaged: the other meta's whole tree must come back
    if which == "newest":
        used = _Layout(base[0], meta=1 - slot)
        res = assert_salvaged(p, tmp_path, used.items, set(), used)
    else:
        res = assert_salvaged(p, tmp_path, original, set(), L)
    assert res.meta_used == 1 - slot


def test_hostile_meta_fields(copy, tmp_path, original):
    """A meta with a huge hwm and a checksum that matches: no crash, no
    huge allocation."""
    p = copy()
    L = _Layout(p)
    for slot_off in (0, 4096):
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
    for leaf in L.leaves[:5]:
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
        f.write(bytes(8192))
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
