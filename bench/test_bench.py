"""pytest-benchmark workloads: kvmap (7 backend configurations) vs py-lmdb vs sqlite3.

Run:      python -m pytest bench --benchmark-json /tmp/b.json -q && python bench/report.py /tmp/b.json
Smoke:    python -m pytest bench --benchmark-disable -q      (each benchmark body runs once)

Workloads (one ``benchmark.group`` each; ``extra_info['ops']`` = operations per round):
  (a) random get, hot cache  - all N keys looked up in a fixed shuffled order per round
  (b) bulk load              - N pairs into a fresh store in one transaction, sync off
  (c) ordered scan           - every (key, value) in key order
  (d) small transactions     - 2,000 transactions x 10 puts into a fresh store, sync off
  (e) ordered key scan       - every key in key order (no values)
  (f) batches of 1,000 gets  - the shuffled keys in batches of 1,000, one read transaction each

Timing figures are never asserted; only the results' correctness is checked.
"""

import pytest

from kvbench_common import KVMAP_CONFIG_IDS, PUTS_PER_TXN, ROUNDS, check, kvmap_kwargs

GROUP_GET = "(a) random get, hot cache"
GROUP_BULK = "(b) bulk load, 1 txn, sync off"
GROUP_SCAN = "(c) ordered scan"
GROUP_TXN = "(d) small txns 2000x10 puts, sync off"
GROUP_KEYS = "(e) ordered key scan"
GROUP_BATCH = "(f) batches of 1,000 gets"
BATCH = 1000

SQL_GET = "SELECT v FROM kv WHERE k = ?"
SQL_PUT = "INSERT OR REPLACE INTO kv VALUES (?, ?)"
SQL_SCAN = "SELECT k, v FROM kv ORDER BY k"

GET_CHECK_SAMPLE = 5000  # keys re-read untimed per single-key get path


def rows(kvmap_variants, lmdb_variants, sqlite_variants, lmdb_baseline, sqlite_baseline):
    """pytest params (store, config, variant, baseline) with readable ids; baselines first."""
    out = []
    for v in lmdb_variants:
        out.append(pytest.param("lmdb", None, v, "lmdb" if v == lmdb_baseline else None,
                                id=f"lmdb-{v}"))
    for v in sqlite_variants:
        out.append(pytest.param("sqlite", None, v, "sqlite" if v == sqlite_baseline else None,
                                id=f"sqlite-{v}"))
    for v in kvmap_variants:
        for c in KVMAP_CONFIG_IDS:
            out.append(pytest.param("kvmap", c, v, None, id=f"kvmap-{c}-{v}"))
    return out


def describe(benchmark, group, store, config, variant, baseline, ops, unit, sync=True, **more):
    benchmark.group = group
    info = benchmark.extra_info
    info["ops"] = ops
    info["unit"] = unit
    info["store"] = store
    info["variant"] = variant
    info["sync"] = sync
    if config is not None:
        info["config"] = config
        info["kvmap_open"] = kvmap_kwargs(config, sync)
    if baseline:
        info["baseline"] = baseline
    info.update(more)


# =========================================================================== (a) random get

def kv_snap_get(db, order):
    with db.snapshot() as snap:
        get = snap.get
        for k in order:
            v = get(k)
    return v


def kv_snap_getitem(db, order):
    with db.snapshot() as snap:
        for k in order:
            v = snap[k]
    return v


def kv_db_getitem(db, order):
    for k in order:
        v = db[k]
    return v


def kv_get_many(db, order):
    return db.get_many(order)


def lmdb_txn_get(env, order):
    with env.begin() as txn:
        get = txn.get
        for k in order:
            v = get(k)
    return v


def lmdb_getmulti(env, order):
    with env.begin() as txn:
        return txn.cursor().getmulti(order)


def sqlite_select(conn, order):
    cur = conn.cursor()
    ex = cur.execute
    ex("BEGIN")  # one read transaction per round, like env.begin() / db.snapshot()
    for k in order:
        v = ex(SQL_GET, (k,)).fetchone()[0]
    ex("COMMIT")
    return v


