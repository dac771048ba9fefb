"""Batch calls against a model: put_many / update (one C call per batch,
applied in key order), on every configuration.

The model is a SortedDict updated pair by pair, in the caller's order: the
batch must give exactly what put() one by one gives, whatever the order,
duplicates, types and size classes of its pairs.
"""

import random

import pytest
from hypothesis import given, settings, strategies as st
from sortedcontainers import SortedDict

import kvmap
import kvmap._lib
import kvmap.txn
from conftest import ALL_CONFIG_PARAMS, open_db

# keys from a small alphabet (duplicates and shared prefixes are likely), up
# to the largest key; values of every size class: empty, inline, just over
# the inline limit (an overflow page), several overflow pages
small_keys = st.lists(st.sampled_from(b"abc\x00\xff"), min_size=1, max_size=3).map(bytes)
any_keys = st.one_of(small_keys, st.binary(min_size=1, max_size=40),
                     st.integers(990, 1000).map(lambda n: b"K" * n))
values = st.one_of(st.binary(max_size=30), st.sampled_from([0, 1, 1100, 5000, 9000]).map(lambda n: b"v" * n))
as_types = st.sampled_from([bytes, bytearray, memoryview, "str"])


def _convert(b, how):
    if how == "str":
        return b.decode("latin-1") if max(b, default=0) < 0x80 else b
    return how(b)


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(before=st.lists(st.tuples(any_keys, values), max_size=20),
       batch=st.lists(st.tuples(any_keys, values, as_types, as_types), max_size=60),
       batch_size=st.sampled_from([1, 3, 4096]))
def test_put_many_matches_put_one_by_one(tmp_path_factory, cfg, before, batch, batch_size):
    path = tmp_path_factory.mktemp("pm") / "db.kv"
    model = SortedDict()
    with open_db(path, cfg) as db:
        db.update(before)
        model.update(before)
        pairs = [(_convert(k, kt), _convert(v, vt)) for k, v, kt, vt in batch]
        old = kvmap.txn.BATCH
        kvmap.txn.BATCH = batch_size
        try:
            with db.transaction() as txn:
                txn.put_many(pairs)
                for k, v, _, _ in batch:
                    model[k] = v
                assert list(txn.items()) == list(model.items())   # seen inside
        finally:
            kvmap.txn.BATCH = old
        assert list(db.items()) == list(model.items())
        db._check()


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_update_large_load_in_random_order(tmp_path, cfg):
    """20,000 pairs, each key twice (the later value wins), into a tree that
    already has data: many batches, splits all over the tree."""
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randint(1, 24)) for _ in range(10_000)]
    pairs = [(k, b"first") for k in keys] + [(k, rng.randbytes(rng.randint(0, 200))) for k in keys]
    rng.shuffle(pairs)
    model = {}
    for k, v in pairs:
        model[k] = v
    with open_db(tmp_path / "db.kv", cfg) as db:
        db.update((b"pre%05d" % i, b"x") for i in range(3000))
        model.update((b"pre%05d" % i, b"x") for i in range(3000))
        db.update(pairs)
        assert len(db) == len(model)
        assert list(db.items()) == sorted(model.items())
        db._check()
    assert kvmap.check(str(tmp_path / "db.kv")).ok


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@pytest.mark.parametrize("seed", [1, 2])
def test_large_batch_sort_ties_and_leaf_reuse(tmp_path, cfg, seed):
    """A batch large enough for the radix sort (btree.c, batch_sort), whose
    keys share their first 8 bytes (ties the prefix sort leaves to a whole
    comparison), differ only by trailing zero bytes (the same zero-padded
    prefix), repeat (the later wins), and replace values of every size class
    in place or not (the kept path of put_hint holds, or ends): the same
    contents as one put at a time, on every configuration."""
    rng = random.Random(seed)
    shared = [b"user:000000:%d" % i for i in range(400)]
    short = [b"a" + b"\x00" * z for z in range(9)] + [b"b", b"\xff" * 8, b"\xff" * 9]
    mixed = [rng.randbytes(rng.randint(1, 24)) for _ in range(400)]
    sizes = [0, 5, 100, 1100, 5000]
    pool = shared + short + mixed
    before = [(k, b"v" * rng.choice(sizes)) for k in rng.sample(pool, 300)]
    batch = [(rng.choice(pool), bytes([n % 251]) * rng.choice(sizes)) for n in range(3000)]
    model = SortedDict(before)
    for k, v in batch:
        model[k] = v
    with open_db(tmp_path / "db.kv", cfg) as db:
        db.update(before)
        db.update(batch)
        assert list(db.items()) == list(model.items())
        db._check()
    assert kvmap.check(str(tmp_path / "db.kv")).ok


