"""The file format's constants as the C core defines them (native/format.h)
against the ones the independent readers use (kvmap-check, the power-loss
simulator, the damaged-file tests): a change on one side only fails here,
not as a mysterious checker report.
"""

import os
import re
import struct

import pytest

import kvmap.checker as checker
from conftest import REPO_ROOT

FORMAT_H = os.path.join(REPO_ROOT, "native", "format.h")


def c_defines():
    """{NAME: value} of the integer and string #defines of format.h."""
    out = {}
    with open(FORMAT_H) as f:
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
    ("KVM_MAGIC", checker.MAGIC),
    ("KVM_VERSION", checker.VERSION),
    ("KVM_MIN_PAGE", checker.MIN_PAGE),
    ("KVM_MAX_PAGE", checker.MAX_PAGE),
    ("KVM_MAX_DEPTH", checker.MAX_DEPTH),
    ("META_SIZE", checker.META_SIZE),
    ("PH_SIZE", checker.HDR),
    ("M_FLAGS_NOSYNC", checker.M_FLAGS_NOSYNC),
    ("PT_BRANCH", checker.PT_BRANCH),
    ("PT_LEAF", checker.PT_LEAF),
    ("PT_OVERFLOW", checker.PT_OVERFLOW),
    ("PT_FREE_INDEX", checker.PT_FREE_INDEX),
    ("PT_FREE_BITMAP", checker.PT_FREE_BITMAP),
    ("PT_FREE_PENDING", checker.PT_PENDING),
    ("PT_FREE_PENDING_INDEX", checker.PT_PENDING_INDEX),
    ("LEAF_HDR", struct.calcsize("<HI")),        # the checker's leaf cell header
    ("BRANCH_HDR", struct.calcsize("<HQ")),
])
def test_checker_constant(c_name, py_value):
    assert C[c_name] == py_value


def test_checker_meta_layout():
    """The checker reads the meta with one struct: its fields sit where
    format.h puts them."""
    fmt = "<8sIIQQIIQQQQQQQ"
    assert checker._meta.__self__.format == fmt
    names = ["M_MAGIC", "M_VERSION", "M_PAGESIZE", "M_TXNID", "M_ROOT", "M_DEPTH", "M_FLAGS",
             "M_ENTRIES", "M_HWM", "M_FREE_INDEX", "M_FREE_PENDING", "M_FREE_COUNT",
             "M_PENDING_COUNT", "M_PENDING_FLOOR"]
    assert [C[n] for n in names] == offsets(fmt)
    assert C["M_CHECKSUM"] + 4 == C["META_SIZE"]


def test_checker_page_header_layout():
    fmt = "<IBBHQQQ"
    assert checker._hdr.__self__.format == fmt
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
