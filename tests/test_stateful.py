"""Model-based testing of kvmap against sortedcontainers.SortedDict.

One hypothesis RuleBasedStateMachine, turned into one unittest TestCase per
engine configuration (7) by a factory.  Rules cover single puts/deletes/gets,
range and prefix queries, multi-op transactions that commit or abort, long
lived snapshots checked against the model state captured when they were
opened, reopening the file, bulk inserts (200-500 keys in one transaction)
and bulk range deletes so the tree grows several levels and shrinks again.

If the engine exposes ``db._check()`` (structural invariant checker) it is
called after every step.

Also here: a deterministic test that 20,000 entries make the tree at least 3
levels deep and that deleting almost everything makes it shallow again.
"""

import contextlib
import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sortedcontainers import SortedDict

from conftest import CONFIGS, CONFIG_IDS, DEFAULT_CFG, configs_by_id, make_value, open_db
import kvmap
from kvmap.checker import check

MAX_KEY = 1000  # spec: db.max_key_size == 1000 at page_size 4096

# Hypothesis budget: 7 configs x MAX_EXAMPLES x STEPS.  Deterministic
# (derandomize) and without the example database so every run is the same.
MAX_EXAMPLES = int(os.environ.get("KVMAP_STATEFUL_EXAMPLES", "25"))
STEPS = int(os.environ.get("KVMAP_STATEFUL_STEPS", "100"))

STATEFUL_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

# ---------------------------------------------------------------------------
# strategies

ALPHABET = b"ab\x00\xff"
short_keys = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=4).map(bytes)
medium_keys = st.binary(min_size=1, max_size=40)
long_keys = st.builds(
    lambda head, n, fill: (head + bytes([fill]) * n)[:MAX_KEY],
    short_keys,
    st.integers(100, MAX_KEY),
    st.sampled_from([0x00, 0x61, 0xFF]),
)
# mostly short keys from a small alphabet (lots of collisions), sometimes long
keys = st.one_of(short_keys, short_keys, short_keys, medium_keys, long_keys)

value_sizes = st.one_of(
    st.integers(0, 16),
    st.integers(0, 16),
    st.integers(0, 3000),
    st.sampled_from([4095, 4096, 4097, 9000, 70000]),  # around / above one page: overflow chains
)
values = st.builds(make_value, st.integers(0, 1 << 30), value_sizes)
bounds = st.one_of(st.none(), keys)
inclusives = st.tuples(st.booleans(), st.booleans())

TXN_OP = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("del"), keys),
    st.tuples(st.just("del_existing"), st.integers(0, 1 << 30)),
    st.tuples(st.just("overwrite_existing"), st.integers(0, 1 << 30), values),
    st.tuples(st.just("pop"), keys),
    st.tuples(st.just("get"), keys),
    # savepoints: open one; roll back to / release the i-th open one (and
    # every one inside it); a commit keeps what the open ones did
    st.tuples(st.just("savepoint")),
    st.tuples(st.just("savepoint")),
    st.tuples(st.just("rollback"), st.integers(0, 1 << 30)),
    st.tuples(st.just("release"), st.integers(0, 1 << 30)),
)


