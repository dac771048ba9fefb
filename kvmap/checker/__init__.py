"""kvmap-check: an integrity checker for kvmap files (format v3, docs/FORMAT.md;
native/format.h).

It never trusts the file: it reads its pages with ``pread`` only, from
Python and from its own C reader, native/checkpage.c (never through the
engine's mapping or page cache; of the engine it uses the checksum function
and, to hold the commit it checks, a read-only handle with one snapshot),
every loop is bounded by page counts, chain lengths or the tree depth, and
its memory is bounded by three bytes per page of the file (an owner code, a
checksum state, listed free or not) and buffers sized by the page size, not
by what the file says (the meta choice adds the runs that the records of the
commits not known durable list freed; salvage adds two bytes per page, and
the first and last key and a (txnid, page) pair of each candidate orphan
leaf).

Library (``kvmap.check`` and ``kvmap.salvage`` are this package's)::

    report = kvmap.check("data.kv")      # CheckReport
    report.ok, report.problems, report.summary, report.to_json()

Command line (exit 0: sound, 1: damage found, 2: not checked -- unreadable
file or usage error -- 3: a check of the file at rest saw it change: no
verdict)::

    kvmap-check PATH [--json] [--quick] [--max-errors N] [--salvage OUT [--unverified OUT2]]
    python -m kvmap.checker ...          # the same

A database in use: handles in other processes may commit while the check
reads, and pages of several commits would look like damage.  So the check
reads one commit, held by a snapshot that it takes through the engine
(``kvmap.open(path, readonly=True)``): the snapshot's reader slot is in the
lock file beside the database (``<path>-lock``, FORMAT.md §9), and no writer
in any process reuses a page that commit reaches while it lives.  Writers
go on meanwhile; the report names the transaction checked.  The engine
gives that commit's meta fields, the checker reads its pages itself; the
meta pages, which later commits rewrite, are checked where they still hold
the snapshot's commit (see ``_Checker.snapshot_metas``).  The file is read
at rest, without a snapshot, only when none can be registered: the engine
does not open the file (so no writer can either), or the lock file cannot be
opened.  Such a check compares the file size and the raw meta pages before
and after its reads: if they differ, a commit landed meanwhile and the
report says ``changed`` (``ok`` False, no problems listed; exit 3) instead
of giving a verdict on a mix of commits.

It checks the meta the engine's open would use (the snapshot's commit,
when no commit lands while the meta pages are read), chosen as the engine
chooses it: the newest valid meta if its commits not known durable verify
against their records, its tree's edge paths verify and the file is long
enough for it, else the durable commit that meta names (what a crash leaves
of commits not yet durable -- pages unwritten, or the file's growth lost: a
note, not a problem).  Full mode verifies every meta, the checksum
of every page it reaches, the tree (types, headers, cell bounds, key order
within pages and against every ancestor separator, uniform leaf depth),
overflow chains, the free space (bitmap index, bitmaps, the commit records
after the floor), the counts in the meta, and that every page below the
high-water mark has exactly one owner.  ``quick`` does the same without
verifying page checksums and reads only the 32-byte header of overflow pages
(never their payload).  A version 1 or 2 file is reported as such (the
engine does not open it; ``--salvage`` copies it into a new version 3 file),
and only its tree is checked.

``salvage(path, out)`` / ``--salvage OUT`` copies the newest committed state,
as far as it can be read intact (from leaves and overflow pages whose
checksums match), into a new database at OUT, written with the engine; the
source is only read.  Case by case:

* a database in use, sound or not: the snapshot's commit, the newest when
  the salvage began, read under the snapshot while writers go on (a newer
  meta that the engine passes over, below, is read as at rest: a commit
  landing meanwhile gives ``changed`` and no damage figures);
* newest meta damaged (torn, zeroed, bad fields): the next newest meta's tree;
* a version 1 or 2 file (two meta pages, its other pages from page 2): its
  newest meta's tree (its free space is not read, so only orphan leaves of
  its newest commit are proven current);
* newest meta intact but its hwm past the end of the file (truncated): still
  the newest meta's tree (the check itself reports on the older meta when
  that one fits); pages past the end count as missing;
* a damaged or missing leaf, or overflow page: its entries (value) are lost;
* a damaged or missing branch, or a pointer into the wrong place: its subtree
  is skipped and its key range recorded; intact leaves the walk does not
  reach are then taken only when provably current (see the salvage section
  below), so OUT never holds an older value or a deleted key;
* orphan leaves that cannot be proven current (the newest free space is lost
  or damaged too) are counted (``unverified``) and, with ``unverified=OUT2``
  / ``--unverified OUT2``, written to a second new database.

The package, by concept: ``pagelayout`` (the format's byte offsets, as the
checker reads them, and its C reader, which does the byte work of the
walks), ``report`` (what a check reports), ``records`` (commit records),
``metas`` (which meta), ``snapshot`` (the commit read: a snapshot, or the
file at rest), ``walk`` (the walks and :func:`check`), ``salvaging``
(:func:`salvage`) and ``cli`` (the command line).
"""

from .cli import EXIT_CHANGED, EXIT_DAMAGE, EXIT_OK, EXIT_UNCHECKED, main
from .pagelayout import crc32c
from .report import CheckReport, CheckUnreadable, Problem
from .salvaging import SalvageResult, salvage
from .walk import check

__all__ = ["check", "salvage", "SalvageResult", "main", "CheckReport", "Problem", "CheckUnreadable",
           "crc32c", "EXIT_OK", "EXIT_DAMAGE", "EXIT_UNCHECKED", "EXIT_CHANGED"]
