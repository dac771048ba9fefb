"""The file format's constants as the C core defines them (native/format.h)
against the ones the independent readers use (kvmap-check, the power-loss
simulator, the damaged-file tests): a change on one side only fails here,
not as a mysterious checker report.
"""

import os
import re
import struct

import pytest

from kvmap.checker import pagelayout as layout
from conftest import REPO_ROOT

FORMAT_H = os.path.join(REPO_ROOT, "native", "format.h")


def c_defines(path=FORMAT_H):
    """{NAME: value} of the integer and string #defines of a header (format.h)."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"#define\s+(\w+)\s+(.+?)\s*(/\*.*)?$", line)
            if not m:
                continue
            value = m.group(2)
            if value.startswith('"'):
                out[m.group(1)] = value[1:-1].encode().decode("unicode_escape").encode("latin-1")
            else:
                try:
                    out[m.group(1)] = int(value.rstrip("u"), 0)
                except ValueError:
                    pass
    return out


C = c_defines()


def offsets(fmt):
    """Byte offset of each field of a little-endian struct format."""
    fields = re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<"))
    out, off = [], 0
    for count, code in fields:
        out.append(off)
        off += struct.calcsize("<" + (count or "") + code)
    return out


@pytest.mark.parametrize("c_name, py_value", [
    ("KVM_MAGIC", layout.MAGIC),
    ("KVM_VERSION", layout.VERSION),
    ("META_PAGES", layout.META_PAGES),
    ("KVM_MIN_PAGE", layout.MIN_PAGE),
    ("KVM_MAX_PAGE", layout.MAX_PAGE),
    ("KVM_MAX_DEPTH", layout.MAX_DEPTH),
    ("META_SIZE", layout.META_SIZE),
    ("PH_SIZE", layout.HDR),
    ("M_FLAGS_NOSYNC", layout.M_FLAGS_NOSYNC),
    ("PT_BRANCH", layout.PT_BRANCH),
    ("PT_LEAF", layout.PT_LEAF),
    ("PT_OVERFLOW", layout.PT_OVERFLOW),
    ("PT_FREE_INDEX", layout.PT_FREE_INDEX),
    ("PT_FREE_BITMAP", layout.PT_FREE_BITMAP),
    ("PT_RECORD", layout.PT_RECORD),
    ("PF_CONTINUED", layout.PF_CONTINUED),
    ("R_FLAGS_PAGES_DURABLE", layout.R_FLAGS_PAGES_DURABLE),
    ("R_WRITTEN_SIZE", layout.R_WRITTEN_SIZE),
    ("R_RUN_SIZE", layout.R_RUN_SIZE),
    ("LEAF_HDR", layout.LEAF_HDR),               # the checker's cell headers (native/checkpage.h)
    ("BRANCH_HDR", layout.BRANCH_HDR),
])
def test_checker_constant(c_name, py_value):
    assert C[c_name] == py_value


def test_checker_meta_layout():
    """The checker reads the meta with one struct: its fields sit where
    format.h puts them, and the reserved bytes follow them up to the
    checksum."""
    fmt = "<8sIIQQIIQQQQQQQQ"
    assert layout.meta_fields.format == fmt
    names = ["M_MAGIC", "M_VERSION", "M_PAGESIZE", "M_TXNID", "M_ROOT", "M_DEPTH", "M_FLAGS",
             "M_ENTRIES", "M_HWM", "M_FREE_INDEX", "M_RECORD", "M_FREE_COUNT",
             "M_PENDING_COUNT", "M_FLOOR", "M_DURABLE"]
    assert [C[n] for n in names] == offsets(fmt)
    assert struct.calcsize(fmt) <= C["M_CHECKSUM"]
    assert C["M_CHECKSUM"] + 4 == C["META_SIZE"]
    assert not [n for n in ("M_FREE_PENDING", "M_PENDING_FLOOR", "PT_FREE_PENDING",
                            "PT_FREE_PENDING_INDEX") if n in C]      # version 1's, gone


def test_checker_record_layout():
    """The fixed fields of a commit record, which the checker reads with one
    struct at the start of the record's stream (byte 32 of its first page),
    sit where format.h puts them; the entries follow them."""
    fmt = "<QIIIIII"
    assert layout.record_head.format == fmt
    names = ["R_PREV", "R_NWRITTEN", "R_NFREED", "R_NRELEASED", "R_NOVERRIDE", "R_FLAGS"]
    assert [C[n] - C["PH_SIZE"] for n in names] == offsets(fmt)[:len(names)]
    assert C["PH_SIZE"] + struct.calcsize(fmt) == C["R_BODY"]
    assert layout.record_written.size == C["R_WRITTEN_SIZE"]      # u64 page, u32 checksum
    assert layout.record_written.format == "<QI"
    assert layout.record_run.size == C["R_RUN_SIZE"]         # u64, u64
    assert layout.record_run.format == "<QQ"


def test_record_spare_pages():
    """How many pages past its entries a record may end with: freelist.c's
    bound, which the checker applies too."""
    with open(os.path.join(REPO_ROOT, "native", "freelist.c")) as f:
        m = re.search(r"#define\s+RECORD_SPARE_MAX\s+(\d+)", f.read())
    assert m and int(m.group(1)) == layout.RECORD_SPARE_MAX


def test_checker_page_header_layout():
    fmt = "<IBBHQQQ"
    assert layout.page_header.format == fmt
    names = ["PH_CHECKSUM", "PH_TYPE", "PH_FLAGS", "PH_NKEYS", "PH_TXNID", "PH_PGNO", "PH_NEXT"]
    assert [C[n] for n in names] == offsets(fmt)
    assert C["PH_UPPER"] == C["PH_NEXT"]
    assert struct.calcsize(fmt) == C["PH_SIZE"]


def test_other_readers_constants():
    import test_badfiles
    import test_defects
    import test_powerloss
    assert test_powerloss.powerloss.META_SIZE == C["META_SIZE"]
    assert test_badfiles.M_PAGESIZE == C["M_PAGESIZE"]
    assert test_badfiles.M_CHECKSUM == C["M_CHECKSUM"]
    assert test_badfiles.PS == test_defects.PS == C["KVM_MIN_PAGE"]
    assert test_badfiles.META_PAGES == tuple(range(C["META_PAGES"]))


def test_checkpage_layout():
    """kvmap-check's C reader (native/checkpage.h) writes the layout down a
    second time, as its Python does: the same offsets as format.h's."""
    ckp = c_defines(os.path.join(REPO_ROOT, "native", "checkpage.h"))
    names = ["PH_SIZE", "PH_CHECKSUM", "PH_TYPE", "PH_NKEYS", "PH_TXNID", "PH_PGNO", "PH_UPPER", "PH_NEXT",
             "LEAF_HDR", "BRANCH_HDR", "PT_BRANCH", "PT_LEAF", "PT_OVERFLOW", "META_PAGES"]
    assert {n: ckp["CKP_" + n] for n in names} == {n: C[n] for n in names}

