"""The ``kvmap`` command (kvmap/cli.py) and the mdb_dump text format
(kvmap/dumpfile.py).

Commands run in-process through ``cli.main(argv)``; two tests run ``python -m
kvmap`` in a subprocess.  LMDB compatibility is checked against py-lmdb
environments (py-lmdb's own tool writes the cdbmake format, not mdb_dump's),
with a reference writer and loader below written from LMDB's
libraries/liblmdb/mdb_dump.c and mdb_load.c.
"""

import base64
import io
import json
import os
import random
import subprocess
import sys

import pytest

import kvmap
from kvmap import cli, dumpfile

lmdb = pytest.importorskip("lmdb")


def run(capsysbinary, *argv):
    """(exit status, stdout bytes, stderr text) of ``kvmap ARGV``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def contents(path):
    with kvmap.open(str(path), "r") as db:
        return dict(db.items())


def size_classes(max_key, seed=7):
    """Pairs of every size class: 1-byte keys of every byte value, the longest
    key, empty values, values of every byte, values over one and several
    pages (overflow), text with backslashes and newlines."""
    rnd = random.Random(seed)
    pairs = {bytes((b,)): bytes((b,)) * (b % 5) for b in range(256)}
    pairs[bytes(range(256))] = bytes(range(256))
    pairs[b"k" * max_key] = b"longest key"
    pairs[bytes(rnd.randrange(256) for _ in range(max_key))] = b""
    pairs[b"text\\with\nnewline and \xc3\xa9"] = b"a\\b\r\n\t\x7f"
    for n in (0, 1, 100, 4095, 4097, 9000, 70_000):
        pairs[b"value:%06d" % n] = bytes(rnd.randrange(256) for _ in range(n))
    for i in range(300):
        pairs[b"rnd:" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))] = \
            bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300)))
    return pairs


@pytest.fixture
def full_db(tmp_path):
    path = tmp_path / "full.kv"
    with kvmap.open(str(path)) as db:
        pairs = size_classes(db.max_key_size)
        db.update(pairs)
    return path, pairs


# ---------------------------------------------------------------- reference
# mdb_dump.c: text() writes isprint() bytes (C locale: 0x20-0x7e) as
# themselves with '\' doubled, others as '\' and two lower-case hex digits;
# byte() writes two hex digits per byte; each line starts with one space.

def ref_dump(pairs, print_format, mapsize, maxreaders, psize):
    def field(data):
        if not print_format:
            return " " + "".join("%02x" % c for c in data) + "\n"
        return " " + "".join(("\\\\" if c == 0x5C else chr(c)) if 0x20 <= c <= 0x7E else "\\%02x" % c
                             for c in data) + "\n"
    text = ("VERSION=3\nformat=%s\ntype=btree\nmapsize=%d\nmaxreaders=%d\ndb_pagesize=%d\n"
            "HEADER=END\n" % ("print" if print_format else "bytevalue", mapsize, maxreaders, psize))
    text += "".join(field(k) + field(v) for k, v in pairs) + "DATA=END\n"
    return text.encode("latin-1")


def ref_load(data, env):
    """mdb_load.c's readhdr() and readline(), putting into a py-lmdb env."""
    lines = iter(data.split(b"\n"))
    fmt = None
    for line in lines:
        if line == b"HEADER=END":
            break
        if line.startswith(b"format="):
            fmt = line[7:]
    assert fmt in (b"bytevalue", b"print")

    def decode(line):
        assert line[:1] == b" "
        body = line[1:]
        if fmt == b"bytevalue":
            return bytes(int(body[i:i + 2], 16) for i in range(0, len(body), 2))
        out, i = bytearray(), 0
        while i < len(body):
            if body[i] == 0x5C:
                if body[i + 1] == 0x5C:
                    out.append(0x5C)
                else:
                    out.append(int(body[i + 1:i + 3], 16))
                i += 3 if body[i + 1] != 0x5C else 2
            else:
                out.append(body[i])
                i += 1
        return bytes(out)

    with env.begin(write=True) as txn:
        for line in lines:
            if line == b"DATA=END":
                return
            txn.put(decode(line), decode(next(lines)))
    raise AssertionError("no DATA=END")


