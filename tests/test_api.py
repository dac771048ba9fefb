"""Public API behaviour of kvmap (the MutableMapping, transactions, snapshots,
errors, options), run across every backend configuration where it matters."""

import collections.abc
import random
import threading

import pytest
from sortedcontainers import SortedDict

import kvmap
from kvmap.configurations import open_kwargs
from conftest import (
    CONFIGS,
    CONFIG_IDS,
    DEFAULT_CFG,
    PREAD_CFG,
    configs_by_id,
    make_value,
    open_db,
)

NO_WRITEMAP_PARAMS = [
    pytest.param(dict(c), id=i) for c, i in zip(CONFIGS, CONFIG_IDS) if not c.get("writemap")
]


@pytest.fixture
def db_options(cfg):
    """conftest's ``db`` fixture, in every configuration."""
    return cfg


# ---------------------------------------------------------------------------
# basic mapping behaviour


def test_is_mutable_mapping(db):
    assert isinstance(db, collections.abc.MutableMapping)


def test_set_get_del_contains_len(db):
    assert len(db) == 0
    assert b"a" not in db
    db[b"a"] = b"1"
    db[b"b"] = b"22"
    db[b"c"] = b""
    assert len(db) == 3
    assert db[b"a"] == b"1"
    assert db[b"b"] == b"22"
    assert db[b"c"] == b""
    assert b"a" in db and b"c" in db and b"d" not in db
    db[b"a"] = b"overwritten"
    assert db[b"a"] == b"overwritten"
    assert len(db) == 3
    del db[b"b"]
    assert b"b" not in db
    assert len(db) == 2
    assert db.get(b"b") is None
    assert db.get(b"b", b"dflt") == b"dflt"
    assert db.get(b"a") == b"overwritten"
    assert db.stats()["entries"] == 2


def test_missing_key_raises_keyerror(db):
    db[b"x"] = b"y"
    with pytest.raises(KeyError):
        db[b"nope"]
    with pytest.raises(KeyError):
        del db[b"nope"]
    with pytest.raises(KeyError):
        db[b"x\x00"]
    assert len(db) == 1


def test_mixin_methods(db):
    db[b"k1"] = b"v1"
    db[b"k2"] = b"v2"
    assert db.pop(b"k1") == b"v1"
    assert b"k1" not in db
    assert db.pop(b"missing", None) is None
    with pytest.raises(KeyError):
        db.pop(b"missing")
    assert db.setdefault(b"k3", b"v3") == b"v3"
    assert db.setdefault(b"k3", b"other") == b"v3"
    assert dict(db) == {b"k2": b"v2", b"k3": b"v3"}
    assert db == {b"k2": b"v2", b"k3": b"v3"}
    db.clear()
    assert len(db) == 0
    assert list(db) == []


@pytest.mark.parametrize("bad", [1, None, [1], 1.5, object()], ids=["int", "None", "list", "float", "object"])
def test_wrong_key_type_raises_typeerror(db, bad):
    db[b"ok"] = b"v"
    with pytest.raises(TypeError):
        db[bad] = b"v"
    with pytest.raises(TypeError):
        db[bad]
    with pytest.raises(TypeError):
        del db[bad]
    with db.transaction() as t:
        with pytest.raises(TypeError):
            t[bad] = b"v"
        with pytest.raises(TypeError):
            t.put(bad, b"v")
    assert len(db) == 1
    assert list(db.items()) == [(b"ok", b"v")]


@pytest.mark.parametrize("bad", [1, None, [1], 1.5, object()], ids=["int", "None", "list", "float", "object"])
def test_wrong_value_type_raises_typeerror(db, bad):
    with pytest.raises(TypeError):
        db[b"k"] = bad
    with db.transaction() as t:
        with pytest.raises(TypeError):
            t[b"k"] = bad
        with pytest.raises(TypeError):
            t.put(b"k", bad)
    assert b"k" not in db
    assert len(db) == 0


