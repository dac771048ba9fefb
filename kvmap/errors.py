"""The exceptions kvmap raises, and the mapping from C error codes to them.

Python's own exceptions are used where users expect them: ``KeyError`` for a
missing key, ``TypeError`` for a key or value that is not bytes-like or str,
``ValueError`` for an empty or oversize key or a bad option.  Everything else
is a subclass of :class:`Error`.
"""


class Error(Exception):
    """Base class of every kvmap error."""


class FormatError(Error):
    """The file is not a kvmap database, or not one this version can open
    (bad magic, unsupported version, a different page size)."""


class CorruptionError(Error):
    """Damage found while reading: a checksum mismatch, a page of the wrong
    type, a reference out of range.  ``kvmap-check`` says more."""


class DiskFullError(Error):
    """The file could not grow or be written: ENOSPC, EFBIG or EDQUOT.  The
    transaction was aborted; committed data and the handle are intact."""


class MapFullError(Error):
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
    iterator."""


class ReadersFullError(Error):
    """Every reader slot is taken by a live snapshot (raise ``max_readers``)."""


class FailedError(Error):
    """An earlier sync, or the meta page's write, failed with an I/O error;
    the kernel may have dropped unwritten pages, so this handle refuses
    writes.  Reopen the database."""


class IOFailure(Error, OSError):
    """Any other operating-system error; ``errno`` says which."""
