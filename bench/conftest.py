"""Fixtures for the kvmap benchmarks (see bench/README.md).

Everything here is shared by bench/test_bench.py:

* ``bench_data``  - the seeded data set, identical for every store in one run;
* ``preloaded``   - one store per configuration, loaded once with all N pairs
                    and reused by the read workloads (random get, scan);
* ``fresh``       - creates an empty store per benchmark round (setup/teardown
                    hooks for ``benchmark.pedantic``) for the write workloads.

Correctness is checked (contents, counts, returned values) so that a broken
engine cannot produce a meaningless fast number, but no timing figure is ever
asserted.

Environment knobs: see kvbench_common.py.
"""

import os
import shutil
import tempfile

import pytest

from kvbench_common import (
    BenchData,
    check,
    close_store,
    count_entries,
    kvmap_syscalls,
    bulk_load,
    open_store,
    require,
    verify_contents,
)


def _new_dir(base, prefix):
    return tempfile.mkdtemp(prefix=prefix, dir=base)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bench_data():
    return BenchData()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    base = os.environ.get("KVMAP_BENCH_DIR")
    if base:
        os.makedirs(base, exist_ok=True)
        d = tempfile.mkdtemp(prefix="kvmap-bench-", dir=base)
    else:
        d = str(tmp_path_factory.mktemp("kvmap-bench"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Preloaded:
    """Lazily opened, fully loaded stores shared by the read workloads of one module."""

    def __init__(self, base, data):
        self.base = base
        self.data = data
        self.handles = {}
        self.failed = {}
        self.stats = {}  # (store, config) -> kvmap stats() excerpt after the preload

    def get(self, store, config=None):
        require(store)
        key = (store, config)
        if key in self.failed:
            pytest.fail(self.failed[key], pytrace=False)
        if key not in self.handles:
            d = _new_dir(self.base, f"pre-{store}-{config or ''}-")
            handle = None
            try:
                handle = open_store(store, config, d, sync=True)
                bulk_load(store, handle, self.data.pairs)
                verify_contents(store, config, handle, self.data)
            except BaseException as exc:
                self.failed[key] = f"preloading {store}[{config}] failed: {exc!r}"
                if handle is not None:
                    try:
                        close_store(store, handle)
                    except Exception:
                        pass
                raise
            self.handles[key] = handle
            if store == "kvmap":
                st = handle.stats()
                self.stats[key] = {k: st.get(k) for k in ("depth", "pages", "file_size", "page_size")}
        return self.handles[key]

    def close(self):
        for (store, _), handle in self.handles.items():
            try:
                close_store(store, handle)
            except Exception:
                pass
        self.handles.clear()


@pytest.fixture(scope="module")
def preloaded(bench_dir, bench_data):
    p = Preloaded(bench_dir, bench_data)
    yield p
    p.close()


class Fresh:
    """setup/teardown pair for ``benchmark.pedantic``: an empty store per round.

    The store is opened in ``setup`` (not timed) and verified, closed and
    deleted in ``teardown`` (not timed).  ``--benchmark-disable`` skips the
    pedantic teardown, so anything still open is cleaned up at fixture exit.
    """

    def __init__(self, base):
        self.base = base
        self.live = {}  # id(handle) -> (store, config, handle, dir, expected_entries)
        self.syscalls_before = {}
        self.last_round_syscalls = None

    def hooks(self, store, config, sync, expected_entries):
        require(store)

        def setup():
            d = _new_dir(self.base, f"fresh-{store}-{config or ''}-")
            handle = open_store(store, config, d, sync=sync)
            self.live[id(handle)] = (store, config, handle, d, expected_entries)
            self.syscalls_before[id(handle)] = kvmap_syscalls(store, handle)
            return (handle,), {}

        def teardown(handle):
            self._verify_and_drop(id(handle))

        return setup, teardown

    def _verify_and_drop(self, key):
        store, config, handle, d, expected = self.live.pop(key)
        before = self.syscalls_before.pop(key, None)
        try:
            after = kvmap_syscalls(store, handle)
            if before is not None and after is not None:
                # syscalls made by the engine during the (last) round: shows e.g. that sync=False
                # really skips fdatasync; recorded in extra_info, never asserted
                self.last_round_syscalls = {k: after[k] - before.get(k, 0) for k in after}
            got = count_entries(store, handle)
            check(got == expected, store, config,
                  f"after the round the store holds {got} entries, expected {expected}")
        finally:
            close_store(store, handle)
            shutil.rmtree(d, ignore_errors=True)

    def finish(self):
        """Call after a successful ``pedantic``: verifies rounds whose teardown did not run
        (``--benchmark-disable`` mode runs one round without teardown)."""
        for key in list(self.live):
            self._verify_and_drop(key)

    def close(self):
        for store, _, handle, d, _ in list(self.live.values()):
            try:
                close_store(store, handle)
            except Exception:
                pass
            shutil.rmtree(d, ignore_errors=True)
        self.live.clear()


@pytest.fixture
def fresh(bench_dir):
    f = Fresh(bench_dir)
    yield f
    f.close()