# Untimed twins of the per-key loops above, returning every value (correctness check).
def kv_snap_get_all(db, keys):
    with db.snapshot() as snap:
        return [snap.get(k) for k in keys]


def kv_snap_getitem_all(db, keys):
    with db.snapshot() as snap:
        return [snap[k] for k in keys]


def kv_db_getitem_all(db, keys):
    return [db[k] for k in keys]


def lmdb_txn_get_all(env, keys):
    with env.begin() as txn:
        return [txn.get(k) for k in keys]


def lmdb_getmulti_all(env, keys):
    with env.begin() as txn:
        return [v for _, v in txn.cursor().getmulti(keys)]


def sqlite_select_all(conn, keys):
    return [conn.execute(SQL_GET, (k,)).fetchone()[0] for k in keys]


GET_CHECK = {
    ("kvmap", "snap_get"): kv_snap_get_all,
    ("kvmap", "snap_getitem"): kv_snap_getitem_all,
    ("kvmap", "get_many"): kv_get_many,
    ("kvmap", "db_getitem"): kv_db_getitem_all,
    ("lmdb", "txn_get"): lmdb_txn_get_all,
    ("lmdb", "getmulti"): lmdb_getmulti_all,
    ("sqlite", "select"): sqlite_select_all,
}

GET_FUNCS = {
    ("kvmap", "snap_get"): kv_snap_get,
    ("kvmap", "snap_getitem"): kv_snap_getitem,
    ("kvmap", "get_many"): kv_get_many,
    ("kvmap", "db_getitem"): kv_db_getitem,
    ("lmdb", "txn_get"): lmdb_txn_get,
    ("lmdb", "getmulti"): lmdb_getmulti,
    ("sqlite", "select"): sqlite_select,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["snap_get", "snap_getitem", "get_many", "db_getitem"], ["txn_get", "getmulti"], ["select"],
         lmdb_baseline="txn_get", sqlite_baseline="select"),
)
def test_random_get(benchmark, preloaded, bench_data, store, config, variant, baseline):
    handle = preloaded.get(store, config)
    order = bench_data.get_order
    fn = GET_FUNCS[store, variant]
    describe(benchmark, GROUP_GET, store, config, variant, baseline, ops=len(order), unit="get")
    if (store, config) in preloaded.stats:
        benchmark.extra_info["kvmap_stats"] = preloaded.stats[store, config]

    result = benchmark.pedantic(fn, args=(handle, order), rounds=ROUNDS, warmup_rounds=1, iterations=1)

    # untimed correctness: batch calls are checked in full from the last round's result; the
    # per-key paths on an evenly spaced sample (the preload already verified the full contents)
    if variant == "get_many":
        keys, got = order, result
    elif variant == "getmulti":
        keys, got = order, [v for _, v in result]
    else:
        keys = order[:: max(1, len(order) // GET_CHECK_SAMPLE)] + order[-1:]
        got = GET_CHECK[store, variant](handle, keys)
    want = [bench_data.mapping[k] for k in keys]
    if got != want:
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        check(False, store, config,
              f"{variant}: {len(bad) + abs(len(got) - len(want))} of {len(want)} checked values wrong "
              f"(first at #{bad[0] if bad else min(len(got), len(want))}: "
              f"{got[bad[0]] if bad else None!r:.60})")
    check(all(type(v) is bytes for v in got[:100]), store, config,
          f"{variant} returned {type(got[0]).__name__}, spec says bytes")


# =========================================================================== (b) bulk load

def kv_bulk_update(db, pairs):
    db.update(pairs)


def kv_bulk_txn_put(db, pairs):
    with db.transaction() as txn:
        put = txn.put
        for k, v in pairs:
            put(k, v)


def lmdb_bulk_txn_put(env, pairs):
    with env.begin(write=True) as txn:
        put = txn.put
        for k, v in pairs:
            put(k, v)


def lmdb_bulk_putmulti(env, pairs):
    with env.begin(write=True) as txn:
        txn.cursor().putmulti(pairs)


def sqlite_bulk_executemany(conn, pairs):
    conn.execute("BEGIN")
    conn.executemany(SQL_PUT, pairs)
    conn.execute("COMMIT")


BULK_FUNCS = {
    ("kvmap", "update"): kv_bulk_update,
    ("kvmap", "txn_put"): kv_bulk_txn_put,
    ("lmdb", "txn_put"): lmdb_bulk_txn_put,
    ("lmdb", "putmulti"): lmdb_bulk_putmulti,
    ("sqlite", "executemany"): sqlite_bulk_executemany,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["update", "txn_put"], ["txn_put", "putmulti"], ["executemany"],
         lmdb_baseline="txn_put", sqlite_baseline="executemany"),
)
def test_bulk_load(benchmark, fresh, bench_data, store, config, variant, baseline):
    pairs = bench_data.pairs
    fn = BULK_FUNCS[store, variant]
    setup, teardown = fresh.hooks(store, config, sync=False, expected_entries=len(pairs))
    describe(benchmark, GROUP_BULK, store, config, variant, baseline, ops=len(pairs), unit="put",
             sync=False)

    benchmark.pedantic(lambda h: fn(h, pairs), setup=setup, teardown=teardown,
                       rounds=ROUNDS, iterations=1)
    fresh.finish()
    if fresh.last_round_syscalls is not None:
        benchmark.extra_info["kvmap_syscalls_last_round"] = fresh.last_round_syscalls


# =========================================================================== (c) ordered scan

def kv_scan_items(db):
    n = 0
    for _ in db.items():
        n += 1
    return n


def lmdb_scan_cursor(env):
    n = 0
    with env.begin() as txn:
        for _ in txn.cursor():
            n += 1
    return n


def sqlite_scan_select(conn):
    n = 0
    for _ in conn.execute(SQL_SCAN):
        n += 1
    return n


SCAN_FUNCS = {
    ("kvmap", "items"): kv_scan_items,
    ("lmdb", "cursor"): lmdb_scan_cursor,
    ("sqlite", "select"): sqlite_scan_select,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["items"], ["cursor"], ["select"], lmdb_baseline="cursor", sqlite_baseline="select"),
)
def test_scan(benchmark, preloaded, bench_data, store, config, variant, baseline):
    handle = preloaded.get(store, config)
    fn = SCAN_FUNCS[store, variant]
    describe(benchmark, GROUP_SCAN, store, config, variant, baseline, ops=bench_data.n, unit="item")
    if (store, config) in preloaded.stats:
        benchmark.extra_info["kvmap_stats"] = preloaded.stats[store, config]

    n = benchmark.pedantic(fn, args=(handle,), rounds=ROUNDS, warmup_rounds=1, iterations=1)

    check(n == bench_data.n, store, config, f"scan yielded {n} items, expected {bench_data.n}")


