"""Savepoints of a write transaction (``txn.savepoint()``; native/page.c).

A savepoint's level owns the dirty pages it made; a deeper level copies
them before a change and keeps the ones it frees, so a rollback finds the
tree as it was.  Checked here, on every configuration, against a model
(``SortedDict``): long seeded runs of puts, deletes and range deletes over
trees of several levels with overflow values, nested savepoints rolled back
and released in every order, then the commit (or abort), ``db._check()``
and ``kvmap.check``.  The rule-based test (tests/test_stateful.py) mixes
savepoints into its transactions too.
"""

import copy
import pickle
import random

import pytest
from sortedcontainers import SortedDict

import kvmap
from conftest import ALL_CONFIG_PARAMS, make_value


def _change(txn, model, rng):
    r = rng.random()
    if r < 0.6 or not model:
        k = b"k%05d" % rng.randrange(4000)
        v = make_value(rng.randrange(1 << 30), rng.choice([0, 10, 100, 1500, 5000]))
        txn[k] = v
        model[k] = v
    elif r < 0.95:
        k = model.keys()[rng.randrange(len(model))]
        del txn[k]
        del model[k]
    else:
        i = rng.randrange(len(model))
        lo, hi = model.keys()[i], model.keys()[min(i + rng.randrange(200), len(model) - 1)]
        doomed = list(model.irange(lo, hi))
        assert txn.delete_range(lo, hi) == len(doomed)
        for k in doomed:
            del model[k]


@pytest.mark.parametrize("db_options", ALL_CONFIG_PARAMS)
@pytest.mark.parametrize("seed", [1, 2])
def test_nested_savepoints_against_a_model(db, seed):
    rng = random.Random(seed)
    model = SortedDict()
    for round_ in range(6):
        local = SortedDict(model)
        saved = []      # (savepoint, model then)
        with db.transaction() as txn:
            for step in range(600):
                r = rng.random()
                if r < 0.02 and len(saved) < 6:
                    saved.append((txn.savepoint(), SortedDict(local)))
                elif r < 0.03 and saved:
                    i = rng.randrange(len(saved))
                    sp, then = saved[i]
                    if rng.random() < 0.6:
                        sp.rollback()
                        local = then
                        assert list(txn.items()) == list(local.items())
                    else:
                        sp.release()
                    del saved[i:]
                else:
                    _change(txn, local, rng)
            assert list(txn.items()) == list(local.items())
            if round_ == 4:
                txn.abort()         # every savepoint goes with it
                local = model
        model = local               # a commit keeps what the open savepoints did
        assert list(db.items()) == list(model.items())
        db._check()


def test_savepoint_as_a_block(db):
    with db.transaction() as txn:
        txn[b"a"] = b"1"
        with pytest.raises(RuntimeError):
            with txn.savepoint():
                txn[b"b"] = b"2"
                with txn.savepoint():
                    txn[b"c"] = b"3"
                raise RuntimeError("undo b and c")
        with txn.savepoint():
            txn[b"d"] = b"4"
    assert dict(db.items()) == {b"a": b"1", b"d": b"4"}


def test_ended_savepoints_and_transactions_refuse(db):
    txn = db.transaction()
    outer = txn.savepoint()
    inner = txn.savepoint()
    txn[b"x"] = b"1"
    outer.rollback()                         # ends inner too
    for sp in (outer, inner):
        with pytest.raises(kvmap.ClosedError, match="savepoint is finished"):
            sp.release()
    again = txn.savepoint()                  # the same level number as outer, a new savepoint
    txn[b"y"] = b"2"
    with pytest.raises(kvmap.ClosedError):
        outer.rollback()                     # never ends the new one
    assert "open" in repr(again) and "finished" in repr(outer)
    txn.commit()
    with pytest.raises(kvmap.ClosedError):
        again.rollback()
    assert dict(db.items()) == {b"y": b"2"}


def test_bad_input_keeps_the_savepoint_and_transaction(db):
    with db.transaction() as txn:
        sp = txn.savepoint()
        txn[b"a"] = b"1"
        with pytest.raises(ValueError):
            txn[b""] = b"empty key"
        with pytest.raises(ValueError):
            txn[b"k" * 5000] = b"key too long"
        sp.rollback()
        txn[b"b"] = b"2"
    assert dict(db.items()) == {b"b": b"2"}


def test_savepoints_cannot_be_copied_or_pickled(db):
    with db.transaction() as txn:
        sp = txn.savepoint()
        for f in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot"):
                f(sp)