# keys of 1 to 12 bytes from bytes at the edges of the unsigned and signed
# ranges: they differ before, at and after byte 8 (btree.c's keycmp compares
# the first 8 bytes as one big-endian number) and are prefixes of each other
head_keys = st.lists(st.sampled_from(b"\x00\x01\x7f\x80\xfe\xff"), min_size=1, max_size=12).map(bytes)


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(keys=st.lists(head_keys, min_size=1, max_size=300, unique=True), probes=st.lists(head_keys, max_size=20))
def test_key_order_across_the_inline_head(tmp_path_factory, cfg, keys, probes):
    """Byte order (memcmp, then the shorter first) for keys that differ
    around their eighth byte: items(), gets, irange and get_many against the
    model, whether the keys came one put at a time or in a batch."""
    path = tmp_path_factory.mktemp("ko") / "db.kv"
    model = SortedDict((k, k[::-1]) for k in keys)
    with open_db(path, cfg) as db:
        with db.transaction() as txn:
            for k in keys[::2]:
                txn.put(k, k[::-1])
            txn.put_many((k, k[::-1]) for k in keys[1::2])
        assert list(db.keys()) == list(model.keys())
        for p in probes + keys[:20]:
            assert db.get(p) == model.get(p)
            assert list(db.irange(p)) == list(model.irange(p))
            assert list(db.irange(maximum=p, inclusive=(True, False))) == list(
                model.irange(maximum=p, inclusive=(True, False)))
        assert db.get_many(probes + keys) == [model.get(p) for p in probes + keys]
        db._check()


def test_put_many_values_larger_than_a_batch_copy(tmp_path, monkeypatch):
    """Values above BATCH_BYTES in total are split into smaller C calls, down
    to one pair; the result is the same."""
    monkeypatch.setattr(kvmap.txn, "BATCH_BYTES", 10_000)
    pairs = [(b"k%02d" % i, bytes([i]) * (3000 + 1000 * i)) for i in range(20)]
    pairs.append((b"k05", b"again"))
    with kvmap.open(tmp_path / "db.kv") as db:
        db.update(pairs)
        assert db[b"k05"] == b"again"
        assert db[b"k19"] == bytes([19]) * 22000
        assert len(db) == 20


@pytest.mark.parametrize("bad, exc", [
    ((b"", b"v"), ValueError),             # empty key
    ((b"x" * 1001, b"v"), ValueError),     # longer than the largest key
    ((b"k", 5), TypeError),                # value of another type
    ((5, b"v"), TypeError),                # key of another type
    ((b"k", b"v", b"extra"), ValueError),  # not a pair
])
def test_put_many_bad_pair_changes_nothing_of_its_batch(tmp_path, bad, exc):
    """A bad pair raises before any pair of its batch is applied: the
    transaction keeps what earlier batches did, and is still usable."""
    with kvmap.open(tmp_path / "db.kv") as db:
        with db.transaction() as txn:
            txn.put_many([(b"a", b"1")])
            with pytest.raises(exc):
                txn.put_many([(b"b", b"2"), bad, (b"c", b"3")])
            assert list(txn.items()) == [(b"a", b"1")]
            txn.put(b"d", b"4")
        assert list(db.items()) == [(b"a", b"1"), (b"d", b"4")]


def test_put_many_after_the_transaction_ended(db):
    txn = db.transaction()
    txn.abort()
    with pytest.raises(kvmap.ClosedError):
        txn.put_many([(b"a", b"1")])
    txn.put_many([])   # nothing to do: no handle needed


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(stored=st.lists(st.tuples(any_keys, values), max_size=40),
       asked=st.lists(any_keys, max_size=80), as_type=as_types)