class KVMachine(RuleBasedStateMachine):
    CFG = DEFAULT_CFG

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kvmap-stateful-")
        self.path = os.path.join(self.dir, "db")
        self.db = self._open()
        assert self.db.max_key_size >= MAX_KEY
        self.model = SortedDict()
        self.snaps = []  # [(ExitStack, snapshot, list of items at open time)]
        self.step_no = 0

    def _open(self):
        # sync=False: durability is irrelevant to the logic checked here and
        # fdatasync per commit would only slow the search down.
        return open_db(self.path, self.CFG, sync=False)

    def teardown(self):
        for stack, _s, _items in self.snaps:
            with contextlib.suppress(Exception):
                stack.close()
        self.snaps = []
        try:
            stats = self.db.stats()
            self.db.close()
            # the integrity checker agrees with the engine on the file the run left
            rep = check(self.path)
            assert rep.ok, rep.problems[:5]
            assert rep.summary["entries"] == stats["entries"] == len(self.model)
            assert rep.summary["depth"] == stats["depth"]
            assert rep.summary["hwm"] == stats["pages"]
        finally:
            with contextlib.suppress(Exception):
                self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------

    def _existing(self, data):
        i = data.draw(st.integers(0, len(self.model) - 1), label="index")
        return self.model.keys()[i]

    # -- single operations ---------------------------------------------

    @rule(k=keys, v=values)
    def put_any(self, k, v):
        self.db[k] = v
        self.model[k] = v

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), v=values)
    def overwrite_existing(self, data, v):
        k = self._existing(data)
        self.db[k] = v
        self.model[k] = v
        assert self.db[k] == v

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def delete_existing(self, data):
        k = self._existing(data)
        del self.db[k]
        del self.model[k]
        assert k not in self.db

    @rule(k=keys)
    def delete_missing(self, k):
        assume(k not in self.model)
        with pytest.raises(KeyError):
            del self.db[k]

    @rule(k=keys)
    def get(self, k):
        assert self.db.get(k) == self.model.get(k)
        if k in self.model:
            assert self.db[k] == self.model[k]
        else:
            with pytest.raises(KeyError):
                self.db[k]

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def get_existing(self, data):
        k = self._existing(data)
        assert self.db[k] == self.model[k]

    @rule(k=keys)
    def contains(self, k):
        assert (k in self.db) == (k in self.model)

    @rule(ks=st.lists(keys, max_size=8))
    def get_many(self, ks):
        assert self.db.get_many(ks) == [self.model.get(k) for k in ks]

    # -- queries ---------------------------------------------------------

    @rule(lo=bounds, hi=bounds, inc=inclusives, rev=st.booleans(), items=st.booleans())
    def range_query(self, lo, hi, inc, rev, items):
        exp = list(self.model.irange(lo, hi, inclusive=inc, reverse=rev))
        if items:
            got = list(self.db.irange_items(lo, hi, inclusive=inc, reverse=rev))
            assert got == [(k, self.model[k]) for k in exp]
        else:
            got = list(self.db.irange(lo, hi, inclusive=inc, reverse=rev))
            assert got == exp

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), inc=inclusives, rev=st.booleans())
    def range_query_existing_bounds(self, data, inc, rev):
        a, b = sorted([self._existing(data), self._existing(data)])
        exp = list(self.model.irange(a, b, inclusive=inc, reverse=rev))
        assert list(self.db.irange(a, b, inclusive=inc, reverse=rev)) == exp

    @rule(p=st.one_of(short_keys, st.binary(min_size=1, max_size=3)), rev=st.booleans(), items=st.booleans())
    def prefix_query(self, p, rev, items):
        exp = [k for k in self.model.irange(minimum=p) if k.startswith(p)]
        # irange from p is ascending; stop scanning isn't needed for correctness
        exp = [k for k in exp]
        if rev:
            exp.reverse()
        if items:
            assert list(self.db.prefix_items(p, reverse=rev)) == [(k, self.model[k]) for k in exp]
        else:
            assert list(self.db.prefix(p, reverse=rev)) == exp

    # -- transactions ----------------------------------------------------

    @rule(ops=st.lists(TXN_OP, min_size=1, max_size=16),
          end=st.sampled_from(["commit_exit", "commit_explicit", "abort_exception", "abort_explicit"]))
    def transaction(self, ops, end):
        local = SortedDict(self.model)

        class Abort(Exception):
            pass

        saved = []    # (savepoint, the model when it was taken), outermost first
        try:
            with self.db.transaction() as t:
                for op in ops:
                    kind = op[0]
                    if kind == "savepoint":
                        saved.append((t.savepoint(), SortedDict(local)))
                    elif kind in ("rollback", "release") and saved:
                        i = op[1] % len(saved)
                        sp, then = saved[i]
                        if kind == "rollback":
                            sp.rollback()
                            local = then
                            if len(local) < 3000:
                                assert list(t.items()) == list(local.items())
                        else:
                            sp.release()
                        for ended, _ in saved[i:]:
                            with pytest.raises(kvmap.ClosedError):
                                ended.release()
                        del saved[i:]
                    elif kind == "put":
                        t[op[1]] = op[2]
                        local[op[1]] = op[2]
                    elif kind == "del":
                        assert t.delete(op[1]) is (op[1] in local)
                        local.pop(op[1], None)
                    elif kind == "del_existing":
                        if local:
                            k = local.keys()[op[1] % len(local)]
                            del t[k]
                            del local[k]
                    elif kind == "overwrite_existing":
                        if local:
                            k = local.keys()[op[1] % len(local)]
                            t.put(k, op[2])
                            local[k] = op[2]
                    elif kind == "pop":
                        assert t.pop(op[1], None) == local.pop(op[1], None)
                    elif kind == "get":
                        assert t.get(op[1]) == local.get(op[1])
                # the transaction sees its own writes
                assert len(t) == len(local)
                if len(local) < 3000:
                    assert list(t.keys()) == list(local.keys())
                if end == "commit_explicit":
                    t.commit()
                elif end == "abort_explicit":
                    t.abort()
                elif end == "abort_exception":
                    raise Abort()
        except Abort:
            pass
        if end.startswith("commit"):
            self.model = local

    # -- snapshots -------------------------------------------------------

    @precondition(lambda self: len(self.snaps) < 3)
    @rule()
    def open_snapshot(self):
        stack = contextlib.ExitStack()
        s = stack.enter_context(self.db.snapshot())
        self.snaps.append((stack, s, list(self.model.items())))

    def _verify_snapshot(self, s, items):
        assert len(s) == len(items)
        assert list(s.items()) == items
        if items:
            k, v = items[len(items) // 2]
            assert s[k] == v
            assert list(s.irange(k, reverse=True)) == [kk for kk, _ in reversed(items) if kk >= k]

    @precondition(lambda self: len(self.snaps) > 0)
    @rule(data=st.data())
    def check_and_close_snapshot(self, data):
        i = data.draw(st.integers(0, len(self.snaps) - 1), label="snapshot")
        stack, s, items = self.snaps.pop(i)
        self._verify_snapshot(s, items)
        stack.close()

    # -- reopen ----------------------------------------------------------

    @rule()
    def reopen(self):
        for stack, s, items in self.snaps:
            self._verify_snapshot(s, items)
            stack.close()
        self.snaps = []
        self.db.close()
        self.db = self._open()
        assert len(self.db) == len(self.model)

    # -- bulk ------------------------------------------------------------

    @rule(n=st.integers(200, 500), seed=st.integers(0, 1 << 30), long=st.booleans(), via_update=st.booleans())
    def bulk_insert(self, n, seed, long, via_update):
        rng = random.Random(seed)
        pairs = []
        for _ in range(n):
            if long:
                k = b"L" + rng.randbytes(rng.randint(100, 400))
            else:
                k = rng.randbytes(rng.randint(1, 12))
            pairs.append((k, rng.randbytes(rng.randint(0, 100))))
        if via_update:
            self.db.update(pairs)
        else:
            with self.db.transaction() as t:
                for k, v in pairs:
                    t[k] = v
        for k, v in pairs:
            self.model[k] = v

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), span=st.integers(1, 800), how=st.sampled_from(["irange", "keys", "delete_range"]))
    def bulk_delete_range(self, data, span, how):
        i = self._existing(data)
        start = self.model.index(i)
        victims = list(self.model.keys()[start:start + span])
        with self.db.transaction() as t:
            if how == "delete_range":
                assert t.delete_range(victims[0], victims[-1]) == len(victims)
            else:
                if how == "irange":
                    got = list(t.irange(victims[0], victims[-1]))
                    assert got == victims
                for k in victims:
                    del t[k]
        for k in victims:
            del self.model[k]

    # -- invariants ------------------------------------------------------

    @invariant()
    def consistent(self):
        self.step_no += 1
        assert len(self.db) == len(self.model)
        if self.step_no % 8 == 0:
            assert list(self.db.items()) == list(self.model.items())
        chk = getattr(self.db, "_check", None)
        if callable(chk):
            chk()


