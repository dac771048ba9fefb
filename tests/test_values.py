"""Value sizes from 0 bytes to 64 MiB round-trip, also after reopen, for each
backend configuration; large<->small overwrites; key length limits."""

import pytest

from conftest import DEFAULT_CFG, PREAD_CFG, configs_by_id, make_value, open_db, sha

MiB = 1 << 20


def _sizes(ps):
    return [0, 1, 2, 100, ps // 2, ps - 1, ps, ps + 1, 2 * ps - 1, 2 * ps, 2 * ps + 1, 3 * ps + 7, MiB]


def _check(db, expected):
    """expected: key -> (length, sha256 hex)."""
    assert len(db) == len(expected)
    for k, (n, h) in expected.items():
        v = db[k]
        assert type(v) is bytes
        assert len(v) == n, (k, len(v), n)
        assert sha(v) == h, k


def test_value_sizes_roundtrip(tmp_path, cfg):
    p = tmp_path / "db"
    expected = {}
    with open_db(p, cfg) as db:
        ps = db.page_size
        for i, n in enumerate(_sizes(ps)):
            k = b"size-%09d" % n
            v = make_value(("v", n), n)
            db[k] = v
            expected[k] = (n, sha(v))
            # read back immediately
            assert db[k] == v
        # the same, all in one transaction with neighbours
        with db.transaction() as t:
            for n in _sizes(ps):
                k = b"txn-%09d" % n
                v = make_value(("t", n), n)
                t[k] = v
                assert t[k] == v
                expected[k] = (n, sha(v))
        _check(db, expected)
        # iteration yields the full values too
        for k, v in db.items():
            assert (len(v), sha(v)) == expected[k]
    with open_db(p, cfg) as db:
        _check(db, expected)
    # and read back through the other backend
    other = PREAD_CFG if cfg.get("backend") == "mmap" else DEFAULT_CFG
    with open_db(p, other) as db:
        _check(db, expected)


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-remap-wm", "pread"))
def test_64mib_value(tmp_path, cfg):
    p = tmp_path / "db"
    big = make_value("big64", 64 * MiB)
    h = sha(big)
    with open_db(p, cfg) as db:
        db[b"small-before"] = b"s1"
        db[b"big"] = big
        db[b"small-after"] = b"s2"
        v = db[b"big"]
        assert len(v) == len(big) and sha(v) == h
        del v
    del big
    with open_db(p, cfg) as db:
        v = db[b"big"]
        assert len(v) == 64 * MiB and sha(v) == h
        assert db[b"small-before"] == b"s1" and db[b"small-after"] == b"s2"
        assert list(db) == [b"big", b"small-after", b"small-before"]
        # replace it with something small, then delete
        db[b"big"] = b"tiny"
        assert db[b"big"] == b"tiny"
    with open_db(p, cfg) as db:
        assert db[b"big"] == b"tiny"
        del db[b"big"]
        assert len(db) == 2


def test_overwrite_large_small(tmp_path, cfg):
    p = tmp_path / "db"
    with open_db(p, cfg) as db:
        ps = db.page_size
        big1 = make_value("b1", 300 * 1024)
        big2 = make_value("b2", 5 * ps + 3)
        db[b"neighbour-a"] = b"A" * 50
        db[b"x"] = big1
        db[b"neighbour-z"] = b"Z" * 50
        assert db[b"x"] == big1
        db[b"x"] = b"small"                 # large -> small
        assert db[b"x"] == b"small"
        db[b"x"] = big2                     # small -> large
        assert db[b"x"] == big2
        db[b"x"] = big1                     # large -> larger
        assert db[b"x"] == big1
        db[b"x"] = big2                     # larger -> large
        assert db[b"x"] == big2
        db[b"x"] = b""                      # large -> empty
        assert db[b"x"] == b""
        with db.transaction() as t:         # several overwrites in one txn
            t[b"x"] = big1
            t[b"x"] = b"mid" * 100
            t[b"x"] = big2
            assert t[b"x"] == big2
        assert db[b"x"] == big2
        # churn a large value to exercise overflow page recycling
        for i in range(30):
            v = make_value(("churn", i), (i % 5) * 3 * ps + (i % 3))
            db[b"x"] = v
            assert db[b"x"] == v
        last = v
        assert db[b"neighbour-a"] == b"A" * 50 and db[b"neighbour-z"] == b"Z" * 50
    with open_db(p, cfg) as db:
        assert db[b"x"] == last
        assert len(db) == 3


def test_max_key_length(tmp_path, cfg):
    with open_db(tmp_path / "db", cfg) as db:
        mk = db.max_key_size
        assert mk >= 1000
        k1 = b"\x01" * mk
        k2 = b"\x01" * (mk - 1) + b"\x02"
        db[k1] = b"v1"
        db[k2] = make_value("k2", 3 * db.page_size)  # max key with an overflow value
        assert db[k1] == b"v1"
        assert db[k2] == make_value("k2", 3 * db.page_size)
        with pytest.raises(ValueError):
            db[b"\x01" * (mk + 1)] = b"v"
        with pytest.raises(ValueError):
            db["é" * (mk // 2 + 1)] = b"v"  # str whose UTF-8 encoding is too long
        db["é" * (mk // 2)] = b"utf8-max"
        assert db["é" * (mk // 2)] == b"utf8-max"
        assert list(db) == sorted([k1, k2, ("é" * (mk // 2)).encode()])
        # many max-length keys force splits of pages holding huge keys
        with db.transaction() as t:
            for i in range(200):
                t[b"%04d" % i + b"m" * (mk - 4)] = b"%d" % i
        assert len(db) == 203
        for i in range(0, 200, 17):
            assert db[b"%04d" % i + b"m" * (mk - 4)] == b"%d" % i
        assert len(db) == 203
