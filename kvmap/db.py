"""The database handle: ``kvmap.open(path, ...)``.

A :class:`Database` is a ``MutableMapping`` of bytes to bytes in key order.
Single operations run in their own transaction; ``db.transaction()`` groups
writes (one writer at a time, others wait), ``db.snapshot()`` gives a stable
read view.  Reads never wait for the writer and never block it.

The options, the writer lock (one write transaction at a time per handle;
others wait) and error translation live here.  Everything a transaction
does per operation and per commit is C: the B+tree, the free space (which
pages a transaction may reuse), the growth of the file (geometric steps of
half the file, between ``GROW_MIN`` and ``GROW_MAX``, by ``posix_fallocate``
before any new page is touched) and the commit.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from collections.abc import MutableMapping
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, NamedTuple, TypedDict, TypeVar, Union,
                    overload)

from ._lib import MISSING, BytesLike, error_for, ffi, fork_generation, lib
from .errors import ClosedError, DiskFullError, IOFailure, LockedError, ReadOnlyError, os_error
from .txn import Snapshot, Transaction, _checked, _Closing, _Reads, _Updates, scan

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

_T = TypeVar("_T")
_K = TypeVar("_K", bound=BytesLike)
_V = TypeVar("_V", bound=BytesLike)
# What open() takes as the file's path (os.fspath of it is Database.path).
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

BACKENDS = {"mmap": lib.KVM_BACKEND_MMAP, "pread": lib.KVM_BACKEND_PREAD}
GROWTH = {"reserve": lib.KVM_GROW_RESERVE, "mremap": lib.KVM_GROW_MREMAP, "remap": lib.KVM_GROW_REMAP}
GROW_MIN = 1 << 20      # bytes the file grows by at least (read at open)
GROW_MAX = 1 << 30      # and at most
SYNC_BYTES = 64 << 20   # sync=False: flush after this many bytes (docs/ARCHITECTURE.md §2)
SYNC_INTERVAL = None    # or at a commit this many seconds after the last flush (None: never)
WRITER_POLL_MIN = 0.0002   # seconds between looks at another handle's writer lock, doubling
WRITER_POLL_MAX = 0.005    # up to this


# dbm's flags: (readonly, create, new)
FLAGS = {"r": (True, False, False), "w": (False, False, False), "c": (False, True, False),
         "n": (False, True, True)}


class SyscallStats(TypedDict):
    """``stats()["syscalls"]``: calls the C core made, process-wide."""
    pread: int
    pwrite: int
    fdatasync: int
    fallocate: int
    mmap: int
    mremap: int
    munmap: int
    madvise: int
    punch: int   #: free runs punched out of the file (disk given back, README "Space")
    pwrite_bytes: int   #: bytes the pwrite calls wrote (pages and metas)


class Reader(NamedTuple):
    """A live snapshot of some process on the database (:meth:`Database.readers`)."""
    txnid: int     #: the commit it sees: pages freed after it are not reused while it lives
    pid: int       #: its process
    thread: int    #: its thread, as ``threading.get_native_id()`` gives it in that process


class Stats(TypedDict):
    """What :meth:`Database.stats` returns."""
    entries: int
    depth: int
    page_size: int
    pages: int
    txnid: int
    meta_slot: int
    meta_fallback: bool
    durable_txnid: int
    flushing_txnid: int | None
    unsynced_bytes: int
    file_size: int
    used_pages: int
    free_pages: int
    pending_pages: int
    pinned_pages: int | None
    oldest_snapshot: int | None
    allocated_bytes: int | None
    given_back_bytes: int | None
    backend: str
    growth: str | None
    writemap: bool
    sync: bool
    verify_checksums: bool
    readahead: bool | None
    map_base: int
    map_length: int
    map_size: int
    cache_hits: int
    cache_misses: int
    failed: bool
    syscalls: SyscallStats


def open(path: PathLike, flag: Literal["r", "w", "c", "n"] | None = None, mode: int = 0o666, *,
         readonly: bool | None = None, create: bool | None = None, page_size: int | None = None,
         backend: Literal["mmap", "pread"] = "mmap",
         growth: Literal["reserve", "mremap", "remap"] = "reserve", writemap: bool = False,
         sync: bool = True, map_size: int = 1 << 40, cache_size: int = 64 << 20, max_readers: int = 126,
         verify_checksums: bool | None = None, sync_bytes: int = SYNC_BYTES,
         sync_interval: float | None = SYNC_INTERVAL, readahead: bool | None = None) -> Database:
    """Open (or create) the database file at ``path``.

    ``kvmap.open(path, flag, mode)`` takes ``dbm.open``'s arguments, so kvmap
    stands in for dbm (and under ``shelve.Shelf``):

    >>> import kvmap, shelve, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "shelf.kv")
    >>> with shelve.Shelf(kvmap.open(path, "c")) as shelf:
    ...     shelf["point"] = {"x": 1, "y": 2}
    >>> with shelve.Shelf(kvmap.open(path, "r")) as shelf:
    ...     shelf["point"]
    {'x': 1, 'y': 2}

    :param flag: ``"r"`` read-only; ``"w"`` read-write, the file must exist;
        ``"c"`` read-write, created if missing (the default); ``"n"`` a new,
        empty database: an existing file is truncated, once the lock shows no
        other handle has it open.
    :param mode: permissions of a file created, under the umask.
    :param readonly: no writes; the file is opened O_RDONLY (the default
        follows ``flag``; given with a flag, they must agree).
    :param create: create the file if it does not exist (likewise).
    :param page_size: bytes per page for a new file (power of two, 4096 to
        65536; default 4096).  For an existing file, None accepts its page
        size and any other value must match it (else FormatError).
    :param backend: ``"mmap"`` (read pages through one shared mapping) or
        ``"pread"`` (pread/pwrite with a page cache of ``cache_size`` bytes).
    :param growth: how the mapping grows: ``"reserve"`` (reserve ``map_size``
        bytes of address space at open, map new file pieces into it; the base
        never moves), ``"mremap"`` or ``"remap"`` (munmap + mmap).
    :param writemap: write new pages through a writable map instead of pwrite
        (the map is read-only otherwise, so stray writes fault).
    :param sync: True: a commit that returned survives power loss (one
        ``fdatasync`` per commit).  False: commits do not wait for the disk;
        they survive a killed process, and after a power loss the database
        opens to a commit at or after the last flush (README "Durability").
    :param sync_bytes: with ``sync=False``, a commit that leaves this many
        bytes written since the last flush (default 64 MiB) starts a flush
        in the background and returns; one that leaves twice this many
        flushes and waits.  It also bounds what open verifies after a crash:
        a commit larger than four times this syncs its pages before its meta.
    :param sync_interval: with ``sync=False``, a commit made this many
        seconds after the last flush starts one in the background (default
        None: never).  Commits are the only clock: an idle database flushes
        at the next commit, ``sync()`` or ``close()``.
    :param map_size: bytes of address space reserved for ``growth="reserve"``
        (not memory, not disk); the file cannot grow past it.
    :param cache_size: bytes of page cache of the ``pread`` backend.
    :param max_readers: snapshot slots shared by every process (each live snapshot
        or iterator takes one); the first handle to open the file sets the number.
    :param readahead: ``mmap`` backend: let the kernel read ahead around a
        page fault (its default advice), as py-lmdb's ``readahead=True``; a
        cold database then comes into memory in large reads.  False gives the
        mapping ``MADV_RANDOM``: one page per fault, for a database much larger
        than memory read at random.  None (default): on, except with
        ``writemap`` (docs/ARCHITECTURE.md §2 gives the figures).
    :param verify_checksums: check the checksum of every page a read visits
        (a damaged page raises CorruptionError naming it).  None: the
        backend's default -- on for ``pread`` (checked once, when a page
        enters the cache), off for ``mmap`` (it would check a page at every
        visit; README gives the measured cost).  Pages a write copies are
        always checked.
    """
    return _opened(Database, path, flag, mode, readonly=readonly, create=create, page_size=page_size,
                   backend=backend, growth=growth, writemap=writemap, sync=sync, map_size=map_size,
                   cache_size=cache_size, max_readers=max_readers, verify_checksums=verify_checksums,
                   sync_bytes=sync_bytes, sync_interval=sync_interval, readahead=readahead)


_D = TypeVar("_D", bound="Database")


def _opened(cls: type[_D], path: PathLike, flag: str | None, mode: int, *, readonly: bool | None,
            create: bool | None, **options: Any) -> _D:
    """:func:`open` into a Database class of the caller's (kvmap.dbm's)."""
    if flag is not None and flag not in FLAGS:
        raise ValueError(f"flag must be one of 'r', 'w', 'c', 'n', not {flag!r}")
    flag_readonly, flag_create, new = FLAGS[flag or "c"]
    for name, given, implied in (("readonly", readonly, flag_readonly), ("create", create, flag_create)):
        if flag is not None and given is not None and bool(given) != implied:
            raise ValueError(f"flag {flag!r} and {name}={given!r} disagree")
    readonly = flag_readonly if readonly is None else bool(readonly)
    create = flag_create if create is None else bool(create)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits (0 to 0o7777), not {mode!r}")
    return cls(os.fspath(path), readonly=readonly, create=create, new=new, mode=mode, **options)


class Database(_Closing, _Reads, _Updates, MutableMapping[bytes, bytes]):
    """An open kvmap database (see :func:`open`).

    Threads may share it; ``close()`` from any thread makes every operation
    in flight elsewhere either complete or raise ClosedError.  After
    ``fork()`` it belongs to the parent: in the child every use raises
    InheritedHandleError, and closing it there (or the child's exit) leaves
    the parent's lock, mapping and file alone.  It cannot be copied or
    pickled."""

    def __init__(self, path: str | bytes, *, readonly: bool, create: bool, page_size: int | None,
                 backend: str, growth: str, writemap: bool, sync: bool, map_size: int, cache_size: int,
                 max_readers: int, verify_checksums: bool | None = None, new: bool = False,
                 mode: int = 0o666, sync_bytes: int = SYNC_BYTES, sync_interval: float | None = SYNC_INTERVAL,
                 readahead: bool | None = None) -> None:
        self._h: Any = None
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, not {backend!r}")
        if growth not in GROWTH:
            raise ValueError(f"growth must be one of {sorted(GROWTH)}, not {growth!r}")
        if page_size is not None and (not isinstance(page_size, int) or page_size < 4096
                                      or page_size > 65536 or page_size & (page_size - 1)):
            raise ValueError("page_size must be a power of two from 4096 to 65536")
        if not 1 <= max_readers <= 1 << 20:
            raise ValueError("max_readers must be between 1 and 2**20")
        if not isinstance(sync_bytes, int) or sync_bytes < 4096:
            raise ValueError(f"sync_bytes must be an int of at least 4096, not {sync_bytes!r}")
        if sync_interval is not None and not (isinstance(sync_interval, (int, float)) and 0 < sync_interval < 1e9):
            raise ValueError(f"sync_interval must be a positive number of seconds or None, not {sync_interval!r}")
        self.path = path
        self.backend = backend
        self.growth: str | None = growth if backend == "mmap" else None
        self.writemap = bool(writemap) and backend == "mmap" and not readonly
        self.readonly = readonly
        self._sync = bool(sync)
        self.verify_checksums = backend == "pread" if verify_checksums is None else bool(verify_checksums)
        self.readahead = None if backend != "mmap" else not self.writemap if readahead is None else bool(readahead)
        opt = ffi.new("kvm_options *")
        opt.page_size = page_size or 0
        opt.backend = BACKENDS[backend]
        opt.growth = GROWTH[growth]
        opt.flags = ((lib.KVM_OPEN_READONLY if readonly else 0) | (lib.KVM_OPEN_CREATE if create else 0)
                     | (lib.KVM_OPEN_WRITEMAP if self.writemap else 0)
                     | (lib.KVM_OPEN_VERIFY if self.verify_checksums else 0)
                     | (lib.KVM_OPEN_NEW if new else 0)
                     | (lib.KVM_OPEN_RANDOM if self.readahead is False else 0))
        opt.mode = mode
        opt.map_size = map_size
        opt.max_readers = max_readers
        opt.cache_bytes = cache_size
        opt.grow_min = GROW_MIN
        opt.grow_max = GROW_MAX
        opt.sync_bytes = sync_bytes
        opt.sync_interval_ms = 0 if sync_interval is None else max(1, round(sync_interval * 1000))
        if not create and not os.path.exists(path):
            raise os_error(errno.ENOENT, "opening the database file (create=False)", path)
        self._fork_gen = fork_generation[0]
        self._wlock = threading.Lock()   # held by the write transaction for its life
        self._writer: int | None = None  # thread id of the write transaction's owner
        out = ffi.new("kvm_env **")
        rc = lib.kvm_env_open_released(os.fsencode(path), opt, out)
        if rc:
            raise error_for(rc, path)
        env = ffi.gc(out[0], lib.kvm_env_release)
        st = ffi.new("kvm_stat *")
        lib.kvm_env_stat(env, st)
        self.page_size: int = st.page_size
        self._max_key: int = lib.kvm_env_max_key(env)
        self._h = env

    # ----------------------------------------------------------- lifecycle

    @property
    def max_key_size(self) -> int:
        """Longest key in bytes (1000 at 4096-byte pages)."""
        return self._max_key

    def close(self) -> None:
        """Close the database (idempotent).  Waits for the C calls other
        threads have in flight; afterwards every use of it, of its snapshots,
        iterators and of an open write transaction raises ClosedError (the
        transaction is aborted: nothing of it was written).  Commits made
        with ``sync=False`` are flushed first (without waiting for another
        handle's write transaction: that handle then marks them durable); if
        that fails, the database is closed all the same and IOFailure is
        raised."""
        h = self._h
        if h is None:
            return
        rc = 0 if self.readonly or self._forked() else lib.kvm_env_sync_released(h, 0)
        self._h = None
        lib.kvm_env_close_released(h)
        if rc and rc not in (lib.KVM_CLOSED, lib.KVM_FAILED):
            raise error_for(rc, self.path)

    _end = close

    @property
    def _path(self) -> str | bytes:   # what _Reads and its errors name, as Snapshot's and Transaction's
        return self.path

    def _forked(self) -> bool:
        return self._fork_gen != fork_generation[0]

    def __repr__(self) -> str:
        h = self._h
        n = -1 if h is None else lib.kvm_env_entries(h)
        mode = "read-only" if self.readonly else "read-write"
        state = f"{n} entries" if n >= 0 else "closed"
        return f"<kvmap.Database {self.path!r} {self.backend} {mode} {state}>"

    # --------------------------------------------------------------- reads

    _getfn = lib.kvm_env_get
    _closed_msg = "database is closed"

    def _count(self) -> int:
        return _checked(lib.kvm_env_entries(self._handle()), self.path)

    def _scan(self, mode: int, key: bytes | None, stop: bytes | None, flags: int,
              keys_only: bool) -> Iterator[Any]:
        return scan(Snapshot(self), mode, key, stop, flags, keys_only, own_snapshot=True)

    def _with_handle(self, fn: Callable[[Any], _T]) -> _T:
        with Snapshot(self) as snap:
            return fn(snap._handle())

    def snapshot(self) -> Snapshot:
        """A read-only view that stays as it is now (see :class:`Snapshot`)."""
        return Snapshot(self)

    # -------------------------------------------------------------- writes

    def transaction(self, timeout: float | None = None) -> Transaction:
        """The write transaction; waits up to ``timeout`` seconds (None:
        forever) for another writer to finish, else LockedError."""
        return Transaction(self, timeout)

    def __setitem__(self, key: BytesLike, value: BytesLike) -> None:
        with Transaction(self) as txn:
            txn.put(key, value)

    def put(self, key: BytesLike, value: BytesLike, overwrite: bool = True) -> bool:
        """Insert, or overwrite unless ``overwrite`` is false, in one
        transaction; returns whether it wrote."""
        with Transaction(self) as txn:
            return txn.put(key, value, overwrite)

    @overload
    def setdefault(self, key: BytesLike, default: None = None) -> bytes: ...
    @overload
    def setdefault(self, key: BytesLike, default: _V) -> bytes | _V: ...

    def setdefault(self, key: BytesLike, default: BytesLike | None = None) -> BytesLike:
        """``db[key]`` if present, else store ``default`` and return it: one
        transaction, so no other writer comes in between."""
        with Transaction(self) as txn:
            # (Transaction's is MutableMapping's, taking what its [] takes)
            return txn.setdefault(key, default)  # type: ignore[arg-type]

    def popitem(self) -> tuple[bytes, bytes]:
        """Remove and return the first (key, value) in key order, in one
        transaction; KeyError if the database is empty."""
        with Transaction(self) as txn:
            return txn.popitem()

    def __delitem__(self, key: BytesLike | slice) -> None:
        """``del db[key]``, or ``del db[lo:hi]`` (the keys from lo up to hi,
        hi excluded), in one transaction."""
        with Transaction(self) as txn:
            del txn[key]

    def delete_range(self, minimum: BytesLike | None = None, maximum: BytesLike | None = None,
                     inclusive: tuple[bool, bool] = (True, True)) -> int:
        """Delete the keys ``irange(minimum, maximum, inclusive)`` gives, in one
        transaction and one C call; returns how many."""
        with Transaction(self) as txn:
            return txn.delete_range(minimum, maximum, inclusive)

    def _update(self, /, *args: Any, **kwargs: BytesLike) -> None:
        with Transaction(self) as txn:
            txn._update(*args, **kwargs)

    @overload
    def pop(self, key: BytesLike) -> bytes: ...
    @overload
    def pop(self, key: BytesLike, default: _T) -> bytes | _T: ...

    def pop(self, key: BytesLike, default: object = MISSING) -> object:
        with Transaction(self) as txn:
            v = txn.get(key, MISSING)
            if v is MISSING:
                if default is MISSING:
                    raise KeyError(key)
                return default
            txn.delete(key)
            return v

    def clear(self) -> None:
        """Delete every entry, in one transaction and one C call."""
        self.delete_range()

    # ------------------------------------------------ transaction plumbing

    def _begin_write(self, txn: Transaction, timeout: float | None) -> None:
        env = self._handle()
        rc = lib.kvm_env_usable(env)   # closed, or inherited across fork: before any wait
        if rc:
            raise error_for(rc, self.path)
        if self.readonly:
            raise ReadOnlyError(f"{os.fsdecode(self.path)}: database is open read-only")
        if self._writer == threading.get_ident():
            raise LockedError("this thread already holds the open write transaction: write through it")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wlock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockedError(f"timed out after {timeout} s waiting for the write lock")
        try:
            out = ffi.new("kvm_txn **")
            pause = WRITER_POLL_MIN
            while (rc := lib.kvm_txn_begin(self._handle(), 1, out)) == lib.KVM_BUSY:
                # Another handle (in this process or another) is writing: the
                # writer lock is an fcntl lock, polled so that the wait has a
                # timeout and lets other threads run.
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise LockedError(f"{os.fsdecode(self.path)}: timed out after {timeout} s waiting for another "
                                      f"handle's write transaction")
                time.sleep(pause)
                pause = min(pause * 2, WRITER_POLL_MAX)
            if rc:
                raise error_for(rc, self.path)
        except BaseException:
            self._wlock.release()
            raise
        txn._h = ffi.gc(out[0], lib.kvm_txn_release)
        self._writer = threading.get_ident()

    def _end_write(self, txn: Transaction) -> None:
        """``txn`` ended in C (committed, or aborted by this call's caller):
        let the next writer in."""
        txn._h = None
        self._writer = None
        self._wlock.release()

    def _abort(self, txn: Transaction) -> None:
        h = txn._h
        if h is None:
            return
        if self._forked():
            txn._h = None   # the parent's: its write lock is not the child's to release
            return
        # kvm_txn_abort says whether this call ended it: of two threads
        # aborting (or a commit and an abort), one lets the next writer in.
        if lib.kvm_txn_abort(h):
            self._end_write(txn)

    def _commit(self, txn: Transaction) -> None:
        h = txn._h
        if h is None:
            raise ClosedError(f"{os.fsdecode(self.path)}: transaction is finished")
        # Only a syncing commit waits on the disk long enough to be worth
        # letting other threads run (and waiting to get the GIL back).
        commit = lib.kvm_txn_commit_released if self._sync else lib.kvm_txn_commit
        rc = commit(h, self._sync)
        if rc:
            exc = error_for(rc, self.path)
            try:
                self._abort(txn)
                raise exc
            finally:
                del exc
        self._end_write(txn)

    def sync(self) -> None:
        """Make every commit so far durable now (``fdatasync``), as dbm's and
        shelve's ``sync()``.  With ``sync=True`` they already are; with
        ``sync=False`` a power loss right after this returns keeps them, and
        commits made later are under ``sync=False``'s promise again (README
        "Durability").  A failed sync raises IOFailure and, as in a commit,
        the handle then refuses writes until reopened.  A no-op read-only."""
        rc = lib.kvm_env_sync_released(self._handle(), 1)
        if rc:
            raise error_for(rc, self.path)

    def warm(self) -> None:
        """Read the whole database into the operating system's page cache
        and return once it is there, for a process that is about to read
        most of it: large sequential reads instead of one read per page
        visited.  It costs memory the kernel may reclaim later, nothing on
        disk; the contents do not change.  Works with every backend (with
        ``pread`` it fills the OS cache, not the ``cache_size`` one)."""
        rc = lib.kvm_env_warm_released(self._handle())
        if rc:
            raise error_for(rc, self.path)

    # ---------------------------------------------------------------- copy

    def copy(self, path: PathLike, compact: bool = False, *, overwrite: bool = False) -> int:
        """Write a consistent copy of the database to a new file at ``path``:
        an online backup.  It copies one snapshot (the newest commit when
        it begins), which, like any reader, never waits for writers and
        never blocks them: writers in this and other processes go on
        committing while it runs.  Returns the transaction id copied.

        ``compact=False``: a page-for-page copy of the snapshot's commit --
        every page it reaches (tree, overflow chains, free-space pages and
        commit records) at its page number, each verified against its
        checksum on the way, so damage stops the copy instead of being
        passed on.  The copy is as large as the database's high-water mark,
        and opens as that commit, sealed (nothing to verify, nothing to
        fall back to).  ``compact=True``: the pairs written in key order
        into a new database in one transaction: leaves about 98% full, no
        free pages, the file cut to its last page, so it is as small as the
        data allows (``stats()`` says when that is worth it).  A page copy
        runs at the disk's speed; a compact one costs as much as loading
        the pairs.  The copy keeps the source's page size and permission
        bits (under the umask).

        The copy is written to a temporary file beside ``path``
        (``<path>.copy-<pid>-<random>``), synced, then renamed to ``path``
        and the directory synced: a crash or an error never leaves a half
        copy at ``path`` (a crash may leave the temporary file).  An
        existing ``path`` raises FileExistsError unless ``overwrite`` is
        true; then it is replaced at once, in one rename (do not replace a
        database that handles still have open: they keep the old file).
        A missing directory raises FileNotFoundError, a full disk
        DiskFullError; either way nothing is left at ``path``, and the
        source is untouched.  While the copy runs, the pages writers free
        are not reused (the snapshot holds them), so a database written
        hard grows by them meanwhile.
        """
        dest = os.fsdecode(os.fspath(path))
        if os.path.lexists(dest):
            if os.path.exists(dest) and os.path.samefile(dest, self.path):
                raise ValueError(f"{dest}: cannot copy the database onto itself")
            if not overwrite:
                raise os_error(errno.EEXIST, "copying the database: the destination exists "
                                             "(overwrite=True replaces it)", dest)
        tmp = f"{dest}.copy-{os.getpid()}-{secrets.token_hex(4)}"
        with Snapshot(self) as snap:
            txnid = snap._state()["txnid"]
            if compact:
                self._copy_compact(snap, tmp, dest)
            else:
                rc = lib.kvm_txn_copy_released(snap._handle(), os.fsencode(tmp))
                if rc:   # an errno's filename is the copy's; damage and closing are the database's
                    raise error_for(rc, dest if rc in (lib.KVM_IO, lib.KVM_DISKFULL) else self.path)
        rc = lib.kvm_file_install_released(os.fsencode(tmp), os.fsencode(dest), int(overwrite))
        if rc:
            raise error_for(rc, dest)
        return txnid

    def _copy_compact(self, snap: Snapshot, tmp: str, dest: str) -> None:
        """The pairs of ``snap``, in key order, into a new database at ``tmp``
        in one transaction -- so no page is freed, and the leaves fill as a
        sequential load fills them -- synced and cut to its high-water mark.
        Through a writable map: the transaction's pages are built in the
        file's page cache, not in memory of this process, however large the
        database."""
        mode = os.stat(self.path).st_mode & 0o777
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)  # the name is ours
        except OSError as e:
            raise os_error(e.errno, "creating the copy", dest) from None
        os.close(fd)
        try:
            with open(tmp, "c", page_size=self.page_size, writemap=True) as dst:
                with dst.transaction() as txn:
                    txn.put_many(snap.items())
                pages = dst.stats()["pages"]
            # The file grew in steps (a growth overshoots); a copy is done growing.
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, pages * self.page_size)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise os_error(e.errno, "cutting the copy to its size", dest,
                               DiskFullError if e.errno in (errno.ENOSPC, errno.EDQUOT) else IOFailure) from None
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        finally:
            try:
                os.unlink(tmp + "-lock")   # the temporary name's: the copy's first opener makes its own
            except FileNotFoundError:
                pass

    # --------------------------------------------------------------- stats

    def readers(self) -> list[Reader]:
        """The live snapshots (and iterators) of every process on this
        database, oldest commit first: what holds freed pages back from
        reuse, as py-lmdb's ``env.readers()`` or ``mdb_stat -r`` tell.  A
        picture of a moment; a reader of a process that died is cleared by
        the next write transaction.  O(max_readers)."""
        cap = 64
        while True:
            out = ffi.new("kvm_reader[]", cap)
            n = lib.kvm_env_readers(self._handle(), out, cap)
            if n < 0:
                raise error_for(n, self.path)
            if n <= cap:
                return sorted(Reader(r.txnid, r.pid, r.thread) for r in out[0:n])
            cap = n

    def stats(self) -> Stats:
        """Figures of the committed state and of the file and mapping.

        The space figures, for deciding whether a compact copy
        (``copy(path, compact=True)``) is worth it (README "Space"):

        * ``pages``: the high-water mark, pages ``[0, pages)`` of the file
          are the database; ``used_pages`` of them are the newest commit's
          (tree, overflow chains, free-space pages, the three metas);
        * ``free_pages``: reusable now; ``pending_pages``: freed by recent
          commits and not reusable yet (a live snapshot may read them, or,
          with ``sync=False``, the last flushed commit uses them); so
          ``pages = used_pages + free_pages + pending_pages``;
        * ``pinned_pages``: those pending pages that live snapshots (of any
          process) hold back: freed after the oldest snapshot's commit
          (``oldest_snapshot``, None without one);
        * ``file_size``; ``allocated_bytes``, the disk the file holds; and
          ``given_back_bytes``, the part of it that is holes: free runs
          punched out of the file (``syscalls["punch"]`` counts the punches).

        Durability: ``durable_txnid``, the newest commit known on disk;
        ``flushing_txnid``, the commit a background flush (``sync=False``)
        is making durable, None when none runs; ``unsynced_bytes``, what
        was written since the last flush.

        ``pinned_pages``, ``allocated_bytes`` and ``given_back_bytes`` are
        read from the file (the commit records, ``fstat``): None when that
        read fails, or, for ``pinned_pages``, when every reader slot is
        taken (counting them takes a snapshot).  stats() raises only on a
        closed handle.

        The leaf fill factor (bytes of the leaves in use over their
        capacity) takes reading every leaf: ``kvmap.check(path)`` reports it
        (``summary["fill_factor"]``; about 0.98 after a load in key order
        or a compact copy).

        ``syscalls`` counts the calls the C core made, process-wide (all open
        databases together).  Costs a snapshot, an ``fstat`` and, while a
        snapshot older than the newest commit lives, a read of the commit
        records since it."""
        st = ffi.new("kvm_stat *")
        h = self._handle()
        rc = lib.kvm_env_stat(h, st)
        if rc:
            raise error_for(rc, self.path)
        space = ffi.new("kvm_spacestat *")
        rc = lib.kvm_env_space(h, space)
        if rc:
            raise error_for(rc, self.path)
        none = 2**64 - 1   # kvm_spacestat's "not known" and "none"
        return {
            "entries": st.entries, "depth": st.depth, "page_size": st.page_size, "pages": st.hwm,
            "txnid": st.txnid, "meta_slot": st.meta_slot, "meta_fallback": bool(st.meta_fallback),
            "durable_txnid": st.durable, "flushing_txnid": st.flushing or None,
            "unsynced_bytes": st.unsynced_bytes,
            "file_size": st.file_size,
            "used_pages": st.hwm - st.free_count - st.pending_count,
            "free_pages": st.free_count, "pending_pages": st.pending_count,
            "pinned_pages": None if space.pinned_pages == none else space.pinned_pages,
            "oldest_snapshot": None if space.oldest_reader == none else space.oldest_reader,
            "allocated_bytes": None if space.allocated == none else space.allocated,
            "given_back_bytes": None if space.allocated == none else max(0, space.file_size - space.allocated),
            "backend": self.backend, "growth": self.growth, "writemap": self.writemap, "sync": self._sync,
            "verify_checksums": self.verify_checksums, "readahead": self.readahead,
            "map_base": st.map_base, "map_length": st.map_length, "map_size": st.map_reserved,
            "cache_hits": st.cache_hits, "cache_misses": st.cache_misses, "failed": bool(st.failed),
            "syscalls": {"pread": st.n_pread, "pwrite": st.n_pwrite, "fdatasync": st.n_fdatasync,
                         "fallocate": st.n_fallocate, "mmap": st.n_mmap, "mremap": st.n_mremap,
                         "munmap": st.n_munmap, "madvise": st.n_madvise, "punch": st.n_punch,
                         "pwrite_bytes": st.n_pwrite_bytes},
        }

    def _check(self) -> None:
        """Assert internal invariants (for tests): the free space is
        consistent, and the tree holds as many keys, in strictly increasing
        order, as its entry count says."""
        rc = lib.kvm_env_check(self._handle())
        assert rc == 0, error_for(rc, self.path)
        with self.snapshot() as snap:
            prev = None
            n = 0
            for k in snap:
                assert prev is None or prev < k, (prev, k)
                prev = k
                n += 1
            assert n == len(snap), (n, len(snap))
            # the snapshot's commit, not the newest: another process may have
            # grown the file since, which this handle has not looked at yet
            assert snap._state()["hwm"] <= self.stats()["file_size"] // self.page_size
