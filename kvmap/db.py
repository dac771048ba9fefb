"""The database handle: ``kvmap.open(path, ...)``.

A :class:`Database` is a ``MutableMapping`` of bytes to bytes in key order.
Single operations run in their own transaction; ``db.transaction()`` groups
writes (one writer at a time, others wait), ``db.snapshot()`` gives a stable
read view.  Reads never wait for the writer and never block it.

Policy lives here: when the file grows (geometric steps of half the file,
between 1 MiB and 1 GiB, by ``posix_fallocate`` before any new page is
touched), which pages a transaction may reuse (``space.FreeSpace``), and
the writer lock.  The C core does the I/O.
"""

import os
import threading
import weakref
from collections.abc import MutableMapping

from ._lib import MISSING, error_for, ffi, lib, runs_array
from .errors import CorruptionError, LockedError, ReadOnlyError
from .space import FreeSpace
from .txn import Snapshot, Transaction, _Closing, _Reads, scan

BACKENDS = {"mmap": lib.KVM_BACKEND_MMAP, "pread": lib.KVM_BACKEND_PREAD}
GROWTH = {"reserve": lib.KVM_GROW_RESERVE, "mremap": lib.KVM_GROW_MREMAP, "remap": lib.KVM_GROW_REMAP}
GROW_MIN = 1 << 20
GROW_MAX = 1 << 30
# Released runs at least this long are madvise(DONTNEED)'d: they leave the
# process's resident set.  Shorter runs are left alone; churn reuses them at
# once and a madvise per page costs more than it saves.
ADVISE_MIN_RUN = 16


def open(path, *, readonly=False, create=True, page_size=None, backend="mmap", growth="reserve",
         writemap=False, sync=True, map_size=1 << 40, cache_size=64 << 20, max_readers=126):
    """Open (or create) the database file at ``path``.

    :param readonly: no writes; the file is opened O_RDONLY.
    :param create: create the file if it does not exist.
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
    :param sync: True: a commit that returned survives power loss.  False:
        skip fdatasync; a commit survives a killed process, not a power loss.
    :param max_readers: snapshot slots (each live snapshot or iterator takes one).
    """
    return Database(os.fspath(path), readonly=readonly, create=create, page_size=page_size,
                    backend=backend, growth=growth, writemap=writemap, sync=sync, map_size=map_size,
                    cache_size=cache_size, max_readers=max_readers)


