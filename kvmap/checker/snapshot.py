"""The commit a check reads: a snapshot of a database in use, registered in
its lock file, or the file at rest with a way to tell that a commit landed
while it was read."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from ..db import Database, open as open_engine
from ..errors import Error
from .pagelayout import MAGIC, META_PAGES, META_SIZE, PAGE_SIZES, Meta, u32
from .report import CheckUnreadable

if TYPE_CHECKING:
    from _typeshed import StrPath

    from ..txn import Snapshot


# A snapshot is what a handle takes to read one commit while writers go on,
# so the check takes one, whether or not other handles have the file open:
# the engine registers its reader slot in the lock file (FORMAT.md §9), and
# until it ends no writer in any process reuses a page that the commit
# reaches -- its tree, and its free-space pages and records, which later
# commits free when they replace them (docs/ARCHITECTURE.md §4).  The pages
# are then read here, with pread, as at rest; only the meta pages can change
# under the check (MetaChoice.snapshot_metas, metas.py).  Nothing less would do when
# nobody has the file open either: holding the lock file's open byte shared,
# as a handle does, lets a writer open the file and commit during the check;
# holding it exclusive makes every open wait for the check.
#
# The file is read at rest, without a snapshot, only when none can be
# registered: the engine does not open the file (no meta page it would
# open: then no handle can open it to write either), or its lock file cannot
# be opened (read-only media, or one this user may not write: a writer
# elsewhere would not see the snapshot), or the engine fails otherwise (every
# reader slot taken, ...).  Such a check compares the file's "commit state"
# before and after its reads: the size and the raw first 128 bytes of every
# meta.  Equal states mean no commit completed in between, so every page
# that either meta reaches was left alone (FORMAT.md: a page is never
# overwritten while a meta can reach it; a commit in progress writes only
# pages that no meta reaches -- free pages, or pages past the hwm --
# whose contents the check does not judge) and the report stands.  A writer
# cannot change pages and put the metas back to identical bytes: every
# commit writes the next txnid (its predecessor's + 1) into one meta's first
# 128 bytes (a close that seals the newest commit durable rewrites another
# meta with a larger durable field), and a txnid is used again only in place
# of a commit that open passed over (lost by a crash), so after any
# completed commit at least one meta differs from every earlier version of
# itself -- short of a commit that repeats a lost one's meta byte for byte.
# A meta write caught half done by the first read is caught again by the
# second (its final bytes differ from the torn ones).  Growth (or a
# truncation by anyone) changes the size, which is compared too.


# where the metas after meta 0 can be: meta k at k x a possible page size
META_OFFSETS = tuple(sorted({k * ps for k in range(1, META_PAGES) for ps in PAGE_SIZES}))


class HeldCommit:
    """The commit a check reads, held by a snapshot of a read-only handle;
    ``state``: its meta fields (and page_size), as the engine has them."""

    def __init__(self, db: Database, snap: Snapshot, state: Meta) -> None:
        self.db, self.snap, self.state = db, snap, state

    def newest_txnid(self) -> int:
        """The newest commit published now, by any handle."""
        txnid: int = self.db.stats()["txnid"]
        return txnid

    def close(self) -> None:
        self.snap.close()
        self.db.close()


def register(fd: int, path: StrPath) -> tuple[Optional[HeldCommit], str]:
    """A snapshot of the newest commit of the database at ``path``, its
    reader slot in the lock file; or (None, why the file is read at rest)."""
    try:
        kvmap_file = any(os.pread(fd, len(MAGIC), o) == MAGIC for o in (0,) + META_OFFSETS)
    except OSError as e:
        raise CheckUnreadable(f"cannot read {path}: {e.strerror or e}") from None
    if not kvmap_file:
        # no meta the engine could open: no lock file is made beside a file not kvmap's
        return None, "it holds no kvmap meta page"
    try:
        # The check reads no page through this handle: pread and the smallest
        # cache, so no mapping (and no SIGBUS handler put in the caller's process).
        db = open_engine(os.fspath(path), readonly=True, backend="pread", cache_size=0)
    except Error as e:
        return None, f"the engine does not open it ({type(e).__name__}: {e})"
    try:
        snap = db.snapshot()
        state = snap._state()
    except Error as e:
        db.close()
        return None, f"no snapshot could be taken ({type(e).__name__}: {e})"
    if not state.pop("shared"):
        snap.close()
        db.close()
        return None, ("its lock file cannot be opened, so writers in other processes would not "
                      "see a snapshot")
    return HeldCommit(db, snap, dict(state, page_size=db.page_size)), ""


def at_rest_note(why: str) -> str:
    return (f"checked the file at rest, not a snapshot of it: {why}; a commit during the check "
            f"would have given 'changed'")


def commit_state(fd: int, slots: Optional[tuple[int, ...]] = None) -> tuple[tuple[int, ...], tuple[object, ...]]:
    """(slots, state): the file size and the raw first META_SIZE bytes of
    meta 0 and of the other metas, read at ``slots`` (offsets of the metas
    after meta 0).  Without ``slots``: those at the page size meta 0 names,
    if it is a possible one, plus every other possible offset that holds a
    meta magic (meta 0's page size field may be the damaged part); pass the
    result back to read the same places again."""
    size = os.fstat(fd).st_size
    raw0 = os.pread(fd, META_SIZE, 0)
    if slots is None:
        ps = u32(raw0, 12)[0] if len(raw0) >= 16 else 0
        named = {k * ps for k in range(1, META_PAGES)} if ps in PAGE_SIZES else set()
        slots = tuple(o for o in META_OFFSETS
                      if o in named or os.pread(fd, len(MAGIC), o) == MAGIC)
    return slots, (size, raw0) + tuple(os.pread(fd, META_SIZE, o) for o in slots)


class Unchanged:
    """The file's commit state when reads began, to tell whether a commit
    landed before they ended."""

    def __init__(self, fd: int, path: StrPath) -> None:
        self.fd = fd
        try:
            self.slots, self.before = commit_state(fd)
        except OSError as e:
            raise CheckUnreadable(f"cannot read {path}: {e.strerror or e}") from None

    def changed(self) -> bool:
        """Did a commit land (or the file otherwise change) since the start?"""
        try:
            return commit_state(self.fd, self.slots)[1] != self.before
        except OSError:
            return True


def open_file(path: StrPath) -> int:
    try:
        return os.open(os.fspath(path), os.O_RDONLY)
    except OSError as e:
        raise CheckUnreadable(f"cannot open {path}: {e.strerror or e}") from None