def make_stateful_case(cfg, cid):
    machine = type("KVMachine_" + cid.replace("-", "_"), (KVMachine,), {"CFG": dict(cfg)})
    case = machine.TestCase
    case.settings = STATEFUL_SETTINGS
    return case


for _cfg, _cid in zip(CONFIGS, CONFIG_IDS):
    globals()["TestStateful_" + _cid.replace("-", "_")] = make_stateful_case(_cfg, _cid)
del _cfg, _cid


# ---------------------------------------------------------------------------
# deterministic depth test: tree grows to >= 3 levels and shrinks again


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "pread"))
def test_depth_grows_and_shrinks(tmp_path, cfg):
    # 500-byte random keys: at most ~7 entries per 4 KiB leaf, so 20,000
    # entries need > 2,800 leaves; even with 2-byte (suffix-truncated)
    # separators a single branch page cannot index them -> depth >= 3.
    rng = random.Random(20000)
    db = open_db(tmp_path / "db", cfg, sync=False)
    try:
        model = {}
        while len(model) < 20000:
            model[rng.randbytes(500)] = rng.randbytes(20)
        items = list(model.items())
        for i in range(0, len(items), 2000):
            db.update(items[i:i + 2000])
        assert len(db) == 20000
        st = db.stats()
        peak = st["depth"]
        print("depth after 20000 inserts:", peak, "pages:", st["pages"])
        assert peak >= 3, st
        chk = getattr(db, "_check", None)
        if callable(chk):
            chk()
        # delete all but 5 entries, in random order, in many transactions
        keys = sorted(model)
        keep = set(rng.sample(keys, 5))
        victims = [k for k in keys if k not in keep]
        rng.shuffle(victims)
        for i in range(0, len(victims), 500):
            with db.transaction() as t:
                for k in victims[i:i + 500]:
                    del t[k]
        assert len(db) == 5
        st2 = db.stats()
        print("depth after deleting down to 5:", st2["depth"])
        assert st2["depth"] < peak, (peak, st2)
        assert st2["depth"] <= 2, st2
        assert list(db.items()) == sorted((k, model[k]) for k in keep)
        if callable(chk):
            chk()
        # and everything
        with db.transaction() as t:
            for k in keep:
                del t[k]
        assert len(db) == 0
        assert db.stats()["depth"] <= 1
        assert list(db) == []
        # it grows again fine after being emptied
        db.update(items[:3000])
        assert list(db.items()) == sorted(items[:3000])
    finally:
        db.close()
    with open_db(tmp_path / "db", cfg) as db:
        assert list(db.items()) == sorted(items[:3000])
