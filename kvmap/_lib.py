"""The boundary to the C core: the cffi module, error translation, and the
conversions of keys and values that every public method shares.

Calls are shaped for the cffi boundary (``research/cffi-boundary.md``): one C
call per operation, results copied by C into a per-thread buffer (cffi
releases the GIL during every call, so a shared buffer would race), and the
returned length is the only out-value.
"""

import threading

from ._kvmap_cffi import ffi, lib
from . import errors

MISSING = object()

_CODES = {
    lib.KVM_CORRUPT: errors.CorruptionError,
    lib.KVM_FORMAT: errors.FormatError,
    lib.KVM_DISKFULL: errors.DiskFullError,
    lib.KVM_MAPFULL: errors.MapFullError,
    lib.KVM_READONLY: errors.ReadOnlyError,
    lib.KVM_FAILED: errors.FailedError,
    lib.KVM_READERS_FULL: errors.ReadersFullError,
    lib.KVM_INVALID: ValueError,
    lib.KVM_LOCKED: errors.LockedError,
}


def runs_array(runs):
    """A ``uint64_t[]`` of page runs ``[(start, count), ...]`` flattened, as
    the C calls that take runs want it."""
    return ffi.new("uint64_t[]", [x for run in runs for x in run])


def error_for(rc):
    """The exception for C return code ``rc`` (with the C side's message)."""
    msg = ffi.string(lib.kvm_errmsg()).decode("utf-8", "replace")
    if rc == lib.KVM_NOMEM:
        return MemoryError(msg)
    if rc == lib.KVM_IO:
        en = lib.kvm_errno()
        return errors.IOFailure(en, msg)
    return _CODES.get(rc, errors.Error)(msg or f"kvmap C core error {rc}")


class _Buffers(threading.local):
    """Per-thread output buffer for values and cursor records."""

    def __init__(self):
        self.cap = 1 << 16
        self.buf = ffi.new("char[]", self.cap)

    def ensure(self, n):
        if n > self.cap:
            cap = max(n, 2 * self.cap)
            self.buf = ffi.new("char[]", cap)
            self.cap = cap
        return self.buf


buffers = _Buffers()


def as_bytes(obj, what):
    """bytes of a bytes-like or str ``obj`` (str is encoded as UTF-8)."""
    t = type(obj)
    if t is bytes:
        return obj
    if t is str:
        return obj.encode("utf-8")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return str(obj).encode("utf-8")
    raise TypeError(f"{what} must be bytes, bytearray, memoryview or str, not {t.__name__}")


def as_key(obj, max_key):
    key = as_bytes(obj, "key")
    if not 0 < len(key) <= max_key:
        if not key:
            raise ValueError("empty key")
        raise ValueError(f"key of {len(key)} bytes is longer than the maximum of {max_key}")
    return key


def as_value(obj):
    """A value for C: bytes as is; other buffers without a copy."""
    t = type(obj)
    if t is bytes:
        return obj, len(obj)
    if t is str:
        b = obj.encode("utf-8")
        return b, len(b)
    if isinstance(obj, (bytearray, memoryview)):
        mv = memoryview(obj)
        if not mv.c_contiguous:
            b = mv.tobytes()
            return b, len(b)
        return ffi.from_buffer("char[]", mv), mv.nbytes
    if isinstance(obj, (bytes, str)):
        return as_value(bytes(obj) if isinstance(obj, bytes) else str(obj))
    raise TypeError(f"value must be bytes, bytearray, memoryview or str, not {t.__name__}")


def read_value(fn, handle, key):
    """Run ``fn(handle, key, klen, buf, cap)`` (kvm_get or kvm_env_get) and
    return the value as bytes, or MISSING."""
    tl = buffers
    while True:
        n = fn(handle, key, len(key), tl.buf, tl.cap)
        if n >= 0:
            if n <= tl.cap:
                return ffi.unpack(tl.buf, n)
            tl.ensure(n)
            continue
        if n == lib.KVM_NOTFOUND:
            return MISSING
        raise error_for(n)
