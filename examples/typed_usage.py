"""kvmap with type annotations: a program that ``mypy --strict`` accepts.

Run it with a directory to put its database in (it is created there and
left behind):

    python examples/typed_usage.py /tmp/some-dir

It stores users as ``user:<id>`` keys, reads them back through snapshots,
ranges and batches, deletes a range, and shows kvmap's exceptions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping

import kvmap
from kvmap.db import Stats


def user_key(uid: int) -> bytes:
    return b"user:%06d" % uid


def load(db: kvmap.Database, names: Mapping[int, str]) -> int:
    """Store every user in one transaction; return the commit's id."""
    with db.transaction() as txn:
        txnid = txn.txnid
        txn.put_many((user_key(uid), name) for uid, name in names.items())   # str is stored as UTF-8
        txn[b"meta:count"] = str(len(names))
    return txnid


def user_range(view: kvmap.Snapshot, first: int, last: int) -> Iterator[tuple[int, str]]:
    """Users ``first`` to ``last`` (inclusive) as (id, name), in key order."""
    for key, value in view.irange_items(user_key(first), user_key(last)):
        yield int(key[len(b"user:"):]), value.decode()


def names_of(db: kvmap.Database, uids: list[int]) -> list[str | None]:
    """Names of ``uids``, None for an absent one: one snapshot, few C calls."""
    values: list[bytes | None] = db.get_many([user_key(uid) for uid in uids])
    return [None if v is None else v.decode() for v in values]


def describe(stats: Stats) -> str:
    return (f"{stats['entries']} entries, depth {stats['depth']}, "
            f"{stats['pages']} pages of {stats['page_size']} bytes, backend {stats['backend']}")


def main(directory: str) -> None:
    path = os.path.join(directory, "users.kv")
    with kvmap.open(path, "n") as db:
        txnid = load(db, {uid: f"name {uid}" for uid in range(1, 101)})
        print(f"loaded 100 users in transaction {txnid}")

        # Plain reads: get() with and without a default, and [].
        first: bytes | None = db.get(user_key(1))
        missing: bytes | str = db.get(user_key(999), "nobody")
        count = int(db[b"meta:count"])
        print("user 1:", first, "| user 999:", missing, "| count:", count)

        # A snapshot keeps seeing the state it was taken at.
        with db.snapshot() as snap:
            db[user_key(1)] = b"renamed"
            print("snapshot sees:", snap[user_key(1)], "| database sees:", db[user_key(1)])
            print("users 10-12:", list(user_range(snap, 10, 12)))
            print("last 3 keys:", list(snap.irange(maximum=b"user:~", reverse=True))[:3])

        print("names of 2, 3, 500:", names_of(db, [2, 3, 500]))

        # Deleting a range: users 50 and up, in one transaction and one C call.
        deleted: int = db.delete_range(user_key(50), b"user:~")
        print(f"deleted {deleted}; {sum(1 for _ in db.prefix(b'user:'))} users left")

        # A transaction that raises is aborted: nothing of it is written.
        try:
            with db.transaction() as txn:
                txn[b"half"] = b"written"
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
        assert b"half" not in db

        # Missing keys raise KeyError, bad keys TypeError or ValueError,
        # everything else a subclass of kvmap.Error.
        try:
            db[user_key(999)]
        except KeyError as e:
            print("KeyError:", e)
        try:
            db[b""] = b"x"
        except ValueError as e:
            print("ValueError:", e)

        print(describe(db.stats()))

    # Opened read-only, it refuses writes with ReadOnlyError.
    with kvmap.open(path, "r") as ro:
        try:
            ro[b"x"] = b"y"
        except kvmap.ReadOnlyError as e:
            print("ReadOnlyError:", e)

    # Handles share the file, in this process or any other; writers take
    # turns, and one that waits past its timeout gets LockedError.
    with kvmap.open(path) as writer, kvmap.open(path) as other:
        with writer.transaction() as txn:
            txn[b"x"] = b"y"
            try:
                other.transaction(timeout=0.05)
            except kvmap.LockedError as e:
                print("LockedError:", e)
        print("the other handle reads:", other[b"x"])
    try:
        kvmap.open(path, page_size=8192)        # the file has 4096-byte pages
    except kvmap.FormatError as e:
        print("FormatError:", e)
    try:
        kvmap.open(os.path.join(directory, "absent.kv"), "w")
    except kvmap.IOFailure as e:          # also the builtin FileNotFoundError
        print(f"{type(e).__name__}: errno {e.errno}, {e.filename}")
    except kvmap.Error as e:
        print("other kvmap error:", e)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIRECTORY")
    main(sys.argv[1])
