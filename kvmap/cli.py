"""The ``kvmap`` command (also ``python -m kvmap``): look at, edit, dump, load
and copy a database from the shell.

    kvmap stat PATH [--json]
    kvmap get PATH KEY [--raw]            kvmap put PATH KEY VALUE
    kvmap delete PATH KEY                 kvmap scan PATH [--start K] [--stop K] [--prefix P] ...
    kvmap dump PATH [-f OUT] [-p]         kvmap load PATH [-f IN] [-T]
    kvmap copy PATH DEST [--compact] [--overwrite]
    kvmap check ... / kvmap bench ...

Keys and values on the command line are UTF-8 text, or hex / base64 with
``--hex`` / ``--base64``, which also encode what get and scan print.  Dump and
load use the text format of LMDB's ``mdb_dump`` / ``mdb_load``
(:mod:`kvmap.dumpfile`).  ``check`` and ``bench`` run ``kvmap-check`` and
``kvmap-bench`` with the arguments that follow.

Exit status (``EXIT_*`` below): 0 done; 1 the key is not there (get,
delete); 2 nothing done: a usage error, bad hex or base64, a missing or
unreadable file, not a kvmap file, bad dump input, or an operating-system failure; 3 the database is
damaged (``CorruptionError``: run ``kvmap check PATH``); 130 interrupted.
check and bench exit with their own statuses.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import stat
import sys
from itertools import islice
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Literal, Sequence

import kvmap

from . import dumpfile
from .errors import CorruptionError

if TYPE_CHECKING:
    from typing import TypedDict

    from typing_extensions import Unpack   # typing's from Python 3.11

    from .checker.cli import ProgressBar
    from .db import Database, Stats

    class _OpenOptions(TypedDict, total=False):
        """The options of kvmap.open that commands pass through _open."""
        page_size: int | None
        sync: bool
        max_readers: int

    class _StatFigures(Stats):
        """What stat prints: db.stats(), two figures of the handle and the
        live snapshots of every process (db.readers(), as lists)."""
        path: str
        max_key_size: int
        readers: list[list[int]]

__all__ = ["main", "EXIT_OK", "EXIT_NOT_FOUND", "EXIT_ERROR", "EXIT_DAMAGED", "TXN_BYTES"]

EXIT_OK = 0          # done
EXIT_NOT_FOUND = 1   # get / delete: no such key
EXIT_ERROR = 2       # nothing done (or, for load, only what it reports loaded)
EXIT_DAMAGED = 3     # CorruptionError: the file is damaged

# Keys and values per write transaction of load and copy: a transaction keeps
# its new pages in memory until it commits, so a large load commits in steps.
TXN_BYTES = 16 << 20
PAGE_SIZES = {4096 << i for i in range(5)}   # what kvmap.open takes for a new file
MAX_READERS = 126    # dump opens with kvmap's (and LMDB's) default, and says so in maxreaders=

EXIT_HELP = """\
exit status:
  0  done
  1  get, delete: the key is not there
  2  nothing done: usage error, bad hex/base64, missing or unreadable file, not a
     kvmap file, bad dump input (load: the
     pairs it reports loaded stay), or an operating-system error
  3  the database is damaged (run: kvmap check PATH)
  130  interrupted (Ctrl-C): a load keeps the steps it committed, a copy leaves no DEST
  check and bench exit with kvmap-check's and kvmap-bench's statuses
"""


class _Fail(Exception):
    """Ends a command with a message on stderr and an exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------ key codecs

# Control characters (C0, DEL, C1), the backslash, and bytes that are not
# UTF-8 (decoded to lone surrogates): what text output writes as \xx escapes.
_TEXT_ESCAPE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")


def _text_escape(match: re.Match[str]) -> str:
    c = match.group()
    if c == "\\":
        return "\\\\"
    o = ord(c)
    raw = bytes((o - 0xDC00,)) if o >= 0xDC80 else c.encode("utf-8")
    return "".join(f"\\{b:02x}" for b in raw)


