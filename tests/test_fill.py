"""How full the B+tree's leaves are, and that sharing cells with neighbours
(btree.c: spread) keeps every invariant.

A full leaf that takes a cell first gives cells to its neighbours under the
same parent, or is cut with them into one page more, before it splits on its
own (docs/ARCHITECTURE.md §3).  The fill is measured from the file by the
checker (kvmap.check walks the pages in Python; its ``fill_factor`` is the
bytes of the leaves' cells and cell offsets over the bytes the leaves have
for them), not by the engine.
"""

import random

import pytest

import kvmap
from conftest import ALL_CONFIG_PARAMS, DEFAULT_CFG, open_db

KEY, VALUE = 16, 100
CELL = 2 + 6 + KEY + VALUE          # offset, cell header, key, value
PER_LEAF = (4096 - 32) // CELL       # 32 such entries fill a 4 KiB leaf


def pairs(n, seed):
    r = random.Random(seed)
    return [(r.randbytes(KEY), r.randbytes(VALUE)) for _ in range(n)]


def load(path, items, per_txn=None):
    """items in the order given, one transaction (or per_txn puts each)."""
    with open_db(path, DEFAULT_CFG, sync=False) as db:
        step = per_txn or len(items)
        for s in range(0, len(items), step):
            with db.transaction() as t:
                for k, v in items[s:s + step]:
                    t.put(k, v)


def leaf_figures(path):
    rep = kvmap.check(str(path))
    assert rep.ok, rep.problems
    s = rep.summary
    return s["fill_factor"], s["entries"] / s["pages_by_type"]["leaf"]


@pytest.mark.parametrize("per_txn", [None, 10], ids=["one-txn", "txns-of-10"])
def test_random_order_inserts_leave_leaves_packed(tmp_path, per_txn):
    """30,000 random-order inserts: leaves at least 85% full on average
    (split on their own, this load left them 0.68 full: 22.1 entries), in
    one transaction as in many small ones, where the neighbours a leaf
    shares with are committed pages, copied first."""
    items = pairs(30000, seed=5)
    load(tmp_path / "db", items, per_txn)
    fill, per_leaf = leaf_figures(tmp_path / "db")
    assert fill >= 0.85, (fill, per_leaf)


def test_key_order_load_keeps_leaves_full(tmp_path):
    """Inserts in key order fill each leaf and start the next (the append at
    the end of the last child splits on its own): every leaf but the last
    holds 32 entries."""
    items = sorted(pairs(30000, seed=6))
    load(tmp_path / "db", items)
    fill, per_leaf = leaf_figures(tmp_path / "db")
    leaves = -(-len(items) // PER_LEAF)
    assert per_leaf == len(items) / leaves, (per_leaf, leaves)
    assert fill >= 0.97, fill


def _key(r):
    """Keys of 1 to 600 bytes over a small alphabet with shared prefixes, so
    that separators change length when cells move between leaves, and long
    ones fill branch pages (spread declines when the parent cannot take a
    longer separator)."""
    head = bytes(r.choice(b"abc") for _ in range(r.randint(1, 6)))
    return head + bytes([r.choice(b"xyz")]) * r.choice((0, 0, 0, 10, 40, 200, 590))


def _value(r):
    return r.randbytes(r.choice((0, 5, 40, 120, 300, 700, 1500, 5000)))


@pytest.mark.parametrize("cfg", ALL_CONFIG_PARAMS)
def test_spread_against_a_model(tmp_path, cfg):
    """Puts, overwrites and deletes of keys and values of many sizes, in
    small and large transactions, some of them rolled back to a savepoint
    or aborted, with a snapshot kept open across commits: after every
    transaction the database equals a dict model, the snapshot still reads
    the state it was opened on (a neighbour changed in place instead of
    copied would show), and the file checks sound."""
    r = random.Random(7)
    model = {}
    p = tmp_path / "db"
    with open_db(p, cfg, sync=False) as db:
        snap, snap_items = None, None
        for round_ in range(40):
            size = r.choice((1, 10, 50, 400))
            with db.transaction() as t:
                expect = dict(model)
                for _ in range(size):
                    op = r.random()
                    if op < 0.75 or not expect:
                        k, v = _key(r), _value(r)
                        t[k] = expect[k] = v
                    else:
                        k = r.choice(sorted(expect))
                        del t[k]
                        del expect[k]
                if round_ % 5 == 1:   # more inserts under a savepoint, rolled back
                    with pytest.raises(ZeroDivisionError):
                        with t.savepoint():
                            for _ in range(200):
                                t[_key(r)] = _value(r)
                            1 / 0
                elif round_ % 5 == 3:   # and kept
                    with t.savepoint():
                        for _ in range(200):
                            k, v = _key(r), _value(r)
                            t[k] = expect[k] = v
                if round_ % 7 == 3:
                    t.abort()
                else:
                    model = expect
            assert dict(db.items()) == model
            if snap is not None:
                assert dict(snap.items()) == snap_items
                snap.close()
            snap, snap_items = db.snapshot(), dict(model)
            db._check()
        snap.close()
    rep = kvmap.check(str(p))
    assert rep.ok, rep.problems
    assert rep.summary["entries"] == len(model)
