"""What a check reports: the problems it found, the notes and the summary
(:class:`CheckReport`), and :class:`Findings`, where the check collects
them as it goes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..errors import Error


class CheckUnreadable(Error):
    """The file cannot be checked at all: it cannot be opened, or no meta
    page is a valid kvmap meta.  A :class:`kvmap.Error`."""


@dataclass
class Problem:
    kind: str
    page: Optional[int]
    message: str


@dataclass
class CheckReport:
    ok: bool
    problems: List[Problem] = field(default_factory=list)
    total_problems: int = 0
    meta_used: Optional[int] = None
    meta_notes: List[str] = field(default_factory=list)
    # Routine facts of a sound file (which meta is used, and why); the CLI
    # prints them with --verbose.  meta_notes are what a crash or damage left.
    details: List[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    # The transaction (commit) checked, and how it was read: through a
    # snapshot registered in the lock file (writers in every process went on
    # committing, and reused none of its pages), or as the file at rest (no
    # snapshot could be registered; meta_notes say why).
    txnid: Optional[int] = None
    snapshot: bool = False
    # A check at rest saw the file change while it read it (a writer
    # committed): no verdict.  ``ok`` is False and ``problems`` empty;
    # re-run when the writer is idle.
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


class Findings:
    """The problems (the first ``max_errors`` of them, and how many in all),
    notes and details a check gathers."""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.problems: list[Problem] = []
        self.total = 0
        self.notes: list[str] = []
        self.details: list[str] = []

    def add(self, kind: str, page: Optional[int], message: str) -> None:
        self.total += 1
        if len(self.problems) < self.max_errors:
            self.problems.append(Problem(kind, page, message))

    def forget(self) -> None:
        """Drop everything gathered so far."""
        self.problems, self.total, self.notes, self.details = [], 0, [], []
