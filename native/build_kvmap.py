"""cffi builder for the C core (out-of-line API mode).

setup.py names ``native/build_kvmap.py:ffibuilder`` in ``cffi_modules``.  The
declarations come from the cdef sections of ``kvmap.h``, ``checkpage.h``
(kvmap-check's own page reader) and ``pyglue.h`` (the module's preamble,
which decides which calls release the GIL), so the C headers are the one
description of the API.  Run as a script it builds the module into a
directory of its own, with extra flags from KVM_CFLAGS / KVM_LDFLAGS
(tools/sanitize.sh uses this for an ASan/UBSan build).
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["os.c", "crc32c.c", "guard.c", "env.c", "lock.c", "meta.c", "readers.c", "map.c", "cache.c", "page.c",
           "txn.c", "flush.c", "btree.c", "freemap.c", "space.c", "freelist.c", "copy.c", "checkpage.c"]
WARNINGS = ["-Wall", "-Wextra", "-std=gnu11"]


def _cdef(name):
    text = open(os.path.join(HERE, name)).read()
    return text.split("/* cdef-begin */")[1].split("/* cdef-end */")[0]


def make_builder(absolute=False, cflags=("-O2",), ldflags=()):
    here = HERE if absolute else os.path.relpath(HERE)
    builder = FFI()
    builder.cdef(_cdef("kvmap.h"))
    builder.cdef(_cdef("checkpage.h"))
    builder.cdef(_cdef("pyglue.h"))
    builder.set_source(
        "kvmap._kvmap_cffi",
        '#include "pyglue.h"',
        sources=[os.path.join(here, s) for s in SOURCES],
        include_dirs=[here],
        extra_compile_args=WARNINGS + list(cflags),
        extra_link_args=list(ldflags),
        libraries=["pthread"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    builder = make_builder(True, os.environ.get("KVM_CFLAGS", "-O2").split(),
                           os.environ.get("KVM_LDFLAGS", "").split())
    builder.compile(tmpdir=out, verbose=True)
