"""Opening damaged or foreign files: every case must raise a kvmap.Error
subclass (at open or, for damage only found while reading, on the read) or
open fine where stated -- never crash, never hang, never return wrong data,
and never modify a file that is not a kvmap database.

Every open runs in a child process (run_python) so a SIGSEGV/SIGBUS fails the
test instead of killing pytest.
"""

import hashlib
import os
import random
import struct

import pytest

import kvmap
from conftest import assert_child_ok, make_value, run_python

PS = 4096
META_PAGES = (0, 1, 2)  # the three meta pages (see the engine's file format)

OPEN_CHILD = r"""
import hashlib, os
import kvmap
path, kw, states = ARGS["path"], ARGS["kw"], ARGS["states"]

def fsha():
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

before = fsha()
size_before = os.path.getsize(path) if os.path.exists(path) else None
try:
    db = kvmap.open(path, **kw)
except kvmap.Error as e:
    print("RESULT RAISED", type(e).__name__, repr(e)[:300].replace("\n", " "))
else:
    try:
        got = {}
        n = len(db)
        for k, v in db.items():
            got[k.hex()] = hashlib.sha256(v).hexdigest()
        # point lookups go through a different path than iteration
        for st in states:
            for kh in st:
                v = db.get(bytes.fromhex(kh))
                if v is not None:
                    assert got.get(kh) == hashlib.sha256(v).hexdigest(), "get/iteration disagree " + kh
                else:
                    assert kh not in got, "get/iteration disagree " + kh
    except kvmap.Error as e:
        print("RESULT READ_RAISED", type(e).__name__, repr(e)[:300].replace("\n", " "))
    else:
        match = [i for i, st in enumerate(states) if st == got]
        print("RESULT OPENED", n, "entries")
        assert n == len(got), (n, len(got))
        print("STATE", match[-1] if match else "none")
    db.close()
print("UNCHANGED", fsha() == before)
print("SIZE", size_before, os.path.getsize(path) if os.path.exists(path) else None)
print("DONE")
"""


def try_open(path, states=(), **kw):
    rc, out, err = run_python(OPEN_CHILD, args=dict(path=str(path), kw=kw, states=list(states)), timeout=120)
    assert_child_ok(rc, out, err, "DONE")
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("RESULT", "STATE", "UNCHANGED", "SIZE"):
            res[parts[0]] = parts[1:]
    res["out"] = out
    return res


def assert_raised(res, classes=None):
    """The open or a read raised a kvmap.Error subclass (in `classes` if given)."""
    kind = res["RESULT"][0]
    assert kind in ("RAISED", "READ_RAISED"), res["out"]
    if classes is not None:
        assert res["RESULT"][1] in classes, res["out"]


def assert_open_raised(res, classes=None):
    assert res["RESULT"][0] == "RAISED", res["out"]
    if classes is not None:
        assert res["RESULT"][1] in classes, res["out"]


def _state(d):
    return {k.hex(): hashlib.sha256(v).hexdigest() for k, v in d.items()}


def build_history_db(path):
    """A database with several committed states; returns the list of states
    (state 0 = empty), each a dict hex key -> sha256 of value."""
    states = [{}]
    model = {}
    with kvmap.open(str(path)) as db:
        b = {b"a%04d" % i: make_value(("a", i), 20 + i % 300) for i in range(400)}
        db.update(b)
        model.update(b)
        states.append(_state(model))
        with db.transaction() as t:
            for i in range(0, 400, 4):
                t[b"a%04d" % i] = b"changed-%d" % i
                model[b"a%04d" % i] = b"changed-%d" % i
            for i in range(1, 400, 8):
                del t[b"a%04d" % i]
                del model[b"a%04d" % i]
            for i in range(20):
                t[b"big%02d" % i] = make_value(("big", i), 9000)
                model[b"big%02d" % i] = make_value(("big", i), 9000)
        states.append(_state(model))
        db[b"last"] = b"last-commit"
        model[b"last"] = b"last-commit"
        states.append(_state(model))
    return states


def build_single_txn_db(path):
    """Nearly all pages belong to one big transaction."""
    model = {b"k%05d" % i: make_value(("k", i), 50 + (i * 13) % 400) for i in range(3000)}
    for i in range(30):
        model[b"ov%03d" % i] = make_value(("ov", i), 3 * PS + i)
    with kvmap.open(str(path)) as db:
        db.update(model)
        hw = db.stats()["pages"]
    return [{}, _state(model)], hw


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------
# foreign files