def test_str_is_utf8(db):
    db["é-key"] = "välue ✓"
    k = "é-key".encode("utf-8")
    assert db[k] == "välue ✓".encode("utf-8")
    assert db["é-key"] == "välue ✓".encode("utf-8")
    assert "é-key" in db
    assert list(db) == [k]
    assert all(type(x) is bytes for x in db)
    del db["é-key"]
    assert len(db) == 0


def test_bytearray_memoryview_accepted_values_are_bytes(db):
    db[bytearray(b"ba")] = bytearray(b"v1")
    db[memoryview(b"mv")] = memoryview(b"v2")
    db[b"sl"] = memoryview(b"xxv3xx")[2:4]
    assert db[b"ba"] == b"v1"
    assert db[memoryview(b"mv")] == b"v2"
    assert db[bytearray(b"sl")] == b"v3"
    for v in db.values():
        assert type(v) is bytes
    for k in db.keys():
        assert type(k) is bytes
    for k, v in db.items():
        assert type(k) is bytes and type(v) is bytes
    assert type(db[b"ba"]) is bytes
    assert type(db.get(b"mv")) is bytes
    # mutating the source buffer after the write must not change stored data
    src = bytearray(b"orig")
    db[b"m"] = src
    src[:] = b"XXXX"
    assert db[b"m"] == b"orig"


def test_empty_and_oversized_key_valueerror(db):
    mk = db.max_key_size
    assert isinstance(mk, int)
    with pytest.raises(ValueError):
        db[b""] = b"v"
    with pytest.raises(ValueError):
        db[""] = b"v"
    with pytest.raises(ValueError):
        db[b"k" * (mk + 1)] = b"v"
    with pytest.raises(ValueError):
        db.update({b"a": b"1", b"x" * (mk + 1): b"2"})
    with db.transaction() as t:
        with pytest.raises(ValueError):
            t.put(b"", b"v")
        with pytest.raises(ValueError):
            t[b"z" * (mk + 1)] = b"v"
    # lookups of impossible keys: a clear error or a miss, never a crash
    with pytest.raises((ValueError, KeyError)):
        db[b""]
    with pytest.raises((ValueError, KeyError)):
        db[b"k" * (mk + 1)]
    assert len(db) == 0
    assert b"a" not in db  # the failed update wrote nothing


def test_max_key_size_works(db):
    mk = db.max_key_size
    assert db.page_size == 4096
    assert mk >= 1000
    keys = [bytes([c]) * mk for c in (0x00, 0x41, 0xFF)]
    for i, k in enumerate(keys):
        db[k] = make_value(i, 10 if i != 1 else 20000)
    db[b"short"] = b"s"
    for i, k in enumerate(keys):
        assert db[k] == make_value(i, 10 if i != 1 else 20000)
    assert list(db) == sorted(keys + [b"short"])
    del db[keys[1]]
    assert keys[1] not in db
    assert len(db) == 3


# ---------------------------------------------------------------------------
# ordering, views, ranges, prefixes


def _random_model(seed, n=600):
    rng = random.Random(seed)
    model = SortedDict()
    alphabet = b"ab\x00\xff\x7f"
    while len(model) < n:
        kind = rng.random()
        if kind < 0.6:
            k = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        elif kind < 0.9:
            k = rng.randbytes(rng.randint(1, 30))
        else:
            k = b"long" + bytes([rng.choice(alphabet)]) * rng.randint(100, 900)
        model[k] = make_value((seed, len(model)), rng.choice([0, 1, 5, 50, 300, 5000]))
    return model


def test_ordered_iteration_and_views(db):
    model = _random_model(1)
    db.update(model.items())
    assert list(db) == list(model.keys())
    assert list(db.keys()) == list(model.keys())
    assert list(db.values()) == list(model.values())
    assert list(db.items()) == list(model.items())
    assert len(db.keys()) == len(model)
    assert len(db.items()) == len(model)
    k0 = model.keys()[17]
    assert k0 in db.keys()
    assert (k0, model[k0]) in db.items()
    assert len(db) == len(model)


