"""Snapshot isolation and thread safety.

(a) a snapshot keeps seeing its data while another thread commits 1,000
    transactions (overwrite / insert / delete), and the new data is visible
    once it is closed;
(b) a reader thread iterating whole snapshots while a writer commits
    "generation" transactions never sees a mixed state;
(c) several reader threads doing db.get / get_many while one writer commits.

Writers use sync=False: durability is irrelevant to isolation and an
fdatasync per commit would only make the tests slower.
"""

import hashlib
import random
import sys
import threading

import pytest

import kvmap
from conftest import configs_by_id, make_value, open_db

JOIN_TIMEOUT = 300  # hang detection only (never a timing assertion)


@pytest.fixture(autouse=True)
def short_switch_interval():
    """cffi releases the GIL around every C call; with CPU-bound reader
    threads each re-acquisition by the writer can wait a full switch
    interval (5 ms), which made these tests take 1-30 s at random.  A short
    interval keeps them fast; it changes no outcome."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(old)


def _start(target, errors, *args):
    def run():
        try:
            target(*args)
        except BaseException as e:  # reported by the test
            import traceback

            errors.append((e, traceback.format_exc()))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _join(threads, errors):
    for th in threads:
        th.join(JOIN_TIMEOUT)
        assert not th.is_alive(), "thread hung"
    assert not errors, "\n".join(tb for _e, tb in errors)



def _race(db, n_commits, reader, rids):
    """Generation 0, then a writer thread committing generations 1 ..
    n_commits while reader(rid, done) runs in a thread for each rid (done:
    set once the writer is finished); failures in any thread fail the test."""
    write_generation(db, 0)
    done = threading.Event()
    errors = []

    def writer():
        try:
            for g in range(1, n_commits + 1):
                write_generation(db, g)
        finally:
            done.set()

    threads = [_start(writer, errors)] + [_start(reader, errors, rid, done) for rid in rids]
    _join(threads, errors)

# ---------------------------------------------------------------------------
# (a)


@pytest.mark.parametrize("cfg", configs_by_id("mmap-reserve", "mmap-mremap", "mmap-remap-wm", "pread"))
def test_snapshot_survives_1000_commits(tmp_path, cfg):
    db = open_db(tmp_path / "db", cfg, sync=False)
    try:
        rng = random.Random(1000)
        base = {}
        for i in range(400):
            n = 9000 if i % 40 == 0 else rng.randint(0, 300)  # some overflow values
            base[b"key%05d" % i] = make_value(("base", i), n)
        db.update(base)
        expected_snapshot = sorted(base.items())
        model = dict(base)
        errors = []

        with db.snapshot() as snap:
            def writer():
                wrng = random.Random(7)
                next_new = 100000
                for c in range(1000):
                    with db.transaction() as t:
                        for _ in range(wrng.randint(1, 4)):
                            op = wrng.random()
                            if op < 0.4 and model:
                                k = wrng.choice(sorted(model))
                                v = make_value(("ow", c, k), wrng.choice([0, 10, 200, 5000]))
                                t[k] = v
                                model[k] = v
                            elif op < 0.75:
                                k = b"key%05d" % next_new if wrng.random() < 0.5 else b"key%05d" % wrng.randint(0, 800)
                                next_new += 1
                                v = make_value(("ins", c, k), wrng.choice([1, 100, 4097]))
                                t[k] = v
                                model[k] = v
                            elif model:
                                k = wrng.choice(sorted(model))
                                del t[k]
                                del model[k]

            th = _start(writer, errors)
            # read the snapshot concurrently while the writer runs
            checks = 0
            while (th.is_alive() and checks < 200) or checks < 2:
                assert list(snap.items()) == expected_snapshot
                checks += 1
            _join([th], errors)

            assert len(snap) == len(base)
            assert list(snap.items()) == expected_snapshot
            assert list(snap.irange(reverse=True)) == sorted(base, reverse=True)
            for k in sorted(base)[::37]:
                assert snap[k] == base[k]
            assert snap.get(b"key100000") is None
            assert snap.get_many([b"key00000", b"key00399"]) == [base[b"key00000"], base[b"key00399"]]
            # the database itself shows the new state
            assert list(db.items()) == sorted(model.items())
            assert model != base
            snap.close()
            with pytest.raises(kvmap.ClosedError):
                snap[b"key00001"]

        # after closing the snapshot its pages may be recycled: keep committing
        assert list(db.items()) == sorted(model.items())
        wrng = random.Random(99)
        for c in range(200):
            with db.transaction() as t:
                k = wrng.choice(sorted(model))
                v = make_value(("after", c), wrng.choice([3, 300, 6000]))
                t[k] = v
                model[k] = v
        assert list(db.items()) == sorted(model.items())
        chk = getattr(db, "_check", None)
        if callable(chk):
            chk()
    finally:
        db.close()
    with open_db(tmp_path / "db", cfg) as db:
        assert list(db.items()) == sorted(model.items())


# ---------------------------------------------------------------------------
# generation data: every committed state has all keys at one generation


NKEYS = 120


def gen_keys(g):
    """The key set of generation g (about 1/5 of the keys absent, varying)."""
    return [b"g-key-%04d" % i for i in range(NKEYS) if (i + g) % 5 != 0]


def gen_value(i, g):
    head = b"%08d:%04d:" % (g, i)
    if (i * 7 + g) % 31 == 0:
        n = 5000  # overflow page (page size 4096)
    else:
        n = 20 + (i + g) % 200
    filler = hashlib.sha256(head).digest() * (n // 32 + 1)
    return head + filler[:n]


def check_value(k, v):
    """Return the generation of value v and check it is well formed for key k."""
    g = int(v[:8])
    i = int(v[9:13])
    assert k == b"g-key-%04d" % i, (k, v[:20])
    assert v == gen_value(i, g), (k, v[:20], len(v))
    return g


def write_generation(db, g):
    with db.transaction() as t:
        present = set(gen_keys(g))
        for i in range(NKEYS):
            k = b"g-key-%04d" % i
            if k in present:
                t[k] = gen_value(i, g)
            else:
                t.pop(k, None)


def check_state(items):
    """items of one snapshot: all values of one generation, key set of that generation."""
    gens = {check_value(k, v) for k, v in items}
    assert len(gens) == 1, sorted(gens)[:10]
    (g,) = gens
    assert [k for k, _ in items] == gen_keys(g)
    return g


def test_reader_sees_consistent_generations(tmp_path, cfg):
    db = open_db(tmp_path / "db", cfg, sync=False)
    try:
        seen = []
        n_commits = 600

        def reader(rid, done):
            rng = random.Random(rid)
            last = -1
            iterations = 0
            while True:
                finished = done.is_set()  # read before the snapshot is taken
                with db.snapshot() as s:
                    mode = rng.randrange(3)
                    if mode == 0:
                        items = list(s.items())
                    elif mode == 1:
                        items = list(s.irange_items(reverse=True))[::-1]
                    else:
                        items = list(s.prefix_items(b"g-key-"))
                    assert len(s) == len(items)
                    g = check_state(items)
                assert g >= last, (g, last)  # snapshots never go back in time
                last = g
                iterations += 1
                if finished and iterations >= 3:
                    break  # this last snapshot started after the final commit
            seen.append((rid, iterations, last))

        _race(db, n_commits, reader, (1, 2))
        assert len(seen) == 2
        for _rid, iterations, last in seen:
            assert iterations >= 3
            assert last == n_commits
        g = check_state(list(db.items()))
        assert g == n_commits
    finally:
        db.close()


def test_threads_get_while_writer_commits(tmp_path, cfg):
    db = open_db(tmp_path / "db", cfg, sync=False)
    try:
        stats = []
        n_commits = 300

        def reader(rid, done):
            rng = random.Random(rid)
            last = -1
            ops = 0
            hits = 0
            while not done.is_set() or ops < 50:
                i = rng.randrange(NKEYS)
                k = b"g-key-%04d" % i
                if rng.random() < 0.2:
                    ks = [b"g-key-%04d" % j for j in rng.sample(range(NKEYS), 10)]
                    vs = db.get_many(ks)
                    gens = set()
                    for kk, vv in zip(ks, vs):
                        if vv is not None:
                            gens.add(check_value(kk, vv))
                    assert len(gens) <= 1, gens  # get_many reads one snapshot
                    if gens:
                        g = gens.pop()
                        present = set(gen_keys(g))
                        for kk, vv in zip(ks, vs):
                            assert (vv is not None) == (kk in present)
                        assert g >= last
                        last = g
                else:
                    v = db.get(k)
                    if v is not None:
                        g = check_value(k, v)
                        assert g >= last, (g, last)  # monotonic reads
                        last = g
                        hits += 1
                ops += 1
            stats.append((rid, ops, hits, last))

        _race(db, n_commits, reader, range(4))
        assert len(stats) == 4
        for _rid, ops, hits, _last in stats:
            assert ops >= 50 and hits > 0
    finally:
        db.close()


def test_many_snapshots_different_ages(tmp_path, cfg):
    """Snapshots opened at different generations each keep their own state."""
    db = open_db(tmp_path / "db", cfg, sync=False)
    snaps = []
    try:
        for g in range(12):
            write_generation(db, g)
            if g % 3 == 0:
                s = db.snapshot()
                s = s.__enter__()
                snaps.append((g, s))
        for g in range(12, 60):
            write_generation(db, g)
        for g, s in snaps:
            assert check_state(list(s.items())) == g
        # close the middle ones first, keep writing, the others stay intact
        for g, s in snaps[1:-1]:
            s.close()
        for g in range(60, 120):
            write_generation(db, g)
        for g, s in (snaps[0], snaps[-1]):
            assert check_state(list(s.items())) == g
        assert check_state(list(db.items())) == 119
    finally:
        for _g, s in snaps:
            try:
                s.close()
            except kvmap.ClosedError:
                pass
        db.close()
