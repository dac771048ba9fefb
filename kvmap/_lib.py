"""The boundary to the C core: the cffi module, error translation, and the
conversions of keys and values that every public method shares.

Calls are shaped for the cffi boundary: one C call per operation, results
copied by C into a per-thread buffer, and the returned length is the only
out-value.  (The wrappers keep the GIL -- native/pyglue.h -- but a buffer
shared between threads would still race with the calls that release it.)

Lifetime: every C object handed to Python is wrapped by ``ffi.gc`` with its
release function, and Python code holds that wrapper (never the bare
pointer) for as long as it may call C with it.  Close and abort only mark
the C object finished; it is freed when the last wrapper goes, so a thread
that races a close gets ``ClosedError``, never a freed pointer.
"""

from __future__ import annotations

import enum
import os
import threading
from typing import Any, Callable, Final, Union, cast

from ._kvmap_cffi import ffi as ffi, lib as lib   # "as": re-exported to db and txn
from . import errors

# What a key or value may be given as (as_bytes); str is stored as UTF-8.
BytesLike = Union[bytes, bytearray, memoryview, str]


class _Missing(enum.Enum):
    # A one-member enum rather than object(): a type checker narrows
    # ``v is MISSING`` to the other types of ``v``.
    MISSING = 0


MISSING: Final = _Missing.MISSING

_CODES: dict[int, type[Exception]] = {
    lib.KVM_CORRUPT: errors.CorruptionError,
    lib.KVM_FORMAT: errors.FormatError,
    lib.KVM_NOTREGULAR: errors.FormatError,
    lib.KVM_READONLY: errors.ReadOnlyError,
    lib.KVM_FAILED: errors.FailedError,
    lib.KVM_READERS_FULL: errors.ReadersFullError,
    lib.KVM_INVALID: ValueError,
    lib.KVM_LOCKED: errors.LockedError,
    lib.KVM_BUSY: errors.LockedError,
    lib.KVM_CLOSED: errors.ClosedError,
    lib.KVM_FORKED: errors.InheritedHandleError,
}
_OS_CODES: dict[int, type[errors._OSFailure]] = {
    lib.KVM_IO: errors.IOFailure, lib.KVM_DISKFULL: errors.DiskFullError, lib.KVM_MAPFULL: errors.MapFullError}

# Bumped in a child after fork(): Python-level state of a handle opened
# before (its locks, its free-space bookkeeping) is the parent's.
fork_generation: list[int] = [0]
os.register_at_fork(after_in_child=lambda: fork_generation.__setitem__(0, fork_generation[0] + 1))


def error_for(rc: int, path: str | bytes | None = None) -> Exception:
    """The exception for C return code ``rc``, with the C side's message, for
    the database at ``path``: an errno error is also the builtin OSError
    subclass of its errno, with ``filename`` set to ``path``."""
    msg = ffi.string(lib.kvm_errmsg()).decode("utf-8", "replace") or f"kvmap C core error {rc}"
    if rc == lib.KVM_NOMEM:
        return MemoryError(msg)
    os_cls = _OS_CODES.get(rc)
    if os_cls is not None:
        en = lib.kvm_errno()
        if en:   # the C message ends with strerror, which OSError prints itself
            msg = msg.removesuffix(": " + os.strerror(en))
        return errors.os_error(en or None, msg, path, os_cls)
    cls = _CODES.get(rc, errors.Error)
    if path is not None and cls is not ValueError:
        where = os.fsdecode(path)   # open() takes a bytes path too
        if where not in msg:
            msg = f"{where}: {msg}"
    return cls(msg)


