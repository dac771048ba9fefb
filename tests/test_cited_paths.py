"""Every file the documentation and the code's comments cite exists.

Scans README.md, docs/*.md, native/*.[ch] and kvmap/*.py for repository
paths (``native/txn.c``, ``tests/test_kill.py``, globs such as
``tests/test_check*.py``) and for bare file names of the kinds the
repository has (``lock.c``, ``crashkit.py``, ``FORMAT.md``): each must name
a file in the checkout.  System headers (``#include <...>``) and the files
of other projects that the text compares with are not ours to check.
"""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["README.md", "docs/*.md", "native/*.[ch]", "kvmap/*.py"]
REPO_PATH = re.compile(r"(?<![\w/.-])((?:\.ci|native|kvmap|tests|tools|bench|docs|examples)/[\w.*/-]+"
                       r"\.(?:py|pyi|c|h|md|sh|toml))")
BARE_NAME = re.compile(r"(?<![\w/.<-])([A-Za-z_][\w-]*\.(?:c|h|py|md|sh))\b")
# Files of other projects, cited where the text says how they do a thing.
ELSEWHERE = {"mdb_dump.c", "mdb_load.c", "Python.h"}


TOP = ("native", "kvmap", "tests", "tools", "bench", "docs", "examples", ".ci")


def _ours():
    names = set(os.listdir(ROOT))
    for top in TOP:
        names.update(os.path.basename(p) for p in glob.glob(f"{top}/**/*", root_dir=ROOT, recursive=True))
    return names


def _sources():
    for pattern in SOURCES:
        yield from sorted(glob.glob(pattern, root_dir=ROOT))


def test_cited_files_exist():
    ours = _ours()
    missing = []
    for src in _sources():
        with open(os.path.join(ROOT, src), encoding="utf-8") as f:
            text = f.read()
        for m in REPO_PATH.finditer(text):
            if not glob.glob(m.group(1), root_dir=ROOT):
                missing.append(f"{src}: {m.group(1)}")
        for line in text.splitlines():
            if line.lstrip().startswith("#include <"):
                continue
            for m in BARE_NAME.finditer(line):
                if m.group(1) not in ours and m.group(1) not in ELSEWHERE:
                    missing.append(f"{src}: {m.group(1)} ({line.strip()[:80]})")
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_the_scan_sees_citations():
    """The patterns find what they are meant to (a scan that matched
    nothing would pass whatever the docs cite)."""
    cited = set()
    for src in _sources():
        with open(os.path.join(ROOT, src), encoding="utf-8") as f:
            text = f.read()
        cited.update(m.group(1) for m in REPO_PATH.finditer(text))
        cited.update(m.group(1) for m in BARE_NAME.finditer(text))
    assert {"native/txn.c", "tools/killtest.py", "FORMAT.md", "lock.c"} <= cited
