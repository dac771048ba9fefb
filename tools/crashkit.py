"""Seeded workloads and the crash oracle shared by kvmap's crash harnesses.

Every crash harness (process kills in ``tools/killtest.py``, simulated power
loss in ``tools/powerloss.py``, failing system calls in
``tests/test_faults.py``) does the same three things:

1. run a deterministic sequence of write transactions, numbered 1, 2, 3 ...
   -- ``Workload(seed).ops(i)`` is transaction i, a pure function of
   ``(seed, i)``, so a parent process can rebuild what a killed child wrote;
2. remember how far the writer got: the last transaction whose ``commit()``
   returned (acknowledged);
3. after the crash, open the file and demand that its contents equal the
   model after the last acknowledged transaction, or after the one right
   after it (the crash hit after that commit's meta write but before the
   acknowledgement), and that ``kvmap.check`` finds the file sound.  After
   a simulated power loss with ``sync=False`` the demand is a range: the
   model after any transaction from the last completed flush to the last
   acknowledged one (``verify(..., oldest=...)``), never contents no
   transaction left.

``Workload.model(n)`` replays transactions 1..n into a dict;
``verify(path, workload, acked, ...)`` is the oracle.

Transactions mix small puts, overwrites, deletes, values large enough for
overflow chains, and now and then one big value that forces the file (and
the mapping) to grow.  ``grow_every`` makes that every n-th transaction;
the big values cycle over ``big_keys`` keys, so with few keys each big
transaction overwrites (frees) an earlier big value.

>>> w = Workload(7)
>>> w.ops(1) == Workload(7).ops(1)
True
>>> len(w.model(3)) > 0
True
"""

import os
import random

KEYSPACE = 400