def render(data: bytes, codec: str) -> bytes:
    """``data`` as get and scan print it: hex, base64, or text -- UTF-8 with
    control characters, the backslash and bytes that are not UTF-8 escaped as
    in mdb_dump's print format, so a record stays on one line.

    >>> render(b"caf\\xc3\\xa9\\tx\\\\\\xff", "text")
    b'caf\\xc3\\xa9\\\\09x\\\\\\\\\\\\ff'
    >>> render(b"\\x00k", "hex"), render(b"\\x00k", "base64")
    (b'006b', b'AGs=')
    """
    if codec == "hex":
        return binascii.hexlify(data)
    if codec == "base64":
        return base64.b64encode(data)
    return _TEXT_ESCAPE.sub(_text_escape, data.decode("utf-8", "surrogateescape")).encode("utf-8")


def parse(arg: str, codec: str, what: str) -> bytes:
    """The bytes a command-line argument stands for."""
    if codec == "text":
        return arg.encode("utf-8", "surrogateescape")   # the bytes the shell passed
    try:
        if codec == "hex":
            return binascii.unhexlify(arg)
        return base64.b64decode(arg, validate=True)
    except (binascii.Error, ValueError):
        raise _Fail(f"{what} {arg!r} is not valid {codec}") from None


# ------------------------------------------------------------ helpers

def _open(path: str, flag: Literal["r", "w", "c"], **options: Unpack[_OpenOptions]) -> Database:
    """kvmap.open, with a missing file said plainly.  Every page a command
    reads is checked against its checksum (a scan costs nothing measurable
    for it, README "Verifying reads"), so that dump and copy never pass on
    damage: they stop with CorruptionError instead."""
    if flag in "rw" and not os.path.lexists(path):
        raise _Fail(f"{path}: no such file")
    return kvmap.open(path, flag, verify_checksums=True, **options)


def _progress_bar() -> ProgressBar | None:
    """kvmap-check's progress bar on stderr, if stderr is a terminal (the
    checker is loaded only by the commands that draw it)."""
    from .checker.cli import progress_bar
    return progress_bar()


class _Writer:
    """Puts pairs into ``db`` through ``put_many`` in transactions of about
    TXN_BYTES each; ``committed`` counts the pairs of the committed ones."""

    def __init__(self, db: Database, progress: Callable[[int], object] | None = None) -> None:
        self.db, self.progress, self.committed = db, progress, 0

    def write(self, pairs: Iterable[tuple[bytes, bytes]]) -> int:
        it = iter(pairs)
        for first in it:
            count = [0]
            with self.db.transaction() as txn:
                txn.put_many(self._upto(first, it, count))
            self.committed += count[0]
        return self.committed

    def _upto(self, pair: tuple[bytes, bytes], it: Iterator[tuple[bytes, bytes]],
              count: list[int]) -> Iterator[tuple[bytes, bytes]]:
        size = 0
        while True:
            yield pair
            count[0] += 1
            if self.progress is not None and not count[0] & 4095:
                self.progress(self.committed + count[0])
            size += len(pair[0]) + len(pair[1])
            if size >= TXN_BYTES:
                return
            pair = next(it, None)  # type: ignore[assignment]   # None ends the loop here
            if pair is None:
                return


# ------------------------------------------------------------ commands

def _cmd_stat(args: argparse.Namespace, out: BinaryIO) -> int:
    with _open(args.path, "r") as db:
        st: _StatFigures = {"path": db.path,  # type: ignore[typeddict-item]   # a str: args.path is
                            "max_key_size": db.max_key_size, **db.stats(),
                            "readers": [list(r) for r in db.readers()]}
    if args.json:
        out.write(json.dumps(st).encode() + b"\n")
        return EXIT_OK
    ps = st["page_size"]
    lines = [
        st["path"],
        f"  entries        {st['entries']:,}",
        f"  depth          {st['depth']}",
        f"  page size      {ps:,} bytes (keys up to {st['max_key_size']:,} bytes)",
        f"  pages          {st['pages']:,} ({_size(st['pages'] * ps)}), "
        f"{st['free_pages']:,} free, {st['pending_pages']:,} pending",
        f"  file size      {_size(st['file_size'])} ({st['file_size']:,} bytes)",
        f"  txnid          {st['txnid']} (durable {st['durable_txnid']}, meta slot {st['meta_slot']})",
    ]
    lines.append(f"  snapshots      {len(st['readers'])} live in any process"
                 + "".join(f"\n    txnid {t} (process {p}, thread {th})" for t, p, th in st["readers"]))
    if st["meta_fallback"]:
        lines.append("  note: the newest commit was not complete on disk; opened the one before")
    out.write("\n".join(lines).encode() + b"\n")
    return EXIT_OK