def lmdb_env(path, pairs):
    env = lmdb.open(str(path), map_size=64 << 20, subdir=True)
    with env.begin(write=True) as txn:
        for k, v in pairs.items():
            txn.put(k, v)
    return env


# ---------------------------------------------------------------- 1. round trip

@pytest.mark.parametrize("fmt", ["bytevalue", "print"])
def test_dump_load_round_trip(tmp_path, capsysbinary, full_db, fmt):
    path, pairs = full_db
    out = tmp_path / "dump.txt"
    flags = ["-p"] if fmt == "print" else []
    assert run(capsysbinary, "dump", path, "-f", out, *flags) == (0, b"", "")
    text = out.read_bytes()
    assert text.startswith(b"VERSION=3\nformat=%s\ntype=btree\n" % fmt.encode())
    assert b"\nmaxreaders=126\ndb_pagesize=4096\nHEADER=END\n" in text and text.endswith(b"\nDATA=END\n")
    assert text.count(b"\n") == 8 + 2 * len(pairs)
    code, stdout, err = run(capsysbinary, "load", tmp_path / "copy.kv", "-f", out)
    assert (code, err) == (0, "") and stdout == b"loaded %s pairs into %s\n" % (
        f"{len(pairs):,}".encode(), str(tmp_path / "copy.kv").encode())
    assert kvmap.check(tmp_path / "copy.kv").ok
    assert contents(tmp_path / "copy.kv") == pairs


def test_dump_to_stdout_load_from_stdin(tmp_path, capsysbinary, full_db, monkeypatch):
    path, pairs = full_db
    code, text, _ = run(capsysbinary, "dump", path, "-p")
    assert code == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert run(capsysbinary, "load", tmp_path / "in.kv")[0] == 0
    assert contents(tmp_path / "in.kv") == pairs


def test_load_commits_in_steps_and_merges(tmp_path, capsysbinary, monkeypatch):
    """A load larger than TXN_BYTES commits more than once; a load into an
    existing database overwrites the keys it has and keeps the others."""
    monkeypatch.setattr(cli, "TXN_BYTES", 1000)
    src = {b"%04d" % i: b"v" * 50 for i in range(200)}
    dump = tmp_path / "d.txt"
    dump.write_bytes(ref_dump(src.items(), False, 1 << 20, 126, 4096))
    with kvmap.open(str(tmp_path / "db.kv")) as db:
        db.update({b"0001": b"old", b"zzzz": b"kept"})
        before = db.stats()["txnid"]
    assert run(capsysbinary, "load", tmp_path / "db.kv", "-f", dump)[0] == 0
    with kvmap.open(str(tmp_path / "db.kv"), "r") as db:
        assert db.stats()["txnid"] - before >= 10
    assert contents(tmp_path / "db.kv") == {**src, b"zzzz": b"kept"}


# ---------------------------------------------------------------- 2. LMDB

LMDB_PAIRS = {**{bytes((b,)): bytes((255 - b,)) * (b % 3) for b in range(256)},
              b"\\backslash\\": b"", b"key with spaces ~": b"printable text",
              bytes(range(1, 256)) * 2 + b"x": bytes(range(256)) * 40,     # a 511-byte key
              b"big": bytes(random.Random(1).randrange(256) for _ in range(10_000))}


@pytest.mark.parametrize("print_format", [False, True])
def test_lmdb_environment_dump_is_mdb_dump_format_and_loads(tmp_path, capsysbinary, print_format):
    """An LMDB environment written by dumpfile's writer is byte for byte what
    mdb_dump.c would write, and kvmap load takes it."""
    env = lmdb_env(tmp_path / "lmdb", LMDB_PAIRS)
    info, psize = env.info(), env.stat()["psize"]
    with env.begin() as txn:
        pairs = list(txn.cursor())
    env.close()
    mine = (dumpfile.header(print_format, info["map_size"], info["max_readers"], psize)
            + dumpfile.records(pairs, print_format) + dumpfile.FOOTER)
    assert mine == ref_dump(pairs, print_format, info["map_size"], info["max_readers"], psize)
    (tmp_path / "lmdb.txt").write_bytes(mine)
    assert run(capsysbinary, "load", tmp_path / "from-lmdb.kv", "-f", tmp_path / "lmdb.txt")[0] == 0
    assert contents(tmp_path / "from-lmdb.kv") == LMDB_PAIRS


