"""The engine's configurations: each combination of I/O backend, growth
strategy and writemap that the tests, the crash tools (tools/killtest.py,
tools/powerloss.py) and the benchmarks (kvmap-bench, bench/) run, by name,
with the ``kvmap.open`` keyword arguments it stands for.

>>> list(CONFIGURATIONS)[:2], open_kwargs("mmap-remap-wm")
(['mmap-reserve', 'mmap-reserve-wm'], {'backend': 'mmap', 'growth': 'remap', 'writemap': True})
>>> name_of({"backend": "mmap", "growth": "mremap", "writemap": False, "sync": False})
'mmap-mremap'
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

GROWTHS = ("reserve", "mremap", "remap")


def _build() -> dict[str, Mapping[str, Any]]:
    configurations: dict[str, Mapping[str, Any]] = {}
    for growth in GROWTHS:
        for writemap in (False, True):
            name = "mmap-%s%s" % (growth, "-wm" if writemap else "")
            configurations[name] = MappingProxyType(dict(backend="mmap", growth=growth, writemap=writemap))
    # growth and writemap are the mapping's: the pread backend has neither
    configurations["pread"] = MappingProxyType(dict(backend="pread"))
    return configurations


# name -> kvmap.open keyword arguments, in the order the tools and the test
# ids have always listed them; read-only (open_kwargs gives a dict to change)
CONFIGURATIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(_build())
NAMES = tuple(CONFIGURATIONS)

# what kvmap.open gives without options
DEFAULT = "mmap-reserve"


def open_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments of configuration `name`, a new dict each call."""
    try:
        return dict(CONFIGURATIONS[name])
    except KeyError:
        raise ValueError(f"unknown configuration {name!r} (known: {', '.join(NAMES)})") from None


def name_of(kwargs: Mapping[str, Any]) -> str:
    """The configuration that ``kvmap.open`` keyword arguments select; other
    options (sync, page_size, ...) are ignored, and growth and writemap take
    the engine's defaults when absent."""
    if kwargs.get("backend", "mmap") == "pread":
        return "pread"
    name = "mmap-%s%s" % (kwargs.get("growth", "reserve"), "-wm" if kwargs.get("writemap") else "")
    if name not in CONFIGURATIONS:
        raise ValueError(f"no configuration has growth={kwargs.get('growth')!r}")
    return name