def test_empty_file(tmp_path):
    p = tmp_path / "empty"
    write(p, b"")
    res = try_open(p, states=[{}])
    # ENGINE BEHAVIOUR CHOSEN: a 0-byte existing file with create=True is
    # initialised as a new, empty database.
    assert res["RESULT"][0] == "OPENED", res["out"]
    assert res["STATE"] == ["0"], res["out"]
    # and it is a valid database afterwards
    with kvmap.open(str(p)) as db:
        db[b"x"] = b"y"
    with kvmap.open(str(p)) as db:
        assert dict(db) == {b"x": b"y"}


def test_empty_file_readonly_or_nocreate(tmp_path):
    # ENGINE BEHAVIOUR CHOSEN: without permission to initialise it (readonly,
    # or create=False) a 0-byte file is "not a kvmap database" and stays 0 bytes.
    for kw in (dict(readonly=True), dict(create=False)):
        p = tmp_path / ("empty-%s" % list(kw)[0])
        write(p, b"")
        res = try_open(p, **kw)
        assert_open_raised(res, ("FormatError",))
        assert res["UNCHANGED"] == ["True"], res["out"]
        assert res["SIZE"] == ["0", "0"], res["out"]


@pytest.mark.parametrize("size", [100, 4096, 100 * 1024, 3 * 4096 + 5])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_random_bytes(tmp_path, size, readonly):
    p = tmp_path / "rand"
    write(p, random.Random(size).randbytes(size))
    res = try_open(p, readonly=readonly)
    assert_open_raised(res, ("FormatError",))
    assert res["UNCHANGED"] == ["True"], res["out"]


def test_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    write(p, b"This is a text file, not a database.\n" * 300)
    res = try_open(p)
    assert_open_raised(res, ("FormatError",))
    assert res["UNCHANGED"] == ["True"], res["out"]


def test_zero_filled_file(tmp_path):
    p = tmp_path / "zeros"
    write(p, bytes(8 * PS))
    res = try_open(p)
    assert_open_raised(res, ("FormatError", "CorruptionError"))
    assert res["UNCHANGED"] == ["True"], res["out"]


def test_two_zero_pages_are_an_interrupted_creation(tmp_path):
    # ENGINE BEHAVIOUR CHOSEN: exactly two zero pages (of the page size asked
    # for, 4096 by default) is what a crash leaves when it interrupts the
    # creation of a file after its size, not its metas, reached the disk.
    # It holds nothing: a writable open initialises it, as an empty file;
    # without permission to initialise it stays a FormatError, unchanged.
    for kw, ps in ((dict(), PS), (dict(page_size=16384), 16384)):
        p = tmp_path / ("zeros-%d" % ps)
        write(p, bytes(2 * ps))
        res = try_open(p, states=[{}], **kw)
        assert res["RESULT"][0] == "OPENED" and res["STATE"] == ["0"], res["out"]
        with kvmap.open(str(p), **kw) as db:
            db[b"x"] = b"y"
            assert db.page_size == ps
        for ro in (dict(readonly=True), dict(create=False)):
            q = tmp_path / ("zeros-%d-%s" % (ps, list(ro)[0]))
            write(q, bytes(2 * ps))
            res = try_open(q, **ro, **kw)
            assert_open_raised(res, ("FormatError",))
            assert res["UNCHANGED"] == ["True"], res["out"]
    # two zero pages of another page size than asked for are not that
    p = tmp_path / "zeros-other"
    write(p, bytes(2 * 16384))
    res = try_open(p)
    assert_open_raised(res, ("FormatError", "CorruptionError"))
    assert res["UNCHANGED"] == ["True"], res["out"]


def test_valid_header_random_rest(tmp_path):
    good = tmp_path / "good"
    build_history_db(good)
    data = good.read_bytes()
    rng = random.Random(5)
    for keep in (16, 64, 200):
        p = tmp_path / ("hdr%d" % keep)
        buf = bytearray(rng.randbytes(len(data)))
        for m in META_PAGES:
            buf[m * PS:m * PS + keep] = data[m * PS:m * PS + keep]
        write(p, bytes(buf))
        res = try_open(p)
        assert_open_raised(res)
        assert res["UNCHANGED"] == ["True"], res["out"]


