"""kvmap as a dbm module: ``kvmap.dbm.open(file, flag="r", mode=0o666)`` and
``kvmap.dbm.error``, with what the standard library's dbm modules share
(CPython's ``Lib/test/test_dbm.py`` and ``test_dbm_sqlite3.py`` are the
checklist; tests/test_dbm.py runs the checks that apply).

It differs from :func:`kvmap.open` only where dbm differs from a mapping:

* ``open``'s flag defaults to ``"r"``, as ``dbm.open``'s does, and takes no
  other option (use :func:`kvmap.open` for those: it takes the same flag and
  mode);
* ``keys()`` is a list of the keys, in order, as every dbm module gives it
  (a mapping's ``keys()`` is a view).

Everything else is :class:`kvmap.Database`: str keys and values are stored
as UTF-8 and read back as bytes, ``sync()`` flushes, ``clear()`` empties the
database in one transaction, and every failure is an ``error`` (which is
:class:`kvmap.Error`, an ``OSError``) or the ``KeyError``/``TypeError``/
``ValueError`` a mapping raises.  ``dbm.whichdb`` does not know kvmap files.

>>> import kvmap.dbm, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "db.kv")
>>> with kvmap.dbm.open(path, "c") as db:
...     db["b"] = "2"
...     db[b"a"] = b"1"
...     db.keys()
[b'a', b'b']
>>> try:
...     kvmap.dbm.open(path + ".missing")
... except kvmap.dbm.error as e:
...     print(type(e).__name__)
FileNotFoundError
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from . import db as _db
from .errors import Error as error

__all__ = ["open", "error", "Database"]

# kvmap.open's options at their defaults, read from its signature: one place
# defines them.  readonly and create follow the flag.
_DEFAULTS: dict[str, Any] = {name: p.default for name, p in inspect.signature(_db.open).parameters.items()
                             if p.kind is p.KEYWORD_ONLY and name not in ("readonly", "create")}


class Database(_db.Database):
    """A :class:`kvmap.Database` whose ``keys()`` is a list, as dbm's."""

    def keys(self) -> list[bytes]:  # type: ignore[override]  # dbm's keys() is a list, not a view
        """The keys in order, as a list.  O(n)."""
        return list(self.irange())


def open(file: _db.PathLike, flag: Literal["r", "w", "c", "n"] = "r", mode: int = 0o666) -> Database:
    """Open the kvmap database ``file`` as ``dbm.open`` opens its files:
    ``"r"`` read-only (the default), ``"w"`` read-write, ``"c"`` read-write
    and created if missing, ``"n"`` a new, empty database; ``mode`` is the
    permissions of a file created, under the umask."""
    return _db._opened(Database, file, flag, mode, readonly=None, create=None, **_DEFAULTS)