def _size(n: float) -> str:  # type: ignore[return]   # the GiB step returns
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _cmd_get(args: argparse.Namespace, out: BinaryIO) -> int:
    key = parse(args.key, args.codec, "KEY")
    with _open(args.path, "r") as db:
        value = db.get(key)
    if value is None:
        raise _Fail(f"{render(key, args.codec).decode()}: not found", EXIT_NOT_FOUND)
    out.write(value if args.raw else render(value, args.codec) + b"\n")
    return EXIT_OK


def _cmd_put(args: argparse.Namespace, out: BinaryIO) -> int:
    key = parse(args.key, args.codec, "KEY")
    value = parse(args.value, args.codec, "VALUE")
    with _open(args.path, "c") as db:
        db[key] = value
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace, out: BinaryIO) -> int:
    key = parse(args.key, args.codec, "KEY")
    with _open(args.path, "w") as db:
        try:
            del db[key]
        except KeyError:
            raise _Fail(f"{render(key, args.codec).decode()}: not found", EXIT_NOT_FOUND) from None
    return EXIT_OK


def _cmd_scan(args: argparse.Namespace, out: BinaryIO) -> int:
    if args.prefix is not None and (args.start is not None or args.stop is not None):
        raise _Fail("--prefix cannot be combined with --start or --stop")
    if args.limit is not None and args.limit < 0:
        raise _Fail("--limit must be 0 or more")
    start, stop, prefix = (None if arg is None else parse(arg, args.codec, name) for name, arg in
                           (("--start", args.start), ("--stop", args.stop), ("--prefix", args.prefix)))
    with _open(args.path, "r") as db, db.snapshot() as snap:
        if prefix is not None:
            scan: Callable[..., Iterator[bytes] | Iterator[tuple[bytes, bytes]]] = (
                snap.prefix if args.keys_only else snap.prefix_items)
            records: Iterator[Any] = scan(prefix, reverse=args.reverse)   # keys, or pairs: --keys-only
        else:
            scan = snap.irange if args.keys_only else snap.irange_items
            records = scan(start, stop, inclusive=(True, args.inclusive), reverse=args.reverse)
        codec = args.codec
        if args.keys_only:
            lines = (render(k, codec) + b"\n" for k in islice(records, args.limit))
        else:
            lines = (render(k, codec) + b"\t" + render(v, codec) + b"\n"
                     for k, v in islice(records, args.limit))
        while True:
            chunk = b"".join(islice(lines, 1024))
            if not chunk:
                break
            out.write(chunk)
    return EXIT_OK


def _cmd_dump(args: argparse.Namespace, out: BinaryIO) -> int:
    dest: BinaryIO | None = None
    try:
        with _open(args.path, "r", max_readers=MAX_READERS) as db, db.snapshot() as snap:
            st = db.stats()
            total = len(snap)
            dest = out if args.file in (None, "-") else open(args.file, "wb")
            dest.write(dumpfile.header(args.print, st["map_size"], MAX_READERS, st["page_size"]))
            bar = _progress_bar()
            items, n = iter(snap.items()), 0
            while True:
                chunk = list(islice(items, 1024))
                if not chunk:
                    break
                dest.write(dumpfile.records(chunk, args.print))
                n += len(chunk)
                if bar:
                    bar(n, total)
            dest.write(dumpfile.FOOTER)
            if bar:
                bar.finish()
    finally:
        if dest is not None and dest is not out:
            dest.close()
    return EXIT_OK