def _irange_cases(model, rng):
    keys = list(model.keys())
    bounds = [None, keys[0], keys[-1], keys[len(keys) // 3], keys[2 * len(keys) // 3]]
    # bounds that are not keys
    bounds += [keys[len(keys) // 2] + b"\x00", b"\x00", b"\xff" * 3, b"b", b"a\xff"]
    cases = []
    for lo in bounds:
        for hi in bounds:
            if rng.random() < 0.5 and lo is not None and hi is not None:
                continue
            cases.append((lo, hi))
    return cases


INCLUSIVES = [(True, True), (True, False), (False, True), (False, False)]


def test_irange_all_combinations(db):
    rng = random.Random(7)
    model = _random_model(2, n=400)
    db.update(model.items())
    checked = 0
    for lo, hi in _irange_cases(model, rng):
        for inc in INCLUSIVES:
            for rev in (False, True):
                exp = list(model.irange(lo, hi, inclusive=inc, reverse=rev))
                got = list(db.irange(lo, hi, inclusive=inc, reverse=rev))
                assert got == exp, (lo, hi, inc, rev)
                got_items = list(db.irange_items(lo, hi, inclusive=inc, reverse=rev))
                assert got_items == [(k, model[k]) for k in exp], (lo, hi, inc, rev)
                checked += 1
    assert checked > 100
    # keyword forms and defaults
    assert list(db.irange()) == list(model.keys())
    assert list(db.irange(reverse=True)) == list(reversed(model.keys()))
    mid = model.keys()[200]
    assert list(db.irange(minimum=mid)) == list(model.irange(minimum=mid))
    assert list(db.irange(maximum=mid)) == list(model.irange(maximum=mid))
    assert list(db.irange_items(maximum=mid, reverse=True)) == [
        (k, model[k]) for k in model.irange(maximum=mid, reverse=True)
    ]
    # lo > hi is empty
    assert list(db.irange(model.keys()[-1], model.keys()[0])) == []
    # exact single key with both inclusive / exclusive
    assert list(db.irange(mid, mid)) == [mid]
    assert list(db.irange(mid, mid, inclusive=(False, True))) == []


def test_irange_empty_db(db):
    assert list(db.irange()) == []
    assert list(db.irange(b"a", b"z", reverse=True)) == []
    assert list(db.irange_items(b"a")) == []
    assert list(db.prefix(b"a")) == []


def _prefix_model(model, p):
    return [k for k in model.keys() if k.startswith(p)]


def test_prefix_and_prefix_items(db):
    model = _random_model(3, n=500)
    extra = [b"\xff", b"\xff\xff", b"\xff\xff\x00", b"\xff\xfe", b"a\xff", b"a\xff\xff", b"a\xff\xffz", b"ab"]
    for k in extra:
        model[k] = b"x" + k
    db.update(model)
    prefixes = [b"a", b"ab", b"a\xff", b"a\xff\xff", b"\xff", b"\xff\xff", b"\x00", b"b\x00", b"zz",
                b"long", b"longa", b"\x7f"]
    for p in prefixes:
        exp = _prefix_model(model, p)
        assert list(db.prefix(p)) == exp, p
        assert list(db.prefix(p, reverse=True)) == exp[::-1], p
        assert list(db.prefix_items(p)) == [(k, model[k]) for k in exp], p
        assert list(db.prefix_items(p, reverse=True)) == [(k, model[k]) for k in exp[::-1]], p
    assert list(db.prefix("lo")) == _prefix_model(model, b"lo")


def test_update_is_one_transaction(db):
    db[b"pre"] = b"x"
    t0 = db.stats()["txnid"]
    db.update({b"u%03d" % i: b"v%d" % i for i in range(300)})
    t1 = db.stats()["txnid"]
    assert t1 == t0 + 1
    db.update((b"p%03d" % i, b"w%d" % i) for i in range(100))
    assert db.stats()["txnid"] == t1 + 1
    assert db[b"u123"] == b"v123"
    assert db[b"p099"] == b"w99"
    assert len(db) == 401


def test_update_atomic_on_error(db):
    db[b"keep"] = b"1"

    class Boom(Exception):
        pass

    def gen():
        for i in range(50):
            yield b"g%02d" % i, b"v"
        raise Boom()

    with pytest.raises(Boom):
        db.update(gen())
    assert len(db) == 1
    assert list(db.prefix(b"g")) == []

    def gen_badtype():
        yield b"h1", b"v"
        yield b"h2", 12345

    with pytest.raises(TypeError):
        db.update(gen_badtype())
    assert b"h1" not in db
    assert len(db) == 1


def test_get_many(db):
    db.update({b"a": b"1", b"c": b"3", b"e": b"5"})
    assert db.get_many([b"a", b"b", b"c", b"e", b"zz", b"a"]) == [b"1", None, b"3", b"5", None, b"1"]
    assert db.get_many([]) == []
    assert db.get_many(iter([b"e"])) == [b"5"]
    assert db.get_many(["a", bytearray(b"c")]) == [b"1", b"3"]


def test_stats_keys(db, cfg):
    db[b"a"] = b"b"
    st = db.stats()
    for key in ("entries", "depth", "page_size", "pages", "file_size", "free_pages", "pending_pages",
                "txnid", "backend", "growth", "writemap", "map_base", "map_length", "map_size"):
        assert key in st, key
    assert st["entries"] == 1
    assert st["page_size"] == 4096
    assert st["backend"] == cfg["backend"]
    if cfg["backend"] == "pread":
        assert st["map_base"] == 0
    else:
        assert st["growth"] == cfg["growth"]
        assert bool(st["writemap"]) == cfg["writemap"]
        assert st["map_base"] != 0
    assert st["depth"] >= 1
    assert st["file_size"] >= 2 * 4096


# ---------------------------------------------------------------------------
# transactions


def test_transaction_commit_on_exit(db):
    with db.transaction() as t:
        t[b"a"] = b"1"
        t.put(b"b", b"2")
        t.update({b"c": b"3", b"d": b"4"})
        assert t[b"a"] == b"1"
        assert t.get(b"b") == b"2"
        assert b"c" in t
        assert len(t) == 4
        del t[b"d"]
        assert b"d" not in t
        assert t.pop(b"c") == b"3"
        assert t.pop(b"c", b"gone") == b"gone"
        assert t.delete(b"nope") is False          # py-lmdb's: whether it was there
        with pytest.raises(KeyError):
            del t[b"nope"]
        t[b"gone"] = b"1"
        assert t.delete(b"gone") is True and b"gone" not in t
        with pytest.raises(KeyError):
            t[b"nope"]
        assert list(t) == [b"a", b"b"]
        assert list(t.keys()) == [b"a", b"b"]
        assert list(t.values()) == [b"1", b"2"]
        assert list(t.items()) == [(b"a", b"1"), (b"b", b"2")]
        assert list(t.irange(b"a", b"b", inclusive=(False, True))) == [b"b"]
        assert list(t.irange_items(reverse=True)) == [(b"b", b"2"), (b"a", b"1")]
        assert list(t.prefix(b"a")) == [b"a"]
        assert list(t.prefix_items(b"b")) == [(b"b", b"2")]
        assert t.get_many([b"a", b"c"]) == [b"1", None]
        # not visible outside the transaction from another thread's snapshot
        seen = []
        th = threading.Thread(target=lambda: seen.append(b"a" in db))
        th.start()
        th.join()
        assert seen == [False]
    assert dict(db) == {b"a": b"1", b"b": b"2"}


def test_transaction_abort_on_exception(db):
    db[b"keep"] = b"k"

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with db.transaction() as t:
            t[b"a"] = b"1"
            t[b"keep"] = b"changed"
            for i in range(500):
                t[b"bulk%04d" % i] = make_value(i, 200)
            assert len(t) == 502
            raise Boom()
    assert dict(db) == {b"keep": b"k"}
    assert len(db) == 1
    # writer lock released
    with db.transaction(timeout=10) as t:
        t[b"after"] = b"x"
    assert db[b"after"] == b"x"


def test_explicit_commit_and_use_after_commit(db):
    with db.transaction() as t:
        t[b"a"] = b"1"
        t.commit()
        with pytest.raises(kvmap.ClosedError):
            t[b"b"] = b"2"
        with pytest.raises(kvmap.ClosedError):
            t[b"a"]
        with pytest.raises(kvmap.ClosedError):
            t.get(b"a")
        with pytest.raises(kvmap.ClosedError):
            len(t)
        with pytest.raises(kvmap.ClosedError):
            list(t.items())
        with pytest.raises(kvmap.ClosedError):
            t.commit()
    assert dict(db) == {b"a": b"1"}


def test_explicit_abort_and_use_after_abort(db):
    db[b"x"] = b"0"
    with db.transaction() as t:
        t[b"a"] = b"1"
        del t[b"x"]
        t.abort()
        with pytest.raises(kvmap.ClosedError):
            t[b"b"] = b"2"
        with pytest.raises(kvmap.ClosedError):
            t.delete(b"x")
        with pytest.raises(kvmap.ClosedError):
            b"x" in t
    assert dict(db) == {b"x": b"0"}
    # a new transaction works
    with db.transaction() as t:
        t[b"y"] = b"2"
    assert dict(db) == {b"x": b"0", b"y": b"2"}


def test_nested_write_in_same_thread_raises_locked(db):
    with db.transaction() as t:
        t[b"a"] = b"1"
        with pytest.raises(kvmap.LockedError):
            db[b"b"] = b"2"
        with pytest.raises(kvmap.LockedError):
            with db.transaction() as t2:
                t2[b"c"] = b"3"
    assert dict(db) == {b"a": b"1"}


def test_writer_lock_timeout(db):
    held = threading.Event()
    release = threading.Event()
    errors = []

    def holder():
        try:
            with db.transaction() as t:
                t[b"h"] = b"1"
                held.set()
                release.wait(60)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            held.set()

    th = threading.Thread(target=holder)
    th.start()
    held.wait(60)
    try:
        with pytest.raises(kvmap.LockedError):
            with db.transaction(timeout=0.2) as t:
                t[b"x"] = b"y"
    finally:
        release.set()
        th.join(60)
    assert not errors
    assert dict(db) == {b"h": b"1"}


# ---------------------------------------------------------------------------
# snapshots (basic; concurrency in test_snapshot.py)


def test_snapshot_read_api_and_readonly(db):
    db.update({b"a": b"1", b"b": b"2", b"c": b"3"})
    with db.snapshot() as s:
        db[b"d"] = b"4"
        del db[b"a"]
        assert len(s) == 3
        assert s[b"a"] == b"1"
        assert s.get(b"d") is None
        assert b"d" not in s
        assert list(s) == [b"a", b"b", b"c"]
        assert list(s.irange(b"b")) == [b"b", b"c"]
        assert list(s.irange_items(reverse=True))[0] == (b"c", b"3")
        assert list(s.prefix(b"a")) == [b"a"]
        assert s.get_many([b"a", b"d"]) == [b"1", None]
        with pytest.raises((TypeError, kvmap.ReadOnlyError)):
            s[b"z"] = b"9"
        with pytest.raises((TypeError, kvmap.ReadOnlyError, AttributeError)):
            del s[b"a"]
        s.close()
        with pytest.raises(kvmap.ClosedError):
            s[b"a"]
        with pytest.raises(kvmap.ClosedError):
            len(s)
    assert dict(db) == {b"b": b"2", b"c": b"3", b"d": b"4"}


# ---------------------------------------------------------------------------
# close, readonly, reopen


def test_use_after_close_raises_closed(tmp_path, cfg):
    d = open_db(tmp_path / "db", cfg)
    d[b"a"] = b"1"
    d.close()
    d.close()  # idempotent
    with pytest.raises(kvmap.ClosedError):
        d[b"a"]
    with pytest.raises(kvmap.ClosedError):
        d[b"b"] = b"2"
    with pytest.raises(kvmap.ClosedError):
        del d[b"a"]
    with pytest.raises(kvmap.ClosedError):
        b"a" in d
    with pytest.raises(kvmap.ClosedError):
        len(d)
    with pytest.raises(kvmap.ClosedError):
        list(d)
    with pytest.raises(kvmap.ClosedError):
        with d.transaction() as t:
            t[b"x"] = b"y"
    with pytest.raises(kvmap.ClosedError):
        with d.snapshot() as s:
            s.get(b"a")
    with pytest.raises(kvmap.ClosedError):
        d.get_many([b"a"])


def test_context_manager_closes(tmp_path, cfg):
    with open_db(tmp_path / "db", cfg) as d:
        d[b"a"] = b"1"
    with pytest.raises(kvmap.ClosedError):
        d[b"a"]
    with open_db(tmp_path / "db", cfg) as d:
        assert d[b"a"] == b"1"


@pytest.mark.parametrize("cfg", NO_WRITEMAP_PARAMS)
def test_readonly_rejects_writes(tmp_path, cfg):
    p = tmp_path / "db"
    with open_db(p, cfg) as d:
        d.update({b"a": b"1", b"b": b"2"})
    ro = open_db(p, cfg, readonly=True)
    try:
        assert dict(ro) == {b"a": b"1", b"b": b"2"}
        with pytest.raises(kvmap.ReadOnlyError):
            ro[b"c"] = b"3"
        with pytest.raises(kvmap.ReadOnlyError):
            del ro[b"a"]
        with pytest.raises(kvmap.ReadOnlyError):
            ro.update({b"c": b"3"})
        with pytest.raises(kvmap.ReadOnlyError):
            with ro.transaction() as t:
                t[b"c"] = b"3"
        assert dict(ro) == {b"a": b"1", b"b": b"2"}
        with ro.snapshot() as s:
            assert s[b"a"] == b"1"
    finally:
        ro.close()
    with open_db(p, cfg) as d:
        assert dict(d) == {b"a": b"1", b"b": b"2"}


def test_readonly_missing_file_is_error(tmp_path):
    with pytest.raises((kvmap.Error, OSError)):
        kvmap.open(str(tmp_path / "nope"), readonly=True)
    with pytest.raises((kvmap.Error, OSError)):
        kvmap.open(str(tmp_path / "nope2"), create=False)


def test_reopen_persistence(tmp_path, cfg):
    p = tmp_path / "db"
    model = _random_model(11, n=800)
    with open_db(p, cfg) as d:
        d.update(model)
        del d[model.keys()[5]]
        del model[model.keys()[5]]
        with d.transaction() as t:
            for k in model.keys()[100:150]:
                t[k] = b"changed"
                model[k] = b"changed"
    with open_db(p, cfg) as d:
        assert len(d) == len(model)
        assert list(d.items()) == list(model.items())
        d[b"new"] = b"n"
        model[b"new"] = b"n"
    # reopen with another backend/config: the file format is shared
    for other in (DEFAULT_CFG, PREAD_CFG, open_kwargs("mmap-remap-wm")):
        with open_db(p, other) as d:
            assert list(d.items()) == list(model.items())


# ---------------------------------------------------------------------------
# page sizes


@pytest.mark.parametrize("ps", [8192, 65536])
@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "pread"))
def test_other_page_sizes(tmp_path, cfg, ps):
    p = tmp_path / "db"
    model = {}
    with open_db(p, cfg, page_size=ps) as d:
        assert d.page_size == ps
        assert d.stats()["page_size"] == ps
        mk = d.max_key_size
        assert mk >= 1000
        for i in range(2000):
            model[b"k%06d" % i] = make_value(i, i % 97)
        for i, n in enumerate([ps - 1, ps, ps + 1, 3 * ps + 5, 0, 1]):
            model[b"big%d" % i] = make_value(("big", i), n)
        model[b"K" * mk] = b"maxkey"
        d.update(model)
        with pytest.raises(ValueError):
            d[b"K" * (mk + 1)] = b"x"
        assert dict(d.items()) == model
    with open_db(p, cfg) as d:  # page_size=None: taken from the file
        assert d.page_size == ps
        assert list(d.items()) == sorted(model.items())
    with open_db(p, cfg, page_size=ps) as d:
        assert len(d) == len(model)


@pytest.mark.parametrize("ps", [3000, 2048, 131072, 0, 4095, 4097, -4096])
def test_invalid_page_size(tmp_path, ps):
    with pytest.raises(ValueError):
        kvmap.open(str(tmp_path / "db"), page_size=ps)


def test_page_size_mismatch_format_error(tmp_path):
    p = tmp_path / "db"
    with kvmap.open(str(p)) as d:
        d[b"a"] = b"1"
        assert d.page_size == 4096
    with pytest.raises(kvmap.FormatError):
        kvmap.open(str(p), page_size=8192)
    with pytest.raises(kvmap.FormatError):
        kvmap.open(str(p), page_size=65536)
    with kvmap.open(str(p), page_size=4096) as d:
        assert d[b"a"] == b"1"
    p2 = tmp_path / "db8k"
    with kvmap.open(str(p2), page_size=8192) as d:
        d[b"a"] = b"1"
    with pytest.raises(kvmap.FormatError):
        kvmap.open(str(p2), page_size=4096)
    with kvmap.open(str(p2)) as d:
        assert d[b"a"] == b"1"


def test_bytes_path_errors_name_the_file(tmp_path):
    # open() takes a bytes path (os.fspath); an error that is no errno's
    # used to raise TypeError from building its message
    p = tmp_path / "not-a-db"
    p.write_bytes(b"x" * 8192)
    with pytest.raises(kvmap.FormatError, match=str(p)):
        kvmap.open(bytes(p))
    with kvmap.open(bytes(tmp_path / "db")) as d:
        d[b"a"] = b"1"
        assert d.path == bytes(tmp_path / "db")
    with pytest.raises(kvmap.FormatError, match=str(tmp_path / "db")):
        kvmap.open(bytes(tmp_path / "db"), page_size=8192)
    with kvmap.open(bytes(tmp_path / "db"), "r") as d:
        with pytest.raises(kvmap.ReadOnlyError, match=f"^{tmp_path / 'db'}: "):
            d[b"b"] = b"2"


def test_update_takes_a_key_named_self(db):
    # as dict.update: self is positional-only, so "self" can be a keyword key
    db.update(self=b"1")
    with db.transaction() as txn:
        txn.update({b"a": b"2"}, self=b"3")
    assert dict(db.items()) == {b"a": b"2", b"self": b"3"}


def test_exception_hierarchy():
    assert issubclass(kvmap.Error, Exception)
    for name in ("FormatError", "CorruptionError", "DiskFullError", "MapFullError", "LockedError",
                 "ReadOnlyError", "ClosedError", "ReadersFullError", "IOFailure"):
        cls = getattr(kvmap, name)
        assert issubclass(cls, kvmap.Error), name


# ---------------------------------------------------------------------------
# handles used after their database is closed (in a subprocess: a read
# through an unmapped mapping would crash the interpreter)

AFTER_CLOSE_CHILD = r"""
import kvmap
cfg, path = ARGS["cfg"], ARGS["path"]
db = kvmap.open(path, **cfg)
db.update({b"k%04d" % i: b"v" * (i % 50) + b"%d" % i for i in range(2000)})
db[b"big"] = b"B" * 100000
snap = db.snapshot().__enter__()
it_snap = iter(snap.items())
next(it_snap)
it_db = iter(db.items())
next(it_db)
v_before = snap[b"big"]
txn_it = None
results = []

def attempt(name, fn):
    try:
        fn()
    except kvmap.ClosedError:
        results.append(name + ":ClosedError")
    except Exception as e:
        results.append(name + ":" + type(e).__name__)
    else:
        results.append(name + ":ok")

with db.transaction() as t:
    t[b"t"] = b"1"
    txn_it = iter(t.items())
    next(txn_it)
    t.commit()
attempt("txn_iter_after_commit", lambda: list(txn_it))
db.close()
attempt("snap_get", lambda: snap[b"k0001"])
attempt("snap_iter", lambda: list(it_snap))
attempt("db_iter", lambda: list(it_db))
attempt("snap_len", lambda: len(snap))
attempt("snap_close", lambda: snap.close())
assert v_before == b"B" * 100000   # values are independent copies
print("RESULTS", " ".join(results))
print("AFTER_CLOSE_OK")
"""


def test_handles_after_close_do_not_crash(tmp_path, cfg):
    from conftest import assert_child_ok, run_python

    rc, out, err = run_python(AFTER_CLOSE_CHILD, args=dict(cfg=cfg, path=str(tmp_path / "db")))
    assert_child_ok(rc, out, err, "AFTER_CLOSE_OK")
    line = [l for l in out.splitlines() if l.startswith("RESULTS")][0]
    res = dict(x.split(":") for x in line.split()[1:])
    # finished transaction / closed database: ClosedError, never data from freed memory
    assert res["txn_iter_after_commit"] == "ClosedError", out
    assert res["snap_get"] == "ClosedError", out
    assert res["snap_iter"] == "ClosedError", out
    assert res["db_iter"] == "ClosedError", out
    assert res["snap_len"] == "ClosedError", out
    assert res["snap_close"] in ("ok", "ClosedError"), out


# ---------------------------------------------------------------------------
# put(overwrite=False), setdefault, popitem: one transaction each


def test_put_without_overwrite(tmp_path, cfg):
    with open_db(tmp_path / "db", cfg) as db:
        assert db.put(b"k", b"1") is True
        assert db.put(b"k", b"2", overwrite=False) is False
        assert db[b"k"] == b"1"
        assert db.put(b"k", b"3") is True and db[b"k"] == b"3"
        with db.transaction() as t:
            assert t.put(b"n", b"x", overwrite=False) is True
            assert t.put(b"n", b"y", overwrite=False) is False
            assert t[b"n"] == b"x"


def test_setdefault_and_popitem_are_one_transaction(tmp_path):
    with kvmap.open(str(tmp_path / "db")) as db:
        def commits(fn):
            before = db.stats()["txnid"]
            result = fn()
            return result, db.stats()["txnid"] - before
        assert commits(lambda: db.setdefault(b"a", b"1")) == (b"1", 1)
        assert commits(lambda: db.setdefault(b"a", b"2")) == (b"1", 0)   # present: nothing written
        db[b"b"] = b"2"
        assert commits(db.popitem) == ((b"a", b"1"), 1)                  # the first key in order
        assert commits(db.popitem) == ((b"b", b"2"), 1)
        with pytest.raises(KeyError):
            db.popitem()
        with pytest.raises(TypeError):
            db.setdefault(b"c")                                          # None is no value
        assert b"c" not in db