@pytest.mark.parametrize("print_format", [False, True])
def test_kvmap_dump_loads_into_lmdb(tmp_path, capsysbinary, print_format):
    with kvmap.open(str(tmp_path / "db.kv")) as db:
        db.update(LMDB_PAIRS)
    code, text, _ = run(capsysbinary, "dump", tmp_path / "db.kv", *(["-p"] if print_format else []))
    assert code == 0
    env = lmdb.open(str(tmp_path / "lmdb"), map_size=64 << 20, subdir=True)
    ref_load(text, env)
    with env.begin() as txn:
        assert dict(txn.cursor()) == LMDB_PAIRS
    env.close()


@pytest.mark.parametrize("print_format", [False, True])
def test_writer_and_reader_against_the_reference(print_format):
    """Fields made of the bytes that matter to the escaping (backslashes
    before what looks like an escape, the field separator's escape, control
    bytes) come out as mdb_dump.c writes them, and read back."""
    rnd = random.Random(11)
    alphabet = [b"\\", b"u0100", b"x41", b"0a", b"\x00", b"\t", b"\n", b"\r", b"\x7f", b"\xff", b" ", b"~"]
    pairs = [(b"k%05d" % i + b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(6))),
              b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(8)))) for i in range(3000)]
    text = ref_dump(pairs, print_format, 1, 2, 4096)
    assert dumpfile.header(print_format, 1, 2, 4096) + dumpfile.records(pairs, print_format) \
        + dumpfile.FOOTER == text
    assert list(dumpfile.Reader(io.BytesIO(text)).pairs(1000)) == pairs


def test_load_reads_what_mdb_load_reads():
    """Upper-case hex, escapes of either case, unescaped non-ASCII bytes in
    print format, header lines mdb_load skips, two sections."""
    text = (b"VERSION=3\nformat=bytevalue\ntype=btree\nmapaddr=0x7f00\nunknown=1\n"
            b"db_pagesize=4096\nHEADER=END\n 4B\n 00fF\nDATA=END\n"
            b"VERSION=3\nformat=print\nHEADER=END\n \xc3\xa9\\5c\\5C\n a\\0A\\\\\nDATA=END\n")
    r = dumpfile.Reader(io.BytesIO(text))
    assert list(r.pairs(1000)) == [(b"K", b"\x00\xff"), (b"\xc3\xa9\\\\", b"a\n\\")]
    assert [h.get("format") for h in r.headers] == ["bytevalue", "print"]
    plain = dumpfile.Reader(io.BytesIO(b"key\\00\nvalue\n"), plaintext=True)
    assert list(plain.pairs(1000)) == [(b"key\x00", b"value")]