# ---------------------------------------------------------------------------
# truncated databases


def test_truncated_to_half(tmp_path):
    p = tmp_path / "db"
    states, hw = build_single_txn_db(p)
    os.truncate(p, (hw * PS) // 2)
    res = try_open(p, states=states)
    # the committed data is gone: an error at open or while reading, never
    # an empty (or partial) database presented as if nothing happened
    assert_raised(res)


def test_truncated_to_half_readonly(tmp_path):
    p = tmp_path / "db"
    states, hw = build_single_txn_db(p)
    os.truncate(p, (hw * PS) // 2)
    res = try_open(p, states=states, readonly=True)
    assert_raised(res)
    assert res["UNCHANGED"] == ["True"], res["out"]


@pytest.mark.parametrize("size", [PS, 6000, 100, 1])
def test_truncated_below_meta(tmp_path, size):
    p = tmp_path / "db"
    build_history_db(p)
    os.truncate(p, size)
    res = try_open(p, readonly=True)
    assert_raised(res)
    res = try_open(p, states=[{}])
    if size <= 16:
        # ENGINE BEHAVIOUR CHOSEN (issue 9, defect 6): the first 16 bytes of
        # every meta 0 (magic, version, page size) are also a prefix of what
        # creating a file writes; a file that short holds no data either
        # way, and a writable open initialises it as an interrupted creation.
        assert res["RESULT"][0] == "OPENED" and res["STATE"] == ["0"], res["out"]
    else:
        assert_raised(res)


# ---------------------------------------------------------------------------
# meta page damage


def test_one_meta_zeroed(tmp_path):
    """With either meta page zeroed the database opens with the state of the
    other meta (or an older committed state); zeroing the older meta must
    keep the latest state."""
    src = tmp_path / "db"
    states = build_history_db(src)
    data = src.read_bytes()
    found = []
    for m in META_PAGES:
        p = tmp_path / ("meta%d-zeroed" % m)
        buf = bytearray(data)
        buf[m * PS:(m + 1) * PS] = bytes(PS)
        write(p, bytes(buf))
        res = try_open(p, states=states)
        assert res["RESULT"][0] == "OPENED", res["out"]
        assert res["STATE"] != ["none"], "data matches no committed state:\n" + res["out"]
        found.append(int(res["STATE"][0]))
        # and it can be written to and reopened afterwards
        with kvmap.open(str(p)) as db:
            db[b"after-repair"] = b"1"
        with kvmap.open(str(p)) as db:
            assert db[b"after-repair"] == b"1"
            assert len(db) == len(states[found[-1]]) + 1
    assert max(found) == len(states) - 1, found
    assert min(found) >= 1, found  # the other meta is at most one commit older


def test_one_meta_garbled(tmp_path):
    """Random bytes in the middle of one meta page: same expectations."""
    src = tmp_path / "db"
    states = build_history_db(src)
    data = src.read_bytes()
    found = []
    rng = random.Random(3)
    for m in META_PAGES:
        p = tmp_path / ("meta%d-garbled" % m)
        buf = bytearray(data)
        off = m * PS + 24
        buf[off:off + 64] = rng.randbytes(64)
        write(p, bytes(buf))
        res = try_open(p, states=states)
        assert res["RESULT"][0] == "OPENED", res["out"]
        assert res["STATE"] != ["none"], res["out"]
        found.append(int(res["STATE"][0]))
    assert max(found) == len(states) - 1, found


def test_every_meta_zeroed(tmp_path):
    src = tmp_path / "db"
    build_history_db(src)
    buf = bytearray(src.read_bytes())
    for m in META_PAGES:
        buf[m * PS:(m + 1) * PS] = bytes(PS)
    p = tmp_path / "nometa"
    write(p, bytes(buf))
    res = try_open(p)
    assert_open_raised(res, ("FormatError", "CorruptionError"))
    assert res["UNCHANGED"] == ["True"], res["out"]


# meta page layout (native/format.h, docs/FORMAT.md): u32 page size at
# offset 12, crc32c of bytes [0, 124) at offset 124.
M_PAGESIZE = 12
M_CHECKSUM = 124


def _crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _fix_meta_crc(buf, m):
    o = m * PS
    struct.pack_into("<I", buf, o + M_CHECKSUM, _crc32c(bytes(buf[o:o + M_CHECKSUM])))


def test_meta_crc_helper_matches_engine(tmp_path):
    """Sanity check of the test's own crc32c / layout assumptions."""
    src = tmp_path / "db"
    build_history_db(src)
    buf = src.read_bytes()
    for m in META_PAGES:
        o = m * PS
        assert buf[o:o + 8] == b"\x89KVM\r\n\x1a\n"
        assert struct.unpack_from("<I", buf, o + M_PAGESIZE)[0] == PS
        assert struct.unpack_from("<I", buf, o + M_CHECKSUM)[0] == _crc32c(buf[o:o + M_CHECKSUM])


@pytest.mark.parametrize("fix_crc", [False, True], ids=["bad-crc", "valid-crc"])
@pytest.mark.parametrize("new_ps", [8192, 3000, 0, 1 << 30, 2048])
def test_meta_page_size_altered(tmp_path, new_ps, fix_crc):
    src = tmp_path / "db"
    build_history_db(src)
    buf = bytearray(src.read_bytes())
    for m in META_PAGES:
        struct.pack_into("<I", buf, m * PS + M_PAGESIZE, new_ps)
        if fix_crc:
            _fix_meta_crc(buf, m)
    p = tmp_path / "altered"
    write(p, bytes(buf))
    res = try_open(p)
    assert_open_raised(res)
    if fix_crc:
        # a well-formed meta page with the wrong page size: not this format
        assert res["RESULT"][1] in ("FormatError", "CorruptionError"), res["out"]
    assert res["UNCHANGED"] == ["True"], res["out"]
    res = try_open(p, page_size=4096)
    assert_open_raised(res)
    if new_ps == 8192:
        res = try_open(p, page_size=new_ps)
        assert_raised(res)
    res = try_open(p, readonly=True)
    assert_open_raised(res)


def test_meta_page_size_altered_in_one_meta(tmp_path):
    """One meta claims another page size (checksum fixed up): the database
    must not be opened with the wrong geometry; either the other meta is used
    (a committed state) or a kvmap.Error is raised."""
    src = tmp_path / "db"
    states = build_history_db(src)
    data = src.read_bytes()
    for m in META_PAGES:
        buf = bytearray(data)
        struct.pack_into("<I", buf, m * PS + M_PAGESIZE, 8192)
        _fix_meta_crc(buf, m)
        p = tmp_path / ("one-altered-%d" % m)
        write(p, bytes(buf))
        res = try_open(p, states=states)
        if res["RESULT"][0] == "OPENED":
            assert res["STATE"] != ["none"], res["out"]
        else:
            assert_raised(res)


@pytest.mark.parametrize("file_ps,open_ps", [(4096, 8192), (4096, 65536), (8192, 4096), (65536, 16384)])
def test_open_with_other_page_size(tmp_path, file_ps, open_ps):
    p = tmp_path / "db"
    with kvmap.open(str(p), page_size=file_ps) as db:
        db.update({b"k%d" % i: b"v" * i for i in range(100)})
    res = try_open(p, page_size=open_ps)
    assert_open_raised(res, ("FormatError",))
    assert res["UNCHANGED"] == ["True"], res["out"]
    res = try_open(p, page_size=file_ps)
    assert res["RESULT"][0] == "OPENED", res["out"]


# ---------------------------------------------------------------------------
# data page damage


def test_data_pages_corrupted(tmp_path):
    """A byte flipped in the middle of every non-meta page: reads must raise
    a kvmap.Error (CorruptionError: pages carry checksums) or, where the
    flipped byte is unused space, return the right data -- never wrong data."""
    src = tmp_path / "db"
    states = build_history_db(src)
    buf = bytearray(src.read_bytes())
    npages = len(buf) // PS
    for pg in range(npages):
        if pg in META_PAGES:
            continue
        off = pg * PS + PS // 2
        buf[off] ^= 0x5A
    p = tmp_path / "corrupt"
    write(p, bytes(buf))
    res = try_open(p, states=states)
    if res["RESULT"][0] == "OPENED":
        assert res["STATE"] == [str(len(states) - 1)], res["out"]
    else:
        assert_raised(res)


def test_random_page_corrupted_lookups(tmp_path):
    """Scribble over one random page at a time; every lookup either returns
    the right value or raises kvmap.Error."""
    src = tmp_path / "db"
    states, hw = build_single_txn_db(src)
    data = src.read_bytes()
    rng = random.Random(11)
    pages = rng.sample(range(len(META_PAGES), hw), 6)
    code = r"""
import hashlib, kvmap
path, expected = ARGS["path"], ARGS["expected"]
errors = wrong = ok = 0
try:
    db = kvmap.open(path)
except kvmap.Error as e:
    print("OPEN_RAISED", type(e).__name__)
else:
    for kh, hv in expected.items():
        try:
            v = db.get(bytes.fromhex(kh))
        except kvmap.Error:
            errors += 1
            continue
        if v is None or hashlib.sha256(v).hexdigest() != hv:
            wrong += 1
        else:
            ok += 1
    try:
        n = sum(1 for _ in db.items())
    except kvmap.Error:
        errors += 1
    db.close()
print("COUNTS ok=%d errors=%d wrong=%d" % (ok, errors, wrong))
print("DONE")
"""
    detected = 0
    for pg in pages:
        buf = bytearray(data)
        buf[pg * PS + 16:pg * PS + PS - 16] = rng.randbytes(PS - 32)
        p = tmp_path / ("scribbled-%d" % pg)
        write(p, bytes(buf))
        rc, out, err = run_python(code, args=dict(path=str(p), expected=states[1]), timeout=120)
        assert_child_ok(rc, out, err, "DONE")
        assert "wrong=0" in out, "page %d scribbled: wrong data returned\n%s" % (pg, out)
        print("page", pg, out.splitlines()[-2])
        if "OPEN_RAISED" in out or "errors=0" not in out:
            detected += 1
    # nearly every page below the high-water mark is in use: the damage
    # must have been noticed for at least one of them
    assert detected >= 1, pages


def test_garbage_appended_opens_fine(tmp_path):
    """Bytes beyond the used pages (e.g. after a crash during growth) are
    not part of any committed state: the database opens with its data."""
    p = tmp_path / "db"
    states = build_history_db(p)
    with open(p, "ab") as f:
        f.write(random.Random(1).randbytes(1 << 20))
    res = try_open(p, states=states)
    assert res["RESULT"][0] == "OPENED", res["out"]
    assert res["STATE"] == [str(len(states) - 1)], res["out"]


def test_page_from_a_later_transaction(tmp_path):
    """A leaf whose header says a later transaction wrote it than the meta
    that reaches it is what a power loss after sync=False commits leaves when
    a page was reused: readers must refuse it (CorruptionError), not return
    what it holds now.  The leaf's checksum is valid, so only the txnid
    betrays it; the edge paths are left alone so the open succeeds."""
    src = tmp_path / "db"
    states, hw = build_single_txn_db(src)
    buf = bytearray(src.read_bytes())
    txnid = max(struct.unpack_from("<Q", buf, m * PS + 16)[0] for m in META_PAGES)
    leaves = sorted((bytes(buf[pg * PS + struct.unpack_from("<H", buf, pg * PS + 32)[0] + 6:][:6]), pg)
                    for pg in range(2, hw) if buf[pg * PS + 4] == 2)      # PT_LEAF, first key
    _, victim = leaves[len(leaves) // 2]                                  # not on an edge path
    o = victim * PS
    struct.pack_into("<Q", buf, o + 8, txnid + 3)                         # PH_TXNID
    struct.pack_into("<I", buf, o, _crc32c(bytes(buf[o + 4:o + PS])))    # PH_CHECKSUM
    p = tmp_path / "later"
    write(p, bytes(buf))
    code = r"""
import hashlib, kvmap
db = kvmap.open(ARGS["path"])
wrong = errors = 0
messages = set()
for kh, hv in ARGS["expected"].items():
    try:
        v = db.get(bytes.fromhex(kh))
    except kvmap.CorruptionError as e:
        errors += 1
        messages.add(str(e).rsplit(": ", 1)[-1][:20])   # "<path>: page N: <what>"
        continue
    wrong += v is None or hashlib.sha256(v).hexdigest() != hv
db.close()
print("COUNTS", wrong, errors, sorted(messages))
print("DONE")
"""
    rc, out, err = run_python(code, args=dict(path=str(p), expected=states[1]), timeout=120)
    assert_child_ok(rc, out, err, "DONE")
    counts = out.split("COUNTS ")[1].splitlines()[0]
    wrong, errors = map(int, counts.split()[:2])
    assert wrong == 0, out
    assert errors > 0, out
    assert "written by transact" in counts, out



def test_leaf_cell_with_an_empty_key(tmp_path):
    """A leaf cell whose key length reads 0 (keys are never empty; only a
    branch's cell 0 has an empty key) with the page's checksum made valid:
    reads refuse it with CorruptionError, never return an empty key that no
    put could have stored (found by the checker fuzz test, seed 777)."""
    src = tmp_path / "db"
    states, hw = build_single_txn_db(src)
    buf = bytearray(src.read_bytes())
    leaves = [pg for pg in range(2, hw) if buf[pg * PS + 4] == 2]          # PT_LEAF
    o = leaves[len(leaves) // 2] * PS
    cell = struct.unpack_from("<H", buf, o + 32)[0]                       # cell 0's offset
    struct.pack_into("<H", buf, o + cell, 0)                              # its klen
    struct.pack_into("<I", buf, o, _crc32c(bytes(buf[o + 4:o + PS])))    # PH_CHECKSUM
    p = tmp_path / "emptykey"
    write(p, bytes(buf))
    res = try_open(p, states)
    assert_raised(res, ("CorruptionError",))
    assert "empty key" in res["out"], res["out"]

NEWEST_COMMIT_LOST_CHILD = r"""
import os, struct, kvmap
p, sync, seal = ARGS["path"], ARGS["sync"], ARGS["seal"]
r, w = os.pipe()
if os.fork() == 0:                          # the writer; without a seal it never closes
    db = kvmap.open(p, sync=sync, sync_interval=None)
    for t in range(6):
        db.update({b"k%05d" % i: b"v%d" % t * 30 for i in range(t * 300, t * 300 + 3000)})
    db.sync()
    os.write(w, repr((dict(db.items()), db.stats()["txnid"])).encode())
    db.update({b"k%05d" % i: b"new" for i in range(100)})       # the commit the damage hits
    if seal:
        db.close()
    os._exit(0)
os.close(w)
before, txnid = eval(b"".join(iter(lambda: os.read(r, 1 << 20), b"")))
os.wait()
with open(p, "rb") as f:
    data = f.read()
metas = [struct.unpack_from("<QQ", data, s * 4096 + 16)[0:1] + struct.unpack_from("<Q", data, s * 4096 + 96)
         + struct.unpack_from("<Q", data, s * 4096 + 64) for s in range(3)]
newest_txnid, _, record = max(metas)      # (txnid, durable, record): a sealed copy sorts first
assert newest_txnid == txnid + 1 and record
with open(p, "r+b") as f:                  # the commit record's write never reached the disk
    f.seek(record * 4096 + 100)
    f.write(b"\xff" * 8)
if seal:
    try:
        kvmap.open(p)
    except kvmap.CorruptionError:
        print("DONE")
    raise SystemExit
with kvmap.open(p) as db2:
    st = db2.stats()
    assert st["txnid"] == txnid and st["meta_fallback"], st
    assert dict(db2.items()) == before
    db2[b"after"] = b"1"                        # and it writes on from there
with kvmap.open(p) as db2:
    assert db2[b"after"] == b"1" and len(db2) == len(before) + 1
assert kvmap.check(p).ok
print("DONE")
"""


@pytest.mark.parametrize("sync", [False, True], ids=["nosync", "sync"])
def test_newest_commit_lost_opens_the_previous_commit(tmp_path, sync):
    """A power loss during the newest commit's flush (or, with sync=False,
    before any flush) can leave its meta on the disk and one of its pages
    not: open verifies the newest commit's pages against its record, and
    falls back to the durable commit that meta names (FORMAT.md §7); the
    handle writes on from there."""
    rc, out, err = run_python(NEWEST_COMMIT_LOST_CHILD, args=dict(path=str(tmp_path / "db"), sync=sync, seal=False))
    assert_child_ok(rc, out, err, "DONE")


@pytest.mark.parametrize("sync", [False, True], ids=["nosync", "sync"])
def test_sealed_commit_damaged_is_an_error(tmp_path, sync):
    """Once close has sealed the newest commit (its meta copied, saying it is
    durable), the same damage is damage: no fallback."""
    rc, out, err = run_python(NEWEST_COMMIT_LOST_CHILD, args=dict(path=str(tmp_path / "db"), sync=sync, seal=True))
    assert_child_ok(rc, out, err, "DONE")
