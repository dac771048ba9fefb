"""kvmap-check, the command line (``kvmap-check``, ``python -m kvmap.checker``,
``kvmap check``) of the check and the salvage."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional, TextIO

from .report import CheckUnreadable
from .salvaging import salvage
from .walk import check

# kvmap-check's exit status
EXIT_OK = 0          # sound
EXIT_DAMAGE = 1      # damage found
EXIT_UNCHECKED = 2   # not checked: unreadable, usage error
EXIT_CHANGED = 3     # a check of the file at rest saw it change: no verdict
CHANGED_MESSAGE = "file changed during check: no verdict; re-run when the writer is idle"


class ProgressBar:
    """A bar on ``stream`` (a terminal), for ``progress`` of check and salvage:
    drawn after the first second, at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < 1.0 or now - self.last < 0.1:
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        n = int(frac * 40)
        self.stream.write("\r[" + "#" * n + "." * (40 - n) + f"] {frac * 100:5.1f}%")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 50 + "\r")
            self.stream.flush()


def progress_bar() -> Optional[ProgressBar]:
    """A progress bar on stderr, if stderr is a terminal."""
    try:
        return ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    except (AttributeError, ValueError):
        return None


def main(argv: Optional[list[str]] = None, prog: str = "kvmap-check") -> int:
    ap = argparse.ArgumentParser(
        prog=prog, description="Check the integrity of a kvmap database file.",
        epilog="A database in use is checked through a snapshot of its newest commit, while "
               "writers go on; the report names the transaction checked.  Exit status: 0 "
               "sound; 1 damage found; 2 not checked: the file is unreadable, or a usage "
               "error; 3 a check of the file at rest (no snapshot could be registered) saw it "
               "change: no verdict, re-run when the writer is idle")
    ap.add_argument("path")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also print routine facts of a sound file (which meta page is used)")
    ap.add_argument("--quick", action="store_true",
                    help="skip page checksums and overflow payloads")
    ap.add_argument("--max-errors", type=int, default=100, metavar="N",
                    help="list at most N problems (default 100)")
    ap.add_argument("--salvage", metavar="OUT",
                    help="copy every intact key/value of the newest committed state into a "
                         "new database OUT")
    ap.add_argument("--unverified", metavar="OUT2",
                    help="with --salvage: write the entries of intact leaves that cannot be "
                         "proven current (older values or deleted keys possible) into a new "
                         "database OUT2")
    args = ap.parse_args(argv)
    if args.max_errors < 0:
        ap.error("--max-errors must be >= 0")
    if args.salvage and os.path.lexists(args.salvage):
        ap.error(f"--salvage: {args.salvage} already exists")
    if args.unverified and not args.salvage:
        ap.error("--unverified needs --salvage")
    if args.unverified and os.path.lexists(args.unverified):
        ap.error(f"--unverified: {args.unverified} already exists")
    bar = None if args.json else progress_bar()
    sal = None
    try:
        if args.salvage:
            sal = salvage(args.path, args.salvage, unverified=args.unverified, progress=bar)
            rep = sal.report
            rep.problems = rep.problems[:args.max_errors]
        else:
            rep = check(args.path, quick=args.quick, max_errors=args.max_errors, progress=bar)
    except CheckUnreadable as e:
        if bar:
            bar.finish()
        if args.json:
            print(json.dumps({"ok": False, "unreadable": True, "error": str(e)}))
        else:
            print(f"kvmap-check: {args.path}: unreadable: {e}", file=sys.stderr)
        return EXIT_UNCHECKED
    if bar:
        bar.finish()
    if args.json:
        doc = rep.to_dict()
        if sal is not None:
            doc["salvage"] = {k: v for k, v in dataclasses.asdict(sal).items() if k != "report"}
        print(json.dumps(doc))
        return EXIT_CHANGED if rep.changed else EXIT_OK if rep.ok else EXIT_DAMAGE
    if rep.changed:                    # no verdict: nothing about damage
        if sal is not None:
            for note in sal.notes:
                print(f"salvage: {note}")
        print(CHANGED_MESSAGE)
        return EXIT_CHANGED
    s = rep.summary
    for note in rep.meta_notes + (rep.details if args.verbose else []):
        print(f"note: {note}")
    if sal is not None:
        print(f"salvage: {sal.recovered} entries recovered into {sal.out}, {sal.lost} lost "
              f"(meta {sal.meta_used}; {len(sal.damaged_leaves)} damaged leaves, "
              f"{sal.lost_values} values with a damaged overflow chain)")
        if sal.unverified:
            print(f"salvage: {sal.unverified} entries not proven current"
                  + (f", written to {sal.unverified_out}" if sal.unverified_out else ""))
        for note in sal.notes[len(rep.meta_notes):]:
            print(f"salvage: {note}")
    checked = (f"checked transaction {rep.txnid} ("
               + ("a snapshot of the live database" if rep.snapshot else "the file at rest") + ")")
    if rep.ok:
        types = ", ".join(f"{k} {v}" for k, v in s["pages_by_type"].items())
        print("ok")
        print(f"  {checked}")
        print(f"  {s['entries']} entries, depth {s['depth']}, {s['hwm']} pages of "
              f"{s['page_size']} bytes (file {s['file_size']} bytes), txnid {s['txnid']}")
        print(f"  pages: {types}")
        print(f"  free {s['free_pages']}, pending {s['pending_pages']}, "
              f"leaf fill {s['fill_factor'] * 100:.1f}%")
        return EXIT_OK
    for p in rep.problems:
        where = "-" if p.page is None else str(p.page)
        print(f"page {where}: {p.kind}: {p.message}")
    shown = len(rep.problems)
    if rep.total_problems > shown:
        print(f"... and {rep.total_problems - shown} more")
    print(f"{rep.total_problems} problem(s) found; {checked}")
    return EXIT_DAMAGE
