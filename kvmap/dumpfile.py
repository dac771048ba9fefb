"""The text dump format of LMDB's ``mdb_dump`` and ``mdb_load``, which
``kvmap dump`` writes and ``kvmap load`` reads.

As LMDB's libraries/liblmdb/mdb_dump.c writes it: a header of ``name=value``
lines ending with ``HEADER=END``, then each key and each value on a line of
its own that starts with one space, then ``DATA=END``::

    VERSION=3
    format=bytevalue
    type=btree
    mapsize=1099511627776
    maxreaders=126
    db_pagesize=4096
    HEADER=END
     6b6579
     76616c7565
    DATA=END

``format=bytevalue`` (the default) writes every byte as two lower-case hex
digits; ``format=print`` (``mdb_dump -p``) writes bytes 0x20 to 0x7e (what
``isprint`` is in the C locale mdb_dump runs in) as themselves, the
backslash as ``\\\\`` and every other byte as ``\\`` and two hex digits.

Reading follows mdb_load.c: hex digits of either case; in print format any
byte other than a backslash stands for itself; header lines it does not know
(``db_pagesize=`` among them) are skipped, a header line without ``=`` is an
error; after ``DATA=END`` another section (header and data) may follow.
Two differences, both refusals: a section must end with ``DATA=END`` (mdb_load
takes input that stops at a record boundary as complete, so a truncated dump
loads without an error), and a section of a named database (``database=``)
or of a database with duplicate keys (``dupsort``) is refused, since a kvmap
file holds one keyspace with one value per key.  ``plaintext`` reads what
``mdb_load -T`` reads: no header, no leading space, no ``DATA=END``, print
escapes.
"""

from __future__ import annotations

import binascii
import re
from typing import Callable, Iterable, Iterator, Literal, Sequence, overload

__all__ = ["DumpFormatError", "header", "FOOTER", "escape", "unescape", "records", "Reader"]

FOOTER = b"DATA=END\n"
# Flags of an LMDB database that mdb_dump writes as "name=1".  Keys that are
# integers or compared from their end load as bytes: kvmap orders them bytewise.
DUPLICATE_FLAGS = ("duplicates", "dupsort", "dupfixed", "integerdup", "reversedup")
ORDER_FLAGS = ("reversekey", "integerkey")

_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")     # not printable, or the backslash
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]")
_FIELD_SEP = "\u0100"    # joins latin-1 text of fields: no byte decodes to it


