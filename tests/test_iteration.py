"""Iterating inside a write transaction while changing it: the iterator
continues after the last key it returned, in key order, so keys inserted
behind it are seen, keys deleted ahead of it are not, and nothing is returned
twice (every backend)."""

import pytest

import kvmap
from conftest import open_db


def _load(db, n=3000):
    db.update({b"k%05d" % i: b"v" * (i % 300) for i in range(n)})


def test_forward_sees_inserts_behind_and_skips_deletes_ahead(tmp_path, cfg):
    with open_db(tmp_path / "db", cfg, sync=False) as db:
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
        db._check()


def test_reverse_deleting_everything(tmp_path, cfg):
    with open_db(tmp_path / "db", cfg, sync=False) as db:
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
        db._check()


def test_iterator_of_a_finished_transaction_raises(tmp_path):
    with kvmap.open(str(tmp_path / "db")) as db:
        _load(db, 100)
        t = db.transaction()
        it = iter(t)
        assert next(it) == b"k00000"
        t.commit()
        with pytest.raises(kvmap.ClosedError):
            next(it)