def test_get_many_matches_the_model(tmp_path_factory, cfg, stored, asked, as_type):
    """Present and missing keys in any order and repetition, values of every
    size class; in the database, a snapshot and a write transaction."""
    model = dict(stored)
    with open_db(tmp_path_factory.mktemp("gm") / "db.kv", cfg) as db:
        db.update(stored)
        ks = [_convert(k, as_type) for k in asked]
        exp = [model.get(k, -1) for k in asked]
        assert db.get_many(ks, default=-1) == exp
        with db.snapshot() as snap:
            assert snap.get_many(iter(ks), default=-1) == exp
        with db.transaction() as txn:
            txn.put(b"new", b"n")
            assert txn.get_many(ks + [b"new"], default=-1) == exp + [b"n"]


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_get_many_across_many_calls(tmp_path, cfg):
    """More values than the thread's buffer holds, more fields than its
    format buffer holds, and values larger than the buffer: C stops at
    either limit and Python goes on where it stopped."""
    rng = random.Random(3)
    with open_db(tmp_path / "db.kv", cfg) as db:
        empties = {b"e%05d" % i: b"" for i in range(6000)}          # "0s" fields: the format fills first
        mediums = {b"m%05d" % i: rng.randbytes(900) for i in range(300)}   # 270 KB: several buffers
        larges = {b"L%d" % i: rng.randbytes(n) for i, n in enumerate([70_000, 1_500_000])}
        model = {**empties, **mediums, **larges}
        db.update(model)
        asked = list(model) + [b"absent%d" % i for i in range(5000)]
        rng.shuffle(asked)
        assert db.get_many(asked) == [model.get(k) for k in asked]
        assert kvmap._lib.buffers.cap == kvmap._lib.buffers.SIZE   # trimmed after the large value


@pytest.mark.parametrize("keys, exc", [
    ([b"a", b""], ValueError),
    ([b"a", b"x" * 1001], ValueError),
    ([b"a", 7], TypeError),
])
def test_get_many_bad_key(db, keys, exc):
    db[b"a"] = b"1"
    with pytest.raises(exc):
        db.get_many(keys)
    assert db.get_many([b"a", "a", bytearray(b"a"), memoryview(b"a")]) == [b"1"] * 4


bounds = st.one_of(st.none(), small_keys, st.just(b""), st.just(b"\xff" * 1200))


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(stored=st.lists(st.tuples(small_keys, values), max_size=40), lo=bounds, hi=bounds,
       inclusive=st.tuples(st.booleans(), st.booleans()), how=st.sampled_from(["txn", "db", "slice"]))
def test_delete_range_matches_the_model(tmp_path_factory, cfg, stored, lo, hi, inclusive, how):
    """Bounds anywhere (absent, empty, between keys, past the largest key,
    lo above hi), inclusive or not; in a transaction that changed the tree
    first, on the database, and as ``del txn[lo:hi]``."""
    model = SortedDict(stored)
    if how == "slice":
        inclusive = (True, False)
    gone = list(model.irange(lo, hi, inclusive))
    with open_db(tmp_path_factory.mktemp("dr") / "db.kv", cfg) as db:
        db.update(stored)
        if how == "db":
            assert db.delete_range(lo, hi, inclusive) == len(gone)
        else:
            with db.transaction() as txn:
                txn.put(b"\x00tmp", b"")      # 4 bytes: never a stored key
                txn.delete(b"\x00tmp")
                if how == "slice":
                    del txn[lo:hi]
                else:
                    assert txn.delete_range(lo, hi, inclusive) == len(gone)
        for k in gone:
            del model[k]
        assert list(db.items()) == list(model.items())
        db._check()


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_delete_range_of_a_large_tree(tmp_path, cfg):
    """Most of 30,000 keys with overflow values among them: leaves merge and
    the tree shrinks while one call deletes; then clear()."""
    rng = random.Random(11)
    model = SortedDict({b"%06d" % i: rng.randbytes(rng.choice([10, 100, 3000])) for i in range(30_000)})
    with open_db(tmp_path / "db.kv", cfg) as db:
        db.update(model.items())
        assert db.delete_range(b"000100", b"029900") == 29_801
        for k in list(model.irange(b"000100", b"029900")):
            del model[k]
        assert list(db.items()) == list(model.items())
        db._check()
        db.clear()
        assert len(db) == 0 and list(db) == []
        db._check()
    assert kvmap.check(str(tmp_path / "db.kv")).ok


def test_delete_range_misuse(tmp_path):
    with kvmap.open(tmp_path / "db.kv") as db:
        db.update({b"a": b"1", b"b": b"2"})
        with db.transaction() as txn:
            with pytest.raises(ValueError, match="no step"):
                del txn[b"a":b"b":2]
            with pytest.raises(TypeError):
                txn.delete_range(5)
            assert len(txn) == 2          # nothing changed, the transaction goes on
        txn = db.transaction()
        txn.abort()
        with pytest.raises(kvmap.ClosedError):
            txn.delete_range()
        with db.snapshot() as snap:
            assert not hasattr(snap, "delete_range")
    with kvmap.open(tmp_path / "db.kv", "r") as db:
        with pytest.raises(kvmap.ReadOnlyError):
            db.delete_range()