# =========================================================================== (d) small transactions

def kv_txns_put(db, chunks):
    for chunk in chunks:
        with db.transaction() as txn:
            put = txn.put
            for k, v in chunk:
                put(k, v)


def kv_txns_update(db, chunks):
    update = db.update
    for chunk in chunks:
        update(chunk)


def lmdb_txns_put(env, chunks):
    begin = env.begin
    for chunk in chunks:
        with begin(write=True) as txn:
            put = txn.put
            for k, v in chunk:
                put(k, v)


def lmdb_txns_putmulti(env, chunks):
    begin = env.begin
    for chunk in chunks:
        with begin(write=True) as txn:
            txn.cursor().putmulti(chunk)


def sqlite_txns_execute(conn, chunks):
    ex = conn.cursor().execute
    for chunk in chunks:
        ex("BEGIN")
        for k, v in chunk:
            ex(SQL_PUT, (k, v))
        ex("COMMIT")


TXN_FUNCS = {
    ("kvmap", "txn_put"): kv_txns_put,
    ("kvmap", "update"): kv_txns_update,
    ("lmdb", "txn_put"): lmdb_txns_put,
    ("lmdb", "putmulti"): lmdb_txns_putmulti,
    ("sqlite", "execute"): sqlite_txns_execute,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["txn_put", "update"], ["txn_put", "putmulti"], ["execute"],
         lmdb_baseline="txn_put", sqlite_baseline="execute"),
)
def test_small_txns(benchmark, fresh, bench_data, store, config, variant, baseline):
    chunks = bench_data.txn_chunks
    puts = sum(len(c) for c in chunks)
    fn = TXN_FUNCS[store, variant]
    setup, teardown = fresh.hooks(store, config, sync=False, expected_entries=puts)
    describe(benchmark, GROUP_TXN, store, config, variant, baseline, ops=puts, unit="put",
             txns=len(chunks), puts_per_txn=PUTS_PER_TXN, sync=False)

    benchmark.pedantic(lambda h: fn(h, chunks), setup=setup, teardown=teardown,
                       rounds=ROUNDS, iterations=1)
    fresh.finish()
    if fresh.last_round_syscalls is not None:
        benchmark.extra_info["kvmap_syscalls_last_round"] = fresh.last_round_syscalls