BAD_DUMPS = [
    (b"", "line 0: empty input"),
    (b"VERSION=3\nformat=bytevalue\n", "line 2: unexpected end of input in the header"),
    (b"VERSION=4\nHEADER=END\n", "line 1: unsupported VERSION '4'"),
    (b"format=base85\nHEADER=END\n", "line 1: unsupported format 'base85'"),
    (b"type=hash\nHEADER=END\n", "line 1: unsupported type 'hash'"),
    (b"database=sub\nHEADER=END\n", "line 1: a named database ('sub')"),
    (b"dupsort=1\nHEADER=END\n", "line 1: dupsort: a database with duplicate keys"),
    (b"mapsize=lots\nHEADER=END\n", "line 1: invalid mapsize 'lots'"),
    (b"no equals sign\n", "line 1: not a header line"),
    (b"HEADER=END\n 6b\n 7\nDATA=END\n", "line 3: an odd number of hex digits"),
    (b"HEADER=END\n 6b\n 7g\nDATA=END\n", "line 3: characters other than hex digits"),
    (b"HEADER=END\n 6b\n 7 6\nDATA=END\n", "line 3: characters other than hex digits"),
    (b"format=print\nHEADER=END\n k\n a\\q\nDATA=END\n", "line 4: a backslash not followed"),
    (b"format=print\nHEADER=END\n k\n a\\\nDATA=END\n", "line 4: a backslash not followed"),
    (b"HEADER=END\n 6b\n", "line 2: a key without a value line"),
    (b"HEADER=END\n 6b\nDATA=END\n", "line 2: a key without a value line"),
    (b"HEADER=END\n 6b\n 76\n", "line 3: unexpected end of input: no DATA=END"),
    (b"HEADER=END\n 6b\n 76\nDATA=END", "line 4: unexpected end of input (a line without a newline)"),
    (b"HEADER=END\n 6b\n 76\n6b\n", "line 4: expected a key line"),
    (b"HEADER=END\n \n 76\nDATA=END\n", "line 2: a key of 0 bytes"),
    (b"HEADER=END\n" + b" " + b"6b" * 1001 + b"\n 76\nDATA=END\n", "line 2: a key of 1001 bytes"),
    (b"HEADER=END\n 6b\n 76\nDATA=END\n\n", "line 5: not a header line"),
]


@pytest.mark.parametrize("text,message", BAD_DUMPS, ids=[m.split(": ", 1)[1][:30] for _, m in BAD_DUMPS])
def test_load_refuses_bad_input(tmp_path, capsysbinary, text, message):
    (tmp_path / "bad.txt").write_bytes(text)
    code, out, err = run(capsysbinary, "load", tmp_path / "db.kv", "-f", tmp_path / "bad.txt")
    assert code == cli.EXIT_ERROR and out == b""
    assert err.startswith(f"kvmap load: {tmp_path / 'bad.txt'}: {message}"), err
    assert "Traceback" not in err and not (tmp_path / "db.kv").exists()


def test_load_error_says_what_was_loaded(tmp_path, capsysbinary, monkeypatch):
    monkeypatch.setattr(cli, "TXN_BYTES", 100)
    good = dumpfile.records([(b"%03d" % i, b"v" * 10) for i in range(100)], False)
    (tmp_path / "d.txt").write_bytes(b"HEADER=END\n" + good + b" zz\n 00\nDATA=END\n")
    code, _, err = run(capsysbinary, "load", tmp_path / "db.kv", "-f", tmp_path / "d.txt")
    assert code == 2 and "line 202: characters other than hex digits" in err
    loaded = len(contents(tmp_path / "db.kv"))
    assert 0 < loaded < 100 and f"the {loaded:,} pairs before it are loaded" in err


def test_load_notes_key_order_flags_and_uses_the_page_size(tmp_path, capsysbinary):
    (tmp_path / "d.txt").write_bytes(b"integerkey=1\ndb_pagesize=8192\nHEADER=END\n 01000000\n 76\nDATA=END\n")
    code, _, err = run(capsysbinary, "load", tmp_path / "db.kv", "-f", tmp_path / "d.txt")
    assert code == 0 and "had integerkey: kvmap orders its keys as bytes" in err
    with kvmap.open(str(tmp_path / "db.kv"), "r") as db:
        assert db.page_size == 8192 and dict(db.items()) == {b"\x01\x00\x00\x00": b"v"}


def test_load_plaintext(tmp_path, capsysbinary):
    (tmp_path / "plain.txt").write_bytes(b"alpha\\00\none\nbeta\n\\\\\n")
    assert run(capsysbinary, "load", tmp_path / "db.kv", "-T", "-f", tmp_path / "plain.txt")[0] == 0
    assert contents(tmp_path / "db.kv") == {b"alpha\x00": b"one", b"beta": b"\\"}


