"""The exceptions kvmap raises.

Python's own exceptions are used where users expect them: ``KeyError`` for a
missing key, ``TypeError`` for a key or value that is not bytes-like or str,
``ValueError`` for an empty or oversize key or a bad option.  Everything else
is a subclass of :class:`Error`, which is an ``OSError``, as every dbm
module's ``error`` is: code written for ``dbm`` and ``shelve`` that catches
``dbm.error`` (a tuple that holds ``OSError``) catches kvmap's errors too.

An error that comes from an operating-system ``errno`` is also the matching
builtin ``OSError`` subclass, with ``errno``, ``strerror`` and ``filename``
set: a missing file is both a :class:`IOFailure` and a ``FileNotFoundError``
(the class :class:`kvmap.errors.FileNotFoundError`), a full disk both a
:class:`DiskFullError` and an ``OSError`` with ``errno.ENOSPC``.

>>> import errno
>>> e = os_error(errno.ENOENT, "opening the database file", "/no/such/db.kv")
>>> isinstance(e, Error), isinstance(e, builtins.FileNotFoundError), e.filename
(True, True, '/no/such/db.kv')
>>> print(e)
[Errno 2] opening the database file: No such file or directory: '/no/such/db.kv'
"""

from __future__ import annotations

import builtins
import os


class Error(OSError):
    """Base class of every kvmap error.  An ``OSError`` (dbm's convention);
    ``errno`` is set only on the errors that come from the operating system
    (:class:`IOFailure`, :class:`DiskFullError`, :class:`MapFullError`)."""


class FormatError(Error):
    """The file is not a kvmap database, or not one this version can open
    (bad magic, unsupported version, a different page size)."""


class CorruptionError(Error):
    """Damage found while reading: a checksum mismatch, a page of the wrong
    type, a reference out of range.  ``kvmap-check`` says more."""


class _OSFailure(Error):
    """An error with an errno: ``OSError``'s attributes, and a message that
    says what kvmap was doing.  ``errno`` is None when the limit was kvmap's
    own (a full address-space reservation)."""

    def __init__(self, errnum: int | None, message: str, filename: str | bytes | None = None) -> None:
        if errnum:
            super().__init__(errnum, os.strerror(errnum), filename)
        else:
            super().__init__(message)
            self.filename = filename
        self.message = message

    def __str__(self) -> str:
        where = "" if self.filename is None else f": {self.filename!r}"
        if self.errno is None:
            return f"{self.message}{where}"
        return f"[Errno {self.errno}] {self.message}: {self.strerror}{where}"

    def __reduce__(self) -> tuple[type[_OSFailure], tuple[int | None, str, str | bytes | None]]:
        return type(self), (self.errno, self.message, self.filename)


class DiskFullError(_OSFailure):
    """The file could not grow or be written: ENOSPC, EFBIG or EDQUOT.  The
    transaction was aborted; committed data and the handle are intact."""


class MapFullError(_OSFailure):
    """The mapping could not grow (address space reservation exhausted, or
    mmap/mremap failed with ENOMEM).  The transaction was aborted; the old
    mapping stays valid."""


class LockedError(Error):
    """A lock could not be taken: the write-transaction wait timed out, this
    thread already holds the open write transaction, or the file is already
    open for writing by another handle."""


class ReadOnlyError(Error):
    """A write on a read-only handle or snapshot."""


class ClosedError(Error):
    """Use of a closed database, or of a finished transaction, snapshot or
    iterator (also from another thread that was using it when it closed)."""


class InheritedHandleError(Error):
    """Use, in a child process, of a handle (or of its snapshots,
    transactions and iterators) that the parent opened before ``fork()``.
    It belongs to the parent: open the database again in the child.
    Closing it in the child, or the child's exit, never touches the
    parent's lock, mapping or file."""


class ReadersFullError(Error):
    """Every reader slot is taken by a live snapshot (raise ``max_readers``)."""


class FailedError(Error):
    """An earlier sync, or the meta page's write, failed with an I/O error;
    the kernel may have dropped unwritten pages, so this handle refuses
    writes.  Reopen the database."""


class IOFailure(_OSFailure):
    """Any other operating-system error; ``errno`` says which.  For an errno
    that Python gives a builtin subclass of ``OSError``, the error is an
    instance of the class below of the same name, which is both."""


# Written out rather than made by a loop so that type checkers know them.
class FileNotFoundError(IOFailure, builtins.FileNotFoundError):
    """IOFailure and the builtin FileNotFoundError."""


class FileExistsError(IOFailure, builtins.FileExistsError):
    """IOFailure and the builtin FileExistsError."""


class PermissionError(IOFailure, builtins.PermissionError):
    """IOFailure and the builtin PermissionError."""


class IsADirectoryError(IOFailure, builtins.IsADirectoryError):
    """IOFailure and the builtin IsADirectoryError."""


class NotADirectoryError(IOFailure, builtins.NotADirectoryError):
    """IOFailure and the builtin NotADirectoryError."""


class InterruptedError(IOFailure, builtins.InterruptedError):
    """IOFailure and the builtin InterruptedError."""


class BlockingIOError(IOFailure, builtins.BlockingIOError):
    """IOFailure and the builtin BlockingIOError."""


class TimeoutError(IOFailure, builtins.TimeoutError):
    """IOFailure and the builtin TimeoutError."""


_BY_BUILTIN: dict[type[OSError], type[IOFailure]] = {
    builtins.FileNotFoundError: FileNotFoundError, builtins.FileExistsError: FileExistsError,
    builtins.PermissionError: PermissionError, builtins.IsADirectoryError: IsADirectoryError,
    builtins.NotADirectoryError: NotADirectoryError, builtins.InterruptedError: InterruptedError,
    builtins.BlockingIOError: BlockingIOError, builtins.TimeoutError: TimeoutError}


def os_error(errnum: int | None, message: str, filename: str | bytes | None = None,
             cls: type[_OSFailure] = IOFailure) -> _OSFailure:
    """The exception for an errno: ``cls`` (IOFailure, DiskFullError or
    MapFullError), as the builtin ``OSError`` subclass of that errno where
    there is one."""
    if cls is IOFailure and errnum:
        cls = _BY_BUILTIN.get(type(OSError(errnum, "")), IOFailure)
    return cls(errnum, message, filename)
