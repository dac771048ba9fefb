"""Shared fixtures and helpers for the kvmap test suite.

* ``CONFIGS`` / the ``cfg`` fixture: every backend configuration the engine
  supports (6 mmap variants + pread = 7, from ``kvmap.configurations``),
  with their names as ids, such as ``mmap-reserve-wm``.
* ``open_db(path, cfg, **kw)``: ``kvmap.open`` with a config merged with
  per-call options.
* the ``db`` fixture: a database at ``db_path`` opened with ``db_options``
  (the default configuration unless a test or module says otherwise),
  checked by ``db._check()`` and ``kvmap.check`` at teardown.
* ``run_python(code, timeout=..., args=...)``: run a code string in a fresh
  interpreter so that a SIGSEGV/SIGBUS in the engine fails one test instead of
  killing pytest.
* ``make_value(seed, n)``: deterministic pseudo-random bytes.
* ``mounted_tmpfs(where, size)``: a size-limited tmpfs for a test (root only).
"""

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap

import pytest

import kvmap
from kvmap.configurations import CONFIGURATIONS, DEFAULT, name_of, open_kwargs

# ---------------------------------------------------------------------------
# configurations: kvmap.configurations names them; here as the tests use them

CONFIG_IDS = list(CONFIGURATIONS)
CONFIGS = [open_kwargs(name) for name in CONFIG_IDS]
config_id = name_of

# the default configuration (what kvmap.open() gives without options)
DEFAULT_CFG = open_kwargs(DEFAULT)
PREAD_CFG = open_kwargs("pread")


def configs_by_id(*ids):
    """pytest.param list restricted to the given config ids (keeps the ids)."""
    out = []
    for c, i in zip(CONFIGS, CONFIG_IDS):
        if i in ids:
            out.append(pytest.param(dict(c), id=i))
    assert len(out) == len(ids), (ids, CONFIG_IDS)
    return out


ALL_CONFIG_PARAMS = [pytest.param(dict(c), id=i) for c, i in zip(CONFIGS, CONFIG_IDS)]


@pytest.fixture(params=CONFIGS, ids=CONFIG_IDS)
def cfg(request):
    """One engine configuration (a fresh dict each time)."""
    return dict(request.param)


def open_db(path, cfg=None, **kw):
    """kvmap.open(path, **cfg, **kw); keyword arguments override the config."""
    opts = dict(cfg or {})
    opts.update(kw)
    return kvmap.open(str(path), **opts)


@pytest.fixture
def db_options():
    """The ``kvmap.open`` keyword arguments of the ``db`` fixture: the
    default configuration.  A test parametrizes it
    (``@pytest.mark.parametrize("db_options", ALL_CONFIG_PARAMS)``), or a
    module overrides this fixture (``def db_options(cfg): return cfg`` runs
    each of its tests in every configuration)."""
    return dict(DEFAULT_CFG)


@pytest.fixture
def db_path(tmp_path):
    """Where the ``db`` fixture's database is."""
    return tmp_path / "db"


@pytest.fixture
def db(db_path, db_options):
    """A database opened at ``db_path`` with ``db_options``.  At teardown,
    while it is still open, it must be sound to the engine (``db._check()``,
    unless the test closed it) and to the checker (``kvmap.check``: what the
    test left on disk), then it is closed."""
    handle = open_db(db_path, db_options)
    try:
        yield handle
        try:
            handle._check()
        except kvmap.ClosedError:
            pass    # the test closed it: the file is checked all the same
        report = kvmap.check(str(db_path))
        assert report.ok, report.to_json(indent=1)
    finally:
        handle.close()


# ---------------------------------------------------------------------------
# deterministic data


def make_value(seed, n):
    """n deterministic pseudo-random bytes derived from seed (int, str, bytes
    or a tuple of those)."""
    if n == 0:
        return b""
    if not isinstance(seed, (int, str, bytes)):
        seed = repr(seed)
    return random.Random(seed).randbytes(n)


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------
# subprocesses

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(code, timeout=180, args=None, cwd=None):
    """Run ``code`` with ``sys.executable -c`` in a fresh process.

    ``args`` (JSON-serialisable) is available to the code as the global
    ``ARGS``; the tests directory is on sys.path so the child can
    ``from conftest import make_value`` etc.  Faulthandler is enabled so a
    crash prints a traceback on stderr.

    Returns (returncode, stdout, stderr).  On timeout the child is killed and
    returncode is None (stderr says TIMEOUT), which every caller treats as a
    failure.
    """
    # ARGS travel through a temporary file (they can exceed the argv limit)
    fd, args_path = tempfile.mkstemp(prefix="kvmap-test-args-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(args if args is not None else {}, f)
    prelude = (
        "import json, sys\n"
        "sys.path.insert(0, %r)\n"
        "with open(%r) as _f:\n"
        "    ARGS = json.load(_f)\n" % (TESTS_DIR, args_path)
    )
    full = prelude + textwrap.dedent(code)
    env = dict(os.environ)
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        p = subprocess.run(
            [sys.executable, "-c", full],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err + "\nTIMEOUT after %ss" % timeout
    finally:
        os.unlink(args_path)
    return p.returncode, p.stdout, p.stderr


def describe_child(rc, out, err):
    """Human readable description of a child's result for assertion messages."""
    sig = ""
    if rc is not None and rc < 0:
        sig = " (killed by signal %d)" % -rc
    elif rc in (135, 139, 134):
        sig = " (crash: %s)" % {135: "SIGBUS", 139: "SIGSEGV", 134: "SIGABRT"}[rc]
    return "returncode=%r%s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        rc,
        sig,
        out[-4000:],
        err[-6000:],
    )


def assert_child_ok(rc, out, err, marker=None):
    assert rc == 0, describe_child(rc, out, err)
    if marker is not None:
        assert marker in out, describe_child(rc, out, err)


# ---------------------------------------------------------------------------
# file systems


@contextlib.contextmanager
def mounted_tmpfs(where, size):
    """A tmpfs of ``size`` (mount's syntax: "256k", "16m") mounted on the new
    directory ``where`` for the block, unmounted after it; the test is
    skipped, saying why, where it cannot be mounted (not root)."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip("needs root to mount a size-limited tmpfs (mount failed: %s)" % r.stderr.strip())
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