def test_load_missing_input(tmp_path, capsysbinary):
    code, _, err = run(capsysbinary, "load", tmp_path / "db.kv", "-f", tmp_path / "nope.txt")
    assert code == 2 and err == f"kvmap load: {tmp_path / 'nope.txt'}: No such file or directory\n"
    assert not (tmp_path / "db.kv").exists()


# ---------------------------------------------------------------- 3. commands

@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.kv"
    with kvmap.open(str(path)) as db:
        db.update({b"apple": b"red", b"apricot": b"orange", b"banana": b"yellow",
                   b"bin\x00\xff": b"\x00\x01\n\\", "café".encode(): "crème".encode()})
    return path


def test_get_put_delete(small, capsysbinary):
    assert run(capsysbinary, "get", small, "apple") == (0, b"red\n", "")
    assert run(capsysbinary, "get", small, "café") == (0, "crème\n".encode(), "")
    assert run(capsysbinary, "get", small, "--hex", "62696e00ff") == (0, b"00010a5c\n", "")
    assert run(capsysbinary, "get", small, "--base64", "YmluAP8=") == (0, b"AAEKXA==\n", "")
    assert run(capsysbinary, "get", small, "--hex", "62696e00ff", "--raw") == (0, b"\x00\x01\n\\", "")
    assert run(capsysbinary, "put", small, "apple", "green") == (0, b"", "")
    assert run(capsysbinary, "put", small, "--hex", "ff00", "") == (0, b"", "")
    assert run(capsysbinary, "put", small, "--base64", "AA==", "AQI=") == (0, b"", "")
    assert run(capsysbinary, "delete", small, "banana") == (0, b"", "")
    got = contents(small)
    assert got[b"apple"] == b"green" and got[b"\xff\x00"] == b"" and got[b"\x00"] == b"\x01\x02"
    assert b"banana" not in got
    assert run(capsysbinary, "put", small.parent / "new.kv", "k", "v")[0] == 0   # put creates
    assert contents(small.parent / "new.kv") == {b"k": b"v"}


def test_text_output_escapes_what_would_break_a_line(small, capsysbinary):
    code, out, _ = run(capsysbinary, "scan", small, "--prefix", "bi")
    assert out == b"bin\\00\\ff\t\\00\\01\\0a\\\\\n"          # one record, one line
    assert [dumpfile.unescape(f) for f in out[:-1].split(b"\t")] == [b"bin\x00\xff", b"\x00\x01\n\\"]
    assert run(capsysbinary, "get", small, "bin\udc80") == (1, b"", "kvmap get: bin\\80: not found\n")
    assert run(capsysbinary, "scan", small, "--prefix", "caf") == (0, "café\tcrème\n".encode(), "")


def test_missing_key(small, capsysbinary):
    assert run(capsysbinary, "get", small, "nope") == (1, b"", "kvmap get: nope: not found\n")
    assert run(capsysbinary, "delete", small, "--hex", "00") == (1, b"", "kvmap delete: 00: not found\n")


@pytest.mark.parametrize("argv", [["stat"], ["get", "k"], ["delete", "k"], ["scan"], ["dump"],
                                  ["copy", "DEST"]])
def test_missing_file(tmp_path, capsysbinary, argv):
    path = tmp_path / "none.kv"
    argv = [a.replace("DEST", str(tmp_path / "dest.kv")) for a in argv]
    code, out, err = run(capsysbinary, argv[0], path, *argv[1:])
    assert (code, out) == (2, b"") and err == f"kvmap {argv[0]}: {path}: no such file\n"
    assert not path.exists() and not (tmp_path / "dest.kv").exists()


