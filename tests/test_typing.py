"""The package and its examples pass ``mypy --strict`` (pyproject's
[tool.mypy]); mypy is in the test extra, so CI runs this."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mypy_strict_finds_no_error(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    # A cold cache of its own, so that the result does not depend on an
    # earlier run's (about 2 s).
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path),
                        "kvmap", "examples"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout, r.stdout


def test_typed_package_data():
    # what makes an installed kvmap a typed package (PEP 561)
    for name in ("py.typed", "_kvmap_cffi.pyi"):
        assert os.path.isfile(os.path.join(ROOT, "kvmap", name)), name
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'kvmap = ["py.typed", "_kvmap_cffi.pyi"]' in f.read()