def _cmd_load(args: argparse.Namespace, out: BinaryIO) -> int:
    name = "standard input" if args.file in (None, "-") else args.file
    try:
        src = sys.stdin.buffer if args.file in (None, "-") else open(args.file, "rb")
    except OSError as e:
        raise _Fail(f"{name}: {e.strerror}") from None
    writer: _Writer | None = None
    new = not os.path.lexists(args.path)
    try:
        reader = dumpfile.Reader(src, plaintext=args.plaintext)
        # The header gives the page size of a new file (an existing one keeps its own).
        ps = int(reader.read_header().get("db_pagesize", 0))
        total = _input_size(src)
        bar = _progress_bar() if total else None
        with _open(args.path, "c", page_size=ps if new and ps in PAGE_SIZES else None, sync=False) as db:
            # the ignore: bar is None or a ProgressBar (never false), and total is an int when bar is set
            writer = _Writer(db, bar and (lambda n: bar(src.tell(), total)))  # type: ignore[arg-type]
            writer.write(reader.pairs(db.max_key_size))
        if bar:
            bar.finish()
    except BaseException as e:
        done = writer.committed if writer else 0
        if new and not done and os.path.lexists(args.path):
            os.unlink(args.path)     # nothing done: no empty database left behind
        if isinstance(e, dumpfile.DumpFormatError):
            loaded = f"; the {done:,} pairs before it are loaded" if done else ""
            raise _Fail(f"{name}: {e}{loaded}") from None
        raise
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    for flag in dumpfile.ORDER_FLAGS:
        if any(flag in h for h in reader.headers):
            print(f"kvmap load: note: the dump's database had {flag}: kvmap orders its keys as "
                  f"bytes", file=sys.stderr)
    out.write(f"loaded {writer.committed:,} pairs into {args.path}\n".encode())
    return EXIT_OK


def _input_size(f: BinaryIO) -> int | None:
    """Bytes of a regular input file, else None (a pipe: no progress bar)."""
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _cmd_copy(args: argparse.Namespace, out: BinaryIO) -> int:
    if os.path.lexists(args.dest) and not args.overwrite:
        raise _Fail(f"{args.dest} already exists (--overwrite replaces it)")
    with _open(args.path, "r") as src:
        txnid = src.copy(args.dest, compact=args.compact, overwrite=args.overwrite)
    kind = "a compact copy" if args.compact else "a page copy"
    out.write(f"copied transaction {txnid} to {args.dest} ({kind})\n".encode())
    return EXIT_OK


def _run_check(argv: list[str]) -> int:
    from . import checker
    return checker.main(argv, prog="kvmap check")


def _run_bench(argv: list[str]) -> int:
    from . import bench
    return bench.main(argv, prog="kvmap bench")


# The tools that keep their own command line: ``kvmap check ARGS`` is
# ``kvmap-check ARGS``, with its exit statuses.
DELEGATED = {"check": (_run_check, "check a file's integrity: kvmap-check's arguments (kvmap check -h)"),
             "bench": (_run_bench, "benchmark the backends: kvmap-bench's arguments (kvmap bench -h)")}