@pytest.mark.parametrize("argv,message", [
    (["get", "--hex", "6"], "KEY '6' is not valid hex"),
    (["get", "--hex", "zz"], "KEY 'zz' is not valid hex"),
    (["get", "--base64", "a"], "KEY 'a' is not valid base64"),
    (["put", "--hex", "00", "0g"], "VALUE '0g' is not valid hex"),
    (["scan", "--hex", "--start", "x"], "--start 'x' is not valid hex"),
    (["scan", "--prefix", "a", "--stop", "b"], "--prefix cannot be combined with --start or --stop"),
    (["scan", "--limit", "-1"], "--limit must be 0 or more"),
    (["get", ""], "empty key"),
    (["put", "k" * 1001, "v"], "key of 1001 bytes is longer than the maximum of 1000"),
])
def test_bad_arguments(small, capsysbinary, argv, message):
    code, out, err = run(capsysbinary, argv[0], small, *argv[1:])
    assert (code, out, err) == (2, b"", f"kvmap {argv[0]}: {message}\n")


def test_usage_errors(capsysbinary):
    assert cli.main([]) == 2
    assert "exit status:" in capsysbinary.readouterr().err.decode()
    for argv in (["frobnicate"], ["get"], ["get", "p", "--hex", "--base64", "k"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert b"1  get, delete: the key is not there" in capsysbinary.readouterr().out


def test_file_open_in_another_handle(small, capsysbinary):
    """Commands work beside another handle (of any process): reads see its
    commits, and a put is seen by it."""
    with kvmap.open(str(small)) as db:
        db[b"apple"] = b"green"
        for argv in (["get", "apple"], ["put", "a", "b"], ["dump"], ["stat"]):
            code, out, err = run(capsysbinary, argv[0], small, *argv[1:])
            assert code == 0 and err == "", (argv, err)
            if argv[0] == "get":
                assert out == b"green\n", out
        assert db[b"a"] == b"b"


def test_not_a_kvmap_file(tmp_path, capsysbinary):
    (tmp_path / "text").write_text("hello\n" * 2000)
    code, _, err = run(capsysbinary, "stat", tmp_path / "text")
    assert code == 2 and err.startswith("kvmap stat: ") and "is not a kvmap database" in err


def test_damaged_file(tmp_path, capsysbinary):
    path = tmp_path / "d.kv"
    marker = b"MARKER" * 20
    with kvmap.open(str(path)) as db:
        db.update({b"a": b"1", b"m": marker, b"z": b"2"})
    data = bytearray(path.read_bytes())
    assert data.count(marker) == 1
    data[data.index(marker) + 3] ^= 0x20
    path.write_bytes(bytes(data))
    for argv in (["get", "m"], ["scan"], ["dump"], ["copy", tmp_path / "c.kv"]):
        code, _, err = run(capsysbinary, argv[0], path, *argv[1:])
        assert code == cli.EXIT_DAMAGED, argv
        assert "checksum" in err and err.endswith(f"(the file is damaged: run kvmap check {path})\n")
    assert not (tmp_path / "c.kv").exists()


def test_stat(full_db, capsysbinary):
    path, pairs = full_db
    code, out, _ = run(capsysbinary, "stat", path, "--json")
    doc = json.loads(out)
    with kvmap.open(str(path), "r") as db:
        st = db.stats()
    assert code == 0 and doc["entries"] == len(pairs) == st["entries"] and doc["max_key_size"] == 1000
    assert {k: doc[k] for k in ("depth", "pages", "txnid", "file_size", "free_pages")} == \
        {k: st[k] for k in ("depth", "pages", "txnid", "file_size", "free_pages")}
    code, out, _ = run(capsysbinary, "stat", path)
    text = out.decode()
    assert code == 0 and text.startswith(f"{path}\n") and f"entries        {len(pairs):,}\n" in text
    assert "page size      4,096 bytes (keys up to 1,000 bytes)" in text


def test_scan(tmp_path, capsysbinary):
    path = tmp_path / "s.kv"
    with kvmap.open(str(path)) as db:
        db.update({b"k%d" % i: b"v%d" % i for i in range(10)})
        db.update({b"other": b"x"})

    def keys(*argv):
        code, out, err = run(capsysbinary, "scan", path, "--keys-only", *argv)
        assert (code, err) == (0, "")
        return out.decode().split()

    assert keys() == [f"k{i}" for i in range(10)] + ["other"]
    assert keys("--start", "k3", "--stop", "k6") == ["k3", "k4", "k5"]
    assert keys("--start", "k3", "--stop", "k6", "--inclusive") == ["k3", "k4", "k5", "k6"]
    assert keys("--start", "k3", "--stop", "k6", "--reverse") == ["k5", "k4", "k3"]
    assert keys("--stop", "k2") == ["k0", "k1"]
    assert keys("--start", "k8") == ["k8", "k9", "other"]
    assert keys("--prefix", "k", "--reverse", "--limit", "2") == ["k9", "k8"]
    assert keys("--prefix", "o") == ["other"]
    assert keys("--prefix", "zz") == []
    assert keys("--limit", "0") == []
    assert run(capsysbinary, "scan", path, "--start", "k8", "--limit", "2") == (0, b"k8\tv8\nk9\tv9\n", "")
    assert run(capsysbinary, "scan", path, "--hex", "--prefix", "6f") == (0, b"6f74686572\t78\n", "")
    code, out, _ = run(capsysbinary, "scan", path, "--base64", "--limit", "1")
    assert out == base64.b64encode(b"k0") + b"\t" + base64.b64encode(b"v0") + b"\n"


def test_copy(full_db, capsysbinary):
    path, pairs = full_db
    with kvmap.open(str(path), "r") as db:
        txnid = db.stats()["txnid"]
    for argv, kind in (([], "a page copy"), (["--compact"], "a compact copy")):
        dest = path.parent / ("copy%d.kv" % len(argv))
        code, out, err = run(capsysbinary, "copy", path, dest, *argv)
        assert (code, err) == (0, "") and out == f"copied transaction {txnid} to {dest} ({kind})\n".encode()
        assert kvmap.check(dest).ok and contents(dest) == pairs
        assert run(capsysbinary, "copy", path, dest) == (
            2, b"", f"kvmap copy: {dest} already exists (--overwrite replaces it)\n")
        dest.write_bytes(b"old")
        assert run(capsysbinary, "copy", path, dest, "--overwrite", *argv)[0] == 0
        assert kvmap.check(dest).ok and contents(dest) == pairs


def test_check_and_bench_are_passed_on(small, tmp_path, capsysbinary):
    code, out, _ = run(capsysbinary, "check", small, "--quick")
    assert code == 0 and out.startswith(b"ok\n")
    code, _, err = run(capsysbinary, "check", tmp_path / "none.kv")
    assert code == 2 and "unreadable" in err
    code, _, err = run(capsysbinary, "bench", "-n", "0")
    assert code == 2 and "must be positive" in err
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    assert capsysbinary.readouterr().out.startswith(b"usage: kvmap check ")


# ---------------------------------------------------------------- subprocess

def kvmap_cmd(*argv, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(kvmap.__file__))), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "kvmap", *map(str, argv)], capture_output=True,
                          env=env, timeout=60, **kw)


def test_python_m_kvmap(tmp_path):
    """``python -m kvmap``: dump piped into load, and a not-found status."""
    path = tmp_path / "p.kv"
    with kvmap.open(str(path)) as db:
        db.update({b"a": b"1", b"\x00\n": b"\xff"})
    dump = kvmap_cmd("dump", "-p", path)
    assert dump.returncode == 0 and dump.stderr == b""
    load = kvmap_cmd("load", tmp_path / "q.kv", input=dump.stdout)
    assert load.returncode == 0 and contents(tmp_path / "q.kv") == contents(path)
    missing = kvmap_cmd("get", path, "zz")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, b"", b"kvmap get: zz: not found\n")


def test_closed_pipe_is_quiet(tmp_path):
    path = tmp_path / "p.kv"
    with kvmap.open(str(path)) as db:
        db.update((b"%06d" % i, b"x" * 100) for i in range(20_000))
    env_path = os.path.dirname(os.path.dirname(os.path.abspath(kvmap.__file__)))
    p = subprocess.run(f"{sys.executable} -m kvmap scan {path} | head -1", shell=True,
                       capture_output=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=env_path))
    assert p.stdout == b"000000\t" + b"x" * 100 + b"\n" and p.stderr == b""
