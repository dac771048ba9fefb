"""Which meta page a check reads, chosen as the engine's open chooses it
(FORMAT.md §2; meta.c, load_meta), or, for a snapshot of a database in use,
the meta pages beside the snapshot's commit."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from .pagelayout import (HDR, M_FLAGS_NOSYNC, META_PAGES, META_SIZE, PAGE_SIZES, PT_BRANCH, PT_LEAF, PT_RECORD,
                         VERSION, Meta, crc32c, decode_meta, header, meta_pages, u16, u32, u64)
from .records import RecordFault, Runs, record_items
from .report import CheckUnreadable, Findings
from .snapshot import commit_state

if TYPE_CHECKING:
    from _typeshed import StrPath

    from .snapshot import HeldCommit


def recency(m: Meta) -> tuple[int, int]:
    """Sort key of a valid meta: newer commit, then the one known durable."""
    return m["txnid"], m.get("durable", 0)


# The meta fields that say what a commit's state is: all but ``durable``,
# which the seal at close rewrites for the same commit (FORMAT.md §7).
COMMIT_FIELDS = ("page_size", "txnid", "root", "depth", "flags", "entries", "hwm", "free_index",
                 "record", "free_count", "pending_count", "floor")


def differing(m: Meta, state: Meta) -> list[str]:
    """The commit fields in which meta ``m`` differs from ``state``."""
    return [k for k in COMMIT_FIELDS if m.get(k) != state[k]]


class MetaChoice(Findings):
    """The meta page a check reads: ``meta`` (its fields), ``meta_used``
    (its slot), beside ``metas`` and ``newest``; found by read_metas (the
    file at rest) or snapshot_metas (a snapshot's commit)."""

    metas: list[Any]          # one per meta slot (three; two in a version 1 or 2 file), None where invalid
    newest: Optional[int]     # the newest valid meta (live_metas: meta_used, the newest it judges)
    meta_used: Optional[int]  # the meta checked; None: a snapshot's commit no meta holds any more
    meta: Meta

    def __init__(self, fd: int, path: StrPath, file_size: int, max_errors: int) -> None:
        super().__init__(max_errors)
        self.fd = fd
        self.path = path
        self.file_size = file_size

    def _crash_left(self, slot: int, why: Optional[str], other: Meta) -> Optional[str]:
        """Why an invalid meta is what a crash leaves, not damage (None when
        it is damage).  A power loss in a commit's meta write leaves that meta
        torn: the magic intact (it is the same in every meta) and the
        checksum wrong, while the other metas are valid -- the engine then
        opens the newest of them, as designed (FORMAT.md §2).  A power loss
        while a file is created can leave some of its three metas unwritten:
        zeros, next to a valid meta of the empty database (``other``, the
        newest valid one), in a file no longer than its meta pages.  A bit flipped in a meta looks like a tear, so it
        is not told apart."""
        if why == "checksum mismatch":
            return ("fails its checksum: a commit's meta write interrupted by a crash (that "
                    "commit never completed), or damage to it; the valid metas stand")
        ps = other["page_size"]
        raw = os.pread(self.fd, META_SIZE, slot * ps)
        if (raw == bytes(META_SIZE) and other["txnid"] <= 1 and other["root"] == 0
                and self.file_size <= META_PAGES * ps):
            return "unwritten (zeros): the file's creation was interrupted by a crash"
        return None

    def _edge_fault(self, m: Meta) -> Optional[str]:
        """What the engine's open-time verification (meta.c, verify_path)
        finds wrong with meta ``m``'s leftmost and rightmost root-to-leaf
        paths, or None."""
        ps, hwm = m["page_size"], m["hwm"]
        for rightmost in (False, True):
            page = m["root"]
            for level in range(m["depth"]):
                ptype = PT_BRANCH if level + 1 < m["depth"] else PT_LEAF
                if not META_PAGES <= page < hwm:
                    return f"page number {page} out of range"
                buf = os.pread(self.fd, ps, page * ps)
                if len(buf) < ps:
                    return f"page {page} lies past the end of the file"
                crc, t, _, nkeys, txnid, pgno, upper = header(buf, 0)
                if crc != crc32c(memoryview(buf)[4:]):
                    return f"page {page}: checksum mismatch"
                if t != ptype or pgno != page or not HDR + 2 * nkeys <= upper <= ps \
                        or (t == PT_BRANCH and nkeys == 0):
                    return f"page {page}: bad header"
                if txnid > m["txnid"] or (level == 0 and txnid != m["txnid"]):
                    return f"page {page}: written by transaction {txnid}"
                if t == PT_BRANCH:
                    off = u16(buf, HDR + 2 * (nkeys - 1 if rightmost else 0))[0]
                    if off + 10 > ps:
                        return f"page {page}: cell out of bounds"
                    page = u64(buf, off + 2)[0]
        return None

    def _commits_fault(self, m: Meta) -> Optional[str]:
        """What the engine's open-time verification (FORMAT.md §2; freelist.c,
        records_verify) finds wrong with the commits of meta ``m`` not known
        durable -- those after ``m["durable"]`` -- or None: every page their
        records list as written must hold the checksum listed (stored and
        computed) and its own page number, unless a later one of those
        commits freed it (it may have been reused since)."""
        fd, ps, hwm = self.fd, m["page_size"], m["hwm"]

        def read(page: int, k: int) -> bytes:
            if not META_PAGES <= page < hwm:
                raise RecordFault(page, f"page number {page} out of range")
            buf = os.pread(fd, ps, page * ps)
            if len(buf) < ps:
                raise RecordFault(page, f"page {page} lies past the end of the file")
            if u32(buf, 0)[0] != crc32c(memoryview(buf)[4:]):
                raise RecordFault(page, f"page {page}: checksum mismatch")
            if buf[4] != PT_RECORD or u64(buf, 16)[0] != page:
                raise RecordFault(page, f"page {page}: not the record page expected")
            return buf

        later = Runs()
        page, stop = m["record"], max(m["durable"], 1)
        for txn in range(m["txnid"], stop, -1):    # bounded: a page carries one txnid
            if not page:
                return f"commit {txn} has no record"
            try:
                for item in record_items(read, page, txn, ps, hwm):
                    if item[0] == "head":
                        prev = item[1]
                    elif item[0] == "written":
                        w, crc = item[1], item[2]
                        if w in later:
                            continue
                        buf = os.pread(fd, ps, w * ps) if META_PAGES <= w < hwm else b""
                        if (len(buf) < ps or u32(buf, 0)[0] != crc or u64(buf, 16)[0] != w
                                or crc32c(memoryview(buf)[4:]) != crc):
                            return f"page {w}, written by commit {txn}, does not hold what it wrote"
                    elif item[0] == "freed" and not later.add(item[1], item[2], self.file_size // ps):
                        return (f"the record of commit {txn} lists a bad freed run "
                                f"({item[1]}, {item[2]})")
            except RecordFault as f:
                return f.message
            if not prev and txn - 1 > stop:
                return f"the record of commit {txn} does not lead to its predecessor's"
            page = prev
        return None

    def _unusable(self, m: Meta) -> Optional[str]:
        """Why the engine's open would not use meta ``m`` (meta.c,
        meta_usable): the file is too short for it, its commits not known
        durable do not verify, or its edge paths do not; None if it would."""
        need = m["hwm"] * m["page_size"]
        if need > self.file_size:
            return f"the file has {self.file_size} bytes of the {need} it needs"
        return self._commits_fault(m) or self._edge_fault(m)

    def _read_slots(self) -> tuple[list[Any], list[Optional[str]]]:
        """Every meta slot decoded, found as the engine finds them (FORMAT.md
        §2; meta.c, load_meta): meta k at k x the page size of meta 0, or,
        when meta 0 is not valid, of the first possible page size at which
        meta 1 or meta 2 is.  One thing more than the engine: when meta 0
        is valid but neither other meta is at its page size while one is at
        another, meta 0's page size field is the damaged part (the others
        are confirmed by their places), and meta 0 is not valid."""
        fd, size = self.fd, self.file_size
        metas: list[Any] = [None] * META_PAGES
        whys: list[Optional[str]] = [f"short file (no room for meta {k})" for k in range(META_PAGES)]
        metas[0], whys[0] = decode_meta(os.pread(fd, META_SIZE, 0))

        def at(ps: int) -> tuple[list[Any], list[Optional[str]]]:
            ms: list[Any] = [None] * META_PAGES
            ws = list(whys)
            for k in range(1, META_PAGES):
                if k * ps + META_SIZE > size:
                    break
                ms[k], ws[k] = decode_meta(os.pread(fd, META_SIZE, k * ps), k, ps)
            return ms, ws

        if metas[0] is not None:
            ps0 = metas[0]["page_size"]
            ms, ws = at(ps0)
            if not any(ms[1:]):
                for ps in PAGE_SIZES:
                    if ps == ps0:
                        continue
                    alt, alt_ws = at(ps)
                    found = [k for k in range(1, META_PAGES) if alt[k] is not None]
                    if found:
                        whys[0] = (f"page size {ps0} conflicts with meta {found[0]} found at "
                                   f"offset {found[0] * ps} (page size {ps})")
                        metas[0], ms, ws = None, alt, alt_ws
                        break
        else:
            for ps in PAGE_SIZES:
                ms, ws = at(ps)
                if any(ms[1:]):
                    break
        metas[1:], whys[1:] = ms[1:], ws[1:]
        return metas, whys

    def read_metas(self) -> Meta:
        size = self.file_size
        metas, whys = self._read_slots()
        valid = [i for i in range(META_PAGES) if metas[i] is not None]
        if not valid:
            raise CheckUnreadable("no valid meta page: " + "; ".join(
                f"meta {k}: {whys[k]}" for k in range(META_PAGES)))
        version = max(metas[i]["version"] for i in valid)
        nslots = meta_pages(version)            # a version 1 or 2 file: page 2 is not a meta
        metas, whys = metas[:nslots], whys[:nslots]
        for i in range(nslots):
            if metas[i] is not None and metas[i]["version"] != version:
                metas[i], whys[i] = None, f"a version {metas[i]['version']} meta"
        if version != VERSION:
            self.add("version", None, f"{self.path} is a kvmap version {version} file; this kvmap "
                     f"reads version {VERSION}: copy its data into a new file with "
                     f"`kvmap-check --salvage {self.path} NEW` (only its tree is checked)")
        # the engine's order: the newest commit first; of equal commits the
        # one whose meta names the newer durable one (a close seals the
        # newest commit durable into another slot), then the lower slot
        order = sorted((i for i in range(nslots) if metas[i] is not None),
                       key=lambda i: (-metas[i]["txnid"], -metas[i].get("durable", 0), i))
        newest = order[0]
        nm = metas[newest]
        ps = nm["page_size"]
        invalid = {}                            # slot: what it is
        for i in range(nslots):
            if metas[i] is None:
                crash = self._crash_left(i, whys[i], nm)
                if not crash:
                    self.add("meta-damaged", i, f"meta {i} is damaged ({whys[i]})")
                invalid[i] = crash or f"is damaged ({whys[i]})"

        def fits(m: Meta) -> bool:
            return bool(m["hwm"] * ps <= size)
        # The engine's choice (FORMAT.md §2; meta.c, load_meta): the newest
        # meta if it is usable; else, when the commits after the durable one
        # it names do not verify (a file too short for them included: their
        # growth may not have reached the disk either), the newest other
        # meta that passes, of those no older than that durable commit
        # (the durable commit's own, or one a flush made durable since);
        # else nothing.
        fallback = None
        fault = None
        tried: list[tuple[int, str]] = []       # fallbacks that do not pass: slot, why
        if version == VERSION:
            fault = self._unusable(nm)
            if fault and nm["durable"] < nm["txnid"]:
                for o in order[1:]:
                    if not nm["durable"] <= metas[o]["txnid"] < nm["txnid"]:
                        continue
                    ofault = self._unusable(metas[o])
                    if ofault is None:
                        fallback = o
                        break
                    tried.append((o, ofault))
            if fault and fallback is None and (fits(nm) or tried):
                self.add("meta-unusable", newest, f"the engine refuses to open the file: meta "
                         f"{newest} (txnid {nm['txnid']}): {fault}" + "".join(
                             f"; meta {o} (txnid {metas[o]['txnid']}), a commit it would fall "
                             f"back to: {ofault}" for o, ofault in tried))
        if not fits(nm) and fallback is None:
            first_missing = size // ps
            self.add("truncated", first_missing,
                     f"file is {size} bytes, shorter than hwm {nm['hwm']} x page size {ps} of "
                     f"meta {newest} (txnid {nm['txnid']}); pages from {first_missing} are missing")
        if fallback is not None:
            chosen = fallback
        elif not fits(nm):
            # an older meta that fits, if its commit is one the newest meta
            # keeps (no older than the durable commit it names: its pages
            # are not reused), is checked instead, with the truncation noted
            keep = nm.get("durable", 0)
            chosen = next((o for o in order[1:] if fits(metas[o]) and metas[o]["txnid"] >= keep),
                          newest)
        else:
            chosen = newest
        cm = metas[chosen]
        if not fits(cm):
            self.notes.append(f"no meta fits the file size; checking meta {chosen} anyway")
        for i, what in invalid.items():
            self.notes.append(f"meta {i} {what}; using meta {chosen}")
        if fallback is not None:
            sync = ", a commit made with sync=False" if nm["flags"] & M_FLAGS_NOSYNC else ""
            self.notes.append(
                f"meta {newest} (txnid {nm['txnid']}{sync}) names commit {nm['durable']} as "
                f"durable, and the commits after {cm['txnid']} were lost by a crash before they "
                f"were durable ({fault}), or damaged; " + "".join(
                    f"meta {o} (txnid {metas[o]['txnid']}) does not pass either ({ofault}); "
                    for o, ofault in tried)
                + f"using meta {chosen} (txnid {cm['txnid']}), as the engine does")
        elif chosen != newest:
            self.notes.append(f"meta {newest} (txnid {nm['txnid']}) does not fit the file; "
                              f"checking the older meta {chosen} (txnid {cm['txnid']})")
        elif len(order) > 1:
            om, o = metas[order[1]], order[1]
            if nm["txnid"] != om["txnid"]:
                self.details.append(f"using meta {chosen}: the newest (txnid {nm['txnid']}; the "
                                    f"next, meta {o}, has {om['txnid']})")
            elif nm.get("durable") != om.get("durable"):
                self.details.append(f"using meta {chosen}: metas {chosen} and {o} hold commit "
                                    f"{nm['txnid']}; it names the newer durable one "
                                    f"({nm['durable']} > {om['durable']})")
            else:
                self.details.append(f"using meta {chosen}: metas {chosen} and {o} hold commit "
                                    f"{nm['txnid']} alike")
        if cm.get("durable", cm["txnid"]) < cm["txnid"]:
            first = cm["durable"] + 1
            self.details.append(
                f"meta {chosen}: commit {first} was not known durable when it was written; its "
                f"pages verify against its record" if first == cm["txnid"] else
                f"meta {chosen}: commits {first} to {cm['txnid']} were not known durable when it "
                f"was written; their pages verify against their records")
        if cm["flags"] & M_FLAGS_NOSYNC:
            self.details.append(f"meta {chosen}: no flush followed its commit (sync=False)")
        self.metas = metas
        self.newest = newest
        self.meta_used = chosen
        self.meta = cm
        return self.meta

    def snapshot_metas(self, held: HeldCommit) -> None:
        """The commit ``held`` (its meta fields are the engine's) and the
        meta pages beside it.  When the meta pages make read_metas choose
        that commit too, and no commit lands while they are read (the commit
        state and the newest published commit unchanged), they are checked
        as at rest: the choice with its notes, the metas' fields, the edge
        paths and the records of the commits not known durable.  Otherwise a
        later commit has rewritten a meta page, perhaps while it was read,
        and what read_metas found is dropped: live_metas checks what still
        belongs to the snapshot's commit."""
        state = held.state
        slots, before = commit_state(self.fd)
        try:
            m = self.read_metas()
            at_rest = (not differing(m, state) and held.newest_txnid() == state["txnid"]
                       and commit_state(self.fd, slots)[1] == before)
        except CheckUnreadable:
            at_rest = False
        if not at_rest:
            self.forget()
            self.live_metas(state)

    def live_metas(self, state: Meta) -> None:
        """The meta pages beside a snapshot of commit ``state`` of a database
        in use.  Later commits may have rewritten any slot, or be
        rewriting it as it is read, so a slot is checked against the
        snapshot's fields only where it holds the snapshot's commit; a later
        commit's meta is not judged (its pages are not the snapshot's and may
        be changing), nor is one that fails its checksum (a write caught half
        done reads so; so do a crash's tear and damage, which a check at rest
        only notes as well).  A slot that is no kvmap meta, or fails its field
        checks, is damage as at rest: no meta write reads so, whole or half
        done (every meta has the same magic, version and page size)."""
        ps, txnid = state["page_size"], state["txnid"]
        self.meta = dict(state, version=VERSION)
        self.metas = [None] * META_PAGES
        holding = []                # the slots that hold the snapshot's commit
        rewritten = False           # a slot holds a later commit's meta, or one being written
        for slot in range(META_PAGES):
            m, why = decode_meta(os.pread(self.fd, META_SIZE, slot * ps), slot, ps if slot else None)
            self.metas[slot] = m
            if m is None and why == "checksum mismatch":
                rewritten = True
                self.notes.append(f"meta {slot} fails its checksum: a commit was writing it as it "
                                  f"was read, or a crash tore it, or it is damaged; not checked")
            elif m is None:
                crash = self._crash_left(slot, why, self.meta)
                if crash:
                    self.notes.append(f"meta {slot} {crash}")
                else:
                    self.add("meta-damaged", slot, f"meta {slot} is damaged ({why})")
            elif m["txnid"] > txnid:
                rewritten = True
                self.details.append(f"meta {slot} holds commit {m['txnid']}, made after the "
                                    f"snapshot's: not checked")
            elif m["txnid"] < txnid:
                self.details.append(f"meta {slot} holds the older commit {m['txnid']}: its fields "
                                    f"are valid; its pages are not the snapshot's, not checked")
            elif differing(m, state):
                self.add("meta-damaged", slot, f"meta {slot} holds commit {txnid}, the snapshot's, "
                         f"with other {', '.join(differing(m, state))} than the engine has for it")
            else:
                holding.append(slot)
        if holding:
            self.meta_used = max(holding, key=lambda i: recency(self.metas[i]))
            self.details.append(f"meta {self.meta_used} holds commit {txnid}, the snapshot's: its "
                                f"fields are the engine's")
        else:
            self.meta_used = None
            if rewritten:
                self.details.append(f"no meta page holds commit {txnid}, the snapshot's, any more: "
                                    f"later commits rewrote them; its fields are the engine's")
            else:
                self.add("meta-damaged", None, f"no meta page holds commit {txnid}, the "
                         f"snapshot's, nor a later commit")
        self.newest = self.meta_used            # salvage copies the snapshot's commit
        if state["hwm"] * ps > self.file_size:
            first_missing = self.file_size // ps
            self.add("truncated", first_missing,
                     f"file is {self.file_size} bytes, shorter than hwm {state['hwm']} x page size "
                     f"{ps} of commit {txnid}; pages from {first_missing} are missing")

    # ------------------------------------------------------------ pages