class Database(_Closing, _Reads, MutableMapping):
    """An open kvmap database (see :func:`open`)."""

    def __init__(self, path, *, readonly, create, page_size, backend, growth, writemap, sync,
                 map_size, cache_size, max_readers):
        self._h = None
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, not {backend!r}")
        if growth not in GROWTH:
            raise ValueError(f"growth must be one of {sorted(GROWTH)}, not {growth!r}")
        if page_size is not None and (not isinstance(page_size, int) or page_size < 4096
                                      or page_size > 65536 or page_size & (page_size - 1)):
            raise ValueError("page_size must be a power of two from 4096 to 65536")
        if not 1 <= max_readers <= 1 << 20:
            raise ValueError("max_readers must be between 1 and 2**20")
        self.path = path
        self.backend = backend
        self.growth = growth if backend == "mmap" else None
        self.writemap = bool(writemap) and backend == "mmap" and not readonly
        self.readonly = readonly
        self.sync = bool(sync)
        opt = ffi.new("kvm_options *")
        opt.page_size = page_size or 0
        opt.backend = BACKENDS[backend]
        opt.growth = GROWTH[growth]
        opt.flags = ((lib.KVM_OPEN_READONLY if readonly else 0) | (lib.KVM_OPEN_CREATE if create else 0)
                     | (lib.KVM_OPEN_WRITEMAP if self.writemap else 0))
        opt.map_size = map_size
        opt.max_readers = max_readers
        opt.cache_bytes = cache_size
        if not create and not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        self._wlock = threading.Lock()
        self._writer = None
        self._live = weakref.WeakValueDictionary()   # id -> open snapshot or transaction
        try:
            self._open_env(opt)
        except CorruptionError:
            # A power loss after sync=False commits can leave the newest
            # meta's tree whole but its free list not: the state before that
            # commit is intact, so open it, as open does when the tree's edge
            # paths are damaged (FORMAT.md §2).
            if readonly or not self._nosync:
                raise
            opt.flags |= lib.KVM_OPEN_OLDER
            self._open_env(opt)

    def _open_env(self, opt):
        """Open the C environment and, for a writable handle, load the free
        list; on failure nothing stays open."""
        out = ffi.new("kvm_env **")
        self._nosync = False
        rc = lib.kvm_env_open_released(os.fsencode(self.path), opt, out)
        if rc:
            raise error_for(rc)
        env = out[0]
        st = ffi.new("kvm_stat *")
        lib.kvm_env_stat(env, st)
        self._nosync = bool(st.meta_nosync)
        self.page_size = st.page_size
        self._h = env
        self._max_key = lib.kvm_env_max_key(env)
        self._space = FreeSpace(self.page_size, st.hwm)
        self._file_pages = st.file_size // self.page_size
        if self.readonly:
            return
        try:
            page = ffi.new("char[]", self.page_size)

            def read_page(pgno, ptype):
                rc = lib.kvm_env_read_page(env, pgno, ptype, page)
                if rc:
                    raise error_for(rc)
                return ffi.buffer(page)[:]

            self._space.load(read_page, st.free_index, st.free_pending, st.free_count,
                             st.pending_count, st.pending_floor)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------- lifecycle

    @property
    def max_key_size(self):
        """Longest key in bytes (1000 at 4096-byte pages)."""
        return self._max_key

    def close(self):
        """Close the database: aborts an open write transaction, closes every
        snapshot and iterator (later use raises ClosedError).  Idempotent."""
        if self._h is None:
            return
        for obj in list(self._live.values()):
            obj._invalidate()
        lib.kvm_env_close_released(self._h)
        self._h = None

    def __repr__(self):
        state = "closed" if self._h is None else f"{len(self)} entries"
        return f"<kvmap.Database {self.path!r} {self.backend} {state}>"

    # --------------------------------------------------------------- reads

    _getfn = lib.kvm_env_get
    _closed_msg = "database is closed"

    def _count(self):
        return lib.kvm_env_entries(self._handle())

    def _scan(self, mode, key, stop, flags, keys_only):
        return scan(Snapshot(self), mode, key, stop, flags, keys_only, own_snapshot=True)

    def _with_handle(self, fn):
        with Snapshot(self) as snap:
            return fn(snap._handle())

    def snapshot(self):
        """A read-only view that stays as it is now (see :class:`Snapshot`)."""
        return Snapshot(self)

    # -------------------------------------------------------------- writes

    def transaction(self, timeout=None):
        """The write transaction; waits up to ``timeout`` seconds (None:
        forever) for another writer to finish, else LockedError."""
        return Transaction(self, timeout)

    def __setitem__(self, key, value):
        with Transaction(self) as txn:
            txn.put(key, value)

    def __delitem__(self, key):
        with Transaction(self) as txn:
            txn.delete(key)

    def update(self, *args, **kwargs):
        """As dict.update, in one transaction."""
        with Transaction(self) as txn:
            txn.update(*args, **kwargs)

    def pop(self, key, default=MISSING):
        with Transaction(self) as txn:
            v = txn.get(key, MISSING)
            if v is MISSING:
                if default is MISSING:
                    raise KeyError(key)
                return default
            txn.delete(key)
            return v

    def clear(self):
        """Delete every entry, in one transaction."""
        with Transaction(self) as txn:
            for k in list(txn.keys()):
                txn.delete(k)

    # ------------------------------------------------ transaction plumbing

    def _begin_write(self, txn, timeout):
        self._handle()
        if self.readonly:
            raise ReadOnlyError("database is open read-only")
        if self._writer == threading.get_ident():
            raise LockedError("this thread already holds the open write transaction: write through it")
        if not self._wlock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockedError(f"timed out after {timeout} s waiting for the write lock")
        try:
            env = self._handle()
            txnid = lib.kvm_env_txnid(env) + 1
            runs = self._space.release(min(lib.kvm_env_oldest_reader(env), txnid - 2))
            runs = [r for r in runs if r[1] >= ADVISE_MIN_RUN]
            if runs and self.backend == "mmap":
                lib.kvm_env_advise_free(env, runs_array(runs), len(runs))
            out = ffi.new("kvm_txn **")
            rc = lib.kvm_txn_begin(env, 1, out)
            if rc:
                raise error_for(rc)
            self._space.begin()
            txn._h = out[0]
            self._writer = threading.get_ident()
            self._live[id(txn)] = txn
        except BaseException:
            self._wlock.release()
            raise

    def _end_write(self, txn):
        txn._h = None
        self._writer = None
        self._live.pop(id(txn), None)
        self._wlock.release()

    def _abort(self, txn):
        lib.kvm_txn_abort(txn._h)
        self._space.rollback()
        self._end_write(txn)

    def _ensure_pages(self, pages):
        """Grow the file to hold ``pages`` pages: geometric steps, and the
        exact size if a step does not fit on the disk."""
        have = self._file_pages
        if pages <= have:
            return
        step = min(max(have * self.page_size // 2, GROW_MIN), GROW_MAX) // self.page_size
        target = max(pages, have + step)
        rc = lib.kvm_env_grow_released(self._h, target)
        if rc == lib.KVM_DISKFULL and target > pages:
            target = pages
            rc = lib.kvm_env_grow_released(self._h, target)
        if rc:
            raise error_for(rc)
        self._file_pages = target

    def _refill(self, txn, need):
        """Give the transaction's page pool at least ``need`` pages."""
        try:
            runs = self._space.take(max(need, 64))
            self._ensure_pages(self._space.hwm)
            rc = lib.kvm_txn_pool_add(txn._h, runs_array(runs), len(runs))
            if rc:
                raise error_for(rc)
        except BaseException:
            txn.abort()
            raise

    def _commit(self, txn):
        h = txn._h
        space = self._space
        if not lib.kvm_txn_dirty(h):   # nothing changed: nothing to write
            self._abort(txn)
            return
        try:
            p = ffi.new("uint64_t **")
            n = lib.kvm_txn_freed(h, p)
            freed = ffi.unpack(p[0], n) if n else []
            n = lib.kvm_txn_pool(h, p)
            leftovers = ffi.unpack(p[0], n) if n else []

            def write_page(pgno, ptype, nkeys, nxt, body):
                rc = lib.kvm_txn_write_page(h, pgno, ptype, nkeys, nxt, body, len(body))
                if rc:
                    raise error_for(rc)

            meta = space.prepare_commit(lib.kvm_txn_id(h), freed, leftovers, self._ensure_pages, write_page)
            # Only a syncing commit waits on the disk long enough to be worth
            # letting other threads run (and waiting to get the GIL back).
            commit = lib.kvm_txn_commit_released if self.sync else lib.kvm_txn_commit
            rc = commit(h, ffi.new("uint64_t[6]", meta), self.sync)
            if rc:
                raise error_for(rc)
        except BaseException:
            self._abort(txn)
            raise
        space.commit_done()
        self._end_write(txn)

    # --------------------------------------------------------------- stats

    def stats(self):
        """Figures of the committed state and of the file and mapping.

        ``syscalls`` counts the calls the C core made, process-wide (all open
        databases together)."""
        st = ffi.new("kvm_stat *")
        lib.kvm_env_stat(self._handle(), st)
        return {
            "entries": st.entries, "depth": st.depth, "page_size": st.page_size, "pages": st.hwm,
            "txnid": st.txnid, "meta_slot": st.meta_slot, "meta_fallback": bool(st.meta_fallback),
            "file_size": st.file_size,
            "free_pages": st.free_count if self.readonly else self._space.free_count,
            "pending_pages": st.pending_count if self.readonly else self._space.pending_count,
            "backend": self.backend, "growth": self.growth, "writemap": self.writemap, "sync": self.sync,
            "map_base": st.map_base, "map_length": st.map_length, "map_size": st.map_reserved,
            "cache_hits": st.cache_hits, "cache_misses": st.cache_misses, "failed": bool(st.failed),
            "syscalls": {"pread": st.n_pread, "pwrite": st.n_pwrite, "fdatasync": st.n_fdatasync,
                         "fallocate": st.n_fallocate, "mmap": st.n_mmap, "mremap": st.n_mremap,
                         "munmap": st.n_munmap, "madvise": st.n_madvise},
        }

    def _check(self):
        """Assert internal invariants (for tests): the free space is
        consistent, and the tree holds as many keys, in strictly increasing
        order, as its entry count says."""
        if not self.readonly:
            self._space._check()
        with self.snapshot() as snap:
            prev = None
            n = 0
            for k in snap:
                assert prev is None or prev < k, (prev, k)
                prev = k
                n += 1
            assert n == len(snap), (n, len(snap))
            st = self.stats()
            assert st["pages"] <= st["file_size"] // self.page_size