class DumpFormatError(ValueError):
    """Input that is not a dump kvmap can load; ``line`` is its line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def header(print_format: bool, map_size: int, max_readers: int, page_size: int) -> bytes:
    """The header mdb_dump writes for an unnamed database without flags.

    >>> print(header(False, 1 << 20, 126, 4096).decode(), end="")
    VERSION=3
    format=bytevalue
    type=btree
    mapsize=1048576
    maxreaders=126
    db_pagesize=4096
    HEADER=END
    """
    return (f"VERSION=3\nformat={'print' if print_format else 'bytevalue'}\ntype=btree\n"
            f"mapsize={map_size}\nmaxreaders={max_readers}\ndb_pagesize={page_size}\n"
            f"HEADER=END\n").encode("ascii")


def escape(data: bytes) -> bytes:
    """``data`` in print format (mdb_dump.c's ``text()``).

    >>> escape(b"a b\\\\c\\n\\xff")
    b'a b\\\\\\\\c\\\\0a\\\\ff'
    """
    if _NEEDS_ESCAPE.search(data) is None:
        return data
    return _escape_text(data.decode("latin-1"))


def _escape_text(text: str) -> bytes:
    """Print format of ``text`` (bytes decoded as latin-1; fields joined by
    _FIELD_SEP become lines), in C-speed passes: Python's unicode_escape
    writes a backslash as ``\\\\``, tab, newline and return as ``\\t``,
    ``\\n``, ``\\r``, other bytes outside 0x20-0x7e as ``\\xhh`` and the
    separator as ``\\u0100``.  The doubled backslashes step aside as NUL
    bytes (unicode_escape writes none) while the other escapes, now
    unambiguous, are rewritten."""
    return (text.encode("unicode_escape").replace(b"\\\\", b"\0").replace(b"\\u0100", b"\n ")
            .replace(b"\\t", b"\\09").replace(b"\\n", b"\\0a").replace(b"\\r", b"\\0d")
            .replace(b"\\x", b"\\").replace(b"\0", b"\\\\"))


def unescape(text: bytes, line: int = 0) -> bytes:
    """The bytes a print-format line (without its newline) stands for;
    DumpFormatError for a backslash not followed by a backslash or two hex
    digits.  Each ``\\\\`` becomes ``\\x5c`` and every other backslash
    ``\\x``, for unicode_escape to decode (and to refuse a bad escape).

    >>> unescape(b"a b\\\\\\\\c\\\\0a\\\\FF")
    b'a b\\\\c\\n\\xff'
    """
    if b"\\" not in text:
        return text
    try:
        hex_escapes = text.replace(b"\\\\", b"\\5c").replace(b"\\", b"\\x")
        return hex_escapes.decode("unicode_escape").encode("latin-1")
    except UnicodeDecodeError:
        raise DumpFormatError(line, "a backslash not followed by a backslash or two hex digits") from None


def _unhex(text: bytes, line: int) -> bytes:
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        what = "characters other than" if _NOT_HEX.search(text) else "an odd number of"
        raise DumpFormatError(line, f"{what} hex digits in a bytevalue line") from None


def records(pairs: Sequence[tuple[bytes, bytes]], print_format: bool) -> bytes:
    """The lines of ``pairs`` (a list of (key, value)), as one bytes."""
    if not pairs:
        return b""
    if print_format:
        text = _FIELD_SEP.join([f.decode("latin-1") for kv in pairs for f in kv])
        return b" " + _escape_text(text) + b"\n"
    hexlify = binascii.hexlify
    return b"".join([b" " + hexlify(k) + b"\n " + hexlify(v) + b"\n" for k, v in pairs])


class _Lines:
    """The input's lines without their newline, counted; a last line with no
    newline is an error (mdb_load: "unexpected end of input")."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._it = iter(stream)
        self.number = 0

    def next(self) -> bytes | None:
        line = next(self._it, None)
        if line is None:
            return None
        self.number += 1
        if not line.endswith(b"\n"):
            raise DumpFormatError(self.number, "unexpected end of input (a line without a newline)")
        return line[:-1]


class Reader:
    """Reads a dump from the binary ``stream``: ``read_header()`` the first
    section's header, ``pairs(max_key)`` the (key, value) pairs of every
    section.  ``headers`` holds each section's header read so far, as a dict
    of its ``name=value`` lines; ``line`` is the number of the last line
    read.  Problems raise DumpFormatError naming the line; the pairs before
    it have been yielded."""

    def __init__(self, stream: Iterable[bytes], plaintext: bool = False) -> None:
        self._lines = _Lines(stream)
        self.plaintext = plaintext
        self.headers: list[dict[str, str]] = []
        self._pending: dict[str, str] | None = None      # the first header, read and not yet followed by its data

    @property
    def line(self) -> int:
        return self._lines.number

    def read_header(self) -> dict[str, str]:
        """The first section's header (an empty dict for plaintext input)."""
        if self.plaintext or self.headers:
            return self.headers[0] if self.headers else {}
        self._pending = _read_header(self._lines, first=True)
        self.headers.append(self._pending)
        return self._pending

    def pairs(self, max_key: int) -> Iterator[tuple[bytes, bytes]]:
        """Yield every pair; keys must be 1 to ``max_key`` bytes."""
        if self.plaintext:
            yield from _data(self._lines, max_key, unescape, plaintext=True)
            return
        hdr: dict[str, str] | None = self._pending if self._pending is not None else self.read_header()
        while hdr is not None:
            self._pending = None
            decode = unescape if hdr.get("format") == "print" else _unhex
            yield from _data(self._lines, max_key, decode, plaintext=False)
            hdr = _read_header(self._lines, first=False)
            if hdr is not None:
                self.headers.append(hdr)


@overload
def _read_header(lines: _Lines, first: Literal[True]) -> dict[str, str]: ...
@overload
def _read_header(lines: _Lines, first: Literal[False]) -> dict[str, str] | None: ...

def _read_header(lines: _Lines, first: bool) -> dict[str, str] | None:
    """The next section's header as a dict, or None at the end of input
    after a section."""
    hdr: dict[str, str] = {}
    while True:
        line = lines.next()
        n = lines.number
        if line is None:
            if first and not hdr:
                raise DumpFormatError(n, "empty input: no dump header")
            if hdr:
                raise DumpFormatError(n, "unexpected end of input in the header (no HEADER=END)")
            return None
        if line == b"HEADER=END":
            return hdr
        name, eq, value = line.decode("latin-1").partition("=")
        if not eq:
            raise DumpFormatError(n, f"not a header line (name=value): {line[:60]!r}")
        if name == "VERSION":
            if not value.isdigit() or int(value) > 3:
                raise DumpFormatError(n, f"unsupported VERSION {value!r} (3 or lower)")
        elif name == "format":
            if value not in ("bytevalue", "print"):
                raise DumpFormatError(n, f"unsupported format {value!r} (bytevalue or print)")
        elif name == "type":
            if value != "btree":
                raise DumpFormatError(n, f"unsupported type {value!r} (btree)")
        elif name == "database":
            raise DumpFormatError(n, f"a named database ({value!r}): a kvmap file holds one "
                                     f"keyspace; dump the main database only (mdb_dump without -a/-s)")
        elif name in DUPLICATE_FLAGS:
            raise DumpFormatError(n, f"{name}: a database with duplicate keys; kvmap keeps one "
                                     f"value per key")
        elif name in ("mapsize", "maxreaders", "db_pagesize") and not value.isdigit():
            raise DumpFormatError(n, f"invalid {name} {value!r}")
        hdr[name] = value


def _data(lines: _Lines, max_key: int, decode: Callable[[bytes, int], bytes],
          plaintext: bool) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of one data section (up to DATA=END, or the end of a
    plaintext input)."""
    while True:
        line = lines.next()
        if line is None:
            if plaintext:
                return
            raise DumpFormatError(lines.number, "unexpected end of input: no DATA=END "
                                                "(a truncated dump?)")
        n = lines.number
        if not plaintext:
            if not line.startswith(b" "):
                if line == b"DATA=END":
                    return
                raise DumpFormatError(n, f"expected a key line (starting with a space) or "
                                         f"DATA=END: {line[:60]!r}")
            line = line[1:]
        key = decode(line, n)
        if not 0 < len(key) <= max_key:
            raise DumpFormatError(n, f"a key of {len(key)} bytes: kvmap keys are 1 to {max_key} bytes")
        vline = lines.next()
        if vline is None or not (plaintext or vline.startswith(b" ")):
            raise DumpFormatError(n, "a key without a value line")
        yield key, decode(vline if plaintext else vline[1:], lines.number)