# =========================================================================== (e) ordered key scan

def kv_scan_keys(db):
    n = 0
    for _ in db.keys():
        n += 1
    return n


def lmdb_scan_keys(env):
    n = 0
    with env.begin() as txn:
        for _ in txn.cursor().iternext(values=False):
            n += 1
    return n


def sqlite_scan_keys(conn):
    n = 0
    for _ in conn.execute("SELECT k FROM kv ORDER BY k"):
        n += 1
    return n


KEY_SCAN_FUNCS = {
    ("kvmap", "keys"): kv_scan_keys,
    ("lmdb", "iternext_keys"): lmdb_scan_keys,
    ("sqlite", "select_k"): sqlite_scan_keys,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["keys"], ["iternext_keys"], ["select_k"], lmdb_baseline="iternext_keys", sqlite_baseline="select_k"),
)
def test_key_scan(benchmark, preloaded, bench_data, store, config, variant, baseline):
    handle = preloaded.get(store, config)
    describe(benchmark, GROUP_KEYS, store, config, variant, baseline, ops=bench_data.n, unit="key")
    n = benchmark.pedantic(KEY_SCAN_FUNCS[store, variant], args=(handle,), rounds=ROUNDS, warmup_rounds=1,
                           iterations=1)
    check(n == bench_data.n, store, config, f"key scan yielded {n} keys, expected {bench_data.n}")


# =========================================================================== (f) batches of gets

def kv_batches_get_many(db, batches):
    return [db.get_many(b) for b in batches]


def lmdb_batches_txn_get(env, batches):
    out = []
    for b in batches:
        with env.begin() as txn:
            get = txn.get
            out.append([get(k) for k in b])
    return out


def sqlite_batches_select(conn, batches):
    out = []
    ex = conn.execute
    for b in batches:
        ex("BEGIN")
        out.append([ex(SQL_GET, (k,)).fetchone()[0] for k in b])
        ex("COMMIT")
    return out


BATCH_FUNCS = {
    ("kvmap", "get_many"): kv_batches_get_many,
    ("lmdb", "txn_get"): lmdb_batches_txn_get,
    ("sqlite", "select"): sqlite_batches_select,
}


@pytest.mark.parametrize(
    "store,config,variant,baseline",
    rows(["get_many"], ["txn_get"], ["select"], lmdb_baseline="txn_get", sqlite_baseline="select"),
)
def test_batches_of_gets(benchmark, preloaded, bench_data, store, config, variant, baseline):
    handle = preloaded.get(store, config)
    order = bench_data.get_order
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    describe(benchmark, GROUP_BATCH, store, config, variant, baseline, ops=len(order), unit="get")
    got = benchmark.pedantic(BATCH_FUNCS[store, variant], args=(handle, batches), rounds=ROUNDS,
                             warmup_rounds=1, iterations=1)
    check([v for b in got for v in b] == [bench_data.mapping[k] for k in order], store, config,
          f"{variant}: values differ from the data set")