class Workload:
    """Transactions as a pure function of ``(seed, i)``; see the module doc."""

    def __init__(self, seed, *, grow_every=25, big=256 << 10, max_ops=40, big_keys=8):
        self.seed = seed
        self.big_keys = big_keys
        self.grow_every = grow_every
        self.big = big
        self.max_ops = max_ops
        self._models = {0: {}}      # memo: i -> model after transaction i

    def ops(self, i):
        """Transaction ``i`` (from 1): a list of ``("put", key, value)`` and
        ``("del", key)``."""
        rng = random.Random(f"{self.seed}:{i}")
        out = []
        for _ in range(rng.randint(1, self.max_ops)):
            key = b"k%05d" % rng.randrange(KEYSPACE)
            r = rng.random()
            if r < 0.25:
                out.append(("del", key))
                continue
            if r < 0.85:
                n = rng.randint(0, 120)
            elif r < 0.97:
                n = rng.randint(1000, 12000)     # overflow chain
            else:
                n = rng.randint(20000, 60000)
            out.append(("put", key, rng.randbytes(n)))
        if self.grow_every and i % self.grow_every == 0:
            key = b"big%03d" % (i // self.grow_every % self.big_keys)
            out.append(("put", key, rng.randbytes(self.big)))
        return out

    def model(self, n):
        """The database contents after transactions 1..n (a fresh dict)."""
        start = max(i for i in self._models if i <= n)
        m = dict(self._models[start])
        for i in range(start + 1, n + 1):
            apply_ops(m, self.ops(i))
            if i % 50 == 0:
                self._models[i] = dict(m)
        return m


def apply_ops(model, ops):
    """Apply one transaction's ops to a dict."""
    for op in ops:
        if op[0] == "put":
            model[op[1]] = op[2]
        else:
            model.pop(op[1], None)


def run_txn(db, ops):
    """Run one transaction's ops on an open database and commit."""
    with db.transaction() as txn:
        for op in ops:
            if op[0] == "put":
                txn.put(op[1], op[2])
            else:
                txn.pop(op[1], None)


class CrashCheckFailed(AssertionError):
    """The oracle's verdict: a lost or partial commit, or a damaged file."""


def checked(path, when):
    """``kvmap.check(path)``; CrashCheckFailed naming ``when`` if it reports
    a problem (CheckUnreadable, a kvmap.Error, propagates)."""
    from kvmap.checker import check

    rep = check(path)
    if not rep.ok:
        raise CrashCheckFailed(f"kvmap.check {when}: " + "; ".join(
            f"{p.kind} page {p.page}: {p.message}" for p in rep.problems[:5]))


def verify(path, workload, acked, *, open_kw=None, allow_next=True, oldest=None, probe=None):
    """The crash oracle.  Opens ``path`` (read-write, so recovery paths run),
    and returns ``n``, the transaction count whose model the file equals:
    ``acked``, or ``acked + 1`` when ``allow_next``, or (with ``oldest``)
    any count from ``oldest`` to ``acked`` -- what a power loss may leave of
    ``sync=False`` commits made since the last flush.  Raises
    CrashCheckFailed when the contents match none of them or ``kvmap.check``
    reports a problem (run first, on the file as the crash left it, and again
    after the reopen).  With ``probe`` (a key), one more commit writes that
    key before the reopened handle closes, and must read back (so the free
    space the recovery left is sound); the second check sees it."""
    import kvmap

    checked(path, "on the crashed file")
    db = kvmap.open(path, **(open_kw or {}))
    try:
        contents = dict(db.items())
        db._check()
        if probe is not None:
            db[probe] = b"written after the crash"
            if db[probe] != b"written after the crash":
                raise CrashCheckFailed("a commit after the crash reads back wrong")
            db._check()
    finally:
        db.close()
    checked(path, "after reopening" if probe is None else "after reopening and one more commit")
    candidates = [acked, acked + 1] if allow_next else [acked]
    if oldest is not None:
        candidates += range(acked - 1, oldest - 1, -1)
    which = getattr(workload, "which", None)
    if which is not None:           # a digest lookup: many candidates are cheap
        got = set(which(contents))
        for n in candidates:
            if n in got:
                return n
    else:
        for n in candidates:
            if contents == workload.model(n):
                return n
    want = workload.model(acked)
    missing = sorted(k for k in want if k not in contents)[:5]
    extra = sorted(k for k in contents if k not in want)[:5]
    changed = sorted(k for k in want if k in contents and contents[k] != want[k])[:5]
    names = (f"any transaction from {oldest} to {acked}" if oldest is not None and oldest < acked
             else f"transaction {acked}") + (f" nor {acked + 1}" if allow_next else "")
    raise CrashCheckFailed(
        f"contents match neither {names}: vs {acked}: "
        f"missing {missing}, extra {extra}, changed {changed}")


_CREATION_IMAGES = {}


def creation_leftover(data, page_size=4096):
    """True when ``data`` (a file's bytes) is what an interrupted creation
    can leave (FORMAT.md §8): at most three pages (the meta pages), every
    byte either the one creating a file writes there or zero; the page size
    is the one a
    surviving meta header names, else ``page_size``.  Such a file holds no
    data, kvmap.check finds no database in it, and a writable open
    initialises it."""
    import struct
    import tempfile

    import kvmap
    ps = page_size
    if len(data) >= 16 and data[:8] == b"\x89KVM\r\n\x1a\n":
        hp = struct.unpack_from("<I", data, 12)[0]
        if 4096 <= hp <= 65536 and not hp & (hp - 1):
            ps = hp
    if len(data) > 3 * ps:          # META_PAGES
        return False
    if ps not in _CREATION_IMAGES:
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "new.kv")
            kvmap.open(p, page_size=ps).close()
            with open(p, "rb") as f:
                _CREATION_IMAGES[ps] = f.read()
    img = _CREATION_IMAGES[ps]
    return all(b == 0 or b == i for b, i in zip(data, img))


def scratch_path(directory, name="db.kv"):
    """``directory/name`` with any leftover file removed."""
    p = os.path.join(directory, name)
    if os.path.exists(p):
        os.unlink(p)
    return p
