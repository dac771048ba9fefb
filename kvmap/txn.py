"""Reading and writing: the read API every view shares, snapshots, and write
transactions.

``_Reads`` is the read half of the mapping API (``db``, ``db.snapshot()`` and
``db.transaction()`` all offer it).

Iteration goes through a C cursor that copies a batch of records per call.
In a snapshot the batch is large (the view cannot change); in a write
transaction it is one record, so changes made while iterating are seen (the C
cursor re-seeks after a change).

Threads, close and fork: a snapshot or transaction may be closed (or its
database closed) by another thread while one uses it; that use then raises
ClosedError (the C object stays allocated until its last Python reference
goes, see ``_lib``).  In a child process after ``fork()`` every use raises
InheritedHandleError.  None of these objects can be copied or pickled.
"""

from __future__ import annotations

from array import array
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from itertools import chain, islice
from operator import itemgetter
from struct import unpack_from
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn, Sequence, TypeVar, Union, cast,
                    overload)

from . import _lib
from ._lib import LARGE_VALUE, MISSING, BytesLike, as_bytes, as_key, as_value, buffers, error_for, ffi, lib
from .errors import ClosedError

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

    from .db import Database

_T = TypeVar("_T")
_K = TypeVar("_K", bound=BytesLike)
_H = TypeVar("_H", bound="_Handle")
# What a scan's C calls take: seek mode, seek key, stop key, fetch flags.
_ScanArgs = tuple[int, Union[bytes, None], Union[bytes, None], int]

_put = lib.kvm_put
unpack: Callable[[Any, int], bytes] = ffi.unpack   # of a char buffer
NOTFOUND = lib.KVM_NOTFOUND
BATCH = 1 << 17           # pairs per C call of put_many (docs/ARCHITECTURE.md)
BATCH_BYTES = 32 << 20    # and value bytes at most, unless one value is larger


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with
    ``prefix``, or None if there is none.

    >>> _successor(b"ab"), _successor(b"a\\xff"), _successor(b"\\xff")
    (b'ac', b'b', None)
    """
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _range_args(minimum: BytesLike | None, maximum: BytesLike | None, inclusive: tuple[bool, bool],
                reverse: bool) -> _ScanArgs:
    """Seek mode, seek key, stop key and fetch flags of an irange()."""
    lo = None if minimum is None else as_bytes(minimum, "minimum")
    hi = None if maximum is None else as_bytes(maximum, "maximum")
    inc_lo, inc_hi = inclusive
    if not reverse:
        mode, key = (lib.KVM_SEEK_FIRST, None) if lo is None else (
            lib.KVM_SEEK_GE if inc_lo else lib.KVM_SEEK_GT, lo)
        return mode, key, hi, lib.KVM_FETCH_STOP_INCL if inc_hi else 0
    mode, key = (lib.KVM_SEEK_LAST, None) if hi is None else (
        lib.KVM_SEEK_LE if inc_hi else lib.KVM_SEEK_LT, hi)
    return mode, key, lo, lib.KVM_FETCH_REVERSE | (lib.KVM_FETCH_STOP_INCL if inc_lo else 0)


def _prefix_args(prefix: BytesLike, reverse: bool) -> _ScanArgs:
    p = as_bytes(prefix, "prefix")
    if not reverse:
        return lib.KVM_SEEK_GE, p, p, lib.KVM_FETCH_STOP_PREFIX
    succ = _successor(p)
    mode = lib.KVM_SEEK_LAST if succ is None else lib.KVM_SEEK_LT
    return mode, succ, p, lib.KVM_FETCH_STOP_PREFIX | lib.KVM_FETCH_REVERSE


def _open_cursor(owner: Snapshot | Transaction) -> Any:
    """A C cursor on ``owner``'s transaction; it holds a reference to it, and
    is freed by the one generator that uses it (or by the collector)."""
    out = ffi.new("kvm_cursor **")
    rc = lib.kvm_cursor_open(owner._handle(), out)
    if rc:
        raise error_for(rc, owner._path)
    return ffi.gc(out[0], lib.kvm_cursor_close)


def scan(owner: Snapshot | Transaction, mode: int, key: bytes | None, stop: bytes | None, flags: int,
         keys_only: bool, own_snapshot: bool = False) -> Iterator[Any]:
    """Iterate records of ``owner`` (an open Snapshot or Transaction): keys,
    or (key, value) pairs; with ``own_snapshot`` the iterator closes the
    snapshot when it ends.

    Each C call fills a batch and the struct format that splits it; one
    ``struct.unpack_from`` makes every key and value of the batch, and
    ``chain`` hands them out without a Python frame per item.  The batch
    generator runs only when the previous batch is used up, so a write
    transaction (one record per batch) sees changes made while iterating."""
    batches = _batches(owner, mode, key, stop, flags | (lib.KVM_FETCH_KEYS_ONLY if keys_only else 0),
                       own_snapshot)
    return _Iterator.from_iterable(batches if keys_only else map(_pairs, batches))


class _Iterator(chain[Any]):
    """A scan's iterator: ``chain``'s speed (no Python frame per item), but
    no copy or pickle: it stands for an open cursor and snapshot."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("cannot copy or pickle a kvmap iterator: it reads an open snapshot; "
                        "iterate again (or send the path and open it in the other process)")