# ------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kvmap", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at, edit, dump, load and copy a kvmap database.",
        epilog="keys and values are UTF-8 text on the command line and in get and scan output\n"
               "(control characters, backslashes and bytes that are not UTF-8 printed as \\xx),\n"
               "or hex or base64 with --hex / --base64.\n\n" + EXIT_HELP)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    codec = argparse.ArgumentParser(add_help=False)
    g = codec.add_mutually_exclusive_group()
    g.add_argument("--hex", dest="codec", action="store_const", const="hex", default="text",
                   help="keys and values given and printed as hex")
    g.add_argument("--base64", dest="codec", action="store_const", const="base64",
                   help="keys and values given and printed as base64")

    def command(name: str, fn: Callable[[argparse.Namespace, BinaryIO], int], help: str,
                parents: Sequence[argparse.ArgumentParser] = (),
                description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, parents=list(parents),
                           epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=fn)
        p.add_argument("path", metavar="PATH", help="the database file")
        return p

    p = command("stat", _cmd_stat, "print the database's figures (db.stats())")
    p.add_argument("--json", action="store_true", help="every figure of db.stats(), as one JSON object")
    p = command("get", _cmd_get, "print the value of KEY", [codec])
    p.add_argument("key", metavar="KEY")
    p.add_argument("--raw", action="store_true", help="write the value's bytes as they are, no newline")
    p = command("put", _cmd_put, "set KEY to VALUE (one durable commit; creates the file)", [codec])
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p = command("delete", _cmd_delete, "delete KEY", [codec])
    p.add_argument("key", metavar="KEY")
    p = command("scan", _cmd_scan, "print records in key order, one per line: KEY<tab>VALUE", [codec])
    p.add_argument("--start", metavar="KEY", help="from this key (inclusive)")
    p.add_argument("--stop", metavar="KEY", help="up to this key (exclusive, see --inclusive)")
    p.add_argument("--inclusive", action="store_true", help="include the --stop key")
    p.add_argument("--prefix", metavar="P", help="only keys that start with P")
    p.add_argument("--reverse", action="store_true", help="the same records, in descending key order")
    p.add_argument("--limit", type=int, metavar="N", help="at most N records")
    p.add_argument("--keys-only", action="store_true", help="print keys only")
    p = command("dump", _cmd_dump, "write every pair in mdb_dump's text format (one snapshot)")
    p.add_argument("-f", dest="file", metavar="OUT", help="write to OUT (default: standard output)")
    p.add_argument("-p", dest="print", action="store_true",
                   help="print format: printable bytes as themselves, others as \\xx (default: hex)")
    p = command("load", _cmd_load, "put the pairs of an mdb_dump text dump into PATH (created if "
                                   "missing; existing keys are overwritten)")
    p.add_argument("-f", dest="file", metavar="IN", help="read IN (default: standard input)")
    p.add_argument("-T", dest="plaintext", action="store_true",
                   help="plain text input as mdb_load -T reads it: no header, lines in print "
                        "format without the leading space, key and value lines alternating")
    p = command("copy", _cmd_copy, "copy the database to a new file DEST, from one snapshot (a backup)",
                description="Copy the database to a new file DEST, from one snapshot: an online\n"
                            "backup (db.copy).  Writers in other processes go on committing; DEST\n"
                            "is exactly the commit the snapshot saw.\n\n"
                            "By default a page copy: every page that commit uses, at the same\n"
                            "page numbers, each verified against its checksum (damage stops the\n"
                            "copy); DEST is as large as the database's pages, free ones included.\n"
                            "--compact writes the pairs in key order into a new database instead\n"
                            "(as mdb_copy -c): leaves about 98% full, no free pages, the smallest\n"
                            "file; it costs as much as loading the pairs.  `kvmap stat` shows the\n"
                            "free and pending pages a compact copy would leave out.\n\n"
                            "DEST is written under a temporary name beside it, synced, then\n"
                            "renamed: a failed or interrupted copy leaves nothing at DEST.")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--compact", action="store_true",
                   help="write the pairs in key order into a new, packed database (as mdb_copy -c)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DEST if it exists (in one rename; never a database that is open)")
    for name, (_, help) in DELEGATED.items():
        sub.add_parser(name, help=help, add_help=False)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][0](argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help(sys.stderr)
        return EXIT_ERROR
    what = f"kvmap {args.command}"
    out = sys.stdout.buffer
    try:
        code: int = args.run(args, out)
        out.flush()
        return code
    except _Fail as e:
        print(f"{what}: {e}", file=sys.stderr)
        return e.code
    except CorruptionError as e:
        print(f"{what}: {e} (the file is damaged: run kvmap check {args.path})", file=sys.stderr)
        return EXIT_DAMAGED
    except KeyboardInterrupt:
        print(f"{what}: interrupted", file=sys.stderr)
        return 128 + 2   # as a shell reports SIGINT
    except BrokenPipeError:   # the reader stopped reading (| head): it has what it wanted
        _silence_stdout()
        return EXIT_OK
    except (OSError, ValueError) as e:   # every kvmap.Error is an OSError; an empty or oversize key
        print(f"{what}: {_os_message(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit
    does not report the broken pipe again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def _os_message(e: OSError) -> str:
    if e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
