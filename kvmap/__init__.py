"""kvmap: an embedded, transactional, ordered key-value store read through one
memory mapping.

>>> import kvmap, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "demo.kv")
>>> with kvmap.open(path) as db:
...     db[b"apple"] = b"red"
...     with db.transaction() as txn:
...         txn["banana"] = "yellow"      # str is stored as UTF-8
...     sorted(db.items())
[(b'apple', b'red'), (b'banana', b'yellow')]
"""

from typing import TYPE_CHECKING, Any

from .db import Database, Reader, open
from .errors import (ClosedError, CorruptionError, DiskFullError, Error, FailedError, FormatError,
                     InheritedHandleError, IOFailure, LockedError, MapFullError, ReadersFullError,
                     ReadOnlyError)
from .txn import Savepoint, Snapshot, Transaction

if TYPE_CHECKING:   # at run time __getattr__ below imports them on first use
    from .checker import CheckReport, CheckUnreadable, check, salvage

__version__ = "0.1.0"
__all__ = [
    "open", "Database", "Snapshot", "Transaction", "Savepoint", "Reader", "Error", "FormatError", "CorruptionError",
    "DiskFullError", "MapFullError", "LockedError", "ReadOnlyError", "ClosedError",
    "ReadersFullError", "FailedError", "IOFailure", "InheritedHandleError", "check", "salvage", "CheckReport", "CheckUnreadable",
]

_CHECKER = ("check", "salvage", "CheckReport", "CheckUnreadable")


def __getattr__(name: str) -> Any:
    # kvmap.check & co. load the checker on first use: ``import kvmap``
    # does not pay for it.
    if name in _CHECKER:
        from . import checker
        return getattr(checker, name)
    raise AttributeError(f"module 'kvmap' has no attribute {name!r}")