def _pairs(fields: tuple[bytes, ...]) -> Iterator[tuple[bytes, bytes]]:
    return zip(fields[0::2], fields[1::2])


def _batches(owner: Snapshot | Transaction, mode: int, key: bytes | None, stop: bytes | None, flags: int,
             own_snapshot: bool) -> Iterator[tuple[bytes, ...]]:
    """The batches of a scan: tuples of keys, or of key, value, key, ..."""
    path = owner._path
    try:
        cur = _open_cursor(owner)
    except BaseException:
        if own_snapshot:
            owner.close()  # type: ignore[union-attr]   # own_snapshot: it is a Snapshot
        raise
    try:
        rc = lib.kvm_cursor_seek(cur, key if key is not None else ffi.NULL,
                                 len(key) if key is not None else 0, mode)
        if rc:
            raise error_for(rc, path)
        stop_arg = stop if stop is not None else ffi.NULL
        stop_len = len(stop) if stop is not None else 0
        batch = owner._batch
        fmtlen = ffi.new("size_t *")
        while True:
            tl = buffers
            buf, cap, _ = tl.bc
            n = lib.kvm_cursor_fetch(cur, buf, cap, batch, flags, stop_arg, stop_len,
                                     tl.fmt, tl.FMT_SIZE, fmtlen)
            if n < 0:
                if n == lib.KVM_BUFSMALL:
                    tl.ensure(lib.kvm_cursor_need(cur))
                    continue
                raise error_for(n, path)
            if not fmtlen[0]:
                return
            fields = unpack_from(unpack(tl.fmt, fmtlen[0]), ffi.buffer(buf, n))
            if n >= LARGE_VALUE:
                tl.trim()    # a large record: the thread's buffer does not keep its size
            yield fields
    finally:
        ffi.release(cur)
        if own_snapshot:
            owner.close()  # type: ignore[union-attr]   # own_snapshot: it is a Snapshot


# The views hand out the scan's own iterator (values: one that maps it): no
# Python frame runs per item, as one would in the abc views' generators, and
# the iterator refuses copy and pickle as the scan's does.
class _KeysView(KeysView[bytes]):
    _mapping: _Reads

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._mapping)


class _ValuesView(ValuesView[bytes]):
    _mapping: _Reads

    def __iter__(self) -> Iterator[bytes]:
        return _Iterator(map(itemgetter(1), self._mapping.irange_items()))


class _ItemsView(ItemsView[bytes, bytes]):
    _mapping: _Reads

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._mapping.irange_items()


