"""The example programs run as documented."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_typed_usage(tmp_path):
    r = run_example("typed_usage.py", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for line in ("loaded 100 users in transaction 2",
                 "user 1: b'name 1' | user 999: nobody | count: 100",
                 "snapshot sees: b'name 1' | database sees: b'renamed'",
                 "users 10-12: [(10, 'name 10'), (11, 'name 11'), (12, 'name 12')]",
                 "last 3 keys: [b'user:000100', b'user:000099', b'user:000098']",
                 "names of 2, 3, 500: ['name 2', 'name 3', None]",
                 "deleted 51; 49 users left",
                 "KeyError: b'user:000999'",
                 "ValueError: empty key",
                 f"ReadOnlyError: {tmp_path / 'users.kv'}: database is open read-only",
                 f"LockedError: {tmp_path / 'users.kv'}: timed out after 0.05 s waiting for another "
                 f"handle's write transaction",
                 "the other handle reads: b'y'",
                 f"FormatError: {tmp_path / 'users.kv'} has 4096-byte pages, not 8192",
                 f"FileNotFoundError: errno 2, {tmp_path / 'absent.kv'}"):
        assert line in out.splitlines(), (line, out)
    assert (tmp_path / "users.kv").exists()


def test_typed_usage_wants_a_directory():
    r = run_example("typed_usage.py")
    assert r.returncode == 1 and "usage:" in r.stderr