class _Buffers(threading.local):
    """Per-thread output buffer for values and cursor records.  It grows for
    a large record and goes back to its usual size (``trim``) once the
    record is unpacked, so a thread does not keep the largest value it ever
    read."""

    SIZE = 1 << 16
    FMT_SIZE = 8192      # the struct format of a cursor batch (kvm_cursor_fetch)

    bc: tuple[Any, int, Any]

    def __init__(self) -> None:
        self.fmt: Any = ffi.new("char[]", self.FMT_SIZE)
        self._resize(self.SIZE)

    def _resize(self, cap: int) -> None:
        self.bc = None  # type: ignore[assignment]   # the old buffer goes before the new one comes
        buf = ffi.new("char[]", cap)
        # buffer, size and a view whose slice is the bytes of a value: one
        # attribute read (a slice costs less than ffi.unpack's argument parsing)
        self.bc = (buf, cap, ffi.buffer(buf, cap))

    @property
    def buf(self) -> Any:
        return self.bc[0]

    @property
    def cap(self) -> int:
        return self.bc[1]

    def ensure(self, n: int) -> tuple[Any, int, Any]:
        """``(buffer, size, view)`` with room for ``n`` bytes."""
        if n > self.bc[1]:
            self._resize(max(n, 2 * self.bc[1]))
        return self.bc

    def trim(self) -> None:
        if self.bc[1] > LARGE_VALUE:
            self._resize(self.SIZE)


# Values at least this large are copied by C straight into the bytes object
# returned (one copy in memory, not a buffer plus a copy of it).
LARGE_VALUE = 1 << 20

buffers = _Buffers()


def as_bytes(obj: BytesLike, what: str) -> bytes:
    """bytes of a bytes-like or str ``obj`` (str is encoded as UTF-8)."""
    t = type(obj)   # mypy does not narrow obj through t: hence the ignores
    if t is bytes:
        return obj  # type: ignore[return-value]
    if t is str:
        return obj.encode("utf-8")  # type: ignore[union-attr]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return str(obj).encode("utf-8")
    raise TypeError(f"{what} must be bytes, bytearray, memoryview or str, not {t.__name__}")


def as_key(obj: BytesLike, max_key: int) -> bytes:
    key = as_bytes(obj, "key")
    if not 0 < len(key) <= max_key:
        if not key:
            raise ValueError("empty key")
        raise ValueError(f"key of {len(key)} bytes is longer than the maximum of {max_key}")
    return key


def as_value(obj: BytesLike) -> tuple[Any, int]:
    """``(value, length)`` for C: bytes as is; a C-contiguous bytearray or
    memoryview without a copy, as an ``ffi.from_buffer`` object that the
    caller releases (``ffi.release``) as soon as the call returns -- a view
    kept alive by a traceback can otherwise be cleared by the garbage
    collector under it."""
    t = type(obj)   # mypy does not narrow obj through t: hence the ignore
    if t is bytes:
        return obj, len(obj)
    if t is str:
        b = obj.encode("utf-8")  # type: ignore[union-attr]
        return b, len(b)
    if isinstance(obj, (bytearray, memoryview)):
        with memoryview(obj) as mv:
            if not mv.c_contiguous:
                b = mv.tobytes()
                return b, len(b)
            n = mv.nbytes
        return ffi.from_buffer("char[]", obj), n
    if isinstance(obj, (bytes, str)):
        return as_value(bytes(obj) if isinstance(obj, bytes) else str(obj))
    raise TypeError(f"value must be bytes, bytearray, memoryview or str, not {t.__name__}")


def read_value(fn: Callable[[Any, bytes, int, Any, int], int], handle: Any, key: bytes, n: int,
               path: str | bytes) -> bytes | _Missing:
    """The value of ``key`` through ``fn(handle, key, klen, out, cap)``
    (kvm_get or kvm_env_get) when it is ``n`` bytes, more than the thread's
    buffer holds; MISSING if it is gone (kvm_env_get reads the newest state,
    which may change between two calls)."""
    while True:
        if n >= LARGE_VALUE:
            # A fresh bytes object nobody else has seen yet, filled in place:
            # what a C extension does with PyBytes_FromStringAndSize(NULL, n).
            out = bytes(n)
            with ffi.from_buffer(out) as dst:
                got = fn(handle, key, len(key), dst, n)
            if got == n:
                return out
        else:
            buf, cap, view = buffers.ensure(n)
            got = fn(handle, key, len(key), buf, cap)
            if 0 <= got <= cap:
                return cast(bytes, view[:got])
        if got == lib.KVM_NOTFOUND:
            return MISSING
        if got < 0:
            raise error_for(got, path)
        n = got          # it changed size meanwhile: read it again at its size