class _Reads:
    """The read API: mapping access, ordered iteration, ranges, batches.

    A subclass sets ``_h`` (its C handle, None once closed), ``_getfn`` (the C
    lookup taking that handle), ``_max_key``, ``_path`` and ``_closed_msg``,
    and implements ``_count()`` and ``_scan(...)``.
    """

    __slots__ = ()

    # What a subclass provides (see above).
    _h: Any
    _getfn: Callable[[Any, bytes, int, Any, int], int]
    _max_key: int
    _closed_msg: str
    _count: Callable[[], int]
    _scan: Callable[[int, bytes | None, bytes | None, int, bool], Iterator[Any]]
    if TYPE_CHECKING:   # an attribute, or Database's property
        @property
        def _path(self) -> str | bytes: ...

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise ClosedError(self._closed_msg)
        return h

    @overload
    def get(self, key: BytesLike) -> bytes | None: ...
    @overload
    def get(self, key: BytesLike, default: _T) -> bytes | _T: ...

    def get(self, key: BytesLike, default: object = None) -> object:
        """Value of ``key``, or ``default``.  O(log n), one C call: the value
        is copied into the thread's buffer and sliced from it.  C checks the
        key's length; a closed handle (None) is refused by cffi."""
        if type(key) is not bytes:
            key = as_key(key, self._max_key)
        buf, cap, view = buffers.bc
        h = self._h
        try:
            n = self._getfn(h, key, len(key), buf, cap)
        except TypeError:
            if h is None:
                raise ClosedError(self._closed_msg) from None
            raise
        if 0 <= n <= cap:
            return view[:n]
        if n == NOTFOUND:
            return default
        if n < 0:
            if n == lib.KVM_INVALID:
                as_key(key, self._max_key)   # a length C refused, in Python's words
            raise error_for(n, self._path)
        v = _lib.read_value(self._getfn, h, key, n, self._path)   # larger than the buffer
        return default if v is MISSING else v

    def __getitem__(self, key: BytesLike) -> bytes:
        """Value of ``key`` (bytes); KeyError if absent.  O(log n)."""
        v = self.get(key, MISSING)
        if v is MISSING:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        k = as_bytes(key, "key")  # type: ignore[arg-type]   # TypeError unless bytes-like or str
        if not 0 < len(k) <= self._max_key:
            return False
        return self.get(k, MISSING) is not MISSING

    def __len__(self) -> int:
        """Number of entries.  O(1)."""
        return self._count()

    def __iter__(self) -> Iterator[bytes]:
        """Keys in ascending byte order."""
        return self._scan(lib.KVM_SEEK_FIRST, None, None, 0, True)

    def __reversed__(self) -> Iterator[bytes]:
        return self._scan(lib.KVM_SEEK_LAST, None, None, lib.KVM_FETCH_REVERSE, True)

    # Every subclass is a Mapping; _Reads itself is not one.
    def keys(self) -> KeysView[bytes]:
        return _KeysView(cast("Mapping[bytes, bytes]", self))

    def values(self) -> ValuesView[bytes]:
        return _ValuesView(cast("Mapping[bytes, bytes]", self))

    def items(self) -> ItemsView[bytes, bytes]:
        return _ItemsView(cast("Mapping[bytes, bytes]", self))

    def irange(self, minimum: BytesLike | None = None, maximum: BytesLike | None = None,
               inclusive: tuple[bool, bool] = (True, True), reverse: bool = False) -> Iterator[bytes]:
        """Keys from ``minimum`` to ``maximum`` (None: unbounded), as
        sortedcontainers' ``SortedDict.irange``.  O(log n) to start, then
        O(1) per key.

        >>> import kvmap, tempfile, os
        >>> with kvmap.open(os.path.join(tempfile.mkdtemp(), "d.kv")) as db:
        ...     db.update({b"a": b"1", b"b": b"2", b"c": b"3"})
        ...     list(db.irange(b"a", b"c", inclusive=(False, True)))
        [b'b', b'c']
        """
        return self._scan(*_range_args(minimum, maximum, inclusive, reverse), True)

    def irange_items(self, minimum: BytesLike | None = None, maximum: BytesLike | None = None,
                     inclusive: tuple[bool, bool] = (True, True),
                     reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of irange()."""
        return self._scan(*_range_args(minimum, maximum, inclusive, reverse), False)

    def prefix(self, prefix: BytesLike, reverse: bool = False) -> Iterator[bytes]:
        """Keys that start with ``prefix``, in order."""
        return self._scan(*_prefix_args(prefix, reverse), True)

    def prefix_items(self, prefix: BytesLike, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with ``prefix``."""
        return self._scan(*_prefix_args(prefix, reverse), False)

    @overload
    def get_many(self, keys: Iterable[BytesLike]) -> list[bytes | None]: ...
    @overload
    def get_many(self, keys: Iterable[BytesLike], default: _T) -> list[bytes | _T]: ...

    def get_many(self, keys: Iterable[BytesLike], default: object = None) -> list[Any]:
        """Values of ``keys`` in order (``default`` where absent), read from one
        snapshot.  One C call per buffer-full looks the keys up sixteen at a
        time (their cache misses overlap) and writes the struct format that
        splits the values, so one ``struct.unpack_from`` makes them all.
        O(k log n).

        >>> import kvmap, tempfile, os
        >>> with kvmap.open(os.path.join(tempfile.mkdtemp(), "d.kv")) as db:
        ...     db.update({b"a": b"1", b"b": b""})
        ...     db.get_many([b"b", b"x", b"a"], default=0)
        [b'', 0, b'1']
        """
        packed, klens = _packed_keys(keys, self._max_key)
        if not klens:
            return []
        return self._with_handle(lambda h: _get_many(h, packed, klens, default, self._path))

    def _with_handle(self, fn: Callable[[Any], _T]) -> _T:
        return fn(self._handle())


def _packed_keys(keys: Iterable[BytesLike], max_key: int) -> tuple[bytes, array[int]]:
    """``keys`` packed back to back, and their lengths: ``(bytes, array of
    u32)``; the error of the first key that is not bytes-like.  Two passes
    over the keys in the usual case, since touching each key object is most
    of the cost when they are spread in memory.  C checks every length (1 to
    ``max_key``) before it uses any key of the batch."""
    ks: list[Any] = keys if type(keys) is list else list(keys)
    try:
        packed = b"".join(ks)
        klens = array("I", map(len, ks))
        ok = len(packed) == sum(klens)   # else an item's len() is not its size in bytes
    except (TypeError, OverflowError):   # not bytes-like; a length past u32
        ok = False
    if not ok:
        ks = [as_key(k, max_key) for k in ks]
        packed = b"".join(ks)
        klens = array("I", map(len, ks))
    return packed, klens


def _get_many(handle: Any, packed: bytes, klens: array[int], default: _T,
              path: str | bytes) -> list[bytes | _T]:
    n = len(klens)
    lens = ffi.new("int64_t[]", n)
    done = ffi.new("size_t *")
    fmtlen = ffi.new("size_t *")
    out: list[bytes | _T] = []
    i = 0
    tl = buffers
    with ffi.from_buffer(packed) as key, ffi.from_buffer("uint32_t[]", klens) as kl:
        while i < n:
            buf, cap, _ = tl.bc
            missing = lib.kvm_get_many(handle, key, kl + i, n - i, buf, cap, lens + i, done,
                                       tl.fmt, tl.FMT_SIZE, fmtlen)
            if missing == lib.KVM_BUFSMALL:
                tl.ensure(lens[i])
                continue
            if missing < 0:
                raise error_for(missing, path)
            got = done[0]
            values: Sequence[Any] = unpack_from(unpack(tl.fmt, fmtlen[0]), ffi.buffer(buf, cap))
            if missing:
                values = [default if lens[j] < 0 else v for j, v in enumerate(values, i)]
            out += values
            key += sum(klens[i:i + got])
            i += got
    tl.trim()
    return out


class _Handle:
    """What every object that stands for an open C handle shares: it cannot
    be copied (two owners would close one handle twice) or pickled (a
    handle means nothing in another process)."""

    __slots__ = ()

    def __copy__(self) -> NoReturn:
        raise TypeError(f"cannot copy a kvmap.{type(self).__name__}: it is a handle to an open "
                        f"database; open the path again for a second handle")

    def __deepcopy__(self, memo: object) -> NoReturn:
        self.__copy__()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(f"cannot pickle a kvmap.{type(self).__name__}: it is a handle to an open "
                        f"database; send the path and open it in the other process")


class _Closing(_Handle):
    """``with`` support for handles that end: the block's end (or garbage
    collection) calls ``_end``: close() for a database or a snapshot,
    abort() for a transaction (whose block commits when it ends well)."""

    __slots__ = ()
    _end: Callable[[], None]   # a subclass's

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()

    def __del__(self) -> None:
        try:
            self._end()
        except Exception:
            pass


class _TxnReads(_Reads):
    """The reads of a C transaction (a snapshot's, or the write
    transaction's)."""

    __slots__ = ()

    def _count(self) -> int:
        return _checked(lib.kvm_txn_entries(self._handle()), self._path)

    def _scan(self, mode: int, key: bytes | None, stop: bytes | None, flags: int,
              keys_only: bool) -> Iterator[Any]:
        self._handle()
        return scan(cast("Snapshot | Transaction", self), mode, key, stop, flags, keys_only)


class Snapshot(_Closing, _TxnReads, Mapping[bytes, bytes]):
    """A read-only view of the database as of one commit.

    It stays unchanged while other threads commit, and keeps the pages it can
    see from being reused until closed.  Use it as a context manager, or call
    close().
    """

    __slots__ = ("_db", "_h", "_max_key", "_path", "__weakref__")
    _batch = 512
    _getfn = lib.kvm_get
    _closed_msg = "snapshot is closed"

    _db: Database
    _path: str | bytes

    def __init__(self, db: Database) -> None:
        self._db = db
        self._h = None
        self._max_key = db._max_key
        self._path = db.path
        out = ffi.new("kvm_txn **")
        rc = lib.kvm_txn_begin(db._handle(), 0, out)
        if rc:
            raise error_for(rc, self._path)
        self._h = ffi.gc(out[0], lib.kvm_txn_release)

    @property
    def txnid(self) -> int:
        """The id of the commit this snapshot shows."""
        return _checked(lib.kvm_txn_id(self._handle()), self._path)

    def _state(self) -> dict[str, int]:
        """The whole state of the commit this snapshot shows, as the
        snapshot took it, for kvmap-check: the meta fields of FORMAT.md §2
        (txnid, root, entries, hwm, free_index, record, free_count,
        pending_count, floor, durable, depth, flags) and ``shared`` (1: the
        snapshot's reader slot is in the lock file, seen by the writers of
        every process)."""
        info = ffi.new("kvm_txninfo *")
        rc = lib.kvm_txn_state(self._handle(), info)
        if rc:
            raise error_for(rc, self._path)
        return {name: getattr(info, name) for name, _ in ffi.typeof("kvm_txninfo").fields}

    def close(self) -> None:
        """Release the snapshot (idempotent; its iterators then raise
        ClosedError)."""
        h = self._h
        if h is not None:
            self._h = None
            lib.kvm_txn_abort(h)

    _end = close

    def __repr__(self) -> str:
        h = self._h
        t = -1 if h is None else lib.kvm_txn_id(h)
        state = f"txnid {t}" if t >= 0 else "closed"
        return f"<kvmap.Snapshot {self._path!r} {state}>"


def _slice_bounds(s: slice) -> tuple[BytesLike | None, BytesLike | None]:
    """(minimum, maximum) of a key slice ``[lo:hi]``."""
    if s.step is not None:
        raise ValueError("a slice of keys has no step")
    return s.start, s.stop


def _checked(n: int, path: str | bytes) -> int:
    """``n`` from a C call that returns a count or id, or its error raised."""
    if n < 0:
        raise error_for(n, path)
    return n


class _Updates:
    """``dict.update``'s signatures for Database and Transaction, each of
    which gives ``_update``."""

    __slots__ = ()
    _update: Callable[..., None]

    @overload
    def update(self, other: SupportsKeysAndGetItem[_K, BytesLike], /, **kwargs: BytesLike) -> None: ...
    @overload
    def update(self, other: Iterable[tuple[BytesLike, BytesLike]], /, **kwargs: BytesLike) -> None: ...
    @overload
    def update(self, /, **kwargs: BytesLike) -> None: ...

    def update(self, /, *args: Any, **kwargs: BytesLike) -> None:
        """As dict.update, through put_many(): a Database's in one
        transaction, a Transaction's in itself."""
        self._update(*args, **kwargs)


class Transaction(_Closing, _TxnReads, _Updates, MutableMapping[bytes, bytes]):
    """The write transaction (one at a time per database).

    As a context manager it commits on normal exit and aborts on an
    exception.  Reads see the transaction's own changes.  Another thread may
    commit or abort it (or close the database): whichever ends it first
    wins, and every later use raises ClosedError.
    """

    __slots__ = ("_db", "_h", "_max_key", "_path", "_savepoints", "__weakref__")
    _batch = 1
    _getfn = lib.kvm_get
    _closed_msg = "transaction is finished"

    _db: Database
    _path: str | bytes

    def __init__(self, db: Database, timeout: float | None = None) -> None:
        self._db = db
        self._h = None
        self._max_key = db._max_key
        self._path = db.path
        self._savepoints: list[Savepoint] = []   # the open ones, outermost first
        db._begin_write(self, timeout)

    def _fail(self, rc: int) -> NoReturn:
        """Raise for a write call that returned ``rc`` < 0, aborting the
        transaction unless the call changed nothing (a bad argument): any
        other failure may have left a half-made change."""
        exc = error_for(rc, self._path)
        try:
            if rc != lib.KVM_INVALID:
                self.abort()
            raise exc
        finally:
            del exc   # no cycle through this frame

    def put(self, key: BytesLike, value: BytesLike, overwrite: bool = True) -> bool:
        """Insert, or overwrite unless ``overwrite`` is false; returns whether
        it wrote (py-lmdb's ``put(overwrite=False)``).  O(log n)."""
        h = self._h
        if h is None:
            raise ClosedError(self._closed_msg)
        if type(key) is not bytes or not 0 < len(key) <= self._max_key:
            key = as_key(key, self._max_key)
        if not overwrite and self.get(key, MISSING) is not MISSING:
            return False
        if type(value) is bytes:
            rc = _put(h, key, len(key), value, len(value))
            if rc:
                self._fail(rc)
            return True
        value, vlen = as_value(value)
        try:
            rc = _put(h, key, len(key), value, vlen)
            if rc:
                self._fail(rc)
        finally:
            if type(value) is not bytes:
                ffi.release(value)
        return True

    def __setitem__(self, key: BytesLike, value: BytesLike) -> None:
        self.put(key, value)

    def delete(self, key: BytesLike) -> bool:
        """Remove ``key``; returns whether it was there (py-lmdb's
        ``delete``; ``del txn[key]`` raises KeyError instead).  O(log n)."""
        h = self._handle()
        k = as_key(key, self._max_key)
        rc = lib.kvm_del(h, k, len(k))
        if rc == lib.KVM_NOTFOUND:
            return False
        if rc:
            self._fail(rc)
        return True

    def delete_range(self, minimum: BytesLike | None = None, maximum: BytesLike | None = None,
                     inclusive: tuple[bool, bool] = (True, True)) -> int:
        """Delete the keys that ``irange(minimum, maximum, inclusive)`` gives,
        in one C call; returns how many.  O(k log n).

        >>> import kvmap, tempfile, os
        >>> with kvmap.open(os.path.join(tempfile.mkdtemp(), "d.kv")) as db:
        ...     db.update((b"k%d" % i, b"") for i in range(10))
        ...     with db.transaction() as txn:
        ...         txn.delete_range(b"k2", b"k5", inclusive=(True, False))
        ...         del txn[b"k7":]          # a slice: from k7 on, as delete_range(b"k7", None)
        ...     list(db)
        3
        [b'k0', b'k1', b'k5', b'k6']
        """
        h = self._handle()
        lo = None if minimum is None else as_bytes(minimum, "minimum")
        hi = None if maximum is None else as_bytes(maximum, "maximum")
        inc_lo, inc_hi = inclusive
        flags = (0 if inc_lo else lib.KVM_DEL_LO_EXCL) | (0 if inc_hi else lib.KVM_DEL_HI_EXCL)
        count = ffi.new("uint64_t *")
        rc = lib.kvm_del_range(h, ffi.NULL if lo is None else lo, len(lo or b""),
                               ffi.NULL if hi is None else hi, len(hi or b""), flags, count)
        if rc:
            self._fail(rc)
        return int(count[0])

    def __delitem__(self, key: BytesLike | slice) -> None:
        """``del txn[key]``; ``del txn[lo:hi]`` deletes the keys from lo up to
        hi, hi excluded (either may be omitted)."""
        if type(key) is slice:
            self.delete_range(*_slice_bounds(key), inclusive=(True, False))
        elif not self.delete(key):
            raise KeyError(key)

    def _update(self, /, *args: Any, **kwargs: BytesLike) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        src = args[0] if args else ()
        if isinstance(src, Mapping):
            src = src.items()
        elif hasattr(src, "keys"):
            src = ((k, src[k]) for k in src.keys())
        self.put_many(src)
        if kwargs:
            self.put_many(kwargs.items())

    def put_many(self, pairs: Iterable[tuple[BytesLike, BytesLike]]) -> None:
        """Put every ``(key, value)`` of ``pairs`` (any iterable), as put()
        one by one would: of equal keys the later wins.  One C call per
        batch of up to BATCH pairs, which C applies in key order, so
        consecutive puts find their pages in the CPU cache.  O(k log n).

        >>> import kvmap, tempfile, os
        >>> with kvmap.open(os.path.join(tempfile.mkdtemp(), "d.kv")) as db:
        ...     with db.transaction() as txn:
        ...         txn.put_many([(b"b", b"1"), (b"a", b"2"), (b"b", b"3")])
        ...     list(db.items())
        [(b'a', b'2'), (b'b', b'3')]
        """
        it = iter(pairs)
        while True:
            batch = list(islice(it, BATCH))
            if not batch:
                return
            self._put_batch([k for k, _ in batch], [v for _, v in batch])

    def _put_batch(self, ks: list[Any], vs: list[Any]) -> None:
        h = self._handle()
        if set(map(type, vs)) != {bytes}:
            vs = [as_bytes(v, "value") for v in vs]
        vlens = array("Q", map(len, vs))
        if len(ks) > 1 and sum(vlens) > BATCH_BYTES:   # bound the packed copy of the values
            half = len(ks) // 2
            self._put_batch(ks[:half], vs[:half])
            self._put_batch(ks[half:], vs[half:])
            return
        keys, klens = _packed_keys(ks, self._max_key)
        rc = lib.kvm_put_many(h, keys, ffi.from_buffer("uint32_t[]", klens),
                              b"".join(vs), ffi.from_buffer("uint64_t[]", vlens), len(ks))
        if rc:
            self._fail(rc)

    def savepoint(self) -> Savepoint:
        """A point to roll back to without ending the transaction (SQLite's
        ``SAVEPOINT``; py-lmdb's child transaction).  As a context manager it
        rolls back what the block changed when the block raises, and keeps it
        otherwise; savepoints nest.  O(1) to open; its end is O(pages changed
        in the transaction).

        >>> import kvmap, tempfile, os
        >>> db = kvmap.open(os.path.join(tempfile.mkdtemp(), "db"))
        >>> with db.transaction() as txn:
        ...     txn[b"a"] = b"1"
        ...     try:
        ...         with txn.savepoint():
        ...             txn[b"b"] = b"2"
        ...             raise ValueError("changed my mind")
        ...     except ValueError:
        ...         pass
        >>> sorted(db.keys())
        [b'a']
        >>> db.close()
        """
        return Savepoint(self)

    @property
    def txnid(self) -> int:
        """The id this transaction's commit will have."""
        return _checked(lib.kvm_txn_id(self._handle()), self._path)

    def commit(self) -> None:
        """Make the changes durable (per the database's ``sync``) and visible."""
        self._handle()
        self._db._commit(self)

    def abort(self) -> None:
        """Discard the changes (idempotent)."""
        if self._h is not None:
            self._db._abort(self)

    def __exit__(self, *exc: object) -> None:
        if self._h is None:
            return
        if not exc or exc[0] is None:
            self.commit()
        else:
            self.abort()

    def _end(self) -> None:
        self.abort()

    def __repr__(self) -> str:
        h = self._h
        t = -1 if h is None else lib.kvm_txn_id(h)
        state = f"txnid {t}" if t >= 0 else "finished"
        return f"<kvmap.Transaction {self._path!r} {state}>"


class Savepoint(_Handle):
    """A savepoint of a write transaction (:meth:`Transaction.savepoint`).

    ``rollback()`` undoes what the transaction changed since the savepoint;
    ``release()`` keeps it.  Either ends this savepoint and every one opened
    inside it; afterwards its use raises ClosedError, as does any use once
    the transaction has ended.  A commit keeps what every open savepoint
    did.  Like the transaction, it cannot be copied or pickled.
    """

    __slots__ = ("_txn", "_level")

    def __init__(self, txn: Transaction) -> None:
        level = ffi.new("uint32_t *")
        rc = lib.kvm_txn_savepoint(txn._handle(), level)
        if rc:
            raise error_for(rc, txn._path)
        self._txn = txn
        self._level = int(level[0])
        txn._savepoints.append(self)

    def _end(self, rollback: bool) -> None:
        txn = self._txn
        h = txn._handle()
        if self not in txn._savepoints:
            raise ClosedError("savepoint is finished")
        rc = lib.kvm_txn_savepoint_end(h, self._level, int(rollback))
        if rc:
            raise error_for(rc, txn._path)
        del txn._savepoints[self._level - 1:]

    def rollback(self) -> None:
        """Undo the transaction's changes since this savepoint, and end it."""
        self._end(True)

    def release(self) -> None:
        """Keep the changes since this savepoint, and end it."""
        self._end(False)

    def __enter__(self) -> Savepoint:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self in self._txn._savepoints and self._txn._h is not None:
            self._end(exc_type is not None)

    def __repr__(self) -> str:
        state = "open" if self in self._txn._savepoints and self._txn._h is not None else "finished"
        return f"<kvmap.Savepoint {self._level} of {self._txn!r} {state}>"
