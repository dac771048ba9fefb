"""Iterating inside a write transaction while changing it: the iterator
continues after the last key it returned, in key order, so keys inserted
behind it are seen, keys deleted ahead of it are not, and nothing is returned
twice (every backend)."""

import pytest

import kvmap


@pytest.fixture
def db_options(cfg):
    """conftest's ``db`` fixture in every configuration, commits not synced."""
    return dict(cfg, sync=False)


def _load(db, n=3000):
    db.update({b"k%05d" % i: b"v" * (i % 300) for i in range(n)})


def test_forward_sees_inserts_behind_and_skips_deletes_ahead(db):
    _load(db)
    expected_inserts = set()
    with db.transaction() as t:
        seen = []
        for k in t:
            seen.append(k)
            if k.endswith(b"0") and not k.endswith(b"x"):
                t[k + b"x"] = b"new"                 # right behind k: must be seen
                expected_inserts.add(k + b"x")
            if k.endswith(b"1"):
                del t[k[:-1] + b"3"]                 # ahead of k: must not be seen
        assert seen == sorted(set(seen))
        assert expected_inserts <= set(seen)
        assert not any(k.endswith(b"3") for k in seen)
        assert list(t) == sorted(set(t))
    assert len(db) == 3000 + len(expected_inserts) - 300


def test_reverse_deleting_everything(db):
    _load(db, 2000)
    with db.transaction() as t:
        seen = []
        for k in t.irange(reverse=True):
            seen.append(k)
            del t[k]
            if k.endswith(b"5"):
                t[k[:-1] + b"4x"] = b"n"             # behind in reverse order: seen
        assert seen == sorted(seen, reverse=True)
        assert len(t) == 0
    assert len(db) == 0
    assert len(seen) == 2000 + 200


def test_iterator_of_a_finished_transaction_raises(db):
    _load(db, 100)
    t = db.transaction()
    it = iter(t)
    assert next(it) == b"k00000"
    t.commit()
    with pytest.raises(kvmap.ClosedError):
        next(it)


# ---------------------------------------------------------------------------
# batched scans: every size class, ranges that start, stop and turn inside a
# batch (a snapshot fetches 256 records per C call, in a 64 KiB buffer)

def _size_classes(max_key):
    """(key, value) pairs of every size class: empty values, inline values,
    values just over the inline limit, multi-page overflow values, a value
    over 1 MiB (the scan's large-record path), the largest key."""
    from conftest import make_value
    pairs = {}
    for i in range(700):
        vlen = (0, 1, 100, 1000, 1020, 5000)[i % 6]
        pairs[b"s%04d" % i] = make_value(("s", i), vlen)
    pairs[b"z" * max_key] = make_value("zkey", 50)
    pairs[b"big"] = make_value("big", (1 << 20) + 123)
    return pairs


def test_batched_scans_match_the_model(db):
    model = _size_classes(db.max_key_size)
    db.update(model)
    keys = sorted(model)
    assert list(db) == keys
    assert list(db.items()) == [(k, model[k]) for k in keys]
    assert list(reversed(db)) == keys[::-1]
    assert list(db.values()) == [model[k] for k in keys]
    with db.snapshot() as snap:
        for lo, hi in ((0, 255), (1, 256), (255, 257), (256, 513), (100, 700), (600, len(keys) - 1)):
            lo_k, hi_k = keys[lo], keys[hi]
            assert list(snap.irange(lo_k, hi_k)) == keys[lo:hi + 1]
            assert list(snap.irange_items(lo_k, hi_k, inclusive=(False, False))) == \
                [(k, model[k]) for k in keys[lo + 1:hi]]
            assert list(snap.irange(lo_k, hi_k, reverse=True)) == keys[lo:hi + 1][::-1]
        assert list(snap.prefix(b"s03")) == [k for k in keys if k.startswith(b"s03")]
        assert list(snap.prefix_items(b"s06", reverse=True)) == \
            [(k, model[k]) for k in reversed(keys) if k.startswith(b"s06")]
        it = snap.irange_items()
        first = [next(it) for _ in range(300)]          # stop inside the second batch
        assert first == [(k, model[k]) for k in keys[:300]]
    with db.transaction() as t:                          # one record per batch
        assert list(t.irange_items(keys[250], keys[260])) == [(k, model[k]) for k in keys[250:261]]
    from kvmap._lib import buffers
    assert buffers.cap == buffers.SIZE                   # the large record's buffer went back
